//! The replicated cluster state: users, organizations, tokens, repos and Spaces, the flavor catalog, the members.
//!
//! Every coordinator holds the same `State`, built by applying the same commands in the same order. It is plain
//! data (rkyv-archived for snapshots); nothing here reads a clock or a file.

use std::collections::BTreeMap;
use std::fmt;

use rkyv::{Archive, Deserialize, Serialize};
use spacedock_shared::flavor::Flavor;

/// Milliseconds since the Unix epoch, as carried by the command that set it.
pub type Millis = u64;

/// What a token, or an organization member, may do.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Archive, Serialize, Deserialize,
)]
pub enum Role {
    Read,
    Write,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Write => "write",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "read" => Some(Role::Read),
            "write" => Some(Role::Write),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct User {
    pub id: String,
    pub name: String,
    pub fullname: String,
    pub email: Option<String>,
    /// Operators of the cluster: with an admin token they may act on every namespace.
    pub is_admin: bool,
    pub created_at: Millis,
}

#[derive(Debug, Clone, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct Org {
    pub id: String,
    pub name: String,
    pub fullname: String,
    pub created_at: Millis,
    /// Member user name (lowercase) to role.
    pub members: BTreeMap<String, Role>,
}

/// An API token. Only the blake3 hash of its secret is stored.
#[derive(Debug, Clone, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct Token {
    pub id: String,
    /// Owner user name (lowercase).
    pub owner: String,
    pub display_name: String,
    pub role: Role,
    /// Hex blake3 hash of the secret.
    pub secret_hash: String,
    pub created_at: Millis,
    pub expires_at: Option<Millis>,
    pub revoked: bool,
}

/// What a join token lets a node become.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub enum NodeRole {
    Coordinator,
    Agent,
    Builder,
}

impl NodeRole {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeRole::Coordinator => "coordinator",
            NodeRole::Agent => "agent",
            NodeRole::Builder => "builder",
        }
    }

    pub fn parse(s: &str) -> Option<NodeRole> {
        match s {
            "coordinator" => Some(NodeRole::Coordinator),
            "agent" => Some(NodeRole::Agent),
            "builder" => Some(NodeRole::Builder),
            _ => None,
        }
    }
}

/// A token that lets a new node join; only its secret's hash is stored.
#[derive(Debug, Clone, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct JoinToken {
    pub id: String,
    pub role: NodeRole,
    pub secret_hash: String,
    pub created_at: Millis,
    pub expires_at: Millis,
    pub revoked: bool,
}

/// Whether a node takes work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub enum NodeState {
    Ready,
    /// Missed heartbeats past the TTL; its allocations are lost.
    Down,
    /// Ineligible for new work; its workloads move off.
    Draining,
}

impl NodeState {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Ready => "ready",
            NodeState::Down => "down",
            NodeState::Draining => "draining",
        }
    }
}

/// A worker node (an agent), by its certificate name.
#[derive(Debug, Clone, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct Node {
    pub name: String,
    pub inventory: spacedock_shared::wire::Inventory,
    pub state: NodeState,
    pub registered_at: Millis,
    pub updated_at: Millis,
}

/// The three kinds of repo the Hub has.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Archive, Serialize, Deserialize,
)]
pub enum RepoKind {
    Model,
    Dataset,
    Space,
}

impl RepoKind {
    /// `model`, `dataset`, `space`, as in API bodies.
    pub fn as_str(self) -> &'static str {
        match self {
            RepoKind::Model => "model",
            RepoKind::Dataset => "dataset",
            RepoKind::Space => "space",
        }
    }

    pub fn parse(s: &str) -> Option<RepoKind> {
        match s {
            "model" => Some(RepoKind::Model),
            "dataset" => Some(RepoKind::Dataset),
            "space" => Some(RepoKind::Space),
            _ => None,
        }
    }

    /// URL prefix of the repo's web and git paths: `spaces/`, `datasets/`, or nothing for models.
    pub fn url_prefix(self) -> &'static str {
        match self {
            RepoKind::Model => "",
            RepoKind::Dataset => "datasets/",
            RepoKind::Space => "spaces/",
        }
    }
}

