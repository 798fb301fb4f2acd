//! `agentdrill stack worker`: the simulator's [`Worker`] as a process.
//!
//! One loop task owns the worker and its [`LiveEnv`]; it takes messages
//! from the orchestrator (`POST /msg` on `AGENTDRILL_LISTEN_ADDR`), the
//! fakes' answers and its timers, runs the handler, and delivers the outbox:
//! messages for the orchestrator as `POST {AGENTDRILL_PEER_ORCHESTRATOR_URL}/msg`,
//! requests for the fakes through [`Fakes`]. Everything the worker holds is
//! volatile, as in the simulator: a SIGKILLed worker restarts empty and asks
//! for work.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use rustc_hash::FxHashMap;
use tokio::sync::mpsc;

use super::env::{Envelope, LiveEnv, ORCHESTRATOR, PROVIDERS, monotonic_us, worker_host};
use super::fakes::{FakeUrls, Fakes};
use super::{ConfigError, optional, required};
use crate::components::ids::{HostId, JobId, US_PER_MS};
use crate::components::policy::Policy;
use crate::components::provider::ProviderConfig;
use crate::components::router::RouterSettings;
use crate::components::wire::Msg;
use crate::components::worker::{Worker, WorkerShared};
use crate::components::workflow::{Template, builtin_shared};

/// How long a message to the orchestrator may take before it counts as lost.
const ORCHESTRATOR_POST_TIMEOUT_MS: u64 = 5_000;

/// A worker process's settings.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// `AGENTDRILL_REPLICA`: which replica (host id `100 + replica`).
    pub replica: u32,
    /// `AGENTDRILL_LISTEN_ADDR`.
    pub listen: SocketAddr,
    /// `AGENTDRILL_PEER_ORCHESTRATOR_URL`.
    pub orchestrator_url: String,
    /// `AGENTDRILL_SEED` (default 1): the rng's seed, mixed with the incarnation.
    pub seed: u64,
    /// The policy switches.
    pub policy: Policy,
    /// The fakes.
    pub urls: FakeUrls,
    /// `AGENTDRILL_REQUEST_TIMEOUT_MS` (default 10 000): how long the worker
    /// waits for the orchestrator or a tool before its watchdog acts.
    pub request_timeout_ms: u64,
    /// `AGENTDRILL_MODEL_TIMEOUT_MS` (default 30 000): each provider's SDK timeout.
    pub model_timeout_ms: u64,
}

impl WorkerConfig {
    /// Reads the process contract's environment; `anti_patterns` are the
    /// `--anti-pattern` flags (applied after `AGENTDRILL_POLICY`).
    pub fn from_env(anti_patterns: &[String], lease_ms: Option<u64>) -> Result<Self, ConfigError> {
        let orchestrator_url =
            required("AGENTDRILL_PEER_ORCHESTRATOR_URL", "the orchestrator's address", "http://127.0.0.1:8600")?;
        let openai = required("OPENAI_BASE_URL", "the OpenAI fake (with /v1)", "http://127.0.0.1:8474/v1")?;
        let urls = FakeUrls {
            anthropic: required("ANTHROPIC_BASE_URL", "the Anthropic fake", "http://127.0.0.1:8473")?,
            local: std::env::var("AGENTDRILL_LOCAL_MODEL_URL").ok().filter(|v| !v.is_empty()).unwrap_or(openai.clone()),
            openai,
            stripe: required("STRIPE_API_BASE", "the payment fake", "http://127.0.0.1:8471")?,
            email: required("EMAIL_API_URL", "the email fake", "http://127.0.0.1:8472")?,
            qdrant: required("QDRANT_URL", "the vector fake", "http://127.0.0.1:8476")?,
        };
        let mut policy = super::policy(std::env::var("AGENTDRILL_POLICY").ok().as_deref(), anti_patterns)?;
        if let Some(ms) = lease_ms.or(optional("AGENTDRILL_LEASE_MS")?) {
            policy.lease_ms = ms;
        }
        let cfg = WorkerConfig {
            replica: optional("AGENTDRILL_REPLICA")?.unwrap_or(0),
            listen: super::listen_addr()?,
            orchestrator_url: orchestrator_url.trim_end_matches('/').to_owned(),
            seed: optional("AGENTDRILL_SEED")?.unwrap_or(1),
            policy,
            urls,
            request_timeout_ms: optional("AGENTDRILL_REQUEST_TIMEOUT_MS")?.unwrap_or(10_000),
            model_timeout_ms: optional("AGENTDRILL_MODEL_TIMEOUT_MS")?.unwrap_or(30_000),
        };
        for (name, v) in [
            ("AGENTDRILL_REQUEST_TIMEOUT_MS", cfg.request_timeout_ms),
            ("AGENTDRILL_MODEL_TIMEOUT_MS", cfg.model_timeout_ms),
            ("AGENTDRILL_LEASE_MS", cfg.policy.lease_ms),
        ] {
            if !(10..=3_600_000).contains(&v) {
                let why = "expected milliseconds between 10 and 3 600 000".to_owned();
                return Err(ConfigError::Invalid { name: name.into(), value: v.to_string(), why });
            }
        }
        if cfg.replica >= super::env::MAX_REPLICAS {
            let why = format!("at most {} replicas", super::env::MAX_REPLICAS);
            return Err(ConfigError::Invalid {
                name: "AGENTDRILL_REPLICA".into(),
                value: cfg.replica.to_string(),
                why,
            });
        }
        Ok(cfg)
    }
}

