//! Watch evaluation on a real server against a brute-force model.
//!
//! Each case starts a server, defines the partner group `GRP_A`, creates one
//! or two watches over the empty store (no backfill) — CHN ↔ GRP_A trade
//! volume with record highs, and maybe a watch of named flows over GRP_A,
//! two countries or every partner — and then applies a random sequence of
//! record batches, batches of the other flows of an existing figure,
//! revisions, deletions, redefinitions of `GRP_A` and restarts, over a small
//! key space (two reporters, four partners, exports / imports / turnover,
//! four years, values in halves of a dollar), so that the flows of one trade
//! volume collide, values land on and hover around the thresholds, and
//! periods tie.
//!
//! The model keeps the records and the group in plain maps. Before and after
//! every operation it computes each watch's series from scratch (DESIGN.md
//! §1/§4: trade volume is, per reporter, partner and year, the turnover
//! figure if there is one, else exports plus imports; named flows are summed
//! as they are; a year is in the series when at least one record counts in
//! it) and derives the milestones by comparing the two series:
//!
//! - ThresholdCrossed, for each year whose value (or presence) changed and
//!   each threshold (ascending), when the year goes from below T (or
//!   absent) to ≥ T (UP) or back (DOWN);
//! - then at most one RecordHigh per watch and write, when a year becomes the
//!   holder of the record and the series has at least two years. The holder
//!   is the year strictly greater than every other; when several share the
//!   highest value the current holder keeps the record if it is one of
//!   them, and otherwise nobody holds it (a tie is no record). The previous
//!   period is the previous holder — or, when there was none (the series was
//!   empty, or tied), the highest other year (the earliest on a tie), as the
//!   server does; the proto's "the period that held the record before, if
//!   any" could also be read as leaving it empty then. The cause is
//!   GROUP_CHANGE for a group edit, REVISION when the write revised or
//!   deleted any record the watch selects (even one a turnover figure hides),
//!   else NEW_DATA.
//!
//! Every write also stores one RecordStored per created, revised or deleted
//! record (none for an unchanged one), before the milestones, which come per
//! watch in id order. After the last operation the whole log is read with
//! ListEvents (in pages of 7) and compared with the model's list, in order
//! and to the nano: kinds, keys, changes, old and new values, revisions,
//! watch ids and names, periods, thresholds, directions, values before and
//! after, previous periods and values, causes. Also checked: sequences are
//! gap-free from 1 up to the head, PutRecords answers the outcome and
//! revision of each record and the sequences of exactly its write's events,
//! DeleteRecord the sequence of the deletion's RecordStored, and each
//! milestone's `caused_by` names records of its own write that the watch
//! selects (none for a group edit). On failure the message shows a diff of the event
//! lists and every operation with the model's series after it.
//!
//! The server bugs this property found are kept as minimal cases at the
//! end of the file.
//!
//! `PROPTEST_CASES=500 cargo test --test milestone_props` runs more cases.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use common::TestServer;
use proptest::prelude::*;
use proptest::sample::{Index, select, subsequence};
use proptest::test_runner::TestCaseError;
use tonic::transport::Channel;
use tradewatch::pb::milestone_service_client::MilestoneServiceClient;
use tradewatch::pb::trade_service_client::TradeServiceClient;
use tradewatch::pb::{self, Cause, Flow, RecordChange, WriteOutcome};

const NANOS: i128 = 1_000_000_000;

/// Reporter–partner pairs (no self-trade).
const PAIRS: [(&str, &str); 7] = [
    ("CHN", "KAZ"),
    ("CHN", "KGZ"),
    ("CHN", "UZB"),
    ("CHN", "DEU"),
    ("KAZ", "KGZ"),
    ("KAZ", "UZB"),
    ("KAZ", "DEU"),
];
const FLOWS: [Flow; 3] = [Flow::Export, Flow::Import, Flow::Turnover];
const PERIODS: [&str; 4] = ["2021", "2022", "2023", "2024"];
const COUNTRIES: [&str; 4] = ["KAZ", "KGZ", "UZB", "DEU"];
const GROUP: &str = "GRP_A";
const SOURCE: &str = "GACC";

/// Thresholds of the trade-volume watch, and of the flows watch, in halves
/// of a dollar (values are in halves too, so sums land on them exactly).
const VOLUME_THRESHOLDS: [i128; 4] = [6, 13, 20, 28];
const FLOW_THRESHOLDS: [i128; 3] = [4, 9, 16];
/// Growth thresholds of the trade-volume watch, in basis points.
const GROWTH_THRESHOLDS: [i32; 4] = [-5000, 0, 2500, 10000];

// ---------------------------------------------------------------------------
// Records

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct Key {
    reporter: &'static str,
    partner: &'static str,
    flow: Flow,
    period: &'static str,
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}>{} {} {}",
            self.reporter,
            self.partner,
            flow_name(self.flow),
            self.period
        )
    }
}

impl Key {
    fn to_pb(self) -> pb::RecordKey {
        pb::RecordKey {
            reporter: self.reporter.into(),
            partner: self.partner.into(),
            flow: self.flow.into(),
            period: self.period.into(),
            commodity: "TOTAL".into(),
            currency: "USD".into(),
        }
    }

    fn from_pb(k: &pb::RecordKey) -> Result<Key, String> {
        let find = |list: &[&'static str], s: &str| list.iter().copied().find(|c| *c == s);
        let reporter = find(&["CHN", "KAZ"], &k.reporter);
        let partner = find(&COUNTRIES, &k.partner);
        let period = find(&PERIODS, &k.period);
        let flow = Flow::try_from(k.flow).ok().filter(|f| FLOWS.contains(f));
        match (reporter, partner, flow, period) {
            (Some(reporter), Some(partner), Some(flow), Some(period))
                if k.commodity == "TOTAL" && k.currency == "USD" =>
            {
                Ok(Key {
                    reporter,
                    partner,
                    flow,
                    period,
                })
            }
            _ => Err(format!("unexpected record key {k:?}")),
        }
    }

    fn with_flow(self, flow: Flow) -> Key {
        Key { flow, ..self }
    }

    fn record(self, value: i128) -> pb::TradeRecord {
        pb::TradeRecord {
            reporter: self.reporter.into(),
            partner: self.partner.into(),
            flow: self.flow.into(),
            period: self.period.into(),
            commodity: "TOTAL".into(),
            value: Some(usd(value)),
            source: SOURCE.into(),
            ..Default::default()
        }
    }
}

fn flow_name(flow: Flow) -> &'static str {
    flow.as_str_name().trim_start_matches("FLOW_")
}

fn usd(nanos: i128) -> pb::Money {
    pb::Money {
        currency_code: "USD".into(),
        units: i64::try_from(nanos / NANOS).unwrap(),
        nanos: i32::try_from(nanos % NANOS).unwrap(),
    }
}

