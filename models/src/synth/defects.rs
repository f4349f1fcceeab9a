//! Defects drawn onto a scene: where they are, when they appear and how they grow.

use defectflow_schemas::{BoundingBox, DefectClass};
use serde::{Deserialize, Serialize};

use super::raster::{Canvas, hash, lattice, shade, value_noise};

/// One defect of a synthetic camera, as recorded in the ground truth.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DefectSpec {
    /// `<camera_id>-d<n>`: unique within a footage set.
    pub defect_id: String,
    pub class: DefectClass,
    /// Seconds after the start of the stream at which the defect appears.
    pub onset_s: f64,
    /// Characteristic size (crack length, blob diameter, ...) at onset, in pixels of
    /// the camera's frame.
    pub initial_size_px: f32,
    /// Growth of the characteristic size, pixels per second.
    pub growth_px_per_s: f32,
    /// The size stops growing here.
    pub max_size_px: f32,
    /// Centre of the defect in the un-jittered frame.
    pub center: [f32; 2],
    /// Shape seed: the same seed draws the same crack path or blob outline.
    pub shape_seed: u64,
}

impl DefectSpec {
    /// Characteristic size at time `t_s`, or `None` before onset.
    pub fn size_at(&self, t_s: f64) -> Option<f32> {
        (t_s >= self.onset_s).then(|| {
            let grown = self.initial_size_px + self.growth_px_per_s * (t_s - self.onset_s) as f32;
            grown.min(self.max_size_px)
        })
    }
}

/// How dark cracks and stains are drawn.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DefectTones {
    /// The generator's own: a crack near black (RGB 12, 10, 10), a stain ten grey
    /// levels lighter (22, 18, 14).
    #[default]
    Fixed,
    /// Each crack and each stain at its own darkness and tint, both drawn from one
    /// range: only their shapes tell them apart, as on footage from anywhere else.
    Varied,
}

impl DefectTones {
    /// The dark colour of a crack or stain of shape seed `seed`.
    fn dark(self, seed: u64, fixed: [u8; 3]) -> [u8; 3] {
        match self {
            DefectTones::Fixed => fixed,
            DefectTones::Varied => varied_dark(seed),
        }
    }
}

/// A dark colour of its own for shape seed `seed`: 6 to 48 grey levels, tinted.
fn varied_dark(seed: u64) -> [u8; 3] {
    let level = 6.0 + (hash(seed ^ 0xDA4C) % 43) as f32;
    std::array::from_fn(|ch| {
        let tint = 0.75 + 0.25 * ((hash(seed ^ (0x71A7 + ch as u64)) % 101) as f32 / 100.0);
        (level * tint).round() as u8
    })
}

/// Draws the defect at size `size` offset by `(dx, dy)`; returns its bounding box.
pub fn draw_defect(
    canvas: &mut Canvas,
    spec: &DefectSpec,
    size: f32,
    (dx, dy): (f32, f32),
    tones: DefectTones,
) -> BoundingBox {
    let (cx, cy) = (spec.center[0] + dx, spec.center[1] + dy);
    let seed = spec.shape_seed;
    match spec.class {
        DefectClass::Crack => draw_crack(canvas, cx, cy, size, seed, tones.dark(seed, [12, 10, 10])),
        DefectClass::Corrosion => draw_blob(canvas, cx, cy, size, seed, |x, y, n| {
            let speck = lattice(seed, x, y) > 0.85;
            let base = if speck { [92, 40, 14] } else { [176, 86, 30] };
            (shade(base, 0.75 + 0.5 * n), 0.95)
        }),
        DefectClass::Contamination => {
            let stain = tones.dark(seed ^ 0x0111, [22, 18, 14]);
            draw_blob(canvas, cx, cy, size, seed ^ 0x0111, |_, _, n| {
                let sheen = n > 0.72;
                (if sheen { [96, 92, 104] } else { stain }, 0.9)
            })
        }
        DefectClass::Wear => draw_blob(canvas, cx, cy, size, seed ^ 0x3EA2, |_, y, n| {
            let streak = (y as u64).wrapping_mul(2_654_435_761).is_multiple_of(5);
            (if streak { [255, 250, 236] } else { shade([222, 216, 200], 0.9 + 0.15 * n) }, 0.85)
        }),
        DefectClass::Misalignment => draw_misalignment(canvas, cx, cy, size),
        DefectClass::MissingComponent => draw_missing_bolt(canvas, cx, cy, size),
        // Not a class of the model: scenes are never given one to draw.
        DefectClass::Unknown => BoundingBox { x: cx, y: cy, width: 0.0, height: 0.0 },
    }
}

