//! Mirror statistics through the gRPC API of a real server: a reporter's
//! figures beside its partners' figures for the reverse flow.

mod common;

use common::{TestServer, put, put_group, seed_records};
use tonic::Code;
use tonic::transport::Channel;
use tradewatch::pb::{
    self, Dimension, Flow, Granularity, MirrorSides, trade_service_client::TradeServiceClient,
};

type Client = TradeServiceClient<Channel>;

const BN: i64 = 1_000_000_000;

fn usd(units: i64) -> pb::Money {
    pb::Money {
        currency_code: "USD".into(),
        units,
        nanos: 0,
    }
}

fn fact(reporter: &str, partner: &str, flow: Flow, period: &str, units: i64) -> pb::TradeRecord {
    pb::TradeRecord {
        reporter: reporter.into(),
        partner: partner.into(),
        flow: flow.into(),
        period: period.into(),
        commodity: "TOTAL".into(),
        value: Some(usd(units)),
        source: "test".into(),
        ..Default::default()
    }
}

fn selector(reporters: &[&str], partners: &[&str], flows: &[Flow]) -> pb::RecordSelector {
    pb::RecordSelector {
        reporters: reporters.iter().map(|s| (*s).into()).collect(),
        partners: partners.iter().map(|s| (*s).into()).collect(),
        flows: flows.iter().map(|f| (*f).into()).collect(),
        ..Default::default()
    }
}

