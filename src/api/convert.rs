//! Translation between protobuf messages and domain types. Parsing happens
//! here, once; errors carry the request's field paths.

use std::collections::BTreeSet;

use crate::domain::{
    Cause, CommodityLevel, CountryCode, Direction, Event, EventKind, FieldError, Frequency, GroupName,
    PartnerGroup, RankBy, RawKey, RawRecord, RawSelector, RecordKey, Selector, StoredRecord, TradeRecord,
    WriteOutcome, YtdKind,
};
use crate::error::{Error, Result, Violation};
use crate::milestones;
use crate::pb;
use crate::query::aggregate;

/// Parses the record key at `field` of a request.
pub fn parse_key(key: Option<&pb::RecordKey>, field: &str) -> Result<RecordKey> {
    let Some(key) = key else {
        return Err(Error::invalid(field, format!("{field} is required")));
    };
    RecordKey::parse(&raw_key(key), "currency")
        .map_err(|e| Error::InvalidArgument(Violation::under(field, e)))
}

fn raw_key(key: &pb::RecordKey) -> RawKey<'_> {
    RawKey {
        reporter: &key.reporter,
        partner: &key.partner,
        flow: key.flow,
        period: &key.period,
        commodity: &key.commodity,
        currency: &key.currency,
    }
}

/// Parses a batch, reporting every bad field of every record, and records
/// that repeat an earlier record's key.
pub fn parse_records(records: &[pb::TradeRecord]) -> Result<Vec<TradeRecord>> {
    if records.is_empty() {
        return Err(Error::invalid("records", "a batch needs at least one record"));
    }
    let mut violations = Vec::new();
    let mut parsed = Vec::with_capacity(records.len());
    let mut seen = std::collections::HashMap::new();
    for (i, r) in records.iter().enumerate() {
        match parse_record(r) {
            Ok(record) => {
                if let Some(first) = seen.insert(record.key, i) {
                    violations.push(Violation::new(
                        format!("records[{i}]"),
                        format!(
                            "same natural key as records[{first}] ({}); send each key once per batch",
                            record.key
                        ),
                    ));
                }
                parsed.push(record);
            }
            Err(errors) => violations.extend(Violation::under(&format!("records[{i}]"), errors)),
        }
    }
    if violations.is_empty() {
        Ok(parsed)
    } else {
        Err(Error::InvalidArgument(violations))
    }
}

fn parse_record(r: &pb::TradeRecord) -> Result<TradeRecord, Vec<FieldError>> {
    let value = r.value.clone().unwrap_or_default();
    let raw = RawRecord {
        key: RawKey {
            reporter: &r.reporter,
            partner: &r.partner,
            flow: r.flow,
            period: &r.period,
            commodity: &r.commodity,
            currency: &value.currency_code,
        },
        units: value.units,
        nanos: value.nanos,
        net_weight_kg: r.net_weight_kg,
        source: &r.source,
        released_at: r.released_at,
    };
    let mut result = TradeRecord::parse(&raw);
    if r.value.is_none()
        && let Err(errors) = &mut result
    {
        // Say what is really wrong: the whole value is missing.
        errors.retain(|e| !e.field.starts_with("value."));
        errors.push(FieldError {
            field: "value".into(),
            reason: crate::domain::Invalid::new("value is required"),
        });
    }
    result
}

pub fn record_to_pb(stored: &StoredRecord) -> pb::TradeRecord {
    stored.into()
}

pub fn money_to_pb(m: crate::domain::Money) -> pb::Money {
    m.into()
}

pub fn key_to_pb(key: &RecordKey) -> pb::RecordKey {
    key.into()
}

pub fn outcome_to_pb(outcome: WriteOutcome) -> pb::WriteOutcome {
    match outcome {
        WriteOutcome::Created => pb::WriteOutcome::Created,
        WriteOutcome::Revised => pb::WriteOutcome::Revised,
        WriteOutcome::Unchanged => pb::WriteOutcome::Unchanged,
    }
}

