//! Alerts: who hears of a work order as it is published (`[notify]` rules, or one
//! unrouted alert per P1 without them), the technician told of an assignment, and a P1
//! nobody acknowledged escalated.

use defectflow_schemas::AlertKind;

use super::*;
use crate::notify::AlertSubject;

impl Ledger {
    /// The alerts publishing `order` at `time` raises, and the (rule, recipient) pairs
    /// they tell (`""`: nobody on shift), which are told once per work order.
    pub(super) fn raised(&self, time: EpochMillis, order: &Order) -> (Vec<Alert>, Vec<(String, String)>) {
        let routing = &self.config.notify;
        let (mut alerts, mut told) = (Vec::new(), Vec::new());
        if !order.is_open() {
            return (alerts, told);
        }
        let priority = order.scored.severity.priority;
        if !routing.routed() {
            if priority == Priority::P1 && !order.alerted {
                alerts.push(alert(time, order, AlertKind::Raised, None, None, summary(order)));
            }
            return (alerts, told);
        }
        let asset = &order.scored.asset;
        let subject = AlertSubject::of(priority, order.scored.track.class, asset);
        for reached in routing.route(self.config.clock(), time, &subject) {
            let rule = reached.rule.to_owned();
            if reached.recipients.is_empty() && !order.told.contains(&(rule.clone(), String::new())) {
                let message = format!("{}; nobody on shift for rule `{rule}`", summary(order));
                alerts.push(alert(time, order, AlertKind::Raised, None, Some(&rule), message));
                told.push((rule.clone(), String::new()));
            }
            for recipient in reached.recipients {
                let pair = (rule.clone(), recipient.id.clone());
                if !order.told.contains(&pair) && !told.contains(&pair) {
                    alerts.push(alert(
                        time,
                        order,
                        AlertKind::Raised,
                        Some(&recipient.id),
                        Some(&rule),
                        summary(order),
                    ));
                    told.push(pair);
                }
            }
        }
        (alerts, told)
    }

    /// The message telling `technician` of their assignment to `order`, where
    /// technicians are told.
    pub(super) fn assigned(&self, time: EpochMillis, order: &Order, technician: &str) -> Option<Alert> {
        if !self.config.notify.assignments {
            return None;
        }
        let procedure = order
            .procedure
            .as_ref()
            .map_or("no procedure".to_owned(), |p| format!("{} ({} h)", p.title, p.estimated_hours));
        let message = format!("{} assigned to you: {}; {procedure}", order.work_order_id, summary(order));
        Some(alert(time, order, AlertKind::Assigned, Some(technician), None, message))
    }

    /// Marks `id` published at P1 at `time`: it escalates if still open `escalate_after`
    /// later (once).
    pub(super) fn watch_escalation(&mut self, time: EpochMillis, id: &str) {
        let Some(after) = self.config.notify.escalate_after_ms() else { return };
        let Some(order) = self.orders.get_mut(id) else { return };
        if order.p1_since.is_none() && order.is_open() && order.scored.severity.priority == Priority::P1 {
            order.p1_since = Some(time);
            self.escalations.insert((time + after, id.to_owned()));
        }
    }

    /// Escalates every work order whose escalation is due at `time` and that is still
    /// open, unacknowledged and P1.
    pub(super) fn escalate(&mut self, time: EpochMillis, out: &mut Vec<LedgerOutput>) {
        while let Some(first) = self.escalations.first()
            && first.0 <= time
        {
            let Some((_, id)) = self.escalations.pop_first() else { break };
            let Some(order) = self.orders.get(&id) else { continue };
            if order.status != WorkOrderStatus::Open || order.scored.severity.priority != Priority::P1 {
                continue;
            }
            let waited = order.p1_since.map_or(0, |since| time.saturating_sub(since)) / 60_000;
            let message = format!("{}; not acknowledged after {waited} min", summary(order));
            let reached = self.config.notify.escalation(self.config.clock(), time, &order.scored.asset.zone);
            if reached.recipients.is_empty() {
                let message = format!("{message}; nobody on shift to escalate to");
                out.push(LedgerOutput::Alert(alert(
                    time,
                    order,
                    AlertKind::Escalated,
                    None,
                    Some(reached.rule),
                    message,
                )));
            }
            for recipient in reached.recipients {
                let escalation =
                    alert(time, order, AlertKind::Escalated, Some(&recipient.id), Some(reached.rule), message.clone());
                out.push(LedgerOutput::Alert(escalation));
            }
        }
    }

    /// When the next escalation is due, if one is pending: the derive operator steps
    /// the ledger at that time when its input has passed it.
    pub fn next_escalation(&self) -> Option<EpochMillis> {
        self.escalations.first().map(|(at, _)| *at)
    }
}

/// `P1 crack on Conveyor 101 head pulley (CV-101-PUL), severity 82.5`.
fn summary(order: &Order) -> String {
    let (scored, severity) = (&order.scored, order.scored.severity);
    format!(
        "{:?} {} on {} ({}), severity {:.1}",
        severity.priority, scored.track.class, scored.asset.name, scored.track.asset_id, severity.score
    )
}

fn alert(
    time: EpochMillis,
    order: &Order,
    kind: AlertKind,
    recipient: Option<&str>,
    rule: Option<&str>,
    message: String,
) -> Alert {
    Alert {
        work_order_id: order.work_order_id.clone(),
        asset_id: order.scored.track.asset_id.clone(),
        priority: order.scored.severity.priority,
        severity_score: order.scored.severity.score,
        at_ms: time,
        message,
        kind,
        recipient_id: recipient.map(str::to_owned),
        rule: rule.map(str::to_owned),
    }
}
