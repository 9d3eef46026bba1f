//! raft-rs `Storage` over an `Engine`: the log, hard state, conf state and snapshot, each value checksummed.
//!
//! Layout: `l` + big-endian index for entries; `m/hs`, `m/cs`, `m/snap_meta`, `m/snap_data`, `m/node` for the
//! rest. Every value is sealed as `blake3(payload)[..8] ++ payload`. Opening a store walks the whole log and
//! refuses it, with the key and reason, if anything is missing, out of order or fails its checksum: a damaged
//! store is never silently reset.

use std::sync::{Arc, Mutex, MutexGuard};

use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, StorageError};

use crate::engine::{Batch, Engine, EngineError};

const LOG: u8 = b'l';
const HARD_STATE: &[u8] = b"m/hs";
const CONF_STATE: &[u8] = b"m/cs";
const SNAP_META: &[u8] = b"m/snap_meta";
const SNAP_DATA: &[u8] = b"m/snap_data";
const NODE: &[u8] = b"m/node";
const CHECKSUM_BYTES: usize = 8;

/// Why the store cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(
        "the store is damaged at `{key}`: {reason}; refusing to start (restore this node's data directory from a backup, or remove it and re-join the node to the cluster)"
    )]
    Corrupt { key: String, reason: String },
    #[error("invalid write: {0}")]
    Invalid(String),
}

/// What is cached of the persisted metadata.
#[derive(Debug, Clone, Default)]
struct Meta {
    hard_state: HardState,
    conf_state: ConfState,
    snapshot: SnapshotMetadata,
    /// Index of the last entry (the snapshot's index when the log is empty).
    last_index: u64,
}

/// The Raft log and its metadata, persisted through an `Engine`. Cheap to clone (shared).
#[derive(Clone)]
pub struct RaftStore {
    engine: Arc<dyn Engine>,
    meta: Arc<Mutex<Meta>>,
}

impl std::fmt::Debug for RaftStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftStore").finish_non_exhaustive()
    }
}

fn log_key(index: u64) -> [u8; 9] {
    let mut key = [LOG; 9];
    key[1..].copy_from_slice(&index.to_be_bytes());
    key
}

fn seal(payload: &[u8]) -> Vec<u8> {
    let mut sealed = Vec::with_capacity(CHECKSUM_BYTES + payload.len());
    sealed.extend_from_slice(&blake3::hash(payload).as_bytes()[..CHECKSUM_BYTES]);
    sealed.extend_from_slice(payload);
    sealed
}

fn unseal<'a>(key: &[u8], sealed: &'a [u8]) -> Result<&'a [u8], StoreError> {
    let corrupt = |reason: &str| StoreError::Corrupt {
        key: show_key(key),
        reason: reason.into(),
    };
    if sealed.len() < CHECKSUM_BYTES {
        return Err(corrupt("value shorter than its checksum"));
    }
    let (sum, payload) = sealed.split_at(CHECKSUM_BYTES);
    if &blake3::hash(payload).as_bytes()[..CHECKSUM_BYTES] != sum {
        return Err(corrupt("checksum mismatch"));
    }
    Ok(payload)
}

fn show_key(key: &[u8]) -> String {
    match key {
        [LOG, rest @ ..] if rest.len() == 8 => {
            let mut be = [0u8; 8];
            be.copy_from_slice(rest);
            format!("log entry {}", u64::from_be_bytes(be))
        }
        _ => String::from_utf8_lossy(key).into_owned(),
    }
}

fn decode<M: protobuf::Message>(key: &[u8], payload: &[u8]) -> Result<M, StoreError> {
    let mut m = M::new();
    m.merge_from_bytes(payload)
        .map_err(|e| StoreError::Corrupt {
            key: show_key(key),
            reason: format!("cannot decode: {e}"),
        })?;
    Ok(m)
}

fn encode<M: protobuf::Message>(m: &M) -> Result<Vec<u8>, StoreError> {
    m.write_to_bytes()
        .map_err(|e| StoreError::Invalid(format!("cannot encode: {e}")))
}

fn to_raft(e: StoreError) -> raft::Error {
    raft::Error::Store(StorageError::Other(Box::new(e)))
}

