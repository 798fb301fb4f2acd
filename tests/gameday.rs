//! Game days end to end: the sample programme run by cadence (report and
//! history), programme errors placed in their file, a blind exercise played
//! through, the history appended by `run --out` and printed by `history`,
//! and a history writer killed mid-append leaving a readable history.

use std::path::{Path, PathBuf};

use agentdrill::history;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn agentdrill(args: &[&str]) -> std::process::Output {
    assert_cmd::Command::cargo_bin("agentdrill")
        .expect("the binary is built")
        .args(args)
        .current_dir(root())
        .env("NO_COLOR", "1")
        .output()
        .expect("the binary runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A fresh temporary folder for one test.
fn temp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("agentdrill-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp folder");
    d
}

/// The report folders `--out` made (not the history or state files).
fn report_dirs(out: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(out)
        .expect("reports folder")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.is_dir())
        .collect();
    v.sort();
    v
}

#[test]
fn the_sample_programme_runs_one_cadence_writes_the_report_and_appends_the_history() {
    let out = temp("gameday");
    let o = out.to_str().expect("UTF-8 path");
    let run = agentdrill(&["gameday", "examples/gameday.toml", "--cadence", "quarterly", "--out", o]);
    assert_eq!(run.status.code(), Some(0), "{}", text(&run.stderr));
    let table = text(&run.stdout);
    for d in ["server-errors", "warm-standby-loss", "kill-in-flight"] {
        assert!(table.contains(d), "the quarterly drill {d} ran:\n{table}");
    }
    assert!(!table.contains("bad-prompt-deploy"), "a monthly drill is not in the quarterly set");
    let dirs = report_dirs(&out);
    assert_eq!(dirs.len(), 1);
    let html = std::fs::read_to_string(dirs[0].join("report.html")).expect("report.html written");
    assert_eq!(html.matches("<article class=\"card").count(), 3);
    assert!(html.contains("Game day: support agent, payments and memory"));
    assert!(html.contains("owner: agent runtime team"), "the programme's owners are on the cards");
    assert!(html.contains("Confirms: the router fails over to the fallback provider within 30 s"));
    for f in ["report.json", "junit.xml", "report.md"] {
        assert!(dirs[0].join(f).is_file(), "{f} written beside report.html");
    }
    let h = history::read(&out.join(history::FILE_NAME)).expect("history");
    assert_eq!(h.records.len(), 3);
    assert!(h.records.iter().all(|r| r.source == "gameday" && r.version == env!("CARGO_PKG_VERSION")));
    let provider = h.records.iter().find(|r| r.drill == "server-errors").expect("its record");
    assert!(provider.rto_s.is_some_and(|r| r < 30.0), "the router failed over within 30 s: {provider:?}");
    assert!(provider.scenario_hash.as_deref().is_some_and(|s| s.starts_with("fnv1a64:")));
    std::fs::remove_dir_all(&out).expect("cleaned");
}

#[test]
fn programme_errors_name_the_file_the_line_the_field_and_the_fix() {
    let dir = temp("programme-errors");
    let scenarios = root().join("scenarios");
    let bad = dir.join("gameday.toml");
    std::fs::write(
        &bad,
        format!(
            "name = \"x\"\n\n[[drill]]\nscenario = \"{s}/worker/kill-in-flight.toml\"\ncadence = \"quarterly\"\nowner = \"\"\ntier = \"customer-facing\"\n\n[[drill]]\nscenario = \"{s}/worker/no-such-drill.toml\"\ncadence = \"monthly\"\nowner = \"ops\"\ntier = \"batch\"\n",
            s = scenarios.display()
        ),
    )
    .expect("written");
    let run = agentdrill(&["gameday", bad.to_str().expect("UTF-8")]);
    assert_eq!(run.status.code(), Some(2));
    let err = text(&run.stderr);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 3, "every error listed:\n{err}");
    let at = |line: usize| format!("{}:{line}:", bad.display());
    assert!(lines[0].contains(&at(6)) && lines[0].contains("drill[0].owner: empty: name the person"), "{err}");
    assert!(lines[1].contains(&at(7)) && lines[1].contains("drill[0].tier: claims \"customer-facing\" but"), "{err}");
    assert!(lines[1].contains("write tier = \"internal-ops\""), "the fix: {err}");
    assert!(lines[2].contains(&at(10)) && lines[2].contains("drill[1].scenario:"), "{err}");
    assert!(lines[2].contains("no-such-drill.toml"), "{err}");

    std::fs::write(&bad, "name = \"x\"\n[[drill]]\nscenario = \"a.toml\"\ncadence = \"weekly\"\n").expect("written");
    let run = agentdrill(&["gameday", bad.to_str().expect("UTF-8")]);
    assert_eq!(run.status.code(), Some(2));
    let err = text(&run.stderr);
    assert!(
        err.contains(&format!("{}:4:", bad.display())) && err.contains("weekly"),
        "a bad cadence is placed:\n{err}"
    );
    assert!(
        err.contains("monthly") && err.contains("quarterly") && err.contains("annual"),
        "the choices are named:\n{err}"
    );
    std::fs::remove_dir_all(&dir).expect("cleaned");
}

