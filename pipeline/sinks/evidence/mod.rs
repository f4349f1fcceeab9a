//! Evidence images: `<output>/evidence/<track id>/<frame index>.jpg`, the frame with the
//! defect's box and label drawn, referenced from the work order by URI and SHA-256;
//! beside it the frame as it was, `<frame index>.frame.jpg`, and so a few more of the
//! frames the track was seen in, as the tracker samples them (at most
//! [`MAX_FRAMES_PER_TRACK`] a track), which `defectflow harvest` turns into training
//! data once the CMMS has said what the defect was.
//!
//! The model's stage hands every frame with a detection to the [`EvidenceStore`]; the
//! tracker asks it to draw a track's best frame when it emits the track and tells it
//! which frames it will never ask for again, so the store holds only frames the tracker
//! has not reached yet and the best frames of live tracks. A file is written aside and
//! renamed into place; its name comes from ids the dataflow made, never from input text.
//! JPEG encoding is deterministic: a replay of the same frames writes the same bytes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use defectflow_models::annotate::{evidence_jpeg, frame_jpeg};
use defectflow_operators::decode::FrameTensor;
use defectflow_operators::evidence::{EvidenceFrames, EvidenceRequest};
use defectflow_schemas::{Evidence, FrameObservation};
use sha2::{Digest, Sha256};

use crate::metrics::Metrics;

/// Frames held per camera at most; beyond it the oldest goes (and is counted), so a
/// stalled tracker cannot exhaust memory. The best frame of a live track never goes
/// this way: a track confirmed long after its best sighting (an `unknown` one lasts
/// 15 s first) still gets its image while the tracker lags its camera's inference.
pub const MAX_HELD_PER_CAMERA: usize = 256;

/// Unannotated frames kept per track, for training (the first ones drawn or sampled).
pub const MAX_FRAMES_PER_TRACK: usize = 16;

/// A frame with detections, as the model saw it.
#[derive(Debug)]
struct Held {
    frame_index: u64,
    width: usize,
    height: usize,
    /// `[3, height, width]`.
    pixels: Arc<[u8]>,
}

/// Holds frames with detections and draws the evidence of tracks.
#[derive(Debug)]
pub struct EvidenceStore {
    dir: PathBuf,
    uri_prefix: String,
    frames: Mutex<HashMap<String, CameraFrames>>,
    metrics: Arc<Metrics>,
}

/// One camera's frames held, and which of them its live tracks need.
#[derive(Debug, Default)]
struct CameraFrames {
    held: Vec<Held>,
    /// The best frames of the camera's live tracks, as the tracker last said.
    pinned: Vec<u64>,
}

impl EvidenceStore {
    /// Images go under `dir` (created if missing); a work order names one as
    /// `<uri_prefix><track id>/<frame index>.jpg`.
    pub fn open(dir: &Path, uri_prefix: &str, metrics: Arc<Metrics>) -> std::io::Result<Arc<EvidenceStore>> {
        std::fs::create_dir_all(dir)?;
        Ok(Arc::new(EvidenceStore {
            dir: dir.to_owned(),
            uri_prefix: uri_prefix.to_owned(),
            frames: Mutex::default(),
            metrics,
        }))
    }

    /// Keeps `frame` if the model found something in it.
    pub fn hold(&self, frame: &FrameTensor, observation: &FrameObservation) {
        if observation.detections.is_empty() {
            return;
        }
        let held = Held {
            frame_index: frame.meta.frame_index,
            width: frame.meta.width as usize,
            height: frame.meta.height as usize,
            pixels: Arc::from(frame.bytes()),
        };
        let mut frames = self.frames.lock().unwrap_or_else(|p| p.into_inner());
        let camera = frames.entry(frame.meta.camera_id.clone()).or_default();
        camera.held.push(held);
        if camera.held.len() > MAX_HELD_PER_CAMERA {
            let oldest = camera.held.iter().position(|h| !camera.pinned.contains(&h.frame_index)).unwrap_or(0);
            camera.held.remove(oldest);
            self.metrics.evidence_frames_dropped.fetch_add(1, Ordering::Relaxed);
        }
        self.count_held(&frames);
    }

