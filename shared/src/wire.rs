//! The wire protocol between roles: versioned rkyv messages in length-prefixed frames, sans-IO.
//!
//! A frame is `[length: u32 BE][kind: u16 BE][payload]`, where `length` counts the kind and the payload and never
//! exceeds the reader's maximum. The payload is the rkyv archive of the message struct for that kind; it is
//! validated (rkyv's checked access) before use, so untrusted bytes give an error, never a panic.
//! A connection opens with `Hello` from the dialer and `Welcome` (or `Refused`) from the listener, which picks the
//! highest protocol version both support. Kinds are append-only: a new message gets a new number, and a reader
//! that does not know a kind answers `UnknownKind` instead of guessing.

use rkyv::rancor;
use rkyv::util::AlignedVec;

/// The newest protocol version this build speaks.
pub const PROTOCOL_VERSION: u16 = 1;
/// The oldest protocol version this build still speaks.
pub const MIN_PROTOCOL_VERSION: u16 = 1;
/// Bytes before the payload: length (4) and kind (2).
pub const HEADER_BYTES: usize = 6;
/// Default largest frame (length field) a reader accepts.
pub const DEFAULT_MAX_FRAME_BYTES: u32 = 16 << 20;

/// Why bytes could not be read or written as messages.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge { len: u64, max: u32 },
    #[error("frame length {len} is too short to hold a message kind")]
    FrameTooShort { len: u32 },
    #[error("unknown message kind {kind}")]
    UnknownKind { kind: u16 },
    #[error("malformed {kind} message: {reason}")]
    Malformed { kind: &'static str, reason: String },
    #[error(
        "no common protocol version: we speak {ours_min}..={ours_max}, the peer {theirs_min}..={theirs_max}"
    )]
    NoCommonVersion {
        ours_min: u16,
        ours_max: u16,
        theirs_min: u16,
        theirs_max: u16,
    },
    #[error("could not encode {kind} message: {reason}")]
    Encode { kind: &'static str, reason: String },
    #[error("stream ended inside a frame ({buffered} bytes buffered)")]
    Truncated { buffered: usize },
}

/// What a peer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub enum Role {
    Coordinator,
    Agent,
    Builder,
    Cli,
}

/// Stable codes for refusals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub enum RefuseCode {
    /// No protocol version in common.
    VersionMismatch,
    /// The credentials were missing, wrong, expired or revoked.
    Unauthorized,
    /// The peer sent something this side cannot accept.
    BadRequest,
    /// This coordinator is not the leader; the message names the leader where known.
    NotLeader,
}

/// First message on a connection, from the dialer.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Hello {
    pub min_version: u16,
    pub max_version: u16,
    pub role: Role,
    /// The dialer's software version (`spacedock-agent 0.1.0`), for logs.
    pub software: String,
    /// The node or process name, for logs.
    pub name: String,
}

/// The listener's answer to an acceptable `Hello`.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Welcome {
    /// The protocol version both sides use from here on.
    pub version: u16,
    pub software: String,
}

/// The listener's answer to an unacceptable message; the connection closes after it.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Refused {
    pub code: RefuseCode,
    pub message: String,
}

/// Liveness probe; the peer answers with `HeartbeatAck` carrying the same `seq`.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Heartbeat {
    pub seq: u64,
}

/// Answer to `Heartbeat`.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct HeartbeatAck {
    pub seq: u64,
}

/// Raft messages from one coordinator to another, batched (each is a raft-rs protobuf `Message`).
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct RaftBatch {
    pub messages: Vec<Vec<u8>>,
}

/// Asks a coordinator for its own Raft status.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct StatusRequest {}

/// A coordinator's own Raft status.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct StatusReply {
    pub id: u64,
    /// `leader`, `follower`, `candidate` or `pre-candidate`.
    pub role: String,
    pub term: u64,
    /// The leader this node knows, 0 for none.
    pub leader: u64,
    pub commit_index: u64,
    pub applied_index: u64,
}

