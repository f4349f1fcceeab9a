//! Small dataflows through `track`, `severity` and `derive` with the exact rows and diffs
//! expected, retractions included.

use defectflow_operators::at_time::AtTime;
use defectflow_operators::derive::{Derive, LedgerInputs, LedgerOutput, WorkOrderConfig};
use defectflow_operators::severity::{Score, ScoredTrack, SeverityConfig};
use defectflow_operators::track::{Track, TrackConfig};
use defectflow_schemas::*;
use differential_dataflow::AsCollection;
use timely::dataflow::operators::Capture;
use timely::dataflow::operators::capture::{Event, Extract};
use timely::dataflow::operators::vec::ToStream;

const T0: u64 = 1_767_600_000_000; // 2026-01-05T08:00:00Z

fn camera() -> Camera {
    Camera {
        camera_id: "cam".into(),
        rois: vec![Roi {
            asset_id: "P-1".into(),
            x: 0,
            y: 0,
            width: 200,
            height: 200,
            mm_per_px: None,
            region: None,
            homography: None,
        }],
    }
}

fn frame(i: u64, boxes: &[(f32, f32, f32)]) -> FrameObservation {
    let capture_ms = T0 + i * 1000;
    FrameObservation {
        camera_id: "cam".into(),
        frame_index: i,
        capture_ms,
        detections: boxes
            .iter()
            .map(|&(x, y, w)| Detection {
                camera_id: "cam".into(),
                frame_index: i,
                capture_ms,
                class: DefectClass::Crack,
                confidence: 0.9,
                bbox: BoundingBox { x, y, width: w, height: 10.0 },
                area_px: w * 10.0,
                model_version: "m".into(),
                shadow: false,
            })
            .collect(),
    }
}

fn tracks_of(frames: Vec<FrameObservation>, config: TrackConfig) -> Vec<((String, DefectTrack), u64, isize)> {
    let out = timely::example(move |scope| {
        let cameras = vec![(camera(), 0u64, 1isize)].to_stream(scope).as_collection();
        let frames = frames.to_stream(scope).at_time(|f| f.capture_ms);
        frames.track(cameras, config).inner.capture()
    });
    let mut rows: Vec<_> = out.extract().into_iter().flat_map(|(_, rows)| rows).collect();
    rows.sort_by_key(|((_, track), time, diff)| (*time, *diff, track.track_id.clone()));
    rows
}

#[test]
fn a_track_is_confirmed_grows_and_resolves_with_each_snapshot_retracting_the_last() {
    let config = TrackConfig {
        confirm_hits: 2,
        confirm_window_frames: 3,
        resolve_after_ms: 3000,
        area_step: 1.5,
        refresh_ms: 1_000_000,
        ..TrackConfig::default()
    };
    // Seen in frames 0–3 growing 20 → 40 px wide, then clear frames 4–8.
    let mut frames: Vec<_> = (0..4).map(|i| frame(i, &[(10.0, 10.0, 20.0 + 7.0 * i as f32)])).collect();
    frames.extend((4..9).map(|i| frame(i, &[])));
    let rows = tracks_of(frames, config);
    let summary: Vec<_> =
        rows.iter().map(|((_, t), time, diff)| ((time - T0) / 1000, *diff, t.state, t.area_px)).collect();
    assert_eq!(
        summary,
        vec![
            (1, 1, TrackState::Confirmed, 270.0), // confirmed on its second sighting
            (3, -1, TrackState::Confirmed, 270.0),
            (3, 1, TrackState::Confirmed, 410.0), // 410 ≥ 1.5 × 270
            (6, -1, TrackState::Confirmed, 410.0),
            (6, 1, TrackState::Resolved, 410.0), // last seen at 3, unseen for 3 s
        ]
    );
    let ids: std::collections::BTreeSet<_> = rows.iter().map(|((_, t), _, _)| t.track_id.clone()).collect();
    assert_eq!(ids.len(), 1, "one physical defect is one track");
    assert!(rows.iter().all(|((asset, _), _, _)| asset == "P-1"));
}

#[test]
fn a_resolved_track_is_forgotten_after_the_retention_time() {
    let config = TrackConfig {
        confirm_hits: 2,
        confirm_window_frames: 3,
        resolve_after_ms: 2000,
        forget_resolved_after_ms: 3000,
        ..TrackConfig::default()
    };
    let mut frames: Vec<_> = (0..2).map(|i| frame(i, &[(10.0, 10.0, 20.0)])).collect();
    frames.extend((2..8).map(|i| frame(i, &[])));
    let rows = tracks_of(frames, config);
    let summary: Vec<_> = rows.iter().map(|((_, t), time, diff)| ((time - T0) / 1000, *diff, t.state)).collect();
    assert_eq!(
        summary,
        vec![
            (1, 1, TrackState::Confirmed),
            (3, -1, TrackState::Confirmed),
            (3, 1, TrackState::Resolved),  // unseen since 1 s, for 2 s
            (6, -1, TrackState::Resolved), // 3 s after resolution: gone from the collection
        ]
    );
}

