//! The decisions of every write.

use std::collections::BTreeMap;

use super::volume::{ChangeEffect, Tally};
use super::{Change, Effect, State, WatchEdit, WatchRuntime};
use crate::collections::FastMap;
use crate::domain::{
    Action, Bucket, Cause, Command, CountryCode, Event, EventKind, GroupName, GroupWritten, GrowthCrossed,
    Money, NewWatch, Outcome, PartnerGroup, PutOutcome, RankChanged, RecordDeleted, RecordHigh, RecordKey,
    RecordStored, SequenceRange, StoredRecord, ThresholdCrossed, TradeRecord, WatchDef, WatchId, WatchRef,
    WatchWritten, WriteOutcome, YearToDate,
};
use crate::error::{Error, Result};
use crate::milestones::{self, Milestone, Series, Updates};

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
        let outcome = stored
            .outcome
            .ok_or_else(|| Error::Corrupt(format!("request {}: no stored outcome", tag.id)))?;
        let mut effect = Effect::new(outcome);
        effect.replayed = Some(stored.position);
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
            let values = self
                .state
                .series_values(&def.spec, def.rules.rank.map(|r| r.by))?;
            let updates = Updates::replacing(&runtime.series, &values);
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
        let values = self
            .state
            .series_values(&def.spec, def.rules.rank.map(|r| r.by))?;
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
            replayed: None,
        })
    }

    /// Each change's effect on flow sums and trade volume, siblings read as
    /// the earlier changes of this write leave them.
    fn change_effects(&self, changes: &[Change]) -> Result<Vec<ChangeEffect>> {
        let mut written: FastMap<RecordKey, Option<i128>> = FastMap::default();
        written.reserve(changes.len());
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
            /// For a rank rule: the deltas per member.
            members: BTreeMap<Bucket, BTreeMap<CountryCode, Tally>>,
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
                    members: BTreeMap::new(),
                    keys: Vec::new(),
                    revision: false,
                });
                // A revision of a record the series counts makes the whole
                // write a revision, even when another record of the same
                // write hides its effect (a turnover over exports).
                touch.revision |= change.before.is_some();
                if delta != Tally::default() {
                    let bucket = spec.bucket(change.key.period);
                    touch.deltas.entry(bucket).or_default().add(delta);
                    if let Some(rule) = watch.def.rules.rank {
                        let member = rule.by.member(&change.key);
                        touch
                            .members
                            .entry(bucket)
                            .or_default()
                            .entry(member)
                            .or_default()
                            .add(delta);
                    }
                    touch.keys.push(change.key);
                }
            }
        }
        let mut edits = Vec::new();
        for (id, touch) in touched {
            let watch = &watches[id];
            let moved = |now: Option<&(i128, i64)>, delta: &Tally| {
                let (nanos, count) = now.copied().unwrap_or_default();
                let (nanos, count) = (nanos + delta.nanos, count + delta.count);
                (count > 0).then_some((nanos, count))
            };
            let totals = touch
                .deltas
                .iter()
                .map(|(bucket, delta)| (*bucket, moved(watch.series.values.get(bucket), delta)))
                .collect();
            let members = touch
                .members
                .iter()
                .map(|(bucket, deltas)| {
                    let now = watch.series.members.get(bucket);
                    let moved = deltas
                        .iter()
                        .map(|(member, delta)| (*member, moved(now.and_then(|m| m.get(member)), delta)))
                        .collect();
                    (*bucket, moved)
                })
                .collect();
            let updates = Updates { totals, members };
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
        Milestone::RankChanged {
            period,
            rule,
            before,
            after,
            former_leader_now,
            cause,
        } => EventKind::RankChanged(RankChanged {
            watch,
            period: period.label(),
            by: rule.by,
            top: rule.top,
            before: before.clone(),
            after: after.clone(),
            former_leader_now: *former_leader_now,
            cause: *cause,
            caused_by,
            headline,
        }),
        Milestone::GrowthCrossed {
            period,
            threshold_bp,
            direction,
            before,
            after,
            cause,
        } => EventKind::GrowthCrossed(GrowthCrossed {
            watch,
            period: period.label(),
            previous_period: period.year_earlier().label(),
            threshold_bp: *threshold_bp,
            direction: *direction,
            before: *before,
            after: *after,
            cause: *cause,
            caused_by,
            headline,
        }),
        Milestone::YearToDate {
            kind,
            direction,
            year,
            through,
            value,
            compared,
            cause,
        } => EventKind::YearToDate(YearToDate {
            watch,
            kind: *kind,
            direction: *direction,
            year: *year,
            through: through.label(),
            months: milestones::months_label(*through),
            value: *value,
            compared: *compared,
            cause: *cause,
            caused_by,
            headline,
        }),
    }
}

