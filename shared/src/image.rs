//! Reading an OCI image config (the JSON both OCI layouts and docker archives carry): what the container runs
//! and the diff ids its layers must have; and writing a one-layer busybox image archive.

use crate::wire::ImageConfig;

#[derive(serde::Deserialize)]
struct Config {
    #[serde(default)]
    config: Option<RunConfig>,
    rootfs: RootFs,
}

#[derive(serde::Deserialize, Default)]
struct RunConfig {
    #[serde(rename = "Env", default)]
    env: Option<Vec<String>>,
    #[serde(rename = "Entrypoint", default)]
    entrypoint: Option<Vec<String>>,
    #[serde(rename = "Cmd", default)]
    cmd: Option<Vec<String>>,
    #[serde(rename = "WorkingDir", default)]
    working_dir: Option<String>,
}

#[derive(serde::Deserialize)]
struct RootFs {
    #[serde(rename = "type")]
    kind: String,
    diff_ids: Vec<String>,
}

/// The run config and the layers' diff ids, or what is wrong with the JSON.
pub fn parse_config(bytes: &[u8]) -> Result<(ImageConfig, Vec<String>), String> {
    let config: Config =
        serde_json::from_slice(bytes).map_err(|e| format!("image config is not valid: {e}"))?;
    if config.rootfs.kind != "layers" {
        return Err(format!(
            "image config: rootfs.type is `{}`, expected `layers`",
            config.rootfs.kind
        ));
    }
    let run = config.config.unwrap_or_default();
    let image = ImageConfig {
        env: run.env.unwrap_or_default(),
        entrypoint: run.entrypoint.unwrap_or_default(),
        cmd: run.cmd.unwrap_or_default(),
        working_dir: run.working_dir.unwrap_or_default(),
    };
    if image.entrypoint.is_empty() && image.cmd.is_empty() {
        return Err("image config: neither Entrypoint nor Cmd says what to run".into());
    }
    Ok((image, config.rootfs.diff_ids))
}

/// A `docker save` archive of a one-layer image made from a static busybox: `busybox` (its bytes) as
/// `/bin/busybox` with `/bin/sh`, the directories `/www`, `/tmp` and `/home/user` (uid 1000), then `files`
/// (`path`, contents, mode), `PATH=/bin`, `cmd` as its command in `/home/user`, tagged `name`. No IO: the caller
/// reads busybox and writes the archive. Used for test images and the one-machine demo Space, which need no
/// registry.
pub fn busybox_archive(
    name: &str,
    busybox: &[u8],
    cmd: &[&str],
    files: &[(&str, &[u8], u32)],
) -> std::io::Result<Vec<u8>> {
    use sha2::Digest as _;
    let header = |kind: tar::EntryType, mode: u32, size: usize, uid: u64| {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size as u64);
        h.set_uid(uid);
        h.set_gid(uid);
        h.set_mtime(0);
        h
    };
    let mut layer = tar::Builder::new(Vec::new());
    for (dir, uid) in [
        ("bin/", 0),
        ("www/", 0),
        ("home/", 0),
        ("home/user/", 1000),
        ("tmp/", 0),
    ] {
        let mut h = header(tar::EntryType::Directory, 0o755, 0, uid);
        layer.append_data(&mut h, dir, std::io::empty())?;
    }
    let mut h = header(tar::EntryType::Regular, 0o755, busybox.len(), 0);
    layer.append_data(&mut h, "bin/busybox", busybox)?;
    let mut h = header(tar::EntryType::Symlink, 0o777, 0, 0);
    layer.append_link(&mut h, "bin/sh", "busybox")?;
    for (path, contents, mode) in files {
        let mut h = header(tar::EntryType::Regular, *mode, contents.len(), 0);
        layer.append_data(&mut h, path, *contents)?;
    }
    let layer = layer.into_inner()?;
    let hex: String = sha2::Sha256::digest(&layer)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": { "Env": ["PATH=/bin"], "Cmd": cmd, "WorkingDir": "/home/user" },
        "rootfs": { "type": "layers", "diff_ids": [format!("sha256:{hex}")] },
    })
    .to_string();
    let manifest = serde_json::json!([{
        "Config": "config.json",
        "RepoTags": [name],
        "Layers": ["layer/layer.tar"],
    }])
    .to_string();
    let mut archive = tar::Builder::new(Vec::new());
    for (entry, bytes) in [
        ("manifest.json", manifest.as_bytes()),
        ("config.json", config.as_bytes()),
        ("layer/layer.tar", layer.as_slice()),
    ] {
        let mut h = header(tar::EntryType::Regular, 0o644, bytes.len(), 0);
        archive.append_data(&mut h, entry, bytes)?;
    }
    archive.into_inner()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_docker_style_config_is_read() {
        let json = br#"{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/bin"],"Cmd":["sh"],"WorkingDir":"/app"},"rootfs":{"type":"layers","diff_ids":["sha256:aa"]}}"#;
        let (config, diff_ids) = parse_config(json).unwrap();
        assert_eq!(config.env, vec!["PATH=/bin"]);
        assert_eq!(config.cmd, vec!["sh"]);
        assert_eq!(config.working_dir, "/app");
        assert_eq!(diff_ids, vec!["sha256:aa"]);
    }

    #[test]
    fn configs_without_a_command_or_layers_are_refused() {
        let err =
            parse_config(br#"{"config":{},"rootfs":{"type":"layers","diff_ids":[]}}"#).unwrap_err();
        assert!(err.contains("Entrypoint nor Cmd"), "{err}");
        let err = parse_config(br#"{"config":{"Cmd":["x"]}}"#).unwrap_err();
        assert!(err.contains("rootfs"), "{err}");
    }
}
