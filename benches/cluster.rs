//! Cluster mode (NATS JetStream) side by side with a single node, in one
//! run: the release binary on both sides, three nats-servers on 127.0.0.1
//! (tests/support/nats.rs: `sync_interval: always`, the stream R3).
//!
//! ```sh
//! cargo bench --bench cluster           # 3 import and catch-up runs per side
//! cargo bench --bench cluster -- 5      # 5
//! ```
//!
//! 1. **Write latency**: single-record `PutRecords`, one client, one after
//!    another, through cluster node A (nodes A and B follow the stream)
//!    and through a single node (`serve` without `--nats`); 100 warm-up
//!    writes each, then 10 rounds of 100 writes to each, alternating, and
//!    100 bare JetStream publishes of a command-sized message to an R3
//!    stream like the log's (what the cluster's write costs before a node
//!    applies it).
//! 2. **Subscriber delivery**: 1,000 `Subscribe` streams over 10 HTTP/2
//!    connections (on the cluster 500 on each node), writes through one
//!    node, 20 ms apart, measured as `benches/subscribe.rs` measures:
//!    acknowledgement → delivery (a delivery before the acknowledgement
//!    counts as 0) and send → delivery. Two rounds of 100 writes per side,
//!    alternating, fresh subscribers each round.
//! 3. **Leader kill**: a writer sends sequential writes through node A
//!    (each attempt with a 2 s deadline; a failed one retried after 100 ms
//!    with the same request id on the other node); the stream's leader
//!    nats-server is SIGKILLed; the longest gap between acknowledgements,
//!    and when the stream answered an info request again (asked of a
//!    server that stays up: a new leader). Then the server is restarted
//!    and the nodes are SERVING again; three times.
//! 4. **Import**: `tradewatch import --server` of the 1 M-row file of
//!    `benches/import.rs` (by commodity) into a fresh cluster node (on a
//!    fresh stream, the only node following it) and into a fresh single
//!    node, alternating, 3 runs each (the argument); before each timed run
//!    a `sync` and 2 s of quiet.
//! 5. **Catch-up**: a node started on an empty data dir against a stream
//!    of 1 M records (500 commands), timed until health SERVING, and until
//!    it listens (a snapshot is restored before that): the first import's
//!    stream (never snapshotted), and a stream loaded through a node with
//!    `--snapshot-every 450` (restore the snapshot at 450, then replay 50
//!    commands), alternating, as many runs as imports. The snapshot's
//!    download alone is timed too.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, message::PublishMessage, stream};
use bytes::Bytes;
use tonic::transport::Channel;
use tonic::{Code, Request};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use tradewatch::pb::{
    self, milestone_service_client::MilestoneServiceClient, trade_service_client::TradeServiceClient,
};

#[path = "common/dataset.rs"]
mod dataset;
use dataset::Dataset;
#[path = "common/measure.rs"]
mod measure;
use measure::{ms, percentile, spawn_subscriber};
#[path = "common/server.rs"]
mod server;
use server::Server;
#[allow(dead_code)]
#[path = "../tests/support/nats.rs"]
mod nats;
use nats::NatsCluster;

/// The nodes' stream in parts 1–3 (`--nats-stream`'s default).
const STREAM: &str = "TRADEWATCH";
/// A stream like the log's, for bare publishes.
const PROBE_STREAM: &str = "PROBE";

const WARM_UP: usize = 100;
const LATENCY_ROUNDS: usize = 10;
const LATENCY_ROUND_WRITES: usize = 100;

const SUBSCRIBERS: usize = 1000;
const CONNECTIONS: usize = 10;
const SUBSCRIBE_ROUNDS: usize = 2;
const SUBSCRIBE_WRITES: usize = 100;
const WRITE_PAUSE: Duration = Duration::from_millis(20);

const KILLS: usize = 3;
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);
const RETRY_PAUSE: Duration = Duration::from_millis(100);
const WRITE_GIVES_UP: Duration = Duration::from_secs(60);

