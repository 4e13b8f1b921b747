//! Target 3: arbitrary selectors, groupings, orders and limits into
//! Aggregate and ListRecords, over a fixed data set (both frequencies, all
//! flows and commodity levels, two currencies, the world as a partner).
//!
//! Every answer is OK or INVALID_ARGUMENT whose violations name a field of
//! the request (`selector.period_from`, `group_by[1]`…). An OK aggregate is
//! checked against ListRecords of the same selector (with the aggregate's
//! defaults made explicit): its grand total and record count must equal the
//! brute-force sum, its rows must add up, be in the asked order and within
//! the limit. Paging through ListRecords must give what one page gives.

use std::sync::OnceLock;

use tonic::transport::Channel;
use tonic::{Code, Status};
use tradewatch::pb::{self, trade_service_client::TradeServiceClient};

use super::check::{self, check_error, list_all, nanos};
use super::input::Input;
use super::requests as make;
use super::server::{self, Server, runtime};

const SELECTOR_FIELDS: &[&str] = &[
    "reporters",
    "partners",
    "flows",
    "commodities",
    "commodity_level",
    "commodity_prefix",
    "currency",
    "frequency",
    "period_from",
    "period_to",
];
const AGGREGATE_FIELDS: &[&str] = &["selector", "group_by", "granularity", "order_by", "limit"];
const LIST_FIELDS: &[&str] = &["selector", "page_size", "page_token"];

struct Fixture {
    channel: Channel,
    // Kept running for the life of the process.
    _server: Server,
}

