//! git over smart HTTP for every repo: `/NS/NAME` (models), `/datasets/NS/NAME` and `/spaces/NS/NAME`, with or
//! without `.git`: `info/refs`, `git-upload-pack` (clone, fetch, shallow; protocol v0 and v2, served by git's own
//! `upload-pack` on this coordinator's mirror) and `git-receive-pack` (push: checked in a quarantine, the pack
//! stored on a quorum, the refs moved through Raft, then acknowledged).
//!
//! As on the Hub, any username goes with an access token as the password. Public repos clone without one;
//! a request without a token for a repo it cannot see gets 401 (so git asks for credentials), with a token 404.

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, Query, State as AxumState};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use spacedock_coordinator_core::Command;
use spacedock_coordinator_core::access::can_see;
use spacedock_coordinator_core::state::{RepoGit, RepoKind};
use spacedock_shared::flavor::Catalog;
use tokio::io::AsyncWriteExt as _;
use tokio_stream::StreamExt as _;

use super::{Api, ApiError};
use crate::git::pktline::{self, FLUSH, PushRequest, ZERO_ID};
use crate::git::receive::{self, Refusal};
use crate::git::{git, run};

/// Largest list of ref updates a push may start with (the pack after it is streamed, not held).
const MAX_PUSH_COMMANDS: usize = 1 << 20;

/// Largest fetch request (wants and haves) read.
const MAX_FETCH_REQUEST: usize = 64 << 20;

/// What `git-receive-pack` advertises: the parts of the protocol implemented here.
const RECEIVE_CAPABILITIES: &str =
    "report-status delete-refs side-band-64k quiet atomic ofs-delta object-format=sha1";

pub fn routes() -> Router<Api> {
    let mut router = Router::new();
    for kind in [RepoKind::Model, RepoKind::Dataset, RepoKind::Space] {
        let base = format!("/{}{{ns}}/{{name}}", kind.url_prefix());
        router = router
            .route(
                &format!("{base}/info/refs"),
                get(move |api, headers, path, query| info_refs(api, headers, path, query, kind)),
            )
            .route(
                &format!("{base}/git-upload-pack"),
                post(move |api, headers, path, body| upload_pack(api, headers, path, body, kind))
                    .layer(DefaultBodyLimit::disable()),
            )
            .route(
                &format!("{base}/git-receive-pack"),
                post(move |api, headers, path, body| receive_pack(api, headers, path, body, kind))
                    .layer(DefaultBodyLimit::disable()),
            );
    }
    router
}

/// The repo a git or file request is about, read from the replicated state.
pub(super) struct Target {
    pub kind: RepoKind,
    pub uid: String,
    pub id: String,
    pub git: RepoGit,
    pub is_space: bool,
    pub catalog: Catalog,
}

/// Finds the repo (`NAME` may end in `.git`) and checks the caller may read it (or write to it). A caller
/// without a token gets a 401 for a repo it cannot see (so git asks for credentials), one with a token a 404;
/// both say `RepoNotFound`.
pub(super) async fn target(
    api: &Api,
    headers: &HeaderMap,
    kind: RepoKind,
    (ns, name): (String, String),
    write: bool,
) -> Result<Target, ApiError> {
    let name = name.strip_suffix(".git").unwrap_or(&name).to_owned();
    let id = format!("{ns}/{name}");
    api.read(headers, |state, p| {
        let repo = state
            .repo(kind, &id)
            .filter(|r| can_see(state, p, r))
            .ok_or_else(|| match p {
                None => ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "RepoNotFound",
                    format!("Repository not found: {id}"),
                ),
                Some(_) => ApiError::repo_not_found(&id),
            })?;
        if write {
            let p = p.ok_or_else(|| ApiError::unauthorized("pushing needs an access token"))?;
            if !p.can_write(state, repo.namespace()) {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "Forbidden",
                    format!("you do not have write access to `{}`", repo.id),
                ));
            }
        }
        Ok(Target {
            kind,
            uid: repo.uid.clone(),
            id: repo.id.clone(),
            git: repo.git.clone(),
            is_space: repo.space.is_some(),
            catalog: Catalog::from_flavors(state.flavors.iter().cloned()),
        })
    })
    .await
}

