//! One message for an output topic: its record key, idempotency key and payload, and
//! the CloudEvents attributes it carries in binary mode (CloudEvents 1.0, Kafka protocol
//! binding: each attribute a `ce_` header, `content-type` the data's media type), so
//! that a CMMS's CloudEvents SDK, router or schema-aware consumer reads it as an event.
//! The record's timestamp is the event's time, not the time it was sent.

use defectflow_schemas::registry::{self, Subject};
use defectflow_schemas::{AlertKind, Emitted};
use rdkafka::message::{Header, OwnedHeaders};

use crate::clock::rfc3339;
use crate::kafka::TopicsConfig;

/// Header names on every output message.
pub mod headers {
    pub const SCHEMA_VERSION: &str = "schema_version";
    pub const CONTENT_TYPE: &str = "content-type";
    pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
    /// The `sink_id` of the run that sent the message: a restart takes up its own work
    /// orders only.
    pub const SINK_ID: &str = "defectflow-sink-id";
    /// The dataflow time the message was derived at (decimal): a restarted sink learns
    /// which of the messages a crashed run sent ahead of its progress record a later
    /// record covers.
    pub const TIME: &str = "defectflow-time";
}

/// CloudEvents attribute headers (binary content mode).
pub mod ce {
    pub const SPECVERSION: &str = "ce_specversion";
    /// The idempotency key: the same event sent again has the same id.
    pub const ID: &str = "ce_id";
    pub const TYPE: &str = "ce_type";
    /// `/defectflow/<sink_id>`.
    pub const SOURCE: &str = "ce_source";
    /// The work order (revisions, alerts), the part (parts staging) or the input topic
    /// (dead letters) the event is about.
    pub const SUBJECT: &str = "ce_subject";
    /// The event's time, RFC 3339 in UTC with milliseconds.
    pub const TIME: &str = "ce_time";
    /// The `$id` of the JSON Schema (`schemas/json/`) the message's data follows.
    pub const DATASCHEMA: &str = "ce_dataschema";
}

/// The CloudEvents version the headers follow.
pub const SPECVERSION: &str = "1.0";

/// One message for an output topic.
#[derive(Clone, Debug, PartialEq)]
pub struct Outgoing {
    pub topic: String,
    pub key: String,
    /// Names the message across runs: `<work order>:<revision>` for a revision.
    pub idempotency_key: String,
    pub payload: Vec<u8>,
    /// The event's time (ms since the epoch): the record's timestamp and `ce_time`.
    pub event_ms: u64,
    /// The schema subject of the payload; its `event_type` is `ce_type`, for example
    /// `dev.defectflow.work_order.revision` (reverse DNS of the schemas' domain).
    pub schema: &'static Subject,
    /// `ce_subject`.
    pub subject: String,
}

impl Outgoing {
    /// The message for one dataflow output, or `None` for outputs that do not go to
    /// Kafka (assignments travel inside their work-order revision and the audit log).
    pub fn of(message: &Emitted, topics: &TopicsConfig) -> Option<Outgoing> {
        let (topic, key, idempotency_key, payload, event_ms, schema) = match message {
            Emitted::WorkOrder(w) => (
                &topics.work_orders,
                w.work_order_id.clone(),
                format!("{}:{}", w.work_order_id, w.revision),
                serde_json::to_vec(w),
                w.revised_at_ms,
                &registry::WORK_ORDER,
            ),
            // Keyed by its recipient: each person's alerts in order on one partition.
            Emitted::Alert(a) => (
                &topics.alerts,
                a.recipient_id.clone().unwrap_or_else(|| a.work_order_id.clone()),
                match (&a.recipient_id, a.kind, &a.rule) {
                    (None, AlertKind::Raised, None) => {
                        format!("alert:{}:{}:{:?}", a.work_order_id, a.at_ms, a.priority)
                    }
                    // Two rules may reach one person (or nobody) at once: each its own.
                    (recipient, kind, rule) => format!(
                        "alert:{}:{}:{:?}:{}:{}:{}",
                        a.work_order_id,
                        a.at_ms,
                        a.priority,
                        kind.as_str(),
                        recipient.as_deref().unwrap_or("-"),
                        rule.as_deref().unwrap_or("-")
                    ),
                },
                serde_json::to_vec(a),
                a.at_ms,
                &registry::ALERT,
            ),
            Emitted::PartsStaging(s) => {
                let order = s.work_order_id.as_deref().unwrap_or("-");
                (
                    &topics.parts_staging,
                    s.part_id.clone(),
                    format!("staging:{:?}:{}:{}:{}:{}", s.kind, s.part_id, order, s.quantity, s.at_ms),
                    serde_json::to_vec(s),
                    s.at_ms,
                    &registry::PARTS_STAGING,
                )
            }
            Emitted::DeadLetter(d) => (
                &topics.dead_letter,
                d.source.clone(),
                format!("dead:{}:{}:{:016x}", d.source, d.at_ms, fnv(d.payload.as_bytes())),
                serde_json::to_vec(d),
                d.at_ms,
                &registry::DEAD_LETTER,
            ),
            Emitted::Assignment(_) => return None,
        };
        // The schema types serialise infallibly (no maps with non-string keys).
        let payload = payload.ok()?;
        // What the event is about: the record key, but an alert's work order (its key
        // is its recipient).
        let subject = match message {
            Emitted::Alert(a) => a.work_order_id.clone(),
            _ => key.clone(),
        };
        Some(Outgoing { topic: topic.clone(), key, idempotency_key, payload, event_ms, schema, subject })
    }

