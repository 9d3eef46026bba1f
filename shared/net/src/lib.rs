//! The wire protocol on real streams: framed messages over any async byte stream (QUIC streams in production),
//! and the opening handshake that negotiates the protocol version.
//!
//! The framing and negotiation rules live in `spacedock_shared::wire`, free of IO; this crate moves bytes, holds the
//! cluster's TLS material and configs (`tls`), and the joiner's side of the join protocol (`join`).

pub mod blob;
pub mod identity;
pub mod join;
pub mod tls;

use std::time::Duration;

use spacedock_shared::wire::{
    self, FrameDecoder, Hello, MIN_PROTOCOL_VERSION, Message, PROTOCOL_VERSION, Refused, Role,
    Welcome, WireError,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Why a stream could not carry messages.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("stream error: {0}")]
    Io(#[from] std::io::Error),
    #[error("the peer closed the stream before {0}")]
    Closed(&'static str),
    #[error("the peer refused the connection ({code:?}): {message}")]
    Refused {
        code: wire::RefuseCode,
        message: String,
    },
    #[error("expected {expected}, got {got}")]
    Unexpected {
        expected: &'static str,
        got: &'static str,
    },
    #[error("no answer within {0:?}")]
    TimedOut(Duration),
}

/// Bytes asked of the stream per read.
const READ_CHUNK: usize = 256 * 1024;

/// Reads messages from a byte stream, holding at most one frame (bounded by `max_frame_bytes`).
#[derive(Debug)]
pub struct FramedReader<R> {
    inner: R,
    decoder: FrameDecoder,
    chunk: Vec<u8>,
}

impl<R: AsyncRead + Unpin> FramedReader<R> {
    pub fn new(inner: R, max_frame_bytes: u32) -> Self {
        FramedReader {
            inner,
            decoder: FrameDecoder::new(max_frame_bytes),
            chunk: vec![0u8; READ_CHUNK],
        }
    }

    /// The next message; `None` when the stream ended cleanly between frames.
    pub async fn recv(&mut self) -> Result<Option<Message>, NetError> {
        loop {
            if let Some(message) = self.decoder.next_message()? {
                return Ok(Some(message));
            }
            let n = self.inner.read(&mut self.chunk).await?;
            if n == 0 {
                self.decoder.finish()?;
                return Ok(None);
            }
            self.decoder.push(&self.chunk[..n]);
        }
    }

    pub fn into_inner(self) -> R {
        self.inner
    }

    /// The stream and the bytes read past the last message, for a stream that carries raw bytes from here on.
    pub fn into_parts(mut self) -> (R, Vec<u8>) {
        let buffered = self.decoder.take_buffered();
        (self.inner, buffered)
    }
}

/// Writes one message as a frame.
pub async fn send<W: AsyncWrite + Unpin>(
    writer: &mut W,
    message: &Message,
) -> Result<(), NetError> {
    let frame = wire::encode(message)?;
    writer.write_all(&frame).await?;
    writer.flush().await?;
    Ok(())
}

/// The dialer's side of the opening exchange: sends `Hello`, returns the listener's `Welcome`.
pub async fn dial_handshake<R, W>(
    reader: &mut FramedReader<R>,
    writer: &mut W,
    role: Role,
    software: &str,
    name: &str,
    timeout: Duration,
) -> Result<Welcome, NetError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let hello = Hello {
        min_version: MIN_PROTOCOL_VERSION,
        max_version: PROTOCOL_VERSION,
        role,
        software: software.into(),
        name: name.into(),
    };
    send(writer, &hello.into()).await?;
    let answer = tokio::time::timeout(timeout, reader.recv())
        .await
        .map_err(|_| NetError::TimedOut(timeout))??;
    match answer {
        Some(Message::Welcome(welcome)) => Ok(welcome),
        Some(Message::Refused(Refused { code, message })) => {
            Err(NetError::Refused { code, message })
        }
        Some(other) => Err(NetError::Unexpected {
            expected: "Welcome",
            got: other.name(),
        }),
        None => Err(NetError::Closed("answering Hello")),
    }
}

