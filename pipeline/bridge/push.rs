//! One work-order revision into the CMMS: created on its first revision, updated on the
//! later ones, found again after a duplicate, retried until the CMMS answers; a revision
//! the CMMS refuses for good is handed back with the answer, for the dead-letter topic.
//!
//! Exactly once: the journal says which revision of each work order the CMMS
//! acknowledged, and a revision at or below it is not sent again. A revision that was in
//! flight when an earlier bridge stopped (the CMMS may have applied it, the journal does
//! not say) is sent with the same idempotency key: a CMMS that keeps them (Maximo's
//! `transactionid`, a webhook's `Idempotency-Key`) answers that it is a duplicate, which
//! counts as applied; the record's reference is then found with the mapping's lookup.
//! A CMMS that keeps no key but can be searched (SAP PM, by the external reference) is
//! asked before each create (`[lookup] before_create`): a record made by a create in
//! flight is found and updated instead.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use defectflow_schemas::WorkOrder;
use serde_json::{Value, json};

use super::http::{Answer, Client, ListFailure};
use super::journal::{Entry, Journal};
use super::mapping::{Poll, Request, pick};
use crate::clock::rfc3339;

/// What became of a revision.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    Applied,
    /// The journal or the CMMS says it was applied before.
    AlreadyApplied,
    /// Refused for good: why, with the CMMS's answer.
    Refused(String),
    /// The bridge is stopping; the revision stays uncommitted and is sent again.
    Stopped,
}

/// What the bridge counts.
#[derive(Debug, Default)]
pub struct Counters {
    pub applied: AtomicU64,
    pub already_applied: AtomicU64,
    pub refused: AtomicU64,
    pub retries: AtomicU64,
    pub lookups: AtomicU64,
    pub events: AtomicU64,
}

/// Pushes revisions; shared by the bridge's workers.
#[derive(Debug)]
pub struct Pusher {
    pub client: Client,
    pub journal: Arc<Mutex<Journal>>,
    /// `[cmms.values]`, as `{values.…}` in templates.
    pub values: Value,
    pub stop: Arc<AtomicBool>,
    pub max_backoff: Duration,
    pub counters: Arc<Counters>,
}

impl Pusher {
    /// Pushes one revision (`raw` is its JSON as read from the topic).
    pub fn push(&self, order: &WorkOrder, raw: &Value) -> Outcome {
        let id = &order.work_order_id;
        let entry = self.entry(id);
        if entry.revision >= order.revision {
            self.counters.already_applied.fetch_add(1, Ordering::Relaxed);
            return Outcome::AlreadyApplied;
        }
        let mapping = &self.client.mapping;
        let mut reference = entry.reference.clone();
        let needs_reference = mapping.update.path.contains("{ref");
        let mut create = entry.revision == 0;
        if !create && needs_reference && reference.is_none() {
            match self.lookup(id) {
                Ok(found) => reference = found,
                Err(outcome) => return outcome,
            }
            create = reference.is_none();
        }
        // A CMMS that keeps no idempotency key: a record an earlier attempt made is
        // looked for before each create.
        let mut attempted = entry.creating_since_ms;
        if create {
            match self.made_before(id, attempted) {
                Ok(found) => reference = found,
                Err(outcome) => return outcome,
            }
            create = reference.is_none();
        }
        if create && self.listing().is_some() {
            match self.intend(id) {
                Ok(at) => attempted = Some(at),
                Err(outcome) => return outcome,
            }
        }
        let mut backoff = Backoff::new(self.max_backoff);
        loop {
            let context = self.context(order, raw, reference.as_deref());
            let request = if create { &mapping.create } else { &mapping.update };
            match self.send(request, &context) {
                Answer::Done { headers, body } => {
                    if create && let Some(pointer) = &mapping.create.reference {
                        reference = pick(pointer, &body, &headers).or(reference);
                    }
                    return self.applied(order, reference, Outcome::Applied);
                }
                Answer::Duplicate { status } if create => {
                    // Made by an earlier attempt: find it, then bring it up to this revision.
                    tracing::info!(work_order = %id, status, "the CMMS has this work order already; finding it");
                    match self.lookup(id) {
                        Ok(Some(found)) => {
                            reference = Some(found);
                            create = false;
                        }
                        Ok(None) if needs_reference => {
                            let why = format!(
                                "{} calls work order {id} a duplicate (HTTP {status}) but the lookup does not find it",
                                mapping.name
                            );
                            return self.refused(why);
                        }
                        Ok(None) => create = false,
                        Err(outcome) => return outcome,
                    }
                }
                // The CMMS keeps the idempotency key: this very revision was applied.
                Answer::Duplicate { .. } => return self.applied(order, reference, Outcome::AlreadyApplied),
                Answer::Again { after, why } => {
                    if let Err(outcome) = self.wait(&mut backoff, after, &why) {
                        return outcome;
                    }
                    // A create that timed out or failed may have been made all the same.
                    if create {
                        match self.made_before(id, attempted) {
                            Ok(found) => reference = found,
                            Err(outcome) => return outcome,
                        }
                        create = reference.is_none();
                    }
                }
                Answer::Refused { status, body } => {
                    if create && attempted.is_some() {
                        // Refused: nothing was made, and nothing is to be looked for.
                        let mut entry = self.entry(id);
                        entry.creating_since_ms = None;
                        let mut journal = self.journal.lock().unwrap_or_else(|p| p.into_inner());
                        if let Err(error) = journal.record(entry) {
                            tracing::error!(%error, path = %journal.path().display(), "bridge journal not written");
                        }
                    }
                    let verb = if create { "create" } else { "update" };
                    return self.refused(format!(
                        "{} refused to {verb} work order {id} revision {} (HTTP {status}): {body}",
                        mapping.name, order.revision
                    ));
                }
            }
        }
    }

