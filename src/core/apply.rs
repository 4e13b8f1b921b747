//! The decisions of every write.

use std::collections::BTreeMap;

use super::volume::{ChangeEffect, Tally};
use super::{Change, Effect, State, WatchEdit, WatchRuntime};
use crate::domain::{
    Action, Bucket, Cause, Command, Event, EventKind, GroupName, GroupWritten, Money, NewWatch, Outcome,
    PartnerGroup, PutOutcome, RecordDeleted, RecordHigh, RecordKey, RecordStored, SequenceRange,
    StoredRecord, ThresholdCrossed, TradeRecord, WatchDef, WatchId, WatchRef, WatchWritten, WriteOutcome,
};
use crate::error::{Error, Result};
use crate::milestones::{self, Milestone, Series};

/// How long a request id is remembered after its write: a day, far beyond
/// any client's retries (AIP-155 asks for at least ten minutes).
pub const REQUEST_RETAIN_SECS: i64 = 24 * 60 * 60;

/// The effect of `command` on `state`.
pub fn apply(state: &impl State, command: &Command) -> Result<Effect> {
    if let Some(tag) = &command.request
        && let Some(stored) = state.request(&tag.id)?
        && command.time.seconds - stored.written_at.seconds < REQUEST_RETAIN_SECS
    {
        if stored.fingerprint != tag.fingerprint {
            return Err(Error::AlreadyExists(format!(
                "request_id {} was used at {} for a different request; \
                 a retry must repeat the request exactly, a new request needs a new request_id",
                tag.id, stored.written_at,
            )));
        }
        let mut effect = Effect::new(stored.outcome);
        effect.replayed = true;
        return Ok(effect);
    }
    let write = Write {
        state,
        command,
        events: Vec::new(),
    };
    match &command.action {
        Action::PutRecords(records) => write.put_records(records),
        Action::DeleteRecord(key) => write.delete_record(key),
        Action::PutGroup(group) => write.put_group(group),
        Action::DeleteGroup(name) => write.delete_group(name),
        Action::CreateWatch(watch) => write.create_watch(watch),
        Action::DeleteWatch(id) => write.delete_watch(id),
    }
}

/// One command being applied: the events it has caused so far.
struct Write<'a, S> {
    state: &'a S,
    command: &'a Command,
    events: Vec<EventKind>,
}

