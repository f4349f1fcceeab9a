//! Each camera's normal at run time: a stored baseline is loaded and checked at start, a
//! camera without one is commissioned from its first frames, and a commissioned
//! camera's frames are gated with its baseline (`defectflow_models::gate`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use burn::tensor::backend::Backend;
use defectflow_models::baseline::{
    BaselineConfig, BaselineError, BaselineKey, CameraBaseline, Commissioning, to_brightness,
};
use defectflow_models::detector::Detector;
use defectflow_models::gate::{Persistence, SCENE_HOLD_MS, SCENE_RELEARN_MS, UnknownDefects};
use defectflow_models::inference::{CellScores, Found, FrameView};

/// Where the baseline of `camera_id` is stored in a folder of baselines.
pub fn baseline_path(folder: &Path, camera_id: &str) -> PathBuf {
    folder.join(format!("{camera_id}.baseline"))
}

/// What one camera's frames go through.
#[derive(Debug)]
enum CameraNormal {
    /// No baseline and no commissioning: the classifier alone decides.
    Ungated,
    /// Learning from frames captured within `commission_s` of its first, at `from_ms`;
    /// `last_ms` is the latest frame's capture time. `watching`: meanwhile the
    /// classifier alone decides (a camera commissioned again for a new model keeps
    /// reporting), rather than nothing.
    Commissioning {
        learning: Box<Commissioning>,
        from_ms: Option<u64>,
        last_ms: Option<u64>,
        watching: bool,
    },
    Gated(Box<Gated>),
}

/// A commissioned camera: its baseline (which follows slow changes), how long its cells
/// have departed, and the capture time its baseline last followed.
#[derive(Debug)]
struct Gated {
    baseline: CameraBaseline,
    persistence: Persistence,
    followed_ms: Option<u64>,
    /// Capture time of the latest frame in which cells were found departing because the
    /// scene changed.
    scene_ms: Option<u64>,
}

impl CameraNormal {
    fn gated(baseline: CameraBaseline) -> CameraNormal {
        CameraNormal::Gated(Box::new(Gated {
            baseline,
            persistence: Persistence::default(),
            followed_ms: None,
            scene_ms: None,
        }))
    }
}

/// A cell that departed within this long may still be under a live track (a track
/// resolves 30 s after its last detection, by default): its baseline does not learn it.
const QUIET_MS: u64 = 60_000;

/// The most a baseline follows in one step, whatever the gap since the previous one.
const MAX_FOLLOW_WEIGHT: f32 = 0.05;

/// The most a cell departing because the scene changed re-learns in one step.
const MAX_SCENE_WEIGHT: f32 = 0.5;

/// A baseline follows its camera once a second at most (a step weighs the time since
/// the previous one): slow changes need no more, and a frame's cost stays the gate's.
const FOLLOW_EVERY_MS: u64 = 1_000;

/// The outcome of one frame.
#[derive(Debug, Default)]
pub struct GateOutcome {
    /// Detections named by the classifier.
    pub named: Vec<Found>,
    /// Detections of class `unknown`, and whether they are shadow only.
    pub unknown: Vec<Found>,
    pub unknown_shadow: bool,
}

/// What a camera's gate has done, for metrics and the run report.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GateStats {
    /// "ungated", "commissioning" or "gated".
    pub state: &'static str,
    /// Share of the camera's learnt cells departing from normal in its latest frame.
    pub departing_share: f32,
    /// Frames in which the whole view changed and nothing was looked for.
    pub disturbed_frames: u64,
    /// Changes of the scene (many regions departing together) re-learnt, not reported.
    pub scene_changes: u64,
    /// Frames commissioning learnt from.
    pub commissioning_frames: u64,
    /// How far the camera's baseline has followed the view since it was commissioned
    /// (see `CameraBaseline::drift`).
    pub drift: f32,
}

#[derive(Debug)]
struct CameraGate {
    normal: CameraNormal,
    stats: GateStats,
    /// Whether the classifier's classes are trusted on this camera (see
    /// [`BaselineConfig::name_defects`]).
    name_defects: bool,
}

