//! The task-list machine: local edits, broadcast of new operations, and
//! anti-entropy by version vector with delta transfer.
//!
//! - **Broadcast.** Local operations are batched for `batch_delay` and
//!   emitted as [`Output::Publish`] on the list's topic, channel
//!   [`Channel::Tasks`] (a [`TaskBatch`]); the driver publishes them with
//!   gossip and feeds deliveries back with [`TaskSync::handle_published`].
//! - **Anti-entropy.** Every `sync_interval`, and at once when a peer is
//!   added (e.g. a gossip neighbour came up, as after a partition heals),
//!   the machine sends one peer of the list a `SyncRequest` with its
//!   version vector. The peer answers with exactly the operations the
//!   vector lacks (per author, those above its counter) in `SyncOps`
//!   chunks of at most `max_chunk_bytes`, the last one marked `done`, and,
//!   if the vector shows operations the peer lacks, a `SyncRequest` of
//!   its own, so one round trip repairs both sides. Only the difference
//!   travels, never the whole state (the partition test prints both
//!   sizes). At most one pull per list is in flight (until its `done`
//!   chunk or `sync_timeout`), so an agent that gains several new
//!   neighbours at once, as when a partition heals, does not download the
//!   same difference from each of them.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use x0x_proto::{Identity, PeerId};

use super::task_list::{MAX_TITLE, OpError, OpKind, SignedOp, Status, TaskId, TaskList, TaskView};
use super::version_vector::VersionVector;
use crate::collab::Output;
use crate::collab::envelope::{Channel, TopicId};
use crate::collab::util::{SignatureCheck, Timers, TokenBucket, WallClock, pick};

/// Version of [`TaskBatch`].
pub const BATCH_VERSION: u8 = 1;

/// What [`TaskSync::poll`] returns.
pub type TaskOutput = Output<TaskMessage, TaskEvent>;

/// Operations published on the list's topic (gossip payload, channel `Tasks`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskBatch {
    /// Format version ([`BATCH_VERSION`]).
    pub version: u8,
    /// The operations.
    pub ops: Vec<SignedOp>,
}

/// Anti-entropy messages, sent directly to one peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskMessage {
    /// "This is what I hold of `list`; send what I lack."
    SyncRequest {
        /// The list.
        list: TopicId,
        /// The sender's version vector.
        vv: VersionVector,
    },
    /// Operations the recipient lacked, in chunks; `done` marks the
    /// last chunk of the answer to one `SyncRequest`.
    SyncOps {
        /// The list.
        list: TopicId,
        /// The operations.
        ops: Vec<SignedOp>,
        /// Last chunk.
        done: bool,
    },
}

/// Things the application learns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskEvent {
    /// The list changed (new operations, local or remote): show it again,
    /// and persist it (debounced) if persistence is on.
    Changed {
        /// The list.
        list: TopicId,
    },
}

/// Why a local edit was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TaskError {
    /// `open` the list first.
    #[error("task list not open")]
    UnknownList,
    /// No such task (or removed).
    #[error("no task {0}")]
    UnknownTask(TaskId),
    /// Already claimed (by the given agent) or done.
    #[error("task already {status} by {by:?}")]
    AlreadyTaken {
        /// Current status.
        status: Status,
        /// Current claimant.
        by: Option<PeerId>,
    },
    /// Text too long.
    #[error("text too long")]
    TooLong,
}

/// Tuning of the task-list machine.
#[derive(Debug, Clone)]
pub struct TaskSyncConfig {
    /// Time between anti-entropy rounds per list.
    pub sync_interval: Duration,
    /// How long a pull may stay unanswered before another may start.
    pub sync_timeout: Duration,
    /// Local operations wait this long to be published together.
    pub batch_delay: Duration,
    /// Largest published batch (bytes of operations).
    pub max_batch_bytes: usize,
    /// Largest `SyncOps` message (bytes of operations).
    pub max_chunk_bytes: usize,
    /// Sync requests served per second per peer.
    pub sync_rate_per_s: f64,
    /// Burst of sync requests served per peer.
    pub sync_burst: f64,
    /// The signature check.
    pub signature_check: SignatureCheck,
}