#[derive(Clone)]
struct Inbound {
    tx: mpsc::UnboundedSender<Envelope>,
    incarnation: u64,
}

/// `POST /msg`: a message from the orchestrator, for this incarnation only.
async fn receive(State(s): State<Inbound>, Json(e): Json<Envelope>) -> StatusCode {
    if e.from != ORCHESTRATOR || e.incarnation != s.incarnation {
        return StatusCode::CONFLICT; // for an earlier process on this address
    }
    match s.tx.send(e) {
        Ok(()) => StatusCode::ACCEPTED,
        Err(_) => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// The job a request to a fake is for.
fn job_of(msg: &Msg) -> Option<JobId> {
    match msg {
        Msg::ModelReq { origin, .. } | Msg::ToolReq { origin, .. } | Msg::LookupReq { origin, .. } => Some(origin.job),
        Msg::VecUpsert { point, .. } | Msg::VecQuery { point, .. } => Some(point.job),
        _ => None,
    }
}

/// Runs a worker process until it is killed (or its listener fails).
pub fn run(cfg: WorkerConfig) -> anyhow::Result<()> {
    // The worker shares its settings by `Rc`: one thread runs it.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    // Requests to the fakes run as local tasks: a `Msg` is not `Send`.
    rt.block_on(tokio::task::LocalSet::new().run_until(serve(cfg)))
}

async fn serve(cfg: WorkerConfig) -> anyhow::Result<()> {
    let incarnation = monotonic_us();
    let me = worker_host(cfg.replica);
    let (http_tx, mut http_rx) = mpsc::unbounded_channel::<Envelope>();
    let (in_tx, mut in_rx) = mpsc::unbounded_channel::<(HostId, Msg)>();
    let (timer_tx, mut timer_rx) = mpsc::unbounded_channel();
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {} (AGENTDRILL_LISTEN_ADDR): {e}", cfg.listen))?;
    // Where the orchestrator reaches this worker: the harness's proxy in a
    // live drill (`AGENTDRILL_PEER_ORCHESTRATOR_REPLY_URL`), else the listener.
    let my_url = match std::env::var("AGENTDRILL_PEER_ORCHESTRATOR_REPLY_URL").ok().filter(|v| !v.is_empty()) {
        Some(u) => u.trim_end_matches('/').to_owned(),
        None => format!("http://{}", listener.local_addr()?),
    };
    let app = axum::Router::new()
        .route("/msg", post(receive))
        .route("/health", get(|| async { "worker up" }))
        .with_state(Inbound { tx: http_tx, incarnation });
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "worker listener stopped");
        }
    });
    let templates = builtin_shared();
    let provider_cfgs = [ProviderConfig::anthropic(), ProviderConfig::openai(), ProviderConfig::local()];
    let shared = Rc::new(WorkerShared {
        policy: cfg.policy,
        templates,
        home: Some(ORCHESTRATOR),
        payment: super::env::PAYMENT,
        email: super::env::EMAIL,
        search: super::env::SEARCH,
        providers: PROVIDERS.to_vec(),
        router: RouterSettings::for_providers(&provider_cfgs),
        request_timeout_us: cfg.request_timeout_ms * US_PER_MS,
        model_timeout_us: vec![cfg.model_timeout_ms * US_PER_MS; PROVIDERS.len()],
    });
    let fakes = Arc::new(Fakes::new(cfg.urls.clone(), cfg.request_timeout_ms, cfg.model_timeout_ms));
    let out = Outbound {
        me,
        incarnation,
        my_url,
        orchestrator_url: cfg.orchestrator_url.clone(),
        client: reqwest::Client::new(),
        fakes,
        templates,
        in_tx,
    };
    wait_for_orchestrator(&out.client, &cfg.orchestrator_url).await;
    let mut worker = Worker::new(shared, me);
    let mut env = LiveEnv::new(me, "worker", cfg.seed, incarnation, timer_tx);
    // The template of each job this worker was granted (the fakes' requests
    // are shaped by it).
    let mut jobs: FxHashMap<JobId, u16> = FxHashMap::default();
    tracing::info!(replica = cfg.replica, host = me.0, listen = %cfg.listen, "worker started");
    worker.start(&mut env);
    out.deliver(&mut env, &jobs);
    loop {
        tokio::select! {
            Some(timer) = timer_rx.recv() => worker.on_timer(&mut env, timer),
            Some(e) = http_rx.recv() => {
                let Some(msg) = e.msg() else { continue };
                tracing::trace!(?msg, "message in");
                if let Msg::LeaseGrant { grant, .. } = &msg {
                    anyhow::ensure!(
                        (grant.template as usize) < out.templates.len(),
                        "the orchestrator granted job {} with template {} that this worker does not have",
                        grant.job.0,
                        grant.template
                    );
                    jobs.insert(grant.job, grant.template);
                }
                worker.on_msg(&mut env, e.from, msg);
            }
            Some((from, msg)) = in_rx.recv() => worker.on_msg(&mut env, from, msg),
            else => anyhow::bail!("the worker's channels closed"),
        }
        out.deliver(&mut env, &jobs);
    }
}

