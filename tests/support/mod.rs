//! Shared helpers of the end-to-end tests: generated footage, configs and runs.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use defectflow::config::RunConfig;
use defectflow::run::{self, CameraReport, Hooks, StopWhen};
use defectflow::tools::footage::{Codec, Container, FootageOptions, write_plant, write_scenes};
use defectflow_models::synth::{AssetKind, GroundTruth, PlantOptions, planned_scene};
use defectflow_schemas::DefectClass;

pub mod cmms;
pub mod kafka;
pub mod outputs;

/// Footage written once per test binary and shared by its tests.
pub struct Footage {
    pub dir: PathBuf,
    pub truth: GroundTruth,
    _keep: tempfile::TempDir,
}

impl Footage {
    pub fn video(&self, camera: usize) -> PathBuf {
        self.dir.join(&self.truth.cameras[camera].video)
    }

    pub fn frames(&self, camera: usize) -> u64 {
        self.truth.cameras[camera].frames
    }
}

fn write(codec: Codec, container: Container, cameras: usize, seconds: f64) -> Footage {
    let keep = tempfile::tempdir().expect("temp dir");
    let options = FootageOptions {
        plant: PlantOptions {
            seed: 3,
            cameras,
            defect_free_cameras: 0,
            duration_s: seconds,
            fps: 15,
            width: 320,
            height: 180,
        },
        codec,
        container,
    };
    let truth = write_plant(keep.path(), &options).expect("footage is written");
    Footage { dir: keep.path().to_path_buf(), truth, _keep: keep }
}

/// Two H.264 MP4 cameras, 4 s at 15 fps, 320x180.
pub fn mp4_footage() -> &'static Footage {
    static FOOTAGE: OnceLock<Footage> = OnceLock::new();
    FOOTAGE.get_or_init(|| write(Codec::H264, Container::Mp4, 2, 4.0))
}

/// One H.265 MKV camera, 2 s at 15 fps, 320x180.
pub fn mkv_h265_footage() -> &'static Footage {
    static FOOTAGE: OnceLock<Footage> = OnceLock::new();
    FOOTAGE.get_or_init(|| write(Codec::H265, Container::Mkv, 1, 2.0))
}

/// A camera entry of a TOML config.
pub fn camera_toml(id: &str, url: &str, extra: &str) -> String {
    format!("[[cameras]]\nid = \"{id}\"\nurl = \"{url}\"\nwidth = 320\nheight = 180\n{extra}\n")
}

pub fn file_url(path: &Path) -> String {
    format!("file://{}", path.display())
}

/// An address on 127.0.0.1 where nothing listens (the port was just free).
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

/// One frame seen after decode.
#[derive(Clone, Debug)]
pub struct Seen {
    pub worker: usize,
    pub camera: String,
    pub frame_index: u64,
    pub capture_ms: u64,
    pub pts_ns: Option<u64>,
    pub width: u32,
    pub height: u32,
    pub tensor_len: usize,
    pub mean: f32,
    pub at: Instant,
}

/// What a run produced.
pub struct Outcome {
    pub reports: Vec<CameraReport>,
    pub seen: Vec<Seen>,
    pub frontiers: Vec<(usize, u64)>,
}

impl Outcome {
    pub fn report(&self, camera: &str) -> &CameraReport {
        self.reports.iter().find(|r| r.camera_id == camera).unwrap_or_else(|| panic!("no report for {camera}"))
    }

    pub fn seen_by_camera(&self) -> BTreeMap<String, Vec<Seen>> {
        let mut by: BTreeMap<String, Vec<Seen>> = BTreeMap::new();
        for s in &self.seen {
            by.entry(s.camera.clone()).or_default().push(s.clone());
        }
        by
    }
}

/// Runs the dataflow on a config text with `workers` threads.
pub fn run(config_text: &str, workers: usize, after: Option<Duration>) -> Outcome {
    let config = RunConfig::parse(config_text, "test config").expect("config is valid");
    run_config(&config, workers, after)
}

pub fn run_config(config: &RunConfig, workers: usize, after: Option<Duration>) -> Outcome {
    run_seen(config, workers, StopWhen::after(after), Arc::new(Mutex::new(Vec::new())))
}

/// A run going on in the background: the frames seen so far, and a stop.
pub struct Running {
    seen: Arc<Mutex<Vec<Seen>>>,
    interrupted: Arc<std::sync::atomic::AtomicBool>,
    run: Option<std::thread::JoinHandle<Outcome>>,
}

