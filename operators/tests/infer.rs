//! The `infer` operator: one observation per frame at the frame's time, frames batched
//! across cameras up to the batch size, detections stamped with the model version.

use std::sync::Arc;

use defectflow_models::card::ModelCard;
use defectflow_models::detector::{CpuBackend, Detector};
use defectflow_models::model::DefectNetConfig;
use defectflow_operators::decode::FrameTensor;
use defectflow_operators::infer::{Infer, InferConfig, InferencePool};
use defectflow_schemas::FrameMeta;
use timely::dataflow::operators::capture::{Capture, Event};
use timely::dataflow::operators::vec::ToStream;

fn frame(camera: &str, index: u64, capture_ms: u64) -> FrameTensor {
    let meta =
        FrameMeta { camera_id: camera.into(), frame_index: index, capture_ms, pts_ns: None, width: 32, height: 16 };
    FrameTensor { meta, data: Arc::new(vec![100u8; 3 * 32 * 16]) }
}

/// A tiny untrained network; a minimum confidence above 1 keeps it from reporting anything.
fn untrained_detector() -> Detector<CpuBackend> {
    untrained("m-test")
}

fn untrained(version: &str) -> Detector<CpuBackend> {
    let net = DefectNetConfig::new().with_stem_channels(2).with_mid_channels(2).with_cell_channels(2);
    let device = Default::default();
    let mut card = ModelCard::untrained(net.clone(), 32, 16);
    card.version = version.into();
    let mut detector = Detector::<CpuBackend>::new(net.init(&device), card, device);
    detector.min_confidence = 1.1;
    detector
}

#[test]
fn every_frame_gets_one_observation_at_its_time_in_batches() {
    let batches = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = Arc::clone(&batches);
    // Each frame is handed to `keep` with its own observation.
    let kept = Arc::new(std::sync::Mutex::new(Vec::new()));
    let keep = Arc::clone(&kept);
    let captured = timely::example(move |scope| {
        let detector = untrained_detector();
        let frames = vec![
            frame("cam-a", 0, 1_000),
            frame("cam-b", 0, 1_000),
            frame("cam-a", 1, 1_000),
            frame("cam-b", 1, 1_000),
            frame("cam-a", 2, 1_000),
        ];
        let config = InferConfig { batch_size: 3, max_wait_ms: 10_000, ..InferConfig::default() };
        let pool = InferencePool::start(vec![detector], &config, move |size, _| seen.lock().expect("lock").push(size))
            .expect("the inference thread starts");
        frames
            .to_stream(scope)
            .infer(&pool, config, move |frame, o| {
                assert_eq!((&frame.meta.camera_id, frame.meta.frame_index), (&o.camera_id, o.frame_index));
                keep.lock().expect("lock").push((o.camera_id.clone(), o.frame_index));
            })
            .capture()
    });
    let mut observations = Vec::new();
    for event in captured.try_iter() {
        if let Event::Messages(time, data) = event {
            let time = *time.least().expect("a time");
            observations.extend(data.into_iter().map(|o| (time, o)));
        }
    }
    observations.sort_by(|a, b| (&a.1.camera_id, a.1.frame_index).cmp(&(&b.1.camera_id, b.1.frame_index)));
    let rows: Vec<(u64, &str, u64, usize)> =
        observations.iter().map(|(t, o)| (*t, o.camera_id.as_str(), o.frame_index, o.detections.len())).collect();
    assert_eq!(
        rows,
        vec![(0, "cam-a", 0, 0), (0, "cam-a", 1, 0), (0, "cam-a", 2, 0), (0, "cam-b", 0, 0), (0, "cam-b", 1, 0)]
    );
    assert!(observations.iter().all(|(_, o)| o.capture_ms == 1_000));
    // Five frames, batch size three: a full batch, then the rest once the input closes.
    assert_eq!(*batches.lock().expect("lock"), vec![3, 2]);
    let mut kept = kept.lock().expect("lock").clone();
    kept.sort();
    let frames: Vec<(String, u64)> = rows.iter().map(|r| (r.1.to_owned(), r.2)).collect();
    assert_eq!(kept, frames);
}

