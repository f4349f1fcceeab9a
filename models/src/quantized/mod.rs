//! The defect network in 8-bit integers on the CPU.
//!
//! Every layer reads its input as unsigned bytes and its weights as signed bytes, sums
//! their products in 32-bit integers and turns each sum back into a real value with one
//! multiply and one add per output channel:
//!
//! - **Weights:** symmetric, per output channel: `w ≈ q × s_w[o]`, `q` in −127..=127,
//!   `s_w[o]` the channel's largest magnitude over 127.
//! - **Activations:** every input of an integer layer after the first follows a ReLU,
//!   so it is never negative: `x_i ≈ q_i × s_i`, `q_i` in 0..=255, with zero exactly
//!   zero (the convolutions' zero padding stays exact). The steps are calibrated on
//!   frames of the training data ([`calibrate`]) and saved in the model card, one per
//!   layer (or one per channel, folded into the weights that read it:
//!   `Σ_i w_i x_i = Σ_i (w_i s_i) q_i`).
//! - **The first layer** reads the frame's bytes themselves, the normalisation folded
//!   into its weights and bias ([`conv`]).
//! - **Sums:** exact in `i32`, so every kernel gives the same result bit for bit
//!   ([`kernels`]): `vpdpbusd` (AVX-512 VNNI) where the CPU has it, `vpmaddwd` on AVX2,
//!   or a portable loop; chosen at run time ([`Int8Kernel::detect`]).
//!
//! The heads' outputs (logits, boxes) stay real. A convolution reads zero-padded input
//! rows directly (no im2col): a tile of [`TILE`] output pixels × all output channels
//! keeps its sums in registers over every tap.

mod conv;
mod kernels;
mod refine;

use burn::tensor::backend::Backend;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::inference::{CellScores, FrameView};
use crate::metrics::EvalReport;
use crate::model::DefectNet;
use crate::packed::{PackedNet, cell_scores};
use conv::{Bytes, Input, Output, QConv, to_byte};
pub use kernels::Int8Kernel;
pub use refine::{STEP_FACTORS, refine};

/// Output pixels one tile of the product computes together.
const TILE: usize = 8;
/// Output channels one vector of sums holds (512 bits of `i32`).
const VECTOR: usize = 16;
/// Most output channels a layer may have on the int8 path (four vectors).
pub const MAX_OUTPUTS: usize = 4 * VECTOR;

/// The activation scales of a model's int8 path and how they were found; saved in the
/// model card (`int8`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Int8Calibration {
    /// What one step of each quantised activation is worth, per layer and channel (one
    /// value where the layer's channels share it), the layers in the order the network
    /// computes them: stem, mid, cell, local, context, wide, then the box head's hidden
    /// layer.
    pub activation_scales: Vec<Vec<f32>>,
    /// Each activation channel's mean over the calibration frames, laid out as the
    /// scales: with them each integer layer's bias is corrected for the mean error its
    /// quantised weights make (`Σ (w_q − w) × E[x]`; Nagel et al., "Data-Free
    /// Quantization Through Weight Equalization and Bias Correction", ICCV 2019, with
    /// the expectation measured rather than modelled). Absent: no correction.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub activation_means: Vec<Vec<f32>>,
    /// Whether the scales are per layer or per channel.
    #[serde(default)]
    pub granularity: Granularity,
    /// Where the steps were refined by the network's scores ([`refine`]): each layer's
    /// multiple of its least-squared-error step. Empty: not refined.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub step_factors: Vec<f32>,
    /// Frames of the training data the scales were measured on.
    pub frames: usize,
    /// The folder they came from, and its digest.
    pub data: String,
    pub data_digest: String,
    /// The held-out evaluation, fp32 beside int8, when it was run (`defectflow quantize
    /// --holdout`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evaluation: Option<Int8Evaluation>,
}

impl Int8Calibration {
    /// The first 8 hex digits of the SHA-256 of the steps and means: what the int8
    /// path computes depends on them, a camera baseline learnt on it included.
    pub fn steps_digest(&self) -> String {
        let mut hash = Sha256::new();
        for layer in self.activation_scales.iter().chain(&self.activation_means) {
            hash.update((layer.len() as u64).to_le_bytes());
            for value in layer {
                hash.update(value.to_le_bytes());
            }
        }
        hash.finalize().iter().take(4).map(|b| format!("{b:02x}")).collect()
    }
}

/// One held-out evaluation of both paths of the same weights.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Int8Evaluation {
    pub fp32: EvalReport,
    pub int8: EvalReport,
    /// The largest difference over classes of object precision, recall and F1, in
    /// points (hundredths), and where it is.
    pub largest_gap_points: f64,
    pub largest_gap_at: String,
}

