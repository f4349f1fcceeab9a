//! Defects of a commissioned camera: a cell is a defect only where it departs from the
//! camera's normal and the classifier names a class; a lasting departure it cannot
//! name is an `unknown` defect.

use defectflow_schemas::DefectClass;
use serde::{Deserialize, Serialize};

use crate::baseline::{BaselineConfig, BaselineError, CameraBaseline, Departure};
use crate::inference::{
    CellScores, Found, cell_extent, connected_cells, connected_cells_within, defect_cells, group_defect_cells, to_frame,
};
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
    /// Cells judged in this frame to depart because the scene changed (see
    /// [`Persistence::judge_scene`]).
    pub scene_cells: usize,
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

/// Departures that began within this long of one another began together (see
/// [`BaselineConfig::scene_regions`]): a light switched on, or ramping over a second.
pub const SCENE_WINDOW_MS: u64 = 2_000;

/// Cells that began departing together and lie within this many cells (48 pixels) of
/// one another are one region: the pieces of a crack or the spots of spreading rust
/// appear together, but close together.
pub const SCENE_REACH_CELLS: usize = 6;

/// A cell departing because the scene changed is re-learnt with this time constant:
/// two thirds of the way in 3 s, so that even a change of dozens of standard deviations
/// is learnt in about ten, well before a departure could settle.
pub const SCENE_RELEARN_MS: u64 = 3_000;

/// A cell of a change of the scene that departs again within this long of its last
/// departing frame is still being re-learnt (it flickers about its threshold as its mean
/// moves): the same change, not a new departure.
pub const SCENE_HOLD_MS: u64 = 20_000;

/// What a cell's current departure is, once it has lasted [`SCENE_WINDOW_MS`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Cause {
    #[default]
    Unjudged,
    /// Local: it may be a defect.
    Asset,
    /// One of many regions that began departing together: the scene changed.
    Scene,
    /// A cell of a change of the scene departing again while it is re-learnt. It never
    /// counts towards another change: the flicker of cells being re-learnt must not make
    /// a defect appearing meanwhile look like one.
    SceneAgain,
}

