//! Change gating: a frame of a fixed camera that looks as the camera's last scored
//! frame did skips the network and repeats that frame's detections (a defect still
//! there stays seen, its track alive; a clear view stays clear). Only a steady answer
//! is repeated: the last two scored frames must have found the same classes, so a
//! detection the model makes in some frames and not others (a faint defect) keeps
//! being scored frame by frame, as without gating, until it settles. A frame is compared
//! with the last *scored* one, not the one before it, so a slow change (a crack
//! growing, rust spreading) adds up until it is scored; and every camera is scored
//! again at least every `rescore_ms` whatever it shows, which bounds how long a change
//! under the threshold can hide.
//!
//! The comparison is over the means of 8×8-pixel blocks (the network's cells), all
//! channels together: sensor noise and codec grain average out within a block, while
//! a defect changes the blocks it covers. The scored frame's blocks are first brought
//! to the new frame's overall brightness (one gain: exposure and mains flicker move
//! every block together) and the camera's shake is undone (a shift of up to 4 pixels
//! each way, found by laying the frames' column and row sums over each other, as
//! projection-based global motion estimation does); a frame is unchanged when no block
//! then differs by more than `threshold` (0–255).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use defectflow_models::change::Look;
use defectflow_models::inference::Found;
use defectflow_schemas::DefectClass;

use crate::decode::FrameTensor;

/// `[model] change_threshold` and `rescore_s`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ChangeConfig {
    /// Largest move of a block's mean (0–255) that leaves a frame unchanged.
    pub threshold: f32,
    /// A camera's frames are scored at least this often.
    pub rescore_ms: u64,
}

/// What becomes of one frame of a batch.
#[derive(Clone, Debug, PartialEq)]
pub enum Plan {
    /// Through the network.
    Score,
    /// Unchanged: the detections of the camera's last scored frame.
    Same(Vec<(Found, bool)>),
}

/// The classes a frame's detections name, each once (what makes two answers agree: a
/// defect seen in one piece or in two is the same answer).
fn classes(found: &[(Found, bool)]) -> Vec<DefectClass> {
    let mut classes: Vec<DefectClass> = found.iter().map(|(f, _)| f.class).collect();
    classes.sort();
    classes.dedup();
    classes
}

/// Each camera's last scored frame, shared by the inference threads. Cheap to clone.
#[derive(Clone, Debug)]
pub struct ChangeGates {
    config: ChangeConfig,
    cameras: Arc<Mutex<HashMap<String, Scored>>>,
    /// Frames that skipped the network, per camera.
    unchanged: Arc<Mutex<HashMap<String, u64>>>,
}

impl PartialEq for ChangeGates {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.cameras, &other.cameras)
    }
}

/// A camera's last scored frame.
#[derive(Debug)]
struct Scored {
    size: (usize, usize),
    look: Look,
    capture_ms: u64,
    found: Vec<(Found, bool)>,
    /// `found` is the network's answer (not still being computed on another thread).
    settled: bool,
    /// The classes the scored frame before it found, if its answer was known then.
    before: Option<Vec<DefectClass>>,
    /// It found the classes the scored frame before it found: the model's answer for
    /// this view is steady, and worth repeating.
    steady: bool,
}

impl ChangeGates {
    pub fn new(config: ChangeConfig) -> ChangeGates {
        ChangeGates { config, cameras: Arc::default(), unchanged: Arc::default() }
    }