/// Every camera's normal, shared by the inference threads. Cheap to clone.
#[derive(Clone, Debug)]
pub struct CameraGates {
    config: BaselineConfig,
    /// Where learnt baselines are stored; `None`: kept in memory only.
    folder: Option<PathBuf>,
    cameras: Arc<HashMap<String, Mutex<CameraGate>>>,
}

/// A camera as the gates know it: its id and the frame size it delivers.
#[derive(Clone, Debug)]
pub struct GatedCamera {
    pub camera_id: String,
    pub width: u32,
    pub height: u32,
    /// Whether the classifier's classes are trusted on this camera; `None`: as
    /// [`BaselineConfig::name_defects`] says for every camera.
    pub name_defects: Option<bool>,
}

impl CameraGates {
    /// Loads the stored baseline of each camera from `folder`, checked against the camera
    /// and the model; a camera without one is commissioned when
    /// [`BaselineConfig::commission_s`] is above 0. A baseline that does not match fails
    /// with the mismatch named.
    pub fn open(
        config: &BaselineConfig,
        folder: Option<&Path>,
        cameras: &[GatedCamera],
        model_version: &str,
    ) -> Result<CameraGates, BaselineError> {
        CameraGates::open_for(config, folder, cameras, model_version, false)
    }

    /// The gates for a model swapped in while the run goes on: a stored baseline of
    /// another model (or none) means commissioning again, with the classifier alone
    /// deciding meanwhile. Any other mismatch (camera, frame size) still fails.
    pub fn reopen(
        config: &BaselineConfig,
        folder: Option<&Path>,
        cameras: &[GatedCamera],
        model_version: &str,
    ) -> Result<CameraGates, BaselineError> {
        CameraGates::open_for(config, folder, cameras, model_version, true)
    }

    fn open_for(
        config: &BaselineConfig,
        folder: Option<&Path>,
        cameras: &[GatedCamera],
        model_version: &str,
        swapped: bool,
    ) -> Result<CameraGates, BaselineError> {
        let mut gates = HashMap::new();
        for camera in cameras {
            let key = BaselineKey {
                camera_id: camera.camera_id.clone(),
                frame_width: camera.width,
                frame_height: camera.height,
                model_version: model_version.to_owned(),
            };
            let stored = folder.map(|f| baseline_path(f, &camera.camera_id)).filter(|p| p.is_file());
            let baseline = match stored.map(|path| CameraBaseline::load(&path, &key)) {
                Some(Ok(baseline)) => Some(baseline),
                Some(Err(BaselineError::Mismatch { field: "model version", .. })) if swapped => None,
                Some(Err(error)) => return Err(error),
                None => None,
            };
            let normal = match baseline {
                Some(baseline) => CameraNormal::gated(baseline),
                None if config.commission_s > 0.0 => CameraNormal::Commissioning {
                    learning: Box::new(Commissioning::new(key, config.clone())),
                    from_ms: None,
                    last_ms: None,
                    watching: swapped,
                },
                None => CameraNormal::Ungated,
            };
            let state = state_name(&normal);
            let gate = CameraGate {
                normal,
                stats: GateStats { state, ..GateStats::default() },
                name_defects: camera.name_defects.unwrap_or(config.name_defects),
            };
            gates.insert(camera.camera_id.clone(), Mutex::new(gate));
        }
        Ok(CameraGates { config: config.clone(), folder: folder.map(Path::to_path_buf), cameras: Arc::new(gates) })
    }

    /// Whether frames of `camera_id` need their cells' appearance.
    pub fn needs_appearance(&self, camera_id: &str) -> bool {
        self.cameras.get(camera_id).is_some_and(|gate| !matches!(lock(gate).normal, CameraNormal::Ungated))
    }

    /// Whether `camera_id` is being commissioned (it learns from every frame).
    pub fn commissioning(&self, camera_id: &str) -> bool {
        (self.cameras.get(camera_id))
            .is_some_and(|gate| matches!(lock(gate).normal, CameraNormal::Commissioning { .. }))
    }

