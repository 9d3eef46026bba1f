//! Builds end to end with real processes and the suite's containerd: a Docker Space pushed with git is built
//! by a `spacedock-builder` (base from the cluster's image store, RUN steps in containerd, a secret mount,
//! COPY --chown, ENV, CMD), run by an agent and answered through the ingress; an unchanged commit rebuilds to
//! the same image from the cache; a one-file change remakes only the app layer; the secret is in no layer;
//! failing builds end in BUILD_ERROR naming the step and line.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test harness: panics are how tests fail

use std::io::Read as _;

use sha2::Digest as _;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use spacedock_cluster_tests::browser::Browser;
use spacedock_cluster_tests::git::{clone, commit, git_ok, git_with};
use spacedock_cluster_tests::{
    Agent, ContainersGuard, Coordinator, api, api_bytes, busybox_image, http_get, repo_root, run,
    sse_data, test_flavors_config,
};

const SECRET: &str = "s3cr3t-build-token-value";

/// A coordinator, an agent and a builder, with busybox imported as `busybox:latest`.
struct Cluster {
    dir: tempfile::TempDir,
    c: Coordinator,
    admin: String,
    agent: Agent,
    builder: Agent,
    _containers: ContainersGuard,
    _steps: ContainersGuard,
}

impl Cluster {
    fn start(test: &str, subnet: &str) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let config = test_flavors_config(dir.path());
        let c = Coordinator::bootstrap_with(dir.path(), &["--config", &config]);
        let admin = c.admin_token();
        let join_token = |role: &str| {
            api(
                &c.api_url,
                &admin,
                "POST",
                "/api/cluster/join-tokens",
                Some(json!({ "role": role })),
            )
            .unwrap()["token"]
                .as_str()
                .unwrap()
                .to_owned()
        };
        let namespace = format!("sdtest-{test}-{}", std::process::id());
        let steps = format!("sdbuild-{test}-{}", std::process::id());
        let agent = Agent::start(
            dir.path(),
            &format!("node-{test}"),
            &c.quic_addr,
            Some(&join_token("agent")),
            &[
                "--container-subnet",
                subnet,
                "--containerd-namespace",
                &namespace,
            ],
        );
        let builder = Agent::start_builder(
            dir.path(),
            &format!("builder-{test}"),
            &c.quic_addr,
            Some(&join_token("builder")),
            &steps,
        );
        let archive = busybox_image(dir.path(), "busybox:latest", &["sh"], "base");
        let out = run(
            "spacedock",
            &["image", "import", archive.to_str().unwrap()],
            &[("HF_ENDPOINT", &c.api_url), ("HF_TOKEN", &admin)],
        );
        assert_eq!(out.code, Some(0), "{out:?}");
        Cluster {
            dir,
            c,
            admin,
            agent,
            builder,
            _containers: ContainersGuard { namespace },
            _steps: ContainersGuard { namespace: steps },
        }
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        api(&self.c.api_url, &self.admin, method, path, body).unwrap()
    }

    /// Creates `admin/NAME` (docker, the test flavor, a secret and a variable) and clones it.
    fn space(&self, name: &str) -> std::path::PathBuf {
        let id = format!("admin/{name}");
        self.call(
            "POST",
            "/api/repos/create",
            Some(json!({ "type": "space", "name": name, "sdk": "docker" })),
        );
        self.call(
            "POST",
            &format!("/api/spaces/{id}/hardware"),
            Some(json!({ "flavor": "test-small" })),
        );
        self.call(
            "POST",
            &format!("/api/spaces/{id}/secrets"),
            Some(json!({ "key": "API_TOKEN", "value": SECRET })),
        );
        self.call(
            "POST",
            &format!("/api/spaces/{id}/variables"),
            Some(json!({ "key": "GREETING", "value": "hello" })),
        );
        clone(
            &self.c,
            Some(&self.admin),
            &format!("spaces/{id}"),
            &self.dir.path().join(format!("clone-{name}")),
        )
    }

    fn runtime(&self, id: &str) -> Value {
        self.call("GET", &format!("/api/spaces/{id}/runtime"), None)
    }

    /// Waits for the Space to reach `stage`, failing at once on an error stage it was not waiting for.
    fn wait_stage(&self, id: &str, stage: &str, limit: Duration) -> Value {
        let started = Instant::now();
        loop {
            let runtime = self.runtime(id);
            if runtime["stage"] == stage {
                return runtime;
            }
            let error = [
                "BUILD_ERROR",
                "RUNTIME_ERROR",
                "CONFIG_ERROR",
                "NO_APP_FILE",
            ];
            assert!(
                !error.contains(&runtime["stage"].as_str().unwrap_or_default()),
                "{id} is {runtime}, waiting for {stage}\nbuilder log:\n{}",
                self.builder.log_text()
            );
            assert!(
                started.elapsed() < limit,
                "{id} not {stage} within {limit:?}: {runtime}\nbuilder log:\n{}\nagent log:\n{}",
                self.builder.log_text(),
                self.agent.log_text()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The stored image a Space runs: its manifest digest and layer digests. The manifest is a blob in the
    /// store, an OCI image manifest naming the image's config and layers.
    fn image(&self, id: &str) -> (String, Vec<String>) {
        let name = format!("spaces/{id}");
        let images = self.call("GET", "/api/images", None);
        let image = images
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["name"] == name.as_str())
            .unwrap_or_else(|| panic!("no image {name} in {images}"))
            .clone();
        let layers = image["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["digest"].as_str().unwrap().to_owned())
            .collect::<Vec<String>>();
        let digest = image["manifest"].as_str().unwrap().to_owned();
        let manifest: Value = serde_json::from_slice(&self.blob(&digest)).unwrap();
        assert_eq!(
            manifest["mediaType"], "application/vnd.oci.image.manifest.v1+json",
            "{manifest}"
        );
        assert_eq!(manifest["config"]["digest"], image["id"], "{manifest}");
        let named: Vec<&str> = manifest["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["digest"].as_str().unwrap())
            .collect();
        assert_eq!(named, layers, "{manifest}");
        (digest, layers)
    }

    fn blob(&self, digest: &str) -> Vec<u8> {
        api_bytes(
            &self.c.api_url,
            &self.admin,
            &format!("/api/blobs/{digest}"),
        )
    }

    /// The build log as it is now (the stream read for a moment).
    fn build_log_so_far(&self, id: &str) -> String {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_millis(1500)))
            .build()
            .into();
        let Ok(response) = agent
            .get(&format!("{}/api/spaces/{id}/logs/build", self.c.api_url))
            .header("Authorization", &format!("Bearer {}", self.admin))
            .call()
        else {
            return String::new();
        };
        let mut bytes = Vec::new();
        let _ = response.into_body().into_reader().read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// The build log through the API (SSE events' `data`), until the build is done.
    fn build_log(&self, id: &str) -> String {
        let path = format!("/api/spaces/{id}/logs/build");
        sse_data(&api_bytes(&self.c.api_url, &self.admin, &path)).concat()
    }
}

/// Path, owner and bytes of each entry in a layer tar.
fn layer_files(tar_bytes: &[u8]) -> Vec<(String, u64, Vec<u8>)> {
    let mut archive = tar::Archive::new(tar_bytes);
    let mut files = Vec::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().to_string_lossy().into_owned();
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).unwrap();
        files.push((path, entry.header().uid().unwrap(), bytes));
    }
    files
}

