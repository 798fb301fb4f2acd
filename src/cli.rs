//! The commands a user meets: `run`, `list`, `validate`, `explain`. They
//! load scenarios, call the library and print; the exit code is 0 when every
//! drill passed, 1 when one failed, 2 when the input (or the report folder)
//! cannot be used. The wall clock is read here (and in `gameday_cli`) only: for the
//! report folder's name and the JUnit times.

use std::io::{IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Instant, SystemTime};

use agentdrill::drill::loader::{self, Loaded};
use agentdrill::drill::{self, scenario};
use agentdrill::live::scenario::{self as live_scenario, LiveLoaded};
use agentdrill::report::{self, Entry};
use tabled::{Table, Tabled, settings::Style};

use crate::Format;

/// Simulated and live scenarios (`mode = "live"`) under `paths`, each kind
/// in file order; every error of every bad file is printed (2).
#[allow(clippy::type_complexity)]
fn load_any(
    paths: &[PathBuf],
    stop_at_first_bad: bool,
    ok: &mut dyn FnMut(&Path, &Loaded),
    ok_live: &mut dyn FnMut(&Path, &LiveLoaded),
) -> Result<(Vec<(PathBuf, Loaded)>, Vec<(PathBuf, LiveLoaded)>), ExitCode> {
    let files = crate::collect(paths).map_err(|e| {
        eprintln!("error: {e:#}");
        ExitCode::from(2)
    })?;
    let mut out = Vec::new();
    let mut live = Vec::new();
    let mut bad = false;
    for f in files {
        tracing::debug!(file = %f.display(), "loading");
        // Read once (with the scenario guards), then parsed as its kind.
        let parsed = loader::read_scenario_text(&f).and_then(|text| {
            if live_scenario::is_live(&text) {
                live_scenario::parse(&f, &text).map(|l| {
                    ok_live(&f, &l);
                    live.push((f.clone(), l));
                })
            } else {
                loader::parse(&f, &text).map(|l| {
                    ok(&f, &l);
                    out.push((f.clone(), l));
                })
            }
        });
        if let Err(e) = parsed {
            for e in e.all() {
                eprintln!("error: {e}");
            }
            bad = true;
            if stop_at_first_bad {
                break;
            }
        }
    }
    if bad { Err(ExitCode::from(2)) } else { Ok((out, live)) }
}

/// Quotes on stderr the log tail of every process of a live drill that
/// exited without the harness asking (the same records are in the JSON).
fn quote_unexpected_exits(result: &drill::DrillResult) {
    let Some(live) = &result.live else { return };
    for x in live.process_exits.iter().filter(|x| !x.by_harness) {
        let how = x.code.map_or_else(|| format!("signal {}", x.signal.unwrap_or(0)), |c| format!("exit code {c}"));
        eprintln!(
            "warning: {}: process `{}` replica {} (pid {}) exited unexpectedly ({how}) at {:.1} s; its log ends:\n{}",
            result.scenario,
            x.process,
            x.replica,
            x.pid,
            x.at_s,
            x.log_tail.as_deref().unwrap_or("")
        );
    }
}

/// Writes to stdout; a closed pipe (`agentdrill run … | head`) is not an error.
pub(crate) fn emit(s: &str) {
    let mut o = std::io::stdout().lock();
    let _ = o.write_all(s.as_bytes()).and_then(|()| o.flush());
}

/// Whether to colour stdout: a terminal, and `NO_COLOR` unset or empty
/// (<https://no-color.org>).
fn colour() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Colours the verdict words of a rendered table.
fn paint(s: &str) -> String {
    const GREEN: &str = "\x1b[32m";
    const RED: &str = "\x1b[31m";
    const OFF: &str = "\x1b[0m";
    s.replace("FAIL (not caught)", "\u{1}")
        .replace("PASS (caught)", "\u{2}")
        .replace("PASS", &format!("{GREEN}PASS{OFF}"))
        .replace("FAIL", &format!("{RED}FAIL{OFF}"))
        .replace('\u{1}', &format!("{RED}FAIL (not caught){OFF}"))
        .replace('\u{2}', &format!("{GREEN}PASS (caught){OFF}"))
}

pub(crate) fn print_table(entries: &[Entry]) {
    let results: Vec<drill::DrillResult> = entries.iter().map(|e| e.result.clone()).collect();
    let t = report::table(&results);
    emit(&if colour() { paint(&t) } else { t });
}

