//! Last-writer-wins registers ordered by `(Lamport time, author)`.
//!
//! The order is total and needs no clock agreement: a later Lamport time
//! wins; at equal times the larger author id wins (two writes by one author
//! never share a Lamport time, so distinct writes never tie); and, so that
//! merge stays a join even if an author equivocates (two values under one
//! stamp), equal stamps fall back to comparing the values. Merge is `max`
//! over this order, hence commutative, associative and idempotent for any
//! number of concurrent writers: upstream's register broke ties by hashing
//! a merged vector clock, which is not a function of the two writes alone,
//! so `(a ⊔ b) ⊔ c` and `a ⊔ (b ⊔ c)` differed with three writers (see the
//! regression test `regression_lww_three_concurrent_writers_converge`).
//! Wall clocks play no part.

use serde::{Deserialize, Serialize};
use x0x_proto::PeerId;

/// The position of a write in the total order: Lamport time, then author.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Stamp {
    /// Lamport time of the write.
    pub lamport: u64,
    /// Who wrote it.
    pub author: PeerId,
}

/// A last-writer-wins register.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LwwRegister<T> {
    entry: Option<(Stamp, T)>,
}

impl<T> Default for LwwRegister<T> {
    fn default() -> Self {
        Self { entry: None }
    }
}

impl<T: Ord + Clone> LwwRegister<T> {
    /// An empty register.
    pub fn new() -> Self {
        Self::default()
    }

    /// A register holding `value` written at `stamp`.
    pub fn with(stamp: Stamp, value: T) -> Self {
        Self {
            entry: Some((stamp, value)),
        }
    }

    /// Apply a write (kept only if it is later than the current one).
    pub fn set(&mut self, stamp: Stamp, value: T) {
        let w = Some((stamp, value));
        if w > self.entry {
            self.entry = w;
        }
    }

    /// Merge another replica of the register.
    pub fn merge(&mut self, other: &Self) {
        if other.entry > self.entry {
            self.entry = other.entry.clone();
        }
    }

    /// The current value.
    pub fn get(&self) -> Option<&T> {
        self.entry.as_ref().map(|(_, v)| v)
    }

    /// The stamp of the current value.
    pub fn stamp(&self) -> Option<Stamp> {
        self.entry.as_ref().map(|(s, _)| *s)
    }
}

/// A register keeping the *earliest* stamp written: who claimed first in
/// `(Lamport, author)` order. Merge is `min`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct FirstWriter {
    first: Option<Stamp>,
}

impl FirstWriter {
    /// Record a write at `stamp`.
    pub fn set(&mut self, stamp: Stamp) {
        self.first = Some(match self.first {
            Some(s) => s.min(stamp),
            None => stamp,
        });
    }

    /// Merge another replica.
    pub fn merge(&mut self, other: &Self) {
        if let Some(s) = other.first {
            self.set(s);
        }
    }

    /// The earliest write.
    pub fn get(&self) -> Option<Stamp> {
        self.first
    }
}
