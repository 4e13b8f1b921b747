//! Decoded records of recently read series (one reporter, partner and
//! commodity: every period, flow and currency of it), so that a question
//! asked again reads memory instead of walking sled's tree record by record.
//!
//! The cache never answers with data older than an acknowledged write: the
//! writer drops the series a write touches after applying it and before
//! acknowledging it, and a fill (a series read from sled on a miss) is not
//! kept if the writer dropped anything between the fill's start and its end
//! (see [`SeriesCache::invalidate`]). The same counter tells the store when
//! to reread its partner groups.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use prost::Message;

use super::codec;
use super::keys::{self, RECORD_KEY_LEN};
use crate::domain::RecordKey;
use crate::error::{Error, Result};

/// Namespace byte, reporter, partner and commodity: the start of the keys of
/// one series' records.
pub const SERIES_PREFIX_LEN: usize = 14;
pub type SeriesPrefix = [u8; SERIES_PREFIX_LEN];

/// One stored record: its key and value.
#[derive(Debug, Clone, Copy)]
pub struct CachedRecord {
    pub key: [u8; RECORD_KEY_LEN],
    pub nanos: i128,
}

/// The records of one series in key order.
pub type SeriesRecords = Arc<[CachedRecord]>;

#[derive(Clone)]
struct Weight;

impl quick_cache::Weighter<SeriesPrefix, SeriesRecords> for Weight {
    fn weight(&self, _: &SeriesPrefix, records: &SeriesRecords) -> u64 {
        // The records, the key, the Arc's counts and the entry's own
        // bookkeeping in the cache.
        (records.len() * size_of::<CachedRecord>() + 96) as u64
    }
}

pub struct SeriesCache {
    /// `None`: caching off (a budget of 0).
    entries: Option<quick_cache::sync::Cache<SeriesPrefix, SeriesRecords, Weight>>,
    /// Counts the writer's commits (applied, or failed while applying).
    /// Fills compare it before and after reading; the writer raises it
    /// while holding the lock.
    generation: Mutex<u64>,
}

