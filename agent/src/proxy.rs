//! Streams the coordinator opens on the agent's connection: `TunnelOpen` pipes bytes to an allocation's app
//! port (the ingress's path to a Space), `LogFollow` sends an allocation's run log and what is appended to it.
//! The connection is the agent's own mutual-TLS link to the leader, so agents still only dial out.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use spacedock_net::{FramedReader, send};
use spacedock_shared::wire::{self, Ready};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use crate::allocs::Runner;

const FIRST_MESSAGE_TIMEOUT: Duration = Duration::from_secs(10);
const LOG_POLL: Duration = Duration::from_millis(250);

/// Serves the coordinator's streams until the connection closes.
pub async fn serve(connection: quinn::Connection, runner: Arc<Runner>) {
    while let Ok((tx, rx)) = connection.accept_bi().await {
        let runner = runner.clone();
        tokio::spawn(async move { stream(tx, rx, &runner).await });
    }
}

async fn stream(mut tx: quinn::SendStream, rx: quinn::RecvStream, runner: &Runner) {
    let mut reader = FramedReader::new(rx, wire::DEFAULT_MAX_FRAME_BYTES);
    let first = tokio::time::timeout(FIRST_MESSAGE_TIMEOUT, reader.recv()).await;
    let ready = |ok, message: String| Ready { ok, message };
    match first {
        Ok(Ok(Some(wire::Message::TunnelOpen(open)))) => {
            let Some((address, port)) = runner.target(&open.allocation) else {
                let message = format!("allocation {} is not running here", open.allocation);
                let _ = send(&mut tx, &ready(false, message).into()).await;
                return;
            };
            let mut app = match tokio::net::TcpStream::connect((address, port)).await {
                Ok(app) => app,
                Err(e) => {
                    let message = format!("the app does not answer on port {port}: {e}");
                    let _ = send(&mut tx, &ready(false, message).into()).await;
                    return;
                }
            };
            if send(&mut tx, &ready(true, String::new()).into())
                .await
                .is_err()
            {
                return;
            }
            let (rx, buffered) = reader.into_parts();
            if app.write_all(&buffered).await.is_err() {
                return;
            }
            let mut quic = tokio::io::join(rx, tx);
            let _ = tokio::io::copy_bidirectional(&mut quic, &mut app).await;
        }
        Ok(Ok(Some(wire::Message::LogFollow(follow)))) => {
            let Some(path) = runner.log_path(&follow.allocation) else {
                let message = format!("allocation {} has no log here", follow.allocation);
                let _ = send(&mut tx, &ready(false, message).into()).await;
                return;
            };
            if send(&mut tx, &ready(true, String::new()).into())
                .await
                .is_ok()
            {
                let _ = follow_log(&path, follow.tail_bytes, &mut tx).await;
            }
        }
        _ => {
            let message = "expected TunnelOpen or LogFollow".to_owned();
            let _ = send(&mut tx, &ready(false, message).into()).await;
        }
    }
}

/// Sends the last `tail` bytes (from a line start) and then whatever is appended, until the reader goes away.
/// A log that shrinks was rotated: reading starts again from its beginning.
async fn follow_log(path: &Path, tail: u64, tx: &mut quinn::SendStream) -> std::io::Result<()> {
    let mut file = tokio::fs::File::open(path).await?;
    let len = file.metadata().await?.len();
    let mut pos = len.saturating_sub(tail);
    if pos > 0 {
        // Start after the first newline so no line is cut.
        file.seek(std::io::SeekFrom::Start(pos)).await?;
        let mut probe = vec![0u8; 4096];
        let n = file.read(&mut probe).await?;
        if let Some(i) = probe[..n].iter().position(|b| *b == b'\n') {
            pos += i as u64 + 1;
        }
    }
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let len = tokio::fs::metadata(path).await.map_or(0, |m| m.len());
        if len < pos {
            file = tokio::fs::File::open(path).await?;
            pos = 0;
        }
        file.seek(std::io::SeekFrom::Start(pos)).await?;
        loop {
            let n = file.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            tx.write_all(&buf[..n]).await?;
            pos += n as u64;
        }
        tokio::select! {
            _ = tokio::time::sleep(LOG_POLL) => {}
            _ = tx.stopped() => return Ok(()),
        }
    }
}
