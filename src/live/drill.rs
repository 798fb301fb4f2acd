//! Runs a live drill: starts the fakes (one port per replica on each), the
//! stack's processes under the [`supervisor`], submits the jobs, injects
//! the faults on real things (kill points at the fakes, kills and pauses by
//! time, provider outages through the toxics), and measures from the
//! fakes' ledgers and the script (ground truth), with the simulator's
//! definitions, verdict and report contract ([`crate::drill::worst`],
//! [`crate::drill::target_violations`], [`crate::drill::verdict`]).
//!
//! A job is **done** when every side-effecting step of its script has its
//! effect in a ledger and a model fake served its final answer (or, with
//! `[jobs] done = "last_effect"`, at its last effect's commit). Then:
//! - duplicates: effects beyond one per (job, step) of the script;
//! - lost: steps with no effect in a job that went past them: its final
//!   answer was served (the agent said it was done), or with `last_effect`
//!   a later step's effect is in a ledger;
//! - stuck: jobs that did not end by the horizon: no final answer served
//!   (with `last_effect`: the last step's effect missing);
//! - RTO of a fault: DOMAIN.md's, the simulator's own function
//!   (`drill::measure::rto_us`). For the reference stack, from its
//!   PostgreSQL event log (the serving node's and, after a region loss,
//!   the dead primary's): onset → every task leased at the onset made
//!   progress again (a step result or completion committed after it) and
//!   the first task created at or after the onset completed (when the
//!   client submitted a job after the onset: the simulator's health probe
//!   has no live counterpart). Fallback for
//!   a stack without that log (the SDK agents under `examples/`): onset →
//!   every job submitted before the onset and not done, and the first job
//!   submitted after it, done end to end (the client's truth). None: not
//!   by the horizon. Its parts: `scale_up_s` until the killed process runs
//!   again, `resume_s` the rest.
//!
//! Every time is on the fakes' clock (µs since they started), reported
//! from the first submission.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustc_hash::FxHashMap;
use serde::Serialize;
use tokio::sync::mpsc;

use super::failover;
use super::killpoint::{ANSWER_FLUSH_MS, Fired, KillPhase, Point};
use super::net::{Endpoint, Selector, TcpToxic};
use super::runs::{self, Stall};
use super::scenario::{DoneWhen, LiveFault, LiveScenario, env_name, expand};
use super::supervisor::{self, ExitRecord, Spec, Supervisor};
use super::toxics::{Toxic, ToxicKind};
use super::{Fake, LiveConfig, Served, Shared, lock};
use crate::components::ids::{JobId, Micros};
use crate::components::store::{LogRec, LogSlice};
use crate::drill::measure::{Counts, FaultResult, Progress, RpoSurfaces, RtoParts, leased_jobs_at, rto_us};
use crate::drill::{Cost, DrillResult, Header};

/// Environment variable that overrides every scenario's `[database]
/// backend` (`local` or `docker`), e.g. to run the catalogue on both in CI.
pub const DB_BACKEND_ENV: &str = "AGENTDRILL_DB_BACKEND";
/// How often the harness looks at the ledgers, in ms.
pub const POLL_MS: u64 = 20;
/// Most time one HTTP submission may take, in ms.
pub const SUBMIT_TIMEOUT_MS: u64 = 2_000;

/// What a live drill adds to the report contract of a simulated one.
#[derive(Clone, Debug, Serialize)]
pub struct LiveInfo {
    /// `"live"`.
    pub mode: &'static str,
    /// Wall time of the drill, seconds (first submission → end).
    pub wall_s: f64,
    /// Jobs submitted (accepted by the stack).
    pub jobs_submitted: u32,
    /// Every replica's exits: killed by the harness, or unexpected (with the
    /// tail of its log).
    pub process_exits: Vec<ExitRecord>,
    /// Counts this drill had no ground truth for, reported as 0: they need
    /// the stack's own durable records, which only the reference stack's
    /// PostgreSQL gives (`agentdrill.event_log` and `agentdrill.writes`); a
    /// foreign stack keeps them here.
    pub unmeasured: Vec<&'static str>,
    /// Where each measured count came from (count → ground truth).
    pub measured_from: BTreeMap<&'static str, &'static str>,
    /// A region loss's failover and its RPO from the data.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<RegionReport>,
    /// How long the reference orchestrator's store commits took, as its
    /// processes logged them (absent for another stack).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store_commit: Option<StoreCommit>,
}

/// How long the reference orchestrator was busy with each commit (see
/// [`super::stack::orchestrator::commit_times`]): what a simulated twin of
/// the drill gives its orchestrator as `[stack] commit_latency`.
#[derive(Clone, Debug, Serialize)]
pub struct StoreCommit {
    /// Transactions timed.
    pub transactions: u64,
    /// Median, ms.
    pub p50_ms: f64,
    /// 90th percentile, ms.
    pub p90_ms: f64,
}

impl StoreCommit {
    /// The figures of `commit_us`; `None` when it is empty.
    pub fn of(commit_us: &[Micros]) -> Option<StoreCommit> {
        if commit_us.is_empty() {
            return None;
        }
        let mut sorted = commit_us.to_vec();
        sorted.sort_unstable();
        let at = |p: f64| super::loadgen::percentile_ms(&sorted, p);
        Some(StoreCommit { transactions: sorted.len() as u64, p50_ms: at(0.50), p90_ms: at(0.90) })
    }
}

/// A live region loss: the failover's stages (seconds from the first
/// submission) and what the promoted standby lacks.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RegionReport {
    /// `async`, `sync` or `base_backup` (a cold standby).
    pub replication: &'static str,
    /// `harness` or `stack`.
    pub failover_by: &'static str,
    /// Region `a` lost.
    pub onset_s: Option<f64>,
    /// The controller declared it down.
    pub detected_s: Option<f64>,
    /// `pg_promote()` returned on the standby.
    pub promoted_s: Option<f64>,
    /// The stable addresses switched (after the TTL).
    pub routed_s: Option<f64>,
    /// The standby processes started.
    pub scaled_up_s: Option<f64>,
    /// The old primary fenced.
    pub fenced_s: Option<f64>,
    /// Failovers called off.
    pub cancelled: u32,
    /// RPO from the data (the dead primary's copy against the promoted
    /// standby); `None` when nothing was promoted.
    pub rpo: Option<super::pg::RpoReport>,
    /// Why the RPO could not be measured, if it could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rpo_error: Option<String>,
}

/// Why a live drill could not run (exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum LiveRunError {
    /// The fakes could not start.
    #[error(transparent)]
    Fakes(#[from] super::LiveError),
    /// The processes could not start.
    #[error(transparent)]
    Supervisor(#[from] supervisor::SupervisorError),
    /// `[database]`: PostgreSQL could not start (or a dead run's could not
    /// be cleaned up).
    #[error("{scenario}: [database]: {source}; `agentdrill doctor` tells which backends work here")]
    Database {
        /// Scenario.
        scenario: String,
        /// Cause.
        source: super::pg::PgError,
    },
    /// The submit process never listened.
    #[error(
        "{scenario}: process `{process}` did not listen on {addr} (AGENTDRILL_LISTEN_ADDR) within startup = {startup_ms} ms; its log ends:\n{tail}"
    )]
    NotReady {
        /// Scenario.
        scenario: String,
        /// Process.
        process: String,
        /// Its listen address.
        addr: SocketAddr,
        /// Startup limit.
        startup_ms: u64,
        /// The last lines of its log.
        tail: String,
    },
    /// A kill point could not be armed.
    #[error("{scenario}: faults: {source}")]
    Arm {
        /// Scenario.
        scenario: String,
        /// Cause.
        source: super::killpoint::ArmError,
    },
    /// The TCP proxies could not be set up.
    #[error("{scenario}: cannot set up the TCP proxies between components: {source}")]
    Net {
        /// Scenario.
        scenario: String,
        /// Cause.
        source: super::net::NetError,
    },
    /// The runtime could not start.
    #[error("cannot start the tokio runtime: {0}")]
    Runtime(std::io::Error),
}

/// The API keys every replica is handed (test keys the fakes accept, in the
/// variables the official SDKs read); a scenario's `env` may override them.
pub const FAKE_KEYS: [(&str, &str); 5] = [
    ("ANTHROPIC_API_KEY", "sk-ant-agentdrill"),
    ("OPENAI_API_KEY", "sk-agentdrill"),
    ("STRIPE_API_KEY", "sk_test_agentdrill"),
    ("STRIPE_SECRET_KEY", "sk_test_agentdrill"),
    ("RESEND_API_KEY", "re_agentdrill"),
];

/// One replica's place: process, replica, sender slot, listen address.
#[derive(Clone, Debug)]
struct Replica {
    process: String,
    replica: u16,
    listen: SocketAddr,
}

/// A free loopback port (bound, read, released).
fn free_addr() -> std::io::Result<SocketAddr> {
    Ok(SocketAddr::from(([127, 0, 0, 1], super::free_loopback_port()?)))
}

