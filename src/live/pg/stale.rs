//! Node records and the clean-up of what a SIGKILLed harness left behind.
//!
//! Every node folder holds [`RECORD_FILE`], written as soon as its server
//! starts: the harness's pid and start time, the postmaster's pid, the data
//! folder, the port and the container. [`cleanup_stale`] (called by the next
//! start, before anything else) finds the records under a run root whose
//! harness is dead, SIGKILLs the postmaster's process group (after checking
//! in `/proc` that the pid still is that postmaster), removes the container
//! and then the folder.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use super::PgError;

/// The record's file name inside a node folder.
pub const RECORD_FILE: &str = "pg-node.json";
/// How deep under the run root [`cleanup_stale`] looks for records
/// (`<run_root>/<run>/pg/<node>/` is depth 3).
pub const MAX_DEPTH: usize = 6;
/// How long a killed leftover may take to disappear from `/proc`.
const GONE_TIMEOUT_MS: u64 = 5_000;

/// Who started a node, and what to kill to remove it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// The harness process that started it.
    pub harness_pid: u32,
    /// Its start time in clock ticks since boot (`/proc/<pid>/stat` field
    /// 22): a pid reused by another process has another start time.
    pub harness_start: u64,
    /// The postmaster (leader of the server's process group), `local` only.
    pub postmaster_pid: Option<u32>,
    /// The data folder.
    pub data_dir: PathBuf,
    /// The port it listens on.
    pub port: u16,
    /// The container, `docker` only.
    pub container_id: Option<String>,
    /// The run's id.
    pub run_id: String,
}

/// What [`cleanup_stale`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CleanupReport {
    /// Node folders removed.
    pub nodes_removed: u32,
    /// Postmasters (with their process groups) killed.
    pub servers_killed: u32,
    /// Containers removed.
    pub containers_removed: u32,
    /// Records left alone because their harness is still running.
    pub live_skipped: u32,
}

/// Writes `<node_dir>/pg-node.json`.
pub(crate) fn write_record(node_dir: &Path, record: &NodeRecord) -> Result<(), PgError> {
    let path = node_dir.join(RECORD_FILE);
    let text = serde_json::to_string_pretty(record).expect("a record serialises");
    std::fs::write(&path, text).map_err(PgError::io("writing the node record", &path))
}

/// Reads a node record.
pub fn read_record(node_dir: &Path) -> Result<NodeRecord, PgError> {
    let path = node_dir.join(RECORD_FILE);
    let text = std::fs::read_to_string(&path).map_err(PgError::io("reading the node record", &path))?;
    serde_json::from_str(&text).map_err(|e| {
        PgError::Invalid(format!(
            "{}: not a node record ({e}); delete the folder {}",
            path.display(),
            node_dir.display()
        ))
    })
}

/// A process's start time in clock ticks since boot, `None` if it is gone.
pub fn proc_start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: fields
    // after it are counted from the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Whether the harness that wrote `r` is still running.
pub fn harness_alive(r: &NodeRecord) -> bool {
    match proc_start_ticks(r.harness_pid) {
        None => false,
        Some(t) => r.harness_start == 0 || t == r.harness_start,
    }
}

/// Whether `pid` is a postgres server of `data_dir` (its command line names
/// the folder), so a reused pid is never killed.
fn is_postmaster_of(pid: u32, data_dir: &Path) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { return false };
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let data = data_dir.as_os_str().as_encoded_bytes();
    args.first().is_some_and(|a| a.ends_with(b"postgres")) && args.contains(&data)
}

