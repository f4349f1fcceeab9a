//! A camera's baseline: learnt from normal frames, a changed patch departs and the rest
//! does not, a defect present while commissioning is not learnt, and a stored baseline
//! is refused for another camera, frame size or model.

use defectflow_models::baseline::{BaselineConfig, BaselineError, BaselineKey, CameraBaseline, Commissioning};
use defectflow_models::gate::{GatedFrame, Persistence, UnknownDefects, gate};
use defectflow_models::inference::{Appearance, CellScores};
use defectflow_schemas::DefectClass;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const ROWS: usize = 12;
const COLS: usize = 16;
const DIMS: usize = 8;
const CLASSES: usize = 7;

fn key() -> BaselineKey {
    BaselineKey { camera_id: "cam-a".into(), frame_width: 128, frame_height: 96, model_version: "m1".into() }
}

/// A frame of the fixed view: each cell's features near its own level, with noise;
/// `patch` cells shifted by `shift`; `defect` cells scored as a confident crack.
fn frame(rng: &mut ChaCha8Rng, patch: &[usize], shift: f32, defect: &[usize]) -> CellScores {
    let plane = ROWS * COLS;
    let mut values = Vec::with_capacity(plane * DIMS);
    for cell in 0..plane {
        for k in 0..DIMS {
            let level = ((cell * 7 + k * 3) % 11) as f32 * 0.3;
            let noise: f32 = rng.random_range(-0.1..0.1);
            let moved = if patch.contains(&cell) { shift } else { 0.0 };
            values.push(level + noise + moved);
        }
    }
    let mut probabilities = vec![0.0; CLASSES * plane];
    for cell in 0..plane {
        let crack = if defect.contains(&cell) { 0.95 } else { 0.02 };
        probabilities[cell] = 1.0 - crack;
        probabilities[plane + cell] = crack;
    }
    CellScores {
        classes: CLASSES,
        rows: ROWS,
        cols: COLS,
        probabilities,
        boxes: None,
        appearance: Some(Appearance { dims: DIMS, values }),
    }
}

/// Gating where a departure counts at once (no persistence asked for).
fn instant() -> BaselineConfig {
    BaselineConfig { settle_ms: 0, ..BaselineConfig::default() }
}

/// One frame gated at once (no persistence asked for), at confidence 0.5, in a
/// 128×96 frame whose pixels are `scale` network pixels.
fn gated_at_once(
    scores: &CellScores,
    baseline: &CameraBaseline,
    unknown: UnknownDefects,
    scale: (f32, f32),
) -> GatedFrame {
    let persistence = &mut Persistence::default();
    gate(scores, baseline, &instant(), 0.5, unknown, (scale, (128.0, 96.0)), persistence, 0).expect("gated")
}

/// A baseline learnt from 40 frames where the classifier calls `defect` a crack, its
/// features shifted by `shift` (a real defect looks unlike the rest of the view).
fn commissioned_with(rng: &mut ChaCha8Rng, defect: &[usize], shift: f32) -> CameraBaseline {
    let mut learning = Commissioning::new(key(), BaselineConfig::default());
    for i in 0..40 {
        learning.observe(&frame(rng, defect, shift, defect), i as f32 / 40.0).expect("a frame");
    }
    learning.finish().expect("a baseline")
}

fn commissioned(rng: &mut ChaCha8Rng, defect: &[usize]) -> CameraBaseline {
    commissioned_with(rng, defect, 0.0)
}

fn patch() -> Vec<usize> {
    // A 2×3 block of cells in the middle of the view.
    [5 * COLS + 7, 5 * COLS + 8, 5 * COLS + 9, 6 * COLS + 7, 6 * COLS + 8, 6 * COLS + 9].into()
}

#[test]
fn a_changed_patch_departs_and_the_rest_of_the_view_does_not() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let baseline = commissioned(&mut rng, &[]);
    let config = BaselineConfig::default();
    let normal = baseline.departure(&frame(&mut rng, &[], 0.0, &[]), &config).expect("departure");
    assert_eq!(normal.departs.iter().filter(|d| **d).count(), 0, "a normal frame departs nowhere");
    let changed = baseline.departure(&frame(&mut rng, &patch(), 2.0, &[]), &config).expect("departure");
    let departing: Vec<usize> = (0..ROWS * COLS).filter(|&i| changed.departs[i]).collect();
    assert_eq!(departing, patch());
    assert!(!changed.disturbed);
}

