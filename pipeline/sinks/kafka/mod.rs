//! The Kafka sink: work-order revisions, alerts, parts staging and dead letters on their
//! topics, exactly once, with any Kafka-protocol broker.
//!
//! Exactly once rests on two things. The dataflow is deterministic: the same inputs give
//! the same messages (ids, revisions, bytes), each with an idempotency key (work order
//! id and revision for a revision). And the sink records its progress: after the
//! messages of every closed timestamp are acknowledged, a progress record on the
//! progress topic says which timestamp is closed and the next offset of every output
//! partition. A restarted sink reads the last record, then the output topics from those
//! offsets to their end, and so learns every message already delivered, including those
//! sent after the record when the process died between sending and recording; it sends
//! none of them again. (Materialize's Kafka sink keeps progress the same way.)
//!
//! The producer is always idempotent (no duplicates from its own retries). With
//! `transactional = true`, each closed timestamp's messages and its progress record go
//! in one transaction, for brokers whose consumers hide aborted transactions.

use std::collections::{BTreeMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use defectflow_schemas::{SCHEMA_VERSION, WorkOrder};
use rdkafka::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

use crate::workflow::Emitted;

/// `[kafka]`: the broker, the topics and the client's settings.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap servers, `host:port[,host:port…]`.
    pub brokers: String,
    #[serde(default)]
    pub topics: TopicsConfig,
    /// Wrap each closed timestamp in a Kafka transaction (Apache Kafka, Redpanda);
    /// exactly-once holds without it.
    #[serde(default)]
    pub transactional: bool,
    /// Names this sink's progress records and transactions: two runs with the same id
    /// continue each other's delivery.
    #[serde(default = "default_sink_id")]
    pub sink_id: String,
    /// The input topics the plant's systems write.
    #[serde(default)]
    pub inputs: crate::sources::kafka::InputsConfig,
    /// Any librdkafka property (`security.protocol`, `sasl.mechanism`, `ssl.ca.location`,
    /// `message.timeout.ms`, ...), passed as given.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// librdkafka properties whose values are secrets, read from the named environment
    /// variables at start (e.g. `"sasl.password" = "KAFKA_PASSWORD"`); never logged.
    #[serde(default)]
    pub secrets_from_env: BTreeMap<String, String>,
    /// librdkafka properties whose values are secrets, read from the named files at
    /// start (a mounted secret: `"sasl.password" = "/run/secrets/kafka"`, one trailing
    /// newline dropped); never logged.
    #[serde(default)]
    pub secrets_from_file: BTreeMap<String, std::path::PathBuf>,
}

/// Whether a librdkafka property holds a credential, which must come from the
/// environment or a file, never from the config's `properties`.
pub fn is_secret(property: &str) -> bool {
    property.ends_with("password")
        || property.ends_with("secret")
        || matches!(property, "ssl.key.pem" | "sasl.oauthbearer.config")
}

fn default_sink_id() -> String {
    "defectflow".into()
}

impl std::fmt::Debug for KafkaConfig {
    /// Property values may hold credentials: only their names are shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaConfig")
            .field("brokers", &self.brokers)
            .field("topics", &self.topics)
            .field("transactional", &self.transactional)
            .field("sink_id", &self.sink_id)
            .field("inputs", &self.inputs)
            .field("properties", &self.properties.keys().collect::<Vec<_>>())
            .field("secrets_from_env", &self.secrets_from_env)
            .field("secrets_from_file", &self.secrets_from_file)
            .finish()
    }
}

/// `[kafka.topics]`: topic names.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TopicsConfig {
    #[serde(default = "topic::work_orders")]
    pub work_orders: String,
    #[serde(default = "topic::alerts")]
    pub alerts: String,
    #[serde(default = "topic::parts_staging")]
    pub parts_staging: String,
    #[serde(default = "topic::dead_letter")]
    pub dead_letter: String,
    /// The sink's progress records (one partition).
    #[serde(default = "topic::progress")]
    pub progress: String,
}

mod topic {
    pub fn work_orders() -> String {
        "defectflow.work-orders".into()
    }
    pub fn alerts() -> String {
        "defectflow.alerts".into()
    }
    pub fn parts_staging() -> String {
        "defectflow.parts-staging".into()
    }
    pub fn dead_letter() -> String {
        "defectflow.dead-letter".into()
    }
    pub fn progress() -> String {
        "defectflow.progress".into()
    }
}

