//! `spacedock-build-bench`: the builder's timings on a real coordinator and builder (processes; RUN steps in
//! the containerd at `SPACEDOCK_TEST_CONTAINERD`, which `ops/test.sh` starts; needs root).
//!
//! A Docker Space of `--files` small files (default 1,000) on `busybox:latest` (imported from the machine's
//! busybox-static) with a RUN step and `COPY . /app`, preloading a model repo with a `--preload-mib` file
//! (default 32), is pushed with git. Then, `--runs` times (default 7) each, interleaved: a no-op rebuild (an
//! empty commit: the same tree), a one-file change, and a full rebuild (a factory restart: no cache). Each
//! build's time is the builder's own, from taking the job to its result (the `built ... in N ms` line of the
//! build log), so queueing and the Raft round trips around it are left out; the digest of every no-op rebuild
//! is checked to be the one before. A second Space with the same preload (and its own README) then shows the
//! bytes its build uploaded (the `pushed N bytes` line) against the first's and its app layer's size. Last, blake3 throughput over a build context held
//! in memory (`layer::entries_hash`, one thread).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark harness: panics are how it fails

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use spacedock_builder::layer::{Entry, Kind, entries_hash};
use spacedock_cluster_tests::git::{clone, commit, git_ok};
use spacedock_cluster_tests::{
    Agent, ContainersGuard, Coordinator, api, api_bytes, busybox_image, flag_u64, run, sse_data,
};

struct Bench {
    c: Coordinator,
    admin: String,
    dir: tempfile::TempDir,
}

