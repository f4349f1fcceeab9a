//! The work-order ledger: the sequential heart of `derive`. Fed one timestamp at a
//! time (reference changes, then CMMS events, then scored tracks, each sorted), it opens,
//! revises and closes work orders and decides assignments and part reservations.
//! Everything it decides is a function of its inputs, so a replay gives the same ids,
//! revisions and bytes.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use defectflow_schemas::{
    Alert, Assignment, DeadLetter, DefectClass, EpochMillis, InventoryItem, PartLine, PartsStaging, Priority,
    Procedure, ProcedureRef, RevisionKind, SCHEMA_VERSION, StagingKind, StockMovement, Technician, WoEvent,
    WoEventKind, WorkOrder, WorkOrderStatus,
};
use serde::{Deserialize, Serialize};

use crate::assign::{CentiHours, Dispatcher, centi_hours};
use crate::ids::stable_hash;
use crate::inventory::Stock;
use crate::severity::ScoredTrack;

/// When work orders open and revise. `[work_orders]` in the config.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkOrderConfig {
    /// Least severity score at which a confirmed track opens a work order.
    pub open_score: f64,
    /// A revision is made when the defect's area has grown by this factor since the last one.
    pub size_step: f64,
    /// A defect still seen this long after its repair was completed opens a new work order.
    pub recheck_after_ms: u64,
    /// Plant local time minus UTC, in minutes: technician shifts are in local hours.
    pub utc_offset_minutes: i32,
}

impl Default for WorkOrderConfig {
    fn default() -> Self {
        WorkOrderConfig { open_score: 20.0, size_step: 1.5, recheck_after_ms: 120_000, utc_offset_minutes: 0 }
    }
}

/// One input of the ledger at one time. The variant order is the processing order.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum LedgerInput {
    Technician(Technician, isize),
    Procedure(Procedure, isize),
    Item(InventoryItem, isize),
    Movement(StockMovement, isize),
    Event(WoEvent),
    Track(ScoredTrack),
}

/// Everything the ledger decides.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum LedgerOutput {
    Revision(WorkOrder),
    Assignment(Assignment),
    Alert(Alert),
    Staging(PartsStaging),
    DeadLetter(DeadLetter),
    /// An open assignment `(technician, work order, hours)` appears (+1) or goes (−1).
    Workload(String, String, CentiHours, isize),
    /// An open reservation `(part, work order, quantity)` appears (+1) or goes (−1).
    Reservation(String, String, i64, isize),
    /// Parts consumed by a completed work order.
    Consumed(StockMovement),
}

#[derive(Debug)]
struct Order {
    work_order_id: String,
    scored: ScoredTrack,
    status: WorkOrderStatus,
    opened_at: EpochMillis,
    reopens: Option<String>,
    procedure: Option<Procedure>,
    technician: Option<String>,
    /// Set by a `reassigned` or `started` event: the choice is the CMMS's, not ours.
    pinned: bool,
    assign_reason: String,
    published: Option<WorkOrder>,
    /// Area at the last revision, for the size step.
    revision_area: f32,
    completed_at: Option<EpochMillis>,
    alerted: bool,
}

impl Order {
    fn is_open(&self) -> bool {
        !matches!(self.status, WorkOrderStatus::Completed | WorkOrderStatus::FalsePositive)
    }

    fn hours(&self) -> CentiHours {
        self.procedure.as_ref().map_or(0, |p| centi_hours(p.estimated_hours))
    }
}

#[derive(Debug, Default)]
struct TrackEntry {
    work_order: Option<String>,
    generation: u32,
    suppressed: bool,
}

/// The state of every work order and what it holds.
#[derive(Debug)]
pub struct Ledger {
    config: WorkOrderConfig,
    pub dispatcher: Dispatcher,
    pub stock: Stock,
    tracks: HashMap<String, TrackEntry>,
    orders: BTreeMap<String, Order>,
    last_completed: HashMap<(String, DefectClass), String>,
    below_reorder: BTreeSet<String>,
    last_time: Option<EpochMillis>,
}

impl Ledger {
    pub fn new(config: WorkOrderConfig) -> Self {
        Ledger {
            dispatcher: Dispatcher::new(config.utc_offset_minutes),
            config,
            stock: Stock::default(),
            tracks: HashMap::new(),
            orders: BTreeMap::new(),
            last_completed: HashMap::new(),
            below_reorder: BTreeSet::new(),
            last_time: None,
        }
    }

