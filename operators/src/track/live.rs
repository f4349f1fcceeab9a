//! The live tracks of one camera: which detection continues which track, when a track
//! is confirmed and resolved, and what it says.

use std::collections::VecDeque;

use defectflow_schemas::{BoundingBox, DefectClass, DefectTrack, Detection, FrameObservation, Roi, TrackState};

use super::TrackConfig;
use crate::evidence::{EvidenceFrames, EvidenceRequest};
use crate::fragments::{gap, merge_fragments, union};
use crate::ids::stable_hash;

/// The live tracks of one camera.
#[derive(Debug, Default)]
pub(super) struct CameraTracks {
    pub(super) rois: Vec<Roi>,
    pub(super) tracks: Vec<LiveTrack>,
    /// Resolved snapshots still in the collection, oldest first, with when they resolved.
    resolved: VecDeque<(u64, DefectTrack)>,
}

#[derive(Debug)]
pub(super) struct LiveTrack {
    pub(super) track: DefectTrack,
    /// Bit i set: seen in the frame i frames ago.
    seen: u64,
    best_confidence: f32,
    /// (capture time, area) of recent sightings, for the growth rate.
    history: VecDeque<(u64, f32)>,
    mm_per_px: Option<f64>,
    emitted: Option<DefectTrack>,
    /// Frames in which the defect was detected, per class.
    class_hits: Vec<(DefectClass, u64)>,
    /// Taken up from an earlier run and not seen in this one yet: it enters the output
    /// when seen (or resolved), not before.
    awaiting_sighting: bool,
    /// The capture time from which a restored track's absence counts: its camera's
    /// first frame in this run (the time it was down is not time it was not seen).
    watched_from: Option<u64>,
    /// A restored track's growth rate, reported until this run has measured its own.
    carried_growth: Option<f64>,
    /// The best frame was captured in this run (so its evidence frame may be held).
    best_here: bool,
}

impl CameraTracks {
    /// Applies one frame; returns the snapshot changes it causes.
    pub(super) fn observe(
        &mut self,
        frame: &FrameObservation,
        config: &TrackConfig,
        window: u32,
        evidence: Option<&dyn EvidenceFrames>,
    ) -> Vec<(DefectTrack, isize)> {
        self.associate(frame, config, window);
        let mut changes = self.advance(frame, config, evidence);
        self.retire(frame, config, evidence, &mut changes);
        changes
    }

    /// Each detection of the frame to the track it continues, as a piece of one seen in
    /// this frame, or to a new track.
    fn associate(&mut self, frame: &FrameObservation, config: &TrackConfig, window: u32) {
        let mask = if window == 64 { u64::MAX } else { (1u64 << window) - 1 };
        for live in &mut self.tracks {
            live.seen = (live.seen << 1) & mask;
        }
        let roi_of = |d: &Detection| {
            let (cx, cy) = d.bbox.center();
            self.rois.iter().position(|roi| roi.contains(cx, cy))
        };
        let merged = merge_fragments(&frame.detections, config.merge_gap_px, |a, b| roi_of(a) == roi_of(b));
        let before: Vec<BoundingBox> = self.tracks.iter().map(|live| live.track.bbox).collect();
        let mut detections: Vec<&Detection> = merged.iter().collect();
        detections.sort_by(|a, b| b.confidence.total_cmp(&a.confidence).then(a.bbox.cmp(&b.bbox)));
        for detection in detections {
            let (cx, cy) = detection.bbox.center();
            // A detection outside every region of interest is on no known asset.
            let Some(roi) = self.rois.iter().find(|roi| roi.contains(cx, cy)) else { continue };
            // A track of the detection's class first; failing that, a track of another
            // class on the same spot: the same physical defect, which the model calls by
            // another class in some frames (a growing crack looking like a missing part,
            // a stain flickering between two classes). The track's class is then the one
            // most of its frames say.
            // (overlap, index) of the best candidate; the overlap is computed once per track.
            let best = |tracks: &[LiveTrack], same_class: bool| {
                tracks
                    .iter()
                    .enumerate()
                    .filter(|(_, live)| {
                        live.seen & 1 == 0
                            && live.track.state != TrackState::Resolved
                            && live.track.asset_id == roi.asset_id
                            && (live.track.class == detection.class) == same_class
                    })
                    .filter_map(|(i, live)| live.overlap(&detection.bbox, config.min_iou).map(|iou| (iou, i)))
                    .max_by(|(a, _), (b, _)| a.total_cmp(b))
                    .map(|(_, i)| i)
            };
            let matched = best(&self.tracks, true).or_else(|| best(&self.tracks, false)).map(|i| &mut self.tracks[i]);
            if let Some(live) = matched {
                live.sighting(detection, config);
                continue;
            }
            // Another piece of a defect already seen in this frame (its middle faded, so
            // the pieces were too far apart to be merged): part of that sighting.
            let piece_of = self.tracks.iter_mut().enumerate().find_map(|(i, live)| {
                // Against the box before this frame: the sighting has just narrowed it.
                let known = before.get(i).copied().unwrap_or(live.track.bbox);
                let piece =
                    inside_share(&detection.bbox, &known) >= 0.5 || gap(&known, &detection.bbox) <= config.merge_gap_px;
                (live.seen & 1 == 1 && live.track.asset_id == roi.asset_id && piece).then_some(live)
            });
            match piece_of {
                Some(live) => {
                    live.track.bbox = union(&live.track.bbox, &detection.bbox);
                    live.track.area_px += detection.area_px;
                    live.track.size_mm = live.mm_per_px.map(|scale| size_mm(&live.track.bbox, scale));
                }
                None => self.tracks.push(LiveTrack::anchor(detection, roi)),
            }
        }
    }

