//! A consumer group's reader of one topic for the tools beside a run (`defectflow
//! bridge`, `defectflow notify`): every partition from the group's committed offset,
//! messages handed out one by one, and per partition the offset below which every
//! message is done, committed once what they did is durable. A message not done when
//! the process stops is read again after a restart: at least once, never lost.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

use super::{KafkaConfig, REQUEST_TIMEOUT, committed, failed, partitions};

/// One message read: where it is, its value and its idempotency key header.
#[derive(Debug)]
pub(crate) struct Read {
    pub partition: i32,
    pub offset: i64,
    pub payload: Option<Vec<u8>>,
    pub idempotency_key: Option<String>,
}

/// The reader; see the module documentation.
pub(crate) struct TopicReader {
    consumer: BaseConsumer,
    pub topic: String,
    /// Offsets handed out and not yet done.
    pending: HashMap<i32, BTreeSet<i64>>,
    /// The offset after the last one read.
    pub next: HashMap<i32, i64>,
    committed: HashMap<i32, i64>,
    /// Partitions read to their end (librdkafka's end-of-partition event: the high
    /// watermark can lag the last record of a batch on some brokers).
    at_end: BTreeSet<i32>,
}

impl TopicReader {
    /// Reads `topic` as consumer group `group`; a partition the group has not committed
    /// starts at its `start` (`earliest` or `latest`). `what` names the reader in errors.
    pub fn start(
        kafka: &KafkaConfig,
        topic: &str,
        group: &str,
        start: &str,
        what: &str,
    ) -> anyhow::Result<TopicReader> {
        let consumer: BaseConsumer = kafka
            .client_config(&[])?
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", start)
            .set("enable.partition.eof", "true")
            .create()
            .map_err(failed(format!("creating the {what}'s consumer")))?;
        let ids = partitions(&consumer, topic)?;
        let committed: HashMap<i32, i64> = committed(&consumer, topic)?.into_iter().collect();
        let mut assignment = TopicPartitionList::new();
        let mut next = HashMap::new();
        for &id in &ids {
            let (low, high) = consumer
                .fetch_watermarks(topic, id, REQUEST_TIMEOUT)
                .map_err(failed(format!("reading {topic}/{id}")))?;
            let from = match committed.get(&id) {
                Some(&offset) => offset,
                None if start == "latest" => high,
                None => low,
            };
            next.insert(id, from);
            assignment.add_partition_offset(topic, id, Offset::Offset(from)).map_err(failed("assigning"))?;
        }
        consumer.assign(&assignment).map_err(failed(format!("assigning {topic}")))?;
        let committed = next.clone();
        Ok(TopicReader {
            consumer,
            topic: topic.to_owned(),
            pending: HashMap::new(),
            next,
            committed,
            at_end: BTreeSet::new(),
        })
    }

    /// The next message, if one came within a few milliseconds; it is pending until
    /// [`TopicReader::done`].
    pub fn poll(&mut self) -> Option<Read> {
        match self.consumer.poll(Duration::from_millis(20)) {
            Some(Ok(m)) => {
                let (partition, offset) = (m.partition(), m.offset());
                self.next.insert(partition, offset + 1);
                self.at_end.remove(&partition);
                self.pending.entry(partition).or_default().insert(offset);
                let header = m.headers().and_then(|h| h.iter().find(|h| h.key == "idempotency-key"));
                Some(Read {
                    partition,
                    offset,
                    payload: m.payload().map(<[u8]>::to_vec),
                    idempotency_key: header.and_then(|h| h.value).map(|v| String::from_utf8_lossy(v).into_owned()),
                })
            }
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                self.at_end.insert(partition);
                None
            }
            Some(Err(error)) => {
                tracing::warn!(%error, topic = %self.topic, "reading");
                std::thread::sleep(Duration::from_millis(200));
                None
            }
            None => None,
        }
    }

    pub fn done(&mut self, partition: i32, offset: i64) {
        if let Some(pending) = self.pending.get_mut(&partition) {
            pending.remove(&offset);
        }
    }

    /// Whether every partition was read to its end, and all of it is done and committed.
    pub fn caught_up(&self) -> bool {
        self.next.iter().all(|(p, next)| self.at_end.contains(p) && self.committed.get(p).is_some_and(|c| c >= next))
    }

    /// Commits, per partition, the first offset not yet done, after `durable` (which
    /// makes what was done durable: a journal synced) succeeds.
    pub fn commit(&mut self, durable: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<()> {
        let mut offsets = TopicPartitionList::new();
        let mut moved = Vec::new();
        for (&partition, &next) in &self.next {
            let first_pending = self.pending.get(&partition).and_then(|p| p.first().copied());
            let upto = first_pending.unwrap_or(next);
            if upto > self.committed.get(&partition).copied().unwrap_or(-1) {
                offsets
                    .add_partition_offset(&self.topic, partition, Offset::Offset(upto))
                    .map_err(failed("committing"))?;
                moved.push((partition, upto));
            }
        }
        if moved.is_empty() {
            return Ok(());
        }
        durable()?;
        match self.consumer.commit(&offsets, CommitMode::Sync) {
            Ok(()) => self.committed.extend(moved),
            // Committed next time; what is not committed is read again, not lost.
            Err(error) => tracing::warn!(%error, topic = %self.topic, "committing offsets"),
        }
        Ok(())
    }
}
