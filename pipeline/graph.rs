//! The dataflow: cameras (sharded over timely workers) → decode → the stages after it.
//!
//! Each worker runs the cameras whose index modulo the worker count is its own, so each
//! camera's frames enter the dataflow exactly once. Frames enter at their capture time;
//! the worker's input frontier is the least capture time any of its cameras may still
//! send, where a camera that has been silent for `idle_timeout_ms` (or has ended) no
//! longer counts and the frontier follows the wall clock instead.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use defectflow_operators::decode::{CameraSample, Decode, DecodeOutcome, FrameTensor};
use defectflow_schemas::FrameMeta;
use timely::dataflow::ProbeHandle;
use timely::dataflow::operators::core::Probe;
use timely::dataflow::operators::vec::UnorderedInput;
use timely::dataflow::operators::Inspect;

use crate::config::RunConfig;
use crate::sources::camera::{self, CameraHandle, CameraStats, FramePixels, now_ms};

/// How the run should end.
#[derive(Clone, Debug)]
pub struct StopWhen {
    /// After this long; `None`: when every camera has ended.
    pub after: Option<Duration>,
    /// Set from outside (Ctrl-C) to stop early.
    pub interrupted: Arc<AtomicBool>,
}

/// Per-camera figures at the end of a run.
#[derive(Clone, Debug, PartialEq)]
pub struct CameraReport {
    pub camera_id: String,
    pub worker: usize,
    pub received: u64,
    /// Frames that reached the stages after decode.
    pub kept: u64,
    /// Frames left out by the camera's `max_fps`.
    pub sampled_out: u64,
    /// Frames lost to a full queue.
    pub dropped: u64,
    pub late: u64,
    pub reconnects: u64,
    pub errors: u64,
    /// Frames per second of capture time, first to last frame.
    pub fps: f64,
    pub state: String,
    pub last_error: Option<String>,
}

/// Called on each worker for every frame tensor that leaves decode.
pub type FrameObserver = Arc<dyn Fn(usize, &FrameTensor) + Send + Sync>;

