//! The harness's TCP proxies (Toxiproxy-style): every connection between two
//! components of a live drill crosses one, so partitions, region loss and
//! network toxics are cuts and delays on real sockets.
//!
//! A [`Network`] holds **links**. A link is one loopback listener that
//! forwards each accepted connection to an upstream address, with the two
//! [`Endpoint`]s it joins (component, replica, region). Entry points:
//!
//! - [`Network::add_link`]: binds `127.0.0.1:0` for `from → to` and returns
//!   the address to hand to `from` instead of `to`'s;
//! - [`Network::set_upstream`]: switches where a component's links forward
//!   (the stable database address after a failover): new connections go to
//!   the new address, open ones keep the old one until they close or are cut;
//! - [`Network::partition`] (two regions), [`Network::isolate`] (a region
//!   from everything outside it), [`Network::cut`] (any two [`Selector`]s),
//!   each returning a [`CutId`] for [`Network::heal`]; [`Network::heal_all`];
//! - [`Network::add_toxic`] / [`Network::remove_toxic`] per link and
//!   [`Network::add_toxic_where`] on every link between two selectors
//!   ([`toxic`]: latency, loss, reset, blackhole, bandwidth);
//! - [`Network::links`] (what the control API lists), [`Network::reset`],
//!   [`Network::shutdown`].
//!
//! A cut link passes nothing either way (a blackhole both ways): a new
//! connection is accepted and waits before its upstream connection is even
//! opened (the SYN would not get through), open ones stall; when the cut
//! heals the bytes flow again, as TCP retransmits after a partition. A
//! program sees what it would see of a real partition: timeouts, not
//! refusals. Randomness (toxicity, jitter) is seeded from the network's
//! seed, the link's name and the toxic's name.
//!
//! Resources are bounded: per connection and direction at most
//! [`PIPE_BYTES`] bytes wait in the proxy (then TCP back-pressure), plus the
//! one chunk being read; every connection task belongs to its link's accept
//! loop and ends with it ([`Network::shutdown`], or the network dropped).
//! The bound is in bytes, not chunks: a latency toxic holds every chunk for
//! its delay, and a count of chunks would cap a chatty connection (many small
//! writes, as PostgreSQL's replication stream) at that many chunks per delay,
//! adding a queueing delay of its own on top of the toxic's.

mod conn;
pub mod toxic;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use serde_json::Value;
use tokio::sync::watch;

use super::lock;
pub use toxic::{Dir, Stream, TcpToxic, TcpToxicError, TcpToxicKind};

/// Bytes read per chunk.
pub const CHUNK_BYTES: usize = 16 * 1024;
/// Bytes buffered per connection and direction (toxics hold them).
pub const PIPE_BYTES: usize = 8 * CHUNK_BYTES;
/// Most time an upstream connect may take before the client is reset, in ms.
pub const CONNECT_TIMEOUT_MS: u64 = 5_000;
/// Most links one network holds.
pub const MAX_LINKS: usize = 1_024;

/// One side of a link: a component (a process replica, a fake, the
/// database, the client), and the region it runs in (`None`: outside every
/// region, as the SaaS APIs are).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Endpoint {
    /// Process, fake or service name (`worker`, `payment`, `postgres`, `client`).
    pub component: String,
    /// Replica of a process (None: the component has one instance).
    pub replica: Option<u16>,
    /// Region (`a`, `b`), or None outside every region.
    pub region: Option<String>,
}

impl Endpoint {
    /// Replica `replica` of process `name` in `region`.
    pub fn replica(name: &str, replica: u16, region: &str) -> Endpoint {
        Endpoint { component: name.into(), replica: Some(replica), region: Some(region.into()) }
    }

    /// A single-instance component in `region` (None: outside every region).
    pub fn component(name: &str, region: Option<&str>) -> Endpoint {
        Endpoint { component: name.into(), replica: None, region: region.map(str::to_owned) }
    }

    /// `name` or `name-<replica>`: how the endpoint appears in link names.
    pub fn label(&self) -> String {
        match self.replica {
            Some(r) => format!("{}-{r}", self.component),
            None => self.component.clone(),
        }
    }
}

