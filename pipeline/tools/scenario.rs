//! Work-order scenarios: a TOML file of timed frames, detections, CMMS events and stock
//! movements over a plant's reference data, replayed through the work-order dataflow.
//! The golden tests and `defectflow replay` run them.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use anyhow::Context;
use defectflow_schemas::{
    Asset, BoundingBox, Camera, DefectClass, Detection, Emitted, FailureRecord, FrameObservation, StockMovement,
    Technician, WoEvent, WoEventKind,
};
use serde::{Deserialize, Serialize};

use std::collections::BTreeMap;

use defectflow_operators::inventory::{StockLevel, StockMeasure};

use crate::reference::PlantReference;
use crate::sinks::audit::AuditRow;
use crate::workflow::{self, Collected, WorkflowConfig};

/// A scenario file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// What the scenario shows.
    pub description: String,
    /// Event time of second 0, in milliseconds since the Unix epoch (UTC).
    pub start_ms: u64,
    /// Reference-data folder, relative to the scenario file.
    pub reference: PathBuf,
    #[serde(default, flatten)]
    pub config: WorkflowConfig,
    /// Runs of frames from a camera.
    #[serde(default)]
    pub frames: Vec<FrameRun>,
    /// Defects the model reports in those frames.
    #[serde(default)]
    pub defects: Vec<DefectRun>,
    #[serde(default)]
    pub events: Vec<ScenarioEvent>,
    #[serde(default)]
    pub movements: Vec<ScenarioMovement>,
    /// Reference data changed while running.
    #[serde(default)]
    pub changes: Vec<ReferenceChange>,
}

/// A change of reference data at a time: a record replaced (matched by id) or added, or
/// a technician removed.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReferenceChange {
    pub at_s: f64,
    #[serde(default)]
    pub asset: Option<Asset>,
    #[serde(default)]
    pub technician: Option<Technician>,
    #[serde(default)]
    pub remove_technician: Option<String>,
    #[serde(default)]
    pub failure: Option<FailureRecord>,
    /// A camera and its ROIs, added or replacing the one with its id.
    #[serde(default)]
    pub camera: Option<Camera>,
}

/// A camera sending frames at `fps` from `from_s` until (not including) `until_s`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FrameRun {
    pub camera: String,
    pub from_s: f64,
    pub until_s: f64,
    pub fps: f64,
}

/// A defect detected in a camera's frames between two times, its box growing linearly
/// from `box_from` to `box_until` (`[x, y, width, height]`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DefectRun {
    pub camera: String,
    pub class: DefectClass,
    pub from_s: f64,
    pub until_s: f64,
    pub box_from: [f32; 4],
    pub box_until: [f32; 4],
    /// Detected in one frame of every `seen_every` (1: every frame).
    #[serde(default = "one")]
    pub seen_every: u64,
    /// Which frame of every `seen_every` it is detected in (0: the first): two runs with
    /// phases 0 and 1 of `seen_every = 2` take turns.
    #[serde(default)]
    pub phase: u64,
    #[serde(default = "confidence")]
    pub confidence: f32,
}

fn one() -> u64 {
    1
}

fn confidence() -> f32 {
    0.9
}

/// A CMMS status event.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScenarioEvent {
    pub at_s: f64,
    pub work_order_id: String,
    pub event: WoEventKind,
    #[serde(default)]
    pub technician_id: Option<String>,
    /// Why the work is on hold or cancelled.
    #[serde(default)]
    pub reason: Option<String>,
    /// Labour hours booked, with `completed`.
    #[serde(default)]
    pub actual_hours: Option<f64>,
    /// Hours the asset was down for the repair, with `completed`.
    #[serde(default)]
    pub downtime_hours: Option<f64>,
}

/// Stock received or corrected.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScenarioMovement {
    pub at_s: f64,
    pub part_id: String,
    pub delta: i64,
    #[serde(default)]
    pub reason: String,
}

/// Everything a scenario puts into the dataflow, by time.
#[derive(Debug, Default)]
struct Timeline {
    observations: Vec<FrameObservation>,
    events: Vec<WoEvent>,
    movements: Vec<StockMovement>,
}

