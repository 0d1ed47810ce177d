//! Builds the target's core from a durable store: a new store's core is a
//! fresh target of the store's incarnation; a store with sessions is
//! rebuilt with `holdfast_proto::Target::restore` (PROTOCOL.md §12).

use holdfast_proto::{RandomSource, TargetConfig, Timestamp};

use super::{DurableStore, StoreError};

/// Draws the store's incarnation first (so the core issues session ids of
/// the store's incarnation), then the operating system's random bytes.
struct Seeded {
    first: Option<[u8; 4]>,
}

impl RandomSource for Seeded {
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        if let Some(word) = self.first.take() {
            if dest.len() == word.len() {
                dest.copy_from_slice(&word);
                return;
            }
        }
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
    let random = Box::new(Seeded {
        first: Some(store.incarnation().to_be_bytes()),
    });
    let stored = store.store();
    if stored.sessions().next().is_some() || stored.fenced_hosts().next().is_some() {
        return Err(StoreError::Restore {
            dir: store.dir().to_path_buf(),
            what: "this build cannot rebuild a target from stored sessions yet".into(),
        });
    }
    Ok(holdfast_proto::Target::new(config.clone(), random, now))
}
