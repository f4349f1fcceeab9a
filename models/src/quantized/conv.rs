//! One convolution of the int8 path: its weights quantised, the frame's bytes or an
//! earlier layer's as its input, its outputs as bytes for the next layer or as reals.

use burn::nn::conv::Conv2d;
use burn::tensor::backend::Backend;
use rayon::prelude::*;

use super::kernels::MAX_TAPS;
use super::kernels::{Int8Kernel, Sources, Sums, Weights};
use super::{MAX_OUTPUTS, TILE};
use crate::inference::{FrameView, values};
use crate::packed::{Activations, padding_of};

/// Activations of one frame as bytes, channels-last: `[height, width, channels]`,
/// channel `i` worth `scales[i]` a step.
#[derive(Debug)]
pub(super) struct Bytes {
    values: Vec<u8>,
    height: usize,
    width: usize,
    channels: usize,
    scales: Vec<f32>,
}

impl Bytes {
    /// A frame's planar RGB bytes channels-last, with a fourth channel of zeros: what
    /// the stem reads ([`QConv::stem`]).
    pub(super) fn pixels(frame: &FrameView<'_>) -> Bytes {
        let (width, height) = (frame.width, frame.height);
        let plane = width * height;
        // A short frame reads as black where it has no bytes.
        let mut planar = std::borrow::Cow::Borrowed(frame.pixels);
        if planar.len() < 3 * plane {
            planar.to_mut().resize(3 * plane, 0);
        }
        let (r, rest) = planar.split_at(plane);
        let (g, b) = rest.split_at(plane);
        let mut values = vec![0u8; 4 * plane];
        values.par_chunks_mut(4 * width).enumerate().for_each(|(y, row)| {
            let at = y * width..(y + 1) * width;
            let channels = r[at.clone()].iter().zip(&g[at.clone()]).zip(&b[at]);
            for (pixel, ((&r, &g), &b)) in row.chunks_exact_mut(4).zip(channels) {
                pixel[..3].copy_from_slice(&[r, g, b]);
            }
        });
        Bytes { values, height, width, channels: 4, scales: vec![1.0; 4] }
    }

    pub(super) fn to_real(&self) -> Vec<f32> {
        let pixels = self.values.chunks(self.channels);
        pixels.flat_map(|q| q.iter().zip(&self.scales).map(|(&q, s)| f32::from(q) * s)).collect()
    }
}

/// A non-negative value as the byte nearest `x / scale` (`inverse` = 1 / scale), 255 at most.
#[inline(always)]
pub(super) fn to_byte(x: f32, inverse: f32) -> u8 {
    // Clamped, then rounded to nearest by adding 2^23: the float's last mantissa bits are
    // then the integer. Unlike a saturating `as`, this vectorises.
    ((x * inverse).clamp(0.0, 255.0) + 8_388_608.0).to_bits() as u8
}

/// What a layer's outputs become.
#[derive(Clone, Debug)]
pub(super) enum Output {
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
        let (stride, dilation, padding) = (conv.stride[0], conv.dilation[0], padding_of(conv));
        Layer { weight, bias, inputs, outputs, kernel, stride, dilation, padding }
    }
}

/// What an integer layer reads: each input channel's step and, for the bias correction,
/// its mean over the calibration frames.
#[derive(Clone, Copy, Debug)]
pub(super) struct Input<'a> {
    pub(super) scales: &'a [f32],
    pub(super) means: Option<&'a [f32]>,
}

