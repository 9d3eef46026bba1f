//! Repos through the real git CLI: clone, commit, push, pull, shallow clones, private repos, pushes refused
//! (size limit, no write rights, stale), credential warnings, a Space's stage after a push, and a push that
//! survives the leader's kill -9.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test harness: panics are how tests fail

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use spacedock_cluster_tests::git::{clone, commit, git, git_ok, git_with, head, url};
use spacedock_cluster_tests::{Coordinator, api, http_get, http_get_headers};

/// A user with a write token.
fn user(c: &Coordinator, admin: &str, name: &str) -> String {
    api(
        &c.api_url,
        admin,
        "POST",
        "/api/cluster/users",
        Some(json!({ "name": name })),
    )
    .unwrap();
    let token = api(
        &c.api_url,
        admin,
        "POST",
        "/api/cluster/tokens",
        Some(json!({ "owner": name, "name": "git", "role": "write" })),
    )
    .unwrap();
    token["token"].as_str().unwrap().to_owned()
}

fn create(c: &Coordinator, token: &str, body: Value) {
    api(&c.api_url, token, "POST", "/api/repos/create", Some(body)).unwrap();
}

fn runtime(c: &Coordinator, token: &str, id: &str) -> Value {
    api(
        &c.api_url,
        token,
        "GET",
        &format!("/api/spaces/{id}/runtime"),
        None,
    )
    .unwrap()
}

const STATIC_README: &[u8] = b"---\ntitle: App\nsdk: static\n---\n# App\n";

