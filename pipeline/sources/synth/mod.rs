//! `synth://` cameras: the scene generator, live, through `appsrc`.
//!
//! `synth://conveyor_pulley?seed=7&fps=15&asset_id=CV-101&defects=crack@5,corrosion@20`
//! renders a conveyor pulley at 15 frames a second on which a crack appears after 5 s
//! and corrosion after 20 s.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use defectflow_models::synth::{AssetKind, Scene, planned_scene};
use defectflow_schemas::DefectClass;
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;

use super::{CameraPipeline, SourceError, TimeBase, add_raw_tail};
use crate::config::CameraConfig;

/// What a `synth://` URL asks for.
#[derive(Clone, Debug, PartialEq)]
pub struct SynthParams {
    pub asset_kind: AssetKind,
    pub seed: u64,
    pub fps: u32,
    /// Asset id shown in the scene; defaults to the asset kind.
    pub asset_id: String,
    /// Defect classes and their onsets in seconds after the camera starts.
    pub defects: Vec<(DefectClass, f64)>,
}

impl SynthParams {
    /// Parses `synth://<asset_kind>?seed=..&fps=..&asset_id=..&defects=class@onset,...`.
    pub fn parse(url: &str) -> Result<SynthParams, String> {
        let rest = url.strip_prefix("synth://").ok_or_else(|| format!("`{url}` is not a synth:// URL"))?;
        let (kind, query) = rest.split_once('?').unwrap_or((rest, ""));
        let asset_kind: AssetKind = kind.trim_end_matches('/').parse().map_err(|e| format!("{e}"))?;
        let mut params =
            SynthParams { asset_kind, seed: 1, fps: 15, asset_id: asset_kind.as_str().to_owned(), defects: Vec::new() };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').ok_or_else(|| format!("`{pair}` in `{url}` is not key=value"))?;
            let bad = |what: &str| format!("`{key}={value}` in `{url}`: {what}");
            match key {
                "seed" => params.seed = value.parse().map_err(|_| bad("expected an integer"))?,
                "fps" => {
                    params.fps =
                        value.parse().ok().filter(|f| (1..=120).contains(f)).ok_or_else(|| bad("expected 1 to 120"))?
                }
                "asset_id" => params.asset_id = value.to_owned(),
                "defects" => {
                    for item in value.split(',').filter(|i| !i.is_empty()) {
                        let (class, onset) = item.split_once('@').ok_or_else(|| bad("expected class@onset_seconds"))?;
                        let class = DefectClass::model_class(class).map_err(|e| bad(&format!("{e}")))?;
                        let onset: f64 = onset
                            .parse()
                            .ok()
                            .filter(|o: &f64| *o >= 0.0)
                            .ok_or_else(|| bad("onset must be seconds >= 0"))?;
                        params.defects.push((class, onset));
                    }
                }
                _ => return Err(format!("unknown parameter `{key}` in `{url}` (seed, fps, asset_id, defects)")),
            }
        }
        Ok(params)
    }
}

/// The thread rendering frames into a camera's `appsrc`; stops when dropped.
#[derive(Debug)]
pub struct Feeder {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Feeder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Caps of the generator's frames: packed RGB at a fixed rate.
pub(crate) fn rendered_frame_caps(width: u32, height: u32, fps: u32) -> gst::Caps {
    gst::Caps::builder("video/x-raw")
        .field("format", "RGB")
        .field("width", width as i32)
        .field("height", height as i32)
        .field("framerate", gst::Fraction::new(fps as i32, 1))
        .build()
}

/// `appsrc (RGB, live) ! videoconvert ! videoscale ! RGBP caps ! appsink`
pub fn pipeline(camera: &CameraConfig, params: &SynthParams) -> Result<CameraPipeline, SourceError> {
    let spec = planned_scene(
        &camera.id,
        &params.asset_id,
        params.asset_kind,
        (camera.width, camera.height),
        params.fps,
        params.seed,
        &params.defects,
    );
    let pipeline = gst::Pipeline::with_name(&format!("camera-{}", camera.id));
    let caps = rendered_frame_caps(camera.width, camera.height, params.fps);
    let src = gst_app::AppSrc::builder()
        .caps(&caps)
        .format(gst::Format::Time)
        .is_live(true)
        .max_buffers(4)
        .leaky_type(gst_app::AppLeakyType::Downstream)
        .build();
    pipeline.add(&src).map_err(|e| SourceError::Stream(e.to_string()))?;
    let (convert, sink) = add_raw_tail(&pipeline, camera, false)?;
    src.link(&convert).map_err(|_| SourceError::Link { from: "appsrc".into(), to: "videoconvert".into() })?;

    let stop = Arc::new(AtomicBool::new(false));
    let thread = {
        let stop = Arc::clone(&stop);
        let fps = params.fps as u64;
        std::thread::Builder::new()
            .name(format!("synth-{}", camera.id))
            .spawn(move || {
                let scene = Scene::new(spec);
                let started = Instant::now();
                let frame_ns = 1_000_000_000 / fps;
                for index in 0u64.. {
                    let due = Duration::from_nanos(index * frame_ns);
                    if let Some(wait) = due.checked_sub(started.elapsed()) {
                        std::thread::sleep(wait);
                    }
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let frame = scene.render(index);
                    let mut buffer = gst::Buffer::from_mut_slice(frame.image.pixels);
                    if let Some(b) = buffer.get_mut() {
                        b.set_pts(gst::ClockTime::from_nseconds(index * frame_ns));
                        b.set_duration(gst::ClockTime::from_nseconds(frame_ns));
                    }
                    if src.push_buffer(buffer).is_err() {
                        break;
                    }
                }
            })
            .map_err(|e| SourceError::Stream(format!("cannot start generator thread: {e}")))?
    };
    Ok(CameraPipeline {
        pipeline,
        sink,
        live: true,
        time_base: TimeBase::Pts,
        feeder: Some(Feeder { stop, thread: Some(thread) }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_parameter() {
        let p =
            SynthParams::parse("synth://gearbox?seed=9&fps=10&asset_id=GB-2&defects=crack@5,wear@12.5").expect("valid");
        assert_eq!(p.asset_kind, AssetKind::Gearbox);
        assert_eq!((p.seed, p.fps, p.asset_id.as_str()), (9, 10, "GB-2"));
        assert_eq!(p.defects, vec![(DefectClass::Crack, 5.0), (DefectClass::Wear, 12.5)]);
    }

    #[test]
    fn names_what_is_wrong() {
        for (url, needle) in [
            ("synth://boiler", "unknown asset kind `boiler`"),
            ("synth://belt?fps=0", "fps=0"),
            ("synth://belt?defects=dent@3", "unknown defect class `dent`"),
            ("synth://belt?colour=red", "unknown parameter `colour`"),
        ] {
            let err = SynthParams::parse(url).expect_err(url);
            assert!(err.contains(needle), "{url}: {err}");
        }
    }
}
