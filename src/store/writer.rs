//! The single writer: every mutation runs here, one after another, so
//! sequence numbers are assigned in one place and a write can read the state
//! the previous one left. Jobs that arrive together share one flush (group
//! commit); each is answered only after that flush.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prost::Message;
use prost_types::Timestamp;
use tokio::sync::{mpsc, oneshot, watch};

use super::codec::{self, EventBlock, EventKind, EventValue, RecordStoredValue, SeriesValue};
use super::disk::Disk;
use super::requests::{self, Replay};
use super::rollup::{ChangeEffect, RollupDeltas, Tally};
use super::series_cache::SeriesCache;
use super::{keys, now, watches};
use crate::domain::{
    Bucket, Flow, GroupName, PartnerGroup, RecordKey, RequestTag, StoredRecord, WatchDef, WatchId,
};
use crate::error::{Error, Result};
use crate::metrics::{EventLabel, Metrics, WriteTally};
use crate::milestones::{self, Cause, Series};

/// Most jobs applied before one shared flush.
const MAX_GROUP: usize = 512;
/// Most events one write removes for retention.
const MAX_TRIM: u64 = 10_000;
/// Most events stored under one key: a reader starting inside a block
/// decodes all of it.
const MAX_BLOCK_EVENTS: usize = 256;

/// Work for the writer: runs against the store, returns the reply to send
/// once the outcome is durable.
type Job = Box<dyn FnOnce(&mut Writer) -> Reply + Send>;
type Reply = Box<dyn FnOnce(Result<(), Error>) + Send>;

/// A change to one record: the state before and after (None = absent).
pub struct Change {
    pub key: RecordKey,
    pub before: Option<StoredRecord>,
    pub after: Option<StoredRecord>,
}

/// Sequence numbers of the events one write produced, inclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SequenceRange {
    pub first: u64,
    pub last: u64,
}

pub struct Writer {
    pub(super) db: sled::Db,
    /// Last sequence assigned (applied, maybe not yet flushed).
    head: u64,
    /// Last sequence known to be on disk.
    durable_head: watch::Sender<u64>,
    /// Every watch with the state of its series, as on disk.
    pub(super) watches: BTreeMap<WatchId, WatchRuntime>,
    /// Newest events kept (0: all), and the oldest kept now.
    retain_events: u64,
    oldest: Arc<AtomicU64>,
    closing: bool,
    metrics: Arc<Metrics>,
    /// The data dir's disk: refuses writes it has no room for or cannot
    /// take, and syncs each group (see [`Disk`]).
    disk: Disk,
    /// Commits applied so far, also published for prefetching readers.
    commits: u64,
    applied: Arc<AtomicU64>,
    /// The record keys written by the last [`RECENT_COMMITS`] commits, and
    /// for each such key the last commit that wrote it.
    recent: VecDeque<(u64, Vec<RecordKey>)>,
    last_write: FastMap<RecordKey, u64>,
    /// Series readers keep decoded; each write drops the ones it changes.
    series: Arc<SeriesCache>,
    /// The id of the job running now, if its caller named it: its commit
    /// stores the outcome under it (see [`super::requests`]).
    request: Option<RequestTag>,
}

/// What the writer shares with the store's readers.
pub struct Shared {
    /// The oldest event the log retains.
    pub oldest: Arc<AtomicU64>,
    /// Commits applied so far.
    pub applied: Arc<AtomicU64>,
    pub series: Arc<SeriesCache>,
    pub metrics: Arc<Metrics>,
}

/// Commits whose written keys are remembered, to confirm prefetched reads.
/// A prefetch older than this many commits is read again.
const RECENT_COMMITS: usize = 64;

/// A watch and the state of its series.
#[derive(Debug, Clone)]
pub struct WatchRuntime {
    pub def: WatchDef,
    pub series: Series,
}

