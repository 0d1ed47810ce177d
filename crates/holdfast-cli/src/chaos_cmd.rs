//! `holdfast chaos`: a TCP fault-injecting proxy. Each `--listen` address
//! forwards to the `--upstream` address given in the same position; faults
//! come from a seeded random schedule (`--schedule-seed`) and/or from the
//! control API on loopback (`--control`, a line protocol described in
//! docs/CHAOS.md). Runs until Ctrl-C, or for `--duration`, then prints the
//! counters.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use holdfast::chaos::{
    ControlOptions, ControlServer, FaultClass, FaultSpec, Proxy, ProxyOptions, ProxyStats, Schedule,
};
use holdfast::Endpoint;
use serde_json::json;

use crate::units::{parse_duration, parse_endpoint, parse_size};

/// Options of `holdfast chaos`.
#[derive(Debug, Args)]
pub(crate) struct ChaosArgs {
    /// Where clients connect; repeat for more proxies (the Nth --listen
    /// forwards to the Nth --upstream; the first is @0 in the control API).
    #[arg(long, value_name = "ADDR", required = true)]
    listen: Vec<String>,
    /// Where the links of the --listen in the same position go.
    #[arg(long, value_name = "ADDR", required = true)]
    upstream: Vec<String>,
    /// Serve the control API (one command per line, one JSON line back) on
    /// this address; loopback only unless --control-any.
    #[arg(long, value_name = "ADDR")]
    control: Option<String>,
    /// Allow a non-loopback --control address (anyone who reaches it can
    /// break your links).
    #[arg(long)]
    control_any: bool,
    /// Run a random fault schedule drawn from this seed (the same seed
    /// gives the same schedule; it also seeds the delay jitter).
    #[arg(long, value_name = "N")]
    schedule_seed: Option<u64>,
    /// How many faults the schedule injects (heals and releases that undo
    /// them come on top) [default: 10].
    #[arg(long, value_name = "N", requires = "schedule_seed")]
    faults: Option<usize>,
    /// The fault kinds the schedule draws from, comma-separated: reset,
    /// blackhole, delay, bandwidth, cut, halfclose, hold [default: all].
    #[arg(
        long,
        value_name = "KINDS",
        value_delimiter = ',',
        requires = "schedule_seed"
    )]
    kinds: Vec<String>,
    /// Stop after this long and print the counters (the schedule's faults
    /// are spread over it); without it, run until Ctrl-C and spread the
    /// schedule over 60s.
    #[arg(long, value_name = "DURATION")]
    duration: Option<String>,
    /// How much a held direction buffers before it stops reading
    /// [default: 64M].
    #[arg(long, value_name = "SIZE")]
    hold_limit: Option<String>,
    /// Print events and the final counters as JSON lines on stdout.
    #[arg(long)]
    json: bool,
}

/// Settings after checking the flags.
#[derive(Debug)]
struct ChaosSettings {
    links: Vec<(SocketAddr, SocketAddr)>,
    control: Option<SocketAddr>,
    control_any: bool,
    seed: Option<u64>,
    faults: usize,
    kinds: Vec<FaultClass>,
    duration: Option<Duration>,
    hold_limit: usize,
    json: bool,
}

/// Parses a TCP address (names are resolved).
fn tcp(text: &str) -> anyhow::Result<SocketAddr> {
    match parse_endpoint(text).map_err(anyhow::Error::msg)? {
        Endpoint::Tcp(addr) => Ok(addr),
        other => bail!("{other} is not a TCP address: the chaos proxy speaks TCP"),
    }
}

impl ChaosArgs {
    fn settings(self) -> anyhow::Result<ChaosSettings> {
        if self.listen.len() != self.upstream.len() {
            bail!(
                "{} --listen but {} --upstream: give them in pairs, the Nth --listen forwards to the Nth --upstream",
                self.listen.len(),
                self.upstream.len()
            );
        }
        let links = self
            .listen
            .iter()
            .zip(&self.upstream)
            .map(|(l, u)| Ok((tcp(l)?, tcp(u)?)))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let kinds = self
            .kinds
            .iter()
            .map(|k| k.parse::<FaultClass>())
            .collect::<Result<Vec<_>, _>>()?;
        let duration = self
            .duration
            .as_deref()
            .map(parse_duration)
            .transpose()
            .map_err(anyhow::Error::msg)?;
        let hold_limit = match &self.hold_limit {
            Some(s) => usize::try_from(parse_size(s).map_err(anyhow::Error::msg)?)
                .context("--hold-limit is too large")?,
            None => ProxyOptions::default().hold_limit,
        };
        let control = self.control.as_deref().map(tcp).transpose()?;
        if let Some(addr) = control.filter(|a| !a.ip().is_loopback() && !self.control_any) {
            bail!(
                "--control {addr} is not a loopback address: anyone who reaches it could \
                 break your links; pass --control-any to allow it"
            );
        }
        Ok(ChaosSettings {
            links,
            control,
            control_any: self.control_any,
            seed: self.schedule_seed,
            faults: self.faults.unwrap_or(10),
            kinds,
            duration,
            hold_limit,
            json: self.json,
        })
    }
}

