//! `defectflow eval --footage DIR`: whole clips through the real pipeline (decode,
//! commissioning, gating, tracking, work orders) against their ground truth: per defect,
//! whether it was found, how long after its onset its work order came and how many work
//! orders it opened; false work orders per camera-hour on clips without defects, and
//! which of them are spots left out of a camera's baseline at commissioning.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use defectflow_models::baseline::BaselineHeader;
use defectflow_schemas::{WoEvent, WoEventKind};
use serde::{Deserialize, Serialize};

use crate::config::RunConfig;
use crate::reference::{WholeView, reference_with_cameras};
use crate::run::{self, Hooks, StopWhen};

/// `footage.json`: the clips of a footage folder and what is in them.
#[derive(Clone, Debug, Deserialize)]
pub struct FootageTruth {
    pub clips: Vec<ClipTruth>,
}

/// One clip: one camera's view.
#[derive(Clone, Debug, Deserialize)]
pub struct ClipTruth {
    pub camera_id: String,
    /// The video, relative to the footage folder.
    pub file: PathBuf,
    pub seconds: f64,
    pub width: u32,
    pub height: u32,
    pub defects: Vec<DefectTruth>,
}

/// A defect of a clip: its class, when it appears and where it is at the end (x, y,
/// width, height in the clip's pixels).
#[derive(Clone, Debug, Deserialize)]
pub struct DefectTruth {
    pub class: String,
    pub onset_s: f64,
    #[serde(rename = "box")]
    pub bbox: [f32; 4],
}

/// How the footage is run.
#[derive(Clone, Debug)]
pub struct FootagePlan {
    pub footage: PathBuf,
    /// Model directory; absent: the shipped weights.
    pub model: Option<PathBuf>,
    /// Frames per second of each clip the model sees.
    pub max_fps: f64,
    /// Seconds after its onset within which a defect must have its work order.
    pub deadline_s: f64,
    /// `[anomaly]` and other settings over the defaults, as TOML (may be empty).
    pub settings: String,
    /// Keep the run's outputs here; absent: a temporary folder.
    pub out: Option<PathBuf>,
}

/// The outcome for one ground-truth defect.
#[derive(Clone, Debug, Serialize)]
pub struct DefectOutcome {
    pub camera_id: String,
    pub class: String,
    pub onset_s: f64,
    /// A work order of the right class (or `unknown`) on the defect within the deadline.
    pub found: bool,
    /// Seconds from the onset to its first work order.
    pub seconds_to_work_order: Option<f64>,
    /// Work orders on the defect (1 is right; more is a split defect).
    pub work_orders: usize,
    /// Classes of those work orders.
    pub classes: Vec<String>,
    /// Their ids.
    pub work_order_ids: Vec<String>,
}

/// A work order on no defect.
#[derive(Clone, Debug, Serialize)]
pub struct FalseOrder {
    pub work_order_id: String,
    pub camera_id: String,
    pub class: String,
    /// Seconds into the clip of its first revision.
    pub created_s: f64,
    /// On cells left out of its camera's baseline at commissioning: a spot the model
    /// called a defect all through commissioning, opened once commissioning ended.
    pub at_commissioning: bool,
}

/// The whole evaluation.
#[derive(Clone, Debug, Serialize)]
pub struct FootageReport {
    pub clips: usize,
    pub defects: Vec<DefectOutcome>,
    pub found: usize,
    /// Defects with exactly one work order, of the right class or `unknown`, in time.
    pub exactly_once: usize,
    /// Work orders on no defect, on all clips and on clean clips.
    pub false_work_orders: usize,
    pub clean_false_work_orders: usize,
    pub clean_camera_hours: f64,
    pub false_per_100_clean_camera_hours: f64,
    /// Of the clean clips' false work orders, those on spots left out at commissioning:
    /// once per commissioning of a camera, not per hour it runs.
    pub clean_false_at_commissioning: usize,
    /// The clean clips' other false work orders, per 100 camera-hours.
    pub running_false_per_100_clean_camera_hours: f64,
    /// The false work orders.
    pub false_orders: Vec<FalseOrder>,
}

/// The clips' timeline starts here (2027-01-15), so the audit log has real dates.
const CLIP_EPOCH_MS: u64 = 1_800_000_000_000;

