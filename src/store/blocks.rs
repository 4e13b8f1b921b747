//! Records stored a series to a key: every record of one reporter, partner
//! and commodity — each period of both frequencies, each flow and currency —
//! in one sled value, in record key order.
//!
//! sled 0.34 splits a leaf of its tree beyond 16 entries, and pays for each
//! leaf in its page table, its snapshot, each rewrite of it on disk and
//! each first read of it after a start. One entry per record made a store
//! of 1 M records take a 433 MB sled file for 54 MB of keys and values, and
//! a question read as many leaves as the series it sums. One entry per
//! series holds about twenty records (ten years of annual exports and
//! imports) where a record held one (BENCHMARKS.md, "Size on disk").
//!
//! A block's key (format 5) is reporter, commodity level, partner, code:
//! a reporter's series of one level lie together, so that the questions
//! that leave the partner open at one level — every partner's TOTAL, the
//! most asked — read a run of neighbouring leaves, and so do those that
//! leave the code open for one pair (every HS2 code of CHN → KAZ). Format
//! 4 ordered them reporter, partner, commodity, which scattered a
//! reporter's TOTAL series over as many leaves as it has partners.
//!
//! A record is still named by its 22-byte record key (`keys::record_key`,
//! in natural order: reporter, partner, commodity, …) everywhere else —
//! page tokens, the command log, the caches: the block's key is that key's
//! first 14 bytes reordered (with this namespace's byte), and each record
//! in it carries the other 8 as its `tail`.

use bytes::Bytes;
use prost::Message;

use super::codec::{self, RecordAmount, RecordValue};
use super::keys::{self, RECORD_KEY_LEN};
use super::series_cache::{CachedRecord, SERIES_PREFIX_LEN, SeriesPrefix};
use crate::domain::{RecordKey, StoredRecord};
use crate::error::{Error, Result};

/// Namespace of series blocks.
pub const NS_SERIES: u8 = b's';
/// Namespace of format 4's series blocks (reporter, partner, commodity),
/// moved to [`NS_SERIES`] by the upgrade.
pub const NS_SERIES_V4: u8 = b'b';

/// Where the parts of a record key's first 14 bytes go in its block's key.
mod at {
    pub const REPORTER: usize = 1;
    pub const LEVEL: usize = 4;
    pub const PARTNER: usize = 5;
    pub const CODE: usize = 8;
}

/// The records of one series as stored.
#[derive(Clone, PartialEq, Message)]
pub struct BlockValue {
    #[prost(message, repeated, tag = "1")]
    pub records: Vec<BlockRecord>,
}

#[derive(Clone, PartialEq, Message)]
pub struct BlockRecord {
    /// Period (4 bytes), flow (1) and currency (3) of the record key, as a
    /// big-endian number: the order of the keys.
    #[prost(fixed64, tag = "1")]
    pub tail: u64,
    /// The record's `RecordValue`, encoded (the same bytes on the wire as
    /// the message): decoded only where it is read, and copied as it is
    /// when a write rewrites the block around it.
    #[prost(bytes = "bytes", tag = "2")]
    pub value: Bytes,
}

impl BlockRecord {
    /// The record's value, decoded.
    pub fn value(&self, block: &[u8]) -> Result<RecordValue> {
        // A stored record has a revision, so its value is never empty.
        if self.value.is_empty() {
            return Err(corrupt(block, "a record without a value"));
        }
        RecordValue::decode(self.value.as_ref()).map_err(|e| corrupt(block, e))
    }

    /// The record's amount alone.
    pub fn amount(&self, block: &[u8]) -> Result<RecordAmount> {
        RecordAmount::decode(self.value.as_ref()).map_err(|e| corrupt(block, e))
    }
}

/// A `BlockValue` read for its amounts only: the rest of each record is
/// skipped, not decoded.
#[derive(Clone, PartialEq, Message)]
struct BlockAmounts {
    #[prost(message, repeated, tag = "1")]
    records: Vec<BlockAmount>,
}

#[derive(Clone, PartialEq, Message)]
struct BlockAmount {
    #[prost(fixed64, tag = "1")]
    tail: u64,
    #[prost(message, optional, tag = "2")]
    value: Option<RecordAmount>,
}

