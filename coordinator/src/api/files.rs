//! The Hub's file API over git repos: downloads (`resolve`, with `X-Repo-Commit`, `ETag`/`X-Linked-Etag`,
//! `X-Linked-Size` and `Range`), tree listing (recursive, paginated), `paths-info`, refs, commit history,
//! `preupload` and `commit` (NDJSON: regular files, LFS files, deletions; `parentCommit` checked), plus the
//! revision and sibling files of repo info.

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, Query, State as AxumState};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{Value, json};
use spacedock_coordinator_core::Command;
use spacedock_coordinator_core::command::RefUpdate;
use spacedock_coordinator_core::git::MAIN;
use spacedock_coordinator_core::state::RepoKind;
use spacedock_shared::secret_scan;
use tokio::io::AsyncReadExt as _;

use super::git_http::target;
use super::{Api, ApiError, iso8601};
use crate::git::commit::{self, CommitError, Meta, Op};
use crate::git::files::{self, Entry};
use crate::git::receive::{self, MAX_FILE_BYTES, Refusal};

/// Tree entries per page (the Hub's caps: 1,000, or 50 with each entry's last commit).
const TREE_PAGE: usize = 1000;
const TREE_PAGE_EXPANDED: usize = 50;
/// Commits per page of history.
const COMMITS_PAGE: usize = 50;
/// Largest commit request (regular files travel base64-encoded inside it).
const MAX_COMMIT_BODY: usize = 512 << 20;

pub fn routes() -> Router<Api> {
    let mut router = Router::new();
    for kind in [RepoKind::Model, RepoKind::Dataset, RepoKind::Space] {
        let web = format!("/{}{{ns}}/{{name}}", kind.url_prefix());
        let api = format!("/api/{}s/{{ns}}/{{name}}", kind.as_str());
        router = router
            .route(
                &format!("{web}/resolve/{{rev}}/{{*path}}"),
                get(move |a, h, p| resolve(a, h, p, kind)),
            )
            .route(
                &format!("{api}/tree/{{rev}}"),
                get(move |a, h, Path((ns, name, rev)), q| {
                    tree(a, h, Path((ns, name, rev, String::new())), q, kind)
                }),
            )
            .route(
                &format!("{api}/tree/{{rev}}/{{*path}}"),
                get(move |a, h, p, q| tree(a, h, p, q, kind)),
            )
            .route(
                &format!("{api}/paths-info/{{rev}}"),
                post(move |a, h, p, b| paths_info(a, h, p, b, kind)),
            )
            .route(
                &format!("{api}/refs"),
                get(move |a, h, p| refs(a, h, p, kind)),
            )
            .route(
                &format!("{api}/auth-check"),
                get(move |a, h, p| auth_check(a, h, p, kind, false)),
            )
            .route(
                &format!("{api}/auth-check/write"),
                get(move |a, h, p| auth_check(a, h, p, kind, true)),
            )
            .route(
                &format!("{api}/commits/{{rev}}"),
                get(move |a, h, p, q| commits(a, h, p, q, kind)),
            )
            .route(
                &format!("{api}/preupload/{{rev}}"),
                post(move |a, h, p, b| preupload(a, h, p, b, kind)),
            )
            .route(
                &format!("{api}/commit/{{rev}}"),
                post(move |a, h, p, q, b| commit(a, h, p, q, b, kind))
                    .layer(DefaultBodyLimit::max(MAX_COMMIT_BODY)),
            );
    }
    router
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    tracing::error!(error = %e, "file API request failed");
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "Internal", e.to_string())
}

fn revision_not_found(rev: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "RevisionNotFound",
        format!("Invalid rev id: {rev}"),
    )
}

/// A repo's mirror, synced, and a revision resolved on it.
struct AtRevision {
    mirror: std::path::PathBuf,
    /// `None`: the repo has no commits and the revision is `main`.
    commit: Option<String>,
}

async fn at_revision(
    api: &Api,
    headers: &HeaderMap,
    kind: RepoKind,
    path: (String, String),
    rev: &str,
    write: bool,
) -> Result<AtRevision, ApiError> {
    let target = target(api, headers, kind, path, write).await?;
    let mirror = api
        .mirrors
        .sync(&target.uid, &target.git)
        .await
        .map_err(|e| internal(format!("{e:#}")))?;
    let commit = files::resolve(&target.git, &mirror, rev).await;
    if commit.is_none() && !(target.git.refs.is_empty() && (rev == "main" || rev == MAIN)) {
        return Err(revision_not_found(rev));
    }
    Ok(AtRevision { mirror, commit })
}