impl Default for TopicsConfig {
    fn default() -> Self {
        TopicsConfig {
            work_orders: topic::work_orders(),
            alerts: topic::alerts(),
            parts_staging: topic::parts_staging(),
            dead_letter: topic::dead_letter(),
            progress: topic::progress(),
        }
    }
}

impl TopicsConfig {
    fn outputs(&self) -> [&str; 4] {
        [&self.work_orders, &self.alerts, &self.parts_staging, &self.dead_letter]
    }
}

impl KafkaConfig {
    /// Checks what serde cannot; returns the field at fault (under `kafka.`).
    pub fn validate(&self) -> Result<(), (String, String)> {
        if self.brokers.trim().is_empty() {
            return Err(("kafka.brokers".into(), "must name at least one host:port".into()));
        }
        let (t, i) = (&self.topics, &self.inputs);
        for (field, name) in [
            ("topics.work_orders", &t.work_orders),
            ("topics.alerts", &t.alerts),
            ("topics.parts_staging", &t.parts_staging),
            ("topics.dead_letter", &t.dead_letter),
            ("topics.progress", &t.progress),
            ("inputs.wo_events", &i.wo_events),
            ("inputs.inventory", &i.inventory),
            ("inputs.technicians", &i.technicians),
            ("inputs.assets", &i.assets),
        ] {
            let legal = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
            if name.is_empty() || name.len() > 249 || !name.chars().all(legal) {
                return Err((
                    format!("kafka.{field}"),
                    format!("`{name}` is not a Kafka topic name (1–249 of letters, digits, `.`, `_`, `-`)"),
                ));
            }
        }
        if let Some(property) = self.properties.keys().find(|p| is_secret(p)) {
            return Err((
                format!("kafka.properties.\"{property}\""),
                "holds a credential: name the environment variable that holds it under \
                 [kafka.secrets_from_env], or its file under [kafka.secrets_from_file]"
                    .into(),
            ));
        }
        for (property, variable) in &self.secrets_from_env {
            if std::env::var_os(variable).is_none() {
                return Err((
                    format!("kafka.secrets_from_env.\"{property}\""),
                    format!("environment variable `{variable}` is not set"),
                ));
            }
        }
        for (property, path) in &self.secrets_from_file {
            if let Err(e) = std::fs::read(path) {
                return Err((
                    format!("kafka.secrets_from_file.\"{property}\""),
                    format!("cannot read {}: {e}", path.display()),
                ));
            }
        }
        Ok(())
    }

    /// The librdkafka settings as `check-config` shows them: each property with its
    /// value, a secret with where it comes from instead.
    pub fn describe(&self) -> Vec<(String, String)> {
        let mut out = vec![("bootstrap.servers".to_owned(), self.brokers.clone())];
        out.extend(self.properties.iter().map(|(name, value)| (name.clone(), value.clone())));
        out.extend(
            self.secrets_from_env
                .iter()
                .map(|(name, variable)| (name.clone(), format!("<secret from environment variable {variable}>"))),
        );
        out.extend(
            self.secrets_from_file
                .iter()
                .map(|(name, path)| (name.clone(), format!("<secret from file {}>", path.display()))),
        );
        out
    }

    /// The librdkafka settings common to the producer and the recovery consumer: the
    /// `defaults`, then the configured properties over them.
    pub(crate) fn client_config(&self, defaults: &[(&str, &str)]) -> Result<ClientConfig, SinkError> {
        let mut client = ClientConfig::new();
        client.set("bootstrap.servers", &self.brokers);
        for (name, value) in defaults {
            client.set(*name, *value);
        }
        for (name, value) in &self.properties {
            client.set(name, value);
        }
        for (name, variable) in &self.secrets_from_env {
            let value = std::env::var(variable).map_err(|_| SinkError::Secret { property: name.clone() })?;
            client.set(name, value);
        }
        for (name, path) in &self.secrets_from_file {
            let text = std::fs::read_to_string(path).map_err(|_| SinkError::Secret { property: name.clone() })?;
            let value = text.strip_suffix('\n').unwrap_or(&text);
            client.set(name, value.strip_suffix('\r').unwrap_or(value));
        }
        Ok(client)
    }
}

