//! The `x0x` agent CLI against real nodes on loopback.

use x0x_testkit as common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::Cluster;

const X0X: &str = env!("CARGO_BIN_EXE_x0x");

fn x0x(args: &[&str]) -> std::process::Output {
    Command::new(X0X).args(args).output().unwrap()
}

fn json(out: &std::process::Output) -> serde_json::Value {
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.lines().last().unwrap_or("")).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {text}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// `x0x listen` in the background; returns the child and its peer id.
fn listen(boot: &str, bind: &str) -> (KillOnDrop, String) {
    let mut child = Command::new(X0X)
        .args(["listen", "--json", "--bootstrap", boot, "--bind", bind])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    let ready: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(ready["event"], "ready");
    (
        KillOnDrop(child),
        ready["peer_id"].as_str().unwrap().to_string(),
    )
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn id_is_stable_for_a_key_file() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("agent.key");
    let key = key.to_str().unwrap();
    let first = json(&x0x(&["id", "--key", key, "--json"]));
    let second = x0x(&["id", "--key", key]);
    assert_eq!(
        first["peer_id"].as_str().unwrap(),
        String::from_utf8_lossy(&second.stdout).trim()
    );
}

#[test]
fn connect_reports_direct_and_relayed_paths_with_data_echoed() {
    let mut c = Cluster::full_mesh(81, 1, "");
    c.start_all();
    assert!(common::wait_until(Duration::from_secs(10), || c.nodes[0]
        .health()
        .is_some()));
    let boot = c.nodes[0].quic.to_string();
    let (_listener, peer) = listen(&boot, "127.81.1.1:0");

    let out = x0x(&[
        "connect",
        &peer,
        "--json",
        "--bootstrap",
        &boot,
        "--bind",
        "127.81.1.2:0",
        "--bytes",
        "100000",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = json(&out);
    assert_eq!(r["path"], "direct");
    assert_eq!(r["bytes"], 100000);
    assert_eq!(r["peer_id"], peer.as_str());
    assert!(r["rtt_ms"].as_f64().unwrap() >= 0.0);
    assert!(r["via"].is_null());

    let out = x0x(&[
        "connect",
        &peer,
        "--json",
        "--relay-only",
        "--bootstrap",
        &boot,
        "--bind",
        "127.81.1.3:0",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = json(&out);
    assert_eq!(r["path"], "relayed");
    assert_eq!(r["via"].as_str().unwrap(), c.nodes[0].peer_id().unwrap());
}

#[test]
fn netcheck_reports_the_observed_address_and_mapping() {
    let mut c = Cluster::full_mesh(82, 2, "");
    c.start_all();
    assert!(c.wait_all_report(&[0, 1], 1, Duration::from_secs(30)));
    let (a, b) = (c.nodes[0].quic.to_string(), c.nodes[1].quic.to_string());
    let out = x0x(&[
        "netcheck",
        "--json",
        "--bootstrap",
        &a,
        "--bootstrap",
        &b,
        "--bind",
        "127.82.1.1:40000",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = json(&out);
    assert_eq!(r["public_addr"], "127.82.1.1:40000");
    assert_eq!(r["mapping"], "endpoint-independent");
    assert_eq!(r["nodes"].as_array().unwrap().len(), 2);
}

#[test]
fn lookup_finds_a_listening_agent_and_not_a_stranger() {
    let mut c = Cluster::full_mesh(83, 1, "");
    c.start_all();
    assert!(common::wait_until(Duration::from_secs(10), || c.nodes[0]
        .health()
        .is_some()));
    let boot = c.nodes[0].quic.to_string();
    let (_listener, peer) = listen(&boot, "127.83.1.1:0");
    let r = json(&x0x(&[
        "lookup",
        &peer,
        "--json",
        "--bootstrap",
        &boot,
        "--bind",
        "127.83.1.2:0",
    ]));
    assert_eq!(r["found"], true);
    assert_eq!(r["record"]["peer"], peer.as_str());
    let stranger = "00".repeat(32);
    let out = x0x(&[
        "lookup",
        &stranger,
        "--json",
        "--bootstrap",
        &boot,
        "--bind",
        "127.83.1.2:0",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(json(&out)["found"], false);
}

#[test]
fn unreachable_bootstrap_exits_69_with_a_clear_message() {
    common::require_isolated_network();
    let out = x0x(&[
        "netcheck",
        "--bootstrap",
        "127.84.0.1:12000",
        "--bind",
        "127.84.1.1:0",
        "--join-timeout-ms",
        "1000",
    ]);
    assert_eq!(out.status.code(), Some(69));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no bootstrap node could be reached") && err.contains("127.84.0.1:12000"),
        "{err}"
    );
}

#[test]
fn help_explains_every_command() {
    let out = x0x(&["--help"]);
    let text = String::from_utf8_lossy(&out.stdout);
    for cmd in ["id", "netcheck", "listen", "connect", "lookup", "69"] {
        assert!(text.contains(cmd), "{text}");
    }
    let out = x0x(&["connect", "--help"]);
    let text = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--bootstrap",
        "--json",
        "--relay-only",
        "--direct-timeout-ms",
        "--bytes",
    ] {
        assert!(text.contains(flag), "{text}");
    }
}

/// A RUST_LOG directive with a leading space and a non-ASCII character used
/// to panic inside tracing-subscriber before any command ran. Now it is named
/// on stderr and the command runs, logging at warn.
#[test]
fn a_bad_rust_log_is_named_and_the_command_still_runs() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("agent.key");
    let out = Command::new(X0X)
        .args(["id", "--key", key.to_str().unwrap(), "--json"])
        .env("RUST_LOG", "info, é=debug")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        err.contains("RUST_LOG") && err.contains("\" é=debug\"") && err.contains("whitespace"),
        "{err}"
    );
    assert_eq!(json(&out)["peer_id"].as_str().map(str::len), Some(64));
}
