//! Reading the sums aggregates are built from, from records or rollups.

use std::collections::BTreeSet;

use super::Store;
use super::blocks;
use super::keys::{self, RECORD_KEY_LEN, record_offsets as at};
use super::rollup::Tally;
use super::scan::{Component, skip_scan};
use super::series_cache::{Level, SERIES_PREFIX_LEN, SeriesCache, SeriesPrefix};
use crate::core::volume::volume;
use crate::domain::{Commodity, CommodityFilter, CountryCode, Flow, Measure, Period, SeriesSpec};
use crate::error::{Error, Result};

/// Which stored entries answer a question.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FactSource {
    /// Individual records: needed whenever partners matter.
    Records,
    /// Per-reporter sums over partners (partner WLD left out).
    ReporterRollup,
    /// Sums over reporters and partners (partner WLD left out).
    WorldRollup,
}

/// The part of an aggregate question the store answers.
pub struct FactScan<'a> {
    pub source: FactSource,
    pub spec: &'a SeriesSpec,
    /// Where reading starts: the spec's `from`, or earlier (a year before,
    /// for year-over-year comparisons).
    pub from: Period,
}

/// A sum at the finest grain the source holds.
#[derive(Debug, Clone, Copy)]
pub struct Fact {
    /// `None` when the source sums over reporters.
    pub reporter: Option<CountryCode>,
    /// `None` when the source sums over partners.
    pub partner: Option<CountryCode>,
    /// `None` for trade volume.
    pub flow: Option<Flow>,
    pub commodity: Commodity,
    pub period: Period,
    pub tally: Tally,
}

fn country_component(set: Option<&BTreeSet<CountryCode>>) -> Component {
    match set {
        Some(set) => Component::values(3, set.iter().map(|c| c.as_bytes().to_vec())),
        None => Component::between(b"AAA".to_vec(), b"ZZZ".to_vec()),
    }
}

fn commodity_component(filter: &CommodityFilter) -> Component {
    match filter {
        CommodityFilter::Exact(set) => {
            Component::values(7, set.iter().map(|c| keys::commodity_bytes(*c).to_vec()))
        }
        CommodityFilter::Level(level, prefix) => {
            let mut start = vec![keys::level_byte(*level)];
            start.extend_from_slice(prefix.as_bytes());
            starting_with(start, 7)
        }
    }
}

/// Every `width`-byte value that starts with `start`.
fn starting_with(start: Vec<u8>, width: usize) -> Component {
    let mut lo = start;
    let mut hi = lo.clone();
    lo.resize(width, 0);
    hi.resize(width, 0xff);
    Component::between(lo, hi)
}

/// The commodity levels a filter reads, each as its key byte, in order.
fn commodity_levels(filter: &CommodityFilter) -> Vec<u8> {
    match filter {
        CommodityFilter::Exact(set) => {
            let mut levels: Vec<u8> = set.iter().map(|c| keys::level_byte(c.level())).collect();
            levels.sort_unstable();
            levels.dedup();
            levels
        }
        CommodityFilter::Level(level, _) => vec![keys::level_byte(*level)],
    }
}

/// The components of a series block's key below its reporter (see
/// [`blocks`]): commodity level, partner, code.
fn block_components(reporters: Component, partners: Component, filter: &CommodityFilter) -> [Component; 4] {
    let levels = Component::values(1, commodity_levels(filter).into_iter().map(|l| vec![l]));
    let codes = match filter {
        // Codes of one level cannot be taken for another's: their digit
        // counts differ.
        CommodityFilter::Exact(set) => {
            Component::values(6, set.iter().map(|c| keys::commodity_bytes(*c)[1..].to_vec()))
        }
        CommodityFilter::Level(_, prefix) => starting_with(prefix.as_bytes().to_vec(), 6),
    };
    [reporters, levels, partners, codes]
}

fn corrupt(key: &[u8]) -> Error {
    Error::Corrupt(format!("bad aggregate key {key:02x?}"))
}

impl Store {
    /// Visits the facts a question needs, in key order.
    pub fn scan_facts(&self, scan: &FactScan<'_>, visit: &mut dyn FnMut(Fact)) -> Result<()> {
        scan_facts(&self.db, Some(&self.series), scan, visit)
    }
}

