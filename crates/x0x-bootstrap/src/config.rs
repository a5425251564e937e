//! The `x0x-bootstrap` configuration file (TOML).
//!
//! Every table uses `deny_unknown_fields`: a misspelt key is an error naming
//! the key, the file and the line, never silently ignored. The key names are
//! the interface the NixOS module and `hosts/` write; see the README for the
//! reference.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A configured mesh peer: `addr`, or `PEERID@addr` pinned to an identity.
pub type MeshPeer = x0x_proto::addr::PeerSpec;

pub use x0x_proto::relay::MIN_RELAYED_QUIC_PACKET;

/// Exit code for a configuration error (`EX_CONFIG` from sysexits.h).
pub const EX_CONFIG: i32 = 78;

/// The whole node configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// QUIC (UDP) listen address.
    pub listen: SocketAddr,
    /// Other bootstrap nodes to keep connected to: `addr`, or
    /// `PEERID@addr` to accept only the node holding that key.
    pub peers: Vec<MeshPeer>,
    /// Where the node key and other state live.
    pub state_dir: PathBuf,
    /// A pre-provisioned node key (PKCS#8 PEM). Default: `<state_dir>/node.key`,
    /// generated on first start.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    pub roles: Roles,
    pub health: HealthConfig,
    pub log: LogConfig,
    /// Connections from agents.
    pub transport: TransportConfig,
    /// Connections between nodes.
    pub mesh: MeshConfig,
    /// The TLS/WebSocket relay for agents whose networks block UDP.
    pub tcp: TcpConfig,
    pub limits: Limits,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: "[::]:12000".parse().expect("valid literal"),
            peers: Vec::new(),
            state_dir: PathBuf::from("/var/lib/x0x-bootstrap"),
            key_file: None,
            roles: Roles::default(),
            health: HealthConfig::default(),
            log: LogConfig::default(),
            transport: TransportConfig::default(),
            mesh: MeshConfig::default(),
            tcp: TcpConfig::default(),
            limits: Limits::default(),
        }
    }
}

/// Which services the node offers. All on by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Roles {
    pub coordinator: bool,
    pub reflector: bool,
    pub relay: bool,
}

impl Default for Roles {
    fn default() -> Self {
        Self {
            coordinator: true,
            reflector: true,
            relay: true,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    /// HTTP address for `/health` and `/metrics`.
    pub listen: SocketAddr,
    /// Permit a non-loopback `listen` (the endpoints are unauthenticated).
    pub allow_remote: bool,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:12600".parse().expect("valid literal"),
            allow_remote: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A tracing filter: `info`, `debug`, `x0x=debug,quinn=warn`, ...
    pub level: String,
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// QUIC settings for agents' connections: NAT-friendly keep-alives, so
/// thousands of idle agents cost the node little.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TransportConfig {
    /// QUIC keep-alive interval on agent connections (keeps NAT mappings open).
    pub keepalive_ms: u64,
    /// An agent silent for this long is gone (at most 120 000). QUIC
    /// restarts the timer when it sends a keep-alive, so a dead agent is
    /// noticed within `idle_timeout_ms + keepalive_ms`.
    pub idle_timeout_ms: u64,
    /// Requested UDP socket send and receive buffer size.
    pub udp_buffer_bytes: usize,
}

impl Default for TransportConfig {
    fn default() -> Self {
        Self {
            keepalive_ms: 15_000,
            idle_timeout_ms: 40_000,
            udp_buffer_bytes: 7 * 1024 * 1024,
        }
    }
}

impl TransportConfig {
    pub fn keepalive(&self) -> Duration {
        Duration::from_millis(self.keepalive_ms)
    }

    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }
}

/// QUIC settings for connections between nodes: a fast liveness check, so
/// a node that dies is seen by the others within `idle_timeout_ms +
/// keepalive_ms` (2.5 s with the defaults: QUIC restarts the idle timer
/// when it sends its first ack-eliciting packet after the last one it
/// received, up to one keep-alive after the death). 2 s of silence is
/// still four keep-alives each way, far from a false alarm at 1 % loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MeshConfig {
    pub keepalive_ms: u64,
    pub idle_timeout_ms: u64,
}

impl Default for MeshConfig {
    fn default() -> Self {
        Self {
            keepalive_ms: 500,
            idle_timeout_ms: 2_000,
        }
    }
}

