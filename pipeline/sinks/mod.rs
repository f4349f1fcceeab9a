//! Where defectflow's outputs go. Every sink kind has its folder: `audit/` (the Parquet
//! audit log), `evidence/` (the annotated images), `kafka/` (the CMMS topics).

pub mod audit;
pub mod evidence;
pub mod kafka;
