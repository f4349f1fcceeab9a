//! The evaluation gate (`defectflow promote`): a candidate model against the model it
//! would replace, on each evaluation set, judged on a paired bootstrap interval of the
//! difference rather than on the two point figures. On a few hundred labelled objects
//! one detection moves object F1 by about a tenth of a point: a gate on point figures
//! refuses a candidate for that, and takes one that is better by as little.
//!
//! The rule is a non-inferiority test with a superiority test beside it, as used to
//! compare a new treatment with the standard one: the candidate passes where, on every
//! set, the lower end of the 95% interval of (candidate − current) is above −margin
//! (it is not worse by more than the margin), and on at least one set above 0 (it is
//! better beyond noise). Frames are resampled with replacement, the same frames for both
//! models (paired), so what the two models agree on adds no noise.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::metrics::{EvalReport, FrameTally, micro_f1};

/// Bootstrap resamples per set.
pub const RESAMPLES: u32 = 2_000;

/// How much worse, at the interval's lower end, a candidate may be on a set: one point
/// of object F1 (or of the share of frames right). Half the slack the shipped weights'
/// goal leaves between its recall and precision floors, and several times what one
/// detection weighs on the held-out set.
pub const DEFAULT_MARGIN: f64 = 0.01;

/// The resampling is seeded: the same models on the same sets decide the same way.
const SEED: u64 = 0x5eed_9a7e;

/// A candidate model against the current one on each evaluation set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Promotion {
    /// The current model's version.
    pub against: String,
    pub passed: bool,
    /// The non-inferiority margin the gate ran with (0 in gates recorded before it had one).
    #[serde(default)]
    pub margin: f64,
    /// Bootstrap resamples per set (0 in gates recorded before there were any).
    #[serde(default)]
    pub resamples: u32,
    pub sets: Vec<GateSet>,
}

/// One evaluation set of a promotion.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GateSet {
    /// What the set is (`held-out`, `harvest`), its folder and digest.
    pub name: String,
    pub data: String,
    pub data_digest: String,
    /// Labelled objects in the set.
    pub objects: u64,
    /// Each model's object F1 ([`EvalReport::object_f1`]) and false detections per 1,000
    /// defect-free frames.
    pub candidate_f1: f64,
    pub current_f1: f64,
    pub candidate_false_per_1000: f64,
    pub current_false_per_1000: f64,
    /// What the gate compares on this set (see [`Measure`]).
    #[serde(default)]
    pub measure: Measure,
    /// The measure's candidate − current on the whole set, and its 95% paired bootstrap
    /// interval.
    #[serde(default)]
    pub difference: f64,
    #[serde(default)]
    pub interval: [f64; 2],
}

/// The figure a gate set compares.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Measure {
    /// Micro-averaged object F1 over every class: for a labelled set such as the
    /// generated held-out set.
    #[default]
    ObjectF1,
    /// The share of frames the model gets right: no false detection and no labelled
    /// object missed. For a harvest, which is mostly the frames behind work orders people
    /// closed as false, with a few confirmed defects: there F1 is a ratio of two small
    /// counts that a resample without one of the few defects sets to 0 for both models.
    /// Also for any set of negatives only, where F1 cannot tell a model that finds
    /// nothing from a good one.
    FramesRight,
}

impl Measure {
    pub fn as_str(self) -> &'static str {
        match self {
            Measure::ObjectF1 => "object F1",
            Measure::FramesRight => "share of frames right",
        }
    }

    fn of(self, sum: &Sum) -> f64 {
        match self {
            Measure::ObjectF1 => {
                micro_f1(sum.true_positives as f64, sum.false_positives as f64, sum.false_negatives as f64)
            }
            Measure::FramesRight => {
                if sum.frames == 0 {
                    1.0
                } else {
                    sum.right as f64 / sum.frames as f64
                }
            }
        }
    }
}

/// Frame tallies added up.
#[derive(Default)]
struct Sum {
    true_positives: u64,
    false_positives: u64,
    false_negatives: u64,
    right: u64,
    frames: u64,
}

impl Sum {
    fn add(&mut self, t: &FrameTally) {
        self.true_positives += u64::from(t.true_positives);
        self.false_positives += u64::from(t.false_positives);
        self.false_negatives += u64::from(t.false_negatives);
        self.right += u64::from(t.false_positives == 0 && t.false_negatives == 0);
        self.frames += 1;
    }
}

