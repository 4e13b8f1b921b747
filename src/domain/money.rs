//! Exact money: integer nanos, never floating point.

use std::fmt;

use super::{CurrencyCode, Invalid};

const NANOS_PER_UNIT: i128 = 1_000_000_000;

/// An exact amount in one currency, held as nanos (billionths of a unit) in
/// an i128 so that sums of any number of records cannot overflow.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Money {
    currency: CurrencyCode,
    nanos: i128,
}

/// Which part of a `google.type.Money` shaped value is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MoneyPart {
    Units,
    Nanos,
}

impl Money {
    pub fn new(currency: CurrencyCode, nanos: i128) -> Self {
        Money { currency, nanos }
    }

    pub fn zero(currency: CurrencyCode) -> Self {
        Money { currency, nanos: 0 }
    }

    /// Checks the google.type.Money rules: |nanos| < 10^9, and nanos has the
    /// sign of units (any sign when units is zero). Returns the exact amount
    /// in nanos.
    pub fn amount_from_parts(units: i64, nanos: i32) -> Result<i128, (MoneyPart, Invalid)> {
        if nanos.unsigned_abs() >= 1_000_000_000 {
            return Err((
                MoneyPart::Nanos,
                Invalid(format!("nanos {nanos} is outside -999999999..=999999999")),
            ));
        }
        if (units > 0 && nanos < 0) || (units < 0 && nanos > 0) {
            return Err((
                MoneyPart::Nanos,
                Invalid(format!("nanos {nanos} must have the same sign as units {units}")),
            ));
        }
        Ok(Self::join(units, nanos))
    }

    /// Nanos from units and nanos already checked (as stored).
    #[inline]
    pub fn join(units: i64, nanos: i32) -> i128 {
        i128::from(units) * NANOS_PER_UNIT + i128::from(nanos)
    }

    pub fn currency(&self) -> CurrencyCode {
        self.currency
    }

    /// The exact amount in nanos.
    pub fn nanos(&self) -> i128 {
        self.nanos
    }

    /// Splits into google.type.Money `units` and `nanos`; `None` when the
    /// units do not fit an i64.
    pub fn to_parts(&self) -> Option<(i64, i32)> {
        let units = i64::try_from(self.nanos / NANOS_PER_UNIT).ok()?;
        // The remainder has the sign of the dividend, as google.type.Money wants.
        let nanos = (self.nanos % NANOS_PER_UNIT) as i32;
        Some((units, nanos))
    }
}

impl fmt::Display for Money {
    /// Plain decimal with the currency: `106300000000 USD`, `0.5 CNY`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.nanos < 0 { "-" } else { "" };
        let abs = self.nanos.unsigned_abs();
        let units = abs / NANOS_PER_UNIT as u128;
        let frac = abs % NANOS_PER_UNIT as u128;
        if frac == 0 {
            write!(f, "{sign}{units} {}", self.currency)
        } else {
            let frac = format!("{frac:09}");
            write!(
                f,
                "{sign}{units}.{} {}",
                frac.trim_end_matches('0'),
                self.currency
            )
        }
    }
}

impl fmt::Debug for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn follows_google_money_sign_rules() {
        assert_eq!(Money::amount_from_parts(1, 500_000_000), Ok(1_500_000_000));
        assert_eq!(Money::amount_from_parts(-1, -500_000_000), Ok(-1_500_000_000));
        assert_eq!(Money::amount_from_parts(0, -5), Ok(-5));
        assert!(Money::amount_from_parts(1, -1).is_err());
        assert!(Money::amount_from_parts(-1, 1).is_err());
        assert!(Money::amount_from_parts(0, 1_000_000_000).is_err());
        assert!(Money::amount_from_parts(0, i32::MIN).is_err());
    }

    #[test]
    fn displays_exact_decimals() {
        let usd = CurrencyCode::USD;
        assert_eq!(
            Money::new(usd, 106_300_000_000 * NANOS_PER_UNIT).to_string(),
            "106300000000 USD"
        );
        assert_eq!(Money::new(usd, 1_250_000_000).to_string(), "1.25 USD");
        assert_eq!(Money::new(usd, -5).to_string(), "-0.000000005 USD");
    }

    proptest! {
        #[test]
        fn parts_round_trip(units in any::<i64>(), nanos in 0i32..1_000_000_000) {
            let nanos = if units < 0 { -nanos } else { nanos };
            let amount = Money::amount_from_parts(units, nanos).unwrap();
            prop_assert_eq!(Money::new(CurrencyCode::USD, amount).to_parts(), Some((units, nanos)));
        }
    }
}
