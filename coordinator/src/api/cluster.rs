//! Identity (`whoami-v2`), README validation, and the operator's endpoints: cluster status, users,
//! organizations and tokens.

use std::time::Duration;

use axum::extract::{Path, State as AxumState};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{delete, get, post, put};
use axum::{Router, response::Json as JsonResponse};
use serde::Deserialize;
use serde_json::{Value, json};
use spacedock_coordinator_core::Command;
use spacedock_coordinator_core::State;
use spacedock_coordinator_core::access::hash_secret;
use spacedock_coordinator_core::command::NewToken;
use spacedock_coordinator_core::state::{NodeRole, Role};
use spacedock_shared::flavor::Catalog;
use spacedock_shared::space_config::{Severity, validate_readme};

use super::{Api, ApiError, Json, new_id};

pub fn routes() -> Router<Api> {
    Router::new()
        .route("/api/whoami-v2", get(whoami))
        .route("/api/validate-yaml", post(validate_yaml))
        .route("/api/cluster/status", get(status))
        .route("/api/cluster/node", get(node_status))
        .route("/api/cluster/users", post(create_user))
        .route("/api/cluster/orgs", post(create_org))
        .route("/api/cluster/orgs/{org}/members", put(set_member))
        .route("/api/cluster/tokens", post(create_token))
        .route("/api/cluster/tokens/{id}", delete(revoke_token))
        .route("/api/cluster/members/{id}", delete(remove_member))
        .route("/api/nodes", get(nodes))
        .route("/api/nodes/{name}/drain", post(drain))
        .route("/api/nodes/{name}/ready", post(undrain))
        .route("/api/cluster/join-tokens", post(create_join_token))
        .route("/api/cluster/join-tokens/{id}", delete(revoke_join_token))
}

/// A new token secret: `hf_` and 37 random letters and digits, like the Hub's.
pub fn new_token_secret() -> String {
    use rand::Rng as _;
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    let body: String = (0..37)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect();
    format!("hf_{body}")
}

async fn whoami(
    AxumState(api): AxumState<Api>,
    headers: HeaderMap,
) -> Result<JsonResponse<Value>, ApiError> {
    let value = api
        .read(&headers, |state, p| {
            let p = p.ok_or_else(|| ApiError::unauthorized("a token is required"))?;
            let orgs: Vec<Value> = state
                .orgs_of(&p.user.name)
                .map(|(org, role)| {
                    json!({ "id": org.id, "type": "org", "name": org.name, "fullname": org.fullname, "avatarUrl": "", "roleInOrg": role.as_str() })
                })
                .collect();
            Ok(json!({
                "id": p.user.id,
                "type": "user",
                "name": p.user.name,
                "fullname": p.user.fullname,
                "email": p.user.email,
                "emailVerified": p.user.email.is_some(),
                "isPro": false,
                "canPay": false,
                "avatarUrl": "",
                "periodEnd": null,
                "isAdmin": p.user.is_admin,
                "orgs": orgs,
                "auth": {
                    "type": "access_token",
                    "accessToken": { "displayName": p.token.display_name, "role": p.token.role.as_str() },
                },
            }))
        })
        .await?;
    Ok(JsonResponse(value))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ValidateBody {
    content: String,
    repo_type: Option<String>,
}

/// Always JSON: `{"errors": [...], "warnings": [...]}`, 400 when there are errors.
async fn validate_yaml(
    AxumState(api): AxumState<Api>,
    headers: HeaderMap,
    Json(body): Json<ValidateBody>,
) -> Result<(StatusCode, JsonResponse<Value>), ApiError> {
    if body.repo_type.as_deref().is_some_and(|t| t != "space") {
        // Model and dataset cards have no Space config to check.
        return Ok((
            StatusCode::OK,
            JsonResponse(json!({ "errors": [], "warnings": [] })),
        ));
    }
    let flavors = api
        .read(&headers, |state, _| Ok(state.flavors.clone()))
        .await?;
    let report = validate_readme(body.content.as_bytes(), &Catalog::from_flavors(flavors));
    let shape = |severity| -> Vec<Value> {
        report
            .problems
            .iter()
            .filter(|p| p.severity == severity)
            .map(|p| json!({ "message": format!("line {}: {}: {}", p.line, p.key, p.message), "line": p.line, "key": p.key }))
            .collect()
    };
    let errors = shape(Severity::Error);
    let status = if errors.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::BAD_REQUEST
    };
    Ok((
        status,
        JsonResponse(json!({ "errors": errors, "warnings": shape(Severity::Warning) })),
    ))
}

