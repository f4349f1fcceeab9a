//! Defect network inference: frames per second at batch 1 and 8 on a 640x360 frame on
//! the CPU, with random weights (the shipped architecture, box head included), as the
//! detector runs it (`burn_packed`, see `defectflow_models::packed`) and on burn's
//! tensor ops (`burn_flex`), and on the int8 path (`burn_int8_<kernel>`, see
//! `defectflow_models::quantized`);
//! the peer, `benches/torch_defectnet.py`, builds the same network in PyTorch, and
//! `benches/model_vs_torch.sh` runs both and prints the ratio. With `--features cuda`
//! also the GPU backend at batch 1, 8 and 64. `gating_640x360` is what a commissioned
//! camera's gate adds to a frame (brightness, appearance, distances, persistence and
//! the baseline following the frame).

use burn::tensor::backend::Backend;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use defectflow_models::baseline::{BaselineConfig, BaselineKey, Commissioning, to_brightness};
use defectflow_models::detector::CpuBackend;
use defectflow_models::gate::{Persistence, UnknownDefects, gate};
use defectflow_models::inference::{CellScores, FrameView, group_cells, score_batch};
use defectflow_models::model::DefectNetConfig;
use defectflow_models::packed::PackedNet;
use defectflow_models::quantized::{Granularity, Int8Kernel, QuantNet, calibrate};

/// As the `defectflow` binary runs when built with it.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const WIDTH: usize = 640;
const HEIGHT: usize = 360;

/// Times `score` on `batch` copies of one 640x360 frame, for each batch size, as
/// `defect_net_640x360/<name>/<batch>`.
fn bench_scores(c: &mut Criterion, name: &str, batches: &[usize], score: impl Fn(&[FrameView<'_>]) -> Vec<CellScores>) {
    let pixels: Vec<u8> = (0..3 * WIDTH * HEIGHT).map(|i| (i * 7919 % 251) as u8).collect();
    let mut group = c.benchmark_group("defect_net_640x360");
    group.sample_size(20);
    for &batch in batches {
        let frames: Vec<FrameView<'_>> =
            (0..batch).map(|_| FrameView { width: WIDTH, height: HEIGHT, pixels: &pixels }).collect();
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_with_input(BenchmarkId::new(name, batch), &frames, |b, frames| b.iter(|| score(frames)));
    }
    group.finish();
}

/// `score_batch` (the whole network on backend `B`'s tensors) with random weights. On a
/// GPU the scores come back to the host, so an iteration includes the transfers.
fn bench_backend<B: Backend>(c: &mut Criterion, name: &str, batches: &[usize]) {
    let device = B::Device::default();
    let net = DefectNetConfig::new().with_box_head(true).init::<B>(&device);
    bench_scores(c, name, batches, |frames| score_batch(&net, frames, &device));
}

/// The packed CPU network, the path `Detector` takes on the CPU backend.
fn bench_packed(c: &mut Criterion, batches: &[usize]) {
    let net = DefectNetConfig::new().with_box_head(true).init::<CpuBackend>(&Default::default());
    let packed = PackedNet::new(&net);
    bench_scores(c, "burn_packed", batches, |frames| packed.score(frames));
}

/// The same network on the int8 path, on each integer kernel this CPU has, calibrated
/// on the benchmark's frame (`burn_int8_<kernel>`).
fn bench_int8(c: &mut Criterion, batches: &[usize]) {
    let net = DefectNetConfig::new().with_box_head(true).init::<CpuBackend>(&Default::default());
    let pixels: Vec<u8> = (0..3 * WIDTH * HEIGHT).map(|i| (i * 7919 % 251) as u8).collect();
    let frame = FrameView { width: WIDTH, height: HEIGHT, pixels: &pixels };
    let calibration = calibrate(&PackedNet::new(&net), &[frame], Granularity::default());
    for kernel in [Int8Kernel::Vnni512, Int8Kernel::Avx2, Int8Kernel::Portable] {
        let Ok(quantised) = QuantNet::new(&net, &calibration).and_then(|q| q.with_kernel(kernel)) else { continue };
        let name = format!("burn_int8_{}", kernel.name().replace('-', "_"));
        bench_scores(c, &name, batches, |frames| quantised.score(frames));
    }
}

/// What commissioning adds to a frame on the CPU: `ungated` scores a frame and groups
/// its defect cells (a camera without a baseline); `gated` scores it with its cells'
/// appearance, checks its brightness and gates it with a baseline (distances, the
/// departing cells' persistence, grouping).
fn bench_gating(c: &mut Criterion) {
    let net = DefectNetConfig::new().with_box_head(true).init::<CpuBackend>(&Default::default());
    let packed = PackedNet::new(&net);
    let frame_of =
        |seed: usize| -> Vec<u8> { (0..3 * WIDTH * HEIGHT).map(|i| ((i * 7919 + seed * 31) % 251) as u8).collect() };
    fn view(pixels: &[u8]) -> FrameView<'_> {
        FrameView { width: WIDTH, height: HEIGHT, pixels }
    }
    let key = BaselineKey { camera_id: "bench".into(), frame_width: 640, frame_height: 360, model_version: "m".into() };
    let config = BaselineConfig::default();
    let mut learning = Commissioning::new(key, config.clone());
    for i in 0..16 {
        let pixels = frame_of(i);
        let scores = packed.score_with_appearance(&[view(&pixels)]);
        learning.observe(&scores[0], i as f32 / 16.0).expect("a frame");
    }
    let mut baseline = learning.finish().expect("a baseline");
    let pixels = frame_of(99);
    let geometry = ((1.0, 1.0), (WIDTH as f32, HEIGHT as f32));
    let mut group = c.benchmark_group("gating_640x360");
    group.sample_size(20);
    group.throughput(Throughput::Elements(1));
    group.bench_function("ungated", |b| {
        b.iter(|| {
            let scores = packed.score(&[view(&pixels)]);
            group_cells(&scores[0], 0.5, geometry.0, geometry.1)
        })
    });
    let mut persistence = Persistence::default();
    let mut at = 0u64;
    group.bench_function("gated", |b| {
        b.iter(|| {
            at += 200;
            let normalised = to_brightness(&view(&pixels), 120.0);
            let frame = normalised.as_deref().map_or(view(&pixels), view);
            let scores = packed.score_with_appearance(&[frame]);
            let gated = gate(&scores[0], &baseline, &config, 0.5, UnknownDefects::On, geometry, &mut persistence, at);
            // The baseline following its camera once a second, every fifth frame at 5
            // fps (a run skips it on a disturbed frame; counted here whatever the frame).
            if at.is_multiple_of(1_000) {
                let cells = scores[0].rows * scores[0].cols;
                let weights = persistence.follow_weights(cells, at, 60_000, (1_000.0 / 600_000.0, 0.1));
                baseline.follow(&scores[0], &weights).expect("follows");
            }
            gated
        })
    });
    group.finish();
}

fn inference(c: &mut Criterion) {
    let macs = DefectNetConfig::new().with_box_head(true).macs(WIDTH, HEIGHT);
    eprintln!("defect network: {} MACs = {:.3} GFLOP per {WIDTH}x{HEIGHT} frame", macs, 2.0 * macs as f64 / 1e9);
    bench_packed(c, &[1, 8]);
    bench_int8(c, &[1]);
    bench_gating(c);
    bench_backend::<CpuBackend>(c, "burn_flex", &[1, 8]);
    #[cfg(feature = "cuda")]
    bench_backend::<defectflow_models::detector::GpuBackend>(c, "burn_cuda", &[1, 8, 64]);
}

criterion_group!(benches, inference);
criterion_main!(benches);
