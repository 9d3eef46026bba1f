//! The cluster's content-addressed blob store (image layers and configs today): every coordinator keeps blobs
//! under `DATA_DIR/blobs/sha256/HEX`, keyed by their OCI sha256 digest and checked against it when written,
//! with a blake3 sidecar (`HEX.b3`) the store checks before it serves a blob. A blob whose bytes no longer
//! match its sidecar is moved to `quarantine/` and fetched again from a peer.
//!
//! A write is acknowledged once a quorum of coordinators holds the blob durably (this one plus pushes over
//! QUIC); the remaining pushes finish in the background, and any coordinator missing a blob fetches it from
//! a peer when asked for it.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use axum::body::Bytes;
use sha2::Digest as _;
use spacedock_net::blob::{recv_raw, send_raw};
use spacedock_net::{FramedReader, send};
use spacedock_shared::wire::{self, BlobHeader, BlobPut, BlobRequest, BlobStored};
use tokio::io::AsyncSeekExt;

use crate::node::NodeHandle;
use crate::peer::Peers;

const PEER_TIMEOUT: Duration = Duration::from_secs(600);
/// How long a [`Tee`] waits for a peer to take the next piece of an upload before it leaves that peer out.
const TEE_STALL: Duration = Duration::from_secs(30);

/// The hex part of a `sha256:HEX` digest, checked.
pub fn digest_hex(digest: &str) -> anyhow::Result<&str> {
    let hex = digest.strip_prefix("sha256:").ok_or_else(|| {
        anyhow!("`{digest}` is not a sha256 digest (`sha256:` and 64 hex digits)")
    })?;
    if hex.len() != 64
        || !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        bail!("`{digest}` is not a sha256 digest (`sha256:` and 64 lowercase hex digits)");
    }
    Ok(hex)
}

/// Blobs on this coordinator's disk.
#[derive(Debug, Clone)]
pub struct BlobStore {
    root: PathBuf,
}

impl BlobStore {
    pub fn new(root: &Path) -> anyhow::Result<BlobStore> {
        for sub in ["sha256", "tmp", "quarantine"] {
            std::fs::create_dir_all(root.join(sub))
                .with_context(|| format!("creating {}", root.join(sub).display()))?;
        }
        Ok(BlobStore {
            root: root.to_owned(),
        })
    }

    pub fn path(&self, digest: &str) -> anyhow::Result<PathBuf> {
        Ok(self.root.join("sha256").join(digest_hex(digest)?))
    }

    fn sidecar(path: &Path) -> PathBuf {
        path.with_extension("b3")
    }

    /// The blob's size when this coordinator holds it (its sidecar, written last, exists).
    pub fn len(&self, digest: &str) -> Option<u64> {
        let path = self.path(digest).ok()?;
        if !BlobStore::sidecar(&path).exists() {
            return None;
        }
        std::fs::metadata(&path).ok().map(|m| m.len())
    }

    /// Starts writing a blob that must hash to `digest`.
    pub fn writer(&self, digest: &str) -> anyhow::Result<BlobWriter> {
        let dest = self.path(digest)?;
        let tmp = self.root.join("tmp").join(format!(
            "{}.{:016x}",
            digest_hex(digest)?,
            rand::random::<u64>()
        ));
        let file =
            std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        Ok(BlobWriter {
            file,
            tmp,
            dest,
            digest: digest.to_owned(),
            sha: Sha::Inline(sha2::Sha256::new()),
            b3: blake3::Hasher::new(),
            written: 0,
            flusher: None,
        })
    }

    /// Removes blobs not in `keep` whose files are older than `min_age` (younger ones may be uploads whose
    /// reference is not committed yet), and leftovers of cut uploads in `tmp/` older than that. Returns how
    /// many blobs and bytes were removed.
    pub fn collect_garbage(
        &self,
        keep: &std::collections::BTreeSet<String>,
        min_age: Duration,
    ) -> anyhow::Result<(usize, u64)> {
        let old = |meta: &std::fs::Metadata| {
            meta.modified()
                .ok()
                .and_then(|m| m.elapsed().ok())
                .is_some_and(|age| age >= min_age)
        };
        let (mut count, mut bytes) = (0, 0);
        for entry in std::fs::read_dir(self.root.join("sha256"))? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.contains('.') || keep.contains(&format!("sha256:{name}")) {
                continue;
            }
            let meta = entry.metadata()?;
            if !old(&meta) {
                continue;
            }
            // The sidecar goes first: without it the blob reads as absent, never as half there.
            let _ = std::fs::remove_file(BlobStore::sidecar(&entry.path()));
            std::fs::remove_file(entry.path())?;
            count += 1;
            bytes += meta.len();
        }
        for entry in std::fs::read_dir(self.root.join("tmp"))?.flatten() {
            if entry.metadata().is_ok_and(|m| old(&m)) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok((count, bytes))
    }

