//! Simulations of the machines composed the way an agent runs them:
//! gossip carries presence announcements and task-list batches, gossip
//! neighbours are the task lists' anti-entropy partners.

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use x0x_proto::PeerId;

use super::Output;
use super::crdt::{Status, TaskSync, TaskSyncConfig};
use super::envelope::{Channel, TopicId};
use super::gossip::tests::{join_all, sim_config};
use super::gossip::{Gossip, GossipEvent};
use super::presence::{OfflineReason, Presence, PresenceConfig, PresenceEvent};
use super::sim::{Sim, SimAction, SimNode, percentile};
use super::testutil::{identity, memo_check};
use super::util::WallClock;
use super::wire::{self, CollabMessage};

const T0_MS: u64 = 1_700_000_000_000;

/// One simulated agent: gossip, presence and task lists wired together.
struct AgentNode {
    gossip: Gossip,
    presence: Option<Presence>,
    tasks: Option<TaskSync>,
    presence_events: Vec<(PresenceEvent, Instant)>,
}

impl AgentNode {
    fn new(n: u64, start: Instant, presence: bool, tasks: bool) -> Self {
        let clock = WallClock::new(start, T0_MS);
        Self {
            gossip: Gossip::new(identity(n), sim_config(), clock, n),
            presence: presence.then(|| {
                Presence::new(
                    identity(n),
                    PresenceConfig {
                        verifier: sim_config().verifier,
                        ..PresenceConfig::default()
                    },
                    clock,
                    n ^ 0x5eed,
                )
            }),
            tasks: tasks.then(|| {
                TaskSync::new(
                    identity(n),
                    TaskSyncConfig {
                        signature_check: memo_check(),
                        ..TaskSyncConfig::default()
                    },
                    clock,
                    n ^ 0x7a5c,
                )
            }),
            presence_events: vec![],
        }
    }
}

impl SimNode for AgentNode {
    type Msg = CollabMessage;

    fn peer_id(&self) -> PeerId {
        self.gossip.peer_id()
    }

    fn on_message(&mut self, from: PeerId, msg: CollabMessage, now: Instant) {
        match msg {
            CollabMessage::Gossip(m) => self.gossip.handle(from, m, now),
            CollabMessage::Presence(m) => {
                if let Some(p) = self.presence.as_mut() {
                    p.handle(from, m, now)
                }
            }
            CollabMessage::Tasks(m) => {
                if let Some(t) = self.tasks.as_mut() {
                    t.handle(from, m, now)
                }
            }
            CollabMessage::Foaf(_) => {}
        }
    }

    fn on_timer(&mut self, now: Instant) {
        self.gossip.handle_timer(now);
        if let Some(p) = self.presence.as_mut() {
            p.handle_timer(now);
        }
        if let Some(t) = self.tasks.as_mut() {
            t.handle_timer(now);
        }
    }

    fn on_peer_down(&mut self, peer: PeerId, now: Instant) {
        self.gossip.peer_down(peer, now);
    }

