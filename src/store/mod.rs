//! Everything that knows sled: key layout, atomic apply, recovery.

mod blocks;
mod codec;
pub mod command_codec;
mod commit;
mod disk;
mod facts;
mod keys;
mod prefetch;
mod recent;
mod requests;
mod rollup;
mod scan;
mod series_cache;
pub mod snapshot;
mod view;
mod watches;
mod writer;

use prost::Message;
use prost_types::Timestamp;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

use crate::domain::{
    Action, Command, CountryCode, Event, GroupName, GroupWritten, NewWatch, PartnerGroup, PutOutcome,
    RecordDeleted, RecordKey, RequestTag, StoredRecord, TradeRecord, WatchDef, WatchId, WatchWritten,
};
use crate::error::{Error, Result};
/// Events kept decoded for live subscribers (see `recent`).
pub const RECENT_EVENTS: usize = recent::CAPACITY;
pub use facts::{Fact, FactScan, FactSource};
use prefetch::Prefetch;
pub use rollup::Tally;
use series_cache::{Level, SERIES_PREFIX_LEN, SeriesCache};
pub use writer::{Applied, Position, Refusal, Reply};
use writer::{Writer, WriterHandle};

/// The time of the built-in groups: fixed, so that every new store starts
/// the same (nodes of a cluster, replays) — the epoch, as nobody wrote them.
const BUILT_IN_TIME: Timestamp = Timestamp { seconds: 0, nanos: 0 };

/// Batches of at least this many records read ahead of the writer.
const PREFETCH_MIN_RECORDS: usize = 64;

/// The on-disk layout version. A directory written with another version is
/// refused rather than misread.
pub const FORMAT_VERSION: u32 = 5;
/// Older versions this build reads, and upgrades on open: format 1 stored
/// one event per key, format 2 blocks of events uncompressed — both still
/// read as they are — formats 1 to 3 one record per key, which the upgrade
/// moves into series blocks, and format 4 series blocks keyed reporter,
/// partner, commodity, which it moves to their keys of reporter, level,
/// partner, code (see [`blocks`]).
pub const UPGRADABLE_FORMATS: &[u32] = &[1, 2, 3, 4];

/// A page of records and where the next one starts.
pub struct RecordPage {
    pub records: Vec<StoredRecord>,
    /// Encoded key of the last record returned, exactly when more follow.
    pub resume_after: Option<Vec<u8>>,
}

/// Which key ranges a listing scans, in key order, and what each record
/// must match besides.
pub struct ScanPlan<'a> {
    /// `None`: every reporter.
    pub reporters: Option<&'a BTreeSet<CountryCode>>,
    /// `None`: every partner.
    pub partners: Option<&'a BTreeSet<CountryCode>>,
    pub filter: &'a dyn Fn(&RecordKey) -> bool,
}

pub struct Store {
    db: sled::Db,
    dir: std::path::PathBuf,
    writer: WriterHandle,
    writer_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    durable_head: watch::Receiver<u64>,
    /// The last command log position on disk.
    durable_position: watch::Receiver<u64>,
    /// The oldest event the log retains.
    oldest: Arc<AtomicU64>,
    /// Commits the writer has applied (see [`writer::Prefetch`]).
    applied: Arc<AtomicU64>,
    metrics: Arc<crate::metrics::Metrics>,
    /// Decoded records of recently read series (see [`series_cache`]).
    series: Arc<SeriesCache>,
    /// The newest durable events, decoded once for every subscriber.
    recent: Arc<recent::RecentEvents>,
    /// The groups as of a generation of the writer's commits (see
    /// [`SeriesCache::generation`]): reread only after a commit, so a group
    /// edit shows in the very next question.
    groups: Mutex<Option<(u64, Groups)>>,
}

/// Every partner group by name, as of one moment.
pub type Groups = Arc<BTreeMap<GroupName, PartnerGroup>>;

/// The part of the memory budget (`cache_bytes`) that holds decoded series;
/// sled's page cache gets the rest.
const SERIES_CACHE_SHARE: u64 = 16;

/// The longest an opening spends reading back what the series cache held
/// before (see [`series_cache`]); what is not read by then stays cold.
const WARM_UP_BUDGET: std::time::Duration = std::time::Duration::from_secs(1);

impl Store {
    /// Opens (or creates) the store in `dir`, refusing a directory of another
    /// format. `cache_bytes` is the memory for its caches: 1/16 for decoded
    /// series, the rest for sled's page cache. `retain_events` keeps only
    /// the newest that many events (0: all).
    pub fn open(dir: &Path, cache_bytes: u64, retain_events: u64) -> Result<Store> {
        Self::open_with_metrics(dir, cache_bytes, retain_events, Arc::default())
    }

