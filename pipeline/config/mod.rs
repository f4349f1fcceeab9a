//! The run configuration (`defectflow.toml`): typed, self-documenting, and checked at
//! start so a mistake is reported with the field that holds it.

mod camera;
mod check;
mod synth;

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use camera::{CameraConfig, CredentialsConfig, DecodeMode, ReconnectConfig, SourceUrl};
pub use synth::SynthParams;

/// Everything `defectflow run` needs.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// How the dataflow runs.
    #[serde(default)]
    pub runtime: RuntimeConfig,
    /// The cameras to ingest; each is one GStreamer pipeline.
    pub cameras: Vec<CameraConfig>,
    /// The defect model and how frames are batched for it; absent: the run stops at
    /// decoded frames (an ingest-only run).
    #[serde(default)]
    pub model: Option<ModelConfig>,
    /// The plant's reference data; without it the run stops at detections.
    #[serde(default)]
    pub plant: PlantConfig,
    /// Each camera's normal: commissioning and anomaly gating (see docs/model.md,
    /// "Commissioning").
    #[serde(default)]
    pub anomaly: defectflow_models::baseline::BaselineConfig,
    /// Defect tracking (see docs/work-orders.md).
    #[serde(default)]
    pub track: defectflow_operators::track::TrackConfig,
    /// Severity scoring.
    #[serde(default)]
    pub severity: defectflow_operators::severity::SeverityConfig,
    /// Work-order derivation.
    #[serde(default)]
    pub work_orders: defectflow_operators::derive::WorkOrderConfig,
    /// Where the run leaves its outputs.
    #[serde(default)]
    pub output: OutputConfig,
    /// The Kafka broker the CMMS topics are on; absent: no Kafka output.
    #[serde(default)]
    pub kafka: Option<crate::kafka::KafkaConfig>,
    /// Prometheus metrics and `/healthz`; absent: not served.
    #[serde(default)]
    pub metrics: Option<MetricsConfig>,
    /// The CMMS `defectflow bridge` writes to (the run itself does not read it): one
    /// file can configure both.
    #[serde(default)]
    pub cmms: Option<crate::bridge::CmmsConfig>,
    /// Who is told of what: alert rules, recipients, escalation (docs/notify.md);
    /// absent: one unrouted alert per P1 work order.
    #[serde(default)]
    pub notify: Option<defectflow_operators::notify::Routing>,
    /// How `defectflow notify` delivers alerts (webhook, email); the run itself does
    /// not read it.
    #[serde(default)]
    pub notifier: Option<crate::notify::NotifierConfig>,
}

/// `[metrics]`: where the metrics are served.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// `host:port` to listen on.
    #[serde(default = "default_address")]
    pub address: String,
}

fn default_address() -> String {
    "127.0.0.1:9464".into()
}

impl MetricsConfig {
    pub fn validate(&self) -> Result<(), (String, String)> {
        self.address
            .parse::<std::net::SocketAddr>()
            .map(|_| ())
            .map_err(|e| ("metrics.address".into(), format!("`{}` is not host:port ({e})", self.address)))
    }
}

/// `[model]`: which weights, and how frames reach them.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Model directory (`model.json` + `weights.bin`), relative to the config file;
    /// absent: the shipped weights in `models/weights`.
    #[serde(default)]
    pub dir: Option<PathBuf>,
    /// Most frames run through the network together (batches of several workers
    /// waiting for the process's inference thread are merged up to this size).
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// A frame waits at most this long for its worker's batch to fill; 0: at once.
    #[serde(default = "default_max_wait_ms")]
    pub max_wait_ms: u64,
    /// Shadow mode: detections and would-be work orders go to the audit log flagged as
    /// shadow; nothing goes to the CMMS. How a plant validates the model before go-live.
    #[serde(default)]
    pub shadow: bool,
    /// Lowest cell probability that counts as a defect; absent: the model card's.
    #[serde(default)]
    pub min_confidence: Option<f32>,
    /// The arithmetic the network runs in on the CPU: `"fp32"`, or `"int8"` with the
    /// card's calibration (`defectflow quantize`), faster by the figures in README →
    /// Benchmarks. Camera baselines are kept per precision.
    #[serde(default)]
    pub precision: defectflow_models::detector::Precision,
    /// Inference threads, each running the network on one core; 0: one per core.
    #[serde(default)]
    pub threads: usize,
    /// Change gating: a frame whose 8×8-pixel block means all lie within this much
    /// (0–255) of its camera's last scored frame skips the network and repeats that
    /// frame's detections; 0: every frame is scored.
    #[serde(default)]
    pub change_threshold: f32,
    /// With change gating, each camera is scored at least this often (seconds).
    #[serde(default = "default_rescore_s")]
    pub rescore_s: f64,
    /// Looks at the model folder every second and swaps a new model in without a
    /// restart (write `weights.bin`, then `model.json`).
    #[serde(default)]
    pub watch: bool,
}

