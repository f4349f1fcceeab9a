//! A crashed run against one that never crashed: what a run of the plant left behind
//! (every output topic, work-orders.jsonl, every audit table), a run of the same
//! recording on topics and a folder of its own, and the comparison.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use super::kafka::{Broker, OUTPUT_TOPICS, TOPICS, run_to_end};

/// What a run of the plant left behind, to compare a crashed run with an uncrashed one
/// of the same recorded inputs: each output topic's payloads by idempotency key, the
/// work-orders.jsonl file, and every audit table's rows.
#[derive(Debug)]
pub struct RunOutputs {
    /// Per output topic (without its prefix): idempotency key → record key and payload.
    pub topics: BTreeMap<String, BTreeMap<String, String>>,
    pub jsonl: String,
    /// Per audit table: its rows as JSON objects with sorted keys, sorted (a row written
    /// twice appears twice).
    pub audit: BTreeMap<String, Vec<String>>,
}

/// A copy of the plant's `config` whose output and progress topics are `<prefix>…`
/// (created on `broker`), with `kafka_extra` added to `[kafka]`, and an output folder
/// of its own: a run on it shares nothing with the plant's runs but the inputs.
pub fn config_on_topics(
    broker: &Broker,
    dir: &Path,
    config: &Path,
    prefix: &str,
    kafka_extra: &str,
) -> (PathBuf, PathBuf) {
    let name = prefix.trim_end_matches('.');
    let ours =
        |spec: &str| OUTPUT_TOPICS.iter().chain(&["defectflow.progress"]).any(|t| spec.starts_with(&format!("{t}:")));
    let topics: Vec<String> =
        TOPICS.iter().filter(|spec| ours(spec)).map(|spec| spec.replacen("defectflow.", prefix, 1)).collect();
    broker.create_topics(&topics.iter().map(String::as_str).collect::<Vec<_>>());
    let table = format!(
        "{kafka_extra}[kafka.topics]\nwork_orders = \"{prefix}work-orders\"\nalerts = \"{prefix}alerts\"\n\
         parts_staging = \"{prefix}parts-staging\"\ndead_letter = \"{prefix}dead-letter\"\nprogress = \"{prefix}progress\"\n"
    );
    let text = std::fs::read_to_string(config).expect("config");
    assert!(text.contains("[kafka.properties]"), "{text}");
    let text = text.replacen("[kafka.properties]", &format!("{table}[kafka.properties]"), 1);
    // The recording decides when the run ends (a `duration_s` keeps a run up after it).
    let kept: Vec<&str> = text.lines().filter(|l| !l.starts_with("duration_s")).collect();
    let copy = dir.join(format!("{name}.toml"));
    std::fs::write(&copy, kept.join("\n") + "\n").expect("config");
    (copy, dir.join(name))
}

/// Runs the plant's recording once to its end without any fault, on its own output and
/// progress topics (`reference.*`) and its own folder, and returns what it wrote.
pub fn uncrashed_run(broker: &Broker, dir: &Path, config: &Path) -> RunOutputs {
    let (config, out) = config_on_topics(broker, dir, config, "reference.", "");
    run_to_end(&config, Some(&out));
    run_outputs(broker, "reference.", &out)
}

/// What the runs with output folder `out` and topics `<prefix>…` left behind, as a
/// consumer reading committed messages sees the topics; every topic holds each
/// idempotency key once. Without transactions every message is committed; with them,
/// what an aborted transaction left on the raw topic must be a copy of a committed
/// message.
pub fn run_outputs(broker: &Broker, prefix: &str, out: &Path) -> RunOutputs {
    let names: Vec<String> =
        OUTPUT_TOPICS.iter().map(|t| format!("{prefix}{}", t.trim_start_matches("defectflow."))).collect();
    let mut args = vec!["dump-outputs"];
    args.extend(names.iter().map(String::as_str));
    let output = broker.client(&args);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let dumped: Value = serde_json::from_slice(&output.stdout).expect("json");
    let mut topics = BTreeMap::new();
    for topic in &names {
        let text = |m: &Value| format!("{} {}", m["key"], m["value"].as_str().expect("a text payload"));
        let idempotency_key = |m: &Value| m["headers"]["idempotency-key"].as_str().expect("idempotency key").to_owned();
        let mut payloads = BTreeMap::new();
        let mut offsets = BTreeMap::new();
        for m in dumped[topic]["committed"].as_array().expect("committed messages") {
            let key = idempotency_key(m);
            let at = format!("partition {} offset {}", m["partition"], m["offset"]);
            if let Some(earlier) = payloads.insert(key.clone(), text(m)) {
                panic!(
                    "{topic}: {key} delivered twice, at {} and at {at} (first {earlier}, then {})",
                    offsets[&key],
                    text(m)
                );
            }
            offsets.insert(key, at);
        }
        for m in dumped[topic]["raw"].as_array().expect("raw messages") {
            let key = idempotency_key(m);
            assert_eq!(payloads.get(&key), Some(&text(m)), "{topic}: {key} on the raw topic is not committed so");
        }
        topics.insert(topic.trim_start_matches(prefix).to_owned(), payloads);
    }
    let jsonl = std::fs::read_to_string(out.join("work-orders.jsonl")).expect("work-orders.jsonl");
    RunOutputs { topics, jsonl, audit: audit_rows(&out.join("audit")) }
}

