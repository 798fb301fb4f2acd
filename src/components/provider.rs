//! LLM provider mocks: Anthropic-, OpenAI- and self-hosted-shaped model APIs.
//!
//! # Design
//!
//! A [`ProviderMock`] is a sans-IO model of one provider endpoint. It has no
//! clock and does no I/O: every call takes the simulated time `now_us` and an
//! `&mut impl Rng`, and returns a [`ModelOutcome`] saying *when* the caller
//! sees the answer (or gives up) and *what* it sees. Given the same sequence
//! of calls and the same rng stream, the outcomes are identical.
//!
//! Every call to [`ProviderMock::handle`] draws exactly two values from the
//! rng (latency jitter, then the decision), whatever the outcome. The rng
//! stream therefore stays aligned between a drill with a provider fault and
//! the same drill without it, which is what the cost comparison needs.
//!
//! The mock models what a drill has to measure:
//! - **latency**: `(base + per_token × output) × jitter`, jitter in
//!   [0.8, 1.2] (integer per-mille), plus `cold_extra_latency_ms` on a
//!   prompt-cache miss;
//! - **cost**: integer micro-USD from token counts and per-million-token
//!   prices (`tokens × USD/Mtok` is exactly micro-USD), cached prefix tokens
//!   billed at `cache_read_discount`;
//! - **prompt cache**: prefix hash → expiry, refreshed on every use; lost as a
//!   whole with [`ProviderMock::clear_cache`];
//! - **injected outages**: [`ErrorMode`] windows `[from_us, until_us)` that
//!   reproduce the providers' documented failure shapes (429 with
//!   `retry-after`, 500, 503, 529, client timeouts, slow answers, an error
//!   event after a streamed 200).
//!
//! Outside injected outages a provider never fails (a slow answer can still
//! exceed the client timeout). Nothing on the hot path allocates: the outage
//! list is changed only by [`ProviderMock::set_outage`] and the cache lives in
//! a pre-sized `Vec`. [`ProviderMock::error_body_json`] allocates and is meant
//! for the HTTP edge only.

use rand::{Rng, RngExt};
use serde::{Deserialize, Serialize};

use crate::components::ids::{Micros, US_PER_MS};

/// Lowest latency jitter, in per-mille of the nominal latency.
pub const JITTER_MIN_PERMILLE: u64 = 800;
/// Highest latency jitter, in per-mille of the nominal latency.
pub const JITTER_MAX_PERMILLE: u64 = 1_200;
/// Most prefixes a provider's prompt cache holds; beyond it the entry closest
/// to expiry is evicted.
pub const CACHE_CAPACITY: usize = 256;
/// Fast errors (429, 500, 503, 529) come back after this fraction (per-mille)
/// of the jittered base latency: the request is rejected before generation.
const ERROR_LATENCY_PERMILLE: u64 = 250;

/// Which API a provider speaks; decides status codes and error body shapes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    /// Anthropic Messages API.
    #[default]
    Anthropic,
    /// OpenAI Chat Completions / Responses API (written `"openai"`).
    #[serde(rename = "openai", alias = "open_ai")]
    OpenAi,
    /// A self-hosted, OpenAI-compatible server (vLLM-style).
    Local,
}

/// Generates the serde default functions of [`ProviderConfig`].
macro_rules! default_fns {
    ($($f:ident: $t:ty = $v:expr;)*) => { $(pub fn $f() -> $t { $v })* };
}

/// Serde defaults for [`ProviderConfig`]: Anthropic-like values.
mod defaults {
    use super::ProviderKind;
    default_fns! {
        kind: ProviderKind = ProviderKind::Anthropic;
        base_latency_ms: u64 = 800;
        latency_per_output_token_us: u64 = 15_000;
        cold_extra_latency_ms: u64 = 500;
        price_input_per_mtok_usd: f64 = 3.0;
        price_output_per_mtok_usd: f64 = 15.0;
        cache_read_discount: f64 = 0.1;
        cache_ttl_ms: u64 = 300_000;
        timeout_ms: u64 = 60_000;
        max_retries: u32 = 2;
        degraded: bool = false;
    }
}

