//! defectflow crashed at every failpoint and killed with SIGKILL at random points of a
//! run, restarted each time, and compared with a run that never crashed; and stopped
//! with SIGTERM, which is graceful.

use std::collections::BTreeSet;
use std::process::Stdio;
use std::time::Duration;

use crate::checks;
use crate::support::kafka::*;
use crate::support::outputs::*;
use defectflow::sinks::FAILPOINTS;

/// A small deterministic generator for the kill times (its seed is printed, and can be
/// set with `DEFECTFLOW_FAULT_SEED` to repeat a run).
fn kill_times(seed: u64, count: usize) -> Vec<Duration> {
    let mut state = seed.max(1);
    (0..count)
        .map(|_| {
            // xorshift64*
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            let r = state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11;
            // Between 1 and 5 s into a run of the 6 s recording played in real time
            // (the start, the middle of sending): every kill lands on a live run.
            Duration::from_millis(1_000 + r % 4_000)
        })
        .collect()
}

#[test]
fn sigkill_at_random_points_then_a_restart_loses_and_duplicates_nothing() {
    let seed = fault_seed();
    let times = kill_times(seed, 4);
    eprintln!("kill times (DEFECTFLOW_FAULT_SEED={seed}): {times:?}");
    let plant = plant("");
    let out = plant.dir.path().join("out");
    for after in &times {
        let mut run = defectflow(&plant.config, Some(&out), None)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run");
        std::thread::sleep(*after);
        kill_live(&mut run);
    }
    // The last run goes to the end.
    let before = plant.broker.output_messages();
    let stdout = run_to_end(&plant.config, Some(&out));
    assert_eq!(sent_to_kafka(&stdout), plant.broker.output_messages() - before, "{stdout}");
    let messages = plant.broker.messages("defectflow.work-orders");
    check_exactly_once(&messages, &out, &plant.truth);
    let keys = checks::one_work_order_per_defect(&work_orders(&messages), &checks::defects(&plant.truth));
    checks::audited_once(&out.join("audit"), &keys);
    // The runs' work-orders.jsonl holds the same revisions, each once.
    assert_eq!(
        checks::one_work_order_per_defect(&checks::jsonl_work_orders(&out), &checks::defects(&plant.truth)),
        keys
    );
    // Every topic, the file and every audit table hold what a run that never crashed
    // writes from the same recording.
    let crashed = run_outputs(&plant.broker, "defectflow.", &out);
    same_as_uncrashed(&crashed, &uncrashed_run(&plant.broker, plant.dir.path(), &plant.config));
    // No partial file is left where a reader looks (files are written aside, renamed;
    // hidden folders, such as the locks', are no table's).
    let mut stack = vec![out.join("audit")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("audit folder") {
            let path = entry.expect("entry").path();
            let name = path.file_name().expect("name").to_string_lossy().into_owned();
            if path.is_dir() {
                if !name.starts_with('.') {
                    stack.push(path);
                }
            } else {
                assert!(name.ends_with(".parquet") || name.starts_with('.'), "unexpected file {}", path.display());
            }
        }
    }
}

