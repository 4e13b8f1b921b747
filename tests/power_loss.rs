//! Power loss, not just kill -9: the crash suite's load on a data dir kept
//! on a FUSE file system that forgets every write not synced when the
//! power is cut (`tests/support/powercut/`, in the spirit of Jepsen's
//! LazyFS). SIGKILL alone leaves the kernel's page cache in place, so a
//! write that was never synced still reads back after the restart; a power
//! cut does not. See docs/power-loss.md.
//!
//! One backing directory serves every round; the data dir is `data` inside
//! the mount (so that its own entry must be made durable too). Setup
//! stores two partner groups, a few batches and four watches (thresholds,
//! record high, backfill) over every read path: records (CHN ↔
//! CENTRAL_ASIA; CHN and KAZ ↔ a group edited under load, monthly data by
//! year), the per-reporter rollup (CHN) and the world rollup. Each round:
//!
//! 1. two subscribers (every event; milestones only, in about half the
//!    rounds) reconnect from their checkpoints, and the resumed stream must
//!    replay exactly what followed the checkpoint, then `CaughtUp`;
//! 2. three record writers (batches of 1–6 records over 189 keys, so most
//!    writes are revisions; deletions), a bulk writer (300–700 records
//!    with long sources, so that sled keeps nodes in blob files) and a
//!    group editor run, and the power is cut — 50–500 ms in, or right after
//!    a sync chosen at random (of anything, or of a directory) — the file
//!    system keeping only what was synced, sometimes with the last unsynced
//!    write torn (a prefix of it kept, or its range zeroed); the server is
//!    SIGKILLed at once;
//! 3. in a quarter of the rounds, the power is cut again while the server
//!    starts on the post-cut state (sled recovering, the store opening);
//! 4. the post-cut backing directory is mounted again, the server started
//!    on it, and every invariant checked:
//!    - **events**: `ListEvents` from 1 is gap-free, every event verified
//!      before is still there, identical, and everything each subscriber
//!      was sent is stored identically (a subscriber is sent only what was
//!      durable, so nothing it saw may be missing);
//!    - **records**: replaying the log's `RecordStored` events (each a valid
//!      transition) gives exactly what `ListRecords` returns, value and
//!      revision; every acknowledged batch is in the log whole, in request
//!      order, at the sequences its response named; every unacknowledged
//!      one is there whole or not at all, and no batch twice; every
//!      acknowledged deletion is the event at its sequence;
//!    - **groups** as last acknowledged, or as the edit in flight left them;
//!    - **aggregates** over the records and both rollups equal a brute-force
//!      sum of the listed records;
//!    - **watch states**: each watch's threshold states, as its own events
//!      leave them, equal those its series computed from the records imply
//!      and those of a twin created now with backfill (the server's
//!      re-evaluation from the records); then a huge probe record put into
//!      and deleted from each period must move the watch and its twin
//!      identically, exposing the persisted values, threshold states and
//!      record holder.
//!
//! The RNG is seeded (`TRADEWATCH_POWER_SEED` replays the choices; thread
//! scheduling still varies). `cargo test --test power_loss` runs 5 rounds;
//! `TRADEWATCH_POWER_ROUNDS=100 cargo test --release --test power_loss --
//! --ignored` the long form. Without FUSE (no /dev/fuse, no privilege to
//! mount) the tests say why and pass, unless `TRADEWATCH_REQUIRE_FUSE` is
//! set (as `.ci/run` does).

mod common;
#[path = "support/powercut/mod.rs"]
mod powercut;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::future::Future;
use std::io::{BufRead, BufReader, Read, Seek};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use powercut::{PowerCut, Tear};
use tonic::Code;
use tonic::transport::Channel;
use tradewatch::pb::{
    self, Dimension, Flow, Granularity, milestone_service_client::MilestoneServiceClient,
    subscribe_response::Message, trade_service_client::TradeServiceClient,
};

const SHORT_ROUNDS: u64 = 5;
const LONG_ROUNDS: u64 = 100;
const RECORD_WRITERS: usize = 3;
/// The power is cut this many milliseconds after the writers start.
const CUT_AFTER_MS: (u64, u64) = (50, 500);
/// An armed cut follows one of the first this many syncs of the round.
const SYNCS_BEFORE_CUT: u64 = 40;
/// The server's test-only switch that turns its extra syncs off
/// (src/store/disk.rs): `commit` skips those after each group of writes.
const SKIP_SYNCS: &str = "TRADEWATCH_TEST_ONLY_SKIP_SYNCS";

const NANOS: i128 = 1_000_000_000;
const MILLION: i128 = 1_000_000 * NANOS;

const REPORTERS: [&str; 2] = ["CHN", "KAZ"];
const PARTNERS: [&str; 5] = ["KAZ", "KGZ", "UZB", "DEU", "WLD"];
const FLOWS: [Flow; 3] = [Flow::Export, Flow::Import, Flow::Turnover];
const PERIODS: [&str; 7] = ["2022", "2023", "2024", "2025", "2024-01", "2024-02", "2025-01"];
const CENTRAL_ASIA: [&str; 5] = ["KAZ", "KGZ", "TJK", "TKM", "UZB"];
/// The group a watch names, redefined under load (always with the probe
/// partner), and one no watch names, created and deleted under load.
const GROUP: &str = "POWER_PARTNERS";
const SPARE: &str = "POWER_SPARE";
const VARIANTS: [&[&str]; 4] = [
    &["KAZ", "TKM"],
    &["KAZ", "KGZ", "TKM"],
    &["DEU", "TKM", "UZB"],
    &["TKM"],
];
/// Probes are CHN ↔ TKM turnover: every watch selects it, the load never
/// writes it.
const PROBE_PARTNER: &str = "TKM";
const ANNUAL_PROBES: [&str; 4] = ["2022", "2023", "2024", "2025"];
const MONTHLY_PROBES: [&str; 2] = ["2024-12", "2025-12"];
/// A threshold of every watch that only a probe reaches.
const CEILING: i128 = 1_000_000 * MILLION;
const PROBE: i128 = 2 * CEILING;

// ---------------------------------------------------------------------------
// Randomness, keys, values

/// splitmix64.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }

    fn index(&mut self, len: usize) -> usize {
        (self.next() % len as u64) as usize
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn fork(&mut self) -> Rng {
        Rng(self.next())
    }
}

/// A natural key of the suite, in USD: commodity TOTAL for the load, an
/// HS6 code for the bulk writes.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    reporter: String,
    partner: String,
    flow: i32,
    period: String,
    commodity: String,
}

impl Key {
    fn new(reporter: &str, partner: &str, flow: Flow, period: &str) -> Key {
        Key {
            reporter: reporter.into(),
            partner: partner.into(),
            flow: flow.into(),
            period: period.into(),
            commodity: "TOTAL".into(),
        }
    }

    fn from_pb(k: &pb::RecordKey) -> Result<Key, String> {
        if k.currency != "USD" {
            return Err(format!("a key the suite never writes: {k:?}"));
        }
        Ok(Key {
            reporter: k.reporter.clone(),
            partner: k.partner.clone(),
            flow: k.flow,
            period: k.period.clone(),
            commodity: k.commodity.clone(),
        })
    }

    fn is_probe(&self) -> bool {
        self.reporter == "CHN" && self.partner == PROBE_PARTNER && self.commodity == "TOTAL"
    }

    fn to_pb(&self) -> pb::RecordKey {
        pb::RecordKey {
            reporter: self.reporter.clone(),
            partner: self.partner.clone(),
            flow: self.flow,
            period: self.period.clone(),
            commodity: self.commodity.clone(),
            currency: "USD".into(),
        }
    }

    fn record(&self, value: i128, source: &str) -> pb::TradeRecord {
        pb::TradeRecord {
            reporter: self.reporter.clone(),
            partner: self.partner.clone(),
            flow: self.flow,
            period: self.period.clone(),
            commodity: self.commodity.clone(),
            value: Some(money(value)),
            source: source.into(),
            ..Default::default()
        }
    }
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let flow = Flow::try_from(self.flow).map_or("?", |f| f.as_str_name());
        write!(
            f,
            "{}>{} {} {} {}",
            self.reporter, self.partner, flow, self.period, self.commodity
        )
    }
}

/// 2 reporters × 5 partners (no self-trade) × 3 flows × 7 periods = 189.
fn load_keys() -> Vec<Key> {
    let mut keys = Vec::new();
    for r in REPORTERS {
        for p in PARTNERS.iter().filter(|p| **p != r) {
            for f in FLOWS {
                for period in PERIODS {
                    keys.push(Key::new(r, p, f, period));
                }
            }
        }
    }
    keys
}

