//! The Prometheus endpoint, scraped with the real curl while gRPC calls are
//! made: the counters move by exactly what the calls did.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{TestServer, create, delete, get_record, key_of, put, record};
use tokio_stream::StreamExt;
use tonic::Code;
use tradewatch::Config;
use tradewatch::pb::{self, milestone_service_client::MilestoneServiceClient, subscribe_response::Message};

const BN: i64 = 1_000_000_000;
const PUT: &str = "/tradewatch.v1.TradeService/PutRecords";
const GET: &str = "/tradewatch.v1.TradeService/GetRecord";
const DELETE: &str = "/tradewatch.v1.TradeService/DeleteRecord";
const CREATE_WATCH: &str = "/tradewatch.v1.MilestoneService/CreateWatch";
const SUBSCRIBE: &str = "/tradewatch.v1.MilestoneService/Subscribe";

/// Runs curl (blocking, off the runtime's threads) and returns what it printed.
async fn curl(args: &[&str]) -> (bool, String) {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "10"])
            .args(&args)
            .output()
            .expect("curl runs (the metrics tests need curl on PATH)");
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    })
    .await
    .unwrap()
}

/// One scrape: every sample, keyed by its name and labels as printed.
struct Scrape {
    text: String,
    samples: HashMap<String, f64>,
}

impl Scrape {
    /// A series' value; a series not (yet) exposed counts as 0.
    fn get(&self, series: &str) -> f64 {
        self.samples.get(series).copied().unwrap_or(0.0)
    }

    fn requests(&self, method: &str, code: &str) -> f64 {
        self.get(&format!(
            "tradewatch_grpc_requests_total{{method=\"{method}\",code=\"{code}\"}}"
        ))
    }

    fn all_requests(&self) -> f64 {
        self.samples
            .iter()
            .filter(|(k, _)| k.starts_with("tradewatch_grpc_requests_total{"))
            .map(|(_, v)| v)
            .sum()
    }
}

async fn scrape(addr: SocketAddr) -> Scrape {
    let (ok, text) = curl(&["--fail", &format!("http://{addr}/metrics")]).await;
    assert!(ok, "curl /metrics: {text}");
    assert!(text.ends_with("# EOF\n"), "a complete exposition: {text}");
    let samples = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').expect("sample line");
            (series.to_owned(), value.parse().expect("sample value"))
        })
        .collect();
    Scrape { text, samples }
}

/// How much each series moved between two scrapes.
fn moved(before: &Scrape, after: &Scrape, series: &str) -> f64 {
    after.get(series) - before.get(series)
}

fn usd(units: i64) -> pb::Money {
    pb::Money {
        currency_code: "USD".into(),
        units,
        nanos: 0,
    }
}

