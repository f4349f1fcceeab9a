//! Ingest from real encoded footage through real GStreamer pipelines into timely.

mod support;

use std::collections::{BTreeMap, HashSet};
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use defectflow::config::RunConfig;
use defectflow::sources::camera::{CameraState, spawn};

use support::{camera_toml, file_url, free_port, mkv_h265_footage, mp4_footage, run};

const FRAME_NS: u64 = 1_000_000_000 / 15;

#[test]
fn mp4_frames_all_arrive_in_order_with_their_size_and_timestamps() {
    let footage = mp4_footage();
    let config = camera_toml("cam-a", &file_url(&footage.video(0)), "")
        + &camera_toml("cam-b", &file_url(&footage.video(1)), "")
            .replace("width = 320\nheight = 180", "width = 160\nheight = 90");
    let outcome = run(&config, 1, None);
    let by_camera = outcome.seen_by_camera();
    for (camera, (width, height), source) in [("cam-a", (320, 180), 0), ("cam-b", (160, 90), 1)] {
        let seen = &by_camera[camera];
        let indices: Vec<u64> = seen.iter().map(|s| s.frame_index).collect();
        let expected: Vec<u64> = (0..footage.frames(source)).collect();
        assert_eq!(indices, expected, "{camera}: every frame once, in order");
        let first = seen[0].capture_ms;
        for s in seen {
            assert_eq!((s.width, s.height), (width, height), "{camera} frame {}", s.frame_index);
            assert_eq!(s.tensor_len, 3 * width as usize * height as usize);
            let pts = s.pts_ns.expect("files carry timestamps");
            assert!(pts.abs_diff(s.frame_index * FRAME_NS) < 1_000_000, "{camera} frame {} pts {pts}", s.frame_index);
            assert!(
                (s.capture_ms - first).abs_diff(pts / 1_000_000) <= 1,
                "{camera} frame {}: capture time {} ms after the first, pts {} ms",
                s.frame_index,
                s.capture_ms - first,
                pts / 1_000_000
            );
            assert!(s.mean > 0.1 && s.mean < 0.9, "{camera} frame {} looks blank: mean {}", s.frame_index, s.mean);
        }
        let report = outcome.report(camera);
        assert_eq!(
            (report.state.as_str(), report.received, report.kept, report.dropped),
            ("ended", footage.frames(source), footage.frames(source), 0)
        );
        assert!((report.fps - 15.0).abs() < 0.2, "{camera} fps {}", report.fps);
    }
}

#[test]
fn h265_in_matroska_is_ingested() {
    let footage = mkv_h265_footage();
    let outcome = run(&camera_toml("cam-h265", &file_url(&footage.video(0)), ""), 1, None);
    let indices: Vec<u64> = outcome.seen.iter().map(|s| s.frame_index).collect();
    assert_eq!(indices, (0..footage.frames(0)).collect::<Vec<_>>());
    assert_eq!(outcome.report("cam-h265").state, "ended");
}

#[test]
fn max_fps_keeps_the_configured_rate() {
    let footage = mp4_footage();
    let outcome = run(&camera_toml("cam-slow", &file_url(&footage.video(0)), "max_fps = 5.0"), 1, None);
    let report = outcome.report("cam-slow");
    // 4 s of 15 fps footage at 5 fps: 20 frames, give or take the slot the run starts in.
    assert!((19..=21).contains(&report.kept), "kept {}", report.kept);
    assert_eq!(report.kept + report.sampled_out, report.received);
    assert_eq!(outcome.seen.len() as u64, report.kept);
}

/// Frames beyond `max_fps` are dropped before conversion: the dataflow is handed only
/// the frames it keeps, and the rest are counted as skipped by the source.
#[test]
fn max_fps_drops_frames_before_conversion() {
    let footage = mp4_footage();
    let outcome = run(
        &camera_toml(
            "cam-thin",
            &file_url(&footage.video(0)),
            "max_fps = 3.0
decode = \"all\"",
        ),
        1,
        None,
    );
    let report = outcome.report("cam-thin");
    assert_eq!(report.sampled_out, 0, "nothing left for the dataflow to thin");
    assert_eq!(report.received + report.skipped_decoded, footage.frames(0), "{report:?}");
    assert!((11..=13).contains(&report.received), "4 s at 3 fps: {report:?}");
    assert_eq!(report.skipped_undecoded, 0, "`all` decodes every frame");
}

