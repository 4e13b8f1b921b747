//! A real server on an ephemeral port with a temporary data dir, built with
//! the same `Application` the binary runs.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::Status;
use tonic::codegen::{Body, Bytes, StdError};
use tonic::transport::Channel;
use tradewatch::pb::{self, trade_service_client::TradeServiceClient};
use tradewatch::{Application, Config};

pub struct TestServer {
    pub addr: SocketAddr,
    /// Where `GET /metrics` is served, when the config asked for it.
    pub metrics_addr: Option<SocketAddr>,
    pub data_dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestServer {
    pub async fn start() -> TestServer {
        let tmp = tempfile::tempdir().expect("temp dir");
        let mut server = TestServer::start_in(tmp.path()).await;
        server._tmp = Some(tmp);
        server
    }

    /// Starts a server on an existing data dir (which the caller keeps).
    pub async fn start_in(dir: &Path) -> TestServer {
        TestServer::start_with(Config::new(dir)).await
    }

    /// Starts a server with a config of the caller's (whose data dir the
    /// caller keeps).
    pub async fn start_with(config: Config) -> TestServer {
        let dir = config.data_dir.clone();
        let app = Application::build("127.0.0.1:0".parse().unwrap(), config)
            .await
            .expect("server builds");
        let addr = app.local_addr().unwrap();
        let metrics_addr = app.metrics_addr();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(app.run_until(async {
            let _ = stopped.await;
        }));
        TestServer {
            addr,
            metrics_addr,
            data_dir: dir,
            _tmp: None,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub async fn client(&self) -> TradeServiceClient<Channel> {
        TradeServiceClient::connect(format!("http://{}", self.addr))
            .await
            .expect("connects")
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .expect("connects")
    }

    /// Stops the server gracefully and waits until it has let go of the store.
    pub async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("server task").expect("server stops cleanly");
        }
    }

    /// Stops and starts again on the same data dir.
    pub async fn restart(mut self) -> TestServer {
        self.stop().await;
        let mut next = TestServer::start_in(&self.data_dir).await;
        next._tmp = self._tmp.take();
        next
    }
}

/// The records of data/china_central_asia.csv, in file order.
pub fn seed_records() -> Vec<pb::TradeRecord> {
    let csv = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/data/china_central_asia.csv"
    ))
    .expect("seed data");
    csv.lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let f: Vec<&str> = line.split(',').collect();
            assert_eq!(f[2], "turnover", "seed data is turnover");
            record(f[0], f[1], f[3], f[6].parse().unwrap(), f[7])
        })
        .collect()
}

/// A TOTAL turnover record in USD.
pub fn record(reporter: &str, partner: &str, period: &str, units: i64, source: &str) -> pb::TradeRecord {
    pb::TradeRecord {
        reporter: reporter.into(),
        partner: partner.into(),
        flow: pb::Flow::Turnover.into(),
        period: period.into(),
        commodity: "TOTAL".into(),
        value: Some(pb::Money {
            currency_code: "USD".into(),
            units,
            nanos: 0,
        }),
        source: source.into(),
        ..Default::default()
    }
}

pub fn key_of(r: &pb::TradeRecord) -> pb::RecordKey {
    pb::RecordKey {
        reporter: r.reporter.clone(),
        partner: r.partner.clone(),
        flow: r.flow,
        period: r.period.clone(),
        commodity: if r.commodity.is_empty() {
            "TOTAL".into()
        } else {
            r.commodity.clone()
        },
        currency: r
            .value
            .as_ref()
            .map(|v| v.currency_code.clone())
            .unwrap_or_default(),
    }
}

/// The caller-supplied content of a record (server-set fields cleared).
pub fn content(r: &pb::TradeRecord) -> pb::TradeRecord {
    pb::TradeRecord {
        revision: 0,
        updated_at: None,
        ..r.clone()
    }
}

pub fn put(records: Vec<pb::TradeRecord>) -> pb::PutRecordsRequest {
    pb::PutRecordsRequest {
        records,
        ..Default::default()
    }
}

/// One IngestRecords message, without a request id.
pub fn ingest(records: Vec<pb::TradeRecord>) -> pb::IngestRecordsRequest {
    pb::IngestRecordsRequest {
        records,
        ..Default::default()
    }
}