    /// Tracks confirmed and resolved by the frame; the snapshots that changed enough to
    /// be emitted again, with their evidence drawn.
    fn advance(
        &mut self,
        frame: &FrameObservation,
        config: &TrackConfig,
        evidence: Option<&dyn EvidenceFrames>,
    ) -> Vec<(DefectTrack, isize)> {
        let mut changes = Vec::new();
        for live in &mut self.tracks {
            let seen_enough = live.track.state == TrackState::Tentative
                && (live.seen.count_ones() >= config.confirm_hits
                    || live.seen_in_a_row_over(frame.capture_ms, config.confirm_span_ms));
            let track = &mut live.track;
            let lasted = track.class != DefectClass::Unknown
                || frame.capture_ms.saturating_sub(track.first_seen_ms) >= config.unknown_confirm_ms;
            if seen_enough && lasted {
                track.state = TrackState::Confirmed;
            }
            let watched_from = *live.watched_from.get_or_insert(frame.capture_ms);
            if track.state == TrackState::Confirmed
                && frame.capture_ms.saturating_sub(track.last_seen_ms.max(watched_from)) >= config.resolve_after_ms
            {
                track.state = TrackState::Resolved;
            }
            if track.state == TrackState::Tentative {
                continue;
            }
            // Training data beside the evidence: frames the confirmed track is seen in,
            // spread over its life (its 4th, 8th, 16th… sighting).
            if let Some(frames) = evidence
                && live.seen & 1 == 1
                && track.hits >= 4
                && track.hits.is_power_of_two()
            {
                frames.keep(&track.track_id, &track.camera_id, frame.frame_index);
            }
            let emit = match &live.emitted {
                None => !live.awaiting_sighting || track.state == TrackState::Resolved,
                Some(last) => {
                    last.state != track.state
                        || track.area_px >= last.area_px * config.area_step
                        || (track.last_seen_ms > last.last_seen_ms
                            && track.last_seen_ms >= last.last_seen_ms + config.refresh_ms)
                }
            };
            if emit {
                let stale = track.evidence.as_ref().is_none_or(|e| e.frame_index != track.best_frame_index);
                if let (Some(frames), true) = (evidence, stale) {
                    let request = EvidenceRequest {
                        track_id: &track.track_id,
                        camera_id: &track.camera_id,
                        frame_index: track.best_frame_index,
                        capture_ms: track.best_capture_ms,
                        bbox: track.best_bbox,
                        class: track.class,
                        confidence: live.best_confidence,
                    };
                    // Without the frame the earlier image (if any) still shows the defect.
                    if let Some(drawn) = frames.draw(&request) {
                        track.evidence = Some(drawn);
                    }
                }
                if let Some(last) = live.emitted.take() {
                    changes.push((last, -1));
                }
                changes.push((track.clone(), 1));
                live.emitted = Some(track.clone());
            }
        }
        changes
    }

