//! Labelled frames in YOLO format (`images/`, `labels/`, a classes file), as CVAT,
//! Label Studio and Roboflow export them and as `defectflow synth --format yolo` writes
//! them, and the per-cell targets the network learns from.

use std::fs;
use std::path::{Path, PathBuf};

use defectflow_schemas::{BoundingBox, DefectClass};

use crate::model::{CELL_PX, cells};

/// Why a YOLO folder cannot be read. Each names the file, and the line where there is one.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{dir}: no classes file (classes.txt, obj.names or data.yaml with `names`)")]
    NoClasses { dir: PathBuf },
    #[error("{path}:{line}: unknown class `{name}` (known: {known})")]
    UnknownClassName { path: PathBuf, line: usize, name: String, known: String },
    #[error("{dir}: no images (.png, .jpg, .jpeg) under images/")]
    NoImages { dir: PathBuf },
    #[error("{path}: label file missing for image {image}")]
    MissingLabels { path: PathBuf, image: PathBuf },
    #[error("{path}:{line}: {reason}")]
    BadLine { path: PathBuf, line: usize, reason: String },
    #[error("{path}:{line}: class id {id} is not in the classes file ({count} classes)")]
    UnknownClassId { path: PathBuf, line: usize, id: usize, count: usize },
    #[error("{path}: cannot decode image: {reason}")]
    BadImage { path: PathBuf, reason: String },
}

/// One labelled object, in pixels of its image.
#[derive(Clone, Debug, PartialEq)]
pub struct LabelBox {
    pub class: DefectClass,
    pub bbox: BoundingBox,
}

/// A labelled image: planar RGB `[3, height, width]` bytes and its boxes.
#[derive(Clone, Debug)]
pub struct Sample {
    pub name: String,
    pub width: usize,
    pub height: usize,
    pub pixels: Vec<u8>,
    pub labels: Vec<LabelBox>,
}

/// A YOLO folder: which images it has and what their class ids mean.
#[derive(Clone, Debug)]
pub struct YoloFolder {
    pub dir: PathBuf,
    /// Class id → defect class.
    pub classes: Vec<DefectClass>,
    /// (image, label file), sorted by image path.
    pub items: Vec<(PathBuf, PathBuf)>,
}

impl YoloFolder {
    /// Lists the folder and reads its classes file; every image must have a label file.
    pub fn open(dir: &Path) -> Result<YoloFolder, DataError> {
        let classes = read_classes(dir)?;
        let images_dir = dir.join("images");
        let mut images = Vec::new();
        collect_images(&images_dir, &mut images)?;
        if images.is_empty() {
            return Err(DataError::NoImages { dir: dir.to_owned() });
        }
        images.sort();
        let mut items = Vec::with_capacity(images.len());
        for image in images {
            let relative = image.strip_prefix(&images_dir).unwrap_or(&image);
            let labels = dir.join("labels").join(relative).with_extension("txt");
            if !labels.is_file() {
                return Err(DataError::MissingLabels { path: labels, image });
            }
            items.push((image, labels));
        }
        Ok(YoloFolder { dir: dir.to_owned(), classes, items })
    }

    /// Reads every label file (so a bad line fails before any training starts).
    pub fn check_labels(&self) -> Result<usize, DataError> {
        let mut boxes = 0;
        for (_, labels) in &self.items {
            boxes += parse_labels(labels, &self.classes, 1, 1)?.len();
        }
        Ok(boxes)
    }

    /// Decodes image `index` with its labels in pixels.
    pub fn load(&self, index: usize) -> Result<Sample, DataError> {
        let (image_path, label_path) = &self.items[index];
        let image = image::open(image_path)
            .map_err(|e| DataError::BadImage { path: image_path.clone(), reason: e.to_string() })?
            .to_rgb8();
        let (width, height) = (image.width() as usize, image.height() as usize);
        let mut pixels = vec![0u8; 3 * width * height];
        let plane = width * height;
        for (i, p) in image.pixels().enumerate() {
            pixels[i] = p[0];
            pixels[plane + i] = p[1];
            pixels[2 * plane + i] = p[2];
        }
        let labels = parse_labels(label_path, &self.classes, width, height)?;
        let name = image_path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        Ok(Sample { name, width, height, pixels, labels })
    }
}