/// Runs every clip of the footage folder (`truth`: its [`read_truth`]) through the
/// pipeline and scores the work orders.
pub fn evaluate(plan: &FootagePlan, truth: &FootageTruth) -> anyhow::Result<FootageReport> {
    let scratch = tempfile::tempdir().context("a temporary folder for the evaluation run")?;
    let out = plan.out.clone().unwrap_or_else(|| scratch.path().join("out"));
    let config = prepare(plan, truth, scratch.path(), &out)?;
    let stop = StopWhen::after(None);
    run::run(&config, timely::Config::process(config.runtime.workers), stop, Hooks::default())?;
    let orders = read_orders(&out.join("work-orders.jsonl"))?;
    let spots = commissioning_spots(&out.join("baselines"), truth)?;
    Ok(score(truth, &orders, &spots, plan.deadline_s))
}

/// Per camera, the boxes (x, y, width, height in the clip's pixels) of the cells its
/// baseline left out at commissioning, from the baselines' headers; none for a camera
/// without a baseline.
fn commissioning_spots(dir: &Path, truth: &FootageTruth) -> anyhow::Result<HashMap<String, Vec<[f32; 4]>>> {
    let mut spots = HashMap::new();
    for clip in &truth.clips {
        let path = defectflow_operators::gating::baseline_path(dir, &clip.camera_id);
        if !path.is_file() {
            continue;
        }
        let header = BaselineHeader::read(&path)?;
        if header.rows == 0 || header.cols == 0 {
            bail!("{}: no grid in its header", path.display());
        }
        let (w, h) = (clip.width as f32 / header.cols as f32, clip.height as f32 / header.rows as f32);
        let boxes = header.excluded.iter().map(|c| [c.col as f32 * w, c.row as f32 * h, w, h]);
        spots.insert(clip.camera_id.clone(), boxes.collect());
    }
    Ok(spots)
}

/// The reference data (one asset a clip, its whole frame the region of interest) and the
/// config of the evaluation run.
fn prepare(plan: &FootagePlan, truth: &FootageTruth, dir: &Path, out: &Path) -> anyhow::Result<RunConfig> {
    // The demo plant's assets and procedures, from the working folder or the source tree.
    let local = PathBuf::from("examples/demo-plant/reference");
    let demo = if local.join("assets.json").is_file() {
        local
    } else {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/demo-plant/reference")
    };
    const ASSETS: [&str; 4] = ["CV-101-PUL", "MT-204", "FL-330", "GB-412"];
    let views: Vec<WholeView<'_>> = (truth.clips.iter().enumerate())
        .map(|(i, clip)| WholeView {
            camera_id: &clip.camera_id,
            asset_id: ASSETS[i % ASSETS.len()],
            width: clip.width,
            height: clip.height,
            mm_per_px: 0.5,
        })
        .collect();
    let reference = reference_with_cameras(&demo, dir, &views)?;
    let mut toml = format!(
        "[runtime]\nworkers = 2\n[output]\ndir = {:?}\n[plant]\nreference = {:?}\n",
        out.display().to_string(),
        reference.display().to_string()
    );
    toml.push_str(&format!(
        "[model]\nbatch_size = 4\n{}",
        plan.model.as_ref().map(|m| format!("dir = {:?}\n", m.display().to_string())).unwrap_or_default()
    ));
    for clip in &truth.clips {
        let video = std::fs::canonicalize(plan.footage.join(&clip.file))
            .with_context(|| format!("clip {}", plan.footage.join(&clip.file).display()))?;
        toml.push_str(&format!(
            "[[cameras]]\nid = {:?}\nurl = {:?}\nwidth = {}\nheight = {}\nmax_fps = {}\nstart_ms = {CLIP_EPOCH_MS}\nqueue_frames = 8\n",
            clip.camera_id,
            format!("file://{}", video.display()),
            clip.width,
            clip.height,
            plan.max_fps
        ));
    }
    let toml = with_settings(&toml, &plan.settings)?;
    let path = dir.join("footage-eval.toml");
    std::fs::write(&path, &toml)?;
    Ok(RunConfig::load(&path)?)
}

/// The evaluation's config with `settings` (TOML) over it: tables merge key by key, a
/// value in `settings` replaces the evaluation's.
fn with_settings(config: &str, settings: &str) -> anyhow::Result<String> {
    fn merge(base: &mut toml::Table, over: toml::Table) {
        for (key, value) in over {
            match (base.get_mut(&key), value) {
                (Some(toml::Value::Table(base)), toml::Value::Table(over)) => merge(base, over),
                (_, value) => {
                    base.insert(key, value);
                }
            }
        }
    }
    let mut table: toml::Table = toml::from_str(config).context("the evaluation's config")?;
    let over: toml::Table = toml::from_str(settings).context("--settings")?;
    merge(&mut table, over);
    Ok(toml::to_string(&table)?)
}

