//! The sinks of a run as one: each closed batch handed to every sink in turn, and the
//! metrics of the messages that left.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::atomic::Ordering;

use defectflow_operators::derive::TrackMeasures;
use defectflow_schemas::{Emitted, WorkOrder};

use super::{Batch, Sink, SinkCount};
use crate::clock::now_ms;
use crate::metrics::{Metrics, Stage};

/// Every sink of a run, owned by the worker that delivers.
#[derive(Debug)]
pub struct Outputs {
    sinks: Vec<Box<dyn Sink>>,
}

impl Outputs {
    pub fn new(sinks: Vec<Box<dyn Sink>>) -> Outputs {
        Outputs { sinks }
    }

    /// Hands a closed batch to every sink, in order. Once the sinks the CMMS reads have
    /// it, the messages have left defectflow: their latencies and the open work orders
    /// are counted before the sent counter moves, so a scrape that sees them sent sees
    /// them all.
    pub fn emit(&mut self, batch: &Batch<'_>, metrics: &Metrics) -> anyhow::Result<()> {
        for (_, message) in batch.messages {
            if let Emitted::WorkOrder(w) = message {
                metrics.stage_times.record(Stage::Closed, w.revised_at_ms);
            }
        }
        let carriers = self.sinks.iter().rposition(|s| s.kind().carries_messages()).map_or(0, |i| i + 1);
        let mut acknowledged = 0;
        for (i, sink) in self.sinks.iter_mut().enumerate() {
            if i == carriers {
                left(batch.messages, acknowledged, metrics);
            }
            acknowledged += sink.deliver(batch, metrics)?;
        }
        if carriers == self.sinks.len() {
            left(batch.messages, acknowledged, metrics);
        }
        Ok(())
    }

    /// At the end of a run: every sink writes what it holds, and what is in `rest`.
    pub fn flush(&mut self, rest: &Batch<'_>) -> anyhow::Result<()> {
        self.sinks.iter_mut().try_for_each(|sink| sink.flush(rest))
    }

    /// The latest revision of every work order earlier runs delivered: from the first
    /// sink that can tell (the topic is what the CMMS saw; without Kafka, the file is).
    pub fn take_latest_orders(&mut self) -> Vec<WorkOrder> {
        let mut all: Vec<Option<Vec<WorkOrder>>> = self.sinks.iter_mut().map(|s| s.take_latest_orders()).collect();
        all.iter_mut().find_map(Option::take).unwrap_or_default()
    }

    /// The latest measures of `tracks` since `since_ms`, from the first sink that keeps
    /// tracks (none: empty).
    pub fn latest_track_measures(
        &self,
        tracks: &BTreeSet<String>,
        since_ms: u64,
    ) -> anyhow::Result<BTreeMap<String, TrackMeasures>> {
        self.sinks.iter().find_map(|s| s.latest_track_measures(tracks, since_ms)).unwrap_or_else(|| Ok(BTreeMap::new()))
    }

    /// At start, before the first batch: the audit log takes in what an earlier run
    /// wrote ahead and did not commit. Of its work orders and assignments it keeps those
    /// the CMMS received (any sink that delivers to it says so; without one, all), and
    /// all of cameras that replay footage (`replayed`), whose messages come again.
    pub fn recover(&mut self, replayed: &HashSet<String>) -> anyhow::Result<()> {
        let Some(i) = self.sinks.iter().position(|s| s.kind() == super::SinkKind::Audit) else { return Ok(()) };
        let (before, rest) = self.sinks.split_at_mut(i);
        let (audit, after) = rest.split_first_mut().expect("the audit sink");
        let deliverers: Vec<&dyn Sink> = before.iter().chain(after.iter()).map(|s| &**s).collect();
        let keep = |time: u64, message: &Emitted| {
            if let Emitted::WorkOrder(w) = message
                && replayed.contains(&w.camera_id)
            {
                return true;
            }
            let verdicts: Vec<bool> = deliverers.iter().filter_map(|s| s.delivered_earlier(time, message)).collect();
            verdicts.is_empty() || verdicts.contains(&true)
        };
        let Some(recovered) = audit.recover(&keep) else { return Ok(()) };
        let recovered = recovered?;
        super::failpoint("audit-after-recovery");
        if recovered > 0 {
            tracing::info!(
                rows = recovered,
                "the audit log took in the rows an earlier run had not committed (files marked recovered)"
            );
        }
        Ok(())
    }

    /// What each sink wrote in the run.
    pub fn counts(&self) -> Vec<SinkCount> {
        self.sinks.iter().filter_map(|s| s.count()).collect()
    }
}

/// Metrics of messages leaving defectflow: latency from detection to a new work order,
/// the work orders' board (open, overdue, hours, outcomes), dead letters, and then
/// messages acknowledged.
fn left(messages: &[(u64, Emitted)], acknowledged: u64, metrics: &Metrics) {
    // Only the worker that delivers sees messages; the others must not reset the gauge.
    if messages.is_empty() {
        return;
    }
    let now = now_ms();
    let mut board = metrics.board.lock().unwrap_or_else(|p| p.into_inner());
    for (_, message) in messages {
        match message {
            Emitted::WorkOrder(w) => {
                // From the capture of the frame that made this revision to its leaving.
                let processing = now.saturating_sub(w.revised_at_ms) as f64 / 1000.0;
                // Kept one by one only when timed (the bench): a run may go on for months.
                if metrics.stage_times.enabled.load(Ordering::Relaxed) {
                    metrics.revision_latencies.lock().unwrap_or_else(|p| p.into_inner()).push(processing);
                }
                if w.revision == 1 {
                    let seconds = now.saturating_sub(w.detected_at_ms) as f64 / 1000.0;
                    metrics.detection_to_work_order.observe(seconds);
                    metrics.new_work_order_latencies.lock().unwrap_or_else(|p| p.into_inner()).push(seconds);
                }
                // Closed ones leave the board (a run may close thousands over the months).
                board.revise(w);
            }
            Emitted::DeadLetter(_) => {
                metrics.dead_letters.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }
    drop(board);
    metrics.kafka_sent.fetch_add(acknowledged, Ordering::Relaxed);
}
