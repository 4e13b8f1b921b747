//! Crash-consistency suite: many rounds of SIGKILL at a random moment under
//! mixed load, each followed by a restart and a check of every invariant
//! DESIGN.md §4–§6 promise across a crash.
//!
//! One data dir serves every round. Setup stores a few batches, two custom
//! partner groups and five watches (thresholds, record high, a rank rule and
//! mostly growth thresholds, created with backfill) over different read
//! paths: records (CHN ↔ CENTRAL_ASIA, and CHN and KAZ ↔ a custom group that
//! is edited under load, monthly data by year), the per-reporter rollup (CHN),
//! the world rollup, and CHN's monthly data by month with year to date. Each round then:
//!
//! 1. (re)connects two subscribers from their checkpoints — one for every
//!    event, one for milestones only (in about half the rounds) — and checks
//!    that the resumed stream replays exactly what followed the checkpoint,
//!    then `CaughtUp` at the head;
//! 2. runs three record writers (batches of 1–6 records over a key space of
//!    189 keys, so most writes are revisions; deletions) and a group editor
//!    (the watched group redefined, a second group created and deleted), and
//!    SIGKILLs the real binary 50–500 ms in;
//! 3. restarts it on the same dir and checks:
//!    - **events**: `ListEvents` from 1 is gap-free and strictly increasing,
//!      and every event verified in an earlier round is still there,
//!      identical; everything each subscriber received is identical to the
//!      stored event of that sequence (the full-stream subscriber saw a
//!      gap-free prefix; the filtered one exactly the matching events up to
//!      its checkpoint); no stream ended with OK;
//!    - **records**: replaying the `RecordStored` events (each one a valid
//!      transition: created at revision 1, revised with the old value and
//!      revision + 1, deleted with the old value) gives exactly what
//!      `ListRecords` returns, value and revision; every acknowledged batch
//!      is in the log, all its records in request order at the sequences
//!      its response named; every unacknowledged batch is there in full or
//!      not at all, and no batch is there twice; every acknowledged deletion
//!      is the event at its sequence;
//!    - **groups**: each custom group is as last acknowledged, or as the
//!      edit in flight at the kill left it;
//!    - **aggregates**: nine or ten questions (by period, partner, reporter,
//!      flow; year and month granularity; every read path; WLD named and
//!      not) equal a brute-force sum over the listed records, row by row
//!      (total, record count, months covered) and in total;
//!    - **watch states**: for every watch, the threshold states its own
//!      events imply equal the states its current values imply, and every
//!      milestone value (value after, previous holder's value) equals the
//!      series recomputed from the replayed records at that point of the log
//!      (for the watches that do not name the edited group); then each watch
//!      gets a twin created with backfill now (a re-evaluation from the
//!      records), and probe writes (a huge record in each period, then its
//!      deletion) must produce identical milestones for the watch and its
//!      twin — which exposes the persisted values, threshold states and
//!      record holder — with values equal to the brute-force series.
//!
//! The RNG is seeded; the seed is printed and `TRADEWATCH_CRASH_SEED`
//! replays the same choices (the interleaving of the writers and the
//! moment the kill lands within a write still vary).
//!
//! `cargo test --test crash_suite` runs the short form (5 rounds);
//! `TRADEWATCH_CRASH_ROUNDS=100 cargo test --release --test crash_suite --
//! --ignored` the long form. See docs/crash-suite.md.
#![allow(clippy::disallowed_methods)] // jitter from the clock; no write time

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use common::Binary;
use tonic::Code;
use tonic::transport::Channel;
use tradewatch::pb::{
    self, Dimension, Flow, Granularity, milestone_service_client::MilestoneServiceClient,
    subscribe_response::Message, trade_service_client::TradeServiceClient,
};

const SHORT_ROUNDS: u64 = 5;
const LONG_ROUNDS: u64 = 100;
const RECORD_WRITERS: usize = 3;
/// The kill lands this many milliseconds after the writers start.
const KILL_AFTER_MS: (u64, u64) = (50, 500);

const NANOS: i128 = 1_000_000_000;
const UNITS: i128 = NANOS;
const MILLION: i128 = 1_000_000 * UNITS;

const REPORTERS: [&str; 2] = ["CHN", "KAZ"];
const PARTNERS: [&str; 5] = ["KAZ", "KGZ", "UZB", "DEU", "WLD"];
const FLOWS: [Flow; 3] = [Flow::Export, Flow::Import, Flow::Turnover];
const PERIODS: [&str; 7] = ["2022", "2023", "2024", "2025", "2024-01", "2024-02", "2025-01"];

/// The group a watch names, redefined under load (always with the probe
/// partner in it).
const GROUP: &str = "CRASH_PARTNERS";
/// A group no watch names, created and deleted under load.
const SPARE: &str = "CRASH_SPARE";
const VARIANTS: [&[&str]; 4] = [
    &["KAZ", "TKM"],
    &["KAZ", "KGZ", "TKM"],
    &["DEU", "TKM", "UZB"],
    &["TKM"],
];
const CENTRAL_ASIA: [&str; 5] = ["KAZ", "KGZ", "TJK", "TKM", "UZB"];

/// Probe records are CHN ↔ TKM turnover: a partner every watch selects and
/// the load never writes.
const PROBE_PARTNER: &str = "TKM";
const ANNUAL_PROBES: [&str; 4] = ["2022", "2023", "2024", "2025"];
const MONTHLY_PROBES: [&str; 2] = ["2024-12", "2025-12"];
/// A threshold of every watch that only a probe reaches: its crossings
/// carry the persisted value of the probed period.
const CEILING: i128 = 1_000_000 * MILLION;
const PROBE: i128 = 2 * CEILING;

