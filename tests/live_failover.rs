//! Live region loss (issue 12): RPO from the data against a known lag, the
//! live failover patterns against their simulated twins, and a harness
//! SIGKILLed mid-failover leaving nothing behind after the next run.
//!
//! They start PostgreSQL 15 and the reference stack; without PostgreSQL they
//! fail naming `cargo xtask test`, which installs it.

#[path = "common/procfs.rs"]
mod procfs;
use procfs::{alive, listening};

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use agentdrill::live::failover::NetLink;
use agentdrill::live::net::{Endpoint, Network, Selector};
use agentdrill::live::pg::{self, Cluster, PgOptions, Replication, RpoTable};

const BIN: &str = env!("CARGO_BIN_EXE_agentdrill");

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

fn run_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("agentdrill-failover-test-{test}"));
    let _ = pg::cleanup_stale(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create the test's run folder");
    dir
}

/// The replication interval of the pair (`wal_receiver_status_interval`).
const REPLICATION_INTERVAL_MS: f64 = 1_000.0;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_standby_rpo_is_the_known_replication_lag() {
    let dir = run_dir("rpo-lag");
    let opts = PgOptions::local(&dir, "test-rpo-lag");
    let mut primary = Cluster::start_primary(&opts).await.unwrap_or_else(|e| panic!("{e}"));
    let net = Network::new(1);
    let (standby_end, primary_end) =
        (Endpoint::component("postgres-standby", Some("b")), Endpoint::component("postgres-primary", Some("a")));
    let link = NetLink::add(&net, standby_end, primary_end, primary.addr()).await.expect("link");
    let standby = Cluster::start_standby(&opts.named("standby", "b"), &primary, link.addr(), Replication::Asynchronous)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let db = primary.connect().await.expect("connect");
    db.batch_execute("CREATE TABLE t (id int PRIMARY KEY)").await.expect("create");
    // The table reaches the standby before the lag starts.
    let sb = standby.connect().await.expect("connect standby");
    let start = Instant::now();
    while !sb.query_one("SELECT to_regclass('public.t') IS NOT NULL", &[]).await.expect("q").get::<_, bool>(0) {
        assert!(start.elapsed() < Duration::from_secs(10), "the table did not reach the standby in 10 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let lag_ms = 1_500u64;
    link.set_latency_ms(lag_ms);
    // Four seconds of acknowledged commits, one every 50 ms.
    for i in 0..80 {
        db.execute("INSERT INTO t VALUES ($1)", &[&i]).await.expect("insert (acknowledged)");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Region loss: the regions cut apart (what the link held never arrives),
    // the primary killed.
    net.cut(Selector::Region("a".into()), Selector::Region("b".into()));
    primary.kill().expect("kill");
    let fault_at = SystemTime::now();
    standby.promote().await.expect("promote");
    let report = pg::rpo::measure(&mut primary, &standby, &[RpoTable::new("t", "id")], fault_at)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let lost = report.lost;
    assert!(lost > 0, "an async standby 1.5 s behind lacks the last commits: {report:?}");
    assert!(
        (report.rpo_ms - lag_ms as f64).abs() <= REPLICATION_INTERVAL_MS,
        "RPO {:.0} ms is not within one replication interval ({REPLICATION_INTERVAL_MS} ms) of the {lag_ms} ms lag: {report:?}",
        report.rpo_ms
    );
    // The lost rows are the newest ones, contiguous to the end.
    let mut keys: Vec<i32> = report.tables[0].lost_keys.iter().map(|k| k.parse().expect("int key")).collect();
    keys.sort();
    assert_eq!(keys, ((80 - lost as i32)..80).collect::<Vec<_>>(), "{report:?}");
    net.shutdown().await;
    drop((standby, primary));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_standby_restored_from_a_base_backup_lacks_what_came_after_it() {
    let dir = run_dir("cold-restore");
    let opts = PgOptions::local(&dir, "test-cold-restore");
    let mut primary = Cluster::start_primary(&opts).await.unwrap_or_else(|e| panic!("{e}"));
    // The backups cross the regions through a harness link.
    let net = Network::new(1);
    let (backups_end, primary_end) =
        (Endpoint::component("postgres-backups", Some("b")), Endpoint::component("postgres-primary", Some("a")));
    let link = NetLink::add(&net, backups_end, primary_end, primary.addr()).await.expect("link");
    let db = primary.connect().await.expect("connect");
    db.batch_execute("CREATE TABLE t (id int PRIMARY KEY, v int)").await.expect("create");
    for i in 0..20 {
        db.execute("INSERT INTO t VALUES ($1, 0)", &[&i]).await.expect("insert before the backup");
    }
    let held = opts.named("backups", "b");
    let first = Cluster::base_backup(&held, link.addr(), 1).await.unwrap_or_else(|e| panic!("{e}"));
    // After the backup: new rows, and an update of a backed-up row.
    for i in 20..40 {
        db.execute("INSERT INTO t VALUES ($1, 0)", &[&i]).await.expect("insert after the backup");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    db.execute("UPDATE t SET v = 1 WHERE id = 3", &[]).await.expect("update after the backup");
    net.cut(Selector::Region("a".into()), Selector::Region("b".into()));
    primary.kill().expect("kill");
    let fault_at = SystemTime::now();
    let restored = Cluster::start_restored(&opts.named("standby", "b"), &first).await.unwrap_or_else(|e| panic!("{e}"));
    assert!(!restored.is_standby().await.expect("is_standby"), "a restored node is a primary");
    let rdb = restored.connect().await.expect("connect restored");
    // A restore ends on a new timeline, as a promotion does: the stack
    // reads it to learn that its store was promoted.
    let wal: String =
        rdb.query_one("SELECT pg_walfile_name(pg_current_wal_lsn())", &[]).await.expect("timeline").get(0);
    assert_eq!(&wal[..8], "00000002", "restored onto timeline 2: {wal}");
    rdb.execute("INSERT INTO t VALUES (1000, 0)", &[]).await.expect("the restored node takes writes");
    let rows: i64 = rdb.query_one("SELECT count(*) FROM t WHERE id < 1000", &[]).await.expect("count").get(0);
    assert_eq!(rows, 20, "the restored node has exactly the rows of the backup");
    let report = pg::rpo::measure(&mut primary, &restored, &[RpoTable::new("t", "id")], fault_at)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut keys: Vec<i32> = report.tables[0].lost_keys.iter().map(|k| k.parse().expect("int key")).collect();
    keys.sort();
    let mut want: Vec<i32> = (20..40).collect();
    want.push(3);
    want.sort();
    assert_eq!(keys, want, "lost: every commit after the backup and none before: {report:?}");
    // The oldest lost commit came after the backup ended: the RPO is at
    // most the backup's age at the fault.
    let backup_age_ms =
        fault_at.duration_since(first.taken_at).expect("the fault is after the backup").as_secs_f64() * 1e3;
    assert!(
        report.rpo_ms > 0.0 && report.rpo_ms <= backup_age_ms,
        "RPO {} ms, backup age {backup_age_ms} ms",
        report.rpo_ms
    );
    net.shutdown().await;
    drop((restored, primary));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A drill's JSON result (the `run --format json` contract).
fn run_json(file: &Path, env: &[(&str, &Path)]) -> serde_json::Value {
    let out = Command::new(BIN)
        .current_dir(root())
        .args(["run", "--format", "json"])
        .arg(file)
        .envs(env.iter().map(|(k, v)| (*k, *v)))
        .output()
        .expect("run agentdrill");
    let text = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!("{}: not JSON ({e}); stderr:\n{}", file.display(), String::from_utf8_lossy(&out.stderr))
    });
    v["drills"][0].clone()
}

/// The simulated twin of a live region drill: the same stack shape (workers
/// per region, scale-up), failover timings, lease, workload and fault, with
/// model and API latencies as small as the live fakes' (the live reference
/// worker answers the read-only search tool in-process: no latency; the
/// simulator's default is 500 ms a search, which hid a second's difference
/// a job in every twin), and the live submitter's own resend timings, read
/// from the live file (see [`sim_twin`]).
/// The stack's shape and timings a live region drill and its twin share.
struct Twin<'a> {
    tier: &'a str,
    pattern: &'a str,
    replication: &'a str,
    promotion: &'a str,
    scale_up: &'a str,
    standby_workers: u32,
    loss_at: &'a str,
}

/// The twin of the live drill `live_file` (its shape and timings in `t`).
/// The client's resend timings are the live submitter's, taken from the
/// live file: `[jobs] submit_retry` (250 ms by default there, where the
/// simulated workload's default is 5 s) and `resubmit_after`. Without
/// them the twin was not the drill: jobs submitted during the outage were
/// retried every 5 s, so in the twin they reached region b seconds after
/// the recovery scan had requeued the stranded jobs, while live they are
/// all accepted within 250 ms of the switch, ahead of the stranded jobs the
/// scan requeues half a second later, which then run last (active-active:
/// the twin's resume 3.31 s against live 6.5-8.6 s; with the live
/// submitter's retry it is 8.8 s).
///
/// The store and the links are the live machine's too: the live regions
/// are one machine's processes, every link a loopback socket through a
/// harness proxy (1 ms a message in the twin, not the simulator's default
/// 35 ms between regions), and the live orchestrator waits for each
/// PostgreSQL commit before it handles the next message (`commit_ms`, the
/// median the live drill measured, 21 ms here; the simulator's default
/// commits cost nothing). Before both (2026-12-01) the twins ran on 35 ms
/// links with free commits, and matched the warm and cold drills only
/// because one error made up for the other. And the twin does not probe
/// (`probes = false`): the live harness submits no probe, so its RTO's new
/// work is the first job created after the onset, which waits behind the
/// backlog; the twin's one-step probe finished 1.2 s sooner (active-active:
/// 4.19 s against live 5.5 s, and a cliff to 6.01 s at 23 ms commits).
fn sim_twin(live_file: &str, t: &Twin, commit_ms: f64) -> String {
    let loaded = agentdrill::live::scenario::load(&root().join(live_file)).unwrap_or_else(|e| panic!("{e}"));
    let jobs = &loaded.scenario.jobs;
    let (submit_retry, resubmit_after) = (jobs.submit_retry.ms(), jobs.resubmit_after.ms());
    let Twin { tier, pattern, replication, promotion, scale_up, standby_workers, loss_at } = t;
    let commit_ms_int = commit_ms.round() as u64;
    format!(
        r#"purpose = "simulated twin of a live region drill"
tier = "{tier}"
seed = 11
horizon = "120s"

[stack]
pattern = "{pattern}"
workers = 2
standby_workers = {standby_workers}
policy = {{ lease_ms = 2000 }}
replication = {replication}
failover = {{ health_interval = "{HEALTH_INTERVAL_MS}ms", health_timeout = "500ms", failure_threshold = 2, promotion = "{promotion}", dns_ttl = "2s", scale_up = "{scale_up}" }}
recovery_scan = "{RECOVERY_SCAN_MS}ms"
request_timeout = "2s"
commit_latency = "{commit_ms_int}ms"
network = {{ intra_region_latency_us = 1000, intra_region_jitter_us = 0, cross_region_latency_us = 1000, cross_region_jitter_us = 0 }}
vector = {{ streaming_replica = true, restore_base = "0s", restore_per_point_us = 0 }}
providers = [{{ name = "anthropic", kind = "anthropic", base_latency_ms = 20, latency_per_output_token_us = 0, cold_extra_latency_ms = 0 }}]
apis = {{ payment_latency = "50ms", email_latency = "50ms", search_latency = "0s" }}

[workload]
templates = ["book_flight"]
tasks = 24
interval = "250ms"
submit_retry = "{submit_retry}ms"
resubmit_after = "{resubmit_after}ms"
probes = false

[[faults]]
kind = "region_loss"
at = "{loss_at}"
region = "a"
"#
    )
}

/// The twin's health-check period, as in the live files' `failover`.
const HEALTH_INTERVAL_MS: u64 = 1_000;
/// The twin's recovery-scan period, as in the live files' `recovery_scan`.
const RECOVERY_SCAN_MS: u64 = 500;
/// One health-check period plus one recovery-scan period (seconds): how far a
/// live loss's phase against those schedules can move its RTO from the
/// simulated twin's.
const PHASE_SLACK_S: f64 = (HEALTH_INTERVAL_MS + RECOVERY_SCAN_MS) as f64 / 1_000.0;

fn compare_with_twin(live_file: &str, twin: &Twin, test: &str) {
    let dir = run_dir(test);
    let live = run_json(&root().join(live_file), &[("AGENTDRILL_RUN_DIR", &dir)]);
    let commit_ms = live["store_commit"]["p50_ms"].as_f64();
    let Some(commit_ms) = commit_ms.filter(|&ms| ms > 0.0) else {
        panic!("the live drill reports its store's commit latency: {:#}", live["store_commit"])
    };
    let twin = sim_twin(live_file, twin, commit_ms);
    let twin_path = dir.join("twin.toml");
    std::fs::write(&twin_path, &twin).expect("write the twin");
    let sim = run_json(&twin_path, &[]);
    let (l, s) = (live["rto_s"].as_f64(), sim["rto_s"].as_f64());
    let (Some(l), Some(s)) = (l, s) else { panic!("both must recover: live {l:?}, simulated {s:?}") };
    eprintln!(
        "{live_file}: live RTO {l:.2} s {:?}, simulated {s:.2} s {:?} (commits {commit_ms:.1} ms)",
        live["rto_parts"], sim["rto_parts"]
    );
    assert_eq!(live["verdict"], sim["verdict"], "live {live:#}\nsimulated {sim:#}");
    // The simulated twin meets the loss at one phase of the two periodic
    // schedules the RTO runs through (the health checks, every
    // `HEALTH_INTERVAL_MS`, and the recovery scan, every `RECOVERY_SCAN_MS`:
    // the twin's and the live files'); a live loss lands at any phase of them,
    // so its detection and its resume may each be up to one period later or
    // earlier than the twin's (CI on 2026-12-04: detection 2.49 s live
    // against 1.5 s simulated, RTO 7.28 s against 5.55 s).
    let allowed_s = 0.2 * s + PHASE_SLACK_S;
    assert!(
        (l - s).abs() <= allowed_s,
        "live RTO {l:.2} s is not within 20 % + {PHASE_SLACK_S} s (the health check's and recovery scan's \
         periods) of the simulated {s:.2} s"
    );
    assert_eq!(live["duplicates"], 0);
    assert!(live["region"]["rpo"].is_object(), "RPO measured from the data: {:#}", live["region"]);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Live drills measure real time: one at a time, so a drill's RTO is not
/// another drill's CPU load (the twins are compared within 20 %).
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[test]
fn warm_standby_live_matches_its_simulated_twin() {
    let _serial = serial();
    compare_with_twin(
        "scenarios/live/region-warm-standby-async.toml",
        &Twin {
            tier: "customer-facing",
            pattern: "warm_standby",
            replication: "{ mode = \"async\", lag_ms = 50, interval_ms = 50 }",
            promotion: "0s",
            scale_up: "500ms",
            standby_workers: 1,
            loss_at: "3s",
        },
        "twin-warm",
    );
}

#[test]
fn active_active_live_matches_its_simulated_twin() {
    let _serial = serial();
    compare_with_twin(
        "scenarios/live/region-active-active-sync.toml",
        &Twin {
            tier: "customer-facing",
            pattern: "active_active",
            replication: "{ mode = \"sync\" }",
            promotion: "0s",
            scale_up: "0s",
            standby_workers: 2,
            loss_at: "3s",
        },
        "twin-aa",
    );
}

// Issue 12: both RTOs follow DOMAIN.md's definition (the live one from the
// reference stack's event logs). The live drill was bimodal (RTO 7.8-8.6 s
// or 10.9-12.2 s) for two reasons, both fixed: the backup due at 2 s
// sometimes ended after a loss at 3 s (restored from the start's backup:
// 3 s of jobs run again), and the jobs held back after the promotion ran
// in the order the client's retries reached region b, so the jobs in
// flight at the fault ran first or last by chance (the orchestrator now
// releases them oldest submission first). 20 runs after both fixes: 8.1 to
// 9.8 s, and 9.4 to 10.0 s with a build running beside them, against the
// twin's 8.44 s (limit 10.13 s).
#[test]
fn cold_standby_live_matches_its_simulated_twin() {
    let _serial = serial();
    // Region b's database restored from the latest base backup (every 2 s):
    // the simulator ships the state every 2 s; the restore takes about 1 s
    // live (a copy of the backup and a server start), the twin's promotion.
    // The jobs acknowledged after the latest backup are resubmitted by the
    // client after 3 s, in both.
    compare_with_twin(
        "scenarios/live/region-cold-standby-restore.toml",
        &Twin {
            tier: "customer-facing",
            pattern: "cold_standby",
            replication: "{ mode = \"async\", lag_ms = 0, interval_ms = 2000 }",
            promotion: "1s",
            scale_up: "500ms",
            standby_workers: 0,
            loss_at: "3500ms",
        },
        "twin-cold",
    );
}

/// A partition between the regions: its RTO splits into detection (the
/// onset until the event log's first requeue, a lease found expired) and
/// resume (the rest), measured on the live drill.
#[test]
fn partition_between_regions_reports_detection_and_resume() {
    let _serial = serial();
    let dir = run_dir("partition");
    let live = run_json(
        &root().join("scenarios/live/reference-partition-between-regions.toml"),
        &[("AGENTDRILL_RUN_DIR", &dir)],
    );
    assert_eq!(live["verdict"], "pass", "{live:#}");
    let rto = live["rto_s"].as_f64().expect("recovered");
    let parts = &live["rto_parts"];
    let (detection, resume) = (parts["detection_s"].as_f64().unwrap(), parts["resume_s"].as_f64().unwrap());
    eprintln!("partition: RTO {rto:.2} s, detection {detection:.2} s, resume {resume:.2} s");
    // No lease can be found expired before it runs out: a lease of 2 s,
    // renewed every third of it, outlives the cut's onset by 4/3 s at least
    // (less the last renewal's own delay, hence 1 s).
    assert!(detection >= 1.0, "detection {detection} s is shorter than a lease can expire: {parts}");
    assert!(resume > 0.0, "the requeued tasks still had to finish: {parts}");
    assert!((detection + resume - rto).abs() < 1e-3, "the parts add up to the RTO {rto}: {parts}");
    for other in ["routing_s", "scale_up_s", "hydration_s"] {
        assert_eq!(parts[other].as_f64(), Some(0.0), "no failover in a partition: {parts}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn docker_answers() -> bool {
    Command::new("docker")
        .args(["info"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn sigkilled_harness_mid_failover_leaves_nothing_after_the_next_run() {
    let _serial = serial();
    let dir = run_dir("sigkill-failover");
    let file = root().join("scenarios/live/region-warm-standby-async.toml");
    let mut child = Command::new(BIN)
        .current_dir(root())
        .args(["run", "--format", "json"])
        .arg(&file)
        .env("AGENTDRILL_RUN_DIR", &dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn agentdrill");
    let run =
        dir.join(format!("run-{}-{}", child.id(), agentdrill::live::supervisor::start_ticks(child.id()).unwrap_or(0)));
    // The stack is up once the supervisor wrote its pids; the loss comes
    // 3 s after the first submission, detection 1.5 s later: kill it at
    // about 5 s, between the promotion and the switch.
    let start = Instant::now();
    while !run.join("pids").exists() {
        assert!(child.try_wait().expect("wait").is_none(), "agentdrill ended before its stack started");
        assert!(start.elapsed() < Duration::from_secs(60), "the stack did not start within 60 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(5_000));
    let records: Vec<pg::stale::NodeRecord> =
        ["primary", "standby"].iter().filter_map(|n| pg::stale::read_record(&run.join("pg").join(n)).ok()).collect();
    assert_eq!(records.len(), 2, "both PostgreSQL nodes were running");
    let pids: Vec<u32> = std::fs::read_to_string(run.join("pids"))
        .expect("pids")
        .lines()
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGKILL)
        .expect("SIGKILL agentdrill");
    child.wait().expect("reap");

    // The next run cleans up what the dead one left.
    let next = run_json(&root().join("scenarios/live/region-warm-standby-async.toml"), &[("AGENTDRILL_RUN_DIR", &dir)]);
    assert_eq!(next["verdict"], "pass", "{next:#}");
    for r in &records {
        if let Some(pm) = r.postmaster_pid {
            assert!(!alive(pm), "a dead run's postmaster {pm} still runs");
        }
        assert!(!listening(r.port), "a dead run's PostgreSQL port {} still listens", r.port);
    }
    for p in pids {
        assert!(!alive(p), "a dead run's process {p} still runs");
    }
    let marker = format!("AGENTDRILL_RUN_ID={}", run.file_name().expect("name").to_string_lossy());
    assert!(agentdrill::live::supervisor::pids_marked(&marker).is_empty(), "processes carry the dead run's marker");
    assert!(!run.exists(), "the dead run's folder is removed");
    let left: Vec<_> = std::fs::read_dir(&dir).expect("dir").flatten().map(|e| e.file_name()).collect();
    assert!(left.is_empty(), "nothing is left in the run root: {left:?}");
    if docker_answers() {
        let out =
            Command::new("docker").args(["ps", "-aq", "--filter", "label=agentdrill.pg"]).output().expect("docker ps");
        assert!(out.stdout.is_empty(), "containers left: {}", String::from_utf8_lossy(&out.stdout));
    }
    let _ = std::fs::remove_dir_all(&dir);
}
