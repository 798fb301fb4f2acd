//! The supervisor of a live drill: starts the stack's processes, kills,
//! pauses and restarts them, captures their output, and guarantees that
//! none outlives the harness.
//!
//! - Each replica runs in its own session and process group (`setsid`), so a
//!   kill takes the replica and every child it made.
//! - `PR_SET_PDEATHSIG = SIGKILL` on every replica: when the supervisor
//!   thread (which forks every replica and lives until [`Supervisor::stop`])
//!   or the whole harness dies, the kernel kills the replica.
//! - A run folder (`<root>/run-<pid>-<start ticks>/`) holds the owner (the
//!   harness's pid and start time), every replica's pid and process group,
//!   and the logs (`logs/<name>-<replica>.log`, stdout and stderr). Every
//!   replica carries `AGENTDRILL_RUN_ID=<folder name>` in its environment.
//!   [`clean_leftovers`], called by every live drill at start, finds run
//!   folders whose owner is dead, kills every process that carries their
//!   marker (checked in `/proc/PID/environ`, so only our processes are
//!   touched), and removes the folders.
//! - A replica killed by the harness restarts after its `restart_delay`, as
//!   Kubernetes would; one that exits by itself is recorded as an
//!   unexpected exit with the tail of its log, and restarts too.

use std::fs::File;
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde::Serialize;

use super::lock;
use super::runs::StallKind;

/// Environment variable that marks a process as started by a run.
pub const RUN_ID_ENV: &str = "AGENTDRILL_RUN_ID";
/// Environment variable that overrides the run folders' root.
pub const RUN_ROOT_ENV: &str = "AGENTDRILL_RUN_DIR";
/// Lines of a log quoted in a report.
pub const LOG_TAIL_LINES: usize = 20;
/// Bytes read from the end of a log for its tail.
pub const LOG_TAIL_BYTES: u64 = 8 * 1024;
/// How often the supervisor looks at its replicas, in ms.
pub const TICK_MS: u64 = 5;
/// Grace between SIGTERM and SIGKILL at the end of a drill, in ms.
pub const STOP_GRACE_MS: u64 = 1_000;
/// Most replicas one supervisor runs.
pub const MAX_REPLICAS: usize = 64;

/// One replica to run.
#[derive(Clone, Debug)]
pub struct Spec {
    /// Process name (from the scenario).
    pub name: String,
    /// 0-based replica number.
    pub replica: u16,
    /// Program.
    pub command: String,
    /// Arguments.
    pub args: Vec<String>,
    /// Environment added to the harness's.
    pub env: Vec<(String, String)>,
    /// Wait after a kill (or an exit) before the restart, in ms.
    pub restart_delay_ms: u64,
    /// Not started with the others: it waits for [`Supervisor::start_slot`]
    /// (a standby region's process, started by the failover's scale-up).
    pub held: bool,
}

/// How a replica's run ended.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ExitRecord {
    /// Process name.
    pub process: String,
    /// Replica.
    pub replica: u16,
    /// Its pid.
    pub pid: u32,
    /// When it ended, seconds since the supervisor started.
    pub at_s: f64,
    /// Exit code, when it exited.
    pub code: Option<i32>,
    /// Signal, when a signal ended it.
    pub signal: Option<i32>,
    /// The harness ended it (a fault, or the end of the drill).
    pub by_harness: bool,
    /// The last lines of its log, for an unexpected exit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_tail: Option<String>,
}

/// Errors of the supervisor.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    /// The run folder could not be made.
    #[error("cannot create the run folder {path}: {source}; set {RUN_ROOT_ENV} to a writable folder")]
    RunDir {
        /// Folder.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// A replica could not be started.
    #[error(
        "cannot start process `{name}` replica {replica} (`{command}`): {source}; check `command` in [[processes]] (is it on PATH?)"
    )]
    Spawn {
        /// Process name.
        name: String,
        /// Replica.
        replica: u16,
        /// Program.
        command: String,
        /// Cause.
        source: std::io::Error,
    },
    /// Too many replicas.
    #[error("{0} replicas, more than the limit of {MAX_REPLICAS}; lower `replicas`")]
    TooMany(usize),
}

/// The run folders' root: `$AGENTDRILL_RUN_DIR`, or `agentdrill-live` in the temp folder.
pub fn run_root() -> PathBuf {
    std::env::var_os(RUN_ROOT_ENV).map_or_else(|| std::env::temp_dir().join("agentdrill-live"), PathBuf::from)
}

