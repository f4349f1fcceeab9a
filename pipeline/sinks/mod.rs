//! Where defectflow's outputs go. Every sink kind has its folder: `audit/` (the Parquet
//! audit log), `evidence/` (the annotated images), `jsonl/` (work-orders.jsonl), `kafka/`
//! (the CMMS topics).

pub mod audit;
pub mod evidence;
pub mod jsonl;
pub mod kafka;

use defectflow_schemas::{StockMovement, WorkOrder, WorkOrderStatus};

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
                WorkOrderStatus::FalsePositive => earlier.closed.push(order),
                _ => earlier.open.push(order),
            }
        }
        earlier
    }
}

/// Test hook: `DEFECTFLOW_FAILPOINT=<name>[:<n>]` aborts the process the n-th time (default
/// the first) it reaches the named point, as a crash there would.
pub(crate) fn failpoint(name: &str) {
    static HITS: std::sync::Mutex<Option<std::collections::HashMap<String, u32>>> = std::sync::Mutex::new(None);
    let Ok(spec) = std::env::var("DEFECTFLOW_FAILPOINT") else { return };
    let (point, nth) = match spec.split_once(':') {
        Some((point, n)) => (point.to_owned(), n.parse().unwrap_or(1)),
        None => (spec, 1),
    };
    if point != name {
        return;
    }
    let Ok(mut hits) = HITS.lock() else { return };
    let count = hits.get_or_insert_with(std::collections::HashMap::new).entry(point).or_insert(0);
    *count += 1;
    if *count == nth {
        eprintln!("failpoint {name}: aborting");
        std::process::abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workflow::Emitted;

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
