//! `[cmms]`: which CMMS the bridge writes to, how, and where it keeps its journal. The
//! bridge reads `[kafka]` and `[cmms]` of its config file and nothing else, so the run's
//! file can carry both.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use super::mapping::Mapping;
use crate::kafka::KafkaConfig;

/// `defectflow bridge`'s config.
#[derive(Debug, Deserialize)]
pub struct BridgeConfig {
    pub kafka: KafkaConfig,
    pub cmms: CmmsConfig,
}

/// `[cmms]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CmmsConfig {
    /// A built-in mapping (`maximo`, `sap-pm`, `maintainx`, `webhook`) or a mapping
    /// file (relative to the config file).
    pub mapping: String,
    /// The CMMS's base URL (`https://maximo.example.com`).
    pub url: String,
    /// The environment variable holding the credential (`{secret}` in the mapping's
    /// headers: Maximo's API key, a bearer token, `user:password` for basic auth).
    #[serde(default)]
    pub secret_from_env: Option<String>,
    /// Or the file holding it (one trailing newline dropped).
    #[serde(default)]
    pub secret_from_file: Option<PathBuf>,
    /// The journal of what the CMMS acknowledged (relative to the config file).
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// Consumer group whose committed offsets say where the bridge resumes.
    #[serde(default = "default_group")]
    pub group: String,
    /// Requests in flight at once (revisions of one work order are always sent in order).
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// How long one request may take.
    #[serde(default = "default_timeout_s")]
    pub timeout_s: f64,
    /// Longest wait between retries of a CMMS that does not answer.
    #[serde(default = "default_max_backoff_s")]
    pub max_backoff_s: f64,
    /// How often the CMMS's status changes are read back; 0: never.
    #[serde(default = "default_poll_s")]
    pub poll_s: f64,
    /// How far back the first poll looks when the bridge has not polled before.
    #[serde(default = "default_lookback_s")]
    pub poll_lookback_s: u64,
    /// Start a new group at the topic's beginning (`earliest`) or its end (`latest`).
    #[serde(default = "default_start")]
    pub start: String,
    /// Plant constants for the templates (`{values.siteid}`).
    #[serde(default)]
    pub values: BTreeMap<String, Value>,
    /// Value maps over or beside the mapping's (`[cmms.maps.asset]`: defectflow asset id
    /// to the CMMS's).
    #[serde(default)]
    pub maps: BTreeMap<String, BTreeMap<String, Value>>,
}

fn default_state_dir() -> PathBuf {
    "bridge-state".into()
}
fn default_group() -> String {
    "defectflow-bridge".into()
}
fn default_concurrency() -> usize {
    32
}
fn default_timeout_s() -> f64 {
    30.0
}
fn default_max_backoff_s() -> f64 {
    30.0
}
fn default_poll_s() -> f64 {
    30.0
}
fn default_lookback_s() -> u64 {
    3600
}
fn default_start() -> String {
    "earliest".into()
}

impl BridgeConfig {
    /// Reads and checks the config at `path`; an error names the field at fault.
    pub fn load(path: &Path) -> anyhow::Result<BridgeConfig> {
        let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let mut config: BridgeConfig =
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {}", path.display(), e.to_string().trim()))?;
        config.cmms.resolve(path.parent().unwrap_or(Path::new(".")));
        if let Err((field, problem)) = config.validate() {
            anyhow::bail!("{}: `{field}` {problem}", path.display());
        }
        Ok(config)
    }

    /// Checks what serde cannot, and that the credential can be read; returns the
    /// field at fault.
    pub fn validate(&self) -> Result<(), (String, String)> {
        self.kafka.validate()?;
        self.cmms.validate()?;
        self.cmms.secret().map(|_| ())
    }

    /// The mapping, with `[cmms.maps]` over its own maps.
    pub fn mapping(&self) -> Result<Mapping, String> {
        self.cmms.mapping()
    }

    /// The credential, from the environment or its file.
    pub fn secret(&self) -> Result<Option<String>, (String, String)> {
        self.cmms.secret()
    }
}

