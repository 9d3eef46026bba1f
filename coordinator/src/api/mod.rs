//! The HTTP API (axum), shaped like the Hugging Face Hub's so that `huggingface_hub`, `git` and front-ends work
//! unchanged: errors carry `X-Error-Code` and `X-Error-Message` and a JSON `{"error": ...}` body, datetimes are
//! UTC ending in `Z`, and private repos look absent to outsiders.
//!
//! Handlers are thin: they authenticate, read through a linearizable read or write through a proposal, and
//! shape JSON. Decisions live in `spacedock-coordinator-core`.

mod cluster;
mod files;
mod git_http;
pub(crate) mod images;
mod ingress;
mod json;
mod lfs;
mod logs;
mod repos;
mod spaces;
mod static_space;
mod usage;

pub use cluster::new_token_secret;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, Request};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use spacedock_coordinator_core::access::{Principal, authenticate, hash_secret};
use spacedock_coordinator_core::command::{Actor, ENVELOPE_VERSION};
use spacedock_coordinator_core::{ApplyError, Command, Envelope, State};

use crate::node::{NodeHandle, ReadError, WriteError};

/// Largest request body accepted, in bytes.
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// What every handler needs.
#[derive(Clone)]
pub struct Api {
    pub node: NodeHandle,
    /// URL clients reach this API at (no trailing slash).
    pub public_url: String,
    /// Domain Spaces are served under.
    pub apps_domain: String,
    /// Port the ingress listens on, added to Space hosts when it is not 80.
    pub apps_port: Option<u16>,
    pub timeout: Duration,
    /// Dials other coordinators (cluster status); `None` in single-process tests.
    pub peers: Option<crate::peer::Peers>,
    /// Fingerprint of the cluster CA, put in join tokens.
    pub ca_fingerprint: String,
    /// The cluster's blob store (image layers and configs).
    pub blobs: Arc<crate::blobs::Blobs>,
    /// Signs self-authenticating URLs (LFS transfers); derived from the cluster CA key, so every coordinator
    /// accepts every other's.
    pub url_key: [u8; 32],
    /// This coordinator's git mirrors of the repos.
    pub mirrors: Arc<crate::git::Mirrors>,
    /// The agents connected to this coordinator (for the ingress and run logs).
    pub links: Arc<crate::links::Links>,
    /// When each Space last saw a request (the ingress records, the sleeper reads).
    pub activity: Arc<crate::activity::Activity>,
    /// Wakes the leader's scheduler for a pass now (a request woke a Space).
    pub scheduler_kick: Arc<tokio::sync::Notify>,
    /// Builds' log lines from the builders connected here (the leader's).
    pub build_logs: Arc<crate::builders::BuildLogs>,
    /// Wall clock in ms; a function so tests can pin it.
    pub clock: Arc<dyn Fn() -> u64 + Send + Sync>,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api")
            .field("public_url", &self.public_url)
            .finish_non_exhaustive()
    }
}

/// Milliseconds since the epoch, from the system clock.
pub fn system_clock() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Every route.
pub fn router(api: Api) -> Router {
    Router::new()
        .merge(repos::routes())
        .merge(spaces::routes())
        .merge(cluster::routes())
        .merge(images::routes())
        .merge(logs::routes())
        .merge(usage::routes())
        .merge(git_http::routes())
        .merge(files::routes())
        .merge(lfs::routes())
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "NotFound", "no such endpoint") })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn(read_small_body))
        .layer(axum::middleware::from_fn_with_state(
            api.clone(),
            ingress::route,
        ))
        .with_state(api)
}

/// Bodies up to this many bytes are read in full before the handler runs.
const SMALL_BODY_BYTES: u64 = 64 * 1024;

