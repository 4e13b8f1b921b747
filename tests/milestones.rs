//! Watches and the event stream through gRPC on a real server.

mod common;

use std::time::Duration;

use common::{TestServer, create, delete_group, put, put_group, record, seed_records};
use tokio_stream::StreamExt;
use tonic::Code;
use tradewatch::pb::{self, milestone_service_client::MilestoneServiceClient, subscribe_response::Message};

const BN: i64 = 1_000_000_000;

fn seed_watch() -> pb::Watch {
    pb::Watch {
        name: "China–Central Asia trade".into(),
        selector: Some(pb::RecordSelector {
            reporters: vec!["CHN".into()],
            partners: vec!["CENTRAL_ASIA".into()],
            ..Default::default()
        }),
        granularity: pb::Granularity::Year.into(),
        thresholds: vec![pb::Money {
            currency_code: "USD".into(),
            units: 100 * BN,
            nanos: 0,
        }],
        record_high: true,
        ..Default::default()
    }
}

async fn milestones(server: &TestServer) -> MilestoneServiceClient<tonic::transport::Channel> {
    MilestoneServiceClient::new(server.channel().await)
}

/// Reads events until `want` of them arrived (skipping progress and
/// caught-up marks), failing after a few seconds.
async fn next_events(stream: &mut tonic::Streaming<pb::SubscribeResponse>, want: usize) -> Vec<pb::Event> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while out.len() < want {
        let message = tokio::time::timeout_at(deadline, stream.next())
            .await
            .unwrap_or_else(|_| panic!("{want} events within 10 s; got {out:#?}"))
            .expect("stream open")
            .expect("no error");
        if let Some(Message::Event(e)) = message.message {
            out.push(e);
        }
    }
    out
}

fn milestones_only(events: &[pb::Event]) -> Vec<&pb::event::Kind> {
    events
        .iter()
        .filter_map(|e| e.kind.as_ref())
        .filter(|k| !matches!(k, pb::event::Kind::RecordStored(_)))
        .collect()
}

