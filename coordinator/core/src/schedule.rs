//! The scheduler's decisions, with no IO: which allocations must go (their node is gone, the Space paused,
//! restarted or changed) and where Spaces that should run but have no allocation go. The leader turns the plan
//! into commands; `apply` re-checks every placement against the state of its moment (`check_placement`).
//!
//! Placement samples the fleet as Nomad does: from a random node on, it compares the first log2(N) ready nodes
//! that can hold the flavor (vCPU, memory, GPU model, count and memory, counting what live allocations hold;
//! failed ones hold nothing) and takes the best: GPU flavors bin-pack, CPU flavors spread and stay off GPU
//! nodes. The nodes' loads are computed once per plan, so one placement costs the same on any fleet size.
//! Draining nodes give their Spaces up a few at a time (`MAX_DRAIN_MOVES` starting at once).

use std::collections::{BTreeSet, HashMap};

use spacedock_shared::flavor::{Flavor, describe};
use spacedock_shared::wire::Assignment;

use crate::command::{Command, ScheduleStep};
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
    stale_space(state, a).or_else(|| match state.nodes.get(&a.node).map(|n| n.state) {
        None => Some(format!("node {} is gone", a.node)),
        Some(NodeState::Ready) => None,
        Some(other) => Some(format!("node {} is {}", a.node, other.as_str())),
    })
}

/// Why an allocation should go because of its Space: deleted, not running an image, paused, sleeping,
/// restarted, or its image or hardware changed.
fn stale_space(state: &State, a: &Allocation) -> Option<String> {
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
    (a.flavor != space.hardware_requested).then(|| {
        format!(
            "the Space's hardware changed to {}",
            space.hardware_requested
        )
    })
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

/// What live allocations hold on one node (failed ones hold nothing).
#[derive(Debug, Default, Clone)]
struct Load {
    vcpu: u64,
    memory_gib: u64,
    gpus: Vec<String>,
}

impl Load {
    fn add(&mut self, flavor: Option<&Flavor>, gpus: &[String]) {
        if let Some(f) = flavor {
            self.vcpu += u64::from(f.vcpu);
            self.memory_gib += u64::from(f.memory_gib);
        }
        self.gpus.extend(gpus.iter().cloned());
    }
}

fn flavor<'a>(state: &'a State, name: &str) -> Option<&'a Flavor> {
    state.flavors.iter().find(|f| f.name == name)
}

/// The load of every node, in one pass over the allocations.
fn loads(state: &State) -> HashMap<String, Load> {
    let mut loads: HashMap<String, Load> = HashMap::new();
    for a in state.allocations.values() {
        if a.phase != AllocationPhase::Failed {
            loads
                .entry(a.node.clone())
                .or_default()
                .add(flavor(state, &a.flavor), &a.gpus);
        }
    }
    loads
}

/// The GPUs `flavor` would get on `node` with `load` on it; `None` when it does not fit.
fn free_on(node: &Node, load: &Load, flavor: &Flavor) -> Option<Vec<String>> {
    let inventory = &node.inventory;
    let memory_total_gib = inventory.memory_bytes / (1 << 30);
    if load.vcpu + u64::from(flavor.vcpu) > u64::from(inventory.cpu_cores)
        || load.memory_gib + u64::from(flavor.memory_gib) > memory_total_gib
    {
        return None;
    }
    let Some(acc) = &flavor.accelerator else {
        return Some(Vec::new());
    };
    let free: Vec<String> = inventory
        .gpus
        .iter()
        .filter(|g| !load.gpus.contains(&g.uuid))
        .filter(|g| acc.accepts("nvidia", &g.name, g.memory_total_bytes >> 20))
        .map(|g| g.uuid.clone())
        .take(acc.count as usize)
        .collect();
    (free.len() == acc.count as usize).then_some(free)
}

/// The GPUs of `node` that `flavor` would get, given what the live allocations on it hold; `None` when the
/// node is not ready or cannot hold the flavor now.
pub fn fit(state: &State, node: &Node, flavor_wanted: &Flavor) -> Option<Vec<String>> {
    if node.state != NodeState::Ready {
        return None;
    }
    let mut load = Load::default();
    for a in state.allocations.values() {
        if a.node == node.name && a.phase != AllocationPhase::Failed {
            load.add(flavor(state, &a.flavor), &a.gpus);
        }
    }
    free_on(node, &load, flavor_wanted)
}

/// How good a node is for a flavor, higher is better. GPU flavors bin-pack: the node left with the fewest free
/// GPUs wins, keeping whole GPUs and whole nodes free. CPU flavors spread: the node left with the most free
/// vCPU and memory wins, and GPU nodes come last, kept for GPU work.
fn score(node: &Node, load: &Load, flavor: &Flavor) -> i64 {
    let inventory = &node.inventory;
    let signed = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    let free_vcpu =
        signed(u64::from(inventory.cpu_cores)) - signed(load.vcpu + u64::from(flavor.vcpu));
    let free_memory = signed(inventory.memory_bytes >> 30)
        - signed(load.memory_gib + u64::from(flavor.memory_gib));
    let gpus = signed(inventory.gpus.len() as u64);
    match &flavor.accelerator {
        Some(acc) => {
            let free_gpus = gpus - signed(load.gpus.len() as u64) - i64::from(acc.count);
            -free_gpus * 1_000_000 - free_vcpu
        }
        None if gpus > 0 => -1_000_000_000 + free_vcpu,
        None => free_vcpu * 1_000_000 + free_memory,
    }
}

