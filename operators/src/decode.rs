//! The `decode` operator: camera samples in, model-ready frame tensors out, at most
//! `max_fps` frames per second per camera.

use std::collections::HashMap;
use std::sync::Arc;

use defectflow_schemas::FrameMeta;
use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::operator::Operator;

/// A decoded RGB frame as it leaves its camera pipeline.
#[derive(Clone, Debug)]
pub struct CameraSample<P> {
    pub meta: FrameMeta,
    /// Bytes from one row to the next (at least `3 × width`).
    pub stride: usize,
    /// Packed RGB8 rows, `stride × height` bytes.
    pub pixels: P,
}

/// A frame ready for the model: `[3, height, width]` planar RGB, values in `[0, 1]`.
#[derive(Clone, Debug)]
pub struct FrameTensor {
    pub meta: FrameMeta,
    pub data: Arc<[f32]>,
}

impl FrameTensor {
    /// `[channels, height, width]`.
    pub fn shape(&self) -> [usize; 3] {
        [3, self.meta.height as usize, self.meta.width as usize]
    }
}

/// Why a sample could not become a tensor.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error(
        "camera {camera}: frame {frame_index} has {got} bytes, {width}x{height} RGB with stride {stride} needs {need}"
    )]
    ShortBuffer { camera: String, frame_index: u64, width: u32, height: u32, stride: usize, got: usize, need: usize },
}

/// Converts packed RGB rows into a planar `[3, h, w]` tensor scaled to `[0, 1]`.
pub fn rgb_to_tensor<P: AsRef<[u8]>>(sample: &CameraSample<P>) -> Result<FrameTensor, DecodeError> {
    let (w, h) = (sample.meta.width as usize, sample.meta.height as usize);
    let bytes = sample.pixels.as_ref();
    let need = if h == 0 { 0 } else { sample.stride * (h - 1) + 3 * w };
    if bytes.len() < need || sample.stride < 3 * w {
        return Err(DecodeError::ShortBuffer {
            camera: sample.meta.camera_id.clone(),
            frame_index: sample.meta.frame_index,
            width: sample.meta.width,
            height: sample.meta.height,
            stride: sample.stride,
            got: bytes.len(),
            need,
        });
    }
    let plane = w * h;
    let mut data = vec![0f32; 3 * plane];
    let (r, rest) = data.split_at_mut(plane);
    let (g, b) = rest.split_at_mut(plane);
    const SCALE: f32 = 1.0 / 255.0;
    for y in 0..h {
        let row = &bytes[y * sample.stride..y * sample.stride + 3 * w];
        let out = y * w..(y + 1) * w;
        for (((px, r), g), b) in row.chunks_exact(3).zip(&mut r[out.clone()]).zip(&mut g[out.clone()]).zip(&mut b[out])
        {
            *r = px[0] as f32 * SCALE;
            *g = px[1] as f32 * SCALE;
            *b = px[2] as f32 * SCALE;
        }
    }
    Ok(FrameTensor { meta: sample.meta.clone(), data: data.into() })
}

/// Keeps at most `max_fps` frames a second of one camera, by event time.
///
/// Time is cut into slots of `1 / max_fps` seconds and the first frame of each slot is
/// kept, so the long-run rate is exact whatever the camera's own rate.
#[derive(Clone, Debug, Default)]
pub struct FrameRateLimiter {
    last_slot: HashMap<String, u64>,
}

impl FrameRateLimiter {
    /// Whether to keep this frame; `None` as `max_fps` keeps every frame.
    pub fn admit(&mut self, meta: &FrameMeta, max_fps: Option<f64>) -> bool {
        let Some(max_fps) = max_fps.filter(|f| *f > 0.0) else { return true };
        let slot = (meta.capture_ms as f64 * max_fps / 1000.0).floor() as u64;
        match self.last_slot.get_mut(&meta.camera_id) {
            Some(last) if *last >= slot => false,
            Some(last) => {
                *last = slot;
                true
            }
            None => {
                self.last_slot.insert(meta.camera_id.clone(), slot);
                true
            }
        }
    }
}

/// What `decode` did with each sample, reported to the caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecodeOutcome {
    Kept,
    /// Dropped by the camera's frame-rate limit.
    Sampled,
    Failed(DecodeError),
}

