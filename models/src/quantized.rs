//! The defect network in 8-bit integers on the CPU.
//!
//! Every layer after the stem reads its input as unsigned bytes and its weights as
//! signed bytes, sums their products in 32-bit integers and turns the sum back into a
//! real value with one multiply per output channel:
//!
//! - **Weights:** symmetric, per output channel: `w ≈ q × s_w[o]`, `q` in −127..=127,
//!   `s_w[o]` the channel's largest magnitude over 127. They need no data.
//! - **Activations:** every input of an integer layer follows a ReLU, so it is never
//!   negative: `x ≈ q × s`, `q` in 0..=255, one scale `s` per layer, with zero exactly
//!   zero (the convolutions' zero padding stays exact). The scales are calibrated on
//!   frames of the training data ([`calibrate`]) and saved in the model card.
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

use std::sync::Mutex;

use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2d;
use burn::tensor::backend::Backend;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::inference::{CellScores, FrameView, values};
use crate::metrics::EvalReport;
use crate::model::DefectNet;
use crate::packed::{Activations, Buffers, PackedNet, Stem, cell_scores, lock, stem_direct};

/// Output pixels one tile of the product computes together.
const TILE: usize = 4;
/// Output channels one vector of sums holds (512 bits of `i32`).
const VECTOR: usize = 16;
/// Most output channels a layer may have on the int8 path (four vectors).
pub const MAX_OUTPUTS: usize = 4 * VECTOR;

/// The activation scales of a model's int8 path and how they were found; saved in the
/// model card (`int8`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Int8Calibration {
    /// What one step of each quantised activation is worth, in the order the network
    /// computes them: stem, mid, cell, local, context, wide, then the box head's hidden
    /// layer.
    pub activation_scales: Vec<f32>,
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

    /// The sums of one tile: `sums[p][o] = Σ_k columns[p × depth + k] × w[k][o]`, the
    /// weights packed as `[depth / 4][lanes][4]`.
    #[allow(unsafe_code)]
    fn tile(self, columns: &[u8], depth: usize, weight: &[i8], lanes: usize, sums: &mut [[i32; MAX_OUTPUTS]; TILE]) {
        assert!(columns.len() >= TILE * depth && weight.len() == depth * lanes && depth % 4 == 0);
        assert!(lanes % VECTOR == 0 && lanes <= MAX_OUTPUTS);
        match self {
            // SAFETY: the kernels need only their target features, which this CPU has: a
            // kernel is chosen or set only where `available` says so.
            #[cfg(target_arch = "x86_64")]
            Int8Kernel::Vnni512 => unsafe { tile_vnni(columns, depth, weight, lanes, sums) },
            #[cfg(target_arch = "x86_64")]
            Int8Kernel::Avx2 => unsafe { tile_avx2(columns, depth, weight, lanes, sums) },
            _ => tile_portable(columns, depth, weight, lanes, sums),
        }
    }
}

