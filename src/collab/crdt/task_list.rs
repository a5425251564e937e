//! The replicated task list: signed operations and the state they build.
//!
//! A replica is the set of signed operations it holds ([`SignedOp`],
//! keyed by [`OpId`] = `(author, counter)`, counters dense from 1 per
//! author), plus the view those operations determine:
//!
//! - the tasks present: an add-wins [`OrSet`] of task ids, where a task's
//!   id is the id of the `Add` that created it, `Remove` names the add
//!   tags it observed and `Restore` adds a fresh tag (so a restore
//!   concurrent with a remove wins);
//! - per task, `title` and `description` as [`LwwRegister`]s stamped
//!   `(Lamport, author)`;
//! - per task, the status: `Open < Claimed < Done`, the maximum reached by
//!   any operation, so it never moves back; `claimed_by` is the author of
//!   the claim with the *lowest* `(Lamport, author)` stamp and `done_by`
//!   likewise. A claim made after seeing another claim has a higher
//!   Lamport time and loses; among concurrent claims the smaller author id
//!   wins, identically on every replica. Wall-clock time is carried for
//!   display only and never decides anything, so a backdated clock cannot
//!   win a claim (upstream's earliest-wall-clock rule could).
//!
//! Every operation is applied by commutative, idempotent updates (max,
//! min, set union), so the view is a function of the *set* of operations:
//! replicas holding the same operations are equal whatever the order and
//! duplication of delivery, and [`TaskList::merge`] (union) is a join.
//!
//! Every operation is signed by its author over a domain prefix and its
//! postcard encoding ([`Op::signing_bytes`]); [`TaskList::apply`] verifies
//! it. A second, different operation under an id already held is an
//! equivocation by its author: refused and counted, the first one kept.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use x0x_proto::identity::Signature;
use x0x_proto::{Identity, PeerId};

use super::lww::{FirstWriter, LwwRegister, Stamp};
use super::orset::OrSet;
use super::version_vector::VersionVector;
use crate::collab::envelope::TopicId;
use crate::collab::util::{SignatureCheck, hex, unhex};

/// Version of the operation format.
pub const OP_VERSION: u8 = 1;
/// Longest title, bytes.
pub const MAX_TITLE: usize = 1024;
/// Longest description, bytes.
pub const MAX_DESCRIPTION: usize = 16 * 1024;
/// Most tags a `Remove` may name.
pub const MAX_OBSERVED: usize = 64;

const OP_DOMAIN: &[u8] = b"x0x-tasks-op-v1\0";

/// The id of an operation: its author and the author's counter (1, 2, …).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct OpId {
    /// Who made it.
    pub author: PeerId,
    /// The author's counter.
    pub counter: u64,
}

/// A task is named by the id of the operation that added it.
pub type TaskId = OpId;

impl fmt::Display for OpId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", hex(self.author.as_bytes()), self.counter)
    }
}

/// Why a string is not a task id (`<64 hex author>-<counter>`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected <64 hex characters>-<counter>")]
pub struct ParseTaskIdError;

impl FromStr for OpId {
    type Err = ParseTaskIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (a, c) = s.trim().split_once('-').ok_or(ParseTaskIdError)?;
        Ok(Self {
            author: PeerId::from_bytes(unhex::<32>(a).ok_or(ParseTaskIdError)?),
            counter: c.parse().map_err(|_| ParseTaskIdError)?,
        })
    }
}

/// A task's status. Only moves forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Status {
    /// Nobody works on it.
    Open,
    /// Someone claimed it.
    Claimed,
    /// Finished.
    Done,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Open => "open",
            Self::Claimed => "claimed",
            Self::Done => "done",
        })
    }
}

/// What an operation does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OpKind {
    /// Create a task (its id is this operation's id).
    Add {
        /// Title.
        title: String,
        /// Description.
        description: String,
    },
    /// Set a task's title.
    SetTitle {
        /// The task.
        task: TaskId,
        /// New title.
        title: String,
    },
    /// Set a task's description.
    SetDescription {
        /// The task.
        task: TaskId,
        /// New description.
        description: String,
    },
    /// Claim a task.
    Claim {
        /// The task.
        task: TaskId,
    },
    /// Mark a task done.
    Done {
        /// The task.
        task: TaskId,
    },
    /// Remove a task: the add/restore tags its author observed.
    Remove {
        /// The task.
        task: TaskId,
        /// Tags observed (at most [`MAX_OBSERVED`]).
        observed: Vec<OpId>,
    },
    /// Bring a removed task back (a fresh tag: wins over concurrent removes).
    Restore {
        /// The task.
        task: TaskId,
    },
}

