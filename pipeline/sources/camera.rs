//! The camera supervisor: runs one camera's pipeline on its own thread, hands decoded
//! frames to the dataflow, and reconnects with backoff when the stream fails or stalls.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError, bounded};
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use gstreamer_video as gst_video;

pub use super::frame::{FramePixels, RawFrame};
use super::frame::{Spare, raw_frame};
use super::{CameraPipeline, SourceError, TimeBase};
use crate::clock::now_ms;
use crate::config::CameraConfig;

/// Where a camera is in its life-cycle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CameraState {
    Connecting,
    Playing,
    /// Waiting before the next reconnection attempt.
    Backoff,
    /// The stream ended normally (end of a file).
    Ended,
    /// Given up: a broken file, or too many failed attempts.
    Failed,
    Stopped,
}

impl CameraState {
    /// The state's name in reports and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            CameraState::Connecting => "connecting",
            CameraState::Playing => "playing",
            CameraState::Backoff => "backoff",
            CameraState::Ended => "ended",
            CameraState::Failed => "failed",
            CameraState::Stopped => "stopped",
        }
    }
}

/// Counters of one camera, shared between its supervisor and the dataflow.
#[derive(Debug)]
pub struct CameraStats {
    pub camera_id: String,
    /// Frames decoded by the pipeline.
    pub received: AtomicU64,
    /// Frames lost because the dataflow queue was full.
    pub dropped: AtomicU64,
    /// Frames that arrived behind the event-time frontier and were re-timed to it.
    pub late: AtomicU64,
    /// Successful connections after the first.
    pub reconnects: AtomicU64,
    /// Failed connection attempts and broken streams.
    pub errors: AtomicU64,
    state: Mutex<CameraState>,
    last_error: Mutex<Option<String>>,
    /// When the camera last made progress: its last frame entered the queue (before its
    /// first frame: when it was started).
    progress: Mutex<Instant>,
    /// Whether its pipeline holds a decoded frame it is handing to the queue (a recording
    /// waits there for room while the queue is full).
    holding: AtomicBool,
    /// Capture time of the first frame, ms since the epoch (0: none yet).
    pub first_capture_ms: AtomicU64,
    pub last_capture_ms: AtomicU64,
    /// Capture time of the stream's position 0 (a recording's start), from its first
    /// frame: ms since the epoch (0: not known; a live stream's frames are timed by the
    /// clock, not by their position).
    pub stream_start_ms: AtomicU64,
    /// Frames the source did not decode or convert (keyframe mode, `max_fps`).
    pub skipped: Arc<super::gate::Skipped>,
    /// How far the camera is known to send nothing (keyframe mode).
    pub lull: Arc<super::gate::Lull>,
}

impl CameraStats {
    fn new(camera_id: &str) -> CameraStats {
        CameraStats {
            camera_id: camera_id.to_owned(),
            received: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            late: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            state: Mutex::new(CameraState::Connecting),
            last_error: Mutex::new(None),
            progress: Mutex::new(Instant::now()),
            holding: AtomicBool::new(false),
            first_capture_ms: AtomicU64::new(0),
            last_capture_ms: AtomicU64::new(0),
            stream_start_ms: AtomicU64::new(0),
            skipped: Arc::default(),
            lull: Arc::default(),
        }
    }

    pub fn state(&self) -> CameraState {
        self.state.lock().map(|s| s.clone()).unwrap_or(CameraState::Failed)
    }

    pub(crate) fn set_state(&self, state: CameraState) {
        if let Ok(mut s) = self.state.lock() {
            *s = state;
        }
    }

    /// The most recent error of this camera, if any.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|e| e.clone())
    }

    fn record_error(&self, message: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(camera = %self.camera_id, error = %message, "camera error");
        if let Ok(mut e) = self.last_error.lock() {
            *e = Some(message);
        }
    }

    /// Whether the camera will never send another frame.
    pub fn finished(&self) -> bool {
        matches!(self.state(), CameraState::Ended | CameraState::Failed | CameraState::Stopped)
    }

    /// How long the camera has been silent: since its last frame entered the queue (or
    /// since it was started). A camera holding a frame while it waits for room in its
    /// queue is not silent: a recording held back by a full queue (the output waiting
    /// out a broker outage) sends again as soon as its queue is read. Counted as silence,
    /// that wait made it look idle (its next frames were re-timed behind the frontier)
    /// or stalled (it reconnected and replayed the recording from its start).
    pub fn silent_for(&self) -> Duration {
        // `holding` is cleared only after `progress` is stamped, so read it first.
        if self.holding.load(Ordering::Acquire) {
            return Duration::ZERO;
        }
        self.progress.lock().map(|t| t.elapsed()).unwrap_or_default()
    }

    /// The pipeline has a decoded frame in hand, to be queued.
    pub(crate) fn frame_in_hand(&self) {
        self.holding.store(true, Ordering::Release);
    }

    /// The frame in hand entered the queue (or was let go, the camera stopping).
    pub(crate) fn frame_handed_over(&self) {
        if let Ok(mut t) = self.progress.lock() {
            *t = Instant::now();
        }
        self.holding.store(false, Ordering::Release);
    }

    /// Moves the last progress `by` into the past.
    #[cfg(test)]
    pub(crate) fn backdate_progress(&self, by: Duration) {
        if let Ok(mut t) = self.progress.lock() {
            *t = Instant::now().checked_sub(by).unwrap_or(*t);
        }
    }
}

