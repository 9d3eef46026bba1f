//! `spacedock-bench`: the coordinator benchmarks of BENCHMARKS.md, on a 3-coordinator cluster of real processes
//! on this machine (sled fsyncs on every Raft write).
//!
//! 1. Committed writes per second and latency (p50, p99) with 1, 64 and 256 concurrent HTTP clients (async tasks
//!    on two threads, one keep-alive connection each, spread over the three coordinators; followers forward to
//!    the leader), each setting Space secrets (`POST /api/spaces/{id}/secrets`, answered `{}` once applied).
//! 2. Leader failover: `kill -9` of the leader while 8 clients write through the survivors, timed to the next
//!    acknowledged write, over `--kills` rounds (the killed node restarts and catches up between rounds).
//!
//! Build with `cargo build --release --workspace --bins`, then run `target/release/spacedock-bench`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark harness: panics are how it fails

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use spacedock_cluster_tests::{Coordinator, api};

const SPACE: &str = "admin/bench";

// The load generator shares the CPUs with the cluster; keep its own allocation cost low.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let value = spacedock_cluster_tests::flag_u64;
    let seconds = value("--seconds", 5);
    let kills = value("--kills", 20);
    let dir = tempfile::tempdir().unwrap();
    let first = Coordinator::bootstrap(dir.path());
    let token = first.admin_token();
    let mut nodes = vec![first];
    for id in 2..=3 {
        let node = Coordinator::join(dir.path(), id, &nodes[0], &token);
        nodes.push(node);
    }
    api(
        &nodes[0].api_url,
        &token,
        "POST",
        "/api/repos/create",
        Some(json!({ "name": "bench", "type": "space", "sdk": "docker" })),
    )
    .unwrap();
    let urls: Vec<String> = nodes.iter().map(|n| n.api_url.clone()).collect();

    println!(
        "# spacedock-bench: 3 coordinators, {} CPUs",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("clients  writes/s  p50_ms  p99_ms  errors");
    for clients in [1usize, 64, 256] {
        let r = throughput(&urls, &token, clients, Duration::from_secs(seconds));
        println!(
            "{clients:>7}  {:>8.0}  {:>6.2}  {:>6.2}  {:>6}",
            r.per_second, r.p50_ms, r.p99_ms, r.errors
        );
    }

    println!("\nround  failover_ms");
    let mut failovers = Vec::new();
    for round in 1..=kills {
        failovers.push(failover(&mut nodes, &token));
        println!(
            "{round:>5}  {:>11.0}",
            failovers.last().unwrap().as_secs_f64() * 1000.0
        );
    }
    if failovers.is_empty() {
        return;
    }
    failovers.sort();
    let pick = |q: f64| {
        failovers[((failovers.len() as f64 - 1.0) * q).round() as usize].as_secs_f64() * 1000.0
    };
    println!(
        "failover over {} kills: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        failovers.len(),
        pick(0.5),
        pick(0.99),
        pick(1.0)
    );
}

struct Throughput {
    per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
}

/// `clients` concurrent keep-alive HTTP/1.1 connections (async tasks, not threads, so the load generator stays
/// cheap next to the cluster), spread over the coordinators.
fn throughput(urls: &[String], token: &str, clients: usize, duration: Duration) -> Throughput {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let deadline = tokio::time::Instant::now() + duration;
        let started = Instant::now();
        let tasks: Vec<_> = (0..clients)
            .map(|c| {
                let addr = urls[c % urls.len()]
                    .trim_start_matches("http://")
                    .to_owned();
                let token = token.to_owned();
                tokio::spawn(async move { client_loop(&addr, &token, c, deadline).await })
            })
            .collect();
        let mut all = Vec::new();
        let mut errors = 0;
        for t in tasks {
            let (l, e) = t.await.unwrap();
            all.extend(l);
            errors += e;
        }
        let elapsed = started.elapsed().as_secs_f64();
        all.sort();
        let pick = |q: f64| {
            all.get(((all.len().max(1) - 1) as f64 * q).round() as usize)
                .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
        };
        Throughput {
            per_second: all.len() as f64 / elapsed,
            p50_ms: pick(0.5),
            p99_ms: pick(0.99),
            errors,
        }
    })
}