// ---------------------------------------------------------------------------
// Randomness

/// splitmix64: small, seedable, good enough.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform enough in `lo..=hi`.
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
        Rng::new(self.next())
    }
}

// ---------------------------------------------------------------------------
// Keys, values, money

/// A natural key of the suite: commodity TOTAL, currency USD.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    reporter: String,
    partner: String,
    flow: i32,
    period: String,
}

impl Key {
    fn new(reporter: &str, partner: &str, flow: Flow, period: &str) -> Key {
        Key {
            reporter: reporter.into(),
            partner: partner.into(),
            flow: flow.into(),
            period: period.into(),
        }
    }

    fn probe(period: &str) -> Key {
        Key::new("CHN", PROBE_PARTNER, Flow::Turnover, period)
    }

    fn from_pb(k: &pb::RecordKey) -> Result<Key, String> {
        if k.commodity != "TOTAL" || k.currency != "USD" {
            return Err(format!("a key the suite never writes: {k:?}"));
        }
        Ok(Key {
            reporter: k.reporter.clone(),
            partner: k.partner.clone(),
            flow: k.flow,
            period: k.period.clone(),
        })
    }

    fn to_pb(&self) -> pb::RecordKey {
        pb::RecordKey {
            reporter: self.reporter.clone(),
            partner: self.partner.clone(),
            flow: self.flow,
            period: self.period.clone(),
            commodity: "TOTAL".into(),
            currency: "USD".into(),
        }
    }

    fn monthly(&self) -> bool {
        self.period.len() > 4
    }

    fn record(&self, value: i128, source: &str) -> pb::TradeRecord {
        pb::TradeRecord {
            reporter: self.reporter.clone(),
            partner: self.partner.clone(),
            flow: self.flow,
            period: self.period.clone(),
            commodity: "TOTAL".into(),
            value: Some(money(value)),
            source: source.into(),
            ..Default::default()
        }
    }
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let flow = Flow::try_from(self.flow).map_or("?", |f| f.as_str_name());
        write!(f, "{}>{} {} {}", self.reporter, self.partner, flow, self.period)
    }
}

/// The keys the load writes: 2 reporters × 5 partners (no self-trade) × 3
/// flows × 7 periods = 189.
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

/// The value of record `i` of batch `b`: random whole units, and nanos that
/// name the batch and the record, so that every value ever written is
/// distinct and tells who wrote it.
fn batch_value(units: i128, b: u64, i: usize) -> i128 {
    assert!(i < 16 && b < 60_000_000);
    units * UNITS + i128::from(b) * 16 + i as i128
}

fn batch_of(value: i128) -> Option<(u64, usize)> {
    let n = value % NANOS;
    (n != 0).then_some(((n / 16) as u64, (n % 16) as usize))
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

// ---------------------------------------------------------------------------
// What the clients did: the ledger

/// One batch as sent.
struct Batch {
    records: Vec<(Key, i128)>,
    /// The sequence range of the response, when it was acknowledged.
    acked: Option<(u64, u64)>,
    /// Once resolved from the log: `Some(first sequence)` when it landed,
    /// `None` when it did not.
    landed: Option<Option<u64>>,
}

#[derive(Default)]
struct Ledger {
    next_batch: u64,
    batches: BTreeMap<u64, Batch>,
    /// Acknowledged deletions and their sequence; `deletes_checked` of them
    /// are verified.
    deletes: Vec<(Key, u64)>,
    deletes_checked: usize,
    /// Custom groups as last acknowledged (None: absent).
    groups: BTreeMap<&'static str, Option<Vec<String>>>,
    /// The group edit in flight, if one was at the kill.
    group_in_flight: Option<(&'static str, Option<Vec<String>>)>,
    /// Requests that failed before the kill.
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

/// Registers and sends one batch over distinct keys.
async fn send_batch(
    client: &mut TradeServiceClient<Channel>,
    ledger: &Shared<Ledger>,
    rng: &mut Rng,
    keys: Vec<Key>,
) -> Result<pb::PutRecordsResponse, tonic::Status> {
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
            .map(|(k, v)| k.record(*v, &format!("crash b{b}")))
            .collect(),
    );
    let response = client.put_records(request).await?.into_inner();
    let mut l = ledger.lock().unwrap();
    if response.results.len() != records.len()
        || response
            .results
            .iter()
            .any(|r| r.outcome() == pb::WriteOutcome::Unchanged)
        || response.first_sequence == 0
        || response.last_sequence < response.first_sequence + records.len() as u64 - 1
    {
        l.problems.push(format!("batch {b}: odd response {response:?}"));
    }
    l.batches.get_mut(&b).unwrap().acked = Some((response.first_sequence, response.last_sequence));
    l.acked_writes += 1;
    Ok(response)
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
async fn record_writer(addr: String, mut rng: Rng, ledger: Shared<Ledger>, killed: Arc<AtomicBool>) {
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
            send_batch(&mut client, &ledger, &mut rng, batch)
                .await
                .err()
                .map(|s| format!("PutRecords: {s:?}"))
        };
        if let Some(failure) = failed {
            if !killed.load(Ordering::SeqCst) {
                ledger
                    .lock()
                    .unwrap()
                    .problems
                    .push(format!("before the kill: {failure}"));
            }
            return;
        }
    }
}

fn members(variant: &[&str]) -> Vec<String> {
    variant.iter().map(|s| s.to_string()).collect()
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
            description: "crash suite".into(),
            updated_at: None,
        }))
        .await
        .map(drop)
}