/// One convolution on bytes; see the module documentation.
#[derive(Debug)]
pub(super) struct QConv {
    inputs: usize,
    pub(super) outputs: usize,
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
    pub(super) fn new<B: Backend>(conv: &Conv2d<B>, input: Input<'_>, output: Output) -> Result<QConv, String> {
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
    pub(super) fn stem<B: Backend>(conv: &Conv2d<B>, output: Output) -> Result<QConv, String> {
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
    fn run<T: Copy + Default + Send, F: Finish<T>>(
        &self,
        x: &Bytes,
        kernel: Int8Kernel,
        finish: &F,
    ) -> (Vec<T>, usize, usize) {
        assert_eq!(x.channels, self.inputs);
        let span = self.dilation * (self.kernel - 1) + 1;
        let out_h = (x.height + 2 * self.padding - span) / self.stride + 1;
        let out_w = (x.width + 2 * self.padding - span) / self.stride + 1;
        let mut out = vec![T::default(); out_h * out_w * self.outputs];
        out.par_chunks_mut(out_w * self.outputs).enumerate().for_each_init(
            Vec::new,
            |buffer: &mut Vec<u8>, (oy, row)| {
                let row = Row { x, kernel, oy, out: row, buffer };
                // Compiled again for AVX2 (chosen at run time): the epilogue and the bytes'
                // conversion then vectorise 8 wide.
                #[cfg(target_arch = "x86_64")]
                if let Some(simd) = pulp::x86::V3::try_new() {
                    return simd.vectorize(|| self.row(row, finish));
                }
                self.row(row, finish);
            },
        );
        (out, out_h, out_w)
    }

    /// One output row: its input rows copied with zero padding, then tile by tile the
    /// kernel's sums, finished into the output.
    #[inline(always)]
    fn row<T: Copy, F: Finish<T>>(&self, row: Row<'_, T>, finish: &F) {
        let Row { x, kernel, oy, out, buffer } = row;
        let (c, k, outputs) = (x.channels, self.kernel, self.outputs);
        let out_w = out.len() / outputs;
        let padded = (x.width + 2 * self.padding) * c;
        buffer.clear();
        buffer.resize(k * padded, 0);
        for (ky, to) in buffer.chunks_exact_mut(padded).enumerate() {
            let iy = (oy * self.stride + ky * self.dilation).checked_sub(self.padding).filter(|&y| y < x.height);
            if let Some(iy) = iy {
                to[self.padding * c..][..x.width * c].copy_from_slice(&x.values[iy * x.width * c..][..x.width * c]);
            }
        }
        let mut rows = [&buffer[..0]; 3];
        for (row, from) in rows.iter_mut().zip(buffer.chunks_exact(padded)) {
            *row = from;
        }
        let mut sources = Sources { rows, at: [0; TILE], kernel: k, step: self.dilation * c };
        let mut sums: Sums = [[0; MAX_OUTPUTS]; TILE];
        let (no_extra, mut extra) = ([0f32; MAX_OUTPUTS], [0f32; MAX_OUTPUTS]);
        for x0 in (0..out_w).step_by(TILE) {
            let pixels = TILE.min(out_w - x0);
            for (p, at) in sources.at.iter_mut().enumerate() {
                // Pixels past the row's end read its last pixel's taps, and are not kept.
                *at = (x0 + p.min(pixels - 1)) * self.stride * c;
            }
            kernel.tile(&sources, &self.weights, &mut sums);
            for (p, sums) in sums.iter().enumerate().take(pixels) {
                let extra = self.outside_gains(oy, x0 + p, x, &mut extra).unwrap_or(&no_extra);
                finish.pixel(&sums[..outputs], &extra[..outputs], &mut out[(x0 + p) * outputs..][..outputs]);
            }
        }
    }

    /// What output pixel `(oy, ox)` gains from its taps outside `x`, written into `extra`;
    /// none where it has no such taps (or the layer gives them nothing: all but the stem).
    #[inline(always)]
    fn outside_gains<'e>(
        &self,
        oy: usize,
        ox: usize,
        x: &Bytes,
        extra: &'e mut [f32; MAX_OUTPUTS],
    ) -> Option<&'e [f32; MAX_OUTPUTS]> {
        let gains = self.outside.as_ref()?;
        let outside = self.outside_taps(oy, ox, x.height, x.width);
        if outside == 0 {
            return None;
        }
        extra.fill(0.0);
        for t in (0..self.kernel * self.kernel).filter(|t| outside & 1 << t != 0) {
            let gains = &gains[t * self.outputs..(t + 1) * self.outputs];
            extra.iter_mut().zip(gains).for_each(|(e, g)| *e += g);
        }
        Some(extra)
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

    pub(super) fn to_bytes(&self, x: &Bytes, kernel: Int8Kernel) -> Bytes {
        let Output::Bytes { scales } = &self.output else { unreachable!("a layer of reals feeds no integer layer") };
        let inverses: Vec<f32> = scales.iter().map(|s| 1.0 / s).collect();
        let finish = ToBytes { reals: ToReals { step: &self.step, bias: &self.bias }, inverses: &inverses };
        let (values, height, width) = self.run(x, kernel, &finish);
        Bytes { values, height, width, channels: self.outputs, scales: scales.clone() }
    }

    pub(super) fn to_reals(&self, x: &Bytes, kernel: Int8Kernel) -> Activations {
        let (values, height, width) = self.run(x, kernel, &ToReals { step: &self.step, bias: &self.bias });
        Activations { values, height, width, channels: self.outputs }
    }
}

/// One output row of [`QConv::run`] and what it needs.
struct Row<'a, T> {
    x: &'a Bytes,
    kernel: Int8Kernel,
    oy: usize,
    out: &'a mut [T],
    buffer: &'a mut Vec<u8>,
}

/// How a layer's sums become its outputs, one pixel at a time: `sums`, and `extra` (what
/// its taps outside the frame add), of each output channel. Every slice is cut to the
/// output's length first, so that the loop vectorises.
trait Finish<T>: Sync {
    fn pixel(&self, sums: &[i32], extra: &[f32], out: &mut [T]);
}

/// Real values, as the heads give them.
#[derive(Clone, Copy)]
struct ToReals<'a> {
    step: &'a [f32],
    bias: &'a [f32],
}

impl ToReals<'_> {
    /// The first `n` channels' real values: `sum × step + bias + extra`.
    #[inline(always)]
    fn reals<'s>(&'s self, n: usize, sums: &'s [i32], extra: &'s [f32]) -> impl Iterator<Item = f32> + 's {
        let (sums, extra, step, bias) = (&sums[..n], &extra[..n], &self.step[..n], &self.bias[..n]);
        (sums.iter().zip(extra)).zip(step.iter().zip(bias)).map(|((&s, e), (st, b))| s as f32 * st + b + e)
    }
}

impl Finish<f32> for ToReals<'_> {
    #[inline(always)]
    fn pixel(&self, sums: &[i32], extra: &[f32], out: &mut [f32]) {
        let reals = self.reals(out.len(), sums, extra);
        out.iter_mut().zip(reals).for_each(|(v, real)| *v = real);
    }
}

/// Real values, ReLU and bytes for the next layer.
struct ToBytes<'a> {
    reals: ToReals<'a>,
    inverses: &'a [f32],
}

impl Finish<u8> for ToBytes<'_> {
    #[inline(always)]
    fn pixel(&self, sums: &[i32], extra: &[f32], out: &mut [u8]) {
        let n = out.len();
        let reals = self.reals.reals(n, sums, extra);
        out.iter_mut().zip(reals).zip(&self.inverses[..n]).for_each(|((q, v), inverse)| *q = to_byte(v, *inverse));
    }
}
