//! Pagination (AIP-158) for the list calls: page sizes, and page tokens
//! that are opaque, tied to the request that issued them, and checked.
//!
//! A token is `base64url(version, request digest, resume key, tag)`: the
//! digest is of the request without its page fields, so a token used with
//! another selector is refused; the tag is a keyed BLAKE3 hash of the rest,
//! so a token the server never issued (or a damaged one) is refused too.
//! The key is fixed, not secret: a token only carries a position, which
//! confers nothing a caller could not list anyway, and being fixed it stays
//! valid across restarts and on every node.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use prost::Message;

use crate::error::{Error, Result};

/// Items per page when the caller does not say.
pub const DEFAULT_PAGE_SIZE: usize = 100;
const VERSION: u8 = 1;
const DIGEST_LEN: usize = 8;
const TAG_LEN: usize = 16;
/// Longest resume key a token carries (a record key is 22 bytes, a group
/// name or watch id at most 64).
const MAX_KEY_LEN: usize = 128;

/// What one list call asks for: how many items, after which key.
#[derive(Debug, PartialEq, Eq)]
pub struct Page {
    pub size: usize,
    pub after: Option<Vec<u8>>,
    digest: [u8; DIGEST_LEN],
}

impl Page {
    /// Reads a list request's page fields. `method` and `request` (with its
    /// page fields cleared by the caller) identify the listing a token must
    /// come from. A size of 0 means [`DEFAULT_PAGE_SIZE`]; one above `max` is
    /// lowered to it.
    pub fn parse<M: Message>(
        method: &str,
        request: &M,
        page_size: u32,
        token: &str,
        max: usize,
    ) -> Result<Page> {
        let size = match page_size as usize {
            0 => DEFAULT_PAGE_SIZE,
            n => n,
        }
        .min(max);
        let digest = digest(method, request);
        let after = if token.is_empty() {
            None
        } else {
            Some(open(token, &digest)?)
        };
        Ok(Page { size, after, digest })
    }

    /// This page of `items`, which are sorted by `key`: the items after the
    /// resume key, at most `size`, and the key of the last one when more
    /// follow (for [`Page::next_token`]).
    pub fn select<'a, T>(&self, items: &'a [T], key: impl Fn(&T) -> &[u8]) -> (&'a [T], Option<&'a [u8]>) {
        let start = match &self.after {
            Some(after) => items.partition_point(|item| key(item) <= after.as_slice()),
            None => 0,
        };
        let rest = &items[start..];
        if rest.len() > self.size {
            let page = &rest[..self.size];
            (page, page.last().map(key))
        } else {
            (rest, None)
        }
    }

    /// The token of the page after one that ended with `last_key`; empty
    /// when nothing follows.
    pub fn next_token(&self, last_key: Option<&[u8]>) -> String {
        let Some(key) = last_key else {
            return String::new();
        };
        let mut bytes = Vec::with_capacity(1 + DIGEST_LEN + key.len() + TAG_LEN);
        bytes.push(VERSION);
        bytes.extend_from_slice(&self.digest);
        bytes.extend_from_slice(key);
        let tag = tag(&bytes);
        bytes.extend_from_slice(&tag);
        URL_SAFE_NO_PAD.encode(bytes)
    }
}

fn digest<M: Message>(method: &str, request: &M) -> [u8; DIGEST_LEN] {
    let mut hasher = blake3::Hasher::new();
    hasher.update(method.as_bytes());
    hasher.update(&[0]);
    hasher.update(&request.encode_to_vec());
    let mut out = [0; DIGEST_LEN];
    out.copy_from_slice(&hasher.finalize().as_bytes()[..DIGEST_LEN]);
    out
}

fn tag(bytes: &[u8]) -> [u8; TAG_LEN] {
    let key = blake3::derive_key("tradewatch v1 page token", b"");
    let mut out = [0; TAG_LEN];
    out.copy_from_slice(&blake3::keyed_hash(&key, bytes).as_bytes()[..TAG_LEN]);
    out
}

/// The resume key of a token issued for the listing `digest` names.
fn open(token: &str, digest: &[u8; DIGEST_LEN]) -> Result<Vec<u8>> {
    let forged = || {
        Error::invalid(
            "page_token",
            "not a page token this server issued; pass next_page_token from the previous page unchanged",
        )
    };
    if token.len() > 4 * (1 + DIGEST_LEN + MAX_KEY_LEN + TAG_LEN).div_ceil(3) {
        return Err(forged());
    }
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| forged())?;
    if bytes.len() < 1 + DIGEST_LEN + TAG_LEN || bytes[0] != VERSION {
        return Err(forged());
    }
    let (body, given) = bytes.split_at(bytes.len() - TAG_LEN);
    if !bool::from(subtle::ConstantTimeEq::ct_eq(&tag(body)[..], given)) {
        return Err(forged());
    }
    if &body[1..1 + DIGEST_LEN] != digest {
        return Err(Error::invalid(
            "page_token",
            "this page token belongs to a listing with other criteria; \
             repeat the request that returned it, changing only page_token (and page_size)",
        ));
    }
    Ok(body[1 + DIGEST_LEN..].to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb;

    fn request(reporter: &str) -> pb::ListRecordsRequest {
        pb::ListRecordsRequest {
            selector: Some(pb::RecordSelector {
                reporters: vec![reporter.into()],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn tokens_round_trip_within_their_listing_only() {
        const M: &str = "ListRecords";
        let first = Page::parse(M, &request("CHN"), 0, "", 1000).unwrap();
        assert_eq!((first.size, first.after.as_deref()), (DEFAULT_PAGE_SIZE, None));
        let token = first.next_token(Some(b"r\x00key"));
        assert!(!token.is_empty());
        let next = Page::parse(M, &request("CHN"), 5000, &token, 1000).unwrap();
        assert_eq!((next.size, next.after.as_deref()), (1000, Some(&b"r\x00key"[..])));
        assert_eq!(first.next_token(None), "");

        let other = Page::parse(M, &request("KAZ"), 0, &token, 1000).unwrap_err();
        assert!(other.to_string().contains("other criteria"), "{other}");
        let other_method = Page::parse("ListGroups", &request("CHN"), 0, &token, 1000).unwrap_err();
        assert!(other_method.to_string().contains("other criteria"));
    }

    #[test]
    fn tokens_the_server_never_issued_are_refused() {
        let page = Page::parse("ListRecords", &request("CHN"), 0, "", 1000).unwrap();
        let token = page.next_token(Some(b"r\x00key"));
        let mut damaged = token.clone().into_bytes();
        let last = damaged.len() - 3;
        damaged[last] = if damaged[last] == b'A' { b'B' } else { b'A' };
        for bad in [
            "AAAA".to_owned(),
            "!!".to_owned(),
            String::from_utf8(damaged).unwrap(),
            "A".repeat(10_000),
            format!("{token}AA"),
        ] {
            let err = Page::parse("ListRecords", &request("CHN"), 0, &bad, 1000).unwrap_err();
            assert!(err.to_string().contains("not a page token"), "{bad}: {err}");
        }
    }
}