/// A node asking to join the cluster with a join token (on a connection without a client certificate).
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct JoinRequest {
    /// The whole join token as printed by `spacedock cluster join-token create`.
    pub token: String,
    pub role: Role,
    /// Coordinators choose their Raft id; agents and builders send 0.
    pub node_id: u64,
    pub name: String,
    /// For coordinators: where the joiner's API and QUIC endpoint will be reached.
    pub api_url: String,
    pub quic_addr: String,
}

/// The cluster's answer to an accepted `JoinRequest`: the joiner's certificate and what it needs to start.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct JoinReply {
    pub cluster_id: String,
    pub node_id: u64,
    /// The joiner's certificate followed by the CA's, and its key (PEM).
    pub chain_pem: String,
    pub key_pem: String,
    pub ca_pem: String,
    /// The CA's key, sent to coordinators only (they sign certificates for later joiners).
    pub ca_key_pem: String,
    /// The coordinators as the cluster knows them, so a new one can reach them before it has any state.
    pub members: Vec<MemberAddr>,
}

/// A coordinator's Raft id and QUIC address.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct MemberAddr {
    pub id: u64,
    pub quic_addr: String,
}

/// A joining coordinator's word that it is running and can be added to the Raft group.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct JoinReady {}

/// The joining coordinator is now a voter.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Joined {}

/// One GPU as NVML reports it.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct GpuInfo {
    pub index: u32,
    pub uuid: String,
    pub name: String,
    pub memory_total_bytes: u64,
    /// `enabled`, `disabled` or empty when NVML does not say.
    pub mig_mode: String,
    /// UUIDs of MIG devices when MIG is enabled.
    pub mig_devices: Vec<String>,
    /// `9.0` for an H100.
    pub compute_capability: String,
    pub pci_bus_id: String,
    pub power_limit_milliwatts: u32,
    /// Volatile uncorrected ECC errors, when NVML reports them.
    pub ecc_uncorrected: Option<u64>,
    /// Critical XID errors NVML reported for this GPU since the agent started, and the last one's code.
    pub xid_errors: u64,
    pub last_xid: Option<u64>,
}

/// A key and value (node labels).
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Label {
    pub key: String,
    pub value: String,
}

/// What an agent's node has, sent on connect and refreshed periodically.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Inventory {
    pub name: String,
    pub labels: Vec<Label>,
    pub cpu_cores: u32,
    pub memory_bytes: u64,
    /// Free bytes on the file system holding the agent's data dir.
    pub disk_free_bytes: u64,
    pub kernel: String,
    /// Empty until the agent talks to containerd.
    pub containerd_version: String,
    pub driver_version: String,
    pub cuda_version: String,
    pub gpus: Vec<GpuInfo>,
    /// Why there are no GPUs, when NVML could not be used (no driver): one line for operators.
    pub gpu_note: String,
}

/// The coordinator accepted an agent's inventory: the node's name in the cluster.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Registered {
    pub node: String,
}

/// Asks for a blob's bytes from `offset` to its end (resuming a cut transfer). The answer is a `BlobHeader`,
/// then the bytes, raw. An `offset` of `u64::MAX` (`probe`) asks only whether the blob is there: the header
/// comes alone.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct BlobRequest {
    /// `sha256:HEX`.
    pub digest: String,
    pub offset: u64,
}

impl BlobRequest {
    /// Asks whether the cluster holds `digest`, with no bytes.
    pub fn probe(digest: &str) -> BlobRequest {
        BlobRequest {
            digest: digest.to_owned(),
            offset: u64::MAX,
        }
    }

    pub fn is_probe(&self) -> bool {
        self.offset == u64::MAX
    }

    /// How many bytes answer this request for a blob of `size` bytes.
    pub fn bytes_of(&self, size: u64) -> u64 {
        size.saturating_sub(self.offset)
    }
}

/// Whether the blob is there and its whole size; `message` says why not. When found, the `size - offset`
/// requested bytes follow, raw.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct BlobHeader {
    pub found: bool,
    pub size: u64,
    pub message: String,
}

