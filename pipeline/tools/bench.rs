//! `defectflow bench`: the whole graph under a chosen load. N synthetic cameras (the
//! demo plant's four asset kinds in turn, each with a defect appearing in its first
//! seconds), or N cameras playing a recording in real time (`--source`, decoded as
//! `--decode` says), at a resolution and frame rate, through decode, the model, tracks,
//! severity and work orders, into Kafka when a broker is given. Reports what was
//! sustained: frames per second in and through the model, frames dropped, latency
//! from a defect's first detection (capture time) to its work order acknowledged by
//! Kafka, CPU and peak memory, and where the CPU went.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::onset::{DefectOnset, OpenedOrder, Truth, render_onsets};
use super::stats::{Percentiles, percentiles_ms};
use crate::config::{CameraConfig, DecodeMode, ModelConfig, RunConfig};
use crate::kafka::{InputsConfig, KafkaConfig};
use crate::metrics::{Metrics, Stage};
use crate::reference::{WholeView, reference_with_cameras};
use crate::run::{self, Hooks, StopWhen};

/// What to run.
#[derive(Clone, Debug)]
pub struct BenchPlan {
    pub cameras: usize,
    pub fps: u32,
    pub width: u32,
    pub height: u32,
    /// Frames per second of each camera kept for the model (`max_fps`); `None`: all.
    pub max_fps: Option<f64>,
    pub seconds: f64,
    pub workers: usize,
    /// Kafka bootstrap servers; `None`: no broker, latency measured to the outputs.
    pub brokers: Option<String>,
    /// The plant's reference data the bench cameras are added to.
    pub reference: std::path::PathBuf,
    /// Where the run's outputs go (work orders, audit log, evidence); `None`: nowhere.
    pub out: Option<std::path::PathBuf>,
    /// Sample memory, throughput and latency every this many seconds while it runs (a
    /// soak); the stage figures of the result then cover only the last interval.
    pub sample_s: Option<f64>,
    /// Seconds each camera is commissioned before it is gated (`[anomaly] commission_s`);
    /// 0: the classifier alone decides.
    pub commission_s: f64,
    /// `[model] change_threshold`; 0: every frame scored.
    pub change_threshold: f32,
    /// `[model] precision`.
    pub precision: defectflow_models::detector::Precision,
    /// A recording every camera plays in real time instead of synthetic frames.
    pub source: Option<std::path::PathBuf>,
    /// Which frames of the recording are decoded.
    pub decode: DecodeMode,
    /// `defectflow synth`'s `ground_truth.json` of the recording: the work orders are
    /// matched to its defects ([`super::onset`]).
    pub ground_truth: Option<std::path::PathBuf>,
}

/// What it sustained.
#[derive(Clone, Debug, Serialize)]
pub struct BenchResult {
    pub cameras: usize,
    pub fps_per_camera: u32,
    pub resolution: String,
    pub seconds: f64,
    /// Frames the cameras produced, per second.
    pub frames_in_per_s: f64,
    /// Frames the model scored, per second, and what was asked of it.
    pub frames_inferred_per_s: f64,
    pub frames_offered_per_s: f64,
    /// Frames the cameras' sources did not decode (keyframe mode) or convert (beyond
    /// `max_fps`), per second.
    pub frames_skipped_per_s: f64,
    pub dropped: u64,
    pub late: u64,
    pub work_orders: usize,
    /// Each camera shows one defect, so each should have one work order: those with
    /// another count, and what their work orders say.
    pub unexpected: Vec<String>,
    pub revisions: usize,
    /// First detection (capture time) to the work order leaving (Kafka acknowledged):
    /// includes the tracker's confirmation (`[track] confirm_hits` frames, or
    /// `confirm_span_ms` at a low frame rate).
    pub latency_ms: Option<Percentiles>,
    /// Capture of the frame that made a revision to the revision leaving (Kafka
    /// acknowledged): the pipeline's own delay.
    pub revision_latency_ms: Option<Percentiles>,
    pub kafka: bool,
    /// CPU time over wall time (2.0 = both cores busy).
    pub cpu_cores: f64,
    pub peak_rss_mib: f64,
    /// The network's wall time over the run's CPU time: at most its share of the CPU
    /// (its wall time counts moments it waited for a core); the rest is sources, decode,
    /// the dataflow and the sinks.
    pub inference_cpu_share: f64,
    pub inference_ms_per_frame: f64,
    /// Where the time goes: capture to each stage in turn (frames to `inferred`, then
    /// revisions), ending with the revision acknowledged.
    pub stages_ms: Vec<StageLatency>,
    /// Taken every `sample_s` while the run went.
    pub samples: Vec<Sample>,
    /// With a ground truth: each drawn defect's work orders across the cameras, and the
    /// work orders on nothing drawn.
    pub onsets: Vec<DefectOnset>,
    pub orders_elsewhere: usize,
}

