//! The CMMS's REST API over HTTP: one request, and what its answer means to the bridge
//! (done, a duplicate, try again later, refused for good).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use super::mapping::{Mapping, Poll, TokenFetch, percent_encode, pick};
use crate::clock::rfc3339;

/// How the CMMS answered.
#[derive(Debug)]
pub enum Answer {
    /// 2xx.
    Done { headers: Vec<(String, String)>, body: Value },
    /// The record exists already (409, 412, or what the mapping calls a duplicate).
    Duplicate { status: u16 },
    /// Worth trying again: 429 (with its `Retry-After`), 408, 5xx, 401/403 (a credential
    /// being rotated), or no answer at all (down, refused, timed out).
    Again { after: Option<Duration>, why: String },
    /// Any other 4xx: the request itself is wrong, and will be every time.
    Refused { status: u16, body: String },
}

/// The client of one CMMS: base URL, credential, connection pool.
pub struct Client {
    pub mapping: Mapping,
    base: String,
    agent: ureq::Agent,
    secret: Option<String>,
    /// The fetched token and the session cookies it belongs to.
    token: Mutex<Option<(String, String)>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("mapping", &self.mapping.name).field("base", &self.base).finish()
    }
}

/// How far back of the time it asks for a listing reaches: one poll overlaps the one
/// before, and a search for a create reaches before it, by this much (clocks apart).
pub const LISTING_OVERLAP_MS: u64 = 5_000;

/// Why a listing stopped.
#[derive(Debug)]
pub enum ListFailure {
    /// The CMMS did not answer, or asked to wait (`after`, from its `Retry-After`).
    Again { after: Option<Duration>, why: String },
    /// The CMMS refused the listing.
    Refused(String),
    /// The visitor failed on a record.
    Visit(String),
}

impl std::fmt::Display for ListFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListFailure::Again { why, .. } => f.write_str(why),
            ListFailure::Refused(why) | ListFailure::Visit(why) => f.write_str(why),
        }
    }
}

/// Pages one listing may run to.
const MAX_PAGES: usize = 1000;

impl Client {
    /// Visits every record the CMMS lists as changed since `since_ms`, page by page.
    pub fn listed(
        &self,
        poll: &Poll,
        values: &Value,
        since_ms: u64,
        visit: &mut dyn FnMut(&Value) -> Result<(), String>,
    ) -> Result<(), ListFailure> {
        let since = match poll.since_format.as_str() {
            "epoch_ms" => since_ms.to_string(),
            _ => rfc3339(since_ms),
        };
        let mut path = self.mapping.render(&poll.path, &serde_json::json!({ "since": since, "values": values }));
        for _page in 0..MAX_PAGES {
            let body = match self.send("GET", &path, &[], None, false, None) {
                Answer::Done { body, .. } => body,
                Answer::Again { after, why } => return Err(ListFailure::Again { after, why }),
                Answer::Duplicate { status } => return Err(ListFailure::Refused(format!("HTTP {status}"))),
                Answer::Refused { status, body } => return Err(ListFailure::Refused(format!("HTTP {status}: {body}"))),
            };
            let records = body.pointer(&poll.records).and_then(Value::as_array).cloned().unwrap_or_default();
            for record in &records {
                visit(record).map_err(ListFailure::Visit)?;
            }
            let next = poll.next.as_deref().and_then(|p| pick(p, &body, &[]));
            match (next, &poll.next_param) {
                (Some(url), _) if url.starts_with("http") => path = url,
                (Some(cursor), Some(param)) if !records.is_empty() => {
                    let base = path.split(&format!("&{param}=")).next().unwrap_or(&path).to_owned();
                    path = format!("{base}&{param}={}", percent_encode(&cursor));
                }
                _ => return Ok(()),
            }
        }
        // A cursor that never ends, or a backlog past any poll's reach: said, not cut short
        // in silence (the changes after the last page would otherwise never be read).
        Err(ListFailure::Refused(format!("the listing ran past {MAX_PAGES} pages (the next was {path})")))
    }

    pub fn new(
        mapping: Mapping,
        base: &str,
        secret: Option<String>,
        timeout: Duration,
        connections: usize,
    ) -> anyhow::Result<Client> {
        let tls = native_tls::TlsConnector::new()?;
        let agent = ureq::AgentBuilder::new()
            .timeout(timeout)
            .max_idle_connections(connections)
            .max_idle_connections_per_host(connections)
            .tls_connector(Arc::new(tls))
            .build();
        let base = base.trim_end_matches('/').to_owned();
        Ok(Client { mapping, base, agent, secret, token: Mutex::new(None) })
    }

    /// The secret, for header templates (never in bodies or logs).
    pub fn with_secret(&self, context: &Value) -> Value {
        let mut context = context.clone();
        if let (Some(secret), Some(fields)) = (&self.secret, context.as_object_mut()) {
            fields.insert("secret".into(), secret.clone().into());
        }
        context
    }

    /// A path template rendered against the base URL (an absolute reference as it is).
    pub fn url(&self, path: &str) -> String {
        if path.starts_with("http://") || path.starts_with("https://") {
            path.to_owned()
        } else {
            format!("{}{path}", self.base)
        }
    }

