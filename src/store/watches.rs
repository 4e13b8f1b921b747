//! Watches in the store: their definitions and series states, encoded; and
//! a series computed from the records or rollups.

use std::collections::{BTreeMap, BTreeSet};

use prost::Message;
use prost_types::Timestamp;

use super::codec::{
    BucketValue, MemberTally, PeriodTally, SeriesValue, WatchValue, decode_amount, encode_amount,
    rank_by_code, rank_by_of,
};
use super::facts::{Fact, FactScan, FactSource, scan_facts};
use crate::domain::{
    Bucket, Commodity, CommodityFilter, CommodityLevel, CountryCode, CurrencyCode, Flow, Granularity,
    GroupName, Measure, PartnerGroup, Party, Period, RankBy, RankRule, SeriesSpec, WatchDef, WatchId,
    WatchRules,
};
use crate::error::{Error, Result};
use crate::milestones::Series;

pub const NS_WATCH: u8 = b'W';
pub const NS_WATCH_STATE: u8 = b'S';
pub const META_NEXT_WATCH: &[u8] = b"\x00next_watch_id";

pub fn watch_key(id: &WatchId) -> Vec<u8> {
    [&[NS_WATCH][..], id.as_str().as_bytes()].concat()
}

pub fn state_key(id: &WatchId) -> Vec<u8> {
    [&[NS_WATCH_STATE][..], id.as_str().as_bytes()].concat()
}

fn granularity_code(g: Granularity) -> i32 {
    match g {
        Granularity::Year => 1,
        Granularity::Quarter => 2,
        Granularity::Month => 3,
    }
}

pub fn encode_watch(def: &WatchDef, created_at: Timestamp) -> WatchValue {
    let party = |p: &Party| p.to_string();
    let (commodities, commodity_level, commodity_prefix) = match &def.spec.commodities {
        CommodityFilter::Exact(set) => (set.iter().map(ToString::to_string).collect(), 0, String::new()),
        CommodityFilter::Level(level, prefix) => {
            let code = match level {
                CommodityLevel::Total => 1,
                CommodityLevel::Hs2 => 2,
                CommodityLevel::Hs4 => 4,
                CommodityLevel::Hs6 => 6,
            };
            (Vec::new(), code, prefix.clone())
        }
    };
    WatchValue {
        name: def.name.clone(),
        reporters: def.reporters.iter().map(party).collect(),
        partners: def.partners.iter().map(party).collect(),
        flows: match &def.spec.measure {
            Measure::Volume => Vec::new(),
            Measure::Flows(flows) => flows.iter().map(|f| i32::from(f.code())).collect(),
        },
        commodities,
        commodity_level,
        commodity_prefix,
        currency: def.spec.currency.to_string(),
        period_from: def.spec.from.to_string(),
        period_to: def.spec.to.to_string(),
        granularity: granularity_code(def.spec.granularity),
        thresholds: def
            .rules
            .thresholds
            .iter()
            .map(|t| encode_amount(Some(*t)))
            .collect(),
        record_high: def.rules.record_high,
        created_at: Some(created_at),
        rank_by: rank_by_code(def.rules.rank.map(|r| r.by)),
        rank_top: def.rules.rank.map_or(0, |r| r.top),
        growth_thresholds_bp: def.rules.growth_thresholds.clone(),
        year_to_date: def.rules.year_to_date,
    }
}

/// Rebuilds a watch, expanding its groups from `groups`.
pub fn decode_watch(
    id: WatchId,
    value: &WatchValue,
    groups: &BTreeMap<GroupName, PartnerGroup>,
) -> Result<(WatchDef, Timestamp)> {
    let mut def = decode_watch_as_named(id, value)?;
    def.spec = def.respecify(groups).ok_or_else(|| {
        Error::Corrupt(format!(
            "watch {}: names a partner group that does not exist",
            def.id
        ))
    })?;
    Ok((def, value.created_at.unwrap_or_default()))
}