    /// Opens the store like [`Store::open`], counting its writes and
    /// subscriptions in `metrics`.
    pub fn open_with_metrics(
        dir: &Path,
        cache_bytes: u64,
        retain_events: u64,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Result<Store> {
        std::fs::create_dir_all(dir).map_err(|e| {
            Error::FailedPrecondition(format!("cannot create data dir {}: {e}", dir.display()))
        })?;
        let series_bytes = cache_bytes / SERIES_CACHE_SHARE;
        let db = Self::open_sled(dir, cache_bytes - series_bytes)?;
        let head = Self::check_or_init(&db, dir).map_err(|e| match e {
            Error::Storage(e) => Error::open_failed(dir, e),
            other => other,
        })?;
        let read_u64 = |key: &[u8], default: u64| -> Result<u64> {
            Ok(db
                .get(key)?
                .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
                .map_or(default, u64::from_be_bytes))
        };
        let oldest = read_u64(keys::META_OLDEST_SEQUENCE, 1)?;
        let position = read_u64(keys::META_LOG_POSITION, 0)?;
        let oldest = Arc::new(AtomicU64::new(oldest));
        let applied = Arc::new(AtomicU64::new(0));
        let series = Arc::new(SeriesCache::new(series_bytes));
        let recent = Arc::new(recent::RecentEvents::default());
        let (writer, thread, durable) = Writer::spawn(
            db.clone(),
            dir,
            (head, position),
            retain_events,
            writer::Shared {
                oldest: oldest.clone(),
                applied: applied.clone(),
                series: series.clone(),
                recent: recent.clone(),
                metrics: metrics.clone(),
            },
        )?;
        let warm_keys = dir.join(series_cache::KEYS_FILE);
        let started = std::time::Instant::now();
        match series.warm(&db, &warm_keys, WARM_UP_BUDGET) {
            Ok((0, 0)) => {}
            Ok((warmed, listed)) => tracing::info!(
                warmed,
                listed,
                ms = started.elapsed().as_millis() as u64,
                "series cache warmed with what it held before the restart"
            ),
            Err(e) => tracing::warn!(error = %e, "could not warm the series cache; starting cold"),
        }
        Ok(Store {
            db,
            dir: dir.to_owned(),
            writer,
            writer_thread: Mutex::new(Some(thread)),
            durable_head: durable.head,
            durable_position: durable.position,
            oldest,
            applied,
            metrics,
            series,
            recent,
            groups: Mutex::new(None),
        })
    }

    /// Opens sled, waiting a moment for the directory's lock: a store closed
    /// just before (a restart in the same process, or a process that has
    /// just exited) lets go of it when sled's background flusher stops.
    fn open_sled(dir: &Path, cache_bytes: u64) -> Result<sled::Db> {
        const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);
        let started = std::time::Instant::now();
        loop {
            match sled::Config::new().path(dir).cache_capacity(cache_bytes).open() {
                Ok(db) => return Ok(db),
                Err(sled::Error::Io(io)) if crate::error::lock_held(&io) && started.elapsed() < LOCK_WAIT => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => return Err(Error::open_failed(dir, e)),
            }
        }
    }

    /// Checks the format version; a new, empty store gets the current version
    /// and the built-in groups. Returns the head sequence.
    fn check_or_init(db: &sled::Db, dir: &Path) -> Result<u64> {
        match db.get(keys::META_FORMAT_VERSION)? {
            Some(v) => {
                let version = <[u8; 4]>::try_from(v.as_ref()).map(u32::from_be_bytes).ok();
                if version.is_some_and(|v| UPGRADABLE_FORMATS.contains(&v)) {
                    let moved = blocks::migrate(db)?;
                    tracing::info!(dir = %dir.display(), moved, "records and format 4 blocks moved into series blocks");
                    db.insert(keys::META_FORMAT_VERSION, &FORMAT_VERSION.to_be_bytes())?;
                    db.flush()?;
                    tracing::info!(dir = %dir.display(), from = version, to = FORMAT_VERSION, "store format upgraded");
                } else if version != Some(FORMAT_VERSION) {
                    return Err(Error::FailedPrecondition(format!(
                        "{} holds a tradewatch store of format {}; this build reads format {FORMAT_VERSION}",
                        dir.display(),
                        version.map_or("unknown".to_owned(), |v| v.to_string()),
                    )));
                }
                let head = db.get(keys::META_HEAD_SEQUENCE)?;
                Ok(head
                    .and_then(|h| <[u8; 8]>::try_from(h.as_ref()).ok())
                    .map_or(0, u64::from_be_bytes))
            }
            None if db.is_empty() => {
                let mut batch = sled::Batch::default();
                batch.insert(keys::META_FORMAT_VERSION, &FORMAT_VERSION.to_be_bytes());
                batch.insert(keys::META_HEAD_SEQUENCE, &0u64.to_be_bytes());
                let central_asia = PartnerGroup::central_asia();
                batch.insert(
                    keys::group_key(&central_asia.name),
                    codec::encode_group(&central_asia, BUILT_IN_TIME).encode_to_vec(),
                );
                db.apply_batch(batch)?;
                db.flush()?;
                Ok(0)
            }
            None => Err(Error::FailedPrecondition(format!(
                "{} holds data that is not a tradewatch store",
                dir.display()
            ))),
        }
    }

    /// Stops the writer after the queued writes and flushes. Writes after
    /// this answer UNAVAILABLE.
    pub async fn close(&self) {
        let thread = self.writer_thread.lock().ok().and_then(|mut t| t.take());
        if let Some(thread) = thread {
            self.writer.close(thread).await;
            self.save_cache_keys();
        }
    }

    /// Writes down which series the cache holds, for the next opening to
    /// read back before it serves (see [`series_cache`]).
    pub fn save_cache_keys(&self) {
        let path = self.dir.join(series_cache::KEYS_FILE);
        if let Err(e) = self.series.save_keys(&path) {
            tracing::warn!(path = %path.display(), error = %e, "cannot save the series cache's keys");
        }
    }

