//! Provider router: priority order, a circuit breaker per provider, SDK-style
//! retries with backoff, and failover to the next provider.
//!
//! # Design
//!
//! The router is sans-IO. A model call is a small state machine,
//! [`RouterCall`], that the caller (a simulated worker, or the HTTP edge)
//! drives: it asks [`RouterCall::next`] what to do, performs it, and reports
//! back.
//!
//! ```text
//! let mut call = router.start(now);
//! let mut last = None;
//! loop {
//!     match call.next(&mut router, now, last.take()) {
//!         Step::Send { provider, .. } => { /* send; later */ last = Some(result) }
//!         Step::Wait { until_us } => { /* sleep until until_us */ }
//!         Step::Done { provider } => break,        // success
//!         Step::GiveUp { all_open } => break,      // no provider answered
//!     }
//! }
//! ```
//!
//! Semantics, matching the reference stack in the domain brief:
//! - providers are tried in priority order (index 0 first); with breakers on,
//!   a provider whose breaker does not allow a request is skipped;
//! - on a retryable error the same provider is retried up to its
//!   `max_retries` (the SDK's own retries), waiting `retry-after` when the
//!   provider sent one of at most [`MAX_RETRY_AFTER_MS`], otherwise
//!   `backoff_base_ms × 2^attempt` capped at [`MAX_BACKOFF_MS`]. There is no
//!   jitter: the simulation stays deterministic, and synchronised retries are
//!   the pessimistic case;
//! - when the retries are exhausted, or the error is not retryable, the
//!   provider's breaker records **one** failure (the breaker wraps the SDK
//!   call, retries included) and the call moves to the next provider;
//! - `Ok` records a success (closing a half-open breaker);
//! - the call gives up when every provider has been tried or skipped.
//!
//! Anti-pattern switches ([`RouterPolicy`]): with `breakers: false` no
//! provider is ever skipped and no breaker is fed (every call pays the full
//! retry budget on a dead provider: the retry storm); with `fallback: false`
//! only provider 0 is used, and the call returns [`Step::GiveUp`] once its
//! retries are exhausted. The router never restarts a call itself: retrying
//! the whole model call later is the caller's (the worker's) decision.
//!
//! [`RouterSettings`] and [`Router::from_settings`] build a router from a
//! stack's configuration; the stack's `Policy` maps onto [`RouterPolicy`]
//! (`provider_router` → `fallback`, `circuit_breakers` → `breakers`).
//!
//! The breaker keeps its failure timestamps in a ring allocated once, at its
//! first failure, and the router's transition log only grows when a breaker
//! changes state (rare): driving calls does not allocate, and neither does
//! a breaker that never sees a failure. [`Router::take_transitions`] drains
//! that log for the drill report ("breaker opened at t": the detection part
//! of the RTO for a provider outage).

use serde::{Deserialize, Serialize};

use crate::components::ids::{Micros, US_PER_MS};
use crate::components::provider::{ModelReply, ProviderConfig, ProviderError};

/// Longest `retry-after` the SDKs honour; a longer one falls back to backoff.
pub const MAX_RETRY_AFTER_MS: u64 = 60_000;
/// Cap on the exponential backoff between retries (the SDKs use 8 s).
pub const MAX_BACKOFF_MS: u64 = 8_000;
/// The SDKs' initial retry delay.
pub const DEFAULT_BACKOFF_BASE_MS: u64 = 500;

/// Circuit-breaker parameters (defaults: 3 failures in 60 s, open for 60 s).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerConfig {
    /// Failures within `window_ms` that open the breaker (≥ 1).
    pub failure_threshold: u32,
    /// Sliding window over which failures are counted, in ms.
    pub window_ms: u64,
    /// Time an open breaker waits before letting a trial through, in ms.
    pub open_ms: u64,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig { failure_threshold: 3, window_ms: 60_000, open_ms: 60_000 }
    }
}

/// A breaker's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum BreakerState {
    /// Requests flow; failures are counted.
    Closed,
    /// Requests are refused until `since_us + open_ms`.
    Open {
        /// When it opened.
        since_us: Micros,
    },
    /// One trial request is allowed; its success closes, its failure re-opens.
    HalfOpen,
}