fn collect_images(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), DataError> {
    let entries = fs::read_dir(dir).map_err(|source| DataError::Io { path: dir.to_owned(), source })?;
    for entry in entries {
        let path = entry.map_err(|source| DataError::Io { path: dir.to_owned(), source })?.path();
        if path.is_dir() {
            collect_images(&path, out)?;
        } else if path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg"))
        {
            out.push(path);
        }
    }
    Ok(())
}

/// Class names from `classes.txt` or `obj.names` (one per line) or `data.yaml` (`names:`
/// as a list or a mapping), mapped to defect classes by name.
fn read_classes(dir: &Path) -> Result<Vec<DefectClass>, DataError> {
    let known = || DefectClass::ALL.iter().map(|c| c.as_str()).collect::<Vec<_>>().join(", ");
    for file in ["classes.txt", "obj.names"] {
        let path = dir.join(file);
        if path.is_file() {
            let text = fs::read_to_string(&path).map_err(|source| DataError::Io { path: path.clone(), source })?;
            let mut classes = Vec::new();
            for (i, line) in text.lines().enumerate() {
                let name = line.trim();
                if name.is_empty() {
                    continue;
                }
                let class = DefectClass::model_class(name).map_err(|_| DataError::UnknownClassName {
                    path: path.clone(),
                    line: i + 1,
                    name: name.to_owned(),
                    known: known(),
                })?;
                classes.push(class);
            }
            return Ok(classes);
        }
    }
    let path = dir.join("data.yaml");
    if path.is_file() {
        let text = fs::read_to_string(&path).map_err(|source| DataError::Io { path: path.clone(), source })?;
        let names = yaml_names(&text);
        let mut classes = Vec::new();
        for (line, name) in names {
            let class = DefectClass::model_class(&name).map_err(|_| DataError::UnknownClassName {
                path: path.clone(),
                line,
                name: name.clone(),
                known: known(),
            })?;
            classes.push(class);
        }
        return Ok(classes);
    }
    Err(DataError::NoClasses { dir: dir.to_owned() })
}

/// The `names:` of a YOLO `data.yaml`: `names: [a, b]`, a `- a` list, or `0: a` lines.
fn yaml_names(text: &str) -> Vec<(usize, String)> {
    let clean = |s: &str| s.trim().trim_matches(|c| c == '\'' || c == '"').to_owned();
    let mut names = Vec::new();
    let mut inside = false;
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if let Some(rest) = trimmed.strip_prefix("names:") {
            let rest = rest.trim();
            if let Some(list) = rest.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
                return list.split(',').map(|n| (i + 1, clean(n))).filter(|(_, n)| !n.is_empty()).collect();
            }
            inside = true;
            continue;
        }
        if inside {
            if let Some(item) = trimmed.strip_prefix("- ") {
                names.push((i + 1, clean(item)));
            } else if let Some((key, value)) = trimmed.split_once(':')
                && key.trim().parse::<usize>().is_ok()
                && line.starts_with([' ', '\t'])
            {
                names.push((i + 1, clean(value)));
            } else if !trimmed.is_empty() {
                break;
            }
        }
    }
    names
}

/// Parses a YOLO label file (`class cx cy w h`, normalised) into pixel boxes.
pub fn parse_labels(
    path: &Path,
    classes: &[DefectClass],
    width: usize,
    height: usize,
) -> Result<Vec<LabelBox>, DataError> {
    let text = fs::read_to_string(path).map_err(|source| DataError::Io { path: path.to_owned(), source })?;
    parse_label_text(&text, path, classes, width, height)
}

