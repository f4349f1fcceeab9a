//! The `defectflow` command line.

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use defectflow::cluster::ClusterArgs;
use defectflow::config::RunConfig;
use defectflow::footage::{Codec, Container, FootageOptions, write_plant};
use defectflow::graph::{self, CameraReport, Hooks, StopWhen};
use defectflow::scenario::Scenario;
use defectflow::sinks::audit::AuditLog;
use defectflow::workflow::Emitted;
use defectflow_models::synth::PlantOptions;

/// With the `mimalloc` feature, Rust's allocations go through mimalloc (the default is
/// the system allocator: see the feature's note in Cargo.toml).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "defectflow",
    version,
    about = "Plant camera frames in, maintenance work orders out",
    disable_help_flag = true
)]
struct Cli {
    /// Print help (`-h` is timely's hostfile).
    #[arg(long, action = clap::ArgAction::Help, global = true)]
    help: Option<bool>,
    /// Log lines as JSON objects (one per line, for a log shipper) instead of text.
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs the dataflow on the cameras of a config file.
    Run(RunArgs),
    /// Learns what each camera normally sees (its baseline), from its stream or a clip.
    Commission(CommissionArgs),
    /// Checks a config file and reports the first field at fault.
    CheckConfig {
        /// The config file (TOML).
        config: PathBuf,
    },
    /// Writes synthetic plant footage with YOLO labels and ground truth.
    Synth(SynthArgs),
    /// Replays a work-order scenario and prints the work-order stream as JSON lines.
    Replay(ReplayArgs),
    /// Trains the defect model on a YOLO folder (images/, labels/, a classes file).
    Train(TrainArgs),
    /// Evaluates a model on a YOLO folder: per-class precision, recall, F1, confusion.
    Eval(EvalArgs),
    /// Prints the headline maintenance KPIs from a Parquet audit log.
    Report(ReportArgs),
    /// Runs the whole graph on N synthetic cameras and reports what it sustained.
    Bench(BenchArgs),
}

#[derive(Debug, Args)]
struct CommissionArgs {
    /// The config file (TOML) naming the cameras.
    #[arg(long, short = 'c')]
    config: PathBuf,
    /// Commission only this camera (by id); absent: every camera of the config.
    #[arg(long)]
    camera: Option<String>,
    /// Learn from this recording of the camera's view instead of its stream (needs --camera).
    #[arg(long)]
    from: Option<PathBuf>,
    /// Seconds of footage to learn from; absent: `[anomaly] commission_s`.
    #[arg(long)]
    seconds: Option<f64>,
    /// Folder to store the baselines in; absent: `<[output] dir>/baselines`, where `run` loads them.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct BenchArgs {
    /// Synthetic cameras.
    #[arg(long, default_value_t = 8)]
    cameras: usize,
    /// Frames per second of each camera.
    #[arg(long, default_value_t = 15)]
    fps: u32,
    #[arg(long, default_value_t = 640)]
    width: u32,
    #[arg(long, default_value_t = 360)]
    height: u32,
    /// Frames per second of each camera kept for the model (absent: all).
    #[arg(long)]
    max_fps: Option<f64>,
    #[arg(long, default_value_t = 30.0)]
    seconds: f64,
    /// Worker threads.
    #[arg(short = 'w', long, default_value_t = 2)]
    workers: usize,
    /// Kafka bootstrap servers (topics created); absent: no broker.
    #[arg(long)]
    brokers: Option<String>,
    /// The reference data the bench cameras are added to.
    #[arg(long, default_value = "examples/demo-plant/reference")]
    reference: PathBuf,
    /// Write the run's outputs (work orders, audit log, evidence) here; absent: none.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// Print memory, throughput and latency every this many seconds (a soak).
    #[arg(long)]
    sample_s: Option<f64>,
    /// Seconds each camera is commissioned, then gated with its baseline; 0: not gated.
    #[arg(long, default_value_t = 0.0)]
    commission_s: f64,
}

