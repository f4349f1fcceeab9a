//! Who is told: alert rules (by priority, defect class, asset criticality and zone)
//! that route a work order to the people on shift, by role or by name, and the
//! recipients they name. The ledger applies them as it publishes (`ledger::revision`)
//! and escalates a P1 nobody acknowledged; `defectflow notify` delivers the messages.

use defectflow_schemas::{DefectClass, EpochMillis, Priority, Shift};
use serde::{Deserialize, Serialize};

use crate::assign::PlantClock;

/// `[notify]` as the ledger uses it: the recipients, the rules, escalation and whether
/// technicians hear of their assignments.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Routing {
    pub recipients: Vec<Recipient>,
    pub rules: Vec<AlertRule>,
    /// Minutes after which a P1 still open (nobody acknowledged, started or held it)
    /// escalates to `escalate_to`; 0 (or nobody in `escalate_to`): never.
    pub escalate_after_minutes: f64,
    /// Roles or recipient ids an escalation goes to (those on shift, in the zone).
    pub escalate_to: Vec<String>,
    /// The assigned technician is told of each assignment (keyed by technician id).
    pub assignments: bool,
}

impl Default for Routing {
    fn default() -> Self {
        Routing {
            recipients: Vec::new(),
            rules: Vec::new(),
            escalate_after_minutes: 15.0,
            escalate_to: Vec::new(),
            assignments: true,
        }
    }
}

/// A person (or a group mailbox) alerts go to.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipient {
    pub id: String,
    #[serde(default)]
    pub name: String,
    /// `supervisor`, `manager`, `safety`, ...: rules name roles or ids.
    #[serde(default)]
    pub role: String,
    /// The zones they answer for; none: every zone.
    #[serde(default)]
    pub zones: Vec<String>,
    /// When they are on shift (plant local hours); none: always.
    #[serde(default)]
    pub shift: Option<Shift>,
    /// Where `defectflow notify` mails them.
    #[serde(default)]
    pub email: Option<String>,
    /// Where `defectflow notify` posts their alerts (else `[notify.webhook]`'s URL).
    #[serde(default)]
    pub webhook: Option<String>,
}

impl Recipient {
    /// Whether they answer for `zone` and are on shift at `hour` (plant local).
    fn reachable(&self, zone: &str, hour: u8) -> bool {
        let zoned = self.zones.is_empty() || self.zones.iter().any(|z| z == zone || z == "*");
        zoned && self.shift.is_none_or(|s| s.covers(hour))
    }
}

/// One alert rule: a work order matching every condition it sets is sent to `notify`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertRule {
    pub name: String,
    /// Priorities it applies to; none: every priority.
    #[serde(default)]
    pub priorities: Vec<Priority>,
    /// Defect classes it applies to; none: every class.
    #[serde(default)]
    pub classes: Vec<DefectClass>,
    /// Least asset criticality (1 to 5) it applies to; 0: any.
    #[serde(default)]
    pub min_criticality: u8,
    /// Asset zones it applies to; none: every zone.
    #[serde(default)]
    pub zones: Vec<String>,
    /// Roles or recipient ids told (those on shift who answer for the asset's zone).
    pub notify: Vec<String>,
}

/// What a rule looks at in a work order.
#[derive(Clone, Copy, Debug)]
pub struct AlertSubject<'a> {
    pub priority: Priority,
    pub class: DefectClass,
    pub criticality: u8,
    pub zone: &'a str,
}

impl<'a> AlertSubject<'a> {
    /// A work order at `priority`, of `class`, on `asset`.
    pub fn of(priority: Priority, class: DefectClass, asset: &'a defectflow_schemas::Asset) -> AlertSubject<'a> {
        AlertSubject { priority, class, criticality: asset.criticality, zone: &asset.zone }
    }
}

impl AlertRule {
    fn matches(&self, s: &AlertSubject<'_>) -> bool {
        (self.priorities.is_empty() || self.priorities.contains(&s.priority))
            && (self.classes.is_empty() || self.classes.contains(&s.class))
            && s.criticality >= self.min_criticality
            && (self.zones.is_empty() || self.zones.iter().any(|z| z == s.zone))
    }
}

/// Who one rule (or an escalation) reaches: the recipients, or none on shift.
#[derive(Clone, Debug, PartialEq)]
pub struct Reached<'a> {
    pub rule: &'a str,
    pub recipients: Vec<&'a Recipient>,
}

