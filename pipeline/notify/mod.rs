//! `defectflow notify`: the alerts topic to the people the run routed them to, by
//! webhook and by mail (docs/notify.md).
//!
//! It reads the alerts topic as a consumer group, one alert at a time: each goes to its
//! recipient (the `[notify]` recipient of that id; an assigned technician not listed
//! there is reached by the webhook alone), an unrouted one to `[notifier] unrouted_to`,
//! on every channel they have. A channel that fails for a while is tried again with
//! backoff until it answers; one that refuses for good gives a dead letter naming the
//! answer. Each delivery is recorded in a journal (synced before the group's offsets
//! move past it), so an alert read again after a crash is not sent again on a channel
//! that had it; in the window between a server accepting and the journal recording, a
//! webhook receiver can tell the repeat by its `Idempotency-Key` (a mail is sent again,
//! with the same Message-ID).

mod config;
mod deliver;

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use defectflow_operators::notify::Recipient;
use defectflow_schemas::registry::{self, ALERT};
use defectflow_schemas::{Alert, DeadLetter};
use serde::{Deserialize, Serialize};

pub use config::{NotifierConfig, NotifyFile, SmtpConfig, WebhookConfig};
pub use deliver::Channel;

use crate::bridge::Publisher;
use crate::kafka::reader::{Read, TopicReader};
use deliver::{Deliverer, Tried};

/// How often done offsets are committed.
const COMMIT_EVERY: Duration = Duration::from_millis(200);

/// What a `defectflow notify` run did.
#[derive(Debug, Default, Serialize)]
pub struct Summary {
    /// Alerts read.
    pub alerts: u64,
    pub webhooks: u64,
    pub emails: u64,
    /// Deliveries the journal says were made before (an alert read again).
    pub already: u64,
    pub refused: u64,
    pub retries: u64,
    /// Alerts for recipients with no channel.
    pub unreachable: u64,
    pub seconds: f64,
}

/// Runs until `stop` (or, with `until_caught_up`, until every alert on the topic at
/// start is delivered and committed).
pub fn run(config: &NotifyFile, stop: Arc<AtomicBool>, until_caught_up: bool) -> anyhow::Result<Summary> {
    let started = Instant::now();
    let notifier = &config.notifier;
    let credentials = notifier.credentials().map_err(|(field, problem)| anyhow::anyhow!("{field} {problem}"))?;
    let deliverer = Deliverer::new(notifier, credentials)?;
    let mut journal = Journal::open(&notifier.state_dir)
        .map_err(|e| anyhow::anyhow!("notifier journal in {}: {e}", notifier.state_dir.display()))?;
    let publisher = Publisher::start(&config.kafka, &format!("{}-notify", config.kafka.sink_id))?;
    let topic = &config.kafka.topics.alerts;
    let mut reader = TopicReader::start(&config.kafka, topic, &notifier.group, &notifier.start, "notifier")?;
    tracing::info!(%topic, partitions = reader.next.len(), "notifier started");
    let mut summary = Summary::default();
    let max_backoff = Duration::from_secs_f64(notifier.max_backoff_s);
    let mut last_commit = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        if let Some(read) = reader.poll() {
            let (partition, offset) = (read.partition, read.offset);
            summary.alerts += 1;
            let delivered = match parse(topic, read) {
                Ok((id, alert)) => {
                    let recipients = recipients(config, &alert);
                    let mut all = true;
                    for recipient in &recipients {
                        let letter = |channel: &str, reason: String| DeadLetter {
                            source: format!("notify:{channel}:{}", recipient.id),
                            payload: serde_json::to_string(&alert).unwrap_or_default(),
                            reason,
                            at_ms: alert.at_ms,
                        };
                        let channels = deliverer.channels(recipient);
                        if channels.is_empty() {
                            // Nobody can be reached: said on the dead-letter topic, once.
                            let key = format!("{id}>{}>none", recipient.id);
                            if !journal.has(&key) {
                                summary.unreachable += 1;
                                let why = format!("no webhook or mail address reaches recipient `{}`", recipient.id);
                                tracing::warn!(alert = %id, "{why}");
                                if !publisher.send_until_delivered(&letter("none", why), &config.kafka.topics, &stop) {
                                    all = false;
                                    break;
                                }
                                journal.record(&key)?;
                            }
                        }
                        for channel in channels {
                            let key = format!("{id}>{}>{}", recipient.id, channel.name());
                            if journal.has(&key) {
                                summary.already += 1;
                                continue;
                            }
                            let tries = Tries { deliverer: &deliverer, stop: &stop, max_backoff };
                            match tries.deliver(&id, &alert, recipient, &channel, &mut summary) {
                                Some(Ok(())) => {}
                                Some(Err(reason)) => {
                                    summary.refused += 1;
                                    let letter = letter(channel.name(), reason);
                                    if !publisher.send_until_delivered(&letter, &config.kafka.topics, &stop) {
                                        all = false;
                                        break;
                                    }
                                }
                                None => {
                                    all = false;
                                    break;
                                }
                            }
                            journal.record(&key)?;
                        }
                        if !all {
                            break;
                        }
                    }
                    all
                }
                Err(letter) => publisher.send_until_delivered(&letter, &config.kafka.topics, &stop),
            };
            // Not done when stopped mid-way: read again after a restart.
            if delivered {
                reader.done(partition, offset);
            }
        }
        if last_commit.elapsed() >= COMMIT_EVERY {
            reader.commit(|| journal.sync())?;
            last_commit = Instant::now();
        }
        if until_caught_up && reader.caught_up() {
            break;
        }
    }
    reader.commit(|| journal.sync())?;
    summary.seconds = started.elapsed().as_secs_f64();
    tracing::info!(?summary, "notifier stopped");
    Ok(summary)
}

