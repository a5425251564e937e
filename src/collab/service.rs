//! A thin async driver: the four machines in one tokio task, over an
//! abstract [`Link`].
//!
//! [`Collab::spawn`] starts the task; the handle is cheap to clone. The
//! transport side is two calls and one trait:
//!
//! - [`Link::send`]: carry one encoded frame ([`wire::encode`]: length
//!   prefix included) to a peer. It must not block: put it in the peer's
//!   bounded queue (see [`crate::collab::gossip::OutboundQueues`] and
//!   [`CollabMessage::is_bulk`]) and let that peer's writer drain it.
//! - [`Collab::deliver`]: a frame body (after the 4-byte length) read from
//!   a peer's collab stream.
//! - [`Collab::peer_up`] / [`Collab::peer_down`]: a connection to a peer
//!   was established / closed or could not be made.
//!
//! Everything else is the application's API: [`Collab::join`],
//! [`Collab::subscribe`], [`Collab::publish`], [`Collab::presence`],
//! [`Collab::presence_events`], [`Collab::find`], [`Collab::task_list`].
//! A subscriber that does not keep up loses messages (counted in
//! [`ServiceStats::subscriber_drops`]); it never slows the others.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::{broadcast, mpsc, oneshot};
use x0x_proto::{Identity, PeerId};

use super::Output;
use super::crdt::{TaskError, TaskId, TaskSync, TaskSyncConfig, TaskView};
use super::envelope::{Channel, MessageId, TopicId};
use super::foaf::{Foaf, FoafConfig, FoafEvent, SignedAgentRecord};
use super::gossip::{Gossip, GossipConfig, GossipEvent, GossipStats, PublishError};
use super::presence::{Presence, PresenceConfig, PresenceEvent};
use super::util::WallClock;
use super::wire::{self, CollabMessage};

/// A refresh joins through the directory's members below this many neighbours.
pub const REFRESH_MIN_ACTIVE: usize = 3;

/// Carries frames to peers. Implemented by the transport (QUIC streams in
/// the agent, channels in tests).
pub trait Link: Send + Sync + 'static {
    /// Queue one frame (length prefix included) for `to`. Must not block.
    /// `bulk` frames ([`CollabMessage::is_bulk`]) go on the bulk stream,
    /// the others on the control stream.
    fn send(&self, to: PeerId, frame: Bytes, bulk: bool);
}

/// Configuration of every machine.
#[derive(Debug, Clone)]
pub struct CollabConfig {
    /// Gossip.
    pub gossip: GossipConfig,
    /// Presence.
    pub presence: PresenceConfig,
    /// Friend-of-a-friend discovery.
    pub foaf: FoafConfig,
    /// Task lists.
    pub tasks: TaskSyncConfig,
    /// Messages buffered per subscriber before new ones are dropped.
    pub subscription_capacity: usize,
    /// Seed of the machines' random choices (`None`: random).
    pub seed: Option<u64>,
}

impl Default for CollabConfig {
    fn default() -> Self {
        Self {
            gossip: GossipConfig::default(),
            presence: PresenceConfig::default(),
            foaf: FoafConfig::default(),
            tasks: TaskSyncConfig::default(),
            subscription_capacity: 1024,
            seed: None,
        }
    }
}

/// A message received on a subscribed topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The topic.
    pub topic: TopicId,
    /// The message id.
    pub id: MessageId,
    /// Who published it (verified).
    pub author: PeerId,
    /// The author's sequence number.
    pub seq: u64,
    /// The author's clock at publication (ms since the Unix epoch).
    pub timestamp_ms: u64,
    /// This agent's clock at delivery (ms since the Unix epoch).
    pub received_ms: u64,
    /// The payload.
    pub payload: Bytes,
}

/// The stream of messages of one subscription.
pub type Subscription = mpsc::Receiver<Message>;

