//! What every spacedock binary does the same way: typed TOML config files, logging setup, version strings.
//!
//! The binaries' IO edge; `spacedock-shared` stays free of files and clocks.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// `spacedock-agent 0.1.0`.
pub fn software(binary: &str) -> String {
    format!("{binary} {}", env!("CARGO_PKG_VERSION"))
}

/// Reads a TOML config file, or the defaults when no path is given. Errors name the file, line and key.
pub fn load_config<T: DeserializeOwned + Default>(path: Option<&Path>) -> anyhow::Result<T> {
    let Some(path) = path else {
        return Ok(T::default());
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    parse_config(&text).with_context(|| format!("invalid config file {}", path.display()))
}

/// Parses TOML config text; unknown keys are errors (every config struct denies them).
pub fn parse_config<T: DeserializeOwned>(text: &str) -> anyhow::Result<T> {
    toml::from_str(text).map_err(|e| anyhow::anyhow!("{}", e.to_string().trim_end()))
}

/// The config as TOML, the way `--print-config` shows it.
pub fn render_config<T: Serialize>(config: &T) -> anyhow::Result<String> {
    toml::to_string_pretty(config).context("cannot render config as TOML")
}

/// Installs the tracing subscriber on stderr: `RUST_LOG` wins, then `filter` from the config.
pub fn init_tracing(filter: &str) -> anyhow::Result<()> {
    use tracing_subscriber::EnvFilter;
    let env_filter = match std::env::var("RUST_LOG") {
        Ok(value) if !value.is_empty() => EnvFilter::try_new(&value)
            .with_context(|| format!("invalid RUST_LOG filter `{value}`"))?,
        _ => {
            EnvFilter::try_new(filter).with_context(|| format!("invalid log filter `{filter}`"))?
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(env_filter)
        .with_writer(std::io::stderr)
        .try_init()
        .map_err(|e| anyhow::anyhow!("cannot install the log subscriber: {e}"))
}

/// Flags every daemon takes.
#[derive(Debug, Clone, clap::Args)]
pub struct DaemonFlags {
    /// TOML config file (documented examples in ops/config/); flags override its values.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Directory for this daemon's state.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Log filter when RUST_LOG is unset (e.g. `info,spacedock=debug`).
    #[arg(long)]
    pub log: Option<String>,
    /// Print the effective config as TOML after checking it, then exit.
    #[arg(long)]
    pub print_config: bool,
}

impl DaemonFlags {
    /// Loads the config file (or defaults) and applies the flags over it.
    pub fn load<T: DeserializeOwned + Default>(
        &self,
        data_dir: impl FnOnce(&mut T) -> &mut PathBuf,
        log: impl FnOnce(&mut T) -> &mut String,
    ) -> anyhow::Result<T> {
        let mut config: T = load_config(self.config.as_deref())?;
        if let Some(v) = &self.data_dir {
            *data_dir(&mut config) = v.clone();
        }
        if let Some(v) = &self.log {
            *log(&mut config) = v.clone();
        }
        Ok(config)
    }
}

/// Flags of the daemons that dial in to the coordinators (agent, builder).
#[derive(Debug, Clone, clap::Args)]
pub struct JoinFlags {
    /// Coordinator QUIC addresses, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub join: Vec<String>,
    /// Join token file from `spacedock cluster join-token create`.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Join token itself (instead of a file); only read on the first start.
    #[arg(long, env = "SPACEDOCK_JOIN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

impl JoinFlags {
    pub fn apply(&self, join: &mut Vec<String>, token_file: &mut Option<PathBuf>) {
        if !self.join.is_empty() {
            *join = self.join.clone();
        }
        if self.token_file.is_some() {
            *token_file = self.token_file.clone();
        }
    }
}

/// Runs a binary's body and turns its error into `BINARY: message` on stderr and exit status 1.
pub fn main_with(binary: &str, body: impl FnOnce() -> anyhow::Result<ExitCode>) -> ExitCode {
    match body() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{binary}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The steps every daemon takes once its config is loaded and flags applied: report every config problem,
/// answer `--print-config`, install logging. Returns false when the process should exit now.
pub fn start_daemon<T: Serialize>(
    binary: &str,
    config: &T,
    check: Result<(), Vec<String>>,
    print_config: bool,
    log_filter: &str,
) -> anyhow::Result<bool> {
    if let Err(problems) = check {
        for p in &problems {
            eprintln!("{binary}: config: {p}");
        }
        anyhow::bail!("the config has {} problem(s)", problems.len());
    }
    if print_config {
        print!("{}", render_config(config)?);
        return Ok(false);
    }
    init_tracing(log_filter)?;
    tracing::info!(software = %software(binary), "config loaded");
    Ok(true)
}

/// The dotted keys of `config` (as serialized) that a documented example file does not mention.
/// Config tests use it to keep every field documented in `ops/config/*.toml`.
pub fn undocumented_keys<T: Serialize>(config: &T, example: &str) -> anyhow::Result<Vec<String>> {
    let value = toml::Value::try_from(config).context("cannot serialize config")?;
    let mut keys = Vec::new();
    collect_keys(&value, "", &mut keys);
    Ok(keys
        .into_iter()
        .filter(|key| {
            let last = key.rsplit('.').next().unwrap_or(key);
            let documented = example.lines().any(|line| {
                let line = line.trim_start_matches(['#', ' ']);
                line.starts_with(&format!("{last} ="))
                    || line.starts_with(&format!("[{key}]"))
                    || line.starts_with(&format!("[[{key}]]"))
            });
            !documented
        })
        .collect())
}

fn collect_keys(value: &toml::Value, prefix: &str, keys: &mut Vec<String>) {
    if let toml::Value::Table(table) = value {
        for (k, v) in table {
            let key = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            collect_keys(v, &key, keys);
            keys.push(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, Serialize, serde::Deserialize, PartialEq)]
    #[serde(deny_unknown_fields, default)]
    struct Demo {
        name: String,
        port: u16,
        inner: Inner,
    }

    #[derive(Debug, Default, Serialize, serde::Deserialize, PartialEq)]
    #[serde(deny_unknown_fields, default)]
    struct Inner {
        depth: u32,
    }

    #[test]
    fn missing_file_names_the_path() {
        let err = load_config::<Demo>(Some(Path::new("/nonexistent/x.toml"))).unwrap_err();
        assert!(
            format!("{err:#}").contains("/nonexistent/x.toml"),
            "{err:#}"
        );
    }

    #[test]
    fn errors_name_line_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "name = \"a\"\nprot = 3\n").unwrap();
        let err = format!("{:#}", load_config::<Demo>(Some(&path)).unwrap_err());
        assert!(
            err.contains("c.toml") && err.contains("line 2") && err.contains("prot"),
            "{err}"
        );
        std::fs::write(&path, "port = \"x\"\n").unwrap();
        let err = format!("{:#}", load_config::<Demo>(Some(&path)).unwrap_err());
        assert!(err.contains("line 1") && err.contains("port"), "{err}");
    }

    #[test]
    fn defaults_without_a_file() {
        assert_eq!(load_config::<Demo>(None).unwrap(), Demo::default());
    }

    #[test]
    fn finds_undocumented_keys() {
        let example = "# name = \"x\"\n[inner]\ndepth = 2\n";
        assert_eq!(
            undocumented_keys(&Demo::default(), example).unwrap(),
            ["port"]
        );
    }
}
