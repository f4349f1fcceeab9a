//! The compatibility rules a schema registry enforces between versions of one major
//! version, as the project applies them: a consumer of any version reads messages of
//! any other. Within a major version
//! - no property is removed, and none is retyped: `type`, `const`, `$ref`, `format`,
//!   `pattern` and bounds stay as they were;
//! - `required` stays as it was (a new field is optional);
//! - a closed `enum` stays as it was; an `x-extensible-enum` only grows;
//! - no object is closed (`additionalProperties: false`);
//! - `anyOf` / `oneOf` keep their branches, each compatible.

use serde_json::Value;

/// Every way `new` breaks a consumer or producer of `old`, with its JSON pointer.
pub fn breaking_changes(old: &Value, new: &Value) -> Vec<String> {
    let mut found = Vec::new();
    compare(old, new, "", &mut found);
    if let (Some(old), Some(new)) = (old.get("$defs"), new.get("$defs")) {
        compare_members(old, new, "/$defs", &mut found);
    } else if old.get("$defs").is_some() {
        found.push("/$defs: removed".into());
    }
    found
}

fn compare(old: &Value, new: &Value, path: &str, found: &mut Vec<String>) {
    if new.get("additionalProperties") == Some(&Value::Bool(false)) {
        found.push(format!("{path}: additionalProperties is false"));
    }
    for keyword in
        ["type", "const", "$ref", "format", "pattern", "minimum", "maximum", "exclusiveMinimum", "minLength", "enum"]
    {
        if old.get(keyword) != new.get(keyword) {
            found.push(format!("{path}/{keyword}: {:?} became {:?}", old.get(keyword), new.get(keyword)));
        }
    }
    let set = |schema: &Value, keyword: &str| -> Vec<String> {
        let mut values: Vec<String> = (schema.get(keyword).and_then(Value::as_array).into_iter().flatten())
            .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
            .collect();
        values.sort();
        values
    };
    if set(old, "required") != set(new, "required") {
        found.push(format!("{path}/required: {:?} became {:?}", set(old, "required"), set(new, "required")));
    }
    let (was, is) = (set(old, "x-extensible-enum"), set(new, "x-extensible-enum"));
    for value in was.iter().filter(|v| !is.contains(v)) {
        found.push(format!("{path}/x-extensible-enum: `{value}` removed"));
    }
    match (old.get("properties"), new.get("properties")) {
        (Some(old), Some(new)) => compare_members(old, new, &format!("{path}/properties"), found),
        (Some(_), None) => found.push(format!("{path}/properties: removed")),
        _ => {}
    }
    match (old.get("items"), new.get("items")) {
        (Some(old), Some(new)) => compare(old, new, &format!("{path}/items"), found),
        (Some(_), None) => found.push(format!("{path}/items: removed")),
        _ => {}
    }
    for keyword in ["anyOf", "oneOf", "allOf"] {
        let branches = |schema: &Value| schema.get(keyword).and_then(Value::as_array).cloned().unwrap_or_default();
        let (old, new) = (branches(old), branches(new));
        if old.len() != new.len() {
            found.push(format!("{path}/{keyword}: {} branches became {}", old.len(), new.len()));
            continue;
        }
        for (i, (old, new)) in old.iter().zip(&new).enumerate() {
            compare(old, new, &format!("{path}/{keyword}/{i}"), found);
        }
    }
}

fn compare_members(old: &Value, new: &Value, path: &str, found: &mut Vec<String>) {
    for (name, was) in old.as_object().into_iter().flatten() {
        match new.get(name) {
            Some(is) => compare(was, is, &format!("{path}/{name}"), found),
            None => found.push(format!("{path}/{name}: removed")),
        }
    }
}

/// Values of `x-extensible-enum` fields in `value` that `schema` does not list: what a
/// producer must not send before a version lists them.
pub fn unlisted_values(root: &Value, schema: &Value, value: &Value, path: &str, found: &mut Vec<String>) {
    let schema = match schema.get("$ref").and_then(Value::as_str).and_then(|r| r.strip_prefix('#')) {
        Some(target) => root.pointer(target).unwrap_or(schema),
        None => schema,
    };
    if let (Some(listed), Some(text)) = (schema.get("x-extensible-enum").and_then(Value::as_array), value.as_str())
        && !listed.iter().any(|v| v.as_str() == Some(text))
    {
        found.push(format!("{path}: `{text}` is not listed"));
    }
    let branches =
        ["anyOf", "oneOf", "allOf"].iter().flat_map(|k| schema.get(*k).and_then(Value::as_array).into_iter().flatten());
    for branch in std::iter::once(schema).chain(branches) {
        if let (Some(properties), Some(members)) = (branch.get("properties"), value.as_object()) {
            for (name, member) in members {
                if let Some(property) = properties.get(name) {
                    unlisted_values(root, property, member, &format!("{path}/{name}"), found);
                }
            }
        }
        if let (Some(items), Some(elements)) = (branch.get("items"), value.as_array()) {
            for (i, element) in elements.iter().enumerate() {
                unlisted_values(root, items, element, &format!("{path}/{i}"), found);
            }
        }
    }
}
