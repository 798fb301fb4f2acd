//! Two regions: the DNS record that routes traffic, and the failover
//! controller that health-checks the primary and runs the failover:
//! detect (interval × failure threshold) → promote the standby's store →
//! switch DNS (visible after the TTL) → scale up the standby → hydrate its
//! vector store → open it to traffic.

use serde::{Deserialize, Serialize};

use crate::components::env::{Env, Note, Service, Timer};
use crate::components::ids::{HostId, Micros, US_PER_MS};
use crate::components::wire::Msg;

/// The failover patterns of seed 003.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Pattern {
    /// One region, nothing to fail over to.
    SingleRegion,
    /// Both regions serve; the standby's workers already run.
    ActiveActive,
    /// The DR region runs a pilot light and scales up on failover.
    WarmStandby,
    /// Nothing runs in the DR region: provision, then restore.
    ColdStandby,
}

/// Failover timings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailoverConfig {
    /// Health-check interval.
    pub health_interval_ms: u64,
    /// A check fails when no answer arrives within this.
    pub health_timeout_ms: u64,
    /// Consecutive failed checks that declare the region down.
    pub failure_threshold: u32,
    /// Promotion of the standby's store.
    pub promotion_ms: u64,
    /// DNS TTL: how long clients keep the old address.
    pub dns_ttl_ms: u64,
    /// Scale-up of the standby (warm) or provisioning (cold).
    pub scale_up_ms: u64,
}

impl FailoverConfig {
    /// How long the controller takes, from the last health check the
    /// primary answered, to declare it down: `failure_threshold` checks one
    /// `health_interval` apart, the last unanswered after `health_timeout`.
    pub fn detection_us(&self) -> Micros {
        (u64::from(self.failure_threshold) * self.health_interval_ms + self.health_timeout_ms).saturating_mul(US_PER_MS)
    }
}

/// A DNS record as resolvers see it: the old target until the TTL of the
/// change has passed (the worst case a cached resolver sees).
#[derive(Clone, Copy, Debug)]
pub struct Record {
    old: HostId,
    new: HostId,
    changed_at_us: Micros,
    ttl_us: Micros,
}

impl Record {
    /// A record pointing at `h`.
    pub fn new(h: HostId, ttl_us: Micros) -> Self {
        Record { old: h, new: h, changed_at_us: 0, ttl_us }
    }
    /// What a resolver returns at `now_us`.
    #[inline]
    pub fn resolve(&self, now_us: Micros) -> HostId {
        if now_us >= self.changed_at_us + self.ttl_us { self.new } else { self.old }
    }
    /// Points the record elsewhere from `now_us`.
    pub fn switch(&mut self, now_us: Micros, to: HostId) {
        self.old = self.resolve(now_us);
        self.new = to;
        self.changed_at_us = now_us;
    }
    /// The current target (what resolvers see once the TTL has passed).
    pub fn target(&self) -> HostId {
        self.new
    }
    /// When the current target became visible everywhere.
    pub fn effective_at_us(&self) -> Micros {
        self.changed_at_us + self.ttl_us
    }
}

/// The global DNS: one record per service.
#[derive(Clone, Copy, Debug)]
pub struct Dns {
    /// The orchestrator's name.
    pub orchestrator: Record,
    /// The vector store's name.
    pub vector: Record,
    /// The queue's active node (clients follow a queue failover at once).
    pub queue: Record,
}

impl Dns {
    /// Resolves a service.
    #[inline]
    pub fn resolve(&self, svc: Service, now_us: Micros) -> HostId {
        match svc {
            Service::Orchestrator => self.orchestrator.resolve(now_us),
            Service::Vector => self.vector.resolve(now_us),
            Service::Queue => self.queue.resolve(now_us),
        }
    }
}

/// Where the failover is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Checking health.
    Watching,
    /// Promoting the standby store.
    Promoting,
    /// Waiting out the DNS TTL.
    Routing,
    /// Scaling up.
    ScalingUp,
    /// Hydrating vector memory.
    Hydrating,
    /// Opening the standby to traffic.
    Opening,
    /// Failed over; the new region serves.
    Done,
}

