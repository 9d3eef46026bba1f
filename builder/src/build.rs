//! One build, from a `BuildJob` to an image in the cluster's store: the commit's packs fetched into a local
//! repo, its files as the build context (LFS files from the blob store), the README's config, then the
//! Dockerfile (a Docker Space's own, or the one `sdk::dockerfile` writes for Gradio and Streamlit) planned
//! and run step by step. A step whose cache key the cache knows reuses its layer; COPY/ADD layers are written
//! here, RUN steps run in containerd (`run.rs`). The image's blobs go to the cluster (those it lacks), and the
//! result names the config and layers for the leader to record.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, anyhow};
use spacedock_agent::fetch::Fetcher;
use spacedock_shared::flavor::Catalog;
use spacedock_shared::space_config::{Preload, Sdk, SpaceConfig, validate_readme};
use spacedock_shared::wire::{self, BuildJob, BuildResult, BuiltImage, EnvVar, ImageReply};
use tokio::sync::mpsc;

use crate::cache::Cache;
use crate::context::BuildContext;
use crate::dockerfile;
use crate::layer::{Kind, Layer};
use crate::plan::{Settings, Step};
use crate::service::Report;

/// Lines of the log's end that a failure's message carries, and at most how many bytes of them.
const TAIL_LINES: usize = 20;
const TAIL_BYTES: usize = 4096;

/// A build's log: each line goes to the leader (secret values replaced by `***`) and the last ones are kept
/// for the failure message.
#[derive(Debug)]
pub struct Log {
    build: String,
    secrets: Vec<String>,
    reports: mpsc::UnboundedSender<Report>,
    tail: std::sync::Mutex<std::collections::VecDeque<String>>,
}

impl Log {
    pub fn new(build: &str, secrets: &[EnvVar], reports: mpsc::UnboundedSender<Report>) -> Log {
        Log {
            build: build.to_owned(),
            secrets: secrets
                .iter()
                .map(|s| s.value.clone())
                .filter(|v| v.len() >= 3)
                .collect(),
            reports,
            tail: Default::default(),
        }
    }

    /// Sends whole lines (redacted).
    pub fn lines(&self, text: &str) {
        let mut out = String::new();
        let mut tail = self.tail.lock().unwrap_or_else(|p| p.into_inner());
        for line in text.lines() {
            let mut line = line.to_owned();
            for secret in &self.secrets {
                line = line.replace(secret.as_str(), "***");
            }
            out.push_str(&line);
            out.push('\n');
            tail.push_back(line);
            if tail.len() > TAIL_LINES {
                tail.pop_front();
            }
        }
        if !out.is_empty() {
            let log = wire::BuildLog {
                build: self.build.clone(),
                text: out,
            };
            let _ = self.reports.send(Report::Send(log.into()));
        }
    }

    pub fn line(&self, line: impl AsRef<str>) {
        self.lines(line.as_ref());
    }

    /// The last lines, at most `TAIL_BYTES` of them (a result goes through Raft: one very long line must not
    /// make it huge).
    fn tail(&self) -> String {
        let tail = self.tail.lock().unwrap_or_else(|p| p.into_inner());
        let text = tail.iter().cloned().collect::<Vec<_>>().join("\n");
        let mut cut = text.len().saturating_sub(TAIL_BYTES);
        while !text.is_char_boundary(cut) {
            cut += 1;
        }
        text[cut..].to_owned()
    }
}

/// Why a build failed: the step (`Dockerfile:3 RUN`, `README.md`, `fetch`) and the reason.
#[derive(Debug)]
pub struct Failure {
    pub step: String,
    pub message: String,
}

impl Failure {
    pub fn at(step: impl Into<String>, message: impl std::fmt::Display) -> Failure {
        Failure {
            step: step.into(),
            message: message.to_string(),
        }
    }
}

/// Context for a `Result`: fails at `step` with the error's chain.
trait At<T> {
    fn at(self, step: &str) -> Result<T, Failure>;
}

impl<T> At<T> for anyhow::Result<T> {
    fn at(self, step: &str) -> Result<T, Failure> {
        self.map_err(|e| Failure::at(step, format!("{e:#}")))
    }
}