#[test]
fn flicker_below_the_confirmation_threshold_makes_no_track() {
    // Seen in one frame of three; confirmation needs 2 of 3.
    let frames = (0..30).map(|i| if i % 3 == 0 { frame(i, &[(10.0, 10.0, 20.0)]) } else { frame(i, &[]) }).collect();
    let config = TrackConfig { confirm_hits: 2, confirm_window_frames: 3, ..TrackConfig::default() };
    assert_eq!(tracks_of(frames, config), vec![]);
}

#[test]
fn two_separate_defects_on_one_asset_are_two_tracks_and_outside_the_roi_is_none() {
    let frames = (0..3).map(|i| frame(i, &[(10.0, 10.0, 20.0), (150.0, 150.0, 20.0), (500.0, 500.0, 20.0)])).collect();
    let config = TrackConfig { confirm_hits: 2, confirm_window_frames: 3, ..TrackConfig::default() };
    let rows = tracks_of(frames, config);
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_ne!(rows[0].0.1.track_id, rows[1].0.1.track_id);
}

fn scored(area: f32, last_seen_s: u64) -> DefectTrack {
    DefectTrack {
        track_id: "TR-1".into(),
        camera_id: "cam".into(),
        asset_id: "P-1".into(),
        class: DefectClass::Crack,
        state: TrackState::Confirmed,
        first_seen_ms: T0,
        last_seen_ms: T0 + last_seen_s * 1000,
        hits: 10,
        bbox: BoundingBox { x: 0.0, y: 0.0, width: 40.0, height: 10.0 },
        area_px: area,
        size_mm: Some(60.0),
        growth_px_per_min: 0.0,
        best_frame_index: 0,
        best_bbox: BoundingBox { x: 0.0, y: 0.0, width: 40.0, height: 10.0 },
        best_capture_ms: T0,
        model_version: "m".into(),
        shadow: false,
        evidence: None,
    }
}

#[test]
fn severity_rescores_when_a_failure_is_recorded_and_retracts_the_old_score() {
    let asset = Asset {
        asset_id: "P-1".into(),
        name: "Pump".into(),
        asset_class: "pump".into(),
        criticality: 3,
        zone: "A".into(),
    };
    let failure = FailureRecord {
        asset_id: "P-1".into(),
        failed_at_ms: T0 - 86_400_000,
        defect_class: None,
        downtime_hours: 2.0,
        actual_hours: None,
        work_order_id: None,
        repaired_at_ms: None,
    };
    let out = timely::example(move |scope| {
        let tracks = vec![(("P-1".to_string(), scored(400.0, 1)), T0 + 1000, 1isize)].to_stream(scope).as_collection();
        let assets = vec![(asset, 0u64, 1isize)].to_stream(scope).as_collection();
        let failures = vec![(failure, T0 + 5000, 1isize)].to_stream(scope).as_collection();
        tracks.severity(assets, failures, SeverityConfig::default()).inner.capture()
    });
    let mut rows: Vec<(f64, u64, isize)> = out
        .extract()
        .into_iter()
        .flat_map(|(_, rows)| rows)
        .map(|(s, time, diff): (ScoredTrack, u64, isize)| (s.severity.score, time - T0, diff))
        .collect();
    rows.sort_by_key(|row| (row.1, row.2));
    // 60 of 100 mm → 21 of 35; criticality 3 → 12.5 of 25; then one failure → +5 of 15.
    assert_eq!(rows, vec![(33.5, 1000, 1), (33.5, 5000, -1), (38.5, 5000, 1)]);
}

/// A pump, the welding procedure for its cracks (3 rods), a welder on the day shift.
fn pump_plant() -> (Asset, Procedure, Technician) {
    let asset = Asset {
        asset_id: "P-1".into(),
        name: "Pump".into(),
        asset_class: "pump".into(),
        criticality: 3,
        zone: "A".into(),
    };
    let procedure = Procedure {
        procedure_id: "PR-1".into(),
        asset_class: "pump".into(),
        defect_class: DefectClass::Crack,
        title: "Weld".into(),
        required_skill: "welding".into(),
        estimated_hours: 2.5,
        steps: vec!["Weld it".into()],
        parts: vec![PartRequirement { part_id: "ROD".into(), quantity: 3 }],
    };
    let technician = Technician {
        technician_id: "T-1".into(),
        name: "Tess".into(),
        skills: vec!["welding".into()],
        zone: "A".into(),
        shift: Shift { start_hour: 6, end_hour: 18 },
    };
    (asset, procedure, technician)
}

