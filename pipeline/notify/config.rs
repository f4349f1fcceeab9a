//! `defectflow notify`'s config: `[kafka]`, `[notify]` (the recipients, as the run routes
//! to them) and `[notifier]` (how alerts are delivered). The run's own file can hold all.

use std::path::{Path, PathBuf};

use defectflow_operators::notify::{Recipient, Routing};
use serde::Deserialize;

use crate::kafka::KafkaConfig;

/// The whole file, as `defectflow notify` reads it (other tables are the run's).
#[derive(Debug, Deserialize)]
pub struct NotifyFile {
    pub kafka: KafkaConfig,
    #[serde(default)]
    pub notify: Option<Routing>,
    pub notifier: NotifierConfig,
}

/// `[notifier]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifierConfig {
    /// Consumer group whose committed offsets say where delivery resumes.
    #[serde(default = "default_group")]
    pub group: String,
    /// Where a group without committed offsets starts: `earliest` or `latest`.
    #[serde(default = "default_start")]
    pub start: String,
    /// The journal of what was delivered (relative to the config file).
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// Recipients (ids or roles of `[notify]`) of the alerts no rule routed; none: the
    /// webhook alone.
    #[serde(default)]
    pub unrouted_to: Vec<String>,
    /// How long one delivery (a webhook request, a mail handed to the server) may take.
    #[serde(default = "default_timeout_s")]
    pub timeout_s: f64,
    /// The longest wait between tries of a delivery that failed for a while.
    #[serde(default = "default_max_backoff_s")]
    pub max_backoff_s: f64,
    /// Every alert is posted here (a recipient's own `webhook` takes its place).
    #[serde(default)]
    pub webhook: Option<WebhookConfig>,
    /// Recipients with an `email` are mailed through this server.
    #[serde(default)]
    pub smtp: Option<SmtpConfig>,
}

/// `[notifier.webhook]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    pub url: String,
    /// The environment variable holding a bearer token (`Authorization: Bearer ...`).
    #[serde(default)]
    pub bearer_env: Option<String>,
}

/// `[notifier.smtp]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpConfig {
    pub host: String,
    #[serde(default = "default_smtp_port")]
    pub port: u16,
    /// The sender (`defectflow <maintenance@plant.example>`).
    pub from: String,
    /// `starttls` (required), `tls` (implicit, port 465) or `none` (a relay on a
    /// trusted segment).
    #[serde(default = "default_tls")]
    pub tls: String,
    #[serde(default)]
    pub username_env: Option<String>,
    #[serde(default)]
    pub password_env: Option<String>,
}

fn default_group() -> String {
    "defectflow-notify".into()
}

fn default_start() -> String {
    "earliest".into()
}

fn default_state_dir() -> PathBuf {
    "notify-state".into()
}

fn default_timeout_s() -> f64 {
    10.0
}

fn default_max_backoff_s() -> f64 {
    60.0
}

fn default_smtp_port() -> u16 {
    587
}

fn default_tls() -> String {
    "starttls".into()
}

impl NotifyFile {
    /// Reads, parses and checks the file; an error names the file and the field.
    pub fn load(path: &Path) -> anyhow::Result<NotifyFile> {
        let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let mut config: NotifyFile =
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {}", path.display(), e.to_string().trim()))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        if config.notifier.state_dir.is_relative() {
            config.notifier.state_dir = dir.join(&config.notifier.state_dir);
        }
        if let Err((field, problem)) = config.validate() {
            anyhow::bail!("{}: `{field}` {problem}", path.display());
        }
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), (String, String)> {
        self.kafka.validate()?;
        if let Some(notify) = &self.notify {
            notify.check()?;
        }
        self.notifier.validate()?;
        self.notifier.credentials()?;
        let known = |name: &String| self.recipients().iter().any(|r| r.id == *name || r.role == *name);
        if let Some(name) = self.notifier.unrouted_to.iter().find(|n| !known(n)) {
            return Err((
                "notifier.unrouted_to".into(),
                format!("`{name}` is neither a recipient id nor a role of notify.recipients"),
            ));
        }
        Ok(())
    }

    pub fn recipients(&self) -> &[Recipient] {
        self.notify.as_ref().map_or(&[], |n| &n.recipients)
    }
}

impl NotifierConfig {
    /// Checks what serde cannot; returns the field at fault. Credentials named in the
    /// environment must be there.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let fault = |field: &str, problem: String| Err((format!("notifier.{field}"), problem));
        if self.start != "earliest" && self.start != "latest" {
            return fault("start", format!("is `earliest` or `latest`, got `{}`", self.start));
        }
        if !(self.timeout_s > 0.0 && self.timeout_s.is_finite()) {
            return fault("timeout_s", format!("must be a positive number of seconds, got {}", self.timeout_s));
        }
        if !(self.max_backoff_s > 0.0 && self.max_backoff_s.is_finite()) {
            return fault("max_backoff_s", format!("must be a positive number of seconds, got {}", self.max_backoff_s));
        }
        if let Some(webhook) = &self.webhook
            && !(webhook.url.starts_with("http://") || webhook.url.starts_with("https://"))
        {
            return fault("webhook.url", format!("must be an http:// or https:// URL, got `{}`", webhook.url));
        }
        if let Some(smtp) = &self.smtp {
            if smtp.host.is_empty() {
                return fault("smtp.host", "is empty".into());
            }
            if !["starttls", "tls", "none"].contains(&smtp.tls.as_str()) {
                return fault("smtp.tls", format!("is `starttls`, `tls` or `none`, got `{}`", smtp.tls));
            }
            if let Err(e) = smtp.from.parse::<lettre::message::Mailbox>() {
                return fault("smtp.from", format!("is not a mail address (`{}`): {e}", smtp.from));
            }
            if smtp.username_env.is_some() != smtp.password_env.is_some() {
                return fault("smtp.username_env", "and `password_env` go together".into());
            }
        }
        Ok(())
    }

    /// The credentials named in the environment: the webhook's bearer token and the
    /// SMTP user and password; the field whose variable is not set.
    pub fn credentials(&self) -> Result<Credentials, (String, String)> {
        let read = |field: &str, variable: &Option<String>| match variable {
            None => Ok(None),
            Some(variable) => std::env::var(variable)
                .map(Some)
                .map_err(|_| (format!("notifier.{field}"), format!("environment variable `{variable}` is not set"))),
        };
        let bearer = read("webhook.bearer_env", &self.webhook.as_ref().and_then(|w| w.bearer_env.clone()))?;
        let smtp = self.smtp.as_ref();
        let user = read("smtp.username_env", &smtp.and_then(|s| s.username_env.clone()))?;
        let password = read("smtp.password_env", &smtp.and_then(|s| s.password_env.clone()))?;
        Ok(Credentials { bearer, smtp: user.zip(password) })
    }
}

/// Secrets from the environment (never shown).
#[derive(Clone, Default)]
pub struct Credentials {
    pub bearer: Option<String>,
    pub smtp: Option<(String, String)>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("bearer", &self.bearer.is_some())
            .field("smtp", &self.smtp.is_some())
            .finish()
    }
}