/// A coordinator replicating a blob to another: `size` raw bytes follow, the receiver answers `BlobStored`.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct BlobPut {
    pub digest: String,
    pub size: u64,
}

/// The receiver of a `BlobPut` has the blob durably (`ok`), or why not.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct BlobStored {
    pub ok: bool,
    pub message: String,
}

/// One uncompressed layer tar of an image: its digest is also its diff id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Layer {
    pub digest: String,
    pub size: u64,
}

/// What an image says about running it (from its OCI config).
#[derive(
    Debug, Clone, Default, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
pub struct ImageConfig {
    /// `KEY=value`.
    pub env: Vec<String>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub working_dir: String,
}

/// A name and value handed to a container.
#[derive(Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct EnvVar {
    pub key: String,
    pub value: String,
}

/// Secrets travel as `EnvVar`s; their values never reach a log through `Debug`.
impl std::fmt::Debug for EnvVar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}=<{} bytes>", self.key, self.value.len())
    }
}

/// One allocation the leader wants running on the agent's node.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Assignment {
    pub id: String,
    /// `namespace/name`.
    pub space_id: String,
    pub title: String,
    /// `SUBDOMAIN.APPS_DOMAIN`.
    pub host: String,
    pub creator_user_id: String,
    /// The flavor's name; the agent knows the catalog's shapes through `vcpu`, `memory_gib` and GPUs.
    pub flavor: String,
    pub vcpu: u32,
    pub memory_gib: u32,
    /// UUIDs of the node's GPUs assigned to this allocation.
    pub gpus: Vec<String>,
    pub layers: Vec<Layer>,
    pub config: ImageConfig,
    pub port: u16,
    pub startup_timeout_s: u64,
    pub variables: Vec<EnvVar>,
    pub secrets: Vec<EnvVar>,
}

/// The whole set of allocations the leader wants on this node; sent whenever it changes.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Assignments {
    pub allocations: Vec<Assignment>,
}

/// Where an allocation is on its node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub enum AllocationPhase {
    /// Fetching and unpacking the image.
    Pulling,
    /// Started; the app does not answer on its port yet.
    Starting,
    /// The app answers HTTP on its port.
    Running,
    /// It exited, failed its checks or could not start; `message` says why.
    Failed,
}

/// An agent's report about one of its allocations.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct AllocationStatus {
    pub id: String,
    pub phase: AllocationPhase,
    pub message: String,
}

/// The coordinator's ingress asks the agent for a byte pipe to an allocation's app port; after `Ready` the
/// stream carries raw bytes both ways.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct TunnelOpen {
    pub allocation: String,
}

/// The answer to `TunnelOpen` or `LogFollow`: raw bytes follow when `ok`.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Ready {
    pub ok: bool,
    pub message: String,
}

/// Asks the agent for an allocation's run log: the last `tail_bytes`, then what is appended, as raw bytes after
/// `Ready`, until the stream is closed.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct LogFollow {
    pub allocation: String,
    pub tail_bytes: u64,
}

/// A builder's session opens with this (and sends it again whenever its free slots change): the leader hands it
/// up to `free_slots` builds.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct BuilderReady {
    pub name: String,
    pub free_slots: u32,
    /// The builds it works on (so a new leader renews their leases).
    pub running: Vec<String>,
}

/// A build the leader handed to a builder (claimed for it through Raft): the commit of a Space, the packs
/// that hold its objects, and what the build may use.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct BuildJob {
    pub id: String,
    /// `namespace/name`.
    pub space_id: String,
    pub commit: String,
    /// `sha256:` digests of the git packs holding the commit's objects (blobs in the store).
    pub packs: Vec<String>,
    /// A factory rebuild: use no cached step.
    pub no_cache: bool,
    /// The Space's variables (build arguments).
    pub variables: Vec<EnvVar>,
    /// The Space's secrets (for `RUN --mount=type=secret`); never logged.
    pub secrets: Vec<EnvVar>,
    /// The Hub endpoint `preload_from_hub` downloads from (the cluster's own API).
    pub hub_endpoint: String,
}

