//! Plant reference data from a folder of JSON files, one array per table:
//! `assets.json`, `cameras.json`, `failures.json`, `procedures.json`,
//! `technicians.json`, `inventory.json`. Each is loaded at start as the initial
//! contents of a differential input; a missing file is an empty table.

use std::path::{Path, PathBuf};

use defectflow_schemas::{Asset, Camera, FailureRecord, InventoryItem, Procedure, Technician};
use serde::de::DeserializeOwned;

/// A reference file that could not be used; names the file and what is wrong in it.
#[derive(Debug, thiserror::Error)]
pub enum ReferenceError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {source}")]
    Parse { path: PathBuf, source: serde_json::Error },
    #[error("{path}: {what}")]
    Invalid { path: PathBuf, what: String },
}

/// Everything the work-order dataflow knows about the plant.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PlantReference {
    pub assets: Vec<Asset>,
    pub cameras: Vec<Camera>,
    pub failures: Vec<FailureRecord>,
    pub procedures: Vec<Procedure>,
    pub technicians: Vec<Technician>,
    pub inventory: Vec<InventoryItem>,
}

impl PlantReference {
    /// The tables' files, in the order [`PlantReference::parse`] takes their texts.
    pub const FILES: [&str; 6] =
        ["assets.json", "cameras.json", "failures.json", "procedures.json", "technicians.json", "inventory.json"];

    /// Loads and checks the folder.
    pub fn load(dir: &Path) -> Result<PlantReference, ReferenceError> {
        let mut texts: [Option<String>; 6] = Default::default();
        for (text, file) in texts.iter_mut().zip(Self::FILES) {
            let path = dir.join(file);
            *text = match std::fs::read_to_string(&path) {
                Ok(text) => Some(text),
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
                Err(source) => return Err(ReferenceError::Read { path, source }),
            };
        }
        PlantReference::parse(dir, texts.each_ref().map(Option::as_deref))
    }

    /// Parses and checks the tables' texts (in the order of [`PlantReference::FILES`];
    /// `None`: the file is missing, an empty table), naming files under `dir` in errors.
    pub fn parse(dir: &Path, texts: [Option<&str>; 6]) -> Result<PlantReference, ReferenceError> {
        let [assets, cameras, failures, procedures, technicians, inventory] = texts;
        let reference = PlantReference {
            assets: table(dir, "assets.json", assets)?,
            cameras: table(dir, "cameras.json", cameras)?,
            failures: table(dir, "failures.json", failures)?,
            procedures: table(dir, "procedures.json", procedures)?,
            technicians: table(dir, "technicians.json", technicians)?,
            inventory: table(dir, "inventory.json", inventory)?,
        };
        reference.check(dir)?;
        Ok(reference)
    }

    fn check(&self, dir: &Path) -> Result<(), ReferenceError> {
        let invalid = |file: &str, what: String| ReferenceError::Invalid { path: dir.join(file), what };
        for (i, asset) in self.assets.iter().enumerate() {
            if !(1..=5).contains(&asset.criticality) {
                return Err(invalid(
                    "assets.json",
                    format!("[{i}].criticality: {} is not between 1 and 5", asset.criticality),
                ));
            }
        }
        for (i, camera) in self.cameras.iter().enumerate() {
            for (j, roi) in camera.rois.iter().enumerate() {
                if !self.assets.iter().any(|a| a.asset_id == roi.asset_id) {
                    return Err(invalid(
                        "cameras.json",
                        format!("[{i}].rois[{j}].asset_id: `{}` is not in assets.json", roi.asset_id),
                    ));
                }
                if let Some(problem) = roi.homography_problem() {
                    return Err(invalid("cameras.json", format!("[{i}].rois[{j}].homography: {problem}")));
                }
            }
        }
        for (i, technician) in self.technicians.iter().enumerate() {
            let shift = technician.shift;
            if shift.start_hour > 23 || shift.end_hour > 24 {
                return Err(invalid("technicians.json", format!("[{i}].shift: hours must be 0–24")));
            }
        }
        for (i, procedure) in self.procedures.iter().enumerate() {
            if !(procedure.estimated_hours.is_finite() && procedure.estimated_hours >= 0.0) {
                return Err(invalid("procedures.json", format!("[{i}].estimated_hours must be a non-negative number")));
            }
        }
        Ok(())
    }
}

fn table<T: DeserializeOwned>(dir: &Path, file: &str, text: Option<&str>) -> Result<Vec<T>, ReferenceError> {
    let Some(text) = text else { return Ok(Vec::new()) };
    serde_json::from_str(text).map_err(|source| ReferenceError::Parse { path: dir.join(file), source })
}

/// A camera whose whole view is one asset's region of interest, for the plants that
/// benches and evaluations make up.
#[derive(Clone, Debug)]
pub struct WholeView<'a> {
    pub camera_id: &'a str,
    pub asset_id: &'a str,
    pub width: u32,
    pub height: u32,
    pub mm_per_px: f64,
}

