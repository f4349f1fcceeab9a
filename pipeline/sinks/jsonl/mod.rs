//! `work-orders.jsonl`: every message of the work-order dataflow as a JSON line, appended
//! as the run goes (the same messages, in the same order, as the Kafka topics), for a
//! deployment without Kafka and for anyone who wants the stream in a file.
//!
//! Delivery is exactly once across crashes, as on the topic: after appending the lines
//! of the times before `closed_before` the file is synced and a progress record
//! (`work-orders.jsonl.progress`: the file's length and `closed_before`) is written aside
//! and renamed into place. A restart cuts the file back to the recorded length (lines
//! written after the last record are written again) and leaves out the messages of times
//! the record covers: a replay of the same inputs gives the same messages, so each line
//! is in the file once. A restarted live run takes up the work orders the file left open.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use defectflow_schemas::{Emitted, WorkOrder};
use serde::{Deserialize, Serialize};

use crate::metrics::Metrics;
use crate::sinks::{Batch, Sink, SinkCount, SinkKind};

/// The file's name in the output folder.
pub const FILE_NAME: &str = "work-orders.jsonl";

/// A failure of the JSON-lines output; names the file.
#[derive(Debug, thiserror::Error)]
pub enum JsonLinesError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: not a progress record: {source}")]
    Progress { path: PathBuf, source: serde_json::Error },
    #[error("{path}: the progress record says {recorded} bytes were written, the file has {found}")]
    Shorter { path: PathBuf, recorded: u64, found: u64 },
}

/// What the file holds for certain.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Progress {
    /// Every message of a dataflow time before this is in the file.
    closed_before: u64,
    /// The file's length when it was recorded.
    bytes: u64,
}

/// Appends the dataflow's messages to `work-orders.jsonl`, each once.
#[derive(Debug)]
pub struct JsonLinesSink {
    path: PathBuf,
    progress_path: PathBuf,
    file: File,
    progress: Progress,
    latest_orders: Vec<WorkOrder>,
    /// Messages written by this run, and left out because an earlier run wrote them.
    pub written: u64,
    pub skipped: u64,
}

impl JsonLinesSink {
    /// Opens (or creates) `dir/work-orders.jsonl` and recovers from an earlier run.
    pub fn open(dir: &Path) -> Result<JsonLinesSink, JsonLinesError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let path = dir.join(FILE_NAME);
        let progress_path = dir.join(format!("{FILE_NAME}.progress"));
        let progress = match std::fs::read(&progress_path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|source| JsonLinesError::Progress { path: progress_path.clone(), source })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Progress::default(),
            Err(e) => return Err(io(&progress_path)(e)),
        };
        let file = OpenOptions::new().read(true).append(true).create(true).open(&path).map_err(io(&path))?;
        let found = file.metadata().map_err(io(&path))?.len();
        if found < progress.bytes {
            return Err(JsonLinesError::Shorter { path, recorded: progress.bytes, found });
        }
        // Lines after the record were written by a run that stopped before recording
        // them: they are written again.
        if found > progress.bytes {
            tracing::info!(path = %path.display(), bytes = found - progress.bytes, "cutting lines written after the last progress record");
            file.set_len(progress.bytes).map_err(io(&path))?;
            file.sync_all().map_err(io(&path))?;
        }
        let latest_orders = latest_work_orders(&path, progress.bytes).map_err(io(&path))?;
        Ok(JsonLinesSink { path, progress_path, file, progress, latest_orders, written: 0, skipped: 0 })
    }

    /// The latest revision of every work order earlier runs wrote to the file; empty
    /// after the first call.
    pub fn take_latest_orders(&mut self) -> Vec<WorkOrder> {
        std::mem::take(&mut self.latest_orders)
    }

    /// Appends the messages of every time before `closed_before` (`ready`, in emission
    /// order) that an earlier run has not written, then records the progress.
    pub fn deliver(&mut self, closed_before: u64, ready: &[(u64, Emitted)]) -> Result<(), JsonLinesError> {
        let mut text = String::new();
        for (time, message) in ready {
            if *time < self.progress.closed_before {
                self.skipped += 1;
                continue;
            }
            let line = serde_json::to_string(message)
                .map_err(|e| JsonLinesError::Io { path: self.path.clone(), source: e.into() })?;
            text.push_str(&line);
            text.push('\n');
            self.written += 1;
        }
        if text.is_empty() {
            // Nothing new: a later restart replays these times and writes nothing either.
            return Ok(());
        }
        (&self.file).write_all(text.as_bytes()).map_err(io(&self.path))?;
        self.file.sync_data().map_err(io(&self.path))?;
        super::failpoint("jsonl-after-append");
        let progress = Progress {
            closed_before: closed_before.max(self.progress.closed_before),
            bytes: self.progress.bytes + text.len() as u64,
        };
        let aside = self.progress_path.with_extension("progress.tmp");
        let record =
            serde_json::to_vec(&progress).map_err(|e| JsonLinesError::Io { path: aside.clone(), source: e.into() })?;
        let mut file = File::create(&aside).map_err(io(&aside))?;
        file.write_all(&record).and_then(|()| file.sync_all()).map_err(io(&aside))?;
        super::failpoint("jsonl-before-progress-rename");
        std::fs::rename(&aside, &self.progress_path).map_err(io(&self.progress_path))?;
        super::failpoint("jsonl-after-progress");
        self.progress = progress;
        Ok(())
    }
}

