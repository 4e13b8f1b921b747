//! Idempotency keys (AIP-155): a client names a write so that retrying it
//! cannot apply it twice.

use std::fmt;

use super::Invalid;

/// A client's name for one write: a UUID or any string of 1 to 64 bytes.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RequestId(String);

impl RequestId {
    pub const MAX_BYTES: usize = 64;

    /// `None` for the empty string: the request has no id.
    pub fn parse(s: &str) -> Result<Option<Self>, Invalid> {
        match s.len() {
            0 => Ok(None),
            n if n > Self::MAX_BYTES => Err(Invalid(format!(
                "a request_id is at most {} bytes; this one has {n}",
                Self::MAX_BYTES
            ))),
            _ => Ok(Some(RequestId(s.to_owned()))),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl fmt::Debug for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A named write: its id and a digest of everything else the request says,
/// so that the same id sent with another request is told apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestTag {
    pub id: RequestId,
    pub fingerprint: [u8; 16],
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_1_to_64_bytes() {
        assert_eq!(RequestId::parse("").unwrap(), None);
        let uuid = "7f1c1f0e-8d1c-4c43-9d1e-1b9f0e2f4a11";
        assert_eq!(RequestId::parse(uuid).unwrap().unwrap().as_str(), uuid);
        assert!(RequestId::parse(&"x".repeat(64)).unwrap().is_some());
        let err = RequestId::parse(&"x".repeat(65)).unwrap_err();
        assert!(err.0.contains("at most 64 bytes"), "{err}");
        // Bytes, not characters: 22 three-byte characters are 66 bytes.
        assert!(RequestId::parse(&"€".repeat(22)).is_err());
    }
}
