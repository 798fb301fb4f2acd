//! The fake side-effect APIs (payments, email) and their ledgers.
//!
//! Idempotency follows Stripe's documented semantics:
//! - same key, same parameters → the first response is replayed (errors
//!   included), no new effect;
//! - same key, different parameters → 400 `idempotency_error`;
//! - a request while another with the same key is still being processed →
//!   409 `idempotency_key_in_use`;
//! - keys are kept for `key_retention_us` (24 h by default); after pruning a
//!   reused key runs as new.
//!
//! With `dedupe = false` the API keeps the key only as searchable metadata
//! (so reconciliation can still look it up) and performs every request.
//!
//! The **ledger** is ground truth: one entry per effect that really
//! happened, attributed to the logical `(job, step)` that issued it. The
//! stack never reads it.

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use crate::components::ids::{HostId, IdemKey, Micros, Origin, US_PER_MS, US_PER_S};

/// Behaviour of one fake API.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ApiConfig {
    /// Deduplicate on the idempotency key (Stripe does; many email APIs do not).
    pub dedupe: bool,
    /// How long a request is processed before the response leaves.
    pub processing_us: Micros,
    /// How long keys are kept.
    pub key_retention_us: Micros,
}

impl ApiConfig {
    /// A Stripe-like payment API.
    pub fn payment() -> Self {
        ApiConfig { dedupe: true, processing_us: 300 * US_PER_MS, key_retention_us: 24 * 3_600 * US_PER_S }
    }
    /// An email API with idempotency keys.
    pub fn email() -> Self {
        ApiConfig { dedupe: true, processing_us: 200 * US_PER_MS, key_retention_us: 24 * 3_600 * US_PER_S }
    }
}

/// One effect that really happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct LedgerEntry {
    /// When the effect happened.
    pub at_us: Micros,
    /// Who asked for it (ground truth attribution).
    pub origin: Origin,
    /// The key it was sent with.
    pub key: Option<IdemKey>,
    /// Hash of the request parameters (amount, recipient, body).
    pub params: u64,
}

/// The response a call gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CallOutcome {
    /// 200: the effect happened now (`replayed == false`) or earlier.
    Ok {
        /// Index of the ledger entry.
        effect: u32,
        /// The response is a replay of the first one.
        replayed: bool,
    },
    /// 400 `idempotency_error`: key reused with different parameters.
    ParamsMismatch,
    /// 409 `idempotency_key_in_use`: a request with this key is in progress.
    KeyInUse,
}

impl CallOutcome {
    /// HTTP status.
    pub fn status(self) -> u16 {
        match self {
            CallOutcome::Ok { .. } => 200,
            CallOutcome::ParamsMismatch => 400,
            CallOutcome::KeyInUse => 409,
        }
    }

    /// Stripe's error body for the non-200 outcomes (used at the HTTP edge).
    pub fn error_body(self) -> Option<String> {
        let (ty, code, msg) = match self {
            CallOutcome::Ok { .. } => return None,
            CallOutcome::ParamsMismatch => (
                "idempotency_error",
                "idempotency_error",
                "Keys for idempotent requests can only be used with the same parameters they were first used with.",
            ),
            CallOutcome::KeyInUse => (
                "idempotency_error",
                "idempotency_key_in_use",
                "There is currently another in-progress request using this Idempotent Key.",
            ),
        };
        Some(serde_json::json!({"error": {"type": ty, "code": code, "message": msg}}).to_string())
    }
}

/// What a lookup by key finds (reconciliation).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Lookup {
    /// A request with this key completed; the effect exists.
    Found {
        /// Index of the ledger entry.
        effect: u32,
        /// The parameters it was made with (the API returns the object: the
        /// charge's amount, the email's body), so a resumer can adopt them.
        params: u64,
    },
    /// A request with this key is being processed right now.
    InProgress,
    /// No request with this key is known.
    NotFound,
}

#[derive(Clone, Copy, Debug)]
struct KeyRec {
    params: u64,
    effect: u32,
    /// When the first request with the key is done; the key expires
    /// `key_retention_us` later.
    done_at_us: Micros,
}

/// Counters of requests, for reports and retry-storm detection.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub struct ApiStats {
    /// Calls received.
    pub calls: u64,
    /// Calls answered by replay.
    pub replays: u64,
    /// 400 idempotency errors.
    pub mismatches: u64,
    /// 409 key in use.
    pub in_use: u64,
    /// Lookups by key.
    pub lookups: u64,
}

