//! Reference-data updates that conflict with the work under way, sent on the input
//! topics mid-run: a technician removed while holding work, a part's stock counted out
//! while a work order holds it reserved; and a restart that starts from what they
//! changed, not from the reference files alone.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::checks;
use crate::support::kafka::*;

#[test]
fn a_technician_removed_while_holding_work_and_a_reserved_part_counted_out() {
    let plant = plant("");
    // The run stays up after its footage, reading the input topics.
    let text = std::fs::read_to_string(&plant.config).expect("config");
    std::fs::write(&plant.config, text.replacen("[runtime]\n", "[runtime]\nduration_s = 30\n", 1)).expect("config");
    let out = plant.dir.path().join("out");
    let mut run = crate::support::Drained::spawn(&mut defectflow(&plant.config, Some(&out), None));
    // The pulley's crack reserves the one pulley shell in stock, and a technician.
    let mut pulley = None;
    while pulley.is_none() {
        assert!(plant.broker.wait_for_revisions(0, &mut run), "no work order reached the topic");
        pulley = work_orders(&plant.broker.messages("defectflow.work-orders"))
            .into_iter()
            .find(|w| w["asset_id"] == "CV-101-PUL" && w["technician_id"].is_string());
        if run.try_wait().expect("wait").is_some() {
            let seen = work_orders(&plant.broker.messages("defectflow.work-orders"));
            panic!("the run ended before the pulley's work order had a technician: {seen:#?}");
        }
    }
    let pulley = pulley.expect("the pulley's work order");
    let technician = pulley["technician_id"].as_str().expect("technician").to_owned();
    let shell = pulley["parts"].as_array().expect("parts").iter().find(|p| p["part_id"] == "PUL-600-SHELL").cloned();
    assert_eq!(shell.as_ref().map(|p| &p["available"]), Some(&json!(true)), "{pulley}");
    let at = pulley["revised_at_ms"].as_u64().expect("time");
    plant.broker.produce(
        "defectflow.technicians",
        &[json!({"value": json!({"technician_id": technician, "removed": true}).to_string()})],
    );
    plant.broker.produce(
        "defectflow.inventory",
        &[json!({"value": json!({"part_id": "PUL-600-SHELL", "delta": -1, "at_ms": at, "reason": "count"}).to_string()})],
    );
    let output = run.wait_with_output();
    assert!(output.status.success(), "run failed: {}", String::from_utf8_lossy(&output.stderr));

    let messages = plant.broker.messages("defectflow.work-orders");
    check_exactly_once(&messages, &out, &plant.truth);
    let revisions = work_orders(&messages);
    let keys = checks::one_work_order_per_defect(&revisions, &checks::defects(&plant.truth));
    checks::audited_once(&out.join("audit"), &keys);
    assert!(plant.broker.messages("defectflow.dead-letter").is_empty(), "both updates were used");

    // The last revision of each work order: nobody holds work for the removed
    // technician, and the pulley's work order says its shell is no longer in stock.
    let mut last: BTreeMap<String, Value> = BTreeMap::new();
    for w in revisions {
        let id = w["work_order_id"].as_str().expect("id").to_owned();
        if last.get(&id).is_none_or(|l| l["revision"].as_u64() < w["revision"].as_u64()) {
            last.insert(id, w);
        }
    }
    for w in last.values() {
        assert_ne!(w["technician_id"].as_str(), Some(technician.as_str()), "still with the removed technician: {w}");
    }
    let pulley_now = &last[pulley["work_order_id"].as_str().expect("id")];
    let shell_now = pulley_now["parts"].as_array().expect("parts").iter().find(|p| p["part_id"] == "PUL-600-SHELL");
    assert_eq!(shell_now.map(|p| &p["available"]), Some(&json!(false)), "{pulley_now}");

    // A restart (the same footage again, into a fresh folder) reads nothing new from
    // the topics, but starts from what they changed: the technician is off the roster
    // and the shell out of stock from the first revision on.
    let again = plant.dir.path().join("again");
    let output = defectflow(&plant.config, Some(&again), None).output().expect("run");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "restart failed: {stderr}");
    assert!(stderr.contains("reference-data topics read again"), "{stderr}");
    let text = std::fs::read_to_string(again.join("work-orders.jsonl")).expect("work-orders.jsonl");
    let mut pulley_revisions = 0;
    for line in text.lines() {
        let message: Value = serde_json::from_str(line).expect("json line");
        assert!(!line.contains(&format!("\"{technician}\"")), "the removed technician came back: {line}");
        let Some(w) = message.get("work_order") else { continue };
        if w["asset_id"] == "CV-101-PUL" {
            pulley_revisions += 1;
            let shell = w["parts"].as_array().expect("parts").iter().find(|p| p["part_id"] == "PUL-600-SHELL");
            assert_eq!(shell.map(|p| &p["available"]), Some(&json!(false)), "{w}");
        }
    }
    assert!(pulley_revisions > 0, "the restart made the pulley's work order: {text}");
    assert!(plant.broker.messages("defectflow.dead-letter").is_empty(), "nothing was read twice");
}
