//! Work orders as published to the CMMS, and the status events the CMMS sends back.

use serde::{Deserialize, Serialize};

use crate::{BoundingBox, DefectClass, EpochMillis};

/// Version of the work-order message; bumped on any incompatible change (see
/// `docs/work-order-topic.md`).
pub const SCHEMA_VERSION: &str = "1.3.0";

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
    /// Waiting (for parts, for a shutdown): its parts stay reserved, its hours leave
    /// the technician's open workload until it resumes. Since 1.2.0.
    OnHold,
    /// Called off by the CMMS: closed, its reservations and hours released. Since 1.2.0.
    Cancelled,
}

impl WorkOrderStatus {
    /// Whether the work order is closed: completed, a false positive or cancelled.
    pub fn is_closed(self) -> bool {
        matches!(self, WorkOrderStatus::Completed | WorkOrderStatus::FalsePositive | WorkOrderStatus::Cancelled)
    }

    /// The status as serialised (`in_progress`).
    pub fn as_str(self) -> &'static str {
        match self {
            WorkOrderStatus::Open => "open",
            WorkOrderStatus::Acknowledged => "acknowledged",
            WorkOrderStatus::InProgress => "in_progress",
            WorkOrderStatus::Completed => "completed",
            WorkOrderStatus::FalsePositive => "false_positive",
            WorkOrderStatus::OnHold => "on_hold",
            WorkOrderStatus::Cancelled => "cancelled",
        }
    }
}

/// What kind of work a work order asks for. Since 1.2.0.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkType {
    /// Repair a defect found (revisions before 1.2.0 read as this).
    #[default]
    Corrective,
    /// Act on a developing condition before it fails.
    Predictive,
    /// Now: the most urgent priority.
    Emergency,
    /// Look at something the model cannot name.
    Inspection,
}

impl WorkType {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkType::Corrective => "corrective",
            WorkType::Predictive => "predictive",
            WorkType::Emergency => "emergency",
            WorkType::Inspection => "inspection",
        }
    }
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

/// A defect as one more camera sees it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct View {
    pub camera_id: String,
    pub track_id: String,
    pub evidence: Option<Evidence>,
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
    /// Why an `on_hold` work order waits (`waiting_for_parts`, ...); `None` otherwise.
    /// Since 1.2.0.
    #[serde(default)]
    pub hold_reason: Option<String>,
    /// Since 1.2.0.
    #[serde(default)]
    pub work_type: WorkType,
    /// `detected_at_ms` plus the priority's target (`[work_orders.due_hours]`); `None`
    /// where the priority has none. Since 1.2.0.
    #[serde(default)]
    pub due_at_ms: Option<EpochMillis>,
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
    /// The same defect as other cameras see it (their ROIs share a region of the
    /// asset), each with its own track and evidence. Since 1.3.0.
    #[serde(default)]
    pub other_views: Vec<View>,
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
    /// The work waits; `reason` says why (since 1.1.0 of the wo-event schema).
    OnHold,
    /// Work on hold goes on.
    Resumed,
    /// The CMMS called the work off.
    Cancelled,
    /// On a false-positive work order: its camera, asset, class and spot may open work
    /// orders again before the suppression expires (since 1.2.0 of the wo-event schema).
    SuppressionLifted,
}

/// A CMMS status event for a work order.
#[derive(Clone, Debug, Serialize, Deserialize)]
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
    /// Why the work is on hold or cancelled (`waiting_for_parts`, ...). Always written
    /// (null when none): events cross processes of a cluster in bincode, which has no
    /// field names to tell a left-out field by.
    #[serde(default)]
    pub reason: Option<String>,
    /// Labour hours booked on the work order, as the CMMS reports them with `completed`
    /// (since 1.3.0 of the wo-event schema). Always written, as `reason` is.
    #[serde(default)]
    pub actual_hours: Option<f64>,
    /// Hours the asset was out of production for the repair, reported with
    /// `completed` (since 1.3.0).
    #[serde(default)]
    pub downtime_hours: Option<f64>,
}

crate::reference::total_order_by_key!(WoEvent, |e| (
    e.work_order_id.clone(),
    e.event,
    e.at_ms,
    e.technician_id.clone(),
    e.note.clone(),
    e.reason.clone(),
    [e.actual_hours, e.downtime_hours].map(|h| h.map(f64::to_bits))
));

crate::reference::total_order_by_key!(SeverityComponents, |c| [c.size, c.growth, c.criticality, c.history]
    .map(f64::to_bits));
crate::reference::total_order_by_key!(Severity, |s| (s.score.to_bits(), s.priority, s.components));
