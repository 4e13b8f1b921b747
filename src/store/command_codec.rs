//! Commands as bytes: how a command travels in a cluster's log (one stream
//! message per command), in the store's own encodings of records, groups
//! and watches. The encoding carries a format number; a node refuses a
//! command of a newer format than it reads rather than guess at it.

use std::collections::BTreeSet;

use prost::Message;
use prost_types::Timestamp;

use super::codec::{self, GroupValue, RecordValue, WatchValue};
use super::{keys, watches};
use crate::domain::{
    Action, Command, CountryCode, GroupName, NewWatch, RequestId, RequestTag, StoredRecord, WatchId,
};
use crate::error::{Error, Result};

/// The newest command encoding this build reads and writes. Format 2 adds
/// the rank, growth and year-to-date rules of a watch; a command is written
/// in the oldest format that holds it, so that nodes of a rolling upgrade
/// keep following the log until one of them sends a command only the new
/// build understands.
pub const LOG_FORMAT: u32 = 2;

#[derive(Clone, PartialEq, Message)]
struct CommandValue {
    #[prost(uint32, tag = "1")]
    format: u32,
    /// Empty: the command has no request id.
    #[prost(string, tag = "2")]
    request_id: String,
    #[prost(bytes = "vec", tag = "3")]
    fingerprint: Vec<u8>,
    #[prost(message, optional, tag = "4")]
    time: Option<Timestamp>,
    #[prost(oneof = "ActionValue", tags = "5, 6, 7, 8, 9, 10")]
    action: Option<ActionValue>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
enum ActionValue {
    #[prost(message, tag = "5")]
    PutRecords(RecordBatch),
    /// The record key, in the store's key encoding.
    #[prost(bytes, tag = "6")]
    DeleteRecord(Vec<u8>),
    #[prost(message, tag = "7")]
    PutGroup(GroupEntry),
    #[prost(string, tag = "8")]
    DeleteGroup(String),
    #[prost(message, tag = "9")]
    CreateWatch(Box<NewWatchValue>),
    #[prost(string, tag = "10")]
    DeleteWatch(String),
}

#[derive(Clone, PartialEq, Message)]
struct RecordBatch {
    #[prost(message, repeated, tag = "1")]
    records: Vec<RecordEntry>,
}

#[derive(Clone, PartialEq, Message)]
struct RecordEntry {
    #[prost(bytes = "vec", tag = "1")]
    key: Vec<u8>,
    /// Revision and update time unset: the write decides them.
    #[prost(message, optional, tag = "2")]
    value: Option<RecordValue>,
}

#[derive(Clone, PartialEq, Message)]
struct GroupEntry {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(message, optional, tag = "2")]
    value: Option<GroupValue>,
}

#[derive(Clone, PartialEq, Message)]
struct NewWatchValue {
    /// Empty: the next `w<n>`.
    #[prost(string, tag = "1")]
    id: String,
    /// Name, parties as named, the rest of the series, rules.
    #[prost(message, optional, tag = "2")]
    watch: Option<WatchValue>,
    #[prost(bool, tag = "3")]
    backfill: bool,
    #[prost(uint64, tag = "4")]
    max_watches: u64,
    /// The parties as the accepting node expanded them (applying expands
    /// them again, against the groups as they are then).
    #[prost(message, optional, tag = "5")]
    expanded_reporters: Option<CountrySet>,
    #[prost(message, optional, tag = "6")]
    expanded_partners: Option<CountrySet>,
}

#[derive(Clone, PartialEq, Message)]
struct CountrySet {
    #[prost(string, repeated, tag = "1")]
    codes: Vec<String>,
}

/// The oldest format that holds `command`.
fn format_of(command: &Command) -> u32 {
    match &command.action {
        Action::CreateWatch(watch) if watch.rules.uses_analyst_rules() => 2,
        _ => 1,
    }
}

pub fn encode(command: &Command) -> Vec<u8> {
    let (request_id, fingerprint) = command
        .request
        .as_ref()
        .map(|tag| (tag.id.as_str().to_owned(), tag.fingerprint.to_vec()))
        .unwrap_or_default();
    let action = match &command.action {
        Action::PutRecords(records) => ActionValue::PutRecords(RecordBatch {
            records: records
                .iter()
                .map(|record| {
                    let mut value = codec::encode_record(&StoredRecord {
                        record: record.clone(),
                        revision: 0,
                        updated_at: Timestamp::default(),
                    });
                    value.updated_at = None;
                    RecordEntry {
                        key: keys::record_key(&record.key).to_vec(),
                        value: Some(value),
                    }
                })
                .collect(),
        }),
        Action::DeleteRecord(key) => ActionValue::DeleteRecord(keys::record_key(key).to_vec()),
        Action::PutGroup(group) => {
            let mut value = codec::encode_group(group, Timestamp::default());
            value.updated_at = None;
            ActionValue::PutGroup(GroupEntry {
                name: group.name.as_str().to_owned(),
                value: Some(value),
            })
        }
        Action::DeleteGroup(name) => ActionValue::DeleteGroup(name.as_str().to_owned()),
        Action::CreateWatch(watch) => {
            let placeholder = WatchId::parse("w").expect("a valid watch id");
            let mut value = watches::encode_watch(&watch.define(placeholder), Timestamp::default());
            value.created_at = None;
            let set = |codes: &Option<BTreeSet<CountryCode>>| {
                codes.as_ref().map(|codes| CountrySet {
                    codes: codes.iter().map(|c| c.as_str().to_owned()).collect(),
                })
            };
            ActionValue::CreateWatch(Box::new(NewWatchValue {
                id: watch
                    .id
                    .as_ref()
                    .map(|id| id.as_str().to_owned())
                    .unwrap_or_default(),
                watch: Some(value),
                backfill: watch.backfill,
                max_watches: watch.max_watches as u64,
                expanded_reporters: set(&watch.spec.reporters),
                expanded_partners: set(&watch.spec.partners),
            }))
        }
        Action::DeleteWatch(id) => ActionValue::DeleteWatch(id.as_str().to_owned()),
    };
    CommandValue {
        format: format_of(command),
        request_id,
        fingerprint,
        time: Some(command.time),
        action: Some(action),
    }
    .encode_to_vec()
}

