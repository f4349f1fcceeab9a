//! The model card: what a set of weights is, how it was made and how well it does,
//! saved as `model.json` beside `weights.bin`.

use std::fs;
use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::record::{BinBytesRecorder, FullPrecisionSettings, Recorder};
use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::metrics::EvalReport;
use crate::model::{CELL_PX, DefectNet, DefectNetConfig, DefectNetRecord};

/// File names inside a model directory.
pub const CARD_FILE: &str = "model.json";
pub const WEIGHTS_FILE: &str = "weights.bin";

/// Why a model directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{path}: {source} (train one with `defectflow train --data DIR --out DIR`)")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: not a model card: {source}")]
    Card { path: PathBuf, source: serde_json::Error },
    #[error("{path}: SHA-256 is {actual}, the model card says {expected}: weights and card do not belong together")]
    Digest { path: PathBuf, expected: String, actual: String },
    #[error("{path}: weights do not fit the card's architecture: {reason}")]
    Weights { path: PathBuf, reason: String },
    #[error("{reason}")]
    Precision { reason: String },
}

/// How the weights were trained.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainingRecord {
    /// The command that produced these weights.
    pub command: String,
    /// SHA-256 over the training folder's images and labels (sorted by path).
    pub data_digest: String,
    pub images: usize,
    pub boxes: usize,
    pub seed: u64,
    pub steps: usize,
    pub batch_size: usize,
    pub crop_px: usize,
    pub learning_rate: f64,
    /// Share of crops domain-randomised (`train --randomise`); absent: none.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub randomise: f64,
    /// Mean loss over the last 5% of the steps; NaN (written as null) for a model
    /// never trained.
    #[serde(deserialize_with = "loss_or_nan")]
    pub final_loss: f32,
    pub seconds: f64,
    /// When training went on from an earlier model (`train --init`): that model's version
    /// and its own training record, so the whole chain can be reproduced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub continued_from: Option<Box<EarlierModel>>,
}

/// A loss written as null (NaN, which JSON cannot hold) reads back as NaN.
fn loss_or_nan<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<f32, D::Error> {
    Ok(Option::<f32>::deserialize(deserializer)?.unwrap_or(f32::NAN))
}

fn is_zero(share: &f64) -> bool {
    *share == 0.0
}

/// The model a training run started from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EarlierModel {
    pub version: String,
    pub training: TrainingRecord,
}

/// Everything needed to use and trust a set of weights.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelCard {
    pub name: String,
    /// The first 12 hex digits of the weights' SHA-256: the model version on detections.
    pub version: String,
    /// Output index → class name; index 0 is `background`.
    pub classes: Vec<String>,
    /// Frame size the network was trained at; frames of another size are resized to it.
    pub input_width: usize,
    pub input_height: usize,
    pub cell_px: usize,
    pub architecture: DefectNetConfig,
    /// Lowest class probability for a cell to count as a defect.
    pub min_confidence: f32,
    pub training: TrainingRecord,
    /// Evaluation on held-out data, when it has been run.
    pub evaluation: Option<EvalReport>,
    /// The evaluation gate this model went through against the model it would replace
    /// (`defectflow promote`), when it has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promotion: Option<crate::promotion::Promotion>,
    /// The int8 path's activation scales (`defectflow quantize`), when calibrated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub int8: Option<crate::quantized::Int8Calibration>,
    pub weights_file: String,
    pub weights_sha256: String,
}

impl ModelCard {
    pub fn classes_for_output() -> Vec<String> {
        std::iter::once("background".to_owned())
            .chain(defectflow_schemas::DefectClass::ALL.iter().map(|c| c.as_str().to_owned()))
            .collect()
    }

    /// A card for a network that has not been trained (tests, benchmarks).
    pub fn untrained(architecture: DefectNetConfig, input_width: usize, input_height: usize) -> ModelCard {
        ModelCard {
            name: "untrained".into(),
            version: "untrained".into(),
            classes: ModelCard::classes_for_output(),
            input_width,
            input_height,
            cell_px: CELL_PX,
            architecture,
            min_confidence: DEFAULT_MIN_CONFIDENCE,
            training: TrainingRecord {
                command: String::new(),
                data_digest: String::new(),
                images: 0,
                boxes: 0,
                seed: 0,
                steps: 0,
                batch_size: 0,
                crop_px: 0,
                learning_rate: 0.0,
                randomise: 0.0,
                final_loss: f32::NAN,
                seconds: 0.0,
                continued_from: None,
            },
            evaluation: None,
            promotion: None,
            int8: None,
            weights_file: String::new(),
            weights_sha256: String::new(),
        }
    }

