//! timely's cluster mode: the same recording on one process with two workers and on two
//! processes with one worker each gives the same work orders and evidence; with Kafka,
//! the input partitions are spread over the processes, and what each read is used,
//! dead-lettered and committed once.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use serde_json::{Value, json};
use sha2::Digest;
use support::kafka::*;

/// Runs `config` on two processes of one worker each (a hostfile of 127.0.0.1 ports in
/// `dir`), both given the output folder `out`; what each printed, once both ended.
fn two_processes(dir: &Path, config: &Path, out: &Path) -> Vec<std::process::Output> {
    let ports = [support::free_port(), support::free_port()];
    let hostfile = dir.join("hosts.txt");
    std::fs::write(&hostfile, ports.iter().map(|p| format!("127.0.0.1:{p}\n")).collect::<String>()).expect("hosts");
    let processes: Vec<_> = (0..2)
        .map(|p| {
            let cluster = ["-w", "1", "-n", "2", "-p", &p.to_string(), "-H", hostfile.to_str().expect("utf-8")];
            support::Drained::spawn(defectflow(config, Some(out), None).args(cluster))
        })
        .collect();
    processes.into_iter().map(|p| p.wait_with_output()).collect()
}

#[test]
fn two_processes_make_the_same_work_orders_as_two_workers_in_one() {
    // Both tests run several processes against real-time recordings: one at a time.
    let _serial = support::kafka::serial();
    let dir = tempfile::tempdir().expect("temp dir");
    let truth = support::demo_plant_footage(dir.path());
    let reference = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/demo-plant/reference");
    let mut toml = format!(
        "[runtime]\nworkers = 2\n[anomaly]\ncommission_s = 0\n[model]\nbatch_size = 4\n[plant]\nreference = \"{}\"\n",
        reference.display()
    );
    toml.push_str(&support::recorded_cameras(dir.path(), &truth, ""));
    let config = dir.path().join("cluster.toml");
    std::fs::write(&config, toml).expect("config");
    let one = dir.path().join("one");
    let output = defectflow(&config, Some(&one), None).args(["-w", "2"]).output().expect("one process");
    assert!(output.status.success(), "one process failed: {}", String::from_utf8_lossy(&output.stderr));

    let two = dir.path().join("two");
    let outputs = two_processes(dir.path(), &config, &two);
    for (p, output) in outputs.iter().enumerate() {
        let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        assert!(output.status.success(), "process {p} failed: {stdout}\n{stderr}");
    }

    // The cameras are spread: camera i runs on worker i mod 2, one worker per process.
    for (p, output) in outputs.iter().enumerate() {
        let stdout = String::from_utf8_lossy(&output.stdout);
        for (i, camera) in truth.cameras.iter().enumerate() {
            let id = &camera.scene.camera_id;
            let line = stdout.lines().find(|l| l.split_whitespace().next() == Some(id.as_str()));
            match line {
                Some(line) => {
                    assert_eq!(i % 2, p, "{id} reported by process {p}: {line}");
                    assert_eq!(line.split_whitespace().nth(1), Some(p.to_string().as_str()), "worker of {id}: {line}");
                }
                None => assert_ne!(i % 2, p, "process {p} does not report {id}:\n{stdout}"),
            }
        }
    }

    // Process 0 delivers; the work orders are the same, revision for revision.
    let lines = |dir: &Path| {
        let text = std::fs::read_to_string(dir.join("work-orders.jsonl")).expect("work-orders.jsonl");
        let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
        lines.sort();
        lines
    };
    let (single, cluster) = (lines(&one), lines(&two));
    let work_orders = |lines: &[String]| {
        lines
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|m| m.get("work_order").map(|w| w["work_order_id"].as_str().expect("id").to_owned()))
            .collect::<std::collections::BTreeSet<_>>()
    };
    assert_eq!(work_orders(&single).len(), truth.cameras.len(), "one work order per defect: {single:#?}");
    let only_single: Vec<&String> = single.iter().filter(|l| !cluster.contains(l)).collect();
    let only_cluster: Vec<&String> = cluster.iter().filter(|l| !single.contains(l)).collect();
    assert!(
        single == cluster,
        "the same messages from one process and from two; only in one: {only_single:#?}\nonly in two: {only_cluster:#?}"
    );

    // Every evidence image was drawn (on the process that scored its frame) and is the same.
    let images = |dir: &Path| -> BTreeMap<String, String> {
        let mut images = BTreeMap::new();
        for track in std::fs::read_dir(dir.join("evidence")).expect("evidence folder") {
            let track = track.expect("entry").path();
            for image in std::fs::read_dir(&track).expect("track folder") {
                let image = image.expect("entry").path();
                let hash = sha2::Sha256::digest(std::fs::read(&image).expect("image"));
                let name = |p: &Path| p.file_name().expect("name").to_string_lossy().into_owned();
                images.insert(format!("{}/{}", name(&track), name(&image)), format!("{hash:x}"));
            }
        }
        images
    };
    let (single_images, cluster_images) = (images(&one), images(&two));
    assert!(single_images.len() >= truth.cameras.len(), "{single_images:?}");
    assert_eq!(single_images, cluster_images);
    for line in &cluster {
        let message: serde_json::Value = serde_json::from_str(line).expect("json");
        if let Some(evidence) = message.get("work_order").and_then(|w| w.get("evidence")) {
            let uri = evidence["uri"].as_str().expect("uri");
            let name = uri.rsplitn(3, '/').take(2).collect::<Vec<_>>();
            let name = format!("{}/{}", name[1], name[0]);
            assert_eq!(cluster_images.get(&name), evidence["sha256"].as_str().map(str::to_owned).as_ref(), "{uri}");
        }
    }
}