/// Static description of one provider endpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, from = "ProviderSpec")]
#[schemars(with = "ProviderSpec")]
pub struct ProviderConfig {
    /// Display name, e.g. `"anthropic"`.
    pub name: String,
    /// API flavour.
    #[serde(default = "defaults::kind")]
    pub kind: ProviderKind,
    /// Time to first token and fixed overhead, in ms.
    #[serde(default = "defaults::base_latency_ms")]
    pub base_latency_ms: u64,
    /// Generation time per output token, in µs.
    #[serde(default = "defaults::latency_per_output_token_us")]
    pub latency_per_output_token_us: u64,
    /// Extra latency when the prompt prefix is not cached, in ms.
    #[serde(default = "defaults::cold_extra_latency_ms")]
    pub cold_extra_latency_ms: u64,
    /// USD per million input tokens.
    #[serde(default = "defaults::price_input_per_mtok_usd")]
    pub price_input_per_mtok_usd: f64,
    /// USD per million output tokens.
    #[serde(default = "defaults::price_output_per_mtok_usd")]
    pub price_output_per_mtok_usd: f64,
    /// Cached input tokens cost this fraction of the input price (0..=1).
    #[serde(default = "defaults::cache_read_discount")]
    pub cache_read_discount: f64,
    /// Prompt-cache lifetime after the last use, in ms.
    #[serde(default = "defaults::cache_ttl_ms")]
    pub cache_ttl_ms: u64,
    /// Client-side timeout the SDK applies, in ms.
    #[serde(default = "defaults::timeout_ms")]
    pub timeout_ms: u64,
    /// Retries the SDK makes on a retryable error (SDK default 2).
    #[serde(default = "defaults::max_retries")]
    pub max_retries: u32,
    /// A lower-quality fallback (the self-hosted model).
    #[serde(default = "defaults::degraded")]
    pub degraded: bool,
}

/// A provider as written in a scenario file: only `name` is required;
/// every field left out takes the default of the provider's kind.
#[derive(Clone, Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProviderSpec {
    /// Display name, e.g. `"anthropic"`.
    pub name: String,
    /// API flavour (default `anthropic`); it sets the other defaults.
    #[serde(default = "defaults::kind")]
    pub kind: ProviderKind,
    /// Time to first token and fixed overhead, in ms.
    pub base_latency_ms: Option<u64>,
    /// Generation time per output token, in µs.
    pub latency_per_output_token_us: Option<u64>,
    /// Extra latency when the prompt prefix is not cached, in ms.
    pub cold_extra_latency_ms: Option<u64>,
    /// USD per million input tokens.
    pub price_input_per_mtok_usd: Option<f64>,
    /// USD per million output tokens.
    pub price_output_per_mtok_usd: Option<f64>,
    /// Cached input tokens cost this fraction of the input price (0..=1).
    pub cache_read_discount: Option<f64>,
    /// Prompt-cache lifetime after the last use, in ms.
    pub cache_ttl_ms: Option<u64>,
    /// Client-side timeout the SDK applies, in ms.
    pub timeout_ms: Option<u64>,
    /// Retries the SDK makes on a retryable error.
    pub max_retries: Option<u32>,
    /// A lower-quality fallback.
    pub degraded: Option<bool>,
}

impl From<ProviderSpec> for ProviderConfig {
    fn from(s: ProviderSpec) -> Self {
        let base = match s.kind {
            ProviderKind::Anthropic => ProviderConfig::anthropic(),
            ProviderKind::OpenAi => ProviderConfig::openai(),
            ProviderKind::Local => ProviderConfig::local(),
        };
        ProviderConfig {
            name: s.name,
            kind: s.kind,
            base_latency_ms: s.base_latency_ms.unwrap_or(base.base_latency_ms),
            latency_per_output_token_us: s.latency_per_output_token_us.unwrap_or(base.latency_per_output_token_us),
            cold_extra_latency_ms: s.cold_extra_latency_ms.unwrap_or(base.cold_extra_latency_ms),
            price_input_per_mtok_usd: s.price_input_per_mtok_usd.unwrap_or(base.price_input_per_mtok_usd),
            price_output_per_mtok_usd: s.price_output_per_mtok_usd.unwrap_or(base.price_output_per_mtok_usd),
            cache_read_discount: s.cache_read_discount.unwrap_or(base.cache_read_discount),
            cache_ttl_ms: s.cache_ttl_ms.unwrap_or(base.cache_ttl_ms),
            timeout_ms: s.timeout_ms.unwrap_or(base.timeout_ms),
            max_retries: s.max_retries.unwrap_or(base.max_retries),
            degraded: s.degraded.unwrap_or(base.degraded),
        }
    }
}

impl ProviderConfig {
    /// Anthropic (Sonnet-class prices, 90 % cache-read discount, 5 min TTL).
    pub fn anthropic() -> Self {
        ProviderConfig {
            name: "anthropic".to_owned(),
            kind: defaults::kind(),
            base_latency_ms: defaults::base_latency_ms(),
            latency_per_output_token_us: defaults::latency_per_output_token_us(),
            cold_extra_latency_ms: defaults::cold_extra_latency_ms(),
            price_input_per_mtok_usd: defaults::price_input_per_mtok_usd(),
            price_output_per_mtok_usd: defaults::price_output_per_mtok_usd(),
            cache_read_discount: defaults::cache_read_discount(),
            cache_ttl_ms: defaults::cache_ttl_ms(),
            timeout_ms: defaults::timeout_ms(),
            max_retries: defaults::max_retries(),
            degraded: defaults::degraded(),
        }
    }