/// A readiness wait before the first lease request: an orchestrator still
/// starting would lose it, and the worker would wait out its lease
/// request's 30 s watchdog. Any HTTP answer will do.
async fn wait_for_orchestrator(client: &reqwest::Client, url: &str) {
    let mut waited_ms = 0u64;
    loop {
        let probe = client.get(format!("{url}/health")).timeout(std::time::Duration::from_millis(500));
        if probe.send().await.is_ok() {
            return;
        }
        if waited_ms.is_multiple_of(10_000) {
            tracing::info!(url, "waiting for the orchestrator");
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        waited_ms += 100;
    }
}

/// Where a worker's messages go.
struct Outbound {
    me: HostId,
    incarnation: u64,
    my_url: String,
    orchestrator_url: String,
    client: reqwest::Client,
    fakes: Arc<Fakes>,
    templates: &'static [Template],
    in_tx: mpsc::UnboundedSender<(HostId, Msg)>,
}

impl Outbound {
    /// Sends everything in the outbox; answers come back to the loop.
    fn deliver(&self, env: &mut LiveEnv, jobs: &FxHashMap<JobId, u16>) {
        for (to, msg) in env.outbox.drain(..) {
            if to == ORCHESTRATOR {
                tracing::trace!(?msg, "message out");
                let envelope = Envelope::new(self.me, self.incarnation, Some(self.my_url.clone()), &msg);
                let rb = self
                    .client
                    .post(format!("{}/msg", self.orchestrator_url))
                    .timeout(std::time::Duration::from_millis(ORCHESTRATOR_POST_TIMEOUT_MS))
                    .json(&envelope);
                tokio::spawn(async move {
                    // A lost message is the watchdog's business, as in the simulator.
                    if let Err(e) = rb.send().await {
                        tracing::debug!(error = %e, "message to the orchestrator lost");
                    }
                });
                continue;
            }
            let Some(&template) = job_of(&msg).and_then(|j| jobs.get(&j)) else {
                tracing::warn!(to = to.0, msg = ?msg, "request for a job this worker was never granted; dropped");
                continue;
            };
            let (fakes, templates, tx) = (self.fakes.clone(), self.templates, self.in_tx.clone());
            tokio::task::spawn_local(async move {
                if let Some(reply) = fakes.call(to, &templates[template as usize], msg).await {
                    let _ = tx.send((to, reply));
                }
            });
        }
    }
}
