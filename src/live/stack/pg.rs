//! The orchestrator's durable store in PostgreSQL.
//!
//! The in-memory [`Store`] stays the one implementation of the state
//! machine; this module makes each of its commits durable and loads it back.
//! Every handler's new log records go in **one transaction**: the event-log
//! rows, and the affected tasks' rows (status, cursor, lease with its
//! fencing token) and step rows (checkpoint key and arguments, decision).
//! The process loop delivers the handler's messages only after the commit,
//! so nothing is acknowledged before it is durable. At start the event log
//! is replayed into a fresh `Store`: a SIGKILLed orchestrator restarted on
//! the same database holds exactly what it had acknowledged.
//!
//! Fencing is enforced in SQL as well: a worker's write commits only while
//! the task's row still names that worker's token and holder (checked under
//! `SELECT … FOR UPDATE`), and a task row never takes a lower fencing token
//! than it has. A refusal aborts the transaction; the loop then stops the
//! process (its memory and the database disagree: another orchestrator
//! wrote), and a restart reloads the truth.
//!
//! Tables (schema `agentdrill`): `event_log (lsn, at_us, task, op jsonb)`,
//! `tasks (id, job, template, status, cursor, lease_holder, lease_token,
//! lease_expires_us, created_us, last_lsn)`, `steps (task, ordinal, state,
//! idem_key, args, decision)`: a step in state `intent` is a checkpoint;
//! `writes (first_lsn, task, holder, token)`: one row per worker write
//! committed, with the lease it claimed, so that [`audit`] can judge every
//! write against the lease history after a drill (stale writes, measured
//! from what PostgreSQL holds); `timelines (pg_timeline, started_us,
//! synchronous)`: one row per PostgreSQL timeline an orchestrator served
//! on (see [`Lineage`]).
//!
//! **Promotions.** The event log does not say that the store was promoted:
//! PostgreSQL does. A promotion (`pg_promote()`, or a restore from a base
//! backup by archive recovery) starts a new WAL timeline. An orchestrator
//! that starts on a timeline past the first that `timelines` does not list
//! yet serves a newly promoted store: it takes over by the simulator's own
//! promotion path and records the timeline with its start time, which is
//! the promotion time its [`Store`] keeps (a restart replays the recorded
//! promotions into the loaded store, [`Lineage::promotions_us`]). Each row
//! also says whether commits on that timeline waited for a synchronous
//! standby, so the next timeline knows whether it inherited every
//! acknowledged write ([`Lineage::inherited_synchronously`]).

use std::collections::BTreeSet;

use tokio_postgres::{Client, NoTls, Statement};

use crate::components::ids::{HostId, Micros, TaskId};
use crate::components::store::{LogRec, Op, StepState, Store, TaskStatus};

/// Most log records one load reads (a bound on start-up memory).
pub const MAX_LOG_RECORDS: i64 = 50_000_000;

/// Errors of the PostgreSQL store.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// Connecting or a statement failed.
    #[error("PostgreSQL ({what}): {source}; check DATABASE_URL and that the server is up")]
    Db {
        /// What was being done.
        what: &'static str,
        /// Cause.
        source: tokio_postgres::Error,
    },
    /// The event log has a hole or a record that does not parse.
    #[error(
        "agentdrill.event_log is damaged at lsn {lsn}: {why}; the stack cannot recover from it (drop the schema to start empty)"
    )]
    Damaged {
        /// Where.
        lsn: i64,
        /// What.
        why: String,
    },
    /// A write from a lease holder whose token the database no longer holds.
    #[error(
        "fencing: task {task} is no longer leased to host {holder} with token {token} in agentdrill.tasks; write refused"
    )]
    Fenced {
        /// Task.
        task: u64,
        /// Token of the write.
        token: u64,
        /// Its sender.
        holder: u32,
    },
    /// A task row would have taken a lower fencing token than it has.
    #[error("fencing: task {task}'s token would go back to {token} in agentdrill.tasks; write refused")]
    TokenWentBack {
        /// Task.
        task: u64,
        /// The token refused.
        token: u64,
    },
}

