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
mod locks;
mod manifest;
mod sink;
mod stream;

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{ArrayRef, RecordBatch};
use defectflow_operators::derive::TrackMeasures;
use defectflow_schemas::audit::AuditTable;
use defectflow_schemas::{
    Alert, Assignment, Detection, EpochMillis, FailureRecord, SuppressedTrack, WoEvent, WorkOrder,
};
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
pub use stream::{AuditRows, AuditStream};

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

    /// The failures completed repairs closed.
    pub fn write_failures(&self, rows: &[FailureRecord]) -> Result<Vec<PathBuf>, AuditError> {
        self.write(AuditTable::Failures, rows, |f| f.repaired_at_ms.unwrap_or(f.failed_at_ms), columns::failures)
    }

    /// Sightings a false positive held back.
    pub fn write_suppressed(&self, rows: &[SuppressedTrack]) -> Result<Vec<PathBuf>, AuditError> {
        self.write(AuditTable::Suppressed, rows, |s| s.at_ms, columns::suppressed)
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
        // The partitions are held until the manifest records the files: a compaction
        // of one of them waits, and does not throw a file away with the old partition.
        let _held = (by_date.keys())
            .map(|date| locks::commit(&self.dir, table, &format!("date={date}")))
            .collect::<Result<Vec<_>, _>>()?;
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
        super::failpoint("audit-after-aside");
        let renamed: Result<Vec<PathBuf>, AuditError> = aside
            .into_iter()
            .map(|(file, path)| {
                std::fs::rename(&file, &path).map(|()| path.clone()).map_err(|source| AuditError::Io { path, source })
            })
            .collect();
        super::failpoint("audit-after-rename");
        let files = renamed?;
        // The files are in place: a manifest that cannot be written only means their
        // footers are read at the next start.
        if let Some(closed_before) = closed_before
            && let Err(error) = self.record(table, &files, closed_before)
        {
            tracing::warn!(%error, "the audit log's manifest could not be written");
        }
        Ok(files)
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
        // The next number after the highest there, or the manifest has seen (a file
        // removed by hand): the files of a partition are numbered one after another, and
        // a start looks for those after the manifest's by name.
        let partition = format!("date={date}");
        let covered = (self.manifest.lock().unwrap_or_else(|p| p.into_inner()).tables.get(table.name()))
            .and_then(|record| record.partitions.get(&partition).copied());
        let highest = (std::fs::read_dir(&dir).map_err(io(&dir))?.flatten())
            .filter_map(|f| manifest::file_number(&f.file_name().to_string_lossy()))
            .chain(covered)
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
