//! A scripted CMMS (`[plant] cmms_script`): status events for work orders of a demo or a
//! rehearsal, without a CMMS on Kafka. A line names the work order by asset and defect
//! class, since ids are only known once the work order exists:
//!
//! ```toml
//! [[events]]
//! asset_id = "MT-204"
//! defect_class = "contamination"
//! event = "false_positive"
//! after_s = 6           # event time after the work order's first revision
//! note = "oil splash, cleaned"
//! ```
//!
//! Each line fires once, for the first work order that matches it, when the dataflow's
//! event time reaches `after_s` past that work order's creation; several lines for the
//! same asset and class make a lifecycle (acknowledged, started, completed).

use std::path::Path;

use defectflow_schemas::{DefectClass, WoEvent, WoEventKind, WorkOrder};
use serde::Deserialize;

/// The script file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScriptFile {
    #[serde(default)]
    events: Vec<ScriptLine>,
}

/// One scripted event.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScriptLine {
    pub asset_id: String,
    pub defect_class: DefectClass,
    pub event: WoEventKind,
    pub after_s: f64,
    #[serde(default)]
    pub technician_id: Option<String>,
    #[serde(default)]
    pub note: Option<String>,
    /// Why the work is on hold or cancelled (`on_hold`, `cancelled`).
    #[serde(default)]
    pub reason: Option<String>,
    /// Labour hours booked (`completed`).
    #[serde(default)]
    pub actual_hours: Option<f64>,
    /// Hours the asset was down for the repair (`completed`).
    #[serde(default)]
    pub downtime_hours: Option<f64>,
}

/// The lines of a script and how far each has got.
#[derive(Debug)]
pub struct CmmsScript {
    lines: Vec<(ScriptLine, Stage)>,
}

#[derive(Clone, Debug, PartialEq)]
enum Stage {
    Waiting,
    /// Bound to a work order, due at this event time.
    Due(String, u64),
    Sent,
}

impl CmmsScript {
    /// Reads the script; an error names the file and the field.
    pub fn load(path: &Path) -> anyhow::Result<CmmsScript> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("{}: cannot read the CMMS script: {e}", path.display()))?;
        let file: ScriptFile = toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        for (i, line) in file.events.iter().enumerate() {
            if !(line.after_s >= 0.0 && line.after_s.is_finite()) {
                anyhow::bail!("{}: events[{i}].after_s: must be a number of seconds ≥ 0", path.display());
            }
        }
        Ok(CmmsScript { lines: file.events.into_iter().map(|l| (l, Stage::Waiting)).collect() })
    }

    /// Binds waiting lines to new work orders (their first revisions).
    pub fn observe(&mut self, order: &WorkOrder) {
        if order.revision != 1 {
            return;
        }
        for (line, stage) in &mut self.lines {
            if *stage == Stage::Waiting && line.asset_id == order.asset_id && line.defect_class == order.defect_class {
                let due = order.revised_at_ms + (line.after_s * 1000.0).round() as u64;
                *stage = Stage::Due(order.work_order_id.clone(), due);
            }
        }
    }

    /// The events due at event time `now`, stamped `now`; each is given once.
    pub fn due(&mut self, now: u64) -> Vec<WoEvent> {
        let mut events = Vec::new();
        for (line, stage) in &mut self.lines {
            if let Stage::Due(id, at) = stage
                && *at <= now
            {
                events.push(WoEvent {
                    work_order_id: id.clone(),
                    event: line.event,
                    at_ms: now,
                    technician_id: line.technician_id.clone(),
                    note: line.note.clone(),
                    reason: line.reason.clone(),
                    actual_hours: line.actual_hours,
                    downtime_hours: line.downtime_hours,
                });
                *stage = Stage::Sent;
            }
        }
        events
    }

    /// Lines not sent (yet).
    pub fn pending(&self) -> usize {
        self.lines.iter().filter(|(_, s)| *s != Stage::Sent).count()
    }
}
