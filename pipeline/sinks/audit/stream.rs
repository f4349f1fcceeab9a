//! The audit log written as a run goes: rows of closed dataflow times buffered per table,
//! written ahead ([`super::ahead`]), committed when enough have gathered or enough time
//! has passed, and what a crash left in the write-ahead log committed at the next start.

use std::collections::HashSet;
use std::path::Path;

use defectflow_schemas::audit::AuditTable;
use defectflow_schemas::{
    Alert, Assignment, DefectTrack, Detection, Emitted, EpochMillis, FailureRecord, SuppressedTrack, WoEvent, WorkOrder,
};

use arrow_array::ArrayRef;

use super::ahead::{self, AheadRows};
use super::{AuditError, AuditLog, StockRow, columns};

/// Rows of one table waiting for a commit, and the time before which earlier runs
/// committed this table's rows.
#[derive(Debug)]
pub(super) struct Buffer<T> {
    rows: Vec<T>,
    pub(super) before: u64,
}

impl<T> Buffer<T> {
    fn open(log: &AuditLog, table: AuditTable) -> Result<Buffer<T>, AuditError> {
        Ok(Buffer { rows: Vec::new(), before: log.committed_before(table)? })
    }

    /// Whether a row of dataflow time `time` is new: no committed file holds it.
    fn wants(&self, time: u64) -> bool {
        time >= self.before
    }
}

/// Rows for the audit log of dataflow times before `closed_before`, with their times.
#[derive(Debug, Default)]
pub struct AuditRows {
    pub detections: Vec<Detection>,
    pub tracks: Vec<(u64, DefectTrack)>,
    pub inventory: Vec<(u64, StockRow)>,
    pub wo_events: Vec<(u64, WoEvent)>,
    pub failures: Vec<(u64, FailureRecord)>,
    pub suppressed: Vec<(u64, SuppressedTrack)>,
}

/// Every table written as the run goes; see the module documentation.
#[derive(Debug)]
pub struct AuditStream {
    log: AuditLog,
    pub(super) detections: Buffer<Detection>,
    tracks: Buffer<DefectTrack>,
    work_orders: Buffer<WorkOrder>,
    assignments: Buffer<Assignment>,
    inventory: Buffer<StockRow>,
    wo_events: Buffer<WoEvent>,
    alerts: Buffer<Alert>,
    failures: Buffer<FailureRecord>,
    suppressed: Buffer<SuppressedTrack>,
    /// The buffered rows' closed time.
    closed_before: u64,
    last_commit: std::time::Instant,
    max_rows: usize,
    max_age: std::time::Duration,
    /// After a failed commit, when to try again (the rows wait in the buffers).
    retry_at: Option<std::time::Instant>,
    /// The buffered rows, written ahead ([`ahead`]).
    ahead: ahead::AheadLog,
    /// What an earlier run wrote ahead and did not commit, until [`AuditStream::recover`].
    left: Option<AheadRows>,
    /// The next commit's files are marked as recovered.
    recovering: bool,
}

/// How long a failed commit waits before the next try.
const RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

/// Commits' worth of rows a failing audit log holds in memory before the cameras wait.
const HELD_COMMITS: usize = 4;

impl AuditStream {
    /// Opens the audit log under `dir`, learning what earlier runs committed; commits
    /// every `max_rows` rows or `max_age`, whichever comes first.
    pub fn open(dir: &Path, max_rows: usize, max_age: std::time::Duration) -> Result<AuditStream, AuditError> {
        let log = AuditLog::open(dir)?;
        let (ahead, left) = ahead::AheadLog::open(dir)?;
        let buffers = (
            Buffer::open(&log, AuditTable::Detections)?,
            Buffer::open(&log, AuditTable::Tracks)?,
            Buffer::open(&log, AuditTable::WorkOrders)?,
            Buffer::open(&log, AuditTable::Assignments)?,
            Buffer::open(&log, AuditTable::Inventory)?,
            Buffer::open(&log, AuditTable::WoEvents)?,
            Buffer::open(&log, AuditTable::Alerts)?,
            Buffer::open(&log, AuditTable::Failures)?,
            Buffer::open(&log, AuditTable::Suppressed)?,
        );
        // What the start learnt beyond the manifest; a disk that refuses it only means
        // the same footers are read at the next start.
        if let Err(error) = log.write_manifest() {
            tracing::warn!(%error, "the audit log's manifest could not be written");
        }
        let (detections, tracks, work_orders, assignments, inventory, wo_events, alerts, failures, suppressed) =
            buffers;
        Ok(AuditStream {
            detections,
            tracks,
            work_orders,
            assignments,
            inventory,
            wo_events,
            alerts,
            failures,
            suppressed,
            ahead,
            left: Some(left),
            recovering: false,
            log,
            closed_before: 0,
            last_commit: std::time::Instant::now(),
            max_rows,
            max_age,
            retry_at: None,
        })
    }