    fn entry(&self, id: &str) -> Entry {
        let journal = self.journal.lock().unwrap_or_else(|p| p.into_inner());
        journal.get(id).cloned().unwrap_or_else(|| Entry { work_order_id: id.to_owned(), ..Entry::default() })
    }

    fn applied(&self, order: &WorkOrder, reference: Option<String>, outcome: Outcome) -> Outcome {
        let counter = if outcome == Outcome::Applied { &self.counters.applied } else { &self.counters.already_applied };
        counter.fetch_add(1, Ordering::Relaxed);
        let mut entry = self.entry(&order.work_order_id);
        entry.reference = reference.or(entry.reference);
        entry.creating_since_ms = None;
        entry.revision = entry.revision.max(order.revision);
        entry.status = Some(order.status.as_str().to_owned());
        let mut journal = self.journal.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(error) = journal.record(entry) {
            // Not recorded: the offset is not committed either, and the revision comes
            // again after a restart, where the CMMS's idempotency key catches it.
            tracing::error!(%error, path = %journal.path().display(), "bridge journal not written");
            return Outcome::Stopped;
        }
        outcome
    }

    fn refused(&self, why: String) -> Outcome {
        self.counters.refused.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(%why, "revision refused by the CMMS; sent to the dead-letter topic");
        Outcome::Refused(why)
    }

    /// The mapping's listing, where it can find a create that was in flight.
    fn listing(&self) -> Option<&Poll> {
        self.client.mapping.poll.as_ref().filter(|p| p.text.is_some() && p.key_is == "reference")
    }

    /// For a CMMS that keeps no idempotency key, before a create: the record an earlier
    /// attempt made, if it made one (the mapping's lookup where it asks before each
    /// create, else the records listed as changed since the attempt journalled at
    /// `attempted`). Nothing for a CMMS that keeps keys.
    fn made_before(&self, id: &str, attempted: Option<u64>) -> Result<Option<String>, Outcome> {
        if self.client.mapping.lookup.as_ref().is_some_and(|l| l.before_create) {
            return self.lookup(id);
        }
        match (self.listing(), attempted) {
            (Some(poll), Some(since)) => self.find_listed(poll, id, since),
            _ => Ok(None),
        }
    }

