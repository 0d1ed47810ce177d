//! Running fio for the block scenario and reading its JSON report: one job,
//! time-based with a ramp, against an NBD URI (fio's `nbd` engine, which
//! uses libnbd) or a local file.

use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use serde_json::Value;

/// What one fio job does.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Job<'a> {
    /// fio's `rw`: `randread`, `randwrite`, `read` or `write`.
    pub(crate) rw: &'a str,
    /// Request size in bytes.
    pub(crate) block: usize,
    /// Requests outstanding at once.
    pub(crate) depth: usize,
    /// Unmeasured warm-up.
    pub(crate) ramp: Duration,
    /// Measured time.
    pub(crate) runtime: Duration,
}

/// Where fio sends the I/O.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Device<'a> {
    /// An NBD server, by URI.
    Nbd(&'a str),
    /// A local file of this many bytes, through the page cache with psync
    /// (one request at a time: the queue depth is nominal).
    File(&'a Path, u64),
}

/// What fio measured.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct FioResult {
    /// Requests per second.
    pub(crate) iops: f64,
    /// Bytes per second.
    pub(crate) bytes_per_s: f64,
    /// Median completion latency, in microseconds.
    pub(crate) p50_us: f64,
    /// 99th-percentile completion latency, in microseconds.
    pub(crate) p99_us: f64,
    /// CPU time fio itself used in the measured window.
    pub(crate) cpu: Duration,
    /// The measured window fio reports.
    pub(crate) runtime: Duration,
}

/// True if fio is installed.
pub(crate) fn available() -> bool {
    std::process::Command::new("fio")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Runs one job and returns its figures.
pub(crate) async fn run(device: Device<'_>, job: Job<'_>) -> anyhow::Result<FioResult> {
    let mut cmd = tokio::process::Command::new("fio");
    cmd.args([
        "--name=holdfast-bench".to_owned(),
        format!("--rw={}", job.rw),
        format!("--bs={}", job.block),
        format!("--iodepth={}", job.depth),
        "--time_based".to_owned(),
        format!("--runtime={}ms", job.runtime.as_millis().max(1)),
        format!("--ramp_time={}ms", job.ramp.as_millis()),
        "--output-format=json".to_owned(),
    ]);
    let what = match device {
        Device::Nbd(uri) => {
            cmd.args(["--ioengine=nbd".to_owned(), format!("--uri={uri}")]);
            uri.to_owned()
        }
        Device::File(path, size) => {
            cmd.args([
                // Buffered I/O completes inside the system call whatever
                // the engine, so the plain one counts latency honestly.
                "--ioengine=psync".to_owned(),
                "--direct=0".to_owned(),
                // fio drops the file's page cache before a job by default:
                // the servers read it cached, so must the bound.
                "--invalidate=0".to_owned(),
                format!("--filename={}", path.display()),
                format!("--size={size}"),
            ]);
            path.display().to_string()
        }
    };
    cmd.stdin(std::process::Stdio::null()).kill_on_drop(true);
    let limit = job.ramp + job.runtime + Duration::from_secs(60);
    let out = tokio::time::timeout(limit, cmd.output())
        .await
        .map_err(|_| anyhow!("fio on {what} did not finish within {limit:?}"))?
        .context("could not run fio; is it installed?")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "fio {} on {what} failed ({}): {}{}",
            job.rw,
            out.status,
            stdout.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    parse(&stdout, job.rw).with_context(|| format!("fio {} on {what}", job.rw))
}

/// Reads the figures of the first job from fio's JSON output (which the nbd
/// engine precedes with a line of its own).
pub(crate) fn parse(stdout: &str, rw: &str) -> anyhow::Result<FioResult> {
    let start = stdout
        .find('{')
        .ok_or_else(|| anyhow!("fio printed no JSON: {stdout}"))?;
    let report: Value =
        serde_json::from_str(&stdout[start..]).context("fio's JSON is malformed")?;
    let job = &report["jobs"][0];
    if let Some(e) = job["error"].as_i64().filter(|e| *e != 0) {
        bail!("fio reports error {e}");
    }
    let side = &job[if rw.contains("write") {
        "write"
    } else {
        "read"
    }];
    let number = |v: &Value, what: &str| {
        v.as_f64()
            .ok_or_else(|| anyhow!("fio's report has no {what}"))
    };
    let percentile = |p: &str| -> anyhow::Result<f64> {
        Ok(number(&side["clat_ns"]["percentile"][p], &format!("p{p} latency"))? / 1e3)
    };
    let runtime = Duration::from_millis(number(&job["job_runtime"], "job_runtime")? as u64);
    let cpu_share =
        (number(&job["usr_cpu"], "usr_cpu")? + number(&job["sys_cpu"], "sys_cpu")?) / 100.0;
    let iops = number(&side["iops"], "iops")?;
    if iops <= 0.0 {
        bail!("fio completed no {rw} requests");
    }
    Ok(FioResult {
        iops,
        bytes_per_s: number(&side["bw_bytes"], "bw_bytes")?,
        p50_us: percentile("50.000000")?,
        p99_us: percentile("99.000000")?,
        cpu: runtime.mul_f64(cpu_share.max(0.0)),
        runtime,
    })
}

/// What the disk under a directory does with one fsync per write.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub(crate) struct FsyncRate {
    /// 4 KiB writes each followed by `fdatasync`, per second.
    pub(crate) fsyncs_per_s: f64,
    /// Median latency of one `fdatasync`, in microseconds.
    pub(crate) p50_us: f64,
    /// 99th-percentile latency of one `fdatasync`, in microseconds.
    pub(crate) p99_us: f64,
}