    /// Forgets every camera's last scored frame: a new model scores each camera's next
    /// frame, so no old model's answer is repeated under the new one's version.
    pub fn forget(&self) {
        self.cameras.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// Which frames of a batch go through the network. `always` names cameras every
    /// frame of which must be scored (commissioning learns from each).
    pub fn plan(&self, frames: &[&FrameTensor], always: impl Fn(&str) -> bool) -> Vec<Plan> {
        let mut cameras = self.cameras.lock().unwrap_or_else(|p| p.into_inner());
        let mut unchanged = self.unchanged.lock().unwrap_or_else(|p| p.into_inner());
        let mut plans = Vec::with_capacity(frames.len());
        for frame in frames {
            let meta = &frame.meta;
            let camera = meta.camera_id.as_str();
            if always(camera) {
                cameras.remove(camera);
                plans.push(Plan::Score);
                continue;
            }
            let size = (meta.width as usize, meta.height as usize);
            let look = Look::of(frame.bytes(), size);
            let same = cameras.get(camera).is_some_and(|last| {
                let since = meta.capture_ms.checked_sub(last.capture_ms);
                // What the scored frame found must be known, and steady, to repeat it.
                last.settled
                    && last.steady
                    && last.size == size
                    && since.is_some_and(|ms| ms < self.config.rescore_ms)
                    && last.look.same_as(frame.bytes(), &look, size, self.config.threshold)
            });
            if let Some(last) = cameras.get(camera).filter(|_| same) {
                plans.push(Plan::Same(last.found.clone()));
                *unchanged.entry(camera.to_owned()).or_default() += 1;
            } else {
                let before = cameras.get(camera).filter(|last| last.settled).map(|last| classes(&last.found));
                let (capture_ms, found) = (meta.capture_ms, Vec::new());
                let scored = Scored { size, look, capture_ms, found, settled: false, before, steady: false };
                cameras.insert(camera.to_owned(), scored);
                plans.push(Plan::Score);
            }
        }
        plans
    }

    /// Keeps what the network found in the camera's latest scored frame (of a batch
    /// planned with [`ChangeGates::plan`]), for the unchanged frames after it.
    pub fn scored(&self, camera_id: &str, capture_ms: u64, found: &[(Found, bool)]) {
        let mut cameras = self.cameras.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(last) = cameras.get_mut(camera_id).filter(|last| last.capture_ms == capture_ms) {
            last.found = found.to_vec();
            last.settled = true;
            last.steady = last.before.as_ref() == Some(&classes(found));
        }
    }

    /// Frames that skipped the network, per camera, sorted by camera.
    pub fn unchanged(&self) -> Vec<(String, u64)> {
        let unchanged = self.unchanged.lock().unwrap_or_else(|p| p.into_inner());
        let mut all: Vec<(String, u64)> = unchanged.iter().map(|(c, n)| (c.clone(), *n)).collect();
        all.sort();
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use defectflow_models::change::{block_means, within};
    use defectflow_schemas::FrameMeta;

    fn frame(index: u64, capture_ms: u64, paint: impl Fn(usize, usize) -> u8) -> FrameTensor {
        let (w, h) = (20, 12);
        let mut data = vec![0u8; 3 * w * h];
        for c in 0..3 {
            for y in 0..h {
                for x in 0..w {
                    data[c * w * h + y * w + x] = paint(x, y);
                }
            }
        }
        let meta = FrameMeta {
            camera_id: "cam".into(),
            frame_index: index,
            capture_ms,
            pts_ns: None,
            width: w as u32,
            height: h as u32,
        };
        FrameTensor { meta, data: Arc::new(data) }
    }

    /// Unchanged, repeating a frame that found nothing.
    fn same() -> Plan {
        Plan::Same(Vec::new())
    }

    /// Plans each frame as a batch of its own and settles it as the inference thread
    /// does once the network has run (finding nothing).
    fn plan(gates: &ChangeGates, frames: &[&FrameTensor]) -> Vec<Plan> {
        (frames.iter())
            .map(|frame| {
                let plan = gates.plan(&[frame], |_| false).remove(0);
                if plan == Plan::Score {
                    gates.scored(&frame.meta.camera_id, frame.meta.capture_ms, &[]);
                }
                plan
            })
            .collect()
    }

    #[test]
    fn block_means_cover_partial_blocks() {
        let f = frame(0, 0, |x, y| if x >= 16 && y >= 8 { 200 } else { 50 });
        let means = block_means(f.bytes(), (20, 12), (0, 0));
        assert_eq!(means.len(), 3 * 2);
        assert_eq!(means, vec![50.0, 50.0, 50.0, 50.0, 50.0, 200.0]);
    }

    #[test]
    fn noise_is_unchanged_a_spot_is_a_change_and_a_slow_drift_adds_up() {
        let gates = ChangeGates::new(ChangeConfig { threshold: 6.0, rescore_ms: 10_000 });
        let noisy = |i: u64, at: u64| frame(i, at, move |x, y| 100 + ((x * 7 + y * 3 + i as usize) % 5) as u8);
        let frames = [noisy(0, 0), noisy(1, 100), noisy(2, 200)];
        let refs: Vec<&FrameTensor> = frames.iter().collect();
        // The second frame is scored too: two answers agreeing make one worth repeating.
        assert_eq!(plan(&gates, &refs), vec![Plan::Score, Plan::Score, same()]);
        // A spot in one block; then frames like the spotted one.
        let spot = |i: u64, at: u64| frame(i, at, move |x, y| if (8..12).contains(&x) && y < 4 { 220 } else { 100 });
        let frames = [spot(3, 300), spot(4, 400), spot(5, 500)];
        let refs: Vec<&FrameTensor> = frames.iter().collect();
        assert_eq!(plan(&gates, &refs), vec![Plan::Score, same(), same()]);
        // A stain darkening one block by 4 a frame: each step is within the threshold,
        // two are not.
        let plans: Vec<Plan> = (1..=3)
            .map(|k| {
                let f = frame(5 + k, 500 + k * 100, move |x, y| match (x, y) {
                    (8..12, 0..4) => 220,
                    (8..16, 8..) => 100 - 4 * k as u8,
                    _ => 100,
                });
                plan(&gates, &[&f]).remove(0)
            })
            .collect();
        assert_eq!(plans, vec![same(), Plan::Score, same()]);
        assert_eq!(gates.unchanged().iter().map(|(_, n)| n).sum::<u64>(), 5);
        assert_eq!(gates.unchanged(), vec![("cam".to_owned(), 5)]);
    }

    #[test]
    fn a_change_of_the_light_over_the_whole_view_is_no_change() {
        let gates = ChangeGates::new(ChangeConfig { threshold: 6.0, rescore_ms: 10_000 });
        let lit = |i: u64, gain: f32| {
            frame(i, i * 100, move |x, y| ((if x < 10 { 80.0 } else { 160.0 } + y as f32) * gain) as u8)
        };
        let frames = [lit(0, 1.0), lit(1, 1.0), lit(2, 1.08), lit(3, 0.93)];
        let refs: Vec<&FrameTensor> = frames.iter().collect();
        assert_eq!(plan(&gates, &refs), vec![Plan::Score, Plan::Score, same(), same()]);
    }

    #[test]
    fn a_shaking_camera_is_compared_with_the_shake_undone() {
        let gates = ChangeGates::new(ChangeConfig { threshold: 6.0, rescore_ms: 10_000 });
        // A view with sharp edges across and along it; shifted by up to 2 pixels.
        let view = |dx: i64, dy: i64| {
            move |x: usize, y: usize| {
                let (x, y) = (x as i64 - dx, y as i64 - dy);
                let across = if (6..11).contains(&x) || x >= 15 { 120 } else { 20 };
                let along = if (4..7).contains(&y) { 90 } else { 10 };
                across + along
            }
        };
        let frames = [
            frame(0, 0, view(0, 0)),
            frame(1, 100, view(0, 0)),
            frame(2, 200, view(2, -1)),
            frame(3, 300, view(-1, 2)),
        ];
        let refs: Vec<&FrameTensor> = frames.iter().collect();
        assert_eq!(plan(&gates, &refs), vec![Plan::Score, Plan::Score, same(), same()]);
        let raw = block_means(frames[2].bytes(), (20, 12), (0, 0));
        let before = block_means(frames[0].bytes(), (20, 12), (0, 0));
        assert!(!within(&before, &raw, 6.0), "the shake alone would look like a change");
    }

    #[test]
    fn a_camera_is_scored_again_after_rescore_ms_and_always_when_asked() {
        let gates = ChangeGates::new(ChangeConfig { threshold: 6.0, rescore_ms: 1_000 });
        let plain = |i: u64| frame(i, i * 250, |_, _| 90);
        let frames: Vec<FrameTensor> = (0..10).map(plain).collect();
        let plans: Vec<Plan> = frames.iter().map(|f| plan(&gates, &[f]).remove(0)).collect();
        let scored: Vec<u64> =
            frames.iter().zip(&plans).filter(|(_, p)| **p == Plan::Score).map(|(f, _)| f.meta.frame_index).collect();
        assert_eq!(scored, vec![0, 1, 5, 9], "every second of capture time");
        let again = gates.plan(&[&plain(10)], |camera| camera == "cam");
        assert_eq!(again, vec![Plan::Score], "a commissioning camera is scored every frame");
    }

    #[test]
    fn only_a_steady_answer_known_by_now_is_repeated() {
        let gates = ChangeGates::new(ChangeConfig { threshold: 6.0, rescore_ms: 10_000 });
        let plain = |i: u64| frame(i, i * 100, |_, _| 90);
        let crack = (
            Found {
                class: DefectClass::Crack,
                confidence: 0.9,
                bbox: defectflow_schemas::BoundingBox { x: 0.0, y: 0.0, width: 8.0, height: 8.0 },
                area_px: 64.0,
            },
            false,
        );
        let answers: [&[(Found, bool)]; 5] =
            [&[], std::slice::from_ref(&crack), &[], std::slice::from_ref(&crack), &[]];
        for (i, answer) in (0..).zip(answers) {
            let plan = gates.plan(&[&plain(i)], |_| false).remove(0);
            assert_eq!(plan, Plan::Score, "frame {i}: the model's answer flickers");
            gates.scored("cam", i * 100, answer);
        }
        // The same answer twice: steady.
        assert_eq!(gates.plan(&[&plain(5)], |_| false), vec![Plan::Score]);
        gates.scored("cam", 500, &[]);
        assert_eq!(gates.plan(&[&plain(6)], |_| false), vec![same()]);
        // A frame still with the network (another batch) is not repeated until its answer is in.
        let changed = frame(7, 700, |x, _| if x < 8 { 200 } else { 90 });
        assert_eq!(gates.plan(&[&changed], |_| false), vec![Plan::Score]);
        let like_it = frame(8, 800, |x, _| if x < 8 { 200 } else { 90 });
        assert_eq!(gates.plan(&[&like_it], |_| false), vec![Plan::Score], "frame 7 is still with the network");
        gates.scored("cam", 700, std::slice::from_ref(&crack));
        gates.scored("cam", 800, std::slice::from_ref(&crack));
        // Frame 8's answer came with nothing to agree with (frame 7's was not in yet).
        let like = |i: u64| frame(i, i * 100, |x, _| if x < 8 { 200 } else { 90 });
        assert_eq!(gates.plan(&[&like(9)], |_| false), vec![Plan::Score]);
        gates.scored("cam", 900, std::slice::from_ref(&crack));
        assert_eq!(gates.plan(&[&like(10)], |_| false), vec![Plan::Same(vec![crack])], "what frame 9 found");
    }
}
