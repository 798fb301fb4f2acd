//! Toxics of the harness's TCP proxies, in Toxiproxy's resource shape
//! (`{"name", "type", "stream", "toxicity", "attributes": {…}}`).
//!
//! As in Toxiproxy, `toxicity` is the probability that a toxic applies to a
//! *connection* (not to a chunk): each connection draws once per toxic, from
//! the toxic's own rng (seeded from the network's seed, the link and the
//! toxic's name), in the order connections meet the toxic. What each kind
//! does to a connection it applies to:
//!
//! - `latency` (`latency_ms`, `jitter_ms`): every chunk in the toxic's
//!   direction is delivered `latency_ms` ± a uniform `jitter_ms` after it was
//!   read (never before an earlier chunk); the jitter is drawn from a
//!   per-connection rng (seeded);
//! - `loss`: the connection is dropped: a new one is accepted and closed at
//!   once with no byte passed, an open one is closed (FIN both ways) when
//!   the toxic is added. Connections, not chunks: a TCP stream cannot lose
//!   bytes, so what a program sees of a lossy path is connections that fail
//!   (and delays: `latency`);
//! - `reset_peer` (`timeout_ms`): both sides get a TCP RST (`SO_LINGER 0`,
//!   so `ECONNRESET`), `timeout_ms` after the connection opened or the toxic
//!   was added, whichever is later;
//! - `blackhole`: nothing passes in the toxic's direction; open connections
//!   stall. The bytes wait (a bounded buffer, then TCP back-pressure) and
//!   flow again when the toxic is removed, as TCP retransmits once a cut
//!   heals. A partition is a blackhole both ways on every link it crosses;
//! - `bandwidth` (`kb_per_s`): the direction is paced to that many
//!   kilobytes (1000 bytes) per second.

use rand::{RngExt as _, SeedableRng as _};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// Longest latency, jitter or reset timeout a toxic may ask for, in ms (10 minutes).
pub const MAX_TOXIC_MS: u64 = 600_000;
/// Most toxics on one link.
pub const MAX_LINK_TOXICS: usize = 32;

/// Which way of a connection a toxic acts on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Stream {
    /// Client → upstream (requests).
    Upstream,
    /// Upstream → client (responses): Toxiproxy's default.
    #[default]
    Downstream,
    /// Both ways.
    Both,
}

impl Stream {
    /// Whether the toxic acts on direction `dir`.
    pub fn covers(self, dir: Dir) -> bool {
        matches!((self, dir), (Stream::Both, _) | (Stream::Upstream, Dir::Up) | (Stream::Downstream, Dir::Down))
    }
}

/// One direction of a proxied connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    /// Client → upstream.
    Up,
    /// Upstream → client.
    Down,
}

/// What a TCP toxic does (see the module documentation).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum TcpToxicKind {
    /// Each chunk delayed by `latency_ms` ± `jitter_ms`.
    Latency {
        /// Added delay, in ms.
        latency_ms: u64,
        /// Uniform jitter around it, in ms.
        #[serde(default)]
        jitter_ms: u64,
    },
    /// The connections it applies to are dropped (FIN, no byte passed).
    Loss,
    /// The connections it applies to are reset (RST) after `timeout_ms`.
    ResetPeer {
        /// Delay before the reset, in ms (0: at once).
        #[serde(default)]
        timeout_ms: u64,
    },
    /// Nothing passes; the connections stall until it is removed.
    Blackhole,
    /// The direction paced to `kb_per_s` kilobytes per second.
    Bandwidth {
        /// Rate, in kilobytes (1000 bytes) per second.
        kb_per_s: u64,
    },
}

impl TcpToxicKind {
    /// The `type` name.
    pub fn name(&self) -> &'static str {
        match self {
            TcpToxicKind::Latency { .. } => "latency",
            TcpToxicKind::Loss => "loss",
            TcpToxicKind::ResetPeer { .. } => "reset_peer",
            TcpToxicKind::Blackhole => "blackhole",
            TcpToxicKind::Bandwidth { .. } => "bandwidth",
        }
    }
}

/// A toxic on one link.
#[derive(Clone, Debug, PartialEq)]
pub struct TcpToxic {
    /// Unique name on its link.
    pub name: String,
    /// What it does.
    pub kind: TcpToxicKind,
    /// Which direction.
    pub stream: Stream,
    /// Probability that it applies to a connection, in [0, 1].
    pub toxicity: f64,
}

