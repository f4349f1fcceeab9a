//! `file://` cameras: recorded MP4 or MKV footage, H.264 or H.265.

use std::path::Path;

use gstreamer as gst;
use gstreamer::prelude::*;

use super::{CameraPipeline, SourceError, TimeBase, add_raw_tail, element, link_video_pad_when_added};
use crate::config::CameraConfig;

/// `filesrc location=PATH ! decodebin ! videoconvert ! videoscale ! RGBP caps ! appsink`
pub fn pipeline(camera: &CameraConfig, path: &Path) -> Result<CameraPipeline, SourceError> {
    if !path.is_file() {
        return Err(SourceError::Stream(format!("no such video file: {}", path.display())));
    }
    let pipeline = gst::Pipeline::with_name(&format!("camera-{}", camera.id));
    let src = gst::ElementFactory::make("filesrc")
        .property("location", path.to_string_lossy().as_ref())
        .build()
        .map_err(|_| SourceError::MissingElement { factory: "filesrc", hint: "gstreamer1.0 core" })?;
    let decode = element("decodebin", "gstreamer1.0-plugins-base")?;
    pipeline.add_many([&src, &decode]).map_err(|e| SourceError::Stream(e.to_string()))?;
    src.link(&decode).map_err(|_| SourceError::Link { from: "filesrc".into(), to: "decodebin".into() })?;
    let (convert, sink) = add_raw_tail(&pipeline, camera, camera.realtime)?;
    link_video_pad_when_added(&decode, &convert);
    Ok(CameraPipeline { pipeline, sink, live: false, time_base: TimeBase::Pts, feeder: None })
}