    /// Stores a file's bytes as a blob (hashed first, then written and checked); returns its digest and size.
    pub fn put_file(&self, path: &Path) -> anyhow::Result<(String, u64)> {
        use std::io::Read as _;
        let open =
            || std::fs::File::open(path).with_context(|| format!("opening {}", path.display()));
        let mut sha = sha2::Sha256::new();
        std::io::copy(&mut open()?, &mut sha)?;
        let digest = format!("sha256:{}", hex::encode(sha.finalize()));
        if let Some(size) = self.len(&digest) {
            return Ok((digest, size));
        }
        let mut writer = self.writer(&digest)?;
        let mut file = open()?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            writer.write(Bytes::copy_from_slice(&buf[..n]))?;
        }
        let size = writer.finish()?;
        Ok((digest, size))
    }

    /// Whether the blob's bytes still match its blake3 sidecar; a blob that does not is quarantined.
    pub async fn check(&self, digest: &str) -> anyhow::Result<bool> {
        let path = self.path(digest)?;
        let quarantine = self.root.join("quarantine");
        tokio::task::spawn_blocking(move || -> anyhow::Result<bool> {
            let sidecar = BlobStore::sidecar(&path);
            let want = match std::fs::read_to_string(&sidecar) {
                Ok(s) => s.trim().to_owned(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
                Err(e) => return Err(e).context(format!("reading {}", sidecar.display())),
            };
            let mut hasher = blake3::Hasher::new();
            let ok = std::fs::File::open(&path)
                .and_then(|f| hasher.update_reader(f).map(|_| ()))
                .is_ok()
                && hasher.finalize().to_hex().as_str() == want;
            if !ok {
                let name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
                tracing::error!(blob = %path.display(), "blob does not match its blake3 sidecar; quarantined");
                let _ = std::fs::remove_file(&sidecar);
                let _ = std::fs::rename(&path, quarantine.join(name));
            }
            Ok(ok)
        })
        .await
        .context("checking a blob")?
    }

    /// Opens a checked blob at `offset`; `None` when it is missing or was quarantined.
    pub async fn open(
        &self,
        digest: &str,
        offset: u64,
    ) -> anyhow::Result<Option<(tokio::fs::File, u64)>> {
        if !self.check(digest).await? {
            return Ok(None);
        }
        self.open_unchecked(digest, offset).await.map(Some)
    }

    /// Opens a blob at `offset` without checking it first (for a reader that checks the bytes itself).
    pub async fn open_unchecked(
        &self,
        digest: &str,
        offset: u64,
    ) -> anyhow::Result<(tokio::fs::File, u64)> {
        let path = self.path(digest)?;
        let mut file = tokio::fs::File::open(&path)
            .await
            .with_context(|| format!("opening {}", path.display()))?;
        let size = file.metadata().await?.len();
        if offset > size {
            bail!("offset {offset} is past the end of {digest} ({size} bytes)");
        }
        file.seek(std::io::SeekFrom::Start(offset)).await?;
        Ok((file, size))
    }
}

/// A whole blob read as a stream, checked against its blake3 sidecar on the way: a mismatch ends the stream
/// with an error (the reader sees a failed transfer, never wrong bytes that look complete) and quarantines
/// the blob. One read of the file instead of a check first and then the read.
pub struct CheckedStream {
    inner: std::pin::Pin<Box<tokio_util::io::ReaderStream<tokio::fs::File>>>,
    hasher: blake3::Hasher,
    want: String,
    store: BlobStore,
    digest: String,
    done: bool,
}

impl std::fmt::Debug for CheckedStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckedStream")
            .field("digest", &self.digest)
            .finish_non_exhaustive()
    }
}