/// Visits the facts a question needs, in key order; records of series named
/// in full (reporters, partners and commodities all listed) come through
/// `cache` when there is one.
pub fn scan_facts(
    db: &sled::Db,
    cache: Option<&SeriesCache>,
    scan: &FactScan<'_>,
    visit: &mut dyn FnMut(Fact),
) -> Result<()> {
    let spec = scan.spec;
    let period = Component::between(
        keys::period_bytes(scan.from).to_vec(),
        keys::period_bytes(spec.to).to_vec(),
    );
    let commodity = commodity_component(&spec.commodities);
    let currency = Component::values(3, [spec.currency.as_bytes().to_vec()]);
    match scan.source {
        FactSource::Records => {
            let in_periods = periods(scan);
            let from = keys::period_bytes(scan.from);
            let before_periods = |k: &[u8; RECORD_KEY_LEN]| k[at::PERIOD..at::FLOW] < from[..];
            let cached = match cache {
                Some(cache) => series_prefixes(db, cache, spec)?.map(|prefixes| (cache, prefixes)),
                None => None,
            };
            match cached {
                Some((cache, prefixes)) => scan_record_facts(scan, visit, &mut |on_record| {
                    for prefix in &prefixes {
                        let records = cache.records(db, prefix)?;
                        // A series' records are in key order, by period
                        // first: the periods asked for are one run of them.
                        let start = records.partition_point(|r| before_periods(&r.key));
                        for record in &records[start..] {
                            if !in_periods(&record.key) {
                                break;
                            }
                            on_record(&record.key, record.nanos)?;
                        }
                    }
                    Ok(())
                }),
                _ => {
                    let components = block_components(
                        country_component(spec.reporters.as_ref()),
                        country_component(spec.partners.as_ref()),
                        &spec.commodities,
                    );
                    scan_record_facts(scan, visit, &mut |on_record| {
                        skip_scan(db, &[blocks::NS_SERIES], &components, &mut |block, value| {
                            for record in blocks::amounts(block, value)? {
                                if in_periods(&record.key) {
                                    on_record(&record.key, record.nanos)?;
                                }
                            }
                            Ok(())
                        })
                    })
                }
            }
        }
        FactSource::ReporterRollup => {
            let components = [
                country_component(spec.reporters.as_ref()),
                currency,
                commodity,
                period,
            ];
            skip_scan(db, &[keys::NS_ROLLUP_REPORTER], &components, &mut |k, v| {
                let reporter = CountryCode::from_stored([k[1], k[2], k[3]]).ok_or_else(|| corrupt(k))?;
                rollup_fact(scan, k, v, Some(reporter), 7, 14, 18, visit)
            })
        }
        FactSource::WorldRollup => {
            let components = [currency, commodity, period];
            skip_scan(db, &[keys::NS_ROLLUP_WORLD], &components, &mut |k, v| {
                rollup_fact(scan, k, v, None, 4, 11, 15, visit)
            })
        }
    }
}

/// Whether a record key's period is one `scan` reads: encoded periods
/// compare as big-endian numbers.
fn periods(scan: &FactScan<'_>) -> impl Fn(&[u8; RECORD_KEY_LEN]) -> bool + use<> {
    let number = u32::from_be_bytes;
    let range = number(keys::period_bytes(scan.from))..=number(keys::period_bytes(scan.spec.to));
    move |k| {
        range.contains(&number([
            k[at::PERIOD],
            k[at::PERIOD + 1],
            k[at::PERIOD + 2],
            k[at::PERIOD + 3],
        ]))
    }
}

/// Most series a question reads through the cache; one over more (long
/// lists of reporters, partners and commodities, every HS6 code of many
/// pairs) is read with the skip scan, which does not list them first.
const MAX_CACHED_SERIES: usize = 4096;