fn default_rescore_s() -> f64 {
    5.0
}

fn default_batch_size() -> usize {
    defectflow_operators::infer::InferConfig::default().batch_size
}

fn default_max_wait_ms() -> u64 {
    defectflow_operators::infer::InferConfig::default().max_wait_ms
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            dir: None,
            batch_size: default_batch_size(),
            max_wait_ms: default_max_wait_ms(),
            shadow: false,
            min_confidence: None,
            precision: Default::default(),
            threads: 0,
            change_threshold: 0.0,
            rescore_s: default_rescore_s(),
            watch: false,
        }
    }
}

impl ModelConfig {
    /// The model directory: the configured one, or the shipped weights.
    pub fn resolved_dir(&self) -> PathBuf {
        self.dir.clone().unwrap_or_else(|| {
            let local = PathBuf::from("models/weights");
            if local.join("model.json").is_file() {
                local
            } else {
                Path::new(env!("CARGO_MANIFEST_DIR")).join("models/weights")
            }
        })
    }

    /// The inference settings; with change gating on, each call makes new change gates
    /// (one per process: the pool's are the ones that count).
    pub fn infer_config(&self) -> defectflow_operators::infer::InferConfig {
        defectflow_operators::infer::InferConfig {
            batch_size: self.batch_size,
            max_wait_ms: self.max_wait_ms,
            shadow: self.shadow,
            threads: self.threads,
            thresholds: Default::default(),
            change: (self.change_threshold > 0.0).then(|| {
                defectflow_operators::change::ChangeGates::new(defectflow_operators::change::ChangeConfig {
                    threshold: self.change_threshold,
                    rescore_ms: (self.rescore_s * 1000.0).round() as u64,
                })
            }),
        }
    }
}

/// `[plant]`: the reference data the work orders are derived with.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlantConfig {
    /// Folder of assets.json, cameras.json, failures.json, procedures.json,
    /// technicians.json and inventory.json, relative to the config file.
    #[serde(default)]
    pub reference: Option<PathBuf>,
    /// A scripted CMMS (`sources/cmms_script.rs`): status events for work orders by
    /// asset and defect class, relative to the config file. For demos and rehearsals.
    #[serde(default)]
    pub cmms_script: Option<PathBuf>,
    /// The plant's IANA time zone (`Europe/Oslo`): technician shifts are in its local
    /// hours, daylight saving included. Without it, `[work_orders] utc_offset_minutes`.
    #[serde(default)]
    pub time_zone: Option<String>,
    /// `min_confidence` and `open_score` per camera and defect class, relative to the
    /// config file; re-read when it changes (`operators/src/thresholds.rs`).
    #[serde(default)]
    pub thresholds: Option<PathBuf>,
}

impl PlantConfig {
    /// The work-order settings with the plant's time zone.
    pub fn work_orders(
        &self,
        work_orders: &defectflow_operators::derive::WorkOrderConfig,
    ) -> defectflow_operators::derive::WorkOrderConfig {
        let time_zone = self.time_zone.as_deref().and_then(|name| defectflow_operators::assign::time_zone(name).ok());
        defectflow_operators::derive::WorkOrderConfig { time_zone, ..work_orders.clone() }
    }
}