/// An amount of an event, which must be in USD.
fn amount(m: Option<&pb::Money>, what: &str) -> Result<Option<i128>, String> {
    match m {
        None => Ok(None),
        Some(m) if m.currency_code == "USD" => Ok(Some(i128::from(m.units) * NANOS + i128::from(m.nanos))),
        Some(m) => Err(format!("{what} is in {:?}, not USD", m.currency_code)),
    }
}

fn show(nanos: i128) -> String {
    let (units, frac) = (nanos / NANOS, nanos % NANOS);
    if frac == 0 {
        units.to_string()
    } else {
        format!("{units}.{}", format!("{frac:09}").trim_end_matches('0'))
    }
}

fn show_opt(v: Option<i128>) -> String {
    v.map_or("-".into(), show)
}

/// Value, revision.
type Records = BTreeMap<Key, (i128, i64)>;

/// A series: the value of each year that has records.
type Series = BTreeMap<&'static str, i128>;

fn show_series(s: &Series) -> String {
    let parts: Vec<String> = s.iter().map(|(p, v)| format!("{p}: {}", show(*v))).collect();
    format!("{{{}}}", parts.join(", "))
}

// ---------------------------------------------------------------------------
// Watches

#[derive(Clone, Debug, PartialEq)]
enum Partners {
    /// `GRP_A`, as defined at the time.
    Group,
    Countries(Vec<&'static str>),
    /// None named: every partner.
    All,
}

#[derive(Clone, Debug)]
struct WatchSpec {
    reporters: Vec<&'static str>,
    partners: Partners,
    /// Empty: trade volume.
    flows: Vec<Flow>,
    /// In nanos, in the order sent.
    thresholds: Vec<i128>,
    record_high: bool,
    /// A rank rule over the partners: how many places.
    rank_top: Option<u32>,
    /// Growth thresholds in basis points, in the order sent.
    growth: Vec<i32>,
}

impl WatchSpec {
    fn to_pb(&self, name: &str) -> pb::Watch {
        pb::Watch {
            name: name.into(),
            selector: Some(pb::RecordSelector {
                reporters: self.reporters.iter().map(|r| r.to_string()).collect(),
                partners: match &self.partners {
                    Partners::Group => vec![GROUP.into()],
                    Partners::Countries(list) => list.iter().map(|c| c.to_string()).collect(),
                    Partners::All => Vec::new(),
                },
                flows: self.flows.iter().map(|f| i32::from(*f)).collect(),
                ..Default::default()
            }),
            granularity: pb::Granularity::Year.into(),
            thresholds: self.thresholds.iter().map(|t| usd(*t)).collect(),
            record_high: self.record_high,
            rank: self.rank_top.map(|top| pb::RankRule {
                by: pb::RankBy::Partner.into(),
                top,
            }),
            growth_thresholds_percent: self.growth.iter().map(|bp| f64::from(*bp) / 100.0).collect(),
            ..Default::default()
        }
    }

    fn selects(&self, key: &Key, group: &BTreeSet<&'static str>) -> bool {
        self.reporters.contains(&key.reporter)
            && match &self.partners {
                Partners::Group => group.contains(key.partner),
                Partners::Countries(list) => list.contains(&key.partner),
                Partners::All => true,
            }
            && (self.flows.is_empty() || self.flows.contains(&key.flow))
    }

    /// Whether a stored record counts in the series (a figure hidden by a
    /// turnover figure does not count in a trade volume).
    fn counts(&self, key: &Key, records: &Records, group: &BTreeSet<&'static str>) -> bool {
        records.contains_key(key)
            && self.selects(key, group)
            && (!self.flows.is_empty()
                || key.flow == Flow::Turnover
                || !records.contains_key(&key.with_flow(Flow::Turnover)))
    }

    /// The series, from scratch.
    fn series(&self, records: &Records, group: &BTreeSet<&'static str>) -> Series {
        let mut series = Series::new();
        for (key, (value, _)) in records {
            if self.counts(key, records, group) {
                *series.entry(key.period).or_default() += value;
            }
        }
        series
    }