/// Counters of the service and its machines.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServiceStats {
    /// Gossip counters.
    pub gossip: GossipStats,
    /// Frames from peers that could not be decoded.
    pub malformed_frames: u64,
    /// Messages dropped because a subscriber was full.
    pub subscriber_drops: u64,
}

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServiceError {
    /// The service task has stopped.
    #[error("the collaboration service has stopped")]
    Stopped,
    /// Publishing failed.
    #[error(transparent)]
    Publish(#[from] PublishError),
    /// A task-list edit was refused.
    #[error(transparent)]
    Task(#[from] TaskError),
}

enum Cmd {
    Deliver(PeerId, Bytes),
    PeerUp(PeerId),
    PeerDown(PeerId),
    SetAddrs(Vec<SocketAddr>),
    Join(TopicId, Vec<PeerId>),
    Subscribe(TopicId, mpsc::Sender<Message>),
    Publish(
        TopicId,
        Bytes,
        oneshot::Sender<Result<MessageId, PublishError>>,
    ),
    Presence(TopicId, oneshot::Sender<Vec<PeerId>>),
    Find(PeerId, oneshot::Sender<Option<SignedAgentRecord>>),
    OpenList(TopicId),
    Task(
        TopicId,
        TaskCmd,
        oneshot::Sender<Result<Option<TaskId>, TaskError>>,
    ),
    Tasks(TopicId, oneshot::Sender<Vec<TaskView>>),
    Stats(oneshot::Sender<ServiceStats>),
    Neighbors(TopicId, oneshot::Sender<Vec<PeerId>>),
    Linked(oneshot::Sender<BTreeSet<PeerId>>),
    Refresh(TopicId, Vec<PeerId>, bool),
    Shutdown,
}

enum TaskCmd {
    Add(String),
    Claim(TaskId),
    Done(TaskId),
    Remove(TaskId),
}

/// Handle to the collaboration service of one agent.
#[derive(Clone)]
pub struct Collab {
    me: PeerId,
    capacity: usize,
    tx: mpsc::UnboundedSender<Cmd>,
    presence_events: broadcast::Sender<PresenceEvent>,
}

impl std::fmt::Debug for Collab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Collab").field("me", &self.me).finish()
    }
}

