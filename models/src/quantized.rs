//! The defect network in 8-bit integers on the CPU.
//!
//! Every layer after the stem reads its input as unsigned bytes and its weights as
//! signed bytes, sums their products in 32-bit integers and turns the sum back into a
//! real value with one multiply per output channel:
//!
//! - **Weights** (with the input scales folded in): symmetric, per output channel:
//!   `w ≈ q × s_w[o]`, `q` in −127..=127, `s_w[o]` the channel's largest magnitude over
//!   127.
//! - **Activations:** every input of an integer layer follows a ReLU, so it is never
//!   negative: `x_i ≈ q_i × s_i`, `q_i` in 0..=255, one scale per channel `i`, with zero
//!   exactly zero (the convolutions' zero padding stays exact). The scales are
//!   calibrated on frames of the training data ([`calibrate`]) and saved in the model
//!   card. A channel's scale is folded into the weights that read it
//!   (`Σ_i w_i x_i = Σ_i (w_i s_i) q_i`), so a channel of small values keeps a fine step
//!   beside one of large values, at no cost in the product.
//! - **Sums:** exact in `i32`, so every kernel gives the same result bit for bit. The
//!   products are taken four at a time: `vpdpbusd` (AVX-512 VNNI) where the CPU has it,
//!   otherwise the same loop compiled for AVX2, or for any CPU; chosen at run time
//!   ([`Int8Kernel::detect`]).
//!
//! The stem, three input channels, stays as the fp32 path computes it
//! ([`crate::packed`]); its output is the first quantised activation. The heads' outputs
//! (logits, boxes) stay real. Each convolution is an im2col of bytes per output row and
//! a tiled product: a tile is [`TILE`] output pixels × all output channels, whose sums
//! stay in registers over the whole depth.

use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2d;
use burn::tensor::backend::Backend;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::inference::{CellScores, FrameView, values};
use crate::metrics::EvalReport;
use crate::model::DefectNet;
use crate::packed::{Activations, PackedNet, cell_scores};

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
    /// What one step of each quantised activation is worth, per layer and channel, the
    /// layers in the order the network computes them: stem, mid, cell, local, context,
    /// wide, then the box head's hidden layer.
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

/// The integer kernel a [`QuantNet`] multiplies with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Int8Kernel {
    /// AVX-512 VNNI: 64 byte products summed into 16 `i32` per instruction.
    Vnni512,
    /// The portable loop compiled for AVX2.
    Avx2,
    /// The portable loop for any CPU.
    Portable,
}

impl Int8Kernel {
    /// The fastest kernel this CPU has.
    pub fn detect() -> Int8Kernel {
        [Int8Kernel::Vnni512, Int8Kernel::Avx2].into_iter().find(|k| k.available()).unwrap_or(Int8Kernel::Portable)
    }

    /// Whether this CPU can run the kernel.
    pub fn available(self) -> bool {
        match self {
            #[cfg(target_arch = "x86_64")]
            Int8Kernel::Vnni512 => {
                is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(target_arch = "x86_64")]
            Int8Kernel::Avx2 => is_x86_feature_detected!("avx2"),
            #[cfg(not(target_arch = "x86_64"))]
            Int8Kernel::Vnni512 | Int8Kernel::Avx2 => false,
            Int8Kernel::Portable => true,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Int8Kernel::Vnni512 => "avx512-vnni",
            Int8Kernel::Avx2 => "avx2",
            Int8Kernel::Portable => "portable",
        }
    }

    /// The sums of one tile: `sums[p][o] = Σ_t Σ_i x[p][t][i] × w[t][i][o]`, `x[p][t]` the
    /// input channels tap `t` of pixel `p` reads ([`Sources`]), the weights packed for
    /// this kernel ([`Weights`]).
    #[allow(unsafe_code)]
    fn tile(self, sources: &Sources<'_>, weights: &Weights, sums: &mut Sums) {
        let (lanes, channels, taps) = (weights.lanes, weights.channels, sources.kernel * sources.kernel);
        assert!(taps <= MAX_TAPS && channels % 4 == 0 && lanes % VECTOR == 0 && lanes <= MAX_OUTPUTS);
        assert!(weights.bytes.len() == taps * channels * lanes && weights.pairs.len() == taps * channels * lanes);
        let last = sources.at.iter().max().copied().unwrap_or(0) + (sources.kernel - 1) * sources.step + channels;
        assert!(sources.rows[..sources.kernel].iter().all(|row| row.len() >= last));
        match self {
            // SAFETY: the kernels need only their target features, which this CPU has: a
            // kernel is chosen or set only where `available` says so.
            #[cfg(target_arch = "x86_64")]
            Int8Kernel::Vnni512 => unsafe { tile_vnni(sources, weights, sums) },
            #[cfg(target_arch = "x86_64")]
            Int8Kernel::Avx2 => unsafe { tile_avx2(sources, weights, sums) },
            _ => tile_portable(sources, weights, sums),
        }
    }
}

