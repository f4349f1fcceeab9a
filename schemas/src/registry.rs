//! The JSON Schemas of every topic defectflow reads or writes, each subject with every
//! version published under `schemas/json/<subject>/<version>.json`.
//!
//! Evolution follows the rules a schema registry enforces for backward- and
//! forward-compatible minor versions: within a major version a field is never removed,
//! renamed or retyped and no field becomes required; objects stay open (no
//! `additionalProperties: false`), and enumerations that may grow are
//! `x-extensible-enum` lists, whose unknown values a consumer ignores. A message of the
//! current version therefore validates against every earlier schema of its major.

use serde_json::Value;

/// One subject: the messages of one topic, with its published versions, oldest first.
#[derive(Debug, PartialEq, Eq)]
pub struct Subject {
    /// The subject's name, as in `schemas/json/<name>/` and the schema's `$id`.
    pub name: &'static str,
    /// `(version, schema text)`, oldest first; the last is the current one.
    pub versions: &'static [(&'static str, &'static str)],
    /// The CloudEvents `ce_type` of the messages defectflow writes (outputs, and the
    /// wo-events of `defectflow bridge`).
    pub event_type: Option<&'static str>,
}

impl Subject {
    /// The current version (`major.minor.patch`).
    pub fn version(&self) -> &'static str {
        self.versions.last().map_or("", |(v, _)| v)
    }

    /// The current schema's text.
    pub fn schema_text(&self) -> &'static str {
        self.versions.last().map_or("", |(_, s)| s)
    }

    /// The current schema's `$id` (its URL, `ce_dataschema`).
    pub fn id(&self) -> String {
        format!("{SCHEMA_BASE}/{}/{}", self.name, self.version())
    }

    /// The current schema, parsed.
    pub fn schema(&self) -> Value {
        // The texts are checked by the crate's tests.
        serde_json::from_str(self.schema_text()).unwrap_or(Value::Null)
    }

    /// The current schema, parsed once for the process (inputs are read against it
    /// message by message).
    pub fn parsed(&self) -> &'static Value {
        static PARSED: std::sync::OnceLock<Vec<(&'static str, Value)>> = std::sync::OnceLock::new();
        static NONE: Value = Value::Null;
        let all = PARSED.get_or_init(|| SUBJECTS.iter().map(|s| (s.name, s.schema())).collect());
        all.iter().find(|(name, _)| *name == self.name).map_or(&NONE, |(_, schema)| schema)
    }
}

/// Where the schemas' `$id`s live.
pub const SCHEMA_BASE: &str = "https://defectflow.dev/schemas";

macro_rules! versions {
    ($subject:literal: $($version:literal),+) => {
        &[$(($version, include_str!(concat!("../json/", $subject, "/", $version, ".json")))),+]
    };
}

/// Work-order revisions (`defectflow.work-orders`, out).
pub const WORK_ORDER: Subject = Subject {
    name: "work-order",
    versions: versions!("work-order": "1.0.0", "1.1.0", "1.2.0", "1.3.0"),
    event_type: Some("dev.defectflow.work_order.revision"),
};
/// CMMS status events (`defectflow.wo-events`, in; `defectflow bridge` writes them).
pub const WO_EVENT: Subject = Subject {
    name: "wo-event",
    versions: versions!("wo-event": "1.0.0", "1.1.0", "1.2.0", "1.3.0"),
    event_type: Some("dev.defectflow.wo_event"),
};
/// Stock movements (`defectflow.inventory`, in; parts consumed are written there too).
pub const STOCK_MOVEMENT: Subject =
    Subject { name: "stock-movement", versions: versions!("stock-movement": "1.0.0"), event_type: None };
/// Technicians (`defectflow.technicians`, in, compacted).
pub const TECHNICIAN: Subject =
    Subject { name: "technician", versions: versions!("technician": "1.0.0"), event_type: None };
/// Assets (`defectflow.assets`, in, compacted).
pub const ASSET: Subject = Subject { name: "asset", versions: versions!("asset": "1.0.0"), event_type: None };
/// Supervisor alerts (`defectflow.alerts`, out).
pub const ALERT: Subject =
    Subject { name: "alert", versions: versions!("alert": "1.0.0", "1.1.0"), event_type: Some("dev.defectflow.alert") };
/// Parts staging (`defectflow.parts-staging`, out).
pub const PARTS_STAGING: Subject = Subject {
    name: "parts-staging",
    versions: versions!("parts-staging": "1.0.0"),
    event_type: Some("dev.defectflow.parts_staging"),
};
/// Dead letters (`defectflow.dead-letter`, out).
pub const DEAD_LETTER: Subject = Subject {
    name: "dead-letter",
    versions: versions!("dead-letter": "1.0.0"),
    event_type: Some("dev.defectflow.dead_letter"),
};

