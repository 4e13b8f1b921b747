//! Aggregate latency at 1, 10 and 30 million records, through the gRPC API on
//! loopback, side by side with PostgreSQL 15 on the same rows; and what the
//! store costs to start and hold: start-up with the page cache dropped and
//! with the files cached, each question's first answer after a restart, and
//! the server's RSS after the load, after start and after the questions.
//!
//! ```sh
//! scripts/bench-postgres.sh            # start PostgreSQL and prepare a database (optional)
//! cargo bench --bench aggregate -- 1m  # or 10m, 30m, or "1m 10m 30m"
//! cargo bench --bench aggregate -- 10m a c   # only questions (a) and (c)
//! ```
//!
//! Without `TRADEWATCH_BENCH_PG` (a connection string) the PostgreSQL column
//! is skipped. Stores are built under `target/bench-data/` and reused when
//! already loaded (`--reload` rebuilds them). Dropping the page cache needs
//! root; elsewhere the bench says it was not dropped.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures_util::SinkExt;
use tonic::transport::Channel;
use tradewatch::pb::{self, trade_service_client::TradeServiceClient};

#[path = "common/dataset.rs"]
mod dataset;
use dataset::{Dataset, to_record};
#[path = "common/h2load.rs"]
mod h2load;
#[path = "common/postgres.rs"]
mod postgres;
#[path = "common/server.rs"]
mod server;
use server::Server;

const BATCH: usize = 2000;
const LOADERS: usize = 4;
/// Calls per question measured by h2load, and seconds of pgbench.
const H2LOAD_RUNS: usize = 5_000;
const PGBENCH_SECONDS: u32 = 6;
/// h2load runs of the health check and of each question, alternating.
const FLOOR_PAIRS: usize = 3;
/// Restarts per question for its first answer after a restart.
const RESTARTS: usize = 5;

/// The four questions, as gRPC requests.
fn questions() -> Vec<(&'static str, pb::AggregateRequest)> {
    let selector = |reporters: &[&str], partners: &[&str]| pb::RecordSelector {
        reporters: reporters.iter().map(|s| s.to_string()).collect(),
        partners: partners.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    vec![
        (
            "(a) CHN ↔ CENTRAL_ASIA per year, growth",
            pb::AggregateRequest {
                selector: Some(selector(&["CHN"], &["CENTRAL_ASIA"])),
                group_by: vec![pb::Dimension::Period.into()],
                granularity: pb::Granularity::Year.into(),
                ..Default::default()
            },
        ),
        (
            "(b) CHN top 10 partners, 2025",
            pb::AggregateRequest {
                selector: Some(pb::RecordSelector {
                    period_from: "2025".into(),
                    period_to: "2025".into(),
                    ..selector(&["CHN"], &[])
                }),
                group_by: vec![pb::Dimension::Partner.into()],
                order_by: pb::OrderBy::TotalDesc.into(),
                limit: 10,
                ..Default::default()
            },
        ),
        (
            "(c) world total per year, all reporters",
            pb::AggregateRequest {
                group_by: vec![pb::Dimension::Period.into()],
                ..Default::default()
            },
        ),
        (
            "(d) top 10 HS2 of CHN exports to KAZ, 2021-2025",
            pb::AggregateRequest {
                selector: Some(pb::RecordSelector {
                    flows: vec![pb::Flow::Export.into()],
                    commodity_level: pb::CommodityLevel::Hs2.into(),
                    period_from: "2021".into(),
                    period_to: "2025".into(),
                    ..selector(&["CHN"], &["KAZ"])
                }),
                group_by: vec![pb::Dimension::Commodity.into()],
                order_by: pb::OrderBy::TotalDesc.into(),
                limit: 10,
                ..Default::default()
            },
        ),
    ]
}

/// The same questions in SQL, trade volume computed per key as tradewatch
/// does (turnover if published, else exports + imports). Each row: the
/// group (period, partner or commodity), its total and, grouped by period,
/// the year before's total, all as text, to compare with tradewatch's.
fn sql_questions() -> Vec<&'static str> {
    vec![
        "WITH v AS (
           SELECT period, CASE WHEN bool_or(flow = 'turnover') THEN sum(value) FILTER (WHERE flow = 'turnover')
                               ELSE sum(value) FILTER (WHERE flow IN ('export', 'import')) END AS volume
           FROM trade
           WHERE reporter = 'CHN' AND partner IN ('KAZ','KGZ','TJK','TKM','UZB') AND commodity = 'TOTAL'
             AND currency = 'USD' AND monthly = false
           GROUP BY partner, period)
         SELECT period::text, total::text, (lag(total) OVER (ORDER BY period))::text
         FROM (SELECT period, sum(volume) AS total FROM v GROUP BY period) t ORDER BY period",
        "WITH v AS (
           SELECT partner, CASE WHEN bool_or(flow = 'turnover') THEN sum(value) FILTER (WHERE flow = 'turnover')
                                ELSE sum(value) FILTER (WHERE flow IN ('export', 'import')) END AS volume
           FROM trade
           WHERE reporter = 'CHN' AND partner <> 'WLD' AND commodity = 'TOTAL' AND currency = 'USD'
             AND monthly = false AND period = 2025
           GROUP BY partner)
         SELECT partner::text, volume::text, NULL::text FROM v ORDER BY volume DESC, partner LIMIT 10",
        "WITH v AS (
           SELECT period, CASE WHEN bool_or(flow = 'turnover') THEN sum(value) FILTER (WHERE flow = 'turnover')
                               ELSE sum(value) FILTER (WHERE flow IN ('export', 'import')) END AS volume
           FROM trade
           WHERE partner <> 'WLD' AND commodity = 'TOTAL' AND currency = 'USD' AND monthly = false
           GROUP BY reporter, partner, period)
         SELECT period::text, total::text, (lag(total) OVER (ORDER BY period))::text
         FROM (SELECT period, sum(volume) AS total FROM v GROUP BY period) t ORDER BY period",
        "SELECT commodity::text, sum(value)::text AS total, NULL::text FROM trade
         WHERE reporter = 'CHN' AND partner = 'KAZ' AND flow = 'export' AND length(commodity) = 2
           AND currency = 'USD' AND monthly = false AND period BETWEEN 2021 AND 2025
         GROUP BY commodity ORDER BY total DESC, commodity LIMIT 10",
    ]
}