/// Reads a small request body (a `Content-Length` up to [`SMALL_BODY_BYTES`]) in full before the handler runs.
/// A handler that answers without reading its body (LFS verify, a refusal) would otherwise leave hyper to close
/// the connection whenever the body arrived after the headers, and a client that keeps connections in a pool
/// (httpx in huggingface_hub) then fails its next request with "Server disconnected without sending a
/// response". Larger bodies are uploads, which their handlers stream.
async fn read_small_body(request: Request, next: axum::middleware::Next) -> Response {
    let small = request
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .is_some_and(|n| n > 0 && n <= SMALL_BODY_BYTES);
    if !small {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    match axum::body::to_bytes(body, SMALL_BODY_BYTES as usize).await {
        Ok(bytes) => next.run(Request::from_parts(parts, bytes.into())).await,
        Err(e) => ApiError::bad_request(format!("the request body broke off: {e}")).into_response(),
    }
}

/// An error response: status, stable code, message.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    /// Extra JSON fields (the existing repo's `url` on a 409).
    extra: Option<(&'static str, String)>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            extra: None,
        }
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "BadRequest", message)
    }

    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "Unauthorized", message)
    }

    pub fn repo_not_found(id: &str) -> ApiError {
        ApiError::from_apply(ApplyError::RepoNotFound(id.to_owned()), "")
    }

    fn from_apply(e: ApplyError, public_url: &str) -> ApiError {
        let status = match &e {
            ApplyError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApplyError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApplyError::RepoNotFound(_) | ApplyError::NotFound { .. } => StatusCode::NOT_FOUND,
            ApplyError::Conflict { .. } => StatusCode::CONFLICT,
            ApplyError::Invalid { .. } => StatusCode::BAD_REQUEST,
        };
        let extra = match &e {
            ApplyError::Conflict {
                url_path: Some(path),
                ..
            } => Some(("url", format!("{public_url}/{path}"))),
            _ => None,
        };
        ApiError {
            status,
            code: e.code(),
            message: e.to_string(),
            extra,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = serde_json::json!({ "error": self.message });
        if let Some((key, value)) = &self.extra {
            body[*key] = serde_json::Value::String(value.clone());
        }
        let mut response = (self.status, axum::Json(body)).into_response();
        let headers = response.headers_mut();
        headers.insert("x-error-code", HeaderValue::from_static(self.code));
        // Header values must be visible ASCII; the JSON body keeps the full message.
        let ascii: String = self
            .message
            .chars()
            .map(|c| {
                if c.is_ascii() && !c.is_ascii_control() {
                    c
                } else {
                    '?'
                }
            })
            .collect();
        if let Ok(value) = HeaderValue::from_str(&ascii) {
            headers.insert("x-error-message", value);
        }
        response
    }
}

impl From<ReadError> for ApiError {
    fn from(e: ReadError) -> ApiError {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "Unavailable",
            e.to_string(),
        )
    }
}

/// A JSON body whose rejection (malformed, wrong type, too large) is an `ApiError` naming what was wrong.
#[derive(Debug)]
pub struct Json<T>(pub T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(Json(value)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    let status = rejection.status();
    let message = match &rejection {
        JsonRejection::JsonDataError(e) => format!("invalid JSON body: {}", e.body_text()),
        JsonRejection::JsonSyntaxError(e) => format!("malformed JSON body: {}", e.body_text()),
        JsonRejection::MissingJsonContentType(_) => {
            "expected a JSON body (Content-Type: application/json)".into()
        }
        other => other.body_text(),
    };
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        return ApiError::new(
            status,
            "PayloadTooLarge",
            format!("request body over {MAX_BODY_BYTES} bytes"),
        );
    }
    ApiError::bad_request(message)
}

/// The hash of the token a request carries, if any: `Bearer TOKEN`, or HTTP Basic with any username and the
/// token as the password (what git sends).
pub fn bearer_hash(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get(axum::http::header::AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value
        .to_str()
        .map_err(|_| ApiError::unauthorized("Authorization header is not ASCII"))?;
    if let Some(basic) = value
        .strip_prefix("Basic ")
        .or_else(|| value.strip_prefix("basic "))
    {
        use base64::Engine as _;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(basic.trim())
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| {
                ApiError::unauthorized("Authorization: Basic credentials are not valid base64")
            })?;
        let (user, password) = decoded.split_once(':').unwrap_or((&decoded, ""));
        let token = if password.is_empty() { user } else { password };
        return Ok(Some(hash_secret(token.trim())));
    }
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .ok_or_else(|| {
            ApiError::unauthorized("Authorization header must be `Bearer <token>` or Basic")
        })?;
    Ok(Some(hash_secret(token.trim())))
}

