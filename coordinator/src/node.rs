//! The Raft driver: one thread owns the raft-rs `RawNode`, steps it with ticks, proposals and peer messages, and
//! handles each `Ready` in raft-rs's order (send, snapshot, apply, append, persist, send persisted, advance).
//!
//! Everything else talks to it through a `NodeHandle`: `propose` waits until the entry is applied (on this node)
//! and returns `apply`'s verdict; `read` is linearizable through ReadIndex; `read_local` is not.
//! The state machine lives in memory and is rebuilt on start from the latest snapshot plus the committed log.

use std::collections::HashMap;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use protobuf::Message as _;
use raft::eraftpb::{
    ConfChangeSingle, ConfChangeType, ConfChangeV2, ConfState, Entry, EntryType, Message, Snapshot,
};
use raft::{RawNode, StateRole};
use spacedock_coordinator_core::{ApplyError, Envelope, State, apply};
use tokio::sync::{oneshot, watch};

use crate::raft_store::{RaftStore, StoreError};

/// Sends Raft messages to peers. Best effort: Raft copes with loss, reordering and duplicates.
pub trait Transport: Send + Sync + 'static {
    fn send(&self, messages: Vec<Message>);
}

/// Raft timing and log size settings.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub id: u64,
    /// One Raft tick.
    pub tick: Duration,
    /// Ticks without a leader before campaigning (randomised up to twice this).
    pub election_ticks: usize,
    pub heartbeat_ticks: usize,
    /// Applied entries past the last snapshot before a new snapshot compacts the log.
    pub snapshot_entries: u64,
}

impl NodeConfig {
    pub fn new(id: u64) -> NodeConfig {
        NodeConfig {
            id,
            tick: Duration::from_millis(100),
            election_ticks: 10,
            heartbeat_ticks: 2,
            snapshot_entries: 100_000,
        }
    }
}

/// Why a write did not happen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    #[error(transparent)]
    Refused(#[from] ApplyError),
    #[error("no leader is known; the cluster may be electing one or this node may be cut off")]
    NoLeader,
    #[error("the write was not committed within {0:?}; it may or may not have happened")]
    Timeout(Duration),
    #[error(
        "the leader changed while the write was in flight; it may or may not have happened, retry it"
    )]
    LeaderChanged,
    #[error("this coordinator is shutting down")]
    Stopped,
}

/// Why a linearizable read could not be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    #[error(
        "could not confirm with a quorum within {0:?}; the cluster may be electing a leader or this node may be cut off"
    )]
    Timeout(Duration),
    #[error("this coordinator is shutting down")]
    Stopped,
}

/// What `status` reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeStatus {
    pub id: u64,
    pub leader: Option<u64>,
    pub term: u64,
    pub commit_index: u64,
    pub applied_index: u64,
    pub role: String,
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
    /// True while a membership change is between its joint and its final configuration.
    pub joint: bool,
}

enum Input {
    Propose {
        data: Vec<u8>,
        request_id: u64,
    },
    ConfChange {
        change: ConfChangeV2,
        context: Vec<u8>,
        request_id: u64,
    },
    ReadIndex {
        reply: oneshot::Sender<u64>,
    },
    Raft(Message),
    Campaign,
    Stop,
}

type Waiters = Mutex<HashMap<u64, oneshot::Sender<Result<(), WriteError>>>>;

struct Shared {
    state: RwLock<State>,
    status: RwLock<NodeStatus>,
    waiters: Waiters,
    applied: watch::Sender<u64>,
}

/// A cheap handle to a running node.
#[derive(Clone)]
pub struct NodeHandle {
    inputs: mpsc::Sender<Input>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for NodeHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeHandle").finish_non_exhaustive()
    }
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
    #[error("the snapshot in the store cannot be read: {0}")]
    Snapshot(String),
    #[error("this data directory belongs to node {stored}, not {configured}")]
    WrongNode { stored: u64, configured: u64 },
    #[error("cannot bootstrap: the store already holds a cluster")]
    AlreadyInitialized,
}

