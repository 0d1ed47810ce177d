//! Path groups: one logical session over several target nodes that share a
//! backend (two `holdfast target` processes serving the same volume file).
//!
//! A [`PathGroup`] holds one runtime [`Initiator`] per node, all logging in
//! with the same host id and fencing epoch, and offers the same call surface
//! as an [`Initiator`] (`call_with`, `call_cancellable`, `close`, `stats`).
//! Calls go to the active path ([`Policy::ActivePassive`], the default) or
//! to the path with the fewest calls outstanding ([`Policy::ActiveActive`]).
//!
//! # Failover (docs/PROTOCOL.md, fenced failover)
//!
//! A path is *lost* when its connection is gone and not back within the
//! session's detection bound (or never came up within it). Then, for the
//! calls outstanding on it:
//!
//! 1. the group stops talking to the old node at once
//!    ([`Initiator::abort`]): its last contact with it is final, and every
//!    call comes back, either *not executed* (never sent: the node cannot
//!    have it) or *in doubt* (sent: it may still run there);
//! 2. the group raises its epoch and asks a surviving node to fence the old
//!    one; when the old node confirms, no command of the old session runs
//!    there any more. If the fence is not confirmed (the old node is
//!    unreachable), the group waits the old node's quiesce time plus
//!    [`PathGroupOptions::failover_delay`] from its last contact with it:
//!    past that, the node has promised that it starts none of the session's
//!    commands and that the ones it started have finished;
//! 3. calls are re-issued on a survivor in the order they were first
//!    issued (the `order` module): a call that was not executed goes as soon as every
//!    earlier call of the lost path has gone; a call in doubt goes once the
//!    fence (or the wait) is over, if it is retry-safe. A call in doubt that
//!    is not retry-safe fails with [`CallError::Withdrawn`]
//!    `{ may_have_executed: true }`: it may have run on the old node, and it
//!    never will again. A node that promised no quiesce time cannot be
//!    waited out: without a confirmed fence such calls fail "may have
//!    executed" and are not re-issued.
//!
//! A call a node answers `NotExecuted` (its quiesce promise or a fence kept
//! it from starting) is re-issued too. The lost path gets a new session at
//! the new epoch, which reconnects in the background and becomes a standby
//! (or, under active/active, a path again) when the node is back.
//!
//! # Order across paths
//!
//! Under active/passive every call goes through one session at a time, so
//! the guarantee of a single session holds across failovers: of two
//! overlapping writes issued one after the other, the second wins. Under
//! active/active, calls in flight at once on different nodes have no order
//! between them (like the queues of any multi-queue block device); a
//! caller that needs an order waits for the first call's answer.

mod failover;
mod node;
mod order;
mod stats;

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use holdfast_proto::{CallOptions, SessionLoss, SubmitError};
use thiserror::Error;
use tokio::sync::{watch, Notify};
use tracing::info;

use crate::error::CallError;
use crate::transport::{Connector, Endpoint, EndpointConnector};
use crate::{Initiator, InitiatorOptions};

pub use node::HostId;
pub use stats::{FenceKind, PathGroupStats, PathState, PathStats};

/// How calls are spread over the paths.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Policy {
    /// Every call goes to one path (the first target at start); the others
    /// wait as standbys and take over when it is lost.
    #[default]
    ActivePassive,
    /// Each call goes to the logged-in path with the fewest calls
    /// outstanding.
    ActiveActive,
}

impl std::str::FromStr for Policy {
    type Err = String;

    fn from_str(s: &str) -> Result<Policy, String> {
        match s {
            "active-passive" => Ok(Policy::ActivePassive),
            "active-active" => Ok(Policy::ActiveActive),
            other => Err(format!(
                "unknown policy {other:?}: use active-passive or active-active"
            )),
        }
    }
}

