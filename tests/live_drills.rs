//! Live drills on real processes: `agentdrill run scenarios/live/…` starts
//! the python agent (`examples/python-agent/agent.py --serve`) under the
//! supervisor, kills it at a kill point on the payment fake, and measures
//! from the ledgers. And the supervisor's guarantee: a harness SIGKILLed
//! mid-drill leaves nothing running after the next start.
//!
//! They need the official Python SDKs in `target/sdk-venv` (`cargo xtask
//! test` installs them and sets `AGENTDRILL_PYTHON`), and Node.js for the
//! node agent's drills (`examples/node-agent/`, run with the catalogue;
//! `cargo xtask test` installs `nodejs`); without them they fail and say so.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The venv's python, or a failure that names the command to run.
fn python() -> PathBuf {
    let p = std::env::var_os("AGENTDRILL_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/sdk-venv/bin/python"));
    let ok = Command::new(&p).args(["-c", "import stripe, anthropic"]).output().is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "the official Python SDKs are not installed at {}: run the tests with `cargo xtask test` \
         (it installs stripe, anthropic, openai and qdrant-client into target/sdk-venv)",
        p.display()
    );
    p
}

/// Node.js (18 or later: built-in `fetch`) for the node agent's drills
/// (`examples/node-agent/`, `scenarios/live/node-*.toml`), or a failure that
/// names the command to run.
fn node() -> PathBuf {
    let p = std::env::var_os("AGENTDRILL_NODE").map_or_else(|| PathBuf::from("node"), PathBuf::from);
    let out = Command::new(&p).arg("--version").output();
    let version = out.ok().filter(|o| o.status.success()).map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    let major = version.as_deref().and_then(|v| v.trim_start_matches('v').split('.').next()?.parse::<u32>().ok());
    assert!(
        major.is_some_and(|m| m >= 18),
        "Node.js 18 or later is needed for the node agent's live drills (examples/node-agent/), found {version:?} \
         at `{}`: run the tests with `cargo xtask test` (it installs the `nodejs` apt package), or set AGENTDRILL_NODE",
        p.display()
    );
    p
}

/// A fresh folder for run folders, so tests do not see each other's.
fn run_root(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("agentdrill-live-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp folder");
    d
}

/// Runs `agentdrill run FILE --format json`: the exit code and the drill's JSON.
fn run_drill(file: &str, runs: &Path) -> (i32, Value) {
    let out = Command::new(env!("CARGO_BIN_EXE_agentdrill"))
        .current_dir(root())
        .args(["run", file, "--format", "json"])
        .env("AGENTDRILL_PYTHON", python())
        .env("AGENTDRILL_RUN_DIR", runs)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run agentdrill");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("no JSON from agentdrill run {file} ({e}); stderr:\n{stderr}"));
    (out.status.code().unwrap_or(-1), v["drills"][0].clone())
}

/// Live drills measure real time: one at a time, so one drill's processes
/// are not another's CPU load (the region drills fail over in seconds).
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[test]
fn worker_killed_with_its_charge_in_flight_resumes_without_a_duplicate() {
    let _serial = serial();
    let runs = run_root("pass");
    let (code, d) = run_drill("scenarios/live/python-worker-kill-after-commit.toml", &runs);
    assert_eq!(d["mode"], "live", "{d:#}");
    assert_eq!((code, d["verdict"].as_str()), (0, Some("pass")), "{d:#}");
    assert_eq!(d["duplicates"], 0, "{d:#}");
    assert_eq!(d["lost_effects"], 0, "{d:#}");
    assert_eq!(d["stuck_tasks"], 0, "{d:#}");
    assert_eq!(d["counts"]["done_tasks"], 10, "{d:#}");
    // Ten book_flight jobs: a charge and an email each, exactly once.
    assert_eq!(d["counts"]["side_effects"], 20, "{d:#}");
    let f = &d["faults"][0];
    assert!(f["onset_s"].as_f64().is_some(), "the kill point fired: {f:#}");
    assert!(f["rto_s"].as_f64().is_some_and(|r| r > 0.0), "{f:#}");
    let exits = d["process_exits"].as_array().expect("exit records");
    assert!(
        exits.iter().any(|x| x["by_harness"] == true
            && x["signal"] == 9
            && x["at_s"].as_f64() < exits.last().unwrap()["at_s"].as_f64()),
        "the worker was SIGKILLed mid-drill: {exits:#?}"
    );
    assert!(exits.iter().all(|x| x["by_harness"] == true), "no unexpected exit: {exits:#?}");
}