/// Which endpoints a cut or a toxic names.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum Selector {
    /// Every endpoint (`*`).
    Any,
    /// Every endpoint in a region (`region:a`).
    Region(String),
    /// Every replica of a component (`worker`).
    Component(String),
    /// One replica (`worker/1`).
    Replica(String, u16),
}

impl Selector {
    /// Reads `*`, `region:NAME`, `NAME/REPLICA` or `NAME`.
    pub fn parse(s: &str) -> Selector {
        if s == "*" {
            return Selector::Any;
        }
        if let Some(r) = s.strip_prefix("region:") {
            return Selector::Region(r.to_owned());
        }
        if let Some((n, r)) = s.rsplit_once('/')
            && let Ok(r) = r.parse()
        {
            return Selector::Replica(n.to_owned(), r);
        }
        Selector::Component(s.to_owned())
    }

    /// Whether `e` is one of the endpoints named.
    pub fn matches(&self, e: &Endpoint) -> bool {
        match self {
            Selector::Any => true,
            Selector::Region(r) => e.region.as_deref() == Some(r),
            Selector::Component(c) => &e.component == c,
            Selector::Replica(c, r) => &e.component == c && e.replica == Some(*r),
        }
    }
}

/// A cut in force.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum Rule {
    /// Every link between an endpoint of one side and one of the other.
    Between(Selector, Selector),
    /// Every link with exactly one endpoint in the region.
    Isolate(String),
}

impl Rule {
    fn cuts(&self, from: &Endpoint, to: &Endpoint) -> bool {
        match self {
            Rule::Between(a, b) => (a.matches(from) && b.matches(to)) || (b.matches(from) && a.matches(to)),
            Rule::Isolate(r) => {
                let inside = |e: &Endpoint| e.region.as_deref() == Some(r);
                inside(from) != inside(to)
            }
        }
    }
}

/// A cut, to heal later.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct CutId(pub u64);

/// Errors of the network.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The listener could not be bound.
    #[error("cannot listen on 127.0.0.1 for link `{link}`: {source}; free some ports or file descriptors")]
    Bind {
        /// Link.
        link: String,
        /// Cause.
        source: std::io::Error,
    },
    /// No such link.
    #[error("no link called `{0}`; GET /proxies lists them")]
    NoLink(String),
    /// The link exists already.
    #[error("a link called `{0}` exists already; each (from, to) pair has one link")]
    Exists(String),
    /// Too many links.
    #[error("at most {MAX_LINKS} links in one network")]
    Full,
    /// A bad toxic.
    #[error(transparent)]
    Toxic(#[from] TcpToxicError),
}

/// One link: a listener forwarding to a switchable upstream.
#[derive(Debug)]
pub(crate) struct Link {
    name: String,
    from: Endpoint,
    to: Mutex<Endpoint>,
    listen: SocketAddr,
    upstream: Mutex<SocketAddr>,
    cut: AtomicBool,
    toxics: Mutex<Vec<toxic::Installed>>,
    /// Bumped on every change a connection must look at (toxics, cuts).
    changed: watch::Sender<u64>,
    accepted: AtomicU64,
    open: AtomicU64,
    /// Bumped by [`Network::move_link`]: connections opened before end.
    generation: AtomicU64,
    /// Bytes forwarded: [up, down].
    bytes: [AtomicU64; 2],
}

impl Link {
    fn bump(&self) {
        self.changed.send_modify(|g| *g = g.wrapping_add(1));
    }
}

/// A link as the control API shows it (Toxiproxy's proxy resource, plus the
/// endpoints and counters).
#[derive(Clone, Debug, Serialize)]
pub struct LinkInfo {
    /// Name (`<from>-to-<to>`).
    pub name: String,
    /// The listening address handed to `from`.
    pub listen: String,
    /// Where connections go now.
    pub upstream: String,
    /// False while a cut is in force on it.
    pub enabled: bool,
    /// Where connections come from.
    pub from: Endpoint,
    /// What they reach.
    pub to: Endpoint,
    /// Toxics, in Toxiproxy's shape.
    pub toxics: Vec<Value>,
    /// Connections accepted so far.
    pub connections: u64,
    /// Connections open now.
    pub open: u64,
    /// Bytes forwarded client → upstream.
    pub bytes_up: u64,
    /// Bytes forwarded upstream → client.
    pub bytes_down: u64,
}