/// The start of the block keys of one reporter, of one reporter's
/// commodity level, or of one pair's commodity level (or of every block).
pub fn prefix(reporter: Option<[u8; 3]>, level: Option<u8>, partner: Option<[u8; 3]>) -> Vec<u8> {
    let mut out = vec![NS_SERIES];
    if let Some(r) = reporter {
        out.extend_from_slice(&r);
        if let Some(l) = level {
            out.push(l);
            if let Some(p) = partner {
                out.extend_from_slice(&p);
            }
        }
    }
    out
}

/// The key of the block holding `key`.
pub fn block_key(key: &RecordKey) -> SeriesPrefix {
    block_key_of(&keys::record_key(key))
}

/// The key of the block holding the record whose key bytes (or series
/// prefix) are `record`.
pub fn block_key_of(record: &[u8]) -> SeriesPrefix {
    use keys::record_offsets as r;
    let mut out = [0u8; SERIES_PREFIX_LEN];
    out[0] = NS_SERIES;
    out[at::REPORTER..at::REPORTER + 3].copy_from_slice(&record[r::REPORTER..r::REPORTER + 3]);
    out[at::LEVEL] = record[r::COMMODITY];
    out[at::PARTNER..at::PARTNER + 3].copy_from_slice(&record[r::PARTNER..r::PARTNER + 3]);
    out[at::CODE..].copy_from_slice(&record[r::COMMODITY + 1..SERIES_PREFIX_LEN]);
    out
}

/// The series prefix (the first 14 bytes of its records' keys) of the
/// block `block`.
pub fn series_of(block: &[u8]) -> SeriesPrefix {
    use keys::record_offsets as r;
    let mut out = [0u8; SERIES_PREFIX_LEN];
    out[0] = keys::NS_RECORD;
    out[r::REPORTER..r::REPORTER + 3].copy_from_slice(&block[at::REPORTER..at::REPORTER + 3]);
    out[r::PARTNER..r::PARTNER + 3].copy_from_slice(&block[at::PARTNER..at::PARTNER + 3]);
    out[r::COMMODITY] = block[at::LEVEL];
    out[r::COMMODITY + 1..].copy_from_slice(&block[at::CODE..SERIES_PREFIX_LEN]);
    out
}

/// The part of a record key a block keeps per record.
pub fn tail(key: &RecordKey) -> u64 {
    tail_of(&keys::record_key(key))
}

fn tail_of(record: &[u8; RECORD_KEY_LEN]) -> u64 {
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&record[SERIES_PREFIX_LEN..]);
    u64::from_be_bytes(bytes)
}

/// The record key of the record `tail` in the block `block`.
pub fn record_key_bytes(block: &[u8], tail: u64) -> [u8; RECORD_KEY_LEN] {
    let mut out = [0u8; RECORD_KEY_LEN];
    out[..SERIES_PREFIX_LEN].copy_from_slice(&series_of(block));
    out[SERIES_PREFIX_LEN..].copy_from_slice(&tail.to_be_bytes());
    out
}

fn corrupt(block: &[u8], e: impl std::fmt::Display) -> Error {
    Error::Corrupt(format!("series block {block:02x?}: {e}"))
}

/// Decodes a block's value.
pub fn decode(block: &[u8], value: &[u8]) -> Result<BlockValue> {
    let bytes = codec::decompress(value).map_err(|e| corrupt(block, e))?;
    // Decoded from `Bytes`, each record's value is a slice of them, not a
    // copy.
    BlockValue::decode(Bytes::from(bytes.into_owned())).map_err(|e| corrupt(block, e))
}

/// The block stored under `block`, if any.
pub fn read(db: &sled::Db, block: &SeriesPrefix) -> Result<Option<BlockValue>> {
    db.get(block)?.map(|v| decode(block, &v)).transpose()
}

/// Each record of a block, as a stored record.
pub fn records(block: &[u8], value: BlockValue) -> impl Iterator<Item = Result<StoredRecord>> + '_ {
    value.records.into_iter().map(move |r| {
        let key_bytes = record_key_bytes(block, r.tail);
        let key = keys::decode_record_key(&key_bytes)?;
        Ok(codec::record_from_value(key, r.value(block)?))
    })
}

