//! Old state + change → new state + events.

use std::collections::BTreeMap;

use crate::domain::{Bucket, WatchRules};
pub use crate::domain::{Cause, Direction};

/// The state of a watched series: each period's value and how many records
/// it sums (periods without records are absent), and the period holding the
/// record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Series {
    pub values: BTreeMap<Bucket, (i128, i64)>,
    pub holder: Option<Bucket>,
}

impl Series {
    pub fn value(&self, bucket: &Bucket) -> Option<i128> {
        self.values.get(bucket).map(|(v, _)| *v)
    }
}

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
}

/// Applies new values (`None`: no records any more) for some periods and
/// returns the new state and the milestones the change reached.
pub fn evaluate(
    rules: &WatchRules,
    state: &Series,
    updates: &BTreeMap<Bucket, Option<(i128, i64)>>,
    cause: Cause,
) -> (Series, Vec<Milestone>) {
    let mut next = state.clone();
    for (bucket, update) in updates {
        match update {
            Some(v) if v.1 > 0 => {
                next.values.insert(*bucket, *v);
            }
            _ => {
                next.values.remove(bucket);
            }
        }
    }
    let mut events = Vec::new();
    for bucket in updates.keys() {
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

/// Arms a watch over existing data silently: the state, no events.
pub fn arm(values: BTreeMap<Bucket, (i128, i64)>) -> Series {
    let mut series = Series { values, holder: None };
    series.holder = holder(&series, None);
    series
}

/// The events existing data implies, as if its periods had arrived in
/// order; returns the same state as [`arm`].
pub fn backfill(rules: &WatchRules, values: &BTreeMap<Bucket, (i128, i64)>) -> (Series, Vec<Milestone>) {
    let mut state = Series::default();
    let mut events = Vec::new();
    for (bucket, value) in values {
        let (next, mut reached) = evaluate(rules, &state, &[(*bucket, Some(*value))].into(), Cause::NewData);
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

    fn rules() -> WatchRules {
        WatchRules {
            thresholds: vec![100 * BN],
            record_high: true,
        }
    }

    fn set(state: &Series, y: u16, v: i128) -> (Series, Vec<Milestone>) {
        let cause = if state.values.contains_key(&year(y)) {
            Cause::Revision
        } else {
            Cause::NewData
        };
        evaluate(&rules(), state, &[(year(y), Some((v, 1)))].into(), cause)
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
        let (s, e) = evaluate(&rules(), &s, &[(year(2024), None)].into(), Cause::Revision);
        assert!(e.is_empty(), "a single remaining period has no record to beat");
        assert_eq!(s.holder, Some(year(2023)));
    }

    #[test]
    fn a_tie_nobody_held_is_no_record() {
        let both = [(year(2023), Some((10, 1))), (year(2024), Some((10, 1)))].into();
        let (s, e) = evaluate(&rules(), &Series::default(), &both, Cause::NewData);
        assert!(e.is_empty());
        assert_eq!(s.holder, None);
        let (s, e) = set(&s, 2025, 11);
        assert!(matches!(e.as_slice(), [Milestone::RecordHigh { period, .. }] if *period == year(2025)));
        assert_eq!(s.holder, Some(year(2025)));
    }

    #[test]
    fn backfill_replays_periods_in_order() {
        let values = [
            (year(2023), (89 * BN, 5)),
            (year(2024), (94 * BN, 5)),
            (year(2025), (106 * BN, 5)),
        ]
        .into();
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
