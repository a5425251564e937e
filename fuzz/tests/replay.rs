//! Replays every committed fuzz input through its target on the stable
//! toolchain: `seeds/<target>/` (real traffic, configs, keys),
//! `regressions/<target>/` (minimized crashes, once fixed) and, when a
//! campaign has left one, the working corpus `corpus/<target>/`.
//!
//! Run by `scripts/fuzz.sh replay` (and so by `scripts/test.sh`):
//! `cargo test --manifest-path fuzz/Cargo.toml --no-default-features --release`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use x0x_fuzz::{ArbMessage, MESSAGE_KINDS, TARGETS};

/// The longest one input may take (debug build). Every committed input takes
/// milliseconds; a slow parse is a bug (libFuzzer reports it as a timeout).
const SLOW: Duration = Duration::from_secs(5);

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file())
            .filter(|p| {
                !p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            })
            .collect(),
        Err(_) => Vec::new(),
    };
    out.sort();
    out
}

fn replay(name: &str) {
    let target = TARGETS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, f)| *f)
        .expect("a known target");
    let seeds = files(&root().join("seeds").join(name));
    assert!(
        !seeds.is_empty(),
        "no seeds for {name} in fuzz/seeds/{name}: run scripts/fuzz.sh gen"
    );
    let mut inputs = seeds.clone();
    inputs.extend(files(&root().join("regressions").join(name)));
    inputs.extend(files(&root().join("corpus").join(name)));

    let started = Instant::now();
    let mut failed = Vec::new();
    // Silence the default hook's per-panic backtrace; report the file instead.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    for path in &inputs {
        let data = std::fs::read(path).expect("readable input");
        let one = Instant::now();
        let result = std::panic::catch_unwind(|| target(&data));
        let took = one.elapsed();
        if took > SLOW {
            failed.push(format!(
                "{}: took {:.1} s (limit {} s)",
                path.display(),
                took.as_secs_f64(),
                SLOW.as_secs()
            ));
        }
        if let Err(e) = result {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            failed.push(format!("{}: {msg}", path.display()));
        }
    }
    std::panic::set_hook(hook);
    println!(
        "{name}: {} inputs ({} seeds) replayed in {:.2} s",
        inputs.len(),
        seeds.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        failed.is_empty(),
        "{} of {} inputs fail target {name}:\n{}",
        failed.len(),
        inputs.len(),
        failed.join("\n")
    );
}

#[test]
fn replay_frame() {
    replay("frame");
}

#[test]
fn replay_decode() {
    replay("decode");
}

#[test]
fn replay_message() {
    replay("message");
}

#[test]
fn replay_relay() {
    replay("relay");
}

#[test]
fn replay_config() {
    replay("config");
}

#[test]
fn replay_pem() {
    replay("pem");
}

/// The recorded traffic still speaks the current wire format: every frame
/// body the generator captured decodes, and together they cover every
/// message kind. (If the format changed on purpose, regenerate the seeds
/// with `scripts/fuzz.sh gen`.)
#[test]
#[ignore = "seeds were recorded with wire v1; port corpus-gen to wire v2 and regenerate (docs/FUZZING.md)"]
fn recorded_traffic_decodes_and_covers_every_message_kind() {
    let mut seen = std::collections::BTreeSet::new();
    let mut stale = Vec::new();
    for path in files(&root().join("seeds").join("decode")) {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !name.starts_with("traffic-") {
            continue;
        }
        match x0x_proto::wire::decode(&std::fs::read(&path).unwrap()) {
            Ok(m) => {
                seen.insert(ArbMessage::kind_of(&m));
            }
            Err(e) => stale.push(format!("{name}: {e}")),
        }
    }
    assert!(
        stale.is_empty(),
        "recorded frames no longer decode (wire format changed? run scripts/fuzz.sh gen):\n{}",
        stale.join("\n")
    );
    let missing: Vec<_> = MESSAGE_KINDS
        .iter()
        .filter(|k| !seen.contains(*k))
        .collect();
    assert!(
        missing.is_empty(),
        "recorded traffic has no {missing:?} frame"
    );
}

/// Found by the `config` target: a value that parses but fails validation
/// names the line that set it, as every TOML error does, also when the table
/// header carries a comment (`[limits] # ...`), when the table is written
/// inline (`limits = { ... }`), and when the key it names was left at its
/// default but another key, set on a line, made it invalid. (`find_key_line`
/// used to scan lines by hand and missed all three.)
#[test]
fn config_validation_errors_name_their_line() {
    use x0x_bootstrap::config::{Config, ConfigError};
    let cases: &[(&str, usize)] = &[
        ("[limits] # connection limits\nmax_connections = 0\n", 2),
        (
            "[roles]\nrelay = true\n[limits] # x\nrelay_circuits = 0\n",
            4,
        ),
        ("limits = { accept_per_sec = 0 }\n", 1),
        ("[transport]\nidle_timeout_ms = 1500\n", 2),
    ];
    let mut wrong = Vec::new();
    for (text, want) in cases {
        match Config::parse(text, Path::new("node.toml")) {
            Err(ConfigError::Invalid { line, .. }) if line == Some(*want) => {}
            other => wrong.push(format!("{text:?}: want line {want}, got {other:?}")),
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
