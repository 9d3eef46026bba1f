//! Raft between coordinators over QUIC with mutual TLS: an outgoing queue and long-lived stream per peer that
//! batches whatever accumulated into one frame; the receiving side checks the sender's certificate and also
//! answers status requests and carries blobs (`crate::blobs`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use protobuf::Message as _;
use raft::eraftpb::Message;
use spacedock_net::{FramedReader, send};
use spacedock_shared::wire::{self, RaftBatch, Role, StatusReply, StatusRequest};
use tokio::sync::mpsc;

use crate::node::{NodeHandle, Transport};

/// Most messages put in one frame.
const MAX_BATCH: usize = 512;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Finds a peer's QUIC address by Raft id (from the replicated member list).
pub type Resolver = Arc<dyn Fn(u64) -> Option<SocketAddr> + Send + Sync>;

/// Opens authenticated streams to other coordinators.
#[derive(Clone)]
pub struct Peers {
    pub id: u64,
    pub endpoint: quinn::Endpoint,
    pub client_config: quinn::ClientConfig,
    pub resolve: Resolver,
}

impl std::fmt::Debug for Peers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peers")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Peers {
    /// A new stream to coordinator `to`, past the opening handshake.
    pub async fn open(
        &self,
        to: u64,
    ) -> anyhow::Result<(quinn::SendStream, FramedReader<quinn::RecvStream>)> {
        let addr =
            (self.resolve)(to).ok_or_else(|| anyhow::anyhow!("no address known for node {to}"))?;
        let name = format!("coordinator-{}", self.id);
        let dialed = spacedock_net::dial(
            &self.endpoint,
            &self.client_config,
            &addr.to_string(),
            Role::Coordinator,
            &name,
            HANDSHAKE_TIMEOUT,
        )
        .await?;
        Ok((dialed.tx, dialed.rx))
    }

    /// Asks coordinator `to` for its Raft status.
    pub async fn status(&self, to: u64, timeout: Duration) -> anyhow::Result<StatusReply> {
        let ask = async {
            let (mut tx, mut rx) = self.open(to).await?;
            send(&mut tx, &StatusRequest {}.into()).await?;
            match rx.recv().await? {
                Some(wire::Message::StatusReply(reply)) => Ok(reply),
                other => Err(anyhow::anyhow!(
                    "unexpected answer to a status request: {other:?}"
                )),
            }
        };
        tokio::time::timeout(timeout, ask)
            .await
            .map_err(|_| anyhow::anyhow!("no answer within {timeout:?}"))?
    }
}

/// Sends Raft messages to peers over QUIC. Messages to an unreachable peer are dropped; Raft retries.
pub struct QuicTransport {
    peers: Peers,
    runtime: tokio::runtime::Handle,
    queues: Mutex<HashMap<u64, mpsc::UnboundedSender<Message>>>,
}

impl std::fmt::Debug for QuicTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicTransport")
            .field("id", &self.peers.id)
            .finish_non_exhaustive()
    }
}

impl QuicTransport {
    pub fn new(peers: Peers, runtime: tokio::runtime::Handle) -> QuicTransport {
        QuicTransport {
            peers,
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
        self.runtime.spawn(send_loop(to, self.peers.clone(), rx));
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

/// Drains one peer's queue onto a long-lived stream, reconnecting after failures.
async fn send_loop(to: u64, peers: Peers, mut rx: mpsc::UnboundedReceiver<Message>) {
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
            match peers.open(to).await {
                Ok((s, _)) => {
                    failures = 0;
                    tracing::debug!(to, "raft stream to peer open");
                    stream = Some(s);
                }
                Err(e) => {
                    failures += 1;
                    if failures == 1 || failures.is_multiple_of(50) {
                        tracing::warn!(to, error = %e, "cannot reach peer; dropping raft messages");
                    }
                    tokio::time::sleep(Duration::from_millis(20) * failures.min(5)).await;
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
            tracing::debug!(to, error = %e, "peer stream broke; reconnecting");
            stream = None;
        }
    }
}

/// Serves a stream from an authenticated coordinator `peer_id`: Raft batches are stepped into the local node
/// (messages claiming another sender are dropped), status requests are answered.
pub async fn receive(
    mut reader: FramedReader<quinn::RecvStream>,
    mut writer: quinn::SendStream,
    peer_id: u64,
    node: NodeHandle,
    blobs: &crate::blobs::Blobs,
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
            Ok(Some(wire::Message::StatusRequest(_))) => {
                let s = node.status();
                let reply = StatusReply {
                    id: s.id,
                    role: s.role,
                    term: s.term,
                    leader: s.leader.unwrap_or(0),
                    commit_index: s.commit_index,
                    applied_index: s.applied_index,
                };
                if send(&mut writer, &reply.into()).await.is_err() {
                    return;
                }
            }
            Ok(Some(wire::Message::BlobPut(put))) => {
                blobs.receive(put, reader, &mut writer).await;
                return;
            }
            Ok(Some(wire::Message::BlobRequest(request))) => {
                blobs.serve(request, &mut writer, true).await;
                return;
            }
            Ok(Some(other)) => {
                tracing::warn!(
                    peer_id,
                    kind = other.name(),
                    "unexpected message on a coordinator stream; closing it"
                );
                return;
            }
            Ok(None) => return,
            Err(e) => {
                tracing::debug!(peer_id, error = %e, "coordinator stream closed");
                return;
            }
        }
    }
}