/// One client: sets secrets on one keep-alive connection until the deadline; returns latencies and errors.
async fn client_loop(
    addr: &str,
    token: &str,
    c: usize,
    deadline: tokio::time::Instant,
) -> (Vec<Duration>, u64) {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    let mut latencies = Vec::new();
    let mut errors = 0u64;
    let mut stream = BufReader::new(tokio::net::TcpStream::connect(addr).await.unwrap());
    let mut i = 0usize;
    while tokio::time::Instant::now() < deadline {
        let body = format!("{{\"key\":\"C{c}_{}\",\"value\":\"{i}\"}}", i % 50);
        let request = format!(
            "POST /api/spaces/{SPACE}/secrets HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let t = Instant::now();
        stream
            .get_mut()
            .write_all(request.as_bytes())
            .await
            .unwrap();
        let mut status_line = String::new();
        stream.read_line(&mut status_line).await.unwrap();
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            stream.read_line(&mut line).await.unwrap();
            if line == "\r\n" || line.is_empty() {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; length];
        stream.read_exact(&mut body).await.unwrap();
        if status_line.split_whitespace().nth(1) == Some("200") {
            latencies.push(t.elapsed());
        } else {
            errors += 1;
        }
        i += 1;
    }
    (latencies, errors)
}

fn leader(nodes: &[Coordinator], token: &str) -> usize {
    let started = Instant::now();
    loop {
        for n in nodes.iter().filter(|n| n.is_running()) {
            if let Ok(s) = api(&n.api_url, token, "GET", "/api/cluster/node", None)
                && let Some(l) = s["leader"].as_u64()
                && let Some(idx) = nodes.iter().position(|n| n.id == l && n.is_running())
            {
                return idx;
            }
        }
        assert!(started.elapsed() < Duration::from_secs(30), "no leader");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Kills the leader under writes; returns the time from the kill to the first acknowledged write that was sent
/// after it.
fn failover(nodes: &mut [Coordinator], token: &str) -> Duration {
    let leader = leader(nodes, token);
    let survivors: Vec<String> = nodes
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != leader)
        .map(|(_, n)| n.api_url.clone())
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let acks: Arc<Mutex<Vec<(Instant, Instant)>>> = Arc::new(Mutex::new(Vec::new()));
    let threads: Vec<_> = (0..8usize)
        .map(|c| {
            let (urls, token, stop, acks) = (
                survivors.clone(),
                token.to_owned(),
                stop.clone(),
                acks.clone(),
            );
            std::thread::spawn(move || {
                let mut i = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let body = json!({ "key": format!("F{c}"), "value": i.to_string() });
                    let sent = Instant::now();
                    if api(
                        &urls[(c + i) % urls.len()],
                        &token,
                        "POST",
                        &format!("/api/spaces/{SPACE}/secrets"),
                        Some(body),
                    )
                    .is_ok()
                    {
                        acks.lock().unwrap().push((sent, Instant::now()));
                    }
                    i += 1;
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let killed_at = Instant::now();
    nodes[leader].kill();
    let deadline = killed_at + Duration::from_secs(30);
    let gap = loop {
        let first = acks
            .lock()
            .unwrap()
            .iter()
            .filter(|(sent, _)| *sent > killed_at)
            .map(|(_, acked)| *acked)
            .min();
        if let Some(at) = first {
            break at.duration_since(killed_at);
        }
        assert!(
            Instant::now() < deadline,
            "no write acknowledged within 30 s of the kill"
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    nodes[leader].start();
    // Let it catch up before the next round.
    let url = nodes[leader].api_url.clone();
    let started = Instant::now();
    while api(
        &url,
        token,
        "GET",
        &format!("/api/spaces/{SPACE}/variables"),
        None,
    )
    .is_err()
    {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "restarted node did not catch up"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    gap
}
