//! RPO from the data: what the dead primary acknowledged that the promoted
//! standby lacks.
//!
//! After a drill the dead primary's data folder is copied and the copy
//! started isolated (its own port, no replication, every transaction
//! read-only, `synchronous_standby_names` empty), so crash recovery replays
//! exactly the WAL the primary had written — every commit it acknowledged.
//! For each table named by the caller, every row version is identified by
//! its key and its commit time (`pg_xact_commit_timestamp(xmin)`, which the
//! standby replays with the commit record, so a replicated version carries
//! the same time on both nodes). A version of the old primary is **lost**
//! when the promoted node has no version of that key with that commit time
//! and it committed after the last transaction the standby replayed before
//! its promotion (`pg_last_xact_replay_timestamp()`, frozen at promotion):
//! older versions did reach the standby and were since overwritten there.
//! Deletes leave no row and are not counted. RPO is the age at the fault of
//! the oldest lost commit.

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::local::{self, RunAs, Tools};
use super::{Backend, PgError, PgNode, PgOptions};

/// Most rows read per table and node (a drill's tables are small).
pub const MAX_ROWS: usize = 1_000_000;
/// Most lost keys listed per table (all are counted).
pub const MAX_LISTED: usize = 100;

/// A table to compare and its key column.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RpoTable {
    /// The table (`name` or `schema.name`, letters, digits and `_`).
    pub table: String,
    /// Its key column (unique per row).
    pub key: String,
}

impl RpoTable {
    /// `table` keyed by `key`.
    pub fn new(table: &str, key: &str) -> RpoTable {
        RpoTable { table: table.into(), key: key.into() }
    }
}

/// The loss in one table.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TableLoss {
    /// The table.
    pub table: String,
    /// Row versions the old primary committed that the promoted node lacks.
    pub lost: u64,
    /// Their keys (as text), oldest commit first, at most [`MAX_LISTED`].
    pub lost_keys: Vec<String>,
    /// The oldest lost commit, microseconds since the Unix epoch.
    pub oldest_lost_commit_unix_us: Option<i64>,
    /// Rows on the isolated old primary.
    pub rows_old_primary: u64,
    /// Rows on the promoted node.
    pub rows_promoted: u64,
}

/// What the promoted node lacks, per table and in all.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RpoReport {
    /// Per table, in the order asked.
    pub tables: Vec<TableLoss>,
    /// Lost row versions in all tables.
    pub lost: u64,
    /// The oldest lost commit of all, microseconds since the Unix epoch.
    pub oldest_lost_commit_unix_us: Option<i64>,
    /// RPO: the fault time minus the oldest lost commit, in milliseconds (0
    /// when nothing was lost).
    pub rpo_ms: f64,
    /// The last commit the standby replayed before promotion (microseconds
    /// since the Unix epoch), the cut-off below which versions reached it.
    pub replayed_until_unix_us: Option<i64>,
    /// The old primary's `agentdrill.event_log` as it committed it (empty
    /// when the stack keeps none): the live drill's RTO reads the tasks in
    /// flight at the loss, and their progress before it, from it.
    #[serde(skip)]
    pub old_primary_log: Vec<crate::components::store::LogRec>,
}

/// Microseconds since the Unix epoch.
pub fn unix_us(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or_else(|e| -(e.duration().as_micros() as i64))
}

fn check_ident(what: &str, s: &str) -> Result<(), PgError> {
    let ok = !s.is_empty()
        && s.len() <= 63 * 2 + 1
        && s.split('.').count() <= 2
        && s.split('.').all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'));
    if ok {
        Ok(())
    } else {
        Err(PgError::Invalid(format!("RpoTable.{what} {s:?}: use [A-Za-z0-9_] (and one '.' for a schema)")))
    }
}

fn quoted(ident: &str) -> String {
    ident.split('.').map(|p| format!("\"{p}\"")).collect::<Vec<_>>().join(".")
}

/// Compares the dead `old_primary` (killed or fenced, not running) with the
/// `promoted` node over `tables`; `fault_at` is when the primary was lost.
/// Starts a read-only copy of the old primary's data folder in
/// `<old node dir>/rpo/` and removes it afterwards; the old folder itself is
/// never started.
pub async fn measure(
    old_primary: &mut PgNode,
    promoted: &PgNode,
    tables: &[RpoTable],
    fault_at: SystemTime,
) -> Result<RpoReport, PgError> {
    for t in tables {
        check_ident("table", &t.table)?;
        check_ident("key", &t.key)?;
    }
    if old_primary.is_running() {
        return Err(PgError::Invalid(format!(
            "node {} is still running: kill() or fence() it before measuring RPO from its data",
            old_primary.name()
        )));
    }
    let isolated = start_isolated(old_primary).await?;
    let result = compare(&isolated, promoted, tables, fault_at).await;
    drop(isolated);
    result
}

