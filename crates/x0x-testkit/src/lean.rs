//! Lean agents: what [`x0x::Agent::join_network`] leaves on a node (an
//! authenticated connection, `Hello`/`Welcome` on the control stream, one
//! `Register`) without the SDK's endpoint and tasks per agent, so one test
//! process can hold thousands. Many lean agents share one QUIC endpoint
//! (one UDP socket) per source address; each has its own identity.
//!
//! [`Swarm`] keeps a set of lean agents registered with their nodes and
//! re-registers each one at once when its connection ends (a node
//! restarted), as a real agent's link task does.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use quinn::crypto::rustls::QuicClientConfig;
use x0x_proto::identity::{Identity, PeerId};
use x0x_proto::wire::{self, Message, PeerKind, ReadLimits, close};

/// The transport an SDK agent uses towards nodes (keep-alive 15 s, idle 40 s).
pub fn agent_transport() -> Arc<quinn::TransportConfig> {
    let opts = x0x_proto::transport::TransportOptions::agent_to_node(
        Duration::from_secs(15),
        Duration::from_secs(40),
    );
    opts.quinn().expect("valid transport options")
}

/// A client-only QUIC endpoint on `ip` (port chosen by the kernel), with
/// large socket buffers, for many lean agents at once.
pub fn client_endpoint(ip: IpAddr) -> quinn::Endpoint {
    let udp = x0x_proto::transport::udp_socket(SocketAddr::new(ip, 0), 8 << 20)
        .expect("bind a client socket");
    quinn::Endpoint::new(
        x0x_proto::transport::endpoint_config(),
        None,
        udp,
        Arc::new(quinn::TokioRuntime),
    )
    .expect("client endpoint")
}

/// A client configuration presenting `identity`.
pub fn client_config(
    identity: &Identity,
    transport: &Arc<quinn::TransportConfig>,
) -> quinn::ClientConfig {
    let tls = QuicClientConfig::try_from(x0x_proto::tls::client_config(identity).unwrap()).unwrap();
    let mut cfg = quinn::ClientConfig::new(Arc::new(tls));
    cfg.transport_config(transport.clone());
    cfg
}

/// A fresh identity and its client configuration.
pub fn new_identity(transport: &Arc<quinn::TransportConfig>) -> (Identity, quinn::ClientConfig) {
    let id = Identity::generate().unwrap();
    let cfg = client_config(&id, transport);
    (id, cfg)
}

/// One lean agent's connection, control stream held open.
pub struct LeanAgent {
    pub peer: PeerId,
    pub conn: quinn::Connection,
    pub control: (quinn::SendStream, quinn::RecvStream),
}

/// Dial `node`, say `Hello` as an agent and read the `Welcome`; with
/// `register`, also `Register` (consenting to relaying as `accept_relay`).
/// Errors are strings (tests count them by kind).
pub async fn connect(
    endpoint: &quinn::Endpoint,
    cfg: quinn::ClientConfig,
    peer: PeerId,
    node: SocketAddr,
    register: Option<bool>,
    within: Duration,
) -> Result<LeanAgent, String> {
    let steps = async {
        let conn = endpoint
            .connect_with(cfg, node, x0x_proto::tls::SERVER_NAME)
            .map_err(|e| format!("connect: {e}"))?
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| format!("open: {e}"))?;
        let hello = Message::Hello {
            kind: PeerKind::Agent,
            incarnation: rand_u64(),
        };
        wire::write_frame(&mut send, &hello)
            .await
            .map_err(|e| format!("hello: {e}"))?;
        match wire::read_frame(&mut recv, &ReadLimits::TO_AGENT).await {
            Ok(Some(Message::Welcome { .. })) => {}
            other => return Err(format!("expected Welcome, got {other:?}")),
        }
        if let Some(accept_relay) = register {
            let reply = request(
                &conn,
                &Message::Register {
                    addrs: vec![],
                    accept_relay,
                },
            )
            .await?;
            if !matches!(reply, Message::Registered { .. }) {
                return Err(format!("expected Registered, got {reply:?}"));
            }
        }
        Ok(LeanAgent {
            peer,
            conn,
            control: (send, recv),
        })
    };
    tokio::time::timeout(within, steps)
        .await
        .map_err(|_| format!("no answer within {within:?}"))?
}

/// One request on its own stream; the reply, or why there was none.
pub async fn request(conn: &quinn::Connection, msg: &Message) -> Result<Message, String> {
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| format!("open: {e}"))?;
    wire::write_frame(&mut send, msg)
        .await
        .map_err(|e| format!("write: {e}"))?;
    let _ = send.finish();
    match wire::read_frame(&mut recv, &ReadLimits::TO_AGENT).await {
        Ok(Some(m)) => Ok(m),
        other => Err(format!("no reply: {other:?}")),
    }
}

fn rand_u64() -> u64 {
    let id = Identity::generate().unwrap().peer_id();
    u64::from_be_bytes(id.as_bytes()[..8].try_into().unwrap())
}

