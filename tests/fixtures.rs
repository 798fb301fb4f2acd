//! Fixtures: malformed scenarios with the exact errors expected for each
//! (`fixtures/bad/*.toml` and their `.expected`), and golden reports
//! (`fixtures/golden/`) for a few drills with fixed seeds.
//!
//! The runs are deterministic, so the goldens are byte-stable once the
//! version and the JUnit wall times are normalised. After an intended change,
//! regenerate them with
//!
//! ```text
//! UPDATE_GOLDEN=1 cargo test --release --test fixtures
//! ```
//!
//! and review the diff in git.

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
        .env("NO_COLOR", "1")
        .output()
        .expect("the binary runs")
}

fn updating() -> bool {
    std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| !v.is_empty() && v != "0")
}

/// A line diff (longest common subsequence), `-` expected, `+` actual.
fn diff(expected: &str, actual: &str) -> String {
    let a: Vec<&str> = expected.lines().collect();
    let b: Vec<&str> = actual.lines().collect();
    let mut lcs = vec![vec![0u32; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] { lcs[i + 1][j + 1] + 1 } else { lcs[i + 1][j].max(lcs[i][j + 1]) };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, String::new());
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            i += 1;
            j += 1;
        } else if j < b.len() && (i == a.len() || lcs[i][j + 1] >= lcs[i + 1][j]) {
            out.push_str(&format!("+{:>5} | {}\n", j + 1, b[j]));
            j += 1;
        } else {
            out.push_str(&format!("-{:>5} | {}\n", i + 1, a[i]));
            i += 1;
        }
    }
    out
}

/// Compares `actual` with the golden file, or writes it with UPDATE_GOLDEN=1.
fn check_golden(path: &Path, actual: &str) -> Result<(), String> {
    if updating() {
        std::fs::create_dir_all(path.parent().expect("a folder")).expect("folder");
        std::fs::write(path, actual).expect("golden written");
        return Ok(());
    }
    let expected = std::fs::read_to_string(path).unwrap_or_default();
    if expected == actual {
        return Ok(());
    }
    Err(format!(
        "{} differs from the output (- golden, + actual):\n{}\nIf the change is intended, regenerate with:\n  UPDATE_GOLDEN=1 cargo test --release --test fixtures\nand review the diff.",
        path.display(),
        diff(&expected, actual)
    ))
}

fn assert_all(results: Vec<Result<(), String>>) {
    let failures: Vec<String> = results.into_iter().filter_map(Result::err).collect();
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn each_malformed_scenario_fails_with_exactly_its_expected_errors() {
    let dir = root().join("fixtures/bad");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("fixtures/bad")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .filter(|p| !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('_')))
        .collect();
    files.sort();
    assert!(files.len() >= 15, "expected the bad fixtures, found {}", files.len());
    let mut results = Vec::new();
    for f in files {
        let rel = format!("fixtures/bad/{}", f.file_name().expect("a name").to_string_lossy());
        let out = agentdrill(&["validate", &rel]);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(2), "{rel}: validate must exit 2\n{stderr}");
        assert!(out.stdout.is_empty(), "{rel}: nothing on stdout for a bad file");
        assert!(!stderr.contains("panicked"), "{rel}: {stderr}");
        // `run` refuses it the same way, and runs nothing.
        let run = agentdrill(&["run", &rel]);
        assert_eq!(run.status.code(), Some(2), "{rel}: run must exit 2");
        assert_eq!(String::from_utf8_lossy(&run.stderr), stderr, "{rel}: run and validate report the same errors");
        assert!(run.stdout.is_empty(), "{rel}: run printed a result for a bad file");
        results.push(check_golden(&f.with_extension("expected"), &stderr));
    }
    assert_all(results);
}

/// The version and the wall times change from build to build and run to run.
fn normalise(text: &str) -> String {
    let mut out = text.replace(env!("CARGO_PKG_VERSION"), "<version>");
    for attr in [" time=\"", " timestamp=\""] {
        let mut done = String::new();
        let mut rest = out.as_str();
        while let Some(i) = rest.find(attr) {
            let start = i + attr.len();
            let end = rest[start..].find('"').map_or(rest.len(), |e| start + e);
            done.push_str(&rest[..start]);
            done.push_str("<wall>");
            rest = &rest[end..];
        }
        done.push_str(rest);
        out = done;
    }
    out
}

const GOLDEN_DRILLS: [&str; 4] = [
    "scenarios/worker/kill-in-flight.toml",
    "scenarios/region/warm-standby-payments-tier.toml",
    "scenarios/antipatterns/no-fencing-zombie.toml",
    "scenarios/antipatterns/replication-lag-beyond-rpo.toml",
];

#[test]
fn reports_match_their_goldens() {
    let mut results = Vec::new();
    for (format, name) in
        [("json", "report.json"), ("markdown", "report.md"), ("junit", "junit.xml"), ("html", "report.html")]
    {
        let mut args = vec!["run", "--seed", "7", "--format", format];
        args.extend(GOLDEN_DRILLS);
        let out = agentdrill(&args);
        assert_eq!(out.status.code(), Some(0), "{format}: {}", String::from_utf8_lossy(&out.stderr));
        let text = normalise(&String::from_utf8_lossy(&out.stdout));
        results.push(check_golden(&root().join("fixtures/golden").join(name), &text));
    }
    let out = agentdrill(&["explain", "scenarios/worker/kill-in-flight.toml"]);
    assert_eq!(out.status.code(), Some(0));
    results.push(check_golden(
        &root().join("fixtures/golden/explain-kill-in-flight.txt"),
        &normalise(&String::from_utf8_lossy(&out.stdout)),
    ));
    assert_all(results);
}

#[test]
fn normalising_hides_only_versions_and_wall_times() {
    let t = format!("<testcase name=\"x\" time=\"0.012\"> v{}", env!("CARGO_PKG_VERSION"));
    assert_eq!(normalise(&t), "<testcase name=\"x\" time=\"<wall>\"> v<version>");
}