fn db(what: &'static str) -> impl FnOnce(tokio_postgres::Error) -> PgError {
    move |source| PgError::Db { what, source }
}

/// The write a worker's message carried: committed only while the database
/// still gives the task to `holder` under `token`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fence {
    /// Task written to.
    pub task: TaskId,
    /// Token the worker holds.
    pub token: u64,
    /// The worker.
    pub holder: HostId,
}

const SCHEMA: &str = "
CREATE SCHEMA IF NOT EXISTS agentdrill;
CREATE TABLE IF NOT EXISTS agentdrill.event_log (
    lsn BIGINT PRIMARY KEY,
    at_us BIGINT NOT NULL,
    task BIGINT NOT NULL,
    op JSONB NOT NULL
);
CREATE TABLE IF NOT EXISTS agentdrill.tasks (
    id BIGINT PRIMARY KEY,
    job BIGINT NOT NULL,
    template INT NOT NULL,
    status TEXT NOT NULL,
    cursor INT NOT NULL,
    lease_holder BIGINT NOT NULL,
    lease_token BIGINT NOT NULL CHECK (lease_token >= 0),
    lease_expires_us BIGINT NOT NULL,
    created_us BIGINT NOT NULL,
    last_lsn BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS agentdrill.steps (
    task BIGINT NOT NULL REFERENCES agentdrill.tasks (id),
    ordinal INT NOT NULL,
    state TEXT NOT NULL,
    idem_key TEXT NOT NULL,
    args BIGINT NOT NULL,
    decision BIGINT NOT NULL,
    PRIMARY KEY (task, ordinal)
);
CREATE TABLE IF NOT EXISTS agentdrill.writes (
    first_lsn BIGINT PRIMARY KEY,
    task BIGINT NOT NULL,
    holder BIGINT NOT NULL,
    token BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS agentdrill.timelines (
    pg_timeline BIGINT PRIMARY KEY,
    started_us BIGINT NOT NULL,
    synchronous BOOLEAN NOT NULL
);
";

/// One row of `agentdrill.timelines`: a PostgreSQL timeline an
/// orchestrator served on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimelineRow {
    /// The timeline's id (1: the cluster as `initdb` made it; each
    /// promotion adds one).
    pub pg_timeline: u64,
    /// When the first orchestrator on it started, on the boot clock (µs):
    /// for a promoted timeline, the promotion time of the store.
    pub started_us: Micros,
    /// Whether commits on it waited for a synchronous standby
    /// (`synchronous_standby_names` set).
    pub synchronous: bool,
}

/// What the database says about the promotions of the store it holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Lineage {
    /// The timeline PostgreSQL writes on now.
    pub current: u64,
    /// Whether commits wait for a synchronous standby now.
    pub synchronous_now: bool,
    /// The timelines recorded so far, in order.
    pub recorded: Vec<TimelineRow>,
}

impl Lineage {
    /// Whether the store was promoted since an orchestrator last started
    /// on it: PostgreSQL is on a timeline past the first that no
    /// orchestrator has recorded yet.
    pub fn newly_promoted(&self) -> bool {
        self.current > 1 && !self.recorded.iter().any(|r| r.pg_timeline == self.current)
    }

    /// The recorded promotions of the store (timelines past the first, up
    /// to the current one), oldest first, as their start times.
    pub fn promotions_us(&self) -> Vec<Micros> {
        self.recorded.iter().filter(|r| (2..=self.current).contains(&r.pg_timeline)).map(|r| r.started_us).collect()
    }

    /// Whether the current timeline inherited every write acknowledged
    /// before its promotion: the timeline before it committed
    /// synchronously. False when that timeline is not recorded (a restore
    /// from a backup taken before any orchestrator started: assume the
    /// worst) and on the first timeline (nothing was inherited).
    pub fn inherited_synchronously(&self) -> bool {
        let before = self.recorded.iter().filter(|r| r.pg_timeline < self.current).max_by_key(|r| r.pg_timeline);
        self.current > 1 && before.is_some_and(|r| r.synchronous)
    }
}

