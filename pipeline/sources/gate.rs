//! Decoding only what the model will look at. A camera pipeline passes its parsed
//! stream through a [`Gate`] twice:
//!
//! - before the decoder, where in keyframe mode every delta unit is dropped (decoding a
//!   1080p frame costs far more than anything after it, and a keyframe needs no other
//!   frame to decode);
//! - after the decoder and before scaling and conversion, where frames beyond the
//!   camera's `max_fps` are dropped by the same rule as the dataflow's (the first frame
//!   of each `1 / max_fps` slot of capture time), so they are never converted or copied.
//!
//! In `auto` mode the keyframe interval is measured from the stream itself, and delta
//! units are dropped while keyframes come at least as often as `max_fps`; the GOP length
//! thus bounds the model's frame rate, which is why `all` exists. Whatever is skipped is
//! counted, and a keyframe-only stream, silent between keyframes, is not taken for
//! stalled before two keyframe intervals have passed.
//!
//! A delta unit dropped before the decoder still tells something: the camera will send
//! no frame captured before it (a [`Lull`]), so the event-time frontier need not wait a
//! whole keyframe interval for the camera's next frame.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use gstreamer as gst;
use gstreamer::prelude::*;

use super::TimeBase;
use crate::clock::now_ms;
use crate::config::{CameraConfig, DecodeMode};

/// The gate of one camera pipeline (shared by its two pad probes and its supervisor).
#[derive(Debug)]
pub struct Gate {
    mode: DecodeMode,
    max_fps: Option<f64>,
    time_base: TimeBase,
    /// Capture time of PTS 0 (set when the connection starts playing).
    base_ms: AtomicU64,
    /// Whether delta units are being dropped now.
    keyframes_only: AtomicBool,
    last_keyframe_pts: AtomicU64,
    /// The latest interval between keyframes, ns (0: not yet known).
    pub gop_ns: AtomicU64,
    /// Slot of the last frame let through to conversion (`u64::MAX`: none yet).
    last_slot: AtomicU64,
    skipped: Arc<Skipped>,
    lull: Arc<Lull>,
}

/// Frames a camera's source left out, over all its connections.
#[derive(Debug, Default)]
pub struct Skipped {
    /// Delta units dropped before the decoder (keyframe mode).
    pub undecoded: AtomicU64,
    /// Decoded frames dropped before conversion (beyond `max_fps`).
    pub decoded: AtomicU64,
}

/// How far a keyframe-only camera is known to be quiet, over all its connections.
///
/// A delta unit dropped before the decoder, once every frame let through to the
/// decoder has come out of the pipeline, means the camera sends no frame captured
/// before that unit: the frames still to come are later keyframes. Nothing in flight is
/// judged by capture time (the latest frame out is no earlier than the latest let in),
/// so a frame the decoder holds back or loses only delays the lull until the next one
/// comes out.
#[derive(Debug, Default)]
pub struct Lull {
    /// Capture time of the latest buffer let through to the decoder, ms.
    admitted_ms: AtomicU64,
    /// Capture time of the latest frame out of the pipeline (queued, or dropped before
    /// conversion), ms.
    emerged_ms: AtomicU64,
    /// No frame captured before this will come (0: nothing known).
    until_ms: AtomicU64,
}

impl Lull {
    /// The camera sends no frame captured before this (0: nothing known).
    pub fn until_ms(&self) -> u64 {
        self.until_ms.load(Ordering::Acquire)
    }

    /// A frame captured at `capture_ms` left the pipeline; called after it is queued.
    pub fn emerged(&self, capture_ms: u64) {
        self.emerged_ms.fetch_max(capture_ms, Ordering::AcqRel);
    }

    /// A buffer captured at `capture_ms` was let through to the decoder.
    pub(crate) fn admitted(&self, capture_ms: u64) {
        self.admitted_ms.fetch_max(capture_ms, Ordering::AcqRel);
    }

    /// A delta unit captured at `capture_ms` was dropped before the decoder.
    pub(crate) fn skipped(&self, capture_ms: u64) {
        if self.emerged_ms.load(Ordering::Acquire) >= self.admitted_ms.load(Ordering::Acquire) {
            self.until_ms.fetch_max(capture_ms, Ordering::AcqRel);
        }
    }
}

/// The camera's counters a gate writes to: what it skipped, and how far the camera is
/// quiet.
pub type GateRecord<'a> = (&'a Arc<Skipped>, &'a Arc<Lull>);

const UNKNOWN: u64 = u64::MAX;

