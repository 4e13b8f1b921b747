//! tonic services: translate proto <-> domain, map errors to Status.

mod convert;
mod milestones;
mod paging;
mod request_id;
mod trade;

pub use milestones::MilestoneApi;
pub use trade::TradeApi;

/// Longest a read without a deadline of its own waits for its
/// `min_log_position`.
const MAX_POSITION_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Returns once `store` has applied the command log up to `position` (a
/// read's `min_log_position`; 0 asks for nothing). A call's own deadline
/// ends the wait with DEADLINE_EXCEEDED (the request guard sees to that);
/// a call without one waits at most [`MAX_POSITION_WAIT`].
async fn caught_up(store: &crate::store::Store, position: u64) -> crate::error::Result<()> {
    if store.log_position() >= position {
        return Ok(());
    }
    match tokio::time::timeout(MAX_POSITION_WAIT, store.wait_for_position(position)).await {
        Ok(reached) => reached,
        Err(_) => Err(crate::error::Error::DeadlineExceeded(format!(
            "this node has applied the command log up to position {}, not yet {position} \
             (min_log_position), after {MAX_POSITION_WAIT:?}",
            store.log_position()
        ))),
    }
}