#[test]
fn the_live_reference_stack_over_postgres_resumes_a_killed_worker_and_its_anti_pattern_is_caught() {
    let _serial = serial();
    // `agentdrill stack orchestrator|worker` (the simulator's components)
    // with the orchestrator's store in a PostgreSQL the drill starts itself
    // (`[database]`): PostgreSQL missing fails the drill with exit 2, naming
    // `agentdrill doctor` (and `cargo xtask test` installs it).
    let runs = run_root("reference");
    let (code, d) = run_drill("scenarios/live/reference-worker-kill-after-commit.toml", &runs);
    assert_eq!((code, d["verdict"].as_str()), (0, Some("pass")), "{d:#}");
    assert_eq!(d["duplicates"], 0, "{d:#}");
    assert_eq!(d["lost_effects"], 0, "{d:#}");
    assert_eq!(d["counts"]["done_tasks"], 10, "{d:#}");
    assert_eq!(d["counts"]["side_effects"], 20, "one charge and one email per job: {d:#}");
    let exits = d["process_exits"].as_array().expect("exit records");
    assert!(exits.iter().any(|x| x["by_harness"] == true && x["signal"] == 9), "a worker was SIGKILLed: {exits:#?}");
    let (code, d) = run_drill("scenarios/live/reference-antipattern-key-from-model-output.toml", &runs);
    assert!(d["duplicates"].as_u64().is_some_and(|n| n >= 1), "the re-keyed charge is a duplicate: {d:#}");
    assert_eq!((code, d["verdict"].as_str()), (0, Some("pass")), "caught: {d:#}");
    assert!(
        std::fs::read_dir(&runs).map(|r| r.count()).unwrap_or(0) == 0,
        "the run folder (and its database) is removed"
    );
}

#[test]
fn the_live_catalogue_passes_with_every_anti_pattern_caught() {
    let _serial = serial();
    let runs = run_root("catalogue");
    let out = Command::new(env!("CARGO_BIN_EXE_agentdrill"))
        .current_dir(root())
        .args(["run", "scenarios/live/", "--format", "json"])
        .env("AGENTDRILL_PYTHON", python())
        .env("AGENTDRILL_NODE", node())
        .env("AGENTDRILL_RUN_DIR", &runs)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run agentdrill");
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("no JSON ({e}); stderr:\n{}", String::from_utf8_lossy(&out.stderr)));
    let drills = v["drills"].as_array().expect("drills");
    assert!(drills.len() >= 8, "{}", drills.len());
    for d in drills {
        assert_eq!(d["mode"], "live", "{d:#}");
        assert_eq!(d["verdict"], "pass", "{}: {:#}", d["scenario"], d["violations"]);
        if d["expect"] == "fail" && d["region"].is_object() {
            // A region drill meant to fail (a lag spike before the loss) is
            // caught by what the promoted standby lacks: RPO from the data.
            let rpo_s = d["rpo_surfaces"]["structured_state_s"].as_f64();
            assert!(rpo_s > Some(0.0), "{}: caught by RPO measured from the data: {d:#}", d["scenario"]);
            assert!(d["region"]["rpo"].is_object(), "{}: the RPO report is there: {d:#}", d["scenario"]);
        } else if d["expect"] == "fail" {
            let caught = d["duplicates"].as_u64() > Some(0)
                || d["stale_writes"].as_u64() > Some(0)
                || d["counts"]["stale_actions"].as_u64() > Some(0)
                || d["counts"]["concurrent_runs"].as_u64() > Some(0);
            assert!(caught, "{}: caught by duplicates, stale writes or two workers on a step: {d:#}", d["scenario"]);
        } else {
            // Passing drills: two workers never ran one step, measured at
            // the fakes whatever the stack.
            assert_eq!(d["counts"]["concurrent_runs"], 0, "{}: {d:#}", d["scenario"]);
            assert_eq!(d["counts"]["stale_actions"], 0, "{}: {d:#}", d["scenario"]);
            assert_eq!(d["stuck_tasks"], 0, "{}: not caught by accident: {d:#}", d["scenario"]);
        }
    }
    assert!(drills.iter().filter(|d| d["expect"] == "fail").count() >= 7);
    node_drills_match_their_python_twins(drills);
    assert_eq!(out.status.code(), Some(0));
}

