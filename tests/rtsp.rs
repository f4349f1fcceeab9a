//! RTSP ingest from a real RTSP server on 127.0.0.1, killed and restarted mid-stream,
//! by a camera decoding every frame and one decoding keyframes only.

mod support;

use std::time::{Duration, Instant};

use support::{RtspServer, camera_toml, free_port};

#[test]
fn rtsp_camera_reconnects_after_its_server_restarts_while_another_camera_keeps_flowing() {
    let port = free_port();
    let metrics = free_port();
    let server = RtspServer::start(port);
    let retry = "[cameras.reconnect]\ninitial_backoff_ms = 200\nmax_backoff_ms = 1000\nstall_timeout_ms = 2000\n";
    let config = format!("[metrics]\naddress = \"127.0.0.1:{metrics}\"\n")
        + &camera_toml("cam-rtsp", &format!("rtsp://127.0.0.1:{port}/cam"), &format!("decode = \"all\"\n{retry}"))
        // The server sends a keyframe a second: this camera decodes one frame a second.
        + &camera_toml("cam-key", &format!("rtsp://127.0.0.1:{port}/cam"), &format!("decode = \"keyframes\"\n{retry}"))
        + &camera_toml("cam-synth", "synth://belt?seed=4&fps=15&defects=wear@1", "");
    let started = Instant::now();
    let run = support::Running::start(&config, 1);
    let frames = |seen: &[support::Seen], camera: &str, since: Instant| {
        seen.iter().filter(|s| s.camera == camera && s.at > since).count()
    };
    let rtsp_frames = |seen: &[support::Seen], since: Instant| {
        frames(seen, "cam-rtsp", since) >= 15 && frames(seen, "cam-key", since) >= 3
    };

    let killed = run.wait_until("15 frames and 3 keyframes from the RTSP cameras", Duration::from_secs(60), |seen| {
        rtsp_frames(seen, started)
    });
    server.kill();
    // The server stays away until the camera has failed twice (the broken stream, then a
    // refused reconnection) and the synthetic camera has played a second on meanwhile.
    let errors = || {
        support::kafka::http_get(metrics, "/metrics")
            .and_then(|(_, body)| support::kafka::sample(&body, "defectflow_camera_errors_total{camera=\"cam-rtsp\"}"))
    };
    let counted = errors().unwrap_or(0.0);
    let synth_frames =
        |seen: &[support::Seen]| seen.iter().filter(|s| s.camera == "cam-synth" && s.at > killed).count();
    let restarted = run.wait_until(
        "the RTSP camera failing twice while the synthetic camera plays on",
        Duration::from_secs(60),
        |seen| errors().is_some_and(|n| n >= counted + 2.0) && synth_frames(seen) >= 15,
    );
    let _server = RtspServer::start(port);
    run.wait_until(
        "15 frames and 3 keyframes from the RTSP cameras after their server came back",
        Duration::from_secs(60),
        |seen| rtsp_frames(seen, restarted),
    );
    let outcome = run.stop();

    let when = |camera: &str| -> Vec<Duration> {
        outcome.seen.iter().filter(|s| s.camera == camera).map(|s| s.at.duration_since(started)).collect()
    };
    let (killed, restarted) = (killed.duration_since(started), restarted.duration_since(started));
    eprintln!("cam-rtsp: server killed at {killed:?}, started again at {restarted:?}");
    let report = outcome.report("cam-rtsp");
    assert!(report.reconnects >= 1 && report.errors >= 1, "{report:?}");
    assert!(outcome.seen.iter().filter(|s| s.camera.starts_with("cam-")).all(|s| (s.width, s.height) == (320, 180)));
    // The keyframe camera reconnected too, and decoded few of the frames (a keyframe in 15).
    let key = outcome.report("cam-key");
    assert!(key.reconnects >= 1 && key.errors >= 1, "{key:?}");
    assert!(key.skipped_undecoded >= 5 * key.received, "{key:?}");

    // The synthetic camera kept flowing while the RTSP camera was away: the wait for its
    // 15 frames before the server came back is that check.
    let outage = when("cam-synth").into_iter().filter(|t| *t > killed && *t < restarted).count();
    eprintln!("cam-synth: {outage} frames while cam-rtsp was away");
}