/// The replicas of the scenario, in slot order.
fn replicas(sc: &LiveScenario) -> std::io::Result<Vec<Replica>> {
    let mut out = Vec::new();
    for p in &sc.processes {
        for r in 0..p.replicas {
            out.push(Replica { process: p.name.clone(), replica: r, listen: free_addr()? });
        }
    }
    Ok(out)
}

fn slot_of(reps: &[Replica], process: &str, replica: u16) -> Option<usize> {
    reps.iter().position(|r| r.process == process && r.replica == replica)
}

/// The proxies of a drill: every address a replica is handed is a link of
/// `Shared::net` (its own per fake, per peer and to the database).
#[derive(Debug, Default)]
struct Wiring {
    /// Per slot, per fake (in [`Fake::ALL`] order).
    fakes: Vec<Vec<SocketAddr>>,
    /// (slot, process) → the link from the slot to that process's replica 0.
    peers: FxHashMap<(usize, String), SocketAddr>,
    /// (slot, process) → the link from that process's replica 0 to the slot.
    replies: FxHashMap<(usize, String), SocketAddr>,
    /// Per slot, the link to the database.
    db: Vec<SocketAddr>,
    /// The link from the client (the submitter) to the submit process.
    submit: Option<SocketAddr>,
}

fn endpoint(sc: &LiveScenario, r: &Replica) -> Endpoint {
    let region = sc.processes.iter().find(|p| p.name == r.process).map_or("a", |p| p.region.as_str());
    Endpoint::replica(&r.process, r.replica, region)
}

/// Puts a harness proxy on every connection between components.
async fn wire(
    sc: &LiveScenario,
    served: &Served,
    reps: &[Replica],
    db: Option<SocketAddr>,
) -> Result<Wiring, super::net::NetError> {
    let net = &served.shared.net;
    let mut w = Wiring::default();
    let mut made: FxHashMap<String, SocketAddr> = FxHashMap::default();
    for (slot, r) in reps.iter().enumerate() {
        let me = endpoint(sc, r);
        let slot16 = u16::try_from(slot).expect("at most MAX_SENDER_SLOTS");
        let mut fakes = Vec::with_capacity(Fake::ALL.len());
        for f in Fake::ALL {
            let to = Endpoint::component(f.name(), f.region());
            fakes.push(net.add_link(me.clone(), to, served.shared.addr_for(f, Some(slot16))).await?);
        }
        w.fakes.push(fakes);
        for q in &sc.processes {
            let Some(q0) = reps.iter().find(|x| x.process == q.name && x.replica == 0) else { continue };
            if q0.process == r.process && q0.replica == r.replica {
                continue;
            }
            let them = endpoint(sc, q0);
            for (from, to, upstream, map) in
                [(&me, &them, q0.listen, &mut w.peers), (&them, &me, r.listen, &mut w.replies)]
            {
                let key = format!("{}>{}", from.label(), to.label());
                let addr = match made.get(&key) {
                    Some(a) => *a,
                    None => {
                        let a = net.add_link(from.clone(), to.clone(), upstream).await?;
                        made.insert(key, a);
                        a
                    }
                };
                map.insert((slot, q.name.clone()), addr);
            }
        }
        if let Some(db) = db {
            w.db.push(net.add_link(me.clone(), Endpoint::component("postgres", Some("a")), db).await?);
        }
    }
    if let Some(p) = &sc.submit.process
        && let Some(s0) = reps.iter().find(|x| &x.process == p && x.replica == 0)
    {
        w.submit = Some(net.add_link(Endpoint::component("client", None), endpoint(sc, s0), s0.listen).await?);
    }
    Ok(w)
}

/// The environment of every replica (the process contract).
fn specs(sc: &LiveScenario, served: &Served, reps: &[Replica], state_root: &std::path::Path, w: &Wiring) -> Vec<Spec> {
    // `${AGENTDRILL_BIN}` is this very binary unless the environment says
    // otherwise: the reference stack's processes are `agentdrill stack …`.
    let host = |n: &str| {
        std::env::var(n).ok().or_else(|| {
            (n == "AGENTDRILL_BIN").then(|| std::env::current_exe().ok().map(|p| p.display().to_string())).flatten()
        })
    };
    reps.iter()
        .enumerate()
        .map(|(slot, r)| {
            let p = sc.processes.iter().find(|p| p.name == r.process).expect("replicas come from processes");
            let mut env: Vec<(String, String)> =
                served.env_via(|f| w.fakes[slot][f.index()]).into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
            // Test keys the fakes accept: an official SDK (any language)
            // refuses to start without its key variable, and a real key in
            // the harness's environment must not reach the stack.
            env.extend(FAKE_KEYS.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
            // Peers (replica 0 of each process) through the links; a
            // replica 0 reaches itself directly.
            let peer = |q: &str| {
                w.peers
                    .get(&(slot, q.to_owned()))
                    .copied()
                    .or_else(|| reps.iter().find(|x| x.process == q && x.replica == 0).map(|x| x.listen))
            };
            for q in &sc.processes {
                if let Some(a) = peer(&q.name) {
                    env.push((format!("AGENTDRILL_PEER_{}_URL", env_name(&q.name)), format!("http://{a}")));
                }
                if let Some(a) = w.replies.get(&(slot, q.name.clone())) {
                    env.push((format!("AGENTDRILL_PEER_{}_REPLY_URL", env_name(&q.name)), format!("http://{a}")));
                }
            }
            if let Some(a) = sc.submit.process.as_deref().and_then(peer) {
                env.push(("AGENTDRILL_SUBMIT_URL".into(), format!("http://{a}{}", sc.submit.path)));
            }
            if let Some(a) = w.db.get(slot) {
                env.push(("DATABASE_URL".into(), super::pg::url_for(*a)));
            }
            env.push(("AGENTDRILL_PROCESS".into(), r.process.clone()));
            env.push(("AGENTDRILL_REPLICA".into(), r.replica.to_string()));
            env.push(("AGENTDRILL_REGION".into(), p.region.clone()));
            env.push(("AGENTDRILL_LISTEN_ADDR".into(), r.listen.to_string()));
            env.push(("AGENTDRILL_STATE_DIR".into(), state_root.join(&p.name).display().to_string()));
            env.push(("AGENTDRILL_SEED".into(), sc.seed.to_string()));
            for (k, v) in &p.env {
                env.push((k.clone(), expand(v, &host)));
            }
            Spec {
                name: r.process.clone(),
                replica: r.replica,
                command: expand(&p.command, &host),
                args: p.args.iter().map(|a| expand(a, &host)).collect(),
                env,
                restart_delay_ms: p.restart_delay.ms(),
                held: p.is_standby(),
            }
        })
        .collect()
}

/// The scenario's database: one primary, or the pair behind its links.
enum Database {
    Single(super::pg::PgNode),
    Pair(Arc<failover::DbPair>),
}

impl Database {
    /// The address the processes' `DATABASE_URL` links forward to: the
    /// primary, or the pair's stable address (switched at a failover).
    fn addr(&self) -> SocketAddr {
        match self {
            Database::Single(n) => n.addr(),
            Database::Pair(p) => p.stable.addr(),
        }
    }

    fn url(&self) -> String {
        match self {
            Database::Single(n) => n.url(),
            Database::Pair(p) => p.direct_url(),
        }
    }
}

/// What a region loss needs during the drive.
#[derive(Default)]
struct Regions {
    pair: Option<Arc<failover::DbPair>>,
    /// Stable addresses of taken-over processes, and their new upstream.
    services: Vec<(failover::NetLink, SocketAddr)>,
    /// Slots of region `a`'s running processes.
    region_a: Vec<usize>,
    /// Slots of the standby processes (started by the scale-up).
    standby: Vec<usize>,
    /// Slots of the processes a standby takes over (kept down once failed over).
    taken_over: Vec<usize>,
    /// Listen ports of replicas that are down for a while (standby, lost
    /// region), held by the harness so no outgoing connection's local port
    /// takes them meanwhile; released just before the replica starts.
    reserved: Arc<std::sync::Mutex<BTreeMap<usize, std::net::TcpListener>>>,
    /// Every replica's listen address, by slot.
    listens: Vec<SocketAddr>,
}

impl Regions {
    fn reserve(&self, slot: usize) {
        if let Some(addr) = self.listens.get(slot)
            && let Ok(l) = std::net::TcpListener::bind(addr)
        {
            lock(&self.reserved).insert(slot, l);
        }
    }

    fn release(&self, slot: usize) {
        lock(&self.reserved).remove(&slot);
    }
}

/// Stable addresses for the processes a standby takes over: their
/// `AGENTDRILL_PEER_<NAME>_URL` in every spec points at a harness link,
/// switched to the standby after the TTL.
async fn stable_services(
    sc: &LiveScenario,
    net: &super::net::Network,
    reps: &[Replica],
    specs: &mut [Spec],
    regions: &mut Regions,
) -> Result<Option<SocketAddr>, super::net::NetError> {
    regions.listens = reps.iter().map(|r| r.listen).collect();
    for (i, r) in reps.iter().enumerate() {
        let p = sc.processes.iter().find(|p| p.name == r.process).expect("replicas come from processes");
        if p.is_standby() {
            regions.standby.push(i);
            regions.reserve(i);
        } else if p.region == "a" {
            regions.region_a.push(i);
        }
    }
    let mut submit_addr = None;
    for p in sc.processes.iter().filter(|p| p.takes_over.is_some()) {
        let target = p.takes_over.as_deref().expect("filtered");
        let (Some(from), Some(to)) = (slot_of(reps, target, 0), slot_of(reps, &p.name, 0)) else { continue };
        let link = failover::NetLink::stable(net, target, "a", reps[from].listen).await?;
        let var = format!("AGENTDRILL_PEER_{}_URL", env_name(target));
        for spec in specs.iter_mut() {
            for (k, v) in &mut spec.env {
                if *k == var {
                    *v = format!("http://{}", link.addr());
                }
            }
        }
        if sc.submit.process.as_deref() == Some(target) {
            submit_addr = Some(link.addr());
        }
        regions.services.push((link, reps[to].listen));
        regions.taken_over.extend((0..reps.len()).filter(|&i| reps[i].process == target));
    }
    Ok(submit_addr)
}

/// One fault's record during the drill.
#[derive(Clone, Debug, Default)]
struct Onset {
    at_us: Option<Micros>,
    slot: Option<usize>,
    back_us: Option<Micros>,
    starts_before: u32,
}

/// A job's truth at one moment.
#[derive(Clone, Debug, Default)]
struct JobTruth {
    submitted_us: Option<Micros>,
    final_us: Option<Micros>,
    /// Effects per side-effecting step, with the first effect's time.
    effects: BTreeMap<u16, (u64, Micros)>,
    /// Side-effecting steps of the script.
    expected: Vec<u16>,
    /// The script's tool input of each side-effecting step.
    inputs: BTreeMap<u16, serde_json::Value>,
    done_us: Option<Micros>,
}

/// Effects per (job, step): (count, first at).
type EffectCounts = FxHashMap<(u32, u16), (u64, Micros)>;

/// Effects per (job, step) in both ledgers, and the total.
fn ledger_counts(shared: &Shared) -> (EffectCounts, u64) {
    let mut m: EffectCounts = FxHashMap::default();
    let mut total = 0;
    let mut add = |ledger: &[crate::components::ledger::LedgerEntry]| {
        for e in ledger {
            total += 1;
            let JobId(j) = e.origin.job;
            let c = m.entry((j, e.origin.step)).or_insert((0, e.at_us));
            c.0 += 1;
            c.1 = c.1.min(e.at_us);
        }
    };
    add(lock(&shared.payment).api.ledger());
    add(lock(&shared.email).api.ledger());
    (m, total)
}

/// Updates every job's truth from the ledgers and the model fakes.
fn observe(shared: &Shared, done: DoneWhen, jobs: &mut BTreeMap<u32, JobTruth>) {
    let (counts, _) = ledger_counts(shared);
    let finals = lock(&shared.finals).clone();
    for (&job, t) in jobs.iter_mut() {
        t.final_us = finals.get(&job).copied();
        t.effects = t.expected.iter().filter_map(|&s| counts.get(&(job, s)).map(|&c| (s, c))).collect();
        if t.done_us.is_some() || !t.expected.iter().all(|s| t.effects.contains_key(s)) {
            continue;
        }
        let last_effect = t.effects.values().map(|c| c.1).max().unwrap_or(0);
        t.done_us = match done {
            DoneWhen::FinalAnswer => t.final_us.map(|f| f.max(last_effect)),
            // A job with no side effect at all shows its end only in its
            // final answer.
            DoneWhen::LastEffect if t.expected.is_empty() => t.final_us,
            DoneWhen::LastEffect => Some(last_effect),
        };
    }
}

/// Set to `1` to keep a live drill's run folder (each process's stdout and
/// stderr, its timeline notes) after the drill, to read what the stack did.
pub const KEEP_RUN_ENV: &str = "AGENTDRILL_KEEP_RUN";

/// Runs a live drill with `seed` (the scenario's unless overridden).
pub fn run(sc: &LiveScenario, seed: u64) -> Result<DrillResult, LiveRunError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(LiveRunError::Runtime)?;
    rt.block_on(run_async(sc, seed))
}