#[test]
fn git_clones_pushes_and_pulls_with_the_hubs_rules() {
    let dir = tempfile::tempdir().unwrap();
    let c = Coordinator::bootstrap(dir.path());
    let admin = c.admin_token();
    let alice = user(&c, &admin, "alice");
    let bob = user(&c, &admin, "bob");
    create(
        &c,
        &alice,
        json!({ "name": "app", "type": "space", "sdk": "static" }),
    );

    // An empty public Space clones anonymously; the first push needs a token and makes main.
    let work = dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let first = clone(&c, None, "spaces/alice/app", &work.join("first"));
    let (ok, text) = git(&first, &["push", "-q", "origin", "HEAD:main"]);
    assert!(!ok, "an anonymous push went through: {text}");
    git_ok(&first, &["checkout", "-q", "-b", "main"]);
    let one = commit(
        &first,
        &[
            ("README.md", STATIC_README),
            ("index.html", b"<h1>one</h1>"),
        ],
        "one",
    );
    git_ok(
        &first,
        &[
            "remote",
            "set-url",
            "origin",
            &url(&c, Some(&alice), "spaces/alice/app"),
        ],
    );
    git_ok(&first, &["push", "-q", "origin", "main"]);
    let info = api(&c.api_url, &alice, "GET", "/api/spaces/alice/app", None).unwrap();
    assert_eq!(info["sha"], one, "{info}");
    // A static Space has nothing to build: it runs at once.
    assert_eq!(runtime(&c, &alice, "alice/app")["stage"], "RUNNING");

    // A second clone (anonymous, with .git) sees the push; a shallow clone has one commit.
    let second = clone(&c, None, "spaces/alice/app.git", &work.join("second"));
    assert_eq!(head(&second), one);
    assert_eq!(
        std::fs::read(second.join("index.html")).unwrap(),
        b"<h1>one</h1>"
    );

    // Push from the second clone, pull into the first.
    git_ok(
        &second,
        &[
            "remote",
            "set-url",
            "origin",
            &url(&c, Some(&alice), "spaces/alice/app"),
        ],
    );
    let two = commit(&second, &[("index.html", b"<h1>two</h1>")], "two");
    git_ok(&second, &["push", "-q", "origin", "main"]);
    git_ok(&first, &["pull", "-q", "--ff-only", "origin", "main"]);
    assert_eq!(head(&first), two);
    let shallow = work.join("shallow");
    git_ok(
        &work,
        &[
            "clone",
            "-q",
            "--depth",
            "1",
            &url(&c, None, "spaces/alice/app"),
            shallow.to_str().unwrap(),
        ],
    );
    assert_eq!(
        git_ok(&shallow, &["rev-list", "--count", "HEAD"]).trim(),
        "1"
    );

    // A likely credential is warned about, naming file and line, never repeating the value.
    let secret = "hf_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789";
    commit(
        &first,
        &[(
            "config.py",
            format!("import os\nHF_TOKEN = \"{secret}\"\n").as_bytes(),
        )],
        "oops",
    );
    let text = git_ok(&first, &["push", "origin", "main"]);
    assert!(
        text.contains("remote: warning: possible credential in config.py:2"),
        "{text}"
    );
    assert!(
        !text.contains(secret),
        "the warning repeats the secret: {text}"
    );
    assert!(
        !c.log_text().contains(secret),
        "the secret is in the coordinator's log"
    );

    // A file over 10 MiB without LFS is refused, naming the file and the limit; nothing moves.
    let before = head(&first);
    let big: Vec<u8> = (0..11 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    commit(&first, &[("weights.bin", &big)], "big");
    let (ok, text) = git(&first, &["push", "origin", "main"]);
    assert!(!ok, "a big file was accepted: {text}");
    assert!(
        text.contains("weights.bin") && text.contains("10 MiB") && text.contains("git-lfs"),
        "{text}"
    );
    let info = api(&c.api_url, &alice, "GET", "/api/spaces/alice/app", None).unwrap();
    assert_eq!(info["sha"], before.as_str());
    git_ok(&first, &["reset", "-q", "--hard", &before]);

    // A branch and a tag at a commit the cluster has (no new objects), then the branch deleted.
    git_ok(&first, &["push", "-q", "origin", "HEAD:refs/heads/copy"]);
    git_ok(&first, &["tag", "v1"]);
    git_ok(&first, &["push", "-q", "origin", "v1"]);
    let refs = api(
        &c.api_url,
        &alice,
        "GET",
        "/api/spaces/alice/app/refs",
        None,
    )
    .unwrap();
    assert_eq!(refs["branches"].as_array().unwrap().len(), 2, "{refs}");
    assert_eq!(refs["tags"][0]["name"], "v1", "{refs}");
    git_ok(&first, &["push", "-q", "origin", "--delete", "copy"]);
    let refs = api(
        &c.api_url,
        &alice,
        "GET",
        "/api/spaces/alice/app/refs",
        None,
    )
    .unwrap();
    assert_eq!(refs["branches"].as_array().unwrap().len(), 1, "{refs}");

    // A stale push is refused; a forced one rewrites history and says so.
    let stale = commit(&second, &[("other.txt", b"x")], "stale");
    let (ok, text) = git(&second, &["push", "origin", "main"]);
    assert!(!ok && text.contains("rejected"), "{text}");
    let text = git_ok(&second, &["push", "--force", "origin", "main"]);
    assert!(text.contains("history rewritten"), "{text}");
    let info = api(&c.api_url, &alice, "GET", "/api/spaces/alice/app", None).unwrap();
    assert_eq!(info["sha"], stale.as_str());
    let refs = api(
        &c.api_url,
        &alice,
        "GET",
        "/api/spaces/alice/app/refs",
        None,
    )
    .unwrap();
    let rewrite = &refs["rewrites"][0];
    assert_eq!(
        (
            rewrite["ref"].as_str(),
            rewrite["to"].as_str(),
            rewrite["by"].as_str()
        ),
        (Some("refs/heads/main"), Some(stale.as_str()), Some("alice")),
        "{refs}"
    );

    // Someone without write access is refused; the repo is as it was.
    let bobs = clone(&c, Some(&bob), "spaces/alice/app", &work.join("bobs"));
    commit(&bobs, &[("evil.txt", b"x")], "evil");
    let (ok, text) = git(&bobs, &["push", "origin", "main"]);
    assert!(!ok && text.contains("403"), "{text}");
    assert_eq!(
        head(&clone(&c, None, "spaces/alice/app", &work.join("third"))),
        stale
    );

    // A README that does not configure a Space, and an app file that is missing.
    git_ok(&second, &["pull", "-q", "origin", "main"]);
    commit(
        &second,
        &[("README.md", b"---\nsdk: rails\n---\n")],
        "bad config",
    );
    git_ok(&second, &["push", "-q", "origin", "main"]);
    let rt = runtime(&c, &alice, "alice/app");
    assert_eq!(rt["stage"], "CONFIG_ERROR", "{rt}");
    assert!(
        rt["errorMessage"]
            .as_str()
            .unwrap()
            .contains("README.md:2: sdk"),
        "{rt}"
    );
    commit(
        &second,
        &[("README.md", b"---\nsdk: gradio\n---\n")],
        "gradio, no app.py",
    );
    git_ok(&second, &["push", "-q", "origin", "main"]);
    let rt = runtime(&c, &alice, "alice/app");
    assert_eq!(rt["stage"], "NO_APP_FILE", "{rt}");
    assert!(
        rt["errorMessage"].as_str().unwrap().contains("app.py"),
        "{rt}"
    );
    // With its app file, a Gradio Space waits for a build.
    let with_app = commit(&second, &[("app.py", b"print('hi')\n")], "app");
    git_ok(&second, &["push", "-q", "origin", "main"]);
    let info = api(&c.api_url, &alice, "GET", "/api/spaces/alice/app", None).unwrap();
    assert_eq!(info["runtime"]["stage"], "BUILDING", "{info}");
    // The build log says where the build is (an event stream that stays open while it waits).
    let first = first_event(&c.api_url, &alice, "/api/spaces/alice/app/logs/build");
    assert!(
        first.contains("queued, waiting for a builder") && first.contains("gradio"),
        "{first}"
    );
    assert_eq!(info["sdk"], "gradio", "{info}");
    assert_eq!(info["sha"], with_app.as_str());
}

#[test]
fn private_repos_are_absent_to_outsiders_and_models_and_datasets_push() {
    let dir = tempfile::tempdir().unwrap();
    let c = Coordinator::bootstrap(dir.path());
    let admin = c.admin_token();
    let alice = user(&c, &admin, "alice");
    let bob = user(&c, &admin, "bob");
    create(&c, &alice, json!({ "name": "weights", "private": true }));
    create(&c, &alice, json!({ "name": "data", "type": "dataset" }));
    let work = dir.path().join("work");
    std::fs::create_dir(&work).unwrap();

    for (path, token) in [
        ("alice/weights", Some(&alice)),
        ("datasets/alice/data", Some(&alice)),
    ] {
        let name = path.replace('/', "-");
        let repo = clone(&c, token.map(String::as_str), path, &work.join(&name));
        git_ok(&repo, &["checkout", "-q", "-b", "main"]);
        let sha = commit(&repo, &[("README.md", b"# weights\n")], "init");
        git_ok(&repo, &["push", "-q", "origin", "main"]);
        let again = clone(
            &c,
            token.map(String::as_str),
            path,
            &work.join(format!("{name}-again")),
        );
        assert_eq!(head(&again), sha);
    }
    // Anonymous: asked for credentials (and none given); another user: not found.
    let (ok, text) = git(&work, &["clone", &url(&c, None, "alice/weights"), "anon"]);
    assert!(
        !ok && (text.contains("Authentication failed") || text.contains("could not read Username")),
        "{text}"
    );
    let (ok, text) = git(
        &work,
        &["clone", &url(&c, Some(&bob), "alice/weights"), "bob"],
    );
    assert!(!ok && text.contains("not found"), "{text}");
    let (ok, text) = git(
        &work,
        &["clone", &url(&c, Some("hf_wrong"), "alice/app"), "wrong"],
    );
    assert!(!ok && text.contains("Authentication failed"), "{text}");
}

#[test]
fn an_acknowledged_push_survives_the_leaders_kill() {
    let dir = tempfile::tempdir().unwrap();
    let mut c1 = Coordinator::bootstrap(dir.path());
    let admin = c1.admin_token();
    let c2 = Coordinator::join(dir.path(), 2, &c1, &admin);
    let c3 = Coordinator::join(dir.path(), 3, &c1, &admin);
    let alice = user(&c1, &admin, "alice");
    create(
        &c1,
        &alice,
        json!({ "name": "app", "type": "space", "sdk": "static" }),
    );
    let work = dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let repo = clone(&c1, Some(&alice), "spaces/alice/app", &work.join("repo"));
    git_ok(&repo, &["checkout", "-q", "-b", "main"]);
    let files: Vec<(String, Vec<u8>)> = (0..200)
        .map(|i| (format!("src/f{i}.txt"), format!("file {i}\n").into_bytes()))
        .collect();
    let mut refs: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(n, b)| (n.as_str(), b.as_slice()))
        .collect();
    refs.push(("README.md", STATIC_README));
    refs.push(("index.html", b"<h1>hi</h1>"));
    let sha = commit(&repo, &refs, "many files");
    git_ok(&repo, &["push", "-q", "origin", "main"]);
    c1.kill();
    // A survivor serves the clone (fetching the pack from the other survivor if it lacks it).
    let waited = Instant::now();
    let cloned = loop {
        let into = work.join(format!("after-{}", waited.elapsed().as_millis()));
        let (ok, text) = git(
            &work,
            &[
                "clone",
                "-q",
                &url(&c2, Some(&alice), "spaces/alice/app"),
                into.to_str().unwrap(),
            ],
        );
        if ok {
            break into;
        }
        assert!(
            waited.elapsed() < Duration::from_secs(30),
            "no clone from a survivor: {text}"
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    assert_eq!(head(&cloned), sha);
    assert_eq!(
        std::fs::read(cloned.join("src/f199.txt")).unwrap(),
        b"file 199\n"
    );
    let from_third = clone(&c3, Some(&alice), "spaces/alice/app", &work.join("third"));
    assert_eq!(head(&from_third), sha);
}

/// Three coordinators and the admin's model repo `admin/big` on them; returns them and the admin's token.
fn three_with_big_repo(dir: &Path) -> ([Coordinator; 3], String) {
    let c1 = Coordinator::bootstrap(dir);
    let admin = c1.admin_token();
    let c2 = Coordinator::join(dir, 2, &c1, &admin);
    let c3 = Coordinator::join(dir, 3, &c1, &admin);
    create(&c1, &admin, json!({ "name": "big" }));
    ([c1, c2, c3], admin)
}

/// `mib` MiB of bytes made from `seed`, and their sha256.
fn lfs_bytes(mib: u32, seed: u32) -> (Vec<u8>, String) {
    use sha2::Digest as _;
    let bytes: Vec<u8> = (0..mib << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> seed) as u8)
        .collect();
    let oid = hex::encode(sha2::Sha256::digest(&bytes));
    (bytes, oid)
}

/// The upload URL the batch API of `c` hands out for an object of `admin/big`.
fn lfs_upload_href(c: &Coordinator, admin: &str, oid: &str, size: usize) -> String {
    let batch = api(
        &c.api_url,
        admin,
        "POST",
        "/admin/big.git/info/lfs/objects/batch",
        Some(json!({ "operation": "upload", "objects": [{ "oid": oid, "size": size }] })),
    )
    .unwrap();
    batch["objects"][0]["actions"]["upload"]["href"]
        .as_str()
        .unwrap_or_else(|| panic!("no upload action: {batch}"))
        .to_owned()
}

/// An LFS upload to a 3-coordinator cluster is passed on to a peer while it arrives: once acknowledged, a
/// quorum holds it; an upload whose bytes do not match its oid is refused and no coordinator keeps anything.
#[test]
fn an_lfs_upload_is_on_a_quorum_when_acknowledged_and_a_bad_one_nowhere() {
    let dir = tempfile::tempdir().unwrap();
    let (cs, admin) = three_with_big_repo(dir.path());
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let upload = |oid: &str, bytes: &[u8]| {
        let href = lfs_upload_href(&cs[0], &admin, oid, bytes.len());
        agent.put(&href).send(bytes).unwrap().status().as_u16()
    };
    let holding = |oid: &str| {
        cs.iter()
            .filter(|c| c.data_dir.join(format!("blobs/sha256/{oid}.b3")).exists())
            .count()
    };
    // Over 4 MiB, so the sha256 runs on its own thread too.
    let (bytes, oid) = lfs_bytes(6, 13);
    assert_eq!(upload(&oid, &bytes), 200);
    assert!(
        holding(&oid) >= 2,
        "acknowledged on {} coordinators",
        holding(&oid)
    );

    // Bytes that are not the claimed object's.
    let (_, claimed) = lfs_bytes(6, 7);
    let status = upload(&claimed, &bytes);
    assert!(
        (400..500).contains(&status),
        "a mismatched upload answered {status}"
    );
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(holding(&claimed), 0, "a mismatched upload was kept");
    for c in &cs {
        let tmp = c.data_dir.join("blobs/tmp");
        assert_eq!(
            files_under(&tmp),
            0,
            "coordinator {} left files in {}",
            c.id,
            tmp.display()
        );
    }
}

/// A peer that stops taking an upload's bytes mid-way (here: stopped with SIGSTOP) does not hold the upload up:
/// the leader leaves it out (once its QUIC connection times out, or after it took nothing for 30 s) and the
/// third coordinator takes the copy.
#[test]
fn a_stuck_peer_does_not_hold_an_lfs_upload_up() {
    let dir = tempfile::tempdir().unwrap();
    let ([c1, c2, c3], admin) = three_with_big_repo(dir.path());
    let (bytes, oid) = lfs_bytes(96, 11);
    let file = dir.path().join("big.bin");
    std::fs::write(&file, &bytes).unwrap();
    let href = lfs_upload_href(&c1, &admin, &oid, bytes.len());
    // 96 MiB at 16 MiB/s: the first peer (coordinator 2) is stopped a second in, with most still to come.
    let started = Instant::now();
    let upload = Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--limit-rate",
            "16M",
            "-T",
        ])
        .arg(&file)
        .arg(&href)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let pid = c2.pid().unwrap().to_string();
    let signal = |sig: &str| {
        assert!(
            Command::new("kill")
                .args([sig, &pid])
                .status()
                .unwrap()
                .success()
        )
    };
    signal("-STOP");
    let out = upload.wait_with_output().unwrap();
    let took = started.elapsed();
    signal("-CONT");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "200",
        "the upload with a peer stopped"
    );
    assert!(took < Duration::from_secs(90), "the upload took {took:?}");
    for c in [&c1, &c3] {
        assert!(
            c.data_dir.join(format!("blobs/sha256/{oid}.b3")).exists(),
            "coordinator {} does not hold the acknowledged upload",
            c.id
        );
    }
}