/// Keyframe mode decodes exactly the keyframes of a file with a known GOP (the footage
/// has a keyframe every 30 frames at 15 fps: frames 0 and 30 of its 60), at their
/// capture times; the delta units are skipped before the decoder and counted.
#[test]
fn keyframe_mode_yields_exactly_the_keyframes_with_their_capture_times() {
    let footage = mp4_footage();
    let start_ms = 1_790_000_000_000u64;
    let extra = format!("decode = \"keyframes\"\nstart_ms = {start_ms}");
    let outcome = run(&camera_toml("cam-key", &file_url(&footage.video(0)), &extra), 1, None);
    let times: Vec<u64> = outcome.seen.iter().map(|s| s.capture_ms - start_ms).collect();
    assert_eq!(times, vec![0, 2000], "capture times of frames 0 and 30");
    let pts: Vec<u64> = outcome.seen.iter().map(|s| s.pts_ns.expect("files carry timestamps")).collect();
    assert!(pts.len() == 2 && pts[0] < 1_000_000 && pts[1].abs_diff(30 * FRAME_NS) < 1_000_000, "{pts:?}");
    for s in &outcome.seen {
        assert!(s.mean > 0.1 && s.mean < 0.9, "keyframe {} decodes to a picture: mean {}", s.frame_index, s.mean);
    }
    let report = outcome.report("cam-key");
    assert_eq!((report.state.as_str(), report.received, report.skipped_undecoded), ("ended", 2, footage.frames(0) - 2));
}

