//! A run: the model and the plant's reference opened once per process, the cameras
//! sharded over timely workers (camera i on worker i modulo the workers, so each
//! camera's frames enter the dataflow exactly once), each worker's loop
//! ([`worker`]), and what the run came to ([`report`]).

mod dataflow;
mod ingest;
pub(crate) mod model_watch;
mod report;
mod resume;
mod thresholds;
mod worker;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use defectflow_operators::decode::FrameTensor;
use defectflow_operators::gating::CameraGates;
use defectflow_operators::infer::InferencePool;
use defectflow_operators::track::CameraRoute;
use defectflow_schemas::{FrameObservation, StockMovement};

pub use report::{CameraReport, MessageSummary, OrderSummary, StageReport};

use crate::config::{ModelConfig, RunConfig};
use crate::metrics::Metrics;
use crate::reference::PlantReference;
use crate::sinks::evidence::EvidenceStore;
use crate::workflow::WorkflowConfig;
use report::StageCounters;
use worker::{Worker, WorkerOutcome};

/// How the run should end.
#[derive(Clone, Debug, Default)]
pub struct StopWhen {
    /// After this long; `None`: when every camera has ended.
    pub after: Option<Duration>,
    /// Set from outside (SIGINT, SIGTERM) to stop early.
    pub interrupted: Arc<AtomicBool>,
    /// Where each worker is in its stop, for a caller that bounds how long it may take.
    pub progress: Arc<StopProgress>,
}

impl StopWhen {
    /// A run that ends after `after`, or when every camera has ended.
    pub fn after(after: Option<Duration>) -> StopWhen {
        StopWhen { after, ..StopWhen::default() }
    }
}

/// What each worker is doing while the run stops (`worker index → step`); a worker that
/// has finished is absent.
#[derive(Debug, Default)]
pub struct StopProgress(std::sync::Mutex<std::collections::BTreeMap<usize, String>>);

impl StopProgress {
    fn at(&self, worker: usize, step: impl Into<String>) {
        if let Ok(mut steps) = self.0.lock() {
            steps.insert(worker, step.into());
        }
    }

    fn finished(&self, worker: usize) {
        if let Ok(mut steps) = self.0.lock() {
            steps.remove(&worker);
        }
    }

    /// The steps not finished yet, one per worker that is still stopping.
    pub fn left(&self) -> Vec<String> {
        let steps = self.0.lock().map(|s| s.clone()).unwrap_or_default();
        steps.into_iter().map(|(worker, step)| format!("worker {worker}: {step}")).collect()
    }
}

/// Called on each worker for every frame tensor that leaves decode.
pub type FrameObserver = Arc<dyn Fn(usize, &FrameTensor) + Send + Sync>;
/// Called on each worker for every observation the model makes (one per frame).
pub type ObservationObserver = Arc<dyn Fn(usize, &FrameObservation) + Send + Sync>;
/// Called with a worker's index and its new input frontier (ms) when it advances.
pub type FrontierObserver = Arc<dyn Fn(usize, u64) + Send + Sync>;

/// Optional observers of a run, for tests, benches and metrics.
#[derive(Clone, Default)]
pub struct Hooks {
    pub on_frame: Option<FrameObserver>,
    pub on_frontier: Option<FrontierObserver>,
    pub on_observation: Option<ObservationObserver>,
    /// Time each frame and revision from capture through every [`crate::metrics::Stage`].
    pub time_stages: bool,
    /// The run's metrics, for a caller that samples them while it goes; absent: new ones.
    pub metrics: Option<Arc<Metrics>>,
    /// Spread the cameras' starts evenly over this long. Cameras replaying one recording
    /// from the same instant decode its keyframes at the same instants, which cameras
    /// of a plant do not.
    pub stagger_cameras: Option<Duration>,
}

impl std::fmt::Debug for Hooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hooks")
            .field("on_frame", &self.on_frame.is_some())
            .field("on_frontier", &self.on_frontier.is_some())
            .field("on_observation", &self.on_observation.is_some())
            .field("time_stages", &self.time_stages)
            .field("metrics", &self.metrics.is_some())
            .field("stagger_cameras", &self.stagger_cameras)
            .finish()
    }
}

/// Runs the dataflow to the end and reports per camera.
pub fn run(
    config: &RunConfig,
    timely_config: timely::Config,
    stop: StopWhen,
    hooks: Hooks,
) -> anyhow::Result<Vec<CameraReport>> {
    Ok(run_stages(config, timely_config, stop, hooks)?.0)
}

