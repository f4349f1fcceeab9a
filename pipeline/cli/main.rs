//! The `defectflow` command line: `args` holds its commands and flags, `tools` the
//! commands beside `run`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use defectflow::config::{ConfigError, RunConfig};
use defectflow::run::{self, CameraReport, Hooks, StopWhen};
use defectflow::sinks::SinkKind;

use args::{BridgeArgs, Cli, Command, NotifyArgs, RunArgs};

/// With the `mimalloc` feature, Rust's allocations go through mimalloc (the default is
/// the system allocator: see the feature's note in Cargo.toml).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod args;
mod tools;

fn main() -> std::process::ExitCode {
    match run_cli() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            // A bad config stays bad: a supervisor must not restart the process for it.
            if error.chain().any(|cause| cause.downcast_ref::<ConfigError>().is_some()) {
                std::process::ExitCode::from(ConfigError::EXIT_CODE)
            } else {
                std::process::ExitCode::FAILURE
            }
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
        Command::Commission(args) => tools::commission(args),
        Command::CheckConfig { config: path } => {
            let config = RunConfig::load_unchecked(&path)?;
            let problems: Vec<_> = config.problems().into_iter().chain(config.environment_problems()).collect();
            for (field, message) in &problems {
                eprintln!("config {}: `{field}`: {message}", path.display());
            }
            if !problems.is_empty() {
                let count = problems.len();
                return Err(ConfigError::Problems { path: path.display().to_string(), count }.into());
            }
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
        Command::Synth(args) => tools::synth(args),
        Command::Replay(args) => tools::replay(args),
        Command::Train(args) => tools::train(args),
        Command::Eval(args) => tools::eval(args),
        Command::Report(args) => tools::report(args),
        Command::Harvest(args) => tools::harvest(args),
        Command::Promote(args) => tools::promote(args),
        Command::Quantize(args) => tools::quantize(args),
        Command::Bench(args) => tools::bench(args),
        Command::Audit(command) => tools::audit(command),
        Command::Bridge(args) => bridge(args),
        Command::Notify(args) => notify(args),
        Command::Discover(args) => tools::discover(args),
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
    let stop = StopWhen::after(config.runtime.duration_s.map(Duration::from_secs_f64));
    stop_on_signals(&stop)?;
    bound_the_stop(&stop, Duration::from_secs_f64(config.runtime.stop_timeout_s));
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
    let (reports, stages) = run::run_stages(&config, timely_config, stop, Hooks::default())?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&run_json(&reports, delivers.then_some(&stages)))?);
        return Ok(());
    }
    print_reports(&reports);
    let shadow = config.model.as_ref().is_some_and(|m| m.shadow);
    if delivers {
        print_stages(&stages);
        if let Some(kafka) = stages.sink(SinkKind::Kafka) {
            println!("kafka: {} sent, {} delivered by an earlier run", kafka.written, kafka.earlier);
        }
        if let Some(dir) = config.output.dir.clone() {
            print_outputs(&dir, &stages, shadow);
        }
    }
    Ok(())
}

/// `defectflow bridge`: runs until SIGINT/SIGTERM (requests in flight finish; what the
/// CMMS has not acknowledged stays uncommitted) and prints its summary as JSON.
fn bridge(args: BridgeArgs) -> anyhow::Result<()> {
    let config = defectflow::bridge::BridgeConfig::load(&args.config)?;
    until_signalled(|stop| defectflow::bridge::run(&config, stop, args.until_caught_up))
}

/// `defectflow notify`: runs until SIGINT/SIGTERM (an alert being delivered stays
/// uncommitted) and prints its summary as JSON.
fn notify(args: NotifyArgs) -> anyhow::Result<()> {
    let config = defectflow::notify::NotifyFile::load(&args.config)?;
    until_signalled(|stop| defectflow::notify::run(&config, stop, args.until_caught_up))
}

/// A tool beside the run (bridge, notify): `run` until SIGINT/SIGTERM sets its stop
/// flag, then its summary printed as JSON.
fn until_signalled<S: serde::Serialize>(run: impl FnOnce(Arc<AtomicBool>) -> anyhow::Result<S>) -> anyhow::Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    ctrlc::set_handler(move || flag.store(true, Ordering::Relaxed))
        .context("cannot install the SIGINT/SIGTERM handler")?;
    println!("{}", serde_json::to_string(&run(stop)?)?);
    Ok(())
}

