//! Onset to work order, for `defectflow bench --source FILE --ground-truth JSON`: every
//! bench camera plays the same recording, drawn by `defectflow synth`, whose
//! `ground_truth.json` says where and when each defect appears. Each work order opened
//! is put on the drawn defect nearest its evidence box, and for each defect the bench
//! reports on how many cameras it opened a work order, under which classes, and how
//! long after the defect's onset (in capture time: the camera's position in the
//! recording when the frame that opened it was captured).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use anyhow::Context;
use defectflow_models::synth::GroundTruth;
use defectflow_schemas::BoundingBox;
use serde::Serialize;

/// A work order opened in the run, as the matching reads it.
#[derive(Clone, Debug)]
pub struct OpenedOrder {
    pub camera_id: String,
    pub defect_class: String,
    /// Capture time of the frame that opened it, ms since the epoch.
    pub opened_at_ms: u64,
    pub bbox: BoundingBox,
}

/// One drawn defect across the bench's cameras.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DefectOnset {
    pub defect_id: String,
    /// The class it was drawn as.
    pub class: String,
    pub onset_s: f64,
    /// Cameras with at least one work order on it.
    pub cameras_with_work_order: usize,
    /// Work orders on it, by the class they name.
    pub named: BTreeMap<String, usize>,
    /// Onset to each camera's first work order on it, seconds: least, median, most.
    pub seconds: Option<[f64; 3]>,
}

/// What the recording shows and where: its defects, centres scaled to the bench's frame.
#[derive(Debug)]
pub struct Truth {
    defects: Vec<Drawn>,
}

/// One drawn defect, at the bench's scale.
#[derive(Debug)]
struct Drawn {
    id: String,
    class: String,
    onset_s: f64,
    centre: [f32; 2],
    /// How far from the centre a work order's box centre may be and still be on it:
    /// the largest drawn size, and at least 48 pixels.
    reach: f32,
}

impl Truth {
    /// Reads `ground_truth.json`; its first camera is the recording the bench plays,
    /// shown at `width` pixels across.
    pub fn read(path: &Path, width: u32) -> anyhow::Result<Truth> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        let truth: GroundTruth = serde_json::from_str(&text)
            .with_context(|| format!("--ground-truth {}: not a `defectflow synth` ground truth", path.display()))?;
        let camera =
            (truth.cameras.first()).with_context(|| format!("--ground-truth {}: no camera in it", path.display()))?;
        let scale = width as f32 / truth.width.max(1) as f32;
        let defects = (camera.scene.defects.iter())
            .map(|d| Drawn {
                id: d.defect_id.clone(),
                class: d.class.as_str().to_owned(),
                onset_s: d.onset_s,
                centre: [d.center[0] * scale, d.center[1] * scale],
                reach: (d.max_size_px * scale).max(48.0),
            })
            .collect();
        Ok(Truth { defects })
    }

    /// Each defect's figures over the work orders, each camera's recording starting at
    /// `starts[camera]` (capture time of its position 0); and the work orders on no
    /// drawn defect (or of a camera whose start is not known).
    pub fn match_orders(&self, orders: &[OpenedOrder], starts: &HashMap<String, u64>) -> (Vec<DefectOnset>, usize) {
        // Per defect: per camera, the seconds from onset to each work order on it.
        let mut on: Vec<BTreeMap<&str, Vec<(f64, &str)>>> = vec![BTreeMap::new(); self.defects.len()];
        let mut elsewhere = 0;
        for order in orders {
            let centre = [order.bbox.x + order.bbox.width / 2.0, order.bbox.y + order.bbox.height / 2.0];
            let distance = |i: usize| {
                let c = self.defects[i].centre;
                (c[0] - centre[0]).hypot(c[1] - centre[1])
            };
            let nearest = (0..self.defects.len()).min_by(|&a, &b| distance(a).total_cmp(&distance(b)));
            let start = starts.get(&order.camera_id);
            match (nearest, start) {
                (Some(i), Some(&start)) if distance(i) <= self.defects[i].reach => {
                    let seconds = order.opened_at_ms.saturating_sub(start) as f64 / 1000.0 - self.defects[i].onset_s;
                    on[i].entry(&order.camera_id).or_default().push((seconds, &order.defect_class));
                }
                _ => elsewhere += 1,
            }
        }
        let onsets = (self.defects.iter().zip(on))
            .map(|(drawn, cameras)| {
                let mut firsts: Vec<f64> =
                    cameras.values().map(|v| v.iter().map(|(s, _)| *s).fold(f64::INFINITY, f64::min)).collect();
                firsts.sort_by(f64::total_cmp);
                let mut named = BTreeMap::new();
                for (_, class) in cameras.values().flatten() {
                    *named.entry((*class).to_owned()).or_default() += 1;
                }
                DefectOnset {
                    defect_id: drawn.id.clone(),
                    class: drawn.class.clone(),
                    onset_s: drawn.onset_s,
                    cameras_with_work_order: cameras.len(),
                    named,
                    seconds: (!firsts.is_empty())
                        .then(|| [firsts[0], firsts[firsts.len() / 2], firsts[firsts.len() - 1]]),
                }
            })
            .collect();
        (onsets, elsewhere)
    }
}

