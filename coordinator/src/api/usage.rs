//! `GET /api/usage?namespace=&from=&to=`: minutes and cost per Space and flavor from the usage ledger
//! (`spacedock_coordinator_core::usage`), priced by the catalog in force when each minute was recorded. `from`
//! and `to` are ISO 8601 (`2026-11-26` or `2026-11-26T10:00:00Z`); the default window is everything up to now.
//! Members see their namespaces; cluster admins see every namespace.

use axum::extract::{Query, State as AxumState};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use axum::{Router, response::Json as JsonResponse};
use serde::Deserialize;
use serde_json::{Value, json};
use spacedock_coordinator_core::usage;
use spacedock_shared::money::MicroUsd;

use super::{Api, ApiError, iso8601, parse_iso8601};

pub fn routes() -> Router<Api> {
    Router::new().route("/api/usage", get(usage_report))
}

#[derive(Debug, Deserialize)]
struct UsageQuery {
    namespace: Option<String>,
    from: Option<String>,
    to: Option<String>,
}

fn time(field: &str, value: Option<&str>, default: u64) -> Result<u64, ApiError> {
    match value.filter(|v| !v.is_empty()) {
        None => Ok(default),
        Some(v) => parse_iso8601(v).ok_or_else(|| {
            ApiError::bad_request(format!(
                "{field}: `{v}` is not a date like 2026-11-26 or 2026-11-26T10:00:00Z"
            ))
        }),
    }
}

async fn usage_report(
    AxumState(api): AxumState<Api>,
    headers: HeaderMap,
    Query(query): Query<UsageQuery>,
) -> Result<JsonResponse<Value>, ApiError> {
    let now = (api.clock)();
    let from = time("from", query.from.as_deref(), 0)?;
    let to = time("to", query.to.as_deref(), now)?;
    if to < from {
        return Err(ApiError::bad_request(
            "to: the window ends before it starts",
        ));
    }
    let (namespace, lines) = api
        .read(&headers, |state, p| {
            let p = p.ok_or_else(|| ApiError::unauthorized("a token is required"))?;
            let namespace = match &query.namespace {
                Some(ns) if p.role_in(state, ns).is_none() => {
                    return Err(ApiError::new(
                        StatusCode::FORBIDDEN,
                        "Forbidden",
                        format!("you cannot see the usage of `{ns}`"),
                    ));
                }
                Some(ns) => Some(ns.clone()),
                None if p.is_cluster_admin() => None,
                None => Some(p.user.name.clone()),
            };
            let lines = usage::report(state, namespace.as_deref(), from, to);
            Ok((namespace, lines))
        })
        .await?;
    let total_minutes: u64 = lines.iter().map(|l| l.minutes).sum();
    let total_cost = MicroUsd(lines.iter().map(|l| l.cost.0).sum());
    let spaces: Vec<Value> = lines
        .iter()
        .map(|l| {
            json!({
                "id": l.space_id, "namespace": l.namespace, "flavor": l.flavor,
                "minutes": l.minutes, "costUsd": l.cost,
            })
        })
        .collect();
    Ok(JsonResponse(json!({
        "namespace": namespace,
        "from": iso8601(from),
        "to": iso8601(to),
        "spaces": spaces,
        "totalMinutes": total_minutes,
        "totalCostUsd": total_cost,
    })))
}
