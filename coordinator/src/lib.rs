//! The coordinator's IO shell around `spacedock-coordinator-core`: storage engine, Raft store and driver, peer
//! transport and HTTP API.

pub mod activity;
pub mod agents;
pub mod api;
pub mod blobs;
pub mod builders;
pub mod config;
pub mod engine;
pub mod git;
pub mod join;
pub mod links;
pub mod node;
pub mod peer;
pub mod quic_server;
pub mod raft_store;
pub mod scheduler;
pub mod service;

pub use spacedock_net::tls;