#[test]
fn one_pool_scores_the_frames_of_every_worker_at_their_times() {
    let batches = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = Arc::clone(&batches);
    // Two inference threads, each with its own copy of the model.
    let detectors = (0..2).map(|_| untrained_detector()).collect();
    let config = InferConfig { batch_size: 4, max_wait_ms: 0, ..InferConfig::default() };
    let pool = InferencePool::start(detectors, &config, move |size, _| seen.lock().expect("lock").push(size))
        .expect("the inference threads start");
    let out = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = Arc::clone(&out);
    timely::execute(timely::Config::process(2), move |worker| {
        let camera = format!("cam-{}", worker.index());
        let frames: Vec<FrameTensor> = (0..6).map(|i| frame(&camera, i, 1_000 + i)).collect();
        let sink = Arc::clone(&sink);
        let (pool, config) = (pool.clone(), config.clone());
        worker.dataflow::<u64, _, _>(move |scope| {
            use timely::dataflow::operators::Inspect;
            frames.to_stream(scope).infer(&pool, config, |_, _| {}).inspect(move |o| {
                sink.lock().expect("lock").push((o.camera_id.clone(), o.frame_index, o.capture_ms));
            });
        });
    })
    .expect("timely runs");
    let mut out = out.lock().expect("lock").clone();
    out.sort();
    let expected: Vec<(String, u64, u64)> =
        ["cam-0", "cam-1"].iter().flat_map(|c| (0..6).map(move |i| (c.to_string(), i, 1_000 + i))).collect();
    assert_eq!(out, expected);
    let batches = batches.lock().expect("lock").clone();
    assert_eq!(batches.iter().sum::<usize>(), 12);
    assert!(batches.iter().all(|b| (1..=4).contains(b)), "batches {batches:?}");
}

/// Change gating: a static camera's frames are scored only every `rescore_ms` (and the
/// frame after the first, to know the answer is steady); a frame in which something
/// appears is scored at once, and the frames like it after are not.
#[test]
fn change_gating_scores_a_static_camera_periodically_and_a_change_at_once() {
    use defectflow_operators::change::{ChangeConfig, ChangeGates};
    let scored = Arc::new(std::sync::Mutex::new(0usize));
    let count = Arc::clone(&scored);
    let change = ChangeGates::new(ChangeConfig { threshold: 6.0, rescore_ms: 1_000 });
    let config = InferConfig { batch_size: 1, max_wait_ms: 0, change: Some(change.clone()), ..InferConfig::default() };
    let pool = InferencePool::start(vec![untrained_detector()], &config, move |size, _| {
        *count.lock().expect("lock") += size;
    })
    .expect("the inference thread starts");
    let spotted = |index: u64| {
        let mut frame = frame("cam-b", index, 1_000 + index * 100);
        if index >= 15 {
            let mut data = vec![100u8; 3 * 32 * 16];
            for c in 0..3 {
                for y in 0..8 {
                    for x in 8..16 {
                        data[c * 32 * 16 + y * 32 + x] = 230;
                    }
                }
            }
            frame.data = Arc::new(data);
        }
        frame
    };
    let frames: Vec<FrameTensor> = (0..30).flat_map(|i| [frame("cam-a", i, 1_000 + i * 100), spotted(i)]).collect();
    let captured = timely::example(move |scope| frames.to_stream(scope).infer(&pool, config, |_, _| {}).capture());
    let mut observations: Vec<_> = captured
        .try_iter()
        .flat_map(|event| if let Event::Messages(_, data) = event { data } else { Vec::new() })
        .collect();
    observations.sort_by(|a, b| (&a.camera_id, a.frame_index).cmp(&(&b.camera_id, b.frame_index)));
    let expected: Vec<(String, u64)> =
        ["cam-a", "cam-b"].iter().flat_map(|c| (0..30).map(move |i| (c.to_string(), i))).collect();
    let seen: Vec<(String, u64)> = observations.iter().map(|o| (o.camera_id.clone(), o.frame_index)).collect();
    assert_eq!(seen, expected, "every frame is observed, at its own index");
    assert!(observations.iter().all(|o| o.capture_ms == 1_000 + o.frame_index * 100));
    // cam-a: frames 0, 1, 10 and 20; cam-b: 0, 1, 10, 15 (the spot) and 25.
    assert_eq!(*scored.lock().expect("lock"), 9, "frames through the network");
    assert_eq!(change.unchanged(), vec![("cam-a".to_owned(), 26), ("cam-b".to_owned(), 25)]);
}

