//! The run configuration (`defectflow.toml`): typed, self-documenting, and checked at
//! start so a mistake is reported with the field that holds it.

mod camera;

use std::collections::HashSet;
use std::path::Path;

use serde::Deserialize;

pub use camera::{CameraConfig, CredentialsConfig, ReconnectConfig, SourceUrl};

/// Everything `defectflow run` needs.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// How the dataflow runs.
    #[serde(default)]
    pub runtime: RuntimeConfig,
    /// The cameras to ingest; each is one GStreamer pipeline.
    pub cameras: Vec<CameraConfig>,
}

/// Settings of the timely runtime.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Worker threads in this process (overridden by `-w`).
    #[serde(default = "default_workers")]
    pub workers: usize,
    /// A camera that has sent nothing for this long stops holding the event-time
    /// frontier back; the frontier then follows the wall clock.
    #[serde(default = "default_idle_timeout_ms")]
    pub idle_timeout_ms: u64,
    /// Stop after this many seconds; absent: run until every camera has ended
    /// (files) or until interrupted.
    #[serde(default)]
    pub duration_s: Option<f64>,
}

fn default_workers() -> usize {
    1
}

fn default_idle_timeout_ms() -> u64 {
    2_000
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig { workers: default_workers(), idle_timeout_ms: default_idle_timeout_ms(), duration_s: None }
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
}

impl RunConfig {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<RunConfig, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?;
        RunConfig::parse(&text, &path.display().to_string())
    }

    /// Parses and validates config text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<RunConfig, ConfigError> {
        let config: RunConfig =
            toml::from_str(text).map_err(|e| ConfigError::Parse { path: origin.to_owned(), message: e.to_string() })?;
        config.validate().map_err(|(field, message)| ConfigError::Invalid {
            path: origin.to_owned(),
            field,
            message,
        })?;
        Ok(config)
    }

    /// Checks what serde cannot: ranges, uniqueness, URLs. Returns the field path at fault.
    pub fn validate(&self) -> Result<(), (String, String)> {
        if self.runtime.workers == 0 {
            return Err(("runtime.workers".into(), "must be at least 1".into()));
        }
        if let Some(d) = self.runtime.duration_s
            && !(d > 0.0 && d.is_finite())
        {
            return Err(("runtime.duration_s".into(), format!("must be a positive number of seconds, got {d}")));
        }
        if self.cameras.is_empty() {
            return Err(("cameras".into(), "at least one camera is needed".into()));
        }
        let mut seen = HashSet::new();
        for (i, camera) in self.cameras.iter().enumerate() {
            camera.validate().map_err(|(field, message)| (format!("cameras[{i}].{field}"), message))?;
            if !seen.insert(camera.id.as_str()) {
                return Err((format!("cameras[{i}].id"), format!("`{}` is used by an earlier camera", camera.id)));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(text: &str) -> String {
        match RunConfig::parse(text, "t.toml") {
            Err(ConfigError::Invalid { field, .. }) => field,
            Err(other) => other.to_string(),
            Ok(_) => "accepted".into(),
        }
    }

    #[test]
    fn a_minimal_config_gets_defaults() {
        let config = RunConfig::parse("[[cameras]]\nid = \"c1\"\nurl = \"file:///tmp/a.mp4\"\n", "t").expect("valid");
        assert_eq!(config.runtime.workers, 1);
        assert_eq!(config.cameras[0].width, 640);
        assert!(matches!(config.cameras[0].source_url(), Ok(SourceUrl::File(_))));
    }

    #[test]
    fn unknown_fields_are_named() {
        let err = RunConfig::parse("[[cameras]]\nid = \"c1\"\nurl = \"file:///a.mp4\"\nfps_max = 3\n", "t")
            .expect_err("unknown field");
        assert!(err.to_string().contains("fps_max"), "{err}");
    }

    #[test]
    fn semantic_errors_name_the_field() {
        let two =
            "[[cameras]]\nid = \"c1\"\nurl = \"file:///a.mp4\"\n[[cameras]]\nid = \"c1\"\nurl = \"file:///b.mp4\"\n";
        assert_eq!(field_of(two), "cameras[1].id");
        assert_eq!(field_of("[[cameras]]\nid = \"c1\"\nurl = \"http://x/a.mp4\"\n"), "cameras[0].url");
        assert_eq!(field_of("[[cameras]]\nid = \"c1\"\nurl = \"file:///a.mp4\"\nmax_fps = 0\n"), "cameras[0].max_fps");
        assert_eq!(field_of("[[cameras]]\nid = \"c 1\"\nurl = \"file:///a.mp4\"\n"), "cameras[0].id");
        assert_eq!(
            field_of("[runtime]\nworkers = 0\n[[cameras]]\nid = \"c\"\nurl = \"file:///a\"\n"),
            "runtime.workers"
        );
        assert_eq!(field_of("[[cameras]]\nid = \"c1\"\nurl = \"rtsp://admin:hunter2@10.0.0.5/s\"\n"), "cameras[0].url");
    }
}
