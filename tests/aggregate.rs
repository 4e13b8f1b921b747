//! Aggregate questions through the gRPC API of a real server: exact totals,
//! trade volume, monthly data, top-N, currencies, groups, WLD and bad
//! questions.

mod common;

use common::{TestServer, delete, delete_group, key_of, put, put_group, seed_records};
use tonic::Code;
use tonic::transport::Channel;
use tonic_types::StatusExt;
use tradewatch::pb::{
    self, CommodityLevel, Dimension, Flow, Frequency, Granularity, OrderBy,
    trade_service_client::TradeServiceClient,
};

type Client = TradeServiceClient<Channel>;

fn money(currency: &str, units: i64, nanos: i32) -> pb::Money {
    pb::Money {
        currency_code: currency.into(),
        units,
        nanos,
    }
}

fn usd(units: i64) -> pb::Money {
    money("USD", units, 0)
}

/// A record with every key part chosen by the caller.
#[allow(clippy::too_many_arguments)]
fn fact(
    reporter: &str,
    partner: &str,
    flow: Flow,
    period: &str,
    commodity: &str,
    currency: &str,
    units: i64,
    nanos: i32,
) -> pb::TradeRecord {
    pb::TradeRecord {
        reporter: reporter.into(),
        partner: partner.into(),
        flow: flow.into(),
        period: period.into(),
        commodity: commodity.into(),
        value: Some(money(currency, units, nanos)),
        source: "test".into(),
        ..Default::default()
    }
}

/// A TOTAL record in USD with whole units.
fn usd_fact(reporter: &str, partner: &str, flow: Flow, period: &str, units: i64) -> pb::TradeRecord {
    fact(reporter, partner, flow, period, "TOTAL", "USD", units, 0)
}