impl Default for TaskSyncConfig {
    fn default() -> Self {
        Self {
            sync_interval: Duration::from_secs(1),
            sync_timeout: Duration::from_secs(3),
            batch_delay: Duration::from_millis(50),
            max_batch_bytes: 48 * 1024,
            max_chunk_bytes: 48 * 1024,
            sync_rate_per_s: 4.0,
            sync_burst: 8.0,
            signature_check: SignatureCheck::default(),
        }
    }
}

/// Counters of the task-list machine.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TaskStats {
    /// Local operations made.
    pub local_ops: u64,
    /// Remote operations applied (new).
    pub applied: u64,
    /// Remote operations already held.
    pub duplicates: u64,
    /// Operations refused: bad signature.
    pub bad_signature: u64,
    /// Operations refused: malformed, wrong list or version.
    pub invalid: u64,
    /// Operations refused: equivocation.
    pub conflicts: u64,
    /// Undecodable batches.
    pub malformed: u64,
    /// Sync requests sent.
    pub sync_requests: u64,
    /// Sync requests refused by the rate limit.
    pub sync_rate_limited: u64,
    /// Operations sent in `SyncOps`.
    pub sync_ops_sent: u64,
    /// Bytes of operations sent in `SyncOps`.
    pub sync_bytes_sent: u64,
}

impl TaskStats {
    /// Every counter with its stable metric name.
    pub fn counters(&self) -> [(&'static str, u64); 11] {
        [
            ("tasks_local_ops", self.local_ops),
            ("tasks_applied", self.applied),
            ("tasks_duplicates", self.duplicates),
            ("tasks_rejected_bad_signature", self.bad_signature),
            ("tasks_rejected_invalid", self.invalid),
            ("tasks_rejected_conflict", self.conflicts),
            ("tasks_malformed_batches", self.malformed),
            ("tasks_sync_requests", self.sync_requests),
            ("tasks_sync_rate_limited", self.sync_rate_limited),
            ("tasks_sync_ops_sent", self.sync_ops_sent),
            ("tasks_sync_bytes_sent", self.sync_bytes_sent),
        ]
    }
}

#[derive(Debug)]
struct ListState {
    list: TaskList,
    peers: BTreeSet<PeerId>,
    pending: Vec<SignedOp>,
    flush_scheduled: bool,
    buckets: HashMap<PeerId, TokenBucket>,
    /// The pull in flight: to whom, until when.
    pulling: Option<(PeerId, Instant)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Timer {
    Flush(TopicId),
    AntiEntropy(TopicId),
}

/// The task-list state machine of one agent, for all its lists.
#[derive(Debug)]
pub struct TaskSync {
    identity: Identity,
    me: PeerId,
    config: TaskSyncConfig,
    clock: WallClock,
    rng: StdRng,
    lists: BTreeMap<TopicId, ListState>,
    out: VecDeque<TaskOutput>,
    timers: Timers<Timer>,
    stats: TaskStats,
}

impl TaskSync {
    /// A machine for `identity` (`seed`: choice of sync partners).
    pub fn new(identity: Identity, config: TaskSyncConfig, clock: WallClock, seed: u64) -> Self {
        Self {
            me: identity.peer_id(),
            identity,
            config,
            clock,
            rng: StdRng::seed_from_u64(seed),
            lists: BTreeMap::new(),
            out: VecDeque::new(),
            timers: Timers::default(),
            stats: TaskStats::default(),
        }
    }

    /// Open (or create) the replica of `list`.
    pub fn open(&mut self, list: TopicId, now: Instant) {
        let replica = TaskList::new(list, self.config.signature_check);
        self.open_with(replica, now);
    }

