//! Gossip tests: unit cases and the 100-agent simulations.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use x0x_proto::PeerId;

use super::*;
use crate::collab::envelope::Channel;
use crate::collab::sim::{Sim, SimAction, SimNode, percentile};
use crate::collab::testutil::{identity, memo_check};

const T0_MS: u64 = 1_700_000_000_000;

/// A simulated agent running only the gossip machine.
pub(crate) struct GNode {
    pub g: Gossip,
    /// (message id, author, time delivered)
    pub received: Vec<(MessageId, PeerId, Instant)>,
}

impl GNode {
    pub fn new(n: u64, start: Instant, config: GossipConfig) -> Self {
        Self {
            g: Gossip::new(identity(n), config, WallClock::new(start, T0_MS), n),
            received: Vec::new(),
        }
    }
}

impl SimNode for GNode {
    type Msg = GossipMessage;
    fn peer_id(&self) -> PeerId {
        self.g.peer_id()
    }
    fn on_message(&mut self, from: PeerId, msg: GossipMessage, now: Instant) {
        self.g.handle(from, msg, now);
    }
    fn on_timer(&mut self, now: Instant) {
        self.g.handle_timer(now);
    }
    fn on_peer_down(&mut self, peer: PeerId, now: Instant) {
        self.g.peer_down(peer, now);
    }
    fn drain(&mut self, _now: Instant, out: &mut Vec<SimAction<GossipMessage>>) {
        while let Some(o) = self.g.poll() {
            match o {
                Output::Send { to, message } => out.push(SimAction::Send { to, msg: message }),
                Output::SetTimer { at } => out.push(SimAction::Timer(at)),
                Output::Event(GossipEvent::Received { id, envelope, .. }) => {
                    self.received.push((id, envelope.author, _now))
                }
                _ => {}
            }
        }
    }
}

pub(crate) fn sim_config() -> GossipConfig {
    GossipConfig {
        verifier: VerifierConfig {
            signature_check: memo_check(),
            ..VerifierConfig::default()
        },
        first_seq: Some(1),
        ..GossipConfig::default()
    }
}

/// Every agent joins `topic` through up to 3 random agents that joined
/// before it (what the bootstrap directory would return), 20 ms apart.
pub(crate) fn join_all<N: SimNode>(
    sim: &mut Sim<N>,
    topic: TopicId,
    seed: u64,
    gossip: impl Fn(&mut N) -> &mut Gossip,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let n = sim.nodes.len();
    let ids: Vec<PeerId> = sim.nodes.iter().map(|n| n.peer_id()).collect();
    for i in 0..n {
        let mut contacts = Vec::new();
        for _ in 0..3.min(i) {
            contacts.push(ids[rng.random_range(0..i)]);
        }
        contacts.dedup();
        sim.with_node(i, |node, now| gossip(node).join(topic, &contacts, now));
        sim.run_for(Duration::from_millis(20));
    }
}

fn topic() -> TopicId {
    TopicId::new("sim-topic")
}

#[test]
fn two_agents_become_neighbours_and_exchange_messages() {
    let start = Instant::now();
    let nodes = (0..2).map(|i| GNode::new(i, start, sim_config())).collect();
    let mut sim = Sim::new(nodes, 1, start);
    join_all(&mut sim, topic(), 1, |n| &mut n.g);
    sim.run_for(Duration::from_millis(500));
    let (a, b) = (sim.nodes[0].peer_id(), sim.nodes[1].peer_id());
    assert_eq!(sim.nodes[0].g.neighbors(&topic()), vec![b]);
    assert_eq!(sim.nodes[1].g.neighbors(&topic()), vec![a]);
    let id = sim
        .with_node(0, |n, now| {
            n.g.publish(topic(), Channel::App, Bytes::from_static(b"hi"), now)
        })
        .unwrap();
    sim.run_for(Duration::from_millis(200));
    assert_eq!(sim.nodes[1].received.len(), 1);
    assert_eq!(sim.nodes[1].received[0].0, id);
    assert!(sim.nodes[0].received.is_empty(), "no echo to the author");
}

