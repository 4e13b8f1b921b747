//! How values are stored: protobuf messages private to the store, so the
//! on-disk format evolves by the usual protobuf rules, independently of the
//! API.

use std::borrow::Cow;
use std::cell::RefCell;

use prost::Message;
use prost_types::Timestamp;

use super::keys;
use crate::domain::{
    Cause, CountryCode, CurrencyCode, Direction, Event, GroupName, GrowthCrossed, PartnerGroup, RankBy,
    RankChanged, RecordHigh, RecordKey, RecordStored, StoredRecord, ThresholdCrossed, TradeRecord, WatchId,
    WatchRef, YearToDate, YtdKind,
};
use crate::error::{Error, Result};

#[derive(Clone, PartialEq, Message)]
pub struct RecordValue {
    #[prost(sint64, tag = "1")]
    pub units: i64,
    #[prost(sint32, tag = "2")]
    pub nanos: i32,
    #[prost(double, optional, tag = "3")]
    pub net_weight_kg: Option<f64>,
    #[prost(string, tag = "4")]
    pub source: String,
    #[prost(message, optional, tag = "5")]
    pub released_at: Option<Timestamp>,
    #[prost(int64, tag = "6")]
    pub revision: i64,
    #[prost(message, optional, tag = "7")]
    pub updated_at: Option<Timestamp>,
}

/// The leading fields of a `RecordValue`: what aggregates read, decoded
/// without touching the rest.
#[derive(Clone, PartialEq, Message)]
pub struct RecordAmount {
    #[prost(sint64, tag = "1")]
    pub units: i64,
    #[prost(sint32, tag = "2")]
    pub nanos: i32,
}

impl RecordAmount {
    pub fn nanos(&self) -> i128 {
        crate::domain::Money::join(self.units, self.nanos)
    }
}

#[derive(Clone, PartialEq, Message)]
pub struct GroupValue {
    #[prost(string, repeated, tag = "1")]
    pub members: Vec<String>,
    #[prost(string, tag = "2")]
    pub description: String,
    #[prost(message, optional, tag = "3")]
    pub updated_at: Option<Timestamp>,
}

/// Consecutive events of one write, stored under one key
/// ([`super::keys::event_block_key`]): one log entry per event would make a
/// bulk load pay a tree insert for every record twice.
#[derive(Clone, PartialEq, Message)]
pub struct EventBlock {
    #[prost(message, repeated, tag = "1")]
    pub events: Vec<EventValue>,
}

