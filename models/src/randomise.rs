//! Domain randomisation of training crops: the same defect on surfaces, in light and
//! through cameras the generator never draws, so that the class head learns the defect
//! rather than the generator's look (Tobin et al., "Domain Randomization for
//! Transferring Deep Neural Networks from Simulation to the Real World", IROS 2017).
//!
//! A crop (three planes of `side`×`side` pixels, 0–255) gets, each at random: a surface
//! texture laid over it (mottled, brushed, speckled or blotched), uneven light (a gain
//! that varies across the crop, as a lamp or a shadow's edge makes it), another colour
//! balance, contrast and gamma, blur, sensor noise and block artefacts of a lossy codec.
//! Every change acts on the whole crop alike, so a defect stays where its label says,
//! and none is strong enough to hide it: a crack stays darker than its surroundings
//! (blur and block artefacts are never drawn together).

use rand::Rng;

/// Randomises one crop in place; see the module documentation.
pub fn randomise(pixels: &mut [f32], side: usize, rng: &mut impl Rng) {
    let plane = side * side;
    debug_assert_eq!(pixels.len(), 3 * plane);
    if rng.random_bool(0.7) {
        let texture = texture(side, rng);
        let tint: [f32; 3] = std::array::from_fn(|_| rng.random_range(0.8..1.2));
        for (ch, t) in tint.iter().enumerate() {
            for (p, v) in pixels[ch * plane..(ch + 1) * plane].iter_mut().zip(&texture) {
                *p += v * t;
            }
        }
    }
    // Uneven light: a gain that changes linearly across the crop.
    let gain = rng.random_range(0.6..1.4f32);
    let (gx, gy) = (rng.random_range(-0.4..0.4f32), rng.random_range(-0.4..0.4f32));
    let channel: [f32; 3] = std::array::from_fn(|_| rng.random_range(0.85..1.15));
    let contrast = rng.random_range(0.75..1.3f32);
    let gamma = rng.random_range(0.8..1.25f32);
    let mean = pixels.iter().sum::<f32>() / pixels.len().max(1) as f32;
    for (values, balance) in pixels.chunks_exact_mut(plane).zip(channel) {
        for (at, p) in values.iter_mut().enumerate() {
            let (y, x) = (at / side, at % side);
            let light = gain + gx * (x as f32 / side as f32 - 0.5) + gy * (y as f32 / side as f32 - 0.5);
            let v = (mean + (*p - mean) * contrast) * light * balance;
            *p = 255.0 * (v.clamp(0.0, 255.0) / 255.0).powf(gamma);
        }
    }
    // Out of focus, or a lossy codec's blocks; not both, which would hide a fine crack.
    match rng.random_range(0..10) {
        0..3 => (0..3).for_each(|ch| box_blur(&mut pixels[ch * plane..(ch + 1) * plane], side)),
        3..6 => {
            let keep = rng.random_range(0.6..0.9f32);
            (0..3).for_each(|ch| blocks(&mut pixels[ch * plane..(ch + 1) * plane], side, keep));
        }
        _ => {}
    }
    let sigma = rng.random_range(0.0..8.0f32);
    for p in pixels.iter_mut() {
        *p = (*p + sigma * gaussian(rng)).clamp(0.0, 255.0);
    }
}

/// A surface texture of `side`×`side` values around 0 (grey levels to add).
fn texture(side: usize, rng: &mut impl Rng) -> Vec<f32> {
    let amplitude = rng.random_range(6.0..28.0f32);
    let field = match rng.random_range(0..4) {
        // Mottled: smooth noise of one or two scales (cast iron, concrete, paint).
        0 => {
            let coarse = value_noise(side, rng.random_range(12..40), 1, rng);
            let fine = value_noise(side, rng.random_range(3..8), 1, rng);
            coarse.iter().zip(&fine).map(|(c, f)| 0.7 * c + 0.3 * f).collect()
        }
        // Brushed: long streaks along one direction (brushed steel, belting).
        1 => {
            let streaks = value_noise(side, rng.random_range(1..3), side, rng);
            if rng.random_bool(0.5) { transpose(&streaks, side) } else { streaks }
        }
        // Speckled: fine grain (galvanised sheet, sand-blasted metal).
        2 => value_noise(side, 2, 1, rng),
        // Blotched: a few soft patches (stains of use, uneven paint).
        _ => value_noise(side, rng.random_range(24..64), 1, rng).iter().map(|v| (v * 2.0).tanh()).collect(),
    };
    field.iter().map(|v| v * amplitude).collect()
}

