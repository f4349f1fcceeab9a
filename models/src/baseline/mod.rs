//! A camera's normal: per cell, a Gaussian over the network's appearance features,
//! learnt while the camera is commissioned, and how far a frame's cells depart from it.
//!
//! The method is PaDiM's (Defard et al., "PaDiM: a Patch Distribution Modeling
//! Framework for Anomaly Detection and Localization", ICPR 2020, arXiv:2011.08785): one
//! Gaussian per position of the feature grid, fitted on normal frames of that view, and
//! a cell's anomaly is its Mahalanobis distance to its own Gaussian. A fixed camera
//! watches a fixed asset, so each cell of its grid always shows the same piece of
//! plant, which is what makes a per-position model fit. Two changes from the paper, for
//! a 2-core box watching dozens of cameras: the covariance is diagonal (80 floats a cell
//! instead of 6,400: 2.3 MB a 640×360 camera, scored in under 1% of the network's
//! time), and the features are the defect network's own first cell-resolution layers
//! instead of an ImageNet backbone. Each cell's variance has a floor tied to the
//! camera's typical variance of that feature, so a feature that never moved while
//! commissioning (a ReLU that stayed at zero) does not make every later flicker an
//! anomaly.
//!
//! A frame's distances are read relative to its own median cell: a lighting step or a
//! passing cloud moves every cell, a defect moves a few. Frames where a large share of
//! cells depart together (camera shake, steam, a person filling the view, the lights
//! going out) are `disturbed` and find nothing.

use std::io::{BufRead, Read, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::card::hex;
use crate::gate::UnknownDefects;
use crate::inference::{Appearance, CellScores, FrameView};

mod commissioning;
mod lookalikes;

pub use commissioning::{
    Commissioning, MAX_COMMISSIONING_STRETCH, MAX_DEFECTS_AT_COMMISSIONING, MIN_CALIBRATION_FRAMES, MIN_FIT_FRAMES,
};

/// What a baseline was learnt for; a baseline is used only where all of it matches.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaselineKey {
    pub camera_id: String,
    /// The camera's frame size, in pixels, as configured.
    pub frame_width: u32,
    pub frame_height: u32,
    /// The version of the model whose features the baseline is over.
    pub model_version: String,
}

/// How a camera is commissioned and gated. `[anomaly]` in the config.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BaselineConfig {
    /// A camera without a stored baseline learns one from its first this many seconds
    /// of frames (by capture time) and finds nothing meanwhile; then it is gated. When
    /// its calibration frames were disturbed (steam, a shadow across the view), it waits
    /// for undisturbed ones, up to twice this long. 0: cameras without a baseline are not
    /// gated (the classifier alone decides).
    pub commission_s: f64,
    /// What becomes of lasting departures the classifier cannot name: `on` (detections
    /// of class `unknown`, low-priority inspections), `shadow` (audited, never sent),
    /// `off`.
    pub unknown: UnknownDefects,
    /// Whether the classifier's classes are trusted on these cameras. `false`: every
    /// lasting departure from a camera's normal is an `unknown` inspection, whatever the
    /// classifier calls it. A model that never saw a plant's surfaces names their
    /// defects wrong with full confidence (a crack as contamination, a fallen-out bolt
    /// as a crack), and a wrong class sends the wrong procedure, skill and parts; until
    /// the model is fine-tuned on the plant's own frames, an inspection of the spot is
    /// the better work order. Needs `unknown` on or shadow.
    pub name_defects: bool,
    /// A cell whose most likely class is a defect with at least this probability, in
    /// two frames in three or more while commissioning, is not learnt as normal: a defect
    /// present on the day of commissioning still becomes a work order.
    pub exclude_confidence: f32,
    /// What the model calls a defect while commissioning is left out of the baseline only
    /// when it is at most two regions covering at most this share of the view together:
    /// a defect is local, and more is the model misreading the surface (a texture it
    /// never saw), learnt as normal.
    pub max_defect_share: f32,
    /// ... and only a region this unlike the rest of the view: its cells at least this
    /// many times as far from their nearest lookalike elsewhere in the view as an
    /// ordinary cell is (see `Lookalikes`). A defect has no lookalike; a spot of a
    /// surface the model never saw, misread, has. 0: every such region is left out.
    pub exclude_uniqueness: f32,
    /// The calibrated threshold is this many times the largest relative distance seen
    /// on the camera's own normal frames (the typical frame's largest, and each cell's
    /// typical largest in a stretch of calibration).
    pub threshold_margin: f32,
    /// The threshold is never below this relative distance.
    pub min_threshold: f32,
    /// A frame with more than this share of its cells departing is disturbed (shake,
    /// steam, lighting, something in front of the lens) and finds nothing.
    pub disturbed_fraction: f32,
    /// Share of the commissioning time whose frames fit the Gaussians; the rest
    /// calibrate the thresholds.
    pub fit_share: f32,
    /// A cell counts as departing only once it has departed this long (capture time;
    /// gaps under a fifth of it bridged, disturbed frames skipped): a person, a vehicle, a
    /// shadow or a plume of steam passing covers a cell for less, a defect stays.
    pub settle_ms: u64,
    /// The baseline follows slow changes of the view (daylight, dust) with this time
    /// constant, in seconds: a change that lasts this long is two-thirds learnt. Cells
    /// departing now or lately (a live track's) are never learnt. 0: never follows.
    pub follow_s: f64,
    /// Cells that began departing within 2 s of one another in at least this many
    /// separate regions of the view are the scene changing (a lamp, daylight through a
    /// door, a shift in exposure), not the asset: they are re-learnt within seconds and
    /// never reported. 0: never.
    pub scene_regions: usize,
}