/// One operation on a task list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op {
    /// Format version ([`OP_VERSION`]).
    pub version: u8,
    /// The list (topic) it belongs to.
    pub list: TopicId,
    /// Its id (author and counter).
    pub id: OpId,
    /// Lamport time: greater than every operation its author had seen.
    pub lamport: u64,
    /// The author's wall clock (ms since the Unix epoch), for display only.
    pub wall_ms: u64,
    /// What it does.
    pub kind: OpKind,
}

impl Op {
    /// The bytes signed: a domain prefix and the postcard encoding.
    pub fn signing_bytes(&self) -> Vec<u8> {
        postcard::to_extend(self, OP_DOMAIN.to_vec()).expect("encoding cannot fail")
    }

    /// The stamp that orders this operation's writes.
    pub fn stamp(&self) -> Stamp {
        Stamp {
            lamport: self.lamport,
            author: self.id.author,
        }
    }

    fn validate(&self) -> Result<(), OpError> {
        if self.version != OP_VERSION {
            return Err(OpError::Version);
        }
        if self.id.counter == 0 || self.lamport == 0 {
            return Err(OpError::Invalid("zero counter or lamport time"));
        }
        match &self.kind {
            OpKind::Add { title, description }
                if title.len() > MAX_TITLE || description.len() > MAX_DESCRIPTION =>
            {
                return Err(OpError::Invalid("text too long"));
            }
            OpKind::SetTitle { title, .. } if title.len() > MAX_TITLE => {
                return Err(OpError::Invalid("title too long"));
            }
            OpKind::SetDescription { description, .. } if description.len() > MAX_DESCRIPTION => {
                return Err(OpError::Invalid("description too long"));
            }
            OpKind::Remove { observed, .. } if observed.len() > MAX_OBSERVED => {
                return Err(OpError::Invalid("too many observed tags"));
            }
            _ => {}
        }
        Ok(())
    }
}

/// An operation with its author's signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedOp {
    /// The operation.
    pub op: Op,
    /// `op.id.author`'s signature over [`Op::signing_bytes`].
    pub signature: Signature,
}

impl SignedOp {
    /// Sign `op` (its `id.author` must be `identity`).
    pub fn sign(identity: &Identity, op: Op) -> Self {
        debug_assert_eq!(op.id.author, identity.peer_id());
        let signature = identity.sign(&op.signing_bytes());
        Self { op, signature }
    }

    /// Whether the author's signature verifies.
    pub fn verify(&self, check: &SignatureCheck) -> bool {
        check.check(
            &self.op.id.author,
            &self.op.signing_bytes(),
            &self.signature,
        )
    }

    /// Its encoded size on the wire (postcard).
    pub fn encoded_len(&self) -> usize {
        postcard::experimental::serialized_size(self).unwrap_or(0)
    }
}

/// Why an operation was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OpError {
    /// Unknown operation version.
    #[error("unsupported operation version")]
    Version,
    /// For another list.
    #[error("operation for another list")]
    WrongList,
    /// Not signed by its author.
    #[error("bad signature")]
    BadSignature,
    /// Malformed content.
    #[error("invalid operation: {0}")]
    Invalid(&'static str),
    /// Another operation with the same id is held (author equivocation).
    #[error("conflicting operation for an id already held")]
    Conflict,
}

/// The state of one task, as the operations determine it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct TaskState {
    title: LwwRegister<String>,
    description: LwwRegister<String>,
    claim: FirstWriter,
    done: FirstWriter,
    created: Option<(PeerId, u64)>,
}