    /// Applies everything that happened at `time`; `inputs` may be empty (a clock tick,
    /// for shift changes).
    pub fn step(&mut self, time: EpochMillis, mut inputs: Vec<LedgerInput>) -> Vec<LedgerOutput> {
        inputs.sort();
        let mut out = Vec::new();
        let mut touched = BTreeSet::new();
        let mut reconsider_all = self.last_time.is_none_or(|last| last / 3_600_000 != time / 3_600_000);
        self.last_time = Some(time);
        for input in inputs {
            match input {
                LedgerInput::Technician(technician, diff) => {
                    self.dispatcher.apply_technician(&technician, diff);
                    reconsider_all = true;
                }
                LedgerInput::Procedure(procedure, diff) => {
                    self.dispatcher.apply_procedure(&procedure, diff);
                    reconsider_all = true;
                }
                LedgerInput::Item(item, diff) => {
                    self.stock.set_reorder_point(&item.part_id, (diff > 0).then_some(item.reorder_point));
                }
                LedgerInput::Movement(movement, diff) => {
                    self.stock.add_on_hand(&movement.part_id, movement.delta * diff as i64);
                    touched.extend(self.orders_needing(&movement.part_id));
                }
                LedgerInput::Event(event) => self.apply_event(time, event, &mut touched, &mut out),
                LedgerInput::Track(scored) => self.apply_track(scored, &mut touched),
            }
        }
        if reconsider_all {
            touched.extend(self.orders.values().filter(|o| o.is_open()).map(|o| o.work_order_id.clone()));
        }
        // Most urgent first: they get first pick of technicians and parts.
        let mut queue: Vec<_> = touched
            .into_iter()
            .filter_map(|id| self.orders.get(&id))
            .map(|o| (o.scored.severity.priority, o.opened_at, o.work_order_id.clone()))
            .collect();
        queue.sort();
        for (_, _, id) in &queue {
            self.plan(time, id, &mut out);
        }
        // Availability of other work orders may have changed with these reservations.
        let mut again = BTreeSet::new();
        for (_, _, id) in &queue {
            if let Some(order) = self.orders.get(id) {
                for part in order.procedure.iter().flat_map(|p| &p.parts) {
                    again.extend(self.orders_needing(&part.part_id));
                }
            }
        }
        for id in again {
            self.publish(time, &id, &mut out);
        }
        for (_, _, id) in &queue {
            self.publish(time, id, &mut out);
        }
        out
    }

    fn orders_needing(&self, part_id: &str) -> Vec<String> {
        self.orders
            .values()
            .filter(|o| o.is_open() && o.procedure.iter().flat_map(|p| &p.parts).any(|p| p.part_id == part_id))
            .map(|o| o.work_order_id.clone())
            .collect()
    }

    fn apply_event(&mut self, time: EpochMillis, event: WoEvent, touched: &mut BTreeSet<String>, out: &mut Vec<LedgerOutput>) {
        let reject = |reason: String, out: &mut Vec<LedgerOutput>| {
            out.push(LedgerOutput::DeadLetter(DeadLetter {
                source: "wo-events".into(),
                payload: serde_json::to_string(&event).unwrap_or_default(),
                reason,
                at_ms: time,
            }));
        };
        let Some(order) = self.orders.get_mut(&event.work_order_id) else {
            return reject(format!("unknown work order `{}`", event.work_order_id), out);
        };
        if !order.is_open() {
            let status = status_name(order.status);
            return reject(format!("work order `{}` is already closed ({status})", event.work_order_id), out);
        }
        let technician_known = |id: &Option<String>| id.as_deref().is_some_and(|id| self.dispatcher.technician(id).is_some());
        match event.event {
            WoEventKind::Acknowledged if order.status == WorkOrderStatus::Open => order.status = WorkOrderStatus::Acknowledged,
            WoEventKind::Acknowledged => {
                let status = status_name(order.status);
                return reject(format!("work order `{}` is already {status}", event.work_order_id), out);
            }
            WoEventKind::Started => {
                order.status = WorkOrderStatus::InProgress;
                if technician_known(&event.technician_id) {
                    self.set_technician(&event.work_order_id, event.technician_id.clone(), "started", out);
                }
            }
            WoEventKind::Reassigned if technician_known(&event.technician_id) => {
                self.set_technician(&event.work_order_id, event.technician_id.clone(), "manual", out);
            }
            WoEventKind::Reassigned => {
                return reject(
                    format!("`reassigned` needs a known technician_id, got {:?}", event.technician_id),
                    out,
                );
            }
            WoEventKind::Completed | WoEventKind::FalsePositive => {
                self.close(time, &event.work_order_id, event.event, out);
            }
        }
        touched.insert(event.work_order_id);
    }