impl Default for BaselineConfig {
    fn default() -> Self {
        BaselineConfig {
            commission_s: 30.0,
            unknown: UnknownDefects::On,
            name_defects: true,
            exclude_confidence: 0.9,
            max_defect_share: 0.02,
            exclude_uniqueness: 2.0,
            threshold_margin: 1.5,
            min_threshold: 3.0,
            disturbed_fraction: 0.2,
            fit_share: 0.6,
            settle_ms: 20_000,
            follow_s: 600.0,
            scene_regions: 3,
        }
    }
}

/// Errors reading, checking or building a baseline.
#[derive(Debug, thiserror::Error)]
pub enum BaselineError {
    #[error("baseline {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("baseline {path}: {reason}")]
    Invalid { path: String, reason: String },
    #[error(
        "baseline {path} was commissioned for {field} {found:?}, not {expected:?}: commission the camera again (`defectflow commission --camera {camera}`)"
    )]
    Mismatch { path: String, field: &'static str, found: String, expected: String, camera: String },
    #[error("commissioning {camera}: {reason}")]
    Commissioning { camera: String, reason: String },
}

/// A region the classifier already called a defect while the camera was commissioned.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExcludedCell {
    pub row: usize,
    pub col: usize,
    /// Share of commissioning frames in which the cell was a confident defect.
    pub share: f32,
}

/// The header of a stored baseline (one JSON line before the arrays).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BaselineHeader {
    #[serde(flatten)]
    pub key: BaselineKey,
    pub rows: usize,
    pub cols: usize,
    pub dims: usize,
    /// Frames the Gaussians were fitted on, and frames the threshold was calibrated on.
    pub fit_frames: u32,
    pub calibration_frames: u32,
    /// The frame-wide threshold of the relative distance (cells may have a higher one).
    pub threshold: f32,
    /// Cells not learnt as normal because the classifier called them a defect.
    pub excluded: Vec<ExcludedCell>,
    /// Regions the classifier called a defect that have lookalikes elsewhere in the
    /// view: a surface it misread, learnt as normal (see `exclude_uniqueness`).
    #[serde(default)]
    pub lookalike_regions: usize,
    /// Mean pixel value (0–255) of the commissioning frames; frames are brought to it
    /// before they are scored, so a lighting step is not a change of the asset.
    #[serde(default)]
    pub brightness: Option<f32>,
    /// SHA-256 of the arrays that follow the header.
    pub sha256: String,
}

