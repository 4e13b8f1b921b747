//! Trade records through the gRPC API of a real server.

mod common;

use common::{
    TestServer, content, delete, delete_group, get_record, ingest, key_of, put, put_group, record,
    seed_records,
};
use tonic::Code;
use tonic_types::StatusExt;
use tradewatch::pb::{self, WriteOutcome};

#[tokio::test]
async fn seed_records_come_back_exactly() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let seed = seed_records();
    assert_eq!(seed.len(), 16);

    let response = client.put_records(put(seed.clone())).await.unwrap().into_inner();
    assert_eq!(response.results.len(), 16);
    assert!(
        response
            .results
            .iter()
            .all(|r| r.outcome() == WriteOutcome::Created && r.revision == 1)
    );
    assert_eq!((response.first_sequence, response.last_sequence), (1, 16));

    for r in &seed {
        let got = get_record(&mut client, key_of(r)).await.unwrap();
        assert_eq!(content(&got), r.clone());
        assert_eq!(got.revision, 1);
        assert!(got.updated_at.is_some());
    }

    let listed = client
        .list_records(pb::ListRecordsRequest {
            selector: Some(pb::RecordSelector {
                reporters: vec!["CHN".into()],
                partners: vec!["CENTRAL_ASIA".into()],
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.records.len(), 15);
    assert!(listed.next_page_token.is_empty());
    let mut expected: Vec<_> = seed.iter().filter(|r| r.reporter == "CHN").cloned().collect();
    expected.sort_by(|a, b| (&a.partner, &a.period).cmp(&(&b.partner, &b.period)));
    let listed: Vec<_> = listed.records.iter().map(content).collect();
    assert_eq!(listed, expected);
}

#[tokio::test]
async fn revisions_count_changes_and_ignore_identical_writes() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    client.put_records(put(seed_records())).await.unwrap();

    let mut kaz = record("CHN", "KAZ", "2025", 48_700_000_000, "GACC");
    kaz.value.as_mut().unwrap().nanos = 500_000_000;
    let revised = client
        .put_records(put(vec![kaz.clone()]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(revised.results[0].outcome(), WriteOutcome::Revised);
    assert_eq!(revised.results[0].revision, 2);
    assert_eq!((revised.first_sequence, revised.last_sequence), (17, 17));

    let again = client
        .put_records(put(vec![kaz.clone()]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.results[0].outcome(), WriteOutcome::Unchanged);
    assert_eq!(again.results[0].revision, 2);
    assert_eq!(
        (again.first_sequence, again.last_sequence),
        (0, 0),
        "an unchanged write emits nothing"
    );

    let got = get_record(&mut client, key_of(&kaz)).await.unwrap();
    assert_eq!(got.revision, 2);
    assert_eq!(
        got.value.unwrap(),
        pb::Money {
            currency_code: "USD".into(),
            units: 48_700_000_000,
            nanos: 500_000_000
        }
    );

    // Re-putting the whole file: only the revised record changes back.
    let whole = client
        .put_records(put(seed_records()))
        .await
        .unwrap()
        .into_inner();
    let revised: Vec<_> = whole
        .results
        .iter()
        .filter(|r| r.outcome() == WriteOutcome::Revised)
        .collect();
    assert_eq!(revised.len(), 1);
    assert_eq!(revised[0].revision, 3);
    assert_eq!(
        whole
            .results
            .iter()
            .filter(|r| r.outcome() == WriteOutcome::Unchanged)
            .count(),
        15
    );
}

#[tokio::test]
async fn a_bad_record_rejects_the_whole_batch_naming_each_bad_field() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let good = record("CHN", "KAZ", "2025", 48_600_000_000, "GACC");
    let mut bad = record("XYZ", "KAZ", "2025-13", -5, "GACC");
    bad.commodity = "27A".into();
    bad.value.as_mut().unwrap().currency_code = "US".into();

    let status = client
        .put_records(put(vec![good.clone(), bad]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let violations = status
        .get_details_bad_request()
        .expect("BadRequest details")
        .field_violations;
    let fields: Vec<_> = violations.iter().map(|v| v.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "records[1].reporter",
            "records[1].period",
            "records[1].commodity",
            "records[1].value.currency_code",
            "records[1].value.units"
        ]
    );
    assert!(violations.iter().all(|v| !v.description.is_empty()));
    assert!(
        violations[0].description.contains("XYZ"),
        "{}",
        violations[0].description
    );
    assert!(status.message().contains("records[1].period"));

    let missing = get_record(&mut client, key_of(&good)).await.unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
}

#[tokio::test]
async fn other_caller_mistakes_get_precise_statuses() {
    let server = TestServer::start().await;
    let mut client = server.client().await;

    let empty = client.put_records(put(vec![])).await.unwrap_err();
    assert_eq!(empty.code(), Code::InvalidArgument);

    let r = record("CHN", "KAZ", "2025", 1, "GACC");
    let dup = client
        .put_records(put(vec![r.clone(), r.clone()]))
        .await
        .unwrap_err();
    assert_eq!(dup.code(), Code::InvalidArgument);
    assert_eq!(
        dup.get_details_bad_request().unwrap().field_violations[0].field,
        "records[1]"
    );

    let mut no_value = r.clone();
    no_value.value = None;
    let status = client.put_records(put(vec![no_value])).await.unwrap_err();
    let fields: Vec<_> = status
        .get_details_bad_request()
        .unwrap()
        .field_violations
        .into_iter()
        .map(|v| v.field)
        .collect();
    assert_eq!(fields, ["records[0].value"]);

    let mut bad_nanos = r.clone();
    bad_nanos.value.as_mut().unwrap().nanos = -1;
    let status = client.put_records(put(vec![bad_nanos])).await.unwrap_err();
    assert_eq!(
        status.get_details_bad_request().unwrap().field_violations[0].field,
        "records[0].value.nanos"
    );

    let mut no_flow = r.clone();
    no_flow.flow = 0;
    let status = client.put_records(put(vec![no_flow])).await.unwrap_err();
    assert_eq!(
        status.get_details_bad_request().unwrap().field_violations[0].field,
        "records[0].flow"
    );

    let mut bad_key = key_of(&r);
    bad_key.period = "2025-1".into();
    let status = get_record(&mut client, bad_key).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        status.get_details_bad_request().unwrap().field_violations[0].field,
        "key.period"
    );

    let status = client
        .list_records(pb::ListRecordsRequest {
            page_token: "not-a-token".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("not a page token this server issued"),
        "{}",
        status.message()
    );

    let status = client
        .list_records(pb::ListRecordsRequest {
            selector: Some(pb::RecordSelector {
                partners: vec!["NOWHERE_LAND".into()],
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        status.get_details_bad_request().unwrap().field_violations[0].field,
        "selector.partners[0]"
    );

    let status = client
        .list_records(pb::ListRecordsRequest {
            selector: Some(pb::RecordSelector {
                period_from: "2025".into(),
                period_to: "2023".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        status.get_details_bad_request().unwrap().field_violations[0].field,
        "selector.period_from"
    );

    // A page size above the maximum is lowered to it (AIP-158), not refused
    // (tests/limits.rs checks the size of the page).
    client
        .list_records(pb::ListRecordsRequest {
            page_size: 5000,
            ..Default::default()
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn pages_walk_every_matching_record_once_in_key_order() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let partners = ["KAZ", "KGZ", "TJK", "TKM", "UZB", "RUS", "DEU"];
    let mut records = Vec::new();
    for reporter in ["CHN", "USA", "IND"] {
        for partner in partners {
            for year in 2015..2025 {
                records.push(record(
                    reporter,
                    partner,
                    &year.to_string(),
                    year as i64 * 1000,
                    "test",
                ));
            }
        }
    }
    client.put_records(put(records.clone())).await.unwrap();

    for (selector, expected) in [
        (pb::RecordSelector::default(), records.len()),
        (
            pb::RecordSelector {
                reporters: vec!["CHN".into(), "IND".into()],
                ..Default::default()
            },
            140,
        ),
        (
            pb::RecordSelector {
                reporters: vec!["USA".into()],
                partners: vec!["CENTRAL_ASIA".into(), "DEU".into()],
                period_from: "2020".into(),
                period_to: "2022".into(),
                ..Default::default()
            },
            18,
        ),
        (
            pb::RecordSelector {
                partners: vec!["RUS".into()],
                ..Default::default()
            },
            30,
        ),
    ] {
        let mut seen = Vec::new();
        let mut token = String::new();
        loop {
            let page = client
                .list_records(pb::ListRecordsRequest {
                    selector: Some(selector.clone()),
                    page_size: 7,
                    page_token: token,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            assert!(page.records.len() <= 7);
            // A token is only given when records follow: no empty last page.
            assert!(!page.records.is_empty(), "{selector:?}");
            seen.extend(page.records);
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        assert_eq!(seen.len(), expected, "{selector:?}");
        let keys: Vec<_> = seen
            .iter()
            .map(|r| (r.reporter.clone(), r.partner.clone(), r.period.clone()))
            .collect();
        let mut sorted = keys.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(keys, sorted, "in key order, each once");
    }
}

#[tokio::test]
async fn deletes_remove_a_record_and_say_what_it_was() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    client.put_records(put(seed_records())).await.unwrap();
    let tkm = record("CHN", "TKM", "2025", 10_000_000_000, "GACC");

    let deleted = client
        .delete_record(delete(key_of(&tkm)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(content(&deleted.record.unwrap()), tkm);
    assert_eq!(deleted.sequence, 17);
    assert_eq!(
        get_record(&mut client, key_of(&tkm)).await.unwrap_err().code(),
        Code::NotFound
    );
    assert_eq!(
        client
            .delete_record(delete(key_of(&tkm)))
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );

    // Written again, it starts over at revision 1.
    let again = client
        .put_records(put(vec![tkm.clone()]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.results[0].outcome(), WriteOutcome::Created);
    assert_eq!(again.results[0].revision, 1);
}

#[tokio::test]
async fn groups_are_built_in_editable_and_used_by_selectors() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    client.put_records(put(seed_records())).await.unwrap();

    let groups = client
        .list_groups(pb::ListGroupsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .groups;
    assert_eq!(groups.len(), 1);
    assert_eq!(groups[0].name, "CENTRAL_ASIA");
    assert_eq!(groups[0].members, ["KAZ", "KGZ", "TJK", "TKM", "UZB"]);

    let new_group = pb::PartnerGroup {
        name: "CASPIAN_STATES".into(),
        members: vec!["TKM".into(), "KAZ".into()],
        description: "Central Asian states on the Caspian".into(),
        updated_at: None,
    };
    let stored = client
        .put_group(put_group(new_group))
        .await
        .unwrap()
        .into_inner()
        .group
        .unwrap();
    assert_eq!(stored.members, ["KAZ", "TKM"]);
    let got = client
        .get_group(pb::GetGroupRequest {
            name: "CASPIAN_STATES".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .group
        .unwrap();
    assert_eq!(got, stored);

    let list = |partners: &str| pb::ListRecordsRequest {
        selector: Some(pb::RecordSelector {
            partners: vec![partners.into()],
            ..Default::default()
        }),
        ..Default::default()
    };
    assert_eq!(
        client
            .list_records(list("CASPIAN_STATES"))
            .await
            .unwrap()
            .into_inner()
            .records
            .len(),
        6
    );

    // Redefining a group changes the next answer.
    let narrowed = pb::PartnerGroup {
        name: "CASPIAN_STATES".into(),
        members: vec!["TKM".into()],
        ..Default::default()
    };
    client.put_group(put_group(narrowed)).await.unwrap();
    assert_eq!(
        client
            .list_records(list("CASPIAN_STATES"))
            .await
            .unwrap()
            .into_inner()
            .records
            .len(),
        3
    );

    let deleted = client.delete_group(delete_group("CASPIAN_STATES")).await.unwrap();
    assert_eq!(deleted.into_inner().group.unwrap().members, ["TKM"]);
    let gone = client
        .get_group(pb::GetGroupRequest {
            name: "CASPIAN_STATES".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
    assert_eq!(
        client
            .list_records(list("CASPIAN_STATES"))
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );

    for (group, field) in [
        (
            pb::PartnerGroup {
                name: "ABC".into(),
                members: vec!["KAZ".into()],
                ..Default::default()
            },
            "group.name",
        ),
        (
            pb::PartnerGroup {
                name: "EMPTY_GROUP".into(),
                ..Default::default()
            },
            "group.members",
        ),
        (
            pb::PartnerGroup {
                name: "BAD_MEMBER".into(),
                members: vec!["KAZ".into(), "XYZ".into()],
                ..Default::default()
            },
            "group.members[1]",
        ),
        (
            pb::PartnerGroup {
                name: "WORLDLY".into(),
                members: vec!["WLD".into()],
                ..Default::default()
            },
            "group.members[0]",
        ),
    ] {
        let status = client.put_group(put_group(group)).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(
            status.get_details_bad_request().unwrap().field_violations[0].field,
            field
        );
    }
}

#[tokio::test]
async fn everything_survives_a_restart() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    client.put_records(put(seed_records())).await.unwrap();
    client
        .put_records(put(vec![record("CHN", "KAZ", "2025", 48_700_000_000, "GACC")]))
        .await
        .unwrap();
    client
        .delete_record(delete(key_of(&record("TJK", "CHN", "2024", 0, ""))))
        .await
        .unwrap();
    let group = pb::PartnerGroup {
        name: "STANS_NORTH".into(),
        members: vec!["KAZ".into()],
        ..Default::default()
    };
    client.put_group(put_group(group)).await.unwrap();
    let before = client
        .list_records(pb::ListRecordsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .records;
    drop(client);

    let server = server.restart().await;
    let mut client = server.client().await;
    let after = client
        .list_records(pb::ListRecordsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .records;
    assert_eq!(after, before);
    assert_eq!(after.len(), 15);
    let kaz = get_record(&mut client, key_of(&record("CHN", "KAZ", "2025", 0, "")))
        .await
        .unwrap();
    assert_eq!((kaz.revision, kaz.value.unwrap().units), (2, 48_700_000_000));
    assert_eq!(
        client
            .list_groups(pb::ListGroupsRequest::default())
            .await
            .unwrap()
            .into_inner()
            .groups
            .len(),
        2
    );

    // Sequences continue where they stopped: 16 created, 1 revised, 1 deleted.
    let next = client
        .put_records(put(vec![record("CHN", "KAZ", "2022", 1, "x")]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next.first_sequence, 19);
}

#[tokio::test]
async fn concurrent_writers_are_all_acknowledged() {
    let server = TestServer::start().await;
    let channel = server.channel().await;
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let mut client = pb::trade_service_client::TradeServiceClient::new(channel.clone());
            tokio::spawn(async move {
                let mut sequences = Vec::new();
                for i in 0..25 {
                    let year = 1900 + w * 25 + i;
                    let r = record("CHN", "KAZ", &year.to_string(), 1, "load");
                    let response = client.put_records(put(vec![r])).await.unwrap().into_inner();
                    sequences.push(response.first_sequence);
                }
                sequences
            })
        })
        .collect();
    let mut all = Vec::new();
    for w in writers {
        all.extend(w.await.unwrap());
    }
    all.sort();
    assert_eq!(
        all,
        (1..=200).collect::<Vec<u64>>(),
        "one gap-free sequence across writers"
    );
}

#[tokio::test]
async fn a_store_of_another_format_is_refused_not_misread() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = TestServer::start_in(dir.path()).await;
    server.stop().await;
    {
        let db = sled::open(dir.path()).unwrap();
        db.insert(b"\x00format_version", &99u32.to_be_bytes()).unwrap();
        db.flush().unwrap();
    }
    let config = tradewatch::Config::new(dir.path());
    let error = tradewatch::Application::build("127.0.0.1:0".parse().unwrap(), config)
        .await
        .err()
        .unwrap();
    let message = error.to_string();
    assert!(
        message.contains("format 99") && message.contains("format 5"),
        "{message}"
    );

    let foreign = tempfile::tempdir().unwrap();
    sled::open(foreign.path())
        .unwrap()
        .insert(b"hello", b"world")
        .unwrap();
    let config = tradewatch::Config::new(foreign.path());
    let error = tradewatch::Application::build("127.0.0.1:0".parse().unwrap(), config)
        .await
        .err()
        .unwrap();
    assert!(error.to_string().contains("not a tradewatch store"), "{error}");
}

#[tokio::test]
async fn ingest_applies_messages_in_order_and_counts_rejections() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let mut messages = Vec::new();
    for i in 1..=30 {
        // Every message revises the same record; one in ten is bad.
        let r = record("CHN", "KAZ", "2025", i, "stream");
        let records = if i % 10 == 0 {
            vec![record("XYZ", "KAZ", "2025", i, "bad")]
        } else {
            vec![r]
        };
        messages.push(ingest(records));
    }
    let summary = client
        .ingest_records(tokio_stream::iter(messages))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            summary.messages,
            summary.created,
            summary.revised,
            summary.rejected
        ),
        (30, 1, 26, 3)
    );
    assert_eq!(
        summary
            .rejections
            .iter()
            .map(|r| r.message_index)
            .collect::<Vec<_>>(),
        [9, 19, 29]
    );
    assert_eq!((summary.first_sequence, summary.last_sequence), (1, 27));
    let got = get_record(&mut client, key_of(&record("CHN", "KAZ", "2025", 0, "")))
        .await
        .unwrap();
    assert_eq!(
        (got.value.unwrap().units, got.revision),
        (29, 27),
        "the last good message wins"
    );
}

/// Large batches read their records before they reach the writer; writers
/// racing on the same keys must still see each other's writes: every write
/// a revision of the one before, the event log a chain per key, the
/// aggregate the sum of the last values.
#[tokio::test]
async fn concurrent_large_batches_on_the_same_keys_stay_consistent() {
    const KEYS: usize = 120;
    const ROUNDS: i64 = 15;
    let server = TestServer::start().await;
    let partners = ["KAZ", "KGZ", "TJK", "TKM", "UZB", "RUS"];
    let batch = move |writer: i64, round: i64| -> Vec<pb::TradeRecord> {
        (0..KEYS)
            .map(|i| {
                // Keys i and i + 1 (i even) are the turnover and exports of
                // one partner and year.
                let pair = i / 2;
                let year = 2000 + (pair / partners.len()) as i64;
                let mut r = record(
                    "CHN",
                    partners[pair % partners.len()],
                    &year.to_string(),
                    1_000_000 * (round + 1) + 1000 * writer + i as i64,
                    "race",
                );
                // Exports and turnover of the same keys: trade volume
                // depends on the siblings the race writes.
                if i % 2 == 1 {
                    r.flow = pb::Flow::Export.into();
                }
                r
            })
            .collect()
    };
    let mut tasks = Vec::new();
    for writer in 0..3 {
        let mut client = server.client().await;
        tasks.push(tokio::spawn(async move {
            for round in 0..ROUNDS {
                let response = client
                    .put_records(put(batch(writer, round)))
                    .await
                    .unwrap()
                    .into_inner();
                assert_eq!(response.results.len(), KEYS);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }

    let mut events =
        tradewatch::pb::milestone_service_client::MilestoneServiceClient::new(server.channel().await);
    let mut last: std::collections::HashMap<String, (i64, Option<pb::Money>)> = Default::default();
    let mut next = 1;
    loop {
        let page = events
            .list_events(pb::ListEventsRequest {
                from_sequence: next,
                limit: 1000,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        if page.events.is_empty() {
            break;
        }
        for event in &page.events {
            assert_eq!(event.sequence, next, "gap-free");
            next += 1;
            let Some(pb::event::Kind::RecordStored(stored)) = &event.kind else {
                continue;
            };
            let key = format!("{:?}", stored.key);
            let (revision, value) = last.get(&key).cloned().unwrap_or((0, None));
            assert_eq!(
                stored.revision,
                revision + 1,
                "{key}: each write revises the one before"
            );
            assert_eq!(
                stored.old_value, value,
                "{key}: the old value is the last one written"
            );
            last.insert(key, (stored.revision, stored.new_value.clone()));
        }
    }
    assert_eq!(last.len(), KEYS);
    assert!(last.values().all(|(revision, _)| *revision == 3 * ROUNDS));

    // Trade volume per key: turnover where published, else exports.
    let mut client = server.client().await;
    let answer = client
        .aggregate(pb::AggregateRequest {
            selector: Some(pb::RecordSelector {
                reporters: vec!["CHN".into()],
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let listed = client
        .list_records(pb::ListRecordsRequest {
            selector: Some(pb::RecordSelector {
                reporters: vec!["CHN".into()],
                ..Default::default()
            }),
            page_size: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.records.len(), KEYS);
    let expected: i64 = listed
        .records
        .iter()
        .filter(|r| r.flow() == pb::Flow::Turnover)
        .map(|r| r.value.as_ref().unwrap().units)
        .sum();
    assert_eq!(answer.grand_total.unwrap().units, expected);
}
