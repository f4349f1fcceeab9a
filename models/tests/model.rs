//! The defect model's own tests: YOLO folders (and their errors), cell targets,
//! grouping cells into detections, training lowering the loss, a saved model reloading
//! to the same outputs, and the int8 path against fp32.

use std::fs;
use std::path::Path;

use burn::backend::Autodiff;
use defectflow_models::card::{ModelCard, TrainingRecord, load_model, save_model};
use defectflow_models::data::{DataError, IGNORE, LabelBox, Sample, YoloFolder, cell_targets};
use defectflow_models::detector::{CpuBackend, Detector, Precision};
use defectflow_models::inference::{CellScores, FrameView, group_cells, score_batch};
use defectflow_models::metrics::{Evaluator, iou};
use defectflow_models::model::DefectNetConfig;
use defectflow_models::packed::PackedNet;
use defectflow_models::quantized::{Granularity, Int8Kernel, QuantNet, STEP_FACTORS, calibrate, refine};
use defectflow_models::synth::{PlantOptions, Scene, random_plant};
use defectflow_models::training::{TrainConfig, train};
use defectflow_schemas::{BoundingBox, DefectClass};

fn write_image(path: &Path) {
    image::save_buffer(path, &[128u8; 16 * 8 * 3], 16, 8, image::ExtendedColorType::Rgb8).expect("png");
}

fn folder(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::create_dir_all(dir.path().join("images")).expect("images");
    fs::create_dir_all(dir.path().join("labels")).expect("labels");
    fs::write(dir.path().join("classes.txt"), "crack\ncorrosion\n").expect("classes");
    for (name, labels) in files {
        write_image(&dir.path().join("images").join(format!("{name}.png")));
        if !labels.is_empty() {
            fs::write(dir.path().join("labels").join(format!("{name}.txt")), labels).expect("labels");
        }
    }
    dir
}

#[test]
fn a_yolo_folder_reads_boxes_in_pixels() {
    let dir = folder(&[("a", "1 0.5 0.5 0.25 0.5\n"), ("b", "\n")]);
    let yolo = YoloFolder::open(dir.path()).expect("opens");
    assert_eq!(yolo.classes, vec![DefectClass::Crack, DefectClass::Corrosion]);
    assert_eq!(yolo.check_labels().expect("labels"), 1);
    let sample = yolo.load(0).expect("loads");
    assert_eq!((sample.width, sample.height, sample.pixels.len()), (16, 8, 16 * 8 * 3));
    assert_eq!(
        sample.labels,
        vec![LabelBox { class: DefectClass::Corrosion, bbox: BoundingBox { x: 6.0, y: 2.0, width: 4.0, height: 4.0 } }]
    );
    assert!(yolo.load(1).expect("loads").labels.is_empty());
}

#[test]
fn yolo_errors_name_the_file_and_line() {
    // A missing label file.
    let dir = folder(&[("a", "0 0.5 0.5 0.1 0.1\n"), ("b", "")]);
    let err = YoloFolder::open(dir.path()).expect_err("b has no labels").to_string();
    assert!(err.contains("labels/b.txt") && err.contains("missing"), "{err}");

    // A bad line: four fields.
    let dir = folder(&[("a", "0 0.5 0.5 0.1 0.1\n0 0.5 0.5 0.1\n")]);
    let err = YoloFolder::open(dir.path()).expect("opens").check_labels().expect_err("bad line");
    assert!(matches!(err, DataError::BadLine { line: 2, .. }), "{err}");
    assert!(err.to_string().contains("labels/a.txt:2"), "{err}");

    // A coordinate out of range.
    let dir = folder(&[("a", "0 1.5 0.5 0.1 0.1\n")]);
    let err = YoloFolder::open(dir.path()).expect("opens").check_labels().expect_err("cx > 1").to_string();
    assert!(err.contains("labels/a.txt:1") && err.contains("cx `1.5`"), "{err}");

    // An unknown class id: the classes file has two.
    let dir = folder(&[("a", "\n\n5 0.5 0.5 0.1 0.1\n")]);
    let err = YoloFolder::open(dir.path()).expect("opens").check_labels().expect_err("id 5");
    assert!(matches!(err, DataError::UnknownClassId { line: 3, id: 5, count: 2, .. }), "{err}");
    assert!(err.to_string().contains("labels/a.txt:3"), "{err}");

    // An unknown class name in the classes file.
    let dir = folder(&[("a", "\n")]);
    fs::write(dir.path().join("classes.txt"), "crack\nrust\n").expect("classes");
    let err = YoloFolder::open(dir.path()).expect_err("rust").to_string();
    assert!(err.contains("classes.txt:2") && err.contains("`rust`"), "{err}");
}

