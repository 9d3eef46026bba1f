//! Agents on the coordinator's side: the session of a connected agent (inventory, heartbeats, the allocations
//! it should run and its reports on them) and the leader's liveness check that marks a node down once its
//! heartbeats stop for longer than the TTL.
//!
//! Agents follow the leader: a follower answers an agent with `Refused { NotLeader }` naming the leader's QUIC
//! address, so heartbeats land where the liveness check runs. Last-seen times live in the leader's memory (a
//! heartbeat is not a Raft write); only state changes (registered, down) go through Raft.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use spacedock_coordinator_core::Command;
use spacedock_coordinator_core::schedule;
use spacedock_coordinator_core::state::NodeState;
use spacedock_net::{FramedReader, send};
use spacedock_shared::wire::{
    self, Assignment, Assignments, HeartbeatAck, RefuseCode, Refused, Registered,
};

use crate::api;
use crate::join::Authority;
use crate::node::NodeHandle;

const FIRST_MESSAGE_TIMEOUT: Duration = Duration::from_secs(10);
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a session compares what its agent should run with what it last sent (the scheduler also signals
/// it when it places or removes an allocation on the node).
const ASSIGNMENT_CHECK: Duration = Duration::from_secs(1);

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
    api::propose_as_cluster(node, command, WRITE_TIMEOUT).await
}

/// The leader's QUIC address as this coordinator knows it (empty when no leader is known).
pub fn leader_addr(node: &NodeHandle) -> String {
    let leader = node.status().leader;
    leader
        .and_then(|l| node.read_local(|s| s.members.get(&l).map(|m| m.quic_addr.clone())))
        .unwrap_or_default()
}

/// Serves one agent stream; `name` is the node name from its certificate. A stream that opens with a
/// `BlobRequest` fetches a blob (from any coordinator); one that opens with the inventory is the agent's session
/// with the leader.
pub async fn session(
    authority: &Authority,
    name: &str,
    connection: quinn::Connection,
    mut rx: FramedReader<quinn::RecvStream>,
    mut tx: quinn::SendStream,
) {
    let node = &authority.node;
    let refuse = |code, message: String| Refused { code, message };
    let inventory = match tokio::time::timeout(FIRST_MESSAGE_TIMEOUT, rx.recv()).await {
        Ok(Ok(Some(wire::Message::BlobRequest(request)))) => {
            authority.blobs.serve(request, &mut tx, false).await;
            return;
        }
        Ok(Ok(Some(wire::Message::Inventory(inventory)))) => inventory,
        _ => {
            let message = "an agent starts with its inventory or a blob request".into();
            let _ = send(&mut tx, &refuse(RefuseCode::BadRequest, message).into()).await;
            return;
        }
    };
    if node.status().role != "leader" {
        let _ = send(
            &mut tx,
            &refuse(RefuseCode::NotLeader, leader_addr(node)).into(),
        )
        .await;
        return;
    }
    if inventory.name != name {
        let message = format!(
            "the inventory names `{}`, the certificate `{name}`",
            inventory.name
        );
        let _ = send(&mut tx, &refuse(RefuseCode::Unauthorized, message).into()).await;
        return;
    }
    if let Err(e) = propose(node, Command::RegisterNode { inventory }).await {
        let message = format!("cannot register the node: {e}");
        let _ = send(&mut tx, &refuse(RefuseCode::BadRequest, message).into()).await;
        return;
    }
    let liveness = &authority.liveness;
    liveness.touch(name);
    tracing::info!(node = name, "agent registered");
    let registered = Registered {
        node: name.to_owned(),
    };
    if send(&mut tx, &registered.into()).await.is_err() {
        return;
    }
    let (mut incoming, reader) = spacedock_net::forward(rx);
    let (link, changed) = authority.links.register(name, connection);
    let mut sent: Option<Vec<Assignment>> = None;
    let mut tick = tokio::time::interval(ASSIGNMENT_CHECK);
    loop {
        tokio::select! {
            message = incoming.recv() => match message {
                Some(Ok(Some(message))) => {
                    if !handle(authority, name, message, &mut tx).await {
                        break;
                    }
                }
                _ => break,
            },
            _ = async {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = changed.notified() => {}
                }
            } => {
                if node.status().role != "leader" {
                    let _ = send(&mut tx, &refuse(RefuseCode::NotLeader, leader_addr(node)).into()).await;
                    break;
                }
                let wanted = node.read_local(|s| schedule::assignments(s, name, &authority.apps_host));
                if sent.as_ref() != Some(&wanted) {
                    let message = Assignments { allocations: wanted.clone() };
                    if send(&mut tx, &message.into()).await.is_err() {
                        break;
                    }
                    tracing::debug!(node = name, n = wanted.len(), "sent assignments");
                    sent = Some(wanted);
                }
            }
        }
    }
    reader.abort();
    authority.links.unregister(name, link);
}

/// Handles one message of a registered agent; `false` ends the session.
async fn handle<W: tokio::io::AsyncWrite + Unpin>(
    authority: &Authority,
    name: &str,
    message: wire::Message,
    tx: &mut W,
) -> bool {
    let node = &authority.node;
    match message {
        wire::Message::Heartbeat(hb) => {
            authority.liveness.touch(name);
            send(tx, &HeartbeatAck { seq: hb.seq }.into()).await.is_ok()
        }
        wire::Message::Inventory(inventory) if inventory.name == name => {
            authority.liveness.touch(name);
            if let Err(e) = propose(node, Command::RegisterNode { inventory }).await {
                tracing::warn!(node = name, error = %e, "cannot record a refreshed inventory");
            }
            true
        }
        wire::Message::AllocationStatus(status) => {
            let command = Command::ReportAllocation {
                id: status.id.clone(),
                node: name.to_owned(),
                phase: status.phase,
                message: status.message,
            };
            match propose(node, command).await {
                Ok(()) => {
                    tracing::info!(node = name, allocation = status.id, phase = ?status.phase, "allocation report")
                }
                Err(e) => {
                    tracing::info!(node = name, allocation = status.id, error = %e, "allocation report not recorded")
                }
            }
            true
        }
        other => {
            tracing::warn!(
                node = name,
                kind = other.name(),
                "unexpected message from an agent; closing"
            );
            false
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
