//! The work-order half of the dataflow: observations → tracks → severity → work
//! orders, assignments and stock, with the workload and stock views; and its inputs.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use defectflow_operators::assign::Workload;
use defectflow_operators::derive::{Derive, LedgerInputs, LedgerOutput, RestoredOrder, TrackMeasures, WorkOrderConfig};
use defectflow_operators::inventory::{StockLevels, StockMeasure};
use defectflow_operators::notify::Routing;
use defectflow_operators::severity::{Score, SeverityConfig};
use defectflow_operators::track::{Track, TrackConfig};
use defectflow_schemas::{
    Asset, Camera, DeadLetter, Emitted, FailureRecord, FrameObservation, InventoryItem, Procedure, StockMovement,
    Technician, WoEvent,
};
use differential_dataflow::input::{Input, InputSession};
use serde::{Deserialize, Serialize};
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::operators::vec::Input as TimelyInput;
use timely::dataflow::operators::vec::Map;
use timely::dataflow::operators::{Inspect, Probe};
use timely::dataflow::{InputHandleVec as InputHandle, ProbeHandle, Scope};

use crate::reference::PlantReference;
use crate::sinks::AuditRow;

/// Settings of the work-order stages: `[track]`, `[severity]` and `[work_orders]`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkflowConfig {
    #[serde(default)]
    pub track: TrackConfig,
    #[serde(default)]
    pub severity: SeverityConfig,
    #[serde(default)]
    pub work_orders: WorkOrderConfig,
    /// `[notify]`: alert rules and escalation; absent: one unrouted alert per P1.
    #[serde(default)]
    pub notify: Option<Routing>,
}

/// The inputs of the work-order dataflow on one worker, when observations are fed by hand
/// (scenarios); `defectflow run` feeds them from the model instead.
#[allow(missing_debug_implementations)]
pub struct WorkflowInputs {
    pub observations: InputHandle<u64, FrameObservation>,
    pub plant: PlantInputs,
}

impl WorkflowInputs {
    /// Inserts the plant's reference data (see [`PlantInputs::load`]).
    pub fn load(&mut self, reference: &PlantReference, at_ms: u64) {
        self.plant.load(reference, at_ms);
    }

    pub fn time(&self) -> u64 {
        *self.observations.time()
    }

    pub fn advance_to(&mut self, time: u64) {
        self.observations.advance_to(time);
        self.plant.advance_to(time);
    }
}

/// The plant's side of the inputs: CMMS events, reference data and stock movements.
#[allow(missing_debug_implementations)]
pub struct PlantInputs {
    pub events: InputHandle<u64, WoEvent>,
    pub assets: InputSession<u64, Asset, isize>,
    pub cameras: InputSession<u64, Camera, isize>,
    pub failures: InputSession<u64, FailureRecord, isize>,
    pub procedures: InputSession<u64, Procedure, isize>,
    pub technicians: InputSession<u64, Technician, isize>,
    pub inventory: InputSession<u64, InventoryItem, isize>,
    pub movements: InputSession<u64, StockMovement, isize>,
    /// Open work orders of an earlier run, taken up at start.
    pub restored: InputHandle<u64, RestoredOrder>,
    /// Input messages that could not be used, from whichever worker read them.
    pub dead_letters: InputHandle<u64, DeadLetter>,
}

impl PlantInputs {
    /// Inserts the plant's reference data: initial stock becomes a movement per part.
    pub fn load(&mut self, reference: &PlantReference, at_ms: u64) {
        reference.assets.iter().for_each(|r| self.assets.insert(r.clone()));
        reference.cameras.iter().for_each(|r| self.cameras.insert(r.clone()));
        reference.failures.iter().for_each(|r| self.failures.insert(r.clone()));
        reference.procedures.iter().for_each(|r| self.procedures.insert(r.clone()));
        reference.technicians.iter().for_each(|r| self.technicians.insert(r.clone()));
        for item in &reference.inventory {
            self.inventory.insert(item.clone());
            self.movements.insert(StockMovement {
                part_id: item.part_id.clone(),
                delta: item.on_hand,
                at_ms,
                reason: "initial".into(),
            });
        }
    }

    /// Takes up the work orders an earlier run published (their latest revisions): the
    /// open ones, and the closed ones known again; each with its asset and its track's
    /// latest measures. One whose asset is no longer in the reference is left out.
    pub fn restore(
        &mut self,
        orders: Vec<defectflow_schemas::WorkOrder>,
        measures: &BTreeMap<String, TrackMeasures>,
        reference: &PlantReference,
    ) {
        for work_order in orders {
            match reference.assets.iter().find(|a| a.asset_id == work_order.asset_id) {
                Some(asset) => self.restored.send(RestoredOrder {
                    measures: measures.get(&work_order.track_id).cloned(),
                    work_order,
                    asset: asset.clone(),
                }),
                None => tracing::warn!(
                    work_order = %work_order.work_order_id,
                    asset = %work_order.asset_id,
                    "not restored: its asset is no longer in the reference data"
                ),
            }
        }
    }

