//! Metadata of one decoded camera frame.

use serde::{Deserialize, Serialize};

use crate::EpochMillis;

/// What is known about a frame once it has been decoded, independent of its pixels.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct FrameMeta {
    /// The camera that captured the frame, as named in the config.
    pub camera_id: String,
    /// Position of the frame in the camera's stream, counted from 0 for every
    /// decoded frame (frames dropped by rate limiting still count).
    pub frame_index: u64,
    /// Event time: when the frame was captured.
    pub capture_ms: EpochMillis,
    /// Presentation timestamp inside the stream, when the stream has one.
    pub pts_ns: Option<u64>,
    /// Width of the decoded (and scaled) frame in pixels.
    pub width: u32,
    /// Height of the decoded (and scaled) frame in pixels.
    pub height: u32,
}
