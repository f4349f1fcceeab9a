//! Work orders as serialised by defectflow validate against the shipped JSON Schema.

use defectflow_schemas::{
    BoundingBox, DefectClass, Evidence, PartLine, Priority, ProcedureRef, RevisionKind, SCHEMA_VERSION, Severity,
    SeverityComponents, WORK_ORDER_JSON_SCHEMA, WorkOrder, WorkOrderStatus,
};
use serde_json::Value;

fn validator() -> jsonschema::Validator {
    let schema: Value = serde_json::from_str(WORK_ORDER_JSON_SCHEMA).expect("work-order.schema.json is JSON");
    jsonschema::draft202012::new(&schema).expect("work-order.schema.json is a valid 2020-12 schema")
}

fn crack_on_pulley() -> WorkOrder {
    WorkOrder {
        schema_version: SCHEMA_VERSION.to_owned(),
        work_order_id: "WO-3f9a0c1b2d4e5f60".to_owned(),
        revision: 2,
        revision_kind: RevisionKind::Updated,
        status: WorkOrderStatus::Open,
        asset_id: "CV-101-PUL".to_owned(),
        asset_name: "Conveyor 101 head pulley".to_owned(),
        camera_id: "cam-01".to_owned(),
        track_id: "TR-cam-01-000017".to_owned(),
        defect_class: DefectClass::Crack,
        severity: Severity {
            score: 71.5,
            priority: Priority::P2,
            components: SeverityComponents { size: 20.0, growth: 18.5, criticality: 25.0, history: 8.0 },
        },
        procedure: Some(ProcedureRef {
            procedure_id: "PR-PUL-CRACK".to_owned(),
            title: "Replace cracked pulley lagging".to_owned(),
            required_skill: "mechanical".to_owned(),
            estimated_hours: 3.5,
            steps: vec!["Lock out conveyor".to_owned(), "Remove lagging".to_owned()],
        }),
        parts: vec![PartLine { part_id: "LAG-400".to_owned(), quantity: 2, available: true }],
        technician_id: Some("T-007".to_owned()),
        evidence: Some(Evidence {
            uri: "evidence/WO-3f9a0c1b2d4e5f60-r2.jpg".to_owned(),
            sha256: "a".repeat(64),
            frame_index: 4512,
            capture_ms: 1_795_000_000_000,
            bbox: BoundingBox { x: 120.0, y: 80.0, width: 40.0, height: 12.0 },
        }),
        detected_at_ms: 1_795_000_000_000,
        revised_at_ms: 1_795_000_060_000,
        reopens: None,
        model_version: "df-7c1e".to_owned(),
        shadow: false,
    }
}

fn errors(instance: &Value) -> Vec<String> {
    validator().iter_errors(instance).map(|e| format!("{} at {}", e, e.instance_path())).collect()
}

#[test]
fn serialised_work_orders_are_valid() {
    let full = serde_json::to_value(crack_on_pulley()).expect("serialise");
    assert_eq!(errors(&full), Vec::<String>::new());

    let mut bare = crack_on_pulley();
    bare.procedure = None;
    bare.evidence = None;
    bare.technician_id = None;
    bare.parts.clear();
    bare.reopens = Some("WO-0000000000000001".to_owned());
    let bare = serde_json::to_value(bare).expect("serialise");
    assert_eq!(errors(&bare), Vec::<String>::new());
}

#[test]
fn a_message_with_an_unknown_class_is_rejected() {
    let mut value = serde_json::to_value(crack_on_pulley()).expect("serialise");
    value["defect_class"] = Value::from("rust_stain");
    let found = errors(&value);
    assert!(found.iter().any(|e| e.contains("/defect_class")), "{found:?}");
}

#[test]
fn a_message_missing_its_schema_version_or_with_a_bad_score_is_rejected() {
    let mut value = serde_json::to_value(crack_on_pulley()).expect("serialise");
    value.as_object_mut().expect("object").remove("schema_version");
    value["severity"]["score"] = Value::from(140.0);
    let found = errors(&value);
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(found.iter().any(|e| e.contains("schema_version")), "{found:?}");
    assert!(found.iter().any(|e| e.contains("/severity/score")), "{found:?}");
}

#[test]
fn the_schema_pins_the_crate_schema_version() {
    let schema: Value = serde_json::from_str(WORK_ORDER_JSON_SCHEMA).expect("json");
    let pattern = schema["properties"]["schema_version"]["pattern"].as_str().expect("pattern");
    let major = SCHEMA_VERSION.split('.').next().expect("major");
    assert!(pattern.starts_with(&format!("^{major}\\.")), "{pattern} vs {SCHEMA_VERSION}");
}
