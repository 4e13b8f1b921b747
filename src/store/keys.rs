//! The one key encoding of the store. Everything lives in one sled tree so
//! that a write — records, derived state, events, sequence — is one atomic
//! `apply_batch`; the first byte of a key names its namespace.
//!
//! Record keys are fixed-width and ordered reporter, partner, commodity,
//! frequency, period, flow, currency, so that one reporter–partner pair, or one
//! commodity of it, is a contiguous range.

use crate::domain::{
    Commodity, CommodityLevel, CountryCode, CurrencyCode, Flow, Frequency, GroupName, Period, RecordKey,
};
use crate::error::{Error, Result};

pub const NS_EVENT: u8 = b'e';
/// Rollup over partners: reporter, currency, commodity, period, flow.
pub const NS_ROLLUP_REPORTER: u8 = b'p';
/// Rollup over reporters and partners: currency, commodity, period, flow.
pub const NS_ROLLUP_WORLD: u8 = b'w';
pub const NS_GROUP: u8 = b'g';
pub const NS_RECORD: u8 = b'r';

/// Store metadata (namespace byte 0x00): format version, head sequence.
pub const META_FORMAT_VERSION: &[u8] = b"\x00format_version";
pub const META_HEAD_SEQUENCE: &[u8] = b"\x00head_sequence";
/// The last command log position applied (see `writer::Position`).
pub const META_LOG_POSITION: &[u8] = b"\x00log_position";
/// The oldest event the log retains (1 unless retention trimmed it).
pub const META_OLDEST_SEQUENCE: &[u8] = b"\x00oldest_sequence";

/// Namespace byte + reporter 3 + partner 3 + commodity 7 + period 4 + flow 1
/// + currency 3.
pub const RECORD_KEY_LEN: usize = 22;

pub fn record_key(key: &RecordKey) -> [u8; RECORD_KEY_LEN] {
    let mut out = [0u8; RECORD_KEY_LEN];
    out[0] = NS_RECORD;
    out[1..4].copy_from_slice(&key.reporter.as_bytes());
    out[4..7].copy_from_slice(&key.partner.as_bytes());
    out[7..14].copy_from_slice(&commodity_bytes(key.commodity));
    out[14..18].copy_from_slice(&period_bytes(key.period));
    out[18] = key.flow.code();
    out[19..22].copy_from_slice(&key.currency.as_bytes());
    out
}

/// Level byte, then the digits zero-padded: `TOTAL` sorts first, then each
/// level in code order.
pub fn commodity_bytes(c: Commodity) -> [u8; 7] {
    let mut out = [0u8; 7];
    out[0] = level_byte(c.level());
    out[1..1 + c.digits().len()].copy_from_slice(c.digits().as_bytes());
    out
}

/// The first byte of an encoded commodity: its number of digits.
pub fn level_byte(level: CommodityLevel) -> u8 {
    match level {
        CommodityLevel::Total => 0,
        CommodityLevel::Hs2 => 2,
        CommodityLevel::Hs4 => 4,
        CommodityLevel::Hs6 => 6,
    }
}

/// Frequency byte (0 annual, 1 monthly), year, month (0 for annual): each
/// dataset is contiguous, years in order.
pub fn period_bytes(p: Period) -> [u8; 4] {
    let [hi, lo] = p.year().to_be_bytes();
    let frequency = match p.frequency() {
        Frequency::Annual => 0,
        Frequency::Monthly => 1,
    };
    [frequency, hi, lo, p.month().unwrap_or(0)]
}

/// The flow byte of rollup entries that hold trade volume (turnover if
/// published, else exports + imports) rather than one flow.
pub const VOLUME_FLOW: u8 = 0;

/// Byte offsets of the parts of a record key.
pub mod record_offsets {
    pub const REPORTER: usize = 1;
    pub const PARTNER: usize = 4;
    pub const COMMODITY: usize = 7;
    pub const PERIOD: usize = 14;
    pub const FLOW: usize = 18;
    pub const CURRENCY: usize = 19;
}

/// Rollup key over partners: ns, reporter 3, currency 3, commodity 7,
/// period 4, flow 1.
pub fn reporter_rollup_key(key: &RecordKey, flow: u8) -> [u8; 19] {
    let mut out = [0u8; 19];
    out[0] = NS_ROLLUP_REPORTER;
    out[1..4].copy_from_slice(&key.reporter.as_bytes());
    out[4..7].copy_from_slice(&key.currency.as_bytes());
    out[7..14].copy_from_slice(&commodity_bytes(key.commodity));
    out[14..18].copy_from_slice(&period_bytes(key.period));
    out[18] = flow;
    out
}

/// Rollup key over reporters and partners: ns, currency 3, commodity 7,
/// period 4, flow 1.
pub fn world_rollup_key(key: &RecordKey, flow: u8) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[0] = NS_ROLLUP_WORLD;
    out[1..4].copy_from_slice(&key.currency.as_bytes());
    out[4..11].copy_from_slice(&commodity_bytes(key.commodity));
    out[11..15].copy_from_slice(&period_bytes(key.period));
    out[15] = flow;
    out
}