fn ask(selector: pb::RecordSelector, group_by: &[Dimension]) -> pb::AggregateRequest {
    pb::AggregateRequest {
        selector: Some(selector),
        group_by: group_by.iter().map(|&d| d.into()).collect(),
        ..Default::default()
    }
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

fn flows(items: &[Flow]) -> Vec<i32> {
    items.iter().map(|&f| f.into()).collect()
}

async fn aggregate(client: &mut Client, request: pb::AggregateRequest) -> pb::AggregateResponse {
    client
        .aggregate(request.clone())
        .await
        .unwrap_or_else(|e| panic!("{request:?}: {e}"))
        .into_inner()
}

async fn store(client: &mut Client, records: Vec<pb::TradeRecord>) {
    client.put_records(put(records)).await.unwrap();
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn assert_shares_sum_to_100(response: &pb::AggregateResponse) {
    let sum: f64 = response.rows.iter().map(|r| r.share_percent).sum();
    assert!((sum - 100.0).abs() < 1e-6, "shares sum to {sum}");
}

/// (period, total, record_count) of each row.
fn by_period(response: &pb::AggregateResponse) -> Vec<(String, pb::Money, u64)> {
    response
        .rows
        .iter()
        .map(|r| (r.period.clone(), r.total.clone().unwrap(), r.record_count))
        .collect()
}

#[tokio::test]
async fn the_seed_question_is_one_call() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    store(&mut client, seed_records()).await;

    let answer = aggregate(
        &mut client,
        pb::AggregateRequest {
            selector: Some(pb::RecordSelector {
                reporters: strings(&["CHN"]),
                partners: strings(&["CENTRAL_ASIA"]),
                ..Default::default()
            }),
            group_by: vec![Dimension::Period.into()],
            granularity: Granularity::Year.into(),
            ..Default::default()
        },
    )
    .await;

    assert_eq!(answer.currency, "USD");
    assert_eq!(answer.frequency(), Frequency::Annual);
    assert_eq!(
        by_period(&answer),
        [
            ("2023".to_owned(), usd(89_300_000_000), 5),
            ("2024".to_owned(), usd(94_820_000_000), 5),
            ("2025".to_owned(), usd(106_300_000_000), 5),
        ]
    );
    let [y2023, y2024, y2025] = &answer.rows[..] else {
        panic!("three rows: {answer:?}");
    };
    assert_eq!(y2023.previous_year_total, None);
    assert_eq!(y2023.yoy_growth_percent, None);
    assert_eq!(y2024.previous_year_total, Some(usd(89_300_000_000)));
    assert_eq!(round1(y2024.yoy_growth_percent.unwrap()), 6.2);
    assert!((y2024.yoy_growth_percent.unwrap() - 6.1814).abs() < 1e-3);
    assert_eq!(y2025.previous_year_total, Some(usd(94_820_000_000)));
    assert_eq!(round1(y2025.yoy_growth_percent.unwrap()), 12.1);
    assert!(answer.rows.iter().all(|r| r.months_covered.is_empty()));
    assert!(
        answer
            .rows
            .iter()
            .all(|r| r.reporter.is_empty() && r.partner.is_empty())
    );

    assert_eq!(answer.grand_total, Some(usd(290_420_000_000)));
    assert_eq!(answer.record_count, 15);
    assert_shares_sum_to_100(&answer);
    assert!((y2025.share_percent - 106.3 / 290.42 * 100.0).abs() < 1e-9);
}

#[tokio::test]
async fn a_period_range_still_compares_with_the_year_before_it() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    store(&mut client, seed_records()).await;

    let answer = aggregate(
        &mut client,
        ask(
            pb::RecordSelector {
                reporters: strings(&["CHN"]),
                partners: strings(&["CENTRAL_ASIA"]),
                period_from: "2024".into(),
                period_to: "2024".into(),
                ..Default::default()
            },
            &[Dimension::Period],
        ),
    )
    .await;
    assert_eq!(by_period(&answer), [("2024".to_owned(), usd(94_820_000_000), 5)]);
    assert_eq!(answer.rows[0].previous_year_total, Some(usd(89_300_000_000)));
    assert_eq!(answer.grand_total, Some(usd(94_820_000_000)));
    assert_eq!(answer.record_count, 5, "the year before is not counted");

    // Rows order by partner before period whatever the group_by order, and
    // each partner's growth is its own.
    let answer = aggregate(
        &mut client,
        ask(
            pb::RecordSelector {
                reporters: strings(&["CHN"]),
                partners: strings(&["KAZ", "TKM"]),
                period_from: "2024".into(),
                ..Default::default()
            },
            &[Dimension::Period, Dimension::Partner],
        ),
    )
    .await;
    let rows: Vec<_> = answer
        .rows
        .iter()
        .map(|r| {
            (
                r.partner.as_str(),
                r.period.as_str(),
                r.total.as_ref().unwrap().units,
                r.previous_year_total.as_ref().unwrap().units,
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            ("KAZ", "2024", 43_820_000_000, 41_000_000_000),
            ("KAZ", "2025", 48_600_000_000, 43_820_000_000),
            ("TKM", "2024", 10_650_000_000, 10_600_000_000),
            ("TKM", "2025", 10_000_000_000, 10_650_000_000),
        ]
    );
    let tkm_2025 = answer.rows[3].yoy_growth_percent.unwrap();
    assert!(
        (tkm_2025 - (10.0 / 10.65 - 1.0) * 100.0).abs() < 1e-9,
        "{tkm_2025}"
    );
    assert!(tkm_2025 < 0.0);

    // A group and one of its members name that member once.
    let overlapping = aggregate(
        &mut client,
        ask(
            pb::RecordSelector {
                reporters: strings(&["CHN"]),
                partners: strings(&["CENTRAL_ASIA", "KAZ"]),
                ..Default::default()
            },
            &[],
        ),
    )
    .await;
    assert_eq!(overlapping.grand_total, Some(usd(290_420_000_000)));
    assert_eq!(overlapping.record_count, 15);

    // One row with the grand total when nothing is grouped.
    let answer = aggregate(
        &mut client,
        ask(
            pb::RecordSelector {
                reporters: strings(&["CHN"]),
                partners: strings(&["CENTRAL_ASIA"]),
                ..Default::default()
            },
            &[],
        ),
    )
    .await;
    assert_eq!(answer.rows.len(), 1);
    assert_eq!(answer.rows[0].total, Some(usd(290_420_000_000)));
    assert_eq!(answer.rows[0].record_count, 15);
    assert_eq!(answer.rows[0].share_percent, 100.0);
    assert_eq!(answer.rows[0].previous_year_total, None);
    assert_eq!(answer.rows[0].yoy_growth_percent, None);
}

/// The three ways a CHN-only store can be asked: with partners (records),
/// with reporters only (reporter rollup), with neither (world rollup).
fn three_selectors(base: pb::RecordSelector) -> [pb::RecordSelector; 3] {
    [
        pb::RecordSelector {
            reporters: strings(&["CHN"]),
            partners: strings(&["KAZ", "KGZ"]),
            ..base.clone()
        },
        pb::RecordSelector {
            reporters: strings(&["CHN"]),
            ..base.clone()
        },
        base,
    ]
}

/// Asks the same question through all three paths; they must agree.
async fn ask_three_ways(
    client: &mut Client,
    base: pb::RecordSelector,
    group_by: &[Dimension],
) -> pb::AggregateResponse {
    let mut answers = Vec::new();
    for selector in three_selectors(base) {
        answers.push((selector.clone(), aggregate(client, ask(selector, group_by)).await));
    }
    let (_, first) = answers[0].clone();
    for (selector, answer) in &answers[1..] {
        assert_eq!(answer, &first, "{selector:?} disagrees with the record path");
    }
    first
}

#[tokio::test]
async fn trade_volume_is_counted_once_on_every_path() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let kaz_turnover = fact("CHN", "KAZ", Flow::Turnover, "2025", "TOTAL", "USD", 100, 0);
    store(
        &mut client,
        vec![
            // KAZ: published turnover and its parts (which need not add up).
            kaz_turnover.clone(),
            fact(
                "CHN",
                "KAZ",
                Flow::Export,
                "2025",
                "TOTAL",
                "USD",
                60,
                600_000_000,
            ),
            fact(
                "CHN",
                "KAZ",
                Flow::Import,
                "2025",
                "TOTAL",
                "USD",
                45,
                700_000_000,
            ),
            fact("CHN", "KAZ", Flow::ReExport, "2025", "TOTAL", "USD", 7, 0),
            // KGZ: exports and imports only.
            fact(
                "CHN",
                "KGZ",
                Flow::Export,
                "2025",
                "TOTAL",
                "USD",
                30,
                250_000_000,
            ),
            fact("CHN", "KGZ", Flow::Import, "2025", "TOTAL", "USD", 20, 0),
        ],
    )
    .await;

    // No flows: turnover for KAZ, exports + imports for KGZ.
    let volume = ask_three_ways(&mut client, pb::RecordSelector::default(), &[]).await;
    assert_eq!(volume.grand_total, Some(money("USD", 150, 250_000_000)));
    assert_eq!(volume.record_count, 3);
    assert_eq!(volume.rows.len(), 1);
    assert_eq!(volume.rows[0].flow(), Flow::Unspecified);

    let by_year = ask_three_ways(&mut client, pb::RecordSelector::default(), &[Dimension::Period]).await;
    assert_eq!(
        by_period(&by_year),
        [("2025".to_owned(), money("USD", 150, 250_000_000), 3)]
    );

    // Per partner (records path only: the rollups do not keep partners).
    let per_partner = aggregate(
        &mut client,
        ask(
            pb::RecordSelector {
                reporters: strings(&["CHN"]),
                ..Default::default()
            },
            &[Dimension::Partner],
        ),
    )
    .await;
    let rows: Vec<_> = per_partner
        .rows
        .iter()
        .map(|r| (r.partner.as_str(), r.total.clone().unwrap(), r.record_count))
        .collect();
    assert_eq!(
        rows,
        [
            ("KAZ", money("USD", 100, 0), 1),
            ("KGZ", money("USD", 50, 250_000_000), 2)
        ]
    );

    // Naming flows sums exactly those.
    let named = pb::RecordSelector {
        flows: flows(&[Flow::Export, Flow::Import]),
        ..Default::default()
    };
    let exports_imports = ask_three_ways(&mut client, named.clone(), &[]).await;
    assert_eq!(exports_imports.grand_total, Some(money("USD", 156, 550_000_000)));
    assert_eq!(exports_imports.record_count, 4);

    let per_flow = ask_three_ways(&mut client, named, &[Dimension::Flow]).await;
    let rows: Vec<_> = per_flow
        .rows
        .iter()
        .map(|r| (r.flow(), r.total.clone().unwrap(), r.record_count))
        .collect();
    assert_eq!(
        rows,
        [
            (Flow::Export, money("USD", 90, 850_000_000), 2),
            (Flow::Import, money("USD", 65, 700_000_000), 2),
        ]
    );
    assert_shares_sum_to_100(&per_flow);

    let re_exports = ask_three_ways(
        &mut client,
        pb::RecordSelector {
            flows: flows(&[Flow::ReExport]),
            ..Default::default()
        },
        &[Dimension::Flow],
    )
    .await;
    assert_eq!(re_exports.rows.len(), 1);
    assert_eq!(re_exports.rows[0].flow(), Flow::ReExport);
    assert_eq!(re_exports.grand_total, Some(usd(7)));

    // Deleting the turnover: KAZ falls back to exports + imports.
    client.delete_record(delete(key_of(&kaz_turnover))).await.unwrap();
    let volume = ask_three_ways(&mut client, pb::RecordSelector::default(), &[]).await;
    assert_eq!(volume.grand_total, Some(money("USD", 156, 550_000_000)));
    assert_eq!(volume.record_count, 4);

    // A revision of a part now moves the volume.
    store(
        &mut client,
        vec![fact("CHN", "KAZ", Flow::Import, "2025", "TOTAL", "USD", 50, 0)],
    )
    .await;
    let volume = ask_three_ways(&mut client, pb::RecordSelector::default(), &[]).await;
    assert_eq!(volume.grand_total, Some(money("USD", 160, 850_000_000)));
    assert_eq!(volume.record_count, 4);

    // Publishing the turnover again hides the parts again.
    store(&mut client, vec![kaz_turnover]).await;
    let volume = ask_three_ways(&mut client, pb::RecordSelector::default(), &[]).await;
    assert_eq!(volume.grand_total, Some(money("USD", 150, 250_000_000)));
    assert_eq!(volume.record_count, 3);
}