/// A connection to the stack's database.
pub struct PgStore {
    client: Client,
    insert_log: Statement,
    upsert_task: Statement,
    upsert_step: Statement,
    lock_task: Statement,
    insert_write: Statement,
}

/// A `u64` in a `BIGINT` column, bit for bit (keys and argument hashes use
/// all 64 bits).
fn bits(v: u64) -> i64 {
    v as i64
}

fn status_name(s: TaskStatus) -> &'static str {
    match s {
        TaskStatus::Queued => "queued",
        TaskStatus::Leased => "leased",
        TaskStatus::Done => "done",
        TaskStatus::Failed => "failed",
    }
}

fn state_name(s: StepState) -> &'static str {
    match s {
        StepState::Empty => "empty",
        StepState::Intent => "intent",
        StepState::Done => "done",
    }
}

impl PgStore {
    /// Connects to `url` and creates the schema if it is missing.
    pub async fn connect(url: &str) -> Result<Self, PgError> {
        let (client, connection) = tokio_postgres::connect(url, NoTls).await.map_err(db("connect"))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::error!(error = %e, "PostgreSQL connection closed");
            }
        });
        client.batch_execute(SCHEMA).await.map_err(db("create the schema"))?;
        let insert_log = client
            .prepare("INSERT INTO agentdrill.event_log (lsn, at_us, task, op) VALUES ($1, $2, $3, $4::text::jsonb)")
            .await
            .map_err(db("prepare"))?;
        let upsert_task = client
            .prepare(
                "INSERT INTO agentdrill.tasks AS t (id, job, template, status, cursor, lease_holder, lease_token, lease_expires_us, created_us, last_lsn)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
                 ON CONFLICT (id) DO UPDATE SET status = EXCLUDED.status, cursor = EXCLUDED.cursor,
                     lease_holder = EXCLUDED.lease_holder, lease_token = EXCLUDED.lease_token,
                     lease_expires_us = EXCLUDED.lease_expires_us, last_lsn = EXCLUDED.last_lsn
                 WHERE t.lease_token <= EXCLUDED.lease_token",
            )
            .await
            .map_err(db("prepare"))?;
        let upsert_step = client
            .prepare(
                "INSERT INTO agentdrill.steps (task, ordinal, state, idem_key, args, decision) VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (task, ordinal) DO UPDATE SET state = EXCLUDED.state, idem_key = EXCLUDED.idem_key,
                     args = EXCLUDED.args, decision = EXCLUDED.decision",
            )
            .await
            .map_err(db("prepare"))?;
        let lock_task = client
            .prepare("SELECT lease_token, lease_holder FROM agentdrill.tasks WHERE id = $1 FOR UPDATE")
            .await
            .map_err(db("prepare"))?;
        let insert_write = client
            .prepare("INSERT INTO agentdrill.writes (first_lsn, task, holder, token) VALUES ($1, $2, $3, $4)")
            .await
            .map_err(db("prepare"))?;
        Ok(PgStore { client, insert_log, upsert_task, upsert_step, lock_task, insert_write })
    }

    /// The store as the event log rebuilds it.
    pub async fn load(&self) -> Result<Store, PgError> {
        let mut store = Store::new();
        for rec in read_log(&self.client).await? {
            store.apply_replicated(&rec);
        }
        Ok(store)
    }

    /// The database's timeline now, whether it commits synchronously, and
    /// the timelines recorded (PostgreSQL's own account of promotions:
    /// the timeline is the WAL file's, `pg_walfile_name`).
    pub async fn lineage(&self) -> Result<Lineage, PgError> {
        let row = self
            .client
            .query_one(
                "SELECT pg_walfile_name(pg_current_wal_lsn()), current_setting('synchronous_standby_names') <> ''",
                &[],
            )
            .await
            .map_err(db("read the timeline"))?;
        let (file, synchronous_now): (String, bool) = (row.get(0), row.get(1));
        let current = file.get(..8).and_then(|h| u64::from_str_radix(h, 16).ok()).ok_or_else(|| PgError::Damaged {
            lsn: 0,
            why: format!("pg_walfile_name returned {file:?}, not a WAL file name"),
        })?;
        let rows = self
            .client
            .query("SELECT pg_timeline, started_us, synchronous FROM agentdrill.timelines ORDER BY pg_timeline", &[])
            .await
            .map_err(db("read agentdrill.timelines"))?;
        let recorded = rows
            .iter()
            .map(|r| TimelineRow {
                pg_timeline: r.get::<_, i64>(0) as u64,
                started_us: r.get::<_, i64>(1) as u64,
                synchronous: r.get(2),
            })
            .collect();
        Ok(Lineage { current, synchronous_now, recorded })
    }

    /// Records `row` (kept if the timeline is recorded already).
    pub async fn record_timeline(&self, row: TimelineRow) -> Result<(), PgError> {
        self.client
            .execute(
                "INSERT INTO agentdrill.timelines (pg_timeline, started_us, synchronous) VALUES ($1, $2, $3)
                 ON CONFLICT (pg_timeline) DO NOTHING",
                &[&bits(row.pg_timeline), &bits(row.started_us), &row.synchronous],
            )
            .await
            .map_err(db("record the timeline"))?;
        Ok(())
    }

    /// Makes `recs` (the records a handler just committed to `store`)
    /// durable in one transaction, with the task and step rows they touched.
    pub async fn commit(&mut self, recs: &[LogRec], store: &Store, fence: Option<Fence>) -> Result<(), PgError> {
        self.commit_write(recs, store, fence, true).await
    }

    /// As [`PgStore::commit`]; `write` is the worker write the records come
    /// from (recorded in `agentdrill.writes` with the first record's lsn,
    /// for [`audit`]) and is refused when stale only if `enforce` (fencing
    /// on: the `no_fencing` anti-pattern records without refusing).
    pub async fn commit_write(
        &mut self,
        recs: &[LogRec],
        store: &Store,
        write: Option<Fence>,
        enforce: bool,
    ) -> Result<(), PgError> {
        assert!(!recs.is_empty(), "nothing to commit");
        let tx = self.client.transaction().await.map_err(db("begin"))?;
        if let Some(f) = write.filter(|_| enforce) {
            let row = tx.query_opt(&self.lock_task, &[&bits(f.task.0)]).await.map_err(db("lock the task"))?;
            let held =
                row.is_some_and(|r| r.get::<_, i64>(0) == bits(f.token) && r.get::<_, i64>(1) == i64::from(f.holder.0));
            if !held {
                return Err(PgError::Fenced { task: f.task.0, token: f.token, holder: f.holder.0 });
            }
        }
        if let Some(f) = write {
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 4] =
                [&bits(recs[0].lsn), &bits(f.task.0), &i64::from(f.holder.0), &bits(f.token)];
            tx.execute(&self.insert_write, &params).await.map_err(db("record the write"))?;
        }
        let mut touched = BTreeSet::new();
        for rec in recs {
            let op = serde_json::to_string(&rec.op).expect("ops serialise");
            let task = rec.op.task();
            tx.execute(&self.insert_log, &[&bits(rec.lsn), &bits(rec.at_us), &bits(task.0), &op])
                .await
                .map_err(db("append to the event log"))?;
            touched.insert(task);
        }
        let last_lsn = bits(recs.last().expect("non-empty").lsn);
        for id in touched {
            let t = store.task(id).expect("a committed op names a task the store holds");
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 10] = [
                &bits(t.id.0),
                &i64::from(t.job.0),
                &i32::from(t.template),
                &status_name(t.status),
                &i32::from(t.cursor),
                &i64::from(t.lease.holder.0),
                &bits(t.lease.token),
                &bits(t.lease.expires_us),
                &bits(t.created_us),
                &last_lsn,
            ];
            let n = tx.execute(&self.upsert_task, &params).await.map_err(db("write the task"))?;
            if n != 1 {
                return Err(PgError::TokenWentBack { task: t.id.0, token: t.lease.token });
            }
            for (i, s) in t.steps.iter().enumerate().filter(|(_, s)| s.state != StepState::Empty) {
                let key = s.key.to_string();
                let params: [&(dyn tokio_postgres::types::ToSql + Sync); 6] =
                    [&bits(t.id.0), &(i as i32), &state_name(s.state), &key, &bits(s.args), &i64::from(s.decision)];
                tx.execute(&self.upsert_step, &params).await.map_err(db("write the step"))?;
            }
        }
        tx.commit().await.map_err(db("commit"))
    }
}

