//! Prometheus metrics and health checks over HTTP (`[metrics]`): `GET /metrics` in the
//! Prometheus text format, `GET /healthz` (200 while the run is healthy, 503 once a sink
//! has failed: restart it) and `GET /readyz` (200 once the model, the sinks and the
//! cameras are up and while the output flows; 503 with the reason while starting,
//! stopping or stalled: send no traffic, wait). A small blocking server on its own
//! thread; it binds 127.0.0.1 unless told otherwise.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::sources::camera::CameraStats;

/// Upper bounds (seconds) of the latency histograms' buckets.
const BUCKETS: [f64; 10] = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

/// A Prometheus histogram of durations.
#[derive(Debug, Default)]
pub struct Histogram {
    counts: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, seconds: f64) {
        for (bound, count) in BUCKETS.iter().zip(&self.counts) {
            if seconds <= *bound {
                count.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add((seconds.max(0.0) * 1e6) as u64, Ordering::Relaxed);
    }

    fn render(&self, name: &str, help: &str, out: &mut String) {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} histogram\n"));
        for (bound, count) in BUCKETS.iter().zip(&self.counts) {
            out.push_str(&format!("{name}_bucket{{le=\"{bound}\"}} {}\n", count.load(Ordering::Relaxed)));
        }
        let count = self.count.load(Ordering::Relaxed);
        out.push_str(&format!("{name}_bucket{{le=\"+Inf\"}} {count}\n"));
        out.push_str(&format!("{name}_sum {}\n", self.sum_us.load(Ordering::Relaxed) as f64 / 1e6));
        out.push_str(&format!("{name}_count {count}\n"));
    }
}

/// Everything the run reports; shared by the workers, the sinks and the server.
#[derive(Debug, Default)]
pub struct Metrics {
    cameras: Mutex<Vec<Arc<CameraStats>>>,
    /// Frames the model scored.
    pub frames_inferred: AtomicU64,
    /// Time in the network per batch.
    pub inference: Histogram,
    /// Wall clock from a defect's first detection (capture time) to its work order
    /// leaving defectflow.
    pub detection_to_work_order: Histogram,
    /// The same latencies, each (seconds), for the run's summary.
    pub new_work_order_latencies: Mutex<Vec<f64>>,
    /// Seconds from the capture of the frame that made each revision to its leaving.
    pub revision_latencies: Mutex<Vec<f64>>,
    pub kafka_sent: AtomicU64,
    pub kafka_errors: AtomicU64,
    pub dead_letters: AtomicU64,
    /// Evidence images written, asked for a frame no longer held, failed to write.
    pub evidence_written: AtomicU64,
    pub evidence_missing: AtomicU64,
    pub evidence_errors: AtomicU64,
    /// Frames with detections let go before the tracker reached them (store full).
    pub evidence_frames_dropped: AtomicU64,
    /// Frames with detections held now for evidence, over all cameras of the process.
    pub evidence_frames_held: AtomicU64,
    /// Cleared when a sink fails: `/healthz` answers 503.
    pub healthy: AtomicBool,
    /// Set once every worker of the process is up (the model loaded, the sinks open,
    /// the cameras started), cleared when the run stops: `/readyz` (with the output
    /// flowing).
    pub started: AtomicBool,
    /// Workers of the process that are up.
    pub workers_up: AtomicU64,
    /// The model's version, for `defectflow_build_info`.
    pub model_version: Mutex<Option<String>>,
    /// Where the time goes between a frame's capture and its revision leaving.
    pub stage_times: StageTimes,
    /// Wall clock (ms) at which the sink began its current delivery; 0: none under way.
    pub delivering_since_ms: AtomicU64,
    /// Set while the audit log cannot write (disk full, read-only); its failed commits.
    pub audit_failing: AtomicBool,
    pub audit_errors: AtomicU64,
    /// Set while a failing audit log holds as many rows as it may (the cameras wait).
    pub audit_overfull: AtomicBool,
    /// Changes of the thresholds file put in force, and those refused (the thresholds
    /// before stay).
    pub threshold_reloads: AtomicU64,
    pub threshold_reload_errors: AtomicU64,
    /// Models swapped in while the run went on (`[model] watch`), and new models refused.
    pub model_swaps: AtomicU64,
    pub model_swap_errors: AtomicU64,
    /// Each camera's normal (commissioning and gating), once the model is loaded.
    pub gates: Mutex<Option<defectflow_operators::gating::CameraGates>>,
    /// Each camera's last scored frame, with change gating on (`[model] change_threshold`).
    pub changes: Mutex<Option<defectflow_operators::change::ChangeGates>>,
    /// The work orders as they left: backlog, overdue, open hours, shortages, outcomes.
    pub board: Mutex<crate::board::Board>,
}

