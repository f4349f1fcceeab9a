//! Evidence for tracks. The tracker asks for the image of a track's best frame when it
//! emits a snapshot whose best frame changed, asks for a few more of the frames a
//! confirmed track is seen in to be kept as they were (training data once the CMMS has
//! said what the defect was), and tells the keeper of frames which of a camera's frames
//! it will never ask for again. Frames are held by the run (they are
//! not dataflow data); the tracker only names them.

use defectflow_schemas::{BoundingBox, DefectClass, EpochMillis, Evidence};

/// What the evidence image shows.
#[derive(Clone, Debug, PartialEq)]
pub struct EvidenceRequest<'a> {
    pub track_id: &'a str,
    pub camera_id: &'a str,
    pub frame_index: u64,
    pub capture_ms: EpochMillis,
    pub bbox: BoundingBox,
    pub class: DefectClass,
    pub confidence: f32,
}

/// Keeps frames with detections until the tracker is done with them, and draws them.
pub trait EvidenceFrames: Send + Sync {
    /// The annotated image of the request's frame, written where the outputs go; `None`
    /// when the frame is not held (or could not be written: the keeper reports why).
    fn draw(&self, request: &EvidenceRequest<'_>) -> Option<Evidence>;

    /// The tracker has applied every frame of `camera_id` up to frame index `through`
    /// and may still ask for those in `keep` (frame indices); the others may go. By
    /// index, not capture time: frames late to the dataflow share their time.
    fn release(&self, camera_id: &str, through: u64, keep: &[u64]);

    /// Keeps frame `frame_index` of `camera_id` as it was, as training data of
    /// `track_id` (a frame in which the track was seen; bounded per track by the
    /// keeper). Nothing where the frame is no longer held.
    fn keep(&self, track_id: &str, camera_id: &str, frame_index: u64);
}