#[test]
fn a_change_of_the_whole_view_is_a_disturbance_not_a_defect() {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let baseline = commissioned(&mut rng, &[]);
    // Shake: a third of the view (its edges) changes at once.
    let everything: Vec<usize> = (0..ROWS * COLS).filter(|c| c % 3 == 0).collect();
    let shaken = frame(&mut rng, &everything, 1.5, &[]);
    let gated = gated_at_once(&shaken, &baseline, UnknownDefects::On, (8.0, 8.0));
    assert!(gated.disturbed, "a third of the view changed at once");
    assert!(gated.named.is_empty() && gated.unknown.is_empty());
}

#[test]
fn a_departure_the_classifier_names_is_a_defect_and_one_it_cannot_is_unknown() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let baseline = commissioned(&mut rng, &[]);
    let scale = ((128 / COLS) as f32 / 8.0, (96 / ROWS) as f32 / 8.0);
    // The classifier calls the patch a crack and the view departs there: a crack.
    let named = frame(&mut rng, &patch(), 2.0, &patch());
    let gated = gated_at_once(&named, &baseline, UnknownDefects::On, scale);
    assert_eq!(gated.named.iter().map(|f| f.class).collect::<Vec<_>>(), vec![DefectClass::Crack]);
    assert!(gated.unknown.is_empty());
    // The classifier calls a cell a crack where nothing departs: nothing.
    let classifier_only = frame(&mut rng, &[], 0.0, &patch());
    let gated = gated_at_once(&classifier_only, &baseline, UnknownDefects::On, scale);
    assert!(gated.named.is_empty() && gated.unknown.is_empty(), "{gated:?}");
    // A departure no class fits: unknown, or nothing when unknown defects are off.
    let unnamed = frame(&mut rng, &patch(), 2.0, &[]);
    let gated = gated_at_once(&unnamed, &baseline, UnknownDefects::On, scale);
    assert_eq!(gated.unknown.iter().map(|f| f.class).collect::<Vec<_>>(), vec![DefectClass::Unknown]);
    let gated = gated_at_once(&unnamed, &baseline, UnknownDefects::Off, scale);
    assert!(gated.unknown.is_empty());
}

#[test]
fn a_camera_whose_classes_are_not_trusted_reports_every_lasting_departure_as_unknown() {
    let mut rng = ChaCha8Rng::seed_from_u64(31);
    let small: Vec<usize> = [2 * COLS + 2, 2 * COLS + 3, 3 * COLS + 2, 3 * COLS + 3].into();
    let baseline = commissioned_with(&mut rng, &small, 2.0);
    let config = BaselineConfig { name_defects: false, ..instant() };
    let gated = |scores: &CellScores| {
        let persistence = &mut Persistence::default();
        gate(scores, &baseline, &config, 0.5, UnknownDefects::On, ((1.0, 1.0), (128.0, 96.0)), persistence, 0)
            .expect("gated")
    };
    // A departure the classifier calls a crack is an unknown defect, not a crack, and
    // so is the defect present at commissioning (its cells not learnt).
    let named = gated(&frame(&mut rng, &patch(), 2.0, &patch()));
    assert!(named.named.is_empty(), "{named:?}");
    let mut corners: Vec<(f32, f32)> = named.unknown.iter().map(|f| (f.bbox.x, f.bbox.y)).collect();
    corners.sort_by(|a, b| a.0.total_cmp(&b.0));
    assert_eq!(corners, vec![(16.0, 16.0), (56.0, 40.0)], "the spot at commissioning, then the patch");
    assert!(named.unknown.iter().all(|f| f.class == DefectClass::Unknown));
    // Where nothing departs, the classifier's crack is nothing.
    let classifier_only = gated(&frame(&mut rng, &[], 0.0, &patch()));
    assert!(classifier_only.named.is_empty() && classifier_only.unknown.len() == 1, "only the spot at commissioning");
}

#[test]
fn a_defect_present_while_commissioning_is_not_learnt_and_still_found() {
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let small: Vec<usize> = [5 * COLS + 7, 5 * COLS + 8, 6 * COLS + 7, 6 * COLS + 8].into();
    let baseline = commissioned_with(&mut rng, &small, 2.0);
    let excluded: Vec<usize> = baseline.header.excluded.iter().map(|c| c.row * COLS + c.col).collect();
    assert_eq!(excluded, small, "the cells the model called a crack are reported, not learnt");
    assert_eq!(baseline.header.lookalike_regions, 0);
    let same = frame(&mut rng, &small, 2.0, &small);
    let gated = gated_at_once(&same, &baseline, UnknownDefects::On, (1.0, 1.0));
    assert_eq!(gated.named.len(), 1, "the crack present at commissioning is still a crack");
}

