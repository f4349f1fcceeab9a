//! Thresholds per camera and defect class that change while the run goes on: the
//! least confidence a detection needs to count, and the least severity score at which
//! a confirmed track opens a work order. Read from a TOML file (`[plant] thresholds`),
//! which the run re-reads when it changes.
//!
//! ```toml
//! [[threshold]]                # the paint shop's camera: no more wear from its glare
//! camera = "cam-paint"
//! class = "wear"
//! min_confidence = 0.85
//!
//! [[threshold]]                # this camera opens work orders at a higher score
//! camera = "cam-paint"
//! open_score = 35
//! ```
//!
//! The most specific rule that sets a value gives it: camera and class, then camera,
//! then class; values no rule sets are the model's and `[work_orders] open_score`.

use std::sync::{Arc, RwLock, Weak};

use defectflow_schemas::DefectClass;
use serde::Deserialize;

/// The rules of a thresholds file.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Thresholds {
    #[serde(default, rename = "threshold")]
    pub rules: Vec<ThresholdRule>,
}

/// One `[[threshold]]`: what it applies to (no camera: every camera; no class: every
/// class) and the values it sets.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThresholdRule {
    #[serde(default)]
    pub camera: Option<String>,
    #[serde(default)]
    pub class: Option<DefectClass>,
    /// A detection of the class on the camera counts only from this confidence on.
    #[serde(default)]
    pub min_confidence: Option<f32>,
    /// A confirmed track opens a work order only from this severity score on.
    #[serde(default)]
    pub open_score: Option<f64>,
}

impl ThresholdRule {
    /// How closely the rule names `(camera, class)`: `None` if it does not apply.
    fn specificity(&self, camera: &str, class: DefectClass) -> Option<u8> {
        let camera = match &self.camera {
            Some(c) if c == camera => 2,
            Some(_) => return None,
            None => 0,
        };
        let class = match self.class {
            Some(c) if c == class => 1,
            Some(_) => return None,
            None => 0,
        };
        Some(camera + class)
    }
}

impl Thresholds {
    /// Parses a thresholds file; `what` names it in errors. A value out of range, a
    /// rule that sets nothing and two rules for the same camera and class are errors
    /// naming the rule.
    pub fn parse(text: &str, what: &str, model_min_confidence: f32) -> Result<Thresholds, String> {
        let thresholds: Thresholds = toml::from_str(text).map_err(|e| format!("{what}: {e}"))?;
        for (i, rule) in thresholds.rules.iter().enumerate() {
            let at = format!("{what}: threshold[{i}]");
            if rule.min_confidence.is_none() && rule.open_score.is_none() {
                return Err(format!("{at}: sets neither min_confidence nor open_score"));
            }
            if let Some(c) = rule.min_confidence
                && !(model_min_confidence..=1.0).contains(&c)
            {
                return Err(format!(
                    "{at}.min_confidence: must be within [{model_min_confidence}, 1] (the model's threshold can be \
                     raised, not lowered), got {c}"
                ));
            }
            if let Some(s) = rule.open_score
                && !(0.0..=100.0).contains(&s)
            {
                return Err(format!("{at}.open_score: must be a score within [0, 100], got {s}"));
            }
            if let Some(j) =
                thresholds.rules[..i].iter().position(|r| (&r.camera, r.class) == (&rule.camera, rule.class))
            {
                return Err(format!("{at}: names the same camera and class as threshold[{j}]"));
            }
        }
        Ok(thresholds)
    }

    fn most_specific<T>(
        &self,
        camera: &str,
        class: DefectClass,
        value: impl Fn(&ThresholdRule) -> Option<T>,
    ) -> Option<T> {
        (self.rules.iter())
            .filter_map(|r| Some((r.specificity(camera, class)?, value(r)?)))
            .max_by_key(|(specificity, _)| *specificity)
            .map(|(_, v)| v)
    }

    /// The least confidence a detection of `class` on `camera` needs, if a rule sets one.
    pub fn min_confidence(&self, camera: &str, class: DefectClass) -> Option<f32> {
        self.most_specific(camera, class, |r| r.min_confidence)
    }