/// Errors in a TCP toxic (the control API answers 400 with the message).
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TcpToxicError {
    /// The JSON is not a toxic.
    #[error(
        "bad toxic: {0}; expected {{\"name\":\"…\",\"type\":\"latency|loss|reset_peer|blackhole|bandwidth\",\"stream\":\"upstream|downstream|both\",\"toxicity\":0.0..1.0,\"attributes\":{{…}}}}"
    )]
    Shape(String),
    /// A delay over the limit.
    #[error("toxic `{name}`: {field} is {ms} ms, over the limit of {MAX_TOXIC_MS} ms; ask for less")]
    Delay {
        /// Toxic.
        name: String,
        /// Field.
        field: &'static str,
        /// Asked.
        ms: u64,
    },
    /// A zero bandwidth.
    #[error("toxic `{0}`: kb_per_s must be at least 1 (a blackhole passes nothing)")]
    Bandwidth(String),
    /// `toxicity` out of range.
    #[error("toxic `{name}`: toxicity is {toxicity}, not a probability; use a number in [0, 1] (1: every connection)")]
    Toxicity {
        /// Toxic.
        name: String,
        /// Asked.
        toxicity: f64,
    },
    /// Empty name.
    #[error("a toxic needs a non-empty `name`")]
    Name,
    /// Name taken on this link.
    #[error("toxic `{0}` already exists on this link; pick another name or delete it first")]
    Exists(String),
    /// Too many toxics on the link.
    #[error(
        "at most {MAX_LINK_TOXICS} toxics on one link; remove some first (DELETE /proxies/<link>/toxics/<name> or POST /reset)"
    )]
    Full,
}

impl TcpToxic {
    /// Checks the attributes.
    pub fn validate(&self) -> Result<(), TcpToxicError> {
        let name = self.name.clone();
        if name.is_empty() {
            return Err(TcpToxicError::Name);
        }
        if !(0.0..=1.0).contains(&self.toxicity) {
            return Err(TcpToxicError::Toxicity { name, toxicity: self.toxicity });
        }
        match self.kind {
            TcpToxicKind::Latency { latency_ms, .. } if latency_ms > MAX_TOXIC_MS => {
                Err(TcpToxicError::Delay { name, field: "latency_ms", ms: latency_ms })
            }
            TcpToxicKind::Latency { jitter_ms, .. } if jitter_ms > MAX_TOXIC_MS => {
                Err(TcpToxicError::Delay { name, field: "jitter_ms", ms: jitter_ms })
            }
            TcpToxicKind::ResetPeer { timeout_ms } if timeout_ms > MAX_TOXIC_MS => {
                Err(TcpToxicError::Delay { name, field: "timeout_ms", ms: timeout_ms })
            }
            TcpToxicKind::Bandwidth { kb_per_s: 0 } => Err(TcpToxicError::Bandwidth(name)),
            _ => Ok(()),
        }
    }

    /// Reads a toxic in Toxiproxy's shape (`attributes` may be left out when
    /// every attribute has a default; `stream` defaults to `downstream` and
    /// `toxicity` to 1, as in Toxiproxy).
    pub fn from_json(v: &Value) -> Result<TcpToxic, TcpToxicError> {
        let o = v.as_object().ok_or_else(|| TcpToxicError::Shape("not a JSON object".into()))?;
        let name = o.get("name").and_then(Value::as_str).unwrap_or_default().to_owned();
        let mut kind = match o.get("attributes") {
            Some(Value::Object(a)) => a.clone(),
            None | Some(Value::Null) => serde_json::Map::new(),
            Some(_) => return Err(TcpToxicError::Shape("`attributes` must be an object".into())),
        };
        kind.insert("type".into(), o.get("type").cloned().unwrap_or(Value::Null));
        let kind: TcpToxicKind =
            serde_json::from_value(Value::Object(kind)).map_err(|e| TcpToxicError::Shape(e.to_string()))?;
        let stream = match o.get("stream") {
            None | Some(Value::Null) => Stream::default(),
            Some(s) => serde_json::from_value(s.clone()).map_err(|e| TcpToxicError::Shape(format!("stream: {e}")))?,
        };
        let toxicity = match o.get("toxicity") {
            None | Some(Value::Null) => 1.0,
            Some(t) => t.as_f64().ok_or_else(|| TcpToxicError::Shape("`toxicity` must be a number".into()))?,
        };
        let t = TcpToxic { name, kind, stream, toxicity };
        t.validate()?;
        Ok(t)
    }

    /// The toxic in Toxiproxy's shape.
    pub fn to_json(&self) -> Value {
        let mut attributes = serde_json::to_value(&self.kind).unwrap_or(Value::Null);
        if let Some(a) = attributes.as_object_mut() {
            a.remove("type");
        }
        json!({ "name": self.name, "type": self.kind.name(), "stream": self.stream,
                "toxicity": self.toxicity, "attributes": attributes })
    }
}

/// FNV-1a over the seed's bytes and a text: the seed of one rng.
pub(crate) fn sub_seed(seed: u64, parts: &[&str], n: u64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |b: u8| {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100_0000_01b3);
    };
    seed.to_le_bytes().into_iter().for_each(&mut eat);
    for p in parts {
        p.bytes().for_each(&mut eat);
        eat(0xff);
    }
    n.to_le_bytes().into_iter().for_each(&mut eat);
    h
}

