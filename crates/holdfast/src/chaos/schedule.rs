//! A seeded random fault schedule, and the runner that applies one to
//! proxies in real time.
//!
//! [`Schedule::random`] splits the duration into `count` equal slots and
//! puts one fault at a random point of each; faults that persist on a link
//! (blackhole, delay, bandwidth, hold) are followed within the same slot or
//! shortly after by the fault that undoes them (heal, or release for a
//! hold), so held bytes are delivered late rather than never. The same
//! seed gives the same schedule.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use super::{Direction, FaultKind, FaultSpec, Proxy, Scope, SplitMix};

/// A kind of fault the random schedule may draw (its parameters are drawn
/// too).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FaultClass {
    /// [`FaultKind::Reset`].
    Reset,
    /// [`FaultKind::Blackhole`], healed later.
    Blackhole,
    /// [`FaultKind::Delay`] of 5–200 ms plus up to as much jitter, healed
    /// later.
    Delay,
    /// [`FaultKind::Bandwidth`] of 16 KiB/s–1 MiB/s, healed later.
    Bandwidth,
    /// [`FaultKind::CutAfter`] 0–4096 bytes.
    CutAfter,
    /// [`FaultKind::HalfClose`].
    HalfClose,
    /// [`FaultKind::Hold`], released later.
    Hold,
}

impl FaultClass {
    /// Every class.
    pub const ALL: [FaultClass; 7] = [
        FaultClass::Reset,
        FaultClass::Blackhole,
        FaultClass::Delay,
        FaultClass::Bandwidth,
        FaultClass::CutAfter,
        FaultClass::HalfClose,
        FaultClass::Hold,
    ];

    /// The class's name (the fault kind's name: `reset`, `cut`, ...).
    pub fn name(&self) -> &'static str {
        match self {
            FaultClass::Reset => "reset",
            FaultClass::Blackhole => "blackhole",
            FaultClass::Delay => "delay",
            FaultClass::Bandwidth => "bandwidth",
            FaultClass::CutAfter => "cut",
            FaultClass::HalfClose => "halfclose",
            FaultClass::Hold => "hold",
        }
    }
}

impl fmt::Display for FaultClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for FaultClass {
    type Err = super::ChaosError;

    fn from_str(s: &str) -> Result<FaultClass, Self::Err> {
        let s = s.trim().to_ascii_lowercase();
        FaultClass::ALL
            .into_iter()
            .find(|c| c.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = FaultClass::ALL.iter().map(FaultClass::name).collect();
                super::ChaosError::Parse(format!(
                    "unknown fault class {s:?}; one of {}",
                    names.join(", ")
                ))
            })
    }
}

/// Faults at times (offsets from the start of a run), in time order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Schedule {
    /// The steps, sorted by time.
    pub steps: Vec<(Duration, FaultSpec)>,
}

/// What running a schedule did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScheduleReport {
    /// Steps run.
    pub steps: usize,
    /// Steps that hit at least one link.
    pub applied: usize,
    /// Links hit, by fault kind name.
    pub hits: BTreeMap<&'static str, u64>,
}

