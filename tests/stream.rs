//! The guarantees of `MilestoneService.Subscribe`, through gRPC on a real
//! server: ordered, unique, gap-free and resumable under concurrent writers;
//! a stalled subscriber neither slows writers nor grows the server's memory;
//! what subscribers saw survives SIGKILL identically; filters and progress
//! checkpoints; a position beyond the head waits; shutdown ends streams.
#![allow(clippy::disallowed_methods)] // jitter from the clock; no write time

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use common::{Binary, TestServer, create, put, record};
use tokio::time::{Instant, timeout_at};
use tonic::transport::Channel;
use tonic::{Code, Streaming};
use tradewatch::pb::{
    self, milestone_service_client::MilestoneServiceClient, subscribe_response::Message,
    trade_service_client::TradeServiceClient,
};

/// The slow-subscriber test measures throughput and the process's memory, so
/// it runs alone: it takes this gate exclusively, every other test shares it.
static GATE: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

const PARTNERS: [&str; 20] = [
    "KAZ", "KGZ", "TJK", "TKM", "UZB", "RUS", "DEU", "FRA", "USA", "IND", "BRA", "JPN", "KOR", "VNM", "THA",
    "IDN", "TUR", "IRN", "PAK", "MNG",
];
const YEARS: u64 = 201; // 1900..=2100

/// Record number `n`: a different natural key for every `n` (CHN with one of
/// 20 partners, one of 201 years, an HS6 code), so every write is an event.
fn distinct_record(n: u64) -> pb::TradeRecord {
    let mut r = record(
        "CHN",
        PARTNERS[(n % 20) as usize],
        &(1900 + (n / 20) % YEARS).to_string(),
        n as i64 + 1,
        "stream test",
    );
    r.commodity = format!("{:06}", n / (20 * YEARS));
    r
}

/// A small xorshift generator; the seed is printed so a failure can be
/// replayed with `STREAM_TEST_SEED`.
struct Rng(u64);

impl Rng {
    fn new(test: &str) -> Rng {
        let seed = std::env::var("STREAM_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            });
        eprintln!("{test}: STREAM_TEST_SEED={seed}");
        Rng(seed | 1)
    }

    /// Uniform enough in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        lo + self.0 % (hi - lo + 1)
    }
}

async fn within<T>(deadline: Instant, what: &str, f: impl Future<Output = T>) -> T {
    timeout_at(deadline, f)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

async fn connect(addr: &str) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .expect("connects")
}

async fn subscribe(
    client: &mut MilestoneServiceClient<Channel>,
    request: pb::SubscribeRequest,
    deadline: Instant,
) -> Streaming<pb::SubscribeResponse> {
    within(deadline, "Subscribe", client.subscribe(request))
        .await
        .expect("subscribes")
        .into_inner()
}

/// The next message of a subscription; fails on an error, the end of the
/// stream, or the deadline.
async fn next_message(stream: &mut Streaming<pb::SubscribeResponse>, deadline: Instant) -> Message {
    match within(deadline, "a subscription message", stream.message()).await {
        Ok(Some(response)) => response.message.expect("every response carries a message"),
        Ok(None) => panic!("the subscription ended"),
        Err(status) => panic!("the subscription failed: {status:?}"),
    }
}

/// The first message of every subscription: a Progress, sent at once.
async fn first_progress(stream: &mut Streaming<pb::SubscribeResponse>) -> pb::Progress {
    let deadline = Instant::now() + Duration::from_secs(5);
    match next_message(stream, deadline).await {
        Message::Progress(p) => p,
        other => panic!("the first message is a Progress, not {other:?}"),
    }
}