#[tokio::test]
async fn turnover_and_its_parts_in_one_batch_are_counted_once() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    // Parts first, turnover last, all in one write.
    store(
        &mut client,
        vec![
            usd_fact("CHN", "KAZ", Flow::Export, "2025", 60),
            usd_fact("CHN", "KAZ", Flow::Import, "2025", 45),
            usd_fact("CHN", "KAZ", Flow::Turnover, "2025", 100),
        ],
    )
    .await;
    let volume = ask_three_ways(&mut client, pb::RecordSelector::default(), &[]).await;
    assert_eq!(volume.grand_total, Some(usd(100)));
    assert_eq!(volume.record_count, 1);
}

fn monthly_kaz(period: &str, units: i64) -> pb::TradeRecord {
    usd_fact("CHN", "KAZ", Flow::Turnover, period, units)
}

#[tokio::test]
async fn monthly_data_by_quarter_year_to_date_and_month() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let mut records: Vec<_> = (1..=12)
        .map(|m| monthly_kaz(&format!("2024-{m:02}"), 1_000 * m))
        .collect();
    records.extend([
        monthly_kaz("2025-01", 1_500),
        monthly_kaz("2025-02", 2_500),
        monthly_kaz("2025-03", 3_300),
        monthly_kaz("2025-04", 4_000),
        // Annual figures are another dataset.
        monthly_kaz("2025", 999_999),
        monthly_kaz("2024", 888_888),
    ]);
    store(&mut client, records).await;

    let monthly = |granularity: Granularity, selector: pb::RecordSelector| pb::AggregateRequest {
        selector: Some(pb::RecordSelector {
            frequency: Frequency::Monthly.into(),
            ..selector
        }),
        group_by: vec![Dimension::Period.into()],
        granularity: granularity.into(),
        ..Default::default()
    };
    let with_partner = || pb::RecordSelector {
        reporters: strings(&["CHN"]),
        partners: strings(&["KAZ"]),
        ..Default::default()
    };

    // Quarters.
    let quarters = aggregate(&mut client, monthly(Granularity::Quarter, with_partner())).await;
    assert_eq!(quarters.frequency(), Frequency::Monthly);
    assert_eq!(
        by_period(&quarters),
        [
            ("2024-Q1".to_owned(), usd(6_000), 3),
            ("2024-Q2".to_owned(), usd(15_000), 3),
            ("2024-Q3".to_owned(), usd(24_000), 3),
            ("2024-Q4".to_owned(), usd(33_000), 3),
            ("2025-Q1".to_owned(), usd(7_300), 3),
            ("2025-Q2".to_owned(), usd(4_000), 1),
        ]
    );
    assert_eq!(quarters.rows[0].months_covered, ["2024-01", "2024-02", "2024-03"]);
    assert_eq!(quarters.rows[0].previous_year_total, None);
    let q1 = &quarters.rows[4];
    assert_eq!(q1.months_covered, ["2025-01", "2025-02", "2025-03"]);
    assert_eq!(q1.previous_year_total, Some(usd(6_000)));
    assert!((q1.yoy_growth_percent.unwrap() - (7_300.0 / 6_000.0 - 1.0) * 100.0).abs() < 1e-9);
    let q2 = &quarters.rows[5];
    assert_eq!(q2.months_covered, ["2025-04"]);
    assert_eq!(
        q2.previous_year_total,
        Some(usd(4_000)),
        "a partial quarter compares with the same months"
    );
    assert_eq!(q2.yoy_growth_percent, Some(0.0));
    assert_eq!(quarters.grand_total, Some(usd(78_000 + 11_300)));
    assert_eq!(quarters.record_count, 16);
    assert_shares_sum_to_100(&quarters);

    // Years from months: 2025 is year to date, compared with Jan–Apr 2024.
    let years = aggregate(&mut client, monthly(Granularity::Year, with_partner())).await;
    assert_eq!(
        by_period(&years),
        [
            ("2024".to_owned(), usd(78_000), 12),
            ("2025".to_owned(), usd(11_300), 4),
        ]
    );
    let all_2024: Vec<String> = (1..=12).map(|m| format!("2024-{m:02}")).collect();
    assert_eq!(years.rows[0].months_covered, all_2024);
    assert_eq!(years.rows[0].previous_year_total, None);
    assert_eq!(years.rows[0].yoy_growth_percent, None);
    let ytd = &years.rows[1];
    assert_eq!(ytd.months_covered, ["2025-01", "2025-02", "2025-03", "2025-04"]);
    assert_eq!(ytd.previous_year_total, Some(usd(10_000)));
    assert_eq!(round1(ytd.yoy_growth_percent.unwrap()), 13.0);

    // A year bound on monthly data covers that year's months, and growth
    // still looks a year back.
    let only_2025 = aggregate(
        &mut client,
        monthly(
            Granularity::Year,
            pb::RecordSelector {
                period_from: "2025".into(),
                ..with_partner()
            },
        ),
    )
    .await;
    assert_eq!(by_period(&only_2025), [("2025".to_owned(), usd(11_300), 4)]);
    assert_eq!(only_2025.rows[0].previous_year_total, Some(usd(10_000)));
    assert_eq!(only_2025.record_count, 4);

    // Months (the default granularity for monthly data), bounded by months.
    let months = aggregate(
        &mut client,
        monthly(
            Granularity::Unspecified,
            pb::RecordSelector {
                period_from: "2025-02".into(),
                period_to: "2025-03".into(),
                ..with_partner()
            },
        ),
    )
    .await;
    assert_eq!(
        by_period(&months),
        [
            ("2025-02".to_owned(), usd(2_500), 1),
            ("2025-03".to_owned(), usd(3_300), 1),
        ]
    );
    assert_eq!(months.rows[0].months_covered, ["2025-02"]);
    assert_eq!(months.rows[0].previous_year_total, Some(usd(2_000)));
    assert_eq!(months.rows[1].previous_year_total, Some(usd(3_000)));
    assert_eq!(round1(months.rows[1].yoy_growth_percent.unwrap()), 10.0);
    assert_eq!(months.grand_total, Some(usd(5_800)));

    // The rollup paths give the same monthly answers.
    for selector in [
        pb::RecordSelector {
            reporters: strings(&["CHN"]),
            ..Default::default()
        },
        pb::RecordSelector::default(),
    ] {
        for (granularity, expected) in [(Granularity::Quarter, &quarters), (Granularity::Year, &years)] {
            let answer = aggregate(&mut client, monthly(granularity, selector.clone())).await;
            assert_eq!(&answer, expected, "{selector:?} {granularity:?}");
        }
    }

    // The annual dataset leaves the months out, and vice versa.
    let annual = aggregate(
        &mut client,
        ask(
            pb::RecordSelector {
                reporters: strings(&["CHN"]),
                partners: strings(&["KAZ"]),
                ..Default::default()
            },
            &[Dimension::Period],
        ),
    )
    .await;
    assert_eq!(annual.frequency(), Frequency::Annual);
    assert_eq!(
        by_period(&annual),
        [
            ("2024".to_owned(), usd(888_888), 1),
            ("2025".to_owned(), usd(999_999), 1),
        ]
    );
    assert!(annual.rows.iter().all(|r| r.months_covered.is_empty()));
    assert_eq!(annual.rows[1].previous_year_total, Some(usd(888_888)));
    let annual_world = aggregate(
        &mut client,
        ask(
            pb::RecordSelector {
                frequency: Frequency::Annual.into(),
                ..Default::default()
            },
            &[],
        ),
    )
    .await;
    assert_eq!(annual_world.grand_total, Some(usd(888_888 + 999_999)));
    assert_eq!(annual_world.record_count, 2);
}