impl Routing {
    /// No rules, no escalation, no assignment messages: one unrouted alert per P1, as
    /// without a `[notify]` table.
    pub fn off() -> Routing {
        Routing { assignments: false, escalate_after_minutes: 0.0, ..Routing::default() }
    }

    /// Whether work orders are routed by rules (else a P1 raises one unrouted alert).
    pub fn routed(&self) -> bool {
        !self.rules.is_empty()
    }

    /// How long after its first P1 alert an open work order escalates (`None`: never).
    pub fn escalate_after_ms(&self) -> Option<EpochMillis> {
        (self.escalate_after_minutes > 0.0 && !self.escalate_to.is_empty())
            .then(|| (self.escalate_after_minutes * 60_000.0).round() as EpochMillis)
    }

    /// Every rule `subject` matches, in order, with whom it reaches at `at_ms`.
    pub fn route(&self, clock: PlantClock, at_ms: EpochMillis, subject: &AlertSubject<'_>) -> Vec<Reached<'_>> {
        let hour = clock.hour_of_day(at_ms);
        (self.rules.iter().filter(|r| r.matches(subject)))
            .map(|rule| Reached { rule: &rule.name, recipients: self.resolve(&rule.notify, subject.zone, hour) })
            .collect()
    }

    /// Whom an escalation about a work order in `zone` reaches at `at_ms`.
    pub fn escalation(&self, clock: PlantClock, at_ms: EpochMillis, zone: &str) -> Reached<'_> {
        Reached { rule: "escalation", recipients: self.resolve(&self.escalate_to, zone, clock.hour_of_day(at_ms)) }
    }

    /// The recipients `names` (roles or ids) stand for who answer for `zone` and are on
    /// shift at `hour`, each once, in the order of `recipients`.
    fn resolve(&self, names: &[String], zone: &str, hour: u8) -> Vec<&Recipient> {
        (self.recipients.iter())
            .filter(|r| names.iter().any(|n| *n == r.id || *n == r.role))
            .filter(|r| r.reachable(zone, hour))
            .collect()
    }