/// Where builds run.
#[derive(Debug)]
pub struct Builder {
    pub data_dir: PathBuf,
    pub cluster: Fetcher,
    pub cache: Cache,
    pub runner: crate::run::Runner,
    /// The Hub endpoint for `preload_from_hub` (else the cluster's own API, from the job).
    pub hub_endpoint: Option<String>,
    /// Credentials for registries that bases come from.
    pub registries: Vec<crate::registry::RegistryConfig>,
    /// One repo sync at a time (two builds of one Space share its repo).
    repos: tokio::sync::Mutex<()>,
}

/// The image so far: its layers (in the cache) and settings.
#[derive(Debug, Clone)]
pub struct Image {
    pub layers: Vec<Layer>,
    pub settings: Settings,
    /// The cache key of the image so far.
    pub key: blake3::Hash,
}

impl Builder {
    pub fn new(
        data_dir: PathBuf,
        cluster: Fetcher,
        cache: Cache,
        runner: crate::run::Runner,
        (hub_endpoint, registries): (Option<String>, Vec<crate::registry::RegistryConfig>),
    ) -> Arc<Builder> {
        Arc::new(Builder {
            data_dir,
            cluster,
            cache,
            runner,
            hub_endpoint,
            registries,
            repos: tokio::sync::Mutex::new(()),
        })
    }

    /// Runs the job; never panics the session: every failure is a `Failed` result naming its step.
    pub async fn build(&self, job: &BuildJob, log: &Log) -> BuildResult {
        let started = Instant::now();
        match self.try_build(job, log).await {
            Ok(built) => {
                log.line(format!(
                    "built {} ({} layers) in {} ms",
                    built.config,
                    built.layers.len(),
                    started.elapsed().as_millis()
                ));
                // Past the cache's budget, the least recently used blobs go (this image's are spared).
                let keep: Vec<String> = built.layers.iter().map(|l| l.digest.clone()).collect();
                match self.cache.evict(&keep) {
                    Ok(0) => {}
                    Ok(freed) => tracing::info!(freed, "cache over its budget: evicted blobs"),
                    Err(e) => tracing::warn!(error = %format!("{e:#}"), "cache eviction failed"),
                }
                BuildResult::Built(built)
            }
            Err(failure) => {
                log.line(format!("error at {}: {}", failure.step, failure.message));
                let tail = log.tail();
                BuildResult::Failed {
                    step: failure.step,
                    message: format!("{}\n--- log tail ---\n{tail}", failure.message),
                }
            }
        }
    }

