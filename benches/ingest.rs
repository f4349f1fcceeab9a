//! Decode throughput of H.264 footage through defectflow's ingest (camera pipeline →
//! timely → decode to tensors) against the same GStreamer pipeline pulled bare.
//!
//! `cargo bench --bench ingest`

use std::path::{Path, PathBuf};
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use defectflow::config::RunConfig;
use defectflow::run::{self, Hooks, StopWhen};
use defectflow::tools::footage::{Codec, Container, FootageOptions, write_plant};
use defectflow_models::synth::PlantOptions;
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;

const SECONDS: f64 = 10.0;
const FPS: u32 = 30;

fn footage(dir: &Path, width: u32, height: u32) -> (PathBuf, u64) {
    let out = dir.join(format!("{width}x{height}"));
    let options = FootageOptions {
        plant: PlantOptions {
            seed: 5,
            cameras: 1,
            defect_free_cameras: 0,
            duration_s: SECONDS,
            fps: FPS,
            width,
            height,
        },
        codec: Codec::H264,
        container: Container::Mp4,
    };
    let truth = write_plant(&out, &options).expect("footage");
    (out.join(&truth.cameras[0].video), truth.cameras[0].frames)
}

/// defectflow's ingest: one file camera through the dataflow until the file ends.
fn ingest(video: &Path, width: u32, height: u32) -> u64 {
    let text = format!(
        "[[cameras]]\nid = \"bench\"\nurl = \"file://{}\"\nwidth = {width}\nheight = {height}\nqueue_frames = 16\n",
        video.display()
    );
    let config = RunConfig::parse(&text, "bench").expect("config");
    let stop = StopWhen::after(None);
    let reports = run::run(&config, timely::Config::thread(), stop, Hooks::default()).expect("run");
    reports[0].kept
}

/// The same pipeline, bare: `filesrc ! parsebin ! decodebin ! videoscale ! size caps !
/// videoconvert ! RGBP caps ! appsink` (a camera decoding every frame, without the
/// gates' probes, the queue or the dataflow).
fn bare(video: &Path, width: u32, height: u32) -> u64 {
    let pipeline = gst::Pipeline::new();
    let src = gst::ElementFactory::make("filesrc")
        .property("location", video.to_string_lossy().as_ref())
        .build()
        .expect("filesrc");
    let parse = gst::ElementFactory::make("parsebin").build().expect("parsebin");
    let decode = gst::ElementFactory::make("decodebin").build().expect("decodebin");
    let scale = gst::ElementFactory::make("videoscale").build().expect("videoscale");
    let size = gst::Caps::builder("video/x-raw")
        .field("width", width as i32)
        .field("height", height as i32)
        .field("pixel-aspect-ratio", gst::Fraction::new(1, 1))
        .build();
    let sized = gst::ElementFactory::make("capsfilter").property("caps", &size).build().expect("capsfilter");
    let convert = gst::ElementFactory::make("videoconvert").build().expect("videoconvert");
    let caps = gst::Caps::builder("video/x-raw")
        .field("format", "RGBP")
        .field("width", width as i32)
        .field("height", height as i32)
        .field("pixel-aspect-ratio", gst::Fraction::new(1, 1))
        .build();
    let sink = gst_app::AppSink::builder().caps(&caps).max_buffers(2).sync(false).build();
    pipeline.add_many([&src, &parse, &decode, &scale, &sized, &convert, sink.upcast_ref()]).expect("add");
    src.link(&parse).expect("link");
    gst::Element::link_many([&scale, &sized, &convert, sink.upcast_ref()]).expect("link");
    let decode_weak = decode.downgrade();
    parse.connect_pad_added(move |_, pad| {
        if let Some(decode) = decode_weak.upgrade() {
            let _ = pad.link(&decode.static_pad("sink").expect("sink pad"));
        }
    });
    let scale_weak = scale.downgrade();
    decode.connect_pad_added(move |_, pad| {
        if let Some(scale) = scale_weak.upgrade() {
            let _ = pad.link(&scale.static_pad("sink").expect("sink pad"));
        }
    });
    pipeline.set_state(gst::State::Playing).expect("play");
    let mut frames = 0;
    while let Ok(sample) = sink.pull_sample() {
        let _map = sample.buffer().expect("buffer").map_readable().expect("map");
        frames += 1;
    }
    pipeline.set_state(gst::State::Null).expect("stop");
    frames
}

fn bench_ingest(c: &mut Criterion) {
    gst::init().expect("GStreamer");
    let dir = tempfile::tempdir().expect("temp dir");
    for (width, height) in [(640, 360), (1280, 720)] {
        let (video, frames) = footage(dir.path(), width, height);
        let mut group = c.benchmark_group(format!("ingest_h264_{width}x{height}"));
        group.throughput(Throughput::Elements(frames));
        group.sample_size(10).measurement_time(Duration::from_secs(20)).warm_up_time(Duration::from_secs(2));
        // Interleaved per size so both see the same machine load.
        group.bench_function("bare_gstreamer", |b| b.iter(|| assert_eq!(bare(&video, width, height), frames)));
        group.bench_function("defectflow", |b| b.iter(|| assert_eq!(ingest(&video, width, height), frames)));
        group.finish();
    }
}

criterion_group!(benches, bench_ingest);
criterion_main!(benches);
