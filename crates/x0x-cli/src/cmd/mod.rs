//! The commands.

pub mod connect;
pub mod listen;
pub mod netcheck;
pub mod status;

use serde_json::json;
use x0x::{AgentError, PeerId};

use crate::net::{self, KeyArgs, NetArgs};

/// `x0x id`: print the peer id of the key (creating it if missing).
pub fn id(key: &KeyArgs, json: bool) -> Result<(), AgentError> {
    let id = net::identity(key)?.peer_id();
    if json {
        println!("{}", json!({ "peer_id": id.to_string() }));
    } else {
        println!("{id}");
    }
    Ok(())
}

/// `x0x lookup PEER`: what the directory knows. Exit 1 if not found.
pub async fn lookup(peer: PeerId, net: NetArgs) -> Result<(), AgentError> {
    let (agent, _) = net::join(&net).await?;
    let info = agent.lookup(peer).await;
    agent.close().await;
    match info? {
        Some(r) => {
            let homes: Vec<String> = r.homes.iter().map(|h| h.to_string()).collect();
            if net.json {
                println!(
                    "{}",
                    json!({"found": true, "record": {
                        "peer": r.peer.to_string(),
                        "addrs": r.addrs,
                        "home": homes.first(),
                        "homes": homes,
                    }})
                );
            } else {
                println!(
                    "{} at {:?} (registered with {})",
                    r.peer,
                    r.addrs,
                    homes.join(", ")
                );
            }
            Ok(())
        }
        None => {
            if net.json {
                println!("{}", json!({"found": false}));
            } else {
                println!("{peer} is not in the directory");
            }
            Err(AgentError::NotFound(peer))
        }
    }
}