/// An entry as `list_repo_tree` and `get_paths_info` read it.
fn entry_json(e: &Entry) -> Value {
    if e.is_dir {
        return json!({ "type": "directory", "oid": e.oid, "path": e.path });
    }
    let mut v = json!({ "type": "file", "oid": e.oid, "size": e.file_size(), "path": e.path });
    if let Some((oid, size)) = &e.lfs {
        v["lfs"] = json!({ "oid": oid, "size": size, "pointerSize": e.size });
    }
    v
}

/// The `siblings` of repo info at a commit.
async fn siblings(mirror: &std::path::Path, commit: &str) -> Result<Vec<Value>, ApiError> {
    let entries = files::list(mirror, commit, "", true)
        .await
        .map_err(|e| internal(format!("{e:#}")))?;
    Ok(entries
        .iter()
        .filter(|e| !e.is_dir)
        .map(|e| {
            let mut v = json!({ "rfilename": e.path, "size": e.file_size(), "blobId": e.oid });
            if let Some((oid, size)) = &e.lfs {
                v["lfs"] = json!({ "sha256": oid, "size": size, "pointerSize": e.size });
            }
            v
        })
        .collect())
}

/// Repo info at a revision (`None`: main, or nothing for an empty repo): the commit as `sha` and its files.
pub async fn info_at(
    api: &Api,
    headers: &HeaderMap,
    kind: RepoKind,
    path: (String, String),
    rev: Option<&str>,
    mut info: Value,
) -> Result<Value, ApiError> {
    let rev = match rev {
        Some(rev) => rev,
        None if info["sha"].is_string() => "main",
        None => return Ok(info),
    };
    let at = at_revision(api, headers, kind, path, rev, false).await?;
    info["sha"] = json!(at.commit);
    if let Some(commit) = &at.commit {
        info["siblings"] = Value::Array(siblings(&at.mirror, commit).await?);
    }
    Ok(info)
}

async fn resolve(
    AxumState(api): AxumState<Api>,
    headers: HeaderMap,
    Path((ns, name, rev, path)): Path<(String, String, String, String)>,
    kind: RepoKind,
) -> Result<Response, ApiError> {
    let at = at_revision(&api, &headers, kind, (ns, name), &rev, false).await?;
    let commit = at.commit.ok_or_else(|| revision_not_found(&rev))?;
    let entry = files::stat(&at.mirror, &commit, std::slice::from_ref(&path))
        .await
        .map_err(|e| internal(format!("{e:#}")))?
        .into_iter()
        .find(|e| !e.is_dir);
    let Some(entry) = entry else {
        let mut response = ApiError::new(
            StatusCode::NOT_FOUND,
            "EntryNotFound",
            format!("{path} does not exist at {commit}"),
        )
        .into_response();
        if let Ok(v) = HeaderValue::from_str(&commit) {
            response.headers_mut().insert("x-repo-commit", v);
        }
        return Ok(response);
    };
    let size = entry.file_size();
    let range = match parse_range(&headers, size) {
        Ok(range) => range,
        Err(()) => {
            return Ok((
                StatusCode::RANGE_NOT_SATISFIABLE,
                [(header::CONTENT_RANGE, format!("bytes */{size}"))],
            )
                .into_response());
        }
    };
    let (start, end) = range.unwrap_or((0, size));
    let body = match &entry.lfs {
        None => {
            let bytes = files::read_blob(&at.mirror, &entry.oid)
                .await
                .map_err(|e| internal(format!("{e:#}")))?;
            let slice = bytes.get(start as usize..end as usize).unwrap_or_default();
            Body::from(Bytes::copy_from_slice(slice))
        }
        Some((oid, _)) => lfs_body(&api, oid, start, end).await?,
    };
    let etag = entry.lfs.as_ref().map_or(&entry.oid, |(oid, _)| oid);
    let mut response = Response::new(body);
    let h = response.headers_mut();
    let mut set = |name: &'static str, value: String| {
        if let Ok(v) = HeaderValue::from_str(&value) {
            h.insert(name, v);
        }
    };
    set("x-repo-commit", commit.clone());
    set("etag", format!("\"{etag}\""));
    if entry.lfs.is_some() {
        set("x-linked-etag", format!("\"{etag}\""));
        set("x-linked-size", size.to_string());
    }
    set("accept-ranges", "bytes".into());
    set("content-type", "application/octet-stream".into());
    set("content-length", (end - start).to_string());
    if range.is_some() {
        set(
            "content-range",
            format!("bytes {start}-{}/{size}", end.saturating_sub(1)),
        );
        *response.status_mut() = StatusCode::PARTIAL_CONTENT;
    }
    Ok(response)
}

