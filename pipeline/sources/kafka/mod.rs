//! Kafka inputs of the work-order dataflow: CMMS status events (`defectflow.wo-events`),
//! stock movements (`defectflow.inventory`), technicians and assets (upserts by id).
//!
//! A message that is too large, is not JSON, or does not have the record's fields and
//! types becomes a dead letter with the reason and its original bytes, and the input
//! goes on. (A well-formed event that names an unknown or closed work order is turned
//! into a dead letter by the ledger, with the same reach.) Offsets are committed to the
//! consumer group once the outputs derived from the messages are delivered, so a
//! restarted run reads every message not yet reflected on the output topics.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use defectflow_schemas::registry::{self, Subject};
use defectflow_schemas::{Asset, DeadLetter, StockMovement, Technician, WoEvent};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde::de::DeserializeOwned;

use crate::clock::now_ms;
use crate::kafka::{BrokerError, KafkaConfig, committed, failed, partitions, read_messages};
use crate::reference::PlantReference;
use crate::workflow::PlantInputs;

/// What an input topic carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputKind {
    WoEvents,
    Inventory,
    Technicians,
    Assets,
}

impl InputKind {
    /// Technicians and assets replace the record with their id: one reader keeps them.
    fn is_upsert(self) -> bool {
        matches!(self, InputKind::Technicians | InputKind::Assets)
    }

    /// The schema subject of the topic's messages.
    fn subject(self) -> &'static Subject {
        match self {
            InputKind::WoEvents => &registry::WO_EVENT,
            InputKind::Inventory => &registry::STOCK_MOVEMENT,
            InputKind::Technicians => &registry::TECHNICIAN,
            InputKind::Assets => &registry::ASSET,
        }
    }
}

/// Worker `worker`'s share (of `peers`) of the input partitions, in (topic, partition)
/// order: every partition of an upsert topic goes to worker 0, which keeps the current
/// record of each id whatever partition its updates come on; the partitions of the
/// others (events and stock movements, which keep no state in the reader) are dealt
/// out to all workers in turn.
fn deal(all: &[(String, i32)], upsert: impl Fn(&str) -> bool, worker: usize, peers: usize) -> Vec<&(String, i32)> {
    let (kept, dealt): (Vec<_>, Vec<_>) = all.iter().partition(|(topic, _)| upsert(topic));
    let mut mine: Vec<_> = if worker == 0 { kept } else { Vec::new() };
    mine.extend(dealt.into_iter().enumerate().filter(|(j, _)| j % peers.max(1) == worker).map(|(_, p)| p));
    mine.sort();
    mine
}

/// One usable input message.
#[derive(Clone, Debug, PartialEq)]
pub enum Input {
    Event(WoEvent),
    Movement(StockMovement),
    Technician(Technician),
    /// `{"technician_id": …, "removed": true}`, or a tombstone under the id: the
    /// technician leaves the roster.
    TechnicianRemoved(String),
    Asset(Asset),
    /// A tombstone under the asset id: the asset leaves the registry.
    AssetRemoved(String),
}

/// A technicians message that takes someone off the roster.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Removal {
    technician_id: String,
    removed: bool,
}

