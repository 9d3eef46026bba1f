//! A build's context: the files of one commit, read from a git repository with git's own plumbing
//! (`ls-tree`, `cat-file --batch`), checked so that nothing in it reaches outside it: absolute symlinks,
//! symlinks whose target climbs out of the repo, and submodules are errors naming the path. LFS pointer files
//! are listed so the caller can put the objects' bytes in their place.

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context as _, bail};

use crate::layer::{Entry, Kind, entries_hash};

/// The files of a commit.
#[derive(Debug, Clone)]
pub struct BuildContext {
    /// Paths relative to the repo root; owner 0 (the layer that uses them decides).
    pub entries: Vec<Entry>,
    /// LFS pointer files among them: path, sha256 and size of the object.
    pub lfs: Vec<(String, String, u64)>,
    /// `layer::entries_hash` of the entries.
    pub hash: blake3::Hash,
    /// The folder of the LFS objects that entries name as host files, removed when the last clone goes.
    pub held: Option<std::sync::Arc<tempfile::TempDir>>,
}

fn git(repo: &Path) -> Command {
    let mut command = Command::new("git");
    command
        .arg("--git-dir")
        .arg(repo)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null");
    command
}

fn output(mut command: Command, stdin: Option<&[u8]>) -> anyhow::Result<Vec<u8>> {
    command
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().context("starting git (is it installed?)")?;
    if let (Some(bytes), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // Written from a thread so a large answer cannot block git while it still reads.
        let bytes = bytes.to_vec();
        std::thread::spawn(move || pipe.write_all(&bytes));
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("git: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(out.stdout)
}

/// Runs git in the repository at `repo` with `args`; its error output is the error.
pub fn git_run(repo: &Path, args: &[&str]) -> anyhow::Result<Vec<u8>> {
    let mut command = git(repo);
    command.args(args);
    output(command, None)
}

/// Whether a symlink at `path` pointing to `target` stays inside the repo.
fn stays_inside(path: &str, target: &str) -> bool {
    if target.starts_with('/') {
        return false;
    }
    let mut depth: Vec<&str> = path.split('/').collect();
    depth.pop(); // the link itself
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if depth.pop().is_none() {
                    return false;
                }
            }
            other => depth.push(other),
        }
    }
    true
}