#[test]
fn git_lfs_pushes_and_fetches_large_files() {
    let dir = tempfile::tempdir().unwrap();
    let c = Coordinator::bootstrap(dir.path());
    let admin = c.admin_token();
    let alice = user(&c, &admin, "alice");
    create(&c, &alice, json!({ "name": "weights" }));
    create(&c, &alice, json!({ "name": "other" }));
    let work = dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    // git-lfs's filters, as `git lfs install` writes them, in a user config of the test's own.
    let global = dir.path().join("gitconfig");
    std::fs::write(
        &global,
        "[filter \"lfs\"]\n\tclean = git-lfs clean -- %f\n\tsmudge = git-lfs smudge -- %f\n\
         \tprocess = git-lfs filter-process\n\trequired = true\n[lfs]\n\tlocksverify = false\n",
    )
    .unwrap();
    let global = global.to_str().unwrap();
    let lfs_ok = |cwd: &Path, args: &[&str]| {
        let (ok, text) = git_with(cwd, args, global);
        assert!(ok, "git {args:?} failed:\n{text}");
        text
    };
    let repo = work.join("repo");
    lfs_ok(
        &work,
        &[
            "clone",
            "-q",
            &url(&c, Some(&alice), "alice/weights"),
            repo.to_str().unwrap(),
        ],
    );
    lfs_ok(&repo, &["checkout", "-q", "-b", "main"]);
    lfs_ok(&repo, &["lfs", "track", "*.bin"]);
    let big: Vec<u8> = (0..12 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_246_822_519) >> 24) as u8)
        .collect();
    std::fs::write(repo.join("model.bin"), &big).unwrap();
    lfs_ok(&repo, &["add", "-A"]);
    lfs_ok(&repo, &["commit", "-q", "-m", "weights"]);
    lfs_ok(&repo, &["push", "-q", "origin", "main"]);

    // A fresh clone gets the bytes back through the batch API.
    let copy = work.join("copy");
    lfs_ok(
        &work,
        &[
            "clone",
            "-q",
            &url(&c, Some(&alice), "alice/weights"),
            copy.to_str().unwrap(),
        ],
    );
    assert!(
        std::fs::read(copy.join("model.bin")).unwrap() == big,
        "the LFS file came back different"
    );
    // The Hub's resolve answers with the LFS object's sha256 and size.
    let oid = {
        use sha2::Digest as _;
        hex::encode(sha2::Sha256::digest(&big))
    };
    let response = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .new_agent()
        .head(&format!(
            "{}/alice/weights/resolve/main/model.bin",
            c.api_url
        ))
        .header("Authorization", &format!("Bearer {alice}"))
        .call()
        .unwrap();
    let h = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(h("x-linked-etag"), format!("\"{oid}\""));
    assert_eq!(h("x-linked-size"), big.len().to_string());

    // A pointer to an object never uploaded to this repo (here: one uploaded to another) is refused.
    let other = work.join("other");
    lfs_ok(
        &work,
        &[
            "clone",
            "-q",
            &url(&c, Some(&alice), "alice/other"),
            other.to_str().unwrap(),
        ],
    );
    lfs_ok(&other, &["checkout", "-q", "-b", "main"]);
    let pointer = format!(
        "version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {}\n",
        big.len()
    );
    std::fs::write(other.join("stolen.bin"), pointer).unwrap();
    let (ok, text) = git(&other, &["add", "-A"]);
    assert!(ok, "{text}");
    git_ok(&other, &["commit", "-q", "-m", "pointer only"]);
    let (ok, text) = git(&other, &["push", "origin", "main"]);
    assert!(
        !ok && text.contains("LFS objects not uploaded") && text.contains("stolen.bin"),
        "{text}"
    );
}

