//! View maintenance under load: the workload and stock views over 1M open work orders,
//! 10k technicians and 50k parts, kept by differential dataflow on 2 workers, against
//! recomputing the same views from scratch with polars on the same data, in one run.
//!
//! `cargo bench --bench views` (sizes: `DEFECTFLOW_BENCH_ORDERS`, default 1,000,000).
//! Without `--bench` (as under `cargo test`) it runs once on 10,000 work orders.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use defectflow_operators::assign::Workload;
use defectflow_operators::inventory::StockLevels;
use differential_dataflow::input::Input;
use polars::prelude::*;
use timely::dataflow::operators::{Inspect, Probe};

const TECHNICIANS: u64 = 10_000;
const PARTS: u64 = 50_000;
const BATCH: u64 = 10_000;

/// One open work order: technician, hours (hundredths), two part lines.
#[derive(Clone, Copy)]
struct OpenOrder {
    technician: u64,
    hours: i64,
    parts: [(u64, i64); 2],
}

fn order(i: u64) -> OpenOrder {
    // A fixed mixing function: the same data in every run and for both engines.
    let h = i.wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(17);
    OpenOrder {
        technician: h % TECHNICIANS,
        hours: 50 + (h >> 20) as i64 % 750,
        parts: [((h >> 7) % PARTS, 1 + (h >> 40) as i64 % 3), ((h >> 33) % PARTS, 1 + (h >> 50) as i64 % 2)],
    }
}

fn tech(t: u64) -> String {
    format!("T-{t:05}")
}
fn part(p: u64) -> String {
    format!("P-{p:06}")
}
fn wo(i: u64) -> String {
    format!("WO-{i:016x}")
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let orders: u64 = if full {
        std::env::var("DEFECTFLOW_BENCH_ORDERS").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000)
    } else {
        10_000
    };
    let mut criterion =
        Criterion::default().sample_size(20).measurement_time(Duration::from_secs(8)).configure_from_args();
    polars_recompute(&mut criterion, orders);
    differential_views(&mut criterion, orders);
    criterion.final_summary();
}

/// The same views computed from scratch: group-by sums over assignments and part lines,
/// joined with stock on hand.
fn polars_recompute(c: &mut Criterion, orders: u64) {
    let all: Vec<OpenOrder> = (0..orders).map(order).collect();
    let assignments = df!(
        "technician_id" => all.iter().map(|o| tech(o.technician)).collect::<Vec<_>>(),
        "hours" => all.iter().map(|o| o.hours).collect::<Vec<_>>(),
    )
    .expect("assignments frame");
    let lines = df!(
        "part_id" => all.iter().flat_map(|o| o.parts.map(|(p, _)| part(p))).collect::<Vec<_>>(),
        "quantity" => all.iter().flat_map(|o| o.parts.map(|(_, q)| q)).collect::<Vec<_>>(),
    )
    .expect("part lines frame");
    let stock = df!(
        "part_id" => (0..PARTS).map(part).collect::<Vec<_>>(),
        "on_hand" => (0..PARTS).map(|p| 10 + (p % 7) as i64).collect::<Vec<_>>(),
    )
    .expect("stock frame");
    let mut group = c.benchmark_group("views_recomputed_polars");
    group.throughput(Throughput::Elements(1));
    group.bench_function(BenchmarkId::new("workload_and_stock", orders), |b| {
        b.iter(|| {
            let workload = assignments
                .clone()
                .lazy()
                .group_by([col("technician_id")])
                .agg([col("hours").sum()])
                .collect()
                .expect("workload");
            let reserved =
                lines.clone().lazy().group_by([col("part_id")]).agg([col("quantity").sum().alias("reserved")]);
            let levels = stock
                .clone()
                .lazy()
                .join(reserved, [col("part_id")], [col("part_id")], JoinArgs::new(JoinType::Left))
                .with_column((col("on_hand") - col("reserved").fill_null(lit(0))).alias("available"))
                .collect()
                .expect("stock levels");
            (workload.height(), levels.height())
        })
    });
    group.finish();
}

/// Changes sent to the dataflow: close the open work orders in the first range, open
/// those in the second; the reply comes once both views reflect them.
struct Changes {
    close: std::ops::Range<u64>,
    open: std::ops::Range<u64>,
}

type Rows = differential_dataflow::input::InputSession<u64, (String, String, i64), isize>;

fn apply(i: u64, diff: isize, assignments: &mut Rows, lines: &mut Rows) {
    let o = order(i);
    assignments.update((tech(o.technician), wo(i), o.hours), diff);
    for (p, q) in o.parts {
        lines.update((part(p), wo(i), q), diff);
    }
}