#[test]
fn a_programme_that_is_a_device_or_too_large_is_refused_before_reading() {
    let run = agentdrill(&["gameday", "/dev/zero"]);
    assert_eq!(run.status.code(), Some(2));
    let err = text(&run.stderr);
    assert!(err.contains("/dev/zero: cannot read: it is a device, not a regular file"), "{err}");

    let dir = temp("programme-too-large");
    let big = dir.join("gameday.toml");
    std::fs::write(&big, "#".repeat(2 << 20)).expect("written");
    let run = agentdrill(&["gameday", big.to_str().expect("UTF-8")]);
    assert_eq!(run.status.code(), Some(2));
    let err = text(&run.stderr);
    assert!(err.contains("above the limit of 1048576 bytes"), "{err}");
    std::fs::remove_dir_all(&dir).expect("cleaned");
}

#[test]
fn a_blind_exercise_hides_the_fault_times_the_responders_and_reveals_it_at_the_end() {
    let out = temp("blind");
    let o = out.to_str().expect("UTF-8 path");
    let start = agentdrill(&["gameday", "examples/gameday.toml", "--blind", "--out", o]);
    assert_eq!(start.status.code(), Some(0), "{}", text(&start.stderr));
    let shown = text(&start.stdout);
    assert!(shown.contains("P1 alert"), "{shown}");
    for name in [
        "bad-prompt-deploy",
        "vector-corruption",
        "server-errors",
        "warm-standby-loss",
        "kill-in-flight",
        "cold-standby",
    ] {
        assert!(!shown.contains(name), "the drill stays hidden: {shown}");
    }
    assert!(out.join("blind.json").is_file());
    let again = agentdrill(&["gameday", "examples/gameday.toml", "--blind", "--out", o]);
    assert_eq!(again.status.code(), Some(2), "one exercise at a time");
    assert!(text(&again.stderr).contains("in progress"));

    let ack = agentdrill(&["gameday", "ack", "--out", o]);
    assert_eq!(ack.status.code(), Some(0), "{}", text(&ack.stderr));
    assert!(text(&ack.stdout).starts_with("acknowledged after "));
    assert_eq!(agentdrill(&["gameday", "note", "breaker", "opened", "--out", o]).status.code(), Some(0));
    assert_eq!(agentdrill(&["gameday", "note", "--update", "degraded", "--out", o]).status.code(), Some(0));
    let end = agentdrill(&["gameday", "resolved", "--out", o]);
    assert!(matches!(end.status.code(), Some(0 | 1)), "{}", text(&end.stderr));
    let revealed = text(&end.stdout);
    assert!(revealed.contains("The fault was: "), "{revealed}");
    assert!(!out.join("blind.json").exists(), "the state is moved aside");

    let dirs = report_dirs(&out);
    assert_eq!(dirs.len(), 1);
    let html = std::fs::read_to_string(dirs[0].join("report.html")).expect("report.html");
    assert!(html.contains("The fault, revealed"));
    assert!(html.contains("breaker opened") && html.contains("stakeholder update"), "the responders' notes are in");
    assert!(html.contains("responders acknowledged after"), "the playbook's ack step is ticked from the responders");
    let h = history::read(&out.join(history::FILE_NAME)).expect("history");
    assert_eq!(h.records.len(), 1);
    assert_eq!(h.records[0].source, "blind");
    assert!(revealed.contains(&h.records[0].drill), "the revealed drill is the one recorded");

    let late = agentdrill(&["gameday", "ack", "--out", o]);
    assert_eq!(late.status.code(), Some(2), "no exercise in progress any more");
    std::fs::remove_dir_all(&out).expect("cleaned");
}

