//! Git LFS for every repo: the batch API at `/{prefix}NS/NAME.git/info/lfs/objects/batch` (basic transfer) with
//! self-authenticating upload, verify and download URLs, as `git-lfs` and `huggingface_hub` use them.
//!
//! LFS objects are blobs in the cluster store under their sha256 (the LFS oid). A repo may only use objects
//! uploaded to it: the batch API offers an upload for any object the repo does not own yet, even one the store
//! already holds, and the upload must hash to the oid; then the object is recorded on the repo through Raft
//! (`AddLfsObjects`). Signed URLs carry what they allow (operation, repo, object, size, expiry) under a blake3
//! keyed hash with a key derived from the cluster CA key, so any coordinator accepts them.

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, Query, State as AxumState};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{post, put};
use serde::Deserialize;
use serde_json::{Value, json};
use spacedock_coordinator_core::Command;
use spacedock_coordinator_core::state::RepoKind;

use super::git_http::target;
use super::{Api, ApiError};

/// How long a signed URL stays valid.
const URL_LIFETIME_S: u64 = 3600;
/// Largest LFS object accepted (the Hub's limit).
const MAX_OBJECT_BYTES: u64 = 50_000_000_000;
const LFS_JSON: &str = "application/vnd.git-lfs+json";

pub fn routes() -> Router<Api> {
    let mut router = Router::new()
        .route(
            "/api/lfs/objects/{oid}",
            put(upload).get(download).layer(DefaultBodyLimit::disable()),
        )
        .route("/api/lfs/verify/{oid}", post(verify));
    for kind in [RepoKind::Model, RepoKind::Dataset, RepoKind::Space] {
        router = router.route(
            &format!(
                "/{}{{ns}}/{{name}}/info/lfs/objects/batch",
                kind.url_prefix()
            ),
            post(move |a, h, p, b| batch(a, h, p, b, kind)),
        );
    }
    router
}

/// What a signed URL allows.
#[derive(Debug, Clone, Deserialize)]
struct Grant {
    /// `upload`, `verify` or `download`.
    op: String,
    /// The repo's uid.
    repo: String,
    size: u64,
    /// Seconds since the epoch.
    exp: u64,
    sig: String,
}

fn mac(key: &[u8; 32], op: &str, repo: &str, oid: &str, size: u64, exp: u64) -> blake3::Hash {
    blake3::keyed_hash(
        key,
        format!("{op}\n{repo}\n{oid}\n{size}\n{exp}").as_bytes(),
    )
}

fn signed_url(api: &Api, op: &str, path: &str, repo: &str, oid: &str, size: u64) -> String {
    let exp = (api.clock)() / 1000 + URL_LIFETIME_S;
    let sig = mac(&api.url_key, op, repo, oid, size, exp).to_hex();
    format!(
        "{}/api/lfs/{path}/{oid}?op={op}&repo={repo}&size={size}&exp={exp}&sig={sig}",
        api.public_url
    )
}

/// Checks a signed URL's grant for `op` on `oid`: the signature (compared in constant time) and the expiry.
fn check_grant(api: &Api, grant: &Grant, op: &str, oid: &str) -> Result<(), ApiError> {
    let forbidden = |m: &str| ApiError::new(StatusCode::FORBIDDEN, "Forbidden", m);
    let sig = blake3::Hash::from_hex(&grant.sig).map_err(|_| forbidden("malformed signature"))?;
    if grant.op != op || sig != mac(&api.url_key, op, &grant.repo, oid, grant.size, grant.exp) {
        return Err(forbidden("the URL's signature does not match"));
    }
    if grant.exp < (api.clock)() / 1000 {
        return Err(forbidden(
            "the URL has expired; ask the batch API for a new one",
        ));
    }
    Ok(())
}

fn is_oid(oid: &str) -> bool {
    oid.len() == 64 && oid.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[derive(Debug, Deserialize)]
struct BatchRequest {
    operation: String,
    objects: Vec<BatchObject>,
    #[serde(default)]
    transfers: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct BatchObject {
    oid: String,
    size: u64,
}

fn lfs_error(e: ApiError) -> Response {
    let unauthorized = e.status() == StatusCode::UNAUTHORIZED;
    let mut response = (
        e.status(),
        [(header::CONTENT_TYPE, LFS_JSON)],
        json!({ "message": e.message() }).to_string(),
    )
        .into_response();
    if unauthorized {
        for name in ["lfs-authenticate", "www-authenticate"] {
            response
                .headers_mut()
                .insert(name, HeaderValue::from_static("Basic realm=\"spacedock\""));
        }
    }
    response
}

async fn batch(
    AxumState(api): AxumState<Api>,
    headers: HeaderMap,
    Path(path): Path<(String, String)>,
    body: Bytes,
    kind: RepoKind,
) -> Response {
    let request: BatchRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return lfs_error(ApiError::bad_request(format!(
                "malformed batch request: {e}"
            )));
        }
    };
    let upload = match request.operation.as_str() {
        "upload" => true,
        "download" => false,
        other => {
            return lfs_error(ApiError::bad_request(format!(
                "operation `{other}` is not upload or download"
            )));
        }
    };
    if !request.transfers.is_empty() && !request.transfers.iter().any(|t| t == "basic") {
        return lfs_error(ApiError::bad_request("only the basic transfer is offered"));
    }
    let target = match target(&api, &headers, kind, path, upload).await {
        Ok(t) => t,
        Err(e) => return lfs_error(e),
    };
    let objects: Vec<Value> = request
        .objects
        .iter()
        .map(|o| {
            let oid = o.oid.to_ascii_lowercase();
            let owned = target.git.lfs.get(&oid) == Some(&o.size);
            let error = |code: u16, message: String| {
                json!({ "oid": o.oid, "size": o.size, "error": { "code": code, "message": message } })
            };
            if !is_oid(&oid) {
                return error(422, format!("`{}` is not a sha256 oid", o.oid));
            }
            if o.size > MAX_OBJECT_BYTES {
                return error(422, format!("{} bytes is over the {MAX_OBJECT_BYTES}-byte limit", o.size));
            }
            let action = |op: &str, path: &str| {
                json!({ "href": signed_url(&api, op, path, &target.uid, &oid, o.size), "expires_in": URL_LIFETIME_S })
            };
            match (upload, owned) {
                (true, true) => json!({ "oid": oid, "size": o.size }),
                (true, false) => json!({
                    "oid": oid, "size": o.size, "authenticated": true,
                    "actions": { "upload": action("upload", "objects"), "verify": action("verify", "verify") },
                }),
                (false, true) => json!({
                    "oid": oid, "size": o.size, "authenticated": true,
                    "actions": { "download": action("download", "objects") },
                }),
                (false, false) => error(404, format!("object {oid} is not in {}", target.id)),
            }
        })
        .collect();
    (
        [(header::CONTENT_TYPE, LFS_JSON)],
        json!({ "transfer": "basic", "objects": objects, "hash_algo": "sha256" }).to_string(),
    )
        .into_response()
}

