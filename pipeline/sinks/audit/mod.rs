//! The Parquet audit log: `audit/<table>/date=YYYY-MM-DD/part-NNNNNNNN.parquet`,
//! zstd-compressed, one file per table and day per commit. A file is written aside as
//! `.part-NNNNNNNN.parquet.tmp` (hidden from `*.parquet` globs), synced, and renamed into
//! place, so a reader never sees a partial file. The `date` partition comes from each
//! row's event time (UTC) and is read back by `hive_partitioning=True`.
//!
//! During a run every table is written as it goes ([`AuditStream`]): rows of closed
//! dataflow times are buffered and committed when enough have gathered or enough time
//! has passed. Each file records in its Parquet metadata the dataflow time
//! it closes (`defectflow.closed_before`); a restarted run that replays its inputs
//! skips the rows of times a committed file already holds, so a crash leaves neither a
//! partial file nor a duplicate row. Rows not yet committed are written ahead
//! ([`ahead`]), and the next start commits what a crash left there
//! ([`AuditStream::recover`]).

mod ahead;
mod columns;
mod compact;
mod manifest;
mod sink;

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{ArrayRef, RecordBatch};
use defectflow_operators::derive::TrackMeasures;
use defectflow_schemas::audit::AuditTable;
use defectflow_schemas::{Alert, Assignment, DefectTrack, Detection, Emitted, EpochMillis, WoEvent, WorkOrder};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use parquet::file::reader::{FileReader, SerializedFileReader};

use crate::clock::utc_date;
use manifest::Manifest;

pub use ahead::AheadRows;
pub use compact::{Compacted, compact};
pub use sink::{AuditRow, AuditSink};

/// A failure to write the audit log; names the file.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {source}")]
    Parquet { path: PathBuf, source: parquet::errors::ParquetError },
    #[error("{table}: {source}")]
    Arrow { table: &'static str, source: arrow_schema::ArrowError },
}

/// Writes committed batches of audit rows under one directory.
#[derive(Debug)]
pub struct AuditLog {
    dir: PathBuf,
    /// What the committed files hold ([`manifest`]), kept as commits go.
    manifest: std::sync::Mutex<Manifest>,
}

impl AuditLog {
    /// An audit log rooted at `dir` (created if missing).
    pub fn open(dir: &Path) -> Result<AuditLog, AuditError> {
        std::fs::create_dir_all(dir).map_err(|source| AuditError::Io { path: dir.to_owned(), source })?;
        Ok(AuditLog { dir: dir.to_owned(), manifest: std::sync::Mutex::new(Manifest::read(dir)) })
    }

    /// Records committed files in the manifest, and writes it.
    fn record(&self, table: AuditTable, files: &[PathBuf], closed_before: u64) -> Result<(), AuditError> {
        let mut manifest = self.manifest.lock().unwrap_or_else(|p| p.into_inner());
        let record = manifest.tables.entry(table.name().to_owned()).or_default();
        files.iter().for_each(|file| record.add(file, closed_before));
        manifest.write(&self.dir)
    }

    /// Every detection of the model, with its model version (and shadow flag).
    pub fn write_detections(&self, rows: &[Detection]) -> Result<Vec<PathBuf>, AuditError> {
        self.write(AuditTable::Detections, rows, |d| d.capture_ms, columns::detections)
    }

    /// Every revision, with its severity components and model version.
    pub fn write_work_orders(&self, rows: &[WorkOrder]) -> Result<Vec<PathBuf>, AuditError> {
        self.write(AuditTable::WorkOrders, rows, |w| w.revised_at_ms, columns::work_orders)
    }

    pub fn write_assignments(&self, rows: &[Assignment]) -> Result<Vec<PathBuf>, AuditError> {
        self.write(AuditTable::Assignments, rows, |a| a.assigned_at_ms, columns::assignments)
    }

    /// CMMS status events as received.
    pub fn write_wo_events(&self, rows: &[WoEvent]) -> Result<Vec<PathBuf>, AuditError> {
        self.write(AuditTable::WoEvents, rows, |e| e.at_ms, columns::wo_events)
    }

    /// Alerts as sent to supervisors.
    pub fn write_alerts(&self, rows: &[Alert]) -> Result<Vec<PathBuf>, AuditError> {
        self.write(AuditTable::Alerts, rows, |a| a.at_ms, columns::alerts)
    }