/// Parses one message of an input topic (`None`: a tombstone, a null value, under
/// `key`); the error is the reason for its dead letter. Fields the topic's schema does
/// not know (a later minor version's) are dropped, as its evolution rules ask of a
/// consumer; a tombstone deletes the record with its key on the compacted topics.
pub fn parse(kind: InputKind, key: Option<&[u8]>, value: Option<&[u8]>, max_bytes: usize) -> Result<Input, String> {
    let Some(bytes) = value else {
        let id = key.and_then(|k| std::str::from_utf8(k).ok()).filter(|k| !k.is_empty());
        return match (kind, id) {
            (InputKind::Technicians, Some(id)) => Ok(Input::TechnicianRemoved(id.to_owned())),
            (InputKind::Assets, Some(id)) => Ok(Input::AssetRemoved(id.to_owned())),
            (InputKind::Technicians | InputKind::Assets, None) => {
                Err("a tombstone (null value) without a UTF-8 key: it names no record to delete".into())
            }
            _ => Err("a null value: this topic is not compacted, so a tombstone deletes nothing".into()),
        };
    };
    if bytes.len() > max_bytes {
        return Err(format!("{} bytes exceed max_message_bytes ({max_bytes})", bytes.len()));
    }
    fn json<T: DeserializeOwned>(value: serde_json::Value) -> Result<T, String> {
        serde_path_to_error::deserialize(value).map_err(|e| {
            let (path, inner) = (e.path().to_string(), e.inner());
            if path == "." {
                format!("not a valid record: {inner}")
            } else {
                format!("not a valid record: `{path}`: {inner}")
            }
        })
    }
    let mut value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
    registry::drop_unknown_fields(kind.subject().parsed(), &mut value);
    let input = match kind {
        InputKind::WoEvents => Input::Event(json(value)?),
        InputKind::Inventory => Input::Movement(json(value)?),
        InputKind::Technicians => match <Removal as serde::Deserialize>::deserialize(&value) {
            Ok(Removal { technician_id, removed: true }) => Input::TechnicianRemoved(technician_id),
            _ => Input::Technician(json(value)?),
        },
        InputKind::Assets => Input::Asset(json(value)?),
    };
    match &input {
        Input::Event(e) if e.work_order_id.is_empty() => Err("`work_order_id` is empty".into()),
        Input::Movement(m) if m.part_id.is_empty() => Err("`part_id` is empty".into()),
        Input::Technician(t) if t.technician_id.is_empty() => Err("`technician_id` is empty".into()),
        Input::TechnicianRemoved(id) if id.is_empty() => Err("`technician_id` is empty".into()),
        Input::AssetRemoved(id) if id.is_empty() => Err("`asset_id` is empty".into()),
        Input::Asset(a) if a.asset_id.is_empty() => Err("`asset_id` is empty".into()),
        _ => Ok(input),
    }
}

/// The dead letter of an unusable message: its bytes as text where they are UTF-8,
/// else as hex; of a message over the size limit only the first KiB.
pub fn dead_letter(source: String, bytes: &[u8], reason: String, at_ms: u64) -> DeadLetter {
    let kept = &bytes[..bytes.len().min(if reason.contains("max_message_bytes") { 1024 } else { bytes.len() })];
    let payload = match std::str::from_utf8(kept) {
        Ok(text) => text.to_owned(),
        Err(_) => format!("hex:{}", kept.iter().map(|b| format!("{b:02x}")).collect::<String>()),
    };
    DeadLetter { source, payload, reason, at_ms }
}

/// Reads again what earlier runs of the consumer group read from the reference-data
/// topics (technicians, assets, stock movements), from each partition's start up to the
/// group's committed offset, and applies it to `reference`: a restart starts from the
/// files as those messages changed them, not from the files alone. Returns the stock
/// movements (the stock is a sum of them). A message that was a dead letter is passed
/// over again; one no longer on the topic (retention) is named in a warning.
pub fn replay(config: &KafkaConfig, reference: &mut PlantReference) -> Result<Vec<StockMovement>, BrokerError> {
    let inputs = &config.inputs;
    let consumer: BaseConsumer = config
        .client_config(&[("auto.offset.reset", "earliest")])?
        .set("group.id", &inputs.group)
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .create()
        .map_err(failed("creating the replay consumer"))?;
    let mut movements = Vec::new();
    let mut replayed = 0u64;
    for (topic, kind) in [
        (&inputs.technicians, InputKind::Technicians),
        (&inputs.assets, InputKind::Assets),
        (&inputs.inventory, InputKind::Inventory),
    ] {
        for (partition, end) in committed(&consumer, topic)? {
            let (low, _) = consumer.fetch_watermarks(topic, partition, REQUEST_TIMEOUT).map_err(|source| {
                BrokerError::Kafka { context: format!("reading the offsets of {topic}/{partition}"), source }
            })?;
            if low > 0 {
                tracing::warn!(
                    topic,
                    partition,
                    gone_below = low,
                    "the first messages of a reference-data topic are gone (retention): what they changed is not replayed"
                );
            }
            read_messages(&consumer, (topic.as_str(), partition), low, Some(end), |message| {
                let Ok(input) = parse(kind, message.key(), message.payload(), inputs.max_message_bytes) else { return };
                replayed += 1;
                match input {
                    Input::Technician(t) => upsert(&mut reference.technicians, t, |t| &t.technician_id),
                    Input::TechnicianRemoved(id) => reference.technicians.retain(|t| t.technician_id != id),
                    Input::Asset(a) => upsert(&mut reference.assets, a, |a| &a.asset_id),
                    Input::AssetRemoved(id) => reference.assets.retain(|a| a.asset_id != id),
                    Input::Movement(m) => movements.push(m),
                    Input::Event(_) => {}
                }
            })?;
        }
    }
    if replayed > 0 {
        tracing::info!(messages = replayed, "reference-data topics read again up to the committed offsets");
    }
    Ok(movements)
}

