//! A lab of Linux network namespaces: an "internet" router, public hosts,
//! home routers doing NAT, and hosts behind them.
//!
//! Topology (all inside namespaces this lab creates; nothing touches the
//! namespace the test runs in, let alone the host's interfaces):
//!
//! ```text
//!   public host ──eth0── w<k> ┐
//!   public host ──eth0── w<k> ├─ wan (routes 198.18.<k>.0/24, never 10/8)
//!   home router ──wan0── w<k> ┘
//!        └─lan<j>── eth0 ── host behind the router (10.<k>.<j>.2)
//! ```
//!
//! Link `k` is `198.18.<k>.0/24` (RFC 2544 benchmarking range): the wan side
//! is `.1`, the host or router `.2`. Behind router `k`, LAN `j` is
//! `10.<k>.<j>.0/24`, router `.1`, host `.2`. The wan has no route to 10/8:
//! a LAN host reaches the world only through its router's NAT.
//!
//! Names: every namespace is `x0x<pid36>-<lab36>-<role>` (at most 15
//! characters), so parallel tests (threads or processes) never collide and
//! a later run can remove what a crashed run left behind: [`Lab::new`]
//! deletes `x0x*` namespaces whose owning pid is dead.
//!
//! [`Drop`] kills every process the lab started and deletes every
//! namespace it created, also when the test panics; deleting a namespace
//! removes its veths, addresses, routes and iptables rules with it.

use std::ffi::c_int;
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Prefix of every namespace a lab creates.
pub const PREFIX: &str = "x0x";

static LABS: AtomicU32 = AtomicU32::new(0);
static RUNS: AtomicU32 = AtomicU32::new(0);

unsafe extern "C" {
    /// glibc's setns(2): move the calling thread into another namespace.
    fn setns(fd: c_int, nstype: c_int) -> c_int;
    /// kill(2); /bin/kill is not on every machine (procps).
    fn kill(pid: c_int, sig: c_int) -> c_int;
}
const SIGKILL: c_int = 9;
const CLONE_NEWNET: c_int = 0x4000_0000;

/// How a home router maps its LAN hosts' source ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nat {
    /// `MASQUERADE`: keeps the source port when it is free, so one inside
    /// socket gets the same public port towards every destination
    /// (endpoint-independent mapping).
    PortPreserving,
    /// `MASQUERADE --random`: a random public port per flow
    /// (endpoint-dependent, "symmetric-like" mapping).
    RandomPort,
}

/// One delay/loss rule of [`Lab::netem`]: packets from `src` to `dst`
/// (IPv4 prefixes like `198.18.3.0/24`) wait `delay_ms` and are dropped
/// with probability `loss_pct` %.
#[derive(Debug, Clone)]
pub struct NetemRule {
    pub src: String,
    pub dst: String,
    pub delay_ms: f64,
    pub loss_pct: f64,
}

/// A namespace with one address.
#[derive(Debug, Clone)]
pub struct Host {
    pub ns: String,
    pub addr: Ipv4Addr,
    /// Its global IPv6 address, in a dual-stack lab ([`Lab::dual_stack`]).
    pub addr6: Option<std::net::Ipv6Addr>,
}

/// A home router: NAT plus a firewall dropping unsolicited inbound packets.
#[derive(Debug, Clone)]
pub struct Router {
    pub ns: String,
    /// The router's current public address (on `wan0`).
    pub public: Ipv4Addr,
    pub nat: Nat,
    link: u8,
    lans: u8,
}

/// A process started in a namespace; its stdout lines are collected.
pub struct Proc {
    pub name: String,
    pub ns: String,
    child: Option<Child>,
    pub log: PathBuf,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    /// Every stdout line so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Wait until a stdout line satisfies `pred`; returns it.
    pub fn wait_line(
        &self,
        timeout: Duration,
        mut pred: impl FnMut(&str) -> bool,
    ) -> Option<String> {
        let mut found = None;
        wait_until(timeout, || {
            found = self.lines().into_iter().find(|l| pred(l));
            found.is_some()
        });
        found
    }

    /// Whether the process is still running (false once it exited or was killed).
    pub fn running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => c.try_wait().map(|s| s.is_none()).unwrap_or(false),
            None => false,
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().ok();
            c.wait().ok();
        }
    }

    /// The last `n` lines of its stderr log.
    pub fn log_tail(&self, n: usize) -> String {
        tail(&self.log, n)
    }
}