/// `[output]`: where a run leaves work orders and the audit log.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputConfig {
    /// Folder for `work-orders.jsonl` and `audit/`, relative to the working directory
    /// (overridden by `--out`); absent: nothing is written.
    #[serde(default)]
    pub dir: Option<PathBuf>,
    /// The audit log commits a file per table once this many rows have gathered...
    #[serde(default = "default_audit_commit_rows")]
    pub audit_commit_rows: usize,
    /// ...or once this many seconds have passed since the last commit.
    #[serde(default = "default_audit_commit_s")]
    pub audit_commit_s: f64,
    /// Write evidence images under `<dir>/evidence/` and reference them from work orders.
    #[serde(default = "default_evidence")]
    pub evidence: bool,
    /// How a work order names its image: this, then `<track id>/<frame index>.jpg`. The
    /// default is relative to the output folder; a plant that serves the folder over
    /// HTTP sets its base URL here.
    #[serde(default = "default_evidence_uri_prefix")]
    pub evidence_uri_prefix: String,
}

fn default_evidence() -> bool {
    true
}

fn default_evidence_uri_prefix() -> String {
    "evidence/".into()
}

fn default_audit_commit_rows() -> usize {
    100_000
}

fn default_audit_commit_s() -> f64 {
    10.0
}

impl Default for OutputConfig {
    fn default() -> Self {
        OutputConfig {
            dir: None,
            audit_commit_rows: default_audit_commit_rows(),
            audit_commit_s: default_audit_commit_s(),
            evidence: default_evidence(),
            evidence_uri_prefix: default_evidence_uri_prefix(),
        }
    }
}

/// Settings of the timely runtime.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Worker threads in this process (overridden by `-w`).
    #[serde(default = "default_workers")]
    pub workers: usize,
    /// A camera that has sent nothing for this long stops holding the event-time
    /// frontier back; the frontier then follows the wall clock. (A recording replayed
    /// at its own capture times, `start_ms`, holds it until it ends.)
    #[serde(default = "default_idle_timeout_ms")]
    pub idle_timeout_ms: u64,
    /// Stop after this many seconds; absent: run until every camera has ended
    /// (files) or until interrupted.
    #[serde(default)]
    pub duration_s: Option<f64>,
    /// Once a stop is asked for (SIGTERM, SIGINT, a failure), the longest it may take to
    /// take in what the cameras decoded, deliver, flush and commit; past it the process
    /// exits with code 4, naming what was left.
    #[serde(default = "default_stop_timeout_s")]
    pub stop_timeout_s: f64,
}

fn default_workers() -> usize {
    1
}

fn default_idle_timeout_ms() -> u64 {
    2_000
}

fn default_stop_timeout_s() -> f64 {
    30.0
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            workers: default_workers(),
            idle_timeout_ms: default_idle_timeout_ms(),
            duration_s: None,
            stop_timeout_s: default_stop_timeout_s(),
        }
    }
}

/// A configuration that cannot be used, with the field at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("config {path}: {message}")]
    Parse { path: String, message: String },
    #[error("config {path}: `{field}`: {message}")]
    Invalid { path: String, field: String, message: String },
    #[error("config {path}: {count} problem(s)")]
    Problems { path: String, count: usize },
}

impl ConfigError {
    /// The exit code of a process stopped by a bad config: `EX_CONFIG` (sysexits.h), so
    /// a supervisor does not restart it in a loop (`RestartPreventExitStatus=78`).
    pub const EXIT_CODE: u8 = 78;
}

