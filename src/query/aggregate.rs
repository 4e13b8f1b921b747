//! Aggregate questions: exact totals of the records a selector picks,
//! grouped by any dimension, with year-over-year growth and shares.

use std::collections::{BTreeMap, BTreeSet};

use super::ResolvedSelector;
use crate::collections::FastMap;
use crate::domain::{
    Bucket, Commodity, CommodityFilter, CountryCode, CurrencyCode, Flow, Frequency, Granularity, Measure,
    Money, Period, SeriesSpec,
};
use crate::error::{Error, Result, Violation};
use crate::store::{Fact, FactScan, FactSource, Store, Tally};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Dimension {
    Reporter,
    Partner,
    Flow,
    Commodity,
    Period,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RowOrder {
    /// By group values.
    #[default]
    Group,
    TotalDesc,
    TotalAsc,
}

/// A parsed aggregate question, before its selector is resolved.
pub struct AggregateRequest {
    pub group_by: BTreeSet<Dimension>,
    /// `None`: years for annual data, months for monthly.
    pub granularity: Option<Granularity>,
    pub order: RowOrder,
    /// 0: all rows.
    pub limit: usize,
}

/// What a row is a group of; unset parts are not grouped by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GroupKey {
    pub reporter: Option<CountryCode>,
    pub partner: Option<CountryCode>,
    pub flow: Option<Flow>,
    pub commodity: Option<Commodity>,
    pub period: Option<Bucket>,
}

#[derive(Debug, Clone, Default)]
struct Accumulator {
    tally: Tally,
    /// Monthly data: the sum per month (keyed by year and month, so that a
    /// row's months can be matched a year earlier).
    months: BTreeMap<Period, i128>,
}

impl Accumulator {
    fn add(&mut self, fact: &Fact, monthly: bool) {
        self.tally.nanos += fact.tally.nanos;
        self.tally.count += fact.tally.count;
        if monthly {
            *self.months.entry(fact.period).or_default() += fact.tally.nanos;
        }
    }

    fn merge(&mut self, other: Accumulator) {
        self.tally.nanos += other.tally.nanos;
        self.tally.count += other.tally.count;
        for (period, nanos) in other.months {
            *self.months.entry(period).or_default() += nanos;
        }
    }
}

/// Sums per group. Facts come in key order, so that one group's facts
/// often follow one another (a series' periods, when rows are commodities
/// or partners): those are summed aside and looked up in the map once.
#[derive(Default)]
struct Sums {
    groups: FastMap<GroupKey, Accumulator>,
    current: Option<(GroupKey, Accumulator)>,
}

impl Sums {
    fn add(&mut self, group: GroupKey, fact: &Fact, monthly: bool) {
        match &mut self.current {
            Some((current, sum)) if *current == group => sum.add(fact, monthly),
            _ => {
                self.put_aside();
                let mut sum = Accumulator::default();
                sum.add(fact, monthly);
                self.current = Some((group, sum));
            }
        }
    }

    fn put_aside(&mut self) {
        if let Some((group, sum)) = self.current.take() {
            self.groups.entry(group).or_default().merge(sum);
        }
    }

    fn into_groups(mut self) -> FastMap<GroupKey, Accumulator> {
        self.put_aside();
        self.groups
    }
}

/// One row of the answer.
#[derive(Debug, Clone)]
pub struct AggregateRow {
    pub group: GroupKey,
    pub total: Money,
    pub record_count: u64,
    pub months_covered: Vec<Period>,
    pub previous_year_total: Option<Money>,
    pub yoy_growth_percent: Option<f64>,
    pub share_percent: f64,
}

/// The answer to an aggregate question.
#[derive(Debug, Clone)]
pub struct AggregateAnswer {
    pub rows: Vec<AggregateRow>,
    pub grand_total: Money,
    pub record_count: u64,
    pub currency: CurrencyCode,
    pub frequency: Frequency,
}

/// Checks the question against its selector and answers it.
pub fn aggregate(
    store: &Store,
    selector: &ResolvedSelector,
    request: &AggregateRequest,
) -> Result<AggregateAnswer> {
    let plan = Plan::new(selector, request)?;
    plan.answer(store)
}

/// A series per period, answered as `Aggregate` grouped by period answers
/// its selector (a watch's chart shows the same figures).
pub fn series(store: &Store, spec: SeriesSpec) -> Result<AggregateAnswer> {
    let request = AggregateRequest {
        group_by: [Dimension::Period].into(),
        granularity: Some(spec.granularity),
        order: RowOrder::Group,
        limit: 0,
    };
    Plan {
        request: &request,
        spec,
    }
    .answer(store)
}

/// A question made concrete: defaults applied, the source chosen.
struct Plan<'a> {
    request: &'a AggregateRequest,
    spec: SeriesSpec,
}

fn invalid(field: &str, description: impl Into<String>) -> Error {
    Error::InvalidArgument(vec![Violation::new(field, description)])
}

