//! Decoded records of recently read series (one reporter, partner and
//! commodity: every period, flow and currency of it), so that a question
//! asked again reads memory instead of walking sled's tree record by record;
//! and, for questions that leave a level open (every partner of a reporter,
//! every HS2 code of a pair), the list of what that level holds, so that the
//! series they read can be named without sled.
//!
//! The cache never answers with data older than an acknowledged write: the
//! writer brings it up to each write after applying it and before
//! acknowledging it, and a fill (something read from sled on a miss) is not
//! kept if the writer applied anything between the fill's start and its end
//! (see [`SeriesCache::invalidate`]). The same counter tells the store when
//! to reread its partner groups.
//!
//! A restart would empty the cache, and the first questions after it would
//! read sled again, each several times slower than when warm. So the store
//! writes the keys the cache holds to a file when it closes (and from time
//! to time while it runs, see [`SeriesCache::save_keys`]), and the next
//! opening reads those entries again before it serves
//! ([`SeriesCache::warm`]), as a database reloads its buffer pool.

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::blocks;
use super::keys::{self, RECORD_KEY_LEN};
use crate::domain::RecordKey;
use crate::error::Result;

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

/// A level of the series blocks' key tree (see [`blocks`]): every reporter,
/// every partner a reporter has series of at one commodity level, every
/// code a reporter–partner pair has at one level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Level {
    Reporters,
    /// Reporter, level byte.
    Partners([u8; 3], u8),
    /// Reporter, level byte, partner.
    Commodities([u8; 3], u8, [u8; 3]),
}

impl Level {
    fn prefix(&self) -> Vec<u8> {
        match *self {
            Level::Reporters => blocks::prefix(None, None, None),
            Level::Partners(r, l) => blocks::prefix(Some(r), Some(l), None),
            Level::Commodities(r, l, p) => blocks::prefix(Some(r), Some(l), Some(p)),
        }
    }

    /// The width of the key component below the prefix: a country, or a
    /// commodity code's six digit bytes.
    pub fn width(&self) -> usize {
        match self {
            Level::Reporters | Level::Partners(..) => 3,
            Level::Commodities(..) => 6,
        }
    }
}

/// The distinct values of one level's component present in the store, in
/// key order, each [`Level::width`] bytes, back to back.
pub type Children = Arc<[u8]>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Key {
    Series(SeriesPrefix),
    Children(Level),
}

/// The file in the data dir that lists what the cache held.
pub const KEYS_FILE: &str = "series-cache.keys";

/// The first line of a keys file; the format after it is this module's.
const KEYS_MAGIC: &[u8] = b"tradewatch series cache keys 1\n";

impl Key {
    /// Appends the key to a keys file: a byte naming its kind, then its
    /// bytes.
    fn encode(&self, out: &mut Vec<u8>) {
        match *self {
            Key::Series(prefix) => {
                out.push(b'S');
                out.extend_from_slice(&prefix);
            }
            Key::Children(Level::Reporters) => out.push(b'R'),
            Key::Children(Level::Partners(r, l)) => {
                out.push(b'P');
                out.extend_from_slice(&r);
                out.push(l);
            }
            Key::Children(Level::Commodities(r, l, p)) => {
                out.push(b'C');
                out.extend_from_slice(&r);
                out.push(l);
                out.extend_from_slice(&p);
            }
        }
    }

    /// The key at the start of `bytes` and what follows it; `None` at the
    /// end or where the bytes are not a key.
    fn decode(bytes: &[u8]) -> Option<(Key, &[u8])> {
        let (&kind, rest) = bytes.split_first()?;
        let three = |at: usize| -> Option<[u8; 3]> { rest.get(at..at + 3)?.try_into().ok() };
        let (key, len) = match kind {
            b'S' => (
                Key::Series(rest.get(..SERIES_PREFIX_LEN)?.try_into().ok()?),
                SERIES_PREFIX_LEN,
            ),
            b'R' => (Key::Children(Level::Reporters), 0),
            b'P' => (Key::Children(Level::Partners(three(0)?, *rest.get(3)?)), 4),
            b'C' => (
                Key::Children(Level::Commodities(three(0)?, *rest.get(3)?, three(4)?)),
                7,
            ),
            _ => return None,
        };
        Some((key, &rest[len..]))
    }

