//! `[kafka]`: the broker, the output and input topics and the client's settings, with
//! the checks serde cannot make.

use std::collections::BTreeMap;

use serde::Deserialize;

/// `[kafka]`: the broker, the topics and the client's settings.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap servers, `host:port[,host:port…]`.
    pub brokers: String,
    #[serde(default)]
    pub topics: TopicsConfig,
    /// Wrap each closed timestamp in a Kafka transaction (Apache Kafka, Redpanda);
    /// exactly-once holds without it.
    #[serde(default)]
    pub transactional: bool,
    /// Names this sink's progress records and transactions: two runs with the same id
    /// continue each other's delivery.
    #[serde(default = "default_sink_id")]
    pub sink_id: String,
    /// The input topics the plant's systems write.
    #[serde(default)]
    pub inputs: InputsConfig,
    /// Any librdkafka property (`security.protocol`, `sasl.mechanism`, `ssl.ca.location`,
    /// `message.timeout.ms`, ...), passed as given.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// librdkafka properties whose values are secrets, read from the named environment
    /// variables at start (e.g. `"sasl.password" = "KAFKA_PASSWORD"`); never logged.
    #[serde(default)]
    pub secrets_from_env: BTreeMap<String, String>,
    /// librdkafka properties whose values are secrets, read from the named files at
    /// start (a mounted secret: `"sasl.password" = "/run/secrets/kafka"`, one trailing
    /// newline dropped); never logged.
    #[serde(default)]
    pub secrets_from_file: BTreeMap<String, std::path::PathBuf>,
}

/// Whether a librdkafka property holds a credential, which must come from the
/// environment or a file, never from the config's `properties`.
pub fn is_secret(property: &str) -> bool {
    property.ends_with("password")
        || property.ends_with("secret")
        || matches!(property, "ssl.key.pem" | "sasl.oauthbearer.config")
}

impl KafkaConfig {
    /// The broker at `brokers`, every other setting at its default.
    pub fn new(brokers: impl Into<String>) -> KafkaConfig {
        KafkaConfig {
            brokers: brokers.into(),
            topics: TopicsConfig::default(),
            transactional: false,
            sink_id: default_sink_id(),
            inputs: InputsConfig::default(),
            properties: BTreeMap::new(),
            secrets_from_env: BTreeMap::new(),
            secrets_from_file: BTreeMap::new(),
        }
    }
}

fn default_sink_id() -> String {
    "defectflow".into()
}

impl std::fmt::Debug for KafkaConfig {
    /// Property values may hold credentials: only their names are shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaConfig")
            .field("brokers", &self.brokers)
            .field("topics", &self.topics)
            .field("transactional", &self.transactional)
            .field("sink_id", &self.sink_id)
            .field("inputs", &self.inputs)
            .field("properties", &self.properties.keys().collect::<Vec<_>>())
            .field("secrets_from_env", &self.secrets_from_env)
            .field("secrets_from_file", &self.secrets_from_file)
            .finish()
    }
}

/// `[kafka.topics]`: topic names.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TopicsConfig {
    #[serde(default = "topic::work_orders")]
    pub work_orders: String,
    #[serde(default = "topic::alerts")]
    pub alerts: String,
    #[serde(default = "topic::parts_staging")]
    pub parts_staging: String,
    #[serde(default = "topic::dead_letter")]
    pub dead_letter: String,
    /// The sink's progress records (one partition).
    #[serde(default = "topic::progress")]
    pub progress: String,
}

mod topic {
    pub fn work_orders() -> String {
        "defectflow.work-orders".into()
    }
    pub fn alerts() -> String {
        "defectflow.alerts".into()
    }
    pub fn parts_staging() -> String {
        "defectflow.parts-staging".into()
    }
    pub fn dead_letter() -> String {
        "defectflow.dead-letter".into()
    }
    pub fn progress() -> String {
        "defectflow.progress".into()
    }
}

impl Default for TopicsConfig {
    fn default() -> Self {
        TopicsConfig {
            work_orders: topic::work_orders(),
            alerts: topic::alerts(),
            parts_staging: topic::parts_staging(),
            dead_letter: topic::dead_letter(),
            progress: topic::progress(),
        }
    }
}

impl TopicsConfig {
    pub(crate) fn outputs(&self) -> [&str; 4] {
        [&self.work_orders, &self.alerts, &self.parts_staging, &self.dead_letter]
    }
}