#[derive(Debug, Args)]
struct ReportArgs {
    /// The audit folder (`<output>/audit`).
    #[arg(long)]
    audit: PathBuf,
    /// Print JSON instead of tables.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct TrainArgs {
    /// YOLO folder: images/ (.png, .jpg), labels/ (same names, .txt), classes.txt.
    #[arg(long)]
    data: PathBuf,
    /// Where to write weights.bin and model.json.
    #[arg(long, default_value = "models/weights")]
    out: PathBuf,
    /// Held-out YOLO folder to evaluate on after training; the result goes into the card.
    #[arg(long)]
    holdout: Option<PathBuf>,
    #[arg(long, default_value_t = 7)]
    seed: u64,
    #[arg(long, default_value_t = 4000)]
    steps: usize,
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    /// Side of the square training crops, in pixels (a multiple of 8).
    #[arg(long, default_value_t = 128)]
    crop_px: usize,
    #[arg(long, default_value_t = 2e-3)]
    learning_rate: f64,
    /// Go on training the model in this directory (e.g. the shipped one, on your own
    /// frames) instead of starting afresh.
    #[arg(long)]
    init: Option<PathBuf>,
    /// Leave out the box head: boxes then follow the 8-pixel cell grid.
    #[arg(long)]
    no_box_head: bool,
    /// With `--init`: train only the box head (adding one if the model has none) and
    /// leave the cells' scores exactly as they were.
    #[arg(long, requires = "init", conflicts_with = "no_box_head")]
    box_head_only: bool,
}

#[derive(Debug, Args)]
struct EvalArgs {
    /// YOLO folder to evaluate the model's frames on.
    #[arg(long, required_unless_present = "footage", conflicts_with = "footage")]
    data: Option<PathBuf>,
    /// Footage folder (`footage.json` + clips) to run whole through the pipeline, with
    /// commissioning and work orders, against its ground truth.
    #[arg(long)]
    footage: Option<PathBuf>,
    /// With --footage: frames per second of each clip the model sees.
    #[arg(long, default_value_t = 5.0)]
    max_fps: f64,
    /// With --footage: seconds after its onset within which a defect needs its work order.
    #[arg(long, default_value_t = 60.0)]
    deadline_s: f64,
    /// With --footage: a TOML file of settings over the defaults (`[anomaly]`, `[track]`, ...).
    #[arg(long)]
    settings: Option<PathBuf>,
    /// With --footage: keep the run's outputs (work orders, audit log, evidence) here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Model directory (model.json + weights.bin).
    #[arg(long, default_value = "models/weights")]
    model: PathBuf,
    /// Also write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Also draw the per-class rates and the confusion matrix as a PNG here.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Lowest cell probability that counts as a defect (default: the model card's).
    #[arg(long)]
    min_confidence: Option<f32>,
    /// Write this evaluation (and `--min-confidence`, if given) into the model card: how a
    /// threshold chosen on a validation set is recorded with its held-out result.
    #[arg(long)]
    record_in_card: bool,
    /// Also write every missed object and false detection here, one JSON line each with
    /// its image: the frames to look at (or relabel) first.
    #[arg(long)]
    mistakes: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct ReplayArgs {
    /// The scenario file (TOML; see `tests/scenarios/`).
    scenario: PathBuf,
    /// Write the JSON lines here instead of standard output.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Also write the Parquet audit log (work_orders, assignments, wo_events) under this directory.
    #[arg(long)]
    audit: Option<PathBuf>,
    #[command(flatten)]
    cluster: ClusterArgs,
}

#[derive(Debug, Args)]
struct RunArgs {
    /// The config file (TOML).
    #[arg(long, short, default_value = "examples/demo-plant/defectflow.toml")]
    config: PathBuf,
    /// Worker threads (`-w`, overrides `runtime.workers`) and timely's cluster mode.
    #[command(flatten)]
    cluster: ClusterArgs,
    /// Stop after this many seconds (overrides `runtime.duration_s`).
    #[arg(long)]
    duration_s: Option<f64>,
    /// Also print the per-camera report as JSON.
    #[arg(long)]
    json: bool,
    /// Output folder (overrides `output.dir`): work-orders.jsonl and audit/.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct SynthArgs {
    /// Output directory.
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = 7)]
    seed: u64,
    #[arg(long, default_value_t = 6)]
    cameras: usize,
    /// Cameras (the last ones) that show no defect.
    #[arg(long, default_value_t = 0)]
    defect_free: usize,
    #[arg(long, default_value_t = 20.0)]
    seconds: f64,
    #[arg(long, default_value_t = 15)]
    fps: u32,
    #[arg(long, default_value_t = 640)]
    width: u32,
    #[arg(long, default_value_t = 360)]
    height: u32,
    #[arg(long, value_enum, default_value = "h264")]
    codec: Codec,
    #[arg(long, value_enum, default_value = "mp4")]
    container: Container,
    /// `video`: one encoded video per camera; `yolo`: JPEG frames for training.
    #[arg(long, value_enum, default_value = "video")]
    format: SynthFormat,
    /// With `--format yolo`: keep every n-th frame.
    #[arg(long, default_value_t = 1)]
    every: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum SynthFormat {
    Video,
    Yolo,
}

