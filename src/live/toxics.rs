//! Faults on the fakes ("toxics", in Toxiproxy's resource shape).
//!
//! A toxic belongs to one fake and applies to every request it receives
//! (or to the next `count` requests), in the order the toxics were added.
//! With a `toxicity` below 1 (Toxiproxy's field) it applies to each request
//! with that probability, drawn from the toxic's own rng, seeded from the
//! served instance's seed, the fake and the toxic's name: the same seed and
//! the same requests give the same schedule (and `count` counts only the
//! requests it applied to).
//! Error statuses and mid-stream errors on the model fakes become
//! [`ErrorMode`]s of the fake's [`crate::components::provider::ProviderMock`],
//! so the status, error class, body and billing are the simulator's.

use rand::{RngExt as _, SeedableRng as _};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::components::provider::ErrorMode;

/// Most toxics one served instance holds.
pub const MAX_TOXICS: usize = 256;
/// Longest latency or hold a toxic may ask for, in ms (10 minutes).
pub const MAX_DELAY_MS: u64 = 600_000;

/// What a toxic does.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "attributes", rename_all = "snake_case")]
pub enum ToxicKind {
    /// Answer with an error status (and `retry-after` when given).
    Error {
        /// HTTP status: 429, 500, 503 or 529.
        status: u16,
        /// `retry-after`, in ms (429 only).
        #[serde(default)]
        retry_after_ms: Option<u64>,
    },
    /// Delay the request by `latency_ms` before it is served.
    Latency {
        /// Added delay, in ms.
        latency_ms: u64,
    },
    /// Hold the request until the toxic is removed (or `timeout_ms` passes).
    Hold {
        /// Give up holding after this long, in ms.
        #[serde(default)]
        timeout_ms: Option<u64>,
    },
    /// Drop the connection without an answer: before the request is served
    /// (no effect) or, with `after_effect`, after the effect committed.
    ResetPeer {
        /// Serve the request (the effect commits), then drop the answer.
        #[serde(default)]
        after_effect: bool,
    },
    /// Model fakes: HTTP 200, then an `error` event after `after_tokens`.
    StreamError {
        /// Output tokens streamed before the error.
        after_tokens: u32,
    },
    /// Responses keep their status but stop matching the documented schema
    /// (a field renamed or missing, one of the wrong type); effects still
    /// happen. Payment, email and the model fakes.
    SchemaChange,
}

/// A toxic as the control API shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Toxic {
    /// Unique name on its fake.
    pub name: String,
    /// What it does, with its attributes.
    #[serde(flatten)]
    pub kind: ToxicKind,
    /// Requests still to affect (None: every request until removed).
    #[serde(default)]
    pub count: Option<u32>,
    /// Probability that the toxic applies to a request, in [0, 1] (Toxiproxy's
    /// `toxicity`; 1 when left out).
    #[serde(default = "always")]
    pub toxicity: f64,
}

fn always() -> f64 {
    1.0
}

/// Errors in a toxic request (answered with 400 and this message).
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ToxicError {
    /// Unsupported status.
    #[error("toxic `{name}`: status {status} is not one of 429, 500, 503, 529; use one of them")]
    Status {
        /// Toxic.
        name: String,
        /// Status asked for.
        status: u16,
    },
    /// Delay over the limit.
    #[error("toxic `{name}`: {field} is {ms} ms, over the limit of {MAX_DELAY_MS} ms; ask for less")]
    Delay {
        /// Toxic.
        name: String,
        /// Field.
        field: &'static str,
        /// Asked.
        ms: u64,
    },
    /// `count` is zero.
    #[error("toxic `{name}`: count must be at least 1 (leave it out to affect every request)")]
    Count {
        /// Toxic.
        name: String,
    },
    /// `toxicity` out of range.
    #[error("toxic `{name}`: toxicity is {toxicity}, not a probability; use a number in [0, 1] (1: every request)")]
    Toxicity {
        /// Toxic.
        name: String,
        /// Asked.
        toxicity: f64,
    },
    /// Too many toxics.
    #[error("at most {MAX_TOXICS} toxics; remove some first (DELETE /proxies/<fake>/toxics/<name> or POST /reset)")]
    Full,
    /// Name taken.
    #[error("toxic `{0}` already exists on this fake; pick another name or delete it first")]
    Exists(String),
}

