//! CSV import in the native layout, into a data dir and before serving.

mod common;

use std::io::Write;

use common::TestServer;
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