#[test]
fn two_runs_append_two_records_and_history_prints_the_trend() {
    let out = temp("history");
    let o = out.to_str().expect("UTF-8 path");
    for _ in 0..2 {
        let run = agentdrill(&["run", "scenarios/worker/kill-in-flight.toml", "--out", o]);
        assert_eq!(run.status.code(), Some(0), "{}", text(&run.stderr));
    }
    let h = history::read(&out.join(history::FILE_NAME)).expect("history");
    assert_eq!(h.records.len(), 2);
    assert_eq!(h.skipped_lines, 0);
    assert_eq!(h.records[0].rto_s, h.records[1].rto_s, "the same drill and seed measure the same");
    let dirs = report_dirs(&out);
    assert_eq!(dirs.len(), 2);
    let html = std::fs::read_to_string(dirs[1].join("report.html")).expect("report.html in every --out folder");
    assert!(html.contains("<figure class=\"trend\"><svg"), "the second report draws the RTO trend");

    let printed = agentdrill(&["history", o]);
    assert_eq!(printed.status.code(), Some(0), "{}", text(&printed.stderr));
    let t = text(&printed.stdout);
    let rto = format!("{:.1}", h.records[0].rto_s.expect("recovered"));
    assert!(t.contains(&format!("{rto} → {rto}")), "RTO over time:\n{t}");
    assert!(t.contains("drill success rate 100% (2/2)") && t.contains(&format!("MTTR {rto} s")), "{t}");
    let one = agentdrill(&["history", o, "--drill", "kill-in-flight"]);
    assert_eq!(text(&one.stdout).matches("│ run ").count(), 2, "each run on its own line:\n{}", text(&one.stdout));
    assert_eq!(agentdrill(&["history", o, "--drill", "nope"]).status.code(), Some(2));
    std::fs::remove_dir_all(&out).expect("cleaned");
}

const WRITER: &str = "AGENTDRILL_HISTORY_WRITER";

fn record(n: u64) -> history::Record {
    history::Record {
        time_unix_s: n,
        time: format!("t{n}"),
        source: "run".into(),
        drill: format!("drill-{}", n % 7),
        file: Some("scenarios/x.toml".repeat(20)),
        scenario_hash: Some("fnv1a64:0123456789abcdef".into()),
        version: "test".into(),
        seed: n,
        tier: "internal-ops".into(),
        verdict: "pass".into(),
        expect_fail: false,
        rto_s: Some(n as f64),
        rpo_s: 0.0,
        target_rto_s: 900.0,
        target_rpo_s: 300.0,
        duplicates: 0,
        lost_effects: 0,
        stuck_tasks: 0,
    }
}

/// Run with `AGENTDRILL_HISTORY_WRITER=<file>`, this test is the writer: it
/// appends until it is killed. Run plainly, it starts that writer, kills it
/// (SIGKILL) while it appends, and checks the history it left.
#[test]
fn a_writer_killed_mid_append_leaves_a_readable_history() {
    if let Some(path) = std::env::var_os(WRITER) {
        let path = PathBuf::from(path);
        for n in 0..10_000_000u64 {
            let batch: Vec<history::Record> = (0..20).map(|k| record(n * 20 + k)).collect();
            history::append(&path, &batch).expect("append");
        }
        return;
    }
    let dir = temp("killed-writer");
    let path = dir.join(history::FILE_NAME);
    let mut child = std::process::Command::new(std::env::current_exe().expect("this test binary"))
        .args(["--exact", "a_writer_killed_mid_append_leaves_a_readable_history", "--nocapture", "--test-threads=1"])
        .env(WRITER, &path)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("writer started");
    // Wait (bounded) until it has written a good deal, then kill it.
    for _ in 0..60_000 {
        if std::fs::metadata(&path).is_ok_and(|m| m.len() > 512 * 1024) {
            break;
        }
        assert!(child.try_wait().expect("status").is_none(), "the writer stopped by itself");
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    child.kill().expect("killed");
    child.wait().expect("reaped");
    let h = history::read(&path).expect("the history is readable");
    assert!(h.records.len() > 100, "{} records", h.records.len());
    assert!(h.skipped_lines <= 1, "at most the one line being written is torn: {}", h.skipped_lines);
    for (i, r) in h.records.iter().enumerate() {
        assert_eq!(*r, record(i as u64), "record {i} is whole and in order");
    }
    let next = record(h.records.len() as u64);
    history::append(&path, std::slice::from_ref(&next)).expect("appending after the crash");
    let after = history::read(&path).expect("readable");
    assert_eq!(after.records.len(), h.records.len() + 1);
    assert_eq!(after.records.last(), Some(&next), "the new record is whole");
    assert_eq!(after.skipped_lines, h.skipped_lines, "the torn line stays alone");
    std::fs::remove_dir_all(&dir).expect("cleaned");
}