/// The error as a response, with `WWW-Authenticate` on a 401 so git asks for credentials.
fn challenge(e: ApiError) -> Response {
    let mut response = e.into_response();
    if response.status() == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"spacedock\""),
        );
    }
    response
}

fn internal(e: anyhow::Error) -> Response {
    tracing::error!(error = %format!("{e:#}"), "git request failed");
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "Internal",
        format!("{e:#}"),
    )
    .into_response()
}

#[derive(Debug, Deserialize)]
struct Service {
    service: Option<String>,
}

/// `GIT_PROTOCOL` from the client's `Git-Protocol` header (`version=2`), if it is one git understands.
fn protocol(headers: &HeaderMap) -> Option<String> {
    let value = headers.get("git-protocol")?.to_str().ok()?;
    value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"=:._-".contains(&b))
        .then(|| value.to_owned())
}

fn git_response(content_type: &'static str, body: impl Into<Body>) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body.into(),
    )
        .into_response()
}

async fn info_refs(
    AxumState(api): AxumState<Api>,
    headers: HeaderMap,
    Path(path): Path<(String, String)>,
    Query(service): Query<Service>,
    kind: RepoKind,
) -> Result<Response, Response> {
    let push = match service.service.as_deref() {
        Some("git-upload-pack") => false,
        Some("git-receive-pack") => true,
        _ => {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "Forbidden",
                "only smart HTTP is served: use a git client that sends ?service=",
            )
            .into_response());
        }
    };
    let target = target(&api, &headers, kind, path, push)
        .await
        .map_err(challenge)?;
    if push {
        return Ok(git_response(
            "application/x-git-receive-pack-advertisement",
            receive_advertisement(&target.git),
        ));
    }
    let mirror = api
        .mirrors
        .sync(&target.uid, &target.git)
        .await
        .map_err(internal)?;
    let version = protocol(&headers);
    let mut command = git(&mirror);
    command
        .args(["upload-pack", "--stateless-rpc", "--advertise-refs"])
        .arg(&mirror);
    if let Some(v) = &version {
        command.env("GIT_PROTOCOL", v);
    }
    let refs = run(&mut command, None).await.map_err(internal)?;
    let mut body = Vec::new();
    if !version.as_deref().is_some_and(|v| v.contains("version=2")) {
        body.extend(pktline::line(b"# service=git-upload-pack\n"));
        body.extend_from_slice(FLUSH);
    }
    body.extend(refs);
    Ok(git_response(
        "application/x-git-upload-pack-advertisement",
        body,
    ))
}

/// The ref advertisement for a push, from the replicated state.
fn receive_advertisement(git: &RepoGit) -> Vec<u8> {
    let caps = format!(
        "{RECEIVE_CAPABILITIES} agent=spacedock/{}",
        env!("CARGO_PKG_VERSION")
    );
    let mut body = pktline::line(b"# service=git-receive-pack\n");
    body.extend_from_slice(FLUSH);
    if git.refs.is_empty() {
        body.extend(pktline::line(
            format!("{ZERO_ID} capabilities^{{}}\0{caps}\n").as_bytes(),
        ));
    }
    for (i, (name, id)) in git.refs.iter().enumerate() {
        let line = if i == 0 {
            format!("{id} {name}\0{caps}\n")
        } else {
            format!("{id} {name}\n")
        };
        body.extend(pktline::line(line.as_bytes()));
    }
    body.extend_from_slice(FLUSH);
    body
}