impl Collab {
    /// Start the service for `identity` on the current tokio runtime.
    pub fn spawn(identity: Identity, config: CollabConfig, link: Arc<dyn Link>) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let (presence_events, _) = broadcast::channel(1024);
        let me = identity.peer_id();
        let clock = WallClock::system();
        let seed = config.seed.unwrap_or_else(rand::random);
        let state = State {
            gossip: Gossip::new(identity.clone(), config.gossip, clock, seed),
            presence: Presence::new(identity.clone(), config.presence, clock, seed ^ 1),
            foaf: Foaf::new(identity.clone(), config.foaf, clock, seed ^ 2),
            tasks: TaskSync::new(identity, config.tasks, clock, seed ^ 3),
            clock,
            link,
            subscribers: BTreeMap::new(),
            finds: HashMap::new(),
            events: presence_events.clone(),
            stats: ServiceStats::default(),
        };
        tokio::spawn(state.run(rx));
        Self {
            me,
            capacity: config.subscription_capacity.max(1),
            tx,
            presence_events,
        }
    }

    /// This agent's id.
    pub fn peer_id(&self) -> PeerId {
        self.me
    }

    fn cmd(&self, c: Cmd) {
        let _ = self.tx.send(c);
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Cmd,
    ) -> Result<T, ServiceError> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(make(tx)).map_err(|_| ServiceError::Stopped)?;
        rx.await.map_err(|_| ServiceError::Stopped)
    }

    /// A frame body (after the length prefix) received from `from`.
    pub fn deliver(&self, from: PeerId, body: Bytes) {
        self.cmd(Cmd::Deliver(from, body));
    }

    /// A connection to `peer` is up: it is a neighbour for FOAF and a
    /// direct peer for presence.
    pub fn peer_up(&self, peer: PeerId) {
        self.cmd(Cmd::PeerUp(peer));
    }

    /// The connection to `peer` closed, or could not be made.
    pub fn peer_down(&self, peer: PeerId) {
        self.cmd(Cmd::PeerDown(peer));
    }

    /// This agent's addresses, signed into the record FOAF returns for it.
    pub fn set_addrs(&self, addrs: Vec<SocketAddr>) {
        self.cmd(Cmd::SetAddrs(addrs));
    }

    /// Join `topic` (gossip overlay and presence) through `bootstrap`
    /// (members from the directory). May be called again with more.
    pub fn join(&self, topic: &str, bootstrap: Vec<PeerId>) {
        self.cmd(Cmd::Join(TopicId::new(topic), bootstrap));
    }

    /// Members of `topic` the directory named again: joins through them
    /// only if the active view is short (fewer than [`REFRESH_MIN_ACTIVE`]
    /// neighbours), or, with `mix`, through one member neither view knows
    /// (a slow mixing that merges overlays a partition split, without
    /// churning the active views at every refresh).
    pub fn refresh(&self, topic: &str, members: Vec<PeerId>, mix: bool) {
        self.cmd(Cmd::Refresh(TopicId::new(topic), members, mix));
    }

    /// Messages published on `topic` by others (joins it if needed).
    pub fn subscribe(&self, topic: &str) -> Subscription {
        let (tx, rx) = mpsc::channel(self.capacity);
        self.cmd(Cmd::Subscribe(TopicId::new(topic), tx));
        rx
    }

    /// Publish `payload` on a joined `topic`.
    pub async fn publish(&self, topic: &str, payload: Bytes) -> Result<MessageId, ServiceError> {
        let t = TopicId::new(topic);
        Ok(self.ask(|r| Cmd::Publish(t, payload, r)).await??)
    }

    /// The agents online in `topic`.
    pub async fn presence(&self, topic: &str) -> Result<Vec<PeerId>, ServiceError> {
        let t = TopicId::new(topic);
        self.ask(|r| Cmd::Presence(t, r)).await
    }

    /// Changes of presence, in every topic and among direct peers.
    pub fn presence_events(&self) -> broadcast::Receiver<PresenceEvent> {
        self.presence_events.subscribe()
    }

    /// Look `peer` up through neighbours (friend of a friend).
    pub async fn find(&self, peer: PeerId) -> Result<Option<SignedAgentRecord>, ServiceError> {
        self.ask(|r| Cmd::Find(peer, r)).await
    }

    /// The task list of `topic` (opened, and the topic joined, if needed).
    pub fn task_list(&self, topic: &str) -> TaskListHandle {
        let t = TopicId::new(topic);
        self.cmd(Cmd::OpenList(t));
        TaskListHandle {
            collab: self.clone(),
            list: t,
        }
    }

    /// The counters.
    pub async fn stats(&self) -> Result<ServiceStats, ServiceError> {
        self.ask(Cmd::Stats).await
    }

    /// The active gossip neighbours of `topic`.
    pub async fn neighbors(&self, topic: &str) -> Result<Vec<PeerId>, ServiceError> {
        let t = TopicId::new(topic);
        self.ask(|r| Cmd::Neighbors(t, r)).await
    }

    /// The peers the machines keep links to (every topic's gossip
    /// neighbours and pending neighbour requests); other links the
    /// transport opened may be closed when idle.
    pub async fn linked_peers(&self) -> Result<BTreeSet<PeerId>, ServiceError> {
        self.ask(Cmd::Linked).await
    }

    /// Stop the service task (every handle then answers `Stopped`).
    pub fn shutdown(&self) {
        self.cmd(Cmd::Shutdown);
    }
}

/// One task list, through the service.
#[derive(Debug, Clone)]
pub struct TaskListHandle {
    collab: Collab,
    list: TopicId,
}

impl TaskListHandle {
    async fn edit(&self, c: TaskCmd) -> Result<Option<TaskId>, ServiceError> {
        let l = self.list;
        Ok(self.collab.ask(|r| Cmd::Task(l, c, r)).await??)
    }

    /// Add a task; returns its id.
    pub async fn add(&self, title: &str) -> Result<TaskId, ServiceError> {
        Ok(self
            .edit(TaskCmd::Add(title.to_owned()))
            .await?
            .expect("add returns an id"))
    }

    /// Claim a task.
    pub async fn claim(&self, task: TaskId) -> Result<(), ServiceError> {
        self.edit(TaskCmd::Claim(task)).await.map(|_| ())
    }

    /// Mark a task done.
    pub async fn done(&self, task: TaskId) -> Result<(), ServiceError> {
        self.edit(TaskCmd::Done(task)).await.map(|_| ())
    }

    /// Remove a task.
    pub async fn remove(&self, task: TaskId) -> Result<(), ServiceError> {
        self.edit(TaskCmd::Remove(task)).await.map(|_| ())
    }

    /// The tasks, as this replica sees them.
    pub async fn list(&self) -> Result<Vec<TaskView>, ServiceError> {
        let l = self.list;
        self.collab.ask(|r| Cmd::Tasks(l, r)).await
    }
}

