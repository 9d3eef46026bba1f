//! Commands: the only way the replicated state changes. Each Raft entry carries one `Envelope`.
//!
//! The `Command` enum is append-only: new variants go at the end and existing ones never change shape, so every
//! coordinator can read every entry ever written. `Envelope::version` says which encoding wrote it.
//! Time, ids and secrets' hashes are decided by the proposer and travel in the command, so applying is
//! deterministic.

use rkyv::{Archive, Deserialize, Serialize};
use spacedock_shared::flavor::Flavor;

use crate::state::{
    Allocation, AllocationPhase, Image, Member, Millis, NodeRole, NodeState, RepoKind, Role,
    UsageMinute,
};

/// Version of the envelope encoding this build writes.
pub const ENVELOPE_VERSION: u16 = 1;

/// One Raft entry's payload.
#[derive(Debug, Clone, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct Envelope {
    pub version: u16,
    /// The proposer's clock when it proposed, in ms since the epoch.
    pub at: Millis,
    /// Chosen by the proposer, to find the waiting request when the entry is applied.
    pub request_id: u64,
    /// Who asks; `None` for the cluster's own commands (bootstrap, membership, scheduler).
    pub actor: Option<Actor>,
    pub command: Command,
}

/// The caller behind a command, re-checked when it is applied (a token revoked in between is refused).
#[derive(Debug, Clone, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct Actor {
    /// Hex blake3 hash of the token the request carried.
    pub token_hash: String,
}

/// A token to create; the secret itself never enters the log.
#[derive(Debug, Clone, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct NewToken {
    pub id: String,
    pub owner: String,
    pub display_name: String,
    pub role: Role,
    pub secret_hash: String,
    pub expires_at: Option<Millis>,
}

/// One step of a scheduler pass (see `Command::Schedule`).
#[derive(Debug, Clone, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub enum ScheduleStep {
    Place { allocation: Allocation },
    Remove { id: String, reason: String },
    WaitForCapacity { space: String, message: String },
}

impl From<ScheduleStep> for Command {
    fn from(step: ScheduleStep) -> Command {
        match step {
            ScheduleStep::Place { allocation } => Command::PlaceAllocation { allocation },
            ScheduleStep::Remove { id, reason } => Command::RemoveAllocation { id, reason },
            ScheduleStep::WaitForCapacity { space, message } => {
                Command::WaitForCapacity { space, message }
            }
        }
    }
}

/// A key, value and description for a variable or secret.
#[derive(Debug, Clone, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct KeyValue {
    pub key: String,
    pub value: String,
    pub description: Option<String>,
}

/// What a new Space starts with.
#[derive(Debug, Clone, PartialEq, Eq, Default, Archive, Serialize, Deserialize)]
pub struct SpaceSpec {
    pub sdk: String,
    pub hardware: Option<String>,
    pub sleep_time: Option<i64>,
    pub secrets: Vec<KeyValue>,
    pub variables: Vec<KeyValue>,
}