/// `agentdrill run` with `jobs` simulated drills at once (live drills run one
/// after another, after them: they own real processes and ports).
/// A simulated drill that needs more than `budget` is stopped and named on
/// stderr; the others are reported, and the exit code is 2.
pub fn run(
    paths: &[PathBuf],
    seed: Option<u64>,
    format: Format,
    out: Option<PathBuf>,
    jobs: usize,
    budget: &drill::Budget,
) -> ExitCode {
    let (loaded, live) = match load_any(paths, false, &mut |_, _| {}, &mut |_, _| {}) {
        Ok(l) => l,
        Err(code) => return code,
    };
    let bar = (loaded.len() > 1 && std::io::stderr().is_terminal()).then(|| {
        let bar = indicatif::ProgressBar::new(loaded.len() as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} [{bar:30}] {pos}/{len} drills  {wide_msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar
    });
    let started = Instant::now();
    // One drill per thread; the entries come back in file order.
    let outcomes = agentdrill::par::map_in_order(loaded.len(), jobs, |i| {
        let (file, l) = &loaded[i];
        let sc = &l.scenario;
        if let Some(b) = &bar {
            b.set_message(sc.name.clone());
        }
        let seed = seed.unwrap_or(sc.seed);
        tracing::info!(scenario = %sc.name, seed, file = %file.display(), "running");
        let t0 = Instant::now();
        let result = drill::try_run(sc, seed, budget);
        let wall = t0.elapsed();
        if let Some(b) = &bar {
            b.inc(1);
        }
        let result = result.map_err(|e| format!("{}: {e}", file.display()))?;
        tracing::info!(scenario = %sc.name, verdict = result.verdict, wall_ms = wall.as_secs_f64() * 1e3, "done");
        Ok(Entry { result, file: Some(file.clone()), hash: Some(l.hash.clone()), wall: Some(wall) })
    });
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let mut entries = Vec::with_capacity(outcomes.len());
    let mut over_budget: Vec<String> = Vec::new();
    for o in outcomes {
        match o {
            Ok(e) => entries.push(e),
            Err(e) => over_budget.push(e),
        }
    }
    for (file, l) in live {
        let sc = &l.scenario;
        let seed = seed.unwrap_or(sc.seed);
        tracing::info!(scenario = %sc.name, seed, file = %file.display(), "running live");
        let t0 = Instant::now();
        let result = match agentdrill::live::drill::run(sc, seed) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("error: {}: {e}", file.display());
                return ExitCode::from(2);
            }
        };
        quote_unexpected_exits(&result);
        let wall = t0.elapsed();
        tracing::info!(scenario = %sc.name, verdict = result.verdict, wall_ms = wall.as_secs_f64() * 1e3, "done");
        entries.push(Entry { result, file: Some(file), hash: Some(l.hash), wall: Some(wall) });
    }
    tracing::info!(drills = entries.len(), wall_ms = started.elapsed().as_secs_f64() * 1e3, "catalogue done");
    if entries.is_empty() {
        // Every drill was stopped by its budget: nothing to report.
        for e in &over_budget {
            eprintln!("error: {e}");
        }
        return ExitCode::from(2);
    }
    match format {
        Format::Table => print_table(&entries),
        Format::Json => emit(&(report::json_entries(&entries) + "\n")),
        Format::Junit => emit(&report::junit::junit(&entries)),
        Format::Markdown => emit(&report::markdown::markdown(&entries)),
        Format::Html => emit(&report::html::html(&entries, &report::html::Extras::default())),
    }
    if let Some(dir) = out {
        match write_with_history(&dir, &entries, "run", report::html::Extras::default()) {
            Ok(at) => eprintln!(
                "reports written to {}/ (report.json, junit.xml, report.md, report.html); history appended to {}",
                at.display(),
                dir.join(agentdrill::history::FILE_NAME).display()
            ),
            Err(code) => return code,
        }
    }
    for e in &over_budget {
        eprintln!("error: {e}");
    }
    if !over_budget.is_empty() {
        ExitCode::from(2)
    } else if entries.iter().all(|e| e.result.verdict == "pass") {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// Writes the reports into a new `dir/<UTC timestamp>/` (the HTML one
/// drawing each drill's trend with this run in it), then appends one
/// history record per drill to `dir/history.jsonl`. Errors are printed;
/// the exit code is 2 then.
pub(crate) fn write_with_history(
    dir: &Path,
    entries: &[Entry],
    source: &str,
    mut extras: report::html::Extras,
) -> Result<PathBuf, ExitCode> {
    use agentdrill::history;
    let now = SystemTime::now();
    let secs = now.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let stamp = utc_stamp(now);
    let records: Vec<history::Record> = entries.iter().map(|e| history::Record::of(e, secs, &stamp, source)).collect();
    let path = dir.join(history::FILE_NAME);
    // An unreadable history only costs the report its trends.
    match history::read(&path) {
        Ok(h) => {
            if h.skipped_lines > 0 {
                eprintln!(
                    "warning: {}: {} unreadable line(s) skipped (a torn write?)",
                    path.display(),
                    h.skipped_lines
                );
            }
            extras.history = h.records;
        }
        Err(e) if dir.is_dir() => eprintln!("warning: {e}"),
        Err(_) => {}
    }
    extras.history.extend(records.iter().cloned());
    let at = write_reports(dir, entries, &extras).map_err(|e| {
        eprintln!("error: {}: cannot write the reports: {e}", dir.display());
        ExitCode::from(2)
    })?;
    history::append(&path, &records).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(2)
    })?;
    Ok(at)
}