/// A toxic installed on a link: its unique id and the rng that decides
/// which connections it applies to.
#[derive(Debug)]
pub(crate) struct Installed {
    /// Unique in the network (a removed and re-added toxic is a new one).
    pub id: u64,
    /// The toxic.
    pub toxic: TcpToxic,
    /// When it was added.
    pub added: tokio::time::Instant,
    /// Seed of the per-connection jitter rngs.
    pub seed: u64,
    rng: ChaCha8Rng,
}

impl Installed {
    /// Installs `toxic` on `link`, its rngs derived from `seed`.
    pub fn new(id: u64, toxic: TcpToxic, seed: u64, link: &str) -> Installed {
        let s = sub_seed(seed, &[link, &toxic.name], 0);
        Installed { id, added: tokio::time::Instant::now(), seed: s, rng: ChaCha8Rng::seed_from_u64(s), toxic }
    }

    /// The next connection's draw: does the toxic apply to it?
    pub fn draw(&mut self) -> bool {
        let t = self.toxic.toxicity;
        if t >= 1.0 {
            true
        } else if t <= 0.0 {
            false
        } else {
            self.rng.random::<f64>() < t
        }
    }
}

/// The jitter rng of connection `conn` under a toxic seeded `seed`.
pub(crate) fn jitter_rng(seed: u64, conn: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(sub_seed(seed, &["jitter"], conn))
}

/// One delay draw: `latency_ms` ± uniform `jitter_ms`, at least 0, in µs.
pub(crate) fn delay_us(rng: &mut ChaCha8Rng, latency_ms: u64, jitter_ms: u64) -> u64 {
    let base = latency_ms.saturating_mul(1_000) as i64;
    if jitter_ms == 0 {
        return base.max(0) as u64;
    }
    let j = jitter_ms.saturating_mul(1_000) as i64;
    (base + rng.random_range(-j..=j)).max(0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_writes_toxiproxy_shape() {
        let v =
            json!({"name":"slow","type":"latency","stream":"upstream","attributes":{"latency_ms":300,"jitter_ms":20}});
        let t = TcpToxic::from_json(&v).unwrap();
        assert_eq!(t.kind, TcpToxicKind::Latency { latency_ms: 300, jitter_ms: 20 });
        assert_eq!(t.stream, Stream::Upstream);
        assert_eq!(t.toxicity, 1.0);
        let back = TcpToxic::from_json(&t.to_json()).unwrap();
        assert_eq!(back, t);
        let b = TcpToxic::from_json(&json!({"name":"cut","type":"blackhole"})).unwrap();
        assert_eq!((&b.kind, b.stream), (&TcpToxicKind::Blackhole, Stream::Downstream));
        assert_eq!(TcpToxic::from_json(&b.to_json()).unwrap().kind, TcpToxicKind::Blackhole);
    }

    #[test]
    fn bad_toxics_say_what_to_fix() {
        let e = TcpToxic::from_json(&json!({"name":"x","type":"latency","attributes":{"latncy_ms":3}})).unwrap_err();
        assert!(e.to_string().contains("latncy_ms"), "{e}");
        let e = TcpToxic::from_json(&json!({"name":"x","type":"bandwidth","attributes":{"kb_per_s":0}})).unwrap_err();
        assert_eq!(e, TcpToxicError::Bandwidth("x".into()));
        let e = TcpToxic::from_json(&json!({"name":"x","type":"loss","toxicity":2})).unwrap_err();
        assert!(e.to_string().contains("[0, 1]"), "{e}");
        let e = TcpToxic::from_json(&json!({"type":"loss"})).unwrap_err();
        assert_eq!(e, TcpToxicError::Name);
        let e =
            TcpToxic::from_json(&json!({"name":"x","type":"latency","attributes":{"latency_ms":700000}})).unwrap_err();
        assert!(e.to_string().contains("latency_ms is 700000 ms"), "{e}");
    }

    #[test]
    fn draws_are_seeded() {
        let t = TcpToxic { name: "l".into(), kind: TcpToxicKind::Loss, stream: Stream::Both, toxicity: 0.3 };
        let run = |seed| {
            let mut i = Installed::new(1, t.clone(), seed, "w-to-p");
            (0..1_000).map(|_| i.draw()).collect::<Vec<_>>()
        };
        assert_eq!(run(5), run(5));
        assert_ne!(run(5), run(6));
        let hits = run(5).iter().filter(|&&h| h).count();
        assert!((230..370).contains(&hits), "about 300 of 1000, got {hits}");
        let mut r = jitter_rng(9, 3);
        let d: Vec<u64> = (0..100).map(|_| delay_us(&mut r, 10, 5)).collect();
        assert!(d.iter().all(|&x| (5_000..=15_000).contains(&x)));
        let mut r2 = jitter_rng(9, 3);
        assert_eq!(d, (0..100).map(|_| delay_us(&mut r2, 10, 5)).collect::<Vec<_>>());
        let mut r3 = jitter_rng(9, 4);
        assert_ne!(d, (0..100).map(|_| delay_us(&mut r3, 10, 5)).collect::<Vec<_>>());
    }
}