/// Crashes at every failpoint, each the first time a run reaches it, in chains (crash,
/// restart, crash at the next point, ...) that end with a run to the end; then every
/// topic, the file and every audit table as a run that never crashed. Without
/// transactions every point but `before-commit`; with them, the points around the
/// commit. Each crash of a chain leaves the next run work that reaches the next point
/// whatever the batching (a recording not played in real time may be sent in one
/// batch): the recovery points follow a crash after sending, so the start has
/// something to recover. Then a seeded random schedule of crashes in one output, also
/// compared with the run that never crashed.
#[test]
fn a_crash_at_every_failpoint_then_a_restart_gives_what_an_uncrashed_run_gives() {
    let plant = plant("");
    // The recording as fast as it decodes, not at its frame rate: its capture times are
    // fixed, so every run derives the same outputs either way.
    let text = std::fs::read_to_string(&plant.config).expect("config");
    assert!(text.contains("realtime = true\n"), "{text}");
    std::fs::write(&plant.config, text.replace("realtime = true\n", "")).expect("config");
    let uncrashed = uncrashed_run(&plant.broker, plant.dir.path(), &plant.config);
    let chains: [(&[&str], bool); 5] = [
        (&["after-send", "kafka-after-recovery", "audit-after-recovery"], false),
        (&["kafka-between-sends", "after-progress"], false),
        (&["jsonl-after-append", "jsonl-before-progress-rename", "jsonl-after-progress"], false),
        (&["audit-after-aside", "audit-after-rename", "audit-after-manifest"], false),
        (&["kafka-between-sends", "before-commit", "after-progress"], true),
    ];
    let mut reached = BTreeSet::new();
    for (i, (points, transactions)) in chains.into_iter().enumerate() {
        let prefix = format!("crash-{i}.");
        let extra = if transactions { "transactional = true\n" } else { "" };
        let (config, out) = config_on_topics(&plant.broker, plant.dir.path(), &plant.config, &prefix, extra);
        let started = std::time::Instant::now();
        for point in points {
            crash_at(&config, &out, point);
            reached.insert(point.split(':').next().unwrap_or(point));
        }
        run_to_end(&config, Some(&out));
        eprintln!("crashed at {points:?} (transactions: {transactions}) in {:?}", started.elapsed());
        same_as_uncrashed(&run_outputs(&plant.broker, &prefix, &out), &uncrashed);
    }
    assert_eq!(reached, FAILPOINTS.into_iter().collect(), "every failpoint crashed at");

    // Then a seeded random schedule in one output: four crashes, each at a point and hit
    // drawn at random (a point the run has no work left for lets it end instead, which
    // is fine: the next run starts from a finished one).
    // The recording in real time, so that each run has many batches to reach a point's
    // later hits in.
    let seed = fault_seed();
    let schedule = random_failpoints(seed, 4);
    eprintln!("failpoint schedule (DEFECTFLOW_FAULT_SEED={seed}): {schedule:?}");
    let realtime = plant.dir.path().join("realtime.toml");
    std::fs::write(&realtime, &text).expect("config");
    let (config, out) = config_on_topics(&plant.broker, plant.dir.path(), &realtime, "random.", "");
    let crashed: Vec<bool> = schedule.iter().map(|spec| crash_at_or_end(&config, &out, spec)).collect();
    assert!(crashed[0], "the first run reaches every point once: {schedule:?}");
    run_to_end(&config, Some(&out));
    same_as_uncrashed(&run_outputs(&plant.broker, "random.", &out), &uncrashed);
}

/// The seed of a test's random faults: `DEFECTFLOW_FAULT_SEED` to repeat a run, else
/// the clock (printed by the test).
fn fault_seed() -> u64 {
    std::env::var("DEFECTFLOW_FAULT_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_nanos() as u64
    })
}

/// `count` failpoint specs (`point:hit`) drawn from `seed`: any point but the
/// transactions' own; the first time a run reaches it for the first spec and the points
/// a start passes once, else the first to the third.
fn random_failpoints(seed: u64, count: usize) -> Vec<String> {
    let points: Vec<&str> = FAILPOINTS.into_iter().filter(|p| *p != "before-commit").collect();
    let mut state = seed.max(1);
    let mut next = move || {
        // xorshift64*
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11
    };
    (0..count)
        .map(|i| {
            let point = points[next() as usize % points.len()];
            let once = i == 0 || point.ends_with("-recovery");
            format!("{point}:{}", if once { 1 } else { 1 + next() % 3 })
        })
        .collect()
}

/// Runs to `failpoint` (`point:hit`) and crashes there (true), or to the end if the run
/// never reaches it (false); anything else fails the test.
fn crash_at_or_end(config: &std::path::Path, out: &std::path::Path, failpoint: &str) -> bool {
    let output = defectflow(config, Some(out), Some(failpoint)).output().expect("run defectflow");
    let stderr = String::from_utf8_lossy(&output.stderr);
    if output.status.success() {
        return false;
    }
    let point = failpoint.split(':').next().unwrap_or(failpoint);
    assert!(stderr.contains(&format!("failpoint {point}: aborting")), "{failpoint}: {stderr}");
    true
}

/// A config for the demo plant's recordings played in real time, without Kafka: the
/// work orders go to `work-orders.jsonl` only.
fn file_only_config(dir: &std::path::Path, truth: &defectflow_models::synth::GroundTruth) -> std::path::PathBuf {
    let reference = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/demo-plant/reference");
    let mut toml = format!(
        "[runtime]\nworkers = 2\n[anomaly]\ncommission_s = 0\n[model]\nbatch_size = 4\n[plant]\nreference = \"{}\"\n",
        reference.display()
    );
    toml.push_str(&crate::support::recorded_cameras(dir, truth, "realtime = true\n"));
    let path = dir.join("file-only.toml");
    std::fs::write(&path, toml).expect("config");
    path
}

