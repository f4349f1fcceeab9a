//! Learning a camera's baseline from its frames: fitting the Gaussians, leaving out
//! what the model already calls a defect, calibrating the thresholds.

use sha2::{Digest, Sha256};

use super::lookalikes::Lookalikes;
use super::{
    BaselineConfig, BaselineError, BaselineHeader, BaselineKey, CameraBaseline, ExcludedCell, frame_brightness, median,
};
use crate::card::hex;
use crate::inference::{Appearance, CellScores, FrameView, connected_cells};

/// A baseline being learnt from a camera's frames: the first part of the frames fits
/// the Gaussians, the rest calibrates the thresholds (see [`BaselineConfig::fit_share`]).
#[derive(Debug)]
pub struct Commissioning {
    key: BaselineKey,
    config: BaselineConfig,
    grid: Option<(usize, usize, usize)>,
    fit_frames: u32,
    calibration_frames: u32,
    /// Per cell and feature: sums and sums of squares of the frames learnt, and of all
    /// frames (confident defects included).
    sum: Vec<f64>,
    sum_sq: Vec<f64>,
    sum_all: Vec<f64>,
    sum_sq_all: Vec<f64>,
    /// Per cell: frames learnt, and frames left out as a confident defect.
    learnt: Vec<u32>,
    confident: Vec<u32>,
    /// Once fitted: the baseline under calibration and what calibration has seen.
    fitted: Option<CameraBaseline>,
    calibration: Vec<CalibrationFrame>,
    /// Calibration frames are kept one in this many (doubled whenever the kept ones
    /// fill [`MAX_KEPT_CALIBRATION_FRAMES`]), so a long calibration stays bounded.
    keep_every: u32,
    /// How far through commissioning the latest frame was (1: `commission_s`).
    progress: f32,
    /// The first frame's mean pixel value, once seen (see [`Commissioning::brightness`]).
    brightness: (f64, u32),
}

/// Most separate regions the model may call a defect while a camera is commissioned for
/// them to be taken as defects (left out of the baseline); more is the surface misread.
pub const MAX_DEFECTS_AT_COMMISSIONING: usize = 2;

/// Fewest frames a baseline is fitted on, and calibrated on.
pub const MIN_FIT_FRAMES: u32 = 8;
pub const MIN_CALIBRATION_FRAMES: u32 = 4;

/// Commissioning waits for undisturbed calibration frames (steam, a shadow or a light
/// step over the whole calibration) up to this many times `commission_s`, then
/// calibrates on the frames it has.
pub const MAX_COMMISSIONING_STRETCH: f32 = 2.0;

/// Most calibration frames kept (about 1.8 MB for a 640x360 view's 3,600 cells).
const MAX_KEPT_CALIBRATION_FRAMES: usize = 128;

/// A cell's own threshold is at least the margin over the median, across this many
/// consecutive stretches of the calibration frames (2 s each at the default 30 s), of
/// its largest distance in each. Something that moves on its own in the view (a belt,
/// a gauge, a flickering lamp) does so in most stretches and keeps its cells'
/// thresholds above it; a person, vehicle or shadow passing covers a few stretches and
/// does not make the cells it crossed blind afterwards.
const CALIBRATION_STRETCHES: usize = 6;

/// One calibration frame: per cell, its distance relative to the view's typical cell
/// (NaN where the cell is not learnt or the classifier called it a defect).
#[derive(Debug)]
struct CalibrationFrame {
    disturbed: bool,
    cells: Vec<f32>,
}

impl CalibrationFrame {
    /// The frame's largest distance over the cells calibrated.
    fn peak(&self) -> f32 {
        self.cells.iter().copied().filter(|r| !r.is_nan()).fold(0.0, f32::max)
    }
}

impl Commissioning {
    pub fn new(key: BaselineKey, config: BaselineConfig) -> Commissioning {
        Commissioning {
            key,
            config,
            grid: None,
            fit_frames: 0,
            calibration_frames: 0,
            sum: Vec::new(),
            sum_sq: Vec::new(),
            sum_all: Vec::new(),
            sum_sq_all: Vec::new(),
            learnt: Vec::new(),
            confident: Vec::new(),
            fitted: None,
            calibration: Vec::new(),
            keep_every: 1,
            progress: 0.0,
            brightness: (0.0, 0),
        }
    }

