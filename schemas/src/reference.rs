//! Reference data of the plant: assets, cameras and their regions of interest, failure
//! history, repair procedures, technicians and spare-parts inventory.

use serde::{Deserialize, Serialize};

use crate::{DefectClass, EpochMillis};

/// A maintainable piece of equipment.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Asset {
    /// Plant-unique asset id, as in the CMMS (for example `CV-101-PUL`).
    pub asset_id: String,
    /// Human-readable name.
    pub name: String,
    /// Asset class (`conveyor_pulley`, `motor_housing`, ...): selects procedures.
    pub asset_class: String,
    /// 1 (run to failure) to 5 (safety or production critical).
    pub criticality: u8,
    /// Plant zone: used to prefer technicians nearby.
    pub zone: String,
}

/// A rectangular image region of a camera that shows one asset.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Roi {
    pub asset_id: String,
    /// Left edge in frame pixels.
    pub x: u32,
    /// Top edge in frame pixels.
    pub y: u32,
    pub width: u32,
    pub height: u32,
    /// Millimetres per pixel at the asset's surface, where the camera is calibrated.
    #[serde(default)]
    pub mm_per_px: Option<f64>,
    /// A surface of the asset that other cameras' ROIs naming the same region show too,
    /// each rectangle spanning the same surface edge to edge: a defect two cameras see
    /// at the same place in the region is one defect, one work order.
    #[serde(default)]
    pub region: Option<String>,
    /// With `region`: the plane homography (row-major 3×3) from this camera's frame
    /// pixels to the region's coordinates (0 to 1 across the surface), for a camera that
    /// sees the surface at an angle or from the other side; absent: the rectangle spans
    /// the region edge to edge.
    #[serde(default)]
    pub homography: Option<[f64; 9]>,
}

impl Roi {
    /// Where the frame pixel (`px`, `py`) lies in the region's coordinates, through the
    /// homography; `None` without one, or at the homography's horizon.
    pub fn to_region(&self, px: f32, py: f32) -> Option<(f32, f32)> {
        let h = self.homography?;
        let (x, y) = (f64::from(px), f64::from(py));
        let w = h[6] * x + h[7] * y + h[8];
        if w.abs() < 1e-12 {
            return None;
        }
        Some((((h[0] * x + h[1] * y + h[2]) / w) as f32, ((h[3] * x + h[4] * y + h[5]) / w) as f32))
    }

    /// Why the homography cannot be used (not finite, or singular), if it cannot.
    pub fn homography_problem(&self) -> Option<String> {
        let h = self.homography?;
        if h.iter().any(|v| !v.is_finite()) {
            return Some("every entry must be a finite number".into());
        }
        let det = h[0] * (h[4] * h[8] - h[5] * h[7]) - h[1] * (h[3] * h[8] - h[5] * h[6])
            + h[2] * (h[3] * h[7] - h[4] * h[6]);
        if det.abs() < 1e-15 {
            return Some("it is singular (its determinant is 0): it maps the frame onto a line".into());
        }
        if self.region.is_none() {
            return Some("it needs a `region` to map into".into());
        }
        // The ROI must lie on one side of the homography's horizon (w = 0).
        let (x0, y0) = (f64::from(self.x), f64::from(self.y));
        let (x1, y1) = (x0 + f64::from(self.width), y0 + f64::from(self.height));
        let w = |x: f64, y: f64| h[6] * x + h[7] * y + h[8];
        let sides = [w(x0, y0), w(x1, y0), w(x0, y1), w(x1, y1)];
        if !(sides.iter().all(|w| *w > 0.0) || sides.iter().all(|w| *w < 0.0)) {
            return Some("the ROI crosses its horizon (the third row maps a corner to 0 or to the other side)".into());
        }
        None
    }
    /// Whether the point lies inside the region.
    pub fn contains(&self, px: f32, py: f32) -> bool {
        px >= self.x as f32
            && py >= self.y as f32
            && px < (self.x + self.width) as f32
            && py < (self.y + self.height) as f32
    }
}