    fn count_held(&self, frames: &HashMap<String, CameraFrames>) {
        let held = frames.values().map(|c| c.held.len()).sum::<usize>();
        self.metrics.evidence_frames_held.store(held as u64, Ordering::Relaxed);
    }

    /// Frames held now, over all cameras.
    pub fn held(&self) -> usize {
        self.frames.lock().map(|f| f.values().map(|c| c.held.len()).sum()).unwrap_or(0)
    }

    /// Frame `frame_index` of `camera_id`, where it is still held.
    fn held_frame(&self, camera_id: &str, frame_index: u64) -> Option<Held> {
        let frames = self.frames.lock().unwrap_or_else(|p| p.into_inner());
        let held = frames.get(camera_id)?.held.iter().find(|h| h.frame_index == frame_index)?;
        Some(Held { pixels: Arc::clone(&held.pixels), ..*held })
    }

    /// The folder of a track's images, created if missing.
    fn track_folder(&self, track_id: &str) -> Result<PathBuf, String> {
        // Track ids are made by the tracker ("TR-" and hex); anything else would be a bug,
        // and must not become a path.
        if !is_safe_track_id(track_id) {
            return Err(format!("track id `{track_id}` is not a safe file name"));
        }
        let folder = self.dir.join(track_id);
        std::fs::create_dir_all(&folder).map_err(|e| format!("{}: {e}", folder.display()))?;
        Ok(folder)
    }

    fn write(&self, request: &EvidenceRequest<'_>, held: &Held) -> Result<Evidence, String> {
        let folder = self.track_folder(request.track_id)?;
        let label = format!("{} {:.2}", request.class, request.confidence);
        let jpeg =
            evidence_jpeg(&held.pixels, held.width, held.height, &request.bbox, &label).map_err(|e| e.to_string())?;
        let sha256: String = Sha256::digest(&jpeg).iter().map(|b| format!("{b:02x}")).collect();
        let name = format!("{}.jpg", request.frame_index);
        let path = folder.join(&name);
        let aside = folder.join(format!(".{name}.tmp"));
        let failed = |e: std::io::Error, p: &Path| format!("{}: {e}", p.display());
        std::fs::write(&aside, &jpeg).map_err(|e| failed(e, &aside))?;
        std::fs::rename(&aside, &path).map_err(|e| failed(e, &path))?;
        if let Err(error) = keep_frame(&folder, request.frame_index, held) {
            tracing::warn!(track = request.track_id, %error, "the frame behind the evidence was not kept");
        }
        Ok(Evidence {
            uri: format!("{}{}/{name}", self.uri_prefix, request.track_id),
            sha256,
            frame_index: request.frame_index,
            capture_ms: request.capture_ms,
            bbox: request.bbox,
        })
    }
}

/// Whether `track_id` may name a folder: what the tracker makes ("TR-" and hex),
/// letters, digits and `-` only.
pub fn is_safe_track_id(track_id: &str) -> bool {
    !track_id.is_empty() && track_id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

/// Writes the frame as it was beside its evidence image, unless the track's folder holds
/// [`MAX_FRAMES_PER_TRACK`] such frames already.
fn keep_frame(folder: &Path, frame_index: u64, held: &Held) -> Result<(), String> {
    let name = format!("{frame_index}.frame.jpg");
    let path = folder.join(&name);
    let kept = std::fs::read_dir(folder)
        .map_err(|e| format!("{}: {e}", folder.display()))?
        .filter(|e| e.as_ref().is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".frame.jpg")))
        .count();
    if path.exists() || kept >= MAX_FRAMES_PER_TRACK {
        return Ok(());
    }
    let jpeg = frame_jpeg(&held.pixels, held.width, held.height).map_err(|e| e.to_string())?;
    let aside = folder.join(format!(".{name}.tmp"));
    std::fs::write(&aside, &jpeg).map_err(|e| format!("{}: {e}", aside.display()))?;
    std::fs::rename(&aside, &path).map_err(|e| format!("{}: {e}", path.display()))
}