    /// The last event sequence that is on disk.
    pub fn durable_head(&self) -> u64 {
        *self.durable_head.borrow()
    }

    /// The last command log position applied and on disk.
    pub fn log_position(&self) -> u64 {
        *self.durable_position.borrow()
    }

    /// A receiver of the applied log position, to wait for one.
    pub fn subscribe_position(&self) -> watch::Receiver<u64> {
        self.durable_position.clone()
    }

    /// Returns once the store has applied the command log up to `position`
    /// (at once for 0); UNAVAILABLE if the store closes first.
    pub async fn wait_for_position(&self, position: u64) -> Result<()> {
        let mut applied = self.durable_position.clone();
        applied
            .wait_for(|&p| p >= position)
            .await
            .map(|_| ())
            .map_err(|_| Error::Unavailable("the store is closed (server shutting down)".into()))
    }

    pub fn get_record(&self, key: &RecordKey) -> Result<Option<StoredRecord>> {
        blocks::get(&self.db, key)
    }

    /// Records matching `plan` in key order, strictly after `after`, at
    /// most `limit` (at least 1).
    pub fn list_records(
        &self,
        plan: &ScanPlan<'_>,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<RecordPage> {
        let mut records = Vec::new();
        for (natural, prefix) in self.runs(plan)? {
            // Where this run starts reading: the resume point's block if it
            // lies in this run; runs wholly before it are passed over.
            let start = match after {
                Some(a) if a.starts_with(&natural) && a.len() >= SERIES_PREFIX_LEN => {
                    blocks::block_key_of(a).to_vec()
                }
                Some(a) if natural.as_slice() < a && !a.starts_with(&natural) => continue,
                _ => prefix.clone(),
            };
            for entry in self.db.range(start..) {
                let (block, value) = entry?;
                if !block.starts_with(&prefix) {
                    break;
                }
                for stored in blocks::records(&block, blocks::decode(&block, &value)?) {
                    let stored = stored?;
                    let key = &stored.record.key;
                    if after.is_some_and(|a| keys::record_key(key).as_slice() <= a) || !(plan.filter)(key) {
                        continue;
                    }
                    records.push(stored);
                    if records.len() > limit {
                        // One more than asked for: the page ends before it,
                        // and the caller knows more follow.
                        records.pop();
                        let resume_after = records.last().map(|r| keys::record_key(&r.record.key).to_vec());
                        return Ok(RecordPage {
                            records,
                            resume_after,
                        });
                    }
                }
            }
        }
        Ok(RecordPage {
            records,
            resume_after: None,
        })
    }

    /// The runs of series blocks `plan` reads, in records' key order: one
    /// per reporter, partner and commodity level that has series (a run's
    /// blocks are in code order), each as the first bytes of its records'
    /// keys and its blocks' key prefix.
    fn runs(&self, plan: &ScanPlan<'_>) -> Result<Vec<([u8; 8], Vec<u8>)>> {
        const LEVELS: [u8; 4] = [0, 2, 4, 6];
        let children = |level| self.series.children(&self.db, level);
        let reporters: Vec<[u8; 3]> = match plan.reporters {
            Some(set) => set.iter().map(|c| c.as_bytes()).collect(),
            None => children(Level::Reporters)?
                .chunks_exact(3)
                .map(|c| [c[0], c[1], c[2]])
                .collect(),
        };
        let mut runs = Vec::new();
        for r in reporters {
            // Each level's partners, as three-byte codes back to back.
            let per_level = LEVELS
                .iter()
                .map(|&l| children(Level::Partners(r, l)))
                .collect::<Result<Vec<_>>>()?;
            let has = |level: usize, p: &[u8; 3]| per_level[level].chunks_exact(3).any(|c| c == p);
            let partners: Vec<[u8; 3]> = match plan.partners {
                Some(set) => set.iter().map(|c| c.as_bytes()).collect(),
                None => {
                    let mut all: Vec<[u8; 3]> = per_level
                        .iter()
                        .flat_map(|list| list.chunks_exact(3).map(|c| [c[0], c[1], c[2]]))
                        .collect();
                    all.sort_unstable();
                    all.dedup();
                    all
                }
            };
            for p in partners {
                for (i, &l) in LEVELS.iter().enumerate() {
                    if has(i, &p) {
                        let mut natural = [keys::NS_RECORD, 0, 0, 0, 0, 0, 0, l];
                        natural[1..4].copy_from_slice(&r);
                        natural[4..7].copy_from_slice(&p);
                        runs.push((natural, blocks::prefix(Some(r), Some(l), Some(p))));
                    }
                }
            }
        }
        Ok(runs)
    }

    /// Applies a command (see [`crate::core`]) as the next in this store's
    /// log, and answers once its effect is on disk. A command carrying a
    /// request id already applied is answered with the first outcome and
    /// changes nothing.
    pub async fn apply(&self, command: Command) -> Result<Applied> {
        Ok(self.queue(command, Position::Next).await?.await?)
    }

