//! Training: aligned random crops of labelled frames, per-cell cross-entropy, Adam.
//!
//! Crops start on the cell grid, so a crop's cells are exactly the frame's cells and the
//! fully convolutional network trained on crops reads whole frames unchanged. Half of
//! the crops (by default) are centred near a defect, since defects cover a tiny share
//! of a plant frame; once the network has learnt the easy part, a quarter go to cells it
//! still gets wrong (hard examples, mined from all training frames every 1,000 steps).

use std::time::Instant;

use burn::config::Config;
use burn::module::{AutodiffModule, Module};
use burn::optim::{AdamConfig, GradientsParams, Optimizer};
use burn::record::{BinBytesRecorder, FullPrecisionSettings, Recorder};
use burn::tensor::activation::log_softmax;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{ElementConversion, Int, Tensor, TensorData};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::data::{IGNORE, Sample, cell_targets_with_boxes};
use crate::detector::CpuBackend;
use crate::distillation::distillation;
use crate::inference::FrameView;
use crate::model::{BOX_OUTPUTS, CELL_PX, DefectNet, DefectNetConfig};
use crate::packed::PackedNet;
use crate::randomise::randomise;

/// Training hyperparameters, recorded in the model card.
#[derive(Config, Debug, PartialEq)]
pub struct TrainConfig {
    #[config(default = 7)]
    pub seed: u64,
    #[config(default = 4000)]
    pub steps: usize,
    #[config(default = 16)]
    pub batch_size: usize,
    /// Side of the square crops, in pixels (a multiple of 8).
    #[config(default = 128)]
    pub crop_px: usize,
    #[config(default = 2e-3)]
    pub learning_rate: f64,
    /// Share of crops placed around a labelled defect.
    #[config(default = 0.5)]
    pub defect_crop_share: f64,
    /// Loss weight of a defect cell relative to a background cell.
    #[config(default = 3.0)]
    pub defect_weight: f32,
    /// Every this many steps the network scores all training frames and remembers the
    /// cells it gets wrong (hard examples); 0: never.
    #[config(default = 1000)]
    pub mine_every: usize,
    /// Share of crops placed around a remembered hard example.
    #[config(default = 0.25)]
    pub hard_crop_share: f64,
    /// Weight of the box head's loss (mean absolute error of centre offset and log size
    /// over defect cells) beside the cells' cross-entropy.
    #[config(default = 0.1)]
    pub box_weight: f32,
    /// Train the box head alone, everything else frozen (going on from a trained model).
    #[config(default = false)]
    pub box_head_only: bool,
    /// Share of crops given another surface, light, colour and camera
    /// ([`crate::randomise`]); 0: crops as the frames show them.
    #[config(default = 0.0)]
    pub randomise: f64,
    /// Going on from a model: weight of a loss that keeps the network's class
    /// probabilities near the starting model's on the cells that model gets right
    /// (distillation, as in Li and Hoiem's "Learning without Forgetting"), so new frames
    /// teach their lesson without the old ones being forgotten; 0: none.
    #[config(default = 0.0)]
    pub distill: f32,
}

/// Reported every few steps.
#[derive(Clone, Copy, Debug)]
pub struct Progress {
    pub step: usize,
    pub steps: usize,
    /// Mean loss since the previous report.
    pub loss: f32,
    pub images_per_s: f64,
}

/// A sample with its cell targets and the cells that hold a defect.
struct Prepared<'a> {
    sample: &'a Sample,
    cols: usize,
    targets: Vec<u8>,
    boxes: Vec<Option<[f32; 4]>>,
    defect_cells: Vec<(usize, usize)>,
}