    /// Where the key's entry starts in sled: warming in this order reads
    /// sled's pages front to back.
    fn position(&self) -> Vec<u8> {
        match self {
            Key::Series(prefix) => blocks::block_key_of(prefix).to_vec(),
            Key::Children(level) => level.prefix(),
        }
    }
}

#[derive(Clone)]
enum Entry {
    Records(SeriesRecords),
    Children(Children),
}

#[derive(Clone)]
struct Weight;

impl quick_cache::Weighter<Key, Entry> for Weight {
    fn weight(&self, _: &Key, entry: &Entry) -> u64 {
        // The values, the key, the Arc's counts and the entry's own
        // bookkeeping in the cache.
        let values = match entry {
            Entry::Records(records) => records.len() * size_of::<CachedRecord>(),
            Entry::Children(children) => children.len(),
        };
        (values + 96) as u64
    }
}

pub struct SeriesCache {
    /// `None`: caching off (a budget of 0).
    entries: Option<quick_cache::sync::Cache<Key, Entry, Weight>>,
    /// Counts the writer's commits (applied, or failed while applying).
    /// Fills compare it before and after reading; the writer raises it
    /// while holding the lock.
    generation: Mutex<u64>,
    /// Held while the keys are written down, one writer at a time.
    saving: Mutex<()>,
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
            saving: Mutex::new(()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, u64> {
        // The guarded counter is always valid, even after a panic elsewhere.
        self.generation.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The records of the series `prefix`, in key order: from memory, or
    /// read from `db` (and kept, unless a write was applied meanwhile).
    pub fn records(&self, db: &sled::Db, prefix: &SeriesPrefix) -> Result<SeriesRecords> {
        let key = Key::Series(*prefix);
        if let Some(Entry::Records(records)) = self.entries.as_ref().and_then(|e| e.get(&key)) {
            return Ok(records);
        }
        let fill = self.begin_fill();
        let records = read(db, prefix)?;
        self.finish_fill(fill, key, Entry::Records(records.clone()));
        Ok(records)
    }

    /// The values of `level`'s component that have records, in key order:
    /// from memory, or found in `db` with one seek each (and kept, unless a
    /// write was applied meanwhile).
    pub fn children(&self, db: &sled::Db, level: Level) -> Result<Children> {
        let key = Key::Children(level);
        if let Some(Entry::Children(children)) = self.entries.as_ref().and_then(|e| e.get(&key)) {
            return Ok(children);
        }
        let fill = self.begin_fill();
        let children = read_children(db, level)?;
        self.finish_fill(fill, key, Entry::Children(children.clone()));
        Ok(children)
    }

    /// Writes the key of every entry held to `path`, through a file beside
    /// it renamed over it, for [`SeriesCache::warm`] to read at the next
    /// opening; returns how many. Not synced: a file lost or cut short only
    /// leaves the next opening with less to warm.
    pub fn save_keys(&self, path: &Path) -> std::io::Result<usize> {
        let mut keys: Vec<Key> = match &self.entries {
            Some(entries) => entries.iter().map(|(key, _)| key).collect(),
            None => Vec::new(),
        };
        keys.sort_unstable_by_key(Key::position);
        let mut out = KEYS_MAGIC.to_vec();
        for key in &keys {
            key.encode(&mut out);
        }
        let _one_at_a_time = self.saving.lock().unwrap_or_else(PoisonError::into_inner);
        let tmp = path.with_extension("tmp");
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(&out)?;
        drop(file);
        std::fs::rename(&tmp, path)?;
        Ok(keys.len())
    }

    /// Fills the cache with the entries whose keys [`SeriesCache::save_keys`]
    /// wrote to `path`, read from `db` in key order, until the cache is full
    /// or `budget` has passed. A missing file warms nothing; a damaged one as
    /// many entries as it names before the damage. Returns how many entries
    /// were read and how many the file named.
    pub fn warm(&self, db: &sled::Db, path: &Path, budget: Duration) -> Result<(usize, usize)> {
        let Some(entries) = &self.entries else {
            return Ok((0, 0));
        };
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((0, 0)),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read the series cache's keys; starting cold");
                return Ok((0, 0));
            }
        };
        let mut keys = Vec::new();
        let mut rest = bytes.strip_prefix(KEYS_MAGIC).unwrap_or_default();
        while let Some((key, after)) = Key::decode(rest) {
            keys.push(key);
            rest = after;
        }
        keys.sort_unstable_by_key(Key::position);
        let started = Instant::now();
        let mut warmed = 0;
        for key in &keys {
            if started.elapsed() >= budget || entries.weight() >= entries.capacity() {
                break;
            }
            match *key {
                Key::Series(prefix) => drop(self.records(db, &prefix)?),
                Key::Children(level) => drop(self.children(db, level)?),
            }
            warmed += 1;
        }
        Ok((warmed, keys.len()))
    }