    async fn try_build(&self, job: &BuildJob, log: &Log) -> Result<BuiltImage, Failure> {
        let short = &job.commit[..job.commit.len().min(12)];
        log.line(format!(
            "building {} at {short}{}",
            job.space_id,
            if job.no_cache {
                " without the cache"
            } else {
                ""
            }
        ));
        let repo = self.sync_repo(job).await.at("fetch")?;
        let commit = job.commit.clone();
        let mut context =
            tokio::task::spawn_blocking(move || crate::context::from_git(&repo, &commit))
                .await
                .map_err(|e| Failure::at("context", e))?
                .at("context")?;
        self.fill_lfs(&mut context).await.at("context")?;
        let config = space_config(&context)?;
        let (dockerfile_text, preload_at) = match config.sdk {
            Sdk::Docker => {
                let bytes = file(&context, "Dockerfile")
                    .ok_or_else(|| Failure::at("Dockerfile", "Dockerfile is not in the repo"))?;
                let text = String::from_utf8(bytes.to_vec())
                    .map_err(|_| Failure::at("Dockerfile", "Dockerfile is not UTF-8 text"))?;
                (text, None)
            }
            Sdk::Gradio | Sdk::Streamlit => {
                let base = self.python_base(&config.python_version, log).await?;
                let text = crate::sdk::dockerfile(&config, &base, |p| file(&context, p).is_some());
                log.lines(&format!(
                    "the {} Space's Dockerfile:\n{text}",
                    config.sdk.as_str()
                ));
                let app_line = text
                    .lines()
                    .position(|l| l == crate::sdk::APP_PART)
                    .map(|i| i + 1);
                (text, app_line)
            }
            Sdk::Static => {
                return Err(Failure::at(
                    "README.md",
                    "static Spaces are served from their repo and need no build",
                ));
            }
        };
        let image = self
            .dockerfile(
                job,
                (&dockerfile_text, preload_at),
                &context,
                &config.preload_from_hub,
                log,
            )
            .await?;
        let diff_ids: Vec<String> = image.layers.iter().map(|l| l.digest.clone()).collect();
        let config_bytes = crate::image::config_json(&image.settings, &diff_ids);
        let config_digest = self.cache.put(&config_bytes).at("image config")?;
        let parts: Vec<(&str, u64)> = image
            .layers
            .iter()
            .map(|l| (l.digest.as_str(), l.size))
            .collect();
        let manifest_bytes = spacedock_shared::image::oci_manifest(
            (&config_digest, config_bytes.len() as u64),
            &parts,
        )
        .map_err(anyhow::Error::msg)
        .at("image manifest")?;
        let manifest_digest = self.cache.put(&manifest_bytes).at("image manifest")?;
        let blobs: Vec<(&str, u64)> = parts
            .into_iter()
            .chain([
                (config_digest.as_str(), config_bytes.len() as u64),
                (manifest_digest.as_str(), manifest_bytes.len() as u64),
            ])
            .collect();
        self.push(&blobs, log).await.at("push")?;
        let name = format!(
            "{}{}",
            wire::BUILT_IMAGE_PREFIX,
            job.space_id.to_ascii_lowercase()
        );
        log.line(format!("image {name}@{manifest_digest}"));
        Ok(BuiltImage {
            name,
            manifest: manifest_digest,
            config: config_digest,
            layers: image
                .layers
                .iter()
                .map(|l| wire::Layer {
                    digest: l.digest.clone(),
                    size: l.size,
                })
                .collect(),
            port: config.app_port,
            startup_timeout_s: config.startup_duration_timeout.as_secs().max(1),
        })
    }

    /// The Space's repo here, holding every pack the job names.
    async fn sync_repo(&self, job: &BuildJob) -> anyhow::Result<PathBuf> {
        let _one = self.repos.lock().await;
        let name = blake3::hash(job.space_id.to_ascii_lowercase().as_bytes()).to_hex();
        let repo = self
            .data_dir
            .join("repos")
            .join(format!("{}.git", &name[..32]));
        if !repo.join("objects").exists() {
            std::fs::create_dir_all(&repo)?;
            let made = std::process::Command::new("git")
                .args(["init", "--bare", "-q"])
                .arg(&repo)
                .env("GIT_CONFIG_NOSYSTEM", "1")
                .env("GIT_CONFIG_GLOBAL", "/dev/null")
                .output()
                .context("starting git (is it installed?)")?;
            anyhow::ensure!(
                made.status.success(),
                "git init: {}",
                String::from_utf8_lossy(&made.stderr).trim()
            );
        }
        let packs = repo.join("objects/pack");
        std::fs::create_dir_all(&packs)?;
        for digest in &job.packs {
            let hex = digest
                .strip_prefix("sha256:")
                .ok_or_else(|| anyhow!("`{digest}` is not a sha256 digest"))?;
            if packs.join(format!("pack-{hex}.idx")).exists() {
                continue;
            }
            let fetched = self.cluster.fetch(digest, None).await?;
            let pack = packs.join(format!("tmp-{hex}.pack"));
            let idx = packs.join(format!("tmp-{hex}.idx"));
            std::fs::rename(&fetched, &pack)?;
            let args = [
                "index-pack",
                "-o",
                &idx.to_string_lossy(),
                &pack.to_string_lossy(),
            ];
            crate::context::git_run(&repo, &args)
                .with_context(|| format!("indexing pack {digest}"))?;
            std::fs::rename(&pack, packs.join(format!("pack-{hex}.pack")))?;
            std::fs::rename(&idx, packs.join(format!("pack-{hex}.idx")))?;
        }
        Ok(repo)
    }