/// One interval of a sampled run.
#[derive(Clone, Debug, Serialize)]
pub struct Sample {
    /// Seconds since the start, at the end of the interval.
    pub at_s: f64,
    /// Resident memory now (`VmRSS`).
    pub rss_mib: f64,
    /// CPU time the process used in the interval, in cores.
    pub cpu_cores: f64,
    pub frames_in_per_s: f64,
    pub frames_inferred_per_s: f64,
    /// Frames dropped in the interval.
    pub dropped: u64,
    /// Capture to scored, of the frames scored in the interval.
    pub inferred_ms: Option<Percentiles>,
    /// Revisions that left in the interval, and capture to their leaving.
    pub revisions: usize,
    pub revision_ms: Option<Percentiles>,
    /// Frames held for evidence now (each one frame's pixels).
    pub evidence_frames_held: u64,
    /// The resident memory by kind of mapping: mimalloc's arenas, `malloc`'s, the rest.
    pub resident: Option<crate::memory::ResidentByKind>,
}

impl Sample {
    /// One line for a log.
    pub fn line(&self) -> String {
        let show =
            |p: &Option<Percentiles>| p.as_ref().map_or("-".to_owned(), |p| format!("{:.0}/{:.0}", p.p50, p.p99));
        format!(
            "{:>7.0} s  rss {:>6.1} MiB  cpu {:.2}  in {:>6.1}/s  model {:>6.1}/s  dropped {:>4}  capture→scored p50/p99 {} ms  \
             revisions {} capture→out {} ms  evidence frames held {}  resident MiB: mimalloc {} malloc {}",
            self.at_s,
            self.rss_mib,
            self.cpu_cores,
            self.frames_in_per_s,
            self.frames_inferred_per_s,
            self.dropped,
            show(&self.inferred_ms),
            self.revisions,
            show(&self.revision_ms),
            self.evidence_frames_held,
            self.resident.map_or("-".to_owned(), |r| format!("{:.1}", r.large_reservations_kib as f64 / 1024.0)),
            self.resident.map_or("-".to_owned(), |r| format!("{:.1}", r.malloc_arenas_kib as f64 / 1024.0)),
        )
    }
}

