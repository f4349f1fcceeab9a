//! Synthetic plant footage: deterministic scenes of plant assets with defects that
//! appear at a known time and grow at a known rate, plus their YOLO labels and ground truth.

mod assets;
mod defects;
pub mod raster;

use defectflow_schemas::{BoundingBox, DefectClass};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

pub use assets::{AssetKind, AssetRegion, UnknownAssetKind};
pub use defects::{DefectSpec, DefectTones};
use raster::{Canvas, hash};

/// Everything needed to render one synthetic camera, deterministically.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SceneSpec {
    pub camera_id: String,
    pub asset_id: String,
    pub asset_kind: AssetKind,
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    pub seed: u64,
    pub defects: Vec<DefectSpec>,
}

/// A defect visible in a rendered frame.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Label {
    pub defect_id: String,
    pub class: DefectClass,
    pub bbox: BoundingBox,
}

impl Label {
    /// The YOLO label line: class id, then centre and size normalised to the frame.
    pub fn yolo_line(&self, width: u32, height: u32) -> String {
        let (w, h) = (width as f32, height as f32);
        let b = &self.bbox;
        format!(
            "{} {:.6} {:.6} {:.6} {:.6}",
            self.class.yolo_id(),
            (b.x + b.width / 2.0) / w,
            (b.y + b.height / 2.0) / h,
            b.width / w,
            b.height / h
        )
    }
}

/// One rendered frame and the defects it shows.
#[derive(Clone, Debug)]
pub struct RenderedFrame {
    pub image: Canvas,
    pub labels: Vec<Label>,
}

/// A scene ready to render: the static background and asset are drawn once.
#[derive(Clone, Debug)]
pub struct Scene {
    spec: SceneSpec,
    base: Canvas,
    region: AssetRegion,
    tones: DefectTones,
}

/// Largest camera shake, in pixels of the reference view, in each direction.
const JITTER_PX: i32 = 2;

impl Scene {
    pub fn new(spec: SceneSpec) -> Scene {
        let (base, region) = assets::draw_scene(spec.asset_kind, spec.width, spec.height, spec.seed);
        Scene { spec, base, region, tones: DefectTones::Fixed }
    }

    /// The same scene with its cracks and stains drawn at `tones`; at
    /// [`DefectTones::Varied`], with dark lines that are not defects in its background
    /// too (grooves, seams, cables), as dark as its cracks.
    pub fn with_defect_tones(mut self, tones: DefectTones) -> Scene {
        if tones == DefectTones::Varied {
            defects::draw_lookalikes(&mut self.base, self.spec.seed);
        }
        Scene { tones, ..self }
    }

    pub fn spec(&self) -> &SceneSpec {
        &self.spec
    }

    /// The frame region the asset occupies.
    pub fn asset_region(&self) -> AssetRegion {
        self.region
    }

    /// Renders frame `frame_index` (time = index / fps).
    pub fn render(&self, frame_index: u64) -> RenderedFrame {
        let spec = &self.spec;
        let t_s = frame_index as f64 / spec.fps.max(1) as f64;
        let shake = hash(spec.seed ^ frame_index.wrapping_mul(0x51_7CC1_B727_220A));
        let reach = (JITTER_PX as f32 * self.base.unit()).round() as i32;
        let jx = (shake % (2 * reach as u64 + 1)) as i32 - reach;
        let jy = ((shake >> 8) % (2 * reach as u64 + 1)) as i32 - reach;
        let mut image = self.shifted_base(jx, jy);
        let mut labels = Vec::new();
        for defect in &spec.defects {
            match defect.size_at(t_s) {
                Some(size) => {
                    let bbox = defects::draw_defect(&mut image, defect, size, (jx as f32, jy as f32), self.tones);
                    if let Some(bbox) = clip(bbox, spec.width, spec.height) {
                        labels.push(Label { defect_id: defect.defect_id.clone(), class: defect.class, bbox });
                    }
                }
                None if defect.class == DefectClass::MissingComponent => {
                    let [cx, cy] = defect.center;
                    defects::draw_bolt(&mut image, cx + jx as f32, cy + jy as f32, defect.initial_size_px);
                }
                None => {}
            }
        }
        apply_lighting(&mut image, spec.seed, frame_index, t_s);
        RenderedFrame { image, labels }
    }