#[test]
fn a_completed_work_order_leaves_the_workload_and_releases_its_parts() {
    let (asset, procedure, technician) = pump_plant();
    let track = scored(400.0, 1);
    let severity = SeverityConfig::default().score(&track, &asset, 0);
    let work_order_id = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    // Run once to learn the stable id, then close it with a `completed` event.
    for pass in 0..2 {
        let (asset, procedure, technician, track) =
            (asset.clone(), procedure.clone(), technician.clone(), track.clone());
        let id = work_order_id.lock().expect("id").clone();
        let out = timely::example(move |scope| {
            let scored = vec![(ScoredTrack { track, asset, recent_failures: 0, severity }, T0 + 1000, 1isize)]
                .to_stream(scope)
                .as_collection();
            let events: Vec<WoEvent> = if pass == 1 {
                vec![WoEvent {
                    work_order_id: id,
                    event: WoEventKind::Completed,
                    at_ms: T0 + 9000,
                    technician_id: None,
                    note: None,
                    reason: None,
                    actual_hours: None,
                    downtime_hours: None,
                }]
            } else {
                vec![]
            };
            let inputs = LedgerInputs {
                events: events.to_stream(scope).at_time(|e| e.at_ms),
                technicians: vec![(technician, 0u64, 1isize)].to_stream(scope).as_collection(),
                procedures: vec![(procedure, 0u64, 1isize)].to_stream(scope).as_collection(),
                cameras: vec![(camera(), 0u64, 1isize)].to_stream(scope).as_collection(),
                inventory: Vec::<(InventoryItem, u64, isize)>::new().to_stream(scope).as_collection(),
                movements: vec![(
                    StockMovement { part_id: "ROD".into(), delta: 10, at_ms: 0, reason: "initial".into() },
                    0u64,
                    1isize,
                )]
                .to_stream(scope)
                .as_collection(),
                restored: Vec::new().to_stream(scope),
            };
            scored.work_orders(inputs, WorkOrderConfig::default()).outputs.capture()
        });
        // In emission order (`extract` would sort, and outputs have no order).
        let outputs: Vec<(u64, LedgerOutput)> = out
            .try_iter()
            .filter_map(|event| {
                if let Event::Messages(t, rows) = event { Some((*t.least().expect("a time"), rows)) } else { None }
            })
            .flat_map(|(t, rows)| rows.into_iter().map(move |r| (t - T0.min(t), r)))
            .collect();
        let revisions: Vec<_> = outputs
            .iter()
            .filter_map(|(_, o)| if let LedgerOutput::Revision(w) = o { Some(w) } else { None })
            .collect();
        if pass == 0 {
            assert_eq!(revisions.len(), 1);
            assert!(revisions[0].work_order_id.starts_with("WO-"));
            *work_order_id.lock().expect("id") = revisions[0].work_order_id.clone();
            continue;
        }
        let id = work_order_id.lock().expect("id").clone();
        let rows: Vec<_> = outputs
            .iter()
            .filter_map(|(t, o)| match o {
                LedgerOutput::Workload(tech, wo, hours, diff) => {
                    Some((*t, format!("workload {tech} {wo} {hours} {diff}")))
                }
                LedgerOutput::Reservation(part, wo, qty, diff) => {
                    Some((*t, format!("reserve {part} {wo} {qty} {diff}")))
                }
                LedgerOutput::Consumed(m) => Some((*t, format!("consumed {} {}", m.part_id, m.delta))),
                LedgerOutput::Revision(w) => {
                    Some((*t, format!("revision {} {:?} {:?}", w.revision, w.revision_kind, w.status)))
                }
                _ => None,
            })
            .collect();
        assert_eq!(
            rows,
            vec![
                (1000, format!("reserve ROD {id} 3 1")),
                (1000, format!("workload T-1 {id} 250 1")),
                (1000, "revision 1 Created Open".to_string()),
                (9000, format!("workload T-1 {id} 250 -1")),
                (9000, format!("reserve ROD {id} 3 -1")),
                (9000, "consumed ROD -3".to_string()),
                (9000, "revision 2 Closed Completed".to_string()),
            ]
        );
    }
}

/// A track of `asset`, scored as the severity join would, as the ledger takes it.
fn scored_input(track: DefectTrack, asset: &Asset) -> defectflow_operators::derive::LedgerInput {
    let severity = SeverityConfig::default().score(&track, asset, 0);
    let scored = ScoredTrack { track, asset: asset.clone(), recent_failures: 0, severity };
    defectflow_operators::derive::LedgerInput::Track(Box::new(scored))
}

/// The revisions among a ledger step's outputs, in order.
fn revisions_of(outputs: &[LedgerOutput]) -> Vec<WorkOrder> {
    outputs.iter().filter_map(|o| if let LedgerOutput::Revision(w) = o { Some((**w).clone()) } else { None }).collect()
}

