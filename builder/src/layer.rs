//! Reproducible image layers and the builder's cache keys. The only IO is reading the host files that
//! `Kind::HostFile` entries name (a RUN step's output, downloaded models) while a layer is written.
//!
//! A layer is an uncompressed tar whose bytes depend only on its entries: sorted by path, every parent folder
//! present, timestamps 0, owners as numbers (no user or group names), modes kept to permission bits. Its OCI
//! digest (sha256) and size come from the bytes as they are written. A build step's cache key is blake3 over
//! its parent's key, the step's definition and the content hashes of its inputs, each length-prefixed so that
//! no two different steps can produce the same input to the hash.

use std::collections::BTreeMap;
use std::io::Write;

use sha2::Digest as _;

/// What an entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    File(Vec<u8>),
    /// A file whose content stays on the host until the layer is written (a RUN step's output, a preloaded
    /// model file), so that layers far larger than memory stream through.
    HostFile(std::path::PathBuf),
    Dir,
    Symlink(String),
}

/// One entry of a layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Relative to the image root, `/`-separated, no leading `/`.
    pub path: String,
    pub kind: Kind,
    /// Permission bits (`0o644`); anything above `0o7777` is dropped.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// A written layer: its OCI digest (`sha256:...`, which is also its diff id, being uncompressed) and size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    pub digest: String,
    pub size: u64,
}

/// Counts and hashes what passes through; `finish` names the bytes as a layer.
pub(crate) struct Hashing<W> {
    inner: W,
    sha: sha2::Sha256,
    size: u64,
}

impl<W> Hashing<W> {
    pub(crate) fn new(inner: W) -> Hashing<W> {
        Hashing {
            inner,
            sha: sha2::Sha256::new(),
            size: 0,
        }
    }

    pub(crate) fn finish(self) -> Layer {
        Layer {
            digest: format!("sha256:{}", hex::encode(self.sha.finalize())),
            size: self.size,
        }
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.sha.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Writes `entries` as a reproducible layer to `out`. Paths must be relative and free of `..`; a path given twice
/// is an error (the caller decides which one wins).
pub fn write(entries: Vec<Entry>, out: impl Write) -> std::io::Result<Layer> {
    let invalid = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, m);
    let mut by_path: BTreeMap<String, Entry> = BTreeMap::new();
    for entry in entries {
        let path = entry.path.trim_end_matches('/').to_owned();
        if path.is_empty()
            || path.starts_with('/')
            || path
                .split('/')
                .any(|p| p.is_empty() || p == "." || p == "..")
        {
            return Err(invalid(format!(
                "layer path `{}` is not a clean relative path",
                entry.path
            )));
        }
        if by_path.contains_key(&path) {
            return Err(invalid(format!("layer path `{path}` is given twice")));
        }
        by_path.insert(path, entry);
    }
    // Every parent folder, owned by root unless the entries say otherwise.
    let parents: Vec<String> = by_path
        .keys()
        .flat_map(|p| {
            let parts: Vec<&str> = p.split('/').collect();
            (1..parts.len()).map(move |n| parts[..n].join("/"))
        })
        .collect();
    for parent in parents {
        by_path.entry(parent.clone()).or_insert(Entry {
            path: parent,
            kind: Kind::Dir,
            mode: 0o755,
            uid: 0,
            gid: 0,
        });
    }
    let mut builder = tar::Builder::new(Hashing::new(out));
    // Whether some entry lies under `path`: the paths starting with `path` are one sorted run after it
    // (siblings such as `a-b` and `a.txt` may come before `a/...`).
    let has_children = |path: &str| {
        by_path
            .range::<str, _>((std::ops::Bound::Excluded(path), std::ops::Bound::Unbounded))
            .take_while(|(p, _)| p.starts_with(path))
            .any(|(p, _)| p[path.len()..].starts_with('/'))
    };
    for (path, entry) in &by_path {
        if let Kind::File(_) | Kind::HostFile(_) | Kind::Symlink(_) = entry.kind
            && has_children(path)
        {
            return Err(invalid(format!(
                "layer path `{path}` is a file with entries under it"
            )));
        }
        let mut header = tar::Header::new_gnu();
        header.set_mode(entry.mode & 0o7777);
        header.set_uid(u64::from(entry.uid));
        header.set_gid(u64::from(entry.gid));
        header.set_mtime(0);
        match &entry.kind {
            Kind::File(bytes) => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_size(bytes.len() as u64);
                builder.append_data(&mut header, path, bytes.as_slice())?;
            }
            Kind::HostFile(host) => {
                let (file, size) = open_host_file(host)?;
                header.set_entry_type(tar::EntryType::Regular);
                header.set_size(size);
                builder.append_data(&mut header, path, Exactly { file, left: size })?;
            }
            Kind::Dir => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_size(0);
                builder.append_data(&mut header, format!("{path}/"), std::io::empty())?;
            }
            Kind::Symlink(target) => {
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_size(0);
                builder.append_link(&mut header, path, target)?;
            }
        }
    }
    Ok(builder.into_inner()?.finish())
}

