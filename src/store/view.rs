//! The store's state as the write core reads it: sled, the writer's watches,
//! and reads made ahead of the writer.

use std::cell::RefCell;
use std::collections::BTreeMap;

use prost_types::Timestamp;

use super::prefetch::{Freshness, Prefetch};
use super::series_cache::SeriesPrefix;
use super::{blocks, codec, keys, requests, watches};
use crate::collections::FastMap;
use crate::core::volume::{shares_volume, volume_siblings};
use crate::core::{State, StoredRequest, Watches};
use crate::domain::{
    Action, GroupName, PartnerGroup, RankBy, RecordKey, RequestId, SeriesSpec, StoredRecord, WatchId,
};
use crate::error::Result;
use crate::milestones::Series;

pub struct View<'a> {
    pub db: &'a sled::Db,
    pub head: u64,
    pub watches: &'a Watches,
    /// The command being applied: a stored request's outcome is read as its
    /// kind.
    pub action: &'a Action,
    pub fingerprint: Option<[u8; 16]>,
    pub prefetch: Option<(&'a Prefetch, &'a Freshness)>,
    /// Values of records read so far with their siblings, so that working
    /// out trade volume does not read them again.
    values: RefCell<FastMap<RecordKey, Option<i128>>>,
    /// Series blocks read from sled (`None`: not stored), each once: a
    /// block holds every record of a series, and the commit after changes
    /// it as read here ([`View::into_blocks_read`]).
    blocks: RefCell<FastMap<SeriesPrefix, Option<blocks::BlockValue>>>,
}

impl<'a> View<'a> {
    pub fn new(db: &'a sled::Db, head: u64, watches: &'a Watches, action: &'a Action) -> View<'a> {
        View {
            db,
            head,
            watches,
            action,
            fingerprint: None,
            prefetch: None,
            values: RefCell::default(),
            blocks: RefCell::default(),
        }
    }

    /// The series blocks read from sled, as they are stored: nothing
    /// writes between a command's decision and its commit.
    pub fn into_blocks_read(self) -> FastMap<SeriesPrefix, Option<blocks::BlockValue>> {
        self.blocks.into_inner()
    }

    /// The record `key` as stored, read from its block (read once per
    /// command), with its siblings' values into `values`.
    fn read_record(&self, key: &RecordKey) -> Result<Option<StoredRecord>> {
        let block = blocks::block_key(key);
        let mut read = self.blocks.borrow_mut();
        let stored = match read.entry(block) {
            std::collections::hash_map::Entry::Occupied(entry) => entry.into_mut(),
            std::collections::hash_map::Entry::Vacant(entry) => entry.insert(blocks::read(self.db, &block)?),
        };
        in_block(&block, stored.as_ref(), key, &mut self.values.borrow_mut())
    }
}

impl State for View<'_> {
    fn head(&self) -> u64 {
        self.head
    }

    fn record(&self, key: &RecordKey) -> Result<Option<StoredRecord>> {
        if let Some((prefetch, freshness)) = self.prefetch
            && let Some(stored) = prefetch.stored.get(key)
            && freshness.still_fresh(key, prefetch.as_of)
        {
            // Its siblings' values are read ahead too (see `value`).
            return Ok(stored.clone());
        }
        self.read_record(key)
    }

    fn value(&self, key: &RecordKey) -> Result<Option<i128>> {
        if let Some(v) = self.values.borrow().get(key) {
            return Ok(*v);
        }
        if let Some((prefetch, freshness)) = self.prefetch
            && let Some(v) = prefetch.values.get(key)
            && freshness.still_fresh(key, prefetch.as_of)
        {
            return Ok(*v);
        }
        Ok(self.read_record(key)?.map(|r| r.record.value().nanos()))
    }

    fn group(&self, name: &GroupName) -> Result<Option<(PartnerGroup, Timestamp)>> {
        let k = keys::group_key(name);
        self.db.get(&k)?.map(|v| codec::decode_group(&k, &v)).transpose()
    }

    fn groups(&self) -> Result<BTreeMap<GroupName, PartnerGroup>> {
        read_groups(self.db)
    }

    fn watches(&self) -> &Watches {
        self.watches
    }

    fn watch_created_at(&self, id: &WatchId) -> Result<Option<Timestamp>> {
        let key = watches::watch_key(id);
        match self.db.get(&key)? {
            Some(v) => Ok(Some(watches::decode_watch_entry(&key, &v, &self.groups()?)?.1)),
            None => Ok(None),
        }
    }

    fn series_values(&self, spec: &SeriesSpec, split: Option<RankBy>) -> Result<Series> {
        watches::series_values(self.db, spec, split)
    }

    fn next_watch_number(&self) -> Result<u64> {
        Ok(self
            .db
            .get(watches::META_NEXT_WATCH)?
            .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
            .map_or(1, u64::from_be_bytes))
    }

    fn request(&self, id: &RequestId) -> Result<Option<StoredRequest>> {
        let fingerprint = self.fingerprint.unwrap_or_default();
        requests::lookup(self.db, id, &fingerprint, self.action, || self.groups())
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

/// The stored record under `key`, from its series' block `block` as read
/// (`None`: there is none), with the records that share its trade volume
/// (they are in the same block), whose values (or their absence) go into
/// `values`.
pub fn in_block(
    block: &[u8],
    stored: Option<&blocks::BlockValue>,
    key: &RecordKey,
    values: &mut FastMap<RecordKey, Option<i128>>,
) -> Result<Option<StoredRecord>> {
    let volume = shares_volume(key.flow);
    if volume {
        values.insert(*key, None);
        for sibling in volume_siblings(key) {
            values.insert(sibling, None);
        }
    }
    let Some(stored) = stored else {
        return Ok(None);
    };
    let tail = blocks::tail(key);
    if !volume {
        return blocks::find(block, stored, key, tail);
    }
    let k = keys::record_key(key);
    let mut found = None;
    // Every flow and currency of the key's period.
    for record in &stored.records {
        let sk = blocks::record_key_bytes(block, record.tail);
        if sk[..keys::record_offsets::FLOW] != k[..keys::record_offsets::FLOW]
            || sk[keys::record_offsets::CURRENCY..] != k[keys::record_offsets::CURRENCY..]
        {
            continue;
        }
        let sibling = keys::decode_record_key(&sk)?;
        if !shares_volume(sibling.flow) {
            continue;
        }
        let amount = record.amount(block)?;
        values.insert(sibling, Some(amount.nanos()));
        if record.tail == tail {
            found = Some(codec::record_from_value(sibling, record.value(block)?));
        }
    }
    Ok(found)
}

/// Every watch with the state of its series, as stored.
pub fn load_watches(db: &sled::Db) -> Result<Watches> {
    let groups = read_groups(db)?;
    let mut out = BTreeMap::new();
    for entry in db.scan_prefix([watches::NS_WATCH]) {
        let (k, v) = entry?;
        let (def, _) = watches::decode_watch_entry(&k, &v, &groups)?;
        let series = match db.get(watches::state_key(&def.id))? {
            Some(state) => watches::decode_series_bytes(&state, &def)?,
            None => Default::default(),
        };
        out.insert(def.id.clone(), crate::core::WatchRuntime { def, series });
    }
    Ok(out)
}