    pub fn advance_to(&mut self, time: u64) {
        self.events.advance_to(time);
        self.restored.advance_to(time);
        self.dead_letters.advance_to(time);
        self.assets.advance_to(time);
        self.cameras.advance_to(time);
        self.failures.advance_to(time);
        self.procedures.advance_to(time);
        self.technicians.advance_to(time);
        self.inventory.advance_to(time);
        self.movements.advance_to(time);
        self.assets.flush();
        self.cameras.flush();
        self.failures.flush();
        self.procedures.flush();
        self.technicians.flush();
        self.inventory.flush();
        self.movements.flush();
    }
}

/// Items with their dataflow times.
pub type Timed<T> = Vec<(u64, T)>;

/// What worker 0 collects: the output messages in order and the final views.
#[derive(Debug, Default)]
pub struct Collected {
    /// The messages in emission order, until taken (`defectflow run` takes them as it
    /// goes; a scenario keeps them all).
    pub messages: Vec<Emitted>,
    /// The messages not yet taken by a sink, with their dataflow time.
    pub pending: Vec<(u64, Emitted)>,
    /// Where the emission of each revision is timed (`Stage::Emitted`), if anywhere.
    pub metrics: Option<std::sync::Arc<crate::metrics::Metrics>>,
    /// technician → open hundredths of hours, as accumulated from the view's updates.
    pub workload: BTreeMap<(String, i64), isize>,
    /// (part, measure) → value, as accumulated from the stock view's updates.
    pub stock: BTreeMap<((String, StockMeasure), i64), isize>,
    /// Rows for the audit log's tracks, inventory and wo_events tables, with their
    /// dataflow time, not yet taken by the audit log.
    pub audit: Vec<(u64, AuditRow)>,
}

impl Collected {
    /// The messages and audit rows of every time before `closed_before` (all complete),
    /// taken out of those pending.
    pub fn take_closed(&mut self, closed_before: u64) -> (Timed<Emitted>, Timed<AuditRow>) {
        let (ready, later) = std::mem::take(&mut self.pending).into_iter().partition(|(t, _)| *t < closed_before);
        self.pending = later;
        let (rows, later) = std::mem::take(&mut self.audit).into_iter().partition(|(t, _)| *t < closed_before);
        self.audit = later;
        (ready, rows)
    }
}

/// Adds `diff` to a view row's count; a row whose count comes to zero goes (the views
/// change value for months: their past values must not pile up).
fn add_count<K: Ord + Clone>(view: &mut BTreeMap<K, isize>, row: &K, diff: isize) {
    let count = view.entry(row.clone()).or_default();
    *count += diff;
    if *count == 0 {
        view.remove(row);
    }
}

/// Builds the work-order dataflow in `scope` with an input for observations; everything
/// it emits is gathered on worker 0 into `collected`.
pub fn build<'scope>(
    scope: Scope<'scope, u64>,
    config: WorkflowConfig,
    collected: Rc<RefCell<Collected>>,
) -> (WorkflowInputs, ProbeHandle<u64>) {
    let (observations_handle, observations) = TimelyInput::new_input::<FrameObservation>(&scope);
    let (plant, probe) = build_on(scope, observations, config, collected, None, None);
    (WorkflowInputs { observations: observations_handle, plant }, probe)
}

