//! Trade records and their natural key.

use std::fmt;
use std::hash::{Hash, Hasher};

use prost_types::Timestamp;

use super::{Commodity, CountryCode, CurrencyCode, Invalid, Money, Period, money::MoneyPart};

/// Direction of a trade figure, from the reporter's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Flow {
    Export,
    Import,
    ReExport,
    ReImport,
    /// Exports plus imports, as published.
    Turnover,
}

impl Flow {
    pub const ALL: [Flow; 5] = [
        Flow::Export,
        Flow::Import,
        Flow::ReExport,
        Flow::ReImport,
        Flow::Turnover,
    ];

    /// The flow's number: the same as the `tradewatch.v1.Flow` enum value,
    /// and the byte it is stored as.
    pub fn code(self) -> u8 {
        match self {
            Flow::Export => 1,
            Flow::Import => 2,
            Flow::ReExport => 3,
            Flow::ReImport => 4,
            Flow::Turnover => 5,
        }
    }

    pub fn from_code(code: i32) -> Result<Self, Invalid> {
        if code == 0 {
            return Err(Invalid::new(
                "flow is required: FLOW_EXPORT, FLOW_IMPORT, FLOW_RE_EXPORT, FLOW_RE_IMPORT or FLOW_TURNOVER",
            ));
        }
        Flow::ALL
            .into_iter()
            .find(|f| i32::from(f.code()) == code)
            .ok_or_else(|| {
                Invalid(format!(
                    "flow {code} is not one of FLOW_EXPORT, FLOW_IMPORT, FLOW_RE_EXPORT, \
                     FLOW_RE_IMPORT, FLOW_TURNOVER"
                ))
            })
    }

    /// The API's enum name: `FLOW_EXPORT`.
    pub fn api_name(self) -> &'static str {
        match self {
            Flow::Export => "FLOW_EXPORT",
            Flow::Import => "FLOW_IMPORT",
            Flow::ReExport => "FLOW_RE_EXPORT",
            Flow::ReImport => "FLOW_RE_IMPORT",
            Flow::Turnover => "FLOW_TURNOVER",
        }
    }

    /// The lower-case name used in CSV files and headlines: `export`,
    /// `re_export`, `turnover`.
    pub fn name(self) -> &'static str {
        match self {
            Flow::Export => "export",
            Flow::Import => "import",
            Flow::ReExport => "re_export",
            Flow::ReImport => "re_import",
            Flow::Turnover => "turnover",
        }
    }

    pub fn parse_name(s: &str) -> Result<Self, Invalid> {
        Flow::ALL.into_iter().find(|f| f.name() == s).ok_or_else(|| {
            Invalid(format!(
                "{s:?} is not a flow: expected export, import, re_export, re_import or turnover"
            ))
        })
    }
}

/// The natural key: two records with the same key are the same figure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct RecordKey {
    pub reporter: CountryCode,
    pub partner: CountryCode,
    pub flow: Flow,
    pub period: Period,
    pub commodity: Commodity,
    pub currency: CurrencyCode,
}

/// By hand rather than derived: two writes of packed words instead of a
/// dozen, with length prefixes, of the parts. The write path hashes each
/// key several times over. Equal keys pack to equal words.
impl Hash for RecordKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        let code = |c: [u8; 3]| u64::from(c[0]) | u64::from(c[1]) << 8 | u64::from(c[2]) << 16;
        let parties = code(self.reporter.as_bytes())
            | code(self.partner.as_bytes()) << 24
            | u64::from(self.flow.code()) << 48
            | u64::from(self.period.month().unwrap_or(0)) << 56;
        let rest = code(self.currency.as_bytes()) | u64::from(self.period.year()) << 24;
        state.write_u128(u128::from(parties) | u128::from(rest) << 64);
        state.write_u64(self.commodity.packed());
    }
}

impl fmt::Display for RecordKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "({}, {}, {}, {}, {}, {})",
            self.reporter,
            self.partner,
            self.flow.api_name(),
            self.period,
            self.commodity,
            self.currency
        )
    }
}

/// Unparsed parts of a natural key, as a caller sent them.
#[derive(Debug, Clone, Default)]
pub struct RawKey<'a> {
    pub reporter: &'a str,
    pub partner: &'a str,
    /// The `tradewatch.v1.Flow` number.
    pub flow: i32,
    pub period: &'a str,
    pub commodity: &'a str,
    pub currency: &'a str,
}

/// A field that failed to parse, named relative to the record
/// (`reporter`, `value.units`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub reason: Invalid,
}

