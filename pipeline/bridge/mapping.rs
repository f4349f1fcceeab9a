//! A CMMS's REST API as data (`cmms/<name>.toml`): which request creates, updates and
//! finds a work order, how a revision's fields fill its body, and which of the CMMS's
//! statuses are which wo-event. Templates name a revision's fields in braces.
//!
//! A template is a string. `{field}` is a field of the revision (`{severity.priority}`
//! reaches into an object), of the bridge's context (`title`, `description`, `ref`, ...)
//! or of `[cmms.values]`. Filters follow a bar: `{work_type|worktype}` looks the value up
//! in the mapping's `[maps.worktype]` (a value the map lacks goes to its `"*"` entry, or
//! through unchanged), `{asset_id|number}` makes a number of a text (null if it is not
//! one), `{secret|base64}` encodes, `{due_at_ms|rfc3339}` writes a time as RFC 3339,
//! `{due_at_ms|odata_date}` as OData V2's `/Date(ms)/`, `{title|max:100}` cuts a text to
//! 100 characters, `{work_order_id|upper}` upper-cases and `{work_order_id|url}`
//! percent-encodes. A template that is one
//! placeholder and nothing else keeps the value's JSON type (a number stays a number),
//! and a body field whose value is null (no technician, no due date) is left out.

use std::collections::BTreeMap;

use defectflow_schemas::WoEventKind;
use serde::Deserialize;
use serde_json::{Map, Value};

/// The mappings shipped with defectflow, by name.
pub const BUILT_IN: [(&str, &str); 4] = [
    ("maximo", include_str!("../../cmms/maximo.toml")),
    ("sap-pm", include_str!("../../cmms/sap-pm.toml")),
    ("maintainx", include_str!("../../cmms/maintainx.toml")),
    ("webhook", include_str!("../../cmms/webhook.toml")),
];

/// One CMMS's API; see the module documentation.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mapping {
    /// The CMMS, for logs and dead letters.
    pub name: String,
    /// Headers on every request (the credential: `Authorization = "Bearer {secret}"`).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// A token fetched before writes and sent with them (SAP's CSRF token).
    #[serde(default)]
    pub token: Option<TokenFetch>,
    /// Makes the record for a work order's first revision the bridge sends.
    pub create: Request,
    /// Changes the record (`{ref}` is the CMMS's reference to it) for later revisions.
    pub update: Request,
    /// Finds the record of a work order (`{work_order_id}`): after a create the CMMS
    /// refused as a duplicate, before an update whose reference the journal lacks, and
    /// before each create where `before_create` says so.
    #[serde(default)]
    pub lookup: Option<Lookup>,
    /// Lists records changed since `{since}`, whose statuses come back as wo-events.
    #[serde(default)]
    pub poll: Option<Poll>,
    /// Value maps for the `|name` filter.
    #[serde(default)]
    pub maps: BTreeMap<String, BTreeMap<String, Value>>,
    /// The CMMS's statuses that are wo-events; the others are not reported.
    #[serde(default)]
    pub statuses: BTreeMap<String, StatusEvent>,
    /// A 409 means "still processing, ask again" (the Idempotency-Key draft's meaning)
    /// rather than "exists already".
    #[serde(default)]
    pub conflict_means_again: bool,
}

/// One request of the API.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    #[serde(default = "post")]
    pub method: String,
    /// Under the configured base URL; a template (an absolute `{ref}` is used as it is).
    pub path: String,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The JSON body, its string leaves templates; absent: no body.
    #[serde(default)]
    pub body: Option<Value>,
    /// Where the answer to a create names the new record: `header:Location` or a JSON
    /// pointer into the body (`/href`).
    #[serde(default)]
    pub reference: Option<String>,
    /// Text in an error answer that says the record exists already (Maximo answers a
    /// duplicate key with 400 and reason code BMXAA4129E, for example).
    #[serde(default)]
    pub duplicate_marker: Option<String>,
}

fn post() -> String {
    "POST".into()
}

/// A token fetched with a request and sent back as a header.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenFetch {
    pub path: String,
    /// Headers of the fetch (`X-CSRF-Token = "Fetch"`).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The answer's header that carries the token, and the header that sends it.
    pub header: String,
}