/// One event of the log.
#[derive(Clone, PartialEq, Message)]
pub struct EventValue {
    #[prost(message, optional, tag = "1")]
    pub time: Option<Timestamp>,
    #[prost(oneof = "EventKind", tags = "2, 3, 4, 5, 6, 7")]
    pub kind: Option<EventKind>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum EventKind {
    #[prost(message, tag = "2")]
    RecordStored(RecordStoredValue),
    #[prost(message, tag = "3")]
    ThresholdCrossed(MilestoneValue),
    #[prost(message, tag = "4")]
    RecordHigh(MilestoneValue),
    #[prost(message, tag = "5")]
    RankChanged(MilestoneValue),
    #[prost(message, tag = "6")]
    GrowthCrossed(MilestoneValue),
    #[prost(message, tag = "7")]
    YearToDate(MilestoneValue),
}

/// A milestone of a watch. Amounts are i128 nanos, big-endian; empty bytes
/// mean "no value".
#[derive(Clone, PartialEq, Message)]
pub struct MilestoneValue {
    #[prost(string, tag = "1")]
    pub watch_id: String,
    #[prost(string, tag = "2")]
    pub watch_name: String,
    /// The period label: `2025`, `2025-Q1`, `2025-03`.
    #[prost(string, tag = "3")]
    pub period: String,
    #[prost(string, tag = "4")]
    pub currency: String,
    #[prost(bytes = "vec", tag = "5")]
    pub before: Vec<u8>,
    #[prost(bytes = "vec", tag = "6")]
    pub after: Vec<u8>,
    /// ThresholdCrossed: the threshold and whether it was crossed upwards.
    #[prost(bytes = "vec", tag = "7")]
    pub threshold: Vec<u8>,
    #[prost(bool, tag = "8")]
    pub up: bool,
    /// RecordHigh: the previous holder, its value now, and the cause
    /// (1 new data, 2 revision, 3 group change). GrowthCrossed: the period
    /// compared with.
    #[prost(string, tag = "9")]
    pub previous_period: String,
    #[prost(bytes = "vec", tag = "10")]
    pub previous_value: Vec<u8>,
    #[prost(int32, tag = "11")]
    pub cause: i32,
    /// Keys (store encoding) of the records whose write caused it.
    #[prost(bytes = "vec", repeated, tag = "12")]
    pub caused_by: Vec<Vec<u8>>,
    #[prost(string, tag = "13")]
    pub headline: String,
    /// RankChanged: the rule (1 by partner, 2 by reporter; its top) and the
    /// top before and after.
    #[prost(int32, tag = "14")]
    pub rank_by: i32,
    #[prost(uint32, tag = "15")]
    pub rank_top: u32,
    #[prost(message, repeated, tag = "16")]
    pub ranked_before: Vec<RankedValue>,
    #[prost(message, repeated, tag = "17")]
    pub ranked_after: Vec<RankedValue>,
    /// GrowthCrossed: the threshold, and the year-earlier values beside
    /// `before` and `after` (all empty when growth was not defined).
    #[prost(sint32, tag = "18")]
    pub threshold_bp: i32,
    #[prost(bytes = "vec", tag = "19")]
    pub previous_before: Vec<u8>,
    #[prost(bytes = "vec", tag = "20")]
    pub previous_after: Vec<u8>,
    /// YearToDate (`period`: the last period so far, `after`: the total so
    /// far, `up`: the direction): which comparison (1 previous year, 2
    /// record high), the year, the months, and what it is compared with.
    #[prost(int32, tag = "21")]
    pub ytd_kind: i32,
    #[prost(uint32, tag = "22")]
    pub year: u32,
    #[prost(string, tag = "23")]
    pub months: String,
    #[prost(uint32, tag = "24")]
    pub compared_year: u32,
    #[prost(bytes = "vec", tag = "25")]
    pub compared_value: Vec<u8>,
    /// RankChanged: the former leader's value now.
    #[prost(bytes = "vec", tag = "26")]
    pub former_leader_now: Vec<u8>,
}

/// A member of a ranking: its country code and value.
#[derive(Clone, PartialEq, Message)]
pub struct RankedValue {
    #[prost(string, tag = "1")]
    pub member: String,
    #[prost(bytes = "vec", tag = "2")]
    pub value: Vec<u8>,
}

/// A watch definition: the parties as named, and the rest of its series.
#[derive(Clone, PartialEq, Message)]
pub struct WatchValue {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, repeated, tag = "2")]
    pub reporters: Vec<String>,
    #[prost(string, repeated, tag = "3")]
    pub partners: Vec<String>,
    /// Flow codes; empty for trade volume.
    #[prost(int32, repeated, tag = "4")]
    pub flows: Vec<i32>,
    /// Exact commodity codes, when `commodity_level` is 0.
    #[prost(string, repeated, tag = "5")]
    pub commodities: Vec<String>,
    /// 0 exact list; else the level's digit count (2, 4, 6; 1 for TOTAL).
    #[prost(int32, tag = "6")]
    pub commodity_level: i32,
    #[prost(string, tag = "7")]
    pub commodity_prefix: String,
    #[prost(string, tag = "8")]
    pub currency: String,
    /// Bounds of the series, of its frequency (`1900`, `1900-01`).
    #[prost(string, tag = "9")]
    pub period_from: String,
    #[prost(string, tag = "10")]
    pub period_to: String,
    /// 1 year, 2 quarter, 3 month.
    #[prost(int32, tag = "11")]
    pub granularity: i32,
    #[prost(bytes = "vec", repeated, tag = "12")]
    pub thresholds: Vec<Vec<u8>>,
    #[prost(bool, tag = "13")]
    pub record_high: bool,
    #[prost(message, optional, tag = "14")]
    pub created_at: Option<Timestamp>,
    /// Rank rule: 0 none, 1 by partner, 2 by reporter; and its top.
    #[prost(int32, tag = "15")]
    pub rank_by: i32,
    #[prost(uint32, tag = "16")]
    pub rank_top: u32,
    /// Growth thresholds in basis points.
    #[prost(sint32, repeated, tag = "17")]
    pub growth_thresholds_bp: Vec<i32>,
    #[prost(bool, tag = "18")]
    pub year_to_date: bool,
}

