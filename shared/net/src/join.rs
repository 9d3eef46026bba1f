//! The joiner's side of the join protocol: dial a coordinator without a certificate, trusting it through the CA
//! fingerprint in the join token, send `JoinRequest`, get the certificate in `JoinReply`; coordinators then say
//! `JoinReady` and wait for `Joined`. The coordinator's side is in `spacedock-coordinator`.

use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use spacedock_shared::wire::{self, JoinReady, JoinReply, JoinRequest};

use crate::{FramedReader, dial_handshake, send, tls};

/// How long a joining coordinator waits to be added as a voter.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
const TIMEOUT: Duration = Duration::from_secs(10);

/// A join in progress on the joiner's side: the reply, and the stream to say `JoinReady` on.
#[derive(Debug)]
pub struct Pending {
    pub reply: JoinReply,
    tx: quinn::SendStream,
    rx: FramedReader<quinn::RecvStream>,
    _connection: quinn::Connection,
}

/// Joiner side: asks the coordinators at `addrs` (in turn) to admit this node.
pub async fn request(
    endpoint: &quinn::Endpoint,
    addrs: &[String],
    token: &str,
    request: JoinRequest,
) -> anyhow::Result<Pending> {
    let (fingerprint, _) = tls::parse_join_token(token)?;
    let client_config = tls::join_client_config(&fingerprint)?;
    let mut last_error = anyhow!("no coordinator address to join");
    for addr in addrs {
        let attempt = async {
            let sock = tokio::net::lookup_host(addr.as_str())
                .await
                .with_context(|| format!("resolving {addr}"))?
                .next()
                .ok_or_else(|| anyhow!("{addr} resolves to nothing"))?;
            let connection = endpoint
                .connect_with(client_config.clone(), sock, tls::SERVER_NAME)?
                .await
                .with_context(|| format!("connecting to {addr}"))?;
            let (mut tx, rx) = connection.open_bi().await?;
            let mut rx = FramedReader::new(rx, wire::DEFAULT_MAX_FRAME_BYTES);
            let software = spacedock_cli_common::software("spacedock");
            dial_handshake(
                &mut rx,
                &mut tx,
                request.role,
                &software,
                &request.name,
                TIMEOUT,
            )
            .await?;
            send(&mut tx, &request.clone().into()).await?;
            match tokio::time::timeout(TIMEOUT, rx.recv())
                .await
                .map_err(|_| anyhow!("no answer from {addr}"))??
            {
                Some(wire::Message::JoinReply(reply)) => Ok(Pending {
                    reply,
                    tx,
                    rx,
                    _connection: connection,
                }),
                Some(wire::Message::Refused(r)) => {
                    Err(anyhow!("{addr} refused the join: {}", r.message))
                }
                other => Err(anyhow!("unexpected answer from {addr}: {other:?}")),
            }
        };
        match attempt.await {
            Ok(pending) => return Ok(pending),
            Err(e) => {
                tracing::warn!(addr, error = %format!("{e:#}"), "join attempt failed");
                last_error = e;
            }
        }
    }
    Err(last_error)
}

impl Pending {
    /// Joiner side, coordinators only: says this node runs, and waits until it is a voter.
    pub async fn ready(mut self) -> anyhow::Result<()> {
        send(&mut self.tx, &JoinReady {}.into()).await?;
        match tokio::time::timeout(READY_TIMEOUT, self.rx.recv())
            .await
            .map_err(|_| anyhow!("not added within {READY_TIMEOUT:?}"))??
        {
            Some(wire::Message::Joined(_)) => Ok(()),
            Some(wire::Message::Refused(r)) => {
                bail!("the cluster could not add this coordinator: {}", r.message)
            }
            other => bail!("unexpected answer while joining: {other:?}"),
        }
    }
}
