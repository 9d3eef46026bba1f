//! Commits made through the Hub's commit API: the operations are checked against the parent's tree, written
//! by `git fast-import` into a scratch repo that reads the mirror's objects, and the resulting pack is what the
//! caller stores and commits through Raft, as for a push.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::Path;

use spacedock_coordinator_core::git::{check_repo_path, lfs_pointer};

use super::receive::Quarantine;
use super::{Mirrors, git, run};

/// One change to the tree.
#[derive(Debug, Clone)]
pub enum Op {
    Add {
        path: String,
        bytes: Vec<u8>,
    },
    AddLfs {
        path: String,
        oid: String,
        size: u64,
    },
    Delete {
        path: String,
    },
    DeleteFolder {
        path: String,
    },
}

impl Op {
    pub fn path(&self) -> &str {
        match self {
            Op::Add { path, .. }
            | Op::AddLfs { path, .. }
            | Op::Delete { path }
            | Op::DeleteFolder { path } => path,
        }
    }
}

/// Who commits, when, and why.
#[derive(Debug, Clone)]
pub struct Meta {
    pub summary: String,
    pub description: String,
    pub author: String,
    pub email: String,
    /// Seconds since the epoch.
    pub at: u64,
}

/// Why a commit cannot be made.
#[derive(Debug)]
pub enum CommitError {
    /// A path is malformed or escapes the repo.
    BadPath(String),
    /// A deleted file or folder is not there.
    NotFound(String),
    Internal(anyhow::Error),
}

impl From<anyhow::Error> for CommitError {
    fn from(e: anyhow::Error) -> Self {
        CommitError::Internal(e)
    }
}

/// The files and folders of a commit.
async fn tree_paths(
    mirror: &Path,
    commit: &str,
) -> anyhow::Result<(HashSet<String>, HashSet<String>)> {
    let out = run(
        git(mirror).args(["ls-tree", "-r", "-t", "-z", commit]),
        None,
    )
    .await?;
    let (mut files, mut dirs) = (HashSet::new(), HashSet::new());
    for record in out.split(|b| *b == 0) {
        let record = String::from_utf8_lossy(record);
        if let Some((meta, path)) = record.split_once('\t') {
            if meta.split(' ').nth(1) == Some("tree") {
                dirs.insert(path.to_owned());
            } else {
                files.insert(path.to_owned());
            }
        }
    }
    Ok((files, dirs))
}

/// Builds the commit in a scratch repo; returns it with the new commit's id.
pub async fn build(
    mirrors: &Mirrors,
    mirror: &Path,
    parent: Option<&str>,
    meta: &Meta,
    ops: &[Op],
) -> Result<(Quarantine, String), CommitError> {
    for op in ops {
        check_repo_path(op.path()).map_err(CommitError::BadPath)?;
    }
    let (mut files, mut dirs) = match parent {
        Some(parent) => tree_paths(mirror, parent).await?,
        None => Default::default(),
    };
    for op in ops {
        match op {
            Op::Add { path, .. } | Op::AddLfs { path, .. } => {
                files.insert(path.clone());
            }
            Op::Delete { path } => {
                if !files.remove(path) {
                    return Err(CommitError::NotFound(format!(
                        "A file with this name doesn't exist: {path}"
                    )));
                }
            }
            Op::DeleteFolder { path } => {
                let path = path.trim_end_matches('/');
                let prefix = format!("{path}/");
                if !dirs.remove(path) {
                    return Err(CommitError::NotFound(format!(
                        "A folder with this name doesn't exist: {path}"
                    )));
                }
                files.retain(|f| !f.starts_with(&prefix));
                dirs.retain(|d| !d.starts_with(&prefix));
            }
        }
    }
    let scratch = Quarantine::scratch(mirrors, mirror)?;
    let stream = fast_import_stream(parent, meta, ops);
    run(
        // Always a pack (fast-import leaves small imports as loose objects otherwise).
        scratch.git().args([
            "-c",
            "fastimport.unpackLimit=0",
            "fast-import",
            "--quiet",
            "--done",
            "--date-format=raw",
        ]),
        Some(&stream),
    )
    .await?;
    let id = run(scratch.git().args(["rev-parse", "refs/heads/commit"]), None).await?;
    let id = String::from_utf8_lossy(&id).trim().to_owned();
    Ok((scratch, id))
}

/// A path as fast-import reads it: C-quoted.
fn quote(path: &str) -> String {
    let mut out = String::from("\"");
    for c in path.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn fast_import_stream(parent: Option<&str>, meta: &Meta, ops: &[Op]) -> Vec<u8> {
    let mut message = meta.summary.clone();
    if !meta.description.is_empty() {
        message.push_str("\n\n");
        message.push_str(&meta.description);
    }
    message.push('\n');
    let who = format!(
        "{} <{}> {} +0000",
        meta.author.replace(['<', '>', '\n'], ""),
        meta.email.replace(['<', '>', '\n'], ""),
        meta.at
    );
    let mut out = Vec::new();
    let mut head = String::new();
    let _ = write!(
        head,
        "commit refs/heads/commit\nauthor {who}\ncommitter {who}\ndata {}\n{message}",
        message.len()
    );
    if let Some(parent) = parent {
        let _ = writeln!(head, "from {parent}");
    }
    out.extend_from_slice(head.as_bytes());
    for op in ops {
        match op {
            Op::Add { path, bytes } => {
                out.extend_from_slice(
                    format!("M 100644 inline {}\ndata {}\n", quote(path), bytes.len()).as_bytes(),
                );
                out.extend_from_slice(bytes);
                out.push(b'\n');
            }
            Op::AddLfs { path, oid, size } => {
                let pointer = lfs_pointer(oid, *size);
                out.extend_from_slice(
                    format!(
                        "M 100644 inline {}\ndata {}\n{pointer}\n",
                        quote(path),
                        pointer.len()
                    )
                    .as_bytes(),
                );
            }
            Op::Delete { path } | Op::DeleteFolder { path } => {
                out.extend_from_slice(
                    format!("D {}\n", quote(path.trim_end_matches('/'))).as_bytes(),
                );
            }
        }
    }
    out.extend_from_slice(b"\ndone\n");
    out
}