/// Runs the dataflow: decode, and with a `[model]` the model, and with `[plant]`
/// reference data the work-order stages. Reports per camera and per stage.
pub fn run_stages(
    config: &RunConfig,
    timely_config: timely::Config,
    stop: StopWhen,
    hooks: Hooks,
) -> anyhow::Result<(Vec<CameraReport>, StageReport)> {
    crate::sources::init()?;
    let process = Arc::new(Process::open(config, &timely_config, stop, hooks)?);
    let shared = Arc::clone(&process);
    let guards = timely::execute(timely_config, move |worker| Worker::build(worker, &shared).run(worker))
        .map_err(|e| anyhow::anyhow!("timely: {e}"))?;
    let mut cameras = Vec::new();
    let mut delivered = None;
    let mut failure = None;
    for outcome in guards.join() {
        let WorkerOutcome { cameras: reports, delivered: d, failure: f } =
            outcome.map_err(|e| anyhow::anyhow!("a dataflow worker failed: {e}"))?;
        cameras.extend(reports);
        delivered = delivered.or(d);
        failure = failure.or(f);
    }
    if let Some(error) = failure {
        return Err(error);
    }
    let order: Vec<&str> = config.cameras.iter().map(|c| c.id.as_str()).collect();
    cameras.sort_by_key(|r| order.iter().position(|id| *id == r.camera_id));
    let (summary, sinks) = delivered.unwrap_or_default();
    let (counters, metrics) = (&process.counters, &process.metrics);
    let take = |latencies: &std::sync::Mutex<Vec<f64>>| {
        std::mem::take(&mut *latencies.lock().unwrap_or_else(|p| p.into_inner()))
    };
    let stages = StageReport {
        // The model running at the end: under `[model] watch`, the last one swapped in.
        model_version: (metrics.model_version.lock().unwrap_or_else(|p| p.into_inner()).clone())
            .or_else(|| process.model_version.clone()),
        frames_inferred: counters.frames.load(Ordering::Relaxed),
        batches: counters.batches.load(Ordering::Relaxed),
        inference_us: counters.inference_us.load(Ordering::Relaxed),
        detections: counters.detections.load(Ordering::Relaxed),
        summary,
        sinks,
        latencies_s: take(&metrics.new_work_order_latencies),
        revision_latencies_s: take(&metrics.revision_latencies),
        stage_latencies_s: metrics.stage_times.take(),
    };
    Ok((cameras, stages))
}

/// What the workers of a process share: the configuration, the plant's reference, the
/// model (one pool of inference threads), the evidence store and the metrics.
struct Process {
    config: RunConfig,
    reference: Option<PlantReference>,
    /// Stock movements earlier runs read from the input topics.
    replayed: Vec<StockMovement>,
    workflow: WorkflowConfig,
    pool: Option<InferencePool>,
    model_version: Option<String>,
    evidence: Option<Arc<EvidenceStore>>,
    metrics: Arc<Metrics>,
    counters: Arc<StageCounters>,
    /// Each camera is tracked on the worker that ingests it, so its evidence frames
    /// are in the same process.
    route: CameraRoute,
    stop: StopWhen,
    hooks: Hooks,
    /// This process delivers the outputs (process 0 of a cluster).
    delivers: bool,
}

