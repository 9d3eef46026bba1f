//! The hardware flavor catalog: named slots (vCPU, memory, disk, accelerator, price), Hugging Face's by default,
//! extended or overridden by operators, and checked against the node shapes that can hold them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::money::MicroUsd;

/// The flavor a Space gets when it asks for nothing.
pub const DEFAULT_FLAVOR: &str = "cpu-basic";

/// A named hardware slot.
#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[serde(deny_unknown_fields)]
pub struct Flavor {
    /// The flavor string clients use (`t4-small`, `h200x8`): lowercase letters, digits and `-`.
    pub name: String,
    /// The name shown to people (`Nvidia T4 small`); defaults to `name`.
    #[serde(default)]
    pub pretty_name: String,
    /// Virtual CPUs reserved for the Space.
    pub vcpu: u32,
    /// Memory limit in GiB.
    pub memory_gib: u32,
    /// Ephemeral disk in GiB.
    pub disk_gib: u32,
    /// GPUs reserved for the Space, if any.
    #[serde(default)]
    pub accelerator: Option<Accelerator>,
    /// Price per running hour, billed per minute, as a decimal string in USD (`"0.40"`).
    pub price_per_hour: MicroUsd,
    /// ZeroGPU-style: the Space holds no GPU while idle and leases one per call under a daily quota.
    #[serde(default)]
    pub gpu_leased_per_call: bool,
}

/// GPUs a flavor needs.
#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[serde(deny_unknown_fields)]
pub struct Accelerator {
    /// Vendor, lowercase (`nvidia`).
    pub vendor: String,
    /// Model as it appears in the device name (`T4`, `A100`, `H200`, `RTX PRO 6000`).
    pub model: String,
    /// Number of whole GPUs.
    pub count: u32,
    /// Nominal memory of each GPU in GB, as marketed (`16` for a T4).
    pub vram_gb: u32,
}

/// A kind of node the fleet has (or will have): what one machine offers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeShape {
    /// A name for messages (`h200-box`).
    pub name: String,
    pub vcpu: u32,
    pub memory_gib: u32,
    pub disk_gib: u32,
    /// The node's GPUs, by device name as NVML reports it.
    #[serde(default)]
    pub gpus: Vec<GpuShape>,
}

/// A group of identical GPUs on a node shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuShape {
    /// Vendor, lowercase (`nvidia`).
    #[serde(default = "nvidia")]
    pub vendor: String,
    /// Device name as NVML reports it (`NVIDIA H200`).
    pub name: String,
    /// Total memory per device in MiB as NVML reports it (`143771`).
    pub memory_mib: u64,
    pub count: u32,
}

fn nvidia() -> String {
    "nvidia".into()
}

/// Operator changes to the catalog, from the coordinator config's `[flavors]` table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogConfig {
    /// Start from Hugging Face's Spaces flavors.
    #[serde(default = "yes")]
    pub include_defaults: bool,
    /// Names of default flavors to leave out.
    #[serde(default)]
    pub remove: Vec<String>,
    /// Flavors to add; one with a default flavor's name replaces it.
    #[serde(default, rename = "flavor")]
    pub flavors: Vec<Flavor>,
}

impl Default for CatalogConfig {
    fn default() -> Self {
        CatalogConfig {
            include_defaults: true,
            remove: Vec::new(),
            flavors: Vec::new(),
        }
    }
}

fn yes() -> bool {
    true
}

/// A problem with a catalog, naming the flavor and field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("flavor `{flavor}`: {field}: {message}")]
pub struct CatalogError {
    pub flavor: String,
    pub field: &'static str,
    pub message: String,
}

/// The flavors in force, by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Catalog {
    flavors: BTreeMap<String, Flavor>,
}

impl Accelerator {
    /// Whether one device with this NVML name and total memory is a GPU this flavor accepts.
    /// The model's words must appear in order in the device name (`A100` in `NVIDIA A100-SXM4-80GB`, but `L4` is
    /// not in `NVIDIA L40S`), and the device must have at least 90% of the nominal memory, since NVML reports
    /// usable MiB (a "16 GB" T4 reports 15360 MiB, a "141 GB" H200 143771 MiB).
    pub fn accepts(&self, vendor: &str, device_name: &str, memory_mib: u64) -> bool {
        let words = |s: &str| -> Vec<String> {
            s.split(|c: char| !c.is_ascii_alphanumeric())
                .filter(|w| !w.is_empty())
                .map(str::to_ascii_lowercase)
                .collect()
        };
        let model = words(&self.model);
        let name = words(device_name);
        let named = !model.is_empty() && name.windows(model.len()).any(|w| w == model.as_slice());
        let enough_memory = memory_mib * 10 >= u64::from(self.vram_gb) * 1024 * 9;
        vendor.eq_ignore_ascii_case(&self.vendor) && named && enough_memory
    }
}

