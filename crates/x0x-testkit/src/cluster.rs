//! Real `x0x-bootstrap` processes on loopback.
//!
//! Every cluster lives on its own `127.<net>.0.0/24` block (one test, one
//! `net`), each node on `127.<net>.0.<i+1>` with the production ports
//! (QUIC 12000, health 12600), so tests run in parallel without port
//! races. Nothing here uses an address outside 127.0.0.0/8.
//!
//! The suite is meant to run inside an isolated network namespace (see
//! `scripts/test.sh`); [`require_isolated_network`] refuses to run a
//! networked test on a machine with other interfaces unless
//! `X0X_ALLOW_HOST_NETWORK=1`.
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The path of a workspace binary (`x0x-bootstrap`, `x0x`) built into the
/// same target directory as the running test. `cargo nextest run
/// --workspace` and `cargo test --workspace` build every binary first; a
/// test run of one package alone may not, and then this says what to do.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary has a path");
    // A program run from a directory of copied binaries (the benchmark,
    // scripts/bench-quick.sh) finds its siblings there.
    if let Some(beside) = exe.parent().map(|d| d.join(name))
        && beside.is_file()
    {
        return beside;
    }
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binaries live in target/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is not built; run `cargo build --workspace` (or test with --workspace) first",
        path.display()
    );
    path
}

/// The node binary.
pub fn bootstrap_bin() -> PathBuf {
    bin("x0x-bootstrap")
}

/// Panic unless the only network interface is loopback (we are in a
/// namespace of our own), or the developer explicitly allowed otherwise.
pub fn require_isolated_network() {
    if std::env::var_os("X0X_ALLOW_HOST_NETWORK").is_some() {
        return;
    }
    // /proc/net/dev lists the interfaces of *this* network namespace
    // (/sys/class/net may still show the host's).
    let devs = std::fs::read_to_string("/proc/net/dev").unwrap_or_default();
    let others: Vec<&str> = devs
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(str::trim)
        .filter(|n| *n != "lo")
        .collect();
    assert!(
        others.is_empty(),
        "networked tests must run in an isolated network namespace (found interfaces {others:?}); \
         use scripts/test.sh, or set X0X_ALLOW_HOST_NETWORK=1 to run on this host's loopback"
    );
}

/// Poll `f` every 50 ms until it is true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A minimal HTTP/1.0 GET; returns the body of a 200 response.
pub fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    http_exchange(
        TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?,
        addr,
        path,
    )
}