async fn run_async(sc: &LiveScenario, seed: u64) -> Result<DrillResult, LiveRunError> {
    let root = supervisor::run_root();
    // PostgreSQL nodes of dead runs first: their records live in the run
    // folders `clean_leftovers` removes.
    // A drill without a database is not stopped by a failed clean-up of
    // another run's (it is reported); one with a database is.
    match super::pg::cleanup_stale(&root) {
        Ok(_) => {}
        Err(source) if sc.database.is_some() => {
            return Err(LiveRunError::Database { scenario: sc.name.clone(), source });
        }
        Err(e) => tracing::warn!(error = %e, "cleaning up a dead run's PostgreSQL failed"),
    }
    supervisor::clean_leftovers(&root);
    let reps = replicas(sc).map_err(|source| {
        LiveRunError::Fakes(super::LiveError::Bind { port: 0, what: "a replica's listen address", source })
    })?;
    let cfg = LiveConfig {
        seed,
        port: 0,
        processing_ms: sc.fakes.processing.ms(),
        model_latency_permille: 0,
        payment_dedupe: sc.fakes.payment_dedupe,
        email_dedupe: sc.fakes.email_dedupe,
        record_attempts: true,
        sender_slots: u16::try_from(reps.len()).unwrap_or(u16::MAX),
    };
    let served = super::start(cfg).await?;
    let shared = served.shared.clone();
    // The reference stack's clock (the boot clock) against the fakes'.
    let boot_offset_us = super::stack::env::monotonic_us().saturating_sub(shared.now_us());
    // After the fakes: a standby pair's links are in their network.
    let database = match start_database(sc, &root, &shared.net).await {
        Ok(d) => d,
        Err(e) => {
            served.shutdown().await;
            return Err(e);
        }
    };
    let state_root = Supervisor::run_dir_in(&root).join("state");
    for p in &sc.processes {
        let dir = state_root.join(&p.name);
        std::fs::create_dir_all(&dir)
            .map_err(|source| supervisor::SupervisorError::RunDir { path: dir.clone(), source })?;
    }
    // A pair's stable address is already a harness link (switched at the
    // failover); the processes dial it directly. A second hop through a
    // `live::net` link measured 15.5 s of RTO against 9.3 s direct on
    // region-warm-standby-async (the orchestrator commits serially, and
    // PostgreSQL's protocol is many small round trips).
    let db_via_net = database.as_ref().filter(|d| matches!(d, Database::Single(_))).map(Database::addr);
    let wiring = match wire(sc, &served, &reps, db_via_net).await {
        Ok(w) => w,
        Err(source) => {
            served.shutdown().await;
            return Err(LiveRunError::Net { scenario: sc.name.clone(), source });
        }
    };
    let mut specs = specs(sc, &served, &reps, &state_root, &wiring);
    let mut regions = Regions::default();
    if let Some(Database::Pair(pair)) = &database {
        regions.pair = Some(pair.clone());
        for spec in &mut specs {
            spec.env.push(("DATABASE_URL".into(), pair.url()));
            spec.env.push(("AGENTDRILL_DB_PRIMARY_URL".into(), pair.primary.lock().await.url()));
            if let Some(standby) = pair.standby() {
                spec.env.push(("AGENTDRILL_DB_STANDBY_URL".into(), standby.url()));
            }
        }
    }
    let stable_submit = match stable_services(sc, &shared.net, &reps, &mut specs, &mut regions).await {
        Ok(s) => s,
        Err(source) => {
            served.shutdown().await;
            return Err(LiveRunError::Net { scenario: sc.name.clone(), source });
        }
    };
    let hosts = worker_ids(&specs);
    let sup = Arc::new(Supervisor::start(&root, specs)?);
    let outcome = drive(sc, &served, &reps, &sup, &regions, stable_submit.or(wiring.submit)).await;
    let sup = Arc::try_unwrap(sup).expect("the drill holds the only handle");
    let run_dir = sup.run_dir.clone();
    let stalls = sup.stalls();
    let exits = tokio::task::spawn_blocking(move || sup.stop_keeping_folder()).await.unwrap_or_default();
    let stalls: Vec<Stall> =
        stalls.into_iter().map(|(slot, kind, at)| Stall { slot, kind, at_us: shared.us_at(at) }).collect();
    served.shutdown().await;
    // What the stack's database committed, read before it is dropped.
    let audit = match &database {
        Some(db) => super::stack::pg::audit(&db.url()).await.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "the stack's database could not be audited: stale writes unmeasured");
            None
        }),
        None => None,
    };
    drop(regions);
    let mut driven = outcome;
    if let (Ok(d), Some(Database::Pair(pair))) = (&mut driven, &database) {
        measure_rpo(sc, pair, d).await;
    }
    // The stack is down: now the database (dropping the node kills the
    // server and removes its data folder), then the run folder it was in.
    drop(database);
    let commit_us = logged_commit_times(&run_dir);
    if std::env::var_os(KEEP_RUN_ENV).is_some_and(|v| v == "1") {
        eprintln!("kept the run folder (processes' logs) at {} ({KEEP_RUN_ENV}=1)", run_dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&run_dir);
    }
    let driven = driven?;
    let senders = Senders { stalls, hosts, boot_offset_us, commit_us };
    Ok(measure(sc, seed, &shared, driven, exits, audit, &senders))
}

