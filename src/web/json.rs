//! Events as JSON for browsers and `curl`: the gRPC `Event` in protobuf's
//! JSON mapping (field names as in the proto, `record_high.caused_by`), so
//! that nothing is lost or renamed on the way, plus the fields every
//! milestone has lifted to the top — `kind`, `watch_id`, `headline`,
//! `caused_by` — so that the page shows a kind of milestone it has never
//! heard of. The mapping is read from the API's descriptors: a kind added
//! to the proto needs no code here.

use std::sync::LazyLock;

use prost::Message as _;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor, SerializeOptions};
use serde_json::{Map, Value};

use crate::pb;

/// The descriptor of `tradewatch.v1.Event`, from the descriptors compiled
/// into the binary.
static EVENT: LazyLock<Result<MessageDescriptor, String>> = LazyLock::new(|| {
    let pool = DescriptorPool::decode(pb::FILE_DESCRIPTOR_SET).map_err(|e| e.to_string())?;
    pool.get_message_by_name("tradewatch.v1.Event")
        .ok_or_else(|| "tradewatch.v1.Event is not in the descriptors".to_owned())
});

/// The milestone fields lifted to the top of an event's JSON.
const LIFTED: [&str; 3] = ["watch_id", "headline", "caused_by"];

/// One event as a JSON object.
pub fn event(event: &pb::Event) -> Result<Map<String, Value>, String> {
    let descriptor = EVENT.as_ref().map_err(Clone::clone)?;
    let message = DynamicMessage::decode(descriptor.clone(), event.encode_to_vec().as_slice())
        .map_err(|e| e.to_string())?;
    let options = SerializeOptions::new().use_proto_field_name(true);
    let Value::Object(mut object) = message
        .serialize_with_options(serde_json::value::Serializer, &options)
        .map_err(|e| e.to_string())?
    else {
        return Err("an event did not serialize as an object".to_owned());
    };
    let kind = descriptor
        .oneofs()
        .find(|oneof| oneof.name() == "kind")
        .and_then(|oneof| oneof.fields().find(|field| message.has_field(field)));
    if let Some(kind) = kind {
        let name = kind.name().to_owned();
        let lifted: Vec<(&str, Value)> = object
            .get(&name)
            .and_then(Value::as_object)
            .map(|body| {
                LIFTED
                    .iter()
                    .filter_map(|field| Some((*field, body.get(*field)?.clone())))
                    .collect()
            })
            .unwrap_or_default();
        object.insert("kind".to_owned(), Value::String(name));
        for (field, value) in lifted {
            object.insert(field.to_owned(), value);
        }
    }
    Ok(object)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(partner: &str) -> pb::RecordKey {
        pb::RecordKey {
            reporter: "CHN".into(),
            partner: partner.into(),
            flow: pb::Flow::Turnover.into(),
            period: "2025".into(),
            commodity: "TOTAL".into(),
            currency: "USD".into(),
        }
    }

    #[test]
    fn a_milestone_keeps_every_field_and_lifts_the_generic_ones() {
        let usd = |units| pb::Money {
            currency_code: "USD".into(),
            units,
            nanos: 0,
        };
        let event = pb::Event {
            sequence: 18,
            time: Some(prost_types::Timestamp {
                seconds: 1_764_756_000,
                nanos: 0,
            }),
            kind: Some(pb::event::Kind::ThresholdCrossed(pb::ThresholdCrossed {
                watch_id: "w1".into(),
                watch_name: "China–Central Asia trade".into(),
                period: "2025".into(),
                threshold: Some(usd(100_000_000_000)),
                direction: pb::Direction::Up.into(),
                value_before: Some(usd(91_000_000_000)),
                value_after: Some(usd(102_000_000_000)),
                caused_by: vec![key("TKM")],
                headline: "reached 102.0 billion USD".into(),
            })),
        };
        let json = Value::Object(super::event(&event).unwrap());
        assert_eq!(json["sequence"], "18");
        assert_eq!(json["time"], "2025-12-03T10:00:00Z");
        assert_eq!(json["kind"], "threshold_crossed");
        assert_eq!(json["watch_id"], "w1");
        assert_eq!(json["headline"], "reached 102.0 billion USD");
        assert_eq!(json["caused_by"][0]["partner"], "TKM");
        assert_eq!(json["caused_by"][0]["flow"], "FLOW_TURNOVER");
        let body = &json["threshold_crossed"];
        assert_eq!(body["direction"], "DIRECTION_UP");
        assert_eq!(body["value_after"]["units"], "102000000000");
        assert_eq!(body["watch_name"], "China–Central Asia trade");
    }

    #[test]
    fn a_record_event_has_no_milestone_fields() {
        let event = pb::Event {
            sequence: 1,
            time: None,
            kind: Some(pb::event::Kind::RecordStored(pb::RecordStored {
                key: Some(key("KAZ")),
                change: pb::RecordChange::Created.into(),
                old_value: None,
                new_value: None,
                revision: 1,
            })),
        };
        let json = super::event(&event).unwrap();
        assert_eq!(json["kind"], "record_stored");
        assert_eq!(json["record_stored"]["key"]["partner"], "KAZ");
        assert!(LIFTED.iter().all(|field| !json.contains_key(*field)));
    }
}
