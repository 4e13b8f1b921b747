//! The event stream under load: write-acknowledgement-to-delivery latency
//! with 1,000 and 10,000 concurrent subscribers (the release server in a
//! process of its own, its memory recorded), catch-up replay rate, and
//! ingest throughput with 10 active watches against none.
//!
//! ```sh
//! cargo bench --bench subscribe                  # everything
//! cargo bench --bench subscribe -- latency       # only the latency runs
//! ```

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tokio_stream::StreamExt;
use tonic::transport::Channel;
use tradewatch::pb::{
    self, milestone_service_client::MilestoneServiceClient, subscribe_response::Message,
    trade_service_client::TradeServiceClient,
};
use tradewatch::{Application, Config};

#[path = "common/lean_subscribers.rs"]
mod lean;
#[path = "common/measure.rs"]
mod measure;
#[path = "common/server.rs"]
mod process;
use measure::{ms, percentile, record};

/// The subscriber counts measured, side by side in one run.
const SUBSCRIBERS: [usize; 2] = [1_000, 10_000];
/// Subscribers share connections, as services behind a few channels would:
/// this many streams on each.
const STREAMS_PER_CONNECTION: usize = 100;
const LATENCY_WRITES: usize = 200;
const REPLAY_EVENTS: usize = 100_000;
const INGEST_RECORDS: usize = 200_000;
const BATCH: usize = 1000;

struct Server {
    addr: std::net::SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    _dir: tempfile::TempDir,
}

async fn start() -> anyhow::Result<Server> {
    let dir = tempfile::tempdir()?;
    let app = Application::build("127.0.0.1:0".parse()?, Config::new(dir.path())).await?;
    let addr = app.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(app.run_until(async {
        let _ = stopped.await;
    }));
    Ok(Server {
        addr,
        stop,
        task,
        _dir: dir,
    })
}

impl Server {
    async fn channel(&self) -> anyhow::Result<Channel> {
        Ok(Channel::from_shared(format!("http://{}", self.addr))?
            .connect()
            .await?)
    }

    async fn shutdown(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        self.task.await??;
        Ok(())
    }
}

async fn connect(addr: &str) -> anyhow::Result<Channel> {
    Ok(Channel::from_shared(format!("http://{addr}"))?.connect().await?)
}

/// `subscribers` live subscribers of the release server, then 200 writes
/// 20 ms apart: the time from each acknowledgement (and each send) to each
/// delivery, and the server's memory.
async fn latency(subscribers: usize) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let limit = subscribers.to_string();
    let server = process::Server::start(dir.path(), &["--max-subscribers", &limit])?;
    let idle_rss = server.rss_bytes().unwrap_or(0);
    let mut connections = Vec::new();
    for c in 0..subscribers.div_ceil(STREAMS_PER_CONNECTION) {
        let streams = STREAMS_PER_CONNECTION.min(subscribers - c * STREAMS_PER_CONNECTION);
        connections.push(lean::connect(&server.addr, streams, LATENCY_WRITES).await?);
    }
    for connection in &mut connections {
        (&mut connection.ready).await?;
    }
    let subscribed_rss = server.rss_bytes().unwrap_or(0);
    let mut trade = TradeServiceClient::new(connect(&server.addr).await?);
    // Per sequence: when the write was sent, and when its acknowledgement
    // arrived (the event is published after the same flush, so delivery can
    // come first: that counts as 0).
    let mut acked: HashMap<u64, (Instant, Instant)> = HashMap::new();
    let cpu = || {
        (
            server.cpu_seconds().unwrap_or(0.0),
            process::cpu_seconds_of("/proc/self/stat").unwrap_or(0.0),
        )
    };
    let (server_cpu, bench_cpu) = cpu();
    let writes_began = Instant::now();
    for i in 0..LATENCY_WRITES {
        let sent = Instant::now();
        let response = trade
            .put_records(pb::PutRecordsRequest {
                records: vec![record(i)],
                ..Default::default()
            })
            .await?
            .into_inner();
        acked.insert(response.first_sequence, (sent, Instant::now()));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let wall = writes_began.elapsed().as_secs_f64();
    let (server_used, bench_used) = {
        let (s, b) = cpu();
        (s - server_cpu, b - bench_cpu)
    };
    let after_rss = server.rss_bytes().unwrap_or(0);
    let delivered: Vec<(u64, Instant)> = connections
        .iter()
        .flat_map(|c| c.deliveries.lock().unwrap().clone())
        .collect();
    for (label, from_send) in [("write ack → delivery", false), ("write sent → delivery", true)] {
        let mut latencies: Vec<Duration> = delivered
            .iter()
            .filter_map(|(seq, at)| {
                let (sent, ack) = acked.get(seq)?;
                Some(at.saturating_duration_since(if from_send { *sent } else { *ack }))
            })
            .collect();
        latencies.sort();
        println!(
            "| {label}, {subscribers} subscribers | {} deliveries of {} | p50 {} ms | p99 {} ms | max {} ms |",
            latencies.len(),
            subscribers * LATENCY_WRITES,
            ms(percentile(&latencies, 0.5)),
            ms(percentile(&latencies, 0.99)),
            ms(*latencies.last().unwrap_or(&Duration::ZERO)),
        );
    }
    let mb = |b: u64| b as f64 / (1024.0 * 1024.0);
    println!(
        "| server RSS, {subscribers} subscribers | idle {:.0} MB | subscribed {:.0} MB | after the writes {:.0} MB | |",
        mb(idle_rss),
        mb(subscribed_rss),
        mb(after_rss)
    );
    println!(
        "| CPU while writing, {subscribers} subscribers | server {:.2} cores | subscribers (bench) {:.2} cores | over {wall:.1} s | |",
        server_used / wall,
        bench_used / wall
    );
    for connection in connections {
        connection.reader.abort();
    }
    server.stop()
}

