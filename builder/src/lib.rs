//! The builder's logic, apart from its service: Dockerfile parsing, reproducible layers and cache keys.

pub mod dockerfile;
pub mod layer;