#[tokio::test]
async fn the_seed_story_pushes_two_record_highs_and_one_crossing() {
    let server = TestServer::start().await;
    let mut trade = server.client().await;
    let mut watches = milestones(&server).await;
    let created = watches
        .create_watch(create(seed_watch()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((created.first_sequence, created.last_sequence), (0, 0));
    let watch = created.watch.unwrap();
    assert_eq!(watch.id, "w1");
    assert_eq!(watch.series, "CHN ↔ CENTRAL_ASIA, turnover");

    let mut stream = watches
        .subscribe(pb::SubscribeRequest::default())
        .await
        .unwrap()
        .into_inner();
    let first = stream.next().await.unwrap().unwrap();
    assert!(
        matches!(first.message, Some(Message::Progress(_))),
        "the first response comes at once"
    );

    let seed = seed_records();
    for r in &seed {
        trade.put_records(put(vec![r.clone()])).await.unwrap();
    }
    let events = next_events(&mut stream, 16 + 3).await;
    let sequences: Vec<u64> = events.iter().map(|e| e.sequence).collect();
    assert_eq!(sequences, (1..=19).collect::<Vec<_>>(), "gap-free, in order");
    let found = milestones_only(&events);
    assert_eq!(found.len(), 3, "{found:#?}");
    let pb::event::Kind::RecordHigh(high_2024) = found[0] else {
        panic!("{:?}", found[0])
    };
    assert_eq!(high_2024.period, "2024");
    assert_eq!(high_2024.value_after.as_ref().unwrap().units, 90_960_000_000);
    assert_eq!(high_2024.previous_period, "2023");
    assert_eq!(high_2024.previous_value.as_ref().unwrap().units, 89_300_000_000);
    assert_eq!(high_2024.cause(), pb::Cause::NewData);
    assert_eq!(high_2024.caused_by[0].partner, "TKM");
    let pb::event::Kind::ThresholdCrossed(crossed) = found[1] else {
        panic!("{:?}", found[1])
    };
    assert_eq!(
        (crossed.period.as_str(), crossed.direction()),
        ("2025", pb::Direction::Up)
    );
    assert_eq!(crossed.value_after.as_ref().unwrap().units, 102 * BN);
    assert_eq!(
        crossed.headline,
        "China–Central Asia trade (CHN ↔ CENTRAL_ASIA, turnover) reached 102.0 billion USD in 2025, \
         crossing 100 billion USD"
    );
    let pb::event::Kind::RecordHigh(high_2025) = found[2] else {
        panic!("{:?}", found[2])
    };
    assert_eq!(
        (high_2025.period.as_str(), high_2025.previous_period.as_str()),
        ("2025", "2024")
    );
    assert_eq!(high_2025.caused_by[0].partner, "TKM");
    assert!(
        high_2025.headline.contains("record 102.0 billion USD in 2025"),
        "{}",
        high_2025.headline
    );

    // The whole file again changes nothing and emits nothing.
    let again = trade.put_records(put(seed)).await.unwrap().into_inner();
    assert_eq!((again.first_sequence, again.last_sequence), (0, 0));

    // Revising KAZ 2025 down crosses back below 100 bn, with no new record.
    let down = trade
        .put_records(put(vec![record("CHN", "KAZ", "2025", 42 * BN, "GACC")]))
        .await
        .unwrap();
    assert_eq!(down.into_inner().last_sequence, 21);
    let events = next_events(&mut stream, 2).await;
    let found = milestones_only(&events);
    let [pb::event::Kind::ThresholdCrossed(down)] = found.as_slice() else {
        panic!("{found:#?}")
    };
    assert_eq!(down.direction(), pb::Direction::Down);
    assert_eq!(down.value_after.as_ref().unwrap().units, 99_700_000_000);
    assert!(
        down.headline.contains("back below 100 billion USD"),
        "{}",
        down.headline
    );

    trade
        .put_records(put(vec![record("CHN", "KAZ", "2025", 48_600_000_000, "GACC")]))
        .await
        .unwrap();
    let events = next_events(&mut stream, 2).await;
    let found = milestones_only(&events);
    assert!(
        matches!(found.as_slice(), [pb::event::Kind::ThresholdCrossed(up)] if up.direction() == pb::Direction::Up),
        "{found:#?}"
    );
}

#[tokio::test]
async fn a_watch_over_existing_data_arms_silently_or_backfills() {
    let server = TestServer::start().await;
    let mut trade = server.client().await;
    let mut watches = milestones(&server).await;
    trade.put_records(put(seed_records())).await.unwrap();

    let silent = watches
        .create_watch(create(seed_watch()))
        .await
        .unwrap()
        .into_inner()
        .watch
        .unwrap();
    let listed = watches
        .list_events(pb::ListEventsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.events.len(), 16, "only the records' events");
    assert_eq!(listed.head_sequence, 16);

    let backfilled = watches
        .create_watch(pb::CreateWatchRequest {
            watch: Some(pb::Watch {
                id: "seed-backfill".into(),
                ..seed_watch()
            }),
            backfill: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(backfilled.watch.unwrap().id, "seed-backfill");
    assert_eq!(
        (backfilled.first_sequence, backfilled.last_sequence),
        (17, 19),
        "the backfilled events"
    );
    let listed = watches
        .list_events(pb::ListEventsRequest {
            from_sequence: 17,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let headlines: Vec<String> = listed
        .events
        .iter()
        .map(|e| match e.kind.as_ref().unwrap() {
            pb::event::Kind::ThresholdCrossed(c) => c.headline.clone(),
            pb::event::Kind::RecordHigh(h) => h.headline.clone(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(headlines.len(), 3, "{headlines:#?} {listed:?}");
    assert!(headlines.iter().any(|h| h.contains("crossing 100 billion USD")));
    assert!(
        headlines
            .iter()
            .any(|h| h.contains("record 106.3 billion USD in 2025"))
    );

    // The silent watch still fires on the next change.
    let status = watches
        .create_watch(create(pb::Watch {
            id: silent.id.clone(),
            ..seed_watch()
        }))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists);
    trade
        .put_records(put(vec![record("CHN", "KAZ", "2025", 42 * BN, "GACC")]))
        .await
        .unwrap();
    let listed = watches
        .list_events(pb::ListEventsRequest {
            from_sequence: 21,
            watch_ids: vec![silent.id.clone()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.events.len(), 1);
}

#[tokio::test]
async fn a_group_edit_re_evaluates_the_watches_that_use_it() {
    let server = TestServer::start().await;
    let mut trade = server.client().await;
    let mut watches = milestones(&server).await;
    trade.put_records(put(seed_records())).await.unwrap();
    watches.create_watch(create(seed_watch())).await.unwrap();

    let narrowed = pb::PartnerGroup {
        name: "CENTRAL_ASIA".into(),
        members: vec!["KAZ".into(), "KGZ".into()],
        ..Default::default()
    };
    trade.put_group(put_group(narrowed)).await.unwrap();
    let listed = watches
        .list_events(pb::ListEventsRequest {
            from_sequence: 17,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let found = milestones_only(&listed.events);
    let [pb::event::Kind::ThresholdCrossed(down)] = found.as_slice() else {
        panic!("{found:#?}")
    };
    assert_eq!(down.direction(), pb::Direction::Down);
    assert_eq!(down.value_after.as_ref().unwrap().units, 75_800_000_000);

    let status = trade
        .delete_group(delete_group("CENTRAL_ASIA"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
}

#[tokio::test]
async fn watches_and_events_survive_a_restart() {
    let server = TestServer::start().await;
    let mut trade = server.client().await;
    let mut watches = milestones(&server).await;
    watches.create_watch(create(seed_watch())).await.unwrap();
    for r in seed_records() {
        trade.put_records(put(vec![r])).await.unwrap();
    }
    let before = watches
        .list_events(pb::ListEventsRequest::default())
        .await
        .unwrap()
        .into_inner();
    drop((trade, watches));

    let server = server.restart().await;
    let mut trade = server.client().await;
    let mut watches = milestones(&server).await;
    let after = watches
        .list_events(pb::ListEventsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(after, before);
    assert_eq!(
        watches
            .list_watches(pb::ListWatchesRequest::default())
            .await
            .unwrap()
            .into_inner()
            .watches
            .len(),
        1
    );
    // The watch's state came back: a revision below 100 bn still crosses down.
    trade
        .put_records(put(vec![record("CHN", "KAZ", "2025", 42 * BN, "GACC")]))
        .await
        .unwrap();
    let latest = watches
        .list_events(pb::ListEventsRequest {
            from_sequence: after.next_sequence,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(milestones_only(&latest.events).len(), 1);
}

#[tokio::test]
async fn bad_watches_are_rejected_with_the_field() {
    let server = TestServer::start().await;
    let mut watches = milestones(&server).await;
    use tonic_types::StatusExt;
    for (watch, field) in [
        (
            pb::Watch {
                name: String::new(),
                ..seed_watch()
            },
            "watch.name",
        ),
        (
            pb::Watch {
                id: "Bad Id".into(),
                ..seed_watch()
            },
            "watch.id",
        ),
        (
            pb::Watch {
                thresholds: vec![],
                record_high: false,
                ..seed_watch()
            },
            "watch.thresholds",
        ),
        (
            pb::Watch {
                thresholds: vec![pb::Money {
                    currency_code: "CNY".into(),
                    units: 1,
                    nanos: 0,
                }],
                ..seed_watch()
            },
            "watch.thresholds[0].currency_code",
        ),
        (
            pb::Watch {
                thresholds: vec![pb::Money {
                    currency_code: "USD".into(),
                    units: 0,
                    nanos: 0,
                }],
                ..seed_watch()
            },
            "watch.thresholds[0].units",
        ),
        (
            pb::Watch {
                granularity: pb::Granularity::Month.into(),
                ..seed_watch()
            },
            "watch.granularity",
        ),
    ] {
        let status = watches.create_watch(create(watch)).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(
            status.get_details_bad_request().unwrap().field_violations[0].field,
            field
        );
    }
    let status = watches
        .get_watch(pb::GetWatchRequest {
            id: "nope".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
}

#[tokio::test]
async fn positions_older_than_the_retained_log_are_out_of_range() {
    use tonic_types::StatusExt;
    let dir = tempfile::tempdir().unwrap();
    let config = tradewatch::Config {
        retain_events: 10,
        ..tradewatch::Config::new(dir.path())
    };
    let server = TestServer::start_with(config).await;
    let mut trade = server.client().await;
    let mut watches = milestones(&server).await;
    for year in 2000..2030 {
        trade
            .put_records(put(vec![record("CHN", "KAZ", &year.to_string(), 1, "x")]))
            .await
            .unwrap();
    }
    // 30 events written, the newest 10 kept: 21..=30.
    let all = watches
        .list_events(pb::ListEventsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let sequences: Vec<u64> = all.events.iter().map(|e| e.sequence).collect();
    assert_eq!(sequences, (21..=30).collect::<Vec<_>>());

    let status = watches
        .list_events(pb::ListEventsRequest {
            from_sequence: 5,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange);
    let info = status.get_details_error_info().expect("ErrorInfo details");
    assert_eq!(
        info.metadata.get("oldest_sequence").map(String::as_str),
        Some("21")
    );

    let status = watches
        .subscribe(pb::SubscribeRequest {
            from_sequence: 20,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange);
    assert!(status.message().contains("21"), "{}", status.message());

    let mut stream = watches
        .subscribe(pb::SubscribeRequest {
            from_sequence: 21,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let events = next_events(&mut stream, 10).await;
    assert_eq!(events.first().map(|e| e.sequence), Some(21));
    assert_eq!(events.last().map(|e| e.sequence), Some(30));
}
