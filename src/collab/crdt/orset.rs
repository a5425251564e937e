//! An add-wins observed-remove set.
//!
//! Every add carries a unique tag; a remove names the tags of the element
//! its author had observed, so an add the remover had not seen (a
//! concurrent add, with a fresh tag) survives: add wins. Tombstones are
//! kept per element, so a remove only ever affects the element it names.
//! State merge is union of adds and of tombstones.

use std::collections::{BTreeMap, BTreeSet};

/// An add-wins OR-set of `E` with tags `T`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrSet<E: Ord, T: Ord> {
    adds: BTreeMap<E, BTreeSet<T>>,
    removed: BTreeMap<E, BTreeSet<T>>,
}

impl<E: Ord, T: Ord> Default for OrSet<E, T> {
    fn default() -> Self {
        Self {
            adds: BTreeMap::new(),
            removed: BTreeMap::new(),
        }
    }
}

impl<E: Ord + Clone, T: Ord + Clone> OrSet<E, T> {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add `e` with the unique tag `tag`.
    pub fn add(&mut self, e: E, tag: T) {
        self.adds.entry(e).or_default().insert(tag);
    }

    /// Remove the observed tags of `e`.
    pub fn remove(&mut self, e: E, observed: impl IntoIterator<Item = T>) {
        self.removed.entry(e).or_default().extend(observed);
    }

    /// The live tags of `e` (what a remove of `e` must name).
    pub fn tags(&self, e: &E) -> Vec<T> {
        let dead = self.removed.get(e);
        self.adds
            .get(e)
            .map(|t| {
                t.iter()
                    .filter(|t| dead.is_none_or(|d| !d.contains(t)))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Whether `e` is in the set.
    pub fn contains(&self, e: &E) -> bool {
        let dead = self.removed.get(e);
        self.adds
            .get(e)
            .is_some_and(|t| t.iter().any(|t| dead.is_none_or(|d| !d.contains(t))))
    }

    /// The elements in the set, in order, lazily.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &E> {
        self.adds.keys().filter(|e| self.contains(e))
    }

    /// The elements in the set, in order.
    pub fn elements(&self) -> Vec<E> {
        self.adds
            .keys()
            .filter(|e| self.contains(e))
            .cloned()
            .collect()
    }

    /// Merge another replica.
    pub fn merge(&mut self, other: &Self) {
        for (e, t) in &other.adds {
            self.adds
                .entry(e.clone())
                .or_default()
                .extend(t.iter().cloned());
        }
        for (e, t) in &other.removed {
            self.removed
                .entry(e.clone())
                .or_default()
                .extend(t.iter().cloned());
        }
    }
}
