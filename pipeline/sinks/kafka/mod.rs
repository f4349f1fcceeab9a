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
//! none of them again. (Materialize's Kafka sink keeps progress the same way.) Its own
//! records keep the recovered offsets until their closed timestamp covers every message
//! of this sink found after them (each carries its dataflow time in `defectflow-time`;
//! other senders' messages, such as the bridge's dead letters, are not waited for), or
//! the run derived it again: a later restart still learns of them.
//!
//! The producer is always idempotent (no duplicates from its own retries). With
//! `transactional = true`, each closed timestamp's messages and its progress record go
//! in one transaction, for brokers whose consumers hide aborted transactions.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use defectflow_schemas::{Emitted, SCHEMA_VERSION, WorkOrder};
use rdkafka::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use serde::{Deserialize, Serialize};

use crate::clock::now_ms;
use crate::kafka::{BrokerError, KafkaConfig, Quiet, REQUEST_TIMEOUT, failed, read_messages};
use crate::metrics::Metrics;
use crate::sinks::{Batch, Sink, SinkCount, SinkKind};

mod outgoing;

pub use outgoing::{Outgoing, ce, headers};

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
    /// Of those, the ones this sink sent, with the dataflow time each was derived at
    /// (messages of other senders on the topics, such as the bridge's dead letters,
    /// and those sent without a time are not waited for).
    pub ahead: HashMap<String, u64>,
    /// The next offset of every output partition, as read to its end.
    pub ends: BTreeMap<String, BTreeMap<i32, i64>>,
    /// The latest revision of every work order this sink sent to the topic.
    pub latest_orders: Vec<WorkOrder>,
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
    /// This sink's messages found after the recovered record that no record of this
    /// run covers yet (idempotency key → dataflow time): until none is left, records
    /// keep the recovered offsets.
    unsettled: HashMap<String, u64>,
    last_recorded: Instant,
    /// Messages sent by this process, for the run's report.
    pub sent: u64,
    /// Messages not sent because an earlier run had delivered them.
    pub skipped: u64,
}

impl Sink for KafkaSink {
    fn kind(&self) -> SinkKind {
        SinkKind::Kafka
    }

    fn deliver(&mut self, batch: &Batch<'_>, metrics: &Metrics) -> anyhow::Result<u64> {
        let before = self.sent;
        metrics.delivering_since_ms.store(now_ms(), Ordering::Relaxed);
        let delivered = KafkaSink::deliver(self, batch.closed_before, batch.messages);
        metrics.delivering_since_ms.store(0, Ordering::Relaxed);
        if let Err(error) = delivered {
            metrics.kafka_errors.fetch_add(1, Ordering::Relaxed);
            return Err(error.into());
        }
        Ok(self.sent - before)
    }

    /// What earlier runs sent to the work-order topic: what the CMMS holds.
    /// On the topic, or (an assignment, which travels inside its revision) its revision
    /// is, or its time was closed.
    fn delivered_earlier(&self, time: u64, message: &Emitted) -> Option<bool> {
        Some(match (Outgoing::of(message, &self.config.topics), message) {
            (Some(outgoing), _) => self.delivered_before(time, &outgoing),
            (None, Emitted::Assignment(a)) => {
                let closed = self.recovered.progress.as_ref().is_some_and(|p| time < p.closed_before);
                closed || self.recovered.delivered_after.contains(&format!("{}:{}", a.work_order_id, a.revision))
            }
            (None, _) => false,
        })
    }

    fn take_latest_orders(&mut self) -> Option<Vec<WorkOrder>> {
        Some(std::mem::take(&mut self.recovered.latest_orders))
    }

    fn count(&self) -> Option<SinkCount> {
        Some(SinkCount { kind: SinkKind::Kafka, written: self.sent, earlier: self.skipped })
    }
}

impl std::fmt::Debug for KafkaSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSink").field("config", &self.config).field("progress", &self.progress).finish()
    }
}

/// How long a metadata or watermark request may take.
/// How long a flush waits for the broker between warnings.
const FLUSH_WARNING: Duration = Duration::from_secs(30);
/// How often progress is recorded when no message went out.
const IDLE_PROGRESS: Duration = Duration::from_secs(1);

