//! Base images from OCI registries (the distribution API v2), for a `FROM` that names a registry:
//! `HOST[:PORT]/REPO[:TAG|@DIGEST]` (the first part has a `.` or `:` or is `localhost`; plain names like
//! `python:3.11` are looked up in the cluster's own image store only). The manifest is fetched (an index picks
//! linux/amd64), then the config and each layer by digest, every blob checked against its digest; gzip and zstd
//! layers are unpacked and the result must hash to the config's diff id, so the cluster stores them
//! uncompressed like every other layer. Layers stream through files into the builder's cache, never whole in
//! memory. Anonymous, with a bearer token from the registry's token service, or with the username
//! and password the builder's config gives for that host (the password read from a file, never logged).

use std::io::Read as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

/// Credentials and transport for one registry host, from the builder's config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    /// `HOST[:PORT]` as written in `FROM`.
    pub host: String,
    pub username: Option<String>,
    /// File holding the password or token.
    pub password_file: Option<PathBuf>,
    /// Plain HTTP instead of HTTPS (a registry on a private network).
    #[serde(default)]
    pub insecure: bool,
}

/// A registry reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    pub host: String,
    pub repository: String,
    /// A tag or a `sha256:` digest.
    pub reference: String,
}

/// `HOST[:PORT]/REPO[:TAG|@DIGEST]`, or `None` when the name has no registry host.
pub fn parse_reference(name: &str) -> Option<Reference> {
    let (host, rest) = name.split_once('/')?;
    if !(host.contains('.') || host.contains(':') || host == "localhost") {
        return None;
    }
    let (repository, reference) = match rest.split_once('@') {
        Some((repo, digest)) => (repo, digest.to_owned()),
        None => match rest.rsplit_once(':') {
            Some((repo, tag)) if !tag.contains('/') => (repo, tag.to_owned()),
            _ => (rest, "latest".to_owned()),
        },
    };
    if repository.is_empty() || reference.is_empty() {
        return None;
    }
    Some(Reference {
        host: host.to_owned(),
        repository: repository.to_owned(),
        reference,
    })
}

/// The pulled image: its config's bytes and digest, and its layers, uncompressed, in the builder's cache.
#[derive(Debug)]
pub struct Pulled {
    pub config: Vec<u8>,
    pub config_digest: String,
    pub layers: Vec<crate::layer::Layer>,
}

const MANIFEST_TYPES: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

/// Pulls images from one registry.
#[derive(Debug)]
pub struct Client {
    base: String,
    reference: Reference,
    basic: Option<(String, String)>,
    token: Option<String>,
    agent: ureq::Agent,
}

