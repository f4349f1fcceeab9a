//! Rows to Arrow columns, in the order of the audit tables' schemas
//! (`defectflow_schemas::audit`).

use std::sync::Arc;

use arrow_array::{
    ArrayRef, BooleanArray, Float32Array, Float64Array, Int32Array, Int64Array, StringArray, TimestampMillisecondArray,
};
use defectflow_schemas::{
    Alert, Assignment, DefectTrack, Detection, FailureRecord, SuppressedTrack, WoEvent, WoEventKind, WorkOrder,
};

use super::StockRow;

fn text<T>(rows: &[&T], f: impl Fn(&T) -> &str) -> ArrayRef {
    Arc::new(StringArray::from_iter_values(rows.iter().map(|r| f(r))))
}

fn maybe_text<T>(rows: &[&T], f: impl Fn(&T) -> Option<&str>) -> ArrayRef {
    Arc::new(rows.iter().map(|r| f(r)).collect::<StringArray>())
}

fn time<T>(rows: &[&T], f: impl Fn(&T) -> u64) -> ArrayRef {
    Arc::new(TimestampMillisecondArray::from_iter_values(rows.iter().map(|r| f(r) as i64)).with_timezone("UTC"))
}

fn maybe_time<T>(rows: &[&T], f: impl Fn(&T) -> Option<u64>) -> ArrayRef {
    Arc::new(rows.iter().map(|r| f(r).map(|ms| ms as i64)).collect::<TimestampMillisecondArray>().with_timezone("UTC"))
}

/// Counts and indexes as signed integers, which every analyst's tool reads without a
/// cast (a value past the signed range, which no run reaches, is clamped).
fn signed(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn signed32(value: u32) -> i32 {
    i32::try_from(value).unwrap_or(i32::MAX)
}

fn float<T>(rows: &[&T], f: impl Fn(&T) -> f64) -> ArrayRef {
    Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| f(r))))
}

fn maybe_float<T>(rows: &[&T], f: impl Fn(&T) -> Option<f64>) -> ArrayRef {
    Arc::new(rows.iter().map(|r| f(r)).collect::<Float64Array>())
}

/// The snake_case name serde gives an enum value.
fn name<E: serde::Serialize>(value: &E) -> String {
    serde_json::to_value(value).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
}

fn float32<T>(rows: &[&T], f: impl Fn(&T) -> f32) -> ArrayRef {
    Arc::new(Float32Array::from_iter_values(rows.iter().map(|r| f(r))))
}

pub(super) fn detections(rows: &[&Detection]) -> Vec<ArrayRef> {
    vec![
        text(rows, |d| &d.camera_id),
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|d| signed(d.frame_index)))),
        time(rows, |d| d.capture_ms),
        text(rows, |d| d.class.as_str()),
        float32(rows, |d| d.confidence),
        float32(rows, |d| d.bbox.x),
        float32(rows, |d| d.bbox.y),
        float32(rows, |d| d.bbox.width),
        float32(rows, |d| d.bbox.height),
        float32(rows, |d| d.area_px),
        text(rows, |d| &d.model_version),
        Arc::new(BooleanArray::from_iter(rows.iter().map(|d| Some(d.shadow)))),
    ]
}

pub(super) fn work_orders(rows: &[&WorkOrder]) -> Vec<ArrayRef> {
    let names = |f: fn(&WorkOrder) -> String| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(rows.iter().map(|w| f(w))))
    };
    vec![
        text(rows, |w| &w.work_order_id),
        Arc::new(Int32Array::from_iter_values(rows.iter().map(|w| signed32(w.revision)))),
        names(|w| name(&w.revision_kind)),
        names(|w| name(&w.status)),
        text(rows, |w| &w.asset_id),
        text(rows, |w| &w.camera_id),
        text(rows, |w| &w.track_id),
        names(|w| w.defect_class.as_str().to_owned()),
        float(rows, |w| w.severity.score),
        names(|w| name(&w.severity.priority)),
        float(rows, |w| w.severity.components.size),
        float(rows, |w| w.severity.components.growth),
        float(rows, |w| w.severity.components.criticality),
        float(rows, |w| w.severity.components.history),
        maybe_text(rows, |w| w.procedure.as_ref().map(|p| p.procedure_id.as_str())),
        maybe_float(rows, |w| w.procedure.as_ref().map(|p| p.estimated_hours)),
        maybe_text(rows, |w| w.technician_id.as_deref()),
        maybe_text(rows, |w| w.evidence.as_ref().map(|e| e.uri.as_str())),
        maybe_text(rows, |w| w.evidence.as_ref().map(|e| e.sha256.as_str())),
        time(rows, |w| w.detected_at_ms),
        time(rows, |w| w.revised_at_ms),
        maybe_text(rows, |w| w.reopens.as_deref()),
        text(rows, |w| &w.model_version),
        Arc::new(rows.iter().map(|w| Some(w.shadow)).collect::<BooleanArray>()),
        maybe_text(rows, |w| Some(w.work_type.as_str())),
        maybe_time(rows, |w| w.due_at_ms),
        maybe_text(rows, |w| w.hold_reason.as_deref()),
        Arc::new(
            (rows.iter())
                .map(|w| (!w.other_views.is_empty()).then(|| serde_json::to_string(&w.other_views).unwrap_or_default()))
                .collect::<StringArray>(),
        ),
    ]
}

