//! Defects of a commissioned camera: a cell is a defect only where it departs from the
//! camera's normal and the classifier names a class; a lasting departure it cannot
//! name is an `unknown` defect.

use defectflow_schemas::DefectClass;
use serde::{Deserialize, Serialize};

use crate::baseline::{BaselineConfig, BaselineError, CameraBaseline, Departure};
use crate::inference::{CellScores, Found, cell_extent, connected_cells, defect_cells, group_defect_cells, to_frame};
use crate::model::CELL_PX;

/// What becomes of departures the classifier cannot name.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnknownDefects {
    /// They are detections of class `unknown`, which open low-priority inspections.
    #[default]
    On,
    /// They are detections flagged as shadow: audited, never sent to the CMMS.
    Shadow,
    /// They are dropped.
    Off,
}

/// One frame of a commissioned camera, gated.
#[derive(Clone, Debug, PartialEq)]
pub struct GatedFrame {
    /// Defects named by the classifier where the cells depart from normal.
    pub named: Vec<Found>,
    /// Departures no class fits (empty when [`UnknownDefects::Off`]).
    pub unknown: Vec<Found>,
    /// Share of the camera's learnt cells that departed.
    pub departing_share: f32,
    /// Whether the whole view changed (nothing is found in such a frame).
    pub disturbed: bool,
}

/// Smallest departure, in cells, that is an `unknown` defect: a 16×16-pixel patch.
pub const MIN_UNKNOWN_CELLS: usize = 4;

/// Gaps shorter than this in a cell's departure are bridged (a frame at the threshold),
/// or than a fifth of the settling time where that is longer: a faint defect dips under
/// its threshold now and then, and a departure must not start over for it.
const BRIDGED_GAP_MS: u64 = 1_000;

fn bridged_gap_ms(settle_ms: u64) -> u64 {
    (settle_ms / 5).max(BRIDGED_GAP_MS)
}

/// How long each cell of a camera has been departing, so that only lasting departures
/// count (see [`BaselineConfig::settle_ms`]).
#[derive(Clone, Debug, Default)]
pub struct Persistence {
    /// Per cell: capture time its current departure began, and its latest departing frame.
    since_ms: Vec<u64>,
    last_ms: Vec<u64>,
    /// The gap bridged, from the latest settling time asked for.
    gap_ms: u64,
}

impl Persistence {
    /// Records a frame's departing cells; returns those departing for `settle_ms` or more.
    /// A camera's frames may reach it slightly out of order (two inference threads): a
    /// departure's span is the earliest and latest departing frames of an unbroken run,
    /// whatever order they came in.
    pub fn settle(&mut self, departs: &[bool], capture_ms: u64, settle_ms: u64) -> Vec<bool> {
        if self.since_ms.len() != departs.len() {
            (self.since_ms, self.last_ms) = (vec![u64::MAX; departs.len()], vec![0; departs.len()]);
        }
        self.gap_ms = bridged_gap_ms(settle_ms);
        let gap = self.gap_ms;
        (0..departs.len())
            .map(|i| {
                if !departs[i] {
                    return false;
                }
                let (since, last) = (self.since_ms[i], self.last_ms[i]);
                let within = since != u64::MAX && capture_ms + gap >= since && capture_ms <= last.saturating_add(gap);
                if within {
                    (self.since_ms[i], self.last_ms[i]) = (since.min(capture_ms), last.max(capture_ms));
                } else if since == u64::MAX || capture_ms > last {
                    (self.since_ms[i], self.last_ms[i]) = (capture_ms, capture_ms);
                }
                capture_ms.saturating_sub(self.since_ms[i]) >= settle_ms
            })
            .collect()
    }

    /// A disturbed frame (see [`Departure::disturbed`]) says nothing of any one cell: the
    /// departures under way before it do not end by it.
    pub fn hold(&mut self, capture_ms: u64) {
        for (since, last) in self.since_ms.iter().zip(self.last_ms.iter_mut()) {
            if *since != u64::MAX && capture_ms <= last.saturating_add(self.gap_ms.max(BRIDGED_GAP_MS)) {
                *last = (*last).max(capture_ms);
            }
        }
    }

    /// Per cell of `cells`: whether it has not departed within `window_ms` before
    /// `capture_ms` (a cell its baseline may learn from).
    pub fn quiet(&self, cells: usize, capture_ms: u64, window_ms: u64) -> Vec<bool> {
        (0..cells)
            .map(|i| match (self.since_ms.get(i), self.last_ms.get(i)) {
                (Some(&since), Some(&last)) => since == u64::MAX || last.saturating_add(window_ms) < capture_ms,
                _ => true,
            })
            .collect()
    }
}

/// Gates one frame's cells with its camera's baseline; see the module documentation.
/// `scale` maps network pixels to frame pixels, `frame` is the frame's size;
/// `persistence` is the camera's, `capture_ms` the frame's capture time.
#[allow(clippy::too_many_arguments)]
pub fn gate(
    scores: &CellScores,
    baseline: &CameraBaseline,
    config: &BaselineConfig,
    min_confidence: f32,
    unknown: UnknownDefects,
    (scale, frame): ((f32, f32), (f32, f32)),
    persistence: &mut Persistence,
    capture_ms: u64,
) -> Result<GatedFrame, BaselineError> {
    let Departure { relative: _, departs, departing_share, disturbed } = baseline.departure(scores, config)?;
    if disturbed {
        persistence.hold(capture_ms);
        return Ok(GatedFrame { named: Vec::new(), unknown: Vec::new(), departing_share, disturbed });
    }
    // A cell left out at commissioning was a defect all along: it has nothing to settle.
    let settled = persistence.settle(&departs, capture_ms, config.settle_ms);
    let departs: Vec<bool> = settled.iter().enumerate().map(|(i, s)| *s || !baseline.is_learnt(i)).collect();
    let classified = defect_cells(scores, min_confidence);
    let named_cells: Vec<bool> = classified.iter().zip(&departs).map(|(c, d)| *c && *d).collect();
    let named = group_defect_cells(scores, &named_cells, scale, frame);
    let unknown = match unknown {
        UnknownDefects::Off => Vec::new(),
        UnknownDefects::On | UnknownDefects::Shadow => {
            // Departures the classifier leaves as background, in cells that were learnt
            // (a cell left out at commissioning departs by definition).
            let unnamed: Vec<bool> =
                (0..departs.len()).map(|i| departs[i] && !classified[i] && baseline.is_learnt(i)).collect();
            connected_cells(&unnamed, scores.rows, scores.cols)
                .into_iter()
                .filter(|members| members.len() >= MIN_UNKNOWN_CELLS)
                .map(|members| Found {
                    class: DefectClass::Unknown,
                    // What is sure of an unknown defect is that it is not background.
                    confidence: members.iter().map(|&i| 1.0 - scores.probabilities[i]).fold(0.0, f32::max),
                    bbox: to_frame(cell_extent(&members, scores.cols), scale, frame),
                    area_px: members.len() as f32 * (CELL_PX * CELL_PX) as f32 * scale.0 * scale.1,
                })
                .collect()
        }
    };
    Ok(GatedFrame { named, unknown, departing_share, disturbed })
}