#[tokio::test]

async fn a_month_bound_still_compares_with_the_same_months_a_year_earlier() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let mut records: Vec<_> = (1..=12)
        .map(|m| monthly_kaz(&format!("2024-{m:02}"), 1_000 * m))
        .collect();
    records.extend([
        monthly_kaz("2025-01", 1_500),
        monthly_kaz("2025-02", 2_500),
        monthly_kaz("2025-03", 3_300),
        monthly_kaz("2025-04", 4_000),
    ]);
    store(&mut client, records).await;

    let request = |granularity: Granularity| pb::AggregateRequest {
        selector: Some(pb::RecordSelector {
            frequency: Frequency::Monthly.into(),
            period_from: "2024-03".into(),
            ..Default::default()
        }),
        group_by: vec![Dimension::Period.into()],
        granularity: granularity.into(),
        ..Default::default()
    };
    let years = aggregate(&mut client, request(Granularity::Year)).await;
    assert_eq!(
        by_period(&years),
        [
            ("2024".to_owned(), usd(75_000), 10),
            ("2025".to_owned(), usd(11_300), 4),
        ]
    );
    // The store has January to April 2024; that they lie partly before
    // period_from does not make them unknown.
    assert_eq!(
        years.rows[1].months_covered,
        ["2025-01", "2025-02", "2025-03", "2025-04"]
    );
    assert_eq!(years.rows[1].previous_year_total, Some(usd(10_000)));
    assert_eq!(round1(years.rows[1].yoy_growth_percent.unwrap()), 13.0);

    let quarters = aggregate(&mut client, request(Granularity::Quarter)).await;
    let q1_2025 = quarters.rows.iter().find(|r| r.period == "2025-Q1").unwrap();
    assert_eq!(q1_2025.previous_year_total, Some(usd(6_000)));
}

#[tokio::test]
async fn year_to_date_growth_needs_every_month_a_year_earlier() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    store(
        &mut client,
        vec![
            monthly_kaz("2024-01", 100),
            monthly_kaz("2024-03", 300),
            monthly_kaz("2025-01", 110),
            monthly_kaz("2025-02", 220),
        ],
    )
    .await;
    let answer = aggregate(
        &mut client,
        pb::AggregateRequest {
            selector: Some(pb::RecordSelector {
                frequency: Frequency::Monthly.into(),
                ..Default::default()
            }),
            group_by: vec![Dimension::Period.into()],
            granularity: Granularity::Year.into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        by_period(&answer),
        [("2024".to_owned(), usd(400), 2), ("2025".to_owned(), usd(330), 2),]
    );
    assert_eq!(answer.rows[0].months_covered, ["2024-01", "2024-03"]);
    // February 2024 is missing: there is no like-for-like comparison.
    assert_eq!(answer.rows[1].previous_year_total, None);
    assert_eq!(answer.rows[1].yoy_growth_percent, None);
}

