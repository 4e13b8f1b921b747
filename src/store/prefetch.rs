//! Reads for a batch of puts made before it reaches the writer, off the
//! writer's thread, and the writer's memory of what it wrote since, which
//! says whether such a read still holds.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::view::read_with_siblings;
use crate::collections::FastMap;
use crate::core::Change;
use crate::core::volume::volume_siblings;
use crate::domain::{RecordKey, StoredRecord};
use crate::error::Result;

/// Commits whose written keys are remembered, to confirm prefetched reads.
/// A prefetch older than this many commits is read again.
const RECENT_COMMITS: usize = 64;

/// Each record of a batch as stored and its siblings' values, as of the
/// writer's `as_of`-th commit. The writer uses the reads that
/// [`Freshness::still_fresh`] confirms and reads the others again.
pub struct Prefetch {
    pub as_of: u64,
    pub stored: FastMap<RecordKey, Option<StoredRecord>>,
    pub values: FastMap<RecordKey, Option<i128>>,
}

impl Prefetch {
    /// Reads `keys` from `db`; `commits` is the writer's count of applied
    /// commits, read before the first read.
    pub fn read(db: &sled::Db, commits: &AtomicU64, keys: &[RecordKey]) -> Result<Prefetch> {
        let as_of = commits.load(Ordering::Acquire);
        let mut values = FastMap::default();
        let stored = keys
            .iter()
            .map(|key| Ok((*key, read_with_siblings(db, key, &mut values)?)))
            .collect::<Result<_>>()?;
        Ok(Prefetch {
            as_of,
            stored,
            values,
        })
    }

    /// The prefetched values of `key` and its siblings, into `values`.
    pub fn copy_values(&self, key: &RecordKey, values: &mut FastMap<RecordKey, Option<i128>>) {
        for k in std::iter::once(*key).chain(volume_siblings(key)) {
            if let Some(v) = self.values.get(&k) {
                values.insert(k, *v);
            }
        }
    }
}

/// The record keys written by the last [`RECENT_COMMITS`] commits, and for
/// each such key the last commit that wrote it.
pub struct Freshness {
    /// Commits applied so far, also published for prefetching readers.
    commits: u64,
    applied: Arc<AtomicU64>,
    recent: VecDeque<(u64, Vec<RecordKey>)>,
    last_write: FastMap<RecordKey, u64>,
}

impl Freshness {
    pub fn new(applied: Arc<AtomicU64>) -> Freshness {
        Freshness {
            commits: applied.load(Ordering::Acquire),
            applied,
            recent: VecDeque::with_capacity(RECENT_COMMITS + 1),
            last_write: FastMap::default(),
        }
    }

    /// Whether reads of `key`'s record and its trade-volume siblings made
    /// when the writer had applied `as_of` commits still hold: no commit
    /// since wrote any of them.
    pub fn still_fresh(&self, key: &RecordKey, as_of: u64) -> bool {
        let window_start = self.commits - self.recent.len() as u64;
        if as_of < window_start {
            return false;
        }
        let fresh = |k: &RecordKey| self.last_write.get(k).is_none_or(|&c| c <= as_of);
        fresh(key) && volume_siblings(key).all(|k| fresh(&k))
    }

    /// Counts an applied commit and remembers the record keys it wrote.
    pub fn remember(&mut self, changes: &[Change]) {
        self.commits += 1;
        let keys: Vec<RecordKey> = changes.iter().map(|c| c.key).collect();
        for key in &keys {
            self.last_write.insert(*key, self.commits);
        }
        self.recent.push_back((self.commits, keys));
        if self.recent.len() > RECENT_COMMITS
            && let Some((commit, keys)) = self.recent.pop_front()
        {
            for key in keys {
                if self.last_write.get(&key) == Some(&commit) {
                    self.last_write.remove(&key);
                }
            }
        }
        self.applied.store(self.commits, Ordering::Release);
    }
}
