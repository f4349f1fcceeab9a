//! Golden work-order scenarios: every `tests/scenarios/*.toml` replayed through the
//! work-order dataflow must give exactly its `.expected.jsonl`. The tests never write
//! an expected file: after a reviewed change, `defectflow replay X.toml --out
//! X.expected.jsonl` rewrites one, and its diff is reviewed line by line.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use defectflow::tools::scenario::{Scenario, replay};
use serde_json::Value;

fn scenarios() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scenarios");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("tests/scenarios exists")
        .map(|entry| entry.expect("readable entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    files
}

fn run(path: &Path, config: timely::Config) -> Vec<String> {
    let (scenario, reference) = Scenario::load(path).expect("scenario loads");
    replay(&scenario, &reference, config).expect("replay runs").expect("this process hosts worker 0").lines
}

fn parse(lines: &[String]) -> Vec<Value> {
    lines.iter().map(|l| serde_json::from_str(l).expect("every line is JSON")).collect()
}

#[test]
fn every_scenario_gives_its_expected_work_order_stream() {
    let scenarios = scenarios();
    assert!(scenarios.len() >= 7, "scenarios missing: {scenarios:?}");
    let mut failures = Vec::new();
    for path in &scenarios {
        let actual = run(path, timely::Config::thread()).join("\n") + "\n";
        let expected_path = path.with_extension("expected.jsonl");
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (write it with `defectflow replay {} --out {}` and review it)",
                expected_path.display(),
                path.display(),
                expected_path.display()
            )
        });
        if actual != expected {
            let first = (0..).find(|&i| actual.lines().nth(i) != expected.lines().nth(i)).unwrap_or(0);
            failures.push(format!("{}: differs from line {}", path.display(), first + 1));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn two_workers_give_the_same_stream_as_one() {
    for path in scenarios() {
        let one = run(&path, timely::Config::thread());
        let two = run(&path, timely::Config::process(2));
        assert_eq!(one, two, "{}", path.display());
    }
}

/// The differential views agree with the work orders themselves: each technician's open
/// hours are the estimated hours of the open work orders (not on hold) whose latest
/// revision names them, and each part's reservation is the sum over open work orders'
/// parts lists (on hold included: waiting work keeps its parts).
#[test]
fn workload_and_stock_views_agree_with_the_open_work_orders() {
    for path in scenarios() {
        let lines = parse(&run(&path, timely::Config::process(2)));
        let mut latest: BTreeMap<String, Value> = BTreeMap::new();
        for line in &lines {
            if let Some(wo) = line.get("work_order") {
                latest.insert(wo["work_order_id"].as_str().expect("id").to_owned(), wo.clone());
            }
        }
        let open: Vec<&Value> = latest
            .values()
            .filter(|wo| !matches!(wo["status"].as_str(), Some("completed" | "false_positive" | "cancelled")))
            .collect();
        let mut hours: BTreeMap<String, f64> = BTreeMap::new();
        let mut reserved: BTreeMap<String, i64> = BTreeMap::new();
        for wo in &open {
            if let Some(technician) = wo["technician_id"].as_str().filter(|_| wo["status"] != "on_hold") {
                *hours.entry(technician.to_owned()).or_default() +=
                    wo["procedure"]["estimated_hours"].as_f64().unwrap_or(0.0);
            }
            for part in wo["parts"].as_array().into_iter().flatten() {
                *reserved.entry(part["part_id"].as_str().expect("part id").to_owned()).or_default() +=
                    part["quantity"].as_i64().expect("quantity");
            }
        }
        let view_hours: BTreeMap<String, f64> = lines
            .iter()
            .filter_map(|l| l.get("workload"))
            .map(|w| (w["technician_id"].as_str().expect("id").to_owned(), w["open_hours"].as_f64().expect("hours")))
            .collect();
        assert_eq!(view_hours, hours, "{}: workload view", path.display());
        for stock in lines.iter().filter_map(|l| l.get("stock")) {
            let part = stock["part_id"].as_str().expect("part id");
            let on_hand = stock["on_hand"].as_i64().expect("on hand");
            let expected = reserved.get(part).copied().unwrap_or(0);
            assert_eq!(stock["reserved"].as_i64(), Some(expected), "{}: reserved {part}", path.display());
            assert_eq!(stock["available"].as_i64(), Some(on_hand - expected), "{}: available {part}", path.display());
        }
    }
}

/// Two processes on 127.0.0.1 (`-n 2 -p 0/1`) write the same stream as one worker.
#[test]
fn two_processes_give_the_same_stream_as_one() {
    let binary = env!("CARGO_BIN_EXE_defectflow");
    let dir = tempfile::tempdir().expect("temp dir");
    let ports: Vec<u16> = (0..2)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port())
        .collect();
    let hostfile = dir.path().join("hosts.txt");
    std::fs::write(&hostfile, ports.iter().map(|p| format!("127.0.0.1:{p}\n")).collect::<String>()).expect("hostfile");
    for name in ["crack_grows", "parts_shortage", "repair_recurrence"] {
        let scenario = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/scenarios/{name}.toml"));
        let out = dir.path().join(format!("{name}.jsonl"));
        let children: Vec<_> = (0..2)
            .map(|p| {
                std::process::Command::new(binary)
                    .args(["replay", scenario.to_str().expect("utf-8 path"), "--out", out.to_str().expect("utf-8")])
                    .args(["-w", "1", "-n", "2", "-p", &p.to_string(), "-H", hostfile.to_str().expect("utf-8")])
                    .spawn()
                    .expect("start defectflow")
            })
            .collect();
        for mut child in children {
            assert!(child.wait().expect("wait").success(), "{name}: a process failed");
        }
        let two = std::fs::read_to_string(&out).expect("process 0 wrote the stream");
        let one = run(&scenario, timely::Config::thread()).join("\n") + "\n";
        assert_eq!(two, one, "{name}");
    }
}

#[test]
fn a_bad_scenario_names_the_field() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "description = \"x\"\nstart_ms = 0\nreference = \".\"\n[[defects]]\ncamera = \"c\"\nclass = \"dent\"\nfrom_s = 0\nuntil_s = 1\nbox_from = [0,0,1,1]\nbox_until = [0,0,1,1]\n",
    )
    .expect("write");
    let error = format!("{:#}", Scenario::load(&path).expect_err("unknown class"));
    assert!(error.contains("dent") && error.contains("line 6"), "{error}");
}
