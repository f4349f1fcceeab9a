//! What every fault case checks of a run's outputs.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use defectflow_models::synth::GroundTruth;
use serde_json::Value;

/// (asset, defect class) of every defect in the footage.
pub fn defects(truth: &GroundTruth) -> BTreeSet<(String, String)> {
    truth
        .cameras
        .iter()
        .flat_map(|c| c.scene.defects.iter().map(|d| (c.scene.asset_id.clone(), d.class.to_string())))
        .collect()
}

/// The work-order revisions of a run's `work-orders.jsonl`.
pub fn jsonl_work_orders(out: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(out.join("work-orders.jsonl")).expect("work-orders.jsonl");
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).expect("json line").get("work_order").cloned())
        .collect()
}

/// One work order per expected defect, and each work order's revisions 1..n once each.
/// Returns `<id>:<revision>` of every revision.
pub fn one_work_order_per_defect(revisions: &[Value], expected: &BTreeSet<(String, String)>) -> BTreeSet<String> {
    let mut by_id: BTreeMap<String, (Vec<u64>, (String, String))> = BTreeMap::new();
    for w in revisions {
        let id = w["work_order_id"].as_str().expect("id").to_owned();
        let what =
            (w["asset_id"].as_str().expect("asset").to_owned(), w["defect_class"].as_str().expect("class").to_owned());
        by_id.entry(id).or_insert_with(|| (Vec::new(), what)).0.push(w["revision"].as_u64().expect("revision"));
    }
    let mut keys = BTreeSet::new();
    for (id, (revisions, _)) in &mut by_id {
        revisions.sort_unstable();
        let expected: Vec<u64> = (1..=revisions.len() as u64).collect();
        assert_eq!(*revisions, expected, "{id}: each revision once, none missing");
        keys.extend(revisions.iter().map(|r| format!("{id}:{r}")));
    }
    let found: Vec<&(String, String)> = by_id.values().map(|(_, what)| what).collect();
    assert_eq!(found.iter().copied().cloned().collect::<BTreeSet<_>>(), *expected, "work orders by (asset, class)");
    assert_eq!(found.len(), expected.len(), "one work order per defect: {by_id:?}");
    keys
}

/// The audit log's work_orders table holds `keys`, each once.
pub fn audited_once(audit: &Path, keys: &BTreeSet<String>) {
    let audited = super::support::kafka::audited_revisions(audit);
    let unique: BTreeSet<String> = audited.iter().cloned().collect();
    assert_eq!(unique.len(), audited.len(), "a revision audited twice: {audited:?}");
    assert_eq!(&unique, keys, "the audit log against the work orders delivered");
}

/// The per-camera reports a run printed with `--json` (its whole standard output).
pub fn camera_reports(stdout: &str) -> BTreeMap<String, Value> {
    let report: Value = serde_json::from_str(stdout).expect("the run's report as JSON");
    let reports = report["cameras"].as_array().expect("cameras").clone();
    reports.into_iter().map(|r| (r["camera_id"].as_str().expect("id").to_owned(), r)).collect()
}
