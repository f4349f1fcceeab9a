//! The Parquet audit log written by `defectflow replay --audit` reads back with Python
//! polars, pyarrow and DuckDB (hive partitioning), signed integers and all, and holds
//! exactly the revisions, assignments and events of the run, with no partial file left
//! behind.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use serde_json::Value;

fn analytics_python() -> String {
    std::env::var("DEFECTFLOW_ANALYTICS_PYTHON")
        .expect("DEFECTFLOW_ANALYTICS_PYTHON names a python with polars (scripts/install.sh makes one)")
}

const READ_BACK: &str = r#"
import glob, json, sys
import polars as pl
root = sys.argv[1]
out = {}
for table in ["work_orders", "assignments", "wo_events", "alerts", "suppressed"]:
    if not glob.glob(f"{root}/{table}/**/*.parquet", recursive=True):
        out[table] = {"rows": 0, "dates": []}
        continue
    df = pl.scan_parquet(f"{root}/{table}/**/*.parquet", hive_partitioning=True).collect()
    out[table] = {"rows": df.height, "dates": sorted({str(d) for d in df["date"]})}
    if table == "work_orders":
        out[table]["keys"] = sorted([r, i] for r, i in zip(df["revision"], df["work_order_id"]))
        out[table]["score_is_sum"] = all(
            abs(s - (a + b + c + d)) < 0.2
            for s, a, b, c, d in zip(df["severity_score"], df["severity_size"], df["severity_growth"],
                                     df["severity_criticality"], df["severity_history"]))
        out[table]["revised_at_type"] = str(df.schema["revised_at"])
        out[table]["views"] = sorted([i, r, v["camera_id"], v["track_id"]]
                                     for i, r, s in zip(df["work_order_id"], df["revision"], df["other_views"])
                                     if s is not None for v in json.loads(s))
    if table in ("work_orders", "assignments"):
        out[table]["revision_type"] = str(df.schema["revision"])
    if table == "suppressed":
        out[table]["held_by"] = sorted(set(df["false_positive"]))
        out[table]["after_closing"] = df.select((pl.col("at") >= pl.col("until") - pl.duration(hours=168)).all()).item()
print(json.dumps(out))
"#;

/// The same tables through pyarrow's datasets and DuckDB, with hive partitioning.
const READ_BACK_OTHERS: &str = r#"
import glob, json, sys
import duckdb
import pyarrow.dataset as ds
root = sys.argv[1]
con = duckdb.connect()
out = {}
for table in ["work_orders", "assignments", "wo_events"]:
    if not glob.glob(f"{root}/{table}/**/*.parquet", recursive=True):
        out[table] = {"pyarrow_rows": 0, "duckdb_rows": 0}
        continue
    arrow = ds.dataset(f"{root}/{table}", format="parquet", partitioning="hive").to_table()
    scan = f"read_parquet('{root}/{table}/**/*.parquet', hive_partitioning = true)"
    out[table] = {
        "pyarrow_rows": arrow.num_rows,
        "pyarrow_partition": "date" in arrow.column_names,
        "duckdb_rows": con.execute(f"select count(*) from {scan}").fetchone()[0],
        "duckdb_dates": sorted(str(d) for (d,) in con.execute(f"select distinct date from {scan}").fetchall()),
    }
    if table == "work_orders":
        out[table]["pyarrow_keys"] = sorted([r, i] for r, i in zip(arrow["revision"].to_pylist(), arrow["work_order_id"].to_pylist()))
        out[table]["duckdb_keys"] = sorted([r, i] for r, i in con.execute(f"select revision, work_order_id from {scan}").fetchall())
        out[table]["duckdb_revised_at_type"] = con.execute(f"select typeof(revised_at) from {scan} limit 1").fetchone()[0]
    if table in ("work_orders", "assignments"):
        out[table]["pyarrow_revision_type"] = str(arrow.schema.field("revision").type)
        out[table]["duckdb_revision_type"] = con.execute(f"select typeof(revision) from {scan} limit 1").fetchone()[0]
print(json.dumps(out))
"#;