/// A running camera: its frames and its counters. Dropping it stops the camera.
#[derive(Debug)]
pub struct CameraHandle {
    pub frames: Receiver<RawFrame>,
    pub stats: Arc<CameraStats>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl CameraHandle {
    /// Asks the camera to stop without waiting; frames already queued stay readable.
    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// Whether the event-time frontier waits for this camera: frames wait in its queue
    /// (they would otherwise arrive behind the frontier and be re-timed), or it may still
    /// send and has not been silent for longer than `idle`.
    pub fn holds_frontier(&self, idle: Duration) -> bool {
        !self.frames.is_empty() || (!self.stats.finished() && self.stats.silent_for() <= idle)
    }

    /// The least capture time this camera may still send, given the latest it sent:
    /// later, between keyframes, when its keyframe gate knows it sends nothing before a
    /// delta unit it dropped ([`super::gate::Lull`]) and no frame waits in its queue.
    pub fn sends_nothing_before(&self, sent: u64) -> u64 {
        // Read before the queue: a frame queued before the lull moved on is then seen.
        let quiet = self.stats.lull.until_ms();
        if self.frames.is_empty() { sent.max(quiet) } else { sent }
    }

    /// Whether the supervisor thread has finished (after a stop, an end or a failure).
    pub fn is_shut_down(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }

    /// Asks the camera to stop and waits for its pipeline to shut down, discarding
    /// frames still queued.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            // Unblock a file pipeline waiting on a full queue.
            while !thread.is_finished() {
                while self.frames.try_recv().is_ok() {}
                std::thread::sleep(Duration::from_millis(5));
            }
            let _ = thread.join();
        }
    }
}

impl Drop for CameraHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts a camera on its own supervisor thread, which connects after `delay`;
/// `consumer` is unparked whenever a frame is queued, so the dataflow worker can sleep
/// between frames.
pub fn spawn(camera: CameraConfig, consumer: std::thread::Thread, delay: Duration) -> CameraHandle {
    let (tx, frames) = bounded(camera.queue_frames);
    let sender = FrameQueue { tx, rx: frames.clone() };
    let stats = Arc::new(CameraStats::new(&camera.id));
    let stop = Arc::new(AtomicBool::new(false));
    let thread = {
        let (stats, stop) = (Arc::clone(&stats), Arc::clone(&stop));
        std::thread::Builder::new().name(format!("camera-{}", camera.id)).spawn(move || {
            if wait(delay, &stop) {
                stats.set_state(CameraState::Stopped);
            } else {
                supervise(&camera, &sender, &stats, &stop, &consumer);
            }
        })
    };
    let thread = match thread {
        Ok(thread) => Some(thread),
        Err(e) => {
            stats.record_error(format!("cannot start camera thread: {e}"));
            stats.set_state(CameraState::Failed);
            None
        }
    };
    CameraHandle { frames, stats, stop, thread }
}

/// A camera with no pipeline behind it: the test sends its frames. Its state stays
/// `connecting`.
#[cfg(test)]
pub(crate) fn detached(camera_id: &str, queue_frames: usize) -> (Sender<RawFrame>, CameraHandle) {
    let (tx, frames) = bounded(queue_frames);
    let stats = Arc::new(CameraStats::new(camera_id));
    (tx, CameraHandle { frames, stats, stop: Arc::new(AtomicBool::new(false)), thread: None })
}

/// How one connection ended.
enum Outcome {
    Ended,
    Stopped,
    Broken(String),
}

