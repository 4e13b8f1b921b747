//! CSV import in the native layout, into a data dir and before serving.

mod common;

use std::io::Write;

use common::TestServer;
use tradewatch::import::Remote;
use tradewatch::pb;

const HEADER: &str = "reporter,partner,flow,period,commodity,currency,value,source,released_at\n";

fn file(rows: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(HEADER.as_bytes()).unwrap();
    f.write_all(rows.as_bytes()).unwrap();
    f
}

async fn stored(dir: &std::path::Path) -> Vec<pb::TradeRecord> {
    let mut server = TestServer::start_in(dir).await;
    let records = server
        .client()
        .await
        .list_records(pb::ListRecordsRequest::default())
        .await
        .unwrap()
        .into_inner();
    server.stop().await;
    records.records
}

#[tokio::test]
async fn a_file_with_a_bad_row_stores_nothing_unless_bad_rows_are_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let config = tradewatch::Config::new(dir.path());
    let csv = file(
        "CHN,KAZ,turnover,2025,TOTAL,USD,48600000000,GACC,\n\
         CHN,KGZ,turnover,2025-13,TOTAL,USD,27200000000.5,GACC,\n\
         CHN,UZB,export,2025,27,USD,0.25,GACC,2026-01-20T08:00:00Z\n",
    );
    let error = tradewatch::import_into(&config, csv.path(), false)
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("line 3") && error.contains("period"), "{error}");
    assert!(
        stored(dir.path()).await.is_empty(),
        "nothing of a bad file is stored"
    );

    let summary = tradewatch::import_into(&config, csv.path(), true).await.unwrap();
    assert_eq!((summary.created, summary.skipped), (2, 1));
    let records = stored(dir.path()).await;
    assert_eq!(records.len(), 2);
    let uzb = records.iter().find(|r| r.partner == "UZB").unwrap();
    assert_eq!(
        uzb.value.as_ref().map(|v| (v.units, v.nanos)),
        Some((0, 250_000_000))
    );
    assert_eq!(uzb.commodity, "27");
    assert!(uzb.released_at.is_some());

    let again = tradewatch::import_into(&config, csv.path(), true).await.unwrap();
    assert_eq!(
        (again.created, again.revised, again.unchanged),
        (0, 0, 2),
        "re-importing changes nothing"
    );
}

#[tokio::test]
async fn serve_can_load_the_bundled_data_first() {
    let dir = tempfile::tempdir().unwrap();
    let app = tradewatch::Application::build(
        "127.0.0.1:0".parse().unwrap(),
        tradewatch::Config::new(dir.path()),
    )
    .await
    .unwrap();
    let data = concat!(env!("CARGO_MANIFEST_DIR"), "/data/china_central_asia.csv");
    let summary = app.import(std::path::Path::new(data), false).await.unwrap();
    assert_eq!(summary.created, 16);
    app.run_until(std::future::ready(())).await.unwrap();
    assert_eq!(stored(dir.path()).await.len(), 16);
}

/// The 47 columns of a UN Comtrade download.
const COMTRADE_HEADER: &str = "typeCode,freqCode,refPeriodId,refYear,refMonth,period,reporterCode,reporterISO,\
reporterDesc,flowCode,flowDesc,partnerCode,partnerISO,partnerDesc,partner2Code,partner2ISO,partner2Desc,\
classificationCode,classificationSearchCode,isOriginalClassification,cmdCode,cmdDesc,aggrLevel,isLeaf,\
customsCode,customsDesc,mosCode,motCode,motDesc,qtyUnitCode,qtyUnitAbbr,qty,isQtyEstimated,altQtyUnitCode,\
altQtyUnitAbbr,altQty,isAltQtyEstimated,netWgt,isNetWgtEstimated,grossWgt,isGrossWgtEstimated,cifvalue,\
fobvalue,primaryValue,legacyEstimationFlag,isReported,isAggregate";