    /// Buffers the rows of dataflow times before `closed_before` (all complete) and
    /// commits when the buffer is full or old enough.
    ///
    /// The new rows are written ahead first; a write-ahead log that cannot be written
    /// (the disk full) is an error like a failed commit, and the rows are kept in
    /// memory all the same.
    pub fn append(
        &mut self,
        closed_before: u64,
        messages: &[(u64, Emitted)],
        rows: AuditRows,
    ) -> Result<(), AuditError> {
        let mut new = AheadRows { closed_before, ..AheadRows::default() };
        for (time, message) in messages {
            match message {
                Emitted::WorkOrder(w) if self.work_orders.wants(*time) => new.work_orders.push((*time, (**w).clone())),
                Emitted::Assignment(a) if self.assignments.wants(*time) => new.assignments.push((*time, a.clone())),
                Emitted::Alert(a) if self.alerts.wants(*time) => new.alerts.push((*time, a.clone())),
                _ => {}
            }
        }
        new.detections = rows.detections.into_iter().filter(|d| self.detections.wants(d.capture_ms)).collect();
        new.tracks = rows.tracks.into_iter().filter(|(t, _)| self.tracks.wants(*t)).collect();
        new.inventory = rows.inventory.into_iter().filter(|(t, _)| self.inventory.wants(*t)).collect();
        new.wo_events = rows.wo_events.into_iter().filter(|(t, _)| self.wo_events.wants(*t)).collect();
        new.failures = rows.failures.into_iter().filter(|(t, _)| self.failures.wants(*t)).collect();
        new.suppressed = rows.suppressed.into_iter().filter(|(t, _)| self.suppressed.wants(*t)).collect();
        let written = self.ahead.append(&new);
        self.take(new);
        let committed = self.commit_when_due();
        written.and(committed)
    }

    /// Buffers rows for the next commit.
    fn take(&mut self, rows: AheadRows) {
        self.closed_before = self.closed_before.max(rows.closed_before);
        self.work_orders.rows.extend(rows.work_orders.into_iter().map(|(_, w)| w));
        self.assignments.rows.extend(rows.assignments.into_iter().map(|(_, a)| a));
        self.alerts.rows.extend(rows.alerts.into_iter().map(|(_, a)| a));
        self.detections.rows.extend(rows.detections);
        self.tracks.rows.extend(rows.tracks.into_iter().map(|(_, t)| t));
        self.inventory.rows.extend(rows.inventory.into_iter().map(|(_, r)| r));
        self.wo_events.rows.extend(rows.wo_events.into_iter().map(|(_, e)| e));
        self.failures.rows.extend(rows.failures.into_iter().map(|(_, f)| f));
        self.suppressed.rows.extend(rows.suppressed.into_iter().map(|(_, s)| s));
    }

