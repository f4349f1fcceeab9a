//! Timely and differential dataflow operators: decode, infer, track, severity, derive, assign, inventory.
pub mod decode;