/// CHN ↔ KAZ per year: 40 bn is a milestone, and so is a record year.
fn kazakhstan_watch() -> pb::Watch {
    pb::Watch {
        name: "China–Kazakhstan trade".into(),
        selector: Some(pb::RecordSelector {
            reporters: vec!["CHN".into()],
            partners: vec!["KAZ".into()],
            ..Default::default()
        }),
        granularity: pb::Granularity::Year.into(),
        thresholds: vec![usd(40 * BN)],
        record_high: true,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn counters_move_by_exactly_what_the_calls_did() {
    let tmp = tempfile::tempdir().unwrap();
    let mut config = Config::new(tmp.path());
    config.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    let mut server = TestServer::start_with(config).await;
    let metrics_addr = server.metrics_addr.expect("metrics endpoint bound");
    assert_ne!(metrics_addr.port(), 0);

    let (ok, head) = curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{content_type}",
        &format!("http://{metrics_addr}/metrics"),
    ])
    .await;
    assert!(ok, "{head}");
    assert_eq!(
        head,
        "200 application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    let (_, elsewhere) = curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &format!("http://{metrics_addr}/"),
    ])
    .await;
    assert_eq!(elsewhere, "404");

    let start = scrape(metrics_addr).await;
    assert_eq!(start.all_requests(), 0.0, "no call yet: {}", start.text);
    for series in [
        "tradewatch_records_stored_total{outcome=\"created\"}",
        "tradewatch_events_emitted_total{kind=\"threshold_crossed\"}",
        "tradewatch_subscribers",
        "tradewatch_subscriber_lag_events",
        "tradewatch_write_duration_seconds_count",
    ] {
        assert!(
            start.samples.contains_key(series),
            "{series} exposed from the start: {}",
            start.text
        );
    }

    let mut trade = server.client().await;
    let mut milestones = MilestoneServiceClient::new(server.channel().await);
    milestones.create_watch(create(kazakhstan_watch())).await.unwrap();

    // Two new records; KAZ 2024 crosses 40 bn.
    let first = vec![
        record("CHN", "KAZ", "2024", 43_820_000_000, "GACC"),
        record("CHN", "KGZ", "2024", 22_000_000_000, "GACC"),
    ];
    trade.put_records(put(first.clone())).await.unwrap();
    // The same again: nothing changes.
    trade.put_records(put(first)).await.unwrap();
    // A new year that crosses 40 bn and beats 2024, and a revision.
    trade
        .put_records(put(vec![
            record("CHN", "KAZ", "2025", 48_600_000_000, "GACC"),
            record("CHN", "KAZ", "2024", 43_900_000_000, "GACC"),
        ]))
        .await
        .unwrap();
    let bad = trade
        .put_records(put(vec![record("XYZ", "KAZ", "2025", 1, "GACC")]))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    let kgz = record("CHN", "KGZ", "2024", 22_000_000_000, "GACC");
    get_record(&mut trade, key_of(&kgz)).await.unwrap();
    trade.delete_record(delete(key_of(&kgz))).await.unwrap();
    let gone = get_record(&mut trade, key_of(&kgz)).await.unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
    // A path the server does not serve is counted, under one label.
    let mut raw = tonic::client::Grpc::new(server.channel().await);
    raw.ready().await.unwrap();
    let unknown = raw
        .unary(
            tonic::Request::new(pb::RecordKey::default()),
            http::uri::PathAndQuery::from_static("/tradewatch.v1.TradeService/NoSuchMethod"),
            tonic_prost::ProstCodec::<pb::RecordKey, pb::TradeRecord>::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::Unimplemented);

    let after_writes = scrape(metrics_addr).await;
    let calls = [
        (CREATE_WATCH, "OK", 1.0),
        (PUT, "OK", 3.0),
        (PUT, "INVALID_ARGUMENT", 1.0),
        (GET, "OK", 1.0),
        (GET, "NOT_FOUND", 1.0),
        (DELETE, "OK", 1.0),
        ("unknown", "UNIMPLEMENTED", 1.0),
    ];
    for (method, code, n) in calls {
        assert_eq!(
            after_writes.requests(method, code) - start.requests(method, code),
            n,
            "{method} {code}: {}",
            after_writes.text
        );
    }
    assert_eq!(
        after_writes.all_requests() - start.all_requests(),
        9.0,
        "no other call counted: {}",
        after_writes.text
    );
    assert_eq!(
        moved(
            &start,
            &after_writes,
            &format!("tradewatch_grpc_request_duration_seconds_count{{method=\"{PUT}\"}}")
        ),
        4.0
    );
    for (series, n) in [
        ("tradewatch_records_stored_total{outcome=\"created\"}", 3.0),
        ("tradewatch_records_stored_total{outcome=\"revised\"}", 1.0),
        ("tradewatch_records_stored_total{outcome=\"deleted\"}", 1.0),
        ("tradewatch_events_emitted_total{kind=\"record_stored\"}", 5.0),
        ("tradewatch_events_emitted_total{kind=\"threshold_crossed\"}", 2.0),
        ("tradewatch_events_emitted_total{kind=\"record_high\"}", 1.0),
        // CreateWatch, three PutRecords and DeleteRecord reach the writer;
        // the bad batch never does.
        ("tradewatch_write_duration_seconds_count", 5.0),
    ] {
        assert_eq!(
            moved(&start, &after_writes, series),
            n,
            "{series}: {}",
            after_writes.text
        );
    }
    assert_eq!(after_writes.get("tradewatch_subscribers"), 0.0);

    // A subscriber replaying the whole log: counted while it is open, and
    // caught up once it has had everything.
    let mut stream = milestones
        .subscribe(pb::SubscribeRequest {
            from_sequence: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut events = 0;
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("replay within 10 s")
            .expect("stream open")
            .expect("no error");
        match message.message {
            Some(Message::Event(_)) => events += 1,
            Some(Message::CaughtUp(_)) => break,
            _ => {}
        }
    }
    assert_eq!(events, 8);
    let subscribed = scrape(metrics_addr).await;
    assert_eq!(
        subscribed.get("tradewatch_subscribers"),
        1.0,
        "{}",
        subscribed.text
    );
    assert_eq!(
        subscribed.get("tradewatch_subscriber_lag_events"),
        0.0,
        "{}",
        subscribed.text
    );
    assert_eq!(
        subscribed.requests(SUBSCRIBE, "CANCELLED"),
        0.0,
        "an open stream is counted when it ends"
    );

    // The client goes away: the stream ends as CANCELLED and the gauge
    // falls back to 0.
    drop(stream);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let ended = loop {
        let now = scrape(metrics_addr).await;
        if now.get("tradewatch_subscribers") == 0.0 && now.requests(SUBSCRIBE, "CANCELLED") == 1.0 {
            break now;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "subscriber gone within 10 s: {}",
            now.text
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        ended.all_requests() - start.all_requests(),
        10.0,
        "{}",
        ended.text
    );

    // The endpoint stops with the server.
    server.stop().await;
    let (ok, _) = curl(&["--fail", &format!("http://{metrics_addr}/metrics")]).await;
    assert!(!ok, "the metrics endpoint stopped with the server");
}

#[tokio::test(flavor = "multi_thread")]
async fn servers_in_one_process_count_separately() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let with_metrics = |dir: &std::path::Path| Config {
        metrics_listen: Some("127.0.0.1:0".parse().unwrap()),
        ..Config::new(dir)
    };
    let mut first = TestServer::start_with(with_metrics(a.path())).await;
    let mut second = TestServer::start_with(with_metrics(b.path())).await;
    first
        .client()
        .await
        .put_records(put(vec![record("CHN", "KAZ", "2025", 48 * BN, "GACC")]))
        .await
        .unwrap();
    let one = scrape(first.metrics_addr.unwrap()).await;
    let other = scrape(second.metrics_addr.unwrap()).await;
    assert_eq!(one.requests(PUT, "OK"), 1.0);
    assert_eq!(other.requests(PUT, "OK"), 0.0);
    assert_eq!(
        other.get("tradewatch_records_stored_total{outcome=\"created\"}"),
        0.0
    );
    first.stop().await;
    second.stop().await;
}

