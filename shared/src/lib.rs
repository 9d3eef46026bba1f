//! spacedock's shared vocabulary: the Space config, repo names and hosts, the flavor catalog and the wire protocol.
//!
//! Pure types and decision logic: no IO, no clocks, no async runtime. Every role links this crate; none links another
//! role's crate.

pub mod dockerfile;
pub mod duration;
pub mod flavor;
pub mod image;
pub mod lfs;
pub mod money;
pub mod names;
pub mod secret_scan;
pub mod space_config;
pub mod wire;
pub mod yaml;
