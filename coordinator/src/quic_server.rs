//! The coordinator's QUIC endpoint: accepts connections, runs the opening handshake on each stream, and hands
//! the stream to what the peer's certificate allows: Raft and status from other coordinators, sessions from
//! agents; from nodes without a certificate, only a join request.

use std::sync::Arc;
use std::time::Duration;

use spacedock_net::{FramedReader, accept_handshake, send};
use spacedock_shared::wire::{self, RefuseCode, Refused, Role};
use tracing::Instrument as _;

use crate::join::{self, Authority};
use crate::{agents, builders};
use crate::{peer, tls};

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Accepts connections until the endpoint closes.
pub async fn serve(endpoint: quinn::Endpoint, authority: Arc<Authority>) {
    while let Some(incoming) = endpoint.accept().await {
        let authority = authority.clone();
        tokio::spawn(async move {
            match incoming.await {
                Ok(connection) => {
                    let peer = tls::peer_name(&connection);
                    let span = tracing::debug_span!(
                        "quic",
                        remote = %connection.remote_address(),
                        peer = peer.as_deref().unwrap_or("-")
                    );
                    handle_connection(connection, peer, authority)
                        .instrument(span)
                        .await
                }
                Err(e) => tracing::debug!(error = %e, "incoming QUIC connection failed"),
            }
        });
    }
}

async fn handle_connection(
    connection: quinn::Connection,
    peer: Option<String>,
    authority: Arc<Authority>,
) {
    loop {
        let (tx, rx) = match connection.accept_bi().await {
            Ok(stream) => stream,
            Err(e) => {
                tracing::debug!(error = %e, "connection closed");
                return;
            }
        };
        let authority = authority.clone();
        let peer = peer.clone();
        let connection = connection.clone();
        tokio::spawn(
            handle_stream(connection, tx, rx, peer, authority).instrument(tracing::Span::current()),
        );
    }
}

async fn handle_stream(
    connection: quinn::Connection,
    mut tx: quinn::SendStream,
    rx: quinn::RecvStream,
    peer: Option<String>,
    authority: Arc<Authority>,
) {
    let mut reader = FramedReader::new(rx, wire::DEFAULT_MAX_FRAME_BYTES);
    let software = spacedock_cli_common::software("spacedock-coordinator");
    let hello = match accept_handshake(&mut reader, &mut tx, &software, HANDSHAKE_TIMEOUT).await {
        Ok((hello, _version)) => hello,
        Err(e) => {
            tracing::debug!(error = %e, "handshake failed");
            return;
        }
    };
    match (hello.role, peer.as_deref()) {
        (Role::Coordinator, Some(name)) if let Some(peer_id) = coordinator_id(name) => {
            peer::receive(
                reader,
                tx,
                peer_id,
                authority.node.clone(),
                &authority.blobs,
            )
            .await
        }
        (Role::Agent, Some(name)) if let Some(node_name) = name.strip_prefix("agent-") => {
            agents::session(&authority, node_name, connection, reader, tx).await
        }
        (Role::Builder, Some(name)) if let Some(builder) = name.strip_prefix("builder-") => {
            builders::stream(&authority, builder, reader, tx).await
        }
        (_, None) => match tokio::time::timeout(HANDSHAKE_TIMEOUT, reader.recv()).await {
            Ok(Ok(Some(wire::Message::JoinRequest(request)))) if request.role == hello.role => {
                join::admit(&authority, request, reader, tx).await
            }
            _ => {
                refuse(
                    &mut tx,
                    "a node without a certificate may only send a join request for its role",
                )
                .await
            }
        },
        (role, Some(name)) => {
            refuse(
                &mut tx,
                &format!("`{name}` cannot open a {role:?} stream here"),
            )
            .await
        }
    }
}

async fn refuse(tx: &mut quinn::SendStream, message: &str) {
    let refused = Refused {
        code: RefuseCode::Unauthorized,
        message: message.to_owned(),
    };
    let _ = send(tx, &refused.into()).await;
    let _ = tx.finish();
}

/// `coordinator-3` → 3.
pub fn coordinator_id(common_name: &str) -> Option<u64> {
    common_name.strip_prefix("coordinator-")?.parse().ok()
}
