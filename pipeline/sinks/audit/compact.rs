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
//!
//! It may run beside a run writing the same dates ([`locks`]): the files are merged
//! without holding the partition, then, holding it (a commit into it waits, or the
//! compaction waits for the commit), the partition is listed again, what was committed
//! since is kept beside the merged file, and the swap is made. Files the manifest does
//! not cover yet (a commit whose process died before recording it) keep their names, so
//! that a start still finds them by number.

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

use super::manifest::{Manifest, file_number};
use super::{AuditError, CLOSED_BEFORE, locks};

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
/// audit folder `dir`; refused while another compaction runs on it.
pub fn compact(dir: &Path, before: &str) -> Result<Compacted, AuditError> {
    let _only = locks::only_compaction(dir)?;
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

/// A partition's committed files (hidden ones, such as a commit's file written aside,
/// are not), sorted.
fn parts(partition: &Path) -> Result<Vec<PathBuf>, AuditError> {
    let mut files: Vec<PathBuf> = (std::fs::read_dir(partition).map_err(io(partition))?.flatten())
        .map(|f| f.path())
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .filter(|p| !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')))
        .collect();
    files.sort();
    Ok(files)
}

/// The files of a partition to merge: all but those marked as recovered and those
/// numbered after `covered`, the manifest's record of the partition.
fn to_merge(partition: &Path, covered: Option<u64>) -> Result<Vec<PathBuf>, AuditError> {
    let merged = |path: &PathBuf| {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let uncovered = covered.is_some_and(|covered| file_number(&name).is_some_and(|n| n > covered));
        !name.ends_with("-recovered.parquet") && !uncovered
    };
    Ok(parts(partition)?.into_iter().filter(merged).collect())
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
                let Some(column) = batch.column_by_name(field.name()) else {
                    // A column added since the file was written: null in its rows.
                    if field.is_nullable() {
                        return Ok(arrow_array::new_null_array(field.data_type(), batch.num_rows()));
                    }
                    return Err(arrow(arrow_schema::ArrowError::SchemaError(format!(
                        "{}: no column {}",
                        path.display(),
                        field.name()
                    ))));
                };
                arrow_cast::cast(column, field.data_type()).map_err(arrow)
            })
            .collect::<Result<Vec<_>, _>>()?;
        batches.push(RecordBatch::try_new(Arc::clone(&schema), columns).map_err(arrow)?);
    }
    Ok((batches, closed_before, current))
}

