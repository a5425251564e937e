//! `--only wan`: the six-node fleet in network namespaces under real
//! city-pair delays with 1 % loss (`x0x_testkit::wan`, the lab the test
//! `tests/netns/wan.rs` runs once): mesh formation, death detection, heal,
//! `x0x status` and agents joining from next to each node, repeated.
//!
//! Needs root (network namespaces), `x0x` and `x0x-netem` next to the
//! node binary (scripts/bench-quick.sh copies them). Not part of the
//! default scenarios: run it explicitly.

use std::path::Path;
use std::time::{Duration, Instant};

use x0x_testkit::wan::{self, Wan, median_ms};

use crate::Res;

/// Counts of one mode.
#[derive(Debug, Clone)]
pub struct WanPlan {
    pub form_runs: usize,
    /// Nodes killed and restarted in turn (indices into the inventory).
    pub victims: Vec<usize>,
    pub status_runs: usize,
    pub join_reps: usize,
    /// Wait after the last formation before measuring RTTs and `x0x status`.
    pub settle: Duration,
}

impl WanPlan {
    pub fn quick() -> Self {
        Self {
            form_runs: 1,
            victims: vec![5],
            status_runs: 2,
            join_reps: 1,
            settle: Duration::from_secs(1),
        }
    }

    pub fn full() -> Self {
        Self {
            form_runs: 5,
            victims: vec![0, 1, 2, 3, 4, 5],
            status_runs: 7,
            join_reps: 3,
            settle: Duration::from_secs(15),
        }
    }
}

/// (key, value, unit, how) rows for the benchmark's table.
pub type Rows = Vec<(String, f64, &'static str, String)>;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn max_ms(v: &[Duration]) -> f64 {
    v.iter().map(|d| ms(*d)).fold(f64::NAN, f64::max)
}

fn json_line(stdout: &str) -> Option<serde_json::Value> {
    stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .and_then(|l| serde_json::from_str(l).ok())
}

