//! `defectflow audit compact --before DATE`: months of history in few files. Each date
//! partition before `DATE` that holds more than one file (a commit every few seconds
//! leaves thousands a day), or a file of an older layout (unsigned integer columns), is
//! rewritten as one file in the current layout.
//!
//! Readers never see a partial state: the new partition is built beside the log
//! (`audit/.compacting/<table>/date=…`, outside every table's glob) and swapped with the
//! old one in a single `renameat2(RENAME_EXCHANGE)`; a reader lists either every old
//! file or the new one. A reader that listed the old files and opens one after the swap
//! gets an error naming it, and reads again. Files marked as recovered keep their names
//! and their mark. The new file records the latest `closed_before` of those it
//! replaces (which the manifest already holds) and is numbered above them.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::RecordBatch;
use defectflow_schemas::audit::AuditTable;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;

use super::manifest::file_number;
use super::{AuditError, CLOSED_BEFORE};

/// What a compaction did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Compacted {
    /// Partitions rewritten.
    pub partitions: usize,
    /// Files they held, and hold now.
    pub files_before: usize,
    pub files_after: usize,
    pub rows: usize,
}

/// Compacts every table's partitions of dates before `before` (`YYYY-MM-DD`) under the
/// audit folder `dir`. Run it on dates no run writes any more (a replay of old footage
/// writes the dates of its frames).
pub fn compact(dir: &Path, before: &str) -> Result<Compacted, AuditError> {
    let mut done = Compacted::default();
    for table in AuditTable::ALL {
        let Ok(partitions) = std::fs::read_dir(dir.join(table.name())) else { continue };
        let mut partitions: Vec<PathBuf> = partitions.flatten().map(|p| p.path()).collect();
        partitions.sort();
        for partition in partitions {
            let name = partition.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let Some(date) = name.strip_prefix("date=") else { continue };
            if date < before {
                compact_partition(dir, table, &partition, &mut done)?;
            }
        }
    }
    // Only the emptied staging folders are left there.
    let staging = dir.join(".compacting");
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(io(&staging))?;
    }
    Ok(done)
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> AuditError {
    let path = path.to_owned();
    move |source| AuditError::Io { path, source }
}

fn parquet(path: &Path) -> impl FnOnce(parquet::errors::ParquetError) -> AuditError {
    let path = path.to_owned();
    move |source| AuditError::Parquet { path, source }
}

/// A partition's files: (those to merge, those marked as recovered).
fn files_of(partition: &Path) -> Result<(Vec<PathBuf>, Vec<PathBuf>), AuditError> {
    let mut files: Vec<PathBuf> = (std::fs::read_dir(partition).map_err(io(partition))?.flatten())
        .map(|f| f.path())
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .filter(|p| !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')))
        .collect();
    files.sort();
    Ok(files.into_iter().partition(|p| !p.to_string_lossy().ends_with("-recovered.parquet")))
}

/// A file's rows in the table's current layout, and the time it closes.
fn read(table: AuditTable, path: &Path) -> Result<(Vec<RecordBatch>, u64, bool), AuditError> {
    let builder =
        ParquetRecordBatchReaderBuilder::try_new(File::open(path).map_err(io(path))?).map_err(parquet(path))?;
    let closed_before = (builder.metadata().file_metadata().key_value_metadata().into_iter().flatten())
        .find(|kv| kv.key == CLOSED_BEFORE)
        .and_then(|kv| kv.value.as_deref()?.parse::<u64>().ok())
        .unwrap_or(0);
    let schema = table.schema();
    let current = builder.schema().fields() == schema.fields();
    let arrow = |source| AuditError::Arrow { table: table.name(), source };
    let mut batches = Vec::new();
    for batch in builder.build().map_err(parquet(path))? {
        let batch = batch.map_err(arrow)?;
        let columns = (schema.fields().iter())
            .map(|field| {
                let column = batch.column_by_name(field.name()).ok_or_else(|| {
                    arrow(arrow_schema::ArrowError::SchemaError(format!(
                        "{}: no column {}",
                        path.display(),
                        field.name()
                    )))
                })?;
                arrow_cast::cast(column, field.data_type()).map_err(arrow)
            })
            .collect::<Result<Vec<_>, _>>()?;
        batches.push(RecordBatch::try_new(Arc::clone(&schema), columns).map_err(arrow)?);
    }
    Ok((batches, closed_before, current))
}

fn compact_partition(dir: &Path, table: AuditTable, partition: &Path, done: &mut Compacted) -> Result<(), AuditError> {
    let (merge, recovered) = files_of(partition)?;
    let mut batches = Vec::new();
    let (mut closed_before, mut all_current) = (None::<u64>, true);
    for path in &merge {
        let (rows, closed, current) = read(table, path)?;
        batches.extend(rows);
        closed_before = Some(closed_before.unwrap_or(0).max(closed));
        all_current &= current;
    }
    if merge.len() < 2 && all_current {
        return Ok(());
    }
    let name = partition.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let staging = dir.join(".compacting").join(table.name()).join(&name);
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(io(&staging))?;
    }
    std::fs::create_dir_all(&staging).map_err(io(&staging))?;
    let highest = (merge.iter().chain(&recovered))
        .filter_map(|p| file_number(&p.file_name()?.to_string_lossy()))
        .max()
        .unwrap_or(0);
    let merged = staging.join(format!("part-{:08}.parquet", highest + 1));
    let metadata = closed_before.map(|t| vec![KeyValue::new(CLOSED_BEFORE.to_owned(), t.to_string())]);
    let properties = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .set_key_value_metadata(metadata)
        .build();
    let file = File::create(&merged).map_err(io(&merged))?;
    let mut writer = ArrowWriter::try_new(file, table.schema(), Some(properties)).map_err(parquet(&merged))?;
    let mut rows = 0;
    for batch in &batches {
        rows += batch.num_rows();
        writer.write(batch).map_err(parquet(&merged))?;
    }
    writer.into_inner().map_err(parquet(&merged))?.sync_all().map_err(io(&merged))?;
    for path in &recovered {
        let link = staging.join(path.file_name().unwrap_or_default());
        std::fs::hard_link(path, &link).map_err(io(&link))?;
    }
    File::open(&staging).and_then(|d| d.sync_all()).map_err(io(&staging))?;
    swap(&staging, partition)?;
    // `staging` now holds the old files.
    std::fs::remove_dir_all(&staging).map_err(io(&staging))?;
    done.partitions += 1;
    done.files_before += merge.len() + recovered.len();
    done.files_after += 1 + recovered.len();
    done.rows += rows;
    Ok(())
}