    fn shifted_base(&self, jx: i32, jy: i32) -> Canvas {
        let (w, h) = (self.base.width as i32, self.base.height as i32);
        let mut out =
            Canvas { width: self.base.width, height: self.base.height, pixels: vec![0; self.base.pixels.len()] };
        for y in 0..h {
            let sy = (y - jy).clamp(0, h - 1);
            for x in 0..w {
                let sx = (x - jx).clamp(0, w - 1);
                let (s, d) = (((sy * w + sx) * 3) as usize, ((y * w + x) * 3) as usize);
                out.pixels[d..d + 3].copy_from_slice(&self.base.pixels[s..s + 3]);
            }
        }
        out
    }
}

/// Slow light drift, a little per-frame flicker and sensor noise.
fn apply_lighting(image: &mut Canvas, seed: u64, frame_index: u64, t_s: f64) {
    let flicker = (hash(seed ^ frame_index ^ 0xF11C) % 1000) as f64 / 1000.0 - 0.5;
    let gain = (1.0 + 0.06 * (t_s * std::f64::consts::TAU / 7.0).sin() + 0.04 * flicker) as f32;
    let mut state = hash(seed.rotate_left(17) ^ frame_index) | 1;
    for px in image.pixels.iter_mut() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let noise = (state % 11) as f32 - 5.0;
        *px = (*px as f32 * gain + noise).clamp(0.0, 255.0) as u8;
    }
}

fn clip(b: BoundingBox, width: u32, height: u32) -> Option<BoundingBox> {
    let x0 = b.x.max(0.0);
    let y0 = b.y.max(0.0);
    let x1 = (b.x + b.width).min(width as f32);
    let y1 = (b.y + b.height).min(height as f32);
    (x1 - x0 >= 1.0 && y1 - y0 >= 1.0).then_some(BoundingBox { x: x0, y: y0, width: x1 - x0, height: y1 - y0 })
}

/// How to draw a random plant.
#[derive(Clone, Debug)]
pub struct PlantOptions {
    pub seed: u64,
    pub cameras: usize,
    /// Cameras (counted from the last) that show no defect at all.
    pub defect_free_cameras: usize,
    pub duration_s: f64,
    pub fps: u32,
    pub width: u32,
    pub height: u32,
}

/// Draws a plant of synthetic cameras: assets cycle through every kind and defect
/// classes through every class, so a handful of cameras covers all six.
pub fn random_plant(options: &PlantOptions) -> Vec<SceneSpec> {
    let mut rng = ChaCha8Rng::seed_from_u64(options.seed);
    let mut next_class = (options.seed % DefectClass::ALL.len() as u64) as usize;
    (0..options.cameras)
        .map(|i| {
            let camera_id = format!("cam-{:02}", i + 1);
            let asset_kind = AssetKind::ALL[(i + options.seed as usize) % AssetKind::ALL.len()];
            let mut spec = SceneSpec {
                camera_id: camera_id.clone(),
                asset_id: format!("A-{:03}-{}", i + 1, asset_kind.as_str().to_uppercase().replace('_', "-")),
                asset_kind,
                width: options.width,
                height: options.height,
                fps: options.fps,
                seed: rng.random(),
                defects: Vec::new(),
            };
            let defect_free = i >= options.cameras.saturating_sub(options.defect_free_cameras);
            if !defect_free {
                let region = Scene::new(spec.clone()).asset_region();
                let count = if rng.random_bool(0.35) { 2 } else { 1 };
                for d in 0..count {
                    let class = DefectClass::ALL[next_class % DefectClass::ALL.len()];
                    next_class += 1;
                    spec.defects.push(random_defect(&mut rng, &camera_id, d, count, class, region, options));
                }
            }
            spec
        })
        .collect()
}

