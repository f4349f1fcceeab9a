//! Where defectflow's outputs go. Every sink kind has its folder: `audit/` (the Parquet
//! audit log), `kafka/` (the CMMS topics).

pub mod audit;
pub mod kafka;
