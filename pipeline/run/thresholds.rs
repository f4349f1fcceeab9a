//! The thresholds file (`[plant] thresholds`) while the run goes on: read at start (a
//! bad file fails the start, naming the rule), then looked at every second; a change
//! that parses is put in force for the next frame and the next track, one that does
//! not is logged and counted, and the thresholds before stay.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use defectflow_operators::thresholds::{LiveThresholds, Thresholds};

use crate::metrics::Metrics;

/// How often the file is looked at.
const LOOK_EVERY: Duration = Duration::from_secs(1);

/// Reads `path` into `live` and keeps it in force as the file changes, on a thread
/// that ends with the run (when `live` has no other holder). `floor` is the model's
/// own threshold, which a rule may raise but not lower.
pub fn watch(path: &Path, floor: f32, live: &LiveThresholds, metrics: &Arc<Metrics>) -> anyhow::Result<()> {
    let (stamp, thresholds) = read(path, floor).map_err(|e| anyhow::anyhow!("config: `plant.thresholds`: {e}"))?;
    tracing::info!(file = %path.display(), rules = thresholds.rules.len(), "thresholds in force");
    live.replace(thresholds);
    let watcher = Watcher { path: path.to_owned(), floor, stamp, metrics: Arc::clone(metrics) };
    let held = live.downgrade();
    std::thread::Builder::new().name("defectflow-thresholds".into()).spawn(move || {
        let mut watcher = watcher;
        while let Some(live) = held.upgrade() {
            watcher.look(&live);
            drop(live);
            std::thread::sleep(LOOK_EVERY);
        }
    })?;
    Ok(())
}

struct Watcher {
    path: PathBuf,
    floor: f32,
    /// The modification time and length of the file last read.
    stamp: Stamp,
    metrics: Arc<Metrics>,
}

type Stamp = Option<(SystemTime, u64)>;

impl Watcher {
    fn look(&mut self, live: &LiveThresholds) {
        if stamp(&self.path) == self.stamp {
            return;
        }
        match read(&self.path, self.floor) {
            Ok((stamp, thresholds)) => {
                self.stamp = stamp;
                if *live.current() != thresholds {
                    tracing::info!(file = %self.path.display(), rules = thresholds.rules.len(), "thresholds changed");
                    live.replace(thresholds);
                    self.metrics.threshold_reloads.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(error) => {
                // Once per change of the file: the stamp is that of the file refused.
                self.stamp = stamp(&self.path);
                tracing::error!(%error, "the thresholds file was not taken; the thresholds before stay in force");
                self.metrics.threshold_reload_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

fn stamp(path: &Path) -> Stamp {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// The file's stamp and rules.
fn read(path: &Path, floor: f32) -> Result<(Stamp, Thresholds), String> {
    let before = stamp(path);
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    let thresholds = Thresholds::parse(&text, &path.display().to_string(), floor)?;
    Ok((before, thresholds))
}

#[cfg(test)]
mod tests {
    use super::*;
    use defectflow_schemas::DefectClass;

    /// Rewrites the file so that its stamp changes even within the file system's clock
    /// resolution (the length differs).
    fn write(path: &Path, text: &str) {
        std::fs::write(path, text).expect("write");
    }

    fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !done() {
            assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    #[test]
    fn a_change_of_the_file_is_put_in_force_and_a_bad_one_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("thresholds.toml");
        write(&path, "[[threshold]]\ncamera = \"cam-1\"\nopen_score = 40\n");
        let (live, metrics) = (LiveThresholds::default(), Metrics::new());
        watch(&path, 0.5, &live, &metrics).expect("a good file");
        assert_eq!(live.current().open_score("cam-1", DefectClass::Crack), Some(40.0));

        write(&path, "[[threshold]]\ncamera = \"cam-1\"\nopen_score = 60\nmin_confidence = 0.9\n");
        wait_for("the change", || live.current().open_score("cam-1", DefectClass::Crack) == Some(60.0));
        assert_eq!(live.current().min_confidence("cam-1", DefectClass::Wear), Some(0.9));
        assert_eq!(metrics.threshold_reloads.load(Ordering::Relaxed), 1);

        write(&path, "[[threshold]]\ncamera = \"cam-1\"\nmin_confidence = 0.2\n");
        wait_for("the refusal", || metrics.threshold_reload_errors.load(Ordering::Relaxed) == 1);
        assert_eq!(live.current().open_score("cam-1", DefectClass::Crack), Some(60.0), "the thresholds before stay");

        // A bad file at start fails it, naming the field and the rule.
        write(&path, "[[threshold]]\nopen_score = -1\n");
        let error = watch(&path, 0.5, &LiveThresholds::default(), &metrics).expect_err("refused").to_string();
        assert!(error.contains("plant.thresholds") && error.contains("threshold[0].open_score"), "{error}");
    }
}
