//! The collab service ([`crate::collab::service::Collab`]) on the agent's
//! own connections.
//!
//! - **Connections.** Every agent-to-agent connection (dialed by
//!   [`crate::Agent::connect`] or accepted) is attached here: the peer is up
//!   for presence and FOAF while at least one connection to it is live. A
//!   frame for a peer without a connection dials it by [`PeerId`] (direct
//!   or relayed, as the path layer decides); a failed dial reports the peer
//!   down.
//! - **Streams.** Per connection and direction, two unidirectional streams
//!   opened lazily, first byte [`stream_tag::COLLAB_CONTROL`] or
//!   [`stream_tag::COLLAB_BULK`], then collab frames
//!   ([`crate::collab::wire`]). A stream with another tag is stopped, a
//!   frame over the collab limit stops its stream; both are counted.
//! - **Backpressure.** One bounded queue per peer and stream; a full queue
//!   drops the new frame and counts it. One writer per peer and stream, so
//!   a slow peer only fills its own queues.
//! - **Topics.** [`CollabNet::join_topic`] registers the agent in the topic at
//!   every linked node (`TopicJoin`), asks them for members
//!   (`TopicMembers`) and joins the gossip overlay through them. Every
//!   [`TOPIC_REFRESH`] the agent asks again (re-registering where a node
//!   link was renewed) but joins only when its active view is short, and
//!   every tenth time through one member neither gossip view knows: slow
//!   mixing that merges overlays a partition split, without churning the
//!   active views (a `Join` evicts a neighbour at its contact).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::join_all;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use x0x_proto::PeerId;
use x0x_proto::wire::{Message, stream_tag};

use super::{Inner, lock};
use tokio::sync::broadcast;

use crate::collab::envelope::MessageId;
use crate::collab::foaf::SignedAgentRecord;
use crate::collab::presence::PresenceEvent;
use crate::collab::service::{
    Collab, CollabConfig, Link, ServiceStats, Subscription, TaskListHandle,
};
use crate::collab::wire;
use crate::error::AgentError;

/// Frames queued per peer on the control stream before new ones drop.
const CONTROL_QUEUE: usize = 4096;
/// Frames queued per peer on the bulk stream before new ones drop.
const BULK_QUEUE: usize = 1024;
/// How often joined topics ask the directory for members again.
pub(crate) const TOPIC_REFRESH: Duration = Duration::from_secs(3);
/// Every this many refreshes, one member neither gossip view knows is
/// joined (slow mixing: overlays split by a partition merge again).
const MIX_EVERY: u64 = 10;

#[derive(Debug, Clone, Copy)]
enum Refresh {
    /// Join through the members (subscribe, heal).
    Join,
    /// Join only if the active view is short.
    Quiet,
    /// As `Quiet`, or else through one unknown member.
    Mix,
}

/// A connection the collab layer dialed is closed once no topic has kept
/// the peer as a neighbour (or asked it to become one) for this long.
/// Shuffle replies, walks and joins that did not end in a neighbourship
/// would otherwise leave a connection to every agent ever met, each
/// costing path probes and direct presence announcements every second
/// (measured: ~45 connections per agent among 100 agents in one topic).
pub(crate) const LINK_LINGER: Duration = Duration::from_secs(10);
/// QUIC close code of a collab connection closed as no longer needed.
const CLOSE_NOT_NEEDED: u32 = 0x13;

/// After a failed dial, frames to that peer drop for this long.
const DIAL_BACKOFF: Duration = Duration::from_secs(5);
/// QUIC stop code for a stream with an unknown tag or an oversized frame.
const STOP_BAD_STREAM: u32 = 0x12;

/// Counters of the collab transport.
#[derive(Debug, Default)]
pub(crate) struct LinkCounters {
    pub queue_dropped: AtomicU64,
    pub bad_stream_tag: AtomicU64,
    pub frames_too_large: AtomicU64,
    pub frames_in: AtomicU64,
    pub frames_out: AtomicU64,
    pub dial_failures: AtomicU64,
    pub links_closed_idle: AtomicU64,
}

struct Outbox {
    id: u64,
    control: mpsc::Sender<Bytes>,
    bulk: mpsc::Sender<Bytes>,
}

