//! The drill history: one JSON Lines record per drill per run, appended to
//! `history.jsonl` in the reports folder by `run --out` and `gameday`, and
//! the per-drill trends `agentdrill history` prints (RTO and RPO over time,
//! MTTR, drill success rate) and the HTML report draws.
//!
//! Crash safety: a record is one line written with a single `write` on a
//! file opened for appending, then `fsync`ed. A writer killed mid-append
//! can leave at most one torn line without its newline; the next append
//! first ends that line, and the reader skips any line that does not parse
//! (it counts them). See ARCHITECTURE.md for why not SQLite.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::report::Entry;

/// The history file's name inside a reports folder.
pub const FILE_NAME: &str = "history.jsonl";

/// A history file larger than this is refused (a limit, not an expectation:
/// a record is about 500 bytes, so this is some 500 000 drill runs).
pub const MAX_BYTES: u64 = 256 * 1024 * 1024;

/// A history error.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// The file could not be read or written.
    #[error("{path}: {source}; check that the reports folder exists and is writable")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is beyond [`MAX_BYTES`].
    #[error("{path}: {bytes} bytes, over the {MAX_BYTES}-byte limit; move it aside and start a new history")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        bytes: u64,
    },
}

/// One drill of one run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// When the run happened, Unix seconds (UTC).
    pub time_unix_s: u64,
    /// The same time as `20250131T235959Z`.
    pub time: String,
    /// What wrote it: `run`, `gameday` or `blind`.
    pub source: String,
    /// The drill (scenario name).
    pub drill: String,
    /// The scenario file.
    pub file: Option<String>,
    /// The scenario's content hash.
    pub scenario_hash: Option<String>,
    /// agentdrill's version.
    pub version: String,
    /// The seed.
    pub seed: u64,
    /// The tier claimed.
    pub tier: String,
    /// `pass` or `fail`.
    pub verdict: String,
    /// Whether the drill expected to catch a violation.
    pub expect_fail: bool,
    /// RTO, seconds (None: not recovered).
    pub rto_s: Option<f64>,
    /// RPO, seconds.
    pub rpo_s: f64,
    /// The tier's RTO target, seconds.
    pub target_rto_s: f64,
    /// The tier's RPO target, seconds.
    pub target_rpo_s: f64,
    /// Duplicate side effects.
    pub duplicates: u64,
    /// Lost side effects.
    pub lost_effects: u64,
    /// Stuck tasks.
    pub stuck_tasks: u64,
}

impl Record {
    /// The record of one drill of a run at `time_unix_s`.
    pub fn of(e: &Entry, time_unix_s: u64, time: &str, source: &str) -> Record {
        let d = &e.result;
        Record {
            time_unix_s,
            time: time.to_owned(),
            source: source.to_owned(),
            drill: d.scenario.clone(),
            file: e.file.as_ref().map(|f| f.display().to_string()),
            scenario_hash: e.hash.clone(),
            version: crate::report::VERSION.to_owned(),
            seed: d.seed,
            tier: d.tier.clone(),
            verdict: d.verdict.to_owned(),
            expect_fail: d.expect == crate::drill::scenario::Expect::Fail,
            rto_s: d.rto_s,
            rpo_s: d.rpo_s,
            target_rto_s: d.target_rto_s,
            target_rpo_s: d.target_rpo_s,
            duplicates: d.duplicates,
            lost_effects: d.lost_effects,
            stuck_tasks: d.stuck_tasks,
        }
    }
}

/// The history file of a reports folder (or the file itself when `path`
/// names a file).
pub fn file_in(path: &Path) -> PathBuf {
    if path.is_dir() || path.extension().is_none() { path.join(FILE_NAME) } else { path.to_owned() }
}

/// Appends records, one line each, each with a single write, and flushes
/// the file to disk.
pub fn append(path: &Path, records: &[Record]) -> Result<(), HistoryError> {
    let io = |source| HistoryError::Io { path: path.to_owned(), source };
    let mut f = std::fs::OpenOptions::new().create(true).append(true).read(true).open(path).map_err(io)?;
    if torn_tail(&mut f).map_err(io)? {
        // A writer died mid-line: end that line, so the reader skips it
        // alone and this record starts on its own line.
        f.write_all(b"\n").map_err(io)?;
    }
    for r in records {
        let mut line = serde_json::to_string(r).expect("a record serialises");
        assert!(!line.contains('\n'), "a record is one line");
        line.push('\n');
        f.write_all(line.as_bytes()).map_err(io)?;
    }
    f.sync_all().map_err(io)
}

/// Whether the file is non-empty and does not end with a newline.
fn torn_tail(f: &mut std::fs::File) -> std::io::Result<bool> {
    use std::io::{Read as _, Seek as _, SeekFrom};
    let len = f.metadata()?.len();
    if len == 0 {
        return Ok(false);
    }
    f.seek(SeekFrom::Start(len - 1))?;
    let mut last = [0u8; 1];
    f.read_exact(&mut last)?;
    Ok(last[0] != b'\n')
}

