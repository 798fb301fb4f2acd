//! Live region loss: the PostgreSQL pair behind harness links, and the
//! harness's failover controller.
//!
//! The controller is the simulator's own
//! [`Controller`] (one implementation
//! of detect → promote → DNS switch after the TTL → scale-up → open) behind a
//! live `Env` in the harness; its messages become real actions:
//!
//! | the controller sends | the harness does |
//! |---|---|
//! | `Ping` to the primary | `SELECT 1` through region `a`'s health link, within the timeout; `Pong` if it answers |
//! | `Promote` to the standby | `pg_promote()` on the standby; `PromoteAck` once it accepts writes |
//! | `Demote` to the primary | fences the old primary (SIGKILL, `FENCED` mark: never a second primary) |
//! | `Hydrate` / `Open` | answered at once (live drills have no vector hydration yet) |
//! | note `RoutingEffective` (the TTL after the switch request) | the stable database address and every taken-over process's stable address switched to region `b` |
//! | request `ScaleUp` | the standby processes started |
//!
//! Links, all in the drill's [`Network`] (`live::net`, the one harness TCP
//! proxy), each wrapped in a [`NetLink`]: `stable-to-postgres` (the stable
//! `DATABASE_URL`: the processes dial it directly, one hop, and it is moved
//! to region `b` at the switch), `postgres-standby-to-postgres-primary` (the
//! standby's replication stream: a lag is a latency toxic there, and a cut
//! between the regions cuts it), `failover-to-postgres-primary` (the
//! controller's health checks of region `a`), and `stable-to-<process>` for
//! each process a standby takes over. At the region loss every link to the
//! primary is cut (a blackhole both ways: the standby's stream and the health
//! checks stall, as across a real partition).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{mpsc, watch};

use super::net::{CutId, Endpoint, NetError, Network, Selector, Stream, TcpToxic, TcpToxicKind};
use super::pg::{self, Cluster, PgError, PgNode, PgOptions, Replication};
use super::scenario::{DatabaseSpec, DbReplication};
use super::stack::env::LiveEnv;
use crate::components::env::{Env, Note, Phase, Service, Timer};
use crate::components::ids::{HostId, JobId, Micros};
use crate::components::region::{Controller, FailoverConfig, Request};
use crate::components::wire::Msg;

/// The controller's host id in its live env.
const CONTROLLER: HostId = HostId(1);
/// The primary region's orchestrator/database, as the controller names it.
const PRIMARY: HostId = HostId(2);
/// The standby's orchestrator/database.
const STANDBY: HostId = HostId(3);
/// The standby's vector store.
const STANDBY_VECTOR: HostId = HostId(4);

/// The component name of region `a`'s primary in the network.
pub const PRIMARY_COMPONENT: &str = "postgres-primary";
/// The component name of the serving database behind the stable address.
pub const SERVING_COMPONENT: &str = "postgres";
/// The name of the latency toxic a replication lag installs.
const LAG_TOXIC: &str = "replication-lag";

/// One harness link of the failover: a link of the drill's [`Network`],
/// named, with the address its clients dial.
#[derive(Clone, Debug)]
pub struct NetLink {
    net: Network,
    name: String,
    addr: SocketAddr,
}

impl NetLink {
    /// Adds the link `from → to` forwarding to `upstream` in `net`.
    pub async fn add(net: &Network, from: Endpoint, to: Endpoint, upstream: SocketAddr) -> Result<NetLink, NetError> {
        let name = format!("{}-to-{}", from.label(), to.label());
        let addr = net.add_link(from, to, upstream).await?;
        Ok(NetLink { net: net.clone(), name, addr })
    }

    /// A stable address for `component` (region `region`): the link
    /// `stable-to-<component>`, moved to the standby at the switch.
    pub async fn stable(
        net: &Network,
        component: &str,
        region: &str,
        upstream: SocketAddr,
    ) -> Result<NetLink, NetError> {
        let from = Endpoint::component("stable", None);
        NetLink::add(net, from, Endpoint::component(component, Some(region)), upstream).await
    }

