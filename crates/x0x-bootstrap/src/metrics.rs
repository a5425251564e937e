//! Prometheus metrics of a node, served at `GET /metrics` (prefix `x0x_`).
//!
//! Every limit of `[limits]` has its refusals counted under one of the
//! labelled counters here, with the limit's key (or a short name) as
//! `reason`. The names are stable: alert rules in `monitoring/` use them.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Group {
    pub group: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Peer {
    pub peer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Quantile {
    pub quantile: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    pub result: String,
}

/// Live figures sampled when `/metrics` is read.
#[derive(Debug, Default)]
pub struct LiveSnapshot {
    /// (short mesh peer id, rtt seconds)
    pub mesh: Vec<(String, f64)>,
    /// Agents' RTTs in seconds.
    pub agents: Vec<f64>,
    /// Relay circuits open now.
    pub relay_circuits: usize,
    /// Handshakes in flight now.
    pub handshakes: usize,
}

type Labelled<L> = Family<L, Counter>;

/// Every counter and gauge a node exports. Clones share the same values.
#[derive(Clone, Default)]
pub struct Metrics {
    pub connections_accepted: Counter,
    pub connections_dialed: Counter,
    pub connections_closed: Counter,
    pub connections_rejected: Labelled<Reason>,
    pub accept_retries: Counter,
    pub handshake_failures: Counter,
    pub dial_failures: Counter,
    pub tls_handshakes: Labelled<Group>,
    pub peers_connected: Gauge,
    pub peers_expected: Gauge,
    pub agents_connected: Gauge,
    pub frames_rejected: Labelled<Reason>,
    pub reflector_observations: Counter,
    pub probes_answered: Counter,
    pub coordinator_registrations: Counter,
    pub coordinator_lookups: Labelled<Outcome>,
    pub coordinator_introductions: Labelled<Outcome>,
    pub directory_agents: Gauge,
    pub directory_rejected: Labelled<Reason>,
    pub requests_refused: Labelled<Reason>,
    pub pushes_dropped: Counter,
    pub vouches: Labelled<Outcome>,
    pub status_requests: Counter,
    pub relay_datagrams: Counter,
    pub relay_bytes: Counter,
    pub relay_dropped: Labelled<Reason>,
    pub relay_circuits_opened: Counter,
    pub relay_circuits_refused: Labelled<Reason>,
    pub relay_circuits_closed: Labelled<Reason>,
    pub relay_circuits: Gauge,
    pub handshakes_in_flight: Gauge,
    pub tcp_sessions: Gauge,
    pub tcp_datagrams_in: Counter,
    pub tcp_datagrams_out: Counter,
    pub tcp_rejected: Labelled<Reason>,
}

fn count<L: Clone + std::hash::Hash + Eq + EncodeLabelSet + std::fmt::Debug + Send + Sync>(
    family: &Labelled<L>,
    label: L,
    n: u64,
) {
    family.get_or_create(&label).inc_by(n);
}

/// Every reason each labelled counter can count, created at 0 when the
/// node starts so every series exists (alert rules can take rates of them
/// and tests can tell "zero" from "missing").
const REASONS: &[(&str, &[&str])] = &[
    (
        "connections_rejected",
        &[
            "max_connections",
            "accept_per_sec",
            "connections_per_ip",
            "max_handshakes",
            "hello_timeout_ms",
            "duplicate",
        ],
    ),
    (
        "frames_rejected",
        &[
            "too_large",
            "version",
            "malformed",
            "stalled",
            "io",
            "unexpected",
            "hello_timeout_ms",
            "register_timeout_ms",
            "not_member",
            "stray_packet",
        ],
    ),
    (
        "relay_dropped",
        &[
            "too_large",
            "no_circuit",
            "spoofed",
            "peer_rate",
            "ip_rate",
            "dest_rate",
            "global_rate",
            "disabled",
            "send_failed",
        ],
    ),
    (
        "requests_refused",
        &[
            "requests_per_sec",
            "coordinator_disabled",
            "not_registered",
            "unknown_peer",
            "relay_disabled",
            "bad_address",
            "bad_proof",
            "vouches_per_agent",
            "vouches_busy",
            "not_a_request",
        ],
    ),
    (
        "directory_rejected",
        &[
            "foreign_home",
            "too_many_addrs",
            "peer_full",
            "not_directory",
        ],
    ),
    (
        "relay_circuits_refused",
        &[
            "not_here",
            "no_consent",
            "not_registered",
            "relay_circuits_per_peer",
            "relay_circuits_per_dest",
            "relay_circuits_per_ip",
            "relay_circuits",
        ],
    ),
    (
        "relay_circuits_closed",
        &["idle", "lifetime", "bytes", "peer_left"],
    ),
    (
        "tcp_rejected",
        &[
            "max_connections",
            "connections_per_ip",
            "max_handshakes",
            "hello_timeout_ms",
            "handshake",
            "idle_timeout_ms",
            "too_large",
            "queue_full",
        ],
    ),
];

const OUTCOMES: &[(&str, &[&str])] = &[
    ("coordinator_lookups", &["found", "missing"]),
    ("coordinator_introductions", &["delivered", "undeliverable"]),
    ("vouches", &["sent", "proven", "bad_proof", "bad_address"]),
];

impl Metrics {
    /// Metrics with every labelled series created at 0.
    pub fn new() -> Self {
        let m = Self::default();
        for (family, reasons) in REASONS {
            let f = match *family {
                "connections_rejected" => &m.connections_rejected,
                "frames_rejected" => &m.frames_rejected,
                "relay_dropped" => &m.relay_dropped,
                "requests_refused" => &m.requests_refused,
                "directory_rejected" => &m.directory_rejected,
                "relay_circuits_refused" => &m.relay_circuits_refused,
                "tcp_rejected" => &m.tcp_rejected,
                _ => &m.relay_circuits_closed,
            };
            for r in *reasons {
                let _ = f.get_or_create(&reason_of(r));
            }
        }
        for (family, results) in OUTCOMES {
            let f = match *family {
                "coordinator_lookups" => &m.coordinator_lookups,
                "coordinator_introductions" => &m.coordinator_introductions,
                _ => &m.vouches,
            };
            for r in *results {
                let _ = f.get_or_create(&Outcome {
                    result: (*r).into(),
                });
            }
        }
        m.sync_tls_groups();
        m
    }

    pub fn reject_frame(&self, reason: &str) {
        count(&self.frames_rejected, reason_of(reason), 1);
    }

    pub fn reject_connection(&self, reason: &str) {
        count(&self.connections_rejected, reason_of(reason), 1);
    }

    pub fn drop_relayed(&self, reason: &str, packets: u64) {
        count(&self.relay_dropped, reason_of(reason), packets);
    }

    pub fn refuse_request(&self, reason: &str) {
        count(&self.requests_refused, reason_of(reason), 1);
    }

    pub fn reject_record(&self, reason: &str) {
        count(&self.directory_rejected, reason_of(reason), 1);
    }

    pub fn refuse_circuit(&self, reason: &str) {
        count(&self.relay_circuits_refused, reason_of(reason), 1);
    }

    pub fn reject_tcp(&self, reason: &str) {
        count(&self.tcp_rejected, reason_of(reason), 1);
    }

    pub fn close_circuit(&self, reason: &str) {
        count(&self.relay_circuits_closed, reason_of(reason), 1);
    }

    pub fn outcome(family: &Labelled<Outcome>, result: &str) {
        count(
            family,
            Outcome {
                result: result.into(),
            },
            1,
        );
    }

    /// Copy the process-wide TLS key-exchange counts into the exported counter.
    fn sync_tls_groups(&self) {
        for (group, count) in x0x_proto::tls::negotiated_group_counts() {
            let c = self.tls_handshakes.get_or_create(&Group { group });
            let seen = c.get();
            if count > seen {
                c.inc_by(count - seen);
            }
        }
    }

    /// Render everything in the Prometheus text format, with live figures from `live`.
    pub fn render(&self, live: LiveSnapshot) -> String {
        self.sync_tls_groups();
        self.relay_circuits.set(live.relay_circuits as i64);
        self.handshakes_in_flight.set(live.handshakes as i64);
        let mut r = Registry::with_prefix("x0x");
        let mesh_rtt = Family::<Peer, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        for (peer, rtt) in &live.mesh {
            mesh_rtt
                .get_or_create(&Peer { peer: peer.clone() })
                .set(*rtt);
        }
        r.register(
            "mesh_peer_rtt_seconds",
            "Round-trip time to each connected mesh peer",
            mesh_rtt,
        );
        let agent_rtt = Family::<Quantile, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        let mut agents = live.agents;
        agents.sort_by(f64::total_cmp);
        if !agents.is_empty() {
            for (label, q) in [("0.5", 0.5), ("0.99", 0.99), ("1", 1.0)] {
                let i = ((agents.len() - 1) as f64 * q).round() as usize;
                agent_rtt
                    .get_or_create(&Quantile {
                        quantile: label.into(),
                    })
                    .set(agents[i]);
            }
        }
        r.register(
            "agent_rtt_seconds",
            "Round-trip time of directly connected agents, by quantile",
            agent_rtt,
        );
        macro_rules! reg {
            ($($name:literal, $help:literal, $field:ident;)*) => {
                $( r.register($name, $help, self.$field.clone()); )*
            };
        }
        reg! {
            "connections_accepted", "Inbound QUIC connections that completed the handshake", connections_accepted;
            "connections_dialed", "Outbound QUIC connections that completed the handshake", connections_dialed;
            "connections_closed", "Connections that ended", connections_closed;
            "connections_rejected", "Connections refused, by reason (the [limits] key)", connections_rejected;
            "accept_retries", "Stateless Retries sent to sources that had not proven their address", accept_retries;
            "handshake_failures", "Inbound handshakes that failed or timed out", handshake_failures;
            "handshakes_in_flight", "Inbound handshakes in progress now", handshakes_in_flight;
            "dial_failures", "Outbound dials to mesh peers that failed", dial_failures;
            "tls_handshakes", "Inbound TLS handshakes by negotiated key-exchange group (this process)", tls_handshakes;
            "peers_connected", "Configured mesh peers connected now", peers_connected;
            "peers_expected", "Configured mesh peers (other than this node)", peers_expected;
            "agents_connected", "Other peers (agents) connected now", agents_connected;
            "frames_rejected", "Frames or streams that closed a connection, by reason", frames_rejected;
            "reflector_observations", "Observed addresses reported to peers", reflector_observations;
            "probes_answered", "One-shot probes answered (Hello kind Probe: Welcome, then closed)", probes_answered;
            "coordinator_registrations", "Agent registrations accepted", coordinator_registrations;
            "coordinator_lookups", "Directory lookups by result", coordinator_lookups;
            "coordinator_introductions", "Introductions by result", coordinator_introductions;
            "directory_agents", "Agents in this node's directory (local and from the mesh)", directory_agents;
            "directory_rejected", "Directory records from mesh peers rejected, by reason", directory_rejected;
            "requests_refused", "Agent requests refused, by reason", requests_refused;
            "pushes_dropped", "Pushes to an agent dropped because its queue was full", pushes_dropped;
            "vouches", "Address vouching by result", vouches;
            "status_requests", "Status requests answered", status_requests;
            "relay_datagrams", "Relay packets forwarded", relay_datagrams;
            "relay_bytes", "Relay payload bytes forwarded", relay_bytes;
            "relay_dropped", "Relay packets dropped, by reason", relay_dropped;
            "relay_circuits_opened", "Relay circuits opened", relay_circuits_opened;
            "relay_circuits_refused", "Relay circuits refused, by reason", relay_circuits_refused;
            "relay_circuits_closed", "Relay circuits closed, by reason", relay_circuits_closed;
            "relay_circuits", "Relay circuits open now", relay_circuits;
            "tcp_sessions", "TLS/WebSocket relay sessions open now", tcp_sessions;
            "tcp_datagrams_in", "Datagrams received over TCP sessions", tcp_datagrams_in;
            "tcp_datagrams_out", "Datagrams sent over TCP sessions", tcp_datagrams_out;
            "tcp_rejected", "TCP relay sessions refused or datagrams dropped, by reason", tcp_rejected;
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &r)
            .unwrap_or_else(|e| out.push_str(&format!("# encode error: {e}\n")));
        out
    }
}

fn reason_of(reason: &str) -> Reason {
    Reason {
        reason: reason.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_series_exists_from_the_start() {
        let text = Metrics::new().render(LiveSnapshot::default());
        for (family, reasons) in REASONS {
            for r in *reasons {
                let line = format!("x0x_{family}_total{{reason=\"{r}\"}} 0");
                assert!(text.contains(&line), "{line} missing");
            }
        }
        assert!(text.contains("x0x_vouches_total{result=\"proven\"} 0"));
    }

    #[test]
    fn renders_counters_with_prefix_and_labels() {
        let m = Metrics::default();
        m.relay_datagrams.inc_by(3);
        m.drop_relayed("peer_rate", 2);
        let text = m.render(LiveSnapshot {
            mesh: vec![("ab12cd34".into(), 0.25)],
            agents: vec![0.3, 0.1, 0.2],
            relay_circuits: 2,
            handshakes: 1,
        });
        assert!(
            text.contains("x0x_mesh_peer_rtt_seconds{peer=\"ab12cd34\"} 0.25"),
            "{text}"
        );
        assert!(
            text.contains("x0x_agent_rtt_seconds{quantile=\"0.5\"} 0.2"),
            "{text}"
        );
        assert!(
            text.contains("x0x_agent_rtt_seconds{quantile=\"1\"} 0.3"),
            "{text}"
        );
        assert!(text.contains("x0x_relay_circuits 2"), "{text}");
        assert!(text.contains("x0x_handshakes_in_flight 1"), "{text}");
        assert!(text.contains("x0x_relay_datagrams_total 3"), "{text}");
        assert!(
            text.contains("x0x_relay_dropped_total{reason=\"peer_rate\"} 2"),
            "{text}"
        );
        assert!(text.contains("# EOF"));
    }
}