/// A camera's `min_confidence` from the thresholds file drops its detections under it;
/// another camera's stay, and a change of the file is in force for the next frames.
#[test]
fn a_camera_s_min_confidence_drops_its_weaker_detections() {
    use defectflow_operators::thresholds::{LiveThresholds, Thresholds};
    let rule = |confidence: f32| {
        let text = format!("[[threshold]]\ncamera = \"cam-a\"\nmin_confidence = {confidence}\n");
        Thresholds::parse(&text, "t.toml", 0.0).expect("valid")
    };
    let live = LiveThresholds::new(rule(1.0));
    let config = InferConfig { batch_size: 1, thresholds: live.clone(), ..InferConfig::default() };
    // Untrained and with no threshold of its own: one whose random weights find
    // something in these frames.
    let pixels = frame("cam-a", 0, 1_000);
    let view = defectflow_models::inference::FrameView { width: 32, height: 16, pixels: pixels.bytes() };
    let detector = (0..100)
        .map(|_| {
            let mut detector = untrained_detector();
            detector.min_confidence = 0.0;
            detector
        })
        .find(|d| d.detect(&[view]).iter().any(|found| !found.is_empty()))
        .expect("an untrained network that finds something");
    let pool = InferencePool::start(vec![detector], &config, |_, _| {}).expect("the inference thread starts");
    let run = |pool: &InferencePool, config: &InferConfig| {
        let (pool, config) = (pool.clone(), config.clone());
        let frames = vec![frame("cam-a", 0, 1_000), frame("cam-b", 0, 1_000)];
        let captured = timely::example(move |scope| frames.to_stream(scope).infer(&pool, config, |_, _| {}).capture());
        let mut found: Vec<(String, usize)> = captured
            .try_iter()
            .flat_map(|event| if let Event::Messages(_, data) = event { data } else { Vec::new() })
            .map(|o| (o.camera_id, o.detections.len()))
            .collect();
        found.sort();
        found
    };
    let before = run(&pool, &config);
    assert_eq!(before[0], ("cam-a".to_owned(), 0), "nothing is that sure: {before:?}");
    assert!(before[1].1 > 0, "cam-b keeps the model's threshold: {before:?}");
    live.replace(rule(0.0));
    let after = run(&pool, &config);
    assert_eq!(after[0].1, after[1].1, "cam-a finds what cam-b finds once lowered: {after:?}");
}

/// A model swapped into a running pool takes over from the next batch: every frame gets
/// its one observation, those before the swap from the old model and those after from
/// the new one, each detection naming the version that made it.
#[test]
fn a_model_swapped_in_scores_the_next_frames_and_none_is_lost() {
    let pixels = frame("cam-a", 0, 1_000);
    let view = defectflow_models::inference::FrameView { width: 32, height: 16, pixels: pixels.bytes() };
    // Untrained, with no threshold of their own: ones whose random weights find something.
    let finding = |version: &str| {
        (0..100)
            .map(|_| {
                let mut detector = untrained(version);
                detector.min_confidence = 0.0;
                detector
            })
            .find(|d| d.detect(&[view]).iter().any(|found| !found.is_empty()))
            .expect("an untrained network that finds something")
    };
    let config = InferConfig { batch_size: 2, ..InferConfig::default() };
    let (pool, switch) = InferencePool::start_switchable(vec![finding("m-a")], &config, None, |_, _| {})
        .expect("the inference thread starts");
    let run = |from: u64| {
        let (pool, config) = (pool.clone(), config.clone());
        let frames: Vec<FrameTensor> = (from..from + 5).map(|i| frame("cam-a", i, 1_000 + i * 100)).collect();
        let captured = timely::example(move |scope| frames.to_stream(scope).infer(&pool, config, |_, _| {}).capture());
        let mut seen: Vec<(u64, Vec<String>)> = captured
            .try_iter()
            .flat_map(|event| if let Event::Messages(_, data) = event { data } else { Vec::new() })
            .map(|o| (o.frame_index, o.detections.iter().map(|d| d.model_version.clone()).collect()))
            .collect();
        seen.sort();
        seen
    };
    let before = run(0);
    assert_eq!(switch.swap(vec![], None), Err("0 detectors for 1 inference threads".into()));
    switch.swap(vec![finding("m-b")], None).expect("swapped");
    let after = run(5);
    for (frames, version, seen) in [(0..5, "m-a", &before), (5..10, "m-b", &after)] {
        assert_eq!(seen.iter().map(|(i, _)| *i).collect::<Vec<_>>(), frames.collect::<Vec<_>>(), "one each: {seen:?}");
        assert!(seen.iter().all(|(_, v)| !v.is_empty() && v.iter().all(|v| v == version)), "{version}: {seen:?}");
    }
}