/// A restarted run takes up the work order its predecessor left open: the same parts
/// and technician hours are held again without a new revision, and the same defect seen
/// by a new track continues that work order instead of opening a second one.
#[test]
fn a_restored_work_order_holds_its_parts_and_technician_and_the_same_defect_continues_it() {
    use defectflow_operators::derive::{Ledger, LedgerInput, RestoredOrder};
    let (asset, procedure, technician) = pump_plant();
    let reference = || {
        vec![
            LedgerInput::Technician(technician.clone(), 1),
            LedgerInput::Procedure(procedure.clone(), 1),
            LedgerInput::Movement(
                StockMovement { part_id: "ROD".into(), delta: 10, at_ms: 0, reason: "initial".into() },
                1,
            ),
        ]
    };
    let views = |outputs: &[LedgerOutput]| -> Vec<String> {
        outputs
            .iter()
            .filter_map(|o| match o {
                LedgerOutput::Workload(t, wo, hours, diff) => Some(format!("workload {t} {wo} {hours} {diff}")),
                LedgerOutput::Reservation(p, wo, qty, diff) => Some(format!("reserve {p} {wo} {qty} {diff}")),
                _ => None,
            })
            .collect()
    };

    // The first run opens the work order.
    let mut first = Ledger::new(WorkOrderConfig::default());
    first.step(0, reference());
    let opened = first.step(T0 + 1000, vec![scored_input(scored(400.0, 1), &asset)]);
    let [created] = revisions_of(&opened).try_into().expect("one revision");
    assert_eq!(created.technician_id.as_deref(), Some("T-1"));

    // The restart: the same reference, then the work order as the topic holds it.
    let mut second = Ledger::new(WorkOrderConfig::default());
    let mut start = reference();
    start.push(LedgerInput::Restore(Box::new(RestoredOrder {
        work_order: created.clone(),
        asset: asset.clone(),
        measures: None,
    })));
    let restored = second.step(0, start);
    assert_eq!(revisions_of(&restored), vec![], "restoring publishes nothing");
    assert_eq!(views(&restored), views(&opened), "the same parts and hours are held again");

    // The defect, seen by the new run's tracker under another track id.
    let mut again = scored(400.0, 5);
    again.track_id = "TR-after-restart".into();
    let continued = revisions_of(&second.step(T0 + 5000, vec![scored_input(again, &asset)]));
    assert_eq!(continued.len(), 1, "{continued:?}");
    assert_eq!(continued[0].work_order_id, created.work_order_id, "the same work order goes on");
    assert_eq!(continued[0].revision, 2);
    assert_eq!(continued[0].track_id, "TR-after-restart");
    assert_eq!(continued[0].technician_id.as_deref(), Some("T-1"));
}

/// A work order published at P1 sent its alert; the restarted run that takes it up and
/// sees its defect grow revises it, under the same track, and sends no second alert.
#[test]
fn a_restored_p1_work_order_is_not_alerted_again() {
    use defectflow_operators::derive::{Ledger, LedgerInput, RestoredOrder, TrackMeasures};
    let (asset, procedure, technician) = pump_plant();
    let reference =
        || vec![LedgerInput::Technician(technician.clone(), 1), LedgerInput::Procedure(procedure.clone(), 1)];
    let p1 = |track: DefectTrack| {
        let mut severity = SeverityConfig::default().score(&track, &asset, 0);
        severity.priority = Priority::P1;
        LedgerInput::Track(Box::new(ScoredTrack { track, asset: asset.clone(), recent_failures: 0, severity }))
    };
    let alerts = |outputs: &[LedgerOutput]| outputs.iter().filter(|o| matches!(o, LedgerOutput::Alert(_))).count();

    let mut first = Ledger::new(WorkOrderConfig::default());
    first.step(0, reference());
    let opened = first.step(T0 + 1000, vec![p1(scored(400.0, 1))]);
    assert_eq!(alerts(&opened), 1, "{opened:?}");
    let Some(LedgerOutput::Revision(created)) = opened.iter().find(|o| matches!(o, LedgerOutput::Revision(_))) else {
        panic!("no revision: {opened:?}")
    };

    let mut second = Ledger::new(WorkOrderConfig::default());
    let mut start = reference();
    let measures = TrackMeasures {
        last_seen_ms: T0 + 1000,
        hits: 10,
        area_px: 400.0,
        size_mm: Some(60.0),
        growth_px_per_min: 0.0,
        resolved: false,
    };
    let restored = RestoredOrder { work_order: (**created).clone(), asset: asset.clone(), measures: Some(measures) };
    assert_eq!(restored.track().area_px, 400.0, "the track goes on from the audit log's measures");
    start.push(LedgerInput::Restore(Box::new(restored)));
    second.step(0, start);
    // Grown past the size step: a revision, still P1, still the same track.
    let grown = second.step(T0 + 9000, vec![p1(scored(800.0, 9))]);
    let revisions = revisions_of(&grown);
    assert_eq!(revisions.len(), 1, "{grown:?}");
    assert_eq!((revisions[0].revision, revisions[0].track_id.as_str()), (2, "TR-1"));
    assert_eq!(revisions[0].detected_at_ms, created.detected_at_ms);
    assert_eq!(alerts(&grown), 0, "the alert went out before the restart: {grown:?}");
}