/// The record `key`, as stored.
pub fn get(db: &sled::Db, key: &RecordKey) -> Result<Option<StoredRecord>> {
    let block = block_key(key);
    match read(db, &block)? {
        Some(value) => find(&block, &value, key, tail(key)),
        None => Ok(None),
    }
}

/// The record `key`, whose tail is `tail`, from its block `block` as read.
pub fn find(block: &[u8], value: &BlockValue, key: &RecordKey, tail: u64) -> Result<Option<StoredRecord>> {
    let Ok(at) = value.records.binary_search_by_key(&tail, |r| r.tail) else {
        return Ok(None);
    };
    Ok(Some(codec::record_from_value(
        *key,
        value.records[at].value(block)?,
    )))
}

/// The amounts of a block's records, with their keys, in key order.
pub fn amounts(block: &[u8], value: &[u8]) -> Result<Vec<CachedRecord>> {
    let bytes = codec::decompress(value).map_err(|e| corrupt(block, e))?;
    let decoded = BlockAmounts::decode(bytes.as_ref()).map_err(|e| corrupt(block, e))?;
    Ok(decoded
        .records
        .into_iter()
        .map(|r| CachedRecord {
            key: record_key_bytes(block, r.tail),
            nanos: r.value.unwrap_or_default().nanos(),
        })
        .collect())
}

/// A block being changed by a write: its records in key order.
pub struct Edit {
    pub records: Vec<BlockRecord>,
}

impl Edit {
    pub fn new(value: Option<BlockValue>) -> Edit {
        Edit {
            records: value.map(|v| v.records).unwrap_or_default(),
        }
    }

    /// Puts (`Some`) or removes (`None`) the record `key`.
    pub fn set(&mut self, key: &RecordKey, value: Option<RecordValue>) {
        let tail = tail(key);
        let value = value.map(|v| Bytes::from(v.encode_to_vec()));
        match (self.records.binary_search_by_key(&tail, |r| r.tail), value) {
            (Ok(at), Some(value)) => self.records[at].value = value,
            (Ok(at), None) => {
                self.records.remove(at);
            }
            (Err(at), Some(value)) => self.records.insert(at, BlockRecord { tail, value }),
            (Err(_), None) => {}
        }
    }

    /// The block's new value; `None` when no record is left in it.
    pub fn finish(self) -> Option<Vec<u8>> {
        (!self.records.is_empty()).then(|| {
            codec::compress_fast(
                &BlockValue {
                    records: self.records,
                }
                .encode_to_vec(),
            )
        })
    }
}

/// Records moved per batch when a store of format 3 or before is
/// upgraded: each batch moves whole series, so a restart in the middle
/// finds every series either in records or in its block.
const MIGRATE_BATCH: usize = 20_000;

/// Moves records stored one to a key (formats 1 to 3, namespace `r`) and
/// format 4's blocks (namespace `b`) into series blocks as this format keys
/// them; returns how many records and blocks. Each batch writes the blocks
/// of whole series and removes what they replace atomically, so an upgrade
/// cut short goes on where it stopped at the next start.
pub fn migrate(db: &sled::Db) -> Result<u64> {
    let mut moved = 0u64;
    loop {
        let n = migrate_batch(db, MIGRATE_BATCH)?;
        if n == 0 {
            break;
        }
        moved += n as u64;
        tracing::info!(records = moved, "records moved into series blocks");
    }
    let mut rekeyed = 0u64;
    loop {
        let n = rekey_batch(db, MIGRATE_BATCH)?;
        if n == 0 {
            db.flush()?;
            return Ok(moved + rekeyed);
        }
        rekeyed += n as u64;
        tracing::info!(blocks = rekeyed, "format 4 series blocks moved to their new keys");
    }
}

