//! Old state + change → new state + events.

use std::collections::{BTreeMap, BTreeSet};

use crate::domain::{Bucket, CountryCode, RankRule, WatchRules, YtdKind};
pub use crate::domain::{Cause, Direction};

/// A period's value and how many records it sums.
pub type Tally = (i128, i64);

/// The state of a watched series: each period's value and how many records
/// it sums (periods without records are absent), the period holding the
/// record and, for a rank rule, each period's value per member.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Series {
    pub values: BTreeMap<Bucket, Tally>,
    pub holder: Option<Bucket>,
    /// With a rank rule: per period, the value of each partner (or
    /// reporter) with records. Empty otherwise.
    pub members: BTreeMap<Bucket, BTreeMap<CountryCode, Tally>>,
}

impl Series {
    pub fn value(&self, bucket: &Bucket) -> Option<i128> {
        self.values.get(bucket).map(|(v, _)| *v)
    }

    /// The state after `updates`, the record holder aside.
    fn updated(&self, updates: &Updates) -> Series {
        let mut next = self.clone();
        for (bucket, update) in &updates.totals {
            match update {
                Some(v) if v.1 > 0 => {
                    next.values.insert(*bucket, *v);
                }
                _ => {
                    next.values.remove(bucket);
                }
            }
        }
        for (bucket, members) in &updates.members {
            let slot = next.members.entry(*bucket).or_default();
            for (member, update) in members {
                match update {
                    Some(v) if v.1 > 0 => {
                        slot.insert(*member, *v);
                    }
                    _ => {
                        slot.remove(member);
                    }
                }
            }
            if slot.is_empty() {
                next.members.remove(bucket);
            }
        }
        next
    }
}

/// New values for some periods (`None`: no records any more): the totals
/// and, for a rank rule, the members they touch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Updates {
    pub totals: BTreeMap<Bucket, Option<Tally>>,
    pub members: BTreeMap<Bucket, BTreeMap<CountryCode, Option<Tally>>>,
}

impl Updates {
    /// Every period and member of `old` and `new`, at its value in `new`:
    /// what replacing one series with another changes.
    pub fn replacing(old: &Series, new: &Series) -> Updates {
        let totals = old
            .values
            .keys()
            .chain(new.values.keys())
            .map(|b| (*b, new.values.get(b).copied()))
            .collect();
        let mut members: BTreeMap<Bucket, BTreeMap<CountryCode, Option<Tally>>> = BTreeMap::new();
        for (bucket, set) in old.members.iter().chain(&new.members) {
            let slot = members.entry(*bucket).or_default();
            for member in set.keys() {
                let value = new.members.get(bucket).and_then(|m| m.get(member)).copied();
                slot.insert(*member, value);
            }
        }
        Updates { totals, members }
    }
}

/// A member of a ranking and its value.
pub type Ranked = (CountryCode, i128);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Milestone {
    ThresholdCrossed {
        period: Bucket,
        threshold: i128,
        direction: Direction,
        before: Option<i128>,
        after: Option<i128>,
    },
    RecordHigh {
        period: Bucket,
        before: Option<i128>,
        after: i128,
        /// The period that held the record, and its value now.
        previous: Option<(Bucket, Option<i128>)>,
        cause: Cause,
    },
    /// A period's top formed (`before` empty), changed members or leader,
    /// or no longer stands (`after` empty).
    RankChanged {
        period: Bucket,
        rule: RankRule,
        before: Vec<Ranked>,
        after: Vec<Ranked>,
        /// When first place changed hands, the former leader's value now.
        former_leader_now: Option<i128>,
        cause: Cause,
    },
    GrowthCrossed {
        period: Bucket,
        threshold_bp: i32,
        direction: Direction,
        /// The period's value and the year-earlier value, when growth is
        /// defined.
        before: Option<(i128, i128)>,
        after: Option<(i128, i128)>,
        cause: Cause,
    },
    YearToDate {
        kind: YtdKind,
        direction: Direction,
        year: u16,
        /// The year's last period with records (after the write, or before
        /// it when none is left).
        through: Bucket,
        value: Option<i128>,
        compared: Option<(u16, i128)>,
        cause: Cause,
    },
}