#[test]
fn data_yaml_names_are_read() {
    let dir = folder(&[("a", "\n")]);
    fs::remove_file(dir.path().join("classes.txt")).expect("rm");
    fs::write(dir.path().join("data.yaml"), "train: images\nnames:\n  0: wear\n  1: crack\nnc: 2\n").expect("yaml");
    assert_eq!(YoloFolder::open(dir.path()).expect("opens").classes, vec![DefectClass::Wear, DefectClass::Crack]);
    fs::write(dir.path().join("data.yaml"), "names: ['corrosion', 'wear']\n").expect("yaml");
    assert_eq!(YoloFolder::open(dir.path()).expect("opens").classes, vec![DefectClass::Corrosion, DefectClass::Wear]);
}

#[test]
fn cell_targets_mark_inside_cells_and_ignore_grazed_ones() {
    // 32×16 pixels → 4×2 cells. A box over x 6..18, y 2..10: cell centres (12, 4) is inside;
    // (4, 4) and (20, 4) and the cells below are grazed.
    let label = LabelBox { class: DefectClass::Wear, bbox: BoundingBox { x: 6.0, y: 2.0, width: 12.0, height: 8.0 } };
    let (cols, rows, targets) = cell_targets(&[label], 32, 16);
    let wear = DefectClass::Wear.yolo_id() as u8 + 1;
    assert_eq!((cols, rows), (4, 2));
    assert_eq!(targets, vec![IGNORE, wear, IGNORE, 0, IGNORE, IGNORE, IGNORE, 0]);
    // A box smaller than a cell still owns the cell under its centre.
    let tiny = LabelBox { class: DefectClass::Crack, bbox: BoundingBox { x: 25.0, y: 9.0, width: 2.0, height: 2.0 } };
    let (_, _, targets) = cell_targets(&[tiny], 32, 16);
    assert_eq!(targets[7], 1);
}

#[test]
fn neighbouring_cells_become_one_detection_with_the_majority_class() {
    // 3 classes (background, crack, corrosion) over 2×4 cells.
    let (rows, cols) = (2, 4);
    let mut p = vec![0f32; 3 * rows * cols];
    let set = |p: &mut Vec<f32>, r: usize, c: usize, probs: [f32; 3]| {
        for (k, v) in probs.into_iter().enumerate() {
            p[(k * rows + r) * cols + c] = v;
        }
    };
    for r in 0..rows {
        for c in 0..cols {
            set(&mut p, r, c, [1.0, 0.0, 0.0]);
        }
    }
    set(&mut p, 0, 0, [0.1, 0.8, 0.1]);
    set(&mut p, 1, 1, [0.2, 0.3, 0.5]); // diagonal neighbour, other class
    set(&mut p, 0, 3, [0.6, 0.4, 0.0]); // background wins: not a defect cell
    let scores = CellScores { classes: 3, rows, cols, probabilities: p, boxes: None, appearance: None };
    let found = group_cells(&scores, 0.5, (1.0, 1.0), (32.0, 16.0));
    assert_eq!(found.len(), 1);
    let f = &found[0];
    // Summed: crack 0.8 + 0.3 = 1.1, corrosion 0.1 + 0.5 = 0.6.
    assert_eq!(f.class, DefectClass::Crack);
    assert_eq!(f.bbox, BoundingBox { x: 0.0, y: 0.0, width: 16.0, height: 16.0 });
    assert_eq!(f.area_px, 128.0);
    assert!((f.confidence - 0.8).abs() < 1e-6);
}

