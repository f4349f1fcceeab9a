//! The `assign` stage: who does the work. A [`Dispatcher`] picks, for each open work
//! order, the technician who holds the procedure's skill, is on shift and has the least
//! open workload (ties: same zone as the asset first, then id); [`Workload`] keeps the
//! per-technician workload as a differential view.

use std::collections::{BTreeMap, HashMap};

use defectflow_schemas::{DefectClass, EpochMillis, Procedure, Technician};
use differential_dataflow::VecCollection;
use differential_dataflow::operators::CountTotal;

/// Estimated hours in hundredths: workload sums stay exact integers.
pub type CentiHours = i64;

/// An estimate in hours as hundredths of an hour.
pub fn centi_hours(hours: f64) -> CentiHours {
    (hours * 100.0).round() as CentiHours
}

/// The plant's local time, in which technician shifts are given: an IANA time zone
/// (daylight saving included) or a fixed offset from UTC.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum PlantClock {
    /// Local time minus UTC, in minutes, all year.
    Offset(i32),
    Zone(chrono_tz::Tz),
}

impl Default for PlantClock {
    fn default() -> Self {
        PlantClock::Offset(0)
    }
}

impl PlantClock {
    /// Hour of the day (0–23) at `at_ms` in plant local time.
    pub fn hour_of_day(self, at_ms: EpochMillis) -> u8 {
        use chrono::Timelike;
        match self {
            PlantClock::Offset(minutes) => {
                let local = at_ms as i64 + i64::from(minutes) * 60_000;
                (local.rem_euclid(86_400_000) / 3_600_000) as u8
            }
            PlantClock::Zone(zone) => match chrono::DateTime::from_timestamp_millis(at_ms as i64) {
                Some(utc) => utc.with_timezone(&zone).hour() as u8,
                None => PlantClock::Offset(0).hour_of_day(at_ms),
            },
        }
    }
}

/// The IANA time zone named `name` (`Europe/Oslo`), or why not.
pub fn time_zone(name: &str) -> Result<chrono_tz::Tz, String> {
    name.parse::<chrono_tz::Tz>()
        .map_err(|_| format!("`{name}` is not an IANA time zone name (for example `Europe/Oslo` or `America/Chicago`)"))
}

/// Technicians, procedures and the open workload of each technician.
#[derive(Debug, Default)]
pub struct Dispatcher {
    technicians: BTreeMap<String, Technician>,
    procedures: BTreeMap<(String, DefectClass), Procedure>,
    workload: HashMap<String, CentiHours>,
    clock: PlantClock,
}

impl Dispatcher {
    pub fn new(clock: PlantClock) -> Self {
        Dispatcher { clock, ..Dispatcher::default() }
    }

    /// Applies a technician update: `diff > 0` inserts or replaces, `diff < 0` removes
    /// the record if it is still the current one.
    pub fn apply_technician(&mut self, technician: &Technician, diff: isize) {
        if diff > 0 {
            self.technicians.insert(technician.technician_id.clone(), technician.clone());
        } else if self.technicians.get(&technician.technician_id) == Some(technician) {
            self.technicians.remove(&technician.technician_id);
        }
    }

    /// Applies a procedure update, like [`Dispatcher::apply_technician`].
    pub fn apply_procedure(&mut self, procedure: &Procedure, diff: isize) {
        let key = (procedure.asset_class.clone(), procedure.defect_class);
        if diff > 0 {
            self.procedures.insert(key, procedure.clone());
        } else if self.procedures.get(&key) == Some(procedure) {
            self.procedures.remove(&key);
        }
    }

    /// The repair procedure for a defect class on an asset class.
    pub fn procedure(&self, asset_class: &str, class: DefectClass) -> Option<&Procedure> {
        self.procedures.get(&(asset_class.to_owned(), class))
    }

    pub fn technician(&self, technician_id: &str) -> Option<&Technician> {
        self.technicians.get(technician_id)
    }

    /// Whether the technician exists, holds the skill and is on shift at `at_ms`.
    pub fn can_work(&self, technician_id: &str, skill: &str, at_ms: EpochMillis) -> bool {
        let hour = self.clock.hour_of_day(at_ms);
        self.technicians.get(technician_id).is_some_and(|t| t.shift.covers(hour) && t.skills.iter().any(|s| s == skill))
    }

    /// The technician to give work needing `skill` on an asset in `zone`, if anyone
    /// eligible is on shift.
    pub fn choose(&self, skill: &str, zone: &str, at_ms: EpochMillis) -> Option<&Technician> {
        let hour = self.clock.hour_of_day(at_ms);
        self.technicians
            .values()
            .filter(|t| t.shift.covers(hour) && t.skills.iter().any(|s| s == skill))
            .min_by_key(|t| (self.workload(&t.technician_id), t.zone != zone, &t.technician_id))
    }

    /// Sum of the estimated hours of the technician's open work orders.
    pub fn workload(&self, technician_id: &str) -> CentiHours {
        self.workload.get(technician_id).copied().unwrap_or(0)
    }

    /// Adds (or, negative, removes) open hours of a technician.
    pub fn add_workload(&mut self, technician_id: &str, hours: CentiHours) {
        let load = self.workload.entry(technician_id.to_owned()).or_default();
        *load += hours;
        if *load == 0 {
            self.workload.remove(technician_id);
        }
    }

    /// Every technician's open hours, for checks against the differential view.
    pub fn workloads(&self) -> BTreeMap<String, CentiHours> {
        self.workload.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }
}

/// Extension trait: the per-technician workload view over open assignments.
pub trait Workload<'scope> {
    /// Open assignments `(technician_id, work_order_id, hours)` in, `(technician_id,
    /// open hours)` out. Closing or reassigning a work order retracts its row upstream,
    /// and the technician's total changes by exactly its hours.
    ///
    /// # Examples
    /// ```
    /// use defectflow_operators::assign::Workload;
    /// use differential_dataflow::AsCollection;
    /// use timely::dataflow::operators::{ToStream, Capture, capture::Extract};
    ///
    /// let out = timely::example(|scope| {
    ///     vec![
    ///         (("T-1".to_string(), "WO-a".to_string(), 250i64), 0u64, 1isize),
    ///         (("T-1".to_string(), "WO-b".to_string(), 100i64), 0, 1),
    ///         (("T-1".to_string(), "WO-a".to_string(), 250i64), 5, -1), // WO-a closed at 5
    ///     ]
    ///     .to_stream(scope)
    ///     .as_collection()
    ///     .workload()
    ///     .inner
    ///     .capture()
    /// });
    /// let mut rows: Vec<_> = out.extract().into_iter().flat_map(|(_, v)| v).collect();
    /// rows.sort();
    /// assert_eq!(rows, vec![
    ///     (("T-1".to_string(), 100), 5, 1),
    ///     (("T-1".to_string(), 350), 0, 1),
    ///     (("T-1".to_string(), 350), 5, -1),
    /// ]);
    /// ```
    fn workload(self) -> VecCollection<'scope, u64, (String, CentiHours)>;
}

impl<'scope> Workload<'scope> for VecCollection<'scope, u64, (String, String, CentiHours)> {
    fn workload(self) -> VecCollection<'scope, u64, (String, CentiHours)> {
        // Hours ride on the diff: one keyed running sum per technician, no per-row state.
        self.explode(|(technician, _work_order, hours)| Some((technician, hours as isize)))
            .count_total()
            .map(|(technician, hours)| (technician, hours as CentiHours))
    }
}