/// Parses a selector found at `field` of the request.
pub fn parse_selector(selector: Option<&pb::RecordSelector>, field: &str) -> Result<Selector> {
    let default = pb::RecordSelector::default();
    let s = selector.unwrap_or(&default);
    let mut violations = Vec::new();
    let commodity_level = match pb::CommodityLevel::try_from(s.commodity_level) {
        Ok(pb::CommodityLevel::Unspecified) => None,
        Ok(pb::CommodityLevel::Total) => Some(CommodityLevel::Total),
        Ok(pb::CommodityLevel::Hs2) => Some(CommodityLevel::Hs2),
        Ok(pb::CommodityLevel::Hs4) => Some(CommodityLevel::Hs4),
        Ok(pb::CommodityLevel::Hs6) => Some(CommodityLevel::Hs6),
        Err(_) => {
            violations.push(Violation::new(
                format!("{field}.commodity_level"),
                format!("{} is not a CommodityLevel", s.commodity_level),
            ));
            None
        }
    };
    let frequency = match pb::Frequency::try_from(s.frequency) {
        Ok(pb::Frequency::Unspecified) => None,
        Ok(pb::Frequency::Annual) => Some(Frequency::Annual),
        Ok(pb::Frequency::Monthly) => Some(Frequency::Monthly),
        Err(_) => {
            violations.push(Violation::new(
                format!("{field}.frequency"),
                format!("{} is not a Frequency", s.frequency),
            ));
            None
        }
    };
    let raw = RawSelector {
        reporters: s.reporters.iter().map(String::as_str).collect(),
        partners: s.partners.iter().map(String::as_str).collect(),
        flows: s.flows.clone(),
        commodities: s.commodities.iter().map(String::as_str).collect(),
        commodity_level,
        commodity_prefix: &s.commodity_prefix,
        currency: &s.currency,
        frequency,
        period_from: &s.period_from,
        period_to: &s.period_to,
    };
    let parsed = Selector::parse(&raw);
    match parsed {
        Ok(selector) if violations.is_empty() => Ok(selector),
        Ok(_) => Err(Error::InvalidArgument(violations)),
        Err(errors) => {
            violations.extend(Violation::under(field, errors));
            Err(Error::InvalidArgument(violations))
        }
    }
}

pub fn parse_group_name(name: &str, field: &str) -> Result<GroupName> {
    GroupName::parse(name).map_err(|e| Error::invalid(field, e.0))
}

pub fn parse_group(group: Option<&pb::PartnerGroup>) -> Result<PartnerGroup> {
    let Some(g) = group else {
        return Err(Error::invalid("group", "group is required"));
    };
    PartnerGroup::parse(&g.name, &g.members, &g.description)
        .map_err(|errors| Error::InvalidArgument(Violation::under("group", errors)))
}

pub fn group_to_pb(group: &PartnerGroup, updated_at: prost_types::Timestamp) -> pb::PartnerGroup {
    pb::PartnerGroup {
        name: group.name.to_string(),
        members: group.members.iter().map(ToString::to_string).collect(),
        description: group.description.clone(),
        updated_at: Some(updated_at),
    }
}

