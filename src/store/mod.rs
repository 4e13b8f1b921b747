//! Everything that knows sled: key layout, atomic apply, recovery.

mod codec;
mod facts;
mod keys;
mod rollup;
mod scan;
mod watches;
mod writer;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use prost::Message;
use prost_types::Timestamp;
use tokio::sync::watch;

use crate::domain::{
    CountryCode, GroupName, PartnerGroup, RecordKey, StoredRecord, TradeRecord, WatchDef, WatchId,
    WriteOutcome,
};
use crate::error::{Error, Result};
pub use codec::{EventKind, EventValue, MilestoneValue, RecordStoredValue, RecordValue, decode_amount};

/// A stored record value inside an event, if there is one.
pub type RecordValueRef<'a> = Option<&'a RecordValue>;
pub use facts::{Fact, FactScan, FactSource};
pub use rollup::Tally;
pub use writer::SequenceRange;
use writer::{Change, Pending, Writer, WriterHandle};

/// The on-disk layout version. A directory written with another version is
/// refused rather than misread.
pub const FORMAT_VERSION: u32 = 1;

/// The outcome of a batch of record writes.
#[derive(Debug, Clone)]
pub struct PutOutcome {
    /// Per record, in request order: what happened and the revision after.
    pub results: Vec<(RecordKey, WriteOutcome, i64)>,
    pub sequences: Option<SequenceRange>,
}

/// A page of records and where the next one starts.
pub struct RecordPage {
    pub records: Vec<StoredRecord>,
    /// Encoded key of the last record returned, when more may follow.
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
    writer: WriterHandle,
    writer_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    durable_head: watch::Receiver<u64>,
    /// The oldest event the log retains.
    oldest: Arc<AtomicU64>,
}

impl Store {
    /// Opens (or creates) the store in `dir`, refusing a directory of another
    /// format.
    /// `retain_events` keeps only the newest that many events (0: all).
    pub fn open(dir: &Path, cache_bytes: u64, retain_events: u64) -> Result<Store> {
        std::fs::create_dir_all(dir).map_err(|e| {
            Error::FailedPrecondition(format!("cannot create data dir {}: {e}", dir.display()))
        })?;
        let db = Self::open_sled(dir, cache_bytes)?;
        let head = Self::check_or_init(&db, dir)?;
        let oldest = db
            .get(keys::META_OLDEST_SEQUENCE)?
            .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
            .map_or(1, u64::from_be_bytes);
        let oldest = Arc::new(AtomicU64::new(oldest));
        let (writer, thread, durable_head) = Writer::spawn(db.clone(), head, retain_events, oldest.clone())?;
        Ok(Store {
            db,
            writer,
            writer_thread: Mutex::new(Some(thread)),
            durable_head,
            oldest,
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
                Err(sled::Error::Io(io))
                    if io.kind() == std::io::ErrorKind::WouldBlock && started.elapsed() < LOCK_WAIT =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(sled::Error::Io(io)) => {
                    return Err(Error::FailedPrecondition(format!(
                        "cannot open store in {} (is another tradewatch using it?): {io}",
                        dir.display()
                    )));
                }
                Err(other) => return Err(Error::Storage(other)),
            }
        }
    }