/// The repo a grant names: its kind and current id.
async fn repo_of(api: &Api, uid: &str) -> Result<(RepoKind, String), ApiError> {
    api.node
        .read(api.timeout, |state| {
            state
                .repos
                .values()
                .find(|r| r.uid == uid)
                .map(|r| (r.kind, r.id.clone()))
        })
        .await?
        .ok_or_else(|| ApiError::repo_not_found(uid))
}

async fn upload(
    AxumState(api): AxumState<Api>,
    Path(oid): Path<String>,
    Query(grant): Query<Grant>,
    body: Body,
) -> Result<Response, Response> {
    check_grant(&api, &grant, "upload", &oid).map_err(lfs_error)?;
    let (kind, id) = repo_of(&api, &grant.repo).await.map_err(lfs_error)?;
    let digest = format!("sha256:{oid}");
    let (size, _) = super::images::receive_blob(&api, &digest, body, Some(grant.size), true)
        .await
        .map_err(lfs_error)?;
    if size != grant.size {
        return Err(lfs_error(ApiError::bad_request(format!(
            "object {oid} is {size} bytes, the batch request said {}",
            grant.size
        ))));
    }
    api.propose(
        None,
        Command::AddLfsObjects {
            kind,
            id,
            objects: vec![(oid, size)],
        },
    )
    .await
    .map_err(lfs_error)?;
    Ok(StatusCode::OK.into_response())
}

async fn verify(
    AxumState(api): AxumState<Api>,
    Path(oid): Path<String>,
    Query(grant): Query<Grant>,
) -> Result<Response, Response> {
    check_grant(&api, &grant, "verify", &oid).map_err(lfs_error)?;
    let owned = api
        .node
        .read(api.timeout, |state| {
            state
                .repos
                .values()
                .find(|r| r.uid == grant.repo)
                .and_then(|r| r.git.lfs.get(&oid).copied())
        })
        .await
        .map_err(|e| lfs_error(e.into()))?;
    match owned {
        Some(size) if size == grant.size => Ok(StatusCode::OK.into_response()),
        _ => Err(lfs_error(ApiError::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("object {oid} ({} bytes) was not uploaded", grant.size),
        ))),
    }
}

/// The object's bytes; a `Range` resumes a cut download (git-lfs asks for the rest of a partial file).
async fn download(
    AxumState(api): AxumState<Api>,
    headers: HeaderMap,
    Path(oid): Path<String>,
    Query(grant): Query<Grant>,
) -> Result<Response, Response> {
    check_grant(&api, &grant, "download", &oid).map_err(lfs_error)?;
    let size = grant.size;
    let range = super::files::parse_range(&headers, size).map_err(|()| {
        (
            StatusCode::RANGE_NOT_SATISFIABLE,
            [(header::CONTENT_RANGE, format!("bytes */{size}"))],
        )
            .into_response()
    })?;
    let (start, end) = range.unwrap_or((0, size));
    let body = super::files::lfs_body(&api, &oid, start, end)
        .await
        .map_err(lfs_error)?;
    let mut response = (
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
            (header::CONTENT_LENGTH, (end - start).to_string()),
        ],
        body,
    )
        .into_response();
    if range.is_some() {
        *response.status_mut() = StatusCode::PARTIAL_CONTENT;
        if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{}/{size}", end - 1)) {
            response.headers_mut().insert(header::CONTENT_RANGE, v);
        }
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_binds_every_field() {
        let key = [7u8; 32];
        let base = mac(&key, "upload", "r1", "aa", 10, 100);
        assert_eq!(base, mac(&key, "upload", "r1", "aa", 10, 100));
        for other in [
            mac(&key, "download", "r1", "aa", 10, 100),
            mac(&key, "upload", "r2", "aa", 10, 100),
            mac(&key, "upload", "r1", "ab", 10, 100),
            mac(&key, "upload", "r1", "aa", 11, 100),
            mac(&key, "upload", "r1", "aa", 10, 101),
            mac(&[8u8; 32], "upload", "r1", "aa", 10, 100),
        ] {
            assert_ne!(base, other);
        }
    }
}
