//! `GET /api/spaces/{ns}/{name}/logs/run` and `/logs/build`: a Space's logs as the Hub's event stream
//! (reference section 2.F): `data: {"data": "<line>\n", "timestamp": "<ISO Z>"}` events, empty `data:`
//! keep-alives, the stream open while the allocation runs. The run log comes from the agent that runs the
//! Space over a stream on its link: the end of the log, then what is appended. The Space's secret values are
//! replaced by `***` in every line. A follower passes the request to the leader, which holds the links.

use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State as AxumState};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use spacedock_coordinator_core::access::can_see;
use spacedock_coordinator_core::state::{Build, BuildState, RepoKind};
use spacedock_shared::wire::LogFollow;
use tokio::io::AsyncReadExt as _;

use super::{Api, ApiError, iso8601};

/// Bytes of the log's end sent first.
const TAIL_BYTES: u64 = 256 * 1024;
const KEEP_ALIVE: Duration = Duration::from_secs(15);

pub fn routes() -> Router<Api> {
    Router::new()
        .route("/api/spaces/{ns}/{name}/logs/run", get(run_logs))
        .route("/api/spaces/{ns}/{name}/logs/build", get(build_logs))
}

fn event_stream(body: Body) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// One log line as an event.
fn event(line: &str) -> Bytes {
    let payload = serde_json::json!({ "data": format!("{line}\n"), "timestamp": iso8601(super::system_clock()) });
    Bytes::from(format!("data: {payload}\n\n"))
}

/// How often the build log looks at its build's state.
const BUILD_POLL: Duration = Duration::from_millis(500);

/// One line for a build's state.
/// One line for a build's state; none while it runs (the leader logs each builder taking it, with the attempt,
/// among the builder's lines).
fn build_line(build: &Build) -> Option<String> {
    let short = &build.commit[..build.commit.len().min(12)];
    Some(match &build.state {
        BuildState::Queued => format!(
            "build {} of commit {short} ({}{}) queued, waiting for a builder",
            build.id,
            build.sdk,
            if build.factory {
                ", without the cache"
            } else {
                ""
            }
        ),
        BuildState::Running { .. } => return None,
        BuildState::Succeeded { image } => format!("built {image}"),
        BuildState::Failed { step, message } => format!("failed at {step}: {message}"),
        BuildState::Superseded => "superseded by a newer commit".into(),
    })
}

/// The build log of the Space's newest build: the builder's lines and a line for each state the build goes
/// through, until it is done; from the leader, which the builders send their lines to. A Space that was never
/// built has an empty log.
async fn build_logs(
    AxumState(api): AxumState<Api>,
    Path((ns, name)): Path<(String, String)>,
    request: Request,
) -> Result<Response, ApiError> {
    let id = format!("{ns}/{name}");
    let (secrets, _) = visible(&api, request.headers(), &id).await?;
    if api.node.status().role != "leader" {
        // The builders' lines are on the leader.
        return Ok(super::ingress::via_leader(&api, request).await);
    }
    let key = spacedock_coordinator_core::state::repo_key(RepoKind::Space, &id);
    let newest = move |state: &spacedock_coordinator_core::State| {
        state
            .builds
            .values()
            .filter(|b| b.space == key)
            .max_by_key(|b| (b.created_at, b.id.clone()))
            .cloned()
    };
    let Some(first) = api.node.read_local(&newest) else {
        return Ok(event_stream(Body::empty()));
    };
    let (events, body) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(16);
    let node = api.node.clone();
    let logs = api.build_logs.clone();
    tokio::spawn(async move {
        let mut last = None;
        let mut offset = 0u64;
        let mut quiet = tokio::time::Instant::now();
        loop {
            let build = node
                .read_local(|s| s.builds.get(&first.id).cloned())
                .unwrap_or_else(|| first.clone());
            let mut lines = Vec::new();
            let (text, end) = logs.read_from(&build.id, offset);
            offset = end;
            lines.extend(text.lines().map(|l| redact(l, &secrets)));
            let line = build_line(&build);
            if let Some(line) = line.filter(|l| last.as_ref() != Some(l)) {
                lines.push(line.clone());
                last = Some(line);
            }
            if !lines.is_empty() {
                for line in lines {
                    if events.send(Ok(event(&line))).await.is_err() {
                        return;
                    }
                }
                quiet = tokio::time::Instant::now();
            } else if quiet.elapsed() >= KEEP_ALIVE {
                if events
                    .send(Ok(Bytes::from_static(b"data: \n\n")))
                    .await
                    .is_err()
                {
                    return;
                }
                quiet = tokio::time::Instant::now();
            }
            if build.state.is_done() {
                return;
            }
            tokio::time::sleep(BUILD_POLL).await;
        }
    });
    Ok(event_stream(Body::from_stream(
        tokio_stream::wrappers::ReceiverStream::new(body),
    )))
}