/// Counters of a [`Swarm`], shared with its tasks.
#[derive(Debug, Default)]
pub struct SwarmStats {
    /// Agents registered now.
    pub registered: AtomicUsize,
    /// Registrations completed (first ones and re-registrations).
    pub registrations: AtomicU64,
    /// Attempts that failed (each is retried).
    pub failures: AtomicU64,
    /// Connections that ended while the swarm was running.
    pub lost: AtomicU64,
    /// Why attempts failed (the error, shortened), with counts.
    pub errors: std::sync::Mutex<std::collections::BTreeMap<String, u64>>,
}

/// Lean agents kept registered with their nodes until [`Swarm::stop`].
pub struct Swarm {
    pub stats: Arc<SwarmStats>,
    /// Registered now, per node (index into the `nodes` given to [`Swarm::start`]).
    pub per_node: Arc<Vec<AtomicUsize>>,
    stop: Arc<AtomicBool>,
    stopped: tokio::sync::watch::Sender<bool>,
    tasks: tokio::task::JoinSet<()>,
    endpoints: Vec<quinn::Endpoint>,
}

impl Swarm {
    /// Start `count` agents: agent `k` registers with `nodes[k % nodes.len()]`
    /// from one of `per_node_ips` endpoints on `ip_for(node, j)`. At most
    /// `concurrency` handshakes run at once; a failed attempt is retried
    /// after `retry` with the same identity.
    pub fn start(
        nodes: &[SocketAddr],
        count: usize,
        per_node_ips: usize,
        ip_for: impl Fn(usize, usize) -> IpAddr,
        concurrency: usize,
        retry: Duration,
    ) -> Swarm {
        let transport = agent_transport();
        let mut endpoints = Vec::new();
        let mut by_node: Vec<Vec<quinn::Endpoint>> = Vec::new();
        for n in 0..nodes.len() {
            let eps: Vec<_> = (0..per_node_ips)
                .map(|j| client_endpoint(ip_for(n, j)))
                .collect();
            endpoints.extend(eps.iter().cloned());
            by_node.push(eps);
        }
        let stats = Arc::new(SwarmStats::default());
        let per_node: Arc<Vec<AtomicUsize>> =
            Arc::new((0..nodes.len()).map(|_| AtomicUsize::new(0)).collect());
        let stop = Arc::new(AtomicBool::new(false));
        let (stopped, _) = tokio::sync::watch::channel(false);
        let gate = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
        let mut tasks = tokio::task::JoinSet::new();
        for k in 0..count {
            let n = k % nodes.len();
            let endpoint = by_node[n][(k / nodes.len()) % per_node_ips].clone();
            let node = nodes[n];
            let (stats, per_node, stop, mut stopped, gate, transport) = (
                stats.clone(),
                per_node.clone(),
                stop.clone(),
                stopped.subscribe(),
                gate.clone(),
                transport.clone(),
            );
            tasks.spawn(async move {
                let (id, cfg) = new_identity(&transport);
                let peer = id.peer_id();
                while !stop.load(Ordering::Relaxed) {
                    let attempt = {
                        let _permit = gate.acquire().await.unwrap();
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                        connect(
                            &endpoint,
                            cfg.clone(),
                            peer,
                            node,
                            Some(false),
                            Duration::from_secs(5),
                        )
                        .await
                    };
                    let agent = match attempt {
                        Ok(a) => a,
                        Err(e) => {
                            stats.failures.fetch_add(1, Ordering::Relaxed);
                            let key: String = e.chars().take(80).collect();
                            *stats
                                .errors
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .entry(key)
                                .or_default() += 1;
                            tokio::time::sleep(retry).await;
                            continue;
                        }
                    };
                    stats.registrations.fetch_add(1, Ordering::Relaxed);
                    stats.registered.fetch_add(1, Ordering::Relaxed);
                    per_node[n].fetch_add(1, Ordering::Relaxed);
                    tokio::select! {
                        _ = agent.conn.closed() => {
                            if !stop.load(Ordering::Relaxed) {
                                stats.lost.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        _ = stopped.wait_for(|s| *s) => {}
                    }
                    stats.registered.fetch_sub(1, Ordering::Relaxed);
                    per_node[n].fetch_sub(1, Ordering::Relaxed);
                    if stop.load(Ordering::Relaxed) {
                        agent.conn.close(close::NORMAL, b"test done");
                        return;
                    }
                }
            });
        }
        Swarm {
            stats,
            per_node,
            stop,
            stopped,
            tasks,
            endpoints,
        }
    }

    pub fn registered(&self) -> usize {
        self.stats.registered.load(Ordering::Relaxed)
    }

    /// Close every agent's connection and wait (bounded) for the tasks.
    pub async fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.stopped.send_replace(true);
        let _ = tokio::time::timeout(Duration::from_secs(10), async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        self.tasks.abort_all();
        for e in &self.endpoints {
            e.close(close::NORMAL, b"test done");
        }
    }
}