/// Writes the first snapshot of a new cluster: `initial` becomes the state at index 1, with this node the only
/// voter.
pub fn bootstrap(store: &RaftStore, id: u64, initial: &State) -> Result<(), StartError> {
    if store.is_initialized() {
        return Err(StartError::AlreadyInitialized);
    }
    let mut snapshot = Snapshot::default();
    snapshot.mut_metadata().index = 1;
    snapshot.mut_metadata().term = 1;
    snapshot.mut_metadata().mut_conf_state().voters = vec![id];
    snapshot.set_data(initial.to_snapshot().map_err(StartError::Snapshot)?.into());
    store.apply_snapshot(&snapshot)?;
    store.set_node_id(id)?;
    store.flush()?;
    Ok(())
}

/// Starts the driver thread over a store (bootstrapped, previously running, or empty and waiting to be added).
pub fn start(
    config: NodeConfig,
    store: RaftStore,
    transport: Arc<dyn Transport>,
) -> Result<NodeHandle, StartError> {
    match store.node_id()? {
        Some(stored) if stored != config.id => {
            return Err(StartError::WrongNode {
                stored,
                configured: config.id,
            });
        }
        Some(_) => {}
        None => store.set_node_id(config.id)?,
    }
    let snapshot = store.snapshot_metadata();
    let data = store.snapshot_data()?;
    let state = if data.is_empty() {
        State::default()
    } else {
        State::from_snapshot(&data).map_err(StartError::Snapshot)?
    };
    let raft_config = raft::Config {
        id: config.id,
        election_tick: config.election_ticks,
        heartbeat_tick: config.heartbeat_ticks,
        applied: snapshot.index,
        check_quorum: true,
        pre_vote: true,
        max_size_per_msg: 1 << 20,
        max_inflight_msgs: 256,
        read_only_option: raft::ReadOnlyOption::Safe,
        ..Default::default()
    };
    raft_config.validate()?;
    let logger = slog::Logger::root(slog_stdlog::StdLog.fuse(), slog::o!());
    let raw = RawNode::new(&raft_config, store.clone(), &logger)?;
    let (applied_tx, _) = watch::channel(snapshot.index);
    let shared = Arc::new(Shared {
        state: RwLock::new(state),
        status: RwLock::new(NodeStatus {
            id: config.id,
            ..Default::default()
        }),
        waiters: Mutex::new(HashMap::new()),
        applied: applied_tx,
    });
    let (inputs, rx) = mpsc::channel();
    let mut driver = Driver {
        raw,
        store,
        transport,
        shared: shared.clone(),
        rx,
        config,
        reads: HashMap::new(),
        next_read: 0,
        applied: snapshot.index,
        snapshot_index: snapshot.index,
        force_snapshot: false,
    };
    std::thread::Builder::new()
        .name(format!("raft-{}", driver.config.id))
        .spawn(move || driver.run())
        .map_err(|e| StartError::Snapshot(format!("cannot start the raft thread: {e}")))?;
    Ok(NodeHandle { inputs, shared })
}

use slog::Drain as _;

impl NodeHandle {
    /// Proposes an entry and waits until this node has applied it.
    pub async fn propose(&self, envelope: &Envelope, timeout: Duration) -> Result<(), WriteError> {
        let data = envelope
            .encode()
            .map_err(|e| ApplyError::invalid("command", e))?;
        let (tx, rx) = oneshot::channel();
        self.waiters().insert(envelope.request_id, tx);
        self.send(Input::Propose {
            data,
            request_id: envelope.request_id,
        })?;
        self.wait(envelope.request_id, rx, timeout).await
    }

