//! `defectflow harvest`: what the CMMS said about the work orders, as training data. For
//! every work order whose latest revision is `false_positive` or `completed`, the frames
//! behind its track (the unannotated frames the run kept in its evidence folder: those of
//! its evidence images and those the tracker sampled over the track's life,
//! `<evidence>/<track>/<frame>.frame.jpg`, at most sixteen a track) become a YOLO folder
//! (`images/`, `labels/`, `classes.txt`): a false positive's frames as negatives (an
//! empty label file), a repaired defect's with the boxes the model found of its class in
//! that frame (the `detections` table). `harvest.jsonl` names each image's work order,
//! outcome, camera, asset, class and capture time. Wo-events the run never heard (a
//! CMMS's export, a reviewer's verdicts) can be given too, and go over the audit log's
//! statuses.
//!
//! What is left out, and counted: frames not kept (runs before frames were kept, or
//! evidence off), `unknown` defects (no class to learn), and repaired defects whose
//! frame holds no detection of their class.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::Context;
use arrow_array::{Float32Array, Int64Array, StringArray, TimestampMillisecondArray};
use defectflow_schemas::{DefectClass, WoEvent, WoEventKind};
use serde::Serialize;

use super::report::{column, read_table, revision_numbers, text};

/// What a harvest wrote and left out.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Harvest {
    /// Work orders closed as false positive or completed.
    pub work_orders: usize,
    /// Frames of false positives, written with empty labels.
    pub negatives: usize,
    /// Frames of repaired defects, written with their boxes.
    pub positives: usize,
    /// Frames named by evidence whose unannotated frame was not kept.
    pub frames_missing: usize,
    /// Frames of `unknown` defects, or of repaired ones with no box of their class.
    pub unlabelled: usize,
    /// Given events for work orders the audit log does not hold (another plant's or
    /// another run's): left out.
    pub events_unknown: usize,
}

/// One line of `harvest.jsonl`.
#[derive(Debug, Serialize)]
struct Line<'a> {
    image: String,
    work_order_id: &'a str,
    outcome: &'a str,
    camera_id: &'a str,
    asset_id: &'a str,
    defect_class: &'a str,
    frame_index: u64,
    capture_ms: Option<i64>,
}

/// A work order as its revisions tell it.
#[derive(Debug, Default)]
struct Order {
    revision: u32,
    status: String,
    camera: String,
    asset: String,
    class: String,
    /// (track, frame index) of every evidence image its revisions named.
    frames: BTreeSet<(String, u64)>,
}

/// A detection's box and class, by (camera, frame index).
type Boxes = BTreeMap<(String, u64), Vec<(String, [f32; 4], i64)>>;

/// Writes the harvest of the audit log `audit` (frames under `evidence`) to `out`, with
/// `events` (what the CMMS said that the run never heard, in order) over the statuses
/// the audit log holds.
pub fn harvest(audit: &Path, evidence: &Path, events: &[WoEvent], out: &Path) -> anyhow::Result<Harvest> {
    let orders = read_table(audit, "work_orders")?
        .with_context(|| format!("{}: no work_orders table (is this an audit folder?)", audit.display()))?;
    let mut closed = orders_of(&orders)?;
    let mut summary = Harvest::default();
    for event in events {
        match closed.get_mut(&event.work_order_id) {
            Some(order) => order.status = status_after(event.event).to_owned(),
            None => summary.events_unknown += 1,
        }
    }
    closed.retain(|_, o| matches!(o.status.as_str(), "false_positive" | "completed"));
    let boxes = match read_table(audit, "detections")? {
        Some(batches) => boxes(&batches)?,
        None => Boxes::new(),
    };
    for folder in ["images", "labels"] {
        std::fs::create_dir_all(out.join(folder)).with_context(|| format!("{}: cannot create", out.display()))?;
    }
    let classes: Vec<&str> = DefectClass::ALL.iter().map(|c| c.as_str()).collect();
    std::fs::write(out.join("classes.txt"), classes.join("\n") + "\n")?;
    let mut manifest = String::new();
    for (id, order) in &closed {
        let outcome = if order.status == "false_positive" { "false_positive" } else { "repaired" };
        summary.work_orders += 1;
        let mut frames = order.frames.clone();
        let tracks: BTreeSet<&String> = order.frames.iter().map(|(track, _)| track).collect();
        for track in tracks {
            frames.extend(kept_frames(&evidence.join(track)).into_iter().map(|frame| (track.clone(), frame)));
        }
        for (track, frame_index) in &frames {
            let frame = evidence.join(track).join(format!("{frame_index}.frame.jpg"));
            let Ok(jpeg) = std::fs::read(&frame) else {
                summary.frames_missing += 1;
                continue;
            };
            let detections = boxes.get(&(order.camera.clone(), *frame_index));
            let label = match outcome {
                "false_positive" => Some(String::new()),
                _ => labels(&order.class, detections, &jpeg, &classes),
            };
            let Some(label) = label else {
                summary.unlabelled += 1;
                continue;
            };
            let name = format!("{id}-{frame_index}");
            std::fs::write(out.join("images").join(format!("{name}.jpg")), &jpeg)?;
            std::fs::write(out.join("labels").join(format!("{name}.txt")), label)?;
            if outcome == "false_positive" {
                summary.negatives += 1;
            } else {
                summary.positives += 1;
            }
            let line = Line {
                image: format!("images/{name}.jpg"),
                work_order_id: id,
                outcome,
                camera_id: &order.camera,
                asset_id: &order.asset,
                defect_class: &order.class,
                frame_index: *frame_index,
                capture_ms: detections.and_then(|d| d.first()).map(|(_, _, at)| *at),
            };
            manifest.push_str(&serde_json::to_string(&line)?);
            manifest.push('\n');
        }
    }
    std::fs::write(out.join("harvest.jsonl"), manifest)?;
    Ok(summary)
}

