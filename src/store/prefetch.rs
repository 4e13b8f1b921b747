//! Reads for a batch of puts made before it reaches the writer, off the
//! writer's thread, and the writer's memory of what it wrote since, which
//! says whether such a read still holds.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::blocks::{self, BlockValue};
use super::series_cache::SeriesPrefix;
use super::view::in_block;
use crate::collections::FastMap;
use crate::core::Change;
use crate::core::volume::volume_siblings;
use crate::domain::{RecordKey, StoredRecord};
use crate::error::Result;

/// Commits whose written keys are remembered, to confirm prefetched reads.
/// A prefetch older than this many commits is read again.
const RECENT_COMMITS: usize = 64;

/// Each record of a batch as stored and its siblings' values, and the
/// series blocks holding them as decoded, as of the writer's `as_of`-th
/// commit. The writer uses the reads that [`Freshness`] confirms and reads
/// the others again.
pub struct Prefetch {
    pub as_of: u64,
    pub stored: FastMap<RecordKey, Option<StoredRecord>>,
    pub values: FastMap<RecordKey, Option<i128>>,
    /// Each block read (`None`: not stored), for the commit to change.
    blocks: FastMap<SeriesPrefix, Option<BlockValue>>,
}

impl Prefetch {
    /// Reads `keys` from `db`, each block once; `commits` is the writer's
    /// count of applied commits, read before the first read.
    pub fn read(db: &sled::Db, commits: &AtomicU64, keys: &[RecordKey]) -> Result<Prefetch> {
        let as_of = commits.load(Ordering::Acquire);
        let mut by_block: FastMap<SeriesPrefix, Vec<RecordKey>> = FastMap::default();
        for key in keys {
            by_block.entry(blocks::block_key(key)).or_default().push(*key);
        }
        let mut values = FastMap::default();
        let mut stored = FastMap::default();
        let mut read = FastMap::default();
        for (block, keys) in by_block {
            let value = blocks::read(db, &block)?;
            for key in keys {
                stored.insert(key, in_block(&block, value.as_ref(), &key, &mut values)?);
            }
            read.insert(block, value);
        }
        Ok(Prefetch {
            as_of,
            stored,
            values,
            blocks: read,
        })
    }

    /// The block `block` as read ahead, if it was and no commit since has
    /// written to it: taken out, for a commit to change.
    pub fn take_block(&mut self, block: &SeriesPrefix, freshness: &Freshness) -> Option<Option<BlockValue>> {
        if !freshness.block_fresh(block, self.as_of) {
            return None;
        }
        self.blocks.remove(block)
    }
}

/// The record keys written by the last [`RECENT_COMMITS`] commits, and for
/// each such key the last commit that wrote it.
pub struct Freshness {
    /// Commits applied so far, also published for prefetching readers.
    commits: u64,
    applied: Arc<AtomicU64>,
    /// Each recent commit's record keys and series blocks.
    recent: VecDeque<(u64, Vec<RecordKey>, Vec<SeriesPrefix>)>,
    last_write: FastMap<RecordKey, u64>,
    /// The same for the series blocks those keys are in.
    last_block_write: FastMap<SeriesPrefix, u64>,
}

impl Freshness {
    pub fn new(applied: Arc<AtomicU64>) -> Freshness {
        Freshness {
            commits: applied.load(Ordering::Acquire),
            applied,
            recent: VecDeque::with_capacity(RECENT_COMMITS + 1),
            last_write: FastMap::default(),
            last_block_write: FastMap::default(),
        }
    }

    /// Whether the block `block` read when the writer had applied `as_of`
    /// commits still holds: no commit since wrote to it.
    pub fn block_fresh(&self, block: &SeriesPrefix, as_of: u64) -> bool {
        let window_start = self.commits - self.recent.len() as u64;
        as_of >= window_start && self.last_block_write.get(block).is_none_or(|&c| c <= as_of)
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

    /// Counts an applied commit and remembers the record keys it wrote, and
    /// their blocks.
    pub fn remember(&mut self, changes: &[Change]) {
        self.commits += 1;
        let keys: Vec<RecordKey> = changes.iter().map(|c| c.key).collect();
        let mut blocks: Vec<SeriesPrefix> = keys.iter().map(blocks::block_key).collect();
        blocks.sort_unstable();
        blocks.dedup();
        for key in &keys {
            self.last_write.insert(*key, self.commits);
        }
        for block in &blocks {
            self.last_block_write.insert(*block, self.commits);
        }
        self.recent.push_back((self.commits, keys, blocks));
        if self.recent.len() > RECENT_COMMITS
            && let Some((commit, keys, blocks)) = self.recent.pop_front()
        {
            for key in keys {
                if self.last_write.get(&key) == Some(&commit) {
                    self.last_write.remove(&key);
                }
            }
            for block in blocks {
                if self.last_block_write.get(&block) == Some(&commit) {
                    self.last_block_write.remove(&block);
                }
            }
        }
        self.applied.store(self.commits, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::RawKey;

    fn key(commodity: &str, flow: i32, period: &str) -> RecordKey {
        let raw = RawKey {
            reporter: "CHN",
            partner: "KAZ",
            flow,
            period,
            commodity,
            currency: "USD",
        };
        RecordKey::parse(&raw, "currency").expect("a valid key")
    }

    fn written(key: RecordKey) -> Change {
        Change {
            key,
            before: None,
            after: None,
        }
    }

    /// A record is read ahead with its trade-volume siblings (export 1,
    /// import 2, turnover 5) from its block: they must be in it.
    #[test]
    fn a_records_volume_siblings_are_in_its_block() {
        for flow in [1, 2, 5] {
            let key = key("27", flow, "2025");
            let siblings: Vec<_> = volume_siblings(&key).collect();
            assert_eq!(siblings.len(), 2);
            for sibling in siblings {
                assert_eq!(blocks::block_key(&sibling), blocks::block_key(&key));
            }
        }
    }

    /// A record read ahead holds until a commit writes it or a sibling, or
    /// leaves the window; its block, until a commit writes any record of it.
    #[test]
    fn a_read_holds_until_a_commit_writes_it_its_siblings_or_its_block() {
        let mut freshness = Freshness::new(Arc::new(AtomicU64::new(0)));
        let read = key("27", 1, "2024");
        let block = blocks::block_key(&read);
        freshness.remember(&[written(key("28", 1, "2024"))]);
        assert!(freshness.still_fresh(&read, 0), "another series written");
        assert!(freshness.block_fresh(&block, 0));
        freshness.remember(&[written(key("27", 1, "2025"))]);
        assert!(freshness.still_fresh(&read, 1), "another period of its series");
        assert!(!freshness.block_fresh(&block, 1), "but its block");
        assert!(freshness.block_fresh(&block, 2));
        freshness.remember(&[written(key("27", 2, "2024"))]);
        assert!(!freshness.still_fresh(&read, 2), "a sibling written since");
        assert!(freshness.still_fresh(&read, 3));
        for _ in 0..RECENT_COMMITS {
            freshness.remember(&[]);
        }
        assert!(
            !freshness.still_fresh(&key("29", 1, "2024"), 2),
            "older than the window"
        );
        assert!(freshness.still_fresh(&read, 3));
    }
}