#[tokio::test]
async fn no_endpoint_unless_asked_for() {
    let mut server = TestServer::start().await;
    assert_eq!(server.metrics_addr, None);
    server.stop().await;
}

/// The binary: `TRADEWATCH_METRICS_LISTEN` turns the endpoint on, and a
/// second stable stdout line (after the listening line) says where.
#[tokio::test(flavor = "multi_thread")]
async fn the_binary_announces_its_metrics_address() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tradewatch"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env("TRADEWATCH_METRICS_LISTEN", "127.0.0.1:0")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .expect("server starts");
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let server = KillOnDrop(child);
    let mut lines = [String::new(), String::new()];
    for line in &mut lines {
        stdout.read_line(line).expect("reads a line");
    }
    assert!(
        lines[0].starts_with("tradewatch listening on 127.0.0.1:"),
        "{lines:?}"
    );
    let metrics_addr: SocketAddr = lines[1]
        .trim()
        .strip_prefix("tradewatch metrics on ")
        .unwrap_or_else(|| panic!("metrics line: {lines:?}"))
        .parse()
        .expect("an address");
    let scraped = scrape(metrics_addr).await;
    assert_eq!(scraped.get("tradewatch_subscribers"), 0.0, "{}", scraped.text);
    drop(server);
}

#[test]
fn a_metrics_address_in_use_fails_at_start() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tradewatch"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            &addr,
            "--data-dir",
        ])
        .arg(dir.path())
        .env("RUST_LOG", "warn")
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("cannot serve metrics on {addr}")),
        "{stderr}"
    );
    assert!(
        out.stdout.is_empty(),
        "no listening line: {:?}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// SIGKILL when dropped, also when a test fails.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
