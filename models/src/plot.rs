//! A PNG of an evaluation: object precision, recall and F1 per class as bars, and the
//! object confusion matrix as a heat map, labelled with a small built-in bitmap font.

use std::path::Path;

use crate::metrics::EvalReport;
use crate::synth::raster::Canvas;

/// Why the plot could not be written.
#[derive(Debug, thiserror::Error)]
#[error("{path}: cannot write plot: {reason}")]
pub struct PlotError {
    pub path: String,
    pub reason: String,
}

const WHITE: [u8; 3] = [255, 255, 255];
const INK: [u8; 3] = [30, 30, 30];
const GRID: [u8; 3] = [220, 220, 220];
const SERIES: [[u8; 3]; 3] = [[66, 114, 196], [221, 132, 82], [85, 168, 104]];

/// Draws the report and writes it as PNG.
pub fn write_png(report: &EvalReport, path: &Path) -> Result<(), PlotError> {
    let canvas = draw(report);
    image::save_buffer(path, &canvas.pixels, canvas.width, canvas.height, image::ExtendedColorType::Rgb8)
        .map_err(|e| PlotError { path: path.display().to_string(), reason: e.to_string() })
}

/// The plot as an RGB canvas.
pub fn draw(report: &EvalReport) -> Canvas {
    let mut c = Canvas::new(1040, 440, WHITE);
    text(&mut c, 20, 12, "OBJECT PRECISION RECALL F1 PER CLASS (IOU>=0.3)", 2, INK);
    // Bars: y from 0.80 to 1.00 over 300 px, so differences near the goal are visible.
    let (x0, y0, h) = (60, 50, 300);
    for k in 0..=4 {
        let v = 0.8 + 0.05 * k as f32;
        let y = y0 + h - (k * h / 4);
        c.fill_rect(x0, y, 440, 1, GRID);
        text(&mut c, 20, y - 4, &format!("{v:.2}"), 1, INK);
    }
    for (i, class) in report.classes.iter().enumerate() {
        let o = &class.objects;
        for (s, value) in [o.precision, o.recall, o.f1].into_iter().enumerate() {
            let clamped = ((value as f32 - 0.8) / 0.2).clamp(0.0, 1.0);
            let bar = (clamped * h as f32) as i32;
            c.fill_rect(x0 + 8 + i as i32 * 72 + s as i32 * 20, y0 + h - bar, 18, bar.max(1), SERIES[s]);
        }
        let short: String = class.class.to_uppercase().chars().take(7).collect();
        text(&mut c, x0 + 4 + i as i32 * 72, y0 + h + 10, &short, 1, INK);
    }
    for (s, name) in ["PRECISION", "RECALL", "F1"].iter().enumerate() {
        c.fill_rect(x0 + s as i32 * 120, y0 + h + 34, 10, 10, SERIES[s]);
        text(&mut c, x0 + 14 + s as i32 * 120, y0 + h + 35, name, 1, INK);
    }
    // Confusion matrix, each row shaded by its share of the row total.
    let (mx, my, cell) = (640, 70, 48);
    text(&mut c, mx - 60, 12 + 24, "CONFUSION: ROWS LABELLED, COLUMNS DETECTED", 1, INK);
    for (r, row) in report.confusion.iter().enumerate() {
        let total: u64 = row.iter().sum();
        let label: String = report.confusion_labels[r].to_uppercase().chars().take(4).collect();
        text(&mut c, mx - 36, my + r as i32 * cell + cell / 2 - 3, &label, 1, INK);
        for (col, n) in row.iter().enumerate() {
            let share = if total == 0 { 0.0 } else { *n as f32 / total as f32 };
            let shade = (255.0 - share * 200.0) as u8;
            let (x, y) = (mx + col as i32 * cell, my + r as i32 * cell);
            c.fill_rect(x, y, cell - 2, cell - 2, [shade, shade, 255]);
            text(&mut c, x + 4, y + cell / 2 - 3, &n.to_string(), 1, INK);
        }
    }
    for col in 0..report.confusion_labels.len() {
        let label: String = report.confusion_labels[col].to_uppercase().chars().take(4).collect();
        text(&mut c, mx + col as i32 * cell + 4, my + 7 * cell + 6, &label, 1, INK);
    }
    c
}

/// Writes `s` (upper case, digits and a little punctuation) with the 3×5 font at
/// `scale` (pixels per font dot, ×2 for spacing).
pub fn text(c: &mut Canvas, x: i32, y: i32, s: &str, scale: i32, color: [u8; 3]) {
    let dot = scale * 2;
    for (i, ch) in s.chars().enumerate() {
        let Some(rows) = glyph(ch) else { continue };
        for (r, bits) in rows.iter().enumerate() {
            for b in 0..3 {
                if bits & (0b100 >> b) != 0 {
                    c.fill_rect(x + i as i32 * 4 * dot + b * dot, y + r as i32 * dot, dot, dot, color);
                }
            }
        }
    }
}

/// Rows of a 3×5 glyph, top to bottom, high bit on the left.
fn glyph(ch: char) -> Option<[u8; 5]> {
    Some(match ch {
        '0' => [7, 5, 5, 5, 7],
        '1' => [2, 6, 2, 2, 7],
        '2' => [7, 1, 7, 4, 7],
        '3' => [7, 1, 7, 1, 7],
        '4' => [5, 5, 7, 1, 1],
        '5' => [7, 4, 7, 1, 7],
        '6' => [7, 4, 7, 5, 7],
        '7' => [7, 1, 1, 1, 1],
        '8' => [7, 5, 7, 5, 7],
        '9' => [7, 5, 7, 1, 7],
        'A' => [2, 5, 7, 5, 5],
        'B' => [6, 5, 6, 5, 6],
        'C' => [7, 4, 4, 4, 7],
        'D' => [6, 5, 5, 5, 6],
        'E' => [7, 4, 6, 4, 7],
        'F' => [7, 4, 6, 4, 4],
        'G' => [7, 4, 5, 5, 7],
        'H' => [5, 5, 7, 5, 5],
        'I' => [7, 2, 2, 2, 7],
        'J' => [1, 1, 1, 5, 7],
        'K' => [5, 5, 6, 5, 5],
        'L' => [4, 4, 4, 4, 7],
        'M' => [5, 7, 7, 5, 5],
        'N' => [6, 5, 5, 5, 5],
        'O' => [7, 5, 5, 5, 7],
        'P' => [7, 5, 7, 4, 4],
        'Q' => [7, 5, 5, 7, 1],
        'R' => [6, 5, 6, 5, 5],
        'S' => [7, 4, 7, 1, 7],
        'T' => [7, 2, 2, 2, 2],
        'U' => [5, 5, 5, 5, 7],
        'V' => [5, 5, 5, 5, 2],
        'W' => [5, 5, 7, 7, 5],
        'X' => [5, 5, 2, 5, 5],
        'Y' => [5, 5, 2, 2, 2],
        'Z' => [7, 1, 2, 4, 7],
        '.' => [0, 0, 0, 0, 2],
        ':' => [0, 2, 0, 2, 0],
        '-' => [0, 0, 7, 0, 0],
        '_' => [0, 0, 0, 0, 7],
        '=' => [0, 7, 0, 7, 0],
        '>' => [4, 2, 1, 2, 4],
        '(' => [1, 2, 2, 2, 1],
        ')' => [4, 2, 2, 2, 4],
        _ => return None,
    })
}
