//! The leader's scheduler loop: every pass it asks `schedule::plan` what to change and proposes it. Every
//! placement is re-checked by `apply` against the state of its moment, so a plan made on stale state is refused,
//! never applied.

use std::time::Duration;

use spacedock_coordinator_core::schedule::{self, Step};

use crate::api;
use crate::node::NodeHandle;

const PASS: Duration = Duration::from_millis(250);
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs while the process does; acts only while this coordinator leads.
pub async fn run(node: NodeHandle) {
    loop {
        tokio::time::sleep(PASS).await;
        if node.status().role != "leader" {
            continue;
        }
        let steps = node.read_local(schedule::plan);
        for step in steps {
            let what = describe(&step);
            let Some(command) = node.read_local(|s| step.into_command(s, api::new_id())) else {
                continue;
            };
            match api::propose_as_cluster(&node, command, WRITE_TIMEOUT).await {
                Ok(()) => tracing::info!("scheduler: {what}"),
                Err(e) => tracing::info!(error = %e, "scheduler: not done: {what}"),
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