/// Moves up to `size` of format 4's blocks to their keys in this format
/// (the value is the same), in one atomic batch; returns how many.
pub(super) fn rekey_batch(db: &sled::Db, size: usize) -> Result<usize> {
    let mut batch = sled::Batch::default();
    let mut moved = 0usize;
    for entry in db.scan_prefix([NS_SERIES_V4]).take(size) {
        let (old, value) = entry?;
        if old.len() != SERIES_PREFIX_LEN {
            return Err(corrupt(&old, "a format 4 block key of the wrong length"));
        }
        // Format 4's key was the series prefix with its namespace byte.
        batch.insert(&block_key_of(&old), value);
        batch.remove(old);
        moved += 1;
    }
    if moved > 0 {
        db.apply_batch(batch)?;
    }
    Ok(moved)
}

/// Moves the first whole series holding at least `size` records (or all
/// that are left) into their blocks, in one atomic batch; returns how many
/// records it moved.
pub(super) fn migrate_batch(db: &sled::Db, size: usize) -> Result<usize> {
    let mut batch = sled::Batch::default();
    let mut moved = 0usize;
    let mut current: Option<(SeriesPrefix, Edit)> = None;
    for entry in db.scan_prefix([keys::NS_RECORD]) {
        let (k, v) = entry?;
        let block = block_key_of(&k);
        if current.as_ref().is_none_or(|(b, _)| *b != block) {
            if let Some((b, edit)) = current.take() {
                flush_edit(&mut batch, &b, edit);
                if moved >= size {
                    break;
                }
            }
            current = Some((block, Edit::new(None)));
        }
        let key = keys::decode_record_key(&k)?;
        let value =
            RecordValue::decode(v.as_ref()).map_err(|e| Error::Corrupt(format!("record {key}: {e}")))?;
        if let Some((_, edit)) = current.as_mut() {
            edit.set(&key, Some(value));
        }
        batch.remove(k);
        moved += 1;
    }
    if let Some((b, edit)) = current {
        flush_edit(&mut batch, &b, edit);
    }
    if moved > 0 {
        db.apply_batch(batch)?;
    }
    Ok(moved)
}

fn flush_edit(batch: &mut sled::Batch, block: &SeriesPrefix, edit: Edit) {
    if let Some(bytes) = edit.finish() {
        batch.insert(block, bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Commodity, CountryCode, CurrencyCode, Flow, Period};

    fn key(period: &str, flow: Flow) -> RecordKey {
        RecordKey {
            reporter: CountryCode::parse("CHN").unwrap(),
            partner: CountryCode::parse("KAZ").unwrap(),
            commodity: Commodity::TOTAL,
            period: Period::parse(period).unwrap(),
            flow,
            currency: CurrencyCode::parse("USD").unwrap(),
        }
    }

    fn value(units: i64) -> RecordValue {
        RecordValue {
            units,
            source: "customs".into(),
            ..Default::default()
        }
    }

    #[test]
    fn records_keep_key_order_and_come_back_whole() {
        let keys = [
            key("2025", Flow::Import),
            key("2024", Flow::Export),
            key("2025-03", Flow::Export),
            key("2025", Flow::Export),
        ];
        let mut edit = Edit::new(None);
        for (i, k) in keys.iter().enumerate() {
            edit.set(k, Some(value(i as i64 + 1)));
        }
        edit.set(&key("2023", Flow::Export), None);
        let block = block_key(&keys[0]);
        let bytes = edit.finish().unwrap();
        let read: Vec<StoredRecord> = records(&block, decode(&block, &bytes).unwrap())
            .collect::<Result<_>>()
            .unwrap();
        let mut sorted = keys.to_vec();
        sorted.sort_by_key(keys::record_key);
        assert_eq!(read.iter().map(|r| r.record.key).collect::<Vec<_>>(), sorted);
        assert_eq!(read[0].record.source(), "customs");
        let amounts = amounts(&block, &bytes).unwrap();
        assert_eq!(
            amounts.iter().map(|r| r.key).collect::<Vec<_>>(),
            sorted.iter().map(keys::record_key).collect::<Vec<_>>()
        );
        assert_eq!(amounts[0].nanos, 2_000_000_000);

        let mut edit = Edit::new(Some(decode(&block, &bytes).unwrap()));
        for k in &keys {
            edit.set(k, None);
        }
        assert!(edit.finish().is_none());
    }
}
