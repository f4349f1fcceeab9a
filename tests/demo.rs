//! The demo as a newcomer meets it: the README's run command (`scripts/run.sh`: the
//! bundled demo plant, no broker, no flags) finishes by itself and leaves work orders,
//! evidence images and an audit log that `defectflow report` and every analyst notebook
//! read. The work orders match the demo plant's ground truth (the defects its synth://
//! cameras draw), the scripted CMMS closes what its script says, and the report's KPIs
//! equal those recomputed from the Parquet files by Python polars.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use defectflow::config::RunConfig;
use serde_json::Value;
use sha2::Digest;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn python() -> String {
    std::env::var("DEFECTFLOW_ANALYTICS_PYTHON")
        .expect("DEFECTFLOW_ANALYTICS_PYTHON names a python with polars (scripts/install.sh makes one)")
}

/// (asset, class) of every defect the demo's cameras draw (`defects=class@onset,...`).
fn ground_truth(config: &RunConfig) -> Vec<(String, String)> {
    let mut truth = Vec::new();
    for camera in &config.cameras {
        let query = camera.url.split_once('?').map(|(_, q)| q).unwrap_or_default();
        let param =
            |name: &str| query.split('&').find_map(|kv| kv.strip_prefix(&format!("{name}="))).map(str::to_owned);
        let asset = param("asset_id").expect("demo cameras name their asset");
        for defect in param("defects").unwrap_or_default().split(',').filter(|d| !d.is_empty()) {
            let class = defect.split('@').next().expect("class@onset");
            truth.push((asset.clone(), class.to_owned()));
        }
    }
    truth.sort();
    truth
}

/// The status each scripted (asset, class) ends in: that of its last scripted event.
fn scripted_outcomes(script: &Path) -> BTreeMap<(String, String), String> {
    let text = std::fs::read_to_string(script).expect("script");
    let script: toml::Value = toml::from_str(&text).expect("toml");
    let mut outcomes = BTreeMap::new();
    for line in script["events"].as_array().expect("events") {
        let key = (
            line["asset_id"].as_str().expect("asset").to_owned(),
            line["defect_class"].as_str().expect("class").to_owned(),
        );
        let status = match line["event"].as_str().expect("event") {
            "acknowledged" => "acknowledged",
            "started" | "reassigned" => "in_progress",
            "completed" => "completed",
            "false_positive" => "false_positive",
            other => panic!("unknown event {other}"),
        };
        let after = line["after_s"].as_float().or_else(|| line["after_s"].as_integer().map(|i| i as f64));
        let current = outcomes.entry(key).or_insert((f64::MIN, String::new()));
        if after.expect("after_s") >= current.0 {
            *current = (after.expect("after_s"), status.to_owned());
        }
    }
    outcomes.into_iter().map(|(k, (_, s))| (k, s)).collect()
}

