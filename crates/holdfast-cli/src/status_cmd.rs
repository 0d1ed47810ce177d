//! `holdfast status`: what a running target or export is doing, read over
//! its local control socket ([`crate::control`]): sessions and their state,
//! connections and counters; `--json` prints the document as served.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use holdfast::{SessionStatus, TargetObserver};
use serde_json::{json, Value};

/// Options of `holdfast status`.
#[derive(Debug, Args)]
pub(crate) struct StatusArgs {
    /// The control socket of a running `holdfast target` (its `--control`
    /// path). Without it and `--nbd`, every target and export found in the
    /// default directory (/run/holdfast for root, else
    /// $XDG_RUNTIME_DIR/holdfast) is shown.
    #[arg(long, value_name = "PATH")]
    target: Vec<PathBuf>,
    /// The control socket of a running `holdfast nbd` (its `--control` path).
    #[arg(long, value_name = "PATH")]
    nbd: Vec<PathBuf>,
    /// Print each status document as one JSON line.
    #[arg(long)]
    json: bool,
}

/// Queries the control sockets and prints what they say.
pub(crate) async fn run(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let named: Vec<PathBuf> = args.target.iter().chain(&args.nbd).cloned().collect();
    let explicit = !named.is_empty();
    let paths = if explicit {
        named
    } else {
        crate::control::default_sockets()
    };
    if paths.is_empty() {
        anyhow::bail!(
            "no running target or export found in {}: start one, or name its control socket \
             with --target PATH or --nbd PATH",
            crate::control::default_dir().display()
        );
    }
    let mut shown = 0;
    for path in &paths {
        match crate::control::query(path).await {
            Ok(doc) if args.json => println!("{doc}"),
            Ok(doc) => print!("{}", render(&doc)),
            // A socket a crashed process left behind is skipped when
            // scanning; a named one that does not answer is an error.
            Err(e) if explicit => return Err(e),
            Err(_) => continue,
        }
        shown += 1;
    }
    if shown == 0 {
        anyhow::bail!(
            "no control socket in {} answered: the processes that made them have stopped",
            crate::control::default_dir().display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The status document of a running target.
pub(crate) async fn target_document(target: &TargetObserver, service: &str) -> Value {
    let sessions = target.sessions().await.unwrap_or_default();
    let stats = target.stats().await.unwrap_or_default();
    let count = |state: &str| {
        sessions
            .iter()
            .filter(|s| s.state.as_str() == state)
            .count()
    };
    json!({
        "kind": "target",
        "pid": std::process::id(),
        "service": service,
        "endpoints": target.endpoints().iter().map(ToString::to_string).collect::<Vec<_>>(),
        "connections": target.connections().await.unwrap_or(0),
        "sessions_by_state": {
            "attached": count("attached"),
            "detached": count("detached"),
            "expiring": count("expiring"),
        },
        "sessions": sessions.iter().map(session_json).collect::<Vec<_>>(),
        "stats": serde_json::to_value(&stats).unwrap_or(Value::Null),
    })
}

/// The status document of a running `holdfast nbd`: its export, its
/// session (or each path's, over a path group: state, connected or not,
/// counters) and the NBD requests in flight.
pub(crate) async fn nbd_document(
    volume: &holdfast_block::Volume,
    uri: &str,
    targets: &[String],
    requests_in_flight: usize,
) -> Value {
    let mut sessions = Vec::new();
    let mut paths = Vec::new();
    if let Some(initiator) = volume.initiator() {
        let state = initiator.path_state();
        let stats = initiator.stats().await;
        sessions.push(json!({
            "target": targets.first(),
            "connected": state.connected,
            "session": state.session.map(|s| s.to_string()),
            "ended": state.ended,
            "stats": serde_json::to_value(stats).unwrap_or(Value::Null),
        }));
    }
    if let Some(group) = volume.path_group() {
        use holdfast::paths::PathState;
        for p in group.stats().await.paths {
            let connected = matches!(p.state, PathState::Active | PathState::Standby);
            sessions.push(json!({
                "target": p.name,
                "connected": connected,
                "stats": serde_json::to_value(p.session).unwrap_or(Value::Null),
            }));
            paths.push(json!({
                "path": p.name,
                "state": p.state.name(),
                "since_contact_ms": p.since_contact.map(|d| d.as_millis() as u64),
                "outstanding": p.outstanding,
                "failovers": p.failovers,
                "fences_requested": p.fences_requested,
                "fences_confirmed": p.fences_confirmed,
                "commands_moved": p.commands_moved,
                "commands_failed": p.commands_failed,
            }));
        }
    }
    json!({
        "kind": "nbd",
        "pid": std::process::id(),
        "uri": uri,
        "targets": targets,
        "size": volume.size(),
        "requests_in_flight": requests_in_flight,
        "sessions": sessions,
        "paths": paths,
    })
}

fn session_json(s: &SessionStatus) -> Value {
    json!({
        "id": s.id.to_string(),
        "state": s.state.as_str(),
        "detached_ms": s.detached_for.map(|d| d.as_millis() as u64),
        "credits": s.info.credits,
        "held": s.info.held,
        "running": s.info.running,
        "cached_responses": s.info.cached,
        "cached_bytes": s.info.cached_bytes,
        "received": s.info.received,
        "limit": s.info.limit,
    })
}

/// A person's view of a status document.
fn render(doc: &Value) -> String {
    let mut out = String::new();
    let kind = doc["kind"].as_str().unwrap_or("?");
    if kind == "target" {
        out += &format!(
            "holdfast target (pid {}) serving {} on {}\n",
            doc["pid"],
            doc["service"].as_str().unwrap_or("?"),
            doc["endpoints"]
                .as_array()
                .map(|a| a
                    .iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(", "))
                .unwrap_or_default()
        );
        let by = &doc["sessions_by_state"];
        out += &format!(
            "connections {}; sessions: {} attached, {} detached, {} expiring\n",
            doc["connections"], by["attached"], by["detached"], by["expiring"]
        );
        let sessions = doc["sessions"].as_array().cloned().unwrap_or_default();
        if !sessions.is_empty() {
            out += &format!(
                "{:<20} {:<9} {:>10} {:>7} {:>5} {:>7} {:>7} {:>12}\n",
                "SESSION", "STATE", "DETACHED", "CREDITS", "HELD", "RUNNING", "CACHED", "RECEIVED"
            );
        }
        for s in sessions {
            let detached = s["detached_ms"]
                .as_u64()
                .map_or_else(|| "-".to_owned(), |ms| format!("{:.1}s", ms as f64 / 1e3));
            out += &format!(
                "{:<20} {:<9} {:>10} {:>7} {:>5} {:>7} {:>7} {:>12}\n",
                s["id"].as_str().unwrap_or("?"),
                s["state"].as_str().unwrap_or("?"),
                detached,
                s["credits"],
                s["held"],
                s["running"],
                s["cached_responses"],
                s["received"]
            );
        }
    } else {
        render_nbd(doc, &mut out);
    }
    out
}

/// A person's view of an export's status document.
fn render_nbd(doc: &Value, out: &mut String) {
    let list = |v: &Value| {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default()
    };
    *out += &format!(
        "holdfast nbd (pid {}) exporting {} ({} bytes) from {}\n",
        doc["pid"],
        doc["uri"].as_str().unwrap_or("?"),
        doc["size"],
        list(&doc["targets"])
    );
    *out += &format!("NBD requests in flight: {}\n", doc["requests_in_flight"]);
    for s in doc["sessions"].as_array().into_iter().flatten() {
        let st = &s["stats"];
        *out += &format!(
            "session with {}: {}; {} connections, {} stateful and {} stateless recoveries, \
             {} responses, {} failed calls\n",
            s["target"].as_str().unwrap_or("?"),
            if s["connected"].as_bool() == Some(true) {
                "connected"
            } else {
                "not connected"
            },
            st["connects"],
            st["recoveries"],
            st["stateless_recoveries"],
            st["responses"],
            st["calls_failed"]
        );
    }
    let paths = doc["paths"].as_array().cloned().unwrap_or_default();
    if !paths.is_empty() {
        *out += &format!(
            "{:<24} {:<12} {:>11} {:>9} {:>7}\n",
            "PATH", "STATE", "OUTSTANDING", "FAILOVERS", "FENCES"
        );
    }
    for p in paths {
        *out += &format!(
            "{:<24} {:<12} {:>11} {:>9} {:>7}\n",
            p["path"].as_str().unwrap_or("?"),
            p["state"].as_str().unwrap_or("?"),
            p["outstanding"],
            p["failovers"],
            p["fences_confirmed"]
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::Arc;
    use std::time::Duration;

    use bytes::Bytes;
    use holdfast::{
        service_fn, Endpoint, EndpointConnector, Initiator, InitiatorOptions, Request, Target,
        TargetConfig, TargetOptions,
    };

    /// A session that called `payload` and then lost its connection (its
    /// initiator is dropped without FIN).
    async fn session_that_leaves(addr: &Endpoint, payload: &'static [u8]) {
        let connector = EndpointConnector::new(addr.clone(), Duration::from_secs(2));
        let init = Initiator::start(Arc::new(connector), InitiatorOptions::default());
        if payload == b"fast" {
            init.call(Bytes::from_static(payload)).await.expect("call");
        } else {
            // The slow call stays running at the target.
            let call = init.call(Bytes::from_static(payload));
            let _ = tokio::time::timeout(Duration::from_millis(200), call).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn status_shows_sessions_in_every_state_over_the_control_socket() {
        // "slow" runs until released; everything else answers at once.
        let release = Arc::new(tokio::sync::Notify::new());
        let held = release.clone();
        let service = service_fn(move |req: Request| {
            let held = held.clone();
            async move {
                if req.payload.as_ref() == b"slow" {
                    held.notified().await;
                }
                Ok::<_, std::convert::Infallible>(Bytes::new())
            }
        });
        let options = {
            let mut o = TargetOptions::default();
            o.protocol = {
                let mut tc = TargetConfig::default();
                tc.retain = Duration::from_secs(1);
                tc
            };
            o
        };
        let target = Target::serve(
            &[Endpoint::Tcp("127.0.0.1:0".parse().expect("addr"))],
            options,
            service,
        )
        .await
        .expect("serve");
        let addr = target.endpoints()[0].clone();
        // Expiring: its retain time passes while its command runs.
        session_that_leaves(&addr, b"slow").await;
        tokio::time::sleep(Duration::from_millis(1300)).await;
        // Attached: a live session.
        let connector = EndpointConnector::new(addr.clone(), Duration::from_secs(2));
        let attached = Initiator::start(Arc::new(connector), InitiatorOptions::default());
        attached
            .call(Bytes::from_static(b"fast"))
            .await
            .expect("call");
        // Detached: lost its connection moments ago.
        session_that_leaves(&addr, b"fast").await;
        tokio::time::sleep(Duration::from_millis(100)).await;

        let dir = std::env::temp_dir().join(format!("holdfast-status-{}", std::process::id()));
        let path = dir.join("target.sock");
        let observer = target.observer();
        let status: crate::control::StatusFn = Arc::new(move || {
            let observer = observer.clone();
            Box::pin(async move { target_document(&observer, "test").await })
        });
        let control = crate::control::Control::start(&path, status).expect("control");
        let doc = crate::control::query(&path).await.expect("status");
        let states: Vec<&str> = doc["sessions"]
            .as_array()
            .expect("sessions")
            .iter()
            .filter_map(|s| s["state"].as_str())
            .collect();
        assert_eq!(states, ["expiring", "attached", "detached"], "{doc}");
        assert_eq!(doc["sessions_by_state"]["expiring"], 1, "{doc}");
        assert_eq!(doc["sessions"][0]["running"], 1, "{doc}");
        assert!(
            doc["sessions"][2]["detached_ms"].as_u64().is_some(),
            "{doc}"
        );
        assert!(doc["sessions"][1]["detached_ms"].is_null(), "{doc}");
        assert_eq!(doc["stats"]["sessions_created"], 3, "{doc}");
        release.notify_waiters();
        drop(control);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_target_document_renders_one_row_per_session() {
        let doc = json!({
            "kind": "target", "pid": 7, "service": "the log service",
            "endpoints": ["tcp://127.0.0.1:7400"], "connections": 1,
            "sessions_by_state": {"attached": 1, "detached": 1, "expiring": 0},
            "sessions": [
                {"id": "S1", "state": "attached", "detached_ms": null, "credits": 8, "held": 1,
                 "running": 1, "cached_responses": 0, "received": 5},
                {"id": "S2", "state": "detached", "detached_ms": 1500, "credits": 8, "held": 0,
                 "running": 0, "cached_responses": 2, "received": 9},
            ],
        });
        let text = render(&doc);
        assert!(
            text.contains("1 attached, 1 detached, 0 expiring"),
            "{text}"
        );
        assert!(
            text.lines()
                .any(|l| l.starts_with("S2") && l.contains("1.5s")),
            "{text}"
        );
        assert_eq!(text.lines().count(), 5, "{text}");
    }
}