/// The keys of every series a question reads, in key order: the reporters,
/// partners and commodities it names, and where it leaves them open (every
/// partner of a reporter, a commodity level) the ones the store holds, as
/// the cache lists them. `None` when they are more than
/// [`MAX_CACHED_SERIES`].
fn series_prefixes(
    db: &sled::Db,
    cache: &SeriesCache,
    spec: &SeriesSpec,
) -> Result<Option<Vec<SeriesPrefix>>> {
    let named = |set: &BTreeSet<CountryCode>| -> Vec<[u8; 3]> { set.iter().map(|c| c.as_bytes()).collect() };
    let reporters = match &spec.reporters {
        Some(set) => named(set),
        None => countries(&cache.children(db, Level::Reporters)?),
    };
    let levels = commodity_levels(&spec.commodities);
    let mut prefixes = Vec::new();
    for reporter in reporters {
        let partners = match &spec.partners {
            Some(set) => named(set),
            None => {
                // The partners with series at the levels asked for.
                let mut all = Vec::new();
                for &level in &levels {
                    all.extend(countries(&cache.children(db, Level::Partners(reporter, level))?));
                }
                if levels.len() > 1 {
                    all.sort_unstable();
                    all.dedup();
                }
                // Trade with the world is left out where partners are not
                // named.
                all.retain(|p| *p != CountryCode::WORLD.as_bytes());
                all
            }
        };
        for partner in partners {
            let commodities: Vec<[u8; 7]> = match &spec.commodities {
                CommodityFilter::Exact(set) => set.iter().map(|c| keys::commodity_bytes(*c)).collect(),
                CommodityFilter::Level(level, digits) => {
                    let level = keys::level_byte(*level);
                    cache
                        .children(db, Level::Commodities(reporter, level, partner))?
                        .chunks_exact(6)
                        .filter(|code| code.starts_with(digits.as_bytes()))
                        .map(|code| {
                            let mut commodity = [level, 0, 0, 0, 0, 0, 0];
                            commodity[1..].copy_from_slice(code);
                            commodity
                        })
                        .collect()
                }
            };
            for commodity in commodities {
                if prefixes.len() == MAX_CACHED_SERIES {
                    return Ok(None);
                }
                let mut prefix = [0u8; SERIES_PREFIX_LEN];
                prefix[0] = keys::NS_RECORD;
                prefix[1..4].copy_from_slice(&reporter);
                prefix[4..7].copy_from_slice(&partner);
                prefix[7..14].copy_from_slice(&commodity);
                prefixes.push(prefix);
            }
        }
    }
    prefixes.sort_unstable();
    Ok(Some(prefixes))
}

/// Three-byte country codes, back to back, as a list.
fn countries(children: &[u8]) -> Vec<[u8; 3]> {
    children.chunks_exact(3).map(|c| [c[0], c[1], c[2]]).collect()
}

/// Called with each record's key and value.
type OnRecord<'a> = dyn FnMut(&[u8], i128) -> Result<()> + 'a;