    /// Puts the LFS objects in place of their pointer files. They stay on disk (models can be large) in a
    /// folder the context holds until the build ends, except archives, which ADD may unpack from memory.
    async fn fill_lfs(&self, context: &mut BuildContext) -> anyhow::Result<()> {
        if context.lfs.is_empty() {
            return Ok(());
        }
        let downloads = self.data_dir.join("downloads");
        std::fs::create_dir_all(&downloads)?;
        let held = std::sync::Arc::new(tempfile::tempdir_in(&downloads)?);
        for (i, (path, oid, size)) in context.lfs.clone().into_iter().enumerate() {
            let digest = format!("sha256:{oid}");
            let fetched = self
                .cluster
                .fetch(&digest, Some(size))
                .await
                .with_context(|| format!("{path}: LFS object {oid}"))?;
            let kept = held.path().join(i.to_string());
            std::fs::rename(&fetched, &kept)?;
            let mut head = Vec::new();
            std::io::Read::read_to_end(
                &mut std::io::Read::take(std::fs::File::open(&kept)?, 512),
                &mut head,
            )?;
            let kind = if crate::layer::is_archive(&head) {
                Kind::File(std::fs::read(&kept)?)
            } else {
                Kind::HostFile(kept)
            };
            if let Some(entry) = context.entries.iter_mut().find(|e| e.path == path) {
                entry.kind = kind;
            }
        }
        context.held = Some(held);
        context.hash = crate::layer::entries_hash(&context.entries);
        Ok(())
    }

    /// Builds the Dockerfile's last stage (and the earlier stages it takes files or its base from) with the
    /// `preload_from_hub` layers: on its base, or before line `preload_at` of the last stage when given.
    async fn dockerfile(
        &self,
        job: &BuildJob,
        (text, preload_at): (&str, Option<usize>),
        context: &BuildContext,
        preloads: &[Preload],
        log: &Log,
    ) -> Result<Image, Failure> {
        let parsed = dockerfile::parse(text).map_err(|problems| {
            let first = &problems[0];
            Failure::at(
                format!("Dockerfile:{}", first.line),
                problems
                    .iter()
                    .map(|p| format!("Dockerfile:{}: {}", p.line, p.message))
                    .collect::<Vec<_>>()
                    .join("\n"),
            )
        })?;
        if parsed.stages.is_empty() {
            return Err(Failure::at("Dockerfile", "the Dockerfile has no FROM"));
        }
        let args: BTreeMap<String, String> = job
            .variables
            .iter()
            .map(|v| (v.key.clone(), v.value.clone()))
            .collect();
        let mut globals: BTreeMap<String, String> = BTreeMap::new();
        for (name, default) in &parsed.global_args {
            if let Some(value) = args.get(name).cloned().or_else(|| default.clone()) {
                globals.insert(name.clone(), value);
            }
        }
        let target = parsed.stages.len() - 1;
        let needed = needed_stages(&parsed, &globals);
        // Earlier stages by index and lowercased name, and images `COPY --from` names.
        let mut built: BTreeMap<String, Image> = BTreeMap::new();
        for index in needed {
            let stage = &parsed.stages[index];
            let from = dockerfile::expand(&stage.from, &globals);
            if parsed.stages.len() > 1 {
                log.line(format!(
                    "stage {index}{}: FROM {from}",
                    stage
                        .name
                        .as_ref()
                        .map(|n| format!(" ({n})"))
                        .unwrap_or_default()
                ));
            } else {
                log.line(format!("FROM {from}"));
            }
            let from_step = format!("Dockerfile:{} FROM", stage.line);
            let base = match built.get(&from.to_ascii_lowercase()) {
                Some(stage) => stage.clone(),
                None => self
                    .base(&from)
                    .await
                    .map_err(|e| Failure::at(&from_step, format!("{e:#}")))?,
            };
            for (line, instruction) in &stage.instructions {
                if let dockerfile::Instruction::Copy(copy) = instruction
                    && let Some(from) = &copy.from
                    && !built.contains_key(&from.to_ascii_lowercase())
                {
                    let image = self.base(from).await.map_err(|e| {
                        Failure::at(format!("Dockerfile:{line} COPY"), format!("{e:#}"))
                    })?;
                    built.insert(from.to_ascii_lowercase(), image);
                }
            }
            let inputs = (&args, context);
            let image = match (index == target, preload_at) {
                (false, _) => self.stage(job, stage, base, inputs, &built, log).await?,
                (true, None) => {
                    let base = self.with_preloads(job, base, preloads, log).await?;
                    self.stage(job, stage, base, inputs, &built, log).await?
                }
                // The preload layers go between the dependencies and the app (SDK Spaces), so a Space's
                // preload does not change its dependency layers' keys.
                (true, Some(line)) => {
                    let (deps, app): (Vec<_>, Vec<_>) = stage
                        .instructions
                        .iter()
                        .cloned()
                        .partition(|(l, _)| *l < line);
                    let part = |instructions| dockerfile::Stage {
                        instructions,
                        ..stage.clone()
                    };
                    let image = self
                        .stage(job, &part(deps), base, inputs, &built, log)
                        .await?;
                    let image = self.with_preloads(job, image, preloads, log).await?;
                    self.stage(job, &part(app), image, inputs, &built, log)
                        .await?
                }
            };
            built.insert(index.to_string(), image.clone());
            if let Some(name) = &stage.name {
                built.insert(name.to_ascii_lowercase(), image.clone());
            }
            if index == target {
                return Ok(image);
            }
        }
        Err(Failure::at("Dockerfile", "the last stage was not built"))
    }

