//! RTSP ingest from a real RTSP server on 127.0.0.1, killed and restarted mid-stream.

mod support;

use std::time::{Duration, Instant};

use support::{RtspServer, camera_toml, free_port};

#[test]
fn rtsp_camera_reconnects_after_its_server_restarts_while_another_camera_keeps_flowing() {
    let port = free_port();
    let server = RtspServer::start(port);
    let retry = "[cameras.reconnect]\ninitial_backoff_ms = 200\nmax_backoff_ms = 1000\nstall_timeout_ms = 2000\n";
    let config = camera_toml("cam-rtsp", &format!("rtsp://127.0.0.1:{port}/cam"), retry)
        + &camera_toml("cam-synth", "synth://belt?seed=4&fps=15&defects=wear@1", "");
    let started = Instant::now();
    let run = std::thread::spawn(move || support::run(&config, 1, Some(Duration::from_secs(16))));

    std::thread::sleep(Duration::from_secs(5));
    server.kill();
    let killed = started.elapsed();
    std::thread::sleep(Duration::from_secs(3));
    let _server = RtspServer::start(port);
    let restarted = started.elapsed();
    let outcome = run.join().expect("run thread");

    let when = |camera: &str| -> Vec<Duration> {
        outcome.seen.iter().filter(|s| s.camera == camera).map(|s| s.at.duration_since(started)).collect()
    };
    let rtsp = when("cam-rtsp");
    let before = rtsp.iter().filter(|t| **t < killed).count();
    let after = rtsp.iter().filter(|t| **t > restarted).count();
    assert!(before >= 15, "frames before the server was killed: {before}");
    assert!(after >= 15, "frames after the server came back: {after}");
    eprintln!("cam-rtsp: {before} frames before the kill at {killed:?}, {after} after the restart at {restarted:?}");
    let report = outcome.report("cam-rtsp");
    assert!(report.reconnects >= 1 && report.errors >= 1, "{report:?}");
    assert!(outcome.seen.iter().filter(|s| s.camera == "cam-rtsp").all(|s| (s.width, s.height) == (320, 180)));

    // The synthetic camera flowed throughout the outage, at its own rate.
    let outage = when("cam-synth").into_iter().filter(|t| *t > killed && *t < restarted).count();
    let expected = (restarted - killed).as_secs_f64() * 15.0;
    assert!(
        outage as f64 > expected * 0.8,
        "synthetic frames during the outage: {outage}, expected about {expected:.0}"
    );
}