/// A Space's lifecycle stage, spelled as the Hub spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub enum Stage {
    NoAppFile,
    ConfigError,
    Building,
    BuildError,
    AppStarting,
    Running,
    RunningBuilding,
    RunningAppStarting,
    RuntimeError,
    Sleeping,
    Stopped,
    Paused,
    Deleting,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::NoAppFile => "NO_APP_FILE",
            Stage::ConfigError => "CONFIG_ERROR",
            Stage::Building => "BUILDING",
            Stage::BuildError => "BUILD_ERROR",
            Stage::AppStarting => "APP_STARTING",
            Stage::Running => "RUNNING",
            Stage::RunningBuilding => "RUNNING_BUILDING",
            Stage::RunningAppStarting => "RUNNING_APP_STARTING",
            Stage::RuntimeError => "RUNTIME_ERROR",
            Stage::Sleeping => "SLEEPING",
            Stage::Stopped => "STOPPED",
            Stage::Paused => "PAUSED",
            Stage::Deleting => "DELETING",
        }
    }
}

/// A public Space variable.
#[derive(Debug, Clone, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct Variable {
    pub value: String,
    pub description: Option<String>,
    pub updated_at: Millis,
}

/// A secret's value. Its `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct SecretValue(String);

impl SecretValue {
    pub fn new(value: String) -> SecretValue {
        SecretValue(value)
    }

    /// The value, for the Space's own container only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A write-only Space secret.
#[derive(Debug, Clone, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct Secret {
    pub value: SecretValue,
    pub description: Option<String>,
    pub updated_at: Millis,
}

/// What a Space repo adds to a repo.
#[derive(Debug, Clone, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct SpaceState {
    /// `gradio`, `streamlit`, `docker` or `static`.
    pub sdk: String,
    pub hardware_requested: String,
    pub hardware_current: Option<String>,
    /// Seconds idle before sleeping; `None` is the flavor's default, `-1` never.
    pub sleep_time: Option<i64>,
    pub stage: Stage,
    pub error_message: Option<String>,
    pub variables: BTreeMap<String, Variable>,
    pub secrets: BTreeMap<String, Secret>,
    /// The DNS label the Space is served under.
    pub subdomain: String,
    pub duplicated_from: Option<String>,
    /// Bumped by restarts; a factory restart also clears the build cache for the Space.
    pub restarts: u64,
    pub factory_restarts: u64,
    /// The image the Space runs, when it runs a stored image (set by `set-image`, later by the builder).
    pub image: Option<SpaceImage>,
    /// The build of its newest commit, while it is not done (an id in `State.builds`).
    pub build: Option<String>,
    /// For a static Space served from its repo: the file served at `/`.
    pub app_file: Option<String>,
    /// Headers the ingress adds to the app's responses (`custom_headers`, `disable_embedding`), from the README
    /// of its newest commit.
    pub headers: Vec<(String, String)>,
}

/// How long a cpu-basic Space may idle before it sleeps, unless it says otherwise (the Hub's 48 hours).
pub const CPU_BASIC_SLEEP_SECONDS: i64 = 48 * 3600;

impl SpaceState {
    /// The Space's variables and its secrets, as handed to its containers and builds.
    pub fn env_vars(
        &self,
    ) -> (
        Vec<spacedock_shared::wire::EnvVar>,
        Vec<spacedock_shared::wire::EnvVar>,
    ) {
        let env = |key: &String, value: &str| spacedock_shared::wire::EnvVar {
            key: key.clone(),
            value: value.to_owned(),
        };
        (
            self.variables
                .iter()
                .map(|(k, v)| env(k, &v.value))
                .collect(),
            self.secrets
                .iter()
                .map(|(k, s)| env(k, s.value.expose()))
                .collect(),
        )
    }

    /// Seconds idle before the Space sleeps: its own sleep time, cpu-basic's default, or `None` for never.
    pub fn effective_sleep_time(&self) -> Option<i64> {
        match self.sleep_time {
            Some(-1) => None,
            Some(s) => Some(s),
            None if self.hardware_requested == spacedock_shared::flavor::DEFAULT_FLAVOR => {
                Some(CPU_BASIC_SLEEP_SECONDS)
            }
            None => None,
        }
    }
}

/// What a Space runs: an image from the cluster's store and the port its app answers on.
#[derive(Debug, Clone, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct SpaceImage {
    /// The image's name in the store, as the user gave it.
    pub name: String,
    /// The image id (config digest) the name pointed to when it was set.
    pub id: String,
    pub port: u16,
    /// Seconds the app has to answer on its port after it starts.
    pub startup_timeout_s: u64,
}

