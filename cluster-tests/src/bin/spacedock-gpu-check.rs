//! `spacedock-gpu-check`: on a machine with an NVIDIA GPU, shows what the agent's NVML inventory reports and
//! that a Space on a GPU flavor gets exactly its GPU, through the real path: a coordinator whose catalog has a
//! flavor for this GPU, an agent joined with a token, `spacedock image import`, the leader placing the Space, the
//! agent applying the node's CDI spec. The Space's container writes what it sees (its `/dev/nvidia*` and whether
//! each opens, `NVIDIA_VISIBLE_DEVICES`, `nvidia-smi -L` when the CDI spec mounts it) and serves it; a second
//! Space on a CPU flavor must see no GPU at all. Prints the inventory, `spacedock nodes`, both reports and a
//! verdict; exits 1 when a check fails. It is no test of the suite: the suite's machines have no GPU.
//!
//! Needs root, a containerd (`SPACEDOCK_TEST_CONTAINERD`; `ops/gpu-check.sh` starts one) and the workspace's
//! binaries beside it. Without a CDI spec in /etc/cdi or /var/run/cdi it stops with the agent's message, unless
//! `--write-cdi-spec` lets it write a minimal one (device nodes, `nvidia-smi`, `libnvidia-ml`) for the run.
//!
//! `spacedock-gpu-check [--write-cdi-spec]`

#![allow(clippy::unwrap_used, clippy::expect_used)] // a check harness: panics are how it fails

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use spacedock_agent::{cdi, inventory};
use spacedock_cluster_tests::{Agent, ContainersGuard, Coordinator, api, http_get, run};
use spacedock_shared::wire::GpuInfo;

/// Where a spec written by `--write-cdi-spec` goes (and is removed from afterwards).
const WRITTEN_SPEC: &str = "/var/run/cdi/spacedock-gpu-check.json";

/// What the Space's container runs: a report of what it sees, then busybox httpd serving it.
const REPORT_SCRIPT: &str = r#"#!/bin/sh
mkdir -p /home/user/www
{
  echo "NVIDIA_VISIBLE_DEVICES=${NVIDIA_VISIBLE_DEVICES:-unset}"
  echo "ACCELERATOR=${ACCELERATOR:-unset}"
  found=0
  for d in /dev/nvidia*; do
    [ -e "$d" ] || continue
    found=1
    if (: < "$d") 2>/dev/null; then echo "open $d: ok"; else echo "open $d: refused"; fi
  done
  [ "$found" = 1 ] || echo "no /dev/nvidia* devices"
  if [ -e /usr/bin/nvidia-smi ]; then
    /usr/bin/nvidia-smi -L
    /usr/bin/nvidia-smi --query-gpu=name,uuid,pci.bus_id,memory.total,driver_version --format=csv
  else
    echo "no nvidia-smi in the container"
  fi
} > /home/user/www/gpu.txt 2>&1
cat /home/user/www/gpu.txt
exec busybox httpd -f -p 8080 -h /home/user/www
"#;

fn main() -> ExitCode {
    let write_spec = std::env::args().any(|a| a == "--write-cdi-spec");
    let xids = inventory::XidCounts::default();
    let dir = tempfile::tempdir().unwrap();
    let inv = inventory::collect("gpu-check", &BTreeMap::new(), dir.path(), &xids);
    println!("== inventory (what the agent reports)");
    println!(
        "{}",
        serde_json::to_string_pretty(&inventory_json(&inv)).unwrap()
    );
    let Some(gpu) = inv.gpus.first().cloned() else {
        println!("FAIL: NVML found no GPU: {}", inv.gpu_note);
        return ExitCode::FAILURE;
    };
    let mut _written = None;
    match cdi::load(&cdi::CDI_DIRS) {
        Ok(specs) if !specs.is_empty() => {
            let sources: Vec<&str> = specs.iter().map(|s| s.source.as_str()).collect();
            println!("== CDI specs: {}", sources.join(", "));
        }
        Ok(_) if write_spec => {
            let spec = minimal_cdi_spec(&inv.gpus);
            std::fs::create_dir_all("/var/run/cdi").unwrap();
            std::fs::write(WRITTEN_SPEC, serde_json::to_vec_pretty(&spec).unwrap()).unwrap();
            println!(
                "== no CDI spec on this machine; wrote a minimal one to {WRITTEN_SPEC}:\n{spec:#}"
            );
            _written = Some(RemoveOnDrop(WRITTEN_SPEC));
        }
        Ok(_) => {
            println!(
                "FAIL: {}",
                cdi::edits_for(&[], &[(gpu.uuid.clone(), gpu.index)]).unwrap_err()
            );
            return ExitCode::FAILURE;
        }
        Err(e) => {
            println!("FAIL: {e}");
            return ExitCode::FAILURE;
        }
    }
    let failures = check_spaces(dir.path(), &gpu);
    if failures.is_empty() {
        println!(
            "== PASS: the GPU Space saw exactly {} and the CPU Space saw none",
            gpu.uuid
        );
        ExitCode::SUCCESS
    } else {
        for f in &failures {
            println!("FAIL: {f}");
        }
        ExitCode::FAILURE
    }
}

