//! The OCI runtime spec of a Space's container, built from the allocation with no IO: uid 1000 and
//! HOME=/home/user, the built-in Space variables then the Space's variables and secrets, the flavor's CPU,
//! memory and pids limits under an absolute cgroup path, no new privileges, a minimal capability set, and its
//! own mount, pid, ipc, uts, cgroup and network namespaces.

use oci_spec::runtime::{
    LinuxBuilder, LinuxCpuBuilder, LinuxMemoryBuilder, LinuxNamespaceBuilder, LinuxNamespaceType,
    LinuxPidsBuilder, LinuxResourcesBuilder, ProcessBuilder, RootBuilder, Spec, UserBuilder,
};
use spacedock_shared::flavor::Flavor;

/// Most processes a Space may run.
pub const PIDS_LIMIT: i64 = 4096;
/// CFS period used for CPU limits (100 ms).
pub const CPU_PERIOD_US: u64 = 100_000;

/// What the container needs to know.
#[derive(Debug, Clone)]
pub struct Allocation {
    /// Unique per allocation; the container and cgroup are named after it.
    pub id: String,
    /// `namespace/name`.
    pub space_id: String,
    pub title: String,
    /// `SUBDOMAIN.APPS_DOMAIN`.
    pub host: String,
    pub creator_user_id: String,
    pub flavor: Flavor,
    /// The image's command.
    pub args: Vec<String>,
    pub cwd: String,
    /// The image's own environment (`PATH=...`), first.
    pub image_env: Vec<String>,
    pub variables: Vec<(String, String)>,
    pub secrets: Vec<(String, String)>,
    /// A network namespace prepared by the agent, or none for a fresh, empty one.
    pub netns_path: Option<String>,
}

/// Why a spec could not be built.
#[derive(Debug, thiserror::Error)]
#[error("cannot build the runtime spec: {0}")]
pub struct SpecError(String);

fn err(e: impl std::fmt::Display) -> SpecError {
    SpecError(e.to_string())
}

/// The environment, in order: the image's, the built-ins, the variables, then the secrets (later wins).
pub fn environment(a: &Allocation) -> Vec<String> {
    let (author, repo) = a.space_id.split_once('/').unwrap_or(("", &a.space_id));
    let accelerator = if a.flavor.accelerator.is_some() {
        a.flavor.name.as_str()
    } else {
        "none"
    };
    let mut env: Vec<String> = a.image_env.clone();
    let builtins = [
        ("HOME", "/home/user".to_owned()),
        ("SYSTEM", "spaces".to_owned()),
        ("SPACE_ID", a.space_id.clone()),
        ("SPACE_AUTHOR_NAME", author.to_owned()),
        ("SPACE_REPO_NAME", repo.to_owned()),
        ("SPACE_TITLE", a.title.clone()),
        ("SPACE_HOST", a.host.clone()),
        ("SPACE_CREATOR_USER_ID", a.creator_user_id.clone()),
        ("CPU_CORES", a.flavor.vcpu.to_string()),
        ("MEMORY", format!("{}Gi", a.flavor.memory_gib)),
        ("ACCELERATOR", accelerator.to_owned()),
    ];
    env.extend(builtins.iter().map(|(k, v)| format!("{k}={v}")));
    env.extend(a.variables.iter().map(|(k, v)| format!("{k}={v}")));
    env.extend(a.secrets.iter().map(|(k, v)| format!("{k}={v}")));
    env
}