/// Lines of a build's log, as the builder writes them.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct BuildLog {
    pub build: String,
    /// Whole lines, each ending in `\n`.
    pub text: String,
}

/// Names of the images builds make start with this (`spaces/NS/NAME`, lowercased); they are not bases.
pub const BUILT_IMAGE_PREFIX: &str = "spaces/";

/// An image a build made: its config and layers are in the blob store.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct BuiltImage {
    pub name: String,
    /// `sha256:` digest of the OCI config.
    pub config: String,
    /// `sha256:` digest of the OCI image manifest (`image::oci_manifest`), pushed with the rest.
    pub manifest: String,
    pub layers: Vec<Layer>,
    pub port: u16,
    pub startup_timeout_s: u64,
}

/// How a build ended, from its builder.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum BuildResult {
    Built(BuiltImage),
    /// `step` names the failing step and line (`Dockerfile:3 RUN`).
    Failed {
        step: String,
        message: String,
    },
}

/// A builder is done with a build.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct BuildDone {
    pub build: String,
    pub result: BuildResult,
}

/// Asks for an image in the cluster's store by name (a base image); answered with `ImageReply`.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct ImageRequest {
    pub name: String,
}

/// The image, or (when not `found`) the names the store has, so a missing base can list what is there.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct ImageReply {
    pub found: bool,
    /// `sha256:` digest of the image's OCI config (a blob).
    pub id: String,
    pub layers: Vec<Layer>,
    pub available: Vec<String>,
}

macro_rules! messages {
    ($($kind:literal => $variant:ident),+ $(,)?) => {
        /// Every message, by kind number. Numbers are never reused or renumbered.
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub enum Message { $($variant($variant)),+ }

        impl Message {
            /// The kind number written in the frame header.
            pub fn kind(&self) -> u16 {
                match self { $(Message::$variant(_) => $kind),+ }
            }

            /// The message's name, for logs and errors.
            pub fn name(&self) -> &'static str {
                match self { $(Message::$variant(_) => stringify!($variant)),+ }
            }

            fn payload(&self) -> Result<AlignedVec, WireError> {
                let result = match self {
                    $(Message::$variant(m) => rkyv::to_bytes::<rancor::Error>(m)),+
                };
                result.map_err(|e| WireError::Encode { kind: self.name(), reason: e.to_string() })
            }

            /// Decodes and validates a payload of the given kind.
            pub fn decode(kind: u16, payload: &[u8]) -> Result<Message, WireError> {
                let mut aligned = AlignedVec::<16>::with_capacity(payload.len());
                aligned.extend_from_slice(payload);
                match kind {
                    $($kind => rkyv::from_bytes::<$variant, rancor::Error>(&aligned)
                        .map(Message::$variant)
                        .map_err(|e| WireError::Malformed { kind: stringify!($variant), reason: e.to_string() }),)+
                    _ => Err(WireError::UnknownKind { kind }),
                }
            }
        }

        $(impl From<$variant> for Message {
            fn from(m: $variant) -> Message { Message::$variant(m) }
        })+
    };
}

messages! {
    1 => Hello,
    2 => Welcome,
    3 => Refused,
    4 => Heartbeat,
    5 => HeartbeatAck,
    6 => RaftBatch,
    7 => StatusRequest,
    8 => StatusReply,
    9 => JoinRequest,
    10 => JoinReply,
    11 => JoinReady,
    12 => Joined,
    13 => Inventory,
    14 => Registered,
    15 => BlobRequest,
    16 => BlobHeader,
    // 17 was BlobChunk (blob bytes now follow their header raw); never reuse it.
    18 => BlobPut,
    19 => BlobStored,
    20 => Assignments,
    21 => AllocationStatus,
    22 => TunnelOpen,
    23 => Ready,
    24 => LogFollow,
    25 => BuilderReady,
    26 => BuildJob,
    27 => BuildLog,
    28 => BuildDone,
    29 => ImageRequest,
    30 => ImageReply,
}