/// Names `path` in an I/O error.
impl Sink for JsonLinesSink {
    fn kind(&self) -> SinkKind {
        SinkKind::JsonLines
    }

    fn deliver(&mut self, batch: &Batch<'_>, _: &Metrics) -> anyhow::Result<u64> {
        JsonLinesSink::deliver(self, batch.closed_before, batch.messages)?;
        Ok(0)
    }

    /// Without Kafka, the file is what the CMMS read.
    fn take_latest_orders(&mut self) -> Option<Vec<WorkOrder>> {
        Some(JsonLinesSink::take_latest_orders(self))
    }

    fn count(&self) -> Option<SinkCount> {
        Some(SinkCount { kind: SinkKind::JsonLines, written: self.written, earlier: self.skipped })
    }

    /// Lines after the progress record are cut off at the start: only the times it
    /// closes were delivered for good.
    fn delivered_earlier(&self, time: u64, _message: &Emitted) -> Option<bool> {
        Some(time < self.progress.closed_before)
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> JsonLinesError {
    let path = path.to_owned();
    move |source| JsonLinesError::Io { path, source }
}

/// The latest revision of every work order in the first `bytes` of the file. Lines that
/// are not work orders are passed over.
fn latest_work_orders(path: &Path, bytes: u64) -> std::io::Result<Vec<WorkOrder>> {
    let mut latest: std::collections::BTreeMap<String, WorkOrder> = std::collections::BTreeMap::new();
    let reader = BufReader::new(File::open(path)?.take(bytes));
    for line in reader.lines() {
        let Ok(Emitted::WorkOrder(order)) = serde_json::from_str::<Emitted>(&line?) else { continue };
        if latest.get(&order.work_order_id).is_none_or(|known| known.revision < order.revision) {
            latest.insert(order.work_order_id.clone(), *order);
        }
    }
    Ok(latest.into_values().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The messages of a scenario run (a crack that grows: work order revisions with an
    /// assignment), each at its own dataflow time.
    fn messages() -> Vec<(u64, Emitted)> {
        include_str!("../../../tests/scenarios/crack_grows.expected.jsonl")
            .lines()
            .filter_map(|line| serde_json::from_str::<Emitted>(line).ok())
            .enumerate()
            .map(|(i, m)| (i as u64 * 10, m))
            .collect()
    }

    fn lines(dir: &Path) -> Vec<Emitted> {
        let text = std::fs::read_to_string(dir.join(FILE_NAME)).expect("file");
        text.lines().map(|l| serde_json::from_str(l).expect("a whole JSON line")).collect()
    }

    #[test]
    fn a_restart_writes_each_message_once_and_cuts_what_was_not_recorded() {
        let all = messages();
        assert!(all.len() >= 3, "the scenario has messages");
        let dir = tempfile::tempdir().expect("tempdir");
        let mut first = JsonLinesSink::open(dir.path()).expect("open");
        let half = all[all.len() / 2].0;
        first.deliver(half, &all[..all.len() / 2]).expect("deliver");
        drop(first);
        // A crash after appending more lines (one of them half written) but before
        // recording them.
        let mut file = OpenOptions::new().append(true).open(dir.path().join(FILE_NAME)).expect("file");
        file.write_all(b"{\"work_order\": {\"work_order_id\": \"WO-half").expect("write");
        drop(file);

        // The restart replays every message from the start.
        let mut second = JsonLinesSink::open(dir.path()).expect("reopen");
        second.deliver(u64::MAX, &all).expect("deliver");
        assert_eq!((second.written, second.skipped), ((all.len() - all.len() / 2) as u64, (all.len() / 2) as u64));
        let expected: Vec<Emitted> = all.iter().map(|(_, m)| m.clone()).collect();
        assert_eq!(lines(dir.path()), expected, "every message once, in order, no partial line");
        // A third run of the same inputs writes nothing.
        let mut third = JsonLinesSink::open(dir.path()).expect("reopen");
        third.deliver(u64::MAX, &all).expect("deliver");
        assert_eq!(third.written, 0);
        assert_eq!(lines(dir.path()), expected);
    }

    #[test]
    fn a_reopened_file_gives_the_latest_revision_of_each_work_order() {
        let all = messages();
        let dir = tempfile::tempdir().expect("tempdir");
        let mut sink = JsonLinesSink::open(dir.path()).expect("open");
        sink.deliver(u64::MAX, &all).expect("deliver");
        let mut latest: std::collections::BTreeMap<String, WorkOrder> = Default::default();
        for (_, message) in &all {
            if let Emitted::WorkOrder(w) = message {
                latest.insert(w.work_order_id.clone(), (**w).clone());
            }
        }
        let found = JsonLinesSink::open(dir.path()).expect("reopen").take_latest_orders();
        let expected: Vec<WorkOrder> = latest.into_values().collect();
        assert!(!expected.is_empty(), "the scenario has work orders");
        assert_eq!(found, expected);
        // A file the record says is longer than it is was cut by something else.
        std::fs::write(dir.path().join(FILE_NAME), "").expect("truncate");
        let error = JsonLinesSink::open(dir.path()).expect_err("shorter than recorded");
        assert!(error.to_string().contains("work-orders.jsonl") && error.to_string().contains("bytes"), "{error}");
    }
}