/// What a one-shot command printed and how it exited.
#[derive(Debug)]
pub struct Ran {
    pub cmdline: String,
    /// None: killed after its time limit.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl std::fmt::Display for Ran {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "`{}` -> {} after {:?}\n  stdout: {}\n  stderr: {}",
            self.cmdline,
            self.code
                .map_or("killed at its time limit".to_string(), |c| format!(
                    "exit {c}"
                )),
            self.elapsed,
            self.stdout.trim(),
            self.stderr.trim().replace('\n', "\n          ")
        )
    }
}

pub struct Lab {
    pub test: String,
    tag: String,
    pub dir: tempfile::TempDir,
    namespaces: Vec<String>,
    pub procs: Vec<Proc>,
    next_link: u8,
    /// The internet router's namespace.
    pub wan: String,
    /// The running `x0x-netem`, if any (index in `procs`).
    netem_proc: Option<usize>,
    /// Whether links get IPv6 too (see [`Lab::dual_stack`]).
    ipv6: bool,
}

impl Lab {
    /// Create a lab (its wan namespace).
    ///
    /// When this machine cannot (not root, tools missing) the test fails
    /// with the reason: a test that did not run must never count as
    /// passed. Only with `X0X_SKIP_NETNS=1` set explicitly does this
    /// return `None` (the test then returns, having printed `SKIPPED:`).
    pub fn new(test: &str) -> Option<Lab> {
        if let Err(why) = prerequisites() {
            return cannot_run(test, &why);
        }
        remove_stale_namespaces();
        let n = LABS.fetch_add(1, Ordering::SeqCst);
        let tag = format!(
            "{PREFIX}{}-{}",
            base36(std::process::id() as u64),
            base36(n as u64)
        );
        let mut lab = Lab {
            test: test.to_string(),
            tag,
            dir: tempfile::Builder::new()
                .prefix("x0x-netns-")
                .tempdir()
                .expect("temp dir"),
            namespaces: Vec::new(),
            procs: Vec::new(),
            next_link: 1,
            wan: String::new(),
            netem_proc: None,
            ipv6: false,
        };
        let wan = lab.ns_name("wan");
        if let Err(why) = lab.try_add_namespace(&wan) {
            return cannot_run(test, &format!("ip netns add failed: {why}"));
        }
        lab.wan = wan.clone();
        lab.sysctl(&wan, "net/ipv4/ip_forward", "1");
        Some(lab)
    }

    /// Give every link created from now on IPv6 as well: link `k` is
    /// `2001:db8:0:<k>::/64` (wan `::1`, host or router `::2`), and LAN `j`
    /// behind router `k` is `2001:db8:<k>:<j>::/64`, routed to the router
    /// without NAT; routers keep a stateful IPv6 firewall (only traffic of
    /// flows started inside comes in), like home routers do.
    pub fn dual_stack(&mut self) {
        self.ipv6 = true;
        let wan = self.wan.clone();
        self.sysctl(&wan, "net/ipv6/conf/all/forwarding", "1");
    }

    fn ip6tables(&self, ns: &str, args: &[&str]) -> String {
        let mut full = vec!["netns", "exec", ns, "ip6tables", "-w"];
        full.extend_from_slice(args);
        self.ip(&full)
    }

    /// Every namespace this lab created so far.
    pub fn namespaces(&self) -> &[String] {
        &self.namespaces
    }

    fn ns_name(&self, role: &str) -> String {
        let name = format!("{}-{role}", self.tag);
        assert!(name.len() <= 15, "namespace name {name} is too long");
        name
    }