/// Most taps of a kernel (3×3).
const MAX_TAPS: usize = 9;

/// What one tile reads: the input rows of its taps, zero-padded, by `ky`; tap `(ky, kx)`
/// of pixel `p` reads the input channels at `rows[ky][at[p] + kx × step..]`.
#[derive(Clone, Copy, Debug)]
struct Sources<'a> {
    rows: [&'a [u8]; 3],
    at: [usize; TILE],
    kernel: usize,
    /// Bytes from one tap to the next along a row: dilation × channels.
    step: usize,
}

impl Sources<'_> {
    /// Where tap `t` of each pixel starts: its row, and the shift past `at`.
    #[inline(always)]
    fn tap(&self, t: usize) -> (&[u8], usize) {
        (self.rows[t / self.kernel], t % self.kernel * self.step)
    }
}

/// One tile's sums, per pixel and output channel.
type Sums = [[i32; MAX_OUTPUTS]; TILE];

/// A layer's weights as the kernels read them, rows in (tap, input) order.
#[derive(Debug)]
struct Weights {
    /// Input channels (a multiple of 4).
    channels: usize,
    /// Output channels rounded up to a multiple of [`VECTOR`] (with zero weights).
    lanes: usize,
    /// `[rows / 4][lanes][4]` bytes, for `vpdpbusd` and the portable loop.
    bytes: Vec<i8>,
    /// `[rows / 2][lanes][2]` as `i16`, for AVX2's `vpmaddwd`.
    pairs: Vec<i16>,
}

impl Weights {
    /// `row(k, o)`: the weight of depth row `k` for output `o`.
    fn new(rows: usize, channels: usize, outputs: usize, row: impl Fn(usize, usize) -> i8) -> Weights {
        let lanes = outputs.next_multiple_of(VECTOR);
        let (mut bytes, mut pairs) = (vec![0i8; rows * lanes], vec![0i16; rows * lanes]);
        for k in 0..rows {
            for o in 0..outputs {
                bytes[(k / 4 * lanes + o) * 4 + k % 4] = row(k, o);
                pairs[(k / 2 * lanes + o) * 2 + k % 2] = i16::from(row(k, o));
            }
        }
        Weights { channels, lanes, bytes, pairs }
    }
}