/// A push request as git sends it: one command and a pack.
fn push_body(old: &str, new: &str, pack: &[u8]) -> Vec<u8> {
    let line = format!("{old} {new} refs/heads/main\0report-status side-band-64k\n");
    let mut body = format!("{:04x}{line}0000", line.len() + 4).into_bytes();
    body.extend_from_slice(pack);
    body
}

fn post_push(c: &Coordinator, token: &str, body: Vec<u8>) -> String {
    let (status, text) = post_push_status(c, token, body);
    assert_eq!(status, 200, "{text}");
    text
}

fn post_push_status(c: &Coordinator, token: &str, body: Vec<u8>) -> (u16, String) {
    let mut response = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .new_agent()
        .post(&format!("{}/alice/model/git-receive-pack", c.api_url))
        .header("Authorization", &format!("Bearer {token}"))
        .header("Content-Type", "application/x-git-receive-pack-request")
        .send(&body[..])
        .unwrap();
    let status = response.status().as_u16();
    let text = String::from_utf8_lossy(&response.body_mut().read_to_vec().unwrap()).into_owned();
    (status, text)
}

fn files_under(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries
            .flatten()
            .map(|e| {
                if e.path().is_dir() {
                    files_under(&e.path())
                } else {
                    1
                }
            })
            .sum()
    })
}

