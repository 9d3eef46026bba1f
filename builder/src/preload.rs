//! `preload_from_hub`: each entry becomes one layer holding the repo's files in the Hub cache layout under
//! `/home/user/.cache/huggingface/hub` (`models--NS--NAME/blobs/ETAG`, `snapshots/COMMIT/PATH` linking to the
//! blob, `refs/main` when the entry follows `main`), so `huggingface_hub` and `transformers` find them offline.
//! The revision is resolved to a commit on the Hub endpoint (this cluster's own API unless configured), the
//! files downloaded with the Space's `HF_TOKEN` secret when it has one. The layer's cache key is blake3 over
//! (repo, commit, files) alone, not the image below it, so every Space that preloads the same thing reuses one
//! layer (same bytes, same digest) without downloading it again.

use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use spacedock_shared::space_config::Preload;

use crate::layer::{Entry, Kind};

/// Where the Hub cache is in a Space's image, and its owner.
pub const HUB_CACHE: &str = "home/user/.cache/huggingface/hub";
const OWNER: u32 = 1000;

/// A preload resolved to a commit and its files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub repo_id: String,
    pub commit: String,
    /// The ref the entry follows (`main`), when it named no commit.
    pub reference: Option<String>,
    pub files: Vec<String>,
}

impl Resolved {
    /// The layer's cache key: what is downloaded, and nothing else.
    pub fn key(&self) -> blake3::Hash {
        let mut definition = format!("preload {} {}", self.repo_id, self.commit);
        if let Some(r) = &self.reference {
            definition.push_str(&format!(" ref {r}"));
        }
        let files: Vec<blake3::Hash> = self
            .files
            .iter()
            .map(|f| blake3::hash(f.as_bytes()))
            .collect();
        crate::layer::step_key(None, &definition, &files)
    }
}

/// The cache folder name of a model repo: `models--NS--NAME`.
pub fn repo_folder(repo_id: &str) -> String {
    format!("models--{}", repo_id.replace('/', "--"))
}

/// The layer's entries (no IO): for each file (path, ETag, its content: downloaded files stay on disk) its blob
/// under `blobs/ETAG` and a relative link under `snapshots/COMMIT/`, and `refs/REF` holding the commit; every
/// folder from `/home/user` down is the user's.
pub fn layout(resolved: &Resolved, files: Vec<(String, String, Kind)>) -> Vec<Entry> {
    let root = format!("{HUB_CACHE}/{}", repo_folder(&resolved.repo_id));
    let dir = |path: String| Entry {
        path,
        kind: Kind::Dir,
        mode: 0o755,
        uid: OWNER,
        gid: OWNER,
    };
    let file = |path: String, kind: Kind| Entry {
        path,
        kind,
        mode: 0o644,
        uid: OWNER,
        gid: OWNER,
    };
    let mut entries = Vec::new();
    let mut folders = std::collections::BTreeSet::new();
    let add_folders = |path: &str, folders: &mut std::collections::BTreeSet<String>| {
        let parts: Vec<&str> = path.split('/').collect();
        for n in 2..parts.len() {
            folders.insert(parts[..n].join("/"));
        }
    };
    let mut blobs = std::collections::BTreeSet::new();
    for (path, etag, content) in files {
        let blob = format!("{root}/blobs/{etag}");
        let link = format!("{root}/snapshots/{}/{path}", resolved.commit);
        let depth = path.split('/').count() + 1;
        let target = format!("{}blobs/{etag}", "../".repeat(depth));
        add_folders(&link, &mut folders);
        add_folders(&blob, &mut folders);
        if blobs.insert(etag) {
            entries.push(file(blob, content));
        }
        entries.push(Entry {
            path: link,
            kind: Kind::Symlink(target),
            mode: 0o777,
            uid: OWNER,
            gid: OWNER,
        });
    }
    if let Some(reference) = &resolved.reference {
        let path = format!("{root}/refs/{reference}");
        add_folders(&path, &mut folders);
        entries.push(file(path, Kind::File(resolved.commit.clone().into_bytes())));
    }
    entries.extend(folders.into_iter().map(dir));
    entries
}

/// Talks to a Hugging Face-compatible endpoint.
#[derive(Debug, Clone)]
pub struct Hub {
    pub endpoint: String,
    pub token: Option<String>,
}

