//! The JSON shapes the Hub's clients parse: repo and Space info, runtimes, variables, secrets (names only),
//! hardware flavors.

use serde_json::{Value, json};
use spacedock_coordinator_core::state::{Repo, SpaceState, State};
use spacedock_shared::flavor::Flavor;

use super::{Api, iso8601};

/// Seconds a `cpu-basic` Space may idle before it sleeps, as on the Hub.
/// `SpaceRuntime`; `hardware` is always an object.
pub fn runtime(api: &Api, space: &SpaceState) -> Value {
    let domain = format!("{}.{}", space.subdomain, api.apps_domain);
    let mut runtime = json!({
        "stage": space.stage.as_str(),
        "hardware": { "current": space.hardware_current, "requested": space.hardware_requested },
        "storage": null,
        "gcTimeout": space.effective_sleep_time(),
        "replicas": { "requested": 1, "current": i32::from(space.hardware_current.is_some()) },
        "devMode": false,
        "domains": [{ "domain": domain, "stage": "READY" }],
        "sdk": space.sdk,
    });
    if let Some(message) = &space.error_message {
        runtime["errorMessage"] = Value::String(message.clone());
    }
    runtime
}

/// `/api/{models,datasets,spaces}/{id}` for any repo; Spaces add host, subdomain, sdk and runtime.
pub fn repo_info(api: &Api, repo: &Repo) -> Value {
    let mut info = json!({
        "_id": repo.uid,
        "id": repo.id,
        "author": repo.namespace(),
        "sha": repo.sha,
        "createdAt": iso8601(repo.created_at),
        "lastModified": iso8601(repo.updated_at),
        "private": repo.private,
        "gated": false,
        "disabled": false,
        "likes": 0,
        "downloads": 0,
        "tags": [],
        "siblings": [],
    });
    if let Some(space) = &repo.space {
        info["sdk"] = Value::String(space.sdk.clone());
        info["subdomain"] = Value::String(space.subdomain.clone());
        info["host"] = Value::String(api.space_host(&space.subdomain));
        info["runtime"] = runtime(api, space);
        info["cardData"] = json!({ "sdk": space.sdk });
        if let Some(from) = &space.duplicated_from {
            info["cardData"]["duplicated_from"] = Value::String(from.clone());
        }
    }
    info
}

/// One `list_spaces` item: the compact form, plus what `expand` asks for.
pub fn space_list_item(api: &Api, repo: &Repo, expand: &[String]) -> Value {
    let full = repo_info(api, repo);
    let mut item = json!({
        "_id": full["_id"],
        "id": full["id"],
        "author": full["author"],
        "likes": 0,
        "private": repo.private,
        "sdk": full["sdk"],
        "tags": [],
        "createdAt": full["createdAt"],
        "lastModified": full["lastModified"],
    });
    for key in expand {
        if let Some(value) = full.get(key.as_str()) {
            item[key.as_str()] = value.clone();
        }
    }
    item
}

/// `{KEY: {value, description, updatedAt}}`.
pub fn variables(space: &SpaceState) -> Value {
    let map: serde_json::Map<String, Value> = space
        .variables
        .iter()
        .map(|(k, v)| {
            (k.clone(), json!({ "value": v.value, "description": v.description, "updatedAt": iso8601(v.updated_at) }))
        })
        .collect();
    Value::Object(map)
}

/// `{KEY: {description, updatedAt}}`; values are never returned.
pub fn secrets(space: &SpaceState) -> Value {
    let map: serde_json::Map<String, Value> = space
        .secrets
        .iter()
        .map(|(k, s)| {
            (
                k.clone(),
                json!({ "description": s.description, "updatedAt": iso8601(s.updated_at) }),
            )
        })
        .collect();
    Value::Object(map)
}

/// One `GET /api/spaces/hardware` entry.
pub fn flavor(f: &Flavor) -> Value {
    let accelerator = f.accelerator.as_ref().map(|a| {
        json!({
            "type": "gpu",
            "model": a.model,
            "quantity": a.count.to_string(),
            "vram": format!("{} GB", u64::from(a.vram_gb) * u64::from(a.count)),
            "manufacturer": if a.vendor == "nvidia" { "Nvidia".to_owned() } else { a.vendor.clone() },
        })
    });
    let micro = f.price_per_hour.0;
    json!({
        "name": f.name,
        "prettyName": f.pretty_name,
        "cpu": format!("{} vCPU", f.vcpu),
        "ram": format!("{} GB", f.memory_gib),
        "ephemeralStorage": format!("{} GB", f.disk_gib),
        "accelerator": accelerator,
        "unitCostMicroUSD": micro,
        "unitCostUSD": micro as f64 / 1_000_000.0,
        "unitLabel": "hour",
    })
}

/// The flavors in force, in catalog order.
pub fn hardware(state: &State) -> Value {
    Value::Array(state.flavors.iter().map(flavor).collect())
}
