//! The live runtime: the fakes as HTTP servers on 127.0.0.1 (`agentdrill serve`).
//!
//! Each fake (payment, email, Anthropic, OpenAI, the self-hosted fallback and
//! one vector store per region) listens on its own loopback port and speaks
//! the wire shape of the real API, so an agent written with the official SDKs
//! runs against it unchanged. The handlers drive the same sans-IO components
//! as the simulator ([`crate::components::ledger`], [`crate::components::provider`],
//! [`crate::components::vector`]), with the real clock (microseconds since
//! start) and seeded rngs passed in. The model fakes play the script
//! ([`script`]). A control API on the harness port ([`control`]) adds and
//! removes toxics, resets, and shows the ledgers (ground truth) and the
//! ledger of attempts (every request, so SDK retries are counted).
//!
//! - [`http`]: the accept loop, the per-request middleware (toxics, attempts,
//!   request logs) and response helpers;
//! - [`payment`], [`email`], [`model`], [`vector`]: the fakes;
//! - [`net`]: the TCP proxies between components (links, partitions,
//!   network toxics), listed by the control API next to the fakes;
//! - [`loadgen`]: the load generator `agentdrill bench` runs in a child process;
//! - [`stack`]: the live reference stack (`agentdrill stack orchestrator|worker`):
//!   the simulator's orchestrator and worker behind a live `Env`.

// Handlers return early with the answer to send (`Result<_, Response>`, the
// axum idiom); a `Response` is 128 bytes and built once per request.
#![allow(clippy::result_large_err)]

pub mod control;
pub mod drill;
pub mod email;
pub mod failover;
pub mod http;
pub mod killpoint;
pub mod loadgen;
pub mod model;
pub mod net;
pub mod payment;
pub mod pg;
pub mod runs;
pub mod scenario;
pub mod script;
pub mod stack;
pub mod supervisor;
pub mod toxics;
pub mod vector;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use serde::Serialize;
use tokio::sync::{Notify, watch};

use crate::components::ids::Micros;

/// The loopback ports [`free_loopback_port`] hands out: below Linux's
/// default ephemeral range (32768–60999), so the source port of some
/// outgoing connection cannot take a port between its release here and its
/// bind by the child it was handed to (a worker once failed 15 binds in a
/// row with "Address already in use" and never started).
pub const CHILD_PORTS: std::ops::Range<u16> = 20_000..32_768;

/// A loopback port free now, for a child process (a replica, PostgreSQL) to
/// bind: tried in [`CHILD_PORTS`] from an offset that differs between
/// harness processes and moves on with every call, so two drills side by
/// side, or two replicas of one, are not handed the same port.
pub fn free_loopback_port() -> std::io::Result<u16> {
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let span = u64::from(CHILD_PORTS.end - CHILD_PORTS.start);
    let start = u64::from(std::process::id()).wrapping_mul(2_654_435_761) % span;
    for _ in 0..span {
        let offset = (start + CALLS.fetch_add(1, Ordering::Relaxed)) % span;
        let port = CHILD_PORTS.start + u16::try_from(offset).expect("offset < span <= u16::MAX");
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AddrNotAvailable,
        format!("no free loopback port in {}..{}", CHILD_PORTS.start, CHILD_PORTS.end),
    ))
}

/// Most attempts the ledger of attempts keeps (the oldest are dropped and counted).
pub const MAX_ATTEMPTS: usize = 200_000;

/// The fakes a served instance runs, in port order after the control port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fake {
    /// Stripe-shaped payment API.
    Payment,
    /// Resend-shaped email API.
    Email,
    /// Anthropic Messages API.
    Anthropic,
    /// OpenAI Chat Completions API.
    Openai,
    /// The self-hosted, OpenAI-compatible fallback.
    Local,
    /// Qdrant-shaped vector store of region A.
    VectorA,
    /// Qdrant-shaped vector store of region B.
    VectorB,
}

impl Fake {
    /// Every fake.
    pub const ALL: [Fake; 7] =
        [Fake::Payment, Fake::Email, Fake::Anthropic, Fake::Openai, Fake::Local, Fake::VectorA, Fake::VectorB];

    /// Name in the control API (`/proxies/<name>`).
    pub fn name(self) -> &'static str {
        match self {
            Fake::Payment => "payment",
            Fake::Email => "email",
            Fake::Anthropic => "anthropic",
            Fake::Openai => "openai",
            Fake::Local => "local",
            Fake::VectorA => "vector-a",
            Fake::VectorB => "vector-b",
        }
    }

    /// The region a fake runs in: the vector stores are one per region, the
    /// SaaS APIs are outside every region (None).
    pub fn region(self) -> Option<&'static str> {
        match self {
            Fake::VectorA => Some("a"),
            Fake::VectorB => Some("b"),
            _ => None,
        }
    }

    /// Position in [`Fake::ALL`].
    pub fn index(self) -> usize {
        Fake::ALL.iter().position(|&f| f == self).expect("every fake is in ALL")
    }

    /// The fake called `name`.
    pub fn from_name(name: &str) -> Option<Fake> {
        Fake::ALL.into_iter().find(|f| f.name() == name)
    }
}

