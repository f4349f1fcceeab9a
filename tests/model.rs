//! The shipped weights inside the real pipeline: generated H.264 footage the model has
//! never seen, decoded by GStreamer, batched through `infer`. Each ground-truth defect
//! is found within a few frames of its onset; a defect-free camera yields nothing.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};

use defectflow::config::RunConfig;
use defectflow::run::{self, Hooks, StopWhen};
use defectflow::tools::footage::{Codec, Container, FootageOptions, write_scenes};
use defectflow_models::metrics::iou;
use defectflow_models::synth::{AssetKind, GroundTruth, PlantOptions, planned_scene};
use defectflow_schemas::{DefectClass, FrameObservation};

/// Frames after onset within which a defect must be found (15 fps: a third of a second).
const FIND_WITHIN_FRAMES: u64 = 5;

#[test]
fn shipped_weights_find_every_defect_soon_after_onset_and_nothing_on_a_clear_camera() {
    let dir = tempfile::tempdir().expect("tempdir");
    let size = (640, 360);
    let scenes = vec![
        planned_scene(
            "held-1",
            "A-1",
            AssetKind::ALL[0],
            size,
            15,
            9001,
            &[(DefectClass::Crack, 2.0), (DefectClass::Corrosion, 3.0)],
        ),
        planned_scene(
            "held-2",
            "A-2",
            AssetKind::ALL[1],
            size,
            15,
            9002,
            &[(DefectClass::Misalignment, 2.0), (DefectClass::Wear, 3.0)],
        ),
        planned_scene(
            "held-3",
            "A-3",
            AssetKind::ALL[2],
            size,
            15,
            9003,
            &[(DefectClass::Contamination, 2.0), (DefectClass::MissingComponent, 3.0)],
        ),
        planned_scene("held-4", "A-4", AssetKind::ALL[3], size, 15, 9004, &[]),
    ];
    let options = FootageOptions {
        plant: PlantOptions {
            seed: 9000,
            cameras: 4,
            defect_free_cameras: 1,
            duration_s: 6.0,
            fps: 15,
            width: 640,
            height: 360,
        },
        codec: Codec::H264,
        container: Container::Mp4,
    };
    let truth: GroundTruth = write_scenes(dir.path(), &scenes, &options).expect("footage");
    let mut toml = String::from("[anomaly]\ncommission_s = 0\n[model]\nbatch_size = 4\n");
    for camera in &truth.cameras {
        let url = support::file_url(&dir.path().join(&camera.video));
        toml.push_str(&format!("[[cameras]]\nid = \"{}\"\nurl = \"{url}\"\n", camera.scene.camera_id));
    }
    let config = RunConfig::parse(&toml, "model test").expect("config");
    let seen: Arc<Mutex<Vec<FrameObservation>>> = Arc::default();
    let sink = Arc::clone(&seen);
    let hooks = Hooks {
        on_observation: Some(Arc::new(move |_, o| sink.lock().expect("lock").push(o.clone()))),
        ..Hooks::default()
    };
    let stop = StopWhen::after(None);
    let (_, stages) = run::run_stages(&config, timely::Config::process(2), stop, hooks).expect("run");
    let observations = seen.lock().expect("lock").clone();
    assert_eq!(stages.frames_inferred, 4 * 90, "every frame is inferred once");
    assert_eq!(observations.len(), 4 * 90, "one observation per frame, clear ones included");
    let version = stages.model_version.expect("model ran");
    assert!(observations.iter().flat_map(|o| &o.detections).all(|d| d.model_version == version));

    let by_camera: BTreeMap<&str, BTreeMap<u64, &FrameObservation>> =
        observations.iter().fold(BTreeMap::new(), |mut m, o| {
            m.entry(o.camera_id.as_str()).or_default().insert(o.frame_index, o);
            m
        });
    for camera in &truth.cameras {
        let frames = &by_camera[camera.scene.camera_id.as_str()];
        let scene = defectflow_models::synth::Scene::new(camera.scene.clone());
        for defect in &camera.scene.defects {
            let onset = GroundTruth::onset_frame(defect, truth.fps);
            let found_at = (onset..onset + FIND_WITHIN_FRAMES).find(|&f| {
                let Some(label) = scene.render(f).labels.into_iter().find(|l| l.defect_id == defect.defect_id) else {
                    return false;
                };
                frames[&f].detections.iter().any(|d| d.class == defect.class && iou(&d.bbox, &label.bbox) >= 0.3)
            });
            assert!(
                found_at.is_some(),
                "{} ({}) not found within {FIND_WITHIN_FRAMES} frames of onset frame {onset}",
                defect.defect_id,
                defect.class
            );
        }
        if camera.scene.defects.is_empty() {
            let false_detections: Vec<_> = frames.values().flat_map(|o| &o.detections).collect();
            assert!(false_detections.is_empty(), "defect-free {}: {false_detections:?}", camera.scene.camera_id);
        }
        // Before any onset the camera is clear too.
        let first_onset = camera.scene.defects.iter().map(|d| GroundTruth::onset_frame(d, truth.fps)).min();
        let early: Vec<_> = frames.range(..first_onset.unwrap_or(u64::MAX)).flat_map(|(_, o)| &o.detections).collect();
        assert!(early.is_empty(), "{} before onset: {early:?}", camera.scene.camera_id);
    }
}