    /// The image with a layer for each `preload_from_hub` entry on top.
    async fn with_preloads(
        &self,
        job: &BuildJob,
        mut image: Image,
        preloads: &[Preload],
        log: &Log,
    ) -> Result<Image, Failure> {
        for preload in preloads {
            let step = format!("README.md preload_from_hub {}", preload.repo_id);
            let (layer, key) = self
                .preload(job, preload, log)
                .await
                .map_err(|e| Failure::at(&step, format!("{e:#}")))?;
            image.layers.push(layer);
            image.key = crate::layer::step_key(Some(&image.key), "preload", &[key]);
        }
        Ok(image)
    }

    /// Builds one stage on `base`; `built` has what `COPY --from` may name.
    async fn stage(
        &self,
        job: &BuildJob,
        stage: &dockerfile::Stage,
        base: Image,
        (args, context): (&BTreeMap<String, String>, &BuildContext),
        built: &BTreeMap<String, Image>,
        log: &Log,
    ) -> Result<Image, Failure> {
        let sources: BTreeMap<String, blake3::Hash> = built
            .iter()
            .map(|(k, image)| (k.clone(), image.key))
            .collect();
        let (steps, settings) = crate::plan::plan(
            stage,
            base.settings.clone(),
            args,
            &context.entries,
            (base.key, &sources),
        )
        .map_err(|p| Failure::at(format!("Dockerfile:{}", p.line), p.message))?;
        let mut image = base;
        let total = steps.len();
        for (i, step) in steps.iter().enumerate() {
            let (line, what) = match step {
                Step::Copy { line, .. } | Step::CopyFrom { line, .. } => (*line, "COPY"),
                Step::Run { line, .. } => (*line, "RUN"),
            };
            let name = format!("Dockerfile:{line} {what}");
            log.line(format!("step {}/{total}: {name}", i + 1));
            let cached = if job.no_cache {
                None
            } else {
                self.cache.step(&step.key())
            };
            let layer = match cached {
                Some(layer) => {
                    log.line(format!("  cached: {}", layer.digest));
                    layer
                }
                None => {
                    let started = Instant::now();
                    let layer = self
                        .execute(step, &image, job, built, log)
                        .await
                        .map_err(|e| Failure::at(&name, format!("{e:#}")))?;
                    self.cache.record_step(&step.key(), &layer).at(&name)?;
                    log.line(format!(
                        "  made {} ({} bytes) in {:.1}s",
                        layer.digest,
                        layer.size,
                        started.elapsed().as_secs_f64()
                    ));
                    layer
                }
            };
            image.layers.push(layer);
            image.key = step.key();
        }
        image.settings = settings;
        Ok(image)
    }