    /// OpenAI (GPT-4o-class prices, cached input at half price).
    pub fn openai() -> Self {
        ProviderConfig {
            name: "openai".to_owned(),
            kind: ProviderKind::OpenAi,
            base_latency_ms: 600,
            latency_per_output_token_us: 12_000,
            cold_extra_latency_ms: 300,
            price_input_per_mtok_usd: 2.5,
            price_output_per_mtok_usd: 10.0,
            cache_read_discount: 0.5,
            ..Self::anthropic()
        }
    }

    /// The self-hosted fallback: free, slower, degraded, with a long timeout
    /// so that it never fails unless an outage is injected explicitly.
    pub fn local() -> Self {
        ProviderConfig {
            name: "local".to_owned(),
            kind: ProviderKind::Local,
            base_latency_ms: 1_500,
            latency_per_output_token_us: 40_000,
            cold_extra_latency_ms: 200,
            price_input_per_mtok_usd: 0.0,
            price_output_per_mtok_usd: 0.0,
            cache_read_discount: 1.0,
            timeout_ms: 600_000,
            degraded: true,
            ..Self::anthropic()
        }
    }
}

/// One model call as the provider sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelRequest {
    /// Hash of the prompt prefix (system prompt + tools): the cache key.
    pub prefix_hash: u64,
    /// Total input tokens, prefix included.
    pub input_tokens: u32,
    /// Tokens of the cacheable prefix (≤ `input_tokens`; 0 = nothing cacheable).
    pub prefix_tokens: u32,
    /// Output tokens the answer will have.
    pub output_tokens: u32,
    /// Number of alternatives the model chooses among (≥ 1).
    pub options: u32,
    /// Defects of the deployed prompt version, per mille: that share of
    /// outputs fail the agent's output validation (a bad deploy). 0 = a good
    /// prompt; the provider then draws nothing extra.
    #[serde(default)]
    pub defect_permille: u16,
    /// The prompt/config version the request is made under (0: the
    /// initial one). The provider ignores it; the harness records when each
    /// version first produced an output (a bad deploy's rollback is timed
    /// from it).
    #[serde(default)]
    pub version: u32,
}

/// An injected failure shape, active during an outage window.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorMode {
    /// 429 `rate_limit_error` / `rate_limit_exceeded` with `retry-after`; transient.
    RateLimited {
        /// Value of the `retry-after` header, in ms.
        retry_after_ms: u64,
    },
    /// Quota or spend limit reached (OpenAI 429 `insufficient_quota`); not retryable.
    QuotaExhausted,
    /// 500 `api_error` / `server_error`.
    ServerError,
    /// 503 service unavailable.
    Unavailable,
    /// Anthropic 529 `overloaded_error` (OpenAI-style APIs answer 503).
    Overloaded,
    /// No answer: the SDK gives up after `timeout_ms`.
    Timeout,
    /// Answers, but latency × `factor` (≥ 1); may exceed the client timeout.
    Slow {
        /// Latency multiplier.
        factor: u32,
    },
    /// HTTP 200, then `event: error` after `after_tokens` streamed tokens.
    StreamError {
        /// Output tokens streamed (and billed) before the error.
        after_tokens: u32,
    },
}

/// The class of a provider failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// 429 rate limit (transient).
    RateLimit,
    /// 429 quota / spend limit (permanent until topped up).
    InsufficientQuota,
    /// 500 internal error.
    Api,
    /// 503 unavailable.
    Unavailable,
    /// 529 (or OpenAI 503) overloaded.
    Overloaded,
    /// Client-side timeout; no response.
    Timeout,
    /// Error event in the middle of a 200 stream.
    StreamError,
}

/// A failed model call as the SDK reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderError {
    /// HTTP status: 0 for a timeout, 200 for a mid-stream error.
    pub status: u16,
    /// Failure class.
    pub kind: ErrorKind,
    /// `retry-after`, in ms, when the provider sent one.
    pub retry_after_ms: Option<u64>,
    /// Whether retrying can succeed (what the SDKs retry on).
    pub retryable: bool,
    /// Billed before the failure (non-zero for stream errors), micro-USD.
    pub cost_micro_usd: u64,
}

/// A successful model call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelReply {
    /// Input tokens, prefix included.
    pub input_tokens: u32,
    /// Input tokens read from the prompt cache.
    pub cached_tokens: u32,
    /// Output tokens.
    pub output_tokens: u32,
    /// Price of the call, micro-USD.
    pub cost_micro_usd: u64,
    /// The alternative chosen, in `0..options`.
    pub decision: u32,
    /// Whether the prompt prefix was cached.
    pub cache_hit: bool,
    /// Whether a degraded (fallback) model answered.
    pub degraded: bool,
    /// The output fails the agent's validation (a defective prompt version).
    pub invalid_output: bool,
}

/// What the caller sees, and when.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelOutcome {
    /// Delay from the request until the caller sees the answer or gives up.
    pub latency_us: Micros,
    /// The answer or the error.
    pub result: Result<ModelReply, ProviderError>,
}