/// One row of an answer as text: its group (period, partner or commodity),
/// its total and the year before's total.
type AnswerRow = (Option<String>, Option<String>, Option<String>);

fn money_text(money: Option<&pb::Money>) -> Option<String> {
    money.map(|m| {
        let sign = if m.units < 0 || m.nanos < 0 { "-" } else { "" };
        format!("{sign}{}.{:09}", m.units.unsigned_abs(), m.nanos.unsigned_abs())
    })
}

fn answer_rows(answer: &pb::AggregateResponse) -> Vec<AnswerRow> {
    answer
        .rows
        .iter()
        .map(|row| {
            let group = [&row.period, &row.partner, &row.commodity]
                .into_iter()
                .find(|s| !s.is_empty())
                .cloned();
            (
                group,
                money_text(row.total.as_ref()),
                money_text(row.previous_year_total.as_ref()),
            )
        })
        .collect()
}

struct Stats {
    p50: Duration,
    p99: Duration,
}

/// Runs `f` repeatedly (after a warm-up) for up to `budget` or `max_runs`.
async fn measure<F, Fut>(budget: Duration, max_runs: usize, mut f: F) -> Stats
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for _ in 0..20 {
        f().await;
    }
    let mut samples = Vec::new();
    let start = Instant::now();
    while samples.len() < max_runs && (start.elapsed() < budget || samples.len() < 20) {
        let t = Instant::now();
        f().await;
        samples.push(t.elapsed());
    }
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
    Stats {
        p50: at(0.5),
        p99: at(0.99),
    }
}