/// Turns camera samples into frame tensors.
pub trait Decode<'scope, P> {
    /// Rate-limits each camera to its `max_fps` (cameras absent from the map are not
    /// limited) and converts the frames kept. `observe` sees every sample's outcome.
    ///
    /// # Examples
    /// ```
    /// use std::collections::HashMap;
    /// use defectflow_operators::decode::{CameraSample, Decode};
    /// use defectflow_schemas::FrameMeta;
    /// use timely::dataflow::operators::capture::{Capture, Extract};
    /// use timely::dataflow::operators::vec::{Map, ToStream};
    ///
    /// let frames = timely::example(|scope| {
    ///     let meta = |i: u64| FrameMeta { camera_id: "cam".into(), frame_index: i, capture_ms: i * 100, pts_ns: None, width: 1, height: 1 };
    ///     (0..10u64)
    ///         .map(move |i| CameraSample { meta: meta(i), stride: 3, pixels: vec![255u8, 0, 0] })
    ///         .to_stream(scope)
    ///         .decode(HashMap::from([("cam".to_string(), 5.0)]), |_, _| {})
    ///         .map(|t| (t.meta.frame_index, (t.data[0] * 255.0) as u8))
    ///         .capture()
    /// });
    /// let kept: Vec<_> = frames.extract().into_iter().flat_map(|(_, v)| v).collect();
    /// assert_eq!(kept, vec![(0, 255), (2, 255), (4, 255), (6, 255), (8, 255)]);
    /// ```
    fn decode(
        self,
        max_fps: HashMap<String, f64>,
        observe: impl FnMut(&FrameMeta, &DecodeOutcome) + 'static,
    ) -> StreamVec<'scope, u64, FrameTensor>;
}

impl<'scope, P: AsRef<[u8]> + 'static> Decode<'scope, P> for StreamVec<'scope, u64, CameraSample<P>> {
    fn decode(
        self,
        max_fps: HashMap<String, f64>,
        mut observe: impl FnMut(&FrameMeta, &DecodeOutcome) + 'static,
    ) -> StreamVec<'scope, u64, FrameTensor> {
        let mut limiter = FrameRateLimiter::default();
        self.unary(Pipeline, "Decode", move |_, _| {
            move |input, output| {
                input.for_each(|time, samples| {
                    let mut session = output.session(&time);
                    for sample in samples.drain(..) {
                        let limit = max_fps.get(&sample.meta.camera_id).copied();
                        let outcome = if !limiter.admit(&sample.meta, limit) {
                            DecodeOutcome::Sampled
                        } else {
                            match rgb_to_tensor(&sample) {
                                Ok(tensor) => {
                                    session.give(tensor);
                                    DecodeOutcome::Kept
                                }
                                Err(error) => DecodeOutcome::Failed(error),
                            }
                        };
                        observe(&sample.meta, &outcome);
                    }
                });
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(camera: &str, index: u64, capture_ms: u64, width: u32, height: u32) -> FrameMeta {
        FrameMeta { camera_id: camera.into(), frame_index: index, capture_ms, pts_ns: None, width, height }
    }

    #[test]
    fn tensor_is_planar_and_skips_row_padding() {
        // 2x2 frame, stride 8: two bytes of padding per row that must be ignored.
        let pixels = vec![255, 0, 0, 0, 255, 0, 9, 9, 0, 0, 255, 255, 255, 255, 9, 9];
        let tensor = rgb_to_tensor(&CameraSample { meta: meta("c", 0, 0, 2, 2), stride: 8, pixels }).expect("decodes");
        assert_eq!(tensor.shape(), [3, 2, 2]);
        assert_eq!(&tensor.data[0..4], &[1.0, 0.0, 0.0, 1.0]);
        assert_eq!(&tensor.data[4..8], &[0.0, 1.0, 0.0, 1.0]);
        assert_eq!(&tensor.data[8..12], &[0.0, 0.0, 1.0, 1.0]);
    }

    #[test]
    fn short_buffer_names_camera_and_frame() {
        let err = rgb_to_tensor(&CameraSample { meta: meta("cam-7", 41, 0, 4, 4), stride: 12, pixels: vec![0u8; 20] })
            .expect_err("too short");
        assert!(err.to_string().contains("cam-7") && err.to_string().contains("frame 41"), "{err}");
    }

    #[test]
    fn limiter_keeps_the_configured_rate_per_camera() {
        let mut limiter = FrameRateLimiter::default();
        // 30 fps for 10 s on two cameras; one limited to 15 fps, the other unlimited.
        let mut kept = (0, 0);
        for i in 0..300u64 {
            let t = i * 1000 / 30;
            kept.0 += limiter.admit(&meta("a", i, t, 1, 1), Some(15.0)) as u32;
            kept.1 += limiter.admit(&meta("b", i, t, 1, 1), None) as u32;
        }
        assert_eq!(kept, (150, 300));
    }
}
