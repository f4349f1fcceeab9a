//! defectflow: camera frames in, maintenance work orders out. This crate assembles the
//! pipeline: configuration, camera sources, the dataflow graph and synthetic footage.

pub mod bench;
pub mod cluster;
pub mod commission;
pub mod config;
pub mod footage;
pub mod footage_eval;
pub mod fuzzing;
pub mod graph;
pub mod memory;
pub mod metrics;
pub mod modelling;
pub mod reference;
pub mod report;
pub mod scenario;
pub mod sinks;
pub mod sources;
pub mod workflow;
