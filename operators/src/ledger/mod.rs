//! The work-order ledger: the sequential heart of `derive`. Fed one timestamp at a
//! time (reference changes, then CMMS events, then scored tracks, each sorted), it opens,
//! revises and closes work orders and decides assignments and part reservations.
//! Everything it decides is a function of its inputs, so a replay gives the same ids,
//! revisions and bytes.

mod alerts;
mod cmms;
mod plan;
mod revision;
mod views;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use defectflow_schemas::{
    Alert, Assignment, Camera, DeadLetter, DefectClass, EpochMillis, FailureRecord, InventoryItem, PartLine,
    PartsStaging, Priority, Procedure, ProcedureRef, RevisionKind, SCHEMA_VERSION, StagingKind, StockMovement,
    SuppressedTrack, Technician, WoEvent, WoEventKind, WorkOrder, WorkOrderStatus, WorkType,
};
use serde::{Deserialize, Serialize};

use crate::assign::{CentiHours, Dispatcher, PlantClock, centi_hours};
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
    /// Without daylight saving: where the plant's clocks change, set `[plant] time_zone`.
    pub utc_offset_minutes: i32,
    /// The plant's IANA time zone (`[plant] time_zone`), which takes the place of
    /// `utc_offset_minutes`.
    #[serde(skip)]
    pub time_zone: Option<chrono_tz::Tz>,
    /// Hours from first detection to due, per priority (`[work_orders.due_hours]`); a
    /// priority without one gets no due date.
    pub due_hours: BTreeMap<Priority, f64>,
    /// How the work type follows from the defect (`[work_orders.work_types]`).
    pub work_types: WorkTypes,
    /// Hours a false positive keeps its camera, asset, class and spot from opening work
    /// orders (a person lifts it sooner with a `suppression_lifted` wo-event); 0: only
    /// its own track, while it lasts.
    pub suppress_false_positive_hours: f64,
    /// How tracks are scored (`[severity]`): the ledger scores a track again once a
    /// repair it saw completed counts in its asset's history.
    #[serde(skip)]
    pub severity: crate::severity::SeverityConfig,
    /// Who is told of what (`[notify]`); off: one unrouted alert per P1.
    #[serde(skip)]
    pub notify: crate::notify::Routing,
    /// `open_score` per camera and class, as the thresholds file says now
    /// (`[plant] thresholds`).
    #[serde(skip)]
    pub thresholds: crate::thresholds::LiveThresholds,
}

impl Default for WorkOrderConfig {
    fn default() -> Self {
        WorkOrderConfig {
            open_score: 20.0,
            size_step: 1.5,
            recheck_after_ms: 120_000,
            utc_offset_minutes: 0,
            time_zone: None,
            due_hours: [(Priority::P1, 8.0), (Priority::P2, 72.0), (Priority::P3, 336.0), (Priority::P4, 720.0)].into(),
            work_types: WorkTypes::default(),
            suppress_false_positive_hours: 168.0,
            severity: crate::severity::SeverityConfig::default(),
            notify: crate::notify::Routing::off(),
            thresholds: crate::thresholds::LiveThresholds::default(),
        }
    }
}

impl WorkOrderConfig {
    /// The plant's local time, for shifts.
    pub fn clock(&self) -> PlantClock {
        self.time_zone.map_or(PlantClock::Offset(self.utc_offset_minutes), PlantClock::Zone)
    }

    /// When a work order of `priority` first detected at `detected_at_ms` is due.
    pub fn due_at(&self, priority: Priority, detected_at_ms: EpochMillis) -> Option<EpochMillis> {
        let hours = self.due_hours.get(&priority)?;
        Some(detected_at_ms + (hours * 3_600_000.0).round() as EpochMillis)
    }
}

/// `[work_orders.work_types]`: a work order at one of `emergency_priorities` is an
/// emergency; otherwise its type is its defect class's in `by_class` (corrective where
/// the class has none).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkTypes {
    pub emergency_priorities: Vec<Priority>,
    pub by_class: BTreeMap<DefectClass, WorkType>,
}