impl Bench {
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        api(&self.c.api_url, &self.admin, method, path, body).unwrap()
    }

    /// The newest build's log lines.
    fn build_log(&self, id: &str) -> Vec<String> {
        let path = format!("/api/spaces/{id}/logs/build");
        sse_data(&api_bytes(&self.c.api_url, &self.admin, &path))
            .into_iter()
            .map(|l| l.trim_end().to_owned())
            .collect()
    }

    /// Waits for a build newer than `before` to finish; returns (builder ms, config digest, bytes pushed).
    fn wait_build(&self, id: &str, before: &[String]) -> (u64, String, u64) {
        let started = Instant::now();
        loop {
            let log = self.build_log(id);
            let done = log.iter().find(|l| l.starts_with("built sha256:"));
            if let Some(line) = done
                && log != before
            {
                if let Some(failed) = log.iter().find(|l| l.starts_with("failed at")) {
                    panic!("{failed}");
                }
                let ms = line
                    .rsplit(" in ")
                    .next()
                    .and_then(|t| t.strip_suffix(" ms"))
                    .and_then(|t| t.parse().ok())
                    .unwrap();
                let digest = line.split_whitespace().nth(1).unwrap().to_owned();
                let pushed = log
                    .iter()
                    .find_map(|l| l.strip_prefix("pushed "))
                    .and_then(|l| l.split_whitespace().next())
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0);
                return (ms, digest, pushed);
            }
            if let Some(failed) = log.iter().find(|l| l.starts_with("failed at")) {
                panic!("{failed}");
            }
            assert!(started.elapsed() < Duration::from_secs(300), "{log:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let runs = flag_u64("--runs", 7);
    let files = flag_u64("--files", 1000);
    let preload_mib = flag_u64("--preload-mib", 32);
    let dir = tempfile::tempdir().unwrap();
    let c = Coordinator::bootstrap(dir.path());
    let admin = c.admin_token();
    let bench = Bench { c, admin, dir };
    let token = bench.call(
        "POST",
        "/api/cluster/join-tokens",
        Some(json!({ "role": "builder" })),
    );
    let namespace = format!("sdbench-build-{}", std::process::id());
    let builder = Agent::start_builder(
        bench.dir.path(),
        "bench-builder",
        &bench.c.quic_addr,
        token["token"].as_str(),
        &namespace,
    );
    let _steps = ContainersGuard { namespace };
    let archive = busybox_image(bench.dir.path(), "busybox:latest", &["sh"], "bench");
    let out = run(
        "spacedock",
        &["image", "import", archive.to_str().unwrap()],
        &[
            ("HF_ENDPOINT", &bench.c.api_url),
            ("HF_TOKEN", &bench.admin),
        ],
    );
    assert_eq!(out.code, Some(0), "{out:?}");

    // The model repo to preload: one file of `preload_mib` MiB through git-lfs would need git-lfs; a plain
    // file under git's 10 MiB limit per file is used, several of them.
    bench.call(
        "POST",
        "/api/repos/create",
        Some(json!({ "type": "model", "name": "weights" })),
    );
    let model = clone(
        &bench.c,
        Some(&bench.admin),
        "admin/weights",
        &bench.dir.path().join("weights"),
    );
    let chunk: Vec<u8> = (0..8u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let parts = preload_mib.div_ceil(8);
    let names: Vec<String> = (0..parts).map(|i| format!("part-{i}.bin")).collect();
    let mut weight_files: Vec<(&str, Vec<u8>)> = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let mut bytes = chunk.clone();
        bytes[0] = i as u8;
        weight_files.push((name, bytes));
    }
    let refs: Vec<(&str, &[u8])> = weight_files
        .iter()
        .map(|(n, b)| (*n, b.as_slice()))
        .collect();
    commit(&model, &refs, "weights");
    git_ok(&model, &["push", "-q", "origin", "HEAD:main"]);

    let readme = |title: &str| {
        format!(
            "---\ntitle: {title}\nsdk: docker\napp_port: 8000\npreload_from_hub:\n  - admin/weights\n---\n"
        )
    };
    let dockerfile = "FROM busybox:latest\nRUN /bin/busybox --install -s /bin\nCOPY . /app\nCMD [\"httpd\", \"-f\", \"-p\", \"8000\", \"-h\", \"/app\"]\n";
    let space = |name: &str, title: &str| {
        bench.call(
            "POST",
            "/api/repos/create",
            Some(json!({ "type": "space", "name": name, "sdk": "docker" })),
        );
        let repo = clone(
            &bench.c,
            Some(&bench.admin),
            &format!("spaces/admin/{name}"),
            &bench.dir.path().join(name),
        );
        let mut contents: Vec<(String, Vec<u8>)> = (0..files)
            .map(|i| {
                (
                    format!("src/d{}/f{i}.txt", i % 32),
                    format!("file {i}\n").into_bytes(),
                )
            })
            .collect();
        contents.push(("README.md".into(), readme(title).into_bytes()));
        contents.push(("Dockerfile".into(), dockerfile.as_bytes().to_vec()));
        let refs: Vec<(&str, &[u8])> = contents
            .iter()
            .map(|(n, b)| (n.as_str(), b.as_slice()))
            .collect();
        commit(&repo, &refs, "first");
        git_ok(&repo, &["push", "-q", "origin", "HEAD:main"]);
        repo
    };
    let id = "admin/bench";
    let repo = space("bench", "Bench");
    let (first_ms, mut digest, first_pushed) = bench.wait_build(id, &[]);
    println!("first build: {first_ms} ms, {first_pushed} bytes pushed");

    let (mut noop, mut change, mut full) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..runs {
        let before = bench.build_log(id);
        git_ok(&repo, &["commit", "-q", "--allow-empty", "-m", "again"]);
        git_ok(&repo, &["push", "-q", "origin", "HEAD:main"]);
        let (ms, d, _) = bench.wait_build(id, &before);
        assert_eq!(d, digest, "a no-op rebuild gives the same image");
        noop.push(ms);

        let before = bench.build_log(id);
        let edit = format!("change {run}\n");
        commit(&repo, &[("src/d0/f0.txt", edit.as_bytes())], "one file");
        git_ok(&repo, &["push", "-q", "origin", "HEAD:main"]);
        let (ms, d, _) = bench.wait_build(id, &before);
        assert_ne!(d, digest);
        digest = d;
        change.push(ms);

        let before = bench.build_log(id);
        bench.call(
            "POST",
            &format!("/api/spaces/{id}/restart?factory=true"),
            None,
        );
        let (ms, d, _) = bench.wait_build(id, &before);
        assert_eq!(
            d, digest,
            "a rebuild without the cache makes the same image"
        );
        full.push(ms);
        println!(
            "run {}: no-op {} ms, one file {} ms, full {} ms",
            run + 1,
            noop[run as usize],
            change[run as usize],
            full[run as usize]
        );
    }
    let (noop, change, full) = (median(noop), median(change), median(full));
    println!(
        "medians over {runs} runs ({files} files): no-op rebuild {noop} ms, one-file change {change} ms, full rebuild \
         {full} ms ({:.1}x the one-file change)",
        full as f64 / change.max(1) as f64
    );

    // Its own README title: only its app layer differs.
    space("bench2", "Bench two");
    let (second_ms, _, second_pushed) = bench.wait_build("admin/bench2", &[]);
    let images = bench.call("GET", "/api/images", None);
    let app_layer = images
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "spaces/admin/bench2")
        .and_then(|i| i["layers"].as_array()?.last()?["size"].as_u64())
        .unwrap();
    println!(
        "same preload, second Space: {second_pushed} bytes pushed in {second_ms} ms (its app layer: {app_layer} \
         bytes, its config the rest; the first Space pushed {first_pushed})"
    );

    // blake3 over a build context in memory: 4,096 files of 64 KiB.
    let entries: Vec<Entry> = (0..4096u32)
        .map(|i| Entry {
            path: format!("ctx/{i}.bin"),
            kind: Kind::File(vec![(i % 251) as u8; 64 << 10]),
            mode: 0o644,
            uid: 0,
            gid: 0,
        })
        .collect();
    let bytes = 4096u64 * (64 << 10);
    let mut rates = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        std::hint::black_box(entries_hash(&entries));
        rates.push((bytes as f64 / started.elapsed().as_secs_f64() / 1e6) as u64);
    }
    println!(
        "blake3 over a 256 MiB context, one thread: median {} MB/s",
        median(rates)
    );
    drop(builder);
}
