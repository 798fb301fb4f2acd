//! The command line as a user meets it: exit codes, formats, errors.

use std::process::Command;

fn agentdrill(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_agentdrill"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("the binary runs")
}

#[test]
fn the_catalogue_passes_with_every_anti_pattern_caught() {
    let out = agentdrill(&["run", "scenarios/"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("PASS (caught)"), "{stdout}");
    assert!(!stdout.contains("not caught"), "{stdout}");
}

#[test]
fn json_has_the_contract_keys() {
    let out = agentdrill(&["run", "scenarios/worker/kill-in-flight.toml", "--format", "json", "--seed", "3"]);
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON");
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
    ] {
        assert!(d.get(key).is_some(), "missing {key} in {d}");
    }
    assert_eq!(d["seed"], 3);
    assert_eq!(d["verdict"], "pass");
}

#[test]
fn a_failing_drill_exits_1_and_names_the_violation() {
    let dir = std::env::temp_dir().join(format!("agentdrill-fail-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("dup.toml");
    // An anti-pattern drill that claims it should pass.
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/scenarios/antipatterns/key-from-model-output.toml"
    ))
    .unwrap()
    .replace("expect = \"fail\"", "expect = \"pass\"");
    std::fs::write(&f, text).unwrap();
    let out = agentdrill(&["run", f.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("duplicate side effects: 1, target 0"));
}

#[test]
fn malformed_scenarios_exit_2_with_the_place_and_the_fix() {
    let out = agentdrill(&["run", "fixtures/bad/unknown-phase.toml"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("fixtures/bad/unknown-phase.toml:7:35: faults[0].at.phase:"), "{err}");
    assert!(err.contains("mid_call") && err.contains("before_checkpoint"), "{err}");
    let out = agentdrill(&["run", "fixtures/bad/unknown-provider.toml"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("faults[0].provider") && err.contains("anthropic"), "{err}");
    let out = agentdrill(&["run", "no/such/dir"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn explain_prints_the_timeline() {
    let out = agentdrill(&["explain", "scenarios/worker/kill-in-flight.toml"]);
    assert_eq!(out.status.code(), Some(0));
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(s.contains("recovery service requeued"), "{s}");
    assert!(s.contains("asked the API by key"), "{s}");
}

/// JUnit's wall times are the only part of a report that changes run to run.
fn without_wall_times(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find(" time=\"").or_else(|| rest.find(" timestamp=\"")) {
        let start = i + rest[i..].find('"').expect("an attribute") + 1;
        let end = rest[start..].find('"').map_or(rest.len(), |e| start + e);
        out.push_str(&rest[..start]);
        out.push_str("<wall>");
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

#[test]
fn run_jobs_2_prints_every_format_as_jobs_1_does() {
    for format in ["table", "json", "junit", "markdown", "html"] {
        let mut outs = Vec::new();
        for jobs in ["1", "2"] {
            let out = agentdrill(&["run", "scenarios/", "--seed", "3", "--format", format, "--jobs", jobs]);
            outs.push((out.status.code(), without_wall_times(&String::from_utf8_lossy(&out.stdout))));
        }
        assert!(matches!(outs[0].0, Some(0 | 1)), "{format}: {}", outs[0].1);
        assert_eq!(outs[0].0, outs[1].0, "{format}: exit codes differ");
        assert!(outs[0].1 == outs[1].1, "{format}: --jobs 2 printed something else than --jobs 1");
    }
    // A failing drill's exit code too.
    let mut codes = Vec::new();
    for jobs in ["1", "2"] {
        let out = agentdrill(&["run", "scenarios/", "fixtures/regressions", "--format", "json", "--jobs", jobs]);
        codes.push((out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned()));
    }
    assert_eq!(codes[0], codes[1], "scenarios/ and fixtures/regressions/: --jobs 2 differs");
}
