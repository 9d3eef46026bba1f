//! The image a build makes, written without IO: the OCI config (deterministic JSON, so an unchanged build has
//! the same config digest) from the planned settings and the layers' digests, the owners a `--chown` names,
//! looked up in the image's own `/etc/passwd` and `/etc/group`, and a file read through an image's layers.

use std::collections::BTreeMap;

use crate::plan::Settings;

/// `USER[:GROUP]` (names or numbers) as uid and gid, by the image's `/etc/passwd` and `/etc/group`. A user
/// without a group takes its primary group; a number missing from the files is used as it is.
pub fn owners(spec: &str, passwd: &str, group: &str) -> Result<(u32, u32), String> {
    let (user, grp) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let passwd_entry = |name: &str| {
        passwd.lines().find_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            (f.len() >= 4 && f[0] == name)
                .then(|| (f[2].parse::<u32>().ok(), f[3].parse::<u32>().ok()))
        })
    };
    let (uid, primary) = match user.parse::<u32>() {
        Ok(uid) => (uid, None),
        Err(_) => match passwd_entry(user) {
            Some((Some(uid), gid)) => (uid, gid),
            _ => {
                return Err(format!(
                    "--chown: user `{user}` is not in the image's /etc/passwd"
                ));
            }
        },
    };
    let gid = match grp {
        None => primary.unwrap_or(uid),
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => group
                .lines()
                .find_map(|line| {
                    let f: Vec<&str> = line.split(':').collect();
                    (f.len() >= 3 && f[0] == g)
                        .then(|| f[2].parse::<u32>().ok())
                        .flatten()
                })
                .ok_or_else(|| format!("--chown: group `{g}` is not in the image's /etc/group"))?,
        },
    };
    Ok((uid, gid))
}

/// The OCI image config for `settings` over layers with these diff ids (uncompressed digests, base first).
/// Keys come out in a fixed order and the creation time is fixed, so the same inputs give the same bytes.
pub fn config_json(settings: &Settings, diff_ids: &[String]) -> Vec<u8> {
    let env: Vec<String> = settings
        .env
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let exposed: serde_json::Map<String, serde_json::Value> = settings
        .exposed
        .iter()
        .map(|p| {
            let port = if p.contains('/') {
                p.clone()
            } else {
                format!("{p}/tcp")
            };
            (port, serde_json::json!({}))
        })
        .collect();
    let mut config = serde_json::json!({
        "Env": env,
        "Cmd": settings.cmd,
        "Entrypoint": settings.entrypoint,
        "WorkingDir": settings.workdir,
        "User": settings.user,
        "ExposedPorts": exposed,
        "Labels": settings.labels,
    });
    if settings.entrypoint.is_empty() {
        config["Entrypoint"] = serde_json::Value::Null;
    }
    let image = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": config,
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
    });
    serde_json::to_vec(&image).unwrap_or_default()
}

/// The settings an image's OCI config leaves for a Dockerfile built on it (environment, command, entrypoint,
/// working directory, user, exposed ports, labels).
pub fn settings_from_config(bytes: &[u8]) -> Result<Settings, String> {
    let value: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| format!("image config is not valid JSON: {e}"))?;
    if value["rootfs"]["type"] != "layers" {
        return Err("image config: rootfs.type is not `layers`".into());
    }
    let config = &value["config"];
    let text = |key: &str| config[key].as_str().unwrap_or_default().to_owned();
    let list = |key: &str| -> Vec<String> {
        config[key]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let object_keys = |key: &str| -> Vec<(String, String)> {
        config[key]
            .as_object()
            .map(|o| {
                o.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                    .collect()
            })
            .unwrap_or_default()
    };
    Ok(Settings {
        env: list("Env")
            .into_iter()
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap_or((&kv, ""));
                (k.to_owned(), v.to_owned())
            })
            .collect(),
        workdir: text("WorkingDir"),
        user: text("User"),
        cmd: list("Cmd"),
        entrypoint: list("Entrypoint"),
        shell: list("Shell"),
        exposed: object_keys("ExposedPorts")
            .into_iter()
            .map(|(k, _)| k)
            .collect(),
        labels: object_keys("Labels").into_iter().collect(),
    })
}