impl Schedule {
    /// Draws `count` faults of the given classes (all of them if `classes`
    /// is empty) over `duration`, each in a random direction and on all
    /// open links, plus the heals and releases that undo the persistent
    /// ones. The same arguments give the same schedule.
    pub fn random(seed: u64, duration: Duration, count: usize, classes: &[FaultClass]) -> Schedule {
        let classes: &[FaultClass] = if classes.is_empty() {
            &FaultClass::ALL
        } else {
            classes
        };
        let mut rng = SplitMix::new(seed);
        let mut steps = Vec::with_capacity(count * 2);
        if count == 0 {
            return Schedule { steps };
        }
        let slot = duration.as_secs_f64() / count as f64;
        let ms = |rng: &mut SplitMix, lo: u64, hi: u64| {
            Duration::from_millis(lo + rng.up_to(hi.saturating_sub(lo)))
        };
        for k in 0..count {
            let at = slot * (k as f64 + rng.unit());
            let class = classes[rng.up_to(classes.len() as u64 - 1) as usize];
            let direction =
                [Direction::Up, Direction::Down, Direction::Both][rng.up_to(2) as usize];
            let kind = match class {
                FaultClass::Reset => FaultKind::Reset,
                FaultClass::Blackhole => FaultKind::Blackhole,
                FaultClass::Delay => {
                    let base = ms(&mut rng, 5, 200);
                    let jitter = Duration::from_millis(rng.up_to(base.as_millis() as u64));
                    FaultKind::Delay { base, jitter }
                }
                FaultClass::Bandwidth => FaultKind::Bandwidth {
                    bytes_per_sec: (16 << 10) + rng.up_to((1 << 20) - (16 << 10)),
                },
                FaultClass::CutAfter => FaultKind::CutAfter(rng.up_to(4096)),
                FaultClass::HalfClose => FaultKind::HalfClose,
                FaultClass::Hold => FaultKind::Hold,
            };
            steps.push((
                Duration::from_secs_f64(at),
                FaultSpec::new(kind, direction, Scope::All),
            ));
            let undo = match class {
                FaultClass::Blackhole | FaultClass::Delay | FaultClass::Bandwidth => {
                    Some(FaultKind::Heal)
                }
                FaultClass::Hold => Some(FaultKind::Release),
                FaultClass::Reset | FaultClass::CutAfter | FaultClass::HalfClose => None,
            };
            if let Some(undo) = undo {
                let later = at + slot * (0.3 + 0.5 * rng.unit());
                steps.push((
                    Duration::from_secs_f64(later),
                    FaultSpec::new(undo, direction, Scope::All),
                ));
            }
        }
        steps.sort_by_key(|(at, _)| *at);
        Schedule { steps }
    }

    /// How long the schedule runs (the last step's time).
    pub fn span(&self) -> Duration {
        self.steps.last().map_or(Duration::ZERO, |(at, _)| *at)
    }

    /// Applies each step to every proxy at its time (measured from now),
    /// calling `on_step` with the step and how many links it hit.
    pub async fn run<F>(&self, proxies: &[&Proxy], mut on_step: F) -> ScheduleReport
    where
        F: FnMut(Duration, &FaultSpec, usize),
    {
        let start = tokio::time::Instant::now();
        let mut report = ScheduleReport::default();
        for (at, spec) in &self.steps {
            tokio::time::sleep_until(start + *at).await;
            let hit: usize = proxies.iter().map(|p| p.apply(*spec)).sum();
            report.steps += 1;
            if hit > 0 {
                report.applied += 1;
                *report.hits.entry(spec.kind.name()).or_default() += hit as u64;
            }
            on_step(*at, spec, hit);
        }
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_schedule() {
        let d = Duration::from_secs(60);
        let a = Schedule::random(7, d, 40, &[]);
        assert_eq!(a, Schedule::random(7, d, 40, &[]));
        assert_ne!(a, Schedule::random(8, d, 40, &[]));
        assert!(a.steps.windows(2).all(|w| w[0].0 <= w[1].0));
        let faults = a
            .steps
            .iter()
            .filter(|(_, s)| !matches!(s.kind, FaultKind::Heal | FaultKind::Release))
            .count();
        assert_eq!(faults, 40);
        assert!(a.span() < d + d / 40);
    }

    #[test]
    fn holds_are_released_and_classes_respected() {
        let s = Schedule::random(3, Duration::from_secs(10), 20, &[FaultClass::Hold]);
        let holds = s
            .steps
            .iter()
            .filter(|(_, f)| f.kind == FaultKind::Hold)
            .count();
        let releases = s
            .steps
            .iter()
            .filter(|(_, f)| f.kind == FaultKind::Release)
            .count();
        assert_eq!((holds, releases), (20, 20));
        assert!(Schedule::random(1, Duration::from_secs(1), 0, &[])
            .steps
            .is_empty());
    }
}
