//! `x0x-bootstrap`: a public bootstrap node of the x0x network.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use tracing::{error, info, warn};

use x0x_bootstrap::Node;
use x0x_bootstrap::config::{Config, EX_CONFIG, LogFormat};
use x0x_proto::Identity;

/// Run an x0x bootstrap node: a QUIC (UDP) endpoint that meshes with the
/// other bootstrap nodes and serves agents as reflector (tells them their
/// public address), coordinator (directory and introductions) and relay
/// (forwards their end-to-end encrypted datagrams).
///
/// Health JSON and Prometheus metrics are served on `health.listen`
/// (default 127.0.0.1:12600) at /health and /metrics. SIGTERM or SIGINT
/// closes every connection and exits 0.
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Args {
    /// The TOML configuration file (see the README for every key).
    #[arg(
        long,
        short,
        value_name = "FILE",
        env = "X0X_CONFIG",
        required_unless_present = "print_peer_id"
    )]
    config: Option<PathBuf>,

    /// Validate the configuration, print the effective settings and exit:
    /// 0 if valid, 78 (EX_CONFIG) if not. Binds nothing, touches no state.
    #[arg(long)]
    check: bool,

    /// Node key (PKCS#8 PEM); overrides `key_file`. Use with systemd
    /// credentials: `--key-file %d/node-key`.
    #[arg(long, value_name = "PATH")]
    key_file: Option<PathBuf>,

    /// Print the peer id of the node's key (`--key-file`, or the key the
    /// configuration names) and exit, to fill `peer_id` in
    /// hosts/inventory.toml. Reads the key; never creates one.
    #[arg(long)]
    print_peer_id: bool,
}

/// Exit code for an internal failure (`EX_SOFTWARE`).
const EX_SOFTWARE: u8 = 70;
/// Exit code for an unusable key or state directory (`EX_CANTCREAT`/`EX_NOPERM` family).
const EX_IOERR: u8 = 74;
/// How long a graceful shutdown may take before we give up waiting.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

fn main() -> ExitCode {
    let args = Args::parse();
    if args.print_peer_id {
        return print_peer_id(&args);
    }
    let Some(config_path) = args.config.clone() else {
        eprintln!("x0x-bootstrap: --config is required");
        return ExitCode::from(EX_CONFIG as u8);
    };
    let mut config = match Config::load(&config_path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("x0x-bootstrap: configuration error: {e}");
            return ExitCode::from(EX_CONFIG as u8);
        }
    };
    if let Some(key) = args.key_file {
        config.key_file = Some(key);
    }
    if args.check {
        println!("# {}: valid", config_path.display());
        for w in config.warnings() {
            println!("# warning: {w}");
        }
        print!("{}", config.to_toml());
        return ExitCode::SUCCESS;
    }
    // RUST_LOG overrides log.level; it is checked the same way, so a bad one
    // is a clear error rather than a panic inside tracing-subscriber.
    if let Some(env) = std::env::var_os("RUST_LOG") {
        let checked = env
            .to_str()
            .ok_or_else(|| format!("{env:?} is not valid UTF-8"))
            .and_then(x0x_bootstrap::config::check_log_filter);
        if let Err(e) = checked {
            eprintln!("x0x-bootstrap: environment variable RUST_LOG (it overrides log.level): {e}");
            return ExitCode::from(EX_CONFIG as u8);
        }
    }
    init_logging(&config);
    for w in config.warnings() {
        warn!("{w}");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            error!("cannot start the async runtime: {e}");
            return ExitCode::from(EX_SOFTWARE);
        }
    };
    let code = runtime.block_on(run(config));
    // Do not wait for blocking work (a DNS lookup) beyond the shutdown budget.
    runtime.shutdown_timeout(Duration::from_millis(500));
    code
}

/// `--print-peer-id`: the id of an existing key.
fn print_peer_id(args: &Args) -> ExitCode {
    let path = match (&args.key_file, &args.config) {
        (Some(k), _) => k.clone(),
        (None, Some(c)) => match Config::load(c) {
            Ok(config) => config.key_path(),
            Err(e) => {
                eprintln!("x0x-bootstrap: configuration error: {e}");
                return ExitCode::from(EX_CONFIG as u8);
            }
        },
        (None, None) => {
            eprintln!("x0x-bootstrap: --print-peer-id needs --key-file or --config");
            return ExitCode::from(EX_CONFIG as u8);
        }
    };
    match Identity::load(&path) {
        Ok(id) => {
            println!("{}", id.peer_id());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("x0x-bootstrap: {e}");
            ExitCode::from(EX_IOERR)
        }
    }
}

