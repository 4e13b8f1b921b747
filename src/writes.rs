//! Where the API's writes go: straight into this node's store, or, in
//! cluster mode, into the cluster's command log, from which every node's
//! store applies them.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::cluster::Node;
use crate::domain::Command;
use crate::error::Result;
use crate::store::{Applied, Position, Store};

/// A write on its way: answers once this node has applied it.
pub type Pending = Pin<Box<dyn Future<Output = Result<Applied>> + Send>>;

#[derive(Clone)]
pub enum Writes {
    /// This node's store is the log.
    Local(Arc<Store>),
    /// The cluster's command log.
    Cluster(Arc<Node>),
}

impl Writes {
    /// Applies `command` and answers once this node's store holds it.
    pub async fn apply(&self, command: Command) -> Result<Applied> {
        self.queue(command).await?.await
    }

    /// Queues `command` behind those queued before and returns once it is
    /// queued (in cluster mode: once the log holds it); the future answers
    /// once this node has applied it. Commands queued one after another are
    /// applied in that order.
    pub async fn queue(&self, command: Command) -> Result<Pending> {
        match self {
            Writes::Local(store) => {
                let queued = store.queue(command, Position::Next).await?;
                Ok(Box::pin(async move { Ok(queued.await?) }))
            }
            Writes::Cluster(node) => node.queue(command).await,
        }
    }
}