/// A circuit breaker for one provider.
#[derive(Clone, Debug)]
pub struct Breaker {
    cfg: BreakerConfig,
    state: BreakerState,
    /// Ring of the most recent failure times; capacity = threshold,
    /// allocated at the first failure (most breakers never see one).
    failures: Vec<Micros>,
    /// Next slot to write in `failures`.
    head: usize,
    /// Occupied slots in `failures`.
    len: usize,
    /// When the current half-open trial was let through.
    trial_since: Option<Micros>,
}

impl Breaker {
    /// A closed breaker. Panics if `failure_threshold` is 0.
    pub fn new(cfg: BreakerConfig) -> Self {
        assert!(cfg.failure_threshold >= 1, "failure_threshold must be >= 1");
        Breaker { cfg, state: BreakerState::Closed, failures: Vec::new(), head: 0, len: 0, trial_since: None }
    }

    /// Current state (without advancing Open → HalfOpen; see [`Breaker::allows`]).
    pub fn state(&self) -> BreakerState {
        self.state
    }

    /// Failures recorded within the window ending at `now_us` (inclusive:
    /// a failure exactly `window_ms` ago still counts).
    pub fn failures_in_window(&self, now_us: Micros) -> u32 {
        let window_us = self.cfg.window_ms.saturating_mul(US_PER_MS);
        let n = self.failures[..self.len].iter().filter(|&&t| now_us.saturating_sub(t) <= window_us).count();
        n as u32
    }

    /// Whether a request may go to the provider now. An open breaker whose
    /// `open_ms` has elapsed turns half-open and lets this request through as
    /// the trial; further requests are refused until the trial reports. A
    /// trial that never reports (its caller died) is replaced after `open_ms`.
    pub fn allows(&mut self, now_us: Micros) -> bool {
        let open_us = self.cfg.open_ms.saturating_mul(US_PER_MS);
        match self.state {
            BreakerState::Closed => true,
            BreakerState::Open { since_us } if now_us >= since_us + open_us => {
                self.state = BreakerState::HalfOpen;
                self.trial_since = Some(now_us);
                true
            }
            BreakerState::Open { .. } => false,
            BreakerState::HalfOpen => match self.trial_since {
                Some(t) if now_us < t + open_us => false,
                _ => {
                    self.trial_since = Some(now_us);
                    true
                }
            },
        }
    }

    /// Records a success: a half-open breaker closes with a clean slate. A
    /// late success while open (sent before it opened) changes nothing.
    pub fn on_success(&mut self, _now_us: Micros) {
        if self.state == BreakerState::HalfOpen {
            self.state = BreakerState::Closed;
            self.trial_since = None;
            self.head = 0;
            self.len = 0;
        }
    }

    /// Records a failure; returns true when this failure opened the breaker
    /// (the threshold was reached, or a half-open trial failed). A late
    /// failure while already open changes nothing.
    pub fn on_failure(&mut self, now_us: Micros) -> bool {
        match self.state {
            BreakerState::Open { .. } => false,
            BreakerState::HalfOpen => {
                self.open(now_us);
                true
            }
            BreakerState::Closed => {
                if self.failures.is_empty() {
                    self.failures = vec![0; self.cfg.failure_threshold as usize];
                }
                let cap = self.failures.len();
                self.failures[self.head] = now_us;
                self.head = (self.head + 1) % cap;
                self.len = (self.len + 1).min(cap);
                debug_assert!(self.len <= cap && self.head < cap);
                if self.failures_in_window(now_us) >= self.cfg.failure_threshold {
                    self.open(now_us);
                    true
                } else {
                    false
                }
            }
        }
    }

    fn open(&mut self, now_us: Micros) {
        self.state = BreakerState::Open { since_us: now_us };
        self.trial_since = None;
        self.head = 0;
        self.len = 0;
    }
}

/// The SDK retry settings of one provider.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderRetry {
    /// Retries after the first attempt on a retryable error.
    pub max_retries: u32,
    /// First backoff delay, doubled on each retry, in ms.
    pub backoff_base_ms: u64,
}

impl ProviderRetry {
    /// The provider's `max_retries` with the SDKs' default backoff.
    pub fn from_config(cfg: &ProviderConfig) -> Self {
        ProviderRetry { max_retries: cfg.max_retries, backoff_base_ms: DEFAULT_BACKOFF_BASE_MS }
    }

