//! Every command and format as a user meets them (assert_cmd): run in each
//! format and with --out, list, validate, explain, schema, --help, --version.

use std::path::{Path, PathBuf};

use assert_cmd::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn agentdrill(args: &[&str]) -> std::process::Output {
    Command::cargo_bin("agentdrill")
        .expect("the binary is built")
        .args(args)
        .current_dir(root())
        .output()
        .expect("the binary runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The catalogue's drill files (what `run scenarios/` runs: not the live
/// drills of `scenarios/live/`, which start processes).
fn drills(dir: &str) -> Vec<PathBuf> {
    fn walk(d: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(d).expect("folder") {
            let p = e.expect("entry").path();
            if p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('_') || (p.is_dir() && n == "live")) {
                continue;
            }
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "toml") {
                out.push(p);
            }
        }
    }
    let mut v = Vec::new();
    walk(&root().join(dir), &mut v);
    v
}

fn temp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("agentdrill-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp folder");
    d
}

#[test]
fn the_catalogue_has_enough_drills_and_runs_clean() {
    let all = drills("scenarios");
    assert!(all.len() >= 20, "{}", all.len());
    let anti = drills("scenarios/antipatterns");
    let out = agentdrill(&["run", "scenarios/"]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    assert_eq!(stdout.matches("PASS (caught)").count(), anti.len(), "every anti-pattern drill caught: {stdout}");
    assert!(stdout.contains(&format!("{n}/{n} drills passed", n = all.len())), "{stdout}");
    assert!(!stdout.contains('\u{1b}'), "no colour when stdout is not a terminal");
}

#[test]
fn junit_parses_with_one_case_per_drill() {
    let out = agentdrill(&["run", "scenarios/", "--format", "junit"]);
    assert_eq!(out.status.code(), Some(0));
    let report = quick_junit::Report::deserialize_from_str(&text(&out.stdout)).expect("valid JUnit XML");
    let cases: Vec<&quick_junit::TestCase> = report.test_suites.iter().flat_map(|s| s.test_cases.iter()).collect();
    assert_eq!(cases.len(), drills("scenarios").len());
    assert_eq!(report.tests, cases.len());
    assert_eq!(report.failures, 0);
    assert!(cases.iter().all(|c| matches!(c.status, quick_junit::TestCaseStatus::Success { .. })));
    let mut names: Vec<&str> = cases.iter().map(|c| c.name.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), cases.len(), "case names are unique");
}

#[test]
fn a_failed_drill_is_a_junit_failure_naming_measured_and_target() {
    let dir = temp("junit-fail");
    let f = dir.join("lag.toml");
    let text_ = std::fs::read_to_string(root().join("scenarios/antipatterns/replication-lag-beyond-rpo.toml"))
        .expect("readable")
        .replace("expect = \"fail\"", "expect = \"pass\"");
    std::fs::write(&f, text_).expect("written");
    let out = agentdrill(&["run", f.to_str().expect("utf-8"), "--format", "junit"]);
    assert_eq!(out.status.code(), Some(1));
    let report = quick_junit::Report::deserialize_from_str(&text(&out.stdout)).expect("valid JUnit XML");
    assert_eq!(report.failures, 1);
    let case = &report.test_suites[0].test_cases[0];
    let xml = text(&out.stdout);
    assert!(matches!(case.status, quick_junit::TestCaseStatus::NonSuccess { .. }));
    // Each violated target with the measured value: "RPO 61.0 s ≥ target 30 s".
    let failure = xml.split("<failure").nth(1).and_then(|f| f.split('>').next()).expect("a failure element");
    assert!(failure.contains("RPO ") && failure.contains(" s ≥ target 30 s"), "{failure}");
    assert!(failure.contains("RTO ") && failure.contains(" s ≥ target 120 s"), "{failure}");
}

