//! A push, checked before anything is stored: the pack is indexed into a quarantine beside the mirror (corrupt or
//! incomplete packs fail there), the new objects are listed and held to the size limit and scanned for
//! credentials, fast-forwards are told from rewrites, and a Space's new main commit is read for its config. Only
//! then is the pack stored in the blob store (on a quorum) for the caller to commit the ref update through Raft.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::Context as _;
use axum::body::Bytes;
use spacedock_coordinator_core::command::{RefUpdate, SpaceCommit};
use spacedock_coordinator_core::git::{MAIN, check_ref_name, parse_lfs_pointer, space_commit};
use spacedock_coordinator_core::state::RepoGit;
use spacedock_shared::flavor::Catalog;
use spacedock_shared::secret_scan;
use tokio::io::AsyncWriteExt as _;
use tokio_stream::{Stream, StreamExt as _};

use super::files::batch_records;
use super::pktline::PushCommand;
use super::{Mirrors, git, run, run_status};

/// Largest file a push may carry outside LFS.
pub const MAX_FILE_BYTES: u64 = 10 * 1024 * 1024;

/// Why a push is refused.
#[derive(Debug)]
pub enum Refusal {
    /// The pack could not be read (corrupt, truncated, objects missing): reported as the unpack status.
    Unpack(String),
    /// The pack is fine but the push breaks a rule; the message goes to the pusher.
    Rule(String),
}

/// Credentials found (rendered) and LFS pointers (path, sha256, size) among a push's new files.
type Inspected = (Vec<String>, Vec<(String, String, u64)>);

/// A push that passed every check, ready to commit.
#[derive(Debug)]
pub struct Checked {
    pub updates: Vec<RefUpdate>,
    /// The stored pack's digest, if the push brought objects.
    pub pack: Option<String>,
    pub rewrites: Vec<String>,
    pub space: Option<SpaceCommit>,
    /// Likely credentials found, rendered without the values.
    pub warnings: Vec<String>,
}

/// Where new objects wait while they are checked: a scratch object directory whose alternate is the mirror's.
/// A push's quarantine sees the mirror's refs; a commit's is a scratch repo of its own (no refs).
#[derive(Debug)]
pub struct Quarantine {
    dir: tempfile::TempDir,
    mirror: PathBuf,
    scratch: bool,
}

impl Quarantine {
    /// For a push: git on the mirror, with new objects going to the quarantine.
    pub fn new(mirrors: &Mirrors, mirror: &Path) -> anyhow::Result<Quarantine> {
        let dir = mirrors.temp_dir()?;
        std::fs::create_dir_all(dir.path().join("objects/pack"))?;
        Ok(Quarantine {
            dir,
            mirror: mirror.to_owned(),
            scratch: false,
        })
    }

    /// For a commit: a scratch repo that reads the mirror's objects.
    pub fn scratch(mirrors: &Mirrors, mirror: &Path) -> anyhow::Result<Quarantine> {
        let q = Quarantine::new(mirrors, mirror)?;
        let info = q.objects().join("info");
        std::fs::create_dir_all(&info)?;
        std::fs::create_dir_all(q.dir.path().join("refs"))?;
        std::fs::write(q.dir.path().join("HEAD"), "ref: refs/heads/main\n")?;
        std::fs::write(
            info.join("alternates"),
            format!("{}\n", mirror.join("objects").display()),
        )?;
        Ok(Quarantine { scratch: true, ..q })
    }

    fn objects(&self) -> PathBuf {
        self.dir.path().join("objects")
    }

    /// git seeing the mirror's objects and the quarantined ones.
    pub fn git(&self) -> tokio::process::Command {
        if self.scratch {
            return git(self.dir.path());
        }
        let mut command = git(&self.mirror);
        command.env("GIT_OBJECT_DIRECTORY", self.objects()).env(
            "GIT_ALTERNATE_OBJECT_DIRECTORIES",
            self.mirror.join("objects"),
        );
        command
    }