impl Hub {
    fn get(&self, url: &str) -> anyhow::Result<ureq::http::Response<ureq::Body>> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(600)))
            .build()
            .into();
        let mut request = agent.get(url);
        if let Some(token) = &self.token {
            request = request.header("Authorization", &format!("Bearer {token}"));
        }
        let response = request.call().map_err(|e| anyhow!("GET {url}: {e}"))?;
        let status = response.status().as_u16();
        if status >= 400 {
            let reason = crate::registry::header(&response, "x-error-message");
            bail!("GET {url}: HTTP {status} {reason}");
        }
        Ok(response)
    }

    /// The entry's commit and files (all of the repo's when it lists none).
    pub fn resolve(&self, preload: &Preload) -> anyhow::Result<Resolved> {
        let revision = preload.commit.as_deref().unwrap_or("main");
        let url = format!(
            "{}/api/models/{}/revision/{revision}",
            self.endpoint, preload.repo_id
        );
        let info: serde_json::Value =
            serde_json::from_reader(self.get(&url)?.into_body().into_reader())
                .with_context(|| format!("{url}: not JSON"))?;
        let commit = info["sha"]
            .as_str()
            .ok_or_else(|| anyhow!("{url}: no `sha` in the answer"))?
            .to_owned();
        let siblings: Vec<String> = info["siblings"]
            .as_array()
            .map(|s| {
                s.iter()
                    .filter_map(|f| f["rfilename"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        let files = match &preload.files {
            Some(listed) => {
                if let Some(missing) = listed.iter().find(|f| !siblings.contains(f)) {
                    bail!("{} has no file `{missing}` at {commit}", preload.repo_id);
                }
                listed.clone()
            }
            None => siblings,
        };
        Ok(Resolved {
            repo_id: preload.repo_id.clone(),
            commit,
            reference: preload.commit.is_none().then(|| "main".to_owned()),
            files,
        })
    }

    /// Downloads a file at the commit: its ETag (the LFS sha256 or the git blob id) and bytes.
    /// Downloads one file of the resolved repo into `into`; returns its ETag (the Hub cache's blob name).
    pub fn download(
        &self,
        resolved: &Resolved,
        path: &str,
        into: &std::path::Path,
    ) -> anyhow::Result<String> {
        let url = format!(
            "{}/{}/resolve/{}/{path}",
            self.endpoint, resolved.repo_id, resolved.commit
        );
        let response = self.get(&url)?;
        let etag_in = |name: &str| {
            let value = crate::registry::header(&response, name);
            value.trim_start_matches("W/").trim_matches('"').to_owned()
        };
        let etag = Some(etag_in("x-linked-etag"))
            .filter(|e| !e.is_empty())
            .or_else(|| Some(etag_in("etag")))
            .filter(|e| !e.is_empty() && e.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(|| anyhow!("{url}: no usable ETag"))?;
        let mut file =
            std::fs::File::create(into).with_context(|| format!("creating {}", into.display()))?;
        std::io::copy(&mut response.into_body().into_reader(), &mut file)
            .with_context(|| format!("reading {url} into {}", into.display()))?;
        Ok(etag)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolved(reference: Option<&str>) -> Resolved {
        Resolved {
            repo_id: "acme/tiny".into(),
            commit: "c".repeat(40),
            reference: reference.map(str::to_owned),
            files: vec!["config.json".into(), "sub/w.bin".into()],
        }
    }

    #[test]
    fn files_are_laid_out_as_the_hub_cache_with_relative_links() {
        let r = resolved(Some("main"));
        let entries = layout(
            &r,
            vec![
                (
                    "config.json".into(),
                    "e1".into(),
                    Kind::File(b"{}".to_vec()),
                ),
                ("sub/w.bin".into(), "e2".into(), Kind::File(b"w".to_vec())),
            ],
        );
        let root = "home/user/.cache/huggingface/hub/models--acme--tiny";
        let find = |p: &str| {
            entries
                .iter()
                .find(|e| e.path == p)
                .unwrap_or_else(|| panic!("{p}"))
        };
        assert_eq!(
            find(&format!("{root}/blobs/e1")).kind,
            Kind::File(b"{}".to_vec())
        );
        let commit = "c".repeat(40);
        assert_eq!(
            find(&format!("{root}/snapshots/{commit}/sub/w.bin")).kind,
            Kind::Symlink("../../../blobs/e2".into())
        );
        assert_eq!(
            find(&format!("{root}/snapshots/{commit}/config.json")).kind,
            Kind::Symlink("../../blobs/e1".into())
        );
        assert_eq!(
            find(&format!("{root}/refs/main")).kind,
            Kind::File(commit.into_bytes())
        );
        // The user's home and every folder below it are the user's; `/home` stays root's.
        assert_eq!(find("home/user").uid, 1000);
        assert!(entries.iter().all(|e| e.path != "home"));
        let mut bytes = Vec::new();
        crate::layer::write(entries, &mut bytes).unwrap();
    }

    #[test]
    fn the_key_is_what_is_downloaded_and_nothing_else() {
        let a = resolved(Some("main"));
        assert_eq!(a.key(), resolved(Some("main")).key());
        assert_ne!(a.key(), resolved(None).key());
        let mut b = resolved(Some("main"));
        b.files.pop();
        assert_ne!(a.key(), b.key());
        assert_eq!(repo_folder("acme/tiny"), "models--acme--tiny");
    }
}
