//! Replays every committed fuzz input through its target on the stable
//! toolchain: `seeds/<target>/` (generated samples of every message kind,
//! hand-made inputs, configs, keys),
//! `regressions/<target>/` (minimized crashes, once fixed) and, when a
//! campaign has left one, the working corpus `corpus/<target>/`.
//!
//! Run by `scripts/fuzz.sh replay` (and so by `scripts/test.sh`):
//! `cargo test --manifest-path fuzz/Cargo.toml --no-default-features --release`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use x0x_fuzz::{ArbMessage, MESSAGE_KINDS, TARGETS, seed_files};

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

/// The generated seeds are current: `seeds/decode/sample-*` holds one frame
/// body of every message kind, each decodes with today's wire format to a
/// message of the kind its name says, and every generated seed file
/// (`x0x_fuzz::seed_files`) is committed byte for byte. (After a wire change:
/// `scripts/fuzz.sh gen`, then commit the seeds.)
#[test]
fn seeds_are_current_and_cover_every_message_kind() {
    let mut seen = std::collections::BTreeSet::new();
    let mut wrong = Vec::new();
    for path in files(&root().join("seeds").join("decode")) {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let Some(kind) = name.strip_prefix("sample-") else {
            continue;
        };
        match x0x_proto::wire::decode(&std::fs::read(&path).unwrap()) {
            Ok(m) if ArbMessage::kind_of(&m) == kind => {
                seen.insert(kind.to_string());
            }
            Ok(m) => wrong.push(format!("{name}: decodes to a {}", ArbMessage::kind_of(&m))),
            Err(e) => wrong.push(format!("{name}: {e}")),
        }
    }
    for (rel, want) in seed_files() {
        match std::fs::read(root().join("seeds").join(&rel)) {
            Ok(have) if have == want => {}
            Ok(_) => wrong.push(format!(
                "seeds/{rel}: differs from what the generator makes"
            )),
            Err(e) => wrong.push(format!("seeds/{rel}: {e}")),
        }
    }
    assert!(
        wrong.is_empty(),
        "stale seeds (run scripts/fuzz.sh gen):\n{}",
        wrong.join("\n")
    );
    let missing: Vec<_> = MESSAGE_KINDS
        .iter()
        .filter(|k| !seen.contains(**k))
        .collect();
    assert!(missing.is_empty(), "no seed of kind {missing:?}");
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
