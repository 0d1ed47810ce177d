//! The demo's fault schedule, and how long the workload took to recover
//! from each fault (from injection to the first operation completed after
//! it).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use holdfast::chaos::Fault;

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
            DemoFault::Restart => "restart",
        }
    }

    /// The proxy fault, for those the proxy injects.
    pub(crate) fn proxy_fault(self) -> Option<Fault> {
        match self {
            DemoFault::Reset => Some(Fault::Reset),
            DemoFault::Blackhole => Some(Fault::Blackhole),
            DemoFault::Cut(n) => Some(Fault::CutAfter(n)),
            DemoFault::Restart => None,
        }
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
            let kind = match next() % 4 {
                0 | 1 => DemoFault::Reset,
                2 => DemoFault::Blackhole,
                _ => DemoFault::Cut(next() % 200),
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

/// Waits until an operation completes after `injected`, up to `limit`, and
/// returns how long that took.
pub(crate) async fn time_to_recover(
    tally: &Arc<Tally>,
    start: Instant,
    injected: Instant,
    limit: Duration,
) -> Option<Duration> {
    let since_start = u64::try_from(injected.duration_since(start).as_nanos()).unwrap_or(0);
    let give_up = injected + limit;
    loop {
        let last = tally.last_completion_ns.load(Ordering::Relaxed);
        if last > since_start {
            return Some(Duration::from_nanos(last - since_start));
        }
        if Instant::now() > give_up {
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
