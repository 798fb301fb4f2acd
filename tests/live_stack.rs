//! The live reference stack end to end: the fakes (in process), PostgreSQL
//! (`live::pg`, the local backend), and `agentdrill stack orchestrator` plus
//! two `agentdrill stack worker`s as real processes. Every job's script
//! steps are checked against the fakes' ledgers (ground truth): exactly one
//! effect per side-effecting step, also after workers and the orchestrator
//! are SIGKILLed right after a payment committed and its answer was lost
//! (in flight), and restarted on the same database.
//!
//! Needs PostgreSQL's `initdb`/`postgres` binaries (installed by
//! `cargo xtask test`); without them the tests fail naming that command.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentdrill::live::pg::{Cluster, PgNode, PgOptions};
use agentdrill::live::{LiveConfig, Served, Shared, control, lock};
use serde_json::{Value, json};

const LEASE_MS: u64 = 2_000;
const JOBS: [(u64, &str); 6] = [
    (1, "book_flight"),
    (2, "approve_refund"),
    (3, "research_report"),
    (4, "book_flight"),
    (5, "approve_refund"),
    (6, "book_flight"),
];

/// A child process killed (SIGKILL) and reaped when dropped.
struct Proc {
    child: Child,
}

impl Proc {
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_addr() -> String {
    let port = agentdrill::live::free_loopback_port().expect("a free loopback port");
    format!("127.0.0.1:{port}")
}

/// The stack: where each process listens and how to start it.
struct Stack {
    dir: PathBuf,
    env: Vec<(String, String)>,
    orch_addr: String,
    worker_addrs: [String; 2],
    policy: String,
}

impl Stack {
    fn spawn(&self, name: &str, args: &[&str], extra: &[(&str, String)]) -> Proc {
        let log = |suffix: &str| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.dir.join(format!("{name}.{suffix}")))
                .expect("log file")
        };
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_agentdrill"));
        cmd.args(["stack"]).args(args).stdin(Stdio::null()).stdout(log("out")).stderr(log("err"));
        cmd.env("AGENTDRILL_POLICY", &self.policy).env("AGENTDRILL_LEASE_MS", LEASE_MS.to_string());
        cmd.env("AGENTDRILL_REQUEST_TIMEOUT_MS", "2000").env("RUST_LOG", "info");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        for (k, v) in extra {
            cmd.env(k, v);
        }
        Proc { child: cmd.spawn().expect("the agentdrill binary starts") }
    }

    fn orchestrator(&self) -> Proc {
        self.spawn("orchestrator", &["orchestrator"], &[("AGENTDRILL_LISTEN_ADDR", self.orch_addr.clone())])
    }

    fn worker(&self, replica: usize) -> Proc {
        self.spawn(
            &format!("worker-{replica}"),
            &["worker"],
            &[
                ("AGENTDRILL_LISTEN_ADDR", self.worker_addrs[replica].clone()),
                ("AGENTDRILL_REPLICA", replica.to_string()),
                ("AGENTDRILL_PEER_ORCHESTRATOR_URL", format!("http://{}", self.orch_addr)),
            ],
        )
    }

    fn logs(&self) -> String {
        let mut out = String::new();
        for name in ["orchestrator", "worker-0", "worker-1"] {
            let err = std::fs::read_to_string(self.dir.join(format!("{name}.err"))).unwrap_or_default();
            let tail: Vec<&str> = err.lines().rev().take(15).collect();
            out += &format!("--- {name} (last lines of stderr)\n");
            for l in tail.into_iter().rev() {
                out += l;
                out += "\n";
            }
        }
        out
    }
}

/// A run folder for this test, removed at the end.
fn run_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("agentdrill-live-stack-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("run folder");
    d
}

async fn postgres(dir: &Path, name: &str) -> PgNode {
    let opts = PgOptions::local(dir, name);
    match Cluster::start_primary(&opts).await {
        Ok(n) => n,
        Err(e) => panic!(
            "PostgreSQL could not be started for the live stack test: {e}\n\
             install what the tests need with `cargo xtask test` (it installs Debian's postgresql), then run again"
        ),
    }
}

async fn fakes() -> Served {
    let cfg = LiveConfig { seed: 11, processing_ms: 50, ..LiveConfig::default() };
    agentdrill::live::start(cfg).await.expect("the fakes start on free ports")
}