fn init_logging(config: &Config) {
    // Without regexes, as config.rs validates it (their compilation is exponential).
    let filters = || tracing_subscriber::EnvFilter::builder().with_regex(false);
    // Both were checked (check_log_filter) before this point.
    let filter = filters()
        .try_from_env()
        .unwrap_or_else(|_| filters().parse_lossy(&config.log.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn load_identity(config: &Config) -> Result<Identity, String> {
    if let Some(path) = &config.key_file {
        let identity = Identity::load(path).map_err(|e| e.to_string())?;
        info!(key = %path.display(), "loaded provisioned node key");
        return Ok(identity);
    }
    std::fs::create_dir_all(&config.state_dir).map_err(|e| {
        format!(
            "cannot create state_dir {}: {e}",
            config.state_dir.display()
        )
    })?;
    let path = config.key_path();
    let (identity, created) = Identity::load_or_generate(&path).map_err(|e| e.to_string())?;
    if created {
        info!(key = %path.display(), "generated a new node key");
    }
    Ok(identity)
}

async fn run(config: Config) -> ExitCode {
    let identity = match load_identity(&config) {
        Ok(i) => i,
        Err(e) => {
            error!("{e}");
            return ExitCode::from(EX_IOERR);
        }
    };
    // Install signal handlers before anything is bound, so no signal is lost.
    let mut sigterm = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
    {
        Ok(s) => s,
        Err(e) => {
            error!("cannot install SIGTERM handler: {e}");
            return ExitCode::from(EX_SOFTWARE);
        }
    };
    let tcp = match inherited_tcp_listener() {
        Ok(l) => l,
        Err(e) => {
            error!("{e}");
            return ExitCode::from(EX_SOFTWARE);
        }
    };
    let node = match Node::start_with_tcp(config, identity, tcp).await {
        Ok(n) => n,
        Err(e) => {
            error!("cannot start: {e}");
            return ExitCode::from(EX_SOFTWARE);
        }
    };
    notify(&[sd_notify::NotifyState::Ready]);
    let signal = tokio::select! {
        _ = sigterm.recv() => "SIGTERM",
        r = tokio::signal::ctrl_c() => {
            if let Err(e) = r { warn!("SIGINT handler failed: {e}") }
            "SIGINT"
        }
    };
    info!(signal, "graceful shutdown requested");
    notify(&[sd_notify::NotifyState::Stopping]);
    node.shutdown(SHUTDOWN_GRACE).await;
    ExitCode::SUCCESS
}

/// A TCP listener passed by systemd socket activation with
/// `FileDescriptorName=tcp` (so the node needs no privilege for port 443).
fn inherited_tcp_listener() -> Result<Option<std::net::TcpListener>, String> {
    if std::env::var_os("LISTEN_FDS").is_none() {
        return Ok(None);
    }
    let fds = sd_notify::listen_fds_with_names()
        .map_err(|e| format!("cannot read the sockets systemd passed: {e}"))?;
    for (fd, name) in fds {
        if name == "tcp" {
            use std::os::fd::FromRawFd;
            // SAFETY: systemd passed us this descriptor (LISTEN_FDS for our
            // pid) as a listening TCP socket named "tcp"; we take ownership once.
            let l = unsafe { std::net::TcpListener::from_raw_fd(fd) };
            info!(addr = ?l.local_addr().ok(), "using the TCP relay socket systemd passed");
            return Ok(Some(l));
        }
    }
    Ok(None)
}

/// Tell systemd our state, when run under `Type=notify`.
fn notify(state: &[sd_notify::NotifyState<'_>]) {
    if std::env::var_os("NOTIFY_SOCKET").is_some()
        && let Err(e) = sd_notify::notify(state)
    {
        warn!("sd_notify failed: {e}");
    }
}