    fn try_add_namespace(&mut self, name: &str) -> Result<(), String> {
        let out = Command::new("ip")
            .args(["netns", "add", name])
            .output()
            .map_err(|e| format!("cannot run ip: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
        self.namespaces.push(name.to_string());
        self.ip(&["-n", name, "link", "set", "lo", "up"]);
        // No duplicate address detection: link-local addresses (which
        // neighbour discovery and routers use) work at once, not after a
        // second in which IPv6 silently drops packets.
        for scope in ["default", "all"] {
            self.sysctl(name, &format!("net/ipv6/conf/{scope}/accept_dad"), "0");
        }
        Ok(())
    }

    /// A new namespace `role` with only `lo` (up).
    pub fn namespace(&mut self, role: &str) -> String {
        let name = self.ns_name(role);
        self.try_add_namespace(&name)
            .unwrap_or_else(|e| panic!("ip netns add {name}: {e}"));
        name
    }

    fn new_link(&mut self) -> u8 {
        let k = self.next_link;
        assert!(k < 250, "too many links in one lab");
        self.next_link += 1;
        k
    }

    /// Connect namespace `ns` (interface `ifname`) to the wan on a new
    /// link; returns (link, address of `ns`).
    fn attach_to_wan(&mut self, ns: &str, ifname: &str) -> (u8, Ipv4Addr) {
        let (k, addr) = self.attach_to_wan4(ns, ifname);
        if self.ipv6 {
            let wan = self.wan.clone();
            let wside = format!("w{k}");
            self.ip(&[
                "-n",
                &wan,
                "addr",
                "add",
                &format!("2001:db8:0:{k:x}::1/64"),
                "dev",
                &wside,
                "nodad",
            ]);
            self.ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("2001:db8:0:{k:x}::2/64"),
                "dev",
                ifname,
                "nodad",
            ]);
            self.ip(&[
                "-n",
                ns,
                "-6",
                "route",
                "add",
                "default",
                "via",
                &format!("2001:db8:0:{k:x}::1"),
            ]);
        }
        (k, addr)
    }

    fn attach_to_wan4(&mut self, ns: &str, ifname: &str) -> (u8, Ipv4Addr) {
        let k = self.new_link();
        let wan = self.wan.clone();
        let wside = format!("w{k}");
        self.ip(&[
            "link", "add", &wside, "netns", &wan, "type", "veth", "peer", "name", ifname, "netns",
            ns,
        ]);
        let addr = Ipv4Addr::new(198, 18, k, 2);
        self.ip(&[
            "-n",
            &wan,
            "addr",
            "add",
            &format!("198.18.{k}.1/24"),
            "dev",
            &wside,
        ]);
        self.ip(&["-n", &wan, "link", "set", &wside, "up"]);
        self.ip(&[
            "-n",
            ns,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            ifname,
        ]);
        self.ip(&["-n", ns, "link", "set", ifname, "up"]);
        self.ip(&[
            "-n",
            ns,
            "route",
            "add",
            "default",
            "via",
            &format!("198.18.{k}.1"),
        ]);
        (k, addr)
    }

    /// A host with a public address on the wan.
    pub fn public_host(&mut self, role: &str) -> Host {
        let ns = self.namespace(role);
        let (k, addr) = self.attach_to_wan(&ns, "eth0");
        let addr6 = self
            .ipv6
            .then(|| format!("2001:db8:0:{k:x}::2").parse().expect("valid"));
        Host { ns, addr, addr6 }
    }

    /// A home router on the wan: NAT on `wan0`, and a firewall that drops
    /// (never answers) every packet arriving on `wan0` that does not belong
    /// to a connection started from inside. Dropped packets never confirm a
    /// conntrack entry, so they cannot disturb the next outbound mapping.
    pub fn nat_router(&mut self, role: &str, nat: Nat) -> Router {
        let ns = self.namespace(role);
        let (link, public) = self.attach_to_wan(&ns, "wan0");
        self.nat_and_firewall(&ns, nat);
        if self.ipv6 {
            self.sysctl(&ns, "net/ipv6/conf/all/forwarding", "1");
            // A stateful IPv6 firewall, no NAT: LAN hosts keep their addresses.
            for chain in ["FORWARD", "INPUT"] {
                self.ip6tables(
                    &ns,
                    &[
                        "-A",
                        chain,
                        "-i",
                        "wan0",
                        "-m",
                        "conntrack",
                        "--ctstate",
                        "ESTABLISHED,RELATED",
                        "-j",
                        "ACCEPT",
                    ],
                );
                self.ip6tables(
                    &ns,
                    &["-A", chain, "-i", "wan0", "-p", "ipv6-icmp", "-j", "ACCEPT"],
                );
                self.ip6tables(&ns, &["-A", chain, "-i", "wan0", "-j", "DROP"]);
            }
            let wan = self.wan.clone();
            self.ip(&[
                "-n",
                &wan,
                "-6",
                "route",
                "add",
                &format!("2001:db8:{link:x}::/48"),
                "via",
                &format!("2001:db8:0:{link:x}::2"),
            ]);
        }
        Router {
            ns,
            public,
            nat,
            link,
            lans: 0,
        }
    }