/// What a write adds besides record changes: other writes, events caused by
/// them, and watch states to take on once it is applied (`None`: deleted).
#[derive(Default)]
pub struct Pending {
    /// Values of stored records read already (see
    /// [`Writer::read_with_siblings`]), so working out the rollups does not
    /// read them again.
    pub stored_values: FastMap<RecordKey, Option<i128>>,
    pub batch: sled::Batch,
    pub events: Vec<EventKind>,
    pub watches: Vec<(WatchId, Option<WatchRuntime>)>,
}

/// The handle through which the rest of the store submits jobs.
#[derive(Clone)]
pub struct WriterHandle {
    jobs: mpsc::Sender<Job>,
}

impl WriterHandle {
    /// Runs `f` on the writer and answers once its effect is on disk. With
    /// a request tag, a write already made under that id is answered with
    /// its stored outcome instead, and `f` does not run.
    pub async fn submit<T, F>(&self, request: Option<RequestTag>, f: F) -> Result<T>
    where
        T: Replay + Send + 'static,
        F: FnOnce(&mut Writer) -> Result<T> + Send + 'static,
    {
        self.enqueue(request, f).await?.await
    }

    /// Queues `f` behind the jobs already queued and returns at once; the
    /// future it gives answers once the effect is on disk. Jobs queued one
    /// after another run in that order, and can share one flush.
    pub async fn enqueue<T, F>(
        &self,
        request: Option<RequestTag>,
        f: F,
    ) -> Result<impl Future<Output = Result<T>> + use<T, F>>
    where
        T: Replay + Send + 'static,
        F: FnOnce(&mut Writer) -> Result<T> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let queued = std::time::Instant::now();
        let job: Job = Box::new(move |writer| {
            let outcome = match writer.disk.refused() {
                Some(refused) => Err(refused),
                None => writer
                    .run_job(request, f)
                    .map_err(|e| writer.disk.job_failed(&writer.db, e)),
            };
            let metrics = writer.metrics.clone();
            Box::new(move |flushed| {
                metrics.write_acknowledged(queued.elapsed());
                let result = match (outcome, flushed) {
                    (Err(e), _) => Err(e),
                    (Ok(_), Err(e)) => Err(e),
                    (Ok(v), Ok(())) => Ok(v),
                };
                // The caller may have gone away; the write stands regardless.
                let _ = tx.send(result);
            })
        });
        let closed = || Error::Unavailable("the store is closed (server shutting down)".into());
        self.jobs.send(job).await.map_err(|_| closed())?;
        Ok(async move { rx.await.map_err(|_| closed())? })
    }

    /// Stops the writer after the jobs already queued; returns once it has
    /// flushed and let go of the store.
    pub async fn close(&self, thread: std::thread::JoinHandle<()>) {
        // Not through `enqueue`: a writer that refuses writes still stops.
        let stop: Job = Box::new(|w| {
            w.closing = true;
            Box::new(drop)
        });
        let _ = self.jobs.send(stop).await;
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    }
}

impl Writer {
    /// Loads the watches and starts the writer thread; returns its handle,
    /// the thread, and a receiver of the durable head sequence.
    pub fn spawn(
        db: sled::Db,
        dir: &std::path::Path,
        head: u64,
        retain_events: u64,
        shared: Shared,
    ) -> Result<(WriterHandle, std::thread::JoinHandle<()>, watch::Receiver<u64>)> {
        let Shared {
            oldest,
            applied,
            series,
            metrics,
        } = shared;
        let watches = load_watches(&db)?;
        let disk = Disk::open(dir, &db);
        let (jobs_tx, jobs_rx) = mpsc::channel::<Job>(1024);
        let (durable_tx, durable_rx) = watch::channel(head);
        let writer = Writer {
            db,
            head,
            durable_head: durable_tx,
            watches,
            retain_events,
            oldest,
            closing: false,
            metrics,
            commits: applied.load(Ordering::Acquire),
            applied,
            recent: VecDeque::with_capacity(RECENT_COMMITS + 1),
            last_write: FastMap::default(),
            series,
            disk,
            request: None,
        };
        let thread = std::thread::Builder::new()
            .name("tradewatch-writer".into())
            .spawn(move || writer.run(jobs_rx))
            .map_err(|e| Error::Unavailable(format!("cannot start writer thread: {e}")))?;
        Ok((WriterHandle { jobs: jobs_tx }, thread, durable_rx))
    }

