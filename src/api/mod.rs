//! tonic services: translate proto <-> domain, map errors to Status.

mod convert;
mod milestones;
mod trade;

pub use milestones::MilestoneApi;
pub use trade::TradeApi;
