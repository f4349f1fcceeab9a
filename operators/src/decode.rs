//! The `decode` operator: camera samples in, model-ready frame tensors out, at most
//! `max_fps` frames per second per camera.

use std::collections::HashMap;
use std::sync::Arc;

use defectflow_schemas::FrameMeta;
use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::operator::Operator;

/// Where one colour plane lies in a sample's bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plane {
    /// Byte offset of the plane's first row.
    pub offset: usize,
    /// Bytes from one row to the next (at least the width).
    pub stride: usize,
}

/// A decoded planar-RGB frame (GStreamer's `RGBP`) as it leaves its camera pipeline.
#[derive(Clone, Debug)]
pub struct CameraSample<P> {
    pub meta: FrameMeta,
    /// The R, G and B planes.
    pub planes: [Plane; 3],
    pub pixels: P,
}

impl<P> CameraSample<P> {
    /// The layout of a tightly packed planar frame: planes one after another, no padding.
    pub fn packed_planes(width: u32, height: u32) -> [Plane; 3] {
        let plane = width as usize * height as usize;
        [0, 1, 2].map(|i| Plane { offset: i * plane, stride: width as usize })
    }
}

/// A frame ready for the model: `[3, height, width]` planar RGB, one byte per value.
///
/// Values stay 0–255: the model scales them by 1/255 as its first step, which keeps
/// frames four times smaller than `f32` between decode and inference. When the decoder
/// already wrote the planes back to back, the tensor shares its buffer: no copy.
#[derive(Clone)]
pub struct FrameTensor {
    pub meta: FrameMeta,
    pub data: Arc<dyn AsRef<[u8]> + Send + Sync>,
}

impl std::fmt::Debug for FrameTensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameTensor").field("meta", &self.meta).field("len", &self.bytes().len()).finish()
    }
}

impl FrameTensor {
    /// The `[3, h, w]` values.
    pub fn bytes(&self) -> &[u8] {
        (*self.data).as_ref()
    }

    /// `[channels, height, width]`.
    pub fn shape(&self) -> [usize; 3] {
        [3, self.meta.height as usize, self.meta.width as usize]
    }
}

/// Why a sample could not become a tensor.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("camera {camera}: frame {frame_index} has {got} bytes, its {width}x{height} planes need {need}")]
    ShortBuffer { camera: String, frame_index: u64, width: u32, height: u32, got: usize, need: usize },
}

/// Copies the three planes of a sample into one `[3, h, w]` tensor, dropping row padding.
pub fn planar_tensor<P>(sample: &CameraSample<P>) -> Result<FrameTensor, DecodeError>
where
    P: AsRef<[u8]> + Clone + Send + Sync + 'static,
{
    let (w, h) = (sample.meta.width as usize, sample.meta.height as usize);
    let bytes = sample.pixels.as_ref();
    let need = sample
        .planes
        .iter()
        .map(|p| if h == 0 || p.stride < w { usize::MAX } else { p.offset + p.stride * (h - 1) + w })
        .max()
        .unwrap_or(0);
    if bytes.len() < need {
        return Err(DecodeError::ShortBuffer {
            camera: sample.meta.camera_id.clone(),
            frame_index: sample.meta.frame_index,
            width: sample.meta.width,
            height: sample.meta.height,
            got: bytes.len(),
            need,
        });
    }
    if sample.planes == CameraSample::<P>::packed_planes(sample.meta.width, sample.meta.height)
        && bytes.len() == 3 * w * h
    {
        return Ok(FrameTensor { meta: sample.meta.clone(), data: Arc::new(sample.pixels.clone()) });
    }
    let mut data = vec![0u8; 3 * w * h];
    for (plane, out) in sample.planes.iter().zip(data.chunks_exact_mut(w * h)) {
        for (y, row) in out.chunks_exact_mut(w).enumerate() {
            let start = plane.offset + y * plane.stride;
            row.copy_from_slice(&bytes[start..start + w]);
        }
    }
    Ok(FrameTensor { meta: sample.meta.clone(), data: Arc::new(data) })
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
    ///         .map(move |i| CameraSample { meta: meta(i), planes: CameraSample::<()>::packed_planes(1, 1), pixels: vec![255u8, 0, 0] })
    ///         .to_stream(scope)
    ///         .decode(HashMap::from([("cam".to_string(), 5.0)]), |_, _| {})
    ///         .map(|t| (t.meta.frame_index, t.bytes()[0]))
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

impl<'scope, P: AsRef<[u8]> + Clone + Send + Sync + 'static> Decode<'scope, P>
    for StreamVec<'scope, u64, CameraSample<P>>
{
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
                            match planar_tensor(&sample) {
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
    fn planes_are_copied_without_their_row_padding() {
        // 2x2 frame, each plane's rows padded to 4 bytes with 9s that must not appear.
        let pixels = vec![1, 2, 9, 9, 3, 4, 9, 9, 5, 6, 9, 9, 7, 8, 9, 9, 10, 11, 9, 9, 12, 13, 9, 9];
        let planes = [0, 8, 16].map(|offset| Plane { offset, stride: 4 });
        let tensor = planar_tensor(&CameraSample { meta: meta("c", 0, 0, 2, 2), planes, pixels }).expect("decodes");
        assert_eq!(tensor.shape(), [3, 2, 2]);
        assert_eq!(tensor.bytes(), &[1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13]);
    }

    #[test]
    fn packed_planes_are_shared_not_copied() {
        let pixels: Arc<Vec<u8>> = Arc::new((0..12).collect());
        let sample = CameraSample {
            meta: meta("c", 0, 0, 2, 2),
            planes: CameraSample::<()>::packed_planes(2, 2),
            pixels: ArcBytes(Arc::clone(&pixels)),
        };
        let tensor = planar_tensor(&sample).expect("decodes");
        assert_eq!(tensor.bytes(), &pixels[..]);
        assert_eq!(tensor.bytes().as_ptr(), pixels.as_ptr());
    }

    #[derive(Clone)]
    struct ArcBytes(Arc<Vec<u8>>);

    impl AsRef<[u8]> for ArcBytes {
        fn as_ref(&self) -> &[u8] {
            &self.0
        }
    }

    #[test]
    fn short_buffer_names_camera_and_frame() {
        let planes = CameraSample::<()>::packed_planes(4, 4);
        let err = planar_tensor(&CameraSample { meta: meta("cam-7", 41, 0, 4, 4), planes, pixels: vec![0u8; 20] })
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