/// The node agent (`scenarios/live/node-*.toml`, run with the catalogue)
/// under the same schedules as the python agent: the same verdict and the
/// same catch, every job done with one effect per step where it passes; a
/// SIGKILL at the kill point; and the drill of its own leases (two
/// replicas, one frozen past its lease) passing with no concurrent run.
fn node_drills_match_their_python_twins(drills: &[Value]) {
    let named = |n: &str| drills.iter().find(|d| d["scenario"] == n).unwrap_or_else(|| panic!("{n} ran"));
    let node: Vec<&Value> =
        drills.iter().filter(|d| d["scenario"].as_str().is_some_and(|s| s.starts_with("live-node-"))).collect();
    assert!(node.len() >= 10, "the node drills ran with the catalogue: {}", node.len());
    for d in &node {
        let name = d["scenario"].as_str().expect("name");
        assert!(d["wall_s"].as_f64() < Some(15.0), "{name}: a node drill stays short: {d:#}");
        if d["expect"] == "pass" {
            assert_eq!(d["counts"]["done_tasks"], 10, "{name}: {d:#}");
            assert_eq!(d["counts"]["side_effects"], 20, "{name}: a charge and an email per job: {d:#}");
            assert_eq!(d["duplicates"], 0, "{name}: {d:#}");
            assert_eq!(d["lost_effects"], 0, "{name}: {d:#}");
        }
        let exits = d["process_exits"].as_array().expect("exit records");
        assert!(exits.iter().all(|x| x["by_harness"] == true), "{name}: no unexpected exit: {exits:#?}");
        if d["faults"][0]["kind"] == "kill_at_call" {
            assert!(d["faults"][0]["onset_s"].as_f64().is_some(), "{name}: the kill point fired: {d:#}");
            assert!(exits.iter().any(|x| x["signal"] == 9), "{name}: the agent was SIGKILLed: {exits:#?}");
        }
    }
    let pause = named("live-node-worker-pause-past-lease");
    assert_eq!(pause["counts"]["concurrent_runs"], 0, "the zombie stopped itself: {pause:#}");
    assert!(pause["faults"][0]["onset_s"].as_f64().is_some(), "the pause point fired: {pause:#}");
    for (twin, python) in [
        ("worker-kill-before-commit", "live-python-worker-kill-before-commit"),
        ("worker-kill-after-commit", "live-python-worker-kill-after-commit"),
        ("worker-kill-after-response", "live-python-worker-kill-after-response"),
        ("non-dedupe-email-reconcile", "live-python-non-dedupe-email-reconcile"),
        ("antipattern-key-from-clock", "live-python-antipattern-key-from-clock"),
        ("antipattern-checkpoint-after-step", "live-python-antipattern-checkpoint-after-step"),
        ("worker-kill-at-model-call", "live-python-worker-kill-at-model-call"),
        ("provider-outage-fallback", "live-python-provider-outage-fallback"),
        ("antipattern-resume-without-reconcile", "live-python-antipattern-resume-without-reconcile"),
    ] {
        let (n, p) = (named(&format!("live-node-{twin}")), named(python));
        for field in ["expect", "verdict", "met_targets"] {
            assert_eq!(n[field], p[field], "{twin}: {field} as the python agent's: node {n:#}\npython {p:#}");
        }
        let caught = |d: &Value| d["duplicates"].as_u64() > Some(0);
        assert_eq!(caught(n), caught(p), "{twin}: caught as the python agent's: node {n:#}\npython {p:#}");
    }
}

#[test]
fn node_drills_run_the_python_agents_schedules() {
    // The twins differ in the agent they start, nothing else: the same
    // faults, fakes, jobs, seed and expectation.
    let strip = |file: &str| -> String {
        let text = std::fs::read_to_string(root().join("scenarios/live").join(file)).expect("read scenario");
        let mut t: toml::Table = toml::from_str(&text).expect("TOML");
        for k in ["name", "purpose", "processes"] {
            t.remove(k);
        }
        toml::to_string(&t).expect("TOML")
    };
    for (node, python) in [
        ("node-worker-kill-before-commit.toml", "python-worker-kill-before-commit.toml"),
        ("node-worker-kill-after-commit.toml", "python-worker-kill-after-commit.toml"),
        ("node-worker-kill-after-response.toml", "python-worker-kill-after-response.toml"),
        ("node-non-dedupe-email-reconcile.toml", "python-non-dedupe-email-reconcile.toml"),
        ("node-antipattern-key-from-clock.toml", "antipattern-key-from-clock.toml"),
        ("node-antipattern-checkpoint-after-step.toml", "antipattern-checkpoint-after-step.toml"),
        ("node-worker-kill-at-model-call.toml", "python-worker-kill-at-model-call.toml"),
        ("node-provider-outage-fallback.toml", "python-provider-outage-fallback.toml"),
        ("node-antipattern-resume-without-reconcile.toml", "antipattern-resume-without-reconcile.toml"),
    ] {
        assert_eq!(strip(node), strip(python), "{node} runs {python}'s schedule");
    }
}

