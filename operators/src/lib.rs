//! Timely and differential dataflow operators: decode, infer, track, severity, derive, assign, inventory.
pub mod assign;
pub mod at_time;
pub mod change;
pub mod decode;
pub mod derive;
pub mod evidence;
pub mod fragments;
pub mod gating;
pub mod ids;
mod in_order;
pub mod infer;
pub mod inventory;
pub mod ledger;
pub mod notify;
pub mod severity;
mod swap;
pub mod thresholds;
pub mod track;
