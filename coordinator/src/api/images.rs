//! Images in the cluster's store: blobs (`HEAD`/`GET`/`PUT /api/blobs/{digest}`, an upload acknowledged once a
//! quorum of coordinators holds the blob), image records (`POST /api/images`, `GET /api/images`) and Spaces that run a
//! stored image (`PUT /api/spaces/{ns}/{name}/image`).

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, State as AxumState};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Router, response::Json as JsonResponse};
use serde::Deserialize;
use serde_json::{Value, json};
use spacedock_coordinator_core::Command;
use spacedock_coordinator_core::apply::check_image_name;
use spacedock_coordinator_core::state::{Image, Role};
use spacedock_shared::image::parse_config;
use spacedock_shared::wire::Layer;
use std::sync::Arc;
use tokio::io::AsyncReadExt as _;
use tokio_stream::StreamExt as _;

use super::{Api, ApiError, Json, iso8601};
use crate::blobs::{TeeOutcome, digest_hex};

/// Default `startupTimeout` in seconds (the Hub's default `startup_duration_timeout`, 30 minutes).
const DEFAULT_STARTUP_TIMEOUT_S: u64 = 30 * 60;

pub fn routes() -> Router<Api> {
    Router::new()
        .route(
            "/api/blobs/{digest}",
            put(upload_blob)
                .head(head_blob)
                .get(download_blob)
                .layer(DefaultBodyLimit::disable()),
        )
        .route("/api/images", get(list).post(put_image))
        .route("/api/spaces/{ns}/{name}/image", put(set_space_image))
}

/// Checks that the caller's token may store images (a write or admin token).
async fn writer(api: &Api, headers: &HeaderMap) -> Result<(), ApiError> {
    api.read(headers, |_, p| match p {
        None => Err(ApiError::unauthorized("a token is required")),
        Some(p) if p.token.role == Role::Read => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "Forbidden",
            "storing images needs a write token",
        )),
        Some(_) => Ok(()),
    })
    .await
}

/// The caller may touch blobs and the digest is well formed.
async fn check_blob_request(api: &Api, headers: &HeaderMap, digest: &str) -> Result<(), ApiError> {
    writer(api, headers).await?;
    digest_hex(digest).map_err(|e| ApiError::bad_request(format!("{e:#}")))?;
    Ok(())
}

async fn head_blob(
    AxumState(api): AxumState<Api>,
    headers: HeaderMap,
    Path(digest): Path<String>,
) -> Result<Response, ApiError> {
    check_blob_request(&api, &headers, &digest).await?;
    Ok(match api.blobs.store.len(&digest) {
        Some(size) => (StatusCode::OK, [("content-length", size.to_string())]).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    })
}

/// The blob's bytes (fetched from a peer first if this coordinator lacks it).
async fn download_blob(
    AxumState(api): AxumState<Api>,
    headers: HeaderMap,
    Path(digest): Path<String>,
) -> Result<Response, ApiError> {
    check_blob_request(&api, &headers, &digest).await?;
    api.blobs
        .ensure(&digest)
        .await
        .map_err(|e| ApiError::new(StatusCode::NOT_FOUND, "NotFound", format!("{e:#}")))?;
    match api.blobs.store.open(&digest, 0).await {
        Ok(Some((file, size))) => Ok((
            [
                ("content-length", size.to_string()),
                ("content-type", "application/octet-stream".to_owned()),
            ],
            Body::from_stream(tokio_util::io::ReaderStream::with_capacity(
                file,
                256 * 1024,
            )),
        )
            .into_response()),
        Ok(None) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("blob {digest} was quarantined"),
        )),
        Err(e) => Err(internal(e)),
    }
}

async fn upload_blob(
    AxumState(api): AxumState<Api>,
    headers: HeaderMap,
    Path(digest): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    check_blob_request(&api, &headers, &digest).await?;
    let length = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse().ok());
    let (size, copies) = receive_blob(&api, &digest, body, length, false).await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({ "digest": digest, "size": size, "copies": copies })),
    )
        .into_response())
}