/// What the harness knows of the senders: every slot's kills, exits,
/// stops and continues (the supervisor's records, on the fakes' clock),
/// and the reference stack's worker id of each slot.
struct Senders {
    stalls: Vec<Stall>,
    hosts: Vec<Option<crate::components::ids::HostId>>,
    /// The boot clock minus the fakes' clock (µs).
    boot_offset_us: Micros,
    /// The reference orchestrators' commit times, from their logs.
    commit_us: Vec<Micros>,
}

/// Every commit time the processes of `run_dir` logged (the reference
/// orchestrator's, see [`super::stack::orchestrator::commit_times`]).
fn logged_commit_times(run_dir: &std::path::Path) -> Vec<Micros> {
    let Ok(entries) = std::fs::read_dir(run_dir.join("logs")) else { return Vec::new() };
    let mut paths: Vec<_> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    paths
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .flat_map(|log| super::stack::orchestrator::commit_times(&log))
        .collect()
}

/// Each slot's worker id in the reference stack's lease records: host
/// `100 + AGENTDRILL_REPLICA` (its process contract; the scenario's own
/// `AGENTDRILL_REPLICA` wins over the harness's, as the process sees it).
fn worker_ids(specs: &[Spec]) -> Vec<Option<crate::components::ids::HostId>> {
    use super::stack::env::{MAX_REPLICAS, worker_host};
    specs
        .iter()
        .map(|s| {
            let replica = s.env.iter().rev().find(|(k, _)| k == "AGENTDRILL_REPLICA")?.1.parse::<u32>().ok()?;
            (replica < MAX_REPLICAS).then(|| worker_host(replica))
        })
        .collect()
}

/// RPO from the data, after a region loss whose standby was promoted: the
/// dead primary's copy started isolated and compared with the standby.
async fn measure_rpo(sc: &LiveScenario, pair: &failover::DbPair, d: &mut Driven) {
    let Some(at) = d.loss_at else { return };
    let Some(standby) = pair.standby() else { return };
    let promoted = pair.is_promoted().await || !standby.is_standby().await.unwrap_or(true);
    if !promoted {
        return;
    }
    let tables: Vec<super::pg::RpoTable> = sc
        .database
        .iter()
        .flat_map(|db| db.rpo_tables.iter())
        .filter_map(|t| super::scenario::parse_rpo_table(t))
        .map(|(t, k)| super::pg::RpoTable::new(t, k))
        .collect();
    let mut old = pair.primary.lock().await;
    if old.is_running() {
        // A stack that failed over by itself left it up: stop it first.
        let _ = old.kill();
    }
    match super::pg::rpo::measure(&mut old, standby, &tables, at).await {
        Ok(r) => d.rpo = Some(r),
        Err(e) => d.rpo_error = Some(e.to_string()),
    }
}

/// Starts the scenario's PostgreSQL (`[database]`): a primary, or with
/// `standby = true` the pair behind its harness links, in this run's folder
/// under `root`, on the backend the scenario names.
async fn start_database(
    sc: &LiveScenario,
    root: &std::path::Path,
    net: &super::net::Network,
) -> Result<Option<Database>, LiveRunError> {
    let Some(spec) = &sc.database else { return Ok(None) };
    let run_dir = Supervisor::run_dir_in(root);
    let run_id = run_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mut opts = super::pg::PgOptions::local(run_dir, run_id);
    opts.backend = match (std::env::var(DB_BACKEND_ENV).as_deref(), spec.backend) {
        (Ok("docker"), _) => super::pg::Backend::Docker,
        (Ok("local"), _) => super::pg::Backend::Local,
        (_, super::scenario::DbBackend::Local) => super::pg::Backend::Local,
        (_, super::scenario::DbBackend::Docker) => super::pg::Backend::Docker,
    };
    let err = |source| LiveRunError::Database { scenario: sc.name.clone(), source };
    if spec.standby {
        let pair = failover::DbPair::start(&opts, spec, net).await.map_err(err)?;
        return Ok(Some(Database::Pair(Arc::new(pair))));
    }
    super::pg::Cluster::start_primary(&opts).await.map(|n| Some(Database::Single(n))).map_err(err)
}

/// What [`drive`] hands to [`measure`].
struct Driven {
    base_us: Micros,
    end_us: Micros,
    jobs: BTreeMap<u32, JobTruth>,
    onsets: Vec<Onset>,
    /// The harness's failover, if a region was lost.
    failover: Option<failover::Timeline>,
    /// When region `a` was lost (wall clock, for commit ages).
    loss_at: Option<std::time::SystemTime>,
    rpo: Option<super::pg::RpoReport>,
    rpo_error: Option<String>,
}

async fn wait_ready(sc: &LiveScenario, reps: &[Replica], sup: &Supervisor) -> Result<(), LiveRunError> {
    let Some(process) = &sc.submit.process else { return Ok(()) };
    let slot = slot_of(reps, process, 0).expect("validated: the submit process exists");
    let addr = reps[slot].listen;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(sc.startup.ms());
    while tokio::time::Instant::now() < deadline {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(POLL_MS)).await;
    }
    let log = sup.run_dir.join("logs").join(format!("{process}-0.log"));
    Err(LiveRunError::NotReady {
        scenario: sc.name.clone(),
        process: process.clone(),
        addr,
        startup_ms: sc.startup.ms(),
        tail: supervisor::log_tail(&log),
    })
}

/// Submits every job on schedule and resends by the workload's rule
/// ([`crate::components::resend`], the simulated client's): a submission
/// not accepted within `[jobs] submit_retry` is sent again, and an accepted
/// job not `done` (ground truth, from [`drive`]) within `resubmit_after` is
/// submitted again with the same job number. Each job is sent on
/// `accepted` once, at its first acceptance.
///
/// A send goes out as a replay by the simulated client's rule
/// ([`crate::components::resend::is_replay`]): acknowledged before, or
/// first sent while the submit address led elsewhere than now (`route`:
/// the stable link the failover moves; without one it never moves).
async fn submitter(
    sc: LiveScenario,
    submit_url: Option<String>,
    route: Option<failover::NetLink>,
    env: Vec<(String, String)>,
    accepted: mpsc::UnboundedSender<u32>,
    mut done: mpsc::UnboundedReceiver<u32>,
) {
    let client = reqwest::Client::builder().timeout(Duration::from_millis(SUBMIT_TIMEOUT_MS)).build().ok();
    let start = tokio::time::Instant::now();
    let now_us = || Micros::try_from(start.elapsed().as_micros()).unwrap_or(Micros::MAX);
    let script = super::script::Script::new(sc.seed);
    let send = Sender { sc: Arc::new(sc.clone()), url: submit_url, env: Arc::new(env), client, script };
    let mut resends = sc.jobs.resends();
    let (answer_tx, mut answers) = mpsc::unbounded_channel::<(u32, bool)>();
    let (mut acked, mut finished) = (rustc_hash::FxHashSet::default(), rustc_hash::FxHashSet::default());
    // Jobs whose latest send was acknowledged (a resubmission is retried
    // until acknowledged, like a first submission).
    let mut answered = rustc_hash::FxHashSet::default();
    // Attempts waiting for their answer, per job.
    let mut in_flight: FxHashMap<u32, u32> = FxHashMap::default();
    // Where each job's first send went (the submit link's upstream then).
    let mut first_to: FxHashMap<u32, String> = FxHashMap::default();
    let (mut retry_at, mut resubmit_at) = (None, None);
    let at = |after_us: Micros| Some(start + Duration::from_micros(now_us().saturating_add(after_us)));
    let mut next = 0u32;
    loop {
        let arrival =
            (next < sc.jobs.count).then(|| start + Duration::from_millis(sc.jobs.every.ms() * u64::from(next)));
        let mut due = Vec::new();
        tokio::select! {
            () = sleep_until_some(arrival) => {
                due.push(sc.jobs.first + next);
                next += 1;
            }
            () = sleep_until_some(retry_at) => {
                retry_at = None;
                due = resends.retry_fired(now_us(), |j| answered.contains(&j.0)).into_iter().map(|j| j.0).collect();
            }
            () = sleep_until_some(resubmit_at) => {
                resubmit_at = None;
                due = resends.resubmit_fired(now_us(), |j| finished.contains(&j.0)).into_iter().map(|j| j.0).collect();
            }
            Some((job, ok)) = answers.recv() => {
                if let Some(n) = in_flight.get_mut(&job) {
                    *n -= 1;
                }
                in_flight.retain(|_, n| *n > 0);
                if ok {
                    answered.insert(job);
                }
                if ok && acked.insert(job) {
                    if let Some(after_us) = resends.accepted(now_us(), JobId(job)) {
                        resubmit_at = at(after_us);
                    }
                    if accepted.send(job).is_err() {
                        return;
                    }
                }
            }
            Some(job) = done.recv() => {
                finished.insert(job);
            }
        }
        for job in due {
            answered.remove(&job);
            // An attempt still waiting for its answer is this send: the
            // job waits one more `submit_retry` instead of a second one.
            if !in_flight.contains_key(&job) {
                *in_flight.entry(job).or_default() += 1;
                let to = route.as_ref().and_then(failover::NetLink::upstream).unwrap_or_default();
                let first = first_to.entry(job).or_insert_with(|| to.clone());
                let replay = crate::components::resend::is_replay(acked.contains(&job), first, &to);
                tokio::spawn(send.clone().attempt(job, replay, answer_tx.clone()));
            }
            if let Some(after_us) = resends.sent(now_us(), JobId(job)) {
                retry_at = at(after_us);
            }
        }
        if let Some(after_us) = resends.arm_retry(now_us()) {
            retry_at = at(after_us);
        }
        if let Some(after_us) = resends.arm_resubmit(now_us()) {
            resubmit_at = at(after_us);
        }
    }
}

