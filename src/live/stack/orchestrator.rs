//! `agentdrill stack orchestrator`: the simulator's [`Orchestrator`] as a
//! process, its store in PostgreSQL.
//!
//! HTTP on `AGENTDRILL_LISTEN_ADDR`:
//! - `POST /jobs` `{"job": N, "workflow": "book_flight"}`: submit (idempotent
//!   on the job; `"replay": true` when the client sends it as a replay, see
//!   [`crate::components::resend::is_replay`]); 200 once the task is
//!   durable, 503 when not acknowledged within [`SUBMIT_WAIT_MS`];
//! - `POST /msg`: an [`Envelope`] from a worker;
//! - `GET /jobs/{job}`: the stack's own record of the job (its belief, not
//!   ground truth: measurements read the fakes' ledgers);
//! - `GET /health`: 200 while serving.
//!
//! One loop task owns the orchestrator. After each handler it commits the
//! handler's new log records to PostgreSQL ([`PgStore::commit`]) and only
//! then delivers the outbox (grants, acknowledgements, the 200 of a
//! submission). A commit that fails stops the process with the error: the
//! supervisor restarts it and it reloads what is durable.

use std::net::SocketAddr;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use rustc_hash::FxHashMap;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::{mpsc, oneshot};

use super::env::{CLIENT, CONTROLLER, Envelope, FIRST_WORKER, LiveEnv, ORCHESTRATOR, monotonic_us};
use super::pg::{Fence, Lineage, PgStore, TimelineRow};
use super::{ConfigError, optional};
use crate::components::env::Env;
use crate::components::ids::{HostId, JobId};
use crate::components::orchestrator::{OrchConfig, Orchestrator, Replication};
use crate::components::policy::Policy;
use crate::components::store::Store;
use crate::components::wire::Msg;
use crate::components::workflow::builtin;

/// How long `POST /jobs` waits for the durable acknowledgement.
pub const SUBMIT_WAIT_MS: u64 = 10_000;
/// Highest job number accepted (the store indexes tasks by job).
pub const MAX_JOB: u64 = 1_000_000;
/// How long a message to a worker may take before it counts as lost.
const WORKER_POST_TIMEOUT_MS: u64 = 5_000;

/// An orchestrator process's settings.
#[derive(Clone, Debug)]
pub struct OrchestratorConfig {
    /// `AGENTDRILL_LISTEN_ADDR`.
    pub listen: SocketAddr,
    /// `DATABASE_URL` (`None`: the store lives in memory and dies with the
    /// process; only with `--memory`).
    pub database_url: Option<String>,
    /// `AGENTDRILL_SEED` (default 1).
    pub seed: u64,
    /// The policy switches.
    pub policy: Policy,
    /// How often the recovery service scans for expired leases.
    pub recovery_scan_ms: u64,
}

impl OrchestratorConfig {
    /// Reads the process contract's environment. `memory`: run without a
    /// database (state lost on a crash; for trying the stack by hand).
    pub fn from_env(anti_patterns: &[String], lease_ms: Option<u64>, memory: bool) -> Result<Self, ConfigError> {
        let mut policy = super::policy(std::env::var("AGENTDRILL_POLICY").ok().as_deref(), anti_patterns)?;
        if let Some(ms) = lease_ms.or(optional("AGENTDRILL_LEASE_MS")?) {
            if !(10..=3_600_000).contains(&ms) {
                let why = "expected milliseconds between 10 and 3 600 000".to_owned();
                return Err(ConfigError::Invalid { name: "AGENTDRILL_LEASE_MS".into(), value: ms.to_string(), why });
            }
            policy.lease_ms = ms;
        }
        let database_url = if memory {
            None
        } else {
            Some(super::required(
                "DATABASE_URL",
                "the PostgreSQL database of the stack's state (or pass --memory)",
                "postgresql://agentdrill@127.0.0.1:5432/agentdrill",
            )?)
        };
        Ok(OrchestratorConfig {
            listen: super::listen_addr()?,
            database_url,
            seed: optional("AGENTDRILL_SEED")?.unwrap_or(1),
            recovery_scan_ms: (policy.lease_ms / 4).clamp(10, 5_000),
            policy,
        })
    }