/// Counters for measurement.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderStats {
    /// Calls to [`ProviderMock::handle`].
    pub requests: u64,
    /// Calls that returned an error.
    pub errors: u64,
    /// Input tokens billed.
    pub tokens_in: u64,
    /// Output tokens billed.
    pub tokens_out: u64,
    /// Total billed, micro-USD.
    pub cost_micro_usd: u64,
    /// Calls whose prefix was warm in the prompt cache.
    pub cache_hits: u64,
}

/// An injected outage window, active for `from_us <= now < until_us`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outage {
    /// Failure shape.
    pub mode: ErrorMode,
    /// First affected microsecond.
    pub from_us: Micros,
    /// First unaffected microsecond.
    pub until_us: Micros,
}

#[derive(Clone, Copy, Debug)]
struct CacheEntry {
    prefix_hash: u64,
    expires_us: Micros,
}

/// A sans-IO mock of one provider endpoint.
#[derive(Clone, Debug)]
pub struct ProviderMock {
    cfg: ProviderConfig,
    outages: Vec<Outage>,
    cache: Vec<CacheEntry>,
    cache_outages: Vec<(Micros, Micros)>,
    schema_breaks: crate::components::ledger::SchemaBreaks,
    stats: ProviderStats,
}

impl ProviderMock {
    /// A provider with an empty prompt cache and no outages.
    pub fn new(cfg: ProviderConfig) -> Self {
        let d = cfg.cache_read_discount;
        assert!((0.0..=1.0).contains(&d), "cache_read_discount {d}");
        for p in [cfg.price_input_per_mtok_usd, cfg.price_output_per_mtok_usd] {
            assert!(p.is_finite() && p >= 0.0, "price {p}");
        }
        assert!(cfg.timeout_ms > 0, "timeout_ms must be > 0");
        ProviderMock {
            cfg,
            outages: Vec::new(),
            cache: Vec::with_capacity(CACHE_CAPACITY),
            cache_outages: Vec::new(),
            schema_breaks: crate::components::ledger::SchemaBreaks::default(),
            stats: ProviderStats::default(),
        }
    }

    /// The provider's configuration.
    pub fn config(&self) -> &ProviderConfig {
        &self.cfg
    }

    /// Counters since creation.
    pub fn stats(&self) -> ProviderStats {
        self.stats
    }

    /// The injected outage windows, sorted by start.
    pub fn outages(&self) -> &[Outage] {
        &self.outages
    }

    /// Injects `mode` for `from_us <= now < until_us`. Windows may overlap;
    /// the one that started last wins (ties: the one injected last).
    pub fn set_outage(&mut self, mode: ErrorMode, from_us: Micros, until_us: Micros) {
        assert!(from_us < until_us, "empty outage {from_us}..{until_us}");
        if let ErrorMode::Slow { factor } = mode {
            assert!(factor >= 1, "slow factor must be >= 1");
        }
        let at = self.outages.partition_point(|o| o.from_us <= from_us);
        self.outages.insert(at, Outage { mode, from_us, until_us });
    }

    /// Removes every injected outage.
    pub fn clear_outages(&mut self) {
        self.outages.clear();
    }

    /// A breaking change for a period: answers sent in `[from_us, until_us)`
    /// keep their status but stop matching the documented schema (the same
    /// semantic as [`crate::components::ledger::SideEffectApi::set_schema_break`]).
    pub fn set_schema_break(&mut self, from_us: Micros, until_us: Micros) {
        self.schema_breaks.prune(from_us);
        self.schema_breaks.add(from_us, until_us);
    }

    /// Whether an answer sent at `now_us` is malformed.
    pub fn malformed(&self, now_us: Micros) -> bool {
        self.schema_breaks.active(now_us)
    }

    /// Prompt-cache loss for a period: every request in `[from_us, until_us)`
    /// is cold, and nothing is cached until the period ends.
    pub fn set_cache_outage(&mut self, from_us: Micros, until_us: Micros) {
        assert!(from_us <= until_us, "cache outage ends before it starts");
        self.cache_outages.push((from_us, until_us));
    }

    /// Loses the whole prompt cache (the next call per prefix is cold).
    pub fn clear_cache(&mut self) {
        self.cache.clear();
    }

    /// The outage mode active at `now_us`, if any.
    pub fn active_outage(&self, now_us: Micros) -> Option<ErrorMode> {
        self.outages.iter().take_while(|o| o.from_us <= now_us).filter(|o| now_us < o.until_us).last().map(|o| o.mode)
    }