    /// The driver loop an agent's service runs: poll every machine, route
    /// between them, until all are quiet.
    fn drain(&mut self, now: Instant, out: &mut Vec<SimAction<CollabMessage>>) {
        loop {
            let mut busy = false;
            while let Some(o) = self.gossip.poll() {
                busy = true;
                match o {
                    Output::Send { to, message } => out.push(SimAction::Send {
                        to,
                        msg: CollabMessage::Gossip(message),
                    }),
                    Output::SetTimer { at } => out.push(SimAction::Timer(at)),
                    Output::Event(GossipEvent::Received {
                        topic, envelope, ..
                    }) => match envelope.channel {
                        Channel::Presence => {
                            if let Some(p) = self.presence.as_mut() {
                                p.handle_gossip(topic, &envelope, now)
                            }
                        }
                        Channel::Tasks => {
                            if let Some(t) = self.tasks.as_mut() {
                                t.handle_published(topic, &envelope.payload, now)
                            }
                        }
                        Channel::App => {}
                    },
                    Output::Event(GossipEvent::NeighborUp { topic, peer }) => {
                        if let Some(t) = self.tasks.as_mut() {
                            t.add_peer(topic, peer, now)
                        }
                    }
                    Output::Event(GossipEvent::NeighborDown { topic, peer }) => {
                        if let Some(t) = self.tasks.as_mut() {
                            t.remove_peer(&topic, &peer)
                        }
                    }
                    Output::Publish { .. } | Output::Disconnect { .. } => {}
                }
            }
            if let Some(p) = self.presence.as_mut() {
                while let Some(o) = p.poll() {
                    busy = true;
                    match o {
                        Output::Publish {
                            topic,
                            channel,
                            payload,
                        } => {
                            let _ = self.gossip.publish(topic, channel, payload, now);
                        }
                        Output::Send { to, message } => out.push(SimAction::Send {
                            to,
                            msg: CollabMessage::Presence(message),
                        }),
                        Output::SetTimer { at } => out.push(SimAction::Timer(at)),
                        Output::Event(e) => self.presence_events.push((e, now)),
                        Output::Disconnect { .. } => {}
                    }
                }
            }
            if let Some(t) = self.tasks.as_mut() {
                while let Some(o) = t.poll() {
                    busy = true;
                    match o {
                        Output::Publish {
                            topic,
                            channel,
                            payload,
                        } => {
                            let _ = self.gossip.publish(topic, channel, payload, now);
                        }
                        Output::Send { to, message } => out.push(SimAction::Send {
                            to,
                            msg: CollabMessage::Tasks(message),
                        }),
                        Output::SetTimer { at } => out.push(SimAction::Timer(at)),
                        Output::Event(_) | Output::Disconnect { .. } => {}
                    }
                }
            }
            if !busy {
                break;
            }
        }
    }
}

/// Bytes on the wire per message kind, measured with the real framing.
#[derive(Default)]
struct Bytes {
    total: Cell<u64>,
    task_sync_ops: Cell<u64>,
}

fn count_bytes(sim: &mut Sim<AgentNode>) -> Rc<Bytes> {
    let b = Rc::new(Bytes::default());
    let c = b.clone();
    sim.observer = Some(Box::new(move |_, _, m: &CollabMessage, _| {
        let n = wire::encode(m)
            .expect("every simulated message fits its frame")
            .len() as u64;
        c.total.set(c.total.get() + n);
        if let CollabMessage::Tasks(super::crdt::TaskMessage::SyncOps { .. }) = m {
            c.task_sync_ops.set(c.task_sync_ops.get() + n);
        }
    }));
    b
}

/// 100 agents announce themselves on a topic; 5 crash (no goodbye). Every
/// survivor marks each of them offline, and nobody else.
#[test]
fn sim_presence_detects_5_of_100_crashes() {
    let start = Instant::now();
    let topic = TopicId::new("presence-sim");
    let n = 100;
    let nodes = (0..n as u64)
        .map(|i| AgentNode::new(i, start, true, false))
        .collect();
    let mut sim = Sim::new(nodes, 21, start);
    join_all(&mut sim, topic, 21, |a| &mut a.gossip);
    for i in 0..n {
        sim.with_node(i, |a, now| a.presence.as_mut().unwrap().join(topic, now));
    }
    sim.run_for(Duration::from_secs(10));
    for (i, a) in sim.nodes.iter().enumerate() {
        assert_eq!(
            a.presence.as_ref().unwrap().presence(&topic).len(),
            n - 1,
            "agent {i} sees everyone online"
        );
    }
    // Measure the steady-state cost for 10 s.
    let bytes = count_bytes(&mut sim);
    sim.run_for(Duration::from_secs(10));
    let per_agent = bytes.total.get() as f64 / n as f64 / 10.0;
    println!(
        "presence: {n} agents, 1 s interval: {:.1} kB/s received per agent (gossip included)",
        per_agent / 1000.0
    );

    let crashed = [3usize, 17, 44, 58, 90];
    for &c in &crashed {
        sim.crash(c);
    }
    let crash_at = sim.now();
    sim.run_for(Duration::from_secs(10));

    let crashed_ids: Vec<PeerId> = crashed.iter().map(|&c| sim.nodes[c].peer_id()).collect();
    let mut detect = vec![];
    for (i, a) in sim.nodes.iter().enumerate() {
        if crashed.contains(&i) {
            continue;
        }
        let mut seen: BTreeMap<PeerId, (Instant, OfflineReason)> = BTreeMap::new();
        for (e, at) in &a.presence_events {
            if let PresenceEvent::Offline { peer, reason, .. } = e {
                assert!(
                    crashed_ids.contains(peer),
                    "agent {i} marked live agent {peer:?} offline ({reason:?})"
                );
                seen.entry(*peer).or_insert((*at, *reason));
            }
        }
        assert_eq!(seen.len(), crashed.len(), "agent {i} detected all crashes");
        for (at, reason) in seen.values() {
            assert_eq!(*reason, OfflineReason::Suspected);
            detect.push((*at - crash_at).as_secs_f64() * 1000.0);
        }
        let online = a.presence.as_ref().unwrap().presence(&topic);
        assert_eq!(online.len(), n - 1 - crashed.len());
        assert!(online.iter().all(|p| !crashed_ids.contains(p)));
    }
    let p50 = percentile(&mut detect, 50.0).unwrap();
    let p95 = percentile(&mut detect, 95.0).unwrap();
    let max = percentile(&mut detect, 100.0).unwrap();
    println!(
        "presence: 5 of 100 crashed, {} detections: p50 {p50:.0} ms, p95 {p95:.0} ms, max {max:.0} ms",
        detect.len()
    );
    assert!(p95 < 3000.0, "detection p95 {p95} ms");
}

