//! The `docker` backend's container bookkeeping: every container this layer
//! starts carries [`LABEL`] and the harness's pid and start time, so the
//! next start removes those of a dead harness ([`remove_orphan_containers`]).

use std::process::{Command, Stdio};

use super::PgError;
use super::stale::{NodeRecord, harness_alive};

/// The label every agentdrill PostgreSQL container carries (`=1`).
pub const LABEL: &str = "agentdrill.pg";
/// The label holding the harness's pid.
pub const LABEL_HARNESS_PID: &str = "agentdrill.harness_pid";
/// The label holding the harness's start time (clock ticks since boot).
pub const LABEL_HARNESS_START: &str = "agentdrill.harness_start";
/// The label holding the run's id.
pub const LABEL_RUN: &str = "agentdrill.run";
/// The Docker socket this backend talks to.
pub const SOCKET: &str = "/var/run/docker.sock";

/// Whether a Docker daemon may answer here (its socket exists, or
/// `DOCKER_HOST` names one).
pub fn daemon_configured() -> bool {
    std::env::var_os("DOCKER_HOST").is_some() || std::path::Path::new(SOCKET).exists()
}

fn docker(args: &[&str]) -> Option<std::process::Output> {
    Command::new("docker").args(args).stdin(Stdio::null()).output().ok()
}

/// Removes a container (`docker rm -f`); `Ok(false)` if it was already gone.
pub(crate) fn remove_container(id: &str) -> Result<bool, PgError> {
    if !daemon_configured() {
        return Ok(false);
    }
    match docker(&["rm", "-f", "-v", id]) {
        Some(out) if out.status.success() => Ok(true),
        Some(out) => {
            let err = String::from_utf8_lossy(&out.stderr);
            if err.contains("No such container") {
                Ok(false)
            } else {
                Err(PgError::Docker(format!("`docker rm -f {id}` failed: {}", err.trim())))
            }
        }
        None => Ok(false),
    }
}

/// Removes every container labelled [`LABEL`] whose harness is dead; returns
/// how many. Without a daemon (or a `docker` program) there is nothing to do.
pub(crate) fn remove_orphan_containers() -> Result<u32, PgError> {
    if !daemon_configured() {
        return Ok(0);
    }
    let format = format!("{{{{.ID}}}} {{{{.Label \"{LABEL_HARNESS_PID}\"}}}} {{{{.Label \"{LABEL_HARNESS_START}\"}}}}");
    let Some(out) = docker(&["ps", "-a", "--filter", &format!("label={LABEL}=1"), "--format", &format]) else {
        return Ok(0);
    };
    if !out.status.success() {
        // The daemon does not answer: nothing of ours can be running on it.
        return Ok(0);
    }
    let mut removed = 0;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let mut f = line.split_whitespace();
        let (Some(id), pid, start) = (f.next(), f.next(), f.next()) else { continue };
        let record = NodeRecord {
            harness_pid: pid.and_then(|p| p.parse().ok()).unwrap_or(0),
            harness_start: start.and_then(|s| s.parse().ok()).unwrap_or(0),
            postmaster_pid: None,
            data_dir: Default::default(),
            port: 0,
            container_id: Some(id.into()),
            run_id: String::new(),
        };
        if record.harness_pid != 0 && harness_alive(&record) {
            continue;
        }
        if remove_container(id)? {
            removed += 1;
        }
    }
    Ok(removed)
}

/// Starts a standby container (the docker backend).
pub(crate) async fn start_standby(
    _opts: &super::PgOptions,
    _upstream: std::net::SocketAddr,
) -> Result<super::PgNode, PgError> {
    Err(PgError::Docker(
        "the docker backend is not in this build yet: use Backend::Local (see `agentdrill doctor`)".into(),
    ))
}