    /// The packs written into the quarantine.
    pub fn packs(&self) -> anyhow::Result<Vec<PathBuf>> {
        let mut packs = Vec::new();
        for entry in std::fs::read_dir(self.objects().join("pack"))? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "pack") {
                packs.push(path);
            }
        }
        Ok(packs)
    }

    /// Indexes a pack streamed in (`head` then `rest`), completing a thin pack from the mirror.
    pub async fn index_pack<E: std::fmt::Display>(
        &self,
        head: Vec<u8>,
        mut rest: impl Stream<Item = Result<Bytes, E>> + Unpin,
    ) -> Result<(), Refusal> {
        let mut child = self
            .git()
            .args(["index-pack", "--stdin", "--fix-thin", "--strict"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| Refusal::Unpack(format!("starting git index-pack: {e}")))?;
        let mut stdin = child.stdin.take();
        let feed = async {
            let Some(pipe) = stdin.as_mut() else {
                return Ok(());
            };
            pipe.write_all(&head).await.map_err(|e| e.to_string())?;
            while let Some(chunk) = rest.next().await {
                let chunk = chunk.map_err(|e| format!("the push broke off: {e}"))?;
                pipe.write_all(&chunk).await.map_err(|e| e.to_string())?;
            }
            Ok::<_, String>(())
        };
        let fed = feed.await;
        drop(stdin);
        let output = child
            .wait_with_output()
            .await
            .map_err(|e| Refusal::Unpack(e.to_string()))?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let why: Vec<&str> = stderr
                .lines()
                .filter_map(|l| {
                    l.strip_prefix("error: ")
                        .or_else(|| l.strip_prefix("fatal: "))
                })
                .collect();
            return Err(Refusal::Unpack(format!(
                "index-pack failed: {}",
                why.join("; ")
            )));
        }
        fed.map_err(Refusal::Unpack)
    }
}

/// Everything a push is checked against.
#[derive(Debug)]
pub struct Context<'a> {
    pub mirrors: &'a Mirrors,
    /// The mirror, in sync with the refs the commands were checked against.
    pub mirror: &'a Path,
    pub is_space: bool,
    pub catalog: &'a Catalog,
    /// The repo's refs (the mirror's) and LFS objects (pointers to any other are refused).
    pub git: &'a RepoGit,
}

/// Checks a push whose pack starts with `head` and goes on in `rest`, and stores its pack on a quorum.
pub async fn check<E: std::fmt::Display>(
    cx: &Context<'_>,
    commands: &[PushCommand],
    head: Vec<u8>,
    rest: impl Stream<Item = Result<Bytes, E>> + Unpin,
) -> Result<Checked, Refusal> {
    for c in commands {
        check_ref_name(&c.name).map_err(Refusal::Rule)?;
        // Checked again when the update is applied; refusing here keeps a stale push's pack out of the store.
        let now = cx.git.refs.get(&c.name);
        if now != c.old.as_ref() {
            return Err(Refusal::Rule(format!(
                "{} moved: it is at {}; fetch first",
                c.name,
                now.map_or("no commit", String::as_str)
            )));
        }
    }
    let quarantine = Quarantine::new(cx.mirrors, cx.mirror).map_err(internal)?;
    let brings_objects = commands.iter().any(|c| c.new.is_some());
    if brings_objects {
        quarantine.index_pack(head, rest).await?;
    }
    let tips: Vec<&str> = commands.iter().filter_map(|c| c.new.as_deref()).collect();
    for c in commands {
        if let Some(new) = &c.new {
            let kind = run(quarantine.git().args(["cat-file", "-t", new]), None)
                .await
                .map_err(|_| Refusal::Unpack(format!("{new} for {} is not in the push", c.name)))?;
            let kind = String::from_utf8_lossy(&kind).trim().to_owned();
            let allowed = if c.name.starts_with("refs/tags/") {
                kind == "commit" || kind == "tag"
            } else {
                kind == "commit"
            };
            if !allowed {
                return Err(Refusal::Rule(format!(
                    "{} cannot point at a {kind}",
                    c.name
                )));
            }
        }
    }
    let (warnings, lfs) = if tips.is_empty() {
        Default::default()
    } else {
        inspect(&quarantine, &tips).await?
    };
    let missing: Vec<String> = lfs
        .iter()
        .filter(|(_, oid, size)| cx.git.lfs.get(oid) != Some(size))
        .map(|(path, oid, _)| format!("{path} ({oid})"))
        .collect();
    if !missing.is_empty() {
        return Err(Refusal::Rule(format!(
            "LFS objects not uploaded to this repo: {}; push them with `git lfs push --all origin`",
            missing.join(", ")
        )));
    }
    let mut rewrites = Vec::new();
    for c in commands {
        if let (Some(old), Some(new)) = (&c.old, &c.new) {
            let (ancestor, _, _) = run_status(
                quarantine
                    .git()
                    .args(["merge-base", "--is-ancestor", old, new]),
                None,
            )
            .await
            .map_err(internal)?;
            if !ancestor {
                rewrites.push(c.name.clone());
            }
        }
    }
    let space = match commands
        .iter()
        .find(|c| c.name == MAIN)
        .and_then(|c| c.new.as_deref())
    {
        Some(main) if cx.is_space => Some(read_space(&quarantine, main, cx.catalog).await?),
        _ => None,
    };
    let pack = store_pack(cx.mirrors, &quarantine).await?;
    Ok(Checked {
        updates: commands
            .iter()
            .map(|c| RefUpdate {
                name: c.name.clone(),
                old: c.old.clone(),
                new: c.new.clone(),
            })
            .collect(),
        pack,
        rewrites,
        space,
        warnings,
    })
}

fn internal(e: impl std::fmt::Display) -> Refusal {
    Refusal::Unpack(format!("internal error: {e}"))
}

