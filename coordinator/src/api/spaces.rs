//! Space runtime management (runtime, hardware, sleep time, pause, restart, secrets, variables), the Space list
//! with `Link` pagination, and the hardware catalog.

use axum::extract::{Path, Query, RawQuery, State as AxumState};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Router, response::Json as JsonResponse};
use serde::Deserialize;
use serde_json::{Value, json};
use spacedock_coordinator_core::Command;
use spacedock_coordinator_core::access::{Principal, can_see};
use spacedock_coordinator_core::state::{Repo, RepoKind, SpaceState, State};

use super::repos::KeyValueBody;
use super::{Api, ApiError, Json, json as shapes};

/// Spaces per page of `GET /api/spaces`.
const PAGE_SIZE: usize = 100;

pub fn routes() -> Router<Api> {
    Router::new()
        .route("/api/spaces", get(list))
        .route("/api/spaces/hardware", get(hardware))
        .route("/api/spaces/{ns}/{name}/runtime", get(runtime))
        .route("/api/spaces/{ns}/{name}/hardware", post(request_hardware))
        .route("/api/spaces/{ns}/{name}/sleeptime", post(sleep_time))
        .route("/api/spaces/{ns}/{name}/pause", post(pause))
        .route("/api/spaces/{ns}/{name}/restart", post(restart))
        .route(
            "/api/spaces/{ns}/{name}/secrets",
            get(secrets).post(add_secret).delete(delete_secret),
        )
        .route(
            "/api/spaces/{ns}/{name}/variables",
            get(variables).post(add_variable).delete(delete_variable),
        )
}

/// Reads a Space the caller may see and shapes it with `f`.
async fn with_space(
    api: &Api,
    headers: &HeaderMap,
    id: &str,
    f: impl FnOnce(&Api, &SpaceState) -> Value + Send,
) -> Result<JsonResponse<Value>, ApiError> {
    let value = api
        .read(headers, |state, p| {
            let space = visible_space(state, p, id)?;
            Ok(f(api, space))
        })
        .await?;
    Ok(JsonResponse(value))
}

fn visible_space<'a>(
    state: &'a State,
    p: Option<&Principal<'_>>,
    id: &str,
) -> Result<&'a SpaceState, ApiError> {
    state
        .repo(RepoKind::Space, id)
        .filter(|r| can_see(state, p, r))
        .and_then(|r| r.space.as_ref())
        .ok_or_else(|| ApiError::repo_not_found(id))
}

/// Writes a command for a Space, then answers with its runtime.
pub(super) async fn write_then_runtime(
    api: &Api,
    headers: &HeaderMap,
    id: &str,
    command: Command,
) -> Result<JsonResponse<Value>, ApiError> {
    api.write(headers, command).await?;
    with_space(api, headers, id, shapes::runtime).await
}

