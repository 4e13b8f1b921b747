//! Rollups kept current on every write, so that questions over many
//! partners (or many reporters) read a few entries instead of every record.
//!
//! Two rollups, both keyed by commodity and period and both leaving out
//! partner `WLD` (a world figure would count every partner twice):
//! - per reporter, summed over partners (`p` keys);
//! - summed over reporters and partners (`w` keys).
//!
//! Each holds one entry per flow, plus one for trade volume
//! ([`keys::VOLUME_FLOW`]): per reporter, partner, period, commodity and
//! currency, the turnover figure if published, else exports + imports.

use super::keys;
use super::writer::{Change, FastMap};
use crate::domain::{CountryCode, Flow, RecordKey};
use crate::error::{Error, Result};

/// A sum of record values and how many records it holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    pub nanos: i128,
    pub count: i64,
}

impl Tally {
    pub const ENCODED_LEN: usize = 24;

    pub fn encode(&self) -> [u8; Self::ENCODED_LEN] {
        let mut out = [0u8; Self::ENCODED_LEN];
        out[..16].copy_from_slice(&self.nanos.to_be_bytes());
        out[16..].copy_from_slice(&self.count.to_be_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<Tally> {
        let nanos = i128::from_be_bytes(bytes.get(..16)?.try_into().ok()?);
        let count = i64::from_be_bytes(bytes.get(16..24)?.try_into().ok()?);
        Some(Tally { nanos, count })
    }

    fn of(value: Option<i128>) -> Tally {
        value.map_or(Tally::default(), |nanos| Tally { nanos, count: 1 })
    }

    pub fn minus(self, other: Tally) -> Tally {
        Tally {
            nanos: self.nanos - other.nanos,
            count: self.count - other.count,
        }
    }

    pub fn add(&mut self, other: Tally) {
        self.nanos += other.nanos;
        self.count += other.count;
    }
}

/// Trade volume of one reporter–partner–period–commodity–currency from its
/// turnover, export and import values.
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
    fn of(change: &Change, value_of: impl Fn(&RecordKey) -> Result<Option<i128>>) -> Result<Self> {
        let key = change.key;
        let before = change.before.as_ref().map(|r| r.record.value().nanos());
        let after = change.after.as_ref().map(|r| r.record.value().nanos());
        let flow = Tally::of(after).minus(Tally::of(before));
        if !matches!(key.flow, Flow::Turnover | Flow::Export | Flow::Import) {
            return Ok(ChangeEffect { flow, volume: None });
        }
        let sibling = |f: Flow| -> Result<Option<i128>> {
            if f == key.flow {
                Ok(before)
            } else {
                value_of(&RecordKey { flow: f, ..key })
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
    pub fn for_measure(&self, flow: Flow, measure: &crate::domain::Measure) -> Option<Tally> {
        match measure {
            crate::domain::Measure::Volume => self.volume,
            crate::domain::Measure::Flows(flows) => flows.contains(&flow).then_some(self.flow),
        }
    }
}

/// Rollup changes accumulated over one write.
#[derive(Default)]
pub struct RollupDeltas {
    deltas: FastMap<Vec<u8>, Tally>,
}

impl RollupDeltas {
    /// Adds the effect of one record change, and returns it. `value_of`
    /// answers a record's value as it stands before this change (earlier
    /// changes of the same write included).
    pub fn add_change(
        &mut self,
        change: &Change,
        value_of: impl Fn(&RecordKey) -> Result<Option<i128>>,
    ) -> Result<ChangeEffect> {
        let effect = ChangeEffect::of(change, value_of)?;
        if change.key.partner != CountryCode::WORLD {
            self.add(&change.key, change.key.flow.code(), effect.flow);
            if let Some(volume) = effect.volume {
                self.add(&change.key, keys::VOLUME_FLOW, volume);
            }
        }
        Ok(effect)
    }

    fn add(&mut self, key: &RecordKey, flow: u8, delta: Tally) {
        if delta == Tally::default() {
            return;
        }
        self.deltas
            .entry(keys::reporter_rollup_key(key, flow).to_vec())
            .or_default()
            .add(delta);
        self.deltas
            .entry(keys::world_rollup_key(key, flow).to_vec())
            .or_default()
            .add(delta);
    }

    /// Turns the deltas into writes of the new totals; an entry whose count
    /// drops to zero is removed.
    pub fn write_into(self, batch: &mut sled::Batch, db: &sled::Db) -> Result<()> {
        for (key, delta) in self.deltas {
            if delta == Tally::default() {
                continue;
            }
            let mut tally = match db.get(&key)? {
                Some(v) => Tally::decode(&v).ok_or_else(|| Error::Corrupt(format!("rollup {key:02x?}")))?,
                None => Tally::default(),
            };
            tally.add(delta);
            match tally.count {
                0 => batch.remove(key),
                n if n > 0 => batch.insert(key, &tally.encode()),
                _ => {
                    return Err(Error::Corrupt(format!(
                        "rollup {key:02x?} would count {} records",
                        tally.count
                    )));
                }
            }
        }
        Ok(())
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

    #[test]
    fn tallies_round_trip() {
        let t = Tally {
            nanos: -5_000_000_000_123,
            count: 42,
        };
        assert_eq!(Tally::decode(&t.encode()), Some(t));
    }
}