    fn close(&mut self, time: EpochMillis, id: &str, kind: WoEventKind, out: &mut Vec<LedgerOutput>) {
        let Some(order) = self.orders.get_mut(id) else { return };
        // The closed revision still names its technician and procedure; only the hours
        // and the reservations are released.
        let hours = order.hours();
        if let Some(technician) = &order.technician {
            self.dispatcher.add_workload(technician, -hours);
            out.push(LedgerOutput::Workload(technician.clone(), id.to_owned(), hours, -1));
        }
        for part in order.procedure.iter().flat_map(|p| &p.parts) {
            self.stock.release(&part.part_id, order.opened_at, id);
            out.push(LedgerOutput::Reservation(part.part_id.clone(), id.to_owned(), i64::from(part.quantity), -1));
        }
        let track = &order.scored.track;
        if kind == WoEventKind::Completed {
            order.status = WorkOrderStatus::Completed;
            order.completed_at = Some(time);
            self.last_completed.insert((track.asset_id.clone(), track.class), id.to_owned());
            for part in order.procedure.iter().flat_map(|p| &p.parts) {
                let movement = StockMovement {
                    part_id: part.part_id.clone(),
                    delta: -i64::from(part.quantity),
                    at_ms: time,
                    reason: format!("consumed:{id}"),
                };
                self.stock.add_on_hand(&part.part_id, movement.delta);
                out.push(LedgerOutput::Consumed(movement));
            }
        } else {
            order.status = WorkOrderStatus::FalsePositive;
            self.tracks.entry(track.track_id.clone()).or_default().suppressed = true;
        }
    }

    fn apply_track(&mut self, scored: ScoredTrack, touched: &mut BTreeSet<String>) {
        use defectflow_schemas::TrackState;
        let track = &scored.track;
        let entry = self.tracks.entry(track.track_id.clone()).or_default();
        if entry.suppressed {
            return;
        }
        let current = entry.work_order.as_ref().and_then(|id| self.orders.get_mut(id));
        let reopens = match current {
            Some(order) if order.is_open() => {
                order.scored = scored;
                touched.insert(order.work_order_id.clone());
                return;
            }
            Some(order) => {
                let recheck = order.completed_at.unwrap_or(0) + self.config.recheck_after_ms;
                if order.status != WorkOrderStatus::Completed
                    || track.state != TrackState::Confirmed
                    || track.last_seen_ms < recheck
                {
                    return;
                }
                Some(order.work_order_id.clone())
            }
            None => {
                if track.state != TrackState::Confirmed || scored.severity.score < self.config.open_score {
                    return;
                }
                // The same defect seen again after its track lapsed (the camera looked
                // away, the light changed) belongs to the work order already open for it.
                let same_defect = self.orders.values_mut().find(|o| {
                    let open = &o.scored.track;
                    o.is_open()
                        && open.asset_id == track.asset_id
                        && open.camera_id == track.camera_id
                        && open.class == track.class
                        && open.bbox.iou(&track.bbox) > 0.0
                });
                if let Some(order) = same_defect {
                    entry.work_order = Some(order.work_order_id.clone());
                    order.scored = scored;
                    touched.insert(order.work_order_id.clone());
                    return;
                }
                self.last_completed.get(&(track.asset_id.clone(), track.class)).cloned()
            }
        };
        entry.generation += 1;
        let id = stable_hash(&[
            track.asset_id.as_bytes(),
            track.class.as_str().as_bytes(),
            track.track_id.as_bytes(),
            &entry.generation.to_le_bytes(),
        ]);
        let work_order_id = format!("WO-{id:016x}");
        entry.work_order = Some(work_order_id.clone());
        touched.insert(work_order_id.clone());
        self.orders.insert(
            work_order_id.clone(),
            Order {
                work_order_id,
                opened_at: track.last_seen_ms,
                revision_area: track.area_px,
                scored,
                status: WorkOrderStatus::Open,
                reopens,
                procedure: None,
                technician: None,
                pinned: false,
                assign_reason: String::new(),
                published: None,
                completed_at: None,
                alerted: false,
            },
        );
    }