/// The listener's side: reads `Hello`, answers `Welcome` with the negotiated version, or `Refused` and an error.
pub async fn accept_handshake<R, W>(
    reader: &mut FramedReader<R>,
    writer: &mut W,
    software: &str,
    timeout: Duration,
) -> Result<(Hello, u16), NetError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let first = tokio::time::timeout(timeout, reader.recv())
        .await
        .map_err(|_| NetError::TimedOut(timeout))?;
    let hello = match first {
        Ok(Some(Message::Hello(hello))) => hello,
        Ok(Some(other)) => {
            let message = format!("the first message must be Hello, not {}", other.name());
            refuse(writer, wire::RefuseCode::BadRequest, &message).await;
            return Err(NetError::Unexpected {
                expected: "Hello",
                got: other.name(),
            });
        }
        Ok(None) => return Err(NetError::Closed("sending Hello")),
        Err(e) => {
            refuse(writer, wire::RefuseCode::BadRequest, &e.to_string()).await;
            return Err(e);
        }
    };
    let (answer, version) = wire::answer_hello(&hello, software);
    send(writer, &answer).await?;
    match (version, answer) {
        (Some(version), _) => Ok((hello, version)),
        (None, Message::Refused(Refused { code, message })) => {
            Err(NetError::Refused { code, message })
        }
        (None, other) => Err(NetError::Unexpected {
            expected: "Refused",
            got: other.name(),
        }),
    }
}

/// Best effort: tells the peer why before the stream is dropped.
async fn refuse<W: AsyncWrite + Unpin>(writer: &mut W, code: wire::RefuseCode, message: &str) {
    let refused = Refused {
        code,
        message: message.into(),
    };
    if let Err(e) = send(writer, &refused.into()).await {
        tracing::debug!(error = %e, "could not send Refused");
    }
}

/// A stream to a coordinator, past the opening handshake, and the connection that carries it.
#[derive(Debug)]
pub struct Dialed {
    pub connection: quinn::Connection,
    pub tx: quinn::SendStream,
    pub rx: FramedReader<quinn::RecvStream>,
}

/// Dials `target` (`host:port`) with the client config (mutual TLS with a node certificate), opens a stream and
/// says `Hello` as `role`/`name`.
pub async fn dial(
    endpoint: &quinn::Endpoint,
    client_config: &quinn::ClientConfig,
    target: &str,
    role: Role,
    name: &str,
    timeout: Duration,
) -> anyhow::Result<Dialed> {
    let addr = tokio::net::lookup_host(target)
        .await?
        .next()
        .ok_or_else(|| anyhow::anyhow!("{target} resolves to nothing"))?;
    let connection = endpoint
        .connect_with(client_config.clone(), addr, tls::SERVER_NAME)?
        .await?;
    let (mut tx, rx) = connection.open_bi().await?;
    let mut rx = FramedReader::new(rx, wire::DEFAULT_MAX_FRAME_BYTES);
    let software = spacedock_cli_common::software(match role {
        Role::Coordinator => "spacedock-coordinator",
        Role::Agent => "spacedock-agent",
        Role::Builder => "spacedock-builder",
        Role::Cli => "spacedock",
    });
    dial_handshake(&mut rx, &mut tx, role, &software, name, timeout).await?;
    Ok(Dialed { connection, tx, rx })
}

/// The leader's answer to a session's opening message (`opening` names it for errors): `Ok(None)` when the
/// session is registered, `Ok(Some(addr))` when this coordinator is not the leader (the leader's QUIC address,
/// empty when unknown); any other refusal is an error with its code.
pub async fn registered(
    rx: &mut FramedReader<quinn::RecvStream>,
    timeout: Duration,
    opening: &str,
) -> anyhow::Result<Option<String>> {
    let answer = tokio::time::timeout(timeout, rx.recv())
        .await
        .map_err(|_| anyhow::anyhow!("no answer to {opening}"))??;
    match answer {
        Some(Message::Registered(_)) => Ok(None),
        Some(Message::Refused(r)) if r.code == wire::RefuseCode::NotLeader => Ok(Some(r.message)),
        Some(Message::Refused(r)) => anyhow::bail!("{:?}: {}", r.code, r.message),
        other => anyhow::bail!("unexpected answer to {opening}: {other:?}"),
    }
}

/// What `forward` hands over: each message read, until the stream ends or fails.
pub type Incoming = tokio::sync::mpsc::Receiver<Result<Option<Message>, NetError>>;

/// Reads the stream on its own task (reading is not cancel-safe, so it cannot sit in a `select!`) and hands
/// every message over; the last item is the end (`Ok(None)`) or the error. Abort the task to stop reading.
pub fn forward<R>(mut reader: FramedReader<R>) -> (Incoming, tokio::task::JoinHandle<()>)
where
    R: AsyncRead + Unpin + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let task = tokio::spawn(async move {
        loop {
            let message = reader.recv().await;
            let end = !matches!(message, Ok(Some(_)));
            if tx.send(message).await.is_err() || end {
                return;
            }
        }
    });
    (rx, task)
}