#[test]
fn the_audit_log_reads_back_with_polars_and_matches_the_run() {
    for name in ["repair_recurrence", "crack_grows", "two_views", "false_positive"] {
        let dir = tempfile::tempdir().expect("temp dir");
        let scenario = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/scenarios/{name}.toml"));
        let jsonl = dir.path().join("out.jsonl");
        let audit = dir.path().join("audit");
        replay(name, &jsonl, &audit);

        let lines: Vec<Value> = std::fs::read_to_string(&jsonl)
            .expect("jsonl")
            .lines()
            .map(|l| serde_json::from_str(l).expect("json line"))
            .collect();
        let revisions: BTreeSet<(u64, String)> = lines
            .iter()
            .filter_map(|l| l.get("work_order"))
            .map(|w| (w["revision"].as_u64().expect("revision"), w["work_order_id"].as_str().expect("id").to_owned()))
            .collect();
        let assignments = lines.iter().filter(|l| l.get("assignment").is_some()).count();
        let alerts = lines.iter().filter(|l| l.get("alert").is_some()).count();
        // Each revision's other views: (id, revision, camera, track).
        let mut views: Vec<Value> = lines
            .iter()
            .filter_map(|l| l.get("work_order"))
            .flat_map(|w| {
                let views = w["other_views"].as_array().cloned().unwrap_or_default();
                views
                    .into_iter()
                    .map(move |v| serde_json::json!([w["work_order_id"], w["revision"], v["camera_id"], v["track_id"]]))
            })
            .collect();
        views.sort_by_key(|v| v.to_string());
        let events = std::fs::read_to_string(&scenario).expect("scenario").matches("[[events]]").count();

        let output = Command::new(analytics_python())
            .args(["-c", READ_BACK, audit.to_str().expect("utf-8")])
            .output()
            .expect("run python");
        assert!(output.status.success(), "{name}: polars failed: {}", String::from_utf8_lossy(&output.stderr));
        let read: Value = serde_json::from_slice(&output.stdout).expect("python prints JSON");

        let keys: BTreeSet<(u64, String)> = read["work_orders"]["keys"]
            .as_array()
            .expect("keys")
            .iter()
            .map(|k| (k[0].as_u64().expect("revision"), k[1].as_str().expect("id").to_owned()))
            .collect();
        assert_eq!(read["work_orders"]["rows"].as_u64(), Some(revisions.len() as u64), "{name}: one row per revision");
        assert_eq!(keys, revisions, "{name}: the same (revision, id) pairs");
        assert_eq!(read["work_orders"]["score_is_sum"], Value::Bool(true), "{name}: components sum to the score");
        assert_eq!(read["work_orders"]["revised_at_type"], "Datetime(time_unit='ms', time_zone='UTC')");
        assert_eq!(read["work_orders"]["dates"], serde_json::json!(["2026-01-05"]), "{name}: date partition");
        let mut read_views = read["work_orders"]["views"].as_array().cloned().unwrap_or_default();
        read_views.sort_by_key(|v| v.to_string());
        assert_eq!(read_views, views, "{name}: the other cameras' views of each revision");
        assert_eq!(name == "two_views", !views.is_empty(), "{name}: {views:?}");
        assert_eq!(read["assignments"]["rows"].as_u64(), Some(assignments as u64), "{name}: assignments");
        assert_eq!(read["wo_events"]["rows"].as_u64(), Some(events as u64), "{name}: events");
        assert_eq!(read["alerts"]["rows"].as_u64(), Some(alerts as u64), "{name}: alerts");
        // Sightings a false positive held back: audited, naming it, after it was closed.
        let false_positives: BTreeSet<&str> = lines
            .iter()
            .filter_map(|l| l.get("work_order"))
            .filter(|w| w["status"] == "false_positive")
            .filter_map(|w| w["work_order_id"].as_str())
            .collect();
        let held_by: BTreeSet<&str> =
            read["suppressed"]["held_by"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        assert_eq!(held_by, false_positives, "{name}: sightings held back: {}", read["suppressed"]);
        assert_eq!(name == "false_positive", read["suppressed"]["rows"].as_u64() > Some(0), "{name}");
        if name == "false_positive" {
            assert_eq!(read["suppressed"]["after_closing"], true, "{name}: held back only once closed");
        }

        // pyarrow and DuckDB read the same rows, partitions and keys.
        let output = Command::new(analytics_python())
            .args(["-c", READ_BACK_OTHERS, audit.to_str().expect("utf-8")])
            .output()
            .expect("run python");
        assert!(output.status.success(), "{name}: pyarrow/DuckDB failed: {}", String::from_utf8_lossy(&output.stderr));
        let others: Value = serde_json::from_slice(&output.stdout).expect("python prints JSON");
        for table in ["work_orders", "assignments", "wo_events"] {
            let rows = &read[table]["rows"];
            assert_eq!(&others[table]["pyarrow_rows"], rows, "{name}: {table} through pyarrow: {others}");
            assert_eq!(&others[table]["duckdb_rows"], rows, "{name}: {table} through DuckDB: {others}");
            if rows.as_u64() > Some(0) {
                assert_eq!(others[table]["pyarrow_partition"], true, "{name}: {table}: {others}");
                assert_eq!(others[table]["duckdb_dates"], read[table]["dates"], "{name}: {table}: {others}");
            }
        }
        for reader in ["pyarrow_keys", "duckdb_keys"] {
            assert_eq!(others["work_orders"][reader], read["work_orders"]["keys"], "{name}: {reader}");
        }
        assert_eq!(others["work_orders"]["duckdb_revised_at_type"], "TIMESTAMP WITH TIME ZONE", "{name}");
        // Signed integers: what each reader's arithmetic and joins expect, without casts.
        for table in ["work_orders", "assignments"] {
            if read[table]["rows"].as_u64() > Some(0) {
                assert_eq!(read[table]["revision_type"], "Int32", "{name}: {table} through polars");
                assert_eq!(others[table]["pyarrow_revision_type"], "int32", "{name}: {table} through pyarrow");
                assert_eq!(others[table]["duckdb_revision_type"], "INTEGER", "{name}: {table} through DuckDB");
            }
        }

        let locks = audit.join(".locks").display().to_string();
        let leftovers: Vec<_> =
            walk(&audit).into_iter().filter(|p| !p.ends_with(".parquet") && !p.starts_with(&locks)).collect();
        assert!(leftovers.is_empty(), "{name}: files other than committed parquet and locks: {leftovers:?}");
    }
}

/// Replays the golden scenario `name` into `jsonl` and the audit folder `audit`.
fn replay(name: &str, jsonl: &Path, audit: &Path) {
    let scenario = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/scenarios/{name}.toml"));
    let status = Command::new(env!("CARGO_BIN_EXE_defectflow"))
        .args(["replay", scenario.to_str().expect("utf-8")])
        .args(["--out", jsonl.to_str().expect("utf-8"), "--audit", audit.to_str().expect("utf-8")])
        .status()
        .expect("run defectflow");
    assert!(status.success(), "{name}: replay failed");
}

fn walk(dir: &Path) -> Vec<String> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).expect("readable dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path.display().to_string());
        }
    }
    files
}

