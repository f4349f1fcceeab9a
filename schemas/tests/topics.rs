//! Messages as serialised by defectflow validate against the published JSON Schema of
//! their topic, the current version and every earlier one of the same major version.

#[path = "support/compatibility.rs"]
mod compatibility;

use defectflow_schemas::registry::{self, Subject};
use defectflow_schemas::{
    Alert, AlertKind, Asset, BoundingBox, DeadLetter, DefectClass, Evidence, PartLine, PartsStaging, Priority,
    ProcedureRef, RevisionKind, SCHEMA_VERSION, Severity, SeverityComponents, Shift, StagingKind, StockMovement,
    Technician, View, WoEvent, WoEventKind, WorkOrder, WorkOrderStatus, WorkType,
};
use serde_json::Value;

fn validator_of(schema: &Value) -> jsonschema::Validator {
    jsonschema::draft202012::new(schema).expect("a valid 2020-12 schema")
}

fn validator() -> jsonschema::Validator {
    validator_of(&registry::WORK_ORDER.schema())
}

fn crack_on_pulley() -> WorkOrder {
    WorkOrder {
        schema_version: SCHEMA_VERSION.to_owned(),
        work_order_id: "WO-3f9a0c1b2d4e5f60".to_owned(),
        revision: 2,
        revision_kind: RevisionKind::Updated,
        status: WorkOrderStatus::Open,
        hold_reason: None,
        work_type: WorkType::Corrective,
        due_at_ms: Some(1_795_259_200_000),
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
        other_views: vec![View {
            camera_id: "cam-pulley-west".into(),
            track_id: "TR-0a1b2c3d4e5f6071".into(),
            evidence: None,
        }],
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
fn a_message_with_a_mistyped_field_is_rejected() {
    let mut value = serde_json::to_value(crack_on_pulley()).expect("serialise");
    value["defect_class"] = Value::from(3);
    value["severity"]["priority"] = Value::from("P0");
    let found = errors(&value);
    assert!(found.iter().any(|e| e.contains("/defect_class")), "{found:?}");
    assert!(found.iter().any(|e| e.contains("/severity/priority")), "{found:?}");
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
    assert_eq!(registry::WORK_ORDER.version(), SCHEMA_VERSION);
    let schema = registry::WORK_ORDER.schema();
    let pattern = schema["properties"]["schema_version"]["pattern"].as_str().expect("pattern");
    let major = SCHEMA_VERSION.split('.').next().expect("major");
    assert!(pattern.starts_with(&format!("^{major}\\.")), "{pattern} vs {SCHEMA_VERSION}");
}

/// One message of each kind defectflow reads or writes, as its types serialise it,
/// with the subject of its topic.
fn messages() -> Vec<(&'static Subject, Value)> {
    let mut held = crack_on_pulley();
    held.status = WorkOrderStatus::OnHold;
    held.hold_reason = Some("waiting_for_parts".into());
    held.work_type = WorkType::Emergency;
    let mut inspection = crack_on_pulley();
    inspection.defect_class = DefectClass::Unknown;
    inspection.work_type = WorkType::Inspection;
    inspection.status = WorkOrderStatus::Cancelled;
    inspection.revision_kind = RevisionKind::Closed;
    inspection.due_at_ms = None;
    let technician = Technician {
        technician_id: "T-ADA".into(),
        name: "Ada".into(),
        skills: vec!["mechanical".into()],
        zone: "north".into(),
        shift: Shift { start_hour: 22, end_hour: 6 },
    };
    vec![
        (&registry::WORK_ORDER, json(&crack_on_pulley())),
        (&registry::WORK_ORDER, json(&held)),
        (&registry::WORK_ORDER, json(&inspection)),
        (
            &registry::WO_EVENT,
            json(&WoEvent {
                work_order_id: "WO-3f9a0c1b2d4e5f60".into(),
                event: WoEventKind::OnHold,
                at_ms: 1_795_000_000_000,
                technician_id: None,
                note: Some("bearing on order".into()),
                reason: Some("waiting_for_parts".into()),
                actual_hours: None,
                downtime_hours: None,
            }),
        ),
        (
            &registry::STOCK_MOVEMENT,
            json(&StockMovement { part_id: "BRG-22220".into(), delta: -2, at_ms: 1, reason: "consumed:WO-1".into() }),
        ),
        (&registry::TECHNICIAN, json(&technician)),
        (&registry::TECHNICIAN, serde_json::json!({"technician_id": "T-ADA", "removed": true})),
        (
            &registry::ASSET,
            json(&Asset {
                asset_id: "CV-101-PUL".into(),
                name: "Conveyor 101 head pulley".into(),
                asset_class: "conveyor_pulley".into(),
                criticality: 5,
                zone: "north".into(),
            }),
        ),
        (
            &registry::ALERT,
            json(&Alert {
                work_order_id: "WO-3f9a0c1b2d4e5f60".into(),
                asset_id: "CV-101-PUL".into(),
                priority: Priority::P1,
                severity_score: 82.5,
                at_ms: 1,
                message: "P1 crack".into(),
                kind: AlertKind::Escalated,
                recipient_id: Some("SUP-NORTH".into()),
                rule: Some("escalation".into()),
            }),
        ),
        (
            &registry::PARTS_STAGING,
            json(&PartsStaging {
                kind: StagingKind::Shortage,
                part_id: "BRG-22220".into(),
                work_order_id: Some("WO-3f9a0c1b2d4e5f60".into()),
                quantity: 2,
                available: -1,
                at_ms: 1,
            }),
        ),
        (
            &registry::DEAD_LETTER,
            json(&DeadLetter {
                source: "inventory/0@7".into(),
                payload: "{".into(),
                reason: "not JSON".into(),
                at_ms: 1,
            }),
        ),
    ]
}

fn json<T: serde::Serialize>(value: &T) -> Value {
    serde_json::to_value(value).expect("serialise")
}

/// A consumer written against any published version of a topic's major version reads
/// today's messages: each validates against every version.
#[test]
fn current_messages_validate_against_every_published_version() {
    let messages = messages();
    for subject in registry::SUBJECTS {
        assert!(messages.iter().any(|(s, _)| s.name == subject.name), "no message of {}", subject.name);
    }
    for (subject, message) in &messages {
        let major = subject.version().split('.').next();
        for (version, text) in subject.versions.iter().filter(|(v, _)| v.split('.').next() == major) {
            let schema: Value = serde_json::from_str(text).expect("json");
            let found: Vec<String> =
                validator_of(&schema).iter_errors(message).map(|e| format!("{e} at {}", e.instance_path())).collect();
            assert!(found.is_empty(), "{}/{version}: {found:?}\n{message}", subject.name);
        }
    }
}

/// What defectflow writes uses only the values its current schemas list: an open
/// enumeration is open to later versions, not to typos now.
#[test]
fn current_messages_use_only_listed_values() {
    for (subject, message) in messages() {
        let schema = subject.schema();
        let mut found = Vec::new();
        compatibility::unlisted_values(&schema, &schema, &message, "", &mut found);
        assert!(found.is_empty(), "{}: {found:?}", subject.name);
    }
    let mut value = serde_json::to_value(crack_on_pulley()).expect("serialise");
    value["status"] = Value::from("parked");
    let schema = registry::WORK_ORDER.schema();
    let mut found = Vec::new();
    compatibility::unlisted_values(&schema, &schema, &value, "", &mut found);
    assert_eq!(found, vec!["/status: `parked` is not listed".to_owned()]);
}

fn version(subject: &Subject, version: &str) -> Value {
    let (_, text) = subject.versions.iter().find(|(v, _)| *v == version).expect("a published version");
    serde_json::from_str(text).expect("json")
}

/// What a registry checks before it accepts a version: none breaks an earlier one of
/// its major version, whichever is compared with whichever.
#[test]
fn every_version_is_compatible_with_every_earlier_one_of_its_major() {
    for subject in registry::SUBJECTS {
        for (i, (old, _)) in subject.versions.iter().enumerate() {
            for (new, _) in &subject.versions[i + 1..] {
                if old.split('.').next() != new.split('.').next() {
                    continue;
                }
                let found = compatibility::breaking_changes(&version(subject, old), &version(subject, new));
                assert!(found.is_empty(), "{} {old} -> {new}: {found:?}", subject.name);
            }
        }
    }
}

/// Each kind of breaking change to the current work-order schema is caught by the
/// comparison with the published 1.0.0 file.
#[test]
fn a_breaking_change_fails_the_comparison_with_1_0_0() {
    let first = version(&registry::WORK_ORDER, "1.0.0");
    let current = registry::WORK_ORDER.schema();
    assert_eq!(compatibility::breaking_changes(&first, &current), Vec::<String>::new());
    type Change = fn(&mut Value);
    let changes: [(&str, Change); 7] = [
        ("/properties/reopens: removed", |s| {
            s["properties"].as_object_mut().expect("object").remove("reopens");
        }),
        ("/properties/revision/type", |s| s["properties"]["revision"]["type"] = Value::from("string")),
        ("/required", |s| s["required"].as_array_mut().expect("array").push(Value::from("work_type"))),
        ("/properties/status/x-extensible-enum: `completed` removed", |s| {
            s["properties"]["status"]["x-extensible-enum"].as_array_mut().expect("array").retain(|v| v != "completed")
        }),
        ("/properties/severity: additionalProperties is false", |s| {
            s["properties"]["severity"]["additionalProperties"] = Value::Bool(false)
        }),
        ("/properties/severity/properties/priority/enum", |s| {
            s["properties"]["severity"]["properties"]["priority"]["enum"]
                .as_array_mut()
                .expect("array")
                .push("P5".into())
        }),
        ("/$defs/bbox/properties/width/minimum", |s| s["$defs"]["bbox"]["properties"]["width"]["minimum"] = 1.into()),
    ];
    for (expected, change) in changes {
        let mut broken = current.clone();
        change(&mut broken);
        let found = compatibility::breaking_changes(&first, &broken);
        assert!(found.iter().any(|f| f.starts_with(expected)), "{expected} not in {found:?}");
    }
}

/// A message of a later minor version, with a field this version does not know, is
/// read as this version by dropping the field; required fields still have to be there.
#[test]
fn a_consumer_drops_fields_it_does_not_know() {
    let mut event = serde_json::json!({
        "work_order_id": "WO-3f9a0c1b2d4e5f60", "event": "started", "at_ms": 5, "crew_size": 2
    });
    let dropped = registry::drop_unknown_fields(&registry::WO_EVENT.schema(), &mut event);
    assert_eq!(dropped, vec!["/crew_size"]);
    let event: WoEvent = serde_json::from_value(event).expect("a wo-event");
    assert_eq!(event.event, WoEventKind::Started);
}

/// The topic guide's table names each subject's published versions, all of them.
#[test]
fn the_topic_guide_lists_every_published_version() {
    let guide = include_str!("../../docs/work-order-topic.md");
    for subject in registry::SUBJECTS {
        let cell = format!("| `{}` |", subject.name);
        let row = guide.lines().find(|l| l.contains(&cell)).unwrap_or_else(|| panic!("no row for {}", subject.name));
        let listed = row.split(&cell).nth(1).and_then(|rest| rest.split('|').next()).unwrap_or_default().trim();
        let published: Vec<&str> = subject.versions.iter().map(|(version, _)| *version).collect();
        assert_eq!(listed, published.join(", "), "{}: docs/work-order-topic.md says {listed}", subject.name);
    }
}

/// A published version never changes: each file's SHA-256 is recorded in
/// `schemas/json/published.sha256` (`sha256sum` format) when it is published, and a file
/// that differs, or one published without its line, fails here. A change is a new version.
#[test]
fn published_schema_files_never_change() {
    use sha2::{Digest, Sha256};
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("json");
    let recorded: std::collections::BTreeMap<String, String> = std::fs::read_to_string(root.join("published.sha256"))
        .expect("schemas/json/published.sha256")
        .lines()
        .filter_map(|line| line.split_once("  ").map(|(hash, path)| (path.to_owned(), hash.to_owned())))
        .collect();
    let mut published = 0;
    for subject in registry::SUBJECTS {
        for (version, text) in subject.versions {
            let path = format!("{}/{version}.json", subject.name);
            let digest: String = Sha256::digest(text.as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
            assert_eq!(
                recorded.get(&path),
                Some(&digest),
                "{path} differs from the published file (or is not recorded)"
            );
            published += 1;
        }
    }
    assert_eq!(recorded.len(), published, "a recorded file is no longer published: {recorded:?}");
}