/// Without Kafka, `work-orders.jsonl` is what the CMMS reads: a crash between appending
/// lines and recording them, then a SIGKILL at a random point, then a run to the end
/// leave the same file, byte for byte, as one run that was never interrupted.
#[test]
fn without_kafka_crashes_leave_each_line_of_the_file_once() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let truth = crate::support::demo_plant_footage(dir.path());
    let config = file_only_config(dir.path(), &truth);
    let clean = dir.path().join("clean");
    run_to_end(&config, Some(&clean));

    let out = dir.path().join("out");
    crash_at(&config, &out, "jsonl-after-append:1");
    let written = std::fs::metadata(out.join("work-orders.jsonl")).expect("the crashed run wrote lines").len();
    assert!(written > 0, "the crashed run appended lines before it stopped");
    let seed = fault_seed();
    let after = kill_times(seed, 1)[0];
    eprintln!("kill after {after:?} (DEFECTFLOW_FAULT_SEED={seed})");
    let mut run =
        defectflow(&config, Some(&out), None).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("run");
    std::thread::sleep(after);
    kill_live(&mut run);
    let stdout = run_to_end(&config, Some(&out));
    assert!(stdout.contains("written by an earlier run"), "{stdout}");

    let text = std::fs::read_to_string(out.join("work-orders.jsonl")).expect("file");
    assert_eq!(text, std::fs::read_to_string(clean.join("work-orders.jsonl")).expect("clean file"));
    let keys = checks::one_work_order_per_defect(&checks::jsonl_work_orders(&out), &checks::defects(&truth));
    checks::audited_once(&out.join("audit"), &keys);
}

/// A live camera without Kafka: killed with SIGKILL once its work order is in the file,
/// started again, the run takes up the work order the file shows open and its track, so
/// the same defect seen again goes on under that track instead of opening a second work
/// order; each revision once.
#[test]
fn without_kafka_a_killed_live_run_goes_on_with_the_work_order_its_file_left_open() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = live_pulley_config(dir.path(), 14, None);
    let out = dir.path().join("out");
    let mut first =
        defectflow(&config, Some(&out), None).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("run");
    wait_for_a_work_order_in_the_file(&out, &mut first, Duration::from_secs(60));
    first.kill().expect("SIGKILL");
    first.wait().expect("reap");
    let before = orders_in_file(&out);

    let restarted_ms = now_ms();
    let stdout = run_to_end(&config, Some(&out));
    let after = checks::jsonl_work_orders(&out);
    went_on_with_the_same_work_order_and_track(&before, &after, &out, restarted_ms, &stdout);
    // The audit log had not committed the first run's revisions when it was killed
    // (it commits every 10 s): the restart recovered them from its write-ahead log.
    checks::audited_once(&out.join("audit"), &after.iter().map(revision_key).collect());
    let recovered = std::fs::read_dir(out.join("audit/work_orders"))
        .expect("work_orders table")
        .flatten()
        .flat_map(|partition| std::fs::read_dir(partition.path()).into_iter().flatten().flatten())
        .any(|file| file.file_name().to_string_lossy().ends_with("-recovered.parquet"));
    assert!(recovered, "the first run's revisions are in files marked as recovered");
}

/// SIGTERM (what systemd, docker and Kubernetes send to stop a service) stops a live run
/// gracefully: exit code 0, the summary printed, and the audit log's work_orders table
/// holding exactly the (id, revision) pairs on the topic and in the file.
#[test]
fn sigterm_stops_a_live_run_with_every_output_flushed() {
    let broker = Broker::start();
    broker.create_topics(&TOPICS);
    let dir = tempfile::tempdir().expect("tempdir");
    let config = live_pulley_config(dir.path(), 300, Some((&broker.bootstrap, "sigterm")));
    let out = dir.path().join("out");
    let (stdout_path, stderr_path) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let file = |path: &std::path::Path| Stdio::from(std::fs::File::create(path).expect("log file"));
    let mut run = defectflow(&config, Some(&out), None)
        .stdout(file(&stdout_path))
        .stderr(file(&stderr_path))
        .spawn()
        .expect("run");
    wait_for_a_work_order_in_the_file(&out, &mut run, Duration::from_secs(90));
    // With rows written ahead that the audit log has not committed yet.
    wait_while_running(&mut run, "rows written ahead of the audit log's commit", Duration::from_secs(60), || {
        std::fs::metadata(out.join("audit/.ahead.jsonl")).is_ok_and(|m| m.len() > 0)
    });
    sigterm(&run);
    let status = run.wait().expect("reap");
    let (stdout, stderr) = (
        std::fs::read_to_string(&stdout_path).expect("stdout"),
        std::fs::read_to_string(&stderr_path).expect("stderr"),
    );
    assert!(status.success(), "a SIGTERM stop exits 0: {status:?}\n{stdout}\n{stderr}");
    assert!(stderr.contains("stopping:"), "the stop is announced: {stderr}");
    assert!(stdout.contains("cam-pulley"), "the summary printed: {stdout}");
    let keys: std::collections::BTreeSet<String> = checks::jsonl_work_orders(&out).iter().map(revision_key).collect();
    assert!(!keys.is_empty());
    let on_topic = work_orders(&broker.messages("defectflow.work-orders")).iter().map(revision_key).collect();
    assert_eq!(keys, on_topic, "the file and the topic");
    checks::audited_once(&out.join("audit"), &keys);
}

