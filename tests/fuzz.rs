//! The fuzz targets of `fuzz/` (see docs/fuzzing.md), run on proptest-made
//! inputs for a few seconds: raw gRPC request bodies into every RPC of a
//! real server, CSV files into the importer, selectors into Aggregate and
//! ListRecords. The harness is the one the cargo-fuzz targets use; every
//! check it makes (no panic, no UNKNOWN/INTERNAL for a caller's input,
//! violations naming fields, a consistent store) applies here too.
//!
//! `TRADEWATCH_FUZZ_CASES=N` runs N inputs per target instead of the
//! default; the long runs are `cargo fuzz run TARGET` in `fuzz/`.

#[path = "../fuzz/src/harness/mod.rs"]
mod harness;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

use harness::{csv, grpc, selectors};

fn runner(default_cases: u32) -> TestRunner {
    TestRunner::new(Config {
        cases: std::env::var("TRADEWATCH_FUZZ_CASES")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(default_cases),
        // The targets keep state between inputs (a server, a store):
        // shrinking is bounded and no regression files are written.
        max_shrink_iters: 500,
        max_shrink_time: 60_000,
        failure_persistence: None,
        ..Config::default()
    })
}

/// An input as the fuzz targets read it: a selector byte, a form byte, then
/// the bytes that drive the form (or are the body).
fn input(selectors: u8, forms: u8, max_len: usize) -> impl Strategy<Value = Vec<u8>> {
    (
        0..selectors,
        0..forms,
        proptest::collection::vec(any::<u8>(), 0..max_len),
    )
        .prop_map(|(s, f, rest)| {
            let mut input = vec![s, f];
            input.extend(rest);
            input
        })
}

#[test]
fn grpc_request_bodies_get_precise_answers_and_keep_the_store_consistent() {
    runner(1000)
        .run(&input(16, 4, 400), |data| {
            grpc::run(&data);
            Ok(())
        })
        .unwrap();
    grpc::finish();
    println!("{}", grpc::stats());
}

#[test]
fn csv_files_are_imported_or_their_bad_rows_named() {
    runner(1000)
        .run(&proptest::collection::vec(any::<u8>(), 0..800), |data| {
            csv::run(&data);
            Ok(())
        })
        .unwrap();
    csv::finish();
}

#[test]
fn selectors_get_exact_answers_or_name_the_bad_field() {
    runner(500)
        .run(&input(2, 1, 300), |data| {
            selectors::run(&data);
            Ok(())
        })
        .unwrap();
    println!("{}", selectors::stats());
}

/// Regressions found by the fuzz targets.
mod found {
    use tonic::Code;
    use tonic_types::StatusExt;
    use tradewatch::pb::{self, milestone_service_client::MilestoneServiceClient};

    use super::harness::server::{Server, runtime, scratch_dir};

    /// A status travels in HTTP/2 trailers; past the client's limit (16 KiB
    /// in tonic) the caller got INTERNAL "h2 protocol error" instead of
    /// INVALID_ARGUMENT. Found by `grpc_requests` with a DeleteWatch id of
    /// 500 × U+202E (each echoed as `\u{202e}`, twice: in the message and in
    /// the details); fifty records with the same bad field did it too.
    #[test]
    fn long_or_many_violations_still_answer_invalid_argument() {
        runtime().block_on(async {
            let server = Server::start(&scratch_dir()).await;
            let channel = server.channel().await;
            let mut milestones = MilestoneServiceClient::new(channel.clone());
            for id in ["\u{202e}".repeat(500), "a".repeat(20_000), "é".repeat(10_000)] {
                let status = milestones
                    .delete_watch(pb::DeleteWatchRequest {
                        id,
                        ..Default::default()
                    })
                    .await
                    .unwrap_err();
                assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
                let violations = status.get_details_bad_request().unwrap().field_violations;
                assert_eq!(violations.len(), 1);
                assert_eq!(violations[0].field, "id");
            }
            let status = milestones
                .list_events(pb::ListEventsRequest {
                    kinds: vec![9; 1000],
                    ..Default::default()
                })
                .await
                .unwrap_err();
            assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
            assert!(
                status.message().contains("more violation"),
                "{}",
                status.message()
            );

            let mut trade = pb::trade_service_client::TradeServiceClient::new(channel.clone());
            for n in [50, 500] {
                let records = (0..n)
                    .map(|i| pb::TradeRecord {
                        reporter: "XXX".into(),
                        partner: "KAZ".into(),
                        flow: pb::Flow::Turnover.into(),
                        period: format!("{}", 1901 + i),
                        value: Some(pb::Money {
                            currency_code: "USD".into(),
                            units: 1,
                            nanos: 0,
                        }),
                        ..Default::default()
                    })
                    .collect();
                let status = trade
                    .put_records(pb::PutRecordsRequest {
                        records,
                        ..Default::default()
                    })
                    .await
                    .unwrap_err();
                assert_eq!(status.code(), Code::InvalidArgument, "{n} records: {status:?}");
                let violations = status.get_details_bad_request().unwrap().field_violations;
                assert_eq!(violations[0].field, "records[0].reporter");
                assert!(
                    status.message().contains("more violation"),
                    "{}",
                    status.message()
                );
            }
            drop((milestones, trade, channel));
            server.stop().await;
        });
    }

