//! A worker's side of ingest: frames from its cameras into the dataflow at their capture
//! times, and the event-time frontier.
//!
//! Frames enter at their capture time; the worker's input frontier is the least capture
//! time any of its cameras may still send, where a camera that has been silent for
//! `idle_timeout_ms` (or has ended) no longer counts and the frontier follows the wall
//! clock instead. A camera decoding keyframes only counts from the latest delta unit it
//! dropped, when that is later than its latest frame: it sends nothing earlier.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use defectflow_operators::decode::CameraSample;
use defectflow_schemas::FrameMeta;

use crate::clock::now_ms;
use crate::config::CameraConfig;
use crate::sources::camera::{CameraHandle, FramePixels};

/// A worker's side of ingest: moves frames from its cameras into the dataflow and keeps
/// the event-time frontier.
pub(super) struct Ingest {
    pub ids: Vec<Arc<str>>,
    /// Per camera: whether it replays a recording with its own capture times (`start_ms`).
    pub replays: Vec<bool>,
    /// Per camera: the latest capture time sent.
    pub last_sent: Vec<Option<u64>>,
    pub frontier: u64,
}

impl Ingest {
    /// The ingest of `cameras`, before any frame.
    pub fn new(cameras: &[CameraConfig]) -> Ingest {
        Ingest {
            ids: cameras.iter().map(|c| Arc::from(c.id.as_str())).collect(),
            replays: cameras.iter().map(|c| c.start_ms.is_some()).collect(),
            last_sent: vec![None; cameras.len()],
            frontier: 0,
        }
    }

    /// Sends every queued frame at its capture time (a frame behind the frontier is
    /// re-timed to it and counted late). Returns whether anything was sent.
    pub fn drain(&mut self, cameras: &[CameraHandle], mut send: impl FnMut(u64, CameraSample<FramePixels>)) -> bool {
        let mut delivered = false;
        for (c, cam) in cameras.iter().enumerate() {
            while let Ok(raw) = cam.frames.try_recv() {
                delivered = true;
                let mut time = raw.capture_ms;
                if time < self.frontier {
                    cam.stats.late.fetch_add(1, Ordering::Relaxed);
                    time = self.frontier;
                }
                self.last_sent[c] = Some(self.last_sent[c].map_or(time, |t| t.max(time)));
                let meta = FrameMeta {
                    camera_id: self.ids[c].to_string(),
                    frame_index: raw.frame_index,
                    capture_ms: time,
                    pts_ns: raw.pts_ns,
                    width: raw.width,
                    height: raw.height,
                };
                send(time, CameraSample { meta, planes: raw.planes, pixels: raw.pixels });
            }
        }
        delivered
    }

