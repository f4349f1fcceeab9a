//! `defectflow bridge` against local servers that answer as IBM Maximo, SAP PM,
//! MaintainX and a webhook do, fed through a real Kafka-protocol broker: every revision
//! reaches the CMMS once and in order per work order through 503s, 429s, a 20 s outage
//! and SIGKILLs of the bridge; a revision the CMMS refuses is a dead letter with its
//! answer; a status changed in the CMMS comes back as a wo-event, and closes the work
//! order in a live run.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::cmms::{FakeCmms, Faults, Flavor, SECRET};
use support::kafka::*;

const SECRET_VARIABLE: &str = "DEFECTFLOW_TEST_CMMS_SECRET";

/// A valid work-order revision (the work-order schema's current version).
fn revision(id: &str, revision: u32, asset: &str) -> Value {
    let kind = if revision == 1 { "created" } else { "updated" };
    json!({
        "schema_version": "1.2.0", "work_order_id": id, "revision": revision, "revision_kind": kind,
        "status": "open", "hold_reason": null, "work_type": "corrective", "due_at_ms": 1_795_700_339_856u64,
        "asset_id": asset, "asset_name": "Conveyor 101 head pulley", "camera_id": "cam-pulley",
        "track_id": format!("TR-{id}"), "defect_class": "crack",
        "severity": {"score": 40.0 + f64::from(revision), "priority": "P2",
                     "components": {"size": 5.0, "growth": 10.0 + f64::from(revision), "criticality": 25.0, "history": 0.0}},
        "procedure": {"procedure_id": "PR-PUL-CRACK", "title": "Inspect and replace cracked pulley shell",
                      "required_skill": "mechanical", "estimated_hours": 6.0, "steps": ["Lock out conveyor 101", "Replace the shell"]},
        "parts": [{"part_id": "PUL-600-SHELL", "quantity": 1, "available": true}],
        "technician_id": "T-ADA", "evidence": null,
        "detected_at_ms": 1_795_441_139_856u64, "revised_at_ms": 1_795_441_139_856u64 + u64::from(revision) * 1000,
        "reopens": null, "model_version": "fd043778fd0c", "shadow": false
    })
}

/// `count` work orders of `revisions` revisions each on `topic` (ids `WO-<prefix>…`, the
/// prefix a hex digit), a work order's revisions in one of 3 partitions and in order.
fn produce_work_orders(broker: &Broker, topic: &str, prefix: &str, count: usize, revisions: u32) -> Vec<String> {
    let ids: Vec<String> = (0..count).map(|i| format!("WO-{prefix}{i:015x}")).collect();
    let mut messages = Vec::new();
    for r in 1..=revisions {
        for (i, id) in ids.iter().enumerate() {
            let value = revision(id, r, "CV-101-PUL").to_string();
            messages.push(json!({"value": value, "key": id, "partition": i % 3}));
        }
    }
    broker.produce(topic, &messages);
    ids
}

fn bridge_config(dir: &Path, broker: &Broker, cmms: &FakeCmms, mapping: &str, topic: &str) -> PathBuf {
    let path = dir.join(format!("bridge-{mapping}.toml"));
    std::fs::write(
        &path,
        format!(
            "[kafka]\nbrokers = \"{}\"\n[kafka.topics]\nwork_orders = \"{topic}\"\n\
             [cmms]\nmapping = \"{mapping}\"\nurl = \"{}\"\nsecret_from_env = \"{SECRET_VARIABLE}\"\n\
             state_dir = \"state-{mapping}\"\ngroup = \"bridge-{mapping}\"\nconcurrency = 8\nmax_backoff_s = 2\n\
             timeout_s = 5\npoll_s = 0.5\npoll_lookback_s = 600\n\
             [cmms.values]\nsiteid = \"BEDFORD\"\norgid = \"EAGLENA\"\nnotification_type = \"M2\"\n\
             technical_object_type = \"EAMS_EQUI\"\nplanning_plant = \"1010\"\n",
            broker.bootstrap, cmms.url
        ),
    )
    .expect("config");
    path
}

fn bridge(config: &Path, until_caught_up: bool) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_defectflow"));
    command.args(["bridge", "--config", config.to_str().expect("utf-8")]).env(SECRET_VARIABLE, SECRET);
    if until_caught_up {
        command.arg("--until-caught-up");
    }
    command
}