fn stack(served: &Served, db: &PgNode, dir: &Path, policy: &str) -> Stack {
    let mut env: Vec<(String, String)> = served.env().into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
    env.push(("DATABASE_URL".into(), db.url()));
    Stack {
        dir: dir.to_owned(),
        env,
        orch_addr: free_addr(),
        worker_addrs: [free_addr(), free_addr()],
        policy: policy.to_owned(),
    }
}

async fn submit_all(client: &reqwest::Client, s: &Stack) {
    let deadline = Instant::now() + Duration::from_secs(30);
    for (job, workflow) in JOBS {
        loop {
            let r = client
                .post(format!("http://{}/jobs", s.orch_addr))
                .json(&json!({ "job": job, "workflow": workflow }))
                .send()
                .await;
            if r.as_ref().is_ok_and(|r| r.status().is_success()) {
                break;
            }
            assert!(Instant::now() < deadline, "job {job} was never accepted: {r:?}\n{}", s.logs());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Waits until the stack reports every job done (its own view; the check
/// itself reads the ledgers).
async fn wait_done(client: &reqwest::Client, s: &Stack) {
    let deadline = Instant::now() + Duration::from_secs(90);
    for (job, _) in JOBS {
        loop {
            let r = client.get(format!("http://{}/jobs/{job}", s.orch_addr)).send().await;
            let status = match r {
                Ok(r) if r.status().is_success() => r.json::<Value>().await.ok().map(|v| v["status"].clone()),
                _ => None,
            };
            if status.as_ref().is_some_and(|v| v == "done") {
                break;
            }
            assert!(Instant::now() < deadline, "job {job} not done (status {status:?})\n{}", s.logs());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// (job, step, effects) of every side-effecting script step, from the ledgers.
fn effects(shared: &Arc<Shared>) -> Vec<(u64, u64, u64)> {
    let mut out = Vec::new();
    for (job, workflow) in JOBS {
        let report = control::job_report(shared, &shared.script, job as u32, Some(workflow)).expect("a template");
        for s in report["steps"].as_array().expect("steps") {
            if s["side_effect"] == true {
                out.push((job, s["step"].as_u64().unwrap(), s["effects"].as_u64().unwrap()));
            }
        }
    }
    out
}

fn assert_exactly_once(shared: &Arc<Shared>, s: &Stack) {
    let e = effects(shared);
    assert!(e.len() >= JOBS.len(), "every job has a side effect: {e:?}");
    let wrong: Vec<_> = e.iter().filter(|(_, _, n)| *n != 1).collect();
    assert!(wrong.is_empty(), "steps without exactly one effect (job, step, effects): {wrong:?}\n{}", s.logs());
}

/// Waits until the payment fake has committed an effect whose answer it
/// then dropped (the `reset_peer` toxic with `after_effect`).
async fn wait_answer_lost(shared: &Arc<Shared>, s: &Stack) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let lost = || lock(&shared.attempts).attempts.iter().any(|a| a.fake == "payment" && a.status == 0);
    while !lost() {
        assert!(Instant::now() < deadline, "no payment answer was ever dropped\n{}", s.logs());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn toxic(client: &reqwest::Client, served: &Served, body: Value) {
    let r = client.post(format!("http://{}/proxies/payment/toxics", served.control)).json(&body).send().await;
    assert!(r.is_ok_and(|r| r.status().is_success()), "toxic {body} refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_script_step_has_exactly_one_effect() {
    let dir = run_dir("plain");
    let db = postgres(&dir, "plain").await;
    let served = fakes().await;
    let s = stack(&served, &db, &dir, "");
    let _orch = s.orchestrator();
    let _workers = [s.worker(0), s.worker(1)];
    let client = reqwest::Client::new();
    submit_all(&client, &s).await;
    wait_done(&client, &s).await;
    assert_exactly_once(&served.shared, &s);
    // The durable store holds what happened: one event log, every task done.
    let c = db.connect().await.expect("connect");
    let done: i64 = c
        .query_one("SELECT count(*) FROM agentdrill.tasks WHERE status = 'done'", &[])
        .await
        .expect("tasks table")
        .get(0);
    assert_eq!(done, JOBS.len() as i64);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Kills every worker and the orchestrator (SIGKILL) right after the payment
/// fake committed a charge or refund and dropped its answer (in flight:
/// the effect happened, nobody saw it), before the sender's watchdog could
/// act, and restarts them on the same database. Returns the effects.
async fn kill_in_flight(name: &str, policy: &str) -> (Vec<(u64, u64, u64)>, Stack, PathBuf) {
    let dir = run_dir(name);
    let db = postgres(&dir, name).await;
    let served = fakes().await;
    let s = stack(&served, &db, &dir, policy);
    let client = reqwest::Client::new();
    let lose =
        json!({ "name": "lose-answer", "type": "reset_peer", "attributes": { "after_effect": true }, "count": 1 });
    toxic(&client, &served, lose).await;
    let mut orch = s.orchestrator();
    let mut workers = [s.worker(0), s.worker(1)];
    submit_all(&client, &s).await;
    wait_answer_lost(&served.shared, &s).await;
    for w in &mut workers {
        w.kill();
    }
    orch.kill();
    let _orch = s.orchestrator();
    let _workers = [s.worker(0), s.worker(1)];
    wait_done(&client, &s).await;
    let e = effects(&served.shared);
    drop(db);
    (e, s, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_in_flight_and_a_restart_still_give_one_effect_per_step() {
    let (e, s, dir) = kill_in_flight("kill", "").await;
    let wrong: Vec<_> = e.iter().filter(|(_, _, n)| *n != 1).collect();
    assert!(wrong.is_empty(), "steps without exactly one effect (job, step, effects): {wrong:?}\n{}", s.logs());
    let _ = std::fs::remove_dir_all(&dir);
}

/// The same kill with keys sampled from model output (anti-pattern 1): the
/// resumed step gets a new key and the payment API charges again. The check
/// that passes above catches it live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_from_model_output_anti_pattern_is_caught_live() {
    let (e, s, dir) = kill_in_flight("antipattern", "key_from_model_output").await;
    let dups: Vec<_> = e.iter().filter(|(_, _, n)| *n > 1).collect();
    assert!(!dups.is_empty(), "no duplicate effect under key_from_model_output: {e:?}\n{}", s.logs());
    let _ = std::fs::remove_dir_all(&dir);
}

/// Fencing in SQL: a write carrying a token the `tasks` row no longer has
/// is refused by the database transaction, whatever the process believed;
/// a store reloaded from the event log holds only what was committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_refuses_a_stale_fencing_token() {
    use agentdrill::components::ids::{HostId, IdemKey, JobId};
    use agentdrill::components::store::{Lease, Op, Store};
    use agentdrill::live::stack::pg::{Fence, PgError, PgStore};

    let dir = run_dir("fencing");
    let db = postgres(&dir, "fencing").await;
    let mut pg = PgStore::connect(&db.url()).await.expect("connect");
    let mut store = Store::new();
    let task = store.next_task_id();
    let (a, b) = (HostId(100), HostId(101));
    let step = |store: &mut Store, op| {
        let lsn = store.commit(1, op);
        store.log().get(lsn as usize - 1).expect("just committed")
    };
    let create =
        step(&mut store, Op::Create { task, job: JobId(1), template: 0, steps: 3, probe: false, replay: false });
    let lease_a = step(&mut store, Op::Lease { task, lease: Lease { holder: a, token: 1, expires_us: 10 } });
    pg.commit(&[create, lease_a], &store, None).await.expect("create and lease");
    let lease_b = step(&mut store, Op::Lease { task, lease: Lease { holder: b, token: 2, expires_us: 20 } });
    pg.commit(&[lease_b], &store, None).await.expect("the lease moves to b");
    let key = IdemKey::for_slot(task, 0);
    let intent = step(&mut store, Op::Intent { task, ordinal: 0, key, args: 5 });
    let stale = Fence { task, token: 1, holder: a };
    let err = pg.commit(&[intent], &store, Some(stale)).await.expect_err("a's write after the lease moved");
    assert!(matches!(err, PgError::Fenced { token: 1, .. }), "{err}");
    let loaded = pg.load().await.expect("reload");
    assert_eq!(loaded.last_lsn(), 3, "the refused write is not in the event log");
    assert_eq!(loaded.task(task).expect("task").lease.token, 2);
    let current = Fence { task, token: 2, holder: b };
    pg.commit(&[intent], &store, Some(current)).await.expect("b's write with the current token");
    assert_eq!(pg.load().await.expect("reload").last_lsn(), 4);
    drop(db);
    let _ = std::fs::remove_dir_all(&dir);
}

// ------------------------------------------------------------------------
// The live catalogue on the reference stack: `agentdrill run` of each
// `scenarios/live/reference-*.toml`, judged by the JSON it prints (the
// measurements come from the fakes' ledgers and, for stale writes, from the
// drill's PostgreSQL read after the drill).

/// One drill at a time: each starts PostgreSQL and three processes, and
/// their leases are timed in real seconds.
static DRILLS: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Runs `agentdrill run FILE --format json` in a run folder of its own:
/// the exit code and the drill's JSON.
fn drill(file: &str) -> (i32, Value) {
    let _one = DRILLS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let stem = Path::new(file).file_stem().expect("a file").to_string_lossy().into_owned();
    let runs = run_dir(&format!("drill-{stem}"));
    let out = Command::new(env!("CARGO_BIN_EXE_agentdrill"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["run", file, "--format", "json"])
        .env("AGENTDRILL_RUN_DIR", &runs)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run agentdrill");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "no JSON from agentdrill run {file} ({e}); stderr:\n{stderr}\n\
             (PostgreSQL missing? `cargo xtask test` installs it; `agentdrill doctor` tells which backends work)"
        )
    });
    let d = v["drills"][0].clone();
    assert_eq!(d["mode"], "live", "{file}: {d:#}\n{stderr}");
    assert_eq!(std::fs::read_dir(&runs).map(|r| r.count()).unwrap_or(0), 0, "{file}: the run folder is removed");
    let _ = std::fs::remove_dir_all(&runs);
    (out.status.code().unwrap_or(-1), d)
}

/// A reference drill that must pass: every job done, one charge and one
/// email each, nothing stale, nothing replanned, stale writes measured from
/// the database (not left unmeasured).
fn assert_clean_pass(file: &str) -> Value {
    let (code, d) = drill(file);
    assert_eq!((code, d["verdict"].as_str()), (0, Some("pass")), "{file}: {d:#}");
    for count in ["duplicates", "lost_effects", "stuck_tasks", "replanned_steps", "stale_writes"] {
        assert_eq!(d[count], 0, "{file}: {count}: {d:#}");
    }
    assert_eq!(d["counts"]["corrupted_writes"], 0, "{file}: {d:#}");
    assert_eq!(d["counts"]["done_tasks"], 10, "{file}: {d:#}");
    assert_eq!(d["counts"]["side_effects"], 20, "{file}: one charge and one email per job: {d:#}");
    let unmeasured = d["unmeasured"].as_array().expect("unmeasured");
    for count in ["stale_writes", "corrupted_writes", "stale_actions"] {
        assert!(!unmeasured.iter().any(|u| u == count), "{file}: {count} measured: {d:#}");
        assert!(d["measured_from"][count].as_str().is_some_and(|s| s.contains("agentdrill.")), "{d:#}");
    }
    // Two workers on one step: measured at the fakes, none in a passing drill.
    for count in ["stale_actions", "concurrent_runs"] {
        assert_eq!(d["counts"][count], 0, "{file}: {count}: {d:#}");
        assert!(!unmeasured.iter().any(|u| u == count), "{file}: {count} measured: {d:#}");
    }
    assert!(d["measured_from"]["concurrent_runs"].as_str().is_some_and(|s| s.contains("sender port")), "{d:#}");
    assert!(d["measured_from"]["stale_writes"].as_str().is_some_and(|s| s.contains("agentdrill.writes")), "{d:#}");
    let f = &d["faults"][0];
    assert!(f["onset_s"].as_f64().is_some(), "{file}: the fault fired: {f:#}");
    assert!(f["rto_s"].as_f64().is_some_and(|r| r > 0.0 && r < 120.0), "{file}: {f:#}");
    d
}

/// An anti-pattern drill: caught (verdict pass, targets missed) by the
/// named count and by no count that would mean it was caught by accident
/// (a stuck job, a lost effect).
fn assert_caught_by(file: &str, count: &str, violation: &str) -> Value {
    let (code, d) = drill(file);
    assert_eq!(d["met_targets"], false, "{file}: {d:#}");
    assert_eq!((code, d["verdict"].as_str()), (0, Some("pass")), "{file}: caught: {d:#}");
    let n = d[count].as_u64().or_else(|| d["counts"][count].as_u64());
    assert!(n.is_some_and(|n| n >= 1), "{file}: caught by {count}: {d:#}");
    let violations = d["violations"].as_array().expect("violations");
    assert!(violations.iter().any(|v| v.as_str().is_some_and(|v| v.starts_with(violation))), "{file}: {d:#}");
    for other in ["lost_effects", "stuck_tasks"] {
        assert_eq!(d[other], 0, "{file}: caught by {count}, not by {other}: {d:#}");
    }
    d
}

fn killed_by_harness(d: &Value) -> bool {
    let exits = d["process_exits"].as_array().expect("exit records");
    exits.iter().any(|x| x["by_harness"] == true && x["signal"] == 9)
}

#[test]
fn reference_worker_killed_before_commit_and_after_response_resumes_with_one_charge() {
    for file in [
        "scenarios/live/reference-worker-kill-before-commit.toml",
        "scenarios/live/reference-worker-kill-after-response.toml",
    ] {
        let d = assert_clean_pass(file);
        assert!(killed_by_harness(&d), "{file}: a worker was SIGKILLed: {d:#}");
    }
}

#[test]
fn reference_zombie_paused_past_its_lease_is_fenced_and_no_fencing_is_caught_as_stale_writes() {
    // The same pause (job 3's charge answered into a frozen worker, 6 s
    // against a 2 s lease) twice: with fencing nothing stale reaches
    // PostgreSQL; without it the zombie's write does, and the drill reads
    // it back from the event log.
    let d = assert_clean_pass("scenarios/live/reference-zombie-pause.toml");
    assert!(!killed_by_harness(&d), "a pause, not a kill: {d:#}");
    let d = assert_caught_by(
        "scenarios/live/reference-antipattern-no-fencing.toml",
        "stale_writes",
        "stale writes (fencing)",
    );
    assert_eq!(d["faults"][0]["kind"], "pause_at_call", "{d:#}");
}

#[test]
fn reference_short_lease_is_caught_as_concurrent_runs_and_with_no_fencing_as_stale_actions() {
    // A 1 s lease without renewal under 1.5 s tool calls: a second worker
    // takes the step while the first one's call is being processed (the
    // fakes see both senders' requests by port). Keys from the task keep
    // the effects single, so only the concurrent runs show; the first
    // holder drops the task when its call returns (its lease check).
    let d = assert_caught_by(
        "scenarios/live/reference-antipattern-short-lease.toml",
        "concurrent_runs",
        "concurrent runs (two workers on one step at once)",
    );
    assert_eq!(d["counts"]["stale_actions"], 0, "the first holder stops at its lease check: {d:#}");
    assert_eq!(d["duplicates"], 0, "{d:#}");
    // Without fencing it carries on: its next side effects are sent under
    // a lease the event log shows granted to another.
    let d = assert_caught_by(
        "scenarios/live/reference-antipattern-short-lease-no-fencing.toml",
        "stale_actions",
        "stale actions (two workers ran a step)",
    );
    assert!(d["measured_from"]["stale_actions"].as_str().is_some_and(|s| s.contains("agentdrill.event_log")), "{d:#}");
    assert!(d["stale_writes"].as_u64().is_some_and(|n| n >= 1), "{d:#}");
}

#[test]
fn reference_provider_outage_falls_back_and_work_goes_on() {
    let d = assert_clean_pass("scenarios/live/reference-provider-outage-fallback.toml");
    assert!(d["cost"]["model_calls"].as_u64().is_some_and(|n| n > 0), "{d:#}");
}

#[test]
fn reference_non_deduplicating_email_is_reconciled_and_its_anti_patterns_are_caught_as_duplicates() {
    let d = assert_clean_pass("scenarios/live/reference-non-dedupe-email-reconcile.toml");
    assert!(killed_by_harness(&d), "{d:#}");
    for file in [
        "scenarios/live/reference-antipattern-checkpoint-after-step.toml",
        "scenarios/live/reference-antipattern-resume-without-reconcile.toml",
    ] {
        let d = assert_caught_by(file, "duplicates", "duplicate side effects");
        assert_eq!(d["stale_writes"], 0, "{file}: no fencing involved: {d:#}");
    }
}