/// Removes the CDI spec the check wrote when the check ends, even by a panic: left behind, it would be the
/// machine's spec for its agents.
struct RemoveOnDrop(&'static str);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.0);
    }
}

fn inventory_json(inv: &spacedock_shared::wire::Inventory) -> Value {
    json!({
        "cpu_cores": inv.cpu_cores,
        "memory_bytes": inv.memory_bytes,
        "disk_free_bytes": inv.disk_free_bytes,
        "kernel": inv.kernel,
        "driver_version": inv.driver_version,
        "cuda_version": inv.cuda_version,
        "gpu_note": inv.gpu_note,
        "gpus": inv.gpus.iter().map(|g| json!({
            "index": g.index,
            "uuid": g.uuid,
            "name": g.name,
            "memory_total_bytes": g.memory_total_bytes,
            "mig_mode": g.mig_mode,
            "mig_devices": g.mig_devices,
            "compute_capability": g.compute_capability,
            "pci_bus_id": g.pci_bus_id,
            "power_limit_milliwatts": g.power_limit_milliwatts,
            "ecc_uncorrected": g.ecc_uncorrected,
            "xid_errors": g.xid_errors,
        })).collect::<Vec<_>>(),
    })
}

/// A CDI spec with what `nvidia-smi` needs: the control and UVM nodes for every GPU, each GPU's own node,
/// `nvidia-smi` and `libnvidia-ml.so.1` bound read-only where the host has them.
fn minimal_cdi_spec(gpus: &[GpuInfo]) -> Value {
    let node = |path: &str| json!({ "path": path });
    let common: Vec<Value> = ["/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools"]
        .into_iter()
        .filter(|p| Path::new(p).exists())
        .map(node)
        .collect();
    let mut mounts = Vec::new();
    let mut env = Vec::new();
    if let Some(smi) = find_program(
        "nvidia-smi",
        &["/usr/local/nvidia/bin", "/usr/bin", "/usr/local/bin"],
    ) {
        mounts.push(json!({
            "hostPath": smi, "containerPath": "/usr/bin/nvidia-smi", "options": ["ro", "nosuid", "nodev", "bind"],
        }));
    }
    let lib_dirs = [
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib64",
        "/usr/local/nvidia/lib64",
        "/usr/local/nvidia/lib",
        "/usr/lib",
    ];
    if let Some(nvml) = find_file("libnvidia-ml.so.1", &lib_dirs) {
        let real = std::fs::canonicalize(&nvml).unwrap_or(nvml);
        mounts.push(json!({
            "hostPath": real, "containerPath": "/usr/lib/nvidia/libnvidia-ml.so.1",
            "options": ["ro", "nosuid", "nodev", "bind"],
        }));
        env.push("LD_LIBRARY_PATH=/usr/lib/nvidia");
    }
    json!({
        "cdiVersion": "0.5.0",
        "kind": "nvidia.com/gpu",
        "devices": gpus.iter().map(|g| json!({
            "name": g.index.to_string(),
            "containerEdits": { "deviceNodes": [node(&format!("/dev/nvidia{}", g.index))] },
        })).collect::<Vec<_>>(),
        "containerEdits": { "deviceNodes": common, "mounts": mounts, "env": env },
    })
}

/// The first `name` in `dirs` that is a program itself (ELF), not a script that runs another.
fn find_program(name: &str, dirs: &[&str]) -> Option<PathBuf> {
    dirs.iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| std::fs::read(p).is_ok_and(|bytes| bytes.starts_with(b"\x7fELF")))
}

fn find_file(name: &str, dirs: &[&str]) -> Option<PathBuf> {
    dirs.iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists())
}

