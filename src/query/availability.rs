//! What the store holds for a selector (like UN Comtrade's data
//! availability): the distinct values of each dimension with their record
//! counts, so a client need not page through every record to learn them.

use std::collections::BTreeMap;

use prost_types::Timestamp;

use super::ResolvedSelector;
use crate::domain::{CommodityLevel, CountryCode, CurrencyCode, Flow, Frequency, Period};
use crate::error::Result;
use crate::store::Store;

/// Records read per step of the scan.
const CHUNK: usize = 4096;

/// What one reporter has published.
#[derive(Debug, Clone, PartialEq)]
pub struct ReporterStats {
    pub record_count: u64,
    pub first_period: Period,
    pub last_period: Period,
    /// When the latest of its records was written.
    pub latest_update: Timestamp,
}

#[derive(Debug, Default, Clone, PartialEq)]
pub struct Availability {
    pub record_count: u64,
    pub reporters: BTreeMap<CountryCode, ReporterStats>,
    pub partners: BTreeMap<CountryCode, u64>,
    pub periods: BTreeMap<Period, u64>,
    pub frequencies: BTreeMap<Frequency, u64>,
    pub currencies: BTreeMap<CurrencyCode, u64>,
    pub flows: BTreeMap<Flow, u64>,
    pub commodity_levels: BTreeMap<CommodityLevel, u64>,
}

/// Counts the records `selector` picks, by each dimension.
pub fn availability(store: &Store, selector: &ResolvedSelector) -> Result<Availability> {
    let mut out = Availability::default();
    let mut after = None;
    loop {
        let page = selector.list(store, after.as_deref(), CHUNK)?;
        for stored in &page.records {
            let key = &stored.record.key;
            out.record_count += 1;
            let updated = stored.updated_at;
            out.reporters
                .entry(key.reporter)
                .and_modify(|r| {
                    r.record_count += 1;
                    r.first_period = r.first_period.min(key.period);
                    r.last_period = r.last_period.max(key.period);
                    if (updated.seconds, updated.nanos) > (r.latest_update.seconds, r.latest_update.nanos) {
                        r.latest_update = updated;
                    }
                })
                .or_insert(ReporterStats {
                    record_count: 1,
                    first_period: key.period,
                    last_period: key.period,
                    latest_update: updated,
                });
            *out.partners.entry(key.partner).or_default() += 1;
            *out.periods.entry(key.period).or_default() += 1;
            *out.frequencies.entry(key.period.frequency()).or_default() += 1;
            *out.currencies.entry(key.currency).or_default() += 1;
            *out.flows.entry(key.flow).or_default() += 1;
            *out.commodity_levels.entry(key.commodity.level()).or_default() += 1;
        }
        match page.resume_after {
            Some(key) => after = Some(key),
            None => return Ok(out),
        }
    }
}