    /// At start, before the run's first batch: commits what an earlier run wrote ahead
    /// and did not commit, in the same tables and partitions, in files marked as
    /// recovered (`part-NNNNNNNN-recovered.parquet`, with `defectflow.recovered` in
    /// their metadata). Work orders and assignments go in where `keep` says so (the
    /// caller keeps those the CMMS received, and those a replay brings again; an
    /// assignment goes with the revision that carries it). Returns how many rows were
    /// recovered.
    pub fn recover(&mut self, keep: impl Fn(u64, &Emitted) -> bool) -> Result<usize, AuditError> {
        let Some(mut left) = self.left.take() else { return Ok(0) };
        let revision = |id: &str, revision: u32| (id.to_owned(), revision);
        let written: HashSet<_> =
            left.work_orders.iter().map(|(_, w)| revision(&w.work_order_id, w.revision)).collect();
        left.work_orders
            .retain(|(t, w)| self.work_orders.wants(*t) && keep(*t, &Emitted::WorkOrder(Box::new(w.clone()))));
        let kept: HashSet<_> = left.work_orders.iter().map(|(_, w)| revision(&w.work_order_id, w.revision)).collect();
        left.assignments.retain(|(t, a)| {
            let carrier = revision(&a.work_order_id, a.revision);
            let keep = if written.contains(&carrier) {
                kept.contains(&carrier)
            } else {
                keep(*t, &Emitted::Assignment(a.clone()))
            };
            self.assignments.wants(*t) && keep
        });
        left.alerts.retain(|(t, a)| self.alerts.wants(*t) && keep(*t, &Emitted::Alert(a.clone())));
        left.detections.retain(|d| self.detections.wants(d.capture_ms));
        left.tracks.retain(|(t, _)| self.tracks.wants(*t));
        left.inventory.retain(|(t, _)| self.inventory.wants(*t));
        left.wo_events.retain(|(t, _)| self.wo_events.wants(*t));
        left.failures.retain(|(t, _)| self.failures.wants(*t));
        left.suppressed.retain(|(t, _)| self.suppressed.wants(*t));
        let recovered = left.len();
        if recovered > 0 {
            self.take(left);
            self.recovering = true;
            let committed = self.commit();
            self.recovering = false;
            committed?;
        }
        self.ahead.clear()?;
        Ok(recovered)
    }

    fn commit_when_due(&mut self) -> Result<(), AuditError> {
        let rows = self.held_rows();
        let due = rows >= self.max_rows || (rows > 0 && self.last_commit.elapsed() >= self.max_age);
        if due && self.retry_at.is_none_or(|at| std::time::Instant::now() >= at) {
            self.commit()?;
        }
        Ok(())
    }

    /// Whether the last commit failed (its rows wait for the next try).
    /// The log it writes to.
    pub fn log(&self) -> &AuditLog {
        &self.log
    }

    pub fn failing(&self) -> bool {
        self.retry_at.is_some()
    }

    /// Whether a failing log holds as many rows as it may: `HELD_COMMITS` commits' worth.
    /// The run then holds its cameras back until the disk takes the rows.
    pub fn overfull(&self) -> bool {
        self.failing() && self.held_rows() >= self.max_rows.saturating_mul(HELD_COMMITS)
    }

    fn held_rows(&self) -> usize {
        self.detections.rows.len()
            + self.tracks.rows.len()
            + self.work_orders.rows.len()
            + self.assignments.rows.len()
            + self.inventory.rows.len()
            + self.wo_events.rows.len()
            + self.alerts.rows.len()
            + self.failures.rows.len()
            + self.suppressed.rows.len()
    }

    /// Commits the buffered rows. A table whose files cannot be written keeps its rows
    /// for the next commit, tried no sooner than a second later.
    pub fn commit(&mut self) -> Result<(), AuditError> {
        let result = self.commit_tables();
        self.retry_at = result.is_err().then(|| std::time::Instant::now() + RETRY_AFTER);
        result
    }

