//! The maintenance KPIs live, for Prometheus: the latest revision of every open work
//! order as it left defectflow (a restart takes up the open ones), and how closed ones
//! ended. Backlog and overdue by priority, open hours per technician, work orders short
//! of a part, and outcomes by defect class (whose false-positive ratio is a gauge).
//! The same definitions as `defectflow report` and the notebooks, over the run's life.

use std::collections::{BTreeMap, HashMap};

use defectflow_schemas::{Priority, WorkOrder, WorkOrderStatus};

/// What the board keeps of an open work order.
#[derive(Debug)]
struct Open {
    priority: Priority,
    due_at_ms: Option<u64>,
    technician_id: Option<String>,
    hours: f64,
    on_hold: bool,
    short_parts: Vec<String>,
}

/// See the module documentation.
#[derive(Debug, Default)]
pub struct Board {
    open: HashMap<String, Open>,
    /// (defect class, how it closed) → work orders.
    closed: BTreeMap<(String, String), u64>,
}

const PRIORITIES: [Priority; 4] = [Priority::P1, Priority::P2, Priority::P3, Priority::P4];

impl Board {
    /// Takes in a revision that left defectflow (or an open one a restart took up).
    pub fn revise(&mut self, w: &WorkOrder) {
        if w.status.is_closed() {
            if self.open.remove(&w.work_order_id).is_some() || w.revision > 1 {
                let key = (w.defect_class.as_str().to_owned(), w.status.as_str().to_owned());
                *self.closed.entry(key).or_insert(0) += 1;
            }
            return;
        }
        let open = Open {
            priority: w.severity.priority,
            due_at_ms: w.due_at_ms,
            technician_id: w.technician_id.clone(),
            hours: w.procedure.as_ref().map_or(0.0, |p| p.estimated_hours),
            on_hold: w.status == WorkOrderStatus::OnHold,
            short_parts: w.parts.iter().filter(|p| !p.available).map(|p| p.part_id.clone()).collect(),
        };
        self.open.insert(w.work_order_id.clone(), open);
    }

    pub fn open_count(&self) -> usize {
        self.open.len()
    }

