//! `x0x-bench`: the x0x benchmark. Runs every scenario against real
//! `x0x-bootstrap` processes on loopback (127.200.0.0 and up, never another
//! address), prints a table and writes every figure as one JSON object.
//!
//! ```text
//! cargo build --release --bins
//! target/release/x0x-bench --quick --json bench.json   # seconds, small counts
//! target/release/x0x-bench --full  --json bench.json   # the README's table
//! ```
//!
//! Load generators run as `x0x-bench loadgen ...` in processes of their own,
//! so a node's CPU time and RSS (read from `/proc`) are the node's alone.
//! Nothing here asserts a timing: the benchmark fails only if a scenario
//! cannot run at all. See docs/BENCHMARKS.md.

mod loadgen;
mod paths;
mod procs;
mod transfer;
mod wan;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use futures_util::future::join_all;

use procs::{CpuSample, LoadGen, Node, loopback, rss_kb};

pub type Error = Box<dyn std::error::Error + Send + Sync>;
pub type Res<T> = Result<T, Error>;

/// The x0x benchmark: mesh formation and healing, joins, held agents,
/// handshake rate, direct and relayed transfer, on loopback.
#[derive(Debug, Parser)]
#[command(about, long_about = None)]
struct Cli {
    /// Small counts, a few seconds per scenario (what the test command runs).
    #[arg(long, conflicts_with = "full")]
    quick: bool,
    /// The full counts behind docs/BENCHMARKS.md (several minutes).
    #[arg(long)]
    full: bool,
    /// Write every figure as one JSON object to FILE.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// The node binary (default: `x0x-bootstrap` next to this binary).
    #[arg(long, value_name = "PATH", env = "X0X_BOOTSTRAP_BIN")]
    node_bin: Option<PathBuf>,
    /// Run only these scenarios (comma-separated: mesh, join, agents,
    /// handshake, transfer; and wan, the six-node fleet in network
    /// namespaces under real city-pair delays, which only runs when named
    /// here and needs root).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Override the number of concurrent agents to aim for.
    #[arg(long)]
    agents: Option<usize>,
    /// Override the number of joins.
    #[arg(long)]
    joins: Option<usize>,
    /// Override the handshakes in flight in the handshake scenario.
    #[arg(long)]
    handshake_concurrency: Option<usize>,
    /// Profile the node during each measured window with `perf record`
    /// (cpu-clock, DWARF call graphs), one file per window in DIR. perf's
    /// own cost distorts that run's figures: profile and measure separately.
    #[arg(long, value_name = "DIR")]
    perf_dir: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// (internal) run a load generator; used by the benchmark itself.
    #[command(hide = true, subcommand)]
    Loadgen(loadgen::LoadCmd),
}

/// Counts and durations of one mode.
#[derive(Debug, Clone)]
struct Plan {
    name: &'static str,
    mesh_runs: usize,
    heal_runs: usize,
    joins: usize,
    agents: usize,
    agent_ramp_s: u64,
    agent_settle_s: f64,
    idle_s: f64,
    handshake_s: f64,
    handshake_concurrency: usize,
    transfer_mib: u64,
    transfer_reps: usize,
    pings: usize,
    baseline_mib: usize,
}

impl Plan {
    fn quick() -> Self {
        Self {
            name: "quick",
            mesh_runs: 2,
            heal_runs: 1,
            joins: 100,
            agents: 300,
            agent_ramp_s: 20,
            agent_settle_s: 1.0,
            idle_s: 2.0,
            handshake_s: 2.0,
            handshake_concurrency: 32,
            transfer_mib: 16,
            transfer_reps: 1,
            pings: 100,
            baseline_mib: 64,
        }
    }

    fn full() -> Self {
        Self {
            name: "full",
            mesh_runs: 7,
            heal_runs: 5,
            joins: 1000,
            agents: 10_000,
            agent_ramp_s: 180,
            agent_settle_s: 5.0,
            idle_s: 10.0,
            handshake_s: 10.0,
            handshake_concurrency: 32,
            transfer_mib: 256,
            transfer_reps: 3,
            pings: 1000,
            baseline_mib: 512,
        }
    }
}

/// What every scenario needs.
struct Ctx {
    plan: Plan,
    node_bin: PathBuf,
    dir: tempfile::TempDir,
    hz: f64,
    perf_dir: Option<PathBuf>,
}

/// `perf record` attached to one process for one window (see `--perf-dir`).
struct Perf {
    child: tokio::process::Child,
}

impl Perf {
    async fn start(ctx: &Ctx, pid: u32, name: &str) -> Res<Option<Self>> {
        let Some(dir) = &ctx.perf_dir else {
            return Ok(None);
        };
        std::fs::create_dir_all(dir)?;
        let child = tokio::process::Command::new("perf")
            .args(["record", "-q", "-e", "cpu-clock", "-F", "999"])
            .args(["--call-graph", "dwarf,16384", "-p", &pid.to_string(), "-o"])
            .arg(dir.join(format!("{name}.data")))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot run perf: {e}"))?;
        // Give perf a moment to attach before the window starts.
        tokio::time::sleep(Duration::from_millis(300)).await;
        Ok(Some(Self { child }))
    }