fn random_defect(
    rng: &mut ChaCha8Rng,
    camera_id: &str,
    index: usize,
    count: usize,
    class: DefectClass,
    region: AssetRegion,
    options: &PlantOptions,
) -> DefectSpec {
    // Two defects on one asset sit in different halves so they never overlap.
    let slot_width = region.width / count as f32;
    let margin = 0.25;
    let x = region.x + slot_width * (index as f32 + rng.random_range(margin..1.0 - margin));
    let y = region.y + region.height * rng.random_range(margin..1.0 - margin);
    let (initial, growth, max) = match class {
        DefectClass::MissingComponent => (14.0, 0.0, 14.0),
        DefectClass::Misalignment => (6.0, rng.random_range(0.3..1.0), 24.0),
        _ => (rng.random_range(10.0..16.0), rng.random_range(0.5..2.0), rng.random_range(36.0..70.0)),
    };
    // Sizes are drawn for the reference view; a wider camera sees them larger.
    let u = raster::unit(options.width);
    DefectSpec {
        defect_id: format!("{camera_id}-d{index}"),
        class,
        onset_s: (options.duration_s * rng.random_range(0.1..0.45) * 10.0).round() / 10.0,
        initial_size_px: initial * u,
        growth_px_per_s: growth * u,
        max_size_px: max * u,
        center: [x.round(), y.round()],
        shape_seed: rng.random(),
    }
}

/// A scene with chosen defects: classes and onsets are given, placement, size and
/// growth are drawn from `seed` exactly as for a random plant.
#[allow(clippy::too_many_arguments)]
pub fn planned_scene(
    camera_id: &str,
    asset_id: &str,
    asset_kind: AssetKind,
    (width, height): (u32, u32),
    fps: u32,
    seed: u64,
    defects: &[(DefectClass, f64)],
) -> SceneSpec {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut spec = SceneSpec {
        camera_id: camera_id.to_owned(),
        asset_id: asset_id.to_owned(),
        asset_kind,
        width,
        height,
        fps,
        seed,
        defects: Vec::new(),
    };
    let region = Scene::new(spec.clone()).asset_region();
    let options = PlantOptions { seed, cameras: 1, defect_free_cameras: 0, duration_s: 1.0, fps, width, height };
    for (index, &(class, onset_s)) in defects.iter().enumerate() {
        let mut defect = random_defect(&mut rng, camera_id, index, defects.len(), class, region, &options);
        defect.onset_s = onset_s;
        spec.defects.push(defect);
    }
    spec
}

/// The ground truth of a footage set, written as `ground_truth.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GroundTruth {
    pub seed: u64,
    pub fps: u32,
    pub width: u32,
    pub height: u32,
    pub duration_s: f64,
    pub cameras: Vec<CameraTruth>,
}

/// One camera of the ground truth: its scene, video file and frame count.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CameraTruth {
    #[serde(flatten)]
    pub scene: SceneSpec,
    /// Video file, relative to the ground-truth file.
    pub video: String,
    pub frames: u64,
}