/// A restart knows the work orders completed before it: the defect coming back opens a
/// work order that reopens the completed one, as without the restart, and a late CMMS
/// event for the completed one is refused as for a closed work order. The completion
/// records the failure it repaired with the hours the CMMS reported (negative hours are
/// refused, naming the field).
#[test]
fn a_work_order_completed_before_a_restart_is_reopened_by_its_defect_coming_back() {
    use defectflow_operators::derive::{Ledger, LedgerInput, RestoredOrder};
    let (asset, procedure, technician) = pump_plant();
    let reference =
        || vec![LedgerInput::Technician(technician.clone(), 1), LedgerInput::Procedure(procedure.clone(), 1)];
    let completed = |id: &str, at_ms: u64| WoEvent {
        work_order_id: id.into(),
        event: WoEventKind::Completed,
        at_ms,
        technician_id: None,
        note: None,
        reason: None,
        actual_hours: None,
        downtime_hours: None,
    };

    let mut first = Ledger::new(WorkOrderConfig::default());
    first.step(0, reference());
    let [created] =
        revisions_of(&first.step(T0 + 1000, vec![scored_input(scored(400.0, 1), &asset)])).try_into().expect("one");
    let negative = WoEvent { downtime_hours: Some(-1.0), ..completed(&created.work_order_id, T0 + 1500) };
    let refused = first.step(T0 + 1500, vec![LedgerInput::Event(negative)]);
    let [LedgerOutput::DeadLetter(letter)] = refused.as_slice() else { panic!("{refused:?}") };
    assert!(letter.reason.contains("downtime_hours must be a number of hours, 0 or more, got -1"), "{letter:?}");
    let reported =
        WoEvent { actual_hours: Some(2.5), downtime_hours: Some(1.25), ..completed(&created.work_order_id, T0 + 2000) };
    let completion = first.step(T0 + 2000, vec![LedgerInput::Event(reported.clone())]);
    let [closed] = revisions_of(&completion).try_into().expect("the closing revision");
    assert_eq!(closed.status, WorkOrderStatus::Completed);
    let failures: Vec<&FailureRecord> =
        completion.iter().filter_map(|o| if let LedgerOutput::Failure(f) = o { Some(f) } else { None }).collect();
    assert_eq!(
        failures,
        vec![&FailureRecord {
            asset_id: asset.asset_id.clone(),
            failed_at_ms: created.detected_at_ms,
            defect_class: Some(created.defect_class),
            downtime_hours: 1.25,
            actual_hours: Some(2.5),
            work_order_id: Some(created.work_order_id.clone()),
            repaired_at_ms: Some(T0 + 2000),
        }],
        "{completion:?}"
    );
    assert!(completion.contains(&LedgerOutput::Accepted(reported)), "the event is audited with its hours");

    let mut second = Ledger::new(WorkOrderConfig::default());
    let mut start = reference();
    start.push(LedgerInput::Restore(Box::new(RestoredOrder {
        work_order: closed.clone(),
        asset: asset.clone(),
        measures: None,
    })));
    let restored = second.step(0, start);
    assert_eq!(restored, vec![], "a closed work order holds nothing and publishes nothing");
    let late = second.step(T0 + 3000, vec![LedgerInput::Event(completed(&created.work_order_id, T0 + 3000))]);
    let [LedgerOutput::DeadLetter(letter)] = late.as_slice() else { panic!("{late:?}") };
    assert!(letter.reason.contains("already closed (completed)"), "{letter:?}");
    // Seen again under a new track after the recheck time: a new work order, reopening it.
    let mut again = scored(400.0, 200);
    again.track_id = "TR-after-restart".into();
    let reopened = revisions_of(&second.step(T0 + 200_000, vec![scored_input(again, &asset)]));
    assert_eq!(reopened.len(), 1, "{reopened:?}");
    assert_ne!(reopened[0].work_order_id, created.work_order_id);
    assert_eq!(reopened[0].reopens.as_deref(), Some(created.work_order_id.as_str()));
}

