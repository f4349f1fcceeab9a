//! RTSP ingest from a real RTSP server on 127.0.0.1, killed and restarted mid-stream.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::{camera_toml, free_port};

/// The RTSP server process; killed (by its own PID) when dropped.
struct RtspServer(Child);

impl RtspServer {
    fn start(port: u16) -> RtspServer {
        let python = std::env::var("DEFECTFLOW_PYTHON").unwrap_or_else(|_| "/usr/bin/python3".into());
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/rtsp_server.py");
        let mut child = Command::new(&python)
            .arg(script)
            .arg(port.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {python} {script}: {e} (run scripts/install.sh)"));
        let stdout = child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).expect("server output");
        assert_eq!(
            line.trim(),
            "ready",
            "RTSP server did not start (python3-gi and gir1.2-gst-rtsp-server-1.0 needed)"
        );
        RtspServer(child)
    }

    fn kill(mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for RtspServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

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