/// Parses an aggregate request's own fields (its selector is parsed apart).
pub fn parse_aggregate(request: &pb::AggregateRequest) -> Result<aggregate::AggregateRequest> {
    use aggregate::{Dimension, RowOrder};
    let mut violations = Vec::new();
    let mut group_by = BTreeSet::new();
    for (i, &d) in request.group_by.iter().enumerate() {
        let dimension = match pb::Dimension::try_from(d) {
            Ok(pb::Dimension::Reporter) => Dimension::Reporter,
            Ok(pb::Dimension::Partner) => Dimension::Partner,
            Ok(pb::Dimension::Flow) => Dimension::Flow,
            Ok(pb::Dimension::Commodity) => Dimension::Commodity,
            Ok(pb::Dimension::Period) => Dimension::Period,
            Ok(pb::Dimension::Unspecified) | Err(_) => {
                violations.push(Violation::new(
                    format!("group_by[{i}]"),
                    format!(
                        "{d} is not a dimension: DIMENSION_REPORTER, DIMENSION_PARTNER, DIMENSION_FLOW, \
                         DIMENSION_COMMODITY or DIMENSION_PERIOD"
                    ),
                ));
                continue;
            }
        };
        if !group_by.insert(dimension) {
            violations.push(Violation::new(
                format!("group_by[{i}]"),
                format!("{dimension:?} is listed twice"),
            ));
        }
    }
    let granularity = parse_granularity(request.granularity, "granularity").unwrap_or_else(|e| {
        if let Error::InvalidArgument(v) = e {
            violations.extend(v);
        }
        None
    });
    if granularity.is_some() && !group_by.contains(&Dimension::Period) {
        violations.push(Violation::new(
            "granularity",
            "granularity applies only when grouping by DIMENSION_PERIOD",
        ));
    }
    let order = match pb::OrderBy::try_from(request.order_by) {
        Ok(pb::OrderBy::Unspecified) => RowOrder::Group,
        Ok(pb::OrderBy::TotalDesc) => RowOrder::TotalDesc,
        Ok(pb::OrderBy::TotalAsc) => RowOrder::TotalAsc,
        Err(_) => {
            violations.push(Violation::new(
                "order_by",
                format!("{} is not an OrderBy", request.order_by),
            ));
            RowOrder::Group
        }
    };
    if !violations.is_empty() {
        return Err(Error::InvalidArgument(violations));
    }
    Ok(aggregate::AggregateRequest {
        group_by,
        granularity,
        order,
        limit: request.limit as usize,
    })
}

pub fn aggregate_to_pb(answer: &aggregate::AggregateAnswer) -> Result<pb::AggregateResponse> {
    let money = money_checked;
    let rows = answer
        .rows
        .iter()
        .map(|row| {
            Ok(pb::AggregateRow {
                reporter: row.group.reporter.map(|c| c.to_string()).unwrap_or_default(),
                partner: row.group.partner.map(|c| c.to_string()).unwrap_or_default(),
                flow: row.group.flow.map_or(0, |f| i32::from(f.code())),
                commodity: row.group.commodity.map(|c| c.to_string()).unwrap_or_default(),
                period: row.group.period.map(|b| b.label()).unwrap_or_default(),
                total: Some(money(row.total)?),
                record_count: row.record_count,
                months_covered: row.months_covered.iter().map(ToString::to_string).collect(),
                previous_year_total: row.previous_year_total.map(money).transpose()?,
                yoy_growth_percent: row.yoy_growth_percent,
                share_percent: row.share_percent,
            })
        })
        .collect::<Result<_>>()?;
    Ok(pb::AggregateResponse {
        rows,
        grand_total: Some(money(answer.grand_total)?),
        record_count: answer.record_count,
        currency: answer.currency.to_string(),
        frequency: frequency_to_pb(answer.frequency).into(),
    })
}

