//! `defectflow commission`: a camera learns what it normally sees, from its stream or
//! from a clip of it, and the baseline is stored where `defectflow run` loads it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use defectflow_models::baseline::{BaselineHeader, BaselineKey, CameraBaseline, MAX_COMMISSIONING_STRETCH};
use defectflow_models::card::ModelCard;
use defectflow_operators::gating::baseline_path;

use crate::config::RunConfig;
use crate::run::model_watch::baselines_version;
use crate::run::{self, Hooks, StopWhen};

/// What to commission.
#[derive(Clone, Debug)]
pub struct CommissionPlan {
    /// One camera of the config; absent: every camera.
    pub camera: Option<String>,
    /// A recording of the camera's view to learn from instead of its stream.
    pub from: Option<PathBuf>,
    /// Seconds of footage to learn from; absent: `[anomaly] commission_s` (or 10).
    pub seconds: Option<f64>,
    /// Folder the baselines go to; absent: `<output dir>/baselines`.
    pub out: Option<PathBuf>,
}

/// Commissions the planned cameras one run for all of them, and returns the headers of
/// the baselines stored.
pub fn commission(config: &RunConfig, plan: &CommissionPlan) -> anyhow::Result<Vec<(PathBuf, BaselineHeader)>> {
    let folder = match (&plan.out, &config.output.dir) {
        (Some(out), _) => out.clone(),
        (None, Some(dir)) => dir.join("baselines"),
        (None, None) => bail!("no folder for the baselines: give --out, or set `[output] dir` in the config"),
    };
    let mut run = config.clone();
    if let Some(id) = &plan.camera {
        run.cameras.retain(|c| &c.id == id);
        if run.cameras.is_empty() {
            bail!("no camera `{id}` in the config");
        }
    }
    if let Some(clip) = &plan.from {
        if run.cameras.len() != 1 {
            bail!("--from learns one camera from a clip: name it with --camera");
        }
        let clip = std::fs::canonicalize(clip).with_context(|| format!("{}: cannot open the clip", clip.display()))?;
        let camera = &mut run.cameras[0];
        camera.url = format!("file://{}", clip.display());
        // The clip's own timeline: its seconds are the seconds commissioning counts.
        (camera.start_ms, camera.realtime, camera.credentials) = (Some(0), false, None);
    }
    let seconds =
        plan.seconds.unwrap_or(if config.anomaly.commission_s > 0.0 { config.anomaly.commission_s } else { 10.0 });
    if !(seconds > 0.0 && seconds <= 3600.0) {
        bail!("--seconds must be above 0 and at most 3600, got {seconds}");
    }
    // A run that learns and stops: no plant (it stops at detections), outputs aside,
    // and the baselines to replace moved out of its way.
    let scratch = tempfile::tempdir().context("a temporary folder for the commissioning run")?;
    run.anomaly.commission_s = seconds;
    run.plant = Default::default();
    run.kafka = None;
    run.metrics = None;
    run.output.dir = Some(scratch.path().to_path_buf());
    run.output.evidence = false;
    // Commissioning may wait for undisturbed frames past `seconds`.
    let most = seconds * f64::from(MAX_COMMISSIONING_STRETCH);
    run.runtime.duration_s = plan.from.is_none().then_some(most + 15.0);
    let model = run.model.get_or_insert_with(Default::default).clone();
    let card = ModelCard::load(&model.resolved_dir()).context("the model to commission with")?;
    let interrupted = Arc::new(AtomicBool::new(false));
    let hooks = stop_once_learnt(&run, &scratch.path().join("baselines"), most, &interrupted);
    let stop = StopWhen { interrupted, ..StopWhen::after(run.runtime.duration_s.map(Duration::from_secs_f64)) };
    let timely = timely::Config::process(run.runtime.workers);
    run::run(&run, timely, stop, hooks)?;
    let learnt = scratch.path().join("baselines");
    let mut stored = Vec::new();
    for camera in &run.cameras {
        let key = BaselineKey {
            camera_id: camera.id.clone(),
            frame_width: camera.width,
            frame_height: camera.height,
            model_version: baselines_version(&card, model.precision),
        };
        let from = baseline_path(&learnt, &camera.id);
        if !from.is_file() {
            bail!(
                "camera {}: no baseline learnt; it sent too few frames in {seconds} s, or too few undisturbed ones (no steam, shadow or shake over a fifth of the view) in {most} s (see the log, and give it more --seconds or a clip with quiet seconds)",
                camera.id
            );
        }
        let baseline = CameraBaseline::load(&from, &key)?;
        let to = baseline_path(&folder, &camera.id);
        baseline.save(&to)?;
        stored.push((to, baseline.header));
    }
    Ok(stored)
}

/// Stops the run once every camera has stored its baseline in `learnt` or sent frames
/// past the longest commissioning may take (`most` seconds; a margin of two seconds lets
/// the last ones through).
fn stop_once_learnt(run: &RunConfig, learnt: &Path, most: f64, interrupted: &Arc<AtomicBool>) -> Hooks {
    let cameras: Vec<String> = run.cameras.iter().map(|c| c.id.clone()).collect();
    let stored: Vec<PathBuf> = cameras.iter().map(|id| baseline_path(learnt, id)).collect();
    let first: Arc<Vec<AtomicU64>> = Arc::new(cameras.iter().map(|_| AtomicU64::new(u64::MAX)).collect());
    let done: Arc<Vec<AtomicBool>> = Arc::new(cameras.iter().map(|_| AtomicBool::new(false)).collect());
    let span_ms = (most * 1000.0) as u64 + 2_000;
    let interrupted = Arc::clone(interrupted);
    let on_observation: run::ObservationObserver = Arc::new(move |_, observation| {
        let Some(i) = cameras.iter().position(|c| *c == observation.camera_id) else { return };
        let _ = first[i].compare_exchange(u64::MAX, observation.capture_ms, Ordering::Relaxed, Ordering::Relaxed);
        let past = observation.capture_ms >= first[i].load(Ordering::Relaxed).saturating_add(span_ms);
        if !done[i].load(Ordering::Relaxed) && (past || stored[i].is_file()) {
            done[i].store(true, Ordering::Relaxed);
        }
        if done.iter().all(|d| d.load(Ordering::Relaxed)) {
            interrupted.store(true, Ordering::Relaxed);
        }
    });
    Hooks { on_observation: Some(on_observation), ..Hooks::default() }
}

/// What a commissioning stored, for the terminal.
pub fn render(stored: &[(PathBuf, BaselineHeader)]) -> String {
    let mut out = String::new();
    for (path, header) in stored {
        out.push_str(&format!(
            "{}: {} frames fitted, {} calibrated, threshold {:.2}, {} cells the model called a defect (not learnt), {} regions it called a defect with lookalikes in the view (learnt) -> {}\n",
            header.key.camera_id,
            header.fit_frames,
            header.calibration_frames,
            header.threshold,
            header.excluded.len(),
            header.lookalike_regions,
            shown(path),
        ));
    }
    out
}

fn shown(path: &Path) -> String {
    path.display().to_string()
}
