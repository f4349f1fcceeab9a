//! Running the network on frames: batching, resizing to the trained input size, and
//! turning connected defect cells into detections.

use burn::tensor::activation::softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use defectflow_schemas::{BoundingBox, DefectClass};

use crate::model::{BOX_OUTPUTS, CELL_PX, DefectNet, cells};

/// A frame as the network reads it: planar RGB, `[3, height, width]` bytes.
#[derive(Clone, Copy, Debug)]
pub struct FrameView<'a> {
    pub width: usize,
    pub height: usize,
    pub pixels: &'a [u8],
}

/// One defect found in a frame, in the frame's own pixels.
#[derive(Clone, Debug, PartialEq)]
pub struct Found {
    pub class: DefectClass,
    /// Highest class probability among the defect's cells.
    pub confidence: f32,
    pub bbox: BoundingBox,
    /// Cells × cell area, in the frame's pixels.
    pub area_px: f32,
}

/// Per-cell probabilities of one frame: `[classes, rows, cols]`, row-major.
#[derive(Clone, Debug)]
pub struct CellScores {
    pub classes: usize,
    pub rows: usize,
    pub cols: usize,
    pub probabilities: Vec<f32>,
    /// With the box head: `[4, rows, cols]`, each cell's object as centre offset x, y
    /// from the cell's centre and log width, log height, in cells.
    pub boxes: Option<Vec<f32>>,
    /// When asked for: each cell's appearance features (see [`Appearance`]).
    pub appearance: Option<Appearance>,
}

/// What each cell of a frame looks like to the network: `dims` features per cell,
/// cells row-major (`[rows × cols, dims]`). A camera's baseline is learnt over them.
#[derive(Clone, Debug, PartialEq)]
pub struct Appearance {
    pub dims: usize,
    pub values: Vec<f32>,
}

impl Appearance {
    /// The features of cell `index` (row-major).
    pub fn cell(&self, index: usize) -> &[f32] {
        &self.values[index * self.dims..(index + 1) * self.dims]
    }
}

impl CellScores {
    pub fn probability(&self, class: usize, row: usize, col: usize) -> f32 {
        self.probabilities[(class * self.rows + row) * self.cols + col]
    }

    /// The most likely class of each cell (0 = background), row-major.
    pub fn argmax(&self) -> Vec<u8> {
        let plane = self.rows * self.cols;
        (0..plane)
            .map(|i| {
                let mut best = 0;
                for k in 1..self.classes {
                    if self.probabilities[k * plane + i] > self.probabilities[best * plane + i] {
                        best = k;
                    }
                }
                best as u8
            })
            .collect()
    }
}