/// What the schedule did so far (kept outside the runner so Ctrl-C still
/// reports it).
#[derive(Debug, Default)]
struct Tally {
    steps: usize,
    applied: usize,
    hits: BTreeMap<&'static str, u64>,
}

/// Starts the proxies and the control API, runs the schedule, and prints
/// the counters at the end.
pub(crate) async fn run(args: ChaosArgs) -> anyhow::Result<ExitCode> {
    let s = args.settings()?;
    let mut proxies = Vec::with_capacity(s.links.len());
    for (i, (listen, upstream)) in s.links.iter().enumerate() {
        let options = ProxyOptions {
            hold_limit: s.hold_limit,
            seed: s.seed.unwrap_or(0) ^ i as u64,
            ..ProxyOptions::default()
        };
        let proxy = Proxy::bind_with(*listen, *upstream, options)
            .await
            .with_context(|| format!("could not listen on {listen}"))?;
        if s.json {
            println!(
                "{}",
                json!({ "event": "listening", "proxy": i, "listen": proxy.addr().to_string(), "upstream": upstream.to_string() })
            );
        } else {
            eprintln!("@{i}: {} -> {upstream}", proxy.addr());
        }
        proxies.push(Arc::new(proxy));
    }
    let _control = match s.control {
        Some(addr) => {
            let server = ControlServer::bind(
                addr,
                proxies.clone(),
                ControlOptions {
                    allow_remote: s.control_any,
                    ..ControlOptions::default()
                },
            )
            .await?;
            if s.json {
                println!(
                    "{}",
                    json!({ "event": "control", "addr": server.addr().to_string() })
                );
            } else {
                eprintln!(
                    "control: {} (try: echo help | nc -q1 {} {})",
                    server.addr(),
                    server.addr().ip(),
                    server.addr().port()
                );
            }
            Some(server)
        }
        None => None,
    };
    let schedule = s.seed.map(|seed| {
        let span = s.duration.unwrap_or(Duration::from_secs(60));
        (seed, Schedule::random(seed, span, s.faults, &s.kinds))
    });
    if let Some((seed, schedule)) = &schedule {
        if s.json {
            println!(
                "{}",
                json!({ "event": "schedule", "seed": seed, "steps": schedule.steps.len(), "span_ms": schedule.span().as_millis() as u64 })
            );
        } else {
            eprintln!(
                "schedule: seed {seed}, {} steps over {:.1}s",
                schedule.steps.len(),
                schedule.span().as_secs_f64()
            );
        }
    }
    if s.duration.is_none() {
        eprintln!("Ctrl-C to stop");
    }

    let start = tokio::time::Instant::now();
    let mut tally = Tally::default();
    let refs: Vec<&Proxy> = proxies.iter().map(AsRef::as_ref).collect();
    let json_out = s.json;
    let work = async {
        if let Some((_, schedule)) = &schedule {
            schedule
                .run(&refs, |at, spec, hit| {
                    tally.steps += 1;
                    if hit > 0 {
                        tally.applied += 1;
                        *tally.hits.entry(spec.kind.name()).or_default() += hit as u64;
                    }
                    print_step(json_out, at, spec, hit);
                })
                .await;
        }
        match s.duration {
            Some(d) => tokio::time::sleep_until(start + d).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        () = work => {}
        r = tokio::signal::ctrl_c() => r.context("could not wait for Ctrl-C")?,
    }
    print_stats(
        s.json,
        &proxies,
        schedule.as_ref().map(|(seed, _)| (*seed, &tally)),
    );
    Ok(ExitCode::SUCCESS)
}

fn print_step(json_out: bool, at: Duration, spec: &FaultSpec, hit: usize) {
    if json_out {
        println!(
            "{}",
            json!({ "event": "fault", "at_ms": at.as_millis() as u64, "fault": spec.to_string(), "kind": spec.kind.name(), "hit": hit })
        );
    } else {
        let links = if hit == 1 { "link" } else { "links" };
        eprintln!("  +{:.3}s {spec} ({hit} {links})", at.as_secs_f64());
    }
}

fn stats_json(i: usize, st: &ProxyStats) -> serde_json::Value {
    json!({
        "proxy": i,
        "listen": st.listen.map(|a| a.to_string()),
        "upstream": st.upstream.map(|a| a.to_string()),
        "links_accepted": st.links_accepted,
        "links_open": st.links_open,
        "connect_failures": st.connect_failures,
        "bytes_up": st.bytes_up,
        "bytes_down": st.bytes_down,
        "faults": st.faults,
    })
}

fn print_stats(json_out: bool, proxies: &[Arc<Proxy>], schedule: Option<(u64, &Tally)>) {
    let stats: Vec<ProxyStats> = proxies.iter().map(|p| p.stats()).collect();
    if json_out {
        let each: Vec<serde_json::Value> = stats
            .iter()
            .enumerate()
            .map(|(i, st)| stats_json(i, st))
            .collect();
        let schedule = schedule.map(|(seed, t)| {
            json!({ "seed": seed, "steps": t.steps, "applied": t.applied, "hits": t.hits })
        });
        println!(
            "{}",
            json!({ "event": "stats", "proxies": each, "schedule": schedule })
        );
        return;
    }
    let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
    for (i, st) in stats.iter().enumerate() {
        let faults: Vec<String> = st.faults.iter().map(|(k, v)| format!("{k} {v}")).collect();
        println!(
            "@{i} {} -> {}: {} links ({} open, {} could not connect), {:.2} MiB up, {:.2} MiB down, faults: {}",
            st.listen.map_or_else(|| "?".to_owned(), |a| a.to_string()),
            st.upstream.map_or_else(|| "?".to_owned(), |a| a.to_string()),
            st.links_accepted,
            st.links_open,
            st.connect_failures,
            mib(st.bytes_up),
            mib(st.bytes_down),
            if faults.is_empty() {
                "none".to_owned()
            } else {
                faults.join(", ")
            }
        );
    }
    if let Some((seed, t)) = schedule {
        println!(
            "schedule seed {seed}: {} steps run, {} hit a link",
            t.steps, t.applied
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: ChaosArgs,
    }

    fn settings(argv: &[&str]) -> anyhow::Result<ChaosSettings> {
        let mut full = vec!["chaos"];
        full.extend_from_slice(argv);
        Cli::try_parse_from(full)?.args.settings()
    }

    #[test]
    fn flags_pair_listen_with_upstream() {
        let s = settings(&[
            "--listen",
            "127.0.0.1:7401",
            "--upstream",
            "127.0.0.1:7400",
            "--listen",
            "127.0.0.1:7411",
            "--upstream",
            "127.0.0.1:7410",
            "--schedule-seed",
            "7",
            "--faults",
            "5",
            "--kinds",
            "reset,hold",
            "--duration",
            "10s",
            "--hold-limit",
            "1M",
        ])
        .expect("valid");
        assert_eq!(s.links.len(), 2);
        assert_eq!(s.links[1].1.port(), 7410);
        assert_eq!(s.kinds, vec![FaultClass::Reset, FaultClass::Hold]);
        assert_eq!((s.seed, s.faults), (Some(7), 5));
        assert_eq!(s.duration, Some(Duration::from_secs(10)));
        assert_eq!(s.hold_limit, 1 << 20);
    }

    #[test]
    fn bad_flags_are_explained() {
        for argv in [
            &["--listen", "127.0.0.1:1"][..],
            &["--listen", "127.0.0.1:1", "--upstream", "nowhere"],
            &["--listen", "127.0.0.1:1", "--upstream", "unix:/tmp/x"],
            &[
                "--listen",
                "a:1",
                "--listen",
                "b:2",
                "--upstream",
                "127.0.0.1:1",
            ],
            &[
                "--listen",
                "127.0.0.1:1",
                "--upstream",
                "127.0.0.1:2",
                "--control",
                "0.0.0.0:7402",
            ],
            &[
                "--listen",
                "127.0.0.1:1",
                "--upstream",
                "127.0.0.1:2",
                "--faults",
                "3",
            ],
            &[
                "--listen",
                "127.0.0.1:1",
                "--upstream",
                "127.0.0.1:2",
                "--schedule-seed",
                "1",
                "--kinds",
                "meteor",
            ],
        ] {
            assert!(settings(argv).is_err(), "{argv:?}");
        }
    }
}