    /// NAT on `wan0` and a firewall dropping unsolicited inbound packets.
    fn nat_and_firewall(&self, ns: &str, nat: Nat) {
        let ns = ns.to_string();
        self.sysctl(&ns, "net/ipv4/ip_forward", "1");
        // Keep a new address when the old one is removed (rebinding).
        self.sysctl(&ns, "net/ipv4/conf/wan0/promote_secondaries", "1");
        let mut masq = vec![
            "-t",
            "nat",
            "-A",
            "POSTROUTING",
            "-o",
            "wan0",
            "-j",
            "MASQUERADE",
        ];
        if nat == Nat::RandomPort {
            masq.push("--random");
        }
        self.iptables(&ns, &masq);
        for chain in ["FORWARD", "INPUT"] {
            self.iptables(
                &ns,
                &[
                    "-A",
                    chain,
                    "-i",
                    "wan0",
                    "-m",
                    "conntrack",
                    "--ctstate",
                    "ESTABLISHED,RELATED",
                    "-j",
                    "ACCEPT",
                ],
            );
            self.iptables(&ns, &["-A", chain, "-i", "wan0", "-j", "DROP"]);
        }
    }

    /// A home router whose "internet" is the LAN of `carrier` (another
    /// router): double NAT, as behind a carrier-grade NAT. Its `wan0`
    /// gets an address in 100.64.0.0/10 (the shared address space carriers
    /// use); its own LANs are 10.x.y.0/24 as usual. IPv4 only.
    pub fn nat_router_behind(&mut self, carrier: &mut Router, role: &str, nat: Nat) -> Router {
        let ns = self.namespace(role);
        carrier.lans += 1;
        let (k, j) = (carrier.link, carrier.lans);
        assert!(j < 64, "too many routers behind one carrier");
        let rside = format!("lan{j}");
        self.ip(&[
            "link",
            "add",
            &rside,
            "netns",
            &carrier.ns,
            "type",
            "veth",
            "peer",
            "name",
            "wan0",
            "netns",
            &ns,
        ]);
        let net = format!("100.{}.{k}", 64 + j);
        self.ip(&[
            "-n",
            &carrier.ns,
            "addr",
            "add",
            &format!("{net}.1/24"),
            "dev",
            &rside,
        ]);
        self.ip(&["-n", &carrier.ns, "link", "set", &rside, "up"]);
        let public: Ipv4Addr = format!("{net}.2").parse().expect("valid");
        self.ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{public}/24"),
            "dev",
            "wan0",
        ]);
        self.ip(&["-n", &ns, "link", "set", "wan0", "up"]);
        self.ip(&[
            "-n",
            &ns,
            "route",
            "add",
            "default",
            "via",
            &format!("{net}.1"),
        ]);
        self.nat_and_firewall(&ns, nat);
        Router {
            ns,
            public,
            nat,
            link: self.new_link(),
            lans: 0,
        }
    }

    /// A host on its own LAN behind `router`.
    pub fn behind(&mut self, router: &mut Router, role: &str) -> Host {
        let ns = self.namespace(role);
        router.lans += 1;
        let (k, j) = (router.link, router.lans);
        let rside = format!("lan{j}");
        self.ip(&[
            "link", "add", &rside, "netns", &router.ns, "type", "veth", "peer", "name", "eth0",
            "netns", &ns,
        ]);
        self.ip(&[
            "-n",
            &router.ns,
            "addr",
            "add",
            &format!("10.{k}.{j}.1/24"),
            "dev",
            &rside,
        ]);
        self.ip(&["-n", &router.ns, "link", "set", &rside, "up"]);
        let addr = Ipv4Addr::new(10, k, j, 2);
        self.ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            "eth0",
        ]);
        self.ip(&["-n", &ns, "link", "set", "eth0", "up"]);
        self.ip(&[
            "-n",
            &ns,
            "route",
            "add",
            "default",
            "via",
            &format!("10.{k}.{j}.1"),
        ]);
        let addr6 = if self.ipv6 {
            self.ip(&[
                "-n",
                &router.ns,
                "addr",
                "add",
                &format!("2001:db8:{k:x}:{j:x}::1/64"),
                "dev",
                &rside,
                "nodad",
            ]);
            self.ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("2001:db8:{k:x}:{j:x}::2/64"),
                "dev",
                "eth0",
                "nodad",
            ]);
            self.ip(&[
                "-n",
                &ns,
                "-6",
                "route",
                "add",
                "default",
                "via",
                &format!("2001:db8:{k:x}:{j:x}::1"),
            ]);
            Some(format!("2001:db8:{k:x}:{j:x}::2").parse().expect("valid"))
        } else {
            None
        };
        Host { ns, addr, addr6 }
    }

    /// Give `router` a new public address and remove the old one: like a
    /// home router whose ISP hands out a new address. Removing the address
    /// makes the kernel delete every NAT mapping made with it, so each
    /// inside flow gets a new mapping on its next packet; packets sent to
    /// the old mapping are no longer delivered.
    pub fn rebind(&self, router: &mut Router) -> Ipv4Addr {
        let old = router.public;
        let new = Ipv4Addr::new(198, 18, router.link, old.octets()[3] + 1);
        let ns = router.ns.clone();
        self.ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{new}/24"),
            "dev",
            "wan0",
        ]);
        self.ip(&[
            "-n",
            &ns,
            "addr",
            "del",
            &format!("{old}/24"),
            "dev",
            "wan0",
        ]);
        // The promoted address keeps the subnet; make sure the default
        // route survived the change.
        self.ip(&[
            "-n",
            &ns,
            "route",
            "replace",
            "default",
            "via",
            &format!("198.18.{}.1", router.link),
        ]);
        router.public = new;
        new
    }

    /// Drop every packet the wan would forward from `src` to `dst` (an
    /// "internet" between two homes that blocks their direct UDP).
    pub fn block(&self, src: Ipv4Addr, dst: Ipv4Addr) {
        let (s, d) = (src.to_string(), dst.to_string());
        self.iptables(
            &self.wan,
            &["-I", "FORWARD", "1", "-s", &s, "-d", &d, "-j", "DROP"],
        );
    }

    /// Lift a [`Self::block`].
    pub fn unblock(&self, src: Ipv4Addr, dst: Ipv4Addr) {
        let (s, d) = (src.to_string(), dst.to_string());
        self.iptables(
            &self.wan,
            &["-D", "FORWARD", "-s", &s, "-d", &d, "-j", "DROP"],
        );
    }

    /// Delay (and drop a share of) packets the wan forwards, per pair of
    /// address prefixes: the kernel here has no `sch_netem`, so a
    /// user-space NFQUEUE daemon (`x0x-netem`, in this crate) holds each
    /// packet's verdict for the delay of the first matching rule. Calling
    /// it again replaces the rules.
    pub fn netem(&mut self, rules: &[NetemRule]) {
        if let Some(i) = self.netem_proc.take() {
            self.procs[i].kill();
        } else {
            let wan = self.wan.clone();
            self.iptables(
                &wan,
                &[
                    "-t",
                    "mangle",
                    "-A",
                    "FORWARD",
                    "-j",
                    "NFQUEUE",
                    "--queue-num",
                    "7",
                    "--queue-bypass",
                ],
            );
        }
        let mut args = vec!["--queue".to_string(), "7".to_string()];
        for r in rules {
            args.push("--rule".into());
            args.push(format!("{},{},{},{}", r.src, r.dst, r.delay_ms, r.loss_pct));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let bin = crate::bin("x0x-netem").display().to_string();
        let wan = self.wan.clone();
        let i = self.spawn(&wan, "netem", &bin, &args, &[]);
        assert!(
            self.procs[i]
                .wait_line(Duration::from_secs(10), |l| l == "ready")
                .is_some(),
            "{}: x0x-netem did not start: {}",
            self.test,
            self.procs[i].log_tail(10)
        );
        self.netem_proc = Some(i);
    }

    /// Delay every packet to and from `addr` by `ms` each way.
    pub fn delay(&mut self, addr: Ipv4Addr, ms: u32) {
        let me = format!("{addr}/32");
        self.netem(&[
            NetemRule {
                src: me.clone(),
                dst: "0.0.0.0/0".into(),
                delay_ms: ms as f64,
                loss_pct: 0.0,
            },
            NetemRule {
                src: "0.0.0.0/0".into(),
                dst: me,
                delay_ms: ms as f64,
                loss_pct: 0.0,
            },
        ]);
    }

    /// `ip ARGS`, which must succeed.
    pub fn ip(&self, args: &[&str]) -> String {
        self.must(
            Command::new("ip").args(args),
            &format!("ip {}", args.join(" ")),
        )
    }

    /// `iptables -w ARGS` inside `ns`, which must succeed.
    pub fn iptables(&self, ns: &str, args: &[&str]) -> String {
        let mut full = vec!["netns", "exec", ns, "iptables", "-w"];
        full.extend_from_slice(args);
        self.ip(&full)
    }

    /// Write a sysctl (path under /proc/sys) of namespace `ns`.
    pub fn sysctl(&self, ns: &str, key: &str, value: &str) {
        let path = format!("/proc/sys/{key}");
        in_ns(ns, || std::fs::write(&path, value))
            .unwrap_or_else(|e| panic!("{}: write {path} = {value} in {ns}: {e}", self.test));
    }

    fn must(&self, cmd: &mut Command, what: &str) -> String {
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("{}: cannot run `{what}`: {e}", self.test));
        assert!(
            out.status.success(),
            "{}: `{what}` failed: {}{}",
            self.test,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A path inside this lab's temporary directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Start `program ARGS` inside `ns`; stdout lines are collected,
    /// stderr goes to `<name>.log`. Returns its index in `procs`.
    pub fn spawn(
        &mut self,
        ns: &str,
        name: &str,
        program: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> usize {
        let log = self.path(&format!("{name}.log"));
        let err = std::fs::File::create(&log).expect("log file");
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns, program])
            .args(args)
            .envs(env.iter().copied())
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("{}: spawn {program} in {ns}: {e}", self.test));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().unwrap();
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line);
            }
        });
        self.procs.push(Proc {
            name: name.to_string(),
            ns: ns.to_string(),
            child: Some(child),
            log,
            lines,
        });
        self.procs.len() - 1
    }

    /// Run `program ARGS` inside `ns` to completion, killed after `limit`.
    pub fn run(&self, ns: &str, program: &str, args: &[&str], limit: Duration) -> Ran {
        let n = RUNS.fetch_add(1, Ordering::SeqCst);
        let out_path = self.path(&format!("run{n}.out"));
        let err_path = self.path(&format!("run{n}.err"));
        let cmdline = format!("ip netns exec {ns} {} {}", short(program), args.join(" "));
        let started = Instant::now();
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns, program])
            .args(args)
            // X0X_TRACE=<filter> turns on tracing of the commands a test runs.
            .env(
                "RUST_LOG",
                std::env::var("X0X_TRACE").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out_path).unwrap())
            .stderr(std::fs::File::create(&err_path).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("{}: spawn {cmdline}: {e}", self.test));
        let code = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break Some(status.code().unwrap_or(-1));
            }
            if started.elapsed() >= limit {
                child.kill().ok();
                child.wait().ok();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        Ran {
            cmdline,
            code,
            stdout: std::fs::read_to_string(&out_path).unwrap_or_default(),
            stderr: std::fs::read_to_string(&err_path).unwrap_or_default(),
            elapsed: started.elapsed(),
        }
    }

    /// Dump what helps to debug a failure: the tail of every process log,
    /// and each namespace's addresses, routes and firewall counters.
    /// `X0X_LAB_LOGS=<dir>` also copies every whole process log there.
    fn dump(&self) {
        if let Ok(dir) = std::env::var("X0X_LAB_LOGS") {
            let dir = std::path::Path::new(&dir).join(self.test.replace("::", "-"));
            let _ = std::fs::create_dir_all(&dir);
            for p in &self.procs {
                let _ = std::fs::copy(&p.log, dir.join(format!("{}.log", p.name)));
            }
            eprintln!("---- whole process logs in {} ----", dir.display());
        }
        for p in &self.procs {
            eprintln!("---- {} ({}) stdout ----", p.name, p.ns);
            for l in p.lines().iter().rev().take(20).rev() {
                eprintln!("{l}");
            }
            eprintln!(
                "---- {} ({}) stderr, last 40 lines ----\n{}",
                p.name,
                p.ns,
                p.log_tail(40)
            );
        }
        for ns in &self.namespaces {
            let show = |args: &[&str]| {
                Command::new("ip")
                    .args(args)
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                    .unwrap_or_default()
            };
            eprintln!(
                "---- namespace {ns} ----\n{}{}{}",
                show(&["-n", ns, "-br", "addr"]),
                show(&["-n", ns, "route"]),
                show(&["netns", "exec", ns, "iptables", "-w", "-S", "-v"])
            );
            if self.ipv6 {
                eprintln!(
                    "{}{}",
                    show(&["-n", ns, "-6", "route"]),
                    show(&["netns", "exec", ns, "ip6tables", "-w", "-S", "-v"])
                );
            }
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for p in &mut self.procs {
            p.kill();
        }
        if std::thread::panicking() {
            self.dump();
        }
        for ns in self.namespaces.iter().rev() {
            delete_namespace(ns);
        }
    }
}

