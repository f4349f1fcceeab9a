//! A loaded model ready for frames: the network, its card and where it runs.

use std::path::Path;

use burn::tensor::backend::Backend;

use crate::baseline::{BaselineConfig, BaselineError, CameraBaseline};
use crate::card::{ModelCard, ModelError, load_model};
use crate::gate::{GatedFrame, Persistence, gate};
use crate::inference::{CellScores, Found, FrameView, group_cells, resize, score_batch, score_batch_with_appearance};
use crate::model::DefectNet;
use crate::packed::PackedNet;
use crate::quantized::{Int8Kernel, QuantNet};

/// The CPU backend defectflow runs on by default.
pub type CpuBackend = burn::backend::Flex;
/// The GPU backend, with the `cuda` feature.
#[cfg(feature = "cuda")]
pub type GpuBackend = burn::backend::Cuda;

/// The arithmetic the network runs in on the CPU (`[model] precision`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// 32-bit floats, as the network was trained ([`PackedNet`]).
    #[default]
    Fp32,
    /// 8-bit integers with the card's calibration ([`QuantNet`]).
    Int8,
}

/// The network laid out for the CPU backend, in one precision.
#[derive(Debug)]
enum CpuNet {
    Fp32(PackedNet),
    Int8(QuantNet),
}

/// Finds defects in frames with a trained model.
#[derive(Debug)]
pub struct Detector<B: Backend> {
    net: DefectNet<B>,
    /// On the CPU backend, the network laid out for inference.
    packed: Option<CpuNet>,
    card: ModelCard,
    device: B::Device,
    /// Lowest cell probability that counts as a defect; from the card unless overridden.
    pub min_confidence: f32,
}

impl<B: Backend> Detector<B> {
    /// Loads the model in `dir` (`model.json` + weights).
    pub fn load(dir: &Path, device: B::Device) -> Result<Detector<B>, ModelError> {
        let (net, card) = load_model::<B>(dir, &device)?;
        Ok(Detector::new(net, card, device))
    }

    pub fn new(net: DefectNet<B>, card: ModelCard, device: B::Device) -> Detector<B> {
        let min_confidence = card.min_confidence;
        let on_cpu = std::any::TypeId::of::<B>() == std::any::TypeId::of::<CpuBackend>();
        let packed = on_cpu.then(|| CpuNet::Fp32(PackedNet::new(&net)));
        Detector { net, packed, card, device, min_confidence }
    }

    /// The detector running in `precision` on the CPU. Int8 needs the card's
    /// calibration (`defectflow quantize`); fails naming what is missing. Another
    /// backend than the CPU runs fp32 whatever is asked.
    pub fn with_precision(mut self, precision: Precision) -> Result<Detector<B>, ModelError> {
        if precision == Precision::Int8 && self.packed.is_some() {
            let calibration = self.card.int8.as_ref().ok_or_else(|| ModelError::Precision {
                reason: format!(
                    "model {} has no int8 calibration (`int8` in model.json): run `defectflow quantize --model DIR --data TRAINING_DIR`",
                    self.card.version
                ),
            })?;
            let net = QuantNet::new(&self.net, calibration).map_err(|reason| ModelError::Precision { reason })?;
            self.packed = Some(CpuNet::Int8(net));
        } else if precision == Precision::Fp32 && matches!(self.packed, Some(CpuNet::Int8(_))) {
            self.packed = Some(CpuNet::Fp32(PackedNet::new(&self.net)));
        }
        Ok(self)
    }

    /// The precision frames are scored in, and on int8 the kernel.
    pub fn precision(&self) -> (Precision, Option<Int8Kernel>) {
        match &self.packed {
            Some(CpuNet::Int8(net)) => (Precision::Int8, Some(net.kernel())),
            _ => (Precision::Fp32, None),
        }
    }

    pub fn card(&self) -> &ModelCard {
        &self.card
    }

    /// The model version detections carry.
    pub fn version(&self) -> &str {
        &self.card.version
    }

    /// Cell probabilities for frames, each read at the card's input size.
    pub fn score(&self, frames: &[FrameView<'_>]) -> Vec<CellScores> {
        self.score_resized(frames, false)
    }

    /// As [`Detector::score`], each frame's scores with its cells' appearance (what a
    /// camera's baseline is learnt over and checked against).
    pub fn score_with_appearance(&self, frames: &[FrameView<'_>]) -> Vec<CellScores> {
        self.score_resized(frames, true)
    }

    fn score_resized(&self, frames: &[FrameView<'_>], appearance: bool) -> Vec<CellScores> {
        let (w, h) = (self.card.input_width, self.card.input_height);
        if frames.iter().all(|f| f.width == w && f.height == h) {
            return self.score_at_input_size(frames, appearance);
        }
        let resized: Vec<Vec<u8>> = frames
            .iter()
            .map(|f| if f.width == w && f.height == h { f.pixels.to_vec() } else { resize(*f, w, h) })
            .collect();
        let views: Vec<FrameView<'_>> =
            resized.iter().map(|pixels| FrameView { width: w, height: h, pixels }).collect();
        self.score_at_input_size(&views, appearance)
    }

    fn score_at_input_size(&self, frames: &[FrameView<'_>], appearance: bool) -> Vec<CellScores> {
        match (&self.packed, appearance) {
            (Some(CpuNet::Fp32(packed)), false) => packed.score(frames),
            (Some(CpuNet::Fp32(packed)), true) => packed.score_with_appearance(frames),
            (Some(CpuNet::Int8(net)), false) => net.score(frames),
            (Some(CpuNet::Int8(net)), true) => net.score_with_appearance(frames),
            (None, false) => score_batch(&self.net, frames, &self.device),
            (None, true) => score_batch_with_appearance(&self.net, frames, &self.device),
        }
    }

    /// Defects in each frame, in that frame's pixels.
    pub fn detect(&self, frames: &[FrameView<'_>]) -> Vec<Vec<Found>> {
        let scores = self.score(frames);
        scores.iter().zip(frames).map(|(scores, frame)| self.found_in(scores, frame)).collect()
    }

    /// Defects in one frame from its cell probabilities (as [`Detector::score`] gave them).
    pub fn found_in(&self, scores: &CellScores, frame: &FrameView<'_>) -> Vec<Found> {
        let (scale, size) = self.frame_scale(frame);
        group_cells(scores, self.min_confidence, scale, size)
    }

    /// Defects in one frame of a commissioned camera (scores with appearance): see
    /// [`crate::gate`].
    pub fn found_gated(
        &self,
        scores: &CellScores,
        frame: &FrameView<'_>,
        baseline: &CameraBaseline,
        config: &BaselineConfig,
        (persistence, capture_ms): (&mut Persistence, u64),
    ) -> Result<GatedFrame, BaselineError> {
        let geometry = self.frame_scale(frame);
        gate(scores, baseline, config, self.min_confidence, config.unknown, geometry, persistence, capture_ms)
    }

    /// How network pixels map to `frame`'s pixels, and the frame's size.
    fn frame_scale(&self, frame: &FrameView<'_>) -> ((f32, f32), (f32, f32)) {
        let (w, h) = (self.card.input_width as f32, self.card.input_height as f32);
        let (fw, fh) = (frame.width as f32, frame.height as f32);
        ((fw / w, fh / h), (fw, fh))
    }
}
