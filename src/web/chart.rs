//! A watch's series as an SVG chart, drawn by the server (plotters) so that
//! an article can embed it with an `<img>`: one bar per period, the
//! thresholds as lines, record highs and crossings marked, the axis in the
//! currency in readable units.
//!
//! The figures are those of `Aggregate` (`query::aggregate::series`), and
//! the SVG carries them exactly — `data-units` and `data-nanos` as in
//! `google.type.Money` — in a `<g id="series">` of empty elements, so that
//! a script or a test can read what the bars show.

use std::fmt::Write as _;

use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::domain::{CurrencyCode, Money, WatchDef};
use crate::error::Result;
use crate::query::aggregate;
use crate::store::Store;

const SIZE: (u32, u32) = (760, 420);
const BAR: RGBColor = RGBColor(0x4c, 0x72, 0xb0);
const CROSSING: RGBColor = RGBColor(0xc4, 0x4e, 0x52);
const RECORD: RGBColor = RGBColor(0xdd, 0x84, 0x52);
const THRESHOLD: RGBColor = RGBColor(0x55, 0x55, 0x55);
/// Periods beyond which bars get no value labels (monthly data).
const MAX_VALUE_LABELS: usize = 16;

/// One period of the series.
#[derive(Debug, Clone, PartialEq)]
pub struct Period {
    /// `2025`, `2025-Q1`, `2025-03`.
    pub label: String,
    pub nanos: i128,
    pub records: u64,
    /// Higher than every period before it (and not the first).
    pub record_high: bool,
    /// The thresholds crossed since the period before (up or down).
    pub crossed: Vec<i128>,
}

/// What the chart shows.
#[derive(Debug, Clone, PartialEq)]
pub struct Chart {
    pub watch: WatchDef,
    pub periods: Vec<Period>,
}

impl Chart {
    /// The chart of a stored watch; `None` when there is no such watch.
    pub fn load(store: &Store, id: &crate::domain::WatchId) -> Result<Option<Chart>> {
        let Some((watch, _)) = store.get_watch(id)? else {
            return Ok(None);
        };
        let answer = aggregate::series(store, watch.spec.clone())?;
        let points = answer
            .rows
            .iter()
            .filter_map(|row| Some((row.group.period?.label(), row.total.nanos(), row.record_count)))
            .collect();
        Ok(Some(Chart::new(watch, points)))
    }

    /// Marks the record highs and crossings of `points` (label, nanos,
    /// records), in period order.
    pub fn new(watch: WatchDef, points: Vec<(String, i128, u64)>) -> Chart {
        let mut highest: Option<i128> = None;
        let mut previous: Option<i128> = None;
        let periods = points
            .into_iter()
            .map(|(label, nanos, records)| {
                let record_high = watch.rules.record_high && highest.is_some_and(|h| nanos > h);
                let crossed = previous.map_or_else(Vec::new, |before| {
                    let (low, high) = (before.min(nanos), before.max(nanos));
                    watch
                        .rules
                        .thresholds
                        .iter()
                        .copied()
                        .filter(|t| low < *t && *t <= high)
                        .collect()
                });
                highest = highest.max(Some(nanos));
                previous = Some(nanos);
                Period {
                    label,
                    nanos,
                    records,
                    record_high,
                    crossed,
                }
            })
            .collect();
        Chart { watch, periods }
    }

    fn currency(&self) -> CurrencyCode {
        self.watch.spec.currency
    }

    /// The chart as an SVG document.
    pub fn svg(&self) -> std::result::Result<String, String> {
        let mut out = String::new();
        self.draw(&mut out)
            .map_err(|e| format!("cannot draw the chart: {e}"))?;
        let data = self.data();
        match out.rfind("</svg>") {
            Some(end) => out.insert_str(end, &data),
            None => return Err("the chart has no </svg> end".to_owned()),
        }
        Ok(out)
    }

