//! The agent's config file (TOML): every field documented here and in ops/config/agent.toml.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// `spacedock-agent --config FILE`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// Directory for the node identity, fetched blobs and allocation state.
    pub data_dir: PathBuf,
    /// QUIC addresses of coordinators to dial (any one is enough; the agent follows the leader).
    pub join: Vec<String>,
    /// File holding the join token from `spacedock cluster join-token create` (read once, on first join).
    pub token_file: Option<PathBuf>,
    /// Name this node reports; defaults to the host name.
    pub node_name: Option<String>,
    /// Labels placement can match on, e.g. `rack = "r1"`.
    pub labels: BTreeMap<String, String>,
    /// Socket of the containerd that runs this node's Spaces.
    pub containerd_socket: PathBuf,
    /// containerd namespace that holds everything the agent creates.
    pub containerd_namespace: String,
    /// IPv4 network (a /16 to /24) the agent cuts into one /30 per container: the host end of each
    /// container's veth gets the first address, the container the second.
    pub container_subnet: String,
    /// Log filter in RUST_LOG syntax, used when RUST_LOG is not set.
    pub log: String,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            data_dir: PathBuf::from("/var/lib/spacedock/agent"),
            join: Vec::new(),
            token_file: None,
            node_name: None,
            labels: BTreeMap::new(),
            containerd_socket: PathBuf::from("/run/containerd/containerd.sock"),
            containerd_namespace: "spacedock".into(),
            container_subnet: "10.89.0.0/16".into(),
            log: "info".into(),
        }
    }
}

impl AgentConfig {
    /// Checks what the types cannot, listing every problem.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        for (k, v) in &self.labels {
            let ok = |s: &str| {
                !s.is_empty()
                    && s.len() <= 63
                    && s.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            };
            if !ok(k) || !ok(v) {
                problems.push(format!(
                    "labels.{k}: keys and values must be 1 to 63 letters, digits, `-`, `_` or `.`"
                ));
            }
        }
        if self.containerd_namespace.is_empty()
            || !self
                .containerd_namespace
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            problems.push(format!(
                "containerd_namespace: `{}` must be letters, digits, `-`, `_` or `.`",
                self.containerd_namespace
            ));
        }
        if let Err(e) = crate::network::Subnet::parse(&self.container_subnet) {
            problems.push(format!("container_subnet: {e}"));
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

    const EXAMPLE: &str = include_str!("../../ops/config/agent.toml");

    #[test]
    fn example_is_valid_and_documents_every_field() {
        let config: AgentConfig = spacedock_cli_common::parse_config(EXAMPLE).unwrap();
        config.validate().unwrap();
        assert_eq!(config.labels["rack"], "r1");
        let full = AgentConfig {
            token_file: Some("x".into()),
            node_name: Some("x".into()),
            ..Default::default()
        };
        let missing = spacedock_cli_common::undocumented_keys(&full, EXAMPLE).unwrap();
        assert!(missing.is_empty(), "undocumented: {missing:?}");
    }

    #[test]
    fn bad_labels_are_named() {
        let mut config = AgentConfig::default();
        config.labels.insert("bad key".into(), "v".into());
        config.containerd_namespace = "a/b".into();
        let problems = config.validate().unwrap_err();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].starts_with("labels.bad key"), "{problems:?}");
    }
}
