//! The `inventory` stage: reserved(part) = Σ quantities over open work orders' parts
//! lists; available = on hand − reserved. [`Stock`] allocates parts to work orders in
//! opening order; [`StockLevels`] keeps on hand, reserved and available as a
//! differential view.

use std::collections::{BTreeMap, HashMap};

use defectflow_schemas::EpochMillis;
use differential_dataflow::VecCollection;
use differential_dataflow::operators::CountTotal;
use serde::{Deserialize, Serialize};

/// On hand, reserved and available stock of one part.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct StockLevel {
    pub on_hand: i64,
    pub reserved: i64,
    pub available: i64,
}

/// Stock on hand and the reservations of open work orders, in the order they opened.
#[derive(Debug, Default)]
pub struct Stock {
    on_hand: HashMap<String, i64>,
    reorder_point: HashMap<String, i64>,
    /// part → (opened at, work order) → quantity.
    reservations: BTreeMap<String, BTreeMap<(EpochMillis, String), i64>>,
}

impl Stock {
    pub fn add_on_hand(&mut self, part_id: &str, delta: i64) {
        *self.on_hand.entry(part_id.to_owned()).or_default() += delta;
    }

    pub fn set_reorder_point(&mut self, part_id: &str, reorder_point: Option<i64>) {
        match reorder_point {
            Some(point) => self.reorder_point.insert(part_id.to_owned(), point),
            None => self.reorder_point.remove(part_id),
        };
    }

    pub fn reorder_point(&self, part_id: &str) -> i64 {
        self.reorder_point.get(part_id).copied().unwrap_or(0)
    }

    pub fn reserve(&mut self, part_id: &str, opened_at: EpochMillis, work_order_id: &str, quantity: i64) {
        self.reservations
            .entry(part_id.to_owned())
            .or_default()
            .insert((opened_at, work_order_id.to_owned()), quantity);
    }

    pub fn release(&mut self, part_id: &str, opened_at: EpochMillis, work_order_id: &str) {
        if let Some(by_order) = self.reservations.get_mut(part_id) {
            by_order.remove(&(opened_at, work_order_id.to_owned()));
            if by_order.is_empty() {
                self.reservations.remove(part_id);
            }
        }
    }

    pub fn level(&self, part_id: &str) -> StockLevel {
        let on_hand = self.on_hand.get(part_id).copied().unwrap_or(0);
        let reserved = self.reservations.get(part_id).map_or(0, |by_order| by_order.values().sum());
        StockLevel { on_hand, reserved, available: on_hand - reserved }
    }

    /// Whether the stock covers the work order's reservation once every earlier
    /// work order's reservation of the part is served first.
    pub fn covers(&self, part_id: &str, opened_at: EpochMillis, work_order_id: &str) -> bool {
        let on_hand = self.on_hand.get(part_id).copied().unwrap_or(0);
        let Some(by_order) = self.reservations.get(part_id) else { return true };
        let mut cumulative = 0;
        for ((at, order), quantity) in by_order {
            cumulative += quantity;
            if *at == opened_at && order == work_order_id {
                return cumulative <= on_hand;
            }
        }
        true
    }

    /// Every part with stock or reservations, for checks against the differential view.
    pub fn levels(&self) -> BTreeMap<String, StockLevel> {
        self.on_hand.keys().chain(self.reservations.keys()).map(|part| (part.clone(), self.level(part))).collect()
    }
}

/// One figure of a part's stock in the [`StockLevels`] view.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StockMeasure {
    OnHand,
    Reserved,
    Available,
}

/// Extension trait: the stock view over reservations and stock movements.
pub trait StockLevels<'scope> {
    /// Reservations `(part_id, work_order_id, quantity)` of open work orders and stock
    /// movements `(part_id, delta)` in; `((part_id, measure), value)` out: on hand,
    /// reserved and available (on hand − reserved) per part, a figure of 0 being
    /// absent. Closing a work order retracts its reservation rows upstream; parts
    /// consumed on completion arrive as negative movements.
    ///
    /// # Examples
    /// ```
    /// use defectflow_operators::inventory::{StockLevels, StockMeasure::*};
    /// use differential_dataflow::AsCollection;
    /// use timely::dataflow::operators::{ToStream, Capture, capture::Extract};
    ///
    /// let out = timely::example(|scope| {
    ///     let movements = vec![(("belt".to_string(), 3i64), 0u64, 1isize)].to_stream(scope).as_collection();
    ///     vec![
    ///         (("belt".to_string(), "WO-a".to_string(), 2i64), 1u64, 1isize),
    ///         (("belt".to_string(), "WO-a".to_string(), 2i64), 4, -1), // released at 4
    ///     ]
    ///     .to_stream(scope)
    ///     .as_collection()
    ///     .stock_levels(movements)
    ///     .inner
    ///     .capture()
    /// });
    /// let mut rows: Vec<_> = out.extract().into_iter().flat_map(|(_, v)| v).collect();
    /// rows.sort_by_key(|((key, _), time, diff)| (*time, *diff, key.1));
    /// let belt = |measure, value| (("belt".to_string(), measure), value);
    /// assert_eq!(rows, vec![
    ///     (belt(OnHand, 3), 0, 1),
    ///     (belt(Available, 3), 0, 1),
    ///     (belt(Available, 3), 1, -1),
    ///     (belt(Reserved, 2), 1, 1),
    ///     (belt(Available, 1), 1, 1),
    ///     (belt(Reserved, 2), 4, -1),
    ///     (belt(Available, 1), 4, -1),
    ///     (belt(Available, 3), 4, 1),
    /// ]);
    /// ```
    fn stock_levels(
        self,
        movements: VecCollection<'scope, u64, (String, i64)>,
    ) -> VecCollection<'scope, u64, ((String, StockMeasure), i64)>;
}

impl<'scope> StockLevels<'scope> for VecCollection<'scope, u64, (String, String, i64)> {
    fn stock_levels(
        self,
        movements: VecCollection<'scope, u64, (String, i64)>,
    ) -> VecCollection<'scope, u64, ((String, StockMeasure), i64)> {
        // Quantities ride on the diffs, so each figure is one keyed running sum: a change
        // costs the work of its own keys however many rows there are.
        let stock_in = movements.explode(|(part, delta)| {
            [((part.clone(), StockMeasure::OnHand), delta as isize), ((part, StockMeasure::Available), delta as isize)]
        });
        let reserved = self.explode(|(part, _work_order, quantity)| {
            [
                ((part.clone(), StockMeasure::Reserved), quantity as isize),
                ((part, StockMeasure::Available), -(quantity as isize)),
            ]
        });
        stock_in.concat(reserved).count_total().map(|(key, value)| (key, value as i64))
    }
}