    /// Where clients connect (`127.0.0.1:PORT`).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where new connections go now (`None` once the link is gone): what
    /// the stable address names, as a DNS answer would.
    pub fn upstream(&self) -> Option<String> {
        self.net.link(&self.name).map(|l| l.upstream)
    }

    /// The link's name in the network (`GET /proxies`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// New connections go to `to`, now in `region`; open ones are closed
    /// (the client reconnects to `to`, as after a DNS switch).
    pub fn switch(&self, to: SocketAddr, region: &str) {
        if let Err(e) = self.net.move_link(&self.name, to, Some(region)) {
            tracing::error!(error = %e, "switching a failover link");
        }
    }

    /// Holds every chunk `ms` more each way (open and new connections);
    /// 0 removes the delay.
    pub fn set_latency_ms(&self, ms: u64) {
        let _ = self.net.remove_toxic(&self.name, LAG_TOXIC);
        if ms == 0 {
            return;
        }
        let toxic = TcpToxic {
            name: LAG_TOXIC.into(),
            kind: TcpToxicKind::Latency { latency_ms: ms, jitter_ms: 0 },
            stream: Stream::Both,
            toxicity: 1.0,
        };
        if let Err(e) = self.net.add_toxic(&self.name, toxic) {
            tracing::error!(error = %e, link = %self.name, "the replication lag toxic was refused");
        }
    }
}

/// The default cadence of a cold standby's base backups.
pub const DEFAULT_BACKUP_EVERY_MS: u64 = 2_000;

/// A cold standby's base backups: the latest one, taken periodically
/// through the replication link by a task of the pair.
struct Backups {
    opts: PgOptions,
    latest: Mutex<Option<pg::BaseBackup>>,
    /// No backup is kept once region `a` is lost (one finishing late would
    /// not be what region `b` had at the fault).
    frozen: AtomicBool,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Where backups are taken from (the replication link).
    upstream: SocketAddr,
    /// The period.
    every_ms: u64,
}

/// The drill's PostgreSQL pair and its links.
pub struct DbPair {
    /// Region `a`'s primary (killed at the loss, fenced after the promotion).
    pub primary: tokio::sync::Mutex<PgNode>,
    /// Region `b`'s node: the hot standby from the start, or a cold
    /// standby's node restored from the latest base backup at the promotion.
    standby: tokio::sync::OnceCell<PgNode>,
    /// A cold standby's backups (`replication = "base_backup"`).
    backups: Option<Arc<Backups>>,
    /// The stable address the processes use as `DATABASE_URL`.
    pub stable: NetLink,
    /// The standby's replication stream from the primary.
    pub replication: NetLink,
    /// The controller's health checks of region `a`.
    pub health_a: NetLink,
    /// How commits wait for the standby.
    pub mode: Replication,
    net: Network,
    primary_addr: SocketAddr,
    /// The cut of region `a`'s primary while the region is lost.
    lost: Mutex<Option<CutId>>,
    promoting: tokio::sync::Mutex<()>,
    promoted: AtomicBool,
}

fn link_error(e: NetError) -> PgError {
    PgError::Invalid(format!("cannot start a failover link: {e}"))
}

