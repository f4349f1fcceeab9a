//! One timely worker of a run: its cameras, its share of the dataflow, and its loop —
//! built, stepped until the run ends, closed once what was decoded is delivered.
//!
//! Worker 0 gathers the work-order messages and delivers them to the sinks it owns;
//! every worker commits the input partitions it reads up to what worker 0 delivered.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use defectflow_operators::infer::InferencePool;
use defectflow_schemas::Emitted;

use super::Process;
use super::dataflow::{Dataflow, KeptCounts, build_dataflow};
use super::ingest::Ingest;
use super::report::{CameraReport, MessageSummary};
use crate::cluster::Delivered;
use crate::metrics::Stage;
use crate::sinks::{self, Batch, Outputs, SinkCount};
use crate::sources::camera::{self, CameraHandle};
use crate::sources::cmms_script::CmmsScript;
use crate::sources::kafka::KafkaInputs;
use crate::workflow::Collected;

/// What a worker came to: its cameras' figures; for worker 0, what it delivered.
pub(super) struct WorkerOutcome {
    pub cameras: Vec<CameraReport>,
    pub delivered: Option<(MessageSummary, Vec<SinkCount>)>,
    pub failure: Option<anyhow::Error>,
}

pub(super) struct Worker<'p> {
    process: &'p Process,
    index: usize,
    dataflow: Dataflow,
    /// The index of the frames' dataflow among the worker's dataflows.
    main_dataflow: usize,
    collected: Rc<RefCell<Collected>>,
    kept: KeptCounts,
    cameras: Vec<CameraHandle>,
    /// The cameras of this process's workers together.
    cameras_here: usize,
    ingest: Ingest,
    /// Worker 0: the sinks.
    outputs: Option<Outputs>,
    /// This worker's share of the input topics' partitions.
    inputs: Option<KafkaInputs>,
    /// Worker 0: a scripted CMMS answering the work orders.
    script: Option<CmmsScript>,
    summary: MessageSummary,
    delivery: Delivered,
    started: Instant,
    failure: Option<anyhow::Error>,
}