impl NodeShape {
    /// Whether an empty node of this shape can hold the flavor.
    pub fn fits(&self, flavor: &Flavor) -> bool {
        let resources = self.vcpu >= flavor.vcpu
            && self.memory_gib >= flavor.memory_gib
            && self.disk_gib >= flavor.disk_gib;
        let gpus = match &flavor.accelerator {
            None => true,
            Some(acc) => {
                let n_matching: u32 = self
                    .gpus
                    .iter()
                    .filter(|g| acc.accepts(&g.vendor, &g.name, g.memory_mib))
                    .map(|g| g.count)
                    .sum();
                n_matching >= acc.count
            }
        };
        resources && gpus
    }
}

impl Catalog {
    /// Hugging Face's Spaces flavors (reference section 8), prices as listed.
    pub fn huggingface() -> Catalog {
        let flavors = default_flavors()
            .into_iter()
            .map(|f| (f.name.clone(), f))
            .collect();
        Catalog { flavors }
    }

    /// Applies an operator's changes to the defaults and validates the result, reporting every problem.
    pub fn from_config(config: &CatalogConfig) -> Result<Catalog, Vec<CatalogError>> {
        let mut catalog = if config.include_defaults {
            Catalog::huggingface()
        } else {
            Catalog {
                flavors: BTreeMap::new(),
            }
        };
        let mut errors = Vec::new();
        for name in &config.remove {
            if catalog.flavors.remove(name).is_none() {
                errors.push(CatalogError {
                    flavor: name.clone(),
                    field: "remove",
                    message: "no such flavor to remove".into(),
                });
            }
        }
        let mut added = BTreeMap::new();
        for flavor in &config.flavors {
            if added.insert(flavor.name.clone(), ()).is_some() {
                errors.push(CatalogError {
                    flavor: flavor.name.clone(),
                    field: "name",
                    message: "defined more than once".into(),
                });
            }
            errors.extend(validate(flavor));
            let mut flavor = flavor.clone();
            if flavor.pretty_name.is_empty() {
                flavor.pretty_name = flavor.name.clone();
            }
            catalog.flavors.insert(flavor.name.clone(), flavor);
        }
        if !catalog.flavors.contains_key(DEFAULT_FLAVOR) {
            errors.push(CatalogError {
                flavor: DEFAULT_FLAVOR.into(),
                field: "name",
                message: "the catalog must keep the default flavor, which Spaces get when they ask for none".into(),
            });
        }
        if errors.is_empty() {
            Ok(catalog)
        } else {
            Err(errors)
        }
    }

    /// A catalog of exactly these flavors (as stored in the cluster state; validated when it was configured).
    pub fn from_flavors(flavors: impl IntoIterator<Item = Flavor>) -> Catalog {
        Catalog {
            flavors: flavors.into_iter().map(|f| (f.name.clone(), f)).collect(),
        }
    }