/// Path group settings. `#[non_exhaustive]`: start from
/// `PathGroupOptions::default()` and set the fields.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct PathGroupOptions {
    /// How calls are spread.
    pub policy: Policy,
    /// Extra wait, on top of the old node's advertised quiesce time, before
    /// calls in doubt are re-issued when the old node could not be fenced
    /// (for nodes that need more than they advertise). Default 0.
    pub failover_delay: Duration,
    /// Settings of each path's session (detection bound, credits, ...).
    pub initiator: InitiatorOptions,
    /// The host id every session presents; `None` draws a random one. (A
    /// host that restarts should keep its id and raise its epoch past the
    /// last one it used, or its sessions of before count as another host's.)
    pub host: Option<HostId>,
    /// **Test-only**: re-issue calls in doubt at once, without fencing the
    /// old node or waiting for its quiesce time. This is the data
    /// corruption of seed 001 (a stale write landing after its retry); it
    /// exists so the tests can show they catch it. Never set it otherwise.
    /// Present in every build (the struct's shape does not depend on a
    /// feature), it acts only with the `test-switches` feature.
    #[doc(hidden)]
    pub unfenced_failover: bool,
}

impl Default for PathGroupOptions {
    fn default() -> Self {
        PathGroupOptions {
            policy: Policy::default(),
            failover_delay: Duration::ZERO,
            initiator: InitiatorOptions::default(),
            host: None,
            unfenced_failover: false,
        }
    }
}

/// Why a path group could not be built.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum PathGroupError {
    /// No target was given.
    #[error("a path group needs at least one target")]
    NoTargets,
}

/// Builds a [`PathGroup`] from several targets.
pub struct PathGroupBuilder {
    targets: Vec<(String, Arc<dyn Connector>)>,
    options: PathGroupOptions,
}

impl std::fmt::Debug for PathGroupBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.targets.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("PathGroupBuilder")
            .field("targets", &names)
            .field("options", &self.options)
            .finish()
    }
}

impl PathGroupBuilder {
    /// Adds a target reached through `connector`, named `name` in stats
    /// and logs.
    pub fn connector(mut self, name: impl Into<String>, connector: Arc<dyn Connector>) -> Self {
        self.targets.push((name.into(), connector));
        self
    }

    /// Adds a target at `endpoint`; its TCP sockets give up on
    /// unacknowledged data after the sessions' detection bound. Set the
    /// options first.
    pub fn endpoint(self, endpoint: Endpoint) -> Self {
        let limit = self.options.initiator.protocol.dead_after;
        let name = endpoint.to_string();
        self.connector(name, Arc::new(EndpointConnector::new(endpoint, limit)))
    }

    /// Sets the options.
    pub fn options(mut self, options: PathGroupOptions) -> Self {
        self.options = options;
        self
    }

    /// Starts a session to every target. Returns at once; calls wait for a
    /// login.
    pub fn start(self) -> Result<PathGroup, PathGroupError> {
        PathGroup::start(self.targets, self.options)
    }
}

/// One logical session over several nodes. Cheap to clone; clones share
/// the group. See the [module documentation](self).
#[derive(Clone)]
pub struct PathGroup {
    inner: Arc<Group>,
}

impl std::fmt::Debug for PathGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PathGroup")
            .field("paths", &self.inner.paths.len())
            .finish_non_exhaustive()
    }
}

/// What became of the calls of a lost session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    /// The session is not lost.
    Live,
    /// Lost; the fence (or the wait) is under way.
    Fencing,
    /// Nothing of the old session runs any more (or, test-only, fencing
    /// was skipped): calls in doubt may be re-issued.
    Safe,
    /// The old node could be neither fenced nor waited out.
    Unsafe,
}

/// The calls of one session.
#[derive(Debug, Default)]
struct Calls {
    /// The group declared the session lost: no call joins it any more.
    lost: bool,
    /// Numbers of the calls outstanding on it.
    open: BTreeSet<u64>,
}

/// One session to one node.
struct PathSession {
    initiator: Initiator,
    link: watch::Receiver<bool>,
    calls: Mutex<Calls>,
    outcome: watch::Sender<Outcome>,
}

impl PathSession {
    fn new(initiator: Initiator) -> Arc<PathSession> {
        let link = node::watch_link(&initiator);
        Arc::new(PathSession {
            initiator,
            link,
            calls: Mutex::new(Calls::default()),
            outcome: watch::channel(Outcome::Live).0,
        })
    }

    fn calls(&self) -> std::sync::MutexGuard<'_, Calls> {
        self.calls.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers call `n`; false if the session is lost.
    fn register(&self, n: u64) -> bool {
        let mut c = self.calls();
        if c.lost {
            return false;
        }
        c.open.insert(n);
        true
    }

    fn unregister(&self, n: u64) {
        self.calls().open.remove(&n);
    }

    fn is_lost(&self) -> bool {
        self.calls().lost
    }

