//! The builder: the service that takes build jobs from the cluster (`service`) and runs them (`build`, with
//! RUN steps in containerd through `run`), and its IO-free parts: build contexts from git, Dockerfile parsing
//! and planning, the SDKs' Dockerfiles, reproducible layers, cache keys and image configs.

pub mod build;
pub mod cache;
pub mod context;
pub use spacedock_shared::dockerfile;
pub mod image;
pub mod layer;
pub mod plan;
pub mod preload;
pub mod registry;
pub mod run;
pub mod sdk;
pub mod service;