impl Client {
    pub fn new(reference: Reference, configs: &[RegistryConfig]) -> anyhow::Result<Client> {
        let config = configs.iter().find(|c| c.host == reference.host);
        let local = reference.host.starts_with("localhost") || reference.host.starts_with("127.");
        let scheme = if config.is_some_and(|c| c.insecure) || local {
            "http"
        } else {
            "https"
        };
        let basic = match config {
            Some(RegistryConfig {
                username: Some(user),
                password_file: Some(file),
                ..
            }) => {
                let password = std::fs::read_to_string(file).with_context(|| {
                    format!("registries: reading the password file {}", file.display())
                })?;
                Some((user.clone(), password.trim().to_owned()))
            }
            _ => None,
        };
        Ok(Client {
            base: format!("{scheme}://{}", reference.host),
            reference,
            basic,
            token: None,
            agent: ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(Duration::from_secs(600)))
                .build()
                .into(),
        })
    }

    fn get(&mut self, path: &str, accept: &str) -> anyhow::Result<(String, Vec<u8>)> {
        let mut bytes = Vec::new();
        let content_type = self.get_to(path, accept, &mut bytes)?;
        Ok((content_type, bytes))
    }

    /// `GET /v2/REPO/PATH` with the credentials it needs, the body written to `out`; returns its content type.
    fn get_to(
        &mut self,
        path: &str,
        accept: &str,
        out: &mut dyn std::io::Write,
    ) -> anyhow::Result<String> {
        let url = format!("{}/v2/{}/{path}", self.base, self.reference.repository);
        for _ in 0..2 {
            let mut request = self.agent.get(&url).header("Accept", accept);
            if let Some(token) = &self.token {
                request = request.header("Authorization", &format!("Bearer {token}"));
            } else if let Some((user, password)) = &self.basic {
                request = request.header("Authorization", &basic(user, password));
            }
            let mut response = request.call().map_err(|e| anyhow!("GET {url}: {e}"))?;
            let status = response.status().as_u16();
            if status == 401 && self.token.is_none() {
                let challenge = header(&response, "www-authenticate");
                self.token = Some(self.bearer_token(&challenge)?);
                continue;
            }
            if status >= 400 {
                bail!("GET {url}: HTTP {status}");
            }
            let content_type = header(&response, "content-type");
            std::io::copy(&mut response.body_mut().as_reader(), out)
                .with_context(|| format!("reading {url}"))?;
            return Ok(content_type);
        }
        bail!("GET {url}: the registry refused the credentials")
    }

    /// A token from the registry's token service (`Bearer realm=...,service=...,scope=...`).
    fn bearer_token(&self, challenge: &str) -> anyhow::Result<String> {
        let Some(params) = challenge.strip_prefix("Bearer ") else {
            bail!(
                "{} wants `{challenge}`; configure a username and password_file for it under `registries`",
                self.reference.host
            );
        };
        let field = |name: &str| {
            params.split(',').find_map(|p| {
                let (k, v) = p.trim().split_once('=')?;
                (k == name).then(|| v.trim_matches('"').to_owned())
            })
        };
        let realm = field("realm").ok_or_else(|| anyhow!("no realm in `{challenge}`"))?;
        let mut url = format!("{realm}?");
        for name in ["service", "scope"] {
            if let Some(v) = field(name) {
                url.push_str(&format!("{name}={}&", percent(&v)));
            }
        }
        let mut request = self.agent.get(&url);
        if let Some((user, password)) = &self.basic {
            request = request.header("Authorization", &basic(user, password));
        }
        let mut response = request.call().map_err(|e| anyhow!("GET {realm}: {e}"))?;
        if response.status().as_u16() >= 400 {
            bail!(
                "the token service {realm} answered HTTP {}",
                response.status().as_u16()
            );
        }
        let body: serde_json::Value = serde_json::from_reader(response.body_mut().as_reader())?;
        body["token"]
            .as_str()
            .or_else(|| body["access_token"].as_str())
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("the token service {realm} gave no token"))
    }

    /// Blob `digest` into the file `into`, checked against its digest.
    fn blob_to(&mut self, digest: &str, into: &std::path::Path) -> anyhow::Result<()> {
        let file =
            std::fs::File::create(into).with_context(|| format!("creating {}", into.display()))?;
        let mut out = crate::layer::Hashing::new(std::io::BufWriter::new(file));
        self.get_to(&format!("blobs/{digest}"), "*/*", &mut out)?;
        std::io::Write::flush(&mut out)?;
        self.check(digest, &out.finish().digest)
    }

    /// A small blob (a config) in memory, checked against its digest.
    fn blob(&mut self, digest: &str) -> anyhow::Result<Vec<u8>> {
        let (_, bytes) = self.get(&format!("blobs/{digest}"), "*/*")?;
        self.check(digest, &sha256(&bytes))?;
        Ok(bytes)
    }

    fn check(&self, digest: &str, got: &str) -> anyhow::Result<()> {
        if got != digest {
            bail!(
                "blob {digest} from {} hashes to {got}; refused",
                self.reference.host
            );
        }
        Ok(())
    }

    /// Pulls the image: manifest (an index picks linux/amd64), config, layers unpacked and checked into
    /// `cache`; compressed blobs pass through `work`, a folder of the caller's.
    pub fn pull(
        &mut self,
        cache: &crate::cache::Cache,
        work: &std::path::Path,
    ) -> anyhow::Result<Pulled> {
        let reference = self.reference.reference.clone();
        let (content_type, bytes) = self.get(&format!("manifests/{reference}"), MANIFEST_TYPES)?;
        let mut manifest: serde_json::Value =
            serde_json::from_slice(&bytes).context("the manifest is not JSON")?;
        if content_type.contains("index")
            || content_type.contains("list")
            || manifest["manifests"].is_array()
        {
            let chosen = manifest["manifests"]
                .as_array()
                .and_then(|m| {
                    m.iter().find(|d| {
                        d["platform"]["os"] == "linux" && d["platform"]["architecture"] == "amd64"
                    })
                })
                .and_then(|d| d["digest"].as_str())
                .ok_or_else(|| anyhow!("{reference} has no linux/amd64 image"))?
                .to_owned();
            let (_, bytes) = self.get(&format!("manifests/{chosen}"), MANIFEST_TYPES)?;
            if sha256(&bytes) != chosen {
                bail!("the manifest {chosen} does not match its digest; refused");
            }
            manifest = serde_json::from_slice(&bytes).context("the manifest is not JSON")?;
        }
        let config_digest = manifest["config"]["digest"]
            .as_str()
            .ok_or_else(|| anyhow!("the manifest names no config"))?
            .to_owned();
        let config = self.blob(&config_digest)?;
        // A base needs no command of its own: only its layers are read here.
        let value: serde_json::Value =
            serde_json::from_slice(&config).context("the image config is not JSON")?;
        let diff_ids: Vec<String> = value["rootfs"]["diff_ids"]
            .as_array()
            .ok_or_else(|| anyhow!("the image config has no rootfs.diff_ids"))?
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect();
        let descriptors = manifest["layers"]
            .as_array()
            .ok_or_else(|| anyhow!("the manifest has no layers"))?
            .clone();
        if descriptors.len() != diff_ids.len() {
            bail!(
                "the manifest has {} layers, the config {} diff ids",
                descriptors.len(),
                diff_ids.len()
            );
        }
        let mut layers = Vec::new();
        for (descriptor, diff_id) in descriptors.iter().zip(diff_ids) {
            let digest = descriptor["digest"].as_str().unwrap_or_default().to_owned();
            let media_type = descriptor["mediaType"].as_str().unwrap_or_default();
            let blob = work.join("layer");
            self.blob_to(&digest, &blob)?;
            let mut magic = [0u8; 4];
            let _ = std::fs::File::open(&blob)?.read(&mut magic)?;
            let file = std::io::BufReader::new(std::fs::File::open(&blob)?);
            let unpacked = if media_type.ends_with("gzip") || magic.starts_with(&[0x1f, 0x8b]) {
                cache.put_reader(flate2::read::GzDecoder::new(file))
            } else if media_type.ends_with("zstd") || magic == [0x28, 0xb5, 0x2f, 0xfd] {
                let decoder =
                    ruzstd::decoding::StreamingDecoder::new(file).map_err(|e| anyhow!("{e}"))?;
                cache.put_reader(decoder)
            } else {
                cache.put_reader(file)
            };
            let _ = std::fs::remove_file(&blob);
            let layer = unpacked.with_context(|| format!("unpacking layer {digest}"))?;
            if layer.digest != diff_id {
                bail!(
                    "layer {digest} unpacks to {}, but the config says {diff_id}; refused",
                    layer.digest
                );
            }
            layers.push(layer);
        }
        Ok(Pulled {
            config,
            config_digest,
            layers,
        })
    }
}