impl EvidenceFrames for EvidenceStore {
    fn draw(&self, request: &EvidenceRequest<'_>) -> Option<Evidence> {
        let Some(held) = self.held_frame(request.camera_id, request.frame_index) else {
            self.metrics.evidence_missing.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(track = request.track_id, frame = request.frame_index, "evidence frame no longer held");
            return None;
        };
        match self.write(request, &held) {
            Ok(evidence) => {
                self.metrics.evidence_written.fetch_add(1, Ordering::Relaxed);
                Some(evidence)
            }
            Err(error) => {
                self.metrics.evidence_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(track = request.track_id, %error, "evidence image not written");
                None
            }
        }
    }

    fn keep(&self, track_id: &str, camera_id: &str, frame_index: u64) {
        let Some(held) = self.held_frame(camera_id, frame_index) else { return };
        let kept = self.track_folder(track_id).and_then(|folder| keep_frame(&folder, frame_index, &held));
        if let Err(error) = kept {
            tracing::warn!(track = track_id, %error, "a frame of the track was not kept");
        }
    }

    fn release(&self, camera_id: &str, through: u64, keep: &[u64]) {
        let mut frames = self.frames.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(camera) = frames.get_mut(camera_id) {
            camera.held.retain(|h| h.frame_index > through || keep.contains(&h.frame_index));
            camera.pinned.clear();
            camera.pinned.extend_from_slice(keep);
        }
        self.count_held(&frames);
    }
}

#[cfg(test)]
mod tests {
    use defectflow_schemas::{BoundingBox, DefectClass, Detection, FrameMeta};

    use super::*;

    /// Frame `index` of camera `cam`, 16×8 pixels, with one detection.
    fn frame(index: u64) -> (FrameTensor, FrameObservation) {
        let meta = FrameMeta {
            camera_id: "cam".into(),
            frame_index: index,
            capture_ms: index * 200,
            pts_ns: None,
            width: 16,
            height: 8,
        };
        let detection = Detection {
            camera_id: "cam".into(),
            frame_index: index,
            capture_ms: index * 200,
            class: DefectClass::Unknown,
            confidence: 0.5,
            bbox: BoundingBox { x: 0.0, y: 0.0, width: 8.0, height: 8.0 },
            area_px: 64.0,
            model_version: "m".into(),
            shadow: false,
        };
        let observation = FrameObservation {
            camera_id: "cam".into(),
            frame_index: index,
            capture_ms: index * 200,
            detections: vec![detection],
        };
        (FrameTensor { meta, data: Arc::new(vec![index as u8; 3 * 16 * 8]) }, observation)
    }

    #[test]
    fn the_cap_drops_the_oldest_frames_but_never_a_live_track_s_best_one() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = EvidenceStore::open(dir.path(), "evidence/", Metrics::new()).expect("store");
        for index in 0..10 {
            let (tensor, observation) = frame(index);
            store.hold(&tensor, &observation);
        }
        // The tracker has reached frame 4; frame 2 is the best of a track still live.
        store.release("cam", 4, &[2]);
        assert_eq!(store.held(), 6, "frames 5 to 9, and frame 2");
        // The tracker stalls while inference goes on: far more frames than the cap.
        for index in 10..(10 + 2 * MAX_HELD_PER_CAMERA as u64) {
            let (tensor, observation) = frame(index);
            store.hold(&tensor, &observation);
        }
        assert_eq!(store.held(), MAX_HELD_PER_CAMERA, "the cap holds");
        assert!(store.held_frame("cam", 2).is_some(), "the live track's best frame is still held");
        assert!(store.held_frame("cam", 5).is_none(), "the oldest others went");
        let newest = 9 + 2 * MAX_HELD_PER_CAMERA as u64;
        assert!(store.held_frame("cam", newest).is_some(), "the newest frame is held");
        // Once the track is gone the frame may go too.
        store.release("cam", 4, &[]);
        let (tensor, observation) = frame(newest + 1);
        store.hold(&tensor, &observation);
        assert!(store.held_frame("cam", 2).is_none(), "no longer pinned, it was the oldest");
    }
}