    /// Delay before retry number `attempt + 1` after attempt `attempt` failed.
    pub fn delay_ms(&self, attempt: u32, retry_after_ms: Option<u64>) -> u64 {
        match retry_after_ms {
            Some(ms) if ms <= MAX_RETRY_AFTER_MS => ms,
            _ => {
                let factor = 1u64.checked_shl(attempt).unwrap_or(u64::MAX);
                self.backoff_base_ms.saturating_mul(factor).min(MAX_BACKOFF_MS.max(self.backoff_base_ms))
            }
        }
    }
}

/// Router switches; both on in the reference stack.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RouterPolicy {
    /// Use circuit breakers (anti-pattern 11 turns them off).
    pub breakers: bool,
    /// Use the providers after the first (anti-pattern 10 is one provider).
    pub fallback: bool,
}

impl Default for RouterPolicy {
    fn default() -> Self {
        RouterPolicy { breakers: true, fallback: true }
    }
}

impl From<crate::components::policy::Policy> for RouterPolicy {
    /// The stack's switches: `provider_router` (off = anti-pattern 10) and
    /// `circuit_breakers` (off = anti-pattern 11).
    fn from(p: crate::components::policy::Policy) -> Self {
        RouterPolicy { breakers: p.circuit_breakers, fallback: p.provider_router }
    }
}

/// Router configuration as a stack's settings carry it: see
/// [`Router::from_settings`]. Default: 3 providers (anthropic, openai,
/// local) with the SDK defaults and the reference breaker.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RouterSettings {
    /// Breaker parameters, the same for every provider.
    pub breaker: BreakerConfig,
    /// SDK retry settings per provider, in priority order.
    pub providers: Vec<ProviderRetry>,
}

impl RouterSettings {
    /// The reference breaker over `providers`' own retry settings.
    pub fn for_providers(providers: &[ProviderConfig]) -> Self {
        let providers = providers.iter().map(ProviderRetry::from_config).collect();
        RouterSettings { breaker: BreakerConfig::default(), providers }
    }
}

impl Default for RouterSettings {
    fn default() -> Self {
        let cfgs = [ProviderConfig::anthropic(), ProviderConfig::openai(), ProviderConfig::local()];
        Self::for_providers(&cfgs)
    }
}

/// The result of one attempt, as reported to [`RouterCall::next`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttemptResult {
    /// The provider answered.
    Ok,
    /// The provider failed.
    Err {
        /// Whether the SDK would retry it.
        retryable: bool,
        /// The provider's `retry-after`, in ms.
        retry_after_ms: Option<u64>,
        /// HTTP status (0 for a timeout).
        status: u16,
    },
}

impl AttemptResult {
    /// Converts a provider mock's result.
    pub fn from_result(result: &Result<ModelReply, ProviderError>) -> Self {
        match result {
            Ok(_) => AttemptResult::Ok,
            Err(e) => AttemptResult::Err { retryable: e.retryable, retry_after_ms: e.retry_after_ms, status: e.status },
        }
    }
}

/// What the caller of [`RouterCall::next`] must do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Step {
    /// Send the request to provider `provider`; `attempt` 0 is the first try.
    Send {
        /// Provider index.
        provider: usize,
        /// Attempt number on this provider.
        attempt: u32,
    },
    /// Sleep until `until_us`, then call `next` again with `last = None`.
    Wait {
        /// Wake-up time.
        until_us: Micros,
    },
    /// The call succeeded on `provider`; the call is finished.
    Done {
        /// Provider that answered.
        provider: usize,
    },
    /// Every provider was tried or skipped; the call is finished.
    GiveUp {
        /// True when no provider was even attempted (all breakers refused).
        all_open: bool,
    },
}

/// A breaker state change, for the drill's log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BreakerTransition {
    /// Provider index.
    pub provider: usize,
    /// When it happened.
    pub at_us: Micros,
    /// State before.
    pub from: BreakerState,
    /// State after.
    pub to: BreakerState,
}

/// Router-wide counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouterStats {
    /// Calls started.
    pub calls: u64,
    /// Calls that ended in [`Step::Done`].
    pub successes: u64,
    /// Calls that ended in [`Step::GiveUp`].
    pub give_ups: u64,
    /// Providers skipped because their breaker refused.
    pub skips: u64,
}

