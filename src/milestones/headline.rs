//! Headlines a newsroom could print.

use super::{Cause, Direction, Milestone, Ranked};
use crate::domain::{Bucket, CurrencyCode, Granularity, RankRule, YtdKind};

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
            text.push_str(because(*cause));
            text
        }
        Milestone::RankChanged {
            period,
            rule,
            before,
            after,
            former_leader_now,
            cause,
        } => format!(
            "{name} ({series}): {}{}",
            rank_news(*rule, &period.label(), before, after, *former_leader_now, &value),
            because(*cause)
        ),
        Milestone::GrowthCrossed {
            period,
            threshold_bp,
            direction,
            after,
            cause,
            ..
        } => {
            let earlier = period.year_earlier().label();
            let crossing = match direction {
                Direction::Up => "crossing",
                Direction::Down => "back below",
            };
            let growth = match after {
                Some((v, p)) => format!(
                    "growth of {} in {} over {earlier}",
                    format_growth(*v, *p),
                    period.label()
                ),
                None => format!("no growth figure for {} over {earlier} any more", period.label()),
            };
            format!(
                "{name} ({series}): {growth}, {crossing} {}{}",
                format_bp(*threshold_bp),
                because(*cause)
            )
        }
        Milestone::YearToDate {
            kind,
            direction,
            year,
            through,
            value: so_far,
            compared,
            cause,
        } => {
            let span = year_span(*year, *through);
            let against = |other: &str| match (so_far, compared) {
                (Some(v), Some((_, c))) => {
                    format!(", {} against {other}'s {}", value(Some(*v)), value(Some(*c)))
                }
                _ => String::new(),
            };
            let news = match (kind, direction, compared) {
                (YtdKind::PassedPreviousYear, Direction::Up, Some((y, _))) => {
                    format!("{span} already exceeds all of {y}{}", against(&y.to_string()))
                }
                (YtdKind::PassedPreviousYear, _, Some((y, _))) => {
                    format!("{span} no longer exceeds all of {y}{}", against(&y.to_string()))
                }
                (YtdKind::PassedPreviousYear, _, None) => {
                    format!("{span} no longer compares with a previous year")
                }
                (YtdKind::RecordHigh, Direction::Up, _) => {
                    let best = compared.map(|(y, _)| against(&year_span(y, *through)));
                    format!(
                        "{span} is the highest {} on record{}",
                        months_label(*through),
                        best.unwrap_or_default()
                    )
                }
                (YtdKind::RecordHigh, Direction::Down, _) => {
                    let best = compared.map(|(y, _)| against(&year_span(y, *through)));
                    format!(
                        "{span} is no longer the highest {} on record{}",
                        months_label(*through),
                        best.unwrap_or_default()
                    )
                }
            };
            format!("{name} ({series}): {news}{}", because(*cause))
        }
    }
}

/// What a milestone's cause adds to its headline.
fn because(cause: Cause) -> &'static str {
    match cause {
        Cause::NewData => "",
        Cause::Revision => " (after a revision)",
        Cause::GroupChange => " (after a change of partner group)",
    }
}

/// What changed in a period's top, in words.
fn rank_news(
    rule: RankRule,
    period: &str,
    before: &[Ranked],
    after: &[Ranked],
    former_leader_now: Option<i128>,
    value: &dyn Fn(Option<i128>) -> String,
) -> String {
    let noun = rule.by.noun();
    let named = |(c, v): &Ranked| format!("{} ({})", c.name(), value(Some(*v)));
    let (Some(old_first), Some(new_first)) = (before.first(), after.first()) else {
        return match (after, rule.top) {
            ([first], 1) => format!(
                "{} is the largest {noun} in {period}, with {}",
                first.0.name(),
                value(Some(first.1))
            ),
            ([], 1) => format!("no {noun} has figures for {period} any more"),
            ([], n) => {
                format!("fewer than {n} {noun}s have figures for {period} now; the top {n} no longer stands")
            }
            (list, n) => format!(
                "the top {n} {noun}s in {period} are {}",
                list.iter().map(named).collect::<Vec<_>>().join(", ")
            ),
        };
    };
    let mut parts = Vec::new();
    if old_first.0 != new_first.0 {
        parts.push(match former_leader_now {
            Some(v) => format!(
                "{} overtook {} as the largest {noun} in {period}, {} against {}",
                new_first.0.name(),
                old_first.0.name(),
                value(Some(new_first.1)),
                value(Some(v))
            ),
            None => format!(
                "{} took first place among {noun}s in {period} from {}, with {}",
                new_first.0.name(),
                old_first.0.name(),
                value(Some(new_first.1))
            ),
        });
    }
    let names = |from: &[Ranked], without: &[Ranked]| {
        from.iter()
            .filter(|(c, _)| !without.iter().any(|(o, _)| o == c))
            .map(|(c, _)| c.name())
            .collect::<Vec<_>>()
    };
    let (entered, left) = (names(after, before), names(before, after));
    if rule.top > 1 && !entered.is_empty() {
        let top = format!("the top {} {noun}s", rule.top);
        let place = if parts.is_empty() {
            format!("{top} in {period}")
        } else {
            top
        };
        parts.push(format!(
            "{} entered {place}, {} left",
            entered.join(" and "),
            left.join(" and ")
        ));
    }
    parts.join("; ")
}

/// `+12.1 %`: growth of `value` over `previous`, one decimal.
fn format_growth(value: i128, previous: i128) -> String {
    format!("{:+.1} %", super::growth_percent(value, previous))
}

/// `+10 %`, `-2.5 %`: a threshold in basis points.
pub fn format_bp(bp: i32) -> String {
    let sign = if bp < 0 { '-' } else { '+' };
    let (whole, hundredths) = (bp.unsigned_abs() / 100, bp.unsigned_abs() % 100);
    if hundredths == 0 {
        format!("{sign}{whole} %")
    } else {
        let decimals = format!("{hundredths:02}");
        format!("{sign}{whole}.{} %", decimals.trim_end_matches('0'))
    }
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

/// The periods of a year up to `through`, as people say them:
/// `January–November`, `January`, `Q1–Q3`; empty for a whole year.
pub fn months_label(through: Bucket) -> String {
    let name = |sub: u8| match through.granularity {
        Granularity::Month => MONTHS
            .get(usize::from(sub).wrapping_sub(1))
            .map_or(String::new(), |m| (*m).to_owned()),
        Granularity::Quarter => format!("Q{sub}"),
        Granularity::Year => String::new(),
    };
    match through.sub {
        0 => String::new(),
        1 => name(1),
        sub => format!("{}–{}", name(1), name(sub)),
    }
}

/// `January–November 2025`, or `2025` for a whole year.
fn year_span(year: u16, through: Bucket) -> String {
    let label = months_label(through);
    let whole_year = match through.granularity {
        Granularity::Month => 12,
        Granularity::Quarter => 4,
        Granularity::Year => 0,
    };
    if label.is_empty() || through.sub == whole_year {
        year.to_string()
    } else {
        format!("{label} {year}")
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
