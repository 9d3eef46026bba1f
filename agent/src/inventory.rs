//! What this node has: CPU, memory, free disk under the data dir, kernel, and GPUs through NVML. Without an
//! NVIDIA driver the node simply has no GPUs, with one line saying why.

use std::path::Path;

use spacedock_shared::wire::{GpuInfo, Inventory, Label};

/// Collects the inventory; never fails (what cannot be read is zero or empty).
pub fn collect(
    name: &str,
    labels: &std::collections::BTreeMap<String, String>,
    data_dir: &Path,
) -> Inventory {
    let memory_bytes = sysinfo::System::new()
        .map(|mut system| {
            system.refresh_memory();
            system.total_memory()
        })
        .unwrap_or(0);
    let gpus = nvml();
    Inventory {
        name: name.to_owned(),
        labels: labels
            .iter()
            .map(|(k, v)| Label {
                key: k.clone(),
                value: v.clone(),
            })
            .collect(),
        cpu_cores: std::thread::available_parallelism()
            .map_or(0, |n| u32::try_from(n.get()).unwrap_or(u32::MAX)),
        memory_bytes,
        disk_free_bytes: disk_free(data_dir),
        kernel: sysinfo::System::kernel_version().unwrap_or_default(),
        containerd_version: String::new(),
        driver_version: gpus.driver_version,
        cuda_version: gpus.cuda_version,
        gpus: gpus.devices,
        gpu_note: gpus.note,
    }
}

/// The host name, for a node that is not given one.
pub fn host_name() -> String {
    sysinfo::System::host_name().unwrap_or_else(|_| "node".to_owned())
}

fn disk_free(path: &Path) -> u64 {
    let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let Ok(disks) = sysinfo::Disks::new_with_refreshed_list() else {
        return 0;
    };
    disks
        .iter()
        .filter(|d| path.starts_with(d.mount_point()))
        .max_by_key(|d| d.mount_point().as_os_str().len())
        .map_or(0, |d| d.available_space())
}

struct Gpus {
    devices: Vec<GpuInfo>,
    driver_version: String,
    cuda_version: String,
    note: String,
}

fn nvml() -> Gpus {
    let nvml = match nvml_wrapper::Nvml::init() {
        Ok(nvml) => nvml,
        Err(e) => {
            let note = format!("no GPUs: NVML is not available ({e})");
            return Gpus {
                devices: Vec::new(),
                driver_version: String::new(),
                cuda_version: String::new(),
                note,
            };
        }
    };
    let driver_version = nvml.sys_driver_version().unwrap_or_default();
    let cuda_version = nvml
        .sys_cuda_driver_version()
        .map(|v| format!("{}.{}", v / 1000, (v % 1000) / 10))
        .unwrap_or_default();
    let count = nvml.device_count().unwrap_or(0);
    let mut devices = Vec::new();
    let mut problems = Vec::new();
    for index in 0..count {
        match nvml.device_by_index(index) {
            Ok(device) => devices.push(gpu(index, &device)),
            Err(e) => problems.push(format!("GPU {index}: {e}")),
        }
    }
    Gpus {
        devices,
        driver_version,
        cuda_version,
        note: problems.join("; "),
    }
}

fn gpu(index: u32, device: &nvml_wrapper::Device<'_>) -> GpuInfo {
    use nvml_wrapper::enum_wrappers::device::{EccCounter, MemoryError};
    let mig_mode = match device.mig_mode() {
        Ok(m) if m.current == 1 => "enabled",
        Ok(_) => "disabled",
        Err(_) => "",
    };
    let mig_devices = if mig_mode == "enabled" {
        let n = device.mig_device_count().unwrap_or(0);
        (0..n)
            .filter_map(|i| device.mig_device_by_index(i).ok())
            .filter_map(|m| m.uuid().ok())
            .collect()
    } else {
        Vec::new()
    };
    GpuInfo {
        index,
        uuid: device.uuid().unwrap_or_default(),
        name: device.name().unwrap_or_default(),
        memory_total_bytes: device.memory_info().map_or(0, |m| m.total),
        mig_mode: mig_mode.to_owned(),
        mig_devices,
        compute_capability: device
            .cuda_compute_capability()
            .map(|c| format!("{}.{}", c.major, c.minor))
            .unwrap_or_default(),
        pci_bus_id: device.pci_info().map(|p| p.bus_id).unwrap_or_default(),
        power_limit_milliwatts: device.power_management_limit().unwrap_or(0),
        ecc_uncorrected: device
            .total_ecc_errors(MemoryError::Uncorrected, EccCounter::Volatile)
            .ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inventory_without_a_gpu_driver_is_clean() {
        let dir = tempfile::tempdir().unwrap();
        let labels = std::collections::BTreeMap::from([("rack".to_owned(), "r1".to_owned())]);
        let inv = collect("n1", &labels, dir.path());
        assert_eq!(inv.name, "n1");
        assert!(inv.cpu_cores >= 1);
        assert!(inv.memory_bytes > 0);
        assert!(inv.disk_free_bytes > 0);
        assert!(!inv.kernel.is_empty());
        assert_eq!(
            inv.labels,
            [Label {
                key: "rack".into(),
                value: "r1".into()
            }]
        );
        // This machine has no NVIDIA driver: no GPUs, and a note saying why (never a panic).
        if inv.gpus.is_empty() {
            assert!(inv.gpu_note.contains("NVML"), "{}", inv.gpu_note);
        }
    }
}
