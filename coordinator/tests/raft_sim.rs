//! The Raft driver under simulation: several nodes in one process over an in-memory network that can cut links,
//! with in-memory or sled stores. Elections, replication, failover, partitions, restarts and snapshots.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test harness: panics are how tests fail

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use raft::eraftpb::{ConfChangeType, Message};
use spacedock_coordinator::engine::{Engine, MemEngine};
use spacedock_coordinator::node::{self, NodeConfig, NodeHandle, ReadError, Transport, WriteError};
use spacedock_coordinator::raft_store::RaftStore;
use spacedock_coordinator_core::access::hash_secret;
use spacedock_coordinator_core::command::{Actor, NewToken};
use spacedock_coordinator_core::state::{Member, Role};
use spacedock_coordinator_core::{Command, Envelope, State, apply};
use spacedock_shared::flavor::Catalog;

const ADMIN: &str = "hf_sim_admin";
const TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Default)]
struct SimNet {
    nodes: Mutex<HashMap<u64, NodeHandle>>,
    cut: Mutex<HashSet<(u64, u64)>>,
}

impl SimNet {
    fn isolate(&self, id: u64, ids: &[u64]) {
        let mut cut = self.cut.lock().unwrap();
        for other in ids {
            cut.insert((id, *other));
            cut.insert((*other, id));
        }
    }

    fn heal(&self) {
        self.cut.lock().unwrap().clear();
    }
}

impl Transport for SimNet {
    fn send(&self, messages: Vec<Message>) {
        let cut = self.cut.lock().unwrap().clone();
        let nodes = self.nodes.lock().unwrap();
        for m in messages {
            if cut.contains(&(m.from, m.to)) {
                continue;
            }
            if let Some(node) = nodes.get(&m.to) {
                node.step(m);
            }
        }
    }
}

static REQUEST: AtomicU64 = AtomicU64::new(1);

fn envelope(actor: Option<&str>, command: Command) -> Envelope {
    Envelope {
        version: 1,
        at: 1_700_000_000_000,
        request_id: REQUEST.fetch_add(1, Ordering::Relaxed),
        actor: actor.map(|t| Actor {
            token_hash: hash_secret(t),
        }),
        command,
    }
}

fn member(id: u64) -> Member {
    Member {
        id,
        api_url: format!("http://127.0.0.1:{}", 8000 + id),
        quic_addr: format!("127.0.0.1:{}", 7000 + id),
    }
}

fn initial_state() -> State {
    let mut state = State::default();
    let bootstrap = envelope(
        None,
        Command::Bootstrap {
            cluster_id: "sim".into(),
            member: member(1),
            flavors: Catalog::huggingface().iter().cloned().collect(),
            admin_id: "u0".into(),
            admin_token: NewToken {
                id: "t0".into(),
                owner: "admin".into(),
                display_name: "admin".into(),
                role: Role::Admin,
                secret_hash: hash_secret(ADMIN),
                expires_at: None,
            },
        },
    );
    apply(&mut state, &bootstrap).unwrap();
    state
}

fn config(id: u64) -> NodeConfig {
    NodeConfig {
        tick: Duration::from_millis(20),
        snapshot_entries: 50,
        ..NodeConfig::new(id)
    }
}

struct Cluster {
    net: Arc<SimNet>,
    engines: HashMap<u64, Arc<MemEngine>>,
}

impl Cluster {
    fn new() -> Cluster {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        Cluster {
            net: Arc::new(SimNet::default()),
            engines: HashMap::new(),
        }
    }

    fn start(&mut self, id: u64, bootstrap: bool) -> NodeHandle {
        let engine = self
            .engines
            .entry(id)
            .or_insert_with(|| Arc::new(MemEngine::default()))
            .clone();
        let store = RaftStore::open(engine as Arc<dyn Engine>).unwrap();
        if bootstrap {
            node::bootstrap(&store, id, &initial_state()).unwrap();
        }
        let handle = node::start(config(id), store, self.net.clone()).unwrap();
        self.net.nodes.lock().unwrap().insert(id, handle.clone());
        if bootstrap {
            handle.campaign();
        }
        handle
    }

    fn stop(&self, id: u64) {
        if let Some(h) = self.net.nodes.lock().unwrap().remove(&id) {
            h.stop();
        }
    }

    fn handle(&self, id: u64) -> NodeHandle {
        self.net.nodes.lock().unwrap()[&id].clone()
    }

