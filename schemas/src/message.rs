//! One message of defectflow's output, as the sinks carry it: a work-order revision, an
//! assignment, an alert, a parts-staging notice or a dead letter.

use serde::{Deserialize, Serialize};

use crate::{Alert, Assignment, DeadLetter, PartsStaging, WorkOrder};

/// One output message, as written to JSON lines: the variant names are the keys
/// (`{"work_order": {…}}`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Emitted {
    WorkOrder(Box<WorkOrder>),
    Assignment(Assignment),
    Alert(Alert),
    PartsStaging(PartsStaging),
    DeadLetter(DeadLetter),
}