    /// Taken before reading from sled.
    fn begin_fill(&self) -> u64 {
        *self.lock()
    }

    /// Keeps what was read since `begin_fill` answered `fill`, unless a
    /// write was applied meanwhile (it may have been read before the write).
    fn finish_fill(&self, fill: u64, key: Key, entry: Entry) {
        if let Some(entries) = &self.entries {
            let generation = self.lock();
            if *generation == fill {
                entries.insert(key, entry);
            }
        }
    }

    /// The number of commits the writer has applied (or failed to): what
    /// was read from sled after this is read is at least that recent.
    pub fn generation(&self) -> u64 {
        *self.lock()
    }

    /// Brings the cache up to a commit that wrote (`true`) or removed
    /// (`false`) the records of `changes`, and counts the commit. The writer
    /// calls this after applying each commit (also one that failed, which
    /// may have left part of its batch) and before acknowledging it, so no
    /// reader that starts after the acknowledgement sees the store as it
    /// was; raising the generation under the same lock keeps a fill that
    /// read the old records (and has not yet stored them) from storing them
    /// afterwards.
    ///
    /// The series changed are dropped. A record written adds its reporter,
    /// partner and commodity to the lists of children held (a list naming a
    /// child whose records a failed commit did not write only costs reading
    /// an empty series); a record removed drops the lists it is in, which
    /// may have lost a child.
    pub fn invalidate<'a>(&self, changes: impl IntoIterator<Item = (&'a RecordKey, bool)>) {
        let mut generation = self.lock();
        *generation += 1;
        let Some(entries) = self.entries.as_ref().filter(|e| !e.is_empty()) else {
            return;
        };
        // A batch holds many records of few series.
        let mut series: Vec<(SeriesPrefix, bool)> = changes
            .into_iter()
            .map(|(key, written)| (series_prefix(key), written))
            .collect();
        series.sort_unstable();
        series.dedup();
        for (prefix, written) in &series {
            entries.remove(&Key::Series(*prefix));
            let reporter = [prefix[1], prefix[2], prefix[3]];
            let partner = [prefix[4], prefix[5], prefix[6]];
            let level = prefix[7];
            let lists = [
                (Level::Reporters, &prefix[1..4]),
                (Level::Partners(reporter, level), &prefix[4..7]),
                (Level::Commodities(reporter, level, partner), &prefix[8..14]),
            ];
            for (level, child) in lists {
                let key = Key::Children(level);
                if !written {
                    entries.remove(&key);
                } else if let Some(Entry::Children(children)) = entries.get(&key)
                    && let Some(added) = with_child(&children, child)
                {
                    entries.insert(key, Entry::Children(added));
                }
            }
        }
    }
}

