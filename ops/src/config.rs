//! The CLI's config file (TOML): every field documented here and in ops/config/cli.toml.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// `spacedock --config FILE`; by default `$XDG_CONFIG_HOME/spacedock/config.toml` when it exists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CliConfig {
    /// URL of a coordinator's HTTP API.
    pub endpoint: String,
    /// File holding an API token; `SPACEDOCK_TOKEN` or `HF_TOKEN` in the environment win over it.
    pub token_file: Option<PathBuf>,
    /// Log filter in RUST_LOG syntax, used when RUST_LOG is not set.
    pub log: String,
}

impl Default for CliConfig {
    fn default() -> Self {
        CliConfig {
            endpoint: "http://localhost:8080".into(),
            token_file: None,
            log: "warn".into(),
        }
    }
}

/// Where the config is looked for when `--config` is not given.
pub fn default_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("spacedock").join("config.toml")).filter(|p| p.exists())
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../config/cli.toml");

    #[test]
    fn example_parses_and_documents_every_field() {
        let config: CliConfig = spacedock_cli_common::parse_config(EXAMPLE).unwrap();
        assert_eq!(config.endpoint, "http://localhost:8080");
        let full = CliConfig {
            token_file: Some("x".into()),
            ..Default::default()
        };
        let missing = spacedock_cli_common::undocumented_keys(&full, EXAMPLE).unwrap();
        assert!(missing.is_empty(), "undocumented: {missing:?}");
    }
}
