//! The optional TOML configuration file: a `[target]` and an `[nbd]` table
//! whose keys are the subcommands' long flag names. Flags given on the
//! command line win over the file.

use std::path::Path;

use anyhow::Context;
use serde::Deserialize;

use crate::nbd_cmd::NbdArgs;
use crate::target_cmd::TargetArgs;

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConfigFile {
    /// Settings for `holdfast target`.
    #[serde(default)]
    pub(crate) target: TargetArgs,
    /// Settings for `holdfast nbd`.
    #[serde(default)]
    pub(crate) nbd: NbdArgs,
}

impl ConfigFile {
    /// Reads and parses `path`, or returns an empty configuration.
    pub(crate) fn load(path: Option<&Path>) -> anyhow::Result<ConfigFile> {
        let Some(path) = path else {
            return Ok(ConfigFile::default());
        };
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("could not read the config file {}", path.display()))?;
        toml::from_str(&text).with_context(|| {
            format!(
                "the config file {} is not valid: its keys are the long flag names, \
                 under [target] or [nbd]",
                path.display()
            )
        })
    }
}

/// Takes the command line's value if given, else the file's.
pub(crate) fn pick<T>(flag: Option<T>, file: Option<T>) -> Option<T> {
    flag.or(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_file_fills_what_flags_leave_out() {
        let file: ConfigFile = toml::from_str(
            r#"
            [target]
            volume = "/srv/disk.img"
            size = "1G"
            listen = ["127.0.0.1:7400"]

            [nbd]
            target = "127.0.0.1:7400"
            io-timeout = "30s"
            "#,
        )
        .expect("valid config");
        assert_eq!(
            file.target.volume.as_deref(),
            Some(Path::new("/srv/disk.img"))
        );
        assert_eq!(file.nbd.io_timeout.as_deref(), Some("30s"));
        assert_eq!(pick(Some(1), Some(2)), Some(1));
        assert_eq!(pick(None, Some(2)), Some(2));
    }

    #[test]
    fn the_readme_example_parses_and_passes_the_checks() {
        let readme = include_str!("../../../README.md");
        let start = readme.find("```toml\n").expect("README has a TOML example") + 8;
        let len = readme[start..].find("```").expect("the example ends");
        // The example names a host; this machine cannot resolve it.
        let example = readme[start..start + len].replace("storage-host:", "127.0.0.1:");
        let file: ConfigFile = toml::from_str(&example).expect("valid config");
        assert_eq!(file.target.listen, ["0.0.0.0:7400"]);
        let nbd = file.nbd.merged(NbdArgs::default());
        let target = file.target.merged(TargetArgs::default());
        assert!(nbd.is_ok() && target.is_ok(), "{nbd:?} {target:?}");
    }

    #[test]
    fn nbd_takes_one_target_or_a_list_of_nodes() {
        let one: ConfigFile = toml::from_str("[nbd]\ntarget = \"127.0.0.1:7400\"\n").expect("one");
        assert_eq!(one.nbd.target, vec!["127.0.0.1:7400".to_owned()]);
        let two: ConfigFile = toml::from_str(
            "[nbd]\ntarget = [\"10.0.0.5:7400\", \"10.0.0.6:7400\"]\npolicy = \"active-active\"\n\
             failover-delay = \"1s\"\n",
        )
        .expect("two");
        assert_eq!(two.nbd.target.len(), 2);
        assert_eq!(two.nbd.policy.as_deref(), Some("active-active"));
        assert_eq!(two.nbd.failover_delay.as_deref(), Some("1s"));
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = toml::from_str::<ConfigFile>("[target]\nvolumes = \"x\"\n");
        assert!(err.is_err());
    }
}
