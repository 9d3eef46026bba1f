//! A running coordinator: opens (or bootstraps) its data directory, starts the Raft node, the QUIC endpoint and
//! the HTTP API, keeps the flavor catalog in Raft in step with its config, and stops cleanly on a signal.
//!
//! Data directory layout: `raft/` (sled: log, hard state, snapshots), `tls/` (`ca.pem`, `ca.key`, `node.pem`,
//! `node.key`; keys 0600), `admin-token` (0600, written at bootstrap).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{Context, bail};
use spacedock_coordinator_core::access::hash_secret;
use spacedock_coordinator_core::command::{ENVELOPE_VERSION, NewToken};
use spacedock_coordinator_core::state::{Member, Role};
use spacedock_coordinator_core::{Command, Envelope, State, apply};
use spacedock_shared::flavor::Catalog;

use crate::api::{self, Api};
use crate::blobs::{BlobStore, Blobs};
use crate::config::CoordinatorConfig;
use crate::engine::{Engine, SledEngine};
use crate::join::{self, Authority};
use crate::node::{self, NodeConfig, NodeHandle};
use crate::peer::{Peers, QuicTransport};
use crate::quic_server;
use crate::raft_store::RaftStore;
use crate::tls::{self, ClusterCa, Identity};
use spacedock_shared::wire::{self, JoinRequest};

/// How long API calls wait for a commit or a quorum read.
const API_TIMEOUT: Duration = Duration::from_secs(10);

/// Paths inside the data directory.
#[derive(Debug, Clone)]
pub struct DataDir {
    pub root: PathBuf,
}

impl DataDir {
    pub fn raft(&self) -> PathBuf {
        self.root.join("raft")
    }
    pub fn tls(&self) -> PathBuf {
        self.root.join("tls")
    }
    pub fn blobs(&self) -> PathBuf {
        self.root.join("blobs")
    }
    pub fn admin_token(&self) -> PathBuf {
        self.root.join("admin-token")
    }
}

