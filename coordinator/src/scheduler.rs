//! The leader's scheduler loop: every pass it asks `schedule::plan` what to change and proposes it. Every
//! placement is re-checked by `apply` against the state of its moment, so a plan made on stale state is refused,
//! never applied. Every few seconds it also puts completed minutes of running allocations on the usage ledger
//! (`usage::due`; entries already recorded are skipped, so a new leader neither loses nor repeats one), and puts
//! Spaces idle past their sleep time to sleep (`schedule::sleepy`).

use std::sync::Arc;
use std::time::Duration;

use spacedock_coordinator_core::command::ScheduleStep;
use spacedock_coordinator_core::schedule::{self, Step};
use spacedock_coordinator_core::{Command, usage};

use crate::activity::Activity;
use crate::api;
use crate::links::Links;
use crate::node::NodeHandle;
use tokio::sync::Notify;

const PASS: Duration = Duration::from_millis(250);
/// How often the meter looks for completed minutes.
const METER_EVERY: Duration = Duration::from_secs(5);
/// Most scheduler steps in one entry.
const SCHEDULE_BATCH: usize = 500;
/// Most ledger entries in one proposal.
const METER_BATCH: usize = 2000;
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs while the process does; acts only while this coordinator leads.
pub async fn run(node: NodeHandle, activity: Arc<Activity>, links: Arc<Links>, kick: Arc<Notify>) {
    let mut metered = tokio::time::Instant::now();
    let mut leading_since: Option<u64> = None;
    loop {
        // A pass every PASS, or at once when kicked (a request woke a Space).
        tokio::select! {
            _ = tokio::time::sleep(PASS) => {}
            _ = kick.notified() => {}
        }
        if node.status().role != "leader" {
            leading_since = None;
            continue;
        }
        let since = *leading_since.get_or_insert_with(api::system_clock);
        if metered.elapsed() >= METER_EVERY {
            metered = tokio::time::Instant::now();
            meter(&node).await;
            abandon_lost_builds(&node).await;
        }
        sleep_idle(&node, &activity, since).await;
        let start = format!("{:016x}", rand::random::<u64>());
        let steps = node.read_local(|s| schedule::plan(s, &start));
        if steps.is_empty() {
            continue;
        }
        let removed_nodes: std::collections::HashMap<String, String> = node.read_local(|s| {
            steps
                .iter()
                .filter_map(|step| match step {
                    Step::Remove { id, .. } => {
                        s.allocations.get(id).map(|a| (id.clone(), a.node.clone()))
                    }
                    _ => None,
                })
                .collect()
        });
        let batch: Vec<ScheduleStep> = node.read_local(|s| {
            steps
                .iter()
                .cloned()
                .filter_map(|step| step.into_step(s, api::new_id()))
                .collect()
        });
        for step in &steps {
            tracing::info!("scheduler: {}", describe(step));
        }
        for steps in batch.chunks(SCHEDULE_BATCH) {
            let command = Command::Schedule {
                steps: steps.to_vec(),
            };
            if let Err(e) = api::propose_as_cluster(&node, command, WRITE_TIMEOUT).await {
                tracing::info!(error = %e, "scheduler: pass not committed");
                break;
            }
            // The agents concerned hear of it now, not at their next check.
            for step in steps {
                let node_name = match step {
                    ScheduleStep::Place { allocation } => Some(allocation.node.clone()),
                    ScheduleStep::Remove { id, .. } => {
                        // Removed by now: its node is in the plan's step list only by id, so look at the
                        // pre-commit plan.
                        removed_nodes.get(id).cloned()
                    }
                    ScheduleStep::WaitForCapacity { .. } => None,
                };
                if let Some(n) = node_name {
                    links.kick(&n);
                }
            }
        }
    }
}

fn describe(step: &Step) -> String {
    match step {
        Step::Remove { id, reason } => format!("remove allocation {id}: {reason}"),
        Step::Place { space, node, gpus } => format!("place {space} on {node} (GPUs {gpus:?})"),
        Step::NoCapacity { space, message } => format!("{space}: {message}"),
    }
}

/// Records the completed minutes that are due.
async fn meter(node: &NodeHandle) {
    let now = api::system_clock();
    let due = node.read_local(|s| usage::due(s, now));
    for entries in due.chunks(METER_BATCH) {
        let command = Command::RecordUsage {
            entries: entries.to_vec(),
        };
        if let Err(e) = api::propose_as_cluster(node, command, WRITE_TIMEOUT).await {
            tracing::info!(error = %e, "meter: minutes not recorded yet");
            return;
        }
    }
}

/// Gives up on builds whose builders kept dying: each went out of attempts and its last lease ran out.
async fn abandon_lost_builds(node: &NodeHandle) {
    let now = api::system_clock();
    let lost: Vec<String> = node.read_local(|s| {
        spacedock_coordinator_core::builds::lost(s, now)
            .into_iter()
            .map(|b| b.id.clone())
            .collect()
    });
    for id in lost {
        let command = Command::AbandonBuild {
            id: id.clone(),
            reason: format!(
                "its builder was lost {} times",
                spacedock_coordinator_core::builds::MAX_ATTEMPTS
            ),
        };
        match api::propose_as_cluster(node, command, WRITE_TIMEOUT).await {
            Ok(()) => tracing::warn!(build = id, "build abandoned: its builders kept being lost"),
            Err(e) => tracing::info!(build = id, error = %e, "could not abandon a lost build"),
        }
    }
}

/// Puts Spaces idle past their sleep time to sleep. Activity lives in this leader's memory, so a new leader
/// counts idleness from when it started leading.
async fn sleep_idle(node: &NodeHandle, activity: &Activity, leading_since: u64) {
    let now = api::system_clock();
    let idle = node.read_local(|s| {
        schedule::sleepy(s, now, |space| {
            Some(activity.last(space).unwrap_or(0).max(leading_since))
        })
    });
    for space in idle {
        let command = Command::Sleep {
            space: space.clone(),
        };
        match api::propose_as_cluster(node, command, WRITE_TIMEOUT).await {
            Ok(()) => tracing::info!(space, "idle past its sleep time: sleeping"),
            Err(e) => tracing::info!(space, error = %e, "could not put to sleep"),
        }
    }
}