/// `children` with `child` added in order, or `None` if it is there.
fn with_child(children: &[u8], child: &[u8]) -> Option<Children> {
    let width = child.len();
    let count = children.len() / width;
    let at = |i: usize| &children[i * width..(i + 1) * width];
    let (mut lo, mut hi) = (0, count);
    while lo < hi {
        let mid = (lo + hi) / 2;
        match at(mid).cmp(child) {
            std::cmp::Ordering::Less => lo = mid + 1,
            std::cmp::Ordering::Greater => hi = mid,
            std::cmp::Ordering::Equal => return None,
        }
    }
    let mut out = Vec::with_capacity(children.len() + width);
    out.extend_from_slice(&children[..lo * width]);
    out.extend_from_slice(child);
    out.extend_from_slice(&children[lo * width..]);
    Some(out.into())
}

/// The series prefix of a record key.
pub fn series_prefix(key: &RecordKey) -> SeriesPrefix {
    let full = keys::record_key(key);
    let mut prefix = [0u8; SERIES_PREFIX_LEN];
    prefix.copy_from_slice(&full[..SERIES_PREFIX_LEN]);
    prefix
}

fn read(db: &sled::Db, prefix: &SeriesPrefix) -> Result<SeriesRecords> {
    let block = blocks::block_key_of(prefix);
    Ok(match db.get(block)? {
        Some(value) => blocks::amounts(&block, &value)?.into(),
        None => Arc::new([]),
    })
}

