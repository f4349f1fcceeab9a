//! Configuration of one camera: where its stream comes from and how it is treated.

use std::path::PathBuf;

use serde::Deserialize;

use super::SynthParams;

/// One camera; `[[cameras]]` in the config.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CameraConfig {
    /// Camera id, unique in the plant: letters, digits, `-`, `_` and `.`.
    pub id: String,
    /// `file:///abs/path.mp4` (MP4 or MKV, H.264 or H.265), `rtsp://host:port/path`
    /// (credentials never in the URL: see `credentials`), or `synth://<asset_kind>?...`
    /// (the built-in scene generator, live).
    pub url: String,
    /// Width in pixels that frames are scaled to before inference.
    #[serde(default = "default_width")]
    pub width: u32,
    /// Height in pixels that frames are scaled to before inference.
    #[serde(default = "default_height")]
    pub height: u32,
    /// Keep at most this many frames per second of this camera (by capture time);
    /// absent: keep every frame.
    #[serde(default)]
    pub max_fps: Option<f64>,
    /// Which frames of an encoded stream are decoded (`auto`, `keyframes`, `all`).
    #[serde(default)]
    pub decode: DecodeMode,
    /// Decoded frames buffered between the camera and the dataflow. When full, a live
    /// camera drops (and counts) frames; a file waits.
    #[serde(default = "default_queue_frames")]
    pub queue_frames: usize,
    /// Files only: play at the stream's own frame rate instead of as fast as possible.
    #[serde(default)]
    pub realtime: bool,
    /// Files only: capture time of the first frame, ms since the epoch; absent: the
    /// wall clock when the file starts playing. With it a replay of the same recording
    /// reproduces the same work orders (ids, revisions, bytes), which is how a restarted
    /// run knows what it already delivered.
    #[serde(default)]
    pub start_ms: Option<u64>,
    /// RTSP login, read from the environment at start; never logged.
    #[serde(default)]
    pub credentials: Option<CredentialsConfig>,
    /// How a camera that fails or goes silent is reconnected.
    #[serde(default)]
    pub reconnect: ReconnectConfig,
    /// Whether the model's classes are trusted on this camera once it is commissioned;
    /// absent: `[anomaly] name_defects`. `false`: its lasting departures are `unknown`
    /// inspections, for a camera whose surfaces the model never trained on.
    #[serde(default)]
    pub name_defects: Option<bool>,
}

impl CameraConfig {
    /// Camera `id` at `url`, every other field at its default.
    pub fn new(id: impl Into<String>, url: impl Into<String>) -> CameraConfig {
        CameraConfig {
            id: id.into(),
            url: url.into(),
            width: default_width(),
            height: default_height(),
            max_fps: None,
            decode: DecodeMode::Auto,
            queue_frames: default_queue_frames(),
            realtime: false,
            start_ms: None,
            credentials: None,
            reconnect: ReconnectConfig::default(),
            name_defects: None,
        }
    }
}

/// Which frames of a camera's encoded stream are decoded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DecodeMode {
    /// Keyframes only while they come at least `max_fps` times a second (measured on
    /// the stream); otherwise every frame, those beyond `max_fps` dropped before
    /// conversion.
    #[default]
    Auto,
    /// Keyframes only, whatever `max_fps` asks: the GOP length bounds the model's rate.
    Keyframes,
    /// Every frame (those beyond `max_fps` still dropped before conversion).
    All,
}

fn default_width() -> u32 {
    640
}

fn default_height() -> u32 {
    360
}

fn default_queue_frames() -> usize {
    8
}

/// Names of the environment variables that hold a camera's login.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialsConfig {
    /// Environment variable holding the user name.
    pub username_env: String,
    /// Environment variable holding the password.
    pub password_env: String,
}

/// Reconnection with exponential backoff.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReconnectConfig {
    /// Wait before the first reconnection attempt.
    #[serde(default = "default_initial_backoff_ms")]
    pub initial_backoff_ms: u64,
    /// The wait doubles after each failed attempt up to this.
    #[serde(default = "default_max_backoff_ms")]
    pub max_backoff_ms: u64,
    /// Give up after this many consecutive failed attempts; absent: never give up.
    /// Files are never retried: a broken file stays broken.
    #[serde(default)]
    pub max_attempts: Option<u32>,
    /// A playing stream that delivers no frame for this long is treated as broken.
    #[serde(default = "default_stall_timeout_ms")]
    pub stall_timeout_ms: u64,
}

