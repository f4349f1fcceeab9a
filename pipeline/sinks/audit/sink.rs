//! The audit log as a sink of the run: each closed batch's messages and rows, with the
//! stock view's updates turned into the parts' levels.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use defectflow_operators::derive::TrackMeasures;
use defectflow_operators::inventory::StockMeasure;
use defectflow_schemas::{DefectTrack, Emitted, FailureRecord, SuppressedTrack, WoEvent};

use super::{AuditError, AuditRows, AuditStream, StockRow};
use crate::metrics::Metrics;
use crate::sinks::{Batch, Sink, SinkKind};

/// A row for the audit log that is not a message.
#[derive(Clone, Debug)]
pub enum AuditRow {
    /// A new snapshot of a track.
    Track(Box<DefectTrack>),
    /// A CMMS event the ledger applied.
    Event(WoEvent),
    /// The failure a completed repair closed.
    Failure(FailureRecord),
    /// A sighting a false positive held back.
    Suppressed(SuppressedTrack),
    /// An update of the stock view: (part, measure) has (+1) or no longer has (−1) a value.
    Stock(String, StockMeasure, i64, isize),
}

/// The audit log, written as the run goes.
#[derive(Debug)]
pub struct AuditSink {
    stream: AuditStream,
    /// (part, measure) → value, from the stock view's updates taken so far.
    stock: HashMap<(String, StockMeasure), i64>,
}

impl AuditSink {
    pub fn open(dir: &Path, max_rows: usize, max_age: Duration) -> Result<AuditSink, AuditError> {
        Ok(AuditSink { stream: AuditStream::open(dir, max_rows, max_age)?, stock: HashMap::new() })
    }

    /// Tracks and events as they are; stock updates applied in time order, with a row
    /// per part and time holding the part's levels after that time's updates.
    fn rows(&mut self, batch: &Batch<'_>) -> AuditRows {
        let mut rows: Vec<&(u64, AuditRow)> = batch.rows.iter().collect();
        rows.sort_by_key(|(t, _)| *t);
        let mut out = AuditRows { detections: batch.detections.to_vec(), ..AuditRows::default() };
        let mut rows = rows.into_iter().peekable();
        while let Some((time, _)) = rows.peek() {
            let time = *time;
            let mut touched = BTreeSet::new();
            while let Some((_, row)) = rows.next_if(|(t, _)| *t == time) {
                match row {
                    AuditRow::Track(track) => out.tracks.push((time, (**track).clone())),
                    AuditRow::Event(event) => out.wo_events.push((time, event.clone())),
                    AuditRow::Failure(failure) => out.failures.push((time, failure.clone())),
                    AuditRow::Suppressed(held) => out.suppressed.push((time, held.clone())),
                    AuditRow::Stock(part, measure, value, diff) => {
                        *self.stock.entry((part.clone(), *measure)).or_default() += value * *diff as i64;
                        touched.insert(part.clone());
                    }
                }
            }
            for part in touched {
                let level = |measure| self.stock.get(&(part.clone(), measure)).copied().unwrap_or(0);
                let (on_hand, reserved, available) =
                    (level(StockMeasure::OnHand), level(StockMeasure::Reserved), level(StockMeasure::Available));
                out.inventory.push((time, StockRow { part_id: part, at_ms: time, on_hand, reserved, available }));
            }
        }
        out
    }
}

impl Sink for AuditSink {
    fn kind(&self) -> SinkKind {
        SinkKind::Audit
    }

    /// A disk that cannot take the files (full, read-only) does not stop the run or the
    /// work orders: the rows wait in memory (the cameras are held back once a few
    /// commits' worth wait), and the commit is tried again every second.
    fn deliver(&mut self, batch: &Batch<'_>, metrics: &Metrics) -> anyhow::Result<u64> {
        let rows = self.rows(batch);
        let was_failing = self.stream.failing();
        if let Err(error) = self.stream.append(batch.closed_before, batch.messages, rows) {
            metrics.audit_errors.fetch_add(1, Ordering::Relaxed);
            if !was_failing {
                tracing::error!(%error, "the audit log cannot write; its rows are held until it can");
            }
        } else if was_failing && !self.stream.failing() {
            tracing::info!("the audit log writes again; the rows held meanwhile are committed");
        }
        metrics.audit_failing.store(self.stream.failing(), Ordering::Relaxed);
        metrics.audit_overfull.store(self.stream.overfull(), Ordering::Relaxed);
        Ok(0)
    }

    /// Commits what is buffered, with the detections left; a disk that cannot take it
    /// is given half a minute before the run fails, naming the file.
    fn flush(&mut self, rest: &Batch<'_>) -> anyhow::Result<()> {
        crate::sinks::stallpoint("audit-flush");
        let detections = rest.detections.to_vec();
        // Whether this commits is up to the loop below.
        let _ = self.stream.append(0, &[], AuditRows { detections, ..AuditRows::default() });
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.stream.commit() {
                Ok(()) => return Ok(()),
                Err(error) if Instant::now() >= deadline => {
                    return Err(anyhow::anyhow!("the audit log could not write its last rows: {error}"));
                }
                Err(error) => {
                    tracing::warn!(%error, "the audit log cannot write its last rows; trying again");
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
        }
    }

    fn recover(&mut self, keep: &dyn Fn(u64, &Emitted) -> bool) -> Option<anyhow::Result<usize>> {
        Some(self.stream.recover(keep).map_err(Into::into))
    }

    fn latest_track_measures(
        &self,
        tracks: &BTreeSet<String>,
        since_ms: u64,
    ) -> Option<anyhow::Result<BTreeMap<String, TrackMeasures>>> {
        Some(self.stream.log().latest_track_measures(tracks, since_ms).map_err(Into::into))
    }
}
