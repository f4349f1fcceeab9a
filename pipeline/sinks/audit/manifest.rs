//! `audit/.manifest.json`: what the committed files hold, so that a start does not read
//! the footer of every file of a log that grows for months. Per table it records the
//! latest dataflow time a commit closed and, per date partition, the highest file
//! number that record covers. Files are numbered one after another in a partition, so a
//! start looks only for the files numbered after that (a commit the process died in
//! before recording it), by name, and reads their footers; it lists only partitions the
//! manifest does not know. The record is written aside and renamed into place after
//! each commit, and after a start that learnt something.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::AuditError;

/// The manifest's name in the audit folder (hidden from `*` globs).
pub const FILE_NAME: &str = ".manifest.json";

/// What one table's committed files hold.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TableRecord {
    /// Every row of a dataflow time before this is committed.
    pub closed_before: u64,
    /// Partition (`date=YYYY-MM-DD`) → the highest file number covered.
    pub partitions: BTreeMap<String, u64>,
}

impl TableRecord {
    /// Records a committed file closing `closed_before`.
    pub fn add(&mut self, path: &Path, closed_before: u64) {
        self.closed_before = self.closed_before.max(closed_before);
        let partition = path.parent().and_then(Path::file_name).map(|p| p.to_string_lossy().into_owned());
        let number = path.file_name().and_then(|f| file_number(&f.to_string_lossy()));
        if let (Some(partition), Some(number)) = (partition, number) {
            let covered = self.partitions.entry(partition).or_default();
            *covered = (*covered).max(number);
        }
    }
}

/// Whether `path` is a committed file's (`part-NNNNNNNN….parquet`, not hidden).
pub fn is_part(path: &Path) -> bool {
    path.file_name().is_some_and(|n| file_number(&n.to_string_lossy()).is_some())
}

/// The number of a file named `part-NNNNNNNN.parquet` or `part-NNNNNNNN-….parquet`.
pub fn file_number(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("part-")?.get(..8)?;
    digits.parse().ok()
}

/// Table name → record.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub tables: BTreeMap<String, TableRecord>,
}

impl Manifest {
    /// The manifest in `dir`; none yet (a new log, or one written before manifests):
    /// empty, so every footer is read once.
    pub fn read(dir: &Path) -> Manifest {
        std::fs::read(dir.join(FILE_NAME))
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default()
    }

    /// Writes the manifest aside, syncs it and renames it into place.
    pub fn write(&self, dir: &Path) -> Result<(), AuditError> {
        let path = dir.join(FILE_NAME);
        let aside: PathBuf = dir.join(format!("{FILE_NAME}.tmp"));
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| AuditError::Io { path, source }
        };
        let bytes =
            serde_json::to_vec_pretty(self).map_err(|e| AuditError::Io { path: path.clone(), source: e.into() })?;
        let mut file = std::fs::File::create(&aside).map_err(io(&aside))?;
        std::io::Write::write_all(&mut file, &bytes).map_err(io(&aside))?;
        file.sync_all().map_err(io(&aside))?;
        std::fs::rename(&aside, &path).map_err(io(&path))
    }
}