impl<'p> Worker<'p> {
    /// Opens the worker's outputs and inputs, builds its dataflow (every worker builds
    /// the same dataflows in the same order), takes up the earlier run and starts its
    /// cameras. Something that cannot open stops the run (every worker still builds,
    /// so the others can finish).
    pub fn build(worker: &mut timely::worker::Worker, process: &'p Process) -> Worker<'p> {
        let config = &process.config;
        let (index, peers) = (worker.index(), worker.peers());
        let shadow = config.model.as_ref().is_some_and(|m| m.shadow);
        let mut failure = None;
        let mut outputs = if index == 0 { opened(&mut failure, sinks::open(config)).map(Outputs::new) } else { None };
        if let Some(outputs) = &mut outputs {
            let replayed = config.cameras.iter().filter(|c| c.start_ms.is_some()).map(|c| c.id.clone()).collect();
            opened(&mut failure, outputs.recover(&replayed));
        }
        let inputs = match (&config.kafka, &process.reference) {
            (Some(k), Some(reference)) if k.inputs.enabled && !shadow => {
                opened(&mut failure, KafkaInputs::start(k, reference, index, peers).map_err(Into::into)).flatten()
            }
            _ => None,
        };
        let script = match &config.plant.cmms_script {
            Some(path) if index == 0 => opened(&mut failure, CmmsScript::load(path)),
            _ => None,
        };
        let delivery = Delivered::build(worker);
        let main_dataflow = worker.next_dataflow_index();
        // This worker's cameras, and where each stands in the config.
        let (positions, mine): (Vec<usize>, Vec<_>) =
            config.cameras.iter().enumerate().filter(|(i, _)| i % peers == index).map(|(i, c)| (i, c.clone())).unzip();
        let here = peers_here(worker, config) as usize;
        let cameras_here = (0..config.cameras.len()).filter(|i| (i % peers) / here == index / here).count();
        let kept = KeptCounts::default();
        let collected =
            Rc::new(RefCell::new(Collected { metrics: Some(Arc::clone(&process.metrics)), ..Collected::default() }));
        let dataflow = build_dataflow(worker, process, &mine, &kept, &collected);
        process.stop.progress.at(index, "running (had not begun to stop)");
        let mut built = Worker {
            process,
            index,
            dataflow,
            main_dataflow,
            collected,
            kept,
            cameras: Vec::new(),
            cameras_here,
            ingest: Ingest::new(&mine),
            outputs,
            inputs,
            script,
            summary: MessageSummary::default(),
            delivery,
            started: Instant::now(),
            failure: None,
        };
        if let Some(error) = failure {
            built.fail(error);
        }
        if let (Some(plant), Some(reference), Some(outputs)) =
            (&mut built.dataflow.plant, &process.reference, &mut built.outputs)
        {
            plant.load(reference, 0);
            super::resume::take_up(plant, outputs, config, reference, &process.replayed, &process.metrics);
        }
        if built.failure.is_none() {
            let thread = std::thread::current();
            // Camera `i` of the config waits its share of the spread before it starts.
            let spread = process.hooks.stagger_cameras.unwrap_or_default();
            let count = config.cameras.len().max(1) as u32;
            built.cameras = (mine.into_iter().zip(positions))
                .map(|(c, i)| camera::spawn(c, thread.clone(), spread * i as u32 / count))
                .collect();
            built.cameras.iter().for_each(|c| process.metrics.add_camera(Arc::clone(&c.stats)));
            // Ready (`/readyz`) once every worker of the process is up.
            let up = process.metrics.workers_up.fetch_add(1, Ordering::Relaxed) + 1;
            if up == peers_here(worker, config) {
                process.metrics.started.store(true, Ordering::Relaxed);
            }
        }
        built.started = Instant::now();
        built
    }

    /// Steps the worker until the run ends, then closes it.
    pub fn run(mut self, worker: &mut timely::worker::Worker) -> WorkerOutcome {
        while self.step(worker) {}
        self.close(worker)
    }

    /// One turn: frames in, the frontier on, input topics polled, the scripted CMMS
    /// answered, what is complete delivered. Returns whether the run goes on.
    fn step(&mut self, worker: &mut timely::worker::Worker) -> bool {
        let process = self.process;
        let metrics = &process.metrics;
        // A busy model holds back the sources (their queues fill and drop, counted),
        // not memory. While the sink waits out a broker outage every worker holds back,
        // so what waits is bounded by the cameras' queues (whose drops are counted).
        let model_busy = process.pool.as_ref().is_some_and(InferencePool::is_full);
        let Dataflow { input, capability, plant, .. } = &mut self.dataflow;
        let delivered = !model_busy
            && !metrics.output_stalled()
            && self.ingest.drain(&self.cameras, |time, sample| {
                metrics.stage_times.record(Stage::Ingested, sample.meta.capture_ms);
                input.activate().session(&capability.delayed(&time)).give(sample);
            });
        if let Some(frontier) =
            self.ingest.advance(&self.cameras, Duration::from_millis(process.config.runtime.idle_timeout_ms))
        {
            capability.downgrade(&frontier);
            if let Some(plant) = plant {
                plant.advance_to(frontier);
            }
            if let Some(on_frontier) = &process.hooks.on_frontier {
                on_frontier(self.index, frontier);
            }
        }
        if let (Some(inputs), Some(plant)) = (&mut self.inputs, &mut self.dataflow.plant) {
            inputs.poll(plant, 256);
        }
        self.answer_cmms();
        if let Err(error) = self.deliver() {
            self.fail(error);
        }
        let stop = &process.stop;
        let interrupted = stop.interrupted.load(Ordering::Relaxed);
        let timed_out = stop.after.is_some_and(|d| self.started.elapsed() >= d);
        // A worker without cameras (fewer cameras than workers) goes on, polling its share
        // of the input topics, until the process's cameras are done.
        let all_done = stop.after.is_none()
            && if self.cameras.is_empty() {
                process.metrics.cameras_finished(self.cameras_here)
            } else {
                self.cameras.iter().all(|c| c.stats.finished() && c.frames.is_empty())
            };
        if interrupted || timed_out || all_done {
            return false;
        }
        // Cameras unpark this thread when they queue a frame; the timeout only paces the
        // wall-clock frontier of idle cameras.
        worker.step_or_park(Some(if delivered { Duration::ZERO } else { Duration::from_millis(20) }));
        true
    }

    /// The messages emitted since the last turn: counted for the report (the sinks take
    /// them from `pending`), and shown to the CMMS script, whose due events go in.
    fn answer_cmms(&mut self) {
        let fresh = std::mem::take(&mut self.collected.borrow_mut().messages);
        for message in &fresh {
            self.summary.add(message);
            if let (Some(script), Emitted::WorkOrder(order)) = (&mut self.script, message) {
                script.observe(order);
            }
        }
        if let (Some(script), Some(plant)) = (&mut self.script, &mut self.dataflow.plant) {
            let now = *plant.events.time();
            for event in script.due(now) {
                tracing::info!(work_order = %event.work_order_id, event = ?event.event, "scripted CMMS event");
                plant.events.send(event);
            }
        }
    }

    /// Worker 0 delivers what is complete; each worker commits its input partitions up
    /// to what is delivered.
    fn deliver(&mut self) -> anyhow::Result<()> {
        let Some(outputs) = &mut self.outputs else { return self.commit_inputs(self.delivery.before()) };
        // Without the work-order stages, the model's output is what has to be done.
        let Dataflow { probe, work_probe, .. } = &self.dataflow;
        let closed_before =
            work_probe.as_ref().unwrap_or(probe).with_frontier(|f| f.first().copied().unwrap_or(u64::MAX));
        emit(outputs, &self.collected, self.process, closed_before)?;
        self.delivery.announce(closed_before);
        self.commit_inputs(closed_before)
    }

    /// Commits the offsets of the input messages this worker read at times before `before`.
    fn commit_inputs(&mut self, before: u64) -> anyhow::Result<()> {
        commit(&mut self.inputs, before)
    }

    /// Something failed: the run stops (every worker), and fails with the first error.
    fn fail(&mut self, error: anyhow::Error) {
        self.process.metrics.healthy.store(false, Ordering::Relaxed);
        self.process.stop.interrupted.store(true, Ordering::Relaxed);
        self.failure.get_or_insert(error);
    }

    /// Stops the cameras, takes in what they already decoded (nothing received is
    /// lost), completes the dataflow, delivers and flushes everything (worker 0), and
    /// commits the inputs once worker 0 is done.
    fn close(mut self, worker: &mut timely::worker::Worker) -> WorkerOutcome {
        self.process.metrics.started.store(false, Ordering::Relaxed);
        let progress = Arc::clone(&self.process.stop.progress);
        self.cameras.iter().for_each(CameraHandle::request_stop);
        let Dataflow { input, capability, .. } = &mut self.dataflow;
        loop {
            let running: Vec<&str> =
                (self.cameras.iter()).filter(|c| !c.is_shut_down()).map(|c| c.stats.camera_id.as_str()).collect();
            progress.at(self.index, format!("stopping cameras {}", running.join(", ")));
            let shut_down = running.is_empty();
            self.ingest.drain(&self.cameras, |time, sample| {
                input.activate().session(&capability.delayed(&time)).give(sample);
            });
            if shut_down {
                break;
            }
            worker.step_or_park(Some(Duration::from_millis(2)));
        }
        self.cameras.iter_mut().for_each(CameraHandle::stop);
        let Dataflow { input, capability, plant, probe, .. } = self.dataflow;
        drop((capability, input, plant));
        progress.at(self.index, "processing the frames already decoded");
        // Until the frames' dataflow is complete (the delivery dataflow is still open). The
        // other workers' progress wakes this one; the timeout only bounds a missed wake.
        while !probe.done() || worker.installed_dataflows().contains(&self.main_dataflow) {
            worker.step_or_park(Some(Duration::from_millis(2)));
        }
        let delivered = self.outputs.take().map(|mut outputs| {
            progress.at(self.index, "delivering to the sinks and flushing them");
            // Everything is complete: close up to the last input time, so a later run
            // with later frames (a live camera) still delivers.
            let last = self.collected.borrow().pending.iter().map(|(t, _)| t + 1).max().unwrap_or(0);
            let closed_before = last.max(self.ingest.frontier);
            let finished = match self.failure {
                Some(_) => None,
                None => Some(finish(&mut outputs, &self.collected, self.process, closed_before)),
            };
            self.delivery.close(matches!(finished, Some(Ok(()))));
            if let Some(Err(error)) = finished {
                self.failure.get_or_insert(error);
            }
            self.collected.borrow_mut().messages.drain(..).for_each(|m| self.summary.add(&m));
            (std::mem::take(&mut self.summary), outputs.counts())
        });
        if delivered.is_none() {
            // Worker 0 without outputs (they could not open) has delivered nothing: the
            // others must not wait for it. Elsewhere this does nothing.
            self.delivery.close(false);
        }
        progress.at(self.index, "waiting for worker 0 to deliver");
        while !self.delivery.done() {
            worker.step_or_park(Some(Duration::from_millis(10)));
        }
        progress.at(self.index, "committing its input offsets");
        if let Err(error) = commit(&mut self.inputs, self.delivery.before()) {
            self.failure.get_or_insert(error);
        }
        progress.finished(self.index);
        let kept = self.kept.lock().map(|k| k.clone()).unwrap_or_default();
        let cameras = (self.cameras.iter())
            .map(|c| CameraReport::of(self.index, &c.stats, kept.get(&c.stats.camera_id).copied().unwrap_or_default()))
            .collect();
        WorkerOutcome { cameras, delivered, failure: self.failure }
    }
}

/// The workers of this process (a cluster's other processes have their own).
fn peers_here(worker: &timely::worker::Worker, config: &crate::config::RunConfig) -> u64 {
    (config.runtime.workers.min(worker.peers())).max(1) as u64
}

/// The value opened, or `None` with the error kept in `failure` (the first one).
fn opened<T>(failure: &mut Option<anyhow::Error>, result: anyhow::Result<T>) -> Option<T> {
    result.map_err(|error| _ = failure.get_or_insert(error)).ok()
}

/// Commits the offsets of the input messages a worker read at times before `before`.
fn commit(inputs: &mut Option<KafkaInputs>, before: u64) -> anyhow::Result<()> {
    match inputs {
        Some(inputs) => Ok(inputs.commit(before)?),
        None => Ok(()),
    }
}

/// Hands the messages, audit rows and detections of every time before `closed_before`
/// (all complete) to the sinks.
fn emit(
    outputs: &mut Outputs,
    collected: &RefCell<Collected>,
    process: &Process,
    closed_before: u64,
) -> anyhow::Result<()> {
    let (messages, rows) = collected.borrow_mut().take_closed(closed_before);
    let detections = process.counters.take_detections(closed_before);
    let batch = Batch { closed_before, messages: &messages, rows: &rows, detections: &detections };
    outputs.emit(&batch, &process.metrics)
}

/// The last delivery of a run, then every sink flushed with the detections left.
fn finish(
    outputs: &mut Outputs,
    collected: &RefCell<Collected>,
    process: &Process,
    closed_before: u64,
) -> anyhow::Result<()> {
    emit(outputs, collected, process, closed_before)?;
    let detections = process.counters.take_detections(u64::MAX);
    outputs.flush(&Batch { closed_before, messages: &[], rows: &[], detections: &detections })
}