impl Default for WorkTypes {
    fn default() -> Self {
        use DefectClass::*;
        WorkTypes {
            emergency_priorities: vec![Priority::P1],
            // Conditions that develop (wear, corrosion, misalignment) are caught before
            // they fail; what has failed (a crack, a missing part, spillage) is repaired.
            by_class: [
                (Crack, WorkType::Corrective),
                (Corrosion, WorkType::Predictive),
                (Misalignment, WorkType::Predictive),
                (Wear, WorkType::Predictive),
                (Contamination, WorkType::Corrective),
                (MissingComponent, WorkType::Corrective),
                (Unknown, WorkType::Inspection),
            ]
            .into(),
        }
    }
}

impl WorkTypes {
    pub fn of(&self, class: DefectClass, priority: Priority) -> WorkType {
        if self.emergency_priorities.contains(&priority) {
            return WorkType::Emergency;
        }
        self.by_class.get(&class).copied().unwrap_or(WorkType::Corrective)
    }
}

/// One input of the ledger at one time. The variant order is the processing order.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum LedgerInput {
    Technician(Technician, isize),
    Procedure(Procedure, isize),
    /// A camera's ROIs: where cameras share a region of an asset.
    Camera(Camera, isize),
    Item(InventoryItem, isize),
    Movement(StockMovement, isize),
    /// A work order an earlier run published, taken up again (see [`RestoredOrder`]).
    Restore(Box<RestoredOrder>),
    Event(WoEvent),
    Track(Box<ScoredTrack>),
}

/// A work order as an earlier run last published it (its latest revision on the
/// work-order topic), with its asset from the reference data. Restored at start, it
/// holds its technician and parts again, and the same defect seen again by the new
/// run's tracker continues it instead of opening another.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RestoredOrder {
    pub work_order: WorkOrder,
    pub asset: defectflow_schemas::Asset,
    /// The track's latest measures as the audit log has them (`None` without one),
    /// which the work order does not carry.
    pub measures: Option<TrackMeasures>,
}

/// What the latest snapshot of a track measured: a row of the audit log's `tracks` table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrackMeasures {
    pub last_seen_ms: EpochMillis,
    pub hits: u64,
    pub area_px: f32,
    pub size_mm: Option<f64>,
    pub growth_px_per_min: f64,
    /// The track had resolved: the defect was no longer seen.
    pub resolved: bool,
}

impl RestoredOrder {
    /// Whether the work order is still open (not completed, a false positive or cancelled).
    pub fn is_open(&self) -> bool {
        !self.work_order.status.is_closed()
    }

    /// The defect's track as the earlier run left it: confirmed (or resolved, if the
    /// audit log says so), with the work order's track id, class, first detection and
    /// evidence, and the audit log's measures where it has them. Its box is the
    /// evidence's (the best frame's); without evidence it is empty, and the same defect
    /// is recognised without it.
    pub fn track(&self) -> defectflow_schemas::DefectTrack {
        let wo = &self.work_order;
        let bbox = wo.evidence.as_ref().map(|e| e.bbox);
        let no_box = defectflow_schemas::BoundingBox { x: 0.0, y: 0.0, width: 0.0, height: 0.0 };
        let snapshot = self.measures.as_ref();
        defectflow_schemas::DefectTrack {
            track_id: wo.track_id.clone(),
            camera_id: wo.camera_id.clone(),
            asset_id: wo.asset_id.clone(),
            class: wo.defect_class,
            state: if snapshot.is_some_and(|s| s.resolved) {
                defectflow_schemas::TrackState::Resolved
            } else {
                defectflow_schemas::TrackState::Confirmed
            },
            first_seen_ms: wo.detected_at_ms,
            last_seen_ms: snapshot.map_or(wo.revised_at_ms, |s| s.last_seen_ms),
            hits: snapshot.map_or(0, |s| s.hits),
            bbox: bbox.unwrap_or(no_box),
            area_px: snapshot.map_or(bbox.map_or(0.0, |b| b.width * b.height), |s| s.area_px),
            size_mm: snapshot.and_then(|s| s.size_mm),
            growth_px_per_min: snapshot.map_or(0.0, |s| s.growth_px_per_min),
            best_frame_index: wo.evidence.as_ref().map_or(0, |e| e.frame_index),
            best_bbox: bbox.unwrap_or(no_box),
            best_capture_ms: wo.evidence.as_ref().map_or(0, |e| e.capture_ms),
            model_version: wo.model_version.clone(),
            shadow: wo.shadow,
            evidence: wo.evidence.clone(),
        }
    }
}

