//! Trade volume: per reporter, partner, period, commodity and currency, the
//! published turnover if there is one, else exports plus imports. One rule,
//! used by the rollups the engine keeps and by the series watches follow.

use crate::domain::{Flow, Measure, RecordKey};
use crate::error::Result;

/// A sum of record values and how many records it holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    pub nanos: i128,
    pub count: i64,
}

impl Tally {
    #[inline]
    fn of(value: Option<i128>) -> Tally {
        value.map_or(Tally::default(), |nanos| Tally { nanos, count: 1 })
    }

    #[inline]
    pub fn minus(self, other: Tally) -> Tally {
        Tally {
            nanos: self.nanos - other.nanos,
            count: self.count - other.count,
        }
    }

    #[inline]
    pub fn add(&mut self, other: Tally) {
        self.nanos += other.nanos;
        self.count += other.count;
    }
}

/// Whether a flow's records make up trade volume.
#[inline]
pub fn shares_volume(flow: Flow) -> bool {
    matches!(flow, Flow::Turnover | Flow::Export | Flow::Import)
}

/// The records whose values share `key`'s trade volume: its turnover,
/// export and import siblings in the same currency (none for re-exports
/// and re-imports).
pub fn volume_siblings(key: &RecordKey) -> impl Iterator<Item = RecordKey> + use<> {
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

/// Trade volume of one reporter–partner–period–commodity–currency from its
/// turnover, export and import values.
#[inline]
pub fn volume(turnover: Option<i128>, exports: Option<i128>, imports: Option<i128>) -> Tally {
    match turnover {
        Some(_) => Tally::of(turnover),
        None => {
            let mut t = Tally::of(exports);
            t.add(Tally::of(imports));
            t
        }
    }
}

/// What one record change does to the sums it is part of.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChangeEffect {
    /// To the sum of its own flow.
    pub flow: Tally,
    /// To trade volume, for exports, imports and turnover.
    pub volume: Option<Tally>,
}

impl ChangeEffect {
    /// The effect of `key` going from `before` to `after` (values in
    /// nanos); `value_of` answers a sibling's value as it stands before
    /// this change.
    pub fn of(
        key: &RecordKey,
        before: Option<i128>,
        after: Option<i128>,
        value_of: impl Fn(&RecordKey) -> Result<Option<i128>>,
    ) -> Result<Self> {
        let flow = Tally::of(after).minus(Tally::of(before));
        if !shares_volume(key.flow) {
            return Ok(ChangeEffect { flow, volume: None });
        }
        let sibling = |f: Flow| -> Result<Option<i128>> {
            if f == key.flow {
                Ok(before)
            } else {
                value_of(&RecordKey { flow: f, ..*key })
            }
        };
        let (t, x, m) = (
            sibling(Flow::Turnover)?,
            sibling(Flow::Export)?,
            sibling(Flow::Import)?,
        );
        let volume_after = match key.flow {
            Flow::Turnover => volume(after, x, m),
            Flow::Export => volume(t, after, m),
            _ => volume(t, x, after),
        };
        Ok(ChangeEffect {
            flow,
            volume: Some(volume_after.minus(volume(t, x, m))),
        })
    }

    /// The change to a series measuring `measure`, if the record counts in it.
    pub fn for_measure(&self, flow: Flow, measure: &Measure) -> Option<Tally> {
        match measure {
            Measure::Volume => self.volume,
            Measure::Flows(flows) => flows.contains(&flow).then_some(self.flow),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_is_turnover_else_exports_plus_imports() {
        assert_eq!(volume(Some(10), Some(3), Some(4)), Tally { nanos: 10, count: 1 });
        assert_eq!(volume(None, Some(3), Some(4)), Tally { nanos: 7, count: 2 });
        assert_eq!(volume(None, None, Some(4)), Tally { nanos: 4, count: 1 });
        assert_eq!(volume(None, None, None), Tally::default());
    }
}