    fn run(mut self, mut jobs: mpsc::Receiver<Job>) {
        while let Some(job) = jobs.blocking_recv() {
            self.disk.check();
            let mut replies = vec![job(&mut self)];
            while replies.len() < MAX_GROUP {
                match jobs.try_recv() {
                    Ok(job) => replies.push(job(&mut self)),
                    Err(_) => break,
                }
            }
            let flushed = self.disk.commit(&self.db);
            if flushed.is_ok() {
                self.durable_head.send_replace(self.head);
            }
            for reply in replies {
                reply(flushed.clone());
            }
            if self.closing {
                break;
            }
        }
        tracing::debug!("writer stopped");
    }

    /// Runs one job; see [`WriterHandle::submit`].
    fn run_job<T: Replay>(
        &mut self,
        request: Option<RequestTag>,
        f: impl FnOnce(&mut Writer) -> Result<T>,
    ) -> Result<T> {
        if let Some(tag) = &request
            && let Some(outcome) = requests::replay(self, tag, now())?
        {
            return Ok(outcome);
        }
        self.request = request;
        let outcome = f(self);
        self.request = None;
        outcome
    }

    pub fn get(&self, key: &[u8]) -> Result<Option<sled::IVec>> {
        Ok(self.db.get(key)?)
    }

    /// A stored record's value in nanos.
    fn value_of(&self, key: &RecordKey) -> Result<Option<i128>> {
        let k = keys::record_key(key);
        self.db
            .get(k)?
            .map(|v| codec::decode_record(&k, &v).map(|r| r.record.value().nanos()))
            .transpose()
    }

    /// The stored record under `key`, with its trade-volume siblings' values
    /// into `stored_values` (see [`read_with_siblings`]).
    pub fn read_with_siblings(
        &self,
        key: &RecordKey,
        stored_values: &mut FastMap<RecordKey, Option<i128>>,
    ) -> Result<Option<StoredRecord>> {
        read_with_siblings(&self.db, key, stored_values)
    }

    /// Whether reads of `key`'s record and its trade-volume siblings made
    /// when [`Writer::commits`] was `as_of` still hold: no commit since wrote
    /// any of them.
    pub fn still_fresh(&self, key: &RecordKey, as_of: u64) -> bool {
        let window_start = self.commits - self.recent.len() as u64;
        if as_of < window_start {
            return false;
        }
        let fresh = |k: &RecordKey| self.last_write.get(k).is_none_or(|&c| c <= as_of);
        fresh(key) && volume_siblings(key).all(|k| fresh(&k))
    }

    /// Every group as stored.
    pub fn groups(&self) -> Result<BTreeMap<GroupName, PartnerGroup>> {
        read_groups(&self.db)
    }