/// Settings of a served instance.
#[derive(Clone, Debug)]
pub struct LiveConfig {
    /// Seed of the script and of the providers' draws.
    pub seed: u64,
    /// Control port; the fakes take the next seven. 0: every port ephemeral.
    pub port: u16,
    /// How long the payment and email fakes process a request, in ms (a
    /// request with the same key meanwhile gets 409).
    pub processing_ms: u64,
    /// Model answers take the provider's modelled latency × this / 1000
    /// (0: answer at once; 1000: real provider latency).
    pub model_latency_permille: u64,
    /// The payment fake deduplicates on `Idempotency-Key` (Stripe does).
    pub payment_dedupe: bool,
    /// The email fake deduplicates on `Idempotency-Key`.
    pub email_dedupe: bool,
    /// Keep the ledger of attempts (off only for raw-speed benchmarks).
    pub record_attempts: bool,
    /// Sender slots: each gets its own ephemeral port on every fake, so a
    /// request names the process replica that sent it (live drills: one
    /// slot per replica). At most [`MAX_SENDER_SLOTS`].
    pub sender_slots: u16,
}

/// Most sender slots a served instance binds (each costs seven listeners).
pub const MAX_SENDER_SLOTS: u16 = 64;

impl Default for LiveConfig {
    fn default() -> Self {
        LiveConfig {
            seed: 1,
            port: 0,
            processing_ms: 50,
            model_latency_permille: 0,
            payment_dedupe: true,
            email_dedupe: true,
            record_attempts: true,
            sender_slots: 0,
        }
    }
}

/// Errors starting a served instance.
#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    /// A port is taken.
    #[error("cannot listen on 127.0.0.1:{port} for {what}: {source}; pick another --port (or --port 0 for free ones)")]
    Bind {
        /// Port.
        port: u16,
        /// Which listener.
        what: &'static str,
        /// Cause.
        source: std::io::Error,
    },
}

/// One request as a fake saw it (the ledger of attempts).
#[derive(Clone, Debug, Serialize)]
pub struct Attempt {
    /// Milliseconds since start.
    pub at_ms: f64,
    /// Which fake.
    pub fake: &'static str,
    /// HTTP method.
    pub method: String,
    /// Path.
    pub path: String,
    /// Status sent (0: connection dropped, no answer).
    pub status: u16,
    /// The `Idempotency-Key` header.
    pub idempotency_key: Option<String>,
    /// The job the request named (from metadata, tags or the conversation).
    pub job: Option<u32>,
    /// The answer was an idempotent replay.
    pub replayed: bool,
    /// Toxics that applied.
    pub toxics: Vec<String>,
}

/// The ledger of attempts, bounded by [`MAX_ATTEMPTS`].
#[derive(Debug, Default, Serialize)]
pub struct Attempts {
    /// Attempts dropped because the ledger was full.
    pub dropped: u64,
    /// The kept attempts, oldest first.
    pub attempts: VecDeque<Attempt>,
}

impl Attempts {
    fn push(&mut self, a: Attempt) {
        if self.attempts.len() >= MAX_ATTEMPTS {
            self.attempts.pop_front();
            self.dropped += 1;
        }
        self.attempts.push_back(a);
    }
}

/// The state every handler shares.
#[derive(Debug)]
pub struct Shared {
    /// Settings.
    pub cfg: LiveConfig,
    start: Instant,
    /// The script.
    pub script: script::Script,
    /// Payment fake.
    pub payment: Mutex<payment::PaymentState>,
    /// Email fake.
    pub email: Mutex<email::EmailState>,
    /// Model fakes: Anthropic, OpenAI, local.
    pub models: [Mutex<model::ModelState>; 3],
    /// Vector stores (both regions, one thread).
    pub vector: vector::Actor,
    /// Toxics.
    pub toxics: Mutex<toxics::Table>,
    /// Signalled when a toxic is removed (held requests look again).
    pub toxics_changed: Notify,
    /// The ledger of attempts.
    pub attempts: Mutex<Attempts>,
    /// Requests each fake is holding right now (hold toxics), by [`Fake::index`].
    pub held: [AtomicU64; 7],
    /// Listening addresses, in [`Fake::ALL`] order.
    pub addrs: Vec<SocketAddr>,
    /// Each sender slot's own listening addresses, in [`Fake::ALL`] order.
    pub slot_addrs: Vec<Vec<SocketAddr>>,
    /// Kill points armed by a live drill.
    pub killpoints: killpoint::Table,
    /// When a model fake first served each job's final answer (µs since start).
    pub finals: Mutex<rustc_hash::FxHashMap<u32, Micros>>,
    /// The TCP proxies between components (live drills add their links).
    pub net: net::Network,
    /// Every side-effect request and lookup the payment and email fakes
    /// served, with the sender and the call of another it met (at most
    /// [`MAX_ATTEMPTS`]; kept when the ledger of attempts is).
    pub requests: Mutex<Vec<runs::EffectRequest>>,
    next_id: AtomicU64,
}