    fn is_up(&self) -> bool {
        *self.link.borrow()
    }

    fn outstanding(&self) -> usize {
        self.calls().open.len()
    }

    /// Once the session is lost, waits for the fate of its calls in doubt.
    async fn settled(&self) -> Outcome {
        let mut rx = self.outcome.subscribe();
        rx.wait_for(|o| matches!(o, Outcome::Safe | Outcome::Unsafe))
            .await
            .map(|o| *o)
            .unwrap_or(Outcome::Unsafe)
    }
}

/// Per-path counters and state.
#[derive(Debug, Default)]
struct Counters {
    /// A state set by the failover (fencing, down, closed); `None`: derive
    /// it from the session.
    state: Option<PathState>,
    failovers: u64,
    fences_requested: u64,
    fences_confirmed: u64,
    last_fence: Option<FenceKind>,
    fence_latency: Option<Duration>,
    moved: u64,
    failed: u64,
    /// The path gave up (no session for the session-loss timeout).
    gave_up: bool,
}

/// One path: a node and its current session.
struct Path {
    name: String,
    connector: Arc<dyn Connector>,
    session: Mutex<Arc<PathSession>>,
    counters: Mutex<Counters>,
}

impl Path {
    fn session(&self) -> Arc<PathSession> {
        self.session
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn counters(&self) -> std::sync::MutexGuard<'_, Counters> {
        self.counters.lock().unwrap_or_else(|e| e.into_inner())
    }
}

struct Group {
    options: PathGroupOptions,
    host: HostId,
    epoch: AtomicU64,
    paths: Vec<Path>,
    active: AtomicUsize,
    order: order::Order,
    next_call: AtomicU64,
    closing: AtomicBool,
    /// Wakes calls waiting for a usable path.
    changed: Notify,
    /// How the group ended, once it has.
    ended: watch::Sender<Option<Result<(), SessionLoss>>>,
}

impl PathGroup {
    /// A builder; add targets with [`PathGroupBuilder::endpoint`] or
    /// [`PathGroupBuilder::connector`].
    pub fn builder() -> PathGroupBuilder {
        PathGroupBuilder {
            targets: Vec::new(),
            options: PathGroupOptions::default(),
        }
    }

    /// Starts a session to every target (named, with its connector).
    pub fn start(
        targets: Vec<(String, Arc<dyn Connector>)>,
        options: PathGroupOptions,
    ) -> Result<PathGroup, PathGroupError> {
        if targets.is_empty() {
            return Err(PathGroupError::NoTargets);
        }
        let host = options.host.unwrap_or_else(random_host);
        let epoch = 1;
        let paths = targets
            .into_iter()
            .map(|(name, connector)| {
                let init = node::start(connector.clone(), &options.initiator, host, epoch);
                Path {
                    name,
                    connector,
                    session: Mutex::new(PathSession::new(init)),
                    counters: Mutex::new(Counters::default()),
                }
            })
            .collect();
        let group = Arc::new(Group {
            options,
            host,
            epoch: AtomicU64::new(epoch),
            paths,
            active: AtomicUsize::new(0),
            order: order::Order::default(),
            next_call: AtomicU64::new(1),
            closing: AtomicBool::new(false),
            changed: Notify::new(),
            ended: watch::channel(None).0,
        });
        for (i, p) in group.paths.iter().enumerate() {
            tokio::spawn(failover::watch_path(Arc::downgrade(&group), i, p.session()));
        }
        Ok(PathGroup { inner: group })
    }

    /// The host id every session presents.
    pub fn host(&self) -> HostId {
        self.inner.host
    }

    /// The paths' names, in order.
    pub fn names(&self) -> Vec<String> {
        self.inner.paths.iter().map(|p| p.name.clone()).collect()
    }

    /// Issues a command and waits for its response.
    pub async fn call(&self, payload: Bytes) -> Result<Bytes, CallError> {
        self.call_with(payload, CallOptions::default()).await
    }

    /// Issues a command with options (e.g. retry-safe, which lets a
    /// failover re-issue it on another node once the old one is fenced).
    pub async fn call_with(
        &self,
        payload: Bytes,
        options: CallOptions,
    ) -> Result<Bytes, CallError> {
        self.call_cancellable(payload, options, std::future::pending())
            .await
    }