impl Gate {
    pub fn new(camera: &CameraConfig, time_base: TimeBase, (skipped, lull): GateRecord) -> Arc<Gate> {
        Arc::new(Gate {
            mode: camera.decode,
            max_fps: camera.max_fps,
            time_base,
            base_ms: AtomicU64::new(0),
            keyframes_only: AtomicBool::new(camera.decode == DecodeMode::Keyframes),
            last_keyframe_pts: AtomicU64::new(UNKNOWN),
            gop_ns: AtomicU64::new(0),
            last_slot: AtomicU64::new(UNKNOWN),
            skipped: Arc::clone(skipped),
            lull: Arc::clone(lull),
        })
    }

    /// Sets the capture time of PTS 0 for this connection.
    pub fn start(&self, base_ms: u64) {
        self.base_ms.store(base_ms, Ordering::Relaxed);
        self.last_slot.store(UNKNOWN, Ordering::Relaxed);
    }

    /// Whether the camera's decoder should run on one thread: when the model samples the
    /// camera (`max_fps`) or only keyframes are decoded.
    pub fn single_threaded_decoder(&self) -> bool {
        self.max_fps.is_some() || self.mode == DecodeMode::Keyframes
    }

    pub fn keyframes_only(&self) -> bool {
        self.keyframes_only.load(Ordering::Relaxed)
    }

    /// How long the camera may stay silent before it counts as stalled: `stall`, or
    /// two keyframe intervals while only keyframes are decoded.
    pub fn stall_allowance(&self, stall: std::time::Duration) -> std::time::Duration {
        let gop = std::time::Duration::from_nanos(self.gop_ns.load(Ordering::Relaxed));
        if self.keyframes_only() { stall.max(gop * 2) } else { stall }
    }

    /// The capture time of `buffer` on this connection (`None`: a file's buffer without
    /// a timestamp).
    fn capture_ms(&self, buffer: &gst::BufferRef) -> Option<u64> {
        match self.time_base {
            TimeBase::Pts => buffer.pts().map(|pts| self.base_ms.load(Ordering::Relaxed) + pts.mseconds()),
            TimeBase::Arrival => Some(now_ms()),
        }
    }

    /// Before the decoder: measures the keyframe interval and lets a delta unit through
    /// unless only keyframes are decoded.
    fn admit_parsed(&self, buffer: &gst::BufferRef) -> bool {
        let admitted = self.decide_parsed(buffer);
        if let Some(capture_ms) = self.capture_ms(buffer) {
            if admitted { self.lull.admitted(capture_ms) } else { self.lull.skipped(capture_ms) }
        }
        admitted
    }