    pub fn key(&self) -> &BaselineKey {
        &self.key
    }

    /// Learns from one frame scored with appearance, `progress` of the way through
    /// commissioning (1: `commission_s`; more while it waits for undisturbed frames):
    /// frames before [`BaselineConfig::fit_share`] fit the Gaussians, later ones
    /// calibrate the thresholds.
    pub fn observe(&mut self, scores: &CellScores, progress: f32) -> Result<(), BaselineError> {
        self.progress = progress;
        let fail = |reason: String| BaselineError::Commissioning { camera: self.key.camera_id.clone(), reason };
        let appearance = scores.appearance.as_ref().ok_or_else(|| fail("frame scored without appearance".into()))?;
        let grid = (scores.rows, scores.cols, appearance.dims);
        let (cells, dims) = (grid.0 * grid.1, grid.2);
        match self.grid {
            None => {
                self.grid = Some(grid);
                self.sum = vec![0.0; cells * dims];
                self.sum_sq = vec![0.0; cells * dims];
                self.sum_all = vec![0.0; cells * dims];
                self.sum_sq_all = vec![0.0; cells * dims];
                (self.learnt, self.confident) = (vec![0; cells], vec![0; cells]);
            }
            Some(known) if known != grid => {
                return Err(fail(format!("frames changed size: {known:?} cells and features, then {grid:?}")));
            }
            Some(_) => {}
        }
        let fitting = progress < self.config.fit_share || self.fit_frames < MIN_FIT_FRAMES;
        if fitting && self.fitted.is_none() {
            self.fit_frames += 1;
            self.fit(scores, appearance);
            return Ok(());
        }
        if self.fitted.is_none() {
            self.fitted = Some(self.fitted_baseline()?);
        }
        self.calibration_frames += 1;
        self.calibrate(scores)
    }

    /// The brightness the camera is commissioned at: its first frame's mean pixel value
    /// ([`frame_brightness`]). Commissioning frames are brought to it before they are
    /// scored (a lighting step while commissioning is not learnt), and so are the
    /// frames of the gated camera later.
    pub fn brightness(&mut self, first_frame: &FrameView<'_>) -> f32 {
        if self.brightness.1 == 0 {
            self.brightness = (f64::from(frame_brightness(first_frame)), 1);
        }
        self.brightness.0 as f32
    }

    /// Whether enough frames have been seen to [`Commissioning::finish`].
    pub fn can_finish(&self) -> bool {
        self.fitted.is_some() && self.calibration_frames >= MIN_CALIBRATION_FRAMES
    }

    /// Whether commissioning, at its time, has what it waits for: enough undisturbed
    /// calibration frames, or no more time to wait for them
    /// ([`MAX_COMMISSIONING_STRETCH`]).
    pub fn settled(&self) -> bool {
        let quiet = self.calibration.iter().filter(|f| !f.disturbed).count();
        self.can_finish() && (quiet >= MIN_CALIBRATION_FRAMES as usize || self.progress >= MAX_COMMISSIONING_STRETCH)
    }

    /// The calibration frames kept that were not disturbed (see
    /// [`BaselineConfig::disturbed_fraction`]).
    fn undisturbed(&self) -> Vec<&CalibrationFrame> {
        self.calibration.iter().filter(|f| !f.disturbed).collect()
    }

    fn fit(&mut self, scores: &CellScores, appearance: &Appearance) {
        let dims = appearance.dims;
        let plane = scores.rows * scores.cols;
        for cell in 0..plane {
            let confident =
                (1..scores.classes).any(|k| scores.probabilities[k * plane + cell] >= self.config.exclude_confidence);
            for (k, &v) in appearance.cell(cell).iter().enumerate() {
                let v = f64::from(v);
                self.sum_all[cell * dims + k] += v;
                self.sum_sq_all[cell * dims + k] += v * v;
                if !confident {
                    self.sum[cell * dims + k] += v;
                    self.sum_sq[cell * dims + k] += v * v;
                }
            }
            if confident {
                self.confident[cell] += 1;
            } else {
                self.learnt[cell] += 1;
            }
        }
    }

