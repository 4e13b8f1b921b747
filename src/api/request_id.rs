//! Request ids of writes (AIP-155): parsed, and tied to a digest of the
//! rest of the request so that the same id sent with another request is
//! told apart from a retry.

use prost::Message;

use crate::domain::{RequestId, RequestTag};
use crate::error::{Error, Result};

/// The tag of a write whose `request_id` field held `id` (the caller has
/// taken it out of `request`): `None` when the id is empty. The digest
/// covers the method, so one id cannot stand for two kinds of write.
pub fn tag<M: Message>(method: &str, id: &str, request: &M) -> Result<Option<RequestTag>> {
    let Some(id) = RequestId::parse(id).map_err(|e| Error::invalid("request_id", e.0))? else {
        return Ok(None);
    };
    let mut hasher = blake3::Hasher::new();
    hasher.update(method.as_bytes());
    hasher.update(&[0]);
    hasher.update(&request.encode_to_vec());
    let mut fingerprint = [0; 16];
    fingerprint.copy_from_slice(&hasher.finalize().as_bytes()[..16]);
    Ok(Some(RequestTag { id, fingerprint }))
}
