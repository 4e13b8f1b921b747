//! Writing an [`Effect`] as one atomic sled batch: records, rollups,
//! groups, watches, the events in blocks, the head, the request id, and
//! the trimming that retention asks for.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prost::Message;

use std::collections::BTreeMap;

use super::blocks::BlockValue;
use super::codec::{self, EventBlock};
use super::disk::Disk;
use super::rollup::RollupDeltas;
use super::series_cache::{SeriesCache, SeriesPrefix};
use super::{blocks, keys, requests, watches};
use crate::core::{Change, Effect, WatchEdit};
use crate::domain::{Command, EventKind};
use crate::error::Result;
use crate::metrics::{EventLabel, WriteTally};

/// Most events one write removes for retention.
const MAX_TRIM: u64 = 10_000;
/// Most events stored under one key: a reader starting inside a block
/// decodes all of it.
const MAX_BLOCK_EVENTS: usize = 256;

pub struct Commit {
    /// Newest events kept (0: all), and the oldest kept now.
    pub retain_events: u64,
    pub oldest: Arc<AtomicU64>,
    /// Series readers keep decoded; each write drops the ones it changes.
    pub series: Arc<SeriesCache>,
}

impl Commit {
    /// Writes `effect`, the effect of `command` on a store whose last event
    /// is `head`, in one atomic batch with the command's log `position`,
    /// after checking the disk has room for it. The series blocks it
    /// changes come from `prefetched` where it has them as they are stored
    /// now, else from `db`. Returns what it wrote, to count.
    pub fn write(
        &self,
        db: &sled::Db,
        disk: &mut Disk,
        (head, position): (u64, u64),
        (command, effect): (&Command, &Effect),
        prefetched: &mut dyn FnMut(&SeriesPrefix) -> Option<Option<BlockValue>>,
    ) -> Result<WriteTally> {
        let mut batch = sled::Batch::default();
        let mut tally = WriteTally::default();
        let mut rollups = RollupDeltas::default();
        // Changes by series block, each block read and rewritten once.
        let mut edits: BTreeMap<SeriesPrefix, Vec<&Change>> = BTreeMap::new();
        for (change, change_effect) in effect.changes.iter().zip(&effect.effects) {
            tally.record(change.before.is_some(), change.after.is_some());
            rollups.add(&change.key, change_effect);
            edits
                .entry(blocks::block_key(&change.key))
                .or_default()
                .push(change);
        }
        for (block, changes) in edits {
            let stored = match prefetched(&block) {
                Some(stored) => stored,
                None => blocks::read(db, &block)?,
            };
            let mut edit = blocks::Edit::new(stored);
            for change in changes {
                edit.set(&change.key, change.after.as_ref().map(codec::encode_record));
            }
            match edit.finish() {
                Some(value) => batch.insert(&block, value),
                None => batch.remove(&block),
            }
        }
        rollups.write_into(&mut batch, db)?;
        for (name, group) in &effect.groups {
            match group {
                Some((group, time)) => batch.insert(
                    keys::group_key(name),
                    codec::encode_group(group, *time).encode_to_vec(),
                ),
                None => batch.remove(keys::group_key(name)),
            }
        }
        for edit in &effect.watches {
            match edit {
                WatchEdit::Created(runtime, created_at) => {
                    let def = &runtime.def;
                    batch.insert(
                        watches::watch_key(&def.id),
                        watches::encode_watch(def, *created_at).encode_to_vec(),
                    );
                    batch.insert(
                        watches::state_key(&def.id),
                        watches::encode_series(&runtime.series).encode_to_vec(),
                    );
                }
                WatchEdit::Followed(runtime) => batch.insert(
                    watches::state_key(&runtime.def.id),
                    watches::encode_series(&runtime.series).encode_to_vec(),
                ),
                WatchEdit::Deleted(id) => {
                    batch.remove(watches::watch_key(id));
                    batch.remove(watches::state_key(id));
                }
            }
        }
        if let Some(n) = effect.next_watch_number {
            batch.insert(watches::META_NEXT_WATCH, &n.to_be_bytes());
        }
        for block in effect.events.chunks(MAX_BLOCK_EVENTS) {
            let (first, last) = (block[0].sequence, block[block.len() - 1].sequence);
            let value = EventBlock {
                events: block
                    .iter()
                    .map(|event| {
                        tally.event(match &event.kind {
                            EventKind::RecordStored(_) => EventLabel::RecordStored,
                            EventKind::ThresholdCrossed(_) => EventLabel::ThresholdCrossed,
                            EventKind::RecordHigh(_) => EventLabel::RecordHigh,
                            EventKind::RankChanged(_) => EventLabel::RankChanged,
                            EventKind::GrowthCrossed(_) => EventLabel::GrowthCrossed,
                            EventKind::YearToDate(_) => EventLabel::YearToDate,
                        });
                        codec::encode_event(event)
                    })
                    .collect(),
            };
            batch.insert(
                &keys::event_block_key(first, last),
                codec::encode_event_block(&value),
            );
        }
        if let Some(last) = effect.events.last() {
            batch.insert(keys::META_HEAD_SEQUENCE, &last.sequence.to_be_bytes());
        }
        batch.insert(keys::META_LOG_POSITION, &position.to_be_bytes());
        let head = effect.events.last().map_or(head, |e| e.sequence);
        if let Some(tag) = &command.request {
            requests::stage(
                db,
                &mut batch,
                (tag, position),
                &effect.outcome,
                command.time,
                crate::core::REQUEST_RETAIN_SECS,
            )?;
        }
        let oldest = self.trim_events(db, head, &mut batch)?;
        disk.room_for(effect.changes.len() + effect.events.len())?;
        let applied = db.apply_batch(batch);
        // Also after a failed apply, which may have left part of the batch.
        self.series
            .invalidate(effect.changes.iter().map(|c| (&c.key, c.after.is_some())));
        applied?;
        self.oldest.store(oldest, Ordering::Release);
        Ok(tally)
    }

    /// With retention, removes the events older than the newest
    /// `retain_events` (at most [`MAX_TRIM`] per write, so a newly lowered
    /// retention catches up over a few writes); returns the oldest kept.
    fn trim_events(&self, db: &sled::Db, head: u64, batch: &mut sled::Batch) -> Result<u64> {
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
        for entry in db.range(keys::event_block_key(0, 0)..keys::event_block_probe(new_oldest)) {
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
}