/// Finding one record.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lookup {
    pub path: String,
    /// JSON pointer to the record in the answer (`/member/0`); absent or null: none.
    pub record: String,
    /// JSON pointer, in the record, to the reference updates use.
    pub reference: String,
    /// JSON pointer, in the record, to the last defectflow revision written to it.
    #[serde(default)]
    pub revision: Option<String>,
    /// Look before each create (one request per new work order): for a CMMS that keeps
    /// no idempotency key, so a create in flight when a bridge died is found, not made
    /// twice.
    #[serde(default)]
    pub before_create: bool,
}

/// Listing changed records.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Poll {
    /// `{since}`, as `since_format` writes it, is the earliest change wanted.
    pub path: String,
    /// `rfc3339` (UTC), `epoch_ms` or `odata` (`datetimeoffset'…'` without `Z`).
    #[serde(default = "rfc3339")]
    pub since_format: String,
    /// JSON pointer to the array of records.
    pub records: String,
    /// JSON pointers, in a record, to what names it (`key_is`: the work-order id
    /// defectflow gave it, or the CMMS's reference), its status, and (optionally) when it
    /// last changed (RFC 3339, or OData's `/Date(ms)/`).
    pub key: String,
    #[serde(default = "work_order_id")]
    pub key_is: String,
    pub status: String,
    #[serde(default)]
    pub changed_at: Option<String>,
    /// JSON pointers, in a record, to the labour hours booked on it and the hours its
    /// asset was down (numbers, or numbers as text), sent with a `completed` event as
    /// its `actual_hours` and `downtime_hours`; absent: not sent.
    #[serde(default)]
    pub actual_hours: Option<String>,
    #[serde(default)]
    pub downtime_hours: Option<String>,
    /// JSON pointer, in a record, to text that holds the work-order id (the long text
    /// defectflow wrote). With it, a create in flight when a bridge died is looked for
    /// among the records changed since, before it is sent again: for a CMMS that keeps
    /// no idempotency key and cannot be searched by an external id (MaintainX).
    #[serde(default)]
    pub text: Option<String>,
    /// JSON pointer to the next page's URL or cursor in the answer, appended to `path`
    /// as `next_param`; absent: one page.
    #[serde(default)]
    pub next: Option<String>,
    #[serde(default)]
    pub next_param: Option<String>,
}

fn rfc3339() -> String {
    "rfc3339".into()
}

fn work_order_id() -> String {
    "work_order_id".into()
}

/// The wo-event a CMMS status is.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusEvent {
    pub event: WoEventKind,
    /// The event's `reason` (`waiting_for_parts` for Maximo's WMATL).
    #[serde(default)]
    pub reason: Option<String>,
}

impl Mapping {
    /// A built-in mapping by name, or the TOML file at `path_or_name`.
    pub fn load(path_or_name: &str) -> Result<Mapping, String> {
        let text = match BUILT_IN.iter().find(|(name, _)| *name == path_or_name) {
            Some((_, text)) => (*text).to_owned(),
            None => std::fs::read_to_string(path_or_name).map_err(|e| {
                let names: Vec<&str> = BUILT_IN.iter().map(|(n, _)| *n).collect();
                format!(
                    "`{path_or_name}` is neither a built-in mapping ({}) nor a readable file: {e}",
                    names.join(", ")
                )
            })?,
        };
        let mapping: Mapping = toml::from_str(&text).map_err(|e| format!("mapping `{path_or_name}`: {e}"))?;
        mapping.check().map_err(|e| format!("mapping `{path_or_name}`: {e}"))?;
        Ok(mapping)
    }

