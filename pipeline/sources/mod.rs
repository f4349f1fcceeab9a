//! Camera sources: each kind of camera URL, the GStreamer pipeline built for it, and the
//! supervisor that keeps it running; the plant's Kafka input topics (`kafka/`) and a
//! scripted CMMS (`cmms_script`).

pub mod camera;
pub mod cmms_script;
pub mod file;
pub mod frame;
pub mod gate;
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
    /// What the source decodes and converts (encoded streams).
    pub gate: Option<std::sync::Arc<gate::Gate>>,
}

/// Builds the pipeline for a camera. Every source kind is registered here; what an
/// encoded source leaves out, and how far it is quiet, goes to `record`.
pub fn build(camera: &CameraConfig, record: gate::GateRecord) -> Result<CameraPipeline, SourceError> {
    let url = camera.source_url().map_err(SourceError::Stream)?;
    match url {
        SourceUrl::File(path) => file::pipeline(camera, &path, record),
        SourceUrl::Rtsp(location) => rtsp::pipeline(camera, &location, record),
        SourceUrl::Synth(params) => synth::pipeline(camera, &params),
    }
}

/// The decoding middle of an encoded camera pipeline, after its source:
/// `parsebin ! identity ! decodebin`, the identity's input guarded by the gate (delta
/// units dropped in keyframe mode) and the decoded frames guarded again before they
/// reach `tail` (beyond `max_fps`). Links `src`'s stream pad to parsebin when it appears.
pub(crate) fn add_gated_decoder(
    pipeline: &gst::Pipeline,
    src: &gst::Element,
    tail: &gst::Element,
    gate: &std::sync::Arc<gate::Gate>,
) -> Result<(), SourceError> {
    let base = "gstreamer1.0-plugins-base";
    let parse = element("parsebin", base)?;
    let valve = gst::ElementFactory::make("identity")
        .name("keyframe-gate")
        .build()
        .map_err(|_| SourceError::MissingElement { factory: "identity", hint: "gstreamer1.0 core" })?;
    let decode = element("decodebin", base)?;
    if gate.single_threaded_decoder() {
        // A decoder's frame threads each hold frames (and their memory): fed a keyframe a
        // second, it would hand one out seconds late. With a model sampling the camera,
        // one thread per camera keeps up, and the cameras are the parallelism.
        if let Some(bin) = decode.downcast_ref::<gst::Bin>() {
            bin.connect_element_added(|_, child| {
                if child.has_property("max-threads") {
                    child.set_property("max-threads", 1i32);
                }
            });
        }
    }
    pipeline.add_many([&parse, &valve, &decode]).map_err(|e| SourceError::Stream(e.to_string()))?;
    valve.link(&decode).map_err(|_| SourceError::Link { from: "identity".into(), to: "decodebin".into() })?;
    match src.static_pad("src") {
        Some(_) => {
            src.link(&parse).map_err(|_| SourceError::Link { from: src.name().into(), to: "parsebin".into() })?
        }
        None => link_video_pad_when_added(src, &parse),
    }
    link_video_pad_when_added(&parse, &valve);
    link_video_pad_when_added(&decode, tail);
    if let Some(pad) = valve.static_pad("sink") {
        gate.guard_parsed(&pad);
    }
    if let Some(pad) = tail.static_pad("sink") {
        gate.guard_decoded(&pad);
    }
    Ok(())
}

/// Initialises GStreamer once per process.
pub fn init() -> Result<(), SourceError> {
    gst::init().map_err(|e| SourceError::Stream(format!("GStreamer failed to initialise: {e}")))
}

pub(crate) fn element(factory: &'static str, hint: &'static str) -> Result<gst::Element, SourceError> {
    gst::ElementFactory::make(factory).build().map_err(|_| SourceError::MissingElement { factory, hint })
}

/// The common end of every camera pipeline:
/// `videoscale ! video/x-raw,width=W,height=H ! videoconvert ! video/x-raw,format=RGBP ! appsink`.
/// Scaling comes first, in the decoder's format (YUV for a camera), so only the model's
/// pixels are converted; planar RGB is what the model reads, so decode only copies
/// planes. Returns the first element (to link the decoder to) and the sink.
pub(crate) fn add_raw_tail(
    pipeline: &gst::Pipeline,
    camera: &CameraConfig,
    sync: bool,
) -> Result<(gst::Element, gst_app::AppSink), SourceError> {
    let base = "gstreamer1.0-plugins-base";
    let convert = element("videoconvert", base)?;
    let scale = element("videoscale", base)?;
    // The model's size in whatever format the decoder gives, then in planar RGB.
    let sized_caps = |format: Option<&str>| {
        let caps = gst::Caps::builder("video/x-raw")
            .field("width", camera.width as i32)
            .field("height", camera.height as i32)
            .field("pixel-aspect-ratio", gst::Fraction::new(1, 1));
        match format {
            Some(format) => caps.field("format", format).build(),
            None => caps.build(),
        }
    };
    let capsfilter = |caps: &gst::Caps| {
        gst::ElementFactory::make("capsfilter")
            .property("caps", caps)
            .build()
            .map_err(|_| SourceError::MissingElement { factory: "capsfilter", hint: "gstreamer1.0 core" })
    };
    let sized = capsfilter(&sized_caps(None))?;
    let caps = sized_caps(Some("RGBP"));
    let filter = capsfilter(&caps)?;
    let sink = gst_app::AppSink::builder().caps(&caps).max_buffers(2).drop(false).sync(sync).build();
    pipeline
        .add_many([&scale, &sized, &convert, &filter, sink.upcast_ref()])
        .map_err(|e| SourceError::Stream(e.to_string()))?;
    gst::Element::link_many([&scale, &sized, &convert, &filter, sink.upcast_ref()])
        .map_err(|_| SourceError::Link { from: "videoscale".into(), to: "appsink".into() })?;
    Ok((scale, sink))
}

/// Links `src`'s video pad to `sink` once it appears (decodebin, parsebin and rtspsrc
/// create their pads only when they know what the stream holds).
pub(crate) fn link_video_pad_when_added(src: &gst::Element, sink: &gst::Element) {
    link_pad_when_added(src, sink, |caps| {
        caps.structure(0).is_some_and(|s| {
            s.name().starts_with("video/")
                || (s.name() == "application/x-rtp" && s.get::<&str>("media").is_ok_and(|m| m == "video"))
        })
    });
}

/// Links the first pad of `src` whose caps `wanted` accepts to `sink` once it appears.
fn link_pad_when_added(
    src: &gst::Element,
    sink: &gst::Element,
    wanted: impl Fn(&gst::Caps) -> bool + Send + Sync + 'static,
) {
    let sink = sink.downgrade();
    src.connect_pad_added(move |_, pad| {
        let Some(sink) = sink.upgrade() else { return };
        let Some(sink_pad) = sink.static_pad("sink") else { return };
        if sink_pad.is_linked() {
            return;
        }
        let caps = pad.current_caps().unwrap_or_else(|| pad.query_caps(None));
        if wanted(&caps)
            && let Err(error) = pad.link(&sink_pad)
        {
            tracing::warn!(pad = %pad.name(), %error, "cannot link video pad");
        }
    });
}