    fn commit_tables(&mut self) -> Result<(), AuditError> {
        let (closed, recovered) = (self.closed_before, self.recovering);
        let log = &self.log;
        commit(
            log,
            &mut self.detections,
            (closed, recovered),
            AuditTable::Detections,
            |d| d.capture_ms,
            columns::detections,
        )?;
        commit(log, &mut self.tracks, (closed, recovered), AuditTable::Tracks, |t| t.last_seen_ms, columns::tracks)?;
        commit(
            log,
            &mut self.work_orders,
            (closed, recovered),
            AuditTable::WorkOrders,
            |w| w.revised_at_ms,
            columns::work_orders,
        )?;
        commit(
            log,
            &mut self.assignments,
            (closed, recovered),
            AuditTable::Assignments,
            |a| a.assigned_at_ms,
            columns::assignments,
        )?;
        commit(log, &mut self.inventory, (closed, recovered), AuditTable::Inventory, |r| r.at_ms, columns::inventory)?;
        commit(log, &mut self.wo_events, (closed, recovered), AuditTable::WoEvents, |e| e.at_ms, columns::wo_events)?;
        commit(log, &mut self.alerts, (closed, recovered), AuditTable::Alerts, |a| a.at_ms, columns::alerts)?;
        commit(
            log,
            &mut self.failures,
            (closed, recovered),
            AuditTable::Failures,
            |f| f.repaired_at_ms.unwrap_or(f.failed_at_ms),
            columns::failures,
        )?;
        commit(
            log,
            &mut self.suppressed,
            (closed, recovered),
            AuditTable::Suppressed,
            |s| s.at_ms,
            columns::suppressed,
        )?;
        self.last_commit = std::time::Instant::now();
        // Every row written ahead is committed now.
        self.ahead.clear()
    }
}