impl DbPair {
    /// Starts the primary (`opts`, region `a`), its links in `net`, and the
    /// standby (node `standby`, region `b`) streaming through the
    /// replication link; `spec.replication_latency` is set on that link once
    /// the standby is up.
    pub async fn start(opts: &PgOptions, spec: &DatabaseSpec, net: &Network) -> Result<DbPair, PgError> {
        let primary = Cluster::start_primary(opts).await?;
        let to_primary = Endpoint::component(PRIMARY_COMPONENT, Some("a"));
        let standby_end = Endpoint::component("postgres-standby", Some("b"));
        let replication =
            NetLink::add(net, standby_end, to_primary.clone(), primary.addr()).await.map_err(link_error)?;
        let (mode, standby, backups) = match spec.replication {
            DbReplication::BaseBackup => {
                let every_ms = spec.backup_every.map_or(DEFAULT_BACKUP_EVERY_MS, |d| d.ms());
                let b = start_backups(opts, replication.addr(), every_ms).await?;
                (Replication::Asynchronous, tokio::sync::OnceCell::new(), Some(b))
            }
            r => {
                let mode = if r == DbReplication::Sync { Replication::Synchronous } else { Replication::Asynchronous };
                let node =
                    Cluster::start_standby(&opts.named("standby", "b"), &primary, replication.addr(), mode).await?;
                (mode, tokio::sync::OnceCell::new_with(Some(node)), None)
            }
        };
        if let Some(l) = spec.replication_latency {
            replication.set_latency_ms(l.ms());
        }
        let stable = NetLink::stable(net, SERVING_COMPONENT, "a", primary.addr()).await.map_err(link_error)?;
        let controller = Endpoint::component("failover", None);
        let health_a = NetLink::add(net, controller, to_primary, primary.addr()).await.map_err(link_error)?;
        Ok(DbPair {
            primary_addr: primary.addr(),
            primary: tokio::sync::Mutex::new(primary),
            standby,
            backups,
            stable,
            replication,
            health_a,
            mode,
            net: net.clone(),
            lost: Mutex::new(None),
            promoting: tokio::sync::Mutex::new(()),
            promoted: AtomicBool::new(false),
        })
    }

    /// The stable `DATABASE_URL`.
    pub fn url(&self) -> String {
        pg::url_for(self.stable.addr())
    }

    /// The serving node's own URL (the standby once promoted, else the
    /// primary), for the harness's reads after the network is shut down.
    pub fn direct_url(&self) -> String {
        match self.standby() {
            Some(s) if self.promoted.load(Ordering::SeqCst) => s.url(),
            _ => pg::url_for(self.primary_addr),
        }
    }

    /// Region `b`'s node: the hot standby, or a cold standby's restored
    /// node once the failover started it (None before).
    pub fn standby(&self) -> Option<&PgNode> {
        self.standby.get()
    }

    /// Whether region `b` is a cold standby (base backups, nothing running).
    pub fn is_cold(&self) -> bool {
        self.backups.is_some()
    }

    /// Region `a` lost: every link to the primary cut, the primary SIGKILLed.
    pub async fn lose_region_a(&self) {
        if let Some(b) = &self.backups {
            b.frozen.store(true, Ordering::SeqCst);
        }
        let cut = self.net.cut(Selector::Component(PRIMARY_COMPONENT.into()), Selector::Any);
        if let Some(old) = super::lock(&self.lost).replace(cut) {
            self.net.heal(old);
        }
        if let Err(e) = self.primary.lock().await.kill() {
            tracing::error!(error = %e, "killing the primary at the region loss");
        }
    }

    /// Region `a` back: its links mended (the old primary stays down: it was
    /// killed, and is fenced once the standby is promoted).
    pub fn region_a_back(&self) {
        if let Some(cut) = super::lock(&self.lost).take() {
            self.net.heal(cut);
        }
    }