/// Every change to the cluster state. Append-only.
#[derive(Debug, Clone, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub enum Command {
    /// First entry of a new cluster: its id, first member, catalog, and the operator with an admin token.
    Bootstrap {
        cluster_id: String,
        member: Member,
        flavors: Vec<Flavor>,
        admin_id: String,
        admin_token: NewToken,
    },
    CreateUser {
        id: String,
        name: String,
        fullname: String,
        email: Option<String>,
        is_admin: bool,
    },
    /// Creates an organization whose first admin is the actor's user.
    CreateOrg {
        id: String,
        name: String,
        fullname: String,
    },
    /// Adds, changes (`Some`) or removes (`None`) an organization member.
    SetOrgMember {
        org: String,
        user: String,
        role: Option<Role>,
    },
    /// Creates a token for `owner` (the actor's own user, or anyone for cluster admins).
    CreateToken {
        token: NewToken,
    },
    RevokeToken {
        id: String,
    },
    CreateRepo {
        uid: String,
        kind: RepoKind,
        id: String,
        private: bool,
        space: Option<SpaceSpec>,
    },
    DeleteRepo {
        kind: RepoKind,
        id: String,
    },
    MoveRepo {
        kind: RepoKind,
        from: String,
        to: String,
    },
    SetVisibility {
        kind: RepoKind,
        id: String,
        private: bool,
    },
    RequestHardware {
        id: String,
        flavor: String,
        sleep_time: Option<i64>,
    },
    SetSleepTime {
        id: String,
        seconds: i64,
    },
    Pause {
        id: String,
    },
    Restart {
        id: String,
        factory: bool,
    },
    SetSecret {
        id: String,
        secret: KeyValue,
    },
    DeleteSecret {
        id: String,
        key: String,
    },
    SetVariable {
        id: String,
        variable: KeyValue,
    },
    DeleteVariable {
        id: String,
        key: String,
    },
    /// Copies a Space: its variables come along, its secrets only if given here.
    DuplicateSpace {
        uid: String,
        from: String,
        to: String,
        private: Option<bool>,
        spec: SpaceSpec,
    },
    SetFlavors {
        flavors: Vec<Flavor>,
    },
    AddMember {
        member: Member,
    },
    RemoveMember {
        id: u64,
    },
    /// Needs a cluster admin token.
    CreateJoinToken {
        id: String,
        role: NodeRole,
        secret_hash: String,
        expires_at: Millis,
    },
    RevokeJoinToken {
        id: String,
    },
    /// An agent connected with this inventory (issued by the coordinator it connected to); the node is ready.
    RegisterNode {
        inventory: spacedock_shared::wire::Inventory,
    },
    /// Issued by the leader's liveness check (down), or by an operator (draining, ready).
    SetNodeState {
        name: String,
        state: NodeState,
    },
    /// Records an image whose blobs the store holds (the API checked them); replaces one of the same name.
    PutImage {
        image: Image,
    },
    /// Makes a Space run a stored image.
    SetSpaceImage {
        id: String,
        name: String,
        port: u16,
        startup_timeout_s: u64,
    },
    /// The leader's scheduler places a Space on a node (re-checked against the state when applied).
    PlaceAllocation {
        allocation: Allocation,
    },
    /// The leader's scheduler takes an allocation away (its node is gone, the Space paused or changed).
    RemoveAllocation {
        id: String,
        reason: String,
    },
    /// The scheduler found no node for a Space (repo key): the Space says so.
    WaitForCapacity {
        space: String,
        message: String,
    },
    /// The leader's meter puts completed minutes on the usage ledger (entries already there are skipped).
    RecordUsage {
        entries: Vec<UsageMinute>,
    },
    /// One scheduler pass in one entry: each of `steps` (placements, removals, capacity notes) is applied on
    /// its own, and one the state has outrun is skipped (the next pass sees the new state).
    Schedule {
        steps: Vec<ScheduleStep>,
    },
    /// The leader puts a Space (repo key) that was idle past its sleep time to sleep; its allocation goes.
    Sleep {
        space: String,
    },
    /// A request reached a sleeping Space (repo key): it starts again.
    Wake {
        space: String,
    },
    /// An agent reports where one of its allocations is.
    ReportAllocation {
        id: String,
        node: String,
        phase: AllocationPhase,
        message: String,
    },
    /// A push or commit: every ref moves from its `old` or none does. The proposer has stored `pack` (if any)
    /// on a quorum and checked that the new commits' objects are in the repo's packs.
    UpdateRefs {
        kind: RepoKind,
        id: String,
        updates: Vec<RefUpdate>,
        pack: Option<String>,
        /// Refs whose update is not a fast-forward (the proposer checked), recorded as rewrites.
        rewrites: Vec<String>,
        /// For a Space whose main branch gets a new commit: what that commit means.
        space: Option<SpaceCommit>,
    },
    /// LFS objects whose bytes a coordinator received for this repo (through a signed upload URL) and stored
    /// on a quorum. Proposed by the cluster.
    AddLfsObjects {
        kind: RepoKind,
        id: String,
        /// sha256 hex and size.
        objects: Vec<(String, u64)>,
    },
    /// A builder takes a queued build (or one whose lease ran out). Proposed by the cluster for the builder.
    ClaimBuild {
        id: String,
        builder: String,
        lease_until: Millis,
    },
    /// The builder still works on it.
    RenewBuild {
        id: String,
        builder: String,
        lease_until: Millis,
    },
    /// The builder is done with it.
    FinishBuild {
        id: String,
        builder: String,
        outcome: BuildOutcome,
    },
    /// The cluster gives up on a build its builders kept losing.
    AbandonBuild {
        id: String,
        reason: String,
    },
    /// The cluster replaced some of a repo's packs by one holding every object its refs reach (compaction).
    CompactPacks {
        kind: RepoKind,
        id: String,
        replaced: Vec<String>,
        pack: String,
    },
}

/// How a build ended.
#[derive(Debug, Clone, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub enum BuildOutcome {
    /// The image (stored with `PutImage` first, or `built` here) and how to run it.
    Succeeded {
        image: String,
        port: u16,
        startup_timeout_s: u64,
        /// The image the build made, recorded with the result (its name must be `image`, under
        /// `wire::BUILT_IMAGE_PREFIX`); its blobs were checked by the proposer.
        built: Option<Image>,
    },
    Failed {
        step: String,
        message: String,
    },
}