impl KafkaSink {
    /// Connects, learns what earlier runs delivered, and (transactional) fences them.
    pub fn start(config: &KafkaConfig) -> Result<KafkaSink, BrokerError> {
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
            client.create_with_context(Deliveries::default()).map_err(failed("creating the producer"))?;
        if config.transactional {
            producer.init_transactions(REQUEST_TIMEOUT).map_err(failed("initialising transactions"))?;
        }
        let recovered = recover(config)?;
        super::failpoint("kafka-after-recovery");
        // Records start from the recovered one: what a crashed run sent after it may
        // be of times its closed timestamp does not cover yet.
        let progress = recovered.progress.clone().unwrap_or_default();
        let unsettled = recovered.ahead.clone();
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
            unsettled,
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
    pub fn deliver(&mut self, closed_before: u64, messages: &[(u64, Emitted)]) -> Result<(), BrokerError> {
        let mut outgoing = Vec::new();
        for (time, message) in messages {
            let Some(message) = Outgoing::of(message, &self.config.topics) else { continue };
            if self.delivered_before(*time, &message) {
                self.skipped += 1;
                self.unsettled.remove(&message.idempotency_key);
            } else {
                outgoing.push((*time, message));
            }
        }
        let quiet = self.last_recorded.elapsed() < IDLE_PROGRESS;
        if outgoing.is_empty() && (closed_before <= self.progress.closed_before || quiet) {
            return Ok(());
        }
        if self.config.transactional {
            self.producer.begin_transaction().map_err(failed("beginning a transaction"))?;
        }
        for (i, (time, message)) in outgoing.iter().enumerate() {
            if i == 1 {
                super::failpoint("kafka-between-sends");
            }
            self.send(&message.topic, &message.key, &message.payload, Some((message, *time)))?;
        }
        self.flush_producer()?;
        self.sent += outgoing.len() as u64;
        if !outgoing.is_empty() {
            tracing::debug!(closed_before, messages = outgoing.len(), "kafka: delivered");
        }
        if !outgoing.is_empty() {
            super::failpoint("after-send");
        }
        self.unsettled.retain(|_, time| *time >= closed_before);
        let mut progress = ProgressRecord { closed_before, offsets: self.progress.offsets.clone() };
        if self.unsettled.is_empty()
            && let Ok(next) = self.producer.context().next_offsets.lock()
        {
            // Every message before the ends is covered: by this record's closed
            // timestamp, or as one this run derived again (its time is then closed).
            let sent = next.iter().filter(|(topic, _)| **topic != self.config.topics.progress);
            for (topic, partitions) in self.recovered.ends.iter().chain(sent) {
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
        self.flush_producer()?;
        if self.config.transactional {
            super::failpoint("before-commit");
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
    fn commit_transaction(&self) -> Result<(), BrokerError> {
        let started = Instant::now();
        loop {
            match self.producer.commit_transaction(REQUEST_TIMEOUT) {
                Ok(()) => return Ok(()),
                Err(KafkaError::Transaction(error)) if error.is_retriable() => {
                    let waited_s = started.elapsed().as_secs();
                    tracing::warn!(waited_s, %error, "kafka: committing a transaction waits for the broker");
                }
                Err(source) => return Err(BrokerError::Kafka { context: "committing a transaction".into(), source }),
            }
        }
    }

    /// Sends a record; an output `event` (with its dataflow time) adds its idempotency
    /// key, its CloudEvents attributes and its event time as the record's timestamp.
    fn send(&self, topic: &str, key: &str, payload: &[u8], event: Option<(&Outgoing, u64)>) -> Result<(), BrokerError> {
        let headers = match event {
            Some((event, time)) => event.headers(&self.config.sink_id, Some(time)),
            // A progress record: the work order's schema version.
            None => OwnedHeaders::new()
                .insert(Header { key: headers::SCHEMA_VERSION, value: Some(SCHEMA_VERSION) })
                .insert(Header { key: headers::CONTENT_TYPE, value: Some("application/json") })
                .insert(Header { key: headers::SINK_ID, value: Some(self.config.sink_id.as_str()) }),
        };
        let mut record = BaseRecord::to(topic).key(key).payload(payload).headers(headers);
        if let Some((event, _)) = event {
            record = record.timestamp(event.event_ms as i64);
        }
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                // The local queue is full (the broker is slow or away): wait for room.
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    self.producer.poll(Duration::from_millis(100));
                }
                Err((error, _)) => {
                    return Err(BrokerError::Kafka { context: format!("sending to {topic}"), source: error });
                }
            }
        }
    }

    /// Waits until every sent message is acknowledged (through a broker outage, up to
    /// `message.timeout.ms`), then reports any that failed.
    fn flush_producer(&self) -> Result<(), BrokerError> {
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
                Err(error) => return Err(BrokerError::Kafka { context: "flushing".into(), source: error }),
            }
        }
        let failed =
            std::mem::take(
                &mut *self.producer.context().failed.lock().map_err(|_| BrokerError::Undelivered {
                    count: 1,
                    first: "delivery report lock poisoned".into(),
                })?,
            );
        match failed.first() {
            None => Ok(()),
            Some(first) => Err(BrokerError::Undelivered { count: failed.len(), first: first.clone() }),
        }
    }
}