/// An image in the cluster's store: its run config and uncompressed layers (blobs in the blob store).
#[derive(Debug, Clone, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct Image {
    pub name: String,
    /// `sha256:` digest of the image's OCI config.
    pub id: String,
    /// `sha256:` digest of its OCI image manifest (`spacedock_shared::image::oci_manifest`), a blob in the store.
    pub manifest: String,
    pub config: spacedock_shared::wire::ImageConfig,
    pub layers: Vec<spacedock_shared::wire::Layer>,
    pub created_at: Millis,
}

impl Image {
    pub fn size(&self) -> u64 {
        self.layers.iter().map(|l| l.size).sum()
    }
}

/// A Space placed on a node.
#[derive(Debug, Clone, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct Allocation {
    pub id: String,
    /// The Space's repo key.
    pub space: String,
    pub node: String,
    pub flavor: String,
    pub image_id: String,
    /// UUIDs of the node's GPUs it holds.
    pub gpus: Vec<String>,
    /// The Space's `restarts` when placed: a restart asks for a new allocation.
    pub generation: u64,
    pub phase: AllocationPhase,
    pub message: String,
    pub created_at: Millis,
    pub updated_at: Millis,
    /// Since when it is billed: set by the first report that it is starting or running.
    pub billable_since: Option<Millis>,
}

/// One Space's minute on the usage ledger.
#[derive(Debug, Clone, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct UsageMinute {
    /// The Space's repo uid (stable across renames) and its id and namespace when recorded.
    pub space_uid: String,
    pub space_id: String,
    pub namespace: String,
    pub flavor: String,
    /// Minutes since the epoch.
    pub minute: u64,
    pub price_per_hour: spacedock_shared::money::MicroUsd,
}

pub use spacedock_shared::wire::AllocationPhase;

/// A model, dataset or Space repo.
#[derive(Debug, Clone, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct Repo {
    /// Opaque id (hex), stable across renames.
    pub uid: String,
    pub kind: RepoKind,
    /// `namespace/name` as written at creation or the last move.
    pub id: String,
    pub private: bool,
    pub created_at: Millis,
    pub updated_at: Millis,
    /// Head commit of the main branch, once the repo has one.
    pub sha: Option<String>,
    pub space: Option<SpaceState>,
    pub git: RepoGit,
}

/// A repo's git refs and where their objects are: the Raft state holds refs and digests, the blob store the
/// objects.
#[derive(Debug, Clone, Default, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct RepoGit {
    /// Full ref name (`refs/heads/main`) to commit id (sha1 hex).
    pub refs: BTreeMap<String, String>,
    /// `sha256:` digests of the packs in the blob store that together hold every object, oldest first.
    pub packs: Vec<String>,
    /// Ref updates that were not fast-forwards, newest last (the last `MAX_REWRITES`).
    pub rewrites: Vec<Rewrite>,
    /// LFS objects uploaded to this repo (sha256 hex to size): only these may be committed or downloaded
    /// through it, so knowing an object's id is not enough to reach another repo's object.
    pub lfs: BTreeMap<String, u64>,
}

/// How many history rewrites a repo remembers.
pub const MAX_REWRITES: usize = 100;

/// A push or commit that moved a ref to a commit that does not contain its old one.
#[derive(Debug, Clone, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct Rewrite {
    pub ref_name: String,
    pub old: String,
    pub new: String,
    /// The user whose token pushed it.
    pub by: String,
    pub at: Millis,
}

/// A build of one Space commit: queued, taken by a builder under a lease, then done one way or another.
#[derive(Debug, Clone, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct Build {
    pub id: String,
    /// The Space's repo key.
    pub space: String,
    pub commit: String,
    pub sdk: String,
    /// Build without the cache (a factory restart).
    pub factory: bool,
    pub state: BuildState,
    /// Times a builder took it.
    pub attempts: u32,
    pub created_at: Millis,
    pub updated_at: Millis,
}

#[derive(Debug, Clone, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub enum BuildState {
    Queued,
    /// Taken by `builder` until `lease_until` (renewed while it works; another builder may take it after).
    Running {
        builder: String,
        lease_until: Millis,
    },
    /// The image (a name in `State.images`) the Space now runs.
    Succeeded {
        image: String,
    },
    /// The failing step and why.
    Failed {
        step: String,
        message: String,
    },
    /// A newer commit of the Space came first.
    Superseded,
}