    /// Queues a command like [`Store::apply`], at `position` of the log,
    /// and returns once it is queued; the future answers once it is on
    /// disk. Commands queued one after another are applied in that order
    /// and can share a flush, so a bulk load can keep several in flight.
    pub async fn queue(
        &self,
        command: Command,
        position: Position,
    ) -> Result<impl std::future::Future<Output = Reply> + use<>> {
        // A large batch reads what it will change before it reaches the
        // writer, on another thread, so the writer only confirms the reads.
        let mut prefetch: Option<Prefetch> = None;
        if let Action::PutRecords(records) = &command.action
            && records.len() >= PREFETCH_MIN_RECORDS
        {
            let (db, applied) = (self.db.clone(), self.applied.clone());
            let keys: Vec<RecordKey> = records.iter().map(|r| r.key).collect();
            let read = tokio::task::spawn_blocking(move || Prefetch::read(&db, &applied, &keys));
            prefetch = Some(
                read.await
                    .map_err(|e| Error::Unavailable(format!("reading the batch's records: {e}")))??,
            );
        }
        self.writer.enqueue(command, position, prefetch).await
    }

    /// Creates or revises records in one atomic, durable batch, accepted
    /// now. The records must have distinct keys.
    pub async fn put_records(
        &self,
        records: Vec<TradeRecord>,
        request: Option<RequestTag>,
    ) -> Result<PutOutcome> {
        self.queue_records(records, request).await?.await
    }

    /// Queues a batch like [`Store::put_records`] (see [`Store::queue`]).
    pub async fn queue_records(
        &self,
        records: Vec<TradeRecord>,
        request: Option<RequestTag>,
    ) -> Result<impl std::future::Future<Output = Result<PutOutcome>> + use<>> {
        let queued = self
            .queue(Command::new(Action::PutRecords(records), request), Position::Next)
            .await?;
        Ok(async move { queued.await?.outcome.into_put() })
    }

    /// Deletes a record; returns it as it was and the event's sequence.
    pub async fn delete_record(&self, key: RecordKey, request: Option<RequestTag>) -> Result<RecordDeleted> {
        self.apply(Command::new(Action::DeleteRecord(key), request))
            .await?
            .outcome
            .into_record_deleted()
    }

    pub fn get_group(&self, name: &GroupName) -> Result<Option<(PartnerGroup, Timestamp)>> {
        let k = keys::group_key(name);
        self.db.get(&k)?.map(|v| codec::decode_group(&k, &v)).transpose()
    }

    pub fn list_groups(&self) -> Result<Vec<(PartnerGroup, Timestamp)>> {
        self.db
            .scan_prefix([keys::NS_GROUP])
            .map(|entry| {
                let (k, v) = entry?;
                codec::decode_group(&k, &v)
            })
            .collect()
    }

    /// Every group by name, for resolving selectors.
    pub fn groups_by_name(&self) -> Result<Groups> {
        // Every commit (a group edit among them) moves the generation after
        // it is applied and before it is acknowledged: groups read after
        // loading a generation are at least as recent as it.
        let generation = self.series.generation();
        let lock = || {
            self.groups
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        };
        if let Some((at, groups)) = lock().as_ref()
            && *at == generation
        {
            return Ok(groups.clone());
        }
        let groups = Arc::new(view::read_groups(&self.db)?);
        *lock() = Some((generation, groups.clone()));
        Ok(groups)
    }

    /// Creates or replaces a group; the watches that name it follow the new
    /// members at once (their milestones cause GROUP_CHANGE).
    pub async fn put_group(&self, group: PartnerGroup, request: Option<RequestTag>) -> Result<GroupWritten> {
        self.apply(Command::new(Action::PutGroup(group), request))
            .await?
            .outcome
            .into_group()
    }

    /// Deletes a group; returns it as it was. A group a watch names cannot
    /// be deleted (FAILED_PRECONDITION): delete or redefine the watch first.
    pub async fn delete_group(&self, name: GroupName, request: Option<RequestTag>) -> Result<GroupWritten> {
        self.apply(Command::new(Action::DeleteGroup(name), request))
            .await?
            .outcome
            .into_group()
    }

    /// Creates a watch (assigning an id when it has none, refusing one past
    /// its `max_watches`) and arms it from the data already stored; with
    /// `backfill`, also stores the milestones that data implies.
    pub async fn create_watch(&self, watch: NewWatch, request: Option<RequestTag>) -> Result<WatchWritten> {
        self.apply(Command::new(Action::CreateWatch(Box::new(watch)), request))
            .await?
            .outcome
            .into_watch()
    }

    /// Deletes a watch; returns it as it was.
    pub async fn delete_watch(&self, id: WatchId, request: Option<RequestTag>) -> Result<WatchWritten> {
        self.apply(Command::new(Action::DeleteWatch(id), request))
            .await?
            .outcome
            .into_watch()
    }

    pub fn get_watch(&self, id: &WatchId) -> Result<Option<(WatchDef, Timestamp)>> {
        let groups = view::read_groups(&self.db)?;
        let key = watches::watch_key(id);
        self.db
            .get(&key)?
            .map(|v| watches::decode_watch_entry(&key, &v, &groups))
            .transpose()
    }

    pub fn list_watches(&self) -> Result<Vec<(WatchDef, Timestamp)>> {
        let groups = view::read_groups(&self.db)?;
        self.db
            .scan_prefix([watches::NS_WATCH])
            .map(|entry| {
                let (k, v) = entry?;
                watches::decode_watch_entry(&k, &v, &groups)
            })
            .collect()
    }