/// Dark lines that are not defects, drawn into a scene whose defects are drawn at
/// [`DefectTones::Varied`]: straight grooves, seams and rails, and smoothly curving
/// cables, at a crack's darkness and width. Without tone, only a crack's shape (jagged,
/// kinked at every segment) tells it from them.
pub fn draw_lookalikes(canvas: &mut Canvas, seed: u64) {
    let (w, h) = (canvas.width as f32, canvas.height as f32);
    let unit = |k: u64| (hash(seed ^ k) % 10_000) as f32 / 10_000.0;
    let u = canvas.unit();
    let count = 3 + hash(seed ^ 0x10C4) % 6;
    for n in 0..count {
        let k = n * 16 + 0x5EED;
        let color = varied_dark(seed ^ k);
        let thickness = (1.5 + 2.5 * unit(k + 1)) * u;
        let length = (30.0 + 270.0 * unit(k + 2)) * u;
        let angle = unit(k + 3) * std::f32::consts::TAU;
        let (ux, uy) = (angle.cos(), angle.sin());
        let (ax, ay) = (unit(k + 4) * w, unit(k + 5) * h);
        // A cable sags: its middle is pushed sideways, smoothly.
        let sag = if unit(k + 6) < 0.4 { (unit(k + 7) - 0.5) * 0.4 * length } else { 0.0 };
        let segments = 16;
        let at = |i: usize| {
            let t = i as f32 / segments as f32;
            let bow = sag * 4.0 * t * (1.0 - t);
            (ax + ux * t * length - uy * bow, ay + uy * t * length + ux * bow)
        };
        for i in 0..segments {
            canvas.line(at(i), at(i + 1), thickness, color);
        }
    }
}

fn draw_crack(canvas: &mut Canvas, cx: f32, cy: f32, length: f32, seed: u64, color: [u8; 3]) -> BoundingBox {
    // A jagged polyline that grows from its centre outwards in both directions.
    let angle = (hash(seed) % 628) as f32 / 100.0;
    let (ux, uy) = (angle.cos(), angle.sin());
    let segments = 8;
    let mut points = Vec::with_capacity(segments + 1);
    for i in 0..=segments {
        let t = i as f32 / segments as f32 - 0.5;
        let jitter = (lattice(seed, i as i32, 7) - 0.5) * length * 0.18;
        points.push((cx + ux * t * length - uy * jitter, cy + uy * t * length + ux * jitter));
    }
    let u = canvas.unit();
    let thickness = (2.0 + length / (40.0 * u)).min(4.0) * u;
    for pair in points.windows(2) {
        canvas.line(pair[0], pair[1], thickness, color);
    }
    bounds(&points, thickness / 2.0 + 1.0)
}

fn draw_blob(
    canvas: &mut Canvas,
    cx: f32,
    cy: f32,
    diameter: f32,
    seed: u64,
    color: impl Fn(i32, i32, f32) -> ([u8; 3], f32),
) -> BoundingBox {
    let r = diameter / 2.0;
    let canvas_unit = canvas.unit();
    let mut hit = (f32::MAX, f32::MAX, f32::MIN, f32::MIN);
    canvas.paint((cx - r - 2.0) as i32, (cy - r - 2.0) as i32, (cx + r + 3.0) as i32, (cy + r + 3.0) as i32, |x, y| {
        let (dx, dy) = (x as f32 - cx, y as f32 - cy);
        let a = dy.atan2(dx);
        // The outline wobbles with angle so blobs are not perfect discs.
        let wobble = 0.8 + 0.2 * (value_noise(seed, a * 6.0 + 10.0, 0.0, 1.0) * 2.0);
        if (dx * dx + dy * dy).sqrt() > r * wobble.min(1.0) {
            return None;
        }
        hit = (hit.0.min(x as f32), hit.1.min(y as f32), hit.2.max(x as f32 + 1.0), hit.3.max(y as f32 + 1.0));
        let (c, alpha) = color(x, y, value_noise(seed, x as f32, y as f32, 4.0 * canvas_unit));
        Some((c, alpha))
    });
    box_of(hit)
}

