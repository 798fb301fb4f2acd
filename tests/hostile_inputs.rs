//! Hostile inputs cannot hurt the harness: devices, FIFOs, folders and
//! oversized files are refused before they are read (as the scenario and as
//! an include), a file of many unknown keys is refused with the first errors
//! and a count of the rest, deep nesting points at its line, values past the
//! limits are refused with the limit, and `--out` leaves all four reports
//! or none when the run is killed while writing them.

use std::path::{Path, PathBuf};
use std::process::Output;

use assert_cmd::Command;

fn agentdrill(dir: &Path, args: &[&str]) -> Output {
    Command::cargo_bin("agentdrill")
        .expect("the binary is built")
        .args(args)
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .env_remove("AGENTDRILL_CRASH_AFTER_REPORTS")
        .timeout(std::time::Duration::from_secs(120))
        .output()
        .expect("the binary runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A fresh folder for one test.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("agentdrill-hostile-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch folder");
    dir
}

/// `validate` exits 2 with exactly one error line, which contains `want`.
fn refused(dir: &Path, file: &str, want: &str) {
    let out = agentdrill(dir, &["validate", file]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{file}: {err}");
    assert!(!err.contains("panicked"), "{file}: {err}");
    assert_eq!(err.lines().count(), 1, "{file}: one error: {err}");
    assert!(err.contains(want), "{file}: want {want:?} in {err}");
}

const HEAD: &str = "tier = \"batch\"\nhorizon = \"1h\"\n";

#[test]
fn devices_fifos_folders_and_oversized_files_are_refused_before_reading() {
    let dir = scratch("files");
    refused(&dir, "/dev/zero", "/dev/zero: cannot read: it is a device, not a regular file");
    refused(&dir, ".", "no scenario files");
    let fifo = dir.join("pipe.toml");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status().expect("mkfifo runs");
    assert!(made.success());
    refused(&dir, "pipe.toml", "pipe.toml: cannot read: it is a FIFO (named pipe), not a regular file");
    // 1 MiB and one byte: refused by its size, before it is read.
    let big = format!("{HEAD}{}", "#".repeat((1 << 20) + 1 - HEAD.len()));
    std::fs::write(dir.join("big.toml"), &big).expect("written");
    refused(&dir, "big.toml", "it is 1048577 bytes, above the limit of 1048576 bytes (1 MiB, MAX_FILE_BYTES)");
    // 10 MB of unknown keys: refused by its size at once.
    let huge: String = (0..600_000).map(|i| format!("key{i} = 1\n")).collect();
    std::fs::write(dir.join("huge.toml"), format!("{HEAD}{huge}")).expect("written");
    refused(&dir, "huge.toml", "above the limit of 1048576 bytes");
    // The same as includes: refused at the include, with its line.
    for (name, target, want) in [
        ("inc-zero.toml", "/dev/zero", "it is a device, not a regular file"),
        ("inc-pipe.toml", "pipe.toml", "it is a FIFO (named pipe), not a regular file"),
        ("inc-dir.toml", ".", "it is a directory, not a regular file"),
        ("inc-big.toml", "big.toml", "above the limit of 1048576 bytes"),
    ] {
        std::fs::write(dir.join(name), format!("{HEAD}include = \"{target}\"\n")).expect("written");
        refused(&dir, name, &format!("{name}:3:11: include: cannot include \"{target}\""));
        refused(&dir, name, want);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_file_of_many_unknown_keys_lists_the_first_and_counts_the_rest() {
    let dir = scratch("unknown");
    let keys: String = (0..20_000).map(|i| format!("key{i} = 1\n")).collect();
    std::fs::write(dir.join("keys.toml"), format!("{HEAD}{keys}")).expect("written");
    let out = agentdrill(&dir, &["validate", "keys.toml"]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 101, "100 errors and the count of the rest: {}", &err[..err.len().min(2_000)]);
    assert!(lines[0].starts_with("error: keys.toml:3:1: key0: unknown field \"key0\""), "{}", lines[0]);
    assert!(lines[99].starts_with("error: keys.toml:102:1: key99: unknown field"), "{}", lines[99]);
    assert_eq!(lines[100], "error: keys.toml: and 19900 more errors; fix the ones above and run again");
    // Unknown keys in several tables are all found.
    let text2 = format!("{HEAD}a = 1\nb = 2\n[stack]\nc = 3\nworkers = 2\nd = 4\n[workload]\ne = 5\n");
    std::fs::write(dir.join("spread.toml"), text2).expect("written");
    let out = agentdrill(&dir, &["validate", "spread.toml"]);
    let err = text(&out.stderr);
    let fields: Vec<&str> = err.lines().filter_map(|l| l.split(": ").nth(2)).collect();
    assert_eq!(fields, ["a", "b", "stack.c", "stack.d", "workload.e"], "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn deep_nesting_points_at_its_line() {
    let dir = scratch("deep");
    let deep = format!("{HEAD}\n\nx = {}{}\n", "[".repeat(5_000), "]".repeat(5_000));
    std::fs::write(dir.join("deep.toml"), deep).expect("written");
    refused(&dir, "deep.toml", "deep.toml:5:");
    refused(&dir, "deep.toml", "nest too deeply here");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn values_past_the_limits_are_refused_with_the_limit() {
    let dir = scratch("limits");
    for (name, body, want) in [
        ("workers.toml", "[stack]\nworkers = 4294967295\n", "stack.workers: 4294967295 is above the limit of 1024"),
        ("tasks.toml", "[workload]\ntasks = 4294967295\n", "workload.tasks: 4294967295 is above the limit of 1000000"),
        (
            "snapshots.toml",
            "[stack.vector]\nsnapshot_interval = \"1ms\"\n",
            "stack.vector.snapshot_interval: 1ms is shorter than the limit of 10s",
        ),
        (
            "lease.toml",
            "[stack.policy]\nlease_ms = 18446744073709551615\n",
            "stack.policy.lease_ms: 18446744073709551615 ms is longer than the limit of 2592000000 ms",
        ),
        (
            "lag.toml",
            "[stack]\nreplication = { mode = \"async\", lag_ms = 18446744073709551615, interval_ms = 1000 }\n",
            "stack.replication.lag_ms: 18446744073709551615 ms is longer than the limit",
        ),
        (
            "latency.toml",
            "[[stack.providers]]\nname = \"x\"\nbase_latency_ms = 18446744073709551615\n",
            "stack.providers[0].base_latency_ms: 18446744073709551615 ms is longer than the limit",
        ),
        (
            "scan.toml",
            "[stack]\nrecovery_scan = \"1ms\"\n",
            "stack.recovery_scan: every 1ms fires 3600000 times over the 1h horizon, above the limit of 1000000",
        ),
    ] {
        std::fs::write(dir.join(name), format!("{HEAD}{body}")).expect("written");
        refused(&dir, name, want);
        // `run` refuses it the same way.
        let out = agentdrill(&dir, &["run", name]);
        assert_eq!(out.status.code(), Some(2), "{name}: {}", text(&out.stderr));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The visible report folders under `dir` and the names of every entry.
fn report_folders(dir: &Path) -> (Vec<PathBuf>, Vec<String>) {
    let mut folders = Vec::new();
    let mut names = Vec::new();
    for e in std::fs::read_dir(dir).expect("the reports folder") {
        let e = e.expect("entry");
        let name = e.file_name().to_string_lossy().into_owned();
        if name == "history.jsonl" {
            continue;
        }
        if !name.starts_with('.') {
            folders.push(e.path());
        }
        names.push(name);
    }
    folders.sort();
    (folders, names)
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("a folder")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn a_run_killed_while_writing_reports_leaves_all_four_or_none() {
    let dir = scratch("out");
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let drill = root.join("scenarios/worker/kill-in-flight.toml");
    let drill = drill.to_str().expect("utf-8");
    let reports = dir.join("reports");
    let reports_arg = reports.to_str().expect("utf-8");
    for crash_after in ["1", "2", "3", "4"] {
        let out = Command::cargo_bin("agentdrill")
            .expect("the binary")
            .args(["run", drill, "--out", reports_arg])
            .env("AGENTDRILL_CRASH_AFTER_REPORTS", crash_after)
            .output()
            .expect("runs");
        assert_eq!(out.status.code(), None, "killed by a signal after {crash_after} reports: {}", text(&out.stderr));
        let (folders, _) = report_folders(&reports);
        assert!(folders.is_empty(), "no report folder after a crash at {crash_after}: {folders:?}");
    }
    let out = agentdrill(&dir, &["run", drill, "--out", reports_arg]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let (folders, names) = report_folders(&reports);
    assert_eq!(folders.len(), 1, "{names:?}");
    assert_eq!(files_in(&folders[0]), ["junit.xml", "report.html", "report.json", "report.md"]);
    assert_eq!(names.len(), 1, "the stopped runs' partial folders are gone, no temporary file is left: {names:?}");
    let json = std::fs::read_to_string(folders[0].join("report.json")).expect("readable");
    assert!(json.contains("kill-in-flight"), "whole report");
    let _ = std::fs::remove_dir_all(&dir);
}