/// Replaces the record with `record`'s id, or adds it.
fn upsert<T>(records: &mut Vec<T>, record: T, id: impl Fn(&T) -> &String) {
    match records.iter().position(|r| id(r) == id(&record)) {
        Some(i) => records[i] = record,
        None => records.push(record),
    }
}

/// A worker's consumer of its share of the input partitions (see [`deal`]), and (on
/// worker 0) the current technicians and assets, so an update replaces the record it
/// updates.
pub struct KafkaInputs {
    consumer: BaseConsumer,
    topics: BTreeMap<String, InputKind>,
    max_bytes: usize,
    technicians: HashMap<String, Technician>,
    assets: HashMap<String, Asset>,
    /// (dataflow time, topic, partition, offset) of messages not yet committed.
    consumed: Vec<(u64, String, i32, i64)>,
    /// Messages used and dead-lettered by this run.
    pub used: u64,
    pub dead: u64,
}

impl std::fmt::Debug for KafkaInputs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaInputs").field("topics", &self.topics).finish()
    }
}

const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

impl KafkaInputs {
    /// Connects and resumes each of worker `worker`'s input partitions (of `peers`
    /// workers in the cluster) at the group's committed offset; `None` where the worker
    /// has none.
    pub fn start(
        config: &KafkaConfig,
        reference: &PlantReference,
        worker: usize,
        peers: usize,
    ) -> Result<Option<KafkaInputs>, BrokerError> {
        let inputs = &config.inputs;
        let consumer: BaseConsumer = config
            .client_config(&[("auto.offset.reset", "earliest")])?
            .set("group.id", &inputs.group)
            .set("enable.auto.commit", "false")
            .create()
            .map_err(failed("creating the input consumer"))?;
        let topics: BTreeMap<String, InputKind> = [
            (inputs.wo_events.clone(), InputKind::WoEvents),
            (inputs.inventory.clone(), InputKind::Inventory),
            (inputs.technicians.clone(), InputKind::Technicians),
            (inputs.assets.clone(), InputKind::Assets),
        ]
        .into();
        let mut all: Vec<(String, i32)> = Vec::new();
        for topic in topics.keys() {
            all.extend(partitions(&consumer, topic)?.into_iter().map(|id| (topic.clone(), id)));
        }
        let mut partitions = TopicPartitionList::new();
        for (topic, partition) in deal(&all, |topic| topics.get(topic).is_some_and(|k| k.is_upsert()), worker, peers) {
            partitions.add_partition(topic, *partition);
        }
        if partitions.count() == 0 {
            return Ok(None);
        }
        let names: Vec<String> =
            partitions.elements().iter().map(|e| format!("{}/{}", e.topic(), e.partition())).collect();
        tracing::info!(worker, partitions = %names.join(" "), "consuming input partitions");
        let committed = consumer
            .committed_offsets(partitions, REQUEST_TIMEOUT)
            .map_err(|source| BrokerError::Kafka { context: "reading the committed input offsets".into(), source })?;
        let mut assignment = TopicPartitionList::new();
        for element in committed.elements() {
            let offset = match element.offset() {
                Offset::Offset(o) => Offset::Offset(o),
                _ => Offset::Beginning,
            };
            assignment
                .add_partition_offset(element.topic(), element.partition(), offset)
                .map_err(|source| BrokerError::Kafka { context: "assigning the inputs".into(), source })?;
        }
        consumer
            .assign(&assignment)
            .map_err(|source| BrokerError::Kafka { context: "assigning the inputs".into(), source })?;
        Ok(Some(KafkaInputs {
            consumer,
            topics,
            max_bytes: inputs.max_message_bytes,
            technicians: reference.technicians.iter().map(|t| (t.technician_id.clone(), t.clone())).collect(),
            assets: reference.assets.iter().map(|a| (a.asset_id.clone(), a.clone())).collect(),
            consumed: Vec::new(),
            used: 0,
            dead: 0,
        }))
    }

