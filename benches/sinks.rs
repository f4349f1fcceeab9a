//! The sinks' throughput: work-order revisions per second through the Kafka sink (sent,
//! acknowledged, and a progress record per closed timestamp) against a real broker
//! (tansu on 127.0.0.1, as the tests use), and audit-log rows per second written to
//! zstd Parquet, committed aside and renamed; and revisions per second appended to
//! work-orders.jsonl with its progress record; and the audit log's opening at start
//! over 90 days of history (six of the tables, a commit an hour) against an empty log
//! (`DEFECTFLOW_BENCH_KEEP_HISTORY=DIR` leaves that history in DIR).
//!
//! `cargo bench --bench sinks`. Without `--bench` (as under `cargo test`) it runs each
//! case once on small batches.

use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput};
use defectflow::kafka::KafkaConfig;
use defectflow::sinks::audit::{AuditLog, AuditRows, AuditStream, StockRow};
use defectflow::sinks::jsonl::JsonLinesSink;
use defectflow::sinks::kafka::KafkaSink;
use defectflow_schemas::{
    Assignment, BoundingBox, DefectClass, DefectTrack, Detection, Emitted, WoEvent, WoEventKind, WorkOrder,
};

/// As the `defectflow` binary runs when built with it.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A revision as the demo plant derives it (about 1 KB of JSON).
fn template() -> WorkOrder {
    let line = include_str!("../tests/scenarios/crack_grows.expected.jsonl").lines().next().unwrap_or_default();
    let message: Emitted = serde_json::from_str(line).unwrap_or_else(|e| panic!("scenario line: {e}"));
    match message {
        Emitted::WorkOrder(w) => *w,
        other => panic!("the scenario starts with a work order, not {other:?}"),
    }
}

/// `count` distinct revisions starting at sequence number `first`.
fn revisions(template: &WorkOrder, first: u64, count: u64) -> Vec<WorkOrder> {
    (first..first + count)
        .map(|i| {
            let mut w = template.clone();
            w.work_order_id = format!("WO-{:016x}", i / 4);
            w.revision = (i % 4) as u32 + 1;
            w.revised_at_ms += i;
            w
        })
        .collect()
}

/// `count` detections of 16 cameras at 15 frames/s, as the model reports them.
fn detections(count: u64) -> Vec<Detection> {
    (0..count)
        .map(|i| Detection {
            camera_id: format!("cam-{:02}", i % 16),
            frame_index: i / 16,
            capture_ms: 1_790_000_000_000 + i / 16 * 66,
            class: DefectClass::ALL[(i % 6) as usize],
            confidence: 0.5 + (i % 50) as f32 / 100.0,
            bbox: BoundingBox { x: (i % 600) as f32, y: (i % 340) as f32, width: 24.5, height: 8.25 },
            area_px: 192.0,
            model_version: "fd043778fd0c".into(),
            shadow: false,
        })
        .collect()
}

#[path = "support/broker.rs"]
mod broker;
use broker::broker;

/// `deliver` timed on closed timestamps of `batch` fresh revisions each.
fn revisions_per_closed_timestamp(
    c: &mut Criterion,
    group: &str,
    batch: u64,
    mut deliver: impl FnMut(u64, &[(u64, Emitted)]),
) {
    let template = template();
    let mut group = c.benchmark_group(group);
    group.sample_size(10);
    group.throughput(Throughput::Elements(batch));
    let mut next = 0u64;
    group.bench_function(BenchmarkId::new("revisions_per_closed_timestamp", batch), |b| {
        b.iter_batched(
            || {
                // A fresh closed timestamp of `batch` revisions, never seen before (made
                // outside the timing).
                let messages: Vec<(u64, Emitted)> = revisions(&template, next, batch)
                    .into_iter()
                    .map(|w| (next, Emitted::WorkOrder(Box::new(w))))
                    .collect();
                next += batch;
                (next, messages)
            },
            |(closed_before, messages)| deliver(closed_before, &messages),
            criterion::BatchSize::PerIteration,
        )
    });
    group.finish();
}

fn kafka_sink(c: &mut Criterion, batch: u64) {
    let Some(broker) = broker() else { return };
    let config: KafkaConfig =
        toml::from_str(&format!("brokers = \"{}\"\n", broker.1)).unwrap_or_else(|e| panic!("kafka config: {e}"));
    let mut sink = KafkaSink::start(&config).unwrap_or_else(|e| panic!("{e}"));
    revisions_per_closed_timestamp(c, "kafka_sink", batch, |closed_before, messages| {
        sink.deliver(closed_before, messages).unwrap_or_else(|e| panic!("{e}"))
    });
}

/// work-orders.jsonl: `batch` revisions of a closed timestamp appended, synced, and the
/// progress record written aside and renamed.
fn json_lines(c: &mut Criterion, batch: u64) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let mut sink = JsonLinesSink::open(dir.path()).unwrap_or_else(|e| panic!("{e}"));
    revisions_per_closed_timestamp(c, "json_lines", batch, |closed_before, messages| {
        sink.deliver(closed_before, messages).unwrap_or_else(|e| panic!("{e}"))
    });
}

