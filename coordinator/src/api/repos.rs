//! Repo lifecycle: create (409 still carries `url`), delete, move, settings, info, and Space duplication.

use axum::extract::{Path, State as AxumState};
use axum::http::HeaderMap;
use axum::routing::{delete, get, post, put};
use axum::{Router, response::Json as JsonResponse};
use serde::Deserialize;
use serde_json::{Value, json};
use spacedock_coordinator_core::Command;
use spacedock_coordinator_core::access::can_see;
use spacedock_coordinator_core::command::{KeyValue, SpaceSpec};
use spacedock_coordinator_core::state::RepoKind;

use super::{Api, ApiError, Json, json as shapes, new_id};

pub fn routes() -> Router<Api> {
    let mut router = Router::new()
        .route("/api/repos/create", post(create))
        .route("/api/repos/delete", delete(remove))
        .route("/api/repos/move", post(move_repo))
        .route("/api/spaces/{ns}/{name}/duplicate", post(duplicate));
    for kind in [RepoKind::Model, RepoKind::Dataset, RepoKind::Space] {
        let base = format!("/api/{}s/{{ns}}/{{name}}", kind.as_str());
        router = router
            .route(
                &base,
                get(move |api, headers, path| info(api, headers, path, kind, None)),
            )
            .route(
                &format!("{base}/revision/{{revision}}"),
                get(
                    move |api, headers, Path((ns, name, rev)): Path<(String, String, String)>| {
                        info(api, headers, Path((ns, name)), kind, Some(rev))
                    },
                ),
            )
            .route(
                &format!("{base}/settings"),
                put(move |api, headers, path, body| settings(api, headers, path, body, kind)),
            );
    }
    router
}

/// A variable or secret in request bodies.
#[derive(Debug, Deserialize)]
pub struct KeyValueBody {
    pub key: String,
    pub value: String,
    pub description: Option<String>,
}