impl RaftStore {
    /// Opens a store and checks all of it.
    pub fn open(engine: Arc<dyn Engine>) -> Result<RaftStore, StoreError> {
        let read = |key: &[u8]| -> Result<Option<Vec<u8>>, StoreError> {
            match engine.get(key)? {
                None => Ok(None),
                Some(sealed) => Ok(Some(unseal(key, &sealed)?.to_vec())),
            }
        };
        let hard_state: HardState = read(HARD_STATE)?
            .map(|b| decode(HARD_STATE, &b))
            .transpose()?
            .unwrap_or_default();
        let conf_state: ConfState = read(CONF_STATE)?
            .map(|b| decode(CONF_STATE, &b))
            .transpose()?
            .unwrap_or_default();
        let snapshot: SnapshotMetadata = read(SNAP_META)?
            .map(|b| decode(SNAP_META, &b))
            .transpose()?
            .unwrap_or_default();
        if snapshot.index > 0 && engine.get(SNAP_DATA)?.is_none() {
            return Err(StoreError::Corrupt {
                key: "m/snap_data".into(),
                reason: "snapshot data missing".into(),
            });
        }
        let mut last_index = snapshot.index;
        for (key, sealed) in engine.scan(&log_key(0), &log_key(u64::MAX))? {
            let entry: Entry = decode(&key, unseal(&key, &sealed)?)?;
            if key != log_key(entry.index) {
                return Err(StoreError::Corrupt {
                    key: show_key(&key),
                    reason: format!("holds entry {}", entry.index),
                });
            }
            if entry.index != last_index + 1 {
                return Err(StoreError::Corrupt {
                    key: show_key(&key),
                    reason: format!(
                        "the log jumps from {last_index} to {} (entries are missing)",
                        entry.index
                    ),
                });
            }
            last_index = entry.index;
        }
        if hard_state.commit > last_index {
            return Err(StoreError::Corrupt {
                key: "m/hs".into(),
                reason: format!(
                    "the commit index is {} but the log ends at {last_index} (the store was truncated)",
                    hard_state.commit
                ),
            });
        }
        let meta = Meta {
            hard_state,
            conf_state,
            snapshot,
            last_index,
        };
        Ok(RaftStore {
            engine,
            meta: Arc::new(Mutex::new(meta)),
        })
    }

    fn meta(&self) -> MutexGuard<'_, Meta> {
        self.meta.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The Raft id this data directory belongs to, once set.
    pub fn node_id(&self) -> Result<Option<u64>, StoreError> {
        match self.engine.get(NODE)? {
            None => Ok(None),
            Some(sealed) => {
                let payload = unseal(NODE, &sealed)?;
                let bytes: [u8; 8] = payload.try_into().map_err(|_| StoreError::Corrupt {
                    key: "m/node".into(),
                    reason: "not a node id".into(),
                })?;
                Ok(Some(u64::from_be_bytes(bytes)))
            }
        }
    }

    pub fn set_node_id(&self, id: u64) -> Result<(), StoreError> {
        let mut b = Batch::default();
        b.put(NODE, seal(&id.to_be_bytes()));
        self.engine.write(b)?;
        Ok(self.engine.flush()?)
    }

    /// True once the store holds a configuration (bootstrapped, or joined and caught up).
    pub fn is_initialized(&self) -> bool {
        let m = self.meta();
        !m.conf_state.voters.is_empty() || m.snapshot.index > 0
    }

    pub fn hard_state(&self) -> HardState {
        self.meta().hard_state.clone()
    }

    pub fn snapshot_metadata(&self) -> SnapshotMetadata {
        self.meta().snapshot.clone()
    }

    /// The stored snapshot's data (the encoded state machine at its index).
    pub fn snapshot_data(&self) -> Result<Vec<u8>, StoreError> {
        match self.engine.get(SNAP_DATA)? {
            None => Ok(Vec::new()),
            Some(sealed) => Ok(unseal(SNAP_DATA, &sealed)?.to_vec()),
        }
    }