impl MeshConfig {
    pub fn keepalive(&self) -> Duration {
        Duration::from_millis(self.keepalive_ms)
    }

    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }
}

/// The TCP relay listener.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TcpConfig {
    /// TCP address of the TLS/WebSocket relay (`""`: off). Under systemd a
    /// socket passed with `FileDescriptorName=tcp` is used instead.
    pub listen: String,
}

impl Default for TcpConfig {
    fn default() -> Self {
        Self {
            listen: "[::]:443".into(),
        }
    }
}

impl TcpConfig {
    /// The address to listen on, `None` when off. Checked by `validate`.
    pub fn addr(&self) -> Option<SocketAddr> {
        if self.listen.is_empty() {
            None
        } else {
            self.listen.parse().ok()
        }
    }
}

/// Every limit of the node. All are on by default; each refusal or drop
/// is counted in `/metrics` with the key's name as its `reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Connections (nodes and agents) held at once; more are refused.
    pub max_connections: usize,
    /// New inbound connections accepted per second from one source IP
    /// (burst: one second's worth). Validated mesh peers are exempt.
    pub accept_per_sec: u64,
    /// Connections and handshakes at once from one IPv4 address or IPv6 /64.
    pub connections_per_ip: usize,
    /// Handshakes in flight at once; more are refused.
    pub max_handshakes: usize,
    /// Above this many handshakes in flight, every source that has not
    /// proven its address gets a stateless Retry first (0: always).
    /// Sources claiming a mesh peer's address are always asked to prove it.
    pub retry_above_handshakes: usize,
    /// A connection that sends no `Hello` within this is closed.
    pub hello_timeout_ms: u64,
    /// An agent that does not register within this is closed (when the
    /// coordinator role is on).
    pub register_timeout_ms: u64,
    /// Requests per second one agent connection may make (burst: one second's worth).
    pub requests_per_sec: u64,
    /// Pushes (introductions, circuit notices) queued for one agent; more are dropped.
    pub agent_push_queue: usize,
    /// Directory records one mesh peer may hold in this node's directory.
    pub directory_records_per_peer: usize,
    /// Largest relayed payload (after the 9-byte circuit header). Relayed
    /// agent connections need at least 1 200.
    pub relay_datagram_bytes: usize,
    /// Relay bandwidth one agent may send (token bucket, 1 s burst).
    pub relay_peer_bytes_per_sec: u64,
    /// Relay bandwidth one agent may receive. It is shared among the
    /// circuits reaching the agent in proportion to what the agent sends
    /// back on each, so circuits it does not answer cannot crowd out the
    /// ones it uses.
    pub relay_dest_bytes_per_sec: u64,
    /// Relay bandwidth all agents sending from one IPv4 address or IPv6
    /// /64 may use together.
    pub relay_ip_bytes_per_sec: u64,
    /// Relay bandwidth for all agents together.
    pub relay_global_bytes_per_sec: u64,
    /// Every relayed packet is charged at least this many bytes.
    pub relay_min_charge_bytes: u64,
    /// Circuits one agent may open at once.
    pub relay_circuits_per_peer: usize,
    /// Circuits that may reach one agent at once.
    pub relay_circuits_per_dest: usize,
    /// Circuits opened from one IPv4 address or IPv6 /64 at once.
    pub relay_circuits_per_ip: usize,
    /// Relay circuits open at once, in all.
    pub relay_circuits: usize,
    /// A circuit with no traffic for this long is closed.
    pub relay_circuit_idle_ms: u64,
    /// A circuit is closed after this long (the agents open a new one).
    pub relay_circuit_lifetime_s: u64,
    /// A circuit is closed after carrying this many bytes.
    pub relay_circuit_bytes: u64,
    /// Addresses one agent may ask the node to vouch for, per registration.
    pub vouches_per_agent: usize,
    /// Collab topics one agent may be registered in at this node.
    pub topics_per_agent: usize,
    /// Agents registered in one topic at this node; later joins are refused.
    pub members_per_topic: usize,
    /// Topics with members at this node, in all.
    pub topics: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 16_384,
            accept_per_sec: 500,
            connections_per_ip: 256,
            max_handshakes: 512,
            retry_above_handshakes: 16,
            hello_timeout_ms: 5_000,
            register_timeout_ms: 10_000,
            requests_per_sec: 20,
            agent_push_queue: 256,
            directory_records_per_peer: 65_536,
            relay_datagram_bytes: 1_500,
            relay_peer_bytes_per_sec: 1024 * 1024,
            relay_dest_bytes_per_sec: 2 * 1024 * 1024,
            relay_ip_bytes_per_sec: 8 * 1024 * 1024,
            relay_global_bytes_per_sec: 128 * 1024 * 1024,
            relay_min_charge_bytes: 128,
            relay_circuits_per_peer: 32,
            relay_circuits_per_dest: 64,
            relay_circuits_per_ip: 256,
            relay_circuits: 8_192,
            relay_circuit_idle_ms: 30_000,
            relay_circuit_lifetime_s: 3_600,
            relay_circuit_bytes: 1 << 30,
            vouches_per_agent: 4,
            topics_per_agent: 64,
            members_per_topic: 4_096,
            topics: 65_536,
        }
    }
}