impl KafkaConfig {
    /// Checks what serde cannot; returns the field at fault (under `kafka.`).
    pub fn validate(&self) -> Result<(), (String, String)> {
        if self.brokers.trim().is_empty() {
            return Err(("kafka.brokers".into(), "must name at least one host:port".into()));
        }
        let (t, i) = (&self.topics, &self.inputs);
        for (field, name) in [
            ("topics.work_orders", &t.work_orders),
            ("topics.alerts", &t.alerts),
            ("topics.parts_staging", &t.parts_staging),
            ("topics.dead_letter", &t.dead_letter),
            ("topics.progress", &t.progress),
            ("inputs.wo_events", &i.wo_events),
            ("inputs.inventory", &i.inventory),
            ("inputs.technicians", &i.technicians),
            ("inputs.assets", &i.assets),
        ] {
            let legal = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
            if name.is_empty() || name.len() > 249 || !name.chars().all(legal) {
                return Err((
                    format!("kafka.{field}"),
                    format!("`{name}` is not a Kafka topic name (1–249 of letters, digits, `.`, `_`, `-`)"),
                ));
            }
        }
        if let Some(property) = self.properties.keys().find(|p| is_secret(p)) {
            return Err((
                format!("kafka.properties.\"{property}\""),
                "holds a credential: name the environment variable that holds it under \
                 [kafka.secrets_from_env], or its file under [kafka.secrets_from_file]"
                    .into(),
            ));
        }
        for (property, variable) in &self.secrets_from_env {
            if std::env::var_os(variable).is_none() {
                return Err((
                    format!("kafka.secrets_from_env.\"{property}\""),
                    format!("environment variable `{variable}` is not set"),
                ));
            }
        }
        for (property, path) in &self.secrets_from_file {
            if let Err(e) = std::fs::read(path) {
                return Err((
                    format!("kafka.secrets_from_file.\"{property}\""),
                    format!("cannot read {}: {e}", path.display()),
                ));
            }
        }
        Ok(())
    }

    /// The librdkafka settings as `check-config` shows them: each property with its
    /// value, a secret with where it comes from instead.
    pub fn describe(&self) -> Vec<(String, String)> {
        let mut out = vec![("bootstrap.servers".to_owned(), self.brokers.clone())];
        out.extend(self.properties.iter().map(|(name, value)| (name.clone(), value.clone())));
        out.extend(
            self.secrets_from_env
                .iter()
                .map(|(name, variable)| (name.clone(), format!("<secret from environment variable {variable}>"))),
        );
        out.extend(
            self.secrets_from_file
                .iter()
                .map(|(name, path)| (name.clone(), format!("<secret from file {}>", path.display()))),
        );
        out
    }
}

/// `[kafka.inputs]`: the input topics and how their messages are read.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct InputsConfig {
    /// Read the input topics at all (a run can publish without consuming).
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default = "input_topic::wo_events")]
    pub wo_events: String,
    #[serde(default = "input_topic::inventory")]
    pub inventory: String,
    #[serde(default = "input_topic::technicians")]
    pub technicians: String,
    #[serde(default = "input_topic::assets")]
    pub assets: String,
    /// Consumer group whose committed offsets say where a run resumes.
    #[serde(default = "default_group")]
    pub group: String,
    /// A larger message is a dead letter (its first KiB kept), not parsed.
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
}

fn yes() -> bool {
    true
}

fn default_group() -> String {
    "defectflow".into()
}

fn default_max_message_bytes() -> usize {
    64 * 1024
}

mod input_topic {
    pub fn wo_events() -> String {
        "defectflow.wo-events".into()
    }
    pub fn inventory() -> String {
        "defectflow.inventory".into()
    }
    pub fn technicians() -> String {
        "defectflow.technicians".into()
    }
    pub fn assets() -> String {
        "defectflow.assets".into()
    }
}

impl Default for InputsConfig {
    fn default() -> Self {
        InputsConfig {
            enabled: true,
            wo_events: input_topic::wo_events(),
            inventory: input_topic::inventory(),
            technicians: input_topic::technicians(),
            assets: input_topic::assets(),
            group: default_group(),
            max_message_bytes: default_max_message_bytes(),
        }
    }
}
