//! What this node has: CPU, memory, free disk under the data dir, kernel, and GPUs through NVML, with the
//! critical XID errors a watcher thread collects from NVML's event set. Without an NVIDIA driver the node simply
//! has no GPUs, with one line saying why.

use std::path::Path;

use spacedock_shared::wire::{GpuInfo, Inventory, Label};

/// Critical XID errors seen per GPU UUID: how many, and the last code.
#[derive(Debug, Default)]
pub struct XidCounts {
    seen: std::sync::Mutex<std::collections::HashMap<String, (u64, u64)>>,
}

impl XidCounts {
    pub fn record(&self, uuid: &str, xid: u64) {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let entry = seen.entry(uuid.to_owned()).or_insert((0, 0));
        entry.0 += 1;
        entry.1 = xid;
    }

    /// Fills the GPUs' XID fields.
    pub fn apply(&self, gpus: &mut [GpuInfo]) {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        for gpu in gpus {
            if let Some((count, last)) = seen.get(&gpu.uuid) {
                gpu.xid_errors = *count;
                gpu.last_xid = Some(*last);
            }
        }
    }
}

/// Watches NVML's critical XID events on every GPU, on a thread of its own, until the process ends. Without
/// NVML, or GPUs that do not report XID events, there is nothing to watch and it says so once.
pub fn watch_xid(counts: std::sync::Arc<XidCounts>) {
    let spawned = std::thread::Builder::new()
        .name("xid-events".into())
        .spawn(move || {
            use nvml_wrapper::bitmasks::event::EventTypes;
            use nvml_wrapper::enums::event::XidError;
            use nvml_wrapper::error::NvmlError;
            let Ok(nvml) = nvml_wrapper::Nvml::init() else {
                return;
            };
            let Ok(mut set) = nvml.create_event_set() else {
                tracing::warn!("NVML has no event sets here; XID errors are not watched");
                return;
            };
            let mut watched = 0;
            for index in 0..nvml.device_count().unwrap_or(0) {
                let Ok(device) = nvml.device_by_index(index) else {
                    continue;
                };
                let supported = device
                    .supported_event_types()
                    .is_ok_and(|t| t.contains(EventTypes::CRITICAL_XID_ERROR));
                if !supported {
                    tracing::warn!(gpu = index, "this GPU does not report XID events");
                    continue;
                }
                // A failed registration frees the whole set (NVML's rule), so stop there.
                match device.register_events(EventTypes::CRITICAL_XID_ERROR, set) {
                    Ok(registered) => {
                        set = registered;
                        watched += 1;
                    }
                    Err(e) => {
                        tracing::warn!(gpu = index, error = %e.error, "cannot watch XID events");
                        return;
                    }
                }
            }
            if watched == 0 {
                return;
            }
            loop {
                match set.wait(5_000) {
                    Ok(event) => {
                        let xid = match event.event_data {
                            Some(XidError::Value(v)) => v,
                            _ => 0,
                        };
                        let uuid = event.device.uuid().unwrap_or_default();
                        tracing::error!(gpu = uuid, xid, "critical XID error");
                        counts.record(&uuid, xid);
                    }
                    Err(NvmlError::Timeout) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "waiting for XID events failed; watching stops");
                        return;
                    }
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the XID watcher");
    }
}

/// Collects the inventory; never fails (what cannot be read is zero or empty).
pub fn collect(
    name: &str,
    labels: &std::collections::BTreeMap<String, String>,
    data_dir: &Path,
    xids: &XidCounts,
) -> Inventory {
    let memory_bytes = sysinfo::System::new()
        .map(|mut system| {
            system.refresh_memory();
            system.total_memory()
        })
        .unwrap_or(0);
    let mut gpus = nvml();
    xids.apply(&mut gpus.devices);
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
        xid_errors: 0,
        last_xid: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xid_errors_are_counted_per_gpu() {
        let counts = XidCounts::default();
        counts.record("GPU-a", 79);
        counts.record("GPU-a", 48);
        let gpu = |uuid: &str| GpuInfo {
            index: 0,
            uuid: uuid.into(),
            name: "H200".into(),
            memory_total_bytes: 0,
            mig_mode: String::new(),
            mig_devices: vec![],
            compute_capability: String::new(),
            pci_bus_id: String::new(),
            power_limit_milliwatts: 0,
            ecc_uncorrected: None,
            xid_errors: 0,
            last_xid: None,
        };
        let mut gpus = vec![gpu("GPU-a"), gpu("GPU-b")];
        counts.apply(&mut gpus);
        assert_eq!((gpus[0].xid_errors, gpus[0].last_xid), (2, Some(48)));
        assert_eq!((gpus[1].xid_errors, gpus[1].last_xid), (0, None));
    }

    #[test]
    fn inventory_without_a_gpu_driver_is_clean() {
        let dir = tempfile::tempdir().unwrap();
        let labels = std::collections::BTreeMap::from([("rack".to_owned(), "r1".to_owned())]);
        let inv = collect("n1", &labels, dir.path(), &XidCounts::default());
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