    /// Promotes the standby once (a resent `Promote` is acknowledged
    /// again); a cold standby's node is first started from the latest base
    /// backup.
    pub async fn promote_once(&self) -> Result<(), PgError> {
        let _one = self.promoting.lock().await;
        if self.promoted.load(Ordering::SeqCst) {
            return Ok(());
        }
        match &self.backups {
            Some(b) => {
                if self.standby.get().is_none() {
                    let latest = super::lock(&b.latest).clone();
                    let latest = latest.ok_or_else(|| PgError::Invalid("no base backup reached region b".into()))?;
                    tracing::info!(backup = latest.no, "restoring region b's database from its latest base backup");
                    let node = Cluster::start_restored(&b.opts.named("standby", "b"), &latest).await?;
                    let _ = self.standby.set(node);
                }
            }
            None => {
                let node = self.standby.get().expect("a hot standby starts with the pair");
                node.promote().await?;
            }
        }
        self.promoted.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Whether the standby was promoted.
    pub async fn is_promoted(&self) -> bool {
        self.promoted.load(Ordering::SeqCst)
    }

    /// One health check of region `a`'s primary: `SELECT 1` through the
    /// health link within `timeout_ms`.
    pub async fn primary_answers(&self, timeout_ms: u64) -> bool {
        let url = pg::url_for(self.health_a.addr());
        let check = async {
            let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.ok()?;
            let h = tokio::spawn(conn);
            let ok = client.simple_query("SELECT 1").await.is_ok();
            drop(client);
            h.abort();
            Some(ok)
        };
        matches!(tokio::time::timeout(Duration::from_millis(timeout_ms), check).await, Ok(Some(true)))
    }
}

impl Drop for DbPair {
    fn drop(&mut self) {
        if let Some(b) = &self.backups
            && let Some(t) = super::lock(&b.task).take()
        {
            t.abort();
        }
    }
}

/// Takes a first base backup now (a cold standby always has one); the
/// periodic ones start with [`DbPair::start_backup_schedule`].
async fn start_backups(opts: &PgOptions, upstream: SocketAddr, every_ms: u64) -> Result<Arc<Backups>, PgError> {
    let first = Cluster::base_backup(&opts.named("backups", "b"), upstream, 1).await?;
    Ok(Arc::new(Backups {
        opts: opts.clone(),
        latest: Mutex::new(Some(first)),
        frozen: AtomicBool::new(false),
        task: Mutex::new(None),
        upstream,
        every_ms,
    }))
}

impl DbPair {
    /// A cold standby's periodic base backups start now (the drill's
    /// start: one every `backup_every` from it, as the simulator ships a
    /// cold standby's state every interval from its start, whatever the
    /// set-up before took), each replacing the previous one. Once only;
    /// nothing for a hot standby.
    pub fn start_backup_schedule(&self) {
        let Some(b) = &self.backups else { return };
        let mut task = super::lock(&b.task);
        if task.is_some() {
            return;
        }
        let (bt, held) = (b.clone(), b.opts.named("backups", "b"));
        *task = Some(tokio::spawn(async move {
            let start = tokio::time::Instant::now();
            for no in 2u32.. {
                let due = start + Duration::from_millis(bt.every_ms * u64::from(no - 1));
                tokio::time::sleep_until(due).await;
                if bt.frozen.load(Ordering::SeqCst) {
                    return;
                }
                let began = std::time::Instant::now();
                let taken = Cluster::base_backup(&held, bt.upstream, no).await;
                tracing::info!(
                    no,
                    late_ms = began.duration_since(due.into_std()).as_millis() as u64,
                    took_ms = began.elapsed().as_millis() as u64,
                    ok = taken.is_ok(),
                    "base backup taken"
                );
                match taken {
                    Ok(next) if !bt.frozen.load(Ordering::SeqCst) => {
                        let old = super::lock(&bt.latest).replace(next);
                        if let Some(old) = old.and_then(|o| o.data.parent().map(std::path::Path::to_path_buf)) {
                            let _ = std::fs::remove_dir_all(old);
                        }
                    }
                    Ok(_) => return,
                    Err(e) => tracing::warn!(error = %e, no, "a base backup failed (the previous one is kept)"),
                }
            }
        }));
    }
}

/// When each stage of a failover happened, on the fakes' clock (µs).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Timeline {
    /// The controller declared region `a` down.
    pub detected_us: Option<Micros>,
    /// The standby acknowledged its promotion (`pg_promote()` returned).
    pub promoted_us: Option<Micros>,
    /// The stable addresses switched (the TTL after the switch request).
    pub routed_us: Option<Micros>,
    /// The standby processes were started (scale-up).
    pub scaled_up_us: Option<Micros>,
    /// The old primary was fenced.
    pub fenced_us: Option<Micros>,
    /// Failovers called off (the primary answered again first).
    pub cancelled: u32,
}

