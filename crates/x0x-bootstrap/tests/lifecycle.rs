//! Process lifecycle: systemd notification, shutdown, provisioned keys.

use x0x_testkit as common;

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use common::Cluster;

fn recv_state(sock: &UnixDatagram) -> String {
    let mut buf = [0u8; 512];
    let n = sock
        .recv(&mut buf)
        .expect("a notification within the timeout");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn notifies_systemd_ready_once_bound_and_stopping_on_sigterm() {
    let mut c = Cluster::full_mesh(51, 1, "");
    let sock_path = c.dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    c.nodes[0].start_with_env(&[("NOTIFY_SOCKET", sock_path.as_os_str())]);

    assert!(recv_state(&sock).contains("READY=1"));
    // READY means bound: health answers without any wait.
    assert!(
        c.nodes[0].health().is_some(),
        "health must be up when READY=1 is sent"
    );

    let sent = Instant::now();
    c.nodes[0].signal("TERM");
    assert!(recv_state(&sock).contains("STOPPING=1"));
    let status = c.nodes[0]
        .wait_exit(Duration::from_secs(5))
        .expect("exits within 5 s");
    assert!(status.success(), "{status}");
    eprintln!("stopped {:?} after SIGTERM", sent.elapsed());
}

#[test]
fn a_provisioned_key_file_sets_the_identity_and_nothing_is_generated() {
    let mut c = Cluster::full_mesh(52, 1, "");
    let identity = x0x::Identity::generate().unwrap();
    let key = c.dir.path().join("provisioned.pem");
    std::fs::write(&key, identity.to_pem()).unwrap();
    let config = std::fs::read_to_string(&c.nodes[0].config).unwrap();
    let config = format!("key_file = \"{}\"\n{config}", key.display());
    std::fs::write(&c.nodes[0].config, config).unwrap();
    c.nodes[0].start();
    assert!(common::wait_until(Duration::from_secs(10), || c.nodes[0]
        .health()
        .is_some()));
    assert_eq!(
        c.nodes[0].peer_id().unwrap(),
        identity.peer_id().to_string()
    );
    assert!(!c.dir.path().join("state0/node.key").exists());
}

#[test]
fn a_missing_provisioned_key_is_an_error_not_a_new_identity() {
    let mut c = Cluster::full_mesh(53, 1, "");
    let config = std::fs::read_to_string(&c.nodes[0].config).unwrap();
    let missing = c.dir.path().join("missing.pem");
    std::fs::write(
        &c.nodes[0].config,
        format!("key_file = \"{}\"\n{config}", missing.display()),
    )
    .unwrap();
    c.nodes[0].start();
    let status = c.nodes[0]
        .wait_exit(Duration::from_secs(10))
        .expect("exits");
    assert!(!status.success());
    assert!(!missing.exists());
    let log = std::fs::read_to_string(&c.nodes[0].log).unwrap();
    assert!(log.contains("missing.pem"), "{log}");
}