fn run_demo_plant(dir: &Path, truth: &GroundTruth, shadow: bool) -> (std::path::PathBuf, String) {
    let reference = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/demo-plant/reference");
    let mut toml = format!(
        "[runtime]\nworkers = 2\n[anomaly]\ncommission_s = 0\n[model]\nbatch_size = 4\nshadow = {shadow}\n[plant]\nreference = \"{}\"\n",
        reference.display()
    );
    for camera in &truth.cameras {
        let url = support::file_url(&dir.join(&camera.video));
        toml.push_str(&format!("[[cameras]]\nid = \"{}\"\nurl = \"{url}\"\n", camera.scene.camera_id));
    }
    let config = dir.join(format!("shadow-{shadow}.toml"));
    std::fs::write(&config, toml).expect("config");
    let out = dir.join(format!("out-shadow-{shadow}"));
    let output = Command::new(env!("CARGO_BIN_EXE_defectflow"))
        .args(["run", "--config", config.to_str().expect("utf-8"), "--out", out.to_str().expect("utf-8")])
        .output()
        .expect("run defectflow");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "run failed: {stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("work orders:"), "summary printed: {stdout}");
    (out, stdout.into_owned())
}

/// The detections the summary line counts (`model …: N frames …, M detections`).
fn detections_in_summary(stdout: &str) -> usize {
    let line = stdout.lines().find(|l| l.starts_with("model ")).expect("model summary line");
    let before = line.trim_end().strip_suffix(" detections").expect("ends with detections");
    before.rsplit(' ').next().and_then(|n| n.parse().ok()).expect("a count")
}

