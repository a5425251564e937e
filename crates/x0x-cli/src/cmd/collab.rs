//! Agents working together: `subscribe`, `publish`, `presence`, `find`,
//! `tasks` (the JSON keys are a contract; see SKILL.md and issue 14).

use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use serde_json::json;
use x0x::collab::crdt::{Status, TaskId, TaskView};
use x0x::{Agent, AgentError, PeerId};

use crate::net::{self, NetArgs};

#[derive(Debug, Args)]
pub struct SubscribeArgs {
    /// The topic (any string).
    pub topic: String,
    /// Exit after this many messages (default: run until interrupted).
    #[arg(long)]
    pub count: Option<u64>,
    #[command(flatten)]
    pub net: NetArgs,
}

#[derive(Debug, Args)]
pub struct PublishArgs {
    /// The topic.
    pub topic: String,
    /// The message (UTF-8 text); the second and later get ` #2`, ` #3`… appended.
    pub data: String,
    /// How many messages to publish.
    #[arg(long, default_value_t = 1)]
    pub count: u64,
    /// Pause between messages.
    #[arg(long, default_value_t = 0)]
    pub interval_ms: u64,
    /// How long to wait for a first member of the topic before publishing.
    #[arg(long, default_value_t = 10_000)]
    pub wait_ms: u64,
    #[command(flatten)]
    pub net: NetArgs,
}

#[derive(Debug, Args)]
pub struct PresenceArgs {
    /// The topic.
    pub topic: String,
    /// How long to listen to announcements before printing who is online.
    #[arg(long, default_value_t = 3_000)]
    pub wait_ms: u64,
    #[command(flatten)]
    pub net: NetArgs,
}

#[derive(Debug, Args)]
pub struct FindArgs {
    /// The peer id to find (64 hex characters).
    pub peer: PeerId,
    /// Connect to this agent first (the lookup asks the agent's direct
    /// peers, and theirs); repeatable.
    #[arg(long = "via", value_name = "PEER")]
    pub via: Vec<PeerId>,
    /// Join this topic first, so its gossip neighbours become direct peers.
    #[arg(long)]
    pub topic: Option<String>,
    #[command(flatten)]
    pub net: NetArgs,
}

#[derive(Debug, Args)]
pub struct TasksArgs {
    /// The topic whose task list to use.
    pub topic: String,
    #[command(subcommand)]
    pub action: TaskAction,
}

#[derive(Debug, Subcommand)]
pub enum TaskAction {
    /// Add a task: prints its id.
    Add {
        title: String,
        #[command(flatten)]
        sync: SyncArgs,
    },
    /// Claim a task by id.
    Claim {
        id: TaskId,
        #[command(flatten)]
        sync: SyncArgs,
    },
    /// Mark a task done.
    Done {
        id: TaskId,
        #[command(flatten)]
        sync: SyncArgs,
    },
    /// Print the list once it has synchronised with the topic's members.
    List {
        #[command(flatten)]
        sync: SyncArgs,
    },
}

#[derive(Debug, Args)]
pub struct SyncArgs {
    /// How long to synchronise with the topic's members before acting
    /// (and, after an edit, for the edit to reach them).
    #[arg(long, default_value_t = 2_000)]
    pub wait_ms: u64,
    #[command(flatten)]
    pub net: NetArgs,
}

