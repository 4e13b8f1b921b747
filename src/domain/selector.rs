//! Selectors: which records a request is about.

use std::collections::BTreeSet;

use super::{Commodity, CommodityLevel, CurrencyCode, FieldError, Flow, Frequency, Invalid, Party, Period};

/// Which records a request is about; an empty part does not restrict.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector {
    pub reporters: Vec<Party>,
    pub partners: Vec<Party>,
    pub flows: BTreeSet<Flow>,
    pub commodities: BTreeSet<Commodity>,
    pub commodity_level: Option<CommodityLevel>,
    /// HS digits every selected commodity starts with.
    pub commodity_prefix: Option<String>,
    pub currency: Option<CurrencyCode>,
    pub frequency: Option<Frequency>,
    /// Inclusive; a year bound includes that year's months.
    pub period_from: Option<Period>,
    /// Inclusive; a year bound includes that year's months.
    pub period_to: Option<Period>,
}

/// Unparsed selector parts, as a caller sent them.
#[derive(Debug, Clone, Default)]
pub struct RawSelector<'a> {
    pub reporters: Vec<&'a str>,
    pub partners: Vec<&'a str>,
    /// `tradewatch.v1.Flow` numbers.
    pub flows: Vec<i32>,
    pub commodities: Vec<&'a str>,
    pub commodity_level: Option<CommodityLevel>,
    pub commodity_prefix: &'a str,
    pub currency: &'a str,
    pub frequency: Option<Frequency>,
    pub period_from: &'a str,
    pub period_to: &'a str,
}

impl Selector {
    /// Parses every part, reporting each bad one with its field name
    /// (`reporters[1]`, `period_from`).
    pub fn parse(raw: &RawSelector<'_>) -> Result<Self, Vec<FieldError>> {
        let mut errors = Vec::new();
        let mut fail = |field: String, reason: Invalid| errors.push(FieldError { field, reason });
        let mut selector = Selector {
            commodity_level: raw.commodity_level,
            frequency: raw.frequency,
            ..Selector::default()
        };

        for (list, name, out) in [
            (&raw.reporters, "reporters", &mut selector.reporters),
            (&raw.partners, "partners", &mut selector.partners),
        ] {
            for (i, s) in list.iter().enumerate() {
                match Party::parse(s) {
                    Ok(p) => out.push(p),
                    Err(e) => fail(format!("{name}[{i}]"), e),
                }
            }
        }
        for (i, &code) in raw.flows.iter().enumerate() {
            match Flow::from_code(code) {
                Ok(f) => {
                    selector.flows.insert(f);
                }
                Err(e) => fail(format!("flows[{i}]"), e),
            }
        }
        for (i, s) in raw.commodities.iter().enumerate() {
            // An empty string would silently mean TOTAL; in a list it is a mistake.
            match Commodity::parse(s).and_then(|c| {
                if s.is_empty() {
                    Err(Invalid::new("empty commodity code"))
                } else {
                    Ok(c)
                }
            }) {
                Ok(c) => {
                    selector.commodities.insert(c);
                }
                Err(e) => fail(format!("commodities[{i}]"), e),
            }
        }
        if !raw.commodity_prefix.is_empty() {
            let p = raw.commodity_prefix;
            if p.len() <= 6 && p.bytes().all(|b| b.is_ascii_digit()) {
                selector.commodity_prefix = Some(p.to_owned());
            } else {
                fail(
                    "commodity_prefix".into(),
                    Invalid(format!(
                        "{p:?} is not a prefix of an HS code: expected 1 to 6 digits"
                    )),
                );
            }
        }
        if !raw.currency.is_empty() {
            match CurrencyCode::parse(raw.currency) {
                Ok(c) => selector.currency = Some(c),
                Err(e) => fail("currency".into(), e),
            }
        }
        for (s, name, out) in [
            (raw.period_from, "period_from", &mut selector.period_from),
            (raw.period_to, "period_to", &mut selector.period_to),
        ] {
            if !s.is_empty() {
                match Period::parse_bound(s, name == "period_to") {
                    Ok(p) => *out = Some(p),
                    Err(e) => fail(name.into(), e),
                }
            }
        }
        if let (Some(from), Some(to)) = (selector.period_from, selector.period_to)
            && !selector.period_in_range_bounds(from, to)
        {
            fail(
                "period_from".into(),
                Invalid(format!("period_from {from} is after period_to {to}")),
            );
        }
        if errors.is_empty() {
            Ok(selector)
        } else {
            Err(errors)
        }
    }

    fn period_in_range_bounds(&self, from: Period, to: Period) -> bool {
        Self::after_from(to, Some(from)) || Self::before_to(from, Some(to))
    }

    fn after_from(p: Period, from: Option<Period>) -> bool {
        from.is_none_or(|from| p >= from)
    }

    fn before_to(p: Period, to: Option<Period>) -> bool {
        to.is_none_or(|to| match to.month() {
            None => p.year() <= to.year(),
            Some(_) => p <= to,
        })
    }

    /// Whether a period lies within `period_from..=period_to` and matches the
    /// frequency.
    pub fn matches_period(&self, p: Period) -> bool {
        self.frequency.is_none_or(|f| p.frequency() == f)
            && Self::after_from(p, self.period_from)
            && Self::before_to(p, self.period_to)
    }

    /// Whether a commodity matches the commodity parts of the selector.
    pub fn matches_commodity(&self, c: Commodity) -> bool {
        (self.commodities.is_empty() || self.commodities.contains(&c))
            && self.commodity_level.is_none_or(|l| c.level() == l)
            && self
                .commodity_prefix
                .as_deref()
                .is_none_or(|p| c.level() != CommodityLevel::Total && c.digits().starts_with(p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_each_bad_part() {
        let raw = RawSelector {
            reporters: vec!["CHN", "XYZ"],
            partners: vec!["central_asia"],
            flows: vec![7],
            period_from: "2025",
            period_to: "2023",
            ..RawSelector::default()
        };
        let fields: Vec<_> = Selector::parse(&raw)
            .unwrap_err()
            .into_iter()
            .map(|e| e.field)
            .collect();
        assert_eq!(fields, ["reporters[1]", "partners[0]", "flows[0]", "period_from"]);
    }

    #[test]
    fn year_bounds_include_their_months() {
        let raw = RawSelector {
            period_from: "2024",
            period_to: "2024",
            ..RawSelector::default()
        };
        let s = Selector::parse(&raw).unwrap();
        assert!(s.matches_period(Period::parse("2024").unwrap()));
        assert!(s.matches_period(Period::parse("2024-12").unwrap()));
        assert!(!s.matches_period(Period::parse("2025-01").unwrap()));
        assert!(!s.matches_period(Period::parse("2023").unwrap()));
        let month_range = RawSelector {
            period_from: "2024-03",
            period_to: "2024-02",
            ..RawSelector::default()
        };
        assert!(Selector::parse(&month_range).is_err());
    }

    #[test]
    fn commodity_prefix_and_level() {
        let raw = RawSelector {
            commodity_prefix: "27",
            commodity_level: Some(CommodityLevel::Hs4),
            ..RawSelector::default()
        };
        let s = Selector::parse(&raw).unwrap();
        assert!(s.matches_commodity(Commodity::parse("2701").unwrap()));
        assert!(!s.matches_commodity(Commodity::parse("27").unwrap()));
        assert!(!s.matches_commodity(Commodity::parse("2801").unwrap()));
        assert!(!s.matches_commodity(Commodity::TOTAL));
    }
}