fn require_admin(
    p: Option<&spacedock_coordinator_core::access::Principal<'_>>,
) -> Result<(), ApiError> {
    match p {
        None => Err(ApiError::unauthorized("a token is required")),
        Some(p) if p.is_cluster_admin() => Ok(()),
        Some(_) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "Forbidden",
            "this needs a cluster admin token",
        )),
    }
}

/// `{"leader": ID, "term": N, "members": [{"id", "api_url", "role", "applied_index"}, ...]}`.
async fn status(
    AxumState(api): AxumState<Api>,
    headers: HeaderMap,
) -> Result<JsonResponse<Value>, ApiError> {
    let members = api
        .read(&headers, |state, p| {
            require_admin(p)?;
            Ok(state.members.values().cloned().collect::<Vec<_>>())
        })
        .await?;
    let local = api.node.status();
    let asks = members.iter().map(|m| {
        let peers = api.peers.clone();
        let id = m.id;
        async move {
            match peers {
                _ if id == local.id => None,
                Some(peers) => Some(peers.status(id, Duration::from_millis(800)).await),
                None => None,
            }
        }
    });
    let replies = futures_join(asks).await;
    let mut rows = Vec::new();
    for (m, reply) in members.iter().zip(replies) {
        let (role, applied) = match reply {
            None if m.id == local.id => (local.role.clone(), Some(local.applied_index)),
            None => ("unknown".to_owned(), None),
            Some(Ok(reply)) => (reply.role, Some(reply.applied_index)),
            Some(Err(e)) => {
                tracing::debug!(member = m.id, error = %e, "member did not answer a status request");
                ("unreachable".to_owned(), None)
            }
        };
        let in_group = local.voters.contains(&m.id) || local.learners.contains(&m.id);
        let role = if in_group || role == "unreachable" {
            role
        } else {
            "removed".to_owned()
        };
        rows.push(json!({ "id": m.id, "api_url": m.api_url, "quic_addr": m.quic_addr, "role": role, "applied_index": applied }));
    }
    Ok(JsonResponse(json!({
        "leader": local.leader,
        "term": local.term,
        "commit_index": local.commit_index,
        "members": rows,
    })))
}

/// This coordinator's own view, without a quorum round: for health checks, and for watching elections.
async fn node_status(
    AxumState(api): AxumState<Api>,
    headers: HeaderMap,
) -> Result<JsonResponse<Value>, ApiError> {
    let token_hash = super::bearer_hash(&headers)?;
    let now = (api.clock)();
    api.node.read_local(|state| {
        let p = token_hash
            .as_deref()
            .map(|h| spacedock_coordinator_core::access::authenticate(state, h, now))
            .transpose()
            .map_err(|e| ApiError::from_apply(e, ""))?;
        require_admin(p.as_ref())
    })?;
    let s = api.node.status();
    Ok(JsonResponse(json!({
        "id": s.id,
        "role": s.role,
        "leader": s.leader,
        "term": s.term,
        "commit_index": s.commit_index,
        "applied_index": s.applied_index,
        "voters": s.voters,
        "learners": s.learners,
    })))
}

#[derive(Debug, Deserialize)]
struct UserBody {
    name: String,
    fullname: Option<String>,
    email: Option<String>,
    #[serde(default)]
    admin: bool,
}

async fn create_user(
    AxumState(api): AxumState<Api>,
    headers: HeaderMap,
    Json(body): Json<UserBody>,
) -> Result<JsonResponse<Value>, ApiError> {
    let id = new_id();
    let command = Command::CreateUser {
        id: id.clone(),
        name: body.name.clone(),
        fullname: body.fullname.unwrap_or_else(|| body.name.clone()),
        email: body.email,
        is_admin: body.admin,
    };
    api.write(&headers, command).await?;
    Ok(JsonResponse(json!({ "id": id, "name": body.name })))
}

#[derive(Debug, Deserialize)]
struct OrgBody {
    name: String,
    fullname: Option<String>,
}

async fn create_org(
    AxumState(api): AxumState<Api>,
    headers: HeaderMap,
    Json(body): Json<OrgBody>,
) -> Result<JsonResponse<Value>, ApiError> {
    let id = new_id();
    let fullname = body.fullname.unwrap_or_else(|| body.name.clone());
    api.write(
        &headers,
        Command::CreateOrg {
            id: id.clone(),
            name: body.name.clone(),
            fullname,
        },
    )
    .await?;
    Ok(JsonResponse(json!({ "id": id, "name": body.name })))
}

#[derive(Debug, Deserialize)]
struct MemberBody {
    user: String,
    /// `read`, `write`, `admin`, or null to remove.
    role: Option<String>,
}