/// What the controller drives.
pub struct Targets {
    /// The database pair.
    pub db: Arc<DbPair>,
    /// Stable service addresses and where they go (in region `b`) after the TTL.
    pub services: Vec<(NetLink, SocketAddr)>,
    /// Starts the standby processes (the supervisor's slots).
    pub scale_up: Box<dyn Fn() + Send + Sync>,
    /// The fakes' clock, µs.
    pub clock: Arc<dyn Fn() -> Micros + Send + Sync>,
}

/// The controller's env: the live one, with the timeline notes kept for the
/// harness instead of printed.
struct CtlEnv {
    inner: LiveEnv,
    notes: Vec<Note>,
}

impl Env for CtlEnv {
    fn now_us(&self) -> Micros {
        self.inner.now_us()
    }
    fn me(&self) -> HostId {
        self.inner.me()
    }
    fn send(&mut self, to: HostId, msg: Msg) {
        self.inner.send(to, msg);
    }
    fn send_after(&mut self, delay_us: Micros, to: HostId, msg: Msg) {
        self.inner.send_after(delay_us, to, msg);
    }
    fn set_timer(&mut self, after_us: Micros, timer: Timer) {
        self.inner.set_timer(after_us, timer);
    }
    fn rng(&mut self) -> &mut rand_chacha::ChaCha8Rng {
        self.inner.rng()
    }
    fn resolve(&self, svc: Service) -> HostId {
        self.inner.resolve(svc)
    }
    fn note(&mut self, note: Note) {
        self.notes.push(note);
    }
    fn reach(&mut self, _host: HostId, _job: JobId, _step: u16, _phase: Phase) -> bool {
        false
    }
}

/// A running controller: its timeline, and a stop.
pub struct Running {
    /// The timeline so far.
    pub timeline: Arc<Mutex<Timeline>>,
    stop: watch::Sender<bool>,
    done: tokio::sync::oneshot::Receiver<()>,
}

impl Running {
    /// Stops the controller (health checks end, nothing more is switched).
    pub async fn stop(self) -> Timeline {
        let _ = self.stop.send(true);
        let _ = self.done.await;
        super::lock(&self.timeline).clone()
    }
}

/// What an action answers the controller with (wire messages stay on the
/// controller's thread: a `Msg` is not `Send`).
#[derive(Clone, Copy, Debug)]
enum Answer {
    Pong(u32),
    PromoteAck,
    Hydrated,
    Opened,
}

impl Answer {
    fn into_msg(self) -> (HostId, Msg) {
        match self {
            Answer::Pong(seq) => (PRIMARY, Msg::Pong { seq }),
            Answer::PromoteAck => (STANDBY, Msg::PromoteAck),
            Answer::Hydrated => (STANDBY_VECTOR, Msg::Hydrated),
            Answer::Opened => (STANDBY, Msg::Opened),
        }
    }
}

/// Starts the harness's failover controller with `cfg`, watching region
/// `a` from now on, on a thread of its own (its env holds wire messages,
/// which stay on one thread).
pub fn start(cfg: FailoverConfig, seed: u64, targets: Targets) -> std::io::Result<Running> {
    let timeline = Arc::new(Mutex::new(Timeline::default()));
    let (stop, stop_rx) = watch::channel(false);
    let (done_tx, done) = tokio::sync::oneshot::channel();
    let tl = timeline.clone();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    std::thread::Builder::new().name("agentdrill-failover".into()).spawn(move || {
        rt.block_on(run(cfg, seed, Arc::new(targets), tl, stop_rx));
        let _ = done_tx.send(());
    })?;
    Ok(Running { timeline, stop, done })
}

