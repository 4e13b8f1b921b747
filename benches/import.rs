//! `tradewatch import --server` of 1 million rows into a running server: the
//! real binary on both ends, over loopback, each run into a fresh store.
//!
//! ```sh
//! cargo bench --bench import            # 3 runs of each file order
//! cargo bench --bench import -- 5       # 5 runs
//! scripts/bench-postgres.sh             # then, with PostgreSQL's COPY alongside:
//! TRADEWATCH_BENCH_PG="host=127.0.0.1 user=postgres password=bench dbname=tradewatch_bench" \
//!   cargo bench --bench import
//! ```
//!
//! The rows are the 1 M store of the aggregate bench (5 reporters × 100
//! partners × export and import × 10 years × TOTAL plus 99 HS2 codes), written
//! as a native CSV file in two orders, and a monthly file beside them:
//! - **by commodity**: by reporter, year and commodity, every partner of it
//!   together (how a statistics office releases a year);
//! - **by partner**: by reporter and partner, every commodity and year of the
//!   pair together (a file per country pair, concatenated);
//! - **monthly**: 600,000 monthly rows (the reporters with the five Central
//!   Asian partners), month by month: consecutive batches rewrite the same
//!   series blocks (no PostgreSQL alongside: its table has no months).
//!
//! The time is the wall-clock time of the `import` process, from start to
//! exit: reading and checking the file, sending it, and the server storing
//! every record durably (the summary arrives after the last flush).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[path = "common/dataset.rs"]
mod dataset;
use dataset::Dataset;
#[path = "common/postgres.rs"]
mod postgres;
#[path = "common/server.rs"]
mod server;
use server::Server;

fn bench_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-data/import")
}

