//! A node's identity in its data dir (`identity/`: the certificate chain, its key and the cluster CA, 0600 files
//! in a 0700 folder): loaded when an earlier start joined, else obtained by joining with a token. Agents and
//! builders share this.

use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow};
use spacedock_shared::wire::{JoinRequest, Role};

use crate::join;
use crate::tls::Identity;

fn dir(data_dir: &Path) -> PathBuf {
    data_dir.join("identity")
}

/// The node's certificate, from an earlier join.
pub fn load(data_dir: &Path) -> anyhow::Result<Option<Identity>> {
    let dir = dir(data_dir);
    if !dir.join("node.pem").exists() {
        return Ok(None);
    }
    let read = |name: &str| {
        std::fs::read_to_string(dir.join(name))
            .with_context(|| format!("reading {}", dir.join(name).display()))
    };
    Ok(Some(Identity {
        chain_pem: read("node.pem")?,
        key_pem: read("node.key")?,
        ca_pem: read("ca.pem")?,
    }))
}

fn save(data_dir: &Path, identity: &Identity) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let dir = dir(data_dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
    // The chain goes last: its presence is what `load` looks for.
    for (name, contents) in [
        ("ca.pem", &identity.ca_pem),
        ("node.key", &identity.key_pem),
        ("node.pem", &identity.chain_pem),
    ] {
        let tmp = dir.join(format!("{name}.tmp"));
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(contents.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&tmp, dir.join(name))?;
    }
    Ok(())
}

/// The join token: `token` as given, else the contents of `token_file`.
fn token(token: Option<&str>, token_file: Option<&Path>) -> anyhow::Result<Option<String>> {
    match (token, token_file) {
        (Some(token), _) => Ok(Some(token.to_owned())),
        (None, Some(file)) => Ok(Some(
            std::fs::read_to_string(file)
                .with_context(|| format!("reading the join token file {}", file.display()))?
                .trim()
                .to_owned(),
        )),
        (None, None) => Ok(None),
    }
}

/// The identity from an earlier join, or a new one: joins the cluster at `addrs` as `role` named `name` with
/// the token (`token`, else read from `token_file`) and keeps the certificate in the data dir.
pub async fn load_or_join(
    data_dir: &Path,
    addrs: &[String],
    role: Role,
    name: &str,
    (token_flag, token_file): (Option<&str>, Option<&Path>),
) -> anyhow::Result<Identity> {
    if addrs.is_empty() {
        anyhow::bail!(
            "no coordinator to join: set `join` in the config or pass --join ADDR[,ADDR...]"
        );
    }
    if let Some(identity) = load(data_dir)? {
        return Ok(identity);
    }
    let token = token(token_flag, token_file)?
        .ok_or_else(|| anyhow!("the first start needs a join token (--token or token_file)"))?;
    let client = crate::tls::client_endpoint().context("QUIC client endpoint")?;
    let request = JoinRequest {
        token: token.clone(),
        role,
        node_id: 0,
        name: name.to_owned(),
        api_url: String::new(),
        quic_addr: String::new(),
    };
    let pending = join::request(&client, addrs, &token, request).await?;
    let reply = &pending.reply;
    let identity = Identity {
        chain_pem: reply.chain_pem.clone(),
        key_pem: reply.key_pem.clone(),
        ca_pem: reply.ca_pem.clone(),
    };
    save(data_dir, &identity)?;
    println!("joined cluster {} as {role:?} {name}", reply.cluster_id);
    Ok(identity)
}