fn start_bridge(config: &Path) -> Child {
    bridge(config, false).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("start the bridge")
}

fn wait_until(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn distinct(applied: &[(String, u32)]) -> usize {
    applied.iter().collect::<std::collections::BTreeSet<_>>().len()
}

/// Each (work order, revision) applied once, a work order's revisions in order, and
/// every one of `ids` up to `revisions`.
fn once_and_in_order(applied: &[(String, u32)], ids: &[String], revisions: u32) {
    let mut by_order: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
    for (id, r) in applied {
        by_order.entry(id.as_str()).or_default().push(*r);
    }
    for id in ids {
        let got = by_order.get(id.as_str()).cloned().unwrap_or_default();
        assert_eq!(got, (1..=revisions).collect::<Vec<_>>(), "{id}: revisions applied, in the order applied");
    }
}

fn sigterm(child: &mut Child) {
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let status = child.wait().expect("wait");
    assert!(status.success(), "the bridge stopped with {status}");
}

/// The wo-events on the topic: (work order, event, reason).
fn wo_events(broker: &Broker) -> Vec<(String, String, Option<String>)> {
    let messages = broker.messages("defectflow.wo-events");
    // Headers, CloudEvents attributes and the wo-event schema, checked.
    assert!(delivered(&messages).values().all(|n| *n == 1), "a wo-event twice: {messages:#?}");
    messages
        .iter()
        .map(|m| {
            let v: Value = serde_json::from_str(m["value"].as_str().expect("value")).expect("json");
            let reason = v["reason"].as_str().map(str::to_owned);
            (
                v["work_order_id"].as_str().unwrap_or_default().to_owned(),
                v["event"].as_str().unwrap_or_default().to_owned(),
                reason,
            )
        })
        .collect()
}

#[test]
fn maximo_gets_every_revision_once_in_order_through_faults_an_outage_and_kills() {
    let broker = Broker::start();
    broker.create_topics(&["wo-maximo:3", "defectflow.wo-events:1", "defectflow.dead-letter:1"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let faults = Faults {
        unavailable_every: Some(7),
        limited_every: Some(13),
        unknown_asset: Some("NO-SUCH".into()),
        ..Faults::default()
    };
    let cmms = FakeCmms::start(Flavor::Maximo, faults);
    let ids = produce_work_orders(&broker, "wo-maximo", "a", 40, 3);
    let refused = "WO-bad0000000000001";
    broker.produce("wo-maximo", &[json!({"value": revision(refused, 1, "NO-SUCH").to_string(), "partition": 0})]);
    let config = bridge_config(dir.path(), &broker, &cmms, "maximo", "wo-maximo");

    // Killed twice: once while it runs, once while the CMMS is down.
    let mut run = start_bridge(&config);
    wait_until("30 revisions applied", Duration::from_secs(60), || distinct(&cmms.applied()) >= 30);
    run.kill().expect("SIGKILL");
    run.wait().expect("reap");
    let mut run = start_bridge(&config);
    wait_until("70 revisions applied", Duration::from_secs(60), || distinct(&cmms.applied()) >= 70);
    cmms.set_down(true);
    let down = Instant::now();
    std::thread::sleep(Duration::from_secs(8));
    run.kill().expect("SIGKILL");
    run.wait().expect("reap");
    let mut run = start_bridge(&config);
    std::thread::sleep(Duration::from_secs(20).saturating_sub(down.elapsed()));
    let during = cmms.applied().len();
    cmms.set_down(false);
    wait_until("all 120 revisions applied", Duration::from_secs(90), || distinct(&cmms.applied()) >= 120);
    assert!(during < 120, "the outage came too late to matter");

    // Statuses changed in Maximo come back as wo-events, each once; the labour booked
    // comes with the completion.
    cmms.set_field(&ids[0], "actlabhrs", serde_json::json!(2.5));
    cmms.set_status(&ids[0], "COMP");
    cmms.set_status(&ids[1], "WMATL");
    cmms.set_status(&ids[2], "INPRG");
    cmms.set_status(&ids[3], "WSCH");
    wait_until("3 wo-events", Duration::from_secs(30), || broker.messages("defectflow.wo-events").len() >= 3);
    // CLOSE after COMP is the same event: not sent again.
    cmms.set_status(&ids[0], "CLOSE");
    std::thread::sleep(Duration::from_secs(3));
    sigterm(&mut run);

    let applied = cmms.applied();
    once_and_in_order(&applied, &ids, 3);
    assert_eq!(applied.len(), 120, "a revision applied twice: {applied:?}");
    let hours: Vec<(String, Value)> = (broker.messages("defectflow.wo-events").iter())
        .map(|m| serde_json::from_str::<Value>(m["value"].as_str().expect("value")).expect("json"))
        .map(|v| (v["event"].as_str().unwrap_or_default().to_owned(), v["actual_hours"].clone()))
        .collect();
    assert!(hours.iter().all(|(event, h)| (event == "completed") == (h == &serde_json::json!(2.5))), "{hours:?}");
    let mut events = wo_events(&broker);
    events.sort();
    let mut expected = vec![
        (ids[0].clone(), "completed".to_owned(), None),
        (ids[1].clone(), "on_hold".to_owned(), Some("waiting_for_parts".to_owned())),
        (ids[2].clone(), "started".to_owned(), None),
    ];
    expected.sort();
    assert_eq!(events, expected);

    // The refused revision: a dead letter with Maximo's answer, never applied (sent again
    // if the bridge was killed before committing past it: the same idempotency key).
    let letters = broker.messages("defectflow.dead-letter");
    assert_eq!(delivered(&letters).len(), 1, "{letters:#?}");
    let letter: Value = serde_json::from_str(letters[0]["value"].as_str().expect("value")).expect("json");
    let reason = letter["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("HTTP 400") && reason.contains("asset is not valid"), "{letter}");
    assert!(letter["payload"].as_str().is_some_and(|p| p.contains(refused)), "{letter}");
    assert_eq!(letter["source"], "cmms:maximo");
    assert!(applied.iter().all(|(id, _)| id != refused));

    // Everything acknowledged was committed: a new bridge has nothing to send.
    let writes = cmms.writes();
    let output = bridge(&config, true).output().expect("bridge");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(cmms.writes(), writes, "a caught-up bridge wrote again");

    // A bridge that lost its journal and its offsets (a new state folder and group)
    // sends every revision again: Maximo's transactionid answers each as a duplicate,
    // which counts as applied; nothing is applied twice.
    let text = std::fs::read_to_string(&config).expect("config");
    let lost =
        text.replace("state_dir = \"state-maximo\"", "state_dir = \"lost\"").replace("bridge-maximo", "bridge-lost");
    let lost_config = dir.path().join("lost.toml");
    std::fs::write(&lost_config, lost).expect("config");
    let output = bridge(&lost_config, true).output().expect("bridge");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let summary: Value = serde_json::from_slice(&output.stdout).expect("summary");
    assert_eq!((summary["applied"].as_u64(), summary["already_applied"].as_u64()), (Some(0), Some(120)), "{summary}");
    assert_eq!(summary["refused"], 1, "{summary}");
    assert_eq!(cmms.applied().len(), 120, "applied twice");
}

/// SAP PM, MaintainX and a webhook, each through 503s and 429s: every revision once
/// and in order, statuses changed in the CMMS back as wo-events (MaintainX's CANCELED
/// among them), and for SAP PM, which keeps no idempotency key, a bridge that lost its
/// journal and offsets finds each notification before creating it: none made twice.
#[test]
fn sap_pm_maintainx_and_a_webhook_each_get_their_own_requests() {
    let broker = Broker::start();
    broker.create_topics(&["wo-sap:3", "wo-mx:3", "wo-hook:3", "defectflow.wo-events:1", "defectflow.dead-letter:1"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let sap_changes: &[(&str, &str)] = &[("4", "completed")];
    let maintainx_changes: &[(&str, &str)] = &[("ON_HOLD", "on_hold"), ("CANCELED", "cancelled")];
    for (flavor, mapping, topic, prefix, changes) in [
        (Flavor::SapPm, "sap-pm", "wo-sap", "b", sap_changes),
        (Flavor::MaintainX, "maintainx", "wo-mx", "c", maintainx_changes),
        (Flavor::Webhook, "webhook", "wo-hook", "d", &[]),
    ] {
        let faults = Faults { unavailable_every: Some(7), limited_every: Some(5), ..Faults::default() };
        let cmms = FakeCmms::start(flavor, faults);
        let ids = produce_work_orders(&broker, topic, prefix, 6, 2);
        let config = bridge_config(dir.path(), &broker, &cmms, mapping, topic);
        let mut run = start_bridge(&config);
        wait_until(&format!("{mapping}: 12 revisions applied"), Duration::from_secs(60), || cmms.applied().len() >= 12);
        once_and_in_order(&cmms.applied(), &ids, 2);
        for (n, (status, event)) in changes.iter().enumerate() {
            let id = &ids[4 + n];
            let before = wo_events(&broker).len();
            cmms.set_status(id, status);
            wait_until(&format!("{mapping}: a wo-event"), Duration::from_secs(30), || {
                wo_events(&broker).len() > before
            });
            let events = wo_events(&broker);
            assert_eq!(events.last().map(|(id, e, _)| (id.as_str(), e.as_str())), Some((id.as_str(), *event)));
        }
        sigterm(&mut run);
        assert_eq!(cmms.applied().len(), 12, "{mapping}: {:?}", cmms.applied());
        assert!(broker.messages("defectflow.dead-letter").is_empty(), "{mapping}: dead letters");
        if flavor == Flavor::SapPm {
            let text = std::fs::read_to_string(&config).expect("config");
            let lost = text
                .replace("state_dir = \"state-sap-pm\"", "state_dir = \"lost-sap\"")
                .replace("bridge-sap-pm", "bridge-lost-sap");
            assert_ne!(lost, text, "the lost bridge has its own state and group");
            let lost_config = dir.path().join("lost-sap.toml");
            std::fs::write(&lost_config, lost).expect("config");
            let output = bridge(&lost_config, true).output().expect("bridge");
            assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
            let notifications = cmms.state.lock().expect("state").records.len();
            assert_eq!(notifications, 6, "sap-pm: a notification made twice");
            for id in &ids {
                let record = cmms.record(id).expect("its notification");
                assert!(record.fields.to_string().contains(" revision 2"), "sap-pm: {id} ends at its last revision");
            }
        }
    }
}

/// MaintainX keeps no idempotency key and cannot be searched by an external id. Its
/// server carries out each create and answers 3 s later; the bridge is SIGKILLed after
/// every create was carried out and before any answer came. The next bridge finds each
/// among the work orders listed as changed since it journalled the create: none is made
/// twice, and each record holds its work order's last revision.
#[test]
fn maintainx_creates_in_flight_at_a_sigkill_are_not_made_twice() {
    let broker = Broker::start();
    broker.create_topics(&["wo-mx-kill:3", "defectflow.wo-events:1", "defectflow.dead-letter:1"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let cmms = FakeCmms::start(Flavor::MaintainX, Faults { answer_late_ms: 3000, ..Faults::default() });
    let ids = produce_work_orders(&broker, "wo-mx-kill", "e", 4, 1);
    let config = bridge_config(dir.path(), &broker, &cmms, "maintainx", "wo-mx-kill");
    let records = || cmms.state.lock().expect("state").records.len();
    let mut run = start_bridge(&config);
    wait_until("4 creates carried out", Duration::from_secs(30), || records() >= 4);
    run.kill().expect("SIGKILL");
    run.wait().expect("reap");
    assert_eq!(cmms.applied().len(), 4, "killed before any answer could be journalled");
    cmms.state.lock().expect("state").faults.answer_late_ms = 0;

    let output = bridge(&config, true).output().expect("bridge");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(records(), 4, "a work order made twice: {:?}", cmms.applied());
    for id in &ids {
        let record = cmms.record(id).expect("its work order");
        assert!(record.fields["description"].as_str().is_some_and(|d| d.contains(&format!("work order {id} "))));
    }
    let summary: Value = serde_json::from_slice(&output.stdout).expect("summary");
    assert_eq!(summary["applied"].as_u64(), Some(4), "each brought up to date once: {summary}");
    assert!(summary["lookups"].as_u64() >= Some(4), "each looked for: {summary}");
}

/// The loop closed: a live run's work order reaches Maximo; completed there, it comes
/// back as a wo-event, the run closes the work order, and the closing revision reaches
/// Maximo too.
#[test]
fn a_work_order_completed_in_the_cmms_is_closed_in_defectflow() {
    let broker = Broker::start();
    broker.create_topics(&TOPICS);
    let dir = tempfile::tempdir().expect("tempdir");
    let run_config = live_pulley_config(dir.path(), 25, Some((&broker.bootstrap, "closed-loop")));
    let cmms = FakeCmms::start(Flavor::Maximo, Faults::default());
    let config = bridge_config(dir.path(), &broker, &cmms, "maximo", "defectflow.work-orders");
    let mut pipeline = defectflow(&run_config, Some(&dir.path().join("out")), None)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run");
    let mut run = start_bridge(&config);
    wait_until("the work order in Maximo", Duration::from_secs(60), || !cmms.applied().is_empty());
    let (id, _) = cmms.applied()[0].clone();
    cmms.set_status(&id, "COMP");
    let closed = |broker: &Broker| {
        work_orders(&broker.messages("defectflow.work-orders"))
            .into_iter()
            .find(|w| w["work_order_id"] == id.as_str() && w["status"] == "completed")
    };
    wait_until("the run closed the work order", Duration::from_secs(60), || closed(&broker).is_some());
    let closing = closed(&broker).expect("closing revision");
    assert_eq!(closing["revision_kind"], "closed", "{closing}");
    let closing_revision = closing["revision"].as_u64().expect("revision") as u32;
    wait_until("the closing revision in Maximo", Duration::from_secs(30), || {
        cmms.applied().contains(&(id.clone(), closing_revision))
    });
    assert!(pipeline.wait().expect("wait").success(), "the run failed");
    sigterm(&mut run);
    let events = wo_events(&broker);
    assert_eq!(events, vec![(id.clone(), "completed".to_owned(), None)]);
    // No revision of the work order twice, and in order.
    let mine: Vec<u32> = cmms.applied().iter().filter(|(w, _)| *w == id).map(|(_, r)| *r).collect();
    assert!(mine.windows(2).all(|w| w[0] < w[1]), "{mine:?}");
}

/// A run of the demo plant with alert rules, then `defectflow notify` against a real
/// SMTP server and a webhook (which answers 503 once): every alert on the topic reaches
/// its recipient once on each of their channels (the north's supervisor by mail and by
/// webhook, each assigned technician by webhook), the mail names the work order, a
/// second start delivers nothing again, and a file naming an unknown recipient fails
/// naming the field.
#[test]
fn alerts_reach_their_people_by_mail_and_webhook_once() {
    let plant = plant("");
    let python = std::env::var("DEFECTFLOW_ANALYTICS_PYTHON").expect("DEFECTFLOW_ANALYTICS_PYTHON");
    let received = plant.dir.path().join("received.jsonl");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/notify_servers.py");
    let mut servers = Command::new(python)
        .arg(script)
        .arg(&received)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the SMTP and webhook servers");
    let mut ready = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(servers.stdout.take().expect("stdout")), &mut ready)
        .expect("ready line");
    let ports: Vec<u16> = ready.split_whitespace().skip(1).map(|p| p.parse().expect("port")).collect();
    assert_eq!(ports.len(), 2, "{ready}");
    let notify = format!(
        "[notify]\n\
         [[notify.recipients]]\nid = \"SUP-NORTH\"\nname = \"Noor\"\nrole = \"supervisor\"\nzones = [\"north\"]\n\
         email = \"noor@plant.test\"\n\
         [[notify.recipients]]\nid = \"SUP-SOUTH\"\nrole = \"supervisor\"\nzones = [\"south\"]\nemail = \"sam@plant.test\"\n\
         [[notify.rules]]\nname = \"north-work\"\nzones = [\"north\"]\nnotify = [\"supervisor\"]\n\
         [notifier]\nstate_dir = \"notify-state\"\nmax_backoff_s = 1\n\
         [notifier.webhook]\nurl = \"http://127.0.0.1:{}/alerts\"\n\
         [notifier.smtp]\nhost = \"127.0.0.1\"\nport = {}\ntls = \"none\"\nfrom = \"defectflow <defectflow@plant.test>\"\n",
        ports[1], ports[0]
    );
    let text = std::fs::read_to_string(&plant.config).expect("config");
    std::fs::write(&plant.config, format!("{notify}{text}")).expect("config");
    run_to_end(&plant.config, Some(&plant.dir.path().join("out")));

    let alerts = plant.broker.messages("defectflow.alerts");
    let routed = |kind: &str| -> Vec<&Value> {
        alerts
            .iter()
            .filter(|m| {
                serde_json::from_str::<Value>(m["value"].as_str().expect("text")).expect("json")["kind"] == kind
            })
            .collect()
    };
    assert!(!routed("raised").is_empty() && !routed("assigned").is_empty(), "raised and assigned alerts: {alerts:?}");
    for m in &alerts {
        let alert: Value = serde_json::from_str(m["value"].as_str().expect("text")).expect("json");
        assert_eq!(m["key"], alert["recipient_id"], "keyed by recipient: {m}");
        if alert["kind"] == "raised" {
            assert_eq!(alert["recipient_id"], "SUP-NORTH", "only the north's supervisor: {alert}");
            assert_eq!(alert["rule"], "north-work");
        }
    }

    let run_notify = || {
        let output = Command::new(env!("CARGO_BIN_EXE_defectflow"))
            .args(["notify", "--until-caught-up", "--config", plant.config.to_str().expect("utf-8")])
            .output()
            .expect("run defectflow notify");
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(output.status.success(), "notify failed: {stdout}\n{}", String::from_utf8_lossy(&output.stderr));
        serde_json::from_str::<Value>(stdout.trim()).expect("summary")
    };
    let summary = run_notify();
    let raised = routed("raised").len() as u64;
    assert_eq!(summary["alerts"], alerts.len() as u64, "{summary}");
    assert_eq!(summary["webhooks"], alerts.len() as u64, "{summary}");
    assert_eq!(summary["emails"], raised, "{summary}");
    assert!(summary["retries"].as_u64().is_some_and(|r| r >= 1), "the 503 was tried again: {summary}");

    let deliveries: Vec<Value> = std::fs::read_to_string(&received)
        .expect("received")
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    let hooks: Vec<&Value> = deliveries.iter().filter(|d| d["channel"] == "webhook").collect();
    let mails: Vec<&Value> = deliveries.iter().filter(|d| d["channel"] == "email").collect();
    // Each alert once per channel: the webhook's keys are distinct and name every alert.
    let keys: std::collections::BTreeSet<String> =
        hooks.iter().map(|h| h["idempotency_key"].as_str().expect("key").to_owned()).collect();
    assert_eq!(keys.len(), hooks.len(), "a webhook delivered twice");
    let expected: std::collections::BTreeSet<String> = alerts
        .iter()
        .map(|m| {
            format!("{}>{}", m["headers"]["idempotency-key"].as_str().expect("key"), m["key"].as_str().expect("key"))
        })
        .collect();
    assert_eq!(keys, expected);
    for hook in &hooks {
        let alert = &hook["body"]["alert"];
        assert_eq!(hook["body"]["recipient"]["id"], alert["recipient_id"], "{hook}");
    }
    assert_eq!(mails.len() as u64, raised, "{mails:?}");
    for mail in &mails {
        assert_eq!(mail["to"], json!(["noor@plant.test"]), "{mail}");
        let subject = mail["subject"].as_str().expect("subject");
        assert!(subject.starts_with("[defectflow] ") && subject.contains("WO-"), "{subject}");
        assert!(mail["body"].as_str().expect("body").contains("alert rule `north-work`"), "{mail}");
    }

    // Delivered and committed: a second start has nothing to do.
    let again = run_notify();
    assert_eq!(again["alerts"], 0, "{again}");
    assert_eq!(std::fs::read_to_string(&received).expect("received").lines().count(), deliveries.len());

    // A recipient nobody lists fails the start, naming the field.
    let text = std::fs::read_to_string(&plant.config).expect("config");
    std::fs::write(&plant.config, text.replace("[notifier]\n", "[notifier]\nunrouted_to = [\"control-room\"]\n"))
        .expect("config");
    let output = Command::new(env!("CARGO_BIN_EXE_defectflow"))
        .args(["notify", "--config", plant.config.to_str().expect("utf-8")])
        .output()
        .expect("run defectflow notify");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("`notifier.unrouted_to`"), "{stderr}");
    let _ = servers.kill();
    let _ = servers.wait();
}