/// Encodes a message as one frame.
pub fn encode(message: &Message) -> Result<Vec<u8>, WireError> {
    let payload = message.payload()?;
    let len = u32::try_from(payload.len() + 2).map_err(|_| WireError::Encode {
        kind: message.name(),
        reason: "payload over 4 GiB".into(),
    })?;
    let mut frame = Vec::with_capacity(HEADER_BYTES + payload.len());
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(&message.kind().to_be_bytes());
    frame.extend_from_slice(&payload);
    Ok(frame)
}

/// Splits a byte stream into frames. Feed it bytes as they arrive; it never holds more than one frame
/// beyond what was fed, and refuses a frame whose header announces more than `max_frame_bytes`.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    max_frame_bytes: u32,
}

impl FrameDecoder {
    pub fn new(max_frame_bytes: u32) -> FrameDecoder {
        FrameDecoder {
            buf: Vec::new(),
            max_frame_bytes,
        }
    }

    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole message, `None` if more bytes are needed. After an error the stream is unusable.
    pub fn next_message(&mut self) -> Result<Option<Message>, WireError> {
        let Some(header) = self.buf.first_chunk::<4>() else {
            return Ok(None);
        };
        let len = u32::from_be_bytes(*header);
        if len > self.max_frame_bytes {
            return Err(WireError::FrameTooLarge {
                len: u64::from(len),
                max: self.max_frame_bytes,
            });
        }
        if len < 2 {
            return Err(WireError::FrameTooShort { len });
        }
        let total = 4 + len as usize;
        if self.buf.len() < total {
            return Ok(None);
        }
        let kind = u16::from_be_bytes([self.buf[4], self.buf[5]]);
        let result = Message::decode(kind, &self.buf[HEADER_BYTES..total]);
        self.buf.drain(..total);
        result.map(Some)
    }

    /// Call at end of stream: an error if a partial frame is left.
    /// Takes the bytes buffered past the last whole message (a stream that switches from frames to raw bytes).
    pub fn take_buffered(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf)
    }

    pub fn finish(&self) -> Result<(), WireError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(WireError::Truncated {
                buffered: self.buf.len(),
            })
        }
    }
}

/// Picks the protocol version for a connection, or explains why there is none.
pub fn negotiate(ours_min: u16, ours_max: u16, hello: &Hello) -> Result<u16, WireError> {
    let version = ours_max.min(hello.max_version);
    if version < ours_min.max(hello.min_version) || hello.min_version > hello.max_version {
        return Err(WireError::NoCommonVersion {
            ours_min,
            ours_max,
            theirs_min: hello.min_version,
            theirs_max: hello.max_version,
        });
    }
    Ok(version)
}

