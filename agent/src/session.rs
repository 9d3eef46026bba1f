//! The agent's link to the cluster: join once with a token (the identity is kept in the data dir), then stay
//! connected to the leader over mutual-TLS QUIC, sending the inventory, a heartbeat every two seconds and the
//! runner's reports, receiving the allocations to run, and reconnecting (following `NotLeader` redirects)
//! whenever the link breaks.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow};
use spacedock_net::send;
use spacedock_net::tls::{self, Identity};
use spacedock_shared::wire::{self, AllocationStatus, Heartbeat, RefuseCode, Role};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::allocs::Runner;
use crate::config::AgentConfig;
use crate::proxy;
use crate::{inventory, runtime};

const HEARTBEAT: Duration = Duration::from_secs(2);
const INVENTORY_REFRESH: Duration = Duration::from_secs(60);
const TIMEOUT: Duration = Duration::from_secs(10);

/// Stays connected until the process stops: returns only on a refusal that retrying cannot fix. Assignments
/// from the leader go to the runner; its reports go to the leader.
pub async fn run(
    config: &AgentConfig,
    name: &str,
    identity: &Identity,
    runner: Arc<Runner>,
    mut reports: mpsc::UnboundedReceiver<AllocationStatus>,
    xids: Arc<inventory::XidCounts>,
) -> anyhow::Result<()> {
    let endpoint = tls::client_endpoint().context("QUIC client endpoint")?;
    let client_config = tls::client_config(identity)?;
    let mut targets: Vec<String> = config.join.clone();
    let mut attempt = 0u32;
    let link = Link {
        xids: &xids,
        endpoint: &endpoint,
        client_config: &client_config,
        config,
        name,
        runner: &runner,
    };
    loop {
        let target = targets[attempt as usize % targets.len()].clone();
        match link.connected(&target, &mut reports).await {
            Ok(Outcome::Redirect(leader)) if !leader.is_empty() => {
                tracing::info!(from = target, to = leader, "following the leader");
                if !targets.contains(&leader) {
                    targets.insert(0, leader.clone());
                }
                attempt = targets.iter().position(|t| *t == leader).unwrap_or(0) as u32;
                continue;
            }
            Ok(Outcome::Redirect(_)) => tracing::info!(target, "no leader known yet"),
            Ok(Outcome::Lost(e)) => {
                tracing::warn!(target, error = %e, "lost the link to the cluster; reconnecting")
            }
            Err(e) if e.to_string().contains("Unauthorized") => return Err(e),
            Err(e) => tracing::warn!(target, error = %format!("{e:#}"), "cannot reach the cluster"),
        }
        attempt = attempt.wrapping_add(1);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The inventory with containerd's version (empty, and a warning, when containerd cannot be reached).
async fn current_inventory(
    config: &AgentConfig,
    name: &str,
    xids: &inventory::XidCounts,
) -> wire::Inventory {
    let mut inventory = inventory::collect(name, &config.labels, &config.data_dir, xids);
    match runtime::containerd_version(&config.containerd_socket).await {
        Ok(version) => inventory.containerd_version = version,
        Err(e) => {
            tracing::warn!(error = %e, "containerd is not reachable; this node cannot run Spaces")
        }
    }
    inventory
}

enum Outcome {
    /// The coordinator is not the leader; the leader's address when known.
    Redirect(String),
    /// The link broke after it worked.
    Lost(anyhow::Error),
}

struct Link<'a> {
    xids: &'a inventory::XidCounts,
    endpoint: &'a quinn::Endpoint,
    client_config: &'a quinn::ClientConfig,
    config: &'a AgentConfig,
    name: &'a str,
    runner: &'a Arc<Runner>,
}

impl Link<'_> {
    async fn connected(
        &self,
        target: &str,
        reports: &mut mpsc::UnboundedReceiver<AllocationStatus>,
    ) -> anyhow::Result<Outcome> {
        let (config, name) = (self.config, self.name);
        let spacedock_net::Dialed {
            connection,
            mut tx,
            mut rx,
        } = spacedock_net::dial(
            self.endpoint,
            self.client_config,
            target,
            Role::Agent,
            name,
            TIMEOUT,
        )
        .await?;
        send(
            &mut tx,
            &current_inventory(config, name, self.xids).await.into(),
        )
        .await?;
        if let Some(leader) = spacedock_net::registered(&mut rx, TIMEOUT, "the inventory").await? {
            return Ok(Outcome::Redirect(leader));
        }
        tracing::info!(node = name, coordinator = target, "registered");
        // A new leader may have missed reports: send where every allocation is.
        for status in self.runner.statuses() {
            send(&mut tx, &status.into()).await?;
        }
        let (mut incoming, reader) = spacedock_net::forward(rx);
        let streams = tokio::spawn(proxy::serve(connection, self.runner.clone()));
        let outcome = self.serve(&mut tx, &mut incoming, reports).await;
        reader.abort();
        streams.abort();
        Ok(outcome)
    }

    async fn serve(
        &self,
        tx: &mut quinn::SendStream,
        incoming: &mut spacedock_net::Incoming,
        reports: &mut mpsc::UnboundedReceiver<AllocationStatus>,
    ) -> Outcome {
        let mut seq = 0u64;
        let mut last_inventory = Instant::now();
        let mut last_ack = Instant::now();
        let mut heartbeat = tokio::time::interval(HEARTBEAT);
        loop {
            tokio::select! {
                _ = heartbeat.tick() => {
                    if last_ack.elapsed() > TIMEOUT {
                        return Outcome::Lost(anyhow!("no heartbeat answer within {TIMEOUT:?}"));
                    }
                    if last_inventory.elapsed() >= INVENTORY_REFRESH {
                        let inventory = current_inventory(self.config, self.name, self.xids).await;
                        if let Err(e) = send(tx, &inventory.into()).await {
                            return Outcome::Lost(e.into());
                        }
                        last_inventory = Instant::now();
                    }
                    seq += 1;
                    if let Err(e) = send(tx, &Heartbeat { seq }.into()).await {
                        return Outcome::Lost(e.into());
                    }
                }
                Some(status) = reports.recv() => {
                    if let Err(e) = send(tx, &status.into()).await {
                        return Outcome::Lost(e.into());
                    }
                }
                message = incoming.recv() => match message {
                    Some(Ok(Some(wire::Message::HeartbeatAck(_)))) => last_ack = Instant::now(),
                    Some(Ok(Some(wire::Message::Assignments(a)))) => {
                        self.runner.apply(a.allocations).await;
                    }
                    Some(Ok(Some(wire::Message::Refused(r)))) if r.code == RefuseCode::NotLeader => {
                        return Outcome::Redirect(r.message);
                    }
                    Some(Ok(Some(other))) => {
                        return Outcome::Lost(anyhow!("unexpected message from the coordinator: {}", other.name()));
                    }
                    Some(Err(e)) => return Outcome::Lost(e.into()),
                    Some(Ok(None)) | None => return Outcome::Lost(anyhow!("the coordinator closed the link")),
                }
            }
        }
    }
}