    fn write<T>(
        &self,
        table: AuditTable,
        rows: &[T],
        event_time: impl Fn(&T) -> EpochMillis,
        columns: impl Fn(&[&T]) -> Vec<ArrayRef>,
    ) -> Result<Vec<PathBuf>, AuditError> {
        self.write_closing(table, rows, event_time, columns, None, false)
    }

    /// [`AuditLog::write`], each file recording the dataflow time it closes.
    fn write_closing<T>(
        &self,
        table: AuditTable,
        rows: &[T],
        event_time: impl Fn(&T) -> EpochMillis,
        columns: impl Fn(&[&T]) -> Vec<ArrayRef>,
        closed_before: Option<u64>,
        recovered: bool,
    ) -> Result<Vec<PathBuf>, AuditError> {
        let mut by_date: BTreeMap<String, Vec<&T>> = BTreeMap::new();
        for row in rows {
            by_date.entry(utc_date(event_time(row))).or_default().push(row);
        }
        // Every file is written aside first, then all are renamed into place: a write
        // that fails (disk full, read-only) leaves no file behind, so the caller can keep
        // the rows and write them again later without writing any twice.
        let mut aside = Vec::new();
        for (date, rows) in by_date {
            let written = RecordBatch::try_new(table.schema(), columns(&rows))
                .map_err(|source| AuditError::Arrow { table: table.name(), source })
                .and_then(|batch| self.write_aside(table, &date, &batch, closed_before, recovered));
            match written {
                Ok(file) => aside.push(file),
                Err(error) => {
                    aside.iter().for_each(|(file, _)| drop(std::fs::remove_file(file)));
                    return Err(error);
                }
            }
        }
        aside
            .into_iter()
            .map(|(file, path)| {
                std::fs::rename(&file, &path).map(|()| path.clone()).map_err(|source| AuditError::Io { path, source })
            })
            .collect()
    }

    /// Writes the batch to a hidden file beside its place; returns (that file, its place).
    fn write_aside(
        &self,
        table: AuditTable,
        date: &str,
        batch: &RecordBatch,
        closed_before: Option<u64>,
        recovered: bool,
    ) -> Result<(PathBuf, PathBuf), AuditError> {
        let dir = self.dir.join(table.name()).join(format!("date={date}"));
        std::fs::create_dir_all(&dir).map_err(|source| AuditError::Io { path: dir.clone(), source })?;
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| AuditError::Io { path, source }
        };
        // The next number after the highest there: the files of a partition are numbered
        // one after another (the manifest relies on it).
        let highest = (std::fs::read_dir(&dir).map_err(io(&dir))?.flatten())
            .filter_map(|f| manifest::file_number(&f.file_name().to_string_lossy()))
            .max();
        let mut sequence = highest.map_or(0, |n| n + 1);
        let (aside, path) = loop {
            let name = format!("part-{sequence:08}{}.parquet", if recovered { "-recovered" } else { "" });
            let path = dir.join(&name);
            if !path.exists() && !dir.join(format!("part-{sequence:08}.parquet")).exists() {
                break (dir.join(format!(".{name}.tmp")), path);
            }
            sequence += 1;
        };
        let file = File::create(&aside).map_err(io(&aside))?;
        let mut metadata: Vec<KeyValue> =
            closed_before.map(|t| KeyValue::new(CLOSED_BEFORE.to_owned(), t.to_string())).into_iter().collect();
        if recovered {
            metadata.push(KeyValue::new(RECOVERED.to_owned(), "true".to_owned()));
        }
        let metadata = (!metadata.is_empty()).then_some(metadata);
        let properties = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::default()))
            .set_key_value_metadata(metadata)
            .build();
        let parquet = |source| AuditError::Parquet { path: aside.clone(), source };
        let mut writer = ArrowWriter::try_new(file, Arc::clone(&batch.schema()), Some(properties)).map_err(parquet)?;
        if let Err(error) = writer.write(batch) {
            drop(std::fs::remove_file(&aside));
            return Err(parquet(error));
        }
        let written = writer.into_inner().map_err(parquet).and_then(|file| file.sync_all().map_err(io(&aside)));
        if let Err(error) = written {
            drop(std::fs::remove_file(&aside));
            return Err(error);
        }
        Ok((aside, path))
    }
}

/// Parquet metadata key: the dataflow time before which a file holds all its table's rows.
const CLOSED_BEFORE: &str = "defectflow.closed_before";
/// Parquet metadata key of a file whose rows a start recovered from the write-ahead log.
const RECOVERED: &str = "defectflow.recovered";