/// Sleeps until `t`, or forever when there is none.
async fn sleep_until_some(t: Option<tokio::time::Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// One submission attempt's means: the stack's endpoint or command.
#[derive(Clone)]
struct Sender {
    sc: Arc<LiveScenario>,
    url: Option<String>,
    env: Arc<Vec<(String, String)>>,
    client: Option<reqwest::Client>,
    script: super::script::Script,
}

impl Sender {
    /// Submits `job` once (as a replay: the body says so); its answer
    /// (accepted or not) goes to `answer`.
    async fn attempt(self, job: u32, replay: bool, answer: mpsc::UnboundedSender<(u32, bool)>) {
        let workflow = self.sc.jobs.workflow.clone().unwrap_or_else(|| self.script.template_for(job).name.to_owned());
        let ok = match (&self.url, &self.sc.submit.command, &self.client) {
            (Some(url), _, Some(c)) => c
                .post(url)
                .json(&serde_json::json!({ "job": job, "workflow": workflow, "replay": replay }))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success()),
            (None, Some(cmd), _) => {
                let sub = |s: &String| s.replace("{job}", &job.to_string()).replace("{workflow}", &workflow);
                let mut c = tokio::process::Command::new(sub(&cmd[0]));
                c.args(cmd[1..].iter().map(sub)).envs(self.env.iter().cloned()).kill_on_drop(true);
                // A command that hangs is an attempt that never answers.
                let limit = Duration::from_millis(SUBMIT_TIMEOUT_MS);
                tokio::time::timeout(limit, c.status()).await.is_ok_and(|s| s.is_ok_and(|s| s.success()))
            }
            _ => false,
        };
        let _ = answer.send((job, ok));
    }
}

/// A fault that fires at a time.
enum Timed {
    Kill(usize, usize),
    Stop(usize, usize),
    Cont(usize),
    OutageOn(usize, Fake, u16),
    OutageOff(Fake),
    CutOn(usize, Selector, Selector),
    CutOff(usize),
    ToxicOn(usize, Selector, Selector, TcpToxic),
    ToxicOff(usize),
    RegionLoss(usize),
    RegionBack,
    Lag(usize, u64),
}

