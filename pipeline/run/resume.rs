//! A restart takes up where the earlier run left off: the work orders it left open, so
//! the same defect seen again continues its work order, and the parts its completed
//! ones used.

use std::collections::{BTreeSet, HashSet};

use defectflow_schemas::{StockMovement, WorkOrder, WorkOrderStatus};

use crate::config::RunConfig;
use crate::reference::PlantReference;
use crate::sinks::Outputs;
use crate::workflow::PlantInputs;

/// Feeds `plant` what earlier runs left: the stock movements `replayed` from the input
/// topics and those of completed work orders, and the work orders of live cameras with
/// their tracks' latest measures. Cameras that replay footage (`start_ms`) rebuild
/// theirs by replaying it instead.
pub(super) fn take_up(
    plant: &mut PlantInputs,
    outputs: &mut Outputs,
    config: &RunConfig,
    reference: &PlantReference,
    replayed: &[StockMovement],
    metrics: &crate::metrics::Metrics,
) {
    let live: HashSet<&str> = config.cameras.iter().filter(|c| c.start_ms.is_none()).map(|c| c.id.as_str()).collect();
    let latest = outputs.take_latest_orders().into_iter().filter(|o| live.contains(o.camera_id.as_str())).collect();
    let earlier = EarlierOrders::from_latest(latest);
    if !earlier.open.is_empty() || !earlier.closed.is_empty() {
        tracing::info!(
            work_orders = earlier.open.len(),
            closed = earlier.closed.len(),
            parts_consumed = earlier.consumed.len(),
            "taking up the work orders an earlier run left open, and the parts its completed ones used"
        );
    }
    replayed.iter().chain(&earlier.consumed).for_each(|m| plant.movements.insert(m.clone()));
    // The open ones count on the live board again.
    let mut board = metrics.board.lock().unwrap_or_else(|p| p.into_inner());
    earlier.open.iter().for_each(|w| board.revise(w));
    drop(board);
    // Their tracks go on from their latest snapshots in the audit log (area, size,
    // growth), which the work orders do not carry.
    let tracks: BTreeSet<String> = earlier.open.iter().map(|w| w.track_id.clone()).collect();
    let since = earlier.open.iter().map(|w| w.detected_at_ms).min().unwrap_or_default();
    let measures = outputs.latest_track_measures(&tracks, since).unwrap_or_else(|error| {
        tracing::warn!(%error, "the audit log's tracks could not be read: the work orders are taken up without their tracks' latest measures");
        Default::default()
    });
    plant.restore(earlier.open.into_iter().chain(earlier.closed).collect(), &measures, reference);
}

/// What the work orders earlier runs delivered (their latest revisions, from the topic
/// or the file) leave to this run: the open ones, taken up again, and the parts the
/// completed ones consumed, taken out of the reference data's stock again.
#[derive(Debug, Default, PartialEq)]
pub struct EarlierOrders {
    pub open: Vec<WorkOrder>,
    /// Completed and false-positive work orders, known again (not taken up).
    pub closed: Vec<WorkOrder>,
    pub consumed: Vec<StockMovement>,
}

impl EarlierOrders {
    /// Sorts the latest revisions into the open and what completed ones consumed: every
    /// part line of a completed work order (a false positive consumes nothing), as the
    /// ledger takes them out when the CMMS completes it.
    pub fn from_latest(latest: Vec<WorkOrder>) -> EarlierOrders {
        let mut earlier = EarlierOrders::default();
        for order in latest {
            match order.status {
                WorkOrderStatus::Completed => {
                    earlier.consumed.extend(order.parts.iter().map(|part| StockMovement {
                        part_id: part.part_id.clone(),
                        delta: -i64::from(part.quantity),
                        at_ms: order.revised_at_ms,
                        reason: format!("consumed:{}", order.work_order_id),
                    }));
                    earlier.closed.push(order);
                }
                WorkOrderStatus::FalsePositive | WorkOrderStatus::Cancelled => earlier.closed.push(order),
                _ => earlier.open.push(order),
            }
        }
        earlier
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use defectflow_schemas::Emitted;

    /// The latest revision of each work order of a scenario's expected messages.
    fn latest(scenario: &str) -> Vec<WorkOrder> {
        let mut latest: std::collections::BTreeMap<String, WorkOrder> = Default::default();
        for line in scenario.lines() {
            if let Ok(Emitted::WorkOrder(w)) = serde_json::from_str::<Emitted>(line)
                && latest.get(&w.work_order_id).is_none_or(|known| known.revision < w.revision)
            {
                latest.insert(w.work_order_id.clone(), *w);
            }
        }
        latest.into_values().collect()
    }

    #[test]
    fn completed_work_orders_consumed_their_parts_and_open_ones_are_taken_up() {
        // A repair completed, then the defect came back: a new work order, open.
        let earlier =
            EarlierOrders::from_latest(latest(include_str!("../../tests/scenarios/repair_recurrence.expected.jsonl")));
        let open: Vec<(&str, WorkOrderStatus)> =
            earlier.open.iter().map(|w| (w.work_order_id.as_str(), w.status)).collect();
        assert_eq!(open, [("WO-d800b06d7abb1ff8", WorkOrderStatus::Open)]);
        assert_eq!(
            earlier.consumed,
            [StockMovement {
                part_id: "BOLT-M20-GR8".into(),
                delta: -1,
                at_ms: 1_767_600_120_000,
                reason: "consumed:WO-e27f05ae0f97331c".into(),
            }]
        );
        let closed: Vec<&str> = earlier.closed.iter().map(|w| w.work_order_id.as_str()).collect();
        assert_eq!(closed, ["WO-e27f05ae0f97331c"]);
        // A false positive is closed and used nothing.
        let earlier =
            EarlierOrders::from_latest(latest(include_str!("../../tests/scenarios/false_positive.expected.jsonl")));
        assert_eq!((earlier.open.len(), earlier.closed.len(), earlier.consumed.len()), (0, 1, 0));
        assert_eq!(earlier.closed[0].status, WorkOrderStatus::FalsePositive);
    }
}