/// Value noise in −1..1 on a grid of `cell` pixels, stretched `stretch` times along x
/// (streaks), bilinearly interpolated.
fn value_noise(side: usize, cell: usize, stretch: usize, rng: &mut impl Rng) -> Vec<f32> {
    let (cx, cy) = ((cell * stretch).max(1), cell.max(1));
    let (nx, ny) = (side / cx + 2, side / cy + 2);
    let grid: Vec<f32> = (0..nx * ny).map(|_| rng.random_range(-1.0..1.0)).collect();
    let mut out = Vec::with_capacity(side * side);
    for y in 0..side {
        let (gy, fy) = (y / cy, (y % cy) as f32 / cy as f32);
        for x in 0..side {
            let (gx, fx) = (x / cx, (x % cx) as f32 / cx as f32);
            let at = |i: usize, j: usize| grid[j * nx + i];
            let top = at(gx, gy) * (1.0 - fx) + at(gx + 1, gy) * fx;
            let bottom = at(gx, gy + 1) * (1.0 - fx) + at(gx + 1, gy + 1) * fx;
            out.push(top * (1.0 - fy) + bottom * fy);
        }
    }
    out
}

fn transpose(values: &[f32], side: usize) -> Vec<f32> {
    (0..side * side).map(|i| values[(i % side) * side + i / side]).collect()
}

/// A 3×3 box blur (edges clamped).
fn box_blur(plane: &mut [f32], side: usize) {
    let source = plane.to_vec();
    for y in 0..side {
        for x in 0..side {
            let mut sum = 0.0;
            for dy in [-1i64, 0, 1] {
                for dx in [-1i64, 0, 1] {
                    let yy = (y as i64 + dy).clamp(0, side as i64 - 1) as usize;
                    let xx = (x as i64 + dx).clamp(0, side as i64 - 1) as usize;
                    sum += source[yy * side + xx];
                }
            }
            plane[y * side + x] = sum / 9.0;
        }
    }
}

/// A lossy codec's 8×8 blocks: each pixel keeps `keep` of its difference from its
/// block's mean.
fn blocks(plane: &mut [f32], side: usize, keep: f32) {
    for by in (0..side).step_by(8) {
        for bx in (0..side).step_by(8) {
            let (ys, xs) = (by..(by + 8).min(side), bx..(bx + 8).min(side));
            let count = (ys.len() * xs.len()) as f32;
            let mean =
                ys.clone().flat_map(|y| xs.clone().map(move |x| (y, x))).map(|(y, x)| plane[y * side + x]).sum::<f32>()
                    / count;
            for y in ys {
                for x in xs.clone() {
                    let p = &mut plane[y * side + x];
                    *p = mean + (*p - mean) * keep;
                }
            }
        }
    }
}

/// A standard normal draw (Box–Muller).
fn gaussian(rng: &mut impl Rng) -> f32 {
    let (u, v): (f32, f32) = (rng.random_range(f32::EPSILON..1.0), rng.random_range(0.0..1.0));
    (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    /// A mid-grey crop with a dark vertical line (a crack) down its middle.
    fn cracked(side: usize) -> Vec<f32> {
        let mut pixels = vec![140.0; 3 * side * side];
        for ch in 0..3 {
            for y in 0..side {
                pixels[ch * side * side + y * side + side / 2] = 40.0;
            }
        }
        pixels
    }

    #[test]
    fn a_randomised_crop_changes_its_look_and_keeps_its_defect_where_it_was() {
        let side = 64;
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let before = cracked(side).iter().sum::<f32>() / (3 * side * side) as f32;
        let mut changed_looks = 0;
        for _ in 0..200 {
            let mut pixels = cracked(side);
            randomise(&mut pixels, side, &mut rng);
            assert!(pixels.iter().all(|p| (0.0..=255.0).contains(p)));
            let luminance = |x: usize| (0..side).map(|y| pixels[y * side + x]).sum::<f32>() / side as f32;
            let line = luminance(side / 2);
            // The crack stays darker than the surface a few pixels either side of it.
            let beside = (luminance(side / 2 - 4) + luminance(side / 2 + 4)) / 2.0;
            assert!(line + 8.0 < beside, "crack {line} beside {beside}");
            let mean = pixels.iter().sum::<f32>() / pixels.len() as f32;
            changed_looks += usize::from((mean - before).abs() > 10.0);
        }
        assert!(changed_looks > 100, "most crops look different: {changed_looks} of 200");
    }

    #[test]
    fn the_same_seed_gives_the_same_crop() {
        let side = 32;
        let draw = |seed| {
            let mut pixels = cracked(side);
            randomise(&mut pixels, side, &mut ChaCha8Rng::seed_from_u64(seed));
            pixels
        };
        assert_eq!(draw(5), draw(5));
        assert_ne!(draw(5), draw(6));
    }
}
