//! The simulated world: one initiator, one target (replaced on a restart),
//! the services, the network and a seeded fault schedule, driven in virtual
//! time that jumps to the next thing that can happen.

use std::time::Duration;

#[cfg(feature = "test-switches")]
use holdfast_proto::TestSwitches;
use holdfast_proto::{wire::Digests, Initiator};
use holdfast_proto::{
    CallOptions, ConnId, InitiatorConfig, InitiatorEvent, MemoryStore, SeededRandom, SubmitError,
    Target, TargetConfig, Timestamp,
};

#[path = "multi.rs"]
mod multi;

#[path = "durable.rs"]
mod durable;

#[path = "faults.rs"]
mod faults;

#[path = "ready.rs"]
mod ready;

#[path = "early.rs"]
mod early;

use super::checker::Checker;
use super::net::{Packet, SimConn};
use super::service::{payload, OpKind, Services};

/// Knobs for one run.
#[derive(Clone, Debug)]
pub struct SimParams {
    /// Operations to issue before healing the network.
    pub ops: u64,
    /// Turn off protections (mutation tests).
    pub switches: TestSwitches,
    /// Inject faults at all.
    pub faults: bool,
    /// A slow backend: a command takes effect when it completes, not when
    /// it is delivered; one session's commands take effect in delivery
    /// order, and some take longer than the retain time (so a session can
    /// reach its retain time with commands still running). No one-way
    /// messages in this mode.
    pub slow_service: bool,
    /// Callers sometimes stop waiting and withdraw their call.
    pub abandon: bool,
    /// Connections per session (PROTOCOL.md §17): above 1, the initiator
    /// joins more after its first login, faults cut one of them, and lost
    /// ones are re-joined after a backoff.
    pub connections: u32,
    /// Durable restarts (issue 16): the store and the service state survive
    /// a crash (at any point of a Ready's handling) and the target is rebuilt
    /// with `Target::restore` (see `durable`).
    pub durable: bool,
    /// With `durable`: the store is the durable log engine on a simulated
    /// disk with crash semantics, and a crash may also fall between any
    /// two of a commit's file operations (see `durable` and `disk`).
    pub disk: bool,
    /// With `disk`: the disk's syncs do nothing (the test-only fault the
    /// crash simulation must catch).
    pub skip_sync: bool,
    /// With `durable`: the driver executes early (PROTOCOL.md §12, a
    /// replay-safe service): deliveries and `advance` before the changes
    /// are durable, output held until its group is (see `early`).
    pub early: bool,
    /// With `early`: held bytes and closes leave before their group is
    /// durable (the test-only fault the simulation must catch).
    pub early_unsafe: bool,
}

impl Default for SimParams {
    fn default() -> Self {
        SimParams {
            ops: 2000,
            switches: TestSwitches::default(),
            faults: true,
            slow_service: false,
            abandon: true,
            connections: 1,
            durable: false,
            disk: false,
            skip_sync: false,
            early: false,
            early_unsafe: false,
        }
    }
}

pub use super::report::SimReport;

struct Completion {
    at: Timestamp,
    generation: u64,
    session: holdfast_proto::SessionId,
    seq: u64,
    response: bytes::Bytes,
    /// With a slow service: the payload, executed when the command completes.
    effect: Option<bytes::Bytes>,
}

/// The whole simulation for one seed.
pub struct World {
    seed: u64,
    rng: SeededRandom,
    params: SimParams,
    now: Timestamp,
    initiator: Initiator,
    target: Target,
    target_config: TargetConfig,
    /// Bumped on every target restart; stale completions are dropped.
    generation: u64,
    store: MemoryStore,
    services: Services,
    checker: Checker,
    conns: Vec<SimConn>,
    current: Option<ConnId>,
    /// Connections joined beside `current` (several per session).
    joined: Vec<ConnId>,
    /// No join before this (backoff after losing one of several).
    rejoin_at: Timestamp,
    next_conn: u64,
    reconnect_at: Option<Timestamp>,
    completions: Vec<Completion>,
    /// No reconnect before this (a partition, with a slow service).
    partition_until: Option<Timestamp>,
    /// With a slow service: until when the one slow command runs.
    slow_until: Timestamp,
    /// With a slow service: when each session's last command completes.
    backend_busy_until: std::collections::HashMap<holdfast_proto::SessionId, Timestamp>,
    next_tag: u64,
    next_op_at: Timestamp,
    next_fault_at: Timestamp,
    fault_gap: Duration,
    restart_at: Option<Timestamp>,
    max_frame: u32,
    closing: bool,
    closed: bool,
    report: SimReport,
    credit_blocked: bool,
    /// Durable mode: the committed service state and the armed crash.
    durable: durable::DurableState,
    /// Early mode: the held group and the group committing.
    early: early::EarlyState,
}

