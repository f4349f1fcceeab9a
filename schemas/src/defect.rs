//! Defect classes, per-frame detections and defect tracks.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::EpochMillis;

/// The kinds of defect the model recognises. The order is the model's class order
/// (class id = index + 1; 0 is background) and the YOLO label order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DefectClass {
    Crack,
    Corrosion,
    Misalignment,
    Wear,
    Contamination,
    MissingComponent,
    /// A lasting departure from the camera's normal that the model cannot name: asks
    /// for an inspection. Not a class of the model (not in [`DefectClass::ALL`]).
    Unknown,
}

impl DefectClass {
    /// Every class, in model order.
    pub const ALL: [DefectClass; 6] = [
        DefectClass::Crack,
        DefectClass::Corrosion,
        DefectClass::Misalignment,
        DefectClass::Wear,
        DefectClass::Contamination,
        DefectClass::MissingComponent,
    ];

    /// The snake_case name used in configs, labels and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            DefectClass::Crack => "crack",
            DefectClass::Corrosion => "corrosion",
            DefectClass::Misalignment => "misalignment",
            DefectClass::Wear => "wear",
            DefectClass::Contamination => "contamination",
            DefectClass::MissingComponent => "missing_component",
            DefectClass::Unknown => "unknown",
        }
    }

    /// One of the model's classes ([`DefectClass::ALL`]) by name: what a label file, a
    /// class list or a synthetic defect may name (`unknown` is none of them).
    pub fn model_class(name: &str) -> Result<DefectClass, UnknownDefectClass> {
        Self::ALL.into_iter().find(|c| c.as_str() == name).ok_or_else(|| UnknownDefectClass(name.to_owned()))
    }

    /// Zero-based YOLO class id.
    pub fn yolo_id(self) -> usize {
        Self::ALL.iter().position(|c| *c == self).unwrap_or(0)
    }

    /// The class with the given zero-based YOLO id.
    pub fn from_yolo_id(id: usize) -> Option<DefectClass> {
        Self::ALL.get(id).copied()
    }
}

impl fmt::Display for DefectClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is not one of the six defect classes.
#[derive(Debug, thiserror::Error)]
#[error(
    "unknown defect class `{0}` (expected one of crack, corrosion, misalignment, wear, contamination, missing_component, unknown)"
)]
pub struct UnknownDefectClass(pub String);

impl FromStr for DefectClass {
    type Err = UnknownDefectClass;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        (Self::ALL.into_iter().chain([DefectClass::Unknown]))
            .find(|c| c.as_str() == s)
            .ok_or_else(|| UnknownDefectClass(s.to_owned()))
    }
}

/// An axis-aligned box in frame pixels, origin top-left.
///
/// Equality and order compare the bit patterns of the coordinates, so boxes can be
/// keys and values of differential collections.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct BoundingBox {
    pub x: f32,
    pub y: f32,
    pub width: f32,
    pub height: f32,
}

impl BoundingBox {
    /// Area in square pixels.
    pub fn area(&self) -> f32 {
        self.width.max(0.0) * self.height.max(0.0)
    }

    /// Centre point.
    pub fn center(&self) -> (f32, f32) {
        (self.x + self.width / 2.0, self.y + self.height / 2.0)
    }

    fn bits(&self) -> [u32; 4] {
        [self.x, self.y, self.width, self.height].map(f32::to_bits)
    }

    /// Intersection over union with another box, 0 when they do not touch.
    pub fn iou(&self, other: &BoundingBox) -> f32 {
        let x0 = self.x.max(other.x);
        let y0 = self.y.max(other.y);
        let x1 = (self.x + self.width).min(other.x + other.width);
        let y1 = (self.y + self.height).min(other.y + other.height);
        let inter = (x1 - x0).max(0.0) * (y1 - y0).max(0.0);
        let union = self.area() + other.area() - inter;
        if union <= 0.0 { 0.0 } else { inter / union }
    }

    /// Whether a defect found in `other` may be the one last seen in this box when much
    /// may have changed since (a restart): they overlap at all, or this box is unknown
    /// (empty).
    pub fn overlaps_or_unknown(&self, other: &BoundingBox) -> bool {
        self.area() <= 0.0 || self.iou(other) > 0.0
    }
}

impl PartialEq for BoundingBox {
    fn eq(&self, other: &Self) -> bool {
        self.bits() == other.bits()
    }
}

