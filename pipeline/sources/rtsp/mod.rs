//! `rtsp://` cameras: network cameras and video servers, over RTSP interleaved in TCP.

use gstreamer as gst;
use gstreamer::prelude::*;

use super::gate::{Gate, GateRecord};
use super::{CameraPipeline, SourceError, TimeBase, add_gated_decoder, add_raw_tail, element};
use crate::config::CameraConfig;

/// Latency budget of the RTP jitter buffer.
const JITTER_LATENCY_MS: u32 = 200;

/// `rtspsrc location=URL protocols=tcp ! parsebin ! (keyframe gate) ! decodebin !
/// (max_fps gate) ! videoscale ! videoconvert ! RGBP caps ! appsink`
///
/// TCP is used so a server that goes away is noticed at once, not after a UDP timeout.
pub fn pipeline(camera: &CameraConfig, location: &str, record: GateRecord) -> Result<CameraPipeline, SourceError> {
    let pipeline = gst::Pipeline::with_name(&format!("camera-{}", camera.id));
    let src = element("rtspsrc", "gstreamer1.0-plugins-good")?;
    src.set_property("location", location);
    src.set_property("latency", JITTER_LATENCY_MS);
    src.set_property_from_str("protocols", "tcp");
    if let Some(credentials) = &camera.credentials {
        let read = |var: &str| {
            std::env::var(var)
                .map_err(|_| SourceError::Stream(format!("environment variable {var} (camera credentials) is not set")))
        };
        src.set_property("user-id", read(&credentials.username_env)?);
        src.set_property("user-pw", read(&credentials.password_env)?);
    }
    pipeline.add(&src).map_err(|e| SourceError::Stream(e.to_string()))?;
    let (scale, sink) = add_raw_tail(&pipeline, camera, false)?;
    let gate = Gate::new(camera, TimeBase::Arrival, record);
    add_gated_decoder(&pipeline, &src, &scale, &gate)?;
    Ok(CameraPipeline { pipeline, sink, live: true, time_base: TimeBase::Arrival, feeder: None, gate: Some(gate) })
}