/// (rows, rows flagged shadow, distinct model versions) of the detections table, by polars.
fn audited_detections(audit: &Path) -> (usize, usize, usize) {
    let python = std::env::var("DEFECTFLOW_ANALYTICS_PYTHON").expect("DEFECTFLOW_ANALYTICS_PYTHON");
    let script = r#"
import json, sys
import polars as pl
df = pl.scan_parquet(sys.argv[1] + "/detections/**/*.parquet", hive_partitioning=True).collect()
print(json.dumps([df.height, int(df["shadow"].sum()), df["model_version"].n_unique()]))
"#;
    let output = Command::new(python).args(["-c", script, audit.to_str().expect("utf-8")]).output().expect("python");
    assert!(output.status.success(), "polars: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).expect("json")
}

/// (work-order id, asset, class, shadow) of every revision in the audit log, read by polars.
fn audited_work_orders(audit: &Path) -> Vec<(String, String, String, bool)> {
    let python = std::env::var("DEFECTFLOW_ANALYTICS_PYTHON")
        .expect("DEFECTFLOW_ANALYTICS_PYTHON names a python with polars (scripts/install.sh makes one)");
    let script = r#"
import json, sys
import polars as pl
df = pl.scan_parquet(sys.argv[1] + "/work_orders/**/*.parquet", hive_partitioning=True).collect()
print(json.dumps([[r["work_order_id"], r["asset_id"], r["defect_class"], r["shadow"]] for r in df.iter_rows(named=True)]))
"#;
    let output = Command::new(python).args(["-c", script, audit.to_str().expect("utf-8")]).output().expect("python");
    assert!(output.status.success(), "polars: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).expect("json")
}

/// A revision's evidence: the image is where its URI says (relative to the output
/// folder), has the digest the revision gives, decodes to a frame with the box outlined,
/// was captured between the defect's first detection and the revision, and its box is
/// on the ground-truth defect of that class in that frame.
fn check_evidence(out: &Path, truth: &GroundTruth, w: &serde_json::Value) {
    use sha2::Digest;
    let evidence = &w["evidence"];
    let uri = evidence["uri"].as_str().unwrap_or_else(|| panic!("evidence in {w}"));
    let bytes = std::fs::read(out.join(uri)).unwrap_or_else(|e| panic!("{uri}: {e}"));
    let digest: String = sha2::Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(evidence["sha256"].as_str(), Some(digest.as_str()), "{uri}");
    let image = image::load_from_memory(&bytes).expect("a JPEG").to_rgb8();
    assert_eq!((image.width(), image.height()), (truth.width, truth.height));
    let bbox: defectflow_schemas::BoundingBox = serde_json::from_value(evidence["bbox"].clone()).expect("bbox");
    let left = image.get_pixel((bbox.x.floor() as u32).saturating_sub(1), (bbox.y + bbox.height / 2.0) as u32).0;
    assert!(left[0] > 180 && left[1] < 110, "{uri}: outline at the box's left edge, got {left:?}");
    let capture = evidence["capture_ms"].as_u64().expect("capture_ms");
    let at = |k: &str| w[k].as_u64().unwrap_or_else(|| panic!("{k} in {w}"));
    assert!(at("detected_at_ms") <= capture && capture <= at("revised_at_ms"), "{w}");
    let camera = truth.cameras.iter().find(|c| w["camera_id"] == c.scene.camera_id.as_str()).expect("camera");
    let scene = defectflow_models::synth::Scene::new(camera.scene.clone());
    let frame = evidence["frame_index"].as_u64().expect("frame_index");
    let class = w["defect_class"].as_str().expect("class");
    let on_defect = scene.render(frame).labels.iter().any(|l| l.class.as_str() == class && iou(&bbox, &l.bbox) >= 0.3);
    assert!(on_defect, "{uri}: box {bbox:?} is on no {class} of frame {frame}");
}

/// The tracks and inventory tables, read by polars: (track ids with an evidence URI,
/// every track id), and per part the most it had reserved at once, with whether every
/// row's available = on hand − reserved.
fn audited_tracks_and_stock(audit: &Path) -> serde_json::Value {
    let python = std::env::var("DEFECTFLOW_ANALYTICS_PYTHON").expect("DEFECTFLOW_ANALYTICS_PYTHON");
    let script = r#"
import json, sys
import polars as pl
root = sys.argv[1]
tracks = pl.scan_parquet(root + "/tracks/**/*.parquet", hive_partitioning=True).collect()
stock = pl.scan_parquet(root + "/inventory/**/*.parquet", hive_partitioning=True).collect()
print(json.dumps({
    "with_evidence": sorted(set(tracks.filter(pl.col("evidence_uri").is_not_null())["track_id"])),
    "tracks": sorted(set(tracks["track_id"])),
    "states": sorted(set(tracks["state"])),
    "most_reserved": {p: int(r) for p, r in stock.group_by("part_id").agg(pl.col("reserved").max()).iter_rows()},
    "balanced": bool((stock["on_hand"] - stock["reserved"] == stock["available"]).all()),
}))
"#;
    let output = Command::new(python).args(["-c", script, audit.to_str().expect("utf-8")]).output().expect("python");
    assert!(output.status.success(), "polars: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).expect("json")
}

#[test]
fn a_run_makes_one_work_order_per_defect_and_shadow_mode_only_audits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let truth = support::demo_plant_footage(dir.path());
    let expected: BTreeSet<(String, String)> = truth
        .cameras
        .iter()
        .flat_map(|c| c.scene.defects.iter().map(|d| (c.scene.asset_id.clone(), d.class.to_string())))
        .collect();

    let (out, stdout) = run_demo_plant(dir.path(), &truth, false);
    let detections = detections_in_summary(&stdout);
    assert!(detections > 0);
    assert_eq!(audited_detections(&out.join("audit")), (detections, 0, 1), "every detection audited once");
    let lines = std::fs::read_to_string(out.join("work-orders.jsonl")).expect("work-orders.jsonl");
    let mut opened = BTreeMap::new();
    let tables = audited_tracks_and_stock(&out.join("audit"));
    assert_eq!(tables["balanced"], true, "available = on hand - reserved in every inventory row");
    let states = tables["states"].as_array().expect("states");
    assert!(states.iter().all(|s| s == "confirmed" || s == "resolved"), "only emitted tracks: {states:?}");
    for line in lines.lines() {
        let message: serde_json::Value = serde_json::from_str(line).expect("json line");
        if let Some(w) = message.get("work_order") {
            // Its track is in the tracks table with the evidence; its parts were reserved.
            for list in ["tracks", "with_evidence"] {
                assert!(tables[list].as_array().expect("ids").contains(&w["track_id"]), "{list}: {}", w["track_id"]);
            }
            for part in w["parts"].as_array().expect("parts").iter().filter(|p| p["available"] == true) {
                let reserved = tables["most_reserved"][part["part_id"].as_str().expect("id")].as_i64().unwrap_or(0);
                assert!(
                    reserved >= part["quantity"].as_i64().expect("quantity"),
                    "{part} reserved in the inventory table"
                );
            }
            let id = w["work_order_id"].as_str().expect("id").to_owned();
            let key = (
                w["asset_id"].as_str().expect("asset").to_owned(),
                w["defect_class"].as_str().expect("class").to_owned(),
            );
            assert_eq!(w["shadow"], false);
            check_evidence(&out, &truth, w);
            opened.insert(id, key);
        }
    }
    let found: BTreeSet<(String, String)> = opened.values().cloned().collect();
    assert_eq!(found, expected, "work orders by (asset, class)");
    assert_eq!(opened.len(), expected.len(), "one work order per defect: {opened:?}");
    let audited = audited_work_orders(&out.join("audit"));
    assert!(audited.iter().all(|(_, _, _, shadow)| !shadow));
    assert_eq!(audited.iter().map(|a| a.0.clone()).collect::<BTreeSet<_>>(), opened.keys().cloned().collect());

    // Shadow mode: the same work orders, flagged, in the audit log only.
    let (out, stdout) = run_demo_plant(dir.path(), &truth, true);
    let detections = detections_in_summary(&stdout);
    assert_eq!(audited_detections(&out.join("audit")), (detections, detections, 1), "flagged shadow");
    assert!(!out.join("work-orders.jsonl").exists(), "shadow mode sends nothing to the CMMS");
    let audited = audited_work_orders(&out.join("audit"));
    assert!(!audited.is_empty() && audited.iter().all(|(_, _, _, shadow)| *shadow), "{audited:?}");
    let shadow_found: BTreeSet<(String, String)> = audited.iter().map(|(_, a, c, _)| (a.clone(), c.clone())).collect();
    assert_eq!(shadow_found, expected);
}

/// Renders clips in the unseen style (`benches/unseen/render.py`, a renderer that shares
/// nothing with the training generator) into `dir`; each spec is
/// `CAMERA:SECONDS:FPS:CLASS:ONSET_S`.
fn unseen_footage(dir: &Path, seed: u64, clips: &[&str]) {
    let python = std::env::var("DEFECTFLOW_ANALYTICS_PYTHON")
        .expect("DEFECTFLOW_ANALYTICS_PYTHON names a python with numpy (scripts/install.sh makes one)");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/unseen/render.py");
    let mut command = Command::new(python);
    command.arg(&script).args(["--out", dir.to_str().expect("utf-8"), "--seed", &seed.to_string()]);
    for clip in clips {
        command.args(["--clip", clip]);
    }
    let output = command.output().expect("run the unseen-style renderer");
    assert!(output.status.success(), "renderer: {}", String::from_utf8_lossy(&output.stderr));
}

/// `defectflow eval --footage` on `dir`; its JSON report.
fn eval_footage(dir: &Path) -> serde_json::Value {
    let report = dir.join("report.json");
    let output = Command::new(env!("CARGO_BIN_EXE_defectflow"))
        .args(["eval", "--footage", dir.to_str().expect("utf-8"), "--json", report.to_str().expect("utf-8")])
        .output()
        .expect("run defectflow eval");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "eval failed: {stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_str(&std::fs::read_to_string(report).expect("report")).expect("json report")
}

#[test]
fn a_commissioned_camera_on_an_unseen_surface_opens_one_work_order_for_a_defect_and_none_for_nuisances() {
    // Whole runs of recordings: one at a time, so that another run on the same two
    // cores does not change how they keep up (the unseen-surface test once missed its
    // defect in CI beside the model-swap run, and passes alone).
    let _serial = support::kafka::serial();
    let dir = tempfile::tempdir().expect("tempdir");
    // Commissioned on each clip's first 30 s (the default), then: nuisances (a vehicle,
    // a shadow, a lighting step) and no defect; rust appearing at 50 s among shadows and
    // shake.
    unseen_footage(dir.path(), 78, &["clean:100:5:none:0", "appears:100:5:corrosion:50"]);
    let report = eval_footage(dir.path());
    let defects = report["defects"].as_array().expect("defects");
    assert_eq!(defects.len(), 1, "{report:#}");
    assert_eq!(defects[0]["found"], true, "{report:#}");
    assert_eq!(defects[0]["work_orders"], 1, "one work order for one defect: {report:#}");
    assert_eq!(report["false_work_orders"], 0, "{report:#}");
}

#[test]
fn a_defect_present_while_a_camera_is_commissioned_still_opens_its_work_order() {
    // Whole runs of recordings: one at a time, so that another run on the same two
    // cores does not change how they keep up (the unseen-surface test once missed its
    // defect in CI beside the model-swap run, and passes alone).
    let _serial = support::kafka::serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let scene = planned_scene(
        "cam-pulley",
        "CV-101-PUL",
        AssetKind::ALL[0],
        (640, 360),
        15,
        9201,
        &[(DefectClass::Crack, 0.0)],
    );
    let truth = support::scenes_footage(dir.path(), &[scene], 25.0);
    let reference = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/demo-plant/reference");
    let mut toml = format!(
        "[runtime]\nworkers = 2\n[anomaly]\ncommission_s = 10\n[model]\nbatch_size = 4\n[plant]\nreference = \"{}\"\n",
        reference.display()
    );
    toml.push_str(&support::recorded_cameras(dir.path(), &truth, ""));
    let config = dir.path().join("present.toml");
    std::fs::write(&config, toml).expect("config");
    let out = dir.path().join("out");
    let output = Command::new(env!("CARGO_BIN_EXE_defectflow"))
        .args(["run", "--config", config.to_str().expect("utf-8"), "--out", out.to_str().expect("utf-8")])
        .output()
        .expect("run defectflow");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("camera commissioned"), "{stderr}");
    let lines = std::fs::read_to_string(out.join("work-orders.jsonl")).expect("work orders");
    let created: Vec<serde_json::Value> = lines
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|l| l.get("work_order").cloned())
        .filter(|w| w["revision"] == 1)
        .collect();
    assert_eq!(created.len(), 1, "one work order for the crack there from the start: {lines}");
    assert_eq!(created[0]["defect_class"], "crack");
    assert!(out.join("baselines/cam-pulley.baseline").is_file(), "the baseline is stored");
}