#[test]
fn the_box_head_places_a_box_finer_than_the_cell_grid() {
    // One class (crack) over 1×3 cells; cells 0 and 1 see a crack whose box is
    // x 5..17, y 2..6 (12×4 px), each predicting it relative to its own centre.
    let (rows, cols) = (1, 3);
    let mut p = vec![0f32; 2 * rows * cols];
    p[..3].copy_from_slice(&[0.1, 0.2, 1.0]); // background
    p[3..].copy_from_slice(&[0.9, 0.8, 0.0]); // crack
    let planes = |cell: usize| {
        let centre_x = (cell as f32 + 0.5) * 8.0;
        [(11.0 - centre_x) / 8.0, (4.0 - 4.0) / 8.0, (12.0f32 / 8.0).ln(), (4.0f32 / 8.0).ln()]
    };
    let mut boxes = vec![0f32; 4 * cols];
    for cell in 0..2 {
        for (k, v) in planes(cell).into_iter().enumerate() {
            boxes[k * cols + cell] = v;
        }
    }
    let scores = CellScores { classes: 2, rows, cols, probabilities: p, boxes: Some(boxes), appearance: None };
    let found = group_cells(&scores, 0.5, (1.0, 1.0), (24.0, 8.0));
    assert_eq!(found.len(), 1);
    let b = found[0].bbox;
    for (got, want) in [(b.x, 5.0), (b.y, 2.0), (b.width, 12.0), (b.height, 4.0)] {
        assert!((got - want).abs() < 1e-4, "{b:?}");
    }
    // The same cells without the head: the cells' extent.
    let scores = CellScores { boxes: None, ..scores };
    assert_eq!(
        group_cells(&scores, 0.5, (1.0, 1.0), (24.0, 8.0))[0].bbox,
        BoundingBox { x: 0.0, y: 0.0, width: 16.0, height: 8.0 }
    );
}

#[test]
fn the_packed_cpu_network_matches_the_network_on_tensors() {
    // Odd sizes exercise the padding on every side; two frames the batch layout.
    let (width, height) = (37, 29);
    let _turn = BACKEND_RNG.lock().unwrap_or_else(|e| e.into_inner());
    let device = Default::default();
    let net = DefectNetConfig::new().with_box_head(true).init::<CpuBackend>(&device);
    let pixels: Vec<u8> = (0..2 * 3 * width * height).map(|i| (i * 7919 % 251) as u8).collect();
    let views: Vec<FrameView<'_>> =
        pixels.chunks(3 * width * height).map(|pixels| FrameView { width, height, pixels }).collect();
    let slow = score_batch(&net, &views, &device);
    let fast = PackedNet::new(&net).score(&views);
    assert_eq!(slow.len(), 2);
    assert_eq!(fast.len(), 2);
    for (slow, fast) in slow.iter().zip(&fast) {
        assert_eq!((slow.classes, slow.rows, slow.cols), (fast.classes, fast.rows, fast.cols));
        let (slow_boxes, fast_boxes) = (slow.boxes.as_ref().expect("box head"), fast.boxes.as_ref().expect("box head"));
        for (values, fast_values) in [(&slow.probabilities, &fast.probabilities), (slow_boxes, fast_boxes)] {
            assert_eq!(values.len(), fast_values.len());
            for (a, b) in values.iter().zip(fast_values) {
                assert!((a - b).abs() <= 1e-4 * a.abs().max(1.0), "{a} vs {b}");
            }
        }
    }
}

