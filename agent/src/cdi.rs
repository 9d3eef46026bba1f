//! GPUs in a container through the node's CDI spec for NVIDIA (`nvidia-ctk cdi generate` writes it to
//! `/etc/cdi` or `/var/run/cdi`): the spec-wide edits plus those of each assigned GPU (found by UUID or index)
//! are applied to the runtime spec: device nodes (with their device numbers and cgroup rules), bind mounts of
//! the driver's files, hooks and environment, then `NVIDIA_VISIBLE_DEVICES` naming exactly the assigned GPUs.
//! Parsing and applying have no IO; `load` reads the directories and `device_number` stats the host.

use std::path::Path;

use serde::Deserialize;
use serde_json::{Value, json};

/// Where CDI specs live.
pub const CDI_DIRS: [&str; 2] = ["/etc/cdi", "/var/run/cdi"];
const NVIDIA_KIND: &str = "nvidia.com/gpu";

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Edits {
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub device_nodes: Vec<DeviceNode>,
    #[serde(default)]
    pub mounts: Vec<CdiMount>,
    #[serde(default)]
    pub hooks: Vec<CdiHook>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceNode {
    pub path: String,
    pub host_path: Option<String>,
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub major: Option<i64>,
    pub minor: Option<i64>,
    pub permissions: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CdiMount {
    pub host_path: String,
    pub container_path: String,
    #[serde(default)]
    pub options: Vec<String>,
    #[serde(rename = "type")]
    pub kind: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CdiHook {
    pub hook_name: String,
    pub path: String,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Device {
    name: String,
    container_edits: Edits,
}

/// One CDI spec file.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CdiSpec {
    kind: String,
    #[serde(default)]
    devices: Vec<Device>,
    #[serde(default)]
    container_edits: Edits,
    /// The file it came from, for messages.
    #[serde(skip)]
    pub source: String,
}

impl CdiSpec {
    /// The host files the spec binds into containers (its own edits' and every device's).
    pub fn mount_sources(&self) -> Vec<String> {
        let devices = self.devices.iter().map(|d| &d.container_edits);
        std::iter::once(&self.container_edits)
            .chain(devices)
            .flat_map(|e| e.mounts.iter().map(|m| m.host_path.clone()))
            .collect()
    }
}

/// Parses a CDI spec (JSON, or YAML as `nvidia-ctk` writes by default).
pub fn parse(text: &str, source: &str) -> Result<CdiSpec, String> {
    let value: Value = if text.trim_start().starts_with('{') {
        serde_json::from_str(text).map_err(|e| format!("{source}: {e}"))?
    } else {
        let docs =
            yaml_rust2::YamlLoader::load_from_str(text).map_err(|e| format!("{source}: {e}"))?;
        yaml_to_json(docs.first().ok_or_else(|| format!("{source}: empty"))?)
    };
    let mut spec: CdiSpec = serde_json::from_value(value).map_err(|e| format!("{source}: {e}"))?;
    spec.source = source.to_owned();
    Ok(spec)
}

fn yaml_to_json(y: &yaml_rust2::Yaml) -> Value {
    use yaml_rust2::Yaml;
    match y {
        Yaml::Hash(h) => Value::Object(
            h.iter()
                .filter_map(|(k, v)| Some((k.as_str()?.to_owned(), yaml_to_json(v))))
                .collect(),
        ),
        Yaml::Array(a) => Value::Array(a.iter().map(yaml_to_json).collect()),
        Yaml::String(s) | Yaml::Real(s) => Value::String(s.clone()),
        Yaml::Integer(i) => json!(i),
        Yaml::Boolean(b) => json!(b),
        _ => Value::Null,
    }
}

/// The NVIDIA specs in the CDI directories; unreadable files are errors naming them.
pub fn load(dirs: &[&str]) -> Result<Vec<CdiSpec>, String> {
    let mut specs = Vec::new();
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        let mut paths: Vec<_> = entries.flatten().map(|e| e.path()).collect();
        paths.sort();
        for path in paths {
            let ext = path
                .extension()
                .and_then(|e| e.to_str())
                .unwrap_or_default();
            if !matches!(ext, "json" | "yaml" | "yml") {
                continue;
            }
            let source = path.display().to_string();
            let text = std::fs::read_to_string(&path).map_err(|e| format!("{source}: {e}"))?;
            let spec = parse(&text, &source)?;
            if spec.kind == NVIDIA_KIND {
                specs.push(spec);
            }
        }
    }
    Ok(specs)
}

/// The edits for the assigned GPUs (`(uuid, index)`), from the first spec that names them all.
pub fn edits_for(specs: &[CdiSpec], gpus: &[(String, u32)]) -> Result<Edits, String> {
    if specs.is_empty() {
        return Err(format!(
            "this node has no NVIDIA CDI spec in {}: generate one with \
             `nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml`",
            CDI_DIRS.join(" or ")
        ));
    }
    let mut problems = Vec::new();
    for spec in specs {
        let mut edits = spec.container_edits.clone();
        let mut complete = true;
        for (uuid, index) in gpus {
            let found = spec
                .devices
                .iter()
                .find(|d| d.name == *uuid || d.name == index.to_string());
            match found {
                Some(d) => {
                    let e = &d.container_edits;
                    edits.env.extend(e.env.iter().cloned());
                    edits.device_nodes.extend(e.device_nodes.iter().cloned());
                    edits.mounts.extend(e.mounts.iter().cloned());
                    edits.hooks.extend(e.hooks.iter().cloned());
                }
                None => {
                    complete = false;
                    let names: Vec<&str> = spec.devices.iter().map(|d| d.name.as_str()).collect();
                    problems.push(format!(
                        "{}: no device named {uuid} or {index} (it has {})",
                        spec.source,
                        names.join(", ")
                    ));
                }
            }
        }
        if complete {
            let uuids: Vec<&str> = gpus.iter().map(|(u, _)| u.as_str()).collect();
            edits
                .env
                .push(format!("NVIDIA_VISIBLE_DEVICES={}", uuids.join(",")));
            return Ok(edits);
        }
    }
    Err(problems.join("; "))
}

/// A device node's type, major and minor numbers on the host.
pub type DeviceNumber = (char, i64, i64);

/// Stats a device node on the host.
pub fn device_number(path: &Path) -> Option<DeviceNumber> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let meta = std::fs::metadata(path).ok()?;
    let kind = if meta.file_type().is_char_device() {
        'c'
    } else if meta.file_type().is_block_device() {
        'b'
    } else {
        return None;
    };
    let rdev = meta.rdev();
    let major = ((rdev >> 8) & 0xfff) | ((rdev >> 32) & !0xfff);
    let minor = (rdev & 0xff) | ((rdev >> 12) & !0xff);
    Some((kind, major as i64, minor as i64))
}

/// Applies the edits to a runtime spec (as JSON). Device nodes without numbers in the CDI spec are looked up
/// with `stat`; one that is missing on the host is an error naming it.
pub fn apply(
    spec: &mut Value,
    edits: &Edits,
    stat: impl Fn(&Path) -> Option<DeviceNumber>,
) -> Result<(), String> {
    let mut devices = Vec::new();
    let mut rules = Vec::new();
    for node in &edits.device_nodes {
        let host = node.host_path.as_deref().unwrap_or(&node.path);
        let (kind, major, minor) = match (node.major, node.minor) {
            (Some(major), Some(minor)) => (
                node.kind
                    .as_deref()
                    .and_then(|k| k.chars().next())
                    .unwrap_or('c'),
                major,
                minor,
            ),
            _ => stat(Path::new(host)).ok_or_else(|| {
                format!("the CDI spec names device {host}, which this node does not have")
            })?,
        };
        devices.push(json!({
            "path": node.path, "type": kind.to_string(), "major": major, "minor": minor,
            "fileMode": 0o666, "uid": 0, "gid": 0,
        }));
        rules.push(json!({
            "allow": true, "type": kind.to_string(), "major": major, "minor": minor,
            "access": node.permissions.clone().unwrap_or_else(|| "rwm".into()),
        }));
    }
    let push = |target: &mut Value, items: Vec<Value>| {
        if !target.is_array() {
            *target = Value::Array(Vec::new());
        }
        if let Value::Array(a) = target {
            a.extend(items);
        }
    };
    push(&mut spec["linux"]["devices"], devices);
    push(&mut spec["linux"]["resources"]["devices"], rules);
    let mounts = edits
        .mounts
        .iter()
        .map(|m| {
            json!({
                "destination": m.container_path, "source": m.host_path,
                "type": m.kind.clone().unwrap_or_else(|| "bind".into()), "options": m.options,
            })
        })
        .collect();
    push(&mut spec["mounts"], mounts);
    for hook in &edits.hooks {
        let entry = json!({ "path": hook.path, "args": hook.args, "env": hook.env });
        push(&mut spec["hooks"][hook.hook_name.as_str()], vec![entry]);
    }
    push(
        &mut spec["process"]["env"],
        edits.env.iter().map(|e| json!(e)).collect(),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const RECORDED: &str = include_str!("../tests/fixtures/cdi-nvidia.yaml");
    const UUID: &str = "GPU-4f2a8c1e-7d3b-11ee-b962-0242ac120002";

    fn spec_json() -> Value {
        let alloc = crate::spec::tests::allocation("t4-small");
        serde_json::to_value(crate::spec::build(&alloc).unwrap()).unwrap()
    }

    fn fake_stat(path: &Path) -> Option<DeviceNumber> {
        let minor = match path.to_str()? {
            "/dev/nvidia0" => 0,
            "/dev/nvidiactl" => 255,
            "/dev/nvidia-uvm" => 1,
            "/dev/nvidia-uvm-tools" => 2,
            _ => return None,
        };
        Some(('c', 195, minor))
    }

    #[test]
    fn an_assigned_gpu_gets_its_devices_driver_files_hooks_and_visibility() {
        let specs = vec![parse(RECORDED, "nvidia.yaml").unwrap()];
        let edits = edits_for(&specs, &[(UUID.to_owned(), 0)]).unwrap();
        let mut spec = spec_json();
        apply(&mut spec, &edits, fake_stat).unwrap();
        let devices: Vec<&str> = spec["linux"]["devices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["path"].as_str().unwrap())
            .collect();
        for want in ["/dev/nvidia0", "/dev/nvidiactl", "/dev/nvidia-uvm"] {
            assert!(devices.contains(&want), "{want} missing: {devices:?}");
        }
        let rules = spec["linux"]["resources"]["devices"].as_array().unwrap();
        assert!(
            rules
                .iter()
                .any(|r| r["major"] == 195 && r["minor"] == 255 && r["allow"] == true)
        );
        let mounts = spec["mounts"].as_array().unwrap();
        assert!(
            mounts
                .iter()
                .any(|m| m["destination"] == "/usr/bin/nvidia-smi"
                    && m["options"].as_array().unwrap().contains(&json!("ro")))
        );
        assert_eq!(
            spec["hooks"]["createContainer"][0]["path"],
            "/usr/bin/nvidia-ctk"
        );
        let env: Vec<&str> = spec["process"]["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e.as_str().unwrap())
            .collect();
        // The device list wins over the spec's `void`: exactly the assigned GPU is visible.
        let visible: Vec<&&str> = env
            .iter()
            .filter(|e| e.starts_with("NVIDIA_VISIBLE_DEVICES="))
            .collect();
        assert_eq!(
            visible.last().unwrap(),
            &&format!("NVIDIA_VISIBLE_DEVICES={UUID}").as_str()
        );
        // The result is still a spec oci-spec reads.
        let _: oci_spec::runtime::Spec = serde_json::from_value(spec).unwrap();
    }

    #[test]
    fn gpus_are_found_by_index_too_and_unknown_ones_are_named() {
        let specs = vec![parse(RECORDED, "nvidia.yaml").unwrap()];
        assert!(edits_for(&specs, &[("GPU-other".to_owned(), 0)]).is_ok());
        let err = edits_for(&specs, &[("GPU-other".to_owned(), 3)]).unwrap_err();
        assert!(
            err.contains("no device named GPU-other or 3") && err.contains("nvidia.yaml"),
            "{err}"
        );
    }

    #[test]
    fn a_gpu_node_without_a_cdi_spec_says_how_to_make_one() {
        let err = edits_for(&[], &[(UUID.to_owned(), 0)]).unwrap_err();
        assert!(
            err.contains("no NVIDIA CDI spec") && err.contains("nvidia-ctk cdi generate"),
            "{err}"
        );
    }

    #[test]
    fn mount_sources_list_the_host_files_bound_in() {
        let spec = parse(RECORDED, "nvidia.yaml").unwrap();
        let sources = spec.mount_sources();
        assert!(
            sources.iter().any(|s| s.ends_with("/nvidia-smi")),
            "{sources:?}"
        );
    }

    #[test]
    fn a_device_missing_on_the_host_is_named() {
        let specs = vec![parse(RECORDED, "nvidia.yaml").unwrap()];
        let edits = edits_for(&specs, &[(UUID.to_owned(), 0)]).unwrap();
        let err = apply(&mut spec_json(), &edits, |_| None).unwrap_err();
        assert!(err.contains("/dev/nvidia"), "{err}");
    }

    #[test]
    fn device_numbers_come_from_the_host() {
        assert_eq!(device_number(Path::new("/dev/null")), Some(('c', 1, 3)));
        assert_eq!(device_number(Path::new("/etc/hostname")), None);
    }
}