#[test]
fn publish_needs_a_joined_topic_and_a_bounded_payload() {
    let start = Instant::now();
    let mut g = Gossip::new(identity(1), sim_config(), WallClock::new(start, T0_MS), 1);
    assert_eq!(
        g.publish(topic(), Channel::App, Bytes::new(), start),
        Err(PublishError::NotJoined(topic()))
    );
    g.join(topic(), &[], start);
    let big = Bytes::from(vec![0u8; 64 * 1024 + 1]);
    assert!(matches!(
        g.publish(topic(), Channel::App, big, start),
        Err(PublishError::TooLarge(_))
    ));
    assert!(
        g.publish(topic(), Channel::App, Bytes::new(), start)
            .is_ok()
    );
}

#[test]
fn forged_and_replayed_gossip_is_dropped_counted_and_not_forwarded() {
    let start = Instant::now();
    let nodes = (0..3).map(|i| GNode::new(i, start, sim_config())).collect();
    let mut sim = Sim::new(nodes, 2, start);
    join_all(&mut sim, topic(), 2, |n| &mut n.g);
    sim.run_for(Duration::from_secs(1));
    let mallory = identity(99);
    let victim = sim.nodes[1].peer_id();
    // Mallory signs a message but claims node 1 wrote it.
    let mut forged = Envelope::sign(
        &mallory,
        topic(),
        Channel::App,
        1,
        T0_MS,
        Bytes::from_static(b"evil"),
    );
    forged.author = victim;
    let unsigned = {
        let mut e = Envelope::sign(&mallory, topic(), Channel::App, 2, T0_MS, Bytes::new());
        e.signature = x0x_proto::identity::Signature([0; 64]);
        e
    };
    let oversize = Envelope::sign(
        &mallory,
        topic(),
        Channel::App,
        3,
        T0_MS,
        Bytes::from(vec![1u8; 70 * 1024]),
    );
    let good = Envelope::sign(&mallory, topic(), Channel::App, 4, T0_MS, Bytes::new());
    // A replay: same seq, new signature bytes? No: a different payload under
    // an already used sequence number (a fresh id, so only the window catches it).
    let replay = Envelope::sign(
        &mallory,
        topic(),
        Channel::App,
        4,
        T0_MS,
        Bytes::from_static(b"again"),
    );
    let other_topic = Envelope::sign(
        &mallory,
        TopicId::new("x"),
        Channel::App,
        5,
        T0_MS,
        Bytes::new(),
    );
    for (round, env) in [forged, unsigned, oversize, good, replay, other_topic]
        .into_iter()
        .enumerate()
    {
        sim.with_node(0, |n, now| {
            n.g.handle(
                mallory.peer_id(),
                GossipMessage {
                    topic: topic(),
                    body: GossipBody::Gossip {
                        round: round as u16,
                        envelope: env,
                    },
                },
                now,
            )
        });
    }
    sim.run_for(Duration::from_secs(1));
    let s = sim.nodes[0].g.stats().envelopes;
    assert_eq!(s.bad_signature, 1);
    assert_eq!(s.unsigned, 1);
    assert_eq!(s.oversize, 1);
    assert_eq!(s.replay, 1);
    assert_eq!(s.wrong_topic, 1);
    assert_eq!(s.accepted, 1);
    // Only the good one reached anyone, exactly once each.
    for node in &sim.nodes {
        assert_eq!(node.received.len(), 1);
    }
    for node in &sim.nodes[1..] {
        assert_eq!(
            node.g.stats().envelopes.rejected(),
            0,
            "nothing bad was forwarded"
        );
    }
}

