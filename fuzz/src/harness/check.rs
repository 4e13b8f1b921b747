//! What every answer and the store as a whole must satisfy, whatever the
//! caller sent.

use std::collections::{BTreeMap, BTreeSet};

use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_types::StatusExt;
use tradewatch::pb::{
    self, milestone_service_client::MilestoneServiceClient, trade_service_client::TradeServiceClient,
};

/// What tonic answers, per gRPC's status code table ("Error parsing request
/// proto: INTERNAL"), when a request body is not a valid protobuf encoding
/// of the method's request message. This happens before any tradewatch
/// code runs; it is the only INTERNAL the harness accepts.
pub const DECODE_ERROR: &str = "failed to decode Protobuf message";

/// Checks a non-OK answer to a request that decoded: one of `allowed`, and
/// INVALID_ARGUMENT names each bad field, under one of `fields` (the request
/// message's top-level field names).
pub fn check_error(context: &str, status: &Status, allowed: &[Code], fields: &[&str]) {
    let code = status.code();
    assert!(
        allowed.contains(&code),
        "{context}: answered {code:?} ({:?}); allowed: {allowed:?}",
        status.message()
    );
    assert!(
        !status.message().is_empty(),
        "{context}: {code:?} without a message"
    );
    if code == Code::InvalidArgument {
        let violations = status
            .get_details_bad_request()
            .map(|b| b.field_violations)
            .unwrap_or_default();
        assert!(
            !violations.is_empty(),
            "{context}: INVALID_ARGUMENT without a BadRequest naming the field ({:?})",
            status.message()
        );
        for v in &violations {
            let root = v.field.split(['.', '[']).next().unwrap_or("");
            assert!(
                fields.contains(&root),
                "{context}: violation names field {:?}, not a field of the request ({fields:?}); {:?}",
                v.field,
                v.description
            );
            assert!(
                !v.description.is_empty(),
                "{context}: violation of {} without a reason",
                v.field
            );
        }
    }
}

/// Checks the answer to a body that is *not* a valid encoding of the
/// request message: tonic's decode error, never a call into the service.
pub fn check_undecodable(context: &str, status: &Status) {
    let ok = (status.code() == Code::Internal && status.message().contains(DECODE_ERROR))
        || status.code() == Code::InvalidArgument;
    assert!(
        ok,
        "{context}: an undecodable body answered {:?} ({:?})",
        status.code(),
        status.message()
    );
}

/// The violations of an INVALID_ARGUMENT answer, as (field, description).
pub fn violations(status: &Status) -> Vec<(String, String)> {
    status
        .get_details_bad_request()
        .map(|b| {
            b.field_violations
                .into_iter()
                .map(|v| (v.field, v.description))
                .collect()
        })
        .unwrap_or_default()
}

/// Whether an amount in nanos fits google.type.Money (int64 units).
pub fn fits_money(nanos: i128) -> bool {
    nanos.abs() <= i128::from(i64::MAX) * 1_000_000_000 + 999_999_999
}

pub fn nanos(m: Option<&pb::Money>) -> i128 {
    m.map_or(0, |m| i128::from(m.units) * 1_000_000_000 + i128::from(m.nanos))
}

/// Every record, through ListRecords with `page_size`.
pub async fn list_all(
    client: &mut TradeServiceClient<Channel>,
    selector: Option<pb::RecordSelector>,
    page_size: u32,
) -> Result<Vec<pb::TradeRecord>, Status> {
    let mut records = Vec::new();
    let mut token = String::new();
    for _ in 0..100_000 {
        let first = token.is_empty();
        let page = client
            .list_records(pb::ListRecordsRequest {
                selector: selector.clone(),
                page_size,
                page_token: token,
                ..Default::default()
            })
            .await?
            .into_inner();
        let limit = if page_size == 0 { 100 } else { page_size as usize };
        assert!(
            page.records.len() <= limit,
            "a page of {} records for page_size {page_size}",
            page.records.len()
        );
        // A token is given exactly when records follow.
        assert!(
            first || !page.records.is_empty(),
            "a next_page_token led to an empty page (page_size {page_size})"
        );
        records.extend(page.records);
        if page.next_page_token.is_empty() {
            return Ok(records);
        }
        token = page.next_page_token;
    }
    panic!("ListRecords paging does not end");
}