pub(super) fn assignments(rows: &[&Assignment]) -> Vec<ArrayRef> {
    vec![
        text(rows, |a| &a.work_order_id),
        Arc::new(Int32Array::from_iter_values(rows.iter().map(|a| signed32(a.revision)))),
        maybe_text(rows, |a| a.technician_id.as_deref()),
        float(rows, |a| a.estimated_hours),
        time(rows, |a| a.assigned_at_ms),
        text(rows, |a| &a.reason),
    ]
}

pub(super) fn wo_events(rows: &[&WoEvent]) -> Vec<ArrayRef> {
    let event = |kind: WoEventKind| name(&kind);
    vec![
        text(rows, |e| &e.work_order_id),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|e| event(e.event)))),
        time(rows, |e| e.at_ms),
        maybe_text(rows, |e| e.technician_id.as_deref()),
        maybe_text(rows, |e| e.note.as_deref()),
        maybe_text(rows, |e| e.reason.as_deref()),
        maybe_float(rows, |e| e.actual_hours),
        maybe_float(rows, |e| e.downtime_hours),
    ]
}

pub(super) fn failures(rows: &[&FailureRecord]) -> Vec<ArrayRef> {
    vec![
        text(rows, |f| &f.asset_id),
        time(rows, |f| f.failed_at_ms),
        maybe_text(rows, |f| f.defect_class.map(|c| c.as_str())),
        float(rows, |f| f.downtime_hours),
        maybe_float(rows, |f| f.actual_hours),
        maybe_text(rows, |f| f.work_order_id.as_deref()),
        maybe_time(rows, |f| f.repaired_at_ms),
    ]
}

pub(super) fn suppressed(rows: &[&SuppressedTrack]) -> Vec<ArrayRef> {
    vec![
        text(rows, |s| &s.track_id),
        text(rows, |s| &s.camera_id),
        text(rows, |s| &s.asset_id),
        text(rows, |s| s.defect_class.as_str()),
        time(rows, |s| s.at_ms),
        float(rows, |s| s.severity_score),
        text(rows, |s| &s.false_positive),
        maybe_time(rows, |s| s.until_ms),
    ]
}

pub(super) fn alerts(rows: &[&Alert]) -> Vec<ArrayRef> {
    vec![
        text(rows, |a| &a.work_order_id),
        text(rows, |a| &a.asset_id),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|a| name(&a.priority)))),
        float(rows, |a| a.severity_score),
        time(rows, |a| a.at_ms),
        text(rows, |a| &a.message),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|a| a.kind.as_str()))),
        maybe_text(rows, |a| a.recipient_id.as_deref()),
        maybe_text(rows, |a| a.rule.as_deref()),
    ]
}

pub(super) fn tracks(rows: &[&DefectTrack]) -> Vec<ArrayRef> {
    vec![
        text(rows, |t| &t.track_id),
        text(rows, |t| &t.camera_id),
        text(rows, |t| &t.asset_id),
        text(rows, |t| t.class.as_str()),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|t| name(&t.state)))),
        time(rows, |t| t.first_seen_ms),
        time(rows, |t| t.last_seen_ms),
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|t| signed(t.hits)))),
        float32(rows, |t| t.area_px),
        maybe_float(rows, |t| t.size_mm),
        float(rows, |t| t.growth_px_per_min),
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|t| signed(t.best_frame_index)))),
        maybe_text(rows, |t| t.evidence.as_ref().map(|e| e.uri.as_str())),
    ]
}

pub(super) fn inventory(rows: &[&StockRow]) -> Vec<ArrayRef> {
    let int =
        |f: fn(&StockRow) -> i64| -> ArrayRef { Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| f(r)))) };
    vec![
        text(rows, |r| &r.part_id),
        time(rows, |r| r.at_ms),
        int(|r| r.on_hand),
        int(|r| r.reserved),
        int(|r| r.available),
        Arc::new(BooleanArray::from_iter(rows.iter().map(|r| Some(r.available < 0)))),
    ]
}
