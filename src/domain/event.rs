//! Events: what the write core decides happened, in the one global
//! sequence. The store encodes them privately; the api and the stream show
//! them.

use prost_types::Timestamp;

use super::{CountryCode, CurrencyCode, RankBy, RecordKey, StoredRecord, WatchId};

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
    RankChanged(RankChanged),
    GrowthCrossed(GrowthCrossed),
    YearToDate(YearToDate),
}

impl EventKind {
    /// The watch a milestone belongs to; `None` for a record event.
    pub fn watch_id(&self) -> Option<&WatchId> {
        match self {
            EventKind::RecordStored(_) => None,
            EventKind::ThresholdCrossed(m) => Some(&m.watch.id),
            EventKind::RecordHigh(m) => Some(&m.watch.id),
            EventKind::RankChanged(m) => Some(&m.watch.id),
            EventKind::GrowthCrossed(m) => Some(&m.watch.id),
            EventKind::YearToDate(m) => Some(&m.watch.id),
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

/// A period's top members changed: the top first formed (`before` empty),
/// a member entered or left it, or the first place changed hands; or it no
/// longer stands, fewer members having figures (`after` empty).
#[derive(Debug, Clone, PartialEq)]
pub struct RankChanged {
    pub watch: WatchRef,
    pub period: String,
    pub by: RankBy,
    /// How many places the rule ranks.
    pub top: u32,
    /// The top before and after, first place first, with each member's
    /// value (nanos).
    pub before: Vec<(CountryCode, i128)>,
    pub after: Vec<(CountryCode, i128)>,
    /// When first place changed hands: the former leader's value now
    /// (`None` when it has no records left).
    pub former_leader_now: Option<i128>,
    pub cause: Cause,
    pub caused_by: Vec<RecordKey>,
    pub headline: String,
}

/// Year-on-year growth of a period crossed a threshold. Growth is `value /
/// previous - 1`, defined when both periods have records and the earlier
/// value is positive.
#[derive(Debug, Clone, PartialEq)]
pub struct GrowthCrossed {
    pub watch: WatchRef,
    pub period: String,
    /// The period it is compared with, a year earlier.
    pub previous_period: String,
    /// Basis points: `1000` is +10 %.
    pub threshold_bp: i32,
    pub direction: Direction,
    /// The period's value and the year-earlier value, before and after the
    /// write; `None` when growth was (is) not defined.
    pub before: Option<(i128, i128)>,
    pub after: Option<(i128, i128)>,
    pub cause: Cause,
    pub caused_by: Vec<RecordKey>,
    pub headline: String,
}

/// Which year-to-date comparison a [`YearToDate`] milestone is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum YtdKind {
    /// The year so far against the whole previous year.
    PassedPreviousYear,
    /// The year so far against the same months of every earlier year.
    RecordHigh,
}

/// A year-to-date comparison turned (up) or stopped holding (down).
#[derive(Debug, Clone, PartialEq)]
pub struct YearToDate {
    pub watch: WatchRef,
    pub kind: YtdKind,
    pub direction: Direction,
    /// The year, and the last period of it with records (`2025-11`).
    pub year: u16,
    pub through: String,
    /// The months summed, as people say them: `January–November`.
    pub months: String,
    /// The year's total so far; `None` when it has no records left.
    pub value: Option<i128>,
    /// What it is compared with: the previous year and its whole total, or
    /// the earlier year highest over the same months and that sum.
    pub compared: Option<(u16, i128)>,
    pub cause: Cause,
    pub caused_by: Vec<RecordKey>,
    pub headline: String,
}

/// A `RecordStored` event for CHN's 2025 turnover with KAZ, for tests.
#[cfg(test)]
pub fn record_stored_for_tests(sequence: u64) -> Event {
    let key = RecordKey::parse(
        &super::RawKey {
            reporter: "CHN",
            partner: "KAZ",
            flow: 3,
            period: "2025",
            commodity: "TOTAL",
            currency: "USD",
        },
        "currency",
    )
    .expect("a valid key");
    Event {
        sequence,
        time: Timestamp::default(),
        kind: EventKind::RecordStored(RecordStored {
            key,
            before: None,
            after: None,
        }),
    }
}