#[tokio::test]
async fn top_commodities_by_hs2_chapter() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let commodity =
        |code: &str, units: i64| fact("CHN", "KAZ", Flow::Turnover, "2025", code, "USD", units, 0);
    store(
        &mut client,
        vec![
            commodity("TOTAL", 5_000),
            commodity("27", 500),
            commodity("84", 300),
            commodity("85", 400),
            commodity("72", 200),
            commodity("26", 100),
            commodity("90", 300),
            commodity("2701", 120),
            commodity("2709", 350),
            commodity("8471", 90),
            commodity("270900", 340),
        ],
    )
    .await;

    let hs2 = |order: OrderBy, limit: u32, partners: &[&str]| pb::AggregateRequest {
        selector: Some(pb::RecordSelector {
            partners: strings(partners),
            commodity_level: CommodityLevel::Hs2.into(),
            ..Default::default()
        }),
        group_by: vec![Dimension::Commodity.into()],
        order_by: order.into(),
        limit,
        ..Default::default()
    };
    let rows = |answer: &pb::AggregateResponse| -> Vec<(String, i64)> {
        answer
            .rows
            .iter()
            .map(|r| (r.commodity.clone(), r.total.as_ref().unwrap().units))
            .collect()
    };

    for partners in [&["KAZ"][..], &[]] {
        let top3 = aggregate(&mut client, hs2(OrderBy::TotalDesc, 3, partners)).await;
        assert_eq!(
            rows(&top3),
            [("27".into(), 500), ("85".into(), 400), ("84".into(), 300)]
        );
        assert_eq!(top3.grand_total, Some(usd(1_800)), "over all HS2 rows");
        assert_eq!(top3.record_count, 6);
        assert!((top3.rows[0].share_percent - 500.0 / 18.0).abs() < 1e-9);

        // Ties are broken by commodity code, both ways.
        let top4 = aggregate(&mut client, hs2(OrderBy::TotalDesc, 4, partners)).await;
        assert_eq!(
            rows(&top4),
            [
                ("27".into(), 500),
                ("85".into(), 400),
                ("84".into(), 300),
                ("90".into(), 300)
            ]
        );
        let bottom4 = aggregate(&mut client, hs2(OrderBy::TotalAsc, 4, partners)).await;
        assert_eq!(
            rows(&bottom4),
            [
                ("26".into(), 100),
                ("72".into(), 200),
                ("84".into(), 300),
                ("90".into(), 300)
            ]
        );

        let all = aggregate(&mut client, hs2(OrderBy::Unspecified, 0, partners)).await;
        assert_eq!(
            rows(&all),
            [
                ("26".into(), 100),
                ("27".into(), 500),
                ("72".into(), 200),
                ("84".into(), 300),
                ("85".into(), 400),
                ("90".into(), 300)
            ]
        );
        assert_shares_sum_to_100(&all);
    }

    // HS4 headings under chapter 27.
    for partners in [&["KAZ"][..], &[]] {
        let answer = aggregate(
            &mut client,
            pb::AggregateRequest {
                selector: Some(pb::RecordSelector {
                    partners: strings(partners),
                    commodity_level: CommodityLevel::Hs4.into(),
                    commodity_prefix: "27".into(),
                    ..Default::default()
                }),
                group_by: vec![Dimension::Commodity.into()],
                ..Default::default()
            },
        )
        .await;
        assert_eq!(rows(&answer), [("2701".into(), 120), ("2709".into(), 350)]);
        assert_eq!(answer.grand_total, Some(usd(470)));
    }

    // Exact codes that do not overlap; the default is TOTAL alone.
    let exact = aggregate(
        &mut client,
        ask(
            pb::RecordSelector {
                commodities: strings(&["27", "8471"]),
                ..Default::default()
            },
            &[Dimension::Commodity],
        ),
    )
    .await;
    assert_eq!(rows(&exact), [("27".into(), 500), ("8471".into(), 90)]);
    let total = aggregate(
        &mut client,
        ask(pb::RecordSelector::default(), &[Dimension::Commodity]),
    )
    .await;
    assert_eq!(rows(&total), [("TOTAL".into(), 5_000)]);
}

#[tokio::test]
async fn currencies_are_never_mixed() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    store(
        &mut client,
        vec![
            fact("CHN", "KAZ", Flow::Turnover, "2025", "TOTAL", "USD", 100, 0),
            fact(
                "CHN",
                "KAZ",
                Flow::Turnover,
                "2025",
                "TOTAL",
                "CNY",
                700,
                500_000_000,
            ),
            fact("CHN", "KGZ", Flow::Export, "2025", "TOTAL", "CNY", 10, 0),
            fact("CHN", "KGZ", Flow::Import, "2025", "TOTAL", "CNY", 20, 0),
            fact("CHN", "KGZ", Flow::Turnover, "2025", "TOTAL", "USD", 4, 0),
        ],
    )
    .await;

    for base in three_selectors(pb::RecordSelector::default()) {
        let dollars = aggregate(&mut client, ask(base.clone(), &[Dimension::Period])).await;
        assert_eq!(dollars.currency, "USD");
        assert_eq!(
            by_period(&dollars),
            [("2025".to_owned(), usd(104), 2)],
            "{base:?}"
        );
        assert_eq!(dollars.grand_total, Some(usd(104)));

        let yuan = aggregate(
            &mut client,
            ask(
                pb::RecordSelector {
                    currency: "CNY".into(),
                    ..base.clone()
                },
                &[Dimension::Period],
            ),
        )
        .await;
        assert_eq!(yuan.currency, "CNY");
        assert_eq!(
            by_period(&yuan),
            [("2025".to_owned(), money("CNY", 730, 500_000_000), 3)],
            "{base:?}"
        );
        assert_eq!(yuan.grand_total, Some(money("CNY", 730, 500_000_000)));

        let euros = aggregate(
            &mut client,
            ask(
                pb::RecordSelector {
                    currency: "EUR".into(),
                    ..base.clone()
                },
                &[Dimension::Period],
            ),
        )
        .await;
        assert!(euros.rows.is_empty());
        assert_eq!(euros.grand_total, Some(money("EUR", 0, 0)));
        assert_eq!(euros.record_count, 0);
    }
}