/// The figures as lines under the bench's report.
pub fn render_onsets(onsets: &[DefectOnset], elsewhere: usize, cameras: usize) -> String {
    let mut out = String::from("against the ground truth (onset to work order opened, capture time):\n");
    for d in onsets {
        let named: Vec<String> = d.named.iter().map(|(class, n)| format!("{class} {n}")).collect();
        let seconds = d.seconds.map_or("none".to_owned(), |[least, median, most]| {
            format!("least {least:.1} s, median {median:.1} s, most {most:.1} s")
        });
        out.push_str(&format!(
            "  {} ({}, onset {:.1} s): work orders on {} of {cameras} cameras, named {}; {seconds}\n",
            d.defect_id,
            d.class,
            d.onset_s,
            d.cameras_with_work_order,
            if named.is_empty() { "-".to_owned() } else { named.join(", ") }
        ));
    }
    out.push_str(&format!("  work orders on nothing drawn: {elsewhere}\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_work_order_goes_to_the_nearest_drawn_defect_timed_from_its_cameras_start() {
        let drawn = |id: &str, class: &str, onset_s, centre| Drawn {
            id: id.into(),
            class: class.into(),
            onset_s,
            centre,
            reach: 48.0,
        };
        let truth = Truth {
            defects: vec![drawn("d0", "crack", 10.0, [100.0, 100.0]), drawn("d1", "corrosion", 20.0, [400.0, 200.0])],
        };
        let order = |camera: &str, class: &str, at_ms, x: f32, y: f32| OpenedOrder {
            camera_id: camera.into(),
            defect_class: class.into(),
            opened_at_ms: at_ms,
            bbox: BoundingBox { x: x - 10.0, y: y - 10.0, width: 20.0, height: 20.0 },
        };
        let starts = HashMap::from([("a".to_owned(), 1_000_000), ("b".to_owned(), 1_000_500)]);
        let orders = [
            order("a", "crack", 1_014_000, 105.0, 98.0),
            order("b", "wear", 1_013_500, 95.0, 110.0),
            // Camera b's second work order on the crack: its first one counts.
            order("b", "crack", 1_030_500, 100.0, 100.0),
            order("a", "corrosion", 1_025_000, 410.0, 190.0),
            // On nothing drawn, and of a camera whose start is not known.
            order("a", "crack", 1_050_000, 600.0, 20.0),
            order("c", "crack", 1_014_000, 100.0, 100.0),
        ];
        let (onsets, elsewhere) = truth.match_orders(&orders, &starts);
        assert_eq!(elsewhere, 2);
        assert_eq!(onsets[0].cameras_with_work_order, 2);
        assert_eq!(onsets[0].named, BTreeMap::from([("crack".to_owned(), 2), ("wear".to_owned(), 1)]));
        assert_eq!(onsets[0].seconds, Some([3.0, 4.0, 4.0]));
        assert_eq!((onsets[1].cameras_with_work_order, onsets[1].seconds), (1, Some([5.0, 5.0, 5.0])));
    }
}
