//! Camera faults in one run: an RTSP camera whose server is killed and restarted,
//! repeatedly; a camera that never connects; a camera that sends a corrupt stream. The
//! others go on, and each defect in view still ends as one work order.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use defectflow_models::synth::{AssetKind, planned_scene};
use defectflow_schemas::DefectClass;

use crate::checks;
use crate::support::{self, RtspServer, kafka::http_get, kafka::sample, kafka::wait_for};

#[test]
fn camera_faults_leave_one_work_order_per_defect_and_the_others_flowing() {
    let _serial = crate::support::kafka::serial();
    let dir = tempfile::tempdir().expect("tempdir");
    // The pulley's recording, served over RTSP from its start to each connection.
    let scene = planned_scene(
        "cam-pulley",
        "CV-101-PUL",
        AssetKind::ConveyorPulley,
        (640, 360),
        15,
        9201,
        &[(DefectClass::Crack, 1.5)],
    );
    let truth = support::scenes_footage(dir.path(), &[scene], 14.0);
    let recording = dir.path().join(&truth.cameras[0].video);
    // A "recording" that is not a video at all.
    let corrupt = dir.path().join("corrupt.mp4");
    std::fs::write(&corrupt, (0..200_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect::<Vec<u8>>())
        .expect("corrupt file");
    let (rtsp, nobody, metrics) = (support::free_port(), support::free_port(), support::free_port());
    let reference = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/demo-plant/reference");
    let retry = "[cameras.reconnect]\ninitial_backoff_ms = 200\nmax_backoff_ms = 1000\nstall_timeout_ms = 2000\n";
    let config = format!(
        "[runtime]\nworkers = 2\nduration_s = 300\n[anomaly]\ncommission_s = 0\n[model]\nbatch_size = 4\n[plant]\nreference = \"{}\"\n\
         [metrics]\naddress = \"127.0.0.1:{metrics}\"\n\
         [[cameras]]\nid = \"cam-pulley\"\nurl = \"rtsp://127.0.0.1:{rtsp}/cam\"\nmax_fps = 5\n{retry}\
         [[cameras]]\nid = \"cam-motor\"\nurl = \"synth://motor_housing?seed=12&fps=15&asset_id=MT-204&defects=corrosion@3\"\nmax_fps = 5\n\
         [[cameras]]\nid = \"cam-flange\"\nurl = \"rtsp://127.0.0.1:{nobody}/cam\"\n{retry}\
         [[cameras]]\nid = \"cam-gearbox\"\nurl = \"{}\"\n",
        reference.display(),
        support::file_url(&corrupt),
    );
    let config_path = dir.path().join("cameras.toml");
    std::fs::write(&config_path, config).expect("config");
    let out = dir.path().join("out");

    let server = RtspServer::serving(rtsp, Some(&recording));
    let run = crate::support::Drained::spawn(Command::new(env!("CARGO_BIN_EXE_defectflow")).args([
        "run",
        "--json",
        "--config",
        config_path.to_str().expect("utf-8"),
        "--out",
        out.to_str().expect("utf-8"),
    ]));
    // The server is killed and restarted twice while the crack is in view: each time
    // once the pulley has played 6 s more (90 frames), and started again once the camera
    // has counted the broken stream.
    let series = |name: &str, camera: &str| {
        http_get(metrics, "/metrics").and_then(|(_, body)| sample(&body, &format!("{name}{{camera=\"{camera}\"}}")))
    };
    let frames = |camera: &str| series("defectflow_frames_in_total", camera).unwrap_or(0.0);
    let errors = |camera: &str| series("defectflow_camera_errors_total", camera).unwrap_or(0.0);
    // A wait that fails tells each camera's counters and state, and the run's last log lines.
    let wait = |run: &mut crate::support::Drained, what: &str, done: &dyn Fn() -> bool| {
        if let Err(failed) = wait_for(run, what, Duration::from_secs(60), done) {
            let body = http_get(metrics, "/metrics").map(|(_, body)| body).unwrap_or_default();
            let cameras: Vec<&str> = body
                .lines()
                .filter(|l| l.starts_with("defectflow_camera") || l.starts_with("defectflow_frames_in"))
                .collect();
            panic!("{failed}\n{}\n{}", cameras.join("\n"), run.stderr_tail(30));
        }
    };
    let mut run = run;
    let mut server = Some(server);
    for _ in 0..2 {
        let played = frames("cam-pulley");
        wait(&mut run, "the pulley 90 frames on", &|| frames("cam-pulley") >= played + 90.0);
        let broken = errors("cam-pulley");
        if let Some(server) = server.take() {
            server.kill();
        }
        wait(&mut run, "the pulley's broken stream counted", &|| errors("cam-pulley") > broken);
        server = Some(RtspServer::serving(rtsp, Some(&recording)));
    }
    // Healthy once the pulley plays again, the broken cameras still retried or failed.
    let played = frames("cam-pulley");
    wait(&mut run, "the pulley playing again", &|| frames("cam-pulley") >= played + 90.0);
    wait(&mut run, "the motor's 300th frame and the flange's third failure", &|| {
        frames("cam-motor") >= 300.0 && errors("cam-flange") >= 3.0
    });
    let (status, _) = http_get(metrics, "/healthz").expect("healthz");
    assert_eq!(status, "HTTP/1.1 200 OK");
    let (_, body) = http_get(metrics, "/metrics").expect("metrics");
    assert_eq!(sample(&body, "defectflow_camera_state{camera=\"cam-pulley\",state=\"playing\"}"), Some(1.0), "{body}");
    assert_eq!(sample(&body, "defectflow_camera_state{camera=\"cam-motor\",state=\"playing\"}"), Some(1.0), "{body}");
    // Stopped as a service is (graceful: everything flushed).
    let stopped = Command::new("kill").args(["-TERM", &run.id().to_string()]).status().expect("kill");
    assert!(stopped.success(), "SIGTERM sent");

    let output = run.wait_with_output();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "run failed: {stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    let reports = checks::camera_reports(&stdout);
    let pulley = &reports["cam-pulley"];
    assert!(pulley["reconnects"].as_u64().expect("reconnects") >= 2, "{pulley}");
    let flange = &reports["cam-flange"];
    assert_eq!(flange["frames"], 0, "{flange}");
    assert!(flange["errors"].as_u64().expect("errors") >= 3, "retried while the others ran: {flange}");
    let gearbox = &reports["cam-gearbox"];
    assert_eq!(gearbox["state"], "failed", "{gearbox}");
    assert!(gearbox["last_error"].as_str().is_some_and(|e| e.contains("cam-gearbox")), "{gearbox}");
    assert!(reports["cam-motor"]["frames"].as_u64().expect("frames") >= 300, "{}", reports["cam-motor"]);

    // The crack (over three connections) and the corrosion: one work order each.
    let mut expected = checks::defects(&truth);
    expected.insert(("MT-204".into(), "corrosion".into()));
    let keys = checks::one_work_order_per_defect(&checks::jsonl_work_orders(&out), &expected);
    checks::audited_once(&out.join("audit"), &keys);
}
