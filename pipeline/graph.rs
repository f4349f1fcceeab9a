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

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::AtomicU64;

use defectflow_models::detector::{CpuBackend, Detector};
use defectflow_operators::decode::{CameraSample, Decode, DecodeOutcome, FrameTensor};
use defectflow_operators::evidence::EvidenceFrames;
use defectflow_operators::gating::{CameraGates, GatedCamera};
use defectflow_operators::infer::{Infer, InferencePool};
use defectflow_operators::inventory::StockMeasure;
use defectflow_schemas::{Detection, FrameMeta};
use timely::dataflow::ProbeHandle;
use timely::dataflow::operators::Inspect;
use timely::dataflow::operators::core::Probe;
use timely::dataflow::operators::vec::UnorderedInput;

use crate::config::RunConfig;
use crate::metrics::{Metrics, Stage};
use crate::reference::PlantReference;
use crate::sinks::EarlierOrders;
use crate::sinks::audit::{AuditRows, AuditStream, StockRow};
use crate::sinks::evidence::EvidenceStore;
use crate::sinks::jsonl::JsonLinesSink;
use crate::sinks::kafka::KafkaSink;
use crate::sources::camera::{self, CameraHandle, CameraStats, FramePixels, now_ms};
use crate::sources::cmms_script::CmmsScript;
use crate::sources::kafka::KafkaInputs;
use crate::workflow::{self, AuditRow, Collected, Emitted, MessageSummary, WorkflowConfig};

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
/// Called on each worker for every observation the model makes (one per frame).
pub type ObservationObserver = Arc<dyn Fn(usize, &defectflow_schemas::FrameObservation) + Send + Sync>;
/// Called with a worker's index and its new input frontier (ms) when it advances.
pub type FrontierObserver = Arc<dyn Fn(usize, u64) + Send + Sync>;

/// Optional observers of a run, for tests, benches and metrics.
#[derive(Clone, Default)]
pub struct Hooks {
    pub on_frame: Option<FrameObserver>,
    pub on_frontier: Option<FrontierObserver>,
    pub on_observation: Option<ObservationObserver>,
    /// Time each frame and revision from capture through every [`Stage`].
    pub time_stages: bool,
    /// The run's metrics, for a caller that samples them while it goes; absent: new ones.
    pub metrics: Option<Arc<Metrics>>,
}

impl std::fmt::Debug for Hooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hooks")
            .field("on_frame", &self.on_frame.is_some())
            .field("on_frontier", &self.on_frontier.is_some())
            .field("on_observation", &self.on_observation.is_some())
            .field("time_stages", &self.time_stages)
            .field("metrics", &self.metrics.is_some())
            .finish()
    }
}