/// The demo and the bench both play live cameras and must keep up with them: they take
/// turns rather than share the two cores.
static LIVE: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn the_demo_run_leaves_what_every_user_needs() {
    let _turn = LIVE.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("demo");
    let config_path = root().join("examples/demo-plant/defectflow.toml");
    // scripts/run.sh's command, with the output folder moved out of the checkout.
    let run = Command::new(env!("CARGO_BIN_EXE_defectflow"))
        .args(["run", "--config", config_path.to_str().expect("utf-8"), "--out", out.to_str().expect("utf-8")])
        .output()
        .expect("run defectflow");
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "demo failed: {stdout}\n{}", String::from_utf8_lossy(&run.stderr));
    for line in ["work orders:", "parts shortages:", "detection to work order: p50", "outputs in"] {
        assert!(stdout.contains(line), "summary has `{line}`: {stdout}");
    }

    // One work order per defect the cameras draw (a reopened one would name what it reopens).
    let config = RunConfig::load(&config_path).expect("demo config");
    let mut latest: BTreeMap<String, Value> = BTreeMap::new();
    for line in std::fs::read_to_string(out.join("work-orders.jsonl")).expect("work-orders.jsonl").lines() {
        let message: Value = serde_json::from_str(line).expect("json line");
        let Some(w) = message.get("work_order") else { continue };
        // Every revision's evidence image is there, with the digest it names.
        let uri = w["evidence"]["uri"].as_str().unwrap_or_else(|| panic!("evidence in {w}"));
        let bytes = std::fs::read(out.join(uri)).unwrap_or_else(|e| panic!("{uri}: {e}"));
        let digest: String = sha2::Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(w["evidence"]["sha256"].as_str(), Some(digest.as_str()));
        latest.insert(w["work_order_id"].as_str().expect("id").to_owned(), w.clone());
    }
    let mut found: Vec<(String, String)> = latest
        .values()
        .filter(|w| w["reopens"].is_null())
        .map(|w| {
            (w["asset_id"].as_str().expect("asset").to_owned(), w["defect_class"].as_str().expect("class").to_owned())
        })
        .collect();
    found.sort();
    assert_eq!(found, ground_truth(&config), "one work order per drawn defect, right asset and class");

    // The scripted CMMS moved the work orders it names to where its script ends.
    let script = config.plant.cmms_script.clone().expect("the demo scripts its CMMS");
    for ((asset, class), status) in scripted_outcomes(&script) {
        let order = latest
            .values()
            .find(|w| w["asset_id"] == asset.as_str() && w["defect_class"] == class.as_str() && w["reopens"].is_null())
            .unwrap_or_else(|| panic!("a work order for {asset} {class}"));
        assert_eq!(order["status"], status.as_str(), "{asset} {class}");
    }

    // Every scripted event the ledger applied is in the audit log's wo_events table.
    let audit = out.join("audit");
    let script_lines = std::fs::read_to_string(&script).expect("script").matches("[[events]]").count();
    let read = Command::new(python())
        .args(["-c", "import json, sys, polars as pl; df = pl.read_parquet(sys.argv[1] + '/wo_events/**/*.parquet', hive_partitioning=True); print(json.dumps(df['work_order_id'].to_list()))"])
        .arg(&audit)
        .output()
        .expect("python");
    assert!(read.status.success(), "wo_events: {}", String::from_utf8_lossy(&read.stderr));
    let events: Vec<String> = serde_json::from_slice(&read.stdout).expect("json");
    assert_eq!(events.len(), script_lines, "one row per scripted event: {events:?}");
    assert!(events.iter().all(|id| latest.contains_key(id)), "events name work orders of the run");

    // The pulley crack's repair (corrective work) is a failure of the pulley, with the
    // hours the script's completion reported; the gearbox wear's (predictive) is not.
    let read = Command::new(python())
        .args(["-c", "import json, sys, polars as pl; df = pl.read_parquet(sys.argv[1] + '/failures/**/*.parquet', hive_partitioning=True); print(json.dumps(df.select('asset_id', 'defect_class', 'actual_hours', 'downtime_hours', 'work_order_id').rows()))"])
        .arg(&audit)
        .output()
        .expect("python");
    assert!(read.status.success(), "failures: {}", String::from_utf8_lossy(&read.stderr));
    let failures: Vec<(String, String, Option<f64>, f64, String)> = serde_json::from_slice(&read.stdout).expect("json");
    assert!(!failures.is_empty(), "the pulley's repair is recorded");
    for (asset, class, labour, downtime, order) in &failures {
        assert_eq!((asset.as_str(), class.as_str(), *labour, *downtime), ("CV-101-PUL", "crack", Some(2.5), 1.5));
        assert_eq!(latest[order]["status"], "completed", "{order}");
    }

    // The CMMS's answers as training data: the false positive's frames as negatives, the
    // repaired crack's with its boxes; a YOLO folder `eval` reads.
    let harvest = |out: &Path, more: &[&std::ffi::OsStr]| {
        Command::new(env!("CARGO_BIN_EXE_defectflow"))
            .args(["harvest", "--audit", audit.to_str().expect("utf-8"), "--out", out.to_str().expect("utf-8")])
            .args(more)
            .output()
            .expect("run harvest")
    };
    let harvested = dir.path().join("harvest");
    let harvest_run = harvest(&harvested, &["--json".as_ref()]);
    assert!(harvest_run.status.success(), "harvest: {}", String::from_utf8_lossy(&harvest_run.stderr));
    let summary: Value = serde_json::from_slice(&harvest_run.stdout).expect("harvest JSON");
    assert!(summary["negatives"].as_u64() > Some(0), "the oil splash's frames: {summary}");
    assert!(summary["positives"].as_u64() > Some(0), "the pulley crack's frames: {summary}");
    assert_eq!(summary["frames_missing"].as_u64(), Some(0), "every evidence frame was kept: {summary}");
    let manifest = std::fs::read_to_string(harvested.join("harvest.jsonl")).expect("harvest.jsonl");
    let crack_id = std::fs::read_to_string(harvested.join("classes.txt"))
        .expect("classes.txt")
        .lines()
        .position(|c| c == "crack")
        .expect("crack is a class");
    for line in manifest.lines() {
        let line: Value = serde_json::from_str(line).expect("json line");
        let image = harvested.join(line["image"].as_str().expect("image"));
        assert!(image.is_file(), "{line}");
        let stem = image.file_stem().expect("stem").to_str().expect("utf-8");
        let label = std::fs::read_to_string(harvested.join("labels").join(format!("{stem}.txt"))).expect("label");
        assert_eq!(latest[line["work_order_id"].as_str().expect("id")]["asset_id"], line["asset_id"], "{line}");
        match line["outcome"].as_str() {
            Some("false_positive") => assert_eq!(label, "", "a negative: {line}"),
            _ if line["defect_class"] == "crack" => {
                assert!(label.lines().all(|l| l.starts_with(&format!("{crack_id} "))) && !label.is_empty(), "{label}")
            }
            _ => assert!(!label.is_empty(), "{line}"),
        }
    }
    // What the CMMS said that the run never heard, given beside the audit log: here every
    // work order of the run called a false positive afterwards, the repaired crack too.
    let events = dir.path().join("verdicts.jsonl");
    let lines: String = (latest.keys().map(String::as_str).chain(["WO-of-another-run"]))
        .map(|id| format!("{{\"work_order_id\":{id:?},\"event\":\"false_positive\",\"at_ms\":1}}\n"))
        .collect();
    std::fs::write(&events, lines + "\n").expect("events");
    let rejudged = dir.path().join("rejudged");
    let harvest_run = harvest(&rejudged, &["--json".as_ref(), "--events".as_ref(), events.as_os_str()]);
    assert!(harvest_run.status.success(), "harvest --events: {}", String::from_utf8_lossy(&harvest_run.stderr));
    let rejudged_summary: Value = serde_json::from_slice(&harvest_run.stdout).expect("harvest JSON");
    assert_eq!(rejudged_summary["positives"].as_u64(), Some(0), "{rejudged_summary}");
    assert_eq!(rejudged_summary["events_unknown"].as_u64(), Some(1), "{rejudged_summary}");
    assert!(
        rejudged_summary["negatives"].as_u64().expect("negatives")
            >= summary["negatives"].as_u64().expect("negatives") + summary["positives"].as_u64().expect("positives"),
        "the crack's frames are negatives now: {rejudged_summary} against {summary}"
    );
    std::fs::write(&events, "{\"work_order_id\":\"WO-1\",\"event\":\"fixed\",\"at_ms\":1}\n").expect("events");
    let harvest_run = harvest(&rejudged, &["--events".as_ref(), events.as_os_str()]);
    let error = String::from_utf8_lossy(&harvest_run.stderr);
    assert!(!harvest_run.status.success() && error.contains("verdicts.jsonl:1: not a wo-event"), "{error}");
    let eval = Command::new(env!("CARGO_BIN_EXE_defectflow"))
        .args(["eval", "--data", harvested.to_str().expect("utf-8")])
        .output()
        .expect("run eval");
    assert!(eval.status.success(), "the harvest is a YOLO folder: {}", String::from_utf8_lossy(&eval.stderr));
    // Generated frames and harvested ones, trained on together going on from the shipped
    // model without forgetting it (two steps: the loading, the distillation's teacher and
    // the card are what is checked here).
    let generated = dir.path().join("generated");
    let synth = Command::new(env!("CARGO_BIN_EXE_defectflow"))
        .args(["synth", "--format", "yolo", "--cameras", "2", "--seconds", "2", "--every", "3", "--out"])
        .arg(&generated)
        .output()
        .expect("run synth");
    assert!(synth.status.success(), "synth: {}", String::from_utf8_lossy(&synth.stderr));
    let model = dir.path().join("tuned");
    let data = format!("{},{}", generated.display(), harvested.display());
    let train = Command::new(env!("CARGO_BIN_EXE_defectflow"))
        .args(["train", "--data", &data, "--steps", "2", "--batch-size", "2", "--crop-px", "64", "--distill", "1"])
        .args(["--init", root().join("models/weights").to_str().expect("utf-8"), "--out"])
        .arg(&model)
        .output()
        .expect("run train");
    assert!(train.status.success(), "train: {}", String::from_utf8_lossy(&train.stderr));
    let card: Value =
        serde_json::from_str(&std::fs::read_to_string(model.join("model.json")).expect("card")).expect("json");
    let images = |d: &Path| std::fs::read_dir(d.join("images")).expect("images").count() as u64;
    assert_eq!(card["training"]["images"].as_u64(), Some(images(&generated) + images(&harvested)), "{card}");
    assert_eq!(card["training"]["data_digest"].as_str().map(|d| d.split('+').count()), Some(2), "{card}");
    let shipped_card: Value =
        serde_json::from_str(&std::fs::read_to_string(root().join("models/weights/model.json")).expect("card"))
            .expect("json");
    assert_eq!(card["training"]["continued_from"]["version"], shipped_card["version"], "{card}");

    // The evaluation gate on the held-out frames and the harvest. A model that finds
    // nothing (untrained, its threshold above any probability) against the shipped one
    // is refused, the result recorded in its card and nothing installed. The shipped
    // model against it is refused too on a harvest of frames where the shipped model
    // finds something and people said there is nothing (every work order closed as a
    // false positive: the blind model gets those frames right), and promoted and
    // installed where it is better on both sets (the generated frames given as both).
    let (shipped, blind, live) = (dir.path().join("shipped"), dir.path().join("blind"), dir.path().join("live"));
    {
        use defectflow_models::card::{ModelCard, load_model, save_model};
        use defectflow_models::detector::CpuBackend;
        let device = Default::default();
        let (_, card) = load_model::<CpuBackend>(&root().join("models/weights"), &device).expect("shipped model");
        let mut untrained = ModelCard::untrained(card.architecture.clone(), card.input_width, card.input_height);
        untrained.min_confidence = 2.0;
        save_model(&card.architecture.init::<CpuBackend>(&device), &mut untrained, &blind).expect("blind model");
        std::fs::create_dir_all(&shipped).expect("shipped copy");
        for file in ["weights.bin", "model.json"] {
            std::fs::copy(root().join("models/weights").join(file), shipped.join(file)).expect("copy");
        }
    }
    let promote_on = |candidate: &Path, current: &Path, harvest: &Path| {
        Command::new(env!("CARGO_BIN_EXE_defectflow"))
            .args(["promote", "--candidate", candidate.to_str().expect("utf-8")])
            .args(["--current", current.to_str().expect("utf-8")])
            .args(["--heldout", generated.to_str().expect("utf-8")])
            .args(["--harvest", harvest.to_str().expect("utf-8")])
            .args(["--into", live.to_str().expect("utf-8")])
            .output()
            .expect("run promote")
    };
    let card_of = |model: &Path| -> Value {
        serde_json::from_str(&std::fs::read_to_string(model.join("model.json")).expect("card")).expect("json")
    };
    let promote = |candidate: &Path, current: &Path| promote_on(candidate, current, &harvested);
    let refused = promote(&blind, &shipped);
    assert!(!refused.status.success(), "{}", String::from_utf8_lossy(&refused.stdout));
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(why.contains("not promoted"), "{why}");
    let gate = &card_of(&blind)["promotion"];
    assert_eq!((gate["passed"].as_bool(), &gate["against"]), (Some(false), &card_of(&shipped)["version"]), "{gate}");
    let sets: Vec<&str> = gate["sets"].as_array().expect("sets").iter().filter_map(|s| s["name"].as_str()).collect();
    assert_eq!(sets, ["held-out", "harvest"]);
    assert_eq!(gate["margin"].as_f64(), Some(0.01), "the default margin is recorded: {gate}");
    for set in gate["sets"].as_array().expect("sets") {
        let (low, high, difference) =
            (set["interval"][0].as_f64(), set["interval"][1].as_f64(), set["difference"].as_f64());
        let (Some(low), Some(high), Some(difference)) = (low, high, difference) else { panic!("no interval: {set}") };
        assert!(low <= difference && difference <= high, "the interval holds the difference: {set}");
    }
    assert!(!live.exists(), "a refused candidate is not installed");
    let refused = promote_on(&shipped, &blind, &rejudged);
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && why.contains("on harvest"), "{why}");
    assert!(!live.exists(), "a refused candidate is not installed");
    let accepted = promote_on(&shipped, &blind, &generated);
    assert!(
        accepted.status.success(),
        "{}{}",
        String::from_utf8_lossy(&accepted.stdout),
        String::from_utf8_lossy(&accepted.stderr)
    );
    assert_eq!(card_of(&shipped)["promotion"]["passed"], true);
    assert_eq!(card_of(&live)["version"], card_of(&shipped)["version"], "installed");

    // `defectflow report --json` equals the KPIs recomputed from the Parquet files.
    let report = Command::new(env!("CARGO_BIN_EXE_defectflow"))
        .args(["report", "--audit", audit.to_str().expect("utf-8"), "--json"])
        .output()
        .expect("run report");
    assert!(report.status.success(), "report: {}", String::from_utf8_lossy(&report.stderr));
    let reported: Value = serde_json::from_slice(&report.stdout).expect("report JSON");
    let recompute = Command::new(python())
        .args([root().join("tests/support/kpis.py").to_str().expect("utf-8"), audit.to_str().expect("utf-8")])
        .output()
        .expect("python");
    assert!(recompute.status.success(), "kpis.py: {}", String::from_utf8_lossy(&recompute.stderr));
    let recomputed: Value = serde_json::from_slice(&recompute.stdout).expect("kpis.py JSON");
    assert_same(&reported, &recomputed, "kpis");
    let pulley = reported["assets"].as_array().expect("assets").iter().find(|a| a["asset_id"] == "CV-101-PUL");
    let pulley = pulley.expect("the pulley's KPIs");
    assert_eq!(pulley["mttr_h"].as_f64(), Some(1.5), "the downtime reported is the time to repair: {pulley}");
    assert_eq!(pulley["downtime_h"].as_f64(), Some(1.5 * failures.len() as f64), "{pulley}");
    assert_eq!(reported["work_orders"]["total"].as_u64(), Some(latest.len() as u64));
    assert!(reported["work_orders"]["completed"].as_u64() > Some(0), "the demo completes some work orders");
    assert!(reported["work_orders"]["false_positive"].as_u64() > Some(0), "and rejects one");

    // Every notebook runs headless against this audit log.
    let notebooks: Vec<PathBuf> = std::fs::read_dir(root().join("notebooks"))
        .expect("notebooks/")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "ipynb"))
        .collect();
    assert!(notebooks.len() >= 3, "{notebooks:?}");
    for notebook in notebooks {
        let executed = dir.path().join(notebook.file_name().expect("name"));
        let run = Command::new(python())
            .args(["-m", "papermill", "--log-level", "WARNING"])
            .args([notebook.to_str().expect("utf-8"), executed.to_str().expect("utf-8")])
            .args(["-p", "AUDIT", audit.to_str().expect("utf-8")])
            .current_dir(root().join("notebooks"))
            .output()
            .expect("papermill");
        assert!(
            run.status.success(),
            "{}: {}\n{}",
            notebook.display(),
            String::from_utf8_lossy(&run.stdout),
            String::from_utf8_lossy(&run.stderr)
        );
        let text = std::fs::read_to_string(&executed).expect("executed notebook");
        assert!(text.contains("image/png"), "{}: plots drawn", notebook.display());
    }
}