impl tokio_stream::Stream for CheckedStream {
    type Item = std::io::Result<axum::body::Bytes>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        if self.done {
            return Poll::Ready(None);
        }
        match self.inner.as_mut().poll_next(cx) {
            Poll::Ready(Some(Ok(bytes))) => {
                self.hasher.update(&bytes);
                Poll::Ready(Some(Ok(bytes)))
            }
            Poll::Ready(None) => {
                self.done = true;
                if self.hasher.finalize().to_hex().as_str() == self.want {
                    return Poll::Ready(None);
                }
                tracing::error!(digest = %self.digest, "blob does not match its blake3 sidecar while served");
                let (store, digest) = (self.store.clone(), self.digest.clone());
                tokio::spawn(async move {
                    let _ = store.check(&digest).await;
                });
                Poll::Ready(Some(Err(std::io::Error::other(format!(
                    "blob {} failed its integrity check",
                    self.digest
                )))))
            }
            other => other,
        }
    }
}

impl BlobStore {
    /// The whole blob as a stream checked as it is read (see `CheckedStream`); `None` when it is missing.
    pub async fn checked_stream(
        &self,
        digest: &str,
    ) -> anyhow::Result<Option<(CheckedStream, u64)>> {
        let path = self.path(digest)?;
        let want = match tokio::fs::read_to_string(BlobStore::sidecar(&path)).await {
            Ok(s) => s.trim().to_owned(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).context("reading a blob's sidecar"),
        };
        let (file, size) = self.open_unchecked(digest, 0).await?;
        Ok(Some((
            CheckedStream {
                inner: Box::pin(tokio_util::io::ReaderStream::with_capacity(
                    file,
                    256 * 1024,
                )),
                hasher: blake3::Hasher::new(),
                want,
                store: self.clone(),
                digest: digest.to_owned(),
                done: false,
            },
            size,
        )))
    }
}

/// A blob being written: bytes go to a temporary file; `finish` checks the digest and moves it in place.
#[derive(Debug)]
pub struct BlobWriter {
    file: std::fs::File,
    tmp: PathBuf,
    dest: PathBuf,
    digest: String,
    sha: Sha,
    b3: blake3::Hasher,
    written: u64,
    flusher: Option<Flusher>,
}

impl BlobWriter {
    pub fn write(&mut self, bytes: Bytes) -> std::io::Result<()> {
        self.b3.update(&bytes);
        self.file.write_all(&bytes)?;
        let before = self.written;
        self.written += bytes.len() as u64;
        if self.written / FLUSH_EVERY > before / FLUSH_EVERY {
            let flusher = match &self.flusher {
                Some(flusher) => flusher,
                None => self.flusher.insert(Flusher::start(&self.file)?),
            };
            flusher.kick();
        }
        self.sha.update(bytes, self.written)
    }

    /// Checks the bytes against the digest, makes them durable and visible; returns the size.
    pub fn finish(mut self) -> anyhow::Result<u64> {
        let sha = std::mem::replace(&mut self.sha, Sha::Inline(sha2::Sha256::new()));
        let flushed = self.flusher.take().map_or(Ok(()), Flusher::finish);
        sha.finish().and_then(|sha| {
            flushed.context("writing the blob out")?;
            self.commit(&format!("sha256:{}", hex::encode(sha)))
        })
        // Dropping `self` removes the temporary file if it was not moved in place.
    }

    fn commit(&self, got: &str) -> anyhow::Result<u64> {
        if got != self.digest {
            bail!(
                "the bytes do not match their digest: expected {}, got {got} ({} bytes)",
                self.digest,
                self.written
            );
        }
        self.file.sync_all()?;
        std::fs::rename(&self.tmp, &self.dest)
            .with_context(|| format!("moving a blob to {}", self.dest.display()))?;
        let sidecar = BlobStore::sidecar(&self.dest);
        let tmp_sidecar = self.tmp.with_extension("b3");
        let mut f = std::fs::File::create(&tmp_sidecar)?;
        f.write_all(self.b3.finalize().to_hex().as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp_sidecar, &sidecar)?;
        if let Some(dir) = self.dest.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(self.written)
    }
}

/// A writer dropped before it finished (an upload cut off, a push reset) leaves nothing behind.
impl Drop for BlobWriter {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.tmp);
    }
}

/// A blob's sha256 while it is written: computed inline for the first [`SHA_THREAD_AFTER`] bytes, then on a
/// thread of its own, so that for a large blob the hashing (the costliest part of receiving it: about 0.5 s a
/// GiB with SHA-NI) overlaps the blake3, the writing and the receiving.
#[derive(Debug)]
enum Sha {
    Inline(sha2::Sha256),
    Thread {
        tx: std::sync::mpsc::SyncSender<Bytes>,
        thread: std::thread::JoinHandle<sha2::Sha256>,
    },
}

/// Bytes hashed inline before [`Sha`] moves to a thread (small blobs never pay for one).
const SHA_THREAD_AFTER: u64 = 4 << 20;

