//! `defectflow bridge`: the work-order topic into a CMMS over its REST API, and the
//! CMMS's status changes back onto the wo-events topic (docs/cmms.md).
//!
//! One consumer reads every partition of the work-order topic and deals each revision
//! to a worker by its work-order id, so revisions of one work order reach the CMMS in
//! order while `concurrency` requests are in flight. A worker pushes a revision until the
//! CMMS acknowledges it (or refuses it for good: a dead letter with the answer), records
//! it in the journal, and reports its offset done. The consumer commits, per partition,
//! the offset below which everything is done, after syncing the journal: a revision
//! whose offset is committed was acknowledged by the CMMS; one that is not is sent again
//! after a restart, and the journal and the CMMS's idempotency key keep it from being
//! applied twice.

mod config;
mod http;
mod journal;
pub mod mapping;
mod publish;
mod push;
mod status;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use defectflow_schemas::registry::{self, WORK_ORDER};
use defectflow_schemas::{DeadLetter, WorkOrder};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use config::{BridgeConfig, CmmsConfig};
pub use push::Counters;

use crate::clock::now_ms;
use crate::kafka::{REQUEST_TIMEOUT, committed, failed, partitions};
use publish::Publisher;
use push::{Outcome, Pusher};

/// How often done offsets are committed.
const COMMIT_EVERY: Duration = Duration::from_millis(200);

/// What a bridge run did.
#[derive(Debug, Serialize)]
pub struct Summary {
    pub applied: u64,
    pub already_applied: u64,
    pub refused: u64,
    pub retries: u64,
    pub lookups: u64,
    pub events: u64,
    pub seconds: f64,
}

/// One revision for a worker.
struct Job {
    partition: i32,
    offset: i64,
    order: WorkOrder,
    raw: Value,
}

