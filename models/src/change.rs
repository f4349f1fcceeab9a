//! Whether a fixed camera's frame looks as an earlier one did, for change gating
//! (`defectflow_operators::change`): block means brought to the same brightness and
//! compared with the camera's shake undone. Here, beside the other pixel loops, so that
//! it is optimised in every build.

/// The side of a compared block, in pixels (the network's cell).
pub const BLOCK: usize = 8;

/// How far a fixed camera may shake between frames, in pixels, and still be compared
/// block by block (after the shift is undone).
const MAX_SHAKE: isize = 4;

/// What a frame looks like, coarsely: its block means and the sums of its columns and
/// rows (all channels), which tell how far the view shifted.
#[derive(Debug)]
pub struct Look {
    blocks: Vec<f32>,
    columns: Vec<f32>,
    rows: Vec<f32>,
}

impl Look {
    pub fn of(pixels: &[u8], (width, height): (usize, usize)) -> Look {
        let mut columns = vec![0f32; width];
        let mut rows = vec![0f32; height];
        for channel in pixels.chunks_exact((width * height).max(1)).take(3) {
            for (y, line) in channel.chunks_exact(width.max(1)).enumerate() {
                let mut sum = 0u32;
                for (x, &value) in line.iter().enumerate() {
                    columns[x] += f32::from(value);
                    sum += u32::from(value);
                }
                rows[y] += sum as f32;
            }
        }
        Look { blocks: block_means(pixels, (width, height), (0, 0)), columns, rows }
    }

    /// Whether the frame `now` (its pixels and look) is unchanged from this one, once
    /// the camera's shake is undone: no block differs by more than `threshold`.
    pub fn same_as(&self, pixels: &[u8], now: &Look, size: (usize, usize), threshold: f32) -> bool {
        let shift = (best_shift(&self.columns, &now.columns), best_shift(&self.rows, &now.rows));
        if shift == (0, 0) {
            return within(&self.blocks, &now.blocks, threshold);
        }
        within(&self.blocks, &block_means(pixels, size, shift), threshold)
    }
}

/// The mean of every channel's values over each `BLOCK`² block of a `[3, h, w]` frame
/// (partial blocks at the edges over what they hold), row-major, each block read
/// `shift` pixels away (clamped to the frame): where content that moved by `shift`
/// now lies.
pub fn block_means(pixels: &[u8], (width, height): (usize, usize), (dx, dy): (isize, isize)) -> Vec<f32> {
    let (cols, rows) = (width.div_ceil(BLOCK), height.div_ceil(BLOCK));
    let mut sums = vec![0u32; cols * rows];
    let plane = width * height;
    let clamp = |v: usize, d: isize, len: usize| (v as isize + d).clamp(0, len as isize - 1) as usize;
    for channel in pixels.chunks_exact(plane.max(1)).take(3) {
        for y in 0..height {
            let line = &channel[clamp(y, dy, height) * width..][..width];
            let row = &mut sums[(y / BLOCK) * cols..(y / BLOCK + 1) * cols];
            if dx == 0 {
                for (x, &value) in line.iter().enumerate() {
                    row[x / BLOCK] += u32::from(value);
                }
            } else {
                for x in 0..width {
                    row[x / BLOCK] += u32::from(line[clamp(x, dx, width)]);
                }
            }
        }
    }
    let channels = (pixels.len() / plane.max(1)).min(3) as f32;
    (0..rows * cols)
        .map(|i| {
            let (row, col) = (i / cols, i % cols);
            let h = (height - row * BLOCK).min(BLOCK);
            let w = (width - col * BLOCK).min(BLOCK);
            sums[i] as f32 / (channels * (h * w) as f32)
        })
        .collect()
}

/// The shift (at most `MAX_SHAKE` each way) that best lays `now`'s column (or row)
/// sums over `before`'s, brightness aside, compared over the same stretch for every
/// shift (the borders left out, so that no shift moves a change out of sight). A shift
/// is taken only where it fits a tenth better than none.
fn best_shift(before: &[f32], now: &[f32]) -> isize {
    let margin = MAX_SHAKE as usize;
    if before.len() != now.len() || before.len() <= 2 * margin + 1 {
        return 0;
    }
    let gain = before.iter().sum::<f32>().max(1.0) / now.iter().sum::<f32>().max(1.0);
    let cost = |d: isize| -> f32 {
        (margin..before.len() - margin).map(|i| (before[i] - now[(i as isize + d) as usize] * gain).abs()).sum()
    };
    let unshifted = cost(0);
    let (best, least) = (-MAX_SHAKE..=MAX_SHAKE)
        .map(|d| (d, cost(d)))
        .min_by(|a, b| a.1.total_cmp(&b.1).then(a.0.abs().cmp(&b.0.abs())))
        .unwrap_or((0, unshifted));
    if least <= 0.9 * unshifted { best } else { 0 }
}

/// Whether no block of `now` differs by more than `threshold` from `before` brought to
/// its overall brightness.
pub fn within(before: &[f32], now: &[f32], threshold: f32) -> bool {
    let (sum_before, sum_now) = (before.iter().sum::<f32>(), now.iter().sum::<f32>());
    let gain = if sum_before > 0.0 { sum_now / sum_before } else { 1.0 };
    before.len() == now.len() && before.iter().zip(now).all(|(b, n)| (b * gain - n).abs() <= threshold)
}
