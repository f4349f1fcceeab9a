//! The plant assets the generator draws, each on a textured background.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::raster::{Canvas, Rgb, shade, value_noise};

/// Kinds of plant equipment a synthetic camera can look at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AssetKind {
    ConveyorPulley,
    MotorHousing,
    BoltedFlange,
    PipeSection,
    Gearbox,
    Belt,
}

impl AssetKind {
    pub const ALL: [AssetKind; 6] = [
        AssetKind::ConveyorPulley,
        AssetKind::MotorHousing,
        AssetKind::BoltedFlange,
        AssetKind::PipeSection,
        AssetKind::Gearbox,
        AssetKind::Belt,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AssetKind::ConveyorPulley => "conveyor_pulley",
            AssetKind::MotorHousing => "motor_housing",
            AssetKind::BoltedFlange => "bolted_flange",
            AssetKind::PipeSection => "pipe_section",
            AssetKind::Gearbox => "gearbox",
            AssetKind::Belt => "belt",
        }
    }
}

impl fmt::Display for AssetKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is not one of the generator's asset kinds.
#[derive(Debug, thiserror::Error)]
#[error(
    "unknown asset kind `{0}` (expected conveyor_pulley, motor_housing, bolted_flange, pipe_section, gearbox or belt)"
)]
pub struct UnknownAssetKind(pub String);

impl FromStr for AssetKind {
    type Err = UnknownAssetKind;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL.into_iter().find(|k| k.as_str() == s).ok_or_else(|| UnknownAssetKind(s.to_owned()))
    }
}

/// The region of the frame the asset covers; defects are placed inside it.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct AssetRegion {
    pub x: f32,
    pub y: f32,
    pub width: f32,
    pub height: f32,
}