/// A file's bytes in an image whose uncompressed layers (base first) are `layers`: the top layer that has it
/// wins; an OCI whiteout (`.wh.NAME`, or `.wh..wh..opq` for a whole folder) above it hides it.
pub fn read_file<R: std::io::Read>(layers: Vec<R>, path: &str) -> std::io::Result<Option<Vec<u8>>> {
    let path = path.trim_start_matches('/');
    let mut found = None;
    for layer in layers {
        let mut archive = tar::Archive::new(layer);
        for entry in archive.entries()? {
            let mut entry = entry?;
            let entry_path = entry
                .path()?
                .to_string_lossy()
                .trim_start_matches("./")
                .to_owned();
            let entry_path = entry_path.trim_end_matches('/');
            let (dir, name) = entry_path.rsplit_once('/').unwrap_or(("", entry_path));
            let under = |folder: &str| folder.is_empty() || path.starts_with(&format!("{folder}/"));
            let hidden = match name.strip_prefix(".wh.") {
                Some(".wh..opq") => under(dir),
                Some(gone) => {
                    let target = if dir.is_empty() {
                        gone.to_owned()
                    } else {
                        format!("{dir}/{gone}")
                    };
                    path == target || path.starts_with(&format!("{target}/"))
                }
                None => false,
            };
            if hidden {
                found = None;
            } else if entry_path == path && entry.header().entry_type().is_file() {
                let mut bytes = Vec::new();
                std::io::Read::read_to_end(&mut entry, &mut bytes)?;
                found = Some(bytes);
            }
        }
    }
    Ok(found)
}

/// The files and links of an image (uncompressed layers, base first) under any of `sources` (paths in the
/// image, `/` or `.` for all), after OCI whiteouts: what `COPY --from` picks from. Folders are entries too
/// (so empty ones are copied); hard links become copies of their target. With `spill`, files are written there and stay
/// on disk (`Kind::HostFile`) instead of in memory.
pub fn read_tree<R: std::io::Read>(
    layers: Vec<R>,
    sources: &[String],
    spill: Option<&std::path::Path>,
) -> std::io::Result<Vec<crate::layer::Entry>> {
    use crate::layer::{Entry, Kind};
    let prefixes: Vec<String> = sources
        .iter()
        .map(|s| s.trim_matches('/').trim_start_matches("./").to_owned())
        .map(|s| if s == "." { String::new() } else { s })
        .collect();
    let wanted = |path: &str| {
        prefixes
            .iter()
            .any(|p| p.is_empty() || path == p || path.starts_with(&format!("{p}/")))
    };
    let mut tree: BTreeMap<String, Entry> = BTreeMap::new();
    let mut spilled = 0u64;
    for layer in layers {
        let mut archive = tar::Archive::new(layer);
        let mut added: Vec<Entry> = Vec::new();
        let mut gone: Vec<(String, bool)> = Vec::new();
        for entry in archive.entries()? {
            let mut entry = entry?;
            let path = entry
                .path()?
                .to_string_lossy()
                .trim_start_matches("./")
                .trim_end_matches('/')
                .to_owned();
            let (dir, name) = path.rsplit_once('/').unwrap_or(("", &path));
            match name.strip_prefix(".wh.") {
                Some(".wh..opq") => gone.push((dir.to_owned(), true)),
                Some(target) => gone.push((
                    if dir.is_empty() {
                        target.to_owned()
                    } else {
                        format!("{dir}/{target}")
                    },
                    false,
                )),
                None if wanted(&path) && !path.is_empty() => {
                    let header = entry.header();
                    let (mode, uid, gid) = (
                        header.mode()? & 0o7777,
                        header.uid()? as u32,
                        header.gid()? as u32,
                    );
                    let kind = match header.entry_type() {
                        t if t.is_file() => Some(match spill {
                            Some(dir) => {
                                spilled += 1;
                                let path = dir.join(spilled.to_string());
                                std::io::copy(&mut entry, &mut std::fs::File::create(&path)?)?;
                                Kind::HostFile(path)
                            }
                            None => {
                                let mut bytes = Vec::new();
                                std::io::Read::read_to_end(&mut entry, &mut bytes)?;
                                Kind::File(bytes)
                            }
                        }),
                        t if t.is_dir() => Some(Kind::Dir),
                        t if t.is_symlink() => entry
                            .link_name()?
                            .map(|l| Kind::Symlink(l.to_string_lossy().into_owned())),
                        t if t.is_hard_link() => entry.link_name()?.and_then(|l| {
                            let target = l.to_string_lossy().trim_start_matches("./").to_owned();
                            added
                                .iter()
                                .rev()
                                .find(|e| e.path == target)
                                .or_else(|| tree.get(&target))
                                .map(|e| e.kind.clone())
                        }),
                        _ => None,
                    };
                    if let Some(kind) = kind {
                        added.push(Entry {
                            path,
                            kind,
                            mode,
                            uid,
                            gid,
                        });
                    }
                }
                None => {}
            }
        }
        // A layer's whiteouts hide what the layers below it have, not its own entries.
        for (path, opaque) in gone {
            let under = format!("{path}/");
            tree.retain(|p, _| !(p.starts_with(&under) || (!opaque && *p == path)));
        }
        for entry in added {
            tree.insert(entry.path.clone(), entry);
        }
    }
    Ok(tree.into_values().collect())
}