#[test]
fn objects_match_by_iou_and_count_per_class() {
    let b = |x: f32| BoundingBox { x, y: 0.0, width: 10.0, height: 10.0 };
    assert!((iou(&b(0.0), &b(5.0)) - 50.0 / 150.0).abs() < 1e-6);
    let found = |class, x| defectflow_models::inference::Found { class, confidence: 0.9, bbox: b(x), area_px: 100.0 };
    let mut eval = Evaluator::new(0.3);
    let labels = [LabelBox { class: DefectClass::Crack, bbox: b(0.0) }];
    eval.add(&labels, &[found(DefectClass::Crack, 2.0), found(DefectClass::Wear, 50.0)], &[], &[]);
    eval.add(&[], &[found(DefectClass::Crack, 0.0)], &[], &[]);
    let report = eval.report("t".into(), String::new());
    let crack = &report.classes[DefectClass::Crack.yolo_id()].objects;
    assert_eq!((crack.true_positives, crack.false_positives, crack.false_negatives), (1, 1, 0));
    assert_eq!(report.false_detections_on_defect_free, 1);
    assert_eq!(report.defect_free_frames, 1);
    // Row crack → column crack once; the wear and the later crack are detections of nothing.
    let (crack_i, wear_i) = (DefectClass::Crack.yolo_id() + 1, DefectClass::Wear.yolo_id() + 1);
    assert_eq!(report.confusion[crack_i][crack_i], 1);
    assert_eq!(report.confusion[0][wear_i], 1);
    assert_eq!(report.confusion[0][crack_i], 1);
}

/// Weights are drawn from the backend's process-wide generator, which training seeds:
/// tests that train or initialise a network take turns, or one would draw from the
/// other's sequence.
static BACKEND_RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Frames of a small random plant, rendered in memory, as training samples.
fn generated_samples(seed: u64, frames: &[u64]) -> Vec<Sample> {
    let plant =
        PlantOptions { seed, cameras: 3, defect_free_cameras: 0, duration_s: 10.0, fps: 10, width: 128, height: 96 };
    rendered_samples(&plant, frames)
}

/// Frames `frames` of every camera of `plant`, rendered in memory, as samples.
fn rendered_samples(plant: &PlantOptions, frames: &[u64]) -> Vec<Sample> {
    let mut samples = Vec::new();
    for spec in random_plant(plant) {
        let scene = Scene::new(spec.clone());
        for &index in frames {
            let rendered = scene.render(index);
            let (w, h) = (spec.width as usize, spec.height as usize);
            let mut planar = vec![0u8; 3 * w * h];
            for (i, px) in rendered.image.pixels.chunks_exact(3).enumerate() {
                for ch in 0..3 {
                    planar[ch * w * h + i] = px[ch];
                }
            }
            let labels = rendered.labels.iter().map(|l| LabelBox { class: l.class, bbox: l.bbox }).collect();
            samples.push(Sample {
                name: format!("{}_{index}", spec.camera_id),
                width: w,
                height: h,
                pixels: planar,
                labels,
            });
        }
    }
    samples
}

#[test]
fn training_lowers_the_loss_and_a_saved_model_reloads_to_identical_outputs() {
    let _turn = BACKEND_RNG.lock().unwrap_or_else(|e| e.into_inner());
    let samples = generated_samples(3, &[60, 80, 99]);
    let architecture =
        DefectNetConfig::new().with_stem_channels(8).with_mid_channels(8).with_cell_channels(8).with_box_head(true);
    let config = TrainConfig::new().with_steps(60).with_batch_size(4).with_crop_px(64).with_seed(5);
    let device = Default::default();
    let (net, losses) = train::<Autodiff<CpuBackend>>(&samples, &architecture, None, &config, &device, |_| {});
    assert_eq!(losses.len(), 60);
    let first: f32 = losses[..10].iter().sum::<f32>() / 10.0;
    let last: f32 = losses[50..].iter().sum::<f32>() / 10.0;
    assert!(last < first * 0.8, "loss did not fall: first 10 steps {first}, last 10 {last}");

    let dir = tempfile::tempdir().expect("tempdir");
    let mut card = ModelCard {
        name: "test".into(),
        version: String::new(),
        classes: ModelCard::classes_for_output(),
        input_width: 128,
        input_height: 96,
        cell_px: 0,
        architecture: architecture.clone(),
        min_confidence: 0.5,
        training: TrainingRecord {
            command: "test".into(),
            data_digest: String::new(),
            images: samples.len(),
            boxes: 0,
            seed: 5,
            steps: 60,
            batch_size: 4,
            crop_px: 64,
            learning_rate: config.learning_rate,
            randomise: 0.0,
            final_loss: last,
            seconds: 0.0,
            continued_from: None,
        },
        evaluation: None,
        promotion: None,
        int8: None,
        weights_file: String::new(),
        weights_sha256: String::new(),
    };
    save_model(&net, &mut card, dir.path()).expect("saves");
    assert_eq!(card.version, card.weights_sha256[..12]);
    let (reloaded, reloaded_card) = load_model::<CpuBackend>(dir.path(), &device).expect("reloads");
    assert_eq!(reloaded_card, card);
    let views: Vec<FrameView<'_>> =
        samples.iter().map(|s| FrameView { width: s.width, height: s.height, pixels: &s.pixels }).collect();
    let before = score_batch(&net, &views, &device);
    let after = score_batch(&reloaded, &views, &device);
    for (a, b) in before.iter().zip(&after) {
        assert_eq!(a.probabilities, b.probabilities, "reloaded model scores differently");
        assert!(a.boxes.is_some(), "the box head is used");
        assert_eq!(a.boxes, b.boxes, "reloaded model places boxes differently");
    }

    // Weights that do not match the card's digest are refused, naming the file.
    fs::write(dir.path().join("weights.bin"), b"not weights").expect("overwrite");
    let err = load_model::<CpuBackend>(dir.path(), &device).expect_err("digest").to_string();
    assert!(err.contains("weights.bin") && err.contains("SHA-256"), "{err}");
}