/// Locks a mutex; a poisoned lock (a handler panicked) is still usable
/// because every critical section leaves the state consistent.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Shared {
    /// Microseconds since start: the `now_us` the components get.
    pub fn now_us(&self) -> Micros {
        u64::try_from(self.start.elapsed().as_micros()).expect("under 584 000 years")
    }

    /// A fresh id (request ids, object ids), unique in this instance.
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Records an attempt (when the ledger of attempts is on).
    pub fn record(&self, a: Attempt) {
        if self.cfg.record_attempts {
            lock(&self.attempts).push(a);
        }
    }

    /// Records a side-effect request or lookup (when attempts are kept).
    pub fn record_request(&self, r: runs::EffectRequest) {
        if self.cfg.record_attempts {
            let mut g = lock(&self.requests);
            if g.len() < MAX_ATTEMPTS {
                g.push(r);
            }
        }
    }

    /// `t` on the fakes' clock (µs since start; 0 before it).
    pub fn us_at(&self, t: Instant) -> Micros {
        u64::try_from(t.saturating_duration_since(self.start).as_micros()).unwrap_or(Micros::MAX)
    }

    /// The fake listening on `port`, if any.
    pub fn fake_on_port(&self, port: u16) -> Option<Fake> {
        Fake::ALL.into_iter().zip(&self.addrs).find(|(_, a)| a.port() == port).map(|(f, _)| f)
    }

    /// The address of `fake`.
    pub fn addr(&self, fake: Fake) -> SocketAddr {
        self.addrs[fake.index()]
    }

    /// The address of `fake` for sender `slot` (the shared one for None).
    pub fn addr_for(&self, fake: Fake, slot: Option<u16>) -> SocketAddr {
        slot.map_or_else(|| self.addr(fake), |s| self.slot_addrs[usize::from(s)][fake.index()])
    }

    /// Notes that a model fake served `job`'s final answer (the first time counts).
    pub fn record_final(&self, job: u32) {
        let now = self.now_us();
        lock(&self.finals).entry(job).or_insert(now);
    }

    /// Back to the state at start: no toxics (on the fakes and on the TCP
    /// links), no network cuts, empty ledgers and stores.
    pub fn reset(&self) {
        self.net.reset();
        lock(&self.toxics).clear();
        self.toxics_changed.notify_waiters();
        *lock(&self.payment) = payment::PaymentState::new(&self.cfg);
        *lock(&self.email) = email::EmailState::new(&self.cfg);
        for (m, kind) in self.models.iter().zip(model::KINDS) {
            *lock(m) = model::ModelState::new(kind);
        }
        self.vector.reset();
        *lock(&self.attempts) = Attempts::default();
        lock(&self.requests).clear();
        lock(&self.finals).clear();
    }
}

/// A running instance: its addresses, and the handle to stop it.
#[derive(Debug)]
pub struct Served {
    /// Shared state (tests and the bench read it).
    pub shared: Arc<Shared>,
    /// The control API's address.
    pub control: SocketAddr,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Served {
    /// The base URLs of the fakes, as the SDKs take them.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        self.env_for(None)
    }

    /// The base URLs of the fakes on sender `slot`'s own ports (the shared
    /// ports for None).
    pub fn env_for(&self, slot: Option<u16>) -> Vec<(&'static str, String)> {
        self.env_via(|f| self.shared.addr_for(f, slot))
    }

