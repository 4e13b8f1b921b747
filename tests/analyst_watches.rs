//! Rank, growth and year-to-date watches through gRPC on a real server,
//! over the bundled data and over monthly figures.

mod common;

use common::{TestServer, create, put, record, seed_records};
use tonic::Code;
use tonic::transport::Channel;
use tradewatch::pb::{self, milestone_service_client::MilestoneServiceClient};

const BN: i64 = 1_000_000_000;

fn central_asia(name: &str) -> pb::Watch {
    pb::Watch {
        name: name.into(),
        selector: Some(pb::RecordSelector {
            reporters: vec!["CHN".into()],
            partners: vec!["CENTRAL_ASIA".into()],
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn rank_watch() -> pb::Watch {
    pb::Watch {
        id: "ca-rank".into(),
        rank: Some(pb::RankRule {
            by: pb::RankBy::Partner.into(),
            top: 1,
        }),
        ..central_asia("China's Central Asian partners")
    }
}

fn growth_watch() -> pb::Watch {
    pb::Watch {
        id: "ca-growth".into(),
        growth_thresholds_percent: vec![10.0],
        ..central_asia("China–Central Asia trade")
    }
}

async fn watches(server: &TestServer) -> MilestoneServiceClient<Channel> {
    MilestoneServiceClient::new(server.channel().await)
}

/// Every stored milestone of one watch, in order.
async fn milestones_of(client: &mut MilestoneServiceClient<Channel>, watch: &str) -> Vec<pb::event::Kind> {
    let listed = client
        .list_events(pb::ListEventsRequest {
            watch_ids: vec![watch.into()],
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    listed.events.into_iter().filter_map(|e| e.kind).collect()
}

fn rank_changes(kinds: &[pb::event::Kind]) -> Vec<&pb::RankChanged> {
    kinds
        .iter()
        .map(|k| match k {
            pb::event::Kind::RankChanged(r) => r,
            other => panic!("only rank changes expected, got {other:?}"),
        })
        .collect()
}

fn growth_crossings(kinds: &[pb::event::Kind]) -> Vec<&pb::GrowthCrossed> {
    kinds
        .iter()
        .map(|k| match k {
            pb::event::Kind::GrowthCrossed(g) => g,
            other => panic!("only growth crossings expected, got {other:?}"),
        })
        .collect()
}

#[tokio::test]
async fn a_rank_watch_announces_the_leaders_and_each_overtaking() {
    let server = TestServer::start().await;
    let mut trade = server.client().await;
    let mut client = watches(&server).await;
    trade.put_records(put(seed_records())).await.unwrap();
    client
        .create_watch(pb::CreateWatchRequest {
            watch: Some(rank_watch()),
            backfill: true,
            ..Default::default()
        })
        .await
        .unwrap();
    let kinds = milestones_of(&mut client, "ca-rank").await;
    let formed = rank_changes(&kinds);
    assert_eq!(formed.len(), 3, "{formed:#?}");
    for (event, year) in formed.iter().zip(["2023", "2024", "2025"]) {
        assert_eq!(event.period, year);
        assert!(event.before.is_empty());
        assert_eq!(event.leader_after, "KAZ");
        assert_eq!(event.after[0].name, "Kazakhstan");
        assert!(
            event
                .headline
                .contains(&format!("Kazakhstan is the largest partner in {year}")),
            "{}",
            event.headline
        );
    }

    // The ranking state outlives a restart.
    let server = server.restart().await;
    let mut trade = server.client().await;
    let mut client = watches(&server).await;
    trade
        .put_records(put(vec![record("CHN", "KGZ", "2025", 50 * BN, "GACC")]))
        .await
        .unwrap();
    trade
        .put_records(put(vec![record("CHN", "KGZ", "2025", 27_200_000_000, "GACC")]))
        .await
        .unwrap();
    let kinds = milestones_of(&mut client, "ca-rank").await;
    let changes = rank_changes(&kinds);
    assert_eq!(
        changes.len(),
        5,
        "three formations and two overtakings: {changes:#?}"
    );
    let (up, back) = (changes[3], changes[4]);
    assert_eq!(
        (
            up.period.as_str(),
            up.leader_before.as_str(),
            up.leader_after.as_str()
        ),
        ("2025", "KAZ", "KGZ")
    );
    assert_eq!(up.cause, i32::from(pb::Cause::Revision));
    assert_eq!(up.caused_by.len(), 1);
    assert_eq!(up.former_leader_value.as_ref().unwrap().units, 48_600_000_000);
    assert!(
        up.headline.contains(
            "Kyrgyzstan overtook Kazakhstan as the largest partner in 2025, 50.0 billion USD against 48.6 billion USD"
        ),
        "{}",
        up.headline
    );
    assert_eq!(
        (back.leader_before.as_str(), back.leader_after.as_str()),
        ("KGZ", "KAZ")
    );
    assert!(
        back.headline.contains("Kazakhstan overtook Kyrgyzstan"),
        "{}",
        back.headline
    );
}

#[tokio::test]
async fn a_top_three_reports_who_enters_and_who_leaves() {
    let server = TestServer::start().await;
    let mut trade = server.client().await;
    let mut client = watches(&server).await;
    client
        .create_watch(create(pb::Watch {
            id: "top3".into(),
            rank: Some(pb::RankRule {
                by: pb::RankBy::Partner.into(),
                top: 3,
            }),
            ..central_asia("Top three")
        }))
        .await
        .unwrap();
    // Two partners: no top three yet. The third forms it.
    for (partner, units) in [("KAZ", 41), ("KGZ", 20), ("UZB", 14)] {
        trade
            .put_records(put(vec![record("CHN", partner, "2023", units * BN, "GACC")]))
            .await
            .unwrap();
    }
    // Below third place: nothing. Above it: TKM enters, UZB leaves.
    trade
        .put_records(put(vec![record("CHN", "TJK", "2023", 4 * BN, "GACC")]))
        .await
        .unwrap();
    trade
        .put_records(put(vec![record("CHN", "TKM", "2023", 15 * BN, "GACC")]))
        .await
        .unwrap();
    let kinds = milestones_of(&mut client, "top3").await;
    let changes = rank_changes(&kinds);
    assert_eq!(changes.len(), 2, "{changes:#?}");
    let order: Vec<&str> = changes[0].after.iter().map(|m| m.country.as_str()).collect();
    assert_eq!(order, ["KAZ", "KGZ", "UZB"]);
    assert!(
        changes[0]
            .headline
            .contains("the top 3 partners in 2023 are Kazakhstan (41.0 billion USD)")
    );
    assert_eq!(
        (changes[1].entered.as_slice(), changes[1].left.as_slice()),
        (&["TKM".to_owned()][..], &["UZB".to_owned()][..])
    );
    assert_eq!(changes[1].leader_before, changes[1].leader_after);
    assert!(
        changes[1]
            .headline
            .contains("Turkmenistan entered the top 3 partners in 2023, Uzbekistan left"),
        "{}",
        changes[1].headline
    );
}

#[tokio::test]
async fn a_growth_watch_crosses_ten_percent_in_2025_only() {
    let server = TestServer::start().await;
    let mut trade = server.client().await;
    let mut client = watches(&server).await;
    // Live: the watch first, then the data.
    client.create_watch(create(growth_watch())).await.unwrap();
    trade.put_records(put(seed_records())).await.unwrap();
    // Backfilled over the same data.
    client
        .create_watch(pb::CreateWatchRequest {
            watch: Some(pb::Watch {
                id: "ca-growth-backfill".into(),
                ..growth_watch()
            }),
            backfill: true,
            ..Default::default()
        })
        .await
        .unwrap();
    for id in ["ca-growth", "ca-growth-backfill"] {
        let kinds = milestones_of(&mut client, id).await;
        let crossings = growth_crossings(&kinds);
        assert_eq!(crossings.len(), 1, "{id}: {crossings:#?}");
        let up = crossings[0];
        assert_eq!(
            (up.period.as_str(), up.previous_period.as_str()),
            ("2025", "2024")
        );
        assert_eq!(up.direction, i32::from(pb::Direction::Up));
        assert_eq!(up.threshold_percent, 10.0);
        let growth = up.growth_after_percent.unwrap();
        assert!((growth - 12.107).abs() < 0.001, "{growth}");
        assert_eq!(up.value_after.as_ref().unwrap().units, 106_300_000_000);
        assert_eq!(up.previous_value_after.as_ref().unwrap().units, 94_820_000_000);
        assert!(
            up.headline
                .contains("growth of +12.1 % in 2025 over 2024, crossing +10 %"),
            "{}",
            up.headline
        );
    }

    // A revision taking 2025 to +8.3 %.
    let put_back = trade
        .put_records(put(vec![record("CHN", "KAZ", "2025", 45 * BN, "GACC")]))
        .await
        .unwrap()
        .into_inner();
    let kinds = milestones_of(&mut client, "ca-growth").await;
    let crossings = growth_crossings(&kinds);
    assert_eq!(crossings.len(), 2, "{crossings:#?}");
    let down = crossings[1];
    assert_eq!(down.direction, i32::from(pb::Direction::Down));
    assert_eq!(down.cause, i32::from(pb::Cause::Revision));
    assert!(down.growth_before_percent.unwrap() > 12.0);
    assert!((down.growth_after_percent.unwrap() - 8.310).abs() < 0.001);
    assert!(down.headline.contains("back below +10 %"), "{}", down.headline);
    assert!(put_back.last_sequence > put_back.first_sequence);
}

/// A CHN → KAZ export figure for a month.
fn monthly(period: &str, units: i64) -> pb::TradeRecord {
    pb::TradeRecord {
        flow: pb::Flow::Export.into(),
        ..record("CHN", "KAZ", period, units, "GACC")
    }
}

#[tokio::test]
async fn year_to_date_names_the_month_that_passes_last_year() {
    let server = TestServer::start().await;
    let mut trade = server.client().await;
    let mut client = watches(&server).await;
    let selector = pb::RecordSelector {
        reporters: vec!["CHN".into()],
        partners: vec!["KAZ".into()],
        flows: vec![pb::Flow::Export.into()],
        frequency: pb::Frequency::Monthly.into(),
        ..Default::default()
    };
    client
        .create_watch(create(pb::Watch {
            id: "ytd".into(),
            name: "China's exports to Kazakhstan".into(),
            selector: Some(selector.clone()),
            granularity: pb::Granularity::Month.into(),
            year_to_date: true,
            ..Default::default()
        }))
        .await
        .unwrap();
    // 2024: 10 bn a month, 120 bn in all.
    let months: Vec<pb::TradeRecord> = (1..=12)
        .map(|m| monthly(&format!("2024-{m:02}"), 10 * BN))
        .collect();
    trade.put_records(put(months)).await.unwrap();
    // 2025: 11 bn a month, one month per write. January is already the
    // best January; November takes the year past all of 2024 (121 > 120).
    let mut sequences = Vec::new();
    for m in 1..=12 {
        let answer = trade
            .put_records(put(vec![monthly(&format!("2025-{m:02}"), 11 * BN)]))
            .await
            .unwrap()
            .into_inner();
        sequences.push((m, answer.first_sequence, answer.last_sequence));
    }
    let kinds = milestones_of(&mut client, "ytd").await;
    let ytd: Vec<&pb::YearToDate> = kinds
        .iter()
        .map(|k| match k {
            pb::event::Kind::YearToDate(y) => y,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(ytd.len(), 2, "{ytd:#?}");
    let (high, passed) = (ytd[0], ytd[1]);
    assert_eq!(high.kind, i32::from(pb::YearToDateKind::RecordHigh));
    assert_eq!(
        (high.year, high.through.as_str(), high.months.as_str()),
        (2025, "2025-01", "January")
    );
    assert_eq!(passed.kind, i32::from(pb::YearToDateKind::PassedPreviousYear));
    assert_eq!(passed.direction, i32::from(pb::Direction::Up));
    assert_eq!(
        (passed.year, passed.through.as_str(), passed.months.as_str()),
        (2025, "2025-11", "January–November")
    );
    assert_eq!(passed.value.as_ref().unwrap().units, 121 * BN);
    assert_eq!(
        (
            passed.compared_year,
            passed.compared_value.as_ref().unwrap().units
        ),
        (2024, 120 * BN)
    );
    assert_eq!(passed.caused_by.len(), 1);
    assert_eq!(passed.caused_by[0].period, "2025-11");
    assert!(
        passed
            .headline
            .contains("January–November 2025 already exceeds all of 2024, 121.0 billion USD against 2024's 120.0 billion USD"),
        "{}",
        passed.headline
    );
    // The November write is the one that stored it.
    let listed = client
        .list_events(pb::ListEventsRequest {
            watch_ids: vec!["ytd".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let november = sequences.iter().find(|(m, _, _)| *m == 11).unwrap();
    assert!((november.1..=november.2).contains(&listed.events[1].sequence));

    // A revision of 2024 to 133 bn, above all of 2025 (132), takes both
    // back.
    trade
        .put_records(put(vec![monthly("2024-12", 23 * BN)]))
        .await
        .unwrap();
    let kinds = milestones_of(&mut client, "ytd").await;
    assert_eq!(kinds.len(), 4, "{kinds:#?}");
    let [
        pb::event::Kind::YearToDate(passed),
        pb::event::Kind::YearToDate(high),
    ] = &kinds[2..]
    else {
        panic!("{kinds:#?}")
    };
    for event in [passed, high] {
        assert_eq!(event.direction, i32::from(pb::Direction::Down));
        assert_eq!(event.cause, i32::from(pb::Cause::Revision));
        assert_eq!(event.through, "2025-12", "all of 2025 is in by now");
    }
    assert_eq!(passed.kind, i32::from(pb::YearToDateKind::PassedPreviousYear));
    assert!(
        passed.headline.contains("2025 no longer exceeds all of 2024"),
        "{}",
        passed.headline
    );
    assert!(
        high.headline.contains(
            "2025 is no longer the highest January–December on record, 132.0 billion USD against 2024's 133.0"
        ),
        "{}",
        high.headline
    );
}

#[tokio::test]
async fn bad_analyst_rules_are_rejected_with_the_field() {
    let server = TestServer::start().await;
    let mut client = watches(&server).await;
    let cases: Vec<(pb::Watch, &str, &str)> = vec![
        (
            pb::Watch {
                rank: Some(pb::RankRule { by: 7, top: 1 }),
                ..central_asia("x")
            },
            "rank.by",
            "7 is not a RankBy",
        ),
        (
            pb::Watch {
                rank: Some(pb::RankRule {
                    by: pb::RankBy::Partner.into(),
                    top: 51,
                }),
                ..central_asia("x")
            },
            "rank.top",
            "more than the 50",
        ),
        (
            pb::Watch {
                growth_thresholds_percent: vec![10.0, 12.345],
                ..central_asia("x")
            },
            "growth_thresholds_percent[1]",
            "at most two decimals",
        ),
        (
            pb::Watch {
                growth_thresholds_percent: vec![-100.0],
                ..central_asia("x")
            },
            "growth_thresholds_percent[0]",
            "above -100",
        ),
        (
            pb::Watch {
                growth_thresholds_percent: vec![5.0, 5.0],
                ..central_asia("x")
            },
            "growth_thresholds_percent[1]",
            "listed twice",
        ),
        (
            pb::Watch {
                year_to_date: true,
                ..central_asia("x")
            },
            "year_to_date",
            "needs monthly data",
        ),
        (
            pb::Watch {
                growth_thresholds_percent: vec![10.0],
                selector: Some(pb::RecordSelector {
                    reporters: vec!["CHN".into()],
                    frequency: pb::Frequency::Monthly.into(),
                    ..Default::default()
                }),
                granularity: pb::Granularity::Year.into(),
                ..central_asia("x")
            },
            "growth_thresholds_percent",
            "needs granularity GRANULARITY_MONTH",
        ),
        (central_asia("x"), "thresholds", "at least one rule"),
    ];
    for (watch, field, text) in cases {
        let status = client.create_watch(create(watch)).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
        let details = tonic_types::StatusExt::get_details_bad_request(&status).expect("bad request details");
        let violation = details
            .field_violations
            .iter()
            .find(|v| v.field == format!("watch.{field}") || v.field == field)
            .unwrap_or_else(|| panic!("{field} named in {details:?}"));
        assert!(
            violation.description.contains(text),
            "{field}: {}",
            violation.description
        );
    }
    let listed = client
        .list_watches(pb::ListWatchesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(listed.watches.is_empty(), "nothing stored");
}