/// A Comtrade row: the columns tradewatch reads, the rest plausible filler.
fn comtrade_row(
    freq: &str,
    period: &str,
    flow: &str,
    partner_iso: &str,
    cmd: &str,
    mot: &str,
    value: &str,
) -> String {
    let year = &period[..4];
    let month = if period.len() == 6 { &period[4..] } else { "52" };
    format!(
        "C,{freq},{period}01,{year},{month},{period},156,CHN,China,{flow},Export,398,{partner_iso},Kazakhstan,0,W00,World,\
H6,HS,TRUE,{cmd},Goods,2,FALSE,C00,TOTAL CPC,0,{mot},All,-1,N/A,0,FALSE,-1,N/A,0,FALSE,1250.5,FALSE,0,FALSE,,\
{value},{value},0,TRUE,FALSE"
    )
}

#[tokio::test]
async fn un_comtrade_downloads_map_to_records_and_skip_breakdowns() {
    let header_columns = COMTRADE_HEADER.split(',').count();
    assert_eq!(header_columns, 47);
    let rows = [
        // An annual TOTAL row: CHN exports to KAZ.
        comtrade_row("A", "2023", "X", "KAZ", "TOTAL", "0", "24683000000"),
        // A monthly HS4 row: imports of 2709 in March 2023.
        comtrade_row("M", "202303", "M", "KAZ", "2709", "0", "123456789.25"),
        // A world-partner row (W00).
        comtrade_row("A", "2023", "X", "W00", "TOTAL", "0", "3380000000000"),
        // A breakdown of the first row by mode of transport: skipped.
        comtrade_row("A", "2023", "X", "KAZ", "TOTAL", "2100", "1000000000"),
    ];
    let mut f = tempfile::NamedTempFile::new().unwrap();
    writeln!(f, "{COMTRADE_HEADER}").unwrap();
    for row in &rows {
        assert_eq!(row.split(',').count(), 47, "{row}");
        writeln!(f, "{row}").unwrap();
    }

    let dir = tempfile::tempdir().unwrap();
    let config = tradewatch::Config::new(dir.path());
    let summary = tradewatch::import_into(&config, f.path(), false).await.unwrap();
    assert_eq!(
        (summary.created, summary.breakdown_rows, summary.skipped),
        (3, 1, 0)
    );

    let records = stored(dir.path()).await;
    let brief: Vec<_> = records
        .iter()
        .map(|r| {
            let v = r.value.as_ref().unwrap();
            (
                r.partner.as_str(),
                r.flow(),
                r.period.as_str(),
                r.commodity.as_str(),
                v.units,
                v.nanos,
            )
        })
        .collect();
    assert_eq!(
        brief,
        [
            ("KAZ", pb::Flow::Export, "2023", "TOTAL", 24_683_000_000, 0),
            (
                "KAZ",
                pb::Flow::Import,
                "2023-03",
                "2709",
                123_456_789,
                250_000_000
            ),
            ("WLD", pb::Flow::Export, "2023", "TOTAL", 3_380_000_000_000, 0),
        ]
    );
    assert!(
        records
            .iter()
            .all(|r| r.source == "UN Comtrade" && r.value.as_ref().unwrap().currency_code == "USD")
    );
    assert_eq!(records[0].net_weight_kg, Some(1250.5));
}

#[tokio::test]
async fn import_into_a_running_server_streams_the_file() {
    let server = TestServer::start().await;
    let data = std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/data/china_central_asia.csv"
    ));
    let addr = server.addr.to_string();
    let first = tradewatch::import::import_to_server(&Remote::new(&addr), data, false)
        .await
        .unwrap();
    assert_eq!(first.created, 16);
    let again = tradewatch::import::import_to_server(&Remote::new(&addr), data, false)
        .await
        .unwrap();
    assert_eq!((again.created, again.revised, again.unchanged), (0, 0, 16));
    let listed = server
        .client()
        .await
        .list_records(pb::ListRecordsRequest::default())
        .await
        .unwrap();
    assert_eq!(listed.into_inner().records.len(), 16);

    let bad = file("CHN,KAZ,turnover,2030,TOTAL,USD,oops,x,\n");
    let error = tradewatch::import::import_to_server(&Remote::new(&addr), bad.path(), false)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("line 2") && error.contains("nothing was stored"),
        "{error}"
    );
}