fn open_host_file(host: &std::path::Path) -> std::io::Result<(std::fs::File, u64)> {
    let with_path =
        |e: std::io::Error| std::io::Error::new(e.kind(), format!("{}: {e}", host.display()));
    let file = std::fs::File::open(host).map_err(with_path)?;
    let size = file.metadata().map_err(with_path)?.len();
    Ok((file, size))
}

/// A host file's first `left` bytes, failing if it ends sooner (it shrank after its size was read into the
/// tar header, which would otherwise leave a corrupt layer).
struct Exactly {
    file: std::fs::File,
    left: u64,
}

impl std::io::Read for Exactly {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.file.read(&mut buf[..want])?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "a file changed while its layer was written",
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// Hashes a host file as `entries_hash` hashes the same bytes in memory. One that cannot be read makes the
/// hash unique (the error and the time go in), so that it matches no cache entry.
fn hash_host_file(h: &mut blake3::Hasher, host: &std::path::Path) {
    h.update(&[0]);
    let hashed = open_host_file(host).and_then(|(file, size)| {
        h.update(&size.to_le_bytes());
        h.update_reader(Exactly { file, left: size }).map(|_| ())
    });
    if let Err(e) = hashed {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        h.update(e.to_string().as_bytes());
        h.update(&now.to_le_bytes());
    }
}

/// How much one archive that ADD unpacks may hold: bytes unpacked, entries, and unpacked bytes per byte of the
/// archive (a tar bomb is refused, not unpacked).
pub const UNPACK_MAX_BYTES: u64 = 1 << 30;
pub const UNPACK_MAX_ENTRIES: usize = 100_000;
pub const UNPACK_MAX_RATIO: u64 = 200;

/// Whether ADD unpacks these bytes: a gzip stream or a plain tar (`ustar` at offset 257).
pub fn is_archive(bytes: &[u8]) -> bool {
    bytes.starts_with(&[0x1f, 0x8b]) || bytes.get(257..262) == Some(b"ustar")
}

/// The entries of a tar or tar.gz archive (no IO), under `into` (`a/b`, or empty for the root). Paths must stay
/// inside (no absolute paths, no `..`); hard links become copies of an earlier entry; devices and fifos are
/// refused; past `UNPACK_MAX_BYTES`, `UNPACK_MAX_ENTRIES` or `UNPACK_MAX_RATIO` the archive is refused as a
/// likely tar bomb. Errors say which entry and why.
pub fn unpack(bytes: &[u8], into: &str) -> Result<Vec<Entry>, String> {
    use std::io::Read as _;
    let reader: Box<dyn std::io::Read + '_> = if bytes.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::read::GzDecoder::new(bytes))
    } else {
        Box::new(bytes)
    };
    let limit = UNPACK_MAX_BYTES.min(
        (bytes.len() as u64)
            .saturating_mul(UNPACK_MAX_RATIO)
            .max(1 << 20),
    );
    let mut archive = tar::Archive::new(reader.take(limit + 1));
    let mut out: Vec<Entry> = Vec::new();
    let mut total = 0u64;
    let join = |path: &str| {
        if into.is_empty() {
            path.to_owned()
        } else {
            format!("{into}/{path}")
        }
    };
    let bomb = || {
        format!(
            "unpacks to more than {limit} bytes or {UNPACK_MAX_ENTRIES} entries (a tar bomb?); refused"
        )
    };
    for entry in archive
        .entries()
        .map_err(|e| format!("not a tar archive: {e}"))?
    {
        let mut entry = entry.map_err(|e| format!("a damaged entry: {e}"))?;
        let raw = entry
            .path()
            .map_err(|e| e.to_string())?
            .to_string_lossy()
            .into_owned();
        let path = raw
            .trim_start_matches("./")
            .trim_end_matches('/')
            .to_owned();
        if path.is_empty() || path == "." {
            continue;
        }
        if raw.starts_with('/') || path.split('/').any(|p| p == ".." || p.is_empty()) {
            return Err(format!(
                "`{raw}` would land outside the destination; refused"
            ));
        }
        if out.len() >= UNPACK_MAX_ENTRIES {
            return Err(bomb());
        }
        let header = entry.header();
        let mode = header.mode().map_err(|e| e.to_string())? & 0o7777;
        let (uid, gid) = (
            header.uid().unwrap_or(0) as u32,
            header.gid().unwrap_or(0) as u32,
        );
        let kind = match header.entry_type() {
            t if t.is_dir() => Kind::Dir,
            t if t.is_file() => {
                total += header.size().map_err(|e| e.to_string())?;
                if total > limit {
                    return Err(bomb());
                }
                let mut body = Vec::new();
                entry
                    .read_to_end(&mut body)
                    .map_err(|e| format!("`{raw}`: {e}"))?;
                Kind::File(body)
            }
            t if t.is_symlink() => Kind::Symlink(
                entry
                    .link_name()
                    .map_err(|e| e.to_string())?
                    .map(|l| l.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            ),
            t if t.is_hard_link() => {
                let target = entry
                    .link_name()
                    .map_err(|e| e.to_string())?
                    .map(|l| join(l.to_string_lossy().trim_start_matches("./")))
                    .unwrap_or_default();
                let found = out
                    .iter()
                    .rev()
                    .find(|e| e.path == target)
                    .map(|e| e.kind.clone());
                found.ok_or_else(|| {
                    format!("`{raw}` is a hard link to `{target}`, which comes nowhere before it")
                })?
            }
            t if t.is_pax_global_extensions() || t.is_pax_local_extensions() => continue,
            other => {
                return Err(format!(
                    "`{raw}` is a {other:?} entry; only files, folders and links are unpacked"
                ));
            }
        };
        let path = join(&path);
        out.retain(|e| e.path != path);
        out.push(Entry {
            path,
            kind,
            mode,
            uid,
            gid,
        });
    }
    Ok(out)
}

/// A build step's cache key: blake3 over the parent step's key, the step's definition and its inputs' content
/// hashes, each length-prefixed.
pub fn step_key(
    parent: Option<&blake3::Hash>,
    definition: &str,
    inputs: &[blake3::Hash],
) -> blake3::Hash {
    let mut h = blake3::Hasher::new_derive_key("spacedock build step v1");
    match parent {
        Some(p) => h.update(&[1]).update(p.as_bytes()),
        None => h.update(&[0]),
    };
    h.update(&(definition.len() as u64).to_le_bytes());
    h.update(definition.as_bytes());
    h.update(&(inputs.len() as u64).to_le_bytes());
    for input in inputs {
        h.update(input.as_bytes());
    }
    h.finalize()
}

/// The content hash of a set of entries (a build context or a step's inputs): blake3 over each entry's path,
/// kind, mode, owner and content, in path order.
pub fn entries_hash(entries: &[Entry]) -> blake3::Hash {
    let mut sorted: Vec<&Entry> = entries.iter().collect();
    sorted.sort_by(|a, b| a.path.cmp(&b.path));
    let mut h = blake3::Hasher::new_derive_key("spacedock entries v1");
    for e in sorted {
        h.update(&(e.path.len() as u64).to_le_bytes());
        h.update(e.path.as_bytes());
        h.update(&(e.mode & 0o7777).to_le_bytes());
        h.update(&e.uid.to_le_bytes());
        h.update(&e.gid.to_le_bytes());
        let (tag, body): (u8, &[u8]) = match &e.kind {
            Kind::File(bytes) => (0, bytes),
            Kind::HostFile(host) => {
                hash_host_file(&mut h, host);
                continue;
            }
            Kind::Dir => (1, &[]),
            Kind::Symlink(target) => (2, target.as_bytes()),
        };
        h.update(&[tag]);
        h.update(&(body.len() as u64).to_le_bytes());
        h.update(body);
    }
    h.finalize()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, body: &[u8]) -> Entry {
        Entry {
            path: path.into(),
            kind: Kind::File(body.to_vec()),
            mode: 0o100644,
            uid: 1000,
            gid: 1000,
        }
    }

