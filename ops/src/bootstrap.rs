//! `spacedock image bootstrap python --version X`: a Python base image for Gradio and Streamlit Spaces made from
//! Debian packages, with no container registry. debootstrap installs the Debian release whose python3 is X
//! (`python3`, `python3-venv`, `python3-pip`, `ca-certificates`), a virtual environment at `/opt/venv` goes
//! first on `PATH` (so build steps `pip install` into it), the user `user` (uid 1000, home `/home/user`) is
//! made, apt's caches are dropped, and the tree becomes one layer (GNU tar: sorted, numeric owners, mtime 0)
//! imported as `spacedock/python:X` through `image import`.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, anyhow, bail};
use serde_json::json;
use sha2::Digest as _;

use crate::client::Client;

/// Debian's default mirror.
pub const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";

/// The Debian releases whose `python3` is each Python version.
const RELEASES: [(&str, &str); 3] = [
    ("3.9", "bullseye"),
    ("3.11", "bookworm"),
    ("3.13", "trixie"),
];

/// The Debian release to bootstrap for Python `version` (`3.11`); an error lists the versions there are.
pub fn release_for(version: &str) -> anyhow::Result<&'static str> {
    RELEASES
        .iter()
        .find(|(v, _)| *v == version)
        .map(|(_, release)| *release)
        .ok_or_else(|| {
            let known: Vec<String> = RELEASES
                .iter()
                .map(|(v, r)| format!("{v} (Debian {r})"))
                .collect();
            anyhow!(
                "no Debian release ships Python {version}; these can be bootstrapped: {} (a Space whose \
                 python_version has no base is built on the nearest newer one)",
                known.join(", ")
            )
        })
}

/// The base's name in the cluster's store (the builder looks for it).
pub fn python_base_name(version: &str) -> String {
    format!("spacedock/python:{version}")
}

/// The image's OCI config: the venv first on `PATH`, `python3` as the command, `/home/user` as the workdir.
pub fn config_json(version: &str, diff_id: &str) -> Vec<u8> {
    let config = json!({
        "architecture": "amd64",
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": {
            "Env": [
                "PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "VIRTUAL_ENV=/opt/venv",
                "LANG=C.UTF-8",
                "PIP_DISABLE_PIP_VERSION_CHECK=1",
            ],
            "Cmd": ["python3"],
            "WorkingDir": "/home/user",
            "Labels": { "org.spacedock.python": version },
        },
        "rootfs": { "type": "layers", "diff_ids": [diff_id] },
    });
    serde_json::to_vec(&config).unwrap_or_default()
}

fn run(command: &mut Command, what: &str) -> anyhow::Result<String> {
    let out = command
        .output()
        .with_context(|| format!("{what}: could not start {:?}", command.get_program()))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(15).collect();
        bail!(
            "{what} failed ({}):\n{}",
            out.status,
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn chroot(root: &Path, args: &[&str], what: &str) -> anyhow::Result<String> {
    let mut command = Command::new("chroot");
    command
        .arg(root)
        .args(args)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("LANG", "C.UTF-8");
    run(&mut command, what)
}

/// Makes the image and imports it; returns its name.
pub fn python(client: &Client, version: &str, mirror: &str) -> anyhow::Result<String> {
    let release = release_for(version)?;
    let work = tempfile::Builder::new()
        .prefix("spacedock-bootstrap-")
        .tempdir_in(std::env::temp_dir())
        .context("making a work folder")?;
    let root = work.path().join("rootfs");
    println!("debootstrap {release} from {mirror} (a few minutes)...");
    run(
        Command::new("debootstrap")
            .args([
                "--variant=minbase",
                "--include=python3,python3-venv,python3-pip,ca-certificates",
                release,
            ])
            .arg(&root)
            .arg(mirror),
        "debootstrap (apt-get install debootstrap; it runs as root)",
    )?;
    let found = chroot(
        &root,
        &[
            "python3",
            "-c",
            "import sys; print(f'{sys.version_info[0]}.{sys.version_info[1]}')",
        ],
        "checking python3",
    )?;
    if found.trim() != version {
        bail!(
            "Debian {release}'s python3 is {}, not {version}",
            found.trim()
        );
    }
    chroot(
        &root,
        &["python3", "-m", "venv", "/opt/venv"],
        "making /opt/venv",
    )?;
    chroot(
        &root,
        &["useradd", "-m", "-u", "1000", "-s", "/bin/bash", "user"],
        "adding the user",
    )?;
    for dir in [
        "var/cache/apt/archives",
        "var/lib/apt/lists",
        "dev",
        "proc",
        "sys",
    ] {
        let path = root.join(dir);
        if let Ok(entries) = std::fs::read_dir(&path) {
            for entry in entries.flatten() {
                let p = entry.path();
                if p.is_dir() && !p.is_symlink() {
                    let _ = std::fs::remove_dir_all(&p);
                } else {
                    let _ = std::fs::remove_file(&p);
                }
            }
        }
    }
    let layer = work.path().join("layer.tar");
    run(
        Command::new("tar")
            .args([
                "--sort=name",
                "--numeric-owner",
                "--mtime=@0",
                "--xattrs",
                "--pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime",
                "-C",
            ])
            .arg(&root)
            .arg("-cf")
            .arg(&layer)
            .arg("."),
        "writing the layer",
    )?;
    let mut file = std::fs::File::open(&layer)?;
    let mut sha = sha2::Sha256::new();
    std::io::copy(&mut file, &mut sha)?;
    let diff_id = format!("sha256:{}", hex::encode(sha.finalize()));
    let name = python_base_name(version);
    let config = config_json(version, &diff_id);
    let archive = work.path().join("image.tar");
    {
        let mut tar = tar::Builder::new(std::fs::File::create(&archive)?);
        let manifest =
            json!([{ "Config": "config.json", "RepoTags": [name], "Layers": ["layer.tar"] }]);
        for (entry, bytes) in [
            ("manifest.json", serde_json::to_vec(&manifest)?),
            ("config.json", config),
        ] {
            let mut header = tar::Header::new_ustar();
            header.set_size(bytes.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            tar.append_data(&mut header, entry, bytes.as_slice())?;
        }
        tar.append_path_with_name(&layer, "layer.tar")?;
        tar.finish()?;
    }
    std::fs::remove_file(&layer)?;
    crate::image::import(client, &archive, Some(name.clone()))?;
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_map_to_the_debian_release_that_ships_them() {
        assert_eq!(release_for("3.11").unwrap(), "bookworm");
        assert_eq!(release_for("3.13").unwrap(), "trixie");
        let err = release_for("3.10").unwrap_err().to_string();
        assert!(
            err.contains("3.9 (Debian bullseye), 3.11 (Debian bookworm)"),
            "{err}"
        );
    }

    #[test]
    fn the_config_puts_the_venv_first_and_names_its_one_layer() {
        let bytes = config_json("3.11", "sha256:ab");
        let (run, diff_ids) = spacedock_shared::image::parse_config(&bytes).unwrap();
        assert_eq!(diff_ids, ["sha256:ab"]);
        assert!(run.env[0].starts_with("PATH=/opt/venv/bin:"));
        assert_eq!(run.cmd, ["python3"]);
    }
}
