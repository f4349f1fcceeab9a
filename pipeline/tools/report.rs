//! `defectflow report`: the headline maintenance KPIs from the Parquet audit log, read
//! with the Parquet crate's Arrow reader. The figures and their definitions are those of the analyst notebooks
//! (`notebooks/`), so a data engineer gets them without Python:
//!
//! - work orders by status (from each one's latest revision) and open ones by priority;
//! - per asset: work orders, MTTR (mean hours to repair over its completed work orders:
//!   the downtime the CMMS reported with the completion, else the labour hours it
//!   reported, else first detection to the completing revision), the downtime reported,
//!   and MTBF (mean gap between the first detections of its consecutive work orders,
//!   false positives left out, hours; needs two);
//! - defects by asset and class (false positives left out);
//! - the false-positive rate per class (closed as false positive / all its work orders);
//! - detection-to-work-order latency in event time (first detection to revision 1,
//!   seconds): p50, p99 (nearest rank) and max;
//! - per technician: work orders whose latest revision names them, open ones and their
//!   estimated hours, done ones and their hours (the labour hours the CMMS reported with
//!   the completion, else the estimate) and the labour hours reported;
//! - the backlog as of the latest revision in the log: open, and overdue (open past its
//!   `due_at`, which the run set from `[work_orders.due_hours]`; rows written before
//!   work orders had one use the default targets, P1 8 h, P2 72 h, P3 14 days, P4 30
//!   days);
//! - parts short at some point (an inventory row with less available than reserved).

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::Context;
use arrow_array::{
    Array, BooleanArray, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray,
    UInt32Array,
};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde::Serialize;

use super::stats::{mean, nearest_rank};