/// Periods during which an API's responses stop matching its documented
/// schema (a breaking change): one semantic for the tool APIs
/// ([`SideEffectApi`]) and the model providers
/// ([`crate::components::provider::ProviderMock`]). A response is malformed
/// when it leaves in `[from_us, until_us)` of some period.
#[derive(Clone, Debug, Default)]
pub struct SchemaBreaks {
    periods: Vec<(Micros, Micros)>,
}

impl SchemaBreaks {
    /// Adds a period.
    pub fn add(&mut self, from_us: Micros, until_us: Micros) {
        assert!(from_us <= until_us, "schema break ends before it starts");
        self.periods.push((from_us, until_us));
    }

    /// Whether a response sent at `now_us` is malformed.
    #[inline]
    pub fn active(&self, now_us: Micros) -> bool {
        !self.periods.is_empty() && self.periods.iter().any(|&(f, u)| f <= now_us && now_us < u)
    }

    /// Forgets the periods that ended by `now_us` (the live fakes add one per
    /// affected request).
    pub fn prune(&mut self, now_us: Micros) {
        self.periods.retain(|&(_, u)| u > now_us);
    }
}

/// One fake side-effect API. Sans-IO: the caller supplies `now_us`.
#[derive(Debug)]
pub struct SideEffectApi {
    cfg: ApiConfig,
    keys: FxHashMap<IdemKey, KeyRec>,
    /// The next ledger entry whose key has not been considered for expiry:
    /// every keyed entry is a key's expiry at `at_us + processing_us +
    /// key_retention_us`, and the ledger is in time order, so it is also
    /// the expiry queue (no copy of the keys).
    expiry_next: usize,
    ledger: Vec<LedgerEntry>,
    stats: ApiStats,
    schema_breaks: SchemaBreaks,
}

impl SideEffectApi {
    /// An empty API.
    pub fn new(cfg: ApiConfig) -> Self {
        SideEffectApi {
            cfg,
            keys: FxHashMap::default(),
            expiry_next: 0,
            ledger: Vec::new(),
            stats: ApiStats::default(),
            schema_breaks: SchemaBreaks::default(),
        }
    }

    /// Configuration.
    pub fn config(&self) -> ApiConfig {
        self.cfg
    }

    fn prune(&mut self, now_us: Micros) {
        let retention_us = self.cfg.key_retention_us;
        let keep_us = self.cfg.processing_us.saturating_add(retention_us);
        while let Some(e) = self.ledger.get(self.expiry_next) {
            let Some(key) = e.key else {
                self.expiry_next += 1;
                continue;
            };
            if e.at_us.saturating_add(keep_us) > now_us {
                break;
            }
            self.expiry_next += 1;
            if self.keys.get(&key).is_some_and(|r| r.done_at_us.saturating_add(retention_us) <= now_us) {
                self.keys.remove(&key);
            }
        }
    }

    /// Handles a call. Returns the outcome and when the response leaves the
    /// API. The effect (if any) is in the ledger from `now_us` on.
    pub fn call(&mut self, now_us: Micros, key: Option<IdemKey>, params: u64, origin: Origin) -> (CallOutcome, Micros) {
        self.stats.calls += 1;
        self.prune(now_us);
        let done_at = now_us + self.cfg.processing_us;
        if let Some(k) = key
            && let Some(rec) = self.keys.get(&k).copied()
        {
            if rec.done_at_us > now_us && self.cfg.dedupe {
                self.stats.in_use += 1;
                return (CallOutcome::KeyInUse, now_us);
            }
            if self.cfg.dedupe {
                if rec.params != params {
                    self.stats.mismatches += 1;
                    return (CallOutcome::ParamsMismatch, now_us);
                }
                self.stats.replays += 1;
                return (CallOutcome::Ok { effect: rec.effect, replayed: true }, now_us.max(rec.done_at_us));
            }
        }
        let effect = u32::try_from(self.ledger.len()).expect("ledger under 2^32 entries");
        self.ledger.push(LedgerEntry { at_us: now_us, origin, key, params });
        if let Some(k) = key {
            // Without dedupe the key is metadata: the first effect stays
            // findable. Its expiry is queued by the ledger entry (`prune`).
            self.keys.entry(k).or_insert(KeyRec { params, effect, done_at_us: done_at });
        }
        (CallOutcome::Ok { effect, replayed: false }, done_at)
    }