/// Routes model calls over providers in priority order.
#[derive(Clone, Debug)]
pub struct Router {
    breakers: Vec<Breaker>,
    retry: Vec<ProviderRetry>,
    policy: RouterPolicy,
    transitions: Vec<BreakerTransition>,
    attempts: Vec<u64>,
    stats: RouterStats,
}

impl Router {
    /// A router over `providers.len()` providers (index = priority), each
    /// with its SDK retry settings. Panics on an empty slice.
    pub fn new(providers: &[ProviderRetry], breaker: BreakerConfig, policy: RouterPolicy) -> Self {
        assert!(!providers.is_empty(), "a router needs providers");
        Router {
            breakers: providers.iter().map(|_| Breaker::new(breaker)).collect(),
            retry: providers.to_vec(),
            policy,
            transitions: Vec::new(),
            attempts: vec![0; providers.len()],
            stats: RouterStats::default(),
        }
    }

    /// A router from a stack's settings; `policy` is a [`RouterPolicy`] or
    /// the stack's [`crate::components::policy::Policy`].
    pub fn from_settings(settings: &RouterSettings, policy: impl Into<RouterPolicy>) -> Self {
        Router::new(&settings.providers, settings.breaker, policy.into())
    }

    /// Number of providers.
    pub fn n_providers(&self) -> usize {
        self.breakers.len()
    }

    /// The policy switches.
    pub fn policy(&self) -> RouterPolicy {
        self.policy
    }

    /// Provider `provider`'s breaker.
    pub fn breaker(&self, provider: usize) -> &Breaker {
        &self.breakers[provider]
    }

    /// Requests sent to each provider (retries included).
    pub fn attempts(&self) -> &[u64] {
        &self.attempts
    }

    /// Router-wide counters.
    pub fn stats(&self) -> RouterStats {
        self.stats
    }

    /// Drains the breaker transitions recorded since the last call.
    pub fn take_transitions(&mut self) -> impl Iterator<Item = BreakerTransition> + '_ {
        self.transitions.drain(..)
    }

    /// Starts a model call at `now_us`.
    pub fn start(&mut self, now_us: Micros) -> RouterCall {
        self.stats.calls += 1;
        RouterCall { started_us: now_us, next_provider: 0, phase: Phase::Pick, attempted: false, last_status: None }
    }

    /// Runs `f` on a breaker and logs a transition if its state changed.
    fn on_breaker<R>(&mut self, provider: usize, now_us: Micros, f: impl FnOnce(&mut Breaker) -> R) -> R {
        let from = self.breakers[provider].state();
        let r = f(&mut self.breakers[provider]);
        let to = self.breakers[provider].state();
        if from != to {
            self.transitions.push(BreakerTransition { provider, at_us: now_us, from, to });
        }
        r
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Looking for the next usable provider from `next_provider` on.
    Pick,
    /// Attempt `.1` sent to provider `.0`; its result is awaited.
    Sent(usize, u32),
    /// Attempt `.1` on provider `.0` is due at `.2`.
    Waiting(usize, u32, Micros),
    /// Done or given up.
    Finished,
}

/// One model call in progress; see the module docs for the protocol.
#[derive(Clone, Copy, Debug)]
pub struct RouterCall {
    started_us: Micros,
    next_provider: usize,
    phase: Phase,
    attempted: bool,
    last_status: Option<u16>,
}

impl RouterCall {
    /// When the call started.
    pub fn started_us(&self) -> Micros {
        self.started_us
    }

    /// The status of the last failed attempt, if any.
    pub fn last_status(&self) -> Option<u16> {
        self.last_status
    }

    /// Whether the call has returned [`Step::Done`] or [`Step::GiveUp`].
    pub fn is_finished(&self) -> bool {
        self.phase == Phase::Finished
    }

