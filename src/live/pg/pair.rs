//! The pair: a hot standby streaming from the primary, promotion, fencing
//! and the replication lag.
//!
//! The standby copies the primary with `pg_basebackup -R` (a replication
//! slot named after the standby keeps the WAL it has not received yet) and
//! streams from the address the caller gives, which may be a harness TCP
//! proxy in front of the primary: cutting the proxy cuts replication.
//! Replication is asynchronous unless [`Replication::Synchronous`] is asked
//! for; then the primary names the standby in `synchronous_standby_names`
//! and each commit waits for the standby to flush its WAL.

use std::net::SocketAddr;
use std::process::Command;
use std::time::SystemTime;

use serde::Serialize;

use super::local::{self, RunAs, Tools};
use super::{Backend, PgError, PgNode, PgOptions};

/// How commits on the primary wait for the standby.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Replication {
    /// A commit is acknowledged once it is in the primary's WAL; the standby
    /// may lag (RPO > 0 on a region loss).
    #[default]
    Asynchronous,
    /// A commit is acknowledged once the standby flushed it
    /// (`synchronous_standby_names`); a cut standby blocks commits.
    Synchronous,
}

/// What a promotion did.
#[derive(Clone, Debug, Serialize)]
pub struct Promotion {
    /// When `pg_promote()` was called.
    #[serde(skip)]
    pub called_at: SystemTime,
    /// How long until the node accepted writes, in milliseconds.
    pub took_ms: u64,
    /// The last WAL position the standby had replayed before promotion.
    pub replayed_lsn: Option<String>,
}

/// The replication lag as the two nodes see it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ReplicationLag {
    /// The primary's current WAL position (`pg_current_wal_lsn()`).
    pub primary_lsn: String,
    /// The standby's last replayed position (`pg_last_wal_replay_lsn()`).
    pub replay_lsn: Option<String>,
    /// The standby's last received position (`pg_last_wal_receive_lsn()`).
    pub receive_lsn: Option<String>,
    /// WAL bytes the standby has not replayed yet.
    pub lag_bytes: u64,
    /// The primary's view of the standby (`pg_stat_replication`), if it is
    /// connected: state (`streaming`, `catchup`), `sync_state`
    /// (`async`, `sync`), and `replay_lag` in milliseconds.
    pub sender: Option<SenderState>,
}

/// One row of the primary's `pg_stat_replication`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SenderState {
    /// The standby's `application_name` (its node name).
    pub application_name: String,
    /// `streaming`, `catchup`, `startup`, …
    pub state: String,
    /// `async`, `sync`, `potential`, `quorum`.
    pub sync_state: String,
    /// `replay_lag` in milliseconds (`None` when idle: nothing to replay).
    pub replay_lag_ms: Option<f64>,
}

/// The slot (and `application_name`) of a standby: its name, `-` as `_`.
pub fn slot_name(node: &str) -> String {
    node.replace('-', "_")
}

impl super::Cluster {
    /// Starts a hot standby of `primary` as node `opts.name` (a fresh folder
    /// in `<run_dir>/pg/<name>/`): `pg_basebackup -R` from `upstream` (the
    /// primary's own [`PgNode::addr`], or a proxy in front of it), streaming
    /// from `upstream` afterwards; with [`Replication::Synchronous`] the
    /// primary then waits for it on every commit. Returns once the standby
    /// accepts (read-only) connections.
    pub async fn start_standby(
        opts: &PgOptions,
        primary: &PgNode,
        upstream: SocketAddr,
        replication: Replication,
    ) -> Result<PgNode, PgError> {
        opts.validate()?;
        if opts.name == primary.name() {
            return Err(PgError::Invalid(format!(
                "PgOptions.name {:?} is the primary's name: give the standby its own (e.g. \"standby\")",
                opts.name
            )));
        }
        let standby = match opts.backend {
            Backend::Local => start_local_standby(opts, upstream).await?,
            Backend::Docker => super::docker::start_standby(opts, upstream).await?,
        };
        if replication == Replication::Synchronous {
            let db = primary.connect().await?;
            let names = format!("ALTER SYSTEM SET synchronous_standby_names = '\"{}\"'", slot_name(&opts.name));
            db.batch_execute(&names).await.map_err(|e| primary.sql_error("set synchronous_standby_names", e))?;
            db.batch_execute("SELECT pg_reload_conf()").await.map_err(|e| primary.sql_error("pg_reload_conf()", e))?;
            wait_sync(primary, &slot_name(&opts.name)).await?;
        }
        Ok(standby)
    }
}

