//! The agents' connections to this coordinator (the leader), by node name, so that the ingress and the log
//! endpoint can open streams to an agent: agents only dial out, and the coordinator opens streams back on the
//! agent's own mutual-TLS connection.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail};
use spacedock_net::{FramedReader, send};
use spacedock_shared::wire::{self, Message};
use tokio::sync::Notify;

const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// One agent's session here: its connection and a signal that its assignments may have changed.
#[derive(Debug)]
struct Link {
    key: u64,
    connection: quinn::Connection,
    changed: Arc<Notify>,
}

/// Live agent connections.
#[derive(Debug, Default)]
pub struct Links {
    map: Mutex<HashMap<String, Link>>,
}

impl Links {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Link>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records the connection of a node's session; the key unregisters exactly this session, and the signal
    /// fires when the scheduler changed what the node runs.
    pub fn register(&self, node: &str, connection: quinn::Connection) -> (u64, Arc<Notify>) {
        let key = rand::random();
        let changed = Arc::new(Notify::new());
        let link = Link {
            key,
            connection,
            changed: changed.clone(),
        };
        self.map().insert(node.to_owned(), link);
        (key, changed)
    }

    pub fn unregister(&self, node: &str, key: u64) {
        let mut map = self.map();
        if map.get(node).is_some_and(|l| l.key == key) {
            map.remove(node);
        }
    }

    /// Tells a node's session that its assignments changed, so it sends them now rather than at its next check.
    pub fn kick(&self, node: &str) {
        if let Some(link) = self.map().get(node) {
            link.changed.notify_one();
        }
    }

    pub fn has(&self, node: &str) -> bool {
        self.map().contains_key(node)
    }

    /// Opens a stream to the node's agent, sends `first` and waits for its `Ready`; returns the stream as raw
    /// bytes (with anything read past `Ready`).
    pub async fn open(
        &self,
        node: &str,
        first: Message,
    ) -> anyhow::Result<(quinn::SendStream, quinn::RecvStream, Vec<u8>)> {
        let connection = self
            .map()
            .get(node)
            .map(|l| l.connection.clone())
            .ok_or_else(|| anyhow!("node {node} is not connected to this coordinator"))?;
        let (mut tx, rx) = connection.open_bi().await?;
        send(&mut tx, &first).await?;
        let mut rx = FramedReader::new(rx, wire::DEFAULT_MAX_FRAME_BYTES);
        match tokio::time::timeout(READY_TIMEOUT, rx.recv()).await {
            Ok(Ok(Some(Message::Ready(r)))) if r.ok => {}
            Ok(Ok(Some(Message::Ready(r)))) => bail!("{}", r.message),
            Ok(other) => bail!("unexpected answer from node {node}: {other:?}"),
            Err(_) => bail!("node {node} did not answer within {READY_TIMEOUT:?}"),
        }
        let (rx, buffered) = rx.into_parts();
        Ok((tx, rx, buffered))
    }
}
