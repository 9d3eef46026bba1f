//! The coordinator's config file (TOML): every field documented here and in ops/config/coordinator.toml.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use spacedock_shared::flavor::{Catalog, CatalogConfig, NodeShape};

/// `spacedock-coordinator --config FILE`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CoordinatorConfig {
    /// This coordinator's Raft id: a positive number unique in the cluster.
    pub node_id: u64,
    /// Directory for the Raft log, snapshots, cluster CA and blob store.
    pub data_dir: PathBuf,
    /// Address of the HTTP API and the Space ingress.
    pub api_listen: SocketAddr,
    /// Address of the QUIC endpoint for peers, agents and builders.
    pub quic_listen: SocketAddr,
    /// QUIC address other nodes dial to reach this coordinator; defaults to `quic_listen`, with 127.0.0.1 in
    /// place of an unspecified IP (right only on a one-machine cluster).
    pub quic_advertise: Option<String>,
    /// URL of the API as clients reach it; repo and Space URLs are built from it.
    pub public_url: String,
    /// Domain under which Spaces are served as `SUBDOMAIN.APPS_DOMAIN`.
    pub apps_domain: String,
    /// QUIC addresses of running coordinators to join on first start; empty bootstraps a new cluster.
    pub join: Vec<String>,
    /// Log filter in RUST_LOG syntax, used when RUST_LOG is not set.
    pub log: String,
    /// Applied Raft entries after which a snapshot compacts the log.
    pub snapshot_entries: u64,
    /// Seconds without a heartbeat after which the leader marks a node down.
    pub node_ttl_seconds: u64,
    /// Changes to the hardware flavor catalog.
    pub flavors: CatalogConfig,
    /// Kinds of node the fleet has; every flavor must fit one of them. Empty: checked as nodes join.
    pub node_shapes: Vec<NodeShape>,
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        CoordinatorConfig {
            node_id: 1,
            data_dir: PathBuf::from("/var/lib/spacedock/coordinator"),
            api_listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            quic_listen: SocketAddr::from(([0, 0, 0, 0], 7443)),
            quic_advertise: None,
            public_url: "http://localhost:8080".into(),
            apps_domain: "localhost".into(),
            join: Vec::new(),
            log: "info,raft=warn".into(),
            snapshot_entries: 100_000,
            node_ttl_seconds: 10,
            flavors: CatalogConfig::default(),
            node_shapes: Vec::new(),
        }
    }
}

impl CoordinatorConfig {
    /// The QUIC address to record for this coordinator.
    pub fn advertised_quic(&self) -> String {
        match &self.quic_advertise {
            Some(addr) => addr.clone(),
            None if self.quic_listen.ip().is_unspecified() => {
                format!("127.0.0.1:{}", self.quic_listen.port())
            }
            None => self.quic_listen.to_string(),
        }
    }

    /// The port in `public_url`, where the ingress is reached too.
    pub fn public_port(&self) -> Option<u16> {
        let rest = self
            .public_url
            .split_once("://")
            .map_or(self.public_url.as_str(), |(_, r)| r);
        let authority = rest.split('/').next().unwrap_or_default();
        match authority.rsplit_once(':') {
            Some((_, port)) => port.parse().ok(),
            None if self.public_url.starts_with("https://") => Some(443),
            None => Some(80),
        }
    }

    /// Checks what the types cannot: returns the catalog in force, or every problem found.
    pub fn validate(&self) -> Result<Catalog, Vec<String>> {
        let mut problems = Vec::new();
        if self.node_id == 0 {
            problems.push("node_id: must be a positive number".to_string());
        }
        if self.node_ttl_seconds < 2 {
            problems.push(format!(
                "node_ttl_seconds: {} is too short; use at least 2",
                self.node_ttl_seconds
            ));
        }
        if self.snapshot_entries < 100 {
            problems.push(format!(
                "snapshot_entries: {} is too small; use at least 100",
                self.snapshot_entries
            ));
        }
        if !(self.public_url.starts_with("http://") || self.public_url.starts_with("https://")) {
            problems.push(format!(
                "public_url: `{}` is not an http(s) URL",
                self.public_url
            ));
        }
        let domain_ok = !self.apps_domain.is_empty()
            && self.apps_domain.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if !domain_ok {
            problems.push(format!(
                "apps_domain: `{}` is not a DNS domain",
                self.apps_domain
            ));
        }
        let catalog = match Catalog::from_config(&self.flavors) {
            Ok(catalog) => Some(catalog),
            Err(errors) => {
                problems.extend(errors.iter().map(|e| format!("flavors: {e}")));
                None
            }
        };
        if let (Some(catalog), false) = (&catalog, self.node_shapes.is_empty()) {
            problems.extend(
                catalog
                    .unsatisfiable(&self.node_shapes)
                    .iter()
                    .map(|e| format!("flavors: {e}")),
            );
        }
        match catalog {
            Some(catalog) if problems.is_empty() => Ok(catalog),
            _ => Err(problems),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../ops/config/coordinator.toml");

    #[test]
    fn example_is_valid_and_documents_every_field() {
        let config: CoordinatorConfig = spacedock_cli_common::parse_config(EXAMPLE).unwrap();
        let catalog = config.validate().unwrap();
        assert!(catalog.get("h200x8").is_some());
        let missing =
            spacedock_cli_common::undocumented_keys(&CoordinatorConfig::default(), EXAMPLE)
                .unwrap();
        assert!(missing.is_empty(), "undocumented: {missing:?}");
    }

    #[test]
    fn default_is_valid() {
        CoordinatorConfig::default().validate().unwrap();
    }

    #[test]
    fn every_problem_is_listed() {
        let config = CoordinatorConfig {
            node_id: 0,
            public_url: "localhost".into(),
            apps_domain: "bad domain".into(),
            ..Default::default()
        };
        let problems = config.validate().unwrap_err();
        assert_eq!(problems.len(), 3, "{problems:?}");
    }

    #[test]
    fn unsatisfiable_flavors_are_named() {
        let config: CoordinatorConfig = spacedock_cli_common::parse_config(
            "[flavors]\ninclude_defaults = false\n[[flavors.flavor]]\nname = \"cpu-basic\"\nvcpu = 2\nmemory_gib = 16\ndisk_gib = 50\nprice_per_hour = \"0\"\n\
             [[flavors.flavor]]\nname = \"h200\"\nvcpu = 23\nmemory_gib = 256\ndisk_gib = 3000\nprice_per_hour = \"5.00\"\naccelerator = { vendor = \"nvidia\", model = \"H200\", count = 1, vram_gb = 141 }\n\
             [[node_shapes]]\nname = \"cpu-box\"\nvcpu = 16\nmemory_gib = 64\ndisk_gib = 500\n",
        )
        .unwrap();
        let problems = config.validate().unwrap_err();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].contains("`h200`") && problems[0].contains("cpu-box"),
            "{problems:?}"
        );
    }
}