#[derive(Debug)]
struct Inner {
    seed: u64,
    next_id: AtomicU64,
    links: Mutex<Vec<Arc<Link>>>,
    rules: Mutex<Vec<(CutId, Rule)>>,
    stop: watch::Sender<bool>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

/// The proxies of one live drill (or one served instance). Cheap to clone.
#[derive(Clone, Debug)]
pub struct Network {
    inner: Arc<Inner>,
}

impl Network {
    /// An empty network whose randomness derives from `seed`.
    pub fn new(seed: u64) -> Network {
        let (stop, _) = watch::channel(false);
        Network {
            inner: Arc::new(Inner {
                seed,
                next_id: AtomicU64::new(1),
                links: Mutex::new(Vec::new()),
                rules: Mutex::new(Vec::new()),
                stop,
                tasks: Mutex::new(Vec::new()),
            }),
        }
    }

    /// Binds a loopback listener for connections from `from` to `to` and
    /// forwards them to `upstream`. Returns the address `from` must use.
    /// The link is named `<from label>-to-<to label>`. Must run inside a
    /// tokio runtime.
    pub async fn add_link(&self, from: Endpoint, to: Endpoint, upstream: SocketAddr) -> Result<SocketAddr, NetError> {
        let name = format!("{}-to-{}", from.label(), to.label());
        if self.find(&name).is_some() {
            return Err(NetError::Exists(name));
        }
        if lock(&self.inner.links).len() >= MAX_LINKS {
            return Err(NetError::Full);
        }
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .map_err(|source| NetError::Bind { link: name.clone(), source })?;
        let listen = listener.local_addr().map_err(|source| NetError::Bind { link: name.clone(), source })?;
        let (changed, _) = watch::channel(0);
        let link = Arc::new(Link {
            name: name.clone(),
            from,
            to: Mutex::new(to),
            listen,
            upstream: Mutex::new(upstream),
            cut: AtomicBool::new(false),
            toxics: Mutex::new(Vec::new()),
            changed,
            accepted: AtomicU64::new(0),
            open: AtomicU64::new(0),
            generation: AtomicU64::new(0),
            bytes: [AtomicU64::new(0), AtomicU64::new(0)],
        });
        {
            let mut links = lock(&self.inner.links);
            if links.iter().any(|l| l.name == name) {
                return Err(NetError::Exists(name));
            }
            links.push(link.clone());
        }
        self.apply_rules();
        let task = tokio::spawn(conn::accept_loop(link, listener, self.inner.stop.subscribe()));
        lock(&self.inner.tasks).push(task);
        tracing::debug!(link = %name, %listen, %upstream, "link up");
        Ok(listen)
    }

    fn find(&self, name: &str) -> Option<Arc<Link>> {
        lock(&self.inner.links).iter().find(|l| l.name == name).cloned()
    }

    /// The listening address of link `name`.
    pub fn listen_addr(&self, name: &str) -> Option<SocketAddr> {
        self.find(name).map(|l| l.listen)
    }

    /// Switches every link to `component` to `upstream` (now in `region`):
    /// new connections go there, open ones stay where they are until they
    /// close or are cut. Returns how many links were switched.
    pub fn set_upstream(&self, component: &str, upstream: SocketAddr, region: Option<&str>) -> usize {
        let mut n = 0;
        for l in lock(&self.inner.links).iter() {
            let mut to = lock(&l.to);
            if to.component == component {
                *lock(&l.upstream) = upstream;
                to.region = region.map(str::to_owned);
                n += 1;
            }
        }
        self.apply_rules();
        tracing::info!(component, %upstream, links = n, "upstream switched");
        n
    }

    /// Switches one link's upstream (see [`Network::set_upstream`]).
    pub fn set_link_upstream(&self, link: &str, upstream: SocketAddr) -> Result<(), NetError> {
        let l = self.find(link).ok_or_else(|| NetError::NoLink(link.into()))?;
        *lock(&l.upstream) = upstream;
        Ok(())
    }

