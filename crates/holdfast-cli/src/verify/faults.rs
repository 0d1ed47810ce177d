//! The demo's fault schedule, and how long the workload took to recover
//! from each fault (from injection to the first operation completed after
//! it).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use holdfast::chaos::{Direction, FaultKind, FaultSpec, Proxy, Scope};

use super::workload::Tally;

/// A fault the demo injects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DemoFault {
    /// The proxy resets the connection (RST).
    Reset,
    /// The proxy stops forwarding both ways and keeps the sockets open.
    Blackhole,
    /// The proxy forwards a few more bytes, then nothing (a cut mid-frame).
    Cut(u64),
    /// The initiator's bytes are held (not lost) while it gives up on the
    /// connection and recovers on a new one; then the held bytes are
    /// delivered, late, on the old one: the stale-command shape of seed 001.
    HoldThenRelease,
    /// The initiator's direction is closed with FIN; the other goes on.
    HalfClose,
    /// Every chunk is delayed 20-70 ms for two seconds (not an outage).
    Delay,
    /// The link is throttled to 256 KiB/s for two seconds (not an outage).
    Bandwidth,
    /// The target announces a shutdown, stops, and a new target process
    /// (no session state) starts on the same port and volume.
    Restart,
}

impl DemoFault {
    /// A short name for tables.
    pub(crate) fn name(self) -> &'static str {
        match self {
            DemoFault::Reset => "reset",
            DemoFault::Blackhole => "blackhole",
            DemoFault::Cut(_) => "cut",
            DemoFault::HoldThenRelease => "hold-release",
            DemoFault::HalfClose => "half-close",
            DemoFault::Delay => "delay",
            DemoFault::Bandwidth => "bandwidth",
            DemoFault::Restart => "restart",
        }
    }

    /// True if the fault interrupts the session (so recovery time counts).
    pub(crate) fn is_outage(self) -> bool {
        !matches!(self, DemoFault::Delay | DemoFault::Bandwidth)
    }

    /// What the proxy applies now and, for faults that end, what it
    /// applies how much later. `None` for the restart.
    pub(crate) fn proxy_specs(self) -> Option<(FaultSpec, Option<(Duration, FaultSpec)>)> {
        let all = |kind, direction| FaultSpec::new(kind, direction, Scope::All);
        let newest = |kind, direction| FaultSpec::new(kind, direction, Scope::Newest);
        let heal_after = |d: Duration| Some((d, all(FaultKind::Heal, Direction::Both)));
        Some(match self {
            DemoFault::Reset => (all(FaultKind::Reset, Direction::Both), None),
            DemoFault::Blackhole => (all(FaultKind::Blackhole, Direction::Both), None),
            DemoFault::Cut(n) => (all(FaultKind::CutAfter(n), Direction::Both), None),
            DemoFault::HoldThenRelease => (
                newest(FaultKind::Hold, Direction::Up),
                Some((
                    Duration::from_millis(1500),
                    all(FaultKind::Release, Direction::Up),
                )),
            ),
            DemoFault::HalfClose => (newest(FaultKind::HalfClose, Direction::Up), None),
            DemoFault::Delay => (
                all(
                    FaultKind::Delay {
                        base: Duration::from_millis(20),
                        jitter: Duration::from_millis(50),
                    },
                    Direction::Both,
                ),
                heal_after(Duration::from_secs(2)),
            ),
            DemoFault::Bandwidth => (
                all(
                    FaultKind::Bandwidth {
                        bytes_per_sec: 256 << 10,
                    },
                    Direction::Both,
                ),
                heal_after(Duration::from_secs(2)),
            ),
            DemoFault::Restart => return None,
        })
    }
}

/// When to inject what: `count` faults spread evenly over `duration`, kinds
/// drawn from `seed`, with one graceful restart in the middle if `restart`.
pub(crate) fn schedule(
    duration: Duration,
    count: u32,
    restart: bool,
    seed: u64,
) -> Vec<(Duration, DemoFault)> {
    let mut rng = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    // Leave the last fifth quiet so the run ends on a settled session.
    let window = duration.mul_f64(0.8);
    let mut faults: Vec<(Duration, DemoFault)> = (0..count)
        .map(|i| {
            let at = window.mul_f64(f64::from(i + 1) / f64::from(count + 1));
            let kind = match next() % 20 {
                0..=5 => DemoFault::Reset,
                6..=8 => DemoFault::Blackhole,
                9..=11 => DemoFault::Cut(next() % 200),
                12..=14 => DemoFault::HoldThenRelease,
                15..=16 => DemoFault::HalfClose,
                17..=18 => DemoFault::Delay,
                _ => DemoFault::Bandwidth,
            };
            (at, kind)
        })
        .collect();
    if restart && count > 0 {
        // Replace the fault nearest the middle with the restart.
        let middle = faults.len() / 2;
        faults[middle].1 = DemoFault::Restart;
    }
    faults
}

/// Applies a proxy fault now and schedules its end (a heal or a release)
/// if it has one. Returns when it was injected, or `None` if it hit no live
/// link (the client was between connections): such a fault is not counted.
pub(crate) fn inject(proxy: &Arc<Proxy>, fault: DemoFault) -> Option<Instant> {
    let (now, later) = fault.proxy_specs()?;
    if proxy.apply(now) == 0 {
        return None;
    }
    let since = Instant::now();
    if let Some((after, spec)) = later {
        let proxy = proxy.clone();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            proxy.apply(spec);
        });
    }
    tracing::info!(fault = fault.name(), "fault injected");
    Some(since)
}

/// Waits until an operation completes after `injected`, up to `limit`, and
/// returns how long that took; on timeout, records a problem in `tally`.
pub(crate) async fn time_to_recover(
    tally: &Arc<Tally>,
    start: Instant,
    injected: Instant,
    limit: Duration,
    fault: DemoFault,
) -> Option<Duration> {
    let since_start = u64::try_from(injected.duration_since(start).as_nanos()).unwrap_or(0);
    let give_up = injected + limit;
    loop {
        let last = tally.last_completion_ns.load(Ordering::Relaxed);
        if last > since_start {
            return Some(Duration::from_nanos(last - since_start));
        }
        if Instant::now() > give_up {
            tally.problem(format!(
                "no operation completed within {limit:?} of a {} fault",
                fault.name()
            ));
            return None;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_spreads_faults_and_restarts_once() {
        let s = schedule(Duration::from_secs(20), 10, true, 7);
        assert_eq!(s.len(), 10);
        assert!(s.windows(2).all(|w| w[0].0 < w[1].0));
        assert!(s.iter().all(|(at, _)| *at < Duration::from_secs(16)));
        assert_eq!(
            s.iter().filter(|(_, f)| *f == DemoFault::Restart).count(),
            1
        );
        assert_eq!(s, schedule(Duration::from_secs(20), 10, true, 7));
        assert!(schedule(Duration::from_secs(20), 0, true, 7).is_empty());
    }
}