#[inline(always)]
fn tile_portable(sources: &Sources<'_>, weights: &Weights, sums: &mut Sums) {
    let (lanes, groups) = (weights.lanes, weights.channels / 4);
    sums.iter_mut().for_each(|sums| sums[..lanes].fill(0));
    for (g, w) in weights.bytes.chunks_exact(4 * lanes).enumerate() {
        let (t, i) = (g / groups, 4 * (g % groups));
        let (row, shift) = sources.tap(t);
        for (sums, &at) in sums.iter_mut().zip(&sources.at) {
            let a = &row[at + shift + i..][..4];
            let (a0, a1, a2, a3) = (i32::from(a[0]), i32::from(a[1]), i32::from(a[2]), i32::from(a[3]));
            for (sum, w) in sums[..lanes].iter_mut().zip(w.chunks_exact(4)) {
                *sum += a0 * i32::from(w[0]) + a1 * i32::from(w[1]) + a2 * i32::from(w[2]) + a3 * i32::from(w[3]);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn tile_avx2(sources: &Sources<'_>, weights: &Weights, sums: &mut Sums) {
    match weights.lanes / 8 {
        2 => madd::<2>(sources, weights, sums),
        4 => madd::<4>(sources, weights, sums),
        6 => madd::<6>(sources, weights, sums),
        _ => madd::<8>(sources, weights, sums),
    }
}

/// [`TILE`] pixels × `V` vectors of 8 output channels: per pair of input channels, each
/// pixel's two bytes are broadcast as 16-bit values and `vpmaddwd` adds their products
/// with each channel's two weights (exact: no 16-bit sum can overflow).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
fn madd<const V: usize>(sources: &Sources<'_>, weights: &Weights, sums: &mut Sums) {
    use std::arch::x86_64::{__m256i, _mm256_add_epi32, _mm256_madd_epi16, _mm256_set1_epi32, _mm256_setzero_si256};
    let pairs = weights.channels / 2;
    let mut acc = [[_mm256_setzero_si256(); V]; TILE];
    let mut w = [_mm256_setzero_si256(); V];
    let mut rows = bytemuck::cast_slice::<i16, u8>(&weights.pairs).chunks_exact(32 * V);
    for t in 0..sources.kernel * sources.kernel {
        let (row, shift) = sources.tap(t);
        for i in (0..2 * pairs).step_by(2) {
            let Some(group) = rows.next() else { return };
            for (w, bytes) in w.iter_mut().zip(group.chunks_exact(32)) {
                *w = bytemuck::pod_read_unaligned::<__m256i>(bytes);
            }
            for (acc, &at) in acc.iter_mut().zip(&sources.at) {
                let a = &row[at + shift + i..][..2];
                let a = _mm256_set1_epi32(i32::from(a[0]) | i32::from(a[1]) << 16);
                for (acc, w) in acc.iter_mut().zip(&w) {
                    *acc = _mm256_add_epi32(*acc, _mm256_madd_epi16(a, *w));
                }
            }
        }
    }
    for (sums, acc) in sums.iter_mut().zip(&acc) {
        for (v, acc) in acc.iter().enumerate() {
            let lanes: [i32; 8] = bytemuck::cast(*acc);
            sums[v * 8..(v + 1) * 8].copy_from_slice(&lanes);
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
fn tile_vnni(sources: &Sources<'_>, weights: &Weights, sums: &mut Sums) {
    match weights.lanes / VECTOR {
        1 => vnni::<1>(sources, weights, sums),
        2 => vnni::<2>(sources, weights, sums),
        3 => vnni::<3>(sources, weights, sums),
        _ => vnni::<4>(sources, weights, sums),
    }
}

/// [`TILE`] pixels × `V` vectors of 16 output channels, summed in registers: per group
/// of four input channels of a tap, each pixel's four bytes are broadcast and
/// `vpdpbusd` adds their products with each output channel's four weights.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[inline]
fn vnni<const V: usize>(sources: &Sources<'_>, weights: &Weights, sums: &mut Sums) {
    use std::arch::x86_64::{__m512i, _mm512_dpbusd_epi32, _mm512_set1_epi32, _mm512_setzero_si512};
    let groups = weights.channels / 4;
    let mut acc = [[_mm512_setzero_si512(); V]; TILE];
    let mut w = [_mm512_setzero_si512(); V];
    let mut rows = bytemuck::cast_slice::<i8, u8>(&weights.bytes).chunks_exact(64 * V);
    for t in 0..sources.kernel * sources.kernel {
        let (row, shift) = sources.tap(t);
        for i in (0..4 * groups).step_by(4) {
            let Some(group) = rows.next() else { return };
            for (w, bytes) in w.iter_mut().zip(group.chunks_exact(64)) {
                *w = bytemuck::pod_read_unaligned::<__m512i>(bytes);
            }
            for (acc, &at) in acc.iter_mut().zip(&sources.at) {
                let a = &row[at + shift + i..][..4];
                let a = _mm512_set1_epi32(i32::from_le_bytes([a[0], a[1], a[2], a[3]]));
                for (acc, w) in acc.iter_mut().zip(&w) {
                    *acc = _mm512_dpbusd_epi32(*acc, a, *w);
                }
            }
        }
    }
    for (sums, acc) in sums.iter_mut().zip(&acc) {
        for (v, acc) in acc.iter().enumerate() {
            let lanes: [i32; VECTOR] = bytemuck::cast(*acc);
            sums[v * VECTOR..(v + 1) * VECTOR].copy_from_slice(&lanes);
        }
    }
}

/// Activations of one frame as bytes, channels-last: `[height, width, channels]`,
/// channel `i` worth `scales[i]` a step.
#[derive(Debug)]
struct Bytes {
    values: Vec<u8>,
    height: usize,
    width: usize,
    channels: usize,
    scales: Vec<f32>,
}

impl Bytes {
    /// A frame's planar RGB bytes channels-last, with a fourth channel of zeros: what
    /// the stem reads ([`QConv::stem`]).
    fn pixels(frame: &FrameView<'_>) -> Bytes {
        let (width, height) = (frame.width, frame.height);
        let plane = width * height;
        let mut values = vec![0u8; 4 * plane];
        values.par_chunks_mut(4 * width).enumerate().for_each(|(y, row)| {
            for (x, pixel) in row.chunks_exact_mut(4).enumerate() {
                let at = y * width + x;
                for (c, value) in pixel[..3].iter_mut().enumerate() {
                    *value = frame.pixels.get(c * plane + at).copied().unwrap_or(0);
                }
            }
        });
        Bytes { values, height, width, channels: 4, scales: vec![1.0; 4] }
    }

    fn to_real(&self) -> Vec<f32> {
        let pixels = self.values.chunks(self.channels);
        pixels.flat_map(|q| q.iter().zip(&self.scales).map(|(&q, s)| f32::from(q) * s)).collect()
    }
}

/// A non-negative value as the byte nearest `x / scale` (`inverse` = 1 / scale), 255 at most.
#[inline(always)]
fn to_byte(x: f32, inverse: f32) -> u8 {
    // Clamped, then rounded to nearest by adding 2^23: the float's last mantissa bits are
    // then the integer. Unlike a saturating `as`, this vectorises.
    ((x * inverse).clamp(0.0, 255.0) + 8_388_608.0).to_bits() as u8
}

/// What a layer's outputs become.
#[derive(Clone, Debug)]
enum Output {
    /// ReLU, then bytes, channel `o` worth `scales[o]` a step (the next layer's input).
    Bytes { scales: Vec<f32> },
    /// Real values, as the head and the box head give them.
    Reals,
}

/// A convolution's real weights (`[outputs][inputs][kernel][kernel]`) and geometry.
#[derive(Debug)]
struct Layer {
    weight: Vec<f32>,
    bias: Vec<f32>,
    inputs: usize,
    outputs: usize,
    kernel: usize,
    stride: usize,
    dilation: usize,
    padding: usize,
}

impl Layer {
    /// `conv`'s geometry with these weights, of `inputs` input channels.
    fn of<B: Backend>(conv: &Conv2d<B>, weight: Vec<f32>, bias: Vec<f32>, inputs: usize) -> Layer {
        let [outputs, _, kernel, _] = conv.weight.dims();
        let dilation = conv.dilation[0];
        let padding = match conv.padding {
            PaddingConfig2d::Explicit(top, ..) => top,
            PaddingConfig2d::Valid => 0,
            PaddingConfig2d::Same => dilation * (kernel - 1) / 2,
        };
        Layer { weight, bias, inputs, outputs, kernel, stride: conv.stride[0], dilation, padding }
    }
}

/// What an integer layer reads: each input channel's step and, for the bias correction,
/// its mean over the calibration frames.
#[derive(Clone, Copy, Debug)]
struct Input<'a> {
    scales: &'a [f32],
    means: Option<&'a [f32]>,
}

/// One convolution on bytes; see the module documentation.
#[derive(Debug)]
struct QConv {
    inputs: usize,
    outputs: usize,
    kernel: usize,
    stride: usize,
    dilation: usize,
    padding: usize,
    weights: Weights,
    /// Per output channel: what one unit of its sum is worth (its weight scale).
    step: Vec<f32>,
    bias: Vec<f32>,
    /// Per tap and output channel: what the output gains for each of its taps outside
    /// the frame (only the stem has any, see [`QConv::stem`]).
    outside: Option<Vec<f32>>,
    output: Output,
}

impl QConv {
    /// The convolution reading bytes worth `input.scales[i]` a step on input channel `i`.
    fn new<B: Backend>(conv: &Conv2d<B>, input: Input<'_>, output: Output) -> Result<QConv, String> {
        let [outputs, inputs, _, _] = conv.weight.dims();
        let real = values(conv.weight.val());
        let bias = conv.bias.as_ref().map(|b| values(b.val())).unwrap_or_else(|| vec![0.0; outputs]);
        QConv::from_real(&Layer::of(conv, real, bias, inputs), input, output)
    }

    /// The first convolution on the frame's bytes themselves, as the network reads them
    /// normalised (`p / 255 − 0.5`, zero padding after it): the pixels, with a fourth
    /// channel of zeros, are the input at a step of 1/255; the −0.5 goes into the bias;
    /// and a tap outside the frame, which the product counts as −0.5 where the network
    /// counts 0, gives its 0.5 × weights back ([`QConv::outside`]).
    fn stem<B: Backend>(conv: &Conv2d<B>, output: Output) -> Result<QConv, String> {
        let [outputs, inputs, kernel, _] = conv.weight.dims();
        let taps = kernel * kernel;
        let real = values(conv.weight.val());
        let mut bias = conv.bias.as_ref().map(|b| values(b.val())).unwrap_or_else(|| vec![0.0; outputs]);
        let mut padded = vec![0f32; outputs * 4 * taps];
        let mut outside = vec![0f32; taps * outputs];
        for o in 0..outputs {
            for i in 0..inputs.min(4) {
                for t in 0..taps {
                    let w = real[(o * inputs + i) * taps + t];
                    padded[(o * 4 + i) * taps + t] = w / 255.0;
                    bias[o] -= 0.5 * w;
                    outside[t * outputs + o] += 0.5 * w;
                }
            }
        }
        let scales = [1.0; 4];
        let mut stem =
            QConv::from_real(&Layer::of(conv, padded, bias, 4), Input { scales: &scales, means: None }, output)?;
        stem.outside = Some(outside);
        Ok(stem)
    }

    fn from_real(layer: &Layer, input: Input<'_>, output: Output) -> Result<QConv, String> {
        let Layer { inputs, outputs, kernel, .. } = *layer;
        let input_scales = input.scales;
        if input_scales.len() != inputs || input.means.is_some_and(|m| m.len() != inputs) {
            return Err(format!("{} input scales for a layer of {inputs} input channels", input_scales.len()));
        }
        if outputs > MAX_OUTPUTS || !inputs.is_multiple_of(4) || kernel * kernel > MAX_TAPS {
            return Err(format!(
                "a {kernel}×{kernel} layer of {inputs} → {outputs} channels: the int8 path takes at most \
                 {MAX_OUTPUTS} outputs, inputs in multiples of 4, kernels up to 3×3"
            ));
        }
        // The input scales folded into the weights: `[o][i][ky][kx]`.
        let mut real = layer.weight.clone();
        for (at, w) in real.iter_mut().enumerate() {
            *w *= input_scales[at / (kernel * kernel) % inputs];
        }
        let mut bias = layer.bias.clone();
        let depth = kernel * kernel * inputs;
        let mut quantised = vec![0i8; depth * outputs];
        let mut step = vec![0f32; outputs];
        for o in 0..outputs {
            let of = |i: usize, ky: usize, kx: usize| real[((o * inputs + i) * kernel + ky) * kernel + kx];
            let largest = real[o * inputs * kernel * kernel..(o + 1) * inputs * kernel * kernel]
                .iter()
                .fold(0f32, |m, w| m.max(w.abs()));
            let scale = if largest > 0.0 { largest / 127.0 } else { 1.0 };
            step[o] = scale;
            // The mean error of this output's sum (in the bytes' units, the input's mean
            // over its scale), taken out of its bias.
            let mut error = 0.0;
            for ky in 0..kernel {
                for kx in 0..kernel {
                    for i in 0..inputs {
                        let k = (ky * kernel + kx) * inputs + i;
                        let q = (of(i, ky, kx) / scale).round().clamp(-127.0, 127.0) as i8;
                        quantised[k * outputs + o] = q;
                        if let Some(means) = input.means {
                            error += (f32::from(q) * scale - of(i, ky, kx)) * means[i] / input_scales[i];
                        }
                    }
                }
            }
            bias[o] -= error;
        }
        Ok(QConv {
            inputs,
            outputs,
            kernel,
            stride: layer.stride,
            dilation: layer.dilation,
            padding: layer.padding,
            weights: Weights::new(depth, inputs, outputs, |k, o| quantised[k * outputs + o]),
            step,
            bias,
            outside: None,
            output,
        })
    }

    /// The layer on `x`: each output pixel's sums, with its real values' steps and biases,
    /// written by `finish` into its place in the output.
    fn run<T: Copy + Default + Send>(
        &self,
        x: &Bytes,
        kernel: Int8Kernel,
        finish: impl Fn(&[i32], &[f32], &mut [T]) + Sync,
    ) -> (Vec<T>, usize, usize) {
        assert_eq!(x.channels, self.inputs);
        let span = self.dilation * (self.kernel - 1) + 1;
        let out_h = (x.height + 2 * self.padding - span) / self.stride + 1;
        let out_w = (x.width + 2 * self.padding - span) / self.stride + 1;
        let (c, k, taps, outputs) = (x.channels, self.kernel, self.kernel * self.kernel, self.outputs);
        let no_extra = vec![0f32; outputs];
        // Input rows padded with zeros on both sides, as the taps read them.
        let padded = (x.width + 2 * self.padding) * c;
        let mut out = vec![T::default(); out_h * out_w * outputs];
        out.par_chunks_mut(out_w * outputs).enumerate().for_each_init(Vec::new, |buffer: &mut Vec<u8>, (oy, row)| {
            // Compiled again for AVX2 (chosen at run time): the epilogue and the bytes'
            // conversion then vectorise 8 wide.
            let mut body = || {
                buffer.clear();
                buffer.resize(k * padded, 0);
                for (ky, to) in buffer.chunks_exact_mut(padded).enumerate() {
                    let iy =
                        (oy * self.stride + ky * self.dilation).checked_sub(self.padding).filter(|&y| y < x.height);
                    if let Some(iy) = iy {
                        to[self.padding * c..][..x.width * c]
                            .copy_from_slice(&x.values[iy * x.width * c..][..x.width * c]);
                    }
                }
                let mut rows = [&buffer[..0]; 3];
                for (row, from) in rows.iter_mut().zip(buffer.chunks_exact(padded)) {
                    *row = from;
                }
                let mut sources = Sources { rows, at: [0; TILE], kernel: k, step: self.dilation * c };
                let mut sums: Sums = [[0; MAX_OUTPUTS]; TILE];
                let mut extra = [0f32; MAX_OUTPUTS];
                for x0 in (0..out_w).step_by(TILE) {
                    let pixels = TILE.min(out_w - x0);
                    for (p, at) in sources.at.iter_mut().enumerate() {
                        // Pixels past the row's end read its last pixel's taps, and are not kept.
                        *at = (x0 + p.min(pixels - 1)) * self.stride * c;
                    }
                    kernel.tile(&sources, &self.weights, &mut sums);
                    for (p, sums) in sums.iter().enumerate().take(pixels) {
                        let extra = match &self.outside {
                            Some(gains) => match self.outside_taps(oy, x0 + p, x.height, x.width) {
                                0 => &no_extra,
                                outside => {
                                    extra.fill(0.0);
                                    for t in (0..taps).filter(|t| outside & 1 << t != 0) {
                                        let gains = &gains[t * outputs..(t + 1) * outputs];
                                        extra.iter_mut().zip(gains).for_each(|(e, g)| *e += g);
                                    }
                                    &extra[..outputs]
                                }
                            },
                            None => &no_extra,
                        };
                        finish(&sums[..outputs], extra, &mut row[(x0 + p) * outputs..][..outputs]);
                    }
                }
            };
            #[cfg(target_arch = "x86_64")]
            if let Some(simd) = pulp::x86::V3::try_new() {
                return simd.vectorize(body);
            }
            body()
        });
        (out, out_h, out_w)
    }

    /// The taps of output pixel `(oy, ox)` outside a `height`×`width` input, one bit each.
    fn outside_taps(&self, oy: usize, ox: usize, height: usize, width: usize) -> u16 {
        let (k, span) = (self.kernel, self.dilation * (self.kernel - 1));
        let within =
            |o: usize, size: usize| o * self.stride >= self.padding && o * self.stride + span < size + self.padding;
        if within(oy, height) && within(ox, width) {
            return 0;
        }
        let inside = |o: usize, d: usize, size: usize| {
            (o * self.stride + d * self.dilation).checked_sub(self.padding).is_some_and(|v| v < size)
        };
        (0..k * k).filter(|t| !(inside(oy, t / k, height) && inside(ox, t % k, width))).fold(0, |m, t| m | 1 << t)
    }

    fn to_bytes(&self, x: &Bytes, kernel: Int8Kernel) -> Bytes {
        let Output::Bytes { scales } = &self.output else { unreachable!("a layer of reals feeds no integer layer") };
        let inverses: Vec<f32> = scales.iter().map(|s| 1.0 / s).collect();
        let (values, height, width) = self.run(x, kernel, |sums, extra, out| {
            let real = (sums.iter().zip(extra))
                .zip(self.step.iter().zip(&self.bias))
                .map(|((&s, extra), (step, bias))| s as f32 * step + bias + extra);
            out.iter_mut().zip(real).zip(&inverses).for_each(|((q, v), inverse)| *q = to_byte(v, *inverse));
        });
        Bytes { values, height, width, channels: self.outputs, scales: scales.clone() }
    }

    fn to_reals(&self, x: &Bytes, kernel: Int8Kernel) -> Activations {
        let (values, height, width) = self.run(x, kernel, |sums, extra, out| {
            let real = (sums.iter().zip(extra))
                .zip(self.step.iter().zip(&self.bias))
                .map(|((&s, extra), (step, bias))| s as f32 * step + bias + extra);
            out.iter_mut().zip(real).for_each(|(v, real)| *v = real);
        });
        Activations { values, height, width, channels: self.outputs }
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
        let scales = &calibration.activation_scales;
        let expected = 6 + usize::from(net.boxes.is_some());
        let positive = scales.iter().flatten().all(|s| s.is_finite() && *s > 0.0);
        if scales.len() != expected || !positive {
            return Err(format!(
                "int8.activation_scales: {expected} layers of positive scales expected (one per ReLU layer), found {} ({})",
                scales.len(),
                if positive { "all positive" } else { "not all positive" }
            ));
        }
        let bytes = |i: usize| Output::Bytes { scales: scales[i].clone() };
        let means = &calibration.activation_means;
        if !(means.is_empty() || means.iter().map(Vec::len).eq(scales.iter().map(Vec::len))) {
            return Err("int8.activation_means: not laid out as int8.activation_scales".into());
        }
        let input = |i: usize| Input { scales: &scales[i], means: means.get(i).map(Vec::as_slice) };
        let layers = [&net.mid, &net.cell, &net.local, &net.context, &net.wide];
        let body = (layers.iter().enumerate())
            .map(|(i, conv)| QConv::new(conv, input(i), bytes(i + 1)))
            .collect::<Result<Vec<_>, _>>()?;
        for (i, conv) in body.iter().enumerate() {
            if scales[i + 1].len() != conv.outputs {
                return Err(format!(
                    "int8.activation_scales[{}]: {} channels, not {}",
                    i + 1,
                    scales[i + 1].len(),
                    conv.outputs
                ));
            }
        }
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
                Granularity::Layer => vec![best_scale(&channels.concat()); channels.len()],
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
    fn every_kernel_sums_exactly_as_the_definition() {
        let (taps, channels, outputs) = (9, 8, 40);
        // The extremes included (255 × ±127), where a 16-bit sum of two would overflow.
        let bytes: Vec<u8> =
            (0..3 * (TILE + 2) * channels).map(|i| if i % 5 == 0 { 255 } else { (i * 97 % 256) as u8 }).collect();
        let weight = |k: usize, o: usize| -> i8 {
            match (k + o) % 7 {
                0 => 127,
                1 => -127,
                _ => ((k * 31 + o * 17) % 255) as i8,
            }
        };
        let weights = Weights::new(taps * channels, channels, outputs, weight);
        // Three rows of TILE + 2 pixels; pixel p's taps start at pixel p of each.
        let width = (TILE + 2) * channels;
        let rows = [&bytes[..width], &bytes[width..2 * width], &bytes[2 * width..3 * width]];
        let sources = Sources { rows, at: std::array::from_fn(|p| p * channels), kernel: 3, step: channels };
        let mut expected: Sums = [[0; MAX_OUTPUTS]; TILE];
        for (p, row) in expected.iter_mut().enumerate() {
            for (o, sum) in row[..outputs].iter_mut().enumerate() {
                *sum = (0..taps * channels)
                    .map(|k| {
                        let (t, i) = (k / channels, k % channels);
                        i32::from(rows[t / 3][(p + t % 3) * channels + i]) * i32::from(weight(k, o))
                    })
                    .sum();
            }
        }
        assert!(expected[0][..outputs].iter().any(|&s| s < -10_000) && expected[0].iter().any(|&s| s > 10_000));
        for kernel in [Int8Kernel::Vnni512, Int8Kernel::Avx2, Int8Kernel::Portable] {
            if kernel.available() {
                // Whatever a tile before left there.
                let mut sums: Sums = [[-1; MAX_OUTPUTS]; TILE];
                kernel.tile(&sources, &weights, &mut sums);
                for (found, expected) in sums.iter().zip(&expected) {
                    assert_eq!(found[..outputs], expected[..outputs], "{}", kernel.name());
                }
            }
        }
    }

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
