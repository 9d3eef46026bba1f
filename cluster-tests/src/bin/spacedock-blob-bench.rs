//! `spacedock-blob-bench`: blob transfer from the cluster to an agent over QUIC (the agent's own `Fetcher`:
//! mutual-TLS connections, parallel ranges, raw bytes after a `BlobHeader`, written to a file and checked against
//! the sha256 digest) against the same bytes over plain HTTP from the same coordinator
//! (`GET /api/blobs/{digest}`, written to a file and checked the same way), on loopback, alternating, in one run. It starts a coordinator,
//! uploads a random blob of `--mib` MiB (default 256), then downloads it `--runs` times each way (default 5),
//! discarding the bytes. Prints each run, the medians and their ratio.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark harness: panics are how it fails

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use sha2::Digest as _;
use spacedock_agent::fetch::Fetcher;
use spacedock_cluster_tests::{Coordinator, flag_u64};
use spacedock_net::tls::ClusterCa;

fn main() {
    let mib = flag_u64("--mib", 256);
    let runs = flag_u64("--runs", 5);
    let dir = tempfile::tempdir().unwrap();
    let c = Coordinator::bootstrap(dir.path());
    let admin = c.admin_token();

    let mut bytes = vec![0u8; (mib as usize) << 20];
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for chunk in bytes.chunks_mut(8) {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        chunk.copy_from_slice(&state.to_le_bytes()[..chunk.len()]);
    }
    let digest = format!("sha256:{}", hex::encode(sha2::Sha256::digest(&bytes)));
    let url = format!("{}/api/blobs/{digest}", c.api_url);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(true)
        .build()
        .into();
    agent
        .put(&url)
        .header("Authorization", &format!("Bearer {admin}"))
        .send(&bytes[..])
        .expect("upload");
    drop(bytes);

    let tls_dir = c.data_dir.join("tls");
    let ca = ClusterCa {
        cert_pem: std::fs::read_to_string(tls_dir.join("ca.pem")).unwrap(),
        key_pem: std::fs::read_to_string(tls_dir.join("ca.key")).unwrap(),
    };
    let identity = ca.issue("agent-bench").unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let work = tempfile::tempdir().unwrap();
    let fetcher = runtime
        .block_on(async {
            Fetcher::new(
                &identity,
                vec![c.quic_addr.clone()],
                spacedock_shared::wire::Role::Agent,
                "bench",
                work.path(),
            )
        })
        .unwrap();
    let size = mib << 20;

    // The agent's own path: parallel ranges over QUIC into a file, then the sha256 check.
    let quic = || {
        let started = Instant::now();
        let path = runtime
            .block_on(fetcher.fetch(&digest, Some(size)))
            .unwrap();
        let elapsed = started.elapsed();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), size);
        std::fs::remove_file(path).unwrap();
        elapsed
    };
    // The same bytes over HTTP into a file, with the same check.
    let http = || {
        let started = Instant::now();
        let mut response = agent
            .get(&url)
            .header("Authorization", &format!("Bearer {admin}"))
            .call()
            .unwrap();
        let mut reader = response.body_mut().with_config().limit(u64::MAX).reader();
        let path = work.path().join("http.blob");
        let mut file = std::fs::File::create(&path).unwrap();
        let mut hasher = sha2::Sha256::new();
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let got = reader.read(&mut buf).unwrap();
            if got == 0 {
                break;
            }
            file.write_all(&buf[..got]).unwrap();
            hasher.update(&buf[..got]);
        }
        file.sync_all().unwrap();
        assert_eq!(format!("sha256:{}", hex::encode(hasher.finalize())), digest);
        let elapsed = started.elapsed();
        std::fs::remove_file(path).unwrap();
        elapsed
    };
    let rate = |d: Duration| mib as f64 / d.as_secs_f64();
    let (mut q, mut h) = (Vec::new(), Vec::new());
    for i in 0..runs {
        let tq = quic();
        let th = http();
        println!(
            "run {i}: QUIC {:.0} MiB/s, HTTP {:.0} MiB/s",
            rate(tq),
            rate(th)
        );
        q.push(rate(tq));
        h.push(rate(th));
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (mq, mh) = (median(&mut q), median(&mut h));
    println!(
        "{mib} MiB blob, {runs} runs each: QUIC median {mq:.0} MiB/s, HTTP median {mh:.0} MiB/s, ratio {:.2}x",
        mq / mh
    );
}