#[cfg(test)]
mod tests {
    //! The decisions, against a state held in memory: no sled.

    use std::collections::{BTreeMap, BTreeSet};

    use prost_types::Timestamp;

    use super::*;
    use crate::core::volume::volume;
    use crate::core::{StoredRequest, Watches};
    use crate::domain::{
        CommodityFilter, CurrencyCode, Direction, Flow, Frequency, Granularity, Measure, Party, Period,
        RankBy, RawKey, RawRecord, RequestId, RequestTag, SeriesSpec, WatchRules,
    };

    /// A store's state as plain maps, changed by applying effects the way
    /// the engine writes them.
    #[derive(Default)]
    struct Memory {
        head: u64,
        records: BTreeMap<RecordKey, StoredRecord>,
        groups: BTreeMap<GroupName, (PartnerGroup, Timestamp)>,
        watches: Watches,
        created: BTreeMap<WatchId, Timestamp>,
        next_watch: u64,
        requests: BTreeMap<RequestId, StoredRequest>,
    }

    impl State for Memory {
        fn head(&self) -> u64 {
            self.head
        }
        fn record(&self, key: &RecordKey) -> Result<Option<StoredRecord>> {
            Ok(self.records.get(key).cloned())
        }
        fn value(&self, key: &RecordKey) -> Result<Option<i128>> {
            Ok(self.records.get(key).map(|r| r.record.value().nanos()))
        }
        fn group(&self, name: &GroupName) -> Result<Option<(PartnerGroup, Timestamp)>> {
            Ok(self.groups.get(name).cloned())
        }
        fn groups(&self) -> Result<BTreeMap<GroupName, PartnerGroup>> {
            Ok(self
                .groups
                .iter()
                .map(|(n, (g, _))| (n.clone(), g.clone()))
                .collect())
        }
        fn watches(&self) -> &Watches {
            &self.watches
        }
        fn watch_created_at(&self, id: &WatchId) -> Result<Option<Timestamp>> {
            Ok(self.created.get(id).copied())
        }
        /// Brute force: every record the series selects, volume per key.
        fn series_values(&self, spec: &SeriesSpec, split: Option<RankBy>) -> Result<Series> {
            let mut by_key: BTreeMap<RecordKey, [Option<i128>; 3]> = BTreeMap::new();
            let mut out = Series::default();
            let mut add = |key: &RecordKey, nanos: i128, count: i64| {
                let bucket = spec.bucket(key.period);
                let v = out.values.entry(bucket).or_default();
                v.0 += nanos;
                v.1 += count;
                if let Some(by) = split {
                    let m = out
                        .members
                        .entry(bucket)
                        .or_default()
                        .entry(by.member(key))
                        .or_default();
                    m.0 += nanos;
                    m.1 += count;
                }
            };
            for (key, stored) in &self.records {
                if !spec.selects(key) {
                    continue;
                }
                let value = stored.record.value().nanos();
                match &spec.measure {
                    Measure::Flows(flows) if flows.contains(&key.flow) => add(key, value, 1),
                    Measure::Flows(_) => {}
                    Measure::Volume => {
                        let slot = match key.flow {
                            Flow::Turnover => 0,
                            Flow::Export => 1,
                            Flow::Import => 2,
                            _ => continue,
                        };
                        by_key
                            .entry(RecordKey {
                                flow: Flow::Turnover,
                                ..*key
                            })
                            .or_default()[slot] = Some(value);
                    }
                }
            }
            for (key, [t, x, m]) in by_key {
                let tally = volume(t, x, m);
                add(&key, tally.nanos, tally.count);
            }
            out.members.retain(|_, m| {
                m.retain(|_, v| v.1 > 0);
                !m.is_empty()
            });
            Ok(out)
        }
        fn next_watch_number(&self) -> Result<u64> {
            Ok(self.next_watch.max(1))
        }
        fn request(&self, id: &RequestId) -> Result<Option<StoredRequest>> {
            Ok(self.requests.get(id).cloned())
        }
    }

    impl Memory {
        fn new() -> Memory {
            let central_asia = PartnerGroup::central_asia();
            let mut memory = Memory::default();
            memory
                .groups
                .insert(central_asia.name.clone(), (central_asia, Timestamp::default()));
            memory
        }

