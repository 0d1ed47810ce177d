//! The invariant checker. It sees every execution in the service, every
//! outcome the initiator reports and the state of both machines after every
//! step, and reports the first violation of:
//!
//! * exactly once: a command that is not retry-safe executes at most once,
//!   and once if its caller got a response; a one-way message reported
//!   delivered executed exactly once; "not executed" means it never ran;
//! * order: within a session the service sees operations in issue order;
//! * no stale execution: once a newer session has executed anything, no
//!   command of an older session executes (it would land after commands
//!   issued after it), and no call executes after its caller was told it
//!   failed with a settled error (not executed, withdrawn, or "may have
//!   executed" in a session the target reported gone);
//! * integrity: a response carries what its execution returned;
//! * bounded: held messages and cached responses within the credit window,
//!   decoder buffers within the frame limit;
//! * liveness (checked by the world): every call gets exactly one outcome.

use std::collections::HashMap;

use holdfast_proto::{CallError, CallId, Initiator, SessionId, Target};

use super::service::{parse_response, OpKind, Services};

/// What became of a call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Response or delivery confirmation.
    Done,
    /// Failed; never ran.
    NotExecuted,
    /// Failed; may have run.
    MayHaveExecuted,
}

/// One issued operation.
#[derive(Debug)]
pub struct Op {
    /// Its kind.
    pub kind: OpKind,
    /// Its call id at the initiator.
    pub call: CallId,
    /// Its outcome, once known.
    pub outcome: Option<Outcome>,
    /// It failed with an error that promises it will not execute later.
    pub settled_failure: bool,
}

/// Tracks operations and checks invariants.
#[derive(Debug, Default)]
pub struct Checker {
    /// Operations by tag (tags increase in issue order).
    pub ops: HashMap<u64, Op>,
    call_to_tag: HashMap<CallId, u64>,
    /// Operations without an outcome.
    pub pending: usize,
    /// Outcome counts.
    pub done: u64,
    /// Failed with "not executed".
    pub not_executed: u64,
    /// Failed with "may have executed".
    pub may_have_executed: u64,
}

impl Checker {
    /// Records a submission.
    pub fn issued(&mut self, tag: u64, kind: OpKind, call: CallId) {
        self.ops.insert(
            tag,
            Op {
                kind,
                call,
                outcome: None,
                settled_failure: false,
            },
        );
        self.call_to_tag.insert(call, tag);
        self.pending += 1;
    }

    /// Checks one execution just performed by the service.
    pub fn executed(
        &self,
        services: &Services,
        session: SessionId,
        tag: u64,
    ) -> Result<(), String> {
        let op = self
            .ops
            .get(&tag)
            .ok_or_else(|| format!("service executed unknown tag {tag}"))?;
        let runs = services.executions.get(&tag).map_or(0, Vec::len);
        if !op.kind.retry_safe() && runs > 1 {
            return Err(format!(
                "exactly-once violated: {:?} tag {tag} executed {runs} times",
                op.kind
            ));
        }
        if op.outcome == Some(Outcome::NotExecuted) {
            return Err(format!("tag {tag} executed after failing as not executed"));
        }
        if op.settled_failure {
            return Err(format!(
                "stale execution: tag {tag} executed after its caller was told it failed and would not execute later"
            ));
        }
        if let Some(newest) = services.sessions_in_order.last() {
            if *newest != session {
                return Err(format!(
                    "stale execution: tag {tag} of {session} executed after the newer session {newest} had executed"
                ));
            }
        }
        let order = &services.order[&session];
        if order.len() >= 2 && order[order.len() - 2] >= tag {
            return Err(format!(
                "order violated in {session}: tag {tag} executed after tag {}",
                order[order.len() - 2]
            ));
        }
        Ok(())
    }