    /// Adds or removes a member through joint consensus, recording `envelope`
    /// (an `AddMember` or `RemoveMember` command) with it.
    pub async fn change_membership(
        &self,
        id: u64,
        change: ConfChangeType,
        envelope: &Envelope,
        timeout: Duration,
    ) -> Result<(), WriteError> {
        let context = envelope
            .encode()
            .map_err(|e| ApplyError::invalid("command", e))?;
        let mut cc = ConfChangeV2::default();
        let mut single = ConfChangeSingle::default();
        single.set_change_type(change);
        single.node_id = id;
        cc.mut_changes().push(single);
        // Joint consensus even for one change: the old and the new configuration must both agree until the
        // leader leaves the joint configuration on its own (raft-rs proposes the leave once the enter applied).
        cc.set_transition(raft::eraftpb::ConfChangeTransition::Implicit);
        let (tx, rx) = oneshot::channel();
        self.waiters().insert(envelope.request_id, tx);
        let deadline = tokio::time::Instant::now() + timeout;
        self.send(Input::ConfChange {
            change: cc,
            context,
            request_id: envelope.request_id,
        })?;
        self.wait(envelope.request_id, rx, timeout).await?;
        // The change is done once this node has applied the leave of the joint configuration too; only then
        // may the next change be proposed.
        let mut applied = self.shared.applied.subscribe();
        while self.status().joint {
            match tokio::time::timeout_at(deadline, applied.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(WriteError::Stopped),
                Err(_) => return Err(WriteError::Timeout(timeout)),
            }
        }
        Ok(())
    }