    /// The component's settings; `inherited_synchronously`: the store was
    /// promoted from a primary whose every acknowledged commit it holds
    /// (see [`Lineage::inherited_synchronously`]), which is what the
    /// simulator's synchronous replication means to a promoted store.
    fn orch_config(&self, inherited_synchronously: bool) -> OrchConfig {
        OrchConfig {
            lease_ms: self.policy.lease_ms,
            recovery_scan_ms: self.recovery_scan_ms,
            fencing: self.policy.fencing,
            replication: if inherited_synchronously {
                Replication::Sync { degrade_after_ms: None }
            } else {
                Replication::None
            },
            replica: None,
            client: CLIENT,
            wall_clock_leases: self.policy.wall_clock_leases,
            auto_rollback: self.policy.auto_rollback,
            idempotent_create: self.policy.idempotent_create,
            controller_silence_us: None, // the live controller checks the database, not this process
            commit_us: 0,                // PostgreSQL takes the real time: `flush` waits for it
        }
    }
}

/// What the HTTP side hands the loop.
enum Inbound {
    Peer(Envelope),
    Submit { job: JobId, template: u16, steps: u16, replay: bool, acked: oneshot::Sender<()> },
    Status { job: JobId, reply: oneshot::Sender<serde_json::Value> },
    Health { reply: oneshot::Sender<bool> },
}

type Tx = mpsc::UnboundedSender<Inbound>;

#[derive(Deserialize)]
struct SubmitBody {
    job: u64,
    workflow: String,
    /// The client's word that this send is a replay (`components::resend::is_replay`):
    /// the task it creates reconciles before it decides or acts.
    #[serde(default)]
    replay: bool,
}

fn error(status: StatusCode, msg: String) -> Response {
    (status, Json(json!({ "error": msg }))).into_response()
}

async fn submit(State(tx): State<Tx>, body: axum::body::Bytes) -> Response {
    let b: SubmitBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => {
            let msg = format!("bad body: {e}; expected {{\"job\": <integer>, \"workflow\": \"<template name>\"}}");
            return error(StatusCode::BAD_REQUEST, msg);
        }
    };
    if b.job > MAX_JOB {
        return error(StatusCode::BAD_REQUEST, format!("job: {} is past the limit of {MAX_JOB}", b.job));
    }
    let templates = builtin();
    let Some(template) = templates.iter().position(|t| t.name == b.workflow) else {
        let names: Vec<&str> = templates.iter().map(|t| t.name).collect();
        return error(
            StatusCode::BAD_REQUEST,
            format!("workflow: no template `{}`; the templates are {}", b.workflow, names.join(", ")),
        );
    };
    let steps = templates[template].steps.len() as u16;
    let (acked, wait) = oneshot::channel();
    let job = JobId(b.job as u32);
    if tx.send(Inbound::Submit { job, template: template as u16, steps, replay: b.replay, acked }).is_err() {
        return error(StatusCode::SERVICE_UNAVAILABLE, "the orchestrator is stopping".into());
    }
    match tokio::time::timeout(std::time::Duration::from_millis(SUBMIT_WAIT_MS), wait).await {
        Ok(Ok(())) => {
            (StatusCode::OK, Json(json!({ "job": b.job, "workflow": b.workflow, "accepted": true }))).into_response()
        }
        _ => error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "job {} not acknowledged within {SUBMIT_WAIT_MS} ms (not serving, or the database is slow); submit it again: submission is idempotent",
                b.job
            ),
        ),
    }
}

async fn receive(State(tx): State<Tx>, Json(e): Json<Envelope>) -> StatusCode {
    match tx.send(Inbound::Peer(e)) {
        Ok(()) => StatusCode::ACCEPTED,
        Err(_) => StatusCode::SERVICE_UNAVAILABLE,
    }
}

async fn status(State(tx): State<Tx>, Path(job): Path<u64>) -> Response {
    if job > MAX_JOB {
        return error(StatusCode::BAD_REQUEST, format!("job: {job} is past the limit of {MAX_JOB}"));
    }
    let (reply, answer) = oneshot::channel();
    let _ = tx.send(Inbound::Status { job: JobId(job as u32), reply });
    match answer.await {
        Ok(v) if v.is_null() => error(StatusCode::NOT_FOUND, format!("no task for job {job}")),
        Ok(v) => Json(v).into_response(),
        Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "the orchestrator is stopping".into()),
    }
}

async fn health(State(tx): State<Tx>) -> Response {
    let (reply, answer) = oneshot::channel();
    let _ = tx.send(Inbound::Health { reply });
    match answer.await {
        Ok(true) => (StatusCode::OK, "serving").into_response(),
        _ => (StatusCode::SERVICE_UNAVAILABLE, "not serving").into_response(),
    }
}

/// Runs an orchestrator process until it is killed or its database fails.
pub fn run(cfg: OrchestratorConfig) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(serve(cfg))
}

/// A worker the orchestrator has heard from: where it listens, which process.
struct Peer {
    url: String,
    incarnation: u64,
}