impl Int8Evaluation {
    /// Compares two evaluations of the same held-out folder, class by class.
    pub fn new(fp32: EvalReport, int8: EvalReport) -> Int8Evaluation {
        let mut largest = (0.0, String::from("none"));
        for (class, other) in fp32.classes.iter().zip(&int8.classes) {
            let (a, b) = (&class.objects, &other.objects);
            for (measure, x, y) in
                [("precision", a.precision, b.precision), ("recall", a.recall, b.recall), ("f1", a.f1, b.f1)]
            {
                let gap = 100.0 * (x - y).abs();
                if gap > largest.0 {
                    largest = (gap, format!("{} {measure}", class.class));
                }
            }
        }
        Int8Evaluation { fp32, int8, largest_gap_points: largest.0, largest_gap_at: largest.1 }
    }
}

/// A [`DefectNet`] on the int8 path: see the module documentation.
#[derive(Debug)]
pub struct QuantNet {
    stem: QConv,
    /// mid, cell, local, context, wide.
    body: Vec<QConv>,
    head: QConv,
    boxes: Option<(QConv, QConv)>,
    kernel: Int8Kernel,
}

impl QuantNet {
    /// `net` quantised with `calibration`'s activation scales, on the fastest kernel
    /// this CPU has. Fails, saying why, where the calibration does not fit the network.
    pub fn new<B: Backend>(net: &DefectNet<B>, calibration: &Int8Calibration) -> Result<QuantNet, String> {
        // Output channels of each ReLU layer, in the calibration's order.
        let mut widths: Vec<usize> =
            [&net.stem, &net.mid, &net.cell, &net.local, &net.context, &net.wide].map(|c| c.weight.dims()[0]).to_vec();
        widths.extend(net.boxes.as_ref().map(|b| b.hidden.weight.dims()[0]));
        let given = &calibration.activation_scales;
        let positive = given.iter().flatten().all(|s| s.is_finite() && *s > 0.0);
        if given.len() != widths.len() || !positive {
            return Err(format!(
                "int8.activation_scales: {} layers of positive scales expected (one per ReLU layer), found {} ({})",
                widths.len(),
                given.len(),
                if positive { "all positive" } else { "not all positive" }
            ));
        }
        // One scale stands for every channel of its layer.
        let mut scales = Vec::with_capacity(widths.len());
        for (i, (layer, &width)) in given.iter().zip(&widths).enumerate() {
            match layer.len() {
                1 => scales.push(vec![layer[0]; width]),
                n if n == width => scales.push(layer.clone()),
                n => return Err(format!("int8.activation_scales[{i}]: {n} scales for {width} channels")),
            }
        }
        let means = &calibration.activation_means;
        if !(means.is_empty() || means.iter().map(Vec::len).eq(widths.iter().copied())) {
            return Err("int8.activation_means: not one mean per channel of each ReLU layer".into());
        }
        let bytes = |i: usize| Output::Bytes { scales: scales[i].clone() };
        let input = |i: usize| Input { scales: &scales[i], means: means.get(i).map(Vec::as_slice) };
        let layers = [&net.mid, &net.cell, &net.local, &net.context, &net.wide];
        let body = (layers.iter().enumerate())
            .map(|(i, conv)| QConv::new(conv, input(i), bytes(i + 1)))
            .collect::<Result<Vec<_>, _>>()?;
        let head = QConv::new(&net.head, input(5), Output::Reals)?;
        let boxes = match &net.boxes {
            Some(b) => Some((QConv::new(&b.hidden, input(5), bytes(6))?, QConv::new(&b.out, input(6), Output::Reals)?)),
            None => None,
        };
        Ok(QuantNet { stem: QConv::stem(&net.stem, bytes(0))?, body, head, boxes, kernel: Int8Kernel::detect() })
    }

    /// The same network on another kernel (the tests and benchmarks compare them).
    /// Fails where this CPU lacks it.
    pub fn with_kernel(mut self, kernel: Int8Kernel) -> Result<QuantNet, String> {
        if !kernel.available() {
            return Err(format!("this CPU cannot run the {} kernel", kernel.name()));
        }
        self.kernel = kernel;
        Ok(self)
    }

    pub fn kernel(&self) -> Int8Kernel {
        self.kernel
    }