/// What the controller asks the harness to do (it cannot start hosts).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    /// Switch DNS to the standby.
    SwitchDns,
    /// Bring the standby's full capacity up now.
    ScaleUp,
}

/// The failover controller (a Route 53-style health checker plus runbook
/// automation). It lives outside both regions.
pub struct Controller {
    cfg: FailoverConfig,
    primary: HostId,
    standby_orch: HostId,
    standby_vec: HostId,
    seq: u32,
    answered: u32,
    failures: u32,
    stage: Stage,
    requests: Vec<Request>,
    /// The standby acknowledged the current stage's message.
    acked: bool,
    /// The promotion time has passed (waiting for the acknowledgement).
    waited: bool,
    /// Failovers begun so far: tags the failover timers, so that those of
    /// a cancelled failover do nothing.
    attempt: u32,
    /// The last health check sent before the current failover began: a
    /// primary that answers a later one is alive.
    detected_seq: u32,
}

/// Pings per health check: the check passes if any is answered, so one lost
/// packet on a lossy link does not count as a failure (a checker in several
/// locations, as Route 53 does).
pub const PINGS_PER_CHECK: u32 = 3;
/// Bit of a `Ping`'s `seq` above which the number of its copies that
/// arrived, less one, is carried (see [`ping_seq`]).
const COPIES_SHIFT: u32 = 30;

/// The `seq` word of a `Ping` for check `seq` of which `copies` copies
/// arrived (see [`Env::send_copies`]): the primary answers each copy, so a
/// check passes when any one round trip of the [`PINGS_PER_CHECK`] survives,
/// whether the copies travel as messages of their own (`copies` = 1 each)
/// or as one delivery. A word with no copy bits is one copy.
pub fn ping_seq(seq: u32, copies: u32) -> u32 {
    assert!(seq < 1 << COPIES_SHIFT, "health check number {seq} out of range");
    assert!((1..=4).contains(&copies), "{copies} copies of a ping");
    seq | (copies - 1) << COPIES_SHIFT
}

/// The check number and copy count of a `Ping`'s `seq` word (the inverse of
/// [`ping_seq`]).
pub fn split_ping_seq(word: u32) -> (u32, u32) {
    (word & ((1 << COPIES_SHIFT) - 1), (word >> COPIES_SHIFT) + 1)
}

/// How often a failover step is sent again until the standby acknowledges
/// it (it may be down, or the message lost).
pub const RESEND_US: Micros = 5 * crate::components::ids::US_PER_S;

impl Controller {
    /// A controller watching `primary`, ready to fail over to the standby.
    pub fn new(cfg: FailoverConfig, primary: HostId, standby_orch: HostId, standby_vec: HostId) -> Self {
        assert!(cfg.failure_threshold >= 1, "a failure threshold of 0 would fail over at once");
        Controller {
            cfg,
            primary,
            standby_orch,
            standby_vec,
            seq: 0,
            answered: 0,
            failures: 0,
            stage: Stage::Watching,
            requests: Vec::new(),
            acked: false,
            waited: false,
            attempt: 0,
            detected_seq: 0,
        }
    }

    /// Current stage.
    pub fn stage(&self) -> Stage {
        self.stage
    }

    /// Whether the controller will do nothing but check health: it failed
    /// over already, or it watches with no check failed, and a check's
    /// answer comes back within the timeout on links whose round trip is at
    /// most `worst_rtt_us` (the caller also knows the watched primary is
    /// up and answers).
    pub fn is_steady(&self, worst_rtt_us: Micros) -> bool {
        match self.stage {
            Stage::Done => true,
            Stage::Watching => self.failures == 0 && worst_rtt_us < self.cfg.health_timeout_ms * US_PER_MS,
            _ => false,
        }
    }

    /// The primary the controller checks the health of.
    pub fn watched(&self) -> HostId {
        self.primary
    }

    /// The primary orchestrator as of now: the standby once it acknowledged
    /// its promotion (the old primary must not serve again; a returning one
    /// asks this before serving), the watched primary before.
    pub fn primary_now(&self) -> HostId {
        match self.stage {
            Stage::Watching => self.primary,
            Stage::Promoting if !self.acked => self.primary,
            _ => self.standby_orch,
        }
    }

