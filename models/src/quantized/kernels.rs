//! The int8 path's integer kernels: one tile of sums, exact in `i32`, on AVX-512 VNNI,
//! AVX2 or any CPU (see the parent module).

use super::{MAX_OUTPUTS, TILE, VECTOR};

/// The integer kernel a [`super::QuantNet`] multiplies with.
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
    pub(super) fn tile(self, sources: &Sources<'_>, weights: &Weights, sums: &mut Sums) {
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
pub(super) const MAX_TAPS: usize = 9;

/// What one tile reads: the input rows of its taps, zero-padded, by `ky`; tap `(ky, kx)`
/// of pixel `p` reads the input channels at `rows[ky][at[p] + kx × step..]`.
#[derive(Clone, Copy, Debug)]
pub(super) struct Sources<'a> {
    pub(super) rows: [&'a [u8]; 3],
    pub(super) at: [usize; TILE],
    pub(super) kernel: usize,
    /// Bytes from one tap to the next along a row: dilation × channels.
    pub(super) step: usize,
}

impl Sources<'_> {
    /// Where tap `t` of each pixel starts: its row, and the shift past `at`.
    #[inline(always)]
    fn tap(&self, t: usize) -> (&[u8], usize) {
        (self.rows[t / self.kernel], t % self.kernel * self.step)
    }
}

/// One tile's sums, per pixel and output channel.
pub(super) type Sums = [[i32; MAX_OUTPUTS]; TILE];

/// A layer's weights as the kernels read them, rows in (tap, input) order.
#[derive(Debug)]
pub(super) struct Weights {
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
    pub(super) fn new(rows: usize, channels: usize, outputs: usize, row: impl Fn(usize, usize) -> i8) -> Weights {
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
}
