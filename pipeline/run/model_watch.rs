//! `[model] watch`: the model folder looked at every second while the run goes on. A
//! new model there (its `model.json` or `weights.bin` changed, and a version other than
//! the one running) is loaded beside the running one and handed to the inference
//! threads, which take it over from their next batch: no frame is dropped, and every
//! detection and revision names the version that made it. Cameras whose stored baseline
//! belongs to another model are commissioned again for the new one, the classifier
//! alone deciding meanwhile. A model that does not load (half written, its weights not
//! those its card names) is logged and counted, and the running one stays.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use defectflow_models::card::ModelCard;
use defectflow_models::detector::{CpuBackend, Detector, Precision};
use defectflow_operators::gating::{CameraGates, GatedCamera};
use defectflow_operators::infer::ModelSwitch;

use crate::config::{ModelConfig, RunConfig};
use crate::metrics::Metrics;

/// How often the folder is looked at.
const LOOK_EVERY: Duration = Duration::from_secs(1);

/// Watches the model folder of `model` on a thread that ends once `alive` has no other
/// holder. `version` is the running model's.
pub fn watch(
    config: &RunConfig,
    model: &ModelConfig,
    version: &str,
    switch: ModelSwitch<CpuBackend>,
    metrics: &Arc<Metrics>,
    alive: Weak<()>,
) -> anyhow::Result<()> {
    let dir = model.resolved_dir();
    let mut watcher = Watcher {
        stamp: stamp(&dir),
        dir,
        min_confidence: model.min_confidence,
        precision: model.precision,
        version: version.to_owned(),
        cameras: gated_cameras(config),
        anomaly: config.anomaly.clone(),
        baselines: baseline_folder(config),
        switch,
        metrics: Arc::clone(metrics),
    };
    std::thread::Builder::new().name("defectflow-model-watch".into()).spawn(move || {
        while alive.upgrade().is_some() {
            watcher.look();
            std::thread::sleep(LOOK_EVERY);
        }
    })?;
    Ok(())
}

/// One detector per inference thread of the model in `dir`, all of one version (the
/// folder changing while they are read fails), `min_confidence` over the card's, in
/// `precision`.
pub fn load_detectors(
    dir: &Path,
    threads: usize,
    min_confidence: Option<f32>,
    precision: Precision,
) -> anyhow::Result<Vec<Detector<CpuBackend>>> {
    let detectors = (0..threads)
        .map(|_| {
            let mut detector = Detector::<CpuBackend>::load(dir, Default::default())?.with_precision(precision)?;
            if let Some(c) = min_confidence {
                detector.min_confidence = c;
            }
            Ok(detector)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let versions: std::collections::BTreeSet<&str> = detectors.iter().map(|d| d.version()).collect();
    anyhow::ensure!(versions.len() <= 1, "{}: the model changed while it was read ({versions:?})", dir.display());
    Ok(detectors)
}

/// The model version camera baselines are stored under: int8 computes the cells'
/// appearance a little differently, and differently again for another calibration, so
/// its baselines are its own, named by the calibration's steps.
pub fn baselines_version(card: &ModelCard, precision: Precision) -> String {
    match (precision, &card.int8) {
        (Precision::Int8, Some(calibration)) => format!("{}+int8-{}", card.version, calibration.steps_digest()),
        _ => card.version.clone(),
    }
}

/// [`baselines_version`] of the model the detectors run.
pub fn detectors_baselines_version(detectors: &[Detector<CpuBackend>]) -> String {
    detectors.first().map(|d| baselines_version(d.card(), d.precision().0)).unwrap_or_default()
}

/// The cameras as the gates know them.
pub fn gated_cameras(config: &RunConfig) -> Vec<GatedCamera> {
    (config.cameras.iter())
        .map(|c| GatedCamera {
            camera_id: c.id.clone(),
            width: c.width,
            height: c.height,
            name_defects: c.name_defects,
        })
        .collect()
}

/// Where learnt baselines are kept (`<output>/baselines`), if anywhere.
pub fn baseline_folder(config: &RunConfig) -> Option<PathBuf> {
    config.output.dir.as_ref().map(|dir| dir.join("baselines"))
}

struct Watcher {
    dir: PathBuf,
    min_confidence: Option<f32>,
    precision: Precision,
    /// The stamps of the card and the weights last looked at.
    stamp: Stamp,
    /// The running model's version.
    version: String,
    cameras: Vec<GatedCamera>,
    anomaly: defectflow_models::baseline::BaselineConfig,
    baselines: Option<PathBuf>,
    switch: ModelSwitch<CpuBackend>,
    metrics: Arc<Metrics>,
}

type Stamp = [Option<(SystemTime, u64)>; 2];

impl Watcher {
    fn look(&mut self) {
        let now = stamp(&self.dir);
        if now == self.stamp {
            return;
        }
        // Once per change: a half-written model is refused now and read again once its
        // writer's last write changes the stamp.
        let card_changed = now[0] != self.stamp[0];
        self.stamp = now;
        match self.load() {
            Ok(None) => {}
            Ok(Some(version)) => {
                tracing::info!(from = %self.version, to = %version, dir = %self.dir.display(), "model swapped in");
                *self.metrics.model_version.lock().unwrap_or_else(|p| p.into_inner()) = Some(version.clone());
                self.metrics.model_swaps.fetch_add(1, Ordering::Relaxed);
                self.version = version;
            }
            // New weights before their card (an install writes the card last): not
            // refused yet, taken once the card comes.
            Err(error) if !card_changed => {
                tracing::warn!(%error, dir = %self.dir.display(), "weights.bin changed and model.json not yet; waiting for it");
            }
            Err(error) => {
                tracing::error!(%error, dir = %self.dir.display(), "the new model was not taken; the running one stays");
                self.metrics.model_swap_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Loads the folder's model and hands it over; its version, or `None` where it is
    /// the running one.
    fn load(&self) -> anyhow::Result<Option<String>> {
        let detectors = load_detectors(&self.dir, self.switch.threads(), self.min_confidence, self.precision)?;
        let version = detectors.first().map(|d| d.version().to_owned()).unwrap_or_default();
        if version == self.version {
            return Ok(None);
        }
        let baselines_version = detectors_baselines_version(&detectors);
        let gates = CameraGates::reopen(&self.anomaly, self.baselines.as_deref(), &self.cameras, &baselines_version)?;
        self.switch.swap(detectors, Some(gates.clone())).map_err(anyhow::Error::msg)?;
        *self.metrics.gates.lock().unwrap_or_else(|p| p.into_inner()) = Some(gates);
        Ok(Some(version))
    }
}

fn stamp(dir: &Path) -> Stamp {
    ["model.json", "weights.bin"].map(|name| {
        let meta = std::fs::metadata(dir.join(name)).ok()?;
        Some((meta.modified().ok()?, meta.len()))
    })
}