impl Sha {
    /// Hashes `bytes`; `written` counts them and all before them.
    fn update(&mut self, bytes: Bytes, written: u64) -> std::io::Result<()> {
        let stopped = |_| std::io::Error::other("the sha256 thread stopped");
        match self {
            Sha::Inline(sha) if written <= SHA_THREAD_AFTER => {
                sha.update(&bytes);
                Ok(())
            }
            Sha::Inline(sha) => {
                let mut sha = std::mem::take(sha);
                let (tx, rx) = std::sync::mpsc::sync_channel::<Bytes>(16);
                let thread = std::thread::Builder::new()
                    .name("blob-sha256".into())
                    .spawn(move || {
                        for bytes in rx {
                            sha.update(&bytes);
                        }
                        sha
                    })?;
                tx.send(bytes).map_err(stopped)?;
                *self = Sha::Thread { tx, thread };
                Ok(())
            }
            Sha::Thread { tx, .. } => tx.send(bytes).map_err(stopped),
        }
    }

    fn finish(self) -> anyhow::Result<[u8; 32]> {
        let sha = match self {
            Sha::Inline(sha) => sha,
            Sha::Thread { tx, thread } => {
                drop(tx);
                thread
                    .join()
                    .map_err(|_| anyhow!("the sha256 thread panicked"))?
            }
        };
        Ok(sha.finalize().into())
    }
}

/// Writes a large blob out to disk while it is still arriving: each time another [`FLUSH_EVERY`] bytes were
/// written, a thread of its own calls `fdatasync` on the file, so the `fsync` that acknowledges the blob finds
/// little left to write (left alone, the kernel starts writing back only once gigabytes are dirty).
#[derive(Debug)]
struct Flusher {
    tx: std::sync::mpsc::SyncSender<()>,
    thread: std::thread::JoinHandle<std::io::Result<()>>,
}

const FLUSH_EVERY: u64 = 64 << 20;

impl Flusher {
    fn start(file: &std::fs::File) -> std::io::Result<Flusher> {
        let file = file.try_clone()?;
        let (tx, rx) = std::sync::mpsc::sync_channel::<()>(1);
        let thread = std::thread::Builder::new()
            .name("blob-flush".into())
            .spawn(move || {
                for () in rx {
                    file.sync_data()?;
                }
                Ok(())
            })?;
        Ok(Flusher { tx, thread })
    }

    /// Asks for a flush, unless one is already waiting to start (it will cover these bytes too).
    fn kick(&self) {
        let _ = self.tx.try_send(());
    }

    /// Waits for the flushes asked for; the first error any of them met.
    fn finish(self) -> std::io::Result<()> {
        drop(self.tx);
        self.thread
            .join()
            .map_err(|_| std::io::Error::other("the flush thread panicked"))?
    }
}

/// A blob pushed to peers while it is received ([`Blobs::tee`]), so that a quorum holds it about when this
/// coordinator does rather than one copy after the other. Each peer checks the bytes against the digest itself.
#[derive(Debug)]
pub struct Tee {
    size: u64,
    sent: u64,
    pushes: Vec<(u64, quinn::SendStream, FramedReader<quinn::RecvStream>)>,
    /// Peers whose push could not start or broke off.
    lost: Vec<u64>,
}

/// What a [`Tee`] achieved: the peers that stored the blob, and those whose push failed.
#[derive(Debug, Default)]
pub struct TeeOutcome {
    pub stored: Vec<u64>,
    pub lost: Vec<u64>,
}

impl Tee {
    /// Passes the next bytes on to every peer; a peer that fails, or takes nothing for [`TEE_STALL`], is
    /// dropped (its copy is made later), so a stuck peer cannot hold the upload up.
    pub async fn send(&mut self, bytes: &Bytes) {
        self.sent += bytes.len() as u64;
        if self.sent > self.size {
            self.abort();
            return;
        }
        let mut kept = Vec::with_capacity(self.pushes.len());
        for (peer, mut tx, rx) in self.pushes.drain(..) {
            match tokio::time::timeout(TEE_STALL, tx.write_chunk(bytes.clone())).await {
                Ok(Ok(())) => kept.push((peer, tx, rx)),
                Ok(Err(e)) => {
                    tracing::warn!(peer, error = %e, "a blob push broke off");
                    self.lost.push(peer);
                }
                Err(_) => {
                    tracing::warn!(peer, "a blob push took nothing for {TEE_STALL:?}; dropped");
                    let _ = tx.reset(0u32.into());
                    self.lost.push(peer);
                }
            }
        }
        self.pushes = kept;
    }