impl Running {
    /// Starts a run of a config text with `workers` threads that goes on until stopped
    /// (or its cameras end).
    pub fn start(config_text: &str, workers: usize) -> Running {
        let config = RunConfig::parse(config_text, "test config").expect("config is valid");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = StopWhen::after(None);
        let interrupted = Arc::clone(&stop.interrupted);
        let run = std::thread::spawn({
            let seen = Arc::clone(&seen);
            move || run_seen(&config, workers, stop, seen)
        });
        Running { seen, interrupted, run: Some(run) }
    }

    /// Waits until `done` holds of the frames seen so far, within `within`, while the
    /// run goes on; returns when it did.
    pub fn wait_until(&self, what: &str, within: Duration, done: impl Fn(&[Seen]) -> bool) -> Instant {
        let deadline = Instant::now() + within;
        // On a copy: `done` may ask the metrics, and the run must not wait for it.
        while !done(&self.seen.lock().expect("lock").clone()) {
            assert!(Instant::now() < deadline, "{what}: not within {within:?}");
            assert!(!self.run.as_ref().is_some_and(|r| r.is_finished()), "{what}: the run ended first");
            std::thread::sleep(Duration::from_millis(50));
        }
        Instant::now()
    }

    /// Stops the run as a signal would, and returns what it produced.
    pub fn stop(mut self) -> Outcome {
        self.interrupted.store(true, std::sync::atomic::Ordering::Relaxed);
        self.run.take().expect("a running run").join().expect("run thread")
    }
}