/// A work order as the evaluation reads it: its first revision's fields.
#[derive(Clone, Debug)]
struct Order {
    id: String,
    camera_id: String,
    class: String,
    created_s: f64,
    /// The box of its latest evidence.
    bbox: Option<[f32; 4]>,
}

fn read_orders(path: &Path) -> anyhow::Result<Vec<Order>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut orders: Vec<Order> = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let line: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("{}: {line}", path.display()))?;
        // Lines are tagged by kind (`{"work_order": {...}}`); only work orders count here.
        let Some(value) = line.get("work_order") else { continue };
        let Some(id) = value["work_order_id"].as_str() else { continue };
        let bbox = value["evidence"]["bbox"].as_object().map(|b| {
            ["x", "y", "width", "height"].map(|k| b.get(k).and_then(serde_json::Value::as_f64).unwrap_or(0.0) as f32)
        });
        match orders.iter_mut().find(|known| known.id == id) {
            Some(order) => order.bbox = bbox.or(order.bbox),
            None => orders.push(Order {
                id: id.to_owned(),
                camera_id: value["camera_id"].as_str().unwrap_or_default().to_owned(),
                class: value["defect_class"].as_str().unwrap_or_default().to_owned(),
                created_s: (value["revised_at_ms"].as_u64().unwrap_or(0).saturating_sub(CLIP_EPOCH_MS)) as f64 / 1000.0,
                bbox,
            }),
        }
    }
    Ok(orders)
}

/// Whether a work order's box touches a defect's box grown by a margin: the model's box
/// of a thin crack or a small stain is rough.
fn on_defect(order: &Order, defect: &DefectTruth) -> bool {
    let Some([x, y, w, h]) = order.bbox else { return false };
    let [dx, dy, dw, dh] = defect.bbox;
    let margin = 24.0;
    x < dx + dw + margin && dx - margin < x + w && y < dy + dh + margin && dy - margin < y + h
}

fn score(
    truth: &FootageTruth,
    orders: &[Order],
    spots: &HashMap<String, Vec<[f32; 4]>>,
    deadline_s: f64,
) -> FootageReport {
    let mut defects = Vec::new();
    let mut matched = vec![false; orders.len()];
    for clip in &truth.clips {
        for defect in &clip.defects {
            // Work orders on the defect made after it appeared (a little slack for the
            // first frames of its onset).
            let on: Vec<usize> = (0..orders.len())
                .filter(|&i| orders[i].camera_id == clip.camera_id && on_defect(&orders[i], defect))
                .filter(|&i| orders[i].created_s >= defect.onset_s - 1.0)
                .collect();
            for &i in &on {
                matched[i] = true;
            }
            let right = |i: &usize| orders[*i].class == defect.class || orders[*i].class == "unknown";
            let first = on.iter().filter(|i| right(i)).map(|&i| orders[i].created_s).reduce(f64::min);
            let seconds = first.map(|t| t - defect.onset_s);
            defects.push(DefectOutcome {
                camera_id: clip.camera_id.clone(),
                class: defect.class.clone(),
                onset_s: defect.onset_s,
                found: seconds.is_some_and(|s| s <= deadline_s),
                seconds_to_work_order: seconds,
                work_orders: on.len(),
                classes: on.iter().map(|&i| orders[i].class.clone()).collect(),
                work_order_ids: on.iter().map(|&i| orders[i].id.clone()).collect(),
            });
        }
    }
    let clean: Vec<&ClipTruth> = truth.clips.iter().filter(|c| c.defects.is_empty()).collect();
    // Folded from +0: an empty float sum is -0, which would print as "-0.00".
    let clean_camera_hours = clean.iter().fold(0.0, |hours, c| hours + c.seconds) / 3600.0;
    let false_orders: Vec<FalseOrder> = (0..orders.len())
        .filter(|&i| !matched[i])
        .map(|i| FalseOrder {
            work_order_id: orders[i].id.clone(),
            camera_id: orders[i].camera_id.clone(),
            class: orders[i].class.clone(),
            created_s: orders[i].created_s,
            at_commissioning: (spots.get(&orders[i].camera_id).into_iter().flatten()).any(|&[x, y, w, h]| {
                orders[i].bbox.is_some_and(|[bx, by, bw, bh]| bx < x + w && x < bx + bw && by < y + h && y < by + bh)
            }),
        })
        .collect();
    let on_clean: Vec<&FalseOrder> =
        false_orders.iter().filter(|o| clean.iter().any(|c| c.camera_id == o.camera_id)).collect();
    let clean_false = on_clean.len();
    let clean_false_at_commissioning = on_clean.iter().filter(|o| o.at_commissioning).count();
    let per_100_hours =
        |count: usize| if clean_camera_hours > 0.0 { 100.0 * count as f64 / clean_camera_hours } else { 0.0 };
    FootageReport {
        clips: truth.clips.len(),
        found: defects.iter().filter(|d| d.found).count(),
        exactly_once: defects.iter().filter(|d| d.found && d.work_orders == 1).count(),
        defects,
        false_work_orders: false_orders.len(),
        clean_false_work_orders: clean_false,
        clean_camera_hours,
        false_per_100_clean_camera_hours: per_100_hours(clean_false),
        clean_false_at_commissioning,
        running_false_per_100_clean_camera_hours: per_100_hours(clean_false - clean_false_at_commissioning),
        false_orders,
    }
}