    /// Ends the pushes and waits for the peers' answers.
    pub async fn finish(mut self) -> TeeOutcome {
        if self.sent != self.size {
            self.abort();
        }
        let mut stored = Vec::new();
        for (peer, mut tx, mut rx) in self.pushes.drain(..) {
            let answer = async {
                tx.finish()?;
                stored_answer(&mut rx).await
            };
            match tokio::time::timeout(PEER_TIMEOUT, answer).await {
                Ok(Ok(())) => stored.push(peer),
                Ok(Err(e)) => {
                    tracing::warn!(peer, error = %format!("{e:#}"), "a blob push failed");
                    self.lost.push(peer);
                }
                Err(_) => {
                    tracing::warn!(peer, "a blob push got no answer within {PEER_TIMEOUT:?}");
                    self.lost.push(peer);
                }
            }
        }
        TeeOutcome {
            stored,
            lost: std::mem::take(&mut self.lost),
        }
    }

    /// Cuts every push off (the peers keep nothing).
    pub fn abort(&mut self) {
        for (_, mut tx, _) in self.pushes.drain(..) {
            let _ = tx.reset(0u32.into());
        }
    }
}

/// How many of `members` coordinators make a quorum.
fn quorum(members: usize) -> usize {
    members / 2 + 1
}

/// Opens a push of blob `digest` of `size` bytes to `peer`; the raw bytes follow on the stream.
async fn start_push(
    peers: &Peers,
    peer: u64,
    digest: &str,
    size: u64,
) -> anyhow::Result<(quinn::SendStream, FramedReader<quinn::RecvStream>)> {
    let (mut tx, rx) = peers.open(peer).await?;
    let put = BlobPut {
        digest: digest.to_owned(),
        size,
    };
    send(&mut tx, &put.into()).await?;
    Ok((tx, rx))
}

/// A peer's answer to a push: `Ok` once it stored the blob.
async fn stored_answer(rx: &mut FramedReader<quinn::RecvStream>) -> anyhow::Result<()> {
    match rx.recv().await? {
        Some(wire::Message::BlobStored(s)) if s.ok => Ok(()),
        Some(wire::Message::BlobStored(s)) => Err(anyhow!("{}", s.message)),
        other => Err(anyhow!("unexpected answer to a blob push: {other:?}")),
    }
}

/// The store and its replication across coordinators.
#[derive(Debug, Clone)]
pub struct Blobs {
    pub store: BlobStore,
    peers: Option<Peers>,
    node: NodeHandle,
}

impl Blobs {
    pub fn new(store: BlobStore, peers: Option<Peers>, node: NodeHandle) -> Arc<Blobs> {
        Arc::new(Blobs { store, peers, node })
    }

    fn other_members(&self) -> Vec<u64> {
        let me = self.node.status().id;
        self.node
            .read_local(|s| s.members.keys().copied().filter(|id| *id != me).collect())
    }

    /// Pushes a blob this coordinator holds to the others; returns once a quorum (counting this one) holds
    /// it. Only as many pushes as a quorum needs run at first (the next peer takes over from one that fails),
    /// so the acknowledgement does not wait on bandwidth spent on the rest; those follow in the background.
    pub async fn replicate(self: &Arc<Self>, digest: &str) -> anyhow::Result<usize> {
        self.replicate_after(digest, &TeeOutcome::default()).await
    }

    /// [`Blobs::replicate`] after a [`Tee`]: the peers that stored the blob count, and those it lost are
    /// tried last.
    pub async fn replicate_after(
        self: &Arc<Self>,
        digest: &str,
        tee: &TeeOutcome,
    ) -> anyhow::Result<usize> {
        let all = self.other_members();
        let members = all.len() + 1;
        let quorum = quorum(members);
        let held = all.iter().filter(|p| tee.stored.contains(p)).count();
        let need = (quorum - 1).saturating_sub(held);
        let (lost, mut others): (Vec<u64>, Vec<u64>) = all
            .into_iter()
            .filter(|p| !tee.stored.contains(p))
            .partition(|p| tee.lost.contains(p));
        others.extend(lost);
        let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
        let start = |peer: u64| {
            let blobs = self.clone();
            let digest = digest.to_owned();
            let done_tx = done_tx.clone();
            tokio::spawn(async move {
                let result = blobs.push(peer, &digest).await;
                if let Err(e) = &result {
                    tracing::warn!(peer, digest, error = %format!("{e:#}"), "could not replicate a blob");
                }
                let _ = done_tx.send((peer, result));
            });
        };
        let mut waiting = others.into_iter();
        let mut running = 0usize;
        for peer in waiting.by_ref().take(need) {
            start(peer);
            running += 1;
        }
        let (mut ok, mut failures) = (0usize, Vec::new());
        while ok < need {
            if running == 0 {
                bail!(
                    "only {} of {members} coordinators hold {digest}, a quorum needs {quorum}: {}",
                    held + ok + 1,
                    failures.join("; ")
                );
            }
            let Some((peer, result)) = done_rx.recv().await else {
                bail!("replication of {digest} stopped");
            };
            running -= 1;
            match result {
                Ok(()) => ok += 1,
                Err(e) => {
                    failures.push(format!("coordinator {peer}: {e:#}"));
                    if let Some(next) = waiting.next() {
                        start(next);
                        running += 1;
                    }
                }
            }
        }
        for peer in waiting {
            start(peer);
        }
        Ok(held + ok + 1)
    }

