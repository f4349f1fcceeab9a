//! Activation steps refined by what they do to the network's answers.
//!
//! [`calibrate`](super::calibrate) gives each layer the step with the least squared
//! error over its own values. That clips a layer's rare largest activations for a finer
//! step for all the others, which is right for the layer and can be wrong for the
//! network: the rare largest values of the first layers are the sharpest edges of a
//! frame, and some classes are found by them (an empty bolt hole, a bright seat ring
//! around black). [`refine`] then tries a few multiples of each layer's step and keeps
//! the one whose int8 class scores are closest to fp32's on the same frames, layer by
//! layer in the order the network computes them, the layers before as already chosen:
//! the coordinate descent of Nahshan et al., "Loss Aware Post-training Quantization"
//! (Machine Learning, 2021, arXiv:1911.07190), with the distance to the fp32 network's
//! scores as the loss, so that no labels are needed.

use burn::tensor::backend::Backend;

use super::{Int8Calibration, QuantNet};
use crate::inference::{CellScores, FrameView};
use crate::model::DefectNet;
use crate::packed::PackedNet;

/// Multiples of a layer's step that [`refine`] tries; the step itself first, so that
/// where none does better (a layer only the box head reads) it stays.
pub const STEP_FACTORS: [f32; 7] = [1.0, 0.85, 1.15, 1.3, 1.5, 1.75, 2.0];

/// `calibration` with each layer's step multiplied by the one of [`STEP_FACTORS`] that
/// brings the int8 path's class probabilities on `frames` closest (summed squared
/// difference) to `fp32`'s, layer by layer; returns it and the factors chosen. Fails
/// where the calibration does not fit the network.
pub fn refine<B: Backend>(
    net: &DefectNet<B>,
    fp32: &PackedNet,
    frames: &[FrameView<'_>],
    mut calibration: Int8Calibration,
) -> Result<(Int8Calibration, Vec<f32>), String> {
    let reference = fp32.score(frames);
    let mut chosen = Vec::with_capacity(calibration.activation_scales.len());
    for layer in 0..calibration.activation_scales.len() {
        let step = calibration.activation_scales[layer].clone();
        let mut best = (f64::INFINITY, 1.0);
        for factor in STEP_FACTORS {
            calibration.activation_scales[layer] = step.iter().map(|s| s * factor).collect();
            let distance = distance(&QuantNet::new(net, &calibration)?.score(frames), &reference);
            if distance < best.0 {
                best = (distance, factor);
            }
        }
        calibration.activation_scales[layer] = step.iter().map(|s| s * best.1).collect();
        chosen.push(best.1);
    }
    Ok((calibration, chosen))
}

/// Summed squared difference of two scorings' class probabilities, cell by cell.
fn distance(a: &[CellScores], b: &[CellScores]) -> f64 {
    let frame = |(a, b): (&CellScores, &CellScores)| -> f64 {
        a.probabilities.iter().zip(&b.probabilities).map(|(x, y)| f64::from(x - y).powi(2)).sum()
    };
    a.iter().zip(b).map(frame).sum()
}
