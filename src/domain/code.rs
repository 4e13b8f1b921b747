//! Country and currency codes.

use std::fmt;

use super::{GroupName, Invalid};

/// An ISO 3166-1 alpha-3 country code, or `WLD` for the world.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CountryCode([u8; 3]);

impl CountryCode {
    /// The world as a trade partner.
    pub const WORLD: CountryCode = CountryCode(*b"WLD");

    /// Parses an upper-case ISO 3166-1 alpha-3 code or `WLD`.
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        let bytes = upper_alpha3(s)
            .ok_or_else(|| Invalid(format!("{s:?} is not a three-letter upper-case country code")))?;
        let code = CountryCode(bytes);
        if code == Self::WORLD || celes::Country::from_alpha3(s).is_ok() {
            Ok(code)
        } else {
            Err(Invalid(format!(
                "{s:?} is not an ISO 3166-1 alpha-3 country code (or WLD for the world)"
            )))
        }
    }

    /// Parses a country that can be a group member or reporter: any ISO code,
    /// but not the world.
    pub fn parse_country(s: &str) -> Result<Self, Invalid> {
        let code = Self::parse(s)?;
        if code == Self::WORLD {
            return Err(Invalid::new("WLD (the world) is only valid as a partner"));
        }
        Ok(code)
    }

    /// Rebuilds a code read back from storage; `None` if the bytes are not
    /// three upper-case letters.
    pub fn from_stored(bytes: [u8; 3]) -> Option<Self> {
        bytes
            .iter()
            .all(u8::is_ascii_uppercase)
            .then_some(CountryCode(bytes))
    }

    pub fn as_bytes(&self) -> [u8; 3] {
        self.0
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or("???")
    }

    /// The country's name as a headline prints it (`Kazakhstan`); the code
    /// itself when it has none.
    pub fn name(&self) -> String {
        if *self == Self::WORLD {
            return "the world".to_owned();
        }
        celes::Country::from_alpha3(self.as_str())
            .map_or_else(|_| self.as_str().to_owned(), |c| c.long_name.to_owned())
    }
}

/// An ISO 4217 currency code.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CurrencyCode([u8; 3]);

impl CurrencyCode {
    pub const USD: CurrencyCode = CurrencyCode(*b"USD");

    /// Parses an upper-case ISO 4217 code.
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        let bytes = upper_alpha3(s)
            .ok_or_else(|| Invalid(format!("{s:?} is not a three-letter upper-case currency code")))?;
        if iso_currency::Currency::from_code(s).is_none() {
            return Err(Invalid(format!("{s:?} is not an ISO 4217 currency code")));
        }
        // ISO 4217 codes that name no money: "no currency" and "testing".
        if matches!(s, "XXX" | "XTS") {
            return Err(Invalid(format!(
                "{s:?} is not a currency a trade figure can be stated in"
            )));
        }
        Ok(CurrencyCode(bytes))
    }

    /// Rebuilds a code read back from storage.
    pub fn from_stored(bytes: [u8; 3]) -> Option<Self> {
        bytes
            .iter()
            .all(u8::is_ascii_uppercase)
            .then_some(CurrencyCode(bytes))
    }

    pub fn as_bytes(&self) -> [u8; 3] {
        self.0
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or("???")
    }
}

fn upper_alpha3(s: &str) -> Option<[u8; 3]> {
    let bytes: [u8; 3] = s.as_bytes().try_into().ok()?;
    bytes.iter().all(u8::is_ascii_uppercase).then_some(bytes)
}

macro_rules! display_as_str {
    ($($t:ty),*) => {$(
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    )*};
}
display_as_str!(CountryCode, CurrencyCode);

/// A reporter or partner in a selector: one country or a named group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Party {
    Country(CountryCode),
    Group(GroupName),
}

impl fmt::Display for Party {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Party::Country(c) => fmt::Display::fmt(c, f),
            Party::Group(g) => fmt::Display::fmt(g, f),
        }
    }
}

impl Party {
    /// A three-letter value is a country code; anything longer a group name.
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        if s.len() == 3 {
            CountryCode::parse(s).map(Party::Country)
        } else {
            GroupName::parse(s).map(Party::Group).map_err(|_| {
                Invalid(format!(
                    "{s:?} is neither a country code (CHN) nor a group name (CENTRAL_ASIA)"
                ))
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn country_codes_follow_iso_3166() {
        assert_eq!(CountryCode::parse("CHN").unwrap().as_str(), "CHN");
        assert_eq!(CountryCode::parse("WLD").unwrap(), CountryCode::WORLD);
        assert!(CountryCode::parse("XYZ").is_err());
        assert!(CountryCode::parse("chn").is_err());
        assert!(CountryCode::parse("CH").is_err());
        assert!(CountryCode::parse("CHNA").is_err());
        assert!(CountryCode::parse_country("WLD").is_err());
        for code in ["KAZ", "KGZ", "TJK", "TKM", "UZB", "USA", "DEU"] {
            assert!(CountryCode::parse(code).is_ok(), "{code}");
        }
    }

    #[test]
    fn currency_codes_follow_iso_4217() {
        assert_eq!(CurrencyCode::parse("USD").unwrap(), CurrencyCode::USD);
        assert!(CurrencyCode::parse("CNY").is_ok());
        assert!(CurrencyCode::parse("US").is_err());
        assert!(CurrencyCode::parse("usd").is_err());
        assert!(CurrencyCode::parse("ABC").is_err());
        assert!(CurrencyCode::parse("XXX").is_err());
    }

    #[test]
    fn party_is_a_country_or_a_group() {
        assert!(matches!(Party::parse("KAZ"), Ok(Party::Country(_))));
        assert!(matches!(Party::parse("CENTRAL_ASIA"), Ok(Party::Group(_))));
        assert!(Party::parse("XYZ").is_err());
        assert!(Party::parse("central_asia").is_err());
    }
}