/// Frame indices of the unannotated frames kept in a track's evidence folder (none where
/// the folder is missing).
fn kept_frames(folder: &Path) -> Vec<u64> {
    let Ok(entries) = std::fs::read_dir(folder) else { return Vec::new() };
    entries
        .filter_map(|entry| {
            let name = entry.ok()?.file_name();
            name.to_str()?.strip_suffix(".frame.jpg")?.parse().ok()
        })
        .collect()
}

/// YOLO label lines for the boxes of `class` in a frame; `None` where there is none (or
/// the class is not one the model learns).
fn labels(
    class: &str,
    detections: Option<&Vec<(String, [f32; 4], i64)>>,
    jpeg: &[u8],
    classes: &[&str],
) -> Option<String> {
    let id = classes.iter().position(|c| *c == class)?;
    let (width, height) = defectflow_models::annotate::jpeg_size(jpeg)?;
    let (w, h) = (width as f32, height as f32);
    let lines: Vec<String> = (detections?.iter())
        .filter(|(c, _, _)| c == class)
        .map(|(_, [x, y, bw, bh], _)| {
            let clamp = |v: f32| v.clamp(0.0, 1.0);
            let (cx, cy) = (clamp((x + bw / 2.0) / w), clamp((y + bh / 2.0) / h));
            format!("{id} {cx:.6} {cy:.6} {:.6} {:.6}\n", clamp(bw / w), clamp(bh / h))
        })
        .collect();
    (!lines.is_empty()).then(|| lines.concat())
}

/// Wo-events as JSON lines; a line that is not one is an error naming it.
pub fn read_events(path: &Path) -> anyhow::Result<Vec<WoEvent>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    (text.lines().enumerate())
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| {
            serde_json::from_str(line).with_context(|| format!("{}:{}: not a wo-event", path.display(), i + 1))
        })
        .collect()
}

/// The status a work order is left in by an event, as far as a harvest cares: closed as
/// a false positive, completed, or anything else (not harvested).
fn status_after(event: WoEventKind) -> &'static str {
    match event {
        WoEventKind::FalsePositive => "false_positive",
        WoEventKind::Completed => "completed",
        _ => "open",
    }
}

/// Every work order with its latest revision's status and the evidence frames of all its
/// revisions.
fn orders_of(batches: &[arrow_array::RecordBatch]) -> anyhow::Result<BTreeMap<String, Order>> {
    let mut orders: BTreeMap<String, Order> = BTreeMap::new();
    for batch in batches {
        let id = column::<StringArray>(batch, "work_order_id")?;
        let revision = revision_numbers(batch)?;
        let status = column::<StringArray>(batch, "status")?;
        let camera = column::<StringArray>(batch, "camera_id")?;
        let asset = column::<StringArray>(batch, "asset_id")?;
        let class = column::<StringArray>(batch, "defect_class")?;
        let uri = column::<StringArray>(batch, "evidence_uri")?;
        for (i, revision) in revision.into_iter().enumerate() {
            let order = orders.entry(text(id, i).unwrap_or_default()).or_default();
            if let Some(frame) = text(uri, i).as_deref().and_then(track_and_frame) {
                order.frames.insert(frame);
            }
            if revision >= order.revision {
                order.revision = revision;
                order.status = text(status, i).unwrap_or_default();
                order.camera = text(camera, i).unwrap_or_default();
                order.asset = text(asset, i).unwrap_or_default();
                order.class = text(class, i).unwrap_or_default();
            }
        }
    }
    Ok(orders)
}