    /// Journals (synced) that a create of work order `id` is about to be sent; when.
    fn intend(&self, id: &str) -> Result<u64, Outcome> {
        let mut entry = self.entry(id);
        let at = crate::clock::now_ms();
        entry.creating_since_ms = Some(at);
        let mut journal = self.journal.lock().unwrap_or_else(|p| p.into_inner());
        journal.record(entry).and_then(|()| journal.sync()).map_err(|error| {
            tracing::error!(%error, path = %journal.path().display(), "bridge journal not written");
            Outcome::Stopped
        })?;
        Ok(at)
    }

    /// The reference of the record a create of work order `id` made, looked for among
    /// those the CMMS lists as changed since `since_ms` (less the poll's overlap, for
    /// clocks apart), by the work-order id in their text.
    fn find_listed(&self, poll: &Poll, id: &str, since_ms: u64) -> Result<Option<String>, Outcome> {
        let text = poll.text.as_deref().unwrap_or_default();
        let marker = format!("work order {id} ");
        let mut backoff = Backoff::new(self.max_backoff);
        loop {
            self.counters.lookups.fetch_add(1, Ordering::Relaxed);
            let mut found = None;
            let since = since_ms.saturating_sub(super::http::LISTING_OVERLAP_MS);
            let listed = self.client.listed(poll, &self.values, since, &mut |record| {
                if found.is_none() && pick(text, record, &[]).is_some_and(|t| t.contains(&marker)) {
                    found = pick(&poll.key, record, &[]);
                }
                Ok(())
            });
            match listed {
                Ok(()) => return Ok(found),
                Err(ListFailure::Again { after, why }) => self.wait(&mut backoff, after, &why)?,
                Err(failure) => {
                    let why = format!(
                        "{} refused the listing that looks for work order {id}: {failure}",
                        self.client.mapping.name
                    );
                    return Err(self.refused(why));
                }
            }
        }
    }

    /// The CMMS's reference to the record of work order `id`, if it has one.
    fn lookup(&self, id: &str) -> Result<Option<String>, Outcome> {
        let Some(lookup) = &self.client.mapping.lookup else { return Ok(None) };
        self.counters.lookups.fetch_add(1, Ordering::Relaxed);
        let context = json!({ "work_order_id": id, "values": self.values });
        let path = self.client.mapping.render(&lookup.path, &context);
        let mut backoff = Backoff::new(self.max_backoff);
        loop {
            match self.client.send("GET", &path, &[], None, false, None) {
                Answer::Done { headers, body } => {
                    let record = body.pointer(&lookup.record).filter(|r| !r.is_null());
                    return Ok(record.and_then(|r| pick(&lookup.reference, r, &headers)));
                }
                Answer::Again { after, why } => self.wait(&mut backoff, after, &why)?,
                Answer::Duplicate { status } | Answer::Refused { status, .. } if status == 404 => return Ok(None),
                Answer::Duplicate { status } | Answer::Refused { status, .. } => {
                    return Err(self
                        .refused(format!("{} refused the lookup of {id} (HTTP {status})", self.client.mapping.name)));
                }
            }
        }
    }

    fn send(&self, request: &Request, context: &Value) -> Answer {
        let mapping = &self.client.mapping;
        let path = mapping.render(&request.path, context);
        let with_secret = self.client.with_secret(context);
        let headers: Vec<(String, String)> =
            request.headers.iter().map(|(name, t)| (name.clone(), mapping.render(t, &with_secret))).collect();
        let body = request.body.as_ref().map(|b| mapping.render_body(b, context));
        let method = request.method.as_str();
        self.client.send(method, &path, &headers, body.as_ref(), true, request.duplicate_marker.as_deref())
    }

