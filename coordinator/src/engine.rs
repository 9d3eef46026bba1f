//! The narrow key-value engine the coordinator stores everything in: sled on disk, a BTreeMap in tests.
//!
//! Only what the Raft store needs: point reads, ordered range scans, atomic batches and a durability barrier.
//! Keeping it this small is what lets the engine be swapped (sled 0.34 today).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

/// Why the engine failed.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("storage engine: {0}")]
    Engine(String),
}

/// Key-value pairs in key order.
pub type Pairs = Vec<(Vec<u8>, Vec<u8>)>;
type Map = BTreeMap<Vec<u8>, Vec<u8>>;

/// One change in a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Put(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>),
    /// Every key in `[start, end)`.
    DeleteRange(Vec<u8>, Vec<u8>),
}

/// Changes applied together or not at all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch {
    pub ops: Vec<Op>,
}

impl Batch {
    pub fn put(&mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.ops.push(Op::Put(key.into(), value.into()));
    }

    pub fn delete_range(&mut self, start: impl Into<Vec<u8>>, end: impl Into<Vec<u8>>) {
        self.ops.push(Op::DeleteRange(start.into(), end.into()));
    }
}

/// A key-value store with atomic batches.
pub trait Engine: Send + Sync + 'static {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, EngineError>;
    /// Pairs with keys in `[start, end)`, in key order.
    fn scan(&self, start: &[u8], end: &[u8]) -> Result<Pairs, EngineError>;
    /// Applies every op of the batch atomically.
    fn write(&self, batch: Batch) -> Result<(), EngineError>;
    /// Returns once everything written so far is durable (fsync).
    fn flush(&self) -> Result<(), EngineError>;
}

/// sled, one tree, durable on `flush`.
#[derive(Debug, Clone)]
pub struct SledEngine {
    db: sled::Db,
}

impl SledEngine {
    pub fn open(dir: &Path) -> Result<SledEngine, EngineError> {
        let db = sled::Config::new()
            .path(dir)
            .mode(sled::Mode::HighThroughput)
            .open()
            .map_err(|e| EngineError::Engine(format!("cannot open {}: {e}", dir.display())))?;
        Ok(SledEngine { db })
    }
}

fn sled_err(e: sled::Error) -> EngineError {
    EngineError::Engine(e.to_string())
}

impl Engine for SledEngine {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, EngineError> {
        Ok(self.db.get(key).map_err(sled_err)?.map(|v| v.to_vec()))
    }

    fn scan(&self, start: &[u8], end: &[u8]) -> Result<Pairs, EngineError> {
        self.db
            .range(start..end)
            .map(|kv| kv.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(sled_err))
            .collect()
    }

    fn write(&self, batch: Batch) -> Result<(), EngineError> {
        let mut sled_batch = sled::Batch::default();
        for op in batch.ops {
            match op {
                Op::Put(k, v) => sled_batch.insert(k, v),
                Op::Delete(k) => sled_batch.remove(k),
                Op::DeleteRange(start, end) => {
                    for key in self.db.range(start..end).keys() {
                        sled_batch.remove(key.map_err(sled_err)?);
                    }
                }
            }
        }
        self.db.apply_batch(sled_batch).map_err(sled_err)
    }

    fn flush(&self) -> Result<(), EngineError> {
        self.db.flush().map(|_| ()).map_err(sled_err)
    }
}

/// An in-memory engine for tests and simulations; `flush` does nothing.
#[derive(Debug, Default)]
pub struct MemEngine {
    map: Mutex<Map>,
}

impl MemEngine {
    fn map(&self) -> Result<std::sync::MutexGuard<'_, Map>, EngineError> {
        self.map
            .lock()
            .map_err(|_| EngineError::Engine("memory engine lock poisoned".into()))
    }

    /// Replaces a stored value as-is, to simulate corruption in tests.
    pub fn poke(&self, key: &[u8], value: Vec<u8>) -> Result<(), EngineError> {
        self.map()?.insert(key.to_vec(), value);
        Ok(())
    }

    /// Removes a key, to simulate lost writes in tests.
    pub fn forget(&self, key: &[u8]) -> Result<(), EngineError> {
        self.map()?.remove(key);
        Ok(())
    }
}

impl Engine for MemEngine {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, EngineError> {
        Ok(self.map()?.get(key).cloned())
    }

    fn scan(&self, start: &[u8], end: &[u8]) -> Result<Pairs, EngineError> {
        Ok(self
            .map()?
            .range(start.to_vec()..end.to_vec())
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn write(&self, batch: Batch) -> Result<(), EngineError> {
        let mut map = self.map()?;
        for op in batch.ops {
            match op {
                Op::Put(k, v) => {
                    map.insert(k, v);
                }
                Op::Delete(k) => {
                    map.remove(&k);
                }
                Op::DeleteRange(start, end) => {
                    let keys: Vec<Vec<u8>> =
                        map.range(start..end).map(|(k, _)| k.clone()).collect();
                    for k in keys {
                        map.remove(&k);
                    }
                }
            }
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), EngineError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exercise(engine: &dyn Engine) {
        let mut b = Batch::default();
        for i in 0u8..10 {
            b.put(vec![b'k', i], vec![i]);
        }
        b.put(b"z".to_vec(), b"last".to_vec());
        engine.write(b).unwrap();
        assert_eq!(engine.get(b"z").unwrap(), Some(b"last".to_vec()));
        assert_eq!(engine.scan(&[b'k', 3], &[b'k', 6]).unwrap().len(), 3);
        let mut b = Batch::default();
        b.delete_range(vec![b'k', 2], vec![b'k', 8]);
        b.ops.push(Op::Delete(b"z".to_vec()));
        engine.write(b).unwrap();
        let keys: Vec<u8> = engine
            .scan(b"k", b"l")
            .unwrap()
            .iter()
            .map(|(k, _)| k[1])
            .collect();
        assert_eq!(keys, [0, 1, 8, 9]);
        assert_eq!(engine.get(b"z").unwrap(), None);
        engine.flush().unwrap();
    }

    #[test]
    fn mem_engine() {
        exercise(&MemEngine::default());
    }

    #[test]
    fn sled_engine_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let e = SledEngine::open(dir.path()).unwrap();
            exercise(&e);
            let mut b = Batch::default();
            b.put(b"kept".to_vec(), b"yes".to_vec());
            e.write(b).unwrap();
            e.flush().unwrap();
        }
        let e = SledEngine::open(dir.path()).unwrap();
        assert_eq!(e.get(b"kept").unwrap(), Some(b"yes".to_vec()));
    }
}