    /// Stored events from `from` on, at most `limit`, in order.
    pub fn events(&self, from: u64, limit: usize) -> Result<Vec<Event>> {
        let from = from.max(1);
        // The entry holding `from` is the last one starting at or before it.
        let probe = keys::event_block_probe(from);
        let start = match self.db.range(keys::event_block_key(0, 0)..=probe).next_back() {
            Some(entry) => {
                let (k, _) = entry?;
                let (_, last) = keys::decode_event_block_key(&k)?;
                if last >= from { k.to_vec() } else { probe.to_vec() }
            }
            None => probe.to_vec(),
        };
        let mut out = Vec::new();
        for entry in self.db.range(start..) {
            let (k, v) = entry?;
            if k.first() != Some(&keys::NS_EVENT) || out.len() == limit {
                break;
            }
            let events = codec::decode_event_entry(&k, &v)?;
            out.extend(
                events
                    .into_iter()
                    .filter(|e| e.sequence >= from)
                    .take(limit - out.len()),
            );
        }
        Ok(out)
    }

    /// The events from `next` through `head` (at most `limit`), for a
    /// reader that has considered every event before `next`:
    /// `OUT_OF_RANGE` when retention has removed `next` meanwhile, rather
    /// than a silent gap.
    pub fn read_log(&self, next: u64, head: u64, limit: usize) -> Result<Vec<Arc<Event>>> {
        let mut events = VecDeque::new();
        self.read_log_into(next, head, limit, &mut events)?;
        Ok(events.into())
    }

    /// [`Store::read_log`], appending to `out` (a subscriber reuses its
    /// buffer rather than take a new one for every event).
    pub fn read_log_into(
        &self,
        next: u64,
        head: u64,
        limit: usize,
        out: &mut VecDeque<Arc<Event>>,
    ) -> Result<()> {
        if next > head {
            return Ok(());
        }
        if next >= self.oldest_sequence() && self.recent.read_into(next, head, limit, out) {
            return Ok(());
        }
        let events = self.events(next, limit)?;
        if let Some(first) = events.first().map(|e| e.sequence)
            && first > next
        {
            return Err(Error::EventsTrimmed {
                requested: next,
                oldest: first,
            });
        }
        out.extend(events.into_iter().filter(|e| e.sequence <= head).map(Arc::new));
        Ok(())
    }

    /// The write stored under `tag`'s request id, its outcome read as
    /// `action`'s kind when the fingerprint is `tag`'s; `None` when no write
    /// with that id is kept.
    pub fn stored_request(
        &self,
        tag: &RequestTag,
        action: &Action,
    ) -> Result<Option<crate::core::StoredRequest>> {
        requests::lookup(&self.db, &tag.id, &tag.fingerprint, action, || {
            view::read_groups(&self.db)
        })
    }

    /// Queues a copy of the whole store, as of right after the commands
    /// queued before, into a file in the data dir (see [`snapshot`]); the
    /// future answers with the file and the log position it holds. The
    /// writer applies nothing else while it copies.
    pub async fn export(
        &self,
    ) -> Result<impl std::future::Future<Output = Result<(std::path::PathBuf, u64)>> + use<>> {
        let path = self.dir.join(snapshot::EXPORT_FILE);
        let copied = self.writer.export(path.clone()).await?;
        Ok(async move { Ok((path, copied.await?)) })
    }

    /// The oldest event sequence the log retains.
    pub fn oldest_sequence(&self) -> u64 {
        self.oldest.load(Ordering::Acquire)
    }

    /// A durable-head receiver, to wait for new events.
    pub fn subscribe_head(&self) -> watch::Receiver<u64> {
        self.durable_head.clone()
    }