/// The reference stack's event log at `client`'s database, in lsn order;
/// `None` when it holds no `agentdrill.event_log` (not the reference
/// stack). The live drill reads the dead primary's copy with it after a
/// region loss (RTO's in-flight tasks and progress).
pub async fn event_log(client: &Client) -> Result<Option<Vec<LogRec>>, PgError> {
    let present: bool = client
        .query_one("SELECT to_regclass('agentdrill.event_log') IS NOT NULL", &[])
        .await
        .map_err(db("look for agentdrill.event_log"))?
        .get(0);
    if !present {
        return Ok(None);
    }
    read_log(client).await.map(Some)
}

/// The event log in lsn order, checked for holes.
async fn read_log(client: &Client) -> Result<Vec<LogRec>, PgError> {
    let rows = client
        .query("SELECT lsn, at_us, op::text FROM agentdrill.event_log ORDER BY lsn LIMIT $1", &[&MAX_LOG_RECORDS])
        .await
        .map_err(db("read the event log"))?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let (lsn, at_us, op): (i64, i64, String) = (row.get(0), row.get(1), row.get(2));
        if lsn != out.len() as i64 + 1 {
            return Err(PgError::Damaged { lsn, why: format!("expected lsn {}", out.len() + 1) });
        }
        let op: Op = serde_json::from_str(&op).map_err(|e| PgError::Damaged { lsn, why: e.to_string() })?;
        out.push(LogRec { lsn: lsn as u64, at_us: at_us as u64, op });
    }
    Ok(out)
}