/// Runs the coordinator until `shutdown` resolves. `join_token` is needed when the store is empty and
/// `config.join` names coordinators to join.
pub async fn run(
    config: CoordinatorConfig,
    catalog: Catalog,
    join_token: Option<String>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let dir = DataDir {
        root: config.data_dir.clone(),
    };
    create_private_dir(&dir.root)?;
    let engine: Arc<dyn Engine> = Arc::new(SledEngine::open(&dir.raft())?);
    let store = RaftStore::open(engine)
        .with_context(|| format!("opening the Raft store in {}", dir.raft().display()))?;
    let mut fresh = false;
    let mut pending = None;
    if !store.is_initialized() {
        if config.join.is_empty() {
            if dir.tls().join("node.pem").exists() {
                bail!(
                    "{} belongs to a cluster but holds no Raft state yet; start it with `--join` and a join token to \
                     finish joining, instead of bootstrapping a second cluster",
                    dir.root.display()
                );
            }
            bootstrap(&config, &catalog, &dir, &store)?;
            fresh = true;
        } else {
            let token = join_token
                .ok_or_else(|| anyhow::anyhow!("joining needs a join token (`--token`)"))?;
            let client = tls::client_endpoint().context("QUIC client endpoint")?;
            let request = JoinRequest {
                token,
                role: wire::Role::Coordinator,
                node_id: config.node_id,
                name: format!("coordinator-{}", config.node_id),
                api_url: config.public_url.clone(),
                quic_addr: config.advertised_quic(),
            };
            let joining =
                join::request(&client, &config.join, &request.token.clone(), request).await?;
            let reply = &joining.reply;
            let ca = ClusterCa {
                cert_pem: reply.ca_pem.clone(),
                key_pem: reply.ca_key_pem.clone(),
            };
            let identity = Identity {
                chain_pem: reply.chain_pem.clone(),
                key_pem: reply.key_pem.clone(),
                ca_pem: reply.ca_pem.clone(),
            };
            write_tls(&dir.tls(), &ca, &identity)?;
            pending = Some((joining, client));
        }
    }
    let identity = load_identity(&dir.tls())?;

    let endpoint = tls::endpoint(config.quic_listen, Some(tls::server_config(&identity)?))
        .with_context(|| format!("binding QUIC on {}", config.quic_listen))?;
    let handle_cell: Arc<OnceLock<NodeHandle>> = Arc::new(OnceLock::new());
    let resolver_cell = handle_cell.clone();
    // Until a joining coordinator has state, it reaches the others through the addresses in its join reply.
    let seeds: std::collections::HashMap<u64, String> = pending
        .as_ref()
        .map(|(joining, _)| {
            joining
                .reply
                .members
                .iter()
                .map(|m| (m.id, m.quic_addr.clone()))
                .collect()
        })
        .unwrap_or_default();
    let resolve = move |id: u64| -> Option<SocketAddr> {
        let node = resolver_cell.get()?;
        let known = node.read_local(|s| s.members.get(&id).map(|m| m.quic_addr.clone()));
        known.or_else(|| seeds.get(&id).cloned())?.parse().ok()
    };
    let peers = Peers {
        id: config.node_id,
        endpoint: endpoint.clone(),
        client_config: tls::client_config(&identity)?,
        resolve: Arc::new(resolve),
    };
    let transport = QuicTransport::new(peers.clone(), tokio::runtime::Handle::current());
    let node_config = NodeConfig {
        snapshot_entries: config.snapshot_entries,
        ..NodeConfig::new(config.node_id)
    };
    let node = node::start(node_config, store, Arc::new(transport))?;
    let _ = handle_cell.set(node.clone());
    if fresh {
        node.campaign();
    }
    let ca = ClusterCa {
        cert_pem: identity.ca_pem.clone(),
        key_pem: std::fs::read_to_string(dir.tls().join("ca.key")).context("reading the CA key")?,
    };
    let liveness = Arc::new(crate::agents::Liveness::default());
    let links = Arc::new(crate::links::Links::default());
    let blobs = Blobs::new(
        BlobStore::new(&dir.blobs())?,
        Some(peers.clone()),
        node.clone(),
    );
    let authority = Authority {
        ca_fingerprint: tls::ca_fingerprint(&ca.cert_pem)?,
        ca,
        node: node.clone(),
        liveness: liveness.clone(),
        blobs: blobs.clone(),
        links: links.clone(),
        apps_host: match config.public_port() {
            Some(port) if port != 80 => format!("{}:{port}", config.apps_domain),
            _ => config.apps_domain.clone(),
        },
        build_logs: Default::default(),
        public_url: config.public_url.trim_end_matches('/').to_owned(),
    };
    let activity = Arc::new(crate::activity::Activity::default());
    let kick = Arc::new(tokio::sync::Notify::new());
    tokio::spawn(crate::scheduler::run(
        node.clone(),
        activity.clone(),
        links.clone(),
        kick.clone(),
    ));
    tokio::spawn(crate::agents::watch(
        node.clone(),
        liveness,
        Duration::from_secs(config.node_ttl_seconds),
    ));
    tokio::spawn(quic_server::serve(
        endpoint.clone(),
        Arc::new(authority.clone()),
    ));
    if let Some((joining, _client)) = pending {
        let cluster_id = joining.reply.cluster_id.clone();
        joining.ready().await.context("joining the cluster")?;
        println!(
            "spacedock-coordinator: joined cluster {cluster_id} as node {}",
            config.node_id
        );
    }
    tokio::spawn(keep_catalog(node.clone(), catalog));

    let mirrors = crate::git::Mirrors::new(&dir.root.join("git"), blobs.clone())?;
    tokio::spawn(prune_mirrors(node.clone(), mirrors.clone()));
    tokio::spawn(collect_blobs(node.clone(), blobs.clone()));
    let api = Api {
        node: node.clone(),
        public_url: config.public_url.trim_end_matches('/').to_owned(),
        apps_domain: config.apps_domain.clone(),
        apps_port: config.public_port(),
        timeout: API_TIMEOUT,
        clock: Arc::new(api::system_clock),
        peers: Some(peers),
        ca_fingerprint: authority.ca_fingerprint.clone(),
        url_key: blake3::derive_key("spacedock signed urls v1", authority.ca.key_pem.as_bytes()),
        mirrors: mirrors.clone(),
        blobs,
        links,
        activity: activity.clone(),
        scheduler_kick: kick,
        build_logs: authority.build_logs.clone(),
    };
    let listener = tokio::net::TcpListener::bind(config.api_listen)
        .await
        .with_context(|| format!("binding the HTTP API on {}", config.api_listen))?;
    tracing::info!(api = %config.api_listen, quic = %config.quic_listen, node_id = config.node_id, "coordinator serving");
    let served = axum::serve(listener, api::router(api))
        .with_graceful_shutdown(shutdown)
        .await;
    node.stop();
    endpoint.close(0u32.into(), b"shutting down");
    served.context("HTTP server failed")
}

