//! Publishing: a new revision when something that matters changed, with the
//! assignment, alert and staging messages that follow from it.

use super::*;

impl Ledger {
    /// Makes a new revision of the work order if anything that matters changed since the
    /// last one, with the assignment, alert and staging messages that go with it.
    pub(super) fn publish(&mut self, time: EpochMillis, id: &str, out: &mut Vec<LedgerOutput>) {
        let Some(order) = self.orders.get(id) else { return };
        let parts: Vec<PartLine> = order
            .procedure
            .iter()
            .flat_map(|p| &p.parts)
            .map(|part| PartLine {
                part_id: part.part_id.clone(),
                quantity: part.quantity,
                available: !order.is_open() || self.stock.covers(&part.part_id, order.opened_at, id),
            })
            .collect();
        let severity = order.scored.severity;
        let published = order.published.as_ref();
        let material = published.is_none_or(|last| self.changed(order, last, &parts));
        if !material {
            return;
        }
        let revision = published.map_or(1, |last| last.revision + 1);
        let revision_kind = match (published, order.is_open()) {
            (None, _) => RevisionKind::Created,
            (Some(_), true) => RevisionKind::Updated,
            (Some(_), false) => RevisionKind::Closed,
        };
        let technician_changed = published.is_none_or(|last| last.technician_id != order.technician);
        let newly_reserved = published.is_none_or(|last| last.procedure.is_none()) && order.procedure.is_some();
        let work_order = revision_of(&self.config, order, id, time, (revision, revision_kind), &parts);
        // The revision goes first; what follows from it comes after.
        let mut follow = Vec::new();
        if technician_changed && order.is_open() {
            follow.push(LedgerOutput::Assignment(Assignment {
                work_order_id: id.to_owned(),
                revision,
                technician_id: order.technician.clone(),
                estimated_hours: order.procedure.as_ref().map_or(0.0, |p| p.estimated_hours),
                assigned_at_ms: time,
                reason: order.assign_reason.clone(),
            }));
            if let Some(told) = order.technician.as_deref().and_then(|t| self.assigned(time, order, t)) {
                follow.push(LedgerOutput::Alert(told));
            }
        }
        let (alerts, told) = self.raised(time, order);
        let alerted = order.is_open() && severity.priority == Priority::P1;
        follow.extend(alerts.into_iter().map(LedgerOutput::Alert));
        self.stage(time, id, &parts, newly_reserved, &mut follow);
        if alerted {
            self.watch_escalation(time, id);
        }
        if let Some(order) = self.orders.get_mut(id) {
            order.alerted |= alerted;
            order.told.extend(told);
            order.revision_area = order.scored.track.area_px;
            order.published = Some(work_order.clone());
        }
        out.push(LedgerOutput::Revision(Box::new(work_order)));
        out.extend(follow);
    }

    /// Whether the order changed in a way its readers care about since `last`.
    fn changed(&self, order: &Order, last: &WorkOrder, parts: &[PartLine]) -> bool {
        let (track, severity) = (&order.scored.track, order.scored.severity);
        last.status != order.status
            || last.severity.priority != severity.priority
            || (last.severity.score / 10.0).floor() != (severity.score / 10.0).floor()
            || f64::from(track.area_px) >= f64::from(order.revision_area) * self.config.size_step
            || last.technician_id != order.technician
            || last.procedure.as_ref().map(|p| &p.procedure_id) != order.procedure.as_ref().map(|p| &p.procedure_id)
            || last.parts != parts
            || last.track_id != track.track_id
            || last.other_views.iter().map(|v| &v.track_id).ne(order.views.values().map(|v| &v.track_id))
    }

    /// Parts staged (or short) for a newly reserved procedure, and reorders of parts
    /// that fell to their reorder point.
    fn stage(
        &mut self,
        time: EpochMillis,
        id: &str,
        parts: &[PartLine],
        newly_reserved: bool,
        follow: &mut Vec<LedgerOutput>,
    ) {
        if newly_reserved {
            for line in parts {
                let level = self.stock.level(&line.part_id);
                follow.push(LedgerOutput::Staging(PartsStaging {
                    kind: if line.available { StagingKind::Stage } else { StagingKind::Shortage },
                    part_id: line.part_id.clone(),
                    work_order_id: Some(id.to_owned()),
                    quantity: i64::from(line.quantity),
                    available: level.available,
                    at_ms: time,
                }));
            }
        }
        for line in parts {
            let level = self.stock.level(&line.part_id);
            let below = level.available <= self.stock.reorder_point(&line.part_id);
            if below && self.below_reorder.insert(line.part_id.clone()) {
                follow.push(LedgerOutput::Staging(PartsStaging {
                    kind: StagingKind::Reorder,
                    part_id: line.part_id.clone(),
                    work_order_id: None,
                    quantity: self.stock.reorder_point(&line.part_id) - level.available + 1,
                    available: level.available,
                    at_ms: time,
                }));
            } else if !below {
                self.below_reorder.remove(&line.part_id);
            }
        }
    }
}

/// The work order's revision `number` as published at `time`.
fn revision_of(
    config: &WorkOrderConfig,
    order: &Order,
    id: &str,
    time: EpochMillis,
    (revision, revision_kind): (u32, RevisionKind),
    parts: &[PartLine],
) -> WorkOrder {
    let (scored, severity) = (&order.scored, order.scored.severity);
    let track = &scored.track;
    WorkOrder {
        schema_version: SCHEMA_VERSION.to_owned(),
        work_order_id: id.to_owned(),
        revision,
        revision_kind,
        status: order.status,
        hold_reason: order.hold_reason.clone(),
        work_type: config.work_types.of(track.class, severity.priority),
        due_at_ms: config.due_at(severity.priority, track.first_seen_ms),
        asset_id: track.asset_id.clone(),
        asset_name: scored.asset.name.clone(),
        camera_id: track.camera_id.clone(),
        track_id: track.track_id.clone(),
        defect_class: track.class,
        severity,
        procedure: order.procedure.as_ref().map(|p| ProcedureRef {
            procedure_id: p.procedure_id.clone(),
            title: p.title.clone(),
            required_skill: p.required_skill.clone(),
            estimated_hours: p.estimated_hours,
            steps: p.steps.clone(),
        }),
        parts: parts.to_vec(),
        technician_id: order.technician.clone(),
        evidence: track.evidence.clone(),
        other_views: order.views.values().cloned().collect(),
        detected_at_ms: track.first_seen_ms,
        revised_at_ms: time,
        reopens: order.reopens.clone(),
        model_version: track.model_version.clone(),
        shadow: track.shadow,
    }
}