/// Draws the static part of a scene: background and asset, without defects.
pub fn draw_scene(kind: AssetKind, width: u32, height: u32, seed: u64) -> (Canvas, AssetRegion) {
    let mut canvas = Canvas::new(width, height, [0, 0, 0]);
    let (w, h) = (width as f32, height as f32);
    let u = canvas.unit();
    // Concrete wall above a darker floor, both with low-frequency blotches.
    let floor_y = (h * 0.78) as i32;
    canvas.paint(0, 0, width as i32, height as i32, |x, y| {
        let n = value_noise(seed, x as f32, y as f32, 23.0 * u) * 0.6
            + value_noise(seed ^ 0xA5, x as f32, y as f32, 5.0 * u) * 0.4;
        let base: Rgb = if y < floor_y { [128, 126, 120] } else { [88, 90, 92] };
        Some((shade(base, 0.8 + 0.35 * n), 1.0))
    });
    let region = match kind {
        AssetKind::ConveyorPulley => {
            let (cx, cy, r) = (w * 0.5, h * 0.47, h * 0.36);
            // Belt leaving the drum to the right.
            canvas.fill_rect((cx) as i32, (cy - r) as i32, (w - cx) as i32, (r * 0.22) as i32, [38, 38, 40]);
            canvas.paint((cx - r) as i32, (cy - r) as i32, (cx + r) as i32 + 1, (cy + r) as i32 + 1, |x, y| {
                let (dx, dy) = (x as f32 - cx, y as f32 - cy);
                let d = (dx * dx + dy * dy).sqrt();
                if d > r {
                    return None;
                }
                // Diamond lagging pattern on a steel drum.
                let diamond = ((dx + dy).rem_euclid(14.0 * u) < 1.5 * u) || ((dx - dy).rem_euclid(14.0 * u) < 1.5 * u);
                let k = 1.05 - 0.35 * (d / r);
                let base: Rgb = if diamond { [70, 72, 76] } else { [150, 152, 156] };
                Some((shade(base, k), 1.0))
            });
            canvas.fill_circle(cx, cy, r * 0.16, [60, 60, 64]);
            canvas.fill_circle(cx, cy, r * 0.07, [25, 25, 25]);
            AssetRegion { x: cx - r, y: cy - r, width: 2.0 * r, height: 2.0 * r }
        }
        AssetKind::MotorHousing => {
            let (x0, y0, mw, mh) = (w * 0.22, h * 0.2, w * 0.56, h * 0.5);
            let body: Rgb = [46, 84, 140];
            canvas.paint(x0 as i32, y0 as i32, (x0 + mw) as i32, (y0 + mh) as i32, |_, y| {
                let fin = ((y as f32 - y0) % (10.0 * u)) < 3.0 * u;
                let k = 0.8 + 0.4 * ((y as f32 - y0) / mh - 0.5).abs().mul_add(-1.0, 1.0);
                Some((shade(if fin { shade(body, 0.7) } else { body }, k), 1.0))
            });
            // Terminal box and feet.
            canvas.fill_rect(
                (x0 + mw * 0.35) as i32,
                (y0 - h * 0.08) as i32,
                (mw * 0.3) as i32,
                (h * 0.08) as i32,
                [40, 72, 120],
            );
            canvas.fill_rect(
                (x0 + mw * 0.05) as i32,
                (y0 + mh) as i32,
                (mw * 0.9) as i32,
                (h * 0.06) as i32,
                [50, 50, 55],
            );
            AssetRegion { x: x0, y: y0, width: mw, height: mh }
        }
        AssetKind::BoltedFlange => {
            let (cx, cy, r) = (w * 0.5, h * 0.45, h * 0.33);
            canvas.fill_rect(0, (cy - r * 0.55) as i32, width as i32, (r * 1.1) as i32, [112, 118, 104]);
            canvas.fill_circle(cx, cy, r, [132, 134, 138]);
            canvas.fill_circle(cx, cy, r * 0.55, [108, 110, 114]);
            for i in 0..8 {
                let a = i as f32 * std::f32::consts::TAU / 8.0;
                canvas.fill_circle(cx + a.cos() * r * 0.78, cy + a.sin() * r * 0.78, r * 0.08, [72, 72, 76]);
            }
            AssetRegion { x: cx - r, y: cy - r, width: 2.0 * r, height: 2.0 * r }
        }
        AssetKind::PipeSection => {
            let (y0, ph) = (h * 0.3, h * 0.36);
            canvas.paint(0, y0 as i32, width as i32, (y0 + ph) as i32, |x, y| {
                let t = (y as f32 - y0) / ph;
                let k = 0.55 + 0.7 * (1.0 - (2.0 * t - 1.0).powi(2));
                let weld = (x as f32 % (w * 0.33)) < 4.0 * u;
                Some((shade(if weld { [150, 140, 120] } else { [60, 118, 82] }, k), 1.0))
            });
            AssetRegion { x: 0.0, y: y0, width: w, height: ph }
        }
        AssetKind::Gearbox => {
            let (x0, y0, gw, gh) = (w * 0.25, h * 0.18, w * 0.5, h * 0.56);
            canvas.paint(x0 as i32, y0 as i32, (x0 + gw) as i32, (y0 + gh) as i32, |x, _| {
                let rib = ((x as f32 - x0) % (24.0 * u)) < 4.0 * u;
                Some((if rib { [170, 140, 30] } else { [214, 176, 44] }, 1.0))
            });
            canvas.fill_rect(
                (x0 - w * 0.1) as i32,
                (y0 + gh * 0.45) as i32,
                (w * 0.1) as i32,
                (gh * 0.12) as i32,
                [90, 90, 95],
            );
            canvas.fill_rect(
                (x0 + gw) as i32,
                (y0 + gh * 0.3) as i32,
                (w * 0.1) as i32,
                (gh * 0.12) as i32,
                [90, 90, 95],
            );
            AssetRegion { x: x0, y: y0, width: gw, height: gh }
        }
        AssetKind::Belt => {
            let (y0, bh) = (h * 0.32, h * 0.3);
            canvas.paint(0, y0 as i32, width as i32, (y0 + bh) as i32, |x, y| {
                let n = value_noise(seed ^ 0xBE17, x as f32, y as f32, 3.0 * u);
                let groove = ((y as f32 - y0) % (16.0 * u)) < 2.0 * u;
                Some((shade([44, 44, 46], if groove { 0.7 } else { 0.9 + 0.3 * n }), 1.0))
            });
            for i in 0..5 {
                let x = w * (0.1 + 0.2 * i as f32);
                canvas.fill_circle(x, y0 + bh + h * 0.06, h * 0.05, [100, 100, 104]);
            }
            AssetRegion { x: 0.0, y: y0, width: w, height: bh }
        }
    };
    (canvas, region)
}