/// What a run without Kafka left behind in `out`: work-orders.jsonl and every audit table.
pub fn file_outputs(out: &Path) -> RunOutputs {
    let jsonl = std::fs::read_to_string(out.join("work-orders.jsonl")).expect("work-orders.jsonl");
    RunOutputs { topics: BTreeMap::new(), jsonl, audit: audit_rows(&out.join("audit")) }
}

/// Every row of every audit table, read by polars (which fails on a partial file).
pub fn audit_rows(audit: &Path) -> BTreeMap<String, Vec<String>> {
    let python = std::env::var("DEFECTFLOW_ANALYTICS_PYTHON").expect("DEFECTFLOW_ANALYTICS_PYTHON");
    let script = r#"
import json, os, sys
import polars as pl
tables = {}
for table in ["detections", "tracks", "work_orders", "assignments", "inventory", "wo_events", "alerts"]:
    folder = os.path.join(sys.argv[1], table)
    if not os.path.isdir(folder) or not any(f.endswith(".parquet") for _, _, fs in os.walk(folder) for f in fs):
        tables[table] = []
        continue
    df = pl.scan_parquet(folder + "/**/*.parquet", hive_partitioning=True).collect()
    tables[table] = sorted(json.dumps(r, sort_keys=True, default=str) for r in df.iter_rows(named=True))
print(json.dumps(tables))
"#;
    let output = Command::new(python).args(["-c", script, audit.to_str().expect("utf-8")]).output().expect("python");
    assert!(output.status.success(), "polars: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).expect("json")
}

/// The crashed runs left exactly what the uncrashed run did: on every output topic the
/// same idempotency keys with the same payloads byte for byte, the same
/// work-orders.jsonl byte for byte, and the same rows in every audit table.
pub fn same_as_uncrashed(crashed: &RunOutputs, uncrashed: &RunOutputs) {
    assert!(
        uncrashed.topics.get("work-orders").is_none_or(|sent| !sent.is_empty()),
        "the uncrashed run sent work orders"
    );
    assert!(!uncrashed.jsonl.is_empty(), "the uncrashed run wrote work orders");
    assert!(
        uncrashed.audit.get("work_orders").is_some_and(|rows| !rows.is_empty()),
        "the uncrashed run audited work orders"
    );
    for (topic, expected) in &uncrashed.topics {
        let found = &crashed.topics[topic];
        let missing: Vec<&String> = expected.keys().filter(|k| !found.contains_key(*k)).collect();
        let extra: Vec<&String> = found.keys().filter(|k| !expected.contains_key(*k)).collect();
        assert!(missing.is_empty() && extra.is_empty(), "{topic}: missing {missing:?}, extra {extra:?}");
        for (key, payload) in expected {
            assert_eq!(&found[key], payload, "{topic}: {key} differs");
        }
    }
    assert_eq!(crashed.jsonl, uncrashed.jsonl, "work-orders.jsonl differs");
    for (table, expected) in &uncrashed.audit {
        let found = &crashed.audit[table];
        if found != expected {
            let missing: Vec<&String> = expected.iter().filter(|r| !found.contains(r)).take(3).collect();
            let extra: Vec<&String> = found.iter().filter(|r| !expected.contains(r)).take(3).collect();
            panic!(
                "audit table {table}: {} rows after the crashes, {} without; missing {missing:?}, extra {extra:?}",
                found.len(),
                expected.len()
            );
        }
    }
}