    /// Serves one model call sent at `now_us`.
    pub fn handle(&mut self, now_us: Micros, req: &ModelRequest, rng: &mut impl Rng) -> ModelOutcome {
        assert!(req.options >= 1, "a model call needs at least one option");
        assert!(req.prefix_tokens <= req.input_tokens, "prefix longer than the input");
        // Always exactly two draws, whatever happens (see module docs).
        let jitter = rng.random_range(JITTER_MIN_PERMILLE..=JITTER_MAX_PERMILLE);
        let decision = rng.random_range(0..req.options);
        let invalid_output = req.defect_permille > 0 && rng.random_range(0..1_000u16) < req.defect_permille;
        self.stats.requests += 1;
        let timeout_us = self.cfg.timeout_ms.saturating_mul(US_PER_MS);
        let outcome = match self.active_outage(now_us) {
            Some(ErrorMode::Timeout) => self.fail(timeout_us, ErrorMode::Timeout, 0),
            Some(ErrorMode::Slow { factor }) => {
                self.generate(now_us, req, jitter, factor, None, (decision, invalid_output))
            }
            Some(ErrorMode::StreamError { after_tokens }) => {
                self.generate(now_us, req, jitter, 1, Some(after_tokens), (decision, invalid_output))
            }
            None => self.generate(now_us, req, jitter, 1, None, (decision, invalid_output)),
            Some(mode) => {
                let base_us = self.cfg.base_latency_ms.saturating_mul(US_PER_MS) * jitter / 1_000;
                self.fail(base_us * ERROR_LATENCY_PERMILLE / 1_000, mode, 0)
            }
        };
        self.stats.errors += u64::from(outcome.result.is_err());
        debug_assert!(outcome.latency_us <= timeout_us, "the SDK gives up");
        outcome
    }

    /// The provider processes the prompt and streams output: success, a slow
    /// answer (latency × `factor`, perhaps past the timeout) or an error event
    /// after `stream_error_after` tokens.
    fn generate(
        &mut self,
        now_us: Micros,
        req: &ModelRequest,
        jitter: u64,
        factor: u32,
        stream_error_after: Option<u32>,
        (decision, invalid_output): (u32, bool),
    ) -> ModelOutcome {
        let cacheable = req.prefix_tokens > 0;
        let cache_down = self.cache_outages.iter().any(|&(from, until)| from <= now_us && now_us < until);
        if cache_down {
            self.cache.clear();
        }
        let cache_hit = cacheable && !cache_down && self.touch_cache(now_us, req.prefix_hash);
        let cached_tokens = if cache_hit { req.prefix_tokens } else { 0 };
        let out = stream_error_after.map_or(req.output_tokens, |n| n.min(req.output_tokens));
        let c = &self.cfg;
        let nominal_us =
            c.base_latency_ms.saturating_mul(US_PER_MS) + c.latency_per_output_token_us.saturating_mul(u64::from(out));
        let cold_us = c.cold_extra_latency_ms.saturating_mul(US_PER_MS) * u64::from(cacheable && !cache_hit);
        let latency_us = (nominal_us * jitter / 1_000 + cold_us).saturating_mul(u64::from(factor));
        let timeout_us = c.timeout_ms.saturating_mul(US_PER_MS);
        if latency_us > timeout_us {
            return self.fail(timeout_us, ErrorMode::Timeout, 0);
        }
        let cost = self.cost(req.input_tokens, cached_tokens, out);
        self.stats.tokens_in += u64::from(req.input_tokens);
        self.stats.tokens_out += u64::from(out);
        self.stats.cost_micro_usd += cost;
        self.stats.cache_hits += u64::from(cache_hit);
        if let Some(after_tokens) = stream_error_after {
            return self.fail(latency_us, ErrorMode::StreamError { after_tokens }, cost);
        }
        let (input_tokens, output_tokens, degraded) = (req.input_tokens, out, c.degraded);
        let cost_micro_usd = cost;
        let reply = ModelReply {
            input_tokens,
            cached_tokens,
            output_tokens,
            cost_micro_usd,
            decision,
            cache_hit,
            degraded,
            invalid_output,
        };
        ModelOutcome { latency_us, result: Ok(reply) }
    }

    /// Looks `prefix_hash` up and refreshes its expiry; true when warm.
    fn touch_cache(&mut self, now_us: Micros, prefix_hash: u64) -> bool {
        let expires_us = now_us.saturating_add(self.cfg.cache_ttl_ms.saturating_mul(US_PER_MS));
        let mut free = None;
        for (i, e) in self.cache.iter_mut().enumerate() {
            if e.prefix_hash == prefix_hash {
                let warm = now_us < e.expires_us;
                e.expires_us = expires_us;
                return warm;
            }
            if free.is_none() && e.expires_us <= now_us {
                free = Some(i);
            }
        }
        let entry = CacheEntry { prefix_hash, expires_us };
        match free {
            Some(i) => self.cache[i] = entry,
            None if self.cache.len() < CACHE_CAPACITY => self.cache.push(entry),
            None => {
                let soonest = self.cache.iter_mut().min_by_key(|e| e.expires_us);
                *soonest.expect("cache is full, so not empty") = entry;
            }
        }
        debug_assert!(self.cache.len() <= CACHE_CAPACITY);
        false
    }