#[test]
fn a_spot_the_model_calls_a_defect_that_looks_like_elsewhere_in_the_view_is_learnt() {
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    // The model calls a crack where the surface looks as it does in many other cells (the
    // view repeats every 11 cells): a texture misread, not a defect.
    let spot: Vec<usize> = [5 * COLS + 7, 5 * COLS + 8].into();
    let baseline = commissioned_with(&mut rng, &spot, 0.0);
    assert!(baseline.header.excluded.is_empty(), "{:?}", baseline.header.excluded);
    assert_eq!(baseline.header.lookalike_regions, 1);
    let same = frame(&mut rng, &[], 0.0, &spot);
    let gated = gated_at_once(&same, &baseline, UnknownDefects::On, (1.0, 1.0));
    assert!(gated.named.is_empty() && gated.unknown.is_empty(), "{gated:?}");
    // Without the test of lookalikes, the spot is left out and reported.
    let mut learning =
        Commissioning::new(key(), BaselineConfig { exclude_uniqueness: 0.0, ..BaselineConfig::default() });
    for i in 0..40 {
        learning.observe(&frame(&mut rng, &[], 0.0, &spot), i as f32 / 40.0).expect("a frame");
    }
    assert_eq!(learning.finish().expect("a baseline").header.excluded.len(), 2);
}

#[test]
fn a_surface_the_model_misreads_everywhere_is_learnt_as_normal() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    // The model calls a third of the view a crack: no defect is that large; it is the
    // surface, a texture the model never saw.
    let texture: Vec<usize> = (0..ROWS * COLS).filter(|c| c / COLS < 4).collect();
    let baseline = commissioned(&mut rng, &texture);
    assert!(baseline.header.excluded.is_empty(), "{:?}", baseline.header.excluded);
    let same = frame(&mut rng, &[], 0.0, &texture);
    let gated = gated_at_once(&same, &baseline, UnknownDefects::On, (1.0, 1.0));
    assert!(gated.named.is_empty() && gated.unknown.is_empty(), "{gated:?}");
}

#[test]
fn only_a_lasting_departure_counts() {
    let mut persistence = Persistence::default();
    let departs = [true, false, true];
    // Cell 0 departs from 0 ms on, cell 2 only at 0 and 2,500 ms (a gap over a second).
    let mut settled = Vec::new();
    for t in (0..=3_000).step_by(200) {
        let now = [departs[0], false, t == 0 || t == 2_400];
        settled = persistence.settle(&now, t, 3_000);
    }
    assert_eq!(settled, vec![true, false, false]);
    // A gap of under a second is bridged.
    let mut persistence = Persistence::default();
    for t in [0, 800, 1_600, 2_400, 3_200] {
        settled = persistence.settle(&[true], t, 3_000);
    }
    assert_eq!(settled, vec![true]);
}

#[test]
fn a_disturbed_frame_does_not_end_a_departure_under_way() {
    let mut persistence = Persistence::default();
    let mut settled = Vec::new();
    for t in (0..=3_000).step_by(200) {
        if (1_000..2_600).contains(&t) {
            persistence.hold(t); // shake: 1.6 s of frames that say nothing of the cell
        } else {
            settled = persistence.settle(&[true], t, 3_000);
        }
    }
    assert_eq!(settled, vec![true]);
}

/// Four spots of the view changing at the same moment (a lamp lighting the bright parts
/// of the view) are the scene changing: re-learnt within seconds and never reported. A
/// patch changing later with two spots near it (rust appearing in pieces) is a defect.
#[test]
fn regions_departing_together_are_the_scene_and_one_alone_is_a_defect() {
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let mut baseline = commissioned(&mut rng, &[]);
    let config = BaselineConfig { settle_ms: 5_000, ..BaselineConfig::default() };
    let spot = |r: usize, c: usize| [r * COLS + c, r * COLS + c + 1, (r + 1) * COLS + c, (r + 1) * COLS + c + 1];
    let lit: Vec<usize> = [(1, 1), (1, 12), (9, 1), (9, 12)].into_iter().flat_map(|(r, c)| spot(r, c)).collect();
    let mut persistence = Persistence::default();
    let geometry = ((1.0, 1.0), (128.0, 96.0));
    let mut unknown = Vec::new();
    for t in (0..40_000u64).step_by(200) {
        let rust: Vec<usize> = patch().into_iter().chain([2 * COLS + 8, 9 * COLS + 9]).collect();
        let changed: Vec<usize> = lit.iter().copied().chain(if t >= 20_000 { rust } else { vec![] }).collect();
        let scores = frame(&mut rng, &changed, 2.0, &[]);
        let gated =
            gate(&scores, &baseline, &config, 0.5, UnknownDefects::On, geometry, &mut persistence, t).expect("gated");
        assert!(!gated.disturbed && gated.named.is_empty());
        unknown.push((t, gated.unknown));
        if t % 1_000 == 0 {
            let weights = persistence.follow_weights(ROWS * COLS, t, 60_000, (0.0, 1_000.0 / 3_000.0));
            baseline.follow(&scores, &weights).expect("follows");
        }
    }
    let reported: Vec<u64> = unknown.iter().filter(|(_, u)| !u.is_empty()).map(|(t, _)| *t).collect();
    assert_eq!(reported.first(), Some(&25_000), "the patch, once settled, and nothing before it");
    let (_, last) = unknown.last().expect("frames");
    assert_eq!(last.len(), 1, "{last:?}");
    let bbox = last[0].bbox;
    assert!((bbox.x, bbox.y) == (56.0, 40.0), "the patch's box: {bbox:?}");
    // The lit spots are learnt: they no longer depart, the patch does.
    let now = baseline.departure(&frame(&mut rng, &lit, 2.0, &[]), &config).expect("departure");
    assert_eq!(now.departs.iter().filter(|d| **d).count(), 0, "the scene's new look is normal");
}

