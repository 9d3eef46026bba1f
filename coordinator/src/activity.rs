//! When each Space last saw a request, on this coordinator (the leader, where the ingress's tunnels end: a
//! follower passes Space requests to it). In memory: a new leader gives every Space a full sleep time first.

use std::collections::HashMap;
use std::sync::Mutex;

/// Last request time (ms since the epoch) per Space repo key.
#[derive(Debug, Default)]
pub struct Activity {
    last: Mutex<HashMap<String, u64>>,
}

impl Activity {
    pub fn touch(&self, space: &str, at: u64) {
        self.last
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(space.to_owned(), at);
    }

    pub fn last(&self, space: &str) -> Option<u64> {
        self.last
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(space)
            .copied()
    }
}
