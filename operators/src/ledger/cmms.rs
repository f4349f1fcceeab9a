//! CMMS status events: acknowledge, start, reassign, hold and resume, complete, false
//! positive (which suppresses its spot for a while), cancel, lift a suppression.

use super::*;

impl Ledger {
    pub(super) fn apply_event(
        &mut self,
        time: EpochMillis,
        event: WoEvent,
        touched: &mut BTreeSet<String>,
        out: &mut Vec<LedgerOutput>,
    ) {
        let reject = |reason: String, out: &mut Vec<LedgerOutput>| {
            out.push(LedgerOutput::DeadLetter(DeadLetter {
                source: "wo-events".into(),
                payload: serde_json::to_string(&event).unwrap_or_default(),
                reason,
                at_ms: time,
            }));
        };
        for (field, hours) in [("actual_hours", event.actual_hours), ("downtime_hours", event.downtime_hours)] {
            if let Some(hours) = hours.filter(|h| !(*h >= 0.0 && h.is_finite())) {
                return reject(format!("{field} must be a number of hours, 0 or more, got {hours}"), out);
            }
        }
        if event.event == WoEventKind::SuppressionLifted {
            let before = self.suppressions.len();
            self.suppressions.retain(|s| s.work_order_id != event.work_order_id);
            if self.suppressions.len() == before {
                let id = &event.work_order_id;
                return reject(
                    format!("work order `{id}` suppresses nothing (not a false positive, or expired or lifted)"),
                    out,
                );
            }
            out.push(LedgerOutput::Accepted(event));
            return;
        }
        let Some(order) = self.orders.get_mut(&event.work_order_id) else {
            return reject(format!("unknown work order `{}`", event.work_order_id), out);
        };
        if !order.is_open() {
            let status = order.status.as_str();
            return reject(format!("work order `{}` is already closed ({status})", event.work_order_id), out);
        }
        let technician_known =
            |id: &Option<String>| id.as_deref().is_some_and(|id| self.dispatcher.technician(id).is_some());
        match event.event {
            WoEventKind::Acknowledged if order.status == WorkOrderStatus::Open => {
                order.status = WorkOrderStatus::Acknowledged
            }
            WoEventKind::Acknowledged => {
                let status = order.status.as_str();
                return reject(format!("work order `{}` is already {status}", event.work_order_id), out);
            }
            WoEventKind::OnHold if order.status == WorkOrderStatus::OnHold => {
                return reject(format!("work order `{}` is already on_hold", event.work_order_id), out);
            }
            WoEventKind::OnHold => {
                // Parts stay reserved; the hours leave the technician's open workload.
                let reason = event.reason.clone().or_else(|| event.note.clone());
                self.hold(&event.work_order_id, reason, out);
            }
            WoEventKind::Resumed if order.status != WorkOrderStatus::OnHold => {
                let status = order.status.as_str();
                return reject(format!("work order `{}` is not on hold ({status})", event.work_order_id), out);
            }
            WoEventKind::Resumed => self.resume(&event.work_order_id, None, out),
            WoEventKind::Started => {
                let known = technician_known(&event.technician_id);
                self.resume(&event.work_order_id, Some(WorkOrderStatus::InProgress), out);
                if known {
                    self.set_technician(&event.work_order_id, event.technician_id.clone(), "started", out);
                }
            }
            WoEventKind::Reassigned if technician_known(&event.technician_id) => {
                self.set_technician(&event.work_order_id, event.technician_id.clone(), "manual", out);
            }
            WoEventKind::Reassigned => {
                return reject(format!("`reassigned` needs a known technician_id, got {:?}", event.technician_id), out);
            }
            WoEventKind::Completed | WoEventKind::FalsePositive | WoEventKind::Cancelled => {
                self.close(time, &event, out);
            }
            // Handled above: an open work order suppresses nothing.
            WoEventKind::SuppressionLifted => return,
        }
        touched.insert(event.work_order_id.clone());
        out.push(LedgerOutput::Accepted(event));
    }

    /// Puts an open work order on hold: its hours leave its technician's workload.
    fn hold(&mut self, id: &str, reason: Option<String>, out: &mut Vec<LedgerOutput>) {
        self.count_hours(id, -1, out);
        let Some(order) = self.orders.get_mut(id) else { return };
        order.resume_to = order.status;
        order.status = WorkOrderStatus::OnHold;
        order.hold_reason = Some(reason.unwrap_or_else(|| "unspecified".to_owned()));
    }

    /// Takes a work order off hold (to `to`, or the status it was held from) and
    /// counts its hours again; sets `to` on one that is not on hold.
    fn resume(&mut self, id: &str, to: Option<WorkOrderStatus>, out: &mut Vec<LedgerOutput>) {
        let Some(order) = self.orders.get_mut(id) else { return };
        if order.status != WorkOrderStatus::OnHold {
            order.status = to.unwrap_or(order.status);
            return;
        }
        order.status = to.unwrap_or(order.resume_to);
        order.hold_reason = None;
        self.count_hours(id, 1, out);
    }

    /// Closes a work order as `event` says (completed, false positive or cancelled).
    pub(super) fn close(&mut self, time: EpochMillis, event: &WoEvent, out: &mut Vec<LedgerOutput>) {
        let (id, kind) = (event.work_order_id.as_str(), event.event);
        // The closed revision still names its technician and procedure; only the hours
        // and the reservations are released.
        self.count_hours(id, -1, out);
        let Some(order) = self.orders.get_mut(id) else { return };
        for part in order.procedure.iter().flat_map(|p| &p.parts) {
            self.stock.release(&part.part_id, order.opened_at, id);
            out.push(LedgerOutput::Reservation(part.part_id.clone(), id.to_owned(), i64::from(part.quantity), -1));
        }
        order.hold_reason = None;
        let track = &order.scored.track;
        if kind == WoEventKind::Completed {
            order.status = WorkOrderStatus::Completed;
            order.completed_at = Some(time);
            // A repair: its asset's next scores count it as a failure (see `with_repairs`),
            // and the failure is recorded with the hours the CMMS reported.
            if record_repair(&mut self.repairs, &self.config, &order.scored, track.first_seen_ms) {
                out.push(LedgerOutput::Failure(FailureRecord {
                    asset_id: track.asset_id.clone(),
                    failed_at_ms: track.first_seen_ms,
                    defect_class: Some(track.class),
                    downtime_hours: event.downtime_hours.unwrap_or(0.0),
                    actual_hours: event.actual_hours,
                    work_order_id: Some(id.to_owned()),
                    repaired_at_ms: Some(time),
                }));
            }
            self.last_completed.insert((track.asset_id.clone(), track.class), id.to_owned());
            for part in order.procedure.iter().flat_map(|p| &p.parts) {
                let movement = StockMovement {
                    part_id: part.part_id.clone(),
                    delta: -i64::from(part.quantity),
                    at_ms: time,
                    reason: format!("consumed:{id}"),
                };
                self.stock.add_on_hand(&part.part_id, movement.delta);
                out.push(LedgerOutput::Consumed(movement));
            }
        } else {
            // A false positive or a cancelled work order: the same defect does not open
            // another while its track lasts.
            order.status = if kind == WoEventKind::Cancelled {
                WorkOrderStatus::Cancelled
            } else {
                WorkOrderStatus::FalsePositive
            };
            self.tracks.entry(track.track_id.clone()).or_default().suppressed = true;
            if kind == WoEventKind::FalsePositive
                && let Some(order) = self.orders.remove(id)
            {
                self.suppress(&order, time);
                self.orders.insert(id.to_owned(), order);
            }
        }
    }
}