    /// Open a replica loaded from storage ([`super::store::TaskStore`]).
    pub fn open_with(&mut self, replica: TaskList, now: Instant) {
        let list = replica.list_id();
        if self.lists.contains_key(&list) {
            return;
        }
        self.lists.insert(
            list,
            ListState {
                list: replica,
                peers: BTreeSet::new(),
                pending: Vec::new(),
                flush_scheduled: false,
                buckets: HashMap::new(),
                pulling: None,
            },
        );
        let at = now + self.config.sync_interval;
        self.set_timer(at, Timer::AntiEntropy(list));
    }

    /// Close a list (its replica is dropped; persist it first if wanted).
    pub fn close(&mut self, list: &TopicId) -> Option<TaskList> {
        self.lists.remove(list).map(|s| s.list)
    }

    /// The replica of `list`.
    pub fn list(&self, list: &TopicId) -> Option<&TaskList> {
        self.lists.get(list).map(|s| &s.list)
    }

    /// One task of `list`, if present.
    pub fn task(&self, list: &TopicId, task: &TaskId) -> Option<TaskView> {
        self.list(list)?.task(task)
    }

    /// The present tasks of `list`.
    pub fn tasks(&self, list: &TopicId) -> Vec<TaskView> {
        self.list(list).map(|l| l.tasks()).unwrap_or_default()
    }

    /// `peer` shares `list` (e.g. a gossip neighbour on its topic): sync
    /// with it now and choose it for later rounds.
    pub fn add_peer(&mut self, list: TopicId, peer: PeerId, now: Instant) {
        if peer == self.me {
            return;
        }
        let Some(s) = self.lists.get_mut(&list) else {
            return;
        };
        if s.peers.insert(peer) {
            self.pull(list, peer, now);
        }
    }

    /// Send `peer` a `SyncRequest` unless a pull is already in flight.
    fn pull(&mut self, list: TopicId, peer: PeerId, now: Instant) {
        let Some(s) = self.lists.get_mut(&list) else {
            return;
        };
        if s.pulling.is_some_and(|(_, until)| until > now) {
            return;
        }
        s.pulling = Some((peer, now + self.config.sync_timeout));
        let vv = s.list.version_vector().clone();
        self.stats.sync_requests += 1;
        self.out.push_back(Output::Send {
            to: peer,
            message: TaskMessage::SyncRequest { list, vv },
        });
    }

    /// `peer` no longer shares `list` (or is gone).
    pub fn remove_peer(&mut self, list: &TopicId, peer: &PeerId) {
        if let Some(s) = self.lists.get_mut(list) {
            s.peers.remove(peer);
            s.buckets.remove(peer);
            if s.pulling.is_some_and(|(p, _)| p == *peer) {
                s.pulling = None;
            }
        }
    }

    /// Add a task; returns its id.
    pub fn add(
        &mut self,
        list: &TopicId,
        title: &str,
        description: &str,
        now: Instant,
    ) -> Result<TaskId, TaskError> {
        if title.len() > MAX_TITLE {
            return Err(TaskError::TooLong);
        }
        let op = self.local(
            list,
            OpKind::Add {
                title: title.to_owned(),
                description: description.to_owned(),
            },
            now,
        )?;
        Ok(op)
    }

    /// Change a task's title.
    pub fn set_title(
        &mut self,
        list: &TopicId,
        task: TaskId,
        title: &str,
        now: Instant,
    ) -> Result<(), TaskError> {
        self.present(list, &task)?;
        if title.len() > MAX_TITLE {
            return Err(TaskError::TooLong);
        }
        self.local(
            list,
            OpKind::SetTitle {
                task,
                title: title.to_owned(),
            },
            now,
        )
        .map(|_| ())
    }