/// The listener's side of the opening exchange: the answer to send, and the version when it is accepted.
pub fn answer_hello(hello: &Hello, software: &str) -> (Message, Option<u16>) {
    match negotiate(MIN_PROTOCOL_VERSION, PROTOCOL_VERSION, hello) {
        Ok(version) => (
            Welcome {
                version,
                software: software.into(),
            }
            .into(),
            Some(version),
        ),
        Err(e) => (
            Refused {
                code: RefuseCode::VersionMismatch,
                message: e.to_string(),
            }
            .into(),
            None,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hello(min: u16, max: u16) -> Hello {
        Hello {
            min_version: min,
            max_version: max,
            role: Role::Agent,
            software: "t".into(),
            name: "n".into(),
        }
    }

    fn round_trip(m: &Message) -> Message {
        let mut d = FrameDecoder::new(DEFAULT_MAX_FRAME_BYTES);
        d.push(&encode(m).unwrap());
        let got = d.next_message().unwrap().unwrap();
        d.finish().unwrap();
        got
    }

    #[test]
    fn every_kind_round_trips() {
        let all: Vec<Message> = vec![
            hello(1, 3).into(),
            Welcome {
                version: 1,
                software: "spacedock-coordinator 0.1.0".into(),
            }
            .into(),
            Refused {
                code: RefuseCode::NotLeader,
                message: "leader is 2".into(),
            }
            .into(),
            Heartbeat { seq: u64::MAX }.into(),
            HeartbeatAck { seq: 7 }.into(),
            RaftBatch {
                messages: vec![vec![1, 2, 3], vec![]],
            }
            .into(),
            BuilderReady {
                name: "b1".into(),
                free_slots: 2,
                running: vec!["b-0".into()],
            }
            .into(),
            BuildJob {
                id: "b-1".into(),
                space_id: "ns/app".into(),
                commit: "a".repeat(40),
                packs: vec!["sha256:00".into()],
                no_cache: true,
                variables: vec![EnvVar {
                    key: "K".into(),
                    value: "v".into(),
                }],
                secrets: vec![],
                hub_endpoint: "http://127.0.0.1:8080".into(),
            }
            .into(),
            BuildLog {
                build: "b-1".into(),
                text: "Step 1/2\n".into(),
            }
            .into(),
            BuildDone {
                build: "b-1".into(),
                result: BuildResult::Built(BuiltImage {
                    name: "n".into(),
                    config: "sha256:11".into(),
                    manifest: "sha256:33".into(),
                    layers: vec![Layer {
                        digest: "sha256:22".into(),
                        size: 3,
                    }],
                    port: 7860,
                    startup_timeout_s: 1800,
                }),
            }
            .into(),
            BuildDone {
                build: "b-2".into(),
                result: BuildResult::Failed {
                    step: "Dockerfile:3 RUN".into(),
                    message: "exit code 1".into(),
                },
            }
            .into(),
            ImageRequest {
                name: "busybox:latest".into(),
            }
            .into(),
            ImageReply {
                found: false,
                id: String::new(),
                layers: vec![],
                available: vec!["python:3.10".into()],
            }
            .into(),
        ];
        for m in &all {
            assert_eq!(&round_trip(m), m);
        }
    }

    #[test]
    fn negotiation_picks_the_highest_common_version() {
        assert_eq!(negotiate(1, 3, &hello(2, 5)), Ok(3));
        assert_eq!(negotiate(1, 3, &hello(1, 1)), Ok(1));
        assert!(matches!(
            negotiate(1, 3, &hello(4, 6)),
            Err(WireError::NoCommonVersion { .. })
        ));
        assert!(matches!(
            negotiate(2, 3, &hello(1, 1)),
            Err(WireError::NoCommonVersion { .. })
        ));
        assert!(matches!(
            negotiate(1, 3, &hello(3, 2)),
            Err(WireError::NoCommonVersion { .. })
        ));
        let (answer, version) = answer_hello(&hello(9, 9), "x");
        assert_eq!(version, None);
        let Message::Refused(r) = answer else {
            panic!("expected a refusal")
        };
        assert_eq!(r.code, RefuseCode::VersionMismatch);
        assert!(r.message.contains("9..=9"), "{}", r.message);
    }

    #[test]
    fn unknown_kinds_are_rejected() {
        let mut frame = encode(&Heartbeat { seq: 1 }.into()).unwrap();
        frame[4..6].copy_from_slice(&999u16.to_be_bytes());
        let mut d = FrameDecoder::new(1024);
        d.push(&frame);
        assert_eq!(d.next_message(), Err(WireError::UnknownKind { kind: 999 }));
    }

    #[test]
    fn oversized_frames_are_rejected_from_the_header() {
        let mut d = FrameDecoder::new(1024);
        d.push(&(1025u32).to_be_bytes());
        assert_eq!(
            d.next_message(),
            Err(WireError::FrameTooLarge {
                len: 1025,
                max: 1024
            })
        );
        let mut d = FrameDecoder::new(1024);
        d.push(&1u32.to_be_bytes());
        assert_eq!(d.next_message(), Err(WireError::FrameTooShort { len: 1 }));
    }

    #[test]
    fn wrong_kind_for_payload_is_malformed() {
        let mut frame = encode(&Heartbeat { seq: 1 }.into()).unwrap();
        frame[4..6].copy_from_slice(&1u16.to_be_bytes());
        let mut d = FrameDecoder::new(1024);
        d.push(&frame);
        assert!(matches!(
            d.next_message(),
            Err(WireError::Malformed { kind: "Hello", .. })
        ));
    }

    #[test]
    fn frames_arrive_in_pieces() {
        let messages: Vec<Message> = (0..20).map(|seq| Heartbeat { seq }.into()).collect();
        let bytes: Vec<u8> = messages.iter().flat_map(|m| encode(m).unwrap()).collect();
        let mut d = FrameDecoder::new(1024);
        let mut got = Vec::new();
        for chunk in bytes.chunks(3) {
            d.push(chunk);
            while let Some(m) = d.next_message().unwrap() {
                got.push(m);
            }
        }
        assert_eq!(got, messages);
        d.finish().unwrap();
    }

    #[test]
    fn truncation_is_detected_at_end_of_stream() {
        let frame = encode(&hello(1, 1).into()).unwrap();
        let mut d = FrameDecoder::new(1024);
        d.push(&frame[..frame.len() - 1]);
        assert_eq!(d.next_message(), Ok(None));
        assert_eq!(
            d.finish(),
            Err(WireError::Truncated {
                buffered: frame.len() - 1
            })
        );
    }

    fn any_role() -> impl Strategy<Value = Role> {
        prop_oneof![
            Just(Role::Coordinator),
            Just(Role::Agent),
            Just(Role::Builder),
            Just(Role::Cli)
        ]
    }

    fn any_message() -> impl Strategy<Value = Message> {
        prop_oneof![
            (any::<u16>(), any::<u16>(), any_role(), ".{0,40}", ".{0,40}").prop_map(
                |(min_version, max_version, role, software, name)| {
                    Hello {
                        min_version,
                        max_version,
                        role,
                        software,
                        name,
                    }
                    .into()
                }
            ),
            (any::<u16>(), ".{0,40}")
                .prop_map(|(version, software)| Welcome { version, software }.into()),
            ".{0,200}".prop_map(|message| Refused {
                code: RefuseCode::BadRequest,
                message
            }
            .into()),
            any::<u64>().prop_map(|seq| Heartbeat { seq }.into()),
            any::<u64>().prop_map(|seq| HeartbeatAck { seq }.into()),
            proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..8)
                .prop_map(|messages| RaftBatch { messages }.into()),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn arbitrary_messages_round_trip(m in any_message()) {
            prop_assert_eq!(round_trip(&m), m);
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut d = FrameDecoder::new(256);
            d.push(&bytes);
            for _ in 0..bytes.len() {
                match d.next_message() {
                    Ok(Some(_)) => continue,
                    Ok(None) | Err(_) => break,
                }
            }
        }

        #[test]
        fn random_payloads_of_every_kind_never_panic(kind in 0u16..28, payload in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = Message::decode(kind, &payload);
        }

        #[test]
        fn corrupted_frames_never_panic(m in any_message(), idx in any::<usize>(), byte in any::<u8>()) {
            let mut frame = encode(&m).unwrap();
            let i = idx % frame.len();
            frame[i] = byte;
            let mut d = FrameDecoder::new(DEFAULT_MAX_FRAME_BYTES);
            d.push(&frame);
            let _ = d.next_message();
        }

        #[test]
        fn truncated_frames_wait_for_more(m in any_message(), cut in any::<usize>()) {
            let frame = encode(&m).unwrap();
            let cut = cut % frame.len();
            let mut d = FrameDecoder::new(DEFAULT_MAX_FRAME_BYTES);
            d.push(&frame[..cut]);
            prop_assert_eq!(d.next_message(), Ok(None));
            d.push(&frame[cut..]);
            prop_assert_eq!(d.next_message(), Ok(Some(m)));
        }
    }
}