/// The series a selector picks, at a granularity (`None`: years for annual
/// data, months for monthly), with the aggregate defaults applied; `by_flow`
/// when rows are to be split by flow.
pub fn series_spec(
    selector: &ResolvedSelector,
    granularity: Option<Granularity>,
    by_flow: bool,
) -> Result<SeriesSpec> {
    Plan::spec(selector, granularity, by_flow)
}

impl<'a> Plan<'a> {
    fn new(selector: &ResolvedSelector, request: &'a AggregateRequest) -> Result<Self> {
        let by_flow = request.group_by.contains(&Dimension::Flow);
        let spec = Self::spec(selector, request.granularity, by_flow)?;
        Ok(Plan { request, spec })
    }

    fn spec(
        selector: &ResolvedSelector,
        granularity: Option<Granularity>,
        by_flow: bool,
    ) -> Result<SeriesSpec> {
        let s = &selector.selector;
        let frequency = s.frequency.unwrap_or(Frequency::Annual);
        let granularity = match (frequency, granularity) {
            (Frequency::Annual, None | Some(Granularity::Year)) => Granularity::Year,
            (Frequency::Annual, Some(g)) => {
                return Err(invalid(
                    "granularity",
                    format!(
                        "{} granularity needs monthly data; set selector.frequency to FREQUENCY_MONTHLY",
                        if g == Granularity::Month {
                            "month"
                        } else {
                            "quarter"
                        }
                    ),
                ));
            }
            (Frequency::Monthly, None) => Granularity::Month,
            (Frequency::Monthly, Some(g)) => g,
        };

        let commodities = if !s.commodities.is_empty() {
            check_no_overlap(&s.commodities)?;
            let kept: BTreeSet<Commodity> = s
                .commodities
                .iter()
                .copied()
                .filter(|c| s.matches_commodity(*c))
                .collect();
            CommodityFilter::Exact(kept)
        } else if let Some(level) = s.commodity_level {
            CommodityFilter::Level(level, s.commodity_prefix.clone().unwrap_or_default())
        } else if s.commodity_prefix.is_some() {
            return Err(invalid(
                "selector.commodity_prefix",
                "an aggregate with a commodity_prefix needs a commodity_level, so that no goods are counted twice",
            ));
        } else {
            CommodityFilter::Exact([Commodity::TOTAL].into())
        };

        let measure = if s.flows.is_empty() {
            if by_flow {
                return Err(invalid(
                    "group_by",
                    "grouping by flow needs selector.flows (with no flows the answer is trade volume)",
                ));
            }
            Measure::Volume
        } else {
            Measure::Flows(s.flows.clone())
        };

        let (from, to) = period_range(s.period_from, s.period_to, frequency)?;
        Ok(SeriesSpec {
            reporters: selector.reporters.clone(),
            partners: selector.partners.clone(),
            measure,
            commodities,
            currency: s.currency.unwrap_or(CurrencyCode::USD),
            frequency,
            granularity,
            from,
            to,
        })
    }

    fn source(&self) -> FactSource {
        let by = &self.request.group_by;
        if self.spec.partners.is_some() || by.contains(&Dimension::Partner) {
            FactSource::Records
        } else if self.spec.reporters.is_some() || by.contains(&Dimension::Reporter) {
            FactSource::ReporterRollup
        } else {
            FactSource::WorldRollup
        }
    }

    fn group_of(&self, fact: &Fact) -> GroupKey {
        let by = &self.request.group_by;
        GroupKey {
            reporter: fact.reporter.filter(|_| by.contains(&Dimension::Reporter)),
            partner: fact.partner.filter(|_| by.contains(&Dimension::Partner)),
            flow: fact.flow.filter(|_| by.contains(&Dimension::Flow)),
            commodity: Some(fact.commodity).filter(|_| by.contains(&Dimension::Commodity)),
            period: by
                .contains(&Dimension::Period)
                .then(|| self.spec.bucket(fact.period)),
        }
    }