/// Cells of a change of the scene flicker about their thresholds while they are
/// re-learnt: that is the same change, and it does not make a defect appearing meanwhile
/// look like one.
#[test]
fn cells_flickering_while_re_learnt_do_not_make_a_new_defect_a_change_of_the_scene() {
    let mut persistence = Persistence::default();
    let (lit, defect) = ([COLS + 1, COLS + 12, 9 * COLS + 1], 5 * COLS + 7);
    let frame = |cells: &[usize]| (0..ROWS * COLS).map(|i| cells.contains(&i)).collect::<Vec<bool>>();
    for t in (0..=3_000).step_by(200) {
        persistence.settle(&frame(&lit), t, 5_000);
        persistence.judge_scene(t, ROWS, COLS, 3);
    }
    assert!(lit.iter().all(|&i| persistence.scene_changed(i)), "three regions at once: the scene");
    for t in (3_200..8_000).step_by(200) {
        persistence.settle(&frame(&[]), t, 5_000); // re-learnt, for a while
    }
    let mut departing = lit.to_vec();
    departing.push(defect);
    for t in (8_000..=11_000).step_by(200) {
        persistence.settle(&frame(&departing), t, 5_000);
        persistence.judge_scene(t, ROWS, COLS, 3);
    }
    assert!(lit.iter().all(|&i| persistence.scene_changed(i)), "the same change, departing again");
    assert!(!persistence.scene_changed(defect), "the defect began alone");
}

#[test]
fn the_baseline_follows_a_slow_change_but_never_a_cell_that_departs() {
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    let commissioned = commissioned(&mut rng, &[]);
    let config = BaselineConfig::default();
    // Daylight through a window: 5 of the 16 columns slowly drift by 1.5.
    let side: Vec<usize> = (0..ROWS * COLS).filter(|c| (5..10).contains(&(c % COLS))).collect();
    // The patch, inside it, is under a live track: never quiet.
    let weights: Vec<f32> = (0..ROWS * COLS).map(|i| if patch().contains(&i) { 0.0 } else { 0.05 }).collect();
    let mut following = commissioned.clone();
    for k in 0..=1_000 {
        let scores = frame(&mut rng, &side, 1.5 * k as f32 / 1_000.0, &[]);
        following.follow(&scores, &weights).expect("follows");
    }
    assert!(following.drift() > 0.1, "the drift is measured: {}", following.drift());
    let now = frame(&mut rng, &side, 1.5, &[]);
    let unfollowed = commissioned.departure(&now, &config).expect("departure");
    assert!(unfollowed.disturbed, "without following, most of the view departs");
    let followed = following.departure(&now, &config).expect("departure");
    let departing: Vec<usize> = (0..ROWS * COLS).filter(|&i| followed.departs[i]).collect();
    assert_eq!(departing, patch(), "the quiet cells followed the light, the patch did not");
    // The light as it was when the camera was commissioned is normal still.
    let back = following.departure(&frame(&mut rng, &[], 0.0, &[]), &config).expect("departure");
    assert_eq!(back.departs.iter().filter(|d| **d).count(), 0, "the commissioned view departs nowhere");
}