    /// The series per partner, from scratch: a partner is in a year when at
    /// least one of its records counts there.
    fn members(&self, records: &Records, group: &BTreeSet<&'static str>) -> Members {
        let mut members = Members::new();
        for (key, (value, _)) in records {
            if self.counts(key, records, group) {
                *members.entry((key.period, key.partner)).or_default() += value;
            }
        }
        members
    }
}

/// A series split by partner: (year, partner) → value.
type Members = BTreeMap<(&'static str, &'static str), i128>;

/// A year's top `top` partners, first place first (by value, then code);
/// `None` while fewer partners have records.
fn top_of(members: &Members, period: &str, top: u32) -> Option<Vec<(String, i128)>> {
    let mut ranked: Vec<(String, i128)> = members
        .iter()
        .filter(|((p, _), _)| *p == period)
        .map(|((_, c), v)| (c.to_string(), *v))
        .collect();
    if ranked.len() < top as usize {
        return None;
    }
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    ranked.truncate(top as usize);
    Some(ranked)
}

/// A year's value and the year before's, when growth is defined (both have
/// records, the earlier value is positive).
fn growth_basis(series: &Series, period: &str) -> Option<(i128, i128)> {
    let earlier = (period.parse::<u16>().ok()? - 1).to_string();
    let previous = *series.get(earlier.as_str())?;
    (previous > 0).then_some((*series.get(period)?, previous))
}

/// The watch as the model follows it.
#[derive(Clone, Debug)]
struct ModelWatch {
    id: String,
    name: String,
    spec: WatchSpec,
    /// The period holding the record.
    holder: Option<&'static str>,
}

/// The period holding the record after a change: the one strictly greater
/// than every other; when several share the highest value, the current
/// holder keeps the record if it is one of them, and otherwise nobody holds
/// it.
fn holder(series: &Series, current: Option<&'static str>) -> Option<&'static str> {
    let max = *series.values().max()?;
    let at_max: Vec<&'static str> = series
        .iter()
        .filter(|(_, v)| **v == max)
        .map(|(p, _)| *p)
        .collect();
    match at_max.as_slice() {
        [only] => Some(*only),
        _ => current.filter(|c| at_max.contains(c)),
    }
}

/// The highest period other than `holder` (the earliest on a tie).
fn runner_up(series: &Series, holder: &'static str) -> Option<&'static str> {
    let max = series
        .iter()
        .filter(|(p, _)| **p != holder)
        .map(|(_, v)| *v)
        .max()?;
    series
        .iter()
        .find(|(p, v)| **p != holder && **v == max)
        .map(|(p, _)| *p)
}

// ---------------------------------------------------------------------------
// Events

#[derive(Clone, PartialEq, Eq)]
enum Ev {
    Stored {
        key: Key,
        change: RecordChange,
        old: Option<i128>,
        new: Option<i128>,
        revision: i64,
    },
    Crossed {
        watch: String,
        period: String,
        threshold: i128,
        direction: pb::Direction,
        before: Option<i128>,
        after: Option<i128>,
    },
    High {
        watch: String,
        period: String,
        before: Option<i128>,
        after: Option<i128>,
        previous: String,
        previous_value: Option<i128>,
        cause: Cause,
    },
    Growth {
        watch: String,
        period: String,
        threshold_bp: i32,
        direction: pb::Direction,
        /// The year's and the year before's values after the write.
        after: Option<(i128, i128)>,
        cause: Cause,
    },
    Rank {
        watch: String,
        period: String,
        before: Vec<(String, i128)>,
        after: Vec<(String, i128)>,
        cause: Cause,
    },
}

impl fmt::Debug for Ev {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ev::Stored {
                key,
                change,
                old,
                new,
                revision,
            } => write!(
                f,
                "Stored   {key:?} {} {} -> {} rev {revision}",
                change.as_str_name().trim_start_matches("RECORD_CHANGE_"),
                show_opt(*old),
                show_opt(*new)
            ),
            Ev::Crossed {
                watch,
                period,
                threshold,
                direction,
                before,
                after,
            } => write!(
                f,
                "Crossed  {watch} {period} {} {} ({} -> {})",
                direction.as_str_name().trim_start_matches("DIRECTION_"),
                show(*threshold),
                show_opt(*before),
                show_opt(*after)
            ),
            Ev::High {
                watch,
                period,
                before,
                after,
                previous,
                previous_value,
                cause,
            } => write!(
                f,
                "High     {watch} {period} ({} -> {}) previous {} ({}) {}",
                show_opt(*before),
                show_opt(*after),
                if previous.is_empty() { "none" } else { previous },
                show_opt(*previous_value),
                cause.as_str_name().trim_start_matches("CAUSE_")
            ),
            Ev::Growth {
                watch,
                period,
                threshold_bp,
                direction,
                after,
                cause,
            } => write!(
                f,
                "Growth   {watch} {period} {} {threshold_bp} bp, now {} over {} {}",
                direction.as_str_name().trim_start_matches("DIRECTION_"),
                show_opt(after.map(|a| a.0)),
                show_opt(after.map(|a| a.1)),
                cause.as_str_name().trim_start_matches("CAUSE_")
            ),
            Ev::Rank {
                watch,
                period,
                before,
                after,
                cause,
            } => {
                let list = |l: &[(String, i128)]| {
                    l.iter()
                        .map(|(c, v)| format!("{c} {}", show(*v)))
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                write!(
                    f,
                    "Rank     {watch} {period} [{}] -> [{}] {}",
                    list(before),
                    list(after),
                    cause.as_str_name().trim_start_matches("CAUSE_")
                )
            }
        }
    }
}

/// An event as the server stored it, with what is checked apart from the
/// comparison: the watch name, `caused_by` and the headline.
struct Got {
    sequence: u64,
    ev: Ev,
    watch_name: Option<String>,
    caused_by: Vec<pb::RecordKey>,
    headline: String,
}

fn got_of(e: &pb::Event) -> Result<Got, String> {
    use pb::event::Kind;
    let what = |field: &str| format!("event {} {field}", e.sequence);
    let (ev, watch_name, caused_by, headline) = match e.kind.as_ref() {
        None => return Err(format!("event {} has no kind", e.sequence)),
        Some(Kind::RecordStored(r)) => (
            Ev::Stored {
                key: Key::from_pb(r.key.as_ref().ok_or_else(|| what("has no key"))?)?,
                change: r.change(),
                old: amount(r.old_value.as_ref(), &what("old_value"))?,
                new: amount(r.new_value.as_ref(), &what("new_value"))?,
                revision: r.revision,
            },
            None,
            Vec::new(),
            String::new(),
        ),
        Some(Kind::ThresholdCrossed(c)) => (
            Ev::Crossed {
                watch: c.watch_id.clone(),
                period: c.period.clone(),
                threshold: amount(c.threshold.as_ref(), &what("threshold"))?
                    .ok_or_else(|| what("has no threshold"))?,
                direction: c.direction(),
                before: amount(c.value_before.as_ref(), &what("value_before"))?,
                after: amount(c.value_after.as_ref(), &what("value_after"))?,
            },
            Some(c.watch_name.clone()),
            c.caused_by.clone(),
            c.headline.clone(),
        ),
        Some(Kind::RecordHigh(h)) => (
            Ev::High {
                watch: h.watch_id.clone(),
                period: h.period.clone(),
                before: amount(h.value_before.as_ref(), &what("value_before"))?,
                after: amount(h.value_after.as_ref(), &what("value_after"))?,
                previous: h.previous_period.clone(),
                previous_value: amount(h.previous_value.as_ref(), &what("previous_value"))?,
                cause: h.cause(),
            },
            Some(h.watch_name.clone()),
            h.caused_by.clone(),
            h.headline.clone(),
        ),
        Some(Kind::GrowthCrossed(g)) => {
            let value = amount(g.value_after.as_ref(), &what("value_after"))?;
            let previous = amount(g.previous_value_after.as_ref(), &what("previous_value_after"))?;
            if value.is_some() != g.growth_after_percent.is_some() {
                return Err(what("growth_after_percent disagrees with value_after"));
            }
            (
                Ev::Growth {
                    watch: g.watch_id.clone(),
                    period: g.period.clone(),
                    threshold_bp: (g.threshold_percent * 100.0).round() as i32,
                    direction: g.direction(),
                    after: value.zip(previous),
                    cause: g.cause(),
                },
                Some(g.watch_name.clone()),
                g.caused_by.clone(),
                g.headline.clone(),
            )
        }
        Some(Kind::RankChanged(r)) => {
            let list = |members: &[pb::RankedMember], field: &str| -> Result<Vec<(String, i128)>, String> {
                members
                    .iter()
                    .map(|m| {
                        let value = amount(m.value.as_ref(), &what(field))?.ok_or_else(|| what(field))?;
                        Ok((m.country.clone(), value))
                    })
                    .collect()
            };
            (
                Ev::Rank {
                    watch: r.watch_id.clone(),
                    period: r.period.clone(),
                    before: list(&r.before, "before")?,
                    after: list(&r.after, "after")?,
                    cause: r.cause(),
                },
                Some(r.watch_name.clone()),
                r.caused_by.clone(),
                r.headline.clone(),
            )
        }
        Some(other) => return Err(format!("event {}: unexpected {other:?}", e.sequence)),
    };
    Ok(Got {
        sequence: e.sequence,
        ev,
        watch_name,
        caused_by,
        headline,
    })
}

// ---------------------------------------------------------------------------
// The model

struct Model {
    records: Records,
    group: BTreeSet<&'static str>,
    /// In id order (the order a write's milestones come in).
    watches: Vec<ModelWatch>,
}

impl Model {
    /// The milestones of one watch going from `old` to `new`; moves its
    /// holder.
    fn milestones(
        watch: &mut ModelWatch,
        old: &(Series, Members),
        new: &(Series, Members),
        cause: Cause,
        out: &mut Vec<Ev>,
    ) {
        let ((old, old_members), (new, new_members)) = (old, new);
        let mut thresholds = watch.spec.thresholds.clone();
        thresholds.sort_unstable();
        let periods: BTreeSet<&'static str> = old.keys().chain(new.keys()).copied().collect();
        for period in periods {
            let (before, after) = (old.get(period).copied(), new.get(period).copied());
            if before == after {
                continue;
            }
            for &threshold in &thresholds {
                let was = before.is_some_and(|v| v >= threshold);
                let is = after.is_some_and(|v| v >= threshold);
                if was != is {
                    out.push(Ev::Crossed {
                        watch: watch.id.clone(),
                        period: period.into(),
                        threshold,
                        direction: if is {
                            pb::Direction::Up
                        } else {
                            pb::Direction::Down
                        },
                        before,
                        after,
                    });
                }
            }
        }
        let next = holder(new, watch.holder);
        if watch.spec.record_high
            && next != watch.holder
            && new.len() >= 2
            && let Some(period) = next
        {
            let previous = watch.holder.or_else(|| runner_up(new, period));
            out.push(Ev::High {
                watch: watch.id.clone(),
                period: period.into(),
                before: old.get(period).copied(),
                after: new.get(period).copied(),
                previous: previous.unwrap_or_default().into(),
                previous_value: previous.and_then(|p| new.get(p).copied()),
                cause,
            });
        }
        watch.holder = next;
        let mut growth = watch.spec.growth.clone();
        growth.sort_unstable();
        let periods: BTreeSet<&'static str> = old.keys().chain(new.keys()).copied().collect();
        for &period in &periods {
            let (before, after) = (growth_basis(old, period), growth_basis(new, period));
            for &bp in &growth {
                let at_least =
                    |b: Option<(i128, i128)>| b.is_some_and(|(v, p)| (v - p) * 10_000 >= i128::from(bp) * p);
                let (was, is) = (at_least(before), at_least(after));
                if was != is {
                    out.push(Ev::Growth {
                        watch: watch.id.clone(),
                        period: period.into(),
                        threshold_bp: bp,
                        direction: if is {
                            pb::Direction::Up
                        } else {
                            pb::Direction::Down
                        },
                        after,
                        cause,
                    });
                }
            }
        }
        if let Some(top) = watch.spec.rank_top {
            let periods: BTreeSet<&'static str> = old_members
                .keys()
                .chain(new_members.keys())
                .map(|(p, _)| *p)
                .collect();
            for period in periods {
                let (before, after) = (top_of(old_members, period, top), top_of(new_members, period, top));
                let news = match (&before, &after) {
                    (None, None) => false,
                    (Some(a), Some(b)) => {
                        let set =
                            |l: &[(String, i128)]| l.iter().map(|(c, _)| c.clone()).collect::<BTreeSet<_>>();
                        a[0].0 != b[0].0 || set(a) != set(b)
                    }
                    _ => true,
                };
                if news {
                    out.push(Ev::Rank {
                        watch: watch.id.clone(),
                        period: period.into(),
                        before: before.unwrap_or_default(),
                        after: after.unwrap_or_default(),
                        cause,
                    });
                }
            }
        }
    }

    fn all_series(&self) -> Vec<(Series, Members)> {
        self.watches
            .iter()
            .map(|w| {
                (
                    w.spec.series(&self.records, &self.group),
                    w.spec.members(&self.records, &self.group),
                )
            })
            .collect()
    }

    /// A write of record changes (`None`: deleted), none of them a no-op;
    /// returns the events it should store.
    fn write(&mut self, changes: &[(Key, Option<i128>)]) -> Vec<Ev> {
        let old_records = self.records.clone();
        let old = self.all_series();
        let mut events = Vec::new();
        for &(key, value) in changes {
            let before = self.records.get(&key).copied();
            let (change, revision) = match (before, value) {
                (None, _) => (RecordChange::Created, 1),
                (Some((_, rev)), None) => (RecordChange::Deleted, rev),
                (Some((_, rev)), Some(_)) => (RecordChange::Revised, rev + 1),
            };
            match value {
                Some(v) => self.records.insert(key, (v, revision)),
                None => self.records.remove(&key),
            };
            events.push(Ev::Stored {
                key,
                change,
                old: before.map(|b| b.0),
                new: value,
                revision,
            });
        }
        let new = self.all_series();
        let group = self.group.clone();
        for (i, watch) in self.watches.iter_mut().enumerate() {
            let revision = changes
                .iter()
                .any(|(key, _)| old_records.contains_key(key) && watch.spec.selects(key, &group));
            let cause = if revision { Cause::Revision } else { Cause::NewData };
            Model::milestones(watch, &old[i], &new[i], cause, &mut events);
        }
        events
    }

    fn redefine_group(&mut self, members: &[&'static str]) -> Vec<Ev> {
        let old = self.all_series();
        self.group = members.iter().copied().collect();
        let new = self.all_series();
        let mut events = Vec::new();
        for (i, watch) in self.watches.iter_mut().enumerate() {
            Model::milestones(watch, &old[i], &new[i], Cause::GroupChange, &mut events);
        }
        events
    }

    fn pick(&self, index: &Index) -> Option<(Key, i128)> {
        if self.records.is_empty() {
            return None;
        }
        let (key, (value, _)) = self.records.iter().nth(index.index(self.records.len()))?;
        Some((*key, *value))
    }

    fn describe(&self) -> String {
        let mut s = format!("group {:?};", self.group);
        for (w, (series, _)) in self.watches.iter().zip(self.all_series()) {
            s += &format!(
                " {}: {} holder {}",
                w.id,
                show_series(&series),
                w.holder.unwrap_or("-")
            );
        }
        s
    }
}

// ---------------------------------------------------------------------------
// Operations

#[derive(Clone)]
enum Op {
    /// A batch; a record repeating an earlier key of the batch is dropped.
    Put(Vec<(Key, i128)>),
    /// An existing key (picked from the model) with a new value (maybe the
    /// same: then nothing changes).
    Revise(Index, i128),
    /// An existing key.
    Delete(Index),
    /// A batch of other flows of the same reporter, partner and year as an
    /// existing key (so that a trade volume switches between turnover and
    /// exports plus imports within one write); repeated flows are dropped.
    Siblings(Index, Vec<(Flow, i128)>),
    /// `GRP_A` redefined with these members.
    Group(Vec<&'static str>),
    /// The server stopped and started again (watch states are read back
    /// from disk).
    Restart,
}

impl fmt::Debug for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Put(records) => {
                let parts: Vec<String> = records
                    .iter()
                    .map(|(k, v)| format!("{k:?} = {}", show(*v)))
                    .collect();
                write!(f, "Put[{}]", parts.join(", "))
            }
            Op::Revise(i, v) => write!(f, "Revise(#{}, {})", i.index(1 << 16), show(*v)),
            Op::Delete(i) => write!(f, "Delete(#{})", i.index(1 << 16)),
            Op::Siblings(i, flows) => {
                let parts: Vec<String> = flows
                    .iter()
                    .map(|(flow, v)| format!("{} = {}", flow_name(*flow), show(*v)))
                    .collect();
                write!(f, "Siblings(#{}, [{}])", i.index(1 << 16), parts.join(", "))
            }
            Op::Group(members) => write!(f, "Group{members:?}"),
            Op::Restart => write!(f, "Restart"),
        }
    }
}

/// What the server answered to an operation, to check its sequences.
enum Answer {
    Put { first: u64, last: u64 },
    Delete { sequence: u64 },
    None,
}

/// An applied operation: what it did, its events and the answer.
struct Applied {
    text: String,
    /// Keys of the records it changed (for `caused_by`).
    changed: Vec<Key>,
    group_edit: bool,
    /// The members of `GRP_A` after it.
    group: BTreeSet<&'static str>,
    events: Vec<Ev>,
    answer: Answer,
    /// The model after it.
    state: String,
}

/// A server and clients of it.
struct Ctx {
    server: Option<TestServer>,
    /// Servers stopped by restarts: the first holds the temporary data dir.
    retired: Vec<TestServer>,
    trade: TradeServiceClient<Channel>,
    milestones: MilestoneServiceClient<Channel>,
}

impl Ctx {
    async fn start() -> Ctx {
        Ctx::on(TestServer::start().await).await
    }