/// What a history file held.
#[derive(Debug, Default)]
pub struct History {
    /// The records, in file order.
    pub records: Vec<Record>,
    /// Lines that did not parse (a torn write, or a hand edit), skipped.
    pub skipped_lines: usize,
}

/// Reads a history file; a missing file is an empty history.
pub fn read(path: &Path) -> Result<History, HistoryError> {
    let io = |source| HistoryError::Io { path: path.to_owned(), source };
    let bytes = match std::fs::metadata(path) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(History::default()),
        Err(e) => return Err(io(e)),
    };
    if bytes > MAX_BYTES {
        return Err(HistoryError::TooLarge { path: path.to_owned(), bytes });
    }
    let raw = std::fs::read(path).map_err(io)?;
    let text = String::from_utf8_lossy(&raw);
    let mut h = History::default();
    for line in text.split('\n').filter(|l| !l.trim().is_empty()) {
        match serde_json::from_str::<Record>(line) {
            Ok(r) => h.records.push(r),
            Err(_) => h.skipped_lines += 1,
        }
    }
    Ok(h)
}

/// One drill's trend over its recorded runs.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Trend {
    /// The drill.
    pub drill: String,
    /// Its runs, oldest first.
    pub runs: Vec<Record>,
    /// Runs that passed.
    pub passed: usize,
    /// Passed runs over all runs, percent.
    pub success_rate_pct: f64,
    /// Mean RTO over the runs that recovered, seconds (None: none did).
    pub mttr_s: Option<f64>,
    /// Runs that never recovered.
    pub never_recovered: usize,
}

impl Trend {
    /// The latest RTO against the one before it: negative is better.
    pub fn rto_change_s(&self) -> Option<f64> {
        let [.., a, b] = self.runs.as_slice() else { return None };
        Some(b.rto_s? - a.rto_s?)
    }
}

/// The trend of every drill (or only `drill`), by drill name.
pub fn trends(records: &[Record], drill: Option<&str>) -> Vec<Trend> {
    let mut by: BTreeMap<&str, Vec<&Record>> = BTreeMap::new();
    for r in records.iter().filter(|r| drill.is_none_or(|d| d == r.drill)) {
        by.entry(r.drill.as_str()).or_default().push(r);
    }
    by.into_iter()
        .map(|(name, mut runs)| {
            runs.sort_by_key(|r| r.time_unix_s);
            let passed = runs.iter().filter(|r| r.verdict == "pass").count();
            let rtos: Vec<f64> = runs.iter().filter_map(|r| r.rto_s).collect();
            Trend {
                drill: name.to_owned(),
                passed,
                success_rate_pct: passed as f64 * 100.0 / runs.len() as f64,
                mttr_s: (!rtos.is_empty()).then(|| rtos.iter().sum::<f64>() / rtos.len() as f64),
                never_recovered: runs.len() - rtos.len(),
                runs: runs.into_iter().cloned().collect(),
            }
        })
        .collect()
}

/// At most this many values are printed in a series (the latest ones).
pub const MAX_SERIES: usize = 8;

fn series(values: impl Iterator<Item = String>) -> String {
    let v: Vec<String> = values.collect();
    let skip = v.len().saturating_sub(MAX_SERIES);
    let mut out = if skip > 0 { format!("… ({skip} earlier) ") } else { String::new() };
    out.push_str(&v[skip..].join(" → "));
    out
}

#[derive(tabled::Tabled)]
struct TrendRow {
    drill: String,
    runs: usize,
    #[tabled(rename = "success")]
    success: String,
    #[tabled(rename = "MTTR s")]
    mttr: String,
    #[tabled(rename = "RTO s over time (target)")]
    rto: String,
    #[tabled(rename = "RPO s over time (target)")]
    rpo: String,
    #[tabled(rename = "last vs previous")]
    change: String,
}

fn rto_words(r: Option<f64>) -> String {
    r.map_or_else(|| "never".into(), |v| format!("{v:.1}"))
}

