//! The defect network laid out for inference on the CPU backend.
//!
//! burn's general convolution converts its input to channels-last, builds an im2col
//! tile by tile and converts the result back, for every layer. Here activations stay
//! channels-last (`[pixels, channels]`, pixels row-major) from the first layer to the
//! heads, so each convolution is one im2col and one matrix product on the backend
//! (burn Flex's gemm, over all cores), with the bias folded into the product as one
//! more input column of ones. The first convolution, with three input channels, is a
//! direct kernel on the frame bytes with the input normalisation fused
//! ([`stem_direct`]). Weights are packed once, when the model is loaded, and the large
//! buffers are reused from frame to frame.
//!
//! The results equal the tensor path ([`crate::inference::score_batch`]) to rounding;
//! the model tests compare them.

use std::sync::Mutex;

use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2d;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use rayon::prelude::*;

use crate::detector::CpuBackend;
use crate::inference::{Appearance, CellScores, FrameView, values};
use crate::model::{BOX_OUTPUTS, DefectNet};

type CpuDevice = burn::tensor::Device<CpuBackend>;

/// A [`DefectNet`] packed for the CPU: see the module documentation.
#[derive(Debug)]
pub struct PackedNet {
    stem: Stem,
    body: Vec<PackedConv>,
    head: PackedConv,
    boxes: Option<(PackedConv, PackedConv)>,
    device: CpuDevice,
    /// Buffers kept from the last frame (see [`Buffers`]).
    buffers: Mutex<Buffers>,
}

/// The large per-frame buffers (the stem's input rows, the im2col matrices) kept for
/// the next frame; the allocator would otherwise hand them back to the kernel and
/// fault them in again, which costs about as much as the work done in them.
#[derive(Debug, Default)]
struct Buffers(Vec<Vec<f32>>);

impl Buffers {
    /// A buffer of `len` values whose contents are unspecified: its user writes all of
    /// them. The smallest kept buffer that holds `len` values without growing, if any.
    fn take(&mut self, len: usize) -> Vec<f32> {
        let fitting = (self.0.iter().enumerate())
            .filter(|(_, b)| b.capacity() >= len)
            .min_by_key(|(_, b)| b.capacity())
            .map(|(i, _)| i);
        let Some(i) = fitting else { return vec![0.0; len] };
        let mut buffer = self.0.swap_remove(i);
        buffer.truncate(len);
        buffer.resize(len, 0.0);
        buffer
    }

    fn give(&mut self, buffer: Vec<f32>) {
        // A frame uses a handful; more would only be kept for nothing.
        if self.0.len() < 8 {
            self.0.push(buffer);
        }
    }
}

/// The first convolution's weights as [`stem_direct`] reads them: groups of
/// [`LANES`] output channels, each `[TAPS]` vectors of [`LANES`] weights.
#[derive(Debug)]
struct Stem {
    weight: Vec<[f32; LANES]>,
    bias: Vec<[f32; LANES]>,
    channels: usize,
}

/// One convolution as an im2col matrix product: `[pixels, taps × inputs + 1]` ×
/// `[taps × inputs + 1, outputs]`, the last row of the weights being the bias.
#[derive(Debug)]
struct PackedConv {
    inputs: usize,
    outputs: usize,
    kernel: usize,
    stride: usize,
    dilation: usize,
    padding: usize,
    relu: bool,
    /// `[kernel × kernel × inputs + 1, outputs]`, rows in (ky, kx, input) order.
    weight: Tensor<CpuBackend, 2>,
}

/// Activations of one frame, channels-last: `[height, width, channels]`.
#[derive(Debug)]
pub(crate) struct Activations {
    pub(crate) values: Vec<f32>,
    pub(crate) height: usize,
    pub(crate) width: usize,
    pub(crate) channels: usize,
}