impl BaselineHeader {
    /// The header of the baseline stored at `path`, its arrays neither read nor checked
    /// (what a report needs: the grid, the cells left out).
    pub fn read(path: &Path) -> Result<BaselineHeader, BaselineError> {
        BaselineHeader::read_from(path).map(|(header, _)| header)
    }

    /// The header, and the reader left at the arrays.
    fn read_from(path: &Path) -> Result<(BaselineHeader, std::io::BufReader<std::fs::File>), BaselineError> {
        let shown = path.display().to_string();
        let io = |source| BaselineError::Io { path: shown.clone(), source };
        let mut reader = std::io::BufReader::new(std::fs::File::open(path).map_err(io)?);
        let mut line = String::new();
        reader.read_line(&mut line).map_err(io)?;
        let header = serde_json::from_str(&line).map_err(|e| BaselineError::Invalid {
            path: shown.clone(),
            reason: format!("header does not parse: {e}"),
        })?;
        Ok((header, reader))
    }
}

/// A camera's learnt normal; see the module documentation.
#[derive(Clone, Debug, PartialEq)]
pub struct CameraBaseline {
    pub header: BaselineHeader,
    /// `[cells, dims]` means.
    mean: Vec<f32>,
    /// `[cells, dims]` reciprocal standard deviations (floored).
    inv_std: Vec<f32>,
    /// Per cell: its threshold of the relative distance; infinite for a cell not learnt.
    cell_threshold: Vec<f32>,
    /// The means as commissioned, once the baseline has followed the view (see
    /// [`CameraBaseline::follow`]), and how far it has moved from them.
    commissioned_mean: Option<Vec<f32>>,
    drift: f32,
}

/// How far each cell of one frame departs from its camera's normal.
#[derive(Clone, Debug, PartialEq)]
pub struct Departure {
    /// Per cell (row-major): the distance relative to the frame's median cell.
    pub relative: Vec<f32>,
    /// Per cell: whether it departs (relative distance over its threshold, or a cell
    /// that was never learnt as normal).
    pub departs: Vec<bool>,
    /// Share of learnt cells that depart.
    pub departing_share: f32,
    /// Too many cells depart together: the whole view changed, not a defect.
    pub disturbed: bool,
}

impl CameraBaseline {
    /// Whether cell `index` (row-major) was learnt as normal while commissioning.
    pub fn is_learnt(&self, index: usize) -> bool {
        self.cell_threshold.get(index).is_some_and(|t| t.is_finite())
    }

    /// The baseline's per-cell distances for one frame (mean squared z-score over the
    /// features), before they are made relative.
    fn distances(&self, appearance: &Appearance) -> Vec<f32> {
        (0..self.header.rows * self.header.cols).map(|cell| self.distance(appearance, cell, &self.mean)).collect()
    }

    /// One cell's distance from `means` (the followed or the commissioned ones).
    fn distance(&self, appearance: &Appearance, cell: usize, means: &[f32]) -> f32 {
        let dims = self.header.dims;
        let (f, m, s) = (appearance.cell(cell), &means[cell * dims..][..dims], &self.inv_std[cell * dims..][..dims]);
        let sum: f32 = f.iter().zip(m).zip(s).map(|((f, m), s)| ((f - m) * s).powi(2)).sum();
        sum / dims as f32
    }

