//! Pieces of one defect seen apart in a frame become one detection: a crack whose middle
//! is too faint for the model, or a stain found as several patches, is one defect.

use defectflow_schemas::{BoundingBox, DefectClass, Detection};

/// The gap between two boxes, in pixels: 0 when they touch or overlap, else the larger
/// of the horizontal and vertical distances between their edges.
pub fn gap(a: &BoundingBox, b: &BoundingBox) -> f32 {
    let dx = (b.x - (a.x + a.width)).max(a.x - (b.x + b.width)).max(0.0);
    let dy = (b.y - (a.y + a.height)).max(a.y - (b.y + b.height)).max(0.0);
    dx.max(dy)
}

/// The smallest box holding both.
pub fn union(a: &BoundingBox, b: &BoundingBox) -> BoundingBox {
    let (x0, y0) = (a.x.min(b.x), a.y.min(b.y));
    let (x1, y1) = ((a.x + a.width).max(b.x + b.width), (a.y + a.height).max(b.y + b.height));
    BoundingBox { x: x0, y: y0, width: x1 - x0, height: y1 - y0 }
}

/// Detections of one frame with those whose boxes lie within `max_gap_px` of each other
/// (directly or through others) and `same_region` says belong together joined into one:
/// the union of their boxes, the sum of their areas, the highest confidence, and the
/// class that covers the most area, a named class before `unknown`. Order: by the first
/// member's position in `detections`.
///
/// # Examples
/// ```
/// use defectflow_operators::fragments::merge_fragments;
/// use defectflow_schemas::{BoundingBox, DefectClass, Detection};
/// let piece = |x: f32| Detection {
///     camera_id: "cam".into(), frame_index: 0, capture_ms: 0, class: DefectClass::Crack,
///     confidence: 0.8, bbox: BoundingBox { x, y: 100.0, width: 30.0, height: 6.0 },
///     area_px: 128.0, model_version: "m".into(), shadow: false,
/// };
/// // Three pieces of a crack, 16 px apart, and something far away.
/// let merged = merge_fragments(&[piece(100.0), piece(146.0), piece(192.0), piece(500.0)], 24.0, |_, _| true);
/// assert_eq!(merged.len(), 2);
/// assert_eq!(merged[0].bbox, BoundingBox { x: 100.0, y: 100.0, width: 122.0, height: 6.0 });
/// assert_eq!(merged[0].area_px, 384.0);
/// ```
pub fn merge_fragments(
    detections: &[Detection],
    max_gap_px: f32,
    same_region: impl Fn(&Detection, &Detection) -> bool,
) -> Vec<Detection> {
    let n = detections.len();
    let mut group: Vec<usize> = (0..n).collect();
    fn root(group: &mut [usize], mut i: usize) -> usize {
        while group[i] != i {
            group[i] = group[group[i]];
            i = group[i];
        }
        i
    }
    for i in 0..n {
        for j in i + 1..n {
            let (a, b) = (&detections[i], &detections[j]);
            if gap(&a.bbox, &b.bbox) <= max_gap_px && same_region(a, b) {
                let (ri, rj) = (root(&mut group, i), root(&mut group, j));
                group[ri.max(rj)] = ri.min(rj);
            }
        }
    }
    // (the group's first member, the joined detection, area by class)
    let mut merged: Vec<(usize, Detection, ClassAreas)> = Vec::new();
    for (i, detection) in detections.iter().enumerate() {
        let r = root(&mut group, i);
        match merged.iter_mut().find(|(first, ..)| *first == r) {
            Some((_, joined, areas)) => {
                joined.bbox = union(&joined.bbox, &detection.bbox);
                joined.area_px += detection.area_px;
                joined.confidence = joined.confidence.max(detection.confidence);
                add_area(areas, detection.class, detection.area_px);
            }
            None => merged.push((r, detection.clone(), vec![(detection.class, detection.area_px)])),
        }
    }
    merged
        .into_iter()
        .map(|(_, mut joined, areas)| {
            let named = areas.iter().filter(|(c, _)| *c != DefectClass::Unknown);
            let widest = |best: Option<(DefectClass, f32)>, &(c, a): &(DefectClass, f32)| match best {
                Some((_, top)) if top >= a => best,
                _ => Some((c, a)),
            };
            if let Some((class, _)) = named.fold(None, widest) {
                joined.class = class;
            }
            joined
        })
        .collect()
}

/// Area of a joined detection by class.
type ClassAreas = Vec<(DefectClass, f32)>;

fn add_area(areas: &mut ClassAreas, class: DefectClass, area: f32) {
    match areas.iter_mut().find(|(c, _)| *c == class) {
        Some((_, total)) => *total += area,
        None => areas.push((class, area)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(class: DefectClass, x: f32, width: f32) -> Detection {
        Detection {
            camera_id: "cam".into(),
            frame_index: 0,
            capture_ms: 0,
            class,
            confidence: 0.7,
            bbox: BoundingBox { x, y: 50.0, width, height: 10.0 },
            area_px: width * 10.0,
            model_version: "m".into(),
            shadow: false,
        }
    }

    #[test]
    fn pieces_of_a_crack_become_one_detection_of_the_class_with_most_area() {
        let pieces = [found(DefectClass::Crack, 0.0, 40.0), found(DefectClass::Wear, 50.0, 10.0)];
        let merged = merge_fragments(&pieces, 24.0, |_, _| true);
        assert_eq!(merged.len(), 1);
        assert_eq!(merged[0].class, DefectClass::Crack);
        assert_eq!(merged[0].area_px, 500.0);
    }

    #[test]
    fn a_named_class_wins_over_unknown_whatever_its_area() {
        let pieces = [found(DefectClass::Unknown, 0.0, 80.0), found(DefectClass::Corrosion, 90.0, 10.0)];
        let merged = merge_fragments(&pieces, 24.0, |_, _| true);
        assert_eq!(merged.iter().map(|d| d.class).collect::<Vec<_>>(), vec![DefectClass::Corrosion]);
    }

    #[test]
    fn pieces_in_different_regions_or_far_apart_stay_apart() {
        let pieces = [found(DefectClass::Crack, 0.0, 40.0), found(DefectClass::Crack, 50.0, 10.0)];
        assert_eq!(merge_fragments(&pieces, 24.0, |_, _| false).len(), 2);
        assert_eq!(merge_fragments(&pieces, 5.0, |_, _| true).len(), 2);
    }

    #[test]
    fn the_gap_between_boxes_is_the_larger_edge_distance() {
        let a = BoundingBox { x: 0.0, y: 0.0, width: 10.0, height: 10.0 };
        assert_eq!(gap(&a, &BoundingBox { x: 15.0, y: 30.0, width: 5.0, height: 5.0 }), 20.0);
        assert_eq!(gap(&a, &BoundingBox { x: 5.0, y: 5.0, width: 10.0, height: 10.0 }), 0.0);
    }
}