async fn run(
    cfg: FailoverConfig,
    seed: u64,
    t: Arc<Targets>,
    timeline: Arc<Mutex<Timeline>>,
    mut stop: watch::Receiver<bool>,
) {
    let (timer_tx, mut timer_rx) = mpsc::unbounded_channel::<Timer>();
    let (msg_tx, mut msg_rx) = mpsc::unbounded_channel::<Answer>();
    let mut env =
        CtlEnv { inner: LiveEnv::new(CONTROLLER, "failover-controller", seed, 0, timer_tx), notes: Vec::new() };
    let mut ctl = Controller::new(cfg, PRIMARY, STANDBY, STANDBY_VECTOR);
    ctl.start(&mut env);
    loop {
        tokio::select! {
            Some(timer) = timer_rx.recv() => ctl.on_timer(&mut env, timer),
            Some(answer) = msg_rx.recv() => {
                if matches!(answer, Answer::PromoteAck) {
                    super::lock(&timeline).promoted_us.get_or_insert((t.clock)());
                }
                let (from, msg) = answer.into_msg();
                ctl.on_msg(&mut env, from, msg);
            }
            _ = stop.changed() => return,
        }
        for (_to, msg) in std::mem::take(&mut env.inner.outbox) {
            act(&cfg, &t, &timeline, &msg_tx, msg);
        }
        for note in std::mem::take(&mut env.notes) {
            on_note(&t, &timeline, note);
        }
        for r in ctl.take_requests() {
            if r == Request::ScaleUp {
                super::lock(&timeline).scaled_up_us = Some((t.clock)());
                (t.scale_up)();
            }
        }
    }
}

/// A note of the controller's, turned into the timeline and the switch.
fn on_note(t: &Targets, timeline: &Mutex<Timeline>, note: Note) {
    let now = (t.clock)();
    let mut tl = super::lock(timeline);
    match note {
        Note::FailoverDetected => {
            tl.detected_us.get_or_insert(now);
        }
        Note::FailoverCancelled => tl.cancelled += 1,
        Note::RoutingEffective => {
            tl.routed_us = Some(now);
            match t.db.standby() {
                Some(s) => t.db.stable.switch(s.addr(), "b"),
                None => tracing::error!("the routing switched before region b's database was up"),
            }
            for (link, to) in &t.services {
                link.switch(*to, "b");
            }
        }
        _ => {}
    }
}

/// One message of the controller, carried out for real.
fn act(
    cfg: &FailoverConfig,
    t: &Arc<Targets>,
    timeline: &Arc<Mutex<Timeline>>,
    reply: &mpsc::UnboundedSender<Answer>,
    msg: Msg,
) {
    let (t, reply, timeline) = (t.clone(), reply.clone(), timeline.clone());
    let timeout_ms = cfg.health_timeout_ms;
    match msg {
        Msg::Ping { seq } => {
            tokio::spawn(async move {
                if t.db.primary_answers(timeout_ms).await {
                    let _ = reply.send(Answer::Pong(seq));
                }
            });
        }
        Msg::Promote => {
            tokio::spawn(async move {
                match t.db.promote_once().await {
                    Ok(()) => {
                        let _ = reply.send(Answer::PromoteAck);
                    }
                    Err(e) => tracing::error!(error = %e, "promoting the standby failed (the controller resends)"),
                }
            });
        }
        Msg::Demote => {
            tokio::spawn(async move {
                let mut p = t.db.primary.lock().await;
                if !p.is_fenced() {
                    match p.fence() {
                        Ok(()) => {
                            super::lock(&timeline).fenced_us = Some((t.clock)());
                        }
                        Err(e) => tracing::error!(error = %e, "fencing the old primary failed"),
                    }
                }
            });
        }
        Msg::Hydrate => {
            let _ = reply.send(Answer::Hydrated);
        }
        Msg::Open => {
            let _ = reply.send(Answer::Opened);
        }
        _ => {}
    }
}
