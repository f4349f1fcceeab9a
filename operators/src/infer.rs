//! The `infer` operator: frame tensors in, one observation per frame out (its
//! detections, or none: a clear frame). Each worker batches its cameras' frames and
//! hands the batches to the process's [`InferencePool`]: inference threads that take
//! batches from one queue, each running the network on one core, so frames of any
//! worker go to whichever core is free and the workers go on taking frames meanwhile.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::time::{Duration, Instant};

use burn::tensor::backend::Backend;
use crossbeam_channel as channel;
use defectflow_models::detector::Detector;
use defectflow_models::inference::{Found, FrameView};
use defectflow_schemas::{Detection, FrameObservation};
use serde::{Deserialize, Serialize};
use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::operator::Operator;
use timely::scheduling::SyncActivator;

use crate::change::{ChangeGates, Plan};
use crate::decode::FrameTensor;
use crate::gating::CameraGates;
pub use crate::swap::ModelSwitch;
use crate::swap::{Model, Models};

/// How frames are batched for the model. `[model]` in the config.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InferConfig {
    /// Most frames run through the network together. Batches of several workers waiting
    /// for the network are merged up to this size.
    pub batch_size: usize,
    /// A frame waits at most this long for its worker's batch to fill; 0 hands frames
    /// over at once (on a CPU the network is as fast per frame at batch 1, and batches
    /// form by themselves while it is busy).
    pub max_wait_ms: u64,
    /// Shadow mode: detections (and the work orders they make) are flagged as shadow:
    /// audited, never sent to the CMMS.
    pub shadow: bool,
    /// Inference threads, each running the network on one core; 0: one per core.
    pub threads: usize,
    /// `min_confidence` per camera and class, as the thresholds file says now
    /// (`[plant] thresholds`): a detection under it does not count.
    #[serde(skip)]
    pub thresholds: crate::thresholds::LiveThresholds,
    /// Change gating (`[model] change_threshold`): frames like their camera's last
    /// scored one skip the network; `None`: every frame is scored.
    #[serde(skip)]
    pub change: Option<ChangeGates>,
}

impl Default for InferConfig {
    fn default() -> Self {
        InferConfig {
            batch_size: 8,
            max_wait_ms: 0,
            shadow: false,
            threads: 0,
            thresholds: crate::thresholds::LiveThresholds::default(),
            change: None,
        }
    }
}

impl InferConfig {
    /// The inference threads to start: `threads`, or one per core.
    pub fn thread_count(&self) -> usize {
        match self.threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }
}

/// A batch handed to the pool, and where its observations go.
struct Job {
    /// Batches handed to the pool before this one: which model scores it
    /// ([`crate::swap`]).
    seq: u64,
    frames: Vec<FrameTensor>,
    reply: Sender<Vec<(FrameTensor, FrameObservation)>>,
    wake: SyncActivator,
}

/// The process's model, on its inference threads. Cheap to clone; the threads end
/// when the last clone (and every operator using it) is gone.
#[derive(Clone, Debug)]
pub struct InferencePool {
    jobs: channel::Sender<Job>,
    /// Frames handed over and not yet scored.
    backlog: Arc<AtomicUsize>,
    /// Batches handed over so far.
    handed_over: Arc<AtomicU64>,
    /// The backlog at which the pool is full: a batch per thread waiting.
    capacity: usize,
    /// Held by every clone: what watches the pool from outside ends with it.
    alive: Arc<()>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job").field("frames", &self.frames.len()).finish()
    }
}

impl InferencePool {
    /// Starts one inference thread per detector (load one per
    /// [`InferConfig::thread_count`]). `observe` sees the size and run time of every
    /// batch the network runs.
    pub fn start<B: Backend>(
        detectors: Vec<Detector<B>>,
        config: &InferConfig,
        observe: impl Fn(usize, Duration) + Send + Sync + 'static,
    ) -> std::io::Result<InferencePool>
    where
        Detector<B>: Send + 'static,
    {
        InferencePool::start_gated(detectors, config, None, observe)
    }

    /// As [`InferencePool::start`], each camera's frames through its gate in `gates`
    /// (commissioned from its first frames, or gated with its baseline).
    pub fn start_gated<B: Backend>(
        detectors: Vec<Detector<B>>,
        config: &InferConfig,
        gates: Option<CameraGates>,
        observe: impl Fn(usize, Duration) + Send + Sync + 'static,
    ) -> std::io::Result<InferencePool>
    where
        Detector<B>: Send + 'static,
    {
        InferencePool::start_switchable(detectors, config, gates, observe).map(|(pool, _)| pool)
    }

