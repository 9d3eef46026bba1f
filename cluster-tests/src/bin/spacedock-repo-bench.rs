//! `spacedock-repo-bench`: repos on the cluster with real clients, in one run.
//!
//! 1. `git push` of a commit of `--files` small files (default 10,000) to the leader of `--coordinators`
//!    (default 3; acknowledged once a quorum holds the pack and the refs are committed), then
//!    `git clone --no-checkout` of it from a follower (writing the files out is the client's disk, not the
//!    server).
//! 2. An LFS file of `--lfs-mib` MiB (default 1024) up and down, four ways, alternating:
//!    - the commit API driven by curl: the LFS batch call, curl's PUT to the signed URL, verify, and the NDJSON
//!      commit naming the object; down, curl's GET of `resolve/main/FILE` into /dev/null (the object's sha256
//!      is computed beforehand, as git-lfs does when the file is added);
//!    - `huggingface_hub` end to end (`upload_file`, which hashes the file first; `hf_hub_download`);
//!    - git-lfs end to end (`git push`; `git lfs fetch`);
//!    - the baseline: a plain HTTP/1.1 file server on loopback written here (PUT writes the body to a file and
//!      fsyncs it, GET streams a file with `std::io::copy`, which is sendfile), driven by curl, downloading
//!      into /dev/null like the commit API's curl (the two clients that write files, `huggingface_hub` and
//!      git-lfs, are timed writing them).
//!
//! Each LFS run uses new bytes, so nothing is deduplicated.
//! Prints every run, the medians, and the throughput of each way as a ratio of the baseline's.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark harness: panics are how it fails

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use serde_json::json;
use spacedock_cluster_tests::{Coordinator, api, flag_u64, python};