/// Wait (at most `max`) until `topic` has a gossip neighbour.
async fn await_neighbour(agent: &Agent, topic: &str, max: Duration) -> Result<bool, AgentError> {
    let deadline = Instant::now() + max;
    loop {
        if !agent.topic_neighbors(topic).await?.is_empty() {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn ready(agent: &Agent, net: &NetArgs) {
    if net.json {
        println!(
            "{}",
            json!({"event": "ready", "peer_id": agent.peer_id().to_string()})
        );
    } else {
        println!("ready as {}", agent.peer_id());
    }
}

/// `x0x subscribe TOPIC`: one line per message. Also keeps a replica of
/// the topic's task list, so short-lived `x0x tasks` runs meet it.
pub async fn subscribe(args: SubscribeArgs) -> Result<(), AgentError> {
    let net = &args.net;
    let (agent, _) = net::join(net).await?;
    let mut sub = agent.subscribe(&args.topic).await?;
    let _tasks = agent.task_list(&args.topic).await?;
    ready(&agent, net);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| AgentError::Transfer(format!("cannot install SIGTERM handler: {e}")))?;
    let mut seen = 0u64;
    loop {
        let m = tokio::select! {
            m = sub.recv() => match m { Some(m) => m, None => break },
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
        };
        let data = String::from_utf8_lossy(&m.payload);
        let latency = m.received_ms as i64 - m.timestamp_ms as i64;
        if net.json {
            println!(
                "{}",
                json!({"event": "message", "topic": args.topic, "from": m.author.to_string(), "seq": m.seq, "data": data, "latency_ms": latency})
            );
        } else {
            println!("{} #{}: {data}", m.author, m.seq);
        }
        seen += 1;
        if args.count.is_some_and(|c| seen >= c) {
            break;
        }
    }
    agent.close().await;
    Ok(())
}

/// `x0x publish TOPIC DATA [--count N] [--interval-ms M]`.
pub async fn publish(args: PublishArgs) -> Result<(), AgentError> {
    let net = &args.net;
    let (agent, _) = net::join(net).await?;
    let _ = agent.subscribe(&args.topic).await?;
    if !await_neighbour(&agent, &args.topic, Duration::from_millis(args.wait_ms)).await? {
        net::progress(net, "no member of the topic found: publishing anyway");
    }
    for i in 1..=args.count {
        let data = if i == 1 {
            args.data.clone()
        } else {
            format!("{} #{i}", args.data)
        };
        agent.publish(&args.topic, data).await?;
        if args.interval_ms > 0 && i < args.count {
            tokio::time::sleep(Duration::from_millis(args.interval_ms)).await;
        }
    }
    // Let the tree carry them (and repair requests arrive) before leaving.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    if net.json {
        println!("{}", json!({"event": "published", "count": args.count}));
    } else {
        println!("published {} message(s) on {}", args.count, args.topic);
    }
    agent.close().await;
    Ok(())
}

/// `x0x presence TOPIC`: who is online in the topic.
pub async fn presence(args: PresenceArgs) -> Result<(), AgentError> {
    let net = &args.net;
    let (agent, _) = net::join(net).await?;
    let _ = agent.subscribe(&args.topic).await?;
    tokio::time::sleep(Duration::from_millis(args.wait_ms)).await;
    let mut online: Vec<String> = agent
        .presence(&args.topic)
        .await?
        .iter()
        .map(|p| p.to_string())
        .collect();
    online.sort();
    if net.json {
        println!(
            "{}",
            json!({"event": "presence", "topic": args.topic, "online": online})
        );
    } else {
        for p in &online {
            println!("{p}");
        }
    }
    agent.close().await;
    Ok(())
}

/// `x0x find PEER`: a friend-of-a-friend lookup. Exit 1 if not found.
pub async fn find(args: FindArgs) -> Result<(), AgentError> {
    let net = &args.net;
    let (agent, _) = net::join(net).await?;
    for v in &args.via {
        agent.connect(*v).await?;
    }
    if let Some(t) = &args.topic {
        let _ = agent.subscribe(t).await?;
        await_neighbour(&agent, t, Duration::from_secs(5)).await?;
    }
    // Neighbours exchange records as connections come up.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let found = agent.find(args.peer).await;
    let took = started.elapsed();
    agent.close().await;
    match found? {
        Some(r) => {
            if net.json {
                println!(
                    "{}",
                    json!({"event": "found", "found": true, "peer_id": r.body.peer.to_string(), "addrs": r.body.addrs, "took_ms": net::ms(took)})
                );
            } else {
                println!("{} at {:?}", r.body.peer, r.body.addrs);
            }
            Ok(())
        }
        None => {
            if net.json {
                println!(
                    "{}",
                    json!({"event": "found", "found": false, "peer_id": args.peer.to_string()})
                );
            } else {
                println!("{} not found within three hops", args.peer);
            }
            Err(AgentError::NotFound(args.peer))
        }
    }
}

fn status_str(s: Status) -> &'static str {
    match s {
        Status::Open => "open",
        Status::Claimed => "claimed",
        Status::Done => "done",
    }
}

fn task_json(t: &TaskView) -> serde_json::Value {
    json!({
        "id": t.id.to_string(),
        "title": t.title,
        "status": status_str(t.status),
        "claimed_by": t.claimed_by.map(|p| p.to_string()),
    })
}

/// `x0x tasks TOPIC add|claim|done|list`.
pub async fn tasks(args: TasksArgs) -> Result<(), AgentError> {
    let sync = match &args.action {
        TaskAction::Add { sync, .. }
        | TaskAction::Claim { sync, .. }
        | TaskAction::Done { sync, .. }
        | TaskAction::List { sync } => sync,
    };
    let net = &sync.net;
    let wait = Duration::from_millis(sync.wait_ms);
    let (agent, _) = net::join(net).await?;
    let list = agent.task_list(&args.topic).await?;
    await_neighbour(&agent, &args.topic, wait.max(Duration::from_secs(5))).await?;
    let out = match &args.action {
        TaskAction::List { .. } => {
            tokio::time::sleep(wait).await;
            let tasks: Vec<serde_json::Value> = list.list().await?.iter().map(task_json).collect();
            if net.json {
                json!({"event": "tasks", "topic": args.topic, "tasks": tasks})
            } else {
                for t in list.list().await? {
                    println!(
                        "{}  {:7}  {}{}",
                        t.id,
                        status_str(t.status),
                        t.title,
                        t.claimed_by
                            .map(|p| format!("  (claimed by {})", p.short()))
                            .unwrap_or_default()
                    );
                }
                serde_json::Value::Null
            }
        }
        TaskAction::Add { title, .. } => {
            let id = list.add(title).await?;
            tokio::time::sleep(wait).await;
            json!({"event": "added", "id": id.to_string(), "title": title})
        }
        TaskAction::Claim { id, .. } | TaskAction::Done { id, .. } => {
            // The task must have reached this replica first.
            let deadline = Instant::now() + wait.max(Duration::from_secs(5));
            while list.list().await?.iter().all(|t| t.id != *id) && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let event = if matches!(args.action, TaskAction::Claim { .. }) {
                list.claim(*id).await?;
                "claimed"
            } else {
                list.done(*id).await?;
                "done"
            };
            tokio::time::sleep(wait).await;
            json!({"event": event, "id": id.to_string()})
        }
    };
    if !out.is_null() {
        if net.json {
            println!("{out}");
        } else {
            println!("{} {}", out["event"], out["id"]);
        }
    }
    agent.close().await;
    Ok(())
}
