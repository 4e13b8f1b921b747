//! The v1 contract other teams build on: idempotent writes (AIP-155),
//! pagination (AIP-158), health of both services, data availability,
//! periods that round-trip, amounts that are never clamped, bounded watches.

mod common;

use common::{TestServer, key_of, record, seed_records};
use tonic::Code;
use tonic::transport::Channel;
use tradewatch::pb::{
    self, milestone_service_client::MilestoneServiceClient, trade_service_client::TradeServiceClient,
};
use tradewatch::{Config, Limits};

type Trade = TradeServiceClient<Channel>;
type Milestones = MilestoneServiceClient<Channel>;

async fn clients(server: &TestServer) -> (Trade, Milestones) {
    let channel = server.channel().await;
    (
        TradeServiceClient::new(channel.clone()),
        MilestoneServiceClient::new(channel),
    )
}

/// The last event sequence stored.
async fn head(m: &mut Milestones) -> u64 {
    m.list_events(pb::ListEventsRequest {
        limit: 1,
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .head_sequence
}

fn usd(units: i64) -> pb::Money {
    pb::Money {
        currency_code: "USD".into(),
        units,
        nanos: 0,
    }
}

fn seed_watch(name: &str) -> pb::Watch {
    pb::Watch {
        name: name.into(),
        selector: Some(pb::RecordSelector {
            reporters: vec!["CHN".into()],
            partners: vec!["CENTRAL_ASIA".into()],
            ..Default::default()
        }),
        granularity: pb::Granularity::Year.into(),
        thresholds: vec![usd(100_000_000_000)],
        record_high: true,
        ..Default::default()
    }
}

fn caspian(description: &str) -> pb::PartnerGroup {
    pb::PartnerGroup {
        name: "CASPIAN_STATES".into(),
        members: vec!["KAZ".into(), "TKM".into()],
        description: description.into(),
        ..Default::default()
    }
}

/// The seven writes, each with a request id, in an order that lets each
/// succeed; `round` says which responses to expect (first call or retry).
struct Writes {
    put: pb::PutRecordsRequest,
    ingest: Vec<pb::IngestRecordsRequest>,
    put_group: pb::PutGroupRequest,
    create_watch: pb::CreateWatchRequest,
    delete_record: pb::DeleteRecordRequest,
    delete_watch: pb::DeleteWatchRequest,
    delete_group: pb::DeleteGroupRequest,
}

#[derive(Debug, PartialEq)]
struct Responses {
    put: pb::PutRecordsResponse,
    ingest: pb::IngestRecordsResponse,
    put_group: pb::PutGroupResponse,
    create_watch: pb::CreateWatchResponse,
    delete_record: pb::DeleteRecordResponse,
    delete_watch: pb::DeleteWatchResponse,
    delete_group: pb::DeleteGroupResponse,
}

impl Writes {
    fn new() -> Writes {
        let seed = seed_records();
        let (first, rest) = seed.split_at(8);
        Writes {
            put: pb::PutRecordsRequest {
                records: first.to_vec(),
                request_id: "7f1c1f0e-8d1c-4c43-9d1e-1b9f0e2f4a11".into(),
            },
            ingest: rest
                .chunks(4)
                .enumerate()
                .map(|(i, chunk)| pb::IngestRecordsRequest {
                    records: chunk.to_vec(),
                    request_id: format!("ingest-{i}"),
                })
                .collect(),
            put_group: pb::PutGroupRequest {
                group: Some(caspian("Caspian littoral states of Central Asia")),
                request_id: "group-1".into(),
            },
            // No watch id: a retry must not create a second watch.
            create_watch: pb::CreateWatchRequest {
                watch: Some(seed_watch("China–Central Asia trade")),
                backfill: true,
                request_id: "watch-1".into(),
            },
            delete_record: pb::DeleteRecordRequest {
                key: Some(key_of(&seed[0])),
                request_id: "delete-record-1".into(),
            },
            delete_watch: pb::DeleteWatchRequest {
                id: "w1".into(),
                request_id: "delete-watch-1".into(),
            },
            delete_group: pb::DeleteGroupRequest {
                name: "CASPIAN_STATES".into(),
                request_id: "delete-group-1".into(),
            },
        }
    }

    async fn send(&self, t: &mut Trade, m: &mut Milestones) -> Responses {
        Responses {
            put: t.put_records(self.put.clone()).await.unwrap().into_inner(),
            ingest: t
                .ingest_records(tokio_stream::iter(self.ingest.clone()))
                .await
                .unwrap()
                .into_inner(),
            put_group: t.put_group(self.put_group.clone()).await.unwrap().into_inner(),
            create_watch: m
                .create_watch(self.create_watch.clone())
                .await
                .unwrap()
                .into_inner(),
            delete_record: t
                .delete_record(self.delete_record.clone())
                .await
                .unwrap()
                .into_inner(),
            delete_watch: m
                .delete_watch(self.delete_watch.clone())
                .await
                .unwrap()
                .into_inner(),
            delete_group: t
                .delete_group(self.delete_group.clone())
                .await
                .unwrap()
                .into_inner(),
        }
    }
}

#[tokio::test]
async fn every_write_retried_with_its_request_id_lands_once_also_after_a_restart() {
    let server = TestServer::start().await;
    let (mut t, mut m) = clients(&server).await;
    let writes = Writes::new();

    let first = writes.send(&mut t, &mut m).await;
    // The first round did everything once: 16 records and their events, the
    // backfilled milestones, a deletion.
    assert_eq!(first.put.results.len(), 8);
    assert!(
        first
            .put
            .results
            .iter()
            .all(|r| r.outcome() == pb::WriteOutcome::Created)
    );
    assert_eq!(first.ingest.created, 8);
    assert_eq!(first.create_watch.watch.as_ref().unwrap().id, "w1");
    assert!(
        first.create_watch.first_sequence > 0,
        "the backfill emitted milestones"
    );
    let head_after_first = head(&mut m).await;
    let records_after_first = list_all_records(&mut t).await;

    // Retries return the first responses and change nothing.
    let retried = writes.send(&mut t, &mut m).await;
    assert_eq!(retried, first);
    assert_eq!(head(&mut m).await, head_after_first, "no event twice");
    assert_eq!(list_all_records(&mut t).await, records_after_first);
    let watches = m
        .list_watches(pb::ListWatchesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(
        watches.watches.is_empty(),
        "the watch was created once and deleted once"
    );

    // And so do they after a restart.
    let server = server.restart().await;
    let (mut t, mut m) = clients(&server).await;
    assert_eq!(writes.send(&mut t, &mut m).await, first);
    assert_eq!(head(&mut m).await, head_after_first);
    assert_eq!(list_all_records(&mut t).await, records_after_first);
}

#[tokio::test]
async fn a_request_id_reused_for_another_request_is_refused() {
    let server = TestServer::start().await;
    let (mut t, mut m) = clients(&server).await;
    let seed = seed_records();
    let put = |units: i64| pb::PutRecordsRequest {
        records: vec![pb::TradeRecord {
            value: Some(usd(units)),
            ..seed[0].clone()
        }],
        request_id: "same-id".into(),
    };
    t.put_records(put(41_000_000_000)).await.unwrap();
    let head_before = head(&mut m).await;
    let err = t.put_records(put(42_000_000_000)).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
    assert!(
        err.message().contains("\"same-id\" was used"),
        "{}",
        err.message()
    );
    assert!(err.message().contains("different request"), "{}", err.message());
    // Another kind of write under the same id is another request too.
    let err = t
        .delete_record(pb::DeleteRecordRequest {
            key: Some(key_of(&seed[0])),
            request_id: "same-id".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
    assert_eq!(head(&mut m).await, head_before, "nothing was stored");
    let stored = t
        .get_record(pb::GetRecordRequest {
            key: Some(key_of(&seed[0])),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .record
        .unwrap();
    assert_eq!(stored.value, Some(usd(41_000_000_000)));

    // Ids are at most 64 bytes.
    let err = t
        .put_records(pb::PutRecordsRequest {
            request_id: "x".repeat(65),
            ..put(1)
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("request_id: "), "{}", err.message());
}

#[tokio::test]
async fn a_failed_write_is_not_remembered_under_its_id() {
    let server = TestServer::start().await;
    let (mut t, _) = clients(&server).await;
    let seed = seed_records();
    let delete = pb::DeleteRecordRequest {
        key: Some(key_of(&seed[0])),
        request_id: "delete-early".into(),
    };
    let err = t.delete_record(delete.clone()).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    t.put_records(pb::PutRecordsRequest {
        records: vec![seed[0].clone()],
        ..Default::default()
    })
    .await
    .unwrap();
    // The same id now deletes: only writes that happened are remembered.
    let deleted = t.delete_record(delete).await.unwrap().into_inner();
    assert_eq!(deleted.record.unwrap().value, seed[0].value);
}

async fn list_all_records(t: &mut Trade) -> Vec<pb::TradeRecord> {
    let (records, _) = list_records_pages(t, pb::RecordSelector::default(), 1000).await;
    records
}

/// Every page of a listing: the records, and the size of each page.
async fn list_records_pages(
    t: &mut Trade,
    selector: pb::RecordSelector,
    page_size: u32,
) -> (Vec<pb::TradeRecord>, Vec<usize>) {
    let mut records = Vec::new();
    let mut pages = Vec::new();
    let mut token = String::new();
    loop {
        let page = t
            .list_records(pb::ListRecordsRequest {
                selector: Some(selector.clone()),
                page_size,
                page_token: token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        pages.push(page.records.len());
        records.extend(page.records);
        if page.next_page_token.is_empty() {
            return (records, pages);
        }
        token = page.next_page_token;
    }
}

/// Follows `next_page_token` from the first page until it comes back
/// empty: every item's name, and the size of each page.
async fn every_page(
    mut fetch: impl AsyncFnMut(String) -> (Vec<String>, String),
) -> (Vec<String>, Vec<usize>) {
    let (mut items, mut pages, mut token) = (Vec::new(), Vec::new(), String::new());
    loop {
        let (page, next) = fetch(token).await;
        pages.push(page.len());
        items.extend(page);
        if next.is_empty() {
            return (items, pages);
        }
        token = next;
    }
}

/// A server whose pages hold at most 5, and its data dir.
async fn small_pages() -> (TestServer, tempfile::TempDir) {
    let tmp = tempfile::tempdir().unwrap();
    let config = Config {
        limits: Limits {
            max_page_size: 5,
            ..Limits::default()
        },
        ..Config::new(tmp.path())
    };
    (TestServer::start_with(config).await, tmp)
}

fn assert_bad_token(err: &tonic::Status, says: &str) {
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().starts_with("page_token: ") && err.message().contains(says),
        "{}",
        err.message()
    );
}

#[tokio::test]
async fn list_records_pages_by_aip_158() {
    let (server, _dir) = small_pages().await;
    let (mut t, _) = clients(&server).await;
    // 12 CHN records: an exact multiple of the page size 4.
    let records: Vec<_> = ["KAZ", "KGZ", "UZB", "TKM"]
        .iter()
        .flat_map(|p| ["2023", "2024", "2025"].map(|y| record("CHN", p, y, 1_000, "GACC")))
        .collect();
    t.put_records(pb::PutRecordsRequest {
        records,
        ..Default::default()
    })
    .await
    .unwrap();
    t.put_records(pb::PutRecordsRequest {
        records: vec![record("KAZ", "CHN", "2025", 1_000, "KAZ stat")],
        ..Default::default()
    })
    .await
    .unwrap();
    let chn = pb::RecordSelector {
        reporters: vec!["CHN".into()],
        ..Default::default()
    };

    // No empty last page: the third page of four ends the listing.
    let (listed, pages) = list_records_pages(&mut t, chn.clone(), 4).await;
    assert_eq!(pages, vec![4, 4, 4]);
    assert_eq!(listed.len(), 12);
    let mut keys: Vec<_> = listed.iter().map(key_of).map(|k| format!("{k:?}")).collect();
    keys.dedup();
    assert_eq!(keys.len(), 12, "no record twice");

    // A page size above the maximum is lowered to it.
    let (_, pages) = list_records_pages(&mut t, chn.clone(), 1000).await;
    assert_eq!(pages, vec![5, 5, 2]);

    let first = t
        .list_records(pb::ListRecordsRequest {
            selector: Some(chn.clone()),
            page_size: 4,
            page_token: String::new(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    // A token works with another page size, not with another selector.
    let other_size = t
        .list_records(pb::ListRecordsRequest {
            selector: Some(chn.clone()),
            page_size: 2,
            page_token: first.next_page_token.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(other_size.records.len(), 2);
    assert_eq!(other_size.records[0], listed[4]);
    let err = t
        .list_records(pb::ListRecordsRequest {
            selector: Some(pb::RecordSelector {
                reporters: vec!["KAZ".into()],
                ..Default::default()
            }),
            page_size: 4,
            page_token: first.next_page_token.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_bad_token(&err, "other criteria");
    // Tokens the server never issued.
    for forged in ["AAAA", "not a token", &first.next_page_token[1..]] {
        let err = t
            .list_records(pb::ListRecordsRequest {
                selector: Some(chn.clone()),
                page_size: 4,
                page_token: forged.into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_bad_token(&err, "not a page token this server issued");
    }
}

#[tokio::test]
async fn list_groups_and_list_watches_page_by_aip_158() {
    let (server, _dir) = small_pages().await;
    let (mut t, mut m) = clients(&server).await;
    // With the built-in CENTRAL_ASIA, 8 groups; and 8 watches.
    for name in ["ALPHA", "BRAVO", "CHARLIE", "DELTA", "ECHO", "FOXTROT", "GOLF"] {
        t.put_group(pb::PutGroupRequest {
            group: Some(pb::PartnerGroup {
                name: format!("GROUP_{name}"),
                members: vec!["KAZ".into()],
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    for i in 0..8 {
        m.create_watch(pb::CreateWatchRequest {
            watch: Some(seed_watch(&format!("watch {i}"))),
            ..Default::default()
        })
        .await
        .unwrap();
    }

    let (groups, pages) = every_page(async |token| {
        let page = t
            .list_groups(pb::ListGroupsRequest {
                page_size: 4,
                page_token: token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        (
            page.groups.into_iter().map(|g| g.name).collect(),
            page.next_page_token,
        )
    })
    .await;
    assert_eq!(pages, vec![4, 4], "no empty last page");
    let mut sorted = groups.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(groups, sorted, "every group once, by name");
    assert_eq!(groups.len(), 8);

    let (watches, pages) = every_page(async |token| {
        let page = m
            .list_watches(pb::ListWatchesRequest {
                page_size: 4,
                page_token: token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        (
            page.watches.into_iter().map(|w| w.id).collect(),
            page.next_page_token,
        )
    })
    .await;
    assert_eq!(pages, vec![4, 4]);
    assert_eq!(watches.len(), 8);

    // Oversized pages are lowered to the maximum of 5.
    let big = t
        .list_groups(pb::ListGroupsRequest {
            page_size: 1000,
            page_token: String::new(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(big.groups.len(), 5);
    let big_watches = m
        .list_watches(pb::ListWatchesRequest {
            page_size: 1000,
            page_token: String::new(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(big_watches.watches.len(), 5);

    // A token of one listing is refused by another, and forged ones by all.
    let err = m
        .list_watches(pb::ListWatchesRequest {
            page_size: 4,
            page_token: big.next_page_token.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_bad_token(&err, "other criteria");
    let err = t
        .list_groups(pb::ListGroupsRequest {
            page_size: 4,
            page_token: big_watches.next_page_token.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_bad_token(&err, "other criteria");
    let err = t
        .list_groups(pb::ListGroupsRequest {
            page_size: 4,
            page_token: "AAAA".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_bad_token(&err, "not a page token");
    let err = m
        .list_watches(pb::ListWatchesRequest {
            page_size: 4,
            page_token: "AAAA".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_bad_token(&err, "not a page token");
}

#[tokio::test]
async fn both_services_report_serving() {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    let server = TestServer::start().await;
    let mut health = HealthClient::new(server.channel().await);
    for service in ["tradewatch.v1.TradeService", "tradewatch.v1.MilestoneService"] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status();
        assert_eq!(status, ServingStatus::Serving, "{service}");
    }
}

#[tokio::test]
async fn data_availability_describes_the_bundled_dataset() {
    let server = TestServer::start().await;
    let (mut t, _) = clients(&server).await;
    t.put_records(pb::PutRecordsRequest {
        records: seed_records(),
        ..Default::default()
    })
    .await
    .unwrap();
    let all = t
        .get_data_availability(pb::GetDataAvailabilityRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.record_count, 16);
    let reporters: Vec<_> = all
        .reporters
        .iter()
        .map(|r| {
            (
                r.reporter.as_str(),
                r.record_count,
                r.first_period.as_str(),
                r.last_period.as_str(),
            )
        })
        .collect();
    assert_eq!(
        reporters,
        vec![("CHN", 15, "2023", "2025"), ("TJK", 1, "2024", "2024")]
    );
    assert!(all.reporters.iter().all(|r| r.latest_update.is_some()));
    let counts = |list: &[pb::ValueCount]| -> Vec<(String, u64)> {
        list.iter().map(|v| (v.value.clone(), v.record_count)).collect()
    };
    let owned =
        |v: &[(&str, u64)]| -> Vec<(String, u64)> { v.iter().map(|(s, n)| (s.to_string(), *n)).collect() };
    assert_eq!(
        counts(&all.periods),
        owned(&[("2023", 5), ("2024", 6), ("2025", 5)])
    );
    assert_eq!(
        counts(&all.partners),
        owned(&[
            ("CHN", 1),
            ("KAZ", 3),
            ("KGZ", 3),
            ("TJK", 3),
            ("TKM", 3),
            ("UZB", 3)
        ])
    );
    assert_eq!(counts(&all.currencies), owned(&[("USD", 16)]));
    assert_eq!(all.frequencies.len(), 1);
    assert_eq!(all.frequencies[0].frequency(), pb::Frequency::Annual);
    assert_eq!(all.flows.len(), 1);
    assert_eq!(
        (all.flows[0].flow(), all.flows[0].record_count),
        (pb::Flow::Turnover, 16)
    );
    assert_eq!(all.commodity_levels.len(), 1);
    assert_eq!(
        all.commodity_levels[0].commodity_level(),
        pb::CommodityLevel::Total
    );

    // Narrowed by a selector with a group.
    let narrowed = t
        .get_data_availability(pb::GetDataAvailabilityRequest {
            selector: Some(pb::RecordSelector {
                partners: vec!["CENTRAL_ASIA".into()],
                period_from: "2025".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(narrowed.record_count, 5);
    assert_eq!(counts(&narrowed.periods), owned(&[("2025", 5)]));
    assert_eq!(narrowed.reporters.len(), 1);

    // A bad selector is named.
    let err = t
        .get_data_availability(pb::GetDataAvailabilityRequest {
            selector: Some(pb::RecordSelector {
                reporters: vec!["XYZ".into()],
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().starts_with("selector.reporters[0]: "),
        "{}",
        err.message()
    );
}

fn monthly(period: &str, units: i64) -> pb::TradeRecord {
    record("CHN", "KAZ", period, units, "GACC")
}

#[tokio::test]
async fn a_quarter_an_answer_returns_is_accepted_as_a_period_bound() {
    let server = TestServer::start().await;
    let (mut t, _) = clients(&server).await;
    t.put_records(pb::PutRecordsRequest {
        records: ["2024-12", "2025-01", "2025-03", "2025-04", "2025-06", "2025-07"]
            .iter()
            .enumerate()
            .map(|(i, p)| monthly(p, 1_000 * (i as i64 + 1)))
            .collect(),
        ..Default::default()
    })
    .await
    .unwrap();
    let by_quarter = t
        .aggregate(pb::AggregateRequest {
            selector: Some(pb::RecordSelector {
                reporters: vec!["CHN".into()],
                frequency: pb::Frequency::Monthly.into(),
                ..Default::default()
            }),
            group_by: vec![pb::Dimension::Period.into()],
            granularity: pb::Granularity::Quarter.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let labels: Vec<_> = by_quarter.rows.iter().map(|r| r.period.clone()).collect();
    assert_eq!(labels, vec!["2024-Q4", "2025-Q1", "2025-Q2", "2025-Q3"]);

    // Each label, fed back as both bounds, selects exactly its quarter.
    for row in &by_quarter.rows {
        let selector = pb::RecordSelector {
            reporters: vec!["CHN".into()],
            frequency: pb::Frequency::Monthly.into(),
            period_from: row.period.clone(),
            period_to: row.period.clone(),
            ..Default::default()
        };
        let answer = t
            .aggregate(pb::AggregateRequest {
                selector: Some(selector.clone()),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(answer.grand_total, row.total, "{}", row.period);
        let (listed, _) = list_records_pages(&mut t, selector, 100).await;
        assert_eq!(listed.len() as u64, row.record_count, "{}", row.period);
    }
    let err = t
        .list_records(pb::ListRecordsRequest {
            selector: Some(pb::RecordSelector {
                period_from: "2025-Q5".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().starts_with("selector.period_from: "),
        "{}",
        err.message()
    );
}

#[tokio::test]
async fn an_amount_money_cannot_hold_is_refused_never_clamped() {
    let server = TestServer::start().await;
    let (mut t, mut m) = clients(&server).await;
    let near_max = i64::MAX - 10;
    let watch = m
        .create_watch(pb::CreateWatchRequest {
            watch: Some(pb::Watch {
                thresholds: vec![usd(i64::MAX)],
                ..seed_watch("huge")
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .watch
        .unwrap();
    t.put_records(pb::PutRecordsRequest {
        records: vec![record("CHN", "KAZ", "2025", near_max, "GACC")],
        ..Default::default()
    })
    .await
    .unwrap();
    let head_before = head(&mut m).await;

    // KGZ's figure would take the watched 2025 value past int64 units.
    let err = t
        .put_records(pb::PutRecordsRequest {
            records: vec![record("CHN", "KGZ", "2025", 11, "GACC")],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange, "{err:?}");
    assert!(
        err.message().contains(&format!("watch {}", watch.id))
            && err.message().contains("nothing was stored"),
        "{}",
        err.message()
    );
    assert_eq!(head(&mut m).await, head_before);
    let missing = t
        .get_record(pb::GetRecordRequest {
            key: Some(key_of(&record("CHN", "KGZ", "2025", 11, "GACC"))),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);

    // Up to the limit, the exact amount arrives in the event.
    t.put_records(pb::PutRecordsRequest {
        records: vec![record("CHN", "KGZ", "2025", 10, "GACC")],
        ..Default::default()
    })
    .await
    .unwrap();
    let events = m
        .list_events(pb::ListEventsRequest {
            from_sequence: head_before + 1,
            kinds: vec![pb::EventKind::ThresholdCrossed.into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .events;
    let Some(pb::event::Kind::ThresholdCrossed(crossed)) = events.last().and_then(|e| e.kind.clone()) else {
        panic!("no crossing in {events:?}");
    };
    assert_eq!(crossed.value_after, Some(usd(i64::MAX)));

    // Without a watch the records are stored; a watch created over them,
    // and a question about them, are refused rather than clamped.
    m.delete_watch(pb::DeleteWatchRequest {
        id: watch.id.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    t.put_records(pb::PutRecordsRequest {
        records: vec![record("CHN", "UZB", "2025", 5, "GACC")],
        ..Default::default()
    })
    .await
    .unwrap();
    let err = m
        .create_watch(pb::CreateWatchRequest {
            watch: Some(seed_watch("too big")),
            backfill: true,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange, "{err:?}");
    let err = t
        .aggregate(pb::AggregateRequest {
            selector: Some(pb::RecordSelector {
                reporters: vec!["CHN".into()],
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange, "{err:?}");
}

#[tokio::test]
async fn a_watch_has_at_most_max_thresholds_per_watch() {
    let server = TestServer::start().await;
    let (_, mut m) = clients(&server).await;
    let with = |n: i64| pb::CreateWatchRequest {
        watch: Some(pb::Watch {
            thresholds: (1..=n).map(|i| usd(i * 1_000_000_000)).collect(),
            ..seed_watch("many thresholds")
        }),
        ..Default::default()
    };
    let err = m.create_watch(with(101)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().starts_with("watch.thresholds: 101 thresholds")
            && err.message().contains("max_thresholds_per_watch"),
        "{}",
        err.message()
    );
    let created = m.create_watch(with(100)).await.unwrap().into_inner();
    assert_eq!(created.watch.unwrap().thresholds.len(), 100);
}

#[tokio::test]
async fn an_ingest_message_reusing_an_id_for_other_records_is_rejected_and_loading_goes_on() {
    let server = TestServer::start().await;
    let (mut t, _) = clients(&server).await;
    let seed = seed_records();
    let message = |records: &[pb::TradeRecord], id: &str| pb::IngestRecordsRequest {
        records: records.to_vec(),
        request_id: id.into(),
    };
    let summary = t
        .ingest_records(tokio_stream::iter(vec![
            message(&seed[0..2], "batch-a"),
            message(&seed[2..4], "batch-a"),
            message(&seed[4..6], "batch-b"),
        ]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((summary.messages, summary.created, summary.rejected), (3, 4, 2));
    assert_eq!(summary.rejections.len(), 1);
    assert_eq!(summary.rejections[0].message_index, 1);
    assert!(
        summary.rejections[0].reason.contains("\"batch-a\" was used"),
        "{}",
        summary.rejections[0].reason
    );
}

/// A single node numbers its writes in its own command log: each write's
/// `log_position` follows the one before (a refused write takes none), and
/// a read asking for a position not yet applied waits within its deadline,
/// then says DEADLINE_EXCEEDED rather than answer stale.
#[tokio::test]
async fn a_single_node_numbers_its_writes_and_reads_wait_for_a_position() {
    let server = TestServer::start().await;
    let (mut t, mut m) = clients(&server).await;
    let put = |period: &str| pb::PutRecordsRequest {
        records: vec![record("CHN", "KAZ", period, 1, "GACC")],
        ..Default::default()
    };
    let first = t.put_records(put("2023")).await.unwrap().into_inner();
    assert_eq!(first.log_position, 1);
    let refused = t
        .delete_group(pb::DeleteGroupRequest {
            name: "NO_SUCH_GROUP".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::NotFound);
    let created = m
        .create_watch(pb::CreateWatchRequest {
            watch: Some(seed_watch("positions")),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.log_position, 2, "the refused write took no position");

    let key = key_of(&record("CHN", "KAZ", "2023", 1, "GACC"));
    let read = t
        .get_record(pb::GetRecordRequest {
            key: Some(key.clone()),
            min_log_position: 2,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(read.record.unwrap().revision, 1);

    let mut ahead = tonic::Request::new(pb::GetRecordRequest {
        key: Some(key),
        min_log_position: 3,
    });
    ahead.set_timeout(std::time::Duration::from_millis(300));
    let started = std::time::Instant::now();
    let err = t.get_record(ahead).await.unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert!(started.elapsed() >= std::time::Duration::from_millis(250));

    // A read waiting for the next position answers as soon as it is written.
    let mut waiting = t.clone();
    let reader = tokio::spawn(async move {
        waiting
            .list_records(pb::ListRecordsRequest {
                min_log_position: 3,
                ..Default::default()
            })
            .await
            .map(|r| r.into_inner().records.len())
    });
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let third = t.put_records(put("2024")).await.unwrap().into_inner();
    assert_eq!(third.log_position, 3);
    assert_eq!(reader.await.unwrap().unwrap(), 2);
}
