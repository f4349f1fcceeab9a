//! The Kafka sink against a real Kafka-protocol broker (tansu) on 127.0.0.1, read back
//! by an independent client (Python confluent-kafka): every work-order revision lands
//! on the topic exactly once, valid against the JSON Schema, one work order per defect,
//! across crashes (a kill -9 while sending, between sending and recording progress,
//! after recording it) and a full replay, as a run that never crashed.

mod support;

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::kafka::*;
use support::outputs::*;

#[test]
fn each_revision_reaches_the_topic_once_across_crashes_and_replays() {
    let Plant { broker, dir, truth, config } = plant("");

    // Every run writes the audit log to the same folder.
    let out = dir.path().join("out");
    // kill -9 while the first run is sending: once its first revisions are delivered.
    let mut child =
        defectflow(&config, Some(&out), None).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("run");
    kill_once_sending(&out, &mut child);
    let after_kill = broker.messages("defectflow.work-orders").len();
    assert!(after_kill > 0, "the killed run had delivered revisions");
    // Crash after sending the next messages, before their progress is recorded.
    crash_at(&config, &out, "after-send:1");
    assert!(broker.messages("defectflow.work-orders").len() > after_kill, "the crashed run had sent more revisions");
    // Crash again, after recording progress the second time.
    crash_at(&config, &out, "after-progress:2");

    // Then a run to the end, and a full replay, which sends nothing new.
    let before = broker.output_messages();
    let stdout = run_to_end(&config, Some(&out));
    assert_eq!(sent_to_kafka(&stdout), broker.output_messages() - before, "the summary counts what landed: {stdout}");
    let first = broker.messages("defectflow.work-orders");
    let stdout = run_to_end(&config, Some(&out));
    assert!(stdout.contains("kafka: 0 sent"), "a replay sends nothing: {stdout}");
    let messages = broker.messages("defectflow.work-orders");
    assert_eq!(messages.len(), first.len(), "the replay added messages");

    check_exactly_once(&messages, &out, &truth);
    // The other outputs are CloudEvents too, each valid against its subject's schema.
    let staged = delivered(&broker.messages("defectflow.parts-staging"));
    assert!(!staged.is_empty(), "the plant's work orders reserve parts");
    for topic in ["defectflow.alerts", "defectflow.dead-letter"] {
        delivered(&broker.messages(topic));
    }
    // The audit log, written through all those runs, has every revision once.
    let audited = audited_revisions(&out.join("audit"));
    let distinct: BTreeSet<&String> = audited.iter().collect();
    assert_eq!(distinct.len(), audited.len(), "duplicate rows in the audit log");
    assert_eq!(distinct.into_iter().cloned().collect::<BTreeSet<_>>(), delivered(&messages).into_keys().collect());
    // Progress records are JSON naming the closed time and the output offsets.
    let progress = broker.messages("defectflow.progress");
    let last: Value = serde_json::from_str(progress.last().expect("progress")["value"].as_str().expect("value"))
        .expect("progress json");
    assert!(last["closed_before"].as_u64().is_some_and(|t| t >= 1_790_000_000_000), "{last}");
    let recorded: i64 = last["offsets"]["defectflow.work-orders"]
        .as_object()
        .expect("offsets")
        .values()
        .map(|v| v.as_i64().unwrap_or(0))
        .sum();
    assert_eq!(recorded as usize, messages.len(), "the last record covers every message: {last}");
    // Every topic, the file and every audit table hold what a run that never crashed
    // writes from the same recording.
    same_as_uncrashed(&run_outputs(&broker, "defectflow.", &out), &uncrashed_run(&broker, dir.path(), &config));
}