    /// The Gaussians of the frames fitted so far, every learnt cell at the floor threshold.
    fn fitted_baseline(&self) -> Result<CameraBaseline, BaselineError> {
        let Some((rows, cols, dims)) = self.grid else {
            return Err(BaselineError::Commissioning {
                camera: self.key.camera_id.clone(),
                reason: "no frames".into(),
            });
        };
        let cells = rows * cols;
        let mut mean = vec![0f32; cells * dims];
        let mut var = vec![0f32; cells * dims];
        // A cell the model called a defect in two frames of three or more is left out when
        // its region is local; otherwise it is learnt from every frame. A defect there is
        // there in every frame: the model naming a spot in barely half of them is the
        // model hesitating over a blemish (lens dirt, a weld), which is normal.
        let defect_cells: Vec<bool> = (0..cells).map(|c| self.confident[c] >= 2 * self.learnt[c]).collect();
        // A defect on the asset is one or two compact regions; a model that calls many
        // scattered spots or a large part of the view a defect is misreading the surface.
        let largest = ((cells as f32 * self.config.max_defect_share).round() as usize).max(4);
        let regions = connected_cells(&defect_cells, rows, cols);
        let total: usize = regions.iter().map(Vec::len).sum();
        let mut left_out = vec![false; cells];
        let mut alike = 0;
        if !regions.is_empty() && regions.len() <= MAX_DEFECTS_AT_COMMISSIONING && total <= largest {
            // A defect is unlike the rest of its view; a spot the model misreads on a
            // surface it never saw has lookalikes elsewhere in the view.
            let view = Lookalikes::new(self.mean_features(), rows, cols, dims);
            for region in regions {
                if view.uniqueness(&region) >= self.config.exclude_uniqueness {
                    region.into_iter().for_each(|c| left_out[c] = true);
                } else {
                    alike += 1;
                }
            }
        }
        let is_learnt = |cell: usize| !left_out[cell];
        for cell in (0..cells).filter(|&c| is_learnt(c)) {
            let normal = self.learnt[cell] >= 3 && !defect_cells[cell];
            let (sum, sum_sq, n) = if normal {
                (&self.sum, &self.sum_sq, f64::from(self.learnt[cell]))
            } else {
                (&self.sum_all, &self.sum_sq_all, f64::from(self.learnt[cell] + self.confident[cell]).max(1.0))
            };
            for k in 0..dims {
                let i = cell * dims + k;
                let m = sum[i] / n;
                mean[i] = m as f32;
                var[i] = (sum_sq[i] / n - m * m).max(0.0) as f32;
            }
        }
        // Each feature's floor: a tenth of its mean variance over the learnt cells.
        let learnt_cells = (0..cells).filter(|&c| is_learnt(c)).count().max(1) as f32;
        let floor: Vec<f32> = (0..dims)
            .map(|k| {
                let total: f32 = (0..cells).filter(|&c| is_learnt(c)).map(|c| var[c * dims + k]).sum();
                0.1 * total / learnt_cells + 1e-4
            })
            .collect();
        let inv_std = var.iter().enumerate().map(|(i, v)| 1.0 / (v + floor[i % dims]).sqrt()).collect();
        let cell_threshold =
            (0..cells).map(|c| if is_learnt(c) { self.config.min_threshold } else { f32::INFINITY }).collect();
        let excluded = (0..cells)
            .filter(|&c| !is_learnt(c))
            .map(|c| ExcludedCell {
                row: c / cols,
                col: c % cols,
                share: self.confident[c] as f32 / self.fit_frames.max(1) as f32,
            })
            .collect();
        let header = BaselineHeader {
            key: self.key.clone(),
            rows,
            cols,
            dims,
            fit_frames: self.fit_frames,
            calibration_frames: 0,
            threshold: self.config.min_threshold,
            excluded,
            lookalike_regions: alike,
            brightness: (self.brightness.1 > 0).then_some(self.brightness.0 as f32),
            sha256: String::new(),
        };
        Ok(CameraBaseline { header, mean, inv_std, cell_threshold, commissioned_mean: None, drift: 0.0 })
    }