/// A log line with the Space's secret values replaced by `***`.
fn redact(line: &str, secrets: &[String]) -> String {
    let mut text = line.to_owned();
    for secret in secrets {
        text = text.replace(secret.as_str(), "***");
    }
    text
}

/// The Space's secret values (for redaction) and its newest allocation's node and id, if the caller may see it.
async fn visible(
    api: &Api,
    headers: &HeaderMap,
    id: &str,
) -> Result<(Vec<String>, Option<(String, String)>), ApiError> {
    api.read(headers, |state, p| {
        let repo = state
            .repo(RepoKind::Space, id)
            .filter(|r| can_see(state, p, r))
            .ok_or_else(|| ApiError::repo_not_found(id))?;
        let secrets = repo
            .space
            .iter()
            .flat_map(|s| s.secrets.values())
            .map(|s| s.value.expose().to_owned())
            .filter(|v| v.len() >= 3)
            .collect();
        let key = spacedock_coordinator_core::state::repo_key(RepoKind::Space, id);
        let newest = state
            .allocations
            .values()
            .filter(|a| a.space == key)
            .max_by_key(|a| a.created_at)
            .map(|a| (a.node.clone(), a.id.clone()));
        Ok((secrets, newest))
    })
    .await
}

async fn run_logs(
    AxumState(api): AxumState<Api>,
    Path((ns, name)): Path<(String, String)>,
    request: Request,
) -> Result<Response, ApiError> {
    let id = format!("{ns}/{name}");
    let (secrets, newest) = visible(&api, request.headers(), &id).await?;
    let Some((node, allocation)) = newest else {
        return Ok(event_stream(Body::empty()));
    };
    if !api.links.has(&node) {
        return Ok(super::ingress::via_leader(&api, request).await);
    }
    let follow = LogFollow {
        allocation,
        tail_bytes: TAIL_BYTES,
    };
    let (tx, rx, buffered) = match api.links.open(&node, follow.into()).await {
        Ok(opened) => opened,
        // The allocation's files are gone (it was replaced or its node lost them): nothing to show.
        Err(e) => {
            tracing::debug!(space = id, error = %format!("{e:#}"), "no run log");
            return Ok(event_stream(Body::empty()));
        }
    };
    let (events, body) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(64);
    tokio::spawn(async move {
        // Keeps the agent's side open while the client listens.
        let _tx = tx;
        let mut source = std::io::Cursor::new(buffered).chain(rx);
        let mut pending: Vec<u8> = Vec::new();
        let mut chunk = vec![0u8; 32 * 1024];
        loop {
            let read = tokio::time::timeout(KEEP_ALIVE, source.read(&mut chunk)).await;
            let n = match read {
                Err(_) => {
                    if events
                        .send(Ok(Bytes::from_static(b"data:\n\n")))
                        .await
                        .is_err()
                    {
                        return;
                    }
                    continue;
                }
                Ok(Ok(0)) | Ok(Err(_)) => return,
                Ok(Ok(n)) => n,
            };
            pending.extend_from_slice(&chunk[..n]);
            while let Some(i) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=i).collect();
                let text = redact(&String::from_utf8_lossy(&line[..line.len() - 1]), &secrets);
                if events.send(Ok(event(&text))).await.is_err() {
                    return;
                }
            }
        }
    });
    Ok(event_stream(Body::from_stream(
        tokio_stream::wrappers::ReceiverStream::new(body),
    )))
}