    async fn stop(perf: Option<Self>) {
        let Some(mut p) = perf else { return };
        if let Some(pid) = p.child.id() {
            let _ = tokio::process::Command::new("kill")
                .args(["-INT", &pid.to_string()])
                .status()
                .await;
        }
        if tokio::time::timeout(Duration::from_secs(60), p.child.wait())
            .await
            .is_err()
        {
            let _ = p.child.kill().await;
        }
    }
}

/// Figures in the order they were measured, each with a unit and a note.
#[derive(Default)]
struct Figures {
    rows: Vec<(String, f64, &'static str, String)>,
}

impl Figures {
    fn add(&mut self, key: &str, value: f64, unit: &'static str, note: impl Into<String>) {
        self.rows.push((key.to_string(), value, unit, note.into()));
    }

    fn json(&self) -> serde_json::Value {
        let map: serde_json::Map<String, serde_json::Value> = self
            .rows
            .iter()
            .map(|(k, v, _, _)| (k.clone(), round(*v).into()))
            .collect();
        serde_json::Value::Object(map)
    }
}

/// Three significant decimals are plenty, and keep the JSON readable.
fn round(v: f64) -> f64 {
    if v.abs() >= 100.0 {
        (v * 10.0).round() / 10.0
    } else {
        (v * 1000.0).round() / 1000.0
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("x0x-bench: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.cmd {
            Some(Cmd::Loadgen(cmd)) => {
                let r = loadgen::run(cmd).await;
                if let Err(e) = &r {
                    loadgen::emit(serde_json::json!({"error": e.to_string()}));
                }
                r
            }
            None => tokio::select! {
                r = bench(cli) => r,
                _ = tokio::signal::ctrl_c() => Err("interrupted".into()),
            },
        }
    });
    // Do not wait for stray tasks (held connections, closing agents).
    runtime.shutdown_timeout(Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("x0x-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn node_binary(cli: &Cli) -> Res<PathBuf> {
    let path = match &cli.node_bin {
        Some(p) => p.clone(),
        None => std::env::current_exe()?
            .parent()
            .ok_or("no directory for this binary")?
            .join("x0x-bootstrap"),
    };
    if !path.is_file() {
        return Err(format!(
            "node binary {} not found: build it first (cargo build --release --bins) or pass --node-bin",
            path.display()
        )
        .into());
    }
    Ok(path)
}

async fn bench(cli: Cli) -> Res<()> {
    let mut plan = if cli.full {
        Plan::full()
    } else {
        Plan::quick()
    };
    if let Some(n) = cli.agents {
        plan.agents = n;
    }
    if let Some(n) = cli.joins {
        plan.joins = n;
    }
    if let Some(n) = cli.handshake_concurrency {
        plan.handshake_concurrency = n;
    }
    let all = [
        "mesh",
        "join",
        "agents",
        "handshake",
        "transfer",
        "wan",
        "paths",
    ];
    for s in &cli.only {
        if !all.contains(&s.as_str()) {
            return Err(format!("unknown scenario {s:?} (known: {})", all.join(", ")).into());
        }
    }
    // `wan` and `paths` need root and network namespaces: only when asked for.
    let wanted = |s: &str| {
        (cli.only.is_empty() && s != "wan" && s != "paths") || cli.only.iter().any(|o| o == s)
    };
    let ctx = Ctx {
        node_bin: node_binary(&cli)?,
        dir: tempfile::Builder::new().prefix("x0x-bench").tempdir()?,
        hz: procs::clock_ticks_per_sec()?,
        perf_dir: cli.perf_dir.clone(),
        plan,
    };
    let machine = Machine::read();
    println!(
        "x0x-bench {} mode on {}; node binary {}; {}",
        ctx.plan.name,
        machine.describe(),
        ctx.node_bin.display(),
        network_scope()
    );
    let started = Instant::now();
    let mut figs = Figures::default();
    figs.add(
        "machine_cores",
        machine.cores as f64,
        "",
        machine.cpu.clone(),
    );
    figs.add("machine_mem_mib", machine.mem_mib as f64, "MiB", "MemTotal");
    figs.add(
        "quick",
        f64::from(cli.quick || !cli.full),
        "",
        "1 = quick mode",
    );
    figs.add(
        "debug_build",
        f64::from(cfg!(debug_assertions)),
        "",
        if cfg!(debug_assertions) {
            "1 = unoptimised build: these figures are not representative"
        } else {
            "0 = release build"
        },
    );

    figs.add(
        "loadavg_start",
        loadavg(),
        "",
        "1-minute load average before the run (others' work on a shared machine)",
    );
    baseline(&ctx, &mut figs);
    if wanted("mesh") {
        step("mesh formation", &started);
        mesh_form(&ctx, &mut figs).await?;
        step("mesh healing", &started);
        mesh_heal(&ctx, &mut figs).await?;
    }
    if wanted("join") {
        step("joins", &started);
        joins(&ctx, &mut figs).await?;
    }
    if wanted("join") {
        step("joins through six nodes, one down", &started);
        joins_one_down(&ctx, &mut figs).await?;
    }
    if wanted("agents") {
        step("concurrent agents", &started);
        agents(&ctx, &mut figs).await?;
    }
    if wanted("handshake") {
        step("handshake rate", &started);
        handshakes(&ctx, &mut figs).await?;
    }
    if wanted("transfer") {
        step("direct and relayed transfer", &started);
        transfers(&ctx, &mut figs).await?;
    }
    if wanted("wan") {
        step("the fleet under WAN delays (network namespaces)", &started);
        let plan = if cli.full {
            wan::WanPlan::full()
        } else {
            wan::WanPlan::quick()
        };
        let node_bin = ctx.node_bin.clone();
        let rt = tokio::runtime::Handle::current();
        let rows = tokio::task::spawn_blocking(move || {
            wan::run(&plan, &node_bin, &rt).map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| lab_failure("the WAN lab", e))??;
        for (key, value, unit, note) in rows {
            figs.add(&key, value, unit, note);
        }
    }
    if wanted("paths") {
        step(
            "path upgrade and relayed connect (network namespaces)",
            &started,
        );
        let plan = if cli.full {
            paths::PathsPlan::full()
        } else {
            paths::PathsPlan::quick()
        };
        let node_bin = ctx.node_bin.clone();
        let rows = tokio::task::spawn_blocking(move || {
            paths::run(&plan, &node_bin).map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| lab_failure("the paths lab", e))??;
        for (key, value, unit, note) in rows {
            figs.add(&key, value, unit, note);
        }
    }
    figs.add(
        "loadavg_end",
        loadavg(),
        "",
        "1-minute load average after the run",
    );
    figs.add(
        "bench_duration_s",
        started.elapsed().as_secs_f64(),
        "s",
        "wall time of the whole run",
    );
    print_table(&ctx, &machine, &figs);
    if let Some(path) = &cli.json {
        std::fs::write(path, serde_json::to_string_pretty(&figs.json())? + "\n")
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        println!("figures written to {}", path.display());
    }
    Ok(())
}

/// A lab that panicked (the testkit's labs panic on a failed setup step).
fn lab_failure(what: &str, e: tokio::task::JoinError) -> String {
    match e.try_into_panic() {
        Ok(p) => format!(
            "{what} failed: {}",
            p.downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| p.downcast_ref::<&str>().copied())
                .unwrap_or("panic")
        ),
        Err(e) => format!("{what} failed: {e}"),
    }
}

fn step(what: &str, started: &Instant) {
    eprintln!("[{:6.1}s] {what}", started.elapsed().as_secs_f64());
}

/// The 1-minute load average (`/proc/loadavg`).
fn loadavg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

/// Whether we run in a network namespace with only a loopback interface.
fn network_scope() -> &'static str {
    let devs = std::fs::read_to_string("/proc/net/dev").unwrap_or_default();
    let isolated = devs
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .all(|n| n.trim() == "lo");
    if isolated {
        "isolated network namespace (lo only)"
    } else {
        "host network namespace (loopback addresses only)"
    }
}

struct Machine {
    cores: usize,
    cpu: String,
    mem_mib: u64,
    kernel: String,
}

impl Machine {
    fn read() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cores = cpuinfo
            .lines()
            .filter(|l| l.starts_with("processor"))
            .count();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name")?.split_once(':'))
            .map(|(_, m)| m.trim().to_string())
            .unwrap_or_else(|| "unknown CPU".into());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_kb: u64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0);
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_string();
        Self {
            cores,
            cpu,
            mem_mib: mem_kb / 1024,
            kernel,
        }
    }