    /// Price in micro-USD: tokens × USD/Mtok is exactly micro-USD.
    fn cost(&self, input: u32, cached: u32, output: u32) -> u64 {
        debug_assert!(cached <= input);
        let c = &self.cfg;
        let micro = f64::from(input - cached) * c.price_input_per_mtok_usd
            + f64::from(cached) * c.price_input_per_mtok_usd * c.cache_read_discount
            + f64::from(output) * c.price_output_per_mtok_usd;
        micro.round() as u64
    }

    /// The outcome of a failed call: the error the SDK reports for `mode`.
    fn fail(&self, latency_us: Micros, mode: ErrorMode, cost_micro_usd: u64) -> ModelOutcome {
        use ErrorKind as K;
        let overloaded = if self.cfg.kind == ProviderKind::Anthropic { 529 } else { 503 };
        let (status, kind) = match mode {
            ErrorMode::RateLimited { .. } => (429, K::RateLimit),
            ErrorMode::QuotaExhausted => (429, K::InsufficientQuota),
            ErrorMode::ServerError => (500, K::Api),
            ErrorMode::Unavailable => (503, K::Unavailable),
            ErrorMode::Overloaded => (overloaded, K::Overloaded),
            ErrorMode::Timeout | ErrorMode::Slow { .. } => (0, K::Timeout),
            ErrorMode::StreamError { .. } => (200, K::StreamError),
        };
        let retry_after_ms = match mode {
            ErrorMode::RateLimited { retry_after_ms } => Some(retry_after_ms),
            _ => None,
        };
        let retryable = kind != K::InsufficientQuota;
        let err = ProviderError { status, kind, retry_after_ms, retryable, cost_micro_usd };
        ModelOutcome { latency_us, result: Err(err) }
    }

