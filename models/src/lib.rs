//! Synthetic plant scenes and the defect model: network, data, training, inference,
//! evaluation and the model card.
pub mod annotate;
pub mod baseline;
pub mod card;
pub mod change;
pub mod data;
pub mod detector;
mod distillation;
pub mod gate;
pub mod inference;
pub mod metrics;
pub mod model;
pub mod packed;
pub mod plot;
pub mod promotion;
pub mod quantized;
pub mod randomise;
pub mod synth;
pub mod training;