fn supervise(
    camera: &CameraConfig,
    sender: &FrameQueue,
    stats: &Arc<CameraStats>,
    stop: &AtomicBool,
    consumer: &std::thread::Thread,
) {
    let retry = &camera.reconnect;
    let is_file = camera.url.starts_with("file://");
    // A network camera is always on: its stream ending (the server restarted, or said
    // goodbye) is a reason to connect again, not the end of the camera.
    let is_stream = camera.url.starts_with("rtsp://");
    let mut backoff = Duration::from_millis(retry.initial_backoff_ms);
    let mut failures = 0u32;
    let next_index = Arc::new(AtomicU64::new(0));
    let spare = Spare::default();
    let mut connections = 0u64;
    loop {
        stats.set_state(CameraState::Connecting);
        let received_before = stats.received.load(Ordering::Relaxed);
        let outcome = match super::build(camera, (&stats.skipped, &stats.lull)) {
            Ok(pipeline) => run_once(camera, pipeline, sender, stats, stop, (&next_index, &spare), consumer),
            Err(e @ SourceError::MissingElement { .. }) => {
                stats.record_error(format!("camera {}: {e}", camera.id));
                stats.set_state(CameraState::Failed);
                return;
            }
            Err(e) => Outcome::Broken(e.to_string()),
        };
        if stats.received.load(Ordering::Relaxed) > received_before {
            connections += 1;
            if connections > 1 {
                stats.reconnects.fetch_add(1, Ordering::Relaxed);
            }
            failures = 0;
            backoff = Duration::from_millis(retry.initial_backoff_ms);
        }
        let outcome = match outcome {
            Outcome::Ended if is_stream => Outcome::Broken("the stream ended".into()),
            outcome => outcome,
        };
        match outcome {
            Outcome::Ended => {
                tracing::info!(camera = %camera.id, frames = stats.received.load(Ordering::Relaxed), "stream ended");
                stats.set_state(CameraState::Ended);
                return;
            }
            Outcome::Stopped => {
                stats.set_state(CameraState::Stopped);
                return;
            }
            Outcome::Broken(message) => {
                stats.record_error(format!("camera {}: {message}", camera.id));
                failures += 1;
                if is_file || retry.max_attempts.is_some_and(|max| failures >= max) {
                    stats.set_state(CameraState::Failed);
                    return;
                }
            }
        }
        stats.set_state(CameraState::Backoff);
        tracing::info!(camera = %camera.id, attempt = failures, backoff_ms = backoff.as_millis() as u64, "reconnecting");
        if wait(backoff, stop) {
            stats.set_state(CameraState::Stopped);
            return;
        }
        backoff = (backoff * 2).min(Duration::from_millis(retry.max_backoff_ms));
    }
}

/// Sleeps `how_long` unless stopped first; whether it was stopped.
fn wait(how_long: Duration, stop: &AtomicBool) -> bool {
    let wake = Instant::now() + how_long;
    while Instant::now() < wake {
        if stop.load(Ordering::Relaxed) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20).min(wake.saturating_duration_since(Instant::now())));
    }
    stop.load(Ordering::Relaxed)
}

