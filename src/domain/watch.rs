//! Watches: a series and what counts as a milestone in it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use super::{CountryCode, GroupName, Invalid, Measure, PartnerGroup, Party, RecordKey, SeriesSpec};

/// `[a-z0-9][a-z0-9_-]{0,62}`; the server assigns `w1`, `w2`… when a
/// watch is created without one.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WatchId(String);

impl WatchId {
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        let b = s.as_bytes();
        let ok = (1..=63).contains(&b.len())
            && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
            && b.iter()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_' || *c == b'-');
        if ok {
            Ok(WatchId(s.to_owned()))
        } else {
            Err(Invalid(format!(
                "{s:?} is not a watch id: expected 1 to 63 of a-z, 0-9, _ and -, starting with a letter or digit"
            )))
        }
    }

    /// The id the server gives the `n`th watch created without one.
    pub fn assigned(n: u64) -> Self {
        WatchId(format!("w{n}"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for WatchId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for WatchId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a watch looks for in its series.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WatchRules {
    /// Amounts in nanos of the series' currency, each > 0, ascending.
    pub thresholds: Vec<i128>,
    pub record_high: bool,
    /// Who leads each period, when the series is split by partner or
    /// reporter.
    pub rank: Option<RankRule>,
    /// Year-on-year growth thresholds in basis points (`1000`: +10 %), each
    /// above -100 %, ascending.
    pub growth_thresholds: Vec<i32>,
    /// On monthly data: the running year-to-date total passing the whole
    /// previous year, and year-to-date record highs over the same months.
    pub year_to_date: bool,
}

impl WatchRules {
    /// Whether a rule beyond thresholds and record highs is set: commands
    /// carrying one need a reader that knows them.
    pub fn uses_analyst_rules(&self) -> bool {
        self.rank.is_some() || !self.growth_thresholds.is_empty() || self.year_to_date
    }
}

/// The countries a rank rule orders within each period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RankBy {
    Partner,
    Reporter,
}

impl RankBy {
    /// `partner`, `reporter`: as a headline says it.
    pub fn noun(self) -> &'static str {
        match self {
            RankBy::Partner => "partner",
            RankBy::Reporter => "reporter",
        }
    }

    /// The member a record belongs to.
    pub fn member(self, key: &RecordKey) -> CountryCode {
        match self {
            RankBy::Partner => key.partner,
            RankBy::Reporter => key.reporter,
        }
    }
}

/// A period's top `top` members, by value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RankRule {
    pub by: RankBy,
    /// 1 to [`RankRule::MAX_TOP`].
    pub top: u32,
}

impl RankRule {
    pub const MAX_TOP: u32 = 50;
}

/// A watch as defined: the parties as named (groups kept, so that a group
/// edit can re-expand them) and the series they select.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchDef {
    pub id: WatchId,
    pub name: String,
    pub reporters: Vec<Party>,
    pub partners: Vec<Party>,
    pub spec: SeriesSpec,
    pub rules: WatchRules,
}

impl WatchDef {
    pub const MAX_NAME_CHARS: usize = 200;

    /// A watch's name for people: trimmed, not empty, at most
    /// [`Self::MAX_NAME_CHARS`] characters.
    pub fn parse_name(name: &str) -> Result<String, Invalid> {
        let name = name.trim();
        if name.is_empty() {
            Err(Invalid::new("a watch needs a name"))
        } else if name.chars().count() > Self::MAX_NAME_CHARS {
            Err(Invalid(format!(
                "longer than {} characters",
                Self::MAX_NAME_CHARS
            )))
        } else {
            Ok(name.to_owned())
        }
    }

    /// Whether the watch names this group.
    pub fn uses_group(&self, name: &GroupName) -> bool {
        self.reporters
            .iter()
            .chain(&self.partners)
            .any(|p| matches!(p, Party::Group(g) if g == name))
    }

    /// The series again, with groups expanded from `groups`; `None` if a
    /// group it names is missing.
    pub fn respecify(&self, groups: &BTreeMap<GroupName, PartnerGroup>) -> Option<SeriesSpec> {
        Some(SeriesSpec {
            reporters: expand_parties(&self.reporters, groups)?,
            partners: expand_parties(&self.partners, groups)?,
            ..self.spec.clone()
        })
    }

    /// `CHN ↔ CENTRAL_ASIA, turnover`: the series as a newsroom names it.
    pub fn describe(&self) -> String {
        let parties = |list: &[Party], all: &str| {
            if list.is_empty() {
                all.to_owned()
            } else {
                list.iter().map(ToString::to_string).collect::<Vec<_>>().join("+")
            }
        };
        let measure = match &self.spec.measure {
            Measure::Volume => "turnover".to_owned(),
            Measure::Flows(flows) => flows.iter().map(|f| f.name()).collect::<Vec<_>>().join("+"),
        };
        format!(
            "{} ↔ {}, {measure}",
            parties(&self.reporters, "all reporters"),
            parties(&self.partners, "all partners")
        )
    }
}

/// The countries a list of parties names: `Some(None)` for an empty list
/// (no restriction), `None` when a named group is missing.
fn expand_parties(
    parties: &[Party],
    groups: &BTreeMap<GroupName, PartnerGroup>,
) -> Option<Option<BTreeSet<CountryCode>>> {
    if parties.is_empty() {
        return Some(None);
    }
    let mut out = BTreeSet::new();
    for party in parties {
        match party {
            Party::Country(c) => {
                out.insert(*c);
            }
            Party::Group(name) => out.extend(groups.get(name)?.members.iter().copied()),
        }
    }
    Some(Some(out))
}