impl Scenario {
    /// Reads a scenario file; the error names the file and the field.
    pub fn load(path: &Path) -> anyhow::Result<(Scenario, PlantReference)> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        let scenario: Scenario = toml::from_str(&text).with_context(|| format!("{}", path.display()))?;
        let dir = path.parent().unwrap_or(Path::new(".")).join(&scenario.reference);
        let reference = PlantReference::load(&dir)?;
        Ok((scenario, reference))
    }

    fn at(&self, seconds: f64) -> u64 {
        self.start_ms + (seconds * 1000.0).round() as u64
    }

    /// The CMMS events the scenario sends, at their times.
    pub fn wo_events(&self) -> Vec<WoEvent> {
        self.timeline_events()
    }

    fn timeline_events(&self) -> Vec<WoEvent> {
        self.events
            .iter()
            .map(|e| WoEvent {
                work_order_id: e.work_order_id.clone(),
                event: e.event,
                at_ms: self.at(e.at_s),
                technician_id: e.technician_id.clone(),
                note: None,
                reason: e.reason.clone(),
                actual_hours: e.actual_hours,
                downtime_hours: e.downtime_hours,
            })
            .collect()
    }

    fn timeline(&self) -> Timeline {
        let mut timeline = Timeline::default();
        for run in &self.frames {
            let count = ((run.until_s - run.from_s) * run.fps).ceil().max(0.0) as u64;
            for k in 0..count {
                let seconds = run.from_s + k as f64 / run.fps;
                let frame_index = (seconds * run.fps).round() as u64;
                let capture_ms = self.at(seconds);
                let detections = self
                    .defects
                    .iter()
                    .filter(|d| d.camera == run.camera && seconds >= d.from_s && seconds < d.until_s)
                    .filter(|d| {
                        let k = ((seconds - d.from_s) * run.fps).round() as u64;
                        (k + d.seen_every.max(1) - d.phase % d.seen_every.max(1)).is_multiple_of(d.seen_every.max(1))
                    })
                    .map(|d| {
                        let progress = ((seconds - d.from_s) / (d.until_s - d.from_s)) as f32;
                        let lerp = |i: usize| d.box_from[i] + (d.box_until[i] - d.box_from[i]) * progress;
                        let bbox = BoundingBox { x: lerp(0), y: lerp(1), width: lerp(2), height: lerp(3) };
                        Detection {
                            camera_id: run.camera.clone(),
                            frame_index,
                            capture_ms,
                            class: d.class,
                            confidence: d.confidence,
                            bbox,
                            area_px: (bbox.width * bbox.height).round(),
                            model_version: "scenario".into(),
                            shadow: false,
                        }
                    })
                    .collect();
                timeline.observations.push(FrameObservation {
                    camera_id: run.camera.clone(),
                    frame_index,
                    capture_ms,
                    detections,
                });
            }
        }
        timeline.events = self.timeline_events();
        for m in &self.movements {
            timeline.movements.push(StockMovement {
                part_id: m.part_id.clone(),
                delta: m.delta,
                at_ms: self.at(m.at_s),
                reason: m.reason.clone(),
            });
        }
        timeline.observations.sort_by_key(|o| o.capture_ms);
        timeline
    }
}