/// The store as seen through the API, to compare across a restart.
#[derive(Debug, PartialEq)]
pub struct Snapshot {
    pub records: Vec<pb::TradeRecord>,
    pub head_sequence: u64,
    pub groups: Vec<pb::PartnerGroup>,
    pub watches: Vec<pb::Watch>,
}

/// Group values of an aggregate row: reporter, partner, flow, commodity,
/// period (empty or 0 when not grouped by).
type Group = (String, String, i32, String, String);

/// An aggregate question and the answer brute force gives.
struct Question {
    what: &'static str,
    partners: Vec<String>,
    flows: Vec<i32>,
    group_by: Vec<pb::Dimension>,
    expected: BTreeMap<Group, (i128, u64)>,
}

fn commodity_level(code: &str) -> i32 {
    match code.len() {
        2 => pb::CommodityLevel::Hs2 as i32,
        4 => pb::CommodityLevel::Hs4 as i32,
        6 => pb::CommodityLevel::Hs6 as i32,
        _ => pb::CommodityLevel::Total as i32,
    }
}

fn frequency(period: &str) -> i32 {
    if period.len() == 4 {
        pb::Frequency::Annual as i32
    } else {
        pb::Frequency::Monthly as i32
    }
}

const EXPORT: i32 = pb::Flow::Export as i32;
const IMPORT: i32 = pb::Flow::Import as i32;
const TURNOVER: i32 = pb::Flow::Turnover as i32;

/// Trade volume per (reporter, partner, commodity, period): turnover if
/// published, else exports + imports; with the number of records summed.
fn volumes(records: &[&pb::TradeRecord]) -> BTreeMap<Group, (i128, u64)> {
    let mut by_flow: BTreeMap<(String, String, String, String), BTreeMap<i32, i128>> = BTreeMap::new();
    for r in records {
        by_flow
            .entry((
                r.reporter.clone(),
                r.partner.clone(),
                r.commodity.clone(),
                r.period.clone(),
            ))
            .or_default()
            .insert(r.flow, nanos(r.value.as_ref()));
    }
    let mut out = BTreeMap::new();
    for ((reporter, partner, commodity, period), flows) in by_flow {
        let tally = match flows.get(&TURNOVER) {
            Some(&t) => (t, 1),
            None => [EXPORT, IMPORT]
                .iter()
                .filter_map(|f| flows.get(f))
                .fold((0, 0), |(s, n), v| (s + v, n + 1)),
        };
        if tally.1 > 0 {
            out.insert((reporter, partner, 0, commodity, period), tally);
        }
    }
    out
}

/// Sums `rows` after projecting each group onto the dimensions kept.
fn project(rows: &BTreeMap<Group, (i128, u64)>, keep: &[pb::Dimension]) -> BTreeMap<Group, (i128, u64)> {
    let mut out: BTreeMap<Group, (i128, u64)> = BTreeMap::new();
    for ((r, p, f, c, period), (sum, n)) in rows {
        let has = |d| keep.contains(&d);
        let key = (
            if has(pb::Dimension::Reporter) {
                r.clone()
            } else {
                String::new()
            },
            if has(pb::Dimension::Partner) {
                p.clone()
            } else {
                String::new()
            },
            if has(pb::Dimension::Flow) { *f } else { 0 },
            if has(pb::Dimension::Commodity) {
                c.clone()
            } else {
                String::new()
            },
            if has(pb::Dimension::Period) {
                period.clone()
            } else {
                String::new()
            },
        );
        let e = out.entry(key).or_default();
        e.0 += sum;
        e.1 += n;
    }
    out
}

fn answer_rows(answer: &pb::AggregateResponse) -> BTreeMap<Group, (i128, u64)> {
    let mut out = BTreeMap::new();
    for row in &answer.rows {
        let key = (
            row.reporter.clone(),
            row.partner.clone(),
            row.flow,
            row.commodity.clone(),
            row.period.clone(),
        );
        let previous = out.insert(key.clone(), (nanos(row.total.as_ref()), row.record_count));
        assert!(previous.is_none(), "two aggregate rows for the group {key:?}");
    }
    out
}

