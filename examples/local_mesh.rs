//! The six bootstrap nodes of `hosts/inventory.toml`, on this machine.
//!
//! Each inventory host is remapped to a loopback address (127.77.0.N, same
//! ports as production) and run as a real `x0x-bootstrap` process with the
//! configuration it would have in the fleet (its peers are the other five).
//! The example prints the mesh forming, then two agents join through
//! different nodes, find each other through the shared directory and
//! connect by peer id. Nothing leaves 127.0.0.0/8.
//!
//! Run with `scripts/demo.sh` (builds first; uses a network namespace when it can).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::Deserialize;
use x0x::PathKind;
use x0x::{Agent, NetworkConfig};

#[derive(Deserialize)]
struct Inventory {
    node: Vec<Host>,
}

#[derive(Deserialize)]
struct Host {
    name: String,
    location: String,
    quic_port: u16,
}

struct Node {
    host: Host,
    quic: SocketAddr,
    health: SocketAddr,
    child: Child,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn peers_of(health: SocketAddr) -> Option<u64> {
    let mut s = TcpStream::connect_timeout(&health, Duration::from_millis(300)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    write!(s, "GET /health HTTP/1.0\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    let json: serde_json::Value = serde_json::from_str(body.split("\r\n\r\n").nth(1)?).ok()?;
    json["peers"].as_u64()
}

fn bootstrap_binary() -> PathBuf {
    // target/<profile>/examples/local_mesh -> target/<profile>/x0x-bootstrap
    let exe = std::env::current_exe().expect("own path");
    exe.parent()
        .and_then(|p| p.parent())
        .expect("target dir")
        .join("x0x-bootstrap")
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let inventory: Inventory = toml::from_str(include_str!("../hosts/inventory.toml"))?;
    let binary = bootstrap_binary();
    if !binary.exists() {
        return Err(format!(
            "{} not found: run `cargo build --release` first (scripts/demo.sh does)",
            binary.display()
        )
        .into());
    }
    let dir = tempfile::tempdir()?;
    let addr = |i: usize, port: u16| -> SocketAddr {
        format!("127.77.0.{}:{port}", i + 1).parse().unwrap()
    };

    println!("x0x: the six bootstrap nodes of hosts/inventory.toml, remapped to loopback\n");
    let count = inventory.node.len();
    let mut nodes = Vec::new();
    for (i, host) in inventory.node.into_iter().enumerate() {
        let quic = addr(i, host.quic_port);
        let health = addr(i, 12600);
        let tcp = addr(i, 443);
        let peers: Vec<String> = (0..count)
            .filter(|j| *j != i)
            .map(|j| format!("\"{}\"", addr(j, host.quic_port)))
            .collect();
        let config = dir.path().join(format!("{}.toml", host.name));
        std::fs::write(
            &config,
            format!(
                "listen = \"{quic}\"\npeers = [{}]\nstate_dir = \"{}\"\n[health]\nlisten = \"{health}\"\n[tcp]\nlisten = \"{tcp}\"\n[log]\nlevel = \"warn\"\n",
                peers.join(", "),
                dir.path().join(&host.name).display()
            ),
        )?;
        println!(
            "  {:<9} {:<10} QUIC {quic}  health http://{health}/health",
            host.name, host.location
        );
        nodes.push((host, quic, health, config));
    }

    let started = Instant::now();
    let nodes: Vec<Node> = nodes
        .into_iter()
        .map(|(host, quic, health, config)| {
            let child = Command::new(&binary)
                .arg("--config")
                .arg(&config)
                .stdout(Stdio::null())
                .spawn()
                .expect("start x0x-bootstrap");
            Node {
                host,
                quic,
                health,
                child,
            }
        })
        .collect();

    println!("\nstarted all six at once; peers connected per node (want 5 each):");
    let formed = loop {
        let counts: Vec<Option<u64>> = nodes.iter().map(|n| peers_of(n.health)).collect();
        let line: Vec<String> = nodes
            .iter()
            .zip(&counts)
            .map(|(n, c)| {
                format!(
                    "{} {}/5",
                    n.host.name,
                    c.map_or("-".into(), |c| c.to_string())
                )
            })
            .collect();
        println!(
            "  t={:>6.2}s  {}",
            started.elapsed().as_secs_f64(),
            line.join("  ")
        );
        if counts.iter().all(|c| *c == Some(5)) {
            break started.elapsed();
        }
        if started.elapsed() > Duration::from_secs(30) {
            return Err("the mesh did not form within 30 s".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!(
        "\nfull mesh: 6 nodes x 5 peers after {:.0} ms",
        formed.as_secs_f64() * 1e3
    );

    // Two agents, each joining through a different node.
    let agent = |node: &Node, host: u8| {
        let mut cfg = NetworkConfig::with_bootstrap_peers(vec![node.quic.into()]);
        cfg.bind = format!("127.77.1.{host}:0").parse().unwrap();
        cfg.port_mapping = false;
        Agent::builder().network(cfg).build()
    };
    let alice = agent(&nodes[2], 1)?;
    let bob = agent(&nodes[5], 2)?;
    alice.join_network().await?;
    bob.join_network().await?;
    println!(
        "\nagent alice joined via {} ({})",
        nodes[2].host.name, nodes[2].host.location
    );
    println!(
        "agent bob   joined via {} ({})",
        nodes[5].host.name, nodes[5].host.location
    );
    let mut record = None;
    for _ in 0..50 {
        record = alice.lookup(bob.peer_id()).await?;
        if record.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let record = record.ok_or("bob never appeared in the directory")?;
    println!(
        "alice looked bob up through {}: {:?}",
        nodes[2].host.name, record.addrs
    );
    let accept = tokio::spawn(async move {
        let pc = bob.accept().await;
        (bob, pc)
    });
    let t = Instant::now();
    let pc = alice.connect(record.peer).await?;
    println!(
        "alice connected to bob by peer id: {} in {:.1} ms, rtt {:.2} ms",
        match pc.path() {
            PathKind::Direct => "direct",
            PathKind::Relayed => "relayed",
        },
        t.elapsed().as_secs_f64() * 1e3,
        pc.rtt().as_secs_f64() * 1e3
    );
    drop(accept.await?);

    println!("\nstopping the nodes (SIGTERM: each closes its connections and exits 0)");
    for n in &nodes {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(n.child.id().to_string())
            .status();
    }
    for mut n in nodes {
        let status = n.child.wait()?;
        println!("  {:<9} exited: {status}", n.host.name);
    }
    Ok(())
}