const DOCKERFILE: &str = r#"FROM busybox:latest
ARG GREETING=none
RUN /bin/busybox --install -s /bin && mkdir -p /etc && echo 'user:x:1000:1000::/home/user:/bin/sh' > /etc/passwd && echo 'user:x:1000:' > /etc/group
RUN --mount=type=secret,id=API_TOKEN,required=true wc -c < /run/secrets/API_TOKEN > /token-length && echo "greeting is $GREETING"
USER user
ENV PAGE_DIR=/home/user/app
WORKDIR /home/user/app
COPY --chown=user index.html ./
EXPOSE 8000
CMD ["httpd", "-f", "-p", "8000", "-h", "/home/user/app"]
"#;

const README: &[u8] = b"---\ntitle: Built\nsdk: docker\napp_port: 8000\n---\n";

#[test]
fn a_pushed_docker_space_is_built_run_and_rebuilt_from_its_cache() {
    let cl = Cluster::start("docker", "10.91.0.0/24");
    let id = "admin/built";
    let repo = cl.space("built");
    commit(
        &repo,
        &[
            ("README.md", README),
            ("Dockerfile", DOCKERFILE.as_bytes()),
            ("index.html", b"<h1>built by spacedock</h1>\n"),
        ],
        "first",
    );
    git_ok(&repo, &["push", "-q", "origin", "HEAD:main"]);
    cl.wait_stage(id, "RUNNING", Duration::from_secs(180));
    let (status, body) = http_get(&cl.c.api_url, "admin-built.localhost", "/").unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("built by spacedock"), "{body}");

    // The build log: each step, the RUN's own output with the variable as a build argument.
    let log = cl.build_log(id);
    assert!(log.contains("step 1/3: Dockerfile:3 RUN"), "{log}");
    assert!(log.contains("greeting is hello"), "{log}");
    assert!(log.contains("step 3/3: Dockerfile:8 COPY"), "{log}");
    assert!(!log.contains(SECRET), "{log}");

    // The image: the base layer and one per step; the secret reached the step but no layer holds it.
    let (image_id, layers) = cl.image(id);
    assert_eq!(layers.len(), 4, "{layers:?}");
    let log = cl.build_log(id);
    assert!(
        log.contains(&format!("image spaces/{id}@{image_id}")),
        "the builder reports the manifest digest:\n{log}"
    );
    let (mut saw_length, mut saw_page) = (false, false);
    for digest in &layers {
        let bytes = cl.blob(digest);
        assert!(
            !bytes.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()),
            "layer {digest} holds the secret"
        );
        for (path, uid, content) in layer_files(&bytes) {
            assert!(!path.starts_with("run/secrets/"), "{path} in {digest}");
            if path == "token-length" {
                assert_eq!(
                    String::from_utf8_lossy(&content).trim(),
                    SECRET.len().to_string()
                );
                saw_length = true;
            }
            if path == "home/user/app/index.html" {
                assert_eq!(uid, 1000, "COPY --chown=user");
                saw_page = true;
            }
        }
    }
    assert!(saw_length, "the secret was readable in its step");
    assert!(saw_page);

    // An unchanged tree (an empty commit) rebuilds from the cache to the same image.
    commit_empty(&repo, "again");
    git_ok(&repo, &["push", "-q", "origin", "HEAD:main"]);
    wait_newer_build(&cl, id, &image_id, false);
    let (same_id, same_layers) = cl.image(id);
    assert_eq!(
        same_id, image_id,
        "an unchanged commit gives the same image"
    );
    assert_eq!(same_layers, layers);
    assert_eq!(
        cl.runtime(id)["stage"],
        "RUNNING",
        "the running Space is left alone"
    );
    let log = cl.build_log(id);
    assert_eq!(log.matches("  cached: ").count(), 3, "{log}");

    // A factory restart rebuilds without the cache: every step made again, to the same image.
    api(
        &cl.c.api_url,
        &cl.admin,
        "POST",
        &format!("/api/spaces/{id}/restart?factory=true"),
        None,
    )
    .unwrap();
    let started = Instant::now();
    let log = loop {
        let log = cl.build_log(id);
        if log.contains("without the cache") && log.contains("built spaces/") {
            break log;
        }
        assert!(started.elapsed() < Duration::from_secs(120), "{log}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(log.matches("  cached: ").count(), 0, "{log}");
    assert_eq!(log.matches("  made ").count(), 3, "{log}");
    assert_eq!(cl.image(id).0, image_id, "the same image without the cache");

    // A one-file change: only the COPY layer is made again.
    commit(&repo, &[("index.html", b"<h1>changed</h1>\n")], "change");
    git_ok(&repo, &["push", "-q", "origin", "HEAD:main"]);
    wait_newer_build(&cl, id, &image_id, true);
    let (new_id, new_layers) = cl.image(id);
    assert_ne!(new_id, image_id);
    assert_eq!(
        new_layers[..3],
        layers[..3],
        "base and RUN layers are reused"
    );
    assert_ne!(new_layers[3], layers[3], "the COPY layer is new");
    let log = cl.build_log(id);
    assert_eq!(log.matches("  cached: ").count(), 2, "{log}");
    assert_eq!(log.matches("  made ").count(), 1, "{log}");
    cl.wait_stage(id, "RUNNING", Duration::from_secs(120));
    let started = Instant::now();
    loop {
        let (_, body) = http_get(&cl.c.api_url, "admin-built.localhost", "/").unwrap();
        if body.contains("changed") {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "{body}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn commit_empty(repo: &Path, message: &str) {
    git_ok(repo, &["commit", "-q", "--allow-empty", "-m", message]);
}

/// Waits until the Space's newest build is done and its image recorded (a new image id when `changed`).
fn wait_newer_build(cl: &Cluster, id: &str, old_image: &str, changed: bool) {
    let started = Instant::now();
    loop {
        let info = cl.call("GET", &format!("/api/spaces/{id}"), None);
        let runtime = &info["runtime"];
        let done = !matches!(
            runtime["stage"].as_str(),
            Some("BUILDING" | "RUNNING_BUILDING")
        );
        if done {
            assert_ne!(
                runtime["stage"],
                "BUILD_ERROR",
                "{runtime}\n{}",
                cl.builder.log_text()
            );
            let (image, _) = cl.image(id);
            if !changed || image != old_image {
                return;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no new build done: {runtime}\n{}",
            cl.builder.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn failing_builds_end_in_build_error_naming_the_step() {
    let cl = Cluster::start("fail", "10.91.1.0/24");
    // 48 MiB of zeros in a tar.gz of a few dozen KiB.
    let bomb = {
        let mut tar = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(48 << 20);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(&mut header, "zeros.bin", std::io::repeat(0).take(48 << 20))
            .unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &tar.into_inner().unwrap()).unwrap();
        gz.finish().unwrap()
    };
    let cases: [(&str, String, &[&str]); 5] = [
        (
            "runfails",
            "FROM busybox:latest\nRUN echo about to fail && exit 3\n".to_owned(),
            &["Dockerfile:2 RUN", "exited with code 3", "about to fail"],
        ),
        (
            "nobase",
            "FROM python:9.9\nCMD [\"true\"]\n".to_owned(),
            &[
                "Dockerfile:1 FROM",
                "`python:9.9` is not in the cluster's image store",
                "busybox:latest",
            ],
        ),
        (
            "badsyntax",
            "FROM busybox:latest\nHEALTHCHECK CMD true\nCMD [\"true\"]\n".to_owned(),
            &["Dockerfile:2", "HEALTHCHECK"],
        ),
        (
            "outside",
            "FROM busybox:latest\nCOPY ../etc/passwd /x\nCMD [\"true\"]\n".to_owned(),
            &["Dockerfile:2", "outside the build context"],
        ),
        (
            "tarbomb",
            "FROM busybox:latest\nADD bomb.tar.gz /data/\nCMD [\"true\"]\n".to_owned(),
            &["Dockerfile:2", "ADD bomb.tar.gz", "tar bomb"],
        ),
    ];
    for (name, dockerfile, expected) in &cases {
        let repo = cl.space(name);
        commit(
            &repo,
            &[
                ("README.md", README),
                ("Dockerfile", dockerfile.as_bytes()),
                ("bomb.tar.gz", &bomb),
            ],
            "broken",
        );
        git_ok(&repo, &["push", "-q", "origin", "HEAD:main"]);
        let id = format!("admin/{name}");
        let runtime = cl.wait_stage(&id, "BUILD_ERROR", Duration::from_secs(120));
        let message = runtime["errorMessage"].as_str().unwrap_or_default();
        for part in *expected {
            assert!(message.contains(part), "{name}: `{part}` not in {message}");
        }
    }
    // The builder kept going: nothing here crashed it.
    assert!(!cl.builder.log_text().contains("panicked"));
}

#[test]
fn a_gradio_space_is_built_on_a_bootstrapped_python_base() {
    let cl = Cluster::start("gradio", "10.91.2.0/24");
    // The base, from Debian packages (debootstrap), as `spacedock/python:3.11`.
    let out = run(
        "spacedock",
        &["image", "bootstrap", "python", "--version", "3.11"],
        &[("HF_ENDPOINT", &cl.c.api_url), ("HF_TOKEN", &cl.admin)],
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(
        out.stdout.contains("imported spacedock/python:3.11"),
        "{out:?}"
    );

    // A model repo on the cluster, preloaded into the Space's image.
    clone_and_push(
        &cl,
        "admin/tiny",
        &[
            ("weights.txt", b"tiny weights v1\n"),
            ("unused.txt", b"x\n"),
        ],
    );

    // python_version 3.10 has no base here: the build says so and uses 3.11. The app reads the preloaded
    // file offline (HF_HUB_OFFLINE=1, a Space variable).
    let id = "admin/echo";
    let readme = b"---\ntitle: Echo\nsdk: gradio\nsdk_version: 4.44.1\npython_version: \"3.10\"\npreload_from_hub:\n  - admin/tiny weights.txt\n---\n";
    let app = br#"import os
import gradio as gr
from huggingface_hub import hf_hub_download

weights = open(hf_hub_download("admin/tiny", "weights.txt")).read().strip()

def echo(text):
    return f"{os.environ['SPACE_ID']}: {text}"

gr.Interface(fn=echo, inputs="text", outputs="text", title=f"Echo {weights}").launch()
"#;
    let requirements =
        std::fs::read(repo_root().join("ops/examples/gradio-echo/requirements.txt")).unwrap();
    let files: [(&str, &[u8]); 3] = [
        ("README.md", readme),
        ("app.py", app),
        // The Gradio example's requirements (a pin from PyPI), so its build reuses this one's pip layer: the
        // preload goes after the dependency layers.
        ("requirements.txt", &requirements),
    ];
    let repo = cl.space("echo");
    cl.call(
        "POST",
        &format!("/api/spaces/{id}/variables"),
        Some(json!({ "key": "HF_HUB_OFFLINE", "value": "1" })),
    );
    commit(&repo, &files, "gradio");
    git_ok(&repo, &["push", "-q", "origin", "HEAD:main"]);
    cl.wait_stage(id, "RUNNING", Duration::from_secs(900));
    let log = cl.build_log(id);
    assert!(
        log.contains("python_version 3.10: the store has no spacedock/python:3.10; using spacedock/python:3.11"),
        "{log}"
    );
    assert!(
        log.contains("Successfully installed"),
        "pip's output is in the log:\n{log}"
    );
    assert!(log.contains("preload_from_hub admin/tiny at "), "{log}");
    let (status, body) = http_get(&cl.c.api_url, "admin-echo.localhost", "/config").unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("\"title\":\"Echo tiny weights v1\""),
        "{body}"
    );

    // A requirement pip cannot find fails the build at the pip step, with pip's own words.
    let bad = cl.space("badpip");
    commit(
        &bad,
        &[
            (
                "README.md",
                b"---\ntitle: Bad\nsdk: gradio\nsdk_version: 4.44.1\n---\n",
            ),
            ("app.py", b"print('never runs')\n"),
            ("requirements.txt", b"spacedock-no-such-package==0.0.1\n"),
        ],
        "bad requirement",
    );
    git_ok(&bad, &["push", "-q", "origin", "HEAD:main"]);
    let runtime = cl.wait_stage("admin/badpip", "BUILD_ERROR", Duration::from_secs(300));
    let message = runtime["errorMessage"].as_str().unwrap_or_default();
    assert!(message.contains("requirements.txt"), "{message}");
    assert!(
        message.contains("No matching distribution found for spacedock-no-such-package"),
        "{message}"
    );

    // A second Space with the same preload and requirements: the preload layer is the same blob, and
    // only its own app layer is made.
    let repo2 = cl.space("echo2");
    cl.call(
        "POST",
        "/api/spaces/admin/echo2/variables",
        Some(json!({ "key": "HF_HUB_OFFLINE", "value": "1" })),
    );
    let readme2 = String::from_utf8(readme.to_vec())
        .unwrap()
        .replace("title: Echo", "title: Echo two");
    let mut files2 = files;
    files2[0] = ("README.md", readme2.as_bytes());
    commit(&repo2, &files2, "same preload");
    git_ok(&repo2, &["push", "-q", "origin", "HEAD:main"]);
    cl.wait_stage("admin/echo2", "RUNNING", Duration::from_secs(300));
    let (_, first) = cl.image(id);
    let (_, second) = cl.image("admin/echo2");
    let n = first.len();
    assert_eq!(
        first[n - 2],
        second[n - 2],
        "the preload layer (under the app's) is shared"
    );
    assert_eq!(first[..n - 1], second[..n - 1]);
    let log = cl.build_log("admin/echo2");
    assert_eq!(log.matches("  made ").count(), 1, "{log}");

    // Changing the app rebuilds only the app layer: the pip step comes from the cache.
    let (old_id, old_layers) = cl.image(id);
    let changed = String::from_utf8(app.to_vec())
        .unwrap()
        .replace("title=f\"Echo {weights}\"", "title=\"Echo 2\"");
    commit(&repo, &[("app.py", changed.as_bytes())], "title");
    git_ok(&repo, &["push", "-q", "origin", "HEAD:main"]);
    wait_newer_build(&cl, id, &old_id, true);
    let (_, layers) = cl.image(id);
    let n = layers.len();
    assert_eq!(
        layers[..n - 1],
        old_layers[..n - 1],
        "only the app layer differs"
    );
    let log = cl.build_log(id);
    assert_eq!(log.matches("  made ").count(), 1, "{log}");

    // The repo's example Spaces, pushed with git as they are, one at a time (the node has room for two of
    // these flavors): each is built (or served, for the static one) and answers through the ingress, then is
    // paused to free its slot. The Gradio one answers its API.
    let pause = |id: &str| {
        cl.call("POST", &format!("/api/spaces/{id}/pause"), None);
    };
    pause(id);
    pause("admin/echo2");
    let examples = repo_root().join("ops/examples");
    for (name, path, expected) in [
        ("static-hello", "/", "window.huggingface"),
        (
            "docker-hello",
            "/",
            "Hello from a Docker Space on spacedock",
        ),
        ("gradio-echo", "/config", "Gradio Echo"),
        ("streamlit-counter", "/_stcore/health", "ok"),
    ] {
        let repo = cl.space(name);
        copy_tree(&examples.join(name), &repo);
        git_ok(&repo, &["add", "-A"]);
        git_ok(&repo, &["commit", "-q", "-m", "the example"]);
        git_ok(&repo, &["push", "-q", "origin", "HEAD:main"]);
        let space = format!("admin/{name}");
        cl.wait_stage(&space, "RUNNING", Duration::from_secs(600));
        let host = format!("admin-{name}.localhost");
        let (status, body) = http_get(&cl.c.api_url, &host, path).unwrap();
        assert_eq!(status, 200, "{name}: {body}");
        assert!(body.contains(expected), "{name}: {body}");
        if name == "gradio-echo" {
            gradio_answers(&cl, &host);
        }
        if name != "static-hello" {
            pause(&space);
        }
    }
}

/// Creates model repo `id` and pushes `files` to its main branch with git.
fn clone_and_push(cl: &Cluster, id: &str, files: &[(&str, &[u8])]) {
    let name = id.split_once('/').unwrap().1;
    cl.call(
        "POST",
        "/api/repos/create",
        Some(json!({ "type": "model", "name": name })),
    );
    let repo = clone(
        &cl.c,
        Some(&cl.admin),
        id,
        &cl.dir.path().join(format!("model-{name}")),
    );
    commit(&repo, files, "model");
    git_ok(&repo, &["push", "-q", "origin", "HEAD:main"]);
}

#[test]
fn a_build_whose_builder_is_killed_is_taken_by_another() {
    let mut cl = Cluster::start("retry", "10.91.3.0/24");
    let id = "admin/slow";
    let repo = cl.space("slow");
    let dockerfile = "FROM busybox:latest\nRUN echo step begins && /bin/busybox sleep 6\nCOPY index.html /www/\n\
                      CMD [\"/bin/busybox\", \"httpd\", \"-f\", \"-p\", \"8000\", \"-h\", \"/www\"]\n";
    commit(
        &repo,
        &[
            ("README.md", README),
            ("Dockerfile", dockerfile.as_bytes()),
            ("index.html", b"<h1>survived</h1>\n"),
        ],
        "slow",
    );
    git_ok(&repo, &["push", "-q", "origin", "HEAD:main"]);
    let started = Instant::now();
    while !cl.build_log_so_far(id).contains("step begins") {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{}",
            cl.builder.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // kill -9 in the middle of the RUN step; another builder takes the build once its lease runs out.
    cl.builder.kill();
    let token = cl.call(
        "POST",
        "/api/cluster/join-tokens",
        Some(json!({ "role": "builder" })),
    );
    let steps = format!("sdbuild-retry2-{}", std::process::id());
    let second = Agent::start_builder(
        cl.dir.path(),
        "builder-second",
        &cl.c.quic_addr,
        token["token"].as_str(),
        &steps,
    );
    let _steps = ContainersGuard { namespace: steps };
    cl.wait_stage(id, "RUNNING", Duration::from_secs(120));
    let log = cl.build_log(id);
    assert!(
        log.contains("taken by builder builder-second (attempt 2)"),
        "{log}\n{}",
        second.log_text()
    );
    let (status, body) = http_get(&cl.c.api_url, "admin-slow.localhost", "/").unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("survived"), "{body}");
}

#[test]
fn lfs_files_of_a_docker_space_are_built_with_their_content() {
    let cl = Cluster::start("lfs", "10.91.6.0/24");
    let id = "admin/lfs";
    let repo = cl.space("lfs");
    // git-lfs's filters, as `git lfs install` writes them, in a user config of the test's own.
    let global = cl.dir.path().join("gitconfig");
    std::fs::write(
        &global,
        "[filter \"lfs\"]\n\tclean = git-lfs clean -- %f\n\tsmudge = git-lfs smudge -- %f\n\
         \tprocess = git-lfs filter-process\n\trequired = true\n[lfs]\n\tlocksverify = false\n",
    )
    .unwrap();
    let lfs_ok = |args: &[&str]| {
        let (ok, text) = git_with(&repo, args, global.to_str().unwrap());
        assert!(ok, "git {args:?} failed:\n{text}");
    };
    lfs_ok(&["lfs", "track", "*.bin", "*.tar.gz"]);
    // A 3 MiB model file (COPY) and an archive (ADD unpacks it), both stored with git-lfs.
    let weights = "weights 0123456789\n".repeat(3 << 16);
    let mut archive = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::default(),
    ));
    let mut header = tar::Header::new_gnu();
    header.set_size(13);
    header.set_mode(0o644);
    archive
        .append_data(&mut header, "vocab.txt", &b"hello, vocab\n"[..])
        .unwrap();
    let archive = archive.into_inner().unwrap().finish().unwrap();
    let dockerfile = "FROM busybox:latest\n\
                      COPY model.bin /www/model.txt\n\
                      ADD extra.tar.gz /www/\n\
                      CMD [\"/bin/busybox\", \"httpd\", \"-f\", \"-p\", \"8000\", \"-h\", \"/www\"]\n";
    for (name, bytes) in [
        ("README.md", README),
        ("Dockerfile", dockerfile.as_bytes()),
        ("model.bin", weights.as_bytes()),
        ("extra.tar.gz", archive.as_slice()),
    ] {
        std::fs::write(repo.join(name), bytes).unwrap();
    }
    lfs_ok(&["add", "-A"]);
    lfs_ok(&["commit", "-q", "-m", "lfs"]);
    lfs_ok(&["push", "-q", "origin", "HEAD:main"]);
    let pointer = git_ok(&repo, &["show", "HEAD:model.bin"]);
    assert!(pointer.starts_with("version https://git-lfs"), "{pointer}");
    cl.wait_stage(id, "RUNNING", Duration::from_secs(120));
    let (status, body) = http_get(&cl.c.api_url, "admin-lfs.localhost", "/model.txt").unwrap();
    assert_eq!(status, 200);
    assert!(
        body == weights,
        "the model file's content, not its pointer ({} bytes)",
        body.len()
    );
    let (status, body) = http_get(&cl.c.api_url, "admin-lfs.localhost", "/vocab.txt").unwrap();
    assert_eq!((status, body.as_str()), (200, "hello, vocab\n"));
    // The objects were kept on disk for the build only.
    let downloads = cl.builder.data_dir.join("downloads");
    let left = std::fs::read_dir(&downloads).map_or(0, |d| d.count());
    assert_eq!(
        left,
        0,
        "{} is not empty after the build",
        downloads.display()
    );
}

#[test]
fn a_multi_stage_dockerfile_copies_from_an_earlier_stage_and_skips_unused_ones() {
    let cl = Cluster::start("stages", "10.91.4.0/24");
    let id = "admin/stages";
    let repo = cl.space("stages");
    let dockerfile = "FROM busybox:latest AS build\n\
                      RUN mkdir -p /out/empty && echo 'made in stage one' > /out/page.html && echo junk > /junk.txt\n\
                      FROM busybox:latest AS unused\n\
                      RUN exit 1\n\
                      FROM busybox:latest\n\
                      COPY --from=build /out/page.html /www/index.html\n\
                      COPY --from=build /out /site\n\
                      CMD [\"/bin/busybox\", \"httpd\", \"-f\", \"-p\", \"8000\", \"-h\", \"/www\"]\n";
    commit(
        &repo,
        &[("README.md", README), ("Dockerfile", dockerfile.as_bytes())],
        "stages",
    );
    git_ok(&repo, &["push", "-q", "origin", "HEAD:main"]);
    cl.wait_stage(id, "RUNNING", Duration::from_secs(120));
    let (status, body) = http_get(&cl.c.api_url, "admin-stages.localhost", "/").unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("made in stage one"), "{body}");
    // The last stage is the base and the copied files: the first stage's RUN layer is not in it. A copied
    // folder keeps its empty folder.
    let (_, layers) = cl.image(id);
    assert_eq!(layers.len(), 3, "{layers:?}");
    let paths = |layer: &str| -> Vec<String> {
        let files = layer_files(&cl.blob(layer));
        files.into_iter().map(|(p, _, _)| p).collect()
    };
    assert_eq!(paths(&layers[1]), ["www/", "www/index.html"]);
    assert_eq!(
        paths(&layers[2]),
        ["site/", "site/empty/", "site/page.html"]
    );
    let log = cl.build_log(id);
    assert!(
        log.contains("stage 0 (build): FROM busybox:latest"),
        "{log}"
    );
    assert!(
        !log.contains("stage 1"),
        "the unused stage is skipped:\n{log}"
    );
}

/// Debian's `docker-registry` on a free loopback port, killed when dropped.
struct Registry {
    child: std::process::Child,
    addr: String,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Registry {
    fn start(dir: &Path) -> Registry {
        let addr = format!("127.0.0.1:{}", spacedock_cluster_tests::free_port());
        let config = dir.join("registry.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n",
                dir.join("registry").display()
            ),
        )
        .unwrap();
        let child = std::process::Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(std::fs::File::create(dir.join("registry.log")).unwrap())
            .stderr(std::fs::File::create(dir.join("registry.err")).unwrap())
            .spawn()
            .expect("docker-registry (apt-get install docker-registry; ops/test.sh does)");
        let registry = Registry { child, addr };
        let started = Instant::now();
        while ureq::get(&format!("http://{}/v2/", registry.addr))
            .call()
            .is_err()
        {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "the registry did not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        registry
    }

    /// Uploads a blob; returns its digest.
    fn blob(&self, repo: &str, bytes: &[u8]) -> String {
        let digest = format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)));
        let started = ureq::post(&format!("http://{}/v2/{repo}/blobs/uploads/", self.addr))
            .send_empty()
            .unwrap();
        let location = started.headers()["location"].to_str().unwrap().to_owned();
        let url = if location.starts_with("http") {
            location
        } else {
            format!("http://{}{location}", self.addr)
        };
        let sep = if url.contains('?') { '&' } else { '?' };
        ureq::put(&format!("{url}{sep}digest={digest}"))
            .header("Content-Type", "application/octet-stream")
            .send(bytes)
            .unwrap();
        digest
    }

    /// Pushes a one-layer image (the layer gzip-compressed) as `repo:tag`.
    /// Pushes a one-layer image, its layer compressed with gzip or, with `zstd`, zstd.
    fn push(&self, repo: &str, tag: &str, config: &[u8], layer: &[u8], zstd: bool) {
        let (packed, media_type) = if zstd {
            let packed = ruzstd::encoding::compress_to_vec(
                layer,
                ruzstd::encoding::CompressionLevel::Fastest,
            );
            (packed, "application/vnd.oci.image.layer.v1.tar+zstd")
        } else {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            std::io::Write::write_all(&mut gz, layer).unwrap();
            (
                gz.finish().unwrap(),
                "application/vnd.oci.image.layer.v1.tar+gzip",
            )
        };
        let config_digest = self.blob(repo, config);
        let layer_digest = self.blob(repo, &packed);
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len() },
            "layers": [{ "mediaType": media_type, "digest": layer_digest, "size": packed.len() }],
        });
        ureq::put(&format!("http://{}/v2/{repo}/manifests/{tag}", self.addr))
            .header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
            .send(manifest.to_string().as_bytes())
            .unwrap();
    }
}