    /// Resolved tracks kept for a while and then forgotten; flicker dropped; frames no
    /// track needs released.
    fn retire(
        &mut self,
        frame: &FrameObservation,
        config: &TrackConfig,
        evidence: Option<&dyn EvidenceFrames>,
        changes: &mut Vec<(DefectTrack, isize)>,
    ) {
        while self.resolved.front().is_some_and(|(at, _)| at + config.forget_resolved_after_ms <= frame.capture_ms) {
            if let Some((_, snapshot)) = self.resolved.pop_front() {
                changes.push((snapshot, -1));
            }
        }
        for live in self.tracks.iter().filter(|live| live.track.state == TrackState::Resolved) {
            self.resolved.push_back((frame.capture_ms, live.track.clone()));
        }
        // Tentative tracks that fell out of the window were flicker; resolved ones are done.
        self.tracks.retain(|live| match live.track.state {
            TrackState::Tentative => live.seen != 0,
            TrackState::Confirmed => true,
            TrackState::Resolved => false,
        });
        if let Some(frames) = evidence {
            let keep: Vec<u64> =
                self.tracks.iter().filter(|live| live.best_here).map(|live| live.track.best_frame_index).collect();
            frames.release(&frame.camera_id, frame.frame_index, &keep);
        }
    }
}

impl LiveTrack {
    fn anchor(detection: &Detection, roi: &Roi) -> LiveTrack {
        let (cx, cy) = detection.bbox.center();
        let id = stable_hash(&[
            detection.camera_id.as_bytes(),
            roi.asset_id.as_bytes(),
            detection.class.as_str().as_bytes(),
            &detection.capture_ms.to_le_bytes(),
            &(cx.round() as i64).to_le_bytes(),
            &(cy.round() as i64).to_le_bytes(),
        ]);
        let track = DefectTrack {
            track_id: format!("TR-{id:016x}"),
            camera_id: detection.camera_id.clone(),
            asset_id: roi.asset_id.clone(),
            class: detection.class,
            state: TrackState::Tentative,
            first_seen_ms: detection.capture_ms,
            last_seen_ms: detection.capture_ms,
            hits: 1,
            bbox: detection.bbox,
            area_px: detection.area_px,
            size_mm: roi.mm_per_px.map(|scale| size_mm(&detection.bbox, scale)),
            growth_px_per_min: 0.0,
            best_frame_index: detection.frame_index,
            best_bbox: detection.bbox,
            best_capture_ms: detection.capture_ms,
            model_version: detection.model_version.clone(),
            shadow: detection.shadow,
            evidence: None,
        };
        LiveTrack {
            track,
            seen: 1,
            best_confidence: detection.confidence,
            history: VecDeque::from([(detection.capture_ms, detection.area_px)]),
            mm_per_px: roi.mm_per_px,
            emitted: None,
            class_hits: vec![(detection.class, 1)],
            awaiting_sighting: false,
            watched_from: None,
            carried_growth: None,
            best_here: true,
        }
    }

    /// A track an earlier run left open. Its best frame is of that run, so the first
    /// sighting in this one becomes the best (and its evidence is drawn anew then).
    pub(super) fn restore(mut track: DefectTrack, mm_per_px: Option<f64>) -> LiveTrack {
        track.state = TrackState::Confirmed;
        LiveTrack {
            seen: 0,
            best_confidence: 0.0,
            history: VecDeque::new(),
            mm_per_px,
            emitted: None,
            class_hits: vec![(track.class, track.hits.max(1))],
            awaiting_sighting: true,
            watched_from: None,
            carried_growth: Some(track.growth_px_per_min),
            best_here: false,
            track,
        }
    }

    /// The overlap of a detection with the track, if enough to continue it: `min_iou`;
    /// for a restored track not seen yet, any overlap (its box is the earlier run's best
    /// frame's, and the defect may have changed since), or none if its box is unknown.
    /// A piece of the defect seen alone (mostly inside the track's box) continues it too,
    /// however small against the whole.
    fn overlap(&self, bbox: &BoundingBox, min_iou: f32) -> Option<f32> {
        let iou = self.track.bbox.iou(bbox);
        let enough = if self.awaiting_sighting {
            self.track.bbox.overlaps_or_unknown(bbox)
        } else {
            iou >= min_iou || inside_share(bbox, &self.track.bbox) >= 0.5
        };
        enough.then_some(iou)
    }

