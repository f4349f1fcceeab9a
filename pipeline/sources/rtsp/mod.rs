//! `rtsp://` cameras: network cameras and video servers, over RTSP interleaved in TCP.

use gstreamer as gst;
use gstreamer::prelude::*;

use super::{CameraPipeline, SourceError, TimeBase, add_raw_tail, element, link_video_pad_when_added};
use crate::config::CameraConfig;

/// Latency budget of the RTP jitter buffer.
const JITTER_LATENCY_MS: u32 = 200;

/// `rtspsrc location=URL protocols=tcp ! decodebin ! videoconvert ! videoscale ! RGBP caps ! appsink`
///
/// TCP is used so a server that goes away is noticed at once, not after a UDP timeout.
pub fn pipeline(camera: &CameraConfig, location: &str) -> Result<CameraPipeline, SourceError> {
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
    let decode = element("decodebin", "gstreamer1.0-plugins-base")?;
    pipeline.add_many([&src, &decode]).map_err(|e| SourceError::Stream(e.to_string()))?;
    link_video_pad_when_added(&src, &decode);
    let (convert, sink) = add_raw_tail(&pipeline, camera, false)?;
    link_video_pad_when_added(&decode, &convert);
    Ok(CameraPipeline { pipeline, sink, live: true, time_base: TimeBase::Arrival, feeder: None })
}