    /// Starts pushing blob `digest` of `size` bytes to as many peers as a quorum needs, to be fed the bytes as
    /// this coordinator receives them; a peer that cannot be reached is left out (and [`Blobs::replicate_after`]
    /// makes up for it once the blob is stored here).
    pub async fn tee(&self, digest: &str, size: u64) -> Tee {
        let mut tee = Tee {
            size,
            sent: 0,
            pushes: Vec::new(),
            lost: Vec::new(),
        };
        let Some(peers) = &self.peers else {
            return tee;
        };
        let others = self.other_members();
        let need = quorum(others.len() + 1) - 1;
        for peer in others.into_iter().take(need) {
            match start_push(peers, peer, digest, size).await {
                Ok((tx, rx)) => tee.pushes.push((peer, tx, rx)),
                Err(e) => {
                    tracing::warn!(peer, digest, error = %format!("{e:#}"), "could not start a blob push");
                    tee.lost.push(peer);
                }
            }
        }
        tee
    }

    async fn push(&self, peer: u64, digest: &str) -> anyhow::Result<()> {
        let peers = self.peers.as_ref().ok_or_else(|| anyhow!("no peers"))?;
        // The receiver checks the bytes against the digest before it keeps them.
        let (mut file, size) = self.store.open_unchecked(digest, 0).await?;
        let work = async {
            let (mut tx, mut rx) = start_push(peers, peer, digest, size).await?;
            send_raw(&mut tx, &mut file, size).await?;
            stored_answer(&mut rx).await
        };
        tokio::time::timeout(PEER_TIMEOUT, work)
            .await
            .map_err(|_| anyhow!("no answer within {PEER_TIMEOUT:?}"))?
    }

    /// Makes sure this coordinator holds the blob, fetching it from a peer if not; returns its size.
    pub async fn ensure(&self, digest: &str) -> anyhow::Result<u64> {
        digest_hex(digest)?;
        // Held blobs are checked when they are opened to be served.
        if let Some(size) = self.store.len(digest) {
            return Ok(size);
        }
        let mut errors = Vec::new();
        for peer in self.other_members() {
            match self.fetch_from(peer, digest).await {
                Ok(size) => {
                    tracing::info!(peer, digest, size, "fetched a blob from a peer");
                    return Ok(size);
                }
                Err(e) => errors.push(format!("coordinator {peer}: {e:#}")),
            }
        }
        bail!(
            "no coordinator has blob {digest}{}",
            if errors.is_empty() {
                String::new()
            } else {
                format!(" ({})", errors.join("; "))
            }
        )
    }

    async fn fetch_from(&self, peer: u64, digest: &str) -> anyhow::Result<u64> {
        let peers = self.peers.as_ref().ok_or_else(|| anyhow!("no peers"))?;
        let work = async {
            let (mut tx, mut rx) = peers.open(peer).await?;
            let request = BlobRequest {
                digest: digest.to_owned(),
                offset: 0,
            };
            send(&mut tx, &request.into()).await?;
            let size = match rx.recv().await? {
                Some(wire::Message::BlobHeader(h)) if h.found => h.size,
                Some(wire::Message::BlobHeader(h)) => bail!("{}", h.message),
                other => bail!("unexpected answer to a blob request: {other:?}"),
            };
            let mut writer = self.store.writer(digest)?;
            recv_raw(rx, size, |bytes| writer.write(bytes)).await?;
            writer.finish()
        };
        tokio::time::timeout(PEER_TIMEOUT, work)
            .await
            .map_err(|_| anyhow!("no answer within {PEER_TIMEOUT:?}"))?
    }