/// Equal JSON, numbers within 1e-6 relative.
fn assert_same(a: &Value, b: &Value, path: &str) {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let (x, y) = (x.as_f64().expect("f64"), y.as_f64().expect("f64"));
            assert!((x - y).abs() <= 1e-6 * x.abs().max(y.abs()).max(1.0), "{path}: {x} vs {y}");
        }
        (Value::Object(x), Value::Object(y)) => {
            let (kx, ky): (Vec<_>, Vec<_>) = (x.keys().collect(), y.keys().collect());
            assert_eq!(kx, ky, "{path}: keys");
            for k in x.keys() {
                assert_same(&x[k], &y[k], &format!("{path}.{k}"));
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            assert_eq!(x.len(), y.len(), "{path}: length");
            for (i, (x, y)) in x.iter().zip(y).enumerate() {
                assert_same(x, y, &format!("{path}[{i}]"));
            }
        }
        _ => assert_eq!(a, b, "{path}"),
    }
}

/// The configuration reference in docs/deploy.md passes `check-config` (unknown fields
/// are refused, so every documented field exists), and documents every field of the
/// work-order stages' tables and of `[anomaly]`.
#[test]
fn the_deploy_guide_documents_the_config_the_code_reads() {
    let guide = std::fs::read_to_string(root().join("docs/deploy.md")).expect("docs/deploy.md");
    let section = guide.split("## Configuration reference").nth(1).expect("a reference section");
    let block = section.split("```toml\n").nth(1).and_then(|b| b.split("\n```").next()).expect("a toml block");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("reference.toml");
    std::fs::write(&path, block).expect("write");
    // What the block names beside it: check-config checks that they are there.
    std::os::unix::fs::symlink(root().join("models/weights"), dir.path().join("model")).expect("model");
    std::os::unix::fs::symlink(root().join("examples/demo-plant/reference"), dir.path().join("reference"))
        .expect("reference");
    std::fs::write(dir.path().join("cmms-events.toml"), "").expect("script");
    std::fs::write(dir.path().join("thresholds.toml"), "[[threshold]]\nclass = \"wear\"\nmin_confidence = 0.8\n")
        .expect("thresholds");
    let check = Command::new(env!("CARGO_BIN_EXE_defectflow"))
        .args(["check-config", path.to_str().expect("utf-8")])
        .env("DEFECTFLOW_KAFKA_PASSWORD", "not-a-secret")
        .env("CAM01_USER", "viewer")
        .env("CAM01_PASSWORD", "not-a-secret")
        .output()
        .expect("check-config");
    assert!(
        check.status.success(),
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    let parsed: toml::Value = toml::from_str(block).expect("toml");
    let documented = |table: &str| parsed[table].as_table().expect(table).keys().cloned().collect::<Vec<_>>();
    let fields = |value: Value| value.as_object().expect("struct").keys().cloned().collect::<Vec<_>>();
    for (table, defaults) in [
        ("track", serde_json::to_value(defectflow_operators::track::TrackConfig::default())),
        ("severity", serde_json::to_value(defectflow_operators::severity::SeverityConfig::default())),
        ("work_orders", serde_json::to_value(defectflow_operators::derive::WorkOrderConfig::default())),
        ("anomaly", serde_json::to_value(defectflow_models::baseline::BaselineConfig::default())),
    ] {
        let mut want = fields(defaults.expect("serializes"));
        let mut have = documented(table);
        want.sort();
        have.sort();
        assert_eq!(have, want, "[{table}] in docs/deploy.md");
    }
}

/// `defectflow bench` on a small load: it measures the frames it was given, makes the
/// work orders of the defects its cameras draw, and reports latency, CPU and memory.
#[test]
fn the_bench_reports_what_it_sustained() {
    let _turn = LIVE.lock().unwrap_or_else(|e| e.into_inner());
    let bench = Command::new(env!("CARGO_BIN_EXE_defectflow"))
        .args(["bench", "--cameras", "2", "--fps", "10", "--max-fps", "5", "--seconds", "8", "--json"])
        .args(["--reference", root().join("examples/demo-plant/reference").to_str().expect("utf-8")])
        .output()
        .expect("run bench");
    assert!(bench.status.success(), "bench: {}", String::from_utf8_lossy(&bench.stderr));
    let r: Value = serde_json::from_slice(&bench.stdout).expect("bench JSON");
    let number = |k: &str| r[k].as_f64().unwrap_or_else(|| panic!("{k} in {r}"));
    assert_eq!(r["cameras"], 2);
    assert_eq!(number("frames_offered_per_s"), 10.0, "2 cameras × 5 frames/s kept");
    // Live cameras at 10 frames/s for 8 s: at most about 80 frames each came in (fewer
    // on a loaded machine), half went on.
    assert!((1.0..=180.0).contains(&(number("frames_in_per_s") * 8.0)), "{r}");
    assert!(number("frames_inferred_per_s") > 0.0 && number("frames_inferred_per_s") <= 10.5, "{r}");
    assert_eq!(r["work_orders"], 2, "one per camera's defect: {r}");
    let latency = &r["latency_ms"];
    let at = |k: &str| latency[k].as_f64().unwrap_or_else(|| panic!("latency {k} in {r}"));
    assert!(0.0 < at("p50") && at("p50") <= at("p99") && at("p99") <= at("max"), "{r}");
    assert!(number("peak_rss_mib") > 10.0 && number("cpu_cores") > 0.0, "{r}");
}

/// The shipped systemd unit: systemd accepts it (`systemd-analyze verify`, where
/// systemd is installed), it runs the command line defectflow takes, does not restart a
/// bad config (exit 78), stops with SIGTERM and waits longer than a stop may take.
#[test]
fn the_shipped_systemd_unit_matches_the_binary() {
    let unit = std::fs::read_to_string(root().join("deploy/defectflow.service")).expect("deploy/defectflow.service");
    let settings: BTreeMap<&str, &str> =
        unit.lines().filter(|l| !l.starts_with('#')).filter_map(|l| l.split_once('=')).collect();
    let code = defectflow::config::ConfigError::EXIT_CODE.to_string();
    assert_eq!(settings["RestartPreventExitStatus"], code);
    assert_eq!(settings["KillSignal"], "SIGTERM");
    let timeout: f64 = settings["TimeoutStopSec"].parse().expect("seconds");
    assert!(timeout > defectflow::config::RuntimeConfig::default().stop_timeout_s, "systemd kills after {timeout} s");
    let exec: Vec<&str> = settings["ExecStart"].split_whitespace().collect();
    assert_eq!(&exec[..2], ["/usr/local/bin/defectflow", "run"]);
    let help = Command::new(env!("CARGO_BIN_EXE_defectflow")).args(["run", "--help"]).output().expect("help");
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in exec.iter().filter(|a| a.starts_with("--")) {
        assert!(help.contains(&format!("{flag} ")), "`run` takes no {flag}: {help}");
    }
    if Command::new("systemd-analyze").arg("--version").output().is_ok_and(|o| o.status.success()) {
        let dir = tempfile::tempdir().expect("tempdir");
        let copy = dir.path().join("defectflow.service");
        std::fs::write(&copy, unit.replace("/usr/local/bin/defectflow", env!("CARGO_BIN_EXE_defectflow")))
            .expect("unit");
        let verify = Command::new("systemd-analyze").arg("verify").arg(&copy).output().expect("systemd-analyze");
        let said = String::from_utf8_lossy(&verify.stderr);
        assert!(verify.status.success() && said.trim().is_empty(), "systemd-analyze verify: {said}");
    }
}