fn main() -> std::process::ExitCode {
    match run_cli() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run_cli() -> anyhow::Result<()> {
    let cli = Cli::parse();
    stop_when_a_peer_is_lost();
    let filter =
        || tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "defectflow=info,warn".into());
    if cli.log_json {
        tracing_subscriber::fmt().json().with_env_filter(filter()).with_writer(std::io::stderr).init();
    } else {
        tracing_subscriber::fmt()
            .with_env_filter(filter())
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
    match cli.command {
        Command::Run(args) => run(args),
        Command::Commission(args) => commission(args),
        Command::CheckConfig { config } => {
            let config = RunConfig::load(&config)?;
            println!("config ok: {} camera(s)", config.cameras.len());
            // What goes to librdkafka, credentials shown by where they come from.
            if let Some(kafka) = &config.kafka {
                for (name, value) in kafka.describe() {
                    println!("kafka {name} = {value}");
                }
            }
            if let Some(metrics) = &config.metrics {
                println!("metrics on {}", metrics.address);
            }
            Ok(())
        }
        Command::Synth(args) => synth(args),
        Command::Replay(args) => replay(args),
        Command::Train(args) => train(args),
        Command::Eval(args) => eval(args),
        Command::Report(args) => report(args),
        Command::Bench(args) => bench(args),
    }
}

/// In a cluster, timely's network threads panic when another process's connection is
/// lost; the workers would then wait for it forever. The process stops instead, saying
/// why, so that whatever supervises the cluster restarts it.
fn stop_when_a_peer_is_lost() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if message.starts_with("timely communication error") {
            eprintln!("error: another process of the cluster is gone ({message}); stopping");
            std::process::exit(3);
        }
        default(info);
    }));
}

fn bench(args: BenchArgs) -> anyhow::Result<()> {
    let plan = defectflow::bench::BenchPlan {
        cameras: args.cameras,
        fps: args.fps,
        width: args.width,
        height: args.height,
        max_fps: args.max_fps,
        seconds: args.seconds,
        workers: args.workers,
        brokers: args.brokers,
        reference: args.reference,
        out: args.out,
        sample_s: args.sample_s,
        commission_s: args.commission_s,
    };
    let dir = tempfile::tempdir().context("a temporary folder for the bench's config")?;
    let result = defectflow::bench::run(&plan, dir.path())?;
    if args.json {
        println!("{}", serde_json::to_string(&result)?);
    } else {
        print!("{}", defectflow::bench::render(&result));
    }
    Ok(())
}

