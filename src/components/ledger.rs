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

/// What the API remembers of a key: its first request, read from the
/// ledger entry it made (`params`, and `at_us + processing_us`, when that
/// request is done; the key expires `key_retention_us` after that).
#[derive(Clone, Copy, Debug)]
struct KeyRec {
    params: u64,
    effect: u32,
    done_at_us: Micros,
}

/// The live keys of an API: an open-addressing table (linear probing,
/// backward-shift deletion) of 8-byte slots, each a ledger index and 32
/// bits of the key's hash. The key itself and what the API remembers of it
/// are in the ledger entry, so a slot is 8 bytes where a hash map of key
/// to record took 40 (and a million keys about 86 MB). Lookups are exact,
/// so the table's layout never shows in a run.
#[derive(Debug, Default)]
struct KeyTable {
    /// `tag << 32 | effect`, or [`KeyTable::EMPTY`].
    slots: Vec<u64>,
    len: usize,
}

impl KeyTable {
    const EMPTY: u64 = u64::MAX;
    const MIN_SLOTS: usize = 16;

    /// 32 well-mixed bits of `key`; a slot's home is their top bits.
    #[inline]
    fn tag(key: IdemKey) -> u32 {
        let h = (key.hi.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ key.lo).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        (h >> 32) as u32
    }

    #[inline]
    fn home(&self, tag: u32) -> usize {
        // The table has 2^k slots, 4 <= k <= 32: the tag's top k bits.
        ((u64::from(tag) * self.slots.len() as u64) >> 32) as usize
    }

    #[inline]
    fn mask(&self) -> usize {
        self.slots.len() - 1
    }

    /// The slot holding `key`, if any.
    #[inline]
    fn find(&self, key: IdemKey, ledger: &[LedgerEntry]) -> Option<usize> {
        if self.len == 0 {
            return None;
        }
        let tag = Self::tag(key);
        let mut i = self.home(tag);
        loop {
            let s = self.slots[i];
            if s == Self::EMPTY {
                return None;
            }
            if (s >> 32) as u32 == tag && ledger[s as u32 as usize].key == Some(key) {
                return Some(i);
            }
            i = (i + 1) & self.mask();
        }
    }

    /// The ledger index of `key`'s first request, if the key is live.
    #[inline]
    fn get(&self, key: IdemKey, ledger: &[LedgerEntry]) -> Option<u32> {
        self.find(key, ledger).map(|i| self.slots[i] as u32)
    }

    /// Adds `key` (not in the table) for ledger entry `effect`.
    fn insert(&mut self, key: IdemKey, effect: u32) {
        assert!(effect != u32::MAX, "ledger under 2^32 - 1 entries");
        if (self.len + 1) * 4 > self.slots.len() * 3 {
            self.grow();
        }
        self.place(u64::from(Self::tag(key)) << 32 | u64::from(effect));
        self.len += 1;
    }

    fn place(&mut self, slot: u64) {
        let mut i = self.home((slot >> 32) as u32);
        while self.slots[i] != Self::EMPTY {
            i = (i + 1) & self.mask();
        }
        self.slots[i] = slot;
    }

    fn grow(&mut self) {
        self.resize((self.slots.len() * 2).max(Self::MIN_SLOTS));
    }

    /// Room for `additional` more keys without growing (the same load
    /// limit as `insert`: at most three quarters full).
    fn reserve(&mut self, additional: usize) {
        let need = (self.len + additional).saturating_mul(4).div_ceil(3);
        if need > self.slots.len() {
            self.resize(need.next_power_of_two().max(Self::MIN_SLOTS));
        }
    }

    /// Rehashes every key into a table of `n` slots (a power of two).
    fn resize(&mut self, n: usize) {
        assert!(n.is_power_of_two() && n <= 1 << 32, "key table: a power of two under 2^32 slots");
        let old = std::mem::replace(&mut self.slots, vec![Self::EMPTY; n]);
        for s in old.into_iter().filter(|&s| s != Self::EMPTY) {
            self.place(s);
        }
    }