/// The report as a table.
pub fn render(report: &FootageReport) -> String {
    let mut out = format!(
        "{:<20} {:<18} {:>7} {:>6} {:>10} {:>5}  classes\n",
        "camera", "defect", "onset s", "found", "to WO s", "WOs"
    );
    for d in &report.defects {
        out.push_str(&format!(
            "{:<20} {:<18} {:>7.1} {:>6} {:>10} {:>5}  {}\n",
            d.camera_id,
            d.class,
            d.onset_s,
            if d.found { "yes" } else { "no" },
            d.seconds_to_work_order.map_or("-".into(), |s| format!("{s:.1}")),
            d.work_orders,
            d.classes.join(",")
        ));
    }
    out.push_str(&format!(
        "defects found: {} of {} ({} with exactly one work order)\n\
         false work orders: {} ({} on {:.2} clean camera-hours: {:.1} per 100 camera-hours)\n\
         of those on the clean clips, on spots left out at commissioning: {}; the rest: {:.1} per 100 camera-hours\n",
        report.found,
        report.defects.len(),
        report.exactly_once,
        report.false_work_orders,
        report.clean_false_work_orders,
        report.clean_camera_hours,
        report.false_per_100_clean_camera_hours,
        report.clean_false_at_commissioning,
        report.running_false_per_100_clean_camera_hours
    ));
    for order in &report.false_orders {
        let when = if order.at_commissioning { " (a spot left out at commissioning)" } else { "" };
        out.push_str(&format!("  false: {} {} at {:.1} s{when}\n", order.camera_id, order.class, order.created_s));
    }
    out
}

/// What a reviewer who knows the ground truth tells the CMMS about the footage's work
/// orders, an hour after the clips end: each false one closed as `false_positive`, each
/// on a defect and of its class (or `unknown`) `completed`. Work orders on a defect but
/// of another class are left open: a technician would repair the defect, but the class
/// the work order names is not the one to learn. These are what `harvest --events`
/// reads, for a rehearsal of a harvest-and-retrain round on footage.
pub fn verdicts(truth: &FootageTruth, report: &FootageReport) -> Vec<WoEvent> {
    let end_s = truth.clips.iter().map(|c| c.seconds).fold(0.0, f64::max);
    let at_ms = CLIP_EPOCH_MS + ((end_s + 3600.0) * 1000.0) as u64;
    let event = |id: &str, event| WoEvent {
        work_order_id: id.to_owned(),
        event,
        at_ms,
        technician_id: None,
        note: Some("reviewed against the footage's ground truth".into()),
        reason: None,
        actual_hours: None,
        downtime_hours: None,
    };
    let mut out: Vec<WoEvent> =
        report.false_orders.iter().map(|o| event(&o.work_order_id, WoEventKind::FalsePositive)).collect();
    for defect in &report.defects {
        for (id, class) in defect.work_order_ids.iter().zip(&defect.classes) {
            if *class == defect.class || class == "unknown" {
                out.push(event(id, WoEventKind::Completed));
            }
        }
    }
    out
}