impl World {
    /// Builds a world; every parameter not in `params` is drawn from the seed.
    pub fn new(seed: u64, params: SimParams) -> Self {
        let mut rng = SeededRandom::new(seed);
        let pick = |rng: &mut SeededRandom, options: &[u64]| {
            options[(rng.next_u64() % options.len() as u64) as usize]
        };
        let credits = pick(&mut rng, &[1, 2, 3, 8, 16, 64]) as u32;
        let ack_delay = Duration::from_micros(pick(&mut rng, &[0, 200, 1000, 5000]));
        let digests = if rng.next_u64().is_multiple_of(4) {
            Digests {
                header: true,
                data: true,
            }
        } else {
            Digests::NONE
        };
        let max_frame = 16 * 1024;
        let retain = Duration::from_millis(pick(&mut rng, &[300, 2000, 10_000]));
        let mut initiator_config = {
            let mut ic = InitiatorConfig::default();
            ic.max_frame = max_frame;
            ic.credits = credits;
            ic.ack_delay = ack_delay;
            ic.digests = digests;
            ic.session_loss_timeout = None;
            ic.connections = params.connections;
            ic
        }
        .with_detection_bound(Duration::from_millis(200));
        initiator_config.switches = params.switches;
        let mut target_config = TargetConfig::default();
        target_config.credits = pick(&mut rng, &[1, 4, 64, 128]) as u32;
        target_config.max_frame = max_frame;
        target_config.retain = retain;
        target_config.ack_delay = ack_delay;
        target_config.login_timeout = Duration::from_millis(500);
        target_config.switches = params.switches;
        let fault_gap = Duration::from_millis(pick(&mut rng, &[5, 20, 100]));
        let target = Target::new(
            target_config.clone(),
            Box::new(SeededRandom::new(rng.next_u64())),
            Timestamp::ZERO,
        );
        let mut store = MemoryStore::new();
        store.set_incarnation(target.incarnation());
        let durable = durable::DurableState::new(&params, &store);
        World {
            seed,
            params,
            now: Timestamp::ZERO,
            initiator: Initiator::new(initiator_config, Timestamp::ZERO),
            target,
            target_config,
            generation: 0,
            store,
            services: Services::default(),
            checker: Checker::default(),
            conns: Vec::new(),
            current: None,
            joined: Vec::new(),
            rejoin_at: Timestamp::ZERO,
            next_conn: 1,
            reconnect_at: Some(Timestamp::ZERO),
            completions: Vec::new(),
            backend_busy_until: std::collections::HashMap::new(),
            slow_until: Timestamp::ZERO,
            partition_until: None,
            next_tag: 1,
            next_op_at: Timestamp::ZERO,
            next_fault_at: Timestamp::ZERO + fault_gap,
            fault_gap,
            restart_at: None,
            max_frame,
            closing: false,
            closed: false,
            report: SimReport::default(),
            credit_blocked: false,
            durable,
            early: early::EarlyState::default(),
            rng,
        }
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.rng.next_u64() % 100 < percent
    }

    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.rng.next_u64() % n
        }
    }

    fn fail(&self, msg: impl std::fmt::Display) -> String {
        let (test, env) = match (self.params.durable, self.params.disk, self.params.early) {
            (false, _, _) => ("simulation replay", ""),
            (true, _, true) => ("durable_restart replay_durable", " HOLDFAST_SIM_EARLY=1"),
            (true, false, false) => ("durable_restart replay_durable", ""),
            (true, true, false) => ("durable_restart replay_durable", " HOLDFAST_SIM_DISK=1"),
        };
        let connections = self.params.connections;
        format!(
            "seed {} failed at step {} (t={:?}): {msg}\n  replay: HOLDFAST_SIM_SEED={}{env} HOLDFAST_SIM_CONNECTIONS={connections} cargo test -p holdfast-proto --test {test} -- --nocapture",
            self.seed, self.report.steps, self.now, self.seed
        )
    }

    /// Runs to completion: the workload with faults, then a healed network
    /// until every call has an outcome, then a FIN close.
    pub fn run(mut self) -> Result<SimReport, String> {
        let heal_deadline_after = Duration::from_secs(120);
        let mut healed_at: Option<Timestamp> = None;
        let (mut last_now, mut still) = (self.now, 0u32);
        loop {
            self.report.steps += 1;
            if self.now == last_now {
                still += 1;
                if still > 100_000 {
                    return Err(self.fail(format!(
                        "no progress: 100000 steps at one instant (live {:?}, connected {}, connections {:?})",
                        self.live(),
                        self.initiator.is_connected(),
                        self.initiator.connections()
                    )));
                }
            } else {
                (last_now, still) = (self.now, 0);
            }
            let workload_done = self.report.ops >= self.params.ops;
            if workload_done && healed_at.is_none() {
                healed_at = Some(self.now);
            }
            self.step(healed_at.is_none()).map_err(|e| self.fail(e))?;
            self.checker
                .bounds(&self.initiator, &self.target, self.max_frame)
                .map_err(|e| self.fail(e))?;
            if let Some(h) = healed_at {
                if self.checker.pending == 0 && !self.closing && self.restart_at.is_none() {
                    self.closing = true;
                    self.initiator.close(self.now);
                }
                if self.closed {
                    break;
                }
                if self.now > h + heal_deadline_after {
                    return Err(self.fail(format!(
                        "liveness: {} calls still without an outcome {heal_deadline_after:?} after the network healed (connected: {}, outstanding {}, live {:?}, initiator's {:?}, reconnect at {:?}, rejoin at {:?}, initiator reconnect at {:?})",
                        self.checker.pending,
                        self.initiator.is_connected(),
                        self.initiator.outstanding(),
                        self.live(),
                        self.initiator.connections(),
                        self.reconnect_at,
                        self.rejoin_at,
                        self.initiator.reconnect_at()
                    )));
                }
            }
        }
        self.finish_checks().map_err(|e| self.fail(e))?;
        self.report.end = self.now;
        let target_stats = self.target.stats().clone();
        self.report.add_target(&target_stats);
        self.report.stateless = self.initiator.stats().stateless_recoveries;
        self.report.may_have_executed = self.checker.may_have_executed;
        self.report.not_executed = self.checker.not_executed;
        self.report.withdrawn = self.initiator.stats().withdrawn;
        self.report.moved = self.initiator.stats().moved;
        self.report.restores = self.durable.restores;
        self.report.sessions_restored = self.durable.sessions_restored;
        self.report.expired_while_down = self.durable.expired_while_down;
        if let Some(d) = &self.durable.on_disk {
            self.report.disk_commits = d.commits;
            self.report.torn_tails = d.torn_tails;
        }
        Ok(self.report)
    }

    fn finish_checks(&self) -> Result<(), String> {
        let increments: u64 = self
            .services
            .executions
            .iter()
            .filter(|(tag, _)| self.checker.ops[tag].kind == OpKind::Increment)
            .map(|(_, runs)| runs.len() as u64)
            .sum();
        if increments != self.services.counter {
            return Err(format!(
                "counter is {} but {increments} increments executed",
                self.services.counter
            ));
        }
        if let Some(session) = self.initiator.session() {
            if self.target.session_info(session).is_some() {
                return Err(format!("session {session} still held after FIN"));
            }
        }
        Ok(())
    }

    /// One step: jump to the next event time, then do everything due.
    fn step(&mut self, faults_allowed: bool) -> Result<(), String> {
        self.now = self.next_time(faults_allowed).max(self.now);
        self.deliver_network()?;
        if self.target.poll_timeout().is_some_and(|t| t <= self.now) {
            self.target.handle_timeout(self.now);
        }
        if self.initiator.poll_timeout().is_some_and(|t| t <= self.now) {
            self.initiator.handle_timeout(self.now);
        }
        self.complete_due()?;
        self.finish_commit_if_due()?;
        if self.restart_at.is_some_and(|t| t <= self.now) {
            self.restart_target()?;
        }
        self.maybe_reconnect();
        if faults_allowed {
            self.maybe_abandon();
            self.submit_ops()?;
            if self.params.faults && self.next_fault_at <= self.now {
                self.inject_fault();
                let gap = self.below(self.fault_gap.as_micros() as u64 * 2) + 1;
                self.next_fault_at = self.now + Duration::from_micros(gap);
            }
        }
        self.pump()
    }

    fn next_time(&self, faults_allowed: bool) -> Timestamp {
        let mut t = Timestamp::NEVER;
        let mut consider = |x: Option<Timestamp>| {
            if let Some(x) = x {
                t = t.min(x);
            }
        };
        for c in &self.conns {
            consider(c.to_target.next_due());
            consider(c.to_initiator.next_due());
        }
        consider(self.initiator.poll_timeout());
        consider(self.target.poll_timeout());
        consider(self.completions.iter().map(|c| c.at).min());
        consider(self.restart_at);
        consider(self.early.commit_due());
        if self.live().is_empty() {
            consider(self.reconnect_at);
        } else if self.wants_join() {
            consider(Some(self.rejoin_at));
        }
        if faults_allowed {
            if !self.credit_blocked {
                consider(Some(self.next_op_at));
            }
            if self.params.faults {
                consider(Some(self.next_fault_at));
            }
        }
        if t == Timestamp::NEVER {
            // Nothing scheduled: let time pass so deadlines can fire.
            self.now + Duration::from_millis(10)
        } else {
            t
        }
    }

    fn conn_mut(&mut self, id: ConnId) -> Option<&mut SimConn> {
        self.conns.iter_mut().find(|c| c.id == id)
    }

    fn deliver_network(&mut self) -> Result<(), String> {
        let now = self.now;
        for i in 0..self.conns.len() {
            while let Some(p) = self.conns[i].to_target.pop_due(now) {
                let id = self.conns[i].id;
                if self.conns[i].target_gone {
                    continue;
                }
                match p {
                    Packet::Data(d) => self.target.handle_input(id, &d, now),
                    Packet::Close => {
                        self.conns[i].target_gone = true;
                        self.target.connection_closed(id, now);
                    }
                }
                self.pump()?;
            }
            while let Some(p) = self.conns[i].to_initiator.pop_due(now) {
                let id = self.conns[i].id;
                if self.conns[i].initiator_gone {
                    continue;
                }
                match p {
                    Packet::Data(d) => self.initiator.handle_input(id, &d, now),
                    Packet::Close => self.initiator.connection_lost(id, now),
                }
                self.pump()?;
            }
        }
        self.conns.retain(|c| !c.is_dead());
        Ok(())
    }

    fn complete_due(&mut self) -> Result<(), String> {
        let now = self.now;
        let mut due = Vec::new();
        self.completions.retain_mut(|c| {
            if c.at <= now {
                due.push((
                    c.at,
                    c.generation,
                    c.session,
                    c.seq,
                    std::mem::take(&mut c.response),
                    c.effect.take(),
                ));
                false
            } else {
                true
            }
        });
        // A session's slow commands take effect in delivery order.
        due.sort_by_key(|d| (d.0, d.3));
        for (_, generation, session, seq, mut response, effect) in due {
            if generation != self.generation {
                // The target process died: its unfinished work never lands.
                continue;
            }
            if let Some(payload) = effect {
                response = self.services.execute(session, &payload)?;
                let tag = super::service::parse(&payload).map_or(0, |(_, t)| t);
                self.checker.executed(&self.services, session, tag)?;
            }
            // The session may have expired meanwhile: then there is no one to answer.
            let _ = self.target.complete(session, seq, response, now);
        }
        Ok(())
    }

    /// Sometimes a caller stops waiting: withdraw one of the latest calls.
    fn maybe_abandon(&mut self) {
        if !self.params.abandon || !self.chance(3) || self.next_tag <= 1 {
            return;
        }
        let back = self.below((self.next_tag - 1).min(64));
        let tag = self.next_tag - 1 - back;
        let Some(op) = self.checker.ops.get(&tag) else {
            return;
        };
        if op.outcome.is_none() {
            let call = op.call;
            self.initiator.abandon(call, self.now);
        }
    }

    fn maybe_reconnect(&mut self) {
        if self.initiator.is_finished() {
            return;
        }
        if !self.live().is_empty() {
            self.maybe_join();
            return;
        }
        let Some(at) = self.reconnect_at else {
            return;
        };
        if at > self.now {
            return;
        }
        if let Some(until) = self.partition_until {
            if self.now < until {
                self.reconnect_at = Some(until);
                return;
            }
            self.partition_until = None;
        }
        if self.now < self.initiator.reconnect_at() {
            self.reconnect_at = Some(self.initiator.reconnect_at());
            return;
        }
        let id = ConnId(self.next_conn);
        self.next_conn += 1;
        let latency = Duration::from_micros(20 + self.below(3000));
        let mut conn = SimConn::new(id, latency);
        if self.target.accept(id, self.now).is_err() {
            conn.target_gone = true;
        }
        self.conns.push(conn);
        match self.initiator.connect(id, self.now) {
            Ok(()) => {
                self.current = Some(id);
                self.reconnect_at = None;
            }
            Err(e) => panic!("connect refused after reconnect_at: {e}"),
        }
    }

    fn submit_ops(&mut self) -> Result<(), String> {
        if self.now < self.next_op_at || self.report.ops >= self.params.ops || self.credit_blocked {
            return Ok(());
        }
        let batch = 1 + self.below(8);
        for _ in 0..batch {
            if self.report.ops >= self.params.ops {
                break;
            }
            let kind = match self.below(10) {
                0..=3 => OpKind::Increment,
                4..=6 => OpKind::Write,
                _ if self.params.slow_service => OpKind::Write,
                _ => OpKind::Message,
            };
            let pad = if self.chance(3) {
                4096 + self.below(8000) as usize
            } else {
                self.below(48) as usize
            };
            let tag = self.next_tag;
            let body = payload(kind, tag, pad);
            let options = CallOptions::default().with_retry_safe(kind.retry_safe());
            let result = match kind {
                OpKind::Message => self.initiator.send(body, options, self.now),
                _ => self.initiator.call(body, options, self.now),
            };
            match result {
                Ok(call) => {
                    self.next_tag += 1;
                    self.report.ops += 1;
                    self.checker.issued(tag, kind, call);
                }
                Err(SubmitError::NoCredit) => {
                    self.credit_blocked = true;
                    break;
                }
                Err(e) => return Err(format!("submission refused: {e}")),
            }
        }
        self.next_op_at = self.now + Duration::from_micros(self.below(400));
        Ok(())
    }

    /// Moves everything that is ready between the machines until quiet.
    fn pump(&mut self) -> Result<(), String> {
        loop {
            let mut progress = false;
            if self.live().is_empty() {
                // Last bytes of a connection already given up: dropped.
                while self.initiator.poll_transmit(self.now).is_some() {}
            }
            for id in self.live() {
                while let Some(chunks) = self.initiator.poll_transmit_on(id, self.now) {
                    progress = true;
                    let data: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
                    let now = self.now;
                    if let Some(c) = self.conn_mut(id) {
                        let latency = c.latency;
                        c.to_target.push(now, latency, Packet::Data(data));
                    }
                }
            }
            while let Some(event) = self.initiator.poll_event() {
                progress = true;
                self.on_event(event)?;
            }
            self.reconcile();
            while self.target.has_ready() {
                progress = true;
                self.process_ready()?;
            }
            if self.params.early && self.start_commit_early()? {
                progress = true;
            }
            if !progress {
                return Ok(());
            }
        }
    }

    fn on_event(&mut self, event: InitiatorEvent) -> Result<(), String> {
        if std::env::var_os("HOLDFAST_SIM_TRACE").is_some() {
            eprintln!("{:?} {event:?}", self.now);
        }
        self.check_durable_event(&event)?;
        match event {
            InitiatorEvent::Response { call, payload } => {
                self.checker.response(&self.services, call, &payload)
            }
            InitiatorEvent::MessageDelivered { call } => {
                self.checker.delivered(&self.services, call)
            }
            InitiatorEvent::CallFailed { call, error } => {
                self.checker.failed(&self.services, call, &error)
            }
            InitiatorEvent::CreditAvailable => {
                self.credit_blocked = false;
                Ok(())
            }
            InitiatorEvent::ConnectionLost { reconnect_at, .. } => {
                for id in self.live() {
                    self.give_up(id);
                }
                let backoff = Duration::from_micros(self.below(50_000));
                self.reconnect_at = Some(reconnect_at.max(self.now + backoff));
                Ok(())
            }
            InitiatorEvent::Closed => {
                self.closed = true;
                Ok(())
            }
            InitiatorEvent::SessionEnded(loss) => Err(format!("session ended: {loss}")),
            InitiatorEvent::ConnectionDropped { conn, .. } => {
                self.give_up(conn);
                let backoff = Duration::from_micros(self.below(50_000));
                self.rejoin_at = self.now + backoff;
                Ok(())
            }
            InitiatorEvent::Connected { .. }
            | InitiatorEvent::Joined { .. }
            | InitiatorEvent::SessionReplaced { .. }
            | InitiatorEvent::ShutdownNotice { .. } => {
                // A refusal may now succeed (a new session grants credit).
                self.credit_blocked = !self.initiator.can_submit();
                Ok(())
            }
            _ => Ok(()),
        }
    }
}