    fn describe(&self) -> String {
        format!(
            "{} cores ({}), {:.1} GiB RAM, Linux {}",
            self.cores,
            self.cpu,
            self.mem_mib as f64 / 1024.0,
            self.kernel
        )
    }
}

/// A fixed single-thread workload (SHA-256 over a buffer), measured in the
/// same run, to compare machines and runs: divide by it to get ratios.
fn baseline(ctx: &Ctx, figs: &mut Figures) {
    let buf = vec![0x5au8; 1024 * 1024];
    let t0 = Instant::now();
    let mut ctx_digest = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for _ in 0..ctx.plan.baseline_mib {
        ctx_digest.update(&buf);
    }
    std::hint::black_box(ctx_digest.finish());
    let s = t0.elapsed().as_secs_f64();
    figs.add(
        "baseline_sha256_mib_s",
        ctx.plan.baseline_mib as f64 / s,
        "MiB/s",
        format!(
            "SHA-256 of {} MiB on one core, this run (machine speed reference)",
            ctx.plan.baseline_mib
        ),
    );
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn range_note(v: &[f64]) -> String {
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("min {min:.0}, max {max:.0}")
}

/// Six nodes in a full mesh on `127.<a>.<b>.1..6`, configured in `dir`.
fn six_nodes(dir: &Path, a: u8, b: u8) -> Res<Vec<Node>> {
    std::fs::create_dir_all(dir)?;
    let quic: Vec<SocketAddr> = (1..=6)
        .map(|i| SocketAddr::new(loopback(a, b, i), procs::QUIC_PORT))
        .collect();
    (0..6)
        .map(|i| {
            let peers: Vec<SocketAddr> = quic
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, p)| *p)
                .collect();
            Node::new(dir, &format!("node{i}"), quic[i].ip(), &peers, "")
        })
        .collect()
}