    /// Every header of the message sent by sink `sink_id` (from the dataflow, at `time`):
    /// its schema's version, the content type, the idempotency key, the sink, the time
    /// and the CloudEvents attributes.
    pub fn headers(&self, sink_id: &str, time: Option<u64>) -> OwnedHeaders {
        let mut out = OwnedHeaders::new()
            .insert(Header { key: headers::SCHEMA_VERSION, value: Some(self.schema.version()) })
            .insert(Header { key: headers::CONTENT_TYPE, value: Some("application/json") })
            .insert(Header { key: headers::SINK_ID, value: Some(sink_id) })
            .insert(Header { key: headers::IDEMPOTENCY_KEY, value: Some(&self.idempotency_key) });
        if let Some(time) = time {
            out = out.insert(Header { key: headers::TIME, value: Some(&time.to_string()) });
        }
        for (name, value) in self.cloud_event(sink_id) {
            out = out.insert(Header { key: name, value: Some(&value) });
        }
        out
    }

    /// The CloudEvents attributes of the message sent by sink `sink_id`, as
    /// (header, value) pairs.
    pub fn cloud_event(&self, sink_id: &str) -> Vec<(&'static str, String)> {
        vec![
            (ce::SPECVERSION, SPECVERSION.to_owned()),
            (ce::ID, self.idempotency_key.clone()),
            (ce::TYPE, self.schema.event_type.unwrap_or_default().to_owned()),
            (ce::SOURCE, format!("/defectflow/{sink_id}")),
            (ce::SUBJECT, self.subject.clone()),
            (ce::TIME, rfc3339(self.event_ms)),
            (ce::DATASCHEMA, self.schema.id()),
        ]
    }
}

fn fnv(bytes: &[u8]) -> u64 {
    defectflow_operators::ids::stable_hash(&[bytes])
}

#[cfg(test)]
mod tests {
    use super::*;
    use defectflow_schemas::DeadLetter;

    /// A dead letter's event: its id is its idempotency key, its subject the input it
    /// came from, its time the letter's, in RFC 3339; its data schema the dead-letter
    /// subject's current version.
    #[test]
    fn a_dead_letter_is_an_event_about_its_input() {
        let letter = DeadLetter {
            source: "inventory".into(),
            payload: "{not json".into(),
            reason: "expected value at line 1 column 2".into(),
            at_ms: 1_790_000_000_250,
        };
        let topics = TopicsConfig::default();
        let message = Outgoing::of(&Emitted::DeadLetter(letter), &topics).expect("a dead letter goes to Kafka");
        assert_eq!(message.topic, topics.dead_letter);
        assert_eq!((message.key.as_str(), message.event_ms), ("inventory", 1_790_000_000_250));
        let event: std::collections::BTreeMap<&str, String> = message.cloud_event("plant-a").into_iter().collect();
        assert_eq!(event[ce::SPECVERSION], "1.0");
        assert_eq!(event[ce::ID], message.idempotency_key);
        assert_eq!(event[ce::TYPE], "dev.defectflow.dead_letter");
        assert_eq!(event[ce::SOURCE], "/defectflow/plant-a");
        assert_eq!(event[ce::SUBJECT], "inventory");
        assert_eq!(event[ce::TIME], "2026-09-21T14:13:20.250Z");
        assert_eq!(event[ce::DATASCHEMA], "https://defectflow.dev/schemas/dead-letter/1.0.0");
    }
}
