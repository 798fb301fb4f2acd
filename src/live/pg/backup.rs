//! Base backups and restores: what a cold standby region has of the primary.
//!
//! A cold standby runs nothing: region `b` keeps the latest base backup of
//! the primary (`pg_basebackup -X stream`, taken through the address the
//! caller gives, which may be a harness link crossing the regions), and on
//! a region loss a new primary is started from a copy of it. What the
//! primary committed after the backup ended is lost; the backup's WAL is
//! replayed by archive recovery (`recovery.signal`, no archive), which ends
//! on a new timeline, so the restored node has exactly the commits
//! up to the backup's end (RPO from the data, [`super::rpo::measure`], is
//! the age of the oldest commit after that at the fault).
//!
//! Backups are taken with the `local` tools (`pg_basebackup` on PATH, as
//! [`super::local::Tools`] finds it) on either backend; a restore starts on
//! the node options' backend.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::SystemTime;

use super::local::{self, RunAs, Tools};
use super::{Backend, PgError, PgNode, PgOptions};

/// How long a restored node may take to leave recovery.
const RECOVERY_TIMEOUT_MS: u64 = 30_000;

/// One base backup of the primary, kept in region `b`'s folder.
#[derive(Clone, Debug)]
pub struct BaseBackup {
    /// The backup's data folder (a complete, consistent data directory).
    pub data: PathBuf,
    /// When `pg_basebackup` returned (the backup's end, give or take the
    /// WAL switch it waits for).
    pub taken_at: SystemTime,
    /// Its number in the series (1 for the first).
    pub no: u32,
}

impl super::Cluster {
    /// Takes base backup `no` of the primary reachable at `upstream` into
    /// `<node dir of opts>/backups/<no>/data` (a fresh folder; `opts` names
    /// the region holding it). No replication slot is kept: a cold standby
    /// does not hold the primary's WAL back between backups.
    pub async fn base_backup(opts: &PgOptions, upstream: SocketAddr, no: u32) -> Result<BaseBackup, PgError> {
        let tools = Tools::find()?;
        let run_as = match opts.backend {
            Backend::Local => RunAs::current()?,
            Backend::Docker => None,
        };
        let dir = opts.node_dir().join("backups").join(no.to_string());
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(PgError::io("removing an old backup folder", &dir))?;
        }
        std::fs::create_dir_all(&dir).map_err(PgError::io("creating the backup folder", &dir))?;
        RunAs::chown(run_as, &opts.node_dir())?;
        RunAs::chown(run_as, &opts.node_dir().join("backups"))?;
        RunAs::chown(run_as, &dir)?;
        let data = dir.join("data");
        let d = data.clone();
        tokio::task::spawn_blocking(move || {
            local::run_tool(
                run_as,
                Command::new(&tools.pg_basebackup)
                    .arg("-D")
                    .arg(&d)
                    .args(["-h", &upstream.ip().to_string(), "-p", &upstream.port().to_string(), "-U", super::USER])
                    .args(["-X", "stream", "-c", "fast", "--no-sync"]),
            )
        })
        .await
        .map_err(|e| PgError::Invalid(format!("the pg_basebackup task failed: {e}")))??;
        Ok(BaseBackup { data, taken_at: SystemTime::now(), no })
    }

    /// Starts node `opts.name` as a primary from a copy of `backup` (the
    /// backup itself is kept): archive recovery replays the backup's WAL
    /// and ends on a new timeline (as a point-in-time restore does; the
    /// stack reads the timeline to learn its store was promoted), and the
    /// node is returned once it accepts writes.
    pub async fn start_restored(opts: &PgOptions, backup: &BaseBackup) -> Result<PgNode, PgError> {
        opts.validate()?;
        let run_as = match opts.backend {
            Backend::Local => RunAs::current()?,
            Backend::Docker => None,
        };
        let dir = local::fresh_node_dir(opts, run_as)?;
        let (from, to) = (backup.data.clone(), dir.join("data"));
        let docker = opts.backend == Backend::Docker;
        tokio::task::spawn_blocking(move || {
            local::run_tool(None, Command::new("cp").arg("-a").arg(&from).arg(&to))?;
            if docker {
                // The backup was taken by the harness (root): the container's
                // server runs as the image's postgres user and must own it.
                let owner = format!("{0}:{0}", super::docker::IMAGE_UID);
                local::run_tool(None, Command::new("chown").arg("-R").arg(owner).arg(&to))?;
            }
            // A backup of a node that had a standby may name it. Archive
            // recovery (no archive: the backup's own WAL) ends on a new
            // timeline, as a restore does: the stack sees it was promoted.
            super::pair::append_auto_conf(
                &to,
                "\n# agentdrill: restored from a base backup\nprimary_conninfo = ''\nsynchronous_standby_names = ''\nrestore_command = 'false'\n",
            )?;
            let signal = to.join("recovery.signal");
            std::fs::write(&signal, "").map_err(PgError::io("writing recovery.signal", &signal))
        })
        .await
        .map_err(|e| PgError::Invalid(format!("the restore copy task failed: {e}")))??;
        let node = match opts.backend {
            Backend::Local => local::start_on(opts, &Tools::find()?, run_as, dir).await?,
            Backend::Docker => super::docker::start_existing(opts, dir).await?,
        };
        let start = std::time::Instant::now();
        while node.is_standby().await? {
            if start.elapsed() > std::time::Duration::from_millis(RECOVERY_TIMEOUT_MS) {
                return Err(PgError::Invalid(format!(
                    "node {} restored from backup {} was still in recovery after {RECOVERY_TIMEOUT_MS} ms; see {}",
                    node.name(),
                    backup.no,
                    node.log_path().display()
                )));
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        Ok(node)
    }
}
