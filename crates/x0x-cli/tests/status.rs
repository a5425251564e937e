//! `x0x status` against real six-node meshes on loopback (`127.121`–`127.125`).
//! Every run passes its own nodes (`--bootstrap` or a test inventory):
//! nothing here dials the production addresses.

use x0x_testkit as common;

use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::Cluster;
use serde_json::Value;

const X0X: &str = env!("CARGO_BIN_EXE_x0x");
const ALL: [usize; 6] = [0, 1, 2, 3, 4, 5];
/// The keys of each node in `--json`, a stable contract (SKILL.md).
const NODE_KEYS: [&str; 11] = [
    "addr",
    "peer_id",
    "reachable",
    "rtt_ms",
    "version",
    "uptime_s",
    "peers",
    "expected_peers",
    "status",
    "mesh",
    "agents",
];

fn x0x(args: &[&str]) -> std::process::Output {
    Command::new(X0X).args(args).output().unwrap()
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn json(out: &std::process::Output) -> Value {
    serde_json::from_str(stdout(out).trim()).unwrap_or_else(|e| {
        panic!(
            "not one JSON object ({e}): {}\nstderr: {}",
            stdout(out),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// `--bootstrap` for every node of `c`, then `extra`.
fn status(c: &Cluster, net: u8, extra: &[&str]) -> std::process::Output {
    let addrs: Vec<String> = c.nodes.iter().map(|n| n.quic.to_string()).collect();
    let bind = format!("127.{net}.1.1:0");
    let mut args = vec!["status", "--bind", &bind];
    for a in &addrs {
        args.extend(["--bootstrap", a.as_str()]);
    }
    args.extend_from_slice(extra);
    x0x(&args)
}

/// Run `probe` until `ok` holds for its output (at most 30 s; a mesh
/// that just formed still replaces duplicate connections for a moment),
/// and return the last output: the caller asserts on it.
fn settled(
    mut probe: impl FnMut() -> std::process::Output,
    ok: impl Fn(&std::process::Output) -> bool,
) -> std::process::Output {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = probe();
        if ok(&out) || Instant::now() >= deadline {
            return out;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn six(net: u8) -> Cluster {
    let mut c = Cluster::full_mesh(net, 6, "");
    c.start_all();
    assert!(
        c.wait_all_report(&ALL, 5, Duration::from_secs(60)),
        "the mesh did not form: {:?}",
        c.peer_counts()
    );
    c
}

fn node<'a>(report: &'a Value, addr: &str) -> &'a Value {
    report["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["addr"] == addr)
        .unwrap_or_else(|| panic!("no node {addr} in {report}"))
}

#[test]
fn a_healthy_mesh_exits_0_with_every_documented_key() {
    let c = six(121);
    let out = settled(
        || status(&c, 121, &["--json"]),
        |o| o.status.code() == Some(0),
    );
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    let r = json(&out);
    assert_eq!(r["healthy"], true, "{r}");
    assert_eq!(r["problems"], serde_json::json!([]), "{r}");
    let nodes = r["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 6);
    let ids: HashSet<String> = c.nodes.iter().map(|n| n.peer_id().unwrap()).collect();
    for (n, proc) in nodes.iter().zip(&c.nodes) {
        for key in NODE_KEYS {
            assert!(n.get(key).is_some(), "node without {key:?}: {n}");
        }
        assert!(n.get("name").is_none(), "loopback nodes have no name: {n}");
        assert_eq!(n["addr"], proc.quic.to_string());
        assert_eq!(n["peer_id"], proc.peer_id().unwrap().as_str());
        assert_eq!(n["reachable"], true);
        assert!(n["rtt_ms"].as_f64().unwrap() > 0.0, "{n}");
        assert_eq!(n["version"], env!("CARGO_PKG_VERSION"));
        assert!(n["uptime_s"].is_u64(), "{n}");
        assert_eq!(n["peers"], 5, "{n}");
        assert_eq!(n["expected_peers"], 5, "{n}");
        assert_eq!(n["status"], "healthy");
        assert_eq!(n["agents"], 0, "the probe does not count itself: {n}");
        let mesh = n["mesh"].as_array().unwrap();
        assert_eq!(mesh.len(), 5, "{n}");
        for l in mesh {
            assert!(ids.contains(l["peer_id"].as_str().unwrap()), "{l}");
            assert_ne!(l["peer_id"], n["peer_id"], "a node does not list itself");
            assert_eq!(l["connected"], true, "{l}");
            assert!(l["rtt_ms"].as_f64().unwrap() >= 0.0, "{l}");
        }
    }

    let out = settled(|| status(&c, 121, &[]), |o| o.status.code() == Some(0));
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    let text = stdout(&out);
    assert!(
        text.contains("6 node(s), 6 reachable, healthy") && text.contains("no problems"),
        "{text}"
    );
    // Each node (unnamed: its address is its label) in its row (twice),
    // the matrix header and its matrix row.
    for n in &c.nodes {
        assert_eq!(text.matches(&n.quic.to_string()).count(), 4, "{text}");
    }
    assert!(!text.contains("  DOWN"), "no link is down: {text}");
}

#[test]
fn a_killed_node_is_named_unreachable_and_exit_is_1() {
    let mut c = six(122);
    c.nodes[5].kill9();
    let dead = c.nodes[5].quic.to_string();
    let started = Instant::now();
    let out = status(&c, 122, &["--json", "--timeout-ms", "1000"]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "one dead node costs the timeout, once: {:?}",
        started.elapsed()
    );
    let r = json(&out);
    assert_eq!(r["healthy"], false);
    let n = node(&r, &dead);
    assert_eq!(n["reachable"], false, "{n}");
    assert_eq!(n["status"], "unreachable", "{n}");
    for key in ["rtt_ms", "version", "uptime_s", "peers", "expected_peers"] {
        assert!(n[key].is_null(), "{key} of an unreachable node: {n}");
    }
    assert!(
        n["error"]
            .as_str()
            .unwrap()
            .contains("no answer within 1000 ms"),
        "{n}"
    );
    // Its identity is still known: the others report it.
    assert_eq!(n["peer_id"].as_str().map(str::len), Some(64), "{n}");
    for other in &c.nodes[..5] {
        assert_eq!(node(&r, &other.quic.to_string())["reachable"], true);
    }

    // Once the others noticed (mesh idle timeout), they no longer see it.
    assert!(
        c.wait_all_report(&ALL[..5], 4, Duration::from_secs(15)),
        "{:?}",
        c.peer_counts()
    );
    let line = format!("{dead} ({dead}) is unreachable: no answer within 1000 ms; no node sees it");
    let out = settled(
        || status(&c, 122, &["--timeout-ms", "1000"]),
        |o| stdout(o).contains(&line) && !stdout(o).contains("does not see"),
    );
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    assert!(text.contains(&line), "{text}");
    assert!(text.contains("5 reachable, NOT healthy"), "{text}");
    assert!(
        !text.contains("does not see"),
        "the dead node is named once, not as five missing links: {text}"
    );
}

/// An inventory in hosts/inventory.toml's format naming the cluster's nodes.
fn inventory(c: &Cluster, names: &[&str]) -> std::path::PathBuf {
    let mut toml = String::from("[defaults]\nquic_port = 12000\n");
    for (n, name) in c.nodes.iter().zip(names) {
        toml.push_str(&format!(
            "\n[[node]]\nname = \"{name}\"\nlocation = \"loopback\"\nipv4 = \"{}\"\n",
            n.quic.ip()
        ));
    }
    let path = c.dir.path().join("inventory.toml");
    std::fs::write(&path, toml).unwrap();
    path
}

#[test]
fn a_cut_link_names_the_pair() {
    // saorsa-2 (node 0) is configured without saorsa-3 (node 1): it never
    // dials it and refuses it as a mesh member (NOT_MEMBER), so the link
    // between them stays down while both nodes are up.
    let mut c = Cluster::full_mesh(123, 6, "");
    let cfg = std::fs::read_to_string(&c.nodes[0].config).unwrap();
    let cut = cfg.replace("\"127.123.0.2:12000\", ", "");
    assert_ne!(cfg, cut, "node 0's peers list node 1");
    std::fs::write(&c.nodes[0].config, cut).unwrap();
    c.start_all();
    assert!(
        common::wait_until(Duration::from_secs(60), || c.peer_counts()
            == vec![Some(4), Some(4), Some(5), Some(5), Some(5), Some(5)]),
        "{:?}",
        c.peer_counts()
    );
    let names = [
        "saorsa-2", "saorsa-3", "saorsa-6", "saorsa-7", "saorsa-8", "saorsa-9",
    ];
    let inv = inventory(&c, &names);
    let inv = inv.to_str().unwrap();
    // No --bootstrap: the inventory's nodes are the targets.
    let out = settled(
        || x0x(&["status", "--inventory", inv, "--bind", "127.123.1.1:0"]),
        |o| stdout(o).matches("does not see").count() == 1,
    );
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let text = stdout(&out);
    assert!(text.contains("saorsa-3 does not see saorsa-2"), "{text}");
    assert!(
        text.contains("warning: saorsa-2 does not list saorsa-3 among its peers"),
        "{text}"
    );
    assert!(text.contains("DOWN"), "{text}");
    assert_eq!(
        text.matches("does not see").count(),
        1,
        "only that pair: {text}"
    );

    let out = settled(
        || {
            x0x(&[
                "status",
                "--json",
                "--inventory",
                inv,
                "--bind",
                "127.123.1.1:0",
            ])
        },
        |o| json(o)["problems"].as_array().is_some_and(|p| p.len() == 1),
    );
    assert_eq!(out.status.code(), Some(1));
    let r = json(&out);
    assert_eq!(r["healthy"], false);
    let n2 = node(&r, "127.123.0.1:12000");
    let n3 = node(&r, "127.123.0.2:12000");
    assert_eq!(n2["name"], "saorsa-2");
    assert_eq!(n3["name"], "saorsa-3");
    assert_eq!(
        (&n2["peers"], &n2["expected_peers"]),
        (&4.into(), &4.into())
    );
    assert_eq!(n2["status"], "healthy", "saorsa-2 sees every peer it has");
    assert_eq!(
        (&n3["peers"], &n3["expected_peers"]),
        (&4.into(), &5.into())
    );
    assert_eq!(n3["status"], "degraded");
    let link = n3["mesh"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["peer_id"] == n2["peer_id"])
        .unwrap_or_else(|| panic!("saorsa-3 lists saorsa-2: {n3}"));
    assert_eq!(link["connected"], false, "{link}");
    assert!(link["rtt_ms"].is_null(), "{link}");
    assert_eq!(
        r["problems"],
        serde_json::json!(["saorsa-3 does not see saorsa-2"])
    );
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn prometheus_mode_serves_the_documented_metrics_and_follows_the_fleet() {
    let mut c = six(124);
    let metrics_addr = "127.124.1.1:9712";
    let mut args = vec![
        "status".to_string(),
        "--prometheus".into(),
        metrics_addr.into(),
        "--interval-s".into(),
        "1".into(),
        "--timeout-ms".into(),
        "800".into(),
        "--bind".into(),
        "127.124.1.2:0".into(),
    ];
    for n in &c.nodes {
        args.extend(["--bootstrap".into(), n.quic.to_string()]);
    }
    let prober = KillOnDrop(
        Command::new(X0X)
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let addr = metrics_addr.parse().unwrap();
    let scrape = || common::http_get(addr, "/metrics");
    let mut text = String::new();
    assert!(
        common::wait_until(Duration::from_secs(20), || {
            text = scrape().unwrap_or_default();
            common::metric_value(&text, "x0x_status_healthy") == Some(1.0)
        }),
        "no healthy scrape: {text}"
    );
    let (a, b) = (c.nodes[0].quic.to_string(), c.nodes[1].quic.to_string());
    for (name, want) in [
        (
            format!("x0x_status_node_up{{node=\"{a}\",addr=\"{a}\"}}"),
            Some(1.0),
        ),
        (format!("x0x_status_node_peers{{node=\"{a}\"}}"), Some(5.0)),
        (
            format!("x0x_status_node_expected_peers{{node=\"{a}\"}}"),
            Some(5.0),
        ),
        (
            format!("x0x_status_mesh_link_up{{from=\"{a}\",to=\"{b}\"}}"),
            Some(1.0),
        ),
        ("x0x_status_healthy".to_string(), Some(1.0)),
    ] {
        assert_eq!(
            common::metric_value(&text, &name),
            want,
            "{name} in:\n{text}"
        );
    }
    for name in [
        format!("x0x_status_node_rtt_seconds{{node=\"{a}\"}}"),
        format!("x0x_status_mesh_link_rtt_seconds{{from=\"{a}\",to=\"{b}\"}}"),
        "x0x_status_probe_duration_seconds".to_string(),
    ] {
        let v = common::metric_value(&text, &name).unwrap_or_else(|| panic!("no {name}:\n{text}"));
        assert!(v > 0.0 && v < 1.0, "{name} = {v}");
    }
    // Every link of the full mesh, once.
    assert_eq!(
        text.matches("x0x_status_mesh_link_up{").count(),
        30,
        "{text}"
    );

    // A later probe sees node 5 go.
    let dead = c.nodes[5].quic.to_string();
    c.nodes[5].kill9();
    let up = format!("x0x_status_node_up{{node=\"{dead}\",addr=\"{dead}\"}}");
    assert!(
        common::wait_until(Duration::from_secs(10), || {
            text = scrape().unwrap_or_default();
            common::metric_value(&text, &up) == Some(0.0)
        }),
        "{up} never 0: {text}"
    );
    assert_eq!(common::metric_value(&text, "x0x_status_healthy"), Some(0.0));
    assert_eq!(
        common::metric_value(
            &text,
            &format!("x0x_status_node_rtt_seconds{{node=\"{dead}\"}}")
        ),
        None,
        "no RTT for an unreachable node"
    );
    // Other paths are answered, and nothing else.
    assert!(common::http_get(addr, "/nothing").is_none());
    drop(prober);

    // A taken address is a clear error.
    let taken = std::net::TcpListener::bind("127.124.1.3:9712").unwrap();
    let out = x0x(&[
        "status",
        "--prometheus",
        "127.124.1.3:9712",
        "--bootstrap",
        &c.nodes[0].quic.to_string(),
    ]);
    drop(taken);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot listen on 127.124.1.3:9712"), "{err}");
}

#[test]
fn no_node_answering_exits_69() {
    common::require_isolated_network();
    let out = x0x(&[
        "status",
        "--bootstrap",
        "127.125.0.1:12000",
        "--bootstrap",
        "127.125.0.2:12000",
        "--bind",
        "127.125.1.1:0",
        "--timeout-ms",
        "500",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(69));
    let r = json(&out);
    assert_eq!(r["healthy"], false);
    assert_eq!(r["nodes"].as_array().unwrap().len(), 2);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no node answered") && err.contains("127.125.0.2:12000"),
        "{err}"
    );
}

#[test]
fn status_help_explains_targets_output_and_exit_codes() {
    let out = x0x(&["status", "--help"]);
    assert!(out.status.success());
    let text = stdout(&out);
    for needle in [
        "--bootstrap",
        "--inventory",
        "--json",
        "--timeout-ms",
        "--prometheus",
        "--interval-s",
        "x0x_status_node_up",
        "69",
    ] {
        assert!(text.contains(needle), "{needle} missing from:\n{text}");
    }
    let out = x0x(&["--help"]);
    assert!(stdout(&out).contains("status"));
}
