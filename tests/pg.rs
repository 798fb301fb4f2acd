//! Real PostgreSQL (src/live/pg): a local primary started, written, killed
//! and removed; the leftovers of a SIGKILLed harness cleaned by the next
//! start (checked in /proc and /proc/net/tcp).
//!
//! These tests start PostgreSQL 15. When it is missing they fail with an
//! error naming `cargo xtask test`, which installs it.

#[path = "common/procfs.rs"]
mod procfs;
use procfs::{alive, listening};

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use agentdrill::live::pg::{self, Backend, Cluster, PgOptions};

/// Held by every `cleanup_stale` in this binary ([`sweep`]), and by the
/// docker SIGKILL test from the kill to its own clean-up: a clean-up also
/// removes the containers of *every* dead harness, so a test starting
/// beside it would take (and count) the very container it checks.
static SWEEP: Mutex<()> = Mutex::new(());

fn sweep_lock() -> MutexGuard<'static, ()> {
    SWEEP.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// `cleanup_stale` under [`SWEEP`].
fn sweep(dir: &Path) -> Result<pg::CleanupReport, pg::PgError> {
    let _sweeping = sweep_lock();
    pg::cleanup_stale(dir)
}

/// A fresh folder for one test, after a clean-up of what a previous run
/// left in it.
fn run_dir(test: &str) -> PathBuf {
    let _ = sweep(&test_dir(test));
    run_dir_unswept(test)
}

/// The folder of one test.
fn test_dir(test: &str) -> PathBuf {
    std::env::temp_dir().join(format!("agentdrill-pg-test-{test}"))
}

/// A node's postmaster (from its record) and its children, from /proc.
fn server_pids(node_dir: &Path) -> Vec<u32> {
    let record = pg::stale::read_record(node_dir).expect("the node record");
    let pm = record.postmaster_pid.expect("a local node records its postmaster");
    let mut pids = vec![pm];
    pids.extend(pg::stale::children_of(pm));
    pids
}