    /// Procedure, reservations and technician of an open work order.
    fn plan(&mut self, time: EpochMillis, id: &str, out: &mut Vec<LedgerOutput>) {
        let Some(order) = self.orders.get(id) else { return };
        if !order.is_open() {
            return;
        }
        let procedure = self.dispatcher.procedure(&order.scored.asset.asset_class, order.scored.track.class).cloned();
        if procedure != order.procedure {
            self.set_procedure(id, procedure, out);
        }
        let Some(order) = self.orders.get(id) else { return };
        let Some(skill) = order.procedure.as_ref().map(|p| p.required_skill.clone()) else {
            if order.technician.is_some() {
                self.set_technician(id, None, "no_procedure", out);
            }
            return;
        };
        let keep = match &order.technician {
            Some(technician) if order.pinned => self.dispatcher.technician(technician).is_some(),
            Some(technician) => {
                order.status == WorkOrderStatus::InProgress || self.dispatcher.can_work(technician, &skill, time)
            }
            None => false,
        };
        if keep {
            return;
        }
        let reason = if order.technician.is_some() { "off_shift_reassignment" } else { "least_workload" };
        // This order's own hours leave its technician before workloads are compared.
        self.set_technician(id, None, reason, out);
        let zone = self.orders.get(id).map(|o| o.scored.asset.zone.clone()).unwrap_or_default();
        let chosen = self.dispatcher.choose(&skill, &zone, time).map(|t| t.technician_id.clone());
        let reason = if chosen.is_none() { "no_eligible_technician" } else { reason };
        self.set_technician(id, chosen, reason, out);
    }

    fn set_technician(&mut self, id: &str, technician: Option<String>, reason: &str, out: &mut Vec<LedgerOutput>) {
        let Some(order) = self.orders.get_mut(id) else { return };
        let hours = order.hours();
        if let Some(old) = order.technician.take() {
            self.dispatcher.add_workload(&old, -hours);
            out.push(LedgerOutput::Workload(old, id.to_owned(), hours, -1));
        }
        if let Some(new) = &technician {
            self.dispatcher.add_workload(new, hours);
            out.push(LedgerOutput::Workload(new.clone(), id.to_owned(), hours, 1));
        }
        order.pinned = matches!(reason, "manual" | "started");
        order.technician = technician;
        order.assign_reason = reason.to_owned();
    }

    fn set_procedure(&mut self, id: &str, procedure: Option<Procedure>, out: &mut Vec<LedgerOutput>) {
        let technician = self.orders.get(id).and_then(|o| o.technician.clone());
        // Hours follow the procedure: move the technician's load with it.
        if technician.is_some() {
            self.set_technician(id, None, "procedure_changed", out);
        }
        let Some(order) = self.orders.get_mut(id) else { return };
        for part in order.procedure.iter().flat_map(|p| &p.parts) {
            self.stock.release(&part.part_id, order.opened_at, id);
            out.push(LedgerOutput::Reservation(part.part_id.clone(), id.to_owned(), i64::from(part.quantity), -1));
        }
        for part in procedure.iter().flat_map(|p| &p.parts) {
            self.stock.reserve(&part.part_id, order.opened_at, id, i64::from(part.quantity));
            out.push(LedgerOutput::Reservation(part.part_id.clone(), id.to_owned(), i64::from(part.quantity), 1));
        }
        order.procedure = procedure;
        if technician.is_some() {
            let reason = order.assign_reason.clone();
            self.set_technician(id, technician, &reason, out);
        }
    }