/// A delivery taking longer than this is a broker away or overloaded: the sources
/// hold back until it is through.
const OUTPUT_STALL_MS: u64 = 1_000;

/// Points a frame (and a revision it makes) passes on its way out, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Taken from the camera's queue into the dataflow.
    Ingested = 0,
    /// Scored by the model.
    Inferred = 1,
    /// The revision emitted by the work-order dataflow.
    Emitted = 2,
    /// The revision's time closed everywhere and handed to the sinks.
    Closed = 3,
}

impl Stage {
    pub const ALL: [Stage; 4] = [Stage::Ingested, Stage::Inferred, Stage::Emitted, Stage::Closed];

    pub fn name(self) -> &'static str {
        match self {
            Stage::Ingested => "ingested",
            Stage::Inferred => "inferred",
            Stage::Emitted => "emitted",
            Stage::Closed => "closed",
        }
    }
}

/// Seconds from capture to each [`Stage`], one value per frame or revision, kept only
/// while `enabled` (by `defectflow bench`): a long run would otherwise grow them.
#[derive(Debug, Default)]
pub struct StageTimes {
    pub enabled: AtomicBool,
    samples: Mutex<[Vec<f64>; 4]>,
}

impl StageTimes {
    /// Records that something captured at `capture_ms` reached `stage` now.
    pub fn record(&self, stage: Stage, capture_ms: u64) {
        if self.enabled.load(Ordering::Relaxed) {
            let seconds = crate::clock::now_ms().saturating_sub(capture_ms) as f64 / 1000.0;
            self.samples.lock().unwrap_or_else(|p| p.into_inner())[stage as usize].push(seconds);
        }
    }

