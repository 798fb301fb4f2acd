//! The `docker` backend: one container per node, started through
//! testcontainers from the image `scripts/build-pg-image.sh` builds offline
//! ([`image_ref`]), on the host network (so ports, the caller's proxy
//! addresses and the `local` backend's URLs are the same), with the node
//! folder bind-mounted at its own path (so the data folder, the log and the
//! RPO copy are where the `local` backend puts them). The container runs as
//! the image's `postgres` user ([`IMAGE_UID`]), which owns the node folder.
//!
//! Every container carries [`LABEL`] and the harness's pid and start time,
//! so the next start removes those of a dead harness
//! (`remove_orphan_containers`); the synchronous operations (kill, remove,
//! state) use the `docker` program, the start testcontainers.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sha2::Digest;
use testcontainers::core::Mount;
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, GenericImage, ImageExt};

use super::local::free_port;
use super::stale::{self, NodeRecord, harness_alive};
use super::{PgError, PgNode, PgOptions, SETTINGS, START_TIMEOUT_MS, STOP_TIMEOUT_MS};

/// The image's repository.
pub const IMAGE_NAME: &str = "agentdrill/postgres";
/// The uid and gid of `postgres` in the image (fixed by the script).
pub const IMAGE_UID: u32 = 70;
/// The image script; its hash is the image's tag.
pub const IMAGE_SCRIPT: &str = include_str!("../../../scripts/build-pg-image.sh");
/// The script's path in the repository.
pub const IMAGE_SCRIPT_PATH: &str = "scripts/build-pg-image.sh";

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

/// Removes a container (`docker rm -f`); `Ok(false)` if it was already
/// gone, or if another process was removing it (two harnesses starting at
/// once both sweep a dead harness's containers): then this waits, up to
/// [`STOP_TIMEOUT_MS`], until the daemon no longer knows it.
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
            } else if err.contains("already in progress") {
                wait_container_gone(id)?;
                Ok(false)
            } else {
                Err(PgError::Docker(format!("`docker rm -f {id}` failed: {}", err.trim())))
            }
        }
        None => Ok(false),
    }
}

