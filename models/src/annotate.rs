//! Evidence images: a frame with the defect's boundary and label drawn, as JPEG.

use defectflow_schemas::BoundingBox;

use crate::plot::text;
use crate::synth::raster::Canvas;

/// JPEG quality of evidence images: fine cracks stay visible at ~50 KB for 640×360.
pub const JPEG_QUALITY: u8 = 90;

/// Why an evidence image could not be made.
#[derive(Debug, thiserror::Error)]
pub enum AnnotateError {
    #[error("frame of {width}×{height} needs {expected} bytes, got {got}")]
    Size { width: usize, height: usize, expected: usize, got: usize },
    #[error("JPEG encoding: {0}")]
    Encode(String),
}

/// The frame (`[3, height, width]` bytes, as the model sees it) with `bbox` outlined and
/// `label` written above it (below, when the box touches the top), encoded as JPEG.
/// The same inputs give the same bytes.
pub fn evidence_jpeg(
    planar: &[u8],
    width: usize,
    height: usize,
    bbox: &BoundingBox,
    label: &str,
) -> Result<Vec<u8>, AnnotateError> {
    let mut canvas = interleaved(planar, width, height)?;
    outline(&mut canvas, bbox);
    let scale = if height >= 480 { 2 } else { 1 };
    let (glyph_h, glyph_w) = (10 * scale, 8 * scale);
    let label = label.to_uppercase();
    let (x, y) = (bbox.x.round() as i32, bbox.y.round() as i32);
    let below = y - glyph_h - 4 < 0;
    let ty = if below { (bbox.y + bbox.height).round() as i32 + 3 } else { y - glyph_h - 3 };
    let tw = label.chars().count() as i32 * glyph_w;
    canvas.fill_rect(x - 1, ty - 2, tw + 2, glyph_h + 2, BOX);
    text(&mut canvas, x + 1, ty, &label, scale, INK);
    encode(&canvas)
}

/// The frame as the model saw it, nothing drawn, encoded as JPEG: what a model learns
/// from (`defectflow harvest`). The same inputs give the same bytes.
pub fn frame_jpeg(planar: &[u8], width: usize, height: usize) -> Result<Vec<u8>, AnnotateError> {
    encode(&interleaved(planar, width, height)?)
}

/// The width and height of a JPEG image, from its header.
pub fn jpeg_size(jpeg: &[u8]) -> Option<(u32, u32)> {
    use image::ImageDecoder;
    let decoder = image::codecs::jpeg::JpegDecoder::new(std::io::Cursor::new(jpeg)).ok()?;
    Some(decoder.dimensions())
}

/// `[3, height, width]` planes as an RGB canvas.
fn interleaved(planar: &[u8], width: usize, height: usize) -> Result<Canvas, AnnotateError> {
    let plane = width * height;
    if planar.len() != 3 * plane {
        return Err(AnnotateError::Size { width, height, expected: 3 * plane, got: planar.len() });
    }
    let mut pixels = vec![0u8; 3 * plane];
    for (i, rgb) in pixels.chunks_exact_mut(3).enumerate() {
        rgb.copy_from_slice(&[planar[i], planar[plane + i], planar[2 * plane + i]]);
    }
    Ok(Canvas { width: width as u32, height: height as u32, pixels })
}

fn encode(canvas: &Canvas) -> Result<Vec<u8>, AnnotateError> {
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, JPEG_QUALITY)
        .encode(&canvas.pixels, canvas.width, canvas.height, image::ExtendedColorType::Rgb8)
        .map_err(|e| AnnotateError::Encode(e.to_string()))?;
    Ok(jpeg)
}

const BOX: [u8; 3] = [255, 40, 40];
const INK: [u8; 3] = [255, 255, 255];

/// A 2-pixel rectangle just outside `bbox`, so the defect itself stays visible.
fn outline(canvas: &mut Canvas, bbox: &BoundingBox) {
    let (x0, y0) = (bbox.x.floor() as i32 - 2, bbox.y.floor() as i32 - 2);
    let (x1, y1) = ((bbox.x + bbox.width).ceil() as i32, (bbox.y + bbox.height).ceil() as i32);
    let (w, h) = (x1 - x0 + 2, y1 - y0 + 2);
    canvas.fill_rect(x0, y0, w, 2, BOX);
    canvas.fill_rect(x0, y1, w, 2, BOX);
    canvas.fill_rect(x0, y0, 2, h, BOX);
    canvas.fill_rect(x1, y0, 2, h, BOX);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_box_is_drawn_around_the_defect_and_the_bytes_repeat() {
        let (w, h) = (64, 48);
        let planar = vec![100u8; 3 * w * h];
        let bbox = BoundingBox { x: 20.0, y: 20.0, width: 10.0, height: 8.0 };
        let jpeg = evidence_jpeg(&planar, w, h, &bbox, "crack 0.93").expect("encodes");
        assert_eq!(jpeg, evidence_jpeg(&planar, w, h, &bbox, "crack 0.93").expect("encodes"));
        let image = image::load_from_memory(&jpeg).expect("decodes").to_rgb8();
        assert_eq!((image.width(), image.height()), (w as u32, h as u32));
        // The outline is red; inside the box the frame is untouched; far away too.
        let red = image.get_pixel(19, 24).0;
        assert!(red[0] > 200 && red[1] < 90, "{red:?}");
        for (x, y) in [(25, 24), (60, 45)] {
            let p = image.get_pixel(x, y).0;
            assert!(p.iter().all(|v| v.abs_diff(100) < 12), "({x},{y}) {p:?}");
        }
        let err = evidence_jpeg(&planar[1..], w, h, &bbox, "x").expect_err("short frame");
        assert!(err.to_string().contains("64×48"), "{err}");
    }
}
