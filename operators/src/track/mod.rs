//! The `track` operator: per-frame detections in, one defect track per physical defect
//! out (a differential collection keyed by asset id), confirmed after N of M frames and
//! resolved when the camera keeps looking and no longer sees it.

use std::collections::HashMap;
use std::sync::Arc;

use defectflow_schemas::{Camera, DefectTrack, FrameObservation, TrackState};
use differential_dataflow::{AsCollection, VecCollection};
use serde::{Deserialize, Serialize};
use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::Concat;
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::operators::vec::Map;

use crate::evidence::EvidenceFrames;
use crate::in_order::InOrder;

mod live;
use live::{CameraTracks, LiveTrack};

/// How detections become tracks. `[track]` in the config.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrackConfig {
    /// A track is confirmed once seen in this many of the last `confirm_window_frames` frames.
    pub confirm_hits: u32,
    /// Frames (of the camera) over which `confirm_hits` are counted; at most 64.
    pub confirm_window_frames: u32,
    /// A track seen in each of its camera's last 3 frames is confirmed as soon as those
    /// frames span this long, before `confirm_hits`: at a low frame rate the count of
    /// frames would otherwise take seconds (5 frames at 1 a second: 4 s; this rule, 2 s).
    /// Above 1.5 frames a second, 3 frames never span the default 2 s, and `confirm_hits`
    /// decides alone. 0: off.
    pub confirm_span_ms: u64,
    /// Least intersection-over-union for a detection to continue a track.
    pub min_iou: f32,
    /// A confirmed track not seen for this long while its camera sends frames is resolved.
    pub resolve_after_ms: u64,
    /// Window over which the growth rate is measured.
    pub growth_window_ms: u64,
    /// A confirmed track is re-emitted when its area has grown by this factor since the last emission.
    pub area_step: f32,
    /// A confirmed track still being seen is re-emitted at least this often.
    pub refresh_ms: u64,
    /// A resolved track leaves the collection this long after it was resolved, so a
    /// long run does not keep every defect it ever saw.
    pub forget_resolved_after_ms: u64,
    /// A track of class `unknown` (a departure from the camera's normal that no class
    /// fits) is confirmed only once it has lasted this long: a person, a vehicle or
    /// steam crossing the view passes, a defect stays.
    pub unknown_confirm_ms: u64,
    /// Detections of one frame on the same asset whose boxes are at most this many
    /// pixels apart are pieces of one defect (a crack with a faint middle): one detection.
    pub merge_gap_px: f32,
}

impl Default for TrackConfig {
    fn default() -> Self {
        TrackConfig {
            confirm_hits: 5,
            confirm_window_frames: 8,
            confirm_span_ms: 2_000,
            min_iou: 0.1,
            resolve_after_ms: 30_000,
            growth_window_ms: 300_000,
            area_step: 1.2,
            refresh_ms: 60_000,
            forget_resolved_after_ms: 3_600_000,
            unknown_confirm_ms: 15_000,
            merge_gap_px: 24.0,
        }
    }
}

/// What the tracker reads: camera ROI updates and per-frame observations.
#[derive(Clone, Debug, Serialize, Deserialize)]
enum TrackInput {
    /// A camera's ROIs with the update's own time (differential records may be later
    /// than the message that carries them) and diff.
    Camera(Camera, u64, isize),
    Frame(FrameObservation),
    /// The track of a work order an earlier run left open, taken up at start.
    Restore(Box<DefectTrack>),
}

impl TrackInput {
    /// Processing order within a time: reference changes, restored tracks, frames.
    fn rank(&self) -> u8 {
        match self {
            TrackInput::Camera(..) => 0,
            TrackInput::Restore(_) => 1,
            TrackInput::Frame(_) => 2,
        }
    }

    fn camera_id(&self) -> &str {
        match self {
            TrackInput::Camera(camera, ..) => &camera.camera_id,
            TrackInput::Frame(frame) => &frame.camera_id,
            TrackInput::Restore(track) => &track.camera_id,
        }
    }
}

