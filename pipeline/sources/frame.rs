//! A decoded frame as it leaves a camera's pipeline, and the buffers its pixels live
//! in, which the camera recycles.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use gstreamer as gst;
use gstreamer_video as gst_video;

use defectflow_operators::decode::Plane;

use super::TimeBase;
use crate::clock::now_ms;

/// Planar RGB bytes of one decoded frame, copied out of GStreamer's buffer as it
/// arrives. Holding GStreamer's buffer instead kept it from its pool while the frame
/// waited in the camera's queue; a pool grows to what is held at once and never shrinks,
/// so every backlog left its size behind until the camera stopped (the soak measured
/// it). The copy goes into a buffer the camera recycles: a few are kept for its next
/// frames, the rest are freed once their frame is done.
#[derive(Clone, Debug)]
pub struct FramePixels(Arc<Recycled>);

impl AsRef<[u8]> for FramePixels {
    fn as_ref(&self) -> &[u8] {
        &self.0.bytes
    }
}

/// Frame buffers a camera keeps for reuse.
pub(crate) type Spare = Arc<Mutex<Vec<Vec<u8>>>>;

/// Buffers kept per camera: enough for the frames between the queue and decode in
/// steady flow; more held during a backlog are freed afterwards.
const SPARE_FRAMES: usize = 4;

#[derive(Debug)]
struct Recycled {
    bytes: Vec<u8>,
    spare: Spare,
}

impl Drop for Recycled {
    fn drop(&mut self) {
        if let Ok(mut spare) = self.spare.lock()
            && spare.len() < SPARE_FRAMES
        {
            spare.push(std::mem::take(&mut self.bytes));
        }
    }
}

impl FramePixels {
    /// `bytes` copied into one of the camera's spare buffers (or a new one).
    pub(crate) fn copied(bytes: &[u8], spare: &Spare) -> FramePixels {
        let mut buffer = spare.lock().ok().and_then(|mut s| s.pop()).unwrap_or_default();
        buffer.clear();
        buffer.extend_from_slice(bytes);
        FramePixels(Arc::new(Recycled { bytes: buffer, spare: Arc::clone(spare) }))
    }
}

/// A frame as it leaves the camera pipeline, before it enters the dataflow.
#[derive(Clone, Debug)]
pub struct RawFrame {
    /// Counted per camera from 0 across reconnections.
    pub frame_index: u64,
    /// Capture time, milliseconds since the Unix epoch.
    pub capture_ms: u64,
    pub pts_ns: Option<u64>,
    pub width: u32,
    pub height: u32,
    /// Offsets and strides of the R, G and B planes.
    pub planes: [Plane; 3],
    pub pixels: FramePixels,
}

/// The frame in `sample`, its pixels copied into one of the camera's spare buffers,
/// numbered from `next_index` and stamped with its capture time.
pub(crate) fn raw_frame(
    sample: &gst::Sample,
    info: &gst_video::VideoInfo,
    time_base: TimeBase,
    base_ms: u64,
    (next_index, spare): (&AtomicU64, &Spare),
) -> Result<RawFrame, gst::FlowError> {
    let buffer = sample.buffer_owned().ok_or(gst::FlowError::Error)?;
    let pts_ns = buffer.pts().map(|t| t.nseconds());
    let capture_ms = match (time_base, pts_ns) {
        (TimeBase::Pts, Some(pts)) => base_ms + pts / 1_000_000,
        _ => now_ms(),
    };
    let mapped = buffer.map_readable().map_err(|_| gst::FlowError::Error)?;
    Ok(RawFrame {
        frame_index: next_index.fetch_add(1, Ordering::Relaxed),
        capture_ms,
        pts_ns,
        width: info.width(),
        height: info.height(),
        planes: [0, 1, 2].map(|p| Plane { offset: info.offset()[p], stride: info.stride()[p] as usize }),
        pixels: FramePixels::copied(mapped.as_slice(), spare),
    })
}

#[cfg(test)]
impl RawFrame {
    /// A 1x1 black frame captured at `capture_ms`.
    pub(crate) fn blank(frame_index: u64, capture_ms: u64) -> RawFrame {
        let plane = |offset| Plane { offset, stride: 1 };
        RawFrame {
            frame_index,
            capture_ms,
            pts_ns: None,
            width: 1,
            height: 1,
            planes: [plane(0), plane(1), plane(2)],
            pixels: FramePixels::copied(&[0; 3], &Spare::default()),
        }
    }
}