/// The differential views on 2 workers: loads every open work order, then measures
/// single changes and batches of 10k changes (a change closes one work order or opens
/// one). Criterion drives from this thread; worker 0 applies each change set, steps until
/// both views are up to date, and replies.
fn differential_views(c: &mut Criterion, orders: u64) {
    let (to_worker, from_bench) = mpsc::channel::<Changes>();
    let (to_bench, from_worker) = mpsc::channel::<()>();
    let from_bench = Arc::new(Mutex::new(Some(from_bench)));
    let to_bench = Mutex::new(to_bench);
    let load = Instant::now();
    // Updates (row, time, diff) leaving the two views, counted to report view updates/s.
    let view_updates = Arc::new(AtomicU64::new(0));
    let counted = Arc::clone(&view_updates);
    let guards = timely::execute(timely::Config::process(2), move |worker| {
        let view_updates = Arc::clone(&counted);
        let (mut assignments, mut lines, mut movements, probe) = worker.dataflow::<u64, _, _>(|scope| {
            let (assignments_in, assignments) = scope.new_collection::<(String, String, i64), isize>();
            let (lines_in, lines) = scope.new_collection::<(String, String, i64), isize>();
            let (movements_in, movements) = scope.new_collection::<(String, i64), isize>();
            let probe = timely::dataflow::ProbeHandle::new();
            let (w, s) = (Arc::clone(&view_updates), Arc::clone(&view_updates));
            assignments
                .workload()
                .inner
                .inspect(move |_| {
                    w.fetch_add(1, Ordering::Relaxed);
                })
                .probe_with(&probe);
            lines
                .stock_levels(movements)
                .inner
                .inspect(move |_| {
                    s.fetch_add(1, Ordering::Relaxed);
                })
                .probe_with(&probe);
            (assignments_in, lines_in, movements_in, probe)
        });
        let commands = if worker.index() == 0 { from_bench.lock().expect("channel").take() } else { None };
        let Some(commands) = commands else {
            drop((assignments, lines, movements));
            while !probe.done() {
                worker.step_or_park(None);
            }
            return;
        };
        let reply = to_bench.lock().expect("channel").clone();
        for p in 0..PARTS {
            movements.insert((part(p), 10 + (p % 7) as i64));
        }
        for i in 0..orders {
            apply(i, 1, &mut assignments, &mut lines);
        }
        let mut time = 0u64;
        let mut settle = |assignments: &mut Rows, lines: &mut Rows, worker: &mut timely::worker::Worker| {
            time += 1;
            assignments.advance_to(time);
            lines.advance_to(time);
            movements.advance_to(time);
            assignments.flush();
            lines.flush();
            movements.flush();
            while probe.less_than(&time) {
                worker.step();
            }
        };
        settle(&mut assignments, &mut lines, worker);
        reply.send(()).expect("bench listens");
        while let Ok(changes) = commands.recv() {
            for i in changes.close {
                apply(i, -1, &mut assignments, &mut lines);
            }
            for i in changes.open {
                apply(i, 1, &mut assignments, &mut lines);
            }
            settle(&mut assignments, &mut lines, worker);
            reply.send(()).expect("bench listens");
        }
    })
    .expect("timely starts");
    from_worker.recv().expect("views loaded");
    println!("loaded {orders} open work orders into the differential views in {:.2?}", load.elapsed());

    // Work order `next_open` is the next to open; `next_close` the oldest still open.
    let mut next_open = orders;
    let mut next_close = 0u64;
    let mut round = |close: u64, open: u64| {
        to_worker
            .send(Changes { close: next_close..next_close + close, open: next_open..next_open + open })
            .expect("worker listens");
        next_close += close;
        next_open += open;
        from_worker.recv().expect("worker replies");
    };
    let mut group = c.benchmark_group("views_differential_2_workers");
    group.throughput(Throughput::Elements(1));
    let mut flip = false;
    group.bench_function(BenchmarkId::new("single_change", orders), |b| {
        b.iter(|| {
            flip = !flip;
            if flip { round(1, 0) } else { round(0, 1) }
        })
    });
    let before = view_updates.load(Ordering::Relaxed);
    let start = Instant::now();
    round(BATCH / 2, BATCH / 2);
    let elapsed = start.elapsed();
    let updates = view_updates.load(Ordering::Relaxed) - before;
    println!(
        "one batch of {BATCH} changes: {updates} view updates in {elapsed:.2?} ({:.0} view updates/s)",
        updates as f64 / elapsed.as_secs_f64()
    );
    group.throughput(Throughput::Elements(BATCH));
    group.bench_function(BenchmarkId::new("batch_10k_changes", orders), |b| b.iter(|| round(BATCH / 2, BATCH / 2)));
    group.finish();
    drop(to_worker);
    for result in guards.join() {
        result.expect("worker finished");
    }
}