impl AuditLog {
    /// The committed files of a table (`<table>/<partition>/*.parquet`), in the
    /// partitions named `from` or later (`""`: all).
    fn committed_files(&self, table: AuditTable, from: &str) -> Vec<PathBuf> {
        let Ok(partitions) = std::fs::read_dir(self.dir.join(table.name())) else { return Vec::new() };
        let partitions = partitions.flatten().filter(|p| p.file_name().to_string_lossy().as_ref() >= from);
        let files = partitions.filter_map(|p| std::fs::read_dir(p.path()).ok()).flat_map(|files| files.flatten());
        files.map(|file| file.path()).filter(|path| path.extension().is_some_and(|e| e == "parquet")).collect()
    }

    /// The latest `closed_before` among the table's committed files (0: none): the
    /// manifest's, and the footers of the files it does not cover. Files are numbered
    /// one after another in each partition, so those after the covered number are found
    /// by name, without listing a partition the manifest knows; a partition it does
    /// not know is listed. What is found is added to the manifest (in memory).
    fn committed_before(&self, table: AuditTable) -> Result<u64, AuditError> {
        let mut manifest = self.manifest.lock().unwrap_or_else(|p| p.into_inner());
        let record = manifest.tables.entry(table.name().to_owned()).or_default();
        let Ok(partitions) = std::fs::read_dir(self.dir.join(table.name())) else { return Ok(record.closed_before) };
        let mut uncovered = Vec::new();
        for partition in partitions.flatten().map(|p| p.path()) {
            let name = partition.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            if name.starts_with('.') {
                continue;
            }
            match record.partitions.get(&name) {
                Some(&covered) => uncovered.extend(numbered_after(&partition, covered)),
                None => uncovered.extend(parquet_files(&partition)),
            }
        }
        for path in uncovered {
            let open = File::open(&path).map_err(|source| AuditError::Io { path: path.clone(), source })?;
            let reader =
                SerializedFileReader::new(open).map_err(|source| AuditError::Parquet { path: path.clone(), source })?;
            let closed = reader.metadata().file_metadata().key_value_metadata().and_then(|kv| {
                kv.iter().find(|k| k.key == CLOSED_BEFORE).and_then(|k| k.value.as_deref()?.parse::<u64>().ok())
            });
            record.add(&path, closed.unwrap_or(0));
        }
        Ok(record.closed_before)
    }

    /// Writes the manifest as it stands (after a start has learnt what it lacked).
    fn write_manifest(&self) -> Result<(), AuditError> {
        self.manifest.lock().unwrap_or_else(|p| p.into_inner()).write(&self.dir)
    }
}

/// The committed files of a partition.
fn parquet_files(partition: &Path) -> Vec<PathBuf> {
    let files = std::fs::read_dir(partition).into_iter().flatten().flatten().map(|f| f.path());
    files.filter(|p| p.extension().is_some_and(|e| e == "parquet")).filter(|p| manifest::is_part(p)).collect()
}

/// The files of a partition numbered after `covered`, found by name.
fn numbered_after(partition: &Path, covered: u64) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for number in covered + 1.. {
        let names = [format!("part-{number:08}.parquet"), format!("part-{number:08}-recovered.parquet")];
        let here: Vec<PathBuf> = names.iter().map(|n| partition.join(n)).filter(|p| p.exists()).collect();
        if here.is_empty() {
            break;
        }
        found.extend(here);
    }
    found
}

