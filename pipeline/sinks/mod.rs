//! Where defectflow's outputs go. Every sink kind has its folder: `kafka/` (the CMMS
//! topics), `jsonl/` (work-orders.jsonl), `audit/` (the Parquet audit log) and
//! `evidence/` (the annotated images, which the tracker writes as it goes). [`open`]
//! lists every sink a run delivers to; [`Outputs`] hands them each closed time's
//! messages and audit rows, in that order.

pub mod audit;
pub mod evidence;
pub mod jsonl;
pub mod kafka;
mod outputs;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use defectflow_operators::derive::TrackMeasures;
use defectflow_schemas::{Detection, Emitted, WorkOrder};

pub use audit::AuditRow;
pub use outputs::Outputs;

use crate::config::RunConfig;
use crate::metrics::Metrics;

/// The kinds of sink, in the order a closed time's messages reach them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SinkKind {
    /// The CMMS topics on the broker.
    Kafka,
    /// `work-orders.jsonl` in the output folder.
    JsonLines,
    /// The Parquet audit log in the output folder.
    Audit,
}

impl SinkKind {
    /// Whether the CMMS reads its messages (a work order has left defectflow once these
    /// have it), as opposed to keeping a record of them.
    pub fn carries_messages(self) -> bool {
        matches!(self, SinkKind::Kafka | SinkKind::JsonLines)
    }
}

/// What a sink wrote in a run, and what it left out because an earlier run had.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SinkCount {
    pub kind: SinkKind,
    pub written: u64,
    pub earlier: u64,
}

/// What the dataflow completed before `closed_before`, for the sinks.
#[derive(Debug)]
pub struct Batch<'a> {
    pub closed_before: u64,
    /// The messages, with their dataflow times.
    pub messages: &'a [(u64, Emitted)],
    /// Rows for the audit log that are not messages, with their dataflow times.
    pub rows: &'a [(u64, AuditRow)],
    /// The model's detections, captured before `closed_before`.
    pub detections: &'a [Detection],
}

/// One output of a run, owned by the worker that delivers.
pub trait Sink: std::fmt::Debug {
    fn kind(&self) -> SinkKind;

    /// Takes a closed batch; an error stops the run. Returns how many messages a broker
    /// acknowledged.
    fn deliver(&mut self, batch: &Batch<'_>, metrics: &Metrics) -> anyhow::Result<u64>;

    /// At the end of a run: everything taken is written, with what is left in `rest`
    /// (detections the dataflow did not close).
    fn flush(&mut self, _rest: &Batch<'_>) -> anyhow::Result<()> {
        Ok(())
    }

    /// The latest revision of every work order that earlier runs delivered here, once
    /// (`None`: this sink cannot tell).
    fn take_latest_orders(&mut self) -> Option<Vec<WorkOrder>> {
        None
    }

    /// The latest measures of `tracks` since `since_ms`, as earlier runs recorded them
    /// (`None`: this sink keeps no tracks).
    fn latest_track_measures(
        &self,
        _tracks: &BTreeSet<String>,
        _since_ms: u64,
    ) -> Option<anyhow::Result<BTreeMap<String, TrackMeasures>>> {
        None
    }

    /// What it wrote in this run (`None`: nothing to count).
    fn count(&self) -> Option<SinkCount> {
        None
    }

    /// Whether an earlier run delivered `message` (of dataflow time `time`) here for
    /// good (`None`: this sink delivers nothing to the CMMS).
    fn delivered_earlier(&self, _time: u64, _message: &Emitted) -> Option<bool> {
        None
    }

    /// At start, before the first batch: takes in what an earlier run left uncommitted;
    /// `keep` says which of its messages to keep. Returns how many rows (`None`: this
    /// sink has nothing to recover).
    fn recover(&mut self, _keep: &dyn Fn(u64, &Emitted) -> bool) -> Option<anyhow::Result<usize>> {
        None
    }
}

/// Opens every sink `config` asks for, in delivery order. Every sink kind is listed
/// here. The audit log comes first: it writes each batch ahead before the CMMS can see
/// it (see `audit/ahead.rs`). Shadow mode sends nothing to the CMMS: only the audit log
/// is written.
pub fn open(config: &RunConfig) -> anyhow::Result<Vec<Box<dyn Sink>>> {
    let shadow = config.model.as_ref().is_some_and(|m| m.shadow);
    let mut sinks: Vec<Box<dyn Sink>> = Vec::new();
    if let Some(dir) = &config.output.dir {
        let max_age = Duration::from_secs_f64(config.output.audit_commit_s);
        sinks.push(Box::new(audit::AuditSink::open(&dir.join("audit"), config.output.audit_commit_rows, max_age)?));
    }
    match &config.kafka {
        Some(kafka) if !shadow => sinks.push(Box::new(kafka::KafkaSink::start(kafka)?)),
        Some(_) => tracing::info!("shadow mode: nothing goes to Kafka"),
        None => {}
    }
    if let Some(dir) = &config.output.dir
        && !shadow
    {
        sinks.push(Box::new(jsonl::JsonLinesSink::open(dir)?));
    }
    Ok(sinks)
}

/// Every failpoint, in the order a run reaches them: the fault suite crashes at each.
pub const FAILPOINTS: [&str; 12] = [
    "kafka-after-recovery",
    "audit-after-recovery",
    "kafka-between-sends",
    "after-send",
    "before-commit",
    "after-progress",
    "jsonl-after-append",
    "jsonl-before-progress-rename",
    "jsonl-after-progress",
    "audit-after-aside",
    "audit-after-rename",
    "audit-after-manifest",
];

/// Whether this build has failpoints: builds with debug assertions (what `cargo build`
/// and `cargo test` make) or the `failpoints` feature; a release build has none.
const FAILPOINTS_BUILT: bool = cfg!(any(debug_assertions, feature = "failpoints"));

/// `DEFECTFLOW_FAILPOINT`, read once (never in a build without failpoints).
fn failpoint_spec() -> Option<&'static str> {
    static SPEC: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    SPEC.get_or_init(|| if FAILPOINTS_BUILT { std::env::var("DEFECTFLOW_FAILPOINT").ok() } else { None }).as_deref()
}

/// Test hook: `DEFECTFLOW_FAILPOINT=<name>[:<n>]` aborts the process the n-th time (default
/// the first) it reaches the named point, as a crash there would (see `FAILPOINTS_BUILT`).
pub(crate) fn failpoint(name: &str) {
    debug_assert!(FAILPOINTS.contains(&name), "{name} is listed in FAILPOINTS");
    // A spec names one point: the hits of that point.
    static HITS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let Some(spec) = failpoint_spec() else { return };
    let (point, nth) = spec.split_once(':').map_or((spec, 1), |(point, n)| (point, n.parse().unwrap_or(1)));
    if point == name && HITS.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1 == nth {
        eprintln!("failpoint {name}: aborting");
        std::process::abort();
    }
}

/// Test hook: `DEFECTFLOW_FAILPOINT=stall:<name>` blocks the thread that reaches the named
/// point for good, as a disk or a network call that never answers would.
pub(crate) fn stallpoint(name: &str) {
    if failpoint_spec().and_then(|spec| spec.strip_prefix("stall:")) == Some(name) {
        eprintln!("failpoint stall:{name}: blocking");
        loop {
            std::thread::park();
        }
    }
}