    /// The provider's error body for `err`, as JSON text (HTTP edge only;
    /// allocates). Anthropic: `{"type":"error","error":{"type","message"},
    /// "request_id"}` (a spend limit adds `error.details.error_code`);
    /// OpenAI and local: `{"error":{"message","type","param","code"}}`.
    /// For a stream error this is the `data:` of the `event: error`; for a
    /// timeout (no response) the body the SDK would synthesise.
    pub fn error_body_json(&self, err: &ProviderError) -> String {
        use ErrorKind as K;
        const SPEND: &str = "enforced_spend_limit_reached";
        const QUOTA: &str = "insufficient_quota";
        const RATE: &str = "rate_limit_exceeded";
        const SERVER: &str = "server_error";
        let anthropic = self.cfg.kind == ProviderKind::Anthropic;
        let (ty, code, message) = match (anthropic, err.kind) {
            (true, K::RateLimit) => ("rate_limit_error", None, "Rate limit exceeded."),
            (true, K::InsufficientQuota) => ("rate_limit_error", Some(SPEND), "Spend limit."),
            (true, K::Api) => ("api_error", None, "Internal server error."),
            (true, K::Unavailable) => ("api_error", None, "Service unavailable."),
            (true, K::Overloaded | K::StreamError) => ("overloaded_error", None, "Overloaded"),
            (true, K::Timeout) => ("timeout_error", None, "Request timed out."),
            (false, K::RateLimit) => ("requests", Some(RATE), "Rate limit reached."),
            (false, K::InsufficientQuota) => (QUOTA, Some(QUOTA), "You exceeded your quota."),
            (false, K::Api | K::StreamError) => (SERVER, None, "The server had an error."),
            (false, K::Unavailable) => (SERVER, None, "Service unavailable."),
            (false, K::Overloaded) => (SERVER, None, "The engine is currently overloaded."),
            (false, K::Timeout) => ("timeout", None, "Request timed out."),
        };
        let body = if anthropic {
            let mut error = serde_json::json!({ "type": ty, "message": message });
            if let Some(code) = code {
                error["details"] = serde_json::json!({ "error_code": code });
            }
            let request_id = format!("req_{:024x}", self.stats.requests);
            serde_json::json!({ "type": "error", "error": error, "request_id": request_id })
        } else {
            let error = serde_json::json!({ "message": message, "type": ty, "param": null, "code": code });
            serde_json::json!({ "error": error })
        };
        body.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ErrorKind as K;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    /// A request with prefix `hash` (4000 of 5000 input tokens cacheable).
    fn req(hash: u64, output_tokens: u32) -> ModelRequest {
        let (input_tokens, prefix_tokens, options) = (5_000, 4_000, 4);
        ModelRequest {
            prefix_hash: hash,
            input_tokens,
            prefix_tokens,
            output_tokens,
            options,
            defect_permille: 0,
            version: 0,
        }
    }

    fn rng(seed: u64) -> ChaCha8Rng {
        ChaCha8Rng::seed_from_u64(seed)
    }

    fn ok(p: &mut ProviderMock, t: Micros, hash: u64, r: &mut ChaCha8Rng) -> ModelReply {
        p.handle(t, &req(hash, 500), r).result.expect("success")
    }

    #[test]
    fn warm_call_is_cheaper_and_faster_by_exactly_the_cold_penalty() {
        // Same seeds on both sides, so every pair of calls draws the same jitter.
        let mut a = ProviderMock::new(ProviderConfig::anthropic());
        let mut b = a.clone();
        let (ra, rb) = (&mut rng(1), &mut rng(1));
        assert!(!ok(&mut a, 0, 7, ra).cache_hit && !ok(&mut b, 0, 7, rb).cache_hit);
        let (warm, cold) = (ok(&mut a, 1, 7, ra), ok(&mut b, 1, 8, rb));
        assert!(warm.cache_hit && !cold.cache_hit);
        assert_eq!((warm.cached_tokens, cold.cached_tokens), (4_000, 0));
        // 5000 × 3 + 500 × 15 cold; 1000 × 3 + 4000 × 0.3 + 500 × 15 warm.
        assert_eq!((cold.cost_micro_usd, warm.cost_micro_usd), (22_500, 11_700));
        let warm = a.handle(2, &req(7, 500), &mut rng(9)).latency_us;
        let cold = b.handle(2, &req(9, 500), &mut rng(9)).latency_us;
        assert_eq!(cold - warm, 500 * US_PER_MS);
        assert_eq!((a.stats().cache_hits, b.stats().cache_hits), (2, 0));
    }

    #[test]
    fn cache_expires_at_ttl_and_can_be_lost() {
        let (mut p, r) = (ProviderMock::new(ProviderConfig::anthropic()), &mut rng(2));
        let ttl = 300_000 * US_PER_MS;
        assert!(!ok(&mut p, 0, 7, r).cache_hit);
        assert!(ok(&mut p, ttl - 1, 7, r).cache_hit, "warm, refreshed");
        assert!(ok(&mut p, 2 * ttl - 2, 7, r).cache_hit);
        assert!(!ok(&mut p, 3 * ttl - 2, 7, r).cache_hit, "cold exactly at expiry");
        p.clear_cache();
        assert!(!ok(&mut p, 3 * ttl, 7, r).cache_hit);
    }

    #[test]
    fn latency_has_bounded_jitter() {
        let (mut p, r) = (ProviderMock::new(ProviderConfig::openai()), &mut rng(3));
        let no_prefix = ModelRequest { prefix_tokens: 0, ..req(7, 500) };
        let nominal = 600 * US_PER_MS + 12_000 * 500;
        let lat: Vec<Micros> = (0..200).map(|t| p.handle(t, &no_prefix, r).latency_us).collect();
        assert!(lat.iter().all(|l| (nominal * 8 / 10..=nominal * 12 / 10).contains(l)));
        assert!(lat.iter().any(|&l| l != lat[0]), "jitter varies");
    }

    fn body(p: &ProviderMock, e: &ProviderError) -> serde_json::Value {
        serde_json::from_str(&p.error_body_json(e)).expect("valid JSON")
    }

    type Str = &'static str;
    /// Mode, Anthropic status, OpenAI status, kind, retryable,
    /// Anthropic `error.type`, OpenAI `error.type`, OpenAI `error.code`.
    type Case = (ErrorMode, u16, u16, K, bool, Str, Str, Option<Str>);

    #[rustfmt::skip]
    const CASES: [Case; 7] = [
        (ErrorMode::RateLimited { retry_after_ms: 2_000 }, 429, 429, K::RateLimit, true,
            "rate_limit_error", "requests", Some("rate_limit_exceeded")),
        (ErrorMode::QuotaExhausted, 429, 429, K::InsufficientQuota, false,
            "rate_limit_error", "insufficient_quota", Some("insufficient_quota")),
        (ErrorMode::ServerError, 500, 500, K::Api, true, "api_error", "server_error", None),
        (ErrorMode::Unavailable, 503, 503, K::Unavailable, true, "api_error", "server_error", None),
        (ErrorMode::Overloaded, 529, 503, K::Overloaded, true,
            "overloaded_error", "server_error", None),
        (ErrorMode::Timeout, 0, 0, K::Timeout, true, "timeout_error", "timeout", None),
        (ErrorMode::StreamError { after_tokens: 100 }, 200, 200, K::StreamError, true,
            "overloaded_error", "server_error", None),
    ];

    #[test]
    fn error_modes_have_documented_status_kind_and_body() {
        for (mode, status_a, status_o, kind, retryable, type_a, type_o, code_o) in CASES {
            let mut a = ProviderMock::new(ProviderConfig::anthropic());
            let mut o = ProviderMock::new(ProviderConfig::openai());
            a.set_outage(mode, 0, US_PER_MS);
            o.set_outage(mode, 0, US_PER_MS);
            let ea = a.handle(0, &req(7, 500), &mut rng(4)).result.unwrap_err();
            let eo = o.handle(0, &req(7, 500), &mut rng(4)).result.unwrap_err();
            assert_eq!((ea.status, eo.status), (status_a, status_o), "{mode:?}");
            assert_eq!((ea.kind, ea.retryable), (kind, retryable), "{mode:?}");
            assert_eq!((eo.kind, eo.retryable), (kind, retryable), "{mode:?}");
            let rate_limited = matches!(mode, ErrorMode::RateLimited { .. });
            assert_eq!(ea.retry_after_ms, rate_limited.then_some(2_000));
            assert_eq!(ea.cost_micro_usd > 0, kind == K::StreamError, "{mode:?}");
            let ba = body(&a, &ea);
            assert_eq!((&ba["type"], &ba["error"]["type"]), (&"error".into(), &type_a.into()));
            assert!(ba["error"]["message"].is_string() && ba["request_id"].is_string());
            let bo = &body(&o, &eo)["error"];
            assert_eq!((&bo["type"], &bo["code"]), (&type_o.into(), &code_o.into()), "{mode:?}");
            assert!(bo["message"].is_string() && bo["param"].is_null());
        }
    }

    #[test]
    fn stream_error_bills_partial_output() {
        let mut p = ProviderMock::new(ProviderConfig::anthropic());
        p.set_outage(ErrorMode::StreamError { after_tokens: 100 }, 0, 10);
        let e = p.handle(0, &req(7, 500), &mut rng(5)).result.unwrap_err();
        assert_eq!(e.cost_micro_usd, 5_000 * 3 + 100 * 15);
        let s = p.stats();
        assert_eq!((s.errors, s.tokens_in, s.tokens_out), (1, 5_000, 100));
        assert_eq!(s.cost_micro_usd, e.cost_micro_usd);
    }

    #[test]
    fn outage_window_starts_and_ends_at_the_exact_microsecond() {
        let (mut p, r) = (ProviderMock::new(ProviderConfig::openai()), &mut rng(6));
        p.set_outage(ErrorMode::Unavailable, 5_000, 6_000);
        p.set_outage(ErrorMode::ServerError, 1_000, 2_000);
        let times = [999, 1_000, 1_999, 2_000, 4_999, 5_000, 5_999, 6_000];
        let seen = times.map(|t| p.handle(t, &req(7, 1), r).result.err().map(|e| e.status));
        let want = [None, Some(500), Some(500), None, None, Some(503), Some(503), None];
        assert_eq!(seen, want);
        assert_eq!((p.stats().requests, p.stats().errors), (8, 4));
    }

    #[test]
    fn timeout_and_slow_modes() {
        let mut p = ProviderMock::new(ProviderConfig::anthropic());
        p.set_outage(ErrorMode::Timeout, 0, 10);
        p.set_outage(ErrorMode::Slow { factor: 2 }, 10, 20);
        p.set_outage(ErrorMode::Slow { factor: 100 }, 20, 30);
        let timeout = p.handle(0, &req(7, 500), &mut rng(7));
        assert_eq!(timeout.latency_us, 60_000 * US_PER_MS);
        assert_eq!(timeout.result.unwrap_err().kind, K::Timeout);
        let slow = p.handle(10, &req(8, 500), &mut rng(7));
        let normal = ProviderMock::new(ProviderConfig::anthropic()).handle(10, &req(8, 500), &mut rng(7));
        assert_eq!(slow.latency_us, 2 * normal.latency_us);
        assert_eq!(slow.result, normal.result);
        let too_slow = p.handle(20, &req(9, 500), &mut rng(7));
        assert_eq!(too_slow.latency_us, 60_000 * US_PER_MS);
        assert_eq!(too_slow.result.unwrap_err().status, 0);
    }

    #[test]
    fn deterministic_given_a_seed() {
        let run = |seed| {
            let (mut p, r) = (ProviderMock::new(ProviderConfig::anthropic()), &mut rng(seed));
            p.set_outage(ErrorMode::Overloaded, 50 * US_PER_MS, 80 * US_PER_MS);
            let calls = 0..100u64;
            calls.map(|i| p.handle(i * US_PER_MS, &req(i % 3, 500), r)).collect::<Vec<_>>()
        };
        assert_eq!(run(42), run(42));
        assert_ne!(run(42), run(43));
    }

    #[test]
    fn local_is_free_degraded_and_config_round_trips() {
        let mut p = ProviderMock::new(ProviderConfig::local());
        let reply = p.handle(0, &req(7, 4_000), &mut rng(8)).result.unwrap();
        assert!(reply.degraded && reply.cost_micro_usd == 0 && reply.decision < 4);
        let cfg: ProviderConfig = serde_json::from_str(r#"{"name":"x","kind":"openai"}"#).unwrap();
        let want = ProviderConfig { name: "x".into(), ..ProviderConfig::openai() };
        assert_eq!(cfg.kind, want.kind);
        assert_eq!(cfg.timeout_ms, want.timeout_ms);
        assert!(serde_json::from_str::<ProviderConfig>(r#"{"name":"x","bogus":1}"#).is_err());
    }
}