/// Kills what the record in `node_dir` names (when `force`, or when its
/// harness is dead) and removes the folder. Returns what it did.
pub(crate) fn cleanup_node(node_dir: &Path, force: bool) -> Result<CleanupReport, PgError> {
    let mut report = CleanupReport::default();
    let record = match read_record(node_dir) {
        Ok(r) => Some(r),
        Err(PgError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    if let Some(r) = &record {
        if !force && harness_alive(r) {
            report.live_skipped += 1;
            return Ok(report);
        }
        if let Some(pid) = r.postmaster_pid
            && is_postmaster_of(pid, &r.data_dir)
        {
            kill_group_and_wait(pid, &r.data_dir)?;
            report.servers_killed += 1;
        }
        if let Some(id) = &r.container_id
            && super::docker::remove_container(id)?
        {
            report.containers_removed += 1;
        }
    }
    std::fs::remove_dir_all(node_dir).map_err(PgError::io("removing a leftover node folder", node_dir))?;
    report.nodes_removed += 1;
    Ok(report)
}

/// SIGKILLs a postmaster and every child it has (PostgreSQL makes each
/// child a session leader, so one group signal does not reach them), then
/// waits until `pid` is no longer that postmaster (its parent reaps it).
fn kill_group_and_wait(pid: u32, data_dir: &Path) -> Result<(), PgError> {
    kill_server(pid).map_err(|e| PgError::Io {
        what: "killing a leftover server",
        path: data_dir.into(),
        source: e.into(),
    })?;
    let start = Instant::now();
    while is_postmaster_of(pid, data_dir) && !is_zombie(pid) {
        if start.elapsed() > Duration::from_millis(GONE_TIMEOUT_MS) {
            return Err(PgError::Invalid(format!(
                "leftover postgres pid {pid} of {} survived SIGKILL for {GONE_TIMEOUT_MS} ms; kill it by hand",
                data_dir.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// A crash of a whole server: the postmaster is stopped (SIGSTOP, so it
/// forks nothing more), every child of it SIGKILLed, then the postmaster.
/// A missing process is not an error.
pub(crate) fn kill_server(postmaster: u32) -> Result<(), nix::errno::Errno> {
    let pm = Pid::from_raw(i32::try_from(postmaster).expect("pids fit in i32"));
    let ok = |r: Result<(), nix::errno::Errno>| match r {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
        Err(e) => Err(e),
    };
    ok(kill(pm, Signal::SIGSTOP))?;
    for child in children_of(postmaster) {
        ok(kill(Pid::from_raw(i32::try_from(child).expect("pids fit in i32")), Signal::SIGKILL))?;
    }
    // Its own group too (a child that has not yet called setsid is in it).
    ok(killpg(pm, Signal::SIGKILL))?;
    ok(kill(pm, Signal::SIGKILL))
}

/// The pids whose parent is `pid` (from `/proc/<pid>/stat` field 4).
pub fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else { return out };
    for e in entries.flatten() {
        let Some(child) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else { continue };
        let Some(i) = stat.rfind(')') else { continue };
        let ppid = stat[i + 1..].split_whitespace().nth(1).and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(pid) {
            out.push(child);
        }
    }
    out
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rfind(')').and_then(|i| s[i + 1..].split_whitespace().next().map(|st| st == "Z")))
        .unwrap_or(false)
}

/// Kills and removes every PostgreSQL node under `run_root` whose harness is
/// dead (a harness SIGKILLed mid-drill): its server's process group, its
/// container, its folder; then every container labelled by a dead harness.
/// Nodes of running harnesses (this one included) are left alone. Call it
/// once at start, before starting nodes. A missing `run_root` is fine.
pub fn cleanup_stale(run_root: &Path) -> Result<CleanupReport, PgError> {
    let mut report = CleanupReport::default();
    let mut nodes = Vec::new();
    find_records(run_root, 0, &mut nodes);
    for dir in nodes {
        let r = cleanup_node(&dir, false)?;
        report.nodes_removed += r.nodes_removed;
        report.servers_killed += r.servers_killed;
        report.containers_removed += r.containers_removed;
        report.live_skipped += r.live_skipped;
    }
    report.containers_removed += super::docker::remove_orphan_containers()?;
    Ok(report)
}

fn find_records(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) {
    if depth > MAX_DEPTH {
        return;
    }
    if dir.join(RECORD_FILE).is_file() {
        out.push(dir.to_path_buf());
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        // Not into symlinks: a run folder never needs them followed.
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            find_records(&e.path(), depth + 1, out);
        }
    }
}