/// Reads a fresh subscription until it has caught up, checking the
/// protocol on the way: a Progress first, then (for an unfiltered
/// subscription) every event from `from` on in order, then CaughtUp with the
/// head of what was replayed. Returns the events and the caught-up head.
async fn replay_all(
    stream: &mut Streaming<pb::SubscribeResponse>,
    from: u64,
    deadline: Instant,
) -> (Vec<pb::Event>, u64) {
    let first = first_progress(stream).await;
    assert_eq!(
        first.next_sequence, from,
        "the first Progress names where the replay starts"
    );
    let mut events: Vec<pb::Event> = Vec::new();
    loop {
        match next_message(stream, deadline).await {
            Message::Event(e) => {
                let want = events.last().map_or(from, |l| l.sequence + 1);
                assert_eq!(e.sequence, want, "ordered and gap-free");
                events.push(e);
            }
            Message::CaughtUp(c) => {
                let last = events.last().map_or(from - 1, |l| l.sequence);
                assert_eq!(
                    c.head_sequence, last,
                    "CaughtUp comes once everything up to its head was replayed"
                );
                return (events, c.head_sequence);
            }
            Message::Progress(_) => {}
        }
    }
}

/// Every stored event from `from` on matching the filter, through
/// ListEvents pages; and the head.
async fn list_all(
    client: &mut MilestoneServiceClient<Channel>,
    from: u64,
    kinds: &[pb::EventKind],
    watch_ids: &[&str],
) -> (Vec<pb::Event>, u64) {
    let mut events = Vec::new();
    let mut next = from;
    loop {
        let page = client
            .list_events(pb::ListEventsRequest {
                from_sequence: next,
                limit: 1000,
                kinds: kinds.iter().map(|k| *k as i32).collect(),
                watch_ids: watch_ids.iter().map(|w| (*w).to_owned()).collect(),
                ..Default::default()
            })
            .await
            .expect("ListEvents")
            .into_inner();
        assert!(page.next_sequence >= next, "ListEvents moves forward");
        events.extend(page.events);
        next = page.next_sequence;
        if next > page.head_sequence {
            return (events, page.head_sequence);
        }
    }
}

fn assert_gap_free(events: &[pb::Event], from: u64, to: u64, what: &str) {
    assert_eq!(
        events.len() as u64,
        to + 1 - from,
        "{what}: {from}..={to}, each once"
    );
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.sequence, from + i as u64, "{what}: ordered and gap-free");
    }
}