impl SeriesCache {
    /// A cache holding about `bytes` of records.
    pub fn new(bytes: u64) -> SeriesCache {
        let entries = (bytes > 0).then(|| {
            // A typical series: ten years of annual exports and imports.
            let typical = 20 * size_of::<CachedRecord>() as u64 + 96;
            quick_cache::sync::Cache::with_weighter((bytes / typical).max(16) as usize, bytes, Weight)
        });
        SeriesCache {
            entries,
            generation: Mutex::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, u64> {
        // The guarded counter is always valid, even after a panic elsewhere.
        self.generation.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The records of the series `prefix`, in key order: from memory, or
    /// read from `db` (and kept, unless a write was applied meanwhile).
    pub fn records(&self, db: &sled::Db, prefix: &SeriesPrefix) -> Result<SeriesRecords> {
        if let Some(records) = self.entries.as_ref().and_then(|e| e.get(prefix)) {
            return Ok(records);
        }
        let fill = self.begin_fill();
        let records = read(db, prefix)?;
        self.finish_fill(fill, prefix, records.clone());
        Ok(records)
    }

    /// Taken before reading a series from sled.
    fn begin_fill(&self) -> u64 {
        *self.lock()
    }

    /// Keeps what was read since `begin_fill` answered `fill`, unless a
    /// write was applied meanwhile (it may have been read before the write).
    fn finish_fill(&self, fill: u64, prefix: &SeriesPrefix, records: SeriesRecords) {
        if let Some(entries) = &self.entries {
            let generation = self.lock();
            if *generation == fill {
                entries.insert(*prefix, records);
            }
        }
    }

    /// The number of commits the writer has applied (or failed to): what
    /// was read from sled after this is read is at least that recent.
    pub fn generation(&self) -> u64 {
        *self.lock()
    }

    /// Drops the series of `keys`, and counts a commit. The writer calls
    /// this after applying each commit (also one that failed, which may
    /// have left part of its batch) and before acknowledging it, so no
    /// reader that starts after the acknowledgement sees the series as it
    /// was; raising the generation under the same lock keeps a fill that
    /// read the old records (and has not yet stored them) from storing them
    /// afterwards.
    pub fn invalidate<'a>(&self, keys: impl IntoIterator<Item = &'a RecordKey>) {
        let mut generation = self.lock();
        *generation += 1;
        let Some(entries) = self.entries.as_ref().filter(|e| !e.is_empty()) else {
            return;
        };
        // A batch holds many records of few series.
        let mut prefixes: Vec<SeriesPrefix> = keys.into_iter().map(series_prefix).collect();
        prefixes.sort_unstable();
        prefixes.dedup();
        for prefix in &prefixes {
            entries.remove(prefix);
        }
    }
}

/// The series prefix of a record key.
pub fn series_prefix(key: &RecordKey) -> SeriesPrefix {
    let full = keys::record_key(key);
    let mut prefix = [0u8; SERIES_PREFIX_LEN];
    prefix.copy_from_slice(&full[..SERIES_PREFIX_LEN]);
    prefix
}

fn read(db: &sled::Db, prefix: &SeriesPrefix) -> Result<SeriesRecords> {
    let mut records = Vec::new();
    for entry in db.scan_prefix(prefix) {
        let (k, v) = entry?;
        let key: [u8; RECORD_KEY_LEN] = k
            .as_ref()
            .try_into()
            .map_err(|_| Error::Corrupt(format!("bad record key {:02x?}", k.as_ref())))?;
        let nanos = codec::RecordAmount::decode(v.as_ref())
            .map_err(|e| Error::Corrupt(format!("record {:02x?}: {e}", k.as_ref())))?
            .nanos();
        records.push(CachedRecord { key, nanos });
    }
    Ok(records.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Commodity, CountryCode, CurrencyCode, Flow, Period};

    fn key(period: &str) -> RecordKey {
        RecordKey {
            reporter: CountryCode::parse("CHN").unwrap(),
            partner: CountryCode::parse("KAZ").unwrap(),
            commodity: Commodity::TOTAL,
            period: Period::parse(period).unwrap(),
            flow: Flow::Export,
            currency: CurrencyCode::parse("USD").unwrap(),
        }
    }

    fn put(db: &sled::Db, key: &RecordKey, units: i64) {
        let value = codec::RecordAmount { units, nanos: 0 }.encode_to_vec();
        db.insert(keys::record_key(key), value).unwrap();
    }

    fn units(cache: &SeriesCache, db: &sled::Db, key: &RecordKey) -> Vec<i128> {
        let records = cache.records(db, &series_prefix(key)).unwrap();
        records.iter().map(|r| r.nanos / 1_000_000_000).collect()
    }

    #[test]
    fn a_series_is_read_once_and_dropped_by_a_write_to_it() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let cache = SeriesCache::new(1 << 20);
        let (k24, k25) = (key("2024"), key("2025"));
        put(&db, &k24, 1);
        put(&db, &k25, 2);
        assert_eq!(units(&cache, &db, &k25), [1, 2]);
        // Kept: a change sled alone sees is not read.
        put(&db, &k25, 3);
        assert_eq!(units(&cache, &db, &k25), [1, 2]);
        // A write to the series drops it; another series' does not.
        let mut other = k25;
        other.partner = CountryCode::parse("UZB").unwrap();
        cache.invalidate([&other]);
        assert_eq!(units(&cache, &db, &k25), [1, 2]);
        cache.invalidate([&k24]);
        assert_eq!(units(&cache, &db, &k25), [1, 3]);
    }

    #[test]
    fn a_fill_that_read_before_a_write_is_not_kept() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let cache = SeriesCache::new(1 << 20);
        let k = key("2025");
        put(&db, &k, 1);
        let prefix = series_prefix(&k);
        // A reader reads the series; the writer applies a change and drops
        // the series before the reader stores what it read.
        let fill = cache.begin_fill();
        let stale = read(&db, &prefix).unwrap();
        put(&db, &k, 2);
        cache.invalidate([&k]);
        cache.finish_fill(fill, &prefix, stale);
        assert_eq!(units(&cache, &db, &k), [2]);
    }

    #[test]
    fn a_budget_of_zero_reads_sled_every_time() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let cache = SeriesCache::new(0);
        let k = key("2025");
        put(&db, &k, 1);
        assert_eq!(units(&cache, &db, &k), [1]);
        put(&db, &k, 2);
        assert_eq!(units(&cache, &db, &k), [2]);
    }
}