    /// Per cell and feature, the mean over every frame fitted (confident defects included).
    fn mean_features(&self) -> Vec<f32> {
        let dims = self.grid.map_or(1, |g| g.2);
        let frames = |cell: usize| f64::from(self.learnt[cell] + self.confident[cell]).max(1.0);
        self.sum_all.iter().enumerate().map(|(i, sum)| (sum / frames(i / dims)) as f32).collect()
    }

    fn calibrate(&mut self, scores: &CellScores) -> Result<(), BaselineError> {
        let Some(fitted) = &self.fitted else { return Ok(()) };
        let departure = fitted.departure(scores, &self.config)?;
        let plane = scores.rows * scores.cols;
        // A defect appearing while calibrating must not raise its cells' thresholds.
        let confident = |cell: usize| {
            (1..scores.classes).any(|k| scores.probabilities[k * plane + cell] >= self.config.exclude_confidence)
        };
        let cells: Vec<f32> = (departure.relative.iter().zip(&fitted.cell_threshold).enumerate())
            .map(|(cell, (r, t))| if t.is_finite() && !confident(cell) { *r } else { f32::NAN })
            .collect();
        if (self.calibration_frames - 1).is_multiple_of(self.keep_every) {
            self.calibration.push(CalibrationFrame { disturbed: departure.disturbed, cells });
            if self.calibration.len() >= MAX_KEPT_CALIBRATION_FRAMES {
                let mut i = 0u32;
                self.calibration.retain(|_| {
                    i += 1;
                    !i.is_multiple_of(2)
                });
                self.keep_every *= 2;
            }
        }
        Ok(())
    }

    /// The baseline, its thresholds from calibration: frame-wide, the margin over the
    /// typical frame's largest relative distance; per cell, at least the margin over its
    /// typical largest in a stretch of calibration ([`CALIBRATION_STRETCHES`]: with its
    /// largest over all of it, a cell a person crossed while calibrating stayed blind).
    /// Disturbed frames (steam, a shadow across the view) are left out while enough
    /// others remain: with them, a camera commissioned through a plume of steam had a
    /// threshold hundreds of times its normal one, and found nothing afterwards.
    pub fn finish(mut self) -> Result<CameraBaseline, BaselineError> {
        if !self.can_finish() {
            return Err(BaselineError::Commissioning {
                camera: self.key.camera_id.clone(),
                reason: format!(
                    "{} frames fitted and {} calibrated; it needs at least {MIN_FIT_FRAMES} and {MIN_CALIBRATION_FRAMES}: give it more seconds of footage",
                    self.fit_frames, self.calibration_frames
                ),
            });
        }
        let mut baseline = self.fitted.take().ok_or_else(|| BaselineError::Commissioning {
            camera: self.key.camera_id.clone(),
            reason: "finished before the Gaussians were fitted".into(),
        })?;
        let undisturbed = self.undisturbed();
        let frames = match undisturbed.len() >= MIN_CALIBRATION_FRAMES as usize {
            true => undisturbed,
            false => self.calibration.iter().collect(),
        };
        let margin = self.config.threshold_margin;
        let peaks: Vec<f32> = frames.iter().map(|f| f.peak()).collect();
        let threshold = (margin * median(&peaks)).max(self.config.min_threshold);
        let stretch = frames.len().div_ceil(CALIBRATION_STRETCHES).max(1);
        for (cell, t) in baseline.cell_threshold.iter_mut().enumerate() {
            if t.is_finite() {
                let largest: Vec<f32> = (frames.chunks(stretch))
                    .map(|part| part.iter().map(|f| f.cells[cell]).filter(|r| !r.is_nan()).fold(0.0, f32::max))
                    .collect();
                *t = threshold.max(margin * median(&largest));
            }
        }
        baseline.header.threshold = threshold;
        baseline.header.calibration_frames = self.calibration_frames;
        baseline.header.sha256 = hex(&Sha256::digest(baseline.payload()));
        Ok(baseline)
    }
}