    fn decide_parsed(&self, buffer: &gst::BufferRef) -> bool {
        if !buffer.flags().contains(gst::BufferFlags::DELTA_UNIT) {
            if let Some(pts) = buffer.pts().map(|t| t.nseconds()) {
                let last = self.last_keyframe_pts.swap(pts, Ordering::Relaxed);
                if last != UNKNOWN && pts > last {
                    self.gop_ns.store(pts - last, Ordering::Relaxed);
                    if self.mode == DecodeMode::Auto {
                        let only = keyframes_suffice(pts - last, self.max_fps);
                        self.keyframes_only.store(only, Ordering::Relaxed);
                    }
                }
            }
            return true;
        }
        if self.keyframes_only() {
            self.skipped.undecoded.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// After the decoder: the first frame of each `1 / max_fps` slot of capture time.
    fn admit_decoded(&self, buffer: &gst::BufferRef) -> bool {
        let Some(max_fps) = self.max_fps.filter(|f| *f > 0.0) else { return true };
        let capture_ms = self.capture_ms(buffer).unwrap_or_else(now_ms);
        let slot = (capture_ms as f64 * max_fps / 1000.0).floor() as u64;
        let last = self.last_slot.load(Ordering::Relaxed);
        if last != UNKNOWN && slot <= last {
            self.skipped.decoded.fetch_add(1, Ordering::Relaxed);
            self.lull.emerged(capture_ms);
            return false;
        }
        self.last_slot.store(slot, Ordering::Relaxed);
        true
    }

    /// Drops what [`Gate::admit_parsed`] refuses on `pad` (the decoder's input).
    pub fn guard_parsed(self: &Arc<Self>, pad: &gst::Pad) {
        let gate = Arc::clone(self);
        pad.add_probe(gst::PadProbeType::BUFFER, move |_, info| match info.buffer() {
            Some(buffer) if !gate.admit_parsed(buffer) => dropped(info),
            _ => gst::PadProbeReturn::Ok,
        });
    }

    /// Drops what [`Gate::admit_decoded`] refuses on `pad` (the converter's input).
    pub fn guard_decoded(self: &Arc<Self>, pad: &gst::Pad) {
        let gate = Arc::clone(self);
        pad.add_probe(gst::PadProbeType::BUFFER, move |_, info| match info.buffer() {
            Some(buffer) if !gate.admit_decoded(buffer) => dropped(info),
            _ => gst::PadProbeReturn::Ok,
        });
    }
}

/// Takes the probed buffer out of the stream and lets it go (`Handled`: the probe owns
/// what it took, so GStreamer does not release it a second time).
fn dropped(info: &mut gst::PadProbeInfo) -> gst::PadProbeReturn {
    drop(info.data.take());
    gst::PadProbeReturn::Handled
}

/// Whether keyframes `interval_ns` apart give the model all the frames `max_fps` asks
/// for (without `max_fps`, every frame is wanted: no).
pub fn keyframes_suffice(interval_ns: u64, max_fps: Option<f64>) -> bool {
    let Some(max_fps) = max_fps.filter(|f| *f > 0.0) else { return false };
    // A little slack: 15 fps footage with a keyframe every 15 frames is 1 keyframe/s.
    interval_ns > 0 && 1e9 / interval_ns as f64 >= max_fps * 0.99
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyframes_suffice_when_they_come_as_often_as_the_model_looks() {
        let second = 1_000_000_000;
        assert!(keyframes_suffice(second, Some(1.0)));
        assert!(keyframes_suffice(second, Some(0.5)));
        assert!(!keyframes_suffice(second, Some(2.0)));
        assert!(!keyframes_suffice(2 * second, Some(1.0)), "a 2 s GOP cannot give 1 frame/s");
        assert!(!keyframes_suffice(second, None), "no max_fps: every frame");
        assert!(keyframes_suffice(second / 15 * 15, Some(1.0)), "rounding of 15 frames at 15 fps");
    }

    #[test]
    fn decoded_frames_are_thinned_by_the_dataflow_slot_rule() {
        gst::init().expect("gstreamer");
        let camera = CameraConfig { max_fps: Some(5.0), ..CameraConfig::new("c", "file:///a.mp4") };
        let skipped = Arc::default();
        let gate = Gate::new(&camera, TimeBase::Pts, (&skipped, &Arc::default()));
        gate.start(1_000_000);
        // 15 fps for 1 s: frames at 0, 66, 133, ... ms; slots of 200 ms.
        let kept: Vec<u64> = (0..15u64)
            .filter(|i| {
                let mut buffer = gst::Buffer::new();
                buffer.get_mut().expect("fresh").set_pts(gst::ClockTime::from_nseconds(i * 1_000_000_000 / 15));
                gate.admit_decoded(&buffer)
            })
            .collect();
        assert_eq!(kept, vec![0, 3, 6, 9, 12]);
        assert_eq!(skipped.decoded.load(Ordering::Relaxed), 10);
    }

    /// Keyframe mode, 15 fps with a keyframe a second, the model at a frame every two
    /// seconds: a dropped delta unit tells that the camera is quiet up
    /// to its capture time, but only once the keyframe before it has come out.
    #[test]
    fn a_dropped_delta_unit_tells_how_far_the_camera_is_quiet_once_its_keyframe_is_out() {
        gst::init().expect("gstreamer");
        let camera = CameraConfig {
            decode: DecodeMode::Keyframes,
            max_fps: Some(0.5),
            ..CameraConfig::new("c", "file:///a.mp4")
        };
        let (skipped, lull) = (Arc::default(), Arc::<Lull>::default());
        let gate = Gate::new(&camera, TimeBase::Pts, (&skipped, &lull));
        gate.start(1_000_000);
        let unit = |ms: u64, delta: bool| {
            let mut buffer = gst::Buffer::new();
            let b = buffer.get_mut().expect("fresh");
            b.set_pts(gst::ClockTime::from_mseconds(ms));
            if delta {
                b.set_flags(gst::BufferFlags::DELTA_UNIT);
            }
            buffer
        };
        assert!(gate.admit_parsed(&unit(0, false)), "a keyframe goes to the decoder");
        assert!(!gate.admit_parsed(&unit(66, true)));
        assert_eq!(lull.until_ms(), 0, "the keyframe may still come out: nothing known");
        assert!(gate.admit_decoded(&unit(0, false)));
        lull.emerged(1_000_000); // queued, as the appsink does
        assert!(!gate.admit_parsed(&unit(133, true)));
        assert_eq!(lull.until_ms(), 1_000_133);
        assert!(gate.admit_parsed(&unit(1_000, false)));
        assert!(!gate.admit_parsed(&unit(1_066, true)));
        assert_eq!(lull.until_ms(), 1_000_133, "the next keyframe is in flight");
        // Out of the decoder but dropped before conversion (beyond max_fps) is out too.
        assert!(!gate.admit_decoded(&unit(1_000, false)), "its two seconds already had their frame");
        assert!(!gate.admit_parsed(&unit(1_133, true)));
        assert_eq!(lull.until_ms(), 1_001_133);
        assert_eq!(skipped.undecoded.load(Ordering::Relaxed), 4);
    }
}