/// `import --server` sends 2,000-record messages: 500 commands for 1 M.
const SNAPSHOT_EVERY: u64 = 450;
const SERVING_TIMEOUT: Duration = Duration::from_secs(600);

fn bench_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-data/cluster")
}

/// The by-commodity file of `benches/import.rs`, written the same way if
/// that bench has not written it yet.
fn import_file(data: &Dataset) -> anyhow::Result<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-data/import");
    let path = dir.join("by-commodity.csv");
    if path.exists() {
        return Ok(path);
    }
    std::fs::create_dir_all(&dir)?;
    dataset::write_native_csv(&path, data.rows())?;
    Ok(path)
}

// ---------------------------------------------------------------------------
// Nodes

/// A tradewatch process and its data dir (removed when dropped, after the
/// process is gone).
struct Node {
    server: Server,
    dir: tempfile::TempDir,
}

impl Node {
    fn addr(&self) -> &str {
        &self.server.addr
    }

    fn stop(self) -> anyhow::Result<()> {
        self.server.stop()?;
        drop(self.dir);
        Ok(())
    }
}

fn single_node() -> anyhow::Result<Node> {
    let dir = tempfile::tempdir_in(bench_dir())?;
    let server = Server::start(dir.path(), &["--max-subscribers", "2000"])?;
    Ok(Node { server, dir })
}

/// A cluster node on an empty data dir, following `stream`; returns once
/// it listens (not once it serves).
fn cluster_node(nats: &NatsCluster, stream: &str, extra: &[&str]) -> anyhow::Result<Node> {
    let dir = tempfile::tempdir_in(bench_dir())?;
    let urls = nats.urls();
    let mut flags = vec![
        "--nats",
        &urls,
        "--nats-stream",
        stream,
        "--max-subscribers",
        "2000",
    ];
    flags.extend(extra);
    let server = Server::start(dir.path(), &flags)?;
    Ok(Node { server, dir })
}

/// Connects on first use and again after a failure.
fn channel(addr: &str) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .expect("address")
        .connect_timeout(Duration::from_secs(1))
        .connect_lazy()
}

/// Waits until `addr` answers health SERVING (a cluster node: caught up
/// with the log and in touch with NATS), polling every `every`.
async fn wait_serving(addr: &str, every: Duration) -> anyhow::Result<()> {
    let mut health = HealthClient::new(channel(addr));
    let deadline = Instant::now() + SERVING_TIMEOUT;
    loop {
        let mut request = Request::new(HealthCheckRequest {
            service: String::new(),
        });
        request.set_timeout(Duration::from_secs(5));
        let status = health.check(request).await.map(|r| r.into_inner().status());
        if matches!(status, Ok(ServingStatus::Serving)) {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{addr} not SERVING after {SERVING_TIMEOUT:?}: {status:?}"
        );
        tokio::time::sleep(every).await;
    }
}

// ---------------------------------------------------------------------------
// Records and statistics

/// Every write of the bench stores a new key, so that each makes an event.
static NEXT: AtomicU64 = AtomicU64::new(0);

/// The next new synthetic record.
fn new_record() -> pb::TradeRecord {
    measure::record(NEXT.fetch_add(1, Ordering::Relaxed) as usize)
}

fn ms3(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1000.0)
}

fn secs(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64())
}

fn median(mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    xs[xs.len() / 2]
}

/// p50 and p99 of `xs`, sorted in place.
fn p50_p99(xs: &mut [Duration]) -> (Duration, Duration) {
    xs.sort();
    (percentile(xs, 0.5), percentile(xs, 0.99))
}

/// The rows of the final table: measure, cluster, single node, ratio.
#[derive(Default)]
struct Table(Vec<[String; 4]>);

impl Table {
    fn row(&mut self, measure: impl Into<String>, cluster: String, single: String, ratio: String) {
        let row = [measure.into(), cluster, single, ratio];
        println!("  {}", row.join(" | "));
        self.0.push(row);
    }

