//! The engine's durable driving (PROTOCOL.md §12): takes the core's
//! `Ready`s and runs them through the group commit, in strict or early mode
//! (the rules are in [`super::driver`]); without a store each `Ready` is
//! finished at once.

use std::collections::HashMap;

use holdfast_proto::target::Transmit;
use holdfast_proto::{ConnId, Ready};

use super::commit::Done;
use super::driver::Driver;
use crate::service::SessionService;
use crate::target::{log_change, Engine};

impl<S: SessionService> Engine<S> {
    /// Takes `Ready`s and finishes them. With a durable store, in strict
    /// mode one with changes is committed first: no new `Ready` is taken
    /// until its commit is durable (`committed`); in early mode every
    /// `Ready` is executed at once and its output held for its group (see
    /// `crate::durable::driver`).
    ///
    /// Returns false when the target must stop: a group committed inline
    /// failed (see [`Engine::committed`]).
    pub(crate) async fn drain_ready(&mut self) -> bool {
        self.refresh_gates();
        if self.durable.as_ref().is_some_and(Driver::early) {
            return self.drain_early().await;
        }
        while !self.durable.as_ref().is_some_and(Driver::busy) && self.core.has_ready() {
            let mut ready = self.core.ready();
            if !ready.changes.is_empty() {
                if let Some(durable) = &mut self.durable {
                    for change in &ready.changes {
                        log_change(change);
                    }
                    match durable.commit_ready(ready) {
                        Ok(Some(committed)) => ready = committed,
                        Ok(None) => return true,
                        Err(error) => {
                            store_failed(&error);
                            return false;
                        }
                    }
                }
            }
            self.finish_ready(ready).await;
        }
        true
    }

    /// Early mode: executes every `Ready` (deliveries, `advance`, the
    /// answers given at once), holds its changes and output, then hands the
    /// held group to the committer if it is due (or commits it inline and
    /// sends its output). False: an inline commit failed.
    async fn drain_early(&mut self) -> bool {
        while self.core.has_ready() {
            let mut ready = self.core.ready();
            self.note_changes(&ready.changes);
            let mut deliveries = std::mem::take(&mut ready.deliveries);
            self.execute(&mut deliveries).await;
            ready.deliveries = deliveries;
            let empty = match &mut self.durable {
                Some(d) => d.hold(ready),
                None => Some(ready),
            };
            if let Some(ready) = empty {
                self.core.recycle(ready);
            }
        }
        let out = match &mut self.durable {
            Some(d) => d.flush_if_due(),
            None => Ok(Vec::new()),
        };
        match out {
            Ok(out) => {
                self.send_released(out);
                true
            }
            Err(error) => {
                store_failed(&error);
                false
            }
        }
    }

    /// A group commit finished: on success the output it held goes out (in
    /// strict mode its `Ready` is finished); on failure the target stops
    /// (false), for the store's state on disk is unknown after a failed
    /// fsync.
    pub(crate) async fn committed(&mut self, done: Option<Done>) -> bool {
        let Some(durable) = &mut self.durable else {
            return true;
        };
        let early = durable.early();
        match durable.committed(done) {
            Ok(out) => {
                if early {
                    self.send_released(out);
                } else {
                    for ready in out {
                        self.finish_ready(ready).await;
                    }
                }
                true
            }
            Err(error) => {
                store_failed(&error);
                false
            }
        }
    }

    /// Early mode: sends the output a group held back, in order. The bytes
    /// of consecutive `Ready`s without closes or fences are written with one
    /// send per connection (in their order on it) instead of one per
    /// `Ready`: a group of 32 answers is then one write on the socket, not
    /// 32. A `Ready` with a close or a fence first sends what was gathered,
    /// then goes out as it is.
    fn send_released(&mut self, out: Vec<Ready>) {
        let mut gathered: Vec<Transmit> = Vec::new();
        // Where each connection's bytes are in `gathered` (a group can
        // answer many connections).
        let mut index: HashMap<ConnId, usize> = HashMap::new();
        for mut ready in out {
            if ready.closes.is_empty() && ready.fences.is_empty() {
                for t in ready.transmits.drain(..) {
                    match index.get(&t.conn) {
                        Some(&i) => gathered[i].chunks.extend(t.chunks),
                        None => {
                            index.insert(t.conn, gathered.len());
                            gathered.push(t);
                        }
                    }
                }
            } else {
                self.send_gathered(&mut gathered, &mut index);
                self.send_output(&mut ready);
            }
            self.core.recycle(ready);
        }
        self.send_gathered(&mut gathered, &mut index);
    }

    fn send_gathered(&mut self, gathered: &mut Vec<Transmit>, index: &mut HashMap<ConnId, usize>) {
        index.clear();
        if !gathered.is_empty() {
            let mut ready = Ready {
                transmits: std::mem::take(gathered),
                ..Ready::default()
            };
            self.send_output(&mut ready);
        }
    }
}

/// Says why the target stops after a failed commit.
fn store_failed(error: &str) {
    tracing::error!(
        "the session store could not commit, so the target stops (nothing it had not made \
         durable was sent): {error}"
    );
}