impl GateSet {
    /// The two models' evaluations of one set, each with its frames' tallies in the
    /// same order (the same folder evaluated twice), compared by `measure`
    /// ([`Measure::FramesRight`] where the set has no labelled object).
    pub fn of(
        name: &str,
        measure: Measure,
        candidate: (&EvalReport, &[FrameTally]),
        current: (&EvalReport, &[FrameTally]),
    ) -> GateSet {
        let ((new, new_frames), (old, old_frames)) = (candidate, current);
        assert_eq!(new_frames.len(), old_frames.len(), "both models are evaluated on the same frames");
        let measure = if new.objects == 0 { Measure::FramesRight } else { measure };
        let (difference, interval) = paired_interval(measure, new_frames, old_frames);
        GateSet {
            name: name.to_owned(),
            data: new.data.clone(),
            data_digest: new.data_digest.clone(),
            objects: new.objects,
            candidate_f1: new.object_f1(),
            current_f1: old.object_f1(),
            candidate_false_per_1000: new.false_detections_per_1000_defect_free_frames,
            current_false_per_1000: old.false_detections_per_1000_defect_free_frames,
            measure,
            difference,
            interval,
        }
    }

    /// Not worse than the current model by more than `margin`, at the interval's lower end.
    pub fn no_worse(&self, margin: f64) -> bool {
        self.interval[0] >= -margin
    }

    /// Better than the current model beyond noise: the whole interval above 0.
    pub fn better(&self) -> bool {
        self.interval[0] > 0.0
    }

    /// The interval is wider than twice `margin`: the set is too small for the margin, a
    /// candidate as good as the current model may be refused on it, and a loss of the
    /// margin may go unseen.
    pub fn too_small_for(&self, margin: f64) -> bool {
        self.interval[1] - self.interval[0] > 2.0 * margin
    }
}

impl Promotion {
    /// Passed where the candidate is no worse than the current model on every set, by
    /// `margin`, and better on one ([`GateSet::no_worse`], [`GateSet::better`]).
    pub fn decide(against: &str, sets: Vec<GateSet>, margin: f64) -> Promotion {
        let passed = sets.iter().all(|s| s.no_worse(margin)) && sets.iter().any(GateSet::better);
        Promotion { against: against.to_owned(), passed, margin, resamples: RESAMPLES, sets }
    }

    /// Why the candidate was refused, naming the set; `None` where it passed.
    pub fn refusal(&self) -> Option<String> {
        if self.passed {
            return None;
        }
        if let Some(worse) = self.sets.iter().find(|s| !s.no_worse(self.margin)) {
            let hint = if worse.too_small_for(self.margin) {
                format!(
                    "; the interval is wider than twice the margin: {} is too small to tell, give it more frames",
                    worse.name
                )
            } else {
                String::new()
            };
            return Some(format!(
                "on {} the candidate's {} may be worse than {}'s by {:.4} (95% interval {:+.4} to {:+.4}), more than the margin {}{hint}",
                worse.name,
                worse.measure.as_str(),
                self.against,
                -worse.interval[0],
                worse.interval[0],
                worse.interval[1],
                self.margin
            ));
        }
        Some(format!("on no set is the candidate better than {} beyond noise (95% interval above 0)", self.against))
    }
}