/// A failure of the Kafka sink; never includes a property value.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("kafka: {context}: {source}")]
    Kafka { context: String, source: KafkaError },
    #[error("kafka: the secret for `{property}` (its environment variable or file) can no longer be read")]
    Secret { property: String },
    #[error("kafka: {count} message(s) not delivered, first: {first}")]
    Undelivered { count: usize, first: String },
    #[error("kafka: progress record at {topic}/0 offset {offset} is not readable: {reason}")]
    Progress { topic: String, offset: i64, reason: String },
}

pub(crate) fn kafka(context: impl Into<String>) -> impl FnOnce(KafkaError) -> SinkError {
    let context = context.into();
    move |source| SinkError::Kafka { context, source: without_values(source) }
}

/// librdkafka's configuration errors quote the property's value, which may be a
/// credential: the value is left out of the error.
fn without_values(error: KafkaError) -> KafkaError {
    match error {
        KafkaError::ClientConfig(code, description, property, _) => {
            KafkaError::ClientConfig(code, description, property, "(value not shown)".into())
        }
        other => other,
    }
}

/// One message for an output topic.
#[derive(Clone, Debug, PartialEq)]
pub struct Outgoing {
    pub topic: String,
    pub key: String,
    /// Names the message across runs: `<work order>:<revision>` for a revision.
    pub idempotency_key: String,
    pub payload: Vec<u8>,
}

impl Outgoing {
    /// The message for one dataflow output, or `None` for outputs that do not go to
    /// Kafka (assignments travel inside their work-order revision and the audit log).
    pub fn of(message: &Emitted, topics: &TopicsConfig) -> Option<Outgoing> {
        let (topic, key, idempotency_key, payload) = match message {
            Emitted::WorkOrder(w) => (
                &topics.work_orders,
                w.work_order_id.clone(),
                format!("{}:{}", w.work_order_id, w.revision),
                serde_json::to_vec(w),
            ),
            Emitted::Alert(a) => (
                &topics.alerts,
                a.work_order_id.clone(),
                format!("alert:{}:{}:{:?}", a.work_order_id, a.at_ms, a.priority),
                serde_json::to_vec(a),
            ),
            Emitted::PartsStaging(s) => {
                let order = s.work_order_id.as_deref().unwrap_or("-");
                (
                    &topics.parts_staging,
                    s.part_id.clone(),
                    format!("staging:{:?}:{}:{}:{}:{}", s.kind, s.part_id, order, s.quantity, s.at_ms),
                    serde_json::to_vec(s),
                )
            }
            Emitted::DeadLetter(d) => (
                &topics.dead_letter,
                d.source.clone(),
                format!("dead:{}:{}:{:016x}", d.source, d.at_ms, fnv(d.payload.as_bytes())),
                serde_json::to_vec(d),
            ),
            Emitted::Assignment(_) => return None,
        };
        // The schema types serialise infallibly (no maps with non-string keys).
        let payload = payload.ok()?;
        Some(Outgoing { topic: topic.clone(), key, idempotency_key, payload })
    }
}

fn fnv(bytes: &[u8]) -> u64 {
    defectflow_operators::ids::stable_hash(&[bytes])
}

/// What the sink has recorded: the last closed timestamp and where each output
/// partition stood then.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ProgressRecord {
    /// Every message with a dataflow time below this was delivered.
    pub closed_before: u64,
    /// `topic` → partition → next offset, after the closed timestamp's messages.
    pub offsets: BTreeMap<String, BTreeMap<i32, i64>>,
}

/// What a starting sink learned from the broker.
#[derive(Clone, Debug, Default)]
pub struct Recovered {
    pub progress: Option<ProgressRecord>,
    /// Idempotency keys of the messages found after the progress record.
    pub delivered_after: HashSet<String>,
    /// The next offset of every output partition, as read to its end.
    pub ends: BTreeMap<String, BTreeMap<i32, i64>>,
    /// The latest revision of every work order this sink sent to the topic.
    pub latest_orders: Vec<WorkOrder>,
}

