//! defectflow: camera frames in, maintenance work orders out. This crate assembles the
//! pipeline: configuration, camera sources, the dataflow graph and synthetic footage.

pub mod board;
pub mod bridge;
pub mod clock;
pub mod cluster;
pub mod commission;
pub mod config;
pub mod kafka;
#[cfg(test)]
mod layering;
pub mod memory;
pub mod metrics;
pub mod notify;
pub mod reference;
pub mod run;
pub mod sinks;
pub mod sources;
pub mod tools;
pub mod workflow;