/// Two runs' files in the same days, compacted: polars reads the same rows (every
/// table, every column) from fewer files, and a reader never meets a partial day.
#[test]
fn compaction_leaves_identical_query_results_with_fewer_files() {
    let binary = env!("CARGO_BIN_EXE_defectflow");
    let dir = tempfile::tempdir().expect("temp dir");
    let audit = dir.path().join("audit");
    for name in ["repair_recurrence", "crack_grows", "two_defects"] {
        replay(name, &dir.path().join(format!("{name}.jsonl")), &audit);
    }
    const QUERY: &str = r#"
import glob, json, sys
import polars as pl
root = sys.argv[1]
out = {}
for table in ["work_orders", "assignments", "wo_events"]:
    df = pl.scan_parquet(f"{root}/{table}/**/*.parquet", hive_partitioning=True).collect()
    rows = sorted(json.dumps(r, default=str, sort_keys=True) for r in df.iter_rows(named=True))
    out[table] = {"rows": rows, "schema": {k: str(v) for k, v in df.schema.items()}}
print(json.dumps(out))
"#;
    let query = || {
        let output = Command::new(analytics_python())
            .args(["-c", QUERY, audit.to_str().expect("utf-8")])
            .output()
            .expect("python");
        assert!(output.status.success(), "polars: {}", String::from_utf8_lossy(&output.stderr));
        serde_json::from_slice::<Value>(&output.stdout).expect("json")
    };
    let files = || walk(&audit).into_iter().filter(|p| p.ends_with(".parquet")).count();
    let (before, files_before) = (query(), files());
    assert!(before["work_orders"]["rows"].as_array().is_some_and(|r| r.len() > 3), "{before}");
    let compacted = Command::new(binary)
        .args(["audit", "compact", "--audit", audit.to_str().expect("utf-8"), "--before", "2026-01-06"])
        .output()
        .expect("compact");
    assert!(compacted.status.success(), "{}", String::from_utf8_lossy(&compacted.stderr));
    let files_after = files();
    assert!(files_after < files_before, "{files_before} files before, {files_after} after");
    assert_eq!(query(), before, "the same rows and columns through polars");
    let left: Vec<String> = walk(&audit).into_iter().filter(|p| !p.ends_with(".parquet")).collect();
    let locks = audit.join(".locks").display().to_string();
    assert!(left.iter().all(|p| p.starts_with(&locks)), "nothing left beside the tables and their locks: {left:?}");
}