/// Kill whatever still runs in `ns` (only processes this suite started
/// there), then delete it.
fn delete_namespace(ns: &str) {
    if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            if let Ok(pid) = pid.parse::<c_int>() {
                // SAFETY: kill(2) with a pid `ip netns pids` listed in our namespace.
                unsafe { kill(pid, SIGKILL) };
            }
        }
    }
    let ok = Command::new("ip")
        .args(["netns", "del", ns])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("warning: could not delete network namespace {ns}");
    }
}

/// Delete namespaces left by earlier runs that crashed: ours by name, and
/// only those whose owning process is gone.
fn remove_stale_namespaces() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| u64::from_str_radix(p, 36).ok())
        else {
            continue;
        };
        if name.split('-').count() != 3 || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let msg = format!("removing stale network namespace {name} (pid {pid} is gone)\n");
        std::io::stderr().write_all(msg.as_bytes()).ok();
        delete_namespace(&name);
    }
}

/// A network-namespace test cannot run here: fail, unless skipping was
/// asked for explicitly (`X0X_SKIP_NETNS=1`). A skip is written to stderr
/// itself (libtest captures `eprintln!` of passing tests) so it is seen.
fn cannot_run<T>(test: &str, why: &str) -> Option<T> {
    if std::env::var("X0X_SKIP_NETNS").as_deref() == Ok("1") {
        let line = format!("SKIPPED: {test}: needs root and ip netns ({why}); X0X_SKIP_NETNS=1\n");
        std::io::stderr().write_all(line.as_bytes()).ok();
        return None;
    }
    panic!(
        "NOT RUN: {test} needs root, iproute2 and iptables ({why}); run the suite as root \
         (scripts/test.sh), or set X0X_SKIP_NETNS=1 to skip the network-namespace tests explicitly"
    );
}

