//! Service errors: a command that executed and whose service reported an
//! error is answered with the status response `ServiceFailed`, carrying the
//! error's description (PROTOCOL.md §6.7), never with an empty success.

use bytes::Bytes;

use crate::error::CompleteError;
use crate::ids::SessionId;
use crate::time::Timestamp;
use crate::wire::ResponseStatus;
use crate::Seq;

use super::{session, Target};

impl Target {
    /// Records that the service failed command `seq` of `session` with
    /// `error` (its description): the command executed, and a status
    /// response `ServiceFailed` whose text is `error`, cut at a character
    /// boundary to fit the initiator's limit and 256 bytes, answers it in
    /// place of a response. The initiator's call fails with that text.
    pub fn fail(
        &mut self,
        session: SessionId,
        seq: Seq,
        error: &str,
        now: Timestamp,
    ) -> Result<(), CompleteError> {
        self.now = now;
        self.check_overrun(session, now);
        let s = self
            .sessions
            .get_mut(&session)
            .ok_or(CompleteError::UnknownSession(session))?;
        if !s.is_running(seq) {
            return Err(CompleteError::NotRunning { session, seq });
        }
        self.stats.service_failures += 1;
        let text = session::status_text(error.to_owned(), s.max_response());
        let status = Some(ResponseStatus::ServiceFailed);
        s.complete(seq, Bytes::from(text), status, &mut self.changes);
        self.after_completion(session);
        Ok(())
    }
}

impl Target {
    /// Answers command `seq` of `session` with the status response
    /// `NotExecuted` because the service's readiness check failed with
    /// `error` before the command was handed to it: it never ran and never
    /// will. Ignored if the command is not running.
    pub fn refuse_unready(&mut self, session: SessionId, seq: Seq, error: &str, now: Timestamp) {
        self.now = now;
        let Some(s) = self.sessions.get_mut(&session) else {
            return;
        };
        if !s.is_running(seq) {
            return;
        }
        self.stats.not_executed += 1;
        let text = format!(
            "not executed, and it never will be: the service was not ready ({error}); issue it again"
        );
        let text = session::status_text(text, s.max_response());
        let status = Some(ResponseStatus::NotExecuted);
        s.complete(seq, Bytes::from(text), status, &mut self.changes);
        self.after_completion(session);
    }
}