/// The collab side of an agent: its service and the peers' links.
pub(crate) struct CollabNet {
    inner: OnceLock<Weak<Inner>>,
    collab: OnceLock<Collab>,
    /// The agent's: readers and writers stop with it, so a dropped agent
    /// leaves no connection behind.
    cancel: OnceLock<tokio_util::sync::CancellationToken>,
    /// Live connections per peer (newest last).
    conns: Mutex<HashMap<PeerId, Vec<quinn::Connection>>>,
    outboxes: Mutex<HashMap<PeerId, Outbox>>,
    next_outbox: AtomicU64,
    /// Connections the collab layer dialed, with when a topic last
    /// needed the peer (closed [`LINK_LINGER`] after that).
    dialed: Mutex<HashMap<PeerId, (quinn::Connection, Instant)>>,
    /// Peers whose dial failed recently: frames to them drop until then.
    failed: Mutex<HashMap<PeerId, Instant>>,
    /// Topics joined through the directory (names), refreshed in the background.
    pub topics: Mutex<HashSet<String>>,
    /// Peers whose frames are dropped both ways (tests: partitions).
    blocked: Mutex<HashSet<PeerId>>,
    pub counters: LinkCounters,
}

impl CollabNet {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            inner: OnceLock::new(),
            collab: OnceLock::new(),
            cancel: OnceLock::new(),
            conns: Mutex::new(HashMap::new()),
            outboxes: Mutex::new(HashMap::new()),
            next_outbox: AtomicU64::new(0),
            dialed: Mutex::new(HashMap::new()),
            failed: Mutex::new(HashMap::new()),
            topics: Mutex::new(HashSet::new()),
            blocked: Mutex::new(HashSet::new()),
            counters: LinkCounters::default(),
        })
    }

    /// Start the service (once the agent's `Inner` exists).
    pub fn start(
        self: &Arc<Self>,
        inner: &Arc<Inner>,
        identity: x0x_proto::Identity,
        config: CollabConfig,
    ) {
        let _ = self.inner.set(Arc::downgrade(inner));
        let _ = self.cancel.set(inner.cancel.clone());
        let collab = Collab::spawn(identity, config, Arc::new(self.clone()));
        let _ = self.collab.set(collab.clone());
        let cancel = inner.cancel.clone();
        let net = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(TOPIC_REFRESH);
            tick.tick().await;
            let mut round = 0u64;
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tick.tick() => {
                        round += 1;
                        net.refresh_topics(round).await;
                        net.close_idle_links().await;
                    }
                }
            }
            collab.shutdown();
            lock(&net.outboxes).clear();
            lock(&net.conns).clear();
        });
    }

    pub fn collab(&self) -> &Collab {
        self.collab.get().expect("collab started at build")
    }

    fn inner(&self) -> Option<Arc<Inner>> {
        self.inner.get().and_then(Weak::upgrade)
    }

    fn is_blocked(&self, peer: &PeerId) -> bool {
        lock(&self.blocked).contains(peer)
    }

    /// Drop every frame to and from `peer` (and report it down), or stop
    /// doing so (and join the topics again through the directory).
    pub fn set_blocked(self: &Arc<Self>, peer: PeerId, blocked: bool) {
        if blocked {
            lock(&self.blocked).insert(peer);
            lock(&self.outboxes).remove(&peer);
            self.collab().peer_down(peer);
        } else {
            lock(&self.blocked).remove(&peer);
            if lock(&self.conns).get(&peer).is_some_and(|c| !c.is_empty()) {
                self.collab().peer_up(peer);
            }
            let net = self.clone();
            tokio::spawn(async move { net.rejoin_topics().await });
        }
    }

    /// A connection to `peer` was established (either direction).
    pub fn attach(self: &Arc<Self>, peer: PeerId, conn: quinn::Connection) {
        let first = {
            let mut conns = lock(&self.conns);
            let v = conns.entry(peer).or_default();
            v.retain(|c| c.close_reason().is_none());
            v.push(conn.clone());
            v.len() == 1
        };
        if first && !self.is_blocked(&peer) {
            self.collab().peer_up(peer);
        }
        let net = self.clone();
        let cancel = self.cancel.get().cloned().unwrap_or_default();
        tokio::spawn(async move {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = async {
                    net.read_connection(peer, &conn).await;
                    conn.closed().await;
                } => {}
            }
            let gone = {
                let mut conns = lock(&net.conns);
                let v = conns.entry(peer).or_default();
                v.retain(|c| c.stable_id() != conn.stable_id() && c.close_reason().is_none());
                let gone = v.is_empty();
                if gone {
                    conns.remove(&peer);
                }
                gone
            };
            if gone {
                lock(&net.outboxes).remove(&peer);
                if let Some(c) = net.collab.get() {
                    c.peer_down(peer);
                }
            }
        });
    }

    /// Close the connections this layer dialed to peers no topic has
    /// linked to for [`LINK_LINGER`]. The peer sees the connection close
    /// and drops this agent from its views too (which also mends a
    /// neighbourship only one side remembered).
    async fn close_idle_links(&self) {
        let Ok(linked) = self.collab().linked_peers().await else {
            return;
        };
        let now = Instant::now();
        let idle: Vec<(PeerId, quinn::Connection)> = {
            let mut dialed = lock(&self.dialed);
            dialed.retain(|_, (c, _)| c.close_reason().is_none());
            for (peer, (_, needed)) in dialed.iter_mut() {
                if linked.contains(peer) {
                    *needed = now;
                }
            }
            let peers: Vec<PeerId> = dialed
                .iter()
                .filter(|(_, (_, needed))| now.saturating_duration_since(*needed) >= LINK_LINGER)
                .map(|(p, _)| *p)
                .collect();
            peers
                .into_iter()
                .filter_map(|p| dialed.remove(&p).map(|(c, _)| (p, c)))
                .collect()
        };
        for (peer, conn) in idle {
            tracing::debug!(peer = %peer.short(), "closing a collab link no topic needs");
            lock(&self.outboxes).remove(&peer);
            conn.close(CLOSE_NOT_NEEDED.into(), b"collab link not needed");
            self.counters
                .links_closed_idle
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    fn live_conn(&self, peer: &PeerId) -> Option<quinn::Connection> {
        lock(&self.conns)
            .get(peer)?
            .iter()
            .rev()
            .find(|c| c.close_reason().is_none())
            .cloned()
    }

    /// Accept the peer's unidirectional streams until the connection ends.
    async fn read_connection(self: &Arc<Self>, peer: PeerId, conn: &quinn::Connection) {
        let cancel = self.cancel.get().cloned().unwrap_or_default();
        while let Ok(recv) = conn.accept_uni().await {
            let net = self.clone();
            let cancel = cancel.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = cancel.cancelled() => {}
                    _ = net.read_stream(peer, recv) => {}
                }
            });
        }
    }

    async fn read_stream(&self, peer: PeerId, mut recv: quinn::RecvStream) {
        let mut tag = [0u8; 1];
        if recv.read_exact(&mut tag).await.is_err() {
            return;
        }
        if tag[0] != stream_tag::COLLAB_CONTROL && tag[0] != stream_tag::COLLAB_BULK {
            self.counters.bad_stream_tag.fetch_add(1, Ordering::Relaxed);
            let _ = recv.stop(STOP_BAD_STREAM.into());
            return;
        }
        loop {
            let mut len = [0u8; 4];
            if recv.read_exact(&mut len).await.is_err() {
                return;
            }
            let len = match wire::check_len(u32::from_be_bytes(len)) {
                Ok(l) => l,
                Err(e) => {
                    tracing::debug!(peer = %peer.short(), "collab stream stopped: {e}");
                    self.counters
                        .frames_too_large
                        .fetch_add(1, Ordering::Relaxed);
                    let _ = recv.stop(STOP_BAD_STREAM.into());
                    return;
                }
            };
            // Read incrementally: memory follows the bytes that arrived.
            let mut body = Vec::with_capacity(len.min(4096));
            match (&mut recv).take(len as u64).read_to_end(&mut body).await {
                Ok(n) if n == len => {}
                _ => return,
            }
            self.counters.frames_in.fetch_add(1, Ordering::Relaxed);
            if self.is_blocked(&peer) {
                continue;
            }
            self.collab().deliver(peer, Bytes::from(body));
        }
    }

    /// Register in `topic` at every linked node and join its overlay
    /// through the members they name. Returns how many members they named.
    pub async fn join_topic(&self, inner: &Inner, topic: &str) -> Result<usize, AgentError> {
        self.topic_members(inner, topic, Refresh::Join).await
    }

    async fn topic_members(
        &self,
        inner: &Inner,
        topic: &str,
        how: Refresh,
    ) -> Result<usize, AgentError> {
        lock(&self.topics).insert(topic.to_owned());
        let id = crate::collab::envelope::TopicId::new(topic);
        let links = inner.links_by_rtt();
        if links.is_empty() {
            return Err(AgentError::NotJoined);
        }
        let join = Message::TopicJoin {
            topic: *id.as_bytes(),
        };
        let ask = Message::TopicMembers {
            topic: *id.as_bytes(),
        };
        let replies = join_all(links.iter().map(|(_, conn)| async {
            let joined = super::requests::request(conn, &join).await;
            let members = super::requests::request(conn, &ask).await;
            (joined, members)
        }))
        .await;
        let mut members: Vec<PeerId> = Vec::new();
        let mut last_err = None;
        for (joined, listed) in replies {
            if let Err(e) = joined {
                last_err = Some(e);
            }
            match listed {
                Ok(Message::TopicMembersList { topic, peers }) if &topic == id.as_bytes() => {
                    for p in peers {
                        if p != inner.peer_id && !members.contains(&p) {
                            members.push(p);
                        }
                    }
                }
                Ok(other) => {
                    last_err = Some(AgentError::Protocol(format!("unexpected reply {other:?}")))
                }
                Err(e) => last_err = Some(e),
            }
        }
        members.retain(|p| !self.is_blocked(p));
        let n = members.len();
        match how {
            Refresh::Join => self.collab().join(topic, members),
            Refresh::Quiet => self.collab().refresh(topic, members, false),
            Refresh::Mix => self.collab().refresh(topic, members, true),
        }
        if n == 0
            && let Some(e) = last_err
        {
            tracing::debug!("topic {topic}: directory not fully answered: {e}");
        }
        Ok(n)
    }

    async fn refresh_topics(&self, round: u64) {
        let Some(inner) = self.inner() else { return };
        let topics: Vec<String> = lock(&self.topics).iter().cloned().collect();
        let how = if round.is_multiple_of(MIX_EVERY) {
            Refresh::Mix
        } else {
            Refresh::Quiet
        };
        for t in topics {
            let _ = self.topic_members(&inner, &t, how).await;
        }
    }

    /// Join every topic again through the directory now (after links
    /// came back: a healed partition).
    async fn rejoin_topics(&self) {
        let Some(inner) = self.inner() else { return };
        let topics: Vec<String> = lock(&self.topics).iter().cloned().collect();
        for t in topics {
            let _ = self.join_topic(&inner, &t).await;
        }
    }

    fn outbox(self: &Arc<Self>, to: PeerId) -> (mpsc::Sender<Bytes>, mpsc::Sender<Bytes>) {
        let mut boxes = lock(&self.outboxes);
        if let Some(o) = boxes.get(&to)
            && !o.control.is_closed()
            && !o.bulk.is_closed()
        {
            return (o.control.clone(), o.bulk.clone());
        }
        let (ctx, crx) = mpsc::channel(CONTROL_QUEUE);
        let (btx, brx) = mpsc::channel(BULK_QUEUE);
        let id = self.next_outbox.fetch_add(1, Ordering::Relaxed);
        boxes.insert(
            to,
            Outbox {
                id,
                control: ctx.clone(),
                bulk: btx.clone(),
            },
        );
        let net = self.clone();
        let cancel = self.cancel.get().cloned().unwrap_or_default();
        tokio::spawn(async move {
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = net.run_outbox(to, crx, brx) => {}
            }
            let mut boxes = lock(&net.outboxes);
            if boxes.get(&to).is_some_and(|o| o.id == id) {
                boxes.remove(&to);
            }
        });
        (ctx, btx)
    }

    /// The writers of one peer: dial it if needed, then drain its queues
    /// onto the two streams until the connection fails.
    async fn run_outbox(
        self: &Arc<Self>,
        to: PeerId,
        control: mpsc::Receiver<Bytes>,
        bulk: mpsc::Receiver<Bytes>,
    ) {
        let conn = match self.live_conn(&to) {
            Some(c) => c,
            None => {
                let Some(inner) = self.inner() else { return };
                match super::connect::connect_for_service(&inner, to).await {
                    // `connect` attached it.
                    Ok(pc) => {
                        let conn = pc.connection().clone();
                        lock(&self.dialed).insert(to, (conn.clone(), Instant::now()));
                        conn
                    }
                    Err(e) => {
                        tracing::debug!(peer = %to.short(), "collab dial failed: {e}");
                        self.counters.dial_failures.fetch_add(1, Ordering::Relaxed);
                        lock(&self.failed).insert(to, Instant::now() + DIAL_BACKOFF);
                        self.collab().peer_down(to);
                        return;
                    }
                }
            }
        };
        tokio::select! {
            _ = self.write_stream(&conn, stream_tag::COLLAB_CONTROL, control) => {}
            _ = self.write_stream(&conn, stream_tag::COLLAB_BULK, bulk) => {}
        }
    }

    async fn write_stream(
        &self,
        conn: &quinn::Connection,
        tag: u8,
        mut rx: mpsc::Receiver<Bytes>,
    ) -> Result<(), quinn::WriteError> {
        // Open the stream with the first frame, not before.
        let Some(first) = rx.recv().await else {
            return Ok(());
        };
        let mut stream = conn
            .open_uni()
            .await
            .map_err(quinn::WriteError::ConnectionLost)?;
        stream.write_all(&[tag]).await?;
        let mut next = Some(first);
        while let Some(frame) = next {
            stream.write_all(&frame).await?;
            self.counters.frames_out.fetch_add(1, Ordering::Relaxed);
            next = rx.recv().await;
        }
        let _ = stream.finish();
        Ok(())
    }
}