pub fn get(key: pb::RecordKey) -> pb::GetRecordRequest {
    pb::GetRecordRequest {
        key: Some(key),
        ..Default::default()
    }
}

pub fn delete(key: pb::RecordKey) -> pb::DeleteRecordRequest {
    pb::DeleteRecordRequest {
        key: Some(key),
        ..Default::default()
    }
}

/// GetRecord over any client (with or without an interceptor): the record,
/// or the call's status.
pub async fn get_record<T>(
    client: &mut TradeServiceClient<T>,
    key: pb::RecordKey,
) -> Result<pb::TradeRecord, Status>
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<StdError>,
    T::ResponseBody: Body<Data = Bytes> + Send + 'static,
    <T::ResponseBody as Body>::Error: Into<StdError> + Send,
{
    client
        .get_record(get(key))
        .await?
        .into_inner()
        .record
        .ok_or_else(|| Status::internal("GetRecord answered without a record"))
}

pub fn put_group(group: pb::PartnerGroup) -> pb::PutGroupRequest {
    pb::PutGroupRequest {
        group: Some(group),
        ..Default::default()
    }
}

pub fn delete_group(name: &str) -> pb::DeleteGroupRequest {
    pb::DeleteGroupRequest {
        name: name.into(),
        ..Default::default()
    }
}

/// The watch of the README's quick start: China's trade with Central Asia
/// per year, 100 bn USD and record highs.
pub fn quick_start_watch() -> pb::Watch {
    pb::Watch {
        name: "China–Central Asia trade".into(),
        selector: Some(china_central_asia()),
        granularity: pb::Granularity::Year.into(),
        thresholds: vec![pb::Money {
            currency_code: "USD".into(),
            units: 100_000_000_000,
            nanos: 0,
        }],
        record_high: true,
        ..Default::default()
    }
}

/// CHN × CENTRAL_ASIA.
pub fn china_central_asia() -> pb::RecordSelector {
    pb::RecordSelector {
        reporters: vec!["CHN".into()],
        partners: vec!["CENTRAL_ASIA".into()],
        ..Default::default()
    }
}

/// CreateWatch of `watch`, without backfill or a request id.
pub fn create(watch: pb::Watch) -> pb::CreateWatchRequest {
    pb::CreateWatchRequest {
        watch: Some(watch),
        ..Default::default()
    }
}

pub fn delete_watch(id: &str) -> pb::DeleteWatchRequest {
    pb::DeleteWatchRequest {
        id: id.into(),
        ..Default::default()
    }
}

/// The real binary, serving on a free port; killed with SIGKILL when
/// dropped (what std's `kill` sends on Unix), also when a test fails.
pub struct Binary {
    pub child: Child,
    pub addr: String,
}

impl Binary {
    /// Starts `tradewatch serve` on `dir` with `extra` flags and waits for its
    /// "tradewatch listening on ADDR" line.
    pub fn start(dir: &Path, extra: &[&str]) -> Binary {
        Binary::start_reading(dir, extra, 0).0
    }

    /// As [`Binary::start`], and returns the `more` stdout lines that
    /// follow the listening line (the metrics and web addresses).
    pub fn start_reading(dir: &Path, extra: &[&str], more: usize) -> (Binary, Vec<String>) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tradewatch"))
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(extra)
            .arg("--data-dir")
            .arg(dir)
            .env("RUST_LOG", "warn")
            // A cluster setting in the test's environment must not turn
            // a single node into a cluster node.
            .env_remove("TRADEWATCH_NATS")
            .stdout(Stdio::piped())
            .spawn()
            .expect("server starts");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).expect("reads address");
        let addr = line
            .trim()
            .strip_prefix("tradewatch listening on ")
            .expect("address line")
            .to_owned();
        let lines = (0..more)
            .map(|_| {
                let mut line = String::new();
                stdout.read_line(&mut line).expect("reads a line");
                line.trim().to_owned()
            })
            .collect();
        (Binary { child, addr }, lines)
    }

    pub async fn client(&self) -> TradeServiceClient<Channel> {
        TradeServiceClient::connect(format!("http://{}", self.addr))
            .await
            .unwrap()
    }

    /// SIGKILL, now.
    pub fn kill(self) {}
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