fn wait_until(what: &str, timeout_ms: u64, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < Duration::from_millis(timeout_ms), "{what}: not within {timeout_ms} ms");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_primary_starts_takes_writes_is_killed_and_removed() {
    let dir = run_dir("primary");
    let opts = PgOptions::local(&dir, "test-primary");
    let mut node = Cluster::start_primary(&opts).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(node.url(), format!("postgres://postgres@127.0.0.1:{}/postgres", node.port()));
    assert!(listening(node.port()), "the server listens on its port");
    let db = node.connect().await.expect("connect");
    let row = db.query_one("SHOW track_commit_timestamp", &[]).await.expect("show");
    assert_eq!(row.get::<_, String>(0), "on");
    db.batch_execute("CREATE TABLE jobs (id int PRIMARY KEY); INSERT INTO jobs VALUES (1), (2)").await.expect("write");
    let n: i64 = db.query_one("SELECT count(*) FROM jobs", &[]).await.expect("read").get(0);
    assert_eq!(n, 2);
    let servers = server_pids(node.node_dir());
    assert!(servers.len() >= 4, "the postmaster and its children are visible in /proc: {servers:?}");

    node.kill().expect("kill");
    assert!(!node.is_running());
    assert!(db.simple_query("SELECT 1").await.is_err(), "a killed server answers nothing");
    // SIGKILL is delivered asynchronously; the dead children are reaped by init.
    wait_until("every server process dead", 2_000, || servers.iter().all(|p| !alive(*p)));
    assert!(!listening(node.port()), "the port is released");
    assert!(node.data_dir().join("PG_VERSION").is_file(), "a crash keeps the data folder");
    node.kill().expect("a second kill is a no-op");

    let node_dir = node.node_dir().to_path_buf();
    drop(node);
    assert!(!node_dir.exists(), "drop removes the node folder");
    std::fs::remove_dir_all(&dir).expect("remove the run folder");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_is_clean_and_drop_of_a_running_node_kills_it() {
    let dir = run_dir("stop");
    let mut node = Cluster::start_primary(&PgOptions::local(&dir, "test-stop")).await.unwrap_or_else(|e| panic!("{e}"));
    node.stop().await.expect("stop");
    assert!(!node.is_running());
    assert!(!listening(node.port()));
    let log = std::fs::read_to_string(node.log_path()).expect("log");
    assert!(!log.contains("PANIC"), "{log}");
    drop(node);

    let node = Cluster::start_primary(&PgOptions::local(&dir, "test-stop")).await.unwrap_or_else(|e| panic!("{e}"));
    let servers = server_pids(node.node_dir());
    let port = node.port();
    drop(node);
    wait_until("every server process gone", 5_000, || servers.iter().all(|p| !alive(*p)));
    assert!(!listening(port));
    std::fs::remove_dir_all(&dir).expect("remove the run folder");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_node_names_are_refused_with_the_field() {
    let mut opts = PgOptions::local("/tmp/unused", "x");
    opts.name = "../etc".into();
    let e = Cluster::start_primary(&opts).await.expect_err("refused");
    assert!(e.to_string().contains("PgOptions.name"), "{e}");
}

/// Env var that turns [`child_harness_holding_a_primary`] into the harness
/// the SIGKILL test kills; without it that test refuses to run.
const CHILD_ENV: &str = "AGENTDRILL_PG_CHILD_RUN_DIR";
/// The child's backend (`local` unless `docker`).
const CHILD_BACKEND_ENV: &str = "AGENTDRILL_PG_CHILD_BACKEND";

/// Runs the child harness, waits for its primary, SIGKILLs it; returns the
/// primary's port and [`SWEEP`], taken just before the kill (so no other
/// test's clean-up removes the leftovers before the caller's does).
fn sigkilled_child_harness(dir: &Path, backend: Backend) -> (u16, MutexGuard<'static, ()>) {
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args(["--ignored", "--exact", "child_harness_holding_a_primary", "--nocapture"])
        .env(CHILD_ENV, dir)
        .env(CHILD_BACKEND_ENV, backend.name())
        .spawn()
        .expect("spawn the child harness");
    let ready = dir.join("ready");
    let start = Instant::now();
    while !ready.exists() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the child harness exited before its primary was up: {status}");
        }
        assert!(start.elapsed() < Duration::from_secs(90), "the child harness did not start its primary in 90 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    let port: u16 = std::fs::read_to_string(&ready).expect("ready").trim().parse().expect("port");
    let record = pg::stale::read_record(&dir.join("pg/primary")).expect("the node record");
    assert_eq!(record.harness_pid, child.id());
    let sweeping = sweep_lock();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGKILL)
        .expect("SIGKILL the child harness");
    child.wait().expect("reap the child harness");
    (port, sweeping)
}

#[test]
fn docker_sigkilled_harness_container_is_removed_by_the_next_start_when_docker_answers() {
    if !docker_ready() {
        return;
    }
    let dir = run_dir("sigkill-docker");
    let (port, sweeping) = sigkilled_child_harness(&dir, Backend::Docker);
    let node_dir = dir.join("pg/primary");
    let id = pg::stale::read_record(&node_dir).expect("record").container_id.expect("a container");
    assert!(container_exists(&id) && listening(port), "a SIGKILLed harness leaves its container running");
    let report = pg::cleanup_stale(&dir).expect("cleanup");
    drop(sweeping);
    assert_eq!((report.containers_removed, report.nodes_removed), (1, 1), "{report:?}");
    assert!(!container_exists(&id), "the leftover container is removed");
    wait_until("the leftover's port free", 5_000, || !listening(port));
    assert!(!node_dir.exists());
    std::fs::remove_dir_all(&dir).expect("remove the run folder");
}

/// Two harnesses starting at once both sweep a dead harness's container:
/// neither fails (one removes it, the other finds the removal under way or
/// done and waits for it), and it is counted once.
#[test]
fn docker_two_clean_ups_at_once_remove_an_orphan_once_when_docker_answers() {
    if !docker_ready() {
        return;
    }
    let _sweeping = sweep_lock();
    let dirs = [run_dir_unswept("sweep-a"), run_dir_unswept("sweep-b")];
    for round in 0..5 {
        let id = orphan_container();
        let reports: Vec<pg::CleanupReport> = std::thread::scope(|s| {
            let handles: Vec<_> = dirs.iter().map(|d| s.spawn(move || pg::cleanup_stale(d))).collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("no panic").unwrap_or_else(|e| panic!("round {round}: {e}")))
                .collect()
        });
        let removed: u32 = reports.iter().map(|r| r.containers_removed).sum();
        assert_eq!(removed, 1, "round {round}: the orphan is counted once: {reports:?}");
        assert!(!container_exists(&id), "round {round}: the orphan is gone");
    }
    for d in dirs {
        std::fs::remove_dir_all(d).expect("remove the run folder");
    }
}

