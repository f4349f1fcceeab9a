//! The `derive` operator: scored tracks and CMMS events in, work-order revisions out —
//! one work order per physical defect, revised as it grows, closed by the CMMS — with
//! assignments, alerts, parts staging and the rows of the workload and stock views.
//!
//! Work-order decisions are sequential (a technician given one job is busier for the
//! next), so the ledger runs on worker 0 in timestamp order; the volume is tracks that
//! changed, not frames. The views it feeds are differential and spread over all workers.

use defectflow_schemas::{
    Alert, Assignment, Camera, DeadLetter, InventoryItem, PartsStaging, Procedure, StockMovement, Technician, WoEvent,
    WorkOrder,
};
use differential_dataflow::{AsCollection, VecCollection};
use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::Concat;
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::operators::vec::Map;

use crate::assign::CentiHours;
use crate::in_order::InOrder;
pub use crate::ledger::{Ledger, LedgerInput, LedgerOutput, RestoredOrder, TrackMeasures, WorkOrderConfig};
use crate::severity::ScoredTrack;

const HOUR_MS: u64 = 3_600_000;

/// The reference data and events the ledger reads besides scored tracks.
#[allow(missing_debug_implementations)]
pub struct LedgerInputs<'scope> {
    /// CMMS status events (`defectflow.wo-events`), at their event time.
    pub events: StreamVec<'scope, u64, WoEvent>,
    pub technicians: VecCollection<'scope, u64, Technician>,
    pub procedures: VecCollection<'scope, u64, Procedure>,
    /// Cameras and their ROIs: regions of an asset that cameras share.
    pub cameras: VecCollection<'scope, u64, Camera>,
    /// Parts and their reorder points.
    pub inventory: VecCollection<'scope, u64, InventoryItem>,
    /// Stock received, counted or consumed elsewhere.
    pub movements: VecCollection<'scope, u64, StockMovement>,
    /// Open work orders of an earlier run, taken up at start.
    pub restored: StreamVec<'scope, u64, RestoredOrder>,
}

/// Everything `derive` produces, as streams and collections.
#[derive(Debug)]
pub struct WorkOrderStreams<'scope> {
    pub outputs: StreamVec<'scope, u64, LedgerOutput>,
}

impl<'scope> WorkOrderStreams<'scope> {
    /// Work-order revisions, for `defectflow.work-orders`.
    pub fn revisions(&self) -> StreamVec<'scope, u64, WorkOrder> {
        self.outputs.clone().flat_map(|o| if let LedgerOutput::Revision(w) = o { Some(*w) } else { None })
    }

    pub fn assignments(&self) -> StreamVec<'scope, u64, Assignment> {
        self.outputs.clone().flat_map(|o| if let LedgerOutput::Assignment(a) = o { Some(a) } else { None })
    }

    pub fn alerts(&self) -> StreamVec<'scope, u64, Alert> {
        self.outputs.clone().flat_map(|o| if let LedgerOutput::Alert(a) = o { Some(a) } else { None })
    }

    pub fn staging(&self) -> StreamVec<'scope, u64, PartsStaging> {
        self.outputs.clone().flat_map(|o| if let LedgerOutput::Staging(s) = o { Some(s) } else { None })
    }

    pub fn dead_letters(&self) -> StreamVec<'scope, u64, DeadLetter> {
        self.outputs.clone().flat_map(|o| if let LedgerOutput::DeadLetter(d) = o { Some(d) } else { None })
    }

    /// Open assignments `(technician, work order, hours)`: input of the workload view.
    pub fn open_assignments(&self) -> VecCollection<'scope, u64, (String, String, CentiHours)> {
        self.outputs
            .clone()
            .unary(timely::dataflow::channels::pact::Pipeline, "OpenAssignments", |_, _| {
                |input, output| {
                    input.for_each(|time, data| {
                        let Some(&at) = time.least() else { return };
                        let mut session = output.session(&time);
                        for item in data.drain(..) {
                            if let LedgerOutput::Workload(tech, order, hours, diff) = item {
                                session.give(((tech, order, hours), at, diff));
                            }
                        }
                    });
                }
            })
            .as_collection()
    }

    /// Open reservations `(part, work order, quantity)`: input of the stock view.
    pub fn reservations(&self) -> VecCollection<'scope, u64, (String, String, i64)> {
        self.outputs
            .clone()
            .unary(timely::dataflow::channels::pact::Pipeline, "Reservations", |_, _| {
                |input, output| {
                    input.for_each(|time, data| {
                        let Some(&at) = time.least() else { return };
                        let mut session = output.session(&time);
                        for item in data.drain(..) {
                            if let LedgerOutput::Reservation(part, order, quantity, diff) = item {
                                session.give(((part, order, quantity), at, diff));
                            }
                        }
                    });
                }
            })
            .as_collection()
    }

    /// Parts consumed by completed work orders, as stock movements.
    pub fn consumed(&self) -> StreamVec<'scope, u64, StockMovement> {
        self.outputs.clone().flat_map(|o| if let LedgerOutput::Consumed(m) = o { Some(m) } else { None })
    }
}

