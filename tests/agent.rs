//! The agent SDK's join: parallel, retried, honest about failure.

use x0x_testkit as common;

use std::time::{Duration, Instant};

use common::{Cluster, agent_network, blocking};
use x0x::{Agent, AgentError, NodeState, PeerSpec};

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
    let agent = Agent::builder().network(cfg).build().unwrap();
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
        .push("127.62.0.200:12000".parse::<PeerSpec>().unwrap());
    cfg.join_timeout = Duration::from_secs(2);
    let agent = Agent::builder().network(cfg).build().unwrap();
    let report = agent.join_network().await.unwrap();
    assert_eq!(report.connected.len(), 1);
    // The dead address is reported as still being tried, not waited for.
    assert!(report.failed.is_empty(), "{report:?}");
    assert_eq!(report.pending, vec!["127.62.0.200:12000".to_string()]);
    assert_eq!(report.registered.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_retries_until_a_late_node_comes_up() {
    let mut c = Cluster::full_mesh(63, 1, "");
    let agent = Agent::builder()
        .network(agent_network(63, 1, &[&c.nodes[0]]))
        .build()
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

/// Six nodes, some of them down: the join returns about as fast as with
/// all six up, long before a dial to a dead node could time out, and the
/// dead nodes are reported as still being tried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_with_nodes_down_returns_in_about_the_time_with_all_up() {
    let mut c = Cluster::full_mesh(65, 6, "");
    c.start_all();
    assert!(c.wait_all_report(&[0, 1, 2, 3, 4, 5], 5, Duration::from_secs(20)));
    let all: Vec<PeerSpec> = c.nodes.iter().map(|n| n.quic.into()).collect();
    let join_time = |host: u8| {
        let mut cfg = agent_network(65, host, &[]);
        cfg.bootstrap_peers = all.clone();
        cfg.join_grace = Duration::from_millis(150);
        async move {
            let agent = Agent::builder().network(cfg).build().unwrap();
            let started = Instant::now();
            let report = agent.join_network().await.unwrap();
            let took = started.elapsed();
            (agent, report, took)
        }
    };
    let (_a, all_up, t_all) = join_time(1).await;
    assert_eq!(all_up.connected.len(), 6);

    let c = blocking(move || {
        let mut c = c;
        c.nodes[5].kill9();
        c
    })
    .await;
    let (a1, one_down, t_one) = join_time(2).await;
    assert_eq!(one_down.connected.len(), 5, "{one_down:?}");
    assert_eq!(one_down.pending.len(), 1, "{one_down:?}");
    // The dead node is still being tried in the background.
    let status = a1.bootstrap_status();
    assert_eq!(status.len(), 6);
    assert!(
        status
            .iter()
            .any(|s| s.addr.contains("127.65.0.6") && !matches!(s.state, NodeState::Connected(_))),
        "{status:?}"
    );

    let mut c = c;
    let c = blocking(move || {
        c.nodes[3].kill9();
        c.nodes[4].kill9();
        c
    })
    .await;
    let (_a3, three_down, t_three) = join_time(3).await;
    assert_eq!(three_down.connected.len(), 3, "{three_down:?}");
    eprintln!(
        "join: all up {:.0} ms, one down {:.0} ms, three down {:.0} ms",
        t_all.as_secs_f64() * 1e3,
        t_one.as_secs_f64() * 1e3,
        t_three.as_secs_f64() * 1e3
    );
    // "Well under the single-node dial timeout" (5 s; the join timeout is 10 s):
    // a generous correctness bound, not a speed assertion.
    for t in [t_one, t_three] {
        assert!(
            t < Duration::from_secs(2),
            "join took {t:?} with nodes down"
        );
    }
    // A lookup of a peer nobody knows answers "not found" from the live nodes,
    // without waiting for the dead ones.
    let started = Instant::now();
    let stranger = x0x::Identity::generate().unwrap().peer_id();
    assert_eq!(a1.lookup(stranger).await.unwrap(), None);
    assert!(started.elapsed() < Duration::from_secs(2));
    drop(c);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_bootstrap_node_with_another_key_is_refused() {
    let mut c = Cluster::full_mesh(66, 1, "");
    c.start_all();
    let mut cfg = agent_network(66, 1, &[&c.nodes[0]]);
    let wrong = x0x::Identity::generate().unwrap().peer_id();
    cfg.bootstrap_peers = vec![format!("{wrong}@{}", c.nodes[0].quic).parse().unwrap()];
    cfg.join_timeout = Duration::from_secs(2);
    let agent = Agent::builder().network(cfg).build().unwrap();
    let err = agent.join_network().await.unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(err, AgentError::NoBootstrapReachable { .. }),
        "{text}"
    );
    assert!(text.contains("not the pinned"), "{text}");
    // The right key is accepted.
    let id = blocking({
        let c = std::sync::Arc::new(c);
        move || (c.nodes[0].peer_id(), c)
    })
    .await;
    let (right, _c) = id;
    let mut cfg = agent_network(66, 2, &[]);
    cfg.bootstrap_peers = vec![
        format!("{}@127.66.0.1:12000", right.unwrap())
            .parse()
            .unwrap(),
    ];
    let agent = Agent::builder().network(cfg).build().unwrap();
    assert_eq!(agent.join_network().await.unwrap().connected.len(), 1);
}

#[test]
fn build_outside_a_runtime_is_an_error_not_a_panic() {
    let err = Agent::builder()
        .network(agent_network(67, 1, &[]))
        .build()
        .unwrap_err();
    assert!(matches!(err, AgentError::NoRuntime), "{err}");
}
