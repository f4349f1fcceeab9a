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

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use defectflow_schemas::registry::{self, WORK_ORDER};
use defectflow_schemas::{DeadLetter, WorkOrder};
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use config::{BridgeConfig, CmmsConfig};
pub use push::Counters;

use crate::clock::now_ms;
use crate::kafka::reader::{Read, TopicReader};
pub(crate) use publish::Publisher;
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
    let topic = &config.kafka.topics.work_orders;
    let mut reader = TopicReader::start(&config.kafka, topic, &cmms.group, &cmms.start, "bridge")?;
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
        if let Some(read) = reader.poll() {
            let (partition, offset) = (read.partition, read.offset);
            match job(topic, read) {
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
            reader.commit(|| sync(&pusher))?;
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
    reader.commit(|| sync(&pusher))?;
    poller.join();
    let summary = summary(&counters, started);
    tracing::info!(?summary, "bridge stopped");
    Ok(summary)
}

/// Syncs the journal: what it recorded is durable before the offsets move past it.
fn sync(pusher: &Pusher) -> anyhow::Result<()> {
    let mut journal = pusher.journal.lock().unwrap_or_else(|p| p.into_inner());
    journal.sync().map_err(|e| anyhow::anyhow!("syncing the bridge journal: {e}"))
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

/// The revision a message holds, or the dead letter it is.
fn job(topic: &str, read: Read) -> Result<Job, DeadLetter> {
    let Read { partition, offset, payload, .. } = read;
    let letter = |payload: &[u8], reason: String| DeadLetter {
        source: format!("{topic}/{partition}@{offset}"),
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