/// An LFS object's bytes `[start, end)` from the blob store (fetched from a peer first if need be).
pub(super) async fn lfs_body(api: &Api, oid: &str, start: u64, end: u64) -> Result<Body, ApiError> {
    let digest = format!("sha256:{oid}");
    api.blobs.ensure(&digest).await.map_err(|e| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "EntryNotFound",
            format!("LFS object {oid} is not stored: {e:#}"),
        )
    })?;
    let failed = || internal(format!("LFS object {oid} failed its check"));
    // A whole object is checked as it streams; a range is checked first.
    if start == 0 {
        let (stream, size) = api
            .blobs
            .store
            .checked_stream(&digest)
            .await
            .map_err(|e| internal(format!("{e:#}")))?
            .ok_or_else(failed)?;
        if size == end {
            return Ok(Body::from_stream(stream));
        }
    }
    let (file, _) = api
        .blobs
        .store
        .open(&digest, start)
        .await
        .map_err(|e| internal(format!("{e:#}")))?
        .ok_or_else(failed)?;
    Ok(Body::from_stream(
        tokio_util::io::ReaderStream::with_capacity(file.take(end - start), 256 * 1024),
    ))
}

/// A single `Range: bytes=A-B` (or `A-`, or `-N`) as `[start, end)`; `Err` when it cannot be satisfied.
pub(super) fn parse_range(headers: &HeaderMap, size: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(value) = headers.get(header::RANGE).and_then(|v| v.to_str().ok()) else {
        return Ok(None);
    };
    let spec = value.strip_prefix("bytes=").ok_or(())?;
    if spec.contains(',') {
        return Err(());
    }
    let (a, b) = spec.split_once('-').ok_or(())?;
    let (start, end) = match (a.trim(), b.trim()) {
        ("", n) => {
            let n: u64 = n.parse().map_err(|_| ())?;
            (size.saturating_sub(n), size)
        }
        (a, "") => (a.parse().map_err(|_| ())?, size),
        (a, b) => {
            let b: u64 = b.parse().map_err(|_| ())?;
            (a.parse().map_err(|_| ())?, (b + 1).min(size))
        }
    };
    if start >= end || start >= size {
        return Err(());
    }
    Ok(Some((start, end)))
}

#[derive(Debug, Deserialize)]
struct TreeQuery {
    recursive: Option<String>,
    expand: Option<String>,
    cursor: Option<String>,
    limit: Option<usize>,
}

fn truthy(v: &Option<String>) -> bool {
    v.as_deref()
        .is_some_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

async fn tree(
    AxumState(api): AxumState<Api>,
    headers: HeaderMap,
    Path((ns, name, rev, path)): Path<(String, String, String, String)>,
    Query(q): Query<TreeQuery>,
    kind: RepoKind,
) -> Result<Response, ApiError> {
    let repo_id = format!("{ns}/{name}");
    let at = at_revision(&api, &headers, kind, (ns, name), &rev, false).await?;
    let Some(commit) = at.commit else {
        return Ok(axum::Json(json!([])).into_response());
    };
    let dir = path.trim_matches('/');
    if !dir.is_empty() {
        let found = files::stat(&at.mirror, &commit, &[dir.to_owned()])
            .await
            .map_err(|e| internal(format!("{e:#}")))?;
        if !found.iter().any(|e| e.is_dir) {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "EntryNotFound",
                format!("{dir} is not a folder at {commit}"),
            ));
        }
    }
    let entries = files::list(&at.mirror, &commit, dir, truthy(&q.recursive))
        .await
        .map_err(|e| internal(format!("{e:#}")))?;
    let expand = truthy(&q.expand);
    let most = if expand {
        TREE_PAGE_EXPANDED
    } else {
        TREE_PAGE
    };
    let page = q.limit.unwrap_or(most).clamp(1, most);
    let from: usize = q
        .cursor
        .as_deref()
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let shown: Vec<Entry> = entries.iter().skip(from).take(page).cloned().collect();
    let items = entries_json(&at.mirror, &commit, &shown, expand).await?;
    let mut response = axum::Json(Value::Array(items)).into_response();
    if from + page < entries.len() {
        let mut next = format!(
            "{}/api/{}s/{repo_id}/tree/{}",
            api.public_url,
            kind.as_str(),
            encode(&rev)
        );
        if !dir.is_empty() {
            next.push('/');
            next.push_str(dir);
        }
        next.push_str(&format!(
            "?recursive={}&expand={}&limit={page}&cursor={}",
            truthy(&q.recursive),
            truthy(&q.expand),
            from + page
        ));
        if let Ok(v) = HeaderValue::from_str(&format!("<{next}>; rel=\"next\"")) {
            response.headers_mut().insert(header::LINK, v);
        }
    }
    Ok(response)
}