/// The reports `--out` writes, by file name.
const REPORT_FILES: [&str; 4] = ["report.json", "junit.xml", "report.md", "report.html"];

/// The prefix of the hidden folder a run writes its reports into before
/// it renames the folder into place.
const PARTIAL_PREFIX: &str = ".partial-";

/// Writes the four reports into a new `dir/<UTC timestamp>/`, all or none:
/// they are written into a hidden `dir/.partial-<stamp>-<pid>/`, flushed,
/// and the folder is renamed into place in one step. A run killed before the
/// rename leaves only its hidden folder, which the next `--out` run into
/// `dir` removes (its process is gone).
pub(crate) fn write_reports(dir: &Path, entries: &[Entry], extras: &report::html::Extras) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    sweep_partials(dir);
    let stamp = utc_stamp(SystemTime::now());
    let partial = dir.join(format!("{PARTIAL_PREFIX}{stamp}-{}", std::process::id()));
    std::fs::create_dir(&partial)?;
    let result = fill_and_publish(dir, &partial, &stamp, entries, extras);
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&partial);
    }
    let at = result?;
    tracing::info!(dir = %at.display(), "reports written");
    Ok(at)
}

/// Writes the reports into `partial`, then renames it to `dir/<stamp>` (or
/// `<stamp>-2`, … when taken).
fn fill_and_publish(
    dir: &Path,
    partial: &Path,
    stamp: &str,
    entries: &[Entry],
    extras: &report::html::Extras,
) -> std::io::Result<PathBuf> {
    let contents = [
        report::json_entries(entries),
        report::junit::junit(entries),
        report::markdown::markdown(entries),
        report::html::html(entries, extras),
    ];
    for (n, (name, text)) in REPORT_FILES.iter().zip(&contents).enumerate() {
        let mut f = std::fs::File::create(partial.join(name))?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        crash_point(n + 1);
    }
    std::fs::File::open(partial)?.sync_all()?;
    for n in 1..1000 {
        let at = if n == 1 { dir.join(stamp) } else { dir.join(format!("{stamp}-{n}")) };
        // `rename` would replace an empty folder of that name: only a free
        // name is taken.
        if at.symlink_metadata().is_ok() {
            continue;
        }
        std::fs::rename(partial, &at)?;
        std::fs::File::open(dir)?.sync_all()?;
        return Ok(at);
    }
    Err(std::io::Error::new(std::io::ErrorKind::AlreadyExists, format!("every name {stamp}-N is taken")))
}

/// Writes a temporary file in the same folder, flushes it to disk, then
/// renames it over `name`: a reader sees the whole file or none.
pub(crate) fn write_atomic(dir: &Path, name: &str, contents: &str) -> std::io::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(contents.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, dir.join(name))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Fault injection for the all-or-none test: with
/// `AGENTDRILL_CRASH_AFTER_REPORTS=N` set, the process aborts (as a kill
/// would stop it) once `N` report files are written, before the folder is
/// renamed into place.
fn crash_point(written: usize) {
    let wanted = std::env::var("AGENTDRILL_CRASH_AFTER_REPORTS").ok().and_then(|v| v.parse::<usize>().ok());
    if wanted == Some(written) {
        eprintln!("AGENTDRILL_CRASH_AFTER_REPORTS={written}: aborting after {written} report files");
        std::process::abort();
    }
}

