//! Swapping the model of a running [`InferencePool`](crate::infer::InferencePool).
//!
//! A swap takes over from the first batch handed to the pool after it: every batch handed
//! over before is scored by the model before, whichever thread takes it and however late.
//! So each camera's frames (handed over in order) change model once, and no frame is lost
//! or scored twice. Deciding by when each thread saw the swap instead would let one
//! thread score a camera's later frames with the old model after another thread scored
//! its earlier frames with the new one.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use burn::tensor::backend::Backend;
use crossbeam_channel as channel;
use defectflow_models::detector::Detector;

use crate::gating::CameraGates;

/// A model for an inference thread and the first batch (in the order batches were
/// handed to the pool) it scores.
pub(crate) struct Model<B: Backend> {
    pub(crate) from: u64,
    pub(crate) detector: Detector<B>,
    pub(crate) gates: Option<CameraGates>,
}

/// Swaps the model of a running pool: each inference thread gets its detector of the new
/// model (and the gates for it), which scores every batch handed over from now on. Every
/// detection names the version of the model that made it.
pub struct ModelSwitch<B: Backend> {
    pub(crate) threads: Vec<channel::Sender<Model<B>>>,
    /// Batches handed to the pool so far (the pool's counter).
    pub(crate) handed_over: Arc<AtomicU64>,
}

impl<B: Backend> ModelSwitch<B> {
    /// How many detectors a swap takes: one per inference thread.
    pub fn threads(&self) -> usize {
        self.threads.len()
    }

    /// Hands each thread its detector of the new model; fails, changing nothing, unless
    /// there is one per thread.
    pub fn swap(&self, detectors: Vec<Detector<B>>, gates: Option<CameraGates>) -> Result<(), String> {
        if detectors.len() != self.threads.len() {
            return Err(format!("{} detectors for {} inference threads", detectors.len(), self.threads.len()));
        }
        let from = self.handed_over.load(Ordering::SeqCst);
        for (thread, detector) in self.threads.iter().zip(detectors) {
            let model = Model { from, detector, gates: gates.clone() };
            thread.send(model).map_err(|_| "the inference threads have stopped".to_owned())?;
        }
        Ok(())
    }
}

impl<B: Backend> std::fmt::Debug for ModelSwitch<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelSwitch").field("threads", &self.threads.len()).finish()
    }
}

/// The models one inference thread scores with, oldest first: the newest two are kept
/// (a batch handed over before both, held up past two swaps, goes to the older).
pub(crate) struct Models<B: Backend> {
    models: VecDeque<Model<B>>,
    /// The newest model this thread has scored with.
    used: u64,
}

impl<B: Backend> Models<B> {
    pub(crate) fn new(detector: Detector<B>, gates: Option<CameraGates>) -> Models<B> {
        Models { models: VecDeque::from([Model { from: 0, detector, gates }]), used: 0 }
    }

    /// Takes the models swapped in since the last call.
    pub(crate) fn take(&mut self, swaps: &channel::Receiver<Model<B>>) {
        for model in swaps.try_iter() {
            self.models.push_back(model);
            if self.models.len() > 2 {
                self.models.pop_front();
            }
        }
    }

    /// The model for the batch handed over `seq`-th.
    pub(crate) fn for_batch(&self, seq: u64) -> usize {
        self.models.iter().rposition(|m| m.from <= seq).unwrap_or(0)
    }

    /// The `index`-th model, and whether it is newer than any this thread has scored
    /// with (what the old model's answers left behind is then forgotten).
    pub(crate) fn use_model(&mut self, index: usize) -> (&Model<B>, bool) {
        let model = &self.models[index];
        let newer = model.from > self.used;
        self.used = self.used.max(model.from);
        (model, newer)
    }

    /// `items` grouped by the model each is for (`seq` says when it was handed over),
    /// oldest model first, in their order within each group.
    pub(crate) fn group<T>(&self, items: Vec<T>, seq: impl Fn(&T) -> u64) -> Vec<(usize, Vec<T>)> {
        let mut groups: Vec<(usize, Vec<T>)> = Vec::new();
        for item in items {
            let index = self.for_batch(seq(&item));
            match groups.iter_mut().find(|(i, _)| *i == index) {
                Some((_, group)) => group.push(item),
                None => groups.push((index, vec![item])),
            }
        }
        groups.sort_by_key(|(i, _)| *i);
        groups
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use defectflow_models::detector::CpuBackend;
    use defectflow_models::model::DefectNetConfig;

    fn detector() -> Detector<CpuBackend> {
        let device = Default::default();
        let config = DefectNetConfig::new();
        let card = defectflow_models::card::ModelCard::untrained(config.clone(), 64, 64);
        Detector::new(config.init(&device), card, device)
    }

    #[test]
    fn batches_go_to_the_model_current_when_they_were_handed_over() {
        let (tx, rx) = channel::unbounded();
        let switch = ModelSwitch { threads: vec![tx], handed_over: Arc::new(AtomicU64::new(5)) };
        let mut models = Models::new(detector(), None);
        switch.swap(vec![detector()], None).expect("swap");
        models.take(&rx);
        // Handed over before the swap (0..5): the old model, even when taken after it.
        let groups = models.group(vec![7u64, 3, 5, 4, 9], |s| *s);
        assert_eq!(groups, vec![(0, vec![3, 4]), (1, vec![7, 5, 9])]);
        let (old, newer) = models.use_model(0);
        assert!(old.from == 0 && !newer);
        let (new, newer) = models.use_model(1);
        assert!(new.from == 5 && newer, "the first batch of the new model forgets the old one's answers");
        assert!(!models.use_model(0).1 && !models.use_model(1).1);
        assert!(switch.swap(vec![], None).is_err(), "one detector per thread");
    }

    #[test]
    fn the_newest_two_models_are_kept() {
        let (tx, rx) = channel::unbounded();
        let handed_over = Arc::new(AtomicU64::new(0));
        let switch = ModelSwitch { threads: vec![tx], handed_over: Arc::clone(&handed_over) };
        let mut models = Models::new(detector(), None);
        for at in [10, 20] {
            handed_over.store(at, Ordering::SeqCst);
            switch.swap(vec![detector()], None).expect("swap");
        }
        models.take(&rx);
        assert_eq!(models.models.iter().map(|m| m.from).collect::<Vec<_>>(), [10, 20]);
        assert_eq!((models.for_batch(3), models.for_batch(15), models.for_batch(20)), (0, 0, 1));
    }
}