/// The service's transport: frames into the peers' bounded queues.
impl Link for Arc<CollabNet> {
    fn send(&self, to: PeerId, frame: Bytes, bulk: bool) {
        if self.is_blocked(&to) {
            return;
        }
        if self.live_conn(&to).is_none() {
            let mut failed = lock(&self.failed);
            let now = Instant::now();
            failed.retain(|_, until| *until > now);
            if failed.contains_key(&to) {
                self.counters.queue_dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        let (control, bulk_tx) = self.outbox(to);
        let q = if bulk { bulk_tx } else { control };
        if q.try_send(frame).is_err() {
            self.counters.queue_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Counters of an agent's collaboration layer ([`super::Agent::collab_stats`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CollabStats {
    /// The protocol machines' counters (envelope rejections in
    /// `service.gossip.envelopes`, undecodable frames in
    /// `service.malformed_frames`).
    pub service: ServiceStats,
    /// Frames dropped because a peer's queue was full (or its dial failed).
    pub queue_dropped: u64,
    /// Unidirectional streams with an unknown tag, stopped.
    pub bad_stream_tag: u64,
    /// Frames announcing more than the collab limit; their stream stopped.
    pub frames_too_large: u64,
    /// Frames read from peers.
    pub frames_in: u64,
    /// Frames written to peers.
    pub frames_out: u64,
    /// Dials by PeerId the collab layer made that failed.
    pub dial_failures: u64,
    /// Peers with at least one live agent-to-agent connection now.
    pub peers_connected: u64,
    /// Connections the collab layer dialed and closed again once no topic
    /// needed them (10 s after the last topic dropped the peer).
    pub links_closed_idle: u64,
}

/// Agents working together: pub/sub, presence, friend-of-a-friend lookup
/// and task lists ([`crate::collab`]), carried over this agent's own
/// connections. Topics are found through the bootstrap nodes' topic
/// directory, which never carries a topic's messages.
impl super::Agent {
    async fn ensure_topic(&self, topic: &str) -> Result<(), AgentError> {
        if !lock(&self.inner.collab.topics).contains(topic) {
            self.inner.collab.join_topic(&self.inner, topic).await?;
        }
        Ok(())
    }

    /// Join `topic` (through members the bootstrap nodes name) and stream
    /// the messages others publish on it, each exactly once, signed by its
    /// author. A subscriber that does not keep up loses messages (counted
    /// in [`CollabStats`]); it never slows the others.
    ///
    /// ```no_run
    /// # async fn demo(agent: x0x::Agent) -> Result<(), x0x::AgentError> {
    /// let mut sub = agent.subscribe("builds").await?;
    /// while let Some(msg) = sub.recv().await {
    ///     println!("{} #{}: {:?}", msg.author, msg.seq, msg.payload);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn subscribe(&self, topic: &str) -> Result<Subscription, AgentError> {
        let sub = self.inner.collab.collab().subscribe(topic);
        self.inner.collab.join_topic(&self.inner, topic).await?;
        Ok(sub)
    }

    /// Sign and publish `payload` on `topic` (joining it first if needed).
    /// Returns the message id (the SHA-256 of the signed envelope).
    ///
    /// ```no_run
    /// # async fn demo(agent: x0x::Agent) -> Result<(), x0x::AgentError> {
    /// let id = agent.publish("builds", "build 42 passed").await?;
    /// println!("published {id}");
    /// # Ok(()) }
    /// ```
    pub async fn publish(
        &self,
        topic: &str,
        payload: impl Into<Bytes>,
    ) -> Result<MessageId, AgentError> {
        self.ensure_topic(topic).await?;
        Ok(self
            .inner
            .collab
            .collab()
            .publish(topic, payload.into())
            .await?)
    }

    /// The agents online in `topic` now, as this agent's failure detector
    /// sees them (joining the topic first if needed).
    ///
    /// ```no_run
    /// # async fn demo(agent: x0x::Agent) -> Result<(), x0x::AgentError> {
    /// for peer in agent.presence("builds").await? {
    ///     println!("online: {peer}");
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn presence(&self, topic: &str) -> Result<Vec<PeerId>, AgentError> {
        self.ensure_topic(topic).await?;
        Ok(self.inner.collab.collab().presence(topic).await?)
    }

    /// Online/Offline changes in every joined topic and among direct peers.
    /// A receiver that falls behind skips events (`Lagged`).
    ///
    /// ```no_run
    /// # async fn demo(agent: x0x::Agent) {
    /// use x0x::collab::presence::PresenceEvent;
    /// let mut events = agent.presence_events();
    /// while let Ok(e) = events.recv().await {
    ///     if let PresenceEvent::Offline { peer, .. } = e {
    ///         println!("{peer} went offline");
    ///     }
    /// }
    /// # }
    /// ```
    pub fn presence_events(&self) -> broadcast::Receiver<PresenceEvent> {
        self.inner.collab.collab().presence_events()
    }

    /// Look `peer` up through this agent's neighbours and theirs (friend
    /// of a friend, at most 3 hops and 39 agents asked). `Ok(None)`: no
    /// agent within reach knows it. The record is signed by `peer` itself.
    ///
    /// ```no_run
    /// # async fn demo(agent: x0x::Agent, peer: x0x::PeerId) -> Result<(), x0x::AgentError> {
    /// if let Some(record) = agent.find(peer).await? {
    ///     println!("{peer} at {:?}", record.body.addrs);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn find(&self, peer: PeerId) -> Result<Option<SignedAgentRecord>, AgentError> {
        Ok(self.inner.collab.collab().find(peer).await?)
    }

    /// The replicated task list of `topic` (joining the topic first if
    /// needed): add, claim, mark done; replicas converge by version-vector
    /// delta sync.
    ///
    /// ```no_run
    /// # async fn demo(agent: x0x::Agent) -> Result<(), x0x::AgentError> {
    /// let list = agent.task_list("release").await?;
    /// let id = list.add("write the changelog").await?;
    /// list.claim(id).await?;
    /// list.done(id).await?;
    /// for task in list.list().await? {
    ///     println!("{} {} {}", task.id, task.status, task.title);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn task_list(&self, topic: &str) -> Result<TaskListHandle, AgentError> {
        self.ensure_topic(topic).await?;
        Ok(self.inner.collab.collab().task_list(topic))
    }

    /// The peers this agent has a live agent-to-agent connection with
    /// (opened by either side, for the application or the collab layer).
    pub fn connected_peers(&self) -> Vec<PeerId> {
        lock(&self.inner.collab.conns).keys().copied().collect()
    }

    /// The active gossip neighbours of `topic`.
    pub async fn topic_neighbors(&self, topic: &str) -> Result<Vec<PeerId>, AgentError> {
        Ok(self.inner.collab.collab().neighbors(topic).await?)
    }

    /// Counters of the collaboration layer.
    pub async fn collab_stats(&self) -> Result<CollabStats, AgentError> {
        let c = &self.inner.collab.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Ok(CollabStats {
            service: self.inner.collab.collab().stats().await?,
            queue_dropped: get(&c.queue_dropped),
            bad_stream_tag: get(&c.bad_stream_tag),
            frames_too_large: get(&c.frames_too_large),
            frames_in: get(&c.frames_in),
            frames_out: get(&c.frames_out),
            dial_failures: get(&c.dial_failures),
            peers_connected: lock(&self.inner.collab.conns).len() as u64,
            links_closed_idle: get(&c.links_closed_idle),
        })
    }

    /// Testing aid: drop every collab frame to and from `peer` (as if the
    /// link between the two were cut), or stop doing so.
    #[doc(hidden)]
    pub fn collab_block(&self, peer: PeerId, blocked: bool) {
        self.inner.collab.set_blocked(peer, blocked);
    }
}