#[test]
fn corrupt_and_malformed_pushes_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let c = Coordinator::bootstrap(dir.path());
    let admin = c.admin_token();
    let alice = user(&c, &admin, "alice");
    create(&c, &alice, json!({ "name": "model" }));
    let work = dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let repo = clone(&c, Some(&alice), "alice/model", &work.join("repo"));
    git_ok(&repo, &["checkout", "-q", "-b", "main"]);
    let first = commit(&repo, &[("README.md", b"# model\n")], "one");
    git_ok(&repo, &["push", "-q", "origin", "main"]);
    let blobs = c.data_dir.join("blobs/sha256");
    let stored = files_under(&blobs);
    let zero = "0".repeat(40);

    // A second commit's pack, made by git, then damaged in the middle: index-pack refuses it.
    let second = commit(
        &repo,
        &[("data.txt", "payload ".repeat(5000).as_bytes())],
        "two",
    );
    let out = Command::new("git")
        .current_dir(&repo)
        .args(["pack-objects", "--stdout", "--revs"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    out.stdin
        .as_ref()
        .unwrap()
        .write_all(format!("{second}\n^{first}\n").as_bytes())
        .unwrap();
    let pack = out.wait_with_output().unwrap().stdout;
    assert!(pack.starts_with(b"PACK"));
    let mut corrupt = pack.clone();
    let middle = corrupt.len() / 2;
    for b in &mut corrupt[middle..middle + 16] {
        *b ^= 0xff;
    }
    let report = post_push(&c, &alice, push_body(&first, &second, &corrupt));
    assert!(
        report.contains("unpack index-pack failed") && report.contains("ng refs/heads/main"),
        "{report}"
    );
    // Truncated, and a command whose commit is not in the pack.
    let report = post_push(
        &c,
        &alice,
        push_body(&first, &second, &pack[..pack.len() / 3]),
    );
    assert!(report.contains("ng refs/heads/main"), "{report}");
    let report = post_push(&c, &alice, push_body(&first, &"b".repeat(40), &pack));
    assert!(report.contains("ng refs/heads/main"), "{report}");
    // A stale old value (another push came first) and a malformed command list.
    let report = post_push(&c, &alice, push_body(&zero, &second, &pack));
    assert!(
        report.contains("ng refs/heads/main") && report.contains("moved"),
        "{report}"
    );
    let (status, report) = post_push_status(&c, &alice, b"001cnot a command at all\n0000".to_vec());
    assert!(
        status == 400 && report.contains("malformed push command"),
        "{report}"
    );

    // A tree entry named `.git` is refused by the strict index.
    let tree_input = format!(
        "100644 blob {}\t.git\n",
        git_ok(&repo, &["rev-parse", "HEAD:README.md"]).trim()
    );
    let mut mktree = Command::new("git")
        .current_dir(&repo)
        .args(["mktree"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    mktree
        .stdin
        .take()
        .unwrap()
        .write_all(tree_input.as_bytes())
        .unwrap();
    let tree = String::from_utf8(mktree.wait_with_output().unwrap().stdout).unwrap();
    let evil = git_ok(
        &repo,
        &["commit-tree", tree.trim(), "-p", &first, "-m", "evil"],
    );
    git_ok(&repo, &["update-ref", "refs/heads/evil", evil.trim()]);
    let (ok, text) = git(&repo, &["push", "origin", "evil:main"]);
    assert!(!ok && text.contains(".git"), "{text}");

    // Nothing of all that was kept: main is where it was, no blob was stored, no scratch is left.
    let info = api(&c.api_url, &alice, "GET", "/api/models/alice/model", None).unwrap();
    assert_eq!(info["sha"], first.as_str());
    assert_eq!(
        files_under(&blobs),
        stored,
        "a refused push left blobs behind"
    );
    assert_eq!(
        files_under(&c.data_dir.join("git/tmp")),
        0,
        "scratch directories were left behind"
    );
}

#[test]
fn a_pushed_static_space_is_served_by_every_coordinator() {
    let dir = tempfile::tempdir().unwrap();
    let c1 = Coordinator::bootstrap(dir.path());
    let admin = c1.admin_token();
    let c2 = Coordinator::join(dir.path(), 2, &c1, &admin);
    let alice = user(&c1, &admin, "alice");
    create(
        &c1,
        &alice,
        json!({ "name": "site", "type": "space", "sdk": "static" }),
    );
    api(
        &c1.api_url,
        &alice,
        "POST",
        "/api/spaces/alice/site/variables",
        Some(json!({ "key": "GREETING", "value": "hello </script>" })),
    )
    .unwrap();
    let work = dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let repo = clone(&c1, Some(&alice), "spaces/alice/site", &work.join("site"));
    git_ok(&repo, &["checkout", "-q", "-b", "main"]);
    commit(
        &repo,
        &[
            (
                "README.md",
                b"---\nsdk: static\napp_file: main.html\ndisable_embedding: true\ncustom_headers:\n  cross-origin-opener-policy: same-origin\n---\n",
            ),
            (
                "main.html",
                b"<html><head><title>site</title></head><body>first page</body></html>",
            ),
            ("style.css", b"body { color: red }"),
            ("docs/index.html", b"<p>docs</p>"),
        ],
        "site",
    );
    git_ok(&repo, &["push", "-q", "origin", "main"]);
    assert_eq!(runtime(&c1, &alice, "alice/site")["stage"], "RUNNING");

    for c in [&c1, &c2] {
        let (status, body) = http_get(&c.api_url, "alice-site.localhost", "/").unwrap();
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("first page"), "{body}");
        assert!(
            body.contains(r#"<head><script>window.huggingface = {"variables":{"GREETING":"hello <\/script>"}};</script><title>"#),
            "{body}"
        );
        // The README's custom_headers and disable_embedding are on the answers.
        let (_, headers) = http_get_headers(&c.api_url, "alice-site.localhost", "/").unwrap();
        let header = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(
            header("cross-origin-opener-policy"),
            Some("same-origin"),
            "{headers:?}"
        );
        assert_eq!(header("x-frame-options"), Some("DENY"));
        assert_eq!(
            header("content-security-policy"),
            Some("frame-ancestors 'none'")
        );
        let (status, body) = http_get(&c.api_url, "alice-site.localhost", "/style.css").unwrap();
        assert_eq!((status, body.as_str()), (200, "body { color: red }"));
        let (status, body) = http_get(&c.api_url, "alice-site.localhost", "/docs/").unwrap();
        assert!(
            status == 200 && body.contains("<p>docs</p>"),
            "{status} {body}"
        );
        for missing in ["/nope.html", "/../README.md", "/.git/config"] {
            let (status, _) = http_get(&c.api_url, "alice-site.localhost", missing).unwrap();
            assert_eq!(status, 404, "{missing}");
        }
    }
    // HTTP/2 (prior knowledge, as a TLS-terminating proxy would speak it) reaches the Space too.
    let text =
        spacedock_cluster_tests::http2_get(&c1.api_url, "alice-site.localhost", "/style.css");
    assert!(text.ends_with("body { color: red }\n2 200"), "{text}");

    // A new commit is served at once.
    commit(&repo, &[("main.html", b"<p>second page</p>")], "second");
    git_ok(&repo, &["push", "-q", "origin", "main"]);
    let (_, body) = http_get(&c2.api_url, "alice-site.localhost", "/").unwrap();
    assert!(body.contains("second page"), "{body}");

    // Private: absent without a token; a token in a header or, after signing in, in a cookie opens it.
    api(
        &c1.api_url,
        &alice,
        "PUT",
        "/api/spaces/alice/site/settings",
        Some(json!({ "private": true })),
    )
    .unwrap();
    let (status, body) = http_get(&c1.api_url, "alice-site.localhost", "/").unwrap();
    assert!(
        status == 404 && body.contains("/__spacedock/login"),
        "{status} {body}"
    );
    let bearer = format!("Bearer {alice}");
    let (status, _) = spacedock_cluster_tests::http_get_with(
        &c1.api_url,
        "alice-site.localhost",
        "/",
        &[("Authorization", &bearer)],
    )
    .unwrap();
    assert_eq!(status, 200);
    let answer = post_form(
        &c1.api_url,
        "alice-site.localhost",
        "/__spacedock/login",
        &format!("token={alice}"),
    );
    assert!(answer.starts_with("HTTP/1.1 303"), "{answer}");
    assert!(
        answer.contains("spacedock_token=") && answer.contains("HttpOnly"),
        "{answer}"
    );
    let cookie = format!("spacedock_token={alice}");
    let (status, body) = spacedock_cluster_tests::http_get_with(
        &c2.api_url,
        "alice-site.localhost",
        "/",
        &[("Cookie", &cookie)],
    )
    .unwrap();
    assert!(
        status == 200 && body.contains("second page"),
        "{status} {body}"
    );
    let bob = user(&c1, &admin, "bob");
    let answer = post_form(
        &c1.api_url,
        "alice-site.localhost",
        "/__spacedock/login",
        &format!("token={bob}"),
    );
    assert!(
        answer.starts_with("HTTP/1.1 401") && !answer.contains("Set-Cookie"),
        "{answer}"
    );
}

/// A form POST to a Space host; the whole answer.
fn post_form(base: &str, host: &str, path: &str, form: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(base.trim_start_matches("http://")).unwrap();
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/x-www-form-urlencoded\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{form}",
        form.len()
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
}

/// The first event of an event stream (read from a raw connection, which is then dropped).
fn first_event(base: &str, token: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(base.trim_start_matches("http://")).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: api\r\nAuthorization: Bearer {token}\r\n\r\n"
    )
    .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let complete = |seen: &[u8]| {
        let text = String::from_utf8_lossy(seen);
        text.split_once("data: {")
            .is_some_and(|(_, event)| event.contains("\n\n"))
    };
    while !complete(&seen) {
        let n = stream.read(&mut buf).unwrap();
        assert!(
            n > 0,
            "the stream ended: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&seen).into_owned()
}

#[test]
fn many_pushes_are_compacted_into_one_pack_and_nothing_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let c = Coordinator::bootstrap(dir.path());
    let admin = c.admin_token();
    let alice = user(&c, &admin, "alice");
    create(&c, &alice, json!({ "name": "busy" }));
    let work = dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let repo = clone(&c, Some(&alice), "alice/busy", &work.join("repo"));
    git_ok(&repo, &["checkout", "-q", "-b", "main"]);
    let mut last = String::new();
    for i in 0..17 {
        last = commit(
            &repo,
            &[(&format!("f{i}.txt"), format!("push {i}\n").as_bytes())],
            &format!("push {i}"),
        );
        git_ok(&repo, &["push", "-q", "origin", "main"]);
    }
    // Every push added a pack; the sixteenth set off a compaction. A clone syncs the mirror, which then keeps
    // only the packs the repo still has.
    let packs = || {
        let mut n = 0;
        for repo in std::fs::read_dir(c.data_dir.join("git/repos"))
            .unwrap()
            .flatten()
        {
            for f in std::fs::read_dir(repo.path().join("objects/pack"))
                .unwrap()
                .flatten()
            {
                n += usize::from(f.file_name().to_string_lossy().ends_with(".pack"));
            }
        }
        n
    };
    let started = Instant::now();
    let mut round = 0;
    let cloned = loop {
        round += 1;
        let into = work.join(format!("check-{round}"));
        let cloned = clone(&c, Some(&alice), "alice/busy", &into);
        if packs() <= 2 {
            break cloned;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "still {} packs",
            packs()
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    assert_eq!(head(&cloned), last);
    assert_eq!(
        git_ok(&cloned, &["rev-list", "--count", "HEAD"]).trim(),
        "17"
    );
    assert_eq!(std::fs::read(cloned.join("f0.txt")).unwrap(), b"push 0\n");
}
