//! `--only paths`: the path layer's two timings, in a network-namespace lab
//! (`x0x_testkit::netns`, the lab of `tests/netns/paths.rs` and
//! `tests/netns/nat.rs`) with two meshed nodes and agents behind home NATs.
//!
//! - `time_to_direct_ms`: two agents behind port-preserving NATs, direct
//!   UDP between the two homes dropped by the "internet" (iptables); the
//!   connection starts relayed; the block is lifted; the time from lifting
//!   it until `x0x connect` prints its `path: direct` event. Median over
//!   the repetitions, a new connection (and identity) each.
//! - `relayed_connect_ms`: two agents behind random-port NATs (no direct
//!   path possible), each home 10 ms each way from the internet (`tc
//!   netem`-like delays by `x0x-netem`), so a relayed round trip (agent,
//!   node, agent and back) is 40 ms; `connect_ms` of `x0x connect`'s
//!   summary (the `connect_with` call, after the join). Median, with the
//!   connection's own RTT next to it.
//!
//! Needs root and `x0x` next to the node binary, like `--only wan`.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use x0x_testkit::netns::{Host, Lab, Nat, NetemRule, http_get};

use crate::Res;
use crate::wan::Rows;

const PORT: u16 = 40000;
/// One-way delay between each random-port home and the internet, ms.
const HOME_DELAY_MS: f64 = 10.0;

/// Counts of one mode.
#[derive(Debug, Clone)]
pub struct PathsPlan {
    pub upgrade_reps: usize,
    pub relayed_reps: usize,
}

impl PathsPlan {
    pub fn quick() -> Self {
        Self {
            upgrade_reps: 2,
            relayed_reps: 3,
        }
    }

    pub fn full() -> Self {
        Self {
            upgrade_reps: 7,
            relayed_reps: 9,
        }
    }
}

fn json_lines(lines: &[String]) -> impl Iterator<Item = Value> + '_ {
    lines
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
}

fn median(v: &mut [f64]) -> f64 {
    crate::median(v)
}

fn range(v: &[f64]) -> String {
    crate::range_note(v)
}

struct Setup {
    lab: Lab,
    cli: String,
    /// `--bootstrap ADDR` for both nodes.
    bootstrap: Vec<String>,
}

impl Setup {
    fn key(&self, name: &str) -> String {
        self.lab.path(&format!("{name}.key")).display().to_string()
    }