pub fn mirror_to_pb(answer: &crate::query::mirror::MirrorAnswer) -> Result<pb::CompareMirrorResponse> {
    let rows = answer
        .rows
        .iter()
        .map(|row| {
            let sides = match (row.reported.is_some(), row.mirror.is_some()) {
                (true, true) => pb::MirrorSides::Both,
                (true, false) => pb::MirrorSides::ReportedOnly,
                _ => pb::MirrorSides::MirrorOnly,
            };
            Ok(pb::MirrorRow {
                reporter: row.group.reporter.map(|c| c.to_string()).unwrap_or_default(),
                partner: row.group.partner.map(|c| c.to_string()).unwrap_or_default(),
                flow: row.group.flow.map_or(0, |f| i32::from(f.code())),
                commodity: row.group.commodity.map(|c| c.to_string()).unwrap_or_default(),
                period: row.group.period.map(|b| b.label()).unwrap_or_default(),
                reported: row.reported.map(|(m, _)| money_checked(m)).transpose()?,
                mirror: row.mirror.map(|(m, _)| money_checked(m)).transpose()?,
                gap: row.gap().map(money_checked).transpose()?,
                ratio: row.ratio(),
                sides: sides.into(),
                reported_record_count: row.reported.map_or(0, |(_, n)| n),
                mirror_record_count: row.mirror.map_or(0, |(_, n)| n),
            })
        })
        .collect::<Result<_>>()?;
    Ok(pb::CompareMirrorResponse {
        rows,
        reported_total: Some(money_checked(answer.reported_total)?),
        mirror_total: Some(money_checked(answer.mirror_total)?),
        currency: answer.currency.to_string(),
    })
}

/// An amount as `google.type.Money`; OUT_OF_RANGE when its units do not fit
/// int64.
fn money_checked(m: crate::domain::Money) -> Result<pb::Money> {
    let (units, nanos) = m.to_parts().ok_or_else(|| {
        Error::OutOfRange(format!(
            "a total of {m} does not fit google.type.Money (int64 units)"
        ))
    })?;
    Ok(pb::Money {
        currency_code: m.currency().to_string(),
        units,
        nanos,
    })
}

/// A granularity from its proto number; `None` when unspecified.
pub fn parse_granularity(code: i32, field: &str) -> Result<Option<crate::domain::Granularity>> {
    use crate::domain::Granularity;
    match pb::Granularity::try_from(code) {
        Ok(pb::Granularity::Unspecified) => Ok(None),
        Ok(pb::Granularity::Year) => Ok(Some(Granularity::Year)),
        Ok(pb::Granularity::Quarter) => Ok(Some(Granularity::Quarter)),
        Ok(pb::Granularity::Month) => Ok(Some(Granularity::Month)),
        Err(_) => Err(Error::invalid(field, format!("{code} is not a Granularity"))),
    }
}

pub fn availability_to_pb(
    found: &crate::query::availability::Availability,
) -> pb::GetDataAvailabilityResponse {
    fn counts<K: ToString>(values: &std::collections::BTreeMap<K, u64>) -> Vec<pb::ValueCount> {
        values
            .iter()
            .map(|(value, n)| pb::ValueCount {
                value: value.to_string(),
                record_count: *n,
            })
            .collect()
    }
    pb::GetDataAvailabilityResponse {
        record_count: found.record_count,
        reporters: found
            .reporters
            .iter()
            .map(|(reporter, r)| pb::ReporterAvailability {
                reporter: reporter.to_string(),
                record_count: r.record_count,
                first_period: r.first_period.to_string(),
                last_period: r.last_period.to_string(),
                latest_update: Some(r.latest_update),
            })
            .collect(),
        partners: counts(&found.partners),
        periods: counts(&found.periods),
        frequencies: found
            .frequencies
            .iter()
            .map(|(f, n)| pb::FrequencyCount {
                frequency: frequency_to_pb(*f).into(),
                record_count: *n,
            })
            .collect(),
        currencies: counts(&found.currencies),
        flows: found
            .flows
            .iter()
            .map(|(f, n)| pb::FlowCount {
                flow: i32::from(f.code()),
                record_count: *n,
            })
            .collect(),
        commodity_levels: found
            .commodity_levels
            .iter()
            .map(|(l, n)| pb::CommodityLevelCount {
                commodity_level: commodity_level_to_pb(*l).into(),
                record_count: *n,
            })
            .collect(),
    }
}

pub fn commodity_level_to_pb(level: CommodityLevel) -> pb::CommodityLevel {
    match level {
        CommodityLevel::Total => pb::CommodityLevel::Total,
        CommodityLevel::Hs2 => pb::CommodityLevel::Hs2,
        CommodityLevel::Hs4 => pb::CommodityLevel::Hs4,
        CommodityLevel::Hs6 => pb::CommodityLevel::Hs6,
    }
}