/// Exchanges two directories in one step.
fn swap(a: &Path, b: &Path) -> Result<(), AuditError> {
    use nix::fcntl::{AT_FDCWD, RenameFlags, renameat2};
    renameat2(AT_FDCWD, a, AT_FDCWD, b, RenameFlags::RENAME_EXCHANGE)
        .map_err(|errno| AuditError::Io { path: b.to_owned(), source: std::io::Error::from(errno) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sinks::audit::{AuditRows, AuditStream};
    use defectflow_schemas::{BoundingBox, DefectClass, Detection};

    const DAY: u64 = 86_400_000;
    /// 2026-12-01T00:00:00Z.
    const T0: u64 = 1_796_083_200_000;

    fn detection(capture_ms: u64) -> Detection {
        Detection {
            camera_id: "cam-1".into(),
            frame_index: capture_ms % 1000,
            capture_ms,
            class: DefectClass::Crack,
            confidence: 0.9,
            bbox: BoundingBox { x: 1.0, y: 2.0, width: 3.0, height: 4.0 },
            area_px: 12.0,
            model_version: "m".into(),
            shadow: false,
        }
    }

    fn files(partition: &Path) -> Vec<String> {
        let mut names: Vec<String> = (std::fs::read_dir(partition).expect("partition").flatten())
            .map(|f| f.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    fn rows_and_type(path: &Path) -> (usize, arrow_schema::DataType) {
        let builder = ParquetRecordBatchReaderBuilder::try_new(File::open(path).expect("file")).expect("parquet");
        let kind = builder.schema().field_with_name("frame_index").expect("frame_index").data_type().clone();
        let rows = builder.build().expect("reader").map(|b| b.expect("batch").num_rows()).sum();
        (rows, kind)
    }

    /// Three commits and a file of the older, unsigned layout in one day become one file
    /// of the current layout with every row; a recovered file keeps its name; the day
    /// not before the date is left alone; a start still knows what is committed.
    #[test]
    fn a_day_of_small_files_becomes_one_file_with_every_row() {
        let dir = tempfile::tempdir().expect("tempdir");
        let hour = std::time::Duration::from_secs(3600);
        let mut stream = AuditStream::open(dir.path(), 1, hour).expect("open");
        for (closed_before, at) in [(10, T0 + 1), (20, T0 + 2), (30, T0 + 3), (40, T0 + DAY + 1)] {
            let rows = AuditRows { detections: vec![detection(at)], ..AuditRows::default() };
            stream.append(closed_before, &[], rows).expect("committed");
        }
        drop(stream);
        let day = dir.path().join("detections/date=2026-12-01");
        let next = dir.path().join("detections/date=2026-12-02");
        // A file as an earlier version wrote it: frame_index unsigned.
        let first = day.join("part-00000000.parquet");
        let (batch, _) = {
            let builder = ParquetRecordBatchReaderBuilder::try_new(File::open(&first).expect("file")).expect("parquet");
            (builder.build().expect("reader").next().expect("a batch").expect("batch"), ())
        };
        let mut fields: Vec<arrow_schema::Field> = batch.schema().fields().iter().map(|f| (**f).clone()).collect();
        let index = batch.schema().index_of("frame_index").expect("column");
        fields[index] = arrow_schema::Field::new("frame_index", arrow_schema::DataType::UInt64, false);
        let mut columns = batch.columns().to_vec();
        columns[index] = arrow_cast::cast(&columns[index], &arrow_schema::DataType::UInt64).expect("cast");
        let old = RecordBatch::try_new(Arc::new(arrow_schema::Schema::new(fields)), columns).expect("batch");
        let old_file = day.join("part-00000003.parquet");
        let mut writer =
            ArrowWriter::try_new(File::create(&old_file).expect("file"), old.schema(), None).expect("writer");
        writer.write(&old).expect("written");
        writer.close().expect("closed");
        std::fs::copy(&first, day.join("part-00000004-recovered.parquet")).expect("a recovered file");
        let untouched = files(&next);

        let done = compact(dir.path(), "2026-12-02").expect("compacted");
        assert_eq!(done, Compacted { partitions: 1, files_before: 5, files_after: 2, rows: 4 });
        assert_eq!(files(&day), ["part-00000004-recovered.parquet", "part-00000005.parquet"]);
        assert_eq!(rows_and_type(&day.join("part-00000005.parquet")), (4, arrow_schema::DataType::Int64));
        assert_eq!(files(&next), untouched, "a day not before --before");
        assert!(!dir.path().join(".compacting").exists(), "the old files are gone");
        let reopened = AuditStream::open(dir.path(), 1, hour).expect("reopen");
        assert_eq!(reopened.detections.before, 40);
        assert_eq!(compact(dir.path(), "2026-12-02").expect("again"), Compacted::default(), "nothing left to do");
    }
}
