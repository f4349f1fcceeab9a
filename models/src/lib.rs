//! Synthetic plant scenes and the defect model.
pub mod synth;