    /// Answers a `BlobRequest` (from an agent or a peer): the header, then the bytes from the offset. A
    /// coordinator that lacks the blob asks its peers first, unless the request comes from a peer.
    pub async fn serve(&self, request: BlobRequest, tx: &mut quinn::SendStream, from_peer: bool) {
        let probe = request.is_probe();
        let offset = if probe { 0 } else { request.offset };
        let mut opened = self.store.open(&request.digest, offset).await;
        if !from_peer && matches!(opened, Ok(None)) {
            // Missing or quarantined here: fetch a good copy from a peer.
            opened = match self.ensure(&request.digest).await {
                Ok(_) => self.store.open(&request.digest, offset).await,
                Err(e) => Err(e),
            };
        }
        let header = |found, size, message: String| BlobHeader {
            found,
            size,
            message,
        };
        match opened {
            Ok(Some((mut file, size))) => {
                let length = request.bytes_of(size);
                if send(tx, &header(true, size, String::new()).into())
                    .await
                    .is_ok()
                    && let Err(e) = send_raw(tx, &mut file, length).await
                {
                    tracing::debug!(digest = request.digest, error = %e, "blob transfer cut");
                }
            }
            Ok(None) => {
                let message = format!("blob {} is not here", request.digest);
                let _ = send(tx, &header(false, 0, message).into()).await;
            }
            Err(e) => {
                let _ = send(tx, &header(false, 0, format!("{e:#}")).into()).await;
            }
        }
    }

    /// Receives a blob a peer pushes and answers whether it is stored.
    pub async fn receive(
        &self,
        put: BlobPut,
        rx: FramedReader<quinn::RecvStream>,
        tx: &mut quinn::SendStream,
    ) {
        let result = self.store_received(&put, rx).await;
        answer_stored(tx, result.map(|_| ())).await;
    }

    /// Receives a blob a builder uploads and answers once a quorum of coordinators holds it.
    pub async fn receive_replicated(
        self: &Arc<Self>,
        put: BlobPut,
        rx: FramedReader<quinn::RecvStream>,
        tx: &mut quinn::SendStream,
    ) {
        let result = match self.store_received(&put, rx).await {
            Ok(_) => self.replicate(&put.digest).await.map(|_| ()),
            Err(e) => Err(e),
        };
        answer_stored(tx, result).await;
    }

    async fn store_received(
        &self,
        put: &BlobPut,
        rx: FramedReader<quinn::RecvStream>,
    ) -> anyhow::Result<u64> {
        let mut writer = self.store.writer(&put.digest)?;
        recv_raw(rx, put.size, |bytes| writer.write(bytes)).await?;
        writer.finish()
    }
}