/// Measures the raw fsync rate of the file system holding `dir` with fio
/// (`--rw=write --bs=4k --fsync=1`, one job, psync), for `runtime`; fio's
/// file is removed afterwards.
pub(crate) async fn fsync_rate(dir: &Path, runtime: Duration) -> anyhow::Result<FsyncRate> {
    let mut cmd = tokio::process::Command::new("fio");
    cmd.args([
        "--name=holdfast-fsync".to_owned(),
        format!("--directory={}", dir.display()),
        "--rw=write".to_owned(),
        "--bs=4k".to_owned(),
        "--size=16m".to_owned(),
        "--ioengine=psync".to_owned(),
        "--fdatasync=1".to_owned(),
        "--time_based".to_owned(),
        format!("--runtime={}ms", runtime.as_millis().max(1)),
        "--unlink=1".to_owned(),
        "--output-format=json".to_owned(),
    ]);
    cmd.stdin(std::process::Stdio::null()).kill_on_drop(true);
    let limit = runtime + Duration::from_secs(60);
    let out = tokio::time::timeout(limit, cmd.output())
        .await
        .map_err(|_| anyhow!("fio --fdatasync=1 did not finish within {limit:?}"))?
        .context("could not run fio; is it installed?")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "fio --fdatasync=1 in {} failed ({}): {}{}",
            dir.display(),
            out.status,
            stdout.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    parse_fsync(&stdout).with_context(|| format!("fio --fdatasync=1 in {}", dir.display()))
}

/// Reads the write rate and the sync latency from fio's JSON output.
pub(crate) fn parse_fsync(stdout: &str) -> anyhow::Result<FsyncRate> {
    let start = stdout
        .find('{')
        .ok_or_else(|| anyhow!("fio printed no JSON: {stdout}"))?;
    let report: Value =
        serde_json::from_str(&stdout[start..]).context("fio's JSON is malformed")?;
    let job = &report["jobs"][0];
    let number = |v: &Value, what: &str| {
        v.as_f64()
            .ok_or_else(|| anyhow!("fio's report has no {what}"))
    };
    let fsyncs_per_s = number(&job["write"]["iops"], "write iops")?;
    if fsyncs_per_s <= 0.0 {
        bail!("fio completed no synced writes");
    }
    let sync = &job["sync"]["lat_ns"]["percentile"];
    Ok(FsyncRate {
        fsyncs_per_s,
        p50_us: number(&sync["50.000000"], "sync p50")? / 1e3,
        p99_us: number(&sync["99.000000"], "sync p99")? / 1e3,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_fsync_rate_fio_reports() {
        let out = r#"{ "jobs": [ { "error": 0, "write": { "iops": 222.5 },
  "sync": { "total_ios": 445, "lat_ns": { "percentile": { "50.000000": 4000000, "99.000000": 9000000 } } } } ] }"#;
        let r = parse_fsync(out).expect("parse");
        assert_eq!(
            (r.fsyncs_per_s, r.p50_us, r.p99_us),
            (222.5, 4000.0, 9000.0)
        );
        assert!(parse_fsync(r#"{"jobs":[{"write":{"iops":0}}]}"#).is_err());
    }

    #[test]
    fn reads_the_figures_fio_reports() {
        let out = r#"fio: connected to NBD server
{ "jobs": [ { "error": 0, "job_runtime": 2000, "usr_cpu": 25.0, "sys_cpu": 25.0,
  "read": { "iops": 1000.5, "bw_bytes": 4098048,
            "clat_ns": { "percentile": { "50.000000": 12000, "99.000000": 99000 } } },
  "write": { "iops": 0 } } ] }"#;
        let r = parse(out, "randread").expect("parse");
        assert_eq!(r.iops, 1000.5);
        assert_eq!(r.p50_us, 12.0);
        assert_eq!(r.p99_us, 99.0);
        assert_eq!(r.cpu, Duration::from_secs(1));
        let e = parse(out, "randwrite").expect_err("no writes");
        assert!(e.to_string().contains("no randwrite"), "{e}");
        assert!(parse("no json here", "read").is_err());
    }
}
