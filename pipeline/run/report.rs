//! What a run came to: per camera, per stage, and the work-order messages it emitted.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use defectflow_schemas::{BoundingBox, DefectClass, Detection, Emitted, Priority, StagingKind};

use crate::metrics::Stage;
use crate::sinks::{SinkCount, SinkKind};
use crate::sources::camera::CameraStats;

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
    /// Delta units the source did not decode (keyframe mode).
    pub skipped_undecoded: u64,
    /// Decoded frames the source did not convert (beyond `max_fps`).
    pub skipped_decoded: u64,
    pub late: u64,
    pub reconnects: u64,
    pub errors: u64,
    /// Frames per second of capture time, first to last frame.
    pub fps: f64,
    pub state: String,
    pub last_error: Option<String>,
    /// Capture time of the stream's position 0, for a recording (ms since the epoch).
    pub stream_start_ms: Option<u64>,
}

impl CameraReport {
    /// A camera's figures from its counters and its (kept, sampled out) frame counts.
    pub fn of(worker: usize, stats: &CameraStats, (kept, sampled_out): (u64, u64)) -> CameraReport {
        let first = stats.first_capture_ms.load(Ordering::Relaxed);
        let last = stats.last_capture_ms.load(Ordering::Relaxed);
        let received = stats.received.load(Ordering::Relaxed);
        let fps =
            if last > first && received > 1 { (received - 1) as f64 * 1000.0 / (last - first) as f64 } else { 0.0 };
        CameraReport {
            camera_id: stats.camera_id.clone(),
            worker,
            received,
            kept,
            sampled_out,
            dropped: stats.dropped.load(Ordering::Relaxed),
            skipped_undecoded: stats.skipped.undecoded.load(Ordering::Relaxed),
            skipped_decoded: stats.skipped.decoded.load(Ordering::Relaxed),
            late: stats.late.load(Ordering::Relaxed),
            reconnects: stats.reconnects.load(Ordering::Relaxed),
            errors: stats.errors.load(Ordering::Relaxed),
            fps,
            state: stats.state().name().to_owned(),
            last_error: stats.last_error(),
            stream_start_ms: Some(stats.stream_start_ms.load(Ordering::Relaxed)).filter(|&ms| ms > 0),
        }
    }
}

/// What the stages after decode did in a run.
#[derive(Debug, Default)]
pub struct StageReport {
    /// Version of the model running at the end: the last one swapped in under `[model]
    /// watch`, else the one it started with (`None`: no `[model]`).
    pub model_version: Option<String>,
    pub frames_inferred: u64,
    pub batches: u64,
    /// Total time spent in the network, in microseconds.
    pub inference_us: u64,
    pub detections: u64,
    /// What the work-order messages came to (worker 0 of process 0).
    pub summary: MessageSummary,
    /// What each sink of the run wrote, and left out because an earlier run had.
    pub sinks: Vec<SinkCount>,
    /// Wall-clock seconds from each new work order's first detection to its leaving
    /// defectflow (Kafka acknowledged, or handed to the outputs without Kafka).
    pub latencies_s: Vec<f64>,
    /// Wall-clock seconds from the capture of the frame that made each revision to the
    /// revision leaving defectflow: the pipeline's own delay, without the tracker's
    /// confirmation window.
    pub revision_latencies_s: Vec<f64>,
    /// Seconds from capture to each stage (frames, then revisions), when timed.
    pub stage_latencies_s: Vec<(Stage, Vec<f64>)>,
}

impl StageReport {
    /// What the sink of `kind` wrote, if the run had one.
    pub fn sink(&self, kind: SinkKind) -> Option<SinkCount> {
        self.sinks.iter().find(|s| s.kind == kind).copied()
    }
}

/// What a run's messages came to, for its closing report: counts, not the messages
/// themselves (a run may go on for months; the messages are in the sinks).
#[derive(Clone, Debug, Default)]
pub struct MessageSummary {
    /// Work-order revisions.
    pub revisions: u64,
    /// Every work order revised in the run, with its latest revision's facts.
    pub work_orders: BTreeMap<String, OrderSummary>,
    pub assignments: u64,
    pub alerts: u64,
    pub parts_staging: u64,
    pub dead_letters: u64,
    /// Parts a work order of the run was short of.
    pub shortages: BTreeSet<String>,
}

/// One work order in a [`MessageSummary`].
#[derive(Clone, Debug)]
pub struct OrderSummary {
    pub camera_id: String,
    pub defect_class: DefectClass,
    pub track_id: String,
    pub priority: Priority,
    /// Its revision 1 was in this run (it was not taken up from an earlier one).
    pub opened: bool,
    /// When revision 1 was made (capture time of the frame that made it) and its
    /// evidence box, where it was in this run.
    pub opened_at_ms: Option<u64>,
    pub opened_bbox: Option<BoundingBox>,
}

impl MessageSummary {
    pub fn add(&mut self, message: &Emitted) {
        match message {
            Emitted::WorkOrder(w) => {
                self.revisions += 1;
                let order = self.work_orders.entry(w.work_order_id.clone()).or_insert_with(|| OrderSummary {
                    camera_id: w.camera_id.clone(),
                    defect_class: w.defect_class,
                    track_id: w.track_id.clone(),
                    priority: w.severity.priority,
                    opened: false,
                    opened_at_ms: None,
                    opened_bbox: None,
                });
                order.priority = w.severity.priority;
                if w.revision == 1 {
                    order.opened = true;
                    order.opened_at_ms = Some(w.revised_at_ms);
                    order.opened_bbox = w.evidence.as_ref().map(|e| e.bbox);
                }
            }
            Emitted::Assignment(_) => self.assignments += 1,
            Emitted::Alert(_) => self.alerts += 1,
            Emitted::PartsStaging(s) => {
                self.parts_staging += 1;
                if s.kind == StagingKind::Shortage {
                    self.shortages.insert(s.part_id.clone());
                }
            }
            Emitted::DeadLetter(_) => self.dead_letters += 1,
        }
    }
}

/// The model's figures, counted by every worker and the inference threads.
#[derive(Debug, Default)]
pub struct StageCounters {
    pub frames: AtomicU64,
    pub batches: AtomicU64,
    pub inference_us: AtomicU64,
    pub detections: AtomicU64,
    /// Detections not yet taken by the worker that delivers, for the audit log.
    pub rows: Mutex<Vec<Detection>>,
}

impl StageCounters {
    /// The detections captured before `closed_before`, taken out of those held.
    pub fn take_detections(&self, closed_before: u64) -> Vec<Detection> {
        let mut all = self.rows.lock().unwrap_or_else(|p| p.into_inner());
        let (ready, later) = std::mem::take(&mut *all).into_iter().partition(|d| d.capture_ms < closed_before);
        *all = later;
        ready
    }
}