/// Applies new values for some periods and returns the new state and the
/// milestones the change reached: threshold crossings, a record high,
/// growth crossings, rank changes, year-to-date comparisons, in that order.
pub fn evaluate(
    rules: &WatchRules,
    state: &Series,
    updates: &Updates,
    cause: Cause,
) -> (Series, Vec<Milestone>) {
    let mut next = state.updated(updates);
    let mut events = Vec::new();
    for bucket in updates.totals.keys() {
        let (before, after) = (state.value(bucket), next.value(bucket));
        if before == after {
            continue;
        }
        for &threshold in &rules.thresholds {
            let was = before.is_some_and(|v| v >= threshold);
            let is = after.is_some_and(|v| v >= threshold);
            if was != is {
                let direction = if is { Direction::Up } else { Direction::Down };
                events.push(Milestone::ThresholdCrossed {
                    period: *bucket,
                    threshold,
                    direction,
                    before,
                    after,
                });
            }
        }
    }
    next.holder = holder(&next, state.holder);
    if rules.record_high
        && next.holder != state.holder
        && next.values.len() >= 2
        && let Some(period) = next.holder
    {
        let previous = state
            .holder
            .or_else(|| runner_up(&next, period))
            .map(|p| (p, next.value(&p)));
        events.push(Milestone::RecordHigh {
            period,
            before: state.value(&period),
            after: next.value(&period).unwrap_or_default(),
            previous,
            cause,
        });
    }
    if !rules.growth_thresholds.is_empty() {
        growth_crossings(
            &rules.growth_thresholds,
            state,
            &next,
            updates,
            cause,
            &mut events,
        );
    }
    if let Some(rule) = rules.rank {
        rank_changes(rule, state, &next, updates, cause, &mut events);
    }
    if rules.year_to_date {
        year_to_date(state, &next, cause, &mut events);
    }
    (next, events)
}

/// The period holding the record: the one strictly greater than every
/// other. When several share the highest value, the current holder keeps the
/// record if it is one of them; otherwise nobody holds it.
fn holder(series: &Series, current: Option<Bucket>) -> Option<Bucket> {
    let max = series.values.values().map(|(v, _)| *v).max()?;
    let mut at_max = series
        .values
        .iter()
        .filter(|(_, (v, _))| *v == max)
        .map(|(b, _)| *b);
    let first = at_max.next()?;
    if at_max.next().is_none() {
        return Some(first);
    }
    current.filter(|c| series.value(c) == Some(max))
}

fn runner_up(series: &Series, holder: Bucket) -> Option<Bucket> {
    series
        .values
        .iter()
        .filter(|(b, _)| **b != holder)
        .fold(None::<(Bucket, i128)>, |best, (b, (v, _))| match best {
            Some((_, bv)) if bv >= *v => best,
            _ => Some((*b, *v)),
        })
        .map(|(b, _)| b)
}

/// A period's value and the year-earlier value, when year-on-year growth is
/// defined: both have records and the earlier value is positive. Like
/// `Aggregate`'s growth, months compare with the same month a year earlier.
fn growth_basis(series: &Series, bucket: &Bucket) -> Option<(i128, i128)> {
    let value = series.value(bucket)?;
    let earlier = bucket.year_earlier();
    let previous = series.value(&earlier).filter(|p| *p > 0 && earlier != *bucket)?;
    Some((value, previous))
}

/// Growth of `value` over `previous` in percent, for people (decisions are
/// made in integers by [`grown_by`]).
pub fn growth_percent(value: i128, previous: i128) -> f64 {
    (value - previous) as f64 / previous as f64 * 100.0
}

/// Whether growth is at least `bp` basis points: `value / previous - 1 ≥
/// bp / 10 000`, in exact integers.
fn grown_by(basis: Option<(i128, i128)>, bp: i32) -> bool {
    basis.is_some_and(|(value, previous)| (value - previous) * 10_000 >= i128::from(bp) * previous)
}

/// A period's growth moves when it or the year before it changes.
fn growth_crossings(
    thresholds: &[i32],
    state: &Series,
    next: &Series,
    updates: &Updates,
    cause: Cause,
    events: &mut Vec<Milestone>,
) {
    let touched: BTreeSet<Bucket> = updates
        .totals
        .keys()
        .flat_map(|b| {
            let later = Bucket {
                year: b.year.saturating_add(1),
                ..*b
            };
            [*b, later]
        })
        .collect();
    for period in touched {
        let (before, after) = (growth_basis(state, &period), growth_basis(next, &period));
        if before == after {
            continue;
        }
        for &threshold_bp in thresholds {
            let (was, is) = (grown_by(before, threshold_bp), grown_by(after, threshold_bp));
            if was != is {
                events.push(Milestone::GrowthCrossed {
                    period,
                    threshold_bp,
                    direction: if is { Direction::Up } else { Direction::Down },
                    before,
                    after,
                    cause,
                });
            }
        }
    }
}

/// A period's top `rule.top` members, first place first: by value, then by
/// code on a tie. `None` while fewer members have records.
fn top(series: &Series, period: &Bucket, rule: RankRule) -> Option<Vec<Ranked>> {
    let members = series.members.get(period)?;
    let n = usize::try_from(rule.top).unwrap_or(usize::MAX);
    if members.len() < n {
        return None;
    }
    let mut ranked: Vec<Ranked> = members.iter().map(|(c, (v, _))| (*c, *v)).collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    ranked.truncate(n);
    Some(ranked)
}