/// Reads the last progress record and the output messages after it.
fn recover(config: &KafkaConfig) -> Result<Recovered, BrokerError> {
    let mut client = config.client_config(&[])?;
    // The end of a partition is found by reading to it (`enable.partition.eof`): some
    // brokers (tansu) report a high watermark behind the last record of a batch.
    client
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("auto.offset.reset", "earliest")
        .set("group.id", format!("{}-recovery", config.sink_id));
    let consumer: BaseConsumer<Quiet> =
        client.create_with_context(Quiet).map_err(failed("creating the recovery consumer"))?;
    let progress_topic = &config.topics.progress;
    let (low, high) = consumer
        .fetch_watermarks(progress_topic, 0, REQUEST_TIMEOUT)
        .map_err(failed(format!("reading the offsets of {progress_topic}")))?;
    let mut progress: Option<ProgressRecord> = None;
    {
        // The last record of this sink: scan back from the end (records of other sink
        // ids may share the topic).
        let mut records = read_partition(&consumer, progress_topic, 0, low.max(high - 1000))?;
        records.reverse();
        for (offset, key, payload) in records {
            if key.as_deref() == Some(config.sink_id.as_str()) {
                let record = serde_json::from_slice(&payload).map_err(|e| BrokerError::Progress {
                    topic: progress_topic.clone(),
                    offset,
                    reason: e.to_string(),
                })?;
                progress = Some(record);
                break;
            }
        }
    }
    let mut found = Found { sink_id: &config.sink_id, keys: HashSet::new(), ahead: HashMap::new() };
    let mut ends: BTreeMap<String, BTreeMap<i32, i64>> = BTreeMap::new();
    for topic in config.topics.outputs() {
        let metadata = consumer
            .fetch_metadata(Some(topic), REQUEST_TIMEOUT)
            .map_err(failed(format!("reading the metadata of {topic}")))?;
        let partitions: Vec<i32> =
            metadata.topics().iter().flat_map(|t| t.partitions().iter().map(|p| p.id())).collect();
        for partition in partitions {
            let (low, _) = consumer
                .fetch_watermarks(topic, partition, REQUEST_TIMEOUT)
                .map_err(failed(format!("reading the offsets of {topic}/{partition}")))?;
            let from = progress
                .as_ref()
                .and_then(|p| p.offsets.get(topic).and_then(|o| o.get(&partition)))
                .copied()
                .unwrap_or(low)
                .max(low);
            let end = read_idempotency_keys(&consumer, (topic, partition), from, &mut found)?;
            ends.entry(topic.to_owned()).or_default().insert(partition, end);
        }
    }
    let latest_orders = latest_work_orders(&consumer, &config.topics.work_orders, &config.sink_id)?;
    Ok(Recovered { progress, delivered_after: found.keys, ahead: found.ahead, ends, latest_orders })
}

/// The latest revision of every work order this sink (`sink_id`) sent to `topic`, read
/// from its start: what the CMMS holds. A message that is not a work order is passed
/// over (the topic is read as the CMMS reads it).
fn latest_work_orders(
    consumer: &BaseConsumer<Quiet>,
    topic: &str,
    sink_id: &str,
) -> Result<Vec<WorkOrder>, BrokerError> {
    let metadata = consumer
        .fetch_metadata(Some(topic), REQUEST_TIMEOUT)
        .map_err(failed(format!("reading the metadata of {topic}")))?;
    let partitions: Vec<i32> = metadata.topics().iter().flat_map(|t| t.partitions().iter().map(|p| p.id())).collect();
    let mut latest: BTreeMap<String, WorkOrder> = BTreeMap::new();
    for partition in partitions {
        let (low, _) = consumer
            .fetch_watermarks(topic, partition, REQUEST_TIMEOUT)
            .map_err(failed(format!("reading the offsets of {topic}/{partition}")))?;
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
) -> Result<Vec<Record>, BrokerError> {
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

/// What recovery finds after the progress record: every message's idempotency key,
/// and the dataflow times of those this sink (`sink_id`) sent.
struct Found<'a> {
    sink_id: &'a str,
    keys: HashSet<String>,
    ahead: HashMap<String, u64>,
}

/// Reads one partition from `from` to its end into `found`; returns the end.
fn read_idempotency_keys(
    consumer: &BaseConsumer<Quiet>,
    (topic, partition): (&str, i32),
    from: i64,
    found: &mut Found<'_>,
) -> Result<i64, BrokerError> {
    let mut end = from;
    read_messages(consumer, (topic, partition), from, None, |m| {
        end = end.max(m.offset() + 1);
        let header = |name: &str| {
            let value = m.headers().and_then(|h| h.iter().find(|h| h.key == name)).and_then(|h| h.value);
            value.map(|v| String::from_utf8_lossy(v).into_owned())
        };
        let Some(key) = header(headers::IDEMPOTENCY_KEY) else { return };
        let time = header(headers::TIME).and_then(|t| t.parse().ok());
        if let Some(time) = time.filter(|_| header(headers::SINK_ID).as_deref() == Some(found.sink_id)) {
            found.ahead.insert(key.clone(), time);
        }
        found.keys.insert(key);
    })?;
    Ok(end)
}