/// A revision as one URL path segment.
fn encode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

async fn paths_info(
    AxumState(api): AxumState<Api>,
    headers: HeaderMap,
    Path((ns, name, rev)): Path<(String, String, String)>,
    body: Bytes,
    kind: RepoKind,
) -> Result<axum::Json<Value>, ApiError> {
    let paths: Vec<String> = form_urlencoded::parse(&body)
        .filter(|(k, _)| k == "paths")
        .map(|(_, v)| v.into_owned())
        .collect();
    let at = at_revision(&api, &headers, kind, (ns, name), &rev, false).await?;
    let Some(commit) = at.commit else {
        return Ok(axum::Json(json!([])));
    };
    let entries = files::stat(&at.mirror, &commit, &paths)
        .await
        .map_err(|e| internal(format!("{e:#}")))?;
    let expand =
        form_urlencoded::parse(&body).any(|(k, v)| k == "expand" && v.eq_ignore_ascii_case("true"));
    Ok(axum::Json(Value::Array(
        entries_json(&at.mirror, &commit, &entries, expand).await?,
    )))
}

/// Entries as JSON; with `expand`, each with the last commit that changed it (`lastCommit`).
async fn entries_json(
    mirror: &std::path::Path,
    commit: &str,
    entries: &[Entry],
    expand: bool,
) -> Result<Vec<Value>, ApiError> {
    let mut items = Vec::with_capacity(entries.len());
    for e in entries {
        let mut v = entry_json(e);
        if expand
            && let Some(last) = files::last_commit(mirror, commit, &e.path)
                .await
                .map_err(|e| internal(format!("{e:#}")))?
        {
            v["lastCommit"] =
                json!({ "id": last.id, "title": last.title, "date": iso8601(last.date * 1000) });
        }
        items.push(v);
    }
    Ok(items)
}

async fn refs(
    AxumState(api): AxumState<Api>,
    headers: HeaderMap,
    Path(path): Path<(String, String)>,
    kind: RepoKind,
) -> Result<axum::Json<Value>, ApiError> {
    let target = target(&api, &headers, kind, path, false).await?;
    let list = |prefix: &str| -> Vec<Value> {
        target
            .git
            .refs
            .iter()
            .filter_map(|(name, id)| {
                let short = name.strip_prefix(prefix)?;
                Some(json!({ "name": short, "ref": name, "targetCommit": id }))
            })
            .collect()
    };
    // History rewrites (forced pushes) are recorded; clients that do not know the key ignore it.
    let rewrites: Vec<Value> = target
        .git
        .rewrites
        .iter()
        .map(|r| json!({ "ref": r.ref_name, "from": r.old, "to": r.new, "by": r.by, "at": iso8601(r.at) }))
        .collect();
    Ok(axum::Json(json!({
        "branches": list("refs/heads/"),
        "tags": list("refs/tags/"),
        "converts": [],
        "pullRequests": [],
        "rewrites": rewrites,
    })))
}