    fn print(&self) {
        println!();
        println!("| measure | cluster | single node | cluster / single |");
        println!("|---|---|---|---|");
        for row in &self.0 {
            println!("| {} |", row.join(" | "));
        }
    }
}

fn ratio(cluster: Duration, single: Duration) -> String {
    format!("{:.2}×", cluster.as_secs_f64() / single.as_secs_f64())
}

// ---------------------------------------------------------------------------
// 1. Write latency

async fn put_one(client: &mut TradeServiceClient<Channel>) -> anyhow::Result<Duration> {
    let request = pb::PutRecordsRequest {
        records: vec![new_record()],
        ..Default::default()
    };
    let started = Instant::now();
    client.put_records(request).await?;
    Ok(started.elapsed())
}

/// A stream configured as the log is (src/cluster/mod.rs, `ensure_stream`).
async fn create_probe_stream(js: &jetstream::Context) -> anyhow::Result<()> {
    js.get_or_create_stream(stream::Config {
        name: PROBE_STREAM.into(),
        subjects: vec![format!("{PROBE_STREAM}.commands")],
        storage: stream::StorageType::File,
        num_replicas: nats::SERVERS,
        retention: stream::RetentionPolicy::Limits,
        duplicate_window: Duration::from_secs(20 * 60),
        deny_delete: true,
        deny_purge: true,
        ..Default::default()
    })
    .await?;
    Ok(())
}

/// One publish with a message id, as a node publishes a command, until
/// the stream's acknowledgement.
async fn publish_one(js: &jetstream::Context, payload: &Bytes) -> anyhow::Result<Duration> {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let message = PublishMessage::build()
        .message_id(format!("probe-{n}"))
        .payload(payload.clone());
    let started = Instant::now();
    js.send_publish(format!("{PROBE_STREAM}.commands"), message)
        .await?
        .await?;
    Ok(started.elapsed())
}