    /// Sends one request; `write` requests carry the fetched token where the CMMS wants one.
    pub fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(String, String)],
        body: Option<&Value>,
        write: bool,
        duplicate_marker: Option<&str>,
    ) -> Answer {
        let context = self.with_secret(&Value::Object(Default::default()));
        let mut request = self.agent.request(method, &self.url(path));
        for (name, template) in &self.mapping.headers {
            // No credential configured: the header that carries it is left out.
            if self.secret.is_none() && template.contains("{secret") {
                continue;
            }
            request = request.set(name, &self.mapping.render(template, &context));
        }
        for (name, value) in headers {
            request = request.set(name, value);
        }
        if write && let Some(fetch) = &self.mapping.token {
            match self.token(fetch) {
                Ok((token, cookies)) => {
                    request = request.set(&fetch.header, &token);
                    if !cookies.is_empty() {
                        request = request.set("Cookie", &cookies);
                    }
                }
                Err(answer) => return answer,
            }
        }
        let result = match body {
            Some(body) => request.set("Content-Type", "application/json").send_string(&body.to_string()),
            None => request.call(),
        };
        match result {
            Ok(response) => {
                let headers = response
                    .headers_names()
                    .into_iter()
                    .filter_map(|name| response.header(&name).map(|v| (name.clone(), v.to_owned())))
                    .collect();
                let text = response.into_string().unwrap_or_default();
                let body = serde_json::from_str(&text).unwrap_or(Value::Null);
                Answer::Done { headers, body }
            }
            Err(ureq::Error::Status(status, response)) => {
                let after = response.header("Retry-After").and_then(retry_after);
                let token_required =
                    response.header(self.mapping.token.as_ref().map_or("", |t| t.header.as_str())).is_some();
                let text: String = response.into_string().unwrap_or_default().chars().take(1024).collect();
                if status == 403 && token_required {
                    // The token expired with its session: fetch a new one next time.
                    if let Ok(mut token) = self.token.lock() {
                        *token = None;
                    }
                    return Answer::Again { after: Some(Duration::ZERO), why: "the CMMS wants a new token".into() };
                }
                if status == 409 && self.mapping.conflict_means_again {
                    return Answer::Again { after, why: "HTTP 409: the CMMS is still processing it".into() };
                }
                classify(status, after, text, duplicate_marker)
            }
            Err(error) => Answer::Again { after: None, why: error.to_string() },
        }
    }

    /// The token and its session's cookies, fetched once and kept until refused.
    fn token(&self, fetch: &TokenFetch) -> Result<(String, String), Answer> {
        if let Ok(token) = self.token.lock()
            && let Some(known) = token.as_ref()
        {
            return Ok(known.clone());
        }
        let context = self.with_secret(&Value::Object(Default::default()));
        let mut request = self.agent.get(&self.url(&fetch.path));
        for (name, template) in self.mapping.headers.iter().chain(&fetch.headers) {
            request = request.set(name, &self.mapping.render(template, &context));
        }
        let response = match request.call() {
            Ok(response) => response,
            Err(ureq::Error::Status(status, response)) => {
                let after = response.header("Retry-After").and_then(retry_after);
                let text = response.into_string().unwrap_or_default();
                return Err(classify(status, after, text, None));
            }
            Err(error) => return Err(Answer::Again { after: None, why: error.to_string() }),
        };
        let Some(token) = response.header(&fetch.header).map(str::to_owned) else {
            return Err(Answer::Refused { status: response.status(), body: format!("no `{}` header", fetch.header) });
        };
        let cookies: Vec<String> = response
            .all("Set-Cookie")
            .into_iter()
            .filter_map(|c| c.split(';').next())
            .map(|c| c.trim().to_owned())
            .collect();
        let known = (token, cookies.join("; "));
        if let Ok(mut slot) = self.token.lock() {
            *slot = Some(known.clone());
        }
        Ok(known)
    }
}

/// What a non-2xx status means.
fn classify(status: u16, after: Option<Duration>, body: String, duplicate_marker: Option<&str>) -> Answer {
    let duplicate = matches!(status, 409 | 412) || duplicate_marker.is_some_and(|m| body.contains(m));
    match status {
        _ if duplicate => Answer::Duplicate { status },
        429 | 408 | 500..=599 => Answer::Again { after, why: format!("HTTP {status}: {body}") },
        401 | 403 => Answer::Again { after, why: format!("HTTP {status} (is the credential right?): {body}") },
        _ => Answer::Refused { status, body },
    }
}

/// `Retry-After`: seconds, or an HTTP date.
fn retry_after(value: &str) -> Option<Duration> {
    if let Ok(seconds) = value.trim().parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value.trim()).ok()?;
    let wait_ms = at.timestamp_millis() - crate::clock::now_ms() as i64;
    Some(Duration::from_millis(wait_ms.max(0) as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_classified() {
        assert!(matches!(classify(409, None, String::new(), None), Answer::Duplicate { status: 409 }));
        assert!(matches!(classify(412, None, String::new(), None), Answer::Duplicate { .. }));
        let marked = classify(400, None, "BMXAA4129E not unique".into(), Some("BMXAA4129E"));
        assert!(matches!(marked, Answer::Duplicate { status: 400 }));
        assert!(matches!(classify(400, None, "bad".into(), None), Answer::Refused { status: 400, .. }));
        assert!(matches!(classify(503, None, String::new(), None), Answer::Again { .. }));
        let limited = classify(429, Some(Duration::from_secs(2)), String::new(), None);
        assert!(matches!(limited, Answer::Again { after: Some(d), .. } if d == Duration::from_secs(2)));
    }

    #[test]
    fn retry_after_in_seconds_or_as_a_date() {
        assert_eq!(retry_after("7"), Some(Duration::from_secs(7)));
        assert_eq!(retry_after("Sun, 06 Nov 1994 08:49:37 GMT"), Some(Duration::ZERO));
        assert_eq!(retry_after("soon"), None);
    }
}
