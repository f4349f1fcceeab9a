//! The audit log's disk refusing writes mid-run (its folder made immutable: even root
//! cannot create a file there): a clear error, the metrics show it, the work orders go
//! on, the rows wait and are written once the disk takes them again: every audit table
//! and work-orders.jsonl as a run whose disk never refused them.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::checks;
use crate::support::outputs::{file_outputs, same_as_uncrashed};
use crate::support::{self, kafka::http_get, kafka::sample, kafka::wait_while_running};

/// `chattr -R ±i` on a folder; made writable again when dropped.
struct Immutable(PathBuf);

impl Immutable {
    fn set(path: &Path) -> Immutable {
        let status = Command::new("chattr").args(["-R", "+i"]).arg(path).status().expect("chattr");
        assert!(status.success(), "chattr +i {} (the test needs CAP_LINUX_IMMUTABLE)", path.display());
        Immutable(path.to_owned())
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = Command::new("chattr").args(["-R", "-i"]).arg(&self.0).status();
    }
}

fn metric(port: u16, series: &str) -> Option<f64> {
    http_get(port, "/metrics").and_then(|(_, body)| sample(&body, series))
}

#[test]
fn an_audit_disk_that_refuses_writes_holds_the_rows_until_it_takes_them() {
    let _serial = crate::support::kafka::serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let truth = support::demo_plant_footage(dir.path());
    let reference = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/demo-plant/reference");
    let port = support::free_port();
    let mut toml = format!(
        "[runtime]\nworkers = 2\nduration_s = 30\n[anomaly]\ncommission_s = 0\n[model]\nbatch_size = 4\n[plant]\nreference = \"{}\"\n\
         [output]\naudit_commit_s = 0.5\n[metrics]\naddress = \"127.0.0.1:{port}\"\n",
        reference.display()
    );
    toml.push_str(&support::recorded_cameras(dir.path(), &truth, "realtime = true\n"));
    let config = dir.path().join("audit.toml");
    std::fs::write(&config, toml).expect("config");
    let out = dir.path().join("out");
    let mut run = crate::support::Drained::spawn(Command::new(env!("CARGO_BIN_EXE_defectflow")).args([
        "run",
        "--config",
        config.to_str().expect("utf-8"),
        "--out",
        out.to_str().expect("utf-8"),
    ]));
    // Once the first rows are committed, the disk refuses every new file for 8 s.
    let audit = out.join("audit");
    wait_while_running(&mut run, "a first audit file", Duration::from_secs(60), || {
        std::fs::read_dir(audit.join("detections")).is_ok_and(|mut d| d.next().is_some())
    });
    let immutable = Immutable::set(&audit);
    wait_while_running(&mut run, "the metrics showing the audit log failing", Duration::from_secs(20), || {
        metric(port, "defectflow_audit_failing") == Some(1.0)
    });
    // The work orders go on meanwhile: a few commits' worth of rows may wait.
    assert_eq!(metric(port, "defectflow_output_stalled"), Some(0.0), "the cameras are not held back yet");
    assert!(metric(port, "defectflow_audit_write_errors_total").is_some_and(|n| n >= 1.0));
    // The disk takes files again once the run has tried and failed a few times (a try a
    // second) with rows waiting.
    wait_while_running(&mut run, "three failed commits", Duration::from_secs(60), || {
        metric(port, "defectflow_audit_write_errors_total").is_some_and(|n| n >= 3.0)
    });
    drop(immutable);
    wait_while_running(&mut run, "the audit log writing again", Duration::from_secs(20), || {
        metric(port, "defectflow_audit_failing") == Some(0.0)
            && http_get(port, "/healthz").is_some_and(|(status, _)| status == "HTTP/1.1 200 OK")
    });
    let output = run.wait_with_output();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "run failed: {stderr}");
    assert!(
        stderr.contains("the audit log cannot write") && stderr.contains(audit.to_str().expect("utf-8")),
        "{stderr}"
    );
    assert!(stderr.contains("the audit log writes again"), "{stderr}");

    let keys = checks::one_work_order_per_defect(&checks::jsonl_work_orders(&out), &checks::defects(&truth));
    checks::audited_once(&audit, &keys);
    // Every audit table and the file as a run whose disk never refused them.
    let uncrashed = dir.path().join("uncrashed");
    let status = Command::new(env!("CARGO_BIN_EXE_defectflow"))
        .args(["run", "--config", config.to_str().expect("utf-8"), "--out", uncrashed.to_str().expect("utf-8")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run");
    assert!(status.success(), "the run without the outage");
    same_as_uncrashed(&file_outputs(&out), &file_outputs(&uncrashed));
}