    /// Moves one link to `upstream`, now in `region` (cuts in force are
    /// applied to the moved endpoint), as a DNS switch a client sees: its
    /// open connections are closed (FIN both ways), and it reconnects to the
    /// new upstream. (An open connection to the old address may be one the
    /// kernel accepted on a listener nobody serves: it would hang.)
    pub fn move_link(&self, link: &str, upstream: SocketAddr, region: Option<&str>) -> Result<(), NetError> {
        let l = self.find(link).ok_or_else(|| NetError::NoLink(link.into()))?;
        *lock(&l.upstream) = upstream;
        lock(&l.to).region = region.map(str::to_owned);
        l.generation.fetch_add(1, Ordering::SeqCst);
        l.bump();
        self.apply_rules();
        tracing::info!(link, %upstream, ?region, "link moved");
        Ok(())
    }

    fn add_rule(&self, rule: Rule) -> CutId {
        let id = CutId(self.inner.next_id.fetch_add(1, Ordering::Relaxed));
        tracing::info!(?rule, cut = id.0, "network cut");
        lock(&self.inner.rules).push((id, rule));
        self.apply_rules();
        id
    }

    /// Cuts every link between region `a` and region `b`.
    pub fn partition(&self, a: &str, b: &str) -> CutId {
        self.add_rule(Rule::Between(Selector::Region(a.into()), Selector::Region(b.into())))
    }

    /// Cuts `region` from everything outside it (other regions, the SaaS
    /// APIs, the client); links inside it stay.
    pub fn isolate(&self, region: &str) -> CutId {
        self.add_rule(Rule::Isolate(region.into()))
    }

    /// Cuts every link between an endpoint `a` names and one `b` names.
    pub fn cut(&self, a: Selector, b: Selector) -> CutId {
        self.add_rule(Rule::Between(a, b))
    }

    /// Lifts one cut (others in force stay).
    pub fn heal(&self, id: CutId) {
        lock(&self.inner.rules).retain(|(i, _)| *i != id);
        tracing::info!(cut = id.0, "network healed");
        self.apply_rules();
    }

    /// Lifts every cut.
    pub fn heal_all(&self) {
        lock(&self.inner.rules).clear();
        self.apply_rules();
    }

    /// The cuts in force.
    pub fn cuts(&self) -> Vec<(CutId, Rule)> {
        lock(&self.inner.rules).clone()
    }

    fn apply_rules(&self) {
        let rules = lock(&self.inner.rules).clone();
        for l in lock(&self.inner.links).iter() {
            let to = lock(&l.to).clone();
            let cut = rules.iter().any(|(_, r)| r.cuts(&l.from, &to));
            if l.cut.swap(cut, Ordering::SeqCst) != cut {
                tracing::debug!(link = %l.name, cut, "link state");
                l.bump();
            }
        }
    }

    /// Adds a toxic to link `link`.
    pub fn add_toxic(&self, link: &str, toxic: TcpToxic) -> Result<(), NetError> {
        let l = self.find(link).ok_or_else(|| NetError::NoLink(link.into()))?;
        self.install(&l, toxic)
    }

    fn install(&self, l: &Link, toxic: TcpToxic) -> Result<(), NetError> {
        toxic.validate()?;
        {
            let mut ts = lock(&l.toxics);
            if ts.iter().any(|t| t.toxic.name == toxic.name) {
                return Err(TcpToxicError::Exists(toxic.name).into());
            }
            if ts.len() >= toxic::MAX_LINK_TOXICS {
                return Err(TcpToxicError::Full.into());
            }
            let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
            tracing::info!(link = %l.name, toxic = %toxic.name, kind = toxic.kind.name(), "toxic added");
            ts.push(toxic::Installed::new(id, toxic, self.inner.seed, &l.name));
        }
        l.bump();
        Ok(())
    }