/// Trains a network on `samples`, a new one or, given `start`, that one further (with a
/// fresh box head if it has none and `architecture` asks for one); returns it (without
/// autodiff) and the loss of every step. The same seed gives the same network and losses,
/// provided nothing else in the process draws from the backend's generator (which a new
/// network's weights come from) while it runs.
pub fn train<B: AutodiffBackend>(
    samples: &[Sample],
    architecture: &DefectNetConfig,
    start: Option<DefectNet<B>>,
    config: &TrainConfig,
    device: &B::Device,
    mut progress: impl FnMut(&Progress),
) -> (DefectNet<B::InnerBackend>, Vec<f32>) {
    B::seed(device, config.seed);
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
    let prepared: Vec<Prepared<'_>> = samples
        .iter()
        .map(|sample| {
            let (cols, _, targets, boxes) = cell_targets_with_boxes(&sample.labels, sample.width, sample.height);
            let defect_cells = targets
                .iter()
                .enumerate()
                .filter(|(_, t)| **t != 0 && **t != IGNORE)
                .map(|(i, _)| (i / cols, i % cols))
                .collect();
            Prepared { sample, cols, targets, boxes, defect_cells }
        })
        .collect();
    let with_defects: Vec<usize> = (0..prepared.len()).filter(|&i| !prepared[i].defect_cells.is_empty()).collect();
    let crop_cells = (config.crop_px / CELL_PX).max(1);
    let continuing = start.is_some();
    // The starting model, as it was, for distillation.
    let teacher = start.as_ref().filter(|_| config.distill > 0.0).map(|net| net.valid());
    let mut net = match start {
        Some(net) if architecture.box_head && !net.has_box_head() => net.with_box_head(device),
        Some(net) => net,
        None => architecture.init::<B>(device),
    };
    if config.box_head_only {
        net = net.freeze_all_but_box_head();
    }
    // With the cells frozen there is nothing for hard examples to teach.
    let mine_every = if config.box_head_only { 0 } else { config.mine_every };
    let mut optimizer = AdamConfig::new().init();
    let mut losses = Vec::with_capacity(config.steps);
    let (mut since, mut window) = (Instant::now(), Vec::new());
    // (sample, row, col) of cells the network got wrong at the last mining.
    let mut hard: Vec<(usize, usize, usize)> = Vec::new();
    for step in 0..config.steps {
        // A network trained before already knows enough to have its mistakes mined at once.
        if mine_every > 0 && step % mine_every == 0 && (step > 0 || continuing) {
            hard = mine_hard_cells(&packed_copy(&net.valid(), architecture), &prepared);
            since = Instant::now();
        }
        let mut pixels = Vec::with_capacity(config.batch_size * 3 * crop_cells * crop_cells * CELL_PX * CELL_PX);
        let mut targets = Vec::with_capacity(config.batch_size * crop_cells * crop_cells);
        let mut weights = Vec::with_capacity(targets.capacity());
        let mut box_targets = Vec::with_capacity(4 * targets.capacity());
        let mut box_mask = Vec::with_capacity(targets.capacity());
        for _ in 0..config.batch_size {
            let draw = rng.random_range(0.0..1.0);
            let (item, around) = if !hard.is_empty() && draw < config.hard_crop_share {
                let (i, r, c) = hard[rng.random_range(0..hard.len())];
                (&prepared[i], Some((r, c)))
            } else if !with_defects.is_empty() && draw < config.hard_crop_share + config.defect_crop_share {
                let item = &prepared[with_defects[rng.random_range(0..with_defects.len())]];
                (item, Some(item.defect_cells[rng.random_range(0..item.defect_cells.len())]))
            } else {
                (&prepared[rng.random_range(0..prepared.len())], None)
            };
            let (row0, col0) = crop_origin(item, crop_cells, around, &mut rng);
            let from = pixels.len();
            crop(item, row0, col0, crop_cells, config.defect_weight, &mut pixels, &mut targets, &mut weights);
            // No draw at all without randomisation: the same seed trains the same network.
            if config.randomise > 0.0 && rng.random_bool(config.randomise.min(1.0)) {
                randomise(&mut pixels[from..], crop_cells * CELL_PX, &mut rng);
            }
            crop_boxes(item, row0, col0, crop_cells, &mut box_targets, &mut box_mask);
        }
        let side = crop_cells * CELL_PX;
        let batch = config.batch_size;
        let input = Tensor::<B, 4>::from_data(TensorData::new(pixels, [batch, 3, side, side]), device);
        let target =
            Tensor::<B, 4, Int>::from_data(TensorData::new(targets, [batch, 1, crop_cells, crop_cells]), device);
        let weight = Tensor::<B, 4>::from_data(TensorData::new(weights, [batch, 1, crop_cells, crop_cells]), device);
        let taught = teacher.as_ref().map(|teacher| teacher.forward(input.clone().inner()));
        let (logits, boxes) = net.forward_with_boxes(input); // [batch, classes | 4, cells, cells]
        let log_probs = log_softmax(logits, 1);
        let picked = log_probs.clone().gather(1, target.clone()); // [batch, 1, cells, cells]
        let mut loss = picked.mul(weight.clone()).sum().neg().div(weight.sum().clamp_min(1.0));
        if let Some(taught) = taught {
            loss = loss.add(distillation(taught, log_probs, target).mul_scalar(config.distill));
        }
        if let Some(boxes) = boxes {
            let shape = [batch, BOX_OUTPUTS, crop_cells, crop_cells];
            let wanted = Tensor::<B, 4>::from_data(TensorData::new(box_targets, shape), device);
            let mask = Tensor::<B, 4>::from_data(TensorData::new(box_mask, [batch, 1, crop_cells, crop_cells]), device);
            let error = boxes.sub(wanted).abs().mul(mask.clone()).sum();
            let box_loss = error.div(mask.sum().mul_scalar(BOX_OUTPUTS as f32).clamp_min(1.0));
            loss = loss.add(box_loss.mul_scalar(config.box_weight));
        }
        let value: f32 = loss.clone().into_scalar().elem();
        losses.push(value);
        window.push(value);
        let gradients = GradientsParams::from_grads(loss.backward(), &net);
        net = optimizer.step(learning_rate(config, step), net, gradients);
        if (step + 1) % 20 == 0 || step + 1 == config.steps {
            let elapsed = since.elapsed().as_secs_f64().max(1e-9);
            progress(&Progress {
                step: step + 1,
                steps: config.steps,
                loss: window.iter().sum::<f32>() / window.len() as f32,
                images_per_s: (window.len() * batch) as f64 / elapsed,
            });
            window.clear();
            since = Instant::now();
        }
    }
    (net.valid(), losses)
}