/// Merges a partition's files into one beside the log, without holding the partition:
/// commits into it go on meanwhile. Then, holding it, keeps what was committed since
/// (numbered after the merged file's first number) beside the merged file, numbers the
/// merged file after everything there, and swaps the new partition in.
fn compact_partition(dir: &Path, table: AuditTable, partition: &Path, done: &mut Compacted) -> Result<(), AuditError> {
    let name = partition.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    // A partition the manifest does not know is listed whole at a start, whatever its
    // numbers; files it does not cover yet (a commit recording itself, or one whose
    // process died before it did) keep their numbers for a start to find.
    let covered =
        (Manifest::read(dir).tables.get(table.name())).and_then(|record| record.partitions.get(&name).copied());
    let merge = to_merge(partition, covered)?;
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
    let staging = dir.join(".compacting").join(table.name()).join(&name);
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(io(&staging))?;
    }
    std::fs::create_dir_all(&staging).map_err(io(&staging))?;
    let merged = staging.join(".merged.parquet");
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

    let held = locks::compaction(dir, table, &name)?;
    let now = parts(partition)?;
    if let Some(gone) = merge.iter().find(|path| !now.contains(path)) {
        // Removed meanwhile (by hand): the merged file would bring its rows back.
        drop(held);
        std::fs::remove_dir_all(&staging).map_err(io(&staging))?;
        return Err(AuditError::Io {
            path: gone.clone(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "removed while its day was compacted"),
        });
    }
    let kept: Vec<&PathBuf> = now.iter().filter(|path| !merge.contains(path)).collect();
    for path in &kept {
        let link = staging.join(path.file_name().unwrap_or_default());
        std::fs::hard_link(path, &link).map_err(io(&link))?;
    }
    let highest = now.iter().filter_map(|p| file_number(&p.file_name()?.to_string_lossy())).max().unwrap_or(0);
    let numbered = staging.join(format!("part-{:08}.parquet", highest + 1));
    std::fs::rename(&merged, &numbered).map_err(io(&numbered))?;
    File::open(&staging).and_then(|d| d.sync_all()).map_err(io(&staging))?;
    swap(&staging, partition)?;
    drop(held);
    // `staging` now holds the old files.
    std::fs::remove_dir_all(&staging).map_err(io(&staging))?;
    done.partitions += 1;
    done.files_before += now.len();
    done.files_after += 1 + kept.len();
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

    /// Writes the first file of a day again in the older layout (frame_index unsigned), as
    /// an earlier version wrote it.
    fn as_older_layout(file: &Path) {
        let builder = ParquetRecordBatchReaderBuilder::try_new(File::open(file).expect("file")).expect("parquet");
        let batch = builder.build().expect("reader").next().expect("a batch").expect("batch");
        let mut fields: Vec<arrow_schema::Field> = batch.schema().fields().iter().map(|f| (**f).clone()).collect();
        let index = batch.schema().index_of("frame_index").expect("column");
        fields[index] = arrow_schema::Field::new("frame_index", arrow_schema::DataType::UInt64, false);
        let mut columns = batch.columns().to_vec();
        columns[index] = arrow_cast::cast(&columns[index], &arrow_schema::DataType::UInt64).expect("cast");
        let old = RecordBatch::try_new(Arc::new(arrow_schema::Schema::new(fields)), columns).expect("batch");
        let metadata = vec![KeyValue::new(CLOSED_BEFORE.to_owned(), "10".to_owned())];
        let properties = WriterProperties::builder().set_key_value_metadata(Some(metadata)).build();
        let mut writer =
            ArrowWriter::try_new(File::create(file).expect("file"), old.schema(), Some(properties)).expect("writer");
        writer.write(&old).expect("written");
        writer.close().expect("closed");
        assert_eq!(rows_and_type(file), (1, arrow_schema::DataType::UInt64));
    }

    fn commit_each(dir: &Path, commits: &[(u64, u64)]) {
        let mut stream = AuditStream::open(dir, 1, std::time::Duration::from_secs(3600)).expect("open");
        for &(closed_before, at) in commits {
            let rows = AuditRows { detections: vec![detection(at)], ..AuditRows::default() };
            stream.append(closed_before, &[], rows).expect("committed");
        }
    }

    fn committed_before(dir: &Path) -> u64 {
        AuditStream::open(dir, 1, std::time::Duration::from_secs(3600)).expect("reopen").detections.before
    }

    /// A file written before a table gained a column (wo_events' `reason`, nullable) is
    /// merged with null in that column; a newer file keeps its values.
    #[test]
    fn a_column_added_since_a_file_was_written_is_null_in_its_rows() {
        use arrow_array::Array;
        let dir = tempfile::tempdir().expect("tempdir");
        let mut stream = AuditStream::open(dir.path(), 1, std::time::Duration::from_secs(3600)).expect("open");
        for (closed_before, at, reason) in [(10, T0 + 1, None), (20, T0 + 2, Some("waiting_for_parts"))] {
            let event = defectflow_schemas::WoEvent {
                work_order_id: "WO-1".into(),
                event: defectflow_schemas::WoEventKind::OnHold,
                at_ms: at,
                technician_id: None,
                note: None,
                reason: reason.map(Into::into),
                actual_hours: None,
                downtime_hours: None,
            };
            let rows = AuditRows { wo_events: vec![(at, event)], ..AuditRows::default() };
            stream.append(closed_before, &[], rows).expect("committed");
        }
        drop(stream);
        let day = dir.path().join("wo_events/date=2026-12-01");
        let first = day.join(&files(&day)[0]);
        // The first file as written before the column existed.
        let builder = ParquetRecordBatchReaderBuilder::try_new(File::open(&first).expect("file")).expect("parquet");
        let batch = builder.build().expect("reader").next().expect("a batch").expect("batch");
        let index = batch.schema().index_of("reason").expect("column");
        let mut old = batch.clone();
        old.remove_column(index);
        let metadata = vec![KeyValue::new(CLOSED_BEFORE.to_owned(), "10".to_owned())];
        let properties = WriterProperties::builder().set_key_value_metadata(Some(metadata)).build();
        let mut writer =
            ArrowWriter::try_new(File::create(&first).expect("file"), old.schema(), Some(properties)).expect("writer");
        writer.write(&old).expect("written");
        writer.close().expect("closed");

        compact(dir.path(), "2026-12-02").expect("compacted");
        let [merged] = files(&day).try_into().expect("one file");
        let builder =
            ParquetRecordBatchReaderBuilder::try_new(File::open(day.join(merged)).expect("file")).expect("parquet");
        let batches: Vec<RecordBatch> = builder.build().expect("reader").map(|b| b.expect("batch")).collect();
        let reasons: Vec<Option<String>> = batches
            .iter()
            .flat_map(|b| {
                let column = b
                    .column_by_name("reason")
                    .expect("the column")
                    .as_any()
                    .downcast_ref::<arrow_array::StringArray>()
                    .expect("text")
                    .clone();
                (0..column.len())
                    .map(move |i| (!column.is_null(i)).then(|| column.value(i).to_owned()))
                    .collect::<Vec<_>>()
            })
            .collect();
        assert_eq!(reasons, vec![None, Some("waiting_for_parts".to_owned())]);
    }

    /// Three commits in one day, the first in the older, unsigned layout, become one file
    /// of the current layout with every row; a recovered file keeps its name; the day
    /// not before the date is left alone; a start still knows what is committed.
    #[test]
    fn a_day_of_small_files_becomes_one_file_with_every_row() {
        let dir = tempfile::tempdir().expect("tempdir");
        commit_each(dir.path(), &[(10, T0 + 1), (20, T0 + 2), (30, T0 + 3), (40, T0 + DAY + 1)]);
        let day = dir.path().join("detections/date=2026-12-01");
        let next = dir.path().join("detections/date=2026-12-02");
        as_older_layout(&day.join("part-00000000.parquet"));
        std::fs::copy(day.join("part-00000001.parquet"), day.join("part-00000003-recovered.parquet"))
            .expect("a recovered file");
        let untouched = files(&next);

        let done = compact(dir.path(), "2026-12-02").expect("compacted");
        assert_eq!(done, Compacted { partitions: 1, files_before: 4, files_after: 2, rows: 3 });
        assert_eq!(files(&day), ["part-00000003-recovered.parquet", "part-00000004.parquet"]);
        assert_eq!(rows_and_type(&day.join("part-00000004.parquet")), (3, arrow_schema::DataType::Int64));
        assert_eq!(files(&next), untouched, "a day not before --before");
        assert!(!dir.path().join(".compacting").exists(), "the old files are gone");
        assert_eq!(committed_before(dir.path()), 40);
        assert_eq!(compact(dir.path(), "2026-12-02").expect("again"), Compacted::default(), "nothing left to do");
    }

    /// A commit whose process died before the manifest recorded it: its file is left
    /// as it is, so a start that looks for the files after the manifest's by number
    /// still finds it and the later ones (merged, it would leave a gap in the numbers,
    /// the start would stop there and the run would write its rows again).
    #[test]
    fn a_file_the_manifest_does_not_cover_keeps_its_number() {
        let dir = tempfile::tempdir().expect("tempdir");
        commit_each(dir.path(), &[(10, T0 + 1), (20, T0 + 2)]);
        let manifest = std::fs::read(dir.path().join(super::super::manifest::FILE_NAME)).expect("manifest");
        commit_each(dir.path(), &[(30, T0 + 3)]);
        std::fs::write(dir.path().join(super::super::manifest::FILE_NAME), manifest).expect("the manifest before");
        let day = dir.path().join("detections/date=2026-12-01");

        let done = compact(dir.path(), "2026-12-02").expect("compacted");
        assert_eq!(done, Compacted { partitions: 1, files_before: 3, files_after: 2, rows: 2 });
        assert_eq!(files(&day), ["part-00000002.parquet", "part-00000003.parquet"]);
        assert_eq!(committed_before(dir.path()), 30, "the start found the file after the manifest's");
    }

    /// A file removed by hand from the top of a partition does not free its number: the
    /// next commit is numbered after what the manifest has seen, where a start looks.
    #[test]
    fn a_commit_is_numbered_after_the_manifest_whatever_was_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        commit_each(dir.path(), &[(10, T0 + 1), (20, T0 + 2)]);
        let day = dir.path().join("detections/date=2026-12-01");
        std::fs::remove_file(day.join("part-00000001.parquet")).expect("removed by hand");
        commit_each(dir.path(), &[(30, T0 + 3)]);
        assert_eq!(files(&day), ["part-00000000.parquet", "part-00000002.parquet"]);
    }

    /// A run commits into the day being compacted, over and over: every row is in the
    /// log once at the end, and a start knows the last commit. Without the partition
    /// held, a file renamed into the old partition between the listing and the swap was
    /// thrown away with it.
    #[test]
    fn a_compaction_beside_a_run_writing_the_same_day_loses_no_row() {
        let dir = tempfile::tempdir().expect("tempdir");
        let commits = 300u64;
        let writer = {
            let dir = dir.path().to_owned();
            std::thread::spawn(move || {
                let all: Vec<(u64, u64)> = (1..=commits).map(|i| (i * 10, T0 + i)).collect();
                commit_each(&dir, &all);
            })
        };
        let mut compactions = 0;
        while !writer.is_finished() {
            compactions += compact(dir.path(), "2026-12-02").expect("compacted").partitions;
        }
        writer.join().expect("the writer");
        assert!(compactions > 0, "no compaction ran beside the commits");
        let day = dir.path().join("detections/date=2026-12-01");
        let mut rows = Vec::new();
        for name in files(&day) {
            let file = File::open(day.join(&name)).expect("file");
            let reader = ParquetRecordBatchReaderBuilder::try_new(file).expect("parquet").build().expect("reader");
            for batch in reader {
                let batch = batch.expect("batch");
                let column = batch.column_by_name("capture_time").expect("capture_time");
                let column = arrow_cast::cast(column, &arrow_schema::DataType::Int64).expect("cast");
                let values = column.as_any().downcast_ref::<arrow_array::Int64Array>().expect("int64");
                rows.extend(values.values().iter().map(|&v| v as u64));
            }
        }
        rows.sort_unstable();
        let expected: Vec<u64> = (1..=commits).map(|i| T0 + i).collect();
        assert_eq!(rows, expected, "every row once, after {compactions} compactions");
        assert_eq!(committed_before(dir.path()), commits * 10);
    }

    /// One compaction at a time: a second is refused at once, saying why.
    #[test]
    fn a_second_compaction_is_refused_while_one_runs() {
        let dir = tempfile::tempdir().expect("tempdir");
        commit_each(dir.path(), &[(10, T0 + 1), (20, T0 + 2)]);
        let running = locks::only_compaction(dir.path()).expect("the first");
        let error = compact(dir.path(), "2026-12-02").expect_err("refused").to_string();
        assert!(error.contains("another `defectflow audit compact`"), "{error}");
        drop(running);
        assert_eq!(compact(dir.path(), "2026-12-02").expect("then it runs").partitions, 1);
    }
}