/// The keys of the bulk writes: GBR × 20 partners × 40 HS6 codes, 2020
/// turnover. No watch and no aggregate of the checks counts them (they are
/// not TOTAL).
fn bulk_keys() -> Vec<Key> {
    const PARTNERS: [&str; 20] = [
        "KAZ", "KGZ", "TJK", "TKM", "UZB", "RUS", "DEU", "FRA", "USA", "IND", "BRA", "JPN", "KOR", "VNM",
        "THA", "IDN", "TUR", "IRN", "PAK", "MNG",
    ];
    let mut keys = Vec::new();
    for hs in 0..40 {
        for p in PARTNERS {
            keys.push(Key {
                commodity: format!("{:06}", 100_000 + hs),
                ..Key::new("GBR", p, Flow::Turnover, "2020")
            });
        }
    }
    keys
}

/// Record `i` of batch `b`: whole units, and nanos naming the batch and
/// the record, so that every value written is distinct and says whose it is.
fn batch_value(units: i128, b: u64, i: usize) -> i128 {
    assert!(i < 1024 && b < 976_000);
    units * NANOS + i128::from(b) * 1024 + i as i128
}

fn batch_of(value: i128) -> Option<(u64, usize)> {
    let n = value % NANOS;
    (n != 0).then_some(((n / 1024) as u64, (n % 1024) as usize))
}

fn money(nanos: i128) -> pb::Money {
    pb::Money {
        currency_code: "USD".into(),
        units: i64::try_from(nanos / NANOS).unwrap(),
        nanos: i32::try_from(nanos % NANOS).unwrap(),
    }
}

fn amount(m: Option<&pb::Money>) -> Option<i128> {
    m.map(|m| i128::from(m.units) * NANOS + i128::from(m.nanos))
}

fn show(v: Option<i128>) -> String {
    match v {
        Some(v) => format!("{}.{:09}", v / NANOS, v % NANOS),
        None => "none".into(),
    }
}

fn members(variant: &[&str]) -> Vec<String> {
    variant.iter().map(|s| s.to_string()).collect()
}

// ---------------------------------------------------------------------------
// What the clients did

struct Batch {
    records: Vec<(Key, i128)>,
    /// The response's sequence range, once acknowledged.
    acked: Option<(u64, u64)>,
    /// Once resolved from the log: where it starts, or `None`: not there.
    landed: Option<Option<u64>>,
}