/// A task as shown to the application.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskView {
    /// Its id.
    pub id: TaskId,
    /// Title.
    pub title: String,
    /// Description.
    pub description: String,
    /// Status.
    pub status: Status,
    /// Winner of the claims, if claimed.
    pub claimed_by: Option<PeerId>,
    /// Who marked it done first, if done.
    pub done_by: Option<PeerId>,
    /// Who created it.
    pub created_by: PeerId,
    /// The creator's wall clock at creation (display only).
    pub created_wall_ms: u64,
}

/// One replica of a task list (see the module docs).
#[derive(Debug, Clone)]
pub struct TaskList {
    list: TopicId,
    ops: BTreeMap<PeerId, BTreeMap<u64, SignedOp>>,
    vv: VersionVector,
    lamport: u64,
    tasks: BTreeMap<TaskId, TaskState>,
    present: OrSet<TaskId, OpId>,
    check: SignatureCheck,
    conflicts: u64,
}

impl PartialEq for TaskList {
    fn eq(&self, other: &Self) -> bool {
        self.list == other.list
            && self.ops == other.ops
            && self.vv == other.vv
            && self.lamport == other.lamport
            && self.tasks == other.tasks
            && self.present == other.present
    }
}

impl Eq for TaskList {}

impl TaskList {
    /// An empty replica of `list`, checking signatures with `check`.
    pub fn new(list: TopicId, check: SignatureCheck) -> Self {
        Self {
            list,
            ops: BTreeMap::new(),
            vv: VersionVector::new(),
            lamport: 0,
            tasks: BTreeMap::new(),
            present: OrSet::new(),
            check,
            conflicts: 0,
        }
    }

    /// The list (topic) id.
    pub fn list_id(&self) -> TopicId {
        self.list
    }

    /// The version vector (contiguous counters held per author).
    pub fn version_vector(&self) -> &VersionVector {
        &self.vv
    }

    /// The highest Lamport time seen.
    pub fn lamport(&self) -> u64 {
        self.lamport
    }

    /// Operations held.
    pub fn len(&self) -> usize {
        self.ops.values().map(|m| m.len()).sum()
    }

    /// No operation held.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Equivocations refused so far.
    pub fn conflicts(&self) -> u64 {
        self.conflicts
    }

    /// Whether operation `id` is held.
    pub fn contains(&self, id: &OpId) -> bool {
        self.ops
            .get(&id.author)
            .is_some_and(|m| m.contains_key(&id.counter))
    }

    /// Every operation held, by author then counter.
    pub fn ops(&self) -> impl Iterator<Item = &SignedOp> {
        self.ops.values().flat_map(|m| m.values())
    }

    /// The operations a replica with version vector `vv` may lack: per
    /// author, those above its counter (delta sync).
    pub fn ops_missing(&self, vv: &VersionVector) -> impl Iterator<Item = &SignedOp> {
        self.ops
            .iter()
            .flat_map(move |(a, m)| m.range(vv.get(a) + 1..).map(|(_, op)| op))
    }

    /// Verify and apply a received operation. `Ok(true)` if it was new,
    /// `Ok(false)` if already held.
    pub fn apply(&mut self, op: SignedOp) -> Result<bool, OpError> {
        if op.op.list != self.list {
            return Err(OpError::WrongList);
        }
        op.op.validate()?;
        if let Some(held) = self
            .ops
            .get(&op.op.id.author)
            .and_then(|m| m.get(&op.op.id.counter))
        {
            if *held == op {
                return Ok(false);
            }
            if !op.verify(&self.check) {
                return Err(OpError::BadSignature);
            }
            self.conflicts += 1;
            return Err(OpError::Conflict);
        }
        if !op.verify(&self.check) {
            return Err(OpError::BadSignature);
        }
        self.insert_trusted(op);
        Ok(true)
    }

    /// Merge another replica (state join). Its operations were verified
    /// when it took them in, so they are not checked again.
    pub fn merge(&mut self, other: &TaskList) {
        for op in other.ops() {
            if !self.contains(&op.op.id) {
                self.insert_trusted(op.clone());
            }
        }
    }

