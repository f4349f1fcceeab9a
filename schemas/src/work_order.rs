//! Work orders as published to the CMMS, and the status events the CMMS sends back.

use serde::{Deserialize, Serialize};

use crate::{BoundingBox, DefectClass, EpochMillis};

/// Version of the work-order message; bumped on any incompatible change (see
/// `docs/work-order-topic.md`).
pub const SCHEMA_VERSION: &str = "1.1.0";

/// Urgency of a work order. P1 is the most urgent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Priority {
    P1,
    P2,
    P3,
    P4,
}

/// The parts of a severity score, each already weighted, summing to `score`.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct SeverityComponents {
    pub size: f64,
    pub growth: f64,
    pub criticality: f64,
    pub history: f64,
}

/// How bad a defect is, and why.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct Severity {
    /// 0 to 100.
    pub score: f64,
    pub priority: Priority,
    pub components: SeverityComponents,
}

/// What a revision did to its work order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RevisionKind {
    Created,
    Updated,
    Closed,
}

/// Where the work order stands in its life-cycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkOrderStatus {
    Open,
    Acknowledged,
    InProgress,
    Completed,
    FalsePositive,
}

/// The repair procedure chosen for the defect.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProcedureRef {
    pub procedure_id: String,
    pub title: String,
    pub required_skill: String,
    pub estimated_hours: f64,
    pub steps: Vec<String>,
}

/// One part of the procedure, checked against inventory.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PartLine {
    pub part_id: String,
    pub quantity: u32,
    /// Whether stock covers this work order's reservation.
    pub available: bool,
}

/// The annotated frame that shows the defect.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    pub uri: String,
    /// Lower-case hex SHA-256 of the image bytes.
    pub sha256: String,
    pub frame_index: u64,
    pub capture_ms: EpochMillis,
    pub bbox: BoundingBox,
}

/// One revision of a work order: the message on `defectflow.work-orders`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkOrder {
    pub schema_version: String,
    /// Stable id: the same defect replayed gets the same id.
    pub work_order_id: String,
    /// 1 for the created revision, +1 for every later one.
    pub revision: u32,
    pub revision_kind: RevisionKind,
    pub status: WorkOrderStatus,
    pub asset_id: String,
    pub asset_name: String,
    pub camera_id: String,
    pub track_id: String,
    pub defect_class: DefectClass,
    pub severity: Severity,
    pub procedure: Option<ProcedureRef>,
    pub parts: Vec<PartLine>,
    pub technician_id: Option<String>,
    pub evidence: Option<Evidence>,
    /// Event time of the first detection of the defect.
    pub detected_at_ms: EpochMillis,
    /// Event time at which this revision was made.
    pub revised_at_ms: EpochMillis,
    /// The earlier, completed work order this one reopens, if the defect recurred.
    pub reopens: Option<String>,
    pub model_version: String,
    /// Made in shadow mode: audited, never sent to the CMMS.
    pub shadow: bool,
}

/// Status change reported by the CMMS on `defectflow.wo-events`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WoEventKind {
    Acknowledged,
    Started,
    Completed,
    FalsePositive,
    Reassigned,
}

/// A CMMS status event for a work order.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WoEvent {
    pub work_order_id: String,
    pub event: WoEventKind,
    pub at_ms: EpochMillis,
    /// The technician concerned (the new one, for `reassigned`).
    #[serde(default)]
    pub technician_id: Option<String>,
    #[serde(default)]
    pub note: Option<String>,
}

crate::reference::total_order_by_key!(SeverityComponents, |c| [c.size, c.growth, c.criticality, c.history]
    .map(f64::to_bits));
crate::reference::total_order_by_key!(Severity, |s| (s.score.to_bits(), s.priority, s.components));
