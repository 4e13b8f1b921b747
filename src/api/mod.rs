//! tonic services: translate proto <-> domain, map errors to Status.

mod convert;
mod milestones;
mod paging;
mod request_id;
mod subscribe;
mod trade;

pub(crate) use convert::event_to_pb;
pub use milestones::MilestoneApi;
pub use subscribe::MilestoneServer;
pub(crate) use subscribe::SUBSCRIBE_PATH;
pub use trade::TradeApi;

/// Longest a read without a deadline of its own waits for its
/// `min_log_position`.
const MAX_POSITION_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Returns once `store` has applied the command log up to `position` (a
/// read's `min_log_position`; 0 asks for nothing), or DEADLINE_EXCEEDED,
/// saying how far the node is, a little before the call's deadline (so that
/// the answer reaches the caller before it gives up), or after
/// [`MAX_POSITION_WAIT`] for a call without one.
async fn caught_up(
    store: &crate::store::Store,
    position: u64,
    metadata: &tonic::metadata::MetadataMap,
) -> crate::error::Result<()> {
    if store.log_position() >= position {
        return Ok(());
    }
    let wait = metadata
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(crate::guard::parse_grpc_timeout)
        .map_or(MAX_POSITION_WAIT, |timeout| {
            (timeout * 9 / 10).min(MAX_POSITION_WAIT)
        });
    match tokio::time::timeout(wait, store.wait_for_position(position)).await {
        Ok(reached) => reached,
        Err(_) => Err(crate::error::Error::DeadlineExceeded(format!(
            "this node has applied the command log up to position {}, not yet {position} \
             (min_log_position), after waiting {wait:?}",
            store.log_position()
        ))),
    }
}
