//! Builders on the coordinator's side. A builder's stream opens with what it wants: a blob (`BlobRequest`,
//! served by any coordinator), an upload (`BlobPut`, answered once a quorum holds the blob), a base image
//! (`ImageRequest`) or its session (`BuilderReady`), which lives on the leader: the leader claims queued builds
//! for it through Raft (`ClaimBuild`) and sends them as `BuildJob`s, renews the leases of the builds it holds
//! while the session lives, keeps their log lines for `logs/build`, and turns `BuildDone` into `FinishBuild`
//! (with the image, once its blobs are checked in the store). A builder that dies stops renewing: its builds' leases run out and another builder takes them.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use spacedock_coordinator_core::builds;
use spacedock_coordinator_core::command::BuildOutcome;
use spacedock_coordinator_core::{Command, State};
use spacedock_net::{FramedReader, send};
use spacedock_shared::wire::{
    self, BuildDone, BuildResult, HeartbeatAck, ImageReply, RefuseCode, Refused, Registered,
};

use crate::api;
use crate::join::Authority;

/// How long a claimed build is a builder's without a renewal.
pub const LEASE: Duration = Duration::from_secs(30);
/// How often the session renews the leases of its builder's builds.
const RENEW_EVERY: Duration = Duration::from_secs(10);
/// How often the session looks for builds to hand out (a new build is also picked up on the next tick).
const CHECK: Duration = Duration::from_secs(1);
const FIRST_MESSAGE_TIMEOUT: Duration = Duration::from_secs(10);
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes of log kept per build (the end), and builds whose logs are kept.
const LOG_BYTES: usize = 1 << 20;
const LOGS_KEPT: usize = 64;

/// The log lines of recent builds, in the leader's memory (a new leader starts without them; the build's
/// final state keeps its failing step and the log's tail).
#[derive(Debug, Default)]
pub struct BuildLogs {
    inner: Mutex<Logs>,
}

#[derive(Debug, Default)]
struct Logs {
    by_build: HashMap<String, BuildLog>,
    order: VecDeque<String>,
}

#[derive(Debug, Default)]
struct BuildLog {
    text: String,
    /// Bytes dropped from the front to stay within `LOG_BYTES`.
    dropped: u64,
}

impl BuildLogs {
    pub fn append(&self, build: &str, text: &str) {
        let mut logs = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if !logs.by_build.contains_key(build) {
            logs.order.push_back(build.to_owned());
            while logs.order.len() > LOGS_KEPT {
                if let Some(old) = logs.order.pop_front() {
                    logs.by_build.remove(&old);
                }
            }
        }
        let log = logs.by_build.entry(build.to_owned()).or_default();
        log.text.push_str(text);
        if log.text.len() > LOG_BYTES {
            let mut cut = log.text.len() - LOG_BYTES;
            while !log.text.is_char_boundary(cut) {
                cut += 1;
            }
            let cut = log.text[cut..].find('\n').map_or(cut, |i| cut + i + 1);
            log.text.drain(..cut);
            log.dropped += cut as u64;
        }
    }

    /// The log from byte `offset` on (or from what is still kept), and the offset after it.
    pub fn read_from(&self, build: &str, offset: u64) -> (String, u64) {
        let logs = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let Some(log) = logs.by_build.get(build) else {
            return (String::new(), offset);
        };
        let end = log.dropped + log.text.len() as u64;
        let start = offset.max(log.dropped).min(end);
        let text = log.text[(start - log.dropped) as usize..].to_owned();
        (text, end)
    }
}

async fn propose(authority: &Authority, command: Command) -> Result<(), String> {
    api::propose_as_cluster(&authority.node, command, WRITE_TIMEOUT)
        .await
        .map_err(|e| e.to_string())
}

fn lease_until() -> u64 {
    api::system_clock() + LEASE.as_millis() as u64
}