    fn settle(&mut self, call: CallId, outcome: Outcome) -> Result<u64, String> {
        let tag = *self
            .call_to_tag
            .get(&call)
            .ok_or_else(|| format!("outcome for unknown call {call:?}"))?;
        let op = self.ops.get_mut(&tag).ok_or("op vanished")?;
        if let Some(previous) = &op.outcome {
            return Err(format!(
                "call {call:?} (tag {tag}) got a second outcome {outcome:?} after {previous:?}"
            ));
        }
        match outcome {
            Outcome::Done => self.done += 1,
            Outcome::NotExecuted => self.not_executed += 1,
            Outcome::MayHaveExecuted => self.may_have_executed += 1,
        }
        op.outcome = Some(outcome);
        self.pending -= 1;
        Ok(tag)
    }

    /// Checks a response.
    pub fn response(
        &mut self,
        services: &Services,
        call: CallId,
        payload: &[u8],
    ) -> Result<(), String> {
        let tag = self.settle(call, Outcome::Done)?;
        let (rtag, result) =
            parse_response(payload).ok_or_else(|| format!("corrupt response {payload:02x?}"))?;
        if rtag != tag {
            return Err(format!(
                "call for tag {tag} got the response for tag {rtag}"
            ));
        }
        let runs = services
            .executions
            .get(&tag)
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        let kind = self.ops[&tag].kind;
        match (kind.retry_safe(), runs) {
            (_, []) => Err(format!("tag {tag} answered but never executed")),
            (false, [one]) if one.result == result => Ok(()),
            (false, _) => Err(format!(
                "tag {tag} answered {result} but executions were {runs:?}"
            )),
            (true, _) if result == tag => Ok(()),
            (true, _) => Err(format!("write tag {tag} answered {result}")),
        }
    }

    /// Checks a delivered one-way message.
    pub fn delivered(&mut self, services: &Services, call: CallId) -> Result<(), String> {
        let tag = self.settle(call, Outcome::Done)?;
        let runs = services.executions.get(&tag).map_or(0, Vec::len);
        if runs != 1 {
            return Err(format!(
                "message tag {tag} reported delivered but ran {runs} times"
            ));
        }
        Ok(())
    }

    /// Checks a failure.
    pub fn failed(
        &mut self,
        services: &Services,
        call: CallId,
        error: &CallError,
    ) -> Result<(), String> {
        let outcome = if error.may_have_executed() {
            Outcome::MayHaveExecuted
        } else {
            Outcome::NotExecuted
        };
        let tag = self.settle(call, outcome.clone())?;
        if error.is_settled() {
            if let Some(op) = self.ops.get_mut(&tag) {
                op.settled_failure = true;
            }
        }
        let runs = services.executions.get(&tag).map_or(0, Vec::len);
        if outcome == Outcome::NotExecuted && runs > 0 {
            return Err(format!(
                "tag {tag} failed as not executed but ran {runs} times"
            ));
        }
        Ok(())
    }

    /// Checks memory bounds of both machines.
    pub fn bounds(
        &self,
        initiator: &Initiator,
        target: &Target,
        max_frame: u32,
    ) -> Result<(), String> {
        if target.stats().credit_violations > 0 {
            return Err(format!(
                "the target saw {} credit violations",
                target.stats().credit_violations
            ));
        }
        let credits = initiator.config().credits as usize;
        if initiator.outstanding() > credits && !initiator.config().switches.ignore_credits {
            return Err(format!(
                "initiator holds {} outstanding with {credits} credits",
                initiator.outstanding()
            ));
        }
        let frame_bound = max_frame as usize + 64;
        if initiator.buffered().0 > frame_bound {
            return Err(format!(
                "initiator buffers {} bytes",
                initiator.buffered().0
            ));
        }
        for id in target.session_ids() {
            let Some(info) = target.session_info(id) else {
                continue;
            };
            let window = info.credits as usize;
            let (early, _) = target.reorder_occupancy(id);
            if info.held as usize > window
                || info.cached > window
                || info.running > window
                || (early > 0 && early >= window)
            {
                return Err(format!(
                    "session {id} exceeds its {window} credits: {info:?}"
                ));
            }
        }
        Ok(())
    }
}