/// One ref's move; `None` is absent (creation or deletion).
#[derive(Debug, Clone, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct RefUpdate {
    pub name: String,
    pub old: Option<String>,
    pub new: Option<String>,
}

/// What a new commit on a Space's main branch means, read from its README.md and files by the proposer.
#[derive(Debug, Clone, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub enum SpaceCommit {
    /// Queue build `build` (an id the proposer chose) of the commit.
    Build {
        sdk: String,
        build: String,
        /// Response headers for the app (see `SpaceState::headers`).
        headers: Vec<(String, String)>,
    },
    ConfigError {
        message: String,
    },
    NoAppFile {
        sdk: String,
        message: String,
    },
    /// A static Space with nothing to build: the ingress serves the commit's files, `app_file` at `/`.
    Serve {
        app_file: String,
        headers: Vec<(String, String)>,
    },
}

impl Envelope {
    pub fn encode(&self) -> Result<Vec<u8>, String> {
        rkyv::to_bytes::<rkyv::rancor::Error>(self)
            .map(|b| b.to_vec())
            .map_err(|e| e.to_string())
    }

    /// Decodes and validates an entry's payload.
    pub fn decode(bytes: &[u8]) -> Result<Envelope, String> {
        let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(bytes.len());
        aligned.extend_from_slice(bytes);
        let envelope = rkyv::from_bytes::<Envelope, rkyv::rancor::Error>(&aligned)
            .map_err(|e| e.to_string())?;
        if envelope.version > ENVELOPE_VERSION {
            return Err(format!(
                "entry written with envelope version {}, this build reads up to {ENVELOPE_VERSION}",
                envelope.version
            ));
        }
        Ok(envelope)
    }
}

impl Command {
    /// The command's name, for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Bootstrap { .. } => "Bootstrap",
            Command::CreateUser { .. } => "CreateUser",
            Command::CreateOrg { .. } => "CreateOrg",
            Command::SetOrgMember { .. } => "SetOrgMember",
            Command::CreateToken { .. } => "CreateToken",
            Command::RevokeToken { .. } => "RevokeToken",
            Command::CreateRepo { .. } => "CreateRepo",
            Command::DeleteRepo { .. } => "DeleteRepo",
            Command::MoveRepo { .. } => "MoveRepo",
            Command::SetVisibility { .. } => "SetVisibility",
            Command::RequestHardware { .. } => "RequestHardware",
            Command::SetSleepTime { .. } => "SetSleepTime",
            Command::Pause { .. } => "Pause",
            Command::Restart { .. } => "Restart",
            Command::SetSecret { .. } => "SetSecret",
            Command::DeleteSecret { .. } => "DeleteSecret",
            Command::SetVariable { .. } => "SetVariable",
            Command::DeleteVariable { .. } => "DeleteVariable",
            Command::DuplicateSpace { .. } => "DuplicateSpace",
            Command::SetFlavors { .. } => "SetFlavors",
            Command::AddMember { .. } => "AddMember",
            Command::RemoveMember { .. } => "RemoveMember",
            Command::CreateJoinToken { .. } => "CreateJoinToken",
            Command::RevokeJoinToken { .. } => "RevokeJoinToken",
            Command::RegisterNode { .. } => "RegisterNode",
            Command::SetNodeState { .. } => "SetNodeState",
            Command::PutImage { .. } => "PutImage",
            Command::SetSpaceImage { .. } => "SetSpaceImage",
            Command::PlaceAllocation { .. } => "PlaceAllocation",
            Command::RemoveAllocation { .. } => "RemoveAllocation",
            Command::WaitForCapacity { .. } => "WaitForCapacity",
            Command::RecordUsage { .. } => "RecordUsage",
            Command::Schedule { .. } => "Schedule",
            Command::Sleep { .. } => "Sleep",
            Command::Wake { .. } => "Wake",
            Command::ReportAllocation { .. } => "ReportAllocation",
            Command::UpdateRefs { .. } => "UpdateRefs",
            Command::AddLfsObjects { .. } => "AddLfsObjects",
            Command::ClaimBuild { .. } => "ClaimBuild",
            Command::RenewBuild { .. } => "RenewBuild",
            Command::FinishBuild { .. } => "FinishBuild",
            Command::AbandonBuild { .. } => "AbandonBuild",
            Command::CompactPacks { .. } => "CompactPacks",
        }
    }
}
