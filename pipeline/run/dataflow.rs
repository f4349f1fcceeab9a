//! A worker's share of the frames' dataflow: decode, and with a model the model, and
//! with the plant's reference the work-order stages.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use defectflow_operators::decode::{CameraSample, Decode, DecodeOutcome};
use defectflow_operators::evidence::EvidenceFrames;
use defectflow_operators::infer::Infer;
use defectflow_schemas::FrameMeta;
use timely::dataflow::ProbeHandle;
use timely::dataflow::operators::core::Probe;
use timely::dataflow::operators::vec::UnorderedInput;
use timely::dataflow::operators::vec::unordered_input::UnorderedHandle;
use timely::dataflow::operators::{ActivateCapability, Inspect};

use super::Process;
use crate::metrics::Stage;
use crate::sources::camera::FramePixels;
use crate::workflow::{self, Collected, PlantInputs};

/// Per camera: frames kept and frames sampled out by decode.
pub(super) type KeptCounts = Arc<Mutex<HashMap<String, (u64, u64)>>>;

/// The handles of a worker's share of the dataflow.
pub(super) struct Dataflow {
    pub input: UnorderedHandle<u64, CameraSample<FramePixels>>,
    pub capability: ActivateCapability<u64>,
    /// The plant's inputs, with the work-order stages.
    pub plant: Option<PlantInputs>,
    /// Frames (and observations) complete.
    pub probe: ProbeHandle<u64>,
    /// Work-order messages complete.
    pub work_probe: Option<ProbeHandle<u64>>,
}

/// Builds a worker's share of the frames' dataflow: decode, and with a model the model,
/// and with the plant's reference the work-order stages.
pub(super) fn build_dataflow(
    worker: &mut timely::worker::Worker,
    process: &Process,
    cameras: &[crate::config::CameraConfig],
    kept: &KeptCounts,
    collected: &Rc<RefCell<Collected>>,
) -> Dataflow {
    let index = worker.index();
    let max_fps: HashMap<String, f64> = cameras.iter().filter_map(|c| c.max_fps.map(|f| (c.id.clone(), f))).collect();
    let probe = ProbeHandle::new();
    let (input, capability, plant, work_probe) = worker.dataflow::<u64, _, _>(|scope| {
        let ((input, capability), samples) = scope.new_unordered_input::<CameraSample<FramePixels>>();
        let counts = Arc::clone(kept);
        let on_frame = process.hooks.on_frame.clone();
        let frames = samples
            .decode(max_fps, move |meta: &FrameMeta, outcome| {
                let Ok(mut counts) = counts.lock() else { return };
                // Allocate the camera's key once, not on every frame.
                if !counts.contains_key(&meta.camera_id) {
                    counts.insert(meta.camera_id.clone(), (0, 0));
                }
                let Some(entry) = counts.get_mut(&meta.camera_id) else { return };
                match outcome {
                    DecodeOutcome::Kept => entry.0 += 1,
                    DecodeOutcome::Sampled => entry.1 += 1,
                    DecodeOutcome::Failed(error) => tracing::warn!(%error, "frame not decoded"),
                }
            })
            .inspect(move |tensor| {
                if let Some(on_frame) = &on_frame {
                    on_frame(index, tensor);
                }
            });
        let (Some(pool), Some(model)) = (&process.pool, &process.config.model) else {
            frames.probe_with(&probe);
            return (input, capability, None, None);
        };
        let (counters, metrics) = (Arc::clone(&process.counters), Arc::clone(&process.metrics));
        // Only the process that delivers writes the audit log: elsewhere the detections
        // are counted, not kept.
        let keep_rows = process.delivers;
        let on_observation = process.hooks.on_observation.clone();
        let holder = process.evidence.clone();
        let observations = frames
            .infer(pool, model.infer_config(), move |frame, observation| {
                if let Some(store) = &holder {
                    store.hold(frame, observation);
                }
            })
            .inspect(move |o| {
                metrics.stage_times.record(Stage::Inferred, o.capture_ms);
                counters.detections.fetch_add(o.detections.len() as u64, Ordering::Relaxed);
                if keep_rows && !o.detections.is_empty() {
                    counters.rows.lock().unwrap_or_else(|p| p.into_inner()).extend(o.detections.iter().cloned());
                }
                if let Some(on_observation) = &on_observation {
                    on_observation(index, o);
                }
            });
        if process.reference.is_none() {
            observations.probe_with(&probe);
            return (input, capability, None, None);
        }
        let drawer = process.evidence.clone().map(|store| store as Arc<dyn EvidenceFrames>);
        let route = Some(Arc::clone(&process.route));
        let (plant, work_probe) =
            workflow::build_on(scope, observations, process.workflow.clone(), Rc::clone(collected), drawer, route);
        (input, capability, Some(plant), Some(work_probe))
    });
    Dataflow { input, capability, plant, probe, work_probe }
}
