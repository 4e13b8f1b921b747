//! tonic services: translate proto <-> domain, map errors to Status.

mod convert;
mod milestones;
mod paging;
mod request_id;
mod trade;

pub use milestones::MilestoneApi;
pub use trade::TradeApi;