    /// As [`InferencePool::start_gated`], with the means to swap the model while the
    /// pool runs ([`ModelSwitch`]).
    pub fn start_switchable<B: Backend>(
        detectors: Vec<Detector<B>>,
        config: &InferConfig,
        gates: Option<CameraGates>,
        observe: impl Fn(usize, Duration) + Send + Sync + 'static,
    ) -> std::io::Result<(InferencePool, ModelSwitch<B>)>
    where
        Detector<B>: Send + 'static,
    {
        let (jobs, queue) = channel::unbounded::<Job>();
        let handed_over = Arc::new(AtomicU64::new(0));
        let mut switch = ModelSwitch { threads: Vec::new(), handed_over: Arc::clone(&handed_over) };
        let (batch_size, shadow) = (config.batch_size.max(1), config.shadow);
        let observe = Arc::new(observe);
        let backlog = Arc::new(AtomicUsize::new(0));
        let detectors_started = detectors.len();
        for (i, detector) in detectors.into_iter().enumerate() {
            let (queue, observe, backlog) = (queue.clone(), Arc::clone(&observe), Arc::clone(&backlog));
            let (gates, thresholds, change) = (gates.clone(), config.thresholds.clone(), config.change.clone());
            let (swap, swaps) = channel::unbounded::<Model<B>>();
            switch.threads.push(swap);
            let mut models = Models::new(detector, gates);
            // The network's kernels are parallel; on this thread they run on one core,
            // and the threads together use them all.
            let one_core = rayon::ThreadPoolBuilder::new()
                .num_threads(1)
                .thread_name(move |_| format!("defectflow-infer-{i}-kernels"))
                .build()
                .map_err(std::io::Error::other)?;
            std::thread::Builder::new().name(format!("defectflow-infer-{i}")).spawn(move || {
                // A batch that did not fit into the one before starts the next.
                let mut carried = None;
                while let Some(first) = carried.take().or_else(|| queue.recv().ok()) {
                    // Batches queued behind this one join it, up to the batch size.
                    let mut frames = first.frames.len();
                    let mut batch = vec![first];
                    while frames < batch_size {
                        match queue.try_recv() {
                            Ok(next) if frames + next.frames.len() <= batch_size => {
                                frames += next.frames.len();
                                batch.push(next);
                            }
                            Ok(next) => {
                                carried = Some(next);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    // Each job is scored by the model current when it was handed over.
                    models.take(&swaps);
                    for (index, jobs) in models.group(batch, |job| job.seq) {
                        let (model, newer) = models.use_model(index);
                        if let (true, Some(change)) = (newer, &change) {
                            change.forget();
                        }
                        let setup = Setup {
                            gates: model.gates.as_ref(),
                            shadow,
                            thresholds: &thresholds,
                            change: change.as_ref(),
                        };
                        one_core.install(|| run(&model.detector, &setup, jobs, &*observe));
                    }
                    backlog.fetch_sub(frames, Ordering::Relaxed);
                }
            })?;
        }
        let capacity = batch_size * detectors_started;
        Ok((InferencePool { jobs, backlog, handed_over, capacity, alive: Arc::new(()) }, switch))
    }

    /// Gone once the last clone of the pool is.
    pub fn alive(&self) -> std::sync::Weak<()> {
        Arc::downgrade(&self.alive)
    }

    /// Whether a batch per inference thread is already waiting: sources should hold
    /// back (their queues fill and drop, counted) rather than queue without bound.
    pub fn is_full(&self) -> bool {
        self.backlog.load(Ordering::Relaxed) >= self.capacity
    }

    fn submit(&self, mut job: Job) {
        job.seq = self.handed_over.fetch_add(1, Ordering::SeqCst);
        self.backlog.fetch_add(job.frames.len(), Ordering::Relaxed);
        self.jobs.send(job).unwrap_or_else(|_| panic!("the inference threads have stopped"));
    }
}

/// What an inference thread runs each batch with.
struct Setup<'a> {
    gates: Option<&'a CameraGates>,
    shadow: bool,
    thresholds: &'a crate::thresholds::LiveThresholds,
    change: Option<&'a ChangeGates>,
}

/// Runs the jobs' frames through the network together and replies to each job.
fn run<B: Backend>(detector: &Detector<B>, setup: &Setup<'_>, jobs: Vec<Job>, observe: &impl Fn(usize, Duration)) {
    let Setup { gates, shadow, .. } = *setup;
    let thresholds = setup.thresholds.current();
    let started = Instant::now();
    let all: Vec<&FrameTensor> = jobs.iter().flat_map(|job| &job.frames).collect();
    // Commissioning learns from every frame: its cameras are never change-gated.
    let plans: Vec<Plan> = match setup.change {
        Some(change) => change.plan(&all, |camera| gates.is_some_and(|g| g.commissioning(camera))),
        None => vec![Plan::Score; all.len()],
    };
    let frames: Vec<&FrameTensor> =
        all.iter().zip(&plans).filter(|(_, plan)| matches!(plan, Plan::Score)).map(|(f, _)| *f).collect();
    let views: Vec<FrameView<'_>> = frames
        .iter()
        .map(|f| FrameView { width: f.meta.width as usize, height: f.meta.height as usize, pixels: f.bytes() })
        .collect();
    let found: Vec<Vec<(Found, bool)>> = match gates {
        _ if frames.is_empty() => Vec::new(),
        Some(gates) if frames.iter().any(|f| gates.needs_appearance(&f.meta.camera_id)) => {
            // Gated cameras' frames at their commissioned brightness (a lighting step is
            // not a change of the asset).
            let normalised: Vec<Option<Vec<u8>>> =
                frames.iter().zip(&views).map(|(f, view)| gates.normalised(&f.meta.camera_id, view)).collect();
            let scored: Vec<FrameView<'_>> = (views.iter().zip(&normalised))
                .map(|(view, pixels)| match pixels {
                    Some(pixels) => FrameView { pixels, ..*view },
                    None => *view,
                })
                .collect();
            let scores = detector.score_with_appearance(&scored);
            (frames.iter().zip(&scores).zip(&views))
                .map(|((f, scores), view)| {
                    let outcome = gates.frame(detector, &f.meta.camera_id, f.meta.capture_ms, scores, view);
                    let unknown_shadow = outcome.unknown_shadow;
                    (outcome.named.into_iter().map(|found| (found, shadow)))
                        .chain(outcome.unknown.into_iter().map(|found| (found, shadow || unknown_shadow)))
                        .collect()
                })
                .collect()
        }
        _ => detector.detect(&views).into_iter().map(|f| f.into_iter().map(|f| (f, shadow)).collect()).collect(),
    };
    drop(views);
    if !frames.is_empty() {
        observe(frames.len(), started.elapsed());
    }
    drop(frames);
    let found = with_unchanged(setup.change, &all, &plans, found);
    drop(all);
    let mut found = found.into_iter();
    for job in jobs {
        let observations = job
            .frames
            .into_iter()
            .zip(found.by_ref())
            .map(|(frame, found)| {
                let meta = &frame.meta;
                let counts = |f: &Found| {
                    thresholds.min_confidence(&meta.camera_id, f.class).is_none_or(|least| f.confidence >= least)
                };
                let detections = found
                    .into_iter()
                    .filter(|(f, _)| counts(f))
                    .map(|(f, shadow)| Detection {
                        camera_id: meta.camera_id.clone(),
                        frame_index: meta.frame_index,
                        capture_ms: meta.capture_ms,
                        class: f.class,
                        confidence: f.confidence,
                        bbox: f.bbox,
                        area_px: f.area_px,
                        model_version: detector.version().to_owned(),
                        shadow,
                    })
                    .collect();
                let observation = FrameObservation {
                    camera_id: meta.camera_id.clone(),
                    frame_index: meta.frame_index,
                    capture_ms: meta.capture_ms,
                    detections,
                };
                (frame, observation)
            })
            .collect();
        // An operator that is gone no longer needs its observations.
        if job.reply.send(observations).is_ok() {
            let _ = job.wake.activate();
        }
    }
}

/// What every frame of a batch found: the scored frames' `found`, in order, and the
/// unchanged frames' copies of what their last scored frame found; the change gates
/// keep each camera's latest.
fn with_unchanged(
    change: Option<&ChangeGates>,
    frames: &[&FrameTensor],
    plans: &[Plan],
    found: Vec<Vec<(Found, bool)>>,
) -> Vec<Vec<(Found, bool)>> {
    let Some(change) = change else { return found };
    let mut scored = found.into_iter();
    let all: Vec<Vec<(Found, bool)>> = (plans.iter())
        .map(|plan| match plan {
            Plan::Score => scored.next().unwrap_or_default(),
            Plan::Same(found) => found.clone(),
        })
        .collect();
    for ((frame, plan), found) in frames.iter().zip(plans).zip(&all) {
        if matches!(plan, Plan::Score) {
            change.scored(&frame.meta.camera_id, frame.meta.capture_ms, found);
        }
    }
    all
}

/// Runs the defect model on frames.
pub trait Infer<'scope> {
    /// One [`FrameObservation`] per frame, at the frame's capture time, carrying the
    /// model version, scored by `pool`. `keep` sees each frame with its observation
    /// before the observation leaves (to keep evidence).
    ///
    /// # Examples
    /// ```no_run
    /// # use defectflow_operators::infer::{Infer, InferConfig, InferencePool};
    /// # use defectflow_models::detector::{CpuBackend, Detector};
    /// # fn frames<'s>(s: timely::dataflow::StreamVec<'s, u64, defectflow_operators::decode::FrameTensor>) {
    /// let detector = Detector::<CpuBackend>::load("models/weights".as_ref(), Default::default())
    ///     .expect("run `defectflow train` first");
    /// let config = InferConfig::default();
    /// let pool = InferencePool::start(vec![detector], &config, |_, _| {}).expect("a thread");
    /// let observations = s.infer(&pool, config, |_, _| {});
    /// # }
    /// ```
    fn infer(
        self,
        pool: &InferencePool,
        config: InferConfig,
        keep: impl FnMut(&FrameTensor, &FrameObservation) + 'static,
    ) -> StreamVec<'scope, u64, FrameObservation>;
}

impl<'scope> Infer<'scope> for StreamVec<'scope, u64, FrameTensor> {
    fn infer(
        self,
        pool: &InferencePool,
        config: InferConfig,
        mut keep: impl FnMut(&FrameTensor, &FrameObservation) + 'static,
    ) -> StreamVec<'scope, u64, FrameObservation> {
        let scope = self.scope();
        let batch_size = config.batch_size.max(1);
        let max_wait = Duration::from_millis(config.max_wait_ms);
        let pool = pool.clone();
        self.unary_frontier(Pipeline, "Infer", move |_, info| {
            let activator = scope.activator_for(info.address.clone());
            let wake = scope.worker().sync_activator_for(info.address.to_vec());
            // Frames waiting for a batch, with their capability and arrival.
            let mut pending: Vec<(Capability<u64>, FrameTensor, Instant)> = Vec::new();
            // Batches with the pool, oldest first: where their observations come back,
            // and each frame's capability (held until then).
            type Reply = Receiver<Vec<(FrameTensor, FrameObservation)>>;
            let mut in_flight: Vec<(Reply, Vec<Capability<u64>>)> = Vec::new();
            move |(input, frontier), output| {
                input.for_each(|time, frames| {
                    let Some(capability) = time.retain_least(0) else { return };
                    let now = Instant::now();
                    for frame in frames.drain(..) {
                        pending.push((capability.clone(), frame, now));
                    }
                });
                let closed = frontier.frontier().is_empty();
                while pending.first().is_some_and(|(_, _, arrived)| {
                    pending.len() >= batch_size || closed || arrived.elapsed() >= max_wait
                }) {
                    let (capabilities, frames): (Vec<_>, Vec<_>) =
                        pending.drain(..batch_size.min(pending.len())).map(|(c, f, _)| (c, f)).unzip();
                    let (reply, replies) = mpsc::channel();
                    pool.submit(Job { seq: 0, frames, reply, wake: wake.clone() });
                    in_flight.push((replies, capabilities));
                }
                // Batches come back in any order (several threads).
                in_flight.retain(|(replies, capabilities)| match replies.try_recv() {
                    Ok(observations) => {
                        for ((frame, observation), capability) in observations.into_iter().zip(capabilities) {
                            keep(&frame, &observation);
                            output.session(capability).give(observation);
                        }
                        false
                    }
                    Err(TryRecvError::Empty) => true,
                    Err(TryRecvError::Disconnected) => panic!("an inference thread failed"),
                });
                if let Some((_, _, arrived)) = pending.first() {
                    activator.activate_after(max_wait.saturating_sub(arrived.elapsed()));
                }
            }
        })
    }
}
