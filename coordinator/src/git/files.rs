//! Reading a repo's files at a commit from its mirror: revisions, tree entries (with their LFS pointers
//! resolved), blob bytes and history, for the Hub's file API.

use std::collections::HashMap;
use std::path::Path;

use spacedock_coordinator_core::git::{is_object_id, parse_lfs_pointer};
use spacedock_coordinator_core::state::RepoGit;

use super::{git, run, run_status};

/// A file or directory at a commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub path: String,
    pub is_dir: bool,
    /// git object id (blob or tree sha1).
    pub oid: String,
    /// Blob size in git (a pointer's size for LFS files); 0 for directories.
    pub size: u64,
    /// For LFS files: the object's sha256 and size.
    pub lfs: Option<(String, u64)>,
}

impl Entry {
    /// The size a client downloads.
    pub fn file_size(&self) -> u64 {
        self.lfs.as_ref().map_or(self.size, |(_, size)| *size)
    }
}

/// A revision (branch, tag, full ref or commit id) to a commit id, by the replicated refs; ids must exist.
pub async fn resolve(git_state: &RepoGit, mirror: &Path, revision: &str) -> Option<String> {
    if revision.starts_with('-') {
        return None;
    }
    let by_ref = [
        format!("refs/heads/{revision}"),
        format!("refs/tags/{revision}"),
        revision.to_owned(),
    ]
    .into_iter()
    .find_map(|name| git_state.refs.get(&name).cloned());
    let id = match by_ref {
        Some(id) => id,
        None if is_object_id(revision) => revision.to_owned(),
        None => return None,
    };
    let (ok, out, _) = run_status(
        git(mirror).args([
            "rev-parse",
            "--verify",
            "--quiet",
            &format!("{id}^{{commit}}"),
        ]),
        None,
    )
    .await
    .ok()?;
    ok.then(|| String::from_utf8_lossy(&out).trim().to_owned())
}

/// Entries under `dir` (the root when empty) at `commit`; every file and directory below it when `recursive`.
pub async fn list(
    mirror: &Path,
    commit: &str,
    dir: &str,
    recursive: bool,
) -> anyhow::Result<Vec<Entry>> {
    let mut command = git(mirror);
    command
        .env("GIT_LITERAL_PATHSPECS", "1")
        .args(["ls-tree", "-l", "-z"]);
    if recursive {
        command.args(["-r", "-t"]);
    }
    command.arg(commit);
    if !dir.is_empty() {
        command.args(["--", &format!("{}/", dir.trim_end_matches('/'))]);
    }
    let out = run(&mut command, None).await?;
    let mut entries = parse_ls_tree(&out);
    if recursive && !dir.is_empty() {
        // `-t` also names the directories leading to `dir`.
        let prefix = format!("{}/", dir.trim_end_matches('/'));
        entries.retain(|e| e.path.starts_with(&prefix));
    }
    resolve_lfs(mirror, &mut entries).await?;
    Ok(entries)
}

/// The entries at exactly these paths (missing ones are left out).
pub async fn stat(mirror: &Path, commit: &str, paths: &[String]) -> anyhow::Result<Vec<Entry>> {
    if paths.is_empty() {
        return Ok(Vec::new());
    }
    let mut command = git(mirror);
    command
        .env("GIT_LITERAL_PATHSPECS", "1")
        .args(["ls-tree", "-l", "-z", "--full-tree", commit, "--"])
        .args(paths.iter().map(|p| p.trim_end_matches('/')));
    let out = run(&mut command, None).await?;
    let mut entries = parse_ls_tree(&out);
    entries.retain(|e| paths.iter().any(|p| p.trim_end_matches('/') == e.path));
    resolve_lfs(mirror, &mut entries).await?;
    Ok(entries)
}