/// The entries of a COPY step's layer: owned by the `--chown` owners (resolved in the image's own `/etc/passwd`
/// and `/etc/group`), root otherwise; folders the destination needs are root's, as in Docker.
pub fn copy_owned(
    entries: &[crate::layer::Entry],
    chown: Option<&str>,
    passwd: &str,
    group: &str,
) -> Result<Vec<crate::layer::Entry>, String> {
    let (uid, gid) = match chown {
        Some(spec) => owners(spec, passwd, group)?,
        None => (0, 0),
    };
    let owned = entries
        .iter()
        .map(|e| crate::layer::Entry {
            uid,
            gid,
            ..e.clone()
        })
        .collect();
    Ok(owned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use spacedock_shared::image::sha256_digest as digest;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/home/user:/bin/sh\nweb:x:33:44::/var/www:/bin/false\n";
    const GROUP: &str = "root:x:0:\nusers:x:100:\nuser:x:1000:\n";

    #[test]
    fn owners_come_from_the_images_own_files() {
        assert_eq!(owners("user", PASSWD, GROUP), Ok((1000, 1000)));
        assert_eq!(owners("web", PASSWD, GROUP), Ok((33, 44)));
        assert_eq!(owners("user:users", PASSWD, GROUP), Ok((1000, 100)));
        assert_eq!(owners("1234", PASSWD, GROUP), Ok((1234, 1234)));
        assert_eq!(owners("1000:5", PASSWD, GROUP), Ok((1000, 5)));
        assert!(
            owners("nobody", PASSWD, GROUP)
                .unwrap_err()
                .contains("`nobody`")
        );
        assert!(
            owners("user:wheel", PASSWD, GROUP)
                .unwrap_err()
                .contains("`wheel`")
        );
    }

    /// A layer of files owned by `owner`.
    fn layer_of(files: &[(&str, &str)], owner: u32) -> Vec<u8> {
        use crate::layer::{Entry, Kind, write};
        let entries = files
            .iter()
            .map(|(p, b)| Entry {
                path: (*p).into(),
                kind: Kind::File(b.as_bytes().to_vec()),
                mode: 0o644,
                uid: owner,
                gid: owner,
            })
            .collect();
        let mut out = Vec::new();
        write(entries, &mut out).unwrap();
        out
    }

    #[test]
    fn files_are_read_through_the_layers_with_whiteouts() {
        let layer = |files: &[(&str, &str)]| layer_of(files, 0);
        let base = layer(&[
            ("etc/passwd", "root:x:0:0::/:/bin/sh\n"),
            ("etc/motd", "hi"),
            ("opt/a/x", "1"),
        ]);
        let users = layer(&[(
            "etc/passwd",
            "root:x:0:0::/:/bin/sh\nuser:x:1000:1000::/home/user:/bin/sh\n",
        )]);
        let hide = layer(&[("etc/.wh.motd", ""), ("opt/.wh.a", "")]);
        let read = |path: &str| read_file(vec![&base[..], &users[..], &hide[..]], path).unwrap();
        let passwd = String::from_utf8(read("/etc/passwd").unwrap()).unwrap();
        assert_eq!(owners("user", &passwd, ""), Ok((1000, 1000)));
        assert_eq!(read("etc/motd"), None, "whited out");
        assert_eq!(read("opt/a/x"), None, "its folder was whited out");
        assert_eq!(
            read_file(vec![&base[..]], "etc/motd").unwrap(),
            Some(b"hi".to_vec())
        );
    }

    #[test]
    fn a_tree_is_read_under_its_sources_after_whiteouts() {
        let layer = |files: &[(&str, &str)]| layer_of(files, 7);
        let base = layer(&[("out/a.txt", "a"), ("out/old/x", "x"), ("etc/motd", "hi")]);
        let top = layer(&[
            ("out/.wh.a.txt", ""),
            ("out/old/.wh..wh..opq", ""),
            ("out/old/y", "y"),
            ("out/b.txt", "b"),
        ]);
        let tree = read_tree(vec![&base[..], &top[..]], &["/out/".to_owned()], None).unwrap();
        let paths: Vec<&str> = tree.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["out", "out/b.txt", "out/old", "out/old/y"]);
        assert_eq!(tree[1].uid, 7, "owners are kept");
        let all = read_tree(vec![&base[..], &top[..]], &[".".to_owned()], None).unwrap();
        // Spilled to disk, the same files are host files with the same bytes.
        let dir = tempfile::tempdir().unwrap();
        let spilled = read_tree(
            vec![&base[..], &top[..]],
            &[".".to_owned()],
            Some(dir.path()),
        )
        .unwrap();
        assert_eq!(spilled.len(), all.len());
        for (memory, disk) in all.iter().zip(&spilled) {
            match (&memory.kind, &disk.kind) {
                (crate::layer::Kind::File(bytes), crate::layer::Kind::HostFile(path)) => {
                    assert_eq!(&std::fs::read(path).unwrap(), bytes)
                }
                (a, b) => assert_eq!(a, b),
            }
        }
        assert!(all.iter().any(|e| e.path == "etc/motd"));
    }

    #[test]
    fn a_copy_layer_is_owned_as_chown_says() {
        use crate::layer::{Entry, Kind};
        let entries = vec![Entry {
            path: "home/user/app/app.py".into(),
            kind: Kind::File(b"x".to_vec()),
            mode: 0o644,
            uid: 0,
            gid: 0,
        }];
        let layer_of = |owned: Vec<Entry>| {
            let mut bytes = Vec::new();
            let layer = crate::layer::write(owned, &mut bytes).unwrap();
            (layer, bytes)
        };
        let (layer, bytes) = layer_of(copy_owned(&entries, Some("user"), PASSWD, GROUP).unwrap());
        assert_eq!(layer.digest, digest(&bytes));
        let mut archive = tar::Archive::new(&bytes[..]);
        let owners: Vec<(String, u64)> = archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.path().unwrap().display().to_string(),
                    e.header().uid().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            owners.last().unwrap(),
            &("home/user/app/app.py".to_owned(), 1000)
        );
        assert_eq!(owners[0].1, 0, "folders the destination needs are root's");
        assert!(
            copy_owned(&entries, Some("ghost"), PASSWD, GROUP)
                .unwrap_err()
                .contains("ghost")
        );
        let (root, _) = layer_of(copy_owned(&entries, None, PASSWD, GROUP).unwrap());
        assert_ne!(root.digest, layer.digest);
    }

    #[test]
    fn the_config_is_deterministic_and_reads_back() {
        let settings = Settings {
            env: vec![
                ("PATH".into(), "/bin".into()),
                ("HOME".into(), "/home/user".into()),
            ],
            workdir: "/home/user/app".into(),
            user: "1000".into(),
            cmd: vec!["python".into(), "app.py".into()],
            exposed: vec!["7860".into()],
            ..Default::default()
        };
        let layers = vec![digest(b"one"), digest(b"two")];
        let bytes = config_json(&settings, &layers);
        assert_eq!(bytes, config_json(&settings, &layers));
        assert_eq!(digest(&bytes), digest(&config_json(&settings, &layers)));
        let (config, diff_ids) = spacedock_shared::image::parse_config(&bytes).unwrap();
        assert_eq!(diff_ids, layers);
        assert_eq!(config.cmd, vec!["python", "app.py"]);
        assert_eq!(config.env, vec!["PATH=/bin", "HOME=/home/user"]);
        assert_eq!(config.working_dir, "/home/user/app");
        assert!(config.entrypoint.is_empty());
        let text = String::from_utf8(bytes).unwrap();
        assert!(
            text.contains("\"ExposedPorts\":{\"7860/tcp\":{}}"),
            "{text}"
        );
    }
}
