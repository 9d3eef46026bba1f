//! RUN steps: the image so far is written into containerd's content store and unpacked (in the builder's own
//! namespace), the command runs in a container on it with the host's network, as the step's user, with the
//! step's environment and its secret mounts (files under `/run/secrets` bound read-only for this step only),
//! its output streamed to the build log. What the command changed, read from the container's overlayfs upper
//! directory, becomes the step's layer: a reproducible tar (`layer::write`) with OCI whiteouts for deletions.
//! Mount points runc makes (`/run/secrets`, `/run/spacedock`, an empty `/etc/resolv.conf` or `/etc/hosts`) are left out, so
//! no secret and no host file reaches a layer. The builder's extra CA certificates (for TLS-intercepting
//! proxies) are bound at `/run/spacedock/ca-certificates.crt` with the variables TLS clients read pointing at
//! them, for the step only.

use std::collections::HashMap;
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxNamespaceBuilder, LinuxNamespaceType,
    MountBuilder, ProcessBuilder, RootBuilder, Spec, UserBuilder,
};
use spacedock_agent::containerd::{Containerd, LAYER_TAR};
use spacedock_shared::wire::EnvVar;

use crate::build::{Image, Log};
use crate::cache::Cache;
use crate::layer::{Entry, Kind, Layer};
use crate::plan::Step;

/// Where a step's secrets go inside its container.
const SECRETS_DIR: &str = "run/secrets";
/// Where the extra CA certificates go inside a step's container (never in a layer).
const CA_BUNDLE: &str = "/run/spacedock/ca-certificates.crt";
/// The variables that point TLS clients (OpenSSL, pip, requests, curl, git, Node) at a CA bundle.
const CA_VARIABLES: [&str; 6] = [
    "SSL_CERT_FILE",
    "PIP_CERT",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "GIT_SSL_CAINFO",
    "NODE_EXTRA_CA_CERTS",
];

/// Runs RUN steps in containerd.
#[derive(Debug, Clone)]
pub struct Runner {
    pub socket: PathBuf,
    pub namespace: String,
    /// Scratch for logs and secret files.
    pub work: PathBuf,
    /// The CA certificates build steps trust (for TLS-intercepting proxies), when configured.
    pub ca_bundle: Option<PathBuf>,
}

impl Runner {
    /// Removes the step containers an earlier run of this builder left (it was killed mid-step): nothing
    /// else uses the builder's namespace. An unreachable containerd is a warning here; steps will say more.
    pub async fn remove_leftovers(&self) {
        let containerd = match Containerd::connect(&self.socket, &self.namespace).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "containerd is not reachable; RUN steps will fail until it is");
                return;
            }
        };
        for id in containerd.containers().await.unwrap_or_default() {
            let _ = containerd.kill(&id, 9).await;
            let _ = tokio::time::timeout(Duration::from_secs(5), containerd.wait(&id)).await;
            containerd.remove(&id).await;
            tracing::info!(
                container = id,
                "removed a step container left by an earlier run"
            );
        }
        let _ = std::fs::remove_dir_all(&self.work);
    }
}

/// Writes the extra CA certificates into one bundle at `out`; each file must hold PEM certificates.
pub fn write_ca_bundle(files: &[PathBuf], out: &Path) -> anyhow::Result<Option<PathBuf>> {
    if files.is_empty() {
        return Ok(None);
    }
    let mut bundle = String::new();
    for file in files {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("extra_ca_certs: reading {}", file.display()))?;
        if !text.contains("-----BEGIN CERTIFICATE-----") {
            bail!(
                "extra_ca_certs: {} holds no PEM certificate",
                file.display()
            );
        }
        bundle.push_str(text.trim_end());
        bundle.push('\n');
    }
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(out, bundle).with_context(|| format!("writing {}", out.display()))?;
    Ok(Some(out.to_owned()))
}

/// Docker's default capabilities for build steps.
const CAPABILITIES: [Capability; 14] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// What a RUN step's container gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunSpec {
    pub argv: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    /// Host file to path in the container, read-only.
    pub binds: Vec<(PathBuf, String)>,
}

