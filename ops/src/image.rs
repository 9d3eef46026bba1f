//! `spacedock image import FILE [--name N]` and `spacedock image list`: loading a docker-archive (`docker save`)
//! or an OCI image layout tar into the cluster's blob store. Layers are stored uncompressed (gzip layers are
//! unpacked on the way), so each layer's digest is its diff id; blobs the cluster already has are skipped, so
//! an interrupted import resumes where it stopped.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use anyhow::{Context, anyhow, bail};
use serde_json::{Value, json};
use sha2::Digest as _;
use spacedock_shared::image::parse_config;

use crate::client::Client;

/// Where each regular file of the archive lies: offset and size.
struct Archive {
    path: std::path::PathBuf,
    entries: HashMap<String, (u64, u64)>,
}

impl Archive {
    fn open(path: &Path) -> anyhow::Result<Archive> {
        let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let mut archive = tar::Archive::new(file);
        let mut entries = HashMap::new();
        for entry in archive
            .entries()
            .with_context(|| format!("{} is not a tar archive", path.display()))?
        {
            let entry = entry.with_context(|| format!("reading {}", path.display()))?;
            if entry.header().entry_type().is_file() {
                let name = entry
                    .path()?
                    .to_string_lossy()
                    .trim_start_matches("./")
                    .to_owned();
                entries.insert(name, (entry.raw_file_position(), entry.size()));
            }
        }
        Ok(Archive {
            path: path.to_owned(),
            entries,
        })
    }

    fn reader(&self, name: &str) -> anyhow::Result<std::io::Take<File>> {
        let (offset, size) = *self
            .entries
            .get(name)
            .ok_or_else(|| anyhow!("{} has no `{name}`", self.path.display()))?;
        let mut file = File::open(&self.path)?;
        file.seek(SeekFrom::Start(offset))?;
        Ok(file.take(size))
    }

    fn read(&self, name: &str) -> anyhow::Result<Vec<u8>> {
        let mut bytes = Vec::new();
        self.reader(name)?.read_to_end(&mut bytes)?;
        Ok(bytes)
    }

    fn json(&self, name: &str) -> anyhow::Result<Value> {
        serde_json::from_slice(&self.read(name)?)
            .with_context(|| format!("{}: `{name}` is not valid JSON", self.path.display()))
    }

    /// A layer's uncompressed bytes (gzip is detected by its magic number).
    fn layer(&self, name: &str) -> anyhow::Result<Box<dyn Read>> {
        let mut head = [0u8; 2];
        let n = self.reader(name)?.read(&mut head)?;
        let reader = self.reader(name)?;
        Ok(if n == 2 && head == [0x1f, 0x8b] {
            Box::new(flate2::read::GzDecoder::new(reader))
        } else {
            Box::new(reader)
        })
    }
}

/// The image's name (if the archive says), config entry and layer entries, bottom first.
fn locate(archive: &Archive) -> anyhow::Result<(Option<String>, String, Vec<String>)> {
    let blob = |digest: &str| -> anyhow::Result<String> {
        let hex = digest
            .strip_prefix("sha256:")
            .ok_or_else(|| anyhow!("unsupported digest `{digest}`"))?;
        Ok(format!("blobs/sha256/{hex}"))
    };
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    if archive.entries.contains_key("manifest.json") {
        let manifest = archive.json("manifest.json")?;
        let first = manifest
            .get(0)
            .ok_or_else(|| anyhow!("manifest.json lists no image"))?;
        let config = first["Config"]
            .as_str()
            .ok_or_else(|| anyhow!("manifest.json: the image has no `Config`"))?;
        let name = strings(&first["RepoTags"]).into_iter().next();
        return Ok((name, config.to_owned(), strings(&first["Layers"])));
    }
    if archive.entries.contains_key("index.json") {
        let index = archive.json("index.json")?;
        let descriptor = index["manifests"]
            .get(0)
            .ok_or_else(|| anyhow!("index.json lists no manifest"))?;
        let name = descriptor["annotations"]["org.opencontainers.image.ref.name"]
            .as_str()
            .filter(|n| n.contains(':') || n.contains('/'))
            .map(str::to_owned);
        let digest = descriptor["digest"]
            .as_str()
            .ok_or_else(|| anyhow!("index.json: the manifest has no digest"))?;
        let manifest = archive.json(&blob(digest)?)?;
        if manifest.get("manifests").is_some() {
            bail!(
                "the archive holds an image index (several platforms); export one platform's image"
            );
        }
        let config = manifest["config"]["digest"]
            .as_str()
            .ok_or_else(|| anyhow!("the manifest has no config digest"))?;
        let layers = manifest["layers"]
            .as_array()
            .ok_or_else(|| anyhow!("the manifest has no layers"))?
            .iter()
            .map(|l| blob(l["digest"].as_str().unwrap_or_default()))
            .collect::<anyhow::Result<Vec<_>>>()?;
        return Ok((name, blob(config)?, layers));
    }
    bail!(
        "{} is neither a docker archive (manifest.json) nor an OCI image layout (index.json)",
        archive.path.display()
    )
}

