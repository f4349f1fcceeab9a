//! A loaded model ready for frames: the network, its card and where it runs.

use std::path::Path;

use burn::tensor::backend::Backend;

use crate::card::{ModelCard, ModelError, load_model};
use crate::inference::{CellScores, Found, FrameView, group_cells, resize, score_batch};
use crate::model::DefectNet;
use crate::packed::PackedNet;

/// The CPU backend defectflow runs on by default.
pub type CpuBackend = burn::backend::Flex;
/// The GPU backend, with the `cuda` feature.
#[cfg(feature = "cuda")]
pub type GpuBackend = burn::backend::Cuda;

/// Finds defects in frames with a trained model.
#[derive(Debug)]
pub struct Detector<B: Backend> {
    net: DefectNet<B>,
    /// On the CPU backend, the network packed for inference ([`PackedNet`]).
    packed: Option<PackedNet>,
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
        let packed = on_cpu.then(|| PackedNet::new(&net));
        Detector { net, packed, card, device, min_confidence }
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
        let (w, h) = (self.card.input_width, self.card.input_height);
        if frames.iter().all(|f| f.width == w && f.height == h) {
            return self.score_at_input_size(frames);
        }
        let resized: Vec<Vec<u8>> = frames
            .iter()
            .map(|f| if f.width == w && f.height == h { f.pixels.to_vec() } else { resize(*f, w, h) })
            .collect();
        let views: Vec<FrameView<'_>> =
            resized.iter().map(|pixels| FrameView { width: w, height: h, pixels }).collect();
        self.score_at_input_size(&views)
    }

    fn score_at_input_size(&self, frames: &[FrameView<'_>]) -> Vec<CellScores> {
        match &self.packed {
            Some(packed) => packed.score(frames),
            None => score_batch(&self.net, frames, &self.device),
        }
    }

    /// Defects in each frame, in that frame's pixels.
    pub fn detect(&self, frames: &[FrameView<'_>]) -> Vec<Vec<Found>> {
        let scores = self.score(frames);
        scores.iter().zip(frames).map(|(scores, frame)| self.found_in(scores, frame)).collect()
    }

    /// Defects in one frame from its cell probabilities (as [`Detector::score`] gave them).
    pub fn found_in(&self, scores: &CellScores, frame: &FrameView<'_>) -> Vec<Found> {
        let (w, h) = (self.card.input_width as f32, self.card.input_height as f32);
        let (fw, fh) = (frame.width as f32, frame.height as f32);
        group_cells(scores, self.min_confidence, (fw / w, fh / h), (fw, fh))
    }
}
