//! Moving a blob's bytes over a stream: `BlobChunk` frames of at most `CHUNK_BYTES`, ended by an empty one.
//! Used by coordinators replicating and serving blobs and by agents fetching them.

use spacedock_shared::wire::{BlobChunk, Message};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};

use crate::{FramedReader, NetError, send};

/// Bytes per chunk (well under the frame limit).
pub const CHUNK_BYTES: usize = 1 << 20;

/// Sends everything `reader` yields as chunks, then the empty chunk; returns the bytes sent.
pub async fn send_chunks<W, R>(tx: &mut W, reader: &mut R) -> Result<u64, NetError>
where
    W: AsyncWrite + Unpin,
    R: AsyncRead + Unpin,
{
    let mut sent = 0u64;
    let mut buf = vec![0u8; CHUNK_BYTES];
    loop {
        let n = reader.read(&mut buf).await?;
        send(
            tx,
            &BlobChunk {
                data: buf[..n].to_vec(),
            }
            .into(),
        )
        .await?;
        if n == 0 {
            return Ok(sent);
        }
        sent += n as u64;
    }
}

/// Receives chunks until the empty one, handing each to `sink`; returns the bytes received.
pub async fn recv_chunks<R>(
    rx: &mut FramedReader<R>,
    mut sink: impl FnMut(&[u8]) -> std::io::Result<()>,
) -> Result<u64, NetError>
where
    R: AsyncRead + Unpin,
{
    let mut received = 0u64;
    loop {
        match rx.recv().await? {
            Some(Message::BlobChunk(chunk)) if chunk.data.is_empty() => return Ok(received),
            Some(Message::BlobChunk(chunk)) => {
                sink(&chunk.data)?;
                received += chunk.data.len() as u64;
            }
            Some(other) => {
                return Err(NetError::Unexpected {
                    expected: "BlobChunk",
                    got: other.name(),
                });
            }
            None => return Err(NetError::Closed("the blob's last chunk")),
        }
    }
}