impl Api {
    /// A linearizable read with the caller authenticated against the same state. A token that is present but
    /// invalid is a 401, as on the Hub.
    pub async fn read<T: Send>(
        &self,
        headers: &HeaderMap,
        f: impl FnOnce(&State, Option<&Principal<'_>>) -> Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        let token_hash = bearer_hash(headers)?;
        let now = (self.clock)();
        self.node
            .read(self.timeout, |state| {
                let principal = match &token_hash {
                    None => None,
                    Some(hash) => Some(
                        authenticate(state, hash, now).map_err(|e| ApiError::from_apply(e, ""))?,
                    ),
                };
                f(state, principal.as_ref())
            })
            .await?
    }

    /// Proposes a command on behalf of the caller and waits until it is applied.
    pub async fn write(&self, headers: &HeaderMap, command: Command) -> Result<(), ApiError> {
        let token_hash =
            bearer_hash(headers)?.ok_or_else(|| ApiError::unauthorized("a token is required"))?;
        self.propose(Some(token_hash), command).await
    }

    /// Proposes a command (with `None`: as the cluster itself).
    pub async fn propose(
        &self,
        token_hash: Option<String>,
        command: Command,
    ) -> Result<(), ApiError> {
        let envelope = Envelope {
            version: ENVELOPE_VERSION,
            at: (self.clock)(),
            request_id: rand::random(),
            actor: token_hash.map(|token_hash| Actor { token_hash }),
            command,
        };
        self.node
            .propose(&envelope, self.timeout)
            .await
            .map_err(|e| match e {
                WriteError::Refused(e) => ApiError::from_apply(e, &self.public_url),
                other => ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Unavailable",
                    other.to_string(),
                ),
            })
    }

    /// `http://SUBDOMAIN.APPS_DOMAIN[:PORT]`.
    pub fn space_host(&self, subdomain: &str) -> String {
        match self.apps_port {
            Some(port) if port != 80 => format!("http://{subdomain}.{}:{port}", self.apps_domain),
            _ => format!("http://{subdomain}.{}", self.apps_domain),
        }
    }
}

/// Proposes a command as the cluster itself (scheduler, liveness, agents' reports, catalog sync) and waits
/// until this node applied it.
pub async fn propose_as_cluster(
    node: &NodeHandle,
    command: Command,
    timeout: Duration,
) -> Result<(), WriteError> {
    let envelope = Envelope {
        version: ENVELOPE_VERSION,
        at: system_clock(),
        request_id: rand::random(),
        actor: None,
        command,
    };
    node.propose(&envelope, timeout).await
}

/// A new random id (hex) for users, organizations, tokens and repos.
pub fn new_id() -> String {
    format!("{:024x}", rand::random::<u128>() >> 32)
}

/// ISO 8601 UTC with milliseconds and a `Z`, as the Hub writes datetimes.
pub fn iso8601(ms: u64) -> String {
    let secs = ms / 1000;
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60,
        ms % 1000
    )
}

/// Milliseconds since the epoch of `2026-11-26` or `2026-11-26T10:00:00[.123]Z` (UTC).
pub fn parse_iso8601(s: &str) -> Option<u64> {
    let (date, time) = s.split_once('T').unwrap_or((s, "00:00:00Z"));
    let mut d = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (year, month, day) = (d.next()??, d.next()??, d.next()??);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || date.len() != 10 {
        return None;
    }
    let time = time.strip_suffix('Z')?;
    let (hms, ms) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.splitn(3, ':').map(|p| p.parse::<i64>().ok());
    let (h, m, sec) = (t.next()??, t.next()??, t.next()??);
    if h > 23 || m > 59 || sec > 60 {
        return None;
    }
    let ms: i64 = format!("{ms:0<3}").get(..3)?.parse().ok()?;
    // Howard Hinnant's days_from_civil.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let total = ((days * 86_400 + h * 3600 + m * 60 + sec) * 1000) + ms;
    u64::try_from(total).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso8601_parses_what_it_writes() {
        for ms in [0u64, 1_741_350_258_657, 951_782_400_000, 1_795_132_800_000] {
            assert_eq!(parse_iso8601(&iso8601(ms)), Some(ms));
        }
        assert_eq!(parse_iso8601("2000-02-29"), Some(951_782_400_000));
        assert_eq!(parse_iso8601("2026-13-01"), None);
        assert_eq!(parse_iso8601("yesterday"), None);
        assert_eq!(parse_iso8601("2026-11-26T10:00:00"), None);
    }

    #[test]
    fn iso8601_is_utc_with_z() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso8601(1_741_350_258_657), "2025-03-07T12:24:18.657Z");
        assert_eq!(iso8601(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }
}