/// Rebuilds a watch with its parties as named, its series over every
/// reporter and partner.
pub fn decode_watch_as_named(id: WatchId, value: &WatchValue) -> Result<WatchDef> {
    let corrupt = |what: &str| Error::Corrupt(format!("watch {id}: {what}"));
    let parties = |list: &[String]| -> Result<Vec<Party>> {
        list.iter()
            .map(|p| Party::parse(p).map_err(|_| corrupt("party")))
            .collect()
    };
    let measure = if value.flows.is_empty() {
        Measure::Volume
    } else {
        let flows: Result<BTreeSet<Flow>> = value
            .flows
            .iter()
            .map(|f| Flow::from_code(*f).map_err(|_| corrupt("flow")))
            .collect();
        Measure::Flows(flows?)
    };
    let commodities = match value.commodity_level {
        0 => CommodityFilter::Exact(
            value
                .commodities
                .iter()
                .map(|c| Commodity::parse(c).map_err(|_| corrupt("commodity")))
                .collect::<Result<_>>()?,
        ),
        level => {
            let level = match level {
                1 => CommodityLevel::Total,
                2 => CommodityLevel::Hs2,
                4 => CommodityLevel::Hs4,
                6 => CommodityLevel::Hs6,
                _ => return Err(corrupt("commodity level")),
            };
            CommodityFilter::Level(level, value.commodity_prefix.clone())
        }
    };
    let from = Period::parse(&value.period_from).map_err(|_| corrupt("period_from"))?;
    let to = Period::parse(&value.period_to).map_err(|_| corrupt("period_to"))?;
    let granularity = match value.granularity {
        1 => Granularity::Year,
        2 => Granularity::Quarter,
        3 => Granularity::Month,
        _ => return Err(corrupt("granularity")),
    };
    Ok(WatchDef {
        id: id.clone(),
        name: value.name.clone(),
        reporters: parties(&value.reporters)?,
        partners: parties(&value.partners)?,
        spec: SeriesSpec {
            reporters: None,
            partners: None,
            measure,
            commodities,
            currency: CurrencyCode::parse(&value.currency).map_err(|_| corrupt("currency"))?,
            frequency: from.frequency(),
            granularity,
            from,
            to,
        },
        rules: WatchRules {
            thresholds: value
                .thresholds
                .iter()
                .map(|t| decode_amount(t).ok_or_else(|| corrupt("threshold")))
                .collect::<Result<_>>()?,
            record_high: value.record_high,
            rank: match value.rank_by {
                0 => None,
                code => Some(RankRule {
                    by: rank_by_of(code).ok_or_else(|| corrupt("rank rule"))?,
                    top: value.rank_top,
                }),
            },
            growth_thresholds: value.growth_thresholds_bp.clone(),
            year_to_date: value.year_to_date,
        },
    })
}

pub fn encode_series(series: &Series) -> SeriesValue {
    let bucket = |b: &Bucket| BucketValue {
        year: u32::from(b.year),
        sub: u32::from(b.sub),
    };
    SeriesValue {
        periods: series
            .values
            .iter()
            .map(|(b, (nanos, count))| PeriodTally {
                bucket: Some(bucket(b)),
                nanos: encode_amount(Some(*nanos)),
                count: *count,
            })
            .collect(),
        holder: series.holder.as_ref().map(bucket),
        members: series
            .members
            .iter()
            .flat_map(|(b, members)| {
                members.iter().map(|(member, (nanos, count))| MemberTally {
                    bucket: Some(bucket(b)),
                    member: member.to_string(),
                    nanos: encode_amount(Some(*nanos)),
                    count: *count,
                })
            })
            .collect(),
    }
}

