//! Defect network inference on the CPU backend: frames per second at batch 1 and 8 on a
//! 640x360 frame, with random weights (the shipped architecture, box head included) (the peer, `benches/torch_defectnet.py`, builds the
//! same network in PyTorch). `benches/model_vs_torch.sh` runs both and prints the ratio.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use defectflow_models::detector::CpuBackend;
use defectflow_models::inference::{FrameView, score_batch};
use defectflow_models::model::DefectNetConfig;

const WIDTH: usize = 640;
const HEIGHT: usize = 360;

fn inference(c: &mut Criterion) {
    let config = DefectNetConfig::new().with_box_head(true);
    let macs = config.macs(WIDTH, HEIGHT);
    eprintln!("defect network: {} MACs = {:.3} GFLOP per {WIDTH}x{HEIGHT} frame", macs, 2.0 * macs as f64 / 1e9);
    let device = Default::default();
    let net = config.init::<CpuBackend>(&device);
    let pixels: Vec<u8> = (0..3 * WIDTH * HEIGHT).map(|i| (i * 7919 % 251) as u8).collect();
    let mut group = c.benchmark_group("defect_net_640x360");
    group.sample_size(20);
    for batch in [1usize, 8] {
        let frames: Vec<FrameView<'_>> =
            (0..batch).map(|_| FrameView { width: WIDTH, height: HEIGHT, pixels: &pixels }).collect();
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_with_input(BenchmarkId::new("burn_flex", batch), &frames, |b, frames| {
            b.iter(|| score_batch(&net, frames, &device))
        });
    }
    group.finish();
}

/// The same network on the GPU backend at batch 1, 8 and 64 (`--features cuda`).
#[cfg(feature = "cuda")]
fn inference_gpu(c: &mut Criterion) {
    use defectflow_models::detector::GpuBackend;
    let device = Default::default();
    let net = DefectNetConfig::new().with_box_head(true).init::<GpuBackend>(&device);
    let pixels: Vec<u8> = (0..3 * WIDTH * HEIGHT).map(|i| (i * 7919 % 251) as u8).collect();
    let mut group = c.benchmark_group("defect_net_640x360");
    group.sample_size(20);
    for batch in [1usize, 8, 64] {
        let frames: Vec<FrameView<'_>> =
            (0..batch).map(|_| FrameView { width: WIDTH, height: HEIGHT, pixels: &pixels }).collect();
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_with_input(BenchmarkId::new("burn_cuda", batch), &frames, |b, frames| {
            // Scores come back to the host, so each iteration includes the transfers.
            b.iter(|| score_batch(&net, frames, &device))
        });
    }
    group.finish();
}

#[cfg(not(feature = "cuda"))]
criterion_group!(benches, inference);
#[cfg(feature = "cuda")]
criterion_group!(benches, inference, inference_gpu);
criterion_main!(benches);
