//! `synth://` cameras: the scene generator, live, through `appsrc`.
//!
//! `synth://conveyor_pulley?seed=7&fps=15&asset_id=CV-101&defects=crack@5,corrosion@20`
//! renders a conveyor pulley at 15 frames a second on which a crack appears after 5 s
//! and corrosion after 20 s.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use defectflow_models::synth::{Scene, planned_scene};
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;

use super::{CameraPipeline, SourceError, TimeBase, add_raw_tail};
use crate::config::{CameraConfig, SynthParams};

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
        gate: None,
    })
}