impl AuditLog {
    /// The latest row (by last sighting) of each of `track_ids` in the tracks table,
    /// from the date partitions of `since_ms` on: what a restart carries over to the
    /// tracks it takes up.
    pub fn latest_track_measures(
        &self,
        track_ids: &std::collections::BTreeSet<String>,
        since_ms: EpochMillis,
    ) -> Result<BTreeMap<String, TrackMeasures>, AuditError> {
        use arrow_array::Array;
        use arrow_array::cast::AsArray;
        use arrow_array::types::{Float32Type, Float64Type, Int64Type, TimestampMillisecondType, UInt64Type};
        use parquet::arrow::ProjectionMask;
        use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

        let mut latest: BTreeMap<String, TrackMeasures> = BTreeMap::new();
        if track_ids.is_empty() {
            return Ok(latest);
        }
        let first_partition = format!("date={}", utc_date(since_ms));
        for path in self.committed_files(AuditTable::Tracks, &first_partition) {
            let parquet = |source| AuditError::Parquet { path: path.clone(), source };
            let open = File::open(&path).map_err(|source| AuditError::Io { path: path.clone(), source })?;
            let builder = ParquetRecordBatchReaderBuilder::try_new(open).map_err(parquet)?;
            let columns = ["track_id", "state", "last_seen", "hits", "area_px", "size_mm", "growth_px_per_min"];
            let mask = ProjectionMask::columns(builder.parquet_schema(), columns);
            for batch in builder.with_projection(mask).build().map_err(parquet)? {
                let batch = batch.map_err(|source| AuditError::Arrow { table: "tracks", source })?;
                let column = |name: &str| {
                    batch.column_by_name(name).ok_or_else(|| AuditError::Arrow {
                        table: "tracks",
                        source: arrow_schema::ArrowError::SchemaError(format!("{}: no column {name}", path.display())),
                    })
                };
                let ids = column("track_id")?.as_string::<i32>();
                let state = column("state")?.as_string::<i32>();
                let last_seen = column("last_seen")?.as_primitive::<TimestampMillisecondType>();
                // Signed now; unsigned in audit logs written by earlier versions.
                let hits_column = column("hits")?;
                let hits: Vec<u64> = match hits_column.as_primitive_opt::<UInt64Type>() {
                    Some(unsigned) => unsigned.values().to_vec(),
                    None => {
                        hits_column.as_primitive::<Int64Type>().values().iter().map(|v| (*v).max(0) as u64).collect()
                    }
                };
                let area = column("area_px")?.as_primitive::<Float32Type>();
                let size = column("size_mm")?.as_primitive::<Float64Type>();
                let growth = column("growth_px_per_min")?.as_primitive::<Float64Type>();
                for (row, &hits) in hits.iter().enumerate() {
                    let id = ids.value(row);
                    if !track_ids.contains(id) {
                        continue;
                    }
                    let measures = TrackMeasures {
                        last_seen_ms: last_seen.value(row).max(0) as u64,
                        hits,
                        area_px: area.value(row),
                        size_mm: size.is_valid(row).then(|| size.value(row)),
                        growth_px_per_min: growth.value(row),
                        resolved: state.value(row) == "resolved",
                    };
                    // The later sighting wins; of two at once, the one with more hits.
                    match latest.get(id) {
                        Some(known) if (known.last_seen_ms, known.hits) >= (measures.last_seen_ms, measures.hits) => {}
                        _ => {
                            latest.insert(id.to_owned(), measures);
                        }
                    }
                }
            }
        }
        Ok(latest)
    }
}

/// A part's stock after the changes of one dataflow time: a row of the inventory table.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StockRow {
    pub part_id: String,
    pub at_ms: EpochMillis,
    pub on_hand: i64,
    pub reserved: i64,
    pub available: i64,
}

/// Rows of one table waiting for a commit, and the time before which earlier runs
/// committed this table's rows.
#[derive(Debug)]
struct Buffer<T> {
    rows: Vec<T>,
    before: u64,
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
}

/// Every table written as the run goes; see the module documentation.
#[derive(Debug)]
pub struct AuditStream {
    log: AuditLog,
    detections: Buffer<Detection>,
    tracks: Buffer<DefectTrack>,
    work_orders: Buffer<WorkOrder>,
    assignments: Buffer<Assignment>,
    inventory: Buffer<StockRow>,
    wo_events: Buffer<WoEvent>,
    alerts: Buffer<Alert>,
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
        );
        // What the start learnt beyond the manifest; a disk that refuses it only means
        // the same footers are read at the next start.
        if let Err(error) = log.write_manifest() {
            tracing::warn!(%error, "the audit log's manifest could not be written");
        }
        let (detections, tracks, work_orders, assignments, inventory, wo_events, alerts) = buffers;
        Ok(AuditStream {
            detections,
            tracks,
            work_orders,
            assignments,
            inventory,
            wo_events,
            alerts,
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
    let files = log.write_closing(table, &buffer.rows, event_time, columns, Some(closed_before), recovered)?;
    // The files are in place: a manifest that cannot be written only means their
    // footers are read at the next start.
    if let Err(error) = log.record(table, &files, closed_before) {
        tracing::warn!(%error, "the audit log's manifest could not be written");
    }
    buffer.rows.clear();
    buffer.before = closed_before;
    Ok(())
}

#[cfg(test)]
mod tests {
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