async fn load(trade: &mut TradeServiceClient<Channel>, count: usize) -> anyhow::Result<Duration> {
    let start = Instant::now();
    for chunk in (0..count).collect::<Vec<_>>().chunks(BATCH) {
        let records = chunk.iter().map(|&i| record(i)).collect();
        trade
            .put_records(pb::PutRecordsRequest {
                records,
                ..Default::default()
            })
            .await?;
    }
    Ok(start.elapsed())
}

async fn replay() -> anyhow::Result<()> {
    let server = start().await?;
    let channel = server.channel().await?;
    load(&mut TradeServiceClient::new(channel.clone()), REPLAY_EVENTS).await?;
    let mut client = MilestoneServiceClient::new(channel);
    let start = Instant::now();
    let mut stream = client
        .subscribe(pb::SubscribeRequest {
            from_sequence: 1,
            ..Default::default()
        })
        .await?
        .into_inner();
    let mut events = 0;
    while let Some(message) = stream.next().await {
        match message?.message {
            Some(Message::Event(_)) => events += 1,
            Some(Message::CaughtUp(_)) => break,
            _ => {}
        }
    }
    let rate = events as f64 / start.elapsed().as_secs_f64();
    println!("| catch-up replay from sequence 1 | {events} events | {rate:.0} events/s |");
    drop(stream);
    server.shutdown().await
}

async fn ingest(watches: usize) -> anyhow::Result<f64> {
    let server = start().await?;
    let channel = server.channel().await?;
    let mut milestones = MilestoneServiceClient::new(channel.clone());
    for w in 0..watches {
        let partners = ["CENTRAL_ASIA", "KAZ", "RUS", "DEU", "USA"];
        let watch = pb::Watch {
            name: format!("watch {w}"),
            selector: Some(pb::RecordSelector {
                reporters: vec!["CHN".into()],
                partners: vec![partners[w % partners.len()].into()],
                commodities: vec![format!("{:06}", w)],
                ..Default::default()
            }),
            thresholds: vec![pb::Money {
                currency_code: "USD".into(),
                units: 50_000,
                nanos: 0,
            }],
            record_high: true,
            ..Default::default()
        };
        milestones
            .create_watch(pb::CreateWatchRequest {
                watch: Some(watch),
                ..Default::default()
            })
            .await?;
    }
    let took = load(&mut TradeServiceClient::new(channel), INGEST_RECORDS).await?;
    server.shutdown().await?;
    Ok(INGEST_RECORDS as f64 / took.as_secs_f64())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let only_latency = std::env::args().any(|a| a == "latency");
    println!("| measure | | | | |");
    println!("|---|---|---|---|---|");
    for subscribers in SUBSCRIBERS {
        latency(subscribers).await?;
    }
    if only_latency {
        return Ok(());
    }
    replay().await?;
    let none = ingest(0).await?;
    let ten = ingest(10).await?;
    println!(
        "| ingest, {BATCH}-record batches, one client | no watch: {none:.0} records/s | 10 watches: {ten:.0} records/s | ratio {:.2} |",
        ten / none
    );
    Ok(())
}