    /// `x0x listen` on `host`, until its `ready` line; its process index.
    fn listen(&mut self, host: &Host, name: &str) -> Res<(usize, String)> {
        let mut args = vec!["listen".to_string()];
        args.extend(self.bootstrap.iter().cloned());
        args.extend([
            "--key".into(),
            self.key(name),
            "--bind".into(),
            format!("{}:{PORT}", host.addr),
            "--json".into(),
        ]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let cli = self.cli.clone();
        let p = self
            .lab
            .spawn(&host.ns, name, &cli, &args, &[("RUST_LOG", "info")]);
        let ready = self.lab.procs[p]
            .wait_line(Duration::from_secs(30), |l| {
                serde_json::from_str::<Value>(l).is_ok_and(|v| v["event"] == "ready")
            })
            .ok_or_else(|| {
                format!(
                    "x0x listen in {} printed no ready line: {}",
                    host.ns,
                    self.lab.procs[p].log_tail(20)
                )
            })?;
        let v: Value = serde_json::from_str(&ready)?;
        let id = v["peer_id"]
            .as_str()
            .ok_or("listen: ready line without peer_id")?
            .to_string();
        Ok((p, id))
    }

    fn connect_args(&self, peer: &str, host: &Host, key: &str, port: u16) -> Vec<String> {
        let mut args = vec!["connect".to_string(), peer.to_string()];
        args.extend(self.bootstrap.iter().cloned());
        args.extend([
            "--key".into(),
            self.key(key),
            "--bind".into(),
            format!("{}:{port}", host.addr),
            "--bytes".into(),
            "1024".into(),
            "--json".into(),
            "--settle-ms".into(),
            "0".into(),
        ]);
        args
    }
}

/// Run the scenario (blocking: call it off the async runtime's workers).
pub fn run(plan: &PathsPlan, node_bin: &Path) -> Res<Rows> {
    let dir = node_bin.parent().ok_or("node binary has no directory")?;
    let cli = dir.join("x0x");
    if !cli.is_file() {
        return Err(format!(
            "x0x not found next to the node binary ({}): build with cargo build --release --bins",
            cli.display()
        )
        .into());
    }
    let lab = Lab::new("x0x-bench paths")
        .ok_or("network namespaces are not available (X0X_SKIP_NETNS=1)")?;
    let mut s = Setup {
        lab,
        cli: cli.display().to_string(),
        bootstrap: Vec::new(),
    };

    // Two nodes on public hosts of the lab, meshed.
    let hosts: Vec<Host> = (0..2)
        .map(|i| s.lab.public_host(&format!("n{i}")))
        .collect();
    for (i, h) in hosts.iter().enumerate() {
        let other = &hosts[1 - i];
        let config = format!(
            "listen = \"[::]:12000\"\npeers = [\"{}:12000\"]\nstate_dir = \"{}\"\n\n[health]\nlisten = \"127.0.0.1:12600\"\n",
            other.addr,
            s.lab.path(&format!("state-{i}")).display()
        );
        let path = s.lab.path(&format!("n{i}.toml"));
        std::fs::write(&path, config)?;
        let path = path.display().to_string();
        s.lab.spawn(
            &h.ns,
            &format!("n{i}"),
            &node_bin.display().to_string(),
            &["--config", &path],
            &[("RUST_LOG", "info")],
        );
        s.bootstrap
            .extend(["--bootstrap".to_string(), format!("{}:12000", h.addr)]);
    }
    let health = std::net::SocketAddr::from(([127, 0, 0, 1], 12600));
    let meshed = x0x_testkit::netns::wait_until(Duration::from_secs(30), || {
        hosts.iter().all(|h| {
            http_get(&h.ns, health, "/health")
                .and_then(|t| serde_json::from_str::<Value>(&t).ok())
                .and_then(|v| v["peers"].as_u64())
                == Some(1)
        })
    });
    if !meshed {
        return Err("paths: the two lab nodes did not mesh within 30 s".into());
    }

    let mut rows = Rows::new();
    let (mut to_direct, mut blocked_connect) = upgrade(&mut s, plan)?;
    let (mut relayed, mut relayed_rtt, failed) = relayed_connects(&mut s, plan)?;
    rows.push((
        "time_to_direct_ms".into(),
        median(&mut to_direct),
        "ms",
        format!(
            "port-preserving NATs, direct UDP blocked at first: block lifted until the connection's `path: direct` event; median of {} ({})",
            to_direct.len(),
            range(&to_direct)
        ),
    ));
    rows.push((
        "relayed_connect_ms".into(),
        median(&mut relayed),
        "ms",
        format!(
            "random-port NATs on both sides (relayed), {HOME_DELAY_MS} ms each way per home: `x0x connect` connect_ms; median of {} ({}); {failed} runs failed",
            relayed.len(),
            range(&relayed)
        ),
    ));
    rows.push((
        "relayed_connect_rtt_ms".into(),
        median(&mut relayed_rtt),
        "ms",
        format!(
            "the same relayed connections' own RTT (configured: {} ms through the relay)",
            4.0 * HOME_DELAY_MS
        ),
    ));
    rows.push((
        "relayed_connect_blocked_ms".into(),
        median(&mut blocked_connect),
        "ms",
        format!(
            "port-preserving NATs with direct UDP dropped: connect until the first (relayed) path event; median of {} ({})",
            blocked_connect.len(),
            range(&blocked_connect)
        ),
    ));
    Ok(rows)
}

/// The upgrade repetitions: (ms from lifting the block to direct, ms from
/// connect start to the first relayed path).
fn upgrade(s: &mut Setup, plan: &PathsPlan) -> Res<(Vec<f64>, Vec<f64>)> {
    let mut ra = s.lab.nat_router("ra", Nat::PortPreserving);
    let a = s.lab.behind(&mut ra, "a");
    let mut rb = s.lab.nat_router("rb", Nat::PortPreserving);
    let b = s.lab.behind(&mut rb, "b");
    let (pa, pb) = (ra.public, rb.public);
    let (listener, peer) = s.listen(&a, "a")?;
    let (mut to_direct, mut first) = (Vec::new(), Vec::new());
    for rep in 0..plan.upgrade_reps {
        s.lab.block(pa, pb);
        s.lab.block(pb, pa);
        let mut args = s.connect_args(&peer, &b, &format!("b{rep}"), PORT + 1 + rep as u16);
        args.extend(["--pings", "600", "--ping-interval-ms", "100"].map(String::from));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let cli = s.cli.clone();
        let p = s.lab.spawn(
            &b.ns,
            &format!("b{rep}"),
            &cli,
            &args,
            &[("RUST_LOG", "info")],
        );
        let path_events = |lab: &Lab| -> Vec<Value> {
            json_lines(&lab.procs[p].lines())
                .filter(|v| v["event"] == "path")
                .collect()
        };
        let started = Instant::now();
        let mut events = Vec::new();
        while events.is_empty() && started.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(10));
            events = path_events(&s.lab);
        }
        let Some(e) = events.first() else {
            return Err(format!(
                "paths: no path event within 30 s: {}",
                s.lab.procs[p].log_tail(20)
            )
            .into());
        };
        if e["path"] != "relayed" {
            return Err(
                format!("paths: direct UDP was blocked, yet the first path was {e}").into(),
            );
        }
        first.push(e["t_ms"].as_f64().unwrap_or(f64::NAN));
        // Relayed for a while first, as in tests/netns/paths.rs.
        std::thread::sleep(Duration::from_secs(2));
        s.lab.unblock(pa, pb);
        s.lab.unblock(pb, pa);
        let lifted = Instant::now();
        let mut seen = None;
        while seen.is_none() && lifted.elapsed() < Duration::from_secs(30) {
            if path_events(&s.lab).iter().any(|e| e["path"] == "direct") {
                seen = Some(lifted.elapsed());
            } else {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let seen = seen.ok_or_else(|| {
            format!(
                "paths: still relayed 30 s after the block was lifted: {:?}",
                path_events(&s.lab)
            )
        })?;
        eprintln!(
            "paths: rep {rep}: relayed after {} ms, direct {} ms after the block was lifted",
            e["t_ms"],
            seen.as_millis()
        );
        to_direct.push(seen.as_secs_f64() * 1e3);
        s.lab.procs[p].kill();
    }
    s.lab.procs[listener].kill();
    Ok((to_direct, first))
}

/// `connect_ms` and RTT of relayed connections between random-port NATs.
fn relayed_connects(s: &mut Setup, plan: &PathsPlan) -> Res<(Vec<f64>, Vec<f64>, usize)> {
    let mut rc = s.lab.nat_router("rc", Nat::RandomPort);
    let c = s.lab.behind(&mut rc, "c");
    let mut rd = s.lab.nat_router("rd", Nat::RandomPort);
    let d = s.lab.behind(&mut rd, "d");
    let mut rules = Vec::new();
    for public in [rc.public, rd.public] {
        let me = format!("{public}/32");
        for (src, dst) in [
            (me.clone(), "0.0.0.0/0".to_string()),
            ("0.0.0.0/0".into(), me),
        ] {
            rules.push(NetemRule {
                src,
                dst,
                delay_ms: HOME_DELAY_MS,
                loss_pct: 0.0,
            });
        }
    }
    s.lab.netem(&rules);
    let (listener, peer) = s.listen(&c, "c")?;
    let (mut out, mut rtts, mut failed) = (Vec::new(), Vec::new(), 0);
    for rep in 0..plan.relayed_reps {
        let args = s.connect_args(&peer, &d, &format!("d{rep}"), PORT + 1 + rep as u16);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let ran = s.lab.run(&d.ns, &s.cli, &args, Duration::from_secs(60));
        let summary = ran
            .stdout
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v.get("connect_ms").is_some());
        let Some(v) = summary.filter(|_| ran.code == Some(0)) else {
            // Counted and shown, not hidden: the figure's note says how many.
            eprintln!("paths: rep {rep}: x0x connect failed: {ran}");
            failed += 1;
            continue;
        };
        if v["path"] != "relayed" {
            return Err(format!("paths: expected a relayed connection: {ran}").into());
        }
        let ms = v["connect_ms"].as_f64().ok_or("paths: no connect_ms")?;
        let rtt = v["rtt_ms"].as_f64().unwrap_or(f64::NAN);
        eprintln!("paths: rep {rep}: relayed connect {ms:.1} ms, rtt {rtt:.1} ms");
        out.push(ms);
        rtts.push(rtt);
    }
    s.lab.procs[listener].kill();
    if out.is_empty() {
        return Err("paths: no relayed connect succeeded".into());
    }
    Ok((out, rtts, failed))
}
