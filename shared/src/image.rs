//! Reading an OCI image config (the JSON both OCI layouts and docker archives carry): what the container runs
//! and the diff ids its layers must have; the image's OCI manifest; and writing a one-layer busybox image
//! archive.

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

/// The OCI image manifest of an image whose layers are uncompressed tars (as every image in the cluster's
/// store is): `config` and each layer as (`sha256:` digest, size). The bytes depend on nothing else, so the
/// same config and layers always give the same manifest digest, whoever writes it (the builder, the
/// coordinator for an imported image).
pub fn oci_manifest(config: (&str, u64), layers: &[(&str, u64)]) -> Result<Vec<u8>, String> {
    use oci_spec::image::{Descriptor, Digest, ImageManifestBuilder, MediaType};
    use std::str::FromStr;
    let descriptor = |media: MediaType, (digest, size): (&str, u64)| {
        let digest = Digest::from_str(digest).map_err(|e| format!("`{digest}`: {e}"))?;
        Ok::<_, String>(Descriptor::new(media, size, digest))
    };
    let manifest = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .config(descriptor(MediaType::ImageConfig, config)?)
        .layers(
            layers
                .iter()
                .map(|l| descriptor(MediaType::ImageLayer, *l))
                .collect::<Result<Vec<_>, _>>()?,
        )
        .build()
        .map_err(|e| format!("image manifest: {e}"))?;
    serde_json::to_vec(&manifest).map_err(|e| format!("image manifest: {e}"))
}

/// `sha256:HEX` of some bytes.
pub fn sha256_digest(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    let hex: String = sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256:{hex}")
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
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": { "Env": ["PATH=/bin"], "Cmd": cmd, "WorkingDir": "/home/user" },
        "rootfs": { "type": "layers", "diff_ids": [sha256_digest(&layer)] },
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
    fn the_manifest_names_config_and_layers_and_depends_on_nothing_else() {
        let config = sha256_digest(b"config");
        let (a, b) = (sha256_digest(b"a"), sha256_digest(b"b"));
        let bytes = oci_manifest((&config, 6), &[(&a, 10), (&b, 20)]).unwrap();
        let m: oci_spec::image::ImageManifest = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(m.schema_version(), 2);
        assert_eq!(m.config().digest().to_string(), config);
        assert_eq!(
            m.config().media_type(),
            &oci_spec::image::MediaType::ImageConfig
        );
        let layers: Vec<(String, u64)> = m
            .layers()
            .iter()
            .map(|l| (l.digest().to_string(), l.size()))
            .collect();
        assert_eq!(layers, [(a.clone(), 10), (b.clone(), 20)]);
        assert!(
            m.layers()
                .iter()
                .all(|l| l.media_type() == &oci_spec::image::MediaType::ImageLayer)
        );
        assert_eq!(
            oci_manifest((&config, 6), &[(&a, 10), (&b, 20)]).unwrap(),
            bytes
        );
        assert_ne!(
            oci_manifest((&config, 6), &[(&b, 20), (&a, 10)]).unwrap(),
            bytes
        );
        let err = oci_manifest(("sha256:short", 1), &[]).unwrap_err();
        assert!(err.contains("sha256:short"), "{err}");
    }

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
