//! Three coordinators' Raft nodes in one process, talking over real QUIC with mutual TLS on loopback.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test harness: panics are how tests fail

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use raft::eraftpb::ConfChangeType;
use spacedock_coordinator::blobs::{BlobStore, Blobs};
use spacedock_coordinator::engine::{Engine, SledEngine};
use spacedock_coordinator::join::Authority;
use spacedock_coordinator::node::{self, NodeConfig, NodeHandle};
use spacedock_coordinator::peer::{Peers, QuicTransport};
use spacedock_coordinator::quic_server;
use spacedock_coordinator::raft_store::RaftStore;
use spacedock_coordinator::tls::{self, ClusterCa};
use spacedock_coordinator_core::access::hash_secret;
use spacedock_coordinator_core::command::{Actor, NewToken};
use spacedock_coordinator_core::state::{Member, Role};
use spacedock_coordinator_core::{Command, Envelope, State, apply};
use spacedock_shared::flavor::Catalog;

const ADMIN: &str = "hf_quic_admin";
const TIMEOUT: Duration = Duration::from_secs(5);

fn envelope(n: u64, actor: Option<&str>, command: Command) -> Envelope {
    Envelope {
        version: 1,
        at: 1,
        request_id: n,
        actor: actor.map(|t| Actor {
            token_hash: hash_secret(t),
        }),
        command,
    }
}

fn member(id: u64, addr: SocketAddr) -> Member {
    Member {
        id,
        api_url: String::new(),
        quic_addr: addr.to_string(),
    }
}

struct Started {
    handle: NodeHandle,
    addr: SocketAddr,
    peers: Peers,
}

fn start(
    id: u64,
    ca: &ClusterCa,
    dir: &std::path::Path,
    addrs: Arc<Mutex<HashMap<u64, SocketAddr>>>,
    bootstrap: bool,
) -> Started {
    let identity = ca.issue(&format!("coordinator-{id}")).unwrap();
    let endpoint = quinn::Endpoint::server(
        tls::server_config(&identity).unwrap(),
        "127.0.0.1:0".parse().unwrap(),
    )
    .unwrap();
    let addr = endpoint.local_addr().unwrap();
    addrs.lock().unwrap().insert(id, addr);
    let engine: Arc<dyn Engine> = Arc::new(SledEngine::open(&dir.join(format!("n{id}"))).unwrap());
    let store = RaftStore::open(engine).unwrap();
    if bootstrap {
        let mut state = State::default();
        let cmd = Command::Bootstrap {
            cluster_id: "quic".into(),
            member: member(id, addr),
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
        };
        apply(&mut state, &envelope(0, None, cmd)).unwrap();
        node::bootstrap(&store, id, &state).unwrap();
    }
    let resolve = move |peer: u64| addrs.lock().unwrap().get(&peer).copied();
    let peers = Peers {
        id,
        endpoint: endpoint.clone(),
        client_config: tls::client_config(&identity).unwrap(),
        resolve: Arc::new(resolve),
    };
    let transport = QuicTransport::new(peers.clone(), tokio::runtime::Handle::current());
    let config = NodeConfig {
        tick: Duration::from_millis(20),
        ..NodeConfig::new(id)
    };
    let handle = node::start(config, store, Arc::new(transport)).unwrap();
    let authority = Authority {
        ca: ca.clone(),
        ca_fingerprint: tls::ca_fingerprint(&ca.cert_pem).unwrap(),
        node: handle.clone(),
        liveness: Default::default(),
        blobs: Blobs::new(
            BlobStore::new(&dir.join(format!("blobs-{id}"))).unwrap(),
            Some(peers.clone()),
            handle.clone(),
        ),
        links: Default::default(),
        apps_host: "localhost".into(),
        public_url: String::new(),
        build_logs: Default::default(),
    };
    tokio::spawn(quic_server::serve(endpoint, Arc::new(authority)));
    if bootstrap {
        handle.campaign();
    }
    Started {
        handle,
        addr,
        peers,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_coordinators_replicate_over_quic() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ClusterCa::generate("quic").unwrap();
    let addrs = Arc::new(Mutex::new(HashMap::new()));
    let n1 = start(1, &ca, dir.path(), addrs.clone(), true);
    let started = Instant::now();
    while n1.handle.status().role != "leader" {
        assert!(started.elapsed() < TIMEOUT, "node 1 did not become leader");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut others = Vec::new();
    for id in [2, 3] {
        let n = start(id, &ca, dir.path(), addrs.clone(), false);
        let add = envelope(
            10 + id,
            None,
            Command::AddMember {
                member: member(id, n.addr),
            },
        );
        n1.handle
            .change_membership(id, ConfChangeType::AddNode, &add, TIMEOUT)
            .await
            .unwrap();
        others.push(n);
    }
    for i in 0..50u64 {
        let cmd = Command::CreateUser {
            id: format!("u{i}"),
            name: format!("user{i}"),
            fullname: String::new(),
            email: None,
            is_admin: false,
        };
        let via = if i % 2 == 0 {
            &others[0].handle
        } else {
            &n1.handle
        };
        via.propose(&envelope(100 + i, Some(ADMIN), cmd), TIMEOUT)
            .await
            .unwrap();
    }
    for n in [&n1, &others[0], &others[1]] {
        assert_eq!(n.handle.read(TIMEOUT, |s| s.users.len()).await.unwrap(), 51);
        assert_eq!(n.handle.read_local(|s| s.members.len()), 3);
    }
    // Status over the peer connection, as `GET /api/cluster/status` asks it.
    let reply = others[1].peers.status(1, TIMEOUT).await.unwrap();
    assert_eq!(
        (reply.id, reply.role.as_str(), reply.leader),
        (1, "leader", 1)
    );
    assert!(reply.applied_index >= 54, "{reply:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_certificates_from_the_cluster_ca_are_accepted() {
    let ca = ClusterCa::generate("real").unwrap();
    let server_id = ca.issue("coordinator-1").unwrap();
    let endpoint = quinn::Endpoint::server(
        tls::server_config(&server_id).unwrap(),
        "127.0.0.1:0".parse().unwrap(),
    )
    .unwrap();
    let addr = endpoint.local_addr().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(incoming) = endpoint.accept().await {
            let _ = tx.send(incoming.await.map(|c| tls::peer_name(&c)));
        }
    });
    let client = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let dial = |identity: tls::Identity| {
        let connecting = client
            .connect_with(
                tls::client_config(&identity).unwrap(),
                addr,
                tls::SERVER_NAME,
            )
            .unwrap();
        tokio::spawn(async move {
            if let Ok(c) = connecting.await {
                let _ = c.open_bi().await;
            }
        })
    };

    dial(ca.issue("coordinator-2").unwrap());
    let accepted = tokio::time::timeout(TIMEOUT, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(accepted.unwrap().as_deref(), Some("coordinator-2"));

    let mut rogue = ClusterCa::generate("rogue")
        .unwrap()
        .issue("coordinator-3")
        .unwrap();
    rogue.ca_pem = ca.cert_pem.clone(); // trusts the real cluster, but is signed by another CA
    dial(rogue);
    let refused = tokio::time::timeout(TIMEOUT, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(
        refused.is_err(),
        "a certificate from another CA was accepted: {refused:?}"
    );
}