/// The state of a watched series.
#[derive(Clone, PartialEq, Message)]
pub struct SeriesValue {
    #[prost(message, repeated, tag = "1")]
    pub periods: Vec<PeriodTally>,
    /// The record holder, if any: year and sub-period.
    #[prost(message, optional, tag = "2")]
    pub holder: Option<BucketValue>,
    /// For a rank rule: each period's value per member.
    #[prost(message, repeated, tag = "3")]
    pub members: Vec<MemberTally>,
}

#[derive(Clone, PartialEq, Message)]
pub struct MemberTally {
    #[prost(message, optional, tag = "1")]
    pub bucket: Option<BucketValue>,
    #[prost(string, tag = "2")]
    pub member: String,
    #[prost(bytes = "vec", tag = "3")]
    pub nanos: Vec<u8>,
    #[prost(int64, tag = "4")]
    pub count: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct PeriodTally {
    #[prost(message, optional, tag = "1")]
    pub bucket: Option<BucketValue>,
    #[prost(bytes = "vec", tag = "2")]
    pub nanos: Vec<u8>,
    #[prost(int64, tag = "3")]
    pub count: i64,
}

#[derive(Clone, Copy, PartialEq, Message)]
pub struct BucketValue {
    #[prost(uint32, tag = "1")]
    pub year: u32,
    #[prost(uint32, tag = "2")]
    pub sub: u32,
}

pub fn encode_amount(nanos: Option<i128>) -> Vec<u8> {
    nanos.map(|n| n.to_be_bytes().to_vec()).unwrap_or_default()
}

pub fn decode_amount(bytes: &[u8]) -> Option<i128> {
    <[u8; 16]>::try_from(bytes).ok().map(i128::from_be_bytes)
}

/// A record was created, revised or deleted.
#[derive(Clone, PartialEq, Message)]
pub struct RecordStoredValue {
    /// The record key in the store's key encoding.
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    /// The record before the write; absent when it was created.
    #[prost(message, optional, tag = "2")]
    pub before: Option<RecordValue>,
    /// The record after the write; absent when it was deleted.
    #[prost(message, optional, tag = "3")]
    pub after: Option<RecordValue>,
}

pub fn encode_record(stored: &StoredRecord) -> RecordValue {
    let r = &stored.record;
    let (units, nanos) = r.value().to_parts().unwrap_or_default();
    RecordValue {
        units,
        nanos,
        net_weight_kg: r.net_weight_kg(),
        source: r.source().to_owned(),
        released_at: r.released_at(),
        revision: stored.revision,
        updated_at: Some(stored.updated_at),
    }
}

pub fn record_from_value(key: RecordKey, value: RecordValue) -> StoredRecord {
    let amount = crate::domain::Money::join(value.units, value.nanos);
    StoredRecord {
        record: TradeRecord::from_stored(key, amount, value.net_weight_kg, value.source, value.released_at),
        revision: value.revision,
        updated_at: value.updated_at.unwrap_or_default(),
    }
}

pub fn encode_group(group: &PartnerGroup, updated_at: Timestamp) -> GroupValue {
    GroupValue {
        members: group.members.iter().map(|c| c.as_str().to_owned()).collect(),
        description: group.description.clone(),
        updated_at: Some(updated_at),
    }
}

pub fn decode_group(key_bytes: &[u8], value_bytes: &[u8]) -> Result<(PartnerGroup, Timestamp)> {
    let name: GroupName = keys::decode_group_key(key_bytes)?;
    let value = GroupValue::decode(value_bytes).map_err(|e| Error::Corrupt(format!("group {name}: {e}")))?;
    group_from_value(name, value)
}

pub fn group_from_value(name: GroupName, value: GroupValue) -> Result<(PartnerGroup, Timestamp)> {
    let members = value
        .members
        .iter()
        .map(|m| CountryCode::parse_country(m).map_err(|e| Error::Corrupt(format!("group {name}: {e}"))))
        .collect::<Result<_>>()?;
    let group = PartnerGroup {
        name,
        members,
        description: value.description,
    };
    Ok((group, value.updated_at.unwrap_or_default()))
}

/// How hard event blocks and series blocks are compressed: zstd's fastest
/// level, which already stores a block of record events in about a ninth
/// of its size (BENCHMARKS.md, "Size on disk").
const COMPRESSION_LEVEL: i32 = 1;

/// The first bytes of a zstd frame. An uncompressed block (format 2) starts
/// with the tag of its first field, 0x0a, so the two cannot be confused.
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// Most bytes a stored value decompresses to (a block of 256 events is a
/// few tens of KiB); a frame saying more is read as damaged.
const MAX_DECOMPRESSED: u64 = 64 << 20;

thread_local! {
    // zstd's contexts, made once per thread: making one per value costs more
    // than compressing a block of a few KiB.
    static COMPRESSOR: RefCell<Option<zstd::bulk::Compressor<'static>>> =
        RefCell::new(zstd::bulk::Compressor::new(COMPRESSION_LEVEL).ok());
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        RefCell::new(zstd::bulk::Decompressor::new().ok());
}

/// An encoded message as stored, compressed whole.
pub fn compress(bytes: Vec<u8>) -> Vec<u8> {
    // Compressing bytes in memory does not fail; should it ever, the value
    // is stored as it is, which reads back the same.
    COMPRESSOR
        .with(|c| c.borrow_mut().as_mut().and_then(|c| c.compress(&bytes).ok()))
        .unwrap_or(bytes)
}

/// The first byte of a value compressed with LZ4 ([`compress_fast`]); a
/// protobuf message never starts with it (field 9, wire type 4).
const LZ4_MARK: u8 = 0x4c;

/// An encoded message as stored, compressed whole with LZ4: for values
/// rewritten on every write (series blocks), where zstd's entropy coding
/// cost the writer more than a quarter of its time for a fifth less room
/// (BENCHMARKS.md, "Import into a running server").
pub fn compress_fast(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + 4 + lz4_flex::block::get_maximum_output_size(bytes.len()));
    out.push(LZ4_MARK);
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    let start = out.len();
    out.resize(out.capacity(), 0);
    // The output has room for the worst case, so this cannot fail; should
    // it ever, the value is stored as it is, which reads back the same.
    match lz4_flex::block::compress_into(bytes, &mut out[start..]) {
        Ok(n) => {
            out.truncate(start + n);
            out
        }
        Err(_) => bytes.to_vec(),
    }
}