/// The runtime spec for `runc`, with `rootfs` as the bundle's root directory.
pub fn build(a: &Allocation) -> Result<Spec, SpecError> {
    let mut spec = Spec::default();
    let process = ProcessBuilder::default()
        .terminal(false)
        .user(
            UserBuilder::default()
                .uid(1000u32)
                .gid(1000u32)
                .build()
                .map_err(err)?,
        )
        .args(a.args.clone())
        .env(environment(a))
        .cwd(a.cwd.clone())
        .no_new_privileges(true)
        .capabilities(
            spec.process()
                .as_ref()
                .and_then(|p| p.capabilities().clone())
                .unwrap_or_default(),
        )
        .rlimits(
            spec.process()
                .as_ref()
                .and_then(|p| p.rlimits().clone())
                .unwrap_or_default(),
        )
        .build()
        .map_err(err)?;
    spec.set_process(Some(process));
    spec.set_root(Some(
        RootBuilder::default()
            .path("rootfs")
            .readonly(false)
            .build()
            .map_err(err)?,
    ));
    spec.set_hostname(Some(a.id.clone()));

    let mut namespaces = Vec::new();
    for typ in [
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Mount,
        LinuxNamespaceType::Cgroup,
    ] {
        namespaces.push(
            LinuxNamespaceBuilder::default()
                .typ(typ)
                .build()
                .map_err(err)?,
        );
    }
    let mut network = LinuxNamespaceBuilder::default().typ(LinuxNamespaceType::Network);
    if let Some(path) = &a.netns_path {
        network = network.path(path.clone());
    }
    namespaces.push(network.build().map_err(err)?);

    let memory_bytes = i64::from(a.flavor.memory_gib) * (1 << 30);
    let resources = LinuxResourcesBuilder::default()
        .memory(
            LinuxMemoryBuilder::default()
                .limit(memory_bytes)
                .build()
                .map_err(err)?,
        )
        .cpu(
            LinuxCpuBuilder::default()
                .quota(i64::from(a.flavor.vcpu) * CPU_PERIOD_US as i64)
                .period(CPU_PERIOD_US)
                .build()
                .map_err(err)?,
        )
        .pids(
            LinuxPidsBuilder::default()
                .limit(PIDS_LIMIT)
                .build()
                .map_err(err)?,
        )
        .devices(vec![])
        .build()
        .map_err(err)?;
    let defaults = spec.linux().clone().unwrap_or_default();
    let linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .resources(resources)
        .cgroups_path(format!("/spacedock/{}", a.id))
        .masked_paths(defaults.masked_paths().clone().unwrap_or_default())
        .readonly_paths(defaults.readonly_paths().clone().unwrap_or_default())
        .build()
        .map_err(err)?;
    spec.set_linux(Some(linux));
    Ok(spec)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use spacedock_shared::flavor::Catalog;

    pub fn allocation(flavor: &str) -> Allocation {
        Allocation {
            id: "alloc-1".into(),
            space_id: "alice/demo".into(),
            title: "Demo".into(),
            host: "alice-demo.localhost".into(),
            creator_user_id: "u1".into(),
            flavor: Catalog::huggingface().get(flavor).unwrap().clone(),
            args: vec!["/bin/busybox".into(), "sh".into()],
            cwd: "/".into(),
            image_env: vec!["PATH=/bin".into()],
            variables: vec![("MODE".into(), "fast".into())],
            secrets: vec![("API_KEY".into(), "s3cret".into())],
            netns_path: None,
        }
    }

    #[test]
    fn environment_has_the_builtins_then_variables_then_secrets() {
        let env = environment(&allocation("cpu-basic"));
        for want in [
            "PATH=/bin",
            "HOME=/home/user",
            "SYSTEM=spaces",
            "SPACE_ID=alice/demo",
            "SPACE_AUTHOR_NAME=alice",
            "SPACE_REPO_NAME=demo",
            "SPACE_HOST=alice-demo.localhost",
            "CPU_CORES=2",
            "MEMORY=16Gi",
            "ACCELERATOR=none",
            "MODE=fast",
        ] {
            assert!(
                env.contains(&want.to_owned()),
                "{want} missing from {env:?}"
            );
        }
        assert_eq!(env.last().map(String::as_str), Some("API_KEY=s3cret"));
        assert!(environment(&allocation("t4-small")).contains(&"ACCELERATOR=t4-small".to_owned()));
    }

    #[test]
    fn limits_user_and_isolation_follow_the_flavor() {
        let spec = build(&allocation("cpu-upgrade")).unwrap();
        let process = spec.process().as_ref().unwrap();
        assert_eq!((process.user().uid(), process.user().gid()), (1000, 1000));
        assert_eq!(process.no_new_privileges(), Some(true));
        let linux = spec.linux().as_ref().unwrap();
        assert_eq!(
            linux.cgroups_path().as_deref().map(|p| p.to_str().unwrap()),
            Some("/spacedock/alloc-1")
        );
        let resources = linux.resources().as_ref().unwrap();
        assert_eq!(resources.memory().as_ref().unwrap().limit(), Some(32 << 30));
        assert_eq!(resources.cpu().as_ref().unwrap().quota(), Some(800_000));
        assert_eq!(resources.pids().as_ref().unwrap().limit(), PIDS_LIMIT);
        let types: Vec<_> = linux
            .namespaces()
            .as_ref()
            .unwrap()
            .iter()
            .map(|n| n.typ())
            .collect();
        for t in [
            LinuxNamespaceType::Mount,
            LinuxNamespaceType::Network,
            LinuxNamespaceType::Pid,
        ] {
            assert!(types.contains(&t), "{t:?} missing");
        }
        let caps = process
            .capabilities()
            .as_ref()
            .unwrap()
            .effective()
            .as_ref()
            .unwrap();
        assert!(caps.len() <= 3, "{caps:?}");
        let json = serde_json::to_string(&spec).unwrap();
        assert!(json.contains("\"ociVersion\""));
    }

    /// The spec runs under real runc (as root, with busybox-static as the image): the process sees uid 1000,
    /// its variables and secret, and its memory limit in its cgroup.
    #[test]
    fn runc_runs_the_spec() {
        let busybox = std::path::Path::new("/bin/busybox");
        assert!(
            busybox.exists(),
            "/bin/busybox is missing: install busybox-static (ops/test.sh does)"
        );
        let dir = tempfile::tempdir().unwrap();
        let rootfs = dir.path().join("rootfs");
        std::fs::create_dir_all(rootfs.join("bin")).unwrap();
        std::fs::copy(busybox, rootfs.join("bin/busybox")).unwrap();
        let id = format!("spec-test-{}", std::process::id());
        let mut a = allocation("cpu-basic");
        a.id = id.clone();
        a.args = vec![
            "/bin/busybox".into(),
            "sh".into(),
            "-c".into(),
            "/bin/busybox id -u; echo SPACE_ID=$SPACE_ID MODE=$MODE KEY=$API_KEY; \
             /bin/busybox cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/memory.max 2>/dev/null; true"
                .into(),
        ];
        let spec = build(&a).unwrap();
        std::fs::write(
            dir.path().join("config.json"),
            serde_json::to_vec(&spec).unwrap(),
        )
        .unwrap();
        let out = std::process::Command::new("runc")
            .args(["run", "--bundle"])
            .arg(dir.path())
            .arg(&id)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("runc must be installed (ops/test.sh installs it)");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "runc failed: {}{}",
            stdout,
            String::from_utf8_lossy(&out.stderr)
        );
        let lines: Vec<&str> = stdout.lines().collect();
        assert_eq!(lines.first(), Some(&"1000"), "{stdout}");
        assert!(
            stdout.contains("SPACE_ID=alice/demo MODE=fast KEY=s3cret"),
            "{stdout}"
        );
        assert!(
            stdout.contains(&(16u64 << 30).to_string()),
            "memory limit not applied: {stdout}"
        );
    }
}
