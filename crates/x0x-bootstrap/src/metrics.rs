//! Prometheus metrics of a node, served at `GET /metrics`.

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

/// Round-trip times of live connections, sampled when `/metrics` is read.
#[derive(Debug, Default)]
pub struct RttSnapshot {
    /// (short mesh peer id, rtt seconds)
    pub mesh: Vec<(String, f64)>,
    /// Agents' RTTs in seconds.
    pub agents: Vec<f64>,
    /// Relay circuits open now.
    pub relay_circuits: usize,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    pub result: String,
}

type Labelled<L> = Family<L, Counter>;

/// Every counter and gauge a node exports.
#[derive(Default)]
pub struct Metrics {
    pub connections_accepted: Counter,
    pub connections_dialed: Counter,
    pub connections_closed: Counter,
    pub connections_rejected: Labelled<Reason>,
    pub handshake_failures: Counter,
    pub dial_failures: Counter,
    pub tls_handshakes: Labelled<Group>,
    pub peers_connected: Gauge,
    pub agents_connected: Gauge,
    pub frames_rejected: Labelled<Reason>,
    pub reflector_observations: Counter,
    pub coordinator_registrations: Counter,
    pub coordinator_lookups: Labelled<Outcome>,
    pub coordinator_introductions: Labelled<Outcome>,
    pub directory_agents: Gauge,
    pub relay_datagrams: Counter,
    pub relay_bytes: Counter,
    pub relay_dropped: Labelled<Reason>,
    pub relay_circuits: Gauge,
}

impl Metrics {
    pub fn reject_frame(&self, reason: &str) {
        self.frames_rejected
            .get_or_create(&Reason {
                reason: reason.into(),
            })
            .inc();
    }

    pub fn reject_connection(&self, reason: &str) {
        self.connections_rejected
            .get_or_create(&Reason {
                reason: reason.into(),
            })
            .inc();
    }

    pub fn drop_relayed(&self, reason: &str) {
        self.relay_dropped
            .get_or_create(&Reason {
                reason: reason.into(),
            })
            .inc();
    }

    pub fn outcome(family: &Labelled<Outcome>, result: &str) {
        family
            .get_or_create(&Outcome {
                result: result.into(),
            })
            .inc();
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

    /// Render everything in the Prometheus text format, with live path
    /// figures from `live`.
    pub fn render(&self, live: RttSnapshot) -> String {
        self.sync_tls_groups();
        self.relay_circuits.set(live.relay_circuits as i64);
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
        let c = |r: &mut Registry, name: &str, help: &str, m: &Counter| {
            r.register(name, help, m.clone())
        };
        c(
            &mut r,
            "connections_accepted",
            "Inbound QUIC connections that completed the handshake",
            &self.connections_accepted,
        );
        c(
            &mut r,
            "connections_dialed",
            "Outbound QUIC connections that completed the handshake",
            &self.connections_dialed,
        );
        c(
            &mut r,
            "connections_closed",
            "Connections that ended",
            &self.connections_closed,
        );
        r.register(
            "connections_rejected",
            "Connections refused after the handshake, by reason",
            self.connections_rejected.clone(),
        );
        c(
            &mut r,
            "handshake_failures",
            "Inbound handshakes that failed",
            &self.handshake_failures,
        );
        c(
            &mut r,
            "dial_failures",
            "Outbound dials to mesh peers that failed",
            &self.dial_failures,
        );
        r.register(
            "tls_handshakes",
            "Inbound TLS handshakes by negotiated key-exchange group (this process)",
            self.tls_handshakes.clone(),
        );
        r.register(
            "peers_connected",
            "Configured mesh peers connected now",
            self.peers_connected.clone(),
        );
        r.register(
            "agents_connected",
            "Other peers (agents) connected now",
            self.agents_connected.clone(),
        );
        r.register(
            "frames_rejected",
            "Frames that closed a connection, by reason",
            self.frames_rejected.clone(),
        );
        c(
            &mut r,
            "reflector_observations",
            "Observed addresses reported to peers",
            &self.reflector_observations,
        );
        c(
            &mut r,
            "coordinator_registrations",
            "Agent registrations accepted",
            &self.coordinator_registrations,
        );
        r.register(
            "coordinator_lookups",
            "Directory lookups by result",
            self.coordinator_lookups.clone(),
        );
        r.register(
            "coordinator_introductions",
            "Introductions by result",
            self.coordinator_introductions.clone(),
        );
        r.register(
            "directory_agents",
            "Agents in this node's directory (local and from the mesh)",
            self.directory_agents.clone(),
        );
        c(
            &mut r,
            "relay_datagrams",
            "Datagrams forwarded by the relay",
            &self.relay_datagrams,
        );
        c(
            &mut r,
            "relay_bytes",
            "Payload bytes forwarded by the relay",
            &self.relay_bytes,
        );
        r.register(
            "relay_dropped",
            "Relayed datagrams dropped, by reason",
            self.relay_dropped.clone(),
        );
        r.register(
            "relay_circuits",
            "Relay circuits (source and destination pairs) open now",
            self.relay_circuits.clone(),
        );
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &r)
            .unwrap_or_else(|e| out.push_str(&format!("# encode error: {e}\n")));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_with_prefix_and_labels() {
        let m = Metrics::default();
        m.relay_datagrams.inc_by(3);
        m.drop_relayed("peer_rate");
        let text = m.render(RttSnapshot {
            mesh: vec![("ab12cd34".into(), 0.25)],
            agents: vec![0.3, 0.1, 0.2],
            relay_circuits: 2,
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
        assert!(text.contains("x0x_relay_datagrams_total 3"), "{text}");
        assert!(
            text.contains("x0x_relay_dropped_total{reason=\"peer_rate\"} 1"),
            "{text}"
        );
        assert!(text.contains("# EOF"));
    }
}