/// Extension trait: `scored.work_orders(inputs, config)`.
pub trait Derive<'scope> {
    /// Opens a work order for each confirmed track whose score reaches
    /// `open_score`, with an id derived from asset, class and track, and revises it
    /// when its priority, severity band (tens of points), size (by `size_step`),
    /// technician, procedure or parts availability change. CMMS events move its status;
    /// `completed` and `false_positive` close it, and a false positive suppresses the
    /// track. A defect still seen `recheck_after_ms` after a completed repair, or seen
    /// again as a new track, opens a new work order that `reopens` the completed one.
    ///
    /// Shift changes are checked on every hour boundary the input frontier passes.
    /// See `operators/tests/derive.rs` for worked examples with exact outputs.
    fn work_orders(self, inputs: LedgerInputs<'scope>, config: WorkOrderConfig) -> WorkOrderStreams<'scope>;
}

impl<'scope> Derive<'scope> for VecCollection<'scope, u64, ScoredTrack> {
    fn work_orders(self, inputs: LedgerInputs<'scope>, config: WorkOrderConfig) -> WorkOrderStreams<'scope> {
        let timed = |stream: StreamVec<'scope, u64, (LedgerInput, u64)>| stream;
        let tracks = timed(self.inner.flat_map(|(scored, time, diff)| {
            // Only the latest snapshot matters: retractions of older ones are implied.
            (diff > 0).then_some((LedgerInput::Track(Box::new(scored)), time))
        }));
        let events = inputs.events.map(|event| {
            let at = event.at_ms;
            (LedgerInput::Event(event), at)
        });
        let technicians = inputs.technicians.inner.map(|(t, time, diff)| (LedgerInput::Technician(t, diff), time));
        let procedures = inputs.procedures.inner.map(|(p, time, diff)| (LedgerInput::Procedure(p, diff), time));
        let cameras = inputs.cameras.inner.map(|(c, time, diff)| (LedgerInput::Camera(c, diff), time));
        let inventory = inputs.inventory.inner.map(|(i, time, diff)| (LedgerInput::Item(i, diff), time));
        let movements = inputs.movements.inner.map(|(m, time, diff)| (LedgerInput::Movement(m, diff), time));
        let restored = timed(inputs.restored.map(|r| (LedgerInput::Restore(Box::new(r)), 0)));
        let all = tracks
            .concat(restored)
            .concat(events)
            .concat(technicians)
            .concat(procedures)
            .concat(cameras)
            .concat(inventory)
            .concat(movements);
        let outputs = all.unary_frontier(Exchange::new(|_: &(LedgerInput, u64)| 0), "Derive", move |capability, _| {
            let mut in_order = InOrder::new(capability);
            let mut ledger = Ledger::new(config);
            let mut last_time: Option<u64> = None;
            move |(input, frontier), output| {
                input.for_each(|time, data| {
                    let Some(&message_time) = time.least() else { return };
                    for (item, at) in data.drain(..) {
                        // Event times of CMMS messages may lag the stream; never go back.
                        in_order.stash(at.max(message_time), [item]);
                    }
                });
                // Hour boundaries the frontier passed with no input: shift changes.
                let earliest = in_order.earliest();
                let lower = InOrder::<LedgerInput>::lower(frontier);
                if let (Some(last), Some(lower), Some(earliest)) = (last_time, lower, earliest) {
                    let mut boundary = (last.max(earliest.saturating_sub(1)) / HOUR_MS + 1) * HOUR_MS;
                    let mut ticks = 0;
                    while boundary < lower && ticks < 48 {
                        in_order.stash(boundary, []);
                        boundary += HOUR_MS;
                        ticks += 1;
                    }
                    // An escalation due before the frontier, at its own time.
                    if let Some(due) = ledger.next_escalation().filter(|due| *due > last && *due < lower) {
                        in_order.stash(due.max(earliest), []);
                    }
                }
                let mut ready = in_order.ready(frontier).into_iter().peekable();
                while let Some((mut capability, batch)) = ready.next() {
                    let time = *capability.time();
                    last_time = Some(time);
                    let decisions = ledger.step(time, batch);
                    output.session(&capability).give_iterator(decisions.into_iter());
                    // Escalations that fall due before the next batch (and the frontier)
                    // are stepped at their own times: whatever the batching, the same.
                    let next = ready.peek().map(|(c, _)| *c.time()).or(lower);
                    while let Some(due) = ledger.next_escalation().filter(|due| next.is_some_and(|n| *due < n)) {
                        capability = capability.delayed(&due);
                        last_time = Some(due);
                        let decisions = ledger.step(due, Vec::new());
                        output.session(&capability).give_iterator(decisions.into_iter());
                    }
                }
            }
        });
        WorkOrderStreams { outputs }
    }
}
