//! Timely and differential dataflow operators: decode, infer, track, severity, derive, assign, inventory.
pub mod assign;
pub mod decode;
pub mod derive;
pub mod ids;
pub mod inventory;
pub mod ledger;
mod in_order;
pub mod severity;
pub mod track;