/// A work order put on hold keeps its technician and its parts, but its hours leave the
/// technician's open workload until it resumes; a cancelled one releases both, consumes
/// nothing and its defect does not open another. Every revision carries its work type
/// and due date from the configured targets.
#[test]
fn on_hold_frees_the_hours_but_keeps_the_parts_and_cancelled_releases_both() {
    use defectflow_operators::derive::{Ledger, LedgerInput};
    let (asset, procedure, technician) = pump_plant();
    let event = |id: &str, kind: WoEventKind, at_ms: u64, reason: Option<&str>| {
        LedgerInput::Event(WoEvent {
            work_order_id: id.into(),
            event: kind,
            at_ms,
            technician_id: None,
            note: None,
            reason: reason.map(Into::into),
            actual_hours: None,
            downtime_hours: None,
        })
    };
    let mut config = WorkOrderConfig::default();
    config.due_hours.insert(Priority::P3, 10.0);
    config.due_hours.insert(Priority::P4, 10.0);
    config.work_types.by_class.insert(DefectClass::Crack, WorkType::Predictive);
    let mut ledger = Ledger::new(config);
    ledger.step(
        0,
        vec![
            LedgerInput::Technician(technician.clone(), 1),
            LedgerInput::Procedure(procedure.clone(), 1),
            LedgerInput::Movement(
                StockMovement { part_id: "ROD".into(), delta: 10, at_ms: 0, reason: String::new() },
                1,
            ),
        ],
    );
    let [created] =
        revisions_of(&ledger.step(T0 + 1000, vec![scored_input(scored(400.0, 1), &asset)])).try_into().expect("one");
    let id = created.work_order_id.clone();
    assert_eq!(created.work_type, WorkType::Predictive, "the configured type of a crack below P1");
    assert_eq!(created.due_at_ms, Some(created.detected_at_ms + 10 * 3_600_000), "{:?}", created.severity);
    assert_eq!(ledger.dispatcher.workloads().get("T-1"), Some(&250));
    assert_eq!(ledger.stock.level("ROD").available, 7);

    let held = ledger.step(T0 + 2000, vec![event(&id, WoEventKind::OnHold, T0 + 2000, Some("waiting_for_parts"))]);
    let [revision] = revisions_of(&held).try_into().expect("a revision");
    assert_eq!(
        (revision.status, revision.hold_reason.as_deref()),
        (WorkOrderStatus::OnHold, Some("waiting_for_parts"))
    );
    assert_eq!(revision.technician_id.as_deref(), Some("T-1"), "the work stays theirs");
    assert!(held.contains(&LedgerOutput::Workload("T-1".into(), id.clone(), 250, -1)), "{held:?}");
    assert_eq!(ledger.dispatcher.workloads().get("T-1"), None, "no open hours while it waits");
    assert_eq!(ledger.stock.level("ROD").available, 7, "its parts stay reserved");
    let again = ledger.step(T0 + 2500, vec![event(&id, WoEventKind::OnHold, T0 + 2500, None)]);
    assert!(
        matches!(again.as_slice(), [LedgerOutput::DeadLetter(l)] if l.reason.contains("already on_hold")),
        "{again:?}"
    );

    let resumed = ledger.step(T0 + 3000, vec![event(&id, WoEventKind::Resumed, T0 + 3000, None)]);
    let [revision] = revisions_of(&resumed).try_into().expect("a revision");
    assert_eq!((revision.status, revision.hold_reason), (WorkOrderStatus::Open, None), "back where it was held");
    assert_eq!(ledger.dispatcher.workloads().get("T-1"), Some(&250));
    let not_held = ledger.step(T0 + 3500, vec![event(&id, WoEventKind::Resumed, T0 + 3500, None)]);
    assert!(matches!(not_held.as_slice(), [LedgerOutput::DeadLetter(l)] if l.reason.contains("not on hold")));

    ledger.step(T0 + 4000, vec![event(&id, WoEventKind::OnHold, T0 + 4000, Some("shutdown"))]);
    let cancelled = ledger.step(T0 + 5000, vec![event(&id, WoEventKind::Cancelled, T0 + 5000, Some("duplicate"))]);
    let [revision] = revisions_of(&cancelled).try_into().expect("the closing revision");
    assert_eq!((revision.revision_kind, revision.status), (RevisionKind::Closed, WorkOrderStatus::Cancelled));
    assert!(!cancelled.iter().any(|o| matches!(o, LedgerOutput::Consumed(_))), "nothing consumed: {cancelled:?}");
    assert!(!cancelled.iter().any(|o| matches!(o, LedgerOutput::Workload(..))), "its hours left at the hold");
    assert!(cancelled.contains(&LedgerOutput::Reservation("ROD".into(), id.clone(), 3, -1)));
    assert_eq!(ledger.stock.level("ROD").available, 10);
    assert_eq!(ledger.dispatcher.workloads().get("T-1"), None);
    let seen_again = ledger.step(T0 + 300_000, vec![scored_input(scored(900.0, 300), &asset)]);
    assert_eq!(revisions_of(&seen_again), vec![], "the cancelled defect opens nothing new");
}

/// Shifts follow the plant's clock across the spring-forward night: in Europe/Oslo the
/// clocks go from 02:00 to 03:00 on 28 March 2027 (01:00 UTC). At 04:30 UTC it is
/// 06:30 there, so the day shift (06–14) has begun and the night shift (22–06) has
/// ended; a fixed winter offset (+60 min) would still say 05:30 and give the work to
/// the night shift. The day before, 04:30 UTC is 05:30 and the night shift has it.
#[test]
fn shifts_follow_the_plant_time_zone_across_the_spring_forward_night() {
    use defectflow_operators::assign::{PlantClock, time_zone};
    use defectflow_operators::derive::{Ledger, LedgerInput};
    let oslo = time_zone("Europe/Oslo").expect("an IANA zone");
    assert!(time_zone("Europe/Olso").is_err_and(|e| e.contains("not an IANA time zone")));
    const BEFORE: u64 = 1_806_121_800_000; // 2027-03-27T04:30:00Z, 05:30 CET
    const AFTER: u64 = 1_806_208_200_000; // 2027-03-28T04:30:00Z, 06:30 CEST
    assert_eq!((PlantClock::Zone(oslo).hour_of_day(BEFORE), PlantClock::Zone(oslo).hour_of_day(AFTER)), (5, 6));
    assert_eq!(PlantClock::Offset(60).hour_of_day(AFTER), 5, "a fixed offset misses the change");

    let (asset, procedure, day) = pump_plant();
    let day = Technician { technician_id: "T-DAY".into(), shift: Shift { start_hour: 6, end_hour: 14 }, ..day };
    let night =
        Technician { technician_id: "T-NIGHT".into(), shift: Shift { start_hour: 22, end_hour: 6 }, ..day.clone() };
    let assigned = |clock: (Option<chrono_tz::Tz>, i32), at_ms: u64| {
        let config = WorkOrderConfig { time_zone: clock.0, utc_offset_minutes: clock.1, ..WorkOrderConfig::default() };
        let mut ledger = Ledger::new(config);
        ledger.step(
            0,
            vec![
                LedgerInput::Technician(day.clone(), 1),
                LedgerInput::Technician(night.clone(), 1),
                LedgerInput::Procedure(procedure.clone(), 1),
            ],
        );
        let mut track = scored(400.0, 1);
        track.first_seen_ms = at_ms - 1000;
        track.last_seen_ms = at_ms;
        let revisions = revisions_of(&ledger.step(at_ms, vec![scored_input(track, &asset)]));
        revisions.first().and_then(|w| w.technician_id.clone())
    };
    assert_eq!(assigned((Some(oslo), 0), AFTER).as_deref(), Some("T-DAY"));
    assert_eq!(assigned((Some(oslo), 0), BEFORE).as_deref(), Some("T-NIGHT"));
    assert_eq!(assigned((None, 60), AFTER).as_deref(), Some("T-NIGHT"), "the fixed offset's mistake");
}