#[test]
fn gossip_messages_for_unknown_topics_are_counted() {
    let start = Instant::now();
    let mut g = Gossip::new(identity(1), sim_config(), WallClock::new(start, T0_MS), 1);
    g.handle(
        identity(2).peer_id(),
        GossipMessage {
            topic: topic(),
            body: GossipBody::Join,
        },
        start,
    );
    assert_eq!(g.stats().unknown_topic, 1);
    assert!(matches!(
        g.poll(),
        Some(Output::Send {
            message: GossipMessage {
                body: GossipBody::Disconnect { alive: false },
                ..
            },
            ..
        })
    ));
}

struct Run {
    /// message id -> (publisher index, publish time)
    published: HashMap<MessageId, (usize, Instant)>,
    payload_deliveries: std::rc::Rc<std::cell::Cell<u64>>,
}

/// 100 agents; publishers 0..10 publish 10 msg/s each for `secs`;
/// `crash` = (at second, agents) crashes those agents mid-run.
fn run_broadcast(
    seed: u64,
    secs: u64,
    crash: Option<(u64, Vec<usize>)>,
) -> (Sim<GNode>, Run, Instant) {
    let start = Instant::now();
    let n = 100;
    let nodes = (0..n as u64)
        .map(|i| GNode::new(i, start, sim_config()))
        .collect();
    let mut sim = Sim::new(nodes, seed, start);
    join_all(&mut sim, topic(), seed, |n| &mut n.g);
    // Let the overlay settle.
    sim.run_for(Duration::from_secs(5));
    let payloads = std::rc::Rc::new(std::cell::Cell::new(0u64));
    let counter = payloads.clone();
    sim.observer = Some(Box::new(move |_, _, m: &GossipMessage, _| {
        if m.body.is_payload() {
            counter.set(counter.get() + 1);
        }
    }));
    let mut published = HashMap::new();
    let pub_start = sim.now();
    let mut crash_at = None;
    // 10 publishers x 10 msg/s: publisher p publishes at 100 ms * k + 10 ms * p.
    for tick in 0..(secs * 100) {
        let t = pub_start + Duration::from_millis(10 * tick);
        sim.run_until(t);
        if let Some((at, who)) = &crash
            && tick == at * 100
        {
            for &i in who {
                sim.crash(i);
            }
            crash_at = Some(sim.now());
        }
        let p = (tick % 10) as usize;
        let k = tick / 10;
        let payload = Bytes::from(format!("msg {k} from {p}").into_bytes());
        let id = sim
            .with_node(p, |node, now| {
                node.g.publish(topic(), Channel::App, payload, now)
            })
            .unwrap();
        published.insert(id, (p, sim.now()));
    }
    sim.run_for(Duration::from_secs(5));
    (
        sim,
        Run {
            published,
            payload_deliveries: payloads,
        },
        crash_at.unwrap_or(pub_start),
    )
}

fn latencies(sim: &Sim<GNode>, run: &Run, since: Instant) -> Vec<f64> {
    let mut v = Vec::new();
    for node in sim.nodes.iter() {
        for (id, _, at) in &node.received {
            if let Some((_, t)) = run.published.get(id)
                && *t >= since
            {
                v.push((*at - *t).as_secs_f64() * 1000.0);
            }
        }
    }
    v
}

fn report(name: &str, lat: &mut [f64], rmr: Option<f64>) {
    let p50 = percentile(lat, 50.0).unwrap_or(f64::NAN);
    let p95 = percentile(lat, 95.0).unwrap_or(f64::NAN);
    let p99 = percentile(lat, 99.0).unwrap_or(f64::NAN);
    let max = percentile(lat, 100.0).unwrap_or(f64::NAN);
    match rmr {
        Some(r) => println!(
            "{name}: {} deliveries, latency p50 {p50:.1} ms, p95 {p95:.1} ms, p99 {p99:.1} ms, max {max:.1} ms, RMR {r:.3}",
            lat.len()
        ),
        None => println!(
            "{name}: {} deliveries, latency p50 {p50:.1} ms, p95 {p95:.1} ms, p99 {p99:.1} ms, max {max:.1} ms",
            lat.len()
        ),
    }
}