async fn runtime(
    AxumState(api): AxumState<Api>,
    headers: HeaderMap,
    Path((ns, name)): Path<(String, String)>,
) -> Result<JsonResponse<Value>, ApiError> {
    with_space(&api, &headers, &format!("{ns}/{name}"), shapes::runtime).await
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct HardwareBody {
    flavor: String,
    sleep_time_seconds: Option<i64>,
}

async fn request_hardware(
    AxumState(api): AxumState<Api>,
    headers: HeaderMap,
    Path((ns, name)): Path<(String, String)>,
    Json(body): Json<HardwareBody>,
) -> Result<JsonResponse<Value>, ApiError> {
    let id = format!("{ns}/{name}");
    let command = Command::RequestHardware {
        id: id.clone(),
        flavor: body.flavor,
        sleep_time: body.sleep_time_seconds,
    };
    write_then_runtime(&api, &headers, &id, command).await
}

#[derive(Debug, Deserialize)]
struct SleepBody {
    seconds: i64,
}

async fn sleep_time(
    AxumState(api): AxumState<Api>,
    headers: HeaderMap,
    Path((ns, name)): Path<(String, String)>,
    Json(body): Json<SleepBody>,
) -> Result<JsonResponse<Value>, ApiError> {
    let id = format!("{ns}/{name}");
    write_then_runtime(
        &api,
        &headers,
        &id,
        Command::SetSleepTime {
            id: id.clone(),
            seconds: body.seconds,
        },
    )
    .await
}

async fn pause(
    AxumState(api): AxumState<Api>,
    headers: HeaderMap,
    Path((ns, name)): Path<(String, String)>,
) -> Result<JsonResponse<Value>, ApiError> {
    let id = format!("{ns}/{name}");
    write_then_runtime(&api, &headers, &id, Command::Pause { id: id.clone() }).await
}

#[derive(Debug, Deserialize)]
struct RestartQuery {
    factory: Option<String>,
}

async fn restart(
    AxumState(api): AxumState<Api>,
    headers: HeaderMap,
    Path((ns, name)): Path<(String, String)>,
    Query(query): Query<RestartQuery>,
) -> Result<JsonResponse<Value>, ApiError> {
    let id = format!("{ns}/{name}");
    let factory = query
        .factory
        .is_some_and(|f| f.eq_ignore_ascii_case("true") || f == "1");
    write_then_runtime(
        &api,
        &headers,
        &id,
        Command::Restart {
            id: id.clone(),
            factory,
        },
    )
    .await
}

/// Secrets and variables are readable by those who may write the Space.
async fn with_writable_space(
    api: &Api,
    headers: &HeaderMap,
    id: &str,
    f: impl FnOnce(&SpaceState) -> Value + Send,
) -> Result<JsonResponse<Value>, ApiError> {
    let value = api
        .read(headers, |state, p| {
            let space = visible_space(state, p, id)?;
            let p = p.ok_or_else(|| ApiError::unauthorized("a token is required"))?;
            let namespace = id.split('/').next().unwrap_or_default();
            if !p.can_write(state, namespace) {
                return Err(ApiError::new(
                    axum::http::StatusCode::FORBIDDEN,
                    "Forbidden",
                    format!("you do not have write access to `{id}`"),
                ));
            }
            Ok(f(space))
        })
        .await?;
    Ok(JsonResponse(value))
}

async fn secrets(
    AxumState(api): AxumState<Api>,
    headers: HeaderMap,
    Path((ns, name)): Path<(String, String)>,
) -> Result<JsonResponse<Value>, ApiError> {
    with_writable_space(&api, &headers, &format!("{ns}/{name}"), shapes::secrets).await
}

async fn add_secret(
    AxumState(api): AxumState<Api>,
    headers: HeaderMap,
    Path((ns, name)): Path<(String, String)>,
    Json(body): Json<KeyValueBody>,
) -> Result<JsonResponse<Value>, ApiError> {
    api.write(
        &headers,
        Command::SetSecret {
            id: format!("{ns}/{name}"),
            secret: body.into(),
        },
    )
    .await?;
    Ok(JsonResponse(json!({})))
}

#[derive(Debug, Deserialize)]
struct KeyBody {
    key: String,
}

async fn delete_secret(
    AxumState(api): AxumState<Api>,
    headers: HeaderMap,
    Path((ns, name)): Path<(String, String)>,
    Json(body): Json<KeyBody>,
) -> Result<JsonResponse<Value>, ApiError> {
    api.write(
        &headers,
        Command::DeleteSecret {
            id: format!("{ns}/{name}"),
            key: body.key,
        },
    )
    .await?;
    Ok(JsonResponse(json!({})))
}

async fn variables(
    AxumState(api): AxumState<Api>,
    headers: HeaderMap,
    Path((ns, name)): Path<(String, String)>,
) -> Result<JsonResponse<Value>, ApiError> {
    with_writable_space(&api, &headers, &format!("{ns}/{name}"), shapes::variables).await
}

async fn add_variable(
    AxumState(api): AxumState<Api>,
    headers: HeaderMap,
    Path((ns, name)): Path<(String, String)>,
    Json(body): Json<KeyValueBody>,
) -> Result<JsonResponse<Value>, ApiError> {
    let id = format!("{ns}/{name}");
    api.write(
        &headers,
        Command::SetVariable {
            id: id.clone(),
            variable: body.into(),
        },
    )
    .await?;
    with_writable_space(&api, &headers, &id, shapes::variables).await
}

async fn delete_variable(
    AxumState(api): AxumState<Api>,
    headers: HeaderMap,
    Path((ns, name)): Path<(String, String)>,
    Json(body): Json<KeyBody>,
) -> Result<JsonResponse<Value>, ApiError> {
    let id = format!("{ns}/{name}");
    api.write(
        &headers,
        Command::DeleteVariable {
            id: id.clone(),
            key: body.key,
        },
    )
    .await?;
    with_writable_space(&api, &headers, &id, shapes::variables).await
}

async fn hardware(
    AxumState(api): AxumState<Api>,
    headers: HeaderMap,
) -> Result<JsonResponse<Value>, ApiError> {
    Ok(JsonResponse(
        api.read(&headers, |state, _| Ok(shapes::hardware(state)))
            .await?,
    ))
}

/// `GET /api/spaces?search=&author=&sort=&direction=&limit=&expand=&cursor=`; lists repeat keys.
async fn list(
    AxumState(api): AxumState<Api>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let params: Vec<(String, String)> = url_pairs(query.as_deref().unwrap_or_default());
    let one = |key: &str| {
        params
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    };
    let expand: Vec<String> = params
        .iter()
        .filter(|(k, _)| k == "expand" || k == "expand[]")
        .map(|(_, v)| v.clone())
        .collect();
    let search = one("search").map(|s| s.to_ascii_lowercase());
    let author = one("author").map(|a| a.to_ascii_lowercase());
    let sort = one("sort").unwrap_or_else(|| "createdAt".into());
    let descending = one("direction").as_deref() != Some("1");
    let limit = match one("limit") {
        None => None,
        Some(l) => Some(
            l.parse::<usize>()
                .map_err(|_| ApiError::bad_request(format!("limit: `{l}` is not a number")))?,
        ),
    };
    let cursor = match one("cursor") {
        None => 0,
        Some(c) => c
            .parse::<usize>()
            .map_err(|_| ApiError::bad_request(format!("cursor: `{c}` is not valid")))?,
    };
    if !matches!(
        sort.as_str(),
        "createdAt" | "lastModified" | "likes" | "trendingScore" | "id"
    ) {
        return Err(ApiError::bad_request(format!(
            "sort: `{sort}` is not one of createdAt, lastModified, likes, trendingScore"
        )));
    }
    let (page, total) = api
        .read(&headers, |state, p| {
            let mut matching: Vec<&Repo> = state
                .repos
                .values()
                .filter(|r| r.kind == RepoKind::Space && can_see(state, p, r))
                .filter(|r| {
                    author
                        .as_ref()
                        .is_none_or(|a| r.namespace().eq_ignore_ascii_case(a))
                })
                .filter(|r| {
                    search
                        .as_ref()
                        .is_none_or(|s| r.id.to_ascii_lowercase().contains(s.as_str()))
                })
                .collect();
            matching.sort_by(|a, b| {
                let order = match sort.as_str() {
                    "lastModified" => a.updated_at.cmp(&b.updated_at),
                    "id" => a.id.cmp(&b.id),
                    _ => a.created_at.cmp(&b.created_at),
                }
                .then_with(|| a.id.cmp(&b.id));
                if descending { order.reverse() } else { order }
            });
            let total = limit.map_or(matching.len(), |l| l.min(matching.len()));
            let end = total.min(cursor + PAGE_SIZE);
            let page: Vec<Value> = matching
                .get(cursor.min(end)..end)
                .unwrap_or_default()
                .iter()
                .map(|r| shapes::space_list_item(&api, r, &expand))
                .collect();
            Ok((page, total))
        })
        .await?;
    let next = cursor + page.len();
    let mut response = JsonResponse(Value::Array(page)).into_response();
    if next < total {
        let mut kept: Vec<String> = params
            .iter()
            .filter(|(k, _)| k != "cursor")
            .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
            .collect();
        kept.push(format!("cursor={next}"));
        let link = format!(
            "<{}/api/spaces?{}>; rel=\"next\"",
            api.public_url,
            kept.join("&")
        );
        if let Ok(value) = HeaderValue::from_str(&link) {
            response.headers_mut().insert("link", value);
        }
    }
    Ok(response)
}

/// Splits a query string into decoded pairs, keeping repeated keys.
fn url_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match u8::from_str_radix(
                    std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz"),
                    16,
                ) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_pairs_round_trip() {
        let pairs = url_pairs("expand=sdk&expand=runtime&search=a%2Fb+c&limit=5");
        assert_eq!(pairs[1], ("expand".into(), "runtime".into()));
        assert_eq!(pairs[2], ("search".into(), "a/b c".into()));
        assert_eq!(decode(&encode("x/y z&")), "x/y z&");
        assert_eq!(decode("bad%zz%"), "bad%zz%");
    }
}
