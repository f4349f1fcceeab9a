//! The Parquet audit log: `audit/<table>/date=YYYY-MM-DD/part-NNNNNNNN.parquet`,
//! zstd-compressed, one file per table and day per commit. A file is written aside as
//! `.part-NNNNNNNN.parquet.tmp` (hidden from `*.parquet` globs), synced, and renamed into
//! place, so a reader never sees a partial file. The `date` partition comes from each
//! row's event time (UTC) and is read back by `hive_partitioning=True`.

mod columns;

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{ArrayRef, RecordBatch};
use defectflow_schemas::audit::AuditTable;
use defectflow_schemas::{Assignment, Detection, EpochMillis, WoEvent, WorkOrder};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

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
}

impl AuditLog {
    /// An audit log rooted at `dir` (created if missing).
    pub fn open(dir: &Path) -> Result<AuditLog, AuditError> {
        std::fs::create_dir_all(dir).map_err(|source| AuditError::Io { path: dir.to_owned(), source })?;
        Ok(AuditLog { dir: dir.to_owned() })
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

    fn write<T>(
        &self,
        table: AuditTable,
        rows: &[T],
        event_time: impl Fn(&T) -> EpochMillis,
        columns: impl Fn(&[&T]) -> Vec<ArrayRef>,
    ) -> Result<Vec<PathBuf>, AuditError> {
        let mut by_date: BTreeMap<String, Vec<&T>> = BTreeMap::new();
        for row in rows {
            by_date.entry(utc_date(event_time(row))).or_default().push(row);
        }
        let mut written = Vec::new();
        for (date, rows) in by_date {
            let batch = RecordBatch::try_new(table.schema(), columns(&rows))
                .map_err(|source| AuditError::Arrow { table: table.name(), source })?;
            written.push(self.commit(table, &date, &batch)?);
        }
        Ok(written)
    }

    /// Writes the batch aside and renames it into place.
    fn commit(&self, table: AuditTable, date: &str, batch: &RecordBatch) -> Result<PathBuf, AuditError> {
        let dir = self.dir.join(table.name()).join(format!("date={date}"));
        std::fs::create_dir_all(&dir).map_err(|source| AuditError::Io { path: dir.clone(), source })?;
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| AuditError::Io { path, source }
        };
        let existing = std::fs::read_dir(&dir).map_err(io(&dir))?.count();
        let mut sequence = existing;
        let (aside, path) = loop {
            let name = format!("part-{sequence:08}.parquet");
            let path = dir.join(&name);
            if !path.exists() {
                break (dir.join(format!(".{name}.tmp")), path);
            }
            sequence += 1;
        };
        let file = File::create(&aside).map_err(io(&aside))?;
        let properties = WriterProperties::builder().set_compression(Compression::ZSTD(ZstdLevel::default())).build();
        let parquet = |source| AuditError::Parquet { path: aside.clone(), source };
        let mut writer = ArrowWriter::try_new(file, Arc::clone(&batch.schema()), Some(properties)).map_err(parquet)?;
        writer.write(batch).map_err(parquet)?;
        let file = writer.into_inner().map_err(parquet)?;
        file.sync_all().map_err(io(&aside))?;
        std::fs::rename(&aside, &path).map_err(io(&path))?;
        Ok(path)
    }
}

/// `YYYY-MM-DD` of a UTC instant (days-from-civil inverse, proleptic Gregorian).
pub fn utc_date(at_ms: EpochMillis) -> String {
    let days = (at_ms / 86_400_000) as i64 + 719_468;
    let era = days.div_euclid(146_097);
    let day_of_era = days.rem_euclid(146_097);
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_of_known_instants() {
        assert_eq!(utc_date(0), "1970-01-01");
        assert_eq!(utc_date(1_767_600_000_000), "2026-01-05");
        assert_eq!(utc_date(951_782_400_000), "2000-02-29");
        assert_eq!(utc_date(1_767_225_599_999), "2025-12-31");
    }
}