    /// The least score at which a track of `class` on `camera` opens a work order, if a
    /// rule sets one.
    pub fn open_score(&self, camera: &str, class: DefectClass) -> Option<f64> {
        self.most_specific(camera, class, |r| r.open_score)
    }
}

/// The thresholds in force, shared by the operators of a process and swapped whole
/// when the file changes. Cheap to clone; equal when shared.
#[derive(Clone, Debug, Default)]
pub struct LiveThresholds(Arc<RwLock<Arc<Thresholds>>>);

impl LiveThresholds {
    pub fn new(thresholds: Thresholds) -> LiveThresholds {
        LiveThresholds(Arc::new(RwLock::new(Arc::new(thresholds))))
    }

    /// The thresholds in force now.
    pub fn current(&self) -> Arc<Thresholds> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Puts `thresholds` in force.
    pub fn replace(&self, thresholds: Thresholds) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(thresholds);
    }

    /// A handle that does not keep the thresholds alive (for a watcher that should end
    /// with the run).
    pub fn downgrade(&self) -> HeldThresholds {
        HeldThresholds(Arc::downgrade(&self.0))
    }
}

/// See [`LiveThresholds::downgrade`].
#[derive(Debug)]
pub struct HeldThresholds(Weak<RwLock<Arc<Thresholds>>>);

impl HeldThresholds {
    /// The thresholds, while anyone else holds them.
    pub fn upgrade(&self) -> Option<LiveThresholds> {
        self.0.upgrade().map(LiveThresholds)
    }
}

impl PartialEq for LiveThresholds {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
[[threshold]]
class = "wear"
min_confidence = 0.7

[[threshold]]
camera = "cam-paint"
class = "wear"
min_confidence = 0.9

[[threshold]]
camera = "cam-paint"
open_score = 35
"#;

    #[test]
    fn the_most_specific_rule_that_sets_a_value_gives_it() {
        let t = Thresholds::parse(FILE, "thresholds.toml", 0.5).expect("valid");
        assert_eq!(t.min_confidence("cam-paint", DefectClass::Wear), Some(0.9), "camera and class");
        assert_eq!(t.min_confidence("cam-other", DefectClass::Wear), Some(0.7), "class");
        assert_eq!(t.min_confidence("cam-paint", DefectClass::Crack), None, "the camera's rule sets no confidence");
        assert_eq!(t.open_score("cam-paint", DefectClass::Wear), Some(35.0), "camera, for every class");
        assert_eq!(t.open_score("cam-other", DefectClass::Crack), None);
    }

    #[test]
    fn bad_rules_are_refused_naming_the_rule_and_field() {
        let refused = |text: &str| Thresholds::parse(text, "t.toml", 0.5).expect_err("refused");
        let low = refused("[[threshold]]\ncamera = \"c\"\nmin_confidence = 0.3\n");
        assert!(low.starts_with("t.toml: threshold[0].min_confidence: must be within [0.5, 1]"), "{low}");
        let score = refused("[[threshold]]\nopen_score = 120\n");
        assert!(score.starts_with("t.toml: threshold[0].open_score:"), "{score}");
        let empty = refused("[[threshold]]\ncamera = \"c\"\n");
        assert!(empty.contains("threshold[0]: sets neither"), "{empty}");
        let twice = refused(
            "[[threshold]]\nclass = \"crack\"\nopen_score = 30\n[[threshold]]\nclass = \"crack\"\nmin_confidence = 0.8\n",
        );
        assert!(twice.contains("threshold[1]: names the same camera and class as threshold[0]"), "{twice}");
        let class = refused("[[threshold]]\nclass = \"dent\"\nopen_score = 30\n");
        assert!(class.contains("t.toml") && class.contains("dent"), "{class}");
    }

    #[test]
    fn a_replacement_is_seen_by_every_clone() {
        let live = LiveThresholds::default();
        let clone = live.clone();
        assert_eq!(clone.current().open_score("c", DefectClass::Crack), None);
        live.replace(Thresholds::parse("[[threshold]]\nopen_score = 50\n", "t", 0.5).expect("valid"));
        assert_eq!(clone.current().open_score("c", DefectClass::Crack), Some(50.0));
        assert_eq!(live, clone);
        assert_ne!(live, LiveThresholds::default());
    }
}
