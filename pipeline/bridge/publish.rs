//! The bridge's own messages to Kafka: wo-events read back from the CMMS, and dead
//! letters of revisions the CMMS refused. Each is sent and waited for.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use defectflow_schemas::{DeadLetter, Emitted};
use rdkafka::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};

use crate::kafka::{BrokerError, KafkaConfig, TopicsConfig, failed};
use crate::sinks::kafka::Outgoing;

/// Failed deliveries, counted.
#[derive(Default)]
struct Failures(Mutex<Vec<String>>);

impl ClientContext for Failures {}

impl ProducerContext for Failures {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((error, _)) = result
            && let Ok(mut failed) = self.0.lock()
        {
            failed.push(error.to_string());
        }
    }
}

/// The producer, named by `sink_id` in its messages' headers.
pub struct Publisher {
    producer: BaseProducer<Failures>,
    sink_id: String,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher").field("sink_id", &self.sink_id).finish()
    }
}

impl Publisher {
    pub fn start(config: &KafkaConfig, sink_id: &str) -> Result<Publisher, BrokerError> {
        let producer = config
            .client_config(&[("enable.idempotence", "true"), ("acks", "all"), ("linger.ms", "0")])?
            .create_with_context(Failures::default())
            .map_err(failed("creating the bridge's producer"))?;
        Ok(Publisher { producer, sink_id: sink_id.to_owned() })
    }

    /// Sends `message` and waits until the broker has it.
    pub fn send(&self, message: &Outgoing) -> Result<(), String> {
        let headers = message.headers(&self.sink_id, None);
        let mut record = BaseRecord::to(&message.topic)
            .key(&message.key)
            .payload(&message.payload)
            .headers(headers)
            .timestamp(message.event_ms as i64);
        loop {
            match self.producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    self.producer.poll(Duration::from_millis(50));
                }
                Err((error, _)) => return Err(error.to_string()),
            }
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match self.producer.flush(Duration::ZERO) {
                Ok(()) => break,
                Err(KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut)) if Instant::now() < deadline => {
                    self.producer.poll(Duration::from_millis(1));
                }
                Err(error) => return Err(error.to_string()),
            }
        }
        let failed = std::mem::take(&mut *self.producer.context().0.lock().map_err(|_| "poisoned".to_owned())?);
        match failed.first() {
            None => Ok(()),
            Some(first) => Err(first.clone()),
        }
    }

    /// Sends a dead letter, retrying through a broker outage; `false` if the bridge
    /// stopped first.
    pub fn send_until_delivered(&self, letter: &DeadLetter, topics: &TopicsConfig, stop: &AtomicBool) -> bool {
        let Some(message) = Outgoing::of(&Emitted::DeadLetter(letter.clone()), topics) else { return false };
        loop {
            match self.send(&message) {
                Ok(()) => return true,
                Err(error) => tracing::warn!(%error, "dead letter not delivered; retrying"),
            }
            if stop.load(Ordering::Relaxed) {
                return false;
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    }
}