/// Turns the records `records` reads (in key order, each with its value)
/// into facts: the flows asked for, or trade volume per key.
fn scan_record_facts(
    scan: &FactScan<'_>,
    visit: &mut dyn FnMut(Fact),
    records: &mut dyn FnMut(&mut OnRecord<'_>) -> Result<()>,
) -> Result<()> {
    let spec = scan.spec;
    let currency = spec.currency.as_bytes();
    // Volume needs every flow of one reporter–partner–commodity–period
    // together; they are adjacent in key order.
    let mut group: Option<VolumeGroup> = None;
    // Records come series by series: its reporter, partner and commodity
    // are decoded once, at its first record.
    let mut series: Option<SeriesParts> = None;
    let flush = |group: &mut Option<VolumeGroup>, visit: &mut dyn FnMut(Fact)| {
        if let Some((_, mut fact, [t, x, m])) = group.take() {
            fact.tally = volume(t, x, m);
            if fact.tally.count > 0 {
                visit(fact);
            }
        }
    };
    records(&mut |k, nanos| {
        if k.get(at::CURRENCY..at::CURRENCY + 3) != Some(&currency[..]) {
            return Ok(());
        }
        // Records of flows not summed are passed over before decoding.
        if let Measure::Flows(flows) = &spec.measure
            && !flows.iter().any(|f| Some(&f.code()) == k.get(at::FLOW))
        {
            return Ok(());
        }
        let parts = match &series {
            Some(parts) if k.first_chunk::<SERIES_PREFIX_LEN>() == Some(&parts.prefix) => parts,
            _ => series.insert(SeriesParts::decode(k)?),
        };
        if spec.partners.is_none() && parts.partner == CountryCode::WORLD {
            return Ok(());
        }
        let (period, flow) = keys::decode_period(&k[at::PERIOD..at::FLOW])
            .zip(Flow::from_code(i32::from(k[at::FLOW])).ok())
            .ok_or_else(|| corrupt(k))?;
        let fact = Fact {
            reporter: Some(parts.reporter),
            partner: Some(parts.partner),
            flow: Some(flow),
            commodity: parts.commodity,
            period,
            tally: Tally { nanos, count: 1 },
        };
        match &spec.measure {
            Measure::Flows(flows) => {
                if flows.contains(&flow) {
                    visit(fact);
                }
            }
            Measure::Volume => {
                let mut base = [0u8; at::FLOW - at::REPORTER];
                base.copy_from_slice(&k[at::REPORTER..at::FLOW]);
                if group.as_ref().is_none_or(|(b, _, _)| *b != base) {
                    flush(&mut group, visit);
                    group = Some((base, Fact { flow: None, ..fact }, [None; 3]));
                }
                if let Some((_, _, flows)) = group.as_mut() {
                    match flow {
                        Flow::Turnover => flows[0] = Some(nanos),
                        Flow::Export => flows[1] = Some(nanos),
                        Flow::Import => flows[2] = Some(nanos),
                        Flow::ReExport | Flow::ReImport => {}
                    }
                }
            }
        }
        Ok(())
    })?;
    flush(&mut group, visit);
    Ok(())
}

/// Key bytes shared by one volume's flows, its fact, and its turnover,
/// export and import values.
type VolumeGroup = ([u8; at::FLOW - at::REPORTER], Fact, [Option<i128>; 3]);

/// What the records of one series share: the start of their keys, and
/// its reporter, partner and commodity decoded.
struct SeriesParts {
    prefix: SeriesPrefix,
    reporter: CountryCode,
    partner: CountryCode,
    commodity: Commodity,
}

impl SeriesParts {
    fn decode(k: &[u8]) -> Result<SeriesParts> {
        let key = keys::decode_record_key(k)?;
        let mut prefix = [0u8; SERIES_PREFIX_LEN];
        prefix.copy_from_slice(&k[..SERIES_PREFIX_LEN]);
        Ok(SeriesParts {
            prefix,
            reporter: key.reporter,
            partner: key.partner,
            commodity: key.commodity,
        })
    }
}

/// One rollup entry as a fact, if its flow is wanted.
#[allow(clippy::too_many_arguments)]
fn rollup_fact(
    scan: &FactScan<'_>,
    k: &[u8],
    v: &[u8],
    reporter: Option<CountryCode>,
    commodity_at: usize,
    period_at: usize,
    flow_at: usize,
    visit: &mut dyn FnMut(Fact),
) -> Result<()> {
    let flow_byte = *k.get(flow_at).ok_or_else(|| corrupt(k))?;
    let flow = match (&scan.spec.measure, flow_byte) {
        (Measure::Volume, keys::VOLUME_FLOW) => None,
        (Measure::Flows(flows), code) if code != keys::VOLUME_FLOW => {
            let flow = Flow::from_code(i32::from(code)).map_err(|_| corrupt(k))?;
            if !flows.contains(&flow) {
                return Ok(());
            }
            Some(flow)
        }
        _ => return Ok(()),
    };
    visit(Fact {
        reporter,
        partner: None,
        flow,
        commodity: keys::decode_commodity(&k[commodity_at..commodity_at + 7]).ok_or_else(|| corrupt(k))?,
        period: keys::decode_period(&k[period_at..period_at + 4]).ok_or_else(|| corrupt(k))?,
        tally: super::rollup::decode_tally(v).ok_or_else(|| corrupt(k))?,
    });
    Ok(())
}