/// The measure's candidate − current over all frames, and the 2.5th and 97.5th
/// percentiles of that difference over [`RESAMPLES`] resamples of the frames.
fn paired_interval(measure: Measure, candidate: &[FrameTally], current: &[FrameTally]) -> (f64, [f64; 2]) {
    let whole = |frames: &[FrameTally]| {
        let mut sum = Sum::default();
        frames.iter().for_each(|t| sum.add(t));
        measure.of(&sum)
    };
    let difference = whole(candidate) - whole(current);
    if candidate.is_empty() {
        return (difference, [difference; 2]);
    }
    let mut rng = ChaCha8Rng::seed_from_u64(SEED);
    let mut differences: Vec<f64> = (0..RESAMPLES)
        .map(|_| {
            let (mut new, mut old) = (Sum::default(), Sum::default());
            for _ in 0..candidate.len() {
                let i = rng.random_range(0..candidate.len());
                new.add(&candidate[i]);
                old.add(&current[i]);
            }
            measure.of(&new) - measure.of(&old)
        })
        .collect();
    differences.sort_by(f64::total_cmp);
    let at = |q: f64| differences[((differences.len() - 1) as f64 * q).round() as usize];
    (difference, [at(0.025), at(0.975)])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(spec: &[(u32, u32, u32)]) -> Vec<FrameTally> {
        spec.iter()
            .map(|&(true_positives, false_positives, false_negatives)| FrameTally {
                true_positives,
                false_positives,
                false_negatives,
            })
            .collect()
    }

    fn set(measure: Measure, difference: f64, interval: [f64; 2]) -> GateSet {
        GateSet {
            name: "held-out".into(),
            data: String::new(),
            data_digest: String::new(),
            objects: 1,
            candidate_f1: 0.0,
            current_f1: 0.0,
            candidate_false_per_1000: 0.0,
            current_false_per_1000: 0.0,
            measure,
            difference,
            interval,
        }
    }

    #[test]
    fn one_detection_on_hundreds_of_objects_is_within_the_interval() {
        // 400 frames of one object each, both models find all; the candidate misses one.
        let current = frames(&[(1, 0, 0); 400]);
        let mut candidate = current.clone();
        candidate[7] = FrameTally { true_positives: 0, false_positives: 0, false_negatives: 1 };
        let (difference, [low, high]) = paired_interval(Measure::ObjectF1, &candidate, &current);
        assert!(difference < 0.0 && difference > -0.002, "{difference}");
        assert!(low < difference && high >= 0.0 && low > -DEFAULT_MARGIN, "[{low}, {high}]");
    }

    #[test]
    fn a_real_loss_is_past_the_margin_and_a_real_gain_is_above_zero() {
        // The candidate misses one object in ten (F1 0.947 against 1).
        let current = frames(&[(1, 0, 0); 300]);
        let candidate: Vec<FrameTally> = (0..300)
            .map(|i| if i % 10 == 0 { FrameTally { false_negatives: 1, ..Default::default() } } else { current[i] })
            .collect();
        let (_, [low, high]) = paired_interval(Measure::ObjectF1, &candidate, &current);
        assert!(high < 0.0 && low < -DEFAULT_MARGIN, "[{low}, {high}]");
        let (_, [low, _]) = paired_interval(Measure::ObjectF1, &current, &candidate);
        assert!(low > 0.0, "{low}");
    }

    #[test]
    fn a_harvest_compares_the_frames_right() {
        // 200 frames behind false work orders and 2 behind a confirmed defect: the current
        // model detects something on every frame; the candidate on one in five of the
        // negatives, and still finds the defect.
        let mut current = frames(&[(0, 3, 0); 200]);
        current.extend(frames(&[(1, 0, 0); 2]));
        let mut candidate: Vec<FrameTally> =
            (0..200).map(|i| FrameTally { false_positives: u32::from(i % 5 == 0), ..Default::default() }).collect();
        candidate.extend(frames(&[(1, 0, 0); 2]));
        let (difference, [low, _]) = paired_interval(Measure::FramesRight, &candidate, &current);
        assert!((difference - 160.0 / 202.0).abs() < 1e-9, "{difference}");
        assert!(low > 0.5, "{low}");
        // By F1, a resample without the defect's frames is 0 for both: no gain shows.
        let (_, [low, _]) = paired_interval(Measure::ObjectF1, &candidate, &current);
        assert_eq!(low, 0.0);
        // Missing the defect is a frame wrong too.
        let mut blind = candidate.clone();
        blind[200] = FrameTally { false_negatives: 1, ..Default::default() };
        let (difference, _) = paired_interval(Measure::FramesRight, &blind, &candidate);
        assert!((difference + 1.0 / 202.0).abs() < 1e-9, "{difference}");
    }

    #[test]
    fn the_gate_wants_no_set_past_the_margin_and_one_set_above_zero() {
        let even = set(Measure::ObjectF1, -0.0001, [-0.006, 0.005]);
        let gain = set(Measure::FramesRight, 0.3, [0.2, 0.4]);
        let loss = set(Measure::ObjectF1, -0.015, [-0.025, -0.005]);
        assert!(Promotion::decide("v", vec![even.clone(), gain.clone()], DEFAULT_MARGIN).passed);
        let refused = Promotion::decide("v", vec![loss, gain], DEFAULT_MARGIN);
        assert!(!refused.passed);
        assert!(refused.refusal().expect("why").contains("more than the margin"), "{:?}", refused.refusal());
        let flat = Promotion::decide("v", vec![even.clone(), even], DEFAULT_MARGIN);
        assert!(flat.refusal().expect("why").contains("beyond noise"));
    }

    #[test]
    fn a_refusal_on_a_set_too_small_for_the_margin_says_so() {
        let gain = set(Measure::FramesRight, 0.3, [0.2, 0.4]);
        // Better by a little, on a set whose interval is three margins wide.
        let vague = set(Measure::ObjectF1, 0.0014, [-0.013, 0.0167]);
        let why = Promotion::decide("v", vec![vague, gain.clone()], DEFAULT_MARGIN).refusal().expect("why");
        assert!(why.contains("held-out is too small to tell"), "{why}");
        let loss = set(Measure::ObjectF1, -0.0077, [-0.0138, -0.0018]);
        let why = Promotion::decide("v", vec![loss, gain], DEFAULT_MARGIN).refusal().expect("why");
        assert!(why.contains("more than the margin") && !why.contains("too small"), "{why}");
    }

    #[test]
    fn the_resampling_is_repeatable() {
        let a = frames(&[(1, 0, 0), (0, 1, 1), (2, 0, 0), (1, 1, 0)]);
        let b = frames(&[(1, 0, 0), (1, 0, 0), (1, 0, 1), (1, 0, 0)]);
        assert_eq!(paired_interval(Measure::ObjectF1, &a, &b), paired_interval(Measure::ObjectF1, &a, &b));
    }
}
