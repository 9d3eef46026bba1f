//! Fetching image blobs from the cluster over QUIC: any coordinator serves any blob (it asks its peers when it
//! lacks one). Bytes go to `DATA_DIR/partial/HEX` and a cut transfer resumes from what is there; the whole
//! file is checked against the sha256 digest before it is used, and a file that does not match is deleted.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use sha2::Digest as _;
use spacedock_net::blob::recv_chunks;
use spacedock_net::send;
use spacedock_net::tls::{self, Identity};
use spacedock_shared::wire::{self, BlobRequest, Role};

const ATTEMPTS: usize = 6;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Fetches blobs from the coordinators in `targets`.
#[derive(Debug, Clone)]
pub struct Fetcher {
    endpoint: quinn::Endpoint,
    client_config: quinn::ClientConfig,
    targets: Vec<String>,
    name: String,
    dir: PathBuf,
}

impl Fetcher {
    pub fn new(
        identity: &Identity,
        targets: Vec<String>,
        name: &str,
        data_dir: &Path,
    ) -> anyhow::Result<Fetcher> {
        let dir = data_dir.join("partial");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Fetcher {
            endpoint: quinn::Endpoint::client(SocketAddr::from(([0, 0, 0, 0], 0)))?,
            client_config: tls::client_config(identity)?,
            targets,
            name: name.to_owned(),
            dir,
        })
    }

    /// The blob's bytes, checked against its digest. The file is the caller's to delete once used.
    pub async fn fetch(&self, digest: &str) -> anyhow::Result<PathBuf> {
        let hex = digest
            .strip_prefix("sha256:")
            .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(|| anyhow!("`{digest}` is not a sha256 digest"))?;
        let path = self.dir.join(hex);
        let mut errors = Vec::new();
        for attempt in 0..ATTEMPTS {
            let target = &self.targets[attempt % self.targets.len()];
            match self.fetch_from(target, digest, &path).await {
                Ok(()) => return verify(&path, digest).await.map(|()| path),
                Err(e) => {
                    tracing::warn!(digest, target, error = %format!("{e:#}"), "blob transfer failed; resuming");
                    errors.push(format!("{target}: {e:#}"));
                    tokio::time::sleep(Duration::from_millis(300 * (attempt as u64 + 1))).await;
                }
            }
        }
        bail!("cannot fetch {digest}: {}", errors.join("; "))
    }

    async fn fetch_from(&self, target: &str, digest: &str, path: &Path) -> anyhow::Result<()> {
        let offset = std::fs::metadata(path).map_or(0, |m| m.len());
        let spacedock_net::Dialed {
            connection,
            mut tx,
            mut rx,
        } = spacedock_net::dial(
            &self.endpoint,
            &self.client_config,
            target,
            Role::Agent,
            &self.name,
            HANDSHAKE_TIMEOUT,
        )
        .await?;
        let request = BlobRequest {
            digest: digest.to_owned(),
            offset,
        };
        send(&mut tx, &request.into()).await?;
        match rx.recv().await? {
            Some(wire::Message::BlobHeader(h)) if h.found => {}
            Some(wire::Message::BlobHeader(h)) => bail!("{}", h.message),
            Some(wire::Message::Refused(r)) => bail!("refused: {}", r.message),
            other => bail!("unexpected answer to a blob request: {other:?}"),
        }
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        recv_chunks(&mut rx, |bytes| file.write_all(bytes)).await?;
        file.sync_all()?;
        connection.close(0u32.into(), b"done");
        Ok(())
    }
}

/// Checks the file against the digest; deletes it when it does not match.
async fn verify(path: &Path, digest: &str) -> anyhow::Result<()> {
    let owned = path.to_owned();
    let got = tokio::task::spawn_blocking(move || -> std::io::Result<String> {
        let mut hasher = sha2::Sha256::new();
        std::io::copy(&mut std::fs::File::open(&owned)?, &mut hasher)?;
        Ok(format!("sha256:{}", hex_string(&hasher.finalize())))
    })
    .await??;
    if got != digest {
        let _ = std::fs::remove_file(path);
        bail!("the cluster sent bytes that do not match {digest} (they hash to {got}); refused");
    }
    Ok(())
}

fn hex_string(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