#[derive(Default)]
struct Ledger {
    next_batch: u64,
    batches: BTreeMap<u64, Batch>,
    /// Acknowledged deletions with their sequence; the first
    /// `deletes_checked` are verified.
    deletes: Vec<(Key, u64)>,
    deletes_checked: usize,
    /// Custom groups as last acknowledged (None: absent), and the edit in
    /// flight at the cut.
    groups: BTreeMap<&'static str, Option<Vec<String>>>,
    group_in_flight: Option<(&'static str, Option<Vec<String>>)>,
    /// Requests that failed before the cut.
    problems: Vec<String>,
    acked_writes: u64,
}

type Shared<T> = Arc<Mutex<T>>;

async fn connect(addr: &str) -> Result<Channel, tonic::transport::Error> {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
}

async fn send_batch(
    client: &mut TradeServiceClient<Channel>,
    ledger: &Shared<Ledger>,
    rng: &mut Rng,
    keys: Vec<Key>,
    padding: usize,
) -> Result<(), tonic::Status> {
    let (b, records) = {
        let mut l = ledger.lock().unwrap();
        l.next_batch += 1;
        let b = l.next_batch;
        let records: Vec<(Key, i128)> = keys
            .into_iter()
            .enumerate()
            .map(|(i, k)| (k, batch_value(i128::from(rng.range(100_000, 1_000_000)), b, i)))
            .collect();
        l.batches.insert(
            b,
            Batch {
                records: records.clone(),
                acked: None,
                landed: None,
            },
        );
        (b, records)
    };
    let request = common::put(
        records
            .iter()
            .map(|(k, v)| k.record(*v, &format!("power b{b} {}", "p".repeat(padding))))
            .collect(),
    );
    let response = client.put_records(request).await?.into_inner();
    let mut l = ledger.lock().unwrap();
    if response.results.len() != records.len()
        || response.first_sequence == 0
        || response.last_sequence < response.first_sequence + records.len() as u64 - 1
    {
        l.problems.push(format!("batch {b}: odd response {response:?}"));
    }
    l.batches.get_mut(&b).unwrap().acked = Some((response.first_sequence, response.last_sequence));
    l.acked_writes += 1;
    Ok(())
}

fn distinct_keys(rng: &mut Rng, keys: &[Key], n: usize) -> Vec<Key> {
    let mut picked: Vec<Key> = Vec::new();
    while picked.len() < n {
        let k = &keys[rng.index(keys.len())];
        if !picked.contains(k) {
            picked.push(k.clone());
        }
    }
    picked
}

/// Batches and deletions until the server is gone.
async fn record_writer(addr: String, mut rng: Rng, ledger: Shared<Ledger>, cut: Arc<AtomicBool>) {
    let Ok(channel) = connect(&addr).await else {
        return;
    };
    let mut client = TradeServiceClient::new(channel);
    let keys = load_keys();
    loop {
        let failed = if rng.chance(20) {
            let key = keys[rng.index(keys.len())].clone();
            match client.delete_record(common::delete(key.to_pb())).await {
                Ok(r) => {
                    let mut l = ledger.lock().unwrap();
                    l.deletes.push((key, r.into_inner().sequence));
                    l.acked_writes += 1;
                    None
                }
                Err(s) if s.code() == Code::NotFound => None,
                Err(s) => Some(format!("DeleteRecord {key}: {s:?}")),
            }
        } else {
            let n = rng.range(1, 6) as usize;
            let batch = distinct_keys(&mut rng, &keys, n);
            send_batch(&mut client, &ledger, &mut rng, batch, 0)
                .await
                .err()
                .map(|s| format!("PutRecords: {s:?}"))
        };
        if let Some(failure) = failed {
            if !cut.load(Ordering::SeqCst) {
                ledger
                    .lock()
                    .unwrap()
                    .problems
                    .push(format!("before the cut: {failure}"));
            }
            return;
        }
    }
}

/// Now and then a batch of 300–700 records with long sources: large
/// enough that sled keeps nodes of its event blocks in files of their own
/// (`blobs/`), which it never syncs itself.
async fn bulk_writer(addr: String, mut rng: Rng, ledger: Shared<Ledger>, cut: Arc<AtomicBool>) {
    let Ok(channel) = connect(&addr).await else {
        return;
    };
    let mut client = TradeServiceClient::new(channel);
    let keys = bulk_keys();
    loop {
        tokio::time::sleep(Duration::from_millis(rng.range(20, 200))).await;
        let n = rng.range(300, 700) as usize;
        let start = rng.index(keys.len());
        let batch: Vec<Key> = keys.iter().cycle().skip(start).take(n).cloned().collect();
        if let Err(s) = send_batch(&mut client, &ledger, &mut rng, batch, 180).await {
            if !cut.load(Ordering::SeqCst) {
                ledger
                    .lock()
                    .unwrap()
                    .problems
                    .push(format!("before the cut: a bulk PutRecords: {s:?}"));
            }
            return;
        }
    }
}

async fn put_group(
    client: &mut TradeServiceClient<Channel>,
    name: &str,
    members: &[String],
) -> Result<(), tonic::Status> {
    client
        .put_group(common::put_group(pb::PartnerGroup {
            name: name.into(),
            members: members.to_vec(),
            description: "power-loss suite".into(),
            updated_at: None,
        }))
        .await
        .map(drop)
}

/// Redefines the watched group and creates or deletes the spare one until
/// the server is gone.
async fn group_editor(addr: String, mut rng: Rng, ledger: Shared<Ledger>, cut: Arc<AtomicBool>) {
    let Ok(channel) = connect(&addr).await else {
        return;
    };
    let mut client = TradeServiceClient::new(channel);
    loop {
        tokio::time::sleep(Duration::from_millis(rng.range(5, 40))).await;
        let variant = members(VARIANTS[rng.index(VARIANTS.len())]);
        let op: (&'static str, Option<Vec<String>>) = if rng.chance(50) {
            (GROUP, Some(variant))
        } else {
            let exists = ledger.lock().unwrap().groups[SPARE].is_some();
            (SPARE, (!exists || rng.chance(30)).then_some(variant))
        };
        ledger.lock().unwrap().group_in_flight = Some(op.clone());
        let result = match &op.1 {
            Some(m) => put_group(&mut client, op.0, m).await,
            None => client.delete_group(common::delete_group(op.0)).await.map(drop),
        };
        let mut l = ledger.lock().unwrap();
        match result {
            Ok(()) => {
                l.groups.insert(op.0, op.1);
                l.group_in_flight = None;
                l.acked_writes += 1;
            }
            Err(s) => {
                if !cut.load(Ordering::SeqCst) {
                    l.problems
                        .push(format!("before the cut: group edit {op:?}: {s:?}"));
                }
                return;
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Subscribers

#[derive(Default)]
struct SubLog {
    /// Every event received, over every connection.
    seen: Vec<pb::Event>,
    /// The checkpoint: resume from here.
    next: u64,
    /// The current connection: where it started, how many events had been
    /// seen then, its first Progress, its CaughtUp (head, events seen by
    /// then), and how it ended.
    from: u64,
    at: usize,
    first: Option<pb::Progress>,
    caught_up: Option<(u64, usize)>,
    ended: Option<String>,
    problems: Vec<String>,
}

struct Subscriber {
    name: &'static str,
    kinds: Vec<pb::EventKind>,
    log: Shared<SubLog>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Subscriber {
    fn new(name: &'static str, kinds: Vec<pb::EventKind>) -> Subscriber {
        Subscriber {
            name,
            kinds,
            log: Arc::new(Mutex::new(SubLog {
                next: 1,
                ..Default::default()
            })),
            task: None,
        }
    }

    fn wants(&self, e: &pb::Event) -> bool {
        self.kinds.is_empty() || self.kinds.contains(&e.kind_code())
    }
}

/// Follows one subscription, recording everything, until it breaks.
async fn subscription(addr: String, kinds: Vec<i32>, log: Shared<SubLog>) {
    let from = log.lock().unwrap().from;
    let end = |how: String| log.lock().unwrap().ended = Some(how);
    let mut client = match connect(&addr).await {
        Ok(channel) => MilestoneServiceClient::new(channel),
        Err(e) => return end(format!("cannot connect: {e}")),
    };
    let request = pb::SubscribeRequest {
        from_sequence: from,
        kinds,
        watch_ids: vec![],
        ..Default::default()
    };
    let mut stream = match client.subscribe(request).await {
        Ok(s) => s.into_inner(),
        Err(s) => return end(format!("Subscribe failed: {s:?}")),
    };
    loop {
        let message = match stream.message().await {
            Ok(Some(m)) => m.message,
            Ok(None) => return end("ended with OK".into()),
            Err(s) => return end(format!("{:?}", s.code())),
        };
        let mut l = log.lock().unwrap();
        match message {
            Some(Message::Event(e)) => {
                if e.sequence < l.next {
                    let problem = format!("event {} after checkpoint {}", e.sequence, l.next);
                    l.problems.push(problem);
                }
                l.next = e.sequence + 1;
                l.seen.push(e);
            }
            Some(Message::CaughtUp(c)) => {
                if l.caught_up.is_some() {
                    l.problems.push("CaughtUp twice".into());
                }
                let n = l.seen.len();
                l.caught_up = Some((c.head_sequence, n));
                l.next = l.next.max(c.head_sequence + 1);
            }
            Some(Message::Progress(p)) => {
                if l.first.is_none() {
                    l.first = Some(p);
                } else {
                    l.next = l.next.max(p.next_sequence);
                }
            }
            None => l.problems.push("a response without a message".into()),
        }
    }
}

/// Connects a subscriber from its checkpoint and checks the resumed
/// stream: a Progress naming the checkpoint and the head first, then
/// exactly the matching stored events after it, then CaughtUp at the head.
async fn connect_subscriber(sub: &mut Subscriber, addr: &str, log: &[pb::Event], problems: &mut Vec<String>) {
    let from = {
        let mut l = sub.log.lock().unwrap();
        l.from = l.next;
        l.at = l.seen.len();
        l.first = None;
        l.caught_up = None;
        l.ended = None;
        l.from
    };
    let kinds = sub.kinds.iter().map(|k| *k as i32).collect();
    let task = tokio::spawn(subscription(addr.to_owned(), kinds, sub.log.clone()));
    let started = Instant::now();
    while sub.log.lock().unwrap().caught_up.is_none() {
        if task.is_finished() || started.elapsed() > Duration::from_secs(30) {
            let ended = sub.log.lock().unwrap().ended.clone();
            problems.push(format!(
                "subscriber {} from {from}: no CaughtUp (ended: {ended:?})",
                sub.name
            ));
            sub.task = Some(task);
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    sub.task = Some(task);
    let head = log.len() as u64;
    let l = sub.log.lock().unwrap();
    let name = sub.name;
    match &l.first {
        Some(p) if p.next_sequence == from && p.head_sequence == head => {}
        other => problems.push(format!(
            "subscriber {name} from {from}: first message {other:?}, expected Progress {{ head {head}, next {from} }}"
        )),
    }
    let (caught_head, caught_len) = l.caught_up.unwrap();
    if caught_head != head {
        problems.push(format!(
            "subscriber {name} from {from}: CaughtUp at {caught_head}, the head is {head}"
        ));
    }
    let start = (from as usize).saturating_sub(1).min(log.len());
    let expected: Vec<&pb::Event> = log[start..].iter().filter(|e| sub.wants(e)).collect();
    let got: Vec<&pb::Event> = l.seen[l.at..caught_len].iter().collect();
    if got != expected {
        problems.push(format!(
            "subscriber {name} resumed from {from}: replayed {} events ({:?}..), expected {} ({:?}..)",
            got.len(),
            got.first().map(|e| e.sequence),
            expected.len(),
            expected.first().map(|e| e.sequence)
        ));
    }
}

// ---------------------------------------------------------------------------
// Events

/// A milestone without its watch id, to compare a watch with its twin.
fn anonymous(e: &pb::Event) -> Option<pb::event::Kind> {
    let mut kind = e.kind.clone()?;
    kind.watch_id_mut()?.clear();
    Some(kind)
}

/// Every stored event from `from` on, and the head.
async fn list_events(
    client: &mut MilestoneServiceClient<Channel>,
    from: u64,
) -> Result<(Vec<pb::Event>, u64), String> {
    let mut events = Vec::new();
    let mut next = from;
    loop {
        let page = client
            .list_events(pb::ListEventsRequest {
                from_sequence: next,
                limit: 1000,
                ..Default::default()
            })
            .await
            .map_err(|s| format!("ListEvents from {next}: {s:?}"))?
            .into_inner();
        if page.next_sequence <= next && !page.events.is_empty() {
            return Err(format!("ListEvents from {next} does not move forward"));
        }
        let empty = page.events.is_empty();
        events.extend(page.events);
        next = page.next_sequence;
        if next > page.head_sequence || empty {
            return Ok((events, page.head_sequence));
        }
    }
}

// ---------------------------------------------------------------------------
// Series, brute force

type Records = BTreeMap<Key, (i128, i64)>;
type Groups = BTreeMap<String, Vec<String>>;

fn expand(names: &[&str], groups: &Groups) -> BTreeSet<String> {
    names
        .iter()
        .flat_map(|n| groups.get(*n).cloned().unwrap_or_else(|| vec![n.to_string()]))
        .collect()
}

/// Trade volume (turnover if published, else exports + imports) per year
/// of the annual or the monthly records of `reporters` (all when empty)
/// with `partners` (all but WLD when empty), groups expanded.
fn volume_by_year(
    records: &Records,
    reporters: &[&str],
    partners: &[&str],
    monthly: bool,
    groups: &Groups,
) -> BTreeMap<String, i128> {
    let reporters = (!reporters.is_empty()).then(|| expand(reporters, groups));
    let partners = (!partners.is_empty()).then(|| expand(partners, groups));
    let mut volumes: BTreeMap<(&str, &str, &str), [Option<i128>; 3]> = BTreeMap::new();
    for (k, (v, _)) in records {
        let picked = k.commodity == "TOTAL"
            && (k.period.len() > 4) == monthly
            && reporters.as_ref().is_none_or(|r| r.contains(&k.reporter))
            && match &partners {
                Some(p) => p.contains(&k.partner),
                None => k.partner != "WLD",
            };
        let slot = match Flow::try_from(k.flow) {
            Ok(Flow::Turnover) => 0,
            Ok(Flow::Export) => 1,
            Ok(Flow::Import) => 2,
            _ => continue,
        };
        if picked {
            volumes
                .entry((k.reporter.as_str(), k.partner.as_str(), k.period.as_str()))
                .or_default()[slot] = Some(*v);
        }
    }
    let mut out: BTreeMap<String, i128> = BTreeMap::new();
    for ((_, _, period), [t, x, m]) in volumes {
        *out.entry(period[..4].to_string()).or_default() += t.unwrap_or(x.unwrap_or(0) + m.unwrap_or(0));
    }
    out
}

#[derive(Clone, Debug)]
struct WatchSpec {
    id: String,
    name: &'static str,
    reporters: Vec<&'static str>,
    partners: Vec<&'static str>,
    monthly: bool,
    thresholds: Vec<i128>,
}

fn selector(reporters: &[&str], partners: &[&str], monthly: bool) -> pb::RecordSelector {
    pb::RecordSelector {
        reporters: reporters.iter().map(|s| s.to_string()).collect(),
        partners: partners.iter().map(|s| s.to_string()).collect(),
        frequency: if monthly {
            pb::Frequency::Monthly
        } else {
            pb::Frequency::Annual
        }
        .into(),
        ..Default::default()
    }
}

impl WatchSpec {
    fn to_pb(&self, backfill: bool) -> pb::CreateWatchRequest {
        pb::CreateWatchRequest {
            watch: Some(pb::Watch {
                id: self.id.clone(),
                name: self.name.into(),
                selector: Some(selector(&self.reporters, &self.partners, self.monthly)),
                granularity: Granularity::Year.into(),
                thresholds: self.thresholds.iter().map(|t| money(*t)).collect(),
                record_high: true,
                ..Default::default()
            }),
            backfill,
            ..Default::default()
        }
    }

    fn series(&self, records: &Records, groups: &Groups) -> BTreeMap<String, i128> {
        volume_by_year(records, &self.reporters, &self.partners, self.monthly, groups)
    }

    /// The (period, threshold) pairs at or above their threshold.
    fn crossed(&self, records: &Records, groups: &Groups) -> BTreeSet<(String, i128)> {
        let mut out = BTreeSet::new();
        for (period, v) in self.series(records, groups) {
            for t in self.thresholds.iter().filter(|t| v >= **t) {
                out.insert((period.clone(), *t));
            }
        }
        out
    }
}

fn original_watches() -> Vec<WatchSpec> {
    let m = |units: &[f64]| -> Vec<i128> {
        units
            .iter()
            .map(|u| (u * 1_000_000.0) as i128 * NANOS)
            .chain([CEILING])
            .collect()
    };
    let spec = |id: &str, name, reporters, partners, monthly, thresholds| WatchSpec {
        id: id.into(),
        name,
        reporters,
        partners,
        monthly,
        thresholds,
    };
    vec![
        spec(
            "ca",
            "China–Central Asia trade",
            vec!["CHN"],
            vec!["CENTRAL_ASIA"],
            false,
            m(&[1.0, 2.0, 2.5, 3.0]),
        ),
        spec(
            "grp",
            "China and Kazakhstan with the power partners, year to date",
            vec!["CHN", "KAZ"],
            vec![GROUP],
            true,
            m(&[0.5, 1.0, 2.0]),
        ),
        spec(
            "rep",
            "China's trade",
            vec!["CHN"],
            vec![],
            false,
            m(&[2.0, 3.0, 4.0, 5.0]),
        ),
        spec(
            "world",
            "World trade",
            vec![],
            vec![],
            false,
            m(&[3.0, 5.0, 7.0, 9.0]),
        ),
    ]
}

// ---------------------------------------------------------------------------
// The verifier: the log as checked so far

struct Verifier {
    /// Every event verified so far, from sequence 1.
    log: Vec<pb::Event>,
    /// Records as the verified log leaves them: value, revision.
    records: Records,
    /// Threshold states as each watch's own events leave them.
    crossed: BTreeMap<(String, String, i128), bool>,
    /// Every watch ever created (twins too).
    specs: BTreeMap<String, WatchSpec>,
    originals: Vec<String>,
}

impl Verifier {
    fn head(&self) -> u64 {
        self.log.len() as u64
    }

    /// Checks the events after the verified log and adds them.
    fn process(&mut self, events: &[pb::Event], ledger: &mut Ledger, problems: &mut Vec<String>) {
        // batch → (record index, sequence, key, value)
        let mut occurrences: BTreeMap<u64, Vec<(usize, u64, Key, i128)>> = BTreeMap::new();
        for e in events {
            let seq = e.sequence;
            if seq != self.head() + 1 {
                problems.push(format!("event {seq} follows {}: the log has a gap", self.head()));
            }
            match &e.kind {
                Some(pb::event::Kind::RecordStored(rs)) => {
                    let key = match rs.key.as_ref().map(Key::from_pb) {
                        Some(Ok(k)) => k,
                        other => {
                            problems.push(format!("event {seq}: record key {other:?}"));
                            self.log.push(e.clone());
                            continue;
                        }
                    };
                    let before = self.records.get(&key).copied();
                    let (old, new) = (amount(rs.old_value.as_ref()), amount(rs.new_value.as_ref()));
                    let valid = match rs.change() {
                        pb::RecordChange::Created => {
                            before.is_none() && old.is_none() && new.is_some() && rs.revision == 1
                        }
                        pb::RecordChange::Revised => before.is_some_and(|(v, r)| {
                            old == Some(v) && new.is_some() && new != old && rs.revision == r + 1
                        }),
                        pb::RecordChange::Deleted => {
                            before.is_some_and(|(v, r)| old == Some(v) && new.is_none() && rs.revision == r)
                        }
                        pb::RecordChange::Unspecified => false,
                    };
                    if !valid {
                        problems.push(format!(
                            "event {seq}: {:?} of {key} (old {}, new {}, revision {}) does not follow the stored \
                             record {before:?}",
                            rs.change(),
                            show(old),
                            show(new),
                            rs.revision
                        ));
                    }
                    match new {
                        Some(v) => {
                            self.records.insert(key.clone(), (v, rs.revision));
                            if key.is_probe() {
                                if v != PROBE {
                                    problems.push(format!("event {seq}: probe key {key} = {}", show(new)));
                                }
                            } else {
                                match batch_of(v) {
                                    Some((b, i)) => occurrences.entry(b).or_default().push((i, seq, key, v)),
                                    None => problems.push(format!(
                                        "event {seq}: {key} = {} was never written",
                                        show(new)
                                    )),
                                }
                            }
                        }
                        None => {
                            self.records.remove(&key);
                        }
                    }
                }
                Some(pb::event::Kind::ThresholdCrossed(c)) => {
                    let Some(spec) = self.specs.get(&c.watch_id) else {
                        problems.push(format!(
                            "event {seq}: milestone of unknown watch {:?}",
                            c.watch_id
                        ));
                        self.log.push(e.clone());
                        continue;
                    };
                    let t = amount(c.threshold.as_ref()).unwrap_or(-1);
                    if !spec.thresholds.contains(&t) {
                        problems.push(format!(
                            "event {seq}: {} crossed {} it does not have",
                            spec.id,
                            show(Some(t))
                        ));
                    }
                    let up = c.direction() == pb::Direction::Up;
                    let state = self
                        .crossed
                        .entry((spec.id.clone(), c.period.clone(), t))
                        .or_default();
                    if *state == up {
                        problems.push(format!(
                            "event {seq}: {} {} crossed {} {:?} but was already {}",
                            spec.id,
                            c.period,
                            show(Some(t)),
                            c.direction(),
                            if up { "above" } else { "below" }
                        ));
                    }
                    *state = up;
                    let after = amount(c.value_after.as_ref());
                    if after.is_some_and(|a| (a >= t) != up) || (after.is_none() && up) {
                        problems.push(format!(
                            "event {seq}: {} {} crossed {} {:?} to {}",
                            spec.id,
                            c.period,
                            show(Some(t)),
                            c.direction(),
                            show(after)
                        ));
                    }
                }
                Some(_) => {
                    let id = e.watch_id().unwrap_or_default();
                    if !self.specs.contains_key(id) {
                        problems.push(format!("event {seq}: milestone of unknown watch {id:?}"));
                    }
                }
                None => problems.push(format!("event {seq} has no kind")),
            }
            self.log.push(e.clone());
        }

        // Batches: whole or not at all, in request order, once.
        for (b, occ) in occurrences {
            let Some(batch) = ledger.batches.get_mut(&b) else {
                problems.push(format!("batch {b} in the log was never sent"));
                continue;
            };
            if batch.landed.is_some() {
                problems.push(format!(
                    "batch {b} (resolved as {:?}) appears again in the log",
                    batch.landed
                ));
                continue;
            }
            let first = occ[0].1;
            let whole = occ.len() == batch.records.len()
                && occ.iter().enumerate().all(|(n, (i, seq, key, value))| {
                    *i == n && *seq == first + n as u64 && batch.records[n] == (key.clone(), *value)
                });
            if !whole {
                let found: Vec<String> = occ
                    .iter()
                    .map(|(i, seq, k, _)| format!("#{i}@{seq} {k}"))
                    .collect();
                problems.push(format!(
                    "batch {b} of {} records ({}) is in the log in part or out of order: {found:?}",
                    batch.records.len(),
                    if batch.acked.is_some() {
                        "acknowledged"
                    } else {
                        "unacknowledged"
                    },
                ));
            }
            if let Some((ack_first, ack_last)) = batch.acked {
                if ack_first != first {
                    problems.push(format!(
                        "batch {b} was acknowledged at {ack_first}..={ack_last} but is stored from {first}"
                    ));
                } else {
                    let n = batch.records.len() as u64;
                    let extra = (first + n..=ack_last)
                        .filter_map(|s| self.log.get(s as usize - 1))
                        .filter(|e| e.kind_code() == pb::EventKind::RecordStored)
                        .count();
                    if extra > 0 || ack_last as usize > self.log.len() {
                        problems.push(format!(
                            "batch {b}: acknowledged range {ack_first}..={ack_last} holds other records"
                        ));
                    }
                }
            }
            batch.landed = Some(Some(first));
        }
    }

    fn crossed_of(&self, id: &str) -> BTreeSet<(String, i128)> {
        self.crossed
            .iter()
            .filter(|((w, _, _), up)| w == id && **up)
            .map(|((_, p, t), _)| (p.clone(), *t))
            .collect()
    }

    /// Fetches and checks the events written since the last sync.
    async fn sync(
        &mut self,
        client: &mut MilestoneServiceClient<Channel>,
        ledger: &Shared<Ledger>,
        problems: &mut Vec<String>,
    ) {
        match list_events(client, self.head() + 1).await {
            Ok((events, head)) => {
                let mut l = ledger.lock().unwrap();
                self.process(&events, &mut l, problems);
                if self.head() != head {
                    problems.push(format!(
                        "verified up to {}, the server's head is {head}",
                        self.head()
                    ));
                }
            }
            Err(e) => problems.push(e),
        }
    }
}

// ---------------------------------------------------------------------------
// The server and the mount

/// The real binary on a free port, its log in a file; SIGKILLed when
/// dropped.
struct Server {
    child: Child,
    addr: String,
}

/// The last lines of a server's log.
fn tail(log: &Path) -> String {
    let mut text = String::new();
    if let Ok(mut f) = File::open(log) {
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = f.seek(std::io::SeekFrom::Start(len.saturating_sub(4000)));
        let _ = f.read_to_string(&mut text);
    }
    text
}

impl Server {
    /// Starts `tradewatch serve` on `data_dir`, its stdout piped, its log
    /// to `log`.
    fn spawn(data_dir: &Path, log: &Path, skip_syncs: Option<&str>) -> Result<Child, String> {
        let stderr = File::create(log).map_err(|e| e.to_string())?;
        let mut command = Command::new(env!("CARGO_BIN_EXE_tradewatch"));
        command
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--cache-mb",
                "64",
                "--data-dir",
            ])
            .arg(data_dir)
            .env("RUST_LOG", "warn")
            .env("RUST_BACKTRACE", "1")
            .env_remove(SKIP_SYNCS)
            .stdout(Stdio::piped())
            .stderr(stderr);
        if let Some(skip) = skip_syncs {
            command.env(SKIP_SYNCS, skip);
        }
        command
            .spawn()
            .map_err(|e| format!("cannot start the server: {e}"))
    }

    /// Starts it and waits for its "listening" line.
    fn start(data_dir: &Path, log: &Path, skip_syncs: Option<&str>) -> Result<Server, String> {
        let mut child = Server::spawn(data_dir, log, skip_syncs)?;
        let mut line = String::new();
        let _ = BufReader::new(child.stdout.take().unwrap()).read_line(&mut line);
        match line.trim().strip_prefix("tradewatch listening on ") {
            Some(addr) => Ok(Server {
                addr: addr.to_owned(),
                child,
            }),
            None => {
                let status = child.wait();
                Err(format!(
                    "the server did not start on {} ({status:?}); its log:\n{}",
                    data_dir.display(),
                    tail(log)
                ))
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether the power-cut file system can be mounted here: `false` after
/// saying why not, or a panic when `TRADEWATCH_REQUIRE_FUSE` is set.
fn fuse_or_skip(test: &str) -> bool {
    match powercut::can_mount() {
        Ok(()) => true,
        Err(why) if std::env::var_os("TRADEWATCH_REQUIRE_FUSE").is_some() => {
            panic!("{test}: TRADEWATCH_REQUIRE_FUSE is set, but {why}")
        }
        Err(why) => {
            eprintln!("{test} skipped: {why}");
            false
        }
    }
}

// ---------------------------------------------------------------------------
// The suite

struct Clients {
    trade: TradeServiceClient<Channel>,
    milestones: MilestoneServiceClient<Channel>,
}

async fn clients(addr: &str) -> Result<Clients, String> {
    let channel = connect(addr)
        .await
        .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    Ok(Clients {
        trade: TradeServiceClient::new(channel.clone()),
        milestones: MilestoneServiceClient::new(channel),
    })
}

async fn list_records(client: &mut TradeServiceClient<Channel>, page_size: u32) -> Result<Records, String> {
    let mut out = Records::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_records(pb::ListRecordsRequest {
                selector: Some(pb::RecordSelector::default()),
                page_size,
                page_token,
                ..Default::default()
            })
            .await
            .map_err(|s| format!("ListRecords: {s:?}"))?
            .into_inner();
        for r in page.records {
            let key = Key::from_pb(&common::key_of(&r))?;
            let value = amount(r.value.as_ref()).ok_or("a record without a value")?;
            if out.insert(key.clone(), (value, r.revision)).is_some() {
                return Err(format!("ListRecords returned {key} twice"));
            }
        }
        if page.next_page_token.is_empty() {
            return Ok(out);
        }
        page_token = page.next_page_token;
    }
}

async fn get_group(
    client: &mut TradeServiceClient<Channel>,
    name: &str,
) -> Result<Option<Vec<String>>, String> {
    match client
        .get_group(pb::GetGroupRequest {
            name: name.into(),
            ..Default::default()
        })
        .await
    {
        Ok(g) => {
            let mut m = g
                .into_inner()
                .group
                .ok_or_else(|| format!("GetGroup {name}: no group"))?
                .members;
            m.sort();
            Ok(Some(m))
        }
        Err(s) if s.code() == Code::NotFound => Ok(None),
        Err(s) => Err(format!("GetGroup {name}: {s:?}")),
    }
}

/// How a run went.
struct Summary {
    rounds: u64,
    acked_writes: u64,
    /// Unacknowledged batches found whole in the log, and not at all.
    landed: u64,
    lost: u64,
    torn: u64,
    events: u64,
    elapsed: Duration,
}

struct Suite {
    seed: u64,
    rng: Rng,
    skip_syncs: Option<&'static str>,
    ledger: Shared<Ledger>,
    verifier: Verifier,
    subscribers: Vec<Subscriber>,
    problems: Vec<String>,
    /// The mounted file system (dropped, so unmounted, before `tmp`).
    fs: Option<PowerCut>,
    backing: PathBuf,
    mnt: PathBuf,
    tmp: tempfile::TempDir,
    /// What the last cut did, for failure messages, and the operations on
    /// the file system before it.
    last_cut: String,
    last_trace: Vec<String>,
    server_log: PathBuf,
}

impl Suite {
    fn data_dir(&self) -> PathBuf {
        self.mnt.join("data")
    }

    fn fail_if_problems(&mut self, when: &str) -> Result<(), String> {
        if self.problems.is_empty() {
            return Ok(());
        }
        Err(self.failure(when))
    }

    /// The problems found, with the seed, what the cut did, where the file
    /// system's operations before it are kept, and the server's last words.
    fn failure(&self, when: &str) -> String {
        let n = self.problems.len();
        let shown: Vec<&str> = self.problems.iter().take(40).map(String::as_str).collect();
        // The file system's operations before the cut, for the record.
        let trace = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("power-loss-{}.trace", self.seed));
        let saved = std::fs::write(&trace, self.last_trace.join("\n")).map_or_else(
            |e| format!("cannot write {}: {e}", trace.display()),
            |()| trace.display().to_string(),
        );
        format!(
            "power-loss suite, TRADEWATCH_POWER_SEED={}, {when}: {n} problem(s):\n  {}{}\n  (the cut: {}; the \
             operations before it: {saved}; the server's log ends:\n{})",
            self.seed,
            shown.join("\n  "),
            if n > 40 { "\n  …" } else { "" },
            self.last_cut,
            tail(&self.server_log)
        )
    }

    fn mount(&mut self) -> Result<(), String> {
        let fs = PowerCut::mount(&self.backing, &self.mnt).map_err(|e| format!("cannot mount: {e}"))?;
        self.fs = Some(fs);
        Ok(())
    }

    fn start(&mut self, round: u64) -> Result<Server, String> {
        self.server_log = self.tmp.path().join(format!("server-{round}.log"));
        Server::start(&self.data_dir(), &self.server_log, self.skip_syncs)
    }

    /// Groups, a few batches and the watches, on a fresh store.
    async fn setup(&mut self, addr: &str) -> Result<(), String> {
        let mut c = clients(addr).await?;
        for (name, variant) in [(GROUP, VARIANTS[0]), (SPARE, VARIANTS[2])] {
            put_group(&mut c.trade, name, &members(variant))
                .await
                .map_err(|s| format!("PutGroup: {s:?}"))?;
            self.ledger
                .lock()
                .unwrap()
                .groups
                .insert(name, Some(members(variant)));
        }
        let keys = load_keys();
        for _ in 0..4 {
            let batch = distinct_keys(&mut self.rng, &keys, 12);
            send_batch(&mut c.trade, &self.ledger, &mut self.rng, batch, 0)
                .await
                .map_err(|s| format!("PutRecords: {s:?}"))?;
        }
        for spec in original_watches() {
            c.milestones
                .create_watch(spec.to_pb(true))
                .await
                .map_err(|s| format!("CreateWatch: {s:?}"))?;
            self.verifier.originals.push(spec.id.clone());
            self.verifier.specs.insert(spec.id.clone(), spec);
        }
        self.verifier
            .sync(&mut c.milestones, &self.ledger, &mut self.problems)
            .await;
        Ok(())
    }

    async fn connect_subscribers(&mut self, addr: &str, both: bool) {
        let n = if both { 2 } else { 1 };
        for sub in self.subscribers.iter_mut().take(n) {
            connect_subscriber(sub, addr, &self.verifier.log, &mut self.problems).await;
        }
    }

    fn tear(&mut self) -> Tear {
        match self.rng.range(0, 9) {
            0..=3 => Tear::None,
            4..=6 => Tear::KeepPrefix(self.rng.range(0, 128) * 512),
            _ => Tear::Zeros,
        }
    }

    /// Cuts the power: in half the cases right after a sync (the moments
    /// between two syncs: where a sync in the wrong order shows) — one
    /// chosen at random from `syncs`, or one of the next four syncs of a
    /// directory (sled's `blobs` whenever a write made a new one) — else
    /// after a random delay within `delay_ms` (also when that sync does not
    /// come within 3 s).
    /// Sets `cut` first. Returns what the cut did and when, in ms.
    async fn cut(
        &mut self,
        fs: &PowerCut,
        cut: &AtomicBool,
        syncs: std::ops::RangeInclusive<u64>,
        delay_ms: (u64, u64),
    ) -> Result<(String, u64), String> {
        let mut delay = Duration::from_millis(self.rng.range(delay_ms.0, delay_ms.1));
        let tear = self.tear();
        let armed = match self.rng.range(0, 3) {
            0 | 1 => None,
            2 => Some((self.rng.range(*syncs.start(), *syncs.end()), false)),
            _ => Some((self.rng.range(1, 4), true)),
        };
        if armed.is_some() {
            delay = Duration::from_secs(3);
        }
        let syncs_before = fs.syncs();
        if let Some((n, dirs_only)) = armed {
            fs.arm(n, dirs_only, tear);
        }
        let started = Instant::now();
        let report = loop {
            if let Some(report) = fs.armed_cut() {
                cut.store(true, Ordering::SeqCst);
                break report;
            }
            if started.elapsed() >= delay {
                cut.store(true, Ordering::SeqCst);
                match fs.cut(tear) {
                    Err(e) if e.raw_os_error() == Some(libc::EIO) => continue, // armed, just now
                    report => break report,
                }
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        let report = report.map_err(|e| format!("the power cut failed: {e}"))?;
        self.last_trace.push("---- the cut ----".into());
        self.last_trace.extend(report.trace.iter().cloned());
        let armed = match armed {
            Some((n, false)) => format!("armed for sync {n}, "),
            Some((n, true)) => format!("armed for directory sync {n}, "),
            None => String::new(),
        };
        let syncs = fs.syncs() - syncs_before;
        Ok((
            format!("{armed}{syncs} syncs before; {tear:?}: {report}"),
            started.elapsed().as_millis() as u64,
        ))
    }

    /// Mixed load, then the power cut and SIGKILL at once; unmounts.
    /// Returns the delay.
    async fn load_and_cut(&mut self, server: Server) -> Result<u64, String> {
        let fs = self.fs.take().expect("mounted");
        let cut = fs.cut_flag();
        self.last_trace.clear();
        let mut tasks = Vec::new();
        for _ in 0..RECORD_WRITERS {
            tasks.push(tokio::spawn(record_writer(
                server.addr.clone(),
                self.rng.fork(),
                self.ledger.clone(),
                cut.clone(),
            )));
        }
        tasks.push(tokio::spawn(bulk_writer(
            server.addr.clone(),
            self.rng.fork(),
            self.ledger.clone(),
            cut.clone(),
        )));
        tasks.push(tokio::spawn(group_editor(
            server.addr.clone(),
            self.rng.fork(),
            self.ledger.clone(),
            cut.clone(),
        )));
        let report = self.cut(&fs, &cut, 1..=SYNCS_BEFORE_CUT, CUT_AFTER_MS).await?;
        let delay = report.1;
        drop(server); // SIGKILL, and wait
        let report = report.0;
        let blobs = std::fs::read_dir(self.backing.join("data/blobs")).map_or(0, |d| d.count());
        self.last_cut = format!("{report}; {blobs} blob file(s) after it");
        fs.unmount()
            .map_err(|e| format!("cannot unmount after the cut: {e}"))?;
        for task in tasks {
            within(30, "a writer to notice the cut", task).await.unwrap();
        }
        for sub in &mut self.subscribers {
            if let Some(task) = sub.task.take() {
                within(30, "a subscription to break", task).await.unwrap();
                let l = sub.log.lock().unwrap();
                if matches!(l.ended.as_deref(), Some("ended with OK") | None) {
                    self.problems.push(format!(
                        "subscriber {}: a killed server's stream ended with {:?}",
                        sub.name, l.ended
                    ));
                }
            }
        }
        let mut l = self.ledger.lock().unwrap();
        self.problems.append(&mut l.problems);
        Ok(delay)
    }

    /// Mounts the backing directory again, starts the server on it and
    /// cuts the power while it starts (while sled recovers, the store
    /// opens, or just after), SIGKILL with it; unmounts.
    async fn cut_during_start(&mut self, round: u64) -> Result<String, String> {
        self.mount()?;
        let fs = self.fs.take().expect("mounted");
        self.server_log = self.tmp.path().join(format!("server-{round}-start.log"));
        let child = Server::spawn(&self.data_dir(), &self.server_log, self.skip_syncs)?;
        let server = Server {
            child,
            addr: String::new(),
        };
        let cut = fs.cut_flag();
        let (report, at) = self.cut(&fs, &cut, 1..=10, (0, 150)).await?;
        drop(server);
        fs.unmount()
            .map_err(|e| format!("cannot unmount after the cut: {e}"))?;
        Ok(format!("{report}, {at} ms after the start"))
    }

    /// Every invariant, on the restarted server.
    async fn check(&mut self, addr: &str, round: u64) -> Result<(), String> {
        let mut c = clients(addr).await?;

        // The log: gap-free, and what was verified before is unchanged.
        let (log, head) = match list_events(&mut c.milestones, 1).await {
            Ok(l) => l,
            Err(e) => {
                self.problems.push(e);
                return Ok(());
            }
        };
        if head != log.len() as u64 || log.iter().enumerate().any(|(i, e)| e.sequence != i as u64 + 1) {
            self.problems.push(format!(
                "ListEvents from 1 returned {} events, head {head}: not gap-free from 1",
                log.len()
            ));
        }
        let known = self.verifier.log.len();
        if log.len() < known {
            self.problems.push(format!(
                "the power cut lost events: head {head}, {known} were verified before (and acknowledged)"
            ));
            return Ok(());
        }
        if let Some(i) = (0..known).find(|i| log[*i] != self.verifier.log[*i]) {
            self.problems.push(format!(
                "event {} changed across the power cut:\n    was {:?}\n    now {:?}",
                i + 1,
                self.verifier.log[i],
                log[i]
            ));
            return Ok(());
        }
        {
            let mut l = self.ledger.lock().unwrap();
            self.verifier.process(&log[known..], &mut l, &mut self.problems);
            let mut lost_acked = Vec::new();
            for (b, batch) in &mut l.batches {
                if batch.landed.is_none() {
                    if let Some((first, last)) = batch.acked {
                        lost_acked.push(format!("{b} ({first}..={last})"));
                    }
                    batch.landed = Some(None);
                }
            }
            if !lost_acked.is_empty() {
                self.problems.push(format!(
                    "{} acknowledged batch(es) not in the log after the power cut (head {head}): {}",
                    lost_acked.len(),
                    lost_acked.iter().take(10).cloned().collect::<Vec<_>>().join(", ")
                ));
            }
            let start = l.deletes_checked;
            for (key, seq) in &l.deletes[start..] {
                let ok = log.get(*seq as usize - 1).is_some_and(|e| match &e.kind {
                    Some(pb::event::Kind::RecordStored(rs)) => {
                        rs.change() == pb::RecordChange::Deleted
                            && rs.key.as_ref().map(Key::from_pb) == Some(Ok(key.clone()))
                    }
                    _ => false,
                });
                if !ok {
                    self.problems.push(format!(
                        "acknowledged deletion of {key} is not event {seq}: {:?}",
                        log.get(*seq as usize - 1)
                    ));
                }
            }
            l.deletes_checked = l.deletes.len();
        }

        // What subscribers were sent is stored identically.
        for sub in &self.subscribers {
            let l = sub.log.lock().unwrap();
            let upto = (l.next as usize).saturating_sub(1);
            if upto > log.len() {
                self.problems.push(format!(
                    "subscriber {} was sent events up to {upto}; after the power cut the log ends at {head}",
                    sub.name
                ));
                continue;
            }
            let expected: Vec<&pb::Event> = log[..upto].iter().filter(|e| sub.wants(e)).collect();
            let seen: Vec<&pb::Event> = l.seen.iter().collect();
            if seen != expected {
                let first_difference = seen.iter().zip(&expected).position(|(a, b)| a != b);
                self.problems.push(format!(
                    "subscriber {}: saw {} events up to {upto}, the log has {} matching; first difference at index \
                     {first_difference:?}",
                    sub.name,
                    seen.len(),
                    expected.len()
                ));
            }
            self.problems
                .extend(l.problems.iter().map(|p| format!("subscriber {}: {p}", sub.name)));
        }

        // Records: the replayed log, and nothing else.
        let page_size = self.rng.range(20, 300) as u32;
        let records = match list_records(&mut c.trade, page_size).await {
            Ok(r) => r,
            Err(e) => {
                self.problems.push(e);
                return Ok(());
            }
        };
        if records != self.verifier.records {
            let keys: BTreeSet<&Key> = records.keys().chain(self.verifier.records.keys()).collect();
            let diffs: Vec<String> = keys
                .into_iter()
                .filter(|k| records.get(*k) != self.verifier.records.get(*k))
                .take(10)
                .map(|k| {
                    format!(
                        "{k}: listed {:?}; the log says {:?}",
                        records.get(k),
                        self.verifier.records.get(k)
                    )
                })
                .collect();
            self.problems.push(format!(
                "ListRecords differs from the replayed log ({} vs {} records):\n    {}",
                records.len(),
                self.verifier.records.len(),
                diffs.join("\n    ")
            ));
        }

        // Groups: as acknowledged, or as the edit in flight left them.
        let mut groups: Groups = [("CENTRAL_ASIA".to_string(), members(&CENTRAL_ASIA))].into();
        for name in [GROUP, SPARE] {
            let now = match get_group(&mut c.trade, name).await {
                Ok(g) => g,
                Err(e) => {
                    self.problems.push(e);
                    continue;
                }
            };
            let mut l = self.ledger.lock().unwrap();
            let acked = l.groups[name].clone();
            let in_flight = l
                .group_in_flight
                .as_ref()
                .filter(|(n, _)| *n == name)
                .map(|(_, m)| m.clone());
            if now != acked && Some(&now) != in_flight.as_ref() {
                self.problems.push(format!(
                    "group {name} is {now:?}; acknowledged {acked:?}, in flight {in_flight:?}"
                ));
            }
            l.groups.insert(name, now.clone());
            if let Some(m) = now {
                groups.insert(name.to_string(), m);
            }
        }
        self.ledger.lock().unwrap().group_in_flight = None;

        // Aggregates over the records and both rollups: a brute-force sum.
        let questions: [(&[&str], &[&str], bool); 5] = [
            (&["CHN"], &["CENTRAL_ASIA"], false),
            (&[], &[GROUP], true),
            (&["CHN"], &[], false),
            (&["KAZ"], &[], true),
            (&[], &[], false),
        ];
        for (reporters, partners, monthly) in questions {
            let expected = volume_by_year(&records, reporters, partners, monthly, &groups);
            let request = pb::AggregateRequest {
                selector: Some(selector(reporters, partners, monthly)),
                group_by: vec![Dimension::Period.into()],
                granularity: Granularity::Year.into(),
                ..Default::default()
            };
            match c.trade.aggregate(request).await {
                Ok(r) => {
                    let got: BTreeMap<String, i128> = r
                        .into_inner()
                        .rows
                        .iter()
                        .map(|row| (row.period.clone(), amount(row.total.as_ref()).unwrap_or(0)))
                        .collect();
                    if got != expected {
                        self.problems.push(format!(
                            "Aggregate of {reporters:?} with {partners:?} (monthly {monthly}) by year: {got:?}, the \
                             records sum to {expected:?}"
                        ));
                    }
                }
                Err(s) => self.problems.push(format!("Aggregate: {s:?}")),
            }
        }

        // Watches: the originals, each in the state its events say and its
        // values imply; then re-evaluated.
        match c.milestones.list_watches(pb::ListWatchesRequest::default()).await {
            Ok(list) => {
                let ids: Vec<String> = list.into_inner().watches.into_iter().map(|w| w.id).collect();
                if ids != self.verifier.originals {
                    self.problems
                        .push(format!("watches {ids:?}, expected {:?}", self.verifier.originals));
                }
            }
            Err(s) => self.problems.push(format!("ListWatches: {s:?}")),
        }
        for id in &self.verifier.originals {
            let expected = self.verifier.specs[id].crossed(&records, &groups);
            let told = self.verifier.crossed_of(id);
            if told != expected {
                self.problems.push(format!(
                    "watch {id}: its events leave thresholds crossed at {told:?}; the records say {expected:?}"
                ));
            }
        }
        self.probe_watches(&mut c, round, &records, &groups).await;
        Ok(())
    }

    /// Each watch gets a twin created with backfill now; then probe writes
    /// must move the watch and its twin identically.
    async fn probe_watches(&mut self, c: &mut Clients, round: u64, records: &Records, groups: &Groups) {
        let originals: Vec<WatchSpec> = self
            .verifier
            .originals
            .iter()
            .map(|id| self.verifier.specs[id].clone())
            .collect();
        let twin_id = |id: &str| format!("{id}-r{round}");
        for o in &originals {
            let twin = WatchSpec {
                id: twin_id(&o.id),
                ..o.clone()
            };
            if let Err(s) = c.milestones.create_watch(twin.to_pb(true)).await {
                self.problems.push(format!("CreateWatch {}: {s:?}", twin.id));
                return;
            }
            self.verifier.specs.insert(twin.id.clone(), twin);
        }
        self.verifier
            .sync(&mut c.milestones, &self.ledger, &mut self.problems)
            .await;
        for o in &originals {
            let (mine, twins) = (
                self.verifier.crossed_of(&o.id),
                self.verifier.crossed_of(&twin_id(&o.id)),
            );
            if mine != twins {
                self.problems.push(format!(
                    "watch {}: thresholds crossed at {mine:?}, re-evaluated from the records at {twins:?}",
                    o.id
                ));
            }
        }

        let mut writes: Vec<(u64, &str, bool)> = Vec::new();
        for &period in ANNUAL_PROBES.iter().chain(&MONTHLY_PROBES) {
            let key = Key::new("CHN", PROBE_PARTNER, Flow::Turnover, period);
            match c
                .trade
                .put_records(common::put(vec![key.record(PROBE, "probe")]))
                .await
            {
                Ok(r) => writes.push((r.into_inner().first_sequence, period, true)),
                Err(s) => {
                    self.problems.push(format!("probe {key}: {s:?}"));
                    return;
                }
            }
            match c.trade.delete_record(common::delete(key.to_pb())).await {
                Ok(r) => writes.push((r.into_inner().sequence, period, false)),
                Err(s) => {
                    self.problems.push(format!("deleting probe {key}: {s:?}"));
                    return;
                }
            }
        }
        self.verifier
            .sync(&mut c.milestones, &self.ledger, &mut self.problems)
            .await;
        let head = self.verifier.head();
        for (n, (start, period, put)) in writes.iter().enumerate() {
            let end = writes.get(n + 1).map_or(head, |w| w.0 - 1);
            let Some(events) = self.verifier.log.get(*start as usize - 1..end as usize) else {
                self.problems
                    .push(format!("probe write {start}..={end} is not in the log"));
                continue;
            };
            let monthly = period.len() > 4;
            for o in originals.iter().filter(|o| o.monthly == monthly) {
                let of = |id: &str| -> Vec<pb::event::Kind> {
                    events
                        .iter()
                        .filter(|e| e.watch_id() == Some(id))
                        .filter_map(anonymous)
                        .collect()
                };
                let (mine, twins) = (of(&o.id), of(&twin_id(&o.id)));
                let what = if *put { "probe in" } else { "probe deleted from" };
                if mine != twins {
                    self.problems.push(format!(
                        "watch {}, {what} {period} (events {start}..={end}): the watch says\n    {mine:?}\n  its \
                         re-evaluated twin says\n    {twins:?}",
                        o.id
                    ));
                }
                let value = o.series(records, groups).get(&period[..4]).copied();
                let probed = Some(value.unwrap_or(0) + PROBE);
                let (dir, before, after) = if *put {
                    (pb::Direction::Up, value, probed)
                } else {
                    (pb::Direction::Down, probed, value)
                };
                let ceiling = mine.iter().find_map(|k| match k {
                    pb::event::Kind::ThresholdCrossed(c) if amount(c.threshold.as_ref()) == Some(CEILING) => {
                        Some(c)
                    }
                    _ => None,
                });
                match ceiling {
                    Some(c)
                        if c.direction() == dir
                            && amount(c.value_before.as_ref()) == before
                            && amount(c.value_after.as_ref()) == after => {}
                    other => self.problems.push(format!(
                        "watch {}, {what} {period}: expected a {dir:?} crossing of the ceiling from {} to {}, got \
                         {other:?}",
                        o.id,
                        show(before),
                        show(after)
                    )),
                }
            }
        }
        for o in &originals {
            if let Err(s) = c
                .milestones
                .delete_watch(common::delete_watch(&twin_id(&o.id)))
                .await
            {
                self.problems
                    .push(format!("DeleteWatch {}: {s:?}", twin_id(&o.id)));
            }
        }
        self.verifier
            .sync(&mut c.milestones, &self.ledger, &mut self.problems)
            .await;
    }
}

async fn within<T>(secs: u64, what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), f)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

#[allow(clippy::disallowed_methods)] // the seed from the clock; no write time
fn seed() -> u64 {
    std::env::var("TRADEWATCH_POWER_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        })
}

/// Runs `rounds` rounds; `Err` is the first round's problems.
async fn run(rounds: u64, skip_syncs: Option<&'static str>) -> Result<Summary, String> {
    let seed = seed();
    eprintln!(
        "power-loss suite: {rounds} rounds, TRADEWATCH_POWER_SEED={seed}, extra syncs skipped: {skip_syncs:?}"
    );
    let began = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let (backing, mnt) = (tmp.path().join("backing"), tmp.path().join("mnt"));
    std::fs::create_dir(&backing).unwrap();
    std::fs::create_dir(&mnt).unwrap();
    let mut suite = Suite {
        seed,
        rng: Rng(seed),
        skip_syncs,
        ledger: Arc::new(Mutex::new(Ledger::default())),
        verifier: Verifier {
            log: Vec::new(),
            records: Records::new(),
            crossed: BTreeMap::new(),
            specs: BTreeMap::new(),
            originals: Vec::new(),
        },
        subscribers: vec![
            Subscriber::new("all", vec![]),
            Subscriber::new(
                "milestones",
                vec![pb::EventKind::ThresholdCrossed, pb::EventKind::RecordHigh],
            ),
        ],
        problems: Vec::new(),
        fs: None,
        backing,
        mnt,
        tmp,
        last_cut: "none yet".into(),
        last_trace: Vec::new(),
        server_log: PathBuf::new(),
    };
    suite.mount()?;
    let mut server = suite.start(0)?;
    within(60, "setup", suite.setup(&server.addr)).await?;
    suite.fail_if_problems("setup")?;
    let mut summary = Summary {
        rounds,
        acked_writes: 0,
        landed: 0,
        lost: 0,
        torn: 0,
        events: 0,
        elapsed: Duration::ZERO,
    };

    for round in 1..=rounds {
        let round_began = Instant::now();
        let (head_before, writes_before, batches_before) = {
            let l = suite.ledger.lock().unwrap();
            (suite.verifier.head(), l.acked_writes, l.next_batch)
        };
        let both = round == 1 || suite.rng.chance(50);
        within(60, "subscribers", suite.connect_subscribers(&server.addr, both)).await;
        suite.fail_if_problems(&format!("round {round}, resuming subscribers"))?;

        let delay = within(60, "load and cut", suite.load_and_cut(server)).await?;
        if suite.rng.chance(25) {
            let during = within(60, "a cut during the start", suite.cut_during_start(round)).await?;
            suite.last_cut = format!("{}; then during the start: {during}", suite.last_cut);
        }
        suite.mount()?;
        server = match suite.start(round) {
            Ok(server) => server,
            Err(e) => {
                suite.problems.push(e);
                return Err(suite.failure(&format!("round {round}, restarting after the cut")));
            }
        };
        let addr = server.addr.clone();
        within(300, "checks", suite.check(&addr, round)).await?;
        suite.fail_if_problems(&format!("round {round} (power cut after {delay} ms)"))?;

        let l = suite.ledger.lock().unwrap();
        let (mut landed, mut lost) = (0, 0);
        for b in l.batches.range(batches_before + 1..).map(|(_, b)| b) {
            if b.acked.is_none() {
                landed += u64::from(matches!(b.landed, Some(Some(_))));
                lost += u64::from(b.landed == Some(None));
            }
        }
        summary.landed += landed;
        summary.lost += lost;
        summary.torn += u64::from(suite.last_cut.contains("torn"));
        eprintln!(
            "round {round}: cut after {delay} ms ({}); {} writes acknowledged; unacknowledged batches: {landed} \
             landed, {lost} lost; events {head_before} -> {}; {:.1?}",
            suite.last_cut,
            l.acked_writes - writes_before,
            suite.verifier.head(),
            round_began.elapsed()
        );
    }
    within(60, "subscribers", suite.connect_subscribers(&server.addr, true)).await;
    suite.fail_if_problems("resuming subscribers after the last round")?;
    drop(server);
    summary.acked_writes = suite.ledger.lock().unwrap().acked_writes;
    summary.events = suite.verifier.head();
    summary.elapsed = began.elapsed();
    eprintln!(
        "power-loss suite: {rounds} rounds passed in {:.1?} (TRADEWATCH_POWER_SEED={seed}; {} writes acknowledged; \
         unacknowledged batches {} landed, {} lost; {} cuts tore a write; {} events)",
        summary.elapsed, summary.acked_writes, summary.landed, summary.lost, summary.torn, summary.events
    );
    Ok(summary)
}

/// The short form, part of `cargo test`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_loss_suite() {
    if !fuse_or_skip("power_loss_suite") {
        return;
    }
    if let Err(e) = run(SHORT_ROUNDS, None).await {
        panic!("{e}");
    }
}

/// The long form: `TRADEWATCH_POWER_ROUNDS=100 cargo test --release --test
/// power_loss -- --ignored` (100 rounds when the variable is not set).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long: run with --ignored, rounds from TRADEWATCH_POWER_ROUNDS"]
async fn power_loss_suite_long() {
    if !fuse_or_skip("power_loss_suite_long") {
        return;
    }
    let rounds = std::env::var("TRADEWATCH_POWER_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(LONG_ROUNDS);
    if let Err(e) = run(rounds, None).await {
        panic!("{e}");
    }
}

/// The harness catches real faults: with the server's syncs after each
/// group of writes turned off (sled's flush alone, which ends with
/// `sync_file_range`), acknowledged writes are lost within a few rounds —
/// or the store cannot even be opened again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_loss_suite_catches_writes_acknowledged_before_they_are_synced() {
    if !fuse_or_skip("power_loss_suite_catches_writes_acknowledged_before_they_are_synced") {
        return;
    }
    match run(5, Some("commit")).await {
        Ok(s) => panic!(
            "{} rounds without the syncs passed: the harness cannot tell synced from unsynced writes",
            s.rounds
        ),
        Err(e) => {
            eprintln!("found, as it should:\n{e}");
            // Acknowledged writes missing, or (as often) a store sled
            // cannot open again: it panics recovering it.
            let lost = ["acknowledged batch", "lost events", "subscriber", "did not start"];
            assert!(lost.iter().any(|l| e.contains(l)), "{e}");
        }
    }
}
