//! The broker client the Kafka source and sink share: the config, secrets from the
//! environment or files, reading a partition, and the errors (which never show a
//! property's value).

mod config;
pub(crate) mod reader;

use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

pub use config::{InputsConfig, KafkaConfig, TopicsConfig, is_secret};

/// How long a metadata or offsets request may take.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

impl KafkaConfig {
    /// The librdkafka settings common to the producer and the recovery consumer: the
    /// `defaults`, then the configured properties over them.
    pub(crate) fn client_config(&self, defaults: &[(&str, &str)]) -> Result<ClientConfig, BrokerError> {
        let mut client = ClientConfig::new();
        client.set("bootstrap.servers", &self.brokers);
        for (name, value) in defaults {
            client.set(*name, *value);
        }
        for (name, value) in &self.properties {
            client.set(name, value);
        }
        for (name, variable) in &self.secrets_from_env {
            let value = std::env::var(variable).map_err(|_| BrokerError::Secret { property: name.clone() })?;
            client.set(name, value);
        }
        for (name, path) in &self.secrets_from_file {
            let text = std::fs::read_to_string(path).map_err(|_| BrokerError::Secret { property: name.clone() })?;
            let value = text.strip_suffix('\n').unwrap_or(&text);
            client.set(name, value.strip_suffix('\r').unwrap_or(value));
        }
        Ok(client)
    }
}

/// A failure to reach, read from or write to the broker; never includes a property value.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("kafka: {context}: {source}")]
    Kafka { context: String, source: KafkaError },
    #[error("kafka: the secret for `{property}` (its environment variable or file) can no longer be read")]
    Secret { property: String },
    #[error("kafka: {count} message(s) not delivered, first: {first}")]
    Undelivered { count: usize, first: String },
    #[error("kafka: progress record at {topic}/0 offset {offset} is not readable: {reason}")]
    Progress { topic: String, offset: i64, reason: String },
}

pub(crate) fn failed(context: impl Into<String>) -> impl FnOnce(KafkaError) -> BrokerError {
    let context = context.into();
    move |source| BrokerError::Kafka { context, source: without_values(source) }
}

/// librdkafka's configuration errors quote the property's value, which may be a
/// credential: the value is left out of the error.
fn without_values(error: KafkaError) -> KafkaError {
    match error {
        KafkaError::ClientConfig(code, description, property, _) => {
            KafkaError::ClientConfig(code, description, property, "(value not shown)".into())
        }
        other => other,
    }
}

/// A reading consumer's context: reaching the end of a partition is what it reads
/// for, not an error to log.
pub(crate) struct Quiet;

impl ClientContext for Quiet {
    fn error(&self, error: KafkaError, reason: &str) {
        // librdkafka reports a partition's end both ways.
        let end = matches!(
            error,
            KafkaError::PartitionEOF(_) | KafkaError::Global(rdkafka::types::RDKafkaErrorCode::PartitionEOF)
        );
        if !end {
            tracing::error!(%error, reason, "kafka");
        }
    }
}

impl rdkafka::consumer::ConsumerContext for Quiet {}

/// Hands `each` every message of a partition from offset `from` to the partition's end,
/// or to `below` (not included) if it comes first.
pub(crate) fn read_messages<C: rdkafka::consumer::ConsumerContext>(
    consumer: &BaseConsumer<C>,
    (topic, partition): (&str, i32),
    from: i64,
    below: Option<i64>,
    mut each: impl FnMut(&rdkafka::message::BorrowedMessage<'_>),
) -> Result<(), BrokerError> {
    let below = below.unwrap_or(i64::MAX);
    if from >= below {
        return Ok(());
    }
    let reading = || format!("reading {topic}/{partition} from offset {from}");
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, partition, Offset::Offset(from))
        .map_err(failed(format!("assigning {topic}/{partition}")))?;
    consumer.assign(&assignment).map_err(failed(format!("assigning {topic}/{partition}")))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if Instant::now() > deadline {
            let source = KafkaError::MessageConsumption(RDKafkaErrorCode::OperationTimedOut);
            return Err(BrokerError::Kafka { context: reading(), source });
        }
        match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(message)) if message.offset() < below => {
                each(&message);
                if message.offset() + 1 >= below {
                    break;
                }
            }
            Some(Ok(_)) | Some(Err(KafkaError::PartitionEOF(_))) => break,
            Some(Err(source)) => return Err(BrokerError::Kafka { context: reading(), source }),
            None => {}
        }
    }
    consumer.unassign().map_err(failed("unassigning"))?;
    Ok(())
}

/// The group's committed offset of every partition of `topic` that has one.
pub(crate) fn committed(consumer: &BaseConsumer, topic: &str) -> Result<Vec<(i32, i64)>, BrokerError> {
    let mut list = TopicPartitionList::new();
    for id in partitions(consumer, topic)? {
        list.add_partition(topic, id);
    }
    let committed = consumer.committed_offsets(list, REQUEST_TIMEOUT).map_err(|source| BrokerError::Kafka {
        context: format!("reading the committed offsets of {topic}"),
        source,
    })?;
    Ok(committed
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(end) if end > 0 => Some((e.partition(), end)),
            _ => None,
        })
        .collect())
}

/// The partition ids of a topic, in order; a topic the broker does not have (or
/// will not describe) is an error naming it.
pub(crate) fn partitions(consumer: &BaseConsumer, topic: &str) -> Result<Vec<i32>, BrokerError> {
    let metadata = consumer
        .fetch_metadata(Some(topic), REQUEST_TIMEOUT)
        .map_err(|source| BrokerError::Kafka { context: format!("reading the metadata of {topic}"), source })?;
    let mut ids = Vec::new();
    for t in metadata.topics() {
        if let Some(error) = t.error() {
            return Err(BrokerError::Kafka {
                context: format!("topic {topic}"),
                source: rdkafka::error::KafkaError::MetadataFetch(error.into()),
            });
        }
        ids.extend(t.partitions().iter().map(|p| p.id()));
    }
    ids.sort_unstable();
    Ok(ids)
}