    /// Issues a command that the caller may cancel; as
    /// [`Initiator::call_cancellable`], across failovers: once `cancel`
    /// completes, a call not yet handed to a node is dropped
    /// ([`CallError::Withdrawn`]), and one in doubt is not re-issued.
    pub async fn call_cancellable(
        &self,
        payload: Bytes,
        options: CallOptions,
        cancel: impl Future<Output = ()>,
    ) -> Result<Bytes, CallError> {
        let g = &*self.inner;
        let call = g.next_call.fetch_add(1, Ordering::Relaxed);
        let _pending = Pending {
            order: &g.order,
            call,
        };
        let mut cancel = std::pin::pin!(Some(cancel));
        let mut moved_from: Option<usize> = None;
        let mut refusals = 0u32;
        loop {
            let (index, session) = tokio::select! {
                biased;
                picked = g.next_turn(call) => picked?,
                () = fired(cancel.as_mut()) => return Err(CallError::Withdrawn {
                    may_have_executed: false,
                }),
            };
            if let Some(from) = moved_from.take() {
                g.paths[from].counters().moved += 1;
            }
            let result = {
                let fut = session.initiator.call_cancellable(
                    payload.clone(),
                    options,
                    fired(cancel.as_mut()),
                );
                let mut fut = std::pin::pin!(fut);
                // The first poll hands the call to its session (its place in
                // the queue is fixed): later calls may go from here.
                let first = std::future::poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx))).await;
                g.order.release(call);
                match first {
                    Poll::Ready(r) => r,
                    Poll::Pending => fut.await,
                }
            };
            session.unregister(call);
            let error = match result {
                Ok(body) => return Ok(body),
                Err(e) => e,
            };
            if cancel.is_none() {
                return Err(error);
            }
            if !session.is_lost() {
                if not_executed_by_node(&error) {
                    // The node refused to start it (its session there is
                    // being fenced or lost contact): it never ran. Issue it
                    // again, after a pause that grows, so a node refusing
                    // until its session ends is not asked in a tight loop.
                    refusals += 1;
                    let pause = Duration::from_millis(1 << refusals.min(7));
                    tokio::select! {
                        biased;
                        () = fired(cancel.as_mut()) => return Err(error),
                        () = tokio::time::sleep(pause) => {}
                    }
                    continue;
                }
                return Err(error);
            }
            if error.is_settled() && !error.may_have_executed() {
                // The old node never had it: re-issue at once (in order).
                moved_from = Some(index);
                continue;
            }
            // In doubt: wait until the old node is fenced or quiesced.
            let outcome = session.settled().await;
            match outcome {
                Outcome::Safe if options.retry_safe => moved_from = Some(index),
                Outcome::Safe => {
                    g.paths[index].counters().failed += 1;
                    return Err(CallError::Withdrawn {
                        may_have_executed: true,
                    });
                }
                _ => {
                    g.paths[index].counters().failed += 1;
                    return Err(error);
                }
            }
        }
    }

    /// Closes every path's session cleanly (waits for what is outstanding).
    /// `Ok` if every session closed cleanly, else the first loss.
    pub async fn close(&self) -> Result<(), SessionLoss> {
        let g = &*self.inner;
        g.closing.store(true, Ordering::SeqCst);
        g.changed.notify_waiters();
        let mut result = Ok(());
        for p in &g.paths {
            let r = p.session().initiator.close().await;
            p.counters().state = Some(PathState::Closed);
            if result.is_ok() {
                result = r;
            }
        }
        g.ended.send_replace(Some(result.clone()));
        result
    }

    /// Waits until the group is over: closed (`Ok`), or every path gave up
    /// (no session with any node for the session-loss timeout).
    pub async fn ended(&self) -> Result<(), SessionLoss> {
        let mut rx = self.inner.ended.subscribe();
        let seen = rx
            .wait_for(Option::is_some)
            .await
            .ok()
            .and_then(|v| v.clone());
        seen.unwrap_or(Err(SessionLoss::Aborted))
    }

    /// Per-path figures.
    pub async fn stats(&self) -> PathGroupStats {
        let g = &*self.inner;
        let active = g.active.load(Ordering::Relaxed);
        let mut paths = Vec::with_capacity(g.paths.len());
        for (i, p) in g.paths.iter().enumerate() {
            let session = p.session();
            let figures = tokio::time::timeout(Duration::from_secs(1), session.initiator.stats())
                .await
                .ok()
                .flatten();
            let c = p.counters();
            let state = c.state.unwrap_or(if !session.is_up() {
                if figures.as_ref().is_some_and(|s| s.sessions > 0) {
                    PathState::Reconnecting
                } else {
                    PathState::Connecting
                }
            } else if g.options.policy == Policy::ActiveActive || i == active {
                PathState::Active
            } else {
                PathState::Standby
            });
            paths.push(PathStats {
                name: p.name.clone(),
                state,
                since_contact: node::last_contact(&session.initiator).map(|t| t.elapsed()),
                outstanding: session.outstanding(),
                failovers: c.failovers,
                fences_requested: c.fences_requested,
                fences_confirmed: c.fences_confirmed,
                last_fence: c.last_fence,
                fence_latency: c.fence_latency,
                commands_moved: c.moved,
                commands_failed: c.failed,
                session: figures,
            });
        }
        PathGroupStats {
            paths,
            epoch: g.epoch.load(Ordering::Relaxed),
        }
    }
}