/// Header names on every output message.
pub mod headers {
    pub const SCHEMA_VERSION: &str = "schema_version";
    pub const CONTENT_TYPE: &str = "content-type";
    pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
    /// The `sink_id` of the run that sent the message: a restart takes up its own work
    /// orders only.
    pub const SINK_ID: &str = "defectflow-sink-id";
}

/// Collects delivery reports: the next offset per partition, and failures.
#[derive(Default)]
struct Deliveries {
    next_offsets: Mutex<BTreeMap<String, BTreeMap<i32, i64>>>,
    failed: Mutex<Vec<String>>,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(message) => {
                if let Ok(mut offsets) = self.next_offsets.lock() {
                    let next = offsets.entry(message.topic().to_owned()).or_default();
                    let at = next.entry(message.partition()).or_insert(0);
                    *at = (*at).max(message.offset() + 1);
                }
            }
            Err((error, message)) => {
                if let Ok(mut failed) = self.failed.lock() {
                    failed.push(format!("{}: {error}", message.topic()));
                }
            }
        }
    }
}

/// The Kafka sink; see the module documentation.
pub struct KafkaSink {
    config: KafkaConfig,
    producer: BaseProducer<Deliveries>,
    recovered: Recovered,
    /// The last progress written (or recovered).
    progress: ProgressRecord,
    last_recorded: Instant,
    /// Messages sent by this process, for the run's report.
    pub sent: u64,
    /// Messages not sent because an earlier run had delivered them.
    pub skipped: u64,
}

impl KafkaSink {
    /// The latest revision of every work order earlier runs sent to the topic; empty
    /// after the first call.
    pub fn take_latest_orders(&mut self) -> Vec<WorkOrder> {
        std::mem::take(&mut self.recovered.latest_orders)
    }
}

impl std::fmt::Debug for KafkaSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSink").field("config", &self.config).field("progress", &self.progress).finish()
    }
}

/// How long a metadata or watermark request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a flush waits for the broker between warnings.
const FLUSH_WARNING: Duration = Duration::from_secs(30);
/// How often progress is recorded when no message went out.
const IDLE_PROGRESS: Duration = Duration::from_secs(1);

impl KafkaSink {
    /// Connects, learns what earlier runs delivered, and (transactional) fences them.
    pub fn start(config: &KafkaConfig) -> Result<KafkaSink, SinkError> {
        // A message waits out a broker outage of up to five minutes; a transaction must
        // be allowed at least as long (Apache Kafka's largest by default, 15 minutes).
        let mut defaults = vec![("message.timeout.ms", "300000"), ("linger.ms", "5"), ("socket.nagle.disable", "true")];
        if config.transactional {
            defaults.push(("transaction.timeout.ms", "900000"));
        }
        let mut client = config.client_config(&defaults)?;
        client.set("enable.idempotence", "true").set("acks", "all");
        if config.transactional {
            client.set("transactional.id", &config.sink_id);
        }
        let producer: BaseProducer<Deliveries> =
            client.create_with_context(Deliveries::default()).map_err(kafka("creating the producer"))?;
        if config.transactional {
            producer.init_transactions(REQUEST_TIMEOUT).map_err(kafka("initialising transactions"))?;
        }
        let recovered = recover(config)?;
        let mut progress = recovered.progress.clone().unwrap_or_default();
        // The next record also covers what a crashed run sent after its last record.
        progress.offsets = recovered.ends.clone();
        if let Some(p) = &recovered.progress {
            tracing::info!(
                closed_before = p.closed_before,
                delivered_after = recovered.delivered_after.len(),
                "kafka sink resumes after earlier delivery"
            );
        }
        Ok(KafkaSink {
            config: config.clone(),
            producer,
            recovered,
            progress,
            last_recorded: Instant::now(),
            sent: 0,
            skipped: 0,
        })
    }

    /// Whether an earlier run delivered this message.
    fn delivered_before(&self, time: u64, message: &Outgoing) -> bool {
        let closed = self.recovered.progress.as_ref().is_some_and(|p| time < p.closed_before);
        closed || self.recovered.delivered_after.contains(&message.idempotency_key)
    }

