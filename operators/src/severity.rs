//! The `severity` operator: defect tracks ⋈ assets ⋈ failure history → an explainable
//! score from 0 to 100 (size, growth, criticality and history components) and a
//! priority from P1 to P4.

use defectflow_schemas::{Asset, DefectClass, DefectTrack, FailureRecord, Priority, Severity, SeverityComponents};
use differential_dataflow::VecCollection;
use serde::{Deserialize, Serialize};

/// A defect track with what is known about its asset and how bad it is.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ScoredTrack {
    pub track: DefectTrack,
    pub asset: Asset,
    /// Failures of the asset in the history window before the track was last seen.
    pub recent_failures: u32,
    pub severity: Severity,
}

/// Points each component contributes at most; they sum to the 100 of a full score.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SeverityWeights {
    pub size: f64,
    pub growth: f64,
    pub criticality: f64,
    pub history: f64,
}

impl Default for SeverityWeights {
    fn default() -> Self {
        SeverityWeights { size: 35.0, growth: 25.0, criticality: 25.0, history: 15.0 }
    }
}

/// Score thresholds of P1, P2 and P3 for assets of one criticality; below `p3` is P4.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriorityThresholds {
    /// Asset criticality (1–5) these thresholds apply to.
    pub criticality: u8,
    pub p1: f64,
    pub p2: f64,
    pub p3: f64,
}

/// How a track is scored. `[severity]` in the config.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SeverityConfig {
    pub weights: SeverityWeights,
    /// Largest dimension, in millimetres, at which the size component is full.
    pub full_size_mm: f64,
    /// Area, in square pixels, at which the size component is full (cameras without a scale).
    pub full_area_px: f64,
    /// Area growth, in square pixels per minute, at which the growth component is full.
    pub full_growth_px_per_min: f64,
    /// Failures in the window at which the history component is full.
    pub full_history_failures: u32,
    /// How far back failures count, in days.
    pub history_window_days: u64,
    /// Priority thresholds per asset criticality; a criticality not listed uses P1 ≥ 75, P2 ≥ 55, P3 ≥ 35.
    pub priorities: Vec<PriorityThresholds>,
}

impl Default for SeverityConfig {
    fn default() -> Self {
        let thresholds = |criticality, p1, p2, p3| PriorityThresholds { criticality, p1, p2, p3 };
        SeverityConfig {
            weights: SeverityWeights::default(),
            full_size_mm: 100.0,
            full_area_px: 4000.0,
            full_growth_px_per_min: 200.0,
            full_history_failures: 3,
            history_window_days: 365,
            // Critical assets reach the urgent bands at lower scores.
            priorities: vec![thresholds(5, 60.0, 40.0, 25.0), thresholds(4, 70.0, 50.0, 30.0)],
        }
    }
}

impl SeverityConfig {
    /// The score of a track on an asset with `recent_failures` in the window.
    pub fn score(&self, track: &DefectTrack, asset: &Asset, recent_failures: u32) -> Severity {
        let w = &self.weights;
        let size_fraction = match track.size_mm {
            Some(mm) => mm / self.full_size_mm,
            None => (f64::from(track.area_px) / self.full_area_px).sqrt(),
        };
        let components = SeverityComponents {
            size: tenth(w.size * size_fraction.clamp(0.0, 1.0)),
            growth: tenth(w.growth * (track.growth_px_per_min / self.full_growth_px_per_min).clamp(0.0, 1.0)),
            criticality: tenth(w.criticality * f64::from(asset.criticality.clamp(1, 5) - 1) / 4.0),
            history: tenth(
                w.history * (f64::from(recent_failures) / f64::from(self.full_history_failures.max(1))).min(1.0),
            ),
        };
        let score = tenth(components.size + components.growth + components.criticality + components.history);
        // A departure the model cannot name asks for an inspection, never an urgent repair:
        // its score is kept (an inspector sees how large and fast it is), its priority is P4.
        let priority = match track.class {
            DefectClass::Unknown => Priority::P4,
            _ => self.priority(score, asset.criticality),
        };
        Severity { score, priority, components }
    }

    /// The priority band of a score on an asset of the given criticality.
    pub fn priority(&self, score: f64, criticality: u8) -> Priority {
        let default = PriorityThresholds { criticality, p1: 75.0, p2: 55.0, p3: 35.0 };
        let t = self.priorities.iter().find(|t| t.criticality == criticality).unwrap_or(&default);
        if score >= t.p1 {
            Priority::P1
        } else if score >= t.p2 {
            Priority::P2
        } else if score >= t.p3 {
            Priority::P3
        } else {
            Priority::P4
        }
    }
}