/// The start time of `pid` in clock ticks since boot (`/proc/PID/stat` field 22).
pub fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    after.split_whitespace().nth(19)?.parse().ok()
}

/// Whether `/proc/PID/environ` carries `marker` (`NAME=value`).
fn carries(pid: u32, marker: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/environ"))
        .is_ok_and(|env| env.split(|&b| b == 0).any(|kv| kv == marker.as_bytes()))
}

/// Every pid on the machine whose environment carries `marker`.
pub fn pids_marked(marker: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok()).filter(|&pid| carries(pid, marker)).collect()
}

/// What [`clean_leftovers`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Cleaned {
    /// Run folders of dead harnesses removed.
    pub runs: usize,
    /// Leftover processes killed.
    pub killed: usize,
}

/// Kills what harnesses that died (SIGKILL, crash) left running under
/// `root`, and removes their run folders. Folders of live harnesses are left
/// alone. Only processes whose environment carries the dead run's marker
/// are killed.
pub fn clean_leftovers(root: &Path) -> Cleaned {
    let mut done = Cleaned::default();
    let Ok(dir) = std::fs::read_dir(root) else { return done };
    for entry in dir.flatten() {
        let path = entry.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()).map(str::to_owned) else { continue };
        if !name.starts_with("run-") {
            continue;
        }
        let owner = std::fs::read_to_string(path.join("owner")).unwrap_or_default();
        let mut it = owner.split_whitespace().map(str::parse::<u64>);
        if let (Some(Ok(pid)), Some(Ok(ticks))) = (it.next(), it.next())
            && u32::try_from(pid).ok().and_then(start_ticks) == Some(ticks)
        {
            continue; // its harness is alive
        }
        let marker = format!("{RUN_ID_ENV}={name}");
        for pid in pids_marked(&marker) {
            let p = Pid::from_raw(pid as i32);
            let _ = nix::sys::signal::kill(p, Signal::SIGKILL);
            if let Ok(g) = nix::unistd::getpgid(Some(p))
                && g == p
            {
                let _ = killpg(g, Signal::SIGKILL);
            }
            done.killed += 1;
        }
        if std::fs::remove_dir_all(&path).is_ok() {
            done.runs += 1;
        }
    }
    if done.killed > 0 || done.runs > 0 {
        tracing::warn!(runs = done.runs, killed = done.killed, "cleaned up after a harness that died");
    }
    done
}

/// The last [`LOG_TAIL_LINES`] lines of a log.
pub fn log_tail(path: &Path) -> String {
    let Ok(mut f) = File::open(path) else { return String::new() };
    let len = f.metadata().map_or(0, |m| m.len());
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(LOG_TAIL_BYTES)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
}

enum Cmd {
    Kill(usize, std_mpsc::Sender<()>),
    Hold(usize, std_mpsc::Sender<()>),
    Start(usize),
    Signal(usize, Signal, Option<std_mpsc::Sender<()>>),
    Stop(std_mpsc::Sender<()>),
}

#[derive(Debug)]
struct Slot {
    spec: Spec,
    child: Option<Child>,
    restart_at: Option<Instant>,
    log: PathBuf,
}

/// What the supervisor shares with the harness.
#[derive(Debug, Default)]
struct Seen {
    pids: Vec<Option<u32>>,
    starts: Vec<u32>,
    exits: Vec<ExitRecord>,
    stalls: Vec<(usize, StallKind, Instant)>,
}

/// Notes that slot `i` was killed, exited, stopped or continued at `at`.
fn stalled(seen: &Mutex<Seen>, i: usize, kind: StallKind, at: Instant) {
    lock(seen).stalls.push((i, kind, at));
}

/// A running supervisor. Dropping it stops every replica.
#[derive(Debug)]
pub struct Supervisor {
    tx: std_mpsc::Sender<Cmd>,
    thread: Option<JoinHandle<()>>,
    seen: Arc<Mutex<Seen>>,
    /// The run folder.
    pub run_dir: PathBuf,
}