/// The KPIs, as `--json` prints them.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Kpis {
    pub work_orders: StatusCounts,
    pub open_by_priority: BTreeMap<String, usize>,
    pub assets: Vec<AssetKpis>,
    pub defects: Vec<DefectCount>,
    pub false_positive_rate: BTreeMap<String, f64>,
    pub latency_s: Option<Latency>,
    pub technicians: Vec<TechnicianKpis>,
    pub backlog: Backlog,
    pub shortages: Vec<Shortage>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct StatusCounts {
    pub total: usize,
    pub open: usize,
    /// Open, but on hold.
    pub on_hold: usize,
    pub completed: usize,
    pub false_positive: usize,
    pub cancelled: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AssetKpis {
    pub asset_id: String,
    pub work_orders: usize,
    pub mttr_h: Option<f64>,
    /// Downtime the CMMS reported with its completions, hours.
    pub downtime_h: f64,
    pub mtbf_h: Option<f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DefectCount {
    pub asset_id: String,
    pub defect_class: String,
    pub work_orders: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TechnicianKpis {
    pub technician_id: String,
    pub work_orders: usize,
    pub open: usize,
    pub open_hours: f64,
    /// Completed work orders' hours: the labour reported, else the estimate.
    pub done_hours: f64,
    /// Labour hours the CMMS reported with completions.
    pub actual_hours: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Backlog {
    /// The latest revision time in the log (ms since the epoch).
    pub as_of_ms: i64,
    pub open: usize,
    pub overdue: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Shortage {
    pub part_id: String,
    /// Inventory rows (part and time) with less available than reserved.
    pub rows: usize,
    pub least_available: i64,
}

/// One work-order revision, as far as the KPIs need it.
#[derive(Clone, Debug)]
struct Revision {
    id: String,
    revision: u32,
    status: String,
    asset: String,
    class: String,
    priority: String,
    technician: Option<String>,
    hours: Option<f64>,
    detected_ms: i64,
    revised_ms: i64,
    /// `None` in rows written before work orders had a due date.
    due_ms: Option<i64>,
    /// What the CMMS reported with the completion.
    reported: Reported,
}

/// Reads the audit log under `audit` and computes the KPIs.
pub fn kpis(audit: &Path) -> anyhow::Result<Kpis> {
    let orders = read_table(audit, "work_orders")?
        .with_context(|| format!("{}: no work_orders table (is this an audit folder?)", audit.display()))?;
    let mut revisions = revisions(&orders)?;
    if let Some(events) = read_table(audit, "wo_events")? {
        let reported = completions(&events)?;
        for r in &mut revisions {
            r.reported = reported.get(&r.id).copied().unwrap_or_default();
        }
    }
    let inventory = read_table(audit, "inventory")?;
    let mut latest: BTreeMap<&str, &Revision> = BTreeMap::new();
    for r in &revisions {
        if latest.get(r.id.as_str()).is_none_or(|l| l.revision < r.revision) {
            latest.insert(&r.id, r);
        }
    }
    let latest: Vec<&Revision> = latest.into_values().collect();
    let (work_orders, open_by_priority) = status_counts(&latest);
    let (defects, false_positive_rate) = defect_counts(&latest);
    let mut latencies: Vec<f64> =
        revisions.iter().filter(|r| r.revision == 1).map(|r| (r.revised_ms - r.detected_ms) as f64 / 1000.0).collect();
    latencies.sort_by(f64::total_cmp);
    let latency_s = latencies.last().map(|&max| Latency {
        p50: nearest_rank(&latencies, 0.50),
        p99: nearest_rank(&latencies, 0.99),
        max,
    });
    let as_of_ms = revisions.iter().map(|r| r.revised_ms).max().unwrap_or(0);
    let overdue = latest.iter().filter(|r| !closed(&r.status) && due_ms(r).is_some_and(|due| as_of_ms > due)).count();
    let shortages = match inventory {
        Some(inventory) => shortages(&inventory)?,
        None => Vec::new(),
    };
    Ok(Kpis {
        backlog: Backlog { as_of_ms, open: work_orders.open, overdue },
        work_orders,
        open_by_priority,
        assets: asset_kpis(&latest),
        defects,
        false_positive_rate,
        latency_s,
        technicians: technician_kpis(&latest),
        shortages,
    })
}

fn closed(status: &str) -> bool {
    matches!(status, "completed" | "false_positive" | "cancelled")
}

/// When the work order is due: as the run set it, or for rows written before work
/// orders had a due date, the default target of its priority.
fn due_ms(r: &Revision) -> Option<i64> {
    static DEFAULTS: std::sync::OnceLock<defectflow_operators::derive::WorkOrderConfig> = std::sync::OnceLock::new();
    r.due_ms.or_else(|| {
        let defaults = DEFAULTS.get_or_init(Default::default);
        let (_, hours) = defaults.due_hours.iter().find(|(p, _)| format!("{p:?}") == r.priority)?;
        Some(r.detected_ms + (hours * 3_600_000.0).round() as i64)
    })
}

fn hours(ms: i64) -> f64 {
    ms as f64 / 3_600_000.0
}

/// Work orders by status (of their latest revisions), and the open ones by priority.
fn status_counts(latest: &[&Revision]) -> (StatusCounts, BTreeMap<String, usize>) {
    let mut counts = StatusCounts { total: latest.len(), ..StatusCounts::default() };
    let mut open_by_priority = BTreeMap::new();
    for r in latest {
        match r.status.as_str() {
            "completed" => counts.completed += 1,
            "false_positive" => counts.false_positive += 1,
            "cancelled" => counts.cancelled += 1,
            status => {
                counts.on_hold += usize::from(status == "on_hold");
                counts.open += 1;
                *open_by_priority.entry(r.priority.clone()).or_insert(0) += 1;
            }
        }
    }
    (counts, open_by_priority)
}

/// Per asset: work orders, mean time to repair and mean time between failures (false
/// positives left out).
fn asset_kpis(latest: &[&Revision]) -> Vec<AssetKpis> {
    let mut by_asset: BTreeMap<&str, Vec<&Revision>> = BTreeMap::new();
    for r in latest {
        by_asset.entry(&r.asset).or_default().push(r);
    }
    (by_asset.iter())
        .map(|(asset, orders)| {
            let completed = || orders.iter().filter(|r| r.status == "completed");
            let repairs: Vec<f64> = completed()
                .map(|r| {
                    let (labour, downtime) = r.reported;
                    downtime.or(labour).unwrap_or_else(|| hours(r.revised_ms - r.detected_ms))
                })
                .collect();
            let mut starts: Vec<i64> =
                orders.iter().filter(|r| r.status != "false_positive").map(|r| r.detected_ms).collect();
            starts.sort_unstable();
            let gaps: Vec<f64> = starts.windows(2).map(|w| hours(w[1] - w[0])).collect();
            AssetKpis {
                asset_id: (*asset).to_owned(),
                work_orders: orders.len(),
                mttr_h: mean(&repairs),
                downtime_h: completed().filter_map(|r| r.reported.1).sum(),
                mtbf_h: mean(&gaps),
            }
        })
        .collect()
}

/// Defects per asset and class (false positives left out), and each class's share of
/// false positives.
fn defect_counts(latest: &[&Revision]) -> (Vec<DefectCount>, BTreeMap<String, f64>) {
    let mut defects: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    let mut per_class: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for r in latest {
        let class = per_class.entry(&r.class).or_default();
        class.1 += 1;
        if r.status == "false_positive" {
            class.0 += 1;
        } else {
            *defects.entry((&r.asset, &r.class)).or_default() += 1;
        }
    }
    let defects = defects
        .into_iter()
        .map(|((asset, class), n)| DefectCount {
            asset_id: asset.to_owned(),
            defect_class: class.to_owned(),
            work_orders: n,
        })
        .collect();
    let false_positive_rate =
        per_class.into_iter().map(|(class, (fp, all))| (class.to_owned(), fp as f64 / all as f64)).collect();
    (defects, false_positive_rate)
}

/// Per technician: work orders assigned, and the open ones with their hours.
fn technician_kpis(latest: &[&Revision]) -> Vec<TechnicianKpis> {
    let mut technicians: BTreeMap<&str, TechnicianKpis> = BTreeMap::new();
    for r in latest {
        let Some(id) = r.technician.as_deref() else { continue };
        let t = technicians.entry(id).or_insert_with(|| TechnicianKpis {
            technician_id: id.to_owned(),
            work_orders: 0,
            open: 0,
            open_hours: 0.0,
            done_hours: 0.0,
            actual_hours: 0.0,
        });
        t.work_orders += 1;
        if !closed(&r.status) {
            t.open += 1;
            t.open_hours += r.hours.unwrap_or(0.0);
        } else if r.status == "completed" {
            t.done_hours += r.reported.0.or(r.hours).unwrap_or(0.0);
            t.actual_hours += r.reported.0.unwrap_or(0.0);
        }
    }
    technicians.into_values().collect()
}

/// Every committed file of a table (`<audit>/<table>/date=*/part-*.parquet`) as record
/// batches; `None` if the table has none.
pub(super) fn read_table(audit: &Path, table: &str) -> anyhow::Result<Option<Vec<RecordBatch>>> {
    let dir = audit.join(table);
    let mut files: Vec<PathBuf> = Vec::new();
    let Ok(partitions) = std::fs::read_dir(&dir) else { return Ok(None) };
    for partition in partitions {
        let partition = partition.with_context(|| format!("{}: cannot list", dir.display()))?.path();
        let Ok(entries) = std::fs::read_dir(&partition) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name();
            // Files being written are hidden (`.part-….tmp`).
            if path.extension().is_some_and(|e| e == "parquet") && !name.to_string_lossy().starts_with('.') {
                files.push(path);
            }
        }
    }
    if files.is_empty() {
        return Ok(None);
    }
    files.sort();
    let mut batches = Vec::new();
    for path in files {
        let unreadable = |e: parquet::errors::ParquetError| anyhow::anyhow!("{}: not readable: {e}", path.display());
        let file = File::open(&path).with_context(|| format!("{}: cannot open", path.display()))?;
        let reader = ParquetRecordBatchReaderBuilder::try_new(file).map_err(unreadable)?.build().map_err(unreadable)?;
        for batch in reader {
            batches.push(batch.map_err(|e| anyhow::anyhow!("{}: not readable: {e}", path.display()))?);
        }
    }
    Ok(Some(batches))
}

/// A column of a batch as the array type the audit log writes it with.
pub(super) fn column<'a, T: Array + 'static>(batch: &'a RecordBatch, name: &str) -> anyhow::Result<&'a T> {
    let column = batch.column_by_name(name).with_context(|| format!("audit column `{name}` is missing"))?;
    column
        .as_any()
        .downcast_ref::<T>()
        .with_context(|| format!("audit column `{name}`: {} is not the type written", column.data_type()))
}

/// A batch's `revision` column: signed now, unsigned in audit logs written by earlier
/// versions.
pub(super) fn revision_numbers(batch: &RecordBatch) -> anyhow::Result<Vec<u32>> {
    Ok(match batch.column_by_name("revision").map(|c| c.data_type()) {
        Some(arrow_schema::DataType::UInt32) => column::<UInt32Array>(batch, "revision")?.values().to_vec(),
        _ => column::<Int32Array>(batch, "revision")?.values().iter().map(|v| (*v).max(0) as u32).collect(),
    })
}

/// Row `i` of a text column; `None` where null.
pub(super) fn text(array: &StringArray, i: usize) -> Option<String> {
    (!array.is_null(i)).then(|| array.value(i).to_owned())
}

fn revisions(batches: &[RecordBatch]) -> anyhow::Result<Vec<Revision>> {
    let mut out = Vec::new();
    for batch in batches {
        let id = column::<StringArray>(batch, "work_order_id")?;
        let revision = revision_numbers(batch)?;
        let status = column::<StringArray>(batch, "status")?;
        let asset = column::<StringArray>(batch, "asset_id")?;
        let class = column::<StringArray>(batch, "defect_class")?;
        let priority = column::<StringArray>(batch, "priority")?;
        let technician = column::<StringArray>(batch, "technician_id")?;
        let hours = column::<Float64Array>(batch, "estimated_hours")?;
        let detected = column::<TimestampMillisecondArray>(batch, "detected_at")?;
        let revised = column::<TimestampMillisecondArray>(batch, "revised_at")?;
        // Not in files written before work orders had a due date.
        let due = match batch.column_by_name("due_at") {
            Some(_) => Some(column::<TimestampMillisecondArray>(batch, "due_at")?),
            None => None,
        };
        out.extend((0..batch.num_rows()).map(|i| Revision {
            id: text(id, i).unwrap_or_default(),
            revision: revision[i],
            status: text(status, i).unwrap_or_default(),
            asset: text(asset, i).unwrap_or_default(),
            class: text(class, i).unwrap_or_default(),
            priority: text(priority, i).unwrap_or_default(),
            technician: text(technician, i),
            hours: (!hours.is_null(i)).then(|| hours.value(i)),
            detected_ms: detected.value(i),
            revised_ms: revised.value(i),
            due_ms: due.filter(|d| !d.is_null(i)).map(|d| d.value(i)),
            reported: (None, None),
        }));
    }
    Ok(out)
}

/// What a `completed` wo-event reported: (labour hours, downtime hours).
type Reported = (Option<f64>, Option<f64>);

/// Per work order, the labour and downtime hours its (latest) `completed` event
/// reported; nothing from files written before events carried them.
fn completions(batches: &[RecordBatch]) -> anyhow::Result<BTreeMap<String, Reported>> {
    let mut out = BTreeMap::new();
    for batch in batches {
        let (Some(_), Some(_)) = (batch.column_by_name("actual_hours"), batch.column_by_name("downtime_hours")) else {
            continue;
        };
        let id = column::<StringArray>(batch, "work_order_id")?;
        let event = column::<StringArray>(batch, "event")?;
        let at = column::<TimestampMillisecondArray>(batch, "at")?;
        let labour = column::<Float64Array>(batch, "actual_hours")?;
        let downtime = column::<Float64Array>(batch, "downtime_hours")?;
        let value = |array: &Float64Array, i: usize| (!array.is_null(i)).then(|| array.value(i));
        for i in (0..batch.num_rows()).filter(|&i| event.value(i) == "completed") {
            let entry = out.entry(text(id, i).unwrap_or_default()).or_insert((i64::MIN, (None, None)));
            if at.value(i) >= entry.0 {
                *entry = (at.value(i), (value(labour, i), value(downtime, i)));
            }
        }
    }
    Ok(out.into_iter().map(|(id, (_, reported))| (id, reported)).collect())
}

fn shortages(inventory: &[RecordBatch]) -> anyhow::Result<Vec<Shortage>> {
    let mut short: BTreeMap<String, Shortage> = BTreeMap::new();
    for batch in inventory {
        let part = column::<StringArray>(batch, "part_id")?;
        let available = column::<Int64Array>(batch, "available")?;
        let shortage = column::<BooleanArray>(batch, "shortage")?;
        for i in (0..batch.num_rows()).filter(|&i| shortage.value(i)) {
            let id = text(part, i).unwrap_or_default();
            let level = available.value(i);
            let entry = short.entry(id.clone()).or_insert(Shortage { part_id: id, rows: 0, least_available: level });
            entry.rows += 1;
            entry.least_available = entry.least_available.min(level);
        }
    }
    Ok(short.into_values().collect())
}

/// The KPIs as a few tables for a terminal.
pub fn render(k: &Kpis) -> String {
    let mut out = String::new();
    let w = &k.work_orders;
    out.push_str(&format!(
        "work orders: {} ({} open of which {} on hold, {} completed, {} false positive, {} cancelled); open by priority: {}\n",
        w.total,
        w.open,
        w.on_hold,
        w.completed,
        w.false_positive,
        w.cancelled,
        k.open_by_priority.iter().map(|(p, n)| format!("{p} {n}")).collect::<Vec<_>>().join(", ")
    ));
    out.push_str(&format!(
        "backlog: {} open, {} overdue (as of {})\n",
        k.backlog.open,
        k.backlog.overdue,
        crate::clock::utc_date(k.backlog.as_of_ms.max(0) as u64)
    ));
    if let Some(l) = &k.latency_s {
        out.push_str(&format!(
            "detection to work order (event time): p50 {:.1} s, p99 {:.1} s, max {:.1} s\n",
            l.p50, l.p99, l.max
        ));
    }
    let hours = |h: Option<f64>| h.map_or("-".to_owned(), |h| format!("{h:.3}"));
    out.push_str(&format!(
        "\n{:<16} {:>11} {:>9} {:>10} {:>9}\n",
        "asset", "work orders", "MTTR h", "downtime h", "MTBF h"
    ));
    for a in &k.assets {
        out.push_str(&format!(
            "{:<16} {:>11} {:>9} {:>10.1} {:>9}\n",
            a.asset_id,
            a.work_orders,
            hours(a.mttr_h),
            a.downtime_h,
            hours(a.mtbf_h)
        ));
    }
    out.push_str(&format!("\n{:<16} {:<18} {:>11}\n", "asset", "defect class", "work orders"));
    for d in &k.defects {
        out.push_str(&format!("{:<16} {:<18} {:>11}\n", d.asset_id, d.defect_class, d.work_orders));
    }
    out.push_str(&format!("\n{:<18} {:>20}\n", "defect class", "false-positive rate"));
    for (class, rate) in &k.false_positive_rate {
        out.push_str(&format!("{class:<18} {:>19.1}%\n", rate * 100.0));
    }
    out.push_str(&format!(
        "\n{:<12} {:>11} {:>6} {:>11} {:>11} {:>13}\n",
        "technician", "work orders", "open", "open hours", "done hours", "actual hours"
    ));
    for t in &k.technicians {
        out.push_str(&format!(
            "{:<12} {:>11} {:>6} {:>11.1} {:>11.1} {:>13.1}\n",
            t.technician_id, t.work_orders, t.open, t.open_hours, t.done_hours, t.actual_hours
        ));
    }
    if k.shortages.is_empty() {
        out.push_str("\nparts shortages: none\n");
    } else {
        out.push_str(&format!("\n{:<18} {:>5} {:>15}\n", "part short", "times", "least available"));
        for s in &k.shortages {
            out.push_str(&format!("{:<18} {:>5} {:>15}\n", s.part_id, s.rows, s.least_available));
        }
    }
    out
}