#[test]
fn a_base_image_comes_from_an_oci_registry() {
    let cl = Cluster::start("registry", "10.91.5.0/24");
    let registry = Registry::start(cl.dir.path());
    // busybox as a registry image, its layer gzip-compressed as registries serve them.
    let archive = busybox_image(cl.dir.path(), "reg/busybox:1", &["sh"], "from the registry");
    let mut config = Vec::new();
    let mut layer = Vec::new();
    for entry in tar::Archive::new(std::fs::File::open(&archive).unwrap())
        .entries()
        .unwrap()
    {
        let mut entry = entry.unwrap();
        match entry.path().unwrap().to_str().unwrap() {
            "config.json" => entry.read_to_end(&mut config).unwrap(),
            "layer/layer.tar" => entry.read_to_end(&mut layer).unwrap(),
            _ => 0,
        };
    }
    registry.push("library/busybox", "1", &config, &layer, false);
    registry.push("library/busybox", "zst", &config, &layer, true);

    // Pushes Space `name` built FROM the registry's busybox at `tag`; returns its id.
    let from_registry = |name: &str, tag: &str| {
        let repo = cl.space(name);
        let dockerfile = format!(
            "FROM {}/library/busybox:{tag}\nCMD [\"/bin/busybox\", \"httpd\", \"-f\", \"-p\", \"8000\", \"-h\", \"/www\"]\n",
            registry.addr
        );
        commit(
            &repo,
            &[("README.md", README), ("Dockerfile", dockerfile.as_bytes())],
            "from a registry",
        );
        git_ok(&repo, &["push", "-q", "origin", "HEAD:main"]);
        format!("admin/{name}")
    };
    let id = from_registry("pulled", "1");
    cl.wait_stage(&id, "RUNNING", Duration::from_secs(120));
    let (status, body) = http_get(&cl.c.api_url, "admin-pulled.localhost", "/").unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("from the registry"), "{body}");
    // The layer is stored uncompressed, as its diff id; the same image with its layer in zstd unpacks to the
    // same bytes.
    let diff_id = format!("sha256:{}", hex::encode(sha2::Sha256::digest(&layer)));
    assert_eq!(cl.image(&id).1, std::slice::from_ref(&diff_id));
    let id = from_registry("zstd", "zst");
    cl.wait_stage(&id, "RUNNING", Duration::from_secs(120));
    assert_eq!(cl.image(&id).1, [diff_id]);
    assert!(cl.build_log(&id).contains("busybox:zst"));

    // A tag the registry does not have is a BUILD_ERROR naming the FROM line and the registry.
    let id = from_registry("nopull", "nope");
    let runtime = cl.wait_stage(&id, "BUILD_ERROR", Duration::from_secs(60));
    let message = runtime["errorMessage"].as_str().unwrap_or_default();
    assert!(message.contains("Dockerfile:1 FROM"), "{message}");
    assert!(
        message.contains(&format!("pulling from {}", registry.addr)),
        "{message}"
    );
    assert!(message.contains("HTTP 404"), "{message}");
}