#[tokio::test]
async fn a_group_edit_changes_the_next_answer() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    store(&mut client, seed_records()).await;
    let question = |partners: &str| {
        ask(
            pb::RecordSelector {
                reporters: strings(&["CHN"]),
                partners: strings(&[partners]),
                period_from: "2025".into(),
                ..Default::default()
            },
            &[Dimension::Period],
        )
    };
    let total_2025 = |answer: &pb::AggregateResponse| answer.rows[0].total.clone().unwrap();

    let before = aggregate(&mut client, question("CENTRAL_ASIA")).await;
    assert_eq!(total_2025(&before), usd(106_300_000_000));

    client
        .put_group(put_group(pb::PartnerGroup {
            name: "CENTRAL_ASIA".into(),
            members: strings(&["KGZ", "KAZ"]),
            ..Default::default()
        }))
        .await
        .unwrap();
    let after = aggregate(&mut client, question("CENTRAL_ASIA")).await;
    assert_eq!(total_2025(&after), usd(75_800_000_000));
    assert_eq!(after.record_count, 2);
    assert_eq!(after.rows[0].previous_year_total, Some(usd(66_530_000_000)));

    client
        .put_group(put_group(pb::PartnerGroup {
            name: "CASPIAN_STATES".into(),
            members: strings(&["KAZ", "TKM"]),
            ..Default::default()
        }))
        .await
        .unwrap();
    let caspian = aggregate(&mut client, question("CASPIAN_STATES")).await;
    assert_eq!(total_2025(&caspian), usd(58_600_000_000));

    // A group as the reporter.
    let reporting = aggregate(
        &mut client,
        ask(
            pb::RecordSelector {
                reporters: strings(&["CENTRAL_ASIA"]),
                ..Default::default()
            },
            &[Dimension::Reporter],
        ),
    )
    .await;
    assert_eq!(reporting.rows.len(), 0, "TJK is no longer a member");
    client
        .put_group(put_group(pb::PartnerGroup {
            name: "CENTRAL_ASIA".into(),
            members: strings(&["KAZ", "KGZ", "TJK", "TKM", "UZB"]),
            ..Default::default()
        }))
        .await
        .unwrap();
    let reporting = aggregate(
        &mut client,
        ask(
            pb::RecordSelector {
                reporters: strings(&["CENTRAL_ASIA"]),
                ..Default::default()
            },
            &[Dimension::Reporter],
        ),
    )
    .await;
    assert_eq!(reporting.rows.len(), 1);
    assert_eq!(reporting.rows[0].reporter, "TJK");
    assert_eq!(reporting.rows[0].total, Some(usd(1_960_000_000)));

    client.delete_group(delete_group("CASPIAN_STATES")).await.unwrap();
    let status = client.aggregate(question("CASPIAN_STATES")).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
}

/// The server keeps the records of series it has read decoded in memory.
/// Every acknowledged write must show in the next answer, while other
/// clients keep asking (and so keep refilling that memory) all along: a
/// series read just before a write and kept just after it would answer
/// with the old value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_follow_every_acknowledged_write_while_others_ask() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let question = ask(
        pb::RecordSelector {
            reporters: strings(&["CHN"]),
            partners: strings(&["CENTRAL_ASIA"]),
            ..Default::default()
        },
        &[Dimension::Period],
    );
    let total = |answer: &pb::AggregateResponse| answer.grand_total.clone().unwrap();
    store(&mut client, vec![usd_fact("CHN", "UZB", Flow::Import, "2025", 1)]).await;

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut askers = Vec::new();
    for _ in 0..3 {
        let mut client = server.client().await;
        let (question, stop) = (question.clone(), stop.clone());
        askers.push(tokio::spawn(async move {
            let mut asked = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                aggregate(&mut client, question.clone()).await;
                asked += 1;
            }
            asked
        }));
    }
    for units in 2..=400 {
        store(
            &mut client,
            vec![usd_fact("CHN", "KAZ", Flow::Export, "2025", units)],
        )
        .await;
        let answer = aggregate(&mut client, question.clone()).await;
        assert_eq!(total(&answer), usd(units + 1), "after writing {units}");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for asker in askers {
        assert!(asker.await.unwrap() > 0);
    }
}

/// A question may name long lists: every country as reporter and partner
/// and 10,000 HS4 codes fit in a 60 KB request and name 600 million
/// series. Listing them all to read each through the server's series cache
/// would take gigabytes; it must be answered (here: from the one record it
/// matches) without that.
#[tokio::test]
async fn a_question_naming_millions_of_series_is_answered() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    store(
        &mut client,
        vec![fact("CHN", "KAZ", Flow::Export, "2025", "2709", "USD", 7, 0)],
    )
    .await;
    // Every ISO 3166-1 alpha-3 code.
    let countries: Vec<String> = ('A'..='Z')
        .flat_map(|a| ('A'..='Z').flat_map(move |b| ('A'..='Z').map(move |c| format!("{a}{b}{c}"))))
        .filter(|code| celes::Country::from_alpha3(code).is_ok())
        .collect();
    assert!(countries.len() > 240, "{} ISO codes", countries.len());
    let (reporters, partners) = (countries.clone(), countries);
    let request = pb::AggregateRequest {
        selector: Some(pb::RecordSelector {
            reporters,
            partners,
            commodities: (0..10_000).map(|c| format!("{c:04}")).collect(),
            ..Default::default()
        }),
        ..Default::default()
    };
    // Walking every combination took minutes; reading the stored ones takes
    // milliseconds.
    let mut request = tonic::Request::new(request);
    request.set_timeout(std::time::Duration::from_secs(30));
    let answer = client
        .aggregate(request)
        .await
        .expect("answered within 30 s")
        .into_inner();
    assert_eq!(answer.grand_total, Some(usd(7)));
}