pub fn frequency_to_pb(frequency: Frequency) -> pb::Frequency {
    match frequency {
        Frequency::Annual => pb::Frequency::Annual,
        Frequency::Monthly => pb::Frequency::Monthly,
    }
}

/// An amount of an event. The writer refuses writes whose series values
/// would not fit `Money`, so one that does not is a corrupt store, never
/// shown clamped.
fn amount_to_pb(nanos: Option<i128>, currency: crate::domain::CurrencyCode) -> Result<Option<pb::Money>> {
    let Some(nanos) = nanos else { return Ok(None) };
    let money = crate::domain::Money::new(currency, nanos);
    let (units, nanos) = money
        .to_parts()
        .ok_or_else(|| Error::Corrupt(format!("an event amount of {money} does not fit Money")))?;
    Ok(Some(pb::Money {
        currency_code: money.currency().to_string(),
        units,
        nanos,
    }))
}

fn cause_to_pb(cause: Cause) -> pb::Cause {
    match cause {
        Cause::NewData => pb::Cause::NewData,
        Cause::Revision => pb::Cause::Revision,
        Cause::GroupChange => pb::Cause::GroupChange,
    }
}

fn direction_to_pb(direction: Direction) -> pb::Direction {
    match direction {
        Direction::Up => pb::Direction::Up,
        Direction::Down => pb::Direction::Down,
    }
}

pub fn rank_by_to_pb(by: RankBy) -> pb::RankBy {
    match by {
        RankBy::Partner => pb::RankBy::Partner,
        RankBy::Reporter => pb::RankBy::Reporter,
    }
}