/// What the durable event log of a reference stack shows after a drill.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Audit {
    /// Worker writes committed.
    pub writes: u64,
    /// Of those, writes whose sender did not hold the task's lease (that
    /// token, that holder, the task leased) when they were committed: what
    /// fencing exists to refuse.
    pub stale_writes: u64,
    /// The event log as committed, for the measurements the harness takes
    /// from it (corrupted writes: `drill::measure::corrupted_writes`).
    pub log: Vec<LogRec>,
    /// Every lease grant of the event log (the lease history the
    /// fakes' side-effect requests are judged against: stale actions).
    pub grants: Vec<crate::live::runs::Grant>,
    /// When each task was requeued (a lease found expired by the recovery
    /// scan, or taken back at a promotion), on the boot clock (µs): when
    /// the stack noticed a holder was gone.
    pub requeues_us: Vec<crate::components::ids::Micros>,
}

/// Reads the reference stack's event log and write records from the
/// database at `url` after a drill (ground truth the harness can read:
/// what PostgreSQL committed, not what a process believes) and replays the
/// log through [`Store`] to judge each write against the lease it was
/// committed under. `None` when the database holds no `agentdrill.writes`
/// (a stack that is not the reference stack: nothing to judge by).
pub async fn audit(url: &str) -> Result<Option<Audit>, PgError> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await.map_err(db("connect"))?;
    let conn = tokio::spawn(connection);
    let result = audit_with(&client).await;
    drop(client);
    let _ = conn.await;
    result
}