fn prerequisites() -> Result<(), String> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("?");
    if euid != "0" {
        return Err(format!("running as uid {euid}, not root"));
    }
    for tool in ["ip", "iptables"] {
        let found = Command::new(tool)
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        if !found {
            return Err(format!("`{tool}` not found; install iproute2 and iptables"));
        }
    }
    Ok(())
}

/// Run `f` on a thread that has entered namespace `ns`: sockets it creates
/// live in `ns` for good (and may be used from any thread afterwards).
pub fn in_ns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    let file = std::fs::File::open(format!("/run/netns/{ns}"))
        .unwrap_or_else(|e| panic!("open /run/netns/{ns}: {e}"));
    std::thread::scope(|s| {
        s.spawn(move || {
            // SAFETY: setns only changes this (scoped, short-lived) thread's
            // network namespace; `file` is a valid open namespace file.
            let rc = unsafe { setns(file.as_raw_fd(), CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns({ns}): {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .expect("thread in namespace panicked")
    })
}

/// GET `path` from `addr` as seen from namespace `ns` (HTTP/1.0); the body
/// of a 200 response.
pub fn http_get(ns: &str, addr: SocketAddr, path: &str) -> Option<String> {
    let s = in_ns(ns, || {
        TcpStream::connect_timeout(&addr, Duration::from_secs(1))
    })
    .ok()?;
    crate::cluster::http_exchange(s, addr, path)
}

pub use crate::cluster::wait_until;

fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn short(program: &str) -> &str {
    program.rsplit('/').next().unwrap_or(program)
}

fn base36(mut n: u64) -> String {
    const DIGITS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).unwrap()
}