/// Poll every node's `/health` (every 10 ms) until all of `which` report
/// `peers == want`; the time it took, or an error after `timeout`.
async fn wait_peers(
    nodes: &mut [Node],
    which: &[usize],
    want: u64,
    timeout: Duration,
) -> Res<Duration> {
    let t0 = Instant::now();
    loop {
        let counts = join_all(which.iter().map(|&i| nodes[i].peers())).await;
        if counts.iter().all(|c| *c == Some(want)) {
            return Ok(t0.elapsed());
        }
        if t0.elapsed() >= timeout {
            return Err(format!(
                "nodes {which:?} did not all report {want} peers within {timeout:?} (now {counts:?})"
            )
            .into());
        }
        for &i in which {
            nodes[i].check_alive()?;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `mesh_form_ms`: six nodes started at once, until all six report 5 peers.
async fn mesh_form(ctx: &Ctx, figs: &mut Figures) -> Res<()> {
    let mut times = Vec::new();
    for run in 0..ctx.plan.mesh_runs {
        let dir = ctx.dir.path().join(format!("mesh{run}"));
        let mut nodes = six_nodes(&dir, 201, run as u8)?;
        let t0 = Instant::now();
        for n in &mut nodes {
            n.start(&ctx.node_bin)?;
        }
        let all: Vec<usize> = (0..6).collect();
        wait_peers(&mut nodes, &all, 5, Duration::from_secs(60)).await?;
        times.push(t0.elapsed().as_secs_f64() * 1e3);
        for n in &mut nodes {
            n.kill9().await;
        }
    }
    let note = format!(
        "median of {} runs ({}); spawn of 6 processes to all /health peers=5",
        times.len(),
        range_note(&times)
    );
    figs.add("mesh_form_ms", median(&mut times), "ms", note);
    Ok(())
}

/// `mesh_heal_ms`: kill -9 one node, wait until the others notice, restart
/// it (same key), until all six report 5 peers again.
async fn mesh_heal(ctx: &Ctx, figs: &mut Figures) -> Res<()> {
    let dir = ctx.dir.path().join("heal");
    let mut nodes = six_nodes(&dir, 202, 0)?;
    for n in &mut nodes {
        n.start(&ctx.node_bin)?;
    }
    let all: Vec<usize> = (0..6).collect();
    wait_peers(&mut nodes, &all, 5, Duration::from_secs(60)).await?;
    let mut heal = Vec::new();
    let mut detect = Vec::new();
    for run in 0..ctx.plan.heal_runs {
        let victim = run % 6;
        let others: Vec<usize> = all.iter().copied().filter(|i| *i != victim).collect();
        let killed = Instant::now();
        nodes[victim].kill9().await;
        // The survivors notice through the mesh idle timeout (2 s + up to one 0.5 s keep-alive by default).
        wait_peers(&mut nodes, &others, 4, Duration::from_secs(30)).await?;
        detect.push(killed.elapsed().as_secs_f64() * 1e3);
        let t0 = Instant::now();
        nodes[victim].start(&ctx.node_bin)?;
        wait_peers(&mut nodes, &all, 5, Duration::from_secs(60)).await?;
        heal.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    for n in &mut nodes {
        n.kill9().await;
    }
    let note = format!(
        "median of {} runs ({}); restart of a kill -9'd node to all six peers=5",
        heal.len(),
        range_note(&heal)
    );
    figs.add("mesh_heal_ms", median(&mut heal), "ms", note);
    figs.add(
        "mesh_death_detect_ms",
        median(&mut detect),
        "ms",
        "kill -9 until the 5 others report 4 peers (mesh idle timeout), not part of heal",
    );
    Ok(())
}

/// One node, no mesh peers, on `127.<a>.0.1`; `extra` TOML appended.
async fn single_node(ctx: &Ctx, name: &str, a: u8, extra: &str) -> Res<Node> {
    let dir = ctx.dir.path().join(name);
    std::fs::create_dir_all(&dir)?;
    let mut node = Node::new(&dir, name, loopback(a, 0, 1), &[], extra)?;
    node.start(&ctx.node_bin)?;
    node.wait_up(Duration::from_secs(20)).await?;
    Ok(node)
}

/// `join_p50_ms`, `join_p99_ms`: sequential `Agent::join_network` calls.
async fn joins(ctx: &Ctx, figs: &mut Figures) -> Res<()> {
    let node = single_node(ctx, "join", 203, "").await?;
    let cpu = CpuSample::take(node.pid()?)?;
    let args = vec![
        "join".into(),
        "--node".into(),
        node.quic.to_string(),
        "--bind".into(),
        loopback(203, 1, 1).to_string(),
        "--count".into(),
        ctx.plan.joins.to_string(),
    ];
    let mut lg = LoadGen::spawn(&args)?;
    let done = lg.wait_event("done", Duration::from_secs(600)).await?;
    let (node_cpu_s, _) = cpu.since(ctx.hz)?;
    lg.finish(Duration::from_secs(10)).await?;
    let mut lat: Vec<f64> = done["lat_ms"]
        .as_array()
        .ok_or("join: no latencies")?
        .iter()
        .filter_map(|v| v.as_f64())
        .collect();
    if lat.is_empty() {
        return Err("join: no join succeeded".into());
    }
    lat.sort_by(|a, b| a.total_cmp(b));
    let failed = done["failed"].as_u64().unwrap_or(0);
    let n = lat.len();
    let how = format!("{n} sequential joins by new agents, {failed} failed");
    figs.add("join_p50_ms", percentile(&lat, 50.0), "ms", how.clone());
    figs.add("join_p99_ms", percentile(&lat, 99.0), "ms", how);
    figs.add("join_count", n as f64, "", "successful joins measured");
    figs.add(
        "join_node_cpu_ms",
        node_cpu_s * 1e3 / n as f64,
        "ms",
        "node CPU time per join (incl. the agent's close)",
    );
    Ok(())
}

/// Sequential joins by new agents through all of `nodes`: sorted
/// latencies (ms) and the count that failed.
async fn join_latencies(
    nodes: &[SocketAddr],
    bind: std::net::IpAddr,
    count: usize,
) -> Res<(Vec<f64>, u64)> {
    let list: Vec<String> = nodes.iter().map(ToString::to_string).collect();
    let args = vec![
        "join".into(),
        "--node".into(),
        list.join(","),
        "--bind".into(),
        bind.to_string(),
        "--count".into(),
        count.to_string(),
    ];
    let mut lg = LoadGen::spawn(&args)?;
    let done = lg.wait_event("done", Duration::from_secs(600)).await?;
    lg.finish(Duration::from_secs(10)).await?;
    let mut lat: Vec<f64> = done["lat_ms"]
        .as_array()
        .ok_or("join: no latencies")?
        .iter()
        .filter_map(|v| v.as_f64())
        .collect();
    if lat.is_empty() {
        return Err("join: no join succeeded".into());
    }
    lat.sort_by(|a, b| a.total_cmp(b));
    Ok((lat, done["failed"].as_u64().unwrap_or(0)))
}

/// Send `signal` (a `kill` name: STOP, CONT) to a process.
async fn signal(pid: u32, signal: &str) -> Res<()> {
    let ok = tokio::process::Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .await?
        .success();
    if ok {
        Ok(())
    } else {
        Err(format!("kill -{signal} {pid} failed").into())
    }
}

/// `join_p99_ms_one_node_down`: agents given all six nodes of a mesh join
/// while one of them is blackholed: the node's process is stopped
/// (SIGSTOP), so its socket stays bound and packets to it are dropped
/// without an answer or an ICMP error, as on the internet. The same with
/// all six up, and with the node killed (`kill -9`: loopback then answers
/// with ICMP port unreachable), for comparison.
async fn joins_one_down(ctx: &Ctx, figs: &mut Figures) -> Res<()> {
    let dir = ctx.dir.path().join("join6");
    let mut nodes = six_nodes(&dir, 203, 2)?;
    for n in &mut nodes {
        n.start(&ctx.node_bin)?;
    }
    let all: Vec<usize> = (0..6).collect();
    wait_peers(&mut nodes, &all, 5, Duration::from_secs(60)).await?;
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.quic).collect();
    let count = (ctx.plan.joins / 4).max(20);
    let bind = loopback(203, 3, 1);
    let (up, up_failed) = join_latencies(&addrs, bind, count).await?;
    // The first node listed is the one down: an agent that dialled in order would wait on it first.
    let victim = nodes[0].pid()?;
    signal(victim, "STOP").await?;
    let stopped = join_latencies(&addrs, bind, count).await;
    signal(victim, "CONT").await?;
    let (down, down_failed) = stopped?;
    nodes[0].kill9().await;
    let (killed, killed_failed) = join_latencies(&addrs, bind, count).await?;
    for n in &mut nodes {
        n.kill9().await;
    }
    let how = |what: &str, lat: &[f64], failed: u64| {
        format!(
            "{} sequential joins through six meshed nodes, {what}; p50 {:.1} ms; {failed} failed",
            lat.len(),
            percentile(lat, 50.0)
        )
    };
    figs.add(
        "join_p99_ms_six_up",
        percentile(&up, 99.0),
        "ms",
        how("all six up", &up, up_failed),
    );
    figs.add(
        "join_p99_ms_one_node_down",
        percentile(&down, 99.0),
        "ms",
        how(
            "the first listed blackholed (SIGSTOP: no answer, no ICMP)",
            &down,
            down_failed,
        ),
    );
    figs.add(
        "join_p50_ms_one_node_down",
        percentile(&down, 50.0),
        "ms",
        "same joins, median (first registration + the 150 ms join grace)",
    );
    figs.add(
        "join_p99_ms_one_node_killed",
        percentile(&killed, 99.0),
        "ms",
        how("the first listed killed (kill -9)", &killed, killed_failed),
    );
    Ok(())
}

/// `agents_connected`, `rss_per_agent_kb`, `idle_cpu_pct`.
async fn agents(ctx: &Ctx, figs: &mut Figures) -> Res<()> {
    let mut node = single_node(ctx, "agents", 204, ACCEPT_UNLIMITED).await?;
    let pid = node.pid()?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss0 = rss_kb(pid).ok_or("cannot read node RSS")?;
    let args = vec![
        "hold".into(),
        "--node".into(),
        node.quic.to_string(),
        "--bind".into(),
        loopback(204, 1, 1).to_string(),
        "--count".into(),
        ctx.plan.agents.to_string(),
        "--ramp-seconds".into(),
        ctx.plan.agent_ramp_s.to_string(),
    ];
    let ramp = CpuSample::take(pid)?;
    let mut lg = LoadGen::spawn(&args)?;
    let ready = lg
        .wait_event("ready", Duration::from_secs(ctx.plan.agent_ramp_s + 30))
        .await?;
    let (ramp_cpu_s, ramp_wall_s) = ramp.since(ctx.hz)?;
    let lg_connected = ready["connected"].as_u64().unwrap_or(0);
    let lg_pid = lg.pid()?;
    // Let handshake-time allocations settle before reading memory.
    tokio::time::sleep(Duration::from_secs_f64(ctx.plan.agent_settle_s)).await;
    node.check_alive()?;
    let connected = node.agents().await.ok_or("node /health did not answer")?;
    let rss1 = rss_kb(pid).ok_or("cannot read node RSS")?;
    let lg_rss = rss_kb(lg_pid).unwrap_or(0);
    let perf = Perf::start(ctx, pid, "agents-idle").await?;
    let idle = CpuSample::take(pid)?;
    tokio::time::sleep(Duration::from_secs_f64(ctx.plan.idle_s)).await;
    let (idle_cpu_s, idle_wall_s) = idle.since(ctx.hz)?;
    Perf::stop(perf).await;
    let still = node.agents().await.unwrap_or(0);
    lg.finish(Duration::from_secs(20)).await?;
    if connected == 0 {
        return Err("no agent stayed connected".into());
    }
    figs.add(
        "agents_connected",
        connected as f64,
        "",
        format!(
            "node /health agents; aimed for {}, load generator holds {lg_connected}; {still} after the idle window",
            ctx.plan.agents
        ),
    );
    figs.add(
        "rss_per_agent_kb",
        (rss1 as f64 - rss0 as f64) / connected as f64,
        "KiB",
        format!("node VmRSS {rss0} -> {rss1} KiB"),
    );
    figs.add(
        "idle_cpu_pct",
        idle_cpu_s / idle_wall_s * 100.0,
        "%",
        format!(
            "node CPU over {idle_wall_s:.0} s of idle agents (agent keep-alive 15 s), % of one core"
        ),
    );
    figs.add(
        "agents_ramp_per_s",
        lg_connected as f64 / ready["ramp_s"].as_f64().unwrap_or(f64::NAN),
        "1/s",
        format!(
            "agents connected per second while ramping (node CPU {:.0} %)",
            ramp_cpu_s / ramp_wall_s * 100.0
        ),
    );
    figs.add(
        "loadgen_rss_per_agent_kb",
        lg_rss as f64 / lg_connected.max(1) as f64,
        "KiB",
        "client side: load generator VmRSS / agents held (for reference)",
    );
    Ok(())
}

/// Node limits for the connection scenarios: the per-source admission
/// limits (`accept_per_sec` 500/s, `connections_per_ip` 256 and
/// `max_handshakes` 512 by default; the load comes from one address)
/// lifted far above what the machine can do, so the figures show the
/// node's capacity, not its limiter. Stateless Retry keeps its default
/// (above 16 handshakes in flight).
const ACCEPT_UNLIMITED: &str =
    "[limits]\naccept_per_sec = 1000000\nconnections_per_ip = 1000000\nmax_handshakes = 100000\n";

/// `handshakes_per_s`: new authenticated connections the node accepts per
/// second, sustained over the window.
async fn handshakes(ctx: &Ctx, figs: &mut Figures) -> Res<()> {
    let node = single_node(ctx, "handshake", 205, ACCEPT_UNLIMITED).await?;
    let pid = node.pid()?;
    let args = vec![
        "handshake".into(),
        "--node".into(),
        node.quic.to_string(),
        "--bind".into(),
        loopback(205, 1, 1).to_string(),
        "--seconds".into(),
        ctx.plan.handshake_s.to_string(),
        "--concurrency".into(),
        ctx.plan.handshake_concurrency.to_string(),
    ];
    let mut lg = LoadGen::spawn(&args)?;
    lg.wait_event("window_start", Duration::from_secs(60))
        .await?;
    let perf = Perf::start(ctx, pid, "handshake").await?;
    let cpu = CpuSample::take(pid)?;
    let lg_cpu = CpuSample::take(lg.pid()?)?;
    let accepted0 = node.metric("x0x_connections_accepted").await;
    lg.wait_event(
        "window_end",
        Duration::from_secs_f64(ctx.plan.handshake_s + 30.0),
    )
    .await?;
    let (cpu_s, wall_s) = cpu.since(ctx.hz)?;
    let (lg_cpu_s, lg_wall_s) = lg_cpu.since(ctx.hz)?;
    Perf::stop(perf).await;
    let accepted1 = node.metric("x0x_connections_accepted").await;
    let done = lg.wait_event("done", Duration::from_secs(30)).await?;
    lg.finish(Duration::from_secs(10)).await?;
    let completed = done["completed"].as_f64().unwrap_or(0.0);
    let window = done["window_s"].as_f64().unwrap_or(f64::NAN);
    let failed = done["failed"].as_u64().unwrap_or(0);
    if failed > 0 {
        eprintln!("handshake failures by error: {}", done["errors"]);
    }
    let node_view = match (accepted0, accepted1) {
        (Some(a), Some(b)) => format!("; node counted {:.0}/s", (b - a) / wall_s),
        _ => String::new(),
    };
    figs.add(
        "handshakes_per_s",
        completed / window,
        "1/s",
        format!(
            "TLS 1.3 (X25519MLKEM768, mutual Ed25519) + Hello/Welcome, {} in flight, {window:.0} s{node_view}; {failed} failed",
            ctx.plan.handshake_concurrency
        ),
    );
    figs.add(
        "handshake_node_cpu_pct",
        cpu_s / wall_s * 100.0,
        "%",
        "node CPU during the window, % of one core",
    );
    figs.add(
        "handshake_loadgen_cpu_pct",
        lg_cpu_s / lg_wall_s * 100.0,
        "%",
        "load generator CPU (client side of the same handshakes), % of one core",
    );
    figs.add(
        "handshake_node_cpu_ms",
        cpu_s * 1e3 / completed.max(1.0),
        "ms",
        "node CPU time per accepted connection",
    );
    Ok(())
}

/// `direct_mbit_s`, `relay_mbit_s`, `relay_ratio`, `relay_rtt_overhead_ms`:
/// two agents on one node, `Agent::connect_with` direct then relayed.
async fn transfers(ctx: &Ctx, figs: &mut Figures) -> Res<()> {
    // Relay limits raised far above what loopback can carry, so the
    // figure is the relay's forwarding capacity, not its rate limiter.
    let limits = "[limits]\nrelay_peer_bytes_per_sec = 100000000000\nrelay_dest_bytes_per_sec = 100000000000\nrelay_ip_bytes_per_sec = 100000000000\nrelay_global_bytes_per_sec = 100000000000\n";
    let mut node = single_node(ctx, "transfer", 206, limits).await?;
    let pid = node.pid()?;
    let bytes = ctx.plan.transfer_mib * 1024 * 1024;
    let bind: Vec<String> = (1..=4).map(|i| loopback(206, 1, i).to_string()).collect();
    let args = vec![
        "transfer".into(),
        "--node".into(),
        node.quic.to_string(),
        "--bind".into(),
        bind.join(","),
        "--bytes".into(),
        bytes.to_string(),
        "--pings".into(),
        ctx.plan.pings.to_string(),
        "--reps".into(),
        ctx.plan.transfer_reps.to_string(),
        "--tcp-relay".into(),
        node.tcp.to_string(),
    ];
    let mut lg = LoadGen::spawn(&args)?;
    let lg_pid = lg.pid()?;
    let limit = Duration::from_secs(600);
    // Per path: (node CPU s, load generator CPU s, wall s).
    let mut cpu = Vec::new();
    let mut relayed_bytes = None;
    let mut relayed_datagrams = None;
    let mut drops = 0.0;
    let mut udp_drops = 0.0;
    for path in ["direct", "relayed", "tcp_relayed"] {
        lg.wait_event(&format!("{path}_ready"), limit).await?;
        let perf_node = Perf::start(ctx, pid, &format!("{path}-node")).await?;
        let perf_agents = Perf::start(ctx, lg_pid, &format!("{path}-agents")).await?;
        let (node_cpu, lg_cpu) = (CpuSample::take(pid)?, CpuSample::take(lg_pid)?);
        let relayed0 = node.metric("x0x_relay_bytes").await;
        let datagrams0 = node.metric("x0x_relay_datagrams").await;
        let drops0 = relay_drops(&node).await;
        let udp0 = udp_buffer_errors();
        lg.send_line("go").await?;
        lg.wait_event(&format!("{path}_end"), limit).await?;
        let (node_s, wall_s) = node_cpu.since(ctx.hz)?;
        let (lg_s, _) = lg_cpu.since(ctx.hz)?;
        Perf::stop(perf_node).await;
        Perf::stop(perf_agents).await;
        cpu.push((node_s, lg_s, wall_s));
        if path == "relayed" {
            let relayed1 = node.metric("x0x_relay_bytes").await;
            relayed_bytes = relayed0.zip(relayed1).map(|(a, b)| b - a);
            let datagrams1 = node.metric("x0x_relay_datagrams").await;
            relayed_datagrams = datagrams0.zip(datagrams1).map(|(a, b)| b - a);
            drops = relay_drops(&node).await - drops0;
            udp_drops = udp_buffer_errors() - udp0;
        }
    }
    let r = lg.wait_event("done", Duration::from_secs(60)).await?;
    lg.finish(Duration::from_secs(20)).await?;
    node.check_alive()?;
    let num = |k: &str| r[k].as_f64().ok_or_else(|| format!("transfer: no {k}"));
    let (direct, relayed, tcp_relayed, base) = (
        num("direct_mbit_s")?,
        num("relayed_mbit_s")?,
        num("tcp_relayed_mbit_s")?,
        num("baseline_mbit_s")?,
    );
    let (direct_rtt, relayed_rtt) = (num("direct_rtt_ms")?, num("relayed_rtt_ms")?);
    let size = format!(
        "{} MiB on one stream, median of {}",
        ctx.plan.transfer_mib, ctx.plan.transfer_reps
    );
    figs.add(
        "direct_mbit_s",
        direct,
        "Mbit/s",
        format!("agent to agent, connect_with(PathPolicy::DirectOnly); {size}"),
    );
    figs.add(
        "relay_mbit_s",
        relayed,
        "Mbit/s",
        format!("same agents, connect_with(PathPolicy::RelayOnly), through the node's UDP data plane; {size}"),
    );
    figs.add(
        "tcp_relay_mbit_s",
        tcp_relayed,
        "Mbit/s",
        format!("relayed again, the sender reaching the node over its TCP relay (TLS 1.3 + WebSocket) only; {size}"),
    );
    figs.add(
        "relay_ratio",
        relayed / direct,
        "",
        "relay_mbit_s / direct_mbit_s",
    );
    figs.add(
        "relay_rtt_overhead_ms",
        relayed_rtt - direct_rtt,
        "ms",
        format!(
            "median ping-pong RTT relayed {relayed_rtt:.3} ms - direct {direct_rtt:.3} ms ({} round trips each)",
            ctx.plan.pings
        ),
    );
    figs.add(
        "quinn_baseline_mbit_s",
        base,
        "Mbit/s",
        format!(
            "plain quinn (x0x TLS, default transport, UDP), same bytes, this run; RTT {:.3} ms",
            num("baseline_rtt_ms")?
        ),
    );
    figs.add(
        "direct_ratio",
        direct / base,
        "",
        "direct_mbit_s / quinn_baseline_mbit_s",
    );
    let moved = match relayed_bytes {
        Some(b) => format!(
            "; node relayed {:.0} MiB, dropped {drops:.0} datagrams; {udp_drops:.0} UDP buffer drops in this namespace",
            b / 1048576.0
        ),
        None => String::new(),
    };
    let (node_s, _, wall_s) = cpu[1];
    figs.add(
        "relay_node_cpu_pct",
        node_s / wall_s * 100.0,
        "%",
        format!("node CPU during the relayed transfers, % of one core{moved}"),
    );
    if let Some(n) = relayed_datagrams.filter(|n| *n > 0.0) {
        figs.add(
            "relay_node_cpu_us_per_datagram",
            node_s * 1e6 / n,
            "us",
            format!("node CPU per relayed datagram ({n:.0} datagrams, raw forwarding: no QUIC at the node)"),
        );
    }
    let mib = (ctx.plan.transfer_mib * ctx.plan.transfer_reps as u64) as f64;
    for ((key, what), (node_s, lg_s, _)) in [
        ("direct_cpu_ms_per_mib", "direct"),
        ("relay_cpu_ms_per_mib", "relayed"),
        ("tcp_relay_cpu_ms_per_mib", "relayed over the TCP relay"),
    ]
    .into_iter()
    .zip(cpu)
    {
        figs.add(
            key,
            (node_s + lg_s) * 1e3 / mib,
            "ms",
            format!(
                "CPU time per MiB moved {what}: agents {:.2} + node {:.2} ms",
                lg_s * 1e3 / mib,
                node_s * 1e3 / mib
            ),
        );
    }
    for path in ["direct", "relayed", "tcp_relayed"] {
        eprintln!(
            "{path} connection path stats: {}",
            r[format!("{path}_path")]
        );
    }
    Ok(())
}

/// UDP receive and send buffer overflows in this network namespace so far
/// (`RcvbufErrors` + `SndbufErrors` of `/proc/net/snmp`).
fn udp_buffer_errors() -> f64 {
    let snmp = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(names), Some(values)) = (udp.next(), udp.next()) else {
        return 0.0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .filter(|(n, _)| *n == "RcvbufErrors" || *n == "SndbufErrors")
        .filter_map(|(_, v)| v.parse::<f64>().ok())
        .sum()
}

/// Relayed datagrams the node dropped so far, all reasons together.
async fn relay_drops(node: &Node) -> f64 {
    let text = procs::http_get(node.health, "/metrics")
        .await
        .unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with("x0x_relay_dropped"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn print_table(ctx: &Ctx, machine: &Machine, figs: &Figures) {
    println!();
    println!("x0x-bench, {} mode: {}", ctx.plan.name, machine.describe());
    println!("{:<26} {:>12} {:<6} how", "figure", "value", "unit");
    println!("{}", "-".repeat(100));
    for (k, v, unit, note) in &figs.rows {
        let value = if v.fract() == 0.0 && v.abs() < 1e12 {
            format!("{v:.0}")
        } else if v.abs() >= 100.0 {
            format!("{v:.1}")
        } else {
            format!("{v:.3}")
        };
        println!("{k:<26} {value:>12} {unit:<6} {note}");
    }
}