/// `auth_check`: 200 when the caller may read the repo (or, with `write`, write to it); otherwise the error
/// reading or writing would get.
async fn auth_check(
    AxumState(api): AxumState<Api>,
    headers: HeaderMap,
    Path(path): Path<(String, String)>,
    kind: RepoKind,
    write: bool,
) -> Result<axum::Json<Value>, ApiError> {
    target(&api, &headers, kind, path, write).await?;
    Ok(axum::Json(json!({})))
}

#[derive(Debug, Deserialize)]
struct CommitsQuery {
    p: Option<usize>,
}

async fn commits(
    AxumState(api): AxumState<Api>,
    headers: HeaderMap,
    Path((ns, name, rev)): Path<(String, String, String)>,
    Query(q): Query<CommitsQuery>,
    kind: RepoKind,
) -> Result<Response, ApiError> {
    let repo_id = format!("{ns}/{name}");
    let at = at_revision(&api, &headers, kind, (ns, name), &rev, false).await?;
    let Some(commit) = at.commit else {
        return Ok(axum::Json(json!([])).into_response());
    };
    let page = q.p.unwrap_or(0);
    let mut history = files::log(&at.mirror, &commit, page * COMMITS_PAGE, COMMITS_PAGE + 1)
        .await
        .map_err(|e| internal(format!("{e:#}")))?;
    let more = history.len() > COMMITS_PAGE;
    history.truncate(COMMITS_PAGE);
    let items: Vec<Value> = history
        .iter()
        .map(|c| {
            json!({
                "id": c.id,
                "authors": [{ "user": c.author }],
                "date": iso8601(c.date * 1000),
                "title": c.title,
                "message": c.message,
            })
        })
        .collect();
    let mut response = axum::Json(Value::Array(items)).into_response();
    if more {
        let next = format!(
            "<{}/api/{}s/{repo_id}/commits/{}?p={}>; rel=\"next\"",
            api.public_url,
            kind.as_str(),
            encode(&rev),
            page + 1
        );
        if let Ok(v) = HeaderValue::from_str(&next) {
            response.headers_mut().insert(header::LINK, v);
        }
    }
    Ok(response)
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PreuploadBody {
    files: Vec<PreuploadFile>,
    /// The `.gitignore` the commit brings, if it brings one.
    git_ignore: Option<String>,
}

/// The paths a `.gitignore` ignores (and always anything under `.git/`).
fn ignored(gitignore: Option<&str>) -> impl Fn(&str) -> bool {
    let mut builder = ignore::gitignore::GitignoreBuilder::new("");
    for line in gitignore.unwrap_or_default().lines() {
        // A line git would not understand is skipped, as git skips it.
        let _ = builder.add_line(None, line);
    }
    let rules = builder.build().ok();
    move |path: &str| {
        path.split('/').any(|part| part == ".git")
            || rules
                .as_ref()
                .is_some_and(|r| r.matched_path_or_any_parents(path, false).is_ignore())
    }
}

#[derive(Debug, Deserialize)]
struct PreuploadFile {
    path: String,
    size: u64,
}

/// Files over the git limit go through LFS, as do files whose current version is in LFS.
async fn preupload(
    AxumState(api): AxumState<Api>,
    headers: HeaderMap,
    Path((ns, name, rev)): Path<(String, String, String)>,
    super::Json(body): super::Json<PreuploadBody>,
    kind: RepoKind,
) -> Result<axum::Json<Value>, ApiError> {
    let at = at_revision(&api, &headers, kind, (ns, name), &rev, true).await?;
    let paths: Vec<String> = body.files.iter().map(|f| f.path.clone()).collect();
    let current = match &at.commit {
        Some(commit) => files::stat(&at.mirror, commit, &paths)
            .await
            .map_err(|e| internal(format!("{e:#}")))?,
        None => Vec::new(),
    };
    // The commit's own .gitignore, else the one the revision has.
    let gitignore = match (&body.git_ignore, &at.commit) {
        (Some(text), _) => Some(text.clone()),
        (None, Some(commit)) => {
            let entry = files::stat(&at.mirror, commit, &[".gitignore".to_owned()])
                .await
                .map_err(|e| internal(format!("{e:#}")))?;
            match entry.first().filter(|e| !e.is_dir && e.lfs.is_none()) {
                Some(e) => Some(
                    String::from_utf8_lossy(
                        &files::read_blob(&at.mirror, &e.oid)
                            .await
                            .map_err(|e| internal(format!("{e:#}")))?,
                    )
                    .into_owned(),
                ),
                None => None,
            }
        }
        (None, None) => None,
    };
    let is_ignored = ignored(gitignore.as_deref());
    let files: Vec<Value> = body
        .files
        .iter()
        .map(|f| {
            let now = current.iter().find(|e| e.path == f.path && !e.is_dir);
            let lfs = f.size > MAX_FILE_BYTES || now.is_some_and(|e| e.lfs.is_some());
            let ignored = is_ignored(&f.path);
            let mut v = json!({
                "path": f.path,
                "uploadMode": if lfs { "lfs" } else { "regular" },
                "shouldIgnore": ignored,
            });
            if let Some(e) = now {
                v["oid"] = json!(e.lfs.as_ref().map_or(&e.oid, |(oid, _)| oid));
            }
            v
        })
        .collect();
    Ok(axum::Json(
        json!({ "files": files, "commitOid": at.commit }),
    ))
}

#[derive(Debug, Deserialize)]
struct CommitQuery {
    create_pr: Option<String>,
}

/// One NDJSON line of a commit.
#[derive(Debug, Deserialize)]
struct Line {
    key: String,
    value: Value,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct HeaderValueBody {
    summary: String,
    #[serde(default)]
    description: String,
    parent_commit: Option<String>,
}

#[derive(Debug, Deserialize)]
struct FileValue {
    path: String,
    content: String,
    #[serde(default)]
    encoding: Option<String>,
}

#[derive(Debug, Deserialize)]
struct LfsFileValue {
    path: String,
    oid: String,
    #[serde(default)]
    algo: Option<String>,
    size: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct PathValue {
    path: String,
}

/// A commit request, parsed.
#[derive(Debug)]
struct ParsedCommit {
    header: HeaderValueBody,
    ops: Vec<Op>,
    /// The LFS objects it names, with the size it says (copies leave it out).
    lfs: Vec<(String, Option<u64>)>,
}

/// The commit's header and operations, each problem naming its line.
fn parse_commit(body: &[u8]) -> Result<ParsedCommit, ApiError> {
    let bad = |n: usize, m: String| ApiError::bad_request(format!("commit body line {n}: {m}"));
    let mut header = None;
    let mut ops = Vec::new();
    let mut lfs = Vec::new();
    for (i, raw) in body.split(|b| *b == b'\n').enumerate() {
        let n = i + 1;
        if raw.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let line: Line = serde_json::from_slice(raw)
            .map_err(|e| bad(n, format!("not a JSON object with key and value: {e}")))?;
        let value = line.value;
        let field = |e: serde_json::Error| bad(n, format!("{}: {e}", line.key));
        match line.key.as_str() {
            "header" => {
                if header.is_some() {
                    return Err(bad(n, "a second header".into()));
                }
                header = Some(serde_json::from_value::<HeaderValueBody>(value).map_err(field)?);
            }
            "file" => {
                let f: FileValue = serde_json::from_value(value).map_err(field)?;
                let bytes = match f.encoding.as_deref() {
                    Some("base64") => base64::engine::general_purpose::STANDARD
                        .decode(f.content.as_bytes())
                        .map_err(|e| {
                            bad(n, format!("{}: content is not valid base64: {e}", f.path))
                        })?,
                    None | Some("utf-8") => f.content.into_bytes(),
                    Some(other) => {
                        return Err(bad(n, format!("{}: unknown encoding `{other}`", f.path)));
                    }
                };
                if bytes.len() as u64 > MAX_FILE_BYTES {
                    return Err(bad(
                        n,
                        format!(
                            "{} is {} bytes, over the 10 MiB limit for regular files; upload it through LFS",
                            f.path,
                            bytes.len()
                        ),
                    ));
                }
                ops.push(Op::Add {
                    path: f.path,
                    bytes,
                });
            }
            "lfsFile" => {
                let f: LfsFileValue = serde_json::from_value(value).map_err(field)?;
                if f.algo.as_deref().is_some_and(|a| a != "sha256") {
                    return Err(bad(
                        n,
                        format!("{}: only sha256 LFS objects are stored", f.path),
                    ));
                }
                if f.oid.len() != 64 || !f.oid.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(bad(n, format!("{}: oid is not a sha256", f.path)));
                }
                let oid = f.oid.to_ascii_lowercase();
                lfs.push((oid.clone(), f.size));
                ops.push(Op::AddLfs {
                    path: f.path,
                    oid,
                    size: f.size.unwrap_or(0),
                });
            }
            "deletedFile" => {
                let f: PathValue = serde_json::from_value(value).map_err(field)?;
                ops.push(Op::Delete { path: f.path });
            }
            "deletedFolder" => {
                let f: PathValue = serde_json::from_value(value).map_err(field)?;
                ops.push(Op::DeleteFolder {
                    path: f.path.trim_end_matches('/').to_owned(),
                });
            }
            other => return Err(bad(n, format!("unknown key `{other}`"))),
        }
    }
    let header = header.ok_or_else(|| ApiError::bad_request("commit body has no header line"))?;
    Ok(ParsedCommit { header, ops, lfs })
}

async fn commit(
    AxumState(api): AxumState<Api>,
    headers: HeaderMap,
    Path((ns, name, rev)): Path<(String, String, String)>,
    Query(q): Query<CommitQuery>,
    body: Bytes,
    kind: RepoKind,
) -> Result<Response, ApiError> {
    if truthy(&q.create_pr) {
        return Err(ApiError::bad_request(
            "pull requests are not supported here; commit to a branch",
        ));
    }
    let ParsedCommit {
        header,
        mut ops,
        lfs,
    } = parse_commit(&body)?;
    let branch = rev.strip_prefix("refs/heads/").unwrap_or(&rev).to_owned();
    let ref_name = format!("refs/heads/{branch}");
    let target = target(&api, &headers, kind, (ns, name), true).await?;
    let parent = target.git.refs.get(&ref_name).cloned();
    if parent.is_none() && !(target.git.refs.is_empty() && branch == "main") {
        return Err(revision_not_found(&rev));
    }
    if let Some(expected) = &header.parent_commit
        && Some(expected) != parent.as_ref()
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "Conflict",
            format!(
                "parentCommit {expected} is not the head of {branch} ({}); fetch and retry",
                parent.as_deref().unwrap_or("no commit yet")
            ),
        ));
    }
    // LFS objects must have been uploaded to this repo, with the size the commit says (copies omit it).
    for (oid, size) in &lfs {
        let stored = *target.git.lfs.get(oid).ok_or_else(|| {
            ApiError::bad_request(format!(
                "LFS object {oid} was not uploaded to {}; upload it before committing",
                target.id
            ))
        })?;
        if size.is_some_and(|s| s != stored) {
            return Err(ApiError::bad_request(format!(
                "LFS object {oid} is {stored} bytes, the commit says {}",
                size.unwrap_or(0)
            )));
        }
        for op in ops.iter_mut() {
            if let Op::AddLfs {
                oid: o, size: s, ..
            } = op
                && o == oid
            {
                *s = stored;
            }
        }
    }
    let mirror = api
        .mirrors
        .sync(&target.uid, &target.git)
        .await
        .map_err(|e| internal(format!("{e:#}")))?;
    let user = api
        .read(&headers, |_, p| {
            Ok(p.map(|p| p.user.name.clone()).unwrap_or_default())
        })
        .await?;
    let meta = Meta {
        summary: header.summary.clone(),
        description: header.description.clone(),
        email: format!("{user}@users.noreply.spacedock"),
        author: user,
        at: (api.clock)() / 1000,
    };
    let (scratch, id) = commit::build(&api.mirrors, &mirror, parent.as_deref(), &meta, &ops)
        .await
        .map_err(|e| match e {
            CommitError::BadPath(m) => ApiError::bad_request(m),
            CommitError::NotFound(m) => ApiError::new(StatusCode::NOT_FOUND, "EntryNotFound", m),
            CommitError::Internal(e) => internal(format!("{e:#}")),
        })?;
    let warnings: Vec<String> = ops
        .iter()
        .filter_map(|op| match op {
            Op::Add { path, bytes } => Some(secret_scan::scan(path, bytes)),
            _ => None,
        })
        .flatten()
        .map(|f| f.render())
        .collect();
    let refused = |r: Refusal| match r {
        Refusal::Unpack(m) => internal(m),
        Refusal::Rule(m) => ApiError::bad_request(m),
    };
    let space = if target.is_space && ref_name == MAIN {
        Some(
            receive::read_space(&scratch, &id, &target.catalog)
                .await
                .map_err(refused)?,
        )
    } else {
        None
    };
    let pack = receive::store_pack(&api.mirrors, &scratch)
        .await
        .map_err(refused)?
        .ok_or_else(|| internal("the commit's objects were not packed"))?;
    api.write(
        &headers,
        Command::UpdateRefs {
            kind,
            id: target.id.clone(),
            updates: vec![RefUpdate {
                name: ref_name,
                old: parent,
                new: Some(id.clone()),
            }],
            pack: Some(pack),
            rewrites: vec![],
            space,
        },
    )
    .await?;
    tracing::info!(repo = %target.id, commit = %id, "commit through the API");
    super::git_http::compact_when_due(&api, kind, &target.id);
    let mut response = axum::Json(json!({
        "success": true,
        "commitOid": id,
        "commitUrl": format!("{}/{}{}/commit/{id}", api.public_url, kind.url_prefix(), target.id),
        "hookOutput": "",
    }))
    .into_response();
    if !warnings.is_empty() {
        let text = format!(
            "secret-scan; possible credentials: {}",
            warnings.join(" | ")
        );
        if let Ok(v) = HeaderValue::from_str(&text) {
            response.headers_mut().insert("x-hf-warning", v);
        }
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_single_and_inside_the_file() {
        let h = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::RANGE, HeaderValue::from_str(v).unwrap());
            h
        };
        assert_eq!(parse_range(&HeaderMap::new(), 10), Ok(None));
        assert_eq!(parse_range(&h("bytes=2-4"), 10), Ok(Some((2, 5))));
        assert_eq!(parse_range(&h("bytes=7-"), 10), Ok(Some((7, 10))));
        assert_eq!(parse_range(&h("bytes=-3"), 10), Ok(Some((7, 10))));
        assert_eq!(parse_range(&h("bytes=5-100"), 10), Ok(Some((5, 10))));
        for bad in [
            "bytes=10-",
            "bytes=4-2",
            "bytes=0-1,3-4",
            "items=0-1",
            "bytes=x-",
        ] {
            assert_eq!(parse_range(&h(bad), 10), Err(()), "{bad}");
        }
    }

    #[test]
    fn gitignore_rules_decide_what_is_ignored() {
        let ignored = ignored(Some("*.log\n/build/\n!keep.log\n# comment\ncache\n"));
        for path in [
            "a.log",
            "deep/b.log",
            "build/x",
            "cache/y",
            "x/cache/z",
            ".git/config",
            "a/.git/b",
        ] {
            assert!(ignored(path), "{path}");
        }
        for path in ["keep.log", "app.py", "src/build/x", "cached.txt"] {
            assert!(!ignored(path), "{path}");
        }
    }

    #[test]
    fn commit_bodies_name_the_bad_line() {
        let ok = b"{\"key\":\"header\",\"value\":{\"summary\":\"s\"}}\n{\"key\":\"file\",\"value\":{\"path\":\"a.txt\",\"content\":\"aGk=\",\"encoding\":\"base64\"}}\n{\"key\":\"deletedFolder\",\"value\":{\"path\":\"old\"}}\n";
        let ParsedCommit { header, ops, .. } = parse_commit(ok).unwrap();
        assert_eq!(header.summary, "s");
        assert!(matches!(&ops[0], Op::Add { bytes, .. } if bytes == b"hi"));
        assert!(matches!(&ops[1], Op::DeleteFolder { .. }));
        for (body, needle) in [
            (&b"{\"key\":\"header\",\"value\":{\"summary\":\"s\"}}\nnot json\n"[..], "line 2"),
            (b"{\"key\":\"file\",\"value\":{\"path\":\"a\",\"content\":\"!!\",\"encoding\":\"base64\"}}\n", "line 1"),
            (b"{\"key\":\"rename\",\"value\":{}}\n", "unknown key"),
            (b"{\"key\":\"file\",\"value\":{\"path\":\"a\",\"content\":\"\"}}\n", "no header"),
            (b"{\"key\":\"lfsFile\",\"value\":{\"path\":\"a\",\"oid\":\"xyz\"}}\n", "not a sha256"),
        ] {
            let err = parse_commit(body).unwrap_err();
            assert!(err.message().contains(needle), "{}: {}", needle, err.message());
        }
    }
}