#[test]
fn broken_files_fail_their_own_camera_and_the_others_keep_flowing() {
    let footage = mp4_footage();
    let dir = tempfile::tempdir().expect("temp dir");
    let corrupt = dir.path().join("corrupt.mp4");
    std::fs::write(&corrupt, (0..200_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect::<Vec<_>>())
        .expect("write");
    let truncated = dir.path().join("truncated.mp4");
    let bytes = std::fs::read(footage.video(0)).expect("read footage");
    std::fs::write(&truncated, &bytes[..bytes.len() * 2 / 5]).expect("write");
    let config = camera_toml("cam-good", &file_url(&footage.video(1)), "")
        + &camera_toml("cam-corrupt", &file_url(&corrupt), "")
        + &camera_toml("cam-truncated", &file_url(&truncated), "")
        + &camera_toml("cam-missing", &file_url(&dir.path().join("gone.mp4")), "");
    let outcome = run(&config, 1, Some(Duration::from_secs(30)));
    for camera in ["cam-corrupt", "cam-truncated", "cam-missing"] {
        let report = outcome.report(camera);
        assert_eq!(report.state, "failed", "{camera}: {report:?}");
        let error = report.last_error.as_deref().unwrap_or_default();
        assert!(error.contains(camera), "{camera}: error does not name the camera: {error}");
        assert_eq!(report.errors, 1, "{camera}: a broken file is not retried");
    }
    assert!(outcome.report("cam-missing").last_error.as_deref().unwrap_or_default().contains("no such video file"));
    let good = outcome.report("cam-good");
    assert_eq!((good.state.as_str(), good.kept), ("ended", footage.frames(1)));
}

#[test]
fn an_unreachable_rtsp_camera_is_retried_while_a_file_camera_flows() {
    let footage = mp4_footage();
    let port = free_port();
    let retry = "[cameras.reconnect]\ninitial_backoff_ms = 100\nmax_backoff_ms = 400\n";
    let config = camera_toml("cam-file", &file_url(&footage.video(0)), "realtime = true")
        + &camera_toml("cam-dead", &format!("rtsp://127.0.0.1:{port}/stream"), retry)
        + &camera_toml(
            "cam-nologin",
            &format!("rtsp://127.0.0.1:{port}/stream"),
            "[cameras.credentials]\nusername_env = \"DEFECTFLOW_TEST_UNSET_USER\"\npassword_env = \"DEFECTFLOW_TEST_UNSET_PW\"\n",
        );
    let outcome = run(&config, 1, Some(Duration::from_secs(5)));
    let dead = outcome.report("cam-dead");
    assert!(dead.errors >= 3, "retried with backoff: {dead:?}");
    assert_eq!(dead.received, 0);
    let error = dead.last_error.as_deref().unwrap_or_default();
    assert!(error.contains("cam-dead") && error.contains("Could not open resource"), "{error}");
    let nologin = outcome.report("cam-nologin");
    assert!(
        nologin.last_error.as_deref().unwrap_or_default().contains("DEFECTFLOW_TEST_UNSET_USER"),
        "the missing variable is named: {nologin:?}"
    );
    let file = outcome.report("cam-file");
    assert_eq!((file.received, file.kept), (footage.frames(0), footage.frames(0)));
}

#[test]
fn a_silent_camera_does_not_hold_the_frontier_back() {
    let footage = mp4_footage();
    let config = format!(
        "[runtime]\nidle_timeout_ms = 300\n{}{}",
        camera_toml("cam-file", &file_url(&footage.video(0)), "realtime = true"),
        camera_toml("cam-dead", &format!("rtsp://127.0.0.1:{}/stream", free_port()), "")
    );
    let outcome = run(&config, 1, Some(Duration::from_secs(6)));
    let last_capture = outcome.seen.iter().map(|s| s.capture_ms).max().expect("file frames");
    let frontier = outcome.frontiers.iter().map(|(_, t)| *t).max().expect("the frontier moved");
    // The frontier passes the file camera's last frame although cam-dead never sent one.
    assert!(frontier >= last_capture, "frontier {frontier} stuck behind last frame {last_capture}");
}

/// A recording held back by its full queue for longer than its stall timeout, again and
/// again (as while the output waits out a broker outage), is not stalled: each time its
/// queue is read it goes on from the frame it held, with no reconnect (a file that breaks
/// fails, and the rest of the recording is lost) and no frame lost or repeated. Each
/// release empties the queue while the pipeline converts its next frame (large, to widen
/// that moment, but well within the stall timeout): the time since the frame in hand was
/// decoded used to count as silence there.
#[test]
fn a_recording_held_back_past_its_stall_timeout_goes_on_where_it_was() {
    let footage = mp4_footage();
    let text = camera_toml(
        "cam-held",
        &file_url(&footage.video(0)),
        "queue_frames = 2\n[cameras.reconnect]\nstall_timeout_ms = 400\n",
    )
    .replace("width = 320\nheight = 180", "width = 1280\nheight = 720");
    let config = RunConfig::parse(&text, "test config").expect("config is valid");
    let camera = spawn(config.cameras[0].clone(), std::thread::current(), Duration::ZERO);
    let mut pts = Vec::new();
    while !(camera.stats.finished() && camera.frames.is_empty()) {
        // Held back for twice the stall timeout: the queue fills, the pipeline waits.
        std::thread::sleep(Duration::from_millis(800));
        // Then frames are taken as fast as they come, a dozen of them.
        let released = Instant::now();
        let until = pts.len() + 12;
        while pts.len() < until && released.elapsed() < Duration::from_secs(5) {
            if let Ok(frame) = camera.frames.try_recv() {
                pts.push(frame.pts_ns.expect("files carry timestamps"));
            }
        }
    }
    let stats = &camera.stats;
    let (reconnects, errors) = (stats.reconnects.load(Ordering::Relaxed), stats.errors.load(Ordering::Relaxed));
    assert_eq!((reconnects, errors, stats.last_error()), (0, 0, None), "the held-back recording was taken for stalled");
    assert_eq!(pts.len() as u64, footage.frames(0), "every frame once");
    assert!(pts.windows(2).all(|w| w[0] < w[1]), "the recording went on in order: {pts:?}");
}

/// A camera whose start is put off (the bench spreads replayed cameras' starts) sends
/// nothing before its delay, then plays; one stopped while it waits ends at once.
#[test]
fn a_delayed_camera_starts_late_and_stops_while_it_waits() {
    let footage = mp4_footage();
    let config = RunConfig::parse(&camera_toml("cam-late", &file_url(&footage.video(0)), ""), "test config")
        .expect("config is valid");
    let started = Instant::now();
    let camera = spawn(config.cameras[0].clone(), std::thread::current(), Duration::from_millis(700));
    let first = camera.frames.recv_timeout(Duration::from_secs(20)).expect("the camera plays after its delay");
    assert!(started.elapsed() >= Duration::from_millis(700), "a frame came {:?} after the start", started.elapsed());
    assert_eq!(first.frame_index, 0);

    let mut waiting = spawn(config.cameras[0].clone(), std::thread::current(), Duration::from_secs(600));
    let asked = Instant::now();
    waiting.stop();
    assert!(asked.elapsed() < Duration::from_secs(5), "stopping a waiting camera took {:?}", asked.elapsed());
    assert!(waiting.frames.is_empty());
    assert_eq!(waiting.stats.state(), CameraState::Stopped);
}

#[test]
fn two_workers_receive_each_cameras_frames_exactly_once() {
    let footage = mp4_footage();
    let config: String =
        (0..4).map(|i| camera_toml(&format!("cam-{i}"), &file_url(&footage.video(i % 2)), "")).collect();
    let outcome = run(&config, 2, None);
    let mut seen = HashSet::new();
    let mut per_camera: BTreeMap<String, u64> = BTreeMap::new();
    let mut workers: BTreeMap<String, HashSet<usize>> = BTreeMap::new();
    for s in &outcome.seen {
        assert!(seen.insert((s.camera.clone(), s.frame_index)), "{} frame {} seen twice", s.camera, s.frame_index);
        *per_camera.entry(s.camera.clone()).or_default() += 1;
        workers.entry(s.camera.clone()).or_default().insert(s.worker);
    }
    for i in 0..4 {
        let camera = format!("cam-{i}");
        assert_eq!(per_camera.get(&camera).copied(), Some(footage.frames(i % 2)), "{camera}");
        assert_eq!(workers[&camera], HashSet::from([i % 2]), "{camera} belongs to worker {}", i % 2);
        assert_eq!(outcome.report(&camera).worker, i % 2);
    }
}

#[test]
fn check_config_names_the_bad_field_and_run_reports_json() {
    let dir = tempfile::tempdir().expect("temp dir");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, camera_toml("cam-1", "file:///tmp/x.mp4", "max_fps = -2.0")).expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_defectflow")).arg("check-config").arg(&bad).output().expect("runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("`cameras[0].max_fps`"), "{stderr}");

    let good = dir.path().join("good.toml");
    std::fs::write(&good, camera_toml("cam-1", &file_url(&mp4_footage().video(0)), "")).expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_defectflow"))
        .args(["run", "--json", "--config"])
        .arg(&good)
        .output()
        .expect("runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // With --json, standard output is the JSON report alone.
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json: serde_json::Value = serde_json::from_str(&stdout).expect("stdout is one JSON document");
    assert_eq!(json["cameras"][0]["camera_id"], "cam-1");
    assert_eq!(json["cameras"][0]["frames"], mp4_footage().frames(0));
}

