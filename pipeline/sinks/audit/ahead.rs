//! The audit log's write-ahead log, `audit/.ahead.jsonl`: the rows buffered since the
//! last commit, one JSON line per batch, appended before the sinks the CMMS reads get
//! the batch (the audit sink comes first) and cleared once a commit holds them. A
//! process that dies between commits leaves them there: the next start commits them
//! (see [`super::AuditStream::recover`]), so the audit log holds every revision the CMMS
//! received, and the detections and track snapshots of live cameras, which no replay
//! brings back.
//!
//! A line is written with one `write` call: after a crash of the process (SIGKILL, a
//! panic) the operating system still has it. It is synced to the disk when its batch
//! carries work orders, assignments or alerts, before they go to the CMMS, so that not even a
//! power cut leaves the CMMS ahead of the audit log; detections and tracks alone ride
//! along with the next synced line (a power cut may lose those since then).

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use defectflow_schemas::{
    Alert, Assignment, DefectTrack, Detection, FailureRecord, SuppressedTrack, WoEvent, WorkOrder,
};
use serde::{Deserialize, Serialize};

use super::{AuditError, StockRow};

/// The file's name in the audit folder.
pub const FILE_NAME: &str = ".ahead.jsonl";

/// Rows of one batch (or of all batches an earlier run left), each table's with the
/// dataflow time the audit log skips by (a detection's is its capture time).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AheadRows {
    pub closed_before: u64,
    pub work_orders: Vec<(u64, WorkOrder)>,
    pub assignments: Vec<(u64, Assignment)>,
    #[serde(default)]
    pub alerts: Vec<(u64, Alert)>,
    pub detections: Vec<Detection>,
    pub tracks: Vec<(u64, DefectTrack)>,
    pub inventory: Vec<(u64, StockRow)>,
    pub wo_events: Vec<(u64, WoEvent)>,
    #[serde(default)]
    pub failures: Vec<(u64, FailureRecord)>,
    #[serde(default)]
    pub suppressed: Vec<(u64, SuppressedTrack)>,
}

impl AheadRows {
    pub fn is_empty(&self) -> bool {
        self.work_orders.is_empty()
            && self.assignments.is_empty()
            && self.alerts.is_empty()
            && self.detections.is_empty()
            && self.tracks.is_empty()
            && self.inventory.is_empty()
            && self.wo_events.is_empty()
            && self.failures.is_empty()
            && self.suppressed.is_empty()
    }

    pub fn len(&self) -> usize {
        self.work_orders.len()
            + self.assignments.len()
            + self.alerts.len()
            + self.detections.len()
            + self.tracks.len()
            + self.inventory.len()
            + self.wo_events.len()
            + self.failures.len()
            + self.suppressed.len()
    }

    /// Whether the CMMS may see some of these rows (work orders, assignments, alerts).
    fn reach_the_cmms(&self) -> bool {
        !self.work_orders.is_empty() || !self.assignments.is_empty() || !self.alerts.is_empty()
    }

    fn extend(&mut self, more: AheadRows) {
        self.closed_before = self.closed_before.max(more.closed_before);
        self.work_orders.extend(more.work_orders);
        self.assignments.extend(more.assignments);
        self.alerts.extend(more.alerts);
        self.detections.extend(more.detections);
        self.tracks.extend(more.tracks);
        self.inventory.extend(more.inventory);
        self.wo_events.extend(more.wo_events);
        self.failures.extend(more.failures);
        self.suppressed.extend(more.suppressed);
    }
}

/// The open write-ahead log.
#[derive(Debug)]
pub struct AheadLog {
    path: PathBuf,
    file: File,
    /// Whether lines were written since it was last cleared.
    written: bool,
}

impl AheadLog {
    /// Opens `dir/.ahead.jsonl` (hidden from `*` globs), with the rows an earlier run left in it. A last line
    /// cut short by a crash (or a power cut) ends what is read: its batch never reached
    /// the CMMS, which it is written before.
    pub fn open(dir: &Path) -> Result<(AheadLog, AheadRows), AuditError> {
        let path = dir.join(FILE_NAME);
        let io = |source| AuditError::Io { path: path.clone(), source };
        let mut left = AheadRows::default();
        let written = std::fs::metadata(&path).is_ok_and(|m| m.len() > 0);
        if written {
            let reader = BufReader::new(File::open(&path).map_err(io)?);
            for line in reader.lines() {
                let Ok(rows) = serde_json::from_str::<AheadRows>(&line.map_err(io)?) else { break };
                left.extend(rows);
            }
        }
        let file = OpenOptions::new().create(true).append(true).open(&path).map_err(io)?;
        Ok((AheadLog { path, file, written }, left))
    }

    /// Appends a batch's rows as one line; synced when the CMMS may see some of them.
    pub fn append(&mut self, rows: &AheadRows) -> Result<(), AuditError> {
        if rows.is_empty() {
            return Ok(());
        }
        let mut line =
            serde_json::to_vec(rows).map_err(|e| AuditError::Io { path: self.path.clone(), source: e.into() })?;
        line.push(b'\n');
        let io = |source| AuditError::Io { path: self.path.clone(), source };
        self.file.write_all(&line).map_err(io)?;
        self.written = true;
        if rows.reach_the_cmms() {
            self.file.sync_data().map_err(io)?;
        }
        Ok(())
    }

    /// Empties the log: a commit holds every row in it.
    pub fn clear(&mut self) -> Result<(), AuditError> {
        if !self.written {
            return Ok(());
        }
        let io = |source| AuditError::Io { path: self.path.clone(), source };
        self.file.set_len(0).map_err(io)?;
        self.file.sync_data().map_err(io)?;
        self.written = false;
        Ok(())
    }
}
