//! Advisory locks that keep a run's commits and `defectflow audit compact` out of each
//! other's way (`flock(2)`, through `std::fs::File::lock`), under `audit/.locks/`,
//! outside every table's glob:
//!
//! - `<table>/date=YYYY-MM-DD.lock`, one per partition. A commit holds it shared from
//!   writing its file aside until the manifest records the file; a compaction, having
//!   merged the files it listed without it, holds it exclusively from listing the
//!   partition again until it has swapped the new partition in (links and renames
//!   only, so a commit waits briefly). A file committed while a day is compacted
//!   therefore lands either before the second listing (and is kept beside the merged
//!   file) or after the swap (beside it too), never in the old partition that the swap
//!   throws away.
//! - `compact.lock`: one compaction at a time per audit log.
//!
//! The kernel drops a lock with the process that held it, so a crash leaves none behind.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};

use defectflow_schemas::audit::AuditTable;

use super::AuditError;

/// The folder of the locks in the audit folder.
const FOLDER: &str = ".locks";

fn open(path: PathBuf) -> Result<File, AuditError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| AuditError::Io { path, source }
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io(parent))?;
    }
    OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(io(&path))
}

fn partition(dir: &Path, table: AuditTable, partition: &str) -> Result<(File, PathBuf), AuditError> {
    let path = dir.join(FOLDER).join(table.name()).join(format!("{partition}.lock"));
    Ok((open(path.clone())?, path))
}

/// A partition held; released when dropped (the file closes).
#[derive(Debug)]
pub struct Held {
    _file: File,
}

/// Holds a partition (`date=…`) shared, for a commit: commits go on side by side, a
/// compaction of the partition waits for them (and they for it).
pub fn commit(dir: &Path, table: AuditTable, name: &str) -> Result<Held, AuditError> {
    let (file, path) = partition(dir, table, name)?;
    file.lock_shared().map_err(|source| AuditError::Io { path, source })?;
    Ok(Held { _file: file })
}

/// Holds a partition exclusively, for its compaction (waits for the commits in it).
pub fn compaction(dir: &Path, table: AuditTable, name: &str) -> Result<Held, AuditError> {
    let (file, path) = partition(dir, table, name)?;
    file.lock().map_err(|source| AuditError::Io { path, source })?;
    Ok(Held { _file: file })
}

/// The audit log's one compaction: refused at once while another process compacts it.
pub fn only_compaction(dir: &Path) -> Result<Held, AuditError> {
    let path = dir.join(FOLDER).join("compact.lock");
    let file = open(path.clone())?;
    match file.try_lock() {
        Ok(()) => Ok(Held { _file: file }),
        Err(TryLockError::WouldBlock) => Err(AuditError::Io {
            path,
            source: std::io::Error::new(
                std::io::ErrorKind::WouldBlock,
                "another `defectflow audit compact` is compacting this audit log; wait for it to end",
            ),
        }),
        Err(TryLockError::Error(source)) => Err(AuditError::Io { path, source }),
    }
}