    fn answer(&self, store: &Store) -> Result<AggregateAnswer> {
        let by_period = self.request.group_by.contains(&Dimension::Period);
        // With periods, read a year further back for year-over-year growth.
        let scan_from = if by_period {
            Period::from_parts(
                self.spec.from.year().saturating_sub(1).max(Period::MIN_YEAR),
                self.spec.from.month().unwrap_or(0),
            )
            .unwrap_or(self.spec.from)
        } else {
            self.spec.from
        };
        let scan = FactScan {
            source: self.source(),
            spec: &self.spec,
            from: scan_from,
        };
        let monthly = self.spec.frequency == Frequency::Monthly;
        // `rows` holds the periods asked for; `everything`, when rows are
        // periods, also the year before them, for year-over-year
        // comparisons.
        let mut rows = Sums::default();
        let mut everything = Sums::default();
        store.scan_facts(&scan, &mut |fact| {
            let group = self.group_of(&fact);
            if by_period {
                everything.add(group, &fact, monthly);
            }
            if fact.period >= self.spec.from {
                rows.add(group, &fact, monthly);
            }
        })?;
        let everything = everything.into_groups();
        let mut rows: Vec<(GroupKey, Accumulator)> = rows.into_groups().into_iter().collect();
        rows.sort_unstable_by_key(|(group, _)| *group);

        let grand: i128 = rows.iter().map(|(_, a)| a.tally.nanos).sum();
        let record_count: i64 = rows.iter().map(|(_, a)| a.tally.count).sum();
        let money = |nanos| Money::new(self.spec.currency, nanos);
        let mut out: Vec<AggregateRow> = rows
            .iter()
            .map(|(group, acc)| {
                let previous = group.period.and_then(|bucket| {
                    let key = GroupKey {
                        period: Some(bucket.year_earlier()),
                        ..*group
                    };
                    let prev = everything.get(&key)?;
                    previous_total(acc, prev, monthly)
                });
                AggregateRow {
                    group: *group,
                    total: money(acc.tally.nanos),
                    record_count: acc.tally.count.max(0) as u64,
                    months_covered: acc.months.keys().copied().collect(),
                    previous_year_total: previous.map(money),
                    yoy_growth_percent: previous
                        .filter(|p| *p != 0)
                        .map(|p| percent(acc.tally.nanos - p, p)),
                    share_percent: if grand == 0 {
                        0.0
                    } else {
                        percent(acc.tally.nanos, grand)
                    },
                }
            })
            .collect();

        match self.request.order {
            RowOrder::Group => {}
            RowOrder::TotalDesc => {
                out.sort_by(|a, b| b.total.nanos().cmp(&a.total.nanos()).then(a.group.cmp(&b.group)))
            }
            RowOrder::TotalAsc => {
                out.sort_by(|a, b| a.total.nanos().cmp(&b.total.nanos()).then(a.group.cmp(&b.group)))
            }
        }
        if self.request.limit > 0 {
            out.truncate(self.request.limit);
        }
        Ok(AggregateAnswer {
            rows: out,
            grand_total: money(grand),
            record_count: record_count.max(0) as u64,
            currency: self.spec.currency,
            frequency: self.spec.frequency,
        })
    }
}

/// The same period a year earlier; for monthly data only over the same
/// months, and only if every one of them is there.
fn previous_total(current: &Accumulator, previous: &Accumulator, monthly: bool) -> Option<i128> {
    if !monthly {
        return Some(previous.tally.nanos);
    }
    current
        .months
        .keys()
        .map(|p| {
            let month = Period::from_parts(p.year() - 1, p.month().unwrap_or(0))?;
            previous.months.get(&month).copied()
        })
        .sum()
}

/// `part / whole` in percent; exact integers until the final division.
fn percent(part: i128, whole: i128) -> f64 {
    (part as f64 / whole as f64) * 100.0
}

/// The inclusive range of periods of the frequency being summed.
fn period_range(from: Option<Period>, to: Option<Period>, frequency: Frequency) -> Result<(Period, Period)> {
    let bound = |p: Option<Period>, field: &str, is_from: bool| -> Result<Period> {
        let year = p.map_or(
            if is_from {
                Period::MIN_YEAR
            } else {
                Period::MAX_YEAR
            },
            |p| p.year(),
        );
        let month = match (frequency, p.and_then(|p| p.month())) {
            (Frequency::Annual, Some(_)) => {
                return Err(invalid(
                    &format!("selector.{field}"),
                    format!(
                        "{field} {} is part of a year, but annual data is summed; give a year \
                         (or sum FREQUENCY_MONTHLY data)",
                        p.map(|p| p.to_string()).unwrap_or_default()
                    ),
                ));
            }
            (Frequency::Annual, None) => 0,
            (Frequency::Monthly, Some(m)) => m,
            (Frequency::Monthly, None) => {
                if is_from {
                    1
                } else {
                    12
                }
            }
        };
        Period::from_parts(year, month)
            .ok_or_else(|| invalid(&format!("selector.{field}"), "period out of range"))
    };
    match (bound(from, "period_from", true), bound(to, "period_to", false)) {
        (Ok(from), Ok(to)) => Ok((from, to)),
        (Err(Error::InvalidArgument(mut a)), Err(Error::InvalidArgument(b))) => {
            a.extend(b);
            Err(Error::InvalidArgument(a))
        }
        (Err(e), _) | (_, Err(e)) => Err(e),
    }
}

/// Named commodities must not contain one another (TOTAL contains every
/// code, `27` contains `2701`), or goods would be counted twice.
fn check_no_overlap(commodities: &BTreeSet<Commodity>) -> Result<()> {
    for a in commodities {
        for b in commodities {
            let contains = a != b
                && (*a == Commodity::TOTAL || (!a.digits().is_empty() && b.digits().starts_with(a.digits())));
            if contains {
                return Err(invalid(
                    "selector.commodities",
                    format!("{a} contains {b}; summing both would count goods twice"),
                ));
            }
        }
    }
    Ok(())
}