fn main() {
    let files = flag_u64("--files", 10_000) as usize;
    let lfs_mib = flag_u64("--lfs-mib", 1024) as usize;
    let runs = flag_u64("--runs", 3) as usize;
    let coordinators = flag_u64("--coordinators", 3);
    // Kept when the run fails, for the coordinators' logs; removed at the end of a run that succeeds.
    let dir = tempfile::tempdir().unwrap().keep();
    println!("working in {}", dir.display());
    let leader = Coordinator::bootstrap(&dir);
    let admin = leader.admin_token();
    let mut cluster = vec![];
    for id in 2..=coordinators {
        cluster.push(Coordinator::join(&dir, id, &leader, &admin));
    }
    let follower = cluster.last().unwrap_or(&leader);
    let work = dir.join("work");
    std::fs::create_dir(&work).unwrap();
    let auth_url = |c: &Coordinator, path: &str| {
        format!(
            "http://admin:{admin}@{}/{path}",
            c.api_url.trim_start_matches("http://")
        )
    };

    println!("push and clone of {files} files, {coordinators} coordinator(s), {runs} runs");
    let (mut pushes, mut clones) = (vec![], vec![]);
    for run in 0..runs {
        let name = format!("small-{run}");
        let repo = new_repo(&leader, &admin, &work, &name);
        for i in 0..files {
            let path = repo.join(format!("d{:03}/f{i:05}.txt", i % 100));
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, format!("file {i} of run {run}\n").repeat(1 + i % 7)).unwrap();
        }
        git(&repo, &["add", "-A"]);
        git(&repo, &["commit", "-q", "-m", "many files"]);
        let remote = auth_url(&leader, &format!("admin/{name}"));
        let push = timed(|| git(&repo, &["push", "-q", &remote, "main"]));
        let into = work.join(format!("{name}-clone"));
        let remote = auth_url(follower, &format!("admin/{name}"));
        let clone = timed(|| {
            git(
                &work,
                &[
                    "clone",
                    "-q",
                    "--no-checkout",
                    &remote,
                    into.to_str().unwrap(),
                ],
            )
        });
        println!("  run {run}: push {push:.2} s, clone {clone:.2} s");
        pushes.push(push);
        clones.push(clone);
    }
    println!(
        "median push {:.2} s, clone (no checkout) {:.2} s",
        median(&mut pushes),
        median(&mut clones)
    );

    // The LFS transfers run on a cluster of their own (a single coordinator unless asked otherwise: every
    // copy a cluster keeps is another 1 GiB per run on this one disk).
    drop((leader, cluster));
    let lfs_coordinators = flag_u64("--lfs-coordinators", 1);
    let lfs_dir = dir.join("lfs");
    std::fs::create_dir(&lfs_dir).unwrap();
    let leader = Coordinator::bootstrap(&lfs_dir);
    let admin = leader.admin_token();
    let mut cluster = vec![];
    for id in 2..=lfs_coordinators {
        cluster.push(Coordinator::join(&lfs_dir, id, &leader, &admin));
    }
    let auth_url = |c: &Coordinator, path: &str| {
        format!(
            "http://admin:{admin}@{}/{path}",
            c.api_url.trim_start_matches("http://")
        )
    };
    let baseline = plain_server(&work.join("plain"));
    println!("LFS file of {lfs_mib} MiB, {lfs_coordinators} coordinator(s), {runs} runs each way");
    let mut times: [[Vec<f64>; 2]; 4] = Default::default();
    let source = work.join("big.bin");
    for run in 0..runs {
        // The commit API, driven by curl.
        write_random(&source, lfs_mib << 20, 2000 + run as u64);
        let (up, down) =
            curl_round_trip(&leader, &admin, &format!("lfs-curl-{run}"), &source, &work);
        times[3][0].push(up);
        times[3][1].push(down);
        write_random(&source, lfs_mib << 20, run as u64);
        // huggingface_hub through the commit API.
        let repo = format!("admin/lfs-hf-{run}");
        let (up, down) = hf_round_trip(
            &leader,
            &admin,
            &repo,
            &source,
            &work.join(format!("hf-{run}")),
        );
        times[0][0].push(up);
        times[0][1].push(down);
        // git-lfs.
        write_random(&source, lfs_mib << 20, 1000 + run as u64);
        let name = format!("lfs-git-{run}");
        let repo = new_repo(&leader, &admin, &work, &name);
        git(&repo, &["lfs", "install", "--local"]);
        git(&repo, &["config", "lfs.locksverify", "false"]);
        git(&repo, &["lfs", "track", "*.bin"]);
        std::fs::copy(&source, repo.join("big.bin")).unwrap();
        git(&repo, &["add", "-A"]);
        git(&repo, &["commit", "-q", "-m", "big"]);
        let remote = auth_url(&leader, &format!("admin/{name}"));
        let up = timed(|| git(&repo, &["push", "-q", &remote, "main"]));
        let copy = work.join(format!("{name}-copy"));
        git_env(
            &work,
            &["clone", "-q", &remote, copy.to_str().unwrap()],
            &[("GIT_LFS_SKIP_SMUDGE", "1")],
        );
        git(&copy, &["lfs", "install", "--local"]);
        let down = timed(|| git(&copy, &["lfs", "fetch"]));
        std::fs::remove_dir_all(&repo).unwrap();
        std::fs::remove_dir_all(&copy).unwrap();
        times[1][0].push(up);
        times[1][1].push(down);
        // The baseline: a plain file copy over HTTP.
        let url = format!("{baseline}/big.bin");
        let up = timed(|| {
            run_ok(
                Command::new("curl")
                    .args(["-sSf", "-T"])
                    .arg(&source)
                    .arg(&url),
            )
        });
        let down = timed(|| {
            let out = run_output(
                Command::new("curl")
                    .args(["-sSf", "-o", "/dev/null", "-w", "%{size_download}"])
                    .arg(&url),
            );
            assert_eq!(out.trim(), (lfs_mib << 20).to_string());
        });
        times[2][0].push(up);
        times[2][1].push(down);
        let t = |way: usize, dir: usize| times[way][dir][run];
        println!(
            "  run {run}: up curl {:.2} s, hf {:.2} s, git-lfs {:.2} s, plain {:.2} s; \
             down curl {:.2} s, hf {:.2} s, git-lfs {:.2} s, plain {:.2} s",
            t(3, 0),
            t(0, 0),
            t(1, 0),
            t(2, 0),
            t(3, 1),
            t(0, 1),
            t(1, 1),
            t(2, 1)
        );
    }
    let mib = lfs_mib as f64;
    for (what, i) in [("upload", 0), ("download", 1)] {
        let p = median(&mut times[2][i]);
        let mut line = format!("median {what}: plain HTTP {p:.2} s ({:.0} MiB/s)", mib / p);
        for (name, way) in [
            ("commit API + curl", 3),
            ("huggingface_hub", 0),
            ("git-lfs", 1),
        ] {
            let m = median(&mut times[way][i]);
            line.push_str(&format!(
                ", {name} {m:.2} s ({:.0} MiB/s, {:.2}x plain)",
                mib / m,
                p / m
            ));
        }
        println!("{line}");
    }
    drop((leader, cluster));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The commit API's LFS path driven by curl (and ureq for the small JSON calls): batch, PUT, verify, commit;