#[test]
fn key_made_from_the_clock_and_resume_without_reconcile_is_caught() {
    let _serial = serial();
    let runs = run_root("caught");
    let (code, d) = run_drill("scenarios/live/antipattern-key-from-clock.toml", &runs);
    assert!(d["duplicates"].as_u64().is_some_and(|n| n >= 1), "the re-issued charge is a duplicate: {d:#}");
    assert_eq!(d["met_targets"], false, "{d:#}");
    assert_eq!((code, d["verdict"].as_str()), (0, Some("pass")), "caught, so the anti-pattern drill passes: {d:#}");
}

#[test]
fn the_python_agent_reconciles_an_email_in_flight_and_checkpoint_after_step_is_caught() {
    let _serial = serial();
    let runs = run_root("email");
    let (code, d) = run_drill("scenarios/live/python-non-dedupe-email-reconcile.toml", &runs);
    assert_eq!((code, d["verdict"].as_str()), (0, Some("pass")), "{d:#}");
    assert_eq!(d["duplicates"], 0, "{d:#}");
    assert_eq!(d["replanned_steps"], 0, "measured from the ledgers against the script: {d:#}");
    assert_eq!(d["counts"]["side_effects"], 20, "{d:#}");
    let unmeasured = d["unmeasured"].as_array().expect("unmeasured");
    assert!(unmeasured.iter().any(|u| u == "stale_writes"), "a foreign stack's writes are not judged: {d:#}");
    let (code, d) = run_drill("scenarios/live/antipattern-checkpoint-after-step.toml", &runs);
    assert!(d["duplicates"].as_u64().is_some_and(|n| n >= 1), "the email is sent again: {d:#}");
    assert_eq!(d["stuck_tasks"], 0, "{d:#}");
    assert_eq!((code, d["verdict"].as_str()), (0, Some("pass")), "caught: {d:#}");
}

/// Pids whose environment carries `marker`.
fn marked(marker: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        if std::fs::read(format!("/proc/{pid}/environ"))
            .is_ok_and(|env| env.split(|&b| b == 0).any(|kv| kv == marker.as_bytes()))
        {
            out.push(pid);
        }
    }
    out
}

fn listening(addr: &str) -> bool {
    std::net::TcpStream::connect_timeout(&addr.parse().expect("addr"), Duration::from_millis(200)).is_ok()
}

/// A live scenario whose process listens, and forks a child that escapes
/// into a session of its own (so neither the process-group kill nor
/// PR_SET_PDEATHSIG reaches it): only the next start's cleaning can.
fn orphan_scenario(dir: &Path, python: &Path) -> PathBuf {
    let script = dir.join("server.py");
    std::fs::write(
        &script,
        "import os, subprocess, http.server\n\
         subprocess.Popen(['sleep', '300'], start_new_session=True)\n\
         open(os.path.join(os.environ['AGENTDRILL_STATE_DIR'] + '.addr'), 'w').write(os.environ['AGENTDRILL_LISTEN_ADDR'])\n\
         h, p = os.environ['AGENTDRILL_LISTEN_ADDR'].rsplit(':', 1)\n\
         http.server.HTTPServer((h, int(p)), http.server.BaseHTTPRequestHandler).serve_forever()\n",
    )
    .expect("write server.py");
    let sc = dir.join("orphans.toml");
    std::fs::write(
        &sc,
        format!(
            "mode = \"live\"\ntier = \"batch\"\nhorizon = \"{{H}}\"\n[jobs]\ncount = 1\n[[processes]]\nname = \"server\"\ncommand = \"{}\"\nargs = [\"{}\"]\n[submit]\ncommand = [\"true\"]\n",
            python.display(),
            script.display()
        ),
    )
    .expect("write scenario");
    sc
}