/// Scores a batch of frames of one size with the network on its tensors (as training
/// computes it): `[batch, classes, rows, cols]` probabilities, one [`CellScores`] per
/// frame. On the CPU, [`crate::packed::PackedNet`] gives the same scores faster.
pub fn score_batch<B: Backend>(net: &DefectNet<B>, frames: &[FrameView<'_>], device: &B::Device) -> Vec<CellScores> {
    let Some(pixels) = pixel_tensor::<B>(frames, device) else { return Vec::new() };
    let (logits, boxes) = net.forward_with_boxes(pixels);
    cell_scores(logits, boxes)
}

/// As [`score_batch`], each frame's scores with its cells' [`Appearance`].
pub fn score_batch_with_appearance<B: Backend>(
    net: &DefectNet<B>,
    frames: &[FrameView<'_>],
    device: &B::Device,
) -> Vec<CellScores> {
    let Some(pixels) = pixel_tensor::<B>(frames, device) else { return Vec::new() };
    let (logits, boxes, appearance) = net.forward_with_appearance(pixels);
    let [_, dims, rows, cols] = appearance.dims();
    // Channels-last: one row of features per cell.
    let appearance = values(appearance.permute([0, 2, 3, 1]));
    let per_frame = dims * rows * cols;
    let mut scores = cell_scores(logits, boxes);
    for (i, frame) in scores.iter_mut().enumerate() {
        let values = appearance[i * per_frame..(i + 1) * per_frame].to_vec();
        frame.appearance = Some(Appearance { dims, values });
    }
    scores
}

/// Frames of one size as the network's input, `[batch, 3, height, width]`.
fn pixel_tensor<B: Backend>(frames: &[FrameView<'_>], device: &B::Device) -> Option<Tensor<B, 4>> {
    let first = frames.first()?;
    let input: Vec<f32> = frames.iter().flat_map(|f| f.pixels.iter().map(|&p| f32::from(p))).collect();
    let shape = [frames.len(), 3, first.height, first.width];
    Some(Tensor::<B, 4>::from_data(TensorData::new(input, shape), device))
}

/// A tensor's values as `f32`, row-major.
pub(crate) fn values<B: Backend, const D: usize>(tensor: Tensor<B, D>) -> Vec<f32> {
    tensor.into_data().convert::<f32>().into_vec().unwrap_or_default()
}

fn cell_scores<B: Backend>(logits: Tensor<B, 4>, boxes: Option<Tensor<B, 4>>) -> Vec<CellScores> {
    let probabilities = softmax(logits, 1); // [batch, classes, rows, cols]
    let [_, classes, rows, cols] = probabilities.dims();
    let boxes: Option<Vec<f32>> = boxes.map(values);
    let values: Vec<f32> = values(probabilities);
    let per_frame = classes * rows * cols;
    let per_frame_boxes = BOX_OUTPUTS * rows * cols;
    values
        .chunks(per_frame)
        .enumerate()
        .map(|(i, chunk)| CellScores {
            classes,
            rows,
            cols,
            probabilities: chunk.to_vec(),
            boxes: boxes.as_ref().map(|b| b[i * per_frame_boxes..(i + 1) * per_frame_boxes].to_vec()),
            appearance: None,
        })
        .collect()
}

/// Groups neighbouring defect cells (any defect class) into detections; cells up to
/// two apart count as neighbours, so a thin crack whose middle cell is faint stays one.
///
/// A cell counts when its most likely class is a defect with probability at least
/// `min_confidence`; a group takes the class with the largest summed probability over
/// its cells, so one defect whose cells disagree on the class stays one detection.
/// The box is the probability-weighted mean of the box head's boxes over the group's
/// cells when the network has the head, else the extent of the cells.
/// `scale` maps network pixels to frame pixels.
pub fn group_cells(scores: &CellScores, min_confidence: f32, scale: (f32, f32), frame: (f32, f32)) -> Vec<Found> {
    let active = defect_cells(scores, min_confidence);
    group_defect_cells(scores, &active, scale, frame)
}

/// Per cell (row-major): whether its most likely class is a defect with probability at
/// least `min_confidence`.
pub fn defect_cells(scores: &CellScores, min_confidence: f32) -> Vec<bool> {
    let cols = scores.cols;
    let best = scores.argmax();
    (0..scores.rows * cols)
        .map(|i| best[i] != 0 && scores.probability(usize::from(best[i]), i / cols, i % cols) >= min_confidence)
        .collect()
}

/// Detections of the `active` cells, grouped as [`group_cells`] groups them.
pub fn group_defect_cells(scores: &CellScores, active: &[bool], scale: (f32, f32), frame: (f32, f32)) -> Vec<Found> {
    let mut found = Vec::new();
    for members in connected_cells(active, scores.rows, scores.cols) {
        let mut sums = vec![0f32; scores.classes];
        let mut peak = vec![0f32; scores.classes];
        for &i in &members {
            let (r, c) = (i / scores.cols, i % scores.cols);
            for (k, (sum, top)) in sums.iter_mut().zip(peak.iter_mut()).enumerate().skip(1) {
                let p = scores.probability(k, r, c);
                *sum += p;
                *top = top.max(p);
            }
        }
        let class_index = (1..scores.classes).max_by(|&a, &b| sums[a].total_cmp(&sums[b])).unwrap_or(1);
        let Some(class) = DefectClass::from_yolo_id(class_index - 1) else { continue };
        let extent = cell_extent(&members, scores.cols);
        let placed = match &scores.boxes {
            Some(boxes) => placed_box(scores, boxes, &members, class_index).unwrap_or(extent),
            None => extent,
        };
        found.push(Found {
            class,
            confidence: peak[class_index],
            bbox: to_frame(placed, scale, frame),
            area_px: members.len() as f32 * (CELL_PX * CELL_PX) as f32 * scale.0 * scale.1,
        });
    }
    found
}

/// Groups of `active` cells (row-major indices) in which each cell is at most two cells
/// from another of its group, so a thin crack whose middle cell is faint stays one.
pub fn connected_cells(active: &[bool], rows: usize, cols: usize) -> Vec<Vec<usize>> {
    connected_cells_within(active, rows, cols, 2)
}

/// Groups of `active` cells, a cell joining a group when it lies within `reach` cells of
/// one of its members (rows and columns).
pub fn connected_cells_within(active: &[bool], rows: usize, cols: usize, reach: usize) -> Vec<Vec<usize>> {
    let reach = reach as i64;
    let mut seen = vec![false; rows * cols];
    let mut groups = Vec::new();
    for start in 0..rows * cols {
        if !active[start] || seen[start] {
            continue;
        }
        seen[start] = true;
        let mut stack = vec![start];
        let mut members = Vec::new();
        while let Some(i) = stack.pop() {
            let (r, c) = (i / cols, i % cols);
            members.push(i);
            for dr in -reach..=reach {
                for dc in -reach..=reach {
                    let (nr, nc) = (r as i64 + dr, c as i64 + dc);
                    if nr < 0 || nc < 0 || nr >= rows as i64 || nc >= cols as i64 {
                        continue;
                    }
                    let j = nr as usize * cols + nc as usize;
                    if active[j] && !seen[j] {
                        seen[j] = true;
                        stack.push(j);
                    }
                }
            }
        }
        groups.push(members);
    }
    groups
}

/// The cells' extent, `[x0, y0, x1, y1]` in network pixels.
pub fn cell_extent(members: &[usize], cols: usize) -> [f32; 4] {
    let (mut r0, mut c0, mut r1, mut c1) = (usize::MAX, usize::MAX, 0, 0);
    for &i in members {
        let (r, c) = (i / cols, i % cols);
        (r0, c0, r1, c1) = (r0.min(r), c0.min(c), r1.max(r), c1.max(c));
    }
    let cell = CELL_PX as f32;
    [c0 as f32 * cell, r0 as f32 * cell, (c1 + 1) as f32 * cell, (r1 + 1) as f32 * cell]
}

/// A box in network pixels as a box in the frame's pixels (`scale` maps one to the
/// other), clipped to the frame.
pub fn to_frame([x0, y0, x1, y1]: [f32; 4], scale: (f32, f32), frame: (f32, f32)) -> BoundingBox {
    let (x0, y0) = ((x0 * scale.0).max(0.0), (y0 * scale.1).max(0.0));
    let (x1, y1) = ((x1 * scale.0).min(frame.0), (y1 * scale.1).min(frame.1));
    BoundingBox { x: x0, y: y0, width: (x1 - x0).max(1.0), height: (y1 - y0).max(1.0) }
}

/// The box head's boxes of a group's cells, averaged with the cells' probability of the
/// group's class as weights: `[x0, y0, x1, y1]` in network pixels.
fn placed_box(scores: &CellScores, boxes: &[f32], members: &[usize], class: usize) -> Option<[f32; 4]> {
    let plane = scores.rows * scores.cols;
    let cell = CELL_PX as f32;
    let (mut sum, mut total) = ([0f32; 4], 0f32);
    for &i in members {
        let (r, c) = (i / scores.cols, i % scores.cols);
        let weight = scores.probability(class, r, c);
        let centre_x = (c as f32 + 0.5 + boxes[i]) * cell;
        let centre_y = (r as f32 + 0.5 + boxes[plane + i]) * cell;
        let half_w = boxes[2 * plane + i].clamp(-8.0, 8.0).exp() * cell / 2.0;
        let half_h = boxes[3 * plane + i].clamp(-8.0, 8.0).exp() * cell / 2.0;
        for (s, v) in sum.iter_mut().zip([centre_x - half_w, centre_y - half_h, centre_x + half_w, centre_y + half_h]) {
            *s += weight * v;
        }
        total += weight;
    }
    (total > 0.0).then(|| sum.map(|s| s / total))
}

/// Resizes a planar RGB frame to `width`×`height` (area average when shrinking,
/// nearest when growing), so frames from any camera reach the network at the scale it
/// was trained on.
pub fn resize(frame: FrameView<'_>, width: usize, height: usize) -> Vec<u8> {
    let mut out = vec![0u8; 3 * width * height];
    let (sx, sy) = (frame.width as f32 / width as f32, frame.height as f32 / height as f32);
    for ch in 0..3 {
        let src = &frame.pixels[ch * frame.width * frame.height..(ch + 1) * frame.width * frame.height];
        let dst = &mut out[ch * width * height..(ch + 1) * width * height];
        for y in 0..height {
            let (ya, yb) =
                ((y as f32 * sy) as usize, (((y + 1) as f32 * sy) as usize).max((y as f32 * sy) as usize + 1));
            for x in 0..width {
                let xa = (x as f32 * sx) as usize;
                let xb = (((x + 1) as f32 * sx) as usize).max(xa + 1);
                let (mut sum, mut n) = (0u32, 0u32);
                for yy in ya..yb.min(frame.height) {
                    for xx in xa..xb.min(frame.width) {
                        sum += u32::from(src[yy * frame.width + xx]);
                        n += 1;
                    }
                }
                dst[y * width + x] = (sum + n / 2).checked_div(n).unwrap_or(0) as u8;
            }
        }
    }
    out
}

/// Rows and columns of cells for a frame the network reads at `width`×`height`.
pub fn cell_grid(width: usize, height: usize) -> (usize, usize) {
    (cells(height), cells(width))
}