impl Supervisor {
    /// Makes a run folder under `root` and starts every replica of `specs`
    /// (their index is their slot).
    pub fn start(root: &Path, specs: Vec<Spec>) -> Result<Supervisor, SupervisorError> {
        if specs.len() > MAX_REPLICAS {
            return Err(SupervisorError::TooMany(specs.len()));
        }
        let me = std::process::id();
        let ticks = start_ticks(me).unwrap_or(0);
        let run_dir = Self::run_dir_in(root);
        let name = run_dir.file_name().expect("run-…").to_string_lossy().into_owned();
        let mk =
            |p: &Path| std::fs::create_dir_all(p).map_err(|source| SupervisorError::RunDir { path: p.into(), source });
        mk(&run_dir.join("logs"))?;
        std::fs::write(run_dir.join("owner"), format!("{me} {ticks}\n"))
            .map_err(|source| SupervisorError::RunDir { path: run_dir.clone(), source })?;
        let seen = Arc::new(Mutex::new(Seen {
            pids: vec![None; specs.len()],
            starts: vec![0; specs.len()],
            exits: Vec::new(),
            stalls: Vec::new(),
        }));
        let (tx, rx) = std_mpsc::channel();
        let (ready_tx, ready_rx) = std_mpsc::channel();
        let (dir, s2) = (run_dir.clone(), seen.clone());
        let thread = std::thread::Builder::new()
            .name("agentdrill-supervisor".into())
            .spawn(move || {
                let started = Instant::now();
                let mut slots: Vec<Slot> = specs
                    .into_iter()
                    .map(|spec| {
                        let log = dir.join("logs").join(format!("{}-{}.log", spec.name, spec.replica));
                        Slot { spec, child: None, restart_at: None, log }
                    })
                    .collect();
                let mut first = Ok(());
                for (i, slot) in slots.iter_mut().enumerate().filter(|(_, s)| !s.spec.held) {
                    if let Err(e) = spawn(&dir, &name, i, slot, &s2) {
                        first = Err(e);
                        break;
                    }
                }
                let failed = first.is_err();
                let _ = ready_tx.send(first);
                if failed {
                    stop_all(&mut slots, &s2, started);
                    return;
                }
                run_loop(&dir, &name, &mut slots, &s2, &rx, started);
            })
            .map_err(|source| SupervisorError::RunDir { path: run_dir.clone(), source })?;
        let sup = Supervisor { tx, thread: Some(thread), seen, run_dir };
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(sup),
            Ok(Err(e)) => Err(e),
            Err(_) => Ok(sup),
        }
    }

    /// The run folder a supervisor started by this process makes under `root`.
    pub fn run_dir_in(root: &Path) -> PathBuf {
        let me = std::process::id();
        root.join(format!("run-{me}-{}", start_ticks(me).unwrap_or(0)))
    }

    /// SIGKILLs slot `i`'s process group and waits until it is reaped; it
    /// restarts after its restart delay.
    pub fn kill(&self, i: usize) {
        let (tx, rx) = std_mpsc::channel();
        if self.tx.send(Cmd::Kill(i, tx)).is_ok() {
            let _ = rx.recv_timeout(Duration::from_secs(10));
        }
    }

    /// SIGKILLs slot `i`'s process group, waits until it is reaped, and
    /// keeps it down (no restart) until [`Supervisor::start_slot`]: a
    /// process of a lost region, or one fenced after a failover.
    pub fn hold(&self, i: usize) {
        let (tx, rx) = std_mpsc::channel();
        if self.tx.send(Cmd::Hold(i, tx)).is_ok() {
            let _ = rx.recv_timeout(Duration::from_secs(10));
        }
    }

    /// Starts slot `i` now if it is down (held, or waiting for its restart).
    pub fn start_slot(&self, i: usize) {
        let _ = self.tx.send(Cmd::Start(i));
    }

    /// SIGSTOPs slot `i`'s process group and returns once its leader is
    /// seen stopped in `/proc` (at most [`STOP_WAIT_MS`]).
    pub fn pause(&self, i: usize) {
        let (tx, rx) = std_mpsc::channel();
        if self.tx.send(Cmd::Signal(i, Signal::SIGSTOP, Some(tx))).is_ok() {
            let _ = rx.recv_timeout(Duration::from_secs(10));
        }
    }

    /// SIGCONTs slot `i`'s process group.
    pub fn resume(&self, i: usize) {
        let _ = self.tx.send(Cmd::Signal(i, Signal::SIGCONT, None));
    }

    /// The pid of slot `i` now (None while it is down).
    pub fn pid(&self, i: usize) -> Option<u32> {
        lock(&self.seen).pids.get(i).copied().flatten()
    }

    /// How many times slot `i` was started.
    pub fn starts(&self, i: usize) -> u32 {
        lock(&self.seen).starts.get(i).copied().unwrap_or(0)
    }

    /// Every kill, exit, stop (SIGSTOP) and continue (SIGCONT) of a slot so
    /// far, with when it happened (the signal sent, or the exit reaped): what
    /// tells a lookup meeting a stalled worker's call from a concurrent run
    /// ([`super::runs::still_running`]).
    pub fn stalls(&self) -> Vec<(usize, StallKind, Instant)> {
        lock(&self.seen).stalls.clone()
    }

    /// Every exit so far.
    pub fn exits(&self) -> Vec<ExitRecord> {
        lock(&self.seen).exits.clone()
    }

    /// Stops every replica (SIGTERM, then SIGKILL after [`STOP_GRACE_MS`]),
    /// removes the run folder, and returns every exit.
    pub fn stop(self) -> Vec<ExitRecord> {
        let dir = self.run_dir.clone();
        let exits = self.stop_keeping_folder();
        let _ = std::fs::remove_dir_all(&dir);
        exits
    }

    /// [`Supervisor::stop`] without removing the run folder: for a caller
    /// that still has something running in it (the drill's PostgreSQL, whose
    /// data folder is in it) and removes the folder itself afterwards.
    pub fn stop_keeping_folder(mut self) -> Vec<ExitRecord> {
        self.shutdown();
        self.exits()
    }

    fn shutdown(&mut self) {
        if let Some(t) = self.thread.take() {
            let (tx, rx) = std_mpsc::channel();
            if self.tx.send(Cmd::Stop(tx)).is_ok() {
                let _ = rx.recv_timeout(Duration::from_secs(10));
            }
            let _ = t.join();
        }
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn spawn(dir: &Path, run_id: &str, i: usize, slot: &mut Slot, seen: &Mutex<Seen>) -> Result<(), SupervisorError> {
    let s = &slot.spec;
    let err = |source| SupervisorError::Spawn {
        name: s.name.clone(),
        replica: s.replica,
        command: s.command.clone(),
        source,
    };
    let log = std::fs::OpenOptions::new().create(true).append(true).open(&slot.log).map_err(err)?;
    let log2 = log.try_clone().map_err(err)?;
    let parent = std::process::id();
    let mut cmd = Command::new(&s.command);
    cmd.args(&s.args)
        .envs(s.env.iter().map(|(k, v)| (k, v)))
        .env(RUN_ID_ENV, run_id)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log2));
    // SAFETY: the closure runs in the forked child before exec and calls
    // only async-signal-safe functions (setsid, prctl, getppid, kill).
    unsafe {
        cmd.pre_exec(move || {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)?;
            // The harness may have died between fork and prctl.
            if nix::unistd::getppid().as_raw() as u32 != parent {
                let _ = nix::sys::signal::kill(nix::unistd::getpid(), Signal::SIGKILL);
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(err)?;
    let pid = child.id();
    if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("pids")) {
        let _ = writeln!(f, "{pid} {} {} {}", start_ticks(pid).unwrap_or(0), s.name, s.replica);
    }
    tracing::info!(process = %s.name, replica = s.replica, pid, "started");
    let mut g = lock(seen);
    g.pids[i] = Some(pid);
    g.starts[i] += 1;
    drop(g);
    slot.child = Some(child);
    slot.restart_at = None;
    Ok(())
}

fn record(
    slot: &mut Slot,
    i: usize,
    seen: &Mutex<Seen>,
    started: Instant,
    status: std::process::ExitStatus,
    by_harness: bool,
) {
    use std::os::unix::process::ExitStatusExt as _;
    let pid = slot.child.as_ref().map_or(0, Child::id);
    // Whatever the replica forked dies with it.
    let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
    slot.child = None;
    let rec = ExitRecord {
        process: slot.spec.name.clone(),
        replica: slot.spec.replica,
        pid,
        at_s: started.elapsed().as_secs_f64(),
        code: status.code(),
        signal: status.signal(),
        by_harness,
        log_tail: (!by_harness).then(|| log_tail(&slot.log)),
    };
    if !by_harness {
        tracing::warn!(process = %rec.process, replica = rec.replica, code = ?rec.code, signal = ?rec.signal, "exited unexpectedly");
    }
    let mut g = lock(seen);
    g.pids[i] = None;
    g.exits.push(rec);
}

/// Most time [`Supervisor::pause`] waits to see the process stopped, in ms.
pub const STOP_WAIT_MS: u64 = 200;

/// Waits (polling `/proc/PID/stat`, at most [`STOP_WAIT_MS`]) until `pid`
/// is stopped (state `T`), so nothing it does happens after `pause` returns.
fn wait_stopped(pid: u32) {
    let deadline = Instant::now() + Duration::from_millis(STOP_WAIT_MS);
    while Instant::now() < deadline {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat.rfind(')').and_then(|at| stat[at + 1..].split_whitespace().next());
        if state.is_none_or(|s| s == "T" || s == "t") {
            return;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn run_loop(
    dir: &Path,
    run_id: &str,
    slots: &mut [Slot],
    seen: &Mutex<Seen>,
    rx: &std_mpsc::Receiver<Cmd>,
    started: Instant,
) {
    loop {
        match rx.recv_timeout(Duration::from_millis(TICK_MS)) {
            Ok(Cmd::Kill(i, done)) => {
                if let Some(slot) = slots.get_mut(i)
                    && let Some(mut child) = slot.child.take()
                {
                    stalled(seen, i, StallKind::Killed, Instant::now());
                    let _ = killpg(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
                    let status = child.wait();
                    slot.child = Some(child);
                    if let Ok(st) = status {
                        record(slot, i, seen, started, st, true);
                    }
                    slot.restart_at = Some(Instant::now() + Duration::from_millis(slot.spec.restart_delay_ms));
                }
                let _ = done.send(());
            }
            Ok(Cmd::Hold(i, done)) => {
                if let Some(slot) = slots.get_mut(i) {
                    if let Some(mut child) = slot.child.take() {
                        stalled(seen, i, StallKind::Killed, Instant::now());
                        let _ = killpg(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
                        let status = child.wait();
                        slot.child = Some(child);
                        if let Ok(st) = status {
                            record(slot, i, seen, started, st, true);
                        }
                    }
                    slot.child = None;
                    slot.restart_at = None;
                }
                let _ = done.send(());
            }
            Ok(Cmd::Start(i)) => {
                if let Some(slot) = slots.get_mut(i)
                    && slot.child.is_none()
                    && let Err(e) = spawn(dir, run_id, i, slot, seen)
                {
                    tracing::error!(error = %e, "start failed");
                    slot.restart_at = Some(Instant::now() + Duration::from_millis(slot.spec.restart_delay_ms.max(100)));
                }
            }
            Ok(Cmd::Signal(i, sig, done)) => {
                if let Some(child) = slots.get(i).and_then(|s| s.child.as_ref()) {
                    let kind = if sig == Signal::SIGSTOP { StallKind::Stopped } else { StallKind::Continued };
                    stalled(seen, i, kind, Instant::now());
                    let _ = killpg(Pid::from_raw(child.id() as i32), sig);
                    if sig == Signal::SIGSTOP {
                        wait_stopped(child.id());
                    }
                }
                if let Some(done) = done {
                    let _ = done.send(());
                }
            }
            Ok(Cmd::Stop(done)) => {
                stop_all(slots, seen, started);
                let _ = done.send(());
                return;
            }
            Err(std_mpsc::RecvTimeoutError::Disconnected) => {
                stop_all(slots, seen, started);
                return;
            }
            Err(std_mpsc::RecvTimeoutError::Timeout) => {}
        }
        let now = Instant::now();
        for (i, slot) in slots.iter_mut().enumerate() {
            let exited = slot.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
            if let Some(st) = exited {
                stalled(seen, i, StallKind::Killed, now);
                record(slot, i, seen, started, st, false);
                slot.restart_at = Some(now + Duration::from_millis(slot.spec.restart_delay_ms));
            }
            if slot.child.is_none()
                && slot.restart_at.is_some_and(|t| t <= now)
                && let Err(e) = spawn(dir, run_id, i, slot, seen)
            {
                tracing::error!(error = %e, "restart failed");
                slot.restart_at = Some(now + Duration::from_millis(slot.spec.restart_delay_ms.max(100)));
            }
        }
    }
}

fn stop_all(slots: &mut [Slot], seen: &Mutex<Seen>, started: Instant) {
    for slot in slots.iter() {
        if let Some(c) = &slot.child {
            let g = Pid::from_raw(c.id() as i32);
            let _ = killpg(g, Signal::SIGCONT);
            let _ = killpg(g, Signal::SIGTERM);
        }
    }
    let deadline = Instant::now() + Duration::from_millis(STOP_GRACE_MS);
    while Instant::now() < deadline
        && slots.iter_mut().any(|s| s.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None))))
    {
        std::thread::sleep(Duration::from_millis(TICK_MS));
    }
    for (i, slot) in slots.iter_mut().enumerate() {
        if let Some(c) = slot.child.as_mut() {
            let _ = killpg(Pid::from_raw(c.id() as i32), Signal::SIGKILL);
            if let Ok(st) = c.wait() {
                record(slot, i, seen, started, st, true);
            }
        }
    }
}
