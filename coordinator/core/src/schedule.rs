//! The scheduler's decisions, with no IO: which allocations must go (their node is gone, the Space paused,
//! restarted or changed) and where Spaces that should run but have no allocation go. The leader turns the plan
//! into commands; `apply` re-checks every placement against the state of its moment (`check_placement`).
//!
//! Placement today is first fit over ready nodes in name order, counting the vCPU, memory and GPUs that live
//! allocations hold; failed allocations hold nothing.

use spacedock_shared::flavor::{Flavor, describe};
use spacedock_shared::wire::{Assignment, EnvVar};

use crate::command::Command;
use crate::error::ApplyError;
use crate::state::{Allocation, AllocationPhase, Millis, Node, NodeState, Repo, Stage, State};

/// What the scheduler wants done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Remove {
        id: String,
        reason: String,
    },
    /// Place the Space (repo key) on the node with these GPUs.
    Place {
        space: String,
        node: String,
        gpus: Vec<String>,
    },
    /// No ready node can hold the Space's flavor now.
    NoCapacity {
        space: String,
        message: String,
    },
}

/// Why an allocation should no longer exist, if it should not.
fn stale(state: &State, a: &Allocation) -> Option<String> {
    let Some(space) = state.repos.get(&a.space).and_then(|r| r.space.as_ref()) else {
        return Some("the Space was deleted".into());
    };
    let Some(image) = &space.image else {
        return Some("the Space no longer runs an image".into());
    };
    match space.stage {
        Stage::Paused => return Some("the Space was paused".into()),
        Stage::Sleeping => return Some("the Space is sleeping".into()),
        _ => {}
    }
    if a.generation != space.restarts {
        return Some("the Space was restarted".into());
    }
    if a.image_id != image.id {
        return Some("the Space's image changed".into());
    }
    if a.flavor != space.hardware_requested {
        return Some(format!(
            "the Space's hardware changed to {}",
            space.hardware_requested
        ));
    }
    match state.nodes.get(&a.node).map(|n| n.state) {
        None => Some(format!("node {} is gone", a.node)),
        Some(NodeState::Ready) => None,
        Some(other) => Some(format!("node {} is {}", a.node, other.as_str())),
    }
}

/// Whether a Space should have an allocation.
fn wants_to_run(repo: &Repo) -> bool {
    repo.space
        .as_ref()
        .is_some_and(|s| s.image.is_some() && !matches!(s.stage, Stage::Paused | Stage::Sleeping))
}

/// Running Spaces idle past their sleep time: `idle_since` gives, for a repo key, when it last saw a request
/// (ms); the allocation's start counts as activity too.
pub fn sleepy(
    state: &State,
    now: Millis,
    idle_since: impl Fn(&str) -> Option<Millis>,
) -> Vec<String> {
    state
        .allocations
        .values()
        .filter(|a| a.phase == AllocationPhase::Running)
        .filter_map(|a| {
            let space = state.repos.get(&a.space)?.space.as_ref()?;
            let seconds = u64::try_from(space.effective_sleep_time()?).ok()?;
            let active = idle_since(&a.space)
                .unwrap_or(0)
                .max(a.billable_since.unwrap_or(a.created_at));
            (space.stage == Stage::Running && now.saturating_sub(active) >= seconds * 1000)
                .then(|| a.space.clone())
        })
        .collect()
}

/// The GPUs of `node` that `flavor` would get, given what the live allocations on it hold; `None` when the
/// node cannot hold the flavor now.
pub fn fit(state: &State, node: &Node, flavor: &Flavor) -> Option<Vec<String>> {
    if node.state != NodeState::Ready {
        return None;
    }
    let live = state
        .allocations
        .values()
        .filter(|a| a.node == node.name && a.phase != AllocationPhase::Failed);
    let (mut vcpu, mut memory_gib) = (0u64, 0u64);
    for a in live {
        if let Some(f) = state.flavors.iter().find(|f| f.name == a.flavor) {
            vcpu += u64::from(f.vcpu);
            memory_gib += u64::from(f.memory_gib);
        }
    }
    let held = held_gpus(state, &node.name);
    let inventory = &node.inventory;
    let memory_total_gib = inventory.memory_bytes / (1 << 30);
    if vcpu + u64::from(flavor.vcpu) > u64::from(inventory.cpu_cores)
        || memory_gib + u64::from(flavor.memory_gib) > memory_total_gib
    {
        return None;
    }
    let Some(acc) = &flavor.accelerator else {
        return Some(Vec::new());
    };
    let free: Vec<String> = inventory
        .gpus
        .iter()
        .filter(|g| !held.contains(&g.uuid.as_str()))
        .filter(|g| acc.accepts("nvidia", &g.name, g.memory_total_bytes >> 20))
        .map(|g| g.uuid.clone())
        .take(acc.count as usize)
        .collect();
    (free.len() == acc.count as usize).then_some(free)
}