fn tenth(value: f64) -> f64 {
    (value * 10.0).round() / 10.0
}

/// What the severity join knows of an asset: its record and its failure times.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
enum AssetFact {
    Asset(Asset),
    Failure(u64),
}

/// Extension trait: `tracks.severity(assets, failures, config)`.
pub trait Score<'scope> {
    /// Joins each track (keyed by asset id) with its asset and the asset's failures and
    /// scores it. A change of asset criticality or a new failure re-scores the tracks of
    /// that asset only. Tracks on assets missing from the registry are held back until
    /// the asset appears.
    ///
    /// # Examples
    /// ```
    /// use defectflow_operators::severity::{Score, SeverityConfig};
    /// # use defectflow_schemas::*;
    /// use differential_dataflow::AsCollection;
    /// use timely::dataflow::operators::{ToStream, Capture, capture::Extract};
    /// # let track = DefectTrack { track_id: "TR-1".into(), camera_id: "cam".into(), asset_id: "P-1".into(),
    /// #     class: DefectClass::Crack, state: TrackState::Confirmed, first_seen_ms: 0, last_seen_ms: 0, hits: 5,
    /// #     bbox: BoundingBox { x: 0.0, y: 0.0, width: 10.0, height: 10.0 }, area_px: 100.0, size_mm: Some(50.0),
    /// #     growth_px_per_min: 0.0, best_frame_index: 0, best_bbox: BoundingBox { x: 0.0, y: 0.0, width: 10.0, height: 10.0 },
    /// #     best_capture_ms: 0, model_version: "m".into(), shadow: false, evidence: None };
    /// let asset = Asset { asset_id: "P-1".into(), name: "Pump".into(), asset_class: "pump".into(),
    ///     criticality: 5, zone: "A".into() };
    /// let scored = timely::example(move |scope| {
    ///     let tracks = vec![(("P-1".to_string(), track), 0u64, 1isize)].to_stream(scope).as_collection();
    ///     let assets = vec![(asset, 0u64, 1isize)].to_stream(scope).as_collection();
    ///     let failures = Vec::<(FailureRecord, u64, isize)>::new().to_stream(scope).as_collection();
    ///     tracks.severity(assets, failures, SeverityConfig::default()).inner.capture()
    /// });
    /// let scored: Vec<_> = scored.extract().into_iter().flat_map(|(_, v)| v).collect();
    /// // Size 50 of 100 mm → 17.5 of 35; criticality 5 → 25 of 25; no growth, no history.
    /// assert_eq!(scored[0].0.severity.score, 42.5);
    /// assert_eq!(scored[0].0.severity.priority, Priority::P2);
    /// ```
    fn severity(
        self,
        assets: VecCollection<'scope, u64, Asset>,
        failures: VecCollection<'scope, u64, FailureRecord>,
        config: SeverityConfig,
    ) -> VecCollection<'scope, u64, ScoredTrack>;
}

impl<'scope> Score<'scope> for VecCollection<'scope, u64, (String, DefectTrack)> {
    fn severity(
        self,
        assets: VecCollection<'scope, u64, Asset>,
        failures: VecCollection<'scope, u64, FailureRecord>,
        config: SeverityConfig,
    ) -> VecCollection<'scope, u64, ScoredTrack> {
        let profiles = assets
            .map(|asset| (asset.asset_id.clone(), AssetFact::Asset(asset)))
            .concat(failures.map(|failure| (failure.asset_id, AssetFact::Failure(failure.failed_at_ms))))
            .reduce(|_asset_id, facts, output| {
                let mut asset = None;
                let mut failures = Vec::new();
                for (fact, count) in facts {
                    match fact {
                        AssetFact::Asset(a) if *count > 0 => asset = Some(a.clone()),
                        AssetFact::Failure(at) => failures.extend(std::iter::repeat_n(*at, (*count).max(0) as usize)),
                        AssetFact::Asset(_) => {}
                    }
                }
                if let Some(asset) = asset {
                    output.push(((asset, failures), 1));
                }
            });
        let window_ms = config.history_window_days * 86_400_000;
        self.join_map(profiles, move |_asset_id, track, (asset, failures)| {
            let from = track.last_seen_ms.saturating_sub(window_ms);
            let recent = failures.iter().filter(|at| **at >= from && **at <= track.last_seen_ms).count() as u32;
            let severity = config.score(track, asset, recent);
            ScoredTrack { track: track.clone(), asset: asset.clone(), recent_failures: recent, severity }
        })
    }
}
