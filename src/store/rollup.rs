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
use crate::collections::FastMap;
use crate::core::volume::ChangeEffect;
pub use crate::core::volume::Tally;
use crate::domain::{CountryCode, RecordKey};
use crate::error::{Error, Result};

/// How a tally is stored: i128 nanos and i64 count, big-endian.
pub const TALLY_LEN: usize = 24;

#[inline]
pub fn encode_tally(tally: &Tally) -> [u8; TALLY_LEN] {
    let mut out = [0u8; TALLY_LEN];
    out[..16].copy_from_slice(&tally.nanos.to_be_bytes());
    out[16..].copy_from_slice(&tally.count.to_be_bytes());
    out
}

#[inline]
pub fn decode_tally(bytes: &[u8]) -> Option<Tally> {
    let nanos = i128::from_be_bytes(bytes.get(..16)?.try_into().ok()?);
    let count = i64::from_be_bytes(bytes.get(16..24)?.try_into().ok()?);
    Some(Tally { nanos, count })
}

/// Rollup changes accumulated over one write.
#[derive(Default)]
pub struct RollupDeltas {
    deltas: FastMap<Vec<u8>, Tally>,
}

impl RollupDeltas {
    /// Adds the effect of one record change.
    pub fn add(&mut self, key: &RecordKey, effect: &ChangeEffect) {
        if key.partner != CountryCode::WORLD {
            self.add_to(key, key.flow.code(), effect.flow);
            if let Some(volume) = effect.volume {
                self.add_to(key, keys::VOLUME_FLOW, volume);
            }
        }
    }

    fn add_to(&mut self, key: &RecordKey, flow: u8, delta: Tally) {
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
                Some(v) => decode_tally(&v).ok_or_else(|| Error::Corrupt(format!("rollup {key:02x?}")))?,
                None => Tally::default(),
            };
            tally.add(delta);
            match tally.count {
                0 => batch.remove(key),
                n if n > 0 => batch.insert(key, &encode_tally(&tally)),
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
    fn tallies_round_trip() {
        let t = Tally {
            nanos: -5_000_000_000_123,
            count: 42,
        };
        assert_eq!(decode_tally(&encode_tally(&t)), Some(t));
    }
}