fn audit_log(c: &mut Criterion, rows: u64) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let audit = AuditLog::open(dir.path()).unwrap_or_else(|e| panic!("{e}"));
    let batch = revisions(&template(), 0, rows);
    let mut group = c.benchmark_group("audit_log");
    group.sample_size(10);
    group.throughput(Throughput::Elements(rows));
    group.bench_function(BenchmarkId::new("work_order_rows", rows), |b| {
        b.iter(|| audit.write_work_orders(&batch).unwrap_or_else(|e| panic!("{e}")))
    });
    let detections = detections(rows);
    group.bench_function(BenchmarkId::new("detection_rows", rows), |b| {
        b.iter(|| audit.write_detections(&detections).unwrap_or_else(|e| panic!("{e}")))
    });
    group.finish();
}

/// An audit log of `days` days with `commits` commits a day, each a file in every one
/// of six tables (not alerts, which are rare): months of history, as a run leaves it.
fn history(dir: &Path, days: u64, commits: u64) {
    const DAY: u64 = 86_400_000;
    let t0 = 1_796_083_200_000; // 2026-12-01
    let order = template();
    let hour = Duration::from_secs(3600);
    let mut stream = AuditStream::open(dir, 1, hour).unwrap_or_else(|e| panic!("{e}"));
    for (i, at) in (0..days).flat_map(|d| (0..commits).map(move |c| t0 + d * DAY + c * (DAY / commits))).enumerate() {
        let time = i as u64 + 1;
        let mut w = order.clone();
        (w.revision, w.revised_at_ms) = (time as u32, at);
        let assignment = Assignment {
            work_order_id: w.work_order_id.clone(),
            revision: w.revision,
            technician_id: Some("T-1".into()),
            estimated_hours: 2.0,
            assigned_at_ms: at,
            reason: "least_workload".into(),
        };
        let detection = Detection { capture_ms: at, ..detections(1).remove(0) };
        let track = DefectTrack {
            track_id: "TR-1".into(),
            camera_id: detection.camera_id.clone(),
            asset_id: "A".into(),
            class: detection.class,
            state: defectflow_schemas::TrackState::Confirmed,
            first_seen_ms: at,
            last_seen_ms: at,
            hits: 3,
            bbox: detection.bbox,
            area_px: 12.0,
            size_mm: None,
            growth_px_per_min: 0.0,
            best_frame_index: 0,
            best_bbox: detection.bbox,
            best_capture_ms: at,
            model_version: "m".into(),
            shadow: false,
            evidence: None,
        };
        let stock = StockRow { part_id: "P-1".into(), at_ms: at, on_hand: 4, reserved: 1, available: 3 };
        let event = WoEvent {
            work_order_id: w.work_order_id.clone(),
            event: WoEventKind::Acknowledged,
            at_ms: at,
            technician_id: None,
            note: None,
            reason: None,
            actual_hours: None,
            downtime_hours: None,
        };
        let rows = AuditRows {
            detections: vec![detection],
            tracks: vec![(time, track)],
            inventory: vec![(time, stock)],
            wo_events: vec![(time, event)],
            failures: Vec::new(),
            suppressed: Vec::new(),
        };
        let messages = [(time, Emitted::WorkOrder(Box::new(w))), (time, Emitted::Assignment(assignment))];
        stream.append(time + 1, &messages, rows).unwrap_or_else(|e| panic!("{e}"));
    }
}

/// Opening the audit log at start over months of history against an empty one: with
/// the manifest, and without it (every footer read, as before the manifest).
fn audit_start(c: &mut Criterion, days: u64, commits: u64) {
    let empty = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let months = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let started = Instant::now();
    history(months.path(), days, commits);
    // To time a whole start over it: `defectflow run --out` a folder whose audit/ it is.
    if let Some(keep) = std::env::var_os("DEFECTFLOW_BENCH_KEEP_HISTORY") {
        std::fs::create_dir_all(&keep).unwrap_or_else(|e| panic!("{e}"));
        copy_tree(months.path(), Path::new(&keep));
    }
    let files = walk_parquet(months.path());
    eprintln!("audit_start: {days} days x {commits} commits: {files} files, written in {:?}", started.elapsed());
    let bare = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    copy_tree(months.path(), bare.path());
    let hour = Duration::from_secs(3600);
    let mut group = c.benchmark_group("audit_start");
    group.sample_size(10);
    for (name, dir) in [("empty", empty.path()), ("months", months.path())] {
        group.bench_function(BenchmarkId::new(name, days), |b| {
            b.iter(|| AuditStream::open(dir, 100_000, hour).unwrap_or_else(|e| panic!("{e}")))
        });
    }
    // A start writes the manifest it learnt: each iteration starts without one.
    let manifest = bare.path().join(".manifest.json");
    group.bench_function(BenchmarkId::new("months_no_manifest", days), |b| {
        b.iter_batched(
            || drop(std::fs::remove_file(&manifest)),
            |()| AuditStream::open(bare.path(), 100_000, hour).unwrap_or_else(|e| panic!("{e}")),
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

fn walk_parquet(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .map(|p| if p.is_dir() { walk_parquet(&p) } else { usize::from(p.extension().is_some_and(|e| e == "parquet")) })
        .sum()
}

fn copy_tree(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).into_iter().flatten().flatten() {
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            std::fs::create_dir_all(&target).unwrap_or_else(|e| panic!("{e}"));
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap_or_else(|e| panic!("{e}"));
        }
    }
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let mut c = Criterion::default().configure_from_args();
    kafka_sink(&mut c, if full { 10_000 } else { 100 });
    json_lines(&mut c, if full { 10_000 } else { 100 });
    audit_log(&mut c, if full { 100_000 } else { 1_000 });
    audit_start(&mut c, if full { 90 } else { 3 }, if full { 24 } else { 2 });
    c.final_summary();
}
