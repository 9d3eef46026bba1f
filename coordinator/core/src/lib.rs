//! The coordinator's decision logic, free of IO: the replicated state, the commands that change it, `apply`, and
//! the access rules. The Raft driver, storage and HTTP API in the `spacedock-coordinator` crate wrap it.

pub mod access;
pub mod apply;
pub mod builds;
pub mod command;
pub mod error;
pub mod git;
pub mod schedule;
pub mod state;
pub mod usage;

pub use apply::apply;
pub use command::{Command, Envelope};
pub use error::ApplyError;
pub use state::State;

#[cfg(test)]
mod tests;