    async fn on(server: TestServer) -> Ctx {
        let channel = server.channel().await;
        Ctx {
            server: Some(server),
            retired: Vec::new(),
            trade: TradeServiceClient::new(channel.clone()),
            milestones: MilestoneServiceClient::new(channel),
        }
    }

    /// Stops the server and starts it again on the same data dir.
    ///
    /// Rarely (about once in 20 000 restarts here) the store is still locked
    /// just after `stop` returns ("could not acquire lock"): the last handle
    /// on it goes away a moment after the server task ends. That is retried,
    /// with a note on stderr, rather than failing the case.
    async fn restart(&mut self) {
        let mut old = self.server.take().expect("a server");
        old.stop().await;
        let dir = old.data_dir.clone();
        let mut retired = std::mem::take(&mut self.retired);
        retired.push(old);
        let mut attempt = 0;
        let server = loop {
            let d = dir.clone();
            match tokio::spawn(async move { TestServer::start_in(&d).await }).await {
                Ok(server) => break server,
                Err(e) if attempt < 50 => {
                    attempt += 1;
                    eprintln!("restart attempt {attempt} failed ({e}); retrying");
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                Err(e) => panic!("the server does not start again on its data dir: {e}"),
            }
        };
        *self = Ctx::on(server).await;
        self.retired = retired;
    }

    async fn stop(&mut self) {
        if let Some(server) = self.server.as_mut() {
            server.stop().await;
        }
    }
}

/// Writes a batch and returns the changes it makes.
async fn put(
    ctx: &mut Ctx,
    model: &mut Model,
    batch: &[(Key, i128)],
) -> Result<(Vec<(Key, Option<i128>)>, Answer), String> {
    let mut changes = Vec::new();
    let mut expected = Vec::new();
    for &(key, value) in batch {
        let (outcome, revision) = match model.records.get(&key) {
            None => (WriteOutcome::Created, 1),
            Some((v, rev)) if *v == value => (WriteOutcome::Unchanged, *rev),
            Some((_, rev)) => (WriteOutcome::Revised, rev + 1),
        };
        if outcome != WriteOutcome::Unchanged {
            changes.push((key, Some(value)));
        }
        expected.push((outcome, revision));
    }
    let response = ctx
        .trade
        .put_records(common::put(batch.iter().map(|(k, v)| k.record(*v)).collect()))
        .await
        .map_err(|s| format!("PutRecords failed: {s:?}"))?
        .into_inner();
    let got: Vec<(WriteOutcome, i64)> = response
        .results
        .iter()
        .map(|r| (r.outcome(), r.revision))
        .collect();
    if got != expected {
        return Err(format!("PutRecords: results {got:?}, expected {expected:?}"));
    }
    Ok((
        changes,
        Answer::Put {
            first: response.first_sequence,
            last: response.last_sequence,
        },
    ))
}

async fn put_batch(
    ctx: &mut Ctx,
    model: &mut Model,
    batch: Vec<(Key, i128)>,
    applied: &mut Applied,
) -> Result<(), String> {
    let (changes, answer) = put(ctx, model, &batch).await?;
    applied.text = format!("{:?}", Op::Put(batch));
    applied.changed = changes.iter().map(|c| c.0).collect();
    applied.events = model.write(&changes);
    applied.answer = answer;
    Ok(())
}

async fn apply(ctx: &mut Ctx, model: &mut Model, op: &Op) -> Result<Applied, String> {
    let mut applied = Applied {
        text: String::new(),
        changed: Vec::new(),
        group_edit: false,
        group: BTreeSet::new(),
        events: Vec::new(),
        answer: Answer::None,
        state: String::new(),
    };
    match op {
        Op::Put(records) => {
            let mut seen = BTreeSet::new();
            let batch: Vec<(Key, i128)> = records.iter().copied().filter(|(k, _)| seen.insert(*k)).collect();
            put_batch(ctx, model, batch, &mut applied).await?;
        }
        Op::Siblings(index, flows) => match model.pick(index) {
            Some((key, _)) => {
                let mut seen = BTreeSet::new();
                let batch: Vec<(Key, i128)> = flows
                    .iter()
                    .filter(|(flow, _)| seen.insert(*flow))
                    .map(|(flow, v)| (key.with_flow(*flow), *v))
                    .collect();
                put_batch(ctx, model, batch, &mut applied).await?;
            }
            None => applied.text = "Siblings: no records, skipped".into(),
        },
        Op::Revise(index, value) => match model.pick(index) {
            Some((key, old)) => {
                let (changes, answer) = put(ctx, model, &[(key, *value)]).await?;
                applied.text = format!("Revise {key:?} {} -> {}", show(old), show(*value));
                applied.changed = changes.iter().map(|c| c.0).collect();
                applied.events = model.write(&changes);
                applied.answer = answer;
            }
            None => applied.text = "Revise: no records, skipped".into(),
        },
        Op::Delete(index) => match model.pick(index) {
            Some((key, old)) => {
                let response = ctx
                    .trade
                    .delete_record(common::delete(key.to_pb()))
                    .await
                    .map_err(|s| format!("DeleteRecord {key:?} failed: {s:?}"))?
                    .into_inner();
                let value = amount(
                    response.record.as_ref().and_then(|r| r.value.as_ref()),
                    "deleted record",
                )?;
                if value != Some(old) {
                    return Err(format!(
                        "DeleteRecord {key:?} returned a record of {}, expected {}",
                        show_opt(value),
                        show(old)
                    ));
                }
                applied.text = format!("Delete {key:?} (was {})", show(old));
                applied.changed = vec![key];
                applied.events = model.write(&[(key, None)]);
                applied.answer = Answer::Delete {
                    sequence: response.sequence,
                };
            }
            None => applied.text = "Delete: no records, skipped".into(),
        },
        Op::Group(members) => {
            ctx.trade
                .put_group(common::put_group(pb::PartnerGroup {
                    name: GROUP.into(),
                    members: members.iter().map(|m| m.to_string()).collect(),
                    ..Default::default()
                }))
                .await
                .map_err(|s| format!("PutGroup {members:?} failed: {s:?}"))?;
            applied.text = format!("Group {members:?}");
            applied.group_edit = true;
            applied.events = model.redefine_group(members);
        }
        Op::Restart => {
            ctx.restart().await;
            applied.text = "Restart".into();
        }
    }
    applied.group = model.group.clone();
    applied.state = model.describe();
    Ok(applied)
}

/// Every stored event, read in small pages.
async fn list_events(ctx: &mut Ctx) -> Result<(Vec<pb::Event>, u64), String> {
    let mut events = Vec::new();
    let mut from = 1;
    loop {
        let page = ctx
            .milestones
            .list_events(pb::ListEventsRequest {
                from_sequence: from,
                limit: 7,
                ..Default::default()
            })
            .await
            .map_err(|s| format!("ListEvents from {from} failed: {s:?}"))?
            .into_inner();
        let done = page.events.is_empty() || page.next_sequence > page.head_sequence;
        if !done && page.next_sequence <= from {
            return Err(format!(
                "ListEvents from {from}: next_sequence {}",
                page.next_sequence
            ));
        }
        events.extend(page.events);
        if done {
            return Ok((events, page.head_sequence));
        }
        from = page.next_sequence;
    }
}

/// An LCS diff of the expected and stored events; `-` expected only, `+`
/// stored only.
fn diff(expected: &[(usize, Ev)], got: &[Got]) -> String {
    let (n, m) = (expected.len(), got.len());
    let mut lcs = vec![vec![0u32; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if expected[i].1 == got[j].ev {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let mut out = String::new();
    let (mut i, mut j) = (0, 0);
    while i < n || j < m {
        if i < n && j < m && expected[i].1 == got[j].ev {
            out += &format!(
                "    op {:>2} seq {:>3}  {:?}\n",
                expected[i].0, got[j].sequence, got[j].ev
            );
            i += 1;
            j += 1;
        } else if i < n && (j == m || lcs[i + 1][j] >= lcs[i][j + 1]) {
            out += &format!("  - op {:>2}          {:?}\n", expected[i].0, expected[i].1);
            i += 1;
        } else {
            out += &format!("  +       seq {:>3}  {:?}\n", got[j].sequence, got[j].ev);
            j += 1;
        }
    }
    out
}

/// Compares the stored log with the model's events.
fn check(model: &Model, applied: &[Applied], events: &[pb::Event], head: u64) -> Result<(), String> {
    let expected: Vec<(usize, Ev)> = applied
        .iter()
        .enumerate()
        .flat_map(|(i, a)| a.events.iter().map(move |e| (i, e.clone())))
        .collect();
    let got: Vec<Got> = events.iter().map(got_of).collect::<Result<_, _>>()?;
    let sequences: Vec<u64> = got.iter().map(|g| g.sequence).collect();
    if sequences != (1..=got.len() as u64).collect::<Vec<_>>() || head != got.len() as u64 {
        return Err(format!(
            "sequences are not gap-free from 1 up to the head {head}: {sequences:?}"
        ));
    }
    if expected.len() != got.len() || expected.iter().zip(&got).any(|(e, g)| e.1 != g.ev) {
        return Err(format!(
            "the stored events differ from the model's (- expected only, + stored only):\n{}",
            diff(&expected, &got)
        ));
    }
    // The events line up: check what was left out of the comparison.
    let names: BTreeMap<&str, &str> = model
        .watches
        .iter()
        .map(|w| (w.id.as_str(), w.name.as_str()))
        .collect();
    for ((op, ev), g) in expected.iter().zip(&got) {
        let watch = match ev {
            Ev::Stored { .. } => continue,
            Ev::Crossed { watch, .. }
            | Ev::High { watch, .. }
            | Ev::Growth { watch, .. }
            | Ev::Rank { watch, .. } => watch.as_str(),
        };
        let a = &applied[*op];
        let spec = &model.watches.iter().find(|w| w.id == watch).unwrap().spec;
        let problem = if g.watch_name.as_deref() != names.get(watch).copied() {
            Some(format!("watch_name {:?}", g.watch_name))
        } else if g.headline.is_empty() {
            Some("no headline".into())
        } else if a.group_edit {
            (!g.caused_by.is_empty()).then(|| format!("caused_by {:?} for a group edit", g.caused_by))
        } else {
            let keys: Result<Vec<Key>, String> = g.caused_by.iter().map(Key::from_pb).collect();
            match keys {
                Err(e) => Some(e),
                Ok(keys) => (keys.is_empty()
                    || keys
                        .iter()
                        .any(|k| !a.changed.contains(k) || !spec.selects(k, &a.group)))
                .then(|| {
                    format!(
                        "caused_by {keys:?}, but the write changed {:?} (group {:?})",
                        a.changed, a.group
                    )
                }),
            }
        };
        if let Some(problem) = problem {
            return Err(format!("event {} of op {op} ({ev:?}): {problem}", g.sequence));
        }
    }
    // Each write's answer names its events.
    let mut next = 1u64;
    for (i, a) in applied.iter().enumerate() {
        let count = a.events.len() as u64;
        let range = (next, next + count - u64::from(count > 0));
        match a.answer {
            Answer::Put { first, last } => {
                let want = if count == 0 { (0, 0) } else { range };
                if (first, last) != want {
                    return Err(format!(
                        "op {i} ({}): PutRecords answered sequences {first}..={last}, its events are {}..={}",
                        a.text, want.0, want.1
                    ));
                }
            }
            Answer::Delete { sequence } => {
                if sequence != next {
                    return Err(format!(
                        "op {i} ({}): DeleteRecord answered sequence {sequence}, the deletion's event is {next} \
                         (its events are {}..={})",
                        a.text, range.0, range.1
                    ));
                }
            }
            Answer::None => {}
        }
        next += count;
    }
    Ok(())
}

#[derive(Clone, Debug)]
struct Setup {
    members: Vec<&'static str>,
    watches: Vec<WatchSpec>,
}

/// Runs one case on a fresh server.
fn run(setup: &Setup, ops: &[Op]) -> Result<(), TestCaseError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let result: Result<(), String> = runtime.block_on(async {
        let mut ctx = Ctx::start().await;
        let outcome = run_on(&mut ctx, setup, ops).await;
        ctx.stop().await;
        outcome
    });
    result.map_err(TestCaseError::fail)
}

async fn run_on(ctx: &mut Ctx, setup: &Setup, ops: &[Op]) -> Result<(), String> {
    ctx.trade
        .put_group(common::put_group(pb::PartnerGroup {
            name: GROUP.into(),
            members: setup.members.iter().map(|m| m.to_string()).collect(),
            ..Default::default()
        }))
        .await
        .map_err(|s| format!("PutGroup failed: {s:?}"))?;
    let mut model = Model {
        records: Records::new(),
        group: setup.members.iter().copied().collect(),
        watches: Vec::new(),
    };
    for (i, spec) in setup.watches.iter().enumerate() {
        let name = format!("watch {}", i + 1);
        let watch = ctx
            .milestones
            .create_watch(common::create(spec.to_pb(&name)))
            .await
            .map_err(|s| format!("CreateWatch {spec:?} failed: {s:?}"))?
            .into_inner()
            .watch
            .ok_or("CreateWatch answered without the watch")?;
        model.watches.push(ModelWatch {
            id: watch.id,
            name,
            spec: spec.clone(),
            holder: None,
        });
    }
    model.watches.sort_by(|a, b| a.id.cmp(&b.id));
    let mut applied = Vec::new();
    let mut outcome = Ok(());
    for op in ops {
        match apply(ctx, &mut model, op).await {
            Ok(a) => applied.push(a),
            Err(e) => {
                outcome = Err(e);
                break;
            }
        }
    }
    if outcome.is_ok() {
        outcome = match list_events(ctx).await {
            Ok((events, head)) => check(&model, &applied, &events, head),
            Err(e) => Err(e),
        };
    }
    outcome.map_err(|e| {
        let mut s = format!("{e}\n\nwatches:\n");
        for w in &model.watches {
            s += &format!("  {} {:?}\n", w.id, w.spec);
        }
        s += &format!(
            "initial group {:?}\noperations (model state after each):\n",
            setup.members
        );
        for (i, a) in applied.iter().enumerate() {
            s += &format!("  op {i:>2}: {}\n          {}\n", a.text, a.state);
            for ev in &a.events {
                s += &format!("          => {ev:?}\n");
            }
        }
        s
    })
}

// ---------------------------------------------------------------------------
// Strategies

fn value_strategy() -> impl Strategy<Value = i128> {
    // Halves of a dollar from 0 to 6.5.
    (0i128..=13).prop_map(|halves| halves * NANOS / 2)
}

fn key_strategy() -> impl Strategy<Value = Key> {
    (select(&PAIRS[..]), select(&FLOWS[..]), select(&PERIODS[..])).prop_map(
        |((reporter, partner), flow, period)| Key {
            reporter,
            partner,
            flow,
            period,
        },
    )
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => prop::collection::vec((key_strategy(), value_strategy()), 1..=4).prop_map(Op::Put),
        3 => (any::<Index>(), value_strategy()).prop_map(|(i, v)| Op::Revise(i, v)),
        2 => any::<Index>().prop_map(Op::Delete),
        2 => (
            any::<Index>(),
            prop::collection::vec((select(&FLOWS[..]), value_strategy()), 1..=3)
        )
            .prop_map(|(i, flows)| Op::Siblings(i, flows)),
        1 => subsequence(&COUNTRIES[..], 1..=4).prop_map(Op::Group),
        1 => Just(Op::Restart),
    ]
}

fn halves(list: Vec<i128>) -> Vec<i128> {
    list.into_iter().map(|h| h * NANOS / 2).collect()
}

fn setup_strategy() -> impl Strategy<Value = Setup> {
    // CHN ↔ GRP_A, trade volume, record highs.
    let volume = (
        subsequence(&VOLUME_THRESHOLDS[..], 1..=2).prop_shuffle(),
        prop::option::weighted(0.7, 1..=3u32),
        subsequence(&GROWTH_THRESHOLDS[..], 0..=2).prop_shuffle(),
    )
        .prop_map(|(t, rank_top, growth)| WatchSpec {
            reporters: vec!["CHN"],
            partners: Partners::Group,
            flows: Vec::new(),
            thresholds: halves(t),
            record_high: true,
            rank_top,
            growth,
        });
    // Named flows, over the group or not.
    let flows = (
        select(vec![vec!["CHN"], vec!["KAZ"], vec!["CHN", "KAZ"]]),
        select(vec![
            Partners::Group,
            Partners::Group,
            Partners::Countries(vec!["KGZ", "DEU"]),
            Partners::All,
        ]),
        prop_oneof![3 => Just(vec![Flow::Export]), 1 => Just(vec![Flow::Export, Flow::Import])],
        subsequence(&FLOW_THRESHOLDS[..], 1..=1),
        any::<bool>(),
    )
        .prop_map(|(reporters, partners, flows, t, record_high)| WatchSpec {
            reporters,
            partners,
            flows,
            thresholds: halves(t),
            record_high,
            rank_top: None,
            growth: Vec::new(),
        });
    (
        subsequence(&COUNTRIES[..3], 1..=3),
        volume,
        prop::option::weighted(0.7, flows),
    )
        .prop_map(|(members, volume, flows)| Setup {
            members,
            watches: std::iter::once(volume).chain(flows).collect(),
        })
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(48),
        // Every case starts a server: bound the shrinking, and write no
        // regression files into the source tree.
        max_shrink_iters: 2000,
        max_shrink_time: 120_000,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn milestones_match_a_brute_force_model(
        setup in setup_strategy(),
        ops in prop::collection::vec(op_strategy(), 1..40),
    ) {
        run(&setup, &ops)?;
    }
}

// ---------------------------------------------------------------------------
// Server bugs the property found (at c4da050), as minimal cases. They were
// fixed while this file was written (evaluate.rs, writer.rs and
// store/mod.rs), so they run as regression tests.

/// A record of CHN's exports to KAZ in `period`.
fn export(period: &str, units: i64, nanos: i32) -> pb::TradeRecord {
    let key = Key {
        reporter: "CHN",
        partner: "KAZ",
        flow: Flow::Export,
        period: PERIODS.into_iter().find(|p| *p == period).unwrap(),
    };
    key.record(i128::from(units) * NANOS + i128::from(nanos))
}

/// `DeleteRecordResponse.sequence` is documented as "the sequence number of
/// the event recording the deletion"; when the deletion also reached a
/// milestone the server answered the sequence of the write's last event (the
/// milestone), not the RecordStored before it (`Store::delete_record`
/// returned `range.last`).
#[tokio::test]
async fn delete_answers_the_sequence_of_the_deletion_event() {
    let mut ctx = Ctx::start().await;
    let watch = WatchSpec {
        reporters: vec!["CHN"],
        partners: Partners::Countries(vec!["KAZ"]),
        flows: vec![Flow::Export],
        thresholds: vec![NANOS],
        record_high: false,
        rank_top: None,
        growth: Vec::new(),
    };
    ctx.milestones
        .create_watch(common::create(watch.to_pb("exports")))
        .await
        .unwrap();
    let record = export("2021", 2, 0);
    let key = Key::from_pb(&common::key_of(&record)).unwrap();
    // 1: RecordStored (created), 2: ThresholdCrossed UP.
    ctx.trade.put_records(common::put(vec![record])).await.unwrap();
    // 3: RecordStored (deleted), 4: ThresholdCrossed DOWN.
    let deleted = ctx
        .trade
        .delete_record(common::delete(key.to_pb()))
        .await
        .unwrap()
        .into_inner();
    let (events, head) = list_events(&mut ctx).await.unwrap();
    ctx.stop().await;
    assert_eq!(head, 4);
    let kinds: Vec<Ev> = events.iter().map(|e| got_of(e).unwrap().ev).collect();
    assert!(
        matches!(
            kinds[2],
            Ev::Stored {
                change: RecordChange::Deleted,
                ..
            }
        ),
        "{kinds:?}"
    );
    assert_eq!(
        deleted.sequence,
        3,
        "the deletion is recorded by event 3; event {} is {:?}",
        deleted.sequence,
        kinds.get(deleted.sequence as usize - 1)
    );
}

/// The cause of a RecordHigh depended on the order of the records in an
/// atomic batch. With exports of 5 (2021) and 1 (2022), one batch adds a
/// turnover figure of 0.5 for 2021 (from then on 2021's trade volume) and
/// revises 2021's exports to 6; 2022 takes the record. With the revision
/// first the event said REVISION, with the turnover first NEW_DATA: the
/// server weighed each record against the ones before it in the batch, and
/// by then the new turnover hid the exports, so their revision did not
/// count. A write is one atomic change and it revised a record of the
/// series: REVISION in both orders.
#[tokio::test]
async fn record_high_cause_does_not_depend_on_the_order_of_a_batch() {
    let mut causes = Vec::new();
    for turnover_first in [false, true] {
        let mut ctx = Ctx::start().await;
        let watch = WatchSpec {
            reporters: vec!["CHN"],
            partners: Partners::Countries(vec!["KAZ"]),
            flows: Vec::new(),
            thresholds: Vec::new(),
            record_high: true,
            rank_top: None,
            growth: Vec::new(),
        };
        ctx.milestones
            .create_watch(common::create(watch.to_pb("volume")))
            .await
            .unwrap();
        ctx.trade
            .put_records(common::put(vec![export("2021", 5, 0), export("2022", 1, 0)]))
            .await
            .unwrap();
        let turnover = pb::TradeRecord {
            flow: Flow::Turnover.into(),
            ..export("2021", 0, 500_000_000)
        };
        let revision = export("2021", 6, 0);
        let batch = if turnover_first {
            vec![turnover, revision]
        } else {
            vec![revision, turnover]
        };
        ctx.trade.put_records(common::put(batch)).await.unwrap();
        let (events, _) = list_events(&mut ctx).await.unwrap();
        ctx.stop().await;
        let highs: Vec<Ev> = events
            .iter()
            .map(|e| got_of(e).unwrap().ev)
            .filter(|e| matches!(e, Ev::High { period, .. } if period == "2022"))
            .collect();
        let [Ev::High { cause, .. }] = highs.as_slice() else {
            panic!("one RecordHigh for 2022: {highs:?}")
        };
        causes.push((turnover_first, *cause));
    }
    assert_eq!(
        causes,
        [(false, Cause::Revision), (true, Cause::Revision)],
        "(turnover first, cause)"
    );
}

/// Found while breaking the model on purpose (ties handed over): a year
/// that only tied another was announced as a record high when none of the
/// tied years held the record before — two equal years arriving in one
/// batch, or the holder deleted, leaving two equal years that never held it.
/// DESIGN.md §4: a record high is "strictly greater than every other
/// period's value" (ties keep the earlier holder, but here there is none);
/// the server's headline read "hit a record 2.5 USD in 2021, above 2022's
/// 2.5 USD". (`evaluate` made the earliest of the tied years the holder and
/// announced every change of holder.)
#[tokio::test]
async fn a_year_that_only_ties_is_no_record_high() {
    let watch = WatchSpec {
        reporters: vec!["CHN"],
        partners: Partners::Countries(vec!["KAZ"]),
        flows: vec![Flow::Export],
        thresholds: Vec::new(),
        record_high: true,
        rank_top: None,
        growth: Vec::new(),
    };
    // Each step is a write; returns the RecordHighs stored.
    async fn highs(
        watch: &WatchSpec,
        steps: Vec<Vec<pb::TradeRecord>>,
        delete: Option<pb::TradeRecord>,
    ) -> Vec<String> {
        let mut ctx = Ctx::start().await;
        ctx.milestones
            .create_watch(common::create(watch.to_pb("exports")))
            .await
            .unwrap();
        for records in steps {
            ctx.trade.put_records(common::put(records)).await.unwrap();
        }
        if let Some(record) = delete {
            ctx.trade
                .delete_record(common::delete(common::key_of(&record)))
                .await
                .unwrap();
        }
        let (events, _) = list_events(&mut ctx).await.unwrap();
        ctx.stop().await;
        events
            .iter()
            .filter_map(|e| match &e.kind {
                Some(pb::event::Kind::RecordHigh(h)) => {
                    Some(format!("{:?}: {}", got_of(e).unwrap().ev, h.headline))
                }
                _ => None,
            })
            .collect()
    }
    // Two equal years in one batch: neither is strictly greater.
    let batch = highs(
        &watch,
        vec![vec![
            export("2021", 2, 500_000_000),
            export("2022", 2, 500_000_000),
        ]],
        None,
    )
    .await;
    // 2021 holds the record over 2022 and 2023, which tie; 2021 is deleted.
    let deleted = highs(
        &watch,
        vec![
            vec![export("2021", 5, 0)],
            vec![export("2022", 3, 0)],
            vec![export("2023", 3, 0)],
        ],
        Some(export("2021", 5, 0)),
    )
    .await;
    assert!(
        batch.is_empty() && deleted.is_empty(),
        "no year is strictly greater than every other, yet:\n{batch:#?}\n{deleted:#?}"
    );
}