/// The track and frame an evidence URI names (`<prefix><track>/<frame>.jpg`).
fn track_and_frame(uri: &str) -> Option<(String, u64)> {
    let mut parts = uri.rsplit('/');
    let frame = parts.next()?.strip_suffix(".jpg")?.parse().ok()?;
    let track = parts.next()?;
    crate::sinks::evidence::is_safe_track_id(track).then(|| (track.to_owned(), frame))
}

fn boxes(batches: &[arrow_array::RecordBatch]) -> anyhow::Result<Boxes> {
    let mut out = Boxes::new();
    for batch in batches {
        let camera = column::<StringArray>(batch, "camera_id")?;
        let frame = column::<Int64Array>(batch, "frame_index")?;
        let at = column::<TimestampMillisecondArray>(batch, "capture_time")?;
        let class = column::<StringArray>(batch, "class")?;
        let [x, y, w, h] =
            ["bbox_x", "bbox_y", "bbox_width", "bbox_height"].map(|name| column::<Float32Array>(batch, name));
        let (x, y, w, h) = (x?, y?, w?, h?);
        for i in 0..batch.num_rows() {
            let key = (text(camera, i).unwrap_or_default(), frame.value(i).max(0) as u64);
            let found =
                (text(class, i).unwrap_or_default(), [x.value(i), y.value(i), w.value(i), h.value(i)], at.value(i));
            out.entry(key).or_default().push(found);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evidence_uris_name_their_track_and_frame_and_nothing_else() {
        assert_eq!(track_and_frame("evidence/TR-1f2e/120.jpg"), Some(("TR-1f2e".to_owned(), 120)));
        assert_eq!(track_and_frame("https://cmms.example/ev/TR-9/7.jpg"), Some(("TR-9".to_owned(), 7)));
        assert_eq!(track_and_frame("evidence/TR-1/../7.jpg"), None);
        assert_eq!(track_and_frame("evidence/TR-1/seven.jpg"), None);
    }

    #[test]
    fn a_repaired_defect_is_labelled_with_its_class_s_boxes_in_the_frame() {
        let jpeg = defectflow_models::annotate::frame_jpeg(&vec![90u8; 3 * 64 * 32], 64, 32).expect("jpeg");
        let classes: Vec<&str> = DefectClass::ALL.iter().map(|c| c.as_str()).collect();
        let found = vec![("crack".to_owned(), [16.0, 8.0, 16.0, 8.0], 0), ("wear".to_owned(), [0.0, 0.0, 8.0, 8.0], 0)];
        let crack = classes.iter().position(|c| *c == "crack").expect("crack");
        assert_eq!(
            labels("crack", Some(&found), &jpeg, &classes),
            Some(format!("{crack} 0.375000 0.375000 0.250000 0.250000\n"))
        );
        assert_eq!(labels("corrosion", Some(&found), &jpeg, &classes), None, "no box of its class");
        assert_eq!(labels("unknown", Some(&found), &jpeg, &classes), None, "not a class the model learns");
    }

    #[test]
    fn a_track_s_kept_frames_are_its_unannotated_ones() {
        let folder = std::env::temp_dir().join(format!("defectflow-kept-{}", std::process::id()));
        std::fs::create_dir_all(&folder).expect("folder");
        for name in ["12.jpg", "12.frame.jpg", "40.frame.jpg", ".41.frame.jpg.tmp", "x.frame.jpg"] {
            std::fs::write(folder.join(name), b"").expect("file");
        }
        let mut kept = kept_frames(&folder);
        kept.sort_unstable();
        assert_eq!(kept, vec![12, 40]);
        assert_eq!(kept_frames(&folder.join("missing")), Vec::<u64>::new());
        std::fs::remove_dir_all(&folder).expect("cleaned");
    }
}
