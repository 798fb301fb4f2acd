//! Real PostgreSQL for live drills: a primary, a streaming hot standby,
//! promotion, fencing, replication lag and RPO measured from the data.
//!
//! The API is the same whatever provides the servers ([`Backend`]):
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use agentdrill::live::pg::{Cluster, PgOptions};
//! let opts = PgOptions::local("/tmp/run-42", "run-42");
//! let mut primary = Cluster::start_primary(&opts).await?;
//! let db = primary.connect().await?;
//! db.batch_execute("CREATE TABLE t (id int PRIMARY KEY)").await?;
//! println!("DATABASE_URL={}", primary.url());
//! primary.kill()?; // SIGKILL of every server process: a crash, the data folder kept
//! drop(primary); // stopped (if still running) and its folder removed
//! # Ok(()) }
//! ```
//!
//! Each node lives in `<run_dir>/pg/<name>/`: `data/` (the data folder),
//! `postgres.log` (the server's stderr) and [`stale::RECORD_FILE`] (who
//! started it: harness pid, postmaster pid, port, container id), which lets
//! [`cleanup_stale`] kill and remove what a SIGKILLed harness left behind.
//!
//! Settings (every node): `track_commit_timestamp = on` (RPO's commit ages),
//! `wal_level = replica`, hot standby, `fsync = off` and
//! `synchronous_commit = on`. Why `fsync = off` keeps the RPO truthful: a
//! drill's faults are process kills and network cuts, never a kernel crash,
//! and WAL written with `write()` before a commit is acknowledged survives the
//! death of every PostgreSQL process in the kernel's page cache; what decides
//! whether an acknowledged commit can be lost is `synchronous_commit`, which
//! stays `on` (and `remote_apply`-free: `on` with `synchronous_standby_names`
//! for a synchronous pair). `fsync` would only cost start-up and commit time.
//!
//! - [`docker`]: the `docker` backend (testcontainers, the offline image);
//! - [`doctor`]: which backends work here (`agentdrill doctor`);
//! - [`local`]: the `local` backend (`initdb` / `postgres` / `pg_basebackup`
//!   from PATH or `/usr/lib/postgresql/<v>/bin`, loopback ports);
//! - [`pair`]: the streaming standby, promotion, fencing, replication lag;
//! - [`rpo`]: RPO from the data (the dead primary's copy started isolated
//!   and compared with the promoted standby);
//! - [`backup`]: base backups of the primary and a node restored from one
//!   (a cold standby region);
//! - [`stale`]: the node records and [`cleanup_stale`].

pub mod backup;
pub mod docker;
pub mod doctor;
pub mod local;
pub mod pair;
pub mod rpo;
pub mod stale;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use backup::BaseBackup;
pub use pair::{Promotion, Replication, ReplicationLag, SenderState};
pub use rpo::{RpoReport, RpoTable, TableLoss};
pub use stale::{CleanupReport, cleanup_stale};

/// How long a node may take to accept connections after it was started.
pub const START_TIMEOUT_MS: u64 = 30_000;
/// How long a fast shutdown ([`PgNode::stop`]) may take before SIGKILL.
pub const STOP_TIMEOUT_MS: u64 = 10_000;
/// Longest node name (it is a folder name and a container label).
pub const MAX_NAME_LEN: usize = 32;
/// The database user every node trusts on loopback.
pub const USER: &str = "postgres";
/// The database every node serves.
pub const DATABASE: &str = "postgres";

/// Settings every node runs with, written into `postgresql.conf` at `initdb`
/// (a standby inherits them through `pg_basebackup`). See the module docs for
/// why `fsync` is off and `synchronous_commit` on.
pub const SETTINGS: &[(&str, &str)] = &[
    ("track_commit_timestamp", "on"),
    ("wal_level", "replica"),
    ("max_wal_senders", "8"),
    ("max_replication_slots", "8"),
    ("wal_keep_size", "'128MB'"),
    ("hot_standby", "on"),
    ("hot_standby_feedback", "on"),
    ("wal_receiver_status_interval", "'1s'"),
    ("wal_retrieve_retry_interval", "'200ms'"),
    ("fsync", "off"),
    ("synchronous_commit", "on"),
    ("full_page_writes", "on"),
    ("shared_buffers", "'16MB'"),
    ("max_connections", "64"),
    ("unix_socket_directories", "''"),
    ("logging_collector", "off"),
    ("log_min_messages", "warning"),
];