    /// Claim an open task. Refused locally if this replica already sees it
    /// claimed or done; among concurrent claims the lowest
    /// `(Lamport, author)` wins on every replica.
    pub fn claim(&mut self, list: &TopicId, task: TaskId, now: Instant) -> Result<(), TaskError> {
        let v = self.present(list, &task)?;
        if v.status != Status::Open {
            return Err(TaskError::AlreadyTaken {
                status: v.status,
                by: v.claimed_by,
            });
        }
        self.local(list, OpKind::Claim { task }, now).map(|_| ())
    }

    /// Mark a task done.
    pub fn done(&mut self, list: &TopicId, task: TaskId, now: Instant) -> Result<(), TaskError> {
        let v = self.present(list, &task)?;
        if v.status == Status::Done {
            return Err(TaskError::AlreadyTaken {
                status: v.status,
                by: v.done_by,
            });
        }
        self.local(list, OpKind::Done { task }, now).map(|_| ())
    }

    /// Remove a task.
    pub fn remove(&mut self, list: &TopicId, task: TaskId, now: Instant) -> Result<(), TaskError> {
        self.present(list, &task)?;
        let observed = self.lists[list].list.observed_tags(&task);
        self.local(list, OpKind::Remove { task, observed }, now)
            .map(|_| ())
    }

    fn present(&self, list: &TopicId, task: &TaskId) -> Result<TaskView, TaskError> {
        let s = self.lists.get(list).ok_or(TaskError::UnknownList)?;
        s.list.task(task).ok_or(TaskError::UnknownTask(*task))
    }

    fn local(&mut self, list: &TopicId, kind: OpKind, now: Instant) -> Result<TaskId, TaskError> {
        let wall = self.clock.unix_ms(now);
        let s = self.lists.get_mut(list).ok_or(TaskError::UnknownList)?;
        let op = s.list.apply_own(&self.identity, kind, wall);
        let id = op.op.id;
        s.pending.push(op);
        self.stats.local_ops += 1;
        let schedule = !s.flush_scheduled;
        s.flush_scheduled = true;
        if schedule {
            let at = now + self.config.batch_delay;
            self.set_timer(at, Timer::Flush(*list));
        }
        self.out
            .push_back(Output::Event(TaskEvent::Changed { list: *list }));
        Ok(id)
    }

    /// A batch delivered by gossip on `topic`, channel `Tasks`.
    pub fn handle_published(&mut self, topic: TopicId, payload: &[u8], _now: Instant) {
        if !self.lists.contains_key(&topic) {
            return;
        }
        let batch = match postcard::take_from_bytes::<TaskBatch>(payload) {
            Ok((b, [])) if b.version == BATCH_VERSION => b,
            _ => {
                self.stats.malformed += 1;
                return;
            }
        };
        self.apply_ops(topic, batch.ops);
    }

    fn apply_ops(&mut self, list: TopicId, ops: Vec<SignedOp>) {
        let Some(s) = self.lists.get_mut(&list) else {
            return;
        };
        let mut changed = false;
        for op in ops {
            match s.list.apply(op) {
                Ok(true) => {
                    self.stats.applied += 1;
                    changed = true;
                }
                Ok(false) => self.stats.duplicates += 1,
                Err(OpError::BadSignature) => self.stats.bad_signature += 1,
                Err(OpError::Conflict) => self.stats.conflicts += 1,
                Err(_) => self.stats.invalid += 1,
            }
        }
        if changed {
            self.out
                .push_back(Output::Event(TaskEvent::Changed { list }));
        }
    }