    /// Looks a key up (reconciliation).
    pub fn lookup(&mut self, now_us: Micros, key: IdemKey) -> Lookup {
        self.stats.lookups += 1;
        self.prune(now_us);
        match self.keys.get(&key) {
            None => Lookup::NotFound,
            Some(r) if r.done_at_us > now_us => Lookup::InProgress,
            Some(r) => Lookup::Found { effect: r.effect, params: r.params },
        }
    }

    /// Who is making the effect behind `key` while it is being processed,
    /// and when the request reached the API (ground truth for concurrent
    /// runs of one step).
    pub fn in_progress_by(&self, now_us: Micros, key: IdemKey) -> Option<(HostId, Micros)> {
        let r = self.keys.get(&key)?;
        let e = &self.ledger[r.effect as usize];
        (r.done_at_us > now_us).then_some((e.origin.host, e.at_us))
    }

    /// A breaking change for a period: responses (calls and lookups) stop
    /// matching the documented schema. Effects still happen.
    pub fn set_schema_break(&mut self, from_us: Micros, until_us: Micros) {
        self.schema_breaks.add(from_us, until_us);
    }

    /// Whether responses sent at `now_us` are malformed.
    #[inline]
    pub fn malformed(&self, now_us: Micros) -> bool {
        self.schema_breaks.active(now_us)
    }

    /// Makes room for `calls` more keyed calls (their ledger entries and
    /// keys) at once, for a caller that knows its workload's size (the
    /// bench's peer workload): no growth, no rehash, same behaviour.
    pub fn reserve(&mut self, calls: usize) {
        self.keys.reserve(calls);
        self.ledger.reserve(calls);
    }

    /// The ledger: every effect that really happened, in order.
    pub fn ledger(&self) -> &[LedgerEntry] {
        &self.ledger
    }

    /// Request counters.
    pub fn stats(&self) -> ApiStats {
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::components::ids::{HostId, JobId};

    fn origin(step: u16) -> Origin {
        Origin { job: JobId(1), step, host: HostId(0), task: crate::components::ids::TaskId(1), token: 1 }
    }
    const K: IdemKey = IdemKey { hi: 7, lo: 3 };

    #[test]
    fn same_key_same_params_replays_without_a_new_effect() {
        let mut api = SideEffectApi::new(ApiConfig::payment());
        let (a, done) = api.call(0, Some(K), 99, origin(3));
        assert_eq!(a, CallOutcome::Ok { effect: 0, replayed: false });
        assert_eq!(api.call(done, Some(K), 99, origin(3)).0, CallOutcome::Ok { effect: 0, replayed: true });
        assert_eq!(api.ledger().len(), 1);
    }

    #[test]
    fn same_key_other_params_is_400_and_concurrent_is_409() {
        let mut api = SideEffectApi::new(ApiConfig::payment());
        let (_, done) = api.call(0, Some(K), 99, origin(3));
        assert_eq!(api.call(done - 1, Some(K), 99, origin(3)).0, CallOutcome::KeyInUse);
        assert_eq!(api.lookup(done - 1, K), Lookup::InProgress);
        assert_eq!(api.call(done, Some(K), 100, origin(3)).0, CallOutcome::ParamsMismatch);
        assert_eq!(api.lookup(done, K), Lookup::Found { effect: 0, params: 99 });
        assert!(CallOutcome::ParamsMismatch.error_body().unwrap().contains("idempotency_error"));
        assert!(CallOutcome::KeyInUse.error_body().unwrap().contains("idempotency_key_in_use"));
    }

    #[test]
    fn pruned_key_runs_as_new() {
        let cfg = ApiConfig { key_retention_us: 1_000, ..ApiConfig::payment() };
        let mut api = SideEffectApi::new(cfg);
        let (_, done) = api.call(0, Some(K), 1, origin(0));
        assert_eq!(api.call(done + 1_000, Some(K), 1, origin(0)).0, CallOutcome::Ok { effect: 1, replayed: false });
    }

    #[test]
    fn without_dedupe_every_call_is_an_effect_but_lookup_still_works() {
        let cfg = ApiConfig { dedupe: false, ..ApiConfig::email() };
        let mut api = SideEffectApi::new(cfg);
        let (_, done) = api.call(0, Some(K), 1, origin(0));
        api.call(done, Some(K), 1, origin(0));
        assert_eq!(api.ledger().len(), 2);
        assert_eq!(api.lookup(done, K), Lookup::Found { effect: 0, params: 1 });
        assert_eq!(api.lookup(done, IdemKey { hi: 0, lo: 0 }), Lookup::NotFound);
    }
}