    /// The base URLs of the fakes, each fake reached at `addr(fake)` (a
    /// live drill's proxy in front of the replica's own port).
    pub fn env_via(&self, addr: impl Fn(Fake) -> SocketAddr) -> Vec<(&'static str, String)> {
        let url = |f| format!("http://{}", addr(f));
        vec![
            ("ANTHROPIC_BASE_URL", url(Fake::Anthropic)),
            ("OPENAI_BASE_URL", format!("{}/v1", url(Fake::Openai))),
            ("AGENTDRILL_LOCAL_MODEL_URL", format!("{}/v1", url(Fake::Local))),
            ("STRIPE_API_BASE", url(Fake::Payment)),
            ("EMAIL_API_URL", url(Fake::Email)),
            ("QDRANT_URL", url(Fake::VectorA)),
            ("QDRANT_URL_REGION_B", url(Fake::VectorB)),
            ("AGENTDRILL_CONTROL_URL", format!("http://{}", self.control)),
        ]
    }

    /// `export` lines for a shell.
    pub fn export_lines(&self) -> String {
        self.env().iter().map(|(k, v)| format!("export {k}={v}\n")).collect()
    }

    /// Stops accepting, closes every connection (the proxies' too) and
    /// waits for the servers.
    pub async fn shutdown(self) {
        self.shared.net.shutdown().await;
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// Binds every listener and starts serving. Must run inside a tokio runtime.
pub async fn start(cfg: LiveConfig) -> Result<Served, LiveError> {
    let port = |i: u16| if cfg.port == 0 { 0 } else { cfg.port.saturating_add(i) };
    let control_l = bind(port(0), "the control API").await?;
    let mut listeners = Vec::with_capacity(Fake::ALL.len());
    for (i, f) in Fake::ALL.into_iter().enumerate() {
        listeners.push(bind(port(i as u16 + 1), f.name()).await?);
    }
    let addrs: Vec<SocketAddr> = listeners.iter().map(|l| l.local_addr().expect("bound")).collect();
    assert!(cfg.sender_slots <= MAX_SENDER_SLOTS, "at most {MAX_SENDER_SLOTS} sender slots");
    let mut slot_listeners = Vec::with_capacity(usize::from(cfg.sender_slots));
    for _ in 0..cfg.sender_slots {
        let mut ls = Vec::with_capacity(Fake::ALL.len());
        for f in Fake::ALL {
            ls.push(bind(0, f.name()).await?);
        }
        slot_listeners.push(ls);
    }
    let slot_addrs: Vec<Vec<SocketAddr>> =
        slot_listeners.iter().map(|ls| ls.iter().map(|l| l.local_addr().expect("bound")).collect()).collect();
    let shared = Arc::new(Shared {
        start: Instant::now(),
        script: script::Script::new(cfg.seed),
        payment: Mutex::new(payment::PaymentState::new(&cfg)),
        email: Mutex::new(email::EmailState::new(&cfg)),
        models: model::KINDS.map(|k| Mutex::new(model::ModelState::new(k))),
        vector: vector::Actor::spawn(),
        toxics: Mutex::new(toxics::Table::new(cfg.seed)),
        toxics_changed: Notify::new(),
        attempts: Mutex::new(Attempts::default()),
        held: Default::default(),
        addrs,
        slot_addrs,
        killpoints: killpoint::Table::default(),
        finals: Mutex::new(rustc_hash::FxHashMap::default()),
        net: net::Network::new(cfg.seed),
        requests: Mutex::new(Vec::new()),
        next_id: AtomicU64::new(1),
        cfg,
    });
    let (stop, stopped) = watch::channel(false);
    let mut tasks = Vec::with_capacity(listeners.len() + 1);
    let control = control_l.local_addr().expect("bound");
    tasks.push(tokio::spawn(http::serve(control_l, control::router(shared.clone()), stopped.clone(), None)));
    let mut apps = Vec::with_capacity(Fake::ALL.len());
    for (f, l) in Fake::ALL.into_iter().zip(listeners) {
        let app = match f {
            Fake::Payment => payment::router(),
            Fake::Email => email::router(),
            Fake::Anthropic => model::anthropic_router(),
            Fake::Openai | Fake::Local => model::openai_router(),
            Fake::VectorA | Fake::VectorB => vector::router(),
        };
        let app = http::with_middleware(app, shared.clone(), f);
        tasks.push(tokio::spawn(http::serve(l, app.clone(), stopped.clone(), None)));
        apps.push(app);
    }
    for (slot, ls) in slot_listeners.into_iter().enumerate() {
        let slot = u16::try_from(slot).expect("at most MAX_SENDER_SLOTS");
        for (app, l) in apps.iter().zip(ls) {
            tasks.push(tokio::spawn(http::serve(l, app.clone(), stopped.clone(), Some(slot))));
        }
    }
    Ok(Served { shared, control, stop, tasks })
}

async fn bind(port: u16, what: &'static str) -> Result<tokio::net::TcpListener, LiveError> {
    tokio::net::TcpListener::bind(("127.0.0.1", port)).await.map_err(|source| LiveError::Bind { port, what, source })
}