/// Decodes the commodity part of a key (7 bytes).
pub fn decode_commodity(bytes: &[u8]) -> Option<Commodity> {
    let level = usize::from(*bytes.first()?);
    if level == 0 {
        return Some(Commodity::TOTAL);
    }
    let digits = std::str::from_utf8(bytes.get(1..1 + level)?).ok()?;
    Commodity::parse(digits).ok()
}

/// Decodes the period part of a key (4 bytes).
pub fn decode_period(bytes: &[u8]) -> Option<Period> {
    let period = Period::from_parts(
        u16::from_be_bytes([*bytes.get(1)?, *bytes.get(2)?]),
        *bytes.get(3)?,
    )?;
    (period_bytes(period)[0] == *bytes.first()?).then_some(period)
}

pub fn decode_record_key(bytes: &[u8]) -> Result<RecordKey> {
    let corrupt = || Error::Corrupt(format!("bad record key {bytes:02x?}"));
    if bytes.len() != RECORD_KEY_LEN || bytes[0] != NS_RECORD {
        return Err(corrupt());
    }
    let three = |at: usize| -> [u8; 3] { [bytes[at], bytes[at + 1], bytes[at + 2]] };
    Ok(RecordKey {
        reporter: CountryCode::from_stored(three(1)).ok_or_else(corrupt)?,
        partner: CountryCode::from_stored(three(4)).ok_or_else(corrupt)?,
        commodity: decode_commodity(&bytes[7..14]).ok_or_else(corrupt)?,
        period: decode_period(&bytes[14..18]).ok_or_else(corrupt)?,
        flow: Flow::from_code(i32::from(bytes[18])).map_err(|_| corrupt())?,
        currency: CurrencyCode::from_stored(three(19)).ok_or_else(corrupt)?,
    })
}

/// Key of a block of events, `first..=last`: namespace, first, last. Format
/// 1 stores wrote one event per key (namespace, sequence); those are read as
/// blocks of one.
pub fn event_block_key(first: u64, last: u64) -> [u8; 17] {
    let mut out = [0u8; 17];
    out[0] = NS_EVENT;
    out[1..9].copy_from_slice(&first.to_be_bytes());
    out[9..].copy_from_slice(&last.to_be_bytes());
    out
}

/// The greatest key a block starting at or before `sequence` can have: the
/// block holding `sequence`, if any, is the last key up to this one.
pub fn event_block_probe(sequence: u64) -> [u8; 17] {
    event_block_key(sequence, u64::MAX)
}

/// The sequences an event log key covers, `(first, last)`.
pub fn decode_event_block_key(bytes: &[u8]) -> Result<(u64, u64)> {
    let seq = |b: &[u8]| <[u8; 8]>::try_from(b).map(u64::from_be_bytes).ok();
    let range = match bytes {
        [NS_EVENT, rest @ ..] if rest.len() == 8 => seq(rest).map(|s| (s, s)),
        [NS_EVENT, rest @ ..] if rest.len() == 16 => seq(&rest[..8]).zip(seq(&rest[8..])),
        _ => None,
    };
    range
        .filter(|(first, last)| first <= last)
        .ok_or_else(|| Error::Corrupt(format!("bad event key {bytes:02x?}")))
}

pub fn group_key(name: &GroupName) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + name.as_str().len());
    out.push(NS_GROUP);
    out.extend_from_slice(name.as_str().as_bytes());
    out
}

pub fn decode_group_key(bytes: &[u8]) -> Result<GroupName> {
    std::str::from_utf8(bytes.get(1..).unwrap_or_default())
        .ok()
        .and_then(|s| GroupName::parse(s).ok())
        .ok_or_else(|| Error::Corrupt(format!("bad group key {bytes:02x?}")))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn key_strategy() -> impl Strategy<Value = RecordKey> {
        let country = prop::sample::select(vec!["CHN", "KAZ", "KGZ", "USA", "DEU", "WLD"]);
        let commodity = prop::sample::select(vec!["TOTAL", "01", "27", "2701", "270112", "99", "9999"]);
        let currency = prop::sample::select(vec!["USD", "CNY", "EUR"]);
        (
            country.clone(),
            country,
            1i32..=5,
            1900u16..=2100,
            0u8..=12,
            commodity,
            currency,
        )
            .prop_map(|(r, p, f, y, m, c, cur)| RecordKey {
                reporter: CountryCode::parse(r).unwrap(),
                partner: CountryCode::parse(p).unwrap(),
                flow: Flow::from_code(f).unwrap(),
                period: Period::from_parts(y, m).unwrap(),
                commodity: Commodity::parse(c).unwrap(),
                currency: CurrencyCode::parse(cur).unwrap(),
            })
    }

    proptest! {
        #[test]
        fn record_keys_round_trip(key in key_strategy()) {
            prop_assert_eq!(decode_record_key(&record_key(&key)).unwrap(), key);
        }

        #[test]
        fn encoding_orders_by_reporter_partner_commodity_frequency_period(a in key_strategy(), b in key_strategy()) {
            let tuple = |k: &RecordKey| {
                (k.reporter, k.partner, k.commodity, k.period.frequency(), k.period, k.flow, k.currency)
            };
            prop_assert_eq!(record_key(&a).cmp(&record_key(&b)), tuple(&a).cmp(&tuple(&b)));
        }
    }
}