/// A run that crashed between sending a batch and recording it left messages after its
/// last record; the next run's first record closes a shorter time than that batch did.
/// A third start still knows every message was delivered (and the run that sends past
/// them records offsets past them): nothing goes out twice. The crash is a copy of the
/// earlier record sent after the batch's own, which is what the restart then reads.
#[test]
fn messages_sent_ahead_of_a_record_stay_known_after_a_shorter_record() {
    use defectflow::sinks::Sink;
    use defectflow::sinks::kafka::KafkaSink;
    use defectflow_schemas::{DeadLetter, Emitted};

    let broker = Broker::start();
    broker.create_topics(&TOPICS);
    let config: defectflow::kafka::KafkaConfig =
        toml::from_str(&format!("brokers = \"{}\"\nsink_id = \"ahead\"\n", broker.bootstrap)).expect("config");
    let letter = |at_ms: u64| {
        Emitted::DeadLetter(DeadLetter {
            source: "inventory".into(),
            payload: format!("#{at_ms}"),
            reason: "test".into(),
            at_ms,
        })
    };
    let start = || KafkaSink::start(&config).unwrap_or_else(|e| panic!("{e}"));

    let mut first = start();
    first.deliver(4, &[(2, letter(2))]).expect("deliver");
    let record = broker.messages("defectflow.progress").last().expect("a progress record")["value"].clone();
    first.deliver(10, &[(8, letter(8))]).expect("deliver");
    drop(first);
    broker.produce("defectflow.progress", &[serde_json::json!({"key": "ahead", "value": record})]);

    let mut second = start();
    second.deliver(6, &[(2, letter(2)), (5, letter(5))]).expect("deliver");
    assert_eq!(second.sent, 1, "only the new letter went out");
    drop(second);

    let mut third = start();
    for (time, message) in [(2, letter(2)), (5, letter(5)), (8, letter(8))] {
        assert_eq!(third.delivered_earlier(time, &message), Some(true), "the letter of time {time} is known");
    }
    third.deliver(12, &[(2, letter(2)), (5, letter(5)), (8, letter(8)), (11, letter(11))]).expect("deliver");
    assert_eq!(third.sent, 1, "only the letter of time 11 went out");
    drop(third);

    let sent: Vec<String> = broker
        .messages("defectflow.dead-letter")
        .iter()
        .map(|m| m["headers"]["defectflow-time"].as_str().expect("the dataflow time").to_owned())
        .collect();
    assert_eq!(sent, ["2", "8", "5", "11"], "each letter once, in the order sent");
    // The third run's record covers all four: a restart reads nothing after it.
    let last: Value = serde_json::from_str(
        broker.messages("defectflow.progress").last().expect("a progress record")["value"].as_str().expect("text"),
    )
    .expect("json");
    assert_eq!(last["closed_before"], 12, "{last}");
    assert_eq!(last["offsets"]["defectflow.dead-letter"]["0"], 4, "{last}");
}