/// Extension trait: `frames.track(cameras, config)`.
pub trait Track<'scope> {
    /// Follows defects across frames. The output holds the latest snapshot of every
    /// confirmed or resolved track, keyed by asset id; a new snapshot retracts the old.
    /// Snapshots change on confirmation, resolution, growth by `area_step`, and every
    /// `refresh_ms` while the defect is seen.
    ///
    /// # Examples
    /// ```
    /// use defectflow_operators::track::{Track, TrackConfig};
    /// use defectflow_schemas::*;
    /// use differential_dataflow::AsCollection;
    /// use timely::dataflow::operators::{Capture, capture::Extract, vec::ToStream};
    ///
    /// let camera = Camera { camera_id: "cam".into(), rois: vec![Roi {
    ///     asset_id: "PUMP-1".into(), x: 0, y: 0, width: 100, height: 100, mm_per_px: Some(0.5), region: None, homography: None }] };
    /// let frames: Vec<FrameObservation> = (0..3).map(|i| FrameObservation {
    ///     camera_id: "cam".into(), frame_index: i, capture_ms: 1000 + i * 100,
    ///     detections: vec![Detection { camera_id: "cam".into(), frame_index: i, capture_ms: 1000 + i * 100,
    ///         class: DefectClass::Crack, confidence: 0.9,
    ///         bbox: BoundingBox { x: 10.0, y: 10.0, width: 20.0, height: 4.0 }, area_px: 80.0,
    ///         model_version: "m1".into(), shadow: false }] }).collect();
    /// let config = TrackConfig { confirm_hits: 2, confirm_window_frames: 3, ..TrackConfig::default() };
    /// let out = timely::example(move |scope| {
    ///     use defectflow_operators::at_time::AtTime;
    ///     let cameras = vec![(camera, 0u64, 1isize)].to_stream(scope).as_collection();
    ///     let frames = frames.to_stream(scope).at_time(|f| f.capture_ms);
    ///     frames.track(cameras, config).inner.capture()
    /// });
    /// let tracks: Vec<_> = out.extract().into_iter().flat_map(|(_, v)| v).collect();
    /// // Confirmed at the second frame: one snapshot, with size 20 px × 0.5 mm = 10 mm.
    /// assert_eq!(tracks.len(), 1);
    /// let ((asset, track), time, diff) = &tracks[0];
    /// assert_eq!((asset.as_str(), *time, *diff, track.state), ("PUMP-1", 1100, 1, TrackState::Confirmed));
    /// assert_eq!(track.size_mm, Some(10.0));
    /// ```
    fn track(
        self,
        cameras: VecCollection<'scope, u64, Camera>,
        config: TrackConfig,
    ) -> VecCollection<'scope, u64, (String, DefectTrack)>;

    /// [`Track::track`], with each snapshot carrying the evidence image of its best
    /// frame, drawn by `evidence` (which is told when frames are no longer needed), and
    /// each camera tracked on the worker `route` picks (by default a hash of its id).
    /// The evidence frames are held in the process that scored them, so a cluster routes
    /// each camera to the worker that ingests it.
    ///
    /// `restored` takes up the tracks an earlier run left open (confirmed, as the work
    /// orders it published have them): a detection that matches one continues it under
    /// its id; it enters the output when seen again (or when it resolves), and is
    /// resolved only after `resolve_after_ms` of this run's frames without it.
    fn track_with_evidence(
        self,
        cameras: VecCollection<'scope, u64, Camera>,
        restored: StreamVec<'scope, u64, DefectTrack>,
        config: TrackConfig,
        evidence: Option<Arc<dyn EvidenceFrames>>,
        route: Option<CameraRoute>,
    ) -> VecCollection<'scope, u64, (String, DefectTrack)>;
}

/// Which worker tracks a camera, from its id: a number taken modulo the worker count.
pub type CameraRoute = Arc<dyn Fn(&str) -> u64 + Send + Sync>;