    /// What each camera's gate has done so far.
    pub fn stats(&self) -> Vec<(String, GateStats)> {
        let mut all: Vec<_> = self.cameras.iter().map(|(id, gate)| (id.clone(), lock(gate).stats.clone())).collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// The frame's pixels brought to its camera's commissioned brightness (see
    /// `Commissioning::brightness`), when the camera is commissioning or gated and the
    /// frame is lighter or darker than that (a lighting step).
    pub fn normalised(&self, camera_id: &str, frame: &FrameView<'_>) -> Option<Vec<u8>> {
        let mut gate = lock(self.cameras.get(camera_id)?);
        match &mut gate.normal {
            CameraNormal::Gated(gated) => to_brightness(frame, gated.baseline.header.brightness?),
            CameraNormal::Commissioning { learning, .. } => {
                let target = learning.brightness(frame);
                to_brightness(frame, target)
            }
            CameraNormal::Ungated => None,
        }
    }

    /// Runs one frame of `camera_id`, captured at `capture_ms`, through its camera's gate.
    pub fn frame<B: Backend>(
        &self,
        detector: &Detector<B>,
        camera_id: &str,
        capture_ms: u64,
        scores: &CellScores,
        frame: &FrameView<'_>,
    ) -> GateOutcome {
        let Some(gate) = self.cameras.get(camera_id) else {
            return GateOutcome { named: detector.found_in(scores, frame), ..GateOutcome::default() };
        };
        let mut gate = lock(gate);
        let CameraGate { normal, stats, name_defects } = &mut *gate;
        let name_defects = *name_defects;
        match normal {
            CameraNormal::Ungated => GateOutcome { named: detector.found_in(scores, frame), ..GateOutcome::default() },
            CameraNormal::Commissioning { learning, from_ms, last_ms, watching } => {
                let watching = *watching;
                let meanwhile = || match watching {
                    true => GateOutcome { named: detector.found_in(scores, frame), ..GateOutcome::default() },
                    false => GateOutcome::default(),
                };
                let from = *from_ms.get_or_insert(capture_ms);
                let interval = capture_ms.saturating_sub(last_ms.unwrap_or(capture_ms));
                *last_ms = Some(capture_ms);
                let span_ms = (self.config.commission_s * 1000.0) as u64;
                let elapsed = capture_ms.saturating_sub(from);
                let progress = elapsed as f32 / span_ms.max(1) as f32;
                match learning.observe(scores, progress) {
                    Ok(()) => stats.commissioning_frames += 1,
                    Err(error) => tracing::warn!(%error, "commissioning frame left out"),
                }
                // Done with the last frame of the span (the next would be past it), or
                // later while commissioning waits for undisturbed frames.
                if elapsed + interval < span_ms || !learning.settled() {
                    return meanwhile();
                }
                let done = std::mem::replace(
                    learning,
                    Box::new(Commissioning::new(learning.key().clone(), self.config.clone())),
                );
                match done.finish() {
                    Ok(baseline) => {
                        self.commissioned(&baseline, stats.commissioning_frames);
                        *normal = CameraNormal::gated(baseline);
                        stats.state = "gated";
                    }
                    Err(error) => {
                        tracing::error!(%error, camera = camera_id, "commissioning failed; the camera stays ungated");
                        *normal = CameraNormal::Ungated;
                        stats.state = "ungated";
                    }
                }
                meanwhile()
            }
            CameraNormal::Gated(gated) => self.gated(detector, (gated, name_defects), capture_ms, stats, scores, frame),
        }
    }

    fn gated<B: Backend>(
        &self,
        detector: &Detector<B>,
        (camera, name_defects): (&mut Gated, bool),
        capture_ms: u64,
        stats: &mut GateStats,
        scores: &CellScores,
        frame: &FrameView<'_>,
    ) -> GateOutcome {
        let Gated { baseline, persistence, followed_ms, scene_ms } = camera;
        let config = BaselineConfig { name_defects, ..self.config.clone() };
        match detector.found_gated(scores, frame, baseline, &config, (persistence, capture_ms)) {
            Ok(gated) => {
                stats.departing_share = gated.departing_share;
                stats.disturbed_frames += u64::from(gated.disturbed);
                // One change of the scene: the cells it moves, judged over a few frames.
                if gated.scene_cells > 0 {
                    if scene_ms.is_none_or(|at| capture_ms > at + SCENE_HOLD_MS) {
                        stats.scene_changes += 1;
                        tracing::info!(
                            camera = baseline.header.key.camera_id.as_str(),
                            cells = gated.scene_cells,
                            "the scene changed (many regions of the view at once): re-learning them, not reporting them"
                        );
                    }
                    *scene_ms = Some(scene_ms.map_or(capture_ms, |at| at.max(capture_ms)));
                }
                let since = capture_ms.saturating_sub(followed_ms.unwrap_or(capture_ms));
                let due = followed_ms.is_none() || since >= FOLLOW_EVERY_MS;
                if !gated.disturbed && self.config.follow_s > 0.0 && due {
                    let weight = ((since as f64 / (self.config.follow_s * 1000.0)) as f32).min(MAX_FOLLOW_WEIGHT);
                    let scene_weight = (since as f32 / SCENE_RELEARN_MS as f32).min(MAX_SCENE_WEIGHT);
                    let weights = persistence.follow_weights(
                        scores.rows * scores.cols,
                        capture_ms,
                        QUIET_MS,
                        (weight, scene_weight),
                    );
                    if let Err(error) = baseline.follow(scores, &weights) {
                        tracing::warn!(%error, "baseline did not follow the frame");
                    }
                    *followed_ms = Some(followed_ms.map_or(capture_ms, |t| t.max(capture_ms)));
                    stats.drift = baseline.drift();
                }
                GateOutcome {
                    named: gated.named,
                    unknown: gated.unknown,
                    unknown_shadow: self.config.unknown == UnknownDefects::Shadow,
                }
            }
            Err(error) => {
                tracing::warn!(%error, "frame not gated; the classifier alone decides");
                GateOutcome { named: detector.found_in(scores, frame), ..GateOutcome::default() }
            }
        }
    }

    /// Stores a baseline just learnt and says what commissioning found.
    fn commissioned(&self, baseline: &CameraBaseline, frames: u64) {
        let header = &baseline.header;
        let camera = header.key.camera_id.as_str();
        tracing::info!(
            camera,
            frames,
            threshold = header.threshold,
            defect_cells_at_commissioning = header.excluded.len(),
            lookalike_regions = header.lookalike_regions,
            "camera commissioned"
        );
        if header.lookalike_regions > 0 {
            tracing::info!(
                camera,
                regions = header.lookalike_regions,
                "the model called part of the view a defect while commissioning, but it has lookalikes elsewhere in the view: learnt as normal"
            );
        }
        if !header.excluded.is_empty() {
            tracing::warn!(
                camera,
                cells = header.excluded.len(),
                "the model called part of the view a defect while commissioning: those cells are not learnt as normal"
            );
        }
        if let Some(folder) = &self.folder
            && let Err(error) = baseline.save(&baseline_path(folder, camera))
        {
            tracing::error!(%error, camera, "baseline not stored; the camera is commissioned again on restart");
        }
    }
}

fn state_name(normal: &CameraNormal) -> &'static str {
    match normal {
        CameraNormal::Ungated => "ungated",
        CameraNormal::Commissioning { .. } => "commissioning",
        CameraNormal::Gated(..) => "gated",
    }
}

/// A camera's gate, even after a panic elsewhere poisoned its lock.
fn lock(gate: &Mutex<CameraGate>) -> MutexGuard<'_, CameraGate> {
    gate.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_camera_s_own_name_defects_wins_over_the_anomaly_table_s() {
        let camera = |id: &str, name_defects| GatedCamera { camera_id: id.into(), width: 64, height: 48, name_defects };
        let cameras = [camera("told", Some(false)), camera("default", None), camera("trusted", Some(true))];
        let trusting = BaselineConfig::default();
        let gates = CameraGates::open(&trusting, None, &cameras, "m1").expect("gates");
        let named = |gates: &CameraGates, id: &str| lock(&gates.cameras[id]).name_defects;
        assert!(!named(&gates, "told") && named(&gates, "default") && named(&gates, "trusted"));
        let distrusting = BaselineConfig { name_defects: false, ..BaselineConfig::default() };
        let gates = CameraGates::open(&distrusting, None, &cameras, "m1").expect("gates");
        assert!(!named(&gates, "told") && !named(&gates, "default") && named(&gates, "trusted"));
    }
}
