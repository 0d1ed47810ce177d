//! Startup checks of settings that parse but make no sense (`--credits 0`,
//! `--detection 0s`), and the lenient TOML shapes the config file accepts.
//!
//! Every refusal names the flag, the value, why it cannot work and what to
//! give instead, so nothing nonsensical is silently adjusted or left to fail
//! later (a zero detection bound once made a reconnect storm of thousands of
//! connections a second).

use std::time::Duration;

use anyhow::bail;
use serde::{Deserialize, Deserializer};

/// Refuses a count below `min`.
pub(crate) fn at_least(flag: &str, value: u64, min: u64, why: &str) -> anyhow::Result<()> {
    if value < min {
        bail!("--{flag} {value} is too small: it must be at least {min} ({why})");
    }
    Ok(())
}

/// Refuses a duration outside `min..=max`.
pub(crate) fn duration_within(
    flag: &str,
    value: Duration,
    min: Duration,
    max: Duration,
    why: &str,
) -> anyhow::Result<()> {
    if value < min || value > max {
        bail!(
            "--{flag} {} is out of range: it must be from {} to {} ({why})",
            shown(value),
            shown(min),
            shown(max)
        );
    }
    Ok(())
}

/// Refuses a `--state-dir` that cannot hold a session store: a path that
/// exists and is not a directory, or the volume itself.
pub(crate) fn state_dir(
    dir: &std::path::Path,
    volume: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    if dir.as_os_str().is_empty() {
        bail!("--state-dir is empty: give a directory for the session store, e.g. /var/lib/holdfast/vol0");
    }
    if let Ok(meta) = std::fs::metadata(dir) {
        if !meta.is_dir() {
            bail!(
                "--state-dir {} is not a directory: give a directory (created if missing) \
                 where the session store may keep its files",
                dir.display()
            );
        }
    }
    if volume.is_some_and(|v| v == dir) {
        bail!(
            "--state-dir {} is the volume: give a directory of its own for the session store",
            dir.display()
        );
    }
    Ok(())
}

/// A duration as a person writes it: `500ms`, `2s`, `1.5s`.
fn shown(d: Duration) -> String {
    if d.subsec_millis() == 0 && d.as_secs() > 0 {
        format!("{}s", d.as_secs())
    } else if d.subsec_nanos().is_multiple_of(1_000_000) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{d:?}")
    }
}

/// Deserializes a list from either one string or an array of strings, so
/// `listen = "0.0.0.0:7400"` and `listen = ["0.0.0.0:7400"]` both work.
pub(crate) fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

/// Deserializes a size from a string (`"1G"`) or a plain number of bytes
/// (`1073741824`).
pub(crate) fn size_text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Text(String),
        Bytes(u64),
    }
    Ok(Option::<Size>::deserialize(d)?.map(|s| match s {
        Size::Text(t) => t,
        Size::Bytes(b) => b.to_string(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_name_the_flag_the_value_and_the_range() {
        let e = at_least("credits", 0, 1, "a session needs room for one command")
            .expect_err("0 credits");
        assert_eq!(
            e.to_string(),
            "--credits 0 is too small: it must be at least 1 (a session needs room for one command)"
        );
        let e = duration_within(
            "detection",
            Duration::ZERO,
            Duration::from_millis(100),
            Duration::from_secs(120),
            "x",
        )
        .expect_err("0s detection");
        assert_eq!(
            e.to_string(),
            "--detection 0ms is out of range: it must be from 100ms to 120s (x)"
        );
        assert!(at_least("credits", 1, 1, "").is_ok());
    }
}
