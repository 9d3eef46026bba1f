//! Blobs to and from the cluster over QUIC: any coordinator serves any blob (it asks its peers when it lacks
//! one); a builder's upload is acknowledged once a quorum holds it; `ask` sends one request (a builder's base
//! image lookup). Bytes go to `DATA_DIR/partial/HEX`, hashed as they arrive; a cut transfer resumes from the bytes
//! already there (even after an agent restart). The whole file must hash to the sha256 digest and have the
//! image's size before it is used; a file that does not is deleted. Fetches of one digest take turns, and each
//! caller gets a file of its own (`HEX.N`, renamed from the finished download), so that two allocations or
//! builds needing the same blob never write or consume each other's file.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use bytes::Bytes;
use sha2::Digest as _;
use spacedock_net::blob::{recv_raw, send_raw};
use spacedock_net::send;
use spacedock_net::tls::{self, Identity};
use spacedock_shared::wire::{self, BlobPut, BlobRequest, Role};

const ATTEMPTS: usize = 6;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// Fetches blobs from the coordinators in `targets`.
#[derive(Debug, Clone)]
pub struct Fetcher {
    endpoint: quinn::Endpoint,
    client_config: quinn::ClientConfig,
    targets: Vec<String>,
    role: Role,
    name: String,
    dir: PathBuf,
    /// One lock per digest being fetched.
    busy: std::sync::Arc<std::sync::Mutex<HashMap<String, std::sync::Arc<tokio::sync::Mutex<()>>>>>,
}

