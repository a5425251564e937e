//! `x0x-bootstrap --check` and bad input: clear errors, exit 78, nothing bound.

use x0x_testkit as common;

use std::process::{Command, Output};

fn run(args: &[&str], toml: &str) -> (Output, std::path::PathBuf, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.toml");
    std::fs::write(&path, toml).unwrap();
    let out = Command::new(common::bootstrap_bin())
        .args(args)
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    (out, path, dir)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn check_accepts_a_valid_file_and_prints_effective_config() {
    let (out, _, _dir) = run(
        &["--check"],
        "peers = [\"198.51.100.7:12000\", \"boot.example.org:12000\"]\n[roles]\nrelay = false\n",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    // Effective config includes defaults the file did not set.
    assert!(text.contains("listen = \"[::]:12000\""), "{text}");
    assert!(text.contains("relay = false"), "{text}");
    assert!(text.contains("127.0.0.1:12600"), "{text}");
    assert!(text.contains("boot.example.org:12000"), "{text}");
}

#[test]
fn check_rejects_an_unknown_key_naming_file_key_and_line() {
    let (out, path, _dir) = run(
        &["--check"],
        "listen = \"[::]:12000\"\n\n[roles]\ncoordinatr = true\n",
    );
    assert_eq!(out.status.code(), Some(78));
    let err = stderr(&out);
    assert!(err.contains(&format!("{}:4", path.display())), "{err}");
    assert!(err.contains("coordinatr"), "{err}");
}

#[test]
fn check_rejects_a_bad_address() {
    let (out, path, _dir) = run(&["--check"], "peers = [\"198.51.100.7\"]\n");
    assert_eq!(out.status.code(), Some(78));
    let err = stderr(&out);
    assert!(err.contains(&format!("{}:1", path.display())), "{err}");
    assert!(
        err.contains("198.51.100.7") && err.contains("port"),
        "{err}"
    );

    let (out, _, _dir) = run(&["--check"], "listen = \"300.1.1.1:12000\"\n");
    assert_eq!(out.status.code(), Some(78));
    assert!(stderr(&out).contains(":1"), "{}", stderr(&out));
}

#[test]
fn check_rejects_a_non_loopback_health_address() {
    let (out, path, _dir) = run(&["--check"], "[health]\nlisten = \"0.0.0.0:12600\"\n");
    assert_eq!(out.status.code(), Some(78));
    let err = stderr(&out);
    assert!(err.contains(&format!("{}:2", path.display())), "{err}");
    assert!(
        err.contains("health.listen") && err.contains("loopback"),
        "{err}"
    );
}

#[test]
fn a_missing_config_file_is_a_config_error() {
    let out = Command::new(common::bootstrap_bin())
        .args(["--check", "--config", "/nonexistent/x0x.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    assert!(stderr(&out).contains("/nonexistent/x0x.toml"));
}

/// A bad file must not start anything: no state directory, no key, no socket.
#[test]
fn running_with_a_bad_config_starts_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let toml = format!(
        "listen = \"127.0.0.1:0\"\nstate_dir = \"{}\"\n[health]\nlisten = \"127.0.0.1:0\"\nbogus = 1\n",
        state.display()
    );
    let path = dir.path().join("node.toml");
    std::fs::write(&path, toml).unwrap();
    let out = Command::new(common::bootstrap_bin())
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    assert!(stderr(&out).contains("bogus"));
    assert!(!state.exists(), "a rejected config must not create state");
}

#[test]
fn check_warns_when_the_relay_cannot_carry_agent_connections() {
    let (out, _, _dir) = run(&["--check"], "[limits]\nrelay_datagram_bytes = 1000\n");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("# warning: limits.relay_datagram_bytes = 1000"),
        "{text}"
    );
    let (out, _, _dir) = run(&["--check"], "");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("warning"));
}

#[test]
fn check_touches_no_state() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let (out, _, _d) = run(
        &["--check"],
        &format!("state_dir = \"{}\"\n", state.display()),
    );
    assert!(out.status.success());
    assert!(!state.exists());
}