/// Copies a folder's files into another (a checkout), keeping relative paths.
fn copy_tree(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// The Gradio example's REST API through the ingress: a call, then its result as an event stream; its page
/// works in a real browser and it keeps running (Gradio calls itself once it listens). Its pip layer was the
/// test Space's.
fn gradio_answers(cl: &Cluster, host: &str) {
    let log = cl.build_log("admin/gradio-echo");
    assert_eq!(
        log.matches("  made ").count(),
        1,
        "only the example's app layer is new; its pip layer is the test Space's:\n{log}"
    );
    let port = cl.c.api_url.rsplit(':').next().unwrap();
    let out = std::process::Command::new("curl")
        .args([
            "-s",
            "-H",
            "Content-Type: application/json",
            "-d",
            r#"{"data": ["hello"]}"#,
        ])
        .arg("--resolve")
        .arg(format!("{host}:{port}:127.0.0.1"))
        .arg(format!("http://{host}:{port}/call/predict"))
        .output()
        .expect("curl (ops/test.sh installs it)");
    let call: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            cl.runtime("admin/gradio-echo")
        )
    });
    let event = call["event_id"].as_str().unwrap();
    let (status, body) = http_get(&cl.c.api_url, host, &format!("/call/predict/{event}")).unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("admin/gradio-echo: hello"), "{body}");
    let (status, body) = http_get(&cl.c.api_url, host, "/").unwrap();
    assert_eq!(status, 200, "{body}");
    // In a browser: the page's scripts come through the ingress, and typing and pressing Submit reaches the app
    // through Gradio's queue (a POST and an event stream) and shows its answer.
    let mut browser = Browser::open(&format!("http://{host}:{port}/"));
    browser.wait_for(
        "document.querySelectorAll('textarea').length >= 2",
        Duration::from_secs(60),
        "the Gradio page's input and output boxes",
    );
    let submitted = browser.eval(
        "(() => { const input = document.querySelector('textarea'); input.value = 'typed in a browser'; \
         input.dispatchEvent(new Event('input', { bubbles: true })); \
         const submit = [...document.querySelectorAll('button')].find(b => b.innerText.trim() === 'Submit'); \
         if (submit) { submit.click(); } return !!submit; })()",
    );
    assert_eq!(submitted, Ok(Value::Bool(true)), "no Submit button");
    browser.wait_for(
        "[...document.querySelectorAll('textarea')].some(t => t.value === 'admin/gradio-echo: typed in a browser')",
        Duration::from_secs(30),
        "the app's answer in the page",
    );
    assert_eq!(cl.runtime("admin/gradio-echo")["stage"], "RUNNING");
}
