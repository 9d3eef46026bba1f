//! `spacedock-placement-bench`: placement throughput on a simulated fleet, the scheduler alone and committed
//! through Raft. The fleet is a test harness: `--nodes` nodes (default 6,100; one in four with 4 NVIDIA A10G,
//! the rest 32-core CPU nodes) registered straight into the first snapshot, with `--spaces` Spaces (default
//! 10,000; one in five on `a10g-small`, the rest `cpu-basic`) that run a stored image and wait for placement.
//! Then, on a one-member Raft group over sled in a temporary directory (every entry fsynced):
//! 1. the scheduler alone: `schedule::plan` for every waiting Space, timed;
//! 2. committed: scheduler passes as the leader runs them (plan, then `Schedule` entries of up to 500 steps,
//!    each committed and applied) until every Space is placed, timed from the first pass to the last commit.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark harness: panics are how it fails

use std::sync::Arc;
use std::time::{Duration, Instant};

use spacedock_coordinator::engine::{Engine, SledEngine};
use spacedock_coordinator::node::{self, NodeConfig, Transport};
use spacedock_coordinator::raft_store::RaftStore;
use spacedock_coordinator_core::command::{ENVELOPE_VERSION, NewToken, ScheduleStep, SpaceSpec};
use spacedock_coordinator_core::state::{Image, Member, RepoKind, Role};
use spacedock_coordinator_core::{Command, Envelope, State, apply, schedule};
use spacedock_shared::flavor::Catalog;
use spacedock_shared::wire::{GpuInfo, ImageConfig, Inventory, Layer};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// One member: nothing to send.
struct Alone;

impl Transport for Alone {
    fn send(&self, _messages: Vec<raft::eraftpb::Message>) {}
}

fn flag(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map_or(default, |v| v.parse().expect("a number"))
}

fn envelope(at: u64, actor: Option<&str>, command: Command) -> Envelope {
    Envelope {
        version: ENVELOPE_VERSION,
        at,
        request_id: at,
        actor: actor.map(|hash| spacedock_coordinator_core::command::Actor {
            token_hash: hash.to_owned(),
        }),
        command,
    }
}

fn inventory(i: usize) -> Inventory {
    let gpu_node = i.is_multiple_of(4);
    Inventory {
        name: format!("node-{i:05}"),
        labels: vec![],
        cpu_cores: 32,
        memory_bytes: 256 << 30,
        disk_free_bytes: 2 << 40,
        kernel: "6.1".into(),
        containerd_version: "1.6.20".into(),
        driver_version: String::new(),
        cuda_version: String::new(),
        gpus: (0..if gpu_node { 4 } else { 0 })
            .map(|g| GpuInfo {
                index: g,
                uuid: format!("GPU-{i:05}-{g}"),
                name: "NVIDIA A10G".into(),
                memory_total_bytes: 23028 << 20,
                mig_mode: String::new(),
                mig_devices: vec![],
                compute_capability: "8.6".into(),
                pci_bus_id: String::new(),
                power_limit_milliwatts: 300_000,
                ecc_uncorrected: None,
                xid_errors: 0,
                last_xid: None,
            })
            .collect(),
        gpu_note: String::new(),
    }
}