    /// Feeds the messages that arrived (at most `limit`) into the plant's inputs at their
    /// current time; unusable ones become dead letters, which go to worker 0 like every
    /// output.
    pub fn poll(&mut self, plant: &mut PlantInputs, limit: usize) {
        let time = *plant.events.time();
        for _ in 0..limit {
            let Some(result) = self.consumer.poll(Duration::ZERO) else { return };
            let message = match result {
                Ok(message) => message,
                Err(error) => {
                    tracing::warn!(%error, "kafka input");
                    return;
                }
            };
            let (topic, partition, offset) = (message.topic().to_owned(), message.partition(), message.offset());
            self.consumed.push((time, topic.clone(), partition, offset));
            let Some(&kind) = self.topics.get(&topic) else { continue };
            let bytes = message.payload().unwrap_or_default();
            match parse(kind, message.key(), message.payload(), self.max_bytes) {
                Ok(input) => {
                    self.used += 1;
                    self.apply(input, plant);
                }
                Err(reason) => {
                    self.dead += 1;
                    tracing::warn!(topic, partition, offset, reason, "kafka input: dead letter");
                    plant.dead_letters.send(dead_letter(
                        format!("{topic}/{partition}@{offset}"),
                        bytes,
                        reason,
                        now_ms(),
                    ));
                }
            }
        }
    }

    fn apply(&mut self, input: Input, plant: &mut PlantInputs) {
        match input {
            Input::Event(event) => plant.events.send(event),
            Input::Movement(movement) => plant.movements.insert(movement),
            Input::Technician(technician) => {
                if let Some(old) = self.technicians.insert(technician.technician_id.clone(), technician.clone()) {
                    plant.technicians.remove(old);
                }
                plant.technicians.insert(technician);
            }
            Input::TechnicianRemoved(id) => match self.technicians.remove(&id) {
                // Their work not yet started goes to someone else on shift.
                Some(old) => plant.technicians.remove(old),
                None => tracing::warn!(technician = %id, "kafka input: removal of a technician not on the roster"),
            },
            Input::Asset(asset) => {
                if let Some(old) = self.assets.insert(asset.asset_id.clone(), asset.clone()) {
                    plant.assets.remove(old);
                }
                plant.assets.insert(asset);
            }
            Input::AssetRemoved(id) => match self.assets.remove(&id) {
                Some(old) => plant.assets.remove(old),
                None => tracing::warn!(asset = %id, "kafka input: tombstone of an asset not in the registry"),
            },
        }
    }