/// Six groups of agents (like the six bootstrap nodes' regions) edit one
/// task list; the network splits 3/3 while both sides keep editing
/// (≥ 10,000 operations in all); after the partition heals every replica
/// converges, by delta sync.
#[test]
fn sim_partition_3_3_task_lists_converge_after_heal() {
    let start = Instant::now();
    let topic = TopicId::new("partition-tasks");
    let groups = 6;
    let per_group = 4;
    let n = groups * per_group;
    let nodes = (0..n as u64)
        .map(|i| AgentNode::new(i, start, false, true))
        .collect();
    let mut sim = Sim::new(nodes, 33, start);
    for i in 0..n {
        sim.with_node(i, |a, now| a.tasks.as_mut().unwrap().open(topic, now));
    }
    join_all(&mut sim, topic, 33, |a| &mut a.gossip);
    sim.run_for(Duration::from_secs(3));
    let mut rng = StdRng::seed_from_u64(77);
    let mut ops = 0u64;

    // One step of editing: every agent acts with probability `p`.
    let mut edit = |sim: &mut Sim<AgentNode>, rng: &mut StdRng, p: f64| {
        for i in 0..n {
            if !rng.random_bool(p) {
                continue;
            }
            let roll: u32 = rng.random_range(0..100);
            let pick: u64 = rng.random();
            let made = sim.with_node(i, |a, now| {
                let t = a.tasks.as_mut().unwrap();
                // Agents work on one of the ~100 newest tasks (by id order).
                let list = t.list(&topic).unwrap();
                let chosen = list.task_ids().nth_back((pick % 100) as usize).copied();
                let task = match chosen.and_then(|id| t.task(&topic, &id)) {
                    Some(task) if roll >= 30 => task,
                    _ => return t.add(&topic, &format!("task {pick}"), "", now).is_ok(),
                };
                let task = &task;
                let r = match roll {
                    30..=54 => t.set_title(&topic, task.id, &format!("retitled {pick}"), now),
                    55..=74 if task.status == Status::Open => t.claim(&topic, task.id, now),
                    75..=89 if task.status != Status::Done => t.done(&topic, task.id, now),
                    90..=99 => t.remove(&topic, task.id, now),
                    _ => t.set_title(&topic, task.id, &format!("renamed {pick}"), now),
                };
                r.is_ok()
            });
            if made {
                ops += 1;
            }
        }
    };

    // Before the split: a shared list.
    for _ in 0..200 {
        edit(&mut sim, &mut rng, 0.02);
        sim.run_for(Duration::from_millis(10));
    }
    sim.run_for(Duration::from_secs(2));
    let shared = sim.nodes[0]
        .tasks
        .as_ref()
        .unwrap()
        .list(&topic)
        .unwrap()
        .len();
    for a in &sim.nodes {
        assert_eq!(
            a.tasks.as_ref().unwrap().list(&topic).unwrap().len(),
            shared
        );
    }

    // Split 3/3 and keep editing on both sides for 25 s.
    let side: Vec<u8> = (0..n)
        .map(|i| u8::from(i / per_group >= groups / 2))
        .collect();
    sim.partition(side.clone());
    for _ in 0..2500 {
        edit(&mut sim, &mut rng, 0.18);
        sim.run_for(Duration::from_millis(10));
    }
    sim.run_for(Duration::from_secs(2));
    let lens: Vec<usize> = sim
        .nodes
        .iter()
        .map(|a| a.tasks.as_ref().unwrap().list(&topic).unwrap().len())
        .collect();
    // Each side converged on its own edits and lacks the other's.
    assert!(lens[..n / 2].iter().all(|&l| l == lens[0]));
    assert!(lens[n / 2..].iter().all(|&l| l == lens[n / 2]));
    assert!(
        (lens[0] + lens[n / 2] - shared) as u64 == ops,
        "every edit is on one side"
    );
    assert!(ops >= 10_000, "{ops} operations");

    // Heal. The driver re-joins through the (merged) directory: each agent
    // contacts one random member, which links the two overlays again.
    sim.heal();
    let heal_at = sim.now();
    let bytes = count_bytes(&mut sim);
    let sent_before: u64 = sim
        .nodes
        .iter()
        .map(|a| a.tasks.as_ref().unwrap().stats().sync_bytes_sent)
        .sum();
    let requests_before: u64 = sim
        .nodes
        .iter()
        .map(|a| a.tasks.as_ref().unwrap().stats().sync_requests)
        .sum();
    let ids: Vec<PeerId> = sim.nodes.iter().map(|a| a.peer_id()).collect();
    for i in 0..n {
        let other = ids[(i + rng.random_range(1..n)) % n];
        sim.with_node(i, |a, now| a.gossip.join(topic, &[other], now));
    }
    let reference_len = lens[0] + lens[n / 2] - shared;
    let converged_at = loop {
        sim.run_for(Duration::from_millis(50));
        let first = sim.nodes[0].tasks.as_ref().unwrap().list(&topic).unwrap();
        if first.len() == reference_len
            && sim
                .nodes
                .iter()
                .all(|a| a.tasks.as_ref().unwrap().list(&topic).unwrap() == first)
        {
            break sim.now();
        }
        assert!(
            sim.now() - heal_at < Duration::from_secs(60),
            "no convergence in 60 s"
        );
    };
    let converge = converged_at - heal_at;
    let pulls: u64 = sim
        .nodes
        .iter()
        .map(|a| a.tasks.as_ref().unwrap().stats().sync_requests)
        .sum::<u64>()
        - requests_before;
    let replica = sim.nodes[0].tasks.as_ref().unwrap().list(&topic).unwrap();
    let full = replica.encoded_len() as u64;
    let delta: u64 = sim
        .nodes
        .iter()
        .map(|a| a.tasks.as_ref().unwrap().stats().sync_bytes_sent)
        .sum::<u64>()
        - sent_before;
    let tasks: HashMap<_, _> = replica.tasks().into_iter().map(|t| (t.id, t)).collect();
    println!(
        "partition: {n} agents in 6 groups split 3/3, {ops} operations ({} before the split), {} tasks live",
        shared,
        tasks.len()
    );
    println!(
        "  converged {:.0} ms after healing, {} pulls (sync requests) in that time; delta sync sent {:.1} MB of operations \
         ({:.0} kB per agent) vs {:.1} MB to ship every replica the full state ({:.0} kB each); {:.1} MB on the wire in all",
        converge.as_secs_f64() * 1000.0,
        pulls,
        delta as f64 / 1e6,
        delta as f64 / n as f64 / 1e3,
        full as f64 * n as f64 / 1e6,
        full as f64 / 1e3,
        bytes.total.get() as f64 / 1e6,
    );
    assert!(bytes.task_sync_ops.get() > 0);
    assert!(
        delta < full * n as u64,
        "delta sync must ship less than full state"
    );
    // Claims resolved identically everywhere.
    for a in &sim.nodes {
        let t = a.tasks.as_ref().unwrap().tasks(&topic);
        assert_eq!(t.len(), tasks.len());
        for v in t {
            assert_eq!(tasks[&v.id], v);
        }
    }
}