/// Lists the objects the push adds (all must be present), holds blobs to the size limit and scans the small ones
/// for credentials and LFS pointers.
async fn inspect(quarantine: &Quarantine, tips: &[&str]) -> Result<Inspected, Refusal> {
    let listed = run(
        quarantine
            .git()
            .args(["rev-list", "--objects"])
            .args(tips)
            .args(["--not", "--all"]),
        None,
    )
    .await
    .map_err(|e| Refusal::Unpack(format!("the push is incomplete: {e}")))?;
    let listed = String::from_utf8_lossy(&listed);
    let mut paths: HashMap<&str, &str> = HashMap::new();
    let mut ids = String::new();
    for line in listed.lines() {
        let (id, path) = line.split_once(' ').unwrap_or((line, ""));
        if paths.insert(id, path).is_none() {
            ids.push_str(id);
            ids.push('\n');
        }
    }
    let sizes = run(
        quarantine.git().args([
            "cat-file",
            "--batch-check=%(objectname) %(objecttype) %(objectsize)",
        ]),
        Some(ids.as_bytes()),
    )
    .await
    .map_err(internal)?;
    let mut too_big = Vec::new();
    let mut scan = String::new();
    let mut scanned = HashSet::new();
    for line in String::from_utf8_lossy(&sizes).lines() {
        let mut parts = line.split(' ');
        let (Some(id), Some("blob"), Some(size)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let size: u64 = size.parse().unwrap_or(0);
        let path = paths.get(id).copied().unwrap_or(id);
        if size > MAX_FILE_BYTES {
            too_big.push(format!("{path} ({size} bytes)"));
        } else if size as usize <= secret_scan::MAX_SCANNED_BYTES && scanned.insert(id.to_owned()) {
            scan.push_str(id);
            scan.push('\n');
        }
    }
    if !too_big.is_empty() {
        return Err(Refusal::Rule(format!(
            "files over the {MAX_FILE_BYTES}-byte (10 MiB) limit must be stored with git-lfs \
             (`git lfs track FILE`): {}",
            too_big.join(", ")
        )));
    }
    let contents = run(
        quarantine.git().args(["cat-file", "--batch"]),
        Some(scan.as_bytes()),
    )
    .await
    .map_err(internal)?;
    let mut warnings = Vec::new();
    let mut lfs = Vec::new();
    for (id, body) in batch_records(&contents) {
        let path = paths.get(id).copied().unwrap_or(id);
        match parse_lfs_pointer(body) {
            Some((oid, size)) => lfs.push((path.to_owned(), oid, size)),
            None => warnings.extend(secret_scan::scan(path, body).iter().map(|f| f.render())),
        }
    }
    Ok((warnings, lfs))
}

/// What the new main commit of a Space means: its README.md and whether its app file is there.
pub async fn read_space(
    quarantine: &Quarantine,
    main: &str,
    catalog: &Catalog,
) -> Result<SpaceCommit, Refusal> {
    let (found, readme, _) = run_status(
        quarantine
            .git()
            .args(["cat-file", "blob", &format!("{main}:README.md")]),
        None,
    )
    .await
    .map_err(internal)?;
    let files = run(
        quarantine
            .git()
            .args(["ls-tree", "-r", "-z", "--name-only", main]),
        None,
    )
    .await
    .map_err(internal)?;
    let files: HashSet<&[u8]> = files.split(|b| *b == 0).collect();
    Ok(space_commit(
        found.then_some(readme.as_slice()),
        |f| files.contains(f.as_bytes()),
        catalog,
        &crate::api::new_id(),
    ))
}

/// Stores the quarantined pack (if it holds objects) in the blob store and on a quorum of coordinators.
pub async fn store_pack(
    mirrors: &Mirrors,
    quarantine: &Quarantine,
) -> Result<Option<String>, Refusal> {
    let mut stored = None;
    for pack in quarantine.packs().map_err(internal)? {
        if pack_is_empty(&pack).map_err(internal)? {
            continue;
        }
        let store = mirrors.blobs.store.clone();
        let (digest, _) = tokio::task::spawn_blocking(move || store.put_file(&pack))
            .await
            .map_err(internal)?
            .map_err(internal)?;
        mirrors
            .blobs
            .replicate(&digest)
            .await
            .context("storing the push on a quorum of coordinators")
            .map_err(|e| Refusal::Unpack(format!("{e:#}")))?;
        stored = Some(digest);
    }
    Ok(stored)
}

/// Whether a pack file holds no objects (its header's count is zero).
fn pack_is_empty(path: &Path) -> anyhow::Result<bool> {
    use std::io::Read as _;
    let mut header = [0u8; 12];
    std::fs::File::open(path)?.read_exact(&mut header)?;
    Ok(u32::from_be_bytes([header[8], header[9], header[10], header[11]]) == 0)
}