/// Warm-up over the first 5% of steps, then cosine decay to 5% of the rate.
fn learning_rate(config: &TrainConfig, step: usize) -> f64 {
    let warmup = (config.steps / 20).max(1);
    if step < warmup {
        return config.learning_rate * (step + 1) as f64 / warmup as f64;
    }
    let t = (step - warmup) as f64 / (config.steps - warmup).max(1) as f64;
    config.learning_rate * (0.05 + 0.95 * 0.5 * (1.0 + (std::f64::consts::PI * t).cos()))
}

/// The network as it is now, copied to the CPU backend and packed as inference runs it:
/// scoring every training frame through the tensor path costs far more than the steps
/// between two minings where the backend is not optimised (a debug build), and the
/// packed path's scores equal it to rounding.
fn packed_copy<B: burn::tensor::backend::Backend>(net: &DefectNet<B>, architecture: &DefectNetConfig) -> PackedNet {
    let recorder = BinBytesRecorder::<FullPrecisionSettings>::default();
    let bytes = recorder.record(net.clone().into_record(), ()).expect("a network's record serialises");
    let device = Default::default();
    let record = recorder.load(bytes, &device).expect("a record just written loads");
    let shape = DefectNetConfig { box_head: net.has_box_head(), ..architecture.clone() };
    PackedNet::new(&shape.init::<CpuBackend>(&device).load_record(record))
}