async fn upload_pack(
    AxumState(api): AxumState<Api>,
    headers: HeaderMap,
    Path(path): Path<(String, String)>,
    body: Body,
    kind: RepoKind,
) -> Result<Response, Response> {
    let target = target(&api, &headers, kind, path, false)
        .await
        .map_err(challenge)?;
    let request = read_fetch_request(&headers, body)
        .await
        .map_err(IntoResponse::into_response)?;
    let mirror = api
        .mirrors
        .sync(&target.uid, &target.git)
        .await
        .map_err(internal)?;
    let mut command = git(&mirror);
    command
        .args(["upload-pack", "--stateless-rpc"])
        .arg(&mirror)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    if let Some(v) = protocol(&headers) {
        command.env("GIT_PROTOCOL", v);
    }
    let mut child = command
        .spawn()
        .map_err(|e| internal(anyhow::anyhow!("starting git upload-pack: {e}")))?;
    let (Some(mut stdin), Some(stdout), Some(mut stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return Err(internal(anyhow::anyhow!("git upload-pack has no pipes")));
    };
    let repo = target.id.clone();
    tokio::spawn(async move {
        let _ = stdin.write_all(&request).await;
        drop(stdin);
        let mut errors = Vec::new();
        let _ = tokio::io::AsyncReadExt::read_to_end(&mut stderr, &mut errors).await;
        match child.wait().await {
            Ok(status) if status.success() => {}
            other => {
                tracing::warn!(repo, ?other, stderr = %String::from_utf8_lossy(&errors).trim(), "git upload-pack failed")
            }
        }
    });
    Ok(git_response(
        "application/x-git-upload-pack-result",
        Body::from_stream(tokio_util::io::ReaderStream::with_capacity(
            stdout,
            64 * 1024,
        )),
    ))
}

/// A fetch request body, gunzipped when git sent it compressed.
async fn read_fetch_request(headers: &HeaderMap, body: Body) -> Result<Vec<u8>, ApiError> {
    let bytes = axum::body::to_bytes(body, MAX_FETCH_REQUEST)
        .await
        .map_err(|e| ApiError::bad_request(format!("reading the fetch request: {e}")))?;
    let gzip = headers
        .get(header::CONTENT_ENCODING)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"gzip"));
    if !gzip {
        return Ok(bytes.to_vec());
    }
    let mut out = Vec::new();
    let decoder = flate2::read::GzDecoder::new(&bytes[..]);
    std::io::Read::read_to_end(
        &mut std::io::Read::take(decoder, MAX_FETCH_REQUEST as u64 + 1),
        &mut out,
    )
    .map_err(|e| ApiError::bad_request(format!("the fetch request is not valid gzip: {e}")))?;
    if out.len() > MAX_FETCH_REQUEST {
        return Err(ApiError::bad_request("the fetch request is too large"));
    }
    Ok(out)
}

async fn receive_pack(
    AxumState(api): AxumState<Api>,
    headers: HeaderMap,
    Path(path): Path<(String, String)>,
    body: Body,
    kind: RepoKind,
) -> Result<Response, Response> {
    let target = target(&api, &headers, kind, path, true)
        .await
        .map_err(challenge)?;
    let mut stream = body.into_data_stream();
    let mut buf = Vec::new();
    let bad = |m: String| ApiError::bad_request(m).into_response();
    let request = loop {
        if let Some(request) =
            pktline::parse_push(&buf).map_err(|e| bad(format!("malformed push: {e}")))?
        {
            break request;
        }
        if buf.len() > MAX_PUSH_COMMANDS {
            return Err(bad(format!(
                "the push's ref updates are over {MAX_PUSH_COMMANDS} bytes"
            )));
        }
        match stream.next().await {
            Some(chunk) => {
                buf.extend_from_slice(&chunk.map_err(|e| bad(format!("the push broke off: {e}")))?)
            }
            None => return Err(bad("the push ended before its commands".into())),
        }
    };
    let head = buf.split_off(request.pack_start);
    let outcome = push(&api, &headers, &target, &request, head, stream).await;
    Ok(git_response(
        "application/x-git-receive-pack-result",
        report(&request, outcome),
    ))
}