impl PackedConv {
    fn new<B: Backend>(conv: &Conv2d<B>, relu: bool, device: &CpuDevice) -> PackedConv {
        let [outputs, inputs, kernel, _] = conv.weight.dims();
        let (dilation, padding) = (conv.dilation[0], padding_of(conv));
        let weight = values(conv.weight.val());
        let bias = conv.bias.as_ref().map(|b| values(b.val())).unwrap_or_else(|| vec![0.0; outputs]);
        let rows = kernel * kernel * inputs + 1;
        let mut packed = vec![0f32; rows * outputs];
        for o in 0..outputs {
            for i in 0..inputs {
                for ky in 0..kernel {
                    for kx in 0..kernel {
                        let row = (ky * kernel + kx) * inputs + i;
                        packed[row * outputs + o] = weight[((o * inputs + i) * kernel + ky) * kernel + kx];
                    }
                }
            }
            packed[(rows - 1) * outputs + o] = bias[o];
        }
        PackedConv {
            inputs,
            outputs,
            kernel,
            stride: conv.stride[0],
            dilation,
            padding,
            relu,
            weight: Tensor::from_data(TensorData::new(packed, [rows, outputs]), device),
        }
    }

    fn forward(&self, x: &Activations, device: &CpuDevice, buffers: &Mutex<Buffers>) -> Activations {
        let span = self.dilation * (self.kernel - 1) + 1;
        let out_h = (x.height + 2 * self.padding - span) / self.stride + 1;
        let out_w = (x.width + 2 * self.padding - span) / self.stride + 1;
        let depth = self.kernel * self.kernel * self.inputs + 1;
        // im2col: one row per output pixel, the input channels of each tap side by side
        // (zeros outside the frame), then a 1 for the bias.
        let mut columns = lock(buffers).take(out_h * out_w * depth);
        let (c, k) = (x.channels, self.kernel);
        columns.par_chunks_mut(out_w * depth).enumerate().for_each(|(oy, row)| {
            for (ox, column) in row.chunks_mut(depth).enumerate() {
                for ky in 0..k {
                    let iy = (oy * self.stride + ky * self.dilation).checked_sub(self.padding);
                    let iy = iy.filter(|&y| y < x.height);
                    for kx in 0..k {
                        let ix = (ox * self.stride + kx * self.dilation).checked_sub(self.padding);
                        let to = &mut column[(ky * k + kx) * c..][..c];
                        match (iy, ix.filter(|&v| v < x.width)) {
                            (Some(iy), Some(ix)) => {
                                let from = (iy * x.width + ix) * c;
                                to.copy_from_slice(&x.values[from..from + c]);
                            }
                            _ => to.fill(0.0),
                        }
                    }
                }
                column[depth - 1] = 1.0;
            }
        });
        let columns = Tensor::<CpuBackend, 2>::from_data(TensorData::new(columns, [out_h * out_w, depth]), device);
        let mut out = values(columns.clone().matmul(self.weight.clone()));
        // The product has let go of the columns: their buffer comes back without a copy.
        if let Ok(columns) = columns.into_data().into_vec::<f32>() {
            lock(buffers).give(columns);
        }
        if self.relu {
            out.par_chunks_mut(1 << 14).for_each(|chunk| chunk.iter_mut().for_each(|v| *v = v.max(0.0)));
        }
        Activations { values: out, height: out_h, width: out_w, channels: self.outputs }
    }
}

/// The zero padding on each side of `conv`'s input (the same on every side).
pub(crate) fn padding_of<B: Backend>(conv: &Conv2d<B>) -> usize {
    let (kernel, dilation) = (conv.weight.dims()[2], conv.dilation[0]);
    match conv.padding {
        PaddingConfig2d::Explicit(top, ..) => top,
        PaddingConfig2d::Valid => 0,
        PaddingConfig2d::Same => dilation * (kernel - 1) / 2,
    }
}