/// then a GET of the file through `resolve`. Returns the seconds each way took.
fn curl_round_trip(
    c: &Coordinator,
    token: &str,
    name: &str,
    source: &Path,
    work: &Path,
) -> (f64, f64) {
    use sha2::Digest as _;
    create(c, token, name);
    let mut sha = sha2::Sha256::new();
    std::io::copy(&mut std::fs::File::open(source).unwrap(), &mut sha).unwrap();
    let oid = hex::encode(sha.finalize());
    let size = std::fs::metadata(source).unwrap().len();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(true)
        .build()
        .into();
    let auth = format!("Bearer {token}");
    let up = timed(|| {
        let batch: serde_json::Value = agent
            .post(&format!("{}/admin/{name}.git/info/lfs/objects/batch", c.api_url))
            .header("Authorization", &auth)
            .send_json(json!({ "operation": "upload", "transfers": ["basic"], "objects": [{ "oid": oid, "size": size }] }))
            .unwrap()
            .body_mut()
            .read_json()
            .unwrap();
        let actions = &batch["objects"][0]["actions"];
        let href = actions["upload"]["href"].as_str().unwrap();
        run_ok(
            Command::new("curl")
                .args(["-sSf", "-T"])
                .arg(source)
                .arg(href),
        );
        agent
            .post(actions["verify"]["href"].as_str().unwrap())
            .header("Authorization", &auth)
            .send_json(json!({ "oid": oid, "size": size }))
            .unwrap();
        let body = format!(
            "{}\n{}\n",
            json!({ "key": "header", "value": { "summary": "big" } }),
            json!({ "key": "lfsFile", "value": { "path": "big.bin", "algo": "sha256", "oid": oid, "size": size } })
        );
        agent
            .post(&format!(
                "{}/api/models/admin/{name}/commit/main",
                c.api_url
            ))
            .header("Authorization", &auth)
            .header("Content-Type", "application/x-ndjson")
            .send(body)
            .unwrap();
    });
    let down = timed(|| {
        let got = run_output(
            Command::new("curl")
                .args(["-sSf", "-H", &format!("Authorization: {auth}")])
                .args(["-o", "/dev/null", "-w", "%{size_download}"])
                .arg(format!("{}/admin/{name}/resolve/main/big.bin", c.api_url)),
        );
        assert_eq!(got.trim(), size.to_string());
    });
    let _ = work;
    (up, down)
}

fn create(c: &Coordinator, token: &str, name: &str) {
    api(
        &c.api_url,
        token,
        "POST",
        "/api/repos/create",
        Some(json!({ "name": name })),
    )
    .unwrap();
}

/// A model repo `admin/NAME` on the cluster and an empty local repo for it on `main`.
fn new_repo(c: &Coordinator, token: &str, work: &Path, name: &str) -> PathBuf {
    create(c, token, name);
    let repo = work.join(name);
    std::fs::create_dir(&repo).unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    repo
}