impl RestoredOrder {
    /// The defect's tracks as the earlier run left them: its own ([`RestoredOrder::track`])
    /// and one per other camera's view that has evidence (the view's track id, and its
    /// evidence's box, in that camera's pixels), so each camera's tracker takes its track
    /// up again rather than starting another. A view without evidence has no box there:
    /// its camera starts a new track, which takes the view over.
    pub fn tracks(&self) -> Vec<defectflow_schemas::DefectTrack> {
        let main = self.track();
        let views = self.work_order.other_views.iter().filter_map(|view| {
            let evidence = view.evidence.as_ref()?;
            let bbox = evidence.bbox;
            Some(defectflow_schemas::DefectTrack {
                track_id: view.track_id.clone(),
                camera_id: view.camera_id.clone(),
                hits: 0,
                area_px: bbox.width * bbox.height,
                size_mm: None,
                growth_px_per_min: 0.0,
                best_frame_index: evidence.frame_index,
                best_capture_ms: evidence.capture_ms,
                evidence: Some(evidence.clone()),
                bbox,
                best_bbox: bbox,
                ..main.clone()
            })
        });
        let views: Vec<_> = views.collect();
        std::iter::once(main).chain(views).collect()
    }
}

// A work order is restored once, so its id identifies it.
impl PartialEq for RestoredOrder {
    fn eq(&self, other: &Self) -> bool {
        self.work_order.work_order_id == other.work_order.work_order_id
    }
}

impl Eq for RestoredOrder {}

impl PartialOrd for RestoredOrder {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for RestoredOrder {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.work_order.work_order_id.cmp(&other.work_order.work_order_id)
    }
}

/// Everything the ledger decides.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum LedgerOutput {
    Revision(Box<WorkOrder>),
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
    /// The failure a completed corrective (or emergency) work order repaired.
    Failure(FailureRecord),
    /// A sighting a false positive held back from opening a work order (audited only).
    Suppressed(SuppressedTrack),
    /// A CMMS event the ledger applied (one it rejected becomes a dead letter).
    Accepted(WoEvent),
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
    /// The (rule, recipient) pairs told of it (recipient `""`: nobody was on shift).
    told: BTreeSet<(String, String)>,
    /// When it was first published at P1, while escalation is on.
    p1_since: Option<EpochMillis>,
    /// The same defect as other cameras see it, by camera.
    views: BTreeMap<String, defectflow_schemas::View>,
    /// Why it is on hold, while it is.
    hold_reason: Option<String>,
    /// The status a `resumed` event returns an on-hold work order to.
    resume_to: WorkOrderStatus,
}

impl Order {
    /// A work order just opened (or taken up) for `scored`, with nothing planned yet.
    fn new(work_order_id: String, scored: ScoredTrack, opened_at: EpochMillis, reopens: Option<String>) -> Order {
        Order {
            work_order_id,
            opened_at,
            revision_area: scored.track.area_px,
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
            told: BTreeSet::new(),
            p1_since: None,
            views: BTreeMap::new(),
            hold_reason: None,
            resume_to: WorkOrderStatus::Acknowledged,
        }
    }

    fn is_open(&self) -> bool {
        !self.status.is_closed()
    }

    /// The hours the order counts in its technician's open workload: none while it is
    /// on hold.
    fn hours(&self) -> CentiHours {
        if self.status == WorkOrderStatus::OnHold {
            return 0;
        }
        self.procedure.as_ref().map_or(0, |p| centi_hours(p.estimated_hours))
    }
}

/// The audit row of a sighting the false positive `by` held back.
fn held_back(scored: &ScoredTrack, by: &str, until_ms: Option<EpochMillis>) -> LedgerOutput {
    let track = &scored.track;
    LedgerOutput::Suppressed(SuppressedTrack {
        track_id: track.track_id.clone(),
        camera_id: track.camera_id.clone(),
        asset_id: track.asset_id.clone(),
        defect_class: track.class,
        at_ms: track.last_seen_ms,
        severity_score: scored.severity.score,
        false_positive: by.to_owned(),
        until_ms,
    })
}

