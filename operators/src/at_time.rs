//! `at_time`: moves each record of a stream to a later timestamp of its own, as a
//! source that stamps records with their event time would. Used by tests and examples
//! that build inputs with `to_stream` (which puts everything at time 0).

use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::operator::Operator;

/// Extension trait: `stream.at_time(|record| time)`.
pub trait AtTime<'scope, D> {
    /// Re-stamps every record with the time `time_of` gives; a time earlier than the
    /// record's own is raised to it.
    ///
    /// # Examples
    /// ```
    /// use defectflow_operators::at_time::AtTime;
    /// use timely::dataflow::operators::{Capture, capture::Extract, vec::ToStream};
    ///
    /// let out = timely::example(|scope| vec![5u64, 3].to_stream(scope).at_time(|x| *x).capture());
    /// assert_eq!(out.extract(), vec![(3, vec![3]), (5, vec![5])]);
    /// ```
    fn at_time(self, time_of: impl Fn(&D) -> u64 + 'static) -> StreamVec<'scope, u64, D>;
}

impl<'scope, D: Clone + 'static> AtTime<'scope, D> for StreamVec<'scope, u64, D> {
    fn at_time(self, time_of: impl Fn(&D) -> u64 + 'static) -> StreamVec<'scope, u64, D> {
        self.unary(Pipeline, "AtTime", move |_, _| {
            move |input, output| {
                input.for_each(|capability, data| {
                    let Some(&now) = capability.least() else { return };
                    for record in data.drain(..) {
                        let time = time_of(&record).max(now);
                        output.session(&capability.delayed(&time, 0)).give(record);
                    }
                });
            }
        })
    }
}
