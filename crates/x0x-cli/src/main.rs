//! `x0x`: the agent command line, for people and for scripts.
//!
//! Every command prints text for people, or with `--json` one JSON object
//! per line (the keys are a stable contract: see SKILL.md). Progress goes
//! to stderr in text mode only.

mod cmd;
mod net;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use x0x::{AgentError, PeerId};

use net::{KeyArgs, NetArgs};

/// An x0x agent: find out how this machine sees the network, wait for
/// other agents, or connect to one by its peer id (directly through NATs
/// when possible, otherwise through a bootstrap node's relay, end-to-end
/// encrypted either way; a relayed connection moves to direct as soon as
/// a direct path works).
///
/// Exit codes: 0 success, 1 failure (peer unreachable, not found, ...),
/// 2 usage, 69 no bootstrap node reachable.
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print this agent's peer id.
    Id {
        #[command(flatten)]
        key: KeyArgs,
        /// Print JSON: {"peer_id": ...}.
        #[arg(long)]
        json: bool,
    },
    /// Report the public address bootstrap nodes observe, whether the NAT
    /// mapping is the same toward every node, and the RTT to each.
    Netcheck(NetArgs),
    /// Join and wait for other agents; echo back whatever they send.
    Listen(NetArgs),
    /// Connect to an agent, send data, read the echo, print the path taken
    /// and every change of path.
    Connect(cmd::connect::ConnectArgs),
    /// The whole fleet in one command: ask every bootstrap node (all at
    /// once, over QUIC) for its version, uptime and view of each mesh
    /// peer; print a row per node, the all-pairs matrix of mesh links and
    /// what is wrong. Exit 0 healthy, 1 not, 69 no node answered.
    /// `--prometheus ADDR` keeps probing and serves the results as metrics.
    Status(cmd::status::StatusArgs),
    /// Look an agent up in the directory.
    Lookup {
        /// The peer id to look up (64 hex characters).
        peer: PeerId,
        #[command(flatten)]
        net: NetArgs,
    },
}

/// Exit code when no bootstrap node can be reached (`EX_UNAVAILABLE`).
const EX_UNAVAILABLE: u8 = 69;

/// `RUST_LOG`, or `warn` when it is unset or unusable (said on stderr).
/// Directives with whitespace around them are refused before
/// tracing-subscriber sees them: it misreads them, and panics when a
/// non-ASCII character follows (`info, é=debug`; found by fuzzing
/// x0x-bootstrap's `log.level`). Field values are literals, not regexes
/// (compiling those is exponential).
fn log_filter() -> tracing_subscriber::EnvFilter {
    let builder = || tracing_subscriber::EnvFilter::builder().with_regex(false);
    let fallback = || builder().parse_lossy("warn");
    let Some(env) = std::env::var_os("RUST_LOG") else {
        return fallback();
    };
    let Some(text) = env.to_str() else {
        eprintln!("x0x: RUST_LOG is not valid UTF-8; logging at warn");
        return fallback();
    };
    if let Some(d) = text.split(',').find(|d| d.trim().len() != d.len()) {
        eprintln!(
            "x0x: RUST_LOG directive {d:?} has whitespace around it (write e.g. \"info,x0x=debug\"); logging at warn"
        );
        return fallback();
    }
    builder().parse(text).unwrap_or_else(|e| {
        eprintln!("x0x: RUST_LOG {text:?} is not a valid filter ({e}); logging at warn");
        fallback()
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(log_filter())
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("x0x: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Command::Status(args) = cli.command {
        return runtime.block_on(cmd::status::run(args));
    }
    let result = runtime.block_on(async {
        match cli.command {
            Command::Id { key, json } => cmd::id(&key, json),
            Command::Netcheck(net) => cmd::netcheck::run(net).await,
            Command::Listen(net) => cmd::listen::run(net).await,
            Command::Connect(args) => cmd::connect::run(args).await,
            Command::Lookup { peer, net } => cmd::lookup(peer, net).await,
            Command::Status(_) => unreachable!("handled above"),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("x0x: {e}");
            match e {
                AgentError::NoBootstrapReachable { .. } => ExitCode::from(EX_UNAVAILABLE),
                _ => ExitCode::FAILURE,
            }
        }
    }
}