#[tokio::test]
async fn world_partner_figures_are_only_counted_when_named() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    store(
        &mut client,
        vec![
            usd_fact("CHN", "WLD", Flow::Turnover, "2025", 6_000),
            usd_fact("CHN", "KAZ", Flow::Turnover, "2025", 100),
            usd_fact("CHN", "KGZ", Flow::Export, "2025", 30),
            usd_fact("CHN", "WLD", Flow::Export, "2025", 3_500),
        ],
    )
    .await;

    for selector in [
        pb::RecordSelector {
            reporters: strings(&["CHN"]),
            ..Default::default()
        },
        pb::RecordSelector::default(),
    ] {
        let answer = aggregate(&mut client, ask(selector.clone(), &[])).await;
        assert_eq!(answer.grand_total, Some(usd(130)), "{selector:?}");
        assert_eq!(answer.record_count, 2);

        let exports = aggregate(
            &mut client,
            ask(
                pb::RecordSelector {
                    flows: flows(&[Flow::Export]),
                    ..selector.clone()
                },
                &[],
            ),
        )
        .await;
        assert_eq!(exports.grand_total, Some(usd(30)), "{selector:?}");

        let per_partner = aggregate(&mut client, ask(selector.clone(), &[Dimension::Partner])).await;
        let partners: Vec<_> = per_partner.rows.iter().map(|r| r.partner.as_str()).collect();
        assert_eq!(partners, ["KAZ", "KGZ"], "{selector:?}");
        assert_eq!(per_partner.grand_total, Some(usd(130)));
    }

    let world = aggregate(
        &mut client,
        ask(
            pb::RecordSelector {
                partners: strings(&["WLD"]),
                ..Default::default()
            },
            &[Dimension::Partner],
        ),
    )
    .await;
    assert_eq!(world.rows.len(), 1);
    assert_eq!(world.rows[0].partner, "WLD");
    assert_eq!(world.rows[0].total, Some(usd(6_000)));
    assert_eq!(world.record_count, 1);
}

/// Asks a bad question; returns the one BadRequest violation's description.
async fn rejected(client: &mut Client, request: pb::AggregateRequest, field: &str) -> String {
    let status = client.aggregate(request.clone()).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{request:?}: {status:?}");
    let violations = status
        .get_details_bad_request()
        .unwrap_or_else(|| panic!("{request:?}: no BadRequest in {status:?}"))
        .field_violations;
    let fields: Vec<_> = violations.iter().map(|v| v.field.as_str()).collect();
    assert_eq!(fields, [field], "{request:?}");
    assert!(status.message().contains(field), "{}", status.message());
    violations[0].description.clone()
}

#[tokio::test]
async fn bad_questions_name_the_field() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    store(&mut client, seed_records()).await;

    let description = rejected(
        &mut client,
        ask(
            pb::RecordSelector {
                partners: strings(&["NOWHERE_LAND"]),
                ..Default::default()
            },
            &[],
        ),
        "selector.partners[0]",
    )
    .await;
    assert!(description.contains("NOWHERE_LAND"), "{description}");

    let description = rejected(
        &mut client,
        ask(
            pb::RecordSelector {
                period_from: "2025".into(),
                period_to: "2023".into(),
                ..Default::default()
            },
            &[Dimension::Period],
        ),
        "selector.period_from",
    )
    .await;
    assert!(
        description.contains("2025") && description.contains("2023"),
        "{description}"
    );

    let description = rejected(
        &mut client,
        pb::AggregateRequest {
            selector: Some(pb::RecordSelector::default()),
            group_by: vec![Dimension::Period.into()],
            granularity: Granularity::Month.into(),
            ..Default::default()
        },
        "granularity",
    )
    .await;
    assert!(
        description.contains("month") && description.contains("FREQUENCY_MONTHLY"),
        "{description}"
    );

    let description = rejected(
        &mut client,
        pb::AggregateRequest {
            selector: Some(pb::RecordSelector::default()),
            group_by: vec![Dimension::Period.into()],
            granularity: Granularity::Quarter.into(),
            ..Default::default()
        },
        "granularity",
    )
    .await;
    assert!(description.contains("quarter"), "{description}");

    let description = rejected(
        &mut client,
        ask(pb::RecordSelector::default(), &[Dimension::Flow]),
        "group_by",
    )
    .await;
    assert!(description.contains("selector.flows"), "{description}");

    let description = rejected(
        &mut client,
        ask(
            pb::RecordSelector {
                commodities: strings(&["27", "2701"]),
                ..Default::default()
            },
            &[],
        ),
        "selector.commodities",
    )
    .await;
    assert!(
        description.contains("27") && description.contains("2701"),
        "{description}"
    );

    let description = rejected(
        &mut client,
        ask(
            pb::RecordSelector {
                commodities: strings(&["TOTAL", "27"]),
                ..Default::default()
            },
            &[],
        ),
        "selector.commodities",
    )
    .await;
    assert!(description.contains("TOTAL"), "{description}");

    let description = rejected(
        &mut client,
        ask(
            pb::RecordSelector {
                commodity_prefix: "27".into(),
                ..Default::default()
            },
            &[],
        ),
        "selector.commodity_prefix",
    )
    .await;
    assert!(description.contains("commodity_level"), "{description}");

    let description = rejected(
        &mut client,
        ask(
            pb::RecordSelector {
                period_from: "2025-03".into(),
                ..Default::default()
            },
            &[],
        ),
        "selector.period_from",
    )
    .await;
    assert!(description.contains("2025-03"), "{description}");

    let description = rejected(
        &mut client,
        ask(
            pb::RecordSelector {
                period_to: "2025-12".into(),
                ..Default::default()
            },
            &[Dimension::Period],
        ),
        "selector.period_to",
    )
    .await;
    assert!(description.contains("2025-12"), "{description}");

    // The same bounds are fine on monthly data.
    let monthly = pb::AggregateRequest {
        selector: Some(pb::RecordSelector {
            frequency: Frequency::Monthly.into(),
            period_from: "2025-03".into(),
            period_to: "2025-12".into(),
            ..Default::default()
        }),
        group_by: vec![Dimension::Period.into()],
        granularity: Granularity::Month.into(),
        ..Default::default()
    };
    assert!(aggregate(&mut client, monthly).await.rows.is_empty());

    // More mistakes of the request's own fields.
    let description = rejected(
        &mut client,
        pb::AggregateRequest {
            selector: Some(pb::RecordSelector::default()),
            granularity: Granularity::Year.into(),
            ..Default::default()
        },
        "granularity",
    )
    .await;
    assert!(description.contains("DIMENSION_PERIOD"), "{description}");

    rejected(
        &mut client,
        ask(pb::RecordSelector::default(), &[Dimension::Unspecified]),
        "group_by[0]",
    )
    .await;
    rejected(
        &mut client,
        ask(
            pb::RecordSelector::default(),
            &[Dimension::Period, Dimension::Period],
        ),
        "group_by[1]",
    )
    .await;
}