    /// How far the cells of a frame scored with appearance depart from normal: the view
    /// as commissioned, or as the baseline has followed it since.
    pub fn departure(&self, scores: &CellScores, config: &BaselineConfig) -> Result<Departure, BaselineError> {
        let appearance = self.check_grid(scores)?;
        let distances = self.distances(appearance);
        let learnt: Vec<f32> =
            (distances.iter().zip(&self.cell_threshold)).filter(|(_, t)| t.is_finite()).map(|(d, _)| *d).collect();
        let median = median(&learnt).max(1.0);
        let relative: Vec<f32> = distances.iter().map(|d| d / median).collect();
        // Normal is what the camera saw when commissioned or what its baseline has
        // followed since: a cell departs only from both. A look the baseline learnt
        // while it re-learnt a change of the scene is then no trap when the view goes
        // back to what it was, and a defect departs from both.
        let departs: Vec<bool> = (relative.iter().zip(&self.cell_threshold).enumerate())
            .map(|(cell, (r, t))| {
                !t.is_finite()
                    || (r > t
                        && self
                            .commissioned_mean
                            .as_ref()
                            .is_none_or(|commissioned| self.distance(appearance, cell, commissioned) / median > *t))
            })
            .collect();
        let departing = (departs.iter().zip(&self.cell_threshold)).filter(|(d, t)| **d && t.is_finite()).count();
        let departing_share = departing as f32 / learnt.len().max(1) as f32;
        Ok(Departure { relative, departs, departing_share, disturbed: departing_share > config.disturbed_fraction })
    }

    /// Follows changes of the view: each learnt cell moves its mean its `weights` (0–1,
    /// per cell; 0 for a cell under a defect) of the way to this frame's features. The
    /// spread and thresholds stay as commissioned, so how far the view may wander before
    /// a cell departs does not grow.
    pub fn follow(&mut self, scores: &CellScores, weights: &[f32]) -> Result<(), BaselineError> {
        let appearance = self.check_grid(scores)?;
        let dims = self.header.dims;
        let commissioned = self.commissioned_mean.get_or_insert_with(|| self.mean.clone());
        let (mut moved, mut cells) = (0.0f64, 0usize);
        for (cell, threshold) in self.cell_threshold.iter().enumerate() {
            if !threshold.is_finite() {
                continue;
            }
            let at = cell * dims..(cell + 1) * dims;
            let (mean, start, inv_std) = (&mut self.mean[at.clone()], &commissioned[at.clone()], &self.inv_std[at]);
            let weight = weights.get(cell).copied().unwrap_or(0.0).clamp(0.0, 1.0);
            if weight > 0.0 {
                for (m, f) in mean.iter_mut().zip(appearance.cell(cell)) {
                    *m += weight * (f - *m);
                }
            }
            let squared: f32 = (mean.iter().zip(start).zip(inv_std)).map(|((m, s), i)| ((m - s) * i).powi(2)).sum();
            moved += f64::from(squared / dims as f32);
            cells += 1;
        }
        self.drift = (moved / cells.max(1) as f64).sqrt() as f32;
        Ok(())
    }

    /// How far the baseline has followed the view since it was commissioned: the root
    /// mean square over learnt cells and features of its means' moves, in the
    /// commissioned standard deviations (0 until it follows).
    pub fn drift(&self) -> f32 {
        self.drift
    }

