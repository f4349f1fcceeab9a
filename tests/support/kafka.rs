//! A real Kafka-protocol broker (tansu) for the end-to-end tests, the independent
//! client that reads it back (Python confluent-kafka), and checks of what a run
//! delivered.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use defectflow_models::synth::GroundTruth;
use defectflow_schemas::registry;
use serde_json::Value;

/// A tansu broker on a free port of 127.0.0.1, in memory, stopped (by its PID) on drop.
/// One test at a time holds one: the tests play recordings in real time and check what
/// a run does while it keeps up with them, which two runs at once on two cores do not.
pub struct Broker {
    pub child: Child,
    pub bootstrap: String,
    /// Where it listens (the bootstrap address is a proxy's when it is behind one).
    pub port: u16,
    _serial: std::sync::MutexGuard<'static, ()>,
}

pub static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Held by a test that plays recordings in real time without a broker, so that it runs
/// alone in its test binary like those that start one.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Broker {
    pub fn start() -> Broker {
        Broker::behind(None)
    }

    /// A broker that tells its clients to connect to 127.0.0.1:`advertised` (a proxy in
    /// front of it, forwarding to [`Broker::port`]) instead of its own port.
    pub fn behind(advertised: Option<u16>) -> Broker {
        let serial = SERIAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let tansu = std::env::var("DEFECTFLOW_TANSU").map(PathBuf::from).unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").expect("HOME")).join(".cache/defectflow/bin/tansu")
        });
        assert!(tansu.is_file(), "{} missing: scripts/install.sh installs the test broker", tansu.display());
        let port = super::free_port();
        let url = format!("tcp://127.0.0.1:{port}");
        let advertised = format!("tcp://127.0.0.1:{}", advertised.unwrap_or(port));
        let child = Command::new(&tansu)
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &advertised])
            .args(["--storage-engine", "memory://tansu/"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tansu");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "tansu did not listen on {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Broker { child, bootstrap: advertised.trim_start_matches("tcp://").to_owned(), port, _serial: serial }
    }

    /// `kafka_client.py COMMAND BOOTSTRAP`, arguments to follow.
    pub fn client_command(&self, command: &str) -> Command {
        let python = std::env::var("DEFECTFLOW_ANALYTICS_PYTHON")
            .expect("DEFECTFLOW_ANALYTICS_PYTHON names a python with confluent-kafka (scripts/install.sh makes one)");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/kafka_client.py");
        let mut client = Command::new(python);
        client.arg(script).args([command, &self.bootstrap]);
        client
    }

    pub fn client(&self, args: &[&str]) -> Output {
        let output = self.client_command(args[0]).args(&args[1..]).output().expect("run the Kafka client");
        assert!(output.status.success(), "kafka_client {args:?}: {}", String::from_utf8_lossy(&output.stderr));
        output
    }

    pub fn create_topics(&self, specs: &[&str]) {
        let mut args = vec!["create"];
        args.extend_from_slice(specs);
        self.client(&args);
    }

    /// Sends messages (`{"value": text}` or `{"bytes": n}`) to a topic.
    pub fn produce(&self, topic: &str, messages: &[Value]) {
        let mut child =
            self.client_command("produce").arg(topic).stdin(Stdio::piped()).spawn().expect("run the Kafka client");
        let lines: String = messages.iter().map(|m| format!("{m}\n")).collect();
        std::io::Write::write_all(child.stdin.as_mut().expect("stdin"), lines.as_bytes()).expect("write");
        drop(child.stdin.take());
        assert!(child.wait().expect("wait").success(), "producing to {topic}");
    }

    /// Waits (two minutes at most) until the work-order topic holds more than
    /// `more_than` messages or `run` has ended; whether it does.
    pub fn wait_for_revisions(&self, more_than: usize, run: &mut Child) -> bool {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if self.messages("defectflow.work-orders").len() > more_than {
                return true;
            }
            if run.try_wait().expect("wait").is_some() || Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn messages(&self, topic: &str) -> Vec<Value> {
        serde_json::from_slice(&self.client(&["dump", topic]).stdout).expect("json")
    }

    /// How many messages the output topics hold together (what a run's summary counts
    /// as sent to Kafka; progress records are not counted).
    pub fn output_messages(&self) -> usize {
        OUTPUT_TOPICS.iter().map(|topic| self.messages(topic).len()).sum()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub const TOPICS: [&str; 9] = [
    "defectflow.work-orders:3",
    "defectflow.alerts:1",
    "defectflow.parts-staging:1",
    "defectflow.dead-letter:1",
    "defectflow.progress:1",
    "defectflow.wo-events:1",
    "defectflow.inventory:1",
    "defectflow.technicians:1",
    "defectflow.assets:1",
];

/// A broker with the topics, the demo plant's footage and a config for it.
pub struct Plant {
    pub broker: Broker,
    pub dir: tempfile::TempDir,
    pub truth: GroundTruth,
    pub config: PathBuf,
}

/// [`Plant`] with `kafka_extra` added to the config's `[kafka]` table.
pub fn plant(kafka_extra: &str) -> Plant {
    plant_on(Broker::start(), kafka_extra)
}

/// [`plant`] on a broker already started.
pub fn plant_on(broker: Broker, kafka_extra: &str) -> Plant {
    broker.create_topics(&TOPICS);
    let dir = tempfile::tempdir().expect("tempdir");
    let truth = super::demo_plant_footage(dir.path());
    let config = write_config(dir.path(), &truth, &broker.bootstrap, kafka_extra);
    Plant { broker, dir, truth, config }
}

/// A config for the demo plant's footage, played at its frame rate as cameras would
/// deliver it, the recording's capture times fixed so that every run replays the same
/// frames at the same times.
pub fn write_config(dir: &Path, truth: &GroundTruth, bootstrap: &str, kafka_extra: &str) -> PathBuf {
    let reference = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/demo-plant/reference");
    let mut toml = format!(
        "[runtime]\nworkers = 2\n[anomaly]\ncommission_s = 0\n[model]\nbatch_size = 4\n[plant]\nreference = \"{}\"\n\
         [kafka]\nbrokers = \"{bootstrap}\"\n{kafka_extra}[kafka.properties]\n\"message.timeout.ms\" = \"90000\"\n",
        reference.display()
    );
    toml.push_str(&super::recorded_cameras(dir, truth, "realtime = true\n"));
    let path = dir.join("kafka.toml");
    std::fs::write(&path, toml).expect("config");
    path
}

pub fn defectflow(config: &Path, out: Option<&Path>, failpoint: Option<&str>) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_defectflow"));
    command.args(["run", "--config", config.to_str().expect("utf-8")]);
    if let Some(out) = out {
        command.args(["--out", out.to_str().expect("utf-8")]);
    }
    match failpoint {
        Some(point) => command.env("DEFECTFLOW_FAILPOINT", point),
        None => command.env_remove("DEFECTFLOW_FAILPOINT"),
    };
    command
}

/// The topics a run sends messages to.
pub const OUTPUT_TOPICS: [&str; 4] =
    ["defectflow.work-orders", "defectflow.alerts", "defectflow.parts-staging", "defectflow.dead-letter"];

/// The number of messages a run's summary says it sent to Kafka (`kafka: N sent, …`).
pub fn sent_to_kafka(stdout: &str) -> usize {
    let line =
        stdout.lines().find_map(|l| l.strip_prefix("kafka: ")).unwrap_or_else(|| panic!("no kafka line: {stdout}"));
    let count = line.split_once(" sent").unwrap_or_else(|| panic!("no count sent: {line}")).0;
    count.parse().unwrap_or_else(|e| panic!("{count:?} in {line:?}: {e}"))
}

/// Kills `run` (SIGKILL, by its own PID) once it has delivered its first revisions
/// (its `work-orders.jsonl` in `out` has a line); panics if the run ended before, so
/// every kill lands on a live run that had got past sending.
pub fn kill_once_sending(out: &Path, run: &mut Child) {
    // The file is written right after the topic acknowledges, and is cheaper to watch
    // than the topic: the kill lands soon after the first delivery, with more to send.
    let file = out.join("work-orders.jsonl");
    let deadline = Instant::now() + Duration::from_secs(120);
    while !std::fs::read_to_string(&file).is_ok_and(|text| text.contains('\n')) {
        assert!(Instant::now() < deadline, "no revision delivered within two minutes");
        assert!(run.try_wait().expect("wait").is_none(), "the run ended before it delivered a revision");
        std::thread::sleep(Duration::from_millis(20));
    }
    kill_live(run);
}

/// SIGKILL to `run` (by its own PID), which must still be running: a kill that came
/// after the run ended would test nothing.
pub fn kill_live(run: &mut Child) {
    assert!(run.try_wait().expect("wait").is_none(), "the run ended before it was killed");
    run.kill().expect("SIGKILL");
    run.wait().expect("reap");
}

/// Waits until `done`, within `within`, while `run` is still running.
pub fn wait_while_running(run: &mut std::process::Child, what: &str, within: Duration, done: impl FnMut() -> bool) {
    if let Err(failed) = wait_for(run, what, within, done) {
        panic!("{failed}");
    }
}

/// Waits until `done`, within `within`, while `run` is still running; what went wrong
/// otherwise, for a caller that has more to tell about it.
pub fn wait_for(
    run: &mut std::process::Child,
    what: &str,
    within: Duration,
    mut done: impl FnMut() -> bool,
) -> Result<(), String> {
    let deadline = Instant::now() + within;
    while !done() {
        if Instant::now() >= deadline {
            return Err(format!("{what}: not within {within:?}"));
        }
        if run.try_wait().expect("wait").is_some() {
            return Err(format!("{what}: the run ended first"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

pub fn run_to_end(config: &Path, out: Option<&Path>) -> String {
    let output = defectflow(config, out, None).output().expect("run defectflow");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "run failed: {stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    stdout
}

pub fn crash_at(config: &Path, out: &Path, failpoint: &str) {
    let output = defectflow(config, Some(out), Some(failpoint)).output().expect("run defectflow");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "the run passed the failpoint {failpoint} without stopping: {}\n{stderr}",
        String::from_utf8_lossy(&output.stdout)
    );
    assert!(stderr.contains(&format!("failpoint {}", failpoint.split(':').next().unwrap_or(failpoint))), "{stderr}");
}

/// (idempotency key → count) of a topic's messages, checking the headers on the way.
pub fn delivered(messages: &[Value]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for m in messages {
        let headers = &m["headers"];
        assert_eq!(headers["content-type"], "application/json", "{m}");
        assert!(headers["schema_version"].is_string(), "{m}");
        let key = headers["idempotency-key"].as_str().expect("idempotency key header").to_owned();
        // A CloudEvent in binary mode, timed by its event, not by its sending.
        assert_eq!(headers["ce_specversion"], "1.0", "{m}");
        assert_eq!(headers["ce_id"].as_str(), Some(key.as_str()), "{m}");
        assert!(headers["ce_type"].as_str().is_some_and(|t| t.starts_with("dev.defectflow.")), "{m}");
        assert!(headers["ce_source"].as_str().is_some_and(|s| s.starts_with("/defectflow/")), "{m}");
        assert_eq!(headers["ce_subject"], m["key"], "{m}");
        let timestamp = m["timestamp"].as_u64().expect("a record timestamp");
        assert_eq!(headers["ce_time"].as_str(), Some(defectflow::clock::rfc3339(timestamp).as_str()), "{m}");
        // The payload follows the current schema of its subject, which the headers name.
        let subject =
            registry::by_event_type(headers["ce_type"].as_str().unwrap_or_default()).expect("a known ce_type");
        assert_eq!(headers["ce_dataschema"].as_str(), Some(subject.id().as_str()), "the schema's $id: {m}");
        assert_eq!(headers["schema_version"].as_str(), Some(subject.version()), "{m}");
        let value: Value = serde_json::from_str(m["value"].as_str().expect("payload")).expect("json");
        let validator = jsonschema::draft202012::new(&subject.schema()).expect("a valid schema");
        let errors: Vec<String> =
            validator.iter_errors(&value).map(|e| format!("{e} at {}", e.instance_path())).collect();
        assert!(errors.is_empty(), "{errors:?} in {m}");
        if subject.name == registry::WORK_ORDER.name {
            assert_eq!(value["revised_at_ms"].as_u64(), Some(timestamp), "the revision's time: {m}");
        }
        *counts.entry(key).or_insert(0) += 1;
    }
    counts
}

/// Every (work order, revision) once, none missing against the complete run's JSON
/// lines in `out`, valid against the schema, keyed by work order, one per defect.
pub fn check_exactly_once(messages: &[Value], out: &Path, truth: &GroundTruth) {
    // Exactly once: every (work order, revision) once.
    let counts = delivered(messages);
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "delivered more than once: {twice:?}");
    // None missing: the topic holds what the complete run derived (its JSON lines).
    let lines = std::fs::read_to_string(out.join("work-orders.jsonl")).expect("work-orders.jsonl");
    let mut derived = BTreeSet::new();
    for line in lines.lines() {
        let message: Value = serde_json::from_str(line).expect("json line");
        if let Some(w) = message.get("work_order") {
            derived.insert(format!("{}:{}", w["work_order_id"].as_str().expect("id"), w["revision"]));
        }
    }
    assert_eq!(counts.keys().cloned().collect::<BTreeSet<_>>(), derived, "topic against the derived revisions");

    // Valid against the schema, keyed by work order, one work order per defect.
    let validator = jsonschema::draft202012::new(&registry::WORK_ORDER.schema()).expect("valid schema");
    let mut opened: BTreeMap<String, (String, String)> = BTreeMap::new();
    for m in messages {
        let value: Value = serde_json::from_str(m["value"].as_str().expect("value")).expect("json value");
        let errors: Vec<String> = validator.iter_errors(&value).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{errors:?} in {value}");
        let id = value["work_order_id"].as_str().expect("id").to_owned();
        assert_eq!(m["key"].as_str(), Some(id.as_str()), "key = work-order id");
        let what = (
            value["asset_id"].as_str().expect("asset").to_owned(),
            value["defect_class"].as_str().expect("class").to_owned(),
        );
        opened.insert(id, what);
    }
    let expected: BTreeSet<(String, String)> = truth
        .cameras
        .iter()
        .flat_map(|c| c.scene.defects.iter().map(|d| (c.scene.asset_id.clone(), d.class.to_string())))
        .collect();
    assert_eq!(opened.values().cloned().collect::<BTreeSet<_>>(), expected, "work orders by (asset, class)");
    assert_eq!(opened.len(), expected.len(), "one work order per defect: {opened:?}");
}

/// `GET path` on 127.0.0.1:port: (status line, body), or `None` while nothing listens.
pub fn http_get(port: u16, path: &str) -> Option<(String, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    Some((head.lines().next()?.to_owned(), body.to_owned()))
}

/// The value of one sample line (`name{labels} value`) of a Prometheus exposition.
/// Waits until the run's metrics (served on `port`) count a message acknowledged by
/// Kafka: the first delivery, seen within a fraction of a second (reading the topic with
/// a new client takes seconds on a busy machine, by when the run may have sent all).
/// False if the run ends first or nothing is delivered within two minutes.
pub fn wait_for_first_delivery(port: u16, run: &mut Child) -> bool {
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline && run.try_wait().expect("wait").is_none() {
        let body = http_get(port, "/metrics").map(|(_, body)| body);
        if body.is_some_and(|b| sample(&b, "defectflow_kafka_messages_sent_total").is_some_and(|n| n > 0.0)) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

pub fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines().find_map(|l| l.strip_prefix(series).and_then(|rest| rest.trim().parse().ok()))
}

/// `<work order>:<revision>` of every row of the audit log's work_orders table, read by
/// polars (which fails on a partial file).
pub fn audited_revisions(audit: &Path) -> Vec<String> {
    let python = std::env::var("DEFECTFLOW_ANALYTICS_PYTHON").expect("DEFECTFLOW_ANALYTICS_PYTHON");
    let script = r#"
import json, sys
import polars as pl
df = pl.scan_parquet(sys.argv[1] + "/work_orders/**/*.parquet", hive_partitioning=True).collect()
print(json.dumps([f"{r['work_order_id']}:{r['revision']}" for r in df.iter_rows(named=True)]))
"#;
    let output = Command::new(python).args(["-c", script, audit.to_str().expect("utf-8")]).output().expect("python");
    assert!(output.status.success(), "polars: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).expect("json")
}

/// A live run's config in `dir`: the demo plant's pulley as a synthetic live camera (a
/// crack from its first second), running `duration_s`; `kafka` adds `[kafka]` with
/// these brokers and `sink_id`.
pub fn live_pulley_config(dir: &Path, duration_s: u64, kafka: Option<(&str, &str)>) -> PathBuf {
    let reference = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/demo-plant/reference");
    let kafka = kafka.map_or(String::new(), |(brokers, sink_id)| {
        format!("[kafka]\nbrokers = \"{brokers}\"\nsink_id = \"{sink_id}\"\n")
    });
    let config = dir.join("live.toml");
    std::fs::write(
        &config,
        format!(
            "[runtime]\nworkers = 2\nduration_s = {duration_s}\n[anomaly]\ncommission_s = 0\n[model]\nbatch_size = 4\n[plant]\nreference = \"{}\"\n\
             {kafka}[[cameras]]\nid = \"cam-pulley\"\n\
             url = \"synth://conveyor_pulley?seed=11&fps=15&asset_id=CV-101-PUL&defects=crack@1\"\nmax_fps = 5\n",
            reference.display()
        ),
    )
    .expect("config");
    config
}

/// Milliseconds since the epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_millis() as u64
}

/// A live run killed with its one work order open (`before`: its revisions then) and
/// started again at `restarted_ms` went on with it and its track: one work order in
/// `after`, each revision once, every revision with the first run's track and time of
/// first detection, the track seen again after the restart (the audit log's snapshots
/// under `out`), and the technician kept.
pub fn went_on_with_the_same_work_order_and_track(
    before: &[Value],
    after: &[Value],
    out: &Path,
    restarted_ms: u64,
    stdout: &str,
) {
    let ids: BTreeSet<&str> = before.iter().chain(after).filter_map(|w| w["work_order_id"].as_str()).collect();
    assert_eq!(ids.len(), 1, "the defect has one work order across the restart: {stdout}");
    let mut revisions: Vec<u64> = after.iter().filter_map(|w| w["revision"].as_u64()).collect();
    revisions.sort_unstable();
    assert_eq!(revisions, (1..=revisions.len() as u64).collect::<Vec<_>>(), "each revision once, none missing");
    let first_track = before[0]["track_id"].as_str().expect("track");
    let sightings = audited_sightings(&out.join("audit"), first_track);
    assert!(sightings.iter().any(|&t| t > restarted_ms), "not seen again after the restart: {sightings:?} {stdout}");
    for revision in after {
        assert_eq!(revision["track_id"].as_str(), Some(first_track), "{revision}");
        assert_eq!(revision["detected_at_ms"], before[0]["detected_at_ms"], "{revision}");
    }
    let last = after.iter().max_by_key(|w| w["revision"].as_u64()).expect("a revision");
    let technician = before[0]["technician_id"].as_str().expect("assigned");
    // Shifts follow the clock: an open work order moves to the next shift when its
    // technician's shift ends, crash or no crash.
    if last["technician_id"].as_str() != Some(technician) {
        let hour = (last["revised_at_ms"].as_u64().expect("revised_at_ms") / 3_600_000 % 24) as u8;
        assert!(
            !on_shift(technician, hour),
            "the technician stays with the work order while on shift: {technician} at {hour}:00, {last}"
        );
    }
}

/// Whether the demo plant's `technician` works at `hour` (UTC, the plant's time zone).
fn on_shift(technician: &str, hour: u8) -> bool {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/demo-plant/reference/technicians.json");
    let technicians: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(path).expect("technicians")).expect("json");
    let shift = &technicians.iter().find(|t| t["technician_id"] == technician).expect("known technician")["shift"];
    let (start, end) =
        (shift["start_hour"].as_u64().expect("start") as u8, shift["end_hour"].as_u64().expect("end") as u8);
    if start <= end { (start..end).contains(&hour) } else { hour >= start || hour < end }
}

/// The sightings (`last_seen` in epoch ms) of the audit log's snapshots of a track.
pub fn audited_sightings(audit: &Path, track_id: &str) -> Vec<u64> {
    let python = std::env::var("DEFECTFLOW_ANALYTICS_PYTHON").expect("DEFECTFLOW_ANALYTICS_PYTHON");
    let script = r#"
import json, sys
import polars as pl
df = pl.scan_parquet(sys.argv[1] + "/tracks/**/*.parquet", hive_partitioning=True).filter(pl.col("track_id") == sys.argv[2]).collect()
print(json.dumps([int(t.timestamp() * 1000) for t in df["last_seen"]]))
"#;
    let output =
        Command::new(python).args(["-c", script, audit.to_str().expect("utf-8"), track_id]).output().expect("python");
    assert!(output.status.success(), "polars: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).expect("json")
}

/// The work-order values of a dump, in offset order per partition.
/// `<work order id>:<revision>` of a work-order revision.
pub fn revision_key(w: &Value) -> String {
    format!("{}:{}", w["work_order_id"].as_str().expect("id"), w["revision"].as_u64().expect("revision"))
}

pub fn work_orders(messages: &[Value]) -> Vec<Value> {
    messages.iter().map(|m| serde_json::from_str(m["value"].as_str().expect("value")).expect("json")).collect()
}