/// One line of a replay's output.
#[derive(Debug, Serialize)]
#[serde(rename_all = "snake_case")]
enum Line<'a> {
    /// Final open hours of a technician.
    Workload { technician_id: &'a str, open_hours: f64 },
    /// Final stock of a part.
    Stock { part_id: &'a str, on_hand: i64, reserved: i64, available: i64 },
    #[serde(untagged)]
    Message(&'a Emitted),
}

/// What a replay produced, on the process that hosts worker 0.
#[derive(Debug)]
pub struct Replayed {
    /// Every message in order, then the final workload and stock views, as JSON lines.
    pub lines: Vec<String>,
    /// The messages themselves.
    pub messages: Vec<Emitted>,
    /// The audit log's rows that are no message: failures repaired, sightings held back.
    pub failures: Vec<FailureRecord>,
    pub suppressed: Vec<defectflow_schemas::SuppressedTrack>,
}

/// Replays the scenario on the given timely configuration. Returns what came out on the
/// process that hosts worker 0, and `None` on the others.
pub fn replay(
    scenario: &Scenario,
    reference: &PlantReference,
    timely_config: timely::Config,
) -> anyhow::Result<Option<Replayed>> {
    let scenario = scenario.clone();
    let reference = reference.clone();
    let guards = timely::execute(timely_config, move |worker| {
        let collected = Rc::new(RefCell::new(Collected::default()));
        let config = scenario.config.clone();
        let sink = collected.clone();
        let (mut inputs, probe) = worker.dataflow::<u64, _, _>(move |scope| workflow::build(scope, config, sink));
        if worker.index() == 0 {
            let timeline = scenario.timeline();
            inputs.load(&reference, 0);
            let mut assets = reference.assets.clone();
            let mut technicians = reference.technicians.clone();
            let mut cameras = reference.cameras.clone();
            let mut changes: Vec<(u64, ReferenceChange)> =
                scenario.changes.iter().map(|c| (scenario.at(c.at_s), c.clone())).collect();
            changes.sort_by_key(|(at, _)| *at);
            let mut changes = changes.into_iter().peekable();
            let mut events = timeline.events.into_iter().peekable();
            let mut movements = timeline.movements.into_iter().peekable();
            let mut observations = timeline.observations.into_iter().peekable();
            loop {
                let next = [
                    observations.peek().map(|o| o.capture_ms),
                    events.peek().map(|e| e.at_ms),
                    movements.peek().map(|m| m.at_ms),
                    changes.peek().map(|(at, _)| *at),
                ]
                .into_iter()
                .flatten()
                .min();
                let Some(time) = next else { break };
                inputs.advance_to(time);
                while let Some(o) = observations.next_if(|o| o.capture_ms == time) {
                    inputs.observations.send(o);
                }
                while let Some(e) = events.next_if(|e| e.at_ms == time) {
                    inputs.plant.events.send(e);
                }
                while let Some(m) = movements.next_if(|m| m.at_ms == time) {
                    inputs.plant.movements.insert(m);
                }
                while let Some((_, change)) = changes.next_if(|(at, _)| *at == time) {
                    if let Some(asset) = change.asset {
                        upsert(&mut assets, asset, |a| &a.asset_id, &mut inputs.plant.assets);
                    }
                    if let Some(technician) = change.technician {
                        upsert(&mut technicians, technician, |t| &t.technician_id, &mut inputs.plant.technicians);
                    }
                    if let Some(id) = change.remove_technician {
                        for gone in technicians.extract_if(.., |t| t.technician_id == id) {
                            inputs.plant.technicians.remove(gone);
                        }
                    }
                    if let Some(failure) = change.failure {
                        inputs.plant.failures.insert(failure);
                    }
                    if let Some(camera) = change.camera {
                        upsert(&mut cameras, camera, |c| &c.camera_id, &mut inputs.plant.cameras);
                    }
                }
                worker.step();
            }
        }
        drop(inputs);
        while !probe.done() {
            worker.step();
        }
        (worker.index() == 0).then(|| {
            let collected = collected.borrow();
            let (mut failures, mut suppressed) = (Vec::new(), Vec::new());
            for (_, row) in &collected.audit {
                match row {
                    AuditRow::Failure(failure) => failures.push(failure.clone()),
                    AuditRow::Suppressed(held) => suppressed.push(held.clone()),
                    _ => {}
                }
            }
            Replayed { lines: lines(&collected), messages: collected.messages.clone(), failures, suppressed }
        })
    })
    .map_err(|error| anyhow::anyhow!("cannot start the dataflow: {error}"))?;
    let mut out = None;
    for result in guards.join() {
        if let Some(replayed) = result.map_err(|error| anyhow::anyhow!("a worker failed: {error}"))? {
            out = Some(replayed);
        }
    }
    Ok(out)
}

/// Replaces the record with the same id (retracting the old one) or adds it.
fn upsert<T: Clone + Ord + std::fmt::Debug + 'static>(
    current: &mut Vec<T>,
    record: T,
    id: impl Fn(&T) -> &String,
    input: &mut differential_dataflow::input::InputSession<u64, T, isize>,
) {
    if let Some(old) = current.iter_mut().find(|r| id(r) == id(&record)) {
        input.remove(old.clone());
        *old = record.clone();
    } else {
        current.push(record.clone());
    }
    input.insert(record);
}

fn lines(collected: &Collected) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut push = |line: Line| out.push(serde_json::to_string(&line).unwrap_or_default());
    for message in &collected.messages {
        push(Line::Message(message));
    }
    for ((technician_id, hours), count) in &collected.workload {
        if *count > 0 {
            push(Line::Workload { technician_id, open_hours: *hours as f64 / 100.0 });
        }
    }
    let mut levels: BTreeMap<&str, StockLevel> = BTreeMap::new();
    for (((part_id, measure), value), count) in &collected.stock {
        if *count > 0 {
            let level = levels.entry(part_id).or_default();
            match measure {
                StockMeasure::OnHand => level.on_hand = *value,
                StockMeasure::Reserved => level.reserved = *value,
                StockMeasure::Available => level.available = *value,
            }
        }
    }
    for (part_id, level) in levels {
        push(Line::Stock { part_id, on_hand: level.on_hand, reserved: level.reserved, available: level.available });
    }
    out
}