async fn audit_with(client: &Client) -> Result<Option<Audit>, PgError> {
    let present: bool = client
        .query_one(
            "SELECT to_regclass('agentdrill.writes') IS NOT NULL AND to_regclass('agentdrill.event_log') IS NOT NULL",
            &[],
        )
        .await
        .map_err(db("look for the reference stack's tables"))?
        .get(0);
    if !present {
        return Ok(None);
    }
    let rows = client
        .query("SELECT first_lsn, task, holder, token FROM agentdrill.writes ORDER BY first_lsn", &[])
        .await
        .map_err(db("read the write records"))?;
    let writes: Vec<(u64, Fence)> = rows
        .iter()
        .map(|r| {
            let (lsn, task, holder, token): (i64, i64, i64, i64) = (r.get(0), r.get(1), r.get(2), r.get(3));
            (lsn as u64, Fence { task: TaskId(task as u64), token: token as u64, holder: HostId(holder as u32) })
        })
        .collect();
    let log = read_log(client).await?;
    let mut audit = judge(&log, &writes);
    audit.grants = grants(&log);
    audit.requeues_us = log.iter().filter(|r| matches!(r.op, Op::Requeue { .. })).map(|r| r.at_us).collect();
    audit.log = log;
    Ok(Some(audit))
}

/// The lease grants of `log`, each with its task's job.
pub fn grants(log: &[LogRec]) -> Vec<crate::live::runs::Grant> {
    let mut jobs = rustc_hash::FxHashMap::default();
    let mut out = Vec::new();
    for rec in log {
        match rec.op {
            Op::Create { task, job, .. } => {
                jobs.insert(task, job.0);
            }
            Op::Lease { task, lease } => {
                if let Some(&job) = jobs.get(&task) {
                    let (token, holder, at_us) = (lease.token, lease.holder, rec.at_us);
                    out.push(crate::live::runs::Grant { job, task: task.0, token, holder, at_us });
                }
            }
            _ => {}
        }
    }
    out
}

/// Replays `log` and judges each write (at its first record's lsn) by the
/// orchestrator's own rule: the task leased, to that holder, under that
/// token.
pub fn judge(log: &[LogRec], writes: &[(u64, Fence)]) -> Audit {
    let mut store = Store::new();
    let mut next = writes.iter().peekable();
    let mut a = Audit::default();
    for rec in log {
        while let Some(&&(lsn, f)) = next.peek()
            && lsn <= rec.lsn
        {
            next.next();
            if lsn < rec.lsn {
                continue; // no such record: written by something else
            }
            a.writes += 1;
            let held = store.task(f.task).is_some_and(|t| {
                t.status == TaskStatus::Leased && t.lease.token == f.token && t.lease.holder == f.holder
            });
            if !held {
                a.stale_writes += 1;
            }
        }
        store.apply_replicated(rec);
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(pg_timeline: u64, started_us: Micros, synchronous: bool) -> TimelineRow {
        TimelineRow { pg_timeline, started_us, synchronous }
    }

    #[test]
    fn a_timeline_past_the_first_that_no_orchestrator_recorded_is_a_new_promotion() {
        let first = Lineage { current: 1, synchronous_now: false, recorded: vec![] };
        assert!(!first.newly_promoted() && first.promotions_us().is_empty(), "initdb's timeline is no promotion");
        let promoted = Lineage { current: 2, synchronous_now: false, recorded: vec![row(1, 10, false)] };
        assert!(promoted.newly_promoted());
        assert!(promoted.promotions_us().is_empty(), "not recorded yet: the orchestrator promotes it");
        let restarted = Lineage { recorded: vec![row(1, 10, false), row(2, 50, false)], ..promoted };
        assert!(!restarted.newly_promoted());
        assert_eq!(restarted.promotions_us(), vec![50], "a restart replays the promotion into its store");
    }

    #[test]
    fn a_store_was_inherited_synchronously_only_from_a_recorded_synchronous_timeline() {
        let sync = Lineage { current: 2, synchronous_now: false, recorded: vec![row(1, 10, true)] };
        assert!(sync.inherited_synchronously());
        let not = Lineage { recorded: vec![row(1, 10, false)], ..sync.clone() };
        assert!(!not.inherited_synchronously());
        let unknown = Lineage { recorded: vec![], ..sync.clone() };
        assert!(!unknown.inherited_synchronously(), "a backup older than any record: assume the worst");
        let first = Lineage { current: 1, recorded: vec![row(1, 10, true)], ..sync };
        assert!(!first.inherited_synchronously(), "nothing inherited on the first timeline");
    }
}
