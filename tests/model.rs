//! The shipped weights inside the real pipeline: generated H.264 footage the model has
//! never seen, decoded by GStreamer, batched through `infer`. Each ground-truth defect
//! is found within a few frames of its onset; a defect-free camera yields nothing.

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use defectflow::config::RunConfig;
use defectflow::footage::{Codec, Container, FootageOptions, write_scenes};
use defectflow::graph::{self, Hooks, StopWhen};
use defectflow_models::metrics::iou;
use defectflow_models::synth::{AssetKind, GroundTruth, PlantOptions, planned_scene};
use defectflow_schemas::{DefectClass, FrameObservation};

/// Frames after onset within which a defect must be found (15 fps: a third of a second).
const FIND_WITHIN_FRAMES: u64 = 5;

#[test]
fn shipped_weights_find_every_defect_soon_after_onset_and_nothing_on_a_clear_camera() {
    let dir = tempfile::tempdir().expect("tempdir");
    let size = (640, 360);
    let scenes = vec![
        planned_scene(
            "held-1",
            "A-1",
            AssetKind::ALL[0],
            size,
            15,
            9001,
            &[(DefectClass::Crack, 2.0), (DefectClass::Corrosion, 3.0)],
        ),
        planned_scene(
            "held-2",
            "A-2",
            AssetKind::ALL[1],
            size,
            15,
            9002,
            &[(DefectClass::Misalignment, 2.0), (DefectClass::Wear, 3.0)],
        ),
        planned_scene(
            "held-3",
            "A-3",
            AssetKind::ALL[2],
            size,
            15,
            9003,
            &[(DefectClass::Contamination, 2.0), (DefectClass::MissingComponent, 3.0)],
        ),
        planned_scene("held-4", "A-4", AssetKind::ALL[3], size, 15, 9004, &[]),
    ];
    let options = FootageOptions {
        plant: PlantOptions {
            seed: 9000,
            cameras: 4,
            defect_free_cameras: 1,
            duration_s: 6.0,
            fps: 15,
            width: 640,
            height: 360,
        },
        codec: Codec::H264,
        container: Container::Mp4,
    };
    let truth: GroundTruth = write_scenes(dir.path(), &scenes, &options).expect("footage");
    let mut toml = String::from("[model]\nbatch_size = 4\n");
    for camera in &truth.cameras {
        let url = support::file_url(&dir.path().join(&camera.video));
        toml.push_str(&format!("[[cameras]]\nid = \"{}\"\nurl = \"{url}\"\n", camera.scene.camera_id));
    }
    let config = RunConfig::parse(&toml, "model test").expect("config");
    let seen: Arc<Mutex<Vec<FrameObservation>>> = Arc::default();
    let sink = Arc::clone(&seen);
    let hooks = Hooks {
        on_observation: Some(Arc::new(move |_, o| sink.lock().expect("lock").push(o.clone()))),
        ..Hooks::default()
    };
    let stop = StopWhen { after: None, interrupted: Arc::new(AtomicBool::new(false)) };
    let (_, stages) = graph::run_stages(&config, timely::Config::process(2), stop, hooks).expect("run");
    let observations = seen.lock().expect("lock").clone();
    assert_eq!(stages.frames_inferred, 4 * 90, "every frame is inferred once");
    assert_eq!(observations.len(), 4 * 90, "one observation per frame, clear ones included");
    let version = stages.model_version.expect("model ran");
    assert!(observations.iter().flat_map(|o| &o.detections).all(|d| d.model_version == version));

    let by_camera: BTreeMap<&str, BTreeMap<u64, &FrameObservation>> =
        observations.iter().fold(BTreeMap::new(), |mut m, o| {
            m.entry(o.camera_id.as_str()).or_default().insert(o.frame_index, o);
            m
        });
    for camera in &truth.cameras {
        let frames = &by_camera[camera.scene.camera_id.as_str()];
        let scene = defectflow_models::synth::Scene::new(camera.scene.clone());
        for defect in &camera.scene.defects {
            let onset = GroundTruth::onset_frame(defect, truth.fps);
            let found_at = (onset..onset + FIND_WITHIN_FRAMES).find(|&f| {
                let Some(label) = scene.render(f).labels.into_iter().find(|l| l.defect_id == defect.defect_id) else {
                    return false;
                };
                frames[&f].detections.iter().any(|d| d.class == defect.class && iou(&d.bbox, &label.bbox) >= 0.3)
            });
            assert!(
                found_at.is_some(),
                "{} ({}) not found within {FIND_WITHIN_FRAMES} frames of onset frame {onset}",
                defect.defect_id,
                defect.class
            );
        }
        if camera.scene.defects.is_empty() {
            let false_detections: Vec<_> = frames.values().flat_map(|o| &o.detections).collect();
            assert!(false_detections.is_empty(), "defect-free {}: {false_detections:?}", camera.scene.camera_id);
        }
        // Before any onset the camera is clear too.
        let first_onset = camera.scene.defects.iter().map(|d| GroundTruth::onset_frame(d, truth.fps)).min();
        let early: Vec<_> = frames.range(..first_onset.unwrap_or(u64::MAX)).flat_map(|(_, o)| &o.detections).collect();
        assert!(early.is_empty(), "{} before onset: {early:?}", camera.scene.camera_id);
    }
}
