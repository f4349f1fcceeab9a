//! Record types shared by every stage of defectflow, the Arrow schemas of the audit
//! tables and the JSON Schemas of every topic.

pub mod audit;
pub mod defect;
pub mod events;
pub mod frame;
pub mod message;
pub mod reference;
pub mod registry;
pub mod work_order;

pub use defect::{BoundingBox, DefectClass, DefectTrack, Detection, FrameObservation, TrackState};
pub use events::{Alert, AlertKind, Assignment, DeadLetter, PartsStaging, StagingKind, StockMovement, SuppressedTrack};
pub use frame::FrameMeta;
pub use message::Emitted;
pub use reference::{Asset, Camera, FailureRecord, InventoryItem, PartRequirement, Procedure, Roi, Shift, Technician};
pub use work_order::{
    Evidence, PartLine, Priority, ProcedureRef, RevisionKind, SCHEMA_VERSION, Severity, SeverityComponents, View,
    WoEvent, WoEventKind, WorkOrder, WorkOrderStatus, WorkType,
};

/// Milliseconds since the Unix epoch: every event time in defectflow uses this unit.
pub type EpochMillis = u64;