    async fn execute(
        &self,
        step: &Step,
        image: &Image,
        job: &BuildJob,
        built: &BTreeMap<String, Image>,
        log: &Log,
    ) -> anyhow::Result<Layer> {
        match step {
            Step::CopyFrom {
                from,
                copy,
                workdir,
                ..
            } => {
                let source = built
                    .get(&from.to_ascii_lowercase())
                    .ok_or_else(|| anyhow!("--from={from}: not built"))?;
                let files = self.layer_files(source)?;
                // The copied files wait on disk until the layer is written.
                let downloads = self.data_dir.join("downloads");
                std::fs::create_dir_all(&downloads)?;
                let spill = tempfile::tempdir_in(&downloads)?;
                let tree = crate::image::read_tree(files, &copy.sources, Some(spill.path()))?;
                let settings = Settings {
                    workdir: workdir.clone(),
                    ..Settings::default()
                };
                let entries = crate::plan::copy_entries(copy, &tree, &settings, &BTreeMap::new())
                    .map_err(|e| anyhow!("--from={from}: {e}"))?;
                let (passwd, group) = match &copy.chown {
                    Some(_) => (
                        self.read(image, "etc/passwd")?,
                        self.read(image, "etc/group")?,
                    ),
                    None => (String::new(), String::new()),
                };
                let owned =
                    crate::image::copy_owned(&entries, copy.chown.as_deref(), &passwd, &group)
                        .map_err(|e| anyhow!(e))?;
                self.cache.write_layer(owned)
            }
            Step::Copy { entries, chown, .. } => {
                let (passwd, group) = match chown {
                    Some(_) => (
                        self.read(image, "etc/passwd")?,
                        self.read(image, "etc/group")?,
                    ),
                    None => (String::new(), String::new()),
                };
                let owned = crate::image::copy_owned(entries, chown.as_deref(), &passwd, &group)
                    .map_err(|e| anyhow!(e))?;
                self.cache.write_layer(owned)
            }
            Step::Run { .. } => {
                let (passwd, group) = (
                    self.read(image, "etc/passwd")?,
                    self.read(image, "etc/group")?,
                );
                self.runner
                    .run(
                        step,
                        image,
                        &self.cache,
                        (&passwd, &group),
                        &job.secrets,
                        log,
                    )
                    .await
            }
        }
    }