        /// Applies `command` and takes on its effect.
        fn run(&mut self, command: &Command) -> Result<Effect> {
            let effect = apply(self, command)?;
            if effect.replayed.is_some() {
                return Ok(effect);
            }
            for change in &effect.changes {
                match &change.after {
                    Some(after) => self.records.insert(change.key, after.clone()),
                    None => self.records.remove(&change.key),
                };
            }
            for (name, group) in &effect.groups {
                match group {
                    Some(g) => self.groups.insert(name.clone(), g.clone()),
                    None => self.groups.remove(name),
                };
            }
            for edit in &effect.watches {
                match edit {
                    WatchEdit::Created(runtime, at) => {
                        self.created.insert(runtime.def.id.clone(), *at);
                        self.watches.insert(runtime.def.id.clone(), runtime.clone());
                    }
                    WatchEdit::Followed(runtime) => {
                        self.watches.insert(runtime.def.id.clone(), runtime.clone());
                    }
                    WatchEdit::Deleted(id) => {
                        self.watches.remove(id);
                    }
                }
            }
            if let Some(n) = effect.next_watch_number {
                self.next_watch = n;
            }
            if let Some(last) = effect.events.last() {
                self.head = last.sequence;
            }
            if let Some(tag) = &command.request {
                self.requests.insert(
                    tag.id.clone(),
                    StoredRequest {
                        fingerprint: tag.fingerprint,
                        written_at: command.time,
                        position: 0,
                        outcome: Some(effect.outcome.clone()),
                    },
                );
            }
            Ok(effect)
        }
    }

    fn at(seconds: i64) -> Timestamp {
        Timestamp { seconds, nanos: 0 }
    }

    fn record(partner: &str, flow: Flow, period: &str, units: i64) -> TradeRecord {
        TradeRecord::parse(&RawRecord {
            key: RawKey {
                reporter: "CHN",
                partner,
                flow: i32::from(flow.code()),
                period,
                commodity: "TOTAL",
                currency: "USD",
            },
            units,
            ..Default::default()
        })
        .expect("valid record")
    }

    fn put(seconds: i64, records: Vec<TradeRecord>) -> Command {
        Command::at(at(seconds), Action::PutRecords(records), None)
    }

    fn tag(id: &str, fingerprint: u8) -> Option<RequestTag> {
        Some(RequestTag {
            id: RequestId::parse(id).unwrap().unwrap(),
            fingerprint: [fingerprint; 16],
        })
    }

    /// CHN's trade volume with CENTRAL_ASIA per year: a threshold of 100
    /// and record highs.
    fn seed_watch(id: Option<&str>, backfill: bool) -> Command {
        let watch = NewWatch {
            id: id.map(|i| WatchId::parse(i).unwrap()),
            name: "China–Central Asia trade".into(),
            reporters: vec![Party::parse("CHN").unwrap()],
            partners: vec![Party::parse("CENTRAL_ASIA").unwrap()],
            spec: SeriesSpec {
                reporters: None,
                partners: None,
                measure: Measure::Volume,
                commodities: CommodityFilter::Exact(BTreeSet::from([crate::domain::Commodity::TOTAL])),
                currency: CurrencyCode::USD,
                frequency: Frequency::Annual,
                granularity: Granularity::Year,
                from: Period::parse("1900").unwrap(),
                to: Period::parse("2100").unwrap(),
            },
            rules: WatchRules {
                thresholds: vec![100_000_000_000],
                record_high: true,
                ..WatchRules::default()
            },
            backfill,
            max_watches: 3,
        };
        Command::at(at(50), Action::CreateWatch(Box::new(watch)), None)
    }