    /// Delivers the messages of every dataflow time below `closed_before` (all of them
    /// complete), waits for the broker to acknowledge them, then records the progress.
    pub fn deliver(&mut self, closed_before: u64, messages: &[(u64, Emitted)]) -> Result<(), SinkError> {
        let mut outgoing = Vec::new();
        for (time, message) in messages {
            let Some(message) = Outgoing::of(message, &self.config.topics) else { continue };
            if self.delivered_before(*time, &message) {
                self.skipped += 1;
            } else {
                outgoing.push(message);
            }
        }
        let quiet = self.last_recorded.elapsed() < IDLE_PROGRESS;
        if outgoing.is_empty() && (closed_before <= self.progress.closed_before || quiet) {
            return Ok(());
        }
        if self.config.transactional {
            self.producer.begin_transaction().map_err(kafka("beginning a transaction"))?;
        }
        for message in &outgoing {
            self.send(&message.topic, &message.key, &message.payload, Some(&message.idempotency_key))?;
        }
        self.flush()?;
        self.sent += outgoing.len() as u64;
        if !outgoing.is_empty() {
            tracing::debug!(closed_before, messages = outgoing.len(), "kafka: delivered");
        }
        if !outgoing.is_empty() {
            super::failpoint("after-send");
        }
        let mut progress = ProgressRecord { closed_before, offsets: self.progress.offsets.clone() };
        if let Ok(next) = self.producer.context().next_offsets.lock() {
            for (topic, partitions) in next.iter().filter(|(topic, _)| **topic != self.config.topics.progress) {
                let known = progress.offsets.entry(topic.clone()).or_default();
                for (&partition, &offset) in partitions {
                    let at = known.entry(partition).or_insert(offset);
                    *at = (*at).max(offset);
                }
            }
        }
        let record = serde_json::to_vec(&progress).unwrap_or_default();
        let progress_topic = self.config.topics.progress.clone();
        let key = self.config.sink_id.clone();
        self.send(&progress_topic, &key, &record, None)?;
        self.flush()?;
        if self.config.transactional {
            self.commit_transaction()?;
        }
        super::failpoint("after-progress");
        self.progress = progress;
        self.last_recorded = Instant::now();
        Ok(())
    }

    /// Commits the open transaction, waiting out a broker that does not answer (an outage
    /// that starts between the flush and the commit): librdkafka reports the end of each
    /// wait as retriable, and the next call resumes the same commit.
    fn commit_transaction(&self) -> Result<(), SinkError> {
        let started = Instant::now();
        loop {
            match self.producer.commit_transaction(REQUEST_TIMEOUT) {
                Ok(()) => return Ok(()),
                Err(KafkaError::Transaction(error)) if error.is_retriable() => {
                    let waited_s = started.elapsed().as_secs();
                    tracing::warn!(waited_s, %error, "kafka: committing a transaction waits for the broker");
                }
                Err(source) => return Err(SinkError::Kafka { context: "committing a transaction".into(), source }),
            }
        }
    }

    fn send(&self, topic: &str, key: &str, payload: &[u8], idempotency_key: Option<&str>) -> Result<(), SinkError> {
        let mut headers = OwnedHeaders::new()
            .insert(Header { key: headers::SCHEMA_VERSION, value: Some(SCHEMA_VERSION) })
            .insert(Header { key: headers::CONTENT_TYPE, value: Some("application/json") })
            .insert(Header { key: headers::SINK_ID, value: Some(self.config.sink_id.as_str()) });
        if let Some(idempotency_key) = idempotency_key {
            headers = headers.insert(Header { key: headers::IDEMPOTENCY_KEY, value: Some(idempotency_key) });
        }
        let mut record = BaseRecord::to(topic).key(key).payload(payload).headers(headers);
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                // The local queue is full (the broker is slow or away): wait for room.
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    self.producer.poll(Duration::from_millis(100));
                }
                Err((error, _)) => {
                    return Err(SinkError::Kafka { context: format!("sending to {topic}"), source: error });
                }
            }
        }
    }

    /// Waits until every sent message is acknowledged (through a broker outage, up to
    /// `message.timeout.ms`), then reports any that failed.
    fn flush(&self) -> Result<(), SinkError> {
        // rdkafka's `flush` polls in steps of 100 ms, which a delivery report does not cut
        // short; short polls hand the acknowledgement back within a millisecond.
        let mut waiting = Instant::now();
        loop {
            match self.producer.flush(Duration::ZERO) {
                Ok(()) => break,
                Err(KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut)) => {
                    self.producer.poll(Duration::from_millis(1));
                    if waiting.elapsed() >= FLUSH_WARNING {
                        tracing::warn!(in_flight = self.producer.in_flight_count(), "kafka: waiting for the broker");
                        waiting = Instant::now();
                    }
                }
                Err(error) => return Err(SinkError::Kafka { context: "flushing".into(), source: error }),
            }
        }
        let failed = std::mem::take(
            &mut *self
                .producer
                .context()
                .failed
                .lock()
                .map_err(|_| SinkError::Undelivered { count: 1, first: "delivery report lock poisoned".into() })?,
        );
        match failed.first() {
            None => Ok(()),
            Some(first) => Err(SinkError::Undelivered { count: failed.len(), first: first.clone() }),
        }
    }
}

