//! Admitting nodes that join with a join token (the coordinator's side; the joiner's is `spacedock_net::join`).
//!
//! The joiner dials any coordinator without a certificate, trusting it only if its chain holds the CA whose
//! fingerprint the token carries. It sends `JoinRequest`; the coordinator checks the token against the
//! replicated state (unknown, expired, revoked or wrong-role tokens are refused), signs a certificate for the
//! joiner and answers `JoinReply`. A joining coordinator then starts its Raft node and QUIC endpoint, says
//! `JoinReady`, and the coordinator proposes adding it as a voter; `Joined` says it is one.

use std::time::Duration;

use anyhow::{anyhow, bail};
use raft::eraftpb::ConfChangeType;
use spacedock_coordinator_core::access::{check_join_token, hash_secret};
use spacedock_coordinator_core::command::ENVELOPE_VERSION;
use spacedock_coordinator_core::state::{Member, NodeRole};
use spacedock_coordinator_core::{Command, Envelope};
use spacedock_net::{FramedReader, send};
use spacedock_shared::wire::{
    self, JoinReply, JoinRequest, Joined, MemberAddr, RefuseCode, Refused, Role,
};

use crate::api;
use crate::node::NodeHandle;
use spacedock_net::tls::{self, ClusterCa};

/// How long the coordinator waits for a new coordinator to say it is running.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
const TIMEOUT: Duration = Duration::from_secs(10);

pub use spacedock_net::join::{Pending, request};

fn role_of(role: Role) -> Option<NodeRole> {
    match role {
        Role::Coordinator => Some(NodeRole::Coordinator),
        Role::Agent => Some(NodeRole::Agent),
        Role::Builder => Some(NodeRole::Builder),
        Role::Cli => None,
    }
}

/// What a coordinator needs to admit joiners.
#[derive(Debug, Clone)]
pub struct Authority {
    pub ca: ClusterCa,
    pub ca_fingerprint: String,
    pub node: NodeHandle,
    /// Heartbeats of the agents connected here.
    pub liveness: std::sync::Arc<crate::agents::Liveness>,
    /// The blob store, for replication between coordinators and fetches by agents.
    pub blobs: std::sync::Arc<crate::blobs::Blobs>,
    /// The agents connected here, for streams back to them.
    pub links: std::sync::Arc<crate::links::Links>,
    /// `APPS_DOMAIN[:PORT]`, for the Spaces' `SPACE_HOST`.
    pub apps_host: String,
    /// The URL clients reach the API at (builders download `preload_from_hub` repos from it).
    pub public_url: String,
    /// The log lines of builds this coordinator's builders sent (the leader's).
    pub build_logs: std::sync::Arc<crate::builders::BuildLogs>,
}

/// Coordinator side: serves one `JoinRequest` stream.
pub async fn admit<R, W>(
    authority: &Authority,
    request: JoinRequest,
    mut rx: FramedReader<R>,
    mut tx: W,
) where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let name = request.name.clone();
    match admit_inner(authority, request, &mut rx, &mut tx).await {
        Ok(()) => tracing::info!(name, "node joined"),
        Err(e) => {
            let message = format!("{e:#}");
            tracing::warn!(name, error = %message, "join refused");
            let _ = send(
                &mut tx,
                &Refused {
                    code: RefuseCode::Unauthorized,
                    message,
                }
                .into(),
            )
            .await;
        }
    }
}

async fn admit_inner<R, W>(
    authority: &Authority,
    request: JoinRequest,
    rx: &mut FramedReader<R>,
    tx: &mut W,
) -> anyhow::Result<()>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let (fingerprint, secret) = tls::parse_join_token(&request.token)?;
    if fingerprint != authority.ca_fingerprint {
        bail!("the join token is for another cluster (its CA fingerprint differs)");
    }
    let role = role_of(request.role).ok_or_else(|| anyhow!("a {:?} cannot join", request.role))?;
    let secret_hash = hash_secret(&secret);
    let now = api::system_clock();
    let (cluster_id, existing, members) = authority
        .node
        .read(TIMEOUT, |state| {
            check_join_token(state, &secret_hash, role, now).map_err(|e| anyhow!("{e}"))?;
            let members = state
                .members
                .values()
                .map(|m| MemberAddr {
                    id: m.id,
                    quic_addr: m.quic_addr.clone(),
                })
                .collect();
            Ok::<_, anyhow::Error>((
                state.cluster_id.clone().unwrap_or_default(),
                state.members.get(&request.node_id).cloned(),
                members,
            ))
        })
        .await??;
    let common_name = match role {
        NodeRole::Coordinator => {
            if request.node_id == 0 {
                bail!("a coordinator needs a positive node id");
            }
            if existing
                .as_ref()
                .is_some_and(|m| m.quic_addr != request.quic_addr)
            {
                bail!(
                    "node id {} is already a member at another address",
                    request.node_id
                );
            }
            format!("coordinator-{}", request.node_id)
        }
        NodeRole::Agent => format!("agent-{}", request.name),
        NodeRole::Builder => format!("builder-{}", request.name),
    };
    let identity = authority.ca.issue(&common_name)?;
    let reply = JoinReply {
        cluster_id,
        node_id: request.node_id,
        chain_pem: identity.chain_pem,
        key_pem: identity.key_pem,
        ca_pem: identity.ca_pem,
        ca_key_pem: if role == NodeRole::Coordinator {
            authority.ca.key_pem.clone()
        } else {
            String::new()
        },
        members,
    };
    send(tx, &reply.into()).await?;
    if role != NodeRole::Coordinator {
        return Ok(());
    }
    match tokio::time::timeout(READY_TIMEOUT, rx.recv())
        .await
        .map_err(|_| anyhow!("the new coordinator never said it was ready"))??
    {
        Some(wire::Message::JoinReady(_)) => {}
        other => bail!("expected JoinReady, got {other:?}"),
    }
    if existing.is_none() {
        let member = Member {
            id: request.node_id,
            api_url: request.api_url,
            quic_addr: request.quic_addr,
        };
        let envelope = Envelope {
            version: ENVELOPE_VERSION,
            at: now,
            request_id: rand::random(),
            actor: None,
            command: Command::AddMember { member },
        };
        authority
            .node
            .change_membership(request.node_id, ConfChangeType::AddNode, &envelope, TIMEOUT)
            .await
            .map_err(|e| anyhow!("adding node {}: {e}", request.node_id))?;
    }
    send(tx, &Joined {}.into()).await?;
    Ok(())
}
