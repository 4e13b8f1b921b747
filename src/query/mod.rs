//! Questions about stored records: selector resolution, listing, aggregates.

pub mod aggregate;
pub mod availability;
pub mod mirror;

use std::collections::{BTreeMap, BTreeSet};

use crate::domain::{CountryCode, GroupName, PartnerGroup, Party, RecordKey, Selector};
use crate::error::{Error, Result, Violation};
use crate::store::{RecordPage, ScanPlan, Store};

/// A selector with its groups expanded into countries.
pub struct ResolvedSelector {
    pub selector: Selector,
    /// `None`: every reporter.
    pub reporters: Option<BTreeSet<CountryCode>>,
    /// `None`: every partner.
    pub partners: Option<BTreeSet<CountryCode>>,
}

impl ResolvedSelector {
    /// Expands group names; `field` is where the selector sits in the request
    /// (`selector`), for error messages.
    pub fn resolve(store: &Store, selector: Selector, field: &str) -> Result<Self> {
        let groups = store.groups_by_name()?;
        let mut violations = Vec::new();
        let reporters = expand(
            &selector.reporters,
            &groups,
            &format!("{field}.reporters"),
            &mut violations,
        );
        let partners = expand(
            &selector.partners,
            &groups,
            &format!("{field}.partners"),
            &mut violations,
        );
        if !violations.is_empty() {
            return Err(Error::InvalidArgument(violations));
        }
        Ok(ResolvedSelector {
            selector,
            reporters,
            partners,
        })
    }

    pub fn matches(&self, key: &RecordKey) -> bool {
        let s = &self.selector;
        self.reporters.as_ref().is_none_or(|r| r.contains(&key.reporter))
            && self.partners.as_ref().is_none_or(|p| p.contains(&key.partner))
            && (s.flows.is_empty() || s.flows.contains(&key.flow))
            && s.currency.is_none_or(|c| c == key.currency)
            && s.matches_commodity(key.commodity)
            && s.matches_period(key.period)
    }

    /// One page of matching records, strictly after `after`.
    pub fn list(&self, store: &Store, after: Option<&[u8]>, limit: usize) -> Result<RecordPage> {
        let filter = |key: &RecordKey| self.matches(key);
        let plan = ScanPlan {
            reporters: self.reporters.as_ref(),
            partners: self.partners.as_ref(),
            filter: &filter,
        };
        store.list_records(&plan, after, limit)
    }
}

fn expand(
    parties: &[Party],
    groups: &BTreeMap<GroupName, PartnerGroup>,
    field: &str,
    violations: &mut Vec<Violation>,
) -> Option<BTreeSet<CountryCode>> {
    if parties.is_empty() {
        return None;
    }
    let mut out = BTreeSet::new();
    for (i, party) in parties.iter().enumerate() {
        match party {
            Party::Country(c) => {
                out.insert(*c);
            }
            Party::Group(name) => match groups.get(name) {
                Some(g) => out.extend(g.members.iter().copied()),
                None => violations.push(Violation::new(
                    format!("{field}[{i}]"),
                    format!("no partner group named {name}"),
                )),
            },
        }
    }
    Some(out)
}