    /// Persists new entries (replacing any conflicting suffix) and the hard state in one atomic batch.
    /// Durable after `flush`.
    pub fn persist(
        &self,
        entries: &[Entry],
        hard_state: Option<&HardState>,
    ) -> Result<(), StoreError> {
        let mut meta = self.meta();
        let mut batch = Batch::default();
        let mut last_index = meta.last_index;
        if let Some(first) = entries.first() {
            if first.index <= meta.snapshot.index {
                return Err(StoreError::Invalid(format!(
                    "entry {} is at or before the snapshot at {}",
                    first.index, meta.snapshot.index
                )));
            }
            if first.index > meta.last_index + 1 {
                return Err(StoreError::Invalid(format!(
                    "entry {} leaves a gap after {}",
                    first.index, meta.last_index
                )));
            }
            if first.index <= meta.last_index {
                batch.delete_range(log_key(first.index).to_vec(), log_key(u64::MAX).to_vec());
            }
            for entry in entries {
                batch.put(log_key(entry.index).to_vec(), seal(&encode(entry)?));
                last_index = entry.index;
            }
        }
        if let Some(hs) = hard_state {
            batch.put(HARD_STATE, seal(&encode(hs)?));
        }
        self.engine.write(batch)?;
        meta.last_index = last_index;
        if let Some(hs) = hard_state {
            meta.hard_state = hs.clone();
        }
        Ok(())
    }

    /// Records a new commit index (from a light ready).
    pub fn set_commit(&self, commit: u64) -> Result<(), StoreError> {
        let mut hs = self.hard_state();
        hs.commit = commit;
        self.persist(&[], Some(&hs))
    }

    pub fn set_conf_state(&self, cs: &ConfState) -> Result<(), StoreError> {
        let mut b = Batch::default();
        b.put(CONF_STATE, seal(&encode(cs)?));
        self.engine.write(b)?;
        self.meta().conf_state = cs.clone();
        Ok(())
    }

    /// Replaces the log with a snapshot received from the leader (or made at bootstrap).
    pub fn apply_snapshot(&self, snapshot: &Snapshot) -> Result<(), StoreError> {
        let mut meta = self.meta();
        let md = snapshot.get_metadata();
        let mut hs = meta.hard_state.clone();
        hs.commit = hs.commit.max(md.index);
        hs.term = hs.term.max(md.term);
        let mut b = Batch::default();
        b.delete_range(log_key(0).to_vec(), log_key(u64::MAX).to_vec());
        b.put(SNAP_META, seal(&encode(md)?));
        b.put(SNAP_DATA, seal(snapshot.get_data()));
        b.put(CONF_STATE, seal(&encode(md.get_conf_state())?));
        b.put(HARD_STATE, seal(&encode(&hs)?));
        self.engine.write(b)?;
        meta.snapshot = md.clone();
        meta.conf_state = md.get_conf_state().clone();
        meta.hard_state = hs;
        meta.last_index = md.index;
        Ok(())
    }

    /// Stores a snapshot of the applied state at `index` and drops the log up to it.
    pub fn compact(
        &self,
        index: u64,
        conf_state: &ConfState,
        data: &[u8],
    ) -> Result<(), StoreError> {
        let term = raft::Storage::term(self, index)
            .map_err(|e| StoreError::Invalid(format!("term of {index}: {e}")))?;
        let mut meta = self.meta();
        if index <= meta.snapshot.index {
            return Ok(());
        }
        if index > meta.hard_state.commit {
            return Err(StoreError::Invalid(format!(
                "cannot compact past the commit index ({index})"
            )));
        }
        let mut md = SnapshotMetadata {
            index,
            term,
            ..Default::default()
        };
        md.set_conf_state(conf_state.clone());
        let mut b = Batch::default();
        b.put(SNAP_META, seal(&encode(&md)?));
        b.put(SNAP_DATA, seal(data));
        b.delete_range(log_key(0).to_vec(), log_key(index + 1).to_vec());
        self.engine.write(b)?;
        meta.snapshot = md;
        Ok(())
    }

    /// Makes everything written so far durable.
    pub fn flush(&self) -> Result<(), StoreError> {
        Ok(self.engine.flush()?)
    }

    fn entry(&self, index: u64) -> Result<Entry, StoreError> {
        let key = log_key(index);
        let sealed = self.engine.get(&key)?.ok_or_else(|| StoreError::Corrupt {
            key: show_key(&key),
            reason: "missing".into(),
        })?;
        decode(&key, unseal(&key, &sealed)?)
    }
}