/// Takes call `n` out of the re-issue order when its future ends.
struct Pending<'a> {
    order: &'a order::Order,
    call: u64,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.order.release(self.call);
    }
}

/// Completes when the caller's cancel signal has fired (at once if it
/// already has); never touches a finished future again.
async fn fired<F: Future<Output = ()>>(mut cancel: Pin<&mut Option<F>>) {
    if let Some(f) = cancel.as_mut().as_pin_mut() {
        f.await;
    }
    cancel.set(None);
}

/// True if the node refused to start the call (its quiesce promise or a
/// fence): it did not execute and never will, so it may go elsewhere.
fn not_executed_by_node(error: &CallError) -> bool {
    matches!(error, CallError::NotStarted { .. })
}

/// A random host id (never all zero).
fn random_host() -> HostId {
    let mut host = [0u8; 16];
    while host == [0u8; 16] {
        let a = getrandom::u64().unwrap_or(0x9e37_79b9_7f4a_7c15);
        let b = getrandom::u64().unwrap_or(0x6a09_e667_f3bc_c908);
        host[..8].copy_from_slice(&a.to_le_bytes());
        host[8..].copy_from_slice(&b.to_le_bytes());
    }
    HostId(host)
}

impl Group {
    /// Waits for call `n`'s turn and a session to issue it on, and
    /// registers it there.
    async fn next_turn(&self, n: u64) -> Result<(usize, Arc<PathSession>), CallError> {
        loop {
            self.order.wait_turn(n).await;
            let changed = self.changed.notified();
            if self.closing.load(Ordering::SeqCst) {
                return Err(CallError::Closed);
            }
            if let Some((i, s)) = self.pick() {
                if s.register(n) {
                    return Ok((i, s));
                }
                continue;
            }
            if let Some(loss) = self.ended.borrow().clone() {
                let loss = loss.err().unwrap_or(SessionLoss::Aborted);
                return Err(CallError::Refused(SubmitError::Ended(loss)));
            }
            changed.await;
        }
    }

    /// The session a new call goes to, per the policy.
    fn pick(&self) -> Option<(usize, Arc<PathSession>)> {
        let usable = |i: usize| {
            let s = self.paths[i].session();
            (!s.is_lost() && !self.paths[i].counters().gave_up).then_some((i, s))
        };
        if self.options.policy == Policy::ActiveActive {
            let best = (0..self.paths.len())
                .filter_map(usable)
                .filter(|(_, s)| s.is_up())
                .min_by_key(|(_, s)| s.outstanding());
            if best.is_some() {
                return best;
            }
        }
        usable(self.active.load(Ordering::Relaxed))
    }

    /// Makes another path active: the first logged-in one after `from`,
    /// else the next one that has not given up.
    fn move_active(&self, from: usize) {
        let n = self.paths.len();
        let next = (1..n)
            .map(|k| (from + k) % n)
            .find(|&i| {
                let s = self.paths[i].session();
                s.is_up() && !s.is_lost()
            })
            .or_else(|| {
                (1..=n)
                    .map(|k| (from + k) % n)
                    .find(|&i| !self.paths[i].counters().gave_up)
            });
        if let Some(i) = next {
            if self.active.swap(i, Ordering::SeqCst) != i {
                info!(from = %self.paths[from].name, to = %self.paths[i].name, "active path moved");
            }
        }
        self.changed.notify_waiters();
    }
}