/// The distinct values of `level`'s component, in one pass over the
/// level's blocks where each is a child of its own (a pair's codes, a
/// reporter's partners at TOTAL), seeking past a child only where its
/// blocks go on (a reporter's partners at HS2, each with many codes).
fn read_children(db: &sled::Db, level: Level) -> Result<Children> {
    let prefix = level.prefix();
    let width = level.width();
    let mut out: Vec<u8> = Vec::new();
    let mut entries = db.range(prefix.as_slice()..);
    while let Some(entry) = entries.next() {
        let (k, _) = entry?;
        let Some(child) = k
            .strip_prefix(prefix.as_slice())
            .and_then(|rest| rest.get(..width))
        else {
            break;
        };
        if out.ends_with(child) {
            // This child's blocks go on: seek past them.
            let mut seek = prefix.clone();
            match super::scan::successor(child) {
                Some(next) => seek.extend_from_slice(&next),
                None => break,
            }
            entries = db.range(seek.as_slice()..);
            continue;
        }
        out.extend_from_slice(child);
    }
    Ok(out.into())
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

    /// Stores `units` under `key` (`None`: removes it) in its block.
    fn set(db: &sled::Db, key: &RecordKey, units: Option<i64>) {
        let block = blocks::block_key(key);
        let mut edit = blocks::Edit::new(blocks::read(db, &block).unwrap());
        edit.set(
            key,
            units.map(|units| crate::store::codec::RecordValue {
                units,
                ..Default::default()
            }),
        );
        match edit.finish() {
            Some(value) => db.insert(block, value).unwrap(),
            None => db.remove(block).unwrap(),
        };
    }

    fn put(db: &sled::Db, key: &RecordKey, units: i64) {
        set(db, key, Some(units));
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
        cache.invalidate([(&other, true)]);
        assert_eq!(units(&cache, &db, &k25), [1, 2]);
        cache.invalidate([(&k24, true)]);
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
        cache.invalidate([(&k, true)]);
        cache.finish_fill(fill, Key::Series(prefix), Entry::Records(stale));
        assert_eq!(units(&cache, &db, &k), [2]);
    }

    fn partners(cache: &SeriesCache, db: &sled::Db) -> Vec<String> {
        let chn = CountryCode::parse("CHN").unwrap().as_bytes();
        let children = cache.children(db, Level::Partners(chn, 0)).unwrap();
        children
            .chunks(3)
            .map(|c| String::from_utf8(c.to_vec()).unwrap())
            .collect()
    }

    #[test]
    fn children_follow_written_and_removed_records() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let cache = SeriesCache::new(1 << 20);
        let kaz = key("2025");
        let mut uzb = kaz;
        uzb.partner = CountryCode::parse("UZB").unwrap();
        let mut kgz = kaz;
        kgz.partner = CountryCode::parse("KGZ").unwrap();
        put(&db, &kaz, 1);
        put(&db, &uzb, 1);
        // Another reporter's partners are not CHN's.
        let mut other = kaz;
        other.reporter = CountryCode::parse("DEU").unwrap();
        other.partner = CountryCode::parse("AUT").unwrap();
        put(&db, &other, 1);
        assert_eq!(partners(&cache, &db), ["KAZ", "UZB"]);
        // Kept while no write says otherwise.
        put(&db, &kgz, 1);
        assert_eq!(partners(&cache, &db), ["KAZ", "UZB"]);
        // A written record adds its partner in order, without reading.
        cache.invalidate([(&kgz, true)]);
        assert_eq!(partners(&cache, &db), ["KAZ", "KGZ", "UZB"]);
        // A removed one drops the list, which is read again.
        set(&db, &uzb, None);
        cache.invalidate([(&uzb, false)]);
        assert_eq!(partners(&cache, &db), ["KAZ", "KGZ"]);
        let reporters = cache.children(&db, Level::Reporters).unwrap();
        assert_eq!(&reporters[..], b"CHNDEU");
        let chn = kaz.reporter.as_bytes();
        let commodities = cache
            .children(&db, Level::Commodities(chn, 0, kaz.partner.as_bytes()))
            .unwrap();
        assert_eq!(&commodities[..], &keys::commodity_bytes(Commodity::TOTAL)[1..]);
    }

    #[test]
    fn children_are_listed_per_commodity_level() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let cache = SeriesCache::new(1 << 20);
        let chn = CountryCode::parse("CHN").unwrap().as_bytes();
        let at = |partner: &str, commodity: &str| {
            let mut k = key("2025");
            k.partner = CountryCode::parse(partner).unwrap();
            k.commodity = Commodity::parse(commodity).unwrap();
            k
        };
        // Partners with many HS2 codes each (listed by seeking past each
        // one's codes), one with TOTAL only, one with an HS4 code only.
        for (partner, commodity) in [
            ("KAZ", "27"),
            ("KAZ", "28"),
            ("KAZ", "84"),
            ("KGZ", "TOTAL"),
            ("TJK", "2701"),
            ("UZB", "27"),
            ("UZB", "85"),
        ] {
            put(&db, &at(partner, commodity), 1);
        }
        let list = |level| -> Vec<String> {
            let children = cache.children(&db, level).unwrap();
            children
                .chunks(level.width())
                .map(|c| {
                    String::from_utf8(c.to_vec())
                        .unwrap()
                        .trim_end_matches('\0')
                        .to_owned()
                })
                .collect()
        };
        assert_eq!(list(Level::Partners(chn, 0)), ["KGZ"]);
        assert_eq!(list(Level::Partners(chn, 2)), ["KAZ", "UZB"]);
        assert_eq!(list(Level::Partners(chn, 4)), ["TJK"]);
        assert!(list(Level::Partners(chn, 6)).is_empty());
        assert_eq!(list(Level::Commodities(chn, 2, *b"KAZ")), ["27", "28", "84"]);
        assert_eq!(list(Level::Commodities(chn, 2, *b"UZB")), ["27", "85"]);
        assert_eq!(list(Level::Reporters), ["CHN"]);
        // A record written at a level adds its partner to that level's list
        // only.
        let kgz = at("KGZ", "85");
        put(&db, &kgz, 1);
        cache.invalidate([(&kgz, true)]);
        assert_eq!(list(Level::Partners(chn, 2)), ["KAZ", "KGZ", "UZB"]);
        assert_eq!(list(Level::Partners(chn, 0)), ["KGZ"]);
        assert_eq!(list(Level::Commodities(chn, 2, *b"KGZ")), ["85"]);
    }

    #[test]
    fn with_child_inserts_in_order_once() {
        assert_eq!(&with_child(b"AAACCC", b"BBB").unwrap()[..], b"AAABBBCCC");
        assert_eq!(&with_child(b"AAACCC", b"DDD").unwrap()[..], b"AAACCCDDD");
        assert_eq!(&with_child(b"", b"AAA").unwrap()[..], b"AAA");
        assert!(with_child(b"AAACCC", b"CCC").is_none());
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

    /// The keys a cache holds, in key order.
    fn held(cache: &SeriesCache) -> Vec<Key> {
        let mut keys: Vec<Key> = cache.entries.as_ref().unwrap().iter().map(|(k, _)| k).collect();
        keys.sort_unstable_by_key(Key::position);
        keys
    }

    #[test]
    fn a_new_cache_warms_what_the_last_one_held_with_what_sled_holds_now() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(KEYS_FILE);
        let db = sled::Config::new().temporary(true).open().unwrap();
        let kaz = key("2025");
        let mut uzb = kaz;
        uzb.partner = CountryCode::parse("UZB").unwrap();
        put(&db, &kaz, 1);
        put(&db, &uzb, 2);
        let before = SeriesCache::new(1 << 20);
        assert_eq!(units(&before, &db, &kaz), [1]);
        assert_eq!(partners(&before, &db), ["KAZ", "UZB"]);
        let chn = kaz.reporter.as_bytes();
        before
            .children(&db, Level::Commodities(chn, 0, kaz.partner.as_bytes()))
            .unwrap();
        before.children(&db, Level::Reporters).unwrap();
        assert_eq!(before.save_keys(&path).unwrap(), 4);

        // Changed while no cache was open: warming reads sled as it is.
        put(&db, &kaz, 3);
        let after = SeriesCache::new(1 << 20);
        assert_eq!(after.warm(&db, &path, Duration::from_secs(60)).unwrap(), (4, 4));
        assert_eq!(held(&after), held(&before));
        set(&db, &kaz, None);
        // Served from memory: what sled holds now is not read.
        assert_eq!(units(&after, &db, &kaz), [3]);
        assert_eq!(partners(&after, &db), ["KAZ", "UZB"]);

        // No time to warm: nothing is read.
        let hurried = SeriesCache::new(1 << 20);
        assert_eq!(hurried.warm(&db, &path, Duration::ZERO).unwrap(), (0, 4));
        assert!(held(&hurried).is_empty());
    }

    #[test]
    fn a_missing_or_damaged_keys_file_warms_what_it_can() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(KEYS_FILE);
        let db = sled::Config::new().temporary(true).open().unwrap();
        let cache = SeriesCache::new(1 << 20);
        let forever = Duration::from_secs(60);
        assert_eq!(cache.warm(&db, &path, forever).unwrap(), (0, 0), "missing");

        let k = key("2025");
        put(&db, &k, 1);
        let mut bytes = KEYS_MAGIC.to_vec();
        Key::Children(Level::Reporters).encode(&mut bytes);
        Key::Series(series_prefix(&k)).encode(&mut bytes);
        for (damage, warmed) in [
            (b"".as_slice(), 2),
            (b"S\x01\x02", 2), // cut short
            (b"X", 2),         // an unknown kind
            (b"P", 2),         // a kind without its bytes
        ] {
            let mut file = bytes.clone();
            file.extend_from_slice(damage);
            std::fs::write(&path, &file).unwrap();
            let cache = SeriesCache::new(1 << 20);
            assert_eq!(
                cache.warm(&db, &path, forever).unwrap(),
                (warmed, warmed),
                "{damage:?}"
            );
        }
        std::fs::write(&path, b"another format\nR").unwrap();
        assert_eq!(
            SeriesCache::new(1 << 20).warm(&db, &path, forever).unwrap(),
            (0, 0)
        );
        // Caching off: nothing to save or warm.
        let off = SeriesCache::new(0);
        assert_eq!(off.save_keys(&path).unwrap(), 0);
        assert_eq!(off.warm(&db, &path, forever).unwrap(), (0, 0));
    }
}
