//! Defect network inference: frames per second at batch 1 and 8 on a 640x360 frame on
//! the CPU, with random weights (the shipped architecture, box head included), as the
//! detector runs it (`burn_packed`, see `defectflow_models::packed`) and on burn's
//! tensor ops (`burn_flex`);
//! the peer, `benches/torch_defectnet.py`, builds the same network in PyTorch, and
//! `benches/model_vs_torch.sh` runs both and prints the ratio. With `--features cuda`
//! also the GPU backend at batch 1, 8 and 64.

use burn::tensor::backend::Backend;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use defectflow_models::detector::CpuBackend;
use defectflow_models::inference::{CellScores, FrameView, score_batch};
use defectflow_models::model::DefectNetConfig;
use defectflow_models::packed::PackedNet;

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

fn inference(c: &mut Criterion) {
    let macs = DefectNetConfig::new().with_box_head(true).macs(WIDTH, HEIGHT);
    eprintln!("defect network: {} MACs = {:.3} GFLOP per {WIDTH}x{HEIGHT} frame", macs, 2.0 * macs as f64 / 1e9);
    bench_packed(c, &[1, 8]);
    bench_backend::<CpuBackend>(c, "burn_flex", &[1, 8]);
    #[cfg(feature = "cuda")]
    bench_backend::<defectflow_models::detector::GpuBackend>(c, "burn_cuda", &[1, 8, 64]);
}

criterion_group!(benches, inference);
criterion_main!(benches);