/// The fleet and the waiting Spaces, built by applying commands to an empty state.
fn fleet(nodes: usize, spaces: usize) -> State {
    let admin = spacedock_coordinator_core::access::hash_secret("bench-admin");
    let mut state = State::default();
    let mut at = 1_700_000_000_000u64;
    let mut run = |state: &mut State, actor: Option<&str>, command: Command| {
        at += 1;
        apply(state, &envelope(at, actor, command)).unwrap();
    };
    run(
        &mut state,
        None,
        Command::Bootstrap {
            cluster_id: "bench".into(),
            member: Member {
                id: 1,
                api_url: "http://127.0.0.1:1".into(),
                quic_addr: "127.0.0.1:1".into(),
            },
            flavors: Catalog::huggingface().iter().cloned().collect(),
            admin_id: "u0".into(),
            admin_token: NewToken {
                id: "t0".into(),
                owner: "admin".into(),
                display_name: "bench".into(),
                role: Role::Admin,
                secret_hash: admin.clone(),
                expires_at: None,
            },
        },
    );
    for i in 0..nodes {
        run(
            &mut state,
            None,
            Command::RegisterNode {
                inventory: inventory(i),
            },
        );
    }
    run(
        &mut state,
        Some(&admin),
        Command::PutImage {
            image: Image {
                name: "bench/app:1".into(),
                id: format!("sha256:{}", "c".repeat(64)),
                manifest: format!("sha256:{}", "d".repeat(64)),
                config: ImageConfig {
                    cmd: vec!["app".into()],
                    ..Default::default()
                },
                layers: vec![Layer {
                    digest: format!("sha256:{}", "a".repeat(64)),
                    size: 1,
                }],
                created_at: 0,
            },
        },
    );
    for i in 0..spaces {
        let id = format!("admin/s{i:05}");
        let flavor = if i % 5 == 0 {
            "a10g-small"
        } else {
            "cpu-basic"
        };
        run(
            &mut state,
            Some(&admin),
            Command::CreateRepo {
                uid: format!("r{i:05}"),
                kind: RepoKind::Space,
                id: id.clone(),
                private: false,
                space: Some(SpaceSpec {
                    sdk: "docker".into(),
                    hardware: Some(flavor.into()),
                    ..Default::default()
                }),
            },
        );
        run(
            &mut state,
            Some(&admin),
            Command::SetSpaceImage {
                id,
                name: "bench/app:1".into(),
                port: 7860,
                startup_timeout_s: 60,
            },
        );
    }
    state
}

fn main() {
    let nodes = flag("--nodes", 6100);
    let spaces = flag("--spaces", 10_000);
    let built = Instant::now();
    let state = fleet(nodes, spaces);
    println!(
        "# spacedock-placement-bench: {nodes} nodes ({} with GPUs), {spaces} Spaces waiting (built in {:.1} s)",
        nodes.div_ceil(4),
        built.elapsed().as_secs_f64()
    );

    // 1. The scheduler alone.
    let started = Instant::now();
    let steps = schedule::plan(&state, "node-03000");
    let alone = started.elapsed();
    let placed = steps
        .iter()
        .filter(|s| matches!(s, schedule::Step::Place { .. }))
        .count();
    println!(
        "scheduler alone: {placed} placements in {:.3} s: {:.0} placements/s",
        alone.as_secs_f64(),
        placed as f64 / alone.as_secs_f64()
    );

    // 2. Committed through Raft, over sled with fsync.
    let dir = tempfile::tempdir().unwrap();
    let engine: Arc<dyn Engine> = Arc::new(SledEngine::open(dir.path()).unwrap());
    let store = RaftStore::open(engine).unwrap();
    node::bootstrap(&store, 1, &state).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let handle = node::start(NodeConfig::new(1), store, Arc::new(Alone)).unwrap();
        handle.campaign();
        while handle.status().role != "leader" {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let started = Instant::now();
        let mut passes = 0;
        loop {
            let start = format!("node-{:05}", rand::random::<u32>() as usize % nodes.max(1));
            let batch: Vec<ScheduleStep> = handle.read_local(|s| {
                schedule::plan(s, &start)
                    .into_iter()
                    .enumerate()
                    .filter(|(_, step)| matches!(step, schedule::Step::Place { .. }))
                    .filter_map(|(i, step)| step.into_step(s, format!("a{passes}-{i}")))
                    .collect()
            });
            if batch.is_empty() {
                break;
            }
            passes += 1;
            for steps in batch.chunks(500) {
                let command = Command::Schedule {
                    steps: steps.to_vec(),
                };
                let e = envelope(1_800_000_000_000 + passes, None, command);
                handle.propose(&e, Duration::from_secs(30)).await.unwrap();
            }
        }
        let committed = started.elapsed();
        let placed = handle.read_local(|s| s.allocations.len());
        println!(
            "committed through Raft: {placed} placements in {passes} pass(es), {:.3} s: {:.0} placements/s",
            committed.as_secs_f64(),
            placed as f64 / committed.as_secs_f64()
        );
        handle.stop();
    });
}
