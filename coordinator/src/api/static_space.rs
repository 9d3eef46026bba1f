//! Static Spaces served by the ingress straight from their repo: the file at the request's path in the Space's
//! main commit (its `app_file` at `/`, `index.html` for a folder), LFS files from the blob store, with
//! `window.huggingface.variables` (the Space's public variables) injected into HTML pages. Any coordinator
//! serves them; no container runs.

use std::collections::BTreeMap;

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use spacedock_coordinator_core::git::check_repo_path;
use spacedock_coordinator_core::state::RepoGit;

use super::Api;
use crate::git::files;

/// What serving a static Space needs, read from the state.
#[derive(Debug, Clone)]
pub struct Site {
    pub uid: String,
    pub git: RepoGit,
    pub commit: String,
    pub app_file: String,
    pub variables: BTreeMap<String, String>,
}

fn plain(status: StatusCode, text: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{text}\n"),
    )
        .into_response()
}

/// The content type for a file name.
fn content_type(path: &str) -> &'static str {
    let ext = path
        .rsplit_once('.')
        .map_or("", |(_, e)| e)
        .to_ascii_lowercase();
    match ext.as_str() {
        "html" | "htm" => "text/html; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "json" | "map" => "application/json",
        "txt" | "md" => "text/plain; charset=utf-8",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "ico" => "image/x-icon",
        "wasm" => "application/wasm",
        "woff2" => "font/woff2",
        "woff" => "font/woff",
        "mp4" => "video/mp4",
        "mp3" => "audio/mpeg",
        "wav" => "audio/wav",
        "pdf" => "application/pdf",
        _ => "application/octet-stream",
    }
}

/// Puts `window.huggingface = {"variables": ...}` first in the page's `<head>` (or first in the page).
pub fn inject_variables(html: &[u8], variables: &BTreeMap<String, String>) -> Vec<u8> {
    let json = serde_json::json!({ "variables": variables })
        .to_string()
        .replace("</", "<\\/");
    let script = format!("<script>window.huggingface = {json};</script>");
    let lower = html.to_ascii_lowercase();
    let at = lower
        .windows(5)
        .position(|w| w == b"<head")
        .and_then(|start| {
            lower[start..]
                .iter()
                .position(|b| *b == b'>')
                .map(|end| start + end + 1)
        })
        .unwrap_or(0);
    let mut out = Vec::with_capacity(html.len() + script.len());
    out.extend_from_slice(&html[..at]);
    out.extend_from_slice(script.as_bytes());
    out.extend_from_slice(&html[at..]);
    out
}

/// Serves one request for a static Space.
pub async fn serve(api: &Api, site: Site, request: Request) -> Response {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return plain(
            StatusCode::METHOD_NOT_ALLOWED,
            "A static Space answers GET and HEAD.",
        );
    }
    let raw = request.uri().path();
    let decoded = percent_encoding::percent_decode_str(raw).decode_utf8_lossy();
    let mut path = decoded.trim_start_matches('/').to_owned();
    if path.is_empty() {
        path = site.app_file.clone();
    } else if path.ends_with('/') {
        path.push_str("index.html");
    }
    if check_repo_path(&path).is_err() {
        return plain(StatusCode::NOT_FOUND, "Not found.");
    }
    let mirror = match api.mirrors.sync(&site.uid, &site.git).await {
        Ok(m) => m,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "static Space: mirror");
            return plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "The Space's files are not available.",
            );
        }
    };
    let folder_index = format!("{path}/index.html");
    let found = files::stat(&mirror, &site.commit, &[path.clone(), folder_index.clone()]).await;
    let entries = match found {
        Ok(entries) => entries,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "static Space: tree");
            return plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "The Space's files are not available.",
            );
        }
    };
    let Some(entry) = entries
        .iter()
        .find(|e| !e.is_dir && e.path == path)
        .or_else(|| entries.iter().find(|e| !e.is_dir && e.path == folder_index))
    else {
        return plain(
            StatusCode::NOT_FOUND,
            &format!("/{path} is not in this Space."),
        );
    };
    let etag = format!("\"{}\"", entry.oid);
    let unchanged = request
        .headers()
        .get(header::IF_NONE_MATCH)
        .is_some_and(|v| v.as_bytes() == etag.as_bytes());
    let kind = content_type(&entry.path);
    let mut response = if unchanged {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        match body(api, &mirror, entry, kind, &site.variables).await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "static Space: file");
                return plain(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "The file could not be read.",
                );
            }
        }
    };
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    response
}

async fn body(
    api: &Api,
    mirror: &std::path::Path,
    entry: &files::Entry,
    kind: &str,
    variables: &BTreeMap<String, String>,
) -> anyhow::Result<Response> {
    if let Some((oid, size)) = &entry.lfs {
        let body = super::files::lfs_body(api, oid, 0, *size)
            .await
            .map_err(|e| anyhow::anyhow!("{}", e.message()))?;
        return Ok(([(header::CONTENT_LENGTH, size.to_string())], body).into_response());
    }
    let mut bytes = files::read_blob(mirror, &entry.oid).await?;
    if kind.starts_with("text/html") {
        bytes = inject_variables(&bytes, variables);
    }
    Ok(Body::from(Bytes::from(bytes)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variables_go_first_in_the_head() {
        let vars = BTreeMap::from([("MODEL".to_owned(), "</script>x".to_owned())]);
        let page = inject_variables(
            b"<!doctype html><HTML><Head lang=en><title>t</title>",
            &vars,
        );
        let page = String::from_utf8(page).unwrap();
        assert!(
            page.starts_with(
                "<!doctype html><HTML><Head lang=en><script>window.huggingface = {\"variables\":{\"MODEL\":\"<\\/script>x\"}};</script><title>"
            ),
            "{page}"
        );
        let bare = String::from_utf8(inject_variables(b"<p>hi</p>", &vars)).unwrap();
        assert!(bare.starts_with("<script>window.huggingface") && bare.ends_with("<p>hi</p>"));
        assert_eq!(content_type("a/b.CSS"), "text/css; charset=utf-8");
        assert_eq!(content_type("noext"), "application/octet-stream");
    }
}