    /// The new frontier, if it moved: the least latest capture time of the cameras that
    /// hold it (`CameraHandle::holds_frontier`); with none, the wall clock, unless every
    /// camera replays a recording: then the end of the recordings, so a replay's time
    /// never jumps to today.
    pub fn advance(&mut self, cameras: &[CameraHandle], idle: Duration) -> Option<u64> {
        let all_replays = !self.replays.is_empty() && self.replays.iter().all(|r| *r);
        let quiet =
            if all_replays { self.last_sent.iter().flatten().max().map_or(self.frontier, |t| t + 1) } else { now_ms() };
        let next = cameras
            .iter()
            .zip(&self.last_sent)
            .zip(&self.replays)
            // A recording replayed at its own capture times is waited for however slowly
            // its frames come (a slow start on a busy machine, a pipeline held back): the
            // frontier moving on without it would re-time its next frames, and a replay
            // would then differ from the run. One that stalls fails (`stall_timeout_ms`).
            .filter(|((cam, _), replays)| cam.holds_frontier(if **replays { Duration::MAX } else { idle }))
            .map(|((cam, sent), _)| cam.sends_nothing_before(sent.unwrap_or(self.frontier)))
            .min()
            .unwrap_or(quiet)
            .max(self.frontier);
        (next > self.frontier).then(|| {
            self.frontier = next;
            next
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::camera::{self, RawFrame};
    use crossbeam_channel::Sender;

    /// Two test cameras (their queues' senders and their handles) and the ingest of both.
    fn two_cameras(ids: [&str; 2], replays: bool) -> ([Sender<RawFrame>; 2], [CameraHandle; 2], Ingest) {
        let [(a_tx, a), (b_tx, b)] = ids.map(|id| camera::detached(id, 16));
        let ingest = Ingest {
            ids: ids.map(Arc::from).to_vec(),
            replays: vec![replays; 2],
            last_sent: vec![None; 2],
            frontier: 0,
        };
        ([a_tx, b_tx], [a, b], ingest)
    }

    /// Two files played, one of them held back (its queue full, its pipeline waiting
    /// with the next frame in hand, for longer than the idle time, as while the output
    /// waits out a broker outage): its frames keep the frontier, so they enter at their
    /// own capture times.
    #[test]
    fn a_camera_held_back_keeps_the_frontier() {
        let ([fast_tx, held_tx], cameras, mut ingest) = two_cameras(["fast", "held"], false);
        let idle = Duration::from_secs(2);
        let mut sent = Vec::new();
        let mut drain = |ingest: &mut Ingest| ingest.drain(&cameras, |time, s| sent.push((s.meta.camera_id, time)));

        for (i, t) in [1_000, 5_000, 10_000].into_iter().enumerate() {
            fast_tx.send(RawFrame::blank(i as u64, t)).expect("queued");
        }
        for (i, t) in [1_000, 5_000].into_iter().enumerate() {
            held_tx.send(RawFrame::blank(i as u64, t)).expect("queued");
        }
        drain(&mut ingest);
        assert_eq!(ingest.advance(&cameras, idle), Some(5_000), "the slower camera holds the frontier");

        // Held back: two frames queued, a third in hand, and the last frame queued long ago.
        held_tx.send(RawFrame::blank(2, 5_040)).expect("queued");
        held_tx.send(RawFrame::blank(3, 5_080)).expect("queued");
        let held = &cameras[1].stats;
        held.frame_in_hand();
        held.backdate_progress(Duration::from_secs(60));
        assert_eq!(ingest.advance(&cameras, idle), None, "a held-back camera with frames queued still counts");

        drain(&mut ingest);
        assert_eq!(held.late.load(Ordering::Relaxed), 0, "no frame of the held camera was re-timed");
        assert!(sent.contains(&("held".to_owned(), 5_040)) && sent.contains(&("held".to_owned(), 5_080)));
        // Its queue is empty now, but its pipeline is about to queue the frame in hand.
        assert_eq!(ingest.advance(&cameras, idle), Some(5_080), "a camera with a frame in hand still counts");
        // Handed over, the frame is progress: the idle time starts again from it.
        held.frame_handed_over();
        assert_eq!(ingest.advance(&cameras, idle), None);
        // Silent for longer than the idle time, it no longer holds the other back.
        held.backdate_progress(Duration::from_secs(60));
        assert_eq!(ingest.advance(&cameras, idle), Some(10_000));
    }

    /// A camera decoding keyframes only counts from the latest delta unit it dropped,
    /// not from its latest frame, which is up to a keyframe interval old; a frame still
    /// in its queue holds the frontier where it was.
    #[test]
    fn a_keyframe_camera_counts_from_the_latest_delta_unit_it_dropped() {
        let ([fast_tx, key_tx], cameras, mut ingest) = two_cameras(["fast", "key"], true);
        let idle = Duration::from_secs(2);
        fast_tx.send(RawFrame::blank(0, 10_000)).expect("queued");
        key_tx.send(RawFrame::blank(0, 1_000)).expect("queued");
        ingest.drain(&cameras, |_, _| {});
        assert_eq!(ingest.advance(&cameras, idle), Some(1_000));
        let lull = &cameras[1].stats.lull;
        // Its keyframe at 1 s out, the delta units after it dropped.
        lull.admitted(1_000);
        lull.emerged(1_000);
        lull.skipped(1_933);
        assert_eq!(ingest.advance(&cameras, idle), Some(1_933));
        // The next keyframe queued, and the delta units after it dropped, before the
        // ingest reads the queue.
        lull.admitted(2_000);
        key_tx.send(RawFrame::blank(1, 2_000)).expect("queued");
        lull.emerged(2_000);
        lull.skipped(2_933);
        assert_eq!(ingest.advance(&cameras, idle), None, "a queued frame holds the frontier");
        ingest.drain(&cameras, |_, _| {});
        assert_eq!(ingest.advance(&cameras, idle), Some(2_933));
        assert_eq!(cameras[1].stats.late.load(Ordering::Relaxed), 0, "no frame re-timed");
    }

    /// A recording replayed at its own capture times is never idle: however long its
    /// next frame takes, the frontier waits for it, until it ends.
    #[test]
    fn a_replayed_recording_is_waited_for_until_it_ends() {
        let ([fast_tx, slow_tx], cameras, mut ingest) = two_cameras(["fast", "slow"], true);
        let idle = Duration::from_secs(2);
        fast_tx.send(RawFrame::blank(0, 10_000)).expect("queued");
        slow_tx.send(RawFrame::blank(0, 1_000)).expect("queued");
        ingest.drain(&cameras, |_, _| {});
        assert_eq!(ingest.advance(&cameras, idle), Some(1_000));
        cameras[1].stats.backdate_progress(Duration::from_secs(60));
        assert_eq!(ingest.advance(&cameras, idle), None, "a silent recording still holds the frontier");
        cameras[1].stats.set_state(camera::CameraState::Ended);
        assert_eq!(ingest.advance(&cameras, idle), Some(10_000), "an ended one does not");
    }
}