/// Writer tasks putting batches of new records until `stop`; they take
/// record numbers from `counter`.
fn spawn_writers(
    addr: String,
    writers: usize,
    batch: impl Fn(u64) -> u64 + Send + Sync + Copy + 'static,
    counter: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<u64>> {
    (0..writers)
        .map(|_| {
            let (addr, counter, stop) = (addr.clone(), counter.clone(), stop.clone());
            tokio::spawn(async move {
                let mut client = TradeServiceClient::new(connect(&addr).await);
                let mut batches = 0;
                while !stop.load(Ordering::SeqCst) {
                    let size = batch(batches);
                    let first = counter.fetch_add(size, Ordering::SeqCst);
                    let records = (first..first + size).map(distinct_record).collect();
                    let written = client
                        .put_records(put(records))
                        .await
                        .expect("write")
                        .into_inner();
                    assert_eq!(written.last_sequence + 1 - written.first_sequence, size);
                    batches += 1;
                }
                batches
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resuming_after_disconnects_under_concurrent_writers_loses_and_repeats_nothing() {
    let _gate = GATE.read().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let server = TestServer::start().await;
    let mut client = MilestoneServiceClient::new(server.channel().await);
    let mut rng = Rng::new("resume");

    let stop = Arc::new(AtomicBool::new(false));
    let writers = spawn_writers(
        server.addr.to_string(),
        4,
        |i| 1 + i % 5,
        Arc::new(AtomicU64::new(0)),
        stop.clone(),
    );
    tokio::time::sleep(Duration::from_millis(100)).await;

    let mut seen: Vec<pb::Event> = Vec::new();
    let mut next = 1;
    let (mut mid_replay, mut after_caught_up) = (0, 0);
    for round in 0..20 {
        let mut stream = subscribe(
            &mut client,
            pb::SubscribeRequest {
                from_sequence: next,
                ..Default::default()
            },
            deadline,
        )
        .await;
        let first = first_progress(&mut stream).await;
        assert_eq!(first.next_sequence, next, "round {round}");
        assert!(first.head_sequence + 1 >= next, "round {round}: {first:?}");
        let backlog = first.head_sequence + 1 - next;
        // Odd rounds disconnect in the middle of the replay (when there is
        // one); even rounds read past CaughtUp into live events.
        let in_replay = round % 2 == 1 && backlog > 0;
        let target = if in_replay {
            rng.range(1, backlog)
        } else {
            rng.range(1, backlog + 50)
        };
        let mut caught_up: Option<u64> = None;
        let mut read = 0;
        while read < target || (!in_replay && caught_up.is_none()) {
            match next_message(&mut stream, deadline).await {
                Message::Event(e) => {
                    assert_eq!(e.sequence, next, "round {round}: ordered, no gap, no duplicate");
                    if let Some(head) = caught_up {
                        assert!(e.sequence > head, "round {round}: replayed event after CaughtUp");
                    }
                    next += 1;
                    read += 1;
                    seen.push(e);
                }
                Message::CaughtUp(c) => {
                    assert!(caught_up.is_none(), "round {round}: CaughtUp twice");
                    assert_eq!(
                        c.head_sequence,
                        next - 1,
                        "round {round}: CaughtUp only after the replay up to its head"
                    );
                    assert!(c.head_sequence >= first.head_sequence);
                    caught_up = Some(c.head_sequence);
                }
                Message::Progress(p) => assert_eq!(p.next_sequence, next, "round {round}"),
            }
        }
        if in_replay {
            assert!(caught_up.is_none(), "round {round}: still replaying");
            mid_replay += 1;
        } else {
            after_caught_up += 1;
        }
        drop(stream); // disconnect
        tokio::time::sleep(Duration::from_millis(rng.range(0, 80))).await;
    }

    stop.store(true, Ordering::SeqCst);
    let mut batches = 0;
    for w in writers {
        batches += within(deadline, "the writers to stop", w).await.unwrap();
    }
    let (listed, head) = list_all(&mut client, 1, &[], &[]).await;
    let mut stream = subscribe(
        &mut client,
        pb::SubscribeRequest {
            from_sequence: next,
            ..Default::default()
        },
        deadline,
    )
    .await;
    let (rest, caught_up_head) = replay_all(&mut stream, next, deadline).await;
    assert_eq!(caught_up_head, head, "the last resume catches up with the head");
    seen.extend(rest);
    eprintln!(
        "resume: {batches} batches, head {head}; 21 subscriptions, {mid_replay} dropped mid-replay, \
         {after_caught_up} after CaughtUp"
    );
    assert!(mid_replay >= 5, "the test disconnected mid-replay often enough");
    assert!(head > 200, "writers wrote while the subscriber resumed");
    assert_gap_free(&seen, 1, head, "concatenated subscriptions");
    assert_gap_free(&listed, 1, head, "ListEvents");
    assert!(seen == listed, "Subscribe sends exactly what ListEvents lists");
}

/// RSS of this process (the server runs in it), in bytes.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .expect("VmRSS line");
    let kb: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("VmRSS in kB");
    kb * 1024
}

/// Writes `batches` batches of `size` new records (numbered from `first`)
/// from `writers` concurrent clients; returns how long it took and the last
/// sequence written.
async fn write_batches(
    addr: &str,
    first: u64,
    batches: u64,
    size: u64,
    writers: u64,
    deadline: Instant,
) -> (Duration, u64) {
    let next_batch = Arc::new(AtomicU64::new(0));
    let last = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for _ in 0..writers {
        clients.push(TradeServiceClient::new(connect(addr).await));
    }
    let started = std::time::Instant::now();
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|mut client| {
            let (next_batch, last) = (next_batch.clone(), last.clone());
            tokio::spawn(async move {
                loop {
                    let b = next_batch.fetch_add(1, Ordering::SeqCst);
                    if b >= batches {
                        return;
                    }
                    let n = first + b * size;
                    let records = (n..n + size).map(distinct_record).collect();
                    let written = client
                        .put_records(put(records))
                        .await
                        .expect("write")
                        .into_inner();
                    assert_eq!(written.last_sequence + 1 - written.first_sequence, size);
                    last.fetch_max(written.last_sequence, Ordering::SeqCst);
                }
            })
        })
        .collect();
    for t in tasks {
        within(deadline, "the writers", t).await.unwrap();
    }
    (started.elapsed(), last.load(Ordering::SeqCst))
}

/// 100,000 events (100 batches of 1000) written past a subscriber that does
/// not read, against the same load with no subscriber; then the subscriber
/// reads them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_subscriber_slows_no_writer_and_grows_no_memory() {
    const BATCHES: u64 = 100;
    const SIZE: u64 = 1000;
    const WRITERS: u64 = 4;
    // Alone: the measurements need the machine and the process to itself.
    let _gate = GATE.write().await;
    let deadline = Instant::now() + Duration::from_secs(75);
    let server = TestServer::start().await;
    let addr = server.addr.to_string();
    let mut client = MilestoneServiceClient::new(server.channel().await);
    let events = BATCHES * SIZE;

    // Warm up, then the same load without any subscriber...
    write_batches(&addr, 0, 4, SIZE, WRITERS, deadline).await;
    let rss_0 = rss();
    let (without, _) = write_batches(&addr, 4 * SIZE, BATCHES, SIZE, WRITERS, deadline).await;
    let rss_1 = rss();

    // ...and with a subscriber that reads its first message and then nothing.
    let mut stalled = subscribe(&mut client, pb::SubscribeRequest::default(), deadline).await;
    let first = first_progress(&mut stalled).await;
    let from = first.head_sequence + 1;
    assert_eq!(first.next_sequence, from);
    let rss_2 = rss();
    let (with, head) = write_batches(&addr, (4 + BATCHES) * SIZE, BATCHES, SIZE, WRITERS, deadline).await;
    let rss_3 = rss();
    assert_eq!(head, from + events - 1);

    let rate = |d: Duration| events as f64 / d.as_secs_f64();
    let mib = |before: u64, after: u64| (after as f64 - before as f64) / (1024.0 * 1024.0);
    eprintln!(
        "slow subscriber, {events} events in {BATCHES} batches of {SIZE} from {WRITERS} writers:\n  \
         without subscriber: {without:.2?} = {:.0} events/s, RSS {:+.1} MiB\n  \
         with stalled subscriber: {with:.2?} = {:.0} events/s, RSS {:+.1} MiB (RSS now {:.0} MiB)",
        rate(without),
        mib(rss_0, rss_1),
        rate(with),
        mib(rss_2, rss_3),
        rss_3 as f64 / (1024.0 * 1024.0),
    );
    assert!(
        rate(with) >= 0.5 * rate(without),
        "a stalled subscriber must not slow writers: {with:?} vs {without:?}"
    );
    assert!(
        mib(rss_2, rss_3) < 200.0,
        "a stalled subscriber must not grow memory without bound"
    );
    assert!(
        mib(rss_2, rss_3) < mib(rss_0, rss_1) + 100.0,
        "a stalled subscriber costs no memory beyond what the same writes cost without it"
    );

    // Resumed, the stalled subscriber gets every event, in order, once.
    let resumed = std::time::Instant::now();
    let mut next = from;
    let mut caught_up = false;
    while next <= head {
        match next_message(&mut stalled, deadline).await {
            Message::Event(e) => {
                assert_eq!(e.sequence, next, "ordered and gap-free after the stall");
                assert!(caught_up, "CaughtUp (with the head at subscription) comes first");
                next += 1;
            }
            Message::CaughtUp(c) => {
                assert!(!caught_up, "CaughtUp once");
                assert_eq!(c.head_sequence, from - 1);
                caught_up = true;
            }
            Message::Progress(p) => assert_eq!(p.next_sequence, next),
        }
    }
    eprintln!("  resumed: {events} events read in {:.2?}", resumed.elapsed());
}

/// The real binary, killed with SIGKILL when dropped.
fn usd(units: i64) -> pb::Money {
    pb::Money {
        currency_code: "USD".into(),
        units,
        nanos: 0,
    }
}

/// A watch over CHN's trade with one partner, by year.
fn watch(id: &str, partner: &str, threshold: i64) -> pb::Watch {
    pb::Watch {
        id: id.into(),
        name: format!("China–{partner} trade"),
        selector: Some(pb::RecordSelector {
            reporters: vec!["CHN".into()],
            partners: vec![partner.into()],
            ..Default::default()
        }),
        thresholds: vec![usd(threshold)],
        record_high: true,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_subscriber_saw_before_sigkill_is_stored_identically() {
    let _gate = GATE.read().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let dir = tempfile::tempdir().unwrap();
    let server = Binary::start(dir.path(), &["--cache-mb", "64"]);
    let mut milestones = MilestoneServiceClient::new(connect(&server.addr).await);
    milestones
        .create_watch(create(watch("kaz", "KAZ", 100)))
        .await
        .unwrap();

    // A subscriber from 1 keeps every event it receives until the stream
    // breaks.
    let seen = Arc::new(Mutex::new(Vec::<pb::Event>::new()));
    let subscriber = {
        let (seen, mut client) = (seen.clone(), milestones.clone());
        tokio::spawn(async move {
            let mut stream = client
                .subscribe(pb::SubscribeRequest {
                    from_sequence: 1,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            loop {
                match stream.message().await {
                    Ok(Some(pb::SubscribeResponse {
                        message: Some(Message::Event(e)),
                    })) => seen.lock().unwrap().push(e),
                    Ok(Some(_)) => {}
                    Ok(None) => return None,
                    Err(status) => return Some(status),
                }
            }
        })
    };
    // A writer: batches of 10 new records, one of them CHN–KAZ worth more
    // each time (record highs, a threshold crossing).
    let acknowledged = Arc::new(AtomicU64::new(0));
    let writer = {
        let (addr, acknowledged) = (server.addr.clone(), acknowledged.clone());
        tokio::spawn(async move {
            let mut client = TradeServiceClient::new(connect(&addr).await);
            for b in 0.. {
                let mut records: Vec<_> = (b * 9..b * 9 + 9).map(distinct_record).collect();
                let year = 1900 + b % YEARS;
                records.push(record(
                    "CHN",
                    "KAZ",
                    &year.to_string(),
                    10 * (b as i64 + 1),
                    "GACC",
                ));
                match client.put_records(put(records)).await {
                    Ok(written) => {
                        acknowledged.fetch_max(written.into_inner().last_sequence, Ordering::SeqCst);
                    }
                    Err(_) => return b, // the server is gone
                }
            }
            unreachable!()
        })
    };

    // Kill mid-write, once the subscriber has seen a fair amount.
    while seen.lock().unwrap().len() < 300 {
        within(
            deadline,
            "the subscriber to see 300 events",
            tokio::time::sleep(Duration::from_millis(10)),
        )
        .await;
    }
    let jitter = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .subsec_millis()
        % 300;
    tokio::time::sleep(Duration::from_millis(u64::from(jitter))).await;
    drop(server); // SIGKILL
    let batches = within(deadline, "the writer to fail", writer).await.unwrap();
    let ended = within(deadline, "the subscription to break", subscriber)
        .await
        .unwrap();
    let seen = seen.lock().unwrap().clone();
    let acknowledged = acknowledged.load(Ordering::SeqCst);
    eprintln!(
        "sigkill: {batches} batches acknowledged up to sequence {acknowledged}; the subscriber saw {} events, \
         then {ended:?}",
        seen.len()
    );
    assert!(ended.is_some(), "a killed server does not end a stream with OK");

    let server = Binary::start(dir.path(), &["--cache-mb", "64"]);
    let mut milestones = MilestoneServiceClient::new(connect(&server.addr).await);
    let (log, head) = list_all(&mut milestones, 1, &[], &[]).await;
    assert_gap_free(&log, 1, head, "the log after restart");
    assert!(head >= acknowledged, "every acknowledged write is stored");
    let seen_head = seen.last().map_or(0, |e| e.sequence);
    assert_gap_free(&seen, 1, seen_head, "what the subscriber saw");
    assert!(seen_head <= head, "no subscriber saw an event the restart lost");
    assert!(
        seen[..] == log[..seen.len()],
        "every event a subscriber saw is stored identically"
    );
    for kind in [pb::EventKind::ThresholdCrossed, pb::EventKind::RecordHigh] {
        assert!(seen.iter().any(|e| e.kind_code() == kind), "saw a {kind:?}");
    }

    let mut stream = subscribe(
        &mut milestones,
        pb::SubscribeRequest {
            from_sequence: 1,
            ..Default::default()
        },
        deadline,
    )
    .await;
    let (replayed, caught_up) = replay_all(&mut stream, 1, deadline).await;
    assert_eq!(caught_up, head);
    assert!(
        replayed == log,
        "Subscribe and ListEvents agree after the restart"
    );
}

/// Reads a fresh filtered subscription until it has caught up: a Progress
/// first, events in increasing order from `from`, CaughtUp once.
async fn replay_filtered(
    stream: &mut Streaming<pb::SubscribeResponse>,
    from: u64,
    deadline: Instant,
) -> (Vec<pb::Event>, u64) {
    let first = first_progress(stream).await;
    assert_eq!(first.next_sequence, from);
    let mut events: Vec<pb::Event> = Vec::new();
    loop {
        match next_message(stream, deadline).await {
            Message::Event(e) => {
                assert!(
                    e.sequence >= events.last().map_or(from, |l| l.sequence + 1),
                    "ordered"
                );
                events.push(e);
            }
            Message::CaughtUp(c) => {
                assert!(events.last().is_none_or(|l| l.sequence <= c.head_sequence));
                return (events, c.head_sequence);
            }
            Message::Progress(p) => assert!(p.next_sequence >= from),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_select_events_and_progress_lets_a_filtered_subscriber_checkpoint() {
    let _gate = GATE.read().await;
    let deadline = Instant::now() + Duration::from_secs(40);
    let server = TestServer::start().await;
    let mut trade = server.client().await;
    let mut milestones = MilestoneServiceClient::new(server.channel().await);
    milestones
        .create_watch(create(watch("kaz", "KAZ", 100)))
        .await
        .unwrap();
    milestones
        .create_watch(create(watch("uzb", "UZB", 1000)))
        .await
        .unwrap();
    for (partner, year, units) in [
        ("KAZ", "2020", 50),
        ("KAZ", "2021", 150),
        ("UZB", "2020", 70),
        ("TJK", "2020", 5),
        ("UZB", "2021", 2000),
        ("KAZ", "2021", 90),
    ] {
        trade
            .put_records(put(vec![record("CHN", partner, year, units, "GACC")]))
            .await
            .unwrap();
    }
    let (log, head) = list_all(&mut milestones, 1, &[], &[]).await;
    assert_gap_free(&log, 1, head, "the log");
    for w in ["kaz", "uzb"] {
        for kind in [pb::EventKind::ThresholdCrossed, pb::EventKind::RecordHigh] {
            assert!(
                log.iter()
                    .any(|e| e.kind_code() == kind && e.watch_id() == Some(w)),
                "the log has a {kind:?} of {w}: {log:#?}"
            );
        }
    }

    use pb::EventKind::{RecordHigh, RecordStored, ThresholdCrossed};
    let filters: [(&[pb::EventKind], &[&str]); 6] = [
        (&[RecordHigh], &[]),
        (&[ThresholdCrossed, RecordStored], &[]),
        (&[], &["uzb"]),
        (&[], &["kaz", "uzb"]),
        (&[ThresholdCrossed], &["kaz"]),
        (&[RecordStored], &["kaz"]),
    ];
    for (kinds, watch_ids) in filters {
        let expected: Vec<pb::Event> = log
            .iter()
            .filter(|e| kinds.is_empty() || kinds.contains(&e.kind_code()))
            .filter(|e| watch_ids.is_empty() || e.watch_id().is_some_and(|w| watch_ids.contains(&w)))
            .cloned()
            .collect();
        let mut stream = subscribe(
            &mut milestones,
            pb::SubscribeRequest {
                from_sequence: 1,
                kinds: kinds.iter().map(|k| *k as i32).collect(),
                watch_ids: watch_ids.iter().map(|w| (*w).to_owned()).collect(),
                ..Default::default()
            },
            deadline,
        )
        .await;
        let (events, caught_up) = replay_filtered(&mut stream, 1, deadline).await;
        assert_eq!(caught_up, head);
        assert!(
            events == expected,
            "Subscribe with {kinds:?} {watch_ids:?}: {events:#?}"
        );
        let (listed, _) = list_all(&mut milestones, 1, kinds, watch_ids).await;
        assert!(
            listed == expected,
            "ListEvents with {kinds:?} {watch_ids:?}: {listed:#?}"
        );
    }
    for bad in [
        pb::SubscribeRequest {
            kinds: vec![pb::EventKind::Unspecified as i32],
            ..Default::default()
        },
        pb::SubscribeRequest {
            watch_ids: vec!["Not An Id".into()],
            ..Default::default()
        },
    ] {
        let status = milestones.subscribe(bad).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    }

    // A subscriber of "kaz" only; five events it does not want follow. The
    // idle Progress tells it they were all considered: a checkpoint.
    let mut stream = subscribe(
        &mut milestones,
        pb::SubscribeRequest {
            from_sequence: 1,
            watch_ids: vec!["kaz".into()],
            ..Default::default()
        },
        deadline,
    )
    .await;
    replay_filtered(&mut stream, 1, deadline).await;
    let mut quiet_head = 0;
    for year in 2021..=2025 {
        quiet_head = trade
            .put_records(put(vec![record("CHN", "TJK", &year.to_string(), 7, "GACC")]))
            .await
            .unwrap()
            .into_inner()
            .last_sequence;
    }
    assert_eq!(quiet_head, head + 5);
    let checkpoint = loop {
        match next_message(&mut stream, deadline).await {
            Message::Progress(p) => {
                assert_eq!(p.next_sequence, p.head_sequence + 1, "all considered: {p:?}");
                if p.head_sequence == quiet_head {
                    break p.next_sequence;
                }
            }
            other => panic!("nothing for a kaz subscriber: {other:?}"),
        }
    };
    drop(stream);

    // Resuming from the checkpoint gets exactly the kaz events after it.
    trade
        .put_records(put(vec![record("CHN", "KAZ", "2022", 500, "GACC")]))
        .await
        .unwrap();
    let mut stream = subscribe(
        &mut milestones,
        pb::SubscribeRequest {
            from_sequence: checkpoint,
            watch_ids: vec!["kaz".into()],
            ..Default::default()
        },
        deadline,
    )
    .await;
    let (events, _) = replay_filtered(&mut stream, checkpoint, deadline).await;
    let (expected, _) = list_all(&mut milestones, checkpoint, &[], &["kaz"]).await;
    assert!(
        !expected.is_empty(),
        "CHN–KAZ 2022 at 500 is a record high and a crossing"
    );
    assert!(expected.iter().all(|e| e.sequence > quiet_head));
    assert!(events == expected, "{events:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_position_beyond_the_head_waits_for_its_event() {
    let _gate = GATE.read().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let server = TestServer::start().await;
    let mut trade = server.client().await;
    let mut milestones = MilestoneServiceClient::new(server.channel().await);
    let write = |n: u64| put(vec![distinct_record(n)]);
    for n in 0..3 {
        trade.put_records(write(n)).await.unwrap();
    }

    // From 0: only what comes after now.
    let mut from_now = subscribe(&mut milestones, pb::SubscribeRequest::default(), deadline).await;
    let first = first_progress(&mut from_now).await;
    assert_eq!((first.head_sequence, first.next_sequence), (3, 4));

    // From 6 while the head is 3: no error, nothing until 6 is written.
    let mut ahead = subscribe(
        &mut milestones,
        pb::SubscribeRequest {
            from_sequence: 6,
            ..Default::default()
        },
        deadline,
    )
    .await;
    let first = first_progress(&mut ahead).await;
    assert_eq!((first.head_sequence, first.next_sequence), (3, 6));
    for n in 3..5 {
        trade.put_records(write(n)).await.unwrap();
    }
    let quiet = Instant::now() + Duration::from_millis(500);
    while let Ok(message) = timeout_at(quiet, ahead.message()).await {
        match message {
            Ok(Some(pb::SubscribeResponse {
                message: Some(Message::Event(e)),
            })) => panic!("event {} before the position asked for", e.sequence),
            Ok(Some(_)) => {}
            other => panic!("the subscription waits, it does not end: {other:?}"),
        }
    }
    for n in 5..7 {
        trade.put_records(write(n)).await.unwrap();
    }
    let mut sequences = Vec::new();
    while sequences.len() < 2 {
        if let Message::Event(e) = next_message(&mut ahead, deadline).await {
            sequences.push(e.sequence);
        }
    }
    assert_eq!(sequences, [6, 7]);
    let mut sequences = Vec::new();
    while sequences.len() < 4 {
        if let Message::Event(e) = next_message(&mut from_now, deadline).await {
            sequences.push(e.sequence);
        }
    }
    assert_eq!(sequences, [4, 5, 6, 7]);
}

/// How a subscription ended.
async fn end_of(mut stream: Streaming<pb::SubscribeResponse>) -> (Option<Code>, u64) {
    let mut events = 0;
    loop {
        match stream.message().await {
            Ok(Some(pb::SubscribeResponse {
                message: Some(Message::Event(_)),
            })) => events += 1,
            Ok(Some(_)) => {}
            Ok(None) => return (None, events),
            Err(status) => return (Some(status.code()), events),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_open_subscriptions_promptly() {
    let _gate = GATE.read().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut server = TestServer::start().await;
    let mut trade = server.client().await;
    let mut milestones = MilestoneServiceClient::new(server.channel().await);
    trade
        .put_records(put((0..10).map(distinct_record).collect()))
        .await
        .unwrap();
    let mut stream = subscribe(
        &mut milestones,
        pb::SubscribeRequest {
            from_sequence: 1,
            ..Default::default()
        },
        deadline,
    )
    .await;
    replay_all(&mut stream, 1, deadline).await;
    let reader = tokio::spawn(end_of(stream));

    let stopping = std::time::Instant::now();
    within(deadline, "the server to stop", server.stop()).await;
    let stopped = stopping.elapsed();
    let (ended, _) = within(deadline, "the subscription to end", reader).await.unwrap();
    eprintln!("shutdown: stopped in {stopped:.2?}; the subscription ended with {ended:?}");
    assert!(stopped < Duration::from_secs(3), "stopped in {stopped:?}");
    assert!(
        matches!(ended, None | Some(Code::Unavailable)),
        "ended with {ended:?}"
    );
}

/// A subscriber more than its buffers behind (about 2 MB: the outgoing
/// channel and the HTTP/2 windows) must not hold shutdown up, nor keep the
/// store (and its data dir lock) alive after the server stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_a_stalled_subscription_promptly() {
    let _gate = GATE.read().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut server = TestServer::start().await;
    let mut milestones = MilestoneServiceClient::new(server.channel().await);
    let mut stalled = subscribe(&mut milestones, pb::SubscribeRequest::default(), deadline).await;
    first_progress(&mut stalled).await;
    // Enough events to fill every buffer between the server and the client.
    let (_, head) = write_batches(&server.addr.to_string(), 0, 30, 1000, 2, deadline).await;

    let stopping = std::time::Instant::now();
    within(deadline, "the server to stop", server.stop()).await;
    let stopped = stopping.elapsed();
    // Stopped means the store is let go: a new server can open the dir.
    let reopened = within(
        deadline,
        "a new server on the same dir",
        tradewatch::Application::build(
            "127.0.0.1:0".parse().unwrap(),
            tradewatch::Config::new(&server.data_dir),
        ),
    )
    .await
    .map(drop)
    .map_err(|e| format!("{e:#}"));
    let (ended, events) = within(deadline, "the subscription to end", end_of(stalled)).await;
    eprintln!(
        "shutdown with a stalled subscriber: stopped in {stopped:.2?}; reopening the dir: {reopened:?}; \
         the subscription then read {events} of {head} events and ended with {ended:?}"
    );
    assert!(
        ended.is_some() || events == head,
        "a subscription that missed events never ends with OK"
    );
    let mut problems = Vec::new();
    if stopped >= Duration::from_secs(3) {
        problems.push(format!("stop() took {stopped:?}"));
    }
    if let Err(e) = reopened {
        problems.push(format!("the stopped server still holds its store: {e}"));
    }
    assert!(problems.is_empty(), "{problems:#?}");
}
