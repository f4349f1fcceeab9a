//! One alert to one recipient over one channel: a webhook request or a mail handed to
//! the SMTP server, and what the answer means (done, try again, refused for good).

use std::sync::Arc;
use std::time::Duration;

use defectflow_operators::notify::Recipient;
use defectflow_schemas::Alert;
use lettre::message::header::ContentType;
use lettre::transport::smtp::authentication::Credentials as SmtpCredentials;
use lettre::{Message, SmtpTransport, Transport};
use serde_json::json;

use super::config::{Credentials, NotifierConfig};
use crate::clock::rfc3339;

/// How one try went.
#[derive(Debug)]
pub enum Tried {
    Done,
    /// Worth trying again: no answer, 408, 429, 5xx; an SMTP 4xx.
    Again(String),
    /// Refused for good: any other 4xx; an SMTP 5xx or an address it cannot take.
    Refused(String),
}

/// Where an alert goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Channel {
    Webhook(String),
    Email(String),
}

impl Channel {
    /// `webhook` or `email`, for the journal and the logs.
    pub fn name(&self) -> &'static str {
        match self {
            Channel::Webhook(_) => "webhook",
            Channel::Email(_) => "email",
        }
    }
}

/// The webhook client and the mail transport.
pub struct Deliverer {
    agent: ureq::Agent,
    bearer: Option<String>,
    mailer: Option<(SmtpTransport, lettre::message::Mailbox)>,
    default_webhook: Option<String>,
}

impl std::fmt::Debug for Deliverer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deliverer")
            .field("webhook", &self.default_webhook)
            .field("smtp", &self.mailer.is_some())
            .finish()
    }
}

impl Deliverer {
    pub fn new(config: &NotifierConfig, credentials: Credentials) -> anyhow::Result<Deliverer> {
        let timeout = Duration::from_secs_f64(config.timeout_s);
        let tls = native_tls::TlsConnector::new()?;
        let agent = ureq::AgentBuilder::new().timeout(timeout).tls_connector(Arc::new(tls)).build();
        let mailer = match &config.smtp {
            None => None,
            Some(smtp) => {
                let builder = match smtp.tls.as_str() {
                    "tls" => SmtpTransport::relay(&smtp.host)?,
                    "starttls" => SmtpTransport::starttls_relay(&smtp.host)?,
                    _ => SmtpTransport::builder_dangerous(&smtp.host),
                };
                let mut builder = builder.port(smtp.port).timeout(Some(timeout));
                if let Some((user, password)) = credentials.smtp {
                    builder = builder.credentials(SmtpCredentials::new(user, password));
                }
                let from = smtp.from.parse().map_err(|e| anyhow::anyhow!("notifier.smtp.from: {e}"))?;
                Some((builder.build(), from))
            }
        };
        Ok(Deliverer {
            agent,
            bearer: credentials.bearer,
            mailer,
            default_webhook: config.webhook.as_ref().map(|w| w.url.clone()),
        })
    }

    /// The channels `recipient` is reached on: their webhook (else the default one) and,
    /// with an SMTP server, their mail address.
    pub fn channels(&self, recipient: &Recipient) -> Vec<Channel> {
        let mut channels = Vec::new();
        if let Some(url) = recipient.webhook.clone().or_else(|| self.default_webhook.clone()) {
            channels.push(Channel::Webhook(url));
        }
        if let (Some(address), Some(_)) = (&recipient.email, &self.mailer) {
            channels.push(Channel::Email(address.clone()));
        }
        channels
    }

    /// One try of `alert` (`id`: its idempotency key) to `recipient` over `channel`.
    pub fn try_once(&self, id: &str, alert: &Alert, recipient: &Recipient, channel: &Channel) -> Tried {
        match channel {
            Channel::Webhook(url) => self.post(url, id, alert, recipient),
            Channel::Email(address) => self.mail(address, id, alert, recipient),
        }
    }

