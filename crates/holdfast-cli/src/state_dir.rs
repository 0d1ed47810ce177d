//! `holdfast target --state-dir`: opening the durable session store
//! (PROTOCOL.md §12) and saying what was recovered, or why the store cannot
//! be used, what state the sessions are in and what to do.

use std::path::Path;

use anyhow::anyhow;
use holdfast::{DurableStore, RecoveryReport, StoreError, StoreOptions};

/// Opens (or creates) the store in `dir`. A damaged store is refused with
/// the sessions it affects and the command that starts afresh.
pub(crate) fn open(dir: &Path) -> anyhow::Result<DurableStore> {
    DurableStore::open(dir, StoreOptions::default()).map_err(|e| match &e {
        StoreError::Corrupt { .. } | StoreError::Restore { .. } => anyhow!(
            "{e} (for example: mv {0} {0}.damaged, then start the target again)",
            dir.display()
        ),
        _ => anyhow!(e),
    })
}

/// What was recovered, as the `recovered` object of the `serving` line.
pub(crate) fn recovered_json(report: &RecoveryReport) -> serde_json::Value {
    serde_json::json!({
        "created": report.created,
        "incarnation": report.incarnation,
        "sessions": report.sessions,
        "responses": report.responses,
        "pending_commands": report.pending_commands,
        "pending_messages": report.pending_messages,
        "groups_replayed": report.groups_replayed,
        "downtime_ms": u64::try_from(report.downtime.as_millis()).unwrap_or(u64::MAX),
        "torn_tail_bytes": report.torn_tail.map(|t| t.bytes),
    })
}

/// What was recovered, in a sentence for people.
pub(crate) fn recovered_text(dir: &Path, report: &RecoveryReport) -> String {
    if report.created {
        return format!(
            "session store created in {}: sessions now survive a crash or kill -9 of this \
             process (restart it with the same --state-dir within --retain)",
            dir.display()
        );
    }
    let torn = report.torn_tail.map_or_else(String::new, |t| {
        format!(
            "; a torn final group of {} bytes (a crash in the middle of a group write, never \
             acknowledged) was dropped",
            t.bytes
        )
    });
    format!(
        "session store in {}: recovered {} sessions with {} cached responses, {} commands \
         and {} messages to run again, from {} log groups after {:.1} s down{torn}; \
         initiators that reconnect within their retain time resume where they were",
        dir.display(),
        report.sessions,
        report.responses,
        report.pending_commands,
        report.pending_messages,
        report.groups_replayed,
        report.downtime.as_secs_f64(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory that is not a store's is created as one; a damaged log
    /// is refused with the way out.
    #[test]
    fn a_damaged_store_is_refused_with_the_way_out() {
        let dir = std::env::temp_dir().join(format!("holdfast-state-dir-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = open(&dir).expect("a new store");
        assert!(store.report().created);
        assert!(recovered_text(&dir, store.report()).contains("created"));
        drop(store);
        let log = dir.join("session.log");
        let mut bytes = std::fs::read(&log).unwrap_or_default();
        bytes.extend_from_slice(&[0xff; 64]);
        bytes[0] ^= 0xff;
        std::fs::write(&log, &bytes).expect("damage the log");
        let err = open(&dir).expect_err("a damaged store").to_string();
        assert!(err.contains("mv ") && err.contains(".damaged"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