#[tokio::test]
async fn answers_survive_a_restart() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    store(&mut client, seed_records()).await;
    store(
        &mut client,
        vec![
            usd_fact("CHN", "KAZ", Flow::Export, "2025", 30_000_000_000),
            usd_fact("CHN", "UZB", Flow::Export, "2026", 9_000_000_000),
            usd_fact("CHN", "UZB", Flow::Import, "2026", 8_000_000_000),
        ],
    )
    .await;
    client
        .delete_record(delete(key_of(&usd_fact("CHN", "TJK", Flow::Turnover, "2025", 0))))
        .await
        .unwrap();
    let questions: Vec<_> = three_selectors(pb::RecordSelector::default())
        .into_iter()
        .map(|selector| ask(selector, &[Dimension::Period]))
        .collect();
    let mut before = Vec::new();
    for q in &questions {
        before.push(aggregate(&mut client, q.clone()).await);
    }
    assert_eq!(
        by_period(&before[1]),
        [
            ("2023".to_owned(), usd(89_300_000_000), 5),
            ("2024".to_owned(), usd(94_820_000_000), 5),
            ("2025".to_owned(), usd(102_000_000_000), 4),
            ("2026".to_owned(), usd(17_000_000_000), 2),
        ]
    );
    drop(client);

    let server = server.restart().await;
    let mut client = server.client().await;
    for (q, expected) in questions.iter().zip(&before) {
        assert_eq!(&aggregate(&mut client, q.clone()).await, expected, "{q:?}");
    }
}

/// The two kinds of question that read many series: every partner of a
/// reporter, and every HS2 code of a pair.
fn open_level_questions() -> [pb::AggregateRequest; 2] {
    let by_partner = pb::AggregateRequest {
        order_by: pb::OrderBy::TotalDesc.into(),
        ..ask(
            pb::RecordSelector {
                reporters: strings(&["CHN"]),
                ..Default::default()
            },
            &[Dimension::Partner],
        )
    };
    let by_code = ask(
        pb::RecordSelector {
            reporters: strings(&["CHN"]),
            partners: strings(&["KAZ"]),
            flows: flows(&[Flow::Export]),
            commodity_level: pb::CommodityLevel::Hs2.into(),
            ..Default::default()
        },
        &[Dimension::Commodity],
    );
    [by_partner, by_code]
}

/// (group, total) of each row.
fn totals(response: &pb::AggregateResponse) -> Vec<(String, i64)> {
    response
        .rows
        .iter()
        .map(|r| {
            let group = format!("{}{}", r.partner, r.commodity);
            (group, r.total.as_ref().unwrap().units)
        })
        .collect()
}

#[tokio::test]
async fn a_restart_warms_the_cache_from_the_data_dir_as_it_is_then() {
    let mut server = TestServer::start().await;
    let mut client = server.client().await;
    let hs2 = |partner, code, units| fact("CHN", partner, Flow::Export, "2025", code, "USD", units, 0);
    store(
        &mut client,
        vec![
            usd_fact("CHN", "KAZ", Flow::Export, "2025", 30),
            usd_fact("CHN", "UZB", Flow::Export, "2025", 20),
            hs2("KAZ", "27", 5),
            hs2("KAZ", "84", 7),
        ],
    )
    .await;
    let questions = open_level_questions();
    for q in &questions {
        aggregate(&mut client, q.clone()).await;
    }
    drop(client);
    server.stop().await;
    // A clean stop writes down what the cache held.
    let keys = server.data_dir.join("series-cache.keys");
    let listed = std::fs::read(&keys).unwrap();
    assert!(listed.len() > 40, "{} bytes", listed.len());

    // The data changes after the list was written (as after a crash that
    // came later than the last list): warming must read it as it is now.
    let mut server = server.restart().await;
    let mut client = server.client().await;
    store(
        &mut client,
        vec![
            usd_fact("CHN", "KAZ", Flow::Export, "2025", 10),
            usd_fact("CHN", "TKM", Flow::Export, "2025", 15),
            hs2("KAZ", "27", 9),
            hs2("KAZ", "01", 1),
        ],
    )
    .await;
    drop(client);
    server.stop().await;
    std::fs::write(&keys, &listed).unwrap();

    let server = server.restart().await;
    let mut client = server.client().await;
    let [by_partner, by_code] = questions;
    assert_eq!(
        totals(&aggregate(&mut client, by_partner).await),
        [("UZB".into(), 20), ("TKM".into(), 15), ("KAZ".into(), 10)]
    );
    assert_eq!(
        totals(&aggregate(&mut client, by_code).await),
        [("01".into(), 1), ("27".into(), 9), ("84".into(), 7)]
    );
}

#[tokio::test]
async fn an_empty_question_or_store_gives_a_zero_total() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let answer = aggregate(&mut client, pb::AggregateRequest::default()).await;
    assert!(answer.rows.is_empty(), "{answer:?}");
    assert_eq!(answer.grand_total, Some(usd(0)));
    assert_eq!(answer.record_count, 0);
    assert_eq!(answer.currency, "USD");
    assert_eq!(answer.frequency(), Frequency::Annual);

    store(&mut client, seed_records()).await;
    let answer = aggregate(&mut client, pb::AggregateRequest::default()).await;
    assert_eq!(answer.rows.len(), 1);
    // Every reporter: CHN's 15 figures and TJK's report of trade with CHN.
    assert_eq!(answer.grand_total, Some(usd(292_380_000_000)));
    assert_eq!(answer.record_count, 16);
}
