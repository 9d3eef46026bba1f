//! The builder's logic, apart from its service: build contexts from git, Dockerfile parsing and planning,
//! reproducible layers and cache keys.

pub mod context;
pub use spacedock_shared::dockerfile;
pub mod image;
pub mod layer;
pub mod plan;