/// Runs the ingest dataflow to the end and reports per camera.
pub fn run(
    config: &RunConfig,
    timely_config: timely::Config,
    stop: StopWhen,
    observer: Option<FrameObserver>,
) -> anyhow::Result<Vec<CameraReport>> {
    crate::sources::init()?;
    let config = config.clone();
    let config_order: Vec<String> = config.cameras.iter().map(|c| c.id.clone()).collect();
    let reports = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&reports);
    let guards = timely::execute(timely_config, move |worker| {
        let index = worker.index();
        let peers = worker.peers();
        let mine: Vec<_> =
            config.cameras.iter().enumerate().filter(|(i, _)| i % peers == index).map(|(_, c)| c.clone()).collect();
        let max_fps: HashMap<String, f64> =
            mine.iter().filter_map(|c| c.max_fps.map(|f| (c.id.clone(), f))).collect();
        let kept: Arc<Mutex<HashMap<String, (u64, u64)>>> = Arc::default();
        let probe = ProbeHandle::new();
        let (mut input, mut capability) = worker.dataflow::<u64, _, _>(|scope| {
            let ((input, capability), samples) = scope.new_unordered_input::<CameraSample<FramePixels>>();
            let counts = Arc::clone(&kept);
            let observer = observer.clone();
            samples
                .decode(max_fps, move |meta: &FrameMeta, outcome| {
                    let Ok(mut counts) = counts.lock() else { return };
                    let entry = counts.entry(meta.camera_id.clone()).or_default();
                    match outcome {
                        DecodeOutcome::Kept => entry.0 += 1,
                        DecodeOutcome::Sampled => entry.1 += 1,
                        DecodeOutcome::Failed(error) => tracing::warn!(%error, "frame not decoded"),
                    }
                })
                .inspect(move |tensor| {
                    if let Some(observer) = &observer {
                        observer(index, tensor);
                    }
                })
                .probe_with(&probe);
            (input, capability)
        });

        let mut cameras: Vec<CameraHandle> = mine.iter().cloned().map(camera::spawn).collect();
        let ids: Vec<Arc<str>> = mine.iter().map(|c| Arc::from(c.id.as_str())).collect();
        let started = Instant::now();
        // Per camera: last capture time sent.
        let mut last_sent: Vec<Option<u64>> = vec![None; cameras.len()];
        let idle = Duration::from_millis(config.runtime.idle_timeout_ms);
        let mut frontier = 0u64;
        loop {
            let mut delivered = false;
            for (c, cam) in cameras.iter().enumerate() {
                while let Ok(raw) = cam.frames.try_recv() {
                    delivered = true;
                    let mut time = raw.capture_ms;
                    if time < frontier {
                        cam.stats.late.fetch_add(1, Ordering::Relaxed);
                        time = frontier;
                    }
                    last_sent[c] = Some(last_sent[c].map_or(time, |t| t.max(time)));
                    let meta = FrameMeta {
                        camera_id: ids[c].to_string(),
                        frame_index: raw.frame_index,
                        capture_ms: time,
                        pts_ns: raw.pts_ns,
                        width: raw.width,
                        height: raw.height,
                    };
                    let sample = CameraSample { meta, stride: raw.stride, pixels: raw.pixels };
                    input.activate().session(&capability.delayed(&time)).give(sample);
                }
            }
            let now = now_ms();
            let next = cameras
                .iter()
                .zip(&last_sent)
                .filter(|(cam, _)| !cam.stats.finished() && !is_idle(&cam.stats, now, idle))
                .map(|(_, sent)| sent.map_or(frontier, |t| t))
                .min()
                .unwrap_or(now)
                .max(frontier);
            if next > frontier {
                frontier = next;
                capability.downgrade(&frontier);
            }
            let interrupted = stop.interrupted.load(Ordering::Relaxed);
            let timed_out = stop.after.is_some_and(|d| started.elapsed() >= d);
            let all_done = stop.after.is_none() && cameras.iter().all(|c| c.stats.finished() && c.frames.is_empty());
            if interrupted || timed_out || all_done {
                break;
            }
            worker.step_or_park(if delivered { Some(Duration::ZERO) } else { Some(Duration::from_millis(5)) });
        }
        for cam in &mut cameras {
            cam.stop();
        }
        drop(capability);
        drop(input);
        while !probe.done() {
            worker.step();
        }
        let kept = kept.lock().map(|k| k.clone()).unwrap_or_default();
        let mut out = sink.lock().expect("report lock");
        for cam in &cameras {
            out.push(report(index, &cam.stats, kept.get(&cam.stats.camera_id).copied().unwrap_or_default()));
        }
    })
    .map_err(|e| anyhow::anyhow!("timely: {e}"))?;
    for result in guards.join() {
        result.map_err(|e| anyhow::anyhow!("a dataflow worker failed: {e}"))?;
    }
    let mut reports = reports.lock().map(|r| r.clone()).unwrap_or_default();
    reports.sort_by_key(|r| config_order.iter().position(|id| *id == r.camera_id));
    Ok(reports)
}

fn is_idle(stats: &CameraStats, now: u64, idle: Duration) -> bool {
    // A camera that has sent nothing yet is given the idle time from its start.
    let last = stats.last_frame_wall_ms.load(Ordering::Relaxed);
    let reference = if last == 0 { stats.started_wall_ms } else { last };
    now.saturating_sub(reference) > idle.as_millis() as u64
}

fn report(worker: usize, stats: &CameraStats, (kept, sampled_out): (u64, u64)) -> CameraReport {
    let first = stats.first_capture_ms.load(Ordering::Relaxed);
    let last = stats.last_capture_ms.load(Ordering::Relaxed);
    let received = stats.received.load(Ordering::Relaxed);
    let fps = if last > first && received > 1 { (received - 1) as f64 * 1000.0 / (last - first) as f64 } else { 0.0 };
    CameraReport {
        camera_id: stats.camera_id.clone(),
        worker,
        received,
        kept,
        sampled_out,
        dropped: stats.dropped.load(Ordering::Relaxed),
        late: stats.late.load(Ordering::Relaxed),
        reconnects: stats.reconnects.load(Ordering::Relaxed),
        errors: stats.errors.load(Ordering::Relaxed),
        fps,
        state: format!("{:?}", stats.state()).to_lowercase(),
        last_error: stats.last_error(),
    }
}