/// The subject of messages of CloudEvents type `event_type`.
pub fn by_event_type(event_type: &str) -> Option<&'static Subject> {
    SUBJECTS.into_iter().find(|s| s.event_type == Some(event_type))
}

/// Every subject.
pub const SUBJECTS: [&Subject; 8] =
    [&WORK_ORDER, &WO_EVENT, &STOCK_MOVEMENT, &TECHNICIAN, &ASSET, &ALERT, &PARTS_STAGING, &DEAD_LETTER];

/// Removes from `value` every object member that `schema` does not name (at any depth
/// the schema describes), as a consumer of the schema's version does with fields a
/// later minor version added; returns their JSON paths. Members of a schema that names
/// no properties are kept.
pub fn drop_unknown_fields(schema: &Value, value: &mut Value) -> Vec<String> {
    let mut dropped = Vec::new();
    drop_unknown(schema, schema, value, "", &mut dropped);
    dropped
}

fn drop_unknown(root: &Value, schema: &Value, value: &mut Value, path: &str, dropped: &mut Vec<String>) {
    let alternatives = alternatives(root, schema);
    match value {
        Value::Object(members) => {
            let mut properties: Vec<(&String, &Value)> = Vec::new();
            for s in &alternatives {
                properties.extend(s.get("properties").and_then(Value::as_object).into_iter().flatten());
            }
            if properties.is_empty() {
                return;
            }
            members.retain(|name, _| {
                let known = properties.iter().any(|(p, _)| *p == name);
                if !known {
                    dropped.push(format!("{path}/{name}"));
                }
                known
            });
            for (name, member) in members.iter_mut() {
                for (_, property) in properties.iter().filter(|(p, _)| *p == name) {
                    drop_unknown(root, property, member, &format!("{path}/{name}"), dropped);
                }
            }
        }
        Value::Array(items) => {
            for s in &alternatives {
                if let Some(item) = s.get("items") {
                    for (i, element) in items.iter_mut().enumerate() {
                        drop_unknown(root, item, element, &format!("{path}/{i}"), dropped);
                    }
                }
            }
        }
        _ => {}
    }
}

/// The schema itself, what its local `$ref` points to and its `anyOf` / `oneOf` /
/// `allOf` branches, flattened.
fn alternatives<'a>(root: &'a Value, schema: &'a Value) -> Vec<&'a Value> {
    let mut all = vec![schema];
    let target = schema.get("$ref").and_then(Value::as_str).and_then(|r| r.strip_prefix('#'));
    if let Some(resolved) = target.and_then(|t| root.pointer(t)) {
        all.extend(alternatives(root, resolved));
    }
    for keyword in ["anyOf", "oneOf", "allOf"] {
        for branch in schema.get(keyword).and_then(Value::as_array).into_iter().flatten() {
            all.extend(alternatives(root, branch));
        }
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_published_schema_is_json_with_its_id_and_versions_grow() {
        for subject in SUBJECTS {
            assert_eq!(subject.parsed(), &subject.schema(), "{}", subject.name);
            let mut last = (0u32, 0u32, 0u32);
            for (version, text) in subject.versions {
                let schema: Value = serde_json::from_str(text)
                    .unwrap_or_else(|e| panic!("schemas/json/{}/{version}.json: {e}", subject.name));
                let id = format!("{SCHEMA_BASE}/{}/{version}", subject.name);
                assert_eq!(schema["$id"], Value::from(id), "{}/{version}", subject.name);
                let parts: Vec<u32> = version.split('.').map(|p| p.parse().expect("a number")).collect();
                let this = (parts[0], parts[1], parts[2]);
                assert!(this > last, "{}: {version} after {last:?}", subject.name);
                last = this;
            }
        }
    }

    #[test]
    fn fields_a_later_version_adds_are_dropped_at_every_depth() {
        let schema = TECHNICIAN.schema();
        let mut value = serde_json::json!({
            "technician_id": "T-1", "name": "Ada", "skills": ["electrical"], "zone": "north",
            "shift": {"start_hour": 6, "end_hour": 14, "break_minutes": 30},
            "certified_until": "2027-01-01"
        });
        let dropped = drop_unknown_fields(&schema, &mut value);
        assert_eq!(dropped, vec!["/certified_until", "/shift/break_minutes"]);
        assert_eq!(value["shift"], serde_json::json!({"start_hour": 6, "end_hour": 14}));

        let schema = WORK_ORDER.schema();
        let mut value = serde_json::json!({"parts": [{"part_id": "P", "quantity": 1, "available": true, "bin": "A3"}],
            "evidence": {"uri": "e.jpg", "bbox": {"x": 1, "y": 2, "width": 3, "height": 4, "angle": 0}}});
        let dropped = drop_unknown_fields(&schema, &mut value);
        assert_eq!(dropped, vec!["/evidence/bbox/angle", "/parts/0/bin"]);
    }
}
