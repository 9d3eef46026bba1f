//! The builder's link to the cluster: a session with the leader over mutual-TLS QUIC (following `NotLeader`
//! redirects, reconnecting when the link breaks). It says how many builds it can take and which it works on
//! (`BuilderReady`), runs the `BuildJob`s it is handed (at most `concurrency` at once), and sends their log
//! lines and results. Messages from builds that end while the link is down wait and go out on the next link.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use spacedock_net::send;
use spacedock_net::tls::{self, Identity};
use spacedock_shared::wire::{self, BuildJob, BuilderReady, Heartbeat, RefuseCode, Role};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::build::Builder;

const HEARTBEAT: Duration = Duration::from_secs(2);
const TIMEOUT: Duration = Duration::from_secs(10);

/// What the builds running here report to the session.
#[derive(Debug)]
pub enum Report {
    /// A message for the leader (`BuildLog`, `BuildDone`).
    Send(wire::Message),
    /// A build ended (its `BuildDone` was queued before this).
    Ended(String),
}

/// The builds this builder works on.
#[derive(Debug, Default)]
struct Running {
    ids: Mutex<BTreeSet<String>>,
}

impl Running {
    fn ids(&self) -> Vec<String> {
        self.ids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    fn insert(&self, id: &str) -> bool {
        self.ids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_owned())
    }

    fn remove(&self, id: &str) {
        self.ids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }
}

/// Stays connected until the process stops; returns only on a refusal that retrying cannot fix.
pub async fn run(
    targets: Vec<String>,
    name: &str,
    identity: &Identity,
    concurrency: u32,
    builder: Arc<Builder>,
) -> anyhow::Result<()> {
    let endpoint = tls::client_endpoint().context("QUIC client endpoint")?;
    let client_config = tls::client_config(identity)?;
    let (reports_tx, mut reports) = mpsc::unbounded_channel();
    let link = Link {
        endpoint,
        client_config,
        name: name.to_owned(),
        concurrency,
        running: Arc::new(Running::default()),
        slots: Arc::new(tokio::sync::Semaphore::new(concurrency as usize)),
        builder,
        reports_tx,
    };
    let mut targets = targets;
    let mut attempt = 0usize;
    loop {
        let target = targets[attempt % targets.len()].clone();
        match link.connected(&target, &mut reports).await {
            Ok(Some(leader)) if !leader.is_empty() => {
                tracing::info!(from = target, to = leader, "following the leader");
                if !targets.contains(&leader) {
                    targets.insert(0, leader.clone());
                }
                attempt = targets.iter().position(|t| *t == leader).unwrap_or(0);
                continue;
            }
            Ok(Some(_)) => tracing::info!(target, "no leader known yet"),
            Ok(None) => tracing::warn!(target, "lost the link to the cluster; reconnecting"),
            Err(e) if e.to_string().contains("Unauthorized") => return Err(e),
            Err(e) => tracing::warn!(target, error = %format!("{e:#}"), "cannot reach the cluster"),
        }
        attempt = attempt.wrapping_add(1);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

struct Link {
    endpoint: quinn::Endpoint,
    client_config: quinn::ClientConfig,
    name: String,
    concurrency: u32,
    running: Arc<Running>,
    slots: Arc<tokio::sync::Semaphore>,
    builder: Arc<Builder>,
    reports_tx: mpsc::UnboundedSender<Report>,
}

impl Link {
    fn ready(&self) -> wire::Message {
        let running = self.running.ids();
        BuilderReady {
            name: self.name.clone(),
            free_slots: self.concurrency.saturating_sub(running.len() as u32),
            running,
        }
        .into()
    }

    /// One link: `Ok(Some(leader))` when redirected, `Ok(None)` when it broke after it worked.
    async fn connected(
        &self,
        target: &str,
        reports: &mut mpsc::UnboundedReceiver<Report>,
    ) -> anyhow::Result<Option<String>> {
        let spacedock_net::Dialed { mut tx, mut rx, .. } = spacedock_net::dial(
            &self.endpoint,
            &self.client_config,
            target,
            Role::Builder,
            &self.name,
            TIMEOUT,
        )
        .await?;
        send(&mut tx, &self.ready()).await?;
        if let Some(leader) = spacedock_net::registered(&mut rx, TIMEOUT, "BuilderReady").await? {
            return Ok(Some(leader));
        }
        tracing::info!(coordinator = target, "taking builds");
        let (mut incoming, reader) = spacedock_net::forward(rx);
        let outcome = self.serve(&mut tx, &mut incoming, reports).await;
        reader.abort();
        Ok(outcome)
    }

    async fn serve(
        &self,
        tx: &mut quinn::SendStream,
        incoming: &mut spacedock_net::Incoming,
        reports: &mut mpsc::UnboundedReceiver<Report>,
    ) -> Option<String> {
        let mut seq = 0u64;
        let mut last_ack = Instant::now();
        let mut heartbeat = tokio::time::interval(HEARTBEAT);
        loop {
            tokio::select! {
                _ = heartbeat.tick() => {
                    if last_ack.elapsed() > TIMEOUT {
                        tracing::warn!("no heartbeat answer within {TIMEOUT:?}");
                        return None;
                    }
                    seq += 1;
                    if send(tx, &Heartbeat { seq }.into()).await.is_err() {
                        return None;
                    }
                }
                Some(report) = reports.recv() => {
                    let message = match report {
                        Report::Send(message) => message,
                        Report::Ended(id) => {
                            self.running.remove(&id);
                            self.ready()
                        }
                    };
                    if send(tx, &message).await.is_err() {
                        return None;
                    }
                }
                message = incoming.recv() => match message {
                    Some(Ok(Some(wire::Message::HeartbeatAck(_)))) => last_ack = Instant::now(),
                    Some(Ok(Some(wire::Message::BuildJob(job)))) => self.start(job),
                    Some(Ok(Some(wire::Message::Refused(r)))) if r.code == RefuseCode::NotLeader => {
                        return Some(r.message);
                    }
                    Some(Ok(Some(other))) => {
                        tracing::warn!(kind = other.name(), "unexpected message from the coordinator");
                        return None;
                    }
                    _ => return None,
                }
            }
        }
    }

    /// Runs a job on a task of its own once a slot is free.
    fn start(&self, job: BuildJob) {
        if !self.running.insert(&job.id) {
            tracing::info!(build = job.id, "already building it");
            return;
        }
        tracing::info!(build = job.id, space = job.space_id, "build taken");
        let (slots, builder, reports) = (
            self.slots.clone(),
            self.builder.clone(),
            self.reports_tx.clone(),
        );
        tokio::spawn(async move {
            let _slot = slots.acquire_owned().await;
            let id = job.id.clone();
            let log = crate::build::Log::new(&id, &job.secrets, reports.clone());
            let result = builder.build(&job, &log).await;
            let done = wire::BuildDone {
                build: id.clone(),
                result,
            };
            let _ = reports.send(Report::Send(done.into()));
            let _ = reports.send(Report::Ended(id));
        });
    }
}