impl RecordKey {
    /// Parses every part, reporting each bad one. `currency_field` names the
    /// currency's field (`currency` in a key, `value.currency_code` in a
    /// record).
    pub fn parse(raw: &RawKey<'_>, currency_field: &'static str) -> Result<Self, Vec<FieldError>> {
        let mut errors = Vec::new();
        let mut check = |field: &'static str, r: Result<(), Invalid>| {
            if let Err(reason) = r {
                errors.push(FieldError {
                    field: field.to_owned(),
                    reason,
                });
            }
        };
        let reporter = CountryCode::parse_country(raw.reporter)
            .map_err(|e| Invalid(e.0.replace("only valid as a partner", "not a reporter")));
        let partner = CountryCode::parse(raw.partner);
        let flow = Flow::from_code(raw.flow);
        let period = Period::parse(raw.period);
        let commodity = Commodity::parse(raw.commodity);
        let currency = CurrencyCode::parse(raw.currency);
        check("reporter", reporter.as_ref().map(|_| ()).map_err(Clone::clone));
        check("partner", partner.as_ref().map(|_| ()).map_err(Clone::clone));
        check("flow", flow.as_ref().map(|_| ()).map_err(Clone::clone));
        check("period", period.as_ref().map(|_| ()).map_err(Clone::clone));
        check("commodity", commodity.as_ref().map(|_| ()).map_err(Clone::clone));
        check(
            currency_field,
            currency.as_ref().map(|_| ()).map_err(Clone::clone),
        );
        if let (Ok(r), Ok(p)) = (&reporter, &partner)
            && r == p
        {
            errors.push(FieldError {
                field: "partner".into(),
                reason: Invalid(format!(
                    "partner {p} is the reporter itself; a country does not trade with itself"
                )),
            });
        }
        match (reporter, partner, flow, period, commodity, currency) {
            (Ok(reporter), Ok(partner), Ok(flow), Ok(period), Ok(commodity), Ok(currency))
                if errors.is_empty() =>
            {
                Ok(RecordKey {
                    reporter,
                    partner,
                    flow,
                    period,
                    commodity,
                    currency,
                })
            }
            _ => Err(errors),
        }
    }
}

/// One published trade figure: a natural key and its content.
#[derive(Debug, Clone, PartialEq)]
pub struct TradeRecord {
    pub key: RecordKey,
    /// Never negative.
    value_nanos: i128,
    net_weight_kg: Option<f64>,
    source: String,
    released_at: Option<Timestamp>,
}

/// Unparsed record content, as a caller sent it.
#[derive(Debug, Clone, Default)]
pub struct RawRecord<'a> {
    pub key: RawKey<'a>,
    pub units: i64,
    pub nanos: i32,
    pub net_weight_kg: Option<f64>,
    pub source: &'a str,
    pub released_at: Option<Timestamp>,
}

impl TradeRecord {
    pub const MAX_SOURCE_CHARS: usize = 200;

    /// Parses a record, reporting every bad field (not just the first).
    pub fn parse(raw: &RawRecord<'_>) -> Result<Self, Vec<FieldError>> {
        let key = RecordKey::parse(&raw.key, "value.currency_code");
        let mut errors = key.as_ref().err().cloned().unwrap_or_default();
        let mut fail = |field: &str, reason: String| {
            errors.push(FieldError {
                field: field.to_owned(),
                reason: Invalid(reason),
            })
        };

        let value = match Money::amount_from_parts(raw.units, raw.nanos) {
            Ok(v) if v < 0 => {
                fail(
                    "value.units",
                    format!(
                        "value must not be negative (units {}, nanos {})",
                        raw.units, raw.nanos
                    ),
                );
                None
            }
            Ok(v) => Some(v),
            Err((part, reason)) => {
                let field = match part {
                    MoneyPart::Units => "value.units",
                    MoneyPart::Nanos => "value.nanos",
                };
                fail(field, reason.0);
                None
            }
        };
        if let Some(w) = raw.net_weight_kg
            && !(w.is_finite() && w >= 0.0)
        {
            fail(
                "net_weight_kg",
                format!("net weight {w} must be finite and not negative"),
            );
        }
        let source = raw.source.trim();
        if source.chars().count() > Self::MAX_SOURCE_CHARS {
            fail(
                "source",
                format!("source is longer than {} characters", Self::MAX_SOURCE_CHARS),
            );
        }
        if let Some(ts) = &raw.released_at
            && let Err(reason) = check_timestamp(ts)
        {
            fail("released_at", reason.0);
        }
        match (key, value) {
            (Ok(key), Some(value_nanos)) if errors.is_empty() => Ok(TradeRecord {
                key,
                value_nanos,
                net_weight_kg: raw.net_weight_kg.map(|w| w + 0.0), // -0.0 becomes 0.0
                source: source.to_owned(),
                released_at: raw.released_at,
            }),
            _ => Err(errors),
        }
    }

    pub fn value(&self) -> Money {
        Money::new(self.key.currency, self.value_nanos)
    }