fn default_initial_backoff_ms() -> u64 {
    250
}

fn default_max_backoff_ms() -> u64 {
    10_000
}

fn default_stall_timeout_ms() -> u64 {
    5_000
}

impl Default for ReconnectConfig {
    fn default() -> Self {
        ReconnectConfig {
            initial_backoff_ms: default_initial_backoff_ms(),
            max_backoff_ms: default_max_backoff_ms(),
            max_attempts: None,
            stall_timeout_ms: default_stall_timeout_ms(),
        }
    }
}

/// A camera URL, parsed.
#[derive(Clone, Debug, PartialEq)]
pub enum SourceUrl {
    File(PathBuf),
    Rtsp(String),
    Synth(SynthParams),
}

impl CameraConfig {
    /// The parsed `url`, or why it cannot be used.
    pub fn source_url(&self) -> Result<SourceUrl, String> {
        if let Some(path) = self.url.strip_prefix("file://") {
            if !path.starts_with('/') {
                return Err(format!("`{}`: a file URL needs an absolute path (file:///...)", self.url));
            }
            Ok(SourceUrl::File(PathBuf::from(path)))
        } else if let Some(rest) = self.url.strip_prefix("rtsp://") {
            let authority = rest.split('/').next().unwrap_or_default();
            if authority.contains('@') {
                return Err(
                    "credentials in an RTSP URL would end up in logs; use `credentials` with environment variables"
                        .into(),
                );
            }
            if authority.is_empty() {
                return Err(format!("`{}` has no host", self.url));
            }
            Ok(SourceUrl::Rtsp(self.url.clone()))
        } else if self.url.starts_with("synth://") {
            SynthParams::parse(&self.url).map(SourceUrl::Synth)
        } else {
            Err(format!("`{}`: expected a file://, rtsp:// or synth:// URL", self.url))
        }
    }

    pub(super) fn validate(&self) -> Result<(), (String, String)> {
        let field = |f: &str, m: String| Err((f.to_owned(), m));
        if self.id.is_empty()
            || self.id.starts_with('.')
            || !self.id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return field("id", format!("`{}`: use letters, digits, `-`, `_` and `.` only", self.id));
        }
        if let Err(message) = self.source_url() {
            return field("url", message);
        }
        if self.width < 16 || self.height < 16 || !self.width.is_multiple_of(2) || !self.height.is_multiple_of(2) {
            return field("width", format!("{}x{}: both must be even and at least 16", self.width, self.height));
        }
        if let Some(fps) = self.max_fps
            && !(fps > 0.0 && fps.is_finite())
        {
            return field("max_fps", format!("must be a positive number, got {fps}"));
        }
        if self.decode == DecodeMode::Keyframes && matches!(self.source_url(), Ok(SourceUrl::Synth(_))) {
            return field("decode", "a synth:// camera is not encoded: only `auto` or `all`".into());
        }
        if self.queue_frames == 0 {
            return field("queue_frames", "must be at least 1".into());
        }
        if self.start_ms.is_some() && !matches!(self.source_url(), Ok(SourceUrl::File(_))) {
            return field("start_ms", "only a file has capture times to set; a live stream has the clock's".into());
        }
        if let Some(c) = &self.credentials {
            for (name, var) in
                [("credentials.username_env", &c.username_env), ("credentials.password_env", &c.password_env)]
            {
                if var.is_empty() || !var.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '_') {
                    return field(name, format!("`{var}` is not an environment variable name"));
                }
            }
        }
        let r = &self.reconnect;
        if r.initial_backoff_ms == 0 || r.max_backoff_ms < r.initial_backoff_ms {
            return field(
                "reconnect.max_backoff_ms",
                "must be at least reconnect.initial_backoff_ms, which must be positive".into(),
            );
        }
        if r.stall_timeout_ms < 100 {
            return field("reconnect.stall_timeout_ms", "must be at least 100".into());
        }
        Ok(())
    }
}
