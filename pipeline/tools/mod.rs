//! The tools beside the runtime: the end-to-end bench, the audit-log report, the
//! model's data, training and evaluation, harvesting the CMMS's answers as training data,
//! unseen-style footage and its evaluation, the
//! fuzz targets' bodies, the work-order scenarios and ONVIF camera discovery. The runtime never imports from
//! here; what the tools share is in [`stats`].

pub mod bench;
pub mod footage;
pub mod footage_eval;
pub mod fuzzing;
pub mod harvest;
pub mod modelling;
pub mod onset;
pub mod onvif;
pub mod progress;
pub mod quantize;
pub mod report;
pub mod scenario;
pub mod stats;