async fn drive(
    sc: &LiveScenario,
    served: &Served,
    reps: &[Replica],
    sup: &Arc<Supervisor>,
    regions: &Regions,
    submit_addr: Option<SocketAddr>,
) -> Result<Driven, LiveRunError> {
    let shared = &served.shared;
    wait_ready(sc, reps, sup).await?;
    let (fired_tx, mut fired_rx) = mpsc::unbounded_channel::<Fired>();
    let mut point_fault: Vec<usize> = Vec::new();
    let mut timed: Vec<(u64, Timed)> = Vec::new();
    for (i, f) in sc.faults.iter().enumerate() {
        match f {
            LiveFault::KillAtCall { api, job, step, call, phase } => {
                let p = Point { fake: api.fake(), job: *job, step: *step, call: *call, phase: *phase, pause: false };
                shared
                    .killpoints
                    .arm(p, fired_tx.clone())
                    .map_err(|source| LiveRunError::Arm { scenario: sc.name.clone(), source })?;
                point_fault.push(i);
            }
            LiveFault::PauseAtCall { api, job, step, call, phase, .. } => {
                let p = Point { fake: api.fake(), job: *job, step: *step, call: *call, phase: *phase, pause: true };
                shared
                    .killpoints
                    .arm(p, fired_tx.clone())
                    .map_err(|source| LiveRunError::Arm { scenario: sc.name.clone(), source })?;
                point_fault.push(i);
            }
            LiveFault::Kill { process, replica, at } => {
                timed.push((at.ms(), Timed::Kill(i, slot_of(reps, process, *replica).expect("validated"))));
            }
            LiveFault::Pause { process, replica, at, duration } => {
                let slot = slot_of(reps, process, *replica).expect("validated");
                timed.push((at.ms(), Timed::Stop(i, slot)));
                timed.push((at.ms() + duration.ms(), Timed::Cont(slot)));
            }
            LiveFault::ProviderOutage { provider, status, at, duration } => {
                timed.push((at.ms(), Timed::OutageOn(i, provider.fake(), *status)));
                timed.push((at.ms() + duration.ms(), Timed::OutageOff(provider.fake())));
            }
            LiveFault::Partition { between, at, duration } => {
                let (a, b) = (Selector::parse(&between[0]), Selector::parse(&between[1]));
                timed.push((at.ms(), Timed::CutOn(i, a, b)));
                timed.push((at.ms() + duration.ms(), Timed::CutOff(i)));
            }
            LiveFault::Network { toxic, between, direction, toxicity, at, duration } => {
                let (a, b) = (Selector::parse(&between[0]), Selector::parse(&between[1]));
                let t = TcpToxic {
                    name: format!("fault-{i}"),
                    kind: toxic.clone(),
                    stream: *direction,
                    toxicity: *toxicity,
                };
                timed.push((at.ms(), Timed::ToxicOn(i, a, b, t)));
                timed.push((at.ms() + duration.ms(), Timed::ToxicOff(i)));
            }
            LiveFault::ReplicationLag { latency, at, duration } => {
                timed.push((at.ms(), Timed::Lag(i, latency.ms())));
                if let Some(d) = duration {
                    let base = sc.database.as_ref().and_then(|d| d.replication_latency).map_or(0, |l| l.ms());
                    timed.push((at.ms() + d.ms(), Timed::Lag(usize::MAX, base)));
                }
            }
            LiveFault::RegionLoss { at, duration, .. } => {
                timed.push((at.ms(), Timed::RegionLoss(i)));
                if let Some(d) = duration {
                    timed.push((at.ms() + d.ms(), Timed::RegionBack));
                }
            }
        }
    }
    let mut cuts: FxHashMap<usize, super::net::CutId> = FxHashMap::default();
    if let Some(p) = &regions.pair {
        p.start_backup_schedule();
    }
    let controller = start_controller(sc, served, sup, regions);
    let mut loss_at = None;
    timed.sort_by_key(|t| t.0);
    let mut timed = std::collections::VecDeque::from(timed);
    let submit_url = sc.submit.process.as_ref().map(|p| {
        let slot = slot_of(reps, p, 0).expect("validated");
        format!("http://{}{}", submit_addr.unwrap_or(reps[slot].listen), sc.submit.path)
    });
    let env: Vec<(String, String)> = served.env().into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
    let (acc_tx, mut acc_rx) = mpsc::unbounded_channel();
    let (done_tx, done_rx) = mpsc::unbounded_channel();
    let base_us = shared.now_us();
    let start = tokio::time::Instant::now();
    let route = regions.services.iter().find(|(l, _)| Some(l.addr()) == submit_addr).map(|(l, _)| l.clone());
    let sub = tokio::spawn(submitter(sc.clone(), submit_url, route, env, acc_tx, done_rx));
    let script = super::script::Script::new(shared.script.seed());
    let mut jobs: BTreeMap<u32, JobTruth> = BTreeMap::new();
    let mut onsets = vec![Onset::default(); sc.faults.len()];
    let horizon = start + Duration::from_millis(sc.horizon.ms());
    let mut tick = tokio::time::interval(Duration::from_millis(POLL_MS));
    let mut outage_no = 0u32;
    // The last fault event, and since when every job has looked done (ms
    // since the first submission): the drill ends `[jobs] settle` after both.
    let mut last_fault_ms = 0u64;
    let mut all_done_ms: Option<u64> = None;
    // Jobs the submitter was told are done (it stops resubmitting them).
    let mut told_done = rustc_hash::FxHashSet::default();
    loop {
        tokio::select! {
            Some(job) = acc_rx.recv() => {
                let t = sc.jobs.workflow.as_deref().and_then(|w| script.template_named(w)).unwrap_or_else(|| script.template_for(job));
                let steps: Vec<_> = script.expected(job, t).into_iter().filter(|e| e.side_effect).collect();
                let expected = steps.iter().map(|e| e.step).collect();
                let inputs = steps.into_iter().map(|e| (e.step, e.input)).collect();
                jobs.insert(job, JobTruth { submitted_us: Some(shared.now_us()), expected, inputs, ..JobTruth::default() });
            }
            Some(f) = fired_rx.recv() => {
                let i = point_fault[f.point];
                last_fault_ms = last_fault_ms.max(u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX));
                onsets[i].at_us = Some(f.at_us);
                match (f.slot, &sc.faults[i]) {
                    (Some(slot), LiveFault::PauseAtCall { duration, .. }) => {
                        let slot = usize::from(slot);
                        let s = sup.clone();
                        let _ = tokio::task::spawn_blocking(move || s.pause(slot)).await;
                        let wake_ms = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX) + duration.ms();
                        let at = timed.partition_point(|t| t.0 <= wake_ms);
                        timed.insert(at, (wake_ms, Timed::Cont(slot)));
                        tracing::info!(fault = i, slot, job = ?f.job, phase = f.phase.name(), "paused the sender");
                    }
                    (Some(slot), _) => {
                        let slot = usize::from(slot);
                        onsets[i].slot = Some(slot);
                        onsets[i].starts_before = sup.starts(slot);
                        let s = sup.clone();
                        if f.phase == KillPhase::AfterResponse {
                            // Frozen now, killed once its answer left: it
                            // never reads it (`killpoint`'s table).
                            let _ = tokio::task::spawn_blocking(move || s.pause(slot)).await;
                            let s = sup.clone();
                            tokio::spawn(async move {
                                tokio::time::sleep(Duration::from_millis(ANSWER_FLUSH_MS)).await;
                                let _ = tokio::task::spawn_blocking(move || s.kill(slot)).await;
                            });
                        } else {
                            let _ = tokio::task::spawn_blocking(move || s.kill(slot)).await;
                        }
                        tracing::info!(fault = i, slot, job = ?f.job, phase = f.phase.name(), "killed the sender");
                    }
                    (None, _) => tracing::warn!(fault = i, "the request came on a shared port: no sender to kill (does the process use the AGENTDRILL_* / *_BASE_URL environment?)"),
                }
                let _ = f.ack.send(());
            }
            _ = tick.tick() => {}
            _ = tokio::time::sleep_until(horizon) => break,
        }
        let elapsed_ms = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
        while timed.front().is_some_and(|t| t.0 <= elapsed_ms) {
            let (at_ms, t) = timed.pop_front().expect("front exists");
            last_fault_ms = last_fault_ms.max(at_ms);
            let now = shared.now_us();
            match t {
                Timed::Kill(i, slot) => {
                    onsets[i] =
                        Onset { at_us: Some(now), slot: Some(slot), back_us: None, starts_before: sup.starts(slot) };
                    let s = sup.clone();
                    let _ = tokio::task::spawn_blocking(move || s.kill(slot)).await;
                }
                Timed::Stop(i, slot) => {
                    onsets[i] = Onset { at_us: Some(now), ..Onset::default() };
                    let s = sup.clone();
                    let _ = tokio::task::spawn_blocking(move || s.pause(slot)).await;
                }
                Timed::Cont(slot) => sup.resume(slot),
                Timed::OutageOn(i, fake, status) => {
                    onsets[i] = Onset { at_us: Some(now), ..Onset::default() };
                    outage_no += 1;
                    let toxic = Toxic {
                        name: format!("outage-{outage_no}"),
                        kind: ToxicKind::Error { status, retry_after_ms: None },
                        count: None,
                        toxicity: 1.0,
                    };
                    if let Err(e) = lock(&shared.toxics).add(fake.name(), toxic) {
                        tracing::error!(error = %e, "outage toxic refused");
                    }
                }
                Timed::RegionLoss(i) => {
                    onsets[i] = Onset { at_us: Some(now), ..Onset::default() };
                    loss_at = Some(std::time::SystemTime::now());
                    lose_region_a(regions, sup).await;
                }
                Timed::Lag(i, ms) => {
                    if let Some(o) = onsets.get_mut(i) {
                        *o = Onset { at_us: Some(now), ..Onset::default() };
                    }
                    if let Some(pair) = &regions.pair {
                        pair.replication.set_latency_ms(ms);
                    }
                }
                Timed::RegionBack => {
                    let failed_over = match &controller {
                        Some(c) => lock(&c.timeline).promoted_us.is_some(),
                        None => true,
                    };
                    region_a_back(regions, sup, failed_over);
                }
                Timed::OutageOff(fake) => {
                    let names: Vec<String> = lock(&shared.toxics)
                        .list(fake.name())
                        .iter()
                        .filter(|t| t.name.starts_with("outage-"))
                        .map(|t| t.name.clone())
                        .collect();
                    for n in names {
                        lock(&shared.toxics).remove(fake.name(), &n);
                    }
                    shared.toxics_changed.notify_waiters();
                }
                Timed::CutOn(i, a, b) => {
                    onsets[i] = Onset { at_us: Some(now), ..Onset::default() };
                    cuts.insert(i, shared.net.cut(a, b));
                }
                Timed::CutOff(i) => {
                    if let Some(id) = cuts.remove(&i) {
                        shared.net.heal(id);
                    }
                }
                Timed::ToxicOn(i, a, b, t) => {
                    onsets[i] = Onset { at_us: Some(now), ..Onset::default() };
                    match shared.net.add_toxic_where(&a, &b, &t) {
                        Ok(links) => tracing::info!(fault = i, links = links.len(), "network toxic on"),
                        Err(e) => tracing::error!(error = %e, "network toxic refused"),
                    }
                }
                Timed::ToxicOff(i) => {
                    shared.net.remove_toxic_everywhere(&format!("fault-{i}"));
                }
            }
        }
        for o in onsets.iter_mut() {
            if let (Some(slot), None) = (o.slot, o.back_us)
                && sup.starts(slot) > o.starts_before
            {
                o.back_us = Some(shared.now_us());
            }
        }
        observe(shared, sc.jobs.done, &mut jobs);
        for (&job, t) in &jobs {
            if t.done_us.is_some() && told_done.insert(job) {
                let _ = done_tx.send(job);
            }
        }
        let all_in = jobs.len() == sc.jobs.count as usize;
        let all_done = all_in && timed.is_empty() && jobs.values().all(|j| j.done_us.is_some());
        all_done_ms = if all_done { all_done_ms.or(Some(elapsed_ms)) } else { None };
        if all_done_ms.is_some_and(|d| elapsed_ms >= d.max(last_fault_ms).saturating_add(sc.settle_ms())) {
            break;
        }
    }
    sub.abort();
    shared.killpoints.clear();
    observe(shared, sc.jobs.done, &mut jobs);
    let failover = match controller {
        Some(c) => Some(c.stop().await),
        None => None,
    };
    Ok(Driven { base_us, end_us: shared.now_us(), jobs, onsets, failover, loss_at, rpo: None, rpo_error: None })
}

/// The harness's failover controller, when the scenario loses a region with
/// a standby database and `[failover] by = "harness"`.
fn start_controller(
    sc: &LiveScenario,
    served: &Served,
    sup: &Arc<Supervisor>,
    regions: &Regions,
) -> Option<failover::Running> {
    let loses = sc.faults.iter().any(|f| matches!(f, LiveFault::RegionLoss { .. }));
    let pair = regions.pair.clone()?;
    if !loses || sc.failover.by != super::scenario::FailoverBy::Harness {
        return None;
    }
    let (s, slots, reserved) = (sup.clone(), regions.standby.clone(), regions.reserved.clone());
    let shared = served.shared.clone();
    let started = failover::start(
        sc.failover.config(),
        sc.seed,
        failover::Targets {
            db: pair,
            services: regions.services.iter().map(|(l, to)| (l.clone(), *to)).collect(),
            scale_up: Box::new(move || {
                for &i in &slots {
                    lock(&reserved).remove(&i);
                    s.start_slot(i);
                }
            }),
            clock: Arc::new(move || shared.now_us()),
        },
    );
    match started {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::error!(error = %e, "cannot start the failover controller's thread");
            None
        }
    }
}

/// Region `a` lost: its processes SIGKILLed and kept down, its links cut, its
/// primary killed.
async fn lose_region_a(regions: &Regions, sup: &Arc<Supervisor>) {
    let (s, slots) = (sup.clone(), regions.region_a.clone());
    let kill = tokio::task::spawn_blocking(move || slots.iter().for_each(|&i| s.hold(i)));
    if let Some(pair) = &regions.pair {
        pair.lose_region_a().await;
    }
    let _ = kill.await;
    for &i in &regions.region_a {
        regions.reserve(i);
    }
    tracing::info!("region a lost");
}

