//! A series: the totals of the records a normalized selection picks, per
//! period at a granularity. Aggregates read series; watches follow them.

use std::collections::BTreeSet;

use super::{Commodity, CommodityLevel, CountryCode, CurrencyCode, Flow, Frequency, Period, RecordKey};

/// The length of the periods a series is grouped into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Granularity {
    Year,
    Quarter,
    Month,
}

/// A period at a granularity: a year, a quarter (`sub` 1..=4) or a month
/// (`sub` 1..=12).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bucket {
    pub year: u16,
    pub sub: u8,
    pub granularity: Granularity,
}

impl Bucket {
    pub fn of(period: Period, granularity: Granularity) -> Bucket {
        let month = period.month().unwrap_or(0);
        let sub = match granularity {
            Granularity::Year => 0,
            Granularity::Quarter => month.div_ceil(3),
            Granularity::Month => month,
        };
        Bucket {
            year: period.year(),
            sub,
            granularity,
        }
    }

    pub fn year_earlier(self) -> Bucket {
        Bucket {
            year: self.year.saturating_sub(1),
            ..self
        }
    }

    /// `2025`, `2025-Q1`, `2025-03`.
    pub fn label(&self) -> String {
        match self.granularity {
            Granularity::Year => format!("{:04}", self.year),
            Granularity::Quarter => format!("{:04}-Q{}", self.year, self.sub),
            Granularity::Month => format!("{:04}-{:02}", self.year, self.sub),
        }
    }
}

/// What a series sums.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Measure {
    /// Trade volume: per reporter, partner, period and commodity, the
    /// published turnover if there is one, else exports + imports.
    Volume,
    /// Exactly these flows.
    Flows(BTreeSet<Flow>),
}

/// Which commodities a series sums.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommodityFilter {
    Exact(BTreeSet<Commodity>),
    /// Every code of a level whose digits start with a prefix (maybe empty).
    Level(CommodityLevel, String),
}

impl CommodityFilter {
    pub fn matches(&self, c: Commodity) -> bool {
        match self {
            CommodityFilter::Exact(set) => set.contains(&c),
            CommodityFilter::Level(level, prefix) => {
                c.level() == *level && c.digits().starts_with(prefix.as_str())
            }
        }
    }
}

/// A normalized selection: groups expanded, defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeriesSpec {
    /// `None`: every reporter.
    pub reporters: Option<BTreeSet<CountryCode>>,
    /// `None`: every partner but the world (`WLD`), which would count every
    /// partner twice.
    pub partners: Option<BTreeSet<CountryCode>>,
    pub measure: Measure,
    pub commodities: CommodityFilter,
    pub currency: CurrencyCode,
    pub frequency: Frequency,
    pub granularity: Granularity,
    /// Inclusive, of `frequency`.
    pub from: Period,
    pub to: Period,
}

impl SeriesSpec {
    /// Whether a record with this key is part of the series, flows aside.
    pub fn selects(&self, key: &RecordKey) -> bool {
        key.currency == self.currency
            && key.period.frequency() == self.frequency
            && key.period >= self.from
            && key.period <= self.to
            && self.reporters.as_ref().is_none_or(|r| r.contains(&key.reporter))
            && match &self.partners {
                Some(p) => p.contains(&key.partner),
                None => key.partner != CountryCode::WORLD,
            }
            && self.commodities.matches(key.commodity)
    }

    pub fn bucket(&self, period: Period) -> Bucket {
        Bucket::of(period, self.granularity)
    }
}