impl BuildState {
    pub fn is_done(&self) -> bool {
        matches!(
            self,
            BuildState::Succeeded { .. } | BuildState::Failed { .. } | BuildState::Superseded
        )
    }
}

impl Repo {
    pub fn namespace(&self) -> &str {
        self.id.split_once('/').map_or("", |(ns, _)| ns)
    }
}

/// A coordinator in the Raft group, as recorded when it was added.
#[derive(Debug, Clone, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct Member {
    pub id: u64,
    pub api_url: String,
    pub quic_addr: String,
}

/// The whole replicated state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct State {
    /// Set by the first command of a cluster.
    pub cluster_id: Option<String>,
    /// Users by lowercase name.
    pub users: BTreeMap<String, User>,
    /// Organizations by lowercase name (users and organizations share one namespace).
    pub orgs: BTreeMap<String, Org>,
    /// Tokens by secret hash.
    pub tokens: BTreeMap<String, Token>,
    /// Repos by `repo_key`.
    pub repos: BTreeMap<String, Repo>,
    /// Subdomain to the repo key of the Space that holds it.
    pub subdomains: BTreeMap<String, String>,
    /// The flavor catalog in force.
    pub flavors: Vec<Flavor>,
    /// Coordinators by Raft id.
    pub members: BTreeMap<u64, Member>,
    /// Join tokens by secret hash.
    pub join_tokens: BTreeMap<String, JoinToken>,
    /// Worker nodes by name.
    pub nodes: BTreeMap<String, Node>,
    /// Stored images by name.
    pub images: BTreeMap<String, Image>,
    /// Allocations by id.
    pub allocations: BTreeMap<String, Allocation>,
    /// The usage ledger by `SPACE_UID/MINUTE`.
    pub usage: BTreeMap<String, UsageMinute>,
    /// Builds by id.
    pub builds: BTreeMap<String, Build>,
}

/// The key a repo is stored under: kind and case-folded id, so `User/App` and `user/app` are one repo.
pub fn repo_key(kind: RepoKind, id: &str) -> String {
    format!("{}:{}", kind.as_str(), id.to_ascii_lowercase())
}

impl State {
    pub fn repo(&self, kind: RepoKind, id: &str) -> Option<&Repo> {
        self.repos.get(&repo_key(kind, id))
    }

    pub fn user(&self, name: &str) -> Option<&User> {
        self.users.get(&name.to_ascii_lowercase())
    }

    pub fn org(&self, name: &str) -> Option<&Org> {
        self.orgs.get(&name.to_ascii_lowercase())
    }

    /// Organizations the user belongs to.
    pub fn orgs_of<'a>(&'a self, user: &'a str) -> impl Iterator<Item = (&'a Org, Role)> + 'a {
        let user = user.to_ascii_lowercase();
        self.orgs
            .values()
            .filter_map(move |o| o.members.get(&user).map(|r| (o, *r)))
    }

    /// Every blob the state refers to (`sha256:` digests): repos' packs and LFS objects, images' manifests,
    /// configs and layers. The rest of a blob store is garbage once it is old enough not to be an upload in flight.
    pub fn referenced_blobs(&self) -> std::collections::BTreeSet<String> {
        let mut keep = std::collections::BTreeSet::new();
        for repo in self.repos.values() {
            keep.extend(repo.git.packs.iter().cloned());
            keep.extend(repo.git.lfs.keys().map(|oid| format!("sha256:{oid}")));
        }
        for image in self.images.values() {
            keep.insert(image.id.clone());
            keep.insert(image.manifest.clone());
            keep.extend(image.layers.iter().map(|l| l.digest.clone()));
        }
        keep
    }

    /// Encodes the state for a Raft snapshot.
    pub fn to_snapshot(&self) -> Result<Vec<u8>, String> {
        rkyv::to_bytes::<rkyv::rancor::Error>(self)
            .map(|b| b.to_vec())
            .map_err(|e| e.to_string())
    }

    /// Decodes a snapshot, validating it.
    pub fn from_snapshot(bytes: &[u8]) -> Result<State, String> {
        let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(bytes.len());
        aligned.extend_from_slice(bytes);
        rkyv::from_bytes::<State, rkyv::rancor::Error>(&aligned).map_err(|e| e.to_string())
    }
}