/// What the stages after decode did in a run.
#[derive(Debug, Default)]
pub struct StageReport {
    /// Version of the model that ran (`None`: no `[model]`).
    pub model_version: Option<String>,
    pub frames_inferred: u64,
    pub batches: u64,
    /// Total time spent in the network, in microseconds.
    pub inference_us: u64,
    pub detections: u64,
    /// What the work-order messages came to (worker 0 of process 0).
    pub summary: MessageSummary,
    /// Messages this run sent to Kafka, and those it left out because an earlier run
    /// had delivered them.
    pub kafka_sent: u64,
    pub kafka_skipped: u64,
    /// Lines this run wrote to `work-orders.jsonl`, and those it left out because an
    /// earlier run had written them (`None`: no file).
    pub jsonl: Option<(u64, u64)>,
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
    let config = config.clone();
    let mut reference = match &config.plant.reference {
        Some(dir) => Some(PlantReference::load(dir)?),
        None => None,
    };
    let workflow_config = WorkflowConfig {
        track: config.track.clone(),
        severity: config.severity.clone(),
        work_orders: config.work_orders.clone(),
    };
    // Shadow mode sends nothing to the CMMS. In a cluster, worker 0 (in process 0)
    // delivers everything: the other processes open no sink.
    let shadow = config.model.as_ref().is_some_and(|m| m.shadow);
    let process = crate::cluster::process_index(&timely_config);
    let delivers = process == 0;
    let kafka = match &config.kafka {
        Some(_) if !delivers => None,
        Some(kafka) if !shadow => Some(KafkaSink::start(kafka)?),
        Some(_) => {
            tracing::info!("shadow mode: nothing goes to Kafka");
            None
        }
        None => None,
    };
    // What earlier runs read from the reference-data topics changes the files' records
    // (process 0 loads the reference into the dataflow); stock movements are replayed.
    let replayed = match (&config.kafka, &mut reference) {
        (Some(k), Some(reference)) if k.inputs.enabled && kafka.is_some() => {
            crate::sources::kafka::replay(k, reference)?
        }
        _ => Vec::new(),
    };
    // The input partitions are dealt out to every worker of the cluster; each worker
    // commits its partitions' offsets once worker 0 has delivered what they led to.
    let (local_workers, peers) = crate::cluster::workers(&timely_config);
    let first_worker = local_workers.start;
    let inputs: Vec<Option<KafkaInputs>> = match (&config.kafka, &reference) {
        (Some(k), Some(reference)) if k.inputs.enabled && !shadow => {
            local_workers.map(|w| KafkaInputs::start(k, reference, w, peers)).collect::<Result<_, _>>()?
        }
        _ => Vec::new(),
    };
    // work-orders.jsonl, written as the run goes (shadow mode sends nothing).
    let jsonl = match &config.output.dir {
        Some(dir) if delivers && !shadow => Some(JsonLinesSink::open(dir)?),
        _ => None,
    };
    // The audit log, written as the run goes.
    let audit = match &config.output.dir {
        Some(dir) if delivers => Some(AuditStream::open(
            &dir.join("audit"),
            config.output.audit_commit_rows,
            Duration::from_secs_f64(config.output.audit_commit_s),
        )?),
        _ => None,
    };
    // Not `Metrics::default()`: new metrics start healthy.
    let metrics = match &hooks.metrics {
        Some(metrics) => Arc::clone(metrics),
        None => Metrics::new(),
    };
    metrics.stage_times.enabled.store(hooks.time_stages, Ordering::Relaxed);
    let counters = Arc::new(StageCounters::default());
    // One model for the process, on its own thread. Loaded here so that a bad model
    // fails the start, naming the file.
    let (pool, model_version) = match &config.model {
        Some(model) => {
            let infer = model.infer_config();
            let detectors = (0..infer.thread_count())
                .map(|_| {
                    let mut detector = Detector::<CpuBackend>::load(&model.resolved_dir(), Default::default())?;
                    if let Some(c) = model.min_confidence {
                        detector.min_confidence = c;
                    }
                    Ok(detector)
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let version = detectors.first().map(|d| d.version().to_owned());
            let gates = open_gates(&config, version.as_deref().unwrap_or_default())?;
            if let Ok(mut slot) = metrics.gates.lock() {
                *slot = Some(gates.clone());
            }
            let (timing, metrics) = (Arc::clone(&counters), Arc::clone(&metrics));
            let pool = InferencePool::start_gated(detectors, &infer, Some(gates), move |frames, elapsed| {
                timing.frames.fetch_add(frames as u64, Ordering::Relaxed);
                timing.batches.fetch_add(1, Ordering::Relaxed);
                timing.inference_us.fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
                metrics.frames_inferred.fetch_add(frames as u64, Ordering::Relaxed);
                metrics.inference.observe(elapsed.as_secs_f64());
            })
            .map_err(|e| anyhow::anyhow!("cannot start the inference threads: {e}"))?;
            (Some(pool), version)
        }
        None => (None, None),
    };
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
    let script = match &config.plant.cmms_script {
        Some(path) if delivers => Some(CmmsScript::load(path)?),
        _ => None,
    };
    let worker_script = Arc::new(Mutex::new(script));
    let kafka = Arc::new(Mutex::new(kafka));
    let audit = Arc::new(Mutex::new(audit));
    let worker_inputs = Arc::new(Mutex::new(inputs));
    let kafka_result: Arc<Mutex<Option<KafkaSink>>> = Arc::default();
    let jsonl = Arc::new(Mutex::new(jsonl));
    let jsonl_result: Arc<Mutex<Option<(u64, u64)>>> = Arc::default();
    let (worker_jsonl, jsonl_back) = (Arc::clone(&jsonl), Arc::clone(&jsonl_result));
    let (worker_kafka, kafka_back) = (Arc::clone(&kafka), Arc::clone(&kafka_result));
    let worker_audit = Arc::clone(&audit);
    let sink_failure: Arc<Mutex<Option<anyhow::Error>>> = Arc::default();
    let worker_failure = Arc::clone(&sink_failure);
    if let Some(m) = &config.metrics {
        // Each process of a cluster serves its own cameras' figures, on the next port.
        let address = crate::cluster::offset_port(&m.address, process);
        crate::metrics::serve(&address, Arc::clone(&metrics))
            .map_err(|e| anyhow::anyhow!("config: `metrics.address`: cannot listen on {address}: {e}"))?;
    }
    let worker_metrics = Arc::clone(&metrics);
    let summary: Arc<Mutex<MessageSummary>> = Arc::default();
    let (stage_counters, stage_summary) = (Arc::clone(&counters), Arc::clone(&summary));
    let config_order: Vec<String> = config.cameras.iter().map(|c| c.id.clone()).collect();
    // Each camera is tracked on the worker that ingests it (camera i on worker i modulo
    // the workers), so its evidence frames are in the same process.
    let positions: HashMap<String, u64> =
        config_order.iter().enumerate().map(|(i, id)| (id.clone(), i as u64)).collect();
    let camera_route: defectflow_operators::track::CameraRoute = Arc::new(move |camera: &str| {
        positions.get(camera).copied().unwrap_or_else(|| defectflow_operators::ids::route(camera))
    });
    let reports = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&reports);
    let guards = timely::execute(timely_config, move |worker| {
        let index = worker.index();
        let peers = worker.peers();
        let mine: Vec<_> =
            config.cameras.iter().enumerate().filter(|(i, _)| i % peers == index).map(|(_, c)| c.clone()).collect();
        let max_fps: HashMap<String, f64> = mine.iter().filter_map(|c| c.max_fps.map(|f| (c.id.clone(), f))).collect();
        let kept: Arc<Mutex<HashMap<String, (u64, u64)>>> = Arc::default();
        let probe = ProbeHandle::new();
        let collected =
            Rc::new(RefCell::new(Collected { metrics: Some(Arc::clone(&worker_metrics)), ..Collected::default() }));
        // Worker 0 gathers the work-order messages and delivers them.
        let mut outputs = Outputs {
            kafka: if index == 0 { worker_kafka.lock().ok().and_then(|mut k| k.take()) } else { None },
            jsonl: if index == 0 { worker_jsonl.lock().ok().and_then(|mut j| j.take()) } else { None },
            audit: if index == 0 { worker_audit.lock().ok().and_then(|mut a| a.take()) } else { None },
            detections: Arc::clone(&stage_counters),
            stock: HashMap::new(),
            open_orders: std::collections::HashSet::new(),
        };
        let mut inputs =
            worker_inputs.lock().ok().and_then(|mut i| i.get_mut(index - first_worker).and_then(Option::take));
        let mut script = if index == 0 { worker_script.lock().ok().and_then(|mut s| s.take()) } else { None };
        let mut summary = MessageSummary::default();
        let mut delivery = crate::cluster::Delivered::build(worker);
        let main_dataflow = worker.next_dataflow_index();
        let (mut input, mut capability, mut plant, work_probe) = worker.dataflow::<u64, _, _>(|scope| {
            let ((input, capability), samples) = scope.new_unordered_input::<CameraSample<FramePixels>>();
            let counts = Arc::clone(&kept);
            let on_frame = hooks.on_frame.clone();
            let frames = samples
                .decode(max_fps, move |meta: &FrameMeta, outcome| {
                    let Ok(mut counts) = counts.lock() else { return };
                    // Allocate the camera's key once, not on every frame.
                    if !counts.contains_key(&meta.camera_id) {
                        counts.insert(meta.camera_id.clone(), (0, 0));
                    }
                    let Some(entry) = counts.get_mut(&meta.camera_id) else { return };
                    match outcome {
                        DecodeOutcome::Kept => entry.0 += 1,
                        DecodeOutcome::Sampled => entry.1 += 1,
                        DecodeOutcome::Failed(error) => tracing::warn!(%error, "frame not decoded"),
                    }
                })
                .inspect(move |tensor| {
                    if let Some(on_frame) = &on_frame {
                        on_frame(index, tensor);
                    }
                });
            let (Some(pool), Some(model)) = (&pool, &config.model) else {
                frames.probe_with(&probe);
                return (input, capability, None, None);
            };
            let seen = Arc::clone(&stage_counters);
            let stage_clock = Arc::clone(&worker_metrics);
            let on_observation = hooks.on_observation.clone();
            let holder = evidence.clone();
            let observations = frames
                .infer(pool, model.infer_config(), move |frame, observation| {
                    if let Some(store) = &holder {
                        store.hold(frame, observation);
                    }
                })
                .inspect(move |o| {
                    stage_clock.stage_times.record(Stage::Inferred, o.capture_ms);
                    seen.detections.fetch_add(o.detections.len() as u64, Ordering::Relaxed);
                    if !o.detections.is_empty() {
                        seen.rows.lock().unwrap_or_else(|p| p.into_inner()).extend(o.detections.iter().cloned());
                    }
                    if let Some(on_observation) = &on_observation {
                        on_observation(index, o);
                    }
                });
            if reference.is_none() {
                observations.probe_with(&probe);
                return (input, capability, None, None);
            }
            let drawer = evidence.clone().map(|store| store as Arc<dyn EvidenceFrames>);
            let route = Some(Arc::clone(&camera_route));
            let (plant, work_probe) =
                workflow::build_on(scope, observations, workflow_config.clone(), Rc::clone(&collected), drawer, route);
            (input, capability, Some(plant), Some(work_probe))
        });
        if let (Some(plant), Some(reference), 0) = (&mut plant, &reference, index) {
            plant.load(reference, 0);
            // A restart of a live run takes up the work orders it left open, so the same
            // defect seen again continues its work order. Cameras that replay footage
            // (`start_ms`) rebuild theirs by replaying it instead.
            let live: std::collections::HashSet<&str> =
                config.cameras.iter().filter(|c| c.start_ms.is_none()).map(|c| c.id.as_str()).collect();
            // The topic is what the CMMS saw; without Kafka, the file is.
            let from_file = outputs.jsonl.as_mut().map(JsonLinesSink::take_latest_orders).unwrap_or_default();
            let latest = outputs.kafka.as_mut().map_or(from_file, KafkaSink::take_latest_orders);
            let latest = latest.into_iter().filter(|o| live.contains(o.camera_id.as_str())).collect();
            let earlier = EarlierOrders::from_latest(latest);
            if !earlier.open.is_empty() || !earlier.closed.is_empty() {
                tracing::info!(
                    work_orders = earlier.open.len(),
                    closed = earlier.closed.len(),
                    parts_consumed = earlier.consumed.len(),
                    "taking up the work orders an earlier run left open, and the parts its completed ones used"
                );
            }
            replayed.iter().chain(&earlier.consumed).for_each(|m| plant.movements.insert(m.clone()));
            // Their tracks go on from their latest snapshots in the audit log (area,
            // size, growth), which the work orders do not carry.
            let tracks: std::collections::BTreeSet<String> = earlier.open.iter().map(|w| w.track_id.clone()).collect();
            let since = earlier.open.iter().map(|w| w.detected_at_ms).min().unwrap_or_default();
            let measures = match outputs.audit.as_ref().map(|a| a.log().latest_track_measures(&tracks, since)) {
                Some(Ok(measures)) => measures,
                Some(Err(error)) => {
                    tracing::warn!(%error, "the audit log's tracks could not be read: the work orders are taken up without their tracks' latest measures");
                    Default::default()
                }
                None => Default::default(),
            };
            plant.restore(earlier.open.into_iter().chain(earlier.closed).collect(), &measures, reference);
        }

        let worker_thread = std::thread::current();
        let mut cameras: Vec<CameraHandle> =
            mine.iter().cloned().map(|c| camera::spawn(c, worker_thread.clone())).collect();
        cameras.iter().for_each(|c| worker_metrics.add_camera(Arc::clone(&c.stats)));
        let mut ingest = Ingest {
            ids: mine.iter().map(|c| Arc::from(c.id.as_str())).collect(),
            replays: mine.iter().map(|c| c.start_ms.is_some()).collect(),
            last_sent: vec![None; cameras.len()],
            frontier: 0,
        };
        let started = Instant::now();
        let idle = Duration::from_millis(config.runtime.idle_timeout_ms);
        loop {
            // A busy model holds back the sources (their queues fill and drop, counted),
            // not memory.
            let model_busy = pool.as_ref().is_some_and(InferencePool::is_full);
            // While the sink waits out a broker outage every worker holds back, so what
            // waits is bounded by the cameras' queues (whose drops are counted).
            let output_stalled = worker_metrics.output_stalled();
            let delivered = !model_busy
                && !output_stalled
                && ingest.drain(&cameras, |time, sample| {
                    worker_metrics.stage_times.record(Stage::Ingested, sample.meta.capture_ms);
                    input.activate().session(&capability.delayed(&time)).give(sample);
                });
            if let Some(frontier) = ingest.advance(&cameras, idle) {
                capability.downgrade(&frontier);
                if let Some(plant) = &mut plant {
                    plant.advance_to(frontier);
                }
                if let Some(on_frontier) = &hooks.on_frontier {
                    on_frontier(index, frontier);
                }
            }
            if let (Some(inputs), Some(plant)) = (&mut inputs, &mut plant) {
                inputs.poll(plant, 256);
            }
            // The messages emitted since the last turn: counted for the report (the sinks
            // take them from `pending`), and shown to the CMMS script.
            let fresh = std::mem::take(&mut collected.borrow_mut().messages);
            for message in &fresh {
                summary.add(message);
                if let (Some(script), Emitted::WorkOrder(order)) = (&mut script, message) {
                    script.observe(order);
                }
            }
            if let (Some(script), Some(plant)) = (&mut script, &mut plant) {
                let now = *plant.events.time();
                for event in script.due(now) {
                    tracing::info!(work_order = %event.work_order_id, event = ?event.event, "scripted CMMS event");
                    plant.events.send(event);
                }
            }
            // Worker 0 delivers; each worker commits its input partitions up to what is
            // delivered.
            let committed = if index == 0 {
                // Without the work-order stages, the model's output is what has to be done.
                let closed_before =
                    work_probe.as_ref().unwrap_or(&probe).with_frontier(|f| f.first().copied().unwrap_or(u64::MAX));
                let emitted = outputs.emit(&collected, closed_before, &worker_metrics);
                if emitted.is_ok() {
                    delivery.announce(closed_before);
                }
                emitted.and_then(|()| commit(&mut inputs, closed_before))
            } else {
                commit(&mut inputs, delivery.before())
            };
            if let Err(error) = committed {
                worker_metrics.healthy.store(false, Ordering::Relaxed);
                *worker_failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(error);
                stop.interrupted.store(true, Ordering::Relaxed);
            }
            let interrupted = stop.interrupted.load(Ordering::Relaxed);
            let timed_out = stop.after.is_some_and(|d| started.elapsed() >= d);
            let all_done = stop.after.is_none() && cameras.iter().all(|c| c.stats.finished() && c.frames.is_empty());
            if interrupted || timed_out || all_done {
                break;
            }
            // Cameras unpark this thread when they queue a frame; the timeout only paces the
            // wall-clock frontier of idle cameras.
            worker.step_or_park(Some(if delivered { Duration::ZERO } else { Duration::from_millis(20) }));
        }
        // Stop the cameras but keep taking what they already decoded: nothing received is lost.
        cameras.iter().for_each(CameraHandle::request_stop);
        loop {
            let shut_down = cameras.iter().all(CameraHandle::is_shut_down);
            ingest.drain(&cameras, |time, sample| {
                input.activate().session(&capability.delayed(&time)).give(sample);
            });
            if shut_down {
                break;
            }
            worker.step_or_park(Some(Duration::from_millis(2)));
        }
        cameras.iter_mut().for_each(CameraHandle::stop);
        drop(capability);
        drop(input);
        drop(plant);
        // Until the frames' dataflow is complete (the delivery dataflow is still open).
        while !probe.done() || worker.installed_dataflows().contains(&main_dataflow) {
            worker.step();
        }
        if index == 0 {
            // Everything is complete: close up to the last input time, so a later run
            // with later frames (a live camera) still delivers.
            let last = collected.borrow().pending.iter().map(|(t, _)| t + 1).max().unwrap_or(0);
            let failed = worker_failure.lock().map(|f| f.is_some()).unwrap_or(true);
            let closed_before = last.max(ingest.frontier);
            let finished = (!failed)
                .then(|| outputs.emit(&collected, closed_before, &worker_metrics).and_then(|()| outputs.flush()));
            delivery.close(matches!(finished, Some(Ok(()))));
            if let Some(Err(error)) = finished {
                *worker_failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(error);
            }
            if let Some(sink) = outputs.kafka.take() {
                *kafka_back.lock().unwrap_or_else(|p| p.into_inner()) = Some(sink);
            }
            if let Some(sink) = outputs.jsonl.take() {
                *jsonl_back.lock().unwrap_or_else(|p| p.into_inner()) = Some((sink.written, sink.skipped));
            }
        }
        // Each worker commits its input partitions once worker 0 is done delivering.
        while !delivery.done() {
            worker.step_or_park(Some(Duration::from_millis(10)));
        }
        if let Err(error) = commit(&mut inputs, delivery.before()) {
            *worker_failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(error);
        }
        if index == 0
            && let Ok(mut out) = stage_summary.lock()
        {
            collected.borrow_mut().messages.drain(..).for_each(|m| summary.add(&m));
            *out = summary;
        }
        let kept = kept.lock().map(|k| k.clone()).unwrap_or_default();
        if let Ok(mut out) = sink.lock() {
            for cam in &cameras {
                out.push(report(index, &cam.stats, kept.get(&cam.stats.camera_id).copied().unwrap_or_default()));
            }
        }
    })
    .map_err(|e| anyhow::anyhow!("timely: {e}"))?;
    for result in guards.join() {
        result.map_err(|e| anyhow::anyhow!("a dataflow worker failed: {e}"))?;
    }
    if let Some(error) = sink_failure.lock().map_err(|_| anyhow::anyhow!("a worker panicked"))?.take() {
        return Err(error);
    }
    let (kafka_sent, kafka_skipped) =
        kafka_result.lock().ok().and_then(|k| k.as_ref().map(|k| (k.sent, k.skipped))).unwrap_or_default();
    let mut reports = reports.lock().map(|r| r.clone()).unwrap_or_default();
    reports.sort_by_key(|r| config_order.iter().position(|id| *id == r.camera_id));
    let stages = StageReport {
        model_version,
        frames_inferred: counters.frames.load(Ordering::Relaxed),
        batches: counters.batches.load(Ordering::Relaxed),
        inference_us: counters.inference_us.load(Ordering::Relaxed),
        detections: counters.detections.load(Ordering::Relaxed),
        summary: std::mem::take(&mut *summary.lock().map_err(|_| anyhow::anyhow!("a worker panicked"))?),
        kafka_sent,
        kafka_skipped,
        jsonl: *jsonl_result.lock().map_err(|_| anyhow::anyhow!("a worker panicked"))?,
        latencies_s: std::mem::take(&mut *metrics.new_work_order_latencies.lock().unwrap_or_else(|p| p.into_inner())),
        revision_latencies_s: std::mem::take(
            &mut *metrics.revision_latencies.lock().unwrap_or_else(|p| p.into_inner()),
        ),
        stage_latencies_s: metrics.stage_times.take(),
    };
    Ok((reports, stages))
}

/// Worker 0's outputs: the Kafka sink, work-orders.jsonl, the audit log, the metrics.
struct Outputs {
    kafka: Option<KafkaSink>,
    jsonl: Option<JsonLinesSink>,
    audit: Option<AuditStream>,
    /// Where the workers leave the model's detections.
    detections: Arc<StageCounters>,
    /// (part, measure) → value, from the stock view's updates taken so far.
    stock: HashMap<(String, StockMeasure), i64>,
    /// Work orders open as of their last revision.
    open_orders: std::collections::HashSet<String>,
}

impl Outputs {
    /// Hands the messages and audit rows of every time before `closed_before` (all
    /// complete) to the sinks.
    fn emit(&mut self, collected: &RefCell<Collected>, closed_before: u64, metrics: &Metrics) -> anyhow::Result<()> {
        let (ready, rows) = {
            let mut collected = collected.borrow_mut();
            let (ready, later): (Vec<_>, Vec<_>) =
                std::mem::take(&mut collected.pending).into_iter().partition(|(t, _)| *t < closed_before);
            collected.pending = later;
            let (rows, later): (Vec<_>, Vec<_>) =
                std::mem::take(&mut collected.audit).into_iter().partition(|(t, _)| *t < closed_before);
            collected.audit = later;
            (ready, rows)
        };
        for (_, message) in &ready {
            if let Emitted::WorkOrder(w) = message {
                metrics.stage_times.record(Stage::Closed, w.revised_at_ms);
            }
        }
        let mut sent = 0;
        if let Some(sink) = &mut self.kafka {
            let before = sink.sent;
            metrics.delivering_since_ms.store(now_ms(), Ordering::Relaxed);
            let delivered = sink.deliver(closed_before, &ready);
            metrics.delivering_since_ms.store(0, Ordering::Relaxed);
            if let Err(error) = delivered {
                metrics.kafka_errors.fetch_add(1, Ordering::Relaxed);
                return Err(error.into());
            }
            sent = sink.sent - before;
        }
        if let Some(sink) = &mut self.jsonl {
            sink.deliver(closed_before, &ready)?;
        }
        // The messages have left: their latencies and the open work orders are counted
        // before the sent counter moves, so a scrape that sees them sent sees them all.
        observe(&ready, metrics, &mut self.open_orders);
        metrics.kafka_sent.fetch_add(sent, Ordering::Relaxed);
        let detections = {
            let mut all = self.detections.rows.lock().unwrap_or_else(|p| p.into_inner());
            let (ready, later) = std::mem::take(&mut *all).into_iter().partition(|d| d.capture_ms < closed_before);
            *all = later;
            ready
        };
        let rows = self.audit_rows(rows, detections);
        if let Some(audit) = &mut self.audit {
            // A disk that cannot take the files (full, read-only) does not stop the run
            // or the work orders: the rows wait in memory (the cameras are held back once
            // a few commits' worth wait), and the commit is tried again every second.
            let was_failing = audit.failing();
            if let Err(error) = audit.append(closed_before, &ready, rows) {
                metrics.audit_errors.fetch_add(1, Ordering::Relaxed);
                if !was_failing {
                    tracing::error!(%error, "the audit log cannot write; its rows are held until it can");
                }
            } else if was_failing && !audit.failing() {
                tracing::info!("the audit log writes again; the rows held meanwhile are committed");
            }
            metrics.audit_failing.store(audit.failing(), Ordering::Relaxed);
            metrics.audit_overfull.store(audit.overfull(), Ordering::Relaxed);
        }
        Ok(())
    }