    /// Requests for the harness, drained.
    pub fn take_requests(&mut self) -> Vec<Request> {
        std::mem::take(&mut self.requests)
    }

    /// Start-up.
    pub fn start(&mut self, env: &mut impl Env) {
        env.set_timer(self.cfg.health_interval_ms * US_PER_MS, Timer::HealthTick);
    }

    /// Sends the current stage's message to the standby (again).
    fn send_stage(&self, env: &mut impl Env) {
        match self.stage {
            // The old primary is fenced only once the standby has answered:
            // demoting a live primary for a standby that is down too would
            // leave nothing serving.
            Stage::Promoting => env.send(self.standby_orch, Msg::Promote),
            Stage::Hydrating => {
                env.send(self.standby_vec, Msg::Hydrate);
                env.send(self.primary, Msg::Demote);
            }
            Stage::Opening => {
                env.send(self.standby_orch, Msg::Open);
                env.send(self.primary, Msg::Demote);
            }
            _ => {}
        }
    }

    /// Enters a stage that needs the standby's acknowledgement.
    fn enter(&mut self, env: &mut impl Env, stage: Stage) {
        self.stage = stage;
        self.acked = false;
        self.send_stage(env);
        env.set_timer(RESEND_US, Timer::FailoverResend { attempt: self.attempt });
    }

    fn advance_after_promotion(&mut self, env: &mut impl Env) {
        self.stage = Stage::Routing;
        env.note(Note::DnsSwitched);
        self.requests.push(Request::SwitchDns);
        env.set_timer(self.cfg.dns_ttl_ms * US_PER_MS, Timer::FailoverStage { attempt: self.attempt });
    }

    /// Health checks run while watching, and on through a promotion the
    /// standby has not taken yet (it may be down too): a primary that
    /// answers meanwhile calls the failover off.
    fn checking_health(&self) -> bool {
        self.stage == Stage::Watching || (self.stage == Stage::Promoting && !self.acked)
    }

    /// The primary answered a check sent after the failover began, and the
    /// standby has not acknowledged its promotion: the primary came back
    /// first, so it serves on and the failover is called off (carrying it
    /// out when the standby returns would demote a healthy primary for a
    /// standby that missed everything written meanwhile). The controller
    /// watches again; a promotion the standby did take (its acknowledgement
    /// lost or late) is carried on when that acknowledgement arrives.
    fn cancel_failover(&mut self, env: &mut impl Env) {
        debug_assert!(self.stage == Stage::Promoting && !self.acked);
        self.stage = Stage::Watching;
        self.failures = 0;
        self.waited = false;
        // The pending stage and resend timers belong to this attempt.
        self.attempt += 1;
        env.note(Note::FailoverCancelled);
        // The standby may have taken the promotion with every answer lost
        // (a one-way cut from its region): ask it until it says so, or
        // the next failover begins. Left alone, it would stay a second
        // primary that takes no replication, and a synchronous primary's
        // writes would wait for it for good.
        env.send(self.standby_orch, Msg::PromotedQuery);
        env.set_timer(RESEND_US, Timer::FailoverResend { attempt: self.attempt });
    }