async fn write_latency(
    nats: &NatsCluster,
    cluster_addr: &str,
    single_addr: &str,
    table: &mut Table,
) -> anyhow::Result<()> {
    let mut cluster = TradeServiceClient::new(channel(cluster_addr));
    let mut single = TradeServiceClient::new(channel(single_addr));
    let js = nats.jetstream().await;
    create_probe_stream(&js).await?;
    for _ in 0..WARM_UP {
        put_one(&mut cluster).await?;
        put_one(&mut single).await?;
    }
    // The bare publishes carry as many bytes as a stored command takes.
    let info = js.get_stream(STREAM).await?.info().await?.clone();
    let size = (info.state.bytes / info.state.messages.max(1)) as usize;
    let payload = Bytes::from(vec![b'x'; size]);
    for _ in 0..WARM_UP {
        publish_one(&js, &payload).await?;
    }
    let (mut c, mut s, mut p) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..LATENCY_ROUNDS {
        for _ in 0..LATENCY_ROUND_WRITES {
            c.push(put_one(&mut cluster).await?);
        }
        for _ in 0..LATENCY_ROUND_WRITES {
            s.push(put_one(&mut single).await?);
        }
        for _ in 0..LATENCY_ROUND_WRITES {
            p.push(publish_one(&js, &payload).await?);
        }
    }
    let ((c50, c99), (s50, s99), (p50, p99)) = (p50_p99(&mut c), p50_p99(&mut s), p50_p99(&mut p));
    let n = c.len();
    table.row(
        format!("single-record PutRecords, p50 ms ({n} each)"),
        ms3(c50),
        ms3(s50),
        ratio(c50, s50),
    );
    table.row(
        "single-record PutRecords, p99 ms",
        ms3(c99),
        ms3(s99),
        ratio(c99, s99),
    );
    table.row(
        format!("bare R3 JetStream publish of {size} bytes, p50 / p99 ms"),
        format!("{} / {}", ms3(p50), ms3(p99)),
        String::new(),
        String::new(),
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// 2. Subscriber delivery

/// Deliveries of one round: the subscriber's node (index into the
/// addresses), the event's sequence, when it arrived.
type Deliveries = Vec<(usize, u64, Instant)>;
/// Per event sequence: when its write was sent, and acknowledged.
type Written = HashMap<u64, (Instant, Instant)>;

/// One round: 1,000 subscribers spread over `subscribe_at`, writes
/// through `write_at`. Returns the deliveries and, per event sequence,
/// when its write was sent and acknowledged.
async fn subscribe_round(write_at: &str, subscribe_at: &[&str]) -> anyhow::Result<(Deliveries, Written)> {
    let mut channels = Vec::new();
    for c in 0..CONNECTIONS {
        let addr = subscribe_at[c % subscribe_at.len()];
        channels.push((
            c % subscribe_at.len(),
            Channel::from_shared(format!("http://{addr}"))?.connect().await?,
        ));
    }
    let delivered: Arc<Mutex<Deliveries>> = Arc::default();
    let mut ready = Vec::new();
    let mut tasks = Vec::new();
    for s in 0..SUBSCRIBERS {
        let (node, channel) = channels[s % CONNECTIONS].clone();
        let delivered = delivered.clone();
        let (ready_rx, task) = spawn_subscriber(
            MilestoneServiceClient::new(channel),
            SUBSCRIBE_WRITES,
            move |sequence| {
                delivered.lock().unwrap().push((node, sequence, Instant::now()));
            },
        );
        ready.push(ready_rx);
        tasks.push(task);
    }
    for r in ready {
        r.await?;
    }
    let mut trade = TradeServiceClient::new(
        Channel::from_shared(format!("http://{write_at}"))?
            .connect()
            .await?,
    );
    let mut acked = HashMap::new();
    for _ in 0..SUBSCRIBE_WRITES {
        let sent = Instant::now();
        let response = trade
            .put_records(pb::PutRecordsRequest {
                records: vec![new_record()],
                ..Default::default()
            })
            .await?
            .into_inner();
        acked.insert(response.first_sequence, (sent, Instant::now()));
        tokio::time::sleep(WRITE_PAUSE).await;
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while tasks.iter().any(|t| !t.is_finished()) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for task in &tasks {
        task.abort();
    }
    let delivered = std::mem::take(&mut *delivered.lock().unwrap());
    Ok((delivered, acked))
}

/// Latencies of `deliveries` (of subscribers on node `only`, if given)
/// from the acknowledgement or from the send.
fn delivery_latencies(
    deliveries: &[(Deliveries, Written)],
    from_send: bool,
    only: Option<usize>,
) -> Vec<Duration> {
    let mut latencies = Vec::new();
    for (delivered, acked) in deliveries {
        for (node, seq, at) in delivered {
            if only.is_some_and(|only| only != *node) {
                continue;
            }
            if let Some((sent, ack)) = acked.get(seq) {
                latencies.push(at.saturating_duration_since(if from_send { *sent } else { *ack }));
            }
        }
    }
    latencies.sort();
    latencies
}

async fn subscriber_delivery(a: &str, b: &str, single: &str, table: &mut Table) -> anyhow::Result<()> {
    let (mut cluster, mut alone) = (Vec::new(), Vec::new());
    for _ in 0..SUBSCRIBE_ROUNDS {
        cluster.push(subscribe_round(a, &[a, b]).await?);
        alone.push(subscribe_round(single, &[single]).await?);
    }
    let expected = SUBSCRIBERS * SUBSCRIBE_WRITES * SUBSCRIBE_ROUNDS;
    let count = |runs: &[(Deliveries, _)]| runs.iter().map(|(d, _)| d.len()).sum::<usize>();
    table.row(
        "subscriber deliveries received",
        format!("{} of {expected}", count(&cluster)),
        format!("{} of {expected}", count(&alone)),
        String::new(),
    );
    for (label, from_send) in [
        ("write acknowledged → delivered", false),
        ("write sent → delivered", true),
    ] {
        let c = delivery_latencies(&cluster, from_send, None);
        let s = delivery_latencies(&alone, from_send, None);
        for (q, name) in [(0.5, "p50"), (0.99, "p99")] {
            let (cq, sq) = (percentile(&c, q), percentile(&s, q));
            table.row(
                format!("{label}, {SUBSCRIBERS} subscribers, {name} ms"),
                ms(cq),
                ms(sq),
                if sq.is_zero() {
                    String::new()
                } else {
                    ratio(cq, sq)
                },
            );
        }
        // On the cluster: the writer's node against the other one.
        let own = delivery_latencies(&cluster, from_send, Some(0));
        let other = delivery_latencies(&cluster, from_send, Some(1));
        table.row(
            format!("  {label} on the cluster: writer's node / other node, p50 / p99 ms"),
            format!(
                "{} / {} ; {} / {}",
                ms(percentile(&own, 0.5)),
                ms(percentile(&own, 0.99)),
                ms(percentile(&other, 0.5)),
                ms(percentile(&other, 0.99))
            ),
            String::new(),
            String::new(),
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// 3. Leader kill

/// Per acknowledged write: when its first attempt was sent, when it was
/// acknowledged.
type Acks = Arc<Mutex<Vec<(Instant, Instant)>>>;

/// Sequential writes until `stop`, first to node 0; an attempt that fails
/// is retried with the same request id on the other node.
async fn kill_writer(
    nodes: [Channel; 2],
    round: usize,
    acks: Acks,
    retries: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        let request = pb::PutRecordsRequest {
            records: vec![new_record()],
            request_id: format!("bench-kill-{round}-{i}"),
        };
        let first_sent = Instant::now();
        let mut attempt = 0;
        loop {
            let mut call = Request::new(request.clone());
            call.set_timeout(ATTEMPT_TIMEOUT);
            let mut client = TradeServiceClient::new(nodes[attempt % 2].clone());
            let answer = tokio::time::timeout(
                ATTEMPT_TIMEOUT + Duration::from_millis(500),
                client.put_records(call),
            )
            .await
            .unwrap_or_else(|_| Err(tonic::Status::deadline_exceeded("client-side timeout")));
            match answer {
                Ok(_) => {
                    acks.lock().unwrap().push((first_sent, Instant::now()));
                    break;
                }
                Err(status) if matches!(status.code(), Code::InvalidArgument | Code::AlreadyExists) => {
                    anyhow::bail!("{}: {status:?}", request.request_id)
                }
                Err(status) => {
                    anyhow::ensure!(
                        first_sent.elapsed() < WRITE_GIVES_UP,
                        "{} not acknowledged in {WRITE_GIVES_UP:?}: {status:?}",
                        request.request_id
                    );
                    attempt += 1;
                    retries.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
            }
        }
        i += 1;
    }
    Ok(())
}

struct KillRound {
    killed: usize,
    longest_gap: Duration,
    /// From the kill to the first acknowledgement of a write sent after it.
    to_next_ack: Duration,
    /// From the kill to the stream answering its info request again.
    stream_back: Option<Duration>,
    retries: u64,
}

async fn kill_round(nats: &mut NatsCluster, a: &str, b: &str, round: usize) -> anyhow::Result<KillRound> {
    let acks: Acks = Arc::default();
    let retries = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn(kill_writer(
        [channel(a), channel(b)],
        round,
        acks.clone(),
        retries.clone(),
        stop.clone(),
    ));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let leader = nats.stream_leader(STREAM).await;
    // Asks a server that stays up, so that the probe's own connection is
    // not among what the kill interrupts.
    let survivor = nats
        .urls()
        .split(',')
        .nth((leader + 1) % nats::SERVERS)
        .map(str::to_owned);
    let mut js = jetstream::new(async_nats::connect(survivor.expect("three servers")).await?);
    js.set_timeout(Duration::from_millis(250));
    let retries_before = retries.load(Ordering::Relaxed);
    nats.kill(leader);
    let killed = Instant::now();
    let probe = tokio::spawn(async move {
        while killed.elapsed() < WRITE_GIVES_UP {
            if js.get_stream(STREAM).await.is_ok() {
                return Some(killed.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    });
    let to_next_ack = loop {
        let first = acks
            .lock()
            .unwrap()
            .iter()
            .filter(|(sent, _)| *sent >= killed)
            .map(|(_, answered)| *answered)
            .min();
        if let Some(answered) = first {
            break answered - killed;
        }
        if writer.is_finished() {
            writer.await??;
            anyhow::bail!("the writer stopped");
        }
        anyhow::ensure!(
            killed.elapsed() < WRITE_GIVES_UP,
            "no write acknowledged after the kill"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    writer.await??;
    let stream_back = probe.await?;
    let answered: Vec<Instant> = acks.lock().unwrap().iter().map(|(_, a)| *a).collect();
    let longest_gap = answered
        .windows(2)
        .map(|w| w[1].saturating_duration_since(w[0]))
        .max()
        .unwrap_or_default();
    Ok(KillRound {
        killed: leader,
        longest_gap,
        to_next_ack,
        stream_back,
        retries: retries.load(Ordering::Relaxed) - retries_before,
    })
}

// ---------------------------------------------------------------------------
// 4. Import and 5. catch-up

/// Before a timed run: the previous run's data dir, just removed, and any
/// other dirty pages written out, then a moment's quiet.
fn settle() -> anyhow::Result<()> {
    anyhow::ensure!(Command::new("sync").status()?.success(), "sync failed");
    std::thread::sleep(Duration::from_secs(2));
    Ok(())
}

/// `tradewatch import --server` of `file` into `addr`; its wall-clock time.
fn import(addr: &str, file: &Path, rows: usize) -> anyhow::Result<Duration> {
    settle()?;
    let started = Instant::now();
    let output = Command::new(server::bin())
        .args(["import", "--server", addr])
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
    Ok(elapsed)
}

async fn last_sequence(nats: &NatsCluster, stream: &str) -> anyhow::Result<u64> {
    let js = nats.jetstream().await;
    Ok(js.get_stream(stream).await?.info().await?.state.last_sequence)
}

/// Waits until `<stream>_snapshots` holds the snapshot at `position`.
async fn wait_for_snapshot(nats: &NatsCluster, stream: &str, position: u64) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let js = nats.jetstream().await;
    let name = format!("snapshot-{position:020}");
    loop {
        if let Ok(bucket) = js.get_object_store(format!("{stream}_snapshots")).await
            && bucket.info(&name).await.is_ok_and(|info| !info.deleted)
        {
            return Ok(started.elapsed());
        }
        anyhow::ensure!(
            started.elapsed() < SERVING_TIMEOUT,
            "no {name} in {stream}_snapshots"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Downloads the snapshot at `position` from `<stream>_snapshots`, as a
/// new node does before it restores it (without writing it anywhere):
/// its size in bytes and the time it took.
async fn download_snapshot(
    nats: &NatsCluster,
    stream: &str,
    position: u64,
) -> anyhow::Result<(u64, Duration)> {
    let js = nats.jetstream().await;
    let bucket = js.get_object_store(format!("{stream}_snapshots")).await?;
    let started = Instant::now();
    let mut object = bucket.get(format!("snapshot-{position:020}")).await?;
    let bytes = tokio::io::copy(&mut object, &mut tokio::io::sink()).await?;
    Ok((bytes, started.elapsed()))
}

struct CatchUp {
    /// From start to listening: restoring a snapshot, opening the store,
    /// reaching NATS.
    listening: Duration,
    /// From start to health SERVING.
    serving: Duration,
}

/// A new node on an empty data dir, following `stream`, timed until it
/// serves.
fn catch_up(rt: &tokio::runtime::Runtime, nats: &NatsCluster, stream: &str) -> anyhow::Result<CatchUp> {
    settle()?;
    let started = Instant::now();
    let node = cluster_node(nats, stream, &[])?;
    let listening = started.elapsed();
    rt.block_on(wait_serving(node.addr(), Duration::from_millis(10)))?;
    let serving = started.elapsed();
    node.stop()?;
    Ok(CatchUp { listening, serving })
}

// ---------------------------------------------------------------------------

fn main() -> anyhow::Result<()> {
    let import_runs: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(3);
    let Some(mut nats) = nats::start_or_skip("cluster bench") else {
        return Ok(());
    };
    std::fs::create_dir_all(bench_dir())?;
    let data = Dataset::new("1m", 5);
    let file = import_file(&data)?;
    let rows = data.len();
    let commands = rows.div_ceil(2000) as u64;
    // One sequential caller, as in benches/import.rs; the subscribers on a
    // multi-threaded runtime, as in benches/subscribe.rs.
    let seq = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let multi = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let bench_started = Instant::now();
    let phase = |name: &str| eprintln!("[{:>6.1} s] {name}", bench_started.elapsed().as_secs_f64());
    let mut table = Table::default();

    phase("starting nodes A and B (cluster) and a single node");
    let a = cluster_node(&nats, STREAM, &[])?;
    seq.block_on(wait_serving(a.addr(), Duration::from_millis(50)))?;
    let b = cluster_node(&nats, STREAM, &[])?;
    seq.block_on(wait_serving(b.addr(), Duration::from_millis(50)))?;
    let single = single_node()?;

    phase("1. write latency");
    seq.block_on(write_latency(&nats, a.addr(), single.addr(), &mut table))?;

    phase("2. subscriber delivery");
    multi.block_on(subscriber_delivery(a.addr(), b.addr(), single.addr(), &mut table))?;
    single.stop()?;

    phase("3. leader kills");
    let mut kills = Vec::new();
    for round in 0..KILLS {
        let killed = seq.block_on(kill_round(&mut nats, a.addr(), b.addr(), round))?;
        eprintln!(
            "  killed n{}: longest gap {} s, kill → next ack {} s, stream answering again after {:?}, {} retried attempts",
            killed.killed + 1,
            secs(killed.longest_gap),
            secs(killed.to_next_ack),
            killed.stream_back,
            killed.retries
        );
        nats.restart(killed.killed);
        nats.wait_ready().map_err(anyhow::Error::msg)?;
        seq.block_on(async {
            wait_serving(a.addr(), Duration::from_millis(50)).await?;
            wait_serving(b.addr(), Duration::from_millis(50)).await
        })?;
        kills.push(killed);
    }
    let list = |f: &dyn Fn(&KillRound) -> Option<Duration>| {
        kills
            .iter()
            .map(|k| f(k).map_or("–".into(), secs))
            .collect::<Vec<_>>()
            .join(", ")
    };
    table.row(
        format!("SIGKILL of the stream leader: longest gap between acks, s ({KILLS} runs; median)"),
        format!(
            "{}; median {}",
            list(&|k| Some(k.longest_gap)),
            secs(median(kills.iter().map(|k| k.longest_gap).collect()))
        ),
        String::new(),
        String::new(),
    );
    table.row(
        "  of which: kill → stream answers again (new leader), s",
        list(&|k| k.stream_back),
        String::new(),
        String::new(),
    );
    table.row(
        "  kill → ack of the first write sent after it, s",
        list(&|k| Some(k.to_next_ack)),
        String::new(),
        String::new(),
    );
    table.row(
        "  attempts retried (2 s deadline each)",
        kills
            .iter()
            .map(|k| k.retries.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        String::new(),
        String::new(),
    );
    a.stop()?;
    b.stop()?;

    phase("4. import --server, 1 M records");
    let (mut cluster_times, mut single_times) = (Vec::new(), Vec::new());
    for run in 0..import_runs {
        let stream = format!("IMPORT_{run}");
        let node = cluster_node(&nats, &stream, &[])?;
        seq.block_on(wait_serving(node.addr(), Duration::from_millis(50)))?;
        let took = import(node.addr(), &file, rows)?;
        eprintln!("  cluster run {run}: {} s", secs(took));
        cluster_times.push(took);
        node.stop()?;
        let node = single_node()?;
        let took = import(node.addr(), &file, rows)?;
        eprintln!("  single run {run}: {} s", secs(took));
        single_times.push(took);
        node.stop()?;
    }
    let join = |xs: &[Duration]| xs.iter().map(|&d| secs(d)).collect::<Vec<_>>().join(", ");
    let (cm, sm) = (median(cluster_times.clone()), median(single_times.clone()));
    let rate = |d: Duration| rows as f64 / d.as_secs_f64();
    table.row(
        format!("import --server of {rows} records, s per run ({import_runs} runs each)"),
        join(&cluster_times),
        join(&single_times),
        String::new(),
    );
    table.row(
        "import --server, records/s (median run)",
        format!("{:.0}", rate(cm)),
        format!("{:.0}", rate(sm)),
        format!("{:.2}×", rate(cm) / rate(sm)),
    );

    phase("5. load through a node with --snapshot-every, then catch-up");
    let every = SNAPSHOT_EVERY.to_string();
    let loader = cluster_node(&nats, "SNAP", &["--snapshot-every", &every])?;
    seq.block_on(wait_serving(loader.addr(), Duration::from_millis(50)))?;
    let took = import(loader.addr(), &file, rows)?;
    let published = seq.block_on(wait_for_snapshot(&nats, "SNAP", SNAPSHOT_EVERY))?;
    loader.stop()?;
    table.row(
        format!("import --server through a node with --snapshot-every {SNAPSHOT_EVERY}, records/s"),
        format!(
            "{:.0} (snapshot published {} s after the import)",
            rate(took),
            secs(published)
        ),
        String::new(),
        String::new(),
    );
    let plain_last = seq.block_on(last_sequence(&nats, "IMPORT_0"))?;
    let snap_last = seq.block_on(last_sequence(&nats, "SNAP"))?;
    anyhow::ensure!(
        plain_last == commands && snap_last == commands,
        "streams hold {plain_last} and {snap_last} commands, not {commands}"
    );
    let (size, download) = seq.block_on(download_snapshot(&nats, "SNAP", SNAPSHOT_EVERY))?;
    table.row(
        "  the snapshot: size; downloading it from the object store alone",
        format!(
            "{:.0} MB; {} s ({:.0} MB/s)",
            size as f64 / 1e6,
            secs(download),
            size as f64 / 1e6 / download.as_secs_f64()
        ),
        String::new(),
        String::new(),
    );
    let (mut plain, mut snap) = (Vec::new(), Vec::new());
    for _ in 0..import_runs {
        plain.push(catch_up(&seq, &nats, "IMPORT_0")?);
        snap.push(catch_up(&seq, &nats, "SNAP")?);
    }
    for (label, runs) in [
        ("new node, no snapshot (replays 500 commands)", &plain),
        ("new node, snapshot at 450 (restores it, replays 50)", &snap),
    ] {
        let serving = median(runs.iter().map(|r| r.serving).collect());
        let listening = median(runs.iter().map(|r| r.listening).collect());
        table.row(
            format!("catch-up of a {label}: s to SERVING ({import_runs} runs; of it, s to listening)"),
            format!(
                "{} ({}); median {} ({})",
                runs.iter()
                    .map(|r| secs(r.serving))
                    .collect::<Vec<_>>()
                    .join(", "),
                runs.iter()
                    .map(|r| secs(r.listening))
                    .collect::<Vec<_>>()
                    .join(", "),
                secs(serving),
                secs(listening),
            ),
            String::new(),
            String::new(),
        );
        table.row(
            format!("  {label}: commands/s, records/s (median)"),
            format!(
                "{:.0} commands/s, {:.0} records/s",
                commands as f64 / serving.as_secs_f64(),
                rows as f64 / serving.as_secs_f64()
            ),
            String::new(),
            String::new(),
        );
    }
    phase("done");
    table.print();
    Ok(())
}