    /// Every filter a template names is known: a mistake shows at start, not at the
    /// first work order.
    fn check(&self) -> Result<(), String> {
        let mut templates: Vec<&str> = self.headers.values().map(String::as_str).collect();
        for request in [&self.create, &self.update] {
            templates.push(&request.path);
            templates.extend(request.headers.values().map(String::as_str));
            if let Some(body) = &request.body {
                strings(body, &mut templates);
            }
        }
        if let Some(token) = &self.token {
            templates.push(&token.path);
            templates.extend(token.headers.values().map(String::as_str));
        }
        templates.extend(self.lookup.iter().map(|l| l.path.as_str()));
        templates.extend(self.poll.iter().map(|p| p.path.as_str()));
        for template in templates {
            for (_, filters) in placeholders(template) {
                for filter in filters {
                    let name = filter.split(':').next().unwrap_or_default();
                    let known =
                        matches!(name, "rfc3339" | "odata_date" | "url" | "upper" | "max" | "number" | "base64")
                            || self.maps.contains_key(name);
                    if !known {
                        return Err(format!(
                            "template `{template}` names filter `{filter}`, which is not a map or filter"
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// `template` with the context's values.
    pub fn render(&self, template: &str, context: &Value) -> String {
        let mut out = String::new();
        let mut rest = template;
        while let Some(open) = rest.find('{') {
            out.push_str(&rest[..open]);
            let Some(close) = rest[open..].find('}') else {
                break;
            };
            let value = self.value(&rest[open + 1..open + close], context);
            match value {
                Value::String(s) => out.push_str(&s),
                Value::Null => {}
                other => out.push_str(&other.to_string()),
            }
            rest = &rest[open + close + 1..];
        }
        out.push_str(rest);
        out
    }

    /// The JSON body of `body` (a template tree) in `context`.
    pub fn render_body(&self, body: &Value, context: &Value) -> Value {
        match body {
            Value::String(template) => match one_placeholder(template) {
                Some(inner) => self.value(inner, context),
                None => Value::String(self.render(template, context)),
            },
            Value::Object(fields) => {
                let mut out = Map::new();
                for (name, template) in fields {
                    let value = self.render_body(template, context);
                    if !value.is_null() {
                        out.insert(name.clone(), value);
                    }
                }
                Value::Object(out)
            }
            Value::Array(items) => Value::Array(items.iter().map(|i| self.render_body(i, context)).collect()),
            literal => literal.clone(),
        }
    }

    /// A placeholder's value (`field|filter|filter`).
    fn value(&self, placeholder: &str, context: &Value) -> Value {
        let mut parts = placeholder.split('|');
        let path = parts.next().unwrap_or_default().trim();
        let mut value = path.split('.').try_fold(context, |v, key| v.get(key)).cloned().unwrap_or(Value::Null);
        for filter in parts {
            if value.is_null() {
                break;
            }
            let (name, argument) = filter.trim().split_once(':').unwrap_or((filter.trim(), ""));
            value = match name {
                "rfc3339" => value.as_u64().map_or(Value::Null, |ms| crate::clock::rfc3339(ms).into()),
                "odata_date" => value.as_u64().map_or(Value::Null, |ms| format!("/Date({ms})/").into()),
                "url" => percent_encode(&as_text(&value)).into(),
                "upper" => as_text(&value).to_uppercase().into(),
                "max" => {
                    let most = argument.parse().unwrap_or(usize::MAX);
                    as_text(&value).chars().take(most).collect::<String>().into()
                }
                "number" => as_text(&value).parse::<f64>().ok().map_or(Value::Null, json_number),
                "base64" => base64(as_text(&value).as_bytes()).into(),
                map => {
                    let table = self.maps.get(map);
                    let mapped = table.and_then(|t| t.get(&as_text(&value)).or_else(|| t.get("*")));
                    mapped.cloned().unwrap_or(value)
                }
            };
        }
        value
    }

    /// The wo-event of a CMMS status, if it is one.
    pub fn status_event(&self, status: &str) -> Option<&StatusEvent> {
        self.statuses.get(status)
    }
}

fn json_number(n: f64) -> Value {
    if n.fract() == 0.0 && n.abs() < 9e15 {
        Value::from(n as i64)
    } else {
        serde_json::Number::from_f64(n).map_or(Value::Null, Value::Number)
    }
}

/// Standard base64 with padding (RFC 4648): basic authentication, WS-Security digests.
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn as_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The inside of a template that is exactly one placeholder.
fn one_placeholder(template: &str) -> Option<&str> {
    let inner = template.strip_prefix('{')?.strip_suffix('}')?;
    (!inner.contains(['{', '}'])).then_some(inner)
}

/// Each placeholder of a template: its path and its filters.
fn placeholders(template: &str) -> Vec<(&str, Vec<&str>)> {
    let mut out = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}') else { break };
        let mut parts = rest[open + 1..open + close].split('|');
        let path = parts.next().unwrap_or_default();
        out.push((path, parts.map(str::trim).collect()));
        rest = &rest[open + close + 1..];
    }
    out
}

fn strings<'a>(value: &'a Value, out: &mut Vec<&'a str>) {
    match value {
        Value::String(s) => out.push(s),
        Value::Object(fields) => fields.values().for_each(|v| strings(v, out)),
        Value::Array(items) => items.iter().for_each(|v| strings(v, out)),
        _ => {}
    }
}

/// RFC 3986 percent-encoding of everything but the unreserved characters.
pub fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// The value at a JSON pointer, or `header:Name` among the answer's headers.
pub fn pick(pointer: &str, body: &Value, headers: &[(String, String)]) -> Option<String> {
    if let Some(name) = pointer.strip_prefix("header:") {
        return headers.iter().find(|(h, _)| h.eq_ignore_ascii_case(name)).map(|(_, v)| v.clone());
    }
    match body.pointer(pointer)? {
        Value::Null => None,
        value => Some(as_text(value)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn mapping() -> Mapping {
        toml::from_str(
            r#"
            name = "test"
            [create]
            path = "/wo"
            body = { number = "{revision}", title = "{title|max:5}", kind = "{work_type|kind}", lead = "{technician_id}", fixed = 3 }
            [update]
            method = "PATCH"
            path = "{ref}?id={work_order_id|url}"
            [maps.kind]
            corrective = "CM"
            "*" = "OTHER"
            "#,
        )
        .expect("mapping")
    }

    #[test]
    fn templates_keep_types_map_values_and_leave_out_nulls() {
        let mut m = mapping();
        m.check().expect("filters known");
        let context = json!({"revision": 3, "title": "crack on pulley", "work_type": "predictive",
                             "technician_id": null, "ref": "/wo/7", "work_order_id": "WO-1 a"});
        let body = m.render_body(m.create.body.as_ref().expect("body"), &context);
        assert_eq!(body, json!({"number": 3, "title": "crack", "kind": "OTHER", "fixed": 3}));
        assert_eq!(m.render(&m.update.path, &context), "/wo/7?id=WO-1%20a");
        let context = json!({"work_type": "corrective", "asset": "CV-1", "n": "42", "who": "Aladdin:open sesame"});
        assert_eq!(m.render("{work_type|kind}-{missing}", &context), "CM-");
        // A value a map lacks (no "*") goes through; `number` of a text that is not one is null.
        m.maps.insert("asset".into(), BTreeMap::new());
        assert_eq!(
            m.render_body(&json!({"a": "{asset|asset}", "b": "{asset|number}", "c": "{n|number}"}), &context),
            json!({"a": "CV-1", "c": 42})
        );
        assert_eq!(m.render("{who|base64}", &context), "QWxhZGRpbjpvcGVuIHNlc2FtZQ==");
    }

    #[test]
    fn an_unknown_filter_is_refused_at_load() {
        let mut m = mapping();
        m.create.path = "/wo/{work_type|nosuchmap}".into();
        let error = m.check().expect_err("unknown filter");
        assert!(error.contains("nosuchmap"), "{error}");
    }

    #[test]
    fn every_built_in_mapping_loads() {
        for (name, _) in BUILT_IN {
            let mapping = Mapping::load(name).expect(name);
            assert_eq!(mapping.name, name);
        }
        let error = Mapping::load("nosuch").expect_err("unknown");
        assert!(error.contains("maximo, sap-pm, maintainx, webhook"), "{error}");
    }

    #[test]
    fn picks_from_headers_and_pointers() {
        let headers = vec![("location".to_owned(), "/wo/9".to_owned())];
        assert_eq!(pick("header:Location", &Value::Null, &headers).as_deref(), Some("/wo/9"));
        assert_eq!(pick("/d/id", &json!({"d": {"id": 12}}), &[]).as_deref(), Some("12"));
        assert_eq!(pick("/member/0", &json!({"member": []}), &[]), None);
    }
}