async fn set_member(
    AxumState(api): AxumState<Api>,
    headers: HeaderMap,
    Path(org): Path<String>,
    Json(body): Json<MemberBody>,
) -> Result<JsonResponse<Value>, ApiError> {
    let role = match body.role.as_deref() {
        None => None,
        Some(r) => Some(Role::parse(r).ok_or_else(|| {
            ApiError::bad_request(format!("role: `{r}` is not one of read, write, admin"))
        })?),
    };
    api.write(
        &headers,
        Command::SetOrgMember {
            org,
            user: body.user,
            role,
        },
    )
    .await?;
    Ok(JsonResponse(json!({})))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct TokenBody {
    /// Defaults to the caller's own user.
    owner: Option<String>,
    name: String,
    role: String,
    expires_in_seconds: Option<u64>,
}

/// Creates a token; its secret is in this response and nowhere else, ever.
async fn create_token(
    AxumState(api): AxumState<Api>,
    headers: HeaderMap,
    Json(body): Json<TokenBody>,
) -> Result<JsonResponse<Value>, ApiError> {
    let role = Role::parse(&body.role).ok_or_else(|| {
        ApiError::bad_request(format!(
            "role: `{}` is not one of read, write, admin",
            body.role
        ))
    })?;
    let owner = match body.owner {
        Some(owner) => owner,
        None => {
            api.read(&headers, |_, p| {
                p.map(|p| p.user.name.clone())
                    .ok_or_else(|| ApiError::unauthorized("a token is required"))
            })
            .await?
        }
    };
    let secret = new_token_secret();
    let id = new_id();
    let expires_at = body
        .expires_in_seconds
        .map(|s| (api.clock)() + s.saturating_mul(1000));
    let token = NewToken {
        id: id.clone(),
        owner: owner.clone(),
        display_name: body.name,
        role,
        secret_hash: hash_secret(&secret),
        expires_at,
    };
    api.write(&headers, Command::CreateToken { token }).await?;
    Ok(JsonResponse(json!({
        "id": id,
        "owner": owner,
        "role": role.as_str(),
        "token": secret,
        "expiresAt": expires_at.map(super::iso8601),
    })))
}

async fn revoke_token(
    AxumState(api): AxumState<Api>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<JsonResponse<Value>, ApiError> {
    api.write(&headers, Command::RevokeToken { id }).await?;
    Ok(JsonResponse(json!({})))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct JoinTokenBody {
    /// `coordinator`, `agent` or `builder`.
    role: String,
    /// Lifetime; one hour when absent.
    ttl_seconds: Option<u64>,
}

/// Creates a join token; it is in this response and nowhere else.
async fn create_join_token(
    AxumState(api): AxumState<Api>,
    headers: HeaderMap,
    Json(body): Json<JoinTokenBody>,
) -> Result<JsonResponse<Value>, ApiError> {
    let role = NodeRole::parse(&body.role).ok_or_else(|| {
        ApiError::bad_request(format!(
            "role: `{}` is not one of coordinator, agent, builder",
            body.role
        ))
    })?;
    let ttl = body.ttl_seconds.unwrap_or(3600);
    if ttl == 0 || ttl > 365 * 86_400 {
        return Err(ApiError::bad_request(format!(
            "ttlSeconds: {ttl} is not between 1 and one year"
        )));
    }
    let secret = new_token_secret().trim_start_matches("hf_").to_owned();
    let id = new_id();
    let expires_at = (api.clock)() + ttl * 1000;
    let command = Command::CreateJoinToken {
        id: id.clone(),
        role,
        secret_hash: hash_secret(&secret),
        expires_at,
    };
    api.write(&headers, command).await?;
    Ok(JsonResponse(json!({
        "id": id,
        "role": role.as_str(),
        "token": crate::tls::format_join_token(&api.ca_fingerprint, &secret),
        "expiresAt": super::iso8601(expires_at),
    })))
}

async fn revoke_join_token(
    AxumState(api): AxumState<Api>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<JsonResponse<Value>, ApiError> {
    api.write(&headers, Command::RevokeJoinToken { id }).await?;
    Ok(JsonResponse(json!({})))
}

/// Removes a coordinator from the Raft group (joint consensus through raft-rs).
async fn remove_member(
    AxumState(api): AxumState<Api>,
    headers: HeaderMap,
    Path(id): Path<u64>,
) -> Result<JsonResponse<Value>, ApiError> {
    let known = api
        .read(&headers, |state, p| {
            require_admin(p)?;
            Ok(state.members.contains_key(&id))
        })
        .await?;
    if !known {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("coordinator {id} is not a member"),
        ));
    }
    let envelope = spacedock_coordinator_core::Envelope {
        version: spacedock_coordinator_core::command::ENVELOPE_VERSION,
        at: (api.clock)(),
        request_id: rand::random(),
        actor: None,
        command: Command::RemoveMember { id },
    };
    api.node
        .change_membership(
            id,
            raft::eraftpb::ConfChangeType::RemoveNode,
            &envelope,
            api.timeout,
        )
        .await
        .map_err(|e| match e {
            crate::node::WriteError::Refused(e) => ApiError::from_apply(e, &api.public_url),
            other => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "Unavailable",
                other.to_string(),
            ),
        })?;
    Ok(JsonResponse(json!({})))
}

/// Runs the futures concurrently and returns their outputs in order.
async fn futures_join<F>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        match h.await {
            Ok(v) => out.push(v),
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
    out
}

/// Every worker node with its inventory and state.
async fn nodes(
    AxumState(api): AxumState<Api>,
    headers: HeaderMap,
) -> Result<JsonResponse<Value>, ApiError> {
    let nodes = api
        .read(&headers, |state, p| {
            require_admin(p)?;
            Ok(state
                .nodes
                .values()
                .map(|n| node_json(state, n))
                .collect::<Vec<_>>())
        })
        .await?;
    Ok(JsonResponse(Value::Array(nodes)))
}

fn node_json(state: &State, n: &spacedock_coordinator_core::state::Node) -> Value {
    let allocations: Vec<Value> = state
        .allocations
        .values()
        .filter(|a| a.node == n.name)
        .map(|a| {
            let space = state.repos.get(&a.space).map_or("", |r| r.id.as_str());
            json!({
                "id": a.id, "space": space, "flavor": a.flavor, "gpus": a.gpus,
                "phase": format!("{:?}", a.phase).to_lowercase(), "message": a.message,
            })
        })
        .collect();
    let i = &n.inventory;
    let gpus: Vec<Value> = i
        .gpus
        .iter()
        .map(|g| {
            json!({
                "index": g.index, "uuid": g.uuid, "name": g.name, "memoryTotalBytes": g.memory_total_bytes,
                "migMode": g.mig_mode, "migDevices": g.mig_devices, "computeCapability": g.compute_capability,
                "pciBusId": g.pci_bus_id, "powerLimitMilliwatts": g.power_limit_milliwatts,
                "eccUncorrected": g.ecc_uncorrected, "xidErrors": g.xid_errors, "lastXid": g.last_xid,
            })
        })
        .collect();
    let labels: serde_json::Map<String, Value> = i
        .labels
        .iter()
        .map(|l| (l.key.clone(), Value::String(l.value.clone())))
        .collect();
    json!({
        "name": n.name,
        "state": n.state.as_str(),
        "registeredAt": super::iso8601(n.registered_at),
        "updatedAt": super::iso8601(n.updated_at),
        "labels": labels,
        "cpuCores": i.cpu_cores,
        "memoryBytes": i.memory_bytes,
        "diskFreeBytes": i.disk_free_bytes,
        "kernel": i.kernel,
        "containerdVersion": i.containerd_version,
        "driverVersion": i.driver_version,
        "cudaVersion": i.cuda_version,
        "gpus": gpus,
        "gpuNote": i.gpu_note,
        "allocations": allocations,
    })
}

/// Makes a node ineligible for new work; the scheduler moves its Spaces off.
async fn drain(
    AxumState(api): AxumState<Api>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<JsonResponse<Value>, ApiError> {
    set_node_state(
        api,
        headers,
        name,
        spacedock_coordinator_core::state::NodeState::Draining,
    )
    .await
}

/// Makes a drained node eligible again.
async fn undrain(
    AxumState(api): AxumState<Api>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<JsonResponse<Value>, ApiError> {
    set_node_state(
        api,
        headers,
        name,
        spacedock_coordinator_core::state::NodeState::Ready,
    )
    .await
}

async fn set_node_state(
    api: Api,
    headers: HeaderMap,
    name: String,
    state: spacedock_coordinator_core::state::NodeState,
) -> Result<JsonResponse<Value>, ApiError> {
    api.write(
        &headers,
        Command::SetNodeState {
            name: name.clone(),
            state,
        },
    )
    .await?;
    let node = api
        .read(&headers, |s, _| {
            s.nodes.get(&name).map(|n| node_json(s, n)).ok_or_else(|| {
                ApiError::new(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    format!("node `{name}` not found"),
                )
            })
        })
        .await?;
    Ok(JsonResponse(node))
}