/// SIGINT and SIGTERM (and SIGHUP) ask the run to stop: the cameras stop, what they
/// decoded is processed, the sinks flush and commit and the summary prints. A second
/// signal exits at once (code 130), leaving what was not flushed to the next start.
fn stop_on_signals(stop: &StopWhen) -> anyhow::Result<()> {
    let interrupted = Arc::clone(&stop.interrupted);
    let signals = AtomicUsize::new(0);
    ctrlc::set_handler(move || {
        if signals.fetch_add(1, Ordering::Relaxed) == 0 {
            eprintln!("stopping: delivering and flushing what was seen (a second signal exits at once)");
            interrupted.store(true, Ordering::Relaxed);
        } else {
            eprintln!("error: stopped by a second signal before the outputs were flushed");
            std::process::exit(130);
        }
    })
    .context("cannot install the SIGINT/SIGTERM handler")
}

/// Once a stop is asked for (a signal, or a failure), the process gets `timeout` to
/// finish it; past that it exits with code 4, naming what each worker had left.
fn bound_the_stop(stop: &StopWhen, timeout: Duration) {
    let (interrupted, progress) = (Arc::clone(&stop.interrupted), Arc::clone(&stop.progress));
    std::thread::spawn(move || {
        while !interrupted.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(100));
        }
        std::thread::sleep(timeout);
        eprintln!(
            "error: the stop did not finish within runtime.stop_timeout_s = {} s; left: {}",
            timeout.as_secs_f64(),
            progress.left().join("; ")
        );
        std::process::exit(4);
    });
}

/// The run's report as one JSON object: `cameras`, and (where the process delivers)
/// what the model and the sinks did.
fn run_json(reports: &[CameraReport], stages: Option<&run::StageReport>) -> serde_json::Value {
    let cameras: Vec<_> = reports.iter().map(report_json).collect();
    let Some(stages) = stages else { return serde_json::json!({ "cameras": cameras }) };
    let summary = &stages.summary;
    let sinks: Vec<_> = (stages.sinks.iter())
        .map(|s| serde_json::json!({ "sink": format!("{:?}", s.kind).to_lowercase(), "written": s.written, "earlier": s.earlier }))
        .collect();
    serde_json::json!({
        "cameras": cameras,
        "model_version": stages.model_version,
        "frames_inferred": stages.frames_inferred,
        "detections": stages.detections,
        "work_orders": summary.work_orders.len(),
        "revisions": summary.revisions,
        "assignments": summary.assignments,
        "alerts": summary.alerts,
        "parts_staging": summary.parts_staging,
        "dead_letters": summary.dead_letters,
        "shortages": summary.shortages,
        "sinks": sinks,
    })
}

fn print_reports(reports: &[CameraReport]) {
    println!(
        "{:<12} {:>6} {:<8} {:>9} {:>7} {:>7} {:>8} {:>9} {:>7} {:>5} {:>10} {:>6}",
        "camera",
        "worker",
        "state",
        "frames",
        "kept",
        "fps",
        "sampled",
        "skipped",
        "dropped",
        "late",
        "reconnects",
        "errors"
    );
    for r in reports {
        println!(
            "{:<12} {:>6} {:<8} {:>9} {:>7} {:>7.1} {:>8} {:>9} {:>7} {:>5} {:>10} {:>6}",
            r.camera_id,
            r.worker,
            r.state,
            r.received,
            r.kept,
            r.fps,
            r.sampled_out,
            r.skipped_undecoded + r.skipped_decoded,
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

fn print_stages(stages: &run::StageReport) {
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
    if let Some(l) = defectflow::tools::stats::percentiles_ms(&stages.latencies_s) {
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
fn print_outputs(dir: &std::path::Path, stages: &run::StageReport, shadow: bool) {
    if let Some(file) = stages.sink(SinkKind::JsonLines) {
        println!("work-orders.jsonl: {} written, {} written by an earlier run", file.written, file.earlier);
    }
    println!("outputs in {}{}", dir.display(), if shadow { " (shadow mode: audit log only)" } else { "" });
}

fn report_json(r: &CameraReport) -> serde_json::Value {
    serde_json::json!({
        "camera_id": r.camera_id, "worker": r.worker, "state": r.state, "frames": r.received,
        "kept": r.kept, "fps": r.fps, "sampled_out": r.sampled_out, "dropped": r.dropped,
        "skipped_undecoded": r.skipped_undecoded, "skipped_decoded": r.skipped_decoded,
        "late": r.late, "reconnects": r.reconnects, "errors": r.errors, "last_error": r.last_error,
    })
}