/// Redefines the watched group and creates or deletes the spare one, a
/// few times a second, until the server is gone.
async fn group_editor(addr: String, mut rng: Rng, ledger: Shared<Ledger>, killed: Arc<AtomicBool>) {
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
                if !killed.load(Ordering::SeqCst) {
                    l.problems
                        .push(format!("before the kill: group edit {op:?}: {s:?}"));
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

/// Connects a subscriber from its checkpoint and checks the resumed stream:
/// a Progress naming the checkpoint first, then exactly the stored events
/// after it that match, then CaughtUp at the head.
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
    loop {
        if sub.log.lock().unwrap().caught_up.is_some() {
            break;
        }
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

/// What is wrong with a growth crossing's or a year-to-date milestone's
/// values, against the series the records imply at that point of the log
/// (a rank change is checked through the twins).
fn analyst_milestone_problem(kind: &pb::event::Kind, series: &BTreeMap<String, i128>) -> Option<String> {
    match kind {
        pb::event::Kind::GrowthCrossed(g) => {
            let said = (
                amount(g.value_after.as_ref()),
                amount(g.previous_value_after.as_ref()),
            );
            let now = (
                series.get(&g.period).copied(),
                series.get(&g.previous_period).copied(),
            );
            let defined = matches!(now, (Some(_), Some(p)) if p > 0);
            (said != now && (defined || said != (None, None))).then(|| {
                format!(
                    "growth crossing {}: values {said:?}, the records say {now:?}",
                    g.period
                )
            })
        }
        pb::event::Kind::YearToDate(y) => {
            let year = y.year.to_string();
            let so_far: Option<i128> = series
                .iter()
                .filter(|(p, _)| p.starts_with(&year))
                .map(|(_, v)| *v)
                .reduce(|a, b| a + b);
            let said = amount(y.value.as_ref());
            (said != so_far).then(|| format!("year to date {year}: {said:?}, the records say {so_far:?}"))
        }
        _ => None,
    }
}

/// A milestone without its watch id, to compare a watch with its twin.
fn anonymous(e: &pb::Event) -> Option<pb::event::Kind> {
    let mut kind = e.kind.clone()?;
    kind.watch_id_mut()?.clear();
    Some(kind)
}

/// Every stored event from `from` on, through ListEvents pages, and the head.
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
            return Err(format!(
                "ListEvents from {next} does not move forward: {}",
                page.next_sequence
            ));
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
// The brute-force model of aggregates and series

type Records = BTreeMap<Key, (i128, i64)>;
type Groups = BTreeMap<String, Vec<String>>;

struct Question {
    reporters: Vec<&'static str>,
    partners: Vec<&'static str>,
    flows: Vec<Flow>,
    monthly: bool,
    group_by: Vec<Dimension>,
    granularity: Granularity,
}

impl Question {
    fn by(&self, d: Dimension) -> bool {
        self.group_by.contains(&d)
    }

    fn to_pb(&self) -> pb::AggregateRequest {
        pb::AggregateRequest {
            selector: Some(pb::RecordSelector {
                reporters: self.reporters.iter().map(|s| s.to_string()).collect(),
                partners: self.partners.iter().map(|s| s.to_string()).collect(),
                flows: self.flows.iter().map(|f| i32::from(*f)).collect(),
                frequency: if self.monthly {
                    pb::Frequency::Monthly
                } else {
                    pb::Frequency::Annual
                }
                .into(),
                ..Default::default()
            }),
            group_by: self.group_by.iter().map(|d| i32::from(*d)).collect(),
            granularity: self.granularity.into(),
            ..Default::default()
        }
    }
}

impl std::fmt::Debug for Question {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let flows: Vec<&str> = self.flows.iter().map(|f| f.as_str_name()).collect();
        let by: Vec<&str> = self.group_by.iter().map(|d| d.as_str_name()).collect();
        write!(
            f,
            "Aggregate(reporters {:?}, partners {:?}, flows {flows:?}, {}, by {by:?}, {})",
            self.reporters,
            self.partners,
            if self.monthly { "monthly" } else { "annual" },
            self.granularity.as_str_name()
        )
    }
}

fn questions(spare_exists: bool) -> Vec<Question> {
    use Dimension::{Flow as ByFlow, Partner, Period, Reporter};
    let q = |reporters: &[&'static str],
             partners: &[&'static str],
             flows: &[Flow],
             monthly: bool,
             group_by: &[Dimension],
             granularity: Granularity| Question {
        reporters: reporters.to_vec(),
        partners: partners.to_vec(),
        flows: flows.to_vec(),
        monthly,
        group_by: group_by.to_vec(),
        granularity,
    };
    let all = [Flow::Export, Flow::Import, Flow::Turnover];
    let mut out = vec![
        // The seed question's shape: records path, by year.
        q(
            &["CHN"],
            &["CENTRAL_ASIA"],
            &[],
            false,
            &[Period],
            Granularity::Year,
        ),
        // The edited group: records path, monthly data by year (year to date).
        q(&[], &[GROUP], &[], true, &[Partner, Period], Granularity::Year),
        // Per-reporter rollup, by month.
        q(
            &["CHN", "KAZ"],
            &[],
            &[],
            true,
            &[Reporter, Period],
            Granularity::Month,
        ),
        // World rollup, trade volume and named flows.
        q(&[], &[], &[], false, &[Period], Granularity::Year),
        q(&[], &[], &all, false, &[ByFlow, Period], Granularity::Year),
        q(
            &["KAZ"],
            &[],
            &[Flow::Export, Flow::Import],
            true,
            &[ByFlow],
            Granularity::Unspecified,
        ),
        // WLD named.
        q(&[], &["WLD"], &[], false, &[Reporter, Period], Granularity::Year),
        // Every partner but WLD, one row each.
        q(&[], &[], &[], true, &[Partner], Granularity::Unspecified),
        // A grand total only.
        q(
            &["CHN"],
            &[GROUP, "DEU"],
            &[Flow::Turnover],
            false,
            &[],
            Granularity::Unspecified,
        ),
    ];
    if spare_exists {
        out.push(q(
            &[],
            &[SPARE],
            &[],
            false,
            &[Reporter, Period],
            Granularity::Year,
        ));
    }
    out
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct RowKey {
    reporter: String,
    partner: String,
    flow: i32,
    period: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct RowValue {
    total: i128,
    count: u64,
    months: Vec<String>,
}

#[derive(Debug, PartialEq, Eq)]
struct Answer {
    rows: BTreeMap<RowKey, RowValue>,
    grand_total: i128,
    count: u64,
}

fn expand(names: &[&str], groups: &Groups) -> BTreeSet<String> {
    names
        .iter()
        .flat_map(|n| groups.get(*n).cloned().unwrap_or_else(|| vec![n.to_string()]))
        .collect()
}

/// The answer by the rules of DESIGN.md §1/§3: currency USD, TOTAL, trade
/// volume (turnover, else exports plus imports) when no flows are named,
/// WLD left out unless named.
fn model_answer(records: &Records, q: &Question, groups: &Groups) -> Answer {
    let reporters = (!q.reporters.is_empty()).then(|| expand(&q.reporters, groups));
    let partners = (!q.partners.is_empty()).then(|| expand(&q.partners, groups));
    let picked = records.iter().filter(|(k, _)| {
        k.monthly() == q.monthly
            && reporters.as_ref().is_none_or(|r| r.contains(&k.reporter))
            && match &partners {
                Some(p) => p.contains(&k.partner),
                None => k.partner != "WLD",
            }
    });
    // (reporter, partner, period, flow or 0 for volume) → (sum, count)
    let mut facts: BTreeMap<(&str, &str, &str, i32), (i128, u64)> = BTreeMap::new();
    if q.flows.is_empty() {
        let mut volumes: BTreeMap<(&str, &str, &str), [Option<i128>; 3]> = BTreeMap::new();
        for (k, (v, _)) in picked {
            let slot = match Flow::try_from(k.flow) {
                Ok(Flow::Turnover) => 0,
                Ok(Flow::Export) => 1,
                Ok(Flow::Import) => 2,
                _ => continue,
            };
            volumes
                .entry((k.reporter.as_str(), k.partner.as_str(), k.period.as_str()))
                .or_default()[slot] = Some(*v);
        }
        for ((r, p, period), [t, x, m]) in volumes {
            let fact = match t {
                Some(t) => (t, 1),
                None => (
                    x.unwrap_or(0) + m.unwrap_or(0),
                    u64::from(x.is_some()) + u64::from(m.is_some()),
                ),
            };
            facts.insert((r, p, period, 0), fact);
        }
    } else {
        for (k, (v, _)) in picked {
            if q.flows.iter().any(|f| i32::from(*f) == k.flow) {
                facts.insert(
                    (k.reporter.as_str(), k.partner.as_str(), k.period.as_str(), k.flow),
                    (*v, 1),
                );
            }
        }
    }
    let mut rows: BTreeMap<RowKey, RowValue> = BTreeMap::new();
    for ((r, p, period, flow), (nanos, count)) in facts {
        let label = match (q.monthly, q.granularity) {
            (true, Granularity::Year) | (false, _) => &period[..4],
            _ => period,
        };
        let row = rows
            .entry(RowKey {
                reporter: when(q.by(Dimension::Reporter), r),
                partner: when(q.by(Dimension::Partner), p),
                flow: if q.by(Dimension::Flow) { flow } else { 0 },
                period: when(q.by(Dimension::Period), label),
            })
            .or_default();
        row.total += nanos;
        row.count += count;
        if q.monthly && !row.months.iter().any(|m| m == period) {
            row.months.push(period.into());
            row.months.sort();
        }
    }
    Answer {
        grand_total: rows.values().map(|r| r.total).sum(),
        count: rows.values().map(|r| r.count).sum(),
        rows,
    }
}

/// The rows (and totals) in which two answers differ.
fn answer_diff(got: &Answer, expected: &Answer) -> Vec<String> {
    let mut out = Vec::new();
    if (got.grand_total, got.count) != (expected.grand_total, expected.count) {
        out.push(format!(
            "grand total {} of {} records, expected {} of {}",
            show(Some(got.grand_total)),
            got.count,
            show(Some(expected.grand_total)),
            expected.count
        ));
    }
    let keys: BTreeSet<&RowKey> = got.rows.keys().chain(expected.rows.keys()).collect();
    for k in keys {
        let (g, e) = (got.rows.get(k), expected.rows.get(k));
        if g != e {
            out.push(format!("row {k:?}: got {g:?}, expected {e:?}"));
        }
    }
    out
}

/// `value` when grouped by its dimension, else empty.
fn when(grouped: bool, value: &str) -> String {
    if grouped { value.into() } else { String::new() }
}

fn server_answer(response: &pb::AggregateResponse) -> Result<Answer, String> {
    if response.currency != "USD" {
        return Err(format!("answer in {:?}", response.currency));
    }
    let mut rows = BTreeMap::new();
    for r in &response.rows {
        let key = RowKey {
            reporter: r.reporter.clone(),
            partner: r.partner.clone(),
            flow: r.flow,
            period: r.period.clone(),
        };
        let value = RowValue {
            total: amount(r.total.as_ref()).ok_or("a row without a total")?,
            count: r.record_count,
            months: r.months_covered.clone(),
        };
        if rows.insert(key.clone(), value).is_some() {
            return Err(format!("two rows for {key:?}"));
        }
    }
    Ok(Answer {
        rows,
        grand_total: amount(response.grand_total.as_ref()).unwrap_or(0),
        count: response.record_count,
    })
}

// ---------------------------------------------------------------------------
// Watches

#[derive(Clone, Debug)]
struct WatchSpec {
    id: String,
    name: &'static str,
    reporters: Vec<&'static str>,
    partners: Vec<&'static str>,
    monthly: bool,
    /// Monthly data by month (else by year).
    by_month: bool,
    thresholds: Vec<i128>,
    /// The analysts' rules: rank, growth thresholds in percent, year to date.
    rank: Option<(pb::RankBy, u32)>,
    growth: Vec<f64>,
    year_to_date: bool,
}

impl WatchSpec {
    fn granularity(&self) -> Granularity {
        if self.by_month {
            Granularity::Month
        } else {
            Granularity::Year
        }
    }

    fn uses_group(&self) -> bool {
        self.partners.contains(&GROUP)
    }

    fn question(&self) -> Question {
        Question {
            reporters: self.reporters.clone(),
            partners: self.partners.clone(),
            flows: vec![],
            monthly: self.monthly,
            group_by: vec![Dimension::Period],
            granularity: self.granularity(),
        }
    }

    fn to_pb(&self, backfill: bool) -> pb::CreateWatchRequest {
        pb::CreateWatchRequest {
            watch: Some(pb::Watch {
                id: self.id.clone(),
                name: self.name.into(),
                selector: Some(self.question().to_pb().selector.unwrap()),
                granularity: self.granularity().into(),
                thresholds: self.thresholds.iter().map(|t| money(*t)).collect(),
                record_high: true,
                rank: self.rank.map(|(by, top)| pb::RankRule { by: by.into(), top }),
                growth_thresholds_percent: self.growth.clone(),
                year_to_date: self.year_to_date,
                ..Default::default()
            }),
            backfill,
            ..Default::default()
        }
    }

    /// The value of each period, as the records say.
    fn series(&self, records: &Records, groups: &Groups) -> BTreeMap<String, i128> {
        model_answer(records, &self.question(), groups)
            .rows
            .into_iter()
            .map(|(k, v)| (k.period, v.total))
            .collect()
    }

    /// The (period, threshold) pairs at or above their threshold.
    fn crossed(&self, records: &Records, groups: &Groups) -> BTreeSet<(String, i128)> {
        let mut out = BTreeSet::new();
        for (period, v) in self.series(records, groups) {
            for t in &self.thresholds {
                if v >= *t {
                    out.insert((period.clone(), *t));
                }
            }
        }
        out
    }
}

fn original_watches() -> Vec<WatchSpec> {
    let m = |units: &[f64]| -> Vec<i128> {
        units
            .iter()
            .map(|u| (u * 1_000_000.0) as i128 * UNITS)
            .chain([CEILING])
            .collect()
    };
    vec![
        WatchSpec {
            id: "ca".into(),
            name: "China–Central Asia trade",
            reporters: vec!["CHN"],
            partners: vec!["CENTRAL_ASIA"],
            monthly: false,
            by_month: false,
            thresholds: m(&[1.0, 2.0, 2.5, 3.0]),
            rank: Some((pb::RankBy::Partner, 2)),
            growth: vec![10.0, 50.0],
            year_to_date: false,
        },
        WatchSpec {
            id: "grp".into(),
            name: "China and Kazakhstan with the crash partners, year to date",
            reporters: vec!["CHN", "KAZ"],
            partners: vec![GROUP],
            monthly: true,
            by_month: false,
            thresholds: m(&[0.5, 1.0, 2.0]),
            rank: Some((pb::RankBy::Reporter, 1)),
            growth: vec![],
            year_to_date: false,
        },
        WatchSpec {
            id: "rep".into(),
            name: "China's trade",
            reporters: vec!["CHN"],
            partners: vec![],
            monthly: false,
            by_month: false,
            thresholds: m(&[2.0, 3.0, 4.0, 5.0]),
            rank: Some((pb::RankBy::Partner, 3)),
            growth: vec![0.0],
            year_to_date: false,
        },
        WatchSpec {
            id: "world".into(),
            name: "World trade",
            reporters: vec![],
            partners: vec![],
            monthly: false,
            by_month: false,
            thresholds: m(&[3.0, 5.0, 7.0, 9.0]),
            rank: Some((pb::RankBy::Reporter, 2)),
            growth: vec![5.0],
            year_to_date: false,
        },
        WatchSpec {
            id: "ytd".into(),
            name: "China's trade, month by month",
            reporters: vec!["CHN"],
            partners: vec![],
            monthly: true,
            by_month: true,
            thresholds: m(&[0.1, 0.2]),
            rank: Some((pb::RankBy::Partner, 1)),
            growth: vec![0.0, 20.0],
            year_to_date: true,
        },
    ]
}

// ---------------------------------------------------------------------------
// The verifier: the log as checked so far, and the state it implies

/// Each watch's series as of one verified head.
type SeriesCache = Option<(u64, BTreeMap<String, BTreeMap<String, i128>>)>;

struct Verifier {
    /// Every event verified so far, from sequence 1.
    log: Vec<pb::Event>,
    /// Records as the verified log leaves them: value, revision.
    records: Records,
    /// Threshold states as each watch's own events leave them.
    crossed: BTreeMap<(String, String, i128), bool>,
    /// Every watch ever created (twins included, also once deleted).
    specs: BTreeMap<String, WatchSpec>,
    /// The watches kept over every round.
    originals: Vec<String>,
}

impl Verifier {
    fn head(&self) -> u64 {
        self.log.len() as u64
    }

    /// Checks new events (those after the verified log) and adds them.
    fn process(&mut self, events: &[pb::Event], ledger: &mut Ledger, problems: &mut Vec<String>) {
        let fixed_groups: Groups = [("CENTRAL_ASIA".to_string(), members(&CENTRAL_ASIA))].into();
        // batch → (record index, sequence, key, value)
        let mut occurrences: BTreeMap<u64, Vec<(usize, u64, Key, i128)>> = BTreeMap::new();
        let mut series_cache: SeriesCache = None;
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
                            if key.partner == PROBE_PARTNER {
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
                    series_cache = None;
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
                    if !spec.uses_group() {
                        let series = self.series_now(&mut series_cache, spec, &fixed_groups);
                        let want = series.get(&c.period).copied();
                        if after != want {
                            problems.push(format!(
                                "event {seq}: {} {} crossing says the value is {}, the records say {}",
                                spec.id,
                                c.period,
                                show(after),
                                show(want)
                            ));
                        }
                    }
                }
                Some(pb::event::Kind::RecordHigh(h)) => {
                    let Some(spec) = self.specs.get(&h.watch_id) else {
                        problems.push(format!(
                            "event {seq}: milestone of unknown watch {:?}",
                            h.watch_id
                        ));
                        self.log.push(e.clone());
                        continue;
                    };
                    if !spec.uses_group() {
                        let series = self.series_now(&mut series_cache, spec, &fixed_groups);
                        let after = amount(h.value_after.as_ref());
                        let want = series.get(&h.period).copied();
                        if after != want || want.is_none() {
                            problems.push(format!(
                                "event {seq}: {} record high {} says {}, the records say {}",
                                spec.id,
                                h.period,
                                show(after),
                                show(want)
                            ));
                        }
                        if !h.previous_period.is_empty() {
                            let previous = amount(h.previous_value.as_ref());
                            let want = series.get(&h.previous_period).copied();
                            if previous != want {
                                problems.push(format!(
                                    "event {seq}: {} record high: previous {} is {}, the records say {}",
                                    spec.id,
                                    h.previous_period,
                                    show(previous),
                                    show(want)
                                ));
                            }
                        }
                        // (A backfill replays the periods one by one: its
                        // record highs are the highest so far.)
                        if let Some(max) = series.values().max()
                            && !h.caused_by.is_empty()
                            && after.is_some_and(|a| a < *max)
                        {
                            problems.push(format!(
                                "event {seq}: {} record high {} at {} below the series maximum {}",
                                spec.id,
                                h.period,
                                show(after),
                                show(Some(*max))
                            ));
                        }
                    }
                }
                Some(kind) => {
                    let id = e.watch_id().unwrap_or_default();
                    let Some(spec) = self.specs.get(id) else {
                        problems.push(format!("event {seq}: milestone of unknown watch {id:?}"));
                        self.log.push(e.clone());
                        continue;
                    };
                    if !spec.uses_group() {
                        let series = self.series_now(&mut series_cache, spec, &fixed_groups);
                        if let Some(problem) = analyst_milestone_problem(kind, series) {
                            problems.push(format!("event {seq}: {id} {problem}"));
                        }
                    }
                }
                None => problems.push(format!("event {seq} has no kind")),
            }
            self.log.push(e.clone());
        }

        // Batches: in full or not at all, in request order, once.
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

    fn series_now<'a>(
        &self,
        cache: &'a mut SeriesCache,
        spec: &WatchSpec,
        groups: &Groups,
    ) -> &'a BTreeMap<String, i128> {
        let head = self.head();
        if cache.as_ref().is_none_or(|(h, _)| *h != head) {
            *cache = Some((head, BTreeMap::new()));
        }
        let (_, map) = cache.as_mut().unwrap();
        map.entry(spec.id.clone())
            .or_insert_with(|| spec.series(&self.records, groups))
    }

    /// A watch's threshold states as its events say.
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
// Checks after a restart

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
            let group = g.into_inner().group;
            let mut m = group
                .ok_or_else(|| format!("GetGroup {name}: an answer without the group"))?
                .members;
            m.sort();
            Ok(Some(m))
        }
        Err(s) if s.code() == Code::NotFound => Ok(None),
        Err(s) => Err(format!("GetGroup {name}: {s:?}")),
    }
}

struct Suite {
    seed: u64,
    rng: Rng,
    dir: tempfile::TempDir,
    ledger: Shared<Ledger>,
    verifier: Verifier,
    subscribers: Vec<Subscriber>,
    problems: Vec<String>,
}

struct Clients {
    trade: TradeServiceClient<Channel>,
    milestones: MilestoneServiceClient<Channel>,
}

async fn clients(addr: &str) -> Clients {
    let channel = connect(addr).await.expect("connects to the server");
    Clients {
        trade: TradeServiceClient::new(channel.clone()),
        milestones: MilestoneServiceClient::new(channel),
    }
}

fn start(dir: &std::path::Path) -> Binary {
    Binary::start(dir, &["--cache-mb", "64"])
}

impl Suite {
    fn fail_if_problems(&mut self, when: &str) {
        if self.problems.is_empty() {
            return;
        }
        let n = self.problems.len();
        let shown: Vec<&str> = self.problems.iter().take(40).map(String::as_str).collect();
        panic!(
            "crash suite, TRADEWATCH_CRASH_SEED={}, {when}: {n} problem(s):\n  {}{}",
            self.seed,
            shown.join("\n  "),
            if n > 40 { "\n  …" } else { "" }
        );
    }

    /// Groups, a few batches and the watches, on a fresh store.
    async fn setup(&mut self, addr: &str) {
        let mut c = clients(addr).await;
        for (name, variant) in [(GROUP, VARIANTS[0]), (SPARE, VARIANTS[2])] {
            put_group(&mut c.trade, name, &members(variant))
                .await
                .expect("PutGroup");
            self.ledger
                .lock()
                .unwrap()
                .groups
                .insert(name, Some(members(variant)));
        }
        let keys = load_keys();
        for _ in 0..4 {
            let batch = distinct_keys(&mut self.rng, &keys, 12);
            send_batch(&mut c.trade, &self.ledger, &mut self.rng, batch)
                .await
                .expect("PutRecords");
        }
        for spec in original_watches() {
            c.milestones
                .create_watch(spec.to_pb(true))
                .await
                .expect("CreateWatch");
            self.verifier.originals.push(spec.id.clone());
            self.verifier.specs.insert(spec.id.clone(), spec);
        }
        self.verifier
            .sync(&mut c.milestones, &self.ledger, &mut self.problems)
            .await;
    }

    /// Connects the full-stream subscriber, and the filtered one when
    /// `both`, from their checkpoints, checking the resumed streams.
    async fn connect_subscribers(&mut self, addr: &str, both: bool) {
        let n = if both { 2 } else { 1 };
        for sub in self.subscribers.iter_mut().take(n) {
            connect_subscriber(sub, addr, &self.verifier.log, &mut self.problems).await;
        }
    }

    /// Mixed load, then SIGKILL at a random moment. Returns the delay.
    async fn load_and_kill(&mut self, server: Binary) -> u64 {
        let killed = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for _ in 0..RECORD_WRITERS {
            tasks.push(tokio::spawn(record_writer(
                server.addr.clone(),
                self.rng.fork(),
                self.ledger.clone(),
                killed.clone(),
            )));
        }
        tasks.push(tokio::spawn(group_editor(
            server.addr.clone(),
            self.rng.fork(),
            self.ledger.clone(),
            killed.clone(),
        )));
        let delay = self.rng.range(KILL_AFTER_MS.0, KILL_AFTER_MS.1);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        killed.store(true, Ordering::SeqCst);
        server.kill(); // SIGKILL
        for task in tasks {
            within(30, "a writer to notice the kill", task).await.unwrap();
        }
        for sub in &mut self.subscribers {
            if let Some(task) = sub.task.take() {
                within(30, "a subscription to break", task).await.unwrap();
                let l = sub.log.lock().unwrap();
                match l.ended.as_deref() {
                    Some("ended with OK") | None => self.problems.push(format!(
                        "subscriber {}: a killed server's stream ended with {:?}",
                        sub.name, l.ended
                    )),
                    Some(_) => {}
                }
            }
        }
        let mut l = self.ledger.lock().unwrap();
        self.problems.append(&mut l.problems);
        delay
    }

    /// Every invariant, on the restarted server.
    async fn check(&mut self, addr: &str, round: u64) {
        let mut c = clients(addr).await;

        // The log: gap-free, and what was verified before is unchanged.
        let (log, head) = match list_events(&mut c.milestones, 1).await {
            Ok(l) => l,
            Err(e) => {
                self.problems.push(e);
                return;
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
                "the restart lost events: head {head}, {known} were verified before"
            ));
            return;
        }
        if let Some(i) = (0..known).find(|i| log[*i] != self.verifier.log[*i]) {
            self.problems.push(format!(
                "event {} changed across the restart:\n    was {:?}\n    now {:?}",
                i + 1,
                self.verifier.log[i],
                log[i]
            ));
            return;
        }
        {
            let mut l = self.ledger.lock().unwrap();
            self.verifier.process(&log[known..], &mut l, &mut self.problems);
            // Batches the log does not have: lost, which only an
            // unacknowledged one may be.
            for (b, batch) in &mut l.batches {
                if batch.landed.is_none() {
                    if let Some((first, last)) = batch.acked {
                        self.problems.push(format!(
                            "acknowledged batch {b} ({first}..={last}) is not in the log"
                        ));
                    }
                    batch.landed = Some(None);
                }
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

        // What subscribers saw is stored identically.
        for sub in &self.subscribers {
            let l = sub.log.lock().unwrap();
            let upto = (l.next as usize).saturating_sub(1);
            if upto > log.len() {
                self.problems.push(format!(
                    "subscriber {} saw events up to {upto}; the log after the restart ends at {head}",
                    sub.name
                ));
                continue;
            }
            let expected: Vec<&pb::Event> = log[..upto].iter().filter(|e| sub.wants(e)).collect();
            let seen: Vec<&pb::Event> = l.seen.iter().collect();
            if seen != expected {
                let first_difference = seen.iter().zip(&expected).position(|(a, b)| a != b);
                self.problems.push(format!(
                    "subscriber {}: saw {} events up to {upto}, the log has {} matching; first difference at \
                     index {first_difference:?}",
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
                return;
            }
        };
        if records != self.verifier.records {
            let l = self.ledger.lock().unwrap();
            // Whose write a value is: a batch, acknowledged or not, in the
            // log or not (a listed value of a batch the log lacks is a torn
            // write).
            let whose = |v: Option<&(i128, i64)>| -> String {
                let Some((value, revision)) = v else {
                    return "absent".into();
                };
                let who = match batch_of(*value).map(|(b, _)| (b, l.batches.get(&b))) {
                    Some((b, Some(batch))) => format!(
                        "batch {b}, {}, {}",
                        if batch.acked.is_some() {
                            "acknowledged"
                        } else {
                            "unacknowledged"
                        },
                        match batch.landed {
                            Some(Some(first)) => format!("in the log from {first}"),
                            _ => "not in the log".into(),
                        }
                    ),
                    Some((b, None)) => format!("batch {b}, never sent"),
                    None => "a probe".into(),
                };
                format!("{} rev {revision} ({who})", show(Some(*value)))
            };
            let keys: BTreeSet<&Key> = records.keys().chain(self.verifier.records.keys()).collect();
            let diffs: Vec<String> = keys
                .into_iter()
                .filter(|k| records.get(*k) != self.verifier.records.get(*k))
                .take(10)
                .map(|k| {
                    format!(
                        "{k}: listed {}; the log says {}",
                        whose(records.get(k)),
                        whose(self.verifier.records.get(k))
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

        // Aggregates: a brute-force sum of the listed records.
        for q in questions(groups.contains_key(SPARE)) {
            let expected = model_answer(&records, &q, &groups);
            match c.trade.aggregate(q.to_pb()).await {
                Ok(response) => match server_answer(&response.into_inner()) {
                    Ok(got) if got == expected => {}
                    Ok(got) => self.problems.push(format!(
                        "{q:?} differs from the brute-force sum:\n    {}",
                        answer_diff(&got, &expected).join("\n    ")
                    )),
                    Err(e) => self.problems.push(format!("{q:?}: {e}")),
                },
                Err(s) => self.problems.push(format!("{q:?} failed: {s:?}")),
            }
        }

        // Watches: the originals, each in the state its events say and its
        // values imply.
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
            let spec = &self.verifier.specs[id];
            let expected = spec.crossed(&records, &groups);
            let told = self.verifier.crossed_of(id);
            if told != expected {
                self.problems.push(format!(
                    "watch {id}: its events leave thresholds crossed at {told:?}; the records say {expected:?}"
                ));
            }
        }
        self.probe_watches(&mut c, round, &records, &groups).await;
    }

    /// Re-evaluates every watch: a twin created with backfill now, then
    /// probe writes that must move the watch and its twin identically.
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

        // Probes: a huge record in one period, then its deletion.
        let mut writes: Vec<(u64, &str, bool)> = Vec::new();
        for &period in ANNUAL_PROBES.iter().chain(&MONTHLY_PROBES) {
            let key = Key::probe(period);
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
        let series: BTreeMap<&str, BTreeMap<String, i128>> = originals
            .iter()
            .map(|o| (o.id.as_str(), o.series(records, groups)))
            .collect();
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
                let label = if o.by_month { *period } else { &period[..4] };
                let value = series[o.id.as_str()].get(label).copied();
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

fn seed() -> u64 {
    std::env::var("TRADEWATCH_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        })
}

async fn run(rounds: u64) {
    let seed = seed();
    eprintln!("crash suite: {rounds} rounds, TRADEWATCH_CRASH_SEED={seed}");
    let began = Instant::now();
    let mut suite = Suite {
        seed,
        rng: Rng::new(seed),
        dir: tempfile::tempdir().unwrap(),
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
    };
    let mut server = start(suite.dir.path());
    within(60, "setup", suite.setup(&server.addr)).await;
    suite.fail_if_problems("setup");

    for round in 1..=rounds {
        let round_began = Instant::now();
        let (head_before, writes_before, batches_before) = {
            let l = suite.ledger.lock().unwrap();
            (suite.verifier.head(), l.acked_writes, l.next_batch)
        };
        let both = round == 1 || suite.rng.chance(50);
        within(60, "subscribers", suite.connect_subscribers(&server.addr, both)).await;
        suite.fail_if_problems(&format!("round {round}, resuming subscribers"));

        let delay = within(60, "load and kill", suite.load_and_kill(server)).await;
        server = start(suite.dir.path());
        let addr = server.addr.clone();
        within(300, "checks", suite.check(&addr, round)).await;
        suite.fail_if_problems(&format!("round {round} (killed after {delay} ms)"));

        let l = suite.ledger.lock().unwrap();
        let (mut landed, mut lost) = (0, 0);
        for b in l.batches.range(batches_before + 1..).map(|(_, b)| b) {
            if b.acked.is_none() {
                landed += u64::from(matches!(b.landed, Some(Some(_))));
                lost += u64::from(b.landed == Some(None));
            }
        }
        let milestones = suite.verifier.log[head_before as usize..]
            .iter()
            .filter(|e| e.kind_code() != pb::EventKind::RecordStored)
            .count();
        eprintln!(
            "round {round}: killed after {delay} ms; {} writes acknowledged; unacknowledged batches: {landed} \
             landed, {lost} lost; events {head_before} -> {} ({milestones} milestones); {} records; {:.1?}",
            l.acked_writes - writes_before,
            suite.verifier.head(),
            suite.verifier.records.len(),
            round_began.elapsed()
        );
    }
    // The last kill's subscribers resume too.
    within(60, "subscribers", suite.connect_subscribers(&server.addr, true)).await;
    suite.fail_if_problems("resuming subscribers after the last round");
    drop(server);
    eprintln!(
        "crash suite: {rounds} rounds passed in {:.1?} (TRADEWATCH_CRASH_SEED={seed}, {} events)",
        began.elapsed(),
        suite.verifier.head()
    );
}

/// The short form, part of `cargo test`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_suite() {
    run(SHORT_ROUNDS).await;
}

/// The long form: `TRADEWATCH_CRASH_ROUNDS=100 cargo test --release --test
/// crash_suite -- --ignored` (100 rounds when the variable is not set).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long: run with --ignored, rounds from TRADEWATCH_CRASH_ROUNDS"]
async fn crash_suite_long() {
    let rounds = std::env::var("TRADEWATCH_CRASH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(LONG_ROUNDS);
    run(rounds).await;
}