    fn put_outcomes(effect: &Effect) -> Vec<WriteOutcome> {
        match &effect.outcome {
            Outcome::Put(p) => p.results.iter().map(|(_, o, _)| *o).collect(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_put_creates_revises_or_leaves_unchanged_and_numbers_its_events_on() {
        let mut state = Memory::new();
        state.head = 41;
        let first = state
            .run(&put(1, vec![record("KAZ", Flow::Turnover, "2025", 10)]))
            .unwrap();
        assert_eq!(put_outcomes(&first), vec![WriteOutcome::Created]);
        assert_eq!(
            first.events.iter().map(|e| e.sequence).collect::<Vec<_>>(),
            vec![42]
        );
        assert_eq!(
            first.changes[0].after.as_ref().unwrap().updated_at,
            at(1),
            "the command's time"
        );

        let again = state
            .run(&put(
                2,
                vec![
                    record("KAZ", Flow::Turnover, "2025", 10),
                    record("KGZ", Flow::Turnover, "2025", 5),
                ],
            ))
            .unwrap();
        assert_eq!(
            put_outcomes(&again),
            vec![WriteOutcome::Unchanged, WriteOutcome::Created]
        );
        assert_eq!(again.events.len(), 1, "an unchanged record writes nothing");

        let revised = state
            .run(&put(3, vec![record("KAZ", Flow::Turnover, "2025", 11)]))
            .unwrap();
        assert_eq!(put_outcomes(&revised), vec![WriteOutcome::Revised]);
        let Outcome::Put(p) = &revised.outcome else {
            unreachable!()
        };
        assert_eq!(p.results[0].2, 2);
        assert_eq!(p.sequences, Some(SequenceRange { first: 44, last: 44 }));
    }

    #[test]
    fn a_published_turnover_hides_exports_and_imports_from_trade_volume() {
        let mut state = Memory::new();
        let exports = state
            .run(&put(1, vec![record("KAZ", Flow::Export, "2025", 7)]))
            .unwrap();
        assert_eq!(exports.effects[0].volume.unwrap().nanos, 7_000_000_000);
        let turnover = state
            .run(&put(2, vec![record("KAZ", Flow::Turnover, "2025", 10)]))
            .unwrap();
        // Volume goes from exports (7) to the turnover (10): +3, and one
        // record counted instead of one.
        let volume = turnover.effects[0].volume.unwrap();
        assert_eq!((volume.nanos, volume.count), (3_000_000_000, 0));
        // Within one command, a later record sees the earlier one.
        let both = state
            .run(&put(
                3,
                vec![
                    record("KGZ", Flow::Import, "2025", 4),
                    record("KGZ", Flow::Turnover, "2025", 9),
                ],
            ))
            .unwrap();
        assert_eq!(both.effects[1].volume.unwrap().nanos, 5_000_000_000);
    }

    #[test]
    fn a_watch_follows_its_series_and_reaches_milestones_in_the_write_that_causes_them() {
        let mut state = Memory::new();
        state.run(&seed_watch(None, false)).unwrap();
        let first_year = state
            .run(&put(1, vec![record("UZB", Flow::Turnover, "2024", 80)]))
            .unwrap();
        assert_eq!(first_year.events.len(), 1, "a first period is no record yet");
        let crossed = state
            .run(&put(
                2,
                vec![
                    record("KAZ", Flow::Turnover, "2025", 60),
                    record("KGZ", Flow::Turnover, "2025", 45),
                ],
            ))
            .unwrap();
        let kinds: Vec<_> = crossed.events.iter().map(|e| &e.kind).collect();
        assert!(matches!(kinds[0], EventKind::RecordStored(_)));
        assert!(matches!(kinds[1], EventKind::RecordStored(_)));
        let EventKind::ThresholdCrossed(t) = kinds[2] else {
            panic!("{kinds:?}")
        };
        assert_eq!((t.direction, t.after), (Direction::Up, Some(105_000_000_000)));
        assert_eq!(t.caused_by.len(), 2);
        assert!(t.headline.contains("crossing 100"), "{}", t.headline);
        let EventKind::RecordHigh(h) = kinds[3] else {
            panic!("{kinds:?}")
        };
        assert_eq!(h.previous, Some(("2024".to_owned(), Some(80_000_000_000))));
        assert_eq!(h.cause, Cause::NewData);
        // A revision down crosses back.
        let down = state
            .run(&put(3, vec![record("KGZ", Flow::Turnover, "2025", 30)]))
            .unwrap();
        let EventKind::ThresholdCrossed(t) = &down.events[1].kind else {
            panic!()
        };
        assert_eq!(t.direction, Direction::Down);
    }

    #[test]
    fn watch_ids_are_assigned_past_taken_ones_and_the_limit_comes_from_the_command() {
        let mut state = Memory::new();
        state.run(&seed_watch(Some("w1"), false)).unwrap();
        let second = state.run(&seed_watch(None, false)).unwrap();
        let Outcome::Watch(w) = &second.outcome else {
            panic!()
        };
        assert_eq!(w.def.id.as_str(), "w2");
        assert_eq!(second.next_watch_number, Some(3));
        let taken = state.run(&seed_watch(Some("w1"), false)).unwrap_err();
        assert!(matches!(taken, Error::AlreadyExists(_)), "{taken}");
        state.run(&seed_watch(None, false)).unwrap();
        let full = state.run(&seed_watch(None, false)).unwrap_err();
        assert!(matches!(full, Error::ResourceExhausted(_)), "{full}");
    }

    #[test]
    fn backfill_replays_the_stored_periods_and_a_group_edit_reevaluates() {
        let mut state = Memory::new();
        state
            .run(&put(
                1,
                vec![
                    record("KAZ", Flow::Turnover, "2024", 90),
                    record("KAZ", Flow::Turnover, "2025", 120),
                ],
            ))
            .unwrap();
        let armed = state.run(&seed_watch(Some("quiet"), false)).unwrap();
        assert!(armed.events.is_empty(), "arming is silent");
        let backfilled = state.run(&seed_watch(Some("loud"), true)).unwrap();
        assert!(!backfilled.events.is_empty());
        assert!(backfilled.events.iter().all(|e| matches!(&e.kind,
            EventKind::ThresholdCrossed(t) if t.caused_by.is_empty())
            || matches!(&e.kind, EventKind::RecordHigh(h) if h.cause == Cause::NewData)));

        // Without KAZ, CENTRAL_ASIA has no trade: 2025 falls below 100.
        let mut group = PartnerGroup::central_asia();
        group.members.remove(&CountryCode::parse("KAZ").unwrap());
        let edit = state
            .run(&Command::at(at(60), Action::PutGroup(group.clone()), None))
            .unwrap();
        let downs = edit
            .events
            .iter()
            .filter(|e| matches!(&e.kind, EventKind::ThresholdCrossed(t) if t.direction == Direction::Down))
            .count();
        assert_eq!(downs, 2, "one per watch");
        let in_use = state
            .run(&Command::at(
                at(61),
                Action::DeleteGroup(group.name.clone()),
                None,
            ))
            .unwrap_err();
        assert!(matches!(in_use, Error::FailedPrecondition(_)), "{in_use}");
    }

    #[test]
    fn a_request_id_answers_its_retries_until_it_expires() {
        let mut state = Memory::new();
        let command = |seconds, fingerprint| Command {
            request: tag("retry-me", fingerprint),
            ..put(seconds, vec![record("KAZ", Flow::Turnover, "2025", 10)])
        };
        let first = state.run(&command(1, 7)).unwrap();
        let retry = state.run(&command(100, 7)).unwrap();
        assert!(retry.replayed.is_some());
        assert_eq!(retry.outcome, first.outcome);
        assert!(retry.events.is_empty() && retry.changes.is_empty());
        let reused = state.run(&command(100, 8)).unwrap_err();
        assert!(matches!(reused, Error::AlreadyExists(_)), "{reused}");
        // A day later the id is free again: the write is applied afresh.
        let later = state.run(&command(1 + REQUEST_RETAIN_SECS, 8)).unwrap();
        assert!(later.replayed.is_none());
        assert_eq!(put_outcomes(&later), vec![WriteOutcome::Unchanged]);
    }

    #[test]
    fn a_value_money_cannot_hold_refuses_the_write_whole() {
        let mut state = Memory::new();
        state.run(&seed_watch(None, false)).unwrap();
        state
            .run(&put(1, vec![record("KAZ", Flow::Turnover, "2025", i64::MAX)]))
            .unwrap();
        let err = state
            .run(&put(2, vec![record("KGZ", Flow::Turnover, "2025", 1)]))
            .unwrap_err();
        assert!(matches!(err, Error::OutOfRange(_)), "{err}");
        assert!(
            !state
                .records
                .contains_key(&record("KGZ", Flow::Turnover, "2025", 1).key)
        );
    }

    #[test]
    fn the_same_command_on_the_same_state_has_the_same_effect() {
        let build = || {
            let mut state = Memory::new();
            state.run(&seed_watch(None, true)).unwrap();
            state
                .run(&put(
                    1,
                    vec![
                        record("UZB", Flow::Export, "2024", 70),
                        record("TJK", Flow::Import, "2025", 120),
                    ],
                ))
                .unwrap();
            state
        };
        let command = put(
            9,
            vec![
                record("UZB", Flow::Import, "2024", 50),
                record("TJK", Flow::Export, "2025", 1),
            ],
        );
        assert_eq!(
            apply(&build(), &command).unwrap(),
            apply(&build(), &command).unwrap()
        );
    }
}
