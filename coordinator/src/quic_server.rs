//! The coordinator's QUIC endpoint: accepts connections, runs the opening handshake on each stream, and hands
//! the stream to the role the peer's certificate allows (today: Raft from other coordinators).

use std::time::Duration;

use spacedock_net::{FramedReader, accept_handshake, send};
use spacedock_shared::wire::{self, RefuseCode, Refused, Role};
use tracing::Instrument as _;

use crate::node::NodeHandle;
use crate::{peer, tls};

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Accepts connections until the endpoint closes.
pub async fn serve(endpoint: quinn::Endpoint, node: NodeHandle) {
    while let Some(incoming) = endpoint.accept().await {
        let node = node.clone();
        tokio::spawn(async move {
            match incoming.await {
                Ok(connection) => {
                    let peer = tls::peer_name(&connection);
                    let span = tracing::debug_span!(
                        "quic",
                        remote = %connection.remote_address(),
                        peer = peer.as_deref().unwrap_or("-")
                    );
                    handle_connection(connection, peer, node)
                        .instrument(span)
                        .await
                }
                Err(e) => tracing::debug!(error = %e, "incoming QUIC connection failed"),
            }
        });
    }
}

async fn handle_connection(connection: quinn::Connection, peer: Option<String>, node: NodeHandle) {
    loop {
        let (mut tx, rx) = match connection.accept_bi().await {
            Ok(stream) => stream,
            Err(e) => {
                tracing::debug!(error = %e, "connection closed");
                return;
            }
        };
        let node = node.clone();
        let peer = peer.clone();
        let span = tracing::Span::current();
        tokio::spawn(
            async move {
            let mut reader = FramedReader::new(rx, wire::DEFAULT_MAX_FRAME_BYTES);
            let software = spacedock_cli_common::software("spacedock-coordinator");
            let hello = match accept_handshake(&mut reader, &mut tx, &software, HANDSHAKE_TIMEOUT).await {
                Ok((hello, _version)) => hello,
                Err(e) => {
                    tracing::debug!(error = %e, "handshake failed");
                    return;
                }
            };
            match (hello.role, peer.as_deref().and_then(coordinator_id)) {
                (Role::Coordinator, Some(peer_id)) => peer::receive(reader, tx, peer_id, node).await,
                (role, _) => {
                    let message = format!("a {role:?} stream needs a certificate for that role from this cluster's CA");
                    let refused = Refused { code: RefuseCode::Unauthorized, message };
                    let _ = send(&mut tx, &refused.into()).await;
                    let _ = tx.finish();
                }
            }
        }
            .instrument(span),
        );
    }
}

/// `coordinator-3` → 3.
pub fn coordinator_id(common_name: &str) -> Option<u64> {
    common_name.strip_prefix("coordinator-")?.parse().ok()
}