/// A stored message's encoding: decompressed if it was stored compressed
/// (zstd or LZ4), else as it is.
pub fn decompress(bytes: &[u8]) -> std::io::Result<Cow<'_, [u8]>> {
    let damaged = |why: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, why.to_owned());
    if let Some(rest) = bytes.strip_prefix(&[LZ4_MARK]) {
        let size = rest
            .get(..4)
            .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]) as u64)
            .filter(|&size| size <= MAX_DECOMPRESSED)
            .ok_or_else(|| damaged("an LZ4 value without a valid size"))?;
        return match lz4_flex::block::decompress(&rest[4..], size as usize) {
            Ok(out) if out.len() as u64 == size => Ok(Cow::Owned(out)),
            Ok(out) => Err(damaged(&format!(
                "an LZ4 value of {} bytes where its header says {size}",
                out.len()
            ))),
            Err(e) => Err(damaged(&format!("an LZ4 value that does not decompress: {e}"))),
        };
    }
    if !bytes.starts_with(&ZSTD_MAGIC) {
        return Ok(Cow::Borrowed(bytes));
    }
    let size = match zstd::zstd_safe::get_frame_content_size(bytes) {
        Ok(Some(size)) if size <= MAX_DECOMPRESSED => size as usize,
        _ => return Err(damaged("a compressed value without a valid size")),
    };
    DECOMPRESSOR.with(|d| match d.borrow_mut().as_mut() {
        Some(d) => d.decompress(bytes, size).map(Cow::Owned),
        None => zstd::bulk::decompress(bytes, size).map(Cow::Owned),
    })
}