fn eval_footage(
    footage: PathBuf,
    model: PathBuf,
    max_fps: f64,
    deadline_s: f64,
    settings: Option<PathBuf>,
    out: Option<PathBuf>,
    json: Option<PathBuf>,
) -> anyhow::Result<()> {
    let settings = match &settings {
        Some(path) => std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?,
        None => String::new(),
    };
    anyhow::ensure!(max_fps > 0.0, "--max-fps must be above 0");
    // The run's config lives in a temporary folder: the model is named by its full path
    // (absent here: the shipped weights).
    let model = std::fs::canonicalize(&model).ok();
    let plan = defectflow::footage_eval::FootagePlan { footage, model, max_fps, deadline_s, settings, out };
    let report = defectflow::footage_eval::evaluate(&plan)?;
    print!("{}", defectflow::footage_eval::render(&report));
    if let Some(path) = json {
        std::fs::write(&path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

fn commission(args: CommissionArgs) -> anyhow::Result<()> {
    let config = RunConfig::load(&args.config)?;
    let plan = defectflow::commission::CommissionPlan {
        camera: args.camera,
        from: args.from,
        seconds: args.seconds,
        out: args.out,
    };
    let stored = defectflow::commission::commission(&config, &plan)?;
    print!("{}", defectflow::commission::render(&stored));
    Ok(())
}

fn report(args: ReportArgs) -> anyhow::Result<()> {
    let kpis = defectflow::report::kpis(&args.audit)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&kpis)?);
    } else {
        print!("{}", defectflow::report::render(&kpis));
    }
    Ok(())
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    let mut config = RunConfig::load(&args.config)?;
    if let Some(workers) = args.cluster.workers {
        anyhow::ensure!(workers > 0, "-w must be at least 1");
        config.runtime.workers = workers;
    }
    if let Some(d) = args.duration_s {
        config.runtime.duration_s = Some(d);
    }
    if let Some(out) = &args.out {
        config.output.dir = Some(out.clone());
    }
    let interrupted = Arc::new(AtomicBool::new(false));
    {
        let interrupted = Arc::clone(&interrupted);
        ctrlc::set_handler(move || interrupted.store(true, Ordering::Relaxed))
            .context("cannot install Ctrl-C handler")?;
    }
    let stop = StopWhen { after: config.runtime.duration_s.map(Duration::from_secs_f64), interrupted };
    let timely_config = args.cluster.timely_config(config.runtime.workers)?;
    // In a cluster, process 0 delivers the work orders; each process reports its cameras.
    let delivers = args.cluster.process == 0;
    tracing::info!(
        cameras = config.cameras.len(),
        workers = config.runtime.workers,
        process = args.cluster.process,
        processes = args.cluster.processes,
        "starting"
    );
    let (reports, stages) = graph::run_stages(&config, timely_config, stop, Hooks::default())?;
    print_reports(&reports);
    let shadow = config.model.as_ref().is_some_and(|m| m.shadow);
    if delivers {
        print_stages(&stages);
        if config.kafka.is_some() && !shadow {
            println!("kafka: {} sent, {} delivered by an earlier run", stages.kafka_sent, stages.kafka_skipped);
        }
        if let Some(dir) = config.output.dir.clone() {
            print_outputs(&dir, &stages, shadow);
        }
    }
    if args.json {
        let json: Vec<_> = reports.iter().map(report_json).collect();
        println!("{}", serde_json::to_string_pretty(&json)?);
    }
    Ok(())
}

fn print_reports(reports: &[CameraReport]) {
    println!(
        "{:<12} {:>6} {:<8} {:>9} {:>7} {:>7} {:>8} {:>7} {:>5} {:>10} {:>6}",
        "camera", "worker", "state", "frames", "kept", "fps", "sampled", "dropped", "late", "reconnects", "errors"
    );
    for r in reports {
        println!(
            "{:<12} {:>6} {:<8} {:>9} {:>7} {:>7.1} {:>8} {:>7} {:>5} {:>10} {:>6}",
            r.camera_id,
            r.worker,
            r.state,
            r.received,
            r.kept,
            r.fps,
            r.sampled_out,
            r.dropped,
            r.late,
            r.reconnects,
            r.errors
        );
    }
    for r in reports.iter().filter(|r| r.last_error.is_some()) {
        println!("{}: last error: {}", r.camera_id, r.last_error.as_deref().unwrap_or_default());
    }
}

