//! Evaluation: per-class precision, recall and F1 for objects (matched by IoU) and for
//! cells, the object confusion matrix, and false detections on defect-free frames.

use defectflow_schemas::{BoundingBox, DefectClass};
use serde::{Deserialize, Serialize};

use crate::data::{IGNORE, LabelBox};
use crate::inference::Found;

/// Counts and rates for one class.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Rates {
    pub true_positives: u64,
    pub false_positives: u64,
    pub false_negatives: u64,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
}

impl Rates {
    fn finish(mut self) -> Rates {
        let (tp, fp, fn_) = (self.true_positives as f64, self.false_positives as f64, self.false_negatives as f64);
        self.precision = if tp + fp > 0.0 { tp / (tp + fp) } else { 1.0 };
        self.recall = if tp + fn_ > 0.0 { tp / (tp + fn_) } else { 1.0 };
        let (p, r) = (self.precision, self.recall);
        self.f1 = if p + r > 0.0 { 2.0 * p * r / (p + r) } else { 0.0 };
        self
    }
}

/// One class's results.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClassReport {
    pub class: String,
    pub objects: Rates,
    pub cells: Rates,
}

/// Evaluation of a model on a labelled set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    /// What was evaluated (the folder given to `defectflow eval`) and its digest.
    pub data: String,
    pub data_digest: String,
    pub frames: u64,
    pub objects: u64,
    pub defect_free_frames: u64,
    /// A detection matches a labelled object of its class at this IoU or more.
    pub iou_threshold: f32,
    pub classes: Vec<ClassReport>,
    /// Rows: labelled class, columns: detected class; index 0 is background (a missed
    /// object in column 0, a detection of nothing in row 0). Objects are matched by IoU
    /// regardless of class.
    pub confusion_labels: Vec<String>,
    pub confusion: Vec<Vec<u64>>,
    /// Detections on frames that have no labelled object.
    pub false_detections_on_defect_free: u64,
    pub false_detections_per_1000_defect_free_frames: f64,
}

impl EvalReport {
    /// F1 over every labelled object and detection of every class together (micro
    /// average; a detection on a frame with no labelled object is a false positive): the
    /// one figure a promotion compares. 1 where there is nothing to find and nothing found.
    pub fn object_f1(&self) -> f64 {
        let sum = |f: fn(&Rates) -> u64| self.classes.iter().map(|c| f(&c.objects)).sum::<u64>() as f64;
        micro_f1(sum(|r| r.true_positives), sum(|r| r.false_positives), sum(|r| r.false_negatives))
    }

    /// The goal of the shipped weights: recall ≥ 0.97 and precision ≥ 0.95 for every
    /// class, fewer than 1 false detection per 1,000 defect-free frames.
    pub fn meets_goal(&self) -> bool {
        self.classes.iter().all(|c| c.objects.recall >= 0.97 && c.objects.precision >= 0.95)
            && self.false_detections_per_1000_defect_free_frames < 1.0
    }
}

/// One frame's objects over every class, kept for resampling the evaluation
/// ([`crate::promotion`]): labelled objects matched, detections matching none, and
/// labelled objects no detection matched.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FrameTally {
    pub true_positives: u32,
    pub false_positives: u32,
    pub false_negatives: u32,
}

/// F1 of counts added up over classes (or frames): 1 where there is nothing to find and
/// nothing found.
pub fn micro_f1(true_positives: f64, false_positives: f64, false_negatives: f64) -> f64 {
    let (tp, fp, fn_) = (true_positives, false_positives, false_negatives);
    if tp + fp + fn_ == 0.0 { 1.0 } else { 2.0 * tp / (2.0 * tp + fp + fn_) }
}

/// Accumulates frames into an [`EvalReport`].
#[derive(Clone, Debug)]
pub struct Evaluator {
    iou_threshold: f32,
    objects: [Rates; 6],
    cells: [Rates; 6],
    confusion: [[u64; 7]; 7],
    frames: u64,
    labelled: u64,
    defect_free: u64,
    false_on_free: u64,
    tallies: Vec<FrameTally>,
}

