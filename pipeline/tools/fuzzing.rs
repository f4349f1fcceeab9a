//! The parsers of outside input, each as one function of arbitrary bytes that panics
//! only when the parser breaks a promise: the bodies of the cargo-fuzz targets in
//! `fuzz/` and of the regression tests that replay their corpus and every crash found.
//!
//! A parser may refuse its input; it must do so with an error that says something,
//! never by panicking, and what it accepts must hold together.

use std::path::Path;

use defectflow_schemas::DefectClass;

use crate::config::RunConfig;
use crate::reference::PlantReference;
use crate::sources::kafka::{Input, InputKind, parse};

/// A message of an input topic (the first byte picks the topic, and with its high bit
/// makes the rest the key of a tombstone).
pub fn kafka_input(data: &[u8]) {
    let Some((&first, bytes)) = data.split_first() else { return };
    let kinds = [InputKind::WoEvents, InputKind::Inventory, InputKind::Technicians, InputKind::Assets];
    let kind = kinds[usize::from(first & 0x7f) % kinds.len()];
    let (key, value) = if first & 0x80 != 0 { (Some(bytes), None) } else { (None, Some(bytes)) };
    match parse(kind, key, value, 64 * 1024) {
        Ok(input) => {
            let id = match &input {
                Input::Event(e) => &e.work_order_id,
                Input::Movement(m) => &m.part_id,
                Input::Technician(t) => &t.technician_id,
                Input::TechnicianRemoved(id) => id,
                Input::Asset(a) => &a.asset_id,
                Input::AssetRemoved(id) => id,
            };
            assert!(!id.is_empty(), "accepted without an id: {input:?}");
        }
        Err(reason) => assert!(!reason.is_empty(), "refused without a reason"),
    }
}

/// A config file.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match RunConfig::parse(text, "/fuzz/defectflow.toml") {
        Ok(config) => {
            assert!(!config.cameras.is_empty() && config.runtime.workers > 0, "accepted an unusable config");
            assert!(config.validate().is_ok(), "accepted, then invalid");
        }
        Err(error) => assert!(!error.to_string().is_empty()),
    }
}

/// The six reference tables, their texts separated by NUL bytes (one not UTF-8: missing).
pub fn reference(data: &[u8]) {
    let mut texts: [Option<&str>; 6] = [None; 6];
    for (text, part) in texts.iter_mut().zip(data.split(|&b| b == 0)) {
        *text = std::str::from_utf8(part).ok();
    }
    match PlantReference::parse(Path::new("/fuzz/reference"), texts) {
        Ok(reference) => {
            for camera in &reference.cameras {
                for roi in &camera.rois {
                    assert!(
                        reference.assets.iter().any(|a| a.asset_id == roi.asset_id),
                        "accepted a region of interest on an unknown asset"
                    );
                }
            }
        }
        Err(error) => assert!(error.to_string().starts_with("/fuzz/reference/"), "{error}"),
    }
}

/// A YOLO label file of a 640×360 image.
pub fn yolo_labels(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let path = Path::new("/fuzz/labels/frame.txt");
    match defectflow_models::data::parse_label_text(text, path, &DefectClass::ALL, 640, 360) {
        Ok(labels) => {
            for label in labels {
                let b = label.bbox;
                let inside = |v: f32, size: f32| v.is_finite() && (-size..=2.0 * size).contains(&v);
                assert!(inside(b.x, 640.0) && inside(b.y, 360.0), "{b:?}");
                assert!((0.0..=640.0).contains(&b.width) && (0.0..=360.0).contains(&b.height), "{b:?}");
            }
        }
        Err(error) => assert!(error.to_string().contains("frame.txt"), "{error}"),
    }
}

/// A fuzz target's body.
pub type Target = fn(&[u8]);

/// Every fuzz target, by its name in `fuzz/`.
pub const TARGETS: [(&str, Target); 4] =
    [("kafka_input", kafka_input), ("config", config), ("reference", reference), ("yolo_labels", yolo_labels)];