    /// As [`PackedNet::score`].
    pub fn score(&self, frames: &[FrameView<'_>]) -> Vec<CellScores> {
        frames.iter().map(|frame| self.score_frame(frame, false)).collect()
    }

    /// As [`PackedNet::score_with_appearance`]; the appearance is the quantised
    /// activations' values.
    pub fn score_with_appearance(&self, frames: &[FrameView<'_>]) -> Vec<CellScores> {
        frames.iter().map(|frame| self.score_frame(frame, true)).collect()
    }

    fn score_frame(&self, frame: &FrameView<'_>, with_appearance: bool) -> CellScores {
        let mut x = self.stem.to_bytes(&Bytes::pixels(frame), self.kernel);
        let mut appearance = Vec::new();
        for (layer, conv) in self.body.iter().enumerate() {
            x = conv.to_bytes(&x, self.kernel);
            // `cell` and `local`, as `PackedNet` takes them.
            if with_appearance && (1..=2).contains(&layer) {
                appearance.push(x.to_real());
            }
        }
        let logits = self.head.to_reals(&x, self.kernel);
        let boxes =
            self.boxes.as_ref().map(|(hidden, out)| out.to_reals(&hidden.to_bytes(&x, self.kernel), self.kernel));
        cell_scores(&logits, boxes.as_ref(), &appearance)
    }
}

/// Whether each activation channel gets its own step or a layer's channels share one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Granularity {
    /// One step per layer: the weights keep their own range (the default; on the
    /// validation set it kept int8 closer to fp32, docs/model.md).
    #[default]
    Layer,
    /// One step per channel, folded into the weights.
    Channel,
}

/// The int8 path's calibration measured on `frames` with the fp32 network: activation
/// scales and each activation channel's mean (for the bias correction, see
/// [`Int8Calibration::activation_means`]). `data` and `data_digest` are left for the
/// caller to name.
///
/// A scale is the one that minimises the mean squared error of quantising the values it
/// covers (a channel's, or a layer's) over these frames: clipping the few largest values
/// buys a finer step for all the others. The candidates are the largest value times
/// 0.95^k (k < 48).
pub fn calibrate(net: &PackedNet, frames: &[FrameView<'_>], granularity: Granularity) -> Int8Calibration {
    // Per layer and channel, at most about 2^16 values per frame, evenly spaced pixels.
    let mut layers: Vec<Vec<Vec<f32>>> = Vec::new();
    for frame in frames {
        for (i, (outputs, channels)) in net.relu_outputs(frame).into_iter().enumerate() {
            if layers.len() <= i {
                layers.push(vec![Vec::new(); channels]);
            }
            let pixels = outputs.len() / channels;
            for pixel in (0..pixels).step_by((pixels >> 16).max(1)) {
                for (c, values) in layers[i].iter_mut().enumerate() {
                    values.push(outputs[pixel * channels + c]);
                }
            }
        }
    }
    let scales = (layers.iter())
        .map(|channels| {
            let scales: Vec<Option<f32>> = match granularity {
                Granularity::Channel => channels.par_iter().map(|values| best_scale(values)).collect(),
                Granularity::Layer => vec![best_scale(&channels.concat())],
            };
            // A channel never above zero on these frames gets the layer's mean step, so
            // that what it may carry on other frames is neither lost nor dominant.
            let live: Vec<f32> = scales.iter().flatten().copied().collect();
            let mean = if live.is_empty() { 1.0 } else { live.iter().sum::<f32>() / live.len() as f32 };
            scales.into_iter().map(|s| s.unwrap_or(mean)).collect()
        })
        .collect();
    let means = (layers.iter())
        .map(|channels| channels.iter().map(|v| v.iter().sum::<f32>() / v.len().max(1) as f32).collect())
        .collect();
    Int8Calibration {
        activation_scales: scales,
        activation_means: means,
        granularity,
        step_factors: Vec::new(),
        frames: frames.len(),
        data: String::new(),
        data_digest: String::new(),
        evaluation: None,
    }
}

/// The step with the least squared error over `values` (see [`calibrate`]); none where
/// no value is above zero.
fn best_scale(values: &[f32]) -> Option<f32> {
    let largest = values.iter().copied().fold(0f32, f32::max);
    if largest <= 0.0 {
        return None;
    }
    let error = |scale: f32| -> f64 {
        let inverse = 1.0 / scale;
        values.iter().map(|&x| f64::from(x - f32::from(to_byte(x, inverse)) * scale).powi(2)).sum()
    };
    (0..48)
        .map(|k| largest * 0.95f32.powi(k) / 255.0)
        .map(|scale| (scale, error(scale)))
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(scale, _)| scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_tail_is_clipped_and_a_short_one_kept() {
        // Exponentially distributed, as ReLU outputs often are: the few largest values
        // are clipped for a finer step for all the others.
        let tail: Vec<f32> = (1..100_000).map(|i| -(i as f32 / 100_000.0).ln()).collect();
        let largest = tail.iter().copied().fold(0f32, f32::max);
        let scale = best_scale(&tail).expect("values above zero");
        assert!(scale * 255.0 < 0.99 * largest && scale * 255.0 > 0.5 * largest, "{scale} of {largest}");
        // Evenly spread up to 2: nothing to gain from clipping.
        let even: Vec<f32> = (0..100_000).map(|i| i as f32 / 50_000.0).collect();
        assert!((best_scale(&even).expect("values above zero") * 255.0 - 2.0).abs() < 0.01);
        assert_eq!(best_scale(&[0.0, 0.0]), None);
    }
}