/// The steps that bring the allocations in line with the state.
pub fn plan(state: &State) -> Vec<Step> {
    let mut steps = Vec::new();
    let mut covered = std::collections::BTreeSet::new();
    for a in state.allocations.values() {
        match stale(state, a) {
            Some(reason) => steps.push(Step::Remove {
                id: a.id.clone(),
                reason,
            }),
            None => {
                covered.insert(a.space.clone());
            }
        }
    }
    // Placements in this plan are not in the state yet: count them against their node one at a time.
    let mut planned = state.clone();
    for (key, repo) in &state.repos {
        if !wants_to_run(repo) || covered.contains(key) {
            continue;
        }
        let Some(space) = &repo.space else { continue };
        let Some(flavor) = state
            .flavors
            .iter()
            .find(|f| f.name == space.hardware_requested)
        else {
            continue;
        };
        let chosen = planned
            .nodes
            .values()
            .find_map(|n| fit(&planned, n, flavor).map(|gpus| (n.name.clone(), gpus)));
        match chosen {
            Some((node, gpus)) => {
                planned.allocations.insert(
                    format!("planned:{key}"),
                    Allocation {
                        id: String::new(),
                        space: key.clone(),
                        node: node.clone(),
                        flavor: flavor.name.clone(),
                        image_id: String::new(),
                        gpus: gpus.clone(),
                        generation: 0,
                        phase: AllocationPhase::Pulling,
                        message: String::new(),
                        created_at: 0,
                        updated_at: 0,
                        billable_since: None,
                    },
                );
                steps.push(Step::Place {
                    space: key.clone(),
                    node,
                    gpus,
                });
            }
            None => {
                let message = no_capacity_message(flavor);
                // Said once, not on every pass.
                if space.error_message.as_deref() != Some(message.as_str()) {
                    steps.push(Step::NoCapacity {
                        space: key.clone(),
                        message,
                    });
                }
            }
        }
    }
    steps
}

impl Step {
    /// The command that carries the step out; `id` names a new allocation. `None` when the Space changed
    /// under the plan (the next pass sees it).
    pub fn into_command(self, state: &State, id: String) -> Option<Command> {
        match self {
            Step::Remove { id, reason } => Some(Command::RemoveAllocation { id, reason }),
            Step::NoCapacity { space, message } => {
                Some(Command::WaitForCapacity { space, message })
            }
            Step::Place { space, node, gpus } => {
                let s = state.repos.get(&space)?.space.as_ref()?;
                Some(Command::PlaceAllocation {
                    allocation: Allocation {
                        id,
                        node,
                        flavor: s.hardware_requested.clone(),
                        image_id: s.image.as_ref()?.id.clone(),
                        gpus,
                        generation: s.restarts,
                        phase: AllocationPhase::Pulling,
                        message: String::new(),
                        created_at: 0,
                        updated_at: 0,
                        billable_since: None,
                        space,
                    },
                })
            }
        }
    }
}

/// What a Space waiting for capacity shows.
pub fn no_capacity_message(flavor: &Flavor) -> String {
    format!(
        "waiting for capacity: no ready node has room for {} ({})",
        flavor.name,
        describe(flavor)
    )
}

