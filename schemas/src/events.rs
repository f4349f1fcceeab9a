//! What defectflow emits beside work orders — assignments, supervisor alerts, parts
//! staging, dead letters — and the stock movements it reads and writes.

use serde::{Deserialize, Serialize};

use crate::{DefectClass, EpochMillis, Priority};

/// A change of stock of one part: goods received, a count correction, parts consumed by
/// a completed work order. Messages on `defectflow.inventory` carry these; the stock on
/// hand is the sum of a part's movements.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StockMovement {
    pub part_id: String,
    /// Positive for stock in, negative for stock out.
    pub delta: i64,
    pub at_ms: EpochMillis,
    /// Why the stock moved (`initial`, `received`, `count`, `consumed:WO-…`).
    #[serde(default)]
    pub reason: String,
}

/// A technician put on (or taken off) a work order; a row of the `assignments` table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Assignment {
    pub work_order_id: String,
    /// The work-order revision that carries this assignment.
    pub revision: u32,
    /// `None` when nobody eligible is on shift.
    pub technician_id: Option<String>,
    pub estimated_hours: f64,
    pub assigned_at_ms: EpochMillis,
    /// `least_workload`, `off_shift_reassignment`, `technician_removed`, `manual`,
    /// `started`, `no_eligible_technician`.
    pub reason: String,
}

/// A notification on `defectflow.alerts`: a work order someone must hear of, for the
/// recipient a rule routed it to (the record key), or unrouted (keyed by the work order).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    pub work_order_id: String,
    pub asset_id: String,
    pub priority: Priority,
    pub severity_score: f64,
    pub at_ms: EpochMillis,
    pub message: String,
    /// Why (since 1.1.0 of the alert schema; before, every alert was `raised`).
    #[serde(default)]
    pub kind: AlertKind,
    /// Who it is for: a `[[notify.recipients]]` id or, for an assignment, the
    /// technician's (since 1.1.0). None: no rule routed it, or nobody was on shift.
    #[serde(default)]
    pub recipient_id: Option<String>,
    /// The `[[notify.rules]]` name that routed it, or `escalation` (since 1.1.0).
    #[serde(default)]
    pub rule: Option<String>,
}

/// Why an alert was sent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    /// The work order matched a rule (without rules: it reached P1).
    #[default]
    Raised,
    /// A P1 nobody acknowledged within `escalate_after_minutes`.
    Escalated,
    /// The work order was assigned to the recipient, a technician.
    Assigned,
}

impl AlertKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::Raised => "raised",
            AlertKind::Escalated => "escalated",
            AlertKind::Assigned => "assigned",
        }
    }
}

/// Why parts are to be moved or bought.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StagingKind {
    /// Stock covers the work order: pick the parts to the job.
    Stage,
    /// Stock does not cover the work order.
    Shortage,
    /// Available stock fell to or below the part's reorder point.
    Reorder,
}

/// A message on `defectflow.parts-staging`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PartsStaging {
    pub kind: StagingKind,
    pub part_id: String,
    /// The work order that needs the parts (none for a reorder).
    pub work_order_id: Option<String>,
    pub quantity: i64,
    /// On hand minus reserved by open work orders, after this reservation.
    pub available: i64,
    pub at_ms: EpochMillis,
}

/// An input that could not be used, on `defectflow.dead-letter`, with the reason.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The input it came from (`wo-events`, `inventory`, ...).
    pub source: String,
    /// The input as received.
    pub payload: String,
    pub reason: String,
    pub at_ms: EpochMillis,
}

/// A sighting of a track that a false positive keeps from opening a work order: written
/// to the audit log (table `suppressed`), never sent. One row per update of the track
/// while it is suppressed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SuppressedTrack {
    pub track_id: String,
    pub camera_id: String,
    pub asset_id: String,
    pub defect_class: DefectClass,
    /// The track's last sighting: when it was held back.
    pub at_ms: EpochMillis,
    pub severity_score: f64,
    /// The work order closed as a false positive that holds it back.
    pub false_positive: String,
    /// When the suppression ends; none where it lasts as long as the track (the false
    /// positive's own track, with suppression by spot turned off).
    pub until_ms: Option<EpochMillis>,
}