/// Numbers the files handed to callers.
static HANDED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl Fetcher {
    pub fn new(
        identity: &Identity,
        targets: Vec<String>,
        role: Role,
        name: &str,
        data_dir: &Path,
    ) -> anyhow::Result<Fetcher> {
        let dir = data_dir.join("partial");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        // Files handed to callers of an earlier process that stopped before using them; downloads in
        // progress (`HEX`) stay, to be resumed.
        for entry in std::fs::read_dir(&dir)?.flatten() {
            if entry.file_name().to_string_lossy().contains('.') {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(Fetcher {
            endpoint: tls::client_endpoint()?,
            client_config: tls::client_config(identity)?,
            targets,
            role,
            name: name.to_owned(),
            dir,
            busy: Default::default(),
        })
    }

    /// The blob's bytes (`size` of them, when the caller knows), checked against its digest. The file is the
    /// caller's to delete.
    pub async fn fetch(&self, digest: &str, size: Option<u64>) -> anyhow::Result<PathBuf> {
        let hex = digest
            .strip_prefix("sha256:")
            .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(|| anyhow!("`{digest}` is not a sha256 digest"))?;
        let lock = {
            let mut busy = self.busy.lock().unwrap_or_else(|p| p.into_inner());
            busy.entry(hex.to_owned()).or_default().clone()
        };
        let turn = lock.lock().await;
        let fetched = self.fetch_own(digest, hex, size).await;
        drop(turn);
        drop(lock);
        let mut busy = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        busy.retain(|_, l| std::sync::Arc::strong_count(l) > 1);
        fetched
    }

    /// `fetch` for the caller holding the digest's turn.
    async fn fetch_own(
        &self,
        digest: &str,
        hex: &str,
        size: Option<u64>,
    ) -> anyhow::Result<PathBuf> {
        let path = self.dir.join(hex);
        let got = self.fetch_resuming(digest, &path).await?;
        if got != digest {
            let _ = std::fs::remove_file(&path);
            bail!(
                "the cluster sent bytes that do not match {digest} (they hash to {got}); refused"
            );
        }
        let len = std::fs::metadata(&path).map_or(0, |m| m.len());
        if let Some(size) = size.filter(|s| *s != len) {
            let _ = std::fs::remove_file(&path);
            bail!("{digest} has {len} bytes, its image says {size}");
        }
        let n = HANDED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let own = self.dir.join(format!("{hex}.{}.{n}", std::process::id()));
        std::fs::rename(&path, &own)
            .with_context(|| format!("moving {} to {}", path.display(), own.display()))?;
        Ok(own)
    }

    /// Appends to the file from what it already holds (hashing that first), hashing as bytes arrive; returns
    /// the digest of the whole file.
    async fn fetch_resuming(&self, digest: &str, path: &Path) -> anyhow::Result<String> {
        let mut hasher = sha2::Sha256::new();
        if path.exists() {
            let mut held = std::fs::File::open(path)?;
            std::io::copy(&mut held, &mut hasher)?;
        }
        let mut errors = Vec::new();
        for attempt in 0..ATTEMPTS {
            let target = &self.targets[attempt % self.targets.len()];
            let offset = std::fs::metadata(path).map_or(0, |m| m.len());
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("opening {}", path.display()))?;
            // Hashing and writing run on a thread of their own, so this task only receives.
            let (pieces, spool) = spool(file, hasher);
            let sink = |bytes: Bytes| {
                pieces
                    .send(bytes)
                    .map_err(|_| std::io::Error::other("the blob's writer stopped"))
            };
            let result = self.fetch_from(target, digest, offset, sink).await;
            drop(pieces);
            let (spooled, returned) = spool
                .join()
                .map_err(|_| anyhow!("the blob's writer panicked"))?;
            hasher = returned;
            match result.and_then(|()| spooled.map_err(Into::into)) {
                Ok(()) => return Ok(format!("sha256:{}", hex_string(&hasher.finalize()))),
                Err(e) => errors.push(self.retry(digest, target, attempt, e).await),
            }
        }
        bail!("cannot fetch {digest}: {}", errors.join("; "))
    }

    async fn retry(&self, digest: &str, target: &str, attempt: usize, e: anyhow::Error) -> String {
        tracing::warn!(digest, target, error = %format!("{e:#}"), "blob transfer failed; resuming");
        tokio::time::sleep(Duration::from_millis(300 * (attempt as u64 + 1))).await;
        format!("{target}: {e:#}")
    }

    /// The blob's bytes from `offset` to its end, handed to `sink` as they arrive.
    async fn fetch_from(
        &self,
        target: &str,
        digest: &str,
        offset: u64,
        sink: impl FnMut(Bytes) -> std::io::Result<()>,
    ) -> anyhow::Result<()> {
        let spacedock_net::Dialed {
            connection,
            mut tx,
            mut rx,
        } = self.open(target).await?;
        let request = BlobRequest {
            digest: digest.to_owned(),
            offset,
        };
        let expected = |size| request.bytes_of(size);
        send(&mut tx, &request.clone().into()).await?;
        let size = match rx.recv().await? {
            Some(wire::Message::BlobHeader(h)) if h.found => h.size,
            Some(wire::Message::BlobHeader(h)) => bail!("{}", h.message),
            Some(wire::Message::Refused(r)) => bail!("refused: {}", r.message),
            other => bail!("unexpected answer to a blob request: {other:?}"),
        };
        recv_raw(rx, expected(size), sink).await?;
        connection.close(0u32.into(), b"done");
        Ok(())
    }

    /// Dials `target` and opens a stream as this node.
    async fn open(&self, target: &str) -> anyhow::Result<spacedock_net::Dialed> {
        spacedock_net::dial(
            &self.endpoint,
            &self.client_config,
            target,
            self.role,
            &self.name,
            HANDSHAKE_TIMEOUT,
        )
        .await
    }

    /// Sends one message on a new stream and returns the answer, trying each coordinator in turn.
    pub async fn ask(&self, message: wire::Message) -> anyhow::Result<wire::Message> {
        let mut errors = Vec::new();
        for target in &self.targets {
            let attempt = async {
                let mut dialed = self.open(target).await?;
                send(&mut dialed.tx, &message).await?;
                let answer = dialed
                    .rx
                    .recv()
                    .await?
                    .ok_or_else(|| anyhow!("the stream ended without an answer"))?;
                dialed.connection.close(0u32.into(), b"done");
                anyhow::Ok(answer)
            };
            match tokio::time::timeout(ANSWER_TIMEOUT, attempt).await {
                Ok(Ok(answer)) => return Ok(answer),
                Ok(Err(e)) => errors.push(format!("{target}: {e:#}")),
                Err(_) => errors.push(format!("{target}: no answer within {ANSWER_TIMEOUT:?}")),
            }
        }
        bail!(
            "no coordinator answered {}: {}",
            message.name(),
            errors.join("; ")
        )
    }

    /// Whether the cluster holds blob `digest`, asked without moving its bytes.
    pub async fn has(&self, digest: &str) -> anyhow::Result<bool> {
        match self.ask(BlobRequest::probe(digest).into()).await? {
            wire::Message::BlobHeader(h) => Ok(h.found),
            other => bail!("unexpected answer to a blob probe: {}", other.name()),
        }
    }

    /// Uploads the file at `path` as blob `digest`; returns once a quorum of coordinators holds it (the
    /// coordinator checks the bytes against the digest).
    pub async fn upload(&self, path: &Path, digest: &str) -> anyhow::Result<()> {
        let mut errors = Vec::new();
        for attempt in 0..ATTEMPTS {
            let target = &self.targets[attempt % self.targets.len()];
            let result = async {
                let mut dialed = self.open(target).await?;
                let mut file = tokio::fs::File::open(path)
                    .await
                    .with_context(|| format!("opening {}", path.display()))?;
                let size = file.metadata().await?.len();
                let put = BlobPut {
                    digest: digest.to_owned(),
                    size,
                };
                send(&mut dialed.tx, &put.into()).await?;
                send_raw(&mut dialed.tx, &mut file, size).await?;
                let answer = dialed.rx.recv().await?;
                dialed.connection.close(0u32.into(), b"done");
                match answer {
                    Some(wire::Message::BlobStored(s)) if s.ok => Ok(()),
                    Some(wire::Message::BlobStored(s)) => Err(anyhow!("{}", s.message)),
                    other => Err(anyhow!("unexpected answer to an upload: {other:?}")),
                }
            }
            .await;
            match result {
                Ok(()) => return Ok(()),
                Err(e) => errors.push(self.retry(digest, target, attempt, e).await),
            }
        }
        bail!("cannot upload {digest}: {}", errors.join("; "))
    }
}

type Spooled = (std::io::Result<()>, sha2::Sha256);

/// A thread that appends what it is sent to the file and hashes it; joined, it gives back whether every write
/// (and the final sync) worked and the hasher, which has seen exactly the bytes written.
fn spool(
    mut file: std::fs::File,
    mut hasher: sha2::Sha256,
) -> (
    std::sync::mpsc::SyncSender<Bytes>,
    std::thread::JoinHandle<Spooled>,
) {
    let (tx, rx) = std::sync::mpsc::sync_channel::<Bytes>(64);
    let handle = std::thread::spawn(move || {
        for bytes in rx {
            if let Err(e) = file.write_all(&bytes) {
                return (Err(e), hasher);
            }
            hasher.update(&bytes);
        }
        (file.sync_all(), hasher)
    });
    (tx, handle)
}

fn hex_string(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use spacedock_net::accept_handshake;
    use spacedock_net::blob::send_raw;
    use spacedock_net::tls::ClusterCa;
    use spacedock_shared::wire::BlobHeader;
    use std::sync::{Arc, Mutex};

    /// A stand-in coordinator: answers each `BlobRequest` from `bytes`, but cuts the first transfer after
    /// `cut_at` bytes; records the offsets asked for.
    async fn server(ca: &ClusterCa, bytes: Vec<u8>, cut_at: u64) -> (String, Arc<Mutex<Vec<u64>>>) {
        let identity = ca.issue("coordinator-1").unwrap();
        let endpoint = quinn::Endpoint::server(
            tls::server_config(&identity).unwrap(),
            "127.0.0.1:0".parse().unwrap(),
        )
        .unwrap();
        let addr = endpoint.local_addr().unwrap().to_string();
        let offsets = Arc::new(Mutex::new(Vec::new()));
        let seen = offsets.clone();
        tokio::spawn(async move {
            let mut first = true;
            while let Some(incoming) = endpoint.accept().await {
                let connection = incoming.await.unwrap();
                let (mut tx, rx) = connection.accept_bi().await.unwrap();
                let mut rx = spacedock_net::FramedReader::new(rx, wire::DEFAULT_MAX_FRAME_BYTES);
                accept_handshake(&mut rx, &mut tx, "stand-in", HANDSHAKE_TIMEOUT)
                    .await
                    .unwrap();
                let Some(wire::Message::BlobRequest(request)) = rx.recv().await.unwrap() else {
                    panic!("expected a blob request");
                };
                seen.lock().unwrap().push(request.offset);
                let size = bytes.len() as u64;
                let header = BlobHeader {
                    found: true,
                    size,
                    message: String::new(),
                };
                send(&mut tx, &header.into()).await.unwrap();
                let rest = &bytes[request.offset as usize..];
                if std::mem::take(&mut first) {
                    let mut part = &rest[..(cut_at - request.offset) as usize];
                    send_raw(&mut tx, &mut part, cut_at - request.offset)
                        .await
                        .unwrap();
                    // End the stream early, once the agent has what was sent.
                    let _ = tx.finish();
                    let _ = tokio::time::timeout(Duration::from_secs(5), tx.stopped()).await;
                    connection.close(1u32.into(), b"cut");
                } else {
                    let mut all = rest;
                    send_raw(&mut tx, &mut all, rest.len() as u64)
                        .await
                        .unwrap();
                    let _ = tx.finish();
                    let _ = connection.closed().await;
                }
            }
        });
        (addr, offsets)
    }

    fn digest(bytes: &[u8]) -> String {
        format!("sha256:{}", hex_string(&sha2::Sha256::digest(bytes)))
    }

    fn fetcher(ca: &ClusterCa, addr: String, dir: &Path) -> Fetcher {
        Fetcher::new(
            &ca.issue("agent-a").unwrap(),
            vec![addr],
            Role::Agent,
            "a",
            dir,
        )
        .unwrap()
    }

    #[tokio::test]
    async fn a_cut_transfer_resumes_where_it_stopped() {
        let ca = ClusterCa::generate("fetch-test").unwrap();
        let bytes: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let (addr, offsets) = server(&ca, bytes.clone(), 1_000_000).await;
        let dir = tempfile::tempdir().unwrap();
        let fetcher = fetcher(&ca, addr, dir.path());
        let path = fetcher
            .fetch(&digest(&bytes), Some(bytes.len() as u64))
            .await
            .unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), bytes);
        let offsets = offsets.lock().unwrap().clone();
        assert_eq!(offsets.len(), 2, "{offsets:?}");
        assert_eq!(offsets[0], 0);
        assert!(
            offsets[1] > 0 && offsets[1] <= 1_000_000,
            "resumed at {}",
            offsets[1]
        );
    }

    #[tokio::test]
    async fn fetches_of_one_blob_at_once_each_get_a_whole_file_of_their_own() {
        let ca = ClusterCa::generate("fetch-test").unwrap();
        let bytes: Vec<u8> = (0..2_000_000u32).map(|i| (i % 241) as u8).collect();
        let (addr, _) = server(&ca, bytes.clone(), 500_000).await;
        let dir = tempfile::tempdir().unwrap();
        let first = fetcher(&ca, addr, dir.path());
        let wanted = digest(&bytes);
        let size = Some(bytes.len() as u64);
        let (a, b) = tokio::join!(first.fetch(&wanted, size), first.fetch(&wanted, size));
        let (a, b) = (a.unwrap(), b.unwrap());
        assert_ne!(a, b);
        assert_eq!(std::fs::read(&a).unwrap(), bytes);
        std::fs::remove_file(&a).unwrap();
        assert_eq!(
            std::fs::read(&b).unwrap(),
            bytes,
            "the other caller's file is whole"
        );
        // A later start clears files handed out but never used, and keeps nothing else.
        drop(first);
        let _again = fetcher(&ca, String::new(), dir.path());
        assert!(!b.exists());
    }

    #[tokio::test]
    async fn bytes_that_do_not_match_the_digest_are_refused_and_deleted() {
        let ca = ClusterCa::generate("fetch-test").unwrap();
        let bytes = vec![7u8; 100_000];
        let (addr, _) = server(&ca, bytes.clone(), 0).await;
        let dir = tempfile::tempdir().unwrap();
        let fetcher = fetcher(&ca, addr, dir.path());
        let wanted = digest(b"something else");
        let err = fetcher
            .fetch(&wanted, Some(100_000))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("do not match") && err.contains(&wanted),
            "{err}"
        );
        assert_eq!(
            std::fs::read_dir(dir.path().join("partial"))
                .unwrap()
                .count(),
            0
        );
    }
}