    /// Reads the card of the model in `dir`.
    pub fn load(dir: &Path) -> Result<ModelCard, ModelError> {
        let path = dir.join(CARD_FILE);
        let text = fs::read(&path).map_err(|source| ModelError::Io { path: path.clone(), source })?;
        let mut value: serde_json::Value =
            serde_json::from_slice(&text).map_err(|source| ModelError::Card { path: path.clone(), source })?;
        // Cards written before the box head existed describe networks without one.
        if let Some(architecture) = value.get_mut("architecture").and_then(|a| a.as_object_mut()) {
            architecture.entry("box_head").or_insert(serde_json::Value::Bool(false));
        }
        serde_json::from_value(value).map_err(|source| ModelError::Card { path, source })
    }

    /// Writes the card into `dir` (pretty JSON, for people to read).
    pub fn save(&self, dir: &Path) -> Result<(), ModelError> {
        let path = dir.join(CARD_FILE);
        let text = serde_json::to_vec_pretty(self).map_err(|source| ModelError::Card { path: path.clone(), source })?;
        fs::write(&path, [text, b"\n".to_vec()].concat()).map_err(|source| ModelError::Io { path, source })
    }
}

/// Serialises the network's weights (full precision) and returns them with their SHA-256.
pub fn weights_bytes<B: Backend>(net: &DefectNet<B>) -> Result<(Vec<u8>, String), ModelError> {
    let recorder = BinBytesRecorder::<FullPrecisionSettings>::default();
    let bytes = recorder
        .record(net.clone().into_record(), ())
        .map_err(|e| ModelError::Weights { path: PathBuf::from(WEIGHTS_FILE), reason: e.to_string() })?;
    let digest = hex(&Sha256::digest(&bytes));
    Ok((bytes, digest))
}

/// Writes weights and card into `dir`; fills in the card's digest, version and file name.
pub fn save_model<B: Backend>(net: &DefectNet<B>, card: &mut ModelCard, dir: &Path) -> Result<(), ModelError> {
    fs::create_dir_all(dir).map_err(|source| ModelError::Io { path: dir.to_owned(), source })?;
    let (bytes, digest) = weights_bytes(net)?;
    let path = dir.join(WEIGHTS_FILE);
    fs::write(&path, &bytes).map_err(|source| ModelError::Io { path, source })?;
    card.version = digest[..12].to_owned();
    card.weights_sha256 = digest;
    card.weights_file = WEIGHTS_FILE.to_owned();
    card.cell_px = CELL_PX;
    card.save(dir)
}

/// Loads the network of the model in `dir`, checking the weights against the card.
pub fn load_model<B: Backend>(dir: &Path, device: &B::Device) -> Result<(DefectNet<B>, ModelCard), ModelError> {
    let card = ModelCard::load(dir)?;
    let path = dir.join(&card.weights_file);
    let bytes = fs::read(&path).map_err(|source| ModelError::Io { path: path.clone(), source })?;
    let actual = hex(&Sha256::digest(&bytes));
    if actual != card.weights_sha256 {
        return Err(ModelError::Digest { path, expected: card.weights_sha256.clone(), actual });
    }
    let recorder = BinBytesRecorder::<FullPrecisionSettings>::default();
    let mut bytes = bytes;
    if !card.architecture.box_head {
        // Weights saved before the network had its optional box head end where the
        // head's "none" marker (one zero byte) now goes; a trailing byte after a
        // complete record is ignored.
        bytes.push(0);
    }
    let record: DefectNetRecord<B> =
        recorder.load(bytes, device).map_err(|e| ModelError::Weights { path: path.clone(), reason: e.to_string() })?;
    let net = card.architecture.init::<B>(device).load_record(record);
    Ok((net, card))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 over files (each path relative to `root`, then its bytes), in the given order.
pub fn digest_files(root: &Path, files: &[&Path]) -> Result<String, ModelError> {
    let mut hasher = Sha256::new();
    for file in files {
        let relative = file.strip_prefix(root).unwrap_or(file);
        hasher.update(relative.to_string_lossy().as_bytes());
        hasher.update([0]);
        let bytes = fs::read(file).map_err(|source| ModelError::Io { path: file.to_path_buf(), source })?;
        hasher.update((bytes.len() as u64).to_le_bytes());
        hasher.update(&bytes);
    }
    Ok(hex(&hasher.finalize()))
}

/// The card's default minimum confidence for a new model.
pub const DEFAULT_MIN_CONFIDENCE: f32 = 0.5;

impl DefectNetConfig {
    /// The card's architecture must be the code's: a saved model fails early otherwise.
    pub fn describe(&self) -> String {
        format!(
            "cells of {CELL_PX} px; channels {}/{}/{}; dilations {} and {}; {} outputs",
            self.stem_channels,
            self.mid_channels,
            self.cell_channels,
            self.context_dilation,
            self.wide_dilation,
            self.classes
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_card_of_an_untrained_model_reads_back_with_its_loss_unknown() {
        let card = ModelCard::untrained(DefectNetConfig::new(), 640, 360);
        let json = serde_json::to_string(&card).expect("json");
        assert!(json.contains("\"final_loss\":null"), "{json}");
        let back: ModelCard = serde_json::from_str(&json).expect("reads back");
        assert!(back.training.final_loss.is_nan());
        assert_eq!(back.version, card.version);
    }
}
