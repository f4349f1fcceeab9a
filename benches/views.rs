//! View maintenance under load: the workload and stock views over 1M open work orders,
//! 10k technicians and 50k parts, kept by differential dataflow on 2 workers, against
//! recomputing the same views from scratch with polars on the same data, in one run.
//!
//! `cargo bench --bench views` (sizes: `DEFECTFLOW_BENCH_ORDERS`, default 1,000,000).
//! Without `--bench` (as under `cargo test`) it runs once on 10,000 work orders.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use defectflow_operators::assign::Workload;
use defectflow_operators::inventory::StockLevels;
use differential_dataflow::input::Input;
use polars::prelude::*;
use timely::dataflow::operators::Probe;

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
    let criterion = Arc::new(Mutex::new(
        Criterion::default().sample_size(20).measurement_time(Duration::from_secs(8)).configure_from_args(),
    ));
    polars_recompute(&mut criterion.lock().expect("criterion"), orders);
    differential_views(Arc::clone(&criterion), orders);
    criterion.lock().expect("criterion").final_summary();
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

/// The differential views on 2 workers: loads every open work order, then measures
/// single changes and batches of 10k changes (a change closes one work order or opens one).
fn differential_views(criterion: Arc<Mutex<Criterion>>, orders: u64) {
    timely::execute(timely::Config::process(2), move |worker| {
        let (mut assignments, mut lines, mut movements, probe) = worker.dataflow::<u64, _, _>(|scope| {
            let (assignments_in, assignments) = scope.new_collection::<(String, String, i64), isize>();
            let (lines_in, lines) = scope.new_collection::<(String, String, i64), isize>();
            let (movements_in, movements) = scope.new_collection::<(String, i64), isize>();
            let probe = timely::dataflow::ProbeHandle::new();
            assignments.workload().inner.probe_with(&probe);
            lines.stock_levels(movements).inner.probe_with(&probe);
            (assignments_in, lines_in, movements_in, probe)
        });
        if worker.index() != 0 {
            drop((assignments, lines, movements));
            while !probe.done() {
                worker.step_or_park(None);
            }
            return;
        }
        let change =
            |i: u64,
             diff: isize,
             a: &mut differential_dataflow::input::InputSession<u64, (String, String, i64), isize>,
             l: &mut differential_dataflow::input::InputSession<u64, (String, String, i64), isize>| {
                let o = order(i);
                a.update((tech(o.technician), wo(i), o.hours), diff);
                for (p, q) in o.parts {
                    l.update((part(p), wo(i), q), diff);
                }
            };
        let load = Instant::now();
        for p in 0..PARTS {
            movements.insert((part(p), 10 + (p % 7) as i64));
        }
        for i in 0..orders {
            change(i, 1, &mut assignments, &mut lines);
        }
        let mut time = 1u64;
        let mut settle = |time: u64,
                          a: &mut differential_dataflow::input::InputSession<u64, (String, String, i64), isize>,
                          l: &mut differential_dataflow::input::InputSession<u64, (String, String, i64), isize>,
                          m: &mut differential_dataflow::input::InputSession<u64, (String, i64), isize>,
                          worker: &mut timely::worker::Worker<_>| {
            a.advance_to(time);
            l.advance_to(time);
            m.advance_to(time);
            a.flush();
            l.flush();
            m.flush();
            while probe.less_than(&time) {
                worker.step();
            }
        };
        settle(time, &mut assignments, &mut lines, &mut movements, worker);
        println!("loaded {orders} open work orders into the differential views in {:.2?}", load.elapsed());

        // Work order `next_new` is the next to open; `next_close` the next open one to close.
        let mut next_new = orders;
        let mut next_close = 0u64;
        let mut c = criterion.lock().expect("criterion");
        let mut group = c.benchmark_group("views_differential_2_workers");
        group.throughput(Throughput::Elements(1));
        group.bench_function(BenchmarkId::new("single_change", orders), |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for k in 0..iters {
                    if k % 2 == 0 {
                        change(next_close, -1, &mut assignments, &mut lines);
                        next_close += 1;
                    } else {
                        change(next_new, 1, &mut assignments, &mut lines);
                        next_new += 1;
                    }
                    time += 1;
                    settle(time, &mut assignments, &mut lines, &mut movements, worker);
                }
                start.elapsed()
            })
        });
        group.throughput(Throughput::Elements(BATCH));
        group.bench_function(BenchmarkId::new("batch_10k_changes", orders), |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for _ in 0..iters {
                    for _ in 0..BATCH / 2 {
                        change(next_close, -1, &mut assignments, &mut lines);
                        next_close += 1;
                        change(next_new, 1, &mut assignments, &mut lines);
                        next_new += 1;
                    }
                    time += 1;
                    settle(time, &mut assignments, &mut lines, &mut movements, worker);
                }
                start.elapsed()
            })
        });
        group.finish();
        drop(c);
        drop((assignments, lines, movements));
        while !probe.done() {
            worker.step();
        }
    })
    .expect("timely starts");
}
