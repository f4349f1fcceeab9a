//! A small RGB canvas with the drawing primitives the scene generator needs.

/// Packed RGB8 image, row-major, origin top-left.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Canvas {
    pub width: u32,
    pub height: u32,
    pub pixels: Vec<u8>,
}

pub type Rgb = [u8; 3];

/// Width of the view the generator's sizes are set for.
pub const REFERENCE_WIDTH: u32 = 640;

/// See [`Canvas::unit`]: exactly 1 at the reference width, so that view is drawn
/// the same to the bit.
pub fn unit(width: u32) -> f32 {
    width as f32 / REFERENCE_WIDTH as f32
}

impl Canvas {
    pub fn new(width: u32, height: u32, fill: Rgb) -> Canvas {
        let mut pixels = Vec::with_capacity(width as usize * height as usize * 3);
        for _ in 0..width as usize * height as usize {
            pixels.extend_from_slice(&fill);
        }
        Canvas { width, height, pixels }
    }

    /// How many of this canvas's pixels stand for one pixel of the generator's
    /// 640-pixel-wide reference view. The generator's sizes (a crack's length, a bolt,
    /// a texture's grain) are set for that view; a wider view of the same scene draws
    /// them in proportion, as a camera of higher resolution sees the same plant.
    pub fn unit(&self) -> f32 {
        unit(self.width)
    }

    fn index(&self, x: i32, y: i32) -> Option<usize> {
        (x >= 0 && y >= 0 && (x as u32) < self.width && (y as u32) < self.height)
            .then(|| (y as usize * self.width as usize + x as usize) * 3)
    }

    pub fn get(&self, x: i32, y: i32) -> Option<Rgb> {
        self.index(x, y).map(|i| [self.pixels[i], self.pixels[i + 1], self.pixels[i + 2]])
    }

    /// Blends `color` over the pixel with opacity `alpha` in `[0, 1]`.
    pub fn blend(&mut self, x: i32, y: i32, color: Rgb, alpha: f32) {
        if let Some(i) = self.index(x, y) {
            let a = alpha.clamp(0.0, 1.0);
            for (px, &target) in self.pixels[i..i + 3].iter_mut().zip(&color) {
                let old = *px as f32;
                *px = (old + (target as f32 - old) * a).round() as u8;
            }
        }
    }

    pub fn set(&mut self, x: i32, y: i32, color: Rgb) {
        if let Some(i) = self.index(x, y) {
            self.pixels[i..i + 3].copy_from_slice(&color);
        }
    }

    /// Fills every pixel for which `shade` returns a colour, within the given bounds.
    pub fn paint(&mut self, x0: i32, y0: i32, x1: i32, y1: i32, mut shade: impl FnMut(i32, i32) -> Option<(Rgb, f32)>) {
        let x0 = x0.max(0);
        let y0 = y0.max(0);
        let x1 = x1.min(self.width as i32);
        let y1 = y1.min(self.height as i32);
        for y in y0..y1 {
            for x in x0..x1 {
                if let Some((color, alpha)) = shade(x, y) {
                    self.blend(x, y, color, alpha);
                }
            }
        }
    }

    pub fn fill_rect(&mut self, x: i32, y: i32, w: i32, h: i32, color: Rgb) {
        self.paint(x, y, x + w, y + h, |_, _| Some((color, 1.0)));
    }

    pub fn fill_circle(&mut self, cx: f32, cy: f32, r: f32, color: Rgb) {
        let (x0, y0) = ((cx - r).floor() as i32, (cy - r).floor() as i32);
        let (x1, y1) = ((cx + r).ceil() as i32 + 1, (cy + r).ceil() as i32 + 1);
        self.paint(x0, y0, x1, y1, |x, y| {
            let d = ((x as f32 - cx).powi(2) + (y as f32 - cy).powi(2)).sqrt();
            (d <= r).then_some((color, (r - d + 0.5).min(1.0)))
        });
    }

    /// A straight line of the given thickness.
    pub fn line(&mut self, (ax, ay): (f32, f32), (bx, by): (f32, f32), thickness: f32, color: Rgb) {
        let half = thickness / 2.0;
        let x0 = ax.min(bx) - half - 1.0;
        let y0 = ay.min(by) - half - 1.0;
        let x1 = ax.max(bx) + half + 2.0;
        let y1 = ay.max(by) + half + 2.0;
        let (dx, dy) = (bx - ax, by - ay);
        let len2 = (dx * dx + dy * dy).max(1e-6);
        self.paint(x0 as i32, y0 as i32, x1 as i32, y1 as i32, |x, y| {
            let (px, py) = (x as f32 - ax, y as f32 - ay);
            let t = ((px * dx + py * dy) / len2).clamp(0.0, 1.0);
            let d = ((px - t * dx).powi(2) + (py - t * dy).powi(2)).sqrt();
            (d <= half + 0.5).then_some((color, (half + 0.5 - d).min(1.0)))
        });
    }
}

/// Deterministic integer hash (splitmix-like) used for textures and noise.
pub fn hash(mut v: u64) -> u64 {
    v = v.wrapping_add(0x9E37_79B9_7F4A_7C15);
    v = (v ^ (v >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    v = (v ^ (v >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    v ^ (v >> 31)
}

/// Hash of a 2-D lattice point mapped to `[0, 1)`.
pub fn lattice(seed: u64, x: i32, y: i32) -> f32 {
    let h = hash(seed ^ ((x as u32 as u64) << 32 | y as u32 as u64));
    (h >> 40) as f32 / (1u64 << 24) as f32
}

/// Smooth value noise in `[0, 1)` with the given cell size in pixels.
pub fn value_noise(seed: u64, x: f32, y: f32, cell: f32) -> f32 {
    let (fx, fy) = (x / cell, y / cell);
    let (ix, iy) = (fx.floor() as i32, fy.floor() as i32);
    let (tx, ty) = (fx - ix as f32, fy - iy as f32);
    let (sx, sy) = (tx * tx * (3.0 - 2.0 * tx), ty * ty * (3.0 - 2.0 * ty));
    let a = lattice(seed, ix, iy);
    let b = lattice(seed, ix + 1, iy);
    let c = lattice(seed, ix, iy + 1);
    let d = lattice(seed, ix + 1, iy + 1);
    let top = a + (b - a) * sx;
    let bottom = c + (d - c) * sx;
    top + (bottom - top) * sy
}

/// Scales a colour by `k`, saturating.
pub fn shade(color: Rgb, k: f32) -> Rgb {
    color.map(|c| (c as f32 * k).clamp(0.0, 255.0) as u8)
}
