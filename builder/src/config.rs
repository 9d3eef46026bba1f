//! The builder's config file (TOML): every field documented here and in ops/config/builder.toml.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// `spacedock-builder --config FILE`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BuilderConfig {
    /// Directory for the build cache and work trees.
    pub data_dir: PathBuf,
    /// The builder's name in the cluster (its certificate says `builder-NAME`); the host name when unset.
    pub name: Option<String>,
    /// QUIC addresses of coordinators to dial (any one is enough).
    pub join: Vec<String>,
    /// File holding the join token from `spacedock cluster join-token create` (read once, on first join).
    pub token_file: Option<PathBuf>,
    /// Builds run at once on this builder.
    pub concurrency: u32,
    /// Size budget of the layer cache in GiB; least recently used entries are evicted past it.
    pub cache_budget_gib: u64,
    /// Extra CA certificates (PEM files) that build steps trust, for TLS-intercepting proxies.
    pub extra_ca_certs: Vec<PathBuf>,
    /// Socket of the containerd that runs build steps.
    pub containerd_socket: PathBuf,
    /// containerd namespace of the build steps' containers and snapshots.
    pub containerd_namespace: String,
    /// Hugging Face-compatible endpoint `preload_from_hub` downloads from; the cluster's own API when unset.
    pub hub_endpoint: Option<String>,
    /// Credentials and transport per OCI registry host, for `FROM HOST/REPO:TAG` bases.
    pub registries: Vec<spacedock_builder::registry::RegistryConfig>,
    /// Log filter in RUST_LOG syntax, used when RUST_LOG is not set.
    pub log: String,
}

impl Default for BuilderConfig {
    fn default() -> Self {
        BuilderConfig {
            data_dir: PathBuf::from("/var/lib/spacedock/builder"),
            name: None,
            join: Vec::new(),
            token_file: None,
            concurrency: 2,
            cache_budget_gib: 50,
            extra_ca_certs: Vec::new(),
            containerd_socket: PathBuf::from("/run/containerd/containerd.sock"),
            containerd_namespace: "spacedock-builder".into(),
            hub_endpoint: None,
            registries: Vec::new(),
            log: "info".into(),
        }
    }
}

impl BuilderConfig {
    /// Checks what the types cannot, listing every problem.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        if self.concurrency == 0 {
            problems.push("concurrency: must be at least 1".to_string());
        }
        if self.cache_budget_gib == 0 {
            problems.push("cache_budget_gib: must be at least 1".to_string());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../ops/config/builder.toml");

    #[test]
    fn example_is_valid_and_documents_every_field() {
        let config: BuilderConfig = spacedock_cli_common::parse_config(EXAMPLE).unwrap();
        config.validate().unwrap();
        let full = BuilderConfig {
            token_file: Some("x".into()),
            name: Some("x".into()),
            hub_endpoint: Some("x".into()),
            registries: vec![spacedock_builder::registry::RegistryConfig {
                host: "x".into(),
                username: Some("x".into()),
                password_file: Some("x".into()),
                insecure: true,
            }],
            ..Default::default()
        };
        let missing = spacedock_cli_common::undocumented_keys(&full, EXAMPLE).unwrap();
        assert!(missing.is_empty(), "undocumented: {missing:?}");
    }

    #[test]
    fn zero_values_are_refused() {
        let config = BuilderConfig {
            concurrency: 0,
            cache_budget_gib: 0,
            ..Default::default()
        };
        assert_eq!(config.validate().unwrap_err().len(), 2);
    }
}
