//! One defect, one work order, across cameras: where two cameras' ROIs share a region of
//! an asset (`region` in cameras.json, each ROI spanning it edge to edge or mapped into it
//! by its `homography`), a confirmed track of one camera at the place in
//! the region where another camera's open work order of the same class is becomes a view
//! of that work order (`other_views`) instead of opening another.

use defectflow_schemas::{BoundingBox, Camera, DefectTrack, Roi, View};

use super::*;

impl Ledger {
    /// A camera's ROIs replaced (`diff > 0`) or removed.
    pub(super) fn apply_camera(&mut self, camera: &Camera, diff: isize) {
        if diff > 0 {
            self.rois.insert(camera.camera_id.clone(), camera.rois.clone());
        } else if self.rois.get(&camera.camera_id).is_some_and(|rois| *rois == camera.rois) {
            self.rois.remove(&camera.camera_id);
        }
    }
}

/// The shared region a track's box lies in, and the box in the region's coordinates
/// (0 to 1 across the surface), where its camera's ROI names one: through the ROI's
/// homography (the box around its four corners' images), or across its rectangle.
fn region_of<'a>(rois: &'a HashMap<String, Vec<Roi>>, track: &DefectTrack) -> Option<(&'a str, BoundingBox)> {
    let (cx, cy) = track.bbox.center();
    let roi = rois
        .get(&track.camera_id)?
        .iter()
        .find(|roi| roi.asset_id == track.asset_id && roi.region.is_some() && roi.contains(cx, cy))?;
    let b = &track.bbox;
    let normal = if roi.homography.is_some() {
        let corners = [(b.x, b.y), (b.x + b.width, b.y), (b.x, b.y + b.height), (b.x + b.width, b.y + b.height)];
        let mapped: Vec<(f32, f32)> = corners.iter().map(|&(x, y)| roi.to_region(x, y)).collect::<Option<_>>()?;
        let (mut left, mut top) = (f32::INFINITY, f32::INFINITY);
        let (mut right, mut bottom) = (f32::NEG_INFINITY, f32::NEG_INFINITY);
        for (u, v) in mapped {
            (left, top, right, bottom) = (left.min(u), top.min(v), right.max(u), bottom.max(v));
        }
        BoundingBox { x: left, y: top, width: right - left, height: bottom - top }
    } else {
        let (w, h) = (roi.width.max(1) as f32, roi.height.max(1) as f32);
        BoundingBox {
            x: (b.x - roi.x as f32) / w,
            y: (b.y - roi.y as f32) / h,
            width: b.width / w,
            height: b.height / h,
        }
    };
    Some((roi.region.as_deref()?, normal))
}

/// The open work order another camera made for the defect `track` shows, if the two
/// cameras share the region it lies in and the boxes meet there (a work order this
/// camera already views too: its track lapsed, and this one takes the view over).
pub(super) fn seen_by_another_camera(
    rois: &HashMap<String, Vec<Roi>>,
    orders: &BTreeMap<String, Order>,
    track: &DefectTrack,
) -> Option<String> {
    let (region, here) = region_of(rois, track)?;
    // Two calibrations rarely agree to the pixel: each box is widened by its own size
    // (at least a tenth of the region) before they must meet.
    let widen = |b: BoundingBox| {
        let (dx, dy) = (b.width.max(0.1), b.height.max(0.1));
        BoundingBox { x: b.x - dx / 2.0, y: b.y - dy / 2.0, width: b.width + dx, height: b.height + dy }
    };
    orders
        .values()
        .filter(|o| o.is_open() && o.scored.track.camera_id != track.camera_id)
        .filter(|o| o.scored.track.asset_id == track.asset_id && o.scored.track.class == track.class)
        .find(|o| {
            region_of(rois, &o.scored.track)
                .is_some_and(|(theirs, there)| theirs == region && widen(there).iou(&widen(here)) > 0.0)
        })
        .map(|o| o.work_order_id.clone())
}

/// The view of a defect a track gives.
pub(super) fn view_of(track: &DefectTrack) -> View {
    View { camera_id: track.camera_id.clone(), track_id: track.track_id.clone(), evidence: track.evidence.clone() }
}
