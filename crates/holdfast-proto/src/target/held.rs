//! Messages a driver has not yet handed to its service: a MSG is
//! acknowledged only once the service has accepted it (PROTOCOL.md §6.2).
//! A driver that queues a session's deliveries (its service was not ready)
//! holds that session's messages back from `advance`, and releases them
//! once its queue has handed every one of them to the service. Other
//! sessions' messages are released at `advance` as usual.

use crate::ids::SessionId;
use crate::time::Timestamp;

use super::Target;

impl Target {
    /// Call before [`Target::advance`]: the messages of `session` delivered
    /// so far (in this and earlier Readies) are not yet with the service, so
    /// `advance` must not acknowledge them or return their credits. They
    /// stay held until [`Target::release_messages`].
    pub fn hold_messages(&mut self, session: SessionId) {
        if let Some(s) = self.sessions.get_mut(&session) {
            s.untaken = true;
        }
    }

    /// Every message of `session` handed out so far is now with the
    /// service: the acknowledgement may cover them and their credits
    /// return. A no-op for a session that is not held.
    pub fn release_messages(&mut self, session: SessionId, now: Timestamp) {
        self.now = now;
        let record = self.records_deliveries();
        let Some(s) = self.sessions.get_mut(&session) else {
            return;
        };
        if !std::mem::take(&mut s.untaken) {
            return;
        }
        if self.awaiting_advance {
            // A Ready is with the driver: its `advance` releases them
            // (with that Ready's own messages, which the driver hands to
            // the service before it calls `advance`, or holds again).
            if !self.releasing.contains(&session) {
                self.releasing.push(session);
            }
        } else {
            s.release_delivered(&mut self.changes, record);
            self.owe_ack(session);
        }
    }
}