    fn layer(entries: Vec<Entry>) -> (Layer, Vec<u8>) {
        let mut out = Vec::new();
        let layer = write(entries, &mut out).unwrap();
        (layer, out)
    }

    #[test]
    fn a_host_file_streams_into_the_same_layer_and_hash_as_its_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let host = dir.path().join("weights.bin");
        let body: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&host, &body).unwrap();
        let entry = |kind: Kind| Entry {
            path: "models/weights.bin".into(),
            kind,
            mode: 0o644,
            uid: 1000,
            gid: 1000,
        };
        let in_memory = vec![entry(Kind::File(body.clone()))];
        let on_disk = vec![entry(Kind::HostFile(host.clone()))];
        assert_eq!(layer(in_memory.clone()), layer(on_disk.clone()));
        assert_eq!(entries_hash(&in_memory), entries_hash(&on_disk));
        let gone = vec![entry(Kind::HostFile(dir.path().join("gone")))];
        let err = write(gone.clone(), Vec::new()).unwrap_err();
        assert!(err.to_string().contains("gone"), "{err}");
        assert_ne!(
            entries_hash(&gone),
            entries_hash(&gone),
            "an unreadable file matches nothing"
        );
    }

    #[test]
    fn the_same_entries_make_the_same_bytes_in_any_order() {
        let long = format!("home/user/app/{}/deep.txt", "d".repeat(120));
        let a = vec![
            file("home/user/app/app.py", b"print(1)"),
            file(&long, b"x"),
            Entry {
                path: "home/user/app/link".into(),
                kind: Kind::Symlink("app.py".into()),
                mode: 0o777,
                uid: 1000,
                gid: 1000,
            },
        ];
        let mut b = a.clone();
        b.reverse();
        let (la, bytes_a) = layer(a);
        let (lb, bytes_b) = layer(b);
        assert_eq!(la, lb);
        assert_eq!(bytes_a, bytes_b);
        assert_eq!(la.size, bytes_a.len() as u64);
        assert_eq!(
            la.digest,
            format!("sha256:{}", hex::encode(sha2::Sha256::digest(&bytes_a)))
        );

        let mut archive = tar::Archive::new(&bytes_a[..]);
        let mut seen = Vec::new();
        for entry in archive.entries().unwrap() {
            let entry = entry.unwrap();
            let h = entry.header();
            assert_eq!(h.mtime().unwrap(), 0);
            assert!(h.username().unwrap().unwrap_or_default().is_empty());
            seen.push((
                entry.path().unwrap().display().to_string(),
                h.mode().unwrap(),
                h.uid().unwrap(),
            ));
        }
        let paths: Vec<&str> = seen.iter().map(|(p, _, _)| p.as_str()).collect();
        assert_eq!(
            &paths[..4],
            [
                "home/",
                "home/user/",
                "home/user/app/",
                "home/user/app/app.py"
            ]
        );
        assert!(paths.contains(&long.as_str()));
        assert_eq!(seen[0].1, 0o755);
        assert_eq!(seen[3].1, 0o644, "file type bits are dropped from the mode");
    }

    #[test]
    fn any_change_changes_the_digest() {
        let (base, _) = layer(vec![file("a.txt", b"one")]);
        let (content, _) = layer(vec![file("a.txt", b"two")]);
        let (owner, _) = layer(vec![Entry {
            uid: 0,
            ..file("a.txt", b"one")
        }]);
        let (name, _) = layer(vec![file("b.txt", b"one")]);
        for other in [content, owner, name] {
            assert_ne!(base.digest, other.digest);
        }
    }

    #[test]
    fn unclean_paths_are_refused() {
        for bad in ["/etc/passwd", "a/../b", "", "./a", "a//b"] {
            assert!(write(vec![file(bad, b"x")], Vec::new()).is_err(), "{bad:?}");
        }
        assert!(write(vec![file("a", b"x"), file("a", b"y")], Vec::new()).is_err());
        assert!(write(vec![file("a", b"x"), file("a/b", b"y")], Vec::new()).is_err());
    }

    #[test]
    fn cache_keys_depend_on_parent_definition_and_inputs() {
        let input = entries_hash(&[file("requirements.txt", b"gradio==5")]);
        let root = step_key(None, "FROM python:3.11", &[]);
        let k = step_key(Some(&root), "RUN pip install -r requirements.txt", &[input]);
        assert_eq!(
            k,
            step_key(Some(&root), "RUN pip install -r requirements.txt", &[input])
        );
        assert_ne!(
            k,
            step_key(None, "RUN pip install -r requirements.txt", &[input])
        );
        assert_ne!(
            k,
            step_key(
                Some(&root),
                "RUN pip install -r requirements.txt ",
                &[input]
            )
        );
        let changed = entries_hash(&[file("requirements.txt", b"gradio==6")]);
        assert_ne!(
            k,
            step_key(
                Some(&root),
                "RUN pip install -r requirements.txt",
                &[changed]
            )
        );
        // Order of entries does not matter for their hash; a mode does.
        let two = [file("a", b"1"), file("b", b"2")];
        let swapped = [file("b", b"2"), file("a", b"1")];
        assert_eq!(entries_hash(&two), entries_hash(&swapped));
        assert_ne!(
            entries_hash(&two),
            entries_hash(&[
                Entry {
                    mode: 0o755,
                    ..file("a", b"1")
                },
                file("b", b"2")
            ])
        );
    }

    fn tar_of(files: &[(&str, &[u8])], gzip: bool) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, body) in files {
            let mut header = tar::Header::new_gnu();
            header.set_size(body.len() as u64);
            header.set_mode(0o644);
            header.set_entry_type(tar::EntryType::Regular);
            // `set_path` refuses `..`; write the name field directly, as a hostile archive would.
            let name = &mut header.as_old_mut().name;
            name[..path.len()].copy_from_slice(path.as_bytes());
            header.set_cksum();
            builder.append(&header, *body).unwrap();
        }
        let bytes = builder.into_inner().unwrap();
        if !gzip {
            return bytes;
        }
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &bytes).unwrap();
        gz.finish().unwrap()
    }

    #[test]
    fn archives_unpack_under_the_destination_and_hostile_ones_are_refused() {
        let good = tar_of(
            &[("site/index.html", b"<h1>hi</h1>"), ("site/a.css", b"a")],
            true,
        );
        assert!(is_archive(&good));
        assert!(is_archive(&tar_of(&[("x", b"x")], false)));
        assert!(!is_archive(b"just text"));
        let entries = unpack(&good, "srv/www").unwrap();
        let paths: Vec<&str> = entries.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["srv/www/site/index.html", "srv/www/site/a.css"]);
        let err = unpack(&tar_of(&[("../../etc/passwd", b"x")], false), "app").unwrap_err();
        assert!(err.contains("outside the destination"), "{err}");
        let err = unpack(&tar_of(&[("/etc/passwd", b"x")], false), "app").unwrap_err();
        assert!(err.contains("outside the destination"), "{err}");
        // 48 MiB of zeros gzip to a few dozen KiB: far past the ratio a real archive has.
        let zeros = vec![0u8; 48 << 20];
        let bomb = tar_of(&[("zeros.bin", &zeros)], true);
        assert!(bomb.len() < 1 << 20, "{}", bomb.len());
        let err = unpack(&bomb, "app").unwrap_err();
        assert!(err.contains("tar bomb"), "{err}");
    }
}
