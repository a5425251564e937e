//! Version vectors: per author, how many of its operations (a contiguous
//! prefix of its counters `1..=n`) a replica holds.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use x0x_proto::PeerId;

/// Per author, the highest counter `n` such that the replica holds all of
/// that author's operations `1..=n`. Absent authors are 0.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionVector(BTreeMap<PeerId, u64>);

impl VersionVector {
    /// An empty vector.
    pub fn new() -> Self {
        Self::default()
    }

    /// The counter of `author`.
    pub fn get(&self, author: &PeerId) -> u64 {
        self.0.get(author).copied().unwrap_or(0)
    }

    /// Set the counter of `author` (0 removes it).
    pub fn set(&mut self, author: PeerId, n: u64) {
        if n == 0 {
            self.0.remove(&author);
        } else {
            self.0.insert(author, n);
        }
    }

    /// Pointwise maximum.
    pub fn merge(&mut self, other: &Self) {
        for (a, &n) in &other.0 {
            if n > self.get(a) {
                self.0.insert(*a, n);
            }
        }
    }

    /// Whether this vector is ≥ `other` everywhere.
    pub fn dominates(&self, other: &Self) -> bool {
        other.0.iter().all(|(a, &n)| self.get(a) >= n)
    }

    /// The authors and counters, in author order.
    pub fn iter(&self) -> impl Iterator<Item = (&PeerId, &u64)> {
        self.0.iter()
    }

    /// Number of authors.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// No author at all.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Total operations covered.
    pub fn total(&self) -> u64 {
        self.0.values().sum()
    }
}