async fn compare(
    client: &mut Client,
    selector: pb::RecordSelector,
    group_by: &[Dimension],
) -> pb::CompareMirrorResponse {
    client
        .compare_mirror(pb::CompareMirrorRequest {
            selector: Some(selector),
            group_by: group_by.iter().map(|d| (*d).into()).collect(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
}

fn units(m: &Option<pb::Money>) -> Option<i64> {
    m.as_ref().map(|m| m.units)
}

async fn seeded() -> (TestServer, Client) {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    client.put_records(put(seed_records())).await.unwrap();
    (server, client)
}

/// The bundled data: China says its 2024 trade with Tajikistan was 3.86 bn
/// USD, Tajikistan's own statistics say 1.96 bn.
#[tokio::test]
async fn china_and_tajikistan_report_their_2024_trade_differently() {
    let (_server, mut client) = seeded().await;
    let mut chn_tjk = selector(&["CHN"], &["TJK"], &[Flow::Turnover]);
    chn_tjk.period_from = "2024".into();
    chn_tjk.period_to = "2024".into();
    let answer = compare(&mut client, chn_tjk, &[]).await;
    assert_eq!(answer.rows.len(), 1, "{answer:?}");
    let row = &answer.rows[0];
    assert_eq!(units(&row.reported), Some(3_860_000_000));
    assert_eq!(units(&row.mirror), Some(1_960_000_000));
    assert_eq!(units(&row.gap), Some(1_900_000_000));
    let ratio = row.ratio.expect("both sides report");
    assert!((ratio - 3.86 / 1.96).abs() < 1e-9, "{ratio}");
    assert_eq!(row.sides(), MirrorSides::Both);
    assert_eq!((row.reported_record_count, row.mirror_record_count), (1, 1));
    assert_eq!(units(&answer.reported_total), Some(3_860_000_000));
    assert_eq!(units(&answer.mirror_total), Some(1_960_000_000));
    assert_eq!(answer.currency, "USD");

    // Per year over the three years: only 2024 has Tajikistan's figure.
    let by_year = compare(
        &mut client,
        selector(&["CHN"], &["TJK"], &[]),
        &[Dimension::Period],
    )
    .await;
    let years: Vec<_> = by_year
        .rows
        .iter()
        .map(|r| (r.period.as_str(), r.sides(), units(&r.gap)))
        .collect();
    assert_eq!(
        years,
        vec![
            ("2023", MirrorSides::ReportedOnly, None),
            ("2024", MirrorSides::Both, Some(1_900_000_000)),
            ("2025", MirrorSides::ReportedOnly, None),
        ]
    );
}

/// Exports of one side meet imports of the other, flow by flow; a group
/// only one side reports says which.
#[tokio::test]
async fn exports_meet_the_partners_imports_and_one_sided_groups_say_so() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    client
        .put_records(put(vec![
            fact("CHN", "KAZ", Flow::Export, "2024", 24 * BN),
            fact("CHN", "KAZ", Flow::Import, "2024", 19 * BN),
            fact("KAZ", "CHN", Flow::Import, "2024", 16 * BN),
            fact("KAZ", "CHN", Flow::Export, "2024", 18 * BN),
            // Kyrgyzstan reports its imports from China; China reports
            // nothing for Kyrgyzstan.
            fact("KGZ", "CHN", Flow::Import, "2024", 3 * BN),
            // China's exports to Uzbekistan, no Uzbek figure.
            fact("CHN", "UZB", Flow::Export, "2024", 13 * BN),
        ]))
        .await
        .unwrap();
    let answer = compare(
        &mut client,
        selector(&["CHN"], &["KAZ", "KGZ", "UZB"], &[Flow::Export, Flow::Import]),
        &[Dimension::Partner, Dimension::Flow],
    )
    .await;
    let rows: Vec<_> = answer
        .rows
        .iter()
        .map(|r| {
            (
                r.partner.as_str(),
                r.flow(),
                units(&r.reported),
                units(&r.mirror),
                units(&r.gap),
                r.sides(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        vec![
            // China's exports to Kazakhstan against Kazakhstan's imports
            // from China; and the other way round.
            (
                "KAZ",
                Flow::Export,
                Some(24 * BN),
                Some(16 * BN),
                Some(8 * BN),
                MirrorSides::Both
            ),
            (
                "KAZ",
                Flow::Import,
                Some(19 * BN),
                Some(18 * BN),
                Some(BN),
                MirrorSides::Both
            ),
            (
                "KGZ",
                Flow::Export,
                None,
                Some(3 * BN),
                None,
                MirrorSides::MirrorOnly
            ),
            (
                "UZB",
                Flow::Export,
                Some(13 * BN),
                None,
                None,
                MirrorSides::ReportedOnly
            ),
        ]
    );
    assert_eq!(units(&answer.reported_total), Some(56 * BN));
    assert_eq!(units(&answer.mirror_total), Some(37 * BN));

    // From Kazakhstan's side the same comparison is the other way round.
    let kaz = compare(&mut client, selector(&["KAZ"], &["CHN"], &[Flow::Import]), &[]).await;
    assert_eq!(units(&kaz.rows[0].reported), Some(16 * BN));
    assert_eq!(units(&kaz.rows[0].mirror), Some(24 * BN));
    assert_eq!(units(&kaz.rows[0].gap), Some(-8 * BN));
}

/// Groups work on either side: CHN against CENTRAL_ASIA compares with each
/// member's figures for China, and CENTRAL_ASIA as reporters against CHN
/// compares the other way.
#[tokio::test]
async fn groups_work_on_either_side() {
    let (_server, mut client) = seeded().await;
    client
        .put_records(put(vec![
            fact("KAZ", "CHN", Flow::Turnover, "2024", 40 * BN),
            fact("UZB", "CHN", Flow::Turnover, "2024", 13 * BN),
        ]))
        .await
        .unwrap();
    let mut chn = selector(&["CHN"], &["CENTRAL_ASIA"], &[]);
    chn.period_from = "2024".into();
    chn.period_to = "2024".into();
    let by_partner = compare(&mut client, chn.clone(), &[Dimension::Partner]).await;
    let mirrors: Vec<_> = by_partner
        .rows
        .iter()
        .map(|r| (r.partner.as_str(), units(&r.mirror)))
        .collect();
    assert_eq!(
        mirrors,
        vec![
            ("KAZ", Some(40 * BN)),
            ("KGZ", None),
            ("TJK", Some(1_960_000_000)),
            ("TKM", None),
            ("UZB", Some(13 * BN)),
        ]
    );
    let whole = compare(&mut client, chn, &[]).await;
    assert_eq!(units(&whole.rows[0].mirror), Some(54_960_000_000));

    let mut central_asia = selector(&["CENTRAL_ASIA"], &["CHN"], &[]);
    central_asia.period_from = "2024".into();
    central_asia.period_to = "2024".into();
    let reverse = compare(&mut client, central_asia, &[Dimension::Reporter]).await;
    let kaz = reverse.rows.iter().find(|r| r.reporter == "KAZ").unwrap();
    assert_eq!(units(&kaz.reported), Some(40 * BN));
    assert_eq!(units(&kaz.mirror), Some(43_820_000_000));

    // A group made up for the question works the same way.
    client
        .put_group(put_group(pb::PartnerGroup {
            name: "KAZ_UZB".into(),
            members: vec!["KAZ".into(), "UZB".into()],
            ..Default::default()
        }))
        .await
        .unwrap();
    let mut pair = selector(&["KAZ_UZB"], &["CHN"], &[]);
    pair.period_from = "2024".into();
    pair.period_to = "2024".into();
    let pair = compare(&mut client, pair, &[]).await;
    assert_eq!(units(&pair.rows[0].reported), Some(53 * BN));
}

/// Monthly data, by month: each month's figures meet the partner's for the
/// same month, and a year built from months compares the months present.
#[tokio::test]
async fn monthly_figures_compare_month_by_month() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    client
        .put_records(put(vec![
            fact("CHN", "KAZ", Flow::Export, "2025-01", 2 * BN),
            fact("CHN", "KAZ", Flow::Export, "2025-02", 3 * BN),
            fact("KAZ", "CHN", Flow::Import, "2025-01", BN + BN / 2),
        ]))
        .await
        .unwrap();
    let mut monthly = selector(&["CHN"], &["KAZ"], &[Flow::Export]);
    monthly.frequency = pb::Frequency::Monthly.into();
    let answer = client
        .compare_mirror(pb::CompareMirrorRequest {
            selector: Some(monthly.clone()),
            group_by: vec![Dimension::Period.into()],
            granularity: Granularity::Month.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let months: Vec<_> = answer
        .rows
        .iter()
        .map(|r| (r.period.as_str(), units(&r.gap), r.sides()))
        .collect();
    assert_eq!(
        months,
        vec![
            ("2025-01", Some(BN / 2), MirrorSides::Both),
            ("2025-02", None, MirrorSides::ReportedOnly),
        ]
    );
    let year = client
        .compare_mirror(pb::CompareMirrorRequest {
            selector: Some(monthly),
            group_by: vec![Dimension::Period.into()],
            granularity: Granularity::Year.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(units(&year.rows[0].reported), Some(5 * BN));
    assert_eq!(units(&year.rows[0].mirror), Some(BN + BN / 2));
}

/// A bad question is refused as an aggregate's would be, naming the field.
#[tokio::test]
async fn a_bad_question_names_its_field() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let err = client
        .compare_mirror(pb::CompareMirrorRequest {
            selector: Some(selector(&["CHN"], &["NOWHERE_GROUP"], &[])),
            group_by: vec![Dimension::Flow.into()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("selector.partners[0]"), "{err:?}");

    let err = client
        .compare_mirror(pb::CompareMirrorRequest {
            selector: Some(selector(&["CHN"], &["KAZ"], &[])),
            group_by: vec![Dimension::Flow.into()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("flows"), "{err:?}");
}
