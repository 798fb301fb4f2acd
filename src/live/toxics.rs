//! Faults on the fakes ("toxics", in Toxiproxy's resource shape).
//!
//! A toxic belongs to one fake and applies to every request it receives
//! (or to the next `count` requests), in the order the toxics were added.
//! Error statuses and mid-stream errors on the model fakes become
//! [`ErrorMode`]s of the fake's [`crate::components::provider::ProviderMock`],
//! so the status, error class, body and billing are the simulator's.

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
    /// Payment and email fakes: responses stop matching the documented
    /// schema (effects still happen).
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
}

/// Errors in a toxic request (answered with 400 and this message).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
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

/// The toxics of every fake.
#[derive(Debug, Default)]
pub struct Table {
    toxics: Vec<(String, Toxic)>,
}

impl Table {
    /// Adds a toxic to `fake`.
    pub fn add(&mut self, fake: &str, t: Toxic) -> Result<(), ToxicError> {
        t.validate()?;
        if self.toxics.len() >= MAX_TOXICS {
            return Err(ToxicError::Full);
        }
        if self.toxics.iter().any(|(f, x)| f == fake && x.name == t.name) {
            return Err(ToxicError::Exists(t.name));
        }
        self.toxics.push((fake.to_owned(), t));
        Ok(())
    }

    /// Removes a toxic; whether it existed.
    pub fn remove(&mut self, fake: &str, name: &str) -> bool {
        let before = self.toxics.len();
        self.toxics.retain(|(f, x)| !(f == fake && x.name == name));
        before != self.toxics.len()
    }

    /// Whether a toxic is still there (a held request waits for this to turn false).
    pub fn contains(&self, fake: &str, name: &str) -> bool {
        self.toxics.iter().any(|(f, x)| f == fake && x.name == name)
    }

    /// The toxics of `fake`.
    pub fn list(&self, fake: &str) -> Vec<Toxic> {
        self.toxics.iter().filter(|(f, _)| f == fake).map(|(_, t)| t.clone()).collect()
    }

    /// Removes every toxic.
    pub fn clear(&mut self) {
        self.toxics.clear();
    }

    /// The toxics that apply to one request on `fake`, counting it against
    /// each toxic's `count` (a toxic whose count runs out is removed).
    pub fn take(&mut self, fake: &str) -> Vec<Toxic> {
        if self.toxics.is_empty() {
            return Vec::new();
        }
        let mut hit = Vec::new();
        for (f, t) in &mut self.toxics {
            if f == fake {
                hit.push(t.clone());
                if let Some(c) = &mut t.count {
                    *c -= 1;
                }
            }
        }
        self.toxics.retain(|(_, t)| t.count != Some(0));
        hit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(name: &str, kind: ToxicKind, count: Option<u32>) -> Toxic {
        Toxic { name: name.into(), kind, count }
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