    /// Waits before the next try; `Err` when the bridge is stopping meanwhile.
    fn wait(&self, backoff: &mut Backoff, after: Option<Duration>, why: &str) -> Result<(), Outcome> {
        self.counters.retries.fetch_add(1, Ordering::Relaxed);
        backoff.tries += 1;
        let delay = after.unwrap_or_else(|| backoff.next());
        if backoff.tries % 10 == 1 {
            tracing::warn!(%why, retry_in_ms = delay.as_millis() as u64, "CMMS not answering; retrying");
        }
        let until = std::time::Instant::now() + delay;
        while std::time::Instant::now() < until {
            if self.stop.load(Ordering::Relaxed) {
                return Err(Outcome::Stopped);
            }
            std::thread::sleep((until - std::time::Instant::now()).min(Duration::from_millis(50)));
        }
        if self.stop.load(Ordering::Relaxed) { Err(Outcome::Stopped) } else { Ok(()) }
    }

    /// What templates see of a revision: its fields, and `work_order` (the whole
    /// revision), `idempotency_key`, `priority`, `title`, `description`, `detected_at`,
    /// `due_at`, `ref` and `values`.
    pub fn context(&self, order: &WorkOrder, raw: &Value, reference: Option<&str>) -> Value {
        let mut context = raw.clone();
        if let Some(fields) = context.as_object_mut() {
            let extra = json!({
                "work_order": raw,
                "idempotency_key": format!("{}:{}", order.work_order_id, order.revision),
                "priority": format!("{:?}", order.severity.priority),
                "title": title(order),
                "description": description(order),
                "detected_at": rfc3339(order.detected_at_ms),
                "due_at": order.due_at_ms.map(rfc3339),
                "ref": reference,
                "values": self.values,
            });
            if let Value::Object(extra) = extra {
                fields.extend(extra);
            }
        }
        context
    }
}

/// A one-line title: `Crack on Conveyor 101 head pulley`.
pub fn title(order: &WorkOrder) -> String {
    let class = order.defect_class.as_str();
    if class == "unknown" {
        return format!("Inspect unexplained change on {}", order.asset_name);
    }
    let mut chars = class.replace('_', " ").chars().collect::<Vec<_>>();
    if let Some(first) = chars.first_mut() {
        *first = first.to_ascii_uppercase();
    }
    format!("{} on {}", chars.into_iter().collect::<String>(), order.asset_name)
}

/// The long text: what, where, how bad, the procedure, the parts, the evidence.
pub fn description(order: &WorkOrder) -> String {
    let mut lines = vec![
        format!(
            "defectflow work order {} revision {} ({:?})",
            order.work_order_id, order.revision, order.revision_kind
        ),
        format!(
            "Defect: {} on {} ({}), severity {:.1} ({:?}), first seen {} by camera {}",
            order.defect_class.as_str(),
            order.asset_name,
            order.asset_id,
            order.severity.score,
            order.severity.priority,
            rfc3339(order.detected_at_ms),
            order.camera_id
        ),
    ];
    if let Some(p) = &order.procedure {
        lines.push(format!(
            "Procedure {}: {} ({}, {:.1} h)",
            p.procedure_id, p.title, p.required_skill, p.estimated_hours
        ));
        lines.extend(p.steps.iter().enumerate().map(|(i, s)| format!("  {}. {s}", i + 1)));
    }
    if !order.parts.is_empty() {
        let parts: Vec<String> = order
            .parts
            .iter()
            .map(|p| {
                format!("{} x{} ({})", p.part_id, p.quantity, if p.available { "in stock" } else { "not in stock" })
            })
            .collect();
        lines.push(format!("Parts: {}", parts.join(", ")));
    }
    if let Some(e) = &order.evidence {
        lines.push(format!("Evidence: {} (sha256 {})", e.uri, e.sha256));
    }
    lines.join("\n")
}

/// Exponential backoff with jitter: 250 ms doubling to the most allowed.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
    most: Duration,
    pub tries: u32,
}

impl Backoff {
    pub fn new(most: Duration) -> Backoff {
        Backoff { next: Duration::from_millis(250), most, tries: 0 }
    }

    pub fn next(&mut self) -> Duration {
        let this = self.next.min(self.most);
        self.next = (self.next * 2).min(self.most);
        // Up to a quarter less, so that many workers do not retry in step.
        let jitter = (crate::clock::now_ms() % 251) as f64 / 1000.0;
        this.mul_f64(1.0 - jitter)
    }
}