/// Samples `metrics` every `every` until `done`, printing each sample to stderr.
fn sample(metrics: &Metrics, every: Duration, done: &AtomicBool) -> Vec<Sample> {
    let started = Instant::now();
    let (mut last_at, mut last_in, mut last_inferred, mut last_dropped, mut last_revisions) = (0.0, 0, 0, 0, 0);
    let mut last_cpu = cpu_seconds();
    let mut samples = Vec::new();
    while !done.load(Ordering::Relaxed) {
        let wake = started + every * (samples.len() as u32 + 1);
        while Instant::now() < wake && !done.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(100).min(wake.saturating_duration_since(Instant::now())));
        }
        let at_s = started.elapsed().as_secs_f64();
        let (received, dropped) = metrics.camera_totals();
        let inferred = metrics.frames_inferred.load(Ordering::Relaxed);
        let scored = metrics.stage_times.take().into_iter().find(|(s, _)| *s == Stage::Inferred).map(|(_, v)| v);
        let revisions: Vec<f64> = {
            let all = metrics.revision_latencies.lock().unwrap_or_else(|p| p.into_inner());
            all.get(last_revisions..).map(<[f64]>::to_vec).unwrap_or_default()
        };
        let span = (at_s - last_at).max(1e-9);
        let cpu = cpu_seconds();
        let sample = Sample {
            at_s,
            rss_mib: rss_kib("VmRSS:") as f64 / 1024.0,
            cpu_cores: (cpu - last_cpu) / span,
            frames_in_per_s: (received - last_in) as f64 / span,
            frames_inferred_per_s: (inferred - last_inferred) as f64 / span,
            dropped: dropped - last_dropped,
            inferred_ms: scored.as_deref().and_then(percentiles_ms),
            revisions: revisions.len(),
            revision_ms: percentiles_ms(&revisions),
            evidence_frames_held: metrics.evidence_frames_held.load(Ordering::Relaxed),
            resident: crate::memory::ResidentByKind::now(),
        };
        eprintln!("{}", sample.line());
        (last_at, last_in, last_inferred, last_dropped) = (at_s, received, inferred, dropped);
        last_revisions += revisions.len();
        last_cpu = cpu;
        samples.push(sample);
    }
    samples
}

#[derive(Clone, Debug, Serialize)]
pub struct StageLatency {
    pub stage: String,
    pub count: usize,
    pub p50: f64,
    pub p99: f64,
}

/// The four demo assets: (synth kind, asset id, defect class).
const ASSETS: [(&str, &str, &str); 4] = [
    ("conveyor_pulley", "CV-101-PUL", "crack"),
    ("motor_housing", "MT-204", "corrosion"),
    ("bolted_flange", "FL-330", "missing_component"),
    ("gearbox", "GB-412", "wear"),
];

/// Writes the bench's reference folder (the demo plant's, with a region of interest per
/// bench camera) into `dir`, and returns the bench's config.
pub fn prepare(plan: &BenchPlan, dir: &Path) -> anyhow::Result<RunConfig> {
    let ids: Vec<String> = (0..plan.cameras).map(|i| format!("bench-{i:02}")).collect();
    let views: Vec<WholeView<'_>> = (ids.iter().enumerate())
        .map(|(i, id)| WholeView {
            camera_id: id,
            asset_id: ASSETS[i % ASSETS.len()].1,
            width: plan.width,
            height: plan.height,
            mm_per_px: 0.6,
        })
        .collect();
    let reference = reference_with_cameras(&plan.reference, dir, &views)?;
    let cameras = (ids.into_iter().enumerate())
        .map(|(i, id)| {
            let (kind, asset, class) = ASSETS[i % ASSETS.len()];
            let (seed, fps, onset) = (100 + i, plan.fps, 1 + i % 4);
            let url = match &plan.source {
                Some(file) => format!("file://{}", file.display()),
                None => format!("synth://{kind}?seed={seed}&fps={fps}&asset_id={asset}&defects={class}@{onset}"),
            };
            CameraConfig {
                width: plan.width,
                height: plan.height,
                queue_frames: 16,
                max_fps: plan.max_fps,
                realtime: plan.source.is_some(),
                decode: plan.decode,
                ..CameraConfig::new(id, url)
            }
        })
        .collect();
    let mut config = RunConfig::with_cameras(cameras);
    config.runtime.workers = plan.workers;
    config.runtime.idle_timeout_ms = 2000;
    config.runtime.duration_s = Some(plan.seconds);
    config.anomaly.commission_s = plan.commission_s;
    config.model = Some(ModelConfig {
        change_threshold: plan.change_threshold,
        precision: plan.precision,
        ..ModelConfig::default()
    });
    config.plant.reference = Some(reference);
    config.output.dir = plan.out.clone();
    config.kafka = plan.brokers.as_ref().map(|brokers| KafkaConfig {
        sink_id: format!("defectflow-bench-{}", std::process::id()),
        inputs: InputsConfig { enabled: false, ..InputsConfig::default() },
        ..KafkaConfig::new(brokers)
    });
    config.validate().map_err(|(field, message)| anyhow::anyhow!("the bench's config: `{field}`: {message}"))?;
    Ok(config)
}