fn sha256_of(mut reader: impl Read) -> anyhow::Result<(String, u64)> {
    let mut hasher = sha2::Sha256::new();
    let size = std::io::copy(&mut reader, &mut hasher)?;
    Ok((format!("sha256:{}", hex::encode(hasher.finalize())), size))
}

/// Imports the image; prints each blob as it goes and the image at the end.
pub fn import(client: &Client, file: &Path, name: Option<String>) -> anyhow::Result<()> {
    let archive = Archive::open(file)?;
    let (archive_name, config_entry, layer_entries) = locate(&archive)?;
    let name = name.or(archive_name).ok_or_else(|| {
        anyhow!(
            "{} does not name its image; give one with --name",
            file.display()
        )
    })?;
    let config = archive.read(&config_entry)?;
    let (_, diff_ids) = parse_config(&config).map_err(|e| anyhow!("{}: {e}", file.display()))?;
    if diff_ids.len() != layer_entries.len() {
        bail!(
            "{}: the config lists {} layers, the manifest {}",
            file.display(),
            diff_ids.len(),
            layer_entries.len()
        );
    }
    let config_digest = format!("sha256:{}", hex::encode(sha2::Sha256::digest(&config)));
    let mut layers = Vec::new();
    for (i, entry) in layer_entries.iter().enumerate() {
        let (digest, size) = sha256_of(archive.layer(entry)?)?;
        if digest != diff_ids[i] {
            bail!(
                "{}: layer {} (`{entry}`) unpacks to {digest}, but the config's diff_ids[{i}] is {}",
                file.display(),
                i + 1,
                diff_ids[i]
            );
        }
        let what = format!(
            "layer {}/{} {digest} ({size} bytes)",
            i + 1,
            layer_entries.len()
        );
        upload(client, &digest, size, || archive.layer(entry), &what)?;
        layers.push(json!({ "digest": digest, "size": size }));
    }
    let size = config.len() as u64;
    upload(
        client,
        &config_digest,
        size,
        || Ok(Box::new(std::io::Cursor::new(config.clone()))),
        "config",
    )?;
    let image = client.post(
        "/api/images",
        &json!({ "name": name, "config": config_digest, "layers": layers }),
    )?;
    println!(
        "imported {}@{} (config {}, {} bytes in {} layers)",
        image["name"].as_str().unwrap_or_default(),
        image["manifest"].as_str().unwrap_or_default(),
        image["id"].as_str().unwrap_or_default(),
        image["size"],
        layers.len()
    );
    Ok(())
}

fn upload(
    client: &Client,
    digest: &str,
    size: u64,
    open: impl Fn() -> anyhow::Result<Box<dyn Read>>,
    what: &str,
) -> anyhow::Result<()> {
    if client.has_blob(digest)? {
        println!("{what}: already in the cluster");
        return Ok(());
    }
    client.put_blob(digest, size, open()?)?;
    println!("{what}: uploaded");
    Ok(())
}

/// `spacedock image list`.
pub fn list(client: &Client, json_out: bool) -> anyhow::Result<()> {
    let images = client.get("/api/images")?;
    if json_out {
        println!("{}", serde_json::to_string_pretty(&images)?);
        return Ok(());
    }
    println!(
        "{:<40} {:<20} {:<20} {:>12} {:>6}",
        "NAME", "DIGEST", "ID", "SIZE", "LAYERS"
    );
    let short = |v: &Value| {
        let s = v.as_str().unwrap_or_default();
        s.get(..19).unwrap_or(s).to_owned()
    };
    for image in images.as_array().into_iter().flatten() {
        println!(
            "{:<40} {:<20} {:<20} {:>12} {:>6}",
            image["name"].as_str().unwrap_or_default(),
            short(&image["manifest"]),
            short(&image["id"]),
            image["size"],
            image["layers"].as_array().map_or(0, Vec::len)
        );
    }
    Ok(())
}