/// The buffers, even after a panic elsewhere poisoned the lock (they hold no invariant).
fn lock(buffers: &Mutex<Buffers>) -> std::sync::MutexGuard<'_, Buffers> {
    buffers.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl PackedNet {
    /// Packs `net`'s weights (read from whichever backend holds them).
    pub fn new<B: Backend>(net: &DefectNet<B>) -> PackedNet {
        let device = CpuDevice::default();
        let stem = Stem::new(&net.stem);
        let body = [&net.mid, &net.cell, &net.local, &net.context, &net.wide]
            .into_iter()
            .map(|conv| PackedConv::new(conv, true, &device))
            .collect();
        let head = PackedConv::new(&net.head, false, &device);
        let boxes = net
            .boxes
            .as_ref()
            .map(|b| (PackedConv::new(&b.hidden, true, &device), PackedConv::new(&b.out, false, &device)));
        PackedNet { stem, body, head, boxes, device, buffers: Mutex::default() }
    }

    /// Cell probabilities (and boxes) of frames, as [`crate::inference::score_batch`]
    /// gives them. Frames go through one at a time, each layer over all cores: a frame's
    /// activations stay in the caches, and a batch gains nothing from being wider.
    pub fn score(&self, frames: &[FrameView<'_>]) -> Vec<CellScores> {
        frames.iter().map(|frame| self.score_frame(frame, false)).collect()
    }

    /// As [`PackedNet::score`], with each cell's appearance features, as
    /// [`crate::inference::score_batch_with_appearance`] gives them.
    pub fn score_with_appearance(&self, frames: &[FrameView<'_>]) -> Vec<CellScores> {
        frames.iter().map(|frame| self.score_frame(frame, true)).collect()
    }

    fn score_frame(&self, frame: &FrameView<'_>, with_appearance: bool) -> CellScores {
        let (device, buffers) = (&self.device, &self.buffers);
        let stem = stem_direct(frame, &self.stem, buffers);
        let mut body = self.body.iter();
        let mut x = match body.next() {
            Some(first) => {
                let x = first.forward(&stem, device, buffers);
                lock(buffers).give(stem.values);
                x
            }
            None => stem,
        };
        // After `mid`: `cell` and `local`, the first two cell-resolution layers, are the
        // cells' appearance (as `DefectNet::forward_with_appearance` takes them).
        let mut appearance: Vec<Vec<f32>> = Vec::new();
        for (layer, conv) in body.enumerate() {
            x = conv.forward(&x, device, buffers);
            if with_appearance && layer < 2 {
                appearance.push(x.values.clone());
            }
        }
        let logits = self.head.forward(&x, device, buffers);
        let boxes =
            self.boxes.as_ref().map(|(hidden, out)| out.forward(&hidden.forward(&x, device, buffers), device, buffers));
        cell_scores(&logits, boxes.as_ref(), &appearance)
    }

    /// Each ReLU layer's output for one frame, in the order the network computes them
    /// (stem, mid, cell, local, context, wide, then the box head's hidden layer): what
    /// the int8 path's calibration measures ([`crate::quantized::calibrate`]).
    /// Each comes with its number of channels (the values are channels-last).
    pub(crate) fn relu_outputs(&self, frame: &FrameView<'_>) -> Vec<(Vec<f32>, usize)> {
        let (device, buffers) = (&self.device, &self.buffers);
        let mut x = stem_direct(frame, &self.stem, buffers);
        let mut outputs = vec![(x.values.clone(), x.channels)];
        for conv in &self.body {
            x = conv.forward(&x, device, buffers);
            outputs.push((x.values.clone(), x.channels));
        }
        if let Some((hidden, _)) = &self.boxes {
            let hidden = hidden.forward(&x, device, buffers);
            outputs.push((hidden.values, hidden.channels));
        }
        outputs
    }
}

/// A frame's scores from the head's logits and the box head's outputs (channels-last,
/// at cell resolution), with the appearance layers' activations when there are two.
pub(crate) fn cell_scores(logits: &Activations, boxes: Option<&Activations>, appearance: &[Vec<f32>]) -> CellScores {
    let (rows, cols, classes) = (logits.height, logits.width, logits.channels);
    let plane = rows * cols;
    let mut probabilities = vec![0f32; classes * plane];
    for (p, cell) in logits.values.chunks(classes).enumerate() {
        let max = cell.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let sum: f32 = cell.iter().map(|v| (v - max).exp()).sum();
        for (k, v) in cell.iter().enumerate() {
            probabilities[k * plane + p] = (v - max).exp() / sum;
        }
    }
    let boxes = boxes.map(|boxes| {
        let mut planar = vec![0f32; BOX_OUTPUTS * plane];
        for (p, cell) in boxes.values.chunks(BOX_OUTPUTS).enumerate() {
            for (k, v) in cell.iter().enumerate() {
                planar[k * plane + p] = *v;
            }
        }
        planar
    });
    let appearance = (appearance.len() == 2).then(|| {
        let (a, b) = (&appearance[0], &appearance[1]);
        let (da, db) = (a.len() / plane, b.len() / plane);
        let mut values = Vec::with_capacity(a.len() + b.len());
        for p in 0..plane {
            values.extend_from_slice(&a[p * da..(p + 1) * da]);
            values.extend_from_slice(&b[p * db..(p + 1) * db]);
        }
        Appearance { dims: da + db, values }
    });
    CellScores { classes, rows, cols, probabilities, boxes, appearance }
}

/// Output channels the stem computes together: one 256-bit vector.
const LANES: usize = 8;
/// Output pixels the stem computes together (independent accumulators).
const PIXELS: usize = 4;
/// Inputs of one stem output: 3 channels × 3 × 3.
const TAPS: usize = 27;

impl Stem {
    fn new<B: Backend>(conv: &Conv2d<B>) -> Stem {
        let weight = values(conv.weight.val());
        let channels = conv.weight.dims()[0];
        let bias = conv.bias.as_ref().map(|b| values(b.val())).unwrap_or_else(|| vec![0.0; channels]);
        let groups = channels.div_ceil(LANES);
        let mut packed = vec![[0f32; LANES]; groups * TAPS];
        let mut packed_bias = vec![[0f32; LANES]; groups];
        for k in 0..channels {
            let (g, j) = (k / LANES, k % LANES);
            packed_bias[g][j] = bias[k];
            for (tap, w) in weight[k * TAPS..(k + 1) * TAPS].iter().enumerate() {
                packed[g * TAPS + tap][j] = *w;
            }
        }
        Stem { weight: packed, bias: packed_bias, channels }
    }
}

/// The stem convolution (3×3, stride 2, padding 1, 3 input channels) with the input
/// normalisation (`p / 255 − 0.5`, zero padding after it) and the ReLU fused, on a
/// frame's planar RGB bytes, to channels-last activations.
///
/// Each input row is split into its even and odd columns (with the left padding in
/// front), so output column `x` reads `even[x]`, `odd[x]`, `even[x + 1]`. Four output
/// pixels × eight channels accumulate in registers over the 27 taps, with AVX2 and FMA
/// where the CPU has them (checked at run time).
fn stem_direct(frame: &FrameView<'_>, stem: &Stem, buffers: &Mutex<Buffers>) -> Activations {
    stem_direct_on(frame, stem, buffers, true)
}

/// [`stem_direct`], with AVX2 only if `avx2` allows it (the tests compare both paths).
fn stem_direct_on(frame: &FrameView<'_>, stem: &Stem, buffers: &Mutex<Buffers>, avx2: bool) -> Activations {
    let (height, width) = (frame.height, frame.width);
    let (out_h, out_w, channels) = (height.div_ceil(2), width.div_ceil(2), stem.channels);
    // Per channel and row: even (out_w + 1 + PIXELS) then odd (out_w + PIXELS) columns
    // of the padded, normalised row; the zeros at the end let the last group of output
    // pixels read whole. One more row of zeros stands for the rows above and below.
    let (evens, odds) = (out_w + 1 + PIXELS, out_w + PIXELS);
    let split = evens + odds;
    let mut rows = lock(buffers).take((3 * height + 1) * split);
    rows.par_chunks_mut(split).enumerate().for_each(|(i, row)| {
        row.fill(0.0);
        let Some(source) = frame.pixels.get(i * width..(i + 1) * width) else { return };
        let (even, odd) = row.split_at_mut(evens);
        // Padded column c + 1 holds pixel c: pixel 2j goes to odd slot j, 2j + 1 to even
        // slot j + 1 (even slot 0 is the left padding).
        let normalise = |p: u8| f32::from(p) / 255.0 - 0.5;
        for ((pair, odd), even) in source.chunks(2).zip(odd.iter_mut()).zip(even[1..].iter_mut()) {
            *odd = normalise(pair[0]);
            if let Some(&p) = pair.get(1) {
                *even = normalise(p);
            }
        }
    });
    let (planes, zero_row) = rows.split_at(3 * height * split);
    let mut out = lock(buffers).take(out_h * out_w * channels);
    out.par_chunks_mut(out_w * channels).enumerate().for_each(|(oy, output)| {
        // The nine input rows (channel, ky) this output row reads; zeros above and below.
        let taps: [&[f32]; 9] = std::array::from_fn(|t| {
            let (ci, ky) = (t / 3, t % 3);
            match (2 * oy + ky).checked_sub(1).filter(|&y| y < height) {
                Some(iy) => &planes[(ci * height + iy) * split..(ci * height + iy + 1) * split],
                None => zero_row,
            }
        });
        let row = StemRow { taps: &taps, evens, out_w, stem, output };
        #[cfg(target_arch = "x86_64")]
        if let Some(simd) = pulp::x86::V3::try_new().filter(|_| avx2) {
            return simd.vectorize(|| stem_row(simd, row));
        }
        stem_row(Portable, row);
    });
    lock(buffers).give(rows);
    Activations { values: out, height: out_h, width: out_w, channels }
}

/// One output row of [`stem_direct`].
struct StemRow<'a> {
    taps: &'a [&'a [f32]; 9],
    evens: usize,
    out_w: usize,
    stem: &'a Stem,
    output: &'a mut [f32],
}

