//! Where defectflow's outputs go. Every sink kind has its folder: `audit/` (the Parquet
//! audit log), `evidence/` (the annotated images), `jsonl/` (work-orders.jsonl), `kafka/`
//! (the CMMS topics).

pub mod audit;
pub mod evidence;
pub mod jsonl;
pub mod kafka;

/// Test hook: `DEFECTFLOW_FAILPOINT=<name>[:<n>]` aborts the process the n-th time (default
/// the first) it reaches the named point, as a crash there would.
pub(crate) fn failpoint(name: &str) {
    static HITS: std::sync::Mutex<Option<std::collections::HashMap<String, u32>>> = std::sync::Mutex::new(None);
    let Ok(spec) = std::env::var("DEFECTFLOW_FAILPOINT") else { return };
    let (point, nth) = match spec.split_once(':') {
        Some((point, n)) => (point.to_owned(), n.parse().unwrap_or(1)),
        None => (spec, 1),
    };
    if point != name {
        return;
    }
    let Ok(mut hits) = HITS.lock() else { return };
    let count = hits.get_or_insert_with(std::collections::HashMap::new).entry(point).or_insert(0);
    *count += 1;
    if *count == nth {
        eprintln!("failpoint {name}: aborting");
        std::process::abort();
    }
}