/// How long the primary may take to list a new synchronous standby as `sync`.
const SYNC_TIMEOUT_MS: u64 = 15_000;

async fn wait_sync(primary: &PgNode, app: &str) -> Result<(), PgError> {
    let db = primary.connect().await?;
    let start = std::time::Instant::now();
    loop {
        let rows = db
            .query("SELECT 1 FROM pg_stat_replication WHERE application_name = $1 AND sync_state = 'sync'", &[&app])
            .await
            .map_err(|e| primary.sql_error("read pg_stat_replication", e))?;
        if !rows.is_empty() {
            return Ok(());
        }
        if start.elapsed().as_millis() > u128::from(SYNC_TIMEOUT_MS) {
            return Err(PgError::Invalid(format!(
                "standby {app:?} not listed as synchronous by the primary within {SYNC_TIMEOUT_MS} ms (pg_stat_replication); see {}",
                primary.log_path().display()
            )));
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// The `primary_conninfo` a standby streams with.
pub(crate) fn conninfo(upstream: SocketAddr, app: &str) -> String {
    format!("host={} port={} user={} application_name={app}", upstream.ip(), upstream.port(), super::USER)
}

async fn start_local_standby(opts: &PgOptions, upstream: SocketAddr) -> Result<PgNode, PgError> {
    let tools = Tools::find()?;
    let run_as = RunAs::current()?;
    let node_dir = local::fresh_node_dir(opts, run_as)?;
    let data = node_dir.join("data");
    let slot = slot_name(&opts.name);
    let (t, d, s) = (tools.clone(), data.clone(), slot.clone());
    tokio::task::spawn_blocking(move || basebackup(&t, run_as, &d, upstream, &s))
        .await
        .map_err(|e| PgError::Invalid(format!("the pg_basebackup task failed: {e}")))??;
    local::start_on(opts, &tools, run_as, node_dir).await
}

/// `pg_basebackup -R` with a new slot, then our own `primary_conninfo` (with
/// the standby's `application_name`) after the one `-R` wrote.
fn basebackup(
    tools: &Tools,
    run_as: Option<RunAs>,
    data: &std::path::Path,
    upstream: SocketAddr,
    slot: &str,
) -> Result<(), PgError> {
    local::run_tool(
        run_as,
        Command::new(&tools.pg_basebackup)
            .arg("-D")
            .arg(data)
            .args(["-h", &upstream.ip().to_string(), "-p", &upstream.port().to_string(), "-U", super::USER])
            .args(["-R", "-X", "stream", "-c", "fast", "--no-sync", "-C", "-S", slot]),
    )?;
    append_auto_conf(
        data,
        &format!("primary_conninfo = '{}'\nprimary_slot_name = '{slot}'\n", conninfo(upstream, slot)),
    )
}

/// Appends settings to `postgresql.auto.conf` (the last one of a name wins).
pub(crate) fn append_auto_conf(data: &std::path::Path, lines: &str) -> Result<(), PgError> {
    use std::io::Write;
    let path = data.join("postgresql.auto.conf");
    let mut f = std::fs::File::options()
        .append(true)
        .open(&path)
        .map_err(PgError::io("opening postgresql.auto.conf", &path))?;
    f.write_all(lines.as_bytes()).map_err(PgError::io("writing postgresql.auto.conf", &path))
}

impl PgNode {
    pub(crate) fn sql_error(&self, what: &str, source: tokio_postgres::Error) -> PgError {
        PgError::Sql { node: self.name().into(), url: self.url(), what: what.into(), source }
    }

    /// Whether the node is a standby (`pg_is_in_recovery()`).
    pub async fn is_standby(&self) -> Result<bool, PgError> {
        let db = self.connect().await?;
        let row = db
            .query_one("SELECT pg_is_in_recovery()", &[])
            .await
            .map_err(|e| self.sql_error("pg_is_in_recovery()", e))?;
        Ok(row.get(0))
    }

    /// Promotes this standby (`SELECT pg_promote(true, 30)`): it stops
    /// streaming, ends recovery on a new timeline and accepts writes. The
    /// caller fences the old primary ([`PgNode::fence`]).
    pub async fn promote(&self) -> Result<Promotion, PgError> {
        let db = self.connect().await?;
        let replayed: Option<String> = db
            .query_one("SELECT pg_last_wal_replay_lsn()::text", &[])
            .await
            .map_err(|e| self.sql_error("pg_last_wal_replay_lsn()", e))?
            .get(0);
        let called_at = SystemTime::now();
        let start = std::time::Instant::now();
        let ok: bool = db
            .query_one("SELECT pg_promote(true, 30)", &[])
            .await
            .map_err(|e| self.sql_error("pg_promote()", e))?
            .get(0);
        if !ok || self.is_standby().await? {
            return Err(PgError::Invalid(format!(
                "node {} did not leave recovery within 30 s of pg_promote(); see {}",
                self.name(),
                self.log_path().display()
            )));
        }
        Ok(Promotion { called_at, took_ms: start.elapsed().as_millis() as u64, replayed_lsn: replayed })
    }

    /// Fences this (old) primary so it can never serve as a second primary:
    /// every server process SIGKILLed (it may still be running behind a cut
    /// network) and a `FENCED` mark written into its folder, which
    /// [`crate::live::pg::rpo`] honours by only ever starting a read-only
    /// copy of its data. Idempotent.
    pub fn fence(&mut self) -> Result<(), PgError> {
        self.kill()?;
        let mark = self.node_dir().join("FENCED");
        std::fs::write(&mark, "fenced after the standby's promotion; never restart this data folder as a primary\n")
            .map_err(PgError::io("writing the fence mark", &mark))?;
        self.fenced = true;
        Ok(())
    }

    /// Whether [`PgNode::fence`] was called.
    pub fn is_fenced(&self) -> bool {
        self.fenced
    }

    /// The replication lag of `standby` behind this primary, read on both
    /// (`pg_current_wal_lsn()`, `pg_stat_replication`,
    /// `pg_last_wal_receive_lsn()`, `pg_last_wal_replay_lsn()`).
    pub async fn replication_lag(&self, standby: &PgNode) -> Result<ReplicationLag, PgError> {
        let p = self.connect().await?;
        let primary_lsn: String = p
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await
            .map_err(|e| self.sql_error("pg_current_wal_lsn()", e))?
            .get(0);
        let app = slot_name(standby.name());
        let sender = p
            .query_opt(
                "SELECT state, sync_state, (extract(epoch FROM replay_lag) * 1000)::float8 \
                 FROM pg_stat_replication WHERE application_name = $1",
                &[&app],
            )
            .await
            .map_err(|e| self.sql_error("read pg_stat_replication", e))?
            .map(|r| SenderState {
                application_name: app.clone(),
                state: r.get(0),
                sync_state: r.get(1),
                replay_lag_ms: r.get(2),
            });
        let s = standby.connect().await?;
        let row = s
            .query_one("SELECT pg_last_wal_receive_lsn()::text, pg_last_wal_replay_lsn()::text", &[])
            .await
            .map_err(|e| standby.sql_error("pg_last_wal_replay_lsn()", e))?;
        let (receive_lsn, replay_lsn): (Option<String>, Option<String>) = (row.get(0), row.get(1));
        let lag_bytes = match &replay_lsn {
            Some(r) => {
                let d: f64 = p
                    .query_one("SELECT pg_wal_lsn_diff($1::text::pg_lsn, $2::text::pg_lsn)::float8", &[&primary_lsn, r])
                    .await
                    .map_err(|e| self.sql_error("pg_wal_lsn_diff()", e))?
                    .get(0);
                d.max(0.0) as u64
            }
            None => 0,
        };
        Ok(ReplicationLag { primary_lsn, replay_lsn, receive_lsn, lag_bytes, sender })
    }
}