    /// Advances the call. `last` is the result of the previous
    /// [`Step::Send`], and must be `None` after a [`Step::Wait`] and on the
    /// first call. Panics on protocol misuse or after the call finished.
    pub fn next(&mut self, router: &mut Router, now_us: Micros, last: Option<AttemptResult>) -> Step {
        match self.phase {
            Phase::Pick => {
                assert!(last.is_none(), "no attempt is outstanding");
                self.pick(router, now_us)
            }
            Phase::Sent(provider, attempt) => match last.expect("the Send's result") {
                AttemptResult::Ok => {
                    if router.policy.breakers {
                        router.on_breaker(provider, now_us, |b| b.on_success(now_us));
                    }
                    router.stats.successes += 1;
                    self.phase = Phase::Finished;
                    Step::Done { provider }
                }
                AttemptResult::Err { retryable, retry_after_ms, status } => {
                    self.last_status = Some(status);
                    let retry = router.retry[provider];
                    if retryable && attempt < retry.max_retries {
                        let until_us = now_us + retry.delay_ms(attempt, retry_after_ms) * US_PER_MS;
                        self.phase = Phase::Waiting(provider, attempt + 1, until_us);
                        return Step::Wait { until_us };
                    }
                    if router.policy.breakers {
                        router.on_breaker(provider, now_us, |b| b.on_failure(now_us));
                    }
                    self.next_provider = provider + 1;
                    self.pick(router, now_us)
                }
            },
            Phase::Waiting(provider, attempt, until_us) => {
                assert!(last.is_none(), "no attempt is outstanding while waiting");
                if now_us < until_us {
                    return Step::Wait { until_us };
                }
                self.send(router, provider, attempt)
            }
            Phase::Finished => panic!("RouterCall::next after the call finished"),
        }
    }

    fn send(&mut self, router: &mut Router, provider: usize, attempt: u32) -> Step {
        debug_assert!(provider < router.n_providers());
        debug_assert!(attempt <= router.retry[provider].max_retries);
        router.attempts[provider] += 1;
        self.attempted = true;
        self.phase = Phase::Sent(provider, attempt);
        Step::Send { provider, attempt }
    }