    fn check_grid<'a>(&self, scores: &'a CellScores) -> Result<&'a Appearance, BaselineError> {
        let invalid = |reason: String| BaselineError::Invalid { path: self.header.key.camera_id.clone(), reason };
        let appearance = scores.appearance.as_ref().ok_or_else(|| invalid("frame scored without appearance".into()))?;
        if (scores.rows, scores.cols, appearance.dims) != (self.header.rows, self.header.cols, self.header.dims) {
            return Err(invalid(format!(
                "frame of {}×{} cells with {} features, baseline of {}×{} with {}",
                scores.rows, scores.cols, appearance.dims, self.header.rows, self.header.cols, self.header.dims
            )));
        }
        Ok(appearance)
    }

    /// Writes the baseline to `path`: a JSON header line, then the arrays (f32, little endian).
    pub fn save(&self, path: &Path) -> Result<(), BaselineError> {
        let io = |source| BaselineError::Io { path: path.display().to_string(), source };
        let mut bytes = serde_json::to_vec(&self.header).map_err(|e| io(std::io::Error::other(e)))?;
        bytes.push(b'\n');
        bytes.extend(self.payload());
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        // Written aside and renamed: a crash never leaves half a baseline.
        let aside = path.with_extension("baseline.partial");
        let mut file = std::fs::File::create(&aside).map_err(io)?;
        file.write_all(&bytes).and_then(|()| file.sync_all()).map_err(io)?;
        std::fs::rename(&aside, path).map_err(io)
    }

    fn payload(&self) -> Vec<u8> {
        let all = self.mean.iter().chain(&self.inv_std).chain(&self.cell_threshold);
        all.flat_map(|v| v.to_le_bytes()).collect()
    }

    /// Reads the baseline at `path` and checks that it was learnt for `expected`.
    pub fn load(path: &Path, expected: &BaselineKey) -> Result<CameraBaseline, BaselineError> {
        let shown = path.display().to_string();
        let io = |source| BaselineError::Io { path: shown.clone(), source };
        let invalid = |reason: String| BaselineError::Invalid { path: shown.clone(), reason };
        let (header, mut reader) = BaselineHeader::read_from(path)?;
        let mut payload = Vec::new();
        reader.read_to_end(&mut payload).map_err(io)?;
        let digest = hex(&Sha256::digest(&payload));
        if digest != header.sha256 {
            return Err(invalid(format!("arrays' SHA-256 is {digest}, the header says {}", header.sha256)));
        }
        let (cells, dims) = (header.rows.saturating_mul(header.cols), header.dims);
        let expected_len = cells.checked_mul(dims).and_then(|n| n.checked_mul(2)).and_then(|n| n.checked_add(cells));
        if expected_len.and_then(|n| n.checked_mul(4)) != Some(payload.len()) {
            return Err(invalid(format!("{} bytes of arrays for {cells} cells of {dims} features", payload.len())));
        }
        let found = &header.key;
        let fields = [
            ("camera", &found.camera_id, &expected.camera_id),
            ("model version", &found.model_version, &expected.model_version),
        ];
        for (field, found, wanted) in fields {
            if found != wanted {
                return Err(mismatch(&shown, field, found.clone(), wanted.clone(), expected));
            }
        }
        let size = |k: &BaselineKey| format!("{}x{}", k.frame_width, k.frame_height);
        if size(found) != size(expected) {
            return Err(mismatch(&shown, "frame size", size(found), size(expected), expected));
        }
        let mut floats = payload.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]));
        let mean = floats.by_ref().take(cells * dims).collect();
        let inv_std = floats.by_ref().take(cells * dims).collect();
        let cell_threshold = floats.collect();
        Ok(CameraBaseline { header, mean, inv_std, cell_threshold, commissioned_mean: None, drift: 0.0 })
    }
}

fn mismatch(path: &str, field: &'static str, found: String, expected: String, key: &BaselineKey) -> BaselineError {
    BaselineError::Mismatch { path: path.to_owned(), field, found, expected, camera: key.camera_id.clone() }
}

/// The mean pixel value of a frame (every 7th byte: plenty for a mean).
pub fn frame_brightness(frame: &FrameView<'_>) -> f32 {
    let (sum, n) = frame.pixels.iter().step_by(7).fold((0u64, 0u64), |(s, n), &p| (s + u64::from(p), n + 1));
    if n == 0 { 0.0 } else { sum as f32 / n as f32 }
}

/// The frame's pixels scaled to the `target` mean brightness, or `None` when it is
/// already within 3% of it. The gain is held to 0.5–2: beyond, the view is too dark
/// or too bright to be told apart from a change of the asset anyway.
pub fn to_brightness(frame: &FrameView<'_>, target: f32) -> Option<Vec<u8>> {
    let mean = frame_brightness(frame);
    let gain = (target / mean.max(1.0)).clamp(0.5, 2.0);
    if (gain - 1.0).abs() < 0.03 {
        return None;
    }
    Some(frame.pixels.iter().map(|&p| (f32::from(p) * gain).round().min(255.0) as u8).collect())
}

/// The median of `values` (0 for none).
pub(crate) fn median(values: &[f32]) -> f32 {
    if values.is_empty() {
        return 0.0;
    }
    let mut sorted = values.to_vec();
    let middle = sorted.len() / 2;
    let (_, m, _) = sorted.select_nth_unstable_by(middle, f32::total_cmp);
    *m
}
