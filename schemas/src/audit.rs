//! Arrow schemas of the Parquet audit tables under `audit/<table>/date=YYYY-MM-DD/`.
//!
//! Times are `Timestamp(Millisecond, UTC)` so polars and DuckDB read them as datetimes;
//! the `date` partition column comes from the directory name, not the files.

use std::sync::Arc;

use arrow_schema::{DataType, Field, Schema, TimeUnit};

/// Every audit table, in the order they are documented.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AuditTable {
    Detections,
    Tracks,
    WorkOrders,
    Assignments,
    Inventory,
    WoEvents,
    Alerts,
    /// The failures completed repairs closed (corrective and emergency work).
    Failures,
    /// Sightings a false positive held back from opening a work order.
    Suppressed,
}

impl AuditTable {
    pub const ALL: [AuditTable; 9] = [
        AuditTable::Detections,
        AuditTable::Tracks,
        AuditTable::WorkOrders,
        AuditTable::Assignments,
        AuditTable::Inventory,
        AuditTable::WoEvents,
        AuditTable::Alerts,
        AuditTable::Failures,
        AuditTable::Suppressed,
    ];

    /// Directory name under `audit/`.
    pub fn name(self) -> &'static str {
        match self {
            AuditTable::Detections => "detections",
            AuditTable::Tracks => "tracks",
            AuditTable::WorkOrders => "work_orders",
            AuditTable::Assignments => "assignments",
            AuditTable::Inventory => "inventory",
            AuditTable::WoEvents => "wo_events",
            AuditTable::Alerts => "alerts",
            AuditTable::Failures => "failures",
            AuditTable::Suppressed => "suppressed",
        }
    }

    /// The table's Arrow schema.
    pub fn schema(self) -> Arc<Schema> {
        let fields = match self {
            AuditTable::Detections => vec![
                utf8("camera_id"),
                Field::new("frame_index", DataType::Int64, false),
                time("capture_time"),
                utf8("class"),
                Field::new("confidence", DataType::Float32, false),
                Field::new("bbox_x", DataType::Float32, false),
                Field::new("bbox_y", DataType::Float32, false),
                Field::new("bbox_width", DataType::Float32, false),
                Field::new("bbox_height", DataType::Float32, false),
                Field::new("area_px", DataType::Float32, false),
                utf8("model_version"),
                Field::new("shadow", DataType::Boolean, false),
            ],
            AuditTable::Tracks => vec![
                utf8("track_id"),
                utf8("camera_id"),
                utf8("asset_id"),
                utf8("class"),
                utf8("state"),
                time("first_seen"),
                time("last_seen"),
                Field::new("hits", DataType::Int64, false),
                Field::new("area_px", DataType::Float32, false),
                Field::new("size_mm", DataType::Float64, true),
                Field::new("growth_px_per_min", DataType::Float64, false),
                Field::new("best_frame_index", DataType::Int64, false),
                Field::new("evidence_uri", DataType::Utf8, true),
            ],
            AuditTable::WorkOrders => vec![
                utf8("work_order_id"),
                Field::new("revision", DataType::Int32, false),
                utf8("revision_kind"),
                utf8("status"),
                utf8("asset_id"),
                utf8("camera_id"),
                utf8("track_id"),
                utf8("defect_class"),
                Field::new("severity_score", DataType::Float64, false),
                utf8("priority"),
                Field::new("severity_size", DataType::Float64, false),
                Field::new("severity_growth", DataType::Float64, false),
                Field::new("severity_criticality", DataType::Float64, false),
                Field::new("severity_history", DataType::Float64, false),
                Field::new("procedure_id", DataType::Utf8, true),
                Field::new("estimated_hours", DataType::Float64, true),
                Field::new("technician_id", DataType::Utf8, true),
                Field::new("evidence_uri", DataType::Utf8, true),
                Field::new("evidence_sha256", DataType::Utf8, true),
                time("detected_at"),
                time("revised_at"),
                Field::new("reopens", DataType::Utf8, true),
                utf8("model_version"),
                Field::new("shadow", DataType::Boolean, false),
                // Since work-order 1.2.0; null in rows written before.
                Field::new("work_type", DataType::Utf8, true),
                maybe_time("due_at"),
                Field::new("hold_reason", DataType::Utf8, true),
                // Since work-order 1.3.0: the other cameras' views of the defect, as the
                // JSON array of the message (camera_id, track_id, evidence); null for none.
                Field::new("other_views", DataType::Utf8, true),
            ],
            AuditTable::Assignments => vec![
                utf8("work_order_id"),
                Field::new("revision", DataType::Int32, false),
                Field::new("technician_id", DataType::Utf8, true),
                Field::new("estimated_hours", DataType::Float64, false),
                time("assigned_at"),
                utf8("reason"),
            ],
            AuditTable::Inventory => vec![
                utf8("part_id"),
                time("at"),
                Field::new("on_hand", DataType::Int64, false),
                Field::new("reserved", DataType::Int64, false),
                Field::new("available", DataType::Int64, false),
                Field::new("shortage", DataType::Boolean, false),
            ],
            AuditTable::WoEvents => vec![
                utf8("work_order_id"),
                utf8("event"),
                time("at"),
                Field::new("technician_id", DataType::Utf8, true),
                Field::new("note", DataType::Utf8, true),
                Field::new("reason", DataType::Utf8, true),
                Field::new("actual_hours", DataType::Float64, true),
                Field::new("downtime_hours", DataType::Float64, true),
            ],
            AuditTable::Alerts => vec![
                utf8("work_order_id"),
                utf8("asset_id"),
                utf8("priority"),
                Field::new("severity_score", DataType::Float64, false),
                time("at"),
                utf8("message"),
                utf8("kind"),
                Field::new("recipient_id", DataType::Utf8, true),
                Field::new("rule", DataType::Utf8, true),
            ],
            AuditTable::Failures => vec![
                utf8("asset_id"),
                time("failed_at"),
                Field::new("defect_class", DataType::Utf8, true),
                Field::new("downtime_hours", DataType::Float64, false),
                Field::new("actual_hours", DataType::Float64, true),
                Field::new("work_order_id", DataType::Utf8, true),
                maybe_time("repaired_at"),
            ],
            AuditTable::Suppressed => vec![
                utf8("track_id"),
                utf8("camera_id"),
                utf8("asset_id"),
                utf8("defect_class"),
                time("at"),
                Field::new("severity_score", DataType::Float64, false),
                utf8("false_positive"),
                maybe_time("until"),
            ],
        };
        Arc::new(Schema::new(fields))
    }
}

fn utf8(name: &str) -> Field {
    Field::new(name, DataType::Utf8, false)
}

fn time(name: &str) -> Field {
    Field::new(name, DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())), false)
}

fn maybe_time(name: &str) -> Field {
    Field::new(name, DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())), true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_are_unique_and_every_table_has_a_time_column() {
        let mut names: Vec<_> = AuditTable::ALL.iter().map(|t| t.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), AuditTable::ALL.len());
        for table in AuditTable::ALL {
            let schema = table.schema();
            assert!(
                schema.fields().iter().any(|f| matches!(f.data_type(), DataType::Timestamp(..))),
                "{} has no event-time column",
                table.name()
            );
        }
    }

    #[test]
    fn work_orders_table_keeps_every_severity_component() {
        let schema = AuditTable::WorkOrders.schema();
        for column in ["severity_size", "severity_growth", "severity_criticality", "severity_history"] {
            assert!(schema.field_with_name(column).is_ok(), "missing {column}");
        }
    }
}