impl Evaluator {
    pub fn new(iou_threshold: f32) -> Evaluator {
        Evaluator {
            iou_threshold,
            objects: [Rates::default(); 6],
            cells: [Rates::default(); 6],
            confusion: [[0; 7]; 7],
            frames: 0,
            labelled: 0,
            defect_free: 0,
            false_on_free: 0,
            tallies: Vec::new(),
        }
    }

    pub fn iou_threshold(&self) -> f32 {
        self.iou_threshold
    }

    /// Adds one frame: its labels and detections (same pixel space), and its cell
    /// targets and predicted cell classes (0 background, 1 + class id).
    pub fn add(&mut self, labels: &[LabelBox], found: &[Found], cell_targets: &[u8], cell_predicted: &[u8]) {
        self.frames += 1;
        self.labelled += labels.len() as u64;
        if labels.is_empty() {
            self.defect_free += 1;
            self.false_on_free += found.len() as u64;
        }
        let mut tally = FrameTally::default();
        for class in DefectClass::ALL {
            let k = class.yolo_id();
            let (truth, mine, matched) = match_class(labels, found, class, self.iou_threshold);
            let hits = matched.iter().filter(|m| m.is_some()).count();
            let (tp, fp, fn_) = (hits, mine.len() - hits, truth.len() - hits);
            self.objects[k].true_positives += tp as u64;
            self.objects[k].false_positives += fp as u64;
            self.objects[k].false_negatives += fn_ as u64;
            tally.true_positives += tp as u32;
            tally.false_positives += fp as u32;
            tally.false_negatives += fn_ as u32;
        }
        self.tallies.push(tally);
        let truth: Vec<&BoundingBox> = labels.iter().map(|l| &l.bbox).collect();
        let mut all: Vec<&Found> = found.iter().collect();
        all.sort_by(|a, b| b.confidence.total_cmp(&a.confidence));
        let matched = greedy_match(&truth, &all.iter().map(|f| &f.bbox).collect::<Vec<_>>(), self.iou_threshold);
        let mut used = vec![false; all.len()];
        for (label, m) in labels.iter().zip(&matched) {
            let row = label.class.yolo_id() + 1;
            match m {
                Some(j) => {
                    used[*j] = true;
                    self.confusion[row][all[*j].class.yolo_id() + 1] += 1;
                }
                None => self.confusion[row][0] += 1,
            }
        }
        for (f, used) in all.iter().zip(used) {
            if !used {
                self.confusion[0][f.class.yolo_id() + 1] += 1;
            }
        }
        for (&t, &p) in cell_targets.iter().zip(cell_predicted) {
            if t == IGNORE {
                continue;
            }
            if t == p && t != 0 {
                self.cells[usize::from(t) - 1].true_positives += 1;
            } else {
                if t != 0 {
                    self.cells[usize::from(t) - 1].false_negatives += 1;
                }
                if p != 0 {
                    self.cells[usize::from(p) - 1].false_positives += 1;
                }
            }
        }
    }

    /// Each frame's objects, in the order the frames were added.
    pub fn tallies(&self) -> &[FrameTally] {
        &self.tallies
    }

    pub fn report(&self, data: String, data_digest: String) -> EvalReport {
        let classes = DefectClass::ALL
            .iter()
            .map(|c| ClassReport {
                class: c.as_str().to_owned(),
                objects: self.objects[c.yolo_id()].finish(),
                cells: self.cells[c.yolo_id()].finish(),
            })
            .collect();
        let per_1000 =
            if self.defect_free == 0 { 0.0 } else { self.false_on_free as f64 * 1000.0 / self.defect_free as f64 };
        EvalReport {
            data,
            data_digest,
            frames: self.frames,
            objects: self.labelled,
            defect_free_frames: self.defect_free,
            iou_threshold: self.iou_threshold,
            classes,
            confusion_labels: crate::card::ModelCard::classes_for_output(),
            confusion: self.confusion.iter().map(|row| row.to_vec()).collect(),
            false_detections_on_defect_free: self.false_on_free,
            false_detections_per_1000_defect_free_frames: per_1000,
        }
    }
}