#[test]
fn commissioning_stores_a_baseline_that_another_camera_or_size_cannot_use() {
    let footage = support::mp4_footage();
    let dir = tempfile::tempdir().expect("tempdir");
    let url = support::file_url(&footage.video(0));
    let config = |camera: &str, size: &str| {
        let path = dir.path().join(format!("{camera}-{size}.toml"));
        let (width, height) = size.split_once('x').expect("WxH");
        let text = format!(
            "[model]\n[output]\ndir = \"{}\"\n[[cameras]]\nid = \"{camera}\"\nurl = \"{url}\"\nwidth = {width}\nheight = {height}\n",
            dir.path().join("out").display()
        );
        std::fs::write(&path, text).expect("config");
        path
    };
    let defectflow = |args: &[&str]| Command::new(env!("CARGO_BIN_EXE_defectflow")).args(args).output().expect("run");
    let learnt = config("cam-a", "320x180");
    let clip = footage.video(0);
    let output = defectflow(&[
        "commission",
        "--config",
        learnt.to_str().expect("utf-8"),
        "--camera",
        "cam-a",
        "--from",
        clip.to_str().expect("utf-8"),
        "--seconds",
        "3",
    ]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "commission: {stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.starts_with("cam-a: ") && stdout.contains("frames fitted"), "{stdout}");
    let stored = dir.path().join("out/baselines/cam-a.baseline");
    assert!(stored.is_file(), "{stdout}");
    // The same camera runs gated with it (a short run of the clip).
    let output = defectflow(&["run", "--config", learnt.to_str().expect("utf-8")]);
    assert!(output.status.success(), "gated run: {}", String::from_utf8_lossy(&output.stderr));
    // Another camera given cam-a's baseline, or cam-a at another size, is refused at start.
    std::fs::copy(&stored, dir.path().join("out/baselines/cam-b.baseline")).expect("copy");
    for (config, field) in [(config("cam-b", "320x180"), "camera"), (config("cam-a", "640x360"), "frame size")] {
        let output = defectflow(&["run", "--config", config.to_str().expect("utf-8")]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "a mismatched baseline is refused");
        assert!(stderr.contains(&format!("commissioned for {field}")), "{stderr}");
        assert!(stderr.contains("defectflow commission"), "says what to do: {stderr}");
    }
}

/// `[model] watch`: a new model written into the model folder while two cameras play in
/// real time takes over without a restart. Every frame still gets its one observation
/// (none dropped), each detection names the model that made it, and once a camera's
/// frames name the new model none names the old one again.
#[test]
fn a_model_written_into_the_watched_folder_takes_over_without_a_frame_lost() {
    // Whole runs of recordings: one at a time, so that another run on the same two
    // cores does not change how they keep up (the unseen-surface test once missed its
    // defect in CI beside the model-swap run, and passes alone).
    let _serial = support::kafka::serial();
    use defectflow_models::card::load_model;
    use defectflow_models::detector::CpuBackend;
    use sha2::Digest;
    let dir = tempfile::tempdir().expect("tempdir");
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/weights");
    let watched = dir.path().join("model");
    std::fs::create_dir_all(&watched).expect("model folder");
    for file in ["weights.bin", "model.json"] {
        std::fs::copy(shipped.join(file), watched.join(file)).expect("copy the shipped model");
    }
    // The candidate: the same network with a byte after its weights record (which
    // loading ignores): other weights bytes, so another version, finding the same.
    let device = Default::default();
    let (_, mut card) = load_model::<CpuBackend>(&shipped, &device).expect("shipped model");
    let old = card.version.clone();
    let candidate = dir.path().join("candidate");
    std::fs::create_dir_all(&candidate).expect("candidate folder");
    let mut weights = std::fs::read(shipped.join("weights.bin")).expect("weights");
    weights.push(0);
    std::fs::write(candidate.join("weights.bin"), &weights).expect("weights");
    card.weights_sha256 = defectflow_models::card::hex(&sha2::Sha256::digest(&weights));
    card.version = card.weights_sha256[..12].to_owned();
    card.save(&candidate).expect("card");
    load_model::<CpuBackend>(&candidate, &device).expect("the candidate loads");
    let new = card.version.clone();
    assert_ne!(old, new);

    let footage = support::mp4_footage();
    let mut toml = format!(
        "[anomaly]\ncommission_s = 0\n[model]\nbatch_size = 4\nwatch = true\ndir = \"{}\"\n",
        watched.display()
    );
    for camera in 0..footage.truth.cameras.len() {
        let url = support::file_url(&footage.video(camera));
        toml.push_str(&support::camera_toml(&format!("cam-{camera}"), &url, "realtime = true"));
    }
    let config = RunConfig::parse(&toml, "watch test").expect("config");
    let seen: Arc<Mutex<Vec<FrameObservation>>> = Arc::default();
    let sink = Arc::clone(&seen);
    let metrics = defectflow::metrics::Metrics::new();
    let hooks = Hooks {
        on_observation: Some(Arc::new(move |_, o| sink.lock().expect("lock").push(o.clone()))),
        metrics: Some(Arc::clone(&metrics)),
        ..Hooks::default()
    };
    // A quarter of the way in, the candidate is written over the running model: the
    // weights first, then the card.
    let writer = {
        let (seen, watched) = (Arc::clone(&seen), watched.clone());
        std::thread::spawn(move || {
            while seen.lock().expect("lock").len() < 30 {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            for file in ["weights.bin", "model.json"] {
                std::fs::copy(candidate.join(file), watched.join(file)).expect("write the candidate");
            }
        })
    };
    let (_, stages) = run::run_stages(&config, timely::Config::process(2), StopWhen::after(None), hooks).expect("run");
    writer.join().expect("writer");
    let frames = 60 * footage.truth.cameras.len();
    assert_eq!(stages.frames_inferred, frames as u64, "every frame inferred once");
    let observations = seen.lock().expect("lock").clone();
    assert_eq!(observations.len(), frames, "one observation per frame");
    assert_eq!(metrics.model_swaps.load(std::sync::atomic::Ordering::Relaxed), 1, "swapped once");
    assert_eq!(metrics.model_version.lock().expect("lock").as_deref(), Some(new.as_str()));
    assert_eq!(stages.model_version.as_deref(), Some(new.as_str()), "the run's summary names the model it ended with");
    let named =
        |version: &str| observations.iter().flat_map(|o| &o.detections).filter(|d| d.model_version == version).count();
    assert!(named(&old) > 0 && named(&new) > 0, "both models found something: {} and {}", named(&old), named(&new));
    let mut by_camera: BTreeMap<&str, Vec<&FrameObservation>> = BTreeMap::new();
    for o in &observations {
        by_camera.entry(o.camera_id.as_str()).or_default().push(o);
    }
    for (camera, mut frames) in by_camera {
        frames.sort_by_key(|o| o.frame_index);
        let versions: Vec<&str> =
            frames.iter().flat_map(|o| o.detections.iter().map(|d| d.model_version.as_str())).collect();
        assert!(versions.iter().all(|v| *v == old || *v == new), "{camera}: {versions:?}");
        let first_new = versions.iter().position(|v| *v == new).unwrap_or(versions.len());
        assert!(versions[first_new..].iter().all(|v| *v == new), "{camera}: the old model after the new: {versions:?}");
    }
}