/// A response header's value as text ("" when it is missing or not text).
pub(crate) fn header<B>(response: &ureq::http::Response<B>, name: &str) -> String {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

fn basic(user: &str, password: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

fn percent(value: &str) -> String {
    percent_encoding::utf8_percent_encode(value, percent_encoding::NON_ALPHANUMERIC).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_names_with_a_registry_host_are_registry_references() {
        let r = parse_reference("127.0.0.1:5000/library/busybox:1.36").unwrap();
        assert_eq!(
            (r.host.as_str(), r.repository.as_str(), r.reference.as_str()),
            ("127.0.0.1:5000", "library/busybox", "1.36")
        );
        let r = parse_reference("ghcr.io/acme/base").unwrap();
        assert_eq!(r.reference, "latest");
        let d = format!("sha256:{}", "a".repeat(64));
        let r = parse_reference(&format!("localhost/x@{d}")).unwrap();
        assert_eq!(r.reference, d);
        assert_eq!(parse_reference("python:3.11"), None);
        assert_eq!(parse_reference("spacedock/python:3.11"), None);
        assert_eq!(parse_reference("busybox"), None);
    }

    #[test]
    fn token_service_values_are_escaped() {
        assert_eq!(
            percent("repository:library/busybox:pull"),
            "repository%3Alibrary%2Fbusybox%3Apull"
        );
    }
}