/// A stored event as the API shows it.
pub fn event_to_pb(event: &Event) -> Result<pb::Event> {
    let keys = |caused_by: &[RecordKey]| caused_by.iter().map(key_to_pb).collect();
    let kind = match &event.kind {
        EventKind::RecordStored(r) => {
            let change = match (&r.before, &r.after) {
                (None, _) => pb::RecordChange::Created,
                (_, None) => pb::RecordChange::Deleted,
                _ => pb::RecordChange::Revised,
            };
            let revision = r.after.as_ref().or(r.before.as_ref()).map_or(0, |s| s.revision);
            pb::event::Kind::RecordStored(pb::RecordStored {
                key: Some(key_to_pb(&r.key)),
                change: change.into(),
                old_value: r.before.as_ref().map(|s| money_to_pb(s.record.value())),
                new_value: r.after.as_ref().map(|s| money_to_pb(s.record.value())),
                revision,
            })
        }
        EventKind::ThresholdCrossed(m) => {
            let amount = |nanos| amount_to_pb(nanos, m.watch.currency);
            pb::event::Kind::ThresholdCrossed(pb::ThresholdCrossed {
                watch_id: m.watch.id.to_string(),
                watch_name: m.watch.name.clone(),
                period: m.period.clone(),
                threshold: amount(Some(m.threshold))?,
                direction: direction_to_pb(m.direction).into(),
                value_before: amount(m.before)?,
                value_after: amount(m.after)?,
                caused_by: keys(&m.caused_by),
                headline: m.headline.clone(),
            })
        }
        EventKind::RecordHigh(m) => {
            let amount = |nanos| amount_to_pb(nanos, m.watch.currency);
            pb::event::Kind::RecordHigh(pb::RecordHigh {
                watch_id: m.watch.id.to_string(),
                watch_name: m.watch.name.clone(),
                period: m.period.clone(),
                value_before: amount(m.before)?,
                value_after: amount(Some(m.after))?,
                previous_period: m.previous.as_ref().map(|(p, _)| p.clone()).unwrap_or_default(),
                previous_value: m
                    .previous
                    .as_ref()
                    .map(|(_, v)| amount(*v))
                    .transpose()?
                    .flatten(),
                cause: cause_to_pb(m.cause).into(),
                caused_by: keys(&m.caused_by),
                headline: m.headline.clone(),
            })
        }
        EventKind::RankChanged(m) => {
            let ranked = |list: &[(CountryCode, i128)]| -> Result<Vec<pb::RankedMember>> {
                list.iter()
                    .map(|(country, value)| {
                        Ok(pb::RankedMember {
                            country: country.to_string(),
                            name: country.name(),
                            value: amount_to_pb(Some(*value), m.watch.currency)?,
                        })
                    })
                    .collect()
            };
            let outside = |list: &[(CountryCode, i128)], other: &[(CountryCode, i128)]| {
                list.iter()
                    .filter(|(c, _)| !other.iter().any(|(o, _)| o == c))
                    .map(|(c, _)| c.to_string())
                    .collect()
            };
            let leader =
                |list: &[(CountryCode, i128)]| list.first().map(|(c, _)| c.to_string()).unwrap_or_default();
            pb::event::Kind::RankChanged(pb::RankChanged {
                watch_id: m.watch.id.to_string(),
                watch_name: m.watch.name.clone(),
                period: m.period.clone(),
                by: rank_by_to_pb(m.by).into(),
                top: m.top,
                before: ranked(&m.before)?,
                after: ranked(&m.after)?,
                entered: outside(&m.after, &m.before),
                left: outside(&m.before, &m.after),
                leader_before: leader(&m.before),
                leader_after: leader(&m.after),
                former_leader_value: amount_to_pb(m.former_leader_now, m.watch.currency)?,
                cause: cause_to_pb(m.cause).into(),
                caused_by: keys(&m.caused_by),
                headline: m.headline.clone(),
            })
        }
        EventKind::GrowthCrossed(m) => {
            let percent = |basis: Option<(i128, i128)>| basis.map(|(v, p)| milestones::growth_percent(v, p));
            pb::event::Kind::GrowthCrossed(pb::GrowthCrossed {
                watch_id: m.watch.id.to_string(),
                watch_name: m.watch.name.clone(),
                period: m.period.clone(),
                previous_period: m.previous_period.clone(),
                threshold_percent: f64::from(m.threshold_bp) / 100.0,
                direction: direction_to_pb(m.direction).into(),
                growth_before_percent: percent(m.before),
                growth_after_percent: percent(m.after),
                value_after: amount_to_pb(m.after.map(|(v, _)| v), m.watch.currency)?,
                previous_value_after: amount_to_pb(m.after.map(|(_, p)| p), m.watch.currency)?,
                cause: cause_to_pb(m.cause).into(),
                caused_by: keys(&m.caused_by),
                headline: m.headline.clone(),
            })
        }
        EventKind::YearToDate(m) => pb::event::Kind::YearToDate(pb::YearToDate {
            watch_id: m.watch.id.to_string(),
            watch_name: m.watch.name.clone(),
            kind: match m.kind {
                YtdKind::PassedPreviousYear => pb::YearToDateKind::PassedPreviousYear,
                YtdKind::RecordHigh => pb::YearToDateKind::RecordHigh,
            }
            .into(),
            direction: direction_to_pb(m.direction).into(),
            year: u32::from(m.year),
            through: m.through.clone(),
            months: m.months.clone(),
            value: amount_to_pb(m.value, m.watch.currency)?,
            compared_year: m.compared.map_or(0, |(y, _)| u32::from(y)),
            compared_value: amount_to_pb(m.compared.map(|(_, v)| v), m.watch.currency)?,
            cause: cause_to_pb(m.cause).into(),
            caused_by: keys(&m.caused_by),
            headline: m.headline.clone(),
        }),
    };
    Ok(pb::Event {
        sequence: event.sequence,
        time: Some(event.time),
        kind: Some(kind),
    })
}