#[test]
fn json_has_the_contract_and_the_report_fields() {
    let out = agentdrill(&["run", "scenarios/region/warm-standby-payments-tier.toml", "--format", "json"]);
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let d = &v["drills"][0];
    for key in [
        "scenario",
        "seed",
        "tier",
        "verdict",
        "rto_s",
        "rpo_s",
        "duplicates",
        "lost_effects",
        "stuck_tasks",
        "target_rto_s",
        "target_rpo_s",
        "violations",
        "rto_parts",
        "rpo_surfaces",
        "replanned_steps",
        "cost",
        "baseline_cost",
        "event_counts",
        "scenario_hash",
        "agentdrill_version",
        "invariants",
    ] {
        assert!(d.get(key).is_some(), "missing {key} in {d}");
    }
    assert_eq!(d["tier"], "payments");
    assert_eq!(d["target_rto_s"], 600.0);
    assert_eq!(d["target_rpo_s"], 120.0);
    assert_eq!(d["invariants"].as_array().map(Vec::len), Some(3));
    assert!(d["scenario_hash"].as_str().is_some_and(|h| h.starts_with("fnv1a64:") && h.len() == 24));
    assert!(d["event_counts"]["failover_detected"].as_u64() == Some(1), "{}", d["event_counts"]);
    assert_eq!(d["agentdrill_version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(v["summary"]["drills"], 1);
}

#[test]
fn the_hash_covers_the_included_stack() {
    let dir = temp("hash");
    std::fs::create_dir_all(dir.join("_stacks")).expect("folder");
    let stack = std::fs::read_to_string(root().join("scenarios/_stacks/warm-standby.toml")).expect("readable");
    std::fs::write(dir.join("_stacks/warm-standby.toml"), &stack).expect("written");
    let drill = std::fs::read_to_string(root().join("scenarios/region/warm-standby-loss.toml"))
        .expect("readable")
        .replace("../_stacks/", "_stacks/");
    std::fs::write(dir.join("d.toml"), drill).expect("written");
    let hash = || {
        let out = agentdrill(&["run", dir.join("d.toml").to_str().expect("utf-8"), "--format", "json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
        v["drills"][0]["scenario_hash"].as_str().expect("a hash").to_owned()
    };
    let before = hash();
    assert_eq!(before, hash(), "stable");
    std::fs::write(dir.join("_stacks/warm-standby.toml"), stack.replace("tasks = 40", "tasks = 41")).expect("written");
    assert_ne!(before, hash(), "an edit of the included stack changes the hash");
}

#[test]
fn markdown_has_a_summary_and_a_section_per_drill() {
    let out = agentdrill(&["run", "scenarios/worker/", "--format", "markdown"]);
    assert_eq!(out.status.code(), Some(0));
    let md = text(&out.stdout);
    assert!(md.starts_with("# agentdrill report\n"), "{md}");
    let n = drills("scenarios/worker").len();
    assert_eq!(md.matches("\n## ").count(), n, "{md}");
    assert_eq!(md.matches("### Timeline").count(), n);
    assert_eq!(md.matches("### Verdict").count(), n);
    assert!(md.contains("| drill | tier | RTO (target) |"), "{md}");
    assert!(md.contains("asked the API by key"), "{md}");
}

#[test]
fn out_writes_four_whole_reports_into_a_timestamped_folder() {
    let dir = temp("out");
    let out_dir = dir.join("reports");
    let out = agentdrill(&["run", "scenarios/worker/", "--out", out_dir.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("drills passed"), "the table is still printed");
    let runs: Vec<PathBuf> = std::fs::read_dir(&out_dir)
        .expect("reports/")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.is_dir())
        .collect();
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert!(out_dir.join("history.jsonl").is_file(), "the history is kept beside the run folders");
    let name = runs[0].file_name().expect("a name").to_string_lossy().into_owned();
    assert!(name.len() == 16 && name.ends_with('Z') && name.as_bytes()[8] == b'T', "UTC timestamp: {name}");
    let mut files: Vec<String> = std::fs::read_dir(&runs[0])
        .expect("the run folder")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(files, ["junit.xml", "report.html", "report.json", "report.md"], "no temporary files left behind");
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(runs[0].join("report.json")).expect("report.json")).expect("JSON");
    assert_eq!(json["summary"]["drills"].as_u64(), Some(drills("scenarios/worker").len() as u64));
    quick_junit::Report::deserialize_from_str(&std::fs::read_to_string(runs[0].join("junit.xml")).expect("junit"))
        .expect("valid JUnit");
    assert!(text(&out.stderr).contains("reports written to"), "{}", text(&out.stderr));
    // A second run the same second gets its own folder.
    let again = agentdrill(&["run", "scenarios/worker/kill-in-flight.toml", "--out", out_dir.to_str().expect("utf-8")]);
    assert_eq!(again.status.code(), Some(0));
    assert_eq!(
        std::fs::read_dir(&out_dir).expect("reports/").filter(|e| e.as_ref().expect("entry").path().is_dir()).count(),
        2
    );
}

#[test]
fn an_unwritable_out_folder_exits_2() {
    let dir = temp("unwritable");
    let file = dir.join("a-file");
    std::fs::write(&file, "").expect("written");
    let out = agentdrill(&["run", "scenarios/worker/kill-in-flight.toml", "--out", file.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("cannot write the reports"), "{}", text(&out.stderr));
}

#[test]
fn list_shows_every_drill_with_tier_and_purpose() {
    let out = agentdrill(&["list", "scenarios/"]);
    assert_eq!(out.status.code(), Some(0));
    let s = text(&out.stdout);
    let all = drills("scenarios");
    assert!(s.contains(&format!("{} drills", all.len())), "{s}");
    for f in &all {
        let stem = f.file_stem().expect("a stem").to_string_lossy();
        assert!(s.contains(stem.as_ref()), "{stem} missing from {s}");
    }
    assert!(s.contains("payments") && s.contains("customer-facing") && s.contains("sandbox"), "{s}");
    assert!(s.contains("anti-pattern 6: no fencing"), "{s}");
    assert!(!s.contains("_stacks"), "shared pieces are not drills");
}

#[test]
fn validate_checks_without_running_and_stops_at_the_first_bad_file() {
    let out = agentdrill(&["validate", "scenarios/"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let s = text(&out.stdout);
    assert!(s.contains(&format!("{} scenarios valid", drills("scenarios").len())), "{s}");
    assert!(s.contains("(warm-standby-loss, tier internal-ops, 1 fault, 1 included)"), "{s}");

    let dir = temp("validate");
    std::fs::copy(root().join("scenarios/worker/kill-in-flight.toml"), dir.join("a-good.toml")).expect("copied");
    std::fs::copy(root().join("fixtures/bad/many-errors.toml"), dir.join("b-bad.toml")).expect("copied");
    std::fs::copy(root().join("fixtures/bad/unknown-tier.toml"), dir.join("c-bad.toml")).expect("copied");
    let out = agentdrill(&["validate", dir.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(text(&out.stdout).contains("ok  ") && text(&out.stdout).contains("a-good.toml"));
    assert_eq!(err.lines().count(), 9, "every error of the first bad file: {err}");
    assert!(err.lines().all(|l| l.starts_with("error: ") && l.contains("b-bad.toml:")), "{err}");
    assert!(!err.contains("c-bad.toml"), "stops at the first bad file: {err}");
}

#[test]
fn explain_reads_like_a_facilitator_script() {
    let out = agentdrill(&["explain", "scenarios/worker/kill-in-flight.toml", "--seed", "3"]);
    assert_eq!(out.status.code(), Some(0));
    let s = text(&out.stdout);
    for part in [
        "WHAT THE STACK CLAIMS",
        "THE STACK",
        "THE FAULTS",
        "WHAT HAPPENED",
        "HOW THE NUMBERS WERE REACHED",
        "VERDICT",
        "in flight: the API has processed the request",
        "lease of job 3 expired",
        "asked the API by key",
        "detection",
        "seed 3",
    ] {
        assert!(s.contains(part), "{part:?} missing:\n{s}");
    }
    let region = text(&agentdrill(&["explain", "scenarios/region/warm-standby-loss.toml"]).stdout);
    for part in ["health checks failed", "DNS TTL passed", "standby scaled up", "vector memory hydrated", "scale-up"] {
        assert!(region.contains(part), "{part:?} missing:\n{region}");
    }
    let bad = agentdrill(&["explain", "fixtures/bad/unknown-phase.toml"]);
    assert_eq!(bad.status.code(), Some(2));
}

#[test]
fn schema_is_json_with_the_scenario_types() {
    let out = agentdrill(&["schema"]);
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert!(v["$defs"]["FaultSpec"].is_object() && v["$defs"]["Duration"].is_object(), "{v}");
    assert!(v["required"].as_array().is_some_and(|r| r.contains(&"tier".into()) && r.contains(&"horizon".into())));
}

#[test]
fn every_command_has_help_with_an_example_and_there_is_a_version() {
    for cmd in [
        &["--help"][..],
        &["run", "--help"],
        &["list", "--help"],
        &["validate", "--help"],
        &["explain", "--help"],
        &["schema", "--help"],
    ] {
        let out = agentdrill(cmd);
        assert_eq!(out.status.code(), Some(0), "{cmd:?}");
        let s = text(&out.stdout);
        assert!(s.contains("Example") && s.contains("agentdrill "), "{cmd:?}: {s}");
    }
    let out = agentdrill(&["--version"]);
    assert_eq!(text(&out.stdout).trim(), format!("agentdrill {}", env!("CARGO_PKG_VERSION")));
}

#[test]
fn missing_paths_and_empty_folders_exit_2() {
    let dir = temp("empty");
    for args in
        [vec!["run", "no/such/file.toml"], vec!["list", dir.to_str().expect("utf-8")], vec!["validate", "nope/"]]
    {
        let out = agentdrill(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(text(&out.stderr).starts_with("error: "), "{args:?}");
    }
}

#[test]
fn logs_go_to_stderr_with_rust_log() {
    let out = Command::cargo_bin("agentdrill")
        .expect("built")
        .args(["run", "scenarios/worker/kill-in-flight.toml", "--format", "json"])
        .current_dir(root())
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(0));
    let err = text(&out.stderr);
    assert!(err.contains("running") && err.contains("kill-in-flight"), "{err}");
    assert!(!err.contains('\u{1b}'), "NO_COLOR: {err:?}");
    serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("stdout stays pure JSON");
}
