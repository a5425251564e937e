//! CRDT task lists: a replicated list of tasks per topic.
//!
//! - [`lww`]: last-writer-wins registers ordered by `(Lamport, author)`
//!   ([`LwwRegister`]) and the first-writer register used for claims
//!   ([`FirstWriter`]).
//! - [`orset`]: the add-wins observed-remove set of tasks ([`OrSet`]).
//! - [`version_vector`]: per-author counters for delta sync ([`VersionVector`]).
//! - [`task_list`]: signed operations and the replica they build ([`TaskList`]).
//! - [`sync`]: the sans-IO machine that edits, broadcasts and runs
//!   anti-entropy ([`TaskSync`]).
//! - [`store`]: optional persistence in a directory ([`TaskStore`]).
//!
//! The replica is the set of signed operations it holds; every field of
//! the view is a join (max/min/union) over them, so any two replicas with
//! the same operations are equal. The property tests check merge
//! commutativity, associativity and idempotence for every register, the
//! OR-set, the version vector and the task list (10,000 cases each), and
//! that 5 replicas receiving the same operations in any order, with any
//! duplication, converge.

pub mod lww;
pub mod orset;
pub mod store;
pub mod sync;
pub mod task_list;
pub mod version_vector;

pub use lww::{FirstWriter, LwwRegister, Stamp};
pub use orset::OrSet;
pub use store::{LoadReport, StoreError, TaskStore};
pub use sync::{
    TaskBatch, TaskError, TaskEvent, TaskMessage, TaskOutput, TaskStats, TaskSync, TaskSyncConfig,
};
pub use task_list::{Op, OpError, OpId, OpKind, SignedOp, Status, TaskId, TaskList, TaskView};
pub use version_vector::VersionVector;

#[cfg(test)]
mod tests;