/// The recovery consumer's context: reaching the end of a partition is what it reads
/// for, not an error to log.
struct Quiet;

impl ClientContext for Quiet {
    fn error(&self, error: KafkaError, reason: &str) {
        // librdkafka reports a partition's end both ways.
        let end = matches!(
            error,
            KafkaError::PartitionEOF(_) | KafkaError::Global(rdkafka::types::RDKafkaErrorCode::PartitionEOF)
        );
        if !end {
            tracing::error!(%error, reason, "kafka");
        }
    }
}

impl rdkafka::consumer::ConsumerContext for Quiet {}

/// Reads the last progress record and the output messages after it.
fn recover(config: &KafkaConfig) -> Result<Recovered, SinkError> {
    let mut client = config.client_config(&[])?;
    // The end of a partition is found by reading to it (`enable.partition.eof`): some
    // brokers (tansu) report a high watermark behind the last record of a batch.
    client
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("auto.offset.reset", "earliest")
        .set("group.id", format!("{}-recovery", config.sink_id));
    let consumer: BaseConsumer<Quiet> =
        client.create_with_context(Quiet).map_err(kafka("creating the recovery consumer"))?;
    let progress_topic = &config.topics.progress;
    let (low, high) = consumer
        .fetch_watermarks(progress_topic, 0, REQUEST_TIMEOUT)
        .map_err(kafka(format!("reading the offsets of {progress_topic}")))?;
    let mut progress: Option<ProgressRecord> = None;
    {
        // The last record of this sink: scan back from the end (records of other sink
        // ids may share the topic).
        let mut records = read_partition(&consumer, progress_topic, 0, low.max(high - 1000))?;
        records.reverse();
        for (offset, key, payload) in records {
            if key.as_deref() == Some(config.sink_id.as_str()) {
                let record = serde_json::from_slice(&payload).map_err(|e| SinkError::Progress {
                    topic: progress_topic.clone(),
                    offset,
                    reason: e.to_string(),
                })?;
                progress = Some(record);
                break;
            }
        }
    }
    let mut delivered_after = HashSet::new();
    let mut ends: BTreeMap<String, BTreeMap<i32, i64>> = BTreeMap::new();
    for topic in config.topics.outputs() {
        let metadata = consumer
            .fetch_metadata(Some(topic), REQUEST_TIMEOUT)
            .map_err(kafka(format!("reading the metadata of {topic}")))?;
        let partitions: Vec<i32> =
            metadata.topics().iter().flat_map(|t| t.partitions().iter().map(|p| p.id())).collect();
        for partition in partitions {
            let (low, _) = consumer
                .fetch_watermarks(topic, partition, REQUEST_TIMEOUT)
                .map_err(kafka(format!("reading the offsets of {topic}/{partition}")))?;
            let from = progress
                .as_ref()
                .and_then(|p| p.offsets.get(topic).and_then(|o| o.get(&partition)))
                .copied()
                .unwrap_or(low)
                .max(low);
            let (keys, end) = read_idempotency_keys(&consumer, topic, partition, from)?;
            delivered_after.extend(keys);
            ends.entry(topic.to_owned()).or_default().insert(partition, end);
        }
    }
    let latest_orders = latest_work_orders(&consumer, &config.topics.work_orders, &config.sink_id)?;
    Ok(Recovered { progress, delivered_after, ends, latest_orders })
}