/// Stores an uploaded blob and replicates it to a quorum; returns its size and how many coordinators hold it.
/// A blob the store already has is not written again; with `prove` its upload must still hash to the digest
/// (the uploader shows it has the bytes, not only their digest). When its `length` is known, a new blob goes
/// to a quorum's peers as it arrives ([`crate::blobs::Tee`]).
pub(super) async fn receive_blob(
    api: &Api,
    digest: &str,
    body: Body,
    length: Option<u64>,
    prove: bool,
) -> Result<(u64, usize), ApiError> {
    let broke =
        |e: axum::Error| ApiError::bad_request(format!("the upload of {digest} broke off: {e}"));
    let mut stream = body.into_data_stream();
    let (size, tee) = match api.blobs.store.len(digest) {
        Some(size) if !prove => (size, TeeOutcome::default()),
        Some(size) => {
            use sha2::Digest as _;
            let mut sha = sha2::Sha256::new();
            let mut got = 0u64;
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(broke)?;
                got += chunk.len() as u64;
                sha.update(&chunk);
            }
            let hashed = format!("sha256:{}", hex::encode(sha.finalize()));
            if hashed != digest || got != size {
                return Err(ApiError::bad_request(format!(
                    "the bytes do not match their digest: expected {digest}, got {hashed} ({got} bytes)"
                )));
            }
            (size, TeeOutcome::default())
        }
        None => {
            // Hashing and writing run on a thread of their own while this task keeps receiving and passes the
            // bytes on to peers.
            let mut blob = api.blobs.store.writer(digest).map_err(internal)?;
            let mut tee = match length {
                Some(length) => Some(api.blobs.tee(digest, length).await),
                None => None,
            };
            let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(16);
            let writer = tokio::task::spawn_blocking(move || {
                while let Some(chunk) = rx.blocking_recv() {
                    blob.write(chunk)?;
                }
                Ok::<_, std::io::Error>(blob)
            });
            let mut received = Ok(());
            while let Some(chunk) = stream.next().await {
                match chunk {
                    Ok(chunk) => {
                        if let Some(tee) = &mut tee {
                            tee.send(&chunk).await;
                        }
                        if tx.send(chunk).await.is_err() {
                            break; // the writer failed; its error is below
                        }
                    }
                    Err(e) => {
                        received = Err(broke(e));
                        break;
                    }
                }
            }
            drop(tx);
            let stored = match writer.await {
                Ok(Ok(blob)) => received.and_then(|()| {
                    blob.finish()
                        .map_err(|e| ApiError::bad_request(format!("{e:#}")))
                }),
                Ok(Err(e)) => Err(internal(e.into())),
                Err(e) => Err(internal(e.into())),
            };
            match (stored, tee) {
                (Ok(size), Some(tee)) => (size, tee.finish().await),
                (Ok(size), None) => (size, TeeOutcome::default()),
                (Err(e), tee) => {
                    if let Some(mut tee) = tee {
                        tee.abort();
                    }
                    return Err(e);
                }
            }
        }
    };
    let copies = api
        .blobs
        .replicate_after(digest, &tee)
        .await
        .map_err(unavailable)?;
    Ok((size, copies))
}

/// A blob that could not reach a quorum of the coordinators.
fn unavailable(e: anyhow::Error) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "Unavailable",
        format!("{e:#}"),
    )
}