/// Writes the dataset as a native CSV file (once; kept between runs).
fn write_csv(data: &Dataset, by_partner: bool, path: &Path) -> anyhow::Result<usize> {
    if path.exists() {
        return Ok(data.len());
    }
    let mut rows: Vec<_> = data.rows().collect();
    if by_partner {
        // reporter, partner, flow, year, commodity
        rows.sort_by_key(|&(reporter, partner, flow, year, commodity, _)| {
            (reporter, partner, flow, year, commodity)
        });
    }
    dataset::write_native_csv(path, rows)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Order {
    ByCommodity,
    ByPartner,
    Monthly,
}

/// Monthly figures, as a statistics office releases them month by month:
/// the dataset's reporters with the five Central Asian partners, TOTAL and
/// its 99 HS2 codes, export and import, for each month of its ten years
/// (600,000 rows; written once, kept between runs). A month of a reporter
/// (1,000 rows) is smaller than a batch, so consecutive batches rewrite the
/// same series blocks.
fn write_monthly_csv(data: &Dataset, path: &Path) -> anyhow::Result<usize> {
    let rows = data.reporters.len() * dataset::CENTRAL_ASIA.len() * data.commodities.len() * 120 * 2;
    if path.exists() {
        return Ok(rows);
    }
    let months = dataset::YEARS.flat_map(|year| (1..=12u16).map(move |month| (year, month)));
    let mut monthly = Vec::with_capacity(rows);
    for (r, &reporter) in data.reporters.iter().enumerate() {
        for (year, month) in months.clone() {
            for (c, commodity) in data.commodities.iter().enumerate() {
                for (p, &partner) in dataset::CENTRAL_ASIA.iter().enumerate() {
                    for flow in 0..2 {
                        let units = Dataset::value(r, p, c, year * 16 + month, flow) / 12;
                        let period = format!("{year}-{month:02}");
                        monthly.push((reporter, partner, flow, period, commodity.as_str(), units));
                    }
                }
            }
        }
    }
    dataset::write_native_csv(path, monthly)
}

/// Starts `bin` on a fresh store.
fn start_server(bin: &str, data_dir: &Path) -> anyhow::Result<Server> {
    let _ = std::fs::remove_dir_all(data_dir);
    Server::start_bin(bin, data_dir, &[])
}

/// One `import --server` run of `bin` (client and server) into a fresh
/// server; its wall-clock time.
fn run_once(bin: &str, file: &Path, rows: usize) -> anyhow::Result<Duration> {
    let server = start_server(bin, &bench_dir().join("store"))?;
    let started = Instant::now();
    let output = Command::new(bin)
        .args(["import", "--server", &server.addr])
        .arg(file)
        .stderr(Stdio::inherit())
        .output()?;
    let elapsed = started.elapsed();
    anyhow::ensure!(output.status.success(), "import failed: {output:?}");
    let summary = String::from_utf8_lossy(&output.stdout);
    anyhow::ensure!(
        summary.contains(&format!(": {rows} created")),
        "unexpected summary {summary}"
    );
    server.stop()?;
    Ok(elapsed)
}

/// PostgreSQL's `COPY` of the same CSV file (as `psql \\copy` sends it)
/// into a fresh table with the primary key and the index a DBA would add
/// (see `benches/aggregate.rs`), in one transaction; its wall-clock time.
async fn pg_copy_once(pg: &tokio_postgres::Client, file: &Path) -> anyhow::Result<Duration> {
    use futures_util::SinkExt;
    pg.batch_execute(&format!(
        "{}; {}",
        postgres::create_table("trade_import"),
        postgres::index("trade_import")
    ))
    .await?;
    let started = Instant::now();
    let bytes = std::fs::read(file)?;
    let sink = pg
        .copy_in(
            "COPY trade_import (reporter, partner, flow, period, commodity, currency, value, source, released_at) \
             FROM STDIN WITH (FORMAT csv, HEADER true)",
        )
        .await?;
    futures_util::pin_mut!(sink);
    for chunk in bytes.chunks(1 << 20) {
        sink.send(bytes::Bytes::copy_from_slice(chunk)).await?;
    }
    let rows = sink.as_mut().finish().await?;
    let elapsed = started.elapsed();
    anyhow::ensure!(rows > 0, "COPY stored nothing");
    Ok(elapsed)
}

/// One line of the table: the runs, their median and the rate it makes.
fn print_row(order: &str, label: &str, times: &[Duration], rows: usize) {
    let m = median(times.to_vec());
    let runs: Vec<String> = times.iter().map(|t| format!("{:.2}", t.as_secs_f64())).collect();
    println!(
        "| {order} | {label} | {} | {:.2} | {:.0} |",
        runs.join(", "),
        m.as_secs_f64(),
        rows as f64 / m.as_secs_f64()
    );
}

fn median(mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    xs[xs.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let runs: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(3);
    // With TRADEWATCH_BENCH_COMPARE=OTHER_BINARY, runs alternate between
    // that binary and this build's, side by side.
    let mut binaries = vec![("this build".to_owned(), server::bin())];
    if let Ok(other) = std::env::var("TRADEWATCH_BENCH_COMPARE") {
        binaries.insert(0, (other.clone(), other));
    }
    std::fs::create_dir_all(bench_dir())?;
    // With TRADEWATCH_BENCH_PG (a connection string), PostgreSQL's COPY of
    // the same file runs alongside (see `scripts/bench-postgres.sh`).
    let pg = match std::env::var("TRADEWATCH_BENCH_PG") {
        Ok(url) => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let client = runtime.block_on(async {
                let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
                tokio::spawn(connection);
                Ok::<_, tokio_postgres::Error>(client)
            })?;
            Some((client, runtime))
        }
        Err(_) => None,
    };
    let data = Dataset::new("1m", 5);
    println!(
        "import --server of {} rows, {runs} runs per file order and binary, fresh store each run",
        data.len()
    );
    println!();
    println!("| file order | binary | runs (s) | median (s) | records/s (median) |");
    println!("|---|---|---|---|---|");
    for (name, order) in [
        ("by commodity", Order::ByCommodity),
        ("by partner", Order::ByPartner),
        ("monthly", Order::Monthly),
    ] {
        let file = bench_dir().join(match order {
            Order::ByCommodity => "by-commodity.csv",
            Order::ByPartner => "by-partner.csv",
            Order::Monthly => "monthly.csv",
        });
        let rows = match order {
            Order::Monthly => write_monthly_csv(&data, &file)?,
            _ => write_csv(&data, order == Order::ByPartner, &file)?,
        };
        // Runs alternate between the binaries (each starting its own
        // server) and PostgreSQL's COPY (whose table has no months: not
        // for the monthly file).
        let mut times = vec![Vec::new(); binaries.len()];
        let mut pg_times = Vec::new();
        for _ in 0..runs {
            for (i, (_, bin)) in binaries.iter().enumerate() {
                times[i].push(run_once(bin, &file, rows)?);
            }
            if let Some((pg, runtime)) = &pg
                && order != Order::Monthly
            {
                pg_times.push(runtime.block_on(pg_copy_once(pg, &file))?);
            }
        }
        for ((label, _), times) in binaries.iter().zip(times) {
            print_row(name, label, &times, rows);
        }
        if !pg_times.is_empty() {
            print_row(
                name,
                "PostgreSQL COPY (primary key + index, one transaction)",
                &pg_times,
                rows,
            );
        }
    }
    if let Some((pg, runtime)) = &pg {
        runtime.block_on(pg.batch_execute("DROP TABLE IF EXISTS trade_import"))?;
    }
    write_latency(&binaries, runs)?;
    let _ = std::fs::remove_dir_all(bench_dir().join("store"));
    Ok(())
}

/// Single-record writes, one after another from one client over one
/// connection, each acknowledged once durable: p50 and p99 of
/// [`LATENCY_WRITES`] writes per run into a fresh server, runs alternating
/// between the binaries.
fn write_latency(binaries: &[(String, String)], runs: usize) -> anyhow::Result<()> {
    const LATENCY_WRITES: usize = 500;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut samples = vec![Vec::new(); binaries.len()];
    for _ in 0..runs {
        for (i, (_, bin)) in binaries.iter().enumerate() {
            let server = start_server(bin, &bench_dir().join("store"))?;
            samples[i].extend(runtime.block_on(async {
                let mut client = tradewatch::pb::trade_service_client::TradeServiceClient::connect(format!(
                    "http://{}",
                    server.addr
                ))
                .await?;
                let mut times = Vec::with_capacity(LATENCY_WRITES);
                for n in 0..LATENCY_WRITES + 20 {
                    let record = tradewatch::pb::TradeRecord {
                        reporter: "CHN".into(),
                        partner: "KAZ".into(),
                        flow: tradewatch::pb::Flow::Export.into(),
                        period: "2025".into(),
                        commodity: format!("{:06}", 10_000 + n),
                        value: Some(tradewatch::pb::Money {
                            currency_code: "USD".into(),
                            units: 1_000 + n as i64,
                            nanos: 0,
                        }),
                        ..Default::default()
                    };
                    let started = Instant::now();
                    client
                        .put_records(tradewatch::pb::PutRecordsRequest {
                            records: vec![record],
                            ..Default::default()
                        })
                        .await?;
                    if n >= 20 {
                        times.push(started.elapsed());
                    }
                }
                anyhow::Ok(times)
            })?);
            server.stop()?;
        }
    }
    println!();
    println!(
        "Single-record PutRecords, one client, {LATENCY_WRITES} writes per run, {runs} runs per binary:"
    );
    println!();
    println!("| binary | p50 ms | p99 ms |");
    println!("|---|---|---|");
    for ((label, _), mut times) in binaries.iter().zip(samples) {
        times.sort();
        let at = |q: f64| times[((times.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e3;
        println!("| {label} | {:.3} | {:.3} |", at(0.5), at(0.99));
    }
    Ok(())
}
