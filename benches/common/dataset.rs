//! The synthetic dataset of the benchmarks, from a fixed formula.
#![allow(dead_code)]

use std::fmt::Display;

use tradewatch::pb;

pub const CENTRAL_ASIA: [&str; 5] = ["KAZ", "KGZ", "TJK", "TKM", "UZB"];
pub const YEARS: std::ops::RangeInclusive<u16> = 2016..=2025;

/// The synthetic dataset: `reporters` reporters (CHN first) × 100 partners
/// (the five Central Asian among them) × export and import × 10 years ×
/// TOTAL plus 99 HS2 codes (plus, with [`Dataset::with_hs4`], HS4 codes).
pub struct Dataset {
    pub name: &'static str,
    pub reporters: Vec<&'static str>,
    pub partners: Vec<&'static str>,
    pub commodities: Vec<String>,
}

impl Dataset {
    pub fn new(name: &'static str, reporter_count: usize) -> Dataset {
        let all: Vec<&'static str> = celes::Country::get_countries().iter().map(|c| c.alpha3).collect();
        let mut partners: Vec<&'static str> = CENTRAL_ASIA.to_vec();
        let others = all.iter().filter(|c| !CENTRAL_ASIA.contains(c) && **c != "CHN");
        partners.extend(others.clone().take(95));
        let mut reporters = vec!["CHN"];
        reporters.extend(others.skip(95).take(reporter_count - 1));
        let mut commodities = vec!["TOTAL".to_owned()];
        commodities.extend((1..=99).map(|c| format!("{c:02}")));
        Dataset {
            name,
            reporters,
            partners,
            commodities,
        }
    }

    /// The sizes the benches know: 1 M (5 reporters), 10 M (50) and 30 M
    /// (the 10 M rows plus 200 HS4 codes per pair, which none of the
    /// benchmark questions reads, so they match the same records as at 10 M).
    pub fn named(name: &str) -> Option<Dataset> {
        match name {
            "1m" => Some(Dataset::new("1m", 5)),
            "10m" => Some(Dataset::new("10m", 50)),
            "30m" => Some(Dataset::new("30m", 50).with_hs4(200)),
            _ => None,
        }
    }

    /// The same rows plus `count` HS4 codes per pair (0101–0104, 0201–0204,
    /// …: four headings of each chapter from 01 on).
    pub fn with_hs4(mut self, count: usize) -> Dataset {
        self.commodities
            .extend((0..count).map(|i| format!("{:02}{:02}", 1 + i / 4, 1 + i % 4)));
        self
    }

    pub fn len(&self) -> usize {
        self.reporters.len() * self.partners.len() * self.commodities.len() * YEARS.count() * 2
    }

    /// Whole units, from a fixed formula.
    pub fn value(r: usize, p: usize, c: usize, year: u16, flow: usize) -> i64 {
        let h =
            (r as i64 * 7919 + p as i64 * 104_729 + c as i64 * 613 + i64::from(year) * 31 + flow as i64 * 17)
                % 1_000_003;
        (h + 1) * 1000 + if c == 0 { 1_000_000_000 } else { 0 }
    }

    /// Every row: (reporter, partner, flow, year, commodity, units), in the
    /// order a statistics office releases them: by reporter, then year, then
    /// commodity, every partner of it together.
    pub fn rows(&self) -> impl Iterator<Item = (&'static str, &'static str, usize, u16, &str, i64)> + '_ {
        self.reporters.iter().enumerate().flat_map(move |(r, &reporter)| {
            YEARS.flat_map(move |year| {
                self.commodities
                    .iter()
                    .enumerate()
                    .flat_map(move |(c, commodity)| {
                        self.partners.iter().enumerate().flat_map(move |(p, &partner)| {
                            (0..2).map(move |flow| {
                                let units = Dataset::value(r, p, c, year, flow);
                                (reporter, partner, flow, year, commodity.as_str(), units)
                            })
                        })
                    })
            })
        })
    }
}

/// Writes `rows` — (reporter, partner, flow: 0 export, 1 import, period,
/// commodity, whole USD) — as a native CSV file at `path`, through a
/// temporary file so that a run cut short leaves none; returns how many.
pub fn write_native_csv<R: Display, Q: Display, P: Display, C: Display>(
    path: &std::path::Path,
    rows: impl IntoIterator<Item = (R, Q, usize, P, C, i64)>,
) -> anyhow::Result<usize> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut out = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
    writeln!(
        out,
        "reporter,partner,flow,period,commodity,currency,value,source,released_at"
    )?;
    let mut written = 0;
    for (reporter, partner, flow, period, commodity, units) in rows {
        let flow = if flow == 0 { "export" } else { "import" };
        writeln!(
            out,
            "{reporter},{partner},{flow},{period},{commodity},USD,{units},synthetic,"
        )?;
        written += 1;
    }
    out.flush()?;
    drop(out);
    std::fs::rename(&tmp, path)?;
    Ok(written)
}

pub fn to_record(row: (&str, &str, usize, u16, &str, i64)) -> pb::TradeRecord {
    let (reporter, partner, flow, year, commodity, units) = row;
    pb::TradeRecord {
        reporter: reporter.into(),
        partner: partner.into(),
        flow: if flow == 0 {
            pb::Flow::Export
        } else {
            pb::Flow::Import
        }
        .into(),
        period: year.to_string(),
        commodity: commodity.into(),
        value: Some(pb::Money {
            currency_code: "USD".into(),
            units,
            nanos: 0,
        }),
        source: "synthetic".into(),
        ..Default::default()
    }
}