/// Plays one connection of the camera until it ends, breaks, stalls or is stopped.
fn run_once(
    camera: &CameraConfig,
    built: CameraPipeline,
    sender: &FrameQueue,
    stats: &Arc<CameraStats>,
    stop: &AtomicBool,
    (next_index, spare): (&Arc<AtomicU64>, &Spare),
    consumer: &std::thread::Thread,
) -> Outcome {
    let CameraPipeline { pipeline, sink, live, time_base, feeder, gate } = built;
    let started = Instant::now();
    // A recording may be replayed with its own capture times (see `start_ms`).
    let base_ms = camera.start_ms.filter(|_| !live).unwrap_or_else(now_ms);
    if let Some(gate) = &gate {
        gate.start(base_ms);
    }
    let halted = Arc::new(AtomicBool::new(false));
    sink.set_callbacks(
        gst_app::AppSinkCallbacks::builder()
            .new_sample({
                let (sender, stats, next_index) = (sender.clone(), Arc::clone(stats), Arc::clone(next_index));
                let spare = Arc::clone(spare);
                let (halted, consumer) = (Arc::clone(&halted), consumer.clone());
                // Caps change at most on renegotiation: parse them once, not per frame.
                let mut layout: Option<(gst::Caps, gst_video::VideoInfo)> = None;
                move |sink| {
                    let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                    let caps = sample.caps().ok_or(gst::FlowError::NotNegotiated)?;
                    if layout.as_ref().is_none_or(|(known, _)| known.as_ref() != caps) {
                        let info = gst_video::VideoInfo::from_caps(caps).map_err(|_| gst::FlowError::NotNegotiated)?;
                        layout = Some((caps.to_owned(), info));
                    }
                    let info = layout.as_ref().map(|(_, info)| info).ok_or(gst::FlowError::NotNegotiated)?;
                    let frame = raw_frame(&sample, info, time_base, base_ms, (&next_index, &spare))?;
                    stats.frame_in_hand();
                    stats.received.fetch_add(1, Ordering::Relaxed);
                    let _ = stats.first_capture_ms.compare_exchange(
                        0,
                        frame.capture_ms,
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    );
                    stats.last_capture_ms.store(frame.capture_ms, Ordering::Relaxed);
                    if let (TimeBase::Pts, Some(pts_ns)) = (time_base, frame.pts_ns) {
                        let start = frame.capture_ms.saturating_sub(pts_ns / 1_000_000);
                        let _ = stats.stream_start_ms.compare_exchange(0, start, Ordering::Relaxed, Ordering::Relaxed);
                    }
                    let capture_ms = frame.capture_ms;
                    let delivered = deliver(frame, &sender, live, &stats, &halted);
                    stats.lull.emerged(capture_ms);
                    stats.frame_handed_over();
                    consumer.unpark();
                    delivered
                }
            })
            .build(),
    );
    if let Err(e) = pipeline.set_state(gst::State::Playing) {
        let detail = first_bus_error(&pipeline).unwrap_or_else(|| e.to_string());
        let _ = pipeline.set_state(gst::State::Null);
        return Outcome::Broken(detail);
    }
    stats.set_state(CameraState::Playing);
    let bus = pipeline.bus();
    let stall = Duration::from_millis(camera.reconnect.stall_timeout_ms);
    let outcome = loop {
        if stop.load(Ordering::Relaxed) {
            break Outcome::Stopped;
        }
        let message = bus.as_ref().and_then(|bus| {
            bus.timed_pop_filtered(gst::ClockTime::from_mseconds(50), &[gst::MessageType::Eos, gst::MessageType::Error])
        });
        if let Some(message) = message {
            match message.view() {
                gst::MessageView::Eos(_) if !live => break Outcome::Ended,
                gst::MessageView::Eos(_) => break Outcome::Broken("stream ended".into()),
                gst::MessageView::Error(err) => break Outcome::Broken(describe_error(err)),
                _ => {}
            }
        }
        // Silent since its last frame, or since this connection began. A file that is
        // merely slow to be consumed (the queue is full) is not stalled.
        let silent = stats.silent_for().min(started.elapsed());
        let stall = gate.as_ref().map_or(stall, |g| g.stall_allowance(stall));
        if silent > stall && (live || sender.is_empty()) {
            break Outcome::Broken(format!("no frame for {} ms", silent.as_millis()));
        }
    };
    halted.store(true, Ordering::Relaxed);
    drop(feeder);
    let _ = pipeline.set_state(gst::State::Null);
    outcome
}

/// A camera's queue to the dataflow, with the means to let its oldest frame go.
#[derive(Clone)]
struct FrameQueue {
    tx: Sender<RawFrame>,
    rx: crossbeam_channel::Receiver<RawFrame>,
}

impl FrameQueue {
    fn is_empty(&self) -> bool {
        self.tx.is_empty()
    }
}

/// Hands a frame to the dataflow: when the queue is full, a live camera drops the
/// oldest frame queued (the dataflow is behind; the newest frames tell it most and
/// keep the latency down), a file waits for room (until the camera is stopped).
fn deliver(
    frame: RawFrame,
    sender: &FrameQueue,
    live: bool,
    stats: &CameraStats,
    halted: &AtomicBool,
) -> Result<gst::FlowSuccess, gst::FlowError> {
    let mut frame = frame;
    if live {
        loop {
            match sender.tx.try_send(frame) {
                Ok(()) => return Ok(gst::FlowSuccess::Ok),
                Err(TrySendError::Full(back)) => {
                    if sender.rx.try_recv().is_ok() {
                        stats.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                    frame = back;
                }
                Err(TrySendError::Disconnected(_)) => return Err(gst::FlowError::Flushing),
            }
        }
    }
    loop {
        match sender.tx.send_timeout(frame, Duration::from_millis(50)) {
            Ok(()) => return Ok(gst::FlowSuccess::Ok),
            Err(crossbeam_channel::SendTimeoutError::Timeout(back)) if !halted.load(Ordering::Relaxed) => frame = back,
            Err(_) => return Err(gst::FlowError::Flushing),
        }
    }
}

fn describe_error(err: &gst::message::Error) -> String {
    let element = err.src().map(|s| s.name().to_string()).unwrap_or_else(|| "pipeline".into());
    match err.debug() {
        Some(debug) => format!("{element}: {} ({})", err.error(), debug_tail(&debug)),
        None => format!("{element}: {}", err.error()),
    }
}

/// The last line of GStreamer's debug text: the most specific part.
fn debug_tail(text: &str) -> &str {
    text.lines().last().unwrap_or(text)
}

fn first_bus_error(pipeline: &gst::Pipeline) -> Option<String> {
    let bus = pipeline.bus()?;
    let message = bus.timed_pop_filtered(gst::ClockTime::from_mseconds(200), &[gst::MessageType::Error])?;
    match message.view() {
        gst::MessageView::Error(err) => Some(describe_error(err)),
        _ => None,
    }
}
