//! Camera sources: each kind of camera URL, the GStreamer pipeline built for it, and the
//! supervisor that keeps it running; the plant's Kafka input topics (`kafka/`) and a
//! scripted CMMS (`cmms_script`).

pub mod camera;
pub mod cmms_script;
pub mod file;
pub mod kafka;
pub mod rtsp;
pub mod synth;

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;

use crate::config::{CameraConfig, SourceUrl};

/// Why a camera pipeline could not be built or run.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("GStreamer element `{factory}` is not installed ({hint})")]
    MissingElement { factory: &'static str, hint: &'static str },
    #[error("cannot link {from} to {to}")]
    Link { from: String, to: String },
    #[error("{0}")]
    Stream(String),
}

/// How a camera's frames get their capture time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeBase {
    /// Stream start plus the frame's presentation timestamp (files, the generator).
    Pts,
    /// Wall clock when the frame arrives (network cameras, whose clocks restart).
    Arrival,
}

/// A camera pipeline, built but not yet playing.
#[derive(Debug)]
pub struct CameraPipeline {
    pub pipeline: gst::Pipeline,
    pub sink: gst_app::AppSink,
    /// A live source drops frames when the dataflow falls behind; a file waits.
    pub live: bool,
    pub time_base: TimeBase,
    /// Generator thread feeding an `appsrc`, for `synth://` cameras.
    pub feeder: Option<synth::Feeder>,
}

/// Builds the pipeline for a camera. Every source kind is registered here.
pub fn build(camera: &CameraConfig) -> Result<CameraPipeline, SourceError> {
    let url = camera.source_url().map_err(SourceError::Stream)?;
    match url {
        SourceUrl::File(path) => file::pipeline(camera, &path),
        SourceUrl::Rtsp(location) => rtsp::pipeline(camera, &location),
        SourceUrl::Synth(params) => synth::pipeline(camera, &params),
    }
}

/// Initialises GStreamer once per process.
pub fn init() -> Result<(), SourceError> {
    gst::init().map_err(|e| SourceError::Stream(format!("GStreamer failed to initialise: {e}")))
}

pub(crate) fn element(factory: &'static str, hint: &'static str) -> Result<gst::Element, SourceError> {
    gst::ElementFactory::make(factory).build().map_err(|_| SourceError::MissingElement { factory, hint })
}

/// The common end of every camera pipeline:
/// `videoconvert ! videoscale ! video/x-raw,format=RGBP,width=W,height=H ! appsink`.
/// Planar RGB is what the model reads, so decode only copies planes.
/// Returns the first element (to link the decoder to) and the sink.
pub(crate) fn add_raw_tail(
    pipeline: &gst::Pipeline,
    camera: &CameraConfig,
    sync: bool,
) -> Result<(gst::Element, gst_app::AppSink), SourceError> {
    let base = "gstreamer1.0-plugins-base";
    let convert = element("videoconvert", base)?;
    let scale = element("videoscale", base)?;
    let caps = gst::Caps::builder("video/x-raw")
        .field("format", "RGBP")
        .field("width", camera.width as i32)
        .field("height", camera.height as i32)
        .field("pixel-aspect-ratio", gst::Fraction::new(1, 1))
        .build();
    let filter = gst::ElementFactory::make("capsfilter")
        .property("caps", &caps)
        .build()
        .map_err(|_| SourceError::MissingElement { factory: "capsfilter", hint: "gstreamer1.0 core" })?;
    let sink = gst_app::AppSink::builder().caps(&caps).max_buffers(2).drop(false).sync(sync).build();
    pipeline
        .add_many([&convert, &scale, &filter, sink.upcast_ref()])
        .map_err(|e| SourceError::Stream(e.to_string()))?;
    gst::Element::link_many([&convert, &scale, &filter, sink.upcast_ref()])
        .map_err(|_| SourceError::Link { from: "videoconvert".into(), to: "appsink".into() })?;
    Ok((convert, sink))
}

/// Links `src`'s video pad to `sink` once it appears (decodebin and rtspsrc create
/// their pads only when they know what the stream holds).
pub(crate) fn link_video_pad_when_added(src: &gst::Element, sink: &gst::Element) {
    let sink = sink.downgrade();
    src.connect_pad_added(move |_, pad| {
        let Some(sink) = sink.upgrade() else { return };
        let Some(sink_pad) = sink.static_pad("sink") else { return };
        if sink_pad.is_linked() {
            return;
        }
        let caps = pad.current_caps().unwrap_or_else(|| pad.query_caps(None));
        let is_video = caps.structure(0).is_some_and(|s| {
            s.name().starts_with("video/")
                || (s.name() == "application/x-rtp" && s.get::<&str>("media").is_ok_and(|m| m == "video"))
        });
        if is_video && let Err(error) = pad.link(&sink_pad) {
            tracing::warn!(pad = %pad.name(), %error, "cannot link video pad");
        }
    });
}