impl<S: State> Write<'_, S> {
    fn put_records(self, records: &[TradeRecord]) -> Result<Effect> {
        let time = self.command.time;
        let mut changes = Vec::new();
        let mut results = Vec::with_capacity(records.len());
        for record in records {
            let key = record.key;
            let before = self.state.record(&key)?;
            let (outcome, revision) = match &before {
                None => (WriteOutcome::Created, 1),
                Some(old) if old.record == *record => (WriteOutcome::Unchanged, old.revision),
                Some(old) => (WriteOutcome::Revised, old.revision + 1),
            };
            results.push((key, outcome, revision));
            if outcome != WriteOutcome::Unchanged {
                let after = Some(StoredRecord {
                    record: record.clone(),
                    revision,
                    updated_at: time,
                });
                changes.push(Change { key, before, after });
            }
        }
        self.finish(changes, Vec::new(), Vec::new(), |sequences| {
            Outcome::Put(PutOutcome { results, sequences })
        })
    }

    fn delete_record(self, key: &RecordKey) -> Result<Effect> {
        let Some(before) = self.state.record(key)? else {
            return Err(Error::NotFound(format!("no record {key}")));
        };
        let change = Change {
            key: *key,
            before: Some(before.clone()),
            after: None,
        };
        // The deletion's own event comes first; milestones follow it.
        self.finish(vec![change], Vec::new(), Vec::new(), |sequences| {
            Outcome::RecordDeleted(RecordDeleted {
                record: before,
                sequence: sequences.map_or(0, |s| s.first),
            })
        })
    }

    fn put_group(mut self, group: &PartnerGroup) -> Result<Effect> {
        let time = self.command.time;
        let mut groups = self.state.groups()?;
        groups.insert(group.name.clone(), group.clone());
        let mut watches = Vec::new();
        for runtime in self
            .state
            .watches()
            .values()
            .filter(|r| r.def.uses_group(&group.name))
        {
            let mut def = runtime.def.clone();
            def.spec = def
                .respecify(&groups)
                .ok_or_else(|| Error::Corrupt(format!("watch {} names a missing group", def.id)))?;
            let values = self.state.series_values(&def.spec)?;
            let updates = runtime
                .series
                .values
                .keys()
                .chain(values.keys())
                .map(|b| (*b, values.get(b).copied()))
                .collect();
            let (series, reached) =
                milestones::evaluate(&def.rules, &runtime.series, &updates, Cause::GroupChange);
            watches.push(WatchEdit::Followed(self.follow(def, series, &reached, &[])?));
        }
        let group = group.clone();
        let edits = vec![(group.name.clone(), Some((group.clone(), time)))];
        self.finish(Vec::new(), edits, watches, |sequences| {
            Outcome::Group(GroupWritten {
                group,
                updated_at: time,
                sequences,
            })
        })
    }

    fn delete_group(self, name: &GroupName) -> Result<Effect> {
        let Some((group, updated_at)) = self.state.group(name)? else {
            return Err(Error::NotFound(format!("no group {name}")));
        };
        if let Some(user) = self.state.watches().values().find(|r| r.def.uses_group(name)) {
            return Err(Error::FailedPrecondition(format!(
                "group {name} is used by watch {} ({}); delete the watch first",
                user.def.id, user.def.name
            )));
        }
        self.finish(Vec::new(), vec![(name.clone(), None)], Vec::new(), |sequences| {
            Outcome::Group(GroupWritten {
                group,
                updated_at,
                sequences,
            })
        })
    }

    fn create_watch(mut self, watch: &NewWatch) -> Result<Effect> {
        let time = self.command.time;
        let existing = self.state.watches();
        let count = existing.len();
        if count >= watch.max_watches {
            return Err(Error::ResourceExhausted(format!(
                "there are {count} watches, the limit is {} (max_watches, --max-watches); \
                 delete one before creating another",
                watch.max_watches
            )));
        }
        let mut next_watch_number = None;
        let id = match &watch.id {
            Some(id) if existing.contains_key(id) => {
                return Err(Error::AlreadyExists(format!("a watch with id {id} exists")));
            }
            Some(id) => id.clone(),
            None => {
                let mut n = self.state.next_watch_number()?;
                while existing.contains_key(&WatchId::assigned(n)) {
                    n += 1;
                }
                next_watch_number = Some(n + 1);
                WatchId::assigned(n)
            }
        };
        let mut def = watch.define(id);
        def.spec = def.respecify(&self.state.groups()?).ok_or_else(|| {
            Error::FailedPrecondition(format!(
                "watch {} names a partner group that no longer exists",
                def.id
            ))
        })?;
        let values = self.state.series_values(&def.spec)?;
        let (series, reached) = if watch.backfill {
            milestones::backfill(&def.rules, &values)
        } else {
            (milestones::arm(values), Vec::new())
        };
        let runtime = self.follow(def, series, &reached, &[])?;
        let def = runtime.def.clone();
        let mut effect = self.finish(
            Vec::new(),
            Vec::new(),
            vec![WatchEdit::Created(runtime, time)],
            |sequences| {
                Outcome::Watch(WatchWritten {
                    def,
                    created_at: time,
                    sequences,
                })
            },
        )?;
        effect.next_watch_number = next_watch_number;
        Ok(effect)
    }

    fn delete_watch(self, id: &WatchId) -> Result<Effect> {
        let Some(runtime) = self.state.watches().get(id) else {
            return Err(Error::NotFound(format!("no watch {id}")));
        };
        let def = runtime.def.clone();
        let created_at = self.state.watch_created_at(id)?.unwrap_or_default();
        self.finish(
            Vec::new(),
            Vec::new(),
            vec![WatchEdit::Deleted(id.clone())],
            |sequences| {
                Outcome::Watch(WatchWritten {
                    def,
                    created_at,
                    sequences,
                })
            },
        )
    }

    /// A watch's new state, its milestones added to the events.
    /// `OUT_OF_RANGE` when a period's value would not fit `Money` (int64
    /// units): an event must never show a clamped amount, so the write that
    /// would cause one is refused whole.
    fn follow(
        &mut self,
        def: WatchDef,
        series: Series,
        reached: &[Milestone],
        caused_by: &[RecordKey],
    ) -> Result<WatchRuntime> {
        for (bucket, (nanos, _)) in &series.values {
            let value = Money::new(def.spec.currency, *nanos);
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
            self.events.push(milestone_event(&def, milestone, caused_by));
        }
        Ok(WatchRuntime { def, series })
    }

    /// Adds the record events, the record changes' effect on every watch
    /// and the event numbers, and makes the outcome.
    fn finish(
        mut self,
        changes: Vec<Change>,
        groups: Vec<(GroupName, Option<(PartnerGroup, prost_types::Timestamp)>)>,
        mut watches: Vec<WatchEdit>,
        outcome: impl FnOnce(Option<SequenceRange>) -> Outcome,
    ) -> Result<Effect> {
        let effects = self.change_effects(&changes)?;
        let mut record_events: Vec<EventKind> = changes
            .iter()
            .map(|c| {
                EventKind::RecordStored(RecordStored {
                    key: c.key,
                    before: c.before.clone(),
                    after: c.after.clone(),
                })
            })
            .collect();
        // Milestones decided so far (backfill, group edit) stay after the
        // record events, as do those of the records' watches.
        let decided = std::mem::take(&mut self.events);
        watches.extend(self.follow_watches(&changes, &effects)?);
        record_events.extend(decided);
        record_events.append(&mut self.events);

        let head = self.state.head();
        let first = head + 1;
        let last = head + record_events.len() as u64;
        let sequences = (last >= first).then_some(SequenceRange { first, last });
        let time = self.command.time;
        let events = (first..)
            .zip(record_events)
            .map(|(sequence, kind)| Event { sequence, time, kind })
            .collect();
        Ok(Effect {
            changes,
            effects,
            groups,
            watches,
            next_watch_number: None,
            events,
            outcome: outcome(sequences),
            replayed: false,
        })
    }

    /// Each change's effect on flow sums and trade volume, siblings read as
    /// the earlier changes of this write leave them.
    fn change_effects(&self, changes: &[Change]) -> Result<Vec<ChangeEffect>> {
        let mut written: BTreeMap<RecordKey, Option<i128>> = BTreeMap::new();
        let mut effects = Vec::with_capacity(changes.len());
        for change in changes {
            let before = change.before.as_ref().map(|r| r.record.value().nanos());
            let after = change.after.as_ref().map(|r| r.record.value().nanos());
            effects.push(ChangeEffect::of(&change.key, before, after, |k| {
                match written.get(k) {
                    Some(v) => Ok(*v),
                    None => self.state.value(k),
                }
            })?);
            written.insert(change.key, after);
        }
        Ok(effects)
    }

    /// Moves the series of every watch the changes touch; their milestones
    /// go to the events.
    fn follow_watches(&mut self, changes: &[Change], effects: &[ChangeEffect]) -> Result<Vec<WatchEdit>> {
        struct Touch {
            deltas: BTreeMap<Bucket, Tally>,
            keys: Vec<RecordKey>,
            revision: bool,
        }
        let mut touched: BTreeMap<&WatchId, Touch> = BTreeMap::new();
        let watches = self.state.watches();
        for (change, effect) in changes.iter().zip(effects) {
            for (id, watch) in watches {
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
        let mut edits = Vec::new();
        for (id, touch) in touched {
            let watch = &watches[id];
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
            edits.push(WatchEdit::Followed(self.follow(
                watch.def.clone(),
                series,
                &reached,
                &touch.keys,
            )?));
        }
        Ok(edits)
    }
}

/// A milestone as an event, with its headline.
fn milestone_event(def: &WatchDef, milestone: &Milestone, caused_by: &[RecordKey]) -> EventKind {
    let headline = milestones::headline(&def.name, &def.describe(), def.spec.currency, milestone);
    let watch = WatchRef {
        id: def.id.clone(),
        name: def.name.clone(),
        currency: def.spec.currency,
    };
    let caused_by = caused_by.to_vec();
    match milestone {
        Milestone::ThresholdCrossed {
            period,
            threshold,
            direction,
            before,
            after,
        } => EventKind::ThresholdCrossed(ThresholdCrossed {
            watch,
            period: period.label(),
            threshold: *threshold,
            direction: *direction,
            before: *before,
            after: *after,
            caused_by,
            headline,
        }),
        Milestone::RecordHigh {
            period,
            before,
            after,
            previous,
            cause,
        } => EventKind::RecordHigh(RecordHigh {
            watch,
            period: period.label(),
            before: *before,
            after: *after,
            previous: previous.map(|(p, v)| (p.label(), v)),
            cause: *cause,
            caused_by,
            headline,
        }),
    }
}