impl Process {
    /// Opens what the run needs before any camera starts; what is wrong fails the start,
    /// naming the file or field.
    fn open(
        config: &RunConfig,
        timely_config: &timely::Config,
        stop: StopWhen,
        hooks: Hooks,
    ) -> anyhow::Result<Process> {
        let config = config.clone();
        let shadow = config.model.as_ref().is_some_and(|m| m.shadow);
        let process = crate::cluster::process_index(timely_config);
        let mut reference = config.plant.reference.as_deref().map(PlantReference::load).transpose()?;
        // What earlier runs read from the reference-data topics changes the files'
        // records (process 0, which delivers, loads the reference into the dataflow);
        // stock movements are replayed.
        let replayed = match (&config.kafka, &mut reference) {
            (Some(k), Some(reference)) if k.inputs.enabled && process == 0 && !shadow => {
                crate::sources::kafka::replay(k, reference)?
            }
            _ => Vec::new(),
        };
        // Not `Metrics::default()`: new metrics start healthy.
        let metrics = match &hooks.metrics {
            Some(metrics) => Arc::clone(metrics),
            None => Metrics::new(),
        };
        metrics.stage_times.enabled.store(hooks.time_stages, Ordering::Relaxed);
        let counters = Arc::new(StageCounters::default());
        let (pool, model_version, floor) = match &config.model {
            Some(model) => {
                let (pool, version, floor) = start_model(&config, model, &metrics, &counters)?;
                (Some(pool), Some(version), floor)
            }
            None => (None, None, 0.0),
        };
        // The thresholds per camera and class the model's threads and the ledger read
        // (one handle, shared by every clone of the config).
        if let Some(path) = &config.plant.thresholds {
            thresholds::watch(path, floor, &config.work_orders.thresholds, &metrics)?;
        }
        *metrics.model_version.lock().unwrap_or_else(|p| p.into_inner()) = model_version.clone();
        // Evidence needs frames (a model), tracks (reference data) and somewhere to write.
        let evidence = match (&config.output.dir, &reference, &config.model) {
            (Some(dir), Some(_), Some(_)) if config.output.evidence => {
                let folder = dir.join("evidence");
                Some(
                    EvidenceStore::open(&folder, &config.output.evidence_uri_prefix, Arc::clone(&metrics))
                        .map_err(|e| anyhow::anyhow!("{}: cannot create the evidence folder: {e}", folder.display()))?,
                )
            }
            _ => None,
        };
        if let Some(m) = &config.metrics {
            // Each process of a cluster serves its own cameras' figures, on the next port.
            let address = crate::cluster::offset_port(&m.address, process);
            crate::metrics::serve(&address, Arc::clone(&metrics))
                .map_err(|e| anyhow::anyhow!("config: `metrics.address`: cannot listen on {address}: {e}"))?;
        }
        let positions: HashMap<String, u64> =
            config.cameras.iter().enumerate().map(|(i, c)| (c.id.clone(), i as u64)).collect();
        let route: CameraRoute = Arc::new(move |camera: &str| {
            positions.get(camera).copied().unwrap_or_else(|| defectflow_operators::ids::route(camera))
        });
        let workflow = WorkflowConfig {
            track: config.track.clone(),
            severity: config.severity.clone(),
            work_orders: config.plant.work_orders(&config.work_orders),
            notify: config.notify.clone(),
        };
        Ok(Process {
            config,
            reference,
            replayed,
            workflow,
            pool,
            model_version,
            evidence,
            metrics,
            counters,
            route,
            stop,
            hooks,
            delivers: process == 0,
        })
    }
}

/// One model for the process, on its own threads, gated by each camera's baseline.
/// Loaded before the cameras start, so that a bad model fails the start, naming the
/// file. Returns the pool, the model's version and its detection threshold.
fn start_model(
    config: &RunConfig,
    model: &ModelConfig,
    metrics: &Arc<Metrics>,
    counters: &Arc<StageCounters>,
) -> anyhow::Result<(InferencePool, String, f32)> {
    let infer = defectflow_operators::infer::InferConfig {
        thresholds: config.work_orders.thresholds.clone(),
        ..model.infer_config()
    };
    let detectors = model_watch::load_detectors(
        &model.resolved_dir(),
        infer.thread_count(),
        model.min_confidence,
        model.precision,
    )?;
    let version = detectors.first().map(|d| d.version().to_owned()).unwrap_or_default();
    let floor = detectors.first().map_or(0.0, |d| d.min_confidence);
    let (folder, cameras) = (model_watch::baseline_folder(config), model_watch::gated_cameras(config));
    // A watched model may have been swapped while a camera was commissioned again: its
    // stored baseline is then the earlier model's, and it is commissioned again.
    let open = if model.watch { CameraGates::reopen } else { CameraGates::open };
    let baselines_version = model_watch::detectors_baselines_version(&detectors);
    let gates = open(&config.anomaly, folder.as_deref(), &cameras, &baselines_version)?;
    if let Ok(mut slot) = metrics.gates.lock() {
        *slot = Some(gates.clone());
    }
    if let Ok(mut slot) = metrics.changes.lock() {
        slot.clone_from(&infer.change);
    }
    let (timing, observed) = (Arc::clone(counters), Arc::clone(metrics));
    let (pool, switch) = InferencePool::start_switchable(detectors, &infer, Some(gates), move |frames, elapsed| {
        timing.frames.fetch_add(frames as u64, Ordering::Relaxed);
        timing.batches.fetch_add(1, Ordering::Relaxed);
        timing.inference_us.fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
        observed.frames_inferred.fetch_add(frames as u64, Ordering::Relaxed);
        observed.inference.observe(elapsed.as_secs_f64());
    })
    .map_err(|e| anyhow::anyhow!("cannot start the inference threads: {e}"))?;
    if model.watch {
        model_watch::watch(config, model, &version, switch, metrics, pool.alive())
            .map_err(|e| anyhow::anyhow!("cannot watch the model folder: {e}"))?;
    }
    Ok((pool, version, floor))
}