async fn serve(cfg: OrchestratorConfig) -> anyhow::Result<()> {
    let incarnation = monotonic_us();
    let mut pg = match &cfg.database_url {
        Some(url) => Some(PgStore::connect(url).await?),
        None => {
            tracing::warn!("no database (--memory): the orchestrator's state dies with the process");
            None
        }
    };
    let (store, lineage) = match &pg {
        Some(p) => (p.load().await?, p.lineage().await?),
        None => (Store::new(), Lineage::default()),
    };
    tracing::info!(records = store.last_lsn(), tasks = store.tasks().len(), timeline = lineage.current, "store loaded");
    let (tx, mut rx) = mpsc::unbounded_channel::<Inbound>();
    let (timer_tx, mut timer_rx) = mpsc::unbounded_channel();
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {} (AGENTDRILL_LISTEN_ADDR): {e}", cfg.listen))?;
    let app = axum::Router::new()
        .route("/jobs", post(submit))
        .route("/jobs/{job}", get(status))
        .route("/msg", post(receive))
        .route("/health", get(health))
        .with_state(tx);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "orchestrator listener stopped");
        }
    });
    let mut env = LiveEnv::new(ORCHESTRATOR, "orchestrator", cfg.seed, incarnation, timer_tx);
    let mut out =
        Outbound { peers: FxHashMap::default(), pending: FxHashMap::default(), client: reqwest::Client::new() };
    let before = store.last_lsn();
    let mut orch = take_store(cfg.orch_config(lineage.inherited_synchronously()), store, &lineage, &mut env);
    out.flush(&mut env, &orch, &mut pg, before, None, true).await?;
    if let Some(p) = &pg
        && !lineage.recorded.iter().any(|r| r.pg_timeline == lineage.current)
    {
        // After the promotion's own writes (its requeues) are durable: a
        // crash before this line promotes again on restart, which finds
        // nothing left to requeue.
        let started_us = orch.store().promoted_at_us().filter(|_| lineage.newly_promoted()).unwrap_or(env.now_us());
        p.record_timeline(TimelineRow {
            pg_timeline: lineage.current,
            started_us,
            synchronous: lineage.synchronous_now,
        })
        .await?;
    }
    tracing::info!(listen = %cfg.listen, serving = orch.is_serving(), "orchestrator started");
    loop {
        let before = orch.store().last_lsn();
        let mut fence = None;
        tokio::select! {
            Some(timer) = timer_rx.recv() => orch.on_timer(&mut env, timer),
            Some(input) = rx.recv() => match input {
                Inbound::Peer(e) => {
                    let Some(msg) = e.msg() else { continue };
                    let Some(f) = out.admit(&e, &msg) else { continue };
                    fence = f;
                    orch.on_msg(&mut env, e.from, msg);
                }
                Inbound::Submit { job, template, steps, replay, acked } => {
                    tracing::debug!(job = job.0, replay, "submission");
                    out.pending.entry(job).or_default().push(acked);
                    orch.on_msg(&mut env, CLIENT, Msg::Submit { job, template, steps, probe: false, replay });
                }
                Inbound::Status { job, reply } => {
                    let store = orch.store();
                    let task = store.task_for_job(job).and_then(|t| store.task(t));
                    let _ = reply.send(task.map_or(serde_json::Value::Null, |t| json!(t)));
                }
                Inbound::Health { reply } => {
                    let _ = reply.send(orch.is_serving());
                }
            },
            else => anyhow::bail!("the orchestrator's channels closed"),
        }
        // The handler itself takes microseconds: the loop's time is the flush.
        let handled_at = std::time::Instant::now();
        out.flush(&mut env, &orch, &mut pg, before, fence, cfg.policy.fencing).await?;
        if pg.is_some() && orch.store().last_lsn() > before {
            commit_line(handled_at);
        }
    }
}

/// The line a handler that committed prints (stdout, the process's log):
/// how long the loop was busy with its flush (the PostgreSQL transaction,
/// then the outbox handed over), µs: what the next message waited for.
/// See [`commit_times`].
#[derive(serde::Serialize, Deserialize)]
struct CommitLine {
    commit_us: u64,
}

fn commit_line(handled_at: std::time::Instant) {
    let commit_us = u64::try_from(handled_at.elapsed().as_micros()).unwrap_or(u64::MAX);
    println!("{}", serde_json::to_string(&CommitLine { commit_us }).expect("serialises"));
}

/// The commit times an orchestrator process printed in its `log` (see
/// `CommitLine`), in order: a live drill's `store_commit`, what a
/// simulated twin gives `[stack] commit_latency`.
pub fn commit_times(log: &str) -> Vec<crate::components::ids::Micros> {
    log.lines()
        .filter(|l| l.starts_with("{\"commit_us\""))
        .filter_map(|l| serde_json::from_str::<CommitLine>(l).ok())
        .map(|c| c.commit_us)
        .collect()
}

