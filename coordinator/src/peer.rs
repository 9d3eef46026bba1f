//! Raft between coordinators over QUIC with mutual TLS: an outgoing queue and long-lived stream per peer that
//! batches whatever accumulated into one frame, and the receiving side that checks the sender's certificate.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use protobuf::Message as _;
use raft::eraftpb::Message;
use spacedock_net::{FramedReader, dial_handshake, send};
use spacedock_shared::wire::{self, RaftBatch, Role};
use tokio::sync::mpsc;

use crate::node::{NodeHandle, Transport};
use crate::tls;

/// Most messages put in one frame.
const MAX_BATCH: usize = 512;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Finds a peer's QUIC address by Raft id (from the replicated member list).
pub type Resolver = Arc<dyn Fn(u64) -> Option<SocketAddr> + Send + Sync>;

/// Sends Raft messages to peers over QUIC. Messages to an unreachable peer are dropped; Raft retries.
pub struct QuicTransport {
    id: u64,
    endpoint: quinn::Endpoint,
    client_config: quinn::ClientConfig,
    resolve: Resolver,
    runtime: tokio::runtime::Handle,
    queues: Mutex<HashMap<u64, mpsc::UnboundedSender<Message>>>,
}

impl std::fmt::Debug for QuicTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicTransport")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl QuicTransport {
    pub fn new(
        id: u64,
        endpoint: quinn::Endpoint,
        client_config: quinn::ClientConfig,
        resolve: Resolver,
        runtime: tokio::runtime::Handle,
    ) -> QuicTransport {
        QuicTransport {
            id,
            endpoint,
            client_config,
            resolve,
            runtime,
            queues: Mutex::new(HashMap::new()),
        }
    }

    fn queue(&self, to: u64) -> mpsc::UnboundedSender<Message> {
        let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(q) = queues.get(&to).filter(|q| !q.is_closed()) {
            return q.clone();
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let sender = PeerSender {
            from: self.id,
            to,
            endpoint: self.endpoint.clone(),
            client_config: self.client_config.clone(),
            resolve: self.resolve.clone(),
        };
        self.runtime.spawn(sender.run(rx));
        queues.insert(to, tx.clone());
        tx
    }
}

impl Transport for QuicTransport {
    fn send(&self, messages: Vec<Message>) {
        for m in messages {
            let to = m.to;
            if self.queue(to).send(m).is_err() {
                tracing::debug!(to, "peer queue closed; message dropped");
            }
        }
    }
}

struct PeerSender {
    from: u64,
    to: u64,
    endpoint: quinn::Endpoint,
    client_config: quinn::ClientConfig,
    resolve: Resolver,
}

impl PeerSender {
    async fn run(self, mut rx: mpsc::UnboundedReceiver<Message>) {
        let mut stream: Option<quinn::SendStream> = None;
        let mut failures = 0u32;
        while let Some(first) = rx.recv().await {
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(m) => batch.push(m),
                    Err(_) => break,
                }
            }
            if stream.is_none() {
                match self.connect().await {
                    Ok(s) => {
                        failures = 0;
                        stream = Some(s);
                    }
                    Err(e) => {
                        failures += 1;
                        if failures == 1 || failures.is_multiple_of(50) {
                            tracing::warn!(to = self.to, error = %e, "cannot reach peer; dropping raft messages");
                        }
                        tokio::time::sleep(
                            Duration::from_millis(100).min(Duration::from_millis(20) * failures),
                        )
                        .await;
                        continue;
                    }
                }
            }
            let messages = batch
                .iter()
                .filter_map(|m| m.write_to_bytes().ok())
                .collect();
            if let Some(s) = stream.as_mut()
                && let Err(e) = send(s, &RaftBatch { messages }.into()).await
            {
                tracing::debug!(to = self.to, error = %e, "peer stream broke; reconnecting");
                stream = None;
            }
        }
    }

    async fn connect(&self) -> anyhow::Result<quinn::SendStream> {
        let addr = (self.resolve)(self.to)
            .ok_or_else(|| anyhow::anyhow!("no address known for node {}", self.to))?;
        let connection = self
            .endpoint
            .connect_with(self.client_config.clone(), addr, tls::SERVER_NAME)?
            .await?;
        let (mut tx, rx) = connection.open_bi().await?;
        let mut rx = FramedReader::new(rx, wire::DEFAULT_MAX_FRAME_BYTES);
        let software = spacedock_cli_common::software("spacedock-coordinator");
        dial_handshake(
            &mut rx,
            &mut tx,
            Role::Coordinator,
            &software,
            &format!("coordinator-{}", self.from),
            HANDSHAKE_TIMEOUT,
        )
        .await?;
        tracing::debug!(to = self.to, %addr, "raft stream to peer open");
        Ok(tx)
    }
}

/// Receives Raft batches from an authenticated coordinator `peer_id` and steps them into the local node.
/// Messages claiming another sender are dropped.
pub async fn receive<R: tokio::io::AsyncRead + Unpin>(
    mut reader: FramedReader<R>,
    peer_id: u64,
    node: NodeHandle,
) {
    loop {
        match reader.recv().await {
            Ok(Some(wire::Message::RaftBatch(batch))) => {
                for bytes in batch.messages {
                    match Message::parse_from_bytes(&bytes) {
                        Ok(m) if m.from == peer_id => node.step(m),
                        Ok(m) => tracing::warn!(
                            peer_id,
                            claimed = m.from,
                            "dropping a raft message with a forged sender"
                        ),
                        Err(e) => {
                            tracing::warn!(peer_id, error = %e, "dropping an unreadable raft message")
                        }
                    }
                }
            }
            Ok(Some(other)) => {
                tracing::warn!(
                    peer_id,
                    kind = other.name(),
                    "unexpected message on a raft stream; closing it"
                );
                return;
            }
            Ok(None) => return,
            Err(e) => {
                tracing::debug!(peer_id, error = %e, "raft stream closed");
                return;
            }
        }
    }
}
