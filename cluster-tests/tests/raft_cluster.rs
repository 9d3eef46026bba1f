//! Real coordinator processes: leader `kill -9` under writes, catch-up after restart, a full cluster restart,
//! membership changes under writes, and a minority that must not commit or serve reads.

#![allow(clippy::unwrap_used)] // test harness: panics are how tests fail

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use spacedock_cluster_tests::{Coordinator, api};

const SPACE: &str = "admin/ledger";

struct Cluster {
    dir: tempfile::TempDir,
    nodes: Vec<Coordinator>,
    token: String,
}

impl Cluster {
    fn start(n: u64) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let first = Coordinator::bootstrap(dir.path());
        let token = first.admin_token();
        let mut nodes = vec![first];
        for id in 2..=n {
            let node = Coordinator::join(dir.path(), id, &nodes[0], &token);
            nodes.push(node);
        }
        api(
            &nodes[0].api_url,
            &token,
            "POST",
            "/api/repos/create",
            Some(json!({ "name": "ledger", "type": "space", "sdk": "docker" })),
        )
        .unwrap();
        Cluster { dir, nodes, token }
    }

    fn node(&self, id: u64) -> &Coordinator {
        self.nodes.iter().find(|n| n.id == id).unwrap()
    }

    fn node_mut(&mut self, id: u64) -> &mut Coordinator {
        self.nodes.iter_mut().find(|n| n.id == id).unwrap()
    }

    /// The leader as the given nodes see it (their own view, no quorum round).
    fn leader(&self, among: &[u64]) -> u64 {
        let started = Instant::now();
        loop {
            for id in among {
                if let Ok(status) = api(
                    &self.node(*id).api_url,
                    &self.token,
                    "GET",
                    "/api/cluster/node",
                    None,
                ) && let Some(leader) = status["leader"].as_u64()
                    && among.contains(&leader)
                {
                    return leader;
                }
            }
            assert!(
                started.elapsed() < Duration::from_secs(15),
                "no leader among {among:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The variable keys a node holds, through a linearizable read on that node.
    fn keys_on(&self, id: u64) -> BTreeSet<String> {
        let vars = api(
            &self.node(id).api_url,
            &self.token,
            "GET",
            &format!("/api/spaces/{SPACE}/variables"),
            None,
        )
        .unwrap();
        vars.as_object().unwrap().keys().cloned().collect()
    }
}

/// Writes variables through the given nodes in turn until stopped; records each acknowledged write with its time.
struct Writer {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<(String, Instant)>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Writer {
    /// Four client threads, so one request stuck on a dead node does not stall the others.
    fn start(urls: Vec<String>, token: String, prefix: &'static str) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let threads = (0..4u64)
            .map(|t| {
                let (stop, acked, urls, token) =
                    (stop.clone(), acked.clone(), urls.clone(), token.clone());
                std::thread::spawn(move || {
                    let mut i = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let key = format!("{prefix}_{t}_{i}");
                        let url = &urls[(i + t) as usize % urls.len()];
                        let body = json!({ "key": key, "value": "v" });
                        if api(
                            url,
                            &token,
                            "POST",
                            &format!("/api/spaces/{SPACE}/variables"),
                            Some(body),
                        )
                        .is_ok()
                        {
                            acked.lock().unwrap().push((key, Instant::now()));
                        }
                        i += 1;
                    }
                })
            })
            .collect();
        Writer {
            stop,
            acked,
            threads,
        }
    }

    fn finish(mut self) -> Vec<(String, Instant)> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            t.join().unwrap();
        }
        self.acked.lock().unwrap().clone()
    }
}

fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let started = Instant::now();
    while !f() {
        assert!(started.elapsed() < limit, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn killing_the_leader_under_writes_loses_nothing() {
    let mut cluster = Cluster::start(3);
    let leader = cluster.leader(&[1, 2, 3]);
    let survivors: Vec<u64> = [1, 2, 3].into_iter().filter(|id| *id != leader).collect();
    let urls = survivors
        .iter()
        .map(|id| cluster.node(*id).api_url.clone())
        .collect();
    let writer = Writer::start(urls, cluster.token.clone(), "k");
    std::thread::sleep(Duration::from_millis(700));
    let killed_at = Instant::now();
    cluster.node_mut(leader).kill();
    let new_leader = cluster.leader(&survivors);
    let election = killed_at.elapsed();
    assert!(
        election < Duration::from_secs(2),
        "a new leader took {election:?}"
    );
    std::thread::sleep(Duration::from_millis(2000));
    let acked = writer.finish();

    let first_after = acked
        .iter()
        .find(|(_, at)| *at > killed_at)
        .map(|(_, at)| at.duration_since(killed_at));
    let gap = first_after.expect("no write was acknowledged after the leader died");
    assert!(
        gap < Duration::from_secs(3),
        "the first write after the kill took {gap:?}"
    );
    assert_ne!(new_leader, leader);

    let acked_keys: BTreeSet<String> = acked.iter().map(|(k, _)| k.clone()).collect();
    assert!(
        acked_keys.len() > 10,
        "too few writes: {}",
        acked_keys.len()
    );
    for id in &survivors {
        let held = cluster.keys_on(*id);
        let missing: Vec<_> = acked_keys.difference(&held).collect();
        assert!(
            missing.is_empty(),
            "node {id} lost acknowledged writes: {missing:?}"
        );
    }

    // The killed node restarts and catches up.
    cluster.node_mut(leader).start();
    wait_until(
        "the restarted node caught up",
        Duration::from_secs(20),
        || {
            api(
                &cluster.node(leader).api_url,
                &cluster.token,
                "GET",
                &format!("/api/spaces/{SPACE}/variables"),
                None,
            )
            .map(|v| acked_keys.iter().all(|k| v.get(k).is_some()))
            .unwrap_or(false)
        },
    );
}

#[test]
fn a_full_restart_keeps_everything() {
    let mut cluster = Cluster::start(3);
    for i in 0..20 {
        api(
            &cluster.nodes[i % 3].api_url,
            &cluster.token,
            "POST",
            &format!("/api/spaces/{SPACE}/variables"),
            Some(json!({ "key": format!("r_{i}"), "value": "v" })),
        )
        .unwrap();
    }
    let before = cluster.keys_on(1);
    for node in &mut cluster.nodes {
        node.kill();
    }
    for node in &mut cluster.nodes {
        node.start();
    }
    cluster.leader(&[1, 2, 3]);
    for id in [1, 2, 3] {
        assert_eq!(cluster.keys_on(id), before, "node {id} after restart");
    }
}

#[test]
fn a_lone_node_cannot_commit_or_serve_reads() {
    let mut cluster = Cluster::start(3);
    let leader = cluster.leader(&[1, 2, 3]);
    let lone = [1, 2, 3].into_iter().find(|id| *id != leader).unwrap();
    for id in [1, 2, 3] {
        if id != lone {
            cluster.node_mut(id).kill();
        }
    }
    let url = cluster.node(lone).api_url.clone();
    let write = api(
        &url,
        &cluster.token,
        "POST",
        &format!("/api/spaces/{SPACE}/variables"),
        Some(json!({ "key": "LONE", "value": "v" })),
    );
    assert!(
        write.as_ref().is_err_and(|e| e.contains("HTTP 503")),
        "a lone node acknowledged a write: {write:?}"
    );
    let read = api(
        &url,
        &cluster.token,
        "GET",
        &format!("/api/spaces/{SPACE}/variables"),
        None,
    );
    assert!(
        read.as_ref().is_err_and(|e| e.contains("HTTP 503")),
        "a lone node served a linearizable read: {read:?}"
    );
    // Once a majority is back, the refused write is not there and writes work again.
    let other = [1, 2, 3].into_iter().find(|id| *id != lone).unwrap();
    cluster.node_mut(other).start();
    cluster.leader(&[lone, other]);
    assert!(!cluster.keys_on(lone).contains("LONE"));
}

#[test]
fn members_are_added_and_removed_while_writes_go_on() {
    let mut cluster = Cluster::start(3);
    let urls = vec![
        cluster.node(1).api_url.clone(),
        cluster.node(3).api_url.clone(),
    ];
    let writer = Writer::start(urls, cluster.token.clone(), "m");
    std::thread::sleep(Duration::from_millis(300));
    let fourth = Coordinator::join(cluster.dir.path(), 4, cluster.node(1), &cluster.token);
    cluster.nodes.push(fourth);
    api(
        &cluster.node(1).api_url,
        &cluster.token,
        "DELETE",
        "/api/cluster/members/2",
        None,
    )
    .unwrap();
    cluster.node_mut(2).kill();
    std::thread::sleep(Duration::from_millis(700));
    let acked: BTreeSet<String> = writer.finish().into_iter().map(|(k, _)| k).collect();
    assert!(
        acked.len() > 10,
        "too few writes during the change: {}",
        acked.len()
    );

    let status = api(
        &cluster.node(1).api_url,
        &cluster.token,
        "GET",
        "/api/cluster/status",
        None,
    )
    .unwrap();
    let ids: Vec<u64> = status["members"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["id"].as_u64())
        .collect();
    assert_eq!(ids, [1, 3, 4], "{status}");
    let roles: Vec<&str> = status["members"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["role"].as_str())
        .collect();
    assert!(
        roles.iter().all(|r| *r == "leader" || *r == "follower"),
        "{status}"
    );
    for id in [1, 3, 4] {
        let held = cluster.keys_on(id);
        assert!(
            acked.is_subset(&held),
            "node {id} misses acknowledged writes"
        );
    }
    let _: Value = status;
}