#[inline(always)]
fn tile_portable(columns: &[u8], depth: usize, weight: &[i8], lanes: usize, sums: &mut [[i32; MAX_OUTPUTS]; TILE]) {
    for (g, w) in weight.chunks_exact(4 * lanes).enumerate() {
        for (p, sums) in sums.iter_mut().enumerate() {
            let a = &columns[p * depth + 4 * g..][..4];
            let (a0, a1, a2, a3) = (i32::from(a[0]), i32::from(a[1]), i32::from(a[2]), i32::from(a[3]));
            for (sum, w) in sums[..lanes].iter_mut().zip(w.chunks_exact(4)) {
                *sum += a0 * i32::from(w[0]) + a1 * i32::from(w[1]) + a2 * i32::from(w[2]) + a3 * i32::from(w[3]);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn tile_avx2(columns: &[u8], depth: usize, weight: &[i8], lanes: usize, sums: &mut [[i32; MAX_OUTPUTS]; TILE]) {
    tile_portable(columns, depth, weight, lanes, sums);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
fn tile_vnni(columns: &[u8], depth: usize, weight: &[i8], lanes: usize, sums: &mut [[i32; MAX_OUTPUTS]; TILE]) {
    match lanes / VECTOR {
        1 => vnni::<1>(columns, depth, weight, sums),
        2 => vnni::<2>(columns, depth, weight, sums),
        3 => vnni::<3>(columns, depth, weight, sums),
        _ => vnni::<4>(columns, depth, weight, sums),
    }
}

/// [`TILE`] pixels × `V` vectors of 16 output channels, summed in registers: per group
/// of four depth rows, each pixel's four bytes are broadcast and `vpdpbusd` adds their
/// products with each channel's four weights.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[inline]
fn vnni<const V: usize>(columns: &[u8], depth: usize, weight: &[i8], sums: &mut [[i32; MAX_OUTPUTS]; TILE]) {
    use std::arch::x86_64::{_mm512_dpbusd_epi32, _mm512_set1_epi32, _mm512_setzero_si512};
    let weight: &[u8] = bytemuck::cast_slice(weight);
    let mut acc = [[_mm512_setzero_si512(); V]; TILE];
    let mut w = [_mm512_setzero_si512(); V];
    for (g, group) in weight.chunks_exact(4 * V * VECTOR).enumerate() {
        for (w, bytes) in w.iter_mut().zip(group.chunks_exact(4 * VECTOR)) {
            *w = bytemuck::pod_read_unaligned(bytes);
        }
        for (p, acc) in acc.iter_mut().enumerate() {
            let a = &columns[p * depth + 4 * g..][..4];
            let a = _mm512_set1_epi32(i32::from_le_bytes([a[0], a[1], a[2], a[3]]));
            for (acc, w) in acc.iter_mut().zip(&w) {
                *acc = _mm512_dpbusd_epi32(*acc, a, *w);
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

/// Activations of one frame as bytes, channels-last: `[height, width, channels]`, each
/// worth `scale` a step.
#[derive(Debug)]
struct Bytes {
    values: Vec<u8>,
    height: usize,
    width: usize,
    channels: usize,
    scale: f32,
}

impl Bytes {
    fn quantise(x: &Activations, scale: f32) -> Bytes {
        let mut values = vec![0u8; x.values.len()];
        values.par_chunks_mut(1 << 14).zip(x.values.par_chunks(1 << 14)).for_each(|(q, x)| {
            q.iter_mut().zip(x).for_each(|(q, x)| *q = to_byte(*x, 1.0 / scale));
        });
        Bytes { values, height: x.height, width: x.width, channels: x.channels, scale }
    }

    fn to_real(&self) -> Vec<f32> {
        self.values.iter().map(|&q| f32::from(q) * self.scale).collect()
    }
}

/// A non-negative value as the byte nearest `x / scale` (`inverse` = 1 / scale), 255 at most.
#[inline(always)]
fn to_byte(x: f32, inverse: f32) -> u8 {
    // `as` saturates: negatives to 0, past 255 to 255.
    (x * inverse + 0.5) as u8
}

/// What a layer's outputs become.
#[derive(Clone, Copy, Debug)]
enum Output {
    /// ReLU, then bytes worth `scale` a step (the next layer's input).
    Bytes { scale: f32 },
    /// Real values, as the head and the box head give them.
    Reals,
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
    /// `kernel² × inputs`, rounded up to a multiple of 4 (with zero weights).
    depth: usize,
    /// `outputs`, rounded up to a multiple of [`VECTOR`] (with zero weights).
    lanes: usize,
    /// `[depth / 4][lanes][4]`, rows of the depth in (ky, kx, input) order.
    weight: Vec<i8>,
    /// Per output channel: what one unit of its sum is worth (input scale × weight scale).
    step: Vec<f32>,
    bias: Vec<f32>,
    output: Output,
}

impl QConv {
    fn new<B: Backend>(conv: &Conv2d<B>, input_scale: f32, output: Output) -> Result<QConv, String> {
        let [outputs, inputs, kernel, _] = conv.weight.dims();
        if outputs > MAX_OUTPUTS {
            return Err(format!("a layer has {outputs} output channels, the int8 path at most {MAX_OUTPUTS}"));
        }
        let dilation = conv.dilation[0];
        let padding = match conv.padding {
            PaddingConfig2d::Explicit(top, ..) => top,
            PaddingConfig2d::Valid => 0,
            PaddingConfig2d::Same => dilation * (kernel - 1) / 2,
        };
        let real = values(conv.weight.val());
        let bias = conv.bias.as_ref().map(|b| values(b.val())).unwrap_or_else(|| vec![0.0; outputs]);
        let (depth, lanes) = ((kernel * kernel * inputs).next_multiple_of(4), outputs.next_multiple_of(VECTOR));
        let mut weight = vec![0i8; depth * lanes];
        let mut step = vec![0f32; outputs];
        for o in 0..outputs {
            let of = |i: usize, ky: usize, kx: usize| real[((o * inputs + i) * kernel + ky) * kernel + kx];
            let largest = real[o * inputs * kernel * kernel..(o + 1) * inputs * kernel * kernel]
                .iter()
                .fold(0f32, |m, w| m.max(w.abs()));
            let scale = if largest > 0.0 { largest / 127.0 } else { 1.0 };
            step[o] = input_scale * scale;
            for ky in 0..kernel {
                for kx in 0..kernel {
                    for i in 0..inputs {
                        let k = (ky * kernel + kx) * inputs + i;
                        let q = (of(i, ky, kx) / scale).round().clamp(-127.0, 127.0) as i8;
                        weight[(k / 4 * lanes + o) * 4 + k % 4] = q;
                    }
                }
            }
        }
        Ok(QConv {
            inputs,
            outputs,
            kernel,
            stride: conv.stride[0],
            dilation,
            padding,
            depth,
            lanes,
            weight,
            step,
            bias,
            output,
        })
    }

    /// The layer on `x`, each output value as `store` keeps it.
    fn run<T: Copy + Default + Send>(
        &self,
        x: &Bytes,
        kernel: Int8Kernel,
        store: impl Fn(f32) -> T + Sync,
    ) -> (Vec<T>, usize, usize) {
        assert_eq!(x.channels, self.inputs);
        let span = self.dilation * (self.kernel - 1) + 1;
        let out_h = (x.height + 2 * self.padding - span) / self.stride + 1;
        let out_w = (x.width + 2 * self.padding - span) / self.stride + 1;
        let (depth, c, k) = (self.depth, x.channels, self.kernel);
        let mut out = vec![T::default(); out_h * out_w * self.outputs];
        out.par_chunks_mut(out_w * self.outputs).enumerate().for_each_init(Vec::new, |columns, (oy, row)| {
            // im2col of this output row, whole tiles (pixels past the row are zeros).
            columns.clear();
            columns.resize(out_w.next_multiple_of(TILE) * depth, 0u8);
            for (ox, column) in columns.chunks_mut(depth).take(out_w).enumerate() {
                for ky in 0..k {
                    let iy = (oy * self.stride + ky * self.dilation).checked_sub(self.padding);
                    let Some(iy) = iy.filter(|&y| y < x.height) else { continue };
                    for kx in 0..k {
                        let ix = (ox * self.stride + kx * self.dilation).checked_sub(self.padding);
                        if let Some(ix) = ix.filter(|&v| v < x.width) {
                            let from = (iy * x.width + ix) * c;
                            column[(ky * k + kx) * c..][..c].copy_from_slice(&x.values[from..from + c]);
                        }
                    }
                }
            }
            let mut sums = [[0i32; MAX_OUTPUTS]; TILE];
            for (t, tile) in columns.chunks(TILE * depth).enumerate() {
                sums.iter_mut().for_each(|s| s.fill(0));
                kernel.tile(tile, depth, &self.weight, self.lanes, &mut sums);
                for (p, sums) in sums.iter().enumerate().take(TILE.min(out_w - t * TILE)) {
                    let at = &mut row[(t * TILE + p) * self.outputs..][..self.outputs];
                    for (o, value) in at.iter_mut().enumerate() {
                        *value = store(sums[o] as f32 * self.step[o] + self.bias[o]);
                    }
                }
            }
        });
        (out, out_h, out_w)
    }

    fn to_bytes(&self, x: &Bytes, kernel: Int8Kernel) -> Bytes {
        let Output::Bytes { scale } = self.output else { unreachable!("a layer of reals feeds no integer layer") };
        let inverse = 1.0 / scale;
        let (values, height, width) = self.run(x, kernel, |v| to_byte(v, inverse));
        Bytes { values, height, width, channels: self.outputs, scale }
    }

    fn to_reals(&self, x: &Bytes, kernel: Int8Kernel) -> Activations {
        let (values, height, width) = self.run(x, kernel, |v| v);
        Activations { values, height, width, channels: self.outputs }
    }
}

/// A [`DefectNet`] on the int8 path: see the module documentation.
#[derive(Debug)]
pub struct QuantNet {
    stem: Stem,
    stem_scale: f32,
    /// mid, cell, local, context, wide.
    body: Vec<QConv>,
    head: QConv,
    boxes: Option<(QConv, QConv)>,
    kernel: Int8Kernel,
    buffers: Mutex<Buffers>,
}

impl QuantNet {
    /// `net` quantised with `calibration`'s activation scales, on the fastest kernel
    /// this CPU has. Fails, saying why, where the calibration does not fit the network.
    pub fn new<B: Backend>(net: &DefectNet<B>, calibration: &Int8Calibration) -> Result<QuantNet, String> {
        let scales = &calibration.activation_scales;
        let expected = 6 + usize::from(net.boxes.is_some());
        if scales.len() != expected || scales.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
            return Err(format!(
                "int8.activation_scales: {} positive scales expected (one per ReLU layer), found {scales:?}",
                expected
            ));
        }
        let layers = [&net.mid, &net.cell, &net.local, &net.context, &net.wide];
        let body = (layers.iter().enumerate())
            .map(|(i, conv)| QConv::new(conv, scales[i], Output::Bytes { scale: scales[i + 1] }))
            .collect::<Result<_, _>>()?;
        let head = QConv::new(&net.head, scales[5], Output::Reals)?;
        let boxes = match &net.boxes {
            Some(b) => Some((
                QConv::new(&b.hidden, scales[5], Output::Bytes { scale: scales[6] })?,
                QConv::new(&b.out, scales[6], Output::Reals)?,
            )),
            None => None,
        };
        Ok(QuantNet {
            stem: Stem::new(&net.stem),
            stem_scale: scales[0],
            body,
            head,
            boxes,
            kernel: Int8Kernel::detect(),
            buffers: Mutex::default(),
        })
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
        let stem = stem_direct(frame, &self.stem, &self.buffers);
        let mut x = Bytes::quantise(&stem, self.stem_scale);
        lock(&self.buffers).give(stem.values);
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

/// Activation scales for the int8 path, measured on `frames` with the fp32 network.
///
/// For each ReLU layer the scale is the one that minimises the mean squared error of
/// quantising that layer's outputs over these frames: clipping the few largest values
/// buys a finer step for all the others. The candidates are the largest value times
/// 0.95^k (k < 48).
pub fn calibrate(net: &PackedNet, frames: &[FrameView<'_>]) -> Vec<f32> {
    let mut layers: Vec<Vec<f32>> = Vec::new();
    for frame in frames {
        for (i, outputs) in net.relu_outputs(frame).into_iter().enumerate() {
            if layers.len() <= i {
                layers.push(Vec::new());
            }
            // At most about 2^20 values per layer and frame, evenly spaced.
            // An odd step, so that every channel is sampled.
            let every = (outputs.len() >> 20) | 1;
            layers[i].extend(outputs.iter().step_by(every).copied());
        }
    }
    layers.par_iter().map(|values| best_scale(values)).collect()
}

/// The step with the least squared error over `values` (see [`calibrate`]).
fn best_scale(values: &[f32]) -> f32 {
    let largest = values.iter().copied().fold(0f32, f32::max);
    if largest <= 0.0 {
        return 1.0;
    }
    let error = |scale: f32| -> f64 {
        let inverse = 1.0 / scale;
        values.iter().map(|&x| f64::from(x - f32::from(to_byte(x, inverse)) * scale).powi(2)).sum()
    };
    (0..48)
        .map(|k| largest * 0.95f32.powi(k) / 255.0)
        .map(|scale| (scale, error(scale)))
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .map_or(largest / 255.0, |(scale, _)| scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kernel_sums_exactly_as_the_definition() {
        let (depth, lanes) = (36, 48);
        let columns: Vec<u8> = (0..TILE * depth).map(|i| (i * 97 % 256) as u8).collect();
        let weight: Vec<i8> = (0..depth * lanes).map(|i| ((i * 31 % 255) as i32 - 127) as i8).collect();
        let mut expected = [[0i32; MAX_OUTPUTS]; TILE];
        for (p, row) in expected.iter_mut().enumerate() {
            for (o, sum) in row[..lanes].iter_mut().enumerate() {
                *sum = (0..depth)
                    .map(|k| i32::from(columns[p * depth + k]) * i32::from(weight[(k / 4 * lanes + o) * 4 + k % 4]))
                    .sum();
            }
        }
        assert!(expected[0][..lanes].iter().any(|&s| s < -10_000) && expected[0].iter().any(|&s| s > 10_000));
        for kernel in [Int8Kernel::Vnni512, Int8Kernel::Avx2, Int8Kernel::Portable] {
            if kernel.available() {
                let mut sums = [[0i32; MAX_OUTPUTS]; TILE];
                kernel.tile(&columns, depth, &weight, lanes, &mut sums);
                assert_eq!(sums, expected, "{}", kernel.name());
            }
        }
    }

    #[test]
    fn a_long_tail_is_clipped_and_a_short_one_kept() {
        // Exponentially distributed, as ReLU outputs often are: the few largest values
        // are clipped for a finer step for all the others.
        let tail: Vec<f32> = (1..100_000).map(|i| -(i as f32 / 100_000.0).ln()).collect();
        let largest = tail.iter().copied().fold(0f32, f32::max);
        let scale = best_scale(&tail);
        assert!(scale * 255.0 < 0.99 * largest && scale * 255.0 > 0.5 * largest, "{scale} of {largest}");
        // Evenly spread up to 2: nothing to gain from clipping.
        let even: Vec<f32> = (0..100_000).map(|i| i as f32 / 50_000.0).collect();
        assert!((best_scale(&even) * 255.0 - 2.0).abs() < 0.01);
        assert_eq!(best_scale(&[0.0, 0.0]), 1.0);
    }
}