    /// One `preload_from_hub` layer and its key: from the cache when the same repo, commit and files were
    /// preloaded before (by any Space), else downloaded.
    async fn preload(
        &self,
        job: &BuildJob,
        preload: &Preload,
        log: &Log,
    ) -> anyhow::Result<(Layer, blake3::Hash)> {
        let hub = crate::preload::Hub {
            endpoint: self
                .hub_endpoint
                .clone()
                .unwrap_or_else(|| job.hub_endpoint.clone()),
            token: job
                .secrets
                .iter()
                .find(|s| s.key == "HF_TOKEN")
                .map(|s| s.value.clone()),
        };
        let resolved = {
            let (hub, preload) = (hub.clone(), preload.clone());
            tokio::task::spawn_blocking(move || hub.resolve(&preload)).await??
        };
        let key = resolved.key();
        log.line(format!(
            "preload_from_hub {} at {} ({} files)",
            resolved.repo_id,
            resolved.commit,
            resolved.files.len()
        ));
        if !job.no_cache
            && let Some(layer) = self.cache.step(&key)
        {
            log.line(format!("  cached: {}", layer.digest));
            return Ok((layer, key));
        }
        // The files are downloaded to disk and stream from there into the layer: models can be large.
        let (cache, downloads) = (self.cache.clone(), self.data_dir.join("downloads"));
        let layer = tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&downloads)?;
            let dir = tempfile::tempdir_in(&downloads)?;
            let mut files = Vec::new();
            for (i, path) in resolved.files.iter().enumerate() {
                let into = dir.path().join(i.to_string());
                let etag = hub.download(&resolved, path, &into)?;
                files.push((path.clone(), etag, Kind::HostFile(into)));
            }
            cache.write_layer(crate::preload::layout(&resolved, files))
        })
        .await??;
        self.cache.record_step(&key, &layer)?;
        log.line(format!("  made {} ({} bytes)", layer.digest, layer.size));
        Ok((layer, key))
    }

    /// The image's layer files, bottom first.
    fn layer_files(&self, image: &Image) -> anyhow::Result<Vec<std::fs::File>> {
        image
            .layers
            .iter()
            .map(|l| {
                let path = self.cache.path(&l.digest)?;
                std::fs::File::open(&path)
                    .with_context(|| format!("opening layer {}", path.display()))
            })
            .collect()
    }

    /// A text file in the image so far (empty when absent).
    fn read(&self, image: &Image, path: &str) -> anyhow::Result<String> {
        let bytes = crate::image::read_file(self.layer_files(image)?, path)?;
        Ok(String::from_utf8_lossy(&bytes.unwrap_or_default()).into_owned())
    }

    /// The Python base for `version`: `spacedock/python:VERSION`, else the nearest one the store has.
    async fn python_base(&self, version: &str, log: &Log) -> Result<String, Failure> {
        let wanted = crate::sdk::python_base(version);
        let step = "README.md python_version";
        let reply = self.image_reply(&wanted).await.at(step)?;
        if reply.found {
            return Ok(wanted);
        }
        match crate::sdk::nearest_python_base(version, &reply.available) {
            Some(base) => {
                log.line(format!(
                    "python_version {version}: the store has no {wanted}; using {base}"
                ));
                Ok(base)
            }
            None => Err(Failure::at(
                step,
                format!(
                    "base image `{wanted}` is not in the cluster's image store, nor another Python {major} \
                     base; make one with `spacedock image bootstrap python --version 3.11` (3.9, 3.11 and \
                     3.13 can be made)",
                    major = version.split('.').next().unwrap_or(version)
                ),
            )),
        }
    }

    async fn image_reply(&self, name: &str) -> anyhow::Result<ImageReply> {
        let request = wire::ImageRequest {
            name: name.to_owned(),
        };
        match self.cluster.ask(request.into()).await? {
            wire::Message::ImageReply(reply) => Ok(reply),
            other => anyhow::bail!("unexpected answer to an image request: {}", other.name()),
        }
    }

    /// A base image from the cluster's store, its layers and config in the cache.
    async fn base(&self, name: &str) -> anyhow::Result<Image> {
        let reply = self.image_reply(name).await?;
        let ImageReply {
            found,
            id,
            layers,
            available,
        } = reply;
        if !found && let Some(reference) = crate::registry::parse_reference(name) {
            return self.pull(reference).await;
        }
        if !found {
            let listed = if available.is_empty() {
                "the store has no images".to_owned()
            } else {
                format!("the store has: {}", available.join(", "))
            };
            anyhow::bail!(
                "base image `{name}` is not in the cluster's image store ({listed}); add it with `spacedock image \
                 import FILE` or `spacedock image bootstrap python --version X`"
            );
        }
        let config_path = self.fetch_into_cache(&id, None).await?;
        let config = std::fs::read(&config_path)?;
        let settings = crate::image::settings_from_config(&config)
            .map_err(|e| anyhow!("base image `{name}`: {e}"))?;
        let mut cached = Vec::new();
        for layer in layers {
            self.fetch_into_cache(&layer.digest, Some(layer.size))
                .await?;
            cached.push(Layer {
                digest: layer.digest,
                size: layer.size,
            });
        }
        Ok(Image {
            layers: cached,
            settings,
            key: blake3::hash(id.as_bytes()),
        })
    }

    /// A base from an OCI registry: its config and uncompressed layers into the cache.
    async fn pull(&self, reference: crate::registry::Reference) -> anyhow::Result<Image> {
        let host = reference.host.clone();
        let mut client = crate::registry::Client::new(reference, &self.registries)?;
        let (cache, downloads) = (self.cache.clone(), self.data_dir.join("downloads"));
        let pulled = tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&downloads)?;
            let work = tempfile::tempdir_in(&downloads)?;
            client.pull(&cache, work.path())
        })
        .await?
        .with_context(|| format!("pulling from {host}"))?;
        let settings =
            crate::image::settings_from_config(&pulled.config).map_err(|e| anyhow!(e))?;
        self.cache.put(&pulled.config)?;
        Ok(Image {
            layers: pulled.layers,
            settings,
            key: blake3::hash(pulled.config_digest.as_bytes()),
        })
    }

    async fn fetch_into_cache(&self, digest: &str, size: Option<u64>) -> anyhow::Result<PathBuf> {
        let path = self.cache.path(digest)?;
        let here = std::fs::metadata(&path).map(|m| m.len()).ok();
        if here.is_some() && (size.is_none() || here == size) {
            return Ok(path);
        }
        let fetched = self.cluster.fetch(digest, size).await?;
        self.cache.adopt(&fetched, digest)
    }

    /// Uploads the blobs the cluster lacks.
    async fn push(&self, blobs: &[(&str, u64)], log: &Log) -> anyhow::Result<()> {
        let mut sent = 0u64;
        for &(digest, size) in blobs {
            if self.cluster.has(digest).await? {
                continue;
            }
            self.cluster
                .upload(&self.cache.path(digest)?, digest)
                .await?;
            sent += size;
        }
        log.line(format!("pushed {sent} bytes to the cluster's store"));
        Ok(())
    }
}