impl RunConfig {
    /// A config of `cameras` with every table at its defaults, for a program that
    /// builds its config as a value (not yet validated: see [`RunConfig::validate`]).
    pub fn with_cameras(cameras: Vec<CameraConfig>) -> RunConfig {
        RunConfig {
            runtime: RuntimeConfig::default(),
            cameras,
            model: None,
            plant: PlantConfig::default(),
            anomaly: Default::default(),
            track: Default::default(),
            severity: Default::default(),
            work_orders: Default::default(),
            output: OutputConfig::default(),
            kafka: None,
            metrics: None,
            cmms: None,
            notify: None,
            notifier: None,
        }
    }

    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<RunConfig, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?;
        RunConfig::parse(&text, &path.display().to_string())
    }

    /// Parses and validates config text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<RunConfig, ConfigError> {
        let config = RunConfig::parse_unchecked(text, origin)?;
        config.validate().map_err(|(field, message)| ConfigError::Invalid {
            path: origin.to_owned(),
            field,
            message,
        })?;
        Ok(config)
    }

    /// Reads and parses a config file, its paths made relative to it, without the checks
    /// of [`RunConfig::problems`] (`check-config` lists them all).
    pub fn load_unchecked(path: &Path) -> Result<RunConfig, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?;
        RunConfig::parse_unchecked(&text, &path.display().to_string())
    }

    fn parse_unchecked(text: &str, origin: &str) -> Result<RunConfig, ConfigError> {
        let mut config: RunConfig =
            toml::from_str(text).map_err(|e| ConfigError::Parse { path: origin.to_owned(), message: e.to_string() })?;
        // Paths in the file are relative to the file.
        let base = Path::new(origin).parent().unwrap_or(Path::new(""));
        if let Some(model) = &mut config.model {
            model.dir = model.dir.take().map(|d| base.join(d));
        }
        config.plant.reference = config.plant.reference.map(|d| base.join(d));
        config.plant.cmms_script = config.plant.cmms_script.map(|f| base.join(f));
        config.plant.thresholds = config.plant.thresholds.map(|f| base.join(f));
        if let Some(kafka) = &mut config.kafka {
            kafka.secrets_from_file.values_mut().for_each(|f| *f = base.join(&*f));
        }
        if let Some(cmms) = &mut config.cmms {
            cmms.resolve(base);
        }
        Ok(config)
    }

    /// Checks what serde cannot: ranges, uniqueness, URLs. Returns the first field at
    /// fault.
    pub fn validate(&self) -> Result<(), (String, String)> {
        self.problems().into_iter().next().map_or(Ok(()), Err)
    }

    /// Every field at fault, with what is wrong with it (each table's checks stop at its
    /// first fault; every table and camera is checked).
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        let mut check = |result: Result<(), (String, String)>| problems.extend(result.err());
        let fault = |field: &str, message: String| Err((field.to_owned(), message));
        if self.runtime.workers == 0 {
            check(fault("runtime.workers", "must be at least 1".into()));
        }
        if let Some(d) = self.runtime.duration_s
            && !(d > 0.0 && d.is_finite())
        {
            check(fault("runtime.duration_s", format!("must be a positive number of seconds, got {d}")));
        }
        let stop_timeout = self.runtime.stop_timeout_s;
        if !(stop_timeout > 0.0 && stop_timeout.is_finite()) {
            check(fault("runtime.stop_timeout_s", format!("must be a positive number of seconds, got {stop_timeout}")));
        }
        if let Some(model) = &self.model {
            if model.batch_size == 0 {
                check(fault("model.batch_size", "must be at least 1".into()));
            }
            if !(model.change_threshold >= 0.0 && model.change_threshold <= 255.0) {
                let t = model.change_threshold;
                check(fault("model.change_threshold", format!("must be within [0, 255] (0: off), got {t}")));
            }
            if !(model.rescore_s > 0.0 && model.rescore_s.is_finite()) {
                let s = model.rescore_s;
                check(fault("model.rescore_s", format!("must be a positive number of seconds, got {s}")));
            }
            if let Some(c) = model.min_confidence
                && !(0.0..=1.0).contains(&c)
            {
                check(fault("model.min_confidence", format!("must be within [0, 1], got {c}")));
            }
        }
        check(validate_anomaly(&self.anomaly));
        if let Some(path) = &self.plant.thresholds {
            // Against the model's own threshold too, once it is loaded (`run`).
            let read = std::fs::read_to_string(path).map_err(|e| format!("{}: cannot read: {e}", path.display()));
            let parsed = read.and_then(|text| {
                defectflow_operators::thresholds::Thresholds::parse(&text, &path.display().to_string(), 0.0)
            });
            if let Err(message) = parsed {
                check(fault("plant.thresholds", message));
            }
        }
        if self.plant.cmms_script.is_some() && self.plant.reference.is_none() {
            check(fault("plant.cmms_script", "CMMS events need work orders: add `[plant] reference`".into()));
        }
        if self.plant.reference.is_some() && self.model.is_none() {
            check(fault("plant.reference", "work orders need detections: add a `[model]` table".into()));
        }
        if let Some(name) = &self.plant.time_zone {
            check(defectflow_operators::assign::time_zone(name).map(|_| ()).map_err(|e| ("plant.time_zone".into(), e)));
            if self.work_orders.utc_offset_minutes != 0 {
                check(fault(
                    "work_orders.utc_offset_minutes",
                    "`[plant] time_zone` gives the local time: leave out the fixed offset".into(),
                ));
            }
        }
        if let Some(notify) = &self.notify {
            check(notify.check());
        }
        if let Some(notifier) = &self.notifier {
            check(notifier.validate());
        }
        let suppress = self.work_orders.suppress_false_positive_hours;
        if !(suppress >= 0.0 && suppress.is_finite()) {
            check(fault(
                "work_orders.suppress_false_positive_hours",
                format!("must be a number of hours, 0 or more, got {suppress}"),
            ));
        }
        for (priority, hours) in &self.work_orders.due_hours {
            if !(*hours > 0.0 && hours.is_finite()) {
                check(fault(
                    &format!("work_orders.due_hours.{priority:?}"),
                    format!("must be a positive number of hours, got {hours}"),
                ));
            }
        }
        if self.output.audit_commit_rows == 0 {
            check(fault("output.audit_commit_rows", "must be at least 1".into()));
        }
        if !(self.output.audit_commit_s > 0.0 && self.output.audit_commit_s.is_finite()) {
            check(fault("output.audit_commit_s", "must be a positive number of seconds".into()));
        }
        if let Some(metrics) = &self.metrics {
            check(metrics.validate());
        }
        if let Some(kafka) = &self.kafka {
            check(kafka.validate());
            if self.plant.reference.is_none() {
                check(fault("kafka", "work orders need the plant: add `[plant] reference`".into()));
            }
        }
        if let Some(cmms) = &self.cmms {
            check(cmms.validate());
            if self.kafka.is_none() {
                check(fault("cmms", "the bridge reads the work-order topic: add `[kafka]`".into()));
            }
        }
        if self.cameras.is_empty() {
            check(fault("cameras", "at least one camera is needed".into()));
        }
        let mut seen = HashSet::new();
        for (i, camera) in self.cameras.iter().enumerate() {
            check(camera.validate().map_err(|(field, message)| (format!("cameras[{i}].{field}"), message)));
            if !seen.insert(camera.id.as_str()) {
                check(fault(&format!("cameras[{i}].id"), format!("`{}` is used by an earlier camera", camera.id)));
            }
            if camera.name_defects == Some(false)
                && self.anomaly.unknown == defectflow_models::gate::UnknownDefects::Off
            {
                check(fault(
                    &format!("cameras[{i}].name_defects"),
                    "false with `[anomaly] unknown = \"off\"` would find nothing on this camera".into(),
                ));
            }
        }
        problems
    }
}