/// The runtime spec of a build step's container (no IO).
pub fn spec(run: &RunSpec) -> anyhow::Result<Spec> {
    let mut spec = Spec::default();
    let caps: std::collections::HashSet<Capability> = CAPABILITIES.into_iter().collect();
    let active = if run.uid == 0 {
        caps.clone()
    } else {
        Default::default()
    };
    let capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(caps)
        .effective(active.clone())
        .permitted(active)
        .build()?;
    let process = ProcessBuilder::default()
        .terminal(false)
        .user(UserBuilder::default().uid(run.uid).gid(run.gid).build()?)
        .args(run.argv.clone())
        .env(run.env.clone())
        .cwd(if run.cwd.is_empty() {
            "/".to_owned()
        } else {
            run.cwd.clone()
        })
        .capabilities(capabilities)
        .rlimits(
            spec.process()
                .as_ref()
                .and_then(|p| p.rlimits().clone())
                .unwrap_or_default(),
        )
        .build()?;
    spec.set_process(Some(process));
    spec.set_root(Some(
        RootBuilder::default()
            .path("rootfs")
            .readonly(false)
            .build()?,
    ));
    spec.set_hostname(Some("spacedock-build".into()));
    let mut mounts = spec.mounts().clone().unwrap_or_default();
    for (source, target) in &run.binds {
        mounts.push(
            MountBuilder::default()
                .destination(target)
                .typ("bind")
                .source(source)
                .options(vec!["rbind".into(), "ro".into()])
                .build()?,
        );
    }
    spec.set_mounts(Some(mounts));
    // No network namespace: steps use the host's network (package downloads).
    let namespaces = [
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Mount,
    ]
    .into_iter()
    .map(|typ| LinuxNamespaceBuilder::default().typ(typ).build())
    .collect::<Result<Vec<_>, _>>()?;
    let defaults = spec.linux().clone().unwrap_or_default();
    let linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .masked_paths(defaults.masked_paths().clone().unwrap_or_default())
        .readonly_paths(defaults.readonly_paths().clone().unwrap_or_default())
        .build()?;
    spec.set_linux(Some(linux));
    Ok(spec)
}

impl Runner {
    /// Runs the step on the image; returns its layer, written into the cache.
    pub async fn run(
        &self,
        step: &Step,
        image: &Image,
        cache: &Cache,
        (passwd, group): (&str, &str),
        secrets: &[EnvVar],
        log: &Log,
    ) -> anyhow::Result<Layer> {
        let Step::Run {
            argv,
            env,
            workdir,
            user,
            secrets: mounts,
            ..
        } = step
        else {
            bail!("not a RUN step");
        };
        let user = if user.is_empty() { "0" } else { user.as_str() };
        let (uid, gid) =
            crate::image::owners(user, passwd, group).map_err(|e| anyhow!("USER: {e}"))?;
        let containerd = Containerd::connect(&self.socket, &self.namespace).await?;
        let mut descriptors = Vec::new();
        for layer in &image.layers {
            let bytes = std::fs::read(cache.path(&layer.digest)?)?;
            descriptors.push(
                containerd
                    .write_blob(LAYER_TAR, &bytes, HashMap::new())
                    .await?,
            );
        }
        let chain = containerd.unpack(&descriptors).await?;
        let id = format!(
            "build-{}-{}",
            &step.key().to_hex()[..16],
            std::process::id()
        );
        let dir = self.work.join(&id);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut binds = Vec::new();
        let mut secret_targets = Vec::new();
        for mount in mounts {
            let value = secrets
                .iter()
                .find(|s| s.key == mount.id)
                .map(|s| s.value.clone());
            let Some(value) = value else {
                if mount.required {
                    bail!(
                        "the secret `{}` is not set on this Space (add it in its settings)",
                        mount.id
                    );
                }
                continue;
            };
            let file = dir.join(format!("secret-{}", binds.len()));
            std::fs::write(&file, value)?;
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o444))?;
            let target = mount.target.clone();
            secret_targets.push(target.trim_start_matches('/').to_owned());
            binds.push((file, target));
        }
        // The host's name service files, as the host network goes with them.
        for file in ["/etc/resolv.conf", "/etc/hosts"] {
            if Path::new(file).exists() {
                binds.push((PathBuf::from(file), file.to_owned()));
            }
        }
        let mut env: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        if let Some(bundle) = &self.ca_bundle {
            binds.push((bundle.clone(), CA_BUNDLE.to_owned()));
            for name in CA_VARIABLES {
                if !env.iter().any(|e| e.starts_with(&format!("{name}="))) {
                    env.push(format!("{name}={CA_BUNDLE}"));
                }
            }
        }
        let run = RunSpec {
            argv: argv.clone(),
            env,
            cwd: workdir.clone(),
            uid,
            gid,
            binds: binds.clone(),
        };
        let spec_json = serde_json::to_vec(&spec(&run)?)?;
        let output = dir.join("output.log");
        std::fs::write(&output, b"")?;
        let result = async {
            containerd.start(&id, &chain, spec_json, &output).await?;
            let mut offset = 0u64;
            let code = {
                let wait = containerd.wait(&id);
                tokio::pin!(wait);
                loop {
                    tokio::select! {
                        code = &mut wait => break code?,
                        _ = tokio::time::sleep(Duration::from_millis(250)) => {
                            offset = stream_output(&output, offset, log, false);
                        }
                    }
                }
            };
            containerd.delete_task(&id).await;
            stream_output(&output, offset, log, true);
            if code != 0 {
                bail!("`{}` exited with code {code}", argv.join(" "));
            }
            let mounts = containerd.mounts(&id).await?;
            let upper = mounts
                .iter()
                .flat_map(|m| m.options.iter())
                .find_map(|o| o.strip_prefix("upperdir="))
                .ok_or_else(|| anyhow!("the step's snapshot has no overlayfs upper directory"))?
                .to_owned();
            let skip: Vec<String> = secret_targets
                .iter()
                .cloned()
                .chain([SECRETS_DIR.to_owned(), "run/spacedock".to_owned()])
                .collect();
            // The upper directory's files are read while the layer is written, before the snapshot goes.
            let cache = cache.clone();
            tokio::task::spawn_blocking(move || {
                cache.write_layer(changes(Path::new(&upper), &skip)?)
            })
            .await?
        }
        .await;
        containerd.remove(&id).await;
        let _ = std::fs::remove_dir_all(&dir);
        result
    }
}