/// Checks that the store is consistent as the API shows it: aggregates (over
/// records and over both rollups) equal brute-force sums of ListRecords;
/// paging is stable; GetRecord agrees with listing; the event log is
/// gap-free up to its head. Panics on any difference; returns a snapshot.
pub async fn check_store(channel: &Channel) -> Snapshot {
    let mut trade = TradeServiceClient::new(channel.clone());
    let mut milestones = MilestoneServiceClient::new(channel.clone());

    let records = list_all(&mut trade, None, 1000)
        .await
        .expect("ListRecords of everything");
    let paged = list_all(&mut trade, None, 7)
        .await
        .expect("ListRecords in pages of 7");
    assert_eq!(records, paged, "listing in pages of 7 differs from pages of 1000");
    let keys: BTreeSet<_> = records
        .iter()
        .map(|r| {
            (
                &r.reporter,
                &r.partner,
                r.flow,
                &r.period,
                &r.commodity,
                r.value.as_ref().map(|v| &v.currency_code),
            )
        })
        .collect();
    assert_eq!(keys.len(), records.len(), "ListRecords lists a key twice");

    for r in records.iter().step_by((records.len() / 40).max(1)) {
        let key = pb::RecordKey {
            reporter: r.reporter.clone(),
            partner: r.partner.clone(),
            flow: r.flow,
            period: r.period.clone(),
            commodity: r.commodity.clone(),
            currency: r
                .value
                .as_ref()
                .map(|v| v.currency_code.clone())
                .unwrap_or_default(),
        };
        let got = trade
            .get_record(pb::GetRecordRequest {
                key: Some(key.clone()),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|s| panic!("GetRecord {key:?}: {s}"));
        assert_eq!(
            got.into_inner().record.as_ref(),
            Some(r),
            "GetRecord differs from ListRecords"
        );
    }

    // Aggregates against brute force, per currency, frequency and commodity level.
    let mut datasets: BTreeMap<(String, i32, i32), Vec<&pb::TradeRecord>> = BTreeMap::new();
    for r in &records {
        let currency = r
            .value
            .as_ref()
            .map(|v| v.currency_code.clone())
            .unwrap_or_default();
        datasets
            .entry((currency, frequency(&r.period), commodity_level(&r.commodity)))
            .or_default()
            .push(r);
    }
    use pb::Dimension::{Commodity, Flow, Partner, Period, Reporter};
    let all_flows: Vec<i32> = (1..=5).collect();
    for ((currency, frequency, level), rows) in &datasets {
        let world: Vec<&pb::TradeRecord> = rows.iter().copied().filter(|r| r.partner == "WLD").collect();
        let countries: Vec<&pb::TradeRecord> = rows.iter().copied().filter(|r| r.partner != "WLD").collect();
        let per_record = |rs: &[&pb::TradeRecord]| -> BTreeMap<Group, (i128, u64)> {
            rs.iter()
                .map(|r| {
                    (
                        (
                            r.reporter.clone(),
                            r.partner.clone(),
                            r.flow,
                            r.commodity.clone(),
                            r.period.clone(),
                        ),
                        (nanos(r.value.as_ref()), 1),
                    )
                })
                .collect()
        };
        let partner_codes: Vec<String> = countries
            .iter()
            .map(|r| r.partner.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let ask =
            |what, partners: Vec<String>, flows: Vec<i32>, group_by: Vec<pb::Dimension>, expected| Question {
                what,
                partners,
                flows,
                group_by,
                expected,
            };
        let mut questions = vec![
            ask(
                "each record (records)",
                vec![],
                all_flows.clone(),
                vec![Reporter, Partner, Flow, Commodity, Period],
                per_record(&countries),
            ),
            ask(
                "each world record (records, partner WLD)",
                vec!["WLD".into()],
                all_flows.clone(),
                vec![Reporter, Partner, Flow, Commodity, Period],
                per_record(&world),
            ),
            ask(
                "flows per reporter (reporter rollup)",
                vec![],
                all_flows.clone(),
                vec![Reporter, Flow, Commodity, Period],
                project(&per_record(&countries), &[Reporter, Flow, Commodity, Period]),
            ),
            ask(
                "flows overall (world rollup)",
                vec![],
                all_flows.clone(),
                vec![Flow, Commodity, Period],
                project(&per_record(&countries), &[Flow, Commodity, Period]),
            ),
            ask(
                "volume per reporter (reporter rollup)",
                vec![],
                vec![],
                vec![Reporter, Commodity, Period],
                project(&volumes(&countries), &[Reporter, Commodity, Period]),
            ),
            ask(
                "volume overall (world rollup)",
                vec![],
                vec![],
                vec![Commodity, Period],
                project(&volumes(&countries), &[Commodity, Period]),
            ),
        ];
        if !partner_codes.is_empty() {
            questions.push(ask(
                "volume per partner (records)",
                partner_codes,
                vec![],
                vec![Reporter, Partner, Commodity, Period],
                project(&volumes(&countries), &[Reporter, Partner, Commodity, Period]),
            ));
        }
        for Question {
            what,
            partners,
            flows,
            group_by,
            expected,
        } in questions
        {
            let request = pb::AggregateRequest {
                selector: Some(pb::RecordSelector {
                    partners,
                    flows,
                    commodity_level: *level,
                    currency: currency.clone(),
                    frequency: *frequency,
                    ..Default::default()
                }),
                group_by: group_by.iter().map(|d| *d as i32).collect(),
                ..Default::default()
            };
            let grand: i128 = expected.values().map(|v| v.0).sum();
            let fits = expected.values().all(|v| fits_money(v.0)) && fits_money(grand);
            let answer = match trade.aggregate(request.clone()).await {
                Ok(answer) => answer.into_inner(),
                // A sum beyond int64 units does not fit google.type.Money.
                Err(s) if !fits && s.code() == Code::OutOfRange => continue,
                Err(s) => panic!("Aggregate {what} for {request:?}: {s}"),
            };
            assert!(
                fits,
                "Aggregate {what} for {request:?}: OK for sums beyond int64 units"
            );
            let got = answer_rows(&answer);
            assert_eq!(
                got, expected,
                "Aggregate {what} ({currency}, frequency {frequency}, level {level}) \
                 differs from the sum of ListRecords"
            );
            assert_eq!(nanos(answer.grand_total.as_ref()), grand, "grand total of {what}");
        }
    }

    // The event log: gap-free from 1 to the head.
    let mut next = 1;
    let mut head = 0;
    loop {
        let page = milestones
            .list_events(pb::ListEventsRequest {
                from_sequence: next,
                limit: 1000,
                ..Default::default()
            })
            .await
            .expect("ListEvents")
            .into_inner();
        head = head.max(page.head_sequence);
        for e in &page.events {
            assert_eq!(
                e.sequence, next,
                "the event log has a gap or repeat before {}",
                e.sequence
            );
            assert!(e.kind.is_some(), "event {} has no kind", e.sequence);
            next += 1;
        }
        assert_eq!(page.next_sequence, next, "ListEvents next_sequence");
        if page.events.is_empty() {
            break;
        }
    }
    assert_eq!(
        next,
        head + 1,
        "the event log ends at {} but the head is {head}",
        next - 1
    );

    // Groups and watches in small pages, so that their tokens are used too.
    let mut groups = Vec::new();
    let mut token = String::new();
    loop {
        let page = trade
            .list_groups(pb::ListGroupsRequest {
                page_size: 2,
                page_token: token,
                ..Default::default()
            })
            .await
            .expect("ListGroups")
            .into_inner();
        groups.extend(page.groups);
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let mut watches = Vec::new();
    let mut token = String::new();
    loop {
        let page = milestones
            .list_watches(pb::ListWatchesRequest {
                page_size: 7,
                page_token: token,
                ..Default::default()
            })
            .await
            .expect("ListWatches")
            .into_inner();
        watches.extend(page.watches);
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    Snapshot {
        records,
        head_sequence: head,
        groups,
        watches,
    }
}
