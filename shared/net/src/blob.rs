//! Moving a blob's bytes over a QUIC stream: after the message that announces them (`BlobHeader` or `BlobPut`,
//! which give the count), the bytes go raw, with no framing: file reads become `Bytes` handed to quinn without
//! a copy, and the receiver takes quinn's chunks as they are. Used by coordinators replicating and serving
//! blobs and by agents fetching them.

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::{FramedReader, NetError};

/// Bytes per read of the source.
pub const CHUNK_BYTES: usize = 1 << 20;

/// Sends `length` bytes of `reader` raw on the stream; returns the bytes sent. A reader that ends early is an
/// error (the receiver counts on `length`).
pub async fn send_raw<R>(
    tx: &mut quinn::SendStream,
    reader: &mut R,
    length: u64,
) -> Result<u64, NetError>
where
    R: AsyncRead + Unpin,
{
    let mut sent = 0u64;
    while sent < length {
        let want = (length - sent).min(CHUNK_BYTES as u64) as usize;
        let mut buf = BytesMut::with_capacity(want);
        while buf.len() < want {
            if reader.read_buf(&mut buf).await? == 0 {
                return Err(NetError::Closed(
                    "the blob's last byte (the source is short)",
                ));
            }
        }
        sent += buf.len() as u64;
        tx.write_chunk(buf.freeze())
            .await
            .map_err(|e| NetError::Io(e.into()))?;
    }
    Ok(sent)
}

/// Receives exactly `length` raw bytes after the last message read from `rx`, handing each piece to `sink` as
/// quinn delivered it (no copy).
/// Returns the stream's halves for an answer that follows (`BlobStored`).
pub async fn recv_raw(
    rx: FramedReader<quinn::RecvStream>,
    length: u64,
    mut sink: impl FnMut(Bytes) -> std::io::Result<()>,
) -> Result<quinn::RecvStream, NetError> {
    let (mut stream, buffered) = rx.into_parts();
    let mut received = buffered.len() as u64;
    if received > length {
        return Err(NetError::Closed("the blob (more bytes than announced)"));
    }
    sink(Bytes::from(buffered))?;
    while received < length {
        let left = (length - received).min(CHUNK_BYTES as u64) as usize;
        match stream
            .read_chunk(left, true)
            .await
            .map_err(|e| NetError::Io(e.into()))?
        {
            Some(chunk) => {
                received += chunk.bytes.len() as u64;
                sink(chunk.bytes)?;
            }
            None => return Err(NetError::Closed("the blob's last byte")),
        }
    }
    Ok(stream)
}