/// The stages the last one needs, in order: itself, the stages it is built on and those it copies from,
/// and theirs (Docker skips the others).
fn needed_stages(
    parsed: &dockerfile::Dockerfile,
    globals: &BTreeMap<String, String>,
) -> Vec<usize> {
    let index_of = |name: &str| {
        let name = name.to_ascii_lowercase();
        parsed
            .stages
            .iter()
            .position(|s| s.name.as_deref().map(str::to_ascii_lowercase) == Some(name.clone()))
            .or_else(|| {
                name.parse::<usize>()
                    .ok()
                    .filter(|i| *i < parsed.stages.len())
            })
    };
    let mut needed = std::collections::BTreeSet::new();
    let mut todo = vec![parsed.stages.len() - 1];
    while let Some(i) = todo.pop() {
        if !needed.insert(i) {
            continue;
        }
        let stage = &parsed.stages[i];
        let from = dockerfile::expand(&stage.from, globals);
        todo.extend(index_of(&from).filter(|j| *j < i));
        for (_, instruction) in &stage.instructions {
            if let dockerfile::Instruction::Copy(copy) = instruction
                && let Some(from) = &copy.from
            {
                todo.extend(index_of(from).filter(|j| *j < i));
            }
        }
    }
    needed.into_iter().collect()
}

/// A regular file of the context.
fn file<'a>(context: &'a BuildContext, path: &str) -> Option<&'a [u8]> {
    context.entries.iter().find_map(|e| match &e.kind {
        Kind::File(bytes) if e.path == path => Some(bytes.as_slice()),
        _ => None,
    })
}

/// The README's config; a README with errors fails the build at `README.md`.
fn space_config(context: &BuildContext) -> Result<SpaceConfig, Failure> {
    let readme = file(context, "README.md")
        .ok_or_else(|| Failure::at("README.md", "README.md is missing"))?;
    let report = validate_readme(readme, &Catalog::huggingface());
    let problems = report
        .errors()
        .map(|p| p.render("README.md"))
        .collect::<Vec<_>>()
        .join("\n");
    report
        .config
        .ok_or_else(|| Failure::at("README.md", problems))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failures_log_tail_is_bounded_and_redacted() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let secret = EnvVar {
            key: "TOKEN".into(),
            value: "hunter22".into(),
        };
        let log = Log::new("b1", &[secret], tx);
        log.line("the token is hunter22");
        log.line("x".repeat(100_000));
        let tail = log.tail();
        assert_eq!(tail.len(), TAIL_BYTES);
        assert!(tail.ends_with('x'));
        match rx.try_recv().unwrap() {
            Report::Send(wire::Message::BuildLog(l)) => assert_eq!(l.text, "the token is ***\n"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn only_the_stages_the_last_one_needs_are_built() {
        let text = "ARG BASE=busybox\nFROM $BASE AS tools\nRUN make\nFROM busybox AS unused\nRUN exit 1\n\
                    FROM tools AS build\nRUN build\nFROM busybox\nCOPY --from=build /out /app\nCOPY --from=0 /x /x\n";
        let parsed = dockerfile::parse(text).unwrap();
        assert_eq!(needed_stages(&parsed, &BTreeMap::new()), [0, 2, 3]);
        let single = dockerfile::parse("FROM busybox\n").unwrap();
        assert_eq!(needed_stages(&single, &BTreeMap::new()), [0]);
    }
}