/// What provides the PostgreSQL servers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Backend {
    /// `initdb` / `postgres` / `pg_basebackup` binaries on this machine,
    /// loopback ports, data in the run folder.
    Local,
    /// Containers of the offline-built image (`scripts/build-pg-image.sh`)
    /// through testcontainers, on the host network, data in the run folder.
    Docker,
}

impl Backend {
    /// The name in scenarios and `agentdrill doctor`.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Local => "local",
            Backend::Docker => "docker",
        }
    }
}

/// Where and how to start a node.
#[derive(Clone, Debug)]
pub struct PgOptions {
    /// The drill's run folder; the node lives in `<run_dir>/pg/<name>/`.
    pub run_dir: PathBuf,
    /// The run's id (labels containers, names nothing else).
    pub run_id: String,
    /// What provides the server.
    pub backend: Backend,
    /// The node's name: a folder name, `[a-z0-9_-]`, at most [`MAX_NAME_LEN`].
    pub name: String,
    /// The region the node belongs to (reported, labels containers).
    pub region: String,
}

impl PgOptions {
    /// A `local` primary named `primary` in region `a`.
    pub fn local(run_dir: impl Into<PathBuf>, run_id: impl Into<String>) -> PgOptions {
        PgOptions {
            run_dir: run_dir.into(),
            run_id: run_id.into(),
            backend: Backend::Local,
            name: "primary".into(),
            region: "a".into(),
        }
    }

    /// The same options with another node name and region (e.g. the standby).
    pub fn named(&self, name: &str, region: &str) -> PgOptions {
        PgOptions { name: name.into(), region: region.into(), ..self.clone() }
    }

    /// The node's folder, `<run_dir>/pg/<name>`.
    pub fn node_dir(&self) -> PathBuf {
        self.run_dir.join("pg").join(&self.name)
    }

    fn validate(&self) -> Result<(), PgError> {
        let ok = !self.name.is_empty()
            && self.name.len() <= MAX_NAME_LEN
            && self.name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if !ok {
            return Err(PgError::Invalid(format!(
                "PgOptions.name {:?}: use 1..={MAX_NAME_LEN} characters of [a-z0-9_-] (it is a folder name)",
                self.name
            )));
        }
        if self.run_dir.as_os_str().is_empty() {
            return Err(PgError::Invalid("PgOptions.run_dir is empty: give the drill's run folder".into()));
        }
        Ok(())
    }
}

/// Errors of the PostgreSQL layer. Each names the file, the setting or the
/// command involved, and the fix.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// A PostgreSQL program is missing.
    #[error(
        "PostgreSQL program `{program}` not found; searched {searched}. Install PostgreSQL 15 with `cargo xtask test` (it runs `apt-get install postgresql-15` when initdb is missing)"
    )]
    MissingBinary {
        /// The program (`initdb`, `postgres`, `pg_basebackup`).
        program: &'static str,
        /// The folders searched, in order.
        searched: String,
    },
    /// Options or arguments that cannot work.
    #[error("{0}")]
    Invalid(String),
    /// A file operation failed.
    #[error("{what} ({path}): {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file or folder.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// A program ran and failed.
    #[error("`{command}` failed ({status}); its output:\n{output}")]
    Command {
        /// The command line.
        command: String,
        /// Exit status.
        status: String,
        /// Its stdout and stderr (the tail).
        output: String,
    },
    /// A server did not come up.
    #[error("PostgreSQL node `{node}` {what}; the tail of its log {log}:\n{tail}")]
    Start {
        /// The node's name.
        node: String,
        /// What went wrong (exited, timed out).
        what: String,
        /// The log file.
        log: PathBuf,
        /// The log's last lines.
        tail: String,
    },
    /// A statement failed.
    #[error("SQL on node `{node}` ({url}) failed: {what}: {source}")]
    Sql {
        /// The node's name.
        node: String,
        /// Its URL.
        url: String,
        /// What was being done.
        what: String,
        /// Cause.
        source: tokio_postgres::Error,
    },
    /// The Docker backend failed.
    #[error("docker backend: {0}")]
    Docker(String),
}

impl PgError {
    fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> PgError + 'a {
        move |source| PgError::Io { what, path: path.to_path_buf(), source }
    }
}

/// The entry points: start nodes (the pair's standby comes with it).
pub struct Cluster;

impl Cluster {
    /// Starts a fresh primary: a new data folder in `<run_dir>/pg/<name>/`
    /// (an old one of the same name is removed first), a free loopback port,
    /// [`SETTINGS`]; returns once it accepts connections (at most
    /// [`START_TIMEOUT_MS`]).
    pub async fn start_primary(opts: &PgOptions) -> Result<PgNode, PgError> {
        opts.validate()?;
        match opts.backend {
            Backend::Local => local::start_primary(opts).await,
            Backend::Docker => docker::start_primary(opts).await,
        }
    }
}

