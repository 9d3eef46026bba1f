//! `spacedock-fleet-bench`: how much of a core one coordinator spends on a fleet's heartbeats. It starts a
//! coordinator, simulates `--agents` agents (default 6,100, the node count of Nomad's 2-million-container run),
//! each with its own CA-signed certificate, its own QUIC connection, a registration, and a heartbeat every
//! `--interval` seconds (default 10), then measures the coordinator's CPU time over `--seconds` (default 30).
//!
//! A test harness, never a default: the simulated agents send real wire messages over real QUIC, but run no
//! containers. Build with `cargo build --release --workspace --bins`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark harness: panics are how it fails

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use spacedock_cluster_tests::{Coordinator, api};
use spacedock_net::tls::{self, ClusterCa};
use spacedock_net::{FramedReader, dial_handshake, send};
use spacedock_shared::wire::{self, Heartbeat, Inventory, Role};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let value = spacedock_cluster_tests::flag_u64;
    let n_agents = value("--agents", 6100);
    let interval = Duration::from_secs(value("--interval", 10));
    let window = Duration::from_secs(value("--seconds", 30));

    let dir = tempfile::tempdir().unwrap();
    let c = Coordinator::bootstrap_with(dir.path(), &["--node-ttl-seconds", "60"]);
    let admin = c.admin_token();
    let tls_dir = c.data_dir.join("tls");
    let ca = ClusterCa {
        cert_pem: std::fs::read_to_string(tls_dir.join("ca.pem")).unwrap(),
        key_pem: std::fs::read_to_string(tls_dir.join("ca.key")).unwrap(),
    };
    let pid = c.pid().expect("coordinator pid");
    let addr: SocketAddr = c.quic_addr.parse().unwrap();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let registered = Arc::new(AtomicU64::new(0));
    let beats = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    runtime.block_on(async {
        let endpoint = quinn::Endpoint::client("0.0.0.0:0".parse().unwrap()).unwrap();
        let gate = Arc::new(tokio::sync::Semaphore::new(64));
        for i in 0..n_agents {
            let identity = ca.issue(&format!("agent-sim-{i}")).unwrap();
            let config = tls::client_config(&identity).unwrap();
            let (endpoint, registered, beats, gate) = (
                endpoint.clone(),
                registered.clone(),
                beats.clone(),
                gate.clone(),
            );
            tokio::spawn(async move {
                let permit = gate.acquire_owned().await.unwrap();
                let connection = endpoint
                    .connect_with(config, addr, tls::SERVER_NAME)
                    .unwrap()
                    .await
                    .unwrap();
                let (mut tx, rx) = connection.open_bi().await.unwrap();
                let mut rx = FramedReader::new(rx, wire::DEFAULT_MAX_FRAME_BYTES);
                let name = format!("sim-{i}");
                dial_handshake(
                    &mut rx,
                    &mut tx,
                    Role::Agent,
                    "fleet-bench",
                    &name,
                    Duration::from_secs(30),
                )
                .await
                .unwrap();
                let inventory = Inventory {
                    name,
                    labels: vec![],
                    cpu_cores: 64,
                    memory_bytes: 512 << 30,
                    disk_free_bytes: 4 << 40,
                    kernel: "6.1".into(),
                    containerd_version: "1.6.20".into(),
                    driver_version: String::new(),
                    cuda_version: String::new(),
                    gpus: vec![],
                    gpu_note: String::new(),
                };
                send(&mut tx, &inventory.into()).await.unwrap();
                match rx.recv().await.unwrap() {
                    Some(wire::Message::Registered(_)) => {}
                    other => panic!("agent {i} not registered: {other:?}"),
                }
                drop(permit);
                registered.fetch_add(1, Ordering::Relaxed);
                // Spread the beats over the interval, as a real fleet's are.
                tokio::time::sleep(interval.mul_f64((i % 1000) as f64 / 1000.0)).await;
                let mut seq = 0;
                loop {
                    seq += 1;
                    if send(&mut tx, &Heartbeat { seq }.into()).await.is_err() {
                        return;
                    }
                    // The leader also sends the (empty) set of allocations this node should run.
                    loop {
                        match rx.recv().await {
                            Ok(Some(wire::Message::HeartbeatAck(_))) => {
                                beats.fetch_add(1, Ordering::Relaxed);
                                break;
                            }
                            Ok(Some(wire::Message::Assignments(_))) => {}
                            _ => return,
                        }
                    }
                    tokio::time::sleep(interval).await;
                }
            });
        }
        while registered.load(Ordering::Relaxed) < n_agents {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        println!(
            "# spacedock-fleet-bench: {n_agents} simulated agents registered in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        // Let the heartbeats settle into their schedule, then measure.
        tokio::time::sleep(interval).await;
        let (cpu0, beats0, t0) = (
            cpu_seconds(pid),
            beats.load(Ordering::Relaxed),
            Instant::now(),
        );
        tokio::time::sleep(window).await;
        let (cpu1, beats1, elapsed) = (
            cpu_seconds(pid),
            beats.load(Ordering::Relaxed),
            t0.elapsed().as_secs_f64(),
        );
        let share = (cpu1 - cpu0) / elapsed;
        println!("heartbeats/s  coordinator_cpu_share_of_one_core");
        println!(
            "{:>12.0}  {:>6.3}",
            (beats1 - beats0) as f64 / elapsed,
            share
        );
        let nodes = api(&c.api_url, &admin, "GET", "/api/nodes", None).unwrap();
        let ready = nodes
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| n["state"] == "ready")
            .count();
        println!("nodes ready: {ready} of {n_agents}");
    });
}

/// User plus system CPU seconds of a process, from /proc.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}
