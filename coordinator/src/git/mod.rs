//! Git repos on a coordinator. The Raft state holds each repo's refs and the digests of its packs; the packs are
//! blobs in the cluster blob store. Every coordinator keeps a local bare repo per repo (a mirror, by repo uid) that
//! it brings up to the state before serving: packs it lacks are fetched and indexed, refs are written as
//! `packed-refs`. git's own plumbing (`upload-pack`, `index-pack`, `rev-list`, `cat-file`) does the object work.

pub mod commit;
pub mod files;
pub mod pktline;
pub mod receive;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use anyhow::{Context as _, anyhow, bail};
use spacedock_coordinator_core::state::RepoGit;
use tokio::io::AsyncWriteExt as _;

use crate::blobs::{Blobs, digest_hex};

/// One mirror's lock, holding the refs last written to it (`None`: not since start).
type Slot = Arc<tokio::sync::Mutex<Option<BTreeMap<String, String>>>>;

/// The local mirrors of this coordinator.
#[derive(Debug)]
pub struct Mirrors {
    root: PathBuf,
    pub blobs: Arc<Blobs>,
    /// Per repo uid.
    synced: Mutex<HashMap<String, Slot>>,
}

impl Mirrors {
    pub fn new(root: &Path, blobs: Arc<Blobs>) -> anyhow::Result<Arc<Mirrors>> {
        // Scratch left by a push or commit that was cut short by a crash is never needed again.
        let _ = std::fs::remove_dir_all(root.join("tmp"));
        for sub in ["repos", "tmp"] {
            std::fs::create_dir_all(root.join(sub))
                .with_context(|| format!("creating {}", root.join(sub).display()))?;
        }
        Ok(Arc::new(Mirrors {
            root: root.to_owned(),
            blobs,
            synced: Mutex::default(),
        }))
    }

    fn slot(&self, uid: &str) -> Slot {
        let mut map = self.synced.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(uid.to_owned()).or_default().clone()
    }

    /// Brings the mirror of repo `uid` up to `git` (from the replicated state) and returns its path.
    pub async fn sync(&self, uid: &str, git: &RepoGit) -> anyhow::Result<PathBuf> {
        if uid.is_empty() || !uid.bytes().all(|b| b.is_ascii_alphanumeric()) {
            bail!("repo uid {uid:?} cannot name a directory");
        }
        let slot = self.slot(uid);
        let mut written = slot.lock().await;
        let dir = self.root.join("repos").join(format!("{uid}.git"));
        if !dir.join("HEAD").exists() {
            self.init(&dir).await?;
        }
        for digest in &git.packs {
            let hex = digest_hex(digest)?;
            if !dir.join(format!("objects/pack/pack-{hex}.idx")).exists() {
                self.install(&dir, digest, hex)
                    .await
                    .with_context(|| format!("installing pack {digest}"))?;
            }
        }
        remove_replaced_packs(&dir, &git.packs);
        if written.as_ref() != Some(&git.refs) {
            write_refs(&dir, &git.refs)?;
            *written = Some(git.refs.clone());
        }
        Ok(dir)
    }

    async fn init(&self, dir: &Path) -> anyhow::Result<()> {
        let tmp = self.temp_dir()?;
        let staged = tmp.path().join("repo.git");
        run(
            git_in(tmp.path())
                .args(["init", "--bare", "-q"])
                .arg(&staged),
            None,
        )
        .await?;
        std::fs::write(staged.join("HEAD"), "ref: refs/heads/main\n")?;
        for (key, value) in [("gc.auto", "0"), ("core.logAllRefUpdates", "false")] {
            run(git(&staged).args(["config", key, value]), None).await?;
        }
        std::fs::rename(&staged, dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(())
    }

    /// Links a pack from the blob store into the mirror and indexes it; the index appears last, by rename.
    async fn install(&self, dir: &Path, digest: &str, hex: &str) -> anyhow::Result<()> {
        self.blobs.ensure(digest).await?;
        let source = self.blobs.store.path(digest)?;
        let pack = dir.join(format!("objects/pack/pack-{hex}.pack"));
        if !pack.exists() {
            let staged = dir.join(format!("objects/pack/tmp-{hex}.pack"));
            let _ = std::fs::remove_file(&staged);
            if std::fs::hard_link(&source, &staged).is_err() {
                std::fs::copy(&source, &staged)
                    .with_context(|| format!("copying {}", source.display()))?;
            }
            std::fs::rename(&staged, &pack)?;
        }
        let idx = dir.join(format!("objects/pack/tmp-{hex}.idx"));
        run(
            git(dir)
                .args(["index-pack", "--no-rev-index", "-o"])
                .arg(&idx)
                .arg(&pack),
            None,
        )
        .await?;
        std::fs::rename(&idx, dir.join(format!("objects/pack/pack-{hex}.idx")))?;
        Ok(())
    }

    /// Removes the mirrors of repos that no longer exist (`live` holds the uids of those that do). A deleted
    /// repo's requests are refused before they reach its mirror, so nothing is using one being removed.
    pub fn prune(&self, live: &std::collections::HashSet<String>) -> usize {
        let removed = prune_dirs(&self.root.join("repos"), live);
        let mut synced = self.synced.lock().unwrap_or_else(|e| e.into_inner());
        for uid in &removed {
            synced.remove(uid);
        }
        removed.len()
    }

    /// Packs every object the refs of repo `uid` reach into one pack, stores it on a quorum, and returns the
    /// packs it replaces with its digest, for a `CompactPacks` proposal.
    pub async fn compact(
        &self,
        uid: &str,
        repo: &RepoGit,
    ) -> anyhow::Result<(Vec<String>, String)> {
        let mirror = self.sync(uid, repo).await?;
        let scratch = self.temp_dir()?;
        let out = scratch.path().join("compact.pack");
        let file = std::fs::File::create(&out)?;
        let status = git(&mirror)
            .args(["pack-objects", "--revs", "--all", "--stdout", "-q"])
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(Stdio::null())
            .status()
            .await
            .context("starting git pack-objects")?;
        if !status.success() {
            bail!("git pack-objects failed for {uid}");
        }
        let store = self.blobs.store.clone();
        let (digest, _) = tokio::task::spawn_blocking(move || store.put_file(&out)).await??;
        self.blobs.replicate(&digest).await?;
        Ok((repo.packs.clone(), digest))
    }

    /// A scratch directory under the mirrors' root, removed when dropped.
    pub fn temp_dir(&self) -> anyhow::Result<tempfile::TempDir> {
        tempfile::Builder::new()
            .prefix("work-")
            .tempdir_in(self.root.join("tmp"))
            .context("creating a scratch directory")
    }
}

/// Removes the mirror's packs that are no longer the repo's (a compaction replaced them; every object they
/// held that the refs reach is in the new pack).
fn remove_replaced_packs(dir: &Path, packs: &[String]) {
    let Ok(entries) = std::fs::read_dir(dir.join("objects/pack")) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(hex) = name
            .strip_prefix("pack-")
            .and_then(|n| n.strip_suffix(".pack").or_else(|| n.strip_suffix(".idx")))
        else {
            continue;
        };
        if hex.len() == 64 && !packs.iter().any(|p| p.ends_with(hex)) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Removes `DIR/UID.git` for every uid not in `live`; returns the uids removed.
fn prune_dirs(dir: &Path, live: &std::collections::HashSet<String>) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(uid) = name.strip_suffix(".git")
            && !live.contains(uid)
            && std::fs::remove_dir_all(entry.path()).is_ok()
        {
            removed.push(uid.to_owned());
        }
    }
    removed
}