fn dir_size(path: &Path) -> u64 {
    std::fs::read_dir(path)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_size(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

/// Loads the dataset through concurrent PutRecords calls; returns records/s.
async fn load_tradewatch(channel: Channel, data: &Dataset) -> f64 {
    let (tx, rx) = async_channel_pair();
    let start = Instant::now();
    let loaders: Vec<_> = (0..LOADERS)
        .map(|_| {
            let mut client = TradeServiceClient::new(channel.clone());
            let rx = rx.clone();
            tokio::spawn(async move {
                while let Ok(batch) = rx.recv().await {
                    client
                        .put_records(pb::PutRecordsRequest {
                            records: batch,
                            ..Default::default()
                        })
                        .await
                        .expect("batch stored");
                }
            })
        })
        .collect();
    let mut batch = Vec::with_capacity(BATCH);
    let mut sent = 0usize;
    for row in data.rows() {
        batch.push(to_record(row));
        if batch.len() == BATCH {
            sent += batch.len();
            tx.send(std::mem::take(&mut batch)).await.expect("loaders alive");
            if sent % 500_000 == 0 {
                eprintln!(
                    "  {sent} records, {:.0} records/s",
                    sent as f64 / start.elapsed().as_secs_f64()
                );
            }
        }
    }
    if !batch.is_empty() {
        tx.send(batch).await.expect("loaders alive");
    }
    drop(tx);
    for l in loaders {
        l.await.expect("loader");
    }
    data.len() as f64 / start.elapsed().as_secs_f64()
}

/// A multi-consumer queue of batches (a tokio mpsc behind a mutex).
fn async_channel_pair() -> (tokio::sync::mpsc::Sender<Vec<pb::TradeRecord>>, SharedReceiver) {
    let (tx, rx) = tokio::sync::mpsc::channel(LOADERS * 2);
    (
        tx,
        SharedReceiver(std::sync::Arc::new(tokio::sync::Mutex::new(rx))),
    )
}

#[derive(Clone)]
struct SharedReceiver(std::sync::Arc<tokio::sync::Mutex<tokio::sync::mpsc::Receiver<Vec<pb::TradeRecord>>>>);

impl SharedReceiver {
    async fn recv(&self) -> Result<Vec<pb::TradeRecord>, ()> {
        self.0.lock().await.recv().await.ok_or(())
    }
}

async fn load_postgres(
    pg: &tokio_postgres::Client,
    data: &Dataset,
) -> Result<(f64, u64), tokio_postgres::Error> {
    pg.batch_execute(&postgres::create_table("trade_loading")).await?;
    let start = Instant::now();
    let sink = pg
        .copy_in(
            "COPY trade_loading (reporter, partner, flow, period, commodity, currency, value, source) FROM STDIN",
        )
        .await?;
    futures_util::pin_mut!(sink);
    let mut buf = String::with_capacity(1 << 20);
    for (reporter, partner, flow, year, commodity, units) in data.rows() {
        let flow = if flow == 0 { "export" } else { "import" };
        buf.push_str(&format!(
            "{reporter}\t{partner}\t{flow}\t{year}\t{commodity}\tUSD\t{units}\tsynthetic\n"
        ));
        if buf.len() > (1 << 20) {
            sink.send(bytes::Bytes::from(std::mem::take(&mut buf))).await?;
        }
    }
    sink.send(bytes::Bytes::from(buf)).await?;
    sink.as_mut().finish().await?;
    // What a DBA would add for these questions: the primary key serves
    // reporter–partner lookups, this one a commodity of a reporter over
    // all its partners.
    pg.batch_execute(&format!(
        "{}; ANALYZE trade_loading;",
        postgres::index("trade_loading")
    ))
    .await?;
    let rate = data.len() as f64 / start.elapsed().as_secs_f64();
    let size: i64 = pg
        .query_one("SELECT pg_total_relation_size('trade_loading')", &[])
        .await?
        .get(0);
    Ok((rate, size as u64))
}

/// Each wanted question asked first right after a restart of its own, over
/// a connection opened (and its first call made) before: the median of
/// [`RESTARTS`] restarts each, as a server just started is busy for a
/// moment; and the start-up times of those restarts (files cached).
///
/// With `forget_cache`, each restart first deletes the list of what the
/// series cache held (as after a crash before the server first wrote it),
/// so the server starts with nothing to warm.
async fn first_answers(
    store: &Path,
    serve_args: &[&str],
    wanted: &dyn Fn(&str) -> bool,
    forget_cache: bool,
) -> anyhow::Result<(Vec<Duration>, Vec<Duration>)> {
    let mut firsts = Vec::new();
    let mut starts = Vec::new();
    for (name, request) in questions() {
        if !wanted(name) {
            continue;
        }
        let mut times = Vec::new();
        for _ in 0..RESTARTS {
            if forget_cache {
                match std::fs::remove_file(store.join("series-cache.keys")) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
                    _ => {}
                }
            }
            let started = Instant::now();
            let server = Server::start(store, serve_args)?;
            starts.push(started.elapsed());
            let channel = Channel::from_shared(format!("http://{}", server.addr))?
                .connect()
                .await?;
            tonic_health::pb::health_client::HealthClient::new(channel.clone())
                .check(tonic_health::pb::HealthCheckRequest::default())
                .await?;
            let mut client = TradeServiceClient::new(channel.clone());
            let asked = Instant::now();
            client.aggregate(request.clone()).await?;
            times.push(asked.elapsed());
            drop((client, channel));
            tokio::task::spawn_blocking(move || server.stop()).await??;
        }
        times.sort();
        firsts.push(times[times.len() / 2]);
    }
    starts.sort();
    Ok((firsts, starts))
}

fn secs(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64())
}

