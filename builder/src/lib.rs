//! The builder's logic, apart from its service: Dockerfile parsing (more as the build steps land).

pub mod dockerfile;