/// Writes the refs as `packed-refs` (by rename, so readers see the old or the new set).
fn write_refs(dir: &Path, refs: &BTreeMap<String, String>) -> anyhow::Result<()> {
    let mut text = String::new();
    for (name, id) in refs {
        text.push_str(&format!("{id} {name}\n"));
    }
    let tmp = dir.join("packed-refs.tmp");
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, dir.join("packed-refs"))?;
    Ok(())
}

/// `git` with a clean environment: no system or user config, no prompts.
pub fn git_in(cwd: &Path) -> tokio::process::Command {
    let mut command = tokio::process::Command::new("git");
    command
        .current_dir(cwd)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("HOME", cwd)
        .kill_on_drop(true);
    command
}

/// `git` on the bare repo at `dir`.
pub fn git(dir: &Path) -> tokio::process::Command {
    let mut command = git_in(dir);
    command.env("GIT_DIR", dir);
    command
}

/// Runs a git command to the end (feeding `stdin`), returning stdout; a failure carries git's stderr.
pub async fn run(
    command: &mut tokio::process::Command,
    stdin: Option<&[u8]>,
) -> anyhow::Result<Vec<u8>> {
    let (ok, stdout, stderr) = run_status(command, stdin).await?;
    if !ok {
        bail!("{}", String::from_utf8_lossy(&stderr).trim());
    }
    Ok(stdout)
}

/// Runs a git command to the end: whether it succeeded, its stdout and stderr.
pub async fn run_status(
    command: &mut tokio::process::Command,
    stdin: Option<&[u8]>,
) -> anyhow::Result<(bool, Vec<u8>, Vec<u8>)> {
    command
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command
        .spawn()
        .context("starting git (is git installed?)")?;
    let feed = async {
        if let (Some(bytes), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(bytes).await?;
        }
        Ok::<_, std::io::Error>(())
    };
    let (fed, output) = tokio::join!(feed, async {
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        read_both(stdout, stderr).await
    });
    let (stdout, stderr) = output?;
    let status = child.wait().await?;
    if let Err(e) = fed
        && status.success()
    {
        return Err(anyhow!("feeding git: {e}"));
    }
    Ok((status.success(), stdout, stderr))
}

async fn read_both(
    stdout: Option<tokio::process::ChildStdout>,
    stderr: Option<tokio::process::ChildStderr>,
) -> std::io::Result<(Vec<u8>, Vec<u8>)> {
    use tokio::io::AsyncReadExt as _;
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let read_out = async {
        if let Some(mut s) = stdout {
            s.read_to_end(&mut out).await?;
        }
        Ok::<_, std::io::Error>(())
    };
    let read_err = async {
        if let Some(mut s) = stderr {
            s.read_to_end(&mut err).await?;
        }
        Ok::<_, std::io::Error>(())
    };
    let (a, b) = tokio::join!(read_out, read_err);
    a?;
    b?;
    Ok((out, err))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_mirrors_of_deleted_repos_are_pruned() {
        let dir = tempfile::tempdir().unwrap();
        for uid in ["keep", "gone"] {
            std::fs::create_dir_all(dir.path().join(format!("{uid}.git/objects"))).unwrap();
        }
        std::fs::write(dir.path().join("stray-file"), b"x").unwrap();
        let live = std::collections::HashSet::from(["keep".to_owned()]);
        assert_eq!(prune_dirs(dir.path(), &live), vec!["gone".to_owned()]);
        assert!(dir.path().join("keep.git/objects").exists());
        assert!(!dir.path().join("gone.git").exists());
        assert!(dir.path().join("stray-file").exists());
    }
}