/// A spot a false positive keeps from opening work orders until `until_ms`.
#[derive(Debug)]
struct Suppression {
    work_order_id: String,
    camera_id: String,
    asset_id: String,
    class: DefectClass,
    bbox: defectflow_schemas::BoundingBox,
    until_ms: EpochMillis,
}

impl Suppression {
    fn covers(&self, track: &defectflow_schemas::DefectTrack) -> bool {
        track.last_seen_ms < self.until_ms
            && track.camera_id == self.camera_id
            && track.asset_id == self.asset_id
            && track.class == self.class
            && (self.bbox.overlaps_or_unknown(&track.bbox) || track.bbox.overlaps_or_unknown(&self.bbox))
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
    /// Spots closed as false positives (restored with their work orders after a restart).
    suppressions: Vec<Suppression>,
    /// Per asset, when the defects of the repairs completed since the start were first
    /// seen (restored completed work orders included): failures the reference's history
    /// does not hold yet.
    repairs: HashMap<String, Vec<EpochMillis>>,
    last_completed: HashMap<(String, DefectClass), String>,
    below_reorder: BTreeSet<String>,
    /// Pending escalations: (due, work order).
    escalations: BTreeSet<(EpochMillis, String)>,
    /// Each camera's ROIs, for regions cameras share.
    rois: HashMap<String, Vec<defectflow_schemas::Roi>>,
    last_time: Option<EpochMillis>,
}

impl Ledger {
    pub fn new(config: WorkOrderConfig) -> Self {
        Ledger {
            dispatcher: Dispatcher::new(config.clock()),
            config,
            stock: Stock::default(),
            tracks: HashMap::new(),
            orders: BTreeMap::new(),
            suppressions: Vec::new(),
            repairs: HashMap::new(),
            last_completed: HashMap::new(),
            below_reorder: BTreeSet::new(),
            escalations: BTreeSet::new(),
            rois: HashMap::new(),
            last_time: None,
        }
    }