/// Starts a copy of `node`'s data folder as node `<name>-rpo`, isolated.
async fn start_isolated(node: &PgNode) -> Result<PgNode, PgError> {
    let parent = node.node_dir().parent().expect("a node folder is inside <run_dir>/pg").to_path_buf();
    let run_dir = parent.parent().expect("<run_dir>/pg has a parent").to_path_buf();
    let name = format!("{}-rpo", node.name());
    let opts = PgOptions { run_dir, run_id: "rpo".into(), backend: node.backend(), name, region: node.region().into() };
    let run_as = match opts.backend {
        Backend::Local => RunAs::current()?,
        Backend::Docker => None,
    };
    let dir = local::fresh_node_dir(&opts, run_as)?;
    let (from, to) = (node.data_dir(), dir.join("data"));
    tokio::task::spawn_blocking(move || copy_data(&from, &to))
        .await
        .map_err(|e| PgError::Invalid(format!("the copy task failed: {e}")))??;
    isolate(&dir.join("data"))?;
    match opts.backend {
        Backend::Local => local::start_on(&opts, &Tools::find()?, run_as, dir).await,
        Backend::Docker => super::docker::start_existing(&opts, dir).await,
    }
}

/// `cp -a` (ownership and modes kept: the server refuses a data folder it
/// does not own with mode 0700).
fn copy_data(from: &Path, to: &Path) -> Result<(), PgError> {
    local::run_tool(None, std::process::Command::new("cp").arg("-a").arg(from).arg(to))
}

/// No standby role, no upstream, no synchronous waits, read-only.
fn isolate(data: &Path) -> Result<(), PgError> {
    for f in ["standby.signal", "recovery.signal", "postmaster.pid"] {
        let p = data.join(f);
        if p.exists() {
            std::fs::remove_file(&p).map_err(PgError::io("isolating the copy", &p))?;
        }
    }
    super::pair::append_auto_conf(
        data,
        "\n# agentdrill: isolated copy for the RPO comparison\nprimary_conninfo = ''\nprimary_slot_name = ''\nsynchronous_standby_names = ''\ndefault_transaction_read_only = on\n",
    )
}

/// (key, commit time in µs) of every row of `t` on `node`.
async fn versions(node: &PgNode, t: &RpoTable) -> Result<Vec<(String, Option<i64>)>, PgError> {
    let db = node.connect().await?;
    let sql = format!(
        "SELECT {k}::text, (extract(epoch FROM pg_xact_commit_timestamp(xmin)) * 1000000)::int8 FROM {t} LIMIT {lim}",
        k = quoted(&t.key),
        t = quoted(&t.table),
        lim = MAX_ROWS + 1
    );
    let rows = db.query(&sql, &[]).await.map_err(|e| node.sql_error(&format!("read {}", t.table), e))?;
    if rows.len() > MAX_ROWS {
        return Err(PgError::Invalid(format!(
            "table {} on node {} has more than {MAX_ROWS} rows: too many to compare for RPO",
            t.table,
            node.name()
        )));
    }
    Ok(rows.iter().map(|r| (r.get::<_, Option<String>>(0).unwrap_or_default(), r.get(1))).collect())
}

async fn compare(
    old: &PgNode,
    promoted: &PgNode,
    tables: &[RpoTable],
    fault_at: SystemTime,
) -> Result<RpoReport, PgError> {
    let db = promoted.connect().await?;
    let replayed_until: Option<i64> = db
        .query_one("SELECT (extract(epoch FROM pg_last_xact_replay_timestamp()) * 1000000)::int8", &[])
        .await
        .map_err(|e| promoted.sql_error("pg_last_xact_replay_timestamp()", e))?
        .get(0);
    let mut report = RpoReport {
        tables: Vec::new(),
        lost: 0,
        oldest_lost_commit_unix_us: None,
        rpo_ms: 0.0,
        replayed_until_unix_us: replayed_until,
        old_primary_log: Vec::new(),
    };
    let old_db = old.connect().await?;
    report.old_primary_log = crate::live::stack::pg::event_log(&old_db).await.unwrap_or_else(|e| {
        tracing::warn!(error = %e, "the old primary's event log could not be read: RTO falls back to the serving log");
        None
    }).unwrap_or_default();
    for t in tables {
        let theirs = versions(old, t).await?;
        let ours = versions(promoted, t).await?;
        let have: HashSet<(&str, Option<i64>)> = ours.iter().map(|(k, c)| (k.as_str(), *c)).collect();
        let mut lost: Vec<(Option<i64>, &str)> = theirs
            .iter()
            .filter(|(k, c)| !have.contains(&(k.as_str(), *c)))
            .filter(|(_, c)| match (c, replayed_until) {
                (Some(c), Some(r)) => *c > r,
                _ => true,
            })
            .map(|(k, c)| (*c, k.as_str()))
            .collect();
        lost.sort();
        let oldest = lost.iter().filter_map(|(c, _)| *c).min();
        report.tables.push(TableLoss {
            table: t.table.clone(),
            lost: lost.len() as u64,
            lost_keys: lost.iter().take(MAX_LISTED).map(|(_, k)| k.to_string()).collect(),
            oldest_lost_commit_unix_us: oldest,
            rows_old_primary: theirs.len() as u64,
            rows_promoted: ours.len() as u64,
        });
        report.lost += lost.len() as u64;
        report.oldest_lost_commit_unix_us = match (report.oldest_lost_commit_unix_us, oldest) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
    if let Some(oldest) = report.oldest_lost_commit_unix_us {
        report.rpo_ms = ((unix_us(fault_at) - oldest).max(0) as f64) / 1000.0;
    }
    Ok(report)
}

/// The age of a commit at `at`.
pub fn age(commit_unix_us: i64, at: SystemTime) -> Duration {
    Duration::from_micros((unix_us(at) - commit_unix_us).max(0) as u64)
}
