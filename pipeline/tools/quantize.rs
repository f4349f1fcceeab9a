//! `defectflow quantize`: calibrates a model's int8 path on frames of its training data
//! and, given a held-out folder, evaluates both paths of the same weights on it
//! ([`calibrate_and_compare`]). The calibration goes into the model card ([`record`])
//! only where int8 stays within the tolerance of fp32 on every class.

use std::path::PathBuf;

use anyhow::Context;
use defectflow_models::card::{ModelCard, load_model};
use defectflow_models::data::YoloFolder;
use defectflow_models::detector::{CpuBackend, Detector, Precision};
use defectflow_models::inference::{FrameView, resize};
use defectflow_models::packed::PackedNet;
use defectflow_models::quantized::{Granularity, Int8Calibration, Int8Evaluation, calibrate, refine};

use super::modelling::{evaluate, folder_digest};

/// Options of `defectflow quantize`.
#[derive(Clone, Debug)]
pub struct QuantizeOptions {
    /// The model directory; its card gains the calibration.
    pub model: PathBuf,
    /// A YOLO folder of the training data, frames of which are measured.
    pub data: PathBuf,
    /// Frames measured, evenly spaced over the folder.
    pub frames: usize,
    /// Activation steps per layer or per channel.
    pub granularity: Granularity,
    /// Refine the steps by the network's scores ([`refine`]).
    pub refine: bool,
    /// A held-out YOLO folder, never trained on, both paths are evaluated on.
    pub holdout: Option<PathBuf>,
    /// Largest difference of a class's object precision, recall or F1 between the paths,
    /// in points, that still lets the calibration into the card.
    pub tolerance_points: f64,
}

/// Calibrates and, with a held-out folder, evaluates both paths; records nothing.
pub fn calibrate_and_compare(options: &QuantizeOptions) -> anyhow::Result<Int8Calibration> {
    let device = Default::default();
    let (net, card) = load_model::<CpuBackend>(&options.model, &device)
        .with_context(|| format!("model {}", options.model.display()))?;
    let folder = YoloFolder::open(&options.data)?;
    anyhow::ensure!(!folder.items.is_empty(), "--data {}: no images to calibrate on", options.data.display());
    anyhow::ensure!(options.frames > 0, "--frames must be at least 1");
    let count = options.frames.min(folder.items.len());
    let samples = (0..count).map(|i| folder.load(i * folder.items.len() / count)).collect::<Result<Vec<_>, _>>()?;
    // At the network's input size, as the detector reads frames.
    let (w, h) = (card.input_width, card.input_height);
    let pixels: Vec<Vec<u8>> = samples
        .iter()
        .map(|s| {
            let view = FrameView { width: s.width, height: s.height, pixels: &s.pixels };
            if (s.width, s.height) == (w, h) { s.pixels.clone() } else { resize(view, w, h) }
        })
        .collect();
    let views: Vec<FrameView<'_>> = pixels.iter().map(|p| FrameView { width: w, height: h, pixels: p }).collect();
    let packed = PackedNet::new(&net);
    let mut calibration = Int8Calibration {
        data: options.data.display().to_string(),
        data_digest: folder_digest(&folder)?,
        ..calibrate(&packed, &views, options.granularity)
    };
    if options.refine {
        let (refined, factors) = refine(&net, &packed, &views, calibration).map_err(anyhow::Error::msg)?;
        calibration = Int8Calibration { step_factors: factors, ..refined };
    }
    if let Some(holdout) = &options.holdout {
        let fp32 = Detector::new(net.clone(), card.clone(), device);
        let mut with_scales = card.clone();
        with_scales.int8 = Some(calibration.clone());
        let int8 = Detector::new(net.clone(), with_scales, device).with_precision(Precision::Int8)?;
        calibration.evaluation = Some(Int8Evaluation::new(evaluate(&fp32, holdout)?, evaluate(&int8, holdout)?));
    }
    Ok(calibration)
}

/// Writes `calibration` into the card of the model in `options.model`, where its
/// evaluation (if any) is within the tolerance; otherwise fails saying where it is not.
pub fn record(options: &QuantizeOptions, calibration: &Int8Calibration) -> anyhow::Result<()> {
    if let (Some(compared), Some(holdout)) = (&calibration.evaluation, &options.holdout) {
        anyhow::ensure!(
            compared.largest_gap_points <= options.tolerance_points,
            "int8 differs from fp32 by {:.2} points ({}) on {}, more than --tolerance {}: the card is left as it was",
            compared.largest_gap_points,
            compared.largest_gap_at,
            holdout.display(),
            options.tolerance_points
        );
    }
    let mut card = ModelCard::load(&options.model)?;
    card.int8 = Some(calibration.clone());
    card.save(&options.model)?;
    Ok(())
}