/// Runs the plan and measures it.
pub fn run(plan: &BenchPlan, dir: &Path) -> anyhow::Result<BenchResult> {
    let config = prepare(plan, dir)?;
    let truth = plan.ground_truth.as_deref().map(|path| Truth::read(path, plan.width)).transpose()?;
    let cpu_before = cpu_seconds();
    let started = Instant::now();
    let stop = StopWhen::after(Some(Duration::from_secs_f64(plan.seconds)));
    let metrics = Metrics::new();
    let done = Arc::new(AtomicBool::new(false));
    let sampler = plan.sample_s.map(|every| {
        let (metrics, done) = (Arc::clone(&metrics), Arc::clone(&done));
        std::thread::spawn(move || sample(&metrics, Duration::from_secs_f64(every.max(0.1)), &done))
    });
    // Cameras replaying one recording would otherwise all start at its first keyframe:
    // their starts are spread over a second, as a plant's cameras' keyframes are.
    let stagger_cameras = plan.source.as_ref().map(|_| Duration::from_secs(1));
    let hooks = Hooks { time_stages: true, metrics: Some(metrics), stagger_cameras, ..Hooks::default() };
    let ran = run::run_stages(&config, timely::Config::process(plan.workers), stop, hooks);
    done.store(true, Ordering::Relaxed);
    let samples = sampler.map(|s| s.join().unwrap_or_default()).unwrap_or_default();
    let (cameras, stages) = ran?;
    let wall = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu_before;
    let received: u64 = cameras.iter().map(|c| c.received).sum();
    let offered_per_camera = plan.max_fps.map_or(f64::from(plan.fps), |m| m.min(f64::from(plan.fps)));
    let latency_ms = percentiles_ms(&stages.latencies_s);
    let revision_latency_ms = percentiles_ms(&stages.revision_latencies_s);
    let opened: Vec<(&String, &crate::run::OrderSummary)> =
        stages.summary.work_orders.iter().filter(|(_, o)| o.opened).collect();
    // A recording shows what it shows: one work order a camera is the synthetic cameras' promise.
    let unexpected = (0..plan.cameras * usize::from(plan.source.is_none()))
        .map(|i| format!("bench-{i:02}"))
        .filter_map(|camera| {
            let orders: Vec<String> = opened
                .iter()
                .filter(|(_, o)| o.camera_id == camera)
                .map(|(id, o)| format!("{id} {:?} track {}", o.defect_class, o.track_id))
                .collect();
            (orders.len() != 1).then(|| format!("{camera}: {} work orders [{}]", orders.len(), orders.join("; ")))
        })
        .collect();
    let (onsets, orders_elsewhere) = truth.map_or_else(Default::default, |truth| {
        let starts = cameras.iter().filter_map(|c| Some((c.camera_id.clone(), c.stream_start_ms?))).collect();
        let orders: Vec<OpenedOrder> = (opened.iter())
            .filter_map(|(_, o)| {
                Some(OpenedOrder {
                    camera_id: o.camera_id.clone(),
                    defect_class: o.defect_class.as_str().to_owned(),
                    opened_at_ms: o.opened_at_ms?,
                    bbox: o.opened_bbox?,
                })
            })
            .collect();
        truth.match_orders(&orders, &starts)
    });
    let inference_s = stages.inference_us as f64 / 1e6;
    let acked = (if plan.brokers.is_some() { "acked" } else { "handed over" }, stages.revision_latencies_s.clone());
    let stages_ms = stages
        .stage_latencies_s
        .iter()
        .map(|(stage, seconds)| (stage.name(), seconds.clone()))
        .chain([acked])
        .filter_map(|(stage, seconds)| {
            let p = percentiles_ms(&seconds)?;
            Some(StageLatency { stage: stage.to_owned(), count: seconds.len(), p50: p.p50, p99: p.p99 })
        })
        .collect();
    Ok(BenchResult {
        cameras: plan.cameras,
        fps_per_camera: plan.fps,
        resolution: format!("{}x{}", plan.width, plan.height),
        seconds: wall,
        frames_in_per_s: received as f64 / plan.seconds,
        frames_inferred_per_s: stages.frames_inferred as f64 / plan.seconds,
        frames_offered_per_s: plan.cameras as f64 * offered_per_camera,
        frames_skipped_per_s: cameras.iter().map(|c| c.skipped_undecoded + c.skipped_decoded).sum::<u64>() as f64
            / plan.seconds,
        dropped: cameras.iter().map(|c| c.dropped).sum(),
        late: cameras.iter().map(|c| c.late).sum(),
        work_orders: opened.len(),
        unexpected,
        revisions: stages.revision_latencies_s.len(),
        latency_ms,
        revision_latency_ms,
        kafka: plan.brokers.is_some(),
        cpu_cores: cpu / wall,
        peak_rss_mib: peak_rss_kib() as f64 / 1024.0,
        // Inference runs on both cores (the matrix products are parallel), so its wall
        // time counts up to twice in CPU time; this is a lower bound of its share.
        inference_cpu_share: if cpu > 0.0 { (inference_s / cpu).min(1.0) } else { 0.0 },
        inference_ms_per_frame: inference_s * 1000.0 / stages.frames_inferred.max(1) as f64,
        stages_ms,
        samples,
        onsets,
        orders_elsewhere,
    })
}