#[test]
fn training_is_deterministic_for_a_seed() {
    let _turn = BACKEND_RNG.lock().unwrap_or_else(|e| e.into_inner());
    let samples = generated_samples(4, &[90]);
    let architecture = DefectNetConfig::new().with_stem_channels(4).with_mid_channels(4).with_cell_channels(4);
    let config = TrainConfig::new().with_steps(8).with_batch_size(2).with_crop_px(32).with_seed(9);
    let device = Default::default();
    let (_, a) = train::<Autodiff<CpuBackend>>(&samples, &architecture, None, &config, &device, |_| {});
    let (_, b) = train::<Autodiff<CpuBackend>>(&samples, &architecture, None, &config, &device, |_| {});
    assert_eq!(a, b);
}

/// Frames of a random plant at 640x360 (the shipped model's input size), late enough
/// that its defects have grown.
fn plant_frames(seed: u64, cameras: usize, frames: &[u64]) -> Vec<Sample> {
    let plant =
        PlantOptions { seed, cameras, defect_free_cameras: 0, duration_s: 20.0, fps: 15, width: 640, height: 360 };
    rendered_samples(&plant, frames)
}

fn views(samples: &[Sample]) -> Vec<FrameView<'_>> {
    samples.iter().map(|s| FrameView { width: s.width, height: s.height, pixels: &s.pixels }).collect()
}

#[test]
fn the_int8_network_finds_what_fp32_finds() {
    let device = Default::default();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("weights");
    let (net, mut card) = load_model::<CpuBackend>(&dir, &device).expect("the shipped model");
    // A card without a calibration cannot run int8, and says what to do.
    let without = Detector::new(net.clone(), ModelCard { int8: None, ..card.clone() }, device);
    let error = without.with_precision(Precision::Int8).expect_err("no calibration").to_string();
    assert!(error.contains("defectflow quantize"), "{error}");
    // Calibrated on one plant, compared on another.
    let calibration_frames = plant_frames(11, 4, &[150, 290]);
    card.int8 = Some(calibrate(&PackedNet::new(&net), &views(&calibration_frames), Granularity::Layer));
    let held_out = plant_frames(2024, 6, &[200, 299]);
    let fp32 = Detector::new(net.clone(), card.clone(), device);
    let int8 = Detector::new(net, card, device).with_precision(Precision::Int8).expect("calibrated");
    assert_eq!(int8.precision().0, Precision::Int8);
    let frames = views(&held_out);
    let (expected, found) = (fp32.detect(&frames), int8.detect(&frames));
    let labelled: usize = held_out.iter().map(|s| s.labels.len()).sum();
    let detected: usize = expected.iter().map(Vec::len).sum();
    assert!(labelled >= 6 && detected * 4 >= labelled * 3, "{detected} found of {labelled} labelled");
    for ((expected, found), sample) in expected.iter().zip(&found).zip(&held_out) {
        assert_eq!(expected.len(), found.len(), "{}: {expected:?} vs {found:?}", sample.name);
        for e in expected {
            let best = (found.iter().filter(|f| f.class == e.class)).map(|f| iou(&f.bbox, &e.bbox)).fold(0.0, f32::max);
            assert!(best >= 0.8, "{}: {e:?} has no int8 match (best IoU {best}) in {found:?}", sample.name);
        }
    }
}