/// Scores every training frame and returns the cells whose predicted class is wrong
/// (a defect where there is none, or the wrong defect), grazed cells left out.
fn mine_hard_cells(net: &PackedNet, prepared: &[Prepared<'_>]) -> Vec<(usize, usize, usize)> {
    let mut hard = Vec::new();
    for start in (0..prepared.len()).step_by(8) {
        let end = (start + 8).min(prepared.len());
        // One size per batch: frames of other sizes go alone.
        let (w, h) = (prepared[start].sample.width, prepared[start].sample.height);
        let end =
            (start..end).find(|&i| prepared[i].sample.width != w || prepared[i].sample.height != h).unwrap_or(end);
        let views: Vec<FrameView<'_>> = prepared[start..end]
            .iter()
            .map(|p| FrameView { width: p.sample.width, height: p.sample.height, pixels: &p.sample.pixels })
            .collect();
        for (offset, scores) in net.score(&views).iter().enumerate() {
            let item = &prepared[start + offset];
            for (i, (&predicted, &target)) in scores.argmax().iter().zip(&item.targets).enumerate() {
                if target != IGNORE && predicted != target && (predicted != 0 || target != 0) {
                    hard.push((start + offset, i / item.cols, i % item.cols));
                }
            }
        }
    }
    hard
}

fn crop_origin(
    item: &Prepared<'_>,
    crop_cells: usize,
    around: Option<(usize, usize)>,
    rng: &mut ChaCha8Rng,
) -> (usize, usize) {
    let rows_fit = (item.sample.height / CELL_PX).saturating_sub(crop_cells);
    let cols_fit = (item.sample.width / CELL_PX).saturating_sub(crop_cells);
    if let Some((r, c)) = around {
        // Anywhere that keeps the cell inside the crop, one cell from its edge.
        let row0 = r.saturating_sub(rng.random_range(1..crop_cells.saturating_sub(1).max(2))).min(rows_fit);
        let col0 = c.saturating_sub(rng.random_range(1..crop_cells.saturating_sub(1).max(2))).min(cols_fit);
        (row0, col0)
    } else {
        (rng.random_range(0..=rows_fit), rng.random_range(0..=cols_fit))
    }
}

#[allow(clippy::too_many_arguments)]
fn crop(
    item: &Prepared<'_>,
    row0: usize,
    col0: usize,
    crop_cells: usize,
    defect_weight: f32,
    pixels: &mut Vec<f32>,
    targets: &mut Vec<i64>,
    weights: &mut Vec<f32>,
) {
    let s = item.sample;
    let side = crop_cells * CELL_PX;
    let (y0, x0) = (row0 * CELL_PX, col0 * CELL_PX);
    for ch in 0..3 {
        let plane = &s.pixels[ch * s.width * s.height..(ch + 1) * s.width * s.height];
        for y in y0..y0 + side {
            for x in x0..x0 + side {
                let inside = y < s.height && x < s.width;
                pixels.push(if inside { f32::from(plane[y * s.width + x]) } else { 0.0 });
            }
        }
    }
    let rows = item.targets.len() / item.cols;
    for r in row0..row0 + crop_cells {
        for c in col0..col0 + crop_cells {
            let t = if r < rows && c < item.cols { item.targets[r * item.cols + c] } else { 0 };
            let (target, weight) = match t {
                IGNORE => (0, 0.0),
                0 => (0, 1.0),
                k => (i64::from(k), defect_weight),
            };
            targets.push(target);
            weights.push(weight);
        }
    }
}

/// The box targets of a crop in `[4, cells, cells]` planes, and a mask of the cells that
/// have one.
fn crop_boxes(
    item: &Prepared<'_>,
    row0: usize,
    col0: usize,
    crop_cells: usize,
    box_targets: &mut Vec<f32>,
    box_mask: &mut Vec<f32>,
) {
    let rows = item.targets.len() / item.cols;
    let at = |r: usize, c: usize| if r < rows && c < item.cols { item.boxes[r * item.cols + c] } else { None };
    for k in 0..BOX_OUTPUTS {
        for r in row0..row0 + crop_cells {
            for c in col0..col0 + crop_cells {
                box_targets.push(at(r, c).map_or(0.0, |b| b[k]));
            }
        }
    }
    for r in row0..row0 + crop_cells {
        for c in col0..col0 + crop_cells {
            box_mask.push(if at(r, c).is_some() { 1.0 } else { 0.0 });
        }
    }
}

/// Mean of the last 5% of the losses (at least one).
pub fn final_loss(losses: &[f32]) -> f32 {
    let n = (losses.len() / 20).max(1).min(losses.len());
    if n == 0 {
        return f32::NAN;
    }
    losses[losses.len() - n..].iter().sum::<f32>() / n as f32
}

/// Makes `Module` visible to callers that only import this module.
pub fn parameter_count<B: burn::tensor::backend::Backend>(net: &DefectNet<B>) -> usize {
    net.num_params()
}