/// How many feasible nodes a placement compares: log2 of the fleet, at least two (Nomad's sampling), so one
/// placement costs the same on 10 nodes or 10,000.
pub fn sample_limit(nodes: usize) -> usize {
    (usize::BITS - nodes.leading_zeros()).max(2) as usize
}

/// The best of the first `sample_limit` feasible ready nodes, walking the nodes in name order from `start`
/// (the leader picks it at random, so placements spread over the fleet).
fn choose(
    state: &State,
    loads: &HashMap<String, Load>,
    flavor: &Flavor,
    start: &str,
) -> Option<(String, Vec<String>)> {
    use std::ops::Bound;
    let limit = sample_limit(state.nodes.len());
    let after = state
        .nodes
        .range::<str, _>((Bound::Included(start), Bound::Unbounded));
    let before = state
        .nodes
        .range::<str, _>((Bound::Unbounded, Bound::Excluded(start)));
    let empty = Load::default();
    let mut best: Option<(i64, String, Vec<String>)> = None;
    let mut feasible = 0;
    for node in after.chain(before).map(|(_, n)| n) {
        if node.state != NodeState::Ready {
            continue;
        }
        let load = loads.get(&node.name).unwrap_or(&empty);
        let Some(gpus) = free_on(node, load, flavor) else {
            continue;
        };
        let s = score(node, load, flavor);
        if best.as_ref().is_none_or(|(b, _, _)| s > *b) {
            best = Some((s, node.name.clone(), gpus));
        }
        feasible += 1;
        if feasible >= limit {
            break;
        }
    }
    best.map(|(_, node, gpus)| (node, gpus))
}

/// Most allocations starting at once while nodes drain: moves wait for earlier ones to come up.
pub const MAX_DRAIN_MOVES: usize = 4;

/// The steps that bring the allocations in line with the state; `start` is where node sampling begins.
pub fn plan(state: &State, start: &str) -> Vec<Step> {
    let mut steps = Vec::new();
    let mut covered = BTreeSet::new();
    let starting = state
        .allocations
        .values()
        .filter(|a| {
            matches!(
                a.phase,
                AllocationPhase::Pulling | AllocationPhase::Starting
            )
        })
        .count();
    let mut drain_moves = MAX_DRAIN_MOVES.saturating_sub(starting);
    for a in state.allocations.values() {
        let draining = state
            .nodes
            .get(&a.node)
            .is_some_and(|n| n.state == NodeState::Draining);
        match stale(state, a) {
            // A Space on a draining node moves only when few are starting, so a drain never takes a fleet's
            // worth of Spaces down at once.
            Some(_) if draining && stale_space(state, a).is_none() && drain_moves == 0 => {
                covered.insert(a.space.clone());
            }
            Some(reason) => {
                if draining && stale_space(state, a).is_none() {
                    drain_moves -= 1;
                }
                steps.push(Step::Remove {
                    id: a.id.clone(),
                    reason,
                });
            }
            None => {
                covered.insert(a.space.clone());
            }
        }
    }
    let mut loads = loads(state);
    for (key, repo) in &state.repos {
        if !wants_to_run(repo) || covered.contains(key) {
            continue;
        }
        let Some(space) = &repo.space else { continue };
        let Some(wanted) = flavor(state, &space.hardware_requested) else {
            continue;
        };
        match choose(state, &loads, wanted, start) {
            Some((node, gpus)) => {
                // Count this placement against its node for the rest of the plan.
                loads
                    .entry(node.clone())
                    .or_default()
                    .add(Some(wanted), &gpus);
                steps.push(Step::Place {
                    space: key.clone(),
                    node,
                    gpus,
                });
            }
            None => {
                let message = no_capacity_message(wanted);
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
    /// The scheduler step that carries this out; `id` names a new allocation. `None` when the Space changed
    /// under the plan (the next pass sees it).
    pub fn into_step(self, state: &State, id: String) -> Option<ScheduleStep> {
        match self {
            Step::Remove { id, reason } => Some(ScheduleStep::Remove { id, reason }),
            Step::NoCapacity { space, message } => {
                Some(ScheduleStep::WaitForCapacity { space, message })
            }
            Step::Place { space, node, gpus } => {
                let s = state.repos.get(&space)?.space.as_ref()?;
                Some(ScheduleStep::Place {
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

    /// `into_step` as a command of its own.
    pub fn into_command(self, state: &State, id: String) -> Option<Command> {
        self.into_step(state, id).map(Command::from)
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
            let (variables, secrets) = space.env_vars();
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
                variables,
                secrets,
            })
        })
        .collect()
}