    /// The first thing wrong with the table, naming the field: a rule or an escalation
    /// naming nobody, a recipient listed twice, an hour out of range.
    pub fn check(&self) -> Result<(), (String, String)> {
        let fault = |field: String, message: String| Err((field, message));
        let mut ids = std::collections::BTreeSet::new();
        for (i, r) in self.recipients.iter().enumerate() {
            if r.id.is_empty() {
                return fault(format!("notify.recipients[{i}].id"), "empty".into());
            }
            if !ids.insert(r.id.as_str()) {
                return fault(format!("notify.recipients[{i}].id"), format!("`{}` is listed twice", r.id));
            }
            if let Some(url) = r.webhook.as_deref().filter(|u| !(u.starts_with("http://") || u.starts_with("https://")))
            {
                return fault(
                    format!("notify.recipients[{i}].webhook"),
                    format!("must be an http:// or https:// URL, got `{url}`"),
                );
            }
            if let Some(email) = r.email.as_deref().filter(|e| !e.contains('@') || e.contains(char::is_whitespace)) {
                return fault(format!("notify.recipients[{i}].email"), format!("`{email}` is not a mail address"));
            }
            if let Some(shift) = r.shift
                && (shift.start_hour > 23 || shift.end_hour > 24)
            {
                return fault(format!("notify.recipients[{i}].shift"), format!("hours are 0 to 24, got {shift:?}"));
            }
        }
        let known = |name: &String| self.recipients.iter().any(|r| r.id == *name || r.role == *name);
        let unknown = |name: &String| format!("`{name}` is neither a recipient id nor a role of notify.recipients");
        let mut names = std::collections::BTreeSet::new();
        for (i, rule) in self.rules.iter().enumerate() {
            if rule.name.is_empty() || rule.name == "escalation" {
                return fault(format!("notify.rules[{i}].name"), format!("`{}` is empty or reserved", rule.name));
            }
            if !names.insert(rule.name.as_str()) {
                return fault(format!("notify.rules[{i}].name"), format!("`{}` names two rules", rule.name));
            }
            if rule.notify.is_empty() {
                return fault(format!("notify.rules[{i}].notify"), format!("rule `{}` tells nobody", rule.name));
            }
            if let Some(name) = rule.notify.iter().find(|n| !known(n)) {
                return fault(format!("notify.rules[{i}].notify"), unknown(name));
            }
            if rule.min_criticality > 5 {
                return fault(
                    format!("notify.rules[{i}].min_criticality"),
                    format!("0 to 5, got {}", rule.min_criticality),
                );
            }
        }
        if let Some(name) = self.escalate_to.iter().find(|n| !known(n)) {
            return fault("notify.escalate_to".into(), unknown(name));
        }
        if !self.escalate_after_minutes.is_finite() || self.escalate_after_minutes < 0.0 {
            let minutes = self.escalate_after_minutes;
            return fault(
                "notify.escalate_after_minutes".into(),
                format!("a number of minutes, 0 or more, got {minutes}"),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routing() -> Routing {
        let supervisor = |id: &str, zone: &str, shift: Option<(u8, u8)>| {
            let shift =
                shift.map(|(start_hour, end_hour)| serde_json::json!({"start_hour": start_hour, "end_hour": end_hour}));
            serde_json::json!({"id": id, "role": "supervisor", "zones": [zone], "shift": shift})
        };
        serde_json::from_value(serde_json::json!({
            "escalate_to": ["manager"],
            "recipients": [
                supervisor("SUP-N-DAY", "north", Some((6, 18))),
                supervisor("SUP-N-NIGHT", "north", Some((18, 6))),
                supervisor("SUP-S", "south", None),
                {"id": "MGR", "role": "manager"},
            ],
            "rules": [
                {"name": "urgent", "priorities": ["P1"], "notify": ["supervisor"]},
                {"name": "critical-cracks", "classes": ["crack"], "min_criticality": 5, "notify": ["MGR"]},
            ],
        }))
        .expect("routing")
    }

    const NIGHT: EpochMillis = 1_790_000_000_000 - 1_790_000_000_000 % 86_400_000 + 2 * 3_600_000;

    /// A P1 crack on a criticality-5 asset in the north zone at 02:00 reaches the
    /// night supervisor of the north (by the first rule) and the manager (by the
    /// second); a P2 corrosion there matches no rule.
    #[test]
    fn rules_reach_the_people_on_shift_in_the_zone() {
        let routing = routing();
        routing.check().expect("a valid table");
        let crack = AlertSubject { priority: Priority::P1, class: DefectClass::Crack, criticality: 5, zone: "north" };
        let reached = routing.route(PlantClock::Offset(0), NIGHT, &crack);
        let ids: Vec<(&str, Vec<&str>)> =
            reached.iter().map(|r| (r.rule, r.recipients.iter().map(|p| p.id.as_str()).collect())).collect();
        assert_eq!(ids, [("urgent", vec!["SUP-N-NIGHT"]), ("critical-cracks", vec!["MGR"])]);
        // Ten hours east of UTC it is noon there: the day supervisor.
        let day = routing.route(PlantClock::Offset(10 * 60), NIGHT, &crack);
        assert_eq!(day[0].recipients[0].id, "SUP-N-DAY", "12:00 plant time is the day shift");
        let corrosion =
            AlertSubject { priority: Priority::P2, class: DefectClass::Corrosion, criticality: 5, zone: "north" };
        assert!(routing.route(PlantClock::Offset(0), NIGHT, &corrosion).is_empty());
        assert_eq!(routing.escalation(PlantClock::Offset(0), NIGHT, "south").recipients[0].id, "MGR");
        assert_eq!(routing.escalate_after_ms(), Some(15 * 60_000));
    }

    #[test]
    fn a_rule_naming_nobody_fails_naming_the_field() {
        let mut routing = routing();
        routing.rules[1].notify = vec!["plant-director".into()];
        let (field, message) = routing.check().expect_err("an unknown name");
        assert_eq!(field, "notify.rules[1].notify");
        assert!(message.starts_with("`plant-director` is neither"), "{message}");
        let mut routing = self::tests::routing();
        routing.recipients[1].id = "SUP-N-DAY".into();
        assert_eq!(routing.check().expect_err("a duplicate").0, "notify.recipients[1].id");
    }
}