/// Checks a placement against the current state: the Space wants to run with this image, flavor and
/// generation, has no live allocation, and the node can hold it with these GPUs.
pub fn check_placement(state: &State, a: &Allocation) -> Result<(), ApplyError> {
    let stale_plan = |why: String| ApplyError::Conflict {
        message: format!("stale placement of {}: {why}", a.space),
        url_path: None,
    };
    if state.allocations.contains_key(&a.id) {
        return Err(stale_plan(format!("allocation {} exists", a.id)));
    }
    let repo = state
        .repos
        .get(&a.space)
        .ok_or_else(|| stale_plan("no such Space".into()))?;
    if !wants_to_run(repo) {
        return Err(stale_plan("the Space does not want to run".into()));
    }
    if let Some(reason) = stale(state, a) {
        return Err(stale_plan(reason));
    }
    if state
        .allocations
        .values()
        .any(|other| other.space == a.space)
    {
        return Err(stale_plan("the Space already has an allocation".into()));
    }
    let flavor = state
        .flavors
        .iter()
        .find(|f| f.name == a.flavor)
        .ok_or_else(|| stale_plan(format!("unknown flavor {}", a.flavor)))?;
    let node = state
        .nodes
        .get(&a.node)
        .ok_or_else(|| stale_plan(format!("unknown node {}", a.node)))?;
    fit(state, node, flavor)
        .ok_or_else(|| stale_plan(format!("node {} has no room for {}", a.node, a.flavor)))?;
    let wanted = flavor
        .accelerator
        .as_ref()
        .map_or(0, |acc| acc.count as usize);
    let held = held_gpus(state, &node.name);
    let usable = |uuid: &String| {
        node.inventory.gpus.iter().any(|g| &g.uuid == uuid) && !held.contains(&uuid.as_str())
    };
    if a.gpus.len() != wanted || !a.gpus.iter().all(usable) {
        return Err(stale_plan(format!(
            "GPUs {:?} are not {wanted} free GPUs of {}",
            a.gpus, a.node
        )));
    }
    Ok(())
}

/// The GPUs live allocations hold on a node.
fn held_gpus<'a>(state: &'a State, node: &str) -> Vec<&'a str> {
    state
        .allocations
        .values()
        .filter(|a| a.node == node && a.phase != AllocationPhase::Failed)
        .flat_map(|a| a.gpus.iter().map(String::as_str))
        .collect()
}

/// What the agent on `node` should run: its live allocations with everything the container needs.
/// `apps_host` is `APPS_DOMAIN[:PORT]`, from which each Space's `SPACE_HOST` is made.
pub fn assignments(state: &State, node: &str, apps_host: &str) -> Vec<Assignment> {
    state
        .allocations
        .values()
        .filter(|a| a.node == node && a.phase != AllocationPhase::Failed)
        .filter_map(|a| {
            let repo = state.repos.get(&a.space)?;
            let space = repo.space.as_ref()?;
            let chosen = space.image.as_ref()?;
            let image = state.images.values().find(|i| i.id == a.image_id)?;
            let flavor = state.flavors.iter().find(|f| f.name == a.flavor)?;
            let creator = state
                .user(repo.namespace())
                .map(|u| u.id.clone())
                .unwrap_or_default();
            let env = |key: &String, value: &str| EnvVar {
                key: key.clone(),
                value: value.to_owned(),
            };
            Some(Assignment {
                id: a.id.clone(),
                space_id: repo.id.clone(),
                title: repo
                    .id
                    .split_once('/')
                    .map_or(&*repo.id, |(_, n)| n)
                    .to_owned(),
                host: format!("{}.{apps_host}", space.subdomain),
                creator_user_id: creator,
                flavor: flavor.name.clone(),
                vcpu: flavor.vcpu,
                memory_gib: flavor.memory_gib,
                gpus: a.gpus.clone(),
                layers: image.layers.clone(),
                config: image.config.clone(),
                port: chosen.port,
                startup_timeout_s: chosen.startup_timeout_s,
                variables: space
                    .variables
                    .iter()
                    .map(|(k, v)| env(k, &v.value))
                    .collect(),
                secrets: space
                    .secrets
                    .iter()
                    .map(|(k, s)| env(k, s.value.expose()))
                    .collect(),
            })
        })
        .collect()
}