    /// A message from `from` (authenticated by the transport).
    pub fn handle(&mut self, from: PeerId, message: TaskMessage, now: Instant) {
        match message {
            TaskMessage::SyncRequest { list, vv } => {
                let (rate, burst) = (self.config.sync_rate_per_s, self.config.sync_burst);
                let Some(s) = self.lists.get_mut(&list) else {
                    return;
                };
                if !s
                    .buckets
                    .entry(from)
                    .or_insert_with(|| TokenBucket::new(rate, burst, now))
                    .take(now)
                {
                    self.stats.sync_rate_limited += 1;
                    return;
                }
                let mut chunk = Vec::new();
                let mut bytes = 0;
                let mut sends = Vec::new();
                for op in s.list.ops_missing(&vv) {
                    let n = op.encoded_len();
                    if bytes + n > self.config.max_chunk_bytes && !chunk.is_empty() {
                        sends.push(std::mem::take(&mut chunk));
                        bytes = 0;
                    }
                    bytes += n;
                    self.stats.sync_ops_sent += 1;
                    self.stats.sync_bytes_sent += n as u64;
                    chunk.push(op.clone());
                }
                sends.push(chunk);
                let last = sends.len() - 1;
                for (i, ops) in sends.into_iter().enumerate() {
                    self.out.push_back(Output::Send {
                        to: from,
                        message: TaskMessage::SyncOps {
                            list,
                            ops,
                            done: i == last,
                        },
                    });
                }
                // The requester holds operations we lack: ask for them.
                if !s.list.version_vector().dominates(&vv) {
                    self.pull(list, from, now);
                }
            }
            TaskMessage::SyncOps { list, ops, done } => {
                self.apply_ops(list, ops);
                if done
                    && let Some(s) = self.lists.get_mut(&list)
                    && s.pulling.is_some_and(|(p, _)| p == from)
                {
                    s.pulling = None;
                }
            }
        }
    }

    /// Run the timers due at `now`.
    pub fn handle_timer(&mut self, now: Instant) {
        while let Some((_, t)) = self.timers.pop_due(now) {
            match t {
                Timer::Flush(list) => self.flush(list),
                Timer::AntiEntropy(list) => {
                    let Some(s) = self.lists.get(&list) else {
                        continue;
                    };
                    let peers: Vec<PeerId> = s.peers.iter().copied().collect();
                    if let Some(&p) = pick(&peers, peers.len(), &mut self.rng) {
                        self.pull(list, p, now);
                    }
                    let f = self.rng.random_range(0.9..1.1);
                    let at = now + self.config.sync_interval.mul_f64(f);
                    self.set_timer(at, Timer::AntiEntropy(list));
                }
            }
        }
    }

    fn flush(&mut self, list: TopicId) {
        let Some(s) = self.lists.get_mut(&list) else {
            return;
        };
        s.flush_scheduled = false;
        let mut batch = Vec::new();
        let mut bytes = 0;
        for op in std::mem::take(&mut s.pending) {
            let n = op.encoded_len();
            if bytes + n > self.config.max_batch_bytes && !batch.is_empty() {
                publish(&mut self.out, list, std::mem::take(&mut batch));
                bytes = 0;
            }
            bytes += n;
            batch.push(op);
        }
        if !batch.is_empty() {
            publish(&mut self.out, list, batch);
        }
    }

    fn set_timer(&mut self, at: Instant, t: Timer) {
        self.timers.insert(at, t);
        self.out.push_back(Output::SetTimer { at });
    }

    /// The next output, if any.
    pub fn poll(&mut self) -> Option<TaskOutput> {
        self.out.pop_front()
    }

    /// The earliest pending timer.
    pub fn next_timeout(&self) -> Option<Instant> {
        self.timers.next_deadline()
    }

    /// The counters.
    pub fn stats(&self) -> TaskStats {
        self.stats
    }

    /// The peers of `list` chosen for anti-entropy.
    pub fn peers(&self, list: &TopicId) -> Vec<PeerId> {
        self.lists
            .get(list)
            .map(|s| s.peers.iter().copied().collect())
            .unwrap_or_default()
    }
}

fn publish(out: &mut VecDeque<TaskOutput>, list: TopicId, ops: Vec<SignedOp>) {
    let payload = postcard::to_stdvec(&TaskBatch {
        version: BATCH_VERSION,
        ops,
    })
    .expect("encoding cannot fail");
    out.push_back(Output::Publish {
        topic: list,
        channel: Channel::Tasks,
        payload: Bytes::from(payload),
    });
}