/// Send `GET path` on a connected stream; the body of a 200 response.
pub fn http_exchange(mut s: TcpStream, addr: SocketAddr, path: &str) -> Option<String> {
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    let (head, body) = resp.split_once("\r\n\r\n")?;
    (head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200")).then(|| body.to_string())
}

pub fn ip(net: u8, host: u8) -> String {
    format!("127.{net}.0.{host}")
}

/// The value of metric `name` (with labels) in Prometheus text.
pub fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// One node process and its files.
pub struct NodeProc {
    pub index: usize,
    pub quic: SocketAddr,
    pub health_addr: SocketAddr,
    pub config: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
}

impl NodeProc {
    pub fn start(&mut self) {
        self.start_with_env(&[]);
    }

    pub fn start_with_env(&mut self, env: &[(&str, &std::ffi::OsStr)]) {
        assert!(self.child.is_none(), "node {} already running", self.index);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(bootstrap_bin())
            .arg("--config")
            .arg(&self.config)
            .env("RUST_LOG", "x0x=debug,info")
            .env_remove("NOTIFY_SOCKET")
            .envs(env.iter().map(|(k, v)| (*k, *v)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn x0x-bootstrap");
        self.child = Some(child);
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// SIGKILL: no goodbye to anyone.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().ok();
            c.wait().ok();
        }
    }

    /// Wait for the process to exit (after a signal), up to `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let child = self.child.as_mut()?;
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn health(&self) -> Option<serde_json::Value> {
        serde_json::from_str(&http_get(self.health_addr, "/health")?).ok()
    }

    pub fn peers(&self) -> Option<u64> {
        self.health()?.get("peers")?.as_u64()
    }

    pub fn peer_id(&self) -> Option<String> {
        Some(self.health()?.get("peer_id")?.as_str()?.to_string())
    }

    pub fn metrics(&self) -> String {
        http_get(self.health_addr, "/metrics").unwrap_or_default()
    }

    /// The value of one metric line (`name` including labels). Panics if
    /// the node does not export it: a missing metric is a failure, never 0.
    pub fn metric(&self, name: &str) -> f64 {
        let text = self.metrics();
        metric_value(&text, name).unwrap_or_else(|| {
            panic!(
                "node {} exports no metric {name:?}; it exports:\n{}",
                self.index,
                text.lines()
                    .filter(|l| !l.starts_with('#'))
                    .collect::<Vec<_>>()
                    .join("\n")
            )
        })
    }

    /// [`Self::metric`] for polling: `None` while the node does not
    /// answer; still a panic if it answers without the metric.
    pub fn poll_metric(&self, name: &str) -> Option<f64> {
        let text = http_get(self.health_addr, "/metrics")?;
        Some(
            metric_value(&text, name)
                .unwrap_or_else(|| panic!("node {} exports no metric {name:?}", self.index)),
        )
    }
}

/// A set of nodes on `127.<net>.0.0/24`.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub nodes: Vec<NodeProc>,
}

impl Cluster {
    /// `n` nodes configured as a full mesh; `extra` is appended to every
    /// node's TOML (it may add tables, e.g. `[roles]`).
    pub fn full_mesh(net: u8, n: usize, extra: &str) -> Self {
        require_isolated_network();
        let dir = tempfile::tempdir().unwrap();
        let nodes = (0..n)
            .map(|i| {
                let peers: Vec<String> = (0..n)
                    .filter(|j| *j != i)
                    .map(|j| format!("\"{}:12000\"", ip(net, j as u8 + 1)))
                    .collect();
                let toml = format!(
                    "listen = \"{ip}:12000\"\npeers = [{peers}]\nstate_dir = \"{state}\"\n\n[health]\nlisten = \"{ip}:12600\"\n\n[tcp]\nlisten = \"{ip}:443\"\n\n{extra}\n",
                    ip = ip(net, i as u8 + 1),
                    peers = peers.join(", "),
                    state = dir.path().join(format!("state{i}")).display(),
                );
                Self::node(dir.path(), i, net, &toml)
            })
            .collect();
        Self { dir, nodes }
    }

    fn node(dir: &Path, i: usize, net: u8, toml: &str) -> NodeProc {
        let config = dir.join(format!("node{i}.toml"));
        std::fs::write(&config, toml).unwrap();
        NodeProc {
            index: i,
            quic: format!("{}:12000", ip(net, i as u8 + 1)).parse().unwrap(),
            health_addr: format!("{}:12600", ip(net, i as u8 + 1)).parse().unwrap(),
            config,
            log: dir.join(format!("node{i}.log")),
            child: None,
        }
    }

    pub fn start_all(&mut self) {
        for n in &mut self.nodes {
            n.start();
        }
    }

    /// Every running node in `which` reports `peers == want`.
    pub fn all_report(&self, which: &[usize], want: u64) -> bool {
        which.iter().all(|&i| self.nodes[i].peers() == Some(want))
    }

    pub fn wait_all_report(&self, which: &[usize], want: u64, timeout: Duration) -> bool {
        wait_until(timeout, || self.all_report(which, want))
    }

    pub fn peer_counts(&self) -> Vec<Option<u64>> {
        self.nodes.iter().map(|n| n.peers()).collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            n.kill9();
        }
        if std::thread::panicking() {
            for n in &self.nodes {
                let log = std::fs::read_to_string(&n.log).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                eprintln!("---- node {} log (last 40 lines) ----", n.index);
                for l in tail.iter().rev() {
                    eprintln!("{l}");
                }
            }
        }
    }
}

/// An agent network configuration that joins only the given local nodes,
/// binding the agent to `127.<net>.1.<host>`.
pub fn agent_network(net: u8, host: u8, nodes: &[&NodeProc]) -> x0x::NetworkConfig {
    let mut cfg =
        x0x::NetworkConfig::with_bootstrap_peers(nodes.iter().map(|n| n.quic.into()).collect());
    // Tests wait for every node they list.
    cfg.join_grace = Duration::from_millis(200);
    cfg.bind = format!("127.{net}.1.{host}:0").parse().unwrap();
    cfg.join_timeout = Duration::from_secs(10);
    // Never ask a router of the machine running the tests for a port.
    cfg.port_mapping = false;
    cfg
}

/// Build an agent and join the given nodes.
pub async fn joined_agent(net: u8, host: u8, nodes: &[&NodeProc]) -> (x0x::Agent, x0x::JoinReport) {
    let agent = x0x::Agent::builder()
        .network(agent_network(net, host, nodes))
        .build()
        .expect("agent binds");
    let report = agent.join_network().await.expect("agent joins");
    (agent, report)
}

/// Run blocking harness calls (HTTP polls) off the async runtime.
pub async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

/// One node (no mesh peers) on `127.<net>.0.1`, started and answering health.
pub fn single_node(net: u8, extra: &str) -> std::sync::Arc<Cluster> {
    let mut c = Cluster::full_mesh(net, 1, extra);
    c.start_all();
    assert!(wait_until(Duration::from_secs(10), || c.nodes[0]
        .health()
        .is_some()));
    std::sync::Arc::new(c)
}