/// Runs the bridge until `stop` (or, with `until_caught_up`, until it has read every
/// partition to its end and every revision read is acknowledged and committed).
pub fn run(config: &BridgeConfig, stop: Arc<AtomicBool>, until_caught_up: bool) -> anyhow::Result<Summary> {
    let started = Instant::now();
    let cmms = &config.cmms;
    let mapping = config.mapping().map_err(|e| anyhow::anyhow!("cmms.mapping: {e}"))?;
    let secret = config.secret().map_err(|(field, problem)| anyhow::anyhow!("{field} {problem}"))?;
    let timeout = Duration::from_secs_f64(cmms.timeout_s);
    let client = http::Client::new(mapping, &cmms.url, secret, timeout, cmms.concurrency)?;
    let journal = journal::Journal::open(&cmms.state_dir)
        .map_err(|e| anyhow::anyhow!("bridge journal in {}: {e}", cmms.state_dir.display()))?;
    let counters = Arc::new(Counters::default());
    let pusher = Arc::new(Pusher {
        client,
        journal: Arc::new(Mutex::new(journal)),
        values: serde_json::to_value(&cmms.values)?,
        stop: stop.clone(),
        max_backoff: Duration::from_secs_f64(cmms.max_backoff_s),
        counters: counters.clone(),
    });
    let publisher = Arc::new(Publisher::start(&config.kafka, &format!("{}-bridge", config.kafka.sink_id))?);
    let mut reader = Reader::start(config)?;
    tracing::info!(
        cmms = %pusher.client.mapping.name, url = %cmms.url, partitions = reader.next.len(),
        "bridge started"
    );

    let (done_tx, done_rx) = crossbeam_channel::unbounded();
    let mut lanes = Vec::new();
    let mut workers = Vec::new();
    for lane in 0..cmms.concurrency {
        let (tx, rx) = crossbeam_channel::bounded::<Job>(64);
        lanes.push(tx);
        let (pusher, publisher, done, topics) =
            (pusher.clone(), publisher.clone(), done_tx.clone(), config.kafka.topics.clone());
        workers.push(
            std::thread::Builder::new()
                .name(format!("bridge-{lane}"))
                .spawn(move || work(&rx, &pusher, &publisher, &done, &topics))?,
        );
    }
    drop(done_tx);
    let poller = status::Poller::start(&pusher, &publisher, config)?;

    let mut last_commit = Instant::now();
    let mut last_report = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        if let Some(message) = reader.poll()? {
            let (partition, offset) = message;
            let job = reader.take(partition, offset);
            match job {
                Ok(job) => {
                    let lane = defectflow_operators::ids::stable_hash(&[job.order.work_order_id.as_bytes()]) as usize
                        % lanes.len();
                    if lanes[lane].send(job).is_err() {
                        anyhow::bail!("bridge worker {lane} stopped");
                    }
                }
                Err(letter) => {
                    publisher.send_until_delivered(&letter, &config.kafka.topics, &stop);
                    reader.done(partition, offset);
                }
            }
        }
        for (partition, offset) in done_rx.try_iter() {
            reader.done(partition, offset);
        }
        if last_commit.elapsed() >= COMMIT_EVERY {
            reader.commit(&pusher)?;
            last_commit = Instant::now();
        }
        if last_report.elapsed() >= Duration::from_secs(10) {
            tracing::info!(summary = ?summary(&counters, started), "bridge");
            last_report = Instant::now();
        }
        if until_caught_up && reader.caught_up() {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    drop(lanes);
    for worker in workers {
        let _ = worker.join();
    }
    for (partition, offset) in done_rx.try_iter() {
        reader.done(partition, offset);
    }
    reader.commit(&pusher)?;
    poller.join();
    let summary = summary(&counters, started);
    tracing::info!(?summary, "bridge stopped");
    Ok(summary)
}

fn summary(c: &Counters, started: Instant) -> Summary {
    let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    Summary {
        applied: get(&c.applied),
        already_applied: get(&c.already_applied),
        refused: get(&c.refused),
        retries: get(&c.retries),
        lookups: get(&c.lookups),
        events: get(&c.events),
        seconds: started.elapsed().as_secs_f64(),
    }
}

/// A worker: pushes its revisions in order, dead-letters refused ones, reports offsets done.
fn work(
    jobs: &Receiver<Job>,
    pusher: &Pusher,
    publisher: &Publisher,
    done: &Sender<(i32, i64)>,
    topics: &crate::kafka::TopicsConfig,
) {
    for job in jobs {
        if pusher.stop.load(Ordering::Relaxed) {
            // Not done: sent again after a restart.
            continue;
        }
        match pusher.push(&job.order, &job.raw) {
            Outcome::Applied | Outcome::AlreadyApplied => {}
            Outcome::Refused(reason) => {
                // Timed by the revision: a letter sent again after a restart has the same
                // idempotency key (`ce_id`), so a consumer can tell the repeat.
                let letter = DeadLetter {
                    source: format!("cmms:{}", pusher.client.mapping.name),
                    payload: job.raw.to_string(),
                    reason,
                    at_ms: job.order.revised_at_ms,
                };
                if !publisher.send_until_delivered(&letter, topics, &pusher.stop) {
                    continue;
                }
            }
            Outcome::Stopped => continue,
        }
        let _ = done.send((job.partition, job.offset));
    }
}

/// The work-order topic's consumer and, per partition, what is done.
struct Reader {
    consumer: BaseConsumer,
    topic: String,
    /// Offsets handed out and not yet done.
    pending: HashMap<i32, BTreeSet<i64>>,
    /// The offset after the last one read.
    next: HashMap<i32, i64>,
    committed: HashMap<i32, i64>,
    /// Partitions read to their end (librdkafka's end-of-partition event: the high
    /// watermark can lag the last record of a batch on some brokers).
    at_end: BTreeSet<i32>,
    /// The message read last, until taken.
    message: Option<(i32, i64, Option<Vec<u8>>)>,
}

impl Reader {
    fn start(config: &BridgeConfig) -> anyhow::Result<Reader> {
        let topic = config.kafka.topics.work_orders.clone();
        let consumer: BaseConsumer = config
            .kafka
            .client_config(&[])?
            .set("group.id", &config.cmms.group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", &config.cmms.start)
            .set("enable.partition.eof", "true")
            .create()
            .map_err(failed("creating the bridge's consumer"))?;
        let ids = partitions(&consumer, &topic)?;
        let committed: HashMap<i32, i64> = committed(&consumer, &topic)?.into_iter().collect();
        let mut assignment = TopicPartitionList::new();
        let mut next = HashMap::new();
        for &id in &ids {
            let (low, high) = consumer
                .fetch_watermarks(&topic, id, REQUEST_TIMEOUT)
                .map_err(failed(format!("reading {topic}/{id}")))?;
            let from = match committed.get(&id) {
                Some(&offset) => offset,
                None if config.cmms.start == "latest" => high,
                None => low,
            };
            next.insert(id, from);
            assignment.add_partition_offset(&topic, id, Offset::Offset(from)).map_err(failed("assigning"))?;
        }
        consumer.assign(&assignment).map_err(failed(format!("assigning {topic}")))?;
        let committed = next.clone();
        Ok(Reader { consumer, topic, pending: HashMap::new(), next, committed, at_end: BTreeSet::new(), message: None })
    }

    /// The next message's (partition, offset), if one came.
    fn poll(&mut self) -> anyhow::Result<Option<(i32, i64)>> {
        match self.consumer.poll(Duration::from_millis(20)) {
            Some(Ok(m)) => {
                let (partition, offset) = (m.partition(), m.offset());
                self.message = Some((partition, offset, m.payload().map(<[u8]>::to_vec)));
                self.next.insert(partition, offset + 1);
                self.at_end.remove(&partition);
                self.pending.entry(partition).or_default().insert(offset);
                Ok(Some((partition, offset)))
            }
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                self.at_end.insert(partition);
                Ok(None)
            }
            Some(Err(error)) => {
                tracing::warn!(%error, "reading the work-order topic");
                std::thread::sleep(Duration::from_millis(200));
                Ok(None)
            }
            None => Ok(None),
        }
    }

    /// The revision read last, or the dead letter it is.
    fn take(&mut self, partition: i32, offset: i64) -> Result<Job, DeadLetter> {
        let payload = self.message.take().and_then(|(_, _, p)| p);
        let letter = |payload: &[u8], reason: String| DeadLetter {
            source: format!("{}/{partition}@{offset}", self.topic),
            payload: String::from_utf8_lossy(payload).into_owned(),
            reason,
            at_ms: now_ms(),
        };
        let Some(payload) = payload else {
            return Err(letter(b"", "a work-order revision with no value".into()));
        };
        let mut raw: Value = serde_json::from_slice(&payload)
            .map_err(|e| letter(&payload, format!("not a work-order revision (JSON): {e}")))?;
        registry::drop_unknown_fields(WORK_ORDER.parsed(), &mut raw);
        let order =
            WorkOrder::deserialize(&raw).map_err(|e| letter(&payload, format!("not a work-order revision: {e}")))?;
        Ok(Job { partition, offset, order, raw })
    }

    fn done(&mut self, partition: i32, offset: i64) {
        if let Some(pending) = self.pending.get_mut(&partition) {
            pending.remove(&offset);
        }
    }

    /// Whether every partition was read to its end, and all of it is done and committed.
    fn caught_up(&self) -> bool {
        self.next.iter().all(|(p, next)| self.at_end.contains(p) && self.committed.get(p).is_some_and(|c| c >= next))
    }

    /// Syncs the journal, then commits, per partition, the first offset not yet done.
    fn commit(&mut self, pusher: &Pusher) -> anyhow::Result<()> {
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
        let mut journal = pusher.journal.lock().unwrap_or_else(|p| p.into_inner());
        journal.sync().map_err(|e| anyhow::anyhow!("syncing the bridge journal: {e}"))?;
        drop(journal);
        match self.consumer.commit(&offsets, CommitMode::Sync) {
            Ok(()) => self.committed.extend(moved),
            // Committed next time; what is not committed is sent again, not lost.
            Err(error) => tracing::warn!(%error, "committing the bridge's offsets"),
        }
        Ok(())
    }
}