#[test]
fn transactions_and_a_broker_outage_lose_and_duplicate_nothing() {
    let Plant { broker, dir, truth, config } = plant("transactional = true\n");
    let port = support::free_port();
    let text = std::fs::read_to_string(&config).expect("config");
    let text = text.replacen("[[cameras]]", &format!("[metrics]\naddress = \"127.0.0.1:{port}\"\n[[cameras]]"), 1);
    std::fs::write(&config, text).expect("config");
    let out = dir.path().join("out");
    let mut child = support::Drained::spawn(&mut defectflow(&config, Some(&out), None));
    // Once the first revisions are out, the broker stops answering for 30 s (SIGSTOP:
    // connections stay open, nothing is acknowledged), then comes back.
    assert!(wait_for_first_delivery(port, &mut child), "no revision reached the topic");
    let pid = broker.child.id().to_string();
    assert!(Command::new("kill").args(["-STOP", &pid]).status().expect("kill").success());
    // Meanwhile the run says its output is stalled (and holds its cameras back).
    let stopped = Instant::now();
    let mut stalled = false;
    while stopped.elapsed() < Duration::from_secs(30) {
        let shown = http_get(port, "/metrics").and_then(|(_, body)| sample(&body, "defectflow_output_stalled"));
        stalled |= shown == Some(1.0);
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(Command::new("kill").args(["-CONT", &pid]).status().expect("kill").success());
    assert!(stalled, "the metrics never showed the output stalled during the outage");
    let output = child.wait_with_output();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "run failed: {stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    check_exactly_once(&broker.messages("defectflow.work-orders"), &out, &truth);
    // A replay after it sends nothing.
    let replay = run_to_end(&config, None);
    assert!(replay.contains("kafka: 0 sent"), "the replay differs from the run\nreplay: {replay}\nrun: {stdout}");
    check_exactly_once(&broker.messages("defectflow.work-orders"), &out, &truth);
    // Every topic (as a read_committed consumer sees it), the file and every audit table
    // as a run without the outage.
    same_as_uncrashed(&run_outputs(&broker, "defectflow.", &out), &uncrashed_run(&broker, dir.path(), &config));
}

#[test]
fn bad_input_on_every_topic_goes_to_the_dead_letter_topic_and_the_run_goes_on() {
    let Plant { broker, dir, truth, config } = plant("");
    let inputs = ["defectflow.wo-events", "defectflow.inventory", "defectflow.technicians", "defectflow.assets"];
    let bad = [
        serde_json::json!({"value": "not json {"}),
        serde_json::json!({"value": "{\"work_order_id\": 7, \"part_id\": 7, \"technician_id\": 7, \"asset_id\": 7, \"delta\": 1}"}),
        serde_json::json!({"bytes": 200_000}),
    ];
    for topic in inputs {
        broker.produce(topic, &bad);
    }
    let unknown =
        serde_json::json!({"work_order_id": "WO-0000000000000000", "event": "started", "at_ms": 1_790_000_000_500u64});
    broker.produce("defectflow.wo-events", &[serde_json::json!({"value": unknown.to_string()})]);
    let received =
        serde_json::json!({"part_id": "BRG-22220", "delta": 4, "at_ms": 1_790_000_000_500u64, "reason": "received"});
    broker.produce("defectflow.inventory", &[serde_json::json!({"value": received.to_string()})]);
    // A tombstone on a compacted input is a delete, not a dead letter (the night-shift
    // technician leaves; what a delete does is the parser's and the ledger's tests'); on
    // the event topic it deletes nothing and is one.
    broker.produce("defectflow.technicians", &[serde_json::json!({"key": "T-DEV", "value": null})]);
    broker.produce("defectflow.wo-events", &[serde_json::json!({"key": "WO-0000000000000001", "value": null})]);
    // A later minor version's field is ignored, not a dead letter.
    let newer = serde_json::json!({"technician_id": "T-EVE", "name": "Eve", "skills": ["painting"], "zone": "north",
        "shift": {"start_hour": 0, "end_hour": 23, "break_minutes": 30}, "badge": "0042"});
    broker.produce("defectflow.technicians", &[serde_json::json!({"key": "T-EVE", "value": newer.to_string()})]);

    let out = dir.path().join("out");
    let stdout = run_to_end(&config, Some(&out));
    assert!(stdout.contains("dead letters: 14"), "{stdout}");

    let letters: Vec<Value> = broker
        .messages("defectflow.dead-letter")
        .iter()
        .map(|m| serde_json::from_str(m["value"].as_str().expect("value")).expect("json"))
        .collect();
    assert_eq!(letters.len(), 14, "{letters:#?}");
    for topic in inputs {
        let of_topic: Vec<&Value> = letters
            .iter()
            .filter(|l| l["source"].as_str().is_some_and(|s| s.starts_with(&format!("{topic}/"))))
            .collect();
        let reasons: Vec<&str> = of_topic.iter().filter_map(|l| l["reason"].as_str()).collect();
        if topic == "defectflow.wo-events" {
            assert!(reasons.get(3).is_some_and(|r| r.contains("not compacted")), "{reasons:?}");
        }
        let reasons = &reasons[..reasons.len().min(3)];
        assert_eq!(of_topic.len(), if topic == "defectflow.wo-events" { 4 } else { 3 }, "{topic}: {reasons:?}");
        assert!(reasons[0].starts_with("not JSON"), "{reasons:?}");
        assert!(reasons[1].starts_with("not a valid record"), "{reasons:?}");
        assert!(reasons[2].contains("200000 bytes exceed"), "{reasons:?}");
        assert_eq!(of_topic[0]["payload"], "not json {", "the original bytes");
    }
    assert!(
        letters
            .iter()
            .any(|l| l["reason"].as_str().is_some_and(|r| r.contains("unknown work order `WO-0000000000000000`"))),
        "{letters:#?}"
    );
    // The run went on: every work order delivered once.
    check_exactly_once(&broker.messages("defectflow.work-orders"), &out, &truth);
    // The inputs were committed: a second run reads none of them again.
    let stdout = run_to_end(&config, None);
    assert!(stdout.contains("kafka: 0 sent"), "{stdout}");
    assert_eq!(broker.messages("defectflow.dead-letter").len(), 14);
}

#[test]
fn metrics_and_health_are_served_while_it_runs() {
    let Plant { broker: _broker, dir: _dir, config, .. } = plant("");
    let port = support::free_port();
    let mut text = std::fs::read_to_string(&config).expect("config");
    text = text.replacen("[[cameras]]", &format!("[metrics]\naddress = \"127.0.0.1:{port}\"\n[[cameras]]"), 1);
    std::fs::write(&config, text).expect("config");
    let mut child = defectflow(&config, None, None).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("run");
    let deadline = Instant::now() + Duration::from_secs(120);
    let body = loop {
        assert!(Instant::now() < deadline, "no work order showed in the metrics");
        assert!(child.try_wait().expect("wait").is_none(), "the run ended before its metrics showed a work order");
        if let Some((status, body)) = http_get(port, "/metrics") {
            assert_eq!(status, "HTTP/1.1 200 OK");
            if sample(&body, "defectflow_kafka_messages_sent_total").is_some_and(|n| n > 0.0) {
                break body;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(sample(&body, "defectflow_frames_in_total{camera=\"cam-pulley\"}").is_some_and(|n| n > 0.0), "{body}");
    assert!(sample(&body, "defectflow_frames_late_total{camera=\"cam-pulley\"}").is_some(), "{body}");
    assert_eq!(sample(&body, "defectflow_camera_state{camera=\"cam-pulley\",state=\"playing\"}"), Some(1.0), "{body}");
    assert!(sample(&body, "defectflow_inference_seconds_count").is_some_and(|n| n > 0.0), "{body}");
    assert!(sample(&body, "defectflow_detection_to_work_order_seconds_count").is_some_and(|n| n > 0.0), "{body}");
    assert!(sample(&body, "defectflow_work_orders_open").is_some_and(|n| n >= 1.0), "{body}");
    assert_eq!(sample(&body, "defectflow_kafka_delivery_errors_total"), Some(0.0), "{body}");
    // The live board: the crack's work order in the backlog at its priority.
    let backlog: f64 = ["P1", "P2", "P3", "P4"]
        .iter()
        .filter_map(|p| sample(&body, &format!("defectflow_backlog_work_orders{{priority=\"{p}\"}}")))
        .sum();
    assert!(backlog >= 1.0, "{body}");
    // Every metric the shipped dashboard and alert rules query is served.
    for queried in dashboard_and_alert_metrics() {
        let family = ["_bucket", "_sum", "_count"].iter().fold(queried.as_str(), |n, s| n.strip_suffix(s).unwrap_or(n));
        assert!(body.contains(&format!("# TYPE {family} ")), "{queried} is queried by deploy/ but not served:\n{body}");
    }
    let (status, health) = http_get(port, "/healthz").expect("healthz");
    assert_eq!((status.as_str(), health.as_str()), ("HTTP/1.1 200 OK", "ok\n"));
    assert!(child.wait().expect("wait").success());
}

/// A live camera (no recording to replay): the run is killed with SIGKILL once the
/// defect's work order is on the topic, and started again. The restarted run takes up
/// the work order it left open, so the same defect, tracked again from new frames,
/// revises that work order instead of opening a second one; no (id, revision) twice.
#[test]
fn a_live_run_killed_and_restarted_goes_on_with_the_work_order_it_left_open() {
    let broker = Broker::start();
    broker.create_topics(&TOPICS);
    let dir = tempfile::tempdir().expect("tempdir");
    let config = live_pulley_config(dir.path(), 14, Some((&broker.bootstrap, "live-restart")));
    let out = dir.path().join("out");
    let mut first =
        defectflow(&config, Some(&out), None).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("run");
    assert!(broker.wait_for_revisions(0, &mut first), "the first run sent no work order");
    first.kill().expect("SIGKILL");
    first.wait().expect("reap");
    let before: Vec<Value> = work_orders(&broker.messages("defectflow.work-orders"));

    let restarted_ms = now_ms();
    let stdout = run_to_end(&config, Some(&out));
    let after = work_orders(&broker.messages("defectflow.work-orders"));
    went_on_with_the_same_work_order_and_track(&before, &after, &out, restarted_ms, &stdout);
    // The first run's revisions were not committed to the audit log when it was killed:
    // the restart recovered them from its write-ahead log. The audit log holds exactly
    // the topic's (id, revision) pairs, each once.
    let on_topic: BTreeSet<String> = after.iter().map(revision_key).collect();
    let audited = audited_revisions(&out.join("audit"));
    assert_eq!(audited.len(), on_topic.len(), "one audit row per revision: {audited:?}");
    assert_eq!(audited.into_iter().collect::<BTreeSet<_>>(), on_topic);
}

/// A live run's work order completed by the CMMS consumed its parts; a restart (a new
/// run, nothing new on the topics) takes them off the stock again: the pulley's one
/// shell is gone, so the crack seen again opens a work order, reopening the completed
/// one, whose shell is not in stock.
#[test]
fn the_parts_a_completed_work_order_consumed_stay_consumed_after_a_restart() {
    let broker = Broker::start();
    broker.create_topics(&TOPICS);
    let dir = tempfile::tempdir().expect("tempdir");
    let config = live_pulley_config(dir.path(), 20, Some((&broker.bootstrap, "consumed")));
    let shell = |w: &Value| -> Value {
        let parts = w["parts"].as_array().expect("parts");
        parts.iter().find(|p| p["part_id"] == "PUL-600-SHELL").cloned().unwrap_or(Value::Null)
    };

    let mut first = defectflow(&config, Some(&dir.path().join("out")), None)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run");
    assert!(broker.wait_for_revisions(0, &mut first), "the first run sent no work order");
    let created = work_orders(&broker.messages("defectflow.work-orders")).remove(0);
    assert_eq!(shell(&created)["available"], true, "the one shell in stock is reserved: {created}");
    let id = created["work_order_id"].as_str().expect("id").to_owned();
    let completed = serde_json::json!({"work_order_id": id, "event": "completed", "at_ms": now_ms()});
    broker.produce("defectflow.wo-events", &[serde_json::json!({"value": completed.to_string()})]);
    assert!(first.wait().expect("wait").success(), "the first run failed");
    let first_run = work_orders(&broker.messages("defectflow.work-orders"));
    assert!(
        first_run.iter().any(|w| w["work_order_id"] == id.as_str() && w["status"] == "completed"),
        "the completion was applied: {first_run:#?}"
    );

    let output = defectflow(&config, Some(&dir.path().join("again")), None).output().expect("run");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the restart failed: {stderr}");
    // The shell and the two bearings of the completed work order.
    assert!(stderr.contains("parts_consumed=2"), "{stderr}");
    let second_run: Vec<Value> = work_orders(&broker.messages("defectflow.work-orders"))
        .into_iter()
        .filter(|w| w["work_order_id"] != id.as_str())
        .collect();
    assert!(!second_run.is_empty(), "the crack seen again opened no work order: {stderr}");
    for w in &second_run {
        assert_eq!(shell(w)["available"], false, "the consumed shell came back: {w}");
        // The defect came back after its repair: the new work order says which it reopens.
        assert_eq!(w["reopens"].as_str(), Some(id.as_str()), "{w}");
    }
    assert!(broker.messages("defectflow.dead-letter").is_empty(), "the completion was not read again");
}

/// The metric names the Grafana dashboard's and the Prometheus alert rules' expressions
/// under deploy/ name.
fn dashboard_and_alert_metrics() -> BTreeSet<String> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("deploy/grafana/defectflow.json")).expect("dashboard"))
            .expect("the dashboard is JSON");
    let mut expressions: Vec<String> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(str::to_owned))
        .collect();
    let rules = std::fs::read_to_string(root.join("deploy/prometheus/alerts.yml")).expect("alert rules");
    expressions.extend(rules.lines().filter_map(|l| l.trim().strip_prefix("expr:").map(str::to_owned)));
    assert!(expressions.len() > 20, "{expressions:?}");
    let mut names = BTreeSet::new();
    for expression in expressions {
        for (at, _) in expression.match_indices("defectflow_") {
            let name: String =
                expression[at..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            names.insert(name);
        }
    }
    names
}
