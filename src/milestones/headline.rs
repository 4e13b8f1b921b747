//! Headlines a newsroom could print.

use super::{Cause, Direction, Milestone};
use crate::domain::CurrencyCode;

const NANOS: i128 = 1_000_000_000;

/// `102.0 billion USD`, `94.82 billion USD`, `3.9 million USD`, `512 USD`:
/// two decimals at most, trailing zeros trimmed down to `min_decimals`.
pub fn format_amount(nanos: i128, currency: CurrencyCode, min_decimals: usize) -> String {
    let (scale, word) = match nanos.unsigned_abs() {
        n if n >= (NANOS * NANOS) as u128 => (NANOS * NANOS, " billion"),
        n if n >= (1_000_000 * NANOS) as u128 => (1_000_000 * NANOS, " million"),
        _ => (NANOS, ""),
    };
    let sign = if nanos < 0 { "-" } else { "" };
    let hundredths = (nanos.abs() * 100 + scale / 2) / scale;
    let mut decimals = format!("{:02}", hundredths % 100);
    while decimals.len() > min_decimals && decimals.ends_with('0') {
        decimals.pop();
    }
    let whole = hundredths / 100;
    if decimals.is_empty() {
        format!("{sign}{whole}{word} {currency}")
    } else {
        format!("{sign}{whole}.{decimals}{word} {currency}")
    }
}

/// The headline of a milestone of watch `name` over the series described by
/// `series` (e.g. `CHN ↔ CENTRAL_ASIA, turnover`).
pub fn headline(name: &str, series: &str, currency: CurrencyCode, milestone: &Milestone) -> String {
    let value = |v: Option<i128>| format_amount(v.unwrap_or(0), currency, 1);
    match milestone {
        Milestone::ThresholdCrossed {
            period,
            threshold,
            direction: Direction::Up,
            after,
            ..
        } => format!(
            "{name} ({series}) reached {} in {}, crossing {}",
            value(*after),
            period.label(),
            format_amount(*threshold, currency, 0)
        ),
        Milestone::ThresholdCrossed {
            period,
            threshold,
            direction: Direction::Down,
            after,
            ..
        } => format!(
            "{name} ({series}) fell to {} in {}, back below {}",
            value(*after),
            period.label(),
            format_amount(*threshold, currency, 0)
        ),
        Milestone::RecordHigh {
            period,
            after,
            previous,
            cause,
            ..
        } => {
            let mut text = format!(
                "{name} ({series}) hit a record {} in {}",
                value(Some(*after)),
                period.label()
            );
            match previous {
                Some((p, Some(v))) => text.push_str(&format!(", above {}'s {}", p.label(), value(Some(*v)))),
                Some((p, None)) => text.push_str(&format!(", taking the record from {}", p.label())),
                None => {}
            }
            match cause {
                Cause::NewData => {}
                Cause::Revision => text.push_str(" (after a revision)"),
                Cause::GroupChange => text.push_str(" (after a change of partner group)"),
            }
            text
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Bucket, Granularity, Period};

    const BN: i128 = NANOS * NANOS;

    #[test]
    fn amounts_read_like_a_newspaper() {
        let usd = CurrencyCode::USD;
        assert_eq!(format_amount(102 * BN, usd, 1), "102.0 billion USD");
        assert_eq!(format_amount(94_820 * BN / 1000, usd, 1), "94.82 billion USD");
        assert_eq!(format_amount(100 * BN, usd, 0), "100 billion USD");
        assert_eq!(
            format_amount(3_900 * 1_000_000 * NANOS / 1000, usd, 1),
            "3.9 million USD"
        );
        assert_eq!(format_amount(512 * NANOS, usd, 0), "512 USD");
    }

    #[test]
    fn the_seed_headline() {
        let m = Milestone::ThresholdCrossed {
            period: Bucket::of(Period::from_parts(2025, 0).unwrap(), Granularity::Year),
            threshold: 100 * BN,
            direction: Direction::Up,
            before: Some(92 * BN),
            after: Some(102 * BN),
        };
        assert_eq!(
            headline(
                "China–Central Asia trade",
                "CHN ↔ CENTRAL_ASIA, turnover",
                CurrencyCode::USD,
                &m
            ),
            "China–Central Asia trade (CHN ↔ CENTRAL_ASIA, turnover) reached 102.0 billion USD in 2025, \
             crossing 100 billion USD"
        );
    }
}