/// A running container labelled as agentdrill's, by a harness that is dead
/// (its start time, 1, is no process's).
fn orphan_container() -> String {
    let out = Command::new("docker")
        .args(["run", "-d", "--label", &format!("{}=1", pg::docker::LABEL)])
        .args(["--label", &format!("{}={}", pg::docker::LABEL_HARNESS_PID, std::process::id())])
        .args(["--label", &format!("{}=1", pg::docker::LABEL_HARNESS_START)])
        .args([&pg::docker::image_ref(), "sleep", "60"])
        .output()
        .expect("docker run");
    assert!(out.status.success(), "docker run: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A fresh folder without the clean-up [`run_dir`] does (for a test that
/// holds [`SWEEP`] itself).
fn run_dir_unswept(test: &str) -> PathBuf {
    let dir = test_dir(test);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create the test's run folder");
    dir
}

/// Not a test of its own: the child process of
/// `sigkilled_harness_leftovers_are_cleaned_by_the_next_start` (run with
/// `--ignored` and [`CHILD_ENV`]). Starts a primary, says so, and waits to
/// be SIGKILLed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "child process of sigkilled_harness_leftovers_are_cleaned_by_the_next_start"]
async fn child_harness_holding_a_primary() {
    let dir = PathBuf::from(std::env::var(CHILD_ENV).expect("run only by the SIGKILL test"));
    let backend =
        if std::env::var(CHILD_BACKEND_ENV).as_deref() == Ok("docker") { Backend::Docker } else { Backend::Local };
    let opts = PgOptions { backend, ..PgOptions::local(&dir, "test-sigkill") };
    let node = Cluster::start_primary(&opts).await.unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(dir.join("ready"), format!("{}", node.port())).expect("write ready");
    tokio::time::sleep(Duration::from_secs(120)).await;
    panic!("the parent test should have SIGKILLed this process");
}

#[test]
fn sigkilled_harness_leftovers_are_cleaned_by_the_next_start() {
    let dir = run_dir("sigkill");
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args(["--ignored", "--exact", "child_harness_holding_a_primary", "--nocapture"])
        .env(CHILD_ENV, &dir)
        .spawn()
        .expect("spawn the child harness");
    let ready = dir.join("ready");
    let start = Instant::now();
    while !ready.exists() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the child harness exited before its primary was up: {status}");
        }
        assert!(start.elapsed() < Duration::from_secs(60), "the child harness did not start its primary in 60 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    let port: u16 = std::fs::read_to_string(&ready).expect("ready").trim().parse().expect("port");
    let node_dir = dir.join("pg/primary");
    let record = pg::stale::read_record(&node_dir).expect("the node record");
    let postmaster = record.postmaster_pid.expect("local nodes record their postmaster");
    let servers = server_pids(&node_dir);
    assert_eq!(record.harness_pid, child.id());

    // The harness dies without running any destructor.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGKILL)
        .expect("SIGKILL the child harness");
    child.wait().expect("reap the child harness");
    assert!(alive(postmaster), "a SIGKILLed harness leaves its server running (what the clean-up is for)");
    assert!(listening(port));

    let report = sweep(&dir).expect("cleanup");
    assert_eq!((report.servers_killed, report.nodes_removed), (1, 1), "{report:?}");
    wait_until("the leftover postmaster gone", 5_000, || !alive(postmaster));
    wait_until("every leftover server process gone", 5_000, || servers.iter().all(|p| !alive(*p)));
    assert!(!listening(port), "the leftover's port is free");
    assert!(!node_dir.exists(), "the leftover's folder is removed");
    // A second clean-up finds nothing.
    assert_eq!(sweep(&dir).expect("cleanup"), pg::CleanupReport::default());
    std::fs::remove_dir_all(&dir).expect("remove the run folder");
}

/// A TCP proxy in front of the primary, as the harness's: `cut()` drops
/// every connection through it and refuses new ones.
struct Proxy {
    addr: std::net::SocketAddr,
    cut: tokio::sync::watch::Sender<bool>,
}

impl Proxy {
    async fn start(upstream: std::net::SocketAddr) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let (cut, cut_rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else { return };
                if *cut_rx.borrow() {
                    continue;
                }
                let mut rx = cut_rx.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(upstream).await else { return };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = rx.wait_for(|c| *c) => {}
                    }
                });
            }
        });
        Proxy { addr, cut }
    }

    fn cut(&self) {
        self.cut.send_replace(true);
    }
}

