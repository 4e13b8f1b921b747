//! Events: what the write core decides happened, in the one global
//! sequence. The store encodes them privately; the api and the stream show
//! them.

use prost_types::Timestamp;

use super::{CurrencyCode, RecordKey, StoredRecord, WatchId};

/// One event of the global sequence.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Gap-free and strictly increasing over all events, from 1.
    pub sequence: u64,
    /// The time of the command that caused it.
    pub time: Timestamp,
    pub kind: EventKind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum EventKind {
    RecordStored(RecordStored),
    ThresholdCrossed(ThresholdCrossed),
    RecordHigh(RecordHigh),
}

impl EventKind {
    /// The watch a milestone belongs to; `None` for a record event.
    pub fn watch_id(&self) -> Option<&WatchId> {
        match self {
            EventKind::RecordStored(_) => None,
            EventKind::ThresholdCrossed(m) => Some(&m.watch.id),
            EventKind::RecordHigh(m) => Some(&m.watch.id),
        }
    }
}

/// A record was created (no `before`), revised, or deleted (no `after`).
#[derive(Debug, Clone, PartialEq)]
pub struct RecordStored {
    pub key: RecordKey,
    pub before: Option<StoredRecord>,
    pub after: Option<StoredRecord>,
}

/// Which watch a milestone is of, and its series' currency.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchRef {
    pub id: WatchId,
    pub name: String,
    pub currency: CurrencyCode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Up,
    Down,
}

/// Why a series changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// Only new records.
    NewData,
    /// Revised or deleted records.
    Revision,
    /// A partner group the watch uses was redefined.
    GroupChange,
}

/// A watched series crossed a threshold in one period. Amounts are nanos of
/// the watch's currency; `None` means the period had (or has) no records.
#[derive(Debug, Clone, PartialEq)]
pub struct ThresholdCrossed {
    pub watch: WatchRef,
    /// The period label: `2025`, `2025-Q1`, `2025-03`.
    pub period: String,
    pub threshold: i128,
    pub direction: Direction,
    pub before: Option<i128>,
    pub after: Option<i128>,
    /// The records whose write caused it (none for a backfill or group edit).
    pub caused_by: Vec<RecordKey>,
    pub headline: String,
}

/// A period became the highest of a watched series.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordHigh {
    pub watch: WatchRef,
    pub period: String,
    pub before: Option<i128>,
    pub after: i128,
    /// The period that held the record before (or the highest other), and
    /// its value now.
    pub previous: Option<(String, Option<i128>)>,
    pub cause: Cause,
    pub caused_by: Vec<RecordKey>,
    pub headline: String,
}