/// The files a dynamically linked program needs (its loader and libraries, as `ldd` lists them).
fn shared_libraries(program: &Path) -> Vec<PathBuf> {
    let Ok(out) = std::process::Command::new("ldd").arg(program).output() else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let path = line.split("=>").last()?.split_whitespace().next()?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// A busybox image that runs `REPORT_SCRIPT`, with the C library `nvidia-smi` and `libnvidia-ml` need (the CDI
/// spec binds those two in; the C library is the image's part, as in any distribution image).
fn report_image(dir: &Path) -> PathBuf {
    let mut needed: Vec<PathBuf> = Vec::new();
    for program in cdi::load(&cdi::CDI_DIRS)
        .unwrap_or_default()
        .iter()
        .flat_map(cdi::CdiSpec::mount_sources)
    {
        for lib in shared_libraries(Path::new(&program)) {
            if !lib.to_string_lossy().contains("nvidia") && !needed.contains(&lib) {
                needed.push(lib);
            }
        }
    }
    let contents: Vec<(String, Vec<u8>)> = needed
        .iter()
        .filter_map(|p| {
            let bytes = std::fs::read(p).ok()?;
            Some((
                p.to_string_lossy().trim_start_matches('/').to_owned(),
                bytes,
            ))
        })
        .collect();
    let mut files: Vec<(&str, &[u8], u32)> = vec![("bin/report", REPORT_SCRIPT.as_bytes(), 0o755)];
    files.extend(
        contents
            .iter()
            .map(|(p, b)| (p.as_str(), b.as_slice(), 0o755)),
    );
    let busybox = std::fs::read("/bin/busybox").expect("/bin/busybox: install busybox-static");
    let name = "gpu-check/report:1";
    let archive =
        spacedock_shared::image::busybox_archive(name, &busybox, &["/bin/report"], &files).unwrap();
    let path = dir.join("report.tar");
    std::fs::write(&path, archive).unwrap();
    path
}

/// Runs the two Spaces; returns what failed.
fn check_spaces(dir: &Path, gpu: &GpuInfo) -> Vec<String> {
    let config = dir.join("coordinator.toml");
    let model = gpu.name.trim_start_matches("NVIDIA").trim();
    let vram_gb = gpu.memory_total_bytes >> 30;
    std::fs::write(
        &config,
        format!(
            r#"
[flavors]
include_defaults = true
[[flavors.flavor]]
name = "gpu-check"
vcpu = 2
memory_gib = 4
disk_gib = 1
price_per_hour = "1.00"
accelerator = {{ vendor = "nvidia", model = "{model}", count = 1, vram_gb = {vram_gb} }}
[[flavors.flavor]]
name = "cpu-check"
vcpu = 1
memory_gib = 1
disk_gib = 1
price_per_hour = "0.01"
"#
        ),
    )
    .unwrap();
    let c = Coordinator::bootstrap_with(dir, &["--config", config.to_str().unwrap()]);
    let admin = c.admin_token();
    let call = |method: &str, path: &str, body: Option<Value>| {
        api(&c.api_url, &admin, method, path, body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    };
    let token = call(
        "POST",
        "/api/cluster/join-tokens",
        Some(json!({ "role": "agent" })),
    );
    let namespace = format!("gpu-check-{}", std::process::id());
    let _containers = ContainersGuard {
        namespace: namespace.clone(),
    };
    let agent = Agent::start(
        dir,
        "gpu-node",
        &c.quic_addr,
        token["token"].as_str(),
        &[
            "--containerd-namespace",
            &namespace,
            "--container-subnet",
            "10.251.0.0/24",
        ],
    );
    let env = [
        ("HF_ENDPOINT", c.api_url.as_str()),
        ("HF_TOKEN", admin.as_str()),
    ];
    let ready = wait(Duration::from_secs(30), || {
        let nodes = api(&c.api_url, &admin, "GET", "/api/nodes", None).ok()?;
        (nodes[0]["state"] == "ready").then_some(())
    });
    if ready.is_none() {
        return vec![format!(
            "the agent was not ready in 30 s; its log:\n{}",
            agent.log_text()
        )];
    }
    println!("== spacedock nodes");
    println!("{}", run("spacedock", &["nodes"], &env).stdout);
    let out = run(
        "spacedock",
        &["image", "import", report_image(dir).to_str().unwrap()],
        &env,
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    let mut failures = Vec::new();
    for (name, flavor) in [("gpu", "gpu-check"), ("cpu", "cpu-check")] {
        let id = format!("admin/{name}");
        call(
            "POST",
            "/api/repos/create",
            Some(json!({ "type": "space", "name": name, "sdk": "docker" })),
        );
        call(
            "POST",
            &format!("/api/spaces/{id}/hardware"),
            Some(json!({ "flavor": flavor })),
        );
        call(
            "PUT",
            &format!("/api/spaces/{id}/image"),
            Some(json!({ "image": "gpu-check/report:1", "port": 8080, "startupTimeout": 60 })),
        );
        let runtime = || {
            api(
                &c.api_url,
                &admin,
                "GET",
                &format!("/api/spaces/{id}/runtime"),
                None,
            )
            .unwrap_or_default()
        };
        let settled = wait(Duration::from_secs(90), || {
            let r = runtime();
            matches!(
                r["stage"].as_str(),
                Some("RUNNING" | "RUNTIME_ERROR" | "BUILD_ERROR")
            )
            .then_some(r)
        });
        let Some(runtime) = settled.filter(|r| r["stage"] == "RUNNING") else {
            failures.push(format!(
                "{id} on {flavor} did not run: {}\nagent log:\n{}",
                runtime(),
                agent.log_text()
            ));
            continue;
        };
        let report = http_get(&c.api_url, &format!("admin-{name}.localhost"), "/gpu.txt")
            .map(|(_, body)| body)
            .unwrap_or_else(|e| e);
        println!("== {id} on {flavor}: {}\n{report}", runtime["hardware"]);
        failures.extend(judge(name, &report, gpu));
    }
    println!("== spacedock nodes (with the allocations)");
    println!("{}", run("spacedock", &["nodes"], &env).stdout);
    println!("== the agent's log\n{}", agent.log_text());
    failures
}

/// What the report of Space `name` must say.
fn judge(name: &str, report: &str, gpu: &GpuInfo) -> Vec<String> {
    let mut failures = Vec::new();
    let mut want = |ok: bool, what: String| {
        if !ok {
            failures.push(format!("admin/{name}: {what}"));
        }
    };
    if name == "gpu" {
        let node = format!("open /dev/nvidia{}: ok", gpu.index);
        want(report.contains(&node), format!("no `{node}` in its report"));
        want(
            !report.contains("refused"),
            "a device it was given does not open".into(),
        );
        let visible = format!("NVIDIA_VISIBLE_DEVICES={}", gpu.uuid);
        want(report.contains(&visible), format!("no `{visible}`"));
        if !report.contains("no nvidia-smi in the container") {
            let listed = format!("(UUID: {})", gpu.uuid);
            want(
                report.contains(&listed),
                format!("nvidia-smi -L does not list `{listed}`"),
            );
        }
    } else {
        want(
            report.contains("no /dev/nvidia* devices"),
            "a CPU Space sees GPU devices".into(),
        );
        want(
            report.contains("NVIDIA_VISIBLE_DEVICES=unset"),
            "a CPU Space has NVIDIA_VISIBLE_DEVICES".into(),
        );
    }
    failures
}

fn wait<T>(limit: Duration, f: impl Fn() -> Option<T>) -> Option<T> {
    let started = Instant::now();
    while started.elapsed() < limit {
        if let Some(v) = f() {
            return Some(v);
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpu() -> GpuInfo {
        GpuInfo {
            index: 0,
            uuid: "GPU-4f2a8c1e".into(),
            name: "NVIDIA H200".into(),
            memory_total_bytes: 150_754_820_096,
            mig_mode: "disabled".into(),
            mig_devices: vec![],
            compute_capability: "9.0".into(),
            pci_bus_id: "00000000:00:05.0".into(),
            power_limit_milliwatts: 700_000,
            ecc_uncorrected: Some(0),
            xid_errors: 0,
            last_xid: None,
        }
    }

    #[test]
    fn the_minimal_cdi_spec_gives_each_gpu_its_node() {
        let spec = minimal_cdi_spec(&[gpu()]);
        let parsed = cdi::parse(&spec.to_string(), "written.json").unwrap();
        let edits = cdi::edits_for(&[parsed], &[("GPU-4f2a8c1e".into(), 0)]).unwrap();
        assert!(edits.device_nodes.iter().any(|n| n.path == "/dev/nvidia0"));
        assert!(
            edits
                .env
                .contains(&"NVIDIA_VISIBLE_DEVICES=GPU-4f2a8c1e".to_owned())
        );
    }

    #[test]
    fn reports_are_judged() {
        let good = "NVIDIA_VISIBLE_DEVICES=GPU-4f2a8c1e\nopen /dev/nvidia0: ok\nopen /dev/nvidiactl: ok\n\
                    GPU 0: NVIDIA H200 (UUID: GPU-4f2a8c1e)\n";
        let no_smi = good.replace("(UUID: GPU-4f2a8c1e)", "");
        assert_eq!(judge("gpu", &no_smi, &gpu()).len(), 1);
        assert!(judge("gpu", good, &gpu()).is_empty());
        let refused = good.replace("/dev/nvidiactl: ok", "/dev/nvidiactl: refused");
        assert_eq!(judge("gpu", &refused, &gpu()).len(), 1);
        let cpu = "NVIDIA_VISIBLE_DEVICES=unset\nno /dev/nvidia* devices\nno nvidia-smi in the container\n";
        assert!(judge("cpu", cpu, &gpu()).is_empty());
        assert_eq!(judge("cpu", good, &gpu()).len(), 2);
    }
}