/// The alert a message holds and its idempotency key, or the dead letter it is.
fn parse(topic: &str, read: Read) -> Result<(String, Alert), DeadLetter> {
    let Read { partition, offset, payload, idempotency_key } = read;
    let letter = |payload: &[u8], reason: String| DeadLetter {
        source: format!("{topic}/{partition}@{offset}"),
        payload: String::from_utf8_lossy(payload).into_owned(),
        reason,
        at_ms: crate::clock::now_ms(),
    };
    let Some(payload) = payload else { return Err(letter(b"", "an alert with no value".into())) };
    let mut raw: serde_json::Value =
        serde_json::from_slice(&payload).map_err(|e| letter(&payload, format!("not an alert (JSON): {e}")))?;
    registry::drop_unknown_fields(ALERT.parsed(), &mut raw);
    let alert = Alert::deserialize(&raw).map_err(|e| letter(&payload, format!("not an alert: {e}")))?;
    let id = idempotency_key.unwrap_or_else(|| format!("{topic}/{partition}@{offset}"));
    Ok((id, alert))
}

/// Who `alert` goes to: its recipient (an id `[notify]` does not list, such as an
/// assigned technician's, is reached by the webhook alone), or for an unrouted one
/// `[notifier] unrouted_to` (everyone it names, on shift or not), else the webhook.
fn recipients(config: &NotifyFile, alert: &Alert) -> Vec<Recipient> {
    let bare = |id: &str| Recipient {
        id: id.to_owned(),
        name: String::new(),
        role: String::new(),
        zones: Vec::new(),
        shift: None,
        email: None,
        webhook: None,
    };
    let listed = config.recipients();
    match &alert.recipient_id {
        Some(id) => vec![listed.iter().find(|r| r.id == *id).cloned().unwrap_or_else(|| bare(id))],
        None => {
            let names = &config.notifier.unrouted_to;
            let named: Vec<Recipient> =
                listed.iter().filter(|r| names.iter().any(|n| *n == r.id || *n == r.role)).cloned().collect();
            if named.is_empty() { vec![bare("unrouted")] } else { named }
        }
    }
}

/// Tries of one delivery until it is done, refused or stopped.
struct Tries<'a> {
    deliverer: &'a Deliverer,
    stop: &'a AtomicBool,
    max_backoff: Duration,
}

impl Tries<'_> {
    /// `Some(Ok)` delivered, `Some(Err(why))` refused for good, `None` stopped.
    fn deliver(
        &self,
        id: &str,
        alert: &Alert,
        recipient: &Recipient,
        channel: &Channel,
        summary: &mut Summary,
    ) -> Option<Result<(), String>> {
        let mut wait = Duration::from_millis(200);
        loop {
            match self.deliverer.try_once(id, alert, recipient, channel) {
                Tried::Done => {
                    match channel {
                        Channel::Webhook(_) => summary.webhooks += 1,
                        Channel::Email(_) => summary.emails += 1,
                    }
                    return Some(Ok(()));
                }
                Tried::Refused(why) => {
                    tracing::error!(alert = %id, recipient = %recipient.id, channel = channel.name(), %why, "refused");
                    return Some(Err(why));
                }
                Tried::Again(why) => {
                    summary.retries += 1;
                    tracing::warn!(alert = %id, recipient = %recipient.id, channel = channel.name(), %why, wait_ms = wait.as_millis() as u64, "trying again");
                    let until = Instant::now() + wait;
                    while Instant::now() < until {
                        if self.stop.load(Ordering::Relaxed) {
                            return None;
                        }
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    wait = (wait * 2).min(self.max_backoff);
                }
            }
        }
    }
}

/// The deliveries made: one `<alert id>><recipient>><channel>` a line, appended, synced
/// before the offsets move past them.
struct Journal {
    path: PathBuf,
    file: std::fs::File,
    done: HashSet<String>,
}

impl Journal {
    fn open(dir: &Path) -> std::io::Result<Journal> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("delivered.log");
        let mut done = HashSet::new();
        let mut torn = false;
        if let Ok(file) = std::fs::File::open(&path) {
            let mut reader = BufReader::new(file);
            let mut line = String::new();
            while reader.read_line(&mut line)? > 0 {
                // A line a crash cut short is not a delivery (it is made again).
                torn = !line.ends_with('\n');
                if !torn {
                    done.insert(line.trim_end().to_owned());
                }
                line.clear();
            }
        }
        let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&path)?;
        if torn {
            writeln!(file)?;
        }
        Ok(Journal { path, file, done })
    }

    fn has(&self, key: &str) -> bool {
        self.done.contains(key)
    }

    fn record(&mut self, key: &str) -> anyhow::Result<()> {
        writeln!(self.file, "{key}").map_err(|e| anyhow::anyhow!("{}: {e}", self.path.display()))?;
        self.done.insert(key.to_owned());
        Ok(())
    }

    fn sync(&mut self) -> anyhow::Result<()> {
        self.file.sync_data().map_err(|e| anyhow::anyhow!("{}: {e}", self.path.display()))
    }
}
