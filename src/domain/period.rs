//! Reporting periods: a year or a month.

use std::fmt;

use super::Invalid;

/// Annual and monthly figures are separate datasets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Frequency {
    Annual,
    Monthly,
}

/// `2025` (a year) or `2025-03` (a month), years 1900..=2100.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Period {
    year: u16,
    /// 0 for an annual figure, 1..=12 for a month. Annual sorts before the
    /// months of its year.
    month: u8,
}

impl Period {
    pub const MIN_YEAR: u16 = 1900;
    pub const MAX_YEAR: u16 = 2100;

    pub fn parse(s: &str) -> Result<Self, Invalid> {
        let bad = || Invalid(format!("{s:?} is not a period: expected YYYY or YYYY-MM"));
        let (year, month) = match s.len() {
            4 => (s, None),
            7 if s.as_bytes()[4] == b'-' => (&s[..4], Some(&s[5..])),
            _ => return Err(bad()),
        };
        let digits = |t: &str| t.bytes().all(|b| b.is_ascii_digit());
        if !digits(year) || !month.is_none_or(digits) {
            return Err(bad());
        }
        let year: u16 = year.parse().map_err(|_| bad())?;
        if !(Self::MIN_YEAR..=Self::MAX_YEAR).contains(&year) {
            return Err(Invalid(format!(
                "year {year} in {s:?} is outside {}..={}",
                Self::MIN_YEAR,
                Self::MAX_YEAR
            )));
        }
        match month {
            None => Ok(Period { year, month: 0 }),
            Some(m) => {
                let month: u8 = m.parse().map_err(|_| bad())?;
                if !(1..=12).contains(&month) {
                    return Err(Invalid(format!("month {m} in {s:?} is outside 01..=12")));
                }
                Ok(Period { year, month })
            }
        }
    }

    /// A bound of a period range: a period, or a quarter as answers label
    /// it (`2025-Q1`), which stands for its first month as a lower bound
    /// and its last month as an upper one (`end`).
    pub fn parse_bound(s: &str, end: bool) -> Result<Self, Invalid> {
        let b = s.as_bytes();
        if b.len() == 7 && &b[4..6] == b"-Q" {
            let year = Self::parse(&s[..4])?;
            let quarter = match b[6] {
                q @ b'1'..=b'4' => q - b'0',
                _ => {
                    return Err(Invalid(format!(
                        "quarter {:?} in {s:?} is outside Q1..=Q4",
                        &s[5..]
                    )));
                }
            };
            let month = if end { quarter * 3 } else { quarter * 3 - 2 };
            return Ok(Period {
                year: year.year,
                month,
            });
        }
        Self::parse(s).map_err(|e| match s.len() {
            7 if b[4] == b'-' => e,
            _ => Invalid(format!(
                "{s:?} is not a period: expected YYYY, YYYY-Qn or YYYY-MM"
            )),
        })
    }

    /// Rebuilds a period read back from storage.
    pub fn from_parts(year: u16, month: u8) -> Option<Self> {
        ((Self::MIN_YEAR..=Self::MAX_YEAR).contains(&year) && month <= 12).then_some(Period { year, month })
    }

    pub fn year(&self) -> u16 {
        self.year
    }

    /// 1..=12 for a monthly period, `None` for a year.
    pub fn month(&self) -> Option<u8> {
        (self.month != 0).then_some(self.month)
    }

    pub fn frequency(&self) -> Frequency {
        if self.month == 0 {
            Frequency::Annual
        } else {
            Frequency::Monthly
        }
    }
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.month() {
            None => write!(f, "{:04}", self.year),
            Some(m) => write!(f, "{:04}-{:02}", self.year, m),
        }
    }
}

impl fmt::Debug for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_years_and_months() {
        let y = Period::parse("2025").unwrap();
        assert_eq!(
            (y.year(), y.month(), y.frequency()),
            (2025, None, Frequency::Annual)
        );
        let m = Period::parse("2025-03").unwrap();
        assert_eq!(
            (m.year(), m.month(), m.frequency()),
            (2025, Some(3), Frequency::Monthly)
        );
        assert_eq!(m.to_string(), "2025-03");
        assert!(y < m);
    }

    #[test]
    fn quarters_bound_ranges_by_their_months() {
        let from = Period::parse_bound("2025-Q2", false).unwrap();
        let to = Period::parse_bound("2025-Q2", true).unwrap();
        assert_eq!(
            (from.to_string(), to.to_string()),
            ("2025-04".into(), "2025-06".into())
        );
        assert_eq!(Period::parse_bound("2025", true).unwrap().to_string(), "2025");
        assert_eq!(
            Period::parse_bound("2025-11", false).unwrap().to_string(),
            "2025-11"
        );
        for bad in ["2025-Q0", "2025-Q5", "2025-q1", "1899-Q1", "2025-Q"] {
            assert!(Period::parse_bound(bad, false).is_err(), "{bad}");
        }
        assert!(
            Period::parse("2025-Q1").is_err(),
            "a record's period is never a quarter"
        );
    }

    #[test]
    fn rejects_bad_periods() {
        for bad in [
            "2025-13",
            "2025-00",
            "1899",
            "2101",
            "25",
            "2025-3",
            "2025/03",
            "+025",
            "",
            "２０２５",
        ] {
            assert!(Period::parse(bad).is_err(), "{bad}");
        }
    }
}