/// A false positive keeps its camera, asset, class and spot from opening work orders:
/// the same spot seen by new tracks opens nothing, before and after a restart (the
/// closed work order restored), while another spot does; once the suppression expires
/// (or a person lifts it with a wo-event) the spot opens a work order again.
#[test]
fn a_false_positive_suppresses_its_spot_across_tracks_and_a_restart_until_it_expires_or_is_lifted() {
    use defectflow_operators::derive::{Ledger, LedgerInput, RestoredOrder};
    let (asset, procedure, technician) = pump_plant();
    let config = WorkOrderConfig { suppress_false_positive_hours: 1.0, ..WorkOrderConfig::default() };
    let reference =
        || vec![LedgerInput::Technician(technician.clone(), 1), LedgerInput::Procedure(procedure.clone(), 1)];
    let event = |id: &str, kind: WoEventKind, at_ms: u64| {
        LedgerInput::Event(WoEvent {
            work_order_id: id.into(),
            event: kind,
            at_ms,
            technician_id: None,
            note: None,
            reason: None,
            actual_hours: None,
            downtime_hours: None,
        })
    };
    let seen = |ledger: &mut Ledger, track_id: &str, at_s: u64, x: f32| {
        let mut track = scored(400.0, at_s);
        track.track_id = track_id.into();
        track.bbox.x = x;
        revisions_of(&ledger.step(T0 + at_s * 1000, vec![scored_input(track, &asset)]))
    };

    let mut first = Ledger::new(config.clone());
    first.step(0, reference());
    let [created] = seen(&mut first, "TR-1", 1, 0.0).try_into().expect("one work order");
    let id = created.work_order_id.clone();
    let [closed] = revisions_of(&first.step(T0 + 2000, vec![event(&id, WoEventKind::FalsePositive, T0 + 2000)]))
        .try_into()
        .expect("the closing revision");
    assert_eq!(closed.status, WorkOrderStatus::FalsePositive);
    assert_eq!(seen(&mut first, "TR-2", 60, 2.0), vec![], "the same spot, a new track: suppressed");
    assert_eq!(seen(&mut first, "TR-far", 61, 300.0).len(), 1, "another spot opens its work order");
    // Each sighting held back is audited, naming the false positive, and never sent:
    // the new track in the spot, and the false positive's own track going on.
    for (track_id, at_s) in [("TR-2", 62), ("TR-1", 63)] {
        let mut track = scored(400.0, at_s);
        (track.track_id, track.bbox.x) = (track_id.into(), 1.0);
        let out = first.step(T0 + at_s * 1000, vec![scored_input(track, &asset)]);
        let held: Vec<_> =
            out.iter().filter_map(|o| if let LedgerOutput::Suppressed(s) = o { Some(s) } else { None }).collect();
        let [held] = held.as_slice() else { panic!("one row held back for {track_id}: {out:?}") };
        assert_eq!(
            (held.track_id.as_str(), held.false_positive.as_str(), held.at_ms, held.until_ms),
            (track_id, id.as_str(), T0 + at_s * 1000, Some(T0 + 2000 + 3_600_000))
        );
        assert_eq!(revisions_of(&out), vec![]);
    }

    // After a restart the closed work order, restored, still suppresses its spot.
    let restart = |config: &WorkOrderConfig| {
        let mut ledger = Ledger::new(config.clone());
        let mut start = reference();
        start.push(LedgerInput::Restore(Box::new(RestoredOrder {
            work_order: closed.clone(),
            asset: asset.clone(),
            measures: None,
        })));
        ledger.step(0, start);
        ledger
    };
    let mut second = restart(&config);
    assert_eq!(seen(&mut second, "TR-3", 600, 0.0), vec![], "suppressed after the restart");
    // An hour after the false positive: expired, the spot opens a work order again.
    let reopened = seen(&mut second, "TR-4", 3_700, 0.0);
    assert_eq!(reopened.len(), 1, "{reopened:?}");
    assert_ne!(reopened[0].work_order_id, id);

    // Lifted by a person before it expires.
    let mut third = restart(&config);
    let lifted = third.step(T0 + 5000, vec![event(&id, WoEventKind::SuppressionLifted, T0 + 5000)]);
    assert!(matches!(lifted.as_slice(), [LedgerOutput::Accepted(_)]), "{lifted:?}");
    assert_eq!(seen(&mut third, "TR-5", 6, 0.0).len(), 1, "lifted: the spot opens a work order");
    let again = third.step(T0 + 7000, vec![event(&id, WoEventKind::SuppressionLifted, T0 + 7000)]);
    let [LedgerOutput::DeadLetter(letter)] = again.as_slice() else { panic!("{again:?}") };
    assert!(letter.reason.contains("suppresses nothing"), "{letter:?}");

    // Without a suppression time, only the false positive's own track stays quiet.
    let mut untimed = restart(&WorkOrderConfig { suppress_false_positive_hours: 0.0, ..config });
    assert_eq!(seen(&mut untimed, "TR-6", 600, 0.0).len(), 1);
}