    /// Sends to the first usable provider from `next_provider` on, or gives up.
    fn pick(&mut self, router: &mut Router, now_us: Micros) -> Step {
        let limit = if router.policy.fallback { router.n_providers() } else { 1 };
        while self.next_provider < limit {
            let p = self.next_provider;
            if !router.policy.breakers || router.on_breaker(p, now_us, |b| b.allows(now_us)) {
                return self.send(router, p, 0);
            }
            router.stats.skips += 1;
            self.next_provider += 1;
        }
        self.phase = Phase::Finished;
        router.stats.give_ups += 1;
        Step::GiveUp { all_open: !self.attempted }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::components::ids::US_PER_S;
    use crate::components::provider::{ErrorMode, ModelRequest, ProviderMock};
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    const S: Micros = US_PER_S;

    fn send(provider: usize, attempt: u32) -> Step {
        Step::Send { provider, attempt }
    }

    fn open(since_us: Micros) -> BreakerState {
        BreakerState::Open { since_us }
    }

    #[test]
    fn breaker_opens_on_third_failure_within_window_only() {
        let mut b = Breaker::new(BreakerConfig::default());
        assert!(!b.on_failure(0) && !b.on_failure(30 * S));
        assert_eq!(b.failures_in_window(59 * S), 2);
        assert!(b.on_failure(59 * S), "third failure within 60 s opens");
        assert_eq!(b.state(), open(59 * S));
        let mut b = Breaker::new(BreakerConfig::default());
        for i in 0..10 {
            assert!(!b.on_failure(i * 61 * S), "failures 61 s apart never open");
        }
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(!b.on_failure(640 * S) && !b.on_failure(650 * S));
        assert!(b.on_failure(700 * S), "three within 60 s (inclusive) do");
    }

    #[test]
    fn half_open_lets_one_trial_through() {
        let mut b = Breaker::new(BreakerConfig::default());
        let opened: Vec<bool> = (0..3).map(|t| b.on_failure(t)).collect();
        assert_eq!(opened, [false, false, true]);
        let t = 2;
        assert!(!b.allows(t + 60 * S - 1));
        assert!(b.allows(t + 60 * S), "half-open after 60 s");
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert!(!b.allows(t + 60 * S + 1), "only one trial");
        assert!(b.on_failure(t + 61 * S), "a failed trial re-opens");
        assert_eq!(b.state(), open(t + 61 * S));
        assert!(b.allows(t + 121 * S));
        b.on_success(t + 122 * S);
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(b.allows(t + 122 * S) && b.allows(t + 122 * S));
        assert_eq!(b.failures_in_window(t + 122 * S), 0);
    }

    /// [failing anthropic, healthy openai, local], anthropic 429 with retry-after 2 s.
    fn setup(breakers: bool, fallback: bool) -> (Router, Vec<ProviderMock>) {
        let cfgs = [ProviderConfig::anthropic(), ProviderConfig::openai(), ProviderConfig::local()];
        let retries: Vec<ProviderRetry> = cfgs.iter().map(ProviderRetry::from_config).collect();
        let mut mocks: Vec<ProviderMock> = cfgs.into_iter().map(ProviderMock::new).collect();
        let mode = ErrorMode::RateLimited { retry_after_ms: 2_000 };
        mocks[0].set_outage(mode, 0, 3_600 * S);
        let policy = RouterPolicy { breakers, fallback };
        (Router::new(&retries, BreakerConfig::default(), policy), mocks)
    }

    /// Drives one call to the end; returns the (time, step) log.
    fn drive(router: &mut Router, mocks: &mut [ProviderMock], now: &mut Micros) -> Vec<(Micros, Step)> {
        let (input_tokens, prefix_tokens, output_tokens) = (2_000, 1_500, 200);
        let req = ModelRequest {
            prefix_hash: 1,
            input_tokens,
            prefix_tokens,
            output_tokens,
            options: 3,
            defect_permille: 0,
            version: 0,
        };
        let rng = &mut ChaCha8Rng::seed_from_u64(11);
        let mut call = router.start(*now);
        let (mut last, mut log) = (None, Vec::new());
        loop {
            let step = call.next(router, *now, last.take());
            log.push((*now, step));
            match step {
                Step::Send { provider, .. } => {
                    let out = mocks[provider].handle(*now, &req, rng);
                    *now += out.latency_us;
                    last = Some(AttemptResult::from_result(&out.result));
                }
                Step::Wait { until_us } => *now = until_us,
                Step::Done { .. } | Step::GiveUp { .. } => {
                    assert!(call.is_finished());
                    return log;
                }
            }
        }
    }

    fn steps(log: &[(Micros, Step)]) -> Vec<Step> {
        log.iter().map(|&(_, s)| s).collect()
    }

    #[test]
    fn retries_honour_retry_after_then_fail_over_and_breaker_short_circuits() {
        let (mut router, mut mocks) = setup(true, true);
        let mut now = 0;
        let log = drive(&mut router, &mut mocks, &mut now);
        let s = steps(&log);
        assert_eq!([s[0], s[2], s[4]], [send(0, 0), send(0, 1), send(0, 2)]);
        assert_eq!(s[5..], [send(1, 0), Step::Done { provider: 1 }]);
        for i in [1, 3] {
            let (t, Step::Wait { until_us }) = log[i] else { panic!("{:?}", log[i]) };
            assert_eq!(until_us, t + 2_000 * US_PER_MS, "retry-after honoured");
            assert_eq!(log[i + 1].0, until_us);
        }
        assert_eq!(router.attempts(), &[3, 1, 0]);
        assert_eq!(router.breaker(0).failures_in_window(now), 1, "one per call");
        // Two more such calls open anthropic's breaker (all within 60 s).
        drive(&mut router, &mut mocks, &mut now);
        assert_eq!(router.take_transitions().count(), 0);
        drive(&mut router, &mut mocks, &mut now);
        assert!(now < 60 * S);
        let tr: Vec<BreakerTransition> = router.take_transitions().collect();
        assert_eq!(tr.len(), 1);
        assert_eq!((tr[0].provider, tr[0].from, tr[0].to), (0, BreakerState::Closed, open(tr[0].at_us)));
        // The next call goes straight to openai.
        let log = drive(&mut router, &mut mocks, &mut now);
        assert_eq!(steps(&log), [send(1, 0), Step::Done { provider: 1 }]);
        assert_eq!(router.attempts(), &[9, 4, 0]);
        let st = router.stats();
        assert_eq!((st.calls, st.successes, st.give_ups, st.skips), (4, 4, 0, 1));
        // After 60 s the half-open trial goes to anthropic, fails, re-opens.
        now = tr[0].at_us + 60 * S;
        let log = drive(&mut router, &mut mocks, &mut now);
        assert_eq!(steps(&log)[..2], [send(0, 0), Step::Wait { until_us: log[1].0 + 2 * S }]);
        let to: Vec<BreakerState> = router.take_transitions().map(|t| t.to).collect();
        assert_eq!(to, [BreakerState::HalfOpen, open(log[5].0)]);
    }

    #[test]
    fn without_breakers_every_call_hits_the_failing_provider() {
        let (mut router, mut mocks) = setup(false, true);
        let mut now = 0;
        for _ in 0..6 {
            let log = drive(&mut router, &mut mocks, &mut now);
            assert_eq!(log[0].1, send(0, 0));
            assert_eq!(log.last().unwrap().1, Step::Done { provider: 1 });
        }
        assert_eq!(router.attempts(), &[18, 6, 0], "the retry storm");
        assert_eq!(mocks[0].stats().errors, 18);
        assert_eq!(router.take_transitions().count(), 0);
        assert_eq!(router.breaker(0).state(), BreakerState::Closed);
    }

    #[test]
    fn without_fallback_only_provider_zero_is_tried() {
        let (mut router, mut mocks) = setup(true, false);
        let mut now = 0;
        for _ in 0..3 {
            let log = drive(&mut router, &mut mocks, &mut now);
            assert_eq!(log.len(), 6, "3 sends, 2 waits, give-up: {log:?}");
            assert_eq!(log[5].1, Step::GiveUp { all_open: false });
        }
        let log = drive(&mut router, &mut mocks, &mut now);
        assert_eq!(steps(&log), [Step::GiveUp { all_open: true }], "breaker open");
        assert_eq!(router.attempts(), &[9, 0, 0]);
        assert_eq!(router.stats().give_ups, 4);
    }

    #[test]
    fn settings_and_stack_policy_map_onto_the_router() {
        let mut policy = crate::components::policy::Policy::default();
        let router = Router::from_settings(&RouterSettings::default(), policy);
        assert_eq!(router.n_providers(), 3);
        assert_eq!(router.policy(), RouterPolicy::default());
        (policy.provider_router, policy.circuit_breakers) = (false, true);
        assert!(!RouterPolicy::from(policy).fallback && RouterPolicy::from(policy).breakers);
        policy.circuit_breakers = false;
        assert!(!RouterPolicy::from(policy).breakers);
        let json = r#"{"breaker":{"open_ms":5000},"providers":[{"max_retries":1,"backoff_base_ms":9}]}"#;
        let s: RouterSettings = serde_json::from_str(json).unwrap();
        assert_eq!((s.breaker.open_ms, s.breaker.failure_threshold), (5_000, 3));
        assert_eq!((s.providers.len(), s.providers[0].max_retries), (1, 1));
    }

    #[test]
    fn backoff_doubles_without_retry_after_and_non_retryable_moves_on() {
        let r = ProviderRetry { max_retries: 5, backoff_base_ms: 500 };
        let delays: Vec<u64> = (0..6).map(|a| r.delay_ms(a, None)).collect();
        assert_eq!(delays, [500, 1_000, 2_000, 4_000, 8_000, 8_000]);
        assert_eq!(r.delay_ms(0, Some(61_000)), 500, "absurd retry-after ignored");
        let mut router = Router::new(&[r, r], BreakerConfig::default(), RouterPolicy::default());
        let mut call = router.start(0);
        let err = |retryable, status| AttemptResult::Err { retryable, retry_after_ms: None, status };
        assert_eq!(call.next(&mut router, 0, None), send(0, 0));
        assert_eq!(call.next(&mut router, 10, Some(err(false, 429))), send(1, 0));
        let due = Step::Wait { until_us: 20 + 500 * US_PER_MS };
        assert_eq!(call.next(&mut router, 20, Some(err(true, 529))), due);
        assert_eq!(call.next(&mut router, 30, None), due, "early wake-up");
        assert_eq!(call.next(&mut router, 20 + 500 * US_PER_MS, None), send(1, 1));
        assert_eq!(call.last_status(), Some(529));
        assert_eq!(router.breaker(0).failures_in_window(30), 1);
    }
}
