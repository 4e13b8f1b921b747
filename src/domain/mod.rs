//! Domain types that can only hold valid values. The api layer parses every
//! request into these once; nothing below it checks again.

mod code;
mod command;
mod commodity;
mod event;
mod group;
mod money;
mod period;
mod record;
mod request;
mod selector;
mod series;
mod watch;

#[cfg(test)]
pub use event::record_stored_for_tests;

pub use code::{CountryCode, CurrencyCode, Party};
pub use command::{
    Action, Command, GroupWritten, NewWatch, Outcome, PutOutcome, RecordDeleted, SequenceRange, WatchWritten,
};
pub use commodity::{Commodity, CommodityLevel};
pub use event::{
    Cause, Direction, Event, EventKind, GrowthCrossed, RankChanged, RecordHigh, RecordStored,
    ThresholdCrossed, WatchRef, YearToDate, YtdKind,
};
pub use group::{GroupName, PartnerGroup};
pub use money::Money;
pub use period::{Frequency, Period};
pub use record::{FieldError, Flow, RawKey, RawRecord, RecordKey, StoredRecord, TradeRecord, WriteOutcome};
pub use request::{RequestId, RequestTag};
pub use selector::{RawSelector, Selector};
pub use series::{Bucket, CommodityFilter, Granularity, Measure, SeriesSpec};
pub use watch::{RankBy, RankRule, WatchDef, WatchId, WatchRules};

/// Why a value could not be parsed: a sentence for the caller, without the
/// field name (the api layer knows where the value came from).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

impl Invalid {
    pub fn new(reason: impl Into<String>) -> Self {
        Invalid(reason.into())
    }
}