impl CmmsConfig {
    /// Makes the paths in the table relative to the config file's folder `base`.
    pub fn resolve(&mut self, base: &Path) {
        if !self.state_dir.is_absolute() {
            self.state_dir = base.join(&self.state_dir);
        }
        if let Some(file) = &mut self.secret_from_file
            && !file.is_absolute()
        {
            *file = base.join(&*file);
        }
        let is_built_in = super::mapping::BUILT_IN.iter().any(|(name, _)| *name == self.mapping);
        if !is_built_in && !Path::new(&self.mapping).is_absolute() {
            self.mapping = base.join(&self.mapping).to_string_lossy().into_owned();
        }
    }

    /// Checks what serde cannot (not the credential: see [`CmmsConfig::secret`]);
    /// returns the field at fault.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let c = self;
        let field = |name: &str| format!("cmms.{name}");
        if !(c.url.starts_with("http://") || c.url.starts_with("https://")) {
            return Err((field("url"), format!("`{}` is not an http:// or https:// URL", c.url)));
        }
        self.mapping().map_err(|e| (field("mapping"), e))?;
        if c.concurrency == 0 || c.concurrency > 1024 {
            return Err((field("concurrency"), "must be 1 to 1024".into()));
        }
        for (name, value) in [("timeout_s", c.timeout_s), ("max_backoff_s", c.max_backoff_s), ("poll_s", c.poll_s)] {
            if !value.is_finite() || value < 0.0 || (name != "poll_s" && value == 0.0) {
                return Err((field(name), format!("must be a positive number of seconds, not {value}")));
            }
        }
        if !matches!(c.start.as_str(), "earliest" | "latest") {
            return Err((field("start"), format!("must be `earliest` or `latest`, not `{}`", c.start)));
        }
        Ok(())
    }

    /// The mapping, with `[cmms.maps]` over its own maps.
    pub fn mapping(&self) -> Result<Mapping, String> {
        let mut mapping = Mapping::load(&self.mapping)?;
        for (name, table) in &self.maps {
            mapping.maps.entry(name.clone()).or_default().extend(table.clone());
        }
        Ok(mapping)
    }

    /// The credential, from the environment or its file.
    pub fn secret(&self) -> Result<Option<String>, (String, String)> {
        if let Some(variable) = &self.secret_from_env {
            let value = std::env::var(variable).map_err(|_| {
                (
                    "cmms.secret_from_env".to_owned(),
                    format!("names environment variable `{variable}`, which is not set"),
                )
            })?;
            return Ok(Some(value));
        }
        if let Some(path) = &self.secret_from_file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| ("cmms.secret_from_file".to_owned(), format!("cannot read {}: {e}", path.display())))?;
            return Ok(Some(text.strip_suffix('\n').unwrap_or(&text).to_owned()));
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> anyhow::Result<BridgeConfig> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("bridge.toml");
        std::fs::write(&path, text).expect("write");
        BridgeConfig::load(&path)
    }

    #[test]
    fn a_bad_field_is_named() {
        let kafka = "[kafka]\nbrokers = \"127.0.0.1:9092\"\n";
        let config = |cmms: &str| format!("{kafka}[cmms]\n{cmms}");
        let error = load(&config("mapping = \"maximo\"\nurl = \"ftp://x\"")).expect_err("bad url").to_string();
        assert!(error.contains("`cmms.url`"), "{error}");
        let error = load(&config("mapping = \"nosuch\"\nurl = \"http://x\"")).expect_err("bad mapping").to_string();
        assert!(error.contains("`cmms.mapping`") && error.contains("maximo, sap-pm"), "{error}");
        let error =
            load(&config("mapping = \"maximo\"\nurl = \"http://x\"\nconcurrency = 0")).expect_err("0").to_string();
        assert!(error.contains("`cmms.concurrency`"), "{error}");
        let error =
            load(&config("mapping = \"maximo\"\nurl = \"http://x\"\nsecret_from_env = \"DEFECTFLOW_NO_SUCH_VAR\""))
                .expect_err("unset")
                .to_string();
        assert!(error.contains("DEFECTFLOW_NO_SUCH_VAR"), "{error}");
        let error =
            load(&config("mapping = \"maximo\"\nurl = \"http://x\"\nspeed = 3")).expect_err("unknown").to_string();
        assert!(error.contains("speed"), "{error}");
        // The run's tables beside them are not the bridge's business.
        let config = load(&format!("[runtime]\nworkers = 2\n{}", config("mapping = \"webhook\"\nurl = \"http://x\"")));
        assert!(config.is_ok(), "{config:?}");
    }
}