impl Eq for BoundingBox {}

impl PartialOrd for BoundingBox {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for BoundingBox {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.bits().cmp(&other.bits())
    }
}

impl std::hash::Hash for BoundingBox {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.bits().hash(state);
    }
}

/// One defect found by the model in one frame.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Detection {
    pub camera_id: String,
    pub frame_index: u64,
    pub capture_ms: EpochMillis,
    pub class: DefectClass,
    /// Model confidence in `[0, 1]`.
    pub confidence: f32,
    pub bbox: BoundingBox,
    /// Pixels classified as this defect (cells × cell area).
    pub area_px: f32,
    /// Version of the model that produced the detection (weights SHA-256 prefix).
    pub model_version: String,
    /// Produced in shadow mode: recorded for validation, never sent to the CMMS.
    #[serde(default)]
    pub shadow: bool,
}

/// What the model saw in one frame of one camera: its detections, or none ("clear").
///
/// A clear frame matters: it tells the tracker that the camera was looking and the
/// defect was not there, which is how a track is resolved.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FrameObservation {
    pub camera_id: String,
    pub frame_index: u64,
    pub capture_ms: EpochMillis,
    pub detections: Vec<Detection>,
}

/// Life-cycle of a defect track.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrackState {
    /// Seen, but not yet in enough frames to be trusted.
    Tentative,
    /// Seen in N of the last M frames: a physical defect.
    Confirmed,
    /// No longer seen while its region was visible.
    Resolved,
}

/// One physical defect followed across frames.
///
/// Equality and order are total (floating-point fields compare by bit pattern), so
/// tracks can be values of differential collections.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DefectTrack {
    /// Stable id derived from camera, asset, class and the anchor detection.
    pub track_id: String,
    pub camera_id: String,
    pub asset_id: String,
    pub class: DefectClass,
    pub state: TrackState,
    pub first_seen_ms: EpochMillis,
    pub last_seen_ms: EpochMillis,
    /// Frames in which the defect was detected.
    pub hits: u64,
    /// Latest box of the defect.
    pub bbox: BoundingBox,
    pub area_px: f32,
    /// Largest dimension in millimetres, where the camera ROI has a scale.
    pub size_mm: Option<f64>,
    /// Area growth over the sliding window, square pixels per minute.
    pub growth_px_per_min: f64,
    /// Frame with the highest-confidence detection: the evidence image.
    pub best_frame_index: u64,
    /// Box of the defect in the evidence frame.
    pub best_bbox: BoundingBox,
    /// Capture time of the evidence frame.
    pub best_capture_ms: EpochMillis,
    /// Model version of the latest detection.
    pub model_version: String,
    /// Made from shadow-mode detections.
    #[serde(default)]
    pub shadow: bool,
    /// The evidence image of the best frame, where the run keeps frames to draw it.
    #[serde(default)]
    pub evidence: Option<crate::work_order::Evidence>,
}

impl DefectTrack {
    #[allow(clippy::type_complexity)]
    fn total_key(
        &self,
    ) -> (
        &str,
        &str,
        &str,
        DefectClass,
        TrackState,
        [u64; 4],
        BoundingBox,
        [u64; 3],
        BoundingBox,
        &str,
        bool,
        Option<(&str, &str)>,
    ) {
        (
            &self.track_id,
            &self.camera_id,
            &self.asset_id,
            self.class,
            self.state,
            [self.first_seen_ms, self.last_seen_ms, self.hits, self.best_frame_index],
            self.bbox,
            [
                self.area_px.to_bits() as u64,
                self.size_mm.map_or(u64::MAX, f64::to_bits),
                self.growth_px_per_min.to_bits(),
            ],
            self.best_bbox,
            &self.model_version,
            self.shadow,
            self.evidence.as_ref().map(|e| (e.uri.as_str(), e.sha256.as_str())),
        )
    }
}

impl PartialEq for DefectTrack {
    fn eq(&self, other: &Self) -> bool {
        self.total_key() == other.total_key() && self.best_capture_ms == other.best_capture_ms
    }
}

impl Eq for DefectTrack {}

impl PartialOrd for DefectTrack {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for DefectTrack {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.total_key().cmp(&other.total_key()).then(self.best_capture_ms.cmp(&other.best_capture_ms))
    }
}

impl std::hash::Hash for DefectTrack {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.total_key().hash(state);
    }
}
