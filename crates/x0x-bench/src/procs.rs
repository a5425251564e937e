//! Processes under measurement: `x0x-bootstrap` nodes and load generators,
//! with what `/proc` says about them (RSS, CPU time) and their `/health`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::TcpStream;
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use crate::Res;

/// Every node listens for QUIC on this port (as in production and the tests).
pub const QUIC_PORT: u16 = 12000;
/// Every node serves `/health` on this port of its own address.
pub const HEALTH_PORT: u16 = 12600;

/// Resident set size of a process in KiB (`VmRSS` in `/proc/<pid>/status`).
pub fn rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// User + system CPU time of a process (all its threads, live or exited),
/// in clock ticks (`utime` + `stime` of `/proc/<pid>/stat`).
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces: split after its ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime is field 14, stime field 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Clock ticks per second (`getconf CLK_TCK`), for [`cpu_ticks`].
pub fn clock_ticks_per_sec() -> Res<f64> {
    let out = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let hz: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("getconf CLK_TCK printed {text:?}"))?;
    if hz <= 0.0 {
        return Err(format!("getconf CLK_TCK printed {hz}").into());
    }
    Ok(hz)
}

/// CPU time used by a process between two moments.
pub struct CpuSample {
    pid: u32,
    ticks: u64,
    at: Instant,
}

impl CpuSample {
    pub fn take(pid: u32) -> Res<Self> {
        Ok(Self {
            pid,
            ticks: cpu_ticks(pid).ok_or_else(|| format!("cannot read /proc/{pid}/stat"))?,
            at: Instant::now(),
        })
    }

    /// (CPU seconds used since the sample, wall seconds since the sample).
    pub fn since(&self, hz: f64) -> Res<(f64, f64)> {
        let now =
            cpu_ticks(self.pid).ok_or_else(|| format!("cannot read /proc/{}/stat", self.pid))?;
        Ok((
            now.saturating_sub(self.ticks) as f64 / hz,
            self.at.elapsed().as_secs_f64(),
        ))
    }
}

/// A minimal HTTP/1.0 GET with a 2 s bound; the body of a 200 response.
pub async fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    let exchange = async {
        let mut s = TcpStream::connect(addr).await.ok()?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await
            .ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        let resp = String::from_utf8(buf).ok()?;
        let (head, body) = resp.split_once("\r\n\r\n")?;
        (head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"))
            .then(|| body.to_string())
    };
    tokio::time::timeout(Duration::from_secs(2), exchange)
        .await
        .ok()
        .flatten()
}

/// `127.<a>.<b>.<c>`: every benchmark address is on loopback.
pub fn loopback(a: u8, b: u8, c: u8) -> std::net::IpAddr {
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(127, a, b, c))
}

/// One `x0x-bootstrap` process (started or not) and its files.
pub struct Node {
    pub quic: SocketAddr,
    pub health: SocketAddr,
    /// Its TCP relay (TLS + WebSocket).
    pub tcp: SocketAddr,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Node {
    /// A node on `ip` (QUIC 12000, health 12600) with its configuration
    /// written to `dir`; `peers` are the other nodes' QUIC addresses and
    /// `extra` is appended to the TOML.
    pub fn new(
        dir: &Path,
        name: &str,
        ip: std::net::IpAddr,
        peers: &[SocketAddr],
        extra: &str,
    ) -> Res<Self> {
        assert!(ip.is_loopback(), "benchmark nodes use loopback only");
        let quic = SocketAddr::new(ip, QUIC_PORT);
        let health = SocketAddr::new(ip, HEALTH_PORT);
        let tcp = SocketAddr::new(ip, 443);
        let peers: Vec<String> = peers.iter().map(|p| format!("\"{p}\"")).collect();
        let toml = format!(
            "listen = \"{quic}\"\npeers = [{peers}]\nstate_dir = \"{state}\"\n\n[health]\nlisten = \"{health}\"\n\n[tcp]\nlisten = \"{tcp}\"\n\n{extra}\n",
            peers = peers.join(", "),
            state = dir.join(format!("{name}.state")).display(),
        );
        let config = dir.join(format!("{name}.toml"));
        std::fs::write(&config, toml)?;
        Ok(Self {
            quic,
            health,
            tcp,
            config,
            log: dir.join(format!("{name}.log")),
            child: None,
        })
    }

    pub fn start(&mut self, bin: &Path) -> Res<()> {
        if self.child.is_some() {
            return Err("node already running".into());
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new(bin)
            .arg("--config")
            .arg(&self.config)
            .env_remove("RUST_LOG")
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        self.child = Some(child);
        Ok(())
    }

    pub fn pid(&self) -> Res<u32> {
        self.child
            .as_ref()
            .and_then(|c| c.id())
            .ok_or_else(|| "node not running".into())
    }

    /// SIGKILL and reap: the node says goodbye to no one.
    pub async fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
        }
    }

