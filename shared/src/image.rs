//! Reading an OCI image config (the JSON both OCI layouts and docker archives carry): what the container runs
//! and the diff ids its layers must have.

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
