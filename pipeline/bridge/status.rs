//! The CMMS's status changes back to defectflow: every `poll_s` the bridge lists the
//! records changed since its last poll (a few seconds of overlap, for clocks and
//! timestamps of coarse resolution), and a status the mapping names as a wo-event, on a
//! work order the bridge wrote, goes to the wo-events topic — once: not when defectflow
//! already has that status, nor when the CMMS's previous status was the same event
//! (Maximo's COMP, then CLOSE).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::Duration;

use defectflow_schemas::registry::WO_EVENT;
use defectflow_schemas::{WoEvent, WoEventKind};
use serde_json::{Value, json};

use super::BridgeConfig;
use super::http::LISTING_OVERLAP_MS;
use super::journal::Entry;
use super::mapping::{Poll, pick};
use super::publish::Publisher;
use super::push::Pusher;
use crate::clock::now_ms;
use crate::sinks::kafka::Outgoing;

/// The polling thread, if the mapping polls.
#[derive(Debug)]
pub struct Poller(Option<JoinHandle<()>>);

impl Poller {
    pub fn start(pusher: &Arc<Pusher>, publisher: &Arc<Publisher>, config: &BridgeConfig) -> anyhow::Result<Poller> {
        let Some(poll) = pusher.client.mapping.poll.clone() else { return Ok(Poller(None)) };
        if config.cmms.poll_s == 0.0 {
            return Ok(Poller(None));
        }
        let (pusher, publisher) = (pusher.clone(), publisher.clone());
        let every = Duration::from_secs_f64(config.cmms.poll_s);
        let topic = config.kafka.inputs.wo_events.clone();
        let state = config.cmms.state_dir.join("poll.json");
        let mut since = std::fs::read_to_string(&state)
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .and_then(|v| v["since_ms"].as_u64())
            .unwrap_or_else(|| now_ms().saturating_sub(config.cmms.poll_lookback_s * 1000));
        let handle = std::thread::Builder::new().name("bridge-poll".into()).spawn(move || {
            while !pusher.stop.load(Ordering::Relaxed) {
                let began = now_ms();
                match poll_once(&pusher, &publisher, &poll, since, &topic) {
                    Ok(_) => {
                        since = began.saturating_sub(LISTING_OVERLAP_MS);
                        save(&state, since);
                    }
                    Err(error) => tracing::warn!(%error, "polling the CMMS's statuses"),
                }
                let until = std::time::Instant::now() + every;
                while std::time::Instant::now() < until && !pusher.stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        })?;
        Ok(Poller(Some(handle)))
    }

    pub fn join(self) {
        if let Some(handle) = self.0 {
            let _ = handle.join();
        }
    }
}

fn save(state: &PathBuf, since_ms: u64) {
    let temporary = state.with_extension("json.new");
    let written = std::fs::write(&temporary, json!({ "since_ms": since_ms }).to_string())
        .and_then(|()| std::fs::rename(&temporary, state));
    if let Err(error) = written {
        tracing::warn!(%error, path = %state.display(), "poll position not saved");
    }
}

/// One poll, every page; returns the wo-events sent.
fn poll_once(pusher: &Pusher, publisher: &Publisher, poll: &Poll, since_ms: u64, topic: &str) -> Result<usize, String> {
    let mut sent = 0;
    pusher
        .client
        .listed(poll, &pusher.values, since_ms, &mut |record| {
            sent += usize::from(report(pusher, publisher, poll, record, topic)?);
            Ok(())
        })
        .map_err(|failure| failure.to_string())?;
    let mut journal = pusher.journal.lock().unwrap_or_else(|p| p.into_inner());
    journal.sync().map_err(|e| e.to_string())?;
    Ok(sent)
}

/// One listed record: a wo-event if its status is news to defectflow.
fn report(pusher: &Pusher, publisher: &Publisher, poll: &Poll, record: &Value, topic: &str) -> Result<bool, String> {
    let mapping = &pusher.client.mapping;
    let (Some(key), Some(status)) = (pick(&poll.key, record, &[]), pick(&poll.status, record, &[])) else {
        return Ok(false);
    };
    let Some(mut entry) = find(pusher, &poll.key_is, &key) else { return Ok(false) };
    if entry.cmms_status.as_deref() == Some(status.as_str()) {
        return Ok(false);
    }
    let before = entry.cmms_status.as_deref().and_then(|s| mapping.status_event(s)).map(|e| e.event);
    let event = mapping.status_event(&status).filter(|e| {
        Some(e.event) != before && implied_status(e.event) != entry.status.as_deref() && entry.revision > 0
    });
    let mut sent = false;
    if let Some(event) = event {
        let at_ms = poll.changed_at.as_deref().and_then(|p| pick(p, record, &[])).and_then(|t| parse_time(&t));
        let at_ms = at_ms.unwrap_or_else(now_ms);
        // What the repair took, where the CMMS's record says and the event completes it.
        let hours = |pointer: &Option<String>| {
            let value = record.pointer(pointer.as_deref()?)?;
            let hours = value.as_f64().or_else(|| value.as_str()?.trim().parse().ok())?;
            (hours >= 0.0 && hours.is_finite() && event.event == WoEventKind::Completed).then_some(hours)
        };
        let message = WoEvent {
            work_order_id: entry.work_order_id.clone(),
            event: event.event,
            at_ms,
            technician_id: None,
            note: Some(format!("{} status {status}", mapping.name)),
            reason: event.reason.clone(),
            actual_hours: hours(&poll.actual_hours),
            downtime_hours: hours(&poll.downtime_hours),
        };
        let outgoing = Outgoing {
            topic: topic.to_owned(),
            key: message.work_order_id.clone(),
            idempotency_key: format!("cmms:{}:{}:{status}:{at_ms}", mapping.name, message.work_order_id),
            payload: serde_json::to_vec(&message).map_err(|e| e.to_string())?,
            event_ms: at_ms,
            schema: &WO_EVENT,
            subject: message.work_order_id.clone(),
        };
        publisher.send(&outgoing)?;
        pusher.counters.events.fetch_add(1, Ordering::Relaxed);
        tracing::info!(work_order = %message.work_order_id, %status, event = ?event.event, "CMMS status sent as a wo-event");
        sent = true;
    }
    entry.cmms_status = Some(status);
    let mut journal = pusher.journal.lock().unwrap_or_else(|p| p.into_inner());
    journal.record(entry).map_err(|e| e.to_string())?;
    Ok(sent)
}

/// The journal's entry of the record a poll names: by work-order id (the CMMS may have
/// upper-cased it) or by the CMMS's reference.
fn find(pusher: &Pusher, key_is: &str, key: &str) -> Option<Entry> {
    let journal = pusher.journal.lock().unwrap_or_else(|p| p.into_inner());
    if key_is == "reference" {
        return journal.entries().find(|e| e.reference.as_deref() == Some(key)).cloned();
    }
    let canonical = match key.get(..3) {
        Some(prefix) if prefix.eq_ignore_ascii_case("WO-") => format!("WO-{}", key[3..].to_lowercase()),
        _ => key.to_owned(),
    };
    journal.get(&canonical).or_else(|| journal.get(key)).cloned()
}

/// The status a work order has once defectflow applied the event.
fn implied_status(event: WoEventKind) -> Option<&'static str> {
    Some(match event {
        WoEventKind::Acknowledged => "acknowledged",
        WoEventKind::Started | WoEventKind::Resumed => "in_progress",
        WoEventKind::Completed => "completed",
        WoEventKind::FalsePositive => "false_positive",
        WoEventKind::OnHold => "on_hold",
        WoEventKind::Cancelled => "cancelled",
        WoEventKind::Reassigned | WoEventKind::SuppressionLifted => return None,
    })
}

/// RFC 3339, or OData V2's `/Date(ms)/` (with or without an offset).
fn parse_time(text: &str) -> Option<u64> {
    if let Some(inner) = text.strip_prefix("/Date(").and_then(|t| t.strip_suffix(")/")) {
        let digits: String = inner.chars().take_while(|c| c.is_ascii_digit() || *c == '-').collect();
        return digits.parse::<i64>().ok().map(|ms| ms.max(0) as u64);
    }
    let at = chrono::DateTime::parse_from_rfc3339(text).ok()?;
    u64::try_from(at.timestamp_millis()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_in_either_form() {
        assert_eq!(parse_time("/Date(1700000000000)/"), Some(1_700_000_000_000));
        assert_eq!(parse_time("/Date(1700000000000+0000)/"), Some(1_700_000_000_000));
        assert_eq!(parse_time("2023-11-14T22:13:20+00:00"), Some(1_700_000_000_000));
        assert_eq!(parse_time("2023-11-14T23:13:20.000+01:00"), Some(1_700_000_000_000));
        assert_eq!(parse_time("yesterday"), None);
    }
}