/// What went wrong with one object of a frame, for reviewing errors one by one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Mistake {
    /// `missed`: a labelled object no detection of its class matched; `false`: a
    /// detection that matched no labelled object of its class.
    pub kind: String,
    pub class: String,
    pub bbox: BoundingBox,
    /// The detection's confidence (`false` only).
    pub confidence: Option<f32>,
    /// Best IoU with the other side of the same class: a loose box around a real defect
    /// shows up as a missed object and a false detection with an IoU just under the
    /// threshold; a defect not seen at all has none.
    pub best_iou: f32,
}

/// The missed objects and false detections of one frame, by the same matching as
/// [`Evaluator::add`].
pub fn mistakes(labels: &[LabelBox], found: &[Found], iou_threshold: f32) -> Vec<Mistake> {
    let mut out = Vec::new();
    for class in DefectClass::ALL {
        let (truth, mine, matched) = match_class(labels, found, class, iou_threshold);
        let boxes: Vec<&BoundingBox> = mine.iter().map(|f| &f.bbox).collect();
        let best = |b: &BoundingBox, others: &[&BoundingBox]| others.iter().map(|o| iou(b, o)).fold(0.0, f32::max);
        for (t, m) in truth.iter().zip(&matched) {
            if m.is_none() {
                let bbox = **t;
                out.push(Mistake {
                    kind: "missed".into(),
                    class: class.as_str().into(),
                    best_iou: best(&bbox, &boxes),
                    bbox,
                    confidence: None,
                });
            }
        }
        for (j, f) in mine.iter().enumerate() {
            if !matched.contains(&Some(j)) {
                out.push(Mistake {
                    kind: "false".into(),
                    class: class.as_str().into(),
                    bbox: f.bbox,
                    confidence: Some(f.confidence),
                    best_iou: best(&f.bbox, &truth),
                });
            }
        }
    }
    out
}

/// One class of a frame: its labelled boxes, its detections by falling confidence, and
/// for each labelled box the detection matched to it.
fn match_class<'a>(
    labels: &'a [LabelBox],
    found: &'a [Found],
    class: DefectClass,
    threshold: f32,
) -> (Vec<&'a BoundingBox>, Vec<&'a Found>, Vec<Option<usize>>) {
    let truth: Vec<&BoundingBox> = labels.iter().filter(|l| l.class == class).map(|l| &l.bbox).collect();
    let mut mine: Vec<&Found> = found.iter().filter(|f| f.class == class).collect();
    mine.sort_by(|a, b| b.confidence.total_cmp(&a.confidence));
    let matched = greedy_match(&truth, &mine.iter().map(|f| &f.bbox).collect::<Vec<_>>(), threshold);
    (truth, mine, matched)
}

/// For each truth box, the index of the detection it is matched to: detections in the
/// given order each take the unmatched truth box they overlap most, at `threshold` or more.
fn greedy_match(truth: &[&BoundingBox], detections: &[&BoundingBox], threshold: f32) -> Vec<Option<usize>> {
    let mut matched = vec![None; truth.len()];
    for (j, d) in detections.iter().enumerate() {
        let best = truth
            .iter()
            .enumerate()
            .filter(|(i, _)| matched[*i].is_none())
            .map(|(i, t)| (i, iou(t, d)))
            .filter(|(_, v)| *v >= threshold)
            .max_by(|a, b| a.1.total_cmp(&b.1));
        if let Some((i, _)) = best {
            matched[i] = Some(j);
        }
    }
    matched
}

/// Intersection over union of two boxes.
pub fn iou(a: &BoundingBox, b: &BoundingBox) -> f32 {
    let w = (a.x + a.width).min(b.x + b.width) - a.x.max(b.x);
    let h = (a.y + a.height).min(b.y + b.height) - a.y.max(b.y);
    if w <= 0.0 || h <= 0.0 {
        return 0.0;
    }
    let inter = w * h;
    inter / (a.width * a.height + b.width * b.height - inter)
}