#[test]
fn synth_writes_labels_that_match_its_ground_truth() {
    let footage = mp4_footage();
    let classes = std::fs::read_to_string(footage.dir.join("classes.txt")).expect("classes.txt");
    assert_eq!(
        classes.lines().collect::<Vec<_>>(),
        ["crack", "corrosion", "misalignment", "wear", "contamination", "missing_component"]
    );
    let truth: serde_json::Value =
        serde_json::from_slice(&std::fs::read(footage.dir.join("ground_truth.json")).expect("ground truth"))
            .expect("json");
    assert_eq!(truth["cameras"].as_array().map(Vec::len), Some(2));
    for camera in &footage.truth.cameras {
        assert!(!camera.scene.defects.is_empty());
        for defect in &camera.scene.defects {
            let onset = defectflow_models::synth::GroundTruth::onset_frame(defect, footage.truth.fps);
            let class_id = defect.class.yolo_id().to_string();
            let has_class = |frame: u64| {
                let path = footage.dir.join("labels").join(format!("{}_{frame:06}.txt", camera.scene.camera_id));
                let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                text.lines().any(|line| {
                    let fields: Vec<&str> = line.split(' ').collect();
                    assert_eq!(fields.len(), 5, "{}: `{line}`", path.display());
                    assert!(fields[1..].iter().all(|f| f.parse::<f32>().is_ok_and(|v| (0.0..=1.0).contains(&v))));
                    fields[0] == class_id
                })
            };
            if onset > 0 {
                assert!(!has_class(onset - 1), "{} labelled before its onset", defect.defect_id);
            }
            assert!(has_class(onset), "{} not labelled at its onset frame {onset}", defect.defect_id);
            assert!(has_class(camera.frames - 1), "{} not labelled at the end", defect.defect_id);
        }
    }
}

/// An output that cannot open fails the run at its start, naming the file, on every
/// worker (the others do not wait for a delivery that will never come).
#[test]
fn an_output_that_cannot_open_fails_the_run_naming_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("out");
    // work-orders.jsonl taken by a folder: the file cannot be opened.
    std::fs::create_dir_all(out.join("work-orders.jsonl")).expect("a folder in the file's place");
    let footage = mp4_footage();
    let cameras: String = (0..2).map(|i| camera_toml(&format!("cam-{i}"), &file_url(&footage.video(i)), "")).collect();
    let text = format!("[output]\ndir = \"{}\"\n\n{cameras}", out.display());
    let config = RunConfig::parse(&text, "outputs.toml").expect("config");
    let (done_tx, done) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let stop = defectflow::run::StopWhen::after(None);
        let ran = defectflow::run::run(&config, timely::Config::process(2), stop, Default::default());
        let _ = done_tx.send(ran.map(|_| ()));
    });
    let ran = done.recv_timeout(Duration::from_secs(120)).expect("the run ends instead of waiting forever");
    let error = ran.expect_err("the run fails").to_string();
    assert!(error.contains("work-orders.jsonl"), "{error}");
}