impl<'scope> Track<'scope> for StreamVec<'scope, u64, FrameObservation> {
    fn track(
        self,
        cameras: VecCollection<'scope, u64, Camera>,
        config: TrackConfig,
    ) -> VecCollection<'scope, u64, (String, DefectTrack)> {
        let restored = timely::dataflow::operators::vec::ToStream::to_stream(Vec::new(), self.scope());
        self.track_with_evidence(cameras, restored, config, None, None)
    }

    fn track_with_evidence(
        self,
        cameras: VecCollection<'scope, u64, Camera>,
        restored: StreamVec<'scope, u64, DefectTrack>,
        config: TrackConfig,
        evidence: Option<Arc<dyn EvidenceFrames>>,
        route: Option<CameraRoute>,
    ) -> VecCollection<'scope, u64, (String, DefectTrack)> {
        let route: CameraRoute = route.unwrap_or_else(|| Arc::new(crate::ids::route));
        let window = config.confirm_window_frames.clamp(1, 64);
        let inputs = self
            .map(TrackInput::Frame)
            .concat(cameras.inner.map(|(camera, time, diff)| TrackInput::Camera(camera, time, diff)))
            .concat(restored.map(|track| TrackInput::Restore(Box::new(track))));
        inputs
            .unary_frontier(
                Exchange::new(move |input: &TrackInput| route(input.camera_id())),
                "Track",
                move |capability, _info| {
                    let mut in_order = InOrder::new(capability);
                    let mut cameras: HashMap<String, CameraTracks> = HashMap::new();
                    move |(input, frontier), output| {
                        input.for_each(|time, data| {
                            let Some(&message_time) = time.least() else { return };
                            for item in data.drain(..) {
                                let time = match &item {
                                    TrackInput::Camera(_, time, _) => *time,
                                    TrackInput::Frame(_) | TrackInput::Restore(_) => message_time,
                                };
                                in_order.stash(time, [item]);
                            }
                        });
                        for (capability, mut batch) in in_order.ready(frontier) {
                            let time = *capability.time();
                            // Reference changes first, then restored tracks, then frames in
                            // camera and index order.
                            batch.sort_by(|a, b| match (a, b) {
                                (TrackInput::Camera(a, _, da), TrackInput::Camera(b, _, db)) => (da, a).cmp(&(db, b)),
                                (TrackInput::Restore(a), TrackInput::Restore(b)) => a.track_id.cmp(&b.track_id),
                                (TrackInput::Frame(a), TrackInput::Frame(b)) => {
                                    (&a.camera_id, a.frame_index).cmp(&(&b.camera_id, b.frame_index))
                                }
                                (a, b) => a.rank().cmp(&b.rank()),
                            });
                            let mut session = output.session(&capability);
                            for item in batch {
                                match item {
                                    TrackInput::Camera(camera, _, diff) => {
                                        let entry = cameras.entry(camera.camera_id.clone()).or_default();
                                        if diff > 0 {
                                            entry.rois = camera.rois;
                                        } else if entry.rois == camera.rois {
                                            entry.rois.clear();
                                        }
                                    }
                                    TrackInput::Restore(track) => {
                                        let entry = cameras.entry(track.camera_id.clone()).or_default();
                                        let mm_per_px = entry
                                            .rois
                                            .iter()
                                            .find(|roi| roi.asset_id == track.asset_id)
                                            .and_then(|roi| roi.mm_per_px);
                                        // A resolved one stays resolved: the same defect seen
                                        // again starts a track, as it would have before.
                                        if track.state != TrackState::Resolved
                                            && entry.tracks.iter().all(|live| live.track.track_id != track.track_id)
                                        {
                                            entry.tracks.push(LiveTrack::restore(*track, mm_per_px));
                                        }
                                    }
                                    TrackInput::Frame(frame) => {
                                        let entry = cameras.entry(frame.camera_id.clone()).or_default();
                                        for (snapshot, diff) in
                                            entry.observe(&frame, &config, window, evidence.as_deref())
                                        {
                                            session.give(((snapshot.asset_id.clone(), snapshot), time, diff));
                                        }
                                    }
                                }
                            }
                        }
                    }
                },
            )
            .as_collection()
    }
}
