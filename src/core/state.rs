//! What applying a command may read: the store's state before it.

use std::collections::BTreeMap;

use prost_types::Timestamp;

use super::Watches;
use crate::domain::{
    GroupName, Outcome, PartnerGroup, RankBy, RecordKey, RequestId, SeriesSpec, StoredRecord, WatchId,
};
use crate::error::Result;
use crate::milestones::Series;

/// A request id as stored with the outcome of its write.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredRequest {
    pub fingerprint: [u8; 16],
    pub written_at: Timestamp,
    /// The command log position of the write.
    pub position: u64,
    /// The outcome, read only when the fingerprint is the command's.
    pub outcome: Option<Outcome>,
}

/// The state a command is applied to. Reads only: [`super::apply`] never
/// changes it.
pub trait State {
    /// The last event sequence assigned.
    fn head(&self) -> u64;
    /// A stored record.
    fn record(&self, key: &RecordKey) -> Result<Option<StoredRecord>>;
    /// A stored record's value in nanos (its trade-volume siblings are asked
    /// for right after the record itself).
    fn value(&self, key: &RecordKey) -> Result<Option<i128>>;
    fn group(&self, name: &GroupName) -> Result<Option<(PartnerGroup, Timestamp)>>;
    fn groups(&self) -> Result<BTreeMap<GroupName, PartnerGroup>>;
    /// Every watch with the state of its series.
    fn watches(&self) -> &Watches;
    fn watch_created_at(&self, id: &WatchId) -> Result<Option<Timestamp>>;
    /// Every period of a series, summed from the stored records; with
    /// `split`, also per partner (or reporter), for a rank rule.
    fn series_values(&self, spec: &SeriesSpec, split: Option<RankBy>) -> Result<Series>;
    /// Where the search for the next free `w<n>` starts.
    fn next_watch_number(&self) -> Result<u64>;
    /// The write made under a request id, if it is remembered.
    fn request(&self, id: &RequestId) -> Result<Option<StoredRequest>>;
}