impl raft::Storage for RaftStore {
    fn initial_state(&self) -> raft::Result<RaftState> {
        let m = self.meta();
        Ok(RaftState {
            hard_state: m.hard_state.clone(),
            conf_state: m.conf_state.clone(),
        })
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let (first, last) = {
            let m = self.meta();
            (m.snapshot.index + 1, m.last_index)
        };
        if low < first {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > last + 1 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let max_size = max_size.into();
        let mut entries = Vec::with_capacity((high - low) as usize);
        let mut size = 0u64;
        let mut truncated_by_size = false;
        for (key, sealed) in self
            .engine
            .scan(&log_key(low), &log_key(high))
            .map_err(|e| to_raft(e.into()))?
        {
            let entry: Entry =
                decode(&key, unseal(&key, &sealed).map_err(to_raft)?).map_err(to_raft)?;
            size += u64::from(entry.compute_size());
            if !entries.is_empty() && max_size.is_some_and(|max| size > max) {
                truncated_by_size = true;
                break;
            }
            entries.push(entry);
        }
        if !truncated_by_size && entries.len() as u64 != high - low {
            let reason = format!("expected entries {low}..{high}, found {}", entries.len());
            return Err(to_raft(StoreError::Corrupt {
                key: "log".into(),
                reason,
            }));
        }
        Ok(entries)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        let (snap_index, snap_term, last) = {
            let m = self.meta();
            (m.snapshot.index, m.snapshot.term, m.last_index)
        };
        if idx == snap_index {
            return Ok(snap_term);
        }
        if idx < snap_index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if idx > last {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        self.entry(idx).map(|e| e.term).map_err(to_raft)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.meta().snapshot.index + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.meta().last_index)
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let md = self.snapshot_metadata();
        if md.index < request_index {
            return Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        let mut snapshot = Snapshot::default();
        snapshot.set_data(self.snapshot_data().map_err(to_raft)?.into());
        snapshot.set_metadata(md);
        Ok(snapshot)
    }
}

#[cfg(test)]
mod tests {
    use raft::Storage as _;

    use super::*;
    use crate::engine::MemEngine;

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            data: format!("cmd-{index}").into_bytes().into(),
            ..Default::default()
        }
    }

    fn store() -> (Arc<MemEngine>, RaftStore) {
        let engine = Arc::new(MemEngine::default());
        let store = RaftStore::open(engine.clone()).unwrap();
        (engine, store)
    }

    fn hs(term: u64, commit: u64) -> HardState {
        HardState {
            term,
            commit,
            ..Default::default()
        }
    }

    #[test]
    fn empty_store_follows_raft_conventions() {
        let (_, s) = store();
        assert_eq!(s.first_index().unwrap(), 1);
        assert_eq!(s.last_index().unwrap(), 0);
        assert_eq!(s.term(0).unwrap(), 0);
        assert!(!s.is_initialized());
    }

    #[test]
    fn append_truncates_conflicts_and_survives_reopen() {
        let (engine, s) = store();
        s.persist(
            &(1..=5).map(|i| entry(i, 1)).collect::<Vec<_>>(),
            Some(&hs(1, 3)),
        )
        .unwrap();
        s.persist(&[entry(4, 2), entry(5, 2), entry(6, 2)], Some(&hs(2, 4)))
            .unwrap();
        s.persist(&[entry(5, 3)], None).unwrap();
        assert_eq!(s.last_index().unwrap(), 5);
        assert_eq!(s.term(4).unwrap(), 2);
        assert_eq!(s.term(5).unwrap(), 3);
        let reopened = RaftStore::open(engine).unwrap();
        assert_eq!(reopened.last_index().unwrap(), 5);
        assert_eq!(reopened.initial_state().unwrap().hard_state, hs(2, 4));
        let all = reopened
            .entries(1, 6, None, GetEntriesContext::empty(false))
            .unwrap();
        assert_eq!(
            all.iter().map(|e| e.term).collect::<Vec<_>>(),
            [1, 1, 1, 2, 3]
        );
        let limited = reopened
            .entries(1, 6, Some(1), GetEntriesContext::empty(false))
            .unwrap();
        assert_eq!(limited.len(), 1);
    }

    #[test]
    fn gaps_and_rewrites_of_the_snapshot_are_refused() {
        let (_, s) = store();
        s.persist(&[entry(1, 1)], None).unwrap();
        assert!(matches!(
            s.persist(&[entry(3, 1)], None),
            Err(StoreError::Invalid(_))
        ));
    }