    async fn wait_leader(&self, among: &[u64]) -> u64 {
        let started = Instant::now();
        loop {
            for id in among {
                let s = self.handle(*id).status();
                if s.role == "leader" {
                    return *id;
                }
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "no leader among {among:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

async fn create_user(node: &NodeHandle, name: &str) -> Result<(), WriteError> {
    let cmd = Command::CreateUser {
        id: name.into(),
        name: name.into(),
        fullname: name.into(),
        email: None,
        is_admin: false,
    };
    node.propose(&envelope(Some(ADMIN), cmd), TIMEOUT).await
}

async fn three_nodes(cluster: &mut Cluster) {
    let n1 = cluster.start(1, true);
    cluster.wait_leader(&[1]).await;
    for id in [2, 3] {
        cluster.start(id, false);
        n1.change_membership(
            id,
            ConfChangeType::AddNode,
            &envelope(None, Command::AddMember { member: member(id) }),
            TIMEOUT,
        )
        .await
        .unwrap();
    }
}

async fn users_on(node: &NodeHandle) -> usize {
    node.read(TIMEOUT, |s| s.users.len()).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_node_bootstraps_and_commits() {
    let mut cluster = Cluster::new();
    let n1 = cluster.start(1, true);
    assert_eq!(cluster.wait_leader(&[1]).await, 1);
    create_user(&n1, "alice").await.unwrap();
    let err = create_user(&n1, "alice").await.unwrap_err();
    assert!(matches!(err, WriteError::Refused(_)), "{err}");
    assert_eq!(
        n1.read(TIMEOUT, |s| s.user("alice").map(|u| u.name.clone()))
            .await
            .unwrap()
            .as_deref(),
        Some("alice")
    );
    let status = n1.status();
    assert_eq!((status.leader, status.voters.clone()), (Some(1), vec![1]));
    assert!(status.applied_index >= 3, "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_replicate_and_survive_leader_loss() {
    let mut cluster = Cluster::new();
    three_nodes(&mut cluster).await;
    let leader = cluster.wait_leader(&[1, 2, 3]).await;
    for i in 0..30 {
        // Writes through any node: followers forward proposals to the leader.
        let via = cluster.handle(1 + (i % 3));
        create_user(&via, &format!("user{i}")).await.unwrap();
    }
    for id in [1, 2, 3] {
        assert_eq!(users_on(&cluster.handle(id)).await, 31, "node {id}");
    }
    assert_eq!(cluster.handle(2).read_local(|s| s.members.len()), 3);

    cluster.stop(leader);
    let rest: Vec<u64> = [1, 2, 3].into_iter().filter(|id| *id != leader).collect();
    let started = Instant::now();
    let new_leader = cluster.wait_leader(&rest).await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "failover took {:?}",
        started.elapsed()
    );
    assert_ne!(new_leader, leader);
    create_user(&cluster.handle(new_leader), "after-failover")
        .await
        .unwrap();
    for id in &rest {
        assert_eq!(users_on(&cluster.handle(*id)).await, 32);
    }

    // The old leader restarts from its store and catches up.
    let back = cluster.start(leader, false);
    let started = Instant::now();
    while back.read_local(|s| s.users.len()) < 32 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "restarted node did not catch up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_minority_cannot_write_or_read() {
    let mut cluster = Cluster::new();
    three_nodes(&mut cluster).await;
    let leader = cluster.wait_leader(&[1, 2, 3]).await;
    cluster.net.isolate(leader, &[1, 2, 3]);
    let rest: Vec<u64> = [1, 2, 3].into_iter().filter(|id| *id != leader).collect();
    let new_leader = cluster.wait_leader(&rest).await;
    create_user(&cluster.handle(new_leader), "majority-write")
        .await
        .unwrap();

    let old = cluster.handle(leader);
    let short = Duration::from_millis(800);
    let read = old
        .read(short, |s| s.user("majority-write").is_some())
        .await;
    assert!(
        matches!(read, Err(ReadError::Timeout(_))),
        "a cut-off node served a read: {read:?}"
    );
    let cmd = Command::CreateUser {
        id: "x".into(),
        name: "minority".into(),
        fullname: String::new(),
        email: None,
        is_admin: false,
    };
    let write = old.propose(&envelope(Some(ADMIN), cmd), short).await;
    assert!(
        matches!(
            write,
            Err(WriteError::Timeout(_)) | Err(WriteError::NoLeader)
        ),
        "{write:?}"
    );

    cluster.net.heal();
    let started = Instant::now();
    loop {
        if let Ok(true) = old
            .read(short, |s| s.user("majority-write").is_some())
            .await
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "healed node did not catch up"
        );
    }
    assert!(
        old.read(TIMEOUT, |s| s.user("minority").is_none())
            .await
            .unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_join_through_snapshots_and_leave() {
    let mut cluster = Cluster::new();
    three_nodes(&mut cluster).await;
    let leader = cluster.wait_leader(&[1, 2, 3]).await;
    // Past `snapshot_entries` (50), so the log is compacted and a new member needs a snapshot.
    for i in 0..120 {
        create_user(&cluster.handle(leader), &format!("u{i}"))
            .await
            .unwrap();
    }
    cluster.start(4, false);
    let add = envelope(None, Command::AddMember { member: member(4) });
    cluster
        .handle(leader)
        .change_membership(4, ConfChangeType::AddNode, &add, TIMEOUT)
        .await
        .unwrap();
    assert_eq!(users_on(&cluster.handle(4)).await, 121);

    let remove_id = [1, 2, 3].into_iter().find(|id| *id != leader).unwrap();
    let remove = envelope(None, Command::RemoveMember { id: remove_id });
    cluster
        .handle(leader)
        .change_membership(remove_id, ConfChangeType::RemoveNode, &remove, TIMEOUT)
        .await
        .unwrap();
    cluster.stop(remove_id);
    let status = cluster.handle(leader).status();
    assert!(
        !status.voters.contains(&remove_id) && status.voters.contains(&4),
        "{status:?}"
    );
    assert!(
        !cluster
            .handle(4)
            .read(TIMEOUT, |s| s.members.contains_key(&remove_id))
            .await
            .unwrap()
    );
    create_user(&cluster.handle(4), "after-change")
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_rebuilds_state_from_snapshot_and_log() {
    let mut cluster = Cluster::new();
    let n1 = cluster.start(1, true);
    cluster.wait_leader(&[1]).await;
    for i in 0..75 {
        create_user(&n1, &format!("u{i}")).await.unwrap();
    }
    let before = n1.read(TIMEOUT, |s| s.clone()).await.unwrap();
    cluster.stop(1);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let n1 = cluster.start(1, false);
    cluster.wait_leader(&[1]).await;
    let after = n1.read(TIMEOUT, |s| s.clone()).await.unwrap();
    assert_eq!(after, before);
}
