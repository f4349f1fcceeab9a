//! A Kafka-protocol broker for the benchmarks: tansu on 127.0.0.1, in memory, with
//! defectflow's output topics, as the tests start it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// tansu, stopped (by its PID) on drop, and its bootstrap address.
pub struct Broker(Child, pub String);

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn home() -> PathBuf {
    PathBuf::from(std::env::var("HOME").unwrap_or_default())
}

/// tansu on a free port with the sink's topics, or `None` (with the reason printed)
/// where scripts/install.sh has not installed it.
pub fn broker() -> Option<Broker> {
    let tansu =
        std::env::var("DEFECTFLOW_TANSU").map(PathBuf::from).unwrap_or(home().join(".cache/defectflow/bin/tansu"));
    let python = std::env::var("DEFECTFLOW_ANALYTICS_PYTHON")
        .map(PathBuf::from)
        .unwrap_or(home().join(".cache/defectflow/venv/bin/python"));
    if !tansu.is_file() || !python.is_file() {
        eprintln!("bench skipped: {} or {} missing (scripts/install.sh)", tansu.display(), python.display());
        return None;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0").ok()?.local_addr().ok()?.port();
    let url = format!("tcp://127.0.0.1:{port}");
    let child = Command::new(&tansu)
        .args([
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
            "--storage-engine",
            "memory://tansu/",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let broker = Broker(child, format!("127.0.0.1:{port}"));
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let client = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/kafka_client.py");
    let topics = [
        "defectflow.work-orders:3",
        "defectflow.alerts:1",
        "defectflow.parts-staging:1",
        "defectflow.dead-letter:1",
        "defectflow.progress:1",
    ];
    let created = Command::new(python).arg(client).args(["create", &broker.1]).args(topics).status().ok()?;
    created.success().then_some(broker)
}
