//! Tables for the terminal and for Markdown, number formatting, latency
//! summaries, and writing report files.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use hdrhistogram::Histogram;

/// A table of strings: the first column and those named by
/// [`Table::align_left`] are left-aligned, the rest right-aligned (numbers).
#[derive(Debug, Default)]
pub(crate) struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
    /// Columns aligned left (text), besides the first.
    left: Vec<usize>,
}

impl Table {
    /// A table with these column headers.
    pub(crate) fn new(headers: &[&str]) -> Table {
        Table {
            headers: headers.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
            left: Vec::new(),
        }
    }

    /// Aligns these columns (zero-based) left: they hold text.
    pub(crate) fn align_left(mut self, columns: &[usize]) -> Table {
        self.left.extend_from_slice(columns);
        self
    }

    /// True if column `i` is aligned left.
    fn is_left(&self, i: usize) -> bool {
        i == 0 || self.left.contains(&i)
    }

    /// Adds a row (missing cells are empty, extra cells are dropped).
    pub(crate) fn push(&mut self, mut row: Vec<String>) {
        row.resize(self.headers.len(), String::new());
        self.rows.push(row);
    }

    /// Column widths in characters.
    fn widths(&self) -> Vec<usize> {
        (0..self.headers.len())
            .map(|i| {
                self.rows
                    .iter()
                    .map(|r| r[i].chars().count())
                    .chain(std::iter::once(self.headers[i].chars().count()))
                    .max()
                    .unwrap_or(0)
            })
            .collect()
    }

    /// The table as aligned plain text, for the terminal.
    pub(crate) fn text(&self) -> String {
        let widths = self.widths();
        let line = |cells: &[String]| {
            let mut out = String::new();
            for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
                let pad = " ".repeat(w - cell.chars().count());
                if self.is_left(i) {
                    out.push_str(&format!("  {cell}{pad}"));
                } else {
                    out.push_str(&format!("  {pad}{cell}"));
                }
            }
            out.trim_end().to_owned() + "\n"
        };
        let mut out = line(&self.headers);
        let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
        out.push_str(&line(&rule));
        for r in &self.rows {
            out.push_str(&line(r));
        }
        out
    }

    /// The table in Markdown.
    pub(crate) fn markdown(&self) -> String {
        let line = |cells: &[String]| format!("| {} |\n", cells.join(" | "));
        let mut out = line(&self.headers);
        let align: Vec<String> = (0..self.headers.len())
            .map(|i| if self.is_left(i) { "---" } else { "---:" }.to_owned())
            .collect();
        out.push_str(&line(&align));
        for r in &self.rows {
            out.push_str(&line(r));
        }
        out
    }
}

/// A payload size for people: `64 B`, `4 KiB`, `1 MiB`.
pub(crate) fn size(bytes: usize) -> String {
    if bytes >= 1 << 20 && bytes.is_multiple_of(1 << 20) {
        format!("{} MiB", bytes >> 20)
    } else if bytes >= 1 << 10 && bytes.is_multiple_of(1 << 10) {
        format!("{} KiB", bytes >> 10)
    } else {
        format!("{bytes} B")
    }
}

/// A detection bound for people: `100 ms`, `2 s`.
pub(crate) fn bound(d: Duration) -> String {
    if d.subsec_millis() == 0 && d.as_secs() > 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{} ms", d.as_millis())
    }
}

/// A number with `digits` decimals.
pub(crate) fn num(x: f64, digits: usize) -> String {
    format!("{x:.digits$}")
}

/// An empty latency histogram (nanoseconds, three significant digits,
/// growing as needed).
pub(crate) fn histogram() -> anyhow::Result<Histogram<u64>> {
    Histogram::<u64>::new(3).context("could not create a latency histogram")
}

/// Records a latency in nanoseconds.
pub(crate) fn record(h: &mut Histogram<u64>, d: Duration) -> anyhow::Result<()> {
    let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).max(1);
    h.record(ns)
        .map_err(|e| anyhow::anyhow!("could not record a latency of {d:?}: {e}"))
}

/// The value at quantile `q` of a nanosecond histogram, in microseconds
/// (0 when empty).
pub(crate) fn quantile_us(h: &Histogram<u64>, q: f64) -> f64 {
    if h.is_empty() {
        0.0
    } else {
        h.value_at_quantile(q) as f64 / 1e3
    }
}

/// The nearest-rank quantile `q` of sorted samples, in milliseconds (0 when
/// there are none). With few samples p99 is the maximum.
pub(crate) fn rank_ms(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1].as_secs_f64() * 1e3
}

/// Writes `contents` to `dir/name`.
pub(crate) fn write_file(dir: &Path, name: &str, contents: &str) -> anyhow::Result<()> {
    let path = dir.join(name);
    std::fs::write(&path, contents).with_context(|| format!("could not write {}", path.display()))
}

/// Waits for tasks that each record a latency histogram and merges them;
/// `what` names the tasks in errors.
pub(crate) async fn merge_latencies(
    tasks: Vec<tokio::task::JoinHandle<anyhow::Result<Histogram<u64>>>>,
    what: &str,
) -> anyhow::Result<Histogram<u64>> {
    let mut latency = histogram()?;
    for t in tasks {
        let h = t
            .await
            .with_context(|| format!("a {what} task panicked"))??;
        latency
            .add(&h)
            .map_err(|e| anyhow::anyhow!("could not merge latency histograms: {e}"))?;
    }
    Ok(latency)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_bounds_read_well() {
        assert_eq!(size(64), "64 B");
        assert_eq!(size(4096), "4 KiB");
        assert_eq!(size(1 << 20), "1 MiB");
        assert_eq!(bound(Duration::from_millis(100)), "100 ms");
        assert_eq!(bound(Duration::from_secs(2)), "2 s");
    }

    #[test]
    fn nearest_rank() {
        let ms =
            |v: &[u64]| -> Vec<Duration> { v.iter().map(|&m| Duration::from_millis(m)).collect() };
        let five = ms(&[1, 2, 3, 4, 5]);
        assert_eq!(rank_ms(&five, 0.5), 3.0);
        assert_eq!(rank_ms(&five, 0.99), 5.0);
        assert_eq!(rank_ms(&[], 0.5), 0.0);
        let hundred: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(rank_ms(&hundred, 0.99), 99.0);
    }

    #[test]
    fn tables_align() {
        let mut t = Table::new(&["a", "bee", "c"]).align_left(&[2]);
        t.push(vec!["long name".into(), "1".into(), "x".into()]);
        let text = t.text();
        assert!(text.contains("  a          bee  c\n"), "{text}");
        assert!(text.contains("  long name    1  x\n"), "{text}");
        assert!(t
            .markdown()
            .starts_with("| a | bee | c |\n| --- | ---: | --- |\n"));
    }
}