#[test]
fn a_corrupt_key_stops_the_node_and_is_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("node.key");
    std::fs::write(&key, "garbage").unwrap();
    let toml = format!(
        "listen = \"127.0.0.1:0\"\nstate_dir = \"{}\"\n[health]\nlisten = \"127.0.0.1:0\"\n",
        dir.path().display()
    );
    let path = dir.path().join("node.toml");
    std::fs::write(&path, toml).unwrap();
    let out = Command::new(common::bootstrap_bin())
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("node.key") && err.contains("refusing"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&key).unwrap(), "garbage");
}

#[test]
fn help_explains_the_node() {
    let out = Command::new(common::bootstrap_bin())
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for word in [
        "reflector",
        "coordinator",
        "relay",
        "--check",
        "--config",
        "--key-file",
        "78",
    ] {
        assert!(text.contains(word), "--help lacks {word}:\n{text}");
    }
}

#[test]
fn print_peer_id_reads_an_existing_key_and_never_creates_one() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("node.key");
    // RFC 8410's test key, as `openssl genpkey -algorithm ed25519` writes it.
    std::fs::write(
        &key,
        "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEINTuctv5E1hK1bbY8fdp+K06/nwoy/HU++CXqI9EdVhC\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let out = Command::new(common::bootstrap_bin())
        .args(["--print-peer-id", "--key-file"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "19bf44096984cdfe8541bac167dc3b96c85086aa30b6b6cb0c5c38ad703166e1"
    );
    // Through a config's state_dir: no key there yet, so an error, and none created.
    let (out, _, cfg_dir) = run(
        &["--print-peer-id"],
        &format!("state_dir = \"{}\"\n", dir.path().join("state").display()),
    );
    assert_eq!(out.status.code(), Some(74), "{}", stderr(&out));
    assert!(stderr(&out).contains("node.key"), "{}", stderr(&out));
    assert!(!dir.path().join("state").join("node.key").exists());
    drop(cfg_dir);
}

#[test]
fn check_warns_that_an_unpinned_mesh_is_unpinned() {
    let id = "19bf44096984cdfe8541bac167dc3b96c85086aa30b6b6cb0c5c38ad703166e1";
    let (out, _, _dir) = run(
        &["--check"],
        &format!("peers = [\"198.51.100.7:12000\", \"{id}@198.51.100.8:12000\"]\n"),
    );
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("# warning: the mesh is unpinned: 198.51.100.7:12000 ("),
        "{text}"
    );
    assert!(!text.contains("unpinned: 198.51.100.7:12000, "), "{text}");
    let (out, _, _dir) = run(
        &["--check"],
        &format!("peers = [\"{id}@198.51.100.8:12000\"]\n"),
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("unpinned"));
}

/// RUST_LOG overrides `log.level` and is checked the same way: a directive
/// with a leading space and a non-ASCII character used to panic inside
/// tracing-subscriber at startup (exit 101). Now: exit 78 with the reason,
/// before anything is bound.
#[test]
fn a_bad_rust_log_is_a_config_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.toml");
    let state = dir.path().join("state");
    std::fs::write(
        &path,
        format!(
            "listen = \"127.0.0.1:0\"\nstate_dir = {:?}\n[health]\nlisten = \"127.0.0.1:0\"\n[tcp]\nlisten = \"\"\n",
            state.display().to_string()
        ),
    )
    .unwrap();
    let out = Command::new(common::bootstrap_bin())
        .arg("--config")
        .arg(&path)
        .env("RUST_LOG", "info, é=debug")
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(78), "{err}");
    assert!(err.contains("RUST_LOG"), "{err}");
    assert!(err.contains("whitespace"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        !state.exists(),
        "a refused start created {}",
        state.display()
    );
}
