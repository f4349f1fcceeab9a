//! Planning an open work order: its procedure, reservations and technician.

use super::*;

impl Ledger {
    /// Procedure, reservations and technician of an open work order.
    pub(super) fn plan(&mut self, time: EpochMillis, id: &str, out: &mut Vec<LedgerOutput>) {
        let Some(order) = self.orders.get(id) else { return };
        // Work on hold keeps its technician and parts until it resumes.
        if !order.is_open() || order.status == WorkOrderStatus::OnHold {
            return;
        }
        let procedure = self.dispatcher.procedure(&order.scored.asset.asset_class, order.scored.track.class).cloned();
        if procedure != order.procedure {
            self.set_procedure(id, procedure, out);
        }
        let Some(order) = self.orders.get(id) else { return };
        let Some(skill) = order.procedure.as_ref().map(|p| p.required_skill.clone()) else {
            if order.technician.is_some() {
                self.set_technician(id, None, "no_procedure", out);
            }
            return;
        };
        let keep = match &order.technician {
            Some(technician) if order.pinned => self.dispatcher.technician(technician).is_some(),
            Some(technician) => {
                order.status == WorkOrderStatus::InProgress || self.dispatcher.can_work(technician, &skill, time)
            }
            None => false,
        };
        if keep {
            return;
        }
        let reason = match &order.technician {
            Some(current) if self.dispatcher.technician(current).is_some() => "off_shift_reassignment",
            Some(_) => "technician_removed",
            None => "least_workload",
        };
        // This order's own hours leave its technician before workloads are compared.
        self.set_technician(id, None, reason, out);
        let zone = self.orders.get(id).map(|o| o.scored.asset.zone.clone()).unwrap_or_default();
        let chosen = self.dispatcher.choose(&skill, &zone, time).map(|t| t.technician_id.clone());
        let reason = if chosen.is_none() { "no_eligible_technician" } else { reason };
        self.set_technician(id, chosen, reason, out);
    }

    pub(super) fn set_technician(
        &mut self,
        id: &str,
        technician: Option<String>,
        reason: &str,
        out: &mut Vec<LedgerOutput>,
    ) {
        self.count_hours(id, -1, out);
        let Some(order) = self.orders.get_mut(id) else { return };
        order.pinned = matches!(reason, "manual" | "started");
        order.technician = technician;
        order.assign_reason = reason.to_owned();
        self.count_hours(id, 1, out);
    }

    /// Adds (`diff` 1) or takes away (−1) the work order's hours in its technician's open
    /// workload, with the assignment row of the workload view. An order without hours
    /// (none estimated, or on hold) has no row.
    pub(super) fn count_hours(&mut self, id: &str, diff: isize, out: &mut Vec<LedgerOutput>) {
        let Some(order) = self.orders.get(id) else { return };
        let hours = order.hours();
        if let Some(technician) = order.technician.clone().filter(|_| hours != 0) {
            self.dispatcher.add_workload(&technician, hours * diff as CentiHours);
            out.push(LedgerOutput::Workload(technician, id.to_owned(), hours, diff));
        }
    }

    pub(super) fn set_procedure(&mut self, id: &str, procedure: Option<Procedure>, out: &mut Vec<LedgerOutput>) {
        let technician = self.orders.get(id).and_then(|o| o.technician.clone());
        // Hours follow the procedure: move the technician's load with it.
        if technician.is_some() {
            self.set_technician(id, None, "procedure_changed", out);
        }
        let Some(order) = self.orders.get_mut(id) else { return };
        for part in order.procedure.iter().flat_map(|p| &p.parts) {
            self.stock.release(&part.part_id, order.opened_at, id);
            out.push(LedgerOutput::Reservation(part.part_id.clone(), id.to_owned(), i64::from(part.quantity), -1));
        }
        for part in procedure.iter().flat_map(|p| &p.parts) {
            self.stock.reserve(&part.part_id, order.opened_at, id, i64::from(part.quantity));
            out.push(LedgerOutput::Reservation(part.part_id.clone(), id.to_owned(), i64::from(part.quantity), 1));
        }
        order.procedure = procedure;
        if technician.is_some() {
            let reason = order.assign_reason.clone();
            self.set_technician(id, technician, &reason, out);
        }
    }
}