/// The latest revision of every work order this sink (`sink_id`) sent to `topic`, read
/// from its start: what the CMMS holds. A message that is not a work order is passed
/// over (the topic is read as the CMMS reads it).
fn latest_work_orders(consumer: &BaseConsumer<Quiet>, topic: &str, sink_id: &str) -> Result<Vec<WorkOrder>, SinkError> {
    let metadata = consumer
        .fetch_metadata(Some(topic), REQUEST_TIMEOUT)
        .map_err(kafka(format!("reading the metadata of {topic}")))?;
    let partitions: Vec<i32> = metadata.topics().iter().flat_map(|t| t.partitions().iter().map(|p| p.id())).collect();
    let mut latest: BTreeMap<String, WorkOrder> = BTreeMap::new();
    for partition in partitions {
        let (low, _) = consumer
            .fetch_watermarks(topic, partition, REQUEST_TIMEOUT)
            .map_err(kafka(format!("reading the offsets of {topic}/{partition}")))?;
        read_messages(consumer, (topic, partition), low, None, |m| {
            let ours = m.headers().and_then(|h| h.iter().find(|h| h.key == headers::SINK_ID)).and_then(|h| h.value)
                == Some(sink_id.as_bytes());
            if !ours {
                return;
            }
            let Some(order) = m.payload().and_then(|p| serde_json::from_slice::<WorkOrder>(p).ok()) else { return };
            if latest.get(&order.work_order_id).is_none_or(|known| known.revision < order.revision) {
                latest.insert(order.work_order_id.clone(), order);
            }
        })?;
    }
    Ok(latest.into_values().collect())
}

type Record = (i64, Option<String>, Vec<u8>);

/// Messages of one partition from `from` to its end.
fn read_partition(
    consumer: &BaseConsumer<Quiet>,
    topic: &str,
    partition: i32,
    from: i64,
) -> Result<Vec<Record>, SinkError> {
    let mut out = Vec::new();
    read_messages(consumer, (topic, partition), from, None, |m| {
        out.push((
            m.offset(),
            m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
            m.payload().unwrap_or_default().to_vec(),
        ));
    })?;
    Ok(out)
}

fn read_idempotency_keys(
    consumer: &BaseConsumer<Quiet>,
    topic: &str,
    partition: i32,
    from: i64,
) -> Result<(Vec<String>, i64), SinkError> {
    let mut keys = Vec::new();
    let mut end = from;
    read_messages(consumer, (topic, partition), from, None, |m| {
        end = end.max(m.offset() + 1);
        let header = m.headers().and_then(|h| h.iter().find(|h| h.key == headers::IDEMPOTENCY_KEY));
        if let Some(value) = header.and_then(|h| h.value) {
            keys.push(String::from_utf8_lossy(value).into_owned());
        }
    })?;
    Ok((keys, end))
}

/// Hands `each` every message of a partition from offset `from` to the partition's end,
/// or to `below` (not included) if it comes first.
pub(crate) fn read_messages<C: rdkafka::consumer::ConsumerContext>(
    consumer: &BaseConsumer<C>,
    (topic, partition): (&str, i32),
    from: i64,
    below: Option<i64>,
    mut each: impl FnMut(&rdkafka::message::BorrowedMessage<'_>),
) -> Result<(), SinkError> {
    let below = below.unwrap_or(i64::MAX);
    if from >= below {
        return Ok(());
    }
    let reading = || format!("reading {topic}/{partition} from offset {from}");
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, partition, Offset::Offset(from))
        .map_err(kafka(format!("assigning {topic}/{partition}")))?;
    consumer.assign(&assignment).map_err(kafka(format!("assigning {topic}/{partition}")))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if Instant::now() > deadline {
            let source = KafkaError::MessageConsumption(RDKafkaErrorCode::OperationTimedOut);
            return Err(SinkError::Kafka { context: reading(), source });
        }
        match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(message)) if message.offset() < below => {
                each(&message);
                if message.offset() + 1 >= below {
                    break;
                }
            }
            Some(Ok(_)) | Some(Err(KafkaError::PartitionEOF(_))) => break,
            Some(Err(source)) => return Err(SinkError::Kafka { context: reading(), source }),
            None => {}
        }
    }
    consumer.unassign().map_err(kafka("unassigning"))?;
    Ok(())
}