/// A configuration error, naming the file, the key and (when known) the line.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}: {message}{snippet}", line = line.map_or("?".to_string(), |l| l.to_string()), snippet = snippet.as_ref().map_or(String::new(), |s| format!("\n    {s}")))]
    Invalid {
        path: PathBuf,
        line: Option<usize>,
        message: String,
        snippet: Option<String>,
    },
}

impl Config {
    /// Read, parse and validate a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parse and validate configuration text; `path` is used in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| line_number(text, s.start));
            let table = line.and_then(|l| table_at(text, l));
            ConfigError::Invalid {
                path: path.to_owned(),
                line,
                message: match table {
                    Some(t) => format!("in [{t}]: {}", e.message().trim()),
                    None => e.message().trim().to_string(),
                },
                snippet: line
                    .and_then(|l| text.lines().nth(l - 1))
                    .map(|s| s.trim().to_string()),
            }
        })?;
        config.validate().map_err(|(table, key, message)| {
            let line = find_key_line(text, table, key)
                .or_else(|| related_key(table, key).and_then(|k| find_key_line(text, table, k)));
            let name = if table.is_empty() {
                key.to_string()
            } else {
                format!("{table}.{key}")
            };
            ConfigError::Invalid {
                path: path.to_owned(),
                line,
                message: format!("key `{name}`: {message}"),
                snippet: line
                    .and_then(|l| text.lines().nth(l - 1))
                    .map(|s| s.trim().to_string()),
            }
        })?;
        Ok(config)
    }

    /// Semantic checks serde cannot express. Errors are (table, key, message).
    fn validate(&self) -> Result<(), (&'static str, &'static str, String)> {
        if !self.health.listen.ip().is_loopback() && !self.health.allow_remote {
            return Err((
                "health",
                "listen",
                format!(
                    "{} is not a loopback address; the health and metrics endpoints are unauthenticated (set health.allow_remote = true to permit this)",
                    self.health.listen
                ),
            ));
        }
        if !self.tcp.listen.is_empty() && self.tcp.listen.parse::<SocketAddr>().is_err() {
            return Err((
                "tcp",
                "listen",
                format!(
                    "{:?} is not an ip:port or [ipv6]:port address (\"\" turns the TCP relay off)",
                    self.tcp.listen
                ),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for peer in &self.peers {
            if !seen.insert(peer.addr.to_string()) {
                return Err(("", "peers", format!("{peer} is listed twice")));
            }
        }
        if let Err(e) = check_log_filter(&self.log.level) {
            return Err(("log", "level", e));
        }
        for (table, keepalive, idle, max_idle) in [
            (
                "transport",
                self.transport.keepalive_ms,
                self.transport.idle_timeout_ms,
                120_000,
            ),
            (
                "mesh",
                self.mesh.keepalive_ms,
                self.mesh.idle_timeout_ms,
                60_000,
            ),
        ] {
            if !(1_000..=max_idle).contains(&idle) {
                return Err((
                    table,
                    "idle_timeout_ms",
                    format!("{idle} is outside 1000..={max_idle}"),
                ));
            }
            if keepalive == 0 || keepalive >= idle {
                return Err((
                    table,
                    "keepalive_ms",
                    format!("{keepalive} must be above 0 and below idle_timeout_ms ({idle})"),
                ));
            }
        }
        let l = &self.limits;
        for (key, value) in [
            ("max_connections", l.max_connections as u64),
            ("accept_per_sec", l.accept_per_sec),
            ("connections_per_ip", l.connections_per_ip as u64),
            ("max_handshakes", l.max_handshakes as u64),
            ("hello_timeout_ms", l.hello_timeout_ms),
            ("register_timeout_ms", l.register_timeout_ms),
            ("requests_per_sec", l.requests_per_sec),
            ("agent_push_queue", l.agent_push_queue as u64),
            (
                "directory_records_per_peer",
                l.directory_records_per_peer as u64,
            ),
            ("relay_circuits_per_peer", l.relay_circuits_per_peer as u64),
            ("relay_circuits_per_dest", l.relay_circuits_per_dest as u64),
            ("relay_circuits_per_ip", l.relay_circuits_per_ip as u64),
            ("relay_circuits", l.relay_circuits as u64),
            ("relay_circuit_idle_ms", l.relay_circuit_idle_ms),
            ("relay_circuit_lifetime_s", l.relay_circuit_lifetime_s),
            ("relay_circuit_bytes", l.relay_circuit_bytes),
            ("topics_per_agent", l.topics_per_agent as u64),
            ("members_per_topic", l.members_per_topic as u64),
            ("topics", l.topics as u64),
        ] {
            if value == 0 {
                return Err(("limits", key, "must be at least 1".into()));
            }
        }
        if !(64..=65_000).contains(&l.relay_datagram_bytes) {
            return Err((
                "limits",
                "relay_datagram_bytes",
                format!("{} is outside 64..=65000", l.relay_datagram_bytes),
            ));
        }
        for (key, value) in [
            ("relay_peer_bytes_per_sec", l.relay_peer_bytes_per_sec),
            ("relay_dest_bytes_per_sec", l.relay_dest_bytes_per_sec),
            ("relay_ip_bytes_per_sec", l.relay_ip_bytes_per_sec),
            ("relay_global_bytes_per_sec", l.relay_global_bytes_per_sec),
        ] {
            if value == 0 {
                return Err((
                    "limits",
                    key,
                    "must be above 0 (switch the relay off with roles.relay = false)".into(),
                ));
            }
        }
        Ok(())
    }

    /// Settings that are valid but probably not what the operator wants.
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        let unpinned: Vec<String> = self
            .peers
            .iter()
            .filter(|p| p.id.is_none())
            .map(|p| p.addr.to_string())
            .collect();
        if !unpinned.is_empty() {
            w.push(format!(
                "the mesh is unpinned: {} (whoever holds such an address joins the mesh; pin each peer as PEERID@addr, e.g. from `x0x-bootstrap --print-peer-id` on that node and `peer_id` in hosts/inventory.toml)",
                unpinned.join(", ")
            ));
        }
        if self.roles.relay && self.limits.relay_datagram_bytes < MIN_RELAYED_QUIC_PACKET {
            w.push(format!(
                "limits.relay_datagram_bytes = {} is below {MIN_RELAYED_QUIC_PACKET}: the relay forwards datagrams but cannot carry relayed agent connections",
                self.limits.relay_datagram_bytes
            ));
        }
        w
    }

    /// The key file: `key_file` if set, else `<state_dir>/node.key`.
    pub fn key_path(&self) -> PathBuf {
        self.key_file
            .clone()
            .unwrap_or_else(|| self.state_dir.join("node.key"))
    }

    /// The effective configuration as TOML (what `--check` prints).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}

/// Check a tracing filter (`log.level`, or `RUST_LOG`) before it reaches
/// `tracing_subscriber::EnvFilter`; the error says what is wrong.
///
/// tracing-subscriber 0.3 walks the *trimmed* directive but slices the
/// untrimmed one with those indices, so a directive with leading whitespace
/// is misread (ASCII: `info, x0x=debug` fails as an invalid level) or, when a
/// non-ASCII character follows, the slice falls inside it and the parser
/// panics (`info, é=debug`; found by fuzzing `Config::parse`). Directives
/// with whitespace around them are therefore refused here, by name.
/// Field values are parsed as literals, not regexes: compiling them is
/// exponential (found by fuzzing: a 25-byte level took 15 s).
pub fn check_log_filter(filter: &str) -> Result<(), String> {
    for (n, directive) in filter.split(',').enumerate() {
        if directive.trim().len() != directive.len() {
            return Err(format!(
                "{filter:?} is not a valid filter: directive {} ({directive:?}) has whitespace around it; \
                 separate directives with a bare comma, e.g. \"info,x0x=debug\"",
                n + 1
            ));
        }
    }
    tracing_subscriber::EnvFilter::builder()
        .with_regex(false)
        .parse(filter)
        .map(drop)
        .map_err(|e| format!("{filter:?} is not a valid filter: {e}"))
}

fn line_number(text: &str, byte: usize) -> usize {
    text[..byte.min(text.len())].matches('\n').count() + 1
}

/// The `[table]` in effect at `line` (1-based), if any.
fn table_at(text: &str, line: usize) -> Option<String> {
    text.lines()
        .take(line)
        .filter_map(|l| l.trim().strip_prefix('['))
        // `[limits] # comment`: the name ends at the first `]`.
        .map(|h| h.split(']').next().unwrap_or_default().trim().to_string())
        .last()
        .filter(|_| {
            !text
                .lines()
                .nth(line - 1)
                .is_some_and(|l| l.trim().starts_with('['))
        })
}

/// The line where `key` is set inside `[table]` (`""` for the top level),
/// from the spans of the parsed document: header comments, inline tables
/// (`limits = { .. }`) and dotted keys (`limits.max_connections = 0`) all
/// name the line that holds the key.
fn find_key_line(text: &str, table: &str, key: &str) -> Option<usize> {
    let doc = toml::de::DeTable::parse(text).ok()?;
    let mut t = doc.get_ref();
    if !table.is_empty() {
        t = t
            .iter()
            .find(|(k, _)| k.get_ref().as_ref() == table)?
            .1
            .get_ref()
            .as_table()?;
    }
    let (k, _) = t.iter().find(|(k, _)| k.get_ref().as_ref() == key)?;
    Some(line_number(text, k.span().start))
}

/// A key whose value a validation error depends on besides the key it names:
/// when the named key was left at its default, the error points at this one
/// (`idle_timeout_ms = 1500` makes the default `keepalive_ms` too high).
fn related_key(table: &str, key: &str) -> Option<&'static str> {
    match (table, key) {
        ("transport" | "mesh", "keepalive_ms") => Some("idle_timeout_ms"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("node.toml"))
    }

    #[test]
    fn empty_file_gives_documented_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.listen.to_string(), "[::]:12000");
        assert_eq!(c.health.listen.to_string(), "127.0.0.1:12600");
        assert_eq!(
            c.key_path(),
            PathBuf::from("/var/lib/x0x-bootstrap/node.key")
        );
    }

    #[test]
    fn reads_the_documented_keys() {
        let c = parse(
            r#"
listen = "[::]:12000"
peers = ["198.51.100.7:12000", "[2001:db8::1]:12000", "node.example.org:12000"]
state_dir = "/tmp/x"
[roles]
coordinator = true
reflector = false
relay = true
[health]
listen = "127.0.0.1:12600"
[log]
level = "debug"
format = "json"
"#,
        )
        .unwrap();
        assert_eq!(c.peers.len(), 3);
        assert!(!c.roles.reflector);
        assert_eq!(c.log.format, LogFormat::Json);
    }

    #[test]
    fn unknown_key_names_key_file_and_line() {
        let err = parse("listen = \"[::]:12000\"\n[roles]\nrelays = true\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("node.toml:3"), "{err}");
        assert!(err.contains("[roles]") && err.contains("relays"), "{err}");
    }

    #[test]
    fn unknown_table_is_an_error() {
        let err = parse("[node]\nlisten = \"[::]:1\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("node.toml:1") && err.contains("node"), "{err}");
    }

    #[test]
    fn bad_address_names_line() {
        let err = parse("\nlisten = \"not-an-address\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("node.toml:2"), "{err}");
        assert!(err.contains("listen"), "{err}");
        let err = parse("peers = [\"1.2.3.4\"]\n").unwrap_err().to_string();
        assert!(
            err.contains("node.toml:1") && err.contains("1.2.3.4"),
            "{err}"
        );
    }

    #[test]
    fn non_loopback_health_requires_allow_remote() {
        let err = parse("[health]\nlisten = \"0.0.0.0:12600\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("node.toml:2") && err.contains("health.listen"),
            "{err}"
        );
        let ok = parse("[health]\nlisten = \"0.0.0.0:12600\"\nallow_remote = true\n").unwrap();
        assert!(ok.health.allow_remote);
    }

    #[test]
    fn idle_timeouts_are_bounded() {
        let err = parse("[mesh]\nidle_timeout_ms = 90000\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("mesh.idle_timeout_ms") && err.contains(":2"),
            "{err}"
        );
        let err = parse("[transport]\nidle_timeout_ms = 300000\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("transport.idle_timeout_ms") && err.contains(":2"),
            "{err}"
        );
    }

    #[test]
    fn duplicate_peer_and_bad_log_level_are_rejected() {
        assert!(parse("peers = [\"127.0.0.1:1\", \"127.0.0.1:1\"]").is_err());
        let err = parse("[log]\nlevel = \"loud=[\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("log.level"), "{err}");
        let err = parse("[log]\nformat = \"xml\"\n").unwrap_err().to_string();
        assert!(err.contains(":2") && err.contains("xml"), "{err}");
    }

    /// Found by the `config` fuzz target: tracing-subscriber panicked on a
    /// directive with a leading space followed by a non-ASCII character.
    /// Without `check_log_filter` this test panics inside `EnvFilter`.
    #[test]
    fn a_log_filter_with_whitespace_around_a_directive_is_a_clear_error() {
        for (level, directive) in [
            ("info, é=debug", "2 (\" é=debug\")"),
            ("info, x0x=debug", "2 (\" x0x=debug\")"),
            ("x0x=debug ,info", "1 (\"x0x=debug \")"),
        ] {
            let text = format!("# node\n[log]\nlevel = {level:?}\n");
            let err = std::panic::catch_unwind(|| parse(&text))
                .unwrap_or_else(|_| panic!("Config::parse panicked on log.level = {level:?}"))
                .unwrap_err();
            let ConfigError::Invalid { line, .. } = &err else {
                panic!("{err:?}")
            };
            assert_eq!(*line, Some(3), "{err}");
            let shown = err.to_string();
            assert!(
                shown.starts_with("node.toml:3: key `log.level`:"),
                "{shown}"
            );
            assert!(shown.contains(&format!("directive {directive}")), "{shown}");
            assert!(shown.contains("whitespace"), "{shown}");
        }
        // The same directives without the space are accepted.
        assert_eq!(
            parse("[log]\nlevel = \"info,é=debug\"\n")
                .unwrap()
                .log
                .level,
            "info,é=debug"
        );
        parse("[log]\nlevel = \"info,x0x=debug\"\n").unwrap();
    }

    #[test]
    fn validation_errors_name_the_line_that_set_the_key() {
        for (text, want) in [
            ("[limits] # connection limits\nmax_connections = 0\n", 2),
            ("limits = { accept_per_sec = 0 }\n", 1),
            ("\nlimits.relay_circuits = 0\n", 2),
            // keepalive_ms is left at its default; the line that made it
            // invalid is the idle timeout's.
            ("[transport]\nidle_timeout_ms = 1500\n", 2),
        ] {
            match parse(text) {
                Err(ConfigError::Invalid { line, .. }) => assert_eq!(line, Some(want), "{text:?}"),
                other => panic!("{text:?}: {other:?}"),
            }
        }
        // A TOML type error under a commented header names the table plainly.
        let err = parse("[limits] # connection limits\nmax_connections = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("node.toml:2: in [limits]: "), "{err}");
    }

    #[test]
    fn peers_may_pin_an_identity() {
        let id = "19bf44096984cdfe8541bac167dc3b96c85086aa30b6b6cb0c5c38ad703166e1";
        let c = parse(&format!(
            "peers = [\"{id}@127.0.0.1:7\", \"127.0.0.1:8\"]\n"
        ))
        .unwrap();
        assert_eq!(c.peers[0].id.unwrap().to_string(), id);
        assert_eq!(c.peers[1].id, None);
        let err = parse("peers = [\"abc@127.0.0.1:7\"]\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(":1") && err.contains("invalid peer id"),
            "{err}"
        );
        assert_eq!(parse(&c.to_toml()).unwrap(), c);
    }

    #[test]
    fn effective_config_round_trips() {
        let c = parse("peers = [\"127.0.0.1:7\"]\n[roles]\nrelay = false\n").unwrap();
        assert_eq!(parse(&c.to_toml()).unwrap(), c);
    }
}
