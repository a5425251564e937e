//! The six inventory hosts under real WAN delays (NYC, SFO, Helsinki,
//! Nuremberg, Singapore, Tokyo: per-pair delays of half the city-pair RTT,
//! 1 % loss; table and sources in `x0x_testkit::wan::RTT_MS` and
//! docs/BENCHMARKS.md). Short mode: one run of each step, asserting
//! behaviour and printing the figures; `x0x-bench --only wan` measures
//! the same lab in full.

use std::time::{Duration, Instant};

use serde_json::Value;
use x0x_testkit::wan::{self, Wan};

use crate::agents::json_of;
use crate::fleet;

const ALL: [usize; 6] = [0, 1, 2, 3, 4, 5];

fn inventory() -> Vec<wan::InventoryNode> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/hosts/inventory.toml");
    wan::inventory(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// `x0x status --json` until `ok` (at most `tries` runs: a mesh that just
/// formed may still replace a duplicate connection, and two lost packets
/// can cost a far node its 3 s): the last run, its JSON, and what the
/// runs before it reported.
fn status_until(
    wan: &Wan,
    tries: usize,
    ok: impl Fn(&Value) -> bool,
) -> (x0x_testkit::netns::Ran, Value, Vec<String>) {
    let mut earlier = Vec::new();
    loop {
        let ran = wan.status(&["--json"]);
        let v = json_of(&ran);
        if ok(&v) || earlier.len() + 1 >= tries {
            return (ran, v, earlier);
        }
        earlier.push(v["problems"].to_string());
    }
}

#[test]
fn the_fleet_under_wan_delays_forms_notices_a_death_heals_and_reports() {
    let Some(mut wan) = Wan::new(
        "wan::the_fleet_under_wan_delays_forms_notices_a_death_heals_and_reports",
        &inventory(),
        &fleet::bootstrap(),
        &crate::agents::x0x(),
        wan::LOSS_PCT,
    ) else {
        return;
    };
    let mut figures = Vec::new();

    // 1. Formation: all six started at once.
    let t0 = Instant::now();
    wan.start_all();
    let formed = wan
        .wait_peers(&ALL, 5, t0, Duration::from_secs(60))
        .expect("the mesh forms under WAN delays");
    figures.push(format!("mesh formed in {} ms", formed.as_millis()));

    // 2. `x0x status` from the operator's host (near NYC): healthy, every
    //    node named, and the RTTs it and the nodes measure are the lab's.
    let (ran, v, earlier) = status_until(&wan, 3, |v| v["healthy"] == true);
    assert_eq!(ran.code, Some(0), "{ran}");
    figures.push(format!(
        "x0x status (healthy): {} ms wall, {} ms probing; {} earlier run(s) reported {:?}",
        ran.elapsed.as_millis(),
        v["probe_ms"],
        earlier.len(),
        earlier
    ));
    let nodes = v["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 6);
    let mut worst_link = 0.0f64;
    for (i, n) in nodes.iter().enumerate() {
        assert_eq!(n["name"], wan.nodes[i].name.as_str(), "{n}");
        assert_eq!(n["peers"], 5, "{n}");
        let rtt = n["rtt_ms"].as_f64().unwrap();
        let want = wan.ops_rtt_ms(i);
        assert!(
            rtt >= want * 0.9,
            "{}: RTT from the operator {rtt} ms, configured {want} ms",
            wan.nodes[i].name
        );
        for l in n["mesh"].as_array().unwrap() {
            let j = wan
                .nodes
                .iter()
                .position(|m| l["addr"] == m.quic.to_string())
                .unwrap_or_else(|| panic!("unknown peer {l}"));
            let (got, want) = (l["rtt_ms"].as_f64().unwrap(), wan.node_rtt_ms(i, j));
            assert!(
                got >= want * 0.9,
                "{} sees {} at {got} ms, configured {want} ms",
                wan.nodes[i].name,
                wan.nodes[j].name
            );
            worst_link = worst_link.max(got / want);
        }
    }
    figures.push(format!(
        "mesh link RTTs as the nodes measure them: at most {:.2}x the configured RTT",
        worst_link
    ));

    // 3. Death: kill -9 Tokyo (the longest links); the others notice.
    let victim = wan
        .nodes
        .iter()
        .position(|n| n.location == "Tokyo")
        .unwrap();
    let others: Vec<usize> = ALL.iter().copied().filter(|i| *i != victim).collect();
    let killed = Instant::now();
    wan.kill9(victim);
    let detect = wan
        .wait_peers(&others, 4, killed, Duration::from_secs(20))
        .expect("the others notice the dead node");
    figures.push(format!(
        "{} killed: the other five report 4 peers after {} ms",
        wan.nodes[victim].name,
        detect.as_millis()
    ));
    // The mesh idle timeout (2 s) plus one keep-alive (0.5 s) is the
    // design figure; a loaded test machine gets some slack.
    assert!(
        detect <= Duration::from_secs(6),
        "death noticed after {detect:?}"
    );

    // 4. `x0x status` names the dead node and exits 1.
    let ran = wan.status(&[]);
    assert_eq!(ran.code, Some(1), "{ran}");
    let dead = &wan.nodes[victim];
    assert!(
        ran.stdout.contains(&format!(
            "{} ({}) is unreachable: no answer within 3000 ms; no node sees it",
            dead.name, dead.quic
        )),
        "{ran}"
    );
    assert!(!ran.stdout.contains("does not see"), "{ran}");
    figures.push(format!(
        "x0x status (one node dead): {} ms wall, exit 1:\n{}",
        ran.elapsed.as_millis(),
        ran.stdout
    ));

    // 5. Heal: the same node restarts (same key); all six see five again.
    let restarted = Instant::now();
    wan.start(victim);
    let heal = wan
        .wait_peers(&ALL, 5, restarted, Duration::from_secs(60))
        .expect("the mesh heals");
    figures.push(format!(
        "restarted: all six at 5 peers after {} ms",
        heal.as_millis()
    ));
    let (ran, _, earlier) = status_until(&wan, 3, |v| v["healthy"] == true);
    assert_eq!(ran.code, Some(0), "healthy again: {ran}");
    figures.push(format!(
        "x0x status after the heal: healthy; {} earlier run(s) reported {earlier:?}",
        earlier.len()
    ));

    // 6. Agents join from next to each node, through all six addresses.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let addrs = wan.addrs();
    let joins: Vec<wan::Joined> = rt.block_on(async {
        let mut out = Vec::new();
        for h in &wan.agent_hosts {
            out.push(wan::join_from(h, &addrs).await.expect("the agent joins"));
        }
        out
    });
    for (i, j) in joins.iter().enumerate() {
        figures.push(format!(
            "agent near {}: join_network {} ms ({} node(s) linked, first {}), all six linked after {}",
            wan.nodes[i].name,
            j.join.as_millis(),
            j.linked_at_return,
            wan.nodes
                .iter()
                .find(|n| n.quic == j.first)
                .map_or("?", |n| n.name.as_str()),
            j.all_linked
                .map_or("-".to_string(), |d| format!("{} ms", d.as_millis()))
        ));
        assert!(j.linked_at_return >= 1);
        assert!(
            j.all_linked.is_some(),
            "agent near {} never linked to all six",
            wan.nodes[i].name
        );
    }
    eprintln!(
        "{}: the fleet under WAN delays ({}% loss):\n  {}",
        wan.lab.test,
        wan.loss_pct,
        figures.join("\n  ")
    );
}