/// Drops the OS page cache (written files first synced), as after a
/// reboot; false where that is not allowed (not root).
fn drop_page_cache() -> bool {
    let _ = std::process::Command::new("sync").status();
    std::fs::write("/proc/sys/vm/drop_caches", "3\n").is_ok()
}

fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1000.0)
}

// One thread: the client is one sequential caller, and a single-threaded
// runtime adds no wake-ups between threads of its own to what it measures.
#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let reload = args.iter().any(|a| a == "--reload");
    let mut sizes: Vec<&str> = args
        .iter()
        .map(String::as_str)
        .filter(|a| Dataset::named(a).is_some())
        .collect();
    if sizes.is_empty() {
        sizes.push("1m");
    }
    // Question letters to run (`a` … `d`); none: all four.
    let only: Vec<&str> = args
        .iter()
        .map(String::as_str)
        .filter(|a| ["a", "b", "c", "d"].contains(a))
        .collect();
    let wanted = |name: &str| only.is_empty() || only.iter().any(|q| name.starts_with(&format!("({q})")));
    let pg_url = std::env::var("TRADEWATCH_BENCH_PG").ok();
    // The server's page cache, as `serve --cache-mb` would set it.
    let cache_mb: u64 = std::env::var("TRADEWATCH_CACHE_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(tradewatch::Config::DEFAULT_CACHE_MB);
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-data");
    let h2load = h2load::find();
    if let Err(why) = &h2load {
        eprintln!("no h2load columns: {why}");
    }

    let mut report: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for size in sizes {
        let data = Dataset::named(size).expect("a known size");
        let dir = root.join(data.name);
        let marker = dir.join("loaded");
        if reload && dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        std::fs::create_dir_all(&dir)?;
        let serve_args = ["--cache-mb".to_owned(), cache_mb.to_string()];
        let serve_args: Vec<&str> = serve_args.iter().map(String::as_str).collect();

        let mut lines = vec![format!(
            "## {} records ({} reporters, {} commodities per pair)",
            data.len(),
            data.reporters.len(),
            data.commodities.len()
        )];
        if !marker.exists() {
            eprintln!("loading {} records into tradewatch…", data.len());
            let server = Server::start(&dir.join("store"), &serve_args)?;
            let channel = Channel::from_shared(format!("http://{}", server.addr))?
                .connect()
                .await?;
            let rate = load_tradewatch(channel.clone(), &data).await;
            let rss = server.rss_bytes().unwrap_or(0);
            drop(channel);
            tokio::task::spawn_blocking(move || server.stop()).await??;
            std::fs::write(&marker, format!("{rate:.0} {rss}"))?;
        }
        let loaded = std::fs::read_to_string(&marker)?;
        let mut loaded = loaded.split_whitespace().map(|v| v.parse::<f64>().unwrap_or(0.0));
        let tw_rate = loaded.next().unwrap_or(0.0);
        let rss_after_load = loaded.next().map(|b| b as u64);
        let tw_size = dir_size(&dir.join("store"));

        // Start-up with the page cache dropped (a machine's first start, or a
        // new node's), then with the files cached (a process restart).
        let cold = drop_page_cache();
        let started = Instant::now();
        let server = Server::start(&dir.join("store"), &serve_args)?;
        let cold_start = started.elapsed();
        let rss_at_start = server.rss_bytes().unwrap_or(0);
        tokio::task::spawn_blocking(move || server.stop()).await??;
        let server = Server::start(&dir.join("store"), &serve_args)?;
        let addr = server.addr.clone();
        let channel = Channel::from_shared(format!("http://{addr}"))?.connect().await?;

        let pg = match &pg_url {
            Some(url) => {
                let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
                tokio::spawn(connection);
                let table = format!("trade_{}", data.name);
                let loaded: bool = client
                    .query_one(&format!("SELECT to_regclass('{table}') IS NOT NULL"), &[])
                    .await?
                    .get(0);
                let pg_marker = dir.join("pg-loaded");
                if !loaded || reload || !pg_marker.exists() {
                    eprintln!("loading {} rows into PostgreSQL…", data.len());
                    let (rate, _) = load_postgres(&client, &data).await?;
                    client
                        .batch_execute(&format!(
                            "DROP TABLE IF EXISTS {table}; ALTER TABLE trade_loading RENAME TO {table};"
                        ))
                        .await?;
                    std::fs::write(&pg_marker, format!("{rate:.0}"))?;
                }
                client
                    .batch_execute(&format!(
                        "DROP VIEW IF EXISTS trade; CREATE TEMP VIEW trade AS SELECT * FROM {table}"
                    ))
                    .await?;
                let rate: f64 = std::fs::read_to_string(&pg_marker)?.trim().parse().unwrap_or(0.0);
                let size: i64 = client
                    .query_one(&format!("SELECT pg_total_relation_size('{table}')"), &[])
                    .await?
                    .get(0);
                Some((client, rate, size as u64))
            }
            None => None,
        };

        // The fixed cost of a call: the health check answers from memory,
        // through the same layers and connection.
        let floor = {
            let health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
            measure(Duration::from_secs(3), 20_000, || {
                let mut health = health.clone();
                async move {
                    health
                        .check(tonic_health::pb::HealthCheckRequest::default())
                        .await
                        .expect("health check");
                }
            })
            .await
        };
        let h2_call = |method: &str, request: &dyn Fn() -> Vec<u8>| match &h2load {
            Ok(path) => h2load::unary(path, &addr, method, &request(), H2LOAD_RUNS).map(Some),
            Err(_) => Ok(None),
        };
        let h2_floor = h2_call("/grpc.health.v1.Health/Check", &|| {
            prost::Message::encode_to_vec(&tonic_health::pb::HealthCheckRequest::default())
        })?;
        lines.push(String::new());
        lines.push(format!(
            "Round trip of a health check on the same connection (the floor): h2load p50 {} ms, p99 {} ms; the bench's tonic client p50 {} ms, p99 {} ms.",
            h2_floor.as_ref().map_or("–".into(), |f| ms(f.p50)),
            h2_floor.as_ref().map_or("–".into(), |f| ms(f.p99)),
            ms(floor.p50),
            ms(floor.p99)
        ));
        lines.push(String::new());
        lines.push(format!("| question | h2load p50 ms | p99 ms | × floor (the floor, median of {FLOOR_PAIRS} runs next to it) | pgbench p50 ms | p99 ms | PG / tw (p50) | tonic client p50 ms | first after a restart ms, median of {RESTARTS} (× tonic p50) | the same, nothing to warm |"));
        lines.push("|---|---|---|---|---|---|---|---|---|---|".into());
        let mut rows = Vec::new();
        for ((name, request), sql) in questions().into_iter().zip(sql_questions()) {
            if !wanted(name) {
                continue;
            }
            let mut client = TradeServiceClient::new(channel.clone());
            let tw = measure(Duration::from_secs(5), 20_000, || {
                let request = request.clone();
                let mut client = client.clone();
                async move {
                    client.aggregate(request).await.expect("aggregate");
                }
            })
            .await;
            // Show one answer so a reader can check the bench asks what it says.
            let sample = client.aggregate(request.clone()).await?.into_inner();
            eprintln!(
                "{name}: {} rows, grand total {:?}",
                sample.rows.len(),
                sample.grand_total
            );
            let pg_cells = match &pg {
                Some((pg, _, _)) => {
                    let statement = pg.prepare(sql).await?;
                    let expected: Vec<AnswerRow> = pg
                        .query(&statement, &[])
                        .await?
                        .iter()
                        .map(|row| (row.get(0), row.get(1), row.get(2)))
                        .collect();
                    let answered = answer_rows(&sample);
                    anyhow::ensure!(
                        answered == expected,
                        "{name}: tradewatch and PostgreSQL answer differently\n  tradewatch: {answered:?}\n  PostgreSQL: {expected:?}"
                    );
                    let table = format!("trade_{}", data.name);
                    let sql = sql.replace("FROM trade", &format!("FROM {table}"));
                    let url = pg_url.as_deref().expect("a PostgreSQL to compare with");
                    Some(postgres::pgbench(url, &sql, PGBENCH_SECONDS)?)
                }
                None => None,
            };
            // The floor drifts between runs as much as a question's own
            // cost: it is measured again next to each question, alternating
            // with it, and each compared with the median of its own runs.
            let mut pairs = Vec::new();
            for _ in 0..FLOOR_PAIRS {
                let floor = h2_call("/grpc.health.v1.Health/Check", &|| {
                    prost::Message::encode_to_vec(&tonic_health::pb::HealthCheckRequest::default())
                })?;
                let question = h2_call("/tradewatch.v1.TradeService/Aggregate", &|| {
                    prost::Message::encode_to_vec(&request)
                })?;
                pairs.extend(floor.zip(question));
            }
            let median = |of: &dyn Fn(&(h2load::Latency, h2load::Latency)) -> Duration| {
                let mut values: Vec<Duration> = pairs.iter().map(of).collect();
                values.sort();
                values.get(values.len() / 2).copied()
            };
            let h2 = median(&|(_, q)| q.p50)
                .zip(median(&|(_, q)| q.p99))
                .map(|(p50, p99)| h2load::Latency { p50, p99 });
            let h2_floor = median(&|(f, _)| f.p50)
                .zip(median(&|(f, _)| f.p99))
                .map(|(p50, p99)| h2load::Latency { p50, p99 });
            let h2_cells = match (&h2, &h2_floor) {
                (Some(h2), Some(floor)) => format!(
                    "{} | {} | {:.1}× (floor {})",
                    ms(h2.p50),
                    ms(h2.p99),
                    h2.p50.as_secs_f64() / floor.p50.as_secs_f64(),
                    ms(floor.p50)
                ),
                _ => "– | – | –".into(),
            };
            let pg_cells = match (&pg_cells, &h2) {
                (Some((p50, p99)), Some(h2)) => format!(
                    "{} | {} | {:.1}×",
                    ms(*p50),
                    ms(*p99),
                    p50.as_secs_f64() / h2.p50.as_secs_f64()
                ),
                (Some((p50, p99)), None) => format!("{} | {} | –", ms(*p50), ms(*p99)),
                _ => "– | – | –".into(),
            };
            rows.push((name, tw, format!("{h2_cells} | {pg_cells}")));
        }
        let rss_after_questions = server.rss_bytes().unwrap_or(0);
        drop(channel);
        // Stopped from a thread of its own, so that this runtime's thread
        // stays free to close the client's side of the connection.
        tokio::task::spawn_blocking(move || server.stop()).await??;
        // Then restarted for each question's first answer.
        let (firsts, cached_starts) = first_answers(&dir.join("store"), &serve_args, &wanted, false).await?;
        let (unwarmed, _) = first_answers(&dir.join("store"), &serve_args, &wanted, true).await?;
        for (((name, tw, neutral_cells), first), unwarmed) in rows.into_iter().zip(firsts).zip(unwarmed) {
            let times_p50 =
                |d: Duration| format!("{} ({:.1}×)", ms(d), d.as_secs_f64() / tw.p50.as_secs_f64());
            lines.push(format!(
                "| {name} | {neutral_cells} | {} | {} | {} |",
                ms(tw.p50),
                times_p50(first),
                times_p50(unwarmed),
            ));
        }
        lines.push(String::new());
        let mb = |b: u64| format!("{:.0} MB", b as f64 / 1e6);
        lines.push(format!(
            "- start-up (`serve` to its listening line): {} s with the page cache {}; {} s with the files cached (median of {})",
            secs(cold_start),
            if cold { "dropped" } else { "NOT dropped (not root)" },
            cached_starts.get(cached_starts.len() / 2).map_or("–".into(), |d| secs(*d)),
            cached_starts.len()
        ));
        lines.push(format!(
            "- server RSS (`--cache-mb {cache_mb}`): {} after the bulk load, {} after start, {} after the questions",
            rss_after_load.map_or("– (loaded before markers held it)".into(), mb),
            mb(rss_at_start),
            mb(rss_after_questions)
        ));
        match &pg {
            Some((_, rate, size)) => {
                lines.push(format!("- load rate: tradewatch {tw_rate:.0} records/s (gRPC PutRecords, {LOADERS} clients × {BATCH}-record batches, each batch durable); PostgreSQL {rate:.0} rows/s (COPY, then index build)"));
                lines.push(format!(
                    "- size on disk: tradewatch {}; PostgreSQL {} (table + indexes)",
                    mb(tw_size),
                    mb(*size)
                ));
            }
            None => {
                lines.push(format!("- load rate: tradewatch {tw_rate:.0} records/s"));
                lines.push(format!("- size on disk: tradewatch {}", mb(tw_size)));
            }
        }
        println!("{}", lines.join("\n"));
        report.insert(data.name, lines);
    }
    Ok(())
}