    fn sighting(&mut self, detection: &Detection, config: &TrackConfig) {
        self.seen |= 1;
        self.awaiting_sighting = false;
        match self.class_hits.iter_mut().find(|(class, _)| *class == detection.class) {
            Some((_, n)) => *n += 1,
            None => self.class_hits.push((detection.class, 1)),
        }
        let track = &mut self.track;
        // The class most frames say, `unknown` among them; on a tie, the one it has. A
        // class the model names in a few frames of a departure it mostly cannot name is
        // a guess: the wrong procedure and skill cost more than an inspection.
        let own = self.class_hits.iter().find(|(c, _)| *c == track.class).map_or(0, |(_, n)| *n);
        if let Some((class, n)) = self.class_hits.iter().max_by_key(|(_, n)| *n)
            && *n > own
        {
            track.class = *class;
        }
        track.hits += 1;
        track.last_seen_ms = detection.capture_ms;
        track.bbox = detection.bbox;
        track.area_px = detection.area_px;
        track.size_mm = self.mm_per_px.map(|scale| size_mm(&detection.bbox, scale));
        track.model_version.clone_from(&detection.model_version);
        // An `unknown` sighting of a named defect does not make its revisions shadow.
        if detection.class != DefectClass::Unknown || track.class == DefectClass::Unknown {
            track.shadow = detection.shadow;
        }
        if detection.confidence > self.best_confidence {
            self.best_confidence = detection.confidence;
            self.best_here = true;
            track.best_frame_index = detection.frame_index;
            track.best_bbox = detection.bbox;
            track.best_capture_ms = detection.capture_ms;
        }
        self.history.push_back((detection.capture_ms, detection.area_px));
        while self.history.front().is_some_and(|(t, _)| t + config.growth_window_ms < detection.capture_ms) {
            self.history.pop_front();
        }
        let measured = growth_per_min(&self.history);
        if measured.is_some() {
            self.carried_growth = None;
        }
        track.growth_px_per_min = measured.or(self.carried_growth).unwrap_or(0.0);
    }

    /// Whether the track was seen in each of its camera's last 3 frames, the first of
    /// them at least `span_ms` before `now` (`TrackConfig::confirm_span_ms`; 0: never).
    fn seen_in_a_row_over(&self, now: u64, span_ms: u64) -> bool {
        let third_last = self.history.len().checked_sub(3).map(|i| self.history[i].0);
        span_ms > 0 && self.seen & 0b111 == 0b111 && third_last.is_some_and(|t| now.saturating_sub(t) >= span_ms)
    }
}

/// The share of `inner`'s area that lies within `outer`.
fn inside_share(inner: &BoundingBox, outer: &BoundingBox) -> f32 {
    let w = ((inner.x + inner.width).min(outer.x + outer.width) - inner.x.max(outer.x)).max(0.0);
    let h = ((inner.y + inner.height).min(outer.y + outer.height) - inner.y.max(outer.y)).max(0.0);
    if inner.area() <= 0.0 { 0.0 } else { w * h / inner.area() }
}

/// Largest box dimension in millimetres, rounded to 0.1 mm.
fn size_mm(bbox: &BoundingBox, mm_per_px: f64) -> f64 {
    (f64::from(bbox.width.max(bbox.height)) * mm_per_px * 10.0).round() / 10.0
}