impl GroundTruth {
    /// First frame index at which the defect is visible.
    pub fn onset_frame(defect: &DefectSpec, fps: u32) -> u64 {
        (defect.onset_s * fps as f64).ceil() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> PlantOptions {
        PlantOptions {
            seed: 11,
            cameras: 7,
            defect_free_cameras: 1,
            duration_s: 20.0,
            fps: 10,
            width: 320,
            height: 180,
        }
    }

    #[test]
    fn the_same_seed_draws_the_same_frames() {
        let plant = random_plant(&options());
        assert_eq!(plant, random_plant(&options()));
        let a = Scene::new(plant[0].clone()).render(150);
        let b = Scene::new(plant[0].clone()).render(150);
        assert_eq!(a.image, b.image);
        assert_eq!(a.labels, b.labels);
    }

    #[test]
    fn every_class_appears_and_the_last_camera_is_defect_free() {
        let plant = random_plant(&options());
        let mut classes: Vec<_> = plant.iter().flat_map(|s| s.defects.iter().map(|d| d.class)).collect();
        classes.sort();
        classes.dedup();
        assert_eq!(classes, DefectClass::ALL.to_vec());
        assert!(plant.last().expect("cameras").defects.is_empty());
    }

    #[test]
    fn defects_are_labelled_from_onset_and_grow() {
        let plant = random_plant(&options());
        let spec = plant.iter().find(|s| s.defects.iter().any(|d| d.growth_px_per_s > 0.5)).expect("a growing defect");
        let defect = spec.defects.iter().find(|d| d.growth_px_per_s > 0.5).expect("growing");
        let scene = Scene::new(spec.clone());
        let onset = GroundTruth::onset_frame(defect, spec.fps);
        let labelled = |f: u64| scene.render(f).labels.into_iter().find(|l| l.defect_id == defect.defect_id);
        assert!(labelled(onset.saturating_sub(1)).is_none(), "visible before onset");
        let early = labelled(onset).expect("visible at onset");
        let late = labelled(onset + 5 * spec.fps as u64).expect("still visible");
        assert!(late.bbox.area() > early.bbox.area(), "{early:?} did not grow into {late:?}");
    }

    #[test]
    fn a_wider_view_of_the_same_plant_sees_its_defects_in_proportion() {
        // One plant at the reference width and at 1080p: the same defects, three times
        // as many pixels across (a crack as long, a bolt as wide, relative to the view).
        let at = |width, height| random_plant(&PlantOptions { width, height, ..options() });
        let (reference, wide) = (at(640, 360), at(1920, 1080));
        let mut compared = 0;
        for (a, b) in reference.iter().zip(&wide) {
            let (sa, sb) = (Scene::new(a.clone()), Scene::new(b.clone()));
            for (da, db) in a.defects.iter().zip(&b.defects) {
                assert_eq!((da.class, da.initial_size_px * 3.0), (db.class, db.initial_size_px));
                let frame = GroundTruth::onset_frame(da, a.fps) + 5 * a.fps as u64;
                let label = |scene: &Scene, id: &str| {
                    scene.render(frame).labels.into_iter().find(|l| l.defect_id == id).map(|l| l.bbox)
                };
                let (Some(la), Some(lb)) = (label(&sa, &da.defect_id), label(&sb, &db.defect_id)) else {
                    continue;
                };
                let ratio = (lb.width * lb.height / (la.width * la.height)).sqrt();
                assert!((2.5..3.5).contains(&ratio), "{:?} is {ratio}x as large at 1080p", da.class);
                compared += 1;
            }
        }
        assert!(compared >= 6, "{compared} defects compared");
    }

    #[test]
    fn a_defect_changes_the_pixels_under_its_label() {
        let spec = SceneSpec {
            camera_id: "cam-x".into(),
            asset_id: "A".into(),
            asset_kind: AssetKind::PipeSection,
            width: 320,
            height: 180,
            fps: 10,
            seed: 5,
            defects: vec![DefectSpec {
                defect_id: "cam-x-d0".into(),
                class: DefectClass::Crack,
                onset_s: 1.0,
                initial_size_px: 40.0,
                growth_px_per_s: 0.0,
                max_size_px: 40.0,
                center: [160.0, 90.0],
                shape_seed: 9,
            }],
        };
        let scene = Scene::new(spec);
        let label = scene.render(10).labels.pop().expect("crack labelled");
        let dark = |f: u64| {
            let img = scene.render(f).image;
            let b = label.bbox;
            let mut n = 0;
            for y in b.y as i32..(b.y + b.height) as i32 {
                for x in b.x as i32..(b.x + b.width) as i32 {
                    if img.get(x, y).is_some_and(|p| p.iter().all(|&c| c < 40)) {
                        n += 1;
                    }
                }
            }
            n
        };
        assert!(dark(10) > 30 + dark(0), "crack pixels: {} vs clear {}", dark(10), dark(0));
        assert_eq!(label.yolo_line(320, 180).split(' ').next(), Some("0"));
    }
}
