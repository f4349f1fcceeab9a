//! defectflow: camera frames to maintenance work orders.