#[test]
fn refined_steps_bring_the_int8_scores_closer_to_fp32() {
    let device = Default::default();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("weights");
    let (net, _) = load_model::<CpuBackend>(&dir, &device).expect("the shipped model");
    let samples = plant_frames(11, 3, &[150, 290]);
    let frames = views(&samples);
    let packed = PackedNet::new(&net);
    let plain = calibrate(&packed, &frames, Granularity::Layer);
    let (refined, factors) = refine(&net, &packed, &frames, plain.clone()).expect("the calibration fits");
    assert_eq!(factors.len(), plain.activation_scales.len());
    for ((factor, a), b) in factors.iter().zip(&plain.activation_scales).zip(&refined.activation_scales) {
        assert!(STEP_FACTORS.contains(factor), "{factor}");
        assert_eq!(b, &a.iter().map(|s| s * factor).collect::<Vec<_>>());
    }
    // The box head's hidden layer changes no class score: its step stays.
    assert_eq!(factors.last(), Some(&1.0));
    let reference = packed.score(&frames);
    let distance = |calibration| -> f64 {
        let scores = QuantNet::new(&net, calibration).expect("quantised").score(&frames);
        let cells = scores.iter().zip(&reference).flat_map(|(a, b)| a.probabilities.iter().zip(&b.probabilities));
        cells.map(|(x, y)| f64::from(x - y).powi(2)).sum()
    };
    let (before, after) = (distance(&plain), distance(&refined));
    assert!(after <= before, "refined {after} against {before}");
}

#[test]
fn every_int8_kernel_scores_a_frame_identically() {
    let _turn = BACKEND_RNG.lock().unwrap_or_else(|e| e.into_inner());
    let net = DefectNetConfig::new().with_box_head(true).init::<CpuBackend>(&Default::default());
    // Odd sizes exercise the padding and a last tile of one pixel.
    let (width, height) = (45, 29);
    let pixels: Vec<u8> = (0..3 * width * height).map(|i| (i * 7919 % 251) as u8).collect();
    let frame = [FrameView { width, height, pixels: &pixels }];
    // Steps per channel, so that the scales folded into the weights differ.
    let calibration = calibrate(&PackedNet::new(&net), &frame, Granularity::Channel);
    let scores = |kernel| {
        let net = QuantNet::new(&net, &calibration).expect("quantised").with_kernel(kernel).ok()?;
        Some(net.score_with_appearance(&frame).remove(0))
    };
    let portable = scores(Int8Kernel::Portable).expect("every CPU");
    let fp32 = PackedNet::new(&net).score(&frame).remove(0);
    assert_eq!((portable.rows, portable.cols, portable.classes), (4, 6, 7));
    // Close to fp32 (random weights, so not the last digit) ...
    let largest =
        (portable.probabilities.iter().zip(&fp32.probabilities)).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
    assert!(largest < 0.05, "{largest}");
    // ... and the same to the bit on every kernel this CPU has.
    for kernel in [Int8Kernel::Vnni512, Int8Kernel::Avx2] {
        if let Some(other) = scores(kernel) {
            assert_eq!(other.probabilities, portable.probabilities, "{}", kernel.name());
            assert_eq!(other.boxes, portable.boxes, "{}", kernel.name());
            assert_eq!(other.appearance, portable.appearance, "{}", kernel.name());
        }
    }
}