impl From<KeyValueBody> for KeyValue {
    fn from(kv: KeyValueBody) -> KeyValue {
        KeyValue {
            key: kv.key,
            value: kv.value,
            description: kv.description,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CreateBody {
    name: String,
    organization: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    private: Option<bool>,
    visibility: Option<String>,
    sdk: Option<String>,
    #[serde(flatten)]
    settings: SpaceSettingsBody,
}

/// The Space settings that creation and duplication both take.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SpaceSettingsBody {
    hardware: Option<String>,
    sleep_time_seconds: Option<i64>,
    #[serde(default)]
    secrets: Vec<KeyValueBody>,
    #[serde(default)]
    variables: Vec<KeyValueBody>,
}

impl SpaceSettingsBody {
    fn into_spec(self, sdk: String) -> SpaceSpec {
        SpaceSpec {
            sdk,
            hardware: self.hardware,
            sleep_time: self.sleep_time_seconds,
            secrets: self.secrets.into_iter().map(KeyValue::from).collect(),
            variables: self.variables.into_iter().map(KeyValue::from).collect(),
        }
    }
}

fn parse_kind(kind: Option<&str>) -> Result<RepoKind, ApiError> {
    match kind {
        None => Ok(RepoKind::Model),
        Some(k) => RepoKind::parse(k).ok_or_else(|| {
            ApiError::bad_request(format!("type: `{k}` is not one of model, dataset, space"))
        }),
    }
}

/// `private: bool` (older clients) or `visibility: public|private` (newer ones).
fn parse_private(
    private: Option<bool>,
    visibility: Option<&str>,
) -> Result<Option<bool>, ApiError> {
    match (private, visibility) {
        (_, Some("public")) => Ok(Some(false)),
        (_, Some("private")) => Ok(Some(true)),
        (_, Some("protected")) => Err(ApiError::bad_request(
            "visibility: `protected` is not supported here; use `public` or `private`",
        )),
        (_, Some(other)) => Err(ApiError::bad_request(format!(
            "visibility: `{other}` is not one of public, private"
        ))),
        (p, None) => Ok(p),
    }
}

/// `ns/name` from a body's name and organization, defaulting the namespace to the caller.
async fn full_id(
    api: &Api,
    headers: &HeaderMap,
    name: &str,
    organization: Option<&str>,
) -> Result<String, ApiError> {
    if name.contains('/') {
        return Ok(name.to_owned());
    }
    let namespace = match organization {
        Some(org) => org.to_owned(),
        None => {
            api.read(headers, |_, p| {
                p.map(|p| p.user.name.clone())
                    .ok_or_else(|| ApiError::unauthorized("a token is required"))
            })
            .await?
        }
    };
    Ok(format!("{namespace}/{name}"))
}

fn repo_url(api: &Api, kind: RepoKind, id: &str) -> String {
    format!("{}/{}{}", api.public_url, kind.url_prefix(), id)
}

async fn create(
    AxumState(api): AxumState<Api>,
    headers: HeaderMap,
    Json(body): Json<CreateBody>,
) -> Result<JsonResponse<Value>, ApiError> {
    let kind = parse_kind(body.kind.as_deref())?;
    let private = parse_private(body.private, body.visibility.as_deref())?.unwrap_or(false);
    let id = full_id(&api, &headers, &body.name, body.organization.as_deref()).await?;
    let space = match kind {
        RepoKind::Space => {
            let sdk = body.sdk.ok_or_else(|| {
                ApiError::bad_request("sdk: a Space needs one of gradio, streamlit, docker, static")
            })?;
            Some(body.settings.into_spec(sdk))
        }
        _ => None,
    };
    let uid = new_id();
    api.write(
        &headers,
        Command::CreateRepo {
            uid: uid.clone(),
            kind,
            id: id.clone(),
            private,
            space,
        },
    )
    .await?;
    Ok(JsonResponse(
        json!({ "url": repo_url(&api, kind, &id), "name": id, "id": uid }),
    ))
}

#[derive(Debug, Deserialize)]
struct DeleteBody {
    name: String,
    organization: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
}

async fn remove(
    AxumState(api): AxumState<Api>,
    headers: HeaderMap,
    Json(body): Json<DeleteBody>,
) -> Result<JsonResponse<Value>, ApiError> {
    let kind = parse_kind(body.kind.as_deref())?;
    let id = full_id(&api, &headers, &body.name, body.organization.as_deref()).await?;
    api.write(&headers, Command::DeleteRepo { kind, id })
        .await?;
    Ok(JsonResponse(json!({})))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct MoveBody {
    from_repo: String,
    to_repo: String,
    #[serde(rename = "type")]
    kind: Option<String>,
}

async fn move_repo(
    AxumState(api): AxumState<Api>,
    headers: HeaderMap,
    Json(body): Json<MoveBody>,
) -> Result<JsonResponse<Value>, ApiError> {
    let kind = parse_kind(body.kind.as_deref())?;
    api.write(
        &headers,
        Command::MoveRepo {
            kind,
            from: body.from_repo,
            to: body.to_repo.clone(),
        },
    )
    .await?;
    Ok(JsonResponse(
        json!({ "url": repo_url(&api, kind, &body.to_repo) }),
    ))
}

#[derive(Debug, Deserialize)]
struct SettingsBody {
    private: Option<bool>,
    visibility: Option<String>,
    gated: Option<Value>,
}

async fn settings(
    AxumState(api): AxumState<Api>,
    headers: HeaderMap,
    Path((ns, name)): Path<(String, String)>,
    Json(body): Json<SettingsBody>,
    kind: RepoKind,
) -> Result<JsonResponse<Value>, ApiError> {
    if body
        .gated
        .as_ref()
        .is_some_and(|g| g != &Value::Bool(false))
    {
        return Err(ApiError::bad_request(
            "gated: gated repos are not supported here",
        ));
    }
    if let Some(private) = parse_private(body.private, body.visibility.as_deref())? {
        api.write(
            &headers,
            Command::SetVisibility {
                kind,
                id: format!("{ns}/{name}"),
                private,
            },
        )
        .await?;
    }
    Ok(JsonResponse(json!({})))
}

async fn info(
    AxumState(api): AxumState<Api>,
    headers: HeaderMap,
    Path((ns, name)): Path<(String, String)>,
    kind: RepoKind,
    revision: Option<String>,
) -> Result<JsonResponse<Value>, ApiError> {
    let id = format!("{ns}/{name}");
    let info = api
        .read(&headers, |state, p| {
            let repo = state
                .repo(kind, &id)
                .filter(|r| can_see(state, p, r))
                .ok_or_else(|| ApiError::repo_not_found(&id))?;
            Ok(shapes::repo_info(&api, repo))
        })
        .await?;
    let info =
        super::files::info_at(&api, &headers, kind, (ns, name), revision.as_deref(), info).await?;
    Ok(JsonResponse(info))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DuplicateBody {
    repository: String,
    private: Option<bool>,
    visibility: Option<String>,
    #[serde(flatten)]
    settings: SpaceSettingsBody,
}

async fn duplicate(
    AxumState(api): AxumState<Api>,
    headers: HeaderMap,
    Path((ns, name)): Path<(String, String)>,
    Json(body): Json<DuplicateBody>,
) -> Result<JsonResponse<Value>, ApiError> {
    let private = parse_private(body.private, body.visibility.as_deref())?;
    let to = full_id(&api, &headers, &body.repository, None).await?;
    // The copy keeps the source's SDK; `apply` fills it in.
    let spec = body.settings.into_spec(String::new());
    let command = Command::DuplicateSpace {
        uid: new_id(),
        from: format!("{ns}/{name}"),
        to: to.clone(),
        private,
        spec,
    };
    api.write(&headers, command).await?;
    Ok(JsonResponse(
        json!({ "url": repo_url(&api, RepoKind::Space, &to), "filesCopyPending": false }),
    ))
}