/// A stop that cannot finish (the audit disk never answers the last flush) ends after
/// `runtime.stop_timeout_s` with a non-zero exit code naming what was left.
#[test]
fn a_stop_that_cannot_finish_exits_after_its_timeout_naming_what_was_left() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = live_pulley_config(dir.path(), 300, None);
    let text = std::fs::read_to_string(&config).expect("config");
    std::fs::write(&config, text.replace("duration_s = 300", "duration_s = 300\nstop_timeout_s = 2")).expect("config");
    let (config, port) = with_metrics(&config);
    let mut run = crate::support::Drained::spawn(&mut defectflow(
        &config,
        Some(&dir.path().join("out")),
        Some("stall:audit-flush"),
    ));
    wait_until_ready(port, &mut run);
    sigterm(&run);
    let output = run.wait_with_output();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("the stop did not finish within runtime.stop_timeout_s = 2 s"), "{stderr}");
    assert!(stderr.contains("worker 0: delivering to the sinks and flushing them"), "what was left: {stderr}");
}

/// A live camera into a real broker, killed with SIGKILL at random points (the audit log
/// commits every 10 s, so some fall between a delivery and its audit commit) and started
/// again each time, then stopped with SIGTERM: the audit log's work_orders table holds
/// exactly the topic's (id, revision) pairs, each once.
#[test]
fn sigkill_at_random_points_of_a_live_run_leaves_the_audit_log_complete() {
    let broker = Broker::start();
    broker.create_topics(&TOPICS);
    let dir = tempfile::tempdir().expect("tempdir");
    let config = live_pulley_config(dir.path(), 300, Some((&broker.bootstrap, "live-kills")));
    let out = dir.path().join("out");
    let seed = fault_seed();
    let times = kill_times(seed, 3);
    eprintln!("kill times after the first revision (DEFECTFLOW_FAULT_SEED={seed}): {times:?}");
    for (i, after) in times.iter().enumerate() {
        let mut run =
            defectflow(&config, Some(&out), None).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("run");
        if i == 0 {
            assert!(broker.wait_for_revisions(0, &mut run), "the first run sent no work order");
        }
        std::thread::sleep(*after);
        kill_live(&mut run);
    }
    let (config, port) = with_metrics(&config);
    let mut last =
        defectflow(&config, Some(&out), None).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("run");
    // Up again (what the crash left taken up, the camera playing), then stopped.
    wait_until_ready(port, &mut last);
    sigterm(&last);
    assert!(last.wait().expect("reap").success(), "the graceful stop exits 0");

    let on_topic: Vec<String> =
        work_orders(&broker.messages("defectflow.work-orders")).iter().map(revision_key).collect();
    let unique: std::collections::BTreeSet<String> = on_topic.iter().cloned().collect();
    assert_eq!(unique.len(), on_topic.len(), "a revision twice on the topic: {on_topic:?}");
    checks::audited_once(&out.join("audit"), &unique);
}

/// The work-order revisions in the run's `work-orders.jsonl`, whole lines only (the run
/// may be writing the file).
fn orders_in_file(out: &std::path::Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(out.join("work-orders.jsonl")).unwrap_or_default();
    text.lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()?.get("work_order").cloned()).collect()
}

/// A copy of `config` serving its metrics and readiness on a free port of 127.0.0.1,
/// and that port.
fn with_metrics(config: &std::path::Path) -> (std::path::PathBuf, u16) {
    let port = crate::support::free_port();
    let text = std::fs::read_to_string(config).expect("config");
    let copy = config.with_extension("metrics.toml");
    std::fs::write(&copy, format!("{text}[metrics]\naddress = \"127.0.0.1:{port}\"\n")).expect("config");
    (copy, port)
}

/// Waits until `run` answers `/readyz` with 200: the model, the sinks and the cameras
/// up (after a crash, what it left taken up).
fn wait_until_ready(port: u16, run: &mut std::process::Child) {
    wait_while_running(run, "/readyz 200", Duration::from_secs(90), || {
        http_get(port, "/readyz").is_some_and(|(status, _)| status.starts_with("HTTP/1.1 200"))
    });
}

/// Waits until a work order is in the file of `run`, which must still be running.
fn wait_for_a_work_order_in_the_file(out: &std::path::Path, run: &mut std::process::Child, within: Duration) {
    wait_while_running(run, "a work order in the file", within, || !orders_in_file(out).is_empty());
}

/// Sends SIGTERM to a run this test started (by its PID).
fn sigterm(run: &std::process::Child) {
    let sent = std::process::Command::new("kill").args(["-TERM", &run.id().to_string()]).status().expect("kill");
    assert!(sent.success(), "SIGTERM sent");
}