    /// Empties slot `i`, moving back the entries after it that probed
    /// past it, so every entry stays reachable from its home.
    fn remove_at(&mut self, mut i: usize) {
        let mask = self.mask();
        let mut j = i;
        loop {
            j = (j + 1) & mask;
            let s = self.slots[j];
            if s == Self::EMPTY {
                break;
            }
            let home = self.home((s >> 32) as u32);
            // The entry at `j` may move to `i` unless its home lies in (i, j].
            let stays = if i <= j { i < home && home <= j } else { i < home || home <= j };
            if !stays {
                self.slots[i] = s;
                i = j;
            }
        }
        self.slots[i] = Self::EMPTY;
        self.len -= 1;
    }
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
    keys: KeyTable,
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
            keys: KeyTable::default(),
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

    /// What the API remembers of the key of ledger entry `effect` (its
    /// first request).
    #[inline]
    fn rec(&self, effect: u32) -> KeyRec {
        let e = &self.ledger[effect as usize];
        KeyRec { params: e.params, effect, done_at_us: e.at_us + self.cfg.processing_us }
    }

    /// The live key `key`'s record.
    #[inline]
    fn key_rec(&self, key: IdemKey) -> Option<KeyRec> {
        self.keys.get(key, &self.ledger).map(|e| self.rec(e))
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
            if let Some(i) = self.keys.find(key, &self.ledger)
                && self.rec(self.keys.slots[i] as u32).done_at_us.saturating_add(retention_us) <= now_us
            {
                self.keys.remove_at(i);
            }
        }
    }

    /// Handles a call. Returns the outcome and when the response leaves the
    /// API. The effect (if any) is in the ledger from `now_us` on.
    pub fn call(&mut self, now_us: Micros, key: Option<IdemKey>, params: u64, origin: Origin) -> (CallOutcome, Micros) {
        self.stats.calls += 1;
        self.prune(now_us);
        let done_at = now_us + self.cfg.processing_us;
        let known = key.and_then(|k| self.key_rec(k));
        if let Some(rec) = known {
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
        if let Some(k) = key
            && known.is_none()
        {
            // Without dedupe the key is metadata: the first effect stays
            // findable. Its expiry is queued by the ledger entry (`prune`).
            self.keys.insert(k, effect);
        }
        (CallOutcome::Ok { effect, replayed: false }, done_at)
    }

    /// Looks a key up (reconciliation).
    pub fn lookup(&mut self, now_us: Micros, key: IdemKey) -> Lookup {
        self.stats.lookups += 1;
        self.prune(now_us);
        match self.key_rec(key) {
            None => Lookup::NotFound,
            Some(r) if r.done_at_us > now_us => Lookup::InProgress,
            Some(r) => Lookup::Found { effect: r.effect, params: r.params },
        }
    }

    /// Who is making the effect behind `key` while it is being processed,
    /// and when the request reached the API (ground truth for concurrent
    /// runs of one step).
    pub fn in_progress_by(&self, now_us: Micros, key: IdemKey) -> Option<(HostId, Micros)> {
        let r = self.key_rec(key)?;
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
    fn the_key_table_finds_what_a_hash_map_finds_through_growth_and_removals() {
        // Keys colliding on purpose (few distinct tags' homes in a small
        // table) and spread ones; removals in an order unrelated to
        // insertion exercise the backward shift.
        let mut ledger = Vec::new();
        let mut table = KeyTable::default();
        let mut model = std::collections::HashMap::new();
        let mut x: u64 = 0x1234_5678;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for step in 0..20_000u64 {
            let r = next();
            let key = IdemKey { hi: r % 3_000, lo: r >> 60 };
            match (r >> 20) % 3 {
                0 | 1 => {
                    if table.get(key, &ledger).is_none() {
                        let effect = ledger.len() as u32;
                        ledger.push(LedgerEntry { at_us: step, origin: origin(0), key: Some(key), params: r });
                        table.insert(key, effect);
                        assert!(model.insert(key, effect).is_none(), "the table lost {key:?}");
                    }
                }
                _ => {
                    if let Some(i) = table.find(key, &ledger) {
                        table.remove_at(i);
                        assert!(model.remove(&key).is_some(), "the table kept {key:?} past its removal");
                    }
                }
            }
            if step % 1_000 == 0 {
                for (k, e) in &model {
                    assert_eq!(table.get(*k, &ledger), Some(*e), "step {step}");
                }
            }
        }
        assert_eq!(table.len, model.len());
        for (k, e) in &model {
            assert_eq!(table.get(*k, &ledger), Some(*e));
        }
        assert!(table.slots.len() * 3 >= table.len * 4, "load factor at most 3/4");
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
