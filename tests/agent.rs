//! The agent SDK's join: parallel, retried, honest about failure.

use x0x_testkit as common;

use std::time::{Duration, Instant};

use common::{Cluster, agent_network, blocking};
use x0x::{Agent, AgentError, PeerAddr};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_fails_when_no_bootstrap_node_answers() {
    common::require_isolated_network();
    let mut cfg = agent_network(61, 1, &[]);
    // Nothing listens on these loopback addresses.
    cfg.bootstrap_peers = vec![
        "127.61.0.1:12000".parse().unwrap(),
        "127.61.0.2:12000".parse().unwrap(),
    ];
    cfg.join_timeout = Duration::from_secs(2);
    let agent = Agent::builder().network(cfg).build().await.unwrap();
    let started = Instant::now();
    let err = agent.join_network().await.unwrap_err();
    assert!(
        matches!(err, AgentError::NoBootstrapReachable { ref failures } if failures.len() == 2),
        "{err}"
    );
    assert!(err.to_string().contains("127.61.0.1:12000"), "{err}");
    // Bounded by the join timeout plus one dial, not forever.
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_succeeds_with_the_nodes_that_answer_and_reports_the_rest() {
    let mut c = Cluster::full_mesh(62, 1, "");
    c.start_all();
    let mut cfg = agent_network(62, 1, &[&c.nodes[0]]);
    cfg.bootstrap_peers
        .push("127.62.0.200:12000".parse::<PeerAddr>().unwrap());
    cfg.join_timeout = Duration::from_secs(2);
    let agent = Agent::builder().network(cfg).build().await.unwrap();
    let report = agent.join_network().await.unwrap();
    assert_eq!(report.connected.len(), 1);
    assert_eq!(report.failed.len(), 1);
    assert!(report.failed[0].contains("127.62.0.200"));
    assert_eq!(report.registered.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_retries_until_a_late_node_comes_up() {
    let mut c = Cluster::full_mesh(63, 1, "");
    let agent = Agent::builder()
        .network(agent_network(63, 1, &[&c.nodes[0]]))
        .build()
        .await
        .unwrap();
    let join = tokio::spawn(async move {
        let r = agent.join_network().await;
        (agent, r)
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    c.nodes[0].start();
    let (_agent, report) = join.await.unwrap();
    assert_eq!(report.unwrap().connected.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_reconnects_and_registers_again_after_its_node_restarts() {
    let mut c = Cluster::full_mesh(64, 1, "");
    c.start_all();
    let (a, _) = common::joined_agent(64, 1, &[&c.nodes[0]]).await;
    let (b, _) = common::joined_agent(64, 2, &[&c.nodes[0]]).await;
    assert!(b.lookup(a.peer_id()).await.unwrap().is_some());

    // Restart the node: its directory is empty until agents come back.
    let c = blocking(move || {
        c.nodes[0].signal("TERM");
        c.nodes[0].wait_exit(Duration::from_secs(5)).unwrap();
        let mut c = c;
        c.nodes[0].start();
        c
    })
    .await;
    let mut found = false;
    for _ in 0..200 {
        if let Ok(Some(_)) = b.lookup(a.peer_id()).await {
            found = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(found, "A did not re-register after the node restarted");
    drop(c);
}
