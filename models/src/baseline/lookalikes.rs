//! How unlike the rest of its view a region is, asked at commissioning of what the
//! classifier already calls a defect.

/// How unlike the rest of its view a region is: the distance from each of its cells to
/// the nearest lookalike cell elsewhere in the view, in units of how far an ordinary
/// cell is from its own nearest lookalike.
///
/// It is the mutual scoring of MuSc (Li et al., "MuSc: Zero-Shot Industrial Anomaly
/// Classification and Segmentation with Mutual Scoring of the Unlabeled Images", ICLR
/// 2024, arXiv:2401.16753) within one view instead of across a batch of images: a
/// patch of normal surface has close lookalikes among the other patches, a defect has
/// none. Commissioning asks it of what the classifier already calls a defect, so a
/// surface the model never trained on, misread in one spot, is learnt as normal.
pub(super) struct Lookalikes {
    /// Per cell, its mean features standardised over the view.
    z: Vec<f32>,
    cols: usize,
    dims: usize,
    /// How far an ordinary cell is from its nearest lookalike: the 99th percentile.
    ordinary: f32,
}

/// Cells within this many rows and columns of a region are its own neighbourhood, not
/// lookalikes elsewhere.
const LOOKALIKE_REACH: usize = 2;

/// An ordinary cell's distance is sampled at every this-many cells (commissioning
/// stays well under a second for a 640×360 view).
const LOOKALIKE_SAMPLE: usize = 5;

impl Lookalikes {
    pub(super) fn new(mut z: Vec<f32>, rows: usize, cols: usize, dims: usize) -> Lookalikes {
        let cells = rows * cols;
        for k in 0..dims {
            let mean = (0..cells).map(|c| z[c * dims + k]).sum::<f32>() / cells as f32;
            let var = (0..cells).map(|c| (z[c * dims + k] - mean).powi(2)).sum::<f32>() / cells as f32;
            let std = var.sqrt().max(1e-6);
            (0..cells).for_each(|c| z[c * dims + k] = (z[c * dims + k] - mean) / std);
        }
        let mut view = Lookalikes { z, cols, dims, ordinary: 0.0 };
        let mut nearest: Vec<f32> = (0..cells).step_by(LOOKALIKE_SAMPLE).map(|c| view.nearest(c, &[c])).collect();
        nearest.sort_by(f32::total_cmp);
        view.ordinary = nearest.get((nearest.len().saturating_sub(1)) * 99 / 100).copied().unwrap_or(0.0).max(1e-6);
        view
    }

    fn near(&self, a: usize, b: usize) -> bool {
        (a / self.cols).abs_diff(b / self.cols) <= LOOKALIKE_REACH
            && (a % self.cols).abs_diff(b % self.cols) <= LOOKALIKE_REACH
    }

    /// Distance from `cell` to the closest cell outside the neighbourhood of `region`.
    fn nearest(&self, cell: usize, region: &[usize]) -> f32 {
        let d = self.dims;
        let features = &self.z[cell * d..(cell + 1) * d];
        (0..self.z.len() / d)
            .filter(|&other| !region.iter().any(|&r| self.near(r, other)))
            .map(|other| features.iter().zip(&self.z[other * d..(other + 1) * d]).map(|(a, b)| (a - b) * (a - b)).sum())
            .fold(f32::INFINITY, f32::min)
            .sqrt()
    }

    /// The region's least typical cell's distance to its nearest lookalike, over an
    /// ordinary cell's.
    pub(super) fn uniqueness(&self, region: &[usize]) -> f32 {
        region.iter().map(|&c| self.nearest(c, region)).fold(0.0, f32::max) / self.ordinary
    }
}
