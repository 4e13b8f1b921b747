//! The one key encoding of the store. Everything lives in one sled tree so
//! that a write — records, derived state, events, sequence — is one atomic
//! `apply_batch`; the first byte of a key names its namespace.
//!
//! Record keys are fixed-width and ordered reporter, partner, commodity,
//! period, flow, currency, so that one reporter–partner pair, or one
//! commodity of it, is a contiguous range.

use crate::domain::{
    Commodity, CommodityLevel, CountryCode, CurrencyCode, Flow, GroupName, Period, RecordKey,
};
use crate::error::{Error, Result};

pub const NS_EVENT: u8 = b'e';
pub const NS_GROUP: u8 = b'g';
pub const NS_RECORD: u8 = b'r';

/// Store metadata (namespace byte 0x00): format version, head sequence.
pub const META_FORMAT_VERSION: &[u8] = b"\x00format_version";
pub const META_HEAD_SEQUENCE: &[u8] = b"\x00head_sequence";

/// Namespace byte + reporter 3 + partner 3 + commodity 7 + period 3 + flow 1
/// + currency 3.
pub const RECORD_KEY_LEN: usize = 21;

pub fn record_key(key: &RecordKey) -> [u8; RECORD_KEY_LEN] {
    let mut out = [0u8; RECORD_KEY_LEN];
    out[0] = NS_RECORD;
    out[1..4].copy_from_slice(&key.reporter.as_bytes());
    out[4..7].copy_from_slice(&key.partner.as_bytes());
    out[7..14].copy_from_slice(&commodity_bytes(key.commodity));
    out[14..16].copy_from_slice(&key.period.year().to_be_bytes());
    out[16] = key.period.month().unwrap_or(0);
    out[17] = key.flow.code();
    out[18..21].copy_from_slice(&key.currency.as_bytes());
    out
}

/// Level byte, then the digits zero-padded: `TOTAL` sorts first, then each
/// level in code order.
fn commodity_bytes(c: Commodity) -> [u8; 7] {
    let mut out = [0u8; 7];
    out[0] = match c.level() {
        CommodityLevel::Total => 0,
        CommodityLevel::Hs2 => 2,
        CommodityLevel::Hs4 => 4,
        CommodityLevel::Hs6 => 6,
    };
    out[1..1 + c.digits().len()].copy_from_slice(c.digits().as_bytes());
    out
}

pub fn decode_record_key(bytes: &[u8]) -> Result<RecordKey> {
    let corrupt = || Error::Corrupt(format!("bad record key {bytes:02x?}"));
    if bytes.len() != RECORD_KEY_LEN || bytes[0] != NS_RECORD {
        return Err(corrupt());
    }
    let three = |at: usize| -> [u8; 3] { [bytes[at], bytes[at + 1], bytes[at + 2]] };
    let level = usize::from(bytes[7]);
    let digits = std::str::from_utf8(&bytes[8..8 + level.min(6)]).map_err(|_| corrupt())?;
    let commodity = Commodity::parse(if level == 0 { "TOTAL" } else { digits }).map_err(|_| corrupt())?;
    let year = u16::from_be_bytes([bytes[14], bytes[15]]);
    Ok(RecordKey {
        reporter: CountryCode::from_stored(three(1)).ok_or_else(corrupt)?,
        partner: CountryCode::from_stored(three(4)).ok_or_else(corrupt)?,
        commodity,
        period: Period::from_parts(year, bytes[16]).ok_or_else(corrupt)?,
        flow: Flow::from_code(i32::from(bytes[17])).map_err(|_| corrupt())?,
        currency: CurrencyCode::from_stored(three(18)).ok_or_else(corrupt)?,
    })
}

/// Prefix of every record of one reporter, or of one reporter–partner pair.
pub fn record_prefix(reporter: Option<CountryCode>, partner: Option<CountryCode>) -> Vec<u8> {
    let mut out = vec![NS_RECORD];
    if let Some(r) = reporter {
        out.extend_from_slice(&r.as_bytes());
        if let Some(p) = partner {
            out.extend_from_slice(&p.as_bytes());
        }
    }
    out
}

pub fn event_key(sequence: u64) -> [u8; 9] {
    let mut out = [0u8; 9];
    out[0] = NS_EVENT;
    out[1..].copy_from_slice(&sequence.to_be_bytes());
    out
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
        fn encoding_orders_by_reporter_partner_commodity_period(a in key_strategy(), b in key_strategy()) {
            let tuple = |k: &RecordKey| (k.reporter, k.partner, k.commodity, k.period, k.flow, k.currency);
            prop_assert_eq!(record_key(&a).cmp(&record_key(&b)), tuple(&a).cmp(&tuple(&b)));
        }
    }
}