/// Removes the hidden folders of earlier runs into `dir` that were killed
/// before they renamed theirs into place (their process no longer runs).
fn sweep_partials(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(PARTIAL_PREFIX) else { continue };
        let pid = rest.rsplit('-').next().and_then(|p| p.parse::<u32>().ok());
        if pid.is_some_and(|p| p != std::process::id() && !process_alive(p)) {
            tracing::info!(folder = %e.path().display(), "removing the reports of a run that was stopped");
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// Whether process `pid` still runs (Linux: `/proc/<pid>` exists; elsewhere
/// it is assumed to, so nothing is removed).
fn process_alive(pid: u32) -> bool {
    if Path::new("/proc/self").exists() { Path::new(&format!("/proc/{pid}")).exists() } else { true }
}

/// `20250131T235959Z` for a time (UTC).
pub fn utc_stamp(t: SystemTime) -> String {
    let secs = t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z", rem / 3_600, rem % 3_600 / 60, rem % 60)
}

#[derive(Tabled)]
struct ListRow {
    drill: String,
    tier: String,
    expect: &'static str,
    faults: String,
    purpose: String,
}

/// `agentdrill list`.
pub fn list(paths: &[PathBuf]) -> ExitCode {
    let (loaded, live) = match load_any(paths, false, &mut |_, _| {}, &mut |_, _| {}) {
        Ok(l) => l,
        Err(code) => return code,
    };
    let mut rows: Vec<ListRow> = loaded
        .iter()
        .map(|(_, l)| {
            let sc = &l.scenario;
            let mut kinds: Vec<&str> = sc.faults.iter().map(scenario::FaultSpec::kind).collect();
            kinds.dedup();
            ListRow {
                drill: sc.name.clone(),
                tier: sc.tier.name().to_owned(),
                expect: if sc.expect == scenario::Expect::Fail { "fail" } else { "pass" },
                faults: if kinds.is_empty() { "none".into() } else { kinds.join(", ") },
                purpose: sc.purpose.clone(),
            }
        })
        .collect();
    rows.extend(live.iter().map(|(_, l)| {
        let sc = &l.scenario;
        let mut kinds: Vec<&str> = sc.faults.iter().map(live_scenario::LiveFault::kind).collect();
        kinds.dedup();
        ListRow {
            drill: format!("{} (live)", sc.name),
            tier: sc.tier.name().to_owned(),
            expect: if sc.expect == scenario::Expect::Fail { "fail" } else { "pass" },
            faults: if kinds.is_empty() { "none".into() } else { kinds.join(", ") },
            purpose: sc.purpose.clone(),
        }
    }));
    let n = rows.len();
    emit(&format!("{}\n{n} drills\n", Table::new(rows).with(Style::rounded())));
    ExitCode::SUCCESS
}

/// `agentdrill validate`.
pub fn validate(paths: &[PathBuf]) -> ExitCode {
    let mut ok = |f: &Path, l: &Loaded| {
        let sc = &l.scenario;
        let n = sc.faults.len();
        emit(&format!(
            "ok  {}  ({}, tier {}, {n} fault{}{})\n",
            f.display(),
            sc.name,
            sc.tier.name(),
            if n == 1 { "" } else { "s" },
            if l.files.len() > 1 { format!(", {} included", l.files.len() - 1) } else { String::new() }
        ));
    };
    let mut ok_live = |f: &Path, l: &LiveLoaded| {
        let sc = &l.scenario;
        let n = sc.faults.len();
        let procs: u32 = sc.processes.iter().map(|p| u32::from(p.replicas)).sum();
        emit(&format!(
            "ok  {}  ({}, live, tier {}, {procs} process{}, {n} fault{})\n",
            f.display(),
            sc.name,
            sc.tier.name(),
            if procs == 1 { "" } else { "es" },
            if n == 1 { "" } else { "s" },
        ));
    };
    match load_any(paths, true, &mut ok, &mut ok_live) {
        Ok((l, live)) => {
            let n = l.len() + live.len();
            emit(&format!("{n} scenario{} valid\n", if n == 1 { "" } else { "s" }));
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

/// `agentdrill explain`.
pub fn explain(file: &Path, seed: Option<u64>, budget: &drill::Budget) -> ExitCode {
    if live_scenario::is_live_file(file) {
        return match live_scenario::load(file) {
            Ok(l) => {
                emit(&live_scenario::explain(&l.scenario));
                ExitCode::SUCCESS
            }
            Err(e) => {
                for e in e.all() {
                    eprintln!("error: {e}");
                }
                ExitCode::from(2)
            }
        };
    }
    let l = match loader::load(file) {
        Ok(l) => l,
        Err(e) => {
            for e in e.all() {
                eprintln!("error: {e}");
            }
            return ExitCode::from(2);
        }
    };
    let sc = &l.scenario;
    let t0 = Instant::now();
    let result = match drill::try_run(sc, seed.unwrap_or(sc.seed), budget) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {}: {e}", file.display());
            return ExitCode::from(2);
        }
    };
    let entry = Entry { result, file: Some(file.to_owned()), hash: Some(l.hash.clone()), wall: Some(t0.elapsed()) };
    let text = report::explain::narrative(&entry, sc);
    emit(&if colour() { paint(&text) } else { text });
    emit("\n");
    print_table(std::slice::from_ref(&entry));
    if entry.result.verdict == "pass" { ExitCode::SUCCESS } else { ExitCode::from(1) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_utc_calendar_time() {
        let at = |s: u64| utc_stamp(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(s));
        assert_eq!(at(0), "19700101T000000Z");
        assert_eq!(at(951_782_400), "20000229T000000Z");
        assert_eq!(at(1_735_689_599), "20241231T235959Z");
    }
}
