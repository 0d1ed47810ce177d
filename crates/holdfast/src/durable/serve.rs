//! Serving from a durable store: [`Target::serve_durable`] and
//! [`Target::serve_durable_on`] build the core from the store and start
//! the engine with group commit ([`super::commit`]).

use std::sync::Arc;

use crate::clock::Clock;
use crate::service::SessionService;
use crate::transport::{Acceptor, Endpoint, Listener};
use crate::{ServiceDurability, Target, TargetOptions};

use super::{DurableStore, StoreError};

impl Target {
    /// Binds every endpoint and serves `service` from a durable session
    /// store (PROTOCOL.md §12): the target is rebuilt from `store` (its
    /// sessions detached, their retain time counted from the last durable
    /// commit), and every batch of state changes is made durable with one
    /// fsync before any byte that reflects it leaves. `durability` is the
    /// service's side: synced before each group with a completion, its
    /// state stored in each group; a replay-safe service
    /// ([`ServiceDurability::replay_safe`]) has its commands executed before
    /// their receipt is durable, one group (one fsync) per command at
    /// queue depth 1 instead of two.
    pub async fn serve_durable<S: SessionService>(
        endpoints: &[Endpoint],
        options: TargetOptions,
        store: DurableStore,
        service: S,
        durability: Arc<dyn ServiceDurability>,
    ) -> Result<Target, StoreError> {
        let mut acceptors: Vec<Box<dyn Acceptor>> = Vec::new();
        for e in endpoints {
            let listener = Listener::bind(e, options.socket_detection_bound)
                .await
                .map_err(|source| StoreError::Io {
                    dir: store.dir().to_path_buf(),
                    action: "binding the target's endpoints (the store is untouched)",
                    source,
                })?;
            acceptors.push(Box::new(listener));
        }
        Target::serve_durable_on(acceptors, options, store, service, durability)
    }

    /// [`Target::serve_durable`] on connections from the given acceptors.
    /// Must run inside a tokio runtime.
    pub fn serve_durable_on<S: SessionService>(
        acceptors: Vec<Box<dyn Acceptor>>,
        options: TargetOptions,
        store: DurableStore,
        service: S,
        durability: Arc<dyn ServiceDurability>,
    ) -> Result<Target, StoreError> {
        let clock = Clock::new();
        let core = crate::durable::restore::core(&options.protocol, &store, clock.now())?;
        let committer = crate::durable::commit::Committer::new(store, durability);
        Ok(Target::start(
            acceptors,
            options,
            service,
            core,
            clock,
            Some(committer),
        ))
    }
}
