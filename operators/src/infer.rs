//! The `infer` operator: frame tensors in, one observation per frame out (its
//! detections, or none: a clear frame), with frames of a worker's cameras batched.

use std::time::{Duration, Instant};

use burn::tensor::backend::Backend;
use defectflow_models::detector::Detector;
use defectflow_models::inference::FrameView;
use defectflow_schemas::{Detection, FrameObservation};
use serde::{Deserialize, Serialize};
use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::operator::Operator;

use crate::decode::FrameTensor;

/// How frames are batched for the model. `[model]` in the config.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InferConfig {
    /// Frames run through the network together (across the worker's cameras).
    pub batch_size: usize,
    /// A frame waits at most this long for its batch to fill.
    pub max_wait_ms: u64,
    /// Shadow mode: detections (and the work orders they make) are flagged as shadow:
    /// audited, never sent to the CMMS.
    pub shadow: bool,
}

impl Default for InferConfig {
    fn default() -> Self {
        InferConfig { batch_size: 8, max_wait_ms: 50, shadow: false }
    }
}

/// Runs the defect model on frames.
pub trait Infer<'scope> {
    /// One [`FrameObservation`] per frame, at the frame's capture time, carrying the
    /// model version. `observe` sees the size and run time of every batch, `keep` each
    /// frame with its observation before the observation leaves (to keep evidence).
    ///
    /// # Examples
    /// ```no_run
    /// # use defectflow_operators::infer::{Infer, InferConfig};
    /// # use defectflow_models::detector::{CpuBackend, Detector};
    /// # fn frames<'s>(s: timely::dataflow::StreamVec<'s, u64, defectflow_operators::decode::FrameTensor>) {
    /// let detector = Detector::<CpuBackend>::load("models/weights".as_ref(), Default::default())
    ///     .expect("run `defectflow train` first");
    /// let observations = s.infer(detector, InferConfig::default(), |_, _| {}, |_, _| {});
    /// # }
    /// ```
    fn infer<B: Backend>(
        self,
        detector: Detector<B>,
        config: InferConfig,
        observe: impl FnMut(usize, Duration) + 'static,
        keep: impl FnMut(&FrameTensor, &FrameObservation) + 'static,
    ) -> StreamVec<'scope, u64, FrameObservation>;
}

impl<'scope> Infer<'scope> for StreamVec<'scope, u64, FrameTensor> {
    fn infer<B: Backend>(
        self,
        detector: Detector<B>,
        config: InferConfig,
        mut observe: impl FnMut(usize, Duration) + 'static,
        mut keep: impl FnMut(&FrameTensor, &FrameObservation) + 'static,
    ) -> StreamVec<'scope, u64, FrameObservation> {
        let scope = self.scope();
        let batch_size = config.batch_size.max(1);
        let max_wait = Duration::from_millis(config.max_wait_ms);
        self.unary_frontier(Pipeline, "Infer", move |_, info| {
            let activator = scope.activator_for(info.address);
            // Frames waiting for a batch, with their capability and arrival.
            let mut pending: Vec<(Capability<u64>, FrameTensor, Instant)> = Vec::new();
            move |(input, frontier), output| {
                input.for_each(|time, frames| {
                    let Some(capability) = time.retain_least(0) else { return };
                    let now = Instant::now();
                    for frame in frames.drain(..) {
                        pending.push((capability.clone(), frame, now));
                    }
                });
                let closed = frontier.frontier().is_empty();
                while pending.first().is_some_and(|(_, _, arrived)| {
                    pending.len() >= batch_size || closed || arrived.elapsed() >= max_wait
                }) {
                    let batch: Vec<(Capability<u64>, FrameTensor, Instant)> =
                        pending.drain(..batch_size.min(pending.len())).collect();
                    let started = Instant::now();
                    let views: Vec<FrameView<'_>> = batch
                        .iter()
                        .map(|(_, f, _)| FrameView {
                            width: f.meta.width as usize,
                            height: f.meta.height as usize,
                            pixels: f.bytes(),
                        })
                        .collect();
                    let found = detector.detect(&views);
                    observe(batch.len(), started.elapsed());
                    for ((capability, frame, _), found) in batch.iter().zip(found) {
                        let meta = &frame.meta;
                        let detections = found
                            .into_iter()
                            .map(|f| Detection {
                                camera_id: meta.camera_id.clone(),
                                frame_index: meta.frame_index,
                                capture_ms: meta.capture_ms,
                                class: f.class,
                                confidence: f.confidence,
                                bbox: f.bbox,
                                area_px: f.area_px,
                                model_version: detector.version().to_owned(),
                                shadow: config.shadow,
                            })
                            .collect();
                        let observation = FrameObservation {
                            camera_id: meta.camera_id.clone(),
                            frame_index: meta.frame_index,
                            capture_ms: meta.capture_ms,
                            detections,
                        };
                        keep(frame, &observation);
                        output.session(capability).give(observation);
                    }
                }
                if let Some((_, _, arrived)) = pending.first() {
                    activator.activate_after(max_wait.saturating_sub(arrived.elapsed()));
                }
            }
        })
    }
}
