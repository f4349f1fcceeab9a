//! `defectflow train` and `defectflow eval`, and the YOLO image sets `defectflow synth
//! --format yolo` writes for them.

use std::fs;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use burn::backend::Autodiff;
use defectflow_models::card::{
    DEFAULT_MIN_CONFIDENCE, EarlierModel, ModelCard, TrainingRecord, digest_files, load_model, save_model,
};
use defectflow_models::data::{Sample, YoloFolder, cell_targets};
use defectflow_models::detector::{CpuBackend, Detector};
use defectflow_models::inference::FrameView;
use defectflow_models::metrics::{EvalReport, Evaluator, FrameTally, Mistake, mistakes};
use defectflow_models::model::DefectNetConfig;
use defectflow_models::promotion::{GateSet, Measure, Promotion};
use defectflow_models::synth::{CameraTruth, DefectTones, GroundTruth, PlantOptions, Scene, random_plant};
use defectflow_models::training::{TrainConfig, final_loss, train};
use defectflow_schemas::DefectClass;
use image::codecs::jpeg::JpegEncoder;

use super::progress::Progress;

/// Renders every `every`-th frame of a random plant as JPEG with its YOLO labels:
/// `images/<camera>_<frame>.jpg`, `labels/<camera>_<frame>.txt`, `classes.txt`,
/// `ground_truth.json`; cracks and stains drawn at `tones`.
pub fn write_yolo_set(out: &Path, plant: &PlantOptions, every: u64, tones: DefectTones) -> anyhow::Result<GroundTruth> {
    let (images_dir, labels_dir) = (out.join("images"), out.join("labels"));
    for dir in [&images_dir, &labels_dir] {
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let classes: Vec<&str> = DefectClass::ALL.iter().map(|c| c.as_str()).collect();
    fs::write(out.join("classes.txt"), classes.join("\n") + "\n")?;
    let frames = (plant.duration_s * plant.fps as f64).round() as u64;
    let mut cameras = Vec::new();
    let specs = random_plant(plant);
    let mut progress = Progress::new("cameras", specs.len() as u64);
    for spec in specs {
        let scene = Scene::new(spec.clone()).with_defect_tones(tones);
        for index in (0..frames).step_by(every.max(1) as usize) {
            let rendered = scene.render(index);
            let name = format!("{}_{index:06}", spec.camera_id);
            let path = images_dir.join(format!("{name}.jpg"));
            let file = fs::File::create(&path).with_context(|| format!("cannot write {}", path.display()))?;
            JpegEncoder::new_with_quality(BufWriter::new(file), 90)
                .encode(&rendered.image.pixels, spec.width, spec.height, image::ExtendedColorType::Rgb8)
                .with_context(|| format!("cannot encode {}", path.display()))?;
            let mut labels = String::new();
            for label in &rendered.labels {
                labels.push_str(&label.yolo_line(spec.width, spec.height));
                labels.push('\n');
            }
            fs::write(labels_dir.join(format!("{name}.txt")), labels)?;
        }
        cameras.push(CameraTruth { scene: spec, video: String::new(), frames });
        progress.advance(1);
    }
    progress.finish();
    super::footage::write_truth(out, plant, cameras)
}

/// Options of `defectflow train`.
#[derive(Clone, Debug)]
pub struct TrainOptions {
    /// YOLO folders, trained on together.
    pub data: Vec<PathBuf>,
    pub out: PathBuf,
    pub config: TrainConfig,
    pub architecture: DefectNetConfig,
    /// Held-out YOLO folder evaluated after training; the result goes into the card.
    pub holdout: Option<PathBuf>,
    /// A model directory to go on training from instead of starting afresh.
    pub init: Option<PathBuf>,
    /// The command line, recorded in the card.
    pub command: String,
}

/// Trains, saves weights and card, and evaluates on the held-out set when given.
pub fn train_model(options: &TrainOptions) -> anyhow::Result<ModelCard> {
    let started = Instant::now();
    let (mut samples, mut boxes, mut digests) = (Vec::new(), 0, Vec::new());
    for dir in &options.data {
        let folder = YoloFolder::open(dir)?;
        boxes += folder.check_labels()?;
        samples.extend(load_all(&folder)?);
        digests.push(folder_digest(&folder)?);
    }
    let names: Vec<String> = options.data.iter().map(|d| d.display().to_string()).collect();
    eprintln!(
        "{} images, {boxes} labelled objects from {} ({:.1} s to load)",
        samples.len(),
        names.join(", "),
        started.elapsed().as_secs_f64()
    );
    let (input_width, input_height) = most_common_size(&samples);
    let device = Default::default();
    let (start, architecture, continued_from) = match &options.init {
        Some(dir) => {
            let (net, card) = load_model::<Autodiff<CpuBackend>>(dir, &device)?;
            let architecture = card.architecture.clone().with_box_head(options.architecture.box_head);
            eprintln!("going on from {} (version {})", dir.display(), card.version);
            let earlier = EarlierModel { version: card.version, training: card.training };
            (Some(net), architecture, Some(Box::new(earlier)))
        }
        None => (None, options.architecture.clone(), None),
    };
    let started = Instant::now();
    let mut progress = Progress::new("steps", options.config.steps as u64);
    let (net, losses) = train::<Autodiff<CpuBackend>>(&samples, &architecture, start, &options.config, &device, |p| {
        progress.set(p.step as u64, format!("loss {:.4}, {:.1} crops/s", p.loss, p.images_per_s));
    });
    progress.finish();
    let seconds = started.elapsed().as_secs_f64();
    let mut card = ModelCard {
        name: "defectflow-defectnet".into(),
        version: String::new(),
        classes: ModelCard::classes_for_output(),
        input_width,
        input_height,
        cell_px: 0,
        architecture,
        min_confidence: DEFAULT_MIN_CONFIDENCE,
        training: TrainingRecord {
            command: options.command.clone(),
            // One folder's digest, or each folder's joined by `+`.
            data_digest: digests.join("+"),
            images: samples.len(),
            boxes,
            seed: options.config.seed,
            steps: options.config.steps,
            batch_size: options.config.batch_size,
            crop_px: options.config.crop_px,
            learning_rate: options.config.learning_rate,
            randomise: options.config.randomise,
            final_loss: final_loss(&losses),
            seconds,
            continued_from,
        },
        evaluation: None,
        promotion: None,
        int8: None,
        weights_file: String::new(),
        weights_sha256: String::new(),
    };
    drop(samples);
    save_model(&net, &mut card, &options.out)?;
    if let Some(holdout) = &options.holdout {
        let detector = Detector::<CpuBackend>::new(net, card.clone(), device);
        let report = evaluate(&detector, holdout)?;
        print_report(&report);
        card.evaluation = Some(report);
        card.save(&options.out)?;
    }
    eprintln!("saved {} (version {})", options.out.display(), card.version);
    Ok(card)
}

/// Evaluates a detector on a YOLO folder, a batch of frames at a time.
pub fn evaluate<B: burn::tensor::backend::Backend>(detector: &Detector<B>, data: &Path) -> anyhow::Result<EvalReport> {
    Ok(evaluate_with(detector, data, |_, _| Ok(()))?.0)
}

/// [`evaluate`], also handing each frame's mistakes (missed objects, false detections)
/// with its image path to `review`, and returning each frame's tally (in the folder's
/// order) beside the report.
pub fn evaluate_with<B: burn::tensor::backend::Backend>(
    detector: &Detector<B>,
    data: &Path,
    mut review: impl FnMut(&Path, Vec<Mistake>) -> anyhow::Result<()>,
) -> anyhow::Result<(EvalReport, Vec<FrameTally>)> {
    let folder = YoloFolder::open(data)?;
    folder.check_labels()?;
    let mut evaluator = Evaluator::new(0.3);
    let (w, h) = (detector.card().input_width, detector.card().input_height);
    let mut progress = Progress::new("images", folder.items.len() as u64);
    for start in (0..folder.items.len()).step_by(8) {
        let batch: Vec<Sample> =
            (start..(start + 8).min(folder.items.len())).map(|i| folder.load(i)).collect::<Result<_, _>>()?;
        progress.advance(batch.len() as u64);
        let views: Vec<FrameView<'_>> =
            batch.iter().map(|s| FrameView { width: s.width, height: s.height, pixels: &s.pixels }).collect();
        let scores = detector.score(&views);
        for (index, ((sample, scores), view)) in batch.iter().zip(&scores).zip(&views).enumerate() {
            let found = &detector.found_in(scores, view);
            // Cell targets are taken at the network's input size, where the cells are.
            let (sx, sy) = (w as f32 / sample.width as f32, h as f32 / sample.height as f32);
            let scaled: Vec<_> = sample
                .labels
                .iter()
                .map(|l| {
                    let mut l = l.clone();
                    (l.bbox.x, l.bbox.y, l.bbox.width, l.bbox.height) =
                        (l.bbox.x * sx, l.bbox.y * sy, l.bbox.width * sx, l.bbox.height * sy);
                    l
                })
                .collect();
            let (_, _, targets) = cell_targets(&scaled, w, h);
            evaluator.add(&sample.labels, found, &targets, &scores.argmax());
            let wrong = mistakes(&sample.labels, found, evaluator.iou_threshold());
            if !wrong.is_empty() {
                review(&folder.items[start + index].0, wrong)?;
            }
        }
    }
    progress.finish();
    Ok((evaluator.report(data.display().to_string(), folder_digest(&folder)?), evaluator.tallies().to_vec()))
}

/// Prints the per-class table and the confusion matrix.
pub fn print_report(report: &EvalReport) {
    println!(
        "{} frames ({} defect-free), {} labelled objects, IoU >= {}",
        report.frames, report.defect_free_frames, report.objects, report.iou_threshold
    );
    println!(
        "{:<18} {:>9} {:>7} {:>7} {:>7} {:>6} {:>6} | {:>9} {:>7} {:>7}",
        "class", "objects", "prec", "recall", "f1", "fp", "fn", "cells", "prec", "recall"
    );
    for c in &report.classes {
        let o = &c.objects;
        println!(
            "{:<18} {:>9} {:>7.4} {:>7.4} {:>7.4} {:>6} {:>6} | {:>9} {:>7.4} {:>7.4}",
            c.class,
            o.true_positives + o.false_negatives,
            o.precision,
            o.recall,
            o.f1,
            o.false_positives,
            o.false_negatives,
            c.cells.true_positives + c.cells.false_negatives,
            c.cells.precision,
            c.cells.recall
        );
    }
    println!(
        "false detections on defect-free frames: {} ({:.2} per 1,000 frames)",
        report.false_detections_on_defect_free, report.false_detections_per_1000_defect_free_frames
    );
    println!("confusion (rows: labelled, columns: detected; 0 = background)");
    for (label, row) in report.confusion_labels.iter().zip(&report.confusion) {
        let cells: Vec<String> = row.iter().map(|n| format!("{n:>7}")).collect();
        println!("{label:<18} {}", cells.join(""));
    }
    println!(
        "goal (recall >= 0.97, precision >= 0.95, < 1 false per 1,000 clear frames): {}",
        if report.meets_goal() { "met" } else { "NOT met" }
    );
}

fn load_all(folder: &YoloFolder) -> anyhow::Result<Vec<Sample>> {
    (0..folder.items.len()).map(|i| folder.load(i).map_err(anyhow::Error::from)).collect()
}

fn most_common_size(samples: &[Sample]) -> (usize, usize) {
    let mut counts = std::collections::BTreeMap::new();
    for s in samples {
        *counts.entry((s.width, s.height)).or_insert(0usize) += 1;
    }
    counts.into_iter().max_by_key(|(_, n)| *n).map(|(size, _)| size).unwrap_or((640, 360))
}

pub(crate) fn folder_digest(folder: &YoloFolder) -> anyhow::Result<String> {
    let mut files: Vec<&Path> = Vec::with_capacity(folder.items.len() * 2);
    for (image, labels) in &folder.items {
        files.push(image);
        files.push(labels);
    }
    Ok(digest_files(&folder.dir, &files)?)
}

/// The evaluation gate: the `candidate` and the `current` model evaluated on each
/// `(name, folder, measure)` set and compared with a non-inferiority `margin`
/// ([`Promotion::decide`]); the result is recorded in the candidate's card.
pub fn promote(
    candidate: &Path,
    current: &Path,
    sets: &[(&str, &Path, Measure)],
    margin: f64,
) -> anyhow::Result<Promotion> {
    let load = |dir: &Path| {
        Detector::<CpuBackend>::load(dir, Default::default()).with_context(|| format!("model {}", dir.display()))
    };
    let (new, old) = (load(candidate)?, load(current)?);
    let mut results = Vec::new();
    for &(name, data, measure) in sets {
        let (new_report, new_frames) = evaluate_with(&new, data, |_, _| Ok(()))?;
        let (old_report, old_frames) = evaluate_with(&old, data, |_, _| Ok(()))?;
        results.push(GateSet::of(name, measure, (&new_report, &new_frames), (&old_report, &old_frames)));
    }
    let promotion = Promotion::decide(old.version(), results, margin);
    let mut card = new.card().clone();
    card.promotion = Some(promotion.clone());
    card.save(candidate)?;
    Ok(promotion)
}

/// Copies the model in `from` into `into`, the weights before the card, each written
/// aside and renamed into place: a run watching `into` sees the whole model change.
pub fn install(from: &Path, into: &Path) -> anyhow::Result<()> {
    let card = ModelCard::load(from)?;
    fs::create_dir_all(into).with_context(|| format!("cannot create {}", into.display()))?;
    for name in [card.weights_file.as_str(), "model.json"] {
        let aside = into.join(format!("{name}.new"));
        fs::copy(from.join(name), &aside).with_context(|| format!("cannot write {}", aside.display()))?;
        fs::File::open(&aside)?.sync_all()?;
        fs::rename(&aside, into.join(name)).with_context(|| format!("cannot replace {}", into.join(name).display()))?;
    }
    Ok(())
}

/// Writes `value` as pretty JSON.
pub fn write_json(path: &Path, report: &impl serde::Serialize) -> anyhow::Result<()> {
    let mut file = fs::File::create(path).with_context(|| format!("cannot write {}", path.display()))?;
    serde_json::to_writer_pretty(&mut file, report)?;
    writeln!(file)?;
    Ok(())
}