    /// Makes a new revision of the work order if anything that matters changed since the
    /// last one, with the assignment, alert and staging messages that go with it.
    fn publish(&mut self, time: EpochMillis, id: &str, out: &mut Vec<LedgerOutput>) {
        let Some(order) = self.orders.get(id) else { return };
        let parts: Vec<PartLine> = order
            .procedure
            .iter()
            .flat_map(|p| &p.parts)
            .map(|part| PartLine {
                part_id: part.part_id.clone(),
                quantity: part.quantity,
                available: !order.is_open() || self.stock.covers(&part.part_id, order.opened_at, id),
            })
            .collect();
        let scored = &order.scored;
        let track = &scored.track;
        let severity = scored.severity;
        let published = order.published.as_ref();
        let material = match published {
            None => true,
            Some(last) => {
                last.status != order.status
                    || last.severity.priority != severity.priority
                    || (last.severity.score / 10.0).floor() != (severity.score / 10.0).floor()
                    || f64::from(track.area_px) >= f64::from(order.revision_area) * self.config.size_step
                    || last.technician_id != order.technician
                    || last.procedure.as_ref().map(|p| &p.procedure_id)
                        != order.procedure.as_ref().map(|p| &p.procedure_id)
                    || last.parts != parts
                    || last.track_id != track.track_id
            }
        };
        if !material {
            return;
        }
        let revision = published.map_or(1, |last| last.revision + 1);
        let revision_kind = match (published, order.is_open()) {
            (None, _) => RevisionKind::Created,
            (Some(_), true) => RevisionKind::Updated,
            (Some(_), false) => RevisionKind::Closed,
        };
        let technician_changed = published.is_none_or(|last| last.technician_id != order.technician);
        let newly_reserved = published.is_none_or(|last| last.procedure.is_none()) && order.procedure.is_some();
        let work_order = WorkOrder {
            schema_version: SCHEMA_VERSION.to_owned(),
            work_order_id: id.to_owned(),
            revision,
            revision_kind,
            status: order.status,
            asset_id: track.asset_id.clone(),
            asset_name: scored.asset.name.clone(),
            camera_id: track.camera_id.clone(),
            track_id: track.track_id.clone(),
            defect_class: track.class,
            severity,
            procedure: order.procedure.as_ref().map(|p| ProcedureRef {
                procedure_id: p.procedure_id.clone(),
                title: p.title.clone(),
                required_skill: p.required_skill.clone(),
                estimated_hours: p.estimated_hours,
                steps: p.steps.clone(),
            }),
            parts: parts.clone(),
            technician_id: order.technician.clone(),
            evidence: None,
            detected_at_ms: track.first_seen_ms,
            revised_at_ms: time,
            reopens: order.reopens.clone(),
            model_version: track.model_version.clone(),
            shadow: track.shadow,
        };
        // The revision goes first; what follows from it comes after.
        let mut follow = Vec::new();
        if technician_changed && order.is_open() {
            follow.push(LedgerOutput::Assignment(Assignment {
                work_order_id: id.to_owned(),
                revision,
                technician_id: order.technician.clone(),
                estimated_hours: order.procedure.as_ref().map_or(0.0, |p| p.estimated_hours),
                assigned_at_ms: time,
                reason: order.assign_reason.clone(),
            }));
        }
        let alert = order.is_open() && severity.priority == Priority::P1 && !order.alerted;
        if alert {
            follow.push(LedgerOutput::Alert(Alert {
                work_order_id: id.to_owned(),
                asset_id: track.asset_id.clone(),
                priority: severity.priority,
                severity_score: severity.score,
                at_ms: time,
                message: format!(
                    "P1 {} on {} ({}), severity {:.1}",
                    track.class, scored.asset.name, track.asset_id, severity.score
                ),
            }));
        }
        if newly_reserved {
            for line in &parts {
                let level = self.stock.level(&line.part_id);
                follow.push(LedgerOutput::Staging(PartsStaging {
                    kind: if line.available { StagingKind::Stage } else { StagingKind::Shortage },
                    part_id: line.part_id.clone(),
                    work_order_id: Some(id.to_owned()),
                    quantity: i64::from(line.quantity),
                    available: level.available,
                    at_ms: time,
                }));
            }
        }
        for line in &parts {
            let level = self.stock.level(&line.part_id);
            let below = level.available <= self.stock.reorder_point(&line.part_id);
            if below && self.below_reorder.insert(line.part_id.clone()) {
                follow.push(LedgerOutput::Staging(PartsStaging {
                    kind: StagingKind::Reorder,
                    part_id: line.part_id.clone(),
                    work_order_id: None,
                    quantity: self.stock.reorder_point(&line.part_id) - level.available + 1,
                    available: level.available,
                    at_ms: time,
                }));
            } else if !below {
                self.below_reorder.remove(&line.part_id);
            }
        }
        if let Some(order) = self.orders.get_mut(id) {
            order.alerted |= alert;
            order.revision_area = order.scored.track.area_px;
            order.published = Some(work_order.clone());
        }
        out.push(LedgerOutput::Revision(work_order));
        out.extend(follow);
    }
}

fn status_name(status: WorkOrderStatus) -> &'static str {
    match status {
        WorkOrderStatus::Open => "open",
        WorkOrderStatus::Acknowledged => "acknowledged",
        WorkOrderStatus::InProgress => "in_progress",
        WorkOrderStatus::Completed => "completed",
        WorkOrderStatus::FalsePositive => "false_positive",
    }
}