    fn draw(&self, out: &mut String) -> std::result::Result<(), Box<dyn std::error::Error>> {
        let root = SVGBackend::with_string(out, SIZE).into_drawing_area();
        root.fill(&WHITE)?;
        let thresholds = &self.watch.rules.thresholds;
        let largest = self
            .periods
            .iter()
            .map(|p| p.nanos)
            .chain(thresholds.iter().copied())
            .max()
            .unwrap_or(0);
        let unit = Unit::for_amount(largest);
        let labels: Vec<String> = self.periods.iter().map(|p| p.label.clone()).collect();
        // Headroom above the highest bar for its label, marker and the legend.
        let top = (unit.scaled(largest) * 1.35).max(1.0);
        let mut chart = ChartBuilder::on(&root)
            .caption(&self.watch.name, ("sans-serif", 22))
            .margin(16)
            .x_label_area_size(36)
            .y_label_area_size(60)
            .build_cartesian_2d((0..labels.len().saturating_sub(1)).into_segmented(), 0f64..top)?;
        let y_desc = format!("{} {}", self.currency(), unit.suffix).trim().to_owned();
        chart
            .configure_mesh()
            .disable_x_mesh()
            .light_line_style(TRANSPARENT)
            .x_labels(labels.len().clamp(1, 12))
            .x_label_formatter(&|x| match x {
                SegmentValue::CenterOf(i) | SegmentValue::Exact(i) => {
                    labels.get(*i).cloned().unwrap_or_default()
                }
                SegmentValue::Last => String::new(),
            })
            .y_desc(y_desc)
            .y_label_formatter(&|v| short(*v))
            .draw()?;
        if labels.is_empty() {
            root.draw(&Text::new(
                "no figures yet",
                (SIZE.0 as i32 / 2 - 50, SIZE.1 as i32 / 2),
                ("sans-serif", 18),
            ))?;
            root.present()?;
            return Ok(());
        }
        // Bar i spans from edge i to edge i + 1.
        let edge = |i: usize| {
            if i < labels.len() {
                SegmentValue::Exact(i)
            } else {
                SegmentValue::Last
            }
        };
        let center = SegmentValue::CenterOf;
        let bars = |crossing: bool| {
            let color = if crossing { CROSSING } else { BAR };
            let periods = self.periods.iter().enumerate();
            periods
                .filter(move |(_, p)| p.crossed.is_empty() != crossing)
                .map(move |(i, p)| {
                    let mut bar = Rectangle::new(
                        [(edge(i), 0.0), (edge(i + 1), unit.scaled(p.nanos))],
                        color.filled(),
                    );
                    bar.set_margin(0, 0, 14, 14);
                    bar
                })
        };
        chart.draw_series(bars(false))?;
        let crossing_bars = chart.draw_series(bars(true))?;
        if !thresholds.is_empty() {
            crossing_bars
                .label("crossed a threshold")
                .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 16, y + 5)], CROSSING.filled()));
        }
        for t in thresholds {
            let y = unit.scaled(*t);
            let line = PathElement::new(
                vec![(edge(0), y), (SegmentValue::Last, y)],
                THRESHOLD.stroke_width(2),
            );
            chart
                .draw_series(std::iter::once(line))?
                .label(format!("{} {}", short(y), y_desc_unit(&unit, self.currency())))
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], THRESHOLD.stroke_width(2)));
        }
        if self.periods.len() <= MAX_VALUE_LABELS {
            chart.draw_series(self.periods.iter().enumerate().map(|(i, p)| {
                Text::new(
                    short(unit.scaled(p.nanos)),
                    (center(i), unit.scaled(p.nanos) + top * 0.025),
                    ("sans-serif", 13)
                        .into_font()
                        .color(&BLACK)
                        .pos(Pos::new(HPos::Center, VPos::Bottom)),
                )
            }))?;
        }
        let record_highs = self.periods.iter().enumerate().filter(|(_, p)| p.record_high);
        if self.watch.rules.record_high {
            let marker = |(i, p): (usize, &Period)| {
                TriangleMarker::new((center(i), unit.scaled(p.nanos) + top * 0.09), 7, RECORD.filled())
            };
            chart
                .draw_series(record_highs.map(marker))?
                .label("record high")
                .legend(|(x, y)| TriangleMarker::new((x + 8, y), 6, RECORD.filled()));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.3))
            .draw()?;
        root.present()?;
        Ok(())
    }

    /// The exact figures, as empty elements the image does not show.
    fn data(&self) -> String {
        let mut out = format!(
            "<g id=\"series\" data-watch=\"{}\" data-currency=\"{}\">\n",
            self.watch.id,
            self.currency()
        );
        for p in &self.periods {
            let (units, nanos) = parts(p.nanos, self.currency());
            let crossed: Vec<String> = p.crossed.iter().map(|t| decimal(*t, self.currency())).collect();
            let _ = writeln!(
                out,
                "<g class=\"period\" data-period=\"{}\" data-units=\"{units}\" data-nanos=\"{nanos}\" \
                 data-records=\"{}\" data-record-high=\"{}\" data-crossed=\"{}\"><title>{}: {}</title></g>",
                p.label,
                p.records,
                p.record_high,
                crossed.join(" "),
                p.label,
                Money::new(self.currency(), p.nanos)
            );
        }
        for t in &self.watch.rules.thresholds {
            let (units, nanos) = parts(*t, self.currency());
            let _ = writeln!(
                out,
                "<g class=\"threshold\" data-units=\"{units}\" data-nanos=\"{nanos}\"><title>threshold {}</title></g>",
                Money::new(self.currency(), *t)
            );
        }
        out.push_str("</g>\n");
        out
    }
}