/// A history of 4,500 records (10 years × 5 partners × 90 chapters), the
/// newest year first.
fn newest_first() -> tempfile::NamedTempFile {
    let mut rows = String::new();
    for year in (2016..=2025).rev() {
        for partner in ["KAZ", "KGZ", "TJK", "TKM", "UZB"] {
            for chapter in 1..=90 {
                rows.push_str(&format!(
                    "CHN,{partner},export,{year},{chapter:02},USD,{chapter},x,\n"
                ));
            }
        }
    }
    file(&rows)
}

/// The periods of the records stored, in the order of their events: the
/// history of [`newest_first`] oldest period first.
async fn assert_stored_oldest_first(server: &TestServer) {
    let mut milestones = tradewatch::pb::milestone_service_client::MilestoneServiceClient::connect(format!(
        "http://{}",
        server.addr
    ))
    .await
    .unwrap();
    let mut periods = Vec::new();
    let mut from = 1;
    while periods.len() < 4500 {
        let page = milestones
            .list_events(pb::ListEventsRequest {
                from_sequence: from,
                limit: 1000,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(!page.events.is_empty(), "{} events listed", periods.len());
        for event in page.events {
            if let Some(pb::event::Kind::RecordStored(stored)) = event.kind {
                periods.push(stored.key.unwrap().period);
            }
        }
        from = page.next_sequence;
    }
    assert!(
        periods.is_sorted(),
        "periods in the order stored: {:?}…",
        &periods[..20]
    );
    assert_eq!((periods[0].as_str(), periods[4499].as_str()), ("2016", "2025"));
}

/// `import --server` sends a history oldest period first, whatever order
/// the file is in (and in several messages when it is long): the events
/// subscribers see, and so the milestones, come in the order things
/// happened.
#[tokio::test]
async fn import_into_a_running_server_sends_the_oldest_periods_first() {
    let server = TestServer::start().await;
    import_newest_first(&server).await;
}

/// `import --server` of [`newest_first`]: all of it created, oldest first.
async fn import_newest_first(server: &TestServer) {
    let summary = tradewatch::import::import_to_server(
        &Remote::new(server.addr.to_string()),
        newest_first().path(),
        false,
    )
    .await
    .unwrap();
    assert_eq!((summary.created, summary.unchanged), (4500, 0));
    assert_stored_oldest_first(server).await;
}

/// So does `import` into a data dir (and `serve --import`).
#[tokio::test]
async fn import_into_a_data_dir_stores_the_oldest_periods_first() {
    let dir = tempfile::tempdir().unwrap();
    let config = tradewatch::Config::new(dir.path());
    let summary = tradewatch::import_into(&config, newest_first().path(), false)
        .await
        .unwrap();
    assert_eq!(summary.created, 4500);
    let mut server = TestServer::start_in(dir.path()).await;
    assert_stored_oldest_first(&server).await;
    server.stop().await;
}

/// Into a server that takes fewer records per batch than `import --server`
/// sends (`--max-batch-records 300`), the first message is refused with the
/// limit in its details, before anything is stored; the import sends again
/// in messages of that size and stores everything.
#[tokio::test]
async fn import_into_a_server_with_a_lower_batch_limit_sends_smaller_messages() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = TestServer::start_with(tradewatch::Config {
        limits: tradewatch::Limits {
            max_batch_records: 300,
            ..tradewatch::Limits::default()
        },
        ..tradewatch::Config::new(dir.path())
    })
    .await;
    import_newest_first(&server).await;
    server.stop().await;
}