fn draw_misalignment(canvas: &mut Canvas, cx: f32, cy: f32, offset: f32) -> BoundingBox {
    // Two coupling halves whose faces no longer line up: the step grows with `offset`.
    let u = canvas.unit();
    let (bw, bh) = (26.0 * u, 30.0 * u);
    let step = offset.min(bh * 0.9);
    let left = (cx - bw, cy - bh / 2.0);
    let right = (cx + 3.0 * u, cy - bh / 2.0 + step);
    canvas.fill_rect(left.0 as i32, left.1 as i32, bw as i32, bh as i32, [196, 198, 202]);
    canvas.fill_rect(right.0 as i32, right.1 as i32, bw as i32, bh as i32, [196, 198, 202]);
    canvas.fill_rect(cx as i32, (cy - bh / 2.0) as i32, (3.0 * u) as i32, (bh + step) as i32, [10, 10, 12]);
    box_of((left.0, left.1, right.0 + bw, right.1 + bh))
}

fn draw_missing_bolt(canvas: &mut Canvas, cx: f32, cy: f32, size: f32) -> BoundingBox {
    // An empty threaded hole with a bright seat ring where a bolt head used to be.
    let r = (size / 2.0).max(4.0 * canvas.unit());
    canvas.fill_circle(cx, cy, r, [214, 210, 200]);
    canvas.fill_circle(cx, cy, r * 0.7, [8, 8, 8]);
    box_of((cx - r, cy - r, cx + r, cy + r))
}

/// Draws the bolt that is present before a missing-component defect's onset.
pub fn draw_bolt(canvas: &mut Canvas, cx: f32, cy: f32, size: f32) {
    let r = (size / 2.0).max(4.0 * canvas.unit());
    canvas.fill_circle(cx, cy, r, shade([120, 120, 126], 0.9));
    canvas.fill_circle(cx, cy, r * 0.45, [150, 150, 156]);
}

fn bounds(points: &[(f32, f32)], pad: f32) -> BoundingBox {
    let mut hit = (f32::MAX, f32::MAX, f32::MIN, f32::MIN);
    for &(x, y) in points {
        hit = (hit.0.min(x), hit.1.min(y), hit.2.max(x), hit.3.max(y));
    }
    box_of((hit.0 - pad, hit.1 - pad, hit.2 + pad, hit.3 + pad))
}

fn box_of((x0, y0, x1, y1): (f32, f32, f32, f32)) -> BoundingBox {
    if x1 < x0 {
        return BoundingBox { x: 0.0, y: 0.0, width: 0.0, height: 0.0 };
    }
    BoundingBox { x: x0, y: y0, width: x1 - x0, height: y1 - y0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn luminance(c: [u8; 3]) -> f32 {
        c.iter().map(|&v| f32::from(v)).sum::<f32>() / 3.0
    }

    #[test]
    fn varied_tones_draw_cracks_and_stains_over_one_range_of_darkness() {
        let seeds = 0..200u64;
        let tones = |t: DefectTones, fixed| seeds.clone().map(move |s| luminance(t.dark(s * 7919, fixed)));
        let (crack, stain) = ([12, 10, 10], [22, 18, 14]);
        assert!(tones(DefectTones::Fixed, crack).all(|l| l == luminance(crack)));
        // Varied: a crack is as likely to be the darker of a crack and a stain as not.
        let cracks: Vec<f32> = tones(DefectTones::Varied, crack).collect();
        let stains: Vec<f32> = tones(DefectTones::Varied, stain).collect();
        let pairs = cracks.iter().flat_map(|c| stains.iter().map(move |s| (c, s)));
        let darker = pairs.filter(|(c, s)| c < s).count() as f32 / (cracks.len() * stains.len()) as f32;
        assert!((0.4..0.6).contains(&darker), "cracks darker in {darker} of pairs");
        let spread =
            |v: &[f32]| v.iter().cloned().fold(f32::MIN, f32::max) - v.iter().cloned().fold(f32::MAX, f32::min);
        assert!(spread(&cracks) > 25.0 && spread(&stains) > 25.0);
        assert!(cracks.iter().all(|&l| l < 50.0), "a crack stays dark");
    }

    #[test]
    fn lookalike_lines_darken_the_scene_without_a_label() {
        let mut canvas = Canvas { width: 320, height: 180, pixels: vec![200; 320 * 180 * 3] };
        draw_lookalikes(&mut canvas, 42);
        let dark = canvas.pixels.chunks(3).filter(|p| p.iter().all(|&c| c < 60)).count();
        // At least three lines of 30 px or more, 1.5 px wide or more, mostly in view.
        assert!(dark > 60, "{dark} dark pixels");
        let mut again = Canvas { width: 320, height: 180, pixels: vec![200; 320 * 180 * 3] };
        draw_lookalikes(&mut again, 42);
        assert_eq!(canvas, again, "the same seed draws the same lines");
    }
}