/// Builds the work-order dataflow on a stream of observations (the model's output);
/// with `evidence`, tracks (and so work orders) carry the image of their best frame.
pub fn build_on<'scope>(
    scope: Scope<'scope, u64>,
    observations: timely::dataflow::StreamVec<'scope, u64, FrameObservation>,
    config: WorkflowConfig,
    collected: Rc<RefCell<Collected>>,
    evidence: Option<std::sync::Arc<dyn defectflow_operators::evidence::EvidenceFrames>>,
    route: Option<defectflow_operators::track::CameraRoute>,
) -> (PlantInputs, ProbeHandle<u64>) {
    let (events_handle, events) = TimelyInput::new_input::<WoEvent>(&scope);
    let (restored_handle, restored) = TimelyInput::new_input::<RestoredOrder>(&scope);
    let (dead_letters_handle, dead_letters) = TimelyInput::new_input::<DeadLetter>(&scope);
    let (assets_handle, assets) = scope.new_collection::<Asset, isize>();
    let (cameras_handle, cameras) = scope.new_collection::<Camera, isize>();
    let (failures_handle, failures) = scope.new_collection::<FailureRecord, isize>();
    let (procedures_handle, procedures) = scope.new_collection::<Procedure, isize>();
    let (technicians_handle, technicians) = scope.new_collection::<Technician, isize>();
    let (inventory_handle, inventory) = scope.new_collection::<InventoryItem, isize>();
    let (movements_handle, movements) = scope.new_collection::<StockMovement, isize>();

    let restored_tracks = restored.clone().flat_map(|order| if order.is_open() { order.tracks() } else { Vec::new() });
    let tracks = observations.track_with_evidence(cameras.clone(), restored_tracks, config.track, evidence, route);
    let notify = config.notify.unwrap_or_else(Routing::off);
    // The ledger scores a track again once a repair it saw completed counts as a failure.
    let work_orders = WorkOrderConfig { severity: config.severity.clone(), notify, ..config.work_orders };
    let scored = tracks.clone().severity(assets, failures, config.severity);
    let streams = scored.work_orders(
        LedgerInputs { events, technicians, procedures, cameras, inventory, movements: movements.clone(), restored },
        work_orders,
    );
    let workload = streams.open_assignments().workload();
    let consumed = differential_dataflow::AsCollection::as_collection(streams.consumed().map(|m| {
        let at = m.at_ms;
        (m, at, 1isize)
    }));
    let stock = streams.reservations().stock_levels(movements.concat(consumed).map(|m| (m.part_id, m.delta)));

    let probe = ProbeHandle::new();
    collect_messages(streams.outputs, &collected, &probe);
    let sink = collected.clone();
    gather(workload.inner, "GatherWorkload")
        .inspect(move |(row, _, diff)| add_count(&mut sink.borrow_mut().workload, row, *diff))
        .probe_with(&probe);
    let sink = collected.clone();
    gather(stock.inner, "GatherStock")
        .inspect(move |(row, time, diff)| {
            let mut sink = sink.borrow_mut();
            add_count(&mut sink.stock, row, *diff);
            let ((part, measure), value) = row.clone();
            sink.audit.push((*time, AuditRow::Stock(part, measure, value, *diff)));
        })
        .probe_with(&probe);
    let sink = collected.clone();
    gather(dead_letters, "GatherDeadLetters")
        .inspect_core(move |event| {
            let Ok((stamp, letters)) = event else { return };
            let time = stamp.iter().max().copied().unwrap_or_default();
            let mut sink = sink.borrow_mut();
            for letter in letters {
                let message = Emitted::DeadLetter(letter.clone());
                sink.pending.push((time, message.clone()));
                sink.messages.push(message);
            }
        })
        .probe_with(&probe);
    let sink = collected;
    gather(tracks.inner, "GatherTracks")
        .inspect(move |((_, track), time, diff)| {
            if *diff > 0 {
                sink.borrow_mut().audit.push((*time, AuditRow::Track(Box::new(track.clone()))));
            }
        })
        .probe_with(&probe);

    let inputs = PlantInputs {
        events: events_handle,
        restored: restored_handle,
        dead_letters: dead_letters_handle,
        assets: assets_handle,
        cameras: cameras_handle,
        failures: failures_handle,
        procedures: procedures_handle,
        technicians: technicians_handle,
        inventory: inventory_handle,
        movements: movements_handle,
    };
    (inputs, probe)
}

/// Gathers the ledger's messages on worker 0, in emission order, with the CMMS events
/// it applied as audit rows.
fn collect_messages<'scope>(
    outputs: timely::dataflow::StreamVec<'scope, u64, LedgerOutput>,
    collected: &Rc<RefCell<Collected>>,
    probe: &ProbeHandle<u64>,
) {
    let sink = collected.clone();
    outputs
        .inspect_core(move |event| {
            let Ok((stamp, outputs)) = event else { return };
            // A container stamped with several times is complete once the last is.
            let time = stamp.iter().max().copied().unwrap_or_default();
            let mut sink = sink.borrow_mut();
            for output in outputs {
                let message = match output.clone() {
                    LedgerOutput::Revision(w) => {
                        if let Some(metrics) = &sink.metrics {
                            metrics.stage_times.record(crate::metrics::Stage::Emitted, w.revised_at_ms);
                        }
                        Emitted::WorkOrder(w)
                    }
                    LedgerOutput::Assignment(a) => Emitted::Assignment(a),
                    LedgerOutput::Alert(a) => Emitted::Alert(a),
                    LedgerOutput::Staging(s) => Emitted::PartsStaging(s),
                    LedgerOutput::DeadLetter(d) => Emitted::DeadLetter(d),
                    LedgerOutput::Accepted(e) => {
                        sink.audit.push((time, AuditRow::Event(e)));
                        continue;
                    }
                    LedgerOutput::Failure(f) => {
                        sink.audit.push((time, AuditRow::Failure(f)));
                        continue;
                    }
                    LedgerOutput::Suppressed(s) => {
                        sink.audit.push((time, AuditRow::Suppressed(s)));
                        continue;
                    }
                    _ => continue,
                };
                sink.pending.push((time, message.clone()));
                sink.messages.push(message);
            }
        })
        .probe_with(probe);
}

/// Moves every update of a view to worker 0.
fn gather<'scope, D: timely::ExchangeData>(
    stream: timely::dataflow::StreamVec<'scope, u64, D>,
    name: &str,
) -> timely::dataflow::StreamVec<'scope, u64, D> {
    stream.unary(Exchange::new(|_: &D| 0), name, |_, _| {
        |input, output| {
            input.for_each(|time, data| output.session(&time).give_container(data));
        }
    })
}
