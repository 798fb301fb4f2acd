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
//! idem_key, args, decision)`: a step in state `intent` is a checkpoint.

use std::collections::BTreeSet;

use tokio_postgres::{Client, NoTls, Statement};

use crate::components::ids::{HostId, TaskId};
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
";

/// A connection to the stack's database.
pub struct PgStore {
    client: Client,
    insert_log: Statement,
    upsert_task: Statement,
    upsert_step: Statement,
    lock_task: Statement,
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
        Ok(PgStore { client, insert_log, upsert_task, upsert_step, lock_task })
    }

    /// The store as the event log rebuilds it.
    pub async fn load(&self) -> Result<Store, PgError> {
        let rows = self
            .client
            .query("SELECT lsn, at_us, op::text FROM agentdrill.event_log ORDER BY lsn LIMIT $1", &[&MAX_LOG_RECORDS])
            .await
            .map_err(db("read the event log"))?;
        let mut store = Store::new();
        for row in rows {
            let (lsn, at_us, op): (i64, i64, String) = (row.get(0), row.get(1), row.get(2));
            if lsn != store.last_lsn() as i64 + 1 {
                return Err(PgError::Damaged { lsn, why: format!("expected lsn {}", store.last_lsn() + 1) });
            }
            let op: Op = serde_json::from_str(&op).map_err(|e| PgError::Damaged { lsn, why: e.to_string() })?;
            store.apply_replicated(&LogRec { lsn: lsn as u64, at_us: at_us as u64, op });
        }
        Ok(store)
    }

    /// Makes `recs` (the records a handler just committed to `store`)
    /// durable in one transaction, with the task and step rows they touched.
    pub async fn commit(&mut self, recs: &[LogRec], store: &Store, fence: Option<Fence>) -> Result<(), PgError> {
        assert!(!recs.is_empty(), "nothing to commit");
        let tx = self.client.transaction().await.map_err(db("begin"))?;
        if let Some(f) = fence {
            let row = tx.query_opt(&self.lock_task, &[&bits(f.task.0)]).await.map_err(db("lock the task"))?;
            let held =
                row.is_some_and(|r| r.get::<_, i64>(0) == bits(f.token) && r.get::<_, i64>(1) == i64::from(f.holder.0));
            if !held {
                return Err(PgError::Fenced { task: f.task.0, token: f.token, holder: f.holder.0 });
            }
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