/// A top is news when it forms, stops standing, changes members, or changes
/// its leader; an order change below first place is not.
fn rank_changes(
    rule: RankRule,
    state: &Series,
    next: &Series,
    updates: &Updates,
    cause: Cause,
    events: &mut Vec<Milestone>,
) {
    for period in updates.members.keys() {
        let (before, after) = (top(state, period, rule), top(next, period, rule));
        let news = match (&before, &after) {
            (None, None) => false,
            (Some(a), Some(b)) => {
                let members = |list: &[Ranked]| list.iter().map(|(c, _)| *c).collect::<BTreeSet<_>>();
                a[0].0 != b[0].0 || members(a) != members(b)
            }
            _ => true,
        };
        if news {
            let (before, after) = (before.unwrap_or_default(), after.unwrap_or_default());
            let former_leader_now = match (before.first(), after.first()) {
                (Some((old, _)), Some((new, _))) if old != new => {
                    next.members.get(period).and_then(|m| m.get(old)).map(|(v, _)| *v)
                }
                _ => None,
            };
            events.push(Milestone::RankChanged {
                period: *period,
                rule,
                before,
                after,
                former_leader_now,
                cause,
            });
        }
    }
}

/// A year's periods with records: its total so far and its last period.
fn years(series: &Series) -> BTreeMap<u16, (i128, Bucket)> {
    let mut out: BTreeMap<u16, (i128, Bucket)> = BTreeMap::new();
    for (bucket, (value, _)) in &series.values {
        let slot = out.entry(bucket.year).or_insert((0, *bucket));
        slot.0 += value;
        slot.1 = *bucket;
    }
    out
}

/// The sum of a year's periods up to the same point of the year as
/// `through`; `None` when it has none.
fn same_periods(series: &Series, year: u16, through: Bucket) -> Option<i128> {
    let from = Bucket {
        year,
        sub: 0,
        ..through
    };
    let to = Bucket { year, ..through };
    let mut values = series.values.range(from..=to).map(|(_, (v, _))| *v).peekable();
    values.peek()?;
    Some(values.sum())
}

/// Whether `year` so far holds each year-to-date comparison, and what it is
/// compared with.
/// `all` is [`years`] of `series`.
fn ytd_status(
    series: &Series,
    all: &BTreeMap<u16, (i128, Bucket)>,
    year: u16,
    kind: YtdKind,
) -> (bool, Option<(u16, i128)>) {
    let Some(&(so_far, through)) = all.get(&year) else {
        return (false, None);
    };
    match kind {
        YtdKind::PassedPreviousYear => {
            let previous = year
                .checked_sub(1)
                .and_then(|y| all.get(&y).map(|(total, _)| (y, *total)));
            (previous.is_some_and(|(_, total)| so_far > total), previous)
        }
        YtdKind::RecordHigh => {
            let best = all
                .range(..year)
                .filter_map(|(y, _)| same_periods(series, *y, through).map(|v| (*y, v)))
                .fold(None::<(u16, i128)>, |best, (y, v)| match best {
                    Some((_, bv)) if bv >= v => best,
                    _ => Some((y, v)),
                });
            (best.is_some_and(|(_, v)| so_far > v), best)
        }
    }
}

/// Each year whose year-to-date comparisons changed, in year order.
fn year_to_date(state: &Series, next: &Series, cause: Cause, events: &mut Vec<Milestone>) {
    let (old, new) = (years(state), years(next));
    let all: BTreeSet<u16> = old.keys().chain(new.keys()).copied().collect();
    for year in all {
        let Some(&(_, through)) = new.get(&year).or_else(|| old.get(&year)) else {
            continue;
        };
        for kind in [YtdKind::PassedPreviousYear, YtdKind::RecordHigh] {
            let (was, _) = ytd_status(state, &old, year, kind);
            let (is, compared) = ytd_status(next, &new, year, kind);
            if was != is {
                events.push(Milestone::YearToDate {
                    kind,
                    direction: if is { Direction::Up } else { Direction::Down },
                    year,
                    through,
                    value: new.get(&year).map(|(v, _)| *v),
                    compared,
                    cause,
                });
            }
        }
    }
}

/// Arms a watch over existing data silently: the state, no events.
pub fn arm(mut series: Series) -> Series {
    series.holder = holder(&series, None);
    series
}