/// User + system CPU seconds of this process so far (`/proc/self/stat`).
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else { return 0.0 };
    // Fields after the command name (which may hold spaces) start at the last ')'.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else { return 0.0 };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after ')'.
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    // Linux reports in clock ticks of 1/100 s (USER_HZ).
    (ticks(11) + ticks(12)) / 100.0
}

/// Peak resident memory of this process (`VmHWM`), KiB.
fn peak_rss_kib() -> u64 {
    rss_kib("VmHWM:")
}

/// A memory figure of this process from `/proc/self/status` (`VmRSS:`, `VmHWM:`), KiB.
fn rss_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix(field)).and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// The result as a short report.
pub fn render(r: &BenchResult) -> String {
    let show = |l: &Option<Percentiles>| {
        l.as_ref()
            .map_or("none".to_owned(), |l| format!("p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms", l.p50, l.p99, l.max))
    };
    let (latency, revision) = (show(&r.latency_ms), show(&r.revision_latency_ms));
    let stages: String = r
        .stages_ms
        .iter()
        .map(|s| format!("  capture → {:<11} p50 {:>6.0} ms, p99 {:>6.0} ms ({})\n", s.stage, s.p50, s.p99, s.count))
        .collect();
    let onsets =
        if r.onsets.is_empty() { String::new() } else { render_onsets(&r.onsets, r.orders_elsewhere, r.cameras) };
    format!(
        "{} cameras {} at {} fps for {:.0} s{}\n\
         frames in: {:.1}/s (and {:.1}/s skipped at the source); through the model: {:.1}/s of {:.1}/s asked; dropped {}, late {}\n\
         work orders: {} for {} defects; first detection to work order {}: {latency}\n{}\
         frame capture to its revision out ({} revisions): {revision}\n\
         CPU: {:.2} cores; peak memory {:.0} MiB; the network {:.1} ms a frame of wall time, at most {:.0}% of the CPU\n\
         where the time goes:\n{stages}{onsets}",
        r.cameras,
        r.resolution,
        r.fps_per_camera,
        r.seconds,
        if r.kafka { ", into Kafka" } else { ", no broker" },
        r.frames_in_per_s,
        r.frames_skipped_per_s,
        r.frames_inferred_per_s,
        r.frames_offered_per_s,
        r.dropped,
        r.late,
        r.work_orders,
        r.cameras,
        if r.kafka { "acknowledged by Kafka" } else { "handed to the outputs" },
        r.unexpected.iter().map(|u| format!("  {u}\n")).collect::<String>(),
        r.revisions,
        r.cpu_cores,
        r.peak_rss_mib,
        r.inference_ms_per_frame,
        r.inference_cpu_share * 100.0,
    )
}