/// Serves one builder stream; `name` is the builder's name from its certificate.
pub async fn stream(
    authority: &Authority,
    name: &str,
    mut rx: FramedReader<quinn::RecvStream>,
    mut tx: quinn::SendStream,
) {
    let refuse = |code, message: String| Refused { code, message };
    match tokio::time::timeout(FIRST_MESSAGE_TIMEOUT, rx.recv()).await {
        Ok(Ok(Some(wire::Message::BlobRequest(request)))) => {
            authority.blobs.serve(request, &mut tx, false).await
        }
        Ok(Ok(Some(wire::Message::BlobPut(put)))) => {
            authority.blobs.receive_replicated(put, rx, &mut tx).await
        }
        Ok(Ok(Some(wire::Message::ImageRequest(request)))) => {
            let reply = authority.node.read_local(|s| image_reply(s, &request.name));
            let _ = send(&mut tx, &reply.into()).await;
        }
        Ok(Ok(Some(wire::Message::BuilderReady(ready)))) if ready.name == name => {
            session(authority, name, ready, rx, tx).await
        }
        _ => {
            let message = format!(
                "builder `{name}` starts a stream with a blob request or upload, an image request or \
                 BuilderReady naming itself"
            );
            let _ = send(&mut tx, &refuse(RefuseCode::BadRequest, message).into()).await;
        }
    }
}

fn image_reply(state: &State, name: &str) -> ImageReply {
    match state.images.get(name) {
        Some(image) => ImageReply {
            found: true,
            id: image.id.clone(),
            layers: image.layers.clone(),
            available: Vec::new(),
        },
        None => ImageReply {
            found: false,
            id: String::new(),
            layers: Vec::new(),
            available: state
                .images
                .keys()
                .filter(|n| !n.starts_with(wire::BUILT_IMAGE_PREFIX))
                .cloned()
                .collect(),
        },
    }
}

async fn session(
    authority: &Authority,
    name: &str,
    ready: wire::BuilderReady,
    rx: FramedReader<quinn::RecvStream>,
    mut tx: quinn::SendStream,
) {
    let node = &authority.node;
    if node.status().role != "leader" {
        let refused = Refused {
            code: RefuseCode::NotLeader,
            message: crate::agents::leader_addr(node),
        };
        let _ = send(&mut tx, &refused.into()).await;
        return;
    }
    if send(
        &mut tx,
        &Registered {
            node: name.to_owned(),
        }
        .into(),
    )
    .await
    .is_err()
    {
        return;
    }
    tracing::info!(
        builder = name,
        slots = ready.free_slots,
        "builder connected"
    );
    let mut free = ready.free_slots;
    // The builds this builder works on: a new leader learns them from `BuilderReady`.
    let mut held: BTreeSet<String> = ready.running.into_iter().collect();
    let (mut incoming, reader) = spacedock_net::forward(rx);
    let mut check = tokio::time::interval(CHECK);
    let mut renew = tokio::time::interval(RENEW_EVERY);
    loop {
        tokio::select! {
            message = incoming.recv() => match message {
                Some(Ok(Some(wire::Message::Heartbeat(hb)))) => {
                    if send(&mut tx, &HeartbeatAck { seq: hb.seq }.into()).await.is_err() {
                        break;
                    }
                }
                Some(Ok(Some(wire::Message::BuilderReady(ready)))) => {
                    free = ready.free_slots;
                    held = ready.running.into_iter().collect();
                }
                Some(Ok(Some(wire::Message::BuildLog(log)))) => {
                    authority.build_logs.append(&log.build, &log.text);
                }
                Some(Ok(Some(wire::Message::BuildDone(done)))) => {
                    held.remove(&done.build);
                    finish(authority, name, done).await;
                }
                Some(Ok(Some(other))) => {
                    tracing::warn!(builder = name, kind = other.name(), "unexpected message from a builder; closing");
                    break;
                }
                _ => break,
            },
            _ = renew.tick() => {
                for id in held.clone() {
                    let command = Command::RenewBuild { id: id.clone(), builder: name.to_owned(), lease_until: lease_until() };
                    if let Err(e) = propose(authority, command).await {
                        tracing::info!(builder = name, build = id, error = e, "lease not renewed");
                        held.remove(&id);
                    }
                }
            }
            _ = check.tick() => {
                if node.status().role != "leader" {
                    let refused = Refused { code: RefuseCode::NotLeader, message: crate::agents::leader_addr(node) };
                    let _ = send(&mut tx, &refused.into()).await;
                    break;
                }
                while free > 0 {
                    let next = node.read_local(|s| builds::next(s, api::system_clock()).map(|b| b.id.clone()));
                    let Some(id) = next else { break };
                    let command = Command::ClaimBuild { id: id.clone(), builder: name.to_owned(), lease_until: lease_until() };
                    if let Err(e) = propose(authority, command).await {
                        tracing::info!(builder = name, build = id, error = e, "could not claim a build");
                        break;
                    }
                    let Some(mut job) = node.read_local(|s| builds::job(s, &id)) else { continue };
                    job.hub_endpoint = authority.public_url.clone();
                    let attempt = node.read_local(|s| s.builds.get(&id).map_or(0, |b| b.attempts));
                    authority.build_logs.append(&id, &format!("taken by builder {name} (attempt {attempt})\n"));
                    tracing::info!(builder = name, build = id, space = job.space_id, "build handed out");
                    if send(&mut tx, &job.into()).await.is_err() {
                        break;
                    }
                    held.insert(id);
                    free -= 1;
                }
            }
        }
    }
    reader.abort();
    tracing::info!(builder = name, "builder disconnected");
}