#[test]
fn two_processes_share_the_input_partitions_and_commit_what_they_read() {
    let broker = Broker::start();
    let inputs = ["defectflow.assets", "defectflow.inventory", "defectflow.technicians", "defectflow.wo-events"];
    // The input topics with two partitions each.
    let topics: Vec<String> = TOPICS
        .iter()
        .map(|spec| match spec.split_once(':') {
            Some((name, _)) if inputs.contains(&name) => format!("{name}:2"),
            _ => (*spec).to_owned(),
        })
        .collect();
    broker.create_topics(&topics.iter().map(String::as_str).collect::<Vec<_>>());
    // On each partition of each input topic, a message that is not JSON (named by where
    // it is); on each partition of the inventory topic, 4 bearings received.
    for topic in inputs {
        for partition in 0..2 {
            broker.produce(topic, &[json!({"value": format!("not json {topic}/{partition}"), "partition": partition})]);
        }
    }
    for partition in 0..2 {
        let received = json!({"part_id": "BRG-22220", "delta": 4, "at_ms": 1_790_000_000_500u64, "reason": "received"});
        broker.produce("defectflow.inventory", &[json!({"value": received.to_string(), "partition": partition})]);
    }

    let dir = tempfile::tempdir().expect("temp dir");
    let truth = support::demo_plant_footage(dir.path());
    let config = write_config(dir.path(), &truth, &broker.bootstrap, "");
    let out = dir.path().join("out");
    let outputs = two_processes(dir.path(), &config, &out);
    for (p, output) in outputs.iter().enumerate() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "process {p} failed: {stderr}");
        // Process p (its one worker is worker p of two) reads partition p of the event
        // and movement topics; process 0 also reads every partition of the upserts.
        let line = stderr.lines().find(|l| l.contains("consuming input partitions")).unwrap_or_else(|| {
            panic!("process {p} names no input partitions: {stderr}");
        });
        let read: Vec<&str> = line.split_whitespace().filter(|w| w.contains("defectflow.")).collect();
        let read: Vec<&str> = read.iter().map(|w| w.trim_start_matches("partitions=")).collect();
        let expected = match p {
            0 => vec![
                "defectflow.assets/0",
                "defectflow.assets/1",
                "defectflow.inventory/0",
                "defectflow.technicians/0",
                "defectflow.technicians/1",
                "defectflow.wo-events/0",
            ],
            _ => vec!["defectflow.inventory/1", "defectflow.wo-events/1"],
        };
        assert_eq!(read, expected, "process {p}: {line}");
    }

    // Every unusable message, from both processes, reaches the dead-letter topic once
    // (process 0 delivers).
    let letters = |broker: &Broker| -> Vec<String> {
        let mut sources: Vec<String> = broker
            .messages("defectflow.dead-letter")
            .iter()
            .map(|m| serde_json::from_str::<Value>(m["value"].as_str().expect("value")).expect("json"))
            .map(|letter| format!("{} {}", letter["source"].as_str().expect("source"), letter["payload"]))
            .collect();
        sources.sort();
        sources
    };
    let expected: Vec<String> = inputs
        .iter()
        .flat_map(|topic| (0..2).map(move |p| format!("{topic}/{p}@0 \"not json {topic}/{p}\"")))
        .collect();
    assert_eq!(letters(&broker), expected);
    // Both movements were used once: the bearings' stock went from 6 to 14, never beyond.
    let python = std::env::var("DEFECTFLOW_ANALYTICS_PYTHON").expect("DEFECTFLOW_ANALYTICS_PYTHON");
    let script = r#"
import sys
import polars as pl
df = pl.scan_parquet(sys.argv[1] + "/inventory/**/*.parquet", hive_partitioning=True).collect()
print(df.filter(pl.col("part_id") == "BRG-22220")["on_hand"].max())
"#;
    let audit = out.join("audit");
    let stock = Command::new(python).args(["-c", script, audit.to_str().expect("utf-8")]).output().expect("python");
    assert!(stock.status.success(), "polars: {}", String::from_utf8_lossy(&stock.stderr));
    assert_eq!(String::from_utf8_lossy(&stock.stdout).trim(), "14");
    // The work orders are delivered once each, one per defect.
    check_exactly_once(&broker.messages("defectflow.work-orders"), &out, &truth);

    // Each process committed what it read: a run after them reads none of it again.
    let stdout = run_to_end(&config, None);
    assert!(stdout.contains("kafka: 0 sent") && stdout.contains("dead letters: 0"), "{stdout}");
    assert_eq!(letters(&broker), expected);
}