/// `MODE TYPE OID SIZE\tPATH\0` records.
fn parse_ls_tree(out: &[u8]) -> Vec<Entry> {
    out.split(|b| *b == 0)
        .filter_map(|record| {
            let record = std::str::from_utf8(record).ok()?;
            let (meta, path) = record.split_once('\t')?;
            let mut parts = meta.split_whitespace();
            let (_mode, kind, oid, size) =
                (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
            match kind {
                "blob" | "tree" => Some(Entry {
                    path: path.to_owned(),
                    is_dir: kind == "tree",
                    oid: oid.to_owned(),
                    size: size.parse().unwrap_or(0),
                    lfs: None,
                }),
                _ => None, // submodules
            }
        })
        .collect()
}

/// Reads the small blobs among `entries` and marks the LFS pointers.
async fn resolve_lfs(mirror: &Path, entries: &mut [Entry]) -> anyhow::Result<()> {
    let mut ids = String::new();
    for e in entries.iter().filter(|e| !e.is_dir && e.size <= 1024) {
        ids.push_str(&e.oid);
        ids.push('\n');
    }
    if ids.is_empty() {
        return Ok(());
    }
    let out = run(
        git(mirror).args(["cat-file", "--batch"]),
        Some(ids.as_bytes()),
    )
    .await?;
    let mut pointers = HashMap::new();
    for (oid, body) in batch_records(&out) {
        if let Some(pointer) = parse_lfs_pointer(body) {
            pointers.insert(oid.to_owned(), pointer);
        }
    }
    for e in entries.iter_mut() {
        if let Some(pointer) = pointers.get(&e.oid) {
            e.lfs = Some(pointer.clone());
        }
    }
    Ok(())
}

/// The records of `git cat-file --batch` output: `OID TYPE SIZE\nBYTES\n`.
pub fn batch_records(out: &[u8]) -> Vec<(&str, &[u8])> {
    let mut records = Vec::new();
    let mut at = 0;
    while let Some(end) = out
        .get(at..)
        .and_then(|rest| rest.iter().position(|b| *b == b'\n'))
    {
        let header = std::str::from_utf8(&out[at..at + end]).unwrap_or_default();
        let mut parts = header.split(' ');
        let (Some(oid), Some(_kind), Some(size)) = (parts.next(), parts.next(), parts.next())
        else {
            break;
        };
        let size: usize = size.parse().unwrap_or(0);
        let start = at + end + 1;
        let Some(body) = out.get(start..start + size) else {
            break;
        };
        records.push((oid, body));
        at = start + size + 1;
    }
    records
}

/// A blob's bytes.
pub async fn read_blob(mirror: &Path, oid: &str) -> anyhow::Result<Vec<u8>> {
    run(git(mirror).args(["cat-file", "blob", oid]), None).await
}

/// The last commit at or before `commit` that changed `path`.
pub async fn last_commit(
    mirror: &Path,
    commit: &str,
    path: &str,
) -> anyhow::Result<Option<CommitInfo>> {
    let out = run(
        git(mirror).env("GIT_LITERAL_PATHSPECS", "1").args([
            "log",
            "-1",
            "--format=%H%x00%an%x00%at%x00%s%x00%B%x1e",
            commit,
            "--",
            path,
        ]),
        None,
    )
    .await?;
    Ok(parse_log(&out).into_iter().next())
}

/// One commit in a history listing.
#[derive(Debug, Clone)]
pub struct CommitInfo {
    pub id: String,
    pub author: String,
    /// Seconds since the epoch.
    pub date: u64,
    pub title: String,
    pub message: String,
}

/// The history from `commit`, newest first: `limit` commits after skipping `skip`.
pub async fn log(
    mirror: &Path,
    commit: &str,
    skip: usize,
    limit: usize,
) -> anyhow::Result<Vec<CommitInfo>> {
    let out = run(
        git(mirror).args([
            "log",
            "--format=%H%x00%an%x00%at%x00%s%x00%B%x1e",
            &format!("--skip={skip}"),
            &format!("--max-count={limit}"),
            commit,
        ]),
        None,
    )
    .await?;
    Ok(parse_log(&out))
}

/// Records of `git log --format=%H%x00%an%x00%at%x00%s%x00%B%x1e`.
fn parse_log(out: &[u8]) -> Vec<CommitInfo> {
    let text = String::from_utf8_lossy(out);
    text.split('\u{1e}')
        .filter_map(|record| {
            let mut parts = record.trim_start_matches('\n').splitn(5, '\0');
            Some(CommitInfo {
                id: parts.next().filter(|id| is_object_id(id))?.to_owned(),
                author: parts.next()?.to_owned(),
                date: parts.next()?.parse().ok()?,
                title: parts.next()?.to_owned(),
                message: parts.next()?.trim_end().to_owned(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ls_tree_and_batch_output() {
        let out =
            b"100644 blob aaaa 12\tapp.py\x00040000 tree bbbb -\tsrc\x00160000 commit cccc -\tsub\x00";
        let entries = parse_ls_tree(out);
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].path, "app.py");
        assert_eq!(entries[0].size, 12);
        assert!(entries[1].is_dir);
        let batch = b"aaaa blob 5\nhello\nbbbb blob 0\n\n";
        assert_eq!(
            batch_records(batch),
            vec![("aaaa", &b"hello"[..]), ("bbbb", &b""[..])]
        );
    }
}