/// Times `f`, after flushing dirty pages so one step's writeback does not land in the next one's time.
fn timed(f: impl FnOnce()) -> f64 {
    run_ok(&mut Command::new("sync"));
    let start = Instant::now();
    f();
    start.elapsed().as_secs_f64()
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Runs a command that must succeed; returns its stdout.
fn run_output(command: &mut Command) -> String {
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn run_ok(command: &mut Command) {
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "{command:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn git(cwd: &Path, args: &[&str]) {
    git_env(cwd, args, &[]);
}

fn git_env(cwd: &Path, args: &[&str], env: &[(&str, &str)]) {
    let mut command = Command::new("git");
    command
        .current_dir(cwd)
        .args(args)
        .env("HOME", cwd)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_AUTHOR_NAME", "Bench")
        .env("GIT_AUTHOR_EMAIL", "bench@example.com")
        .env("GIT_COMMITTER_NAME", "Bench")
        .env("GIT_COMMITTER_EMAIL", "bench@example.com");
    for (k, v) in env {
        command.env(k, v);
    }
    run_ok(&mut command);
}

/// `size` bytes from a xorshift seeded with `seed` (each run's bytes differ, so nothing is deduplicated).
fn write_random(path: &Path, size: usize, seed: u64) {
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut state = 0x9e37_79b9_7f4a_7c15u64 ^ seed.wrapping_mul(0x2545_f491_4f6c_dd1d);
    let mut chunk = vec![0u8; 1 << 20];
    for _ in 0..size >> 20 {
        for word in chunk.chunks_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            word.copy_from_slice(&state.to_le_bytes());
        }
        file.write_all(&chunk).unwrap();
    }
    file.flush().unwrap();
}

/// huggingface_hub's `upload_file` and `hf_hub_download` of `source`, each timed by the client itself.
fn hf_round_trip(
    c: &Coordinator,
    token: &str,
    repo: &str,
    source: &Path,
    cache: &Path,
) -> (f64, f64) {
    let script = r#"
import json, os, sys, time
from huggingface_hub import HfApi, hf_hub_download
repo, source, cache = sys.argv[1], sys.argv[2], sys.argv[3]
api = HfApi()
api.create_repo(repo)
start = time.monotonic()
api.upload_file(path_or_fileobj=source, path_in_repo="big.bin", repo_id=repo)
up = time.monotonic() - start
start = time.monotonic()
hf_hub_download(repo, "big.bin", cache_dir=cache)
down = time.monotonic() - start
print(json.dumps({"up": up, "down": down}))
"#;
    let out = Command::new(python())
        .args(["-c", script, repo])
        .arg(source)
        .arg(cache)
        .env("HF_ENDPOINT", &c.api_url)
        .env("HF_TOKEN", token)
        .env("HF_HUB_DISABLE_XET", "1")
        .env("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    std::fs::remove_dir_all(cache).unwrap();
    (v["up"].as_f64().unwrap(), v["down"].as_f64().unwrap())
}

/// A plain HTTP/1.1 file server on loopback, one connection at a time: `PUT /NAME` writes the body to
/// `dir/NAME` and fsyncs it; `GET /NAME` streams it. Returns its base URL.
fn plain_server(dir: &Path) -> String {
    std::fs::create_dir_all(dir).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let dir: PathBuf = dir.to_owned();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let mut stream = stream.unwrap();
            let mut reader = BufReader::with_capacity(1 << 20, stream.try_clone().unwrap());
            let mut request = String::new();
            reader.read_line(&mut request).unwrap();
            let mut length = 0u64;
            let mut expect = false;
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                let lower = line.to_ascii_lowercase();
                if let Some(v) = lower.strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap();
                }
                expect |= lower.starts_with("expect: 100-continue");
                if line == "\r\n" || line.is_empty() {
                    break;
                }
            }
            let mut parts = request.split_whitespace();
            let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or("/"));
            let file = dir.join(path.trim_start_matches('/'));
            if method == "PUT" {
                if expect {
                    stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").unwrap();
                }
                let mut out = std::fs::File::create(&file).unwrap();
                std::io::copy(&mut (&mut reader).take(length), &mut out).unwrap();
                out.sync_all().unwrap();
                stream
                    .write_all(
                        b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    )
                    .unwrap();
            } else {
                let mut f = std::fs::File::open(&file).unwrap();
                let size = f.metadata().unwrap().len();
                write!(
                    stream,
                    "HTTP/1.1 200 OK\r\nContent-Length: {size}\r\nConnection: close\r\n\r\n"
                )
                .unwrap();
                std::io::copy(&mut f, &mut stream).unwrap();
            }
        }
    });
    url
}