pub fn decode_series(value: &SeriesValue, granularity: Granularity) -> Result<Series> {
    let bucket = |b: &BucketValue| -> Result<Bucket> {
        let year = u16::try_from(b.year).map_err(|_| Error::Corrupt("series bucket".into()))?;
        let sub = u8::try_from(b.sub).map_err(|_| Error::Corrupt("series bucket".into()))?;
        Ok(Bucket {
            year,
            sub,
            granularity,
        })
    };
    let mut values = BTreeMap::new();
    for p in &value.periods {
        let b = bucket(&p.bucket.unwrap_or_default())?;
        let nanos = decode_amount(&p.nanos).ok_or_else(|| Error::Corrupt("series value".into()))?;
        values.insert(b, (nanos, p.count));
    }
    let mut members: BTreeMap<Bucket, BTreeMap<CountryCode, (i128, i64)>> = BTreeMap::new();
    for m in &value.members {
        let b = bucket(&m.bucket.unwrap_or_default())?;
        let member = CountryCode::parse(&m.member).map_err(|_| Error::Corrupt("series member".into()))?;
        let nanos = decode_amount(&m.nanos).ok_or_else(|| Error::Corrupt("series member value".into()))?;
        members.entry(b).or_default().insert(member, (nanos, m.count));
    }
    Ok(Series {
        values,
        holder: value.holder.as_ref().map(bucket).transpose()?,
        members,
    })
}

/// A watch's series state as stored under its `S` key.
pub fn decode_series_bytes(bytes: &[u8], def: &WatchDef) -> Result<Series> {
    let value =
        SeriesValue::decode(bytes).map_err(|e| Error::Corrupt(format!("watch {} state: {e}", def.id)))?;
    decode_series(&value, def.spec.granularity)
}

/// Where a series is read from: the coarsest source that still tells its
/// reporters and partners apart (and the members of a split).
pub fn source_for(spec: &SeriesSpec, split: Option<RankBy>) -> FactSource {
    if spec.partners.is_some() || split == Some(RankBy::Partner) {
        FactSource::Records
    } else if spec.reporters.is_some() || split == Some(RankBy::Reporter) {
        FactSource::ReporterRollup
    } else {
        FactSource::WorldRollup
    }
}

/// Every period of a series as it stands in the store; with `split`, also
/// per partner (or reporter).
pub fn series_values(db: &sled::Db, spec: &SeriesSpec, split: Option<RankBy>) -> Result<Series> {
    let mut series = Series::default();
    let scan = FactScan {
        source: source_for(spec, split),
        spec,
        from: spec.from,
    };
    scan_facts(db, None, &scan, &mut |fact: Fact| {
        let bucket = spec.bucket(fact.period);
        let v = series.values.entry(bucket).or_default();
        v.0 += fact.tally.nanos;
        v.1 += fact.tally.count;
        let member = match split {
            Some(RankBy::Partner) => fact.partner,
            Some(RankBy::Reporter) => fact.reporter,
            None => None,
        };
        if let Some(member) = member {
            let m = series
                .members
                .entry(bucket)
                .or_default()
                .entry(member)
                .or_default();
            m.0 += fact.tally.nanos;
            m.1 += fact.tally.count;
        }
    })?;
    series.values.retain(|_, v| v.1 > 0);
    series.members.retain(|_, m| {
        m.retain(|_, v| v.1 > 0);
        !m.is_empty()
    });
    Ok(series)
}

pub fn decode_watch_entry(
    key: &[u8],
    value: &[u8],
    groups: &BTreeMap<GroupName, PartnerGroup>,
) -> Result<(WatchDef, Timestamp)> {
    let id = std::str::from_utf8(key.get(1..).unwrap_or_default())
        .ok()
        .and_then(|s| WatchId::parse(s).ok())
        .ok_or_else(|| Error::Corrupt(format!("bad watch key {key:02x?}")))?;
    let value = WatchValue::decode(value).map_err(|e| Error::Corrupt(format!("watch {id}: {e}")))?;
    decode_watch(id, &value, groups)
}
