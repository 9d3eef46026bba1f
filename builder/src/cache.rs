//! The builder's cache on disk: blobs (layers, configs, base layers) under `cache/blobs/HEX`, written by
//! rename so a file there is always whole, and build steps under `cache/steps/KEY` (the blake3 cache key)
//! naming the layer the step made. Using a blob touches it; past the size budget the least recently used blobs
//! are removed, and a step whose layer is gone is a miss.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{Context, anyhow};

use crate::layer::Layer;

/// Cheap to clone: paths and a number (a clone goes to blocking threads).
#[derive(Debug, Clone)]
pub struct Cache {
    blobs: PathBuf,
    steps: PathBuf,
    budget_bytes: u64,
}

fn hex_of(digest: &str) -> anyhow::Result<&str> {
    digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| anyhow!("`{digest}` is not a sha256 digest"))
}

impl Cache {
    pub fn open(data_dir: &Path, budget_bytes: u64) -> anyhow::Result<Cache> {
        let blobs = data_dir.join("cache/blobs");
        let steps = data_dir.join("cache/steps");
        for dir in [&blobs, &steps] {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        // What a builder stopped in the middle of a write left behind.
        for entry in std::fs::read_dir(&blobs)?.flatten() {
            if entry.file_name().to_string_lossy().starts_with(".tmp-") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(Cache {
            blobs,
            steps,
            budget_bytes,
        })
    }

    /// Where blob `digest` is (or goes).
    pub fn path(&self, digest: &str) -> anyhow::Result<PathBuf> {
        Ok(self.blobs.join(hex_of(digest)?))
    }

    /// Whether the blob is here with `size` bytes; touches it.
    pub fn has(&self, digest: &str, size: u64) -> bool {
        let Ok(path) = self.path(digest) else {
            return false;
        };
        let here = std::fs::metadata(&path).is_ok_and(|m| m.len() == size);
        if here {
            touch(&path);
        }
        here
    }

    /// Stores bytes as a blob; returns its digest.
    pub fn put(&self, bytes: &[u8]) -> anyhow::Result<String> {
        let digest = spacedock_shared::image::sha256_digest(bytes);
        let path = self.path(&digest)?;
        if std::fs::metadata(&path).is_ok_and(|m| m.len() == bytes.len() as u64) {
            touch(&path);
            return Ok(digest);
        }
        Ok(self.put_reader(bytes)?.digest)
    }

    /// Writes `entries` as a layer (`layer::write`) straight into the cache, through a file: host files in the
    /// entries stream from disk, so no layer needs to fit in memory.
    pub fn write_layer(&self, entries: Vec<crate::layer::Entry>) -> anyhow::Result<Layer> {
        self.through_file(|out| Ok(crate::layer::write(entries, out)?))
    }

    /// Stores what `reader` gives (an unpacked registry layer) as a blob, streamed through a file.
    pub fn put_reader(&self, mut reader: impl std::io::Read) -> anyhow::Result<Layer> {
        self.through_file(|out| {
            let mut hashing = crate::layer::Hashing::new(out);
            std::io::copy(&mut reader, &mut hashing)?;
            Ok(hashing.finish())
        })
    }

    /// Runs `write` on a new file in the cache, then files it under the digest `write` reports.
    fn through_file(
        &self,
        write: impl FnOnce(&mut std::io::BufWriter<std::fs::File>) -> anyhow::Result<Layer>,
    ) -> anyhow::Result<Layer> {
        let tmp = self.blobs.join(format!(".tmp-layer-{}", rand_suffix()));
        let written = (|| {
            let file = std::fs::File::create(&tmp)
                .with_context(|| format!("creating {}", tmp.display()))?;
            let mut out = std::io::BufWriter::new(file);
            let layer = write(&mut out)?;
            out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
            std::fs::rename(&tmp, self.path(&layer.digest)?)?;
            anyhow::Ok(layer)
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written
    }

    /// Moves a file that holds blob `digest` (checked by its producer) into the cache.
    pub fn adopt(&self, file: &Path, digest: &str) -> anyhow::Result<PathBuf> {
        let path = self.path(digest)?;
        std::fs::rename(file, &path)
            .with_context(|| format!("moving {} to {}", file.display(), path.display()))?;
        Ok(path)
    }

    /// The layer step `key` made, if its blob is still here.
    pub fn step(&self, key: &blake3::Hash) -> Option<Layer> {
        let record = std::fs::read_to_string(self.steps.join(key.to_hex().as_str())).ok()?;
        let (digest, size) = record.trim().split_once(' ')?;
        let layer = Layer {
            digest: digest.to_owned(),
            size: size.parse().ok()?,
        };
        self.has(&layer.digest, layer.size).then_some(layer)
    }

    /// Records that step `key` made `layer`.
    pub fn record_step(&self, key: &blake3::Hash, layer: &Layer) -> anyhow::Result<()> {
        let path = self.steps.join(key.to_hex().as_str());
        let tmp = self.steps.join(format!(".tmp-{}", rand_suffix()));
        std::fs::write(&tmp, format!("{} {}\n", layer.digest, layer.size))?;
        std::fs::rename(&tmp, &path)?;
        Ok(())
    }

    /// Removes the least recently used blobs until the cache fits its budget, sparing `keep` (the blobs of
    /// builds in progress). Returns the bytes freed.
    pub fn evict(&self, keep: &[String]) -> anyhow::Result<u64> {
        let mut blobs: Vec<(SystemTime, u64, PathBuf)> = Vec::new();
        for entry in std::fs::read_dir(&self.blobs)? {
            let entry = entry?;
            let meta = entry.metadata()?;
            if meta.is_file() {
                blobs.push((meta.modified()?, meta.len(), entry.path()));
            }
        }
        let mut total: u64 = blobs.iter().map(|b| b.1).sum();
        blobs.sort();
        let mut freed = 0;
        for (_, len, path) in blobs {
            if total <= self.budget_bytes {
                break;
            }
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if keep.iter().any(|k| k.ends_with(name)) {
                continue;
            }
            if std::fs::remove_file(&path).is_ok() {
                total -= len;
                freed += len;
            }
        }
        Ok(freed)
    }
}

fn touch(path: &Path) {
    if let Ok(file) = std::fs::File::options().append(true).open(path) {
        let _ = file.set_modified(SystemTime::now());
    }
}

fn rand_suffix() -> String {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{}-{nanos}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Makes a blob look used a minute ago.
    fn age(cache: &Cache, digest: &str) {
        let old = SystemTime::now() - std::time::Duration::from_secs(60);
        std::fs::File::options()
            .append(true)
            .open(cache.path(digest).unwrap())
            .unwrap()
            .set_modified(old)
            .unwrap();
    }

    #[test]
    fn steps_hit_while_their_layer_is_kept_and_eviction_drops_the_oldest() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path(), 10).unwrap();
        let a = cache.put(b"first layer").unwrap();
        let key = blake3::hash(b"step");
        let layer = Layer {
            digest: a.clone(),
            size: 11,
        };
        assert_eq!(cache.step(&key), None);
        cache.record_step(&key, &layer).unwrap();
        assert_eq!(cache.step(&key), Some(layer.clone()));
        age(&cache, &a);
        let b = cache.put(b"second").unwrap();
        // 17 bytes over a budget of 10: the older blob goes, then the step misses.
        assert_eq!(cache.evict(&[]).unwrap(), 11);
        assert_eq!(cache.step(&key), None);
        assert!(cache.has(&b, 6));
        // A blob in use is spared even when it is the oldest.
        let c = cache.put(b"third blob").unwrap();
        age(&cache, &c);
        assert_eq!(cache.evict(std::slice::from_ref(&c)).unwrap(), 6);
        assert!(cache.has(&c, 10));
    }
}
