//! Agents on the coordinator's side: the session of a connected agent (inventory, heartbeats) and the leader's
//! liveness check that marks a node down once its heartbeats stop for longer than the TTL.
//!
//! Agents follow the leader: a follower answers an agent with `Refused { NotLeader }` naming the leader's QUIC
//! address, so heartbeats land where the liveness check runs. Last-seen times live in the leader's memory (a
//! heartbeat is not a Raft write); only state changes (registered, down) go through Raft.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use spacedock_coordinator_core::command::ENVELOPE_VERSION;
use spacedock_coordinator_core::state::NodeState;
use spacedock_coordinator_core::{Command, Envelope};
use spacedock_net::{FramedReader, send};
use spacedock_shared::wire::{self, HeartbeatAck, RefuseCode, Refused, Registered};

use crate::api;
use crate::node::NodeHandle;

const FIRST_MESSAGE_TIMEOUT: Duration = Duration::from_secs(10);
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// When each agent was last heard from, on this coordinator.
#[derive(Debug, Default)]
pub struct Liveness {
    seen: Mutex<HashMap<String, Instant>>,
}

impl Liveness {
    fn touch(&self, name: &str) {
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_owned(), Instant::now());
    }

    fn last_seen(&self, name: &str) -> Option<Instant> {
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .copied()
    }
}

async fn propose(node: &NodeHandle, command: Command) -> Result<(), crate::node::WriteError> {
    let envelope = Envelope {
        version: ENVELOPE_VERSION,
        at: api::system_clock(),
        request_id: rand::random(),
        actor: None,
        command,
    };
    node.propose(&envelope, WRITE_TIMEOUT).await
}

/// The leader's QUIC address as this coordinator knows it (empty when no leader is known).
fn leader_addr(node: &NodeHandle) -> String {
    let leader = node.status().leader;
    leader
        .and_then(|l| node.read_local(|s| s.members.get(&l).map(|m| m.quic_addr.clone())))
        .unwrap_or_default()
}

/// Serves one agent stream; `name` is the node name from its certificate.
pub async fn session<R, W>(
    node: &NodeHandle,
    liveness: &Liveness,
    name: &str,
    mut rx: FramedReader<R>,
    mut tx: W,
) where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let refuse = |code, message: String| Refused { code, message };
    if node.status().role != "leader" {
        let _ = send(
            &mut tx,
            &refuse(RefuseCode::NotLeader, leader_addr(node)).into(),
        )
        .await;
        return;
    }
    let inventory = match tokio::time::timeout(FIRST_MESSAGE_TIMEOUT, rx.recv()).await {
        Ok(Ok(Some(wire::Message::Inventory(inventory)))) => inventory,
        _ => {
            let _ = send(
                &mut tx,
                &refuse(
                    RefuseCode::BadRequest,
                    "an agent starts with its inventory".into(),
                )
                .into(),
            )
            .await;
            return;
        }
    };
    if inventory.name != name {
        let message = format!(
            "the inventory names `{}`, the certificate `{name}`",
            inventory.name
        );
        let _ = send(&mut tx, &refuse(RefuseCode::Unauthorized, message).into()).await;
        return;
    }
    if let Err(e) = propose(node, Command::RegisterNode { inventory }).await {
        let _ = send(
            &mut tx,
            &refuse(
                RefuseCode::BadRequest,
                format!("cannot register the node: {e}"),
            )
            .into(),
        )
        .await;
        return;
    }
    liveness.touch(name);
    tracing::info!(node = name, "agent registered");
    if send(
        &mut tx,
        &Registered {
            node: name.to_owned(),
        }
        .into(),
    )
    .await
    .is_err()
    {
        return;
    }
    loop {
        match rx.recv().await {
            Ok(Some(wire::Message::Heartbeat(_))) if node.status().role != "leader" => {
                // Leadership moved (a healed partition, a transfer): send the agent to the new leader, where the
                // liveness check runs.
                let _ = send(
                    &mut tx,
                    &refuse(RefuseCode::NotLeader, leader_addr(node)).into(),
                )
                .await;
                return;
            }
            Ok(Some(wire::Message::Heartbeat(hb))) => {
                liveness.touch(name);
                if send(&mut tx, &HeartbeatAck { seq: hb.seq }.into())
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Ok(Some(wire::Message::Inventory(inventory))) if inventory.name == name => {
                liveness.touch(name);
                if let Err(e) = propose(node, Command::RegisterNode { inventory }).await {
                    tracing::warn!(node = name, error = %e, "cannot record a refreshed inventory");
                }
            }
            Ok(Some(other)) => {
                tracing::warn!(
                    node = name,
                    kind = other.name(),
                    "unexpected message from an agent; closing"
                );
                return;
            }
            Ok(None) | Err(_) => return,
        }
    }
}

/// On the leader, marks ready nodes down once they have not been heard from for `ttl`. A coordinator that just
/// became leader gives every node a full TTL first.
pub async fn watch(node: NodeHandle, liveness: std::sync::Arc<Liveness>, ttl: Duration) {
    let mut leading_since: Option<Instant> = None;
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if node.status().role != "leader" {
            leading_since = None;
            continue;
        }
        let since = *leading_since.get_or_insert_with(Instant::now);
        let ready: Vec<String> = node.read_local(|s| {
            s.nodes
                .values()
                .filter(|n| n.state == NodeState::Ready)
                .map(|n| n.name.clone())
                .collect()
        });
        for name in ready {
            let last = liveness
                .last_seen(&name)
                .map_or(since, |seen| seen.max(since));
            if last.elapsed() > ttl {
                tracing::warn!(
                    node = name,
                    ttl_s = ttl.as_secs(),
                    "no heartbeat within the TTL; marking the node down"
                );
                if let Err(e) = propose(
                    &node,
                    Command::SetNodeState {
                        name: name.clone(),
                        state: NodeState::Down,
                    },
                )
                .await
                {
                    tracing::warn!(node = name, error = %e, "cannot mark the node down");
                }
            }
        }
    }
}