    /// Handles a timer.
    pub fn on_timer(&mut self, env: &mut impl Env, timer: Timer) {
        match timer {
            Timer::HealthTick if self.checking_health() => {
                self.seq += 1;
                let seq = self.seq;
                env.send_copies(self.primary, PINGS_PER_CHECK, |arrived| Msg::Ping { seq: ping_seq(seq, arrived) });
                env.set_timer(self.cfg.health_timeout_ms * US_PER_MS, Timer::HealthTimeout { seq: self.seq });
                env.set_timer(self.cfg.health_interval_ms * US_PER_MS, Timer::HealthTick);
            }
            Timer::HealthTimeout { seq } if self.stage == Stage::Watching => {
                if self.answered >= seq {
                    self.failures = 0;
                    return;
                }
                self.failures += 1;
                if self.failures >= self.cfg.failure_threshold {
                    env.note(Note::FailoverDetected);
                    self.waited = false;
                    self.attempt += 1;
                    self.detected_seq = self.seq;
                    self.enter(env, Stage::Promoting);
                    env.set_timer(self.cfg.promotion_ms * US_PER_MS, Timer::FailoverStage { attempt: self.attempt });
                }
            }
            Timer::FailoverResend { attempt } if !self.acked && attempt == self.attempt => {
                if matches!(self.stage, Stage::Promoting | Stage::Hydrating | Stage::Opening) {
                    self.send_stage(env);
                    env.set_timer(RESEND_US, Timer::FailoverResend { attempt });
                } else if self.stage == Stage::Watching {
                    // After a cancelled failover (see `cancel_failover`).
                    env.send(self.standby_orch, Msg::PromotedQuery);
                    env.set_timer(RESEND_US, Timer::FailoverResend { attempt });
                }
            }
            Timer::FailoverStage { attempt } if attempt == self.attempt => match self.stage {
                // Promotion takes its time and needs the standby's answer.
                Stage::Promoting if self.acked => self.advance_after_promotion(env),
                Stage::Promoting => self.waited = true,
                Stage::Routing => {
                    env.note(Note::RoutingEffective);
                    self.stage = Stage::ScalingUp;
                    env.set_timer(self.cfg.scale_up_ms * US_PER_MS, Timer::FailoverStage { attempt });
                }
                Stage::ScalingUp => {
                    env.note(Note::ScaledUp);
                    self.requests.push(Request::ScaleUp);
                    self.enter(env, Stage::Hydrating);
                }
                _ => {}
            },
            _ => {}
        }
    }

    /// Handles a message.
    pub fn on_msg(&mut self, env: &mut impl Env, _from: HostId, msg: Msg) {
        match msg {
            Msg::Pong { seq } => {
                self.answered = self.answered.max(seq);
                if self.stage == Stage::Promoting && !self.acked && seq > self.detected_seq {
                    self.cancel_failover(env);
                }
            }
            // A promotion the standby took after the failover was called
            // off (the acknowledgement was late or lost, then answered to a
            // `PromotedQuery`): the standby is
            // primary now, so the failover goes on (the old primary is
            // fenced next) rather than leave two primaries.
            Msg::PromoteAck if self.stage == Stage::Watching && self.attempt > 0 => {
                env.note(Note::FailoverDetected);
                self.stage = Stage::Promoting;
                self.acked = true;
                env.send(self.primary, Msg::Demote);
                self.advance_after_promotion(env);
            }
            Msg::PromoteAck if self.stage == Stage::Promoting && !self.acked => {
                self.acked = true;
                // Fence the old primary: if it is alive after all (a lossy
                // link, not a lost region), it must stop serving. (Sent
                // again with every later stage's resend, for a primary that
                // was down now and comes back mid-failover.)
                env.send(self.primary, Msg::Demote);
                if self.waited {
                    self.advance_after_promotion(env);
                }
            }
            Msg::Hydrated if self.stage == Stage::Hydrating => {
                self.acked = true;
                self.enter(env, Stage::Opening);
            }
            Msg::Opened if self.stage == Stage::Opening => {
                self.acked = true;
                self.stage = Stage::Done;
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_serves_the_old_target_until_the_ttl_passes() {
        let mut r = Record::new(HostId(1), 60);
        r.switch(100, HostId(2));
        assert_eq!(r.resolve(159), HostId(1));
        assert_eq!(r.resolve(160), HostId(2));
        assert_eq!(r.effective_at_us(), 160);
    }

    #[test]
    fn a_ping_word_carries_its_check_and_copies() {
        assert_eq!(split_ping_seq(ping_seq(7, 1)), (7, 1));
        assert_eq!(ping_seq(7, 1), 7, "one copy is the plain number");
        assert_eq!(split_ping_seq(ping_seq((1 << 30) - 1, PINGS_PER_CHECK)), ((1 << 30) - 1, PINGS_PER_CHECK));
    }
}