    /// Commits the offsets of the messages read at a time before `closed_before`: the
    /// outputs they led to are delivered.
    pub fn commit(&mut self, closed_before: u64) -> Result<(), BrokerError> {
        let mut next: BTreeMap<(String, i32), i64> = BTreeMap::new();
        self.consumed.retain(|(time, topic, partition, offset)| {
            if *time >= closed_before {
                return true;
            }
            let at = next.entry((topic.clone(), *partition)).or_insert(0);
            *at = (*at).max(offset + 1);
            false
        });
        if next.is_empty() {
            return Ok(());
        }
        let mut offsets = TopicPartitionList::new();
        for ((topic, partition), offset) in next {
            offsets
                .add_partition_offset(&topic, partition, Offset::Offset(offset))
                .map_err(|source| BrokerError::Kafka { context: "committing input offsets".into(), source })?;
        }
        self.consumer
            .commit(&offsets, CommitMode::Sync)
            .map_err(|source| BrokerError::Kafka { context: "committing input offsets".into(), source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unusable_messages_say_why() {
        let reason = |kind, bytes: &[u8]| parse(kind, None, Some(bytes), 100).expect_err("unusable");
        assert!(reason(InputKind::WoEvents, b"{not json").starts_with("not JSON"));
        let wrong = reason(InputKind::WoEvents, br#"{"work_order_id": 7, "event": "started", "at_ms": 1}"#);
        assert!(wrong.starts_with("not a valid record") && wrong.contains("work_order_id"), "{wrong}");
        assert!(reason(InputKind::Inventory, br#"{"part_id": "B-1", "delta": "two", "at_ms": 1}"#).contains("delta"));
        assert!(reason(InputKind::Assets, &[b' '; 101]).contains("101 bytes exceed"));
        let ok = parse(InputKind::Inventory, None, Some(br#"{"part_id": "B-1", "delta": 2, "at_ms": 1}"#), 100);
        assert!(matches!(ok, Ok(Input::Movement(m)) if m.delta == 2));
    }

    /// A field of a later minor version is ignored, at any depth; a missing required
    /// one is still an error.
    #[test]
    fn fields_of_a_later_version_are_ignored() {
        let technician = br#"{"technician_id": "T-9", "name": "Ida", "skills": ["electrical"], "zone": "B",
            "shift": {"start_hour": 6, "end_hour": 14, "break_minutes": 30}, "badge": "0042"}"#;
        let parsed = parse(InputKind::Technicians, Some(b"T-9"), Some(technician), 1000);
        assert!(matches!(&parsed, Ok(Input::Technician(t)) if t.shift.end_hour == 14), "{parsed:?}");
        let event =
            br#"{"work_order_id": "WO-1", "event": "on_hold", "at_ms": 1, "reason": "waiting_for_parts", "eta_ms": 9}"#;
        let parsed = parse(InputKind::WoEvents, None, Some(event), 1000);
        assert!(
            matches!(&parsed, Ok(Input::Event(e)) if e.reason.as_deref() == Some("waiting_for_parts")),
            "{parsed:?}"
        );
        let missing = parse(InputKind::Assets, None, Some(br#"{"asset_id": "A-1", "name": "Fan", "extra": 1}"#), 1000);
        assert!(missing.is_err_and(|e| e.contains("missing field")));
    }

    /// A null value deletes the record under its key on the compacted topics, and is a
    /// dead letter elsewhere or without a key.
    #[test]
    fn a_tombstone_deletes_on_compacted_topics() {
        assert_eq!(parse(InputKind::Technicians, Some(b"T-9"), None, 10), Ok(Input::TechnicianRemoved("T-9".into())));
        assert_eq!(parse(InputKind::Assets, Some(b"CV-101"), None, 10), Ok(Input::AssetRemoved("CV-101".into())));
        assert!(parse(InputKind::Assets, None, None, 10).is_err_and(|e| e.contains("without a UTF-8 key")));
        assert!(parse(InputKind::WoEvents, Some(b"WO-1"), None, 10).is_err_and(|e| e.contains("not compacted")));
        assert!(parse(InputKind::Inventory, Some(b"B-1"), None, 10).is_err_and(|e| e.contains("not compacted")));
    }

    #[test]
    fn upserts_stay_on_worker_0_and_the_other_partitions_are_dealt_out() {
        let all: Vec<(String, i32)> = ["assets", "inventory", "technicians", "wo-events"]
            .iter()
            .flat_map(|t| (0..2).map(|p| (t.to_string(), p)))
            .collect();
        let upsert = |topic: &str| topic == "assets" || topic == "technicians";
        let names = |worker, peers| -> Vec<String> {
            deal(&all, upsert, worker, peers).iter().map(|(t, p)| format!("{t}/{p}")).collect()
        };
        assert_eq!(
            names(0, 2),
            ["assets/0", "assets/1", "inventory/0", "technicians/0", "technicians/1", "wo-events/0"]
        );
        assert_eq!(names(1, 2), ["inventory/1", "wo-events/1"]);
        // Every partition once, whatever the number of workers.
        for peers in 1..6 {
            let mut seen: Vec<String> = (0..peers).flat_map(|w| names(w, peers)).collect();
            seen.sort();
            assert_eq!(seen.len(), all.len(), "{peers} workers: {seen:?}");
            seen.dedup();
            assert_eq!(seen.len(), all.len(), "{peers} workers: {seen:?}");
        }
    }

    #[test]
    fn dead_letters_keep_the_bytes() {
        let letter = dead_letter("t/0@3".into(), &[0xff, 0x00], "not JSON".into(), 5);
        assert_eq!(letter.payload, "hex:ff00");
        let big = dead_letter("t/0@4".into(), &[b'a'; 5000], "5000 bytes exceed max_message_bytes (100)".into(), 5);
        assert_eq!(big.payload.len(), 1024);
    }
}