/// `google.type.Money` units and nanos; an amount past i64 units (which
/// the store refuses to let a watched series reach) shows as the maximum.
fn parts(nanos: i128, currency: CurrencyCode) -> (i64, i32) {
    Money::new(currency, nanos).to_parts().unwrap_or((i64::MAX, 0))
}

/// An exact amount as a plain decimal: `100000000000`, `0.25`.
fn decimal(nanos: i128, currency: CurrencyCode) -> String {
    let text = Money::new(currency, nanos).to_string();
    text.trim_end_matches(currency.as_str()).trim_end().to_owned()
}

/// A readable unit for an axis: billions, millions, thousands or units.
#[derive(Clone, Copy)]
struct Unit {
    divisor: f64,
    suffix: &'static str,
}

impl Unit {
    fn for_amount(nanos: i128) -> Unit {
        let units = nanos / 1_000_000_000;
        let (divisor, suffix) = match units {
            u if u >= 1_000_000_000 => (1e9, "bn"),
            u if u >= 1_000_000 => (1e6, "m"),
            u if u >= 1_000 => (1e3, "k"),
            _ => (1.0, ""),
        };
        Unit { divisor, suffix }
    }

    fn scaled(&self, nanos: i128) -> f64 {
        nanos as f64 / 1e9 / self.divisor
    }
}

fn y_desc_unit(unit: &Unit, currency: CurrencyCode) -> String {
    format!("{} {currency}", unit.suffix).trim().to_owned()
}

/// `94.82`, `100`, `0.5`: at most two decimals, no trailing zeros.
fn short(v: f64) -> String {
    let text = format!("{v:.2}");
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{CommodityFilter, Frequency, Granularity, Measure, WatchId, WatchRules};

    const BN: i128 = 1_000_000_000 * 1_000_000_000;

    fn watch(thresholds: Vec<i128>, record_high: bool) -> WatchDef {
        WatchDef {
            id: WatchId::parse("w1").unwrap(),
            name: "China–Central Asia trade <&>".into(),
            reporters: Vec::new(),
            partners: Vec::new(),
            spec: crate::domain::SeriesSpec {
                reporters: None,
                partners: None,
                measure: Measure::Volume,
                commodities: CommodityFilter::Exact([crate::domain::Commodity::TOTAL].into()),
                currency: CurrencyCode::USD,
                frequency: Frequency::Annual,
                granularity: Granularity::Year,
                from: crate::domain::Period::parse("2000").unwrap(),
                to: crate::domain::Period::parse("2030").unwrap(),
            },
            rules: WatchRules {
                thresholds,
                record_high,
                ..WatchRules::default()
            },
        }
    }

    fn points() -> Vec<(String, i128, u64)> {
        vec![
            ("2023".into(), 893 * BN / 10, 5),
            ("2024".into(), 9482 * BN / 100, 5),
            ("2025".into(), 1063 * BN / 10, 5),
            ("2026".into(), 99 * BN, 1),
        ]
    }

    #[test]
    fn record_highs_and_crossings_follow_the_periods() {
        let chart = Chart::new(watch(vec![100 * BN], true), points());
        let marks: Vec<(bool, usize)> = chart
            .periods
            .iter()
            .map(|p| (p.record_high, p.crossed.len()))
            .collect();
        assert_eq!(marks, [(false, 0), (true, 0), (true, 1), (false, 1)]);
        let without = Chart::new(watch(vec![100 * BN], false), points());
        assert!(without.periods.iter().all(|p| !p.record_high));
    }

    #[test]
    fn the_svg_carries_the_exact_figures() {
        let svg = Chart::new(watch(vec![100 * BN], true), points()).svg().unwrap();
        assert!(svg.starts_with("<svg"), "{svg}");
        assert!(svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains(
            "data-period=\"2024\" data-units=\"94820000000\" data-nanos=\"0\" data-records=\"5\" \
             data-record-high=\"true\" data-crossed=\"\""
        ));
        assert!(svg.contains("data-crossed=\"100000000000\""));
        assert!(svg.contains("class=\"threshold\" data-units=\"100000000000\""));
        assert!(svg.contains("USD bn"));
        assert!(
            svg.contains("China–Central Asia trade &lt;&amp;&gt;"),
            "the title is escaped"
        );
    }

    #[test]
    fn an_empty_series_still_draws() {
        let svg = Chart::new(watch(Vec::new(), true), Vec::new()).svg().unwrap();
        assert!(svg.contains("no figures yet"));
    }

    #[test]
    fn units_are_readable() {
        assert_eq!(Unit::for_amount(106 * BN).suffix, "bn");
        assert_eq!(Unit::for_amount(5_000_000 * 1_000_000_000).suffix, "m");
        assert_eq!(short(94.82), "94.82");
        assert_eq!(short(100.0), "100");
        assert_eq!(short(89.3), "89.3");
    }
}