async fn answer_stored(tx: &mut quinn::SendStream, result: anyhow::Result<()>) {
    let stored = match result {
        Ok(()) => BlobStored {
            ok: true,
            message: String::new(),
        },
        Err(e) => BlobStored {
            ok: false,
            message: format!("{e:#}"),
        },
    };
    let _ = send(tx, &stored.into()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(bytes: &[u8]) -> String {
        format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
    }

    #[tokio::test]
    async fn garbage_is_what_nothing_refers_to_once_it_is_old_enough() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::new(dir.path()).unwrap();
        let put = |bytes: &[u8]| {
            let d = digest(bytes);
            let mut w = store.writer(&d).unwrap();
            w.write(Bytes::copy_from_slice(bytes)).unwrap();
            w.finish().unwrap();
            d
        };
        let (kept, garbage) = (put(b"kept"), put(b"garbage"));
        let keep = std::collections::BTreeSet::from([kept.clone()]);
        // Young blobs stay whatever refers to them.
        assert_eq!(
            store
                .collect_garbage(&keep, Duration::from_secs(3600))
                .unwrap(),
            (0, 0)
        );
        assert!(store.len(&garbage).is_some());
        assert_eq!(
            store.collect_garbage(&keep, Duration::ZERO).unwrap(),
            (1, 7)
        );
        assert_eq!(store.len(&garbage), None);
        assert_eq!(store.len(&kept), Some(4));
        assert!(!store.path(&garbage).unwrap().with_extension("b3").exists());
    }

    #[tokio::test]
    async fn a_streamed_blob_that_rotted_ends_in_an_error_and_is_quarantined() {
        use tokio_stream::StreamExt as _;
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::new(dir.path()).unwrap();
        let bytes = vec![7u8; 600 * 1024];
        let d = digest(&bytes);
        let mut w = store.writer(&d).unwrap();
        w.write(Bytes::from(bytes.clone())).unwrap();
        w.finish().unwrap();
        let read = |store: BlobStore, d: String| async move {
            let (mut stream, _) = store.checked_stream(&d).await.unwrap().unwrap();
            let (mut got, mut error) = (Vec::new(), None);
            while let Some(chunk) = stream.next().await {
                match chunk {
                    Ok(b) => got.extend_from_slice(&b),
                    Err(e) => error = Some(e.to_string()),
                }
            }
            (got, error)
        };
        let (got, error) = read(store.clone(), d.clone()).await;
        assert!(got == bytes && error.is_none(), "{error:?}");
        // One byte flips on disk: every byte still streams, then the error, and the blob is quarantined.
        let path = store.path(&d).unwrap();
        let mut rotten = std::fs::read(&path).unwrap();
        rotten[300 * 1024] ^= 1;
        std::fs::write(&path, &rotten).unwrap();
        let (_, error) = read(store.clone(), d.clone()).await;
        assert!(error.unwrap().contains("integrity"));
        for _ in 0..100 {
            if store.len(&d).is_none() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert_eq!(store.len(&d), None, "the rotten blob is still served");
    }

    /// `result` refused a blob `digest` whose bytes did not match it, and left nothing behind.
    fn assert_refused(store: &BlobStore, dir: &Path, result: anyhow::Result<u64>, digest: &str) {
        let err = result.unwrap_err().to_string();
        assert!(
            err.contains("do not match") && err.contains(digest),
            "{err}"
        );
        assert_eq!(store.len(digest), None);
        assert_eq!(std::fs::read_dir(dir.join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn a_large_blob_is_hashed_and_flushed_on_threads_and_checked_all_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::new(dir.path()).unwrap();
        let chunks: Vec<Bytes> = (0..5u8).map(|i| Bytes::from(vec![i; 16 << 20])).collect();
        let d = digest(&chunks.concat());
        let write = |digest: &str, chunks: &[Bytes]| {
            let mut w = store.writer(digest).unwrap();
            for chunk in chunks {
                w.write(chunk.clone()).unwrap();
            }
            assert!(
                matches!(w.sha, Sha::Thread { .. }),
                "an 80 MiB blob hashed inline"
            );
            assert!(
                w.flusher.is_some(),
                "an 80 MiB blob not flushed as it was written"
            );
            w.finish()
        };
        assert_eq!(write(&d, &chunks).unwrap(), 80 << 20);
        assert_eq!(store.len(&d), Some(80 << 20));
        // The same bytes in another order are refused.
        let swapped = [&chunks[1..], &chunks[..1]].concat();
        let other = digest(&swapped.concat());
        assert_refused(&store, dir.path(), write(&other, &chunks), &other);
    }

    #[tokio::test]
    async fn blobs_are_checked_on_write_and_quarantined_when_they_rot() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::new(dir.path()).unwrap();
        let d = digest(b"hello");
        let mut w = store.writer(&d).unwrap();
        w.write(Bytes::from_static(b"hel")).unwrap();
        w.write(Bytes::from_static(b"lo")).unwrap();
        assert_eq!(w.finish().unwrap(), 5);
        assert_eq!(store.len(&d), Some(5));
        assert!(store.check(&d).await.unwrap());
        let (_, size) = store.open(&d, 2).await.unwrap().unwrap();
        assert_eq!(size, 5);

        let other = digest(b"other");
        let mut w = store.writer(&other).unwrap();
        w.write(Bytes::from_static(b"not other")).unwrap();
        assert_refused(&store, dir.path(), w.finish(), &other);

        let path = dir.path().join("sha256").join(digest_hex(&d).unwrap());
        std::fs::write(&path, b"jello").unwrap();
        assert!(!store.check(&d).await.unwrap());
        assert_eq!(store.len(&d), None);
        assert!(store.open(&d, 0).await.unwrap().is_none());
        assert_eq!(
            std::fs::read_dir(dir.path().join("quarantine"))
                .unwrap()
                .count(),
            1
        );
    }

    #[test]
    fn digests_are_checked() {
        assert!(digest_hex("sha256:abc").is_err());
        assert!(digest_hex(&format!("sha256:{}", "A".repeat(64))).is_err());
        assert!(digest_hex(&format!("md5:{}", "a".repeat(64))).is_err());
        assert!(digest_hex(&format!("sha256:{}", "a".repeat(64))).is_ok());
    }
}
