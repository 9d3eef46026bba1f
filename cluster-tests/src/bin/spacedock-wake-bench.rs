//! `spacedock-wake-bench`: wake to first byte for a sleeping Space whose image is cached on its node. It starts
//! a coordinator and an agent (real processes, the containerd at `SPACEDOCK_TEST_CONTAINERD`, which
//! `ops/test.sh` starts), runs a busybox `httpd` Space with a 1-second sleep time, and `--runs` times (default
//! 20): waits until the Space is SLEEPING, then times one plain HTTP request through the ingress from sending
//! it to the first byte of the answer (the ingress wakes the Space and holds the request until the app
//! answers). Needs root.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark harness: panics are how it fails

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use serde_json::json;
use spacedock_cluster_tests::{Agent, ContainersGuard, Coordinator, api, flag_u64, httpd_space};

fn main() {
    let runs = flag_u64("--runs", 20);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("coordinator.toml");
    std::fs::write(
        &config,
        "[flavors]\ninclude_defaults = true\n[[flavors.flavor]]\nname = \"bench-small\"\nvcpu = 1\n\
         memory_gib = 1\ndisk_gib = 1\nprice_per_hour = \"0.01\"\n",
    )
    .unwrap();
    let c = Coordinator::bootstrap_with(dir.path(), &["--config", config.to_str().unwrap()]);
    let admin = c.admin_token();
    let call = |method: &str, path: &str, body: serde_json::Value| {
        api(&c.api_url, &admin, method, path, Some(body)).unwrap()
    };
    let token = call(
        "POST",
        "/api/cluster/join-tokens",
        json!({ "role": "agent" }),
    );
    let namespace = format!("sdbench-wake-{}", std::process::id());
    let _agent = Agent::start(
        dir.path(),
        "bench-node",
        &c.quic_addr,
        token["token"].as_str(),
        &[
            "--container-subnet",
            "10.240.0.0/24",
            "--containerd-namespace",
            &namespace,
        ],
    );
    let _containers = ContainersGuard { namespace };
    httpd_space(
        &c,
        &admin,
        dir.path(),
        "wake",
        "awake",
        &[
            ("hardware", json!({ "flavor": "bench-small" })),
            ("sleeptime", json!({ "seconds": 1 })),
        ],
    );
    let stage = || {
        api(
            &c.api_url,
            &admin,
            "GET",
            "/api/spaces/admin/wake/runtime",
            None,
        )
        .unwrap()["stage"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    let addr = c.api_url.trim_start_matches("http://").to_owned();
    let mut times = Vec::new();
    for i in 0..runs {
        let waited = Instant::now();
        while stage() != "SLEEPING" {
            assert!(waited.elapsed() < Duration::from_secs(120), "never asleep");
            std::thread::sleep(Duration::from_millis(100));
        }
        let mut stream = std::net::TcpStream::connect(&addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let started = Instant::now();
        write!(
            stream,
            "GET / HTTP/1.1\r\nHost: admin-wake.localhost\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut first = [0u8; 12];
        stream.read_exact(&mut first).unwrap();
        let elapsed = started.elapsed();
        assert_eq!(&first[..], b"HTTP/1.1 200", "run {i}");
        println!("run {i}: {:.0} ms", elapsed.as_secs_f64() * 1000.0);
        times.push(elapsed);
    }
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "wake to first byte over {} runs: p50 {:.0} ms, p90 {:.0} ms, min {:.0} ms, max {:.0} ms",
        times.len(),
        ms(times[times.len() / 2]),
        ms(times[times.len() * 9 / 10]),
        ms(times[0]),
        ms(times[times.len() - 1])
    );
}