    /// The Prometheus exposition at `now_ms`.
    pub fn render(&self, now_ms: u64, out: &mut String) {
        let header = |out: &mut String, name: &str, help: &str, kind: &str| {
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
        };
        header(out, "defectflow_backlog_work_orders", "Open work orders (on hold included) by priority.", "gauge");
        for priority in PRIORITIES {
            let n = self.open.values().filter(|o| o.priority == priority).count();
            out.push_str(&format!("defectflow_backlog_work_orders{{priority=\"{priority:?}\"}} {n}\n"));
        }
        header(out, "defectflow_overdue_work_orders", "Open work orders past their due time, by priority.", "gauge");
        for priority in PRIORITIES {
            let n = self
                .open
                .values()
                .filter(|o| o.priority == priority && o.due_at_ms.is_some_and(|d| d < now_ms))
                .count();
            out.push_str(&format!("defectflow_overdue_work_orders{{priority=\"{priority:?}\"}} {n}\n"));
        }
        header(out, "defectflow_work_orders_on_hold", "Open work orders on hold.", "gauge");
        out.push_str(&format!("defectflow_work_orders_on_hold {}\n", self.open.values().filter(|o| o.on_hold).count()));
        header(out, "defectflow_work_orders_unassigned", "Open work orders with nobody eligible on shift.", "gauge");
        let unassigned = self.open.values().filter(|o| o.technician_id.is_none()).count();
        out.push_str(&format!("defectflow_work_orders_unassigned {unassigned}\n"));
        header(
            out,
            "defectflow_technician_open_hours",
            "Estimated hours of a technician's open work orders (not on hold).",
            "gauge",
        );
        let mut hours: BTreeMap<&str, f64> = BTreeMap::new();
        for o in self.open.values().filter(|o| !o.on_hold) {
            if let Some(t) = &o.technician_id {
                *hours.entry(t).or_default() += o.hours;
            }
        }
        for (technician, h) in hours {
            out.push_str(&format!("defectflow_technician_open_hours{{technician=\"{technician}\"}} {h}\n"));
        }
        header(
            out,
            "defectflow_parts_short_work_orders",
            "Open work orders that stock does not cover, by part.",
            "gauge",
        );
        let mut short: BTreeMap<&str, u64> = BTreeMap::new();
        for part in self.open.values().flat_map(|o| &o.short_parts) {
            *short.entry(part).or_default() += 1;
        }
        for (part, n) in short {
            out.push_str(&format!("defectflow_parts_short_work_orders{{part=\"{part}\"}} {n}\n"));
        }
        header(
            out,
            "defectflow_work_orders_closed_total",
            "Work orders closed, by defect class and how (completed, false_positive, cancelled).",
            "counter",
        );
        for ((class, status), n) in &self.closed {
            out.push_str(&format!(
                "defectflow_work_orders_closed_total{{class=\"{class}\",status=\"{status}\"}} {n}\n"
            ));
        }
        header(
            out,
            "defectflow_false_positive_ratio",
            "Of the work orders of a defect class closed as completed or false positive, the share of false positives.",
            "gauge",
        );
        let mut by_class: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
        for ((class, status), n) in &self.closed {
            let entry = by_class.entry(class).or_default();
            match status.as_str() {
                "false_positive" => entry.0 += n,
                "completed" => entry.1 += n,
                _ => {}
            }
        }
        for (class, (false_positives, completed)) in by_class {
            if false_positives + completed > 0 {
                let ratio = false_positives as f64 / (false_positives + completed) as f64;
                out.push_str(&format!("defectflow_false_positive_ratio{{class=\"{class}\"}} {ratio}\n"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(id: &str, status: &str, priority: &str, due_at_ms: u64, technician: Option<&str>) -> WorkOrder {
        let line = include_str!("../tests/scenarios/crack_grows.expected.jsonl").lines().next().unwrap_or_default();
        let Ok(defectflow_schemas::Emitted::WorkOrder(w)) = serde_json::from_str(line) else {
            panic!("the scenario starts with a work order")
        };
        let mut w: WorkOrder = *w;
        w.work_order_id = id.into();
        w.status = serde_json::from_value(status.into()).expect("status");
        w.severity.priority = serde_json::from_value(priority.into()).expect("priority");
        w.due_at_ms = Some(due_at_ms);
        w.technician_id = technician.map(str::to_owned);
        w.revision = 2;
        w
    }

    #[test]
    fn backlog_overdue_hours_and_outcomes() {
        let mut board = Board::default();
        board.revise(&order("WO-1", "open", "P1", 1_000, Some("T-ADA")));
        board.revise(&order("WO-2", "in_progress", "P2", 9_000, Some("T-ADA")));
        board.revise(&order("WO-3", "on_hold", "P2", 1_000, Some("T-BOB")));
        board.revise(&order("WO-4", "open", "P3", 9_000, None));
        board.revise(&order("WO-4", "false_positive", "P3", 9_000, None));
        board.revise(&order("WO-5", "open", "P3", 9_000, None));
        board.revise(&order("WO-5", "completed", "P3", 9_000, None));
        let mut out = String::new();
        board.render(5_000, &mut out);
        let hours = order("WO-1", "open", "P1", 0, None).procedure.map_or(0.0, |p| p.estimated_hours);
        for line in [
            "defectflow_backlog_work_orders{priority=\"P1\"} 1".to_owned(),
            "defectflow_backlog_work_orders{priority=\"P2\"} 2".into(),
            "defectflow_backlog_work_orders{priority=\"P3\"} 0".into(),
            "defectflow_overdue_work_orders{priority=\"P1\"} 1".into(),
            "defectflow_overdue_work_orders{priority=\"P2\"} 1".into(),
            "defectflow_work_orders_on_hold 1".into(),
            format!("defectflow_technician_open_hours{{technician=\"T-ADA\"}} {}", 2.0 * hours),
            "defectflow_work_orders_closed_total{class=\"crack\",status=\"false_positive\"} 1".into(),
            "defectflow_false_positive_ratio{class=\"crack\"} 0.5".into(),
        ] {
            assert!(out.contains(&format!("{line}\n")), "{line} in\n{out}");
        }
        assert!(!out.contains("technician=\"T-BOB\""), "on hold: no open hours\n{out}");
        assert_eq!(board.open_count(), 3);
    }
}