#[test]
fn a_harness_killed_mid_drill_leaves_no_orphans_after_the_next_start() {
    let _serial = serial();
    let python = python();
    let runs = run_root("orphans");
    let work = runs.join("work");
    std::fs::create_dir_all(&work).expect("work folder");
    let sc = orphan_scenario(&work, &python);
    let text = std::fs::read_to_string(&sc).expect("read");
    let long = work.join("long.toml");
    std::fs::write(&long, text.replace("{H}", "5m")).expect("write");
    let short = work.join("short.toml");
    std::fs::write(&short, text.replace("{H}", "1s")).expect("write");

    let mut harness = Command::new(env!("CARGO_BIN_EXE_agentdrill"))
        .args(["run", long.to_str().expect("utf-8")])
        .env("AGENTDRILL_RUN_DIR", &runs)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn agentdrill run");
    // Wait for the process to listen (it writes its address once started).
    let deadline = Instant::now() + Duration::from_secs(60);
    let run_dir = loop {
        let dir = std::fs::read_dir(&runs).expect("runs").flatten().map(|e| e.path()).find(|p| {
            p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(&format!("run-{}-", harness.id())))
        });
        if let Some(d) = dir
            && let Ok(addr) = std::fs::read_to_string(d.join("state/server.addr"))
            && listening(&addr)
        {
            break d;
        }
        assert!(Instant::now() < deadline, "the live drill's process never listened");
        std::thread::sleep(Duration::from_millis(50));
    };
    let addr = std::fs::read_to_string(run_dir.join("state/server.addr")).expect("addr");
    let marker = format!("AGENTDRILL_RUN_ID={}", run_dir.file_name().expect("name").to_string_lossy());
    let before = marked(&marker);
    assert!(before.len() >= 2, "the process and its escaped child run: {before:?}");

    harness.kill().expect("SIGKILL the harness");
    harness.wait().expect("reap");
    std::thread::sleep(Duration::from_millis(300));
    let escaped = marked(&marker);
    assert!(!escaped.is_empty(), "the escaped child outlives the harness (PDEATHSIG does not reach it)");
    assert!(!listening(&addr), "the direct child died with the harness (PR_SET_PDEATHSIG)");

    // The next start cleans up before it runs.
    let next = Command::new(env!("CARGO_BIN_EXE_agentdrill"))
        .args(["run", short.to_str().expect("utf-8")])
        .env("AGENTDRILL_RUN_DIR", &runs)
        .env("RUST_LOG", "warn")
        .output()
        .expect("next start");
    assert_eq!(next.status.code(), Some(1), "the short drill runs (its job is never done): {next:?}");
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(marked(&marker), Vec::<u32>::new(), "no process of the killed run is left");
    assert!(!run_dir.exists(), "the dead run's folder is removed");
    assert!(!listening(&addr), "nothing listens on the killed run's port");
    let _ = std::fs::remove_dir_all(&runs);
}

#[test]
fn a_process_that_exits_on_its_own_is_quoted_with_its_log_and_restarted() {
    let _serial = serial();
    let runs = run_root("unexpected");
    let sc = runs.join("crash.toml");
    std::fs::write(
        &sc,
        "mode = \"live\"\ntier = \"batch\"\nhorizon = \"2s\"\n[jobs]\ncount = 1\n[[processes]]\nname = \"crasher\"\ncommand = \"sh\"\nargs = [\"-c\", \"echo boom on stderr >&2; exit 3\"]\nrestart_delay = \"300ms\"\n[submit]\ncommand = [\"true\"]\n",
    )
    .expect("write scenario");
    let out = Command::new(env!("CARGO_BIN_EXE_agentdrill"))
        .args(["run", sc.to_str().expect("utf-8"), "--format", "json"])
        .env("AGENTDRILL_RUN_DIR", &runs)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run agentdrill");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "the job is never done: stuck; stderr:\n{stderr}");
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let d = &v["drills"][0];
    assert_eq!(d["stuck_tasks"], 1, "{d:#}");
    let exits = d["process_exits"].as_array().expect("exit records");
    let own: Vec<&Value> = exits.iter().filter(|x| x["by_harness"] == false).collect();
    assert!(own.len() >= 2, "exited, restarted after 300 ms, exited again: {exits:#?}");
    assert!(own.iter().all(|x| x["code"] == 3), "{exits:#?}");
    assert!(own[0]["log_tail"].as_str().is_some_and(|t| t.contains("boom on stderr")), "{exits:#?}");
    assert!(stderr.contains("exited unexpectedly (exit code 3)") && stderr.contains("boom on stderr"), "{stderr}");
    let _ = std::fs::remove_dir_all(&runs);
}