/// The trends as a table, with the overall drill success rate and MTTR.
pub fn render(trends: &[Trend]) -> String {
    use tabled::settings::Style;
    let rows: Vec<TrendRow> = trends
        .iter()
        .map(|t| {
            let last = t.runs.last().expect("a trend has a run");
            TrendRow {
                drill: t.drill.clone(),
                runs: t.runs.len(),
                success: format!("{}/{} ({:.0}%)", t.passed, t.runs.len(), t.success_rate_pct),
                mttr: t.mttr_s.map_or_else(|| "never".into(), |m| format!("{m:.1}")),
                rto: format!("{} (<{:.0})", series(t.runs.iter().map(|r| rto_words(r.rto_s))), last.target_rto_s),
                rpo: format!(
                    "{} (<{:.0})",
                    series(t.runs.iter().map(|r| format!("{:.1}", r.rpo_s))),
                    last.target_rpo_s
                ),
                change: match t.rto_change_s() {
                    Some(c) if c < 0.0 => format!("RTO {c:+.1} s, better"),
                    Some(c) if c > 0.0 => format!("RTO {c:+.1} s, worse"),
                    Some(_) => "RTO unchanged".into(),
                    None => "—".into(),
                },
            }
        })
        .collect();
    let mut out = tabled::Table::new(rows).with(Style::rounded()).to_string();
    let runs: usize = trends.iter().map(|t| t.runs.len()).sum();
    let passed: usize = trends.iter().map(|t| t.passed).sum();
    let rtos: Vec<f64> = trends.iter().flat_map(|t| t.runs.iter().filter_map(|r| r.rto_s)).collect();
    out.push_str(&format!(
        "\n{} drills, {runs} drill runs; drill success rate {:.0}% ({passed}/{runs}); MTTR {}\n",
        trends.len(),
        if runs == 0 { 0.0 } else { passed as f64 * 100.0 / runs as f64 },
        if rtos.is_empty() { "never".into() } else { format!("{:.1} s", rtos.iter().sum::<f64>() / rtos.len() as f64) }
    ));
    out
}

/// One drill's runs, one line each.
pub fn render_runs(t: &Trend) -> String {
    use tabled::settings::Style;
    #[derive(tabled::Tabled)]
    struct RunRow {
        time: String,
        source: String,
        verdict: String,
        #[tabled(rename = "RTO s")]
        rto: String,
        #[tabled(rename = "RPO s")]
        rpo: String,
        duplicates: u64,
        lost: u64,
        stuck: u64,
        seed: u64,
        hash: String,
        version: String,
    }
    let rows: Vec<RunRow> = t
        .runs
        .iter()
        .map(|r| RunRow {
            time: r.time.clone(),
            source: r.source.clone(),
            verdict: r.verdict.clone(),
            rto: rto_words(r.rto_s),
            rpo: format!("{:.1}", r.rpo_s),
            duplicates: r.duplicates,
            lost: r.lost_effects,
            stuck: r.stuck_tasks,
            seed: r.seed,
            hash: r.scenario_hash.clone().unwrap_or_default(),
            version: r.version.clone(),
        })
        .collect();
    format!("{}\n{}", t.drill, tabled::Table::new(rows).with(Style::rounded()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(drill: &str, t: u64, rto: Option<f64>, verdict: &str) -> Record {
        Record {
            time_unix_s: t,
            time: format!("t{t}"),
            source: "run".into(),
            drill: drill.into(),
            file: None,
            scenario_hash: None,
            version: "0".into(),
            seed: 1,
            tier: "internal-ops".into(),
            verdict: verdict.into(),
            expect_fail: false,
            rto_s: rto,
            rpo_s: 0.0,
            target_rto_s: 900.0,
            target_rpo_s: 300.0,
            duplicates: 0,
            lost_effects: 0,
            stuck_tasks: 0,
        }
    }

    #[test]
    fn trends_give_mttr_and_success_rate() {
        let rs = [rec("a", 3, Some(30.0), "pass"), rec("a", 1, Some(10.0), "pass"), rec("a", 2, None, "fail")];
        let t = &trends(&rs, None)[0];
        assert_eq!(t.runs.iter().map(|r| r.time_unix_s).collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(t.passed, 2);
        assert_eq!(t.mttr_s, Some(20.0));
        assert_eq!(t.never_recovered, 1);
        assert!((t.success_rate_pct - 66.666).abs() < 0.01);
        assert_eq!(t.rto_change_s(), None, "the run before the last never recovered");
        assert!(render(std::slice::from_ref(t)).contains("10.0 → never → 30.0"));
    }

    #[test]
    fn a_torn_last_line_is_skipped_and_ended_by_the_next_append() {
        let dir = std::env::temp_dir().join(format!("agentdrill-history-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(FILE_NAME);
        let _ = std::fs::remove_file(&path);
        append(&path, &[rec("a", 1, Some(1.0), "pass")]).unwrap();
        let whole = serde_json::to_string(&rec("a", 2, Some(2.0), "pass")).unwrap();
        let mut f = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&whole.as_bytes()[..whole.len() / 2]).unwrap();
        drop(f);
        let h = read(&path).unwrap();
        assert_eq!((h.records.len(), h.skipped_lines), (1, 1));
        append(&path, &[rec("a", 3, Some(3.0), "pass")]).unwrap();
        let h = read(&path).unwrap();
        assert_eq!(h.records.iter().map(|r| r.time_unix_s).collect::<Vec<_>>(), [1, 3]);
        assert_eq!(h.skipped_lines, 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