    /// Applies everything that happened at `time`; `inputs` may be empty (a clock tick,
    /// for shift changes).
    pub fn step(&mut self, time: EpochMillis, mut inputs: Vec<LedgerInput>) -> Vec<LedgerOutput> {
        inputs.sort();
        let mut out = Vec::new();
        let mut touched = BTreeSet::new();
        // Work orders taken up from an earlier run stand as published until something
        // happens to them at a time of this run (restoring happens before any).
        let mut restored = BTreeSet::new();
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
                LedgerInput::Camera(camera, diff) => self.apply_camera(&camera, diff),
                LedgerInput::Item(item, diff) => {
                    self.stock.set_reorder_point(&item.part_id, (diff > 0).then_some(item.reorder_point));
                }
                LedgerInput::Movement(movement, diff) => {
                    self.stock.add_on_hand(&movement.part_id, movement.delta * diff as i64);
                    touched.extend(self.orders_needing(&movement.part_id));
                }
                LedgerInput::Restore(order) => {
                    restored.insert(order.work_order.work_order_id.clone());
                    self.restore(*order, &mut out);
                }
                LedgerInput::Event(event) => self.apply_event(time, event, &mut touched, &mut out),
                LedgerInput::Track(scored) => self.apply_track(*scored, &mut touched, &mut out),
            }
        }
        if reconsider_all {
            touched.extend(self.orders.values().filter(|o| o.is_open()).map(|o| o.work_order_id.clone()));
        }
        touched.retain(|id| !restored.contains(id));
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
        self.escalate(time, &mut out);
        out
    }

    fn orders_needing(&self, part_id: &str) -> Vec<String> {
        self.orders
            .values()
            .filter(|o| o.is_open() && o.procedure.iter().flat_map(|p| &p.parts).any(|p| p.part_id == part_id))
            .map(|o| o.work_order_id.clone())
            .collect()
    }

    /// The track's score with the repairs this ledger saw completed on its asset (within
    /// the history window, before the track was last seen) added to its failures.
    fn with_repairs(&self, mut scored: ScoredTrack) -> ScoredTrack {
        let Some(repairs) = self.repairs.get(&scored.track.asset_id) else { return scored };
        let last_seen = scored.track.last_seen_ms;
        let from = last_seen.saturating_sub(self.config.severity.history_window_days * 86_400_000);
        let extra = repairs.iter().filter(|at| **at >= from && **at <= last_seen).count() as u32;
        if extra > 0 {
            scored.recent_failures += extra;
            scored.severity = self.config.severity.score(&scored.track, &scored.asset, scored.recent_failures);
        }
        scored
    }

    fn apply_track(&mut self, scored: ScoredTrack, touched: &mut BTreeSet<String>, out: &mut Vec<LedgerOutput>) {
        use defectflow_schemas::TrackState;
        let scored = self.with_repairs(scored);
        let track = &scored.track;
        let entry = self.tracks.entry(track.track_id.clone()).or_default();
        if entry.suppressed {
            // The track of a work order closed as a false positive (or cancelled) goes on.
            let closed = entry.work_order.as_ref().and_then(|id| self.orders.get(id));
            if let Some(order) = closed.filter(|o| o.status == WorkOrderStatus::FalsePositive) {
                let until = self.suppressions.iter().find(|s| s.work_order_id == order.work_order_id);
                out.push(held_back(&scored, &order.work_order_id, until.map(|s| s.until_ms)));
            }
            return;
        }
        let current = entry.work_order.as_ref().and_then(|id| self.orders.get_mut(id));
        let reopens = match current {
            // Another camera's view of the defect: its view follows the track.
            Some(order) if order.is_open() && order.views.contains_key(&track.camera_id) => {
                order.views.insert(track.camera_id.clone(), views::view_of(track));
                touched.insert(order.work_order_id.clone());
                return;
            }
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
                let thresholds = self.config.thresholds.current();
                let open_score = thresholds.open_score(&track.camera_id, track.class).unwrap_or(self.config.open_score);
                if track.state != TrackState::Confirmed || scored.severity.score < open_score {
                    return;
                }
                // The same defect seen again after its track lapsed (the camera looked
                // away, the light changed) belongs to the work order already open for it (a
                // work order restored without evidence has no box: asset, camera and class).
                let same_defect = self.orders.values_mut().find(|o| {
                    let open = &o.scored.track;
                    o.is_open()
                        && open.asset_id == track.asset_id
                        && open.camera_id == track.camera_id
                        && open.class == track.class
                        && open.bbox.overlaps_or_unknown(&track.bbox)
                });
                if let Some(order) = same_defect {
                    entry.work_order = Some(order.work_order_id.clone());
                    order.scored = scored;
                    touched.insert(order.work_order_id.clone());
                    return;
                }
                // The same defect as another camera sees it, where the two share a region.
                if let Some(id) = views::seen_by_another_camera(&self.rois, &self.orders, track)
                    && let Some(order) = self.orders.get_mut(&id)
                {
                    order.views.insert(track.camera_id.clone(), views::view_of(track));
                    entry.work_order = Some(id.clone());
                    touched.insert(id);
                    return;
                }
                // A spot closed as a false positive opens nothing until it expires.
                if let Some(s) = self.suppressions.iter().find(|s| s.covers(track)) {
                    tracing::debug!(track = %track.track_id, false_positive = %s.work_order_id, "suppressed");
                    out.push(held_back(&scored, &s.work_order_id, Some(s.until_ms)));
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
        let opened_at = track.last_seen_ms;
        self.orders.insert(work_order_id.clone(), Order::new(work_order_id, scored, opened_at, reopens));
    }

    /// Keeps the spot of `order`, a false positive closed at `closed_at`, from opening
    /// work orders for the configured time.
    fn suppress(&mut self, order: &Order, closed_at: EpochMillis) {
        let hours = self.config.suppress_false_positive_hours;
        if hours <= 0.0 {
            return;
        }
        let track = &order.scored.track;
        self.suppressions.retain(|s| s.until_ms > closed_at);
        self.suppressions.push(Suppression {
            work_order_id: order.work_order_id.clone(),
            camera_id: track.camera_id.clone(),
            asset_id: track.asset_id.clone(),
            class: track.class,
            bbox: track.bbox,
            until_ms: closed_at + (hours * 3_600_000.0).round() as EpochMillis,
        });
    }

    /// Takes up a work order an earlier run published. An open one has its procedure and
    /// parts reserved and its technician's hours counted again, without a new revision.
    /// A closed one holds nothing (its parts' consumption comes with the stock); it is
    /// known again, so a late CMMS event for it is refused as for a closed one, and a
    /// completed one is what a recurrence of its defect reopens.
    fn restore(&mut self, restored: RestoredOrder, out: &mut Vec<LedgerOutput>) {
        let id = restored.work_order.work_order_id.clone();
        let track = restored.track();
        let RestoredOrder { work_order: wo, asset, .. } = restored;
        if self.orders.contains_key(&id) {
            return;
        }
        self.tracks.entry(wo.track_id.clone()).or_default().work_order = Some(id.clone());
        let scored = ScoredTrack { track, asset, recent_failures: 0, severity: wo.severity };
        let mut order = Order::new(id.clone(), scored, wo.detected_at_ms, wo.reopens.clone());
        order.status = wo.status;
        order.hold_reason = wo.hold_reason.clone();
        for view in &wo.other_views {
            self.tracks.entry(view.track_id.clone()).or_default().work_order = Some(id.clone());
            order.views.insert(view.camera_id.clone(), view.clone());
        }
        if !order.is_open() {
            let completed_at = (wo.status == WorkOrderStatus::Completed).then_some(wo.revised_at_ms);
            let false_positive_at = (wo.status == WorkOrderStatus::FalsePositive).then_some(wo.revised_at_ms);
            order.completed_at = completed_at;
            order.published = Some(wo);
            let key = (order.scored.track.asset_id.clone(), order.scored.track.class);
            if completed_at.is_some() {
                // Its repair counts in the asset's failure history again.
                let _ = record_repair(&mut self.repairs, &self.config, &order.scored, order.opened_at);
                // The latest completion of the asset's defect class is the one reopened.
                let later =
                    self.last_completed.get(&key).and_then(|other| self.orders.get(other)).is_none_or(|other| {
                        (other.completed_at, other.work_order_id.as_str()) < (completed_at, id.as_str())
                    });
                if later {
                    self.last_completed.insert(key, id.clone());
                }
            } else {
                if let Some(entry) = self.tracks.get_mut(&order.scored.track.track_id) {
                    entry.suppressed = true;
                }
                if let Some(closed_at) = false_positive_at {
                    self.suppress(&order, closed_at);
                }
            }
            self.orders.insert(id, order);
            return;
        }
        // Its alerts went out when it was published: at P1, or to those the rules
        // reached then.
        order.alerted = wo.severity.priority == Priority::P1;
        let routing = &self.config.notify;
        let subject = crate::notify::AlertSubject::of(wo.severity.priority, wo.defect_class, &order.scored.asset);
        for reached in routing.route(self.config.clock(), wo.revised_at_ms, &subject) {
            order.told.insert((reached.rule.to_owned(), String::new()));
            order.told.extend(reached.recipients.iter().map(|r| (reached.rule.to_owned(), r.id.clone())));
        }
        let open_p1 = order.status == WorkOrderStatus::Open && order.alerted;
        let revised_at = wo.revised_at_ms;
        let procedure = self.dispatcher.procedure(&order.scored.asset.asset_class, wo.defect_class).cloned();
        self.orders.insert(id.clone(), order);
        self.set_procedure(&id, procedure, out);
        // The CMMS's choice stands where work has started; otherwise planning checks it.
        let reason = if wo.status == WorkOrderStatus::InProgress { "started" } else { "restored" };
        self.set_technician(&id, wo.technician_id.clone(), reason, out);
        if let Some(order) = self.orders.get_mut(&id) {
            order.published = Some(wo);
        }
        if open_p1 {
            // Unacknowledged still: it escalates as if first published at P1 then.
            self.watch_escalation(revised_at, &id);
        }
    }
}

/// Counts a completed repair (corrective or emergency work; inspections and predictive
/// work are not failures) in its asset's history, its defect first seen at `seen_ms`;
/// whether it was a failure.
fn record_repair(
    repairs: &mut HashMap<String, Vec<EpochMillis>>,
    config: &WorkOrderConfig,
    scored: &ScoredTrack,
    seen_ms: EpochMillis,
) -> bool {
    let work_type = config.work_types.of(scored.track.class, scored.severity.priority);
    let failure = matches!(work_type, WorkType::Corrective | WorkType::Emergency);
    if failure {
        repairs.entry(scored.track.asset_id.clone()).or_default().push(seen_ms);
    }
    failure
}