    #[test]
    fn compaction_keeps_terms_and_serves_the_snapshot() {
        let (engine, s) = store();
        s.persist(
            &(1..=10).map(|i| entry(i, 1 + i / 5)).collect::<Vec<_>>(),
            Some(&hs(3, 10)),
        )
        .unwrap();
        let cs = ConfState {
            voters: vec![1, 2, 3],
            ..Default::default()
        };
        s.compact(7, &cs, b"state-at-7").unwrap();
        assert_eq!(s.first_index().unwrap(), 8);
        assert_eq!(s.term(7).unwrap(), 2);
        assert!(matches!(
            s.term(6),
            Err(raft::Error::Store(StorageError::Compacted))
        ));
        assert!(matches!(
            s.entries(5, 9, None, GetEntriesContext::empty(false)),
            Err(raft::Error::Store(StorageError::Compacted))
        ));
        let snap = s.snapshot(0, 2).unwrap();
        assert_eq!(snap.get_metadata().index, 7);
        assert_eq!(snap.get_data(), b"state-at-7");
        let reopened = RaftStore::open(engine).unwrap();
        assert_eq!(
            (
                reopened.first_index().unwrap(),
                reopened.last_index().unwrap()
            ),
            (8, 10)
        );
    }

    #[test]
    fn received_snapshot_replaces_the_log() {
        let (engine, s) = store();
        s.persist(
            &(1..=3).map(|i| entry(i, 1)).collect::<Vec<_>>(),
            Some(&hs(1, 2)),
        )
        .unwrap();
        let mut snap = Snapshot::default();
        snap.mut_metadata().index = 20;
        snap.mut_metadata().term = 4;
        snap.mut_metadata().mut_conf_state().voters = vec![1, 2];
        snap.set_data(b"leader-state".to_vec().into());
        s.apply_snapshot(&snap).unwrap();
        assert_eq!(
            (s.first_index().unwrap(), s.last_index().unwrap()),
            (21, 20)
        );
        assert_eq!(s.term(20).unwrap(), 4);
        let reopened = RaftStore::open(engine).unwrap();
        assert_eq!(
            reopened.initial_state().unwrap().conf_state.voters,
            vec![1, 2]
        );
        assert_eq!(reopened.initial_state().unwrap().hard_state.commit, 20);
        assert_eq!(reopened.snapshot_data().unwrap(), b"leader-state");
    }

    #[test]
    fn corruption_is_detected_with_the_key() {
        let (engine, s) = store();
        s.persist(
            &(1..=4).map(|i| entry(i, 1)).collect::<Vec<_>>(),
            Some(&hs(1, 4)),
        )
        .unwrap();
        let mut bad = engine.get(&log_key(2)).unwrap().unwrap();
        let last = bad.len() - 1;
        bad[last] ^= 0xff;
        engine.poke(&log_key(2), bad).unwrap();
        let err = RaftStore::open(engine.clone()).unwrap_err().to_string();
        assert!(
            err.contains("log entry 2")
                && err.contains("checksum mismatch")
                && err.contains("refusing"),
            "{err}"
        );
    }

    #[test]
    fn missing_entries_and_truncation_are_detected() {
        let (engine, s) = store();
        s.persist(
            &(1..=4).map(|i| entry(i, 1)).collect::<Vec<_>>(),
            Some(&hs(1, 4)),
        )
        .unwrap();
        engine.forget(&log_key(2)).unwrap();
        let err = RaftStore::open(engine.clone()).unwrap_err().to_string();
        assert!(err.contains("jumps from 1 to 3"), "{err}");
        engine.forget(&log_key(3)).unwrap();
        engine.forget(&log_key(4)).unwrap();
        let err = RaftStore::open(engine).unwrap_err().to_string();
        assert!(
            err.contains("commit index is 4 but the log ends at 1"),
            "{err}"
        );
    }

    #[test]
    fn node_id_is_kept() {
        let (engine, s) = store();
        assert_eq!(s.node_id().unwrap(), None);
        s.set_node_id(3).unwrap();
        assert_eq!(RaftStore::open(engine).unwrap().node_id().unwrap(), Some(3));
    }
}