/// The events existing data implies, as if its periods had arrived in
/// order; returns the same state as [`arm`].
pub fn backfill(rules: &WatchRules, values: &Series) -> (Series, Vec<Milestone>) {
    let mut state = Series::default();
    let mut events = Vec::new();
    for (bucket, value) in &values.values {
        let members = values
            .members
            .get(bucket)
            .map(|m| [(*bucket, m.iter().map(|(c, v)| (*c, Some(*v))).collect())].into())
            .unwrap_or_default();
        let updates = Updates {
            totals: [(*bucket, Some(*value))].into(),
            members,
        };
        let (next, mut reached) = evaluate(rules, &state, &updates, Cause::NewData);
        events.append(&mut reached);
        state = next;
    }
    (state, events)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Granularity, Period};

    const BN: i128 = 1_000_000_000 * 1_000_000_000;

    fn year(y: u16) -> Bucket {
        Bucket::of(Period::from_parts(y, 0).unwrap(), Granularity::Year)
    }

    fn totals<const N: usize>(totals: [(Bucket, Option<Tally>); N]) -> Updates {
        Updates {
            totals: totals.into(),
            members: BTreeMap::new(),
        }
    }

    fn rules() -> WatchRules {
        WatchRules {
            thresholds: vec![100 * BN],
            record_high: true,
            ..WatchRules::default()
        }
    }

    fn set(state: &Series, y: u16, v: i128) -> (Series, Vec<Milestone>) {
        let cause = if state.values.contains_key(&year(y)) {
            Cause::Revision
        } else {
            Cause::NewData
        };
        evaluate(&rules(), state, &totals([(year(y), Some((v, 1)))]), cause)
    }

    #[test]
    fn the_seed_story() {
        let (s, e) = set(&Series::default(), 2023, 89_300 * BN / 1000);
        assert!(e.is_empty(), "one period has no record to beat");
        let (s, e) = set(&s, 2024, 90_960 * BN / 1000);
        assert!(
            matches!(e.as_slice(), [Milestone::RecordHigh { period, previous: Some((p, _)), .. }] if *period == year(2024) && *p == year(2023))
        );
        let (s, e) = set(&s, 2024, 94_820 * BN / 1000);
        assert!(e.is_empty(), "the holder growing is no new record");
        let (s, e) = set(&s, 2025, 92 * BN);
        assert!(e.is_empty());
        let (s, e) = set(&s, 2025, 102 * BN);
        assert_eq!(e.len(), 2);
        assert!(matches!(
            e[0],
            Milestone::ThresholdCrossed {
                direction: Direction::Up,
                ..
            }
        ));
        assert!(matches!(
            e[1],
            Milestone::RecordHigh {
                cause: Cause::Revision,
                ..
            }
        ));
        let (s, e) = set(&s, 2025, 99_700 * BN / 1000);
        assert!(matches!(
            e.as_slice(),
            [Milestone::ThresholdCrossed {
                direction: Direction::Down,
                ..
            }]
        ));
        let (_, e) = set(&s, 2025, 106_300 * BN / 1000);
        assert!(matches!(
            e.as_slice(),
            [Milestone::ThresholdCrossed {
                direction: Direction::Up,
                ..
            }]
        ));
    }

    #[test]
    fn ties_keep_the_earlier_holder_and_revisions_hand_the_record_back() {
        let (s, _) = set(&Series::default(), 2023, 10);
        let (s, e) = set(&s, 2024, 10);
        assert!(e.is_empty());
        assert_eq!(s.holder, Some(year(2023)));
        let (s, e) = set(&s, 2023, 5);
        assert!(
            matches!(e.as_slice(), [Milestone::RecordHigh { period, cause: Cause::Revision, .. }] if *period == year(2024))
        );
        let (s, e) = evaluate(&rules(), &s, &totals([(year(2024), None)]), Cause::Revision);
        assert!(e.is_empty(), "a single remaining period has no record to beat");
        assert_eq!(s.holder, Some(year(2023)));
    }

    #[test]
    fn a_tie_nobody_held_is_no_record() {
        let both = totals([(year(2023), Some((10, 1))), (year(2024), Some((10, 1)))]);
        let (s, e) = evaluate(&rules(), &Series::default(), &both, Cause::NewData);
        assert!(e.is_empty());
        assert_eq!(s.holder, None);
        let (s, e) = set(&s, 2025, 11);
        assert!(matches!(e.as_slice(), [Milestone::RecordHigh { period, .. }] if *period == year(2025)));
        assert_eq!(s.holder, Some(year(2025)));
    }

    #[test]
    fn backfill_replays_periods_in_order() {
        let values = Series {
            values: [
                (year(2023), (89 * BN, 5)),
                (year(2024), (94 * BN, 5)),
                (year(2025), (106 * BN, 5)),
            ]
            .into(),
            ..Series::default()
        };
        let (state, events) = backfill(&rules(), &values);
        assert_eq!(state, arm(values));
        let highs = events
            .iter()
            .filter(|e| matches!(e, Milestone::RecordHigh { .. }))
            .count();
        assert_eq!(highs, 2);
        assert_eq!(events.len(), 3);
    }
}