/// A running (or killed) PostgreSQL server of a drill. Dropping it kills
/// every process of the server and removes its folder.
#[derive(Debug)]
pub struct PgNode {
    name: String,
    region: String,
    node_dir: PathBuf,
    port: u16,
    fenced: bool,
    backend: Backend,
    inner: Proc,
}

/// The server process(es) behind a node.
#[derive(Debug)]
pub(crate) enum Proc {
    /// A postmaster child of this harness.
    Local(local::LocalProc),
    /// A container.
    Docker(Box<docker::DockerProc>),
}

impl Proc {
    fn is_running(&mut self) -> bool {
        match self {
            Proc::Local(p) => p.is_running(),
            Proc::Docker(p) => p.is_running(),
        }
    }

    fn kill(&mut self) -> Result<(), PgError> {
        match self {
            Proc::Local(p) => p.kill(),
            Proc::Docker(p) => p.kill(),
        }
    }

    async fn stop(&mut self) -> Result<(), PgError> {
        match self {
            Proc::Local(p) => p.stop().await,
            Proc::Docker(p) => p.stop().await,
        }
    }

    /// After the node's folder is gone: nothing may be left (a container is
    /// removed, not just killed).
    fn remove(&mut self) {
        if let Proc::Docker(p) = self {
            p.remove();
        }
    }
}

impl PgNode {
    /// The node's name (`primary`, `standby`, …).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What provides its server.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The node's region.
    pub fn region(&self) -> &str {
        &self.region
    }

    /// The loopback port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The connection URL (user [`USER`], database [`DATABASE`], trust on
    /// loopback): `postgres://postgres@127.0.0.1:<port>/postgres`.
    pub fn url(&self) -> String {
        url_for(self.addr())
    }

    /// The node's folder (`<run_dir>/pg/<name>`).
    pub fn node_dir(&self) -> &Path {
        &self.node_dir
    }

    /// The data folder (`<node_dir>/data`), kept after [`PgNode::kill`].
    pub fn data_dir(&self) -> PathBuf {
        self.node_dir.join("data")
    }

    /// The server's log file.
    pub fn log_path(&self) -> PathBuf {
        self.node_dir.join("postgres.log")
    }

    /// Whether the server's postmaster is still alive.
    pub fn is_running(&mut self) -> bool {
        self.inner.is_running()
    }

    /// A crash: SIGKILL to every process of the server at once. The data
    /// folder stays, as a dead host's disk would. Idempotent.
    pub fn kill(&mut self) -> Result<(), PgError> {
        self.inner.kill()
    }

    /// A clean stop (fast shutdown: sessions closed, a checkpoint written),
    /// SIGKILL after [`STOP_TIMEOUT_MS`]. The data folder stays. Idempotent.
    pub async fn stop(&mut self) -> Result<(), PgError> {
        self.inner.stop().await
    }

    /// A new client connection; its connection task runs on the current
    /// tokio runtime and ends when the client is dropped.
    pub async fn connect(&self) -> Result<tokio_postgres::Client, PgError> {
        connect_url(&self.name, &self.url()).await
    }
}

impl Drop for PgNode {
    fn drop(&mut self) {
        // Best effort: a failure here leaves a record that cleanup_stale
        // finds on the next start.
        if let Err(e) = self.inner.kill() {
            tracing::warn!("dropping PostgreSQL node {}: {e}", self.name);
        }
        self.inner.remove();
        if let Err(e) = std::fs::remove_dir_all(&self.node_dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!("removing {}: {e}", self.node_dir.display());
        }
    }
}

/// `postgres://postgres@<addr>/postgres`.
pub fn url_for(addr: SocketAddr) -> String {
    format!("postgres://{USER}@{addr}/{DATABASE}")
}

/// Connects to `url`, the connection task spawned on the current runtime.
pub(crate) async fn connect_url(node: &str, url: &str) -> Result<tokio_postgres::Client, PgError> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.map_err(|source| PgError::Sql {
        node: node.into(),
        url: url.into(),
        what: "connect".into(),
        source,
    })?;
    tokio::spawn(async move {
        // The connection ends with an error when the server is killed; the
        // client's next call reports it.
        let _ = conn.await;
    });
    Ok(client)
}

/// The last `lines` lines of a file (for error messages), or why not.
pub(crate) fn tail(path: &Path, lines: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(s) => {
            let all: Vec<&str> = s.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}
