//! `spacedock-repo-bench`: repos on the cluster with real clients, in one run.
//!
//! 1. `git push` of a commit of `--files` small files (default 10,000) to the leader of `--coordinators`
//!    (default 3; acknowledged once a quorum holds the pack and the refs are committed), then
//!    `git clone --no-checkout` of it from a follower (writing the files out is the client's disk, not the
//!    server).
//! 2. An LFS file of `--lfs-mib` MiB (default 1024) up and down, one way after the other in each run:
//!    - the commit API driven by curl: the LFS batch call, curl's PUT to the signed URL, verify, and the NDJSON
//!      commit naming the object; down, curl's GET of `resolve/main/FILE` into /dev/null (the object's sha256
//!      is computed beforehand, as git-lfs does when the file is added);
//!    - `huggingface_hub` end to end (`upload_file`, which hashes the file first; `hf_hub_download`);
//!    - git-lfs end to end (`git push`; `git lfs fetch`);
//!    - the baseline: a plain HTTP/1.1 file server on loopback written here (PUT writes the body to a file and
//!      fsyncs it, GET streams a file with `std::io::copy`, which is sendfile), driven by curl, downloading
//!      into /dev/null like the commit API's curl;
//!    - the two clients that do more than move bytes (`huggingface_hub` writes its download into its cache;
//!      git-lfs hashes and writes what it fetches) also against that plain server, which answers just enough
//!      of `resolve` and of the LFS batch API for them: `hf_hub_download`, and git-lfs pushing to a local bare
//!      repo whose LFS server it is. Their times against spacedock divided by these are what the server costs
//!      those clients.
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
        let remote = auth_url(&leader, &admin, &format!("admin/{name}"));
        let push = timed(|| git(&repo, &["push", "-q", &remote, "main"]));
        let into = work.join(format!("{name}-clone"));
        let remote = auth_url(follower, &admin, &format!("admin/{name}"));
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

    // The LFS transfers run on clusters of their own, a new one each run whose data is removed after it (a
    // single coordinator unless asked otherwise: every copy a cluster keeps is another 1 GiB per upload on this
    // one disk).
    drop((leader, cluster));
    let lfs_coordinators = flag_u64("--lfs-coordinators", 1);
    let plain_dir = work.join("plain");
    let plain = plain_server(&plain_dir);
    println!("LFS file of {lfs_mib} MiB, {lfs_coordinators} coordinator(s), {runs} runs each way");
    // Seconds per way (the indexes below) and direction (0 up, 1 down).
    let mut times: [[Vec<f64>; 2]; 6] = Default::default();
    const CURL: usize = 0;
    const HF: usize = 1;
    const GIT_LFS: usize = 2;
    const PLAIN: usize = 3;
    const GIT_LFS_PLAIN: usize = 4;
    const HF_PLAIN: usize = 5;
    let source = work.join("big.bin");
    *SCRATCH.lock().unwrap() = Some((work.join("scratch"), lfs_mib << 20));
    for run in 0..runs {
        let lfs_dir = dir.join(format!("lfs-{run}"));
        std::fs::create_dir(&lfs_dir).unwrap();
        let leader = Coordinator::bootstrap(&lfs_dir);
        let admin = leader.admin_token();
        let cluster: Vec<_> = (2..=lfs_coordinators)
            .map(|id| Coordinator::join(&lfs_dir, id, &leader, &admin))
            .collect();
        // Each way against spacedock runs right next to its counterpart against the plain server, with the
        // same bytes, the two taking turns at going first from one run to the next.
        let plain_first = run % 2 == 1;
        let mut record = |way: usize, (up, down): (f64, f64)| {
            times[way][0].push(up);
            times[way][1].push(down);
        };
        // The commit API driven by curl, and the baseline: a plain file copy over HTTP with curl.
        write_random(&source, lfs_mib << 20, 1000 * run as u64);
        let (commit_api, baseline) = in_turn(
            plain_first,
            || curl_round_trip(&leader, &admin, &format!("lfs-curl-{run}"), &source),
            || curl_plain(&plain, &source),
        );
        record(CURL, commit_api);
        record(PLAIN, baseline);
        // huggingface_hub: `upload_file` to spacedock, then `hf_hub_download` from it and from the plain
        // server (its upload needs the whole commit API, which a plain server does not have).
        write_random(&source, lfs_mib << 20, 1000 * run as u64 + 1);
        let repo = format!("admin/lfs-hf-{run}");
        let up = hf_upload(&leader.api_url, &admin, &repo, &source);
        std::fs::copy(&source, plain_dir.join("big.bin")).unwrap();
        let (down, plain_down) = in_turn(
            plain_first,
            || hf_download(&leader.api_url, &admin, &repo),
            || hf_download(&plain, "", "plain/big"),
        );
        record(HF, (up, down));
        // git-lfs: `git push` and `git lfs fetch`, to and from spacedock, and with a local bare repo whose
        // LFS server is the plain one.
        write_random(&source, lfs_mib << 20, 1000 * run as u64 + 2);
        let name = format!("lfs-git-{run}");
        let (to_spacedock, to_plain) = in_turn(
            plain_first,
            || {
                create(&leader, &admin, &name);
                let remote = auth_url(&leader, &admin, &format!("admin/{name}"));
                git_lfs_round_trip(&work, &name, &source, &remote, None)
            },
            || {
                let bare = work.join(format!("{name}.git"));
                run_ok(
                    Command::new("git")
                        .args(["init", "-q", "--bare", "-b", "main"])
                        .arg(&bare),
                );
                let lfs_url = format!("{plain}/lfs");
                let times = git_lfs_round_trip(
                    &work,
                    &name,
                    &source,
                    bare.to_str().unwrap(),
                    Some(&lfs_url),
                );
                std::fs::remove_dir_all(&bare).unwrap();
                times
            },
        );
        record(GIT_LFS, to_spacedock);
        record(GIT_LFS_PLAIN, to_plain);
        times[HF_PLAIN][1].push(plain_down); // no upload: see above
        for entry in std::fs::read_dir(&plain_dir).unwrap() {
            std::fs::remove_file(entry.unwrap().path()).unwrap();
        }
        drop((leader, cluster));
        std::fs::remove_dir_all(&lfs_dir).unwrap();
        let t = |way: usize, dir: usize| times[way][dir][run];
        println!(
            "  run {run}: up curl {:.2} s, hf {:.2} s, git-lfs {:.2} s, plain {:.2} s \
             (git-lfs to the plain server {:.2} s); down curl {:.2} s, hf {:.2} s, git-lfs {:.2} s, \
             plain {:.2} s (from the plain server: hf {:.2} s, git-lfs {:.2} s)",
            t(CURL, 0),
            t(HF, 0),
            t(GIT_LFS, 0),
            t(PLAIN, 0),
            t(GIT_LFS_PLAIN, 0),
            t(CURL, 1),
            t(HF, 1),
            t(GIT_LFS, 1),
            t(PLAIN, 1),
            t(HF_PLAIN, 1),
            t(GIT_LFS_PLAIN, 1),
        );
    }
    let mib = lfs_mib as f64;
    for (what, i) in [("upload", 0), ("download", 1)] {
        let p = median(&mut times[PLAIN][i]);
        let mut line = format!("median {what}: plain HTTP {p:.2} s ({:.0} MiB/s)", mib / p);
        for (name, way) in [
            ("commit API + curl", CURL),
            ("huggingface_hub", HF),
            ("git-lfs", GIT_LFS),
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
    // The same client against spacedock and against the plain server: what the server costs that client.
    for (what, i, clients) in [
        ("upload", 0, &[("git-lfs", GIT_LFS, GIT_LFS_PLAIN)][..]),
        (
            "download",
            1,
            &[
                ("huggingface_hub", HF, HF_PLAIN),
                ("git-lfs", GIT_LFS, GIT_LFS_PLAIN),
            ][..],
        ),
    ] {
        for &(name, way, plain_way) in clients {
            let (m, p) = (median(&mut times[way][i]), median(&mut times[plain_way][i]));
            println!(
                "median {what} by {name}: with the plain server {p:.2} s ({:.0} MiB/s), \
                 with spacedock {m:.2} s ({:.0} MiB/s, {:.2}x plain)",
                mib / p,
                mib / m,
                p / m
            );
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A repo's git URL on `c` with the admin's token as the password.
fn auth_url(c: &Coordinator, token: &str, path: &str) -> String {
    format!(
        "http://admin:{token}@{}/{path}",
        c.api_url.trim_start_matches("http://")
    )
}

/// The commit API's LFS path driven by curl (and ureq for the small JSON calls): batch, PUT, verify, commit;
/// then a GET of the file through `resolve`. Returns the seconds each way took.
fn curl_round_trip(c: &Coordinator, token: &str, name: &str, source: &Path) -> (f64, f64) {
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
    (up, down)
}

/// The baseline: curl's PUT of `source` to the plain server, then its GET into /dev/null. Returns the seconds
/// each way took.
fn curl_plain(plain: &str, source: &Path) -> (f64, f64) {
    let url = format!("{plain}/big.bin");
    let up = timed(|| {
        run_ok(
            Command::new("curl")
                .args(["-sSf", "-T"])
                .arg(source)
                .arg(&url),
        )
    });
    let down = timed(|| {
        let out = run_output(
            Command::new("curl")
                .args(["-sSf", "-o", "/dev/null", "-w", "%{size_download}"])
                .arg(&url),
        );
        let size = std::fs::metadata(source).unwrap().len();
        assert_eq!(out.trim(), size.to_string());
    });
    (up, down)
}

/// Runs `a` and `b`, `b` first when `b_first`; returns their results in the order `(a, b)`.
fn in_turn<A, B>(b_first: bool, a: impl FnOnce() -> A, b: impl FnOnce() -> B) -> (A, B) {
    if b_first {
        let b = b();
        (a(), b)
    } else {
        let a = a();
        (a, b())
    }
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

/// Where [`settle`] writes its scratch file, and how many bytes (none until the LFS part).
static SCRATCH: std::sync::Mutex<Option<(PathBuf, usize)>> = std::sync::Mutex::new(None);

/// Times `f` after [`settle`].
fn timed(f: impl FnOnce()) -> f64 {
    settle();
    let start = Instant::now();
    f();
    start.elapsed().as_secs_f64()
}

/// Readies the machine for a timed step: flushes dirty pages, so one step's writeback does not land in the
/// next one's time, after writing and deleting a [`SCRATCH`] file if one is set, so the step finds that much
/// memory freed: in this VM, writing a GiB into the page cache takes about 2.7 s when it needs pages the
/// kernel has not used lately and 0.2-0.3 s right after a GiB was freed, which would otherwise make a client
/// that writes its download (huggingface_hub, git-lfs) fast or slow by what ran before it.
fn settle() {
    if let Some((path, bytes)) = SCRATCH.lock().unwrap().clone() {
        let mut file = std::fs::File::create(&path).unwrap();
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..bytes >> 20 {
            file.write_all(&zeros).unwrap();
        }
        drop(file);
        std::fs::remove_file(&path).unwrap();
    }
    run_ok(&mut Command::new("sync"));
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

/// git-lfs end to end: a new local repo commits `source` as an LFS file and `git push`es it to `remote`, then
/// `git lfs fetch` gets it back in a fresh clone. `lfs_url` sets the LFS server when it is not the remote's own.
/// Returns the seconds each way took.
fn git_lfs_round_trip(
    work: &Path,
    name: &str,
    source: &Path,
    remote: &str,
    lfs_url: Option<&str>,
) -> (f64, f64) {
    let repo = work.join(name);
    let copy = work.join(format!("{name}-copy"));
    std::fs::create_dir(&repo).unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    let setup = |repo: &Path| {
        git(repo, &["lfs", "install", "--local"]);
        git(repo, &["config", "lfs.locksverify", "false"]);
        if let Some(url) = lfs_url {
            git(repo, &["config", "lfs.url", url]);
        }
    };
    setup(&repo);
    git(&repo, &["lfs", "track", "*.bin"]);
    std::fs::copy(source, repo.join("big.bin")).unwrap();
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "big"]);
    let up = timed(|| git(&repo, &["push", "-q", remote, "main"]));
    git_env(
        work,
        &["clone", "-q", remote, copy.to_str().unwrap()],
        &[("GIT_LFS_SKIP_SMUDGE", "1")],
    );
    setup(&copy);
    let down = timed(|| git(&copy, &["lfs", "fetch"]));
    let fetched = std::fs::read_dir(copy.join(".git/lfs/objects"))
        .unwrap()
        .count();
    assert_eq!(fetched, 1, "git lfs fetch stored no object");
    std::fs::remove_dir_all(&repo).unwrap();
    std::fs::remove_dir_all(&copy).unwrap();
    (up, down)
}

/// The seconds huggingface_hub's `upload_file` takes to put `source` as `big.bin` in a new model repo `repo` on
/// `endpoint`, timed by the client itself.
fn hf_upload(endpoint: &str, token: &str, repo: &str, source: &Path) -> f64 {
    let script = r#"
import json, sys, time
from huggingface_hub import HfApi
api = HfApi()
api.create_repo(sys.argv[1])
start = time.monotonic()
api.upload_file(path_or_fileobj=sys.argv[2], path_in_repo="big.bin", repo_id=sys.argv[1])
print(json.dumps({"up": time.monotonic() - start}))
"#;
    let v = hf_script(script, endpoint, token, &[repo, source.to_str().unwrap()]);
    v["up"].as_f64().unwrap()
}

/// The seconds `hf_hub_download` takes to get `big.bin` of `repo` from `endpoint` into a fresh cache.
fn hf_download(endpoint: &str, token: &str, repo: &str) -> f64 {
    let script = r#"
import json, os, sys, tempfile, time
from huggingface_hub import hf_hub_download
with tempfile.TemporaryDirectory() as cache:
    start = time.monotonic()
    path = hf_hub_download(sys.argv[1], "big.bin", cache_dir=cache)
    down = time.monotonic() - start
    print(json.dumps({"down": down, "size": os.path.getsize(path)}))
"#;
    let v = hf_script(script, endpoint, token, &[repo]);
    assert!(v["size"].as_u64().unwrap() > 0);
    v["down"].as_f64().unwrap()
}

/// Runs a Python script (which times its step itself) with huggingface_hub pointed at `endpoint` (XET off, no
/// progress bars), after [`settle`]; returns the JSON it prints.
fn hf_script(script: &str, endpoint: &str, token: &str, args: &[&str]) -> serde_json::Value {
    settle();
    let mut command = Command::new(python());
    command
        .args(["-c", script])
        .args(args)
        .env("HF_ENDPOINT", endpoint)
        .env("HF_HUB_DISABLE_XET", "1")
        .env("HF_HUB_DISABLE_PROGRESS_BARS", "1");
    if !token.is_empty() {
        command.env("HF_TOKEN", token);
    }
    serde_json::from_str(&run_output(&mut command)).unwrap()
}

/// A plain HTTP/1.1 file server on loopback, a thread per connection, each file named by the request path's last
/// segment: `PUT` writes the body to a file and fsyncs it; `GET` streams the file with `std::io::copy` (sendfile);
/// `HEAD` answers the headers `huggingface_hub` reads (`X-Repo-Commit`, and an `ETag` made of the file's size and
/// modification time, as static file servers make theirs); `POST /lfs/objects/batch` answers the LFS batch API
/// with this server's own URLs and nothing else (no authentication, no verify), so that git-lfs and
/// `huggingface_hub` can be timed against it too. Returns its base URL.
fn plain_server(dir: &Path) -> String {
    std::fs::create_dir_all(dir).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (dir, base): (PathBuf, String) = (dir.to_owned(), url.clone());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let (dir, base) = (dir.clone(), base.clone());
            let stream = stream.unwrap();
            std::thread::spawn(move || plain_request(stream, &dir, &base));
        }
    });
    url
}

/// One request of [`plain_server`]; the connection closes after it.
fn plain_request(mut stream: std::net::TcpStream, dir: &Path, base: &str) {
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
    let file = dir.join(path.rsplit('/').next().unwrap());
    match method {
        "PUT" => {
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
        }
        "POST" => {
            assert!(
                path.ends_with("/objects/batch"),
                "plain server: POST {path}"
            );
            let request: serde_json::Value =
                serde_json::from_reader((&mut reader).take(length)).unwrap();
            let action = request["operation"].as_str().unwrap();
            let objects: Vec<_> = request["objects"]
                .as_array()
                .unwrap()
                .iter()
                .map(|o| {
                    let href = format!("{base}/objects/{}", o["oid"].as_str().unwrap());
                    json!({ "oid": o["oid"], "size": o["size"], "actions": { action: { "href": href } } })
                })
                .collect();
            let body = json!({ "transfer": "basic", "objects": objects }).to_string();
            write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: application/vnd.git-lfs+json\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .unwrap();
        }
        "GET" | "HEAD" => {
            let Ok(mut f) = std::fs::File::open(&file) else {
                eprintln!("plain server: no {path}");
                let _ = stream.write_all(
                    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
                return;
            };
            let meta = f.metadata().unwrap();
            let modified = meta
                .modified()
                .unwrap()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap();
            write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nETag: \"{:x}-{:x}\"\r\n\
                 X-Repo-Commit: {}\r\nConnection: close\r\n\r\n",
                meta.len(),
                modified.as_nanos(),
                meta.len(),
                "0".repeat(40)
            )
            .unwrap();
            if method == "GET" {
                std::io::copy(&mut f, &mut stream).unwrap();
            }
        }
        _ => panic!("plain server: {method} {path}"),
    }
}