/// The command in `bytes`; an error names what is wrong with them, and a
/// command of a newer format than [`LOG_FORMAT`] is refused.
pub fn decode(bytes: &[u8]) -> Result<Command> {
    let bad = |what: String| Error::Corrupt(format!("command log entry: {what}"));
    let value = CommandValue::decode(bytes).map_err(|e| bad(e.to_string()))?;
    if value.format > LOG_FORMAT {
        return Err(Error::FailedPrecondition(format!(
            "a command of log format {} (this build reads format {LOG_FORMAT} and older): \
             upgrade this node",
            value.format
        )));
    }
    let request = match RequestId::parse(&value.request_id).map_err(|e| bad(e.0))? {
        None => None,
        Some(id) => Some(RequestTag {
            id,
            fingerprint: value
                .fingerprint
                .as_slice()
                .try_into()
                .map_err(|_| bad("fingerprint".into()))?,
        }),
    };
    let action = match value.action.ok_or_else(|| bad("no action".into()))? {
        ActionValue::PutRecords(batch) => Action::PutRecords(
            batch
                .records
                .into_iter()
                .map(|entry| {
                    let key = keys::decode_record_key(&entry.key)?;
                    let value = entry
                        .value
                        .ok_or_else(|| bad(format!("record {key} has no value")))?;
                    Ok(codec::record_from_value(key, value).record)
                })
                .collect::<Result<_>>()?,
        ),
        ActionValue::DeleteRecord(key) => Action::DeleteRecord(keys::decode_record_key(&key)?),
        ActionValue::PutGroup(entry) => {
            let name = GroupName::parse(&entry.name).map_err(|e| bad(e.0))?;
            let value = entry
                .value
                .ok_or_else(|| bad(format!("group {name} has no value")))?;
            Action::PutGroup(codec::group_from_value(name, value)?.0)
        }
        ActionValue::DeleteGroup(name) => Action::DeleteGroup(GroupName::parse(&name).map_err(|e| bad(e.0))?),
        ActionValue::CreateWatch(new) => {
            let id = (!new.id.is_empty())
                .then(|| WatchId::parse(&new.id).map_err(|e| bad(e.0)))
                .transpose()?;
            let placeholder = WatchId::parse("w").expect("a valid watch id");
            let value = new
                .watch
                .ok_or_else(|| bad("a watch without a definition".into()))?;
            let def = watches::decode_watch_as_named(placeholder, &value)?;
            let set = |codes: Option<CountrySet>| -> Result<Option<BTreeSet<CountryCode>>> {
                codes
                    .map(|set| {
                        set.codes
                            .iter()
                            .map(|c| CountryCode::parse(c).map_err(|e| bad(e.0)))
                            .collect()
                    })
                    .transpose()
            };
            let mut spec = def.spec;
            spec.reporters = set(new.expanded_reporters)?;
            spec.partners = set(new.expanded_partners)?;
            Action::CreateWatch(Box::new(NewWatch {
                id,
                name: def.name,
                reporters: def.reporters,
                partners: def.partners,
                spec,
                rules: def.rules,
                backfill: new.backfill,
                max_watches: usize::try_from(new.max_watches).unwrap_or(usize::MAX),
            }))
        }
        ActionValue::DeleteWatch(id) => Action::DeleteWatch(WatchId::parse(&id).map_err(|e| bad(e.0))?),
    };
    Ok(Command {
        request,
        time: value.time.ok_or_else(|| bad("no time".into()))?,
        action,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_of_a_newer_format_is_refused_and_damage_is_named() {
        let newer = CommandValue {
            format: LOG_FORMAT + 1,
            ..Default::default()
        }
        .encode_to_vec();
        let err = decode(&newer).unwrap_err();
        assert!(matches!(err, Error::FailedPrecondition(_)), "{err:?}");
        assert!(err.to_string().contains("upgrade this node"), "{err}");

        let err = decode(&[0xff, 0xff]).unwrap_err();
        assert!(err.to_string().contains("command log entry"), "{err}");
        let no_action = CommandValue {
            format: LOG_FORMAT,
            time: Some(Timestamp::default()),
            ..Default::default()
        }
        .encode_to_vec();
        assert!(decode(&no_action).unwrap_err().to_string().contains("no action"));
    }
}
