//! `defectflow bridge`'s throughput: work-order revisions per second from the topic
//! (tansu on 127.0.0.1, filled by the Kafka sink) into a local server answering as IBM
//! Maximo does, each answer 20 ms late, until every revision is acknowledged and its
//! offset committed. The peer is the ceiling that latency sets: `concurrency` requests
//! in flight, each taking 20 ms.
//!
//! `cargo bench --bench bridge` (the dev profile is enough for a bridge that waits on
//! the network: `cargo bench --bench bridge --profile dev`). Without `--bench` (as under
//! `cargo test`) it runs once on 40 revisions.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use defectflow::bridge::{BridgeConfig, run};
use defectflow::kafka::KafkaConfig;
use defectflow::sinks::kafka::KafkaSink;
use defectflow_schemas::{Emitted, WorkOrder};

#[path = "support/broker.rs"]
mod broker;
#[path = "../tests/support/cmms.rs"]
mod cmms;

const DELAY_MS: u64 = 20;

/// `work_orders` work orders of 4 revisions each, as the demo plant derives them.
fn revisions(work_orders: u64) -> Vec<(u64, Emitted)> {
    let line = include_str!("../tests/scenarios/crack_grows.expected.jsonl").lines().next().unwrap_or_default();
    let template = match serde_json::from_str::<Emitted>(line) {
        Ok(Emitted::WorkOrder(w)) => *w,
        other => panic!("the scenario starts with a work order, not {other:?}"),
    };
    (0..work_orders * 4)
        .map(|i| {
            let mut w: WorkOrder = template.clone();
            w.work_order_id = format!("WO-{:016x}", i % work_orders);
            w.revision = (i / work_orders) as u32 + 1;
            w.revised_at_ms += i;
            (0, Emitted::WorkOrder(Box::new(w)))
        })
        .collect()
}

/// One bridge run from a new group to caught up; (revisions applied, seconds).
fn once(bootstrap: &str, concurrency: usize, round: usize) -> (u64, f64) {
    let server = cmms::FakeCmms::start(cmms::Flavor::Maximo, cmms::Faults { delay_ms: DELAY_MS, ..Default::default() });
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let path = dir.path().join("bridge.toml");
    let text = format!(
        "[kafka]\nbrokers = \"{bootstrap}\"\n[cmms]\nmapping = \"maximo\"\nurl = \"{}\"\n\
         secret_from_file = \"secret\"\ngroup = \"bench-{concurrency}-{round}\"\nconcurrency = {concurrency}\npoll_s = 0\n\
         [cmms.values]\nsiteid = \"BEDFORD\"\n",
        server.url
    );
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("config: {e}"));
    std::fs::write(dir.path().join("secret"), cmms::SECRET).unwrap_or_else(|e| panic!("secret: {e}"));
    let config = BridgeConfig::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let started = Instant::now();
    let summary = run(&config, Arc::new(AtomicBool::new(false)), true).unwrap_or_else(|e| panic!("{e}"));
    let seconds = started.elapsed().as_secs_f64();
    assert_eq!(server.applied().len() as u64, summary.applied, "the server applied what the bridge counted");
    (summary.applied, seconds)
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let Some(broker) = broker::broker() else { return };
    let work_orders = if full { 1_000 } else { 10 };
    let config: KafkaConfig =
        toml::from_str(&format!("brokers = \"{}\"\n", broker.1)).unwrap_or_else(|e| panic!("kafka config: {e}"));
    let mut sink = KafkaSink::start(&config).unwrap_or_else(|e| panic!("{e}"));
    let messages = revisions(work_orders);
    for chunk in messages.chunks(500) {
        sink.deliver(1, chunk).unwrap_or_else(|e| panic!("{e}"));
    }
    let total = messages.len() as u64;
    let rounds = if full { 3 } else { 1 };
    for concurrency in if full { vec![32, 64] } else { vec![8] } {
        let mut rates = Vec::new();
        for round in 0..rounds {
            let (applied, seconds) = once(&broker.1, concurrency, round);
            assert_eq!(applied, total, "every revision applied");
            rates.push(applied as f64 / seconds);
        }
        rates.sort_by(f64::total_cmp);
        let median = rates[rates.len() / 2];
        let ceiling = concurrency as f64 * 1000.0 / DELAY_MS as f64;
        println!(
            "bridge/maximo concurrency {concurrency}, {DELAY_MS} ms answers: {total} revisions, median {median:.0} revisions/s \
             over {rounds} run(s) ({:.2} of the {ceiling:.0}/s latency ceiling); runs {rates:.0?}",
            median / ceiling
        );
    }
}