/// Reads the tree of `commit` in the git repository at `repo` (a bare repo or a `.git` directory).
pub fn from_git(repo: &Path, commit: &str) -> anyhow::Result<BuildContext> {
    let mut ls = git(repo);
    ls.args(["ls-tree", "-r", "-z", "--full-tree", commit]);
    let listing = output(ls, None).with_context(|| format!("listing the files of {commit}"))?;
    let mut found = Vec::new();
    for record in listing.split(|b| *b == 0).filter(|r| !r.is_empty()) {
        let record = String::from_utf8_lossy(record);
        let Some((meta, path)) = record.split_once('\t') else {
            bail!("unexpected ls-tree output {record:?}");
        };
        let mut parts = meta.split(' ');
        let (Some(mode), Some(kind), Some(oid)) = (parts.next(), parts.next(), parts.next()) else {
            bail!("unexpected ls-tree output {record:?}");
        };
        if kind == "commit" {
            bail!("{path} is a git submodule; submodules are not supported in Space repos");
        }
        found.push((mode.to_owned(), oid.to_owned(), path.to_owned()));
    }
    let ids: String = found.iter().map(|(_, oid, _)| format!("{oid}\n")).collect();
    let mut cat = git(repo);
    cat.args(["cat-file", "--batch"]);
    let contents = output(cat, Some(ids.as_bytes())).context("reading the files")?;
    let mut bodies = Vec::with_capacity(found.len());
    let mut at = 0;
    while at < contents.len() {
        let end = contents[at..]
            .iter()
            .position(|b| *b == b'\n')
            .map(|e| at + e)
            .ok_or_else(|| anyhow::anyhow!("truncated cat-file output"))?;
        let header = String::from_utf8_lossy(&contents[at..end]);
        let size: usize = header
            .rsplit(' ')
            .next()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("unexpected cat-file header {header:?}"))?;
        let body = contents
            .get(end + 1..end + 1 + size)
            .ok_or_else(|| anyhow::anyhow!("truncated cat-file output"))?;
        bodies.push(body.to_vec());
        at = end + 1 + size + 1;
    }
    if bodies.len() != found.len() {
        bail!("git returned {} of {} files", bodies.len(), found.len());
    }
    let mut entries = Vec::with_capacity(found.len());
    let mut lfs = Vec::new();
    for ((mode, _, path), body) in found.into_iter().zip(bodies) {
        let kind = match mode.as_str() {
            "120000" => {
                let target = String::from_utf8(body)
                    .with_context(|| format!("{path}: symlink target is not UTF-8"))?;
                if !stays_inside(&path, &target) {
                    bail!(
                        "{path} is a symlink to `{target}`, outside the repo; links must stay inside it"
                    );
                }
                Kind::Symlink(target)
            }
            _ => {
                if let Some((oid, size)) = spacedock_shared::lfs::parse_lfs_pointer(&body) {
                    lfs.push((path.clone(), oid, size));
                }
                Kind::File(body)
            }
        };
        entries.push(Entry {
            mode: if mode == "100755" {
                0o755
            } else if mode == "120000" {
                0o777
            } else {
                0o644
            },
            path,
            kind,
            uid: 0,
            gid: 0,
        });
    }
    let hash = entries_hash(&entries);
    Ok(BuildContext {
        entries,
        lfs,
        hash,
        held: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo_with(files: &[(&str, &str)], links: &[(&str, &str)]) -> (tempfile::TempDir, String) {
        let dir = tempfile::tempdir().unwrap();
        let run = |args: &[&str]| {
            let out = Command::new("git")
                .current_dir(dir.path())
                .args(args)
                .env("GIT_CONFIG_NOSYSTEM", "1")
                .env("GIT_CONFIG_GLOBAL", "/dev/null")
                .env("GIT_AUTHOR_NAME", "t")
                .env("GIT_AUTHOR_EMAIL", "t@t")
                .env("GIT_COMMITTER_NAME", "t")
                .env("GIT_COMMITTER_EMAIL", "t@t")
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).trim().to_owned()
        };
        run(&["init", "-q"]);
        for (path, body) in files {
            let p = dir.path().join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, body).unwrap();
        }
        for (path, target) in links {
            std::os::unix::fs::symlink(target, dir.path().join(path)).unwrap();
        }
        run(&["add", "-A"]);
        run(&["commit", "-q", "-m", "c"]);
        let commit = run(&["rev-parse", "HEAD"]);
        (dir, commit)
    }

    #[test]
    fn a_commit_becomes_a_context_with_modes_links_and_lfs_pointers() {
        let pointer = format!(
            "version https://git-lfs.github.com/spec/v1\noid sha256:{}\nsize 9\n",
            "a".repeat(64)
        );
        let (dir, commit) = repo_with(
            &[
                ("app.py", "print(1)"),
                ("src/run.sh", "#!/bin/sh"),
                ("w.bin", &pointer),
            ],
            &[("src/link", "../app.py")],
        );
        std::process::Command::new("chmod")
            .arg("+x")
            .arg(dir.path().join("src/run.sh"))
            .status()
            .unwrap();
        let ctx = from_git(&dir.path().join(".git"), &commit).unwrap();
        let paths: Vec<&str> = ctx.entries.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["app.py", "src/link", "src/run.sh", "w.bin"]);
        assert_eq!(ctx.entries[1].kind, Kind::Symlink("../app.py".into()));
        assert_eq!(ctx.lfs, vec![("w.bin".to_owned(), "a".repeat(64), 9)]);
        assert_eq!(
            ctx.hash,
            from_git(&dir.path().join(".git"), &commit).unwrap().hash
        );
    }

    #[test]
    fn links_out_of_the_repo_are_refused() {
        for target in ["/etc/passwd", "../../outside", "a/../../.."] {
            let (dir, commit) = repo_with(&[("app.py", "x")], &[("evil", target)]);
            let err = from_git(&dir.path().join(".git"), &commit)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("evil is a symlink") && err.contains("outside the repo"),
                "{target}: {err}"
            );
        }
        assert!(stays_inside("a/b/link", "../c"));
        assert!(!stays_inside("a/link", "../../c"));
    }
}
