//! The per-minute usage ledger, with no IO. An allocation is billed from when its agent reports it starting
//! (APP_STARTING) until it is removed or fails; pulling, building, sleeping and paused time are free. Each
//! entry is one Space and one wall-clock minute, keyed by the Space's uid and the minute, so recording is
//! idempotent: a new leader recomputing what is due, or an agent reporting twice, neither loses nor repeats a
//! minute. The leader records completed minutes as they pass (`due`); `apply` records the last, partial minute
//! when an allocation stops (`close`).

use spacedock_shared::money::MicroUsd;

use crate::state::{Allocation, Millis, State, UsageMinute};

/// The minute (since the epoch) a time falls in.
pub fn minute_of(at: Millis) -> u64 {
    at / 60_000
}

fn key(space_uid: &str, minute: u64) -> String {
    format!("{space_uid}/{minute:012}")
}

/// The last minute recorded for a Space.
fn last_recorded(state: &State, space_uid: &str) -> Option<u64> {
    let (from, to) = (format!("{space_uid}/"), format!("{space_uid}0"));
    state
        .usage
        .range(from..to)
        .next_back()
        .map(|(_, entry)| entry.minute)
}

/// The entries for `allocation`'s minutes from its start through `through`, that are not recorded yet.
fn entries(state: &State, a: &Allocation, through: u64) -> Vec<UsageMinute> {
    let Some(since) = a.billable_since else {
        return Vec::new();
    };
    let Some(repo) = state.repos.get(&a.space) else {
        return Vec::new();
    };
    let price = state
        .flavors
        .iter()
        .find(|f| f.name == a.flavor)
        .map_or(MicroUsd::ZERO, |f| f.price_per_hour);
    let first = match last_recorded(state, &repo.uid) {
        Some(last) => (last + 1).max(minute_of(since)),
        None => minute_of(since),
    };
    (first..=through)
        .map(|minute| UsageMinute {
            space_uid: repo.uid.clone(),
            space_id: repo.id.clone(),
            namespace: repo.namespace().to_ascii_lowercase(),
            flavor: a.flavor.clone(),
            minute,
            price_per_hour: price,
        })
        .collect()
}

/// Completed minutes of running allocations that are not on the ledger yet (the current minute is not
/// complete and waits).
pub fn due(state: &State, now: Millis) -> Vec<UsageMinute> {
    let Some(through) = minute_of(now).checked_sub(1) else {
        return Vec::new();
    };
    state
        .allocations
        .values()
        .flat_map(|a| entries(state, a, through))
        .collect()
}

/// Records entries not already on the ledger.
pub fn record(state: &mut State, new: &[UsageMinute]) {
    for entry in new {
        state
            .usage
            .entry(key(&entry.space_uid, entry.minute))
            .or_insert_with(|| entry.clone());
    }
}

/// An allocation stops being billed at `at`: its minutes through the one `at` falls in are recorded.
pub fn close(state: &mut State, a: &Allocation, at: Millis) {
    let new = entries(state, a, minute_of(at));
    record(state, &new);
}

/// One line of a usage report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub space_id: String,
    pub namespace: String,
    pub flavor: String,
    pub minutes: u64,
    pub cost: MicroUsd,
}

/// Minutes and cost per Space and flavor for minutes in `[from, to)` (ms), for one namespace or all.
pub fn report(state: &State, namespace: Option<&str>, from: Millis, to: Millis) -> Vec<Line> {
    let (first, end) = (minute_of(from), minute_of(to.saturating_add(59_999)));
    let mut lines: std::collections::BTreeMap<(String, String), Line> = Default::default();
    let wanted = namespace.map(str::to_ascii_lowercase);
    for entry in state.usage.values() {
        if entry.minute < first || entry.minute >= end {
            continue;
        }
        if wanted.as_ref().is_some_and(|ns| *ns != entry.namespace) {
            continue;
        }
        let line = lines
            .entry((entry.space_id.clone(), entry.flavor.clone()))
            .or_insert_with(|| Line {
                space_id: entry.space_id.clone(),
                namespace: entry.namespace.clone(),
                flavor: entry.flavor.clone(),
                minutes: 0,
                cost: MicroUsd::ZERO,
            });
        line.minutes += 1;
        line.cost = MicroUsd(line.cost.0 + entry.price_per_hour.0 / 60);
    }
    lines.into_values().collect()
}
