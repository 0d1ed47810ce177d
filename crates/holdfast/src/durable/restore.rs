//! Builds the target's core from a durable store with
//! [`holdfast_proto::Target::restore`] (PROTOCOL.md §12): the store's
//! incarnation, its sessions detached with the retain time counted on from
//! the last durable commit (the downtime the store measured), pending
//! commands and untaken messages delivered again in the first `Ready`.

use holdfast_proto::{RandomSource, TargetConfig, Timestamp};

use super::{DurableStore, StoreError};

/// The operating system's random generator, for session secrets.
struct OsRandom;

impl RandomSource for OsRandom {
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        if let Err(e) = getrandom::fill(dest) {
            // Without entropy we must not issue guessable secrets.
            panic!("the operating system's random generator failed: {e}");
        }
    }
}

/// The core for `store`.
pub(crate) fn core(
    config: &TargetConfig,
    store: &DurableStore,
    now: Timestamp,
) -> Result<holdfast_proto::Target, StoreError> {
    let mut stored = store.store().clone();
    // A store just created has recorded its incarnation in the log only.
    stored.set_incarnation(store.incarnation());
    let detached_for = store.report().downtime;
    holdfast_proto::Target::restore(
        config.clone(),
        Box::new(OsRandom),
        &stored,
        detached_for,
        now,
    )
    .map_err(|e| StoreError::Restore {
        dir: store.dir().to_path_buf(),
        what: e.to_string(),
    })
}