/// A block of events as stored (format 3): the `EventBlock` message,
/// compressed. Events are written once and read in order, so a whole
/// block compressed together costs little and saves most of the room they
/// took.
pub fn encode_event_block(block: &EventBlock) -> Vec<u8> {
    compress(block.encode_to_vec())
}

/// The events of one log entry: a block, compressed (format 3) or not
/// (format 2), or (format 1) a single event.
pub fn decode_event_entry(key_bytes: &[u8], value_bytes: &[u8]) -> Result<Vec<Event>> {
    let (first, last) = keys::decode_event_block_key(key_bytes)?;
    let corrupt = |e: prost::DecodeError| Error::Corrupt(format!("events {first}..={last}: {e}"));
    let events = if key_bytes.len() == 9 {
        vec![EventValue::decode(value_bytes).map_err(corrupt)?]
    } else {
        let bytes =
            decompress(value_bytes).map_err(|e| Error::Corrupt(format!("events {first}..={last}: {e}")))?;
        EventBlock::decode(bytes.as_ref()).map_err(corrupt)?.events
    };
    if events.len() as u64 != last - first + 1 {
        return Err(Error::Corrupt(format!(
            "events {first}..={last}: the entry holds {} events",
            events.len()
        )));
    }
    (first..)
        .zip(events)
        .map(|(sequence, value)| decode_event(sequence, value))
        .collect()
}

pub fn encode_event(event: &Event) -> EventValue {
    let milestone =
        |watch: &WatchRef, period: &str, caused_by: &[RecordKey], headline: &str| MilestoneValue {
            watch_id: watch.id.to_string(),
            watch_name: watch.name.clone(),
            period: period.to_owned(),
            currency: watch.currency.to_string(),
            caused_by: caused_by.iter().map(|k| keys::record_key(k).to_vec()).collect(),
            headline: headline.to_owned(),
            ..Default::default()
        };
    let kind = match &event.kind {
        crate::domain::EventKind::RecordStored(r) => EventKind::RecordStored(RecordStoredValue {
            key: keys::record_key(&r.key).to_vec(),
            before: r.before.as_ref().map(encode_record),
            after: r.after.as_ref().map(encode_record),
        }),
        crate::domain::EventKind::ThresholdCrossed(t) => EventKind::ThresholdCrossed(MilestoneValue {
            before: encode_amount(t.before),
            after: encode_amount(t.after),
            threshold: encode_amount(Some(t.threshold)),
            up: t.direction == Direction::Up,
            ..milestone(&t.watch, &t.period, &t.caused_by, &t.headline)
        }),
        crate::domain::EventKind::RecordHigh(h) => EventKind::RecordHigh(MilestoneValue {
            before: encode_amount(h.before),
            after: encode_amount(Some(h.after)),
            previous_period: h.previous.as_ref().map(|(p, _)| p.clone()).unwrap_or_default(),
            previous_value: h
                .previous
                .as_ref()
                .map(|(_, v)| encode_amount(*v))
                .unwrap_or_default(),
            cause: cause_code(h.cause),
            ..milestone(&h.watch, &h.period, &h.caused_by, &h.headline)
        }),
        crate::domain::EventKind::RankChanged(r) => EventKind::RankChanged(MilestoneValue {
            cause: cause_code(r.cause),
            rank_by: rank_by_code(Some(r.by)),
            rank_top: r.top,
            ranked_before: r.before.iter().map(ranked_value).collect(),
            ranked_after: r.after.iter().map(ranked_value).collect(),
            former_leader_now: encode_amount(r.former_leader_now),
            ..milestone(&r.watch, &r.period, &r.caused_by, &r.headline)
        }),
        crate::domain::EventKind::GrowthCrossed(g) => EventKind::GrowthCrossed(MilestoneValue {
            cause: cause_code(g.cause),
            threshold_bp: g.threshold_bp,
            previous_period: g.previous_period.clone(),
            up: g.direction == Direction::Up,
            before: encode_amount(g.before.map(|(v, _)| v)),
            previous_before: encode_amount(g.before.map(|(_, p)| p)),
            after: encode_amount(g.after.map(|(v, _)| v)),
            previous_after: encode_amount(g.after.map(|(_, p)| p)),
            ..milestone(&g.watch, &g.period, &g.caused_by, &g.headline)
        }),
        crate::domain::EventKind::YearToDate(y) => EventKind::YearToDate(MilestoneValue {
            cause: cause_code(y.cause),
            up: y.direction == Direction::Up,
            ytd_kind: match y.kind {
                YtdKind::PassedPreviousYear => 1,
                YtdKind::RecordHigh => 2,
            },
            year: u32::from(y.year),
            months: y.months.clone(),
            after: encode_amount(y.value),
            compared_year: y.compared.map_or(0, |(year, _)| u32::from(year)),
            compared_value: encode_amount(y.compared.map(|(_, v)| v)),
            ..milestone(&y.watch, &y.through, &y.caused_by, &y.headline)
        }),
    };
    EventValue {
        time: Some(event.time),
        kind: Some(kind),
    }
}