impl Toxic {
    /// Checks the attributes.
    pub fn validate(&self) -> Result<(), ToxicError> {
        let name = self.name.clone();
        if self.count == Some(0) {
            return Err(ToxicError::Count { name });
        }
        if !(0.0..=1.0).contains(&self.toxicity) {
            return Err(ToxicError::Toxicity { name, toxicity: self.toxicity });
        }
        match self.kind {
            ToxicKind::Error { status, .. } if ![429, 500, 503, 529].contains(&status) => {
                Err(ToxicError::Status { name, status })
            }
            ToxicKind::Error { retry_after_ms: Some(ms), .. } if ms > MAX_DELAY_MS => {
                Err(ToxicError::Delay { name, field: "retry_after_ms", ms })
            }
            ToxicKind::Latency { latency_ms: ms } if ms > MAX_DELAY_MS => {
                Err(ToxicError::Delay { name, field: "latency_ms", ms })
            }
            ToxicKind::Hold { timeout_ms: Some(ms) } if ms > MAX_DELAY_MS => {
                Err(ToxicError::Delay { name, field: "timeout_ms", ms })
            }
            _ => Ok(()),
        }
    }

    /// The provider error mode this toxic stands for on a model fake.
    pub fn provider_mode(&self) -> Option<ErrorMode> {
        match self.kind {
            ToxicKind::Error { status: 429, retry_after_ms } => {
                Some(ErrorMode::RateLimited { retry_after_ms: retry_after_ms.unwrap_or(1_000) })
            }
            ToxicKind::Error { status: 500, .. } => Some(ErrorMode::ServerError),
            ToxicKind::Error { status: 503, .. } => Some(ErrorMode::Unavailable),
            ToxicKind::Error { status: 529, .. } => Some(ErrorMode::Overloaded),
            ToxicKind::StreamError { after_tokens } => Some(ErrorMode::StreamError { after_tokens }),
            _ => None,
        }
    }
}

/// The toxics of every fake, each with its rng.
#[derive(Debug, Default)]
pub struct Table {
    seed: u64,
    toxics: Vec<(String, Toxic, ChaCha8Rng)>,
}

impl Table {
    /// An empty table whose toxics draw from rngs derived from `seed`.
    pub fn new(seed: u64) -> Self {
        Table { seed, toxics: Vec::new() }
    }

    /// Adds a toxic to `fake`.
    pub fn add(&mut self, fake: &str, t: Toxic) -> Result<(), ToxicError> {
        t.validate()?;
        if self.toxics.len() >= MAX_TOXICS {
            return Err(ToxicError::Full);
        }
        if self.toxics.iter().any(|(f, x, _)| f == fake && x.name == t.name) {
            return Err(ToxicError::Exists(t.name));
        }
        let key = format!("{fake}/{}", t.name);
        let rng = ChaCha8Rng::seed_from_u64(super::http::fnv(key.as_bytes(), self.seed ^ 0xcbf2_9ce4_8422_2325));
        self.toxics.push((fake.to_owned(), t, rng));
        Ok(())
    }

    /// Removes a toxic; whether it existed.
    pub fn remove(&mut self, fake: &str, name: &str) -> bool {
        let before = self.toxics.len();
        self.toxics.retain(|(f, x, _)| !(f == fake && x.name == name));
        before != self.toxics.len()
    }

    /// Whether a toxic is still there (a held request waits for this to turn false).
    pub fn contains(&self, fake: &str, name: &str) -> bool {
        self.toxics.iter().any(|(f, x, _)| f == fake && x.name == name)
    }

    /// The toxics of `fake`.
    pub fn list(&self, fake: &str) -> Vec<Toxic> {
        self.toxics.iter().filter(|(f, _, _)| f == fake).map(|(_, t, _)| t.clone()).collect()
    }

    /// Removes every toxic.
    pub fn clear(&mut self) {
        self.toxics.clear();
    }