/// 100 agents, links 10–50 ms, 10 publishers x 10 msg/s for 30 simulated
/// seconds: every subscriber receives every message exactly once.
#[test]
fn sim_100_agents_every_message_delivered_exactly_once() {
    let (sim, run, since) = run_broadcast(7, 30, None);
    assert_eq!(run.published.len(), 3000);
    for (i, node) in sim.nodes.iter().enumerate() {
        let mut count: HashMap<MessageId, u32> = HashMap::new();
        for (id, _, _) in &node.received {
            *count.entry(*id).or_default() += 1;
        }
        for (id, (p, _)) in &run.published {
            if *p == i {
                assert!(!count.contains_key(id), "agent {i} got its own message");
                continue;
            }
            assert_eq!(count.get(id).copied(), Some(1), "agent {i}, message {id:?}");
        }
        assert_eq!(count.len(), node.received.len());
    }
    let needed = (run.published.len() * 99) as f64;
    let rmr = run.payload_deliveries.get() as f64 / needed - 1.0;
    let mut lat = latencies(&sim, &run, since);
    assert_eq!(lat.len(), 3000 * 99);
    report(
        "gossip 100 agents x 10 publishers x 10 msg/s x 30 s",
        &mut lat,
        Some(rmr),
    );
    let s: Vec<GossipStats> = sim.nodes.iter().map(|n| n.g.stats()).collect();
    let sum = |f: fn(&GossipStats) -> u64| s.iter().map(f).sum::<u64>();
    println!(
        "  grafts {}, prunes {}, ihave messages {}, graft misses {}, duplicates {}",
        sum(|s| s.grafts_sent),
        sum(|s| s.prunes_sent),
        sum(|s| s.ihave_sent),
        sum(|s| s.graft_misses),
        sum(|s| s.duplicates)
    );
    assert!(sum(|s| s.envelopes.rejected()) == 0);
}

/// 5 of 100 agents crash in the middle of the run: the overlay heals and
/// every surviving agent still receives every message published after the
/// crash, exactly once.
#[test]
fn sim_churn_5_of_100_crash_and_survivors_get_everything() {
    let crashed: Vec<usize> = vec![13, 27, 42, 66, 91];
    let (sim, run, crash_at) = run_broadcast(11, 20, Some((10, crashed.clone())));
    for (i, node) in sim.nodes.iter().enumerate() {
        if crashed.contains(&i) {
            continue;
        }
        let mut count: HashMap<MessageId, u32> = HashMap::new();
        for (id, _, _) in &node.received {
            *count.entry(*id).or_default() += 1;
        }
        assert!(count.values().all(|&c| c == 1), "agent {i} got a duplicate");
        for (id, (p, t)) in &run.published {
            if *p != i && *t >= crash_at {
                assert_eq!(count.get(id), Some(&1), "agent {i} missed {id:?}");
            }
        }
        // Nobody keeps a crashed agent as a neighbour.
        for &c in &crashed {
            assert!(
                !node.g.neighbors(&topic()).contains(&sim.nodes[c].peer_id()),
                "agent {i} still has crashed {c} in its active view"
            );
        }
        assert!(!node.g.neighbors(&topic()).is_empty());
    }
    let mut lat = latencies(&sim, &run, crash_at);
    report("gossip churn (after 5 of 100 crashed)", &mut lat, None);
    let mut first = Vec::new();
    for node in sim.nodes.iter() {
        for (id, _, at) in &node.received {
            if let Some((_, t)) = run.published.get(id)
                && *t >= crash_at
                && *t < crash_at + Duration::from_secs(3)
            {
                first.push((*at - *t).as_secs_f64() * 1000.0);
            }
        }
    }
    report("  ... in the first 3 s after the crash", &mut first, None);
}
