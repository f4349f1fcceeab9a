//! `file://` cameras: recorded MP4 or MKV footage, H.264 or H.265.

use std::path::Path;

use gstreamer as gst;
use gstreamer::prelude::*;

use super::gate::{Gate, GateRecord};
use super::{CameraPipeline, SourceError, TimeBase, add_gated_decoder, add_raw_tail};
use crate::config::CameraConfig;

/// `filesrc location=PATH ! parsebin ! (keyframe gate) ! decodebin ! (max_fps gate) !
/// videoscale ! videoconvert ! RGBP caps ! appsink`
pub fn pipeline(camera: &CameraConfig, path: &Path, record: GateRecord) -> Result<CameraPipeline, SourceError> {
    if !path.is_file() {
        return Err(SourceError::Stream(format!("no such video file: {}", path.display())));
    }
    let pipeline = gst::Pipeline::with_name(&format!("camera-{}", camera.id));
    let src = gst::ElementFactory::make("filesrc")
        .property("location", path.to_string_lossy().as_ref())
        .build()
        .map_err(|_| SourceError::MissingElement { factory: "filesrc", hint: "gstreamer1.0 core" })?;
    pipeline.add(&src).map_err(|e| SourceError::Stream(e.to_string()))?;
    let (scale, sink) = add_raw_tail(&pipeline, camera, camera.realtime)?;
    let gate = Gate::new(camera, TimeBase::Pts, record);
    add_gated_decoder(&pipeline, &src, &scale, &gate)?;
    Ok(CameraPipeline { pipeline, sink, live: false, time_base: TimeBase::Pts, feeder: None, gate: Some(gate) })
}