    /// Tracks and events as they are; stock updates applied in time order, with a row
    /// per part and time holding the part's levels after that time's updates.
    fn audit_rows(&mut self, mut rows: Vec<(u64, AuditRow)>, detections: Vec<Detection>) -> AuditRows {
        rows.sort_by_key(|(t, _)| *t);
        let mut out = AuditRows { detections, ..AuditRows::default() };
        let mut rows = rows.into_iter().peekable();
        while let Some((time, _)) = rows.peek() {
            let time = *time;
            let mut touched = std::collections::BTreeSet::new();
            while let Some((_, row)) = rows.next_if(|(t, _)| *t == time) {
                match row {
                    AuditRow::Track(track) => out.tracks.push((time, *track)),
                    AuditRow::Event(event) => out.wo_events.push((time, event)),
                    AuditRow::Stock(part, measure, value, diff) => {
                        *self.stock.entry((part.clone(), measure)).or_default() += value * diff as i64;
                        touched.insert(part);
                    }
                }
            }
            for part in touched {
                let level = |measure| self.stock.get(&(part.clone(), measure)).copied().unwrap_or(0);
                let (on_hand, reserved, available) =
                    (level(StockMeasure::OnHand), level(StockMeasure::Reserved), level(StockMeasure::Available));
                out.inventory.push((time, StockRow { part_id: part, at_ms: time, on_hand, reserved, available }));
            }
        }
        out
    }