/// Waits until `docker inspect` no longer finds `id` (a removal another
/// process started), up to [`STOP_TIMEOUT_MS`].
fn wait_container_gone(id: &str) -> Result<(), PgError> {
    let start = Instant::now();
    while docker(&["inspect", "--format", "{{.Id}}", id]).is_some_and(|o| o.status.success()) {
        if start.elapsed() > Duration::from_millis(STOP_TIMEOUT_MS) {
            return Err(PgError::Docker(format!(
                "container {id} was being removed by another process and is still there after {STOP_TIMEOUT_MS} ms; \
                 remove it with `docker rm -f {id}`"
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
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

/// The image's tag: `15-` and the first 12 hex digits of the script's
/// SHA-256 (the script computes the same).
pub fn image_tag() -> String {
    let digest = sha2::Sha256::digest(IMAGE_SCRIPT.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("15-{}", &hex[..12])
}

/// `agentdrill/postgres:15-<hash>`.
pub fn image_ref() -> String {
    format!("{IMAGE_NAME}:{}", image_tag())
}

/// Whether the daemon answers (`docker version`), or why not.
pub fn daemon_answers() -> Result<String, String> {
    if !daemon_configured() {
        return Err(format!("no Docker daemon: {SOCKET} does not exist and DOCKER_HOST is unset"));
    }
    match docker(&["version", "--format", "{{.Server.Version}}"]) {
        Some(out) if out.status.success() => Ok(String::from_utf8_lossy(&out.stdout).trim().to_string()),
        Some(out) => Err(format!("the Docker daemon does not answer: {}", String::from_utf8_lossy(&out.stderr).trim())),
        None => Err("the `docker` program is not on PATH".into()),
    }
}

/// Whether the image is present locally.
pub fn image_present() -> bool {
    docker(&["image", "inspect", &image_ref()]).is_some_and(|o| o.status.success())
}

fn missing_image() -> PgError {
    PgError::Docker(format!(
        "the image {} is missing (no registry is reachable, it is built offline): run `cargo xtask test`, which runs {IMAGE_SCRIPT_PATH} when Docker answers, or run {IMAGE_SCRIPT_PATH} as root",
        image_ref()
    ))
}

/// `<node_dir>/agentdrill.conf`: [`SETTINGS`], appended to the data folder's
/// `postgresql.conf` by the container's start script after `initdb`.
fn write_settings(node_dir: &Path) -> Result<(), PgError> {
    let mut text = String::from("\n# agentdrill (src/live/pg/mod.rs SETTINGS)\n");
    for (k, v) in SETTINGS {
        text.push_str(&format!("{k} = {v}\n"));
    }
    let path = node_dir.join("agentdrill.conf");
    std::fs::write(&path, text).map_err(PgError::io("writing the node settings", &path))
}

fn hand_to_image_user(path: &Path) -> Result<(), PgError> {
    let id = Some(nix::unistd::Uid::from_raw(IMAGE_UID));
    nix::unistd::chown(path, id, Some(nix::unistd::Gid::from_raw(IMAGE_UID))).map_err(|e| PgError::Io {
        what: "handing the node folder to the image's postgres user (uid 70; the harness must be root)",
        path: path.into(),
        source: e.into(),
    })
}

/// A fresh node folder for a container; its server's start script.
fn prepare(opts: &PgOptions) -> Result<PathBuf, PgError> {
    if !image_present() {
        return Err(missing_image());
    }
    let dir = opts.node_dir();
    if dir.exists() {
        stale::cleanup_node(&dir, true)?;
    }
    std::fs::create_dir_all(&dir).map_err(PgError::io("creating the node folder", &dir))?;
    hand_to_image_user(&dir)?;
    write_settings(&dir)?;
    Ok(dir)
}

/// The shell line that starts the server (output into the node's log).
fn exec_server(node_dir: &Path, port: u16) -> String {
    let n = node_dir.display();
    format!("exec postgres -D {n}/data -c port={port} -c listen_addresses=127.0.0.1 >>{n}/postgres.log 2>&1")
}

/// Starts a primary container: `initdb` into the bind-mounted folder, then
/// the server.
pub(crate) async fn start_primary(opts: &PgOptions) -> Result<PgNode, PgError> {
    let dir = prepare(opts)?;
    let port = free_port()?;
    let n = dir.display();
    let script = format!(
        "set -e; initdb -D {n}/data -U {u} -A trust -E UTF8 --locale=C --no-sync --no-instructions >>{n}/postgres.log 2>&1; \
         cat {n}/agentdrill.conf >>{n}/data/postgresql.conf; {exec}",
        u = super::USER,
        exec = exec_server(&dir, port)
    );
    start_container(opts, dir, port, script).await
}

/// Starts a standby container: `pg_basebackup -R` from `upstream`, then the
/// server streaming from it.
pub(crate) async fn start_standby(opts: &PgOptions, upstream: SocketAddr) -> Result<PgNode, PgError> {
    let dir = prepare(opts)?;
    let port = free_port()?;
    let slot = super::pair::slot_name(&opts.name);
    let conf =
        format!("primary_conninfo = '{}'\nprimary_slot_name = '{slot}'\n", super::pair::conninfo(upstream, &slot));
    let conf_path = dir.join("standby.conf");
    std::fs::write(&conf_path, conf).map_err(PgError::io("writing the standby settings", &conf_path))?;
    let n = dir.display();
    let script = format!(
        "set -e; pg_basebackup -D {n}/data -h {h} -p {p} -U {u} -R -X stream -c fast --no-sync -C -S {slot} >>{n}/postgres.log 2>&1; \
         cat {n}/standby.conf >>{n}/data/postgresql.auto.conf; {exec}",
        h = upstream.ip(),
        p = upstream.port(),
        u = super::USER,
        exec = exec_server(&dir, port)
    );
    start_container(opts, dir, port, script).await
}

/// Starts a server on an existing data folder in `node_dir` (the RPO
/// comparison's isolated copy).
pub(crate) async fn start_existing(opts: &PgOptions, node_dir: PathBuf) -> Result<PgNode, PgError> {
    if !image_present() {
        return Err(missing_image());
    }
    hand_to_image_user(&node_dir)?;
    let port = free_port()?;
    let script = format!("set -e; {}", exec_server(&node_dir, port));
    start_container(opts, node_dir, port, script).await
}

async fn start_container(opts: &PgOptions, node_dir: PathBuf, port: u16, script: String) -> Result<PgNode, PgError> {
    let harness_pid = std::process::id();
    let harness_start = stale::proc_start_ticks(harness_pid).unwrap_or(0);
    let path = node_dir.display().to_string();
    let request = GenericImage::new(IMAGE_NAME, &image_tag())
        .with_entrypoint("/bin/sh")
        .with_cmd(["-c", &script])
        .with_network("host")
        .with_mount(Mount::bind_mount(path.clone(), path))
        .with_label(LABEL, "1")
        .with_label(LABEL_HARNESS_PID, harness_pid.to_string())
        .with_label(LABEL_HARNESS_START, harness_start.to_string())
        .with_label(LABEL_RUN, opts.run_id.clone())
        .with_label("agentdrill.node", opts.name.clone())
        .with_label("agentdrill.region", opts.region.clone())
        .with_startup_timeout(Duration::from_millis(START_TIMEOUT_MS));
    let container =
        request.start().await.map_err(|e| PgError::Docker(format!("starting a container of {}: {e}", image_ref())))?;
    let id = container.id().to_string();
    stale::write_record(
        &node_dir,
        &NodeRecord {
            harness_pid,
            harness_start,
            postmaster_pid: None,
            data_dir: node_dir.join("data"),
            port,
            container_id: Some(id.clone()),
            run_id: opts.run_id.clone(),
        },
    )?;
    let mut proc = DockerProc { container: Some(container), id, log: node_dir.join("postgres.log") };
    if let Err(e) = proc.wait_ready(&opts.name, port).await {
        proc.remove();
        return Err(e);
    }
    Ok(PgNode {
        name: opts.name.clone(),
        region: opts.region.clone(),
        node_dir,
        port,
        fenced: false,
        backend: super::Backend::Docker,
        inner: super::Proc::Docker(Box::new(proc)),
    })
}

/// A node's container.
#[derive(Debug)]
pub struct DockerProc {
    container: Option<ContainerAsync<GenericImage>>,
    id: String,
    log: PathBuf,
}

impl DockerProc {
    async fn wait_ready(&mut self, name: &str, port: u16) -> Result<(), PgError> {
        let url = super::url_for(([127, 0, 0, 1], port).into());
        let start = Instant::now();
        loop {
            if !self.is_running() {
                return Err(self.start_error(name, "exited during start-up".into()));
            }
            let probe = tokio::time::timeout(Duration::from_secs(2), super::connect_url(name, &url)).await;
            if let Ok(Ok(client)) = probe
                && client.simple_query("SELECT 1").await.is_ok()
            {
                return Ok(());
            }
            if start.elapsed() > Duration::from_millis(START_TIMEOUT_MS) {
                return Err(self.start_error(
                    name,
                    format!("did not accept connections on 127.0.0.1:{port} within {START_TIMEOUT_MS} ms"),
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn start_error(&self, name: &str, what: String) -> PgError {
        PgError::Start {
            node: name.into(),
            what: format!("(container {}) {what}", self.id),
            log: self.log.clone(),
            tail: super::tail(&self.log, 15),
        }
    }

    /// Whether the container runs (`docker inspect`).
    pub(crate) fn is_running(&mut self) -> bool {
        if self.container.is_none() {
            return false;
        }
        docker(&["inspect", "-f", "{{.State.Running}}", &self.id])
            .is_some_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == "true")
    }

    /// `docker kill`: SIGKILL to the postmaster, the container's pid 1, which
    /// takes every process of its pid namespace with it. The container (and
    /// the bind-mounted data) stays until [`DockerProc::remove`].
    pub(crate) fn kill(&mut self) -> Result<(), PgError> {
        if self.container.is_none() || !self.is_running() {
            return Ok(());
        }
        match docker(&["kill", &self.id]) {
            Some(o) if o.status.success() || !self.is_running() => Ok(()),
            Some(o) => Err(PgError::Docker(format!(
                "`docker kill {}`: {}",
                self.id,
                String::from_utf8_lossy(&o.stderr).trim()
            ))),
            None => Err(PgError::Docker("the `docker` program is not on PATH".into())),
        }
    }

    /// Fast shutdown (SIGINT to the postmaster), `docker kill` after
    /// [`STOP_TIMEOUT_MS`].
    pub(crate) async fn stop(&mut self) -> Result<(), PgError> {
        if !self.is_running() {
            return Ok(());
        }
        let _ = docker(&["kill", "--signal=INT", &self.id]);
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(STOP_TIMEOUT_MS) {
            if !self.is_running() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.kill()
    }

    /// Removes the container now (`docker rm -f`).
    pub(crate) fn remove(&mut self) {
        if self.container.take().is_some()
            && let Err(e) = remove_container(&self.id)
        {
            tracing::warn!("{e}");
        }
    }
}