    /// An IngestRecords rejection listed every violation of its message: six
    /// messages of 10,000 bad records (within the limits) made a 5.7 MB
    /// summary, which a client refuses (tonic: 4 MiB), so the caller got
    /// OUT_OF_RANGE "decoded message length too large" and never learnt
    /// what was stored. Same cause as above: caller input echoed without
    /// bound.
    #[test]
    fn an_ingest_summary_of_many_bad_records_reaches_the_client() {
        runtime().block_on(async {
            let server = Server::start(&scratch_dir()).await;
            let channel = server.channel().await;
            let mut trade = pb::trade_service_client::TradeServiceClient::new(channel.clone());
            let bad: Vec<pb::TradeRecord> = (0..10_000)
                .map(|i| pb::TradeRecord {
                    reporter: "XXX".into(),
                    partner: "KAZ".into(),
                    flow: pb::Flow::Turnover.into(),
                    period: format!("{}", 1900 + i % 200),
                    value: Some(pb::Money {
                        currency_code: "USD".into(),
                        units: 1,
                        nanos: 0,
                    }),
                    ..Default::default()
                })
                .collect();
            let messages: Vec<_> = (0..6)
                .map(|_| pb::IngestRecordsRequest {
                    records: bad.clone(),
                    ..Default::default()
                })
                .collect();
            let summary = trade
                .ingest_records(tokio_stream::iter(messages))
                .await
                .unwrap()
                .into_inner();
            assert_eq!((summary.messages, summary.rejected), (6, 60_000));
            for r in &summary.rejections {
                assert!(
                    r.reason.starts_with("records[0].reporter: "),
                    "{}",
                    &r.reason[..100]
                );
                assert!(r.reason.contains("more violation"), "{}", &r.reason[..100]);
            }
            drop((trade, channel));
            server.stop().await;
        });
    }

    /// Bad rows were named by the csv crate's line count, which counts only
    /// `\n`, reports the line before after a `\r\n` (BurntSushi/rust-csv#395)
    /// and places a row after blank lines at the first of them: in a
    /// Windows file the first bad row was "line 1" (the header), in a file
    /// with `\r` line ends every row was. Found by `csv_import`.
    #[test]
    fn bad_rows_are_named_by_their_physical_line_whatever_the_line_ends() {
        let header = "reporter,partner,flow,period,commodity,currency,value,source,released_at";
        let good = "CHN,KAZ,export,2024,TOTAL,USD,1,,";
        let bad = "CHN,KAZ,sideways,2024,TOTAL,USD,1,,";
        for eol in ["\n", "\r\n", "\r"] {
            // Lines: 1 header, 2 good, 3 bad, 4-5 a quoted cell over two lines, 6 blank, 7 bad.
            let file = [
                header,
                good,
                bad,
                "CHN,KGZ,export,2024,TOTAL,USD,1,\"two",
                "lines\",",
                "",
                bad,
            ]
            .join(eol);
            let parsed = tradewatch::import::parse_file(file.as_bytes()).unwrap();
            let lines: Vec<u64> = parsed.bad_rows.iter().map(|r| r.line).collect();
            assert_eq!(lines, [3, 7], "line ends {eol:?}: {:?}", parsed.bad_rows);
            assert_eq!(parsed.records.len(), 2, "line ends {eol:?}");
        }
    }

    /// A UN Comtrade period of six bytes was split at byte 4 by slicing, which
    /// panics inside a multi-byte character (`202é5`): `tradewatch import`
    /// crashed on such a file. Now the row is a bad row naming the period.
    #[test]
    fn a_comtrade_period_that_splits_a_character_is_a_bad_row() {
        let file = "reporterISO,partnerISO,flowCode,period,cmdCode,primaryValue\nCHN,KAZ,X,202é5,TOTAL,1\n";
        let parsed = tradewatch::import::parse_file(file.as_bytes()).unwrap();
        assert_eq!(parsed.bad_rows.len(), 1);
        assert_eq!(parsed.bad_rows[0].line, 2);
        assert!(
            parsed.bad_rows[0].reason.starts_with("period: "),
            "{:?}",
            parsed.bad_rows
        );
    }

    /// A row that is not UTF-8 is named by its line and column.
    #[test]
    fn a_row_that_is_not_utf8_names_its_column() {
        let file =
            b"reporter,partner,flow,period,commodity,currency,value\r\nCHN,KAZ,\xff,2024,TOTAL,USD,1\r\n";
        let parsed = tradewatch::import::parse_file(&file[..]).unwrap();
        assert_eq!(parsed.bad_rows.len(), 1);
        assert_eq!(parsed.bad_rows[0].line, 2);
        assert!(
            parsed.bad_rows[0].reason.starts_with("flow: "),
            "{:?}",
            parsed.bad_rows
        );
    }
}
