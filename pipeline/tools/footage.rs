//! Writes synthetic plant footage: one encoded video per camera, YOLO labels for every
//! frame, and the ground truth of the defects (`defectflow synth`).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use defectflow_models::synth::{CameraTruth, GroundTruth, PlantOptions, Scene, SceneSpec, random_plant};
use defectflow_schemas::DefectClass;
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;

use super::progress::Progress;

/// Video codec of the written footage.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Codec {
    H264,
    H265,
}

/// Container of the written footage.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Container {
    Mp4,
    Mkv,
}

/// Options of one footage set.
#[derive(Clone, Debug)]
pub struct FootageOptions {
    pub plant: PlantOptions,
    pub codec: Codec,
    pub container: Container,
}

/// Renders, encodes and labels every camera of a random plant into `out`.
pub fn write_plant(out: &Path, options: &FootageOptions) -> anyhow::Result<GroundTruth> {
    let scenes = random_plant(&options.plant);
    write_scenes(out, &scenes, options)
}

/// Renders, encodes and labels the given scenes into `out`:
/// `<camera>.mp4`, `labels/<camera>_<frame>.txt`, `classes.txt`, `ground_truth.json`.
pub fn write_scenes(out: &Path, scenes: &[SceneSpec], options: &FootageOptions) -> anyhow::Result<GroundTruth> {
    crate::sources::init()?;
    let labels_dir = out.join("labels");
    fs::create_dir_all(&labels_dir).with_context(|| format!("cannot create {}", labels_dir.display()))?;
    let classes: Vec<&str> = DefectClass::ALL.iter().map(|c| c.as_str()).collect();
    fs::write(out.join("classes.txt"), classes.join("\n") + "\n")?;
    let plant = &options.plant;
    let frames = (plant.duration_s * plant.fps as f64).round() as u64;
    let extension = match options.container {
        Container::Mp4 => "mp4",
        Container::Mkv => "mkv",
    };
    let mut cameras = Vec::new();
    let mut progress = Progress::new("cameras", scenes.len() as u64);
    for spec in scenes {
        let video = format!("{}.{extension}", spec.camera_id);
        let scene = Scene::new(spec.clone());
        encode(&scene, frames, &out.join(&video), options)
            .with_context(|| format!("cannot write footage of {}", spec.camera_id))?;
        for index in 0..frames {
            let rendered = scene.render(index);
            let path = labels_dir.join(format!("{}_{index:06}.txt", spec.camera_id));
            let mut file = fs::File::create(&path).with_context(|| format!("cannot write {}", path.display()))?;
            for label in &rendered.labels {
                writeln!(file, "{}", label.yolo_line(spec.width, spec.height))?;
            }
        }
        cameras.push(CameraTruth { scene: spec.clone(), video, frames });
        progress.advance(1);
    }
    progress.finish();
    write_truth(out, plant, cameras)
}

/// Writes `ground_truth.json` of a plant's cameras into `out`.
pub(super) fn write_truth(out: &Path, plant: &PlantOptions, cameras: Vec<CameraTruth>) -> anyhow::Result<GroundTruth> {
    let truth = GroundTruth {
        seed: plant.seed,
        fps: plant.fps,
        width: plant.width,
        height: plant.height,
        duration_s: plant.duration_s,
        cameras,
    };
    fs::write(out.join("ground_truth.json"), serde_json::to_vec_pretty(&truth)?)?;
    Ok(truth)
}

/// `appsrc ! videoconvert ! video/x-raw,format=I420 ! x264enc|x265enc ! h264parse|h265parse ! mp4mux|matroskamux ! filesink`
fn encode(scene: &Scene, frames: u64, path: &PathBuf, options: &FootageOptions) -> anyhow::Result<()> {
    let spec = scene.spec();
    let caps = crate::sources::synth::rendered_frame_caps(spec.width, spec.height, spec.fps);
    let src = gst_app::AppSrc::builder().caps(&caps).format(gst::Format::Time).block(true).max_buffers(8).build();
    let make = |factory: &str, package: &str| {
        gst::ElementFactory::make(factory)
            .build()
            .with_context(|| format!("GStreamer element `{factory}` missing ({package})"))
    };
    let convert = make("videoconvert", "gstreamer1.0-plugins-base")?;
    // 4:2:0, as cameras encode: from RGB the encoders would otherwise pick 4:4:4, a
    // profile few decoders in the field meet and twice the frame memory to decode.
    let subsampled = gst::ElementFactory::make("capsfilter")
        .property("caps", gst::Caps::builder("video/x-raw").field("format", "I420").build())
        .build()?;
    let (encoder, parser) = match options.codec {
        Codec::H264 => {
            let enc = make("x264enc", "gstreamer1.0-plugins-ugly")?;
            enc.set_property_from_str("speed-preset", "faster");
            enc.set_property("key-int-max", spec.fps * 2);
            enc.set_property("bitrate", 2500u32);
            enc.set_property("threads", 2u32);
            // Like most IP cameras: no B-frames, so presentation order is decode order.
            enc.set_property("bframes", 0u32);
            (enc, make("h264parse", "gstreamer1.0-plugins-bad")?)
        }
        Codec::H265 => {
            let enc = make("x265enc", "gstreamer1.0-plugins-bad")?;
            enc.set_property_from_str("speed-preset", "faster");
            enc.set_property("key-int-max", (spec.fps * 2) as i32);
            (enc, make("h265parse", "gstreamer1.0-plugins-bad")?)
        }
    };
    let muxer = match options.container {
        Container::Mp4 => make("mp4mux", "gstreamer1.0-plugins-good")?,
        Container::Mkv => make("matroskamux", "gstreamer1.0-plugins-good")?,
    };
    let sink = gst::ElementFactory::make("filesink").property("location", path.to_string_lossy().as_ref()).build()?;
    let pipeline = gst::Pipeline::new();
    let chain = [src.upcast_ref(), &convert, &subsampled, &encoder, &parser, &muxer, &sink];
    pipeline.add_many(chain)?;
    gst::Element::link_many(chain)?;
    pipeline.set_state(gst::State::Playing)?;
    let frame_ns = 1_000_000_000 / spec.fps as u64;
    for index in 0..frames {
        let mut buffer = gst::Buffer::from_mut_slice(scene.render(index).image.pixels);
        if let Some(b) = buffer.get_mut() {
            b.set_pts(gst::ClockTime::from_nseconds(index * frame_ns));
            b.set_duration(gst::ClockTime::from_nseconds(frame_ns));
        }
        src.push_buffer(buffer).map_err(|e| anyhow::anyhow!("encoder refused frame {index}: {e:?}"))?;
    }
    src.end_of_stream().map_err(|e| anyhow::anyhow!("cannot end stream: {e:?}"))?;
    let bus = pipeline.bus().context("pipeline has no bus")?;
    let result = match bus
        .timed_pop_filtered(gst::ClockTime::from_seconds(120), &[gst::MessageType::Eos, gst::MessageType::Error])
    {
        Some(message) => match message.view() {
            gst::MessageView::Error(err) => {
                Err(anyhow::anyhow!("encoding failed: {} ({:?})", err.error(), err.debug()))
            }
            _ => Ok(()),
        },
        None => Err(anyhow::anyhow!("encoding did not finish within 120 s")),
    };
    pipeline.set_state(gst::State::Null)?;
    result?;
    if fs::metadata(path).map(|m| m.len()).unwrap_or(0) == 0 {
        bail!("{} is empty after encoding", path.display());
    }
    Ok(())
}