/// Region `a` back: its links mended and its processes restarted, except
/// those a standby took over once the failover happened (fenced: the old
/// primary and its orchestrator never serve again).
fn region_a_back(regions: &Regions, sup: &Arc<Supervisor>, failed_over: bool) {
    if let Some(pair) = &regions.pair {
        pair.region_a_back();
    }
    for &i in regions.region_a.iter().filter(|i| !(failed_over && regions.taken_over.contains(i))) {
        regions.release(i);
        sup.start_slot(i);
    }
    tracing::info!(failed_over, "region a back");
}

fn s_of(us: Micros) -> f64 {
    us as f64 / 1e6
}

/// The measurements and the verdict, from ground truth.
fn measure(
    sc: &LiveScenario,
    seed: u64,
    shared: &Shared,
    d: Driven,
    exits: Vec<ExitRecord>,
    audit: Option<super::stack::pg::Audit>,
    senders: &Senders,
) -> DrillResult {
    let (ledger, total_effects) = ledger_counts(shared);
    let mut counts = Counts { side_effects: total_effects, ..Counts::default() };
    counts.replanned_steps = replanned(shared, &d.jobs);
    let requests = lock(&shared.requests).clone();
    counts.concurrent_runs = runs::concurrent_runs(&requests, &senders.stalls);
    let mut unmeasured = Vec::new();
    let mut measured_from = BTreeMap::from([
        (
            "concurrent_runs",
            "the payment and email fakes' requests by sender port: a call, or a lookup of a running sender, meeting another sender's call for the step while it was processed",
        ),
        ("duplicates", "the payment and email fakes' ledgers, per (job, step) of the script"),
        ("lost_effects", "the ledgers and the model fakes' final answers"),
        ("stuck_tasks", "the ledgers and the model fakes' final answers"),
        ("replanned_steps", "each effect's parameters at the fakes against the script's tool input"),
    ]);
    let audit_requeues = audit.as_ref().map(|a| a.requeues_us.clone()).unwrap_or_default();
    let store_commit = StoreCommit::of(&senders.commit_us);
    let event_logs = audit.as_ref().map(|a| {
        let old_primary = d.rpo.as_ref().map_or(&[][..], |r| &r.old_primary_log[..]);
        let loss_us = sc
            .faults
            .iter()
            .zip(&d.onsets)
            .find_map(|(f, o)| matches!(f, LiveFault::RegionLoss { .. }).then_some(o.at_us).flatten());
        EventLogs::new(&a.log, old_primary, senders.boot_offset_us, loss_us)
    });
    match audit {
        Some(a) => {
            let host_of = |slot: u16| senders.hosts.get(usize::from(slot)).copied().flatten();
            counts.stale_actions = runs::stale_actions(&requests, &a.grants, host_of);
            measured_from.insert(
                "stale_actions",
                "the fakes' side-effect requests by sender port against the lease grants of the stack's agentdrill.event_log",
            );
            counts.stale_writes = a.stale_writes;
            measured_from.insert(
                "stale_writes",
                "the stack's PostgreSQL: agentdrill.writes judged against the lease history of agentdrill.event_log",
            );
            counts.corrupted_writes = crate::drill::measure::corrupted_writes(&a.log);
            measured_from.insert(
                "corrupted_writes",
                "the stack's PostgreSQL: step results in agentdrill.event_log persisted from responses that failed the schema",
            );
        }
        None => {
            // No lease history to judge the requests by (a foreign stack
            // without the reference stack's agentdrill.event_log).
            unmeasured.extend(["stale_writes", "stale_actions", "corrupted_writes"]);
        }
    }
    for (&job, t) in &d.jobs {
        for (i, s) in t.expected.iter().enumerate() {
            let n = ledger.get(&(job, *s)).map_or(0, |c| c.0);
            counts.duplicates += n.saturating_sub(1);
            // Lost: the job went past the step without its effect — it said
            // it was done, or (last_effect) a later step's effect exists.
            let went_past = match sc.jobs.done {
                DoneWhen::FinalAnswer => t.final_us.is_some(),
                DoneWhen::LastEffect => t.expected[i + 1..].iter().any(|l| ledger.contains_key(&(job, *l))),
            };
            if n == 0 && went_past {
                counts.lost_effects += 1;
            }
        }
        let ended = match sc.jobs.done {
            DoneWhen::FinalAnswer => t.final_us.is_some(),
            // Its last step's effect is in (earlier missing ones are lost).
            DoneWhen::LastEffect => match t.expected.last() {
                Some(l) => ledger.contains_key(&(job, *l)),
                None => t.final_us.is_some(),
            },
        };
        if !ended {
            counts.stuck_tasks += 1;
        }
        if t.done_us.is_some() {
            counts.done_tasks += 1;
        }
    }
    // When the stack noticed a holder was gone (its event log's requeues),
    // on the fakes' clock.
    let requeues: Vec<Micros> = audit_requeues.iter().map(|t| t.saturating_sub(senders.boot_offset_us)).collect();
    let faults: Vec<FaultResult> =
        sc.faults.iter().zip(&d.onsets).map(|(f, o)| fault_result(f, o, &d, event_logs.as_ref(), &requeues)).collect();
    let models = [&shared.models[0], &shared.models[1], &shared.models[2]];
    let mut cost = Cost::default();
    for m in models {
        let st = lock(m).provider.stats();
        cost.model_calls += st.requests;
        cost.tokens += st.tokens_in + st.tokens_out;
        cost.usd += st.cost_micro_usd as f64 / 1e6;
    }
    let attempts = lock(&shared.attempts).attempts.len() as u64;
    let wall_s = s_of(d.end_us.saturating_sub(d.base_us));
    let region = region_report(sc, &d);
    if region.is_some() {
        // The live vector fakes ship no snapshots across regions yet.
        unmeasured.push("rpo_surfaces.vector_memory_s");
    }
    let header = Header { scenario: &sc.name, purpose: &sc.purpose, seed, tier: &sc.tier, expect: sc.expect };
    let mut result = DrillResult::judged(header, faults, counts, sc.horizon.us(), Vec::new());
    result.cost = cost;
    result.baseline_cost = cost;
    result.simulated_s = wall_s;
    result.events = attempts;
    result.calls = cost.model_calls + total_effects;
    result.live = Some(LiveInfo {
        mode: "live",
        wall_s,
        jobs_submitted: u32::try_from(d.jobs.len()).unwrap_or(u32::MAX),
        process_exits: exits,
        unmeasured,
        measured_from,
        region,
        store_commit,
    });
    result
}

/// Fields of an effect's object the script's tool input also names: equal
/// when the effect acted on the script's decision.
const DECIDED_FIELDS: [&str; 5] = ["amount", "description", "payment_intent", "subject", "text"];

/// Whether `object` (what the fake made) carries `input`'s decision: every
/// field both name is equal (fields only one side has say nothing).
fn acted_on(object: &serde_json::Value, input: &serde_json::Value) -> bool {
    DECIDED_FIELDS.iter().all(|f| match (&object[*f], &input[*f]) {
        (serde_json::Value::Null, _) | (_, serde_json::Value::Null) => true,
        (o, i) => o == i,
    })
}

/// Replanned steps: side-effecting (job, step)s of the script with an
/// effect whose parameters are not the script's (the model fakes play one
/// decision per step, however often they are asked: an effect on another
/// one was re-derived, or made up, by the agent).
fn replanned(shared: &Shared, jobs: &BTreeMap<u32, JobTruth>) -> u64 {
    let mut steps = std::collections::BTreeSet::new();
    let ledgers = [lock(&shared.payment).ledger_json(), lock(&shared.email).ledger_json()];
    for row in ledgers.iter().filter_map(serde_json::Value::as_array).flatten() {
        let (Some(job), Some(step)) = (row["job"].as_u64(), row["step"].as_u64()) else { continue };
        let (Ok(job), Ok(step)) = (u32::try_from(job), u16::try_from(step)) else { continue };
        let Some(input) = jobs.get(&job).and_then(|t| t.inputs.get(&step)) else { continue };
        if !acted_on(&row["object"], input) {
            steps.insert((job, step));
        }
    }
    steps.len() as u64
}

/// The region report, when the scenario loses a region.
fn region_report(sc: &LiveScenario, d: &Driven) -> Option<RegionReport> {
    let i = sc.faults.iter().position(|f| matches!(f, LiveFault::RegionLoss { .. }))?;
    let rel = |t: Option<Micros>| t.map(|t| s_of(t.saturating_sub(d.base_us)));
    let tl = d.failover.clone().unwrap_or_default();
    let db = sc.database.as_ref();
    Some(RegionReport {
        replication: match db.map(|d| d.replication) {
            Some(super::scenario::DbReplication::Sync) => "sync",
            Some(super::scenario::DbReplication::BaseBackup) => "base_backup",
            _ => "async",
        },
        failover_by: match sc.failover.by {
            super::scenario::FailoverBy::Harness => "harness",
            super::scenario::FailoverBy::Stack => "stack",
        },
        onset_s: rel(d.onsets[i].at_us),
        detected_s: rel(tl.detected_us),
        promoted_s: rel(tl.promoted_us),
        routed_s: rel(tl.routed_us),
        scaled_up_s: rel(tl.scaled_up_us),
        fenced_s: rel(tl.fenced_us),
        cancelled: tl.cancelled,
        rpo: d.rpo.clone(),
        rpo_error: d.rpo_error.clone(),
    })
}