fn cause_code(cause: Cause) -> i32 {
    match cause {
        Cause::NewData => 1,
        Cause::Revision => 2,
        Cause::GroupChange => 3,
    }
}

fn cause_of(code: i32) -> Option<Cause> {
    match code {
        1 => Some(Cause::NewData),
        2 => Some(Cause::Revision),
        3 => Some(Cause::GroupChange),
        _ => None,
    }
}

/// 0 none, 1 partner, 2 reporter.
pub fn rank_by_code(by: Option<RankBy>) -> i32 {
    match by {
        None => 0,
        Some(RankBy::Partner) => 1,
        Some(RankBy::Reporter) => 2,
    }
}

pub fn rank_by_of(code: i32) -> Option<RankBy> {
    match code {
        1 => Some(RankBy::Partner),
        2 => Some(RankBy::Reporter),
        _ => None,
    }
}

fn ranked_value((member, value): &(CountryCode, i128)) -> RankedValue {
    RankedValue {
        member: member.to_string(),
        value: encode_amount(Some(*value)),
    }
}

fn decode_event(sequence: u64, value: EventValue) -> Result<Event> {
    let corrupt = |what: &str| Error::Corrupt(format!("event {sequence}: {what}"));
    let watch = |m: &MilestoneValue| -> Result<WatchRef> {
        Ok(WatchRef {
            id: WatchId::parse(&m.watch_id).map_err(|_| corrupt("watch id"))?,
            name: m.watch_name.clone(),
            currency: CurrencyCode::parse(&m.currency).map_err(|_| corrupt("currency"))?,
        })
    };
    let caused_by = |m: &MilestoneValue| -> Result<Vec<RecordKey>> {
        m.caused_by.iter().map(|k| keys::decode_record_key(k)).collect()
    };
    let kind = match value.kind.ok_or_else(|| corrupt("no kind"))? {
        EventKind::RecordStored(r) => {
            let key = keys::decode_record_key(&r.key)?;
            crate::domain::EventKind::RecordStored(RecordStored {
                key,
                before: r.before.map(|v| record_from_value(key, v)),
                after: r.after.map(|v| record_from_value(key, v)),
            })
        }
        EventKind::ThresholdCrossed(m) => crate::domain::EventKind::ThresholdCrossed(ThresholdCrossed {
            watch: watch(&m)?,
            period: m.period.clone(),
            threshold: decode_amount(&m.threshold).ok_or_else(|| corrupt("threshold"))?,
            direction: if m.up { Direction::Up } else { Direction::Down },
            before: decode_amount(&m.before),
            after: decode_amount(&m.after),
            caused_by: caused_by(&m)?,
            headline: m.headline,
        }),
        EventKind::RecordHigh(m) => crate::domain::EventKind::RecordHigh(RecordHigh {
            watch: watch(&m)?,
            period: m.period.clone(),
            before: decode_amount(&m.before),
            after: decode_amount(&m.after).ok_or_else(|| corrupt("record value"))?,
            previous: (!m.previous_period.is_empty())
                .then(|| (m.previous_period.clone(), decode_amount(&m.previous_value))),
            cause: cause_of(m.cause).ok_or_else(|| corrupt("cause"))?,
            caused_by: caused_by(&m)?,
            headline: m.headline,
        }),
        EventKind::RankChanged(m) => {
            let ranked = |list: &[RankedValue]| -> Result<Vec<(CountryCode, i128)>> {
                list.iter()
                    .map(|r| {
                        let member = CountryCode::parse(&r.member).map_err(|_| corrupt("ranked member"))?;
                        Ok((
                            member,
                            decode_amount(&r.value).ok_or_else(|| corrupt("ranked value"))?,
                        ))
                    })
                    .collect()
            };
            crate::domain::EventKind::RankChanged(RankChanged {
                watch: watch(&m)?,
                period: m.period.clone(),
                by: rank_by_of(m.rank_by).ok_or_else(|| corrupt("rank by"))?,
                top: m.rank_top,
                before: ranked(&m.ranked_before)?,
                after: ranked(&m.ranked_after)?,
                former_leader_now: decode_amount(&m.former_leader_now),
                cause: cause_of(m.cause).ok_or_else(|| corrupt("cause"))?,
                caused_by: caused_by(&m)?,
                headline: m.headline,
            })
        }
        EventKind::GrowthCrossed(m) => {
            let basis = |value: &[u8], previous: &[u8]| decode_amount(value).zip(decode_amount(previous));
            crate::domain::EventKind::GrowthCrossed(GrowthCrossed {
                watch: watch(&m)?,
                period: m.period.clone(),
                previous_period: m.previous_period.clone(),
                threshold_bp: m.threshold_bp,
                direction: if m.up { Direction::Up } else { Direction::Down },
                before: basis(&m.before, &m.previous_before),
                after: basis(&m.after, &m.previous_after),
                cause: cause_of(m.cause).ok_or_else(|| corrupt("cause"))?,
                caused_by: caused_by(&m)?,
                headline: m.headline,
            })
        }
        EventKind::YearToDate(m) => crate::domain::EventKind::YearToDate(YearToDate {
            watch: watch(&m)?,
            kind: match m.ytd_kind {
                1 => YtdKind::PassedPreviousYear,
                2 => YtdKind::RecordHigh,
                _ => return Err(corrupt("year-to-date kind")),
            },
            direction: if m.up { Direction::Up } else { Direction::Down },
            year: u16::try_from(m.year).map_err(|_| corrupt("year"))?,
            through: m.period.clone(),
            months: m.months.clone(),
            value: decode_amount(&m.after),
            compared: u16::try_from(m.compared_year)
                .ok()
                .filter(|y| *y > 0)
                .zip(decode_amount(&m.compared_value)),
            cause: cause_of(m.cause).ok_or_else(|| corrupt("cause"))?,
            caused_by: caused_by(&m)?,
            headline: m.headline,
        }),
    };
    Ok(Event {
        sequence,
        time: value.time.unwrap_or_default(),
        kind,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_come_back_from_either_compression_or_none() {
        let value = b"\x0a\x05synthetic records, synthetic records, synthetic records".repeat(20);
        for stored in [compress(value.clone()), compress_fast(&value), value.clone()] {
            assert_eq!(decompress(&stored).unwrap().as_ref(), value.as_slice());
        }
        assert!(compress_fast(&value).len() < value.len() / 4);
        assert_eq!(compress_fast(&value)[0], LZ4_MARK);
    }

    #[test]
    fn a_damaged_lz4_value_is_an_error_not_a_panic() {
        let value = b"\x0a\x05synthetic records".repeat(50);
        let stored = compress_fast(&value);
        for cut in [1, 3, 5, stored.len() / 2, stored.len() - 1] {
            assert!(decompress(&stored[..cut]).is_err(), "cut at {cut}");
        }
        let mut huge = stored.clone();
        huge[1..5].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decompress(&huge).is_err());
    }
}