    /// Adds `toxic` to every link between an endpoint `a` names and one `b`
    /// names (either way round). Returns the links it went on.
    pub fn add_toxic_where(&self, a: &Selector, b: &Selector, toxic: &TcpToxic) -> Result<Vec<String>, NetError> {
        toxic.validate()?;
        let links: Vec<Arc<Link>> = lock(&self.inner.links).clone();
        let mut names = Vec::new();
        for l in links {
            let to = lock(&l.to).clone();
            if Rule::Between(a.clone(), b.clone()).cuts(&l.from, &to) {
                self.install(&l, toxic.clone())?;
                names.push(l.name.clone());
            }
        }
        Ok(names)
    }

    /// Removes toxic `name` from link `link`; false when there is none.
    pub fn remove_toxic(&self, link: &str, name: &str) -> Result<bool, NetError> {
        let l = self.find(link).ok_or_else(|| NetError::NoLink(link.into()))?;
        let removed = {
            let mut ts = lock(&l.toxics);
            let before = ts.len();
            ts.retain(|t| t.toxic.name != name);
            ts.len() != before
        };
        if removed {
            tracing::info!(link, toxic = name, "toxic removed");
            l.bump();
        }
        Ok(removed)
    }

    /// Removes toxic `name` from every link. Returns how many had it.
    pub fn remove_toxic_everywhere(&self, name: &str) -> usize {
        let links: Vec<String> = lock(&self.inner.links).iter().map(|l| l.name.clone()).collect();
        links.iter().filter(|l| self.remove_toxic(l, name).unwrap_or(false)).count()
    }

    /// Every link, in the order they were added.
    pub fn links(&self) -> Vec<LinkInfo> {
        lock(&self.inner.links).iter().map(|l| info(l)).collect()
    }

    /// Link `name`.
    pub fn link(&self, name: &str) -> Option<LinkInfo> {
        self.find(name).map(|l| info(&l))
    }

    /// No toxics, no cuts (links and their upstreams stay).
    pub fn reset(&self) {
        lock(&self.inner.rules).clear();
        for l in lock(&self.inner.links).iter() {
            lock(&l.toxics).clear();
            l.bump();
        }
        self.apply_rules();
    }

    /// Stops every listener and closes every proxied connection; waits for
    /// their tasks.
    pub async fn shutdown(&self) {
        self.inner.stop.send_replace(true);
        let tasks: Vec<_> = lock(&self.inner.tasks).drain(..).collect();
        for t in tasks {
            let _ = t.await;
        }
    }
}

fn info(l: &Link) -> LinkInfo {
    LinkInfo {
        name: l.name.clone(),
        listen: l.listen.to_string(),
        upstream: lock(&l.upstream).to_string(),
        enabled: !l.cut.load(Ordering::SeqCst),
        from: l.from.clone(),
        to: lock(&l.to).clone(),
        toxics: lock(&l.toxics).iter().map(|t| t.toxic.to_json()).collect(),
        connections: l.accepted.load(Ordering::Relaxed),
        open: l.open.load(Ordering::Relaxed),
        bytes_up: l.bytes[0].load(Ordering::Relaxed),
        bytes_down: l.bytes[1].load(Ordering::Relaxed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(c: &str, r: Option<&str>) -> Endpoint {
        Endpoint::component(c, r)
    }

    #[test]
    fn rules_cut_the_links_they_name() {
        let w0 = Endpoint::replica("worker", 0, "a");
        let w1 = Endpoint::replica("worker", 1, "b");
        let orch = ep("orchestrator", Some("a"));
        let pay = ep("payment", None);
        let part = Rule::Between(Selector::Region("a".into()), Selector::Region("b".into()));
        assert!(part.cuts(&w1, &orch) && part.cuts(&orch, &w1));
        assert!(!part.cuts(&w0, &orch) && !part.cuts(&w1, &pay));
        let iso = Rule::Isolate("a".into());
        assert!(iso.cuts(&w0, &pay) && iso.cuts(&w1, &orch) && !iso.cuts(&w0, &orch));
        let one = Rule::Between(Selector::parse("worker/1"), Selector::parse("payment"));
        assert!(one.cuts(&w1, &pay) && !one.cuts(&w0, &pay));
        assert_eq!(Selector::parse("region:b"), Selector::Region("b".into()));
        assert_eq!(Selector::parse("*"), Selector::Any);
        assert_eq!(w1.label(), "worker-1");
    }
}
