//! Which `Received` records of a group are written without their payload:
//! those whose entry a later change of the same group finishes
//! (PROTOCOL.md §12.4).

use std::collections::{HashMap, HashSet};

use crate::ids::SessionId;
use crate::target::StateChange;

/// For each change of a group, whether it is a `Received` whose pending
/// entry a later change of the group removes again: a `Completed` of that
/// command, or a `MessagesDelivered` through that MSG or beyond. Its payload
/// is never read back (replay removes the entry before the group ends), so
/// it is written empty: a command received and answered in one group (a
/// replay-safe service's usual case, §12) costs the log its response bytes
/// only, not its request bytes as well.
pub(super) fn finished_in_group(changes: &[StateChange]) -> Vec<bool> {
    let mut completed: HashSet<(SessionId, u64)> = HashSet::new();
    let mut delivered: HashMap<SessionId, u64> = HashMap::new();
    let mut finished = vec![false; changes.len()];
    for (i, c) in changes.iter().enumerate().rev() {
        match c {
            StateChange::Completed {
                session, command, ..
            } => {
                completed.insert((*session, *command));
            }
            StateChange::MessagesDelivered { session, through } => {
                let d = delivered.entry(*session).or_insert(0);
                *d = (*d).max(*through);
            }
            StateChange::Received {
                session,
                seq,
                command,
                ..
            } => {
                finished[i] = if *command {
                    completed.contains(&(*session, *seq))
                } else {
                    delivered.get(session).is_some_and(|d| d >= seq)
                };
            }
            _ => {}
        }
    }
    finished
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn received(seq: u64, command: bool) -> StateChange {
        StateChange::Received {
            session: SessionId::new(1, 1),
            seq,
            command,
            payload: Bytes::from_static(b"request"),
        }
    }

    #[test]
    fn only_entries_finished_later_in_the_group() {
        let s = SessionId::new(1, 1);
        let changes = vec![
            received(1, true),
            received(2, true),
            StateChange::Completed {
                session: s,
                command: 1,
                response: 1,
                payload: Bytes::new(),
                status: None,
            },
            received(3, false),
            received(4, false),
            StateChange::MessagesDelivered {
                session: s,
                through: 3,
            },
            // Completed before it is received (not what the core emits,
            // but the log must not assume the order): the payload stays.
            StateChange::Completed {
                session: s,
                command: 5,
                response: 2,
                payload: Bytes::new(),
                status: None,
            },
            received(5, true),
        ];
        assert_eq!(
            finished_in_group(&changes),
            vec![true, false, false, true, false, false, false, false]
        );
    }
}