    /// Commits what the audit log has buffered, with every detection left; a disk that
    /// cannot take it is given half a minute before the run fails, naming the file.
    fn flush(&mut self) -> anyhow::Result<()> {
        let detections = std::mem::take(&mut *self.detections.rows.lock().unwrap_or_else(|p| p.into_inner()));
        let Some(audit) = &mut self.audit else { return Ok(()) };
        let _ = audit.append(0, &[], AuditRows { detections, ..AuditRows::default() });
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match audit.commit() {
                Ok(()) => return Ok(()),
                Err(error) if Instant::now() >= deadline => {
                    return Err(anyhow::anyhow!("the audit log could not write its last rows: {error}"));
                }
                Err(error) => {
                    tracing::warn!(%error, "the audit log cannot write its last rows; trying again");
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
        }
    }
}

/// Metrics of messages leaving defectflow: latency from detection to a new work order,
/// work orders open, dead letters.
fn observe(messages: &[(u64, Emitted)], metrics: &Metrics, open_orders: &mut std::collections::HashSet<String>) {
    // Only worker 0 sees messages; the others must not reset the gauge.
    if messages.is_empty() {
        return;
    }
    let now = now_ms();
    for (_, message) in messages {
        match message {
            Emitted::WorkOrder(w) => {
                // From the capture of the frame that made this revision to its leaving.
                let processing = now.saturating_sub(w.revised_at_ms) as f64 / 1000.0;
                // Kept one by one only when timed (the bench): a run may go on for months.
                if metrics.stage_times.enabled.load(Ordering::Relaxed) {
                    metrics.revision_latencies.lock().unwrap_or_else(|p| p.into_inner()).push(processing);
                }
                if w.revision == 1 {
                    let seconds = now.saturating_sub(w.detected_at_ms) as f64 / 1000.0;
                    metrics.detection_to_work_order.observe(seconds);
                    metrics.new_work_order_latencies.lock().unwrap_or_else(|p| p.into_inner()).push(seconds);
                }
                let open = !matches!(
                    w.status,
                    defectflow_schemas::WorkOrderStatus::Completed | defectflow_schemas::WorkOrderStatus::FalsePositive
                );
                // Closed ones go: a run may close thousands over the months.
                if open {
                    open_orders.insert(w.work_order_id.clone());
                } else {
                    open_orders.remove(&w.work_order_id);
                }
            }
            Emitted::DeadLetter(_) => {
                metrics.dead_letters.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }
    let open = open_orders.len() as u64;
    metrics.work_orders_open.store(open, Ordering::Relaxed);
}

#[derive(Debug, Default)]
struct StageCounters {
    frames: AtomicU64,
    batches: AtomicU64,
    inference_us: AtomicU64,
    detections: AtomicU64,
    /// Detections not yet taken by worker 0 for the audit log.
    rows: Mutex<Vec<Detection>>,
}

/// A worker's side of ingest: moves frames from its cameras into the dataflow and keeps
/// the event-time frontier.
struct Ingest {
    ids: Vec<Arc<str>>,
    /// Per camera: whether it replays a recording with its own capture times (`start_ms`).
    replays: Vec<bool>,
    /// Per camera: the latest capture time sent.
    last_sent: Vec<Option<u64>>,
    frontier: u64,
}

impl Ingest {
    /// Sends every queued frame at its capture time (a frame behind the frontier is
    /// re-timed to it and counted late). Returns whether anything was sent.
    fn drain(&mut self, cameras: &[CameraHandle], mut send: impl FnMut(u64, CameraSample<FramePixels>)) -> bool {
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
    fn advance(&mut self, cameras: &[CameraHandle], idle: Duration) -> Option<u64> {
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
            .map(|((_, sent), _)| sent.unwrap_or(self.frontier))
            .min()
            .unwrap_or(quiet)
            .max(self.frontier);
        (next > self.frontier).then(|| {
            self.frontier = next;
            next
        })
    }
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
        state: stats.state().name().to_owned(),
        last_error: stats.last_error(),
    }
}

/// Commits the offsets of the input messages a worker read at times before `before`.
fn commit(inputs: &mut Option<KafkaInputs>, before: u64) -> anyhow::Result<()> {
    match inputs {
        Some(inputs) => Ok(inputs.commit(before)?),
        None => Ok(()),
    }
}

/// Each camera's normal: its stored baseline (`<output>/baselines/`), or commissioning.
fn open_gates(config: &RunConfig, model_version: &str) -> anyhow::Result<CameraGates> {
    let cameras: Vec<GatedCamera> = (config.cameras.iter())
        .map(|c| GatedCamera { camera_id: c.id.clone(), width: c.width, height: c.height })
        .collect();
    let folder = config.output.dir.as_ref().map(|dir| dir.join("baselines"));
    Ok(CameraGates::open(&config.anomaly, folder.as_deref(), &cameras, model_version)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::camera::RawFrame;
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