    /// Checks the format version; a new, empty store gets the current version
    /// and the built-in groups. Returns the head sequence.
    fn check_or_init(db: &sled::Db, dir: &Path) -> Result<u64> {
        match db.get(keys::META_FORMAT_VERSION)? {
            Some(v) => {
                let version = <[u8; 4]>::try_from(v.as_ref()).map(u32::from_be_bytes).ok();
                if version != Some(FORMAT_VERSION) {
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
                    codec::encode_group(&central_asia, now()).encode_to_vec(),
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
        }
    }

    /// The last event sequence that is on disk.
    pub fn durable_head(&self) -> u64 {
        *self.durable_head.borrow()
    }

    pub fn get_record(&self, key: &RecordKey) -> Result<Option<StoredRecord>> {
        let k = keys::record_key(key);
        self.db.get(k)?.map(|v| codec::decode_record(&k, &v)).transpose()
    }

    /// Records matching `plan` in key order, strictly after `after`, at
    /// most `limit`.
    pub fn list_records(
        &self,
        plan: &ScanPlan<'_>,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<RecordPage> {
        let prefixes = Self::prefixes(plan);
        let mut records = Vec::new();
        for prefix in &prefixes {
            let range = match after {
                Some(a) if a >= prefix.as_slice() => {
                    if !a.starts_with(prefix) {
                        continue; // this whole prefix lies before the resume point
                    }
                    let mut start = a.to_vec();
                    start.push(0); // strictly after
                    self.db.range(start..)
                }
                _ => self.db.range(prefix.as_slice()..),
            };
            for entry in range {
                let (k, v) = entry?;
                if !k.starts_with(prefix) {
                    break;
                }
                let key = keys::decode_record_key(&k)?;
                if plan.partners.is_some_and(|p| !p.contains(&key.partner)) || !(plan.filter)(&key) {
                    continue;
                }
                records.push(codec::decode_record(&k, &v)?);
                if records.len() == limit {
                    return Ok(RecordPage {
                        records,
                        resume_after: Some(k.to_vec()),
                    });
                }
            }
        }
        Ok(RecordPage {
            records,
            resume_after: None,
        })
    }

    /// Key prefixes to scan, sorted and disjoint.
    fn prefixes(plan: &ScanPlan<'_>) -> Vec<Vec<u8>> {
        match (plan.reporters, plan.partners) {
            (None, _) => vec![keys::record_prefix(None, None)],
            (Some(reporters), None) => reporters
                .iter()
                .map(|&r| keys::record_prefix(Some(r), None))
                .collect(),
            (Some(reporters), Some(partners)) => reporters
                .iter()
                .flat_map(|&r| {
                    partners
                        .iter()
                        .map(move |&p| keys::record_prefix(Some(r), Some(p)))
                })
                .collect(),
        }
    }

    /// Creates or revises records in one atomic, durable batch. The records
    /// must have distinct keys.
    pub async fn put_records(&self, records: Vec<TradeRecord>) -> Result<PutOutcome> {
        self.queue_records(records).await?.await
    }

    /// Queues a batch like [`Store::put_records`] and returns once it is
    /// queued; the future answers once it is on disk. Batches queued one
    /// after another are applied in that order and can share a flush, so a
    /// bulk load can keep several in flight.
    pub async fn queue_records(
        &self,
        records: Vec<TradeRecord>,
    ) -> Result<impl std::future::Future<Output = Result<PutOutcome>> + use<>> {
        self.writer
            .enqueue(move |w| {
                let now = now();
                let mut changes = Vec::new();
                let mut results = Vec::with_capacity(records.len());
                for record in records {
                    let key = record.key;
                    let k = keys::record_key(&key);
                    let before = w.get(&k)?.map(|v| codec::decode_record(&k, &v)).transpose()?;
                    let (outcome, revision) = match &before {
                        None => (WriteOutcome::Created, 1),
                        Some(old) if old.record == record => (WriteOutcome::Unchanged, old.revision),
                        Some(old) => (WriteOutcome::Revised, old.revision + 1),
                    };
                    results.push((key, outcome, revision));
                    if outcome != WriteOutcome::Unchanged {
                        let after = Some(StoredRecord {
                            record,
                            revision,
                            updated_at: now,
                        });
                        changes.push(Change { key, before, after });
                    }
                }
                let sequences = w.commit(&changes, Pending::default(), now)?;
                Ok(PutOutcome { results, sequences })
            })
            .await
    }

    /// Deletes a record; returns it as it was and the event's sequence.
    pub async fn delete_record(&self, key: RecordKey) -> Result<(StoredRecord, u64)> {
        self.writer
            .submit(move |w| {
                let k = keys::record_key(&key);
                let Some(before) = w.get(&k)?.map(|v| codec::decode_record(&k, &v)).transpose()? else {
                    return Err(Error::NotFound(format!("no record {key}")));
                };
                let change = Change {
                    key,
                    before: Some(before.clone()),
                    after: None,
                };
                let range = w.commit(&[change], Pending::default(), now())?;
                // The deletion's own event comes first; milestones follow it.
                Ok((before, range.map_or(0, |r| r.first)))
            })
            .await
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
    pub fn groups_by_name(&self) -> Result<BTreeMap<GroupName, PartnerGroup>> {
        writer::read_groups(&self.db)
    }

    /// Creates or replaces a group; the watches that name it follow the new
    /// members at once (their milestones cause GROUP_CHANGE).
    pub async fn put_group(
        &self,
        group: PartnerGroup,
    ) -> Result<(PartnerGroup, Timestamp, Option<SequenceRange>)> {
        self.writer
            .submit(move |w| {
                let now = now();
                let mut pending = Pending::default();
                pending.batch.insert(
                    keys::group_key(&group.name),
                    codec::encode_group(&group, now).encode_to_vec(),
                );
                let mut groups = w.groups()?;
                groups.insert(group.name.clone(), group.clone());
                let users: Vec<_> = w
                    .watches
                    .values()
                    .filter(|r| r.def.uses_group(&group.name))
                    .cloned()
                    .collect();
                for runtime in users {
                    let mut def = runtime.def;
                    def.spec = def
                        .respecify(&groups)
                        .ok_or_else(|| Error::Corrupt(format!("watch {} names a missing group", def.id)))?;
                    let values = watches::series_values(&w.db, &def.spec)?;
                    let updates = runtime
                        .series
                        .values
                        .keys()
                        .chain(values.keys())
                        .map(|b| (*b, values.get(b).copied()))
                        .collect();
                    let (series, reached) = crate::milestones::evaluate(
                        &def.rules,
                        &runtime.series,
                        &updates,
                        crate::milestones::Cause::GroupChange,
                    );
                    w.stage_watch(&def, series, &reached, &[], &mut pending);
                }
                let sequences = w.commit(&[], pending, now)?;
                Ok((group, now, sequences))
            })
            .await
    }

    /// Deletes a group; returns it as it was. A group a watch names cannot
    /// be deleted (FAILED_PRECONDITION): delete or redefine the watch first.
    pub async fn delete_group(&self, name: GroupName) -> Result<(PartnerGroup, Timestamp)> {
        self.writer
            .submit(move |w| {
                let k = keys::group_key(&name);
                let Some(old) = w.get(&k)?.map(|v| codec::decode_group(&k, &v)).transpose()? else {
                    return Err(Error::NotFound(format!("no group {name}")));
                };
                if let Some(user) = w.watches.values().find(|r| r.def.uses_group(&name)) {
                    return Err(Error::FailedPrecondition(format!(
                        "group {name} is used by watch {} ({}); delete the watch first",
                        user.def.id, user.def.name
                    )));
                }
                let mut pending = Pending::default();
                pending.batch.remove(k);
                w.commit(&[], pending, now())?;
                Ok(old)
            })
            .await
    }

    /// Creates a watch (assigning an id when it has none) and arms it from
    /// the data already stored; with `backfill`, also stores the milestones
    /// that data implies. Returns the watch, its creation time and the
    /// sequences of any backfilled events.
    pub async fn create_watch(
        &self,
        id: Option<WatchId>,
        make: impl FnOnce(WatchId) -> WatchDef + Send + 'static,
        backfill: bool,
    ) -> Result<(WatchDef, Timestamp, Option<SequenceRange>)> {
        self.writer
            .submit(move |w| {
                let now = now();
                let mut pending = Pending::default();
                let id = match id {
                    Some(id) => {
                        if w.watches.contains_key(&id) {
                            return Err(Error::AlreadyExists(format!("a watch with id {id} exists")));
                        }
                        id
                    }
                    None => {
                        let mut n = w
                            .get(watches::META_NEXT_WATCH)?
                            .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
                            .map_or(1, u64::from_be_bytes);
                        while w.watches.contains_key(&WatchId::assigned(n)) {
                            n += 1;
                        }
                        pending
                            .batch
                            .insert(watches::META_NEXT_WATCH, &(n + 1).to_be_bytes());
                        WatchId::assigned(n)
                    }
                };
                let def = make(id);
                let values = watches::series_values(&w.db, &def.spec)?;

                let (series, reached) = if backfill {
                    crate::milestones::backfill(&def.rules, &values)
                } else {
                    (crate::milestones::arm(values), Vec::new())
                };
                pending.batch.insert(
                    watches::watch_key(&def.id),
                    watches::encode_watch(&def, now).encode_to_vec(),
                );
                w.stage_watch(&def, series, &reached, &[], &mut pending);
                let sequences = w.commit(&[], pending, now)?;
                Ok((def, now, sequences))
            })
            .await
    }

    /// Deletes a watch; returns it as it was.
    pub async fn delete_watch(&self, id: WatchId) -> Result<WatchDef> {
        self.writer
            .submit(move |w| {
                let Some(runtime) = w.watches.get(&id).cloned() else {
                    return Err(Error::NotFound(format!("no watch {id}")));
                };
                let mut pending = Pending::default();
                pending.batch.remove(watches::watch_key(&id));
                pending.batch.remove(watches::state_key(&id));
                pending.watches.push((id, None));
                w.commit(&[], pending, now())?;
                Ok(runtime.def)
            })
            .await
    }

    pub fn get_watch(&self, id: &WatchId) -> Result<Option<(WatchDef, Timestamp)>> {
        let groups = writer::read_groups(&self.db)?;
        let key = watches::watch_key(id);
        self.db
            .get(&key)?
            .map(|v| watches::decode_watch_entry(&key, &v, &groups))
            .transpose()
    }

    pub fn list_watches(&self) -> Result<Vec<(WatchDef, Timestamp)>> {
        let groups = writer::read_groups(&self.db)?;
        self.db
            .scan_prefix([watches::NS_WATCH])
            .map(|entry| {
                let (k, v) = entry?;
                watches::decode_watch_entry(&k, &v, &groups)
            })
            .collect()
    }

    /// Stored events from `from` on, at most `limit`, in order.
    pub fn events(&self, from: u64, limit: usize) -> Result<Vec<(u64, EventValue)>> {
        let start = keys::event_key(from.max(1));
        let mut out = Vec::new();
        for entry in self.db.range(start..) {
            let (k, v) = entry?;
            if k.first() != Some(&keys::NS_EVENT) || out.len() == limit {
                break;
            }
            let sequence = <[u8; 8]>::try_from(&k[1..])
                .map(u64::from_be_bytes)
                .map_err(|_| Error::Corrupt(format!("bad event key {:02x?}", k.as_ref())))?;
            let event = EventValue::decode(v.as_ref())
                .map_err(|e| Error::Corrupt(format!("event {sequence}: {e}")))?;
            out.push((sequence, event));
        }
        Ok(out)
    }

    /// The oldest event sequence the log retains.
    pub fn oldest_sequence(&self) -> u64 {
        self.oldest.load(Ordering::Acquire)
    }

    /// A durable-head receiver, to wait for new events.
    pub fn subscribe_head(&self) -> watch::Receiver<u64> {
        self.durable_head.clone()
    }
}

/// Decodes a record key as stored in events.
pub fn decode_record_key(bytes: &[u8]) -> Result<RecordKey> {
    keys::decode_record_key(bytes)
}

fn now() -> Timestamp {
    Timestamp::from(SystemTime::now())
}
