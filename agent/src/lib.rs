//! The node agent as a library: the `spacedock-agent` binary (`main.rs`) and the container start benchmark
//! (`bin/spacedock-container-bench.rs`) use it.

pub mod allocs;
pub mod cdi;
pub mod config;
pub mod containerd;
pub mod fetch;
pub mod inventory;
pub mod network;
pub mod proxy;
pub mod runtime;
pub mod session;
pub mod spec;
