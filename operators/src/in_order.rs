//! Buffers an operator's input by timestamp and releases each time once the input
//! frontier has passed it, oldest first: stateful operators then see the same sequence
//! whatever the batching, worker count or process layout, which keeps them deterministic.

use std::collections::BTreeMap;

use timely::dataflow::operators::Capability;
use timely::progress::frontier::MutableAntichain;

#[derive(Debug)]
pub(crate) struct InOrder<D> {
    pending: BTreeMap<u64, Vec<D>>,
    capability: Option<Capability<u64>>,
}

impl<D> InOrder<D> {
    pub(crate) fn new(capability: Capability<u64>) -> Self {
        InOrder { pending: BTreeMap::new(), capability: Some(capability) }
    }

    pub(crate) fn stash(&mut self, time: u64, data: impl IntoIterator<Item = D>) {
        self.pending.entry(time).or_default().extend(data);
    }

    /// The earliest time the operator can still emit at.
    pub(crate) fn earliest(&self) -> Option<u64> {
        self.capability.as_ref().map(|c| *c.time())
    }

    /// The lowest time the input may still deliver, `None` once it is closed.
    pub(crate) fn lower(frontier: &MutableAntichain<u64>) -> Option<u64> {
        frontier.frontier().iter().min().copied()
    }

    /// Every stashed time below the frontier, oldest first, each with a capability to
    /// emit at that time. Afterwards the operator holds only what it may still need.
    pub(crate) fn ready(&mut self, frontier: &MutableAntichain<u64>) -> Vec<(Capability<u64>, Vec<D>)> {
        let lower = Self::lower(frontier);
        let mut out = Vec::new();
        if let Some(capability) = &self.capability {
            while let Some(entry) = self.pending.first_entry() {
                if lower.is_some_and(|lower| *entry.key() >= lower) {
                    break;
                }
                let time = *entry.key();
                out.push((capability.delayed(&time), entry.remove()));
            }
        }
        match lower {
            Some(lower) => {
                if let Some(capability) = &mut self.capability
                    && *capability.time() < lower
                {
                    capability.downgrade(&lower);
                }
            }
            None => self.capability = None,
        }
        out
    }
}