fn print_stages(stages: &graph::StageReport) {
    let Some(version) = &stages.model_version else { return };
    let per_frame = stages.inference_us as f64 / 1000.0 / stages.frames_inferred.max(1) as f64;
    println!(
        "model {version}: {} frames in {} batches ({per_frame:.1} ms a frame), {} detections",
        stages.frames_inferred, stages.batches, stages.detections
    );
    let summary = &stages.summary;
    if summary.work_orders.is_empty() && summary.dead_letters == 0 && summary.alerts == 0 {
        return;
    }
    let mut counts = std::collections::BTreeMap::new();
    for order in summary.work_orders.values() {
        *counts.entry(format!("{:?}", order.priority)).or_insert(0) += 1;
    }
    println!(
        "work orders: {} ({} revisions; latest priority {:?}), assignments: {}, alerts: {}, parts staging: {}, dead letters: {}",
        summary.work_orders.len(),
        summary.revisions,
        counts,
        summary.assignments,
        summary.alerts,
        summary.parts_staging,
        summary.dead_letters,
    );
    let shortages: Vec<&str> = summary.shortages.iter().map(String::as_str).collect();
    println!("parts shortages: {}", if shortages.is_empty() { "none".to_owned() } else { shortages.join(", ") });
    if let Some(l) = defectflow::bench::percentiles_ms(&stages.latencies_s) {
        println!(
            "detection to work order: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms ({} work orders)",
            l.p50,
            l.p99,
            l.max,
            stages.latencies_s.len()
        );
    }
}

/// Says where the outputs are: work-orders.jsonl (not in shadow mode: nothing goes to
/// the CMMS) and the audit log were written as the run went.
fn print_outputs(dir: &std::path::Path, stages: &graph::StageReport, shadow: bool) {
    if let Some((written, skipped)) = stages.jsonl {
        println!("work-orders.jsonl: {written} written, {skipped} written by an earlier run");
    }
    println!("outputs in {}{}", dir.display(), if shadow { " (shadow mode: audit log only)" } else { "" });
}

fn report_json(r: &CameraReport) -> serde_json::Value {
    serde_json::json!({
        "camera_id": r.camera_id, "worker": r.worker, "state": r.state, "frames": r.received,
        "kept": r.kept, "fps": r.fps, "sampled_out": r.sampled_out, "dropped": r.dropped,
        "late": r.late, "reconnects": r.reconnects, "errors": r.errors, "last_error": r.last_error,
    })
}

fn synth(args: SynthArgs) -> anyhow::Result<()> {
    let options = FootageOptions {
        plant: PlantOptions {
            seed: args.seed,
            cameras: args.cameras,
            defect_free_cameras: args.defect_free,
            duration_s: args.seconds,
            fps: args.fps,
            width: args.width,
            height: args.height,
        },
        codec: args.codec,
        container: args.container,
    };
    let truth = match args.format {
        SynthFormat::Video => write_plant(&args.out, &options)?,
        SynthFormat::Yolo => defectflow::modelling::write_yolo_set(&args.out, &options.plant, args.every)?,
    };
    for camera in &truth.cameras {
        let defects: Vec<String> = camera
            .scene
            .defects
            .iter()
            .map(|d| format!("{} at {:.1}s (+{:.1} px/s)", d.class, d.onset_s, d.growth_px_per_s))
            .collect();
        println!(
            "{} {} {} frames: {}",
            camera.video,
            camera.scene.asset_kind,
            camera.frames,
            if defects.is_empty() { "no defects".into() } else { defects.join(", ") }
        );
    }
    println!("wrote {}", args.out.join("ground_truth.json").display());
    Ok(())
}