/// [`parse_labels`] of a label file's text; `path` names it in errors.
pub fn parse_label_text(
    text: &str,
    path: &Path,
    classes: &[DefectClass],
    width: usize,
    height: usize,
) -> Result<Vec<LabelBox>, DataError> {
    let mut labels = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.is_empty() {
            continue;
        }
        let bad = |reason: String| DataError::BadLine { path: path.to_owned(), line: line_no, reason };
        if fields.len() != 5 {
            return Err(bad(format!("expected `class cx cy w h`, found {} fields", fields.len())));
        }
        let id: usize =
            fields[0].parse().map_err(|_| bad(format!("class id `{}` is not a whole number", fields[0])))?;
        let class = *classes.get(id).ok_or(DataError::UnknownClassId {
            path: path.to_owned(),
            line: line_no,
            id,
            count: classes.len(),
        })?;
        let mut v = [0f32; 4];
        for (k, (slot, field)) in v.iter_mut().zip(&fields[1..]).enumerate() {
            let name = ["cx", "cy", "w", "h"][k];
            *slot = field
                .parse::<f32>()
                .ok()
                .filter(|x| x.is_finite() && (0.0..=1.0).contains(x))
                .ok_or_else(|| bad(format!("{name} `{field}` is not a number in [0, 1]")))?;
        }
        let (w, h) = (width as f32, height as f32);
        let bbox =
            BoundingBox { x: (v[0] - v[2] / 2.0) * w, y: (v[1] - v[3] / 2.0) * h, width: v[2] * w, height: v[3] * h };
        labels.push(LabelBox { class, bbox });
    }
    Ok(labels)
}

/// Target of a cell that is neither background nor a defect: left out of the loss.
pub const IGNORE: u8 = u8::MAX;

/// Per-cell targets of an image: 0 background, 1 + class id for a defect, [`IGNORE`]
/// for a cell a box only grazes. A cell is the box's when its centre is inside the box;
/// the cell under the box's centre always is, so a small defect is never left without one.
pub fn cell_targets(labels: &[LabelBox], width: usize, height: usize) -> (usize, usize, Vec<u8>) {
    let (cw, ch, targets, _) = cell_targets_with_boxes(labels, width, height);
    (cw, ch, targets)
}

/// [`cell_targets`], and for each cell a box covers (defect or grazed) the box it belongs to as the box head
/// learns it: centre offset x, y from the cell's centre, log width, log height, in cells.
pub fn cell_targets_with_boxes(
    labels: &[LabelBox],
    width: usize,
    height: usize,
) -> (usize, usize, Vec<u8>, Vec<Option<[f32; 4]>>) {
    let (cw, ch) = (cells(width), cells(height));
    let mut targets = vec![0u8; cw * ch];
    let mut boxes = vec![None; cw * ch];
    // Larger boxes first, so a small defect inside a large one keeps its cells.
    let mut order: Vec<&LabelBox> = labels.iter().collect();
    order.sort_by(|a, b| b.bbox.area().total_cmp(&a.bbox.area()));
    let cell = CELL_PX as f32;
    for label in order {
        let b = &label.bbox;
        let id = label.class.yolo_id() as u8 + 1;
        let target_box = |cx: usize, cy: usize| {
            let (px, py) = ((cx as f32 + 0.5) * cell, (cy as f32 + 0.5) * cell);
            [
                (b.x + b.width / 2.0 - px) / cell,
                (b.y + b.height / 2.0 - py) / cell,
                (b.width / cell).max(1e-3).ln(),
                (b.height / cell).max(1e-3).ln(),
            ]
        };
        let (x0, y0) = ((b.x / cell).floor().max(0.0) as usize, (b.y / cell).floor().max(0.0) as usize);
        let x1 = (((b.x + b.width) / cell).ceil() as usize).min(cw);
        let y1 = (((b.y + b.height) / cell).ceil() as usize).min(ch);
        for cy in y0..y1 {
            for cx in x0..x1 {
                let (px, py) = ((cx as f32 + 0.5) * cell, (cy as f32 + 0.5) * cell);
                let inside = px >= b.x && px <= b.x + b.width && py >= b.y && py <= b.y + b.height;
                let i = cy * cw + cx;
                if inside {
                    targets[i] = id;
                    boxes[i] = Some(target_box(cx, cy));
                } else if targets[i] == 0 {
                    targets[i] = IGNORE;
                }
                // A grazed cell may still be found as part of the defect, so it learns
                // the box as well.
                if boxes[i].is_none() {
                    boxes[i] = Some(target_box(cx, cy));
                }
            }
        }
        let (mx, my) = (((b.x + b.width / 2.0) / cell) as usize, ((b.y + b.height / 2.0) / cell) as usize);
        if mx < cw && my < ch {
            targets[my * cw + mx] = id;
            boxes[my * cw + mx] = Some(target_box(mx, my));
        }
    }
    (cw, ch, targets, boxes)
}
