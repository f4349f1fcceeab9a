//! The commands beside `run`: commission, synth, train, eval, replay, report, bench.

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::Context;
use defectflow::config::RunConfig;
use defectflow::sinks::audit::AuditLog;
use defectflow::tools::footage::{FootageOptions, write_plant};
use defectflow::tools::scenario::Scenario;
use defectflow_models::synth::{DefectTones, PlantOptions};
use defectflow_schemas::Emitted;

use crate::args::{
    AuditCommand, BenchArgs, CommissionArgs, DiscoverArgs, EvalArgs, HarvestArgs, PromoteArgs, QuantizeArgs,
    ReplayArgs, ReportArgs, SynthArgs, SynthFormat, TrainArgs,
};

pub fn bench(args: BenchArgs) -> anyhow::Result<()> {
    let plan = defectflow::tools::bench::BenchPlan {
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
        change_threshold: args.change_threshold,
        precision: args.precision.into(),
        source: args.source.map(|f| std::path::absolute(&f).unwrap_or(f)),
        decode: serde_json::from_value(serde_json::Value::from(args.decode.as_str()))
            .map_err(|_| anyhow::anyhow!("--decode {}: use auto, keyframes or all", args.decode))?,
        ground_truth: args.ground_truth,
    };
    let dir = tempfile::tempdir().context("a temporary folder for the bench's config")?;
    let result = defectflow::tools::bench::run(&plan, dir.path())?;
    if args.json {
        println!("{}", serde_json::to_string(&result)?);
    } else {
        print!("{}", defectflow::tools::bench::render(&result));
    }
    Ok(())
}