/// Writes `dir/reference`: the tables of the plant reference `from`, with a
/// `cameras.json` of `cameras` instead of its own; returns the folder.
pub fn reference_with_cameras(from: &Path, dir: &Path, cameras: &[WholeView<'_>]) -> anyhow::Result<PathBuf> {
    let reference = dir.join("reference");
    std::fs::create_dir_all(&reference)?;
    for file in PlantReference::FILES.into_iter().filter(|f| *f != "cameras.json") {
        std::fs::copy(from.join(file), reference.join(file))
            .map_err(|e| anyhow::anyhow!("{}: {e}", from.join(file).display()))?;
    }
    let cameras: Vec<serde_json::Value> = cameras
        .iter()
        .map(|c| {
            serde_json::json!({
                "camera_id": c.camera_id,
                "rois": [{ "asset_id": c.asset_id, "x": 0, "y": 0, "width": c.width, "height": c.height,
                           "mm_per_px": c.mm_per_px }],
            })
        })
        .collect();
    std::fs::write(reference.join("cameras.json"), serde_json::to_string_pretty(&cameras)?)?;
    Ok(reference)
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    /// The demo plant's reference with `change` made to the first entry of `file`, as
    /// [`PlantReference::parse`] judges it.
    fn with_change(file: &str, change: impl Fn(&mut Value)) -> Result<PlantReference, ReferenceError> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/demo-plant/reference");
        let texts = PlantReference::FILES.map(|name| {
            let text = std::fs::read_to_string(dir.join(name)).expect("a demo reference file");
            if name != file {
                return text;
            }
            let mut table: Value = serde_json::from_str(&text).expect("json");
            change(&mut table[0]);
            table.to_string()
        });
        PlantReference::parse(&dir, texts.each_ref().map(|t| Some(t.as_str())))
    }

    /// A file, a change to its first entry, and what the refusal must name.
    type Case = (&'static str, Box<dyn Fn(&mut Value)>, &'static str);

    /// Every file, broken each way a plant could break it, is refused with a message
    /// naming the file and the entry and field at fault.
    #[test]
    fn every_reference_file_that_is_wrong_is_named_with_its_field() {
        with_change("assets.json", |_| {}).expect("the demo plant's reference is valid");
        let mut cases: Vec<Case> = vec![
            ("assets.json", Box::new(|a| a["criticality"] = json!(9)), "[0].criticality"),
            ("cameras.json", Box::new(|c| c["rois"][0]["asset_id"] = json!("NO-SUCH-ASSET")), "[0].rois[0].asset_id"),
            (
                "cameras.json",
                Box::new(|c| {
                    c["rois"][0]["region"] = json!("shell");
                    c["rois"][0]["homography"] = json!([1.0, 2.0, 0.0, 2.0, 4.0, 0.0, 0.0, 0.0, 1.0]);
                }),
                "[0].rois[0].homography: it is singular",
            ),
            (
                "cameras.json",
                Box::new(|c| c["rois"][0]["homography"] = json!([1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0])),
                "[0].rois[0].homography: it needs a `region`",
            ),
            (
                "cameras.json",
                Box::new(|c| {
                    c["rois"][0]["region"] = json!("shell");
                    c["rois"][0]["homography"] = json!([1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.01, 0.0, -1.0]);
                }),
                "[0].rois[0].homography: the ROI crosses its horizon",
            ),
            ("technicians.json", Box::new(|t| t["shift"]["start_hour"] = json!(25)), "[0].shift"),
            ("procedures.json", Box::new(|p| p["estimated_hours"] = json!(-1.0)), "[0].estimated_hours"),
            ("failures.json", Box::new(|f| f["failed_at_ms"] = json!("yesterday")), "yesterday"),
            ("inventory.json", Box::new(|i| i["on_hand"] = json!("three")), "three"),
        ];
        // A required field missing from each file.
        let required = [
            ("assets.json", "asset_id"),
            ("cameras.json", "camera_id"),
            ("failures.json", "asset_id"),
            ("procedures.json", "procedure_id"),
            ("technicians.json", "technician_id"),
            ("inventory.json", "part_id"),
        ];
        for (file, field) in required {
            cases.push((
                file,
                Box::new(move |entry| {
                    entry.as_object_mut().expect("an object").remove(field);
                }),
                field,
            ));
        }
        for (file, change, named) in &cases {
            let error = with_change(file, change).expect_err(&format!("{file}: {named} accepted")).to_string();
            assert!(error.contains(file) && error.contains(named), "{file} {named}: {error}");
        }
        // A file that is not JSON at all.
        let dir = Path::new("/plant/reference");
        let broken = PlantReference::parse(dir, [Some("[{"), None, None, None, None, None]);
        let error = broken.expect_err("not JSON").to_string();
        assert!(error.contains("/plant/reference/assets.json") && error.contains("line 1"), "{error}");
    }
}
