//! `agentdrill fuzz` as a user meets it: help, exit codes, the reproducer.

use std::process::{Command, Output};

fn agentdrill(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_agentdrill"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("the binary runs")
}

fn out_dir(name: &str) -> String {
    let d = std::env::temp_dir().join(format!("agentdrill-fuzz-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d.to_string_lossy().into_owned()
}

#[test]
fn help_lists_every_policy() {
    let out = agentdrill(&["fuzz", "--help"]);
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("[possible values: reference, key-from-model-output,"), "{help}");
    for name in ["no-fencing", "short-lease", "replication-lag-beyond-rpo", "artefacts-on-local-disk"] {
        assert!(help.contains(name), "{name} missing from\n{help}");
    }
    assert!(!help.contains("planted-bug"), "the test-only policy is hidden");
    for flag in ["--cases", "--seed", "--policy", "--time-budget", "--shard", "--out"] {
        assert!(help.contains(flag), "{flag} missing from\n{help}");
    }
}

#[test]
fn no_violation_exits_0() {
    let dir = out_dir("clean");
    let out = agentdrill(&["fuzz", "--cases", "40", "--seed", "5", "--out", &dir]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("40 case(s) run") && stdout.contains("no violation found"), "{stdout}");
}

#[test]
fn a_violation_exits_1_with_a_reproducer_that_run_catches() {
    let dir = out_dir("found");
    let out = agentdrill(&["fuzz", "--cases", "500", "--seed", "1", "--policy", "no-fencing", "--out", &dir]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    // Without fencing a stale holder's write is accepted or its side effect
    // repeated: either invariant may be the first one broken.
    let invariant = stdout
        .lines()
        .find_map(|l| l.strip_prefix("VIOLATION in case "))
        .and_then(|l| l.split_once(": "))
        .and_then(|(_, v)| v.split([' ', ':']).next())
        .unwrap_or_else(|| panic!("no violation line in {stdout}"))
        .to_owned();
    assert!(["fencing", "exactly_once"].contains(&invariant.as_str()), "{stdout}");
    let path = stdout
        .lines()
        .find_map(|l| l.strip_prefix("reproducer: "))
        .unwrap_or_else(|| panic!("no reproducer line in {stdout}"))
        .trim()
        .to_owned();
    assert!(stdout.contains(&format!("re-run:     agentdrill run {path}")), "{stdout}");
    let text = std::fs::read_to_string(&path).expect("written");
    assert!(text.starts_with(&format!("# agentdrill fuzz reproducer: violates `{invariant}`")), "{text}");
    assert!(text.contains("expect = \"fail\""), "{text}");
    let rerun = agentdrill(&["run", &path]);
    let rs = String::from_utf8_lossy(&rerun.stdout);
    assert_eq!(rerun.status.code(), Some(0), "{rs}");
    assert!(rs.contains("PASS (caught)"), "{rs}");
}

#[test]
fn unusable_input_exits_2() {
    for args in [
        &["fuzz", "--shard", "3/2"][..],
        &["fuzz", "--shard", "0/2"],
        &["fuzz", "--shard", "two"],
        &["fuzz", "--policy", "yolo"],
        &["fuzz", "--time-budget", "soon"],
        &["fuzz", "--cases", "-1"],
        &["fuzz", "--out", "Cargo.toml/inside-a-file"],
    ] {
        let out = agentdrill(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

#[test]
fn a_time_budget_stops_early() {
    let dir = out_dir("budget");
    let out = agentdrill(&["fuzz", "--cases", "100000000", "--time-budget", "1s", "--out", &dir]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    // The budget is what is tested, not the reference stack's cleanliness
    // (issue 9 is open: a find within the budget is exit 1, and fine here).
    assert!(matches!(out.status.code(), Some(0 | 1)), "{stdout}");
    let run: u64 = stdout
        .split(" case(s) run")
        .next()
        .and_then(|head| head.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("a case count in {stdout}"));
    assert!(run < 100_000_000, "the time budget stopped the run early: {stdout}");
}

/// The fuzz summary without its wall time and rate ("in 1.2 s, 345.6 cases/s").
fn without_timing(stdout: &str) -> String {
    stdout
        .lines()
        .map(|l| match (l.find(" in "), l.find(" cases/s")) {
            (Some(a), Some(b)) if l.starts_with("fuzz --policy") && a < b => format!("{}<timing>", &l[..a]),
            _ => l.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn jobs_2_finds_and_writes_what_jobs_1_does_byte_for_byte() {
    let mut finds = 0;
    for (policy, seed, cases) in [
        ("reference", "5", "60"),
        ("reference", "11", "60"),
        ("no-fencing", "1", "500"),
        ("no-fencing", "3", "500"),
        ("planted-bug-persist-before-call", "2", "200"),
    ] {
        let mut runs = Vec::new();
        for jobs in ["1", "2"] {
            let dir = out_dir(&format!("jobs-{policy}-{seed}-{jobs}"));
            let out = agentdrill(&[
                "fuzz", "--policy", policy, "--seed", seed, "--cases", cases, "--jobs", jobs, "--out", &dir,
            ]);
            let stdout = String::from_utf8_lossy(&out.stdout).replace(&dir, "<out>");
            let mut files: Vec<(String, String)> = std::fs::read_dir(&dir)
                .expect("the out folder is made")
                .map(|e| {
                    let p = e.expect("a folder entry").path();
                    let name = p.file_name().expect("a file name").to_string_lossy().into_owned();
                    (name, std::fs::read_to_string(&p).expect("a reproducer").replace(&dir, "<out>"))
                })
                .collect();
            files.sort();
            runs.push((out.status.code(), without_timing(&stdout), files));
        }
        let what = format!("fuzz --policy {policy} --seed {seed} --cases {cases}");
        assert!(matches!(runs[0].0, Some(0 | 1)), "{what}: {}", runs[0].1);
        assert_eq!(runs[0].0, runs[1].0, "{what}: exit codes differ");
        assert_eq!(runs[0].1, runs[1].1, "{what}: stdout differs");
        assert_eq!(runs[0].2, runs[1].2, "{what}: reproducers differ");
        finds += runs[0].2.len();
    }
    assert!(finds >= 2, "at least the no-fencing and the planted-bug runs find a violation");
}

#[test]
fn jobs_must_be_a_positive_count() {
    for jobs in ["0", "two", "-3", "100000"] {
        let out = agentdrill(&["fuzz", "--cases", "1", &format!("--jobs={jobs}")]);
        assert_eq!(out.status.code(), Some(2), "--jobs {jobs}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stderr).contains("--jobs"), "--jobs {jobs}: the error names the flag");
    }
}

#[test]
fn a_closed_stdout_ends_fuzz_quietly_not_with_a_panic() {
    use std::os::unix::process::ExitStatusExt as _;
    // `agentdrill fuzz | head -1`: the reader goes away before fuzz prints.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_agentdrill"))
        .args(["fuzz", "--cases", "50", "--seed", "3", "--jobs", "1", "--out"])
        .arg(out_dir("closed-stdout"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("agentdrill starts");
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("agentdrill ends");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "a closed pipe must not panic:\n{err}");
    assert_eq!(out.status.signal(), Some(13), "ended by SIGPIPE, as `ls | head` ends ls: {:?}\n{err}", out.status);
}