    /// The toxics that apply to one request on `fake`: each with its
    /// toxicity (a draw from its rng when below 1), counting the request
    /// against its `count` when it applies (a toxic whose count runs out is
    /// removed).
    pub fn take(&mut self, fake: &str) -> Vec<Toxic> {
        if self.toxics.is_empty() {
            return Vec::new();
        }
        let mut hit = Vec::new();
        for (f, t, rng) in &mut self.toxics {
            if f != fake || (t.toxicity < 1.0 && rng.random::<f64>() >= t.toxicity) {
                continue;
            }
            hit.push(t.clone());
            if let Some(c) = &mut t.count {
                *c -= 1;
            }
        }
        self.toxics.retain(|(_, t, _)| t.count != Some(0));
        hit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(name: &str, kind: ToxicKind, count: Option<u32>) -> Toxic {
        Toxic { name: name.into(), kind, count, toxicity: 1.0 }
    }

    /// Which of `n` requests a toxic of `toxicity` hits, on a fresh table of `seed`.
    fn schedule(seed: u64, toxicity: f64, n: usize) -> Vec<bool> {
        let mut tab = Table::new(seed);
        tab.add("openai", Toxic { toxicity, ..t("flaky", ToxicKind::SchemaChange, None) }).unwrap();
        (0..n).map(|_| !tab.take("openai").is_empty()).collect()
    }

    #[test]
    fn toxicity_is_a_seeded_probability() {
        let a = schedule(7, 0.3, 2_000);
        assert_eq!(a, schedule(7, 0.3, 2_000), "same seed, same schedule");
        assert_ne!(a, schedule(8, 0.3, 2_000), "another seed, another schedule");
        let hits = a.iter().filter(|&&h| h).count();
        assert!((500..700).contains(&hits), "about 30% of 2000, got {hits}");
        assert!(schedule(7, 1.0, 50).iter().all(|&h| h) && schedule(7, 0.0, 50).iter().all(|&h| !h));
        // `count` counts only the requests the toxic applied to.
        let mut tab = Table::new(7);
        tab.add("email", Toxic { toxicity: 0.5, ..t("c", ToxicKind::SchemaChange, Some(3)) }).unwrap();
        let applied = (0..200).filter(|_| !tab.take("email").is_empty()).count();
        assert_eq!(applied, 3);
        let bad = Toxic { toxicity: 1.5, ..t("x", ToxicKind::SchemaChange, None) };
        assert!(tab.add("email", bad).unwrap_err().to_string().contains("[0, 1]"));
    }

    #[test]
    fn counted_toxics_run_out_and_others_stay() {
        let mut tab = Table::default();
        tab.add("payment", t("a", ToxicKind::ResetPeer { after_effect: true }, Some(1))).unwrap();
        tab.add("payment", t("b", ToxicKind::Latency { latency_ms: 5 }, None)).unwrap();
        assert_eq!(tab.take("email"), vec![]);
        assert_eq!(tab.take("payment").len(), 2);
        assert_eq!(tab.take("payment").len(), 1);
        assert!(!tab.contains("payment", "a") && tab.contains("payment", "b"));
        assert!(tab.remove("payment", "b") && tab.list("payment").is_empty());
    }

    #[test]
    fn bad_toxics_are_refused_with_the_fix() {
        let mut tab = Table::default();
        let bad = t("x", ToxicKind::Error { status: 418, retry_after_ms: None }, None);
        assert!(tab.add("anthropic", bad).unwrap_err().to_string().contains("429, 500, 503, 529"));
        assert!(matches!(tab.add("a", t("y", ToxicKind::SchemaChange, Some(0))), Err(ToxicError::Count { .. })));
        tab.add("a", t("z", ToxicKind::SchemaChange, None)).unwrap();
        assert_eq!(tab.add("a", t("z", ToxicKind::SchemaChange, None)), Err(ToxicError::Exists("z".into())));
        let json = r#"{"name":"o","type":"error","attributes":{"status":529}}"#;
        let parsed: Toxic = serde_json::from_str(json).unwrap();
        assert_eq!(parsed.provider_mode(), Some(ErrorMode::Overloaded));
    }
}
