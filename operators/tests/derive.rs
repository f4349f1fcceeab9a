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
        rois: vec![Roi { asset_id: "P-1".into(), x: 0, y: 0, width: 200, height: 200, mm_per_px: None }],
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
                }]
            } else {
                vec![]
            };
            let inputs = LedgerInputs {
                events: events.to_stream(scope).at_time(|e| e.at_ms),
                technicians: vec![(technician, 0u64, 1isize)].to_stream(scope).as_collection(),
                procedures: vec![(procedure, 0u64, 1isize)].to_stream(scope).as_collection(),
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
/// event for the completed one is refused as for a closed work order.
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
    };

    let mut first = Ledger::new(WorkOrderConfig::default());
    first.step(0, reference());
    let [created] =
        revisions_of(&first.step(T0 + 1000, vec![scored_input(scored(400.0, 1), &asset)])).try_into().expect("one");
    let [closed] =
        revisions_of(&first.step(T0 + 2000, vec![LedgerInput::Event(completed(&created.work_order_id, T0 + 2000))]))
            .try_into()
            .expect("the closing revision");
    assert_eq!(closed.status, WorkOrderStatus::Completed);

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