    /// Fail if the process has exited (with the tail of its log).
    pub fn check_alive(&mut self) -> Res<()> {
        let Some(child) = self.child.as_mut() else {
            return Err("node not started".into());
        };
        if let Some(status) = child.try_wait()? {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            return Err(format!(
                "node {} exited ({status}); log tail:\n{}",
                self.quic,
                tail.join("\n")
            )
            .into());
        }
        Ok(())
    }

    pub async fn health_json(&self) -> Option<serde_json::Value> {
        serde_json::from_str(&http_get(self.health, "/health").await?).ok()
    }

    /// `peers` from `/health`.
    pub async fn peers(&self) -> Option<u64> {
        self.health_json().await?.get("peers")?.as_u64()
    }

    /// `agents` from `/health`.
    pub async fn agents(&self) -> Option<u64> {
        self.health_json().await?.get("agents")?.as_u64()
    }

    /// One un-labelled metric from `/metrics` (OpenMetrics counters end in `_total`).
    pub async fn metric(&self, name: &str) -> Option<f64> {
        let text = http_get(self.health, "/metrics").await?;
        text.lines().find_map(|l| {
            let rest = l.strip_prefix(name)?;
            let rest = rest.strip_prefix("_total").unwrap_or(rest);
            rest.strip_prefix(' ')?.trim().parse().ok()
        })
    }

    /// Wait (at most `timeout`) until `/health` answers.
    pub async fn wait_up(&mut self, timeout: Duration) -> Res<()> {
        let deadline = Instant::now() + timeout;
        loop {
            self.check_alive()?;
            if self.health_json().await.is_some() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!("node {} did not come up in {timeout:?}", self.quic).into());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// A load generator: this binary re-run as `x0x-bench loadgen ...` in a
/// process of its own, talking JSON lines on stdout.
pub struct LoadGen {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Lines<BufReader<ChildStdout>>,
}

impl LoadGen {
    pub fn spawn(args: &[String]) -> Res<Self> {
        let exe = std::env::current_exe()?;
        let mut child = Command::new(exe)
            .arg("loadgen")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        Ok(Self {
            stdin: child.stdin.take(),
            child,
            lines: BufReader::new(stdout).lines(),
        })
    }

    pub fn pid(&self) -> Res<u32> {
        self.child
            .id()
            .ok_or_else(|| "load generator exited".into())
    }

    /// The next JSON event, within `timeout`.
    pub async fn next_event(&mut self, timeout: Duration) -> Res<serde_json::Value> {
        loop {
            let line = tokio::time::timeout(timeout, self.lines.next_line())
                .await
                .map_err(|_| format!("load generator silent for {timeout:?}"))??
                .ok_or("load generator exited early")?;
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                if let Some(err) = v.get("error").and_then(|e| e.as_str()) {
                    return Err(format!("load generator failed: {err}").into());
                }
                return Ok(v);
            }
        }
    }

    /// Wait for the event named `name`, skipping others, within `timeout`.
    pub async fn wait_event(&mut self, name: &str, timeout: Duration) -> Res<serde_json::Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let v = self.next_event(left.max(Duration::from_millis(1))).await?;
            if v.get("event").and_then(|e| e.as_str()) == Some(name) {
                return Ok(v);
            }
        }
    }

    /// Send one line to its stdin.
    pub async fn send_line(&mut self, line: &str) -> Res<()> {
        let stdin = self.stdin.as_mut().ok_or("stdin closed")?;
        stdin.write_all(format!("{line}\n").as_bytes()).await?;
        stdin.flush().await?;
        Ok(())
    }

    /// Ask it to stop (close its stdin) and wait, at most `timeout`, for it to exit.
    pub async fn finish(mut self, timeout: Duration) -> Res<()> {
        drop(self.stdin.take());
        match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(status) => {
                let status = status?;
                if !status.success() {
                    return Err(format!("load generator exited with {status}").into());
                }
                Ok(())
            }
            Err(_) => {
                let _ = self.child.kill().await;
                Err("load generator did not exit; killed".into())
            }
        }
    }
}