struct State {
    gossip: Gossip,
    presence: Presence,
    foaf: Foaf,
    tasks: TaskSync,
    clock: WallClock,
    link: Arc<dyn Link>,
    subscribers: BTreeMap<TopicId, Vec<mpsc::Sender<Message>>>,
    finds: HashMap<PeerId, Vec<oneshot::Sender<Option<SignedAgentRecord>>>>,
    events: broadcast::Sender<PresenceEvent>,
    stats: ServiceStats,
}

impl State {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Cmd>) {
        loop {
            let deadline = [
                self.gossip.next_timeout(),
                self.presence.next_timeout(),
                self.foaf.next_timeout(),
                self.tasks.next_timeout(),
            ]
            .into_iter()
            .flatten()
            .min();
            let sleep = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                cmd = rx.recv() => match cmd {
                    Some(Cmd::Shutdown) | None => return,
                    Some(cmd) => self.command(cmd, Instant::now()),
                },
                () = sleep => {
                    let now = Instant::now();
                    self.gossip.handle_timer(now);
                    self.presence.handle_timer(now);
                    self.foaf.handle_timer(now);
                    self.tasks.handle_timer(now);
                }
            }
            self.route(Instant::now());
        }
    }

    fn join(&mut self, topic: TopicId, bootstrap: &[PeerId], now: Instant) {
        self.gossip.join(topic, bootstrap, now);
        self.presence.join(topic, now);
    }

    fn command(&mut self, cmd: Cmd, now: Instant) {
        match cmd {
            Cmd::Deliver(from, body) => match wire::decode(&body) {
                Ok(CollabMessage::Gossip(m)) => self.gossip.handle(from, m, now),
                Ok(CollabMessage::Presence(m)) => self.presence.handle(from, m, now),
                Ok(CollabMessage::Foaf(m)) => self.foaf.handle(from, m, now),
                Ok(CollabMessage::Tasks(m)) => self.tasks.handle(from, m, now),
                Err(_) => self.stats.malformed_frames += 1,
            },
            Cmd::PeerUp(peer) => {
                self.foaf.add_neighbor(peer, None);
                self.presence.add_direct_peer(peer, now);
            }
            Cmd::PeerDown(peer) => {
                self.gossip.peer_down(peer, now);
                self.foaf.remove_neighbor(&peer);
                self.presence.remove_direct_peer(peer, now);
            }
            Cmd::SetAddrs(addrs) => self.foaf.set_own_addrs(addrs, now),
            Cmd::Join(topic, bootstrap) => self.join(topic, &bootstrap, now),
            Cmd::Subscribe(topic, tx) => {
                if !self.gossip.is_joined(&topic) {
                    self.join(topic, &[], now);
                }
                self.subscribers.entry(topic).or_default().push(tx);
            }
            Cmd::Publish(topic, payload, reply) => {
                let _ = reply.send(self.gossip.publish(topic, Channel::App, payload, now));
            }
            Cmd::Presence(topic, reply) => {
                let _ = reply.send(self.presence.presence(&topic));
            }
            Cmd::Find(peer, reply) => {
                self.finds.entry(peer).or_default().push(reply);
                self.foaf.find(peer, now);
            }
            Cmd::OpenList(topic) => {
                if !self.gossip.is_joined(&topic) {
                    self.join(topic, &[], now);
                }
                if self.tasks.list(&topic).is_none() {
                    self.tasks.open(topic, now);
                    for peer in self.gossip.neighbors(&topic) {
                        self.tasks.add_peer(topic, peer, now);
                    }
                }
            }
            Cmd::Task(list, c, reply) => {
                let r = match c {
                    TaskCmd::Add(title) => self.tasks.add(&list, &title, "", now).map(Some),
                    TaskCmd::Claim(t) => self.tasks.claim(&list, t, now).map(|_| None),
                    TaskCmd::Done(t) => self.tasks.done(&list, t, now).map(|_| None),
                    TaskCmd::Remove(t) => self.tasks.remove(&list, t, now).map(|_| None),
                };
                let _ = reply.send(r);
            }
            Cmd::Tasks(list, reply) => {
                let _ = reply.send(self.tasks.tasks(&list));
            }
            Cmd::Stats(reply) => {
                let mut s = self.stats;
                s.gossip = self.gossip.stats();
                let _ = reply.send(s);
            }
            Cmd::Neighbors(topic, reply) => {
                let _ = reply.send(self.gossip.neighbors(&topic));
            }
            Cmd::Linked(reply) => {
                let _ = reply.send(self.gossip.linked_peers());
            }
            Cmd::Refresh(topic, members, mix) => {
                let active = self.gossip.neighbors(&topic);
                // (A view configured smaller than that counts as short
                // only when it is not full.)
                let short = REFRESH_MIN_ACTIVE.min(self.gossip.config().active_view);
                if active.len() < short {
                    self.join(topic, &members, now);
                } else if mix {
                    let passive = self.gossip.passive(&topic);
                    if let Some(p) = members
                        .iter()
                        .find(|p| !active.contains(p) && !passive.contains(p))
                    {
                        self.join(topic, &[*p], now);
                    }
                }
            }
            Cmd::Shutdown => {}
        }
    }

    fn send(&self, to: PeerId, msg: CollabMessage) {
        match wire::encode(&msg) {
            Ok(frame) => self.link.send(to, Bytes::from(frame), msg.is_bulk()),
            Err(e) => tracing::warn!(peer = %to, error = %e, "collab message not sent"),
        }
    }

    /// Poll every machine and route between them until all are quiet.
    fn route(&mut self, now: Instant) {
        loop {
            let mut busy = false;
            while let Some(o) = self.gossip.poll() {
                busy = true;
                match o {
                    Output::Send { to, message } => self.send(to, CollabMessage::Gossip(message)),
                    Output::Event(GossipEvent::Received {
                        topic,
                        id,
                        envelope,
                        ..
                    }) => match envelope.channel {
                        Channel::App => {
                            let msg = Message {
                                topic,
                                id,
                                author: envelope.author,
                                seq: envelope.seq,
                                timestamp_ms: envelope.timestamp_ms,
                                received_ms: self.clock.unix_ms(now),
                                payload: envelope.payload,
                            };
                            if let Some(subs) = self.subscribers.get_mut(&topic) {
                                subs.retain(|s| match s.try_send(msg.clone()) {
                                    Ok(()) => true,
                                    Err(mpsc::error::TrySendError::Full(_)) => {
                                        self.stats.subscriber_drops += 1;
                                        true
                                    }
                                    Err(mpsc::error::TrySendError::Closed(_)) => false,
                                });
                            }
                        }
                        Channel::Presence => self.presence.handle_gossip(topic, &envelope, now),
                        Channel::Tasks => {
                            self.tasks.handle_published(topic, &envelope.payload, now)
                        }
                    },
                    Output::Event(GossipEvent::NeighborUp { topic, peer }) => {
                        self.tasks.add_peer(topic, peer, now)
                    }
                    Output::Event(GossipEvent::NeighborDown { topic, peer }) => {
                        self.tasks.remove_peer(&topic, &peer)
                    }
                    Output::SetTimer { .. }
                    | Output::Publish { .. }
                    | Output::Disconnect { .. } => {}
                }
            }
            while let Some(o) = self.presence.poll() {
                busy = true;
                match o {
                    Output::Publish {
                        topic,
                        channel,
                        payload,
                    } => {
                        let _ = self.gossip.publish(topic, channel, payload, now);
                    }
                    Output::Send { to, message } => self.send(to, CollabMessage::Presence(message)),
                    Output::Event(e) => {
                        let _ = self.events.send(e);
                    }
                    Output::SetTimer { .. } | Output::Disconnect { .. } => {}
                }
            }
            while let Some(o) = self.foaf.poll() {
                busy = true;
                match o {
                    Output::Send { to, message } => self.send(to, CollabMessage::Foaf(message)),
                    Output::Event(e) => {
                        let (target, record) = match e {
                            FoafEvent::Found { target, record, .. } => (target, Some(record)),
                            FoafEvent::NotFound { target } => (target, None),
                        };
                        for r in self.finds.remove(&target).unwrap_or_default() {
                            let _ = r.send(record.clone());
                        }
                    }
                    Output::SetTimer { .. }
                    | Output::Publish { .. }
                    | Output::Disconnect { .. } => {}
                }
            }
            while let Some(o) = self.tasks.poll() {
                busy = true;
                match o {
                    Output::Publish {
                        topic,
                        channel,
                        payload,
                    } => {
                        let _ = self.gossip.publish(topic, channel, payload, now);
                    }
                    Output::Send { to, message } => self.send(to, CollabMessage::Tasks(message)),
                    Output::Event(_) | Output::SetTimer { .. } | Output::Disconnect { .. } => {}
                }
            }
            if !busy {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collab::crdt::Status;
    use crate::collab::testutil::identity;
    use std::sync::Mutex;
    use std::time::Duration;

    /// In-memory links: a frame sent to a peer is delivered to its service.
    #[derive(Default)]
    struct Net {
        peers: Mutex<HashMap<PeerId, Collab>>,
    }

    struct MemLink {
        me: PeerId,
        net: Arc<Net>,
    }

    impl Link for MemLink {
        fn send(&self, to: PeerId, frame: Bytes, _bulk: bool) {
            if let Some(c) = self.net.peers.lock().unwrap().get(&to) {
                c.deliver(self.me, frame.slice(4..));
            }
        }
    }

    fn network(n: u64) -> Vec<Collab> {
        let net = Arc::new(Net::default());
        let agents: Vec<Collab> = (0..n)
            .map(|i| {
                let id = identity(100 + i);
                let link = Arc::new(MemLink {
                    me: id.peer_id(),
                    net: net.clone(),
                });
                Collab::spawn(
                    id,
                    CollabConfig {
                        seed: Some(i),
                        ..CollabConfig::default()
                    },
                    link,
                )
            })
            .collect();
        for a in &agents {
            net.peers.lock().unwrap().insert(a.peer_id(), a.clone());
        }
        agents
    }

    async fn eventually<F: std::future::Future<Output = bool>>(mut f: impl FnMut() -> F) {
        for _ in 0..100 {
            if f().await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("condition not reached in 5 s");
    }

    #[tokio::test]
    async fn service_subscribe_publish_presence_find_and_tasks_over_memory_links() {
        let a = network(4);
        // A chain of connections 0-1-2-3; the topic joined through the previous agent.
        for i in 0..3 {
            a[i].peer_up(a[i + 1].peer_id());
            a[i + 1].peer_up(a[i].peer_id());
        }
        let addr: SocketAddr = "192.0.2.7:4433".parse().unwrap();
        a[3].set_addrs(vec![addr]);
        let mut subs = vec![];
        for (i, agent) in a.iter().enumerate() {
            subs.push(agent.subscribe("room"));
            let boot = if i == 0 {
                vec![]
            } else {
                vec![a[i - 1].peer_id()]
            };
            agent.join("room", boot);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;

        // Pub/sub.
        a[0].publish("room", Bytes::from_static(b"hello"))
            .await
            .unwrap();
        for s in subs.iter_mut().skip(1) {
            let m = tokio::time::timeout(Duration::from_secs(5), s.recv())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(m.author, a[0].peer_id());
            assert_eq!(&m.payload[..], b"hello");
        }

        // Presence.
        eventually(|| async { a[0].presence("room").await.unwrap().len() == 3 }).await;

        // FOAF: 0 finds 3 through 1 and 2.
        let rec = a[0].find(a[3].peer_id()).await.unwrap().expect("found");
        assert_eq!(rec.body.peer, a[3].peer_id());
        assert_eq!(rec.body.addrs, vec![addr]);

        // Tasks.
        let lists: Vec<TaskListHandle> = a.iter().map(|x| x.task_list("room")).collect();
        let t = lists[0].add("write the driver").await.unwrap();
        eventually(|| async { lists[3].list().await.unwrap().len() == 1 }).await;
        lists[3].claim(t).await.unwrap();
        eventually(|| async {
            let v = lists[0].list().await.unwrap();
            v[0].status == Status::Claimed && v[0].claimed_by == Some(a[3].peer_id())
        })
        .await;
        let s = a[1].stats().await.unwrap();
        assert_eq!(s.malformed_frames, 0);
        assert!(s.gossip.delivered > 0);

        // Garbage frames are counted, not fatal.
        a[1].deliver(a[0].peer_id(), Bytes::from_static(b"\x01\x09garbage"));
        eventually(|| async { a[1].stats().await.unwrap().malformed_frames == 1 }).await;
    }
}