fn train(args: TrainArgs) -> anyhow::Result<()> {
    let config = defectflow_models::training::TrainConfig::new()
        .with_seed(args.seed)
        .with_steps(args.steps)
        .with_batch_size(args.batch_size)
        .with_crop_px(args.crop_px)
        .with_learning_rate(args.learning_rate)
        .with_box_head_only(args.box_head_only);
    anyhow::ensure!(
        args.crop_px >= 16 && args.crop_px.is_multiple_of(8),
        "--crop-px must be a multiple of 8, at least 16"
    );
    anyhow::ensure!(args.steps > 0 && args.batch_size > 0, "--steps and --batch-size must be at least 1");
    let options = defectflow::modelling::TrainOptions {
        data: args.data,
        out: args.out,
        config,
        architecture: defectflow_models::model::DefectNetConfig::new().with_box_head(!args.no_box_head),
        holdout: args.holdout,
        init: args.init,
        command: std::iter::once("defectflow".to_owned()).chain(std::env::args().skip(1)).collect::<Vec<_>>().join(" "),
    };
    defectflow::modelling::train_model(&options)?;
    Ok(())
}

fn eval(args: EvalArgs) -> anyhow::Result<()> {
    use defectflow_models::detector::{CpuBackend, Detector};
    if let Some(footage) = args.footage {
        return eval_footage(footage, args.model, args.max_fps, args.deadline_s, args.settings, args.out, args.json);
    }
    let data = args.data.context("--data or --footage is needed")?;
    let mut detector = Detector::<CpuBackend>::load(&args.model, Default::default())?;
    if let Some(c) = args.min_confidence {
        anyhow::ensure!((0.0..=1.0).contains(&c), "--min-confidence must be within [0, 1]");
        detector.min_confidence = c;
    }
    let mut mistakes = match &args.mistakes {
        Some(path) => Some(std::io::BufWriter::new(
            std::fs::File::create(path).with_context(|| format!("cannot write {}", path.display()))?,
        )),
        None => None,
    };
    let report = defectflow::modelling::evaluate_with(&detector, &data, |image, wrong| {
        if let Some(out) = &mut mistakes {
            for m in wrong {
                let line = serde_json::json!({ "image": image, "mistake": m });
                writeln!(out, "{line}")?;
            }
        }
        Ok(())
    })?;
    if let Some(mut out) = mistakes {
        out.flush()?;
    }
    defectflow::modelling::print_report(&report);
    if let Some(path) = &args.json {
        defectflow::modelling::write_json(path, &report)?;
    }
    if let Some(path) = &args.plot {
        defectflow_models::plot::write_png(&report, path)?;
    }
    if args.record_in_card {
        let mut card = detector.card().clone();
        card.min_confidence = detector.min_confidence;
        card.evaluation = Some(report);
        card.save(&args.model)?;
        println!("recorded in {}", args.model.join("model.json").display());
    }
    Ok(())
}

fn replay(args: ReplayArgs) -> anyhow::Result<()> {
    let (scenario, reference) = Scenario::load(&args.scenario)?;
    let timely_config = args.cluster.timely_config(1)?;
    let Some(replayed) = defectflow::scenario::replay(&scenario, &reference, timely_config)? else {
        return Ok(());
    };
    if let Some(dir) = &args.audit {
        write_audit(dir, &replayed.messages, &scenario.wo_events())?;
    }
    let mut text = replayed.lines.join("\n");
    text.push('\n');
    match &args.out {
        Some(path) => std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?,
        None => print!("{text}"),
    }
    Ok(())
}

fn write_audit(
    dir: &std::path::Path,
    messages: &[Emitted],
    events: &[defectflow_schemas::WoEvent],
) -> anyhow::Result<()> {
    let audit = AuditLog::open(dir)?;
    let work_orders: Vec<_> = messages
        .iter()
        .filter_map(|m| if let Emitted::WorkOrder(w) = m { Some((**w).clone()) } else { None })
        .collect();
    let assignments: Vec<_> =
        messages.iter().filter_map(|m| if let Emitted::Assignment(a) = m { Some(a.clone()) } else { None }).collect();
    audit.write_work_orders(&work_orders)?;
    audit.write_assignments(&assignments)?;
    audit.write_wo_events(events)?;
    Ok(())
}