/// The orchestrator on the loaded `store`, started. On a database
/// PostgreSQL promoted since an orchestrator last started on it, it takes
/// over as the simulator's standby does: `Promote` (a new timeline, the
/// promotion time kept in the store, inherited leases taken back unless
/// the store was inherited synchronously) and then `Open` (serving, its
/// inherited tasks held back a lease). A restart on a promoted store
/// replays the recorded promotions into it (the event log does not hold
/// them), so [`Orchestrator::start`] holds the inherited tasks back a lease
/// from the promotion, as a restarted simulated orchestrator does.
fn take_store(cfg: OrchConfig, mut store: Store, lineage: &Lineage, env: &mut LiveEnv) -> Orchestrator {
    for at_us in lineage.promotions_us() {
        store.new_timeline(at_us);
    }
    if !lineage.newly_promoted() {
        let mut orch = Orchestrator::with_store(cfg, store);
        orch.start(env);
        return orch;
    }
    tracing::info!(timeline = lineage.current, "the database was promoted: taking over its store");
    let mut orch = Orchestrator::standby_with_store(cfg, store);
    orch.on_msg(env, CONTROLLER, Msg::Promote);
    orch.on_msg(env, CONTROLLER, Msg::Open);
    orch
}

/// Where the orchestrator's messages go.
struct Outbound {
    peers: FxHashMap<HostId, Peer>,
    pending: FxHashMap<JobId, Vec<oneshot::Sender<()>>>,
    client: reqwest::Client,
}

impl Outbound {
    /// Takes a worker's envelope in: `None` when it comes from an earlier
    /// process of that worker (dropped, as the simulator drops a crashed
    /// sender's messages); otherwise the fence its write must pass in SQL.
    fn admit(&mut self, e: &Envelope, msg: &Msg) -> Option<Option<Fence>> {
        if e.from.0 < FIRST_WORKER {
            tracing::warn!(from = e.from.0, "message from a host that is not a worker; dropped");
            return None;
        }
        if let Some(p) = self.peers.get(&e.from)
            && e.incarnation < p.incarnation
        {
            tracing::debug!(from = e.from.0, "message from an earlier incarnation; dropped");
            return None;
        }
        tracing::trace!(from = e.from.0, ?msg, "message in");
        if let Some(url) = &e.reply_to {
            self.peers.insert(e.from, Peer { url: url.clone(), incarnation: e.incarnation });
        }
        let fence = match *msg {
            Msg::Write { token, write, .. } => Some(Fence { task: write.task(), token, holder: e.from }),
            _ => None,
        };
        Some(fence)
    }

    /// Commits what the handler wrote since `before` (a worker's `write`
    /// recorded, and fenced in SQL when `enforce`), then delivers the outbox.
    async fn flush(
        &mut self,
        env: &mut LiveEnv,
        orch: &Orchestrator,
        pg: &mut Option<PgStore>,
        before: u64,
        write: Option<Fence>,
        enforce: bool,
    ) -> anyhow::Result<()> {
        let recs: Vec<_> = orch.store().log().range(before as usize, usize::MAX).collect();
        if let (Some(pg), false) = (pg.as_mut(), recs.is_empty()) {
            pg.commit_write(&recs, orch.store(), write, enforce).await?;
        }
        for (to, msg) in env.outbox.drain(..) {
            if to == CONTROLLER {
                continue; // `PromoteAck`, `Opened`: see `take_store`
            }
            if to == CLIENT {
                if let Msg::SubmitAck { job } = msg {
                    for acked in self.pending.remove(&job).unwrap_or_default() {
                        let _ = acked.send(());
                    }
                } else if let Msg::Completed { job } = msg {
                    tracing::info!(job = job.0, "job done");
                }
                continue;
            }
            let Some(p) = self.peers.get(&to) else {
                tracing::debug!(to = to.0, "no address for this host yet; message dropped");
                continue;
            };
            tracing::trace!(to = to.0, ?msg, "message out");
            let envelope = Envelope::new(ORCHESTRATOR, p.incarnation, None, &msg);
            let rb = self
                .client
                .post(format!("{}/msg", p.url))
                .timeout(std::time::Duration::from_millis(WORKER_POST_TIMEOUT_MS))
                .json(&envelope);
            tokio::spawn(async move {
                if let Err(e) = rb.send().await {
                    tracing::debug!(error = %e, "message to a worker lost");
                }
            });
        }
        Ok(())
    }
}