/// Sends what the step printed since `offset`, in whole lines (and a last partial one when `all`); returns
/// the new offset.
fn stream_output(path: &Path, offset: u64, log: &Log, all: bool) -> u64 {
    let Ok(bytes) = std::fs::read(path) else {
        return offset;
    };
    let start = (offset as usize).min(bytes.len());
    let end = if all {
        bytes.len()
    } else {
        match bytes[start..].iter().rposition(|b| *b == b'\n') {
            Some(i) => start + i + 1,
            None => return offset,
        }
    };
    log.lines(&String::from_utf8_lossy(&bytes[start..end]));
    end as u64
}

/// The entries of an overlayfs upper directory as layer entries: files, folders and links as they are
/// (owners and permission bits kept), a deleted path (a 0/0 character device) as `.wh.NAME`, a folder made
/// opaque as the folder and `.wh..wh..opq` in it. Paths in `skip` (and what is under them) are left out, and
/// an empty `etc/resolv.conf` or `etc/hosts` (mount points).
pub fn changes(upper: &Path, skip: &[String]) -> anyhow::Result<Vec<Entry>> {
    let mut entries = Vec::new();
    walk(upper, upper, skip, &mut entries)?;
    Ok(entries)
}

fn walk(root: &Path, dir: &Path, skip: &[String], out: &mut Vec<Entry>) -> anyhow::Result<()> {
    let mut children: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .collect::<Result<_, _>>()?;
    children.sort_by_key(|c| c.file_name());
    for child in children {
        let path = child.path();
        let rel = path
            .strip_prefix(root)?
            .to_str()
            .ok_or_else(|| anyhow!("{} is not UTF-8", path.display()))?
            .to_owned();
        if skip
            .iter()
            .any(|s| rel == *s || rel.starts_with(&format!("{s}/")))
        {
            continue;
        }
        let meta = std::fs::symlink_metadata(&path)?;
        let file_type = meta.file_type();
        let entry = |kind| Entry {
            path: rel.clone(),
            kind,
            mode: meta.mode() & 0o7777,
            uid: meta.uid(),
            gid: meta.gid(),
        };
        if file_type.is_char_device() && meta.rdev() == 0 {
            let (parent, name) = rel.rsplit_once('/').unwrap_or(("", &rel));
            let wh = if parent.is_empty() {
                format!(".wh.{name}")
            } else {
                format!("{parent}/.wh.{name}")
            };
            out.push(Entry {
                path: wh,
                kind: Kind::File(Vec::new()),
                mode: 0o644,
                uid: 0,
                gid: 0,
            });
        } else if file_type.is_dir() {
            out.push(entry(Kind::Dir));
            let opaque = xattr::get(&path, "trusted.overlay.opaque").ok().flatten();
            if opaque.as_deref() == Some(b"y") {
                out.push(Entry {
                    path: format!("{rel}/.wh..wh..opq"),
                    kind: Kind::File(Vec::new()),
                    mode: 0o644,
                    uid: 0,
                    gid: 0,
                });
            }
            walk(root, &path, skip, out)?;
        } else if file_type.is_symlink() {
            let target = std::fs::read_link(&path)?;
            out.push(entry(Kind::Symlink(target.to_string_lossy().into_owned())));
        } else if file_type.is_file() {
            if (rel == "etc/resolv.conf" || rel == "etc/hosts") && meta.len() == 0 {
                continue;
            }
            out.push(entry(Kind::HostFile(path.clone())));
        } else {
            tracing::warn!(
                path = rel,
                "a device, socket or fifo made by a RUN step is left out of its layer"
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_steps_get_dockers_capabilities_and_users_none() {
        let run = RunSpec {
            argv: vec!["/bin/sh".into(), "-c".into(), "true".into()],
            env: vec!["PATH=/bin".into()],
            cwd: String::new(),
            uid: 0,
            gid: 0,
            binds: vec![(PathBuf::from("/tmp/s"), "/run/secrets/token".into())],
        };
        let root = spec(&run).unwrap();
        let process = root.process().as_ref().unwrap();
        assert_eq!(process.cwd(), &PathBuf::from("/"));
        let caps = process.capabilities().as_ref().unwrap();
        assert!(
            caps.effective()
                .as_ref()
                .unwrap()
                .contains(&Capability::Chown)
        );
        let mounts = root.mounts().as_ref().unwrap();
        let secret = mounts
            .iter()
            .find(|m| m.destination() == &PathBuf::from("/run/secrets/token"))
            .unwrap();
        assert!(
            secret
                .options()
                .as_ref()
                .unwrap()
                .contains(&"ro".to_owned())
        );
        let namespaces = root
            .linux()
            .as_ref()
            .unwrap()
            .namespaces()
            .as_ref()
            .unwrap();
        assert!(
            !namespaces
                .iter()
                .any(|n| n.typ() == LinuxNamespaceType::Network),
            "build steps use the host's network"
        );
        let user = spec(&RunSpec {
            uid: 1000,
            gid: 1000,
            ..run
        })
        .unwrap();
        let caps = user
            .process()
            .as_ref()
            .unwrap()
            .capabilities()
            .clone()
            .unwrap();
        assert!(caps.effective().as_ref().unwrap().is_empty());
        assert!(
            caps.bounding()
                .as_ref()
                .unwrap()
                .contains(&Capability::Chown)
        );
    }

    #[test]
    fn an_upper_directory_becomes_entries_with_whiteouts_and_without_mount_points() {
        let dir = tempfile::tempdir().unwrap();
        let up = dir.path();
        std::fs::create_dir_all(up.join("app/sub")).unwrap();
        std::fs::write(up.join("app/sub/x.txt"), b"x").unwrap();
        std::os::unix::fs::symlink("sub/x.txt", up.join("app/link")).unwrap();
        std::fs::create_dir_all(up.join("run/secrets")).unwrap();
        std::fs::write(up.join("run/secrets/token"), b"hush").unwrap();
        std::fs::create_dir_all(up.join("etc")).unwrap();
        std::fs::write(up.join("etc/resolv.conf"), b"").unwrap();
        // A deletion: overlayfs writes a 0/0 character device (mknod needs root, which the suite has).
        let status = std::process::Command::new("mknod")
            .arg(up.join("app/gone"))
            .args(["c", "0", "0"])
            .status()
            .unwrap();
        assert!(status.success(), "mknod (the suite runs as root)");
        let entries = changes(up, &["run/secrets".into()]).unwrap();
        let paths: Vec<&str> = entries.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "app",
                "app/.wh.gone",
                "app/link",
                "app/sub",
                "app/sub/x.txt",
                "etc",
                "run"
            ]
        );
        // Files stay on disk until the layer is written; then their bytes are in it, the secret's are not.
        assert!(
            entries
                .iter()
                .any(|e| e.kind == Kind::HostFile(up.join("app/sub/x.txt")))
        );
        let mut bytes = Vec::new();
        crate::layer::write(entries, &mut bytes).unwrap();
        let mut archive = tar::Archive::new(bytes.as_slice());
        let mut found = Vec::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().to_string_lossy().into_owned();
            let mut content = String::new();
            std::io::Read::read_to_string(&mut entry, &mut content).unwrap();
            found.push((path, content));
        }
        assert!(
            found.contains(&("app/sub/x.txt".into(), "x".into())),
            "{found:?}"
        );
        assert!(found.iter().all(|(_, c)| c != "hush"), "{found:?}");
    }
}