/// Records a build's end with its image (checked against the store).
async fn finish(authority: &Authority, name: &str, done: BuildDone) {
    let outcome = match done.result {
        BuildResult::Built(built) => {
            match api::images::check_image(
                &authority.blobs,
                &built.name,
                (&built.config, Some(built.manifest.as_str())),
                &built.layers,
            )
            .await
            {
                Ok(image) => BuildOutcome::Succeeded {
                    image: built.name,
                    port: built.port,
                    startup_timeout_s: built.startup_timeout_s,
                    built: Some(image),
                },
                Err(e) => BuildOutcome::Failed {
                    step: "push".into(),
                    message: format!("the image is not complete in the store: {}", e.message()),
                },
            }
        }
        BuildResult::Failed { step, message } => BuildOutcome::Failed { step, message },
    };
    let failed = matches!(outcome, BuildOutcome::Failed { .. });
    let command = Command::FinishBuild {
        id: done.build.clone(),
        builder: name.to_owned(),
        outcome,
    };
    match propose(authority, command).await {
        Ok(()) => tracing::info!(builder = name, build = done.build, failed, "build finished"),
        Err(e) => tracing::info!(
            builder = name,
            build = done.build,
            error = e,
            "build result not recorded"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_keep_their_end_and_readers_resume_from_offsets() {
        let logs = BuildLogs::default();
        logs.append("b1", "one\n");
        let (text, at) = logs.read_from("b1", 0);
        assert_eq!((text.as_str(), at), ("one\n", 4));
        logs.append("b1", "two\n");
        assert_eq!(logs.read_from("b1", at).0, "two\n");
        let big = "x".repeat(LOG_BYTES);
        logs.append("b1", &format!("{big}\nlast\n"));
        let (text, end) = logs.read_from("b1", 0);
        assert!(text.len() <= LOG_BYTES, "{}", text.len());
        assert!(text.ends_with("last\n"));
        assert_eq!(end, (8 + LOG_BYTES + 6) as u64);
        assert_eq!(logs.read_from("unknown", 5), (String::new(), 5));
        for i in 0..LOGS_KEPT {
            logs.append(&format!("n{i}"), "x\n");
        }
        assert_eq!(
            logs.read_from("b1", 0).0,
            "",
            "the oldest build's log is dropped"
        );
    }
}