    /// POSTs `{id, recipient, alert}` with an `Idempotency-Key` header.
    fn post(&self, url: &str, id: &str, alert: &Alert, recipient: &Recipient) -> Tried {
        let body = json!({
            "id": format!("{id}>{}", recipient.id),
            "recipient": {"id": recipient.id, "name": recipient.name, "role": recipient.role},
            "alert": alert,
        });
        let mut request = self
            .agent
            .post(url)
            .set("Content-Type", "application/json")
            .set("Idempotency-Key", &format!("{id}>{}", recipient.id));
        if let Some(token) = &self.bearer {
            request = request.set("Authorization", &format!("Bearer {token}"));
        }
        match request.send_string(&body.to_string()) {
            Ok(_) => Tried::Done,
            Err(ureq::Error::Status(status, response)) => {
                let why = format!("{url} answered {status}: {}", response.into_string().unwrap_or_default().trim());
                if status == 408 || status == 429 || status >= 500 { Tried::Again(why) } else { Tried::Refused(why) }
            }
            Err(error) => Tried::Again(format!("{url}: {error}")),
        }
    }

    /// Mails the alert as plain text; its Message-ID follows from its id, so a mail
    /// sent again after a crash is recognised as the same by the mail system.
    fn mail(&self, address: &str, id: &str, alert: &Alert, recipient: &Recipient) -> Tried {
        let Some((mailer, from)) = &self.mailer else { return Tried::Refused("no SMTP server configured".into()) };
        let to = match address.parse::<lettre::message::Mailbox>() {
            Ok(to) => to,
            Err(e) => return Tried::Refused(format!("`{address}` is not a mail address: {e}")),
        };
        let hash = defectflow_operators::ids::stable_hash(&[id.as_bytes(), recipient.id.as_bytes()]);
        let message = Message::builder()
            .from(from.clone())
            .to(to)
            .message_id(Some(format!("<{hash:016x}.{}@defectflow>", alert.work_order_id)))
            .subject(subject(alert))
            .header(ContentType::TEXT_PLAIN)
            .body(body(alert, recipient));
        let message = match message {
            Ok(message) => message,
            Err(e) => return Tried::Refused(format!("cannot build the mail: {e}")),
        };
        match mailer.send(&message) {
            Ok(_) => Tried::Done,
            Err(e) if e.is_permanent() => Tried::Refused(format!("the SMTP server refused the mail: {e}")),
            Err(e) => Tried::Again(format!("SMTP: {e}")),
        }
    }
}

/// `[defectflow] ESCALATED P1 WO-…: crack on Conveyor 101 head pulley (CV-101-PUL)`.
pub fn subject(alert: &Alert) -> String {
    let kind = match alert.kind {
        defectflow_schemas::AlertKind::Raised => "",
        defectflow_schemas::AlertKind::Escalated => "ESCALATED ",
        defectflow_schemas::AlertKind::Assigned => "assigned: ",
    };
    format!("[defectflow] {kind}{:?} {}: {}", alert.priority, alert.work_order_id, alert.message)
}

fn body(alert: &Alert, recipient: &Recipient) -> String {
    let why = match (alert.kind, &alert.rule) {
        (defectflow_schemas::AlertKind::Assigned, _) => "the work order is assigned to you".to_owned(),
        (defectflow_schemas::AlertKind::Escalated, _) => "nobody acknowledged this P1 in time".to_owned(),
        (_, Some(rule)) => format!("alert rule `{rule}`"),
        (_, None) => "a P1 work order".to_owned(),
    };
    format!(
        "{}\n\nWork order: {}\nAsset: {}\nPriority: {:?} (severity {:.1})\nAt: {}\nWhy you: {why}\nTo: {} ({})\n",
        alert.message,
        alert.work_order_id,
        alert.asset_id,
        alert.priority,
        alert.severity_score,
        rfc3339(alert.at_ms),
        recipient.name,
        recipient.id,
    )
}