/// Run the whole scenario (blocking: call it off the async runtime's
/// worker threads). Each step must succeed; timings are only measured.
pub fn run(plan: &WanPlan, node_bin: &Path, rt: &tokio::runtime::Handle) -> Res<Rows> {
    let dir = node_bin.parent().ok_or("node binary has no directory")?;
    let cli = dir.join("x0x");
    for (what, p) in [("x0x", &cli), ("x0x-netem", &dir.join("x0x-netem"))] {
        if !p.is_file() {
            return Err(format!(
                "{what} not found next to the node binary ({}): build with cargo build --release --bins",
                p.display()
            )
            .into());
        }
    }
    let entries = wan::inventory(include_str!("../../../hosts/inventory.toml"))?;
    let mut wan = Wan::new(
        "x0x-bench wan",
        &entries,
        &node_bin.display().to_string(),
        &cli.display().to_string(),
        wan::LOSS_PCT,
    )
    .ok_or("network namespaces are not available (X0X_SKIP_NETNS=1)")?;
    let all: Vec<usize> = (0..6).collect();
    let mut rows = Rows::new();

    // Formation, fresh keys each run.
    let mut form = Vec::new();
    for run in 0..plan.form_runs {
        wan.reset();
        let t0 = Instant::now();
        wan.start_all();
        let d = wan.wait_peers(&all, 5, t0, Duration::from_secs(60))?;
        eprintln!("wan: formation run {run}: {} ms", d.as_millis());
        form.push(d);
    }
    rows.push((
        "wan_mesh_form_ms".into(),
        median_ms(&form),
        "ms",
        format!(
            "six nodes started at once, until all report 5 peers; median of {} (max {:.0})",
            form.len(),
            max_ms(&form)
        ),
    ));

    // Let the nodes' smoothed RTTs forget the handshake (keep-alives every
    // 500 ms are the samples), then `x0x status` on the healthy fleet,
    // from the operator's host near NYC.
    std::thread::sleep(plan.settle);
    let (mut wall, mut probe, mut healthy) = (Vec::new(), Vec::new(), 0);
    let mut ratios = Vec::new();
    for _ in 0..plan.status_runs {
        let ran = wan.status(&["--json"]);
        let v =
            json_line(&ran.stdout).ok_or_else(|| format!("x0x status printed no JSON: {ran}"))?;
        if ran.code == Some(0) && v["healthy"] == true {
            healthy += 1;
        } else {
            eprintln!("wan: x0x status not healthy: {}", v["problems"]);
        }
        wall.push(ran.elapsed);
        probe.push(Duration::from_secs_f64(
            v["probe_ms"].as_f64().unwrap_or(0.0) / 1e3,
        ));
        for (i, n) in v["nodes"].as_array().into_iter().flatten().enumerate() {
            for l in n["mesh"].as_array().into_iter().flatten() {
                let Some(j) = wan
                    .nodes
                    .iter()
                    .position(|m| l["addr"] == m.quic.to_string())
                else {
                    continue;
                };
                if let Some(got) = l["rtt_ms"].as_f64() {
                    ratios.push(got / wan.node_rtt_ms(i, j));
                }
            }
        }
    }
    ratios.sort_by(|a, b| a.total_cmp(b));
    rows.push((
        "wan_status_ms".into(),
        median_ms(&wall),
        "ms",
        format!(
            "`x0x status --json` wall time (process start to exit), healthy fleet, from 5 ms off NYC; median of {}, {healthy} healthy",
            wall.len()
        ),
    ));
    rows.push((
        "wan_status_probe_ms".into(),
        median_ms(&probe),
        "ms",
        "its own probe_ms: all six asked at once, until the last answer".into(),
    ));
    rows.push((
        "wan_status_healthy_runs".into(),
        f64::from(healthy),
        "",
        format!("of {} runs on the healthy fleet", plan.status_runs),
    ));
    if let (Some(first), Some(last)) = (ratios.first(), ratios.last()) {
        rows.push((
            "wan_link_rtt_ratio".into(),
            ratios[ratios.len() / 2],
            "",
            format!(
                "mesh link RTT the nodes measure / configured RTT: median (min {first:.2}, max {last:.2}, {} links)",
                ratios.len()
            ),
        ));
    }

    // Death, `x0x status` with the node dead, heal: each victim in turn.
    let (mut detect, mut dead_wall, mut heal) = (Vec::new(), Vec::new(), Vec::new());
    let mut named = 0;
    for &victim in &plan.victims {
        let others: Vec<usize> = all.iter().copied().filter(|i| *i != victim).collect();
        wan.wait_peers(&all, 5, Instant::now(), Duration::from_secs(60))?;
        let killed = Instant::now();
        wan.kill9(victim);
        let d = wan.wait_peers(&others, 4, killed, Duration::from_secs(30))?;
        detect.push(d);
        let ran = wan.status(&[]);
        let name = wan.nodes[victim].name.clone();
        if ran.code == Some(1) && ran.stdout.contains(&format!("{name} (")) {
            named += 1;
        } else {
            eprintln!("wan: x0x status with {name} dead: {ran}");
        }
        dead_wall.push(ran.elapsed);
        let restarted = Instant::now();
        wan.start(victim);
        let h = wan.wait_peers(&all, 5, restarted, Duration::from_secs(60))?;
        heal.push(h);
        eprintln!(
            "wan: {name} ({}): death seen after {} ms, status {} ms, healed {} ms after restart",
            wan.nodes[victim].location,
            d.as_millis(),
            ran.elapsed.as_millis(),
            h.as_millis()
        );
    }
    let n = plan.victims.len();
    rows.push((
        "wan_death_detect_ms".into(),
        median_ms(&detect),
        "ms",
        format!(
            "kill -9 until the 5 others report 4 peers; median of {n} victims (max {:.0})",
            max_ms(&detect)
        ),
    ));
    rows.push((
        "wan_mesh_heal_ms".into(),
        median_ms(&heal),
        "ms",
        format!(
            "restart (same key) until all six report 5 peers; median of {n} (max {:.0})",
            max_ms(&heal)
        ),
    ));
    rows.push((
        "wan_status_dead_ms".into(),
        median_ms(&dead_wall),
        "ms",
        format!(
            "`x0x status` wall time with one node dead (its 3 s timeout); named it {named}/{n}"
        ),
    ));

    // Agents join from next to each node, through all six addresses.
    let addrs = wan.addrs();
    let (mut joins, mut linked) = (Vec::new(), Vec::new());
    for rep in 0..plan.join_reps {
        for (k, host) in wan.agent_hosts.iter().enumerate() {
            let j = rt.block_on(wan::join_from(host, &addrs))?;
            eprintln!(
                "wan: rep {rep}, agent near {}: join {} ms, {} linked at return, all six after {:?}",
                wan.nodes[k].name,
                j.join.as_millis(),
                j.linked_at_return,
                j.all_linked.map(|d| d.as_millis())
            );
            joins.push(j.join);
            linked.push(
                j.all_linked
                    .ok_or("an agent never linked to all six nodes")?,
            );
        }
    }
    rows.push((
        "wan_join_ms".into(),
        median_ms(&joins),
        "ms",
        format!(
            "Agent::join_network from 5 ms off a node, all six listed (first registration + 150 ms grace); median of {} (max {:.0})",
            joins.len(),
            max_ms(&joins)
        ),
    ));
    rows.push((
        "wan_join_all_linked_ms".into(),
        median_ms(&linked),
        "ms",
        format!(
            "same joins, until linked and registered to all six nodes; median (max {:.0})",
            max_ms(&linked)
        ),
    ));
    rows.push((
        "wan_loss_pct".into(),
        wan.loss_pct,
        "%",
        "loss on every packet the lab's wan forwards, each direction".into(),
    ));
    Ok(rows)
}