    /// Everything recorded, per stage.
    pub fn take(&self) -> Vec<(Stage, Vec<f64>)> {
        let mut samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        Stage::ALL.iter().map(|&s| (s, std::mem::take(&mut samples[s as usize]))).collect()
    }
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        Arc::new(Metrics { healthy: AtomicBool::new(true), ..Metrics::default() })
    }

    /// Whether an output is stuck: the sink has been waiting for the broker longer than
    /// a delivery takes, or the audit log cannot write and holds all it may.
    pub fn output_stalled(&self) -> bool {
        let since = self.delivering_since_ms.load(Ordering::Relaxed);
        let waiting = since != 0 && crate::clock::now_ms().saturating_sub(since) > OUTPUT_STALL_MS;
        waiting || self.audit_overfull.load(Ordering::Relaxed)
    }

    /// Whether the process takes and delivers work: up, no sink failed, and the output
    /// not stalled (`Err`: why not).
    pub fn ready(&self) -> Result<(), &'static str> {
        if !self.started.load(Ordering::Relaxed) {
            Err("not started, or stopping")
        } else if !self.healthy.load(Ordering::Relaxed) {
            Err("a sink failed")
        } else if self.output_stalled() {
            Err("the output is stalled (the broker or the audit disk)")
        } else {
            Ok(())
        }
    }

    /// Frames received and dropped, over every camera so far.
    pub fn camera_totals(&self) -> (u64, u64) {
        let cameras = self.cameras.lock().map(|c| c.clone()).unwrap_or_default();
        cameras.iter().fold((0, 0), |(received, dropped), c| {
            (received + c.received.load(Ordering::Relaxed), dropped + c.dropped.load(Ordering::Relaxed))
        })
    }

    pub fn add_camera(&self, stats: Arc<CameraStats>) {
        if let Ok(mut cameras) = self.cameras.lock() {
            cameras.push(stats);
        }
    }

    /// Whether `expected` cameras have been added and every one has finished.
    pub fn cameras_finished(&self, expected: usize) -> bool {
        self.cameras.lock().is_ok_and(|cameras| cameras.len() >= expected && cameras.iter().all(|c| c.finished()))
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let model = self.model_version.lock().map(|m| m.clone()).unwrap_or_default().unwrap_or_default();
        out.push_str(&format!(
            "# HELP defectflow_build_info The build and the model it runs.
# TYPE defectflow_build_info gauge
             defectflow_build_info{{version=\"{}\",model_version=\"{model}\"}} 1
",
            env!("CARGO_PKG_VERSION")
        ));
        out.push_str(&format!(
            "# HELP defectflow_ready 1 while /readyz answers 200.
# TYPE defectflow_ready gauge
defectflow_ready {}
",
            u64::from(self.ready().is_ok())
        ));
        self.render_cameras(&mut out);
        render_gates(self, &mut out);
        self.render_stages(&mut out);
        self.board.lock().unwrap_or_else(|p| p.into_inner()).render(crate::clock::now_ms(), &mut out);
        out
    }

    /// Each camera's counters and connection state.
    fn render_cameras(&self, out: &mut String) {
        let cameras = self.cameras.lock().map(|c| c.clone()).unwrap_or_default();
        let per_camera = |out: &mut String, name: &str, help: &str, kind: &str, value: &dyn Fn(&CameraStats) -> u64| {
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
            for camera in &cameras {
                out.push_str(&format!("{name}{{camera=\"{}\"}} {}\n", camera.camera_id, value(camera)));
            }
        };
        per_camera(out, "defectflow_frames_in_total", "Frames decoded per camera.", "counter", &|c| {
            c.received.load(Ordering::Relaxed)
        });
        per_camera(out, "defectflow_frames_dropped_total", "Frames lost to a full queue.", "counter", &|c| {
            c.dropped.load(Ordering::Relaxed)
        });
        per_camera(
            out,
            "defectflow_frames_late_total",
            "Frames that arrived behind the event-time frontier and were re-timed to it.",
            "counter",
            &|c| c.late.load(Ordering::Relaxed),
        );
        per_camera(out, "defectflow_camera_reconnects_total", "Reconnections after the first.", "counter", &|c| {
            c.reconnects.load(Ordering::Relaxed)
        });
        per_camera(out, "defectflow_camera_errors_total", "Failed connections and broken streams.", "counter", &|c| {
            c.errors.load(Ordering::Relaxed)
        });
        out.push_str("# HELP defectflow_camera_state 1 for the camera's current connection state.\n");
        out.push_str("# TYPE defectflow_camera_state gauge\n");
        for camera in &cameras {
            let now = camera.state();
            for state in ["connecting", "playing", "backoff", "ended", "failed", "stopped"] {
                let on = u8::from(now.name() == state);
                out.push_str(&format!(
                    "defectflow_camera_state{{camera=\"{}\",state=\"{state}\"}} {on}\n",
                    camera.camera_id
                ));
            }
        }
    }

    /// The model's, the outputs' and the evidence's figures.
    fn render_stages(&self, out: &mut String) {
        let counter = |out: &mut String, name: &str, help: &str, value: &AtomicU64| {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}\n",
                value.load(Ordering::Relaxed)
            ));
        };
        counter(out, "defectflow_frames_inferred_total", "Frames scored by the model.", &self.frames_inferred);
        self.inference.render("defectflow_inference_seconds", "Time in the network per batch.", out);
        self.detection_to_work_order.render(
            "defectflow_detection_to_work_order_seconds",
            "From a defect's first detection to its work order leaving defectflow.",
            out,
        );
        counter(out, "defectflow_kafka_messages_sent_total", "Messages acknowledged by Kafka.", &self.kafka_sent);
        counter(out, "defectflow_kafka_delivery_errors_total", "Failed Kafka deliveries.", &self.kafka_errors);
        counter(out, "defectflow_dead_letters_total", "Inputs sent to the dead-letter topic.", &self.dead_letters);
        counter(out, "defectflow_evidence_written_total", "Evidence images written.", &self.evidence_written);
        counter(
            out,
            "defectflow_evidence_missing_total",
            "Evidence asked for a frame no longer held.",
            &self.evidence_missing,
        );
        counter(out, "defectflow_evidence_errors_total", "Evidence images not written.", &self.evidence_errors);
        counter(
            out,
            "defectflow_evidence_frames_dropped_total",
            "Frames with detections let go before the tracker reached them.",
            &self.evidence_frames_dropped,
        );
        out.push_str(&format!(
            "# HELP defectflow_work_orders_open Work orders not closed.\n# TYPE defectflow_work_orders_open gauge\n\
             defectflow_work_orders_open {}\n",
            self.board.lock().unwrap_or_else(|p| p.into_inner()).open_count()
        ));
        let gauge = |out: &mut String, name: &str, help: &str, value: u64| {
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}\n"));
        };
        gauge(
            out,
            "defectflow_output_stalled",
            "1 while an output is stuck (the cameras are held back): a delivery waiting for the broker over a second, or a failing audit log holding all the rows it may.",
            u64::from(self.output_stalled()),
        );
        gauge(
            out,
            "defectflow_audit_failing",
            "1 while the audit log cannot write its files (its rows wait in memory and are written once it can).",
            u64::from(self.audit_failing.load(Ordering::Relaxed)),
        );
        counter(out, "defectflow_audit_write_errors_total", "Failed audit-log commits.", &self.audit_errors);
        counter(
            out,
            "defectflow_threshold_reloads_total",
            "Changes of the thresholds file ([plant] thresholds) put in force.",
            &self.threshold_reloads,
        );
        counter(
            out,
            "defectflow_threshold_reload_errors_total",
            "Changes of the thresholds file refused (the file does not parse or a value is out of range); the thresholds before stay in force.",
            &self.threshold_reload_errors,
        );
        counter(
            out,
            "defectflow_model_swaps_total",
            "New models taken over by the running process ([model] watch); defectflow_build_info names the one running.",
            &self.model_swaps,
        );
        counter(
            out,
            "defectflow_model_swap_errors_total",
            "New models in the watched folder that did not load; the running one stays.",
            &self.model_swap_errors,
        );
        gauge(
            out,
            "defectflow_evidence_frames_held",
            "Frames with detections held for evidence: awaiting the tracker, or the best frame of a live track.",
            self.evidence_frames_held.load(Ordering::Relaxed),
        );
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `address` from a background thread.
pub fn serve(address: &str, metrics: Arc<Metrics>) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(address)?;
    let bound = listener.local_addr()?;
    std::thread::Builder::new().name("metrics".into()).spawn(move || {
        for stream in listener.incoming().flatten() {
            if let Err(error) = answer(stream, &metrics) {
                tracing::debug!(%error, "metrics request");
            }
        }
    })?;
    tracing::info!(%bound, "metrics on /metrics, health on /healthz, readiness on /readyz");
    Ok(bound)
}