    /// Writes record changes with their events, the rollups and watch
    /// states they move and the milestones they reach, together with
    /// `pending` (e.g. a group and the events its edit caused), in one
    /// atomic batch. `outcome` makes the write's outcome from the sequence
    /// numbers assigned (`None` when no event was produced); when the job's
    /// caller named the request, the outcome is stored with it in the same
    /// batch.
    pub fn commit<T: Replay>(
        &mut self,
        changes: &[Change],
        mut pending: Pending,
        now: Timestamp,
        outcome: impl FnOnce(Option<SequenceRange>) -> T,
    ) -> Result<T> {
        let mut rollups = RollupDeltas::default();
        // Records as this write leaves them so far, for sums that look at a
        // record's siblings.
        let mut written: FastMap<RecordKey, Option<i128>> = FastMap::default();
        let mut effects = Vec::with_capacity(changes.len());
        let mut events = Vec::with_capacity(changes.len() + pending.events.len());
        let mut tally = WriteTally::default();
        for change in changes {
            tally.record(change.before.is_some(), change.after.is_some());
            let effect = rollups.add_change(change, |k| {
                match written.get(k).or(pending.stored_values.get(k)) {
                    Some(v) => Ok(*v),
                    None => self.value_of(k),
                }
            })?;
            effects.push(effect);
            written.insert(
                change.key,
                change.after.as_ref().map(|r| r.record.value().nanos()),
            );
            let key = keys::record_key(&change.key);
            let after = change.after.as_ref().map(codec::encode_record);
            match &after {
                Some(value) => pending.batch.insert(&key, value.encode_to_vec()),
                None => pending.batch.remove(&key),
            }
            events.push(EventKind::RecordStored(RecordStoredValue {
                key: key.to_vec(),
                before: change.before.as_ref().map(codec::encode_record),
                after,
            }));
        }
        rollups.write_into(&mut pending.batch, &self.db)?;
        self.follow_watches(changes, &effects, &mut pending)?;
        events.append(&mut pending.events);

        let first = self.head + 1;
        let last = self.head + events.len() as u64;
        let mut batch = pending.batch;
        let mut sequence = first;
        let mut events = events.into_iter().peekable();
        while events.peek().is_some() {
            let block = EventBlock {
                events: events
                    .by_ref()
                    .take(MAX_BLOCK_EVENTS)
                    .map(|kind| {
                        tally.event(match &kind {
                            EventKind::RecordStored(_) => EventLabel::RecordStored,
                            EventKind::ThresholdCrossed(_) => EventLabel::ThresholdCrossed,
                            EventKind::RecordHigh(_) => EventLabel::RecordHigh,
                        });
                        EventValue {
                            time: Some(now),
                            kind: Some(kind),
                        }
                    })
                    .collect(),
            };
            let block_last = sequence + block.events.len() as u64 - 1;
            batch.insert(
                &keys::event_block_key(sequence, block_last),
                block.encode_to_vec(),
            );
            sequence = block_last + 1;
        }
        if last >= first {
            batch.insert(keys::META_HEAD_SEQUENCE, &last.to_be_bytes());
        }
        let sequences = (last >= first).then_some(SequenceRange { first, last });
        let outcome = outcome(sequences);
        if let Some(tag) = self.request.take() {
            requests::stage(self, &mut batch, &tag, &outcome, now)?;
        }
        let oldest = self.trim_events(last, &mut batch)?;
        self.disk.room_for(changes.len() + (last + 1 - first) as usize)?;
        let applied = self.db.apply_batch(batch);
        // Also after a failed apply, which may have left part of the batch.
        self.series.invalidate(changes.iter().map(|c| &c.key));
        applied?;
        self.remember_written(changes);
        self.metrics.write_applied(&tally);
        self.head = last;
        self.oldest.store(oldest, Ordering::Release);
        for (id, runtime) in pending.watches {
            match runtime {
                Some(r) => self.watches.insert(id, r),
                None => self.watches.remove(&id),
            };
        }
        Ok(outcome)
    }

