//! The CLI contract of issue 14 (subscribe, publish, presence, find,
//! tasks; `--bootstrap`, `--key`, `--json`) against a local three-node mesh.

use x0x_testkit as common;

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::Cluster;

const X0X: &str = env!("CARGO_BIN_EXE_x0x");

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn boot_args(c: &Cluster, bind: &str) -> Vec<String> {
    let mut v = Vec::new();
    for n in &c.nodes {
        v.push("--bootstrap".to_string());
        v.push(n.quic.to_string());
    }
    v.push("--bind".into());
    v.push(bind.into());
    v.push("--json".into());
    v
}

fn run(args: &[String]) -> serde_json::Value {
    let out = Command::new(X0X).args(args).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "x0x {args:?} failed: {text}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(text.lines().last().unwrap_or("")).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {text}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn args(parts: &[&str], rest: Vec<String>) -> Vec<String> {
    parts.iter().map(|s| s.to_string()).chain(rest).collect()
}

/// Lines of a background process's stdout, read on a thread.
fn lines(stdout: ChildStdout) -> mpsc::Receiver<serde_json::Value> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if let Ok(v) = serde_json::from_str(&line) {
                let _ = tx.send(v);
            }
        }
    });
    rx
}

/// `x0x subscribe TOPIC --json` in the background: its peer id and its lines.
fn subscriber(
    c: &Cluster,
    topic: &str,
    bind: &str,
) -> (KillOnDrop, String, mpsc::Receiver<serde_json::Value>) {
    let mut child = Command::new(X0X)
        .args(args(&["subscribe", topic], boot_args(c, bind)))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let rx = lines(child.stdout.take().unwrap());
    let ready = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("ready line");
    assert_eq!(ready["event"], "ready");
    let id = ready["peer_id"].as_str().unwrap().to_string();
    assert_eq!(id.len(), 64);
    (KillOnDrop(child), id, rx)
}

#[test]
fn subscribe_publish_presence_find_and_tasks_keep_their_json_contract() {
    let mut c = Cluster::full_mesh(84, 3, "");
    c.start_all();
    assert!(
        c.wait_all_report(&[0, 1, 2], 2, Duration::from_secs(30)),
        "mesh did not form"
    );
    let dir = tempfile::tempdir().unwrap();
    let key = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let publisher_key = key("publisher.key");
    let publisher = run(&args(
        &["id", "--key", &publisher_key, "--json"],
        Vec::new(),
    ))["peer_id"]
        .as_str()
        .unwrap()
        .to_string();

    let (_a, a_id, a_lines) = subscriber(&c, "room", "127.84.1.1:0");
    let (_b, b_id, _b_lines) = subscriber(&c, "room", "127.84.1.2:0");

    // publish: three messages, DATA then DATA #2, #3.
    let out = run(&args(
        &[
            "publish",
            "room",
            "hello",
            "--count",
            "3",
            "--interval-ms",
            "50",
            "--key",
            &publisher_key,
        ],
        boot_args(&c, "127.84.1.3:0"),
    ));
    assert_eq!(out, serde_json::json!({"event": "published", "count": 3}));
    let mut got = Vec::new();
    while got.len() < 3 {
        let m = a_lines
            .recv_timeout(Duration::from_secs(20))
            .expect("subscriber prints each message");
        assert_eq!(m["event"], "message");
        assert_eq!(m["topic"], "room");
        assert_eq!(m["from"], publisher.as_str());
        assert!(m["seq"].is_u64(), "{m}");
        assert!(m["latency_ms"].is_i64() || m["latency_ms"].is_u64(), "{m}");
        got.push((
            m["seq"].as_u64().unwrap(),
            m["data"].as_str().unwrap().to_string(),
        ));
    }
    got.sort();
    let data: Vec<&str> = got.iter().map(|(_, d)| d.as_str()).collect();
    assert_eq!(data, ["hello", "hello #2", "hello #3"]);

    // presence: both subscribers are online in the topic.
    let out = run(&args(
        &["presence", "room", "--wait-ms", "3000"],
        boot_args(&c, "127.84.1.4:0"),
    ));
    assert_eq!(out["event"], "presence");
    assert_eq!(out["topic"], "room");
    let online: Vec<&str> = out["online"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(online.contains(&a_id.as_str()), "{out}");
    assert!(online.contains(&b_id.as_str()), "{out}");

    // find: through b only (connected to a as a gossip neighbour).
    let out = run(&args(
        &["find", &a_id, "--via", &b_id],
        boot_args(&c, "127.84.1.5:0"),
    ));
    assert_eq!(out["found"], true, "{out}");
    assert_eq!(out["peer_id"], a_id.as_str());
    assert!(!out["addrs"].as_array().unwrap().is_empty());

    // tasks: add, claim (by another key), list.
    let out = run(&args(
        &["tasks", "room", "add", "write the docs"],
        boot_args(&c, "127.84.1.6:0"),
    ));
    assert_eq!(out["event"], "added");
    let id = out["id"].as_str().unwrap().to_string();
    let claimer_key = key("claimer.key");
    let claimer = run(&args(&["id", "--key", &claimer_key, "--json"], Vec::new()))["peer_id"]
        .as_str()
        .unwrap()
        .to_string();
    let out = run(&args(
        &["tasks", "room", "claim", &id, "--key", &claimer_key],
        boot_args(&c, "127.84.1.7:0"),
    ));
    assert_eq!(out, serde_json::json!({"event": "claimed", "id": id}));
    let out = run(&args(
        &["tasks", "room", "list"],
        boot_args(&c, "127.84.1.8:0"),
    ));
    assert_eq!(out["event"], "tasks");
    assert_eq!(
        out["tasks"],
        serde_json::json!([{"id": id, "title": "write the docs", "status": "claimed", "claimed_by": claimer}])
    );
}