/// The data set: a deterministic sample of reporter × partner × commodity
/// × period × flow × currency.
pub fn dataset() -> Vec<pb::TradeRecord> {
    let mut seed: u64 = 0x2025_0100_5eed;
    let mut next = move || {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        seed >> 33
    };
    let reporters = ["CHN", "KAZ", "USA", "RUS"];
    let partners = ["KAZ", "KGZ", "TJK", "TKM", "UZB", "CHN", "USA", "WLD"];
    let commodities = ["TOTAL", "27", "2701", "270112", "52", "5201"];
    let mut periods: Vec<String> = (2021..=2025).map(|y| y.to_string()).collect();
    periods.extend((0..18).map(|m| format!("{}-{:02}", 2024 + m / 12, m % 12 + 1)));
    let mut records = Vec::new();
    for reporter in reporters {
        for partner in partners.iter().filter(|p| **p != reporter) {
            for commodity in commodities {
                for period in &periods {
                    for flow in 1..=5 {
                        for currency in ["USD", "CNY"] {
                            let keep = if currency == "USD" { 5 } else { 1 };
                            if next() % 200 >= keep {
                                continue;
                            }
                            records.push(pb::TradeRecord {
                                reporter: reporter.into(),
                                partner: (*partner).into(),
                                flow,
                                period: period.clone(),
                                commodity: commodity.into(),
                                value: Some(pb::Money {
                                    currency_code: currency.into(),
                                    units: (next() % 100_000_000_000) as i64,
                                    nanos: (next() % 1_000_000_000) as i32,
                                }),
                                source: "fuzz".into(),
                                ..Default::default()
                            });
                        }
                    }
                }
            }
        }
    }
    records
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        runtime().block_on(async {
            let server = Server::start(&server::scratch_dir()).await;
            let channel = server.channel().await;
            let mut client = TradeServiceClient::new(channel.clone());
            for chunk in dataset().chunks(200) {
                client
                    .put_records(pb::PutRecordsRequest {
                        records: chunk.to_vec(),
                        ..Default::default()
                    })
                    .await
                    .expect("the data set is stored");
            }
            for (name, members) in [
                ("PAIR_1", vec!["KAZ", "USA"]),
                ("FUZZ_GROUP", vec!["CHN", "KGZ", "RUS"]),
            ] {
                client
                    .put_group(pb::PutGroupRequest {
                        group: Some(pb::PartnerGroup {
                            name: name.into(),
                            members: members.into_iter().map(Into::into).collect(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    })
                    .await
                    .expect("group stored");
            }
            check::check_store(&channel).await;
            Fixture {
                channel,
                _server: server,
            }
        })
    })
}

/// Checks that an INVALID_ARGUMENT's violations under `selector` name one of
/// its fields (`selector.reporters[2]`).
fn check_selector_fields(context: &str, status: &Status) {
    for (field, description) in check::violations(status) {
        if let Some(rest) = field.strip_prefix("selector") {
            let sub = rest
                .strip_prefix('.')
                .unwrap_or("")
                .split(['.', '['])
                .next()
                .unwrap_or("");
            assert!(
                SELECTOR_FIELDS.contains(&sub),
                "{context}: violation {field:?} ({description}) does not name a selector field"
            );
        }
    }
}

/// Runs one fuzz input. Panics when an answer is wrong.
pub fn run(data: &[u8]) {
    let fixture = fixture();
    runtime().block_on(one(&fixture.channel, data));
}

/// Answers so far: Aggregate OK, Aggregate INVALID_ARGUMENT, ListRecords
/// OK, ListRecords INVALID_ARGUMENT.
static ANSWERS: [std::sync::atomic::AtomicU64; 4] = [const { std::sync::atomic::AtomicU64::new(0) }; 4];

/// How the inputs so far were answered.
pub fn stats() -> String {
    let n = |i: usize| ANSWERS[i].load(std::sync::atomic::Ordering::Relaxed);
    format!(
        "Aggregate OK {}, INVALID_ARGUMENT {}; ListRecords OK {}, INVALID_ARGUMENT {}",
        n(0),
        n(1),
        n(2),
        n(3)
    )
}

fn count(i: usize) {
    ANSWERS[i].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

async fn one(channel: &Channel, data: &[u8]) {
    let mut client = TradeServiceClient::new(channel.clone());
    let mut inp = Input::new(data);
    let valid = inp.byte() % 2 == 0;
    let request = make::aggregate(&mut inp, valid);
    let list = pb::ListRecordsRequest {
        selector: request.selector.clone(),
        page_size: if inp.chance(128) {
            inp.u32()
        } else {
            1 + inp.below(50) as u32
        },
        page_token: make::page_token(&mut inp),
        ..Default::default()
    };

    let context = format!("Aggregate {request:?}");
    let aggregate = timed(client.aggregate(request.clone())).await;
    match &aggregate {
        Ok(answer) => {
            count(0);
            check_answer(&context, &mut client, &request, answer).await
        }
        Err(status) => {
            count(1);
            check_error(&context, status, &[Code::InvalidArgument], AGGREGATE_FIELDS);
            check_selector_fields(&context, status);
        }
    }

    let context = format!("ListRecords {list:?}");
    match timed(client.list_records(list.clone())).await {
        Ok(page) => {
            count(2);
            let limit = if list.page_size == 0 {
                100
            } else {
                list.page_size as usize
            };
            assert!(
                page.records.len() <= limit,
                "{context}: {} records",
                page.records.len()
            );
            if list.page_token.is_empty() && list.page_size <= 1000 {
                // Up to 20 pages of the input's size: the start of the list.
                let whole = list_all(&mut client, list.selector.clone(), 1000)
                    .await
                    .expect("a whole list");
                let mut paged = page.records.clone();
                let mut token = page.next_page_token.clone();
                for _ in 0..20 {
                    if token.is_empty() {
                        break;
                    }
                    let next = timed(client.list_records(pb::ListRecordsRequest {
                        page_token: std::mem::take(&mut token),
                        ..list.clone()
                    }))
                    .await
                    .unwrap_or_else(|s| panic!("{context}: the next page: {s:?}"));
                    // A token is given exactly when records follow.
                    assert!(!next.records.is_empty(), "{context}: empty page");
                    paged.extend(next.records);
                    token = next.next_page_token;
                }
                let complete = token.is_empty();
                assert_eq!(
                    &paged[..],
                    if complete {
                        &whole[..]
                    } else {
                        &whole[..paged.len().min(whole.len())]
                    },
                    "{context}: paging differs from one page"
                );
            }
        }
        Err(status) => {
            count(3);
            check_error(&context, &status, &[Code::InvalidArgument], LIST_FIELDS);
            check_selector_fields(&context, &status);
            let selector_wrong = check::violations(&status)
                .iter()
                .any(|(f, _)| f.starts_with("selector"));
            assert!(
                !selector_wrong || aggregate.is_err(),
                "{context}: ListRecords rejects the selector ({status:?}) that Aggregate accepted"
            );
        }
    }
}

async fn timed<T>(call: impl Future<Output = Result<tonic::Response<T>, Status>>) -> Result<T, Status> {
    match tokio::time::timeout(server::CALL_TIMEOUT, call).await {
        Ok(r) => r.map(tonic::Response::into_inner),
        Err(_) => panic!("the server did not answer within {:?}", server::CALL_TIMEOUT),
    }
}

async fn check_answer(
    context: &str,
    client: &mut TradeServiceClient<Channel>,
    request: &pb::AggregateRequest,
    answer: &pb::AggregateResponse,
) {
    let selector = request.selector.clone().unwrap_or_default();
    let currency = if selector.currency.is_empty() {
        "USD".to_owned()
    } else {
        selector.currency.clone()
    };
    let frequency = if selector.frequency == 0 {
        pb::Frequency::Annual as i32
    } else {
        selector.frequency
    };
    assert_eq!(answer.currency, currency, "{context}: currency");
    assert_eq!(answer.frequency, frequency, "{context}: frequency");

    let has = |d: pb::Dimension| request.group_by.contains(&(d as i32));
    let mut sum = 0i128;
    let mut count = 0u64;
    for row in &answer.rows {
        let total = row.total.as_ref().expect("a row has a total");
        assert_eq!(total.currency_code, currency, "{context}: row currency");
        assert!(nanos(Some(total)) >= 0, "{context}: a negative total");
        assert!(row.record_count > 0, "{context}: a row of no records: {row:?}");
        assert!(row.share_percent.is_finite() && (0.0..=100.000_001).contains(&row.share_percent));
        assert!(
            row.yoy_growth_percent.is_none_or(f64::is_finite),
            "{context}: growth {row:?}"
        );
        assert_eq!(
            !row.reporter.is_empty(),
            has(pb::Dimension::Reporter),
            "{context}: {row:?}"
        );
        assert_eq!(
            !row.partner.is_empty(),
            has(pb::Dimension::Partner),
            "{context}: {row:?}"
        );
        assert_eq!(row.flow != 0, has(pb::Dimension::Flow), "{context}: {row:?}");
        assert_eq!(
            !row.commodity.is_empty(),
            has(pb::Dimension::Commodity),
            "{context}: {row:?}"
        );
        assert_eq!(
            !row.period.is_empty(),
            has(pb::Dimension::Period),
            "{context}: {row:?}"
        );
        sum += nanos(Some(total));
        count += row.record_count;
    }
    let grand = nanos(answer.grand_total.as_ref());
    if request.limit == 0 || answer.rows.len() < request.limit as usize {
        assert_eq!(sum, grand, "{context}: the rows do not add up to the grand total");
        assert_eq!(count, answer.record_count, "{context}: row record counts");
    } else {
        assert_eq!(answer.rows.len(), request.limit as usize, "{context}: limit");
        assert!(
            sum <= grand && count <= answer.record_count,
            "{context}: the top rows exceed the total"
        );
    }
    let totals: Vec<i128> = answer.rows.iter().map(|r| nanos(r.total.as_ref())).collect();
    if request.order_by == pb::OrderBy::TotalDesc as i32 {
        assert!(
            totals.windows(2).all(|w| w[0] >= w[1]),
            "{context}: not largest first"
        );
    } else if request.order_by == pb::OrderBy::TotalAsc as i32 {
        assert!(
            totals.windows(2).all(|w| w[0] <= w[1]),
            "{context}: not smallest first"
        );
    }

    // The grand total against ListRecords with the aggregate's defaults.
    let mut listing = selector.clone();
    listing.currency = currency;
    listing.frequency = frequency;
    if selector.commodities.is_empty()
        && selector.commodity_level == 0
        && selector.commodity_prefix.is_empty()
    {
        listing.commodities = vec!["TOTAL".into()];
    }
    let records = match list_all(client, Some(listing.clone()), 1000).await {
        Ok(records) => records,
        Err(status) => {
            panic!("{context}: ListRecords rejects the aggregate's selector {listing:?}: {status:?}")
        }
    };
    let records: Vec<&pb::TradeRecord> = records
        .iter()
        .filter(|r| !selector.partners.is_empty() || r.partner != "WLD")
        .collect();
    let (expected, expected_count) = if selector.flows.is_empty() {
        let mut groups: std::collections::BTreeMap<_, [Option<i128>; 3]> = Default::default();
        for r in &records {
            let slot = match pb::Flow::try_from(r.flow) {
                Ok(pb::Flow::Turnover) => 0,
                Ok(pb::Flow::Export) => 1,
                Ok(pb::Flow::Import) => 2,
                _ => continue,
            };
            groups
                .entry((&r.reporter, &r.partner, &r.commodity, &r.period))
                .or_default()[slot] = Some(nanos(r.value.as_ref()));
        }
        groups.values().fold((0i128, 0u64), |(s, n), [t, x, m]| match t {
            Some(t) => (s + t, n + 1),
            None => (
                s + x.unwrap_or(0) + m.unwrap_or(0),
                n + u64::from(x.is_some()) + u64::from(m.is_some()),
            ),
        })
    } else {
        (
            records.iter().map(|r| nanos(r.value.as_ref())).sum(),
            records.len() as u64,
        )
    };
    assert_eq!(
        (grand, answer.record_count),
        (expected, expected_count),
        "{context}: grand total and record count differ from the sum of ListRecords {listing:?}"
    );
}
