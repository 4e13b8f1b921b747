//! Commodities: all goods (`TOTAL`) or a Harmonized System code.

use std::fmt;

use super::Invalid;

/// Level of detail of a commodity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CommodityLevel {
    Total,
    Hs2,
    Hs4,
    Hs6,
}

/// `TOTAL` or an HS code of 2, 4 or 6 digits, kept as digits (`01`).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Commodity {
    level: CommodityLevel,
    /// ASCII digits, unused tail zero-filled.
    digits: [u8; 6],
}

impl Commodity {
    pub const TOTAL: Commodity = Commodity {
        level: CommodityLevel::Total,
        digits: [0; 6],
    };

    /// Parses `TOTAL`, an empty string (meaning `TOTAL`) or an HS code.
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        if s.is_empty() || s == "TOTAL" {
            return Ok(Self::TOTAL);
        }
        let level = match s.len() {
            2 => CommodityLevel::Hs2,
            4 => CommodityLevel::Hs4,
            6 => CommodityLevel::Hs6,
            _ => CommodityLevel::Total,
        };
        if level == CommodityLevel::Total || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(Invalid(format!(
                "{s:?} is not a commodity: expected TOTAL or an HS code of 2, 4 or 6 digits"
            )));
        }
        let mut digits = [0u8; 6];
        digits[..s.len()].copy_from_slice(s.as_bytes());
        Ok(Commodity { level, digits })
    }

    /// The level and digits in one word (for hashing).
    pub(crate) fn packed(&self) -> u64 {
        let mut word = [0u8; 8];
        word[0] = self.level as u8;
        word[1..7].copy_from_slice(&self.digits);
        u64::from_le_bytes(word)
    }

    pub fn level(&self) -> CommodityLevel {
        self.level
    }

    /// The HS digits; empty for `TOTAL`.
    pub fn digits(&self) -> &str {
        let len = match self.level {
            CommodityLevel::Total => 0,
            CommodityLevel::Hs2 => 2,
            CommodityLevel::Hs4 => 4,
            CommodityLevel::Hs6 => 6,
        };
        std::str::from_utf8(&self.digits[..len]).unwrap_or("")
    }

    pub fn as_str(&self) -> &str {
        match self.level {
            CommodityLevel::Total => "TOTAL",
            _ => self.digits(),
        }
    }
}

impl fmt::Display for Commodity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Commodity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_total_and_hs_codes() {
        assert_eq!(Commodity::parse("").unwrap(), Commodity::TOTAL);
        assert_eq!(Commodity::parse("TOTAL").unwrap().as_str(), "TOTAL");
        let c = Commodity::parse("01").unwrap();
        assert_eq!((c.level(), c.as_str()), (CommodityLevel::Hs2, "01"));
        assert_eq!(Commodity::parse("2701").unwrap().level(), CommodityLevel::Hs4);
        assert_eq!(Commodity::parse("270112").unwrap().level(), CommodityLevel::Hs6);
    }

    #[test]
    fn rejects_bad_commodities() {
        for bad in ["27A", "1", "123", "12345", "1234567", "total", "AB"] {
            assert!(Commodity::parse(bad).is_err(), "{bad}");
        }
    }
}