/// Writes a table's buffered rows (if any) as files closing at `closed_before`.
fn commit<T>(
    log: &AuditLog,
    buffer: &mut Buffer<T>,
    (closed_before, recovered): (u64, bool),
    table: AuditTable,
    event_time: impl Fn(&T) -> EpochMillis,
    columns: impl Fn(&[&T]) -> Vec<ArrayRef>,
) -> Result<(), AuditError> {
    if buffer.rows.is_empty() {
        return Ok(());
    }
    // The rows stay buffered until their files are in place.
    log.write_closing(table, &buffer.rows, event_time, columns, Some(closed_before), recovered)?;
    crate::sinks::failpoint("audit-after-manifest");
    buffer.rows.clear();
    buffer.before = closed_before;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::fs::File;
    use std::path::PathBuf;

    use parquet::file::reader::{FileReader, SerializedFileReader};

    use super::super::{RECOVERED, manifest};
    use super::*;

    fn detection(i: u64) -> Detection {
        Detection {
            camera_id: "cam-1".into(),
            frame_index: i,
            capture_ms: 1_790_000_000_000 + i * 100,
            class: defectflow_schemas::DefectClass::Crack,
            confidence: 0.9,
            bbox: defectflow_schemas::BoundingBox { x: 1.0, y: 2.0, width: 3.0, height: 4.0 },
            area_px: 12.0,
            model_version: "m".into(),
            shadow: false,
        }
    }

    fn parquet_files(dir: &Path) -> Vec<PathBuf> {
        let mut files = Vec::new();
        for partition in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            for file in std::fs::read_dir(partition.path()).into_iter().flatten().flatten() {
                files.push(file.path());
            }
        }
        files
    }

    /// Rows written ahead and not committed (the process died) are committed by the next
    /// start in files marked as recovered, once; a message the caller does not keep stays
    /// out, and a last line cut short is passed over.
    #[test]
    fn rows_written_ahead_are_recovered_once_by_the_next_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        let hour = std::time::Duration::from_secs(3600);
        let assignment = |id: &str| Assignment {
            work_order_id: id.into(),
            revision: 1,
            technician_id: Some("T-1".into()),
            estimated_hours: 1.5,
            assigned_at_ms: 1_790_000_000_000,
            reason: "least_workload".into(),
        };
        {
            let mut stream = AuditStream::open(dir.path(), 1000, hour).expect("open");
            let messages = vec![
                (5, Emitted::Assignment(assignment("WO-delivered"))),
                (6, Emitted::Assignment(assignment("WO-never-delivered"))),
            ];
            let rows = AuditRows { detections: vec![detection(0), detection(1)], ..AuditRows::default() };
            stream.append(7, &messages, rows).expect("written ahead");
            // Dropped without a commit, as a killed process leaves it.
        }
        let ahead = dir.path().join(ahead::FILE_NAME);
        let mut file = std::fs::OpenOptions::new().append(true).open(&ahead).expect("ahead log");
        std::io::Write::write_all(&mut file, b"{\"closed_before\":9,\"work_ord").expect("a torn line");

        let mut stream = AuditStream::open(dir.path(), 1000, hour).expect("reopen");
        let delivered = |_: u64, m: &Emitted| matches!(m, Emitted::Assignment(a) if a.work_order_id == "WO-delivered");
        assert_eq!(stream.recover(delivered).expect("recovered"), 3, "one assignment and two detections");
        let files: Vec<PathBuf> =
            ["assignments", "detections"].iter().flat_map(|table| parquet_files(&dir.path().join(table))).collect();
        assert_eq!(files.len(), 2, "{files:?}");
        for path in &files {
            assert!(path.to_string_lossy().ends_with("-recovered.parquet"), "{}", path.display());
            let reader = SerializedFileReader::new(File::open(path).expect("file")).expect("parquet");
            let metadata = reader.metadata().file_metadata();
            let marked = (metadata.key_value_metadata().into_iter().flatten())
                .any(|kv| kv.key == RECOVERED && kv.value.as_deref() == Some("true"));
            assert!(marked, "{} is marked as recovered", path.display());
            let expected = if path.to_string_lossy().contains("assignments") { 1 } else { 2 };
            assert_eq!(metadata.num_rows(), expected, "{}", path.display());
        }
        assert_eq!(std::fs::metadata(&ahead).expect("ahead log").len(), 0, "cleared once committed");
        drop(stream);
        let mut again = AuditStream::open(dir.path(), 1000, hour).expect("reopen");
        assert_eq!(again.recover(|_, _| true).expect("nothing left"), 0);
    }

    /// A start learns what is committed from the manifest, reading no footer of the
    /// files it covers (here one is made unreadable): only newer files' footers.
    #[test]
    fn a_start_reads_the_manifest_not_every_footer() {
        let dir = tempfile::tempdir().expect("tempdir");
        let hour = std::time::Duration::from_secs(3600);
        let mut stream = AuditStream::open(dir.path(), 1, hour).expect("open");
        for (closed_before, i) in [(10, 0), (20, 1), (30, 2)] {
            let rows = AuditRows { detections: vec![detection(i)], ..AuditRows::default() };
            stream.append(closed_before, &[], rows).expect("committed");
        }
        drop(stream);
        let mut files = parquet_files(&dir.path().join("detections"));
        files.sort();
        assert_eq!(files.len(), 3, "{files:?}");
        std::fs::write(&files[0], b"not parquet").expect("made unreadable");
        let reopened = AuditStream::open(dir.path(), 1, hour).expect("the covered footer is not read");
        assert_eq!(reopened.detections.before, 30);
        // A commit whose manifest was never written (the process died between): its
        // file is found by its number and read.
        let manifest = std::fs::read(dir.path().join(manifest::FILE_NAME)).expect("manifest");
        let mut stream = reopened;
        stream
            .append(40, &[], AuditRows { detections: vec![detection(3)], ..AuditRows::default() })
            .expect("committed");
        drop(stream);
        std::fs::write(dir.path().join(manifest::FILE_NAME), manifest).expect("the manifest as before that commit");
        assert_eq!(AuditStream::open(dir.path(), 1, hour).expect("open").detections.before, 40);
        std::fs::remove_file(dir.path().join(manifest::FILE_NAME)).expect("manifest");
        let error = AuditStream::open(dir.path(), 1, hour).expect_err("without it, every footer is read");
        assert!(error.to_string().contains("part-00000000.parquet"), "{error}");
    }

    /// A restart reads back the latest snapshot of each track it takes up, and only of
    /// those.
    #[test]
    fn the_latest_snapshot_of_a_track_reads_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut stream = AuditStream::open(dir.path(), 1, std::time::Duration::from_secs(3600)).expect("open");
        let snapshot = |id: &str, last_seen_ms: u64, area_px: f32, state: defectflow_schemas::TrackState| {
            let d = detection(0);
            DefectTrack {
                track_id: id.into(),
                camera_id: d.camera_id,
                asset_id: "A".into(),
                class: d.class,
                state,
                first_seen_ms: d.capture_ms,
                last_seen_ms,
                hits: last_seen_ms % 100,
                bbox: d.bbox,
                area_px,
                size_mm: (area_px > 20.0).then_some(4.5),
                growth_px_per_min: f64::from(area_px) / 2.0,
                best_frame_index: 0,
                best_bbox: d.bbox,
                best_capture_ms: d.capture_ms,
                model_version: d.model_version,
                shadow: false,
                evidence: None,
            }
        };
        use defectflow_schemas::TrackState::{Confirmed, Resolved};
        let t0 = 1_790_000_000_000;
        let tracks = vec![
            (1, snapshot("TR-a", t0 + 11, 12.0, Confirmed)),
            (2, snapshot("TR-a", t0 + 86_400_012, 30.0, Confirmed)), // the next day
            (2, snapshot("TR-b", t0 + 13, 12.0, Confirmed)),
            (3, snapshot("TR-b", t0 + 14, 16.0, Resolved)),
            (3, snapshot("TR-c", t0 + 15, 50.0, Confirmed)),
        ];
        stream.append(4, &[], AuditRows { tracks, ..AuditRows::default() }).expect("written");
        stream.commit().expect("committed");
        let wanted = ["TR-a", "TR-b", "TR-missing"].map(str::to_owned).into_iter().collect();
        let latest = stream.log().latest_track_measures(&wanted, t0).expect("read");
        assert_eq!(latest.keys().collect::<Vec<_>>(), ["TR-a", "TR-b"]);
        let a = &latest["TR-a"];
        assert_eq!(
            (a.last_seen_ms, a.hits, a.area_px, a.size_mm, a.growth_px_per_min, a.resolved),
            (t0 + 86_400_012, 12, 30.0, Some(4.5), 15.0, false)
        );
        let b = &latest["TR-b"];
        assert_eq!((b.last_seen_ms, b.area_px, b.size_mm, b.resolved), (t0 + 14, 16.0, None, true));
        // Partitions before `since` are not read.
        let later = stream.log().latest_track_measures(&wanted, t0 + 86_400_000).expect("read");
        assert_eq!(later.keys().collect::<Vec<_>>(), ["TR-a"]);
    }

    /// A table whose folder cannot be written (here a file stands where its folder goes,
    /// which fails even for root) keeps its rows, says it is failing, holds at most a few
    /// commits' worth before asking the run to wait, and writes them once, later.
    #[test]
    fn a_failed_commit_keeps_its_rows_for_the_next() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut stream = AuditStream::open(dir.path(), 2, std::time::Duration::from_secs(3600)).expect("open");
        let blocked = dir.path().join("detections");
        std::fs::write(&blocked, b"not a folder").expect("block");
        let rows =
            |from: u64| AuditRows { detections: (from..from + 2).map(detection).collect(), ..AuditRows::default() };
        let error = stream.append(10, &[], rows(0)).expect_err("the folder is a file");
        assert!(error.to_string().contains("detections"), "{error}");
        assert!(stream.failing() && !stream.overfull());
        // Within the second no new try is made; the rows pile up to the limit.
        for i in 1..4 {
            stream.append(10 + i, &[], rows(2 * i)).expect("no try yet");
        }
        assert!(stream.overfull(), "8 rows of a 2-row commit");
        std::fs::remove_file(&blocked).expect("unblock");
        stream.retry_at = Some(std::time::Instant::now());
        stream.append(20, &[], AuditRows::default()).expect("written");
        assert!(!stream.failing() && !stream.overfull());
        let files = parquet_files(&blocked);
        assert_eq!(files.len(), 1, "{files:?}");
        let reader = SerializedFileReader::new(File::open(&files[0]).expect("open")).expect("parquet");
        assert_eq!(reader.metadata().file_metadata().num_rows(), 8, "every held row, once");
        assert!(std::fs::read_dir(dir.path().join("detections")).expect("folder").count() == 1, "nothing left aside");
    }
}
