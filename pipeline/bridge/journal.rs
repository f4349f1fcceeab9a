//! What the bridge knows it has done, kept on disk (`<state_dir>/journal.jsonl`): per
//! work order, the CMMS's reference to its record, the last revision the CMMS
//! acknowledged, defectflow's status of it and the last CMMS status reported back.
//!
//! A line is a work order's whole entry after a change; the last line of an id wins, and
//! a line torn by a crash is ignored. The file is rewritten compactly at start. The
//! bridge syncs it before it commits the offsets of what it records, so a revision the
//! offsets skip is always in the journal.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// One work order's entry.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub work_order_id: String,
    /// The CMMS's reference (a URL, an id) that updates use.
    #[serde(default)]
    pub reference: Option<String>,
    /// The last revision the CMMS acknowledged (0: none).
    #[serde(default)]
    pub revision: u32,
    /// defectflow's status in that revision.
    #[serde(default)]
    pub status: Option<String>,
    /// The last CMMS status the bridge reported as a wo-event, or found on the record.
    #[serde(default)]
    pub cmms_status: Option<String>,
    /// A create about to be sent since then (synced before it is), not yet acknowledged:
    /// a bridge that died meanwhile may have made the record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creating_since_ms: Option<u64>,
}

/// The journal; see the module documentation.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    file: File,
    entries: HashMap<String, Entry>,
    unsynced: bool,
}

impl Journal {
    /// Opens (or creates) the journal in `dir`, compacting it.
    pub fn open(dir: &Path) -> std::io::Result<Journal> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("journal.jsonl");
        let mut entries = HashMap::new();
        if let Ok(file) = File::open(&path) {
            for line in BufReader::new(file).lines() {
                // A torn last line (a crash mid-write) does not parse: the entry before it stands.
                if let Ok(entry) = serde_json::from_str::<Entry>(&line?) {
                    entries.insert(entry.work_order_id.clone(), entry);
                }
            }
        }
        let compacted = dir.join("journal.jsonl.new");
        {
            let mut out = std::io::BufWriter::new(File::create(&compacted)?);
            let mut ids: Vec<&String> = entries.keys().collect();
            ids.sort();
            for id in ids {
                serde_json::to_writer(&mut out, &entries[id])?;
                out.write_all(b"\n")?;
            }
            out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        }
        std::fs::rename(&compacted, &path)?;
        File::open(dir)?.sync_all()?;
        let file = OpenOptions::new().append(true).open(&path)?;
        Ok(Journal { path, file, entries, unsynced: false })
    }

    pub fn get(&self, work_order_id: &str) -> Option<&Entry> {
        self.entries.get(work_order_id)
    }

    /// Every entry.
    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.entries.values()
    }

    /// Records `entry` (written now, synced by the next [`Journal::sync`]).
    pub fn record(&mut self, entry: Entry) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(&entry)?;
        line.push(b'\n');
        self.file.write_all(&line)?;
        self.unsynced = true;
        self.entries.insert(entry.work_order_id.clone(), entry);
        Ok(())
    }

    /// Makes everything recorded so far durable.
    pub fn sync(&mut self) -> std::io::Result<()> {
        if self.unsynced {
            self.file.sync_data()?;
            self.unsynced = false;
        }
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_entry_wins_and_a_torn_line_is_ignored() {
        let dir = tempfile::tempdir().expect("tempdir");
        let entry = |revision| Entry {
            work_order_id: "WO-1".into(),
            reference: Some("/wo/1".into()),
            revision,
            ..Entry::default()
        };
        {
            let mut journal = Journal::open(dir.path()).expect("open");
            journal.record(entry(1)).expect("record");
            journal.record(entry(2)).expect("record");
            journal.sync().expect("sync");
        }
        let path = dir.path().join("journal.jsonl");
        let mut torn = std::fs::read(&path).expect("read");
        torn.extend_from_slice(br#"{"work_order_id":"WO-1","revis"#);
        std::fs::write(&path, torn).expect("write");
        let journal = Journal::open(dir.path()).expect("reopen");
        assert_eq!(journal.get("WO-1"), Some(&entry(2)));
        // Compacted: one line per work order.
        assert_eq!(std::fs::read_to_string(&path).expect("read").lines().count(), 1);
    }
}