async fn count(node: &pg::PgNode, table: &str) -> i64 {
    let db = node.connect().await.expect("connect");
    db.query_one(&format!("SELECT count(*) FROM {table}"), &[]).await.expect("count").get(0)
}

async fn wait_caught_up(primary: &pg::PgNode, standby: &pg::PgNode) -> pg::ReplicationLag {
    let start = Instant::now();
    loop {
        let lag = primary.replication_lag(standby).await.expect("lag");
        if lag.lag_bytes == 0 && lag.sender.is_some() {
            return lag;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "the standby did not catch up: {lag:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_pair_cut_promote_and_rpo_finds_exactly_the_rows_after_the_cut() {
    async_pair_scenario(Backend::Local).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_async_pair_cut_promote_and_rpo_when_docker_answers() {
    if !docker_ready() {
        return;
    }
    async_pair_scenario(Backend::Docker).await;
}

/// Whether the docker backend is to be tested: false (said on stderr) when
/// no daemon answers; a panic naming `cargo xtask test` when one answers
/// but the image is missing.
fn docker_ready() -> bool {
    if let Err(why) = pg::docker::daemon_answers() {
        eprintln!("docker backend not tested here: {why}");
        return false;
    }
    assert!(
        pg::docker::image_present(),
        "a Docker daemon answers but the image {} is missing: run `cargo xtask test` (it builds it with scripts/build-pg-image.sh)",
        pg::docker::image_ref()
    );
    true
}

async fn async_pair_scenario(backend: Backend) {
    let dir = run_dir(&format!("pair-async-{}", backend.name()));
    let opts = PgOptions { backend, ..PgOptions::local(&dir, "test-pair") };
    let mut primary = Cluster::start_primary(&opts).await.unwrap_or_else(|e| panic!("{e}"));
    let proxy = Proxy::start(primary.addr()).await;
    let standby =
        Cluster::start_standby(&opts.named("standby", "b"), &primary, proxy.addr, pg::Replication::Asynchronous)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    assert!(standby.is_standby().await.expect("recovery state"));
    let db = primary.connect().await.expect("connect");
    db.batch_execute("CREATE TABLE steps (id int PRIMARY KEY, v text)").await.expect("create");
    for i in 1..=10 {
        db.execute("INSERT INTO steps VALUES ($1, 'before')", &[&i]).await.expect("insert");
    }
    let lag = wait_caught_up(&primary, &standby).await;
    let sender = lag.sender.expect("the primary streams to the standby");
    assert_eq!((sender.state.as_str(), sender.sync_state.as_str()), ("streaming", "async"));
    assert_eq!(count(&standby, "steps").await, 10);

    // The cut: replication crosses the proxy, writes go on at the primary
    // (asynchronous: each is acknowledged without the standby).
    proxy.cut();
    let first_lost_before = std::time::SystemTime::now();
    let mut first_lost_acked = None;
    for i in 11..=15 {
        db.execute("INSERT INTO steps VALUES ($1, 'after the cut')", &[&i]).await.expect("insert after the cut");
        first_lost_acked.get_or_insert_with(std::time::SystemTime::now);
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let lag = primary.replication_lag(&standby).await.expect("lag");
    assert!(lag.lag_bytes > 0, "the cut standby lags: {lag:?}");
    assert_eq!(count(&standby, "steps").await, 10, "nothing after the cut reached the standby");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let fault_at = std::time::SystemTime::now();
    primary.kill().expect("kill the primary");

    let promotion = standby.promote().await.expect("promote");
    assert!(!standby.is_standby().await.expect("state"), "promoted: {promotion:?}");
    primary.fence().expect("fence the old primary");
    assert!(primary.is_fenced() && !primary.is_running());
    // The promoted node takes writes: an overwrite of a replicated row (not
    // a loss) and a new row.
    let s = standby.connect().await.expect("connect to the promoted node");
    s.batch_execute("UPDATE steps SET v = 'rewritten' WHERE id = 1; INSERT INTO steps VALUES (100, 'new')")
        .await
        .expect("write on the promoted node");

    let rpo = pg::rpo::measure(&mut primary, &standby, &[pg::RpoTable::new("steps", "id")], fault_at)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!("{}", serde_json::to_string_pretty(&rpo).unwrap());
    assert_eq!(rpo.lost, 5, "{rpo:?}");
    let t = &rpo.tables[0];
    assert_eq!(t.lost_keys, ["11", "12", "13", "14", "15"]);
    assert_eq!((t.rows_old_primary, t.rows_promoted), (15, 11));
    let oldest = rpo.oldest_lost_commit_unix_us.expect("a lost commit has a time");
    let (lo, hi) = (pg::rpo::unix_us(first_lost_before), pg::rpo::unix_us(first_lost_acked.unwrap()));
    assert!(lo <= oldest && oldest <= hi, "the oldest lost commit ({oldest}) is row 11's ({lo}..={hi})");
    let want_ms = (pg::rpo::unix_us(fault_at) - oldest) as f64 / 1000.0;
    assert!((rpo.rpo_ms - want_ms).abs() < 0.01, "{} vs {want_ms}", rpo.rpo_ms);
    assert!(rpo.rpo_ms >= 250.0, "4 × 30 ms + 100 ms at least: {}", rpo.rpo_ms);
    assert!(!primary.node_dir().join("data/postmaster.pid").exists() || !primary.is_running());
    drop(standby);
    drop(primary);
    std::fs::remove_dir_all(&dir).expect("remove the run folder");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_pair_blocks_commits_when_cut_and_loses_nothing() {
    let dir = run_dir("pair-sync");
    let opts = PgOptions::local(&dir, "test-sync");
    let mut primary = Cluster::start_primary(&opts).await.unwrap_or_else(|e| panic!("{e}"));
    let proxy = Proxy::start(primary.addr()).await;
    let standby =
        Cluster::start_standby(&opts.named("standby", "b"), &primary, proxy.addr, pg::Replication::Synchronous)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    let db = primary.connect().await.expect("connect");
    db.batch_execute("CREATE TABLE steps (id int PRIMARY KEY)").await.expect("create");
    for i in 1..=5 {
        db.execute("INSERT INTO steps VALUES ($1)", &[&i]).await.expect("insert");
    }
    let lag = primary.replication_lag(&standby).await.expect("lag");
    assert_eq!(lag.sender.expect("streaming").sync_state, "sync");
    assert_eq!(count(&standby, "steps").await, 5, "a synchronous commit is on the standby when acknowledged");

    proxy.cut();
    let db2 = primary.connect().await.expect("connect");
    let blocked =
        tokio::time::timeout(Duration::from_millis(500), db2.execute("INSERT INTO steps VALUES (6)", &[])).await;
    assert!(blocked.is_err(), "a commit waits for the cut synchronous standby");
    let fault_at = std::time::SystemTime::now();
    primary.kill().expect("kill");
    standby.promote().await.expect("promote");
    primary.fence().expect("fence");
    let rpo = pg::rpo::measure(&mut primary, &standby, &[pg::RpoTable::new("steps", "id")], fault_at)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    // Row 6 is in the old primary's WAL (committed locally, waiting for the
    // standby) but was never acknowledged: the data cannot tell, so it is
    // the one version found, and nothing acknowledged is.
    assert_eq!(rpo.tables[0].lost_keys, ["6"], "{rpo:?}");
    assert_eq!(count(&standby, "steps").await, 5);
    drop(standby);
    drop(primary);
    std::fs::remove_dir_all(&dir).expect("remove the run folder");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_primary_is_killed_and_its_container_removed_when_docker_answers() {
    if !docker_ready() {
        return;
    }
    let dir = run_dir("docker-primary");
    let opts = PgOptions { backend: Backend::Docker, ..PgOptions::local(&dir, "test-docker") };
    let mut node = Cluster::start_primary(&opts).await.unwrap_or_else(|e| panic!("{e}"));
    let db = node.connect().await.expect("connect");
    db.batch_execute("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1)").await.expect("write");
    let record = pg::stale::read_record(node.node_dir()).expect("record");
    let id = record.container_id.expect("a docker node records its container");
    assert!(container_exists(&id));
    node.kill().expect("kill");
    assert!(!node.is_running());
    assert!(!listening(node.port()));
    assert!(node.data_dir().join("PG_VERSION").is_file(), "the data stays on the host");
    drop(node);
    assert!(!container_exists(&id), "drop removes the container");
    std::fs::remove_dir_all(&dir).expect("remove the run folder");
}

fn container_exists(id: &str) -> bool {
    let out = Command::new("docker")
        .args(["ps", "-aq", "--no-trunc", "--filter", &format!("id={id}")])
        .output()
        .expect("docker ps");
    !String::from_utf8_lossy(&out.stdout).trim().is_empty()
}