/// A camera and the assets it sees.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Camera {
    pub camera_id: String,
    pub rois: Vec<Roi>,
}

/// A past failure of an asset, from the CMMS history.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailureRecord {
    pub asset_id: String,
    pub failed_at_ms: EpochMillis,
    /// The defect class that caused it, when known.
    #[serde(default)]
    pub defect_class: Option<DefectClass>,
    /// Production downtime caused, in hours.
    #[serde(default)]
    pub downtime_hours: f64,
    /// Labour hours the repair took, when known.
    #[serde(default)]
    pub actual_hours: Option<f64>,
    /// The completed work order that repaired it, for failures defectflow recorded.
    #[serde(default)]
    pub work_order_id: Option<String>,
    /// When the repair was completed, when known.
    #[serde(default)]
    pub repaired_at_ms: Option<EpochMillis>,
}

/// A part and the quantity a procedure consumes.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartRequirement {
    pub part_id: String,
    pub quantity: u32,
}

/// How to repair one defect class on one asset class.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Procedure {
    pub procedure_id: String,
    pub asset_class: String,
    pub defect_class: DefectClass,
    pub title: String,
    /// Skill a technician must hold (`mechanical`, `electrical`, `welding`, ...).
    pub required_skill: String,
    pub estimated_hours: f64,
    pub steps: Vec<String>,
    #[serde(default)]
    pub parts: Vec<PartRequirement>,
}

/// Daily working hours, local plant time; `end_hour < start_hour` spans midnight.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Shift {
    pub start_hour: u8,
    pub end_hour: u8,
}

impl Shift {
    /// Whether the given hour of day (0–23) falls inside the shift.
    pub fn covers(&self, hour: u8) -> bool {
        if self.start_hour <= self.end_hour {
            hour >= self.start_hour && hour < self.end_hour
        } else {
            hour >= self.start_hour || hour < self.end_hour
        }
    }
}

/// A maintenance technician.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Technician {
    pub technician_id: String,
    pub name: String,
    pub skills: Vec<String>,
    pub zone: String,
    pub shift: Shift,
}

/// Stock of one spare part.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InventoryItem {
    pub part_id: String,
    pub description: String,
    pub on_hand: i64,
    /// At or below this available quantity a reorder event is raised.
    #[serde(default)]
    pub reorder_point: i64,
}

/// Equality, order and hash by a key in which floating-point fields appear as bit
/// patterns, so reference records can live in differential collections.
macro_rules! total_order_by_key {
    ($type:ty, |$this:ident| $key:expr) => {
        impl PartialEq for $type {
            fn eq(&self, other: &Self) -> bool {
                let key = |$this: &$type| $key;
                key(self) == key(other)
            }
        }
        impl Eq for $type {}
        impl PartialOrd for $type {
            fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
                Some(self.cmp(other))
            }
        }
        impl Ord for $type {
            fn cmp(&self, other: &Self) -> std::cmp::Ordering {
                let key = |$this: &$type| $key;
                key(self).cmp(&key(other))
            }
        }
        impl std::hash::Hash for $type {
            fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
                let key = |$this: &$type| $key;
                key(self).hash(state)
            }
        }
    };
}
pub(crate) use total_order_by_key;

total_order_by_key!(Roi, |r| (
    r.asset_id.clone(),
    [r.x, r.y, r.width, r.height],
    r.mm_per_px.map(f64::to_bits),
    r.region.clone(),
    r.homography.map(|h| h.map(f64::to_bits))
));
total_order_by_key!(FailureRecord, |f| (
    f.asset_id.clone(),
    f.failed_at_ms,
    f.defect_class,
    f.downtime_hours.to_bits(),
    f.actual_hours.map(f64::to_bits),
    f.work_order_id.clone(),
    f.repaired_at_ms
));
total_order_by_key!(Procedure, |p| (
    p.procedure_id.clone(),
    p.asset_class.clone(),
    p.defect_class,
    p.title.clone(),
    p.required_skill.clone(),
    p.estimated_hours.to_bits(),
    p.steps.clone(),
    p.parts.clone()
));