fn answer(stream: TcpStream, metrics: &Metrics) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut request_line = String::new();
    BufReader::new(&stream).read_line(&mut request_line)?;
    let path = request_line.split_whitespace().nth(1).unwrap_or("/");
    let (status, body) = match path {
        "/metrics" => ("200 OK", metrics.render()),
        "/healthz" if metrics.healthy.load(Ordering::Relaxed) => ("200 OK", "ok\n".to_owned()),
        "/healthz" => ("503 Service Unavailable", "a sink failed\n".to_owned()),
        "/readyz" => match metrics.ready() {
            Ok(()) => ("200 OK", "ready\n".to_owned()),
            Err(why) => ("503 Service Unavailable", format!("{why}\n")),
        },
        _ => ("404 Not Found", "try /metrics, /healthz or /readyz\n".to_owned()),
    };
    let mut stream = stream;
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// Per camera: commissioning state, the share of its view departing from normal (its
/// drift: a camera whose view has changed for good needs commissioning again) and the
/// frames found disturbed.
fn render_gates(metrics: &Metrics, out: &mut String) {
    let gates = metrics.gates.lock().ok().and_then(|g| g.as_ref().map(|g| g.stats())).unwrap_or_default();
    out.push_str("# HELP defectflow_camera_gate 1 for the camera's gate state (ungated, commissioning, gated).\n");
    out.push_str("# TYPE defectflow_camera_gate gauge\n");
    for (camera, stats) in &gates {
        for state in ["ungated", "commissioning", "gated"] {
            let on = u8::from(stats.state == state);
            out.push_str(&format!("defectflow_camera_gate{{camera=\"{camera}\",state=\"{state}\"}} {on}\n"));
        }
    }
    out.push_str("# HELP defectflow_camera_departing_share Share of the camera's cells departing from its normal in its latest frame.\n");
    out.push_str("# TYPE defectflow_camera_departing_share gauge\n");
    for (camera, stats) in &gates {
        out.push_str(&format!("defectflow_camera_departing_share{{camera=\"{camera}\"}} {}\n", stats.departing_share));
    }
    out.push_str("# HELP defectflow_frames_disturbed_total Frames whose whole view changed (shake, steam, lighting): nothing looked for.\n");
    out.push_str("# TYPE defectflow_frames_disturbed_total counter\n");
    for (camera, stats) in &gates {
        out.push_str(&format!("defectflow_frames_disturbed_total{{camera=\"{camera}\"}} {}\n", stats.disturbed_frames));
    }
    out.push_str("# HELP defectflow_scene_changes_total Changes of the whole scene (lighting, exposure: many regions departing together) re-learnt instead of reported.\n");
    out.push_str("# TYPE defectflow_scene_changes_total counter\n");
    for (camera, stats) in &gates {
        out.push_str(&format!("defectflow_scene_changes_total{{camera=\"{camera}\"}} {}\n", stats.scene_changes));
    }
    out.push_str("# HELP defectflow_baseline_drift How far the camera's baseline has followed the view since it was commissioned, in standard deviations.\n");
    out.push_str("# TYPE defectflow_baseline_drift gauge\n");
    for (camera, stats) in &gates {
        out.push_str(&format!("defectflow_baseline_drift{{camera=\"{camera}\"}} {}\n", stats.drift));
    }
    let unchanged = metrics.changes.lock().ok().and_then(|c| c.as_ref().map(|c| c.unchanged())).unwrap_or_default();
    out.push_str("# HELP defectflow_frames_unchanged_total Frames like their camera's last scored one (change gating): the network skipped, that frame's detections repeated.\n");
    out.push_str("# TYPE defectflow_frames_unchanged_total counter\n");
    for (camera, frames) in &unchanged {
        out.push_str(&format!("defectflow_frames_unchanged_total{{camera=\"{camera}\"}} {frames}\n"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative() {
        let h = Histogram::default();
        h.observe(0.07);
        h.observe(3.0);
        let mut out = String::new();
        h.render("x", "help", &mut out);
        assert!(out.contains("x_bucket{le=\"0.05\"} 0\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"0.1\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"5\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"+Inf\"} 2\nx_sum 3.07\nx_count 2\n"), "{out}");
    }

    /// A worker without cameras goes on until the process's cameras are done: not
    /// before the others have registered theirs, nor while one still plays.
    #[test]
    fn the_cameras_are_finished_once_every_expected_one_has() {
        use crate::sources::camera::{self, CameraState};
        let metrics = Metrics::new();
        assert!(!metrics.cameras_finished(2), "none registered yet");
        let [(_a_tx, a), (_b_tx, b)] = ["a", "b"].map(|id| camera::detached(id, 1));
        metrics.add_camera(Arc::clone(&a.stats));
        a.stats.set_state(CameraState::Ended);
        assert!(!metrics.cameras_finished(2), "one of two registered");
        metrics.add_camera(Arc::clone(&b.stats));
        assert!(!metrics.cameras_finished(2), "one still plays");
        b.stats.set_state(CameraState::Failed);
        assert!(metrics.cameras_finished(2));
        assert!(Metrics::new().cameras_finished(0), "a process without cameras");
    }

    #[test]
    fn the_server_answers_metrics_and_health() {
        let metrics = Metrics::new();
        metrics.kafka_sent.fetch_add(3, Ordering::Relaxed);
        let address = serve("127.0.0.1:0", Arc::clone(&metrics)).expect("bind");
        let get = |path: &str| {
            let mut stream = TcpStream::connect(address).expect("connect");
            write!(stream, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").expect("write");
            let mut text = String::new();
            std::io::Read::read_to_string(&mut stream, &mut text).expect("read");
            text
        };
        let body = get("/metrics");
        assert!(body.starts_with("HTTP/1.1 200"), "{body}");
        assert!(body.contains("defectflow_kafka_messages_sent_total 3\n"), "{body}");
        assert!(get("/healthz").starts_with("HTTP/1.1 200"));
        assert!(get("/readyz").starts_with("HTTP/1.1 503"), "not ready before the workers are up");
        metrics.started.store(true, Ordering::Relaxed);
        assert!(get("/readyz").starts_with("HTTP/1.1 200"));
        metrics.delivering_since_ms.store(crate::clock::now_ms() - 5_000, Ordering::Relaxed);
        let stalled = get("/readyz");
        assert!(stalled.starts_with("HTTP/1.1 503") && stalled.contains("stalled"), "{stalled}");
        metrics.delivering_since_ms.store(0, Ordering::Relaxed);
        assert!(get("/readyz").starts_with("HTTP/1.1 200"));
        *metrics.model_version.lock().expect("lock") = Some("abc123".into());
        let info =
            format!("defectflow_build_info{{version=\"{}\",model_version=\"abc123\"}} 1", env!("CARGO_PKG_VERSION"));
        assert!(get("/metrics").contains(&info), "{info}");
        metrics.healthy.store(false, Ordering::Relaxed);
        assert!(get("/healthz").starts_with("HTTP/1.1 503"));
        assert!(get("/readyz").starts_with("HTTP/1.1 503"));
        assert!(get("/nope").starts_with("HTTP/1.1 404"));
    }
}
