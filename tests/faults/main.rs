//! The fault suite. Each case starts the real pieces (an RTSP server on 127.0.0.1, the
//! Kafka-protocol broker, defectflow as a child process), injects a fault, and checks
//! what came out against the ground truth of generated footage: every defect ends as
//! exactly one work order, each of its revisions once, where the CMMS reads it (the topic
//! or the JSON lines) and in the Parquet audit log, and the process is healthy after.

#[path = "../support/mod.rs"]
mod support;

mod audit;
mod broker;
mod cameras;
mod checks;
mod crashes;
mod fuzz;
mod proxy;
mod reference;
mod security;