/// `open_score` per camera and class changes while the ledger runs: a confirmed track
/// under the camera's raised score opens nothing, and opens its work order at its next
/// sighting once the thresholds file lowers it again; other cameras keep the default.
#[test]
fn a_camera_s_open_score_changes_without_a_restart() {
    use defectflow_operators::derive::{Ledger, LedgerInput};
    use defectflow_operators::thresholds::{LiveThresholds, Thresholds};
    let (asset, procedure, technician) = pump_plant();
    let live = LiveThresholds::new(
        Thresholds::parse("[[threshold]]\ncamera = \"cam\"\nclass = \"crack\"\nopen_score = 95\n", "t.toml", 0.5)
            .expect("valid"),
    );
    let mut ledger = Ledger::new(WorkOrderConfig { thresholds: live.clone(), ..WorkOrderConfig::default() });
    ledger.step(0, vec![LedgerInput::Technician(technician, 1), LedgerInput::Procedure(procedure, 1)]);
    let quiet = ledger.step(T0 + 1000, vec![scored_input(scored(400.0, 1), &asset)]);
    assert_eq!(revisions_of(&quiet), vec![], "under the camera's open score");
    let mut elsewhere = scored(400.0, 1);
    (elsewhere.track_id, elsewhere.camera_id) = ("TR-other".into(), "cam-2".into());
    let other = revisions_of(&ledger.step(T0 + 1500, vec![scored_input(elsewhere, &asset)]));
    assert_eq!(other.len(), 1, "another camera opens at the default score: {other:?}");

    live.replace(
        Thresholds::parse("[[threshold]]\ncamera = \"cam\"\nopen_score = 10\n", "t.toml", 0.5).expect("valid"),
    );
    let opened = revisions_of(&ledger.step(T0 + 2000, vec![scored_input(scored(400.0, 2), &asset)]));
    assert_eq!(opened.len(), 1, "{opened:?}");
    assert_eq!((opened[0].camera_id.as_str(), opened[0].revision), ("cam", 1));
}

/// A restored work order that other cameras view gives their trackers their tracks
/// back: its own track, and one per view with evidence (the view's camera, track id and
/// box); a view without evidence has no box in its camera and is left out.
#[test]
fn a_restored_work_order_gives_back_its_views_tracks() {
    use defectflow_operators::derive::{Ledger, LedgerInput, RestoredOrder};
    use defectflow_schemas::{Evidence, View};
    let (asset, procedure, technician) = pump_plant();
    let mut ledger = Ledger::new(WorkOrderConfig::default());
    ledger.step(0, vec![LedgerInput::Technician(technician, 1), LedgerInput::Procedure(procedure, 1)]);
    let [mut work_order] = revisions_of(&ledger.step(T0 + 1000, vec![scored_input(scored(400.0, 1), &asset)]))
        .try_into()
        .expect("one work order");
    let evidence = Evidence {
        uri: "evidence/TR-west/12.jpg".into(),
        sha256: "00".repeat(32),
        frame_index: 12,
        capture_ms: T0 + 900,
        bbox: BoundingBox { x: 500.0, y: 40.0, width: 30.0, height: 6.0 },
    };
    work_order.other_views = vec![
        View { camera_id: "cam-west".into(), track_id: "TR-west".into(), evidence: Some(evidence) },
        View { camera_id: "cam-north".into(), track_id: "TR-north".into(), evidence: None },
    ];
    let restored = RestoredOrder { work_order: work_order.clone(), asset, measures: None };
    let tracks = restored.tracks();
    let named: Vec<(&str, &str)> = tracks.iter().map(|t| (t.camera_id.as_str(), t.track_id.as_str())).collect();
    assert_eq!(named, [("cam", work_order.track_id.as_str()), ("cam-west", "TR-west")]);
    assert!(tracks.iter().all(|t| t.state == TrackState::Confirmed && t.class == work_order.defect_class));
    assert_eq!((tracks[1].bbox.x, tracks[1].best_frame_index), (500.0, 12), "the view's own box");
    assert_eq!(tracks[0], restored.track());
}