    /// Counts an applied commit and remembers the record keys it wrote, for
    /// [`Writer::still_fresh`].
    fn remember_written(&mut self, changes: &[Change]) {
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

    /// With retention, removes the events older than the newest
    /// `retain_events` (at most [`MAX_TRIM`] per write, so a newly lowered
    /// retention catches up over a few writes); returns the oldest kept.
    fn trim_events(&self, head: u64, batch: &mut sled::Batch) -> Result<u64> {
        let oldest = self.oldest.load(Ordering::Acquire);
        if self.retain_events == 0 {
            return Ok(oldest);
        }
        let keep_from = (head + 1).saturating_sub(self.retain_events).max(oldest);
        let new_oldest = keep_from.min(oldest + MAX_TRIM);
        if new_oldest == oldest {
            return Ok(oldest);
        }
        // Whole entries below the new oldest go; one that straddles it stays
        // (readers never ask below the oldest).
        for entry in self
            .db
            .range(keys::event_block_key(0, 0)..keys::event_block_probe(new_oldest))
        {
            let (k, _) = entry?;
            let (_, last) = keys::decode_event_block_key(&k)?;
            if last >= new_oldest {
                break;
            }
            batch.remove(k);
        }
        batch.insert(keys::META_OLDEST_SEQUENCE, &new_oldest.to_be_bytes());
        Ok(new_oldest)
    }

    /// Moves the series of every watch the changes touch, and adds the
    /// milestones reached and the new states to `pending`.
    fn follow_watches(
        &self,
        changes: &[Change],
        effects: &[ChangeEffect],
        pending: &mut Pending,
    ) -> Result<()> {
        struct Touch {
            deltas: BTreeMap<Bucket, Tally>,
            keys: Vec<RecordKey>,
            revision: bool,
        }
        let mut touched: BTreeMap<&WatchId, Touch> = BTreeMap::new();
        for (change, effect) in changes.iter().zip(effects) {
            for (id, watch) in &self.watches {
                let spec = &watch.def.spec;
                if !spec.selects(&change.key) {
                    continue;
                }
                let Some(delta) = effect.for_measure(change.key.flow, &spec.measure) else {
                    continue;
                };
                let touch = touched.entry(id).or_insert_with(|| Touch {
                    deltas: BTreeMap::new(),
                    keys: Vec::new(),
                    revision: false,
                });
                // A revision of a record the series counts makes the whole
                // write a revision, even when another record of the same
                // write hides its effect (a turnover over exports).
                touch.revision |= change.before.is_some();
                if delta != Tally::default() {
                    touch
                        .deltas
                        .entry(spec.bucket(change.key.period))
                        .or_default()
                        .add(delta);
                    touch.keys.push(change.key);
                }
            }
        }
        for (id, touch) in touched {
            let watch = &self.watches[id];
            let updates = touch
                .deltas
                .iter()
                .map(|(bucket, delta)| {
                    let (nanos, count) = watch.series.values.get(bucket).copied().unwrap_or_default();
                    let (nanos, count) = (nanos + delta.nanos, count + delta.count);
                    (*bucket, (count > 0).then_some((nanos, count)))
                })
                .collect();
            let cause = if touch.revision {
                Cause::Revision
            } else {
                Cause::NewData
            };
            let (series, reached) = milestones::evaluate(&watch.def.rules, &watch.series, &updates, cause);
            self.stage_watch(&watch.def, series, &reached, &touch.keys, pending)?;
        }
        Ok(())
    }

    /// Adds a watch's new state and the milestones it reached to `pending`.
    /// `OUT_OF_RANGE` when a period's value would not fit `Money` (int64
    /// units): an event must never show a clamped amount, so the write that
    /// would cause one is refused whole.
    pub fn stage_watch(
        &self,
        def: &WatchDef,
        series: Series,
        reached: &[milestones::Milestone],
        caused_by: &[RecordKey],
        pending: &mut Pending,
    ) -> Result<()> {
        for (bucket, (nanos, _)) in &series.values {
            let value = crate::domain::Money::new(def.spec.currency, *nanos);
            if value.to_parts().is_none() {
                return Err(Error::OutOfRange(format!(
                    "this write would take the value of watch {} ({}) for {} to {value}, \
                     more than an amount can hold ({} units); nothing was stored",
                    def.id,
                    def.name,
                    bucket.label(),
                    i64::MAX
                )));
            }
        }
        for milestone in reached {
            let (is_record_high, value) = watches::milestone_event(def, milestone, caused_by);
            pending.events.push(if is_record_high {
                EventKind::RecordHigh(value)
            } else {
                EventKind::ThresholdCrossed(value)
            });
        }
        pending.batch.insert(
            watches::state_key(&def.id),
            watches::encode_series(&series).encode_to_vec(),
        );
        pending.watches.push((
            def.id.clone(),
            Some(WatchRuntime {
                def: def.clone(),
                series,
            }),
        ));
        Ok(())
    }
}

/// Hash maps keyed by record keys and rollup keys: foldhash is several
/// times faster than SipHash and still seeded at random.
pub type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// The records whose values share `key`'s trade volume: its turnover,
/// export and import siblings in the same currency (none for re-exports
/// and re-imports).
fn volume_siblings(key: &RecordKey) -> impl Iterator<Item = RecordKey> + use<> {
    let key = *key;
    let flows: &[Flow] = if shares_volume(key.flow) {
        &[Flow::Turnover, Flow::Export, Flow::Import]
    } else {
        &[]
    };
    flows
        .iter()
        .filter(move |&&f| f != key.flow)
        .map(move |&flow| RecordKey { flow, ..key })
}

fn shares_volume(flow: Flow) -> bool {
    matches!(flow, Flow::Turnover | Flow::Export | Flow::Import)
}

/// The stored record under `key`, in one scan with the records that share
/// its trade volume, whose values (or their absence) go into
/// `stored_values`.
pub fn read_with_siblings(
    db: &sled::Db,
    key: &RecordKey,
    stored_values: &mut FastMap<RecordKey, Option<i128>>,
) -> Result<Option<StoredRecord>> {
    let k = keys::record_key(key);
    if !shares_volume(key.flow) {
        return db.get(k)?.map(|v| codec::decode_record(&k, &v)).transpose();
    }
    stored_values.insert(*key, None);
    for sibling in volume_siblings(key) {
        stored_values.insert(sibling, None);
    }
    let mut found = None;
    // Every flow and currency of the key's reporter, partner, commodity and
    // period.
    for entry in db.scan_prefix(&k[..keys::RECORD_KEY_LEN - 4]) {
        let (sk, v) = entry?;
        let sibling = keys::decode_record_key(&sk)?;
        if sibling.currency != key.currency || !shares_volume(sibling.flow) {
            continue;
        }
        let stored = codec::decode_record(&sk, &v)?;
        stored_values.insert(sibling, Some(stored.record.value().nanos()));
        if sibling == *key {
            found = Some(stored);
        }
    }
    Ok(found)
}

/// Reads for a batch of puts made before it reaches the writer, off the
/// writer's thread: each record as stored and its siblings' values, as of
/// the writer's `as_of`-th commit. The writer uses those that
/// [`Writer::still_fresh`] confirms and reads the others again.
pub struct Prefetch {
    pub as_of: u64,
    pub stored: Vec<Option<StoredRecord>>,
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
            .map(|key| read_with_siblings(db, key, &mut values))
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

pub fn read_groups(db: &sled::Db) -> Result<BTreeMap<GroupName, PartnerGroup>> {
    db.scan_prefix([keys::NS_GROUP])
        .map(|entry| {
            let (k, v) = entry?;
            let (group, _) = codec::decode_group(&k, &v)?;
            Ok((group.name.clone(), group))
        })
        .collect()
}

fn load_watches(db: &sled::Db) -> Result<BTreeMap<WatchId, WatchRuntime>> {
    let groups = read_groups(db)?;
    let mut out = BTreeMap::new();
    for entry in db.scan_prefix([watches::NS_WATCH]) {
        let (k, v) = entry?;
        let (def, _) = watches::decode_watch_entry(&k, &v, &groups)?;
        let series = match db.get(watches::state_key(&def.id))? {
            Some(state) => {
                let value = SeriesValue::decode(state.as_ref())
                    .map_err(|e| Error::Corrupt(format!("watch {} state: {e}", def.id)))?;
                watches::decode_series(&value, def.spec.granularity)?
            }
            None => Series::default(),
        };
        out.insert(def.id.clone(), WatchRuntime { def, series });
    }
    Ok(out)
}
