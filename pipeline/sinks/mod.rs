//! Where defectflow's outputs go. Every sink kind has its folder: `audit/` (the Parquet
//! audit log).

pub mod audit;
