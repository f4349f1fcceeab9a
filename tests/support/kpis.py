"""The KPIs of `defectflow report`, recomputed from the Parquet audit log with polars,
independently of the Rust code (same definitions, see pipeline/tools/report.rs). Prints JSON."""
import json
import math
import sys

import polars as pl

audit = sys.argv[1]
wo = pl.scan_parquet(f"{audit}/work_orders/**/*.parquet", hive_partitioning=True).collect()
latest = wo.sort("revision").group_by("work_order_id").last()
ms = lambda a, b: (pl.col(a) - pl.col(b)).dt.total_milliseconds()
is_closed = pl.col("status").is_in(["completed", "false_positive", "cancelled"])

# What the CMMS reported with each work order's (latest) completion: labour and downtime hours.
try:
    ev = pl.scan_parquet(f"{audit}/wo_events/**/*.parquet", hive_partitioning=True, missing_columns="insert").collect()
    done = (ev.filter(pl.col("event") == "completed").sort("at").group_by("work_order_id").last()
            .select("work_order_id", pl.col("actual_hours").alias("labour_h"), "downtime_hours"))
except FileNotFoundError:
    done = pl.DataFrame(schema={"work_order_id": pl.Utf8, "labour_h": pl.Float64, "downtime_hours": pl.Float64})
latest = latest.join(done, on="work_order_id", how="left")

counts = {
    "total": latest.height,
    "open": latest.filter(~is_closed).height,
    "on_hold": latest.filter(pl.col("status") == "on_hold").height,
    "completed": latest.filter(pl.col("status") == "completed").height,
    "false_positive": latest.filter(pl.col("status") == "false_positive").height,
    "cancelled": latest.filter(pl.col("status") == "cancelled").height,
}
open_by_priority = dict(latest.filter(~is_closed).group_by("priority").len().iter_rows())

assets = []
for asset in sorted(latest["asset_id"].unique()):
    rows = latest.filter(pl.col("asset_id") == asset)
    completed = rows.filter(pl.col("status") == "completed")
    repairs = completed.select(pl.coalesce("downtime_hours", "labour_h", ms("revised_at", "detected_at") / 3.6e6)).to_series()
    starts = sorted(rows.filter(pl.col("status") != "false_positive")["detected_at"].to_list())
    gaps = [(b - a).total_seconds() / 3600 for a, b in zip(starts, starts[1:])]
    assets.append({
        "asset_id": asset,
        "work_orders": rows.height,
        "mttr_h": repairs.mean() if repairs.len() else None,
        "downtime_h": float(completed["downtime_hours"].fill_null(0).sum()),
        "mtbf_h": sum(gaps) / len(gaps) if gaps else None,
    })

defects = [
    {"asset_id": a, "defect_class": c, "work_orders": n}
    for a, c, n in latest.filter(pl.col("status") != "false_positive")
    .group_by("asset_id", "defect_class").len().sort("asset_id", "defect_class").iter_rows()
]
fp_rate = {c: r for c, r in latest.group_by("defect_class").agg((pl.col("status") == "false_positive").mean()).iter_rows()}

lat = sorted(wo.filter(pl.col("revision") == 1).select(ms("revised_at", "detected_at") / 1000).to_series().to_list())
rank = lambda p: lat[min(len(lat), max(1, math.ceil(p * len(lat)))) - 1]
latency = {"p50": rank(0.5), "p99": rank(0.99), "max": lat[-1]} if lat else None

technicians = []
held = latest.filter(pl.col("technician_id").is_not_null())
for tech in sorted(held["technician_id"].unique()):
    rows = held.filter(pl.col("technician_id") == tech)
    still = rows.filter(~is_closed)
    done_rows = rows.filter(pl.col("status") == "completed")
    technicians.append({
        "technician_id": tech,
        "work_orders": rows.height,
        "open": still.height,
        "open_hours": float(still["estimated_hours"].fill_null(0).sum()),
        "done_hours": float(done_rows.select(pl.coalesce("labour_h", "estimated_hours").fill_null(0)).to_series().sum()),
        "actual_hours": float(done_rows["labour_h"].fill_null(0).sum()),
    })

# Overdue: open past the due date the run set from its [work_orders.due_hours].
as_of = wo["revised_at"].max()
overdue = latest.filter(~is_closed & pl.col("due_at").is_not_null() & (pl.col("due_at") < as_of)).height
backlog = {"as_of_ms": int(as_of.timestamp() * 1000), "open": counts["open"], "overdue": overdue}

shortages = []
try:
    inv = pl.scan_parquet(f"{audit}/inventory/**/*.parquet", hive_partitioning=True).collect()
    for part, rows, least in (inv.filter(pl.col("shortage")).group_by("part_id")
                              .agg(pl.len(), pl.col("available").min()).sort("part_id").iter_rows()):
        shortages.append({"part_id": part, "rows": rows, "least_available": least})
except FileNotFoundError:
    pass

print(json.dumps({
    "work_orders": counts, "open_by_priority": open_by_priority, "assets": assets, "defects": defects,
    "false_positive_rate": fp_rate, "latency_s": latency, "technicians": technicians, "backlog": backlog,
    "shortages": shortages,
}))