    /// Insert an operation known to be valid and new.
    pub(crate) fn insert_trusted(&mut self, op: SignedOp) {
        let o = &op.op;
        let stamp = o.stamp();
        self.lamport = self.lamport.max(o.lamport);
        match &o.kind {
            OpKind::Add { title, description } => {
                let t = self.tasks.entry(o.id).or_default();
                t.title.set(stamp, title.clone());
                t.description.set(stamp, description.clone());
                t.created = Some((o.id.author, o.wall_ms));
                self.present.add(o.id, o.id);
            }
            OpKind::SetTitle { task, title } => {
                self.tasks
                    .entry(*task)
                    .or_default()
                    .title
                    .set(stamp, title.clone());
            }
            OpKind::SetDescription { task, description } => {
                self.tasks
                    .entry(*task)
                    .or_default()
                    .description
                    .set(stamp, description.clone());
            }
            OpKind::Claim { task } => self.tasks.entry(*task).or_default().claim.set(stamp),
            OpKind::Done { task } => self.tasks.entry(*task).or_default().done.set(stamp),
            OpKind::Remove { task, observed } => {
                self.present.remove(*task, observed.iter().copied());
            }
            OpKind::Restore { task } => self.present.add(*task, o.id),
        }
        let author = o.id.author;
        let counter = o.id.counter;
        self.ops.entry(author).or_default().insert(counter, op);
        // Advance the contiguous prefix.
        let mut n = self.vv.get(&author);
        if counter == n + 1 {
            let m = &self.ops[&author];
            while m.contains_key(&(n + 1)) {
                n += 1;
            }
            self.vv.set(author, n);
        }
    }

    /// A new operation by `identity` (next counter, next Lamport time),
    /// signed; apply it with [`TaskList::apply`] or `apply_own`.
    pub fn make_op(&self, identity: &Identity, kind: OpKind, wall_ms: u64) -> SignedOp {
        let author = identity.peer_id();
        let counter = self
            .ops
            .get(&author)
            .and_then(|m| m.last_key_value())
            .map_or(0, |(c, _)| *c)
            + 1;
        SignedOp::sign(
            identity,
            Op {
                version: OP_VERSION,
                list: self.list,
                id: OpId { author, counter },
                lamport: self.lamport + 1,
                wall_ms,
                kind,
            },
        )
    }

    /// Make, apply and return a new operation of `identity`.
    pub fn apply_own(&mut self, identity: &Identity, kind: OpKind, wall_ms: u64) -> SignedOp {
        let op = self.make_op(identity, kind, wall_ms);
        self.insert_trusted(op.clone());
        op
    }

    /// The live tags of `task` (what a `Remove` must name).
    pub fn observed_tags(&self, task: &TaskId) -> Vec<OpId> {
        self.present.tags(task)
    }

    /// The view of `task`, if present.
    pub fn task(&self, id: &TaskId) -> Option<TaskView> {
        if !self.present.contains(id) {
            return None;
        }
        let t = self.tasks.get(id)?;
        let (created_by, created_wall_ms) = t.created?;
        let status = if t.done.get().is_some() {
            Status::Done
        } else if t.claim.get().is_some() {
            Status::Claimed
        } else {
            Status::Open
        };
        Some(TaskView {
            id: *id,
            title: t.title.get().cloned().unwrap_or_default(),
            description: t.description.get().cloned().unwrap_or_default(),
            status,
            claimed_by: t.claim.get().map(|s| s.author),
            done_by: t.done.get().map(|s| s.author),
            created_by,
            created_wall_ms,
        })
    }

    /// The status of `id` whether or not it is present (for monotonicity checks).
    pub fn status_of(&self, id: &TaskId) -> Option<Status> {
        let t = self.tasks.get(id)?;
        Some(if t.done.get().is_some() {
            Status::Done
        } else if t.claim.get().is_some() {
            Status::Claimed
        } else {
            Status::Open
        })
    }

    /// The ids of the present tasks, in order, lazily.
    pub fn task_ids(&self) -> impl DoubleEndedIterator<Item = &TaskId> {
        self.present.iter()
    }

    /// Every present task, in id order.
    pub fn tasks(&self) -> Vec<TaskView> {
        self.present
            .elements()
            .iter()
            .filter_map(|id| self.task(id))
            .collect()
    }

    /// The encoded size of all operations held (what a full-state transfer costs).
    pub fn encoded_len(&self) -> usize {
        self.ops().map(|o| o.encoded_len()).sum()
    }
}