fn internal(e: anyhow::Error) -> ApiError {
    tracing::error!(error = %format!("{e:#}"), "blob store");
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "Internal",
        format!("blob store: {e:#}"),
    )
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LayerBody {
    digest: String,
    size: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ImageBody {
    name: String,
    /// Digest of the image's OCI config blob.
    config: String,
    /// Uncompressed layer tars, bottom first.
    layers: Vec<LayerBody>,
}

/// Records an image whose config and layers the store holds; the config's `rootfs.diff_ids` must name
/// exactly these layers.
async fn put_image(
    AxumState(api): AxumState<Api>,
    headers: HeaderMap,
    Json(body): Json<ImageBody>,
) -> Result<JsonResponse<Value>, ApiError> {
    check_image_name(&body.name).map_err(|e| ApiError::bad_request(e.to_string()))?;
    writer(&api, &headers).await?;
    let layers: Vec<Layer> = body
        .layers
        .iter()
        .map(|l| Layer {
            digest: l.digest.clone(),
            size: l.size,
        })
        .collect();
    let image = check_image(&api.blobs, &body.name, (&body.config, None), &layers).await?;
    let answer = image_json(&image);
    api.write(&headers, Command::PutImage { image }).await?;
    Ok(JsonResponse(answer))
}

/// The image record for a config blob and layers the store holds (fetched from peers where this coordinator
/// lacks them); the config's `rootfs.diff_ids` must name exactly these layers, with their sizes. The image's
/// OCI manifest follows from them; it is stored (replicated to a quorum) unless the store has it, and must
/// have the digest the builder reported (`manifest`), if it reported one.
pub(crate) async fn check_image(
    blobs: &Arc<crate::blobs::Blobs>,
    name: &str,
    (config, manifest): (&str, Option<&str>),
    layers: &[Layer],
) -> Result<Image, ApiError> {
    let missing = |digest: &str, e: anyhow::Error| {
        ApiError::bad_request(format!(
            "{digest} is not in the cluster's blob store; upload it first ({e:#})"
        ))
    };
    let config_size = blobs.ensure(config).await.map_err(|e| missing(config, e))?;
    let bytes = match blobs.store.open(config, 0).await {
        Ok(Some((file, _))) => {
            let mut bytes = Vec::new();
            file.take(1 << 20)
                .read_to_end(&mut bytes)
                .await
                .map_err(|e| internal(e.into()))?;
            bytes
        }
        Ok(None) => return Err(missing(config, anyhow::anyhow!("it was quarantined"))),
        Err(e) => return Err(internal(e)),
    };
    let (run_config, diff_ids) =
        parse_config(&bytes).map_err(|e| ApiError::bad_request(format!("config {config}: {e}")))?;
    let named: Vec<String> = layers.iter().map(|l| l.digest.clone()).collect();
    if named != diff_ids {
        return Err(ApiError::bad_request(format!(
            "layers {named:?} are not the config's rootfs.diff_ids {diff_ids:?} (layers must be uncompressed \
             tars, bottom first)"
        )));
    }
    for (i, layer) in layers.iter().enumerate() {
        let size = blobs
            .ensure(&layer.digest)
            .await
            .map_err(|e| missing(&layer.digest, e))?;
        if size != layer.size {
            return Err(ApiError::bad_request(format!(
                "layers[{i}]: {} holds {size} bytes, not {}",
                layer.digest, layer.size
            )));
        }
    }
    let parts: Vec<(&str, u64)> = layers.iter().map(|l| (l.digest.as_str(), l.size)).collect();
    let manifest_bytes = spacedock_shared::image::oci_manifest((config, config_size), &parts)
        .map_err(ApiError::bad_request)?;
    let manifest_digest = spacedock_shared::image::sha256_digest(&manifest_bytes);
    if let Some(reported) = manifest.filter(|m| *m != manifest_digest) {
        return Err(ApiError::bad_request(format!(
            "the manifest {reported} is not the one its config and layers make ({manifest_digest})"
        )));
    }
    if blobs.store.len(&manifest_digest).is_none() {
        let mut writer = blobs.store.writer(&manifest_digest).map_err(internal)?;
        writer
            .write(manifest_bytes.into())
            .map_err(|e| internal(e.into()))?;
        writer.finish().map_err(internal)?;
    }
    blobs
        .replicate(&manifest_digest)
        .await
        .map_err(unavailable)?;
    Ok(Image {
        name: name.to_owned(),
        id: config.to_owned(),
        manifest: manifest_digest,
        config: run_config,
        layers: layers.to_vec(),
        created_at: 0,
    })
}

fn image_json(image: &Image) -> Value {
    json!({
        "name": image.name,
        "id": image.id,
        "manifest": image.manifest,
        "size": image.size(),
        "layers": image.layers.iter().map(|l| json!({"digest": l.digest, "size": l.size})).collect::<Vec<_>>(),
        "createdAt": iso8601(image.created_at),
    })
}

async fn list(
    AxumState(api): AxumState<Api>,
    headers: HeaderMap,
) -> Result<JsonResponse<Value>, ApiError> {
    let images = api
        .read(&headers, |state, p| {
            if p.is_none() {
                return Err(ApiError::unauthorized("a token is required"));
            }
            Ok(state.images.values().map(image_json).collect::<Vec<_>>())
        })
        .await?;
    Ok(JsonResponse(Value::Array(images)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct SpaceImageBody {
    image: String,
    port: u16,
    /// Seconds; defaults to 30 minutes.
    startup_timeout: Option<u64>,
}

async fn set_space_image(
    AxumState(api): AxumState<Api>,
    headers: HeaderMap,
    Path((ns, name)): Path<(String, String)>,
    Json(body): Json<SpaceImageBody>,
) -> Result<JsonResponse<Value>, ApiError> {
    let id = format!("{ns}/{name}");
    let command = Command::SetSpaceImage {
        id: id.clone(),
        name: body.image,
        port: body.port,
        startup_timeout_s: body.startup_timeout.unwrap_or(DEFAULT_STARTUP_TIMEOUT_S),
    };
    super::spaces::write_then_runtime(&api, &headers, &id, command).await
}