    pub fn get(&self, name: &str) -> Option<&Flavor> {
        self.flavors.get(name)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.flavors.contains_key(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Flavor> {
        self.flavors.values()
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.flavors.keys().map(String::as_str)
    }

    /// The flavors no node shape can hold, with a message for each.
    pub fn unsatisfiable(&self, shapes: &[NodeShape]) -> Vec<CatalogError> {
        self.flavors
            .values()
            .filter(|f| !shapes.iter().any(|s| s.fits(f)))
            .map(|f| CatalogError {
                flavor: f.name.clone(),
                field: "resources",
                message: format!(
                    "no node shape can hold it (needs {}); shapes: {}",
                    describe(f),
                    shapes
                        .iter()
                        .map(|s| s.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            })
            .collect()
    }
}

/// `8 vCPU, 30 GiB, 100 GiB disk, 1x nvidia T4 16 GB`.
pub fn describe(f: &Flavor) -> String {
    let mut s = format!(
        "{} vCPU, {} GiB, {} GiB disk",
        f.vcpu, f.memory_gib, f.disk_gib
    );
    if let Some(a) = &f.accelerator {
        s.push_str(&format!(
            ", {}x {} {} {} GB",
            a.count, a.vendor, a.model, a.vram_gb
        ));
    }
    s
}

fn validate(f: &Flavor) -> Vec<CatalogError> {
    let mut errors = Vec::new();
    let mut err = |field: &'static str, message: &str| {
        errors.push(CatalogError {
            flavor: f.name.clone(),
            field,
            message: message.into(),
        })
    };
    let name_ok = !f.name.is_empty()
        && f.name.len() <= 63
        && f.name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !f.name.starts_with('-')
        && !f.name.ends_with('-');
    if !name_ok {
        err(
            "name",
            "must be 1 to 63 lowercase letters, digits or `-`, not starting or ending with `-`",
        );
    }
    if f.vcpu == 0 {
        err("vcpu", "must be at least 1");
    }
    if f.memory_gib == 0 {
        err("memory_gib", "must be at least 1");
    }
    if f.disk_gib == 0 {
        err("disk_gib", "must be at least 1");
    }
    if let Some(a) = &f.accelerator {
        if a.count == 0 {
            err("accelerator.count", "must be at least 1");
        }
        if a.vram_gb == 0 {
            err("accelerator.vram_gb", "must be at least 1");
        }
        if a.model.trim().is_empty() {
            err("accelerator.model", "must name the GPU model");
        }
        if a.vendor != "nvidia" {
            err(
                "accelerator.vendor",
                "only `nvidia` GPUs are supported (found through NVML)",
            );
        }
    }
    if f.price_per_hour > MicroUsd::dollars(100_000) {
        err(
            "price_per_hour",
            "is over $100000 an hour; is a decimal point missing?",
        );
    }
    errors
}

fn default_flavors() -> Vec<Flavor> {
    #[allow(clippy::type_complexity)]
    let table: &[(&str, &str, u32, u32, u32, Option<(&str, u32, u32)>, u64)] = &[
        // name, pretty name, vCPU, memory GiB, disk GiB, (model, count, GB each), cents per hour
        ("cpu-basic", "CPU basic", 2, 16, 50, None, 0),
        ("cpu-upgrade", "CPU upgrade", 8, 32, 50, None, 3),
        (
            "t4-small",
            "Nvidia T4 small",
            4,
            15,
            50,
            Some(("T4", 1, 16)),
            40,
        ),
        (
            "t4-medium",
            "Nvidia T4 medium",
            8,
            30,
            100,
            Some(("T4", 1, 16)),
            60,
        ),
        ("l4x1", "1x Nvidia L4", 8, 30, 400, Some(("L4", 1, 24)), 80),
        (
            "l4x4",
            "4x Nvidia L4",
            48,
            186,
            3200,
            Some(("L4", 4, 24)),
            380,
        ),
        (
            "l40sx1",
            "1x Nvidia L40S",
            8,
            62,
            380,
            Some(("L40S", 1, 48)),
            180,
        ),
        (
            "l40sx4",
            "4x Nvidia L40S",
            48,
            382,
            3200,
            Some(("L40S", 4, 48)),
            830,
        ),
        (
            "l40sx8",
            "8x Nvidia L40S",
            192,
            1534,
            6500,
            Some(("L40S", 8, 48)),
            2350,
        ),
        (
            "a10g-small",
            "Nvidia A10G small",
            4,
            15,
            110,
            Some(("A10G", 1, 24)),
            100,
        ),
        (
            "a10g-large",
            "Nvidia A10G large",
            12,
            46,
            200,
            Some(("A10G", 1, 24)),
            150,
        ),
        (
            "a10g-largex2",
            "2x Nvidia A10G large",
            24,
            92,
            1000,
            Some(("A10G", 2, 24)),
            300,
        ),
        (
            "a10g-largex4",
            "4x Nvidia A10G large",
            48,
            184,
            2000,
            Some(("A10G", 4, 24)),
            500,
        ),
        (
            "a100-large",
            "Nvidia A100 large",
            12,
            142,
            1000,
            Some(("A100", 1, 80)),
            250,
        ),
        (
            "a100x4",
            "4x Nvidia A100",
            48,
            568,
            4000,
            Some(("A100", 4, 80)),
            1000,
        ),
        (
            "a100x8",
            "8x Nvidia A100",
            96,
            1136,
            8000,
            Some(("A100", 8, 80)),
            2000,
        ),
    ];
    let mut flavors: Vec<Flavor> = table
        .iter()
        .map(
            |&(name, pretty, vcpu, memory_gib, disk_gib, gpu, cents)| Flavor {
                name: name.into(),
                pretty_name: pretty.into(),
                vcpu,
                memory_gib,
                disk_gib,
                accelerator: gpu.map(|(model, count, vram_gb)| Accelerator {
                    vendor: "nvidia".into(),
                    model: model.into(),
                    count,
                    vram_gb,
                }),
                price_per_hour: MicroUsd::cents(cents),
                gpu_leased_per_call: false,
            },
        )
        .collect();
    // ZeroGPU: CPU-basic resources while idle; a GPU (half an RTX PRO 6000 by default) is leased per call.
    flavors.push(Flavor {
        name: "zero-a10g".into(),
        pretty_name: "ZeroGPU".into(),
        vcpu: 2,
        memory_gib: 16,
        disk_gib: 50,
        accelerator: None,
        price_per_hour: MicroUsd::ZERO,
        gpu_leased_per_call: true,
    });
    flavors
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h200_box() -> NodeShape {
        NodeShape {
            name: "h200-box".into(),
            vcpu: 192,
            memory_gib: 2048,
            disk_gib: 30_000,
            gpus: vec![GpuShape {
                vendor: "nvidia".into(),
                name: "NVIDIA H200".into(),
                memory_mib: 143_771,
                count: 8,
            }],
        }
    }

    #[test]
    fn default_catalog_matches_the_hub() {
        let c = Catalog::huggingface();
        assert_eq!(c.iter().count(), 17);
        let t4 = c.get("t4-small").unwrap();
        assert_eq!((t4.vcpu, t4.memory_gib, t4.disk_gib), (4, 15, 50));
        assert_eq!(t4.price_per_hour, MicroUsd(400_000));
        assert_eq!(
            c.get("l40sx8").unwrap().price_per_hour.to_string(),
            "$23.50"
        );
        assert_eq!(c.get("cpu-basic").unwrap().price_per_hour, MicroUsd::ZERO);
        assert!(c.get("zero-a10g").unwrap().gpu_leased_per_call);
        for f in c.iter() {
            assert!(validate(f).is_empty(), "{f:?}");
        }
    }

    #[test]
    fn gpu_names_match_by_words_and_memory() {
        let acc = |model: &str, vram_gb| Accelerator {
            vendor: "nvidia".into(),
            model: model.into(),
            count: 1,
            vram_gb,
        };
        assert!(acc("T4", 16).accepts("nvidia", "Tesla T4", 15_360));
        assert!(acc("A100", 80).accepts("nvidia", "NVIDIA A100-SXM4-80GB", 81_920));
        assert!(!acc("A100", 80).accepts("nvidia", "NVIDIA A100-SXM4-40GB", 40_960));
        assert!(!acc("L4", 24).accepts("nvidia", "NVIDIA L40S", 46_068));
        assert!(acc("L40S", 48).accepts("NVIDIA", "NVIDIA L40S", 46_068));
        assert!(acc("H200", 141).accepts("nvidia", "NVIDIA H200", 143_771));
        assert!(acc("RTX PRO 6000", 96).accepts(
            "nvidia",
            "NVIDIA RTX PRO 6000 Blackwell Server Edition",
            97_887
        ));
        assert!(!acc("T4", 16).accepts("amd", "Tesla T4", 15_360));
    }

    #[test]
    fn operators_add_override_and_remove() {
        let config: CatalogConfig = toml::from_str(
            r#"
            remove = ["a100x8"]
            [[flavor]]
            name = "h200"
            vcpu = 23
            memory_gib = 256
            disk_gib = 3000
            price_per_hour = "5.00"
            accelerator = { vendor = "nvidia", model = "H200", count = 1, vram_gb = 141 }
            [[flavor]]
            name = "cpu-upgrade"
            vcpu = 16
            memory_gib = 64
            disk_gib = 100
            price_per_hour = "0.05"
            "#,
        )
        .unwrap();
        let c = Catalog::from_config(&config).unwrap();
        assert!(c.get("a100x8").is_none());
        assert_eq!(c.get("h200").unwrap().pretty_name, "h200");
        assert_eq!(c.get("cpu-upgrade").unwrap().vcpu, 16);
        let unsat: Vec<_> = c
            .unsatisfiable(&[h200_box()])
            .into_iter()
            .map(|e| e.flavor)
            .collect();
        assert!(!unsat.contains(&"h200".to_string()));
        assert!(!unsat.contains(&"cpu-basic".to_string()));
        assert!(unsat.contains(&"t4-small".to_string()));
    }

    #[test]
    fn every_problem_is_reported() {
        let config: CatalogConfig = toml::from_str(
            r#"
            include_defaults = false
            remove = ["nope"]
            [[flavor]]
            name = "Bad_Name"
            vcpu = 0
            memory_gib = 0
            disk_gib = 1
            price_per_hour = "1"
            accelerator = { vendor = "amd", model = " ", count = 0, vram_gb = 0 }
            "#,
        )
        .unwrap();
        let errors = Catalog::from_config(&config).unwrap_err();
        let fields: Vec<_> = errors.iter().map(|e| e.field).collect();
        for want in [
            "remove",
            "name",
            "vcpu",
            "memory_gib",
            "accelerator.count",
            "accelerator.vram_gb",
            "accelerator.model",
            "accelerator.vendor",
        ] {
            assert!(fields.contains(&want), "{want} missing from {errors:?}");
        }
        assert!(errors.iter().any(|e| e.flavor == "cpu-basic"), "{errors:?}");
    }

    #[test]
    fn unknown_fields_are_refused() {
        let err = toml::from_str::<CatalogConfig>("[[flavor]]\nname='x'\nvcpus=2\n").unwrap_err();
        assert!(err.to_string().contains("vcpus"), "{err}");
    }
}