/// Least-squares slope of area over time, in square pixels per minute, rounded to 0.1;
/// `None` until the window spans a second.
fn growth_per_min(history: &VecDeque<(u64, f32)>) -> Option<f64> {
    let (Some(first), Some(last)) = (history.front(), history.back()) else { return None };
    if last.0.saturating_sub(first.0) < 1000 {
        return None;
    }
    let n = history.len() as f64;
    let mean_t = history.iter().map(|(t, _)| (t - first.0) as f64).sum::<f64>() / n;
    let mean_a = history.iter().map(|(_, a)| f64::from(*a)).sum::<f64>() / n;
    let (mut cov, mut var) = (0.0, 0.0);
    for (t, a) in history {
        let dt = (t - first.0) as f64 - mean_t;
        cov += dt * (f64::from(*a) - mean_a);
        var += dt * dt;
    }
    let per_ms = if var > 0.0 { cov / var } else { 0.0 };
    Some((per_ms * 60_000.0 * 10.0).round() / 10.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(index: u64, class: DefectClass) -> FrameObservation {
        let capture_ms = 1_000 + index * 200;
        FrameObservation {
            camera_id: "cam".into(),
            frame_index: index,
            capture_ms,
            detections: vec![Detection {
                camera_id: "cam".into(),
                frame_index: index,
                capture_ms,
                class,
                confidence: 0.9,
                bbox: BoundingBox { x: 10.0, y: 10.0, width: 12.0, height: 12.0 },
                area_px: 144.0,
                model_version: "m".into(),
                shadow: false,
            }],
        }
    }

    #[test]
    fn a_restored_track_waits_for_its_camera_and_goes_on_under_its_id_when_seen() {
        let config = TrackConfig {
            confirm_hits: 2,
            confirm_window_frames: 3,
            resolve_after_ms: 1_000,
            ..TrackConfig::default()
        };
        let roi = whole_view(Some(0.5));
        // Left open by an earlier run that last saw it at 500 ms, growing 30 px²/min.
        let mut earlier = frame(0, DefectClass::Crack).detections[0].clone();
        earlier.capture_ms = 500;
        let mut restored = LiveTrack::anchor(&earlier, &roi).track;
        restored.track_id = "TR-earlier".into();
        restored.state = TrackState::Confirmed;
        restored.first_seen_ms = 100;
        restored.hits = 9;
        restored.growth_px_per_min = 30.0;
        // Its box is the earlier run's best frame's: larger than the defect seen now
        // (overlap 0.02, below `min_iou`), which still continues it.
        restored.bbox = BoundingBox { x: 0.0, y: 0.0, width: 80.0, height: 80.0 };
        let mut tracks = CameraTracks { rois: vec![roi.clone()], ..CameraTracks::default() };
        tracks.tracks.push(LiveTrack::restore(restored, roi.mm_per_px));

        // The camera comes back long after: an empty frame neither resolves the track
        // (its absence counts from this run's first frame) nor puts it in the output.
        let mut empty = frame(10, DefectClass::Crack);
        empty.detections.clear();
        assert_eq!(tracks.observe(&empty, &config, 3, None), vec![]);
        assert_eq!(tracks.tracks[0].track.state, TrackState::Confirmed);

        // Seen again: the snapshot goes on under the earlier id, first detection and
        // growth (this run has not measured its own yet), and enters the output.
        let changes = tracks.observe(&frame(11, DefectClass::Crack), &config, 3, None);
        assert_eq!(changes.len(), 1, "{changes:?}");
        let (snapshot, diff) = &changes[0];
        assert_eq!(*diff, 1, "nothing of the earlier run is retracted");
        assert_eq!(snapshot.track_id, "TR-earlier");
        assert_eq!((snapshot.first_seen_ms, snapshot.hits, snapshot.state), (100, 10, TrackState::Confirmed));
        assert_eq!(snapshot.growth_px_per_min, 30.0);
        assert_eq!(snapshot.best_frame_index, 11, "the best frame is one of this run");
        assert_eq!(snapshot.size_mm, Some(6.0));

        // No longer seen for `resolve_after_ms`: resolved, the earlier snapshot retracted.
        let mut later = frame(20, DefectClass::Crack);
        later.detections.clear();
        let changes = tracks.observe(&later, &config, 3, None);
        assert_eq!(
            changes.iter().map(|(t, d)| (t.state, *d)).collect::<Vec<_>>(),
            vec![(TrackState::Confirmed, -1), (TrackState::Resolved, 1)]
        );
    }

    /// Asset A's ROI over a whole 100×100 view.
    fn whole_view(mm_per_px: Option<f64>) -> Roi {
        Roi { asset_id: "A".into(), x: 0, y: 0, width: 100, height: 100, mm_per_px, region: None, homography: None }
    }

    /// A camera with one asset over its whole view, whose tracks confirm on 2 of 3 frames.
    fn quickly_confirmed() -> (TrackConfig, CameraTracks) {
        let config = TrackConfig { confirm_hits: 2, confirm_window_frames: 3, ..TrackConfig::default() };
        let roi = whole_view(None);
        (config, CameraTracks { rois: vec![roi], ..CameraTracks::default() })
    }

    #[test]
    fn a_defect_the_model_calls_by_another_class_stays_one_track_of_the_class_most_frames_say() {
        let (config, mut tracks) = quickly_confirmed();
        // Four frames say crack, then three say missing component: one track, a crack.
        let classes = [DefectClass::Crack; 4].into_iter().chain([DefectClass::MissingComponent; 3]);
        let mut emitted = Vec::new();
        for (i, class) in classes.enumerate() {
            emitted.extend(tracks.observe(&frame(i as u64, class), &config, 3, None));
        }
        assert_eq!(tracks.tracks.len(), 1, "one physical defect, one track");
        assert_eq!(tracks.tracks[0].track.class, DefectClass::Crack);
        assert_eq!(tracks.tracks[0].track.hits, 7);
        assert!(emitted.iter().all(|(t, _)| t.class == DefectClass::Crack));
        // Once most frames say missing component, so does the track.
        for i in 7..9 {
            tracks.observe(&frame(i, DefectClass::MissingComponent), &config, 3, None);
        }
        assert_eq!(tracks.tracks.len(), 1);
        assert_eq!(tracks.tracks[0].track.class, DefectClass::MissingComponent);
    }

    /// Frame `index` captured at `capture_ms`, with the crack of [`frame`] or nothing.
    fn frame_at(index: u64, capture_ms: u64, seen: bool) -> FrameObservation {
        let mut observed = frame(index, DefectClass::Crack);
        observed.capture_ms = capture_ms;
        observed.detections.iter_mut().for_each(|d| d.capture_ms = capture_ms);
        observed.detections.retain(|_| seen);
        observed
    }

    #[test]
    fn at_a_frame_a_second_three_frames_in_a_row_confirm_and_at_five_they_do_not() {
        let config = TrackConfig::default();
        // The frame whose sighting confirms the track, counted from 1, each `every_ms`.
        let confirmed_at = |every_ms: u64, seen: &[bool]| {
            let mut tracks = CameraTracks { rois: vec![whole_view(None)], ..CameraTracks::default() };
            (0..seen.len())
                .find(|&i| {
                    let observed = frame_at(i as u64, 1_000 + i as u64 * every_ms, seen[i]);
                    tracks.observe(&observed, &config, config.confirm_window_frames, None);
                    tracks.tracks[0].track.state == TrackState::Confirmed
                })
                .map(|i| i + 1)
        };
        // One frame a second: the third frame, 2 s after the first, confirms.
        assert_eq!(confirmed_at(1_000, &[true; 8]), Some(3));
        // Five frames a second: `confirm_hits` (5) decides, as before.
        assert_eq!(confirmed_at(200, &[true; 8]), Some(5));
        // A gap breaks the run of three: seen, missed, seen, seen at 1 s is not confirmed
        // by the span (3 of the last 4 frames), only later by the count.
        assert_eq!(confirmed_at(1_000, &[true, false, true, true]), None);
        assert_eq!(confirmed_at(1_000, &[true, false, true, true, true, true]), Some(5));
    }

    #[test]
    fn a_departure_named_in_a_few_frames_and_unknown_in_most_is_unknown() {
        let (config, mut tracks) = quickly_confirmed();
        // Two frames name misalignment, then five cannot name it.
        let classes = [DefectClass::Misalignment; 2].into_iter().chain([DefectClass::Unknown; 5]);
        for (i, class) in classes.enumerate() {
            tracks.observe(&frame(i as u64, class), &config, 3, None);
        }
        assert_eq!(tracks.tracks.len(), 1);
        assert_eq!(tracks.tracks[0].track.class, DefectClass::Unknown);
    }

    /// Keeps nothing; remembers what the tracker asked for.
    #[derive(Default)]
    struct Asked {
        drawn: std::sync::Mutex<Vec<u64>>,
        kept: std::sync::Mutex<Vec<u64>>,
    }

    impl EvidenceFrames for Asked {
        fn draw(&self, request: &EvidenceRequest<'_>) -> Option<defectflow_schemas::Evidence> {
            self.drawn.lock().expect("drawn").push(request.frame_index);
            None
        }

        fn release(&self, _: &str, _: u64, _: &[u64]) {}

        fn keep(&self, _: &str, _: &str, frame_index: u64) {
            self.kept.lock().expect("kept").push(frame_index);
        }
    }

    #[test]
    fn a_confirmed_track_keeps_frames_spread_over_its_life_beside_its_evidence() {
        let (config, mut tracks) = quickly_confirmed();
        let asked = Asked::default();
        // Seen in 40 frames, missed in frames 20–24 (which keep nothing).
        for i in 0..45 {
            let observed = frame_at(i, 1_000 + i * 200, !(20..25).contains(&i));
            tracks.observe(&observed, &config, 3, Some(&asked));
        }
        // Sightings 4, 8, 16 and 32: frames 3, 7, 15 and 36 (five frames missed).
        assert_eq!(*asked.kept.lock().expect("kept"), vec![3, 7, 15, 36]);
        assert!(!asked.drawn.lock().expect("drawn").is_empty(), "the evidence is drawn as before");
    }
}