impl Drop for Running {
    /// A test that fails while the run goes on stops it.
    fn drop(&mut self) {
        self.interrupted.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

fn run_seen(config: &RunConfig, workers: usize, stop: StopWhen, seen: Arc<Mutex<Vec<Seen>>>) -> Outcome {
    let frontiers = Arc::new(Mutex::new(Vec::new()));
    let hooks = Hooks {
        on_frame: Some({
            let seen = Arc::clone(&seen);
            Arc::new(move |worker, tensor| {
                let bytes = tensor.bytes();
                let mean = bytes.iter().map(|&v| v as f32).sum::<f32>() / bytes.len().max(1) as f32 / 255.0;
                seen.lock().expect("lock").push(Seen {
                    worker,
                    camera: tensor.meta.camera_id.clone(),
                    frame_index: tensor.meta.frame_index,
                    capture_ms: tensor.meta.capture_ms,
                    pts_ns: tensor.meta.pts_ns,
                    width: tensor.meta.width,
                    height: tensor.meta.height,
                    tensor_len: bytes.len(),
                    mean,
                    at: Instant::now(),
                })
            })
        }),
        on_frontier: Some({
            let frontiers = Arc::clone(&frontiers);
            Arc::new(move |worker, t| frontiers.lock().expect("lock").push((worker, t)))
        }),
        on_observation: None,
        time_stages: false,
        metrics: None,
        stagger_cameras: None,
    };
    let reports = run::run(config, timely::Config::process(workers), stop, hooks).expect("run completes");
    let seen = seen.lock().expect("lock").clone();
    let frontiers = frontiers.lock().expect("lock").clone();
    Outcome { reports, seen, frontiers }
}

/// Footage of the demo plant's four cameras (ids and assets as in
/// `examples/demo-plant/reference`), one defect each, written as H.264 files.
pub fn demo_plant_footage(dir: &Path) -> GroundTruth {
    let size = (640, 360);
    let scenes = vec![
        planned_scene(
            "cam-pulley",
            "CV-101-PUL",
            AssetKind::ConveyorPulley,
            size,
            15,
            9101,
            &[(DefectClass::Crack, 1.5)],
        ),
        planned_scene("cam-motor", "MT-204", AssetKind::MotorHousing, size, 15, 9102, &[(DefectClass::Corrosion, 1.5)]),
        planned_scene(
            "cam-flange",
            "FL-330",
            AssetKind::BoltedFlange,
            size,
            15,
            9103,
            &[(DefectClass::MissingComponent, 1.5)],
        ),
        planned_scene("cam-gearbox", "GB-412", AssetKind::Gearbox, size, 15, 9104, &[(DefectClass::Wear, 1.5)]),
    ];
    scenes_footage(dir, &scenes, 6.0)
}

/// `[[cameras]]` tables for the footage's recordings (in `dir`), replayed with fixed
/// capture times (`start_ms`) so every run sees the same frames at the same times, the
/// model on 5 frames a second, and `extra` lines added to each table.
pub fn recorded_cameras(dir: &Path, truth: &GroundTruth, extra: &str) -> String {
    truth
        .cameras
        .iter()
        .map(|camera| {
            let url = file_url(&dir.join(&camera.video));
            format!(
                "[[cameras]]\nid = \"{}\"\nurl = \"{url}\"\nstart_ms = 1790000000000\n{extra}max_fps = 5\n",
                camera.scene.camera_id
            )
        })
        .collect()
}

/// H.264 MP4 footage of `scenes` (640×360, 15 fps) for `seconds`, written into `dir`.
pub fn scenes_footage(dir: &Path, scenes: &[defectflow_models::synth::SceneSpec], seconds: f64) -> GroundTruth {
    let options = FootageOptions {
        plant: PlantOptions {
            seed: 9100,
            cameras: scenes.len(),
            defect_free_cameras: 0,
            duration_s: seconds,
            fps: 15,
            width: 640,
            height: 360,
        },
        codec: Codec::H264,
        container: Container::Mp4,
    };
    write_scenes(dir, scenes, &options).expect("footage")
}

/// A started process whose stdout and stderr are read while it writes them. A pipe that
/// nobody reads fills (64 KiB on Linux) and then blocks the process's next write: a long
/// run that logs each reconnect would stall whichever thread logged.
pub struct Drained {
    child: Child,
    streams: [Stream; 2],
}

/// What a process wrote to one of its pipes so far, and the thread reading it.
struct Stream(Arc<Mutex<Vec<u8>>>, std::thread::JoinHandle<()>);

impl Drained {
    pub fn spawn(command: &mut Command) -> Drained {
        let mut child = command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("start the process");
        fn reader(mut pipe: impl std::io::Read + Send + 'static) -> Stream {
            let bytes = Arc::new(Mutex::new(Vec::new()));
            let written = Arc::clone(&bytes);
            let thread = std::thread::spawn(move || {
                let mut chunk = [0u8; 8192];
                loop {
                    match pipe.read(&mut chunk) {
                        Ok(0) => break,
                        Ok(n) => written.lock().expect("pipe buffer").extend_from_slice(&chunk[..n]),
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(_) => break,
                    }
                }
            });
            Stream(bytes, thread)
        }
        let stdout = reader(child.stdout.take().expect("piped stdout"));
        let stderr = reader(child.stderr.take().expect("piped stderr"));
        Drained { child, streams: [stdout, stderr] }
    }

    /// The last `lines` lines the process wrote to stderr so far: what a failed wait shows.
    pub fn stderr_tail(&self, lines: usize) -> String {
        let text = String::from_utf8_lossy(&self.streams[1].0.lock().expect("pipe buffer")).into_owned();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Waits for the process to end; what it wrote to each stream.
    pub fn wait_with_output(mut self) -> std::process::Output {
        let status = self.child.wait().expect("wait for the process");
        let [stdout, stderr] = self.streams.map(|Stream(bytes, thread)| {
            thread.join().expect("pipe reader");
            std::mem::take(&mut *bytes.lock().expect("pipe buffer"))
        });
        std::process::Output { status, stdout, stderr }
    }
}

impl std::ops::Deref for Drained {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.child
    }
}

impl std::ops::DerefMut for Drained {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.child
    }
}

/// The RTSP server process; killed (by its own PID) when dropped.
pub struct RtspServer(Child);

impl RtspServer {
    /// A live test pattern at rtsp://127.0.0.1:PORT/cam.
    pub fn start(port: u16) -> RtspServer {
        RtspServer::serving(port, None)
    }

    /// `recording` (an H.264 MP4) at rtsp://127.0.0.1:PORT/cam at its frame rate, from
    /// its start for each client; without one, a live test pattern.
    pub fn serving(port: u16, recording: Option<&Path>) -> RtspServer {
        let python = std::env::var("DEFECTFLOW_PYTHON").unwrap_or_else(|_| "/usr/bin/python3".into());
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/rtsp_server.py");
        let mut child = Command::new(&python)
            .arg(script)
            .arg(port.to_string())
            .args(recording)
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

    pub fn kill(mut self) {
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