/// A region loss's RTO parts from the failover's timeline: detection
/// (onset → declared down), routing (→ promoted and the stable addresses
/// switched after the TTL), scale-up (→ the standby processes started),
/// resume (the rest), each within the RTO.
fn region_parts(onset: Micros, rto_s: f64, tl: &failover::Timeline) -> RtoParts {
    let mut left = rto_s;
    let mut take = |from: Micros, to: Option<Micros>| {
        let part = to.map_or(0.0, |t| s_of(t.saturating_sub(from))).min(left);
        left -= part;
        part
    };
    let detected = tl.detected_us.unwrap_or(onset).max(onset);
    let detection_s = take(onset, Some(detected));
    let routed = tl.routed_us.unwrap_or(detected).max(detected);
    let routing_s = take(detected, Some(routed));
    let scale_up_s = take(routed, tl.scaled_up_us.map(|t| t.max(routed)));
    RtoParts { detection_s, routing_s, scale_up_s, hydration_s: 0.0, resume_s: left }
}

/// The reference stack's event logs, on the fakes' clock: what the live
/// RTO is read from, by the simulator's definition (DOMAIN.md,
/// [`crate::drill::measure::rto_us`]).
struct EventLogs {
    /// The log of the node serving at the end (read by the audit).
    serving: Vec<LogRec>,
    /// After a region loss with a promoted standby: the dead primary's log
    /// as it committed it (empty otherwise).
    old_primary: Vec<LogRec>,
    /// When region `a` was lost (fakes' clock), if it was.
    loss_us: Option<Micros>,
    /// Results and completions in both logs.
    progress: Progress,
}

impl EventLogs {
    /// The logs on the fakes' clock. Clocks: the reference stack stamps
    /// `at_us` with the boot clock (`stack::env::monotonic_us`, the same
    /// clock for every process on the machine, PostgreSQL's node included
    /// since the orchestrator writes the stamp), while the onsets, `base_us`
    /// and the client's truth are on the fakes' clock (`Shared::now_us`);
    /// `boot_offset_us` (boot minus fakes', read once at the drill's start:
    /// both are monotonic and advance together) maps one onto the other.
    fn new(serving: &[LogRec], old_primary: &[LogRec], boot_offset_us: Micros, loss_us: Option<Micros>) -> EventLogs {
        let fakes_clock = |log: &[LogRec]| -> Vec<LogRec> {
            log.iter().map(|r| LogRec { at_us: r.at_us.saturating_sub(boot_offset_us), ..*r }).collect()
        };
        let (serving, old_primary) = (fakes_clock(serving), fakes_clock(old_primary));
        let progress = Progress::of(&[LogSlice::from(&serving), LogSlice::from(&old_primary)]);
        EventLogs { serving, old_primary, loss_us, progress }
    }

    /// The jobs in flight at `t0`: leased then by the log of the node that
    /// was the primary (the dead one up to the region loss, as the
    /// simulator reads its serving store at the onset).
    fn in_flight(&self, t0: Micros) -> Vec<JobId> {
        let was_primary = !self.old_primary.is_empty() && self.loss_us.is_none_or(|l| t0 <= l);
        leased_jobs_at(if was_primary { &self.old_primary } else { &self.serving }, t0)
    }
}

/// When a job in flight at `onset_us` made progress again: its first
/// progress in the stack's event logs after the onset (`logged_us`), or
/// when the ground truth shows it done (`done_us`; at the onset if it was
/// done before), whichever is first. `None`: neither happened.
fn progressed_at(onset_us: Micros, logged_us: Option<Micros>, done_us: Option<Micros>) -> Option<Micros> {
    let done_us = done_us.map(|t| t.max(onset_us));
    match (logged_us, done_us) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// One fault's RTO by DOMAIN.md's definition from the event `logs`, or
/// the client's truth without them (see the module docs). A partition's
/// parts: detection until the stack's first requeue after the onset
/// (`requeues_us`, the fakes' clock: a lease found expired), resume the
/// rest.
fn fault_result(f: &LiveFault, o: &Onset, d: &Driven, logs: Option<&EventLogs>, requeues_us: &[Micros]) -> FaultResult {
    let mut r = FaultResult {
        kind: f.kind(),
        onset_s: None,
        rto_s: None,
        rto_parts: RtoParts::default(),
        rpo: RpoSurfaces::default(),
        in_flight_tasks: 0,
        rollback_s: None,
    };
    let Some(onset) = o.at_us else {
        // Never triggered: nothing to recover from.
        r.rto_s = Some(0.0);
        return r;
    };
    r.onset_s = Some(s_of(onset.saturating_sub(d.base_us)));
    let rto_us = match logs {
        // The reference stack: DOMAIN.md's definition from its event log
        // (the tasks leased at the onset made progress again, and a task
        // created at or after it completed).
        Some(logs) => {
            let in_flight = logs.in_flight(onset);
            r.in_flight_tasks = in_flight.len();
            // A job the ground truth shows finished (its last effect in the
            // fakes' ledgers, or its final answer served) made its progress
            // then, whatever the stack's store kept: a store restored from
            // a backup older than the job holds no record to resume, and the
            // client, having seen the job done, does not submit it again.
            let progressed = |job: JobId| {
                let done_us = d.jobs.get(&job.0).and_then(|j| j.done_us);
                progressed_at(onset, logs.progress.after(job, onset), done_us)
            };
            // The simulator offers new work at every onset (its health
            // probe); the live client offers the jobs it submits after it.
            // Offered none, there is no new work to wait for.
            let offered = d.jobs.values().any(|j| j.submitted_us.is_some_and(|s| s > onset));
            let new_work = logs.progress.new_work_done(onset).or((!offered).then_some(onset));
            rto_us(onset, in_flight.iter().map(|&job| progressed(job)), new_work)
        }
        // A stack without our event log: the client's truth, the fallback
        // (every job submitted before the onset and not done is done end
        // to end, and the first job submitted after it done).
        None => {
            let in_flight: Vec<Option<Micros>> = d
                .jobs
                .values()
                .filter(|j| j.submitted_us.is_some_and(|s| s <= onset) && j.done_us.is_none_or(|t| t > onset))
                .map(|j| j.done_us)
                .collect();
            r.in_flight_tasks = in_flight.len();
            let next =
                d.jobs.values().filter(|j| j.submitted_us.is_some_and(|s| s > onset)).min_by_key(|j| j.submitted_us);
            // No job submitted after the onset: nothing new to wait for.
            rto_us(onset, in_flight, next.map_or(Some(onset), |j| j.done_us))
        }
    };
    r.rto_s = rto_us.map(s_of);
    if let LiveFault::ReplicationLag { .. } = f {
        // A lag stops nothing: its cost shows in the region loss's RPO.
        r.rto_s = Some(0.0);
        return r;
    }
    if let LiveFault::RegionLoss { .. } = f {
        if let Some(rpo) = &d.rpo {
            r.rpo.structured_state_s = rpo.rpo_ms / 1000.0;
        }
        if let (Some(rto), Some(tl)) = (r.rto_s, &d.failover) {
            r.rto_parts = region_parts(onset, rto, tl);
        }
        return r;
    }
    if let (LiveFault::Partition { .. }, Some(rto)) = (f, r.rto_s) {
        let noticed = requeues_us.iter().copied().filter(|&t| t >= onset).min();
        r.rto_parts.detection_s = noticed.map_or(0.0, |t| s_of(t - onset)).min(rto);
        r.rto_parts.resume_s = rto - r.rto_parts.detection_s;
        return r;
    }
    if let Some(rto) = r.rto_s {
        let up = o.back_us.map_or(0.0, |b| s_of(b.saturating_sub(onset)));
        r.rto_parts.scale_up_s = up.min(rto);
        r.rto_parts.resume_s = rto - r.rto_parts.scale_up_s;
    }
    r
}

#[cfg(test)]
mod tests {
    use super::progressed_at;

    #[test]
    fn a_job_the_ground_truth_shows_done_has_progressed() {
        // Logged progress only, done only, both (the first wins), neither.
        assert_eq!(progressed_at(100, Some(150), None), Some(150));
        assert_eq!(progressed_at(100, None, Some(170)), Some(170));
        assert_eq!(progressed_at(100, Some(150), Some(170)), Some(150));
        assert_eq!(progressed_at(100, Some(190), Some(170)), Some(170));
        assert_eq!(progressed_at(100, None, None), None);
        // Done before the onset (the store lost its record of it): nothing
        // left to recover, progress at the onset.
        assert_eq!(progressed_at(100, None, Some(40)), Some(100));
    }
}