    pub fn net_weight_kg(&self) -> Option<f64> {
        self.net_weight_kg
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn released_at(&self) -> Option<Timestamp> {
        self.released_at
    }
}

/// Timestamps are accepted for years 0001..=9999, as in RFC 3339.
fn check_timestamp(ts: &Timestamp) -> Result<(), Invalid> {
    const MIN_SECONDS: i64 = -62_135_596_800; // 0001-01-01T00:00:00Z
    const MAX_SECONDS: i64 = 253_402_300_799; // 9999-12-31T23:59:59Z
    if !(0..1_000_000_000).contains(&ts.nanos) {
        return Err(Invalid(format!(
            "timestamp nanos {} is outside 0..=999999999",
            ts.nanos
        )));
    }
    if !(MIN_SECONDS..=MAX_SECONDS).contains(&ts.seconds) {
        return Err(Invalid(format!(
            "timestamp seconds {} is outside years 0001..=9999",
            ts.seconds
        )));
    }
    Ok(())
}

/// A record as stored: its content plus what the server keeps about it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredRecord {
    pub record: TradeRecord,
    /// 1 on first write, +1 on each change.
    pub revision: i64,
    pub updated_at: Timestamp,
}

/// What a write did to one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    Created,
    Revised,
    Unchanged,
}

impl TradeRecord {
    /// Rebuilds a record read back from storage, where it was valid when
    /// written.
    pub(crate) fn from_stored(
        key: RecordKey,
        value_nanos: i128,
        net_weight_kg: Option<f64>,
        source: String,
        released_at: Option<Timestamp>,
    ) -> Self {
        TradeRecord {
            key,
            value_nanos,
            net_weight_kg,
            source,
            released_at,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every part of a key goes into its hash: keys that differ in any one
    /// part hash apart (with a fixed seed, so the test is repeatable).
    #[test]
    fn every_part_of_a_key_is_hashed() {
        use std::hash::BuildHasher;
        let hash = |key: &RecordKey| foldhash::fast::FixedState::with_seed(7).hash_one(key);
        let key = RecordKey {
            reporter: CountryCode::parse("CHN").unwrap(),
            partner: CountryCode::parse("KAZ").unwrap(),
            flow: Flow::Export,
            period: Period::parse("2025-03").unwrap(),
            commodity: Commodity::parse("8703").unwrap(),
            currency: CurrencyCode::parse("USD").unwrap(),
        };
        let others = [
            RecordKey {
                reporter: CountryCode::parse("CHL").unwrap(),
                ..key
            },
            RecordKey {
                partner: CountryCode::parse("KGZ").unwrap(),
                ..key
            },
            RecordKey {
                flow: Flow::Import,
                ..key
            },
            RecordKey {
                period: Period::parse("2025-04").unwrap(),
                ..key
            },
            RecordKey {
                period: Period::parse("2024-03").unwrap(),
                ..key
            },
            RecordKey {
                period: Period::parse("2025").unwrap(),
                ..key
            },
            RecordKey {
                commodity: Commodity::parse("870321").unwrap(),
                ..key
            },
            RecordKey {
                commodity: Commodity::parse("87").unwrap(),
                ..key
            },
            RecordKey {
                commodity: Commodity::parse("8704").unwrap(),
                ..key
            },
            RecordKey {
                currency: CurrencyCode::parse("USN").unwrap(),
                ..key
            },
        ];
        for other in others {
            assert_ne!(hash(&other), hash(&key), "{other}");
            assert_eq!(hash(&other), hash(&{ other }));
        }
    }

    fn raw<'a>() -> RawRecord<'a> {
        RawRecord {
            key: RawKey {
                reporter: "CHN",
                partner: "KAZ",
                flow: 5,
                period: "2025",
                commodity: "",
                currency: "USD",
            },
            units: 48_600_000_000,
            nanos: 0,
            net_weight_kg: None,
            source: "GACC",
            released_at: None,
        }
    }

    #[test]
    fn parses_a_good_record() {
        let r = TradeRecord::parse(&raw()).unwrap();
        assert_eq!(r.key.commodity, Commodity::TOTAL);
        assert_eq!(r.value().to_parts(), Some((48_600_000_000, 0)));
    }

    #[test]
    fn reports_every_bad_field() {
        let mut bad = raw();
        bad.key = RawKey {
            reporter: "XYZ",
            partner: "KAZ",
            flow: 9,
            period: "2025-13",
            commodity: "27A",
            currency: "US",
        };
        bad.units = -1;
        bad.net_weight_kg = Some(f64::NAN);
        let errors = TradeRecord::parse(&bad).unwrap_err();
        let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "reporter",
                "flow",
                "period",
                "commodity",
                "value.currency_code",
                "value.units",
                "net_weight_kg"
            ]
        );
    }

    #[test]
    fn a_country_does_not_trade_with_itself() {
        let mut bad = raw();
        bad.key.partner = "CHN";
        let errors = TradeRecord::parse(&bad).unwrap_err();
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].field, "partner");
    }

    #[test]
    fn world_is_not_a_reporter() {
        let mut bad = raw();
        bad.key.reporter = "WLD";
        let errors = TradeRecord::parse(&bad).unwrap_err();
        assert_eq!(errors[0].field, "reporter");
    }
}