/// Makes a new cluster: CA and certificate, admin token file, and the first snapshot.
fn bootstrap(
    config: &CoordinatorConfig,
    catalog: &Catalog,
    dir: &DataDir,
    store: &RaftStore,
) -> anyhow::Result<()> {
    let cluster_id = api::new_id();
    let ca = ClusterCa::generate(&cluster_id)?;
    let identity = ca.issue(&format!("coordinator-{}", config.node_id))?;
    write_tls(&dir.tls(), &ca, &identity)?;
    let secret = api::new_token_secret();
    write_private(&dir.admin_token(), &format!("{secret}\n"))?;
    let member = Member {
        id: config.node_id,
        api_url: config.public_url.clone(),
        quic_addr: config.advertised_quic(),
    };
    let command = Command::Bootstrap {
        cluster_id: cluster_id.clone(),
        member,
        flavors: catalog.iter().cloned().collect(),
        admin_id: api::new_id(),
        admin_token: NewToken {
            id: api::new_id(),
            owner: "admin".into(),
            display_name: "bootstrap admin".into(),
            role: Role::Admin,
            secret_hash: hash_secret(&secret),
            expires_at: None,
        },
    };
    let envelope = Envelope {
        version: ENVELOPE_VERSION,
        at: api::system_clock(),
        request_id: 0,
        actor: None,
        command,
    };
    let mut state = State::default();
    apply(&mut state, &envelope).map_err(|e| anyhow::anyhow!("bootstrap refused: {e}"))?;
    node::bootstrap(store, config.node_id, &state)?;
    println!(
        "spacedock-coordinator: bootstrapped cluster {cluster_id}; admin token written to {}",
        dir.admin_token().display()
    );
    Ok(())
}

/// Keeps the flavor catalog in Raft equal to this coordinator's config while it leads.
async fn keep_catalog(node: NodeHandle, catalog: Catalog) {
    let wanted: Vec<_> = catalog.iter().cloned().collect();
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if node.status().role != "leader" || node.read_local(|s| s.flavors == wanted) {
            continue;
        }
        let command = Command::SetFlavors {
            flavors: wanted.clone(),
        };
        match api::propose_as_cluster(&node, command, API_TIMEOUT).await {
            Ok(()) => tracing::info!(
                n_flavors = wanted.len(),
                "flavor catalog updated from the config"
            ),
            Err(e) => tracing::warn!(error = %e, "could not update the flavor catalog"),
        }
    }
}

fn create_private_dir(path: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(path).with_context(|| format!("creating {}", path.display()))?;
    set_mode(path, 0o700)
}

fn set_mode(path: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting permissions of {}", path.display()))
}

/// Writes a file readable by its owner only, atomically (temp file, then rename).
fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    file.write_all(contents.as_bytes())
        .and_then(|_| file.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
}

fn write_tls(dir: &Path, ca: &ClusterCa, identity: &Identity) -> anyhow::Result<()> {
    create_private_dir(dir)?;
    write_private(&dir.join("ca.pem"), &ca.cert_pem)?;
    write_private(&dir.join("ca.key"), &ca.key_pem)?;
    write_private(&dir.join("node.pem"), &identity.chain_pem)?;
    write_private(&dir.join("node.key"), &identity.key_pem)
}

fn load_identity(dir: &Path) -> anyhow::Result<Identity> {
    let read = |name: &str| {
        std::fs::read_to_string(dir.join(name)).with_context(|| {
            format!(
                "reading {} (the data directory is incomplete: restore it or re-join this node)",
                dir.join(name).display()
            )
        })
    };
    Ok(Identity {
        chain_pem: read("node.pem")?,
        key_pem: read("node.key")?,
        ca_pem: read("ca.pem")?,
    })
}

/// How old an unreferenced blob must be before it is collected (an upload whose reference is not committed
/// yet is younger).
const BLOB_GRACE: Duration = Duration::from_secs(3600);

/// Every ten minutes, removes the blobs nothing in the state refers to any more (deleted repos' packs and LFS
/// objects, pushes that lost a race, abandoned uploads).
async fn collect_blobs(node: node::NodeHandle, blobs: Arc<Blobs>) {
    loop {
        tokio::time::sleep(Duration::from_secs(600)).await;
        let keep = node.read_local(|s| s.referenced_blobs());
        let store = blobs.store.clone();
        match tokio::task::spawn_blocking(move || store.collect_garbage(&keep, BLOB_GRACE)).await {
            Ok(Ok((0, _))) => {}
            Ok(Ok((count, bytes))) => tracing::info!(count, bytes, "collected unreferenced blobs"),
            Ok(Err(e)) => {
                tracing::warn!(error = %format!("{e:#}"), "blob garbage collection failed")
            }
            Err(e) => tracing::warn!(error = %e, "blob garbage collection failed"),
        }
    }
}

/// Every minute, removes the git mirrors of repos deleted since.
async fn prune_mirrors(node: node::NodeHandle, mirrors: Arc<crate::git::Mirrors>) {
    loop {
        tokio::time::sleep(Duration::from_secs(60)).await;
        let live = node.read_local(|s| s.repos.values().map(|r| r.uid.clone()).collect());
        let removed = mirrors.prune(&live);
        if removed > 0 {
            tracing::info!(removed, "removed the git mirrors of deleted repos");
        }
    }
}