fn eval_footage(footage: PathBuf, args: EvalArgs) -> anyhow::Result<()> {
    use defectflow::tools::footage_eval::{self, FootagePlan};
    let settings = match &args.settings {
        Some(path) => std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?,
        None => String::new(),
    };
    anyhow::ensure!(args.max_fps > 0.0, "--max-fps must be above 0");
    // The run's config lives in a temporary folder: the model is named by its full path
    // (absent here: the shipped weights).
    let model = std::fs::canonicalize(&args.model).ok();
    let plan =
        FootagePlan { footage, model, max_fps: args.max_fps, deadline_s: args.deadline_s, settings, out: args.out };
    let truth = footage_eval::read_truth(&plan.footage)?;
    let report = footage_eval::evaluate(&plan, &truth)?;
    print!("{}", footage_eval::render(&report));
    if let Some(path) = args.json {
        std::fs::write(&path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if let Some(path) = args.verdicts {
        let lines: Vec<String> =
            footage_eval::verdicts(&truth, &report).iter().map(serde_json::to_string).collect::<Result<_, _>>()?;
        std::fs::write(&path, lines.iter().map(|l| format!("{l}\n")).collect::<String>())
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

pub fn commission(args: CommissionArgs) -> anyhow::Result<()> {
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

pub fn report(args: ReportArgs) -> anyhow::Result<()> {
    let kpis = defectflow::tools::report::kpis(&args.audit)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&kpis)?);
    } else {
        print!("{}", defectflow::tools::report::render(&kpis));
    }
    Ok(())
}

pub fn harvest(args: HarvestArgs) -> anyhow::Result<()> {
    let evidence = args.evidence.clone().unwrap_or_else(|| args.audit.join("../evidence"));
    let events = match &args.events {
        Some(path) => defectflow::tools::harvest::read_events(path)?,
        None => Vec::new(),
    };
    let harvest = defectflow::tools::harvest::harvest(&args.audit, &evidence, &events, &args.out)?;
    if args.json {
        println!("{}", serde_json::to_string(&harvest)?);
    } else {
        println!(
            "{}: {} work orders closed as false positive or completed: {} negative frames, {} labelled frames; \
             {} frames not kept, {} without a box of their class; {} events for work orders not in the audit log",
            args.out.display(),
            harvest.work_orders,
            harvest.negatives,
            harvest.positives,
            harvest.frames_missing,
            harvest.unlabelled,
            harvest.events_unknown
        );
    }
    Ok(())
}

pub fn audit(command: AuditCommand) -> anyhow::Result<()> {
    match command {
        AuditCommand::Compact { audit, before } => {
            let valid = before.len() == 10
                && before
                    .chars()
                    .enumerate()
                    .all(|(i, c)| matches!(i, 4 | 7) == (c == '-') && (c == '-' || c.is_ascii_digit()));
            anyhow::ensure!(valid, "--before: `{before}` is not a date (YYYY-MM-DD)");
            anyhow::ensure!(audit.is_dir(), "--audit: {} is not a folder", audit.display());
            let done = defectflow::sinks::audit::compact(&audit, &before)?;
            println!(
                "compacted {} partitions before {before}: {} files into {}, {} rows",
                done.partitions, done.files_before, done.files_after, done.rows
            );
            Ok(())
        }
    }
}

pub fn synth(args: SynthArgs) -> anyhow::Result<()> {
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
    let tones = if args.varied_defect_tones { DefectTones::Varied } else { DefectTones::Fixed };
    let truth = match args.format {
        SynthFormat::Video => {
            anyhow::ensure!(tones == DefectTones::Fixed, "--varied-defect-tones: only with --format yolo");
            write_plant(&args.out, &options)?
        }
        SynthFormat::Yolo => {
            defectflow::tools::modelling::write_yolo_set(&args.out, &options.plant, args.every, tones)?
        }
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

pub fn train(args: TrainArgs) -> anyhow::Result<()> {
    let config = defectflow_models::training::TrainConfig::new()
        .with_seed(args.seed)
        .with_steps(args.steps)
        .with_batch_size(args.batch_size)
        .with_crop_px(args.crop_px)
        .with_learning_rate(args.learning_rate)
        .with_box_head_only(args.box_head_only)
        .with_randomise(args.randomise)
        .with_mine_every(args.mine_every)
        .with_distill(args.distill);
    anyhow::ensure!((0.0..=1.0).contains(&args.randomise), "--randomise must be a share from 0 to 1");
    anyhow::ensure!(args.distill >= 0.0 && args.distill.is_finite(), "--distill must be a weight of 0 or more");
    anyhow::ensure!(
        args.crop_px >= 16 && args.crop_px.is_multiple_of(8),
        "--crop-px must be a multiple of 8, at least 16"
    );
    anyhow::ensure!(args.steps > 0 && args.batch_size > 0, "--steps and --batch-size must be at least 1");
    anyhow::ensure!(
        args.force || !args.out.join("model.json").exists(),
        "{} already holds a model: give another --out, or --force to overwrite it",
        args.out.display()
    );
    let options = defectflow::tools::modelling::TrainOptions {
        data: args.data,
        out: args.out,
        config,
        architecture: defectflow_models::model::DefectNetConfig::new()
            .with_stem_channels(args.channels[0])
            .with_mid_channels(args.channels[1])
            .with_cell_channels(args.channels[2])
            .with_box_head(!args.no_box_head),
        holdout: args.holdout,
        init: args.init,
        command: std::iter::once("defectflow".to_owned()).chain(std::env::args().skip(1)).collect::<Vec<_>>().join(" "),
    };
    defectflow::tools::modelling::train_model(&options)?;
    Ok(())
}

/// `defectflow promote`: fails (exit code 1) where the candidate does not pass.
pub fn promote(args: PromoteArgs) -> anyhow::Result<()> {
    use defectflow::tools::modelling;
    use defectflow_models::promotion::Measure;
    let sets = [
        ("held-out", args.heldout.as_path(), Measure::ObjectF1),
        ("harvest", args.harvest.as_path(), Measure::FramesRight),
    ];
    let current = args.current.clone().or_else(|| args.into.clone()).unwrap_or_else(|| PathBuf::from("models/weights"));
    anyhow::ensure!((0.0..1.0).contains(&args.margin), "--margin must be within [0, 1), not {}", args.margin);
    let promotion = modelling::promote(&args.candidate, &current, &sets, args.margin)?;
    for set in &promotion.sets {
        println!(
            "{:<9} object F1 {:.4} against {:.4}; false detections per 1,000 defect-free frames {:.1} against {:.1}; \
             {} {:+.4} (95% interval {:+.4} to {:+.4}) ({})",
            set.name,
            set.candidate_f1,
            set.current_f1,
            set.candidate_false_per_1000,
            set.current_false_per_1000,
            set.measure.as_str(),
            set.difference,
            set.interval[0],
            set.interval[1],
            set.data
        );
    }
    if let Some(path) = &args.json {
        modelling::write_json(path, &promotion)?;
    }
    let card = args.candidate.join("model.json");
    if let Some(why) = promotion.refusal() {
        anyhow::bail!("not promoted: {why} (recorded in {})", card.display());
    }
    match &args.into {
        Some(into) => {
            modelling::install(&args.candidate, into)?;
            println!("promoted: installed in {}", into.display());
        }
        None => println!("promoted (recorded in {})", card.display()),
    }
    Ok(())
}

pub fn quantize(args: QuantizeArgs) -> anyhow::Result<()> {
    use defectflow::tools::quantize::{QuantizeOptions, calibrate_and_compare, record};
    let options = QuantizeOptions {
        model: args.model,
        data: args.data,
        frames: args.frames,
        granularity: serde_json::from_value(serde_json::Value::from(args.granularity.as_str()))
            .map_err(|_| anyhow::anyhow!("--granularity {}: use layer or channel", args.granularity))?,
        refine: !args.no_refine,
        holdout: args.holdout,
        tolerance_points: args.tolerance,
    };
    let calibration = calibrate_and_compare(&options)?;
    let channels: usize = calibration.activation_scales.iter().map(Vec::len).sum();
    println!(
        "activation scales of {} layers ({channels} channels, {:?} steps) from {} frames of {}",
        calibration.activation_scales.len(),
        calibration.granularity,
        calibration.frames,
        calibration.data
    );
    if !calibration.step_factors.is_empty() {
        println!(
            "steps refined by the network's scores: {:?} of the least-squared-error step",
            calibration.step_factors
        );
    }
    if let Some(compared) = &calibration.evaluation {
        println!(
            "{:<18} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "class", "fp32 prec", "int8 prec", "fp32 rec", "int8 rec", "fp32 f1", "int8 f1"
        );
        for (a, b) in compared.fp32.classes.iter().zip(&compared.int8.classes) {
            let (a_o, b_o) = (&a.objects, &b.objects);
            println!(
                "{:<18} {:>9.4} {:>9.4} {:>9.4} {:>9.4} {:>9.4} {:>9.4}",
                a.class, a_o.precision, b_o.precision, a_o.recall, b_o.recall, a_o.f1, b_o.f1
            );
        }
        println!("largest difference: {:.2} points ({})", compared.largest_gap_points, compared.largest_gap_at);
    }
    record(&options, &calibration)?;
    println!("recorded in {}", options.model.join("model.json").display());
    Ok(())
}

pub fn eval(args: EvalArgs) -> anyhow::Result<()> {
    use defectflow_models::detector::{CpuBackend, Detector};
    if let Some(footage) = args.footage.clone() {
        return eval_footage(footage, args);
    }
    let data = args.data.context("--data or --footage is needed")?;
    let mut detector =
        Detector::<CpuBackend>::load(&args.model, Default::default())?.with_precision(args.precision.into())?;
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
    let (report, _) = defectflow::tools::modelling::evaluate_with(&detector, &data, |image, wrong| {
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
    defectflow::tools::modelling::print_report(&report);
    if let Some(path) = &args.json {
        defectflow::tools::modelling::write_json(path, &report)?;
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

pub fn replay(args: ReplayArgs) -> anyhow::Result<()> {
    let (scenario, reference) = Scenario::load(&args.scenario)?;
    let timely_config = args.cluster.timely_config(1)?;
    let Some(replayed) = defectflow::tools::scenario::replay(&scenario, &reference, timely_config)? else {
        return Ok(());
    };
    if let Some(dir) = &args.audit {
        write_audit(dir, &replayed, &scenario.wo_events())?;
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
    replayed: &defectflow::tools::scenario::Replayed,
    events: &[defectflow_schemas::WoEvent],
) -> anyhow::Result<()> {
    let audit = AuditLog::open(dir)?;
    let messages = &replayed.messages;
    let work_orders: Vec<_> = messages
        .iter()
        .filter_map(|m| if let Emitted::WorkOrder(w) = m { Some((**w).clone()) } else { None })
        .collect();
    let assignments: Vec<_> =
        messages.iter().filter_map(|m| if let Emitted::Assignment(a) = m { Some(a.clone()) } else { None }).collect();
    let alerts: Vec<_> =
        messages.iter().filter_map(|m| if let Emitted::Alert(a) = m { Some(a.clone()) } else { None }).collect();
    audit.write_work_orders(&work_orders)?;
    audit.write_assignments(&assignments)?;
    audit.write_wo_events(events)?;
    audit.write_alerts(&alerts)?;
    audit.write_failures(&replayed.failures)?;
    audit.write_suppressed(&replayed.suppressed)?;
    Ok(())
}

/// `defectflow discover --onvif URL`: the camera's profiles as `[[cameras]]` entries.
pub fn discover(args: DiscoverArgs) -> anyhow::Result<()> {
    use defectflow::tools::onvif;
    let username = std::env::var(&args.username_env).ok();
    let password = std::env::var(&args.password_env).ok();
    let login = match (username, password) {
        (Some(username), Some(password)) => Some(onvif::Login {
            username,
            password,
            username_env: args.username_env.clone(),
            password_env: args.password_env.clone(),
        }),
        (None, None) => None,
        (Some(_), None) => {
            anyhow::bail!("{} is set but {} is not: set both, or neither", args.username_env, args.password_env)
        }
        (None, Some(_)) => {
            anyhow::bail!("{} is set but {} is not: set both, or neither", args.password_env, args.username_env)
        }
    };
    let Some(device) = &args.onvif else {
        anyhow::ensure!(args.wait_s.is_finite() && args.wait_s > 0.0, "--wait-s must be a number of seconds above 0");
        let devices = onvif::probe(args.probe_to, std::time::Duration::from_secs_f64(args.wait_s))?;
        anyhow::ensure!(
            !devices.is_empty(),
            "no ONVIF camera answered the WS-Discovery probe sent to {} within {} s",
            args.probe_to,
            args.wait_s
        );
        // Each camera found on its own: one that cannot be asked is named and skipped.
        let mut asked = 0;
        for (n, device) in devices.iter().enumerate() {
            // A prefix given for several cameras is numbered, so that ids stay apart.
            let prefix =
                args.prefix.as_ref().map(|p| if devices.len() > 1 { format!("{p}-{}", n + 1) } else { p.clone() });
            match onvif_entries(device, prefix, login.as_ref()) {
                Ok(entries) => {
                    print!("{entries}");
                    asked += 1;
                }
                Err(error) => eprintln!("{device}: {error:#}"),
            }
        }
        anyhow::ensure!(asked > 0, "none of the {} cameras found could be asked for its profiles", devices.len());
        return Ok(());
    };
    print!("{}", onvif_entries(device, args.prefix.clone(), login.as_ref())?);
    Ok(())
}

/// The `[[cameras]]` entries of the ONVIF device service at `device`.
fn onvif_entries(
    device: &str,
    prefix: Option<String>,
    login: Option<&defectflow::tools::onvif::Login>,
) -> anyhow::Result<String> {
    use defectflow::tools::onvif;
    let profiles = onvif::discover(device, login)?;
    anyhow::ensure!(!profiles.is_empty(), "the camera at {device} has no media profiles");
    // The host: a name, an IPv4 address, or an IPv6 one in brackets.
    let authority = device.split("://").nth(1).unwrap_or(device).split('/').next().unwrap_or_default();
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => authority.split(':').next().unwrap_or_default(),
    };
    let prefix = prefix.unwrap_or_else(|| format!("cam-{}", if host.is_empty() { "camera" } else { host }));
    Ok(onvif::camera_entries(&prefix, &profiles, login))
}
