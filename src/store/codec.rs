//! How values are stored: protobuf messages private to the store, so the
//! on-disk format evolves by the usual protobuf rules, independently of the
//! API.

use prost::Message;
use prost_types::Timestamp;

use super::keys;
use crate::domain::{CountryCode, GroupName, PartnerGroup, RecordKey, StoredRecord, TradeRecord};
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

#[derive(Clone, PartialEq, Message)]
pub struct GroupValue {
    #[prost(string, repeated, tag = "1")]
    pub members: Vec<String>,
    #[prost(string, tag = "2")]
    pub description: String,
    #[prost(message, optional, tag = "3")]
    pub updated_at: Option<Timestamp>,
}

/// One entry of the event log.
#[derive(Clone, PartialEq, Message)]
pub struct EventValue {
    #[prost(message, optional, tag = "1")]
    pub time: Option<Timestamp>,
    #[prost(oneof = "EventKind", tags = "2")]
    pub kind: Option<EventKind>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum EventKind {
    #[prost(message, tag = "2")]
    RecordStored(RecordStoredValue),
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

pub fn decode_record(key_bytes: &[u8], value_bytes: &[u8]) -> Result<StoredRecord> {
    let key = keys::decode_record_key(key_bytes)?;
    let value = RecordValue::decode(value_bytes).map_err(|e| Error::Corrupt(format!("record {key}: {e}")))?;
    Ok(record_from_value(key, value))
}

pub fn record_from_value(key: RecordKey, value: RecordValue) -> StoredRecord {
    let amount = i128::from(value.units) * 1_000_000_000 + i128::from(value.nanos);
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