/// Checks, stores and commits a push; returns the messages for the pusher or why it was refused.
async fn push(
    api: &Api,
    headers: &HeaderMap,
    target: &Target,
    request: &PushRequest,
    head: Vec<u8>,
    rest: impl tokio_stream::Stream<Item = Result<Bytes, axum::Error>> + Unpin,
) -> Result<Vec<String>, Refusal> {
    let mirror = api
        .mirrors
        .sync(&target.uid, &target.git)
        .await
        .map_err(|e| Refusal::Unpack(format!("{e:#}")))?;
    let cx = receive::Context {
        mirrors: &api.mirrors,
        mirror: &mirror,
        is_space: target.is_space,
        catalog: &target.catalog,
        git: &target.git,
    };
    let checked = receive::check(&cx, &request.commands, head, rest).await?;
    let names: Vec<&str> = checked.updates.iter().map(|u| u.name.as_str()).collect();
    let command = Command::UpdateRefs {
        kind: target.kind,
        id: target.id.clone(),
        updates: checked.updates.clone(),
        pack: checked.pack.clone(),
        rewrites: checked.rewrites.clone(),
        space: checked.space.clone(),
    };
    api.write(headers, command)
        .await
        .map_err(|e| Refusal::Rule(e.message().to_owned()))?;
    tracing::info!(repo = %target.id, refs = ?names, pack = ?checked.pack, rewrites = ?checked.rewrites, "push committed");
    // Bring this coordinator's mirror along now; the others follow on their next request.
    let git = api
        .read(headers, |state, _| {
            Ok(state.repo(target.kind, &target.id).map(|r| r.git.clone()))
        })
        .await;
    if let Ok(Some(git)) = git
        && let Err(e) = api.mirrors.sync(&target.uid, &git).await
    {
        tracing::warn!(repo = %target.id, error = %format!("{e:#}"), "could not update the mirror after a push");
    }
    compact_when_due(api, target.kind, &target.id);
    let mut messages: Vec<String> = checked
        .warnings
        .iter()
        .map(|w| format!("warning: possible credential in {w}"))
        .collect();
    for rewrite in &checked.rewrites {
        messages.push(format!("{rewrite}: history rewritten (recorded)"));
    }
    Ok(messages)
}

/// Once a repo has gathered `COMPACT_AT` packs, packs its objects into one in the background and replaces
/// them through Raft (the old pack blobs become garbage).
pub(super) fn compact_when_due(api: &Api, kind: RepoKind, id: &str) {
    let found = api.node.read_local(|s| {
        s.repo(kind, id)
            .filter(|r| r.git.packs.len() >= spacedock_coordinator_core::git::COMPACT_AT)
            .map(|r| (r.uid.clone(), r.git.clone()))
    });
    let Some((uid, git)) = found else {
        return;
    };
    let (api, id) = (api.clone(), id.to_owned());
    tokio::spawn(async move {
        let compacted = api.mirrors.compact(&uid, &git).await;
        let result = match compacted {
            Ok((replaced, pack)) => {
                let n = replaced.len();
                api.propose(
                    None,
                    Command::CompactPacks {
                        kind,
                        id: id.clone(),
                        replaced,
                        pack,
                    },
                )
                .await
                .map(|()| n)
                .map_err(|e| e.message().to_owned())
            }
            Err(e) => Err(format!("{e:#}")),
        };
        match result {
            Ok(n) => tracing::info!(repo = %id, packs = n, "compacted the repo's packs into one"),
            Err(e) => tracing::info!(repo = %id, error = %e, "compaction skipped"),
        }
    });
}

/// The push's answer: report-status (on side-band 1 when asked for) and messages on side-band 2.
fn report(request: &PushRequest, outcome: Result<Vec<String>, Refusal>) -> Vec<u8> {
    let mut status = Vec::new();
    let (unpack, ref_status, messages) = match outcome {
        Ok(messages) => ("unpack ok\n".to_owned(), None, messages),
        Err(Refusal::Unpack(why)) => (
            format!("unpack {}\n", first_line(&why)),
            Some("unpacker error".to_owned()),
            vec![format!("error: {why}")],
        ),
        Err(Refusal::Rule(why)) => (
            "unpack ok\n".to_owned(),
            Some(first_line(&why).to_owned()),
            vec![format!("error: {why}")],
        ),
    };
    status.extend(pktline::line(unpack.as_bytes()));
    for c in &request.commands {
        let line = match &ref_status {
            None => format!("ok {}\n", c.name),
            Some(why) => format!("ng {} {why}\n", c.name),
        };
        status.extend(pktline::line(line.as_bytes()));
    }
    status.extend_from_slice(FLUSH);
    if !request.has("report-status") {
        status.clear();
    }
    if !request.has("side-band-64k") {
        return status;
    }
    let mut out = Vec::new();
    for message in messages {
        for line in message.lines() {
            out.extend(pktline::sideband(2, format!("{line}\n").as_bytes()));
        }
    }
    if !status.is_empty() {
        out.extend(pktline::sideband(1, &status));
    }
    out.extend_from_slice(FLUSH);
    out
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or_default()
}