/// The one vector operation the stem needs: `acc + v × w` on [`LANES`] lanes.
trait MulAdd: Copy {
    fn mul_add(self, acc: [f32; LANES], v: f32, w: [f32; LANES]) -> [f32; LANES];
}

/// [`MulAdd`] in plain Rust, for CPUs without AVX2.
#[derive(Clone, Copy)]
struct Portable;

impl MulAdd for Portable {
    #[inline(always)]
    fn mul_add(self, acc: [f32; LANES], v: f32, w: [f32; LANES]) -> [f32; LANES] {
        std::array::from_fn(|j| acc[j] + v * w[j])
    }
}

#[cfg(target_arch = "x86_64")]
impl MulAdd for pulp::x86::V3 {
    #[inline(always)]
    fn mul_add(self, acc: [f32; LANES], v: f32, w: [f32; LANES]) -> [f32; LANES] {
        pulp::cast(self.mul_add_f32x8(self.splat_f32x8(v), pulp::cast(w), pulp::cast(acc)))
    }
}

#[inline(always)]
fn stem_row(simd: impl MulAdd, row: StemRow<'_>) {
    let StemRow { taps, evens, out_w, stem, output } = row;
    let channels = stem.channels;
    for x0 in (0..out_w).step_by(PIXELS) {
        let mut inputs = [[0f32; PIXELS]; TAPS];
        for (t, row) in taps.iter().enumerate() {
            let (even, odd) = row.split_at(evens);
            inputs[t * 3].copy_from_slice(&even[x0..x0 + PIXELS]);
            inputs[t * 3 + 1].copy_from_slice(&odd[x0..x0 + PIXELS]);
            inputs[t * 3 + 2].copy_from_slice(&even[x0 + 1..x0 + 1 + PIXELS]);
        }
        let pixels = PIXELS.min(out_w - x0);
        for (g, (weights, bias)) in stem.weight.chunks(TAPS).zip(&stem.bias).enumerate() {
            let mut acc = [*bias; PIXELS];
            for (&w, input) in weights.iter().zip(&inputs) {
                for (acc, &v) in acc.iter_mut().zip(input) {
                    *acc = simd.mul_add(*acc, v, w);
                }
            }
            let lanes = LANES.min(channels - g * LANES);
            for (p, acc) in acc[..pixels].iter().enumerate() {
                let at = (x0 + p) * channels + g * LANES;
                for (o, a) in output[at..at + lanes].iter_mut().zip(acc) {
                    *o = a.max(0.0);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::DefectNetConfig;

    /// The stem computed the plain way: per output pixel and channel, the 27 taps of the
    /// normalised, zero-padded input times the convolution's weights, plus its bias, ReLU.
    fn stem_by_definition(frame: &FrameView<'_>, weight: &[f32], bias: &[f32]) -> Vec<f32> {
        let (height, width, channels) = (frame.height, frame.width, bias.len());
        let (out_h, out_w) = (height.div_ceil(2), width.div_ceil(2));
        let input = |c: usize, y: isize, x: isize| -> f32 {
            if y < 0 || x < 0 || y >= height as isize || x >= width as isize {
                return 0.0;
            }
            f32::from(frame.pixels[(c * height + y as usize) * width + x as usize]) / 255.0 - 0.5
        };
        let mut out = Vec::with_capacity(out_h * out_w * channels);
        for oy in 0..out_h {
            for ox in 0..out_w {
                for k in 0..channels {
                    let mut sum = bias[k];
                    for c in 0..3 {
                        for ky in 0..3 {
                            for kx in 0..3 {
                                let (y, x) = ((2 * oy + ky) as isize - 1, (2 * ox + kx) as isize - 1);
                                sum += weight[((k * 3 + c) * 3 + ky) * 3 + kx] * input(c, y, x);
                            }
                        }
                    }
                    out.push(sum.max(0.0));
                }
            }
        }
        out
    }

    #[test]
    fn both_stems_compute_the_convolution_by_its_definition() {
        let net = DefectNetConfig::new().init::<CpuBackend>(&Default::default());
        let stem = Stem::new(&net.stem);
        let weight = values(net.stem.weight.val());
        let bias = net.stem.bias.as_ref().map(|b| values(b.val())).expect("the stem has a bias");
        let (width, height) = (45, 23);
        let pixels: Vec<u8> = (0..3 * width * height).map(|i| (i * 7919 % 251) as u8).collect();
        let frame = FrameView { width, height, pixels: &pixels };
        let expected = stem_by_definition(&frame, &weight, &bias);
        assert!(expected.iter().any(|&v| v > 0.0) && expected.contains(&0.0));
        let buffers = Mutex::default();
        // The AVX2 path where the CPU has it (the portable one otherwise), and the portable path.
        for avx2 in [true, false] {
            let found = stem_direct_on(&frame, &stem, &buffers, avx2);
            assert_eq!((found.height, found.width, found.channels), (12, 23, 16));
            assert_eq!(found.values.len(), expected.len());
            for (a, b) in found.values.iter().zip(&expected) {
                assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "avx2 {avx2}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn kept_buffers_are_the_smallest_that_fit_and_never_grow_in_number() {
        let mut buffers = Buffers::default();
        buffers.give(vec![1.0; 100]);
        buffers.give(vec![1.0; 10]);
        let b = buffers.take(8);
        assert_eq!((b.len(), b.capacity()), (8, 10));
        assert_eq!(buffers.take(200).len(), 200);
        for _ in 0..20 {
            buffers.give(vec![0.0; 4]);
        }
        assert_eq!(buffers.0.len(), 8);
    }
}