/// `[anomaly]`: seconds and shares in their ranges.
fn validate_anomaly(anomaly: &defectflow_models::baseline::BaselineConfig) -> Result<(), (String, String)> {
    let field = |name: &str, message: String| Err((format!("anomaly.{name}"), message));
    if !(anomaly.commission_s >= 0.0 && anomaly.commission_s <= 3600.0) {
        return field("commission_s", format!("must be 0 (off) to 3600 seconds, got {}", anomaly.commission_s));
    }
    if !(anomaly.follow_s == 0.0 || (anomaly.follow_s >= 60.0 && anomaly.follow_s.is_finite())) {
        return field(
            "follow_s",
            format!("must be 0 (never follows) or at least 60 seconds, got {}", anomaly.follow_s),
        );
    }
    let shares = [
        ("exclude_confidence", anomaly.exclude_confidence),
        ("disturbed_fraction", anomaly.disturbed_fraction),
        ("fit_share", anomaly.fit_share),
    ];
    for (name, value) in shares {
        if !(value > 0.0 && value < 1.0) {
            return field(name, format!("must be between 0 and 1, got {value}"));
        }
    }
    if !anomaly.name_defects && anomaly.unknown == defectflow_models::gate::UnknownDefects::Off {
        return field(
            "name_defects",
            "false with `unknown = \"off\"` would find nothing: set unknown to on or shadow".into(),
        );
    }
    if !(anomaly.exclude_uniqueness >= 0.0 && anomaly.exclude_uniqueness.is_finite()) {
        return field("exclude_uniqueness", format!("must be 0 (off) or more, got {}", anomaly.exclude_uniqueness));
    }
    for (name, value) in [("threshold_margin", anomaly.threshold_margin), ("min_threshold", anomaly.min_threshold)] {
        if !(value >= 1.0 && value.is_finite()) {
            return field(name, format!("must be at least 1, got {value}"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