    /// Where this store's writes and subscriptions are counted.
    pub fn metrics(&self) -> &crate::metrics::Metrics {
        &self.metrics
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{RawKey, RawRecord};

    /// `n` distinct export records of CHN to KAZ, one per HS6-like code.
    fn records(n: usize, units: i64) -> Vec<TradeRecord> {
        records_of(n, units, "2025")
    }

    /// Like [`records`], for `period`.
    fn records_of(n: usize, units: i64, period: &str) -> Vec<TradeRecord> {
        (0..n)
            .map(|i| {
                let commodity = format!("{:06}", 10_000 + i);
                TradeRecord::parse(&RawRecord {
                    key: RawKey {
                        reporter: "CHN",
                        partner: "KAZ",
                        flow: 1,
                        period,
                        commodity: &commodity,
                        currency: "USD",
                    },
                    units,
                    ..Default::default()
                })
                .expect("valid record")
            })
            .collect()
    }

    fn sequences(store: &Store, from: u64, limit: usize) -> Vec<u64> {
        store
            .events(from, limit)
            .unwrap()
            .into_iter()
            .map(|e| e.sequence)
            .collect()
    }

    fn open(dir: &Path, retain: u64) -> Store {
        Store::open(dir, 64 << 20, retain).unwrap()
    }

    /// A data dir in use is refused after a moment's wait, saying why; one
    /// let go of within that moment opens.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_data_dir_in_use_is_waited_for_a_moment() {
        let tmp = tempfile::tempdir().unwrap();
        let first = open(tmp.path(), 0);
        let started = std::time::Instant::now();
        let refused = Store::open(tmp.path(), 64 << 20, 0)
            .err()
            .expect("the data dir is in use");
        assert!(started.elapsed() >= std::time::Duration::from_secs(2));
        assert!(
            refused.to_string().contains("is another tradewatch using it?"),
            "{refused}"
        );
        let closing = tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            first.close().await;
        });
        let dir = tmp.path().to_owned();
        let second = tokio::task::spawn_blocking(move || Store::open(&dir, 64 << 20, 0));
        closing.await.unwrap();
        second.await.unwrap().expect("opens once the first lets go");
    }

    #[tokio::test]
    async fn events_read_the_same_across_block_boundaries() {
        let tmp = tempfile::tempdir().unwrap();
        let store = open(tmp.path(), 0);
        // 600 events: blocks of 256, 256, 88; then blocks of one.
        store.put_records(records(600, 1), None).await.unwrap();
        for units in 2..5 {
            store.put_records(records(1, units), None).await.unwrap();
        }
        let all: Vec<u64> = (1..=603).collect();
        assert_eq!(sequences(&store, 0, usize::MAX), all);
        assert_eq!(sequences(&store, 1, usize::MAX), all);
        for from in [2, 255, 256, 257, 300, 512, 513, 600, 601, 603] {
            assert_eq!(
                sequences(&store, from, 10),
                (from..=603).take(10).collect::<Vec<_>>(),
                "from {from}"
            );
        }
        assert_eq!(sequences(&store, 604, 10), Vec::<u64>::new());
        // Paging by any page size sees every event once.
        for page in [1, 7, 100, 256, 1000] {
            let mut seen = Vec::new();
            let mut next = 1;
            loop {
                let chunk = sequences(&store, next, page);
                let Some(&last) = chunk.last() else { break };
                seen.extend(chunk);
                next = last + 1;
            }
            assert_eq!(seen, all, "page {page}");
        }
        store.close().await;
    }

    #[tokio::test]
    async fn retention_removes_whole_blocks_and_reads_from_the_oldest_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let store = open(tmp.path(), 100);
        store.put_records(records(600, 1), None).await.unwrap();
        // The log keeps the newest 100: 501..=600. Entries below are
        // removed by the writes that follow, a block straddling the cut
        // stays on disk but is not read from below it.
        assert_eq!(store.oldest_sequence(), 501);
        assert_eq!(
            sequences(&store, 501, usize::MAX),
            (501..=600).collect::<Vec<_>>()
        );
        store.put_records(records(600, 2), None).await.unwrap();
        assert_eq!(store.oldest_sequence(), 1101);
        assert_eq!(
            sequences(&store, 1101, usize::MAX),
            (1101..=1200).collect::<Vec<_>>()
        );
        let entries: Vec<_> = store
            .db
            .scan_prefix([keys::NS_EVENT])
            .map(|e| keys::decode_event_block_key(&e.unwrap().0).unwrap())
            .collect();
        assert_eq!(entries, vec![(601, 856), (857, 1112), (1113, 1200)]);
        store.close().await;
    }

    #[tokio::test]
    async fn a_format_3_store_of_one_record_per_key_is_moved_into_series_blocks() {
        let tmp = tempfile::tempdir().unwrap();
        let store = open(tmp.path(), 0);
        store.put_records(records_of(40, 1, "2024"), None).await.unwrap();
        store.put_records(records_of(40, 2, "2025"), None).await.unwrap();
        let everything = |store: &Store| {
            let plan = ScanPlan {
                reporters: None,
                partners: None,
                filter: &|_| true,
            };
            store.list_records(&plan, None, 1000).unwrap().records
        };
        let before = everything(&store);
        assert_eq!(before.len(), 80);
        store.close().await;
        drop(store);
        // Rewrite the records as format 3 stored them, one to a key, and
        // upgrade part of them, as an upgrade cut short would leave them.
        {
            let db = Store::open_sled(tmp.path(), 64 << 20).unwrap();
            let mut batch = sled::Batch::default();
            for entry in db.scan_prefix([blocks::NS_SERIES]) {
                let (k, v) = entry.unwrap();
                batch.remove(k.clone());
                for stored in blocks::records(&k, blocks::decode(&k, &v).unwrap()) {
                    let stored = stored.unwrap();
                    batch.insert(
                        &keys::record_key(&stored.record.key),
                        codec::encode_record(&stored).encode_to_vec(),
                    );
                }
            }
            batch.insert(keys::META_FORMAT_VERSION, &3u32.to_be_bytes());
            db.apply_batch(batch).unwrap();
            assert_eq!(db.scan_prefix([keys::NS_RECORD]).count(), 80);
            // Whole series only: 7 records asked for, 8 moved (4 series of 2).
            assert_eq!(blocks::migrate_batch(&db, 7).unwrap(), 8);
            assert_eq!(db.scan_prefix([blocks::NS_SERIES]).count(), 4);
            db.flush().unwrap();
        }
        let store = open(tmp.path(), 0);
        assert_eq!(everything(&store), before);
        assert_eq!(store.db.scan_prefix([keys::NS_RECORD]).count(), 0);
        assert_eq!(store.db.scan_prefix([blocks::NS_SERIES]).count(), 40);
        let version = store.db.get(keys::META_FORMAT_VERSION).unwrap().unwrap();
        assert_eq!(version.as_ref(), &FORMAT_VERSION.to_be_bytes());
        assert_eq!(
            store.get_record(&before[3].record.key).unwrap().as_ref(),
            Some(&before[3])
        );
        store.close().await;
    }

    /// Records of three partners of CHN (and one of DEU) at three
    /// commodity levels and two periods.
    fn mixed_records(units: i64) -> Vec<TradeRecord> {
        let mut out = Vec::new();
        for reporter in ["CHN", "DEU"] {
            for partner in ["UZB", "KAZ", "KGZ", "WLD"] {
                for commodity in ["TOTAL", "27", "85", "2701", "270111"] {
                    for period in ["2024", "2025", "2025-03"] {
                        let key = RawKey {
                            reporter,
                            partner,
                            flow: 1,
                            period,
                            commodity,
                            currency: "USD",
                        };
                        out.push(
                            TradeRecord::parse(&RawRecord {
                                key,
                                units,
                                ..Default::default()
                            })
                            .expect("valid record"),
                        );
                    }
                }
            }
        }
        out
    }

    fn list_all(store: &Store, page: usize) -> Vec<StoredRecord> {
        let plan = ScanPlan {
            reporters: None,
            partners: None,
            filter: &|_| true,
        };
        let mut out = Vec::new();
        let mut after: Option<Vec<u8>> = None;
        loop {
            let got = store.list_records(&plan, after.as_deref(), page).unwrap();
            out.extend(got.records);
            match got.resume_after {
                Some(a) => after = Some(a),
                None => return out,
            }
        }
    }

    #[tokio::test]
    async fn records_are_listed_in_key_order_across_levels_and_pages() {
        let tmp = tempfile::tempdir().unwrap();
        let store = open(tmp.path(), 0);
        store.put_records(mixed_records(5), None).await.unwrap();
        let mut expected: Vec<RecordKey> = mixed_records(5).iter().map(|r| r.key).collect();
        expected.sort_by_key(keys::record_key);
        for page in [1, 7, 1000] {
            let listed: Vec<RecordKey> = list_all(&store, page).iter().map(|r| r.record.key).collect();
            assert_eq!(listed, expected, "pages of {page}");
        }
        // One reporter and two partners, named.
        let reporters: BTreeSet<CountryCode> = [CountryCode::parse("CHN").unwrap()].into();
        let partners: BTreeSet<CountryCode> = [
            CountryCode::parse("KGZ").unwrap(),
            CountryCode::parse("UZB").unwrap(),
        ]
        .into();
        let plan = ScanPlan {
            reporters: Some(&reporters),
            partners: Some(&partners),
            filter: &|_| true,
        };
        let listed: Vec<RecordKey> = store
            .list_records(&plan, None, 1000)
            .unwrap()
            .records
            .iter()
            .map(|r| r.record.key)
            .collect();
        let wanted: Vec<RecordKey> = expected
            .iter()
            .filter(|k| reporters.contains(&k.reporter) && partners.contains(&k.partner))
            .copied()
            .collect();
        assert_eq!(listed, wanted);
        store.close().await;
    }

    #[tokio::test]
    async fn batches_queued_together_each_see_the_blocks_the_ones_before_wrote() {
        let tmp = tempfile::tempdir().unwrap();
        let store = open(tmp.path(), 0);
        // Each batch adds a period to the same 100 series and revises the
        // period of the batch before: read ahead while the ones before are
        // still queued, each must still build on what they wrote.
        let batch = |year: u32, units: i64| -> Vec<TradeRecord> {
            let mut out = records_of(100, units, &year.to_string());
            if year > 2000 {
                out.extend(records_of(100, units, &(year - 1).to_string()));
            }
            out
        };
        let mut queued = Vec::new();
        for (i, year) in (2000..2020).enumerate() {
            queued.push(
                store
                    .queue_records(batch(year, i as i64 + 1), None)
                    .await
                    .unwrap(),
            );
        }
        for q in queued {
            q.await.unwrap();
        }
        let everything = list_all(&store, 10_000);
        assert_eq!(everything.len(), 100 * 20);
        for stored in &everything {
            let year = stored.record.key.period.year();
            let i = i64::from(year - 2000);
            // Written by its own batch, then revised by the next one (but the
            // last year's).
            let (units, revision) = if year == 2019 { (i + 1, 1) } else { (i + 2, 2) };
            assert_eq!(
                stored.record.value().nanos(),
                i128::from(units) * 1_000_000_000,
                "{}",
                stored.record.key
            );
            assert_eq!(stored.revision, revision, "{}", stored.record.key);
        }
        store.close().await;
    }

    #[tokio::test]
    async fn a_format_4_store_has_its_blocks_moved_to_their_new_keys() {
        let tmp = tempfile::tempdir().unwrap();
        let store = open(tmp.path(), 0);
        store.put_records(mixed_records(7), None).await.unwrap();
        let before = list_all(&store, 1000);
        assert_eq!(before.len(), mixed_records(7).len());
        store.close().await;
        drop(store);
        // Rewrite the blocks under format 4's keys (the series prefix with
        // namespace `b`) and move part of them back, as an upgrade cut
        // short would leave them.
        let blocks_count = {
            let db = Store::open_sled(tmp.path(), 64 << 20).unwrap();
            let mut batch = sled::Batch::default();
            let mut n = 0;
            for entry in db.scan_prefix([blocks::NS_SERIES]) {
                let (k, v) = entry.unwrap();
                let mut old = blocks::series_of(&k);
                old[0] = blocks::NS_SERIES_V4;
                batch.remove(k.clone());
                batch.insert(&old, v);
                n += 1;
            }
            batch.insert(keys::META_FORMAT_VERSION, &4u32.to_be_bytes());
            db.apply_batch(batch).unwrap();
            assert_eq!(db.scan_prefix([blocks::NS_SERIES]).count(), 0);
            assert_eq!(blocks::rekey_batch(&db, 5).unwrap(), 5);
            assert_eq!(db.scan_prefix([blocks::NS_SERIES]).count(), 5);
            db.flush().unwrap();
            n
        };
        let store = open(tmp.path(), 0);
        assert_eq!(list_all(&store, 1000), before);
        assert_eq!(list_all(&store, 3), before);
        assert_eq!(store.db.scan_prefix([blocks::NS_SERIES_V4]).count(), 0);
        assert_eq!(store.db.scan_prefix([blocks::NS_SERIES]).count(), blocks_count);
        let version = store.db.get(keys::META_FORMAT_VERSION).unwrap().unwrap();
        assert_eq!(version.as_ref(), &FORMAT_VERSION.to_be_bytes());
        assert_eq!(
            store.get_record(&before[17].record.key).unwrap().as_ref(),
            Some(&before[17])
        );
        store.close().await;
    }

    #[tokio::test]
    async fn blocks_are_stored_compressed_and_a_format_2_store_of_plain_blocks_is_read() {
        let tmp = tempfile::tempdir().unwrap();
        let store = open(tmp.path(), 0);
        store.put_records(records(600, 1), None).await.unwrap();
        let before = store.events(1, usize::MAX).unwrap();
        let mut stored = 0;
        for entry in store.db.scan_prefix([keys::NS_EVENT]) {
            let (k, v) = entry.unwrap();
            let plain = codec::EventBlock {
                events: codec::decode_event_entry(&k, &v)
                    .unwrap()
                    .iter()
                    .map(codec::encode_event)
                    .collect(),
            }
            .encode_to_vec();
            assert!(
                v.len() * 4 < plain.len(),
                "{} bytes for {} uncompressed",
                v.len(),
                plain.len()
            );
            stored += 1;
        }
        assert_eq!(stored, 3);
        store.close().await;
        drop(store);
        // Rewrite the log as format 2 wrote it: the same blocks, plain.
        {
            let db = Store::open_sled(tmp.path(), 64 << 20).unwrap();
            let mut batch = sled::Batch::default();
            for entry in db.scan_prefix([keys::NS_EVENT]) {
                let (k, v) = entry.unwrap();
                let events = codec::decode_event_entry(&k, &v).unwrap();
                let block = codec::EventBlock {
                    events: events.iter().map(codec::encode_event).collect(),
                };
                batch.insert(k, block.encode_to_vec());
            }
            batch.insert(keys::META_FORMAT_VERSION, &2u32.to_be_bytes());
            db.apply_batch(batch).unwrap();
            db.flush().unwrap();
        }
        let store = open(tmp.path(), 0);
        assert_eq!(store.events(1, usize::MAX).unwrap(), before);
        assert_eq!(sequences(&store, 300, 3), vec![300, 301, 302]);
        let version = store.db.get(keys::META_FORMAT_VERSION).unwrap().unwrap();
        assert_eq!(version.as_ref(), &FORMAT_VERSION.to_be_bytes());
        store.close().await;
    }

    #[tokio::test]
    async fn a_format_1_store_with_one_event_per_key_is_upgraded_and_read() {
        let tmp = tempfile::tempdir().unwrap();
        let store = open(tmp.path(), 0);
        store.put_records(records(300, 1), None).await.unwrap();
        let before = store.events(1, usize::MAX).unwrap();
        store.close().await;
        drop(store);
        // Rewrite the log as format 1 wrote it (waiting, as a restart does,
        // for the lock the closed store is letting go of).
        {
            let db = Store::open_sled(tmp.path(), 64 << 20).unwrap();
            let mut batch = sled::Batch::default();
            for entry in db.scan_prefix([keys::NS_EVENT]) {
                let (k, v) = entry.unwrap();
                batch.remove(k.clone());
                for event in codec::decode_event_entry(&k, &v).unwrap() {
                    let mut key = vec![keys::NS_EVENT];
                    key.extend_from_slice(&event.sequence.to_be_bytes());
                    batch.insert(key, codec::encode_event(&event).encode_to_vec());
                }
            }
            batch.insert(keys::META_FORMAT_VERSION, &1u32.to_be_bytes());
            db.apply_batch(batch).unwrap();
            db.flush().unwrap();
            assert_eq!(db.scan_prefix([keys::NS_EVENT]).count(), 300);
        }
        let store = open(tmp.path(), 0);
        assert_eq!(store.events(1, usize::MAX).unwrap(), before);
        assert_eq!(sequences(&store, 150, 3), vec![150, 151, 152]);
        let version = store.db.get(keys::META_FORMAT_VERSION).unwrap().unwrap();
        assert_eq!(version.as_ref(), &FORMAT_VERSION.to_be_bytes());
        // New writes go into blocks after the old entries.
        store.put_records(records(2, 5), None).await.unwrap();
        assert_eq!(sequences(&store, 299, 10), vec![299, 300, 301, 302]);
        store.close().await;
    }
}