    /// Runs `f` on a state at least as new as every write acknowledged before this call (ReadIndex).
    pub async fn read<T>(
        &self,
        timeout: Duration,
        f: impl FnOnce(&State) -> T,
    ) -> Result<T, ReadError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let (tx, rx) = oneshot::channel();
        self.inputs
            .send(Input::ReadIndex { reply: tx })
            .map_err(|_| ReadError::Stopped)?;
        let index = match tokio::time::timeout_at(deadline, rx).await {
            Err(_) => return Err(ReadError::Timeout(timeout)),
            Ok(Err(_)) => return Err(ReadError::Stopped),
            Ok(Ok(index)) => index,
        };
        let mut applied = self.shared.applied.subscribe();
        let wait = applied.wait_for(|a| *a >= index);
        match tokio::time::timeout_at(deadline, wait).await {
            Err(_) => return Err(ReadError::Timeout(timeout)),
            Ok(Err(_)) => return Err(ReadError::Stopped),
            Ok(Ok(_)) => {}
        }
        Ok(self.read_local(f))
    }

    /// Runs `f` on this node's state as applied so far (may lag the leader).
    pub fn read_local<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        let state = self.shared.state.read().unwrap_or_else(|p| p.into_inner());
        f(&state)
    }

    pub fn status(&self) -> NodeStatus {
        self.shared
            .status
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Hands an incoming peer message to the driver.
    pub fn step(&self, message: Message) {
        let _ = self.inputs.send(Input::Raft(message));
    }

    /// Starts an election now (used right after bootstrap).
    pub fn campaign(&self) {
        let _ = self.inputs.send(Input::Campaign);
    }

    /// Stops the driver thread; pending requests fail with `Stopped`.
    pub fn stop(&self) {
        let _ = self.inputs.send(Input::Stop);
    }

    fn waiters(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<u64, oneshot::Sender<Result<(), WriteError>>>> {
        self.shared
            .waiters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn send(&self, input: Input) -> Result<(), WriteError> {
        self.inputs.send(input).map_err(|_| WriteError::Stopped)
    }

    async fn wait(
        &self,
        request_id: u64,
        rx: oneshot::Receiver<Result<(), WriteError>>,
        timeout: Duration,
    ) -> Result<(), WriteError> {
        let result = match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(WriteError::Stopped),
            Err(_) => Err(WriteError::Timeout(timeout)),
        };
        self.waiters().remove(&request_id);
        result
    }
}

/// A ReadIndex request not yet answered. It is (re)sent while no answer comes: a follower drops it when it knows
/// no leader, and a leader change loses it.
struct PendingRead {
    reply: oneshot::Sender<u64>,
    sent_at: Option<Instant>,
}

struct Driver {
    raw: RawNode<RaftStore>,
    store: RaftStore,
    transport: Arc<dyn Transport>,
    shared: Arc<Shared>,
    rx: mpsc::Receiver<Input>,
    config: NodeConfig,
    reads: HashMap<u64, PendingRead>,
    next_read: u64,
    applied: u64,
    snapshot_index: u64,
    /// Set by a membership change: the next snapshot must carry the new configuration, so that a new member
    /// (which ignores snapshots whose configuration lacks it) can catch up from it.
    force_snapshot: bool,
}

impl Driver {
    fn run(&mut self) {
        let span = tracing::info_span!("raft", node_id = self.config.id);
        let _guard = span.enter();
        let mut last_tick = Instant::now();
        loop {
            let wait = self.config.tick.saturating_sub(last_tick.elapsed());
            match self.rx.recv_timeout(wait) {
                Ok(Input::Stop) | Err(RecvTimeoutError::Disconnected) => break,
                Ok(input) => {
                    if !self.handle(input) {
                        break;
                    }
                    // Take whatever else is queued so one Ready (and one fsync) covers all of it.
                    let mut stop = false;
                    for _ in 0..4096 {
                        match self.rx.try_recv() {
                            Ok(Input::Stop) => {
                                stop = true;
                                break;
                            }
                            Ok(input) => {
                                if !self.handle(input) {
                                    stop = true;
                                    break;
                                }
                            }
                            Err(_) => break,
                        }
                    }
                    if stop {
                        break;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
            if last_tick.elapsed() >= self.config.tick {
                self.raw.tick();
                self.send_reads();
                last_tick = Instant::now();
            }
            if self.raw.has_ready()
                && let Err(e) = self.on_ready()
            {
                tracing::error!(error = %e, "cannot persist raft state; stopping this node");
                break;
            }
        }
        self.fail_waiters(&WriteError::Stopped);
        tracing::info!("raft driver stopped");
    }

    /// Returns false when the node must stop.
    fn handle(&mut self, input: Input) -> bool {
        match input {
            Input::Propose { data, request_id } => {
                if let Err(e) = self.raw.propose(vec![], data) {
                    tracing::debug!(error = %e, "proposal dropped");
                    self.complete(request_id, Err(WriteError::NoLeader));
                }
            }
            Input::ConfChange {
                change,
                context,
                request_id,
            } => {
                if let Err(e) = self.raw.propose_conf_change(context, change) {
                    tracing::debug!(error = %e, "membership change dropped");
                    let err = match e {
                        raft::Error::ProposalDropped => WriteError::NoLeader,
                        other => WriteError::Refused(ApplyError::invalid(
                            "membership",
                            other.to_string(),
                        )),
                    };
                    self.complete(request_id, Err(err));
                }
            }
            Input::ReadIndex { reply } => {
                self.next_read += 1;
                self.reads.insert(
                    self.next_read,
                    PendingRead {
                        reply,
                        sent_at: None,
                    },
                );
                self.send_reads();
            }
            Input::Raft(message) => {
                if let Err(e) = self.raw.step(message) {
                    tracing::debug!(error = %e, "ignored a raft message");
                }
            }
            Input::Campaign => {
                if let Err(e) = self.raw.campaign() {
                    tracing::warn!(error = %e, "cannot campaign");
                }
            }
            Input::Stop => return false,
        }
        true
    }

    fn on_ready(&mut self) -> Result<(), StoreError> {
        let mut ready = self.raw.ready();
        let snapshots_to = self.send(ready.take_messages());
        if !ready.snapshot().is_empty() {
            self.install_snapshot(ready.snapshot().clone())?;
        }
        let committed = ready.take_committed_entries();
        self.apply_entries(committed)?;
        self.store.persist(ready.entries(), ready.hs())?;
        if ready.must_sync() || !ready.entries().is_empty() || ready.hs().is_some() {
            self.store.flush()?;
        }
        if let Some(ss) = ready.ss() {
            let mut status = self
                .shared
                .status
                .write()
                .unwrap_or_else(|p| p.into_inner());
            let leader = Some(ss.leader_id).filter(|l| *l != 0);
            if status.leader.is_some() && leader != status.leader {
                // Proposals forwarded to the old leader may be lost; tell their callers now instead of at
                // their timeout. Those already committed will still be applied.
                self.fail_waiters(&WriteError::LeaderChanged);
            }
            status.leader = leader;
            status.role = role_name(ss.raft_state).into();
            if ss.raft_state == StateRole::Leader {
                tracing::info!(term = self.raw.raft.term, "became leader");
            }
        }
        for rs in ready.take_read_states() {
            let ctx: [u8; 8] = rs.request_ctx.as_slice().try_into().unwrap_or_default();
            if let Some(read) = self.reads.remove(&u64::from_be_bytes(ctx)) {
                let _ = read.reply.send(rs.index);
            }
        }
        let persisted_snapshots_to = self.send(ready.take_persisted_messages());
        let mut light = self.raw.advance(ready);
        if let Some(commit) = light.commit_index() {
            self.store.set_commit(commit)?;
        }
        let light_snapshots_to = self.send(light.take_messages());
        // Snapshots go out best effort; reporting them sent makes the leader probe again, and a follower that
        // could not use one gets a fresh one.
        for to in snapshots_to
            .into_iter()
            .chain(persisted_snapshots_to)
            .chain(light_snapshots_to)
        {
            self.raw.report_snapshot(to, raft::SnapshotStatus::Finish);
        }
        self.apply_entries(light.take_committed_entries())?;
        self.raw.advance_apply();
        self.update_status();
        self.maybe_compact()
    }

    /// Sends the ReadIndex requests that were never sent or got no answer for a while, once a leader is known;
    /// forgets those whose caller gave up.
    fn send_reads(&mut self) {
        self.reads.retain(|_, read| !read.reply.is_closed());
        if self.raw.raft.leader_id == 0 {
            return;
        }
        let resend_after = self.config.tick * self.config.election_ticks as u32 / 2;
        let due: Vec<u64> = self
            .reads
            .iter()
            .filter(|(_, read)| read.sent_at.is_none_or(|at| at.elapsed() >= resend_after))
            .map(|(ctx, _)| *ctx)
            .collect();
        for ctx in due {
            self.raw.read_index(ctx.to_be_bytes().to_vec());
            if let Some(read) = self.reads.get_mut(&ctx) {
                read.sent_at = Some(Instant::now());
            }
        }
    }

    /// Hands messages to the transport; returns the peers that were sent a snapshot.
    fn send(&self, messages: Vec<Message>) -> Vec<u64> {
        let snapshots_to = messages
            .iter()
            .filter(|m| m.get_msg_type() == raft::eraftpb::MessageType::MsgSnapshot)
            .map(|m| m.to)
            .collect();
        if !messages.is_empty() {
            self.transport.send(messages);
        }
        snapshots_to
    }

    fn install_snapshot(&mut self, snapshot: Snapshot) -> Result<(), StoreError> {
        let index = snapshot.get_metadata().index;
        let state = State::from_snapshot(snapshot.get_data()).map_err(|e| StoreError::Corrupt {
            key: "received snapshot".into(),
            reason: e,
        })?;
        self.store.apply_snapshot(&snapshot)?;
        self.store.flush()?;
        *self.shared.state.write().unwrap_or_else(|p| p.into_inner()) = state;
        self.applied = index;
        self.snapshot_index = index;
        self.shared.applied.send_replace(index);
        tracing::info!(index, "installed a snapshot");
        Ok(())
    }

    fn apply_entries(&mut self, entries: Vec<Entry>) -> Result<(), StoreError> {
        if entries.is_empty() {
            return Ok(());
        }
        for entry in entries {
            if entry.index <= self.applied {
                continue;
            }
            match entry.get_entry_type() {
                EntryType::EntryNormal if entry.data.is_empty() => {}
                EntryType::EntryNormal => self.apply_command(&entry.data, entry.index),
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                    self.apply_conf_change(&entry)?
                }
            }
            self.applied = entry.index;
        }
        self.shared.applied.send_replace(self.applied);
        Ok(())
    }

    fn apply_command(&mut self, data: &[u8], index: u64) {
        let envelope = match Envelope::decode(data) {
            Ok(envelope) => envelope,
            Err(e) => {
                tracing::error!(index, error = %e, "skipping an entry this build cannot read");
                return;
            }
        };
        let result = {
            let mut state = self.shared.state.write().unwrap_or_else(|p| p.into_inner());
            apply(&mut state, &envelope)
        };
        if let Err(e) = &result {
            tracing::debug!(index, command = envelope.command.name(), error = %e, "command refused");
        }
        self.complete(envelope.request_id, result.map_err(WriteError::from));
    }

    fn apply_conf_change(&mut self, entry: &Entry) -> Result<(), StoreError> {
        let decoded = if entry.get_entry_type() == EntryType::EntryConfChange {
            let mut v1 = raft::eraftpb::ConfChange::default();
            v1.merge_from_bytes(&entry.data)
                .map(|_| self.raw.apply_conf_change(&v1))
        } else {
            let mut v2 = ConfChangeV2::default();
            v2.merge_from_bytes(&entry.data)
                .map(|_| self.raw.apply_conf_change(&v2))
        };
        // The proposal's context (the AddMember or RemoveMember envelope) travels in the entry.
        let context = entry.context.to_vec();
        let result = match decoded {
            Ok(result) => result,
            Err(e) => {
                tracing::error!(index = entry.index, error = %e, "unreadable membership change");
                return Ok(());
            }
        };
        match result {
            Ok(cs) => {
                self.store.set_conf_state(&cs)?;
                self.force_snapshot = true;
                self.update_status();
            }
            Err(e) => {
                tracing::warn!(index = entry.index, error = %e, "membership change refused");
                if let Ok(envelope) = Envelope::decode(&context) {
                    let err = WriteError::Refused(ApplyError::invalid("membership", e.to_string()));
                    self.complete(envelope.request_id, Err(err));
                }
                return Ok(());
            }
        }
        if !context.is_empty() {
            self.apply_command(&context, entry.index);
        }
        Ok(())
    }

    fn complete(&self, request_id: u64, result: Result<(), WriteError>) {
        let waiter = self
            .shared
            .waiters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&request_id);
        if let Some(waiter) = waiter {
            let _ = waiter.send(result);
        }
    }

    /// Completes every pending write with `error`.
    fn fail_waiters(&self, error: &WriteError) {
        let waiters: Vec<_> = self
            .shared
            .waiters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .collect();
        for (_, waiter) in waiters {
            let _ = waiter.send(Err(error.clone()));
        }
    }

    fn update_status(&self) {
        let raft = &self.raw.raft;
        let conf = raft.prs().conf().to_conf_state();
        let mut status = self
            .shared
            .status
            .write()
            .unwrap_or_else(|p| p.into_inner());
        status.term = raft.term;
        status.commit_index = raft.raft_log.committed;
        status.applied_index = self.applied;
        status.leader = Some(raft.leader_id).filter(|l| *l != 0);
        status.role = role_name(raft.state).into();
        status.joint = !conf.voters_outgoing.is_empty();
        status.voters = conf.voters;
        status.learners = conf.learners;
    }

    fn maybe_compact(&mut self) -> Result<(), StoreError> {
        let due = self.applied >= self.snapshot_index + self.config.snapshot_entries;
        if !(due || self.force_snapshot && self.applied > self.snapshot_index) {
            return Ok(());
        }
        self.force_snapshot = false;
        let data = {
            let state = self.shared.state.read().unwrap_or_else(|p| p.into_inner());
            state
                .to_snapshot()
                .map_err(|e| StoreError::Invalid(format!("cannot encode the state: {e}")))?
        };
        let conf: ConfState = self.raw.raft.prs().conf().to_conf_state();
        self.store.compact(self.applied, &conf, &data)?;
        self.store.flush()?;
        self.snapshot_index = self.applied;
        tracing::info!(
            index = self.applied,
            bytes = data.len(),
            "compacted the log into a snapshot"
        );
        Ok(())
    }
}

fn role_name(role: StateRole) -> &'static str {
    match role {
        StateRole::Follower => "follower",
        StateRole::Candidate => "candidate",
        StateRole::Leader => "leader",
        StateRole::PreCandidate => "pre-candidate",
    }
}