/// Reads `footage.json` of a footage folder.
pub fn read_truth(footage: &Path) -> anyhow::Result<FootageTruth> {
    let path = footage.join("footage.json");
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let truth: FootageTruth =
        serde_json::from_str(&text).with_context(|| format!("{}: not a footage ground truth", path.display()))?;
    if truth.clips.is_empty() {
        bail!("{}: no clips", path.display());
    }
    Ok(truth)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_merge_into_the_evaluations_tables_whatever_their_order() {
        let config = "[model]\nbatch_size = 4\n[anomaly]\ncommission_s = 30.0\n[[cameras]]\nid = \"a\"\n";
        let settings = "[anomaly]\nsettle_ms = 5000\n[model]\nbatch_size = 2\n[track]\nmerge_gap_px = 10.0\n";
        let merged: toml::Table = toml::from_str(&with_settings(config, settings).expect("merged")).expect("toml");
        assert_eq!(merged["model"]["batch_size"].as_integer(), Some(2), "a setting replaces the evaluation's");
        assert_eq!(merged["anomaly"]["commission_s"].as_float(), Some(30.0), "the rest of a table stays");
        assert_eq!(merged["anomaly"]["settle_ms"].as_integer(), Some(5000));
        assert_eq!(merged["track"]["merge_gap_px"].as_float(), Some(10.0));
        assert_eq!(merged["cameras"][0]["id"].as_str(), Some("a"));
        let error = with_settings(config, "[anomaly\n").expect_err("bad TOML");
        assert!(format!("{error:#}").contains("--settings"), "{error:#}");
    }
    #[test]
    fn the_reviewer_closes_false_work_orders_and_completes_found_defects_of_their_class() {
        let clip = |id: &str, defects| ClipTruth {
            camera_id: id.into(),
            file: "x.mp4".into(),
            seconds: 120.0,
            width: 640,
            height: 360,
            defects,
        };
        let crack = DefectTruth { class: "crack".into(), onset_s: 40.0, bbox: [100.0, 100.0, 40.0, 20.0] };
        let truth = FootageTruth { clips: vec![clip("defect", vec![crack]), clip("clean", vec![])] };
        let order = |id: &str, camera: &str, class: &str, created_s, x| Order {
            id: id.into(),
            camera_id: camera.into(),
            class: class.into(),
            created_s,
            bbox: Some([x, 100.0, 30.0, 20.0]),
        };
        let orders = [
            order("WO-on", "defect", "crack", 55.0, 110.0),
            order("WO-split", "defect", "corrosion", 57.0, 120.0),
            order("WO-before", "defect", "crack", 10.0, 110.0),
            order("WO-clean", "clean", "wear", 30.0, 110.0),
            order("WO-spot", "clean", "crack", 31.0, 300.0),
        ];
        // One cell of the clean camera's baseline left out at commissioning, under
        // WO-spot only.
        let spots = HashMap::from([("clean".to_owned(), vec![[320.0, 104.0, 8.0, 8.0]])]);
        let report = score(&truth, &orders, &spots, 60.0);
        assert_eq!(report.defects[0].work_order_ids, ["WO-on", "WO-split"]);
        let false_ids: Vec<&str> = report.false_orders.iter().map(|o| o.work_order_id.as_str()).collect();
        assert_eq!(false_ids, ["WO-before", "WO-clean", "WO-spot"], "before its onset, on a clean clip");
        let at_commissioning: Vec<bool> = report.false_orders.iter().map(|o| o.at_commissioning).collect();
        assert_eq!(at_commissioning, [false, false, true]);
        assert_eq!((report.clean_false_work_orders, report.clean_false_at_commissioning), (2, 1));
        // 120 clean camera-seconds: one false work order while running is 3,000 per 100 hours.
        assert!((report.running_false_per_100_clean_camera_hours - 3000.0).abs() < 1e-6);
        let said: Vec<(String, WoEventKind)> =
            verdicts(&truth, &report).into_iter().map(|e| (e.work_order_id, e.event)).collect();
        assert_eq!(
            said,
            [
                ("WO-before".into(), WoEventKind::FalsePositive),
                ("WO-clean".into(), WoEventKind::FalsePositive),
                ("WO-spot".into(), WoEventKind::FalsePositive),
                ("WO-on".into(), WoEventKind::Completed),
            ],
            "the corrosion work order on the crack is left open"
        );
    }
}