#[test]
fn a_stored_baseline_reads_back_and_is_refused_for_another_camera_size_or_model() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let baseline = commissioned(&mut rng, &[]);
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("cam-a.baseline");
    baseline.save(&path).expect("saved");
    assert_eq!(CameraBaseline::load(&path, &key()).expect("loads"), baseline);
    let refused = |other: BaselineKey| match CameraBaseline::load(&path, &other) {
        Err(BaselineError::Mismatch { field, .. }) => field,
        other => panic!("expected a mismatch, got {other:?}"),
    };
    assert_eq!(refused(BaselineKey { camera_id: "cam-b".into(), ..key() }), "camera");
    assert_eq!(refused(BaselineKey { model_version: "m2".into(), ..key() }), "model version");
    assert_eq!(refused(BaselineKey { frame_width: 1920, frame_height: 1080, ..key() }), "frame size");
    let message = CameraBaseline::load(&path, &BaselineKey { camera_id: "cam-b".into(), ..key() })
        .expect_err("another camera")
        .to_string();
    assert!(
        message.contains("cam-a") && message.contains("cam-b") && message.contains("defectflow commission"),
        "{message}"
    );
    // A corrupted file is refused by its digest.
    let mut bytes = std::fs::read(&path).expect("read");
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&path, bytes).expect("write");
    let corrupted = CameraBaseline::load(&path, &key()).expect_err("corrupted").to_string();
    assert!(corrupted.contains("SHA-256"), "{corrupted}");
}

#[test]
fn commissioning_needs_enough_frames() {
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    let mut learning = Commissioning::new(key(), BaselineConfig::default());
    for i in 0..5 {
        learning.observe(&frame(&mut rng, &[], 0.0, &[]), i as f32 / 5.0).expect("a frame");
    }
    let error = learning.finish().expect_err("too few frames").to_string();
    assert!(error.contains("more seconds"), "{error}");
}

#[test]
fn something_passing_while_calibrating_does_not_blind_its_cells() {
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let mut learning = Commissioning::new(key(), BaselineConfig::default());
    // 40 frames: the first 24 fit, the last 16 calibrate; a person stands over the patch
    // in 4 of those (a quarter).
    for i in 0..40 {
        let passing = (26..30).contains(&i);
        let shifted = if passing { patch() } else { Vec::new() };
        learning.observe(&frame(&mut rng, &shifted, 2.0, &[]), i as f32 / 40.0).expect("a frame");
    }
    let baseline = learning.finish().expect("a baseline");
    assert!(baseline.header.threshold < 10.0, "threshold {}", baseline.header.threshold);
    // The same change lasting is a departure there.
    let config = BaselineConfig::default();
    let changed = baseline.departure(&frame(&mut rng, &patch(), 2.0, &[]), &config).expect("departure");
    let departing: Vec<usize> = (0..ROWS * COLS).filter(|&i| changed.departs[i]).collect();
    assert_eq!(departing, patch(), "the cells passed over while calibrating still depart");
}

#[test]
fn commissioning_through_steam_waits_for_undisturbed_frames() {
    let mut rng = ChaCha8Rng::seed_from_u64(10);
    let steam: Vec<usize> = (0..ROWS * COLS).filter(|c| c % 3 == 0).collect();
    let mut learning = Commissioning::new(key(), BaselineConfig::default());
    // Steam over a third of the view through the whole calibration (progress 0.6–1).
    for i in 0..40 {
        let shifted = if i >= 24 { steam.clone() } else { Vec::new() };
        learning.observe(&frame(&mut rng, &shifted, 1.5, &[]), i as f32 / 40.0).expect("a frame");
    }
    assert!(learning.can_finish(), "enough frames to finish");
    assert!(!learning.settled(), "every calibration frame was disturbed: it waits");
    // The steam clears: four undisturbed frames settle it.
    for i in 40..44 {
        learning.observe(&frame(&mut rng, &[], 0.0, &[]), i as f32 / 40.0).expect("a frame");
    }
    assert!(learning.settled());
    let baseline = learning.finish().expect("a baseline");
    assert!(baseline.header.threshold < 10.0, "threshold {}", baseline.header.threshold);
    let config = BaselineConfig::default();
    let changed = baseline.departure(&frame(&mut rng, &patch(), 2.0, &[]), &config).expect("departure");
    assert_eq!((0..ROWS * COLS).filter(|&i| changed.departs[i]).collect::<Vec<_>>(), patch());

    // Steam that never clears: it stops waiting at twice the commissioning time and
    // calibrates on what it has.
    let mut learning = Commissioning::new(key(), BaselineConfig::default());
    for i in 0..81 {
        let shifted = if i >= 24 { steam.clone() } else { Vec::new() };
        learning.observe(&frame(&mut rng, &shifted, 1.5, &[]), i as f32 / 40.0).expect("a frame");
        assert_eq!(learning.settled(), i >= 80, "frame {i}");
    }
    learning.finish().expect("a baseline from the disturbed frames");
}