/// How long each cell of a camera has been departing, so that only lasting departures
/// count (see [`BaselineConfig::settle_ms`]), and which departures are the scene changing
/// rather than the asset (see [`BaselineConfig::scene_regions`]).
#[derive(Clone, Debug, Default)]
pub struct Persistence {
    /// Per cell: capture time its current departure began, and its latest departing frame.
    since_ms: Vec<u64>,
    last_ms: Vec<u64>,
    /// Per cell: what its current departure is, and until when a new departure of a
    /// cell of a change of the scene is that change still.
    cause: Vec<Cause>,
    scene_until_ms: Vec<u64>,
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
            self.cause = vec![Cause::Unjudged; departs.len()];
            self.scene_until_ms = vec![0; departs.len()];
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
                    let again = capture_ms < self.scene_until_ms[i];
                    self.cause[i] = if again { Cause::SceneAgain } else { Cause::Unjudged };
                }
                capture_ms.saturating_sub(self.since_ms[i]) >= settle_ms
            })
            .collect()
    }

    /// A disturbed frame (see [`Departure::disturbed`]) says nothing of any one cell: the
    /// departures under way before it do not end by it.
    pub fn hold(&mut self, capture_ms: u64) {
        for i in 0..self.since_ms.len() {
            if self.departing(i, capture_ms) {
                self.last_ms[i] = self.last_ms[i].max(capture_ms);
            }
        }
    }

    /// Whether cell `i` is in a departure at `capture_ms` (its latest departing frame
    /// within the bridged gap).
    fn departing(&self, i: usize, capture_ms: u64) -> bool {
        self.since_ms[i] != u64::MAX && capture_ms <= self.last_ms[i].saturating_add(self.gap_ms.max(BRIDGED_GAP_MS))
    }

    /// Judges the departures that have lasted [`SCENE_WINDOW_MS`] by `capture_ms`: those
    /// that began within that window of one another in at least `min_regions` separate
    /// regions of the `rows`×`cols` grid are the scene changing; the others are local.
    /// A defect appears in one place; a lamp, the sun or the exposure changes the look of
    /// every bright or dark part of the view at the same moment.
    /// Returns how many cells it found the scene changing in.
    pub fn judge_scene(&mut self, capture_ms: u64, rows: usize, cols: usize, min_regions: usize) -> usize {
        let cells = rows * cols;
        if self.since_ms.len() != cells {
            return 0;
        }
        for i in 0..cells {
            if self.scene_changed(i) && self.departing(i, capture_ms) {
                self.scene_until_ms[i] = self.last_ms[i].saturating_add(SCENE_HOLD_MS);
            }
        }
        let due: Vec<usize> = (0..cells)
            .filter(|&i| {
                self.cause[i] == Cause::Unjudged
                    && self.departing(i, capture_ms)
                    && capture_ms.saturating_sub(self.since_ms[i]) >= SCENE_WINDOW_MS
            })
            .collect();
        if due.is_empty() {
            return 0;
        }
        if min_regions == 0 {
            due.iter().for_each(|&i| self.cause[i] = Cause::Asset);
            return 0;
        }
        let departing: Vec<usize> =
            (0..cells).filter(|&i| self.departing(i, capture_ms) && self.cause[i] != Cause::SceneAgain).collect();
        // Cells that began in the same frame share their cohort.
        let (mut local_onsets, mut changes) = (Vec::new(), 0);
        for i in due {
            let onset = self.since_ms[i];
            match self.cause[i] {
                Cause::Unjudged if local_onsets.contains(&onset) => {
                    self.cause[i] = Cause::Asset;
                    continue;
                }
                Cause::Unjudged => {}
                _ => continue, // judged with an earlier cell's cohort
            }
            let mut together = vec![false; cells];
            for &j in &departing {
                together[j] = self.since_ms[j].abs_diff(onset) <= SCENE_WINDOW_MS;
            }
            let regions = connected_cells_within(&together, rows, cols, SCENE_REACH_CELLS);
            if regions.len() >= min_regions {
                for j in regions.into_iter().flatten() {
                    changes += usize::from(self.cause[j] != Cause::Scene);
                    self.cause[j] = Cause::Scene;
                }
            } else {
                self.cause[i] = Cause::Asset;
                local_onsets.push(onset);
            }
        }
        changes
    }

    /// Whether cell `i`'s current departure is the scene changing (see
    /// [`Persistence::judge_scene`]).
    pub fn scene_changed(&self, i: usize) -> bool {
        matches!(self.cause.get(i), Some(Cause::Scene | Cause::SceneAgain))
    }

    /// How far each of `cells` follows a frame at `capture_ms` (see
    /// [`CameraBaseline::follow`]): `weight` for a cell that has not departed within
    /// `quiet_ms` (a live track's cells never do), `scene_weight` for one departing
    /// because the scene changed, 0 for the others.
    pub fn follow_weights(
        &self,
        cells: usize,
        capture_ms: u64,
        quiet_ms: u64,
        (weight, scene_weight): (f32, f32),
    ) -> Vec<f32> {
        (0..cells)
            .map(|i| match (self.since_ms.get(i), self.last_ms.get(i)) {
                (Some(&since), Some(&last)) if since != u64::MAX && last.saturating_add(quiet_ms) >= capture_ms => {
                    if self.scene_changed(i) {
                        scene_weight
                    } else {
                        0.0
                    }
                }
                _ => weight,
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
        return Ok(GatedFrame { named: Vec::new(), unknown: Vec::new(), departing_share, disturbed, scene_cells: 0 });
    }
    // A cell left out at commissioning was a defect all along: it has nothing to settle.
    let settled = persistence.settle(&departs, capture_ms, config.settle_ms);
    let scene_cells = persistence.judge_scene(capture_ms, scores.rows, scores.cols, config.scene_regions);
    let departs: Vec<bool> = (settled.iter().enumerate())
        .map(|(i, s)| (*s && !persistence.scene_changed(i)) || !baseline.is_learnt(i))
        .collect();
    let classified = match config.name_defects {
        true => defect_cells(scores, min_confidence),
        false => vec![false; departs.len()],
    };
    let named_cells: Vec<bool> = classified.iter().zip(&departs).map(|(c, d)| *c && *d).collect();
    let named = group_defect_cells(scores, &named_cells, scale, frame);
    let unknown = match unknown {
        UnknownDefects::Off => Vec::new(),
        UnknownDefects::On | UnknownDefects::Shadow => {
            // Departures the classifier leaves as background, in cells that were learnt
            // (a cell left out at commissioning departs by definition, and is named when
            // the classifier names defects; when it does not, such a cell is a departure
            // like any other, so a defect present at commissioning is still found).
            let unnamed: Vec<bool> = (0..departs.len())
                .map(|i| departs[i] && !classified[i] && (baseline.is_learnt(i) || !config.name_defects))
                .collect();
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
    Ok(GatedFrame { named, unknown, departing_share, disturbed, scene_cells })
}
