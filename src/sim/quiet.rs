//! Quiescence: the point after which a simulated stack can only repeat its
//! idle chatter (lease polls, health checks, replication of nothing new,
//! snapshots), so running it on to the horizon changes nothing any
//! measurement or invariant reads.
//!
//! The fuzzer stops a generated drill there ([`crate::drill::simulate_checked`]);
//! `run` always goes to the horizon. The test is conservative: every event
//! still queued must be of a kind known to be idle in the state the stack is
//! in, and every component must be in that state. Anything else (a harness
//! event such as a restart or a fault's end the caller does not call idle, a
//! reply in flight, a retry, a paused host, a deploy under watch, a corrupted
//! vector point) means "not yet". `tests/quiescence.rs` checks, drill by
//! drill, that stopping there gives the same verdicts and measurements as
//! running to the horizon.

use crate::components::env::Timer;
use crate::components::wire::Msg;
use crate::sim::Queued;
use crate::sim::stack::{Node, Stack};

impl Stack {
    /// Whether nothing but idle chatter can happen from now on (see the
    /// module docs). `idle_control` says which queued harness events the
    /// caller knows to change nothing on an idle stack (the end of a
    /// fault an idle stack cannot meet, such as a provider outage, which
    /// only the workers' calls reach); any other harness
    /// event means "not yet". Costs a pass over the hosts and the queued
    /// events: call it now and then, not after every event.
    pub fn quiescent(&self, idle_control: impl Fn(&Timer) -> bool) -> bool {
        let now_us = self.rt.now_us();
        if self.rt.net().disturbed_from(now_us) {
            return false;
        }
        let Some(worst_us) = self.rt.net().worst_standing_us() else { return false };
        self.hosts_idle(now_us, worst_us.saturating_mul(2)) && self.queue_idle(idle_control)
    }

    /// Every host up is unpaused and its component idle.
    fn hosts_idle(&self, now_us: crate::components::ids::Micros, worst_rtt_us: u64) -> bool {
        self.rt.hosts().iter().zip(&self.nodes).enumerate().all(|(i, (host, node))| {
            if !host.up {
                return true;
            }
            if host.paused_until_us > now_us {
                return false;
            }
            let h = crate::components::ids::HostId(i as u32);
            match node {
                Node::Client(c) => c.is_settled(self.workload_jobs),
                Node::Orchestrator(o) => o.is_idle(),
                Node::Worker(w) => w.is_idle(),
                Node::Vector(v) => v.is_idle(self.serving_vector() == h),
                Node::Controller(c) => {
                    c.is_steady(worst_rtt_us)
                        && (c.stage() != crate::components::region::Stage::Watching || {
                            let p = c.watched();
                            self.rt.host(p).up && self.orch(p).is_serving()
                        })
                }
                Node::Api(_) | Node::Search(_) | Node::Provider(_) | Node::Queue(_) => true,
            }
        })
    }

    /// Every event still queued is idle chatter for the host it reaches,
    /// or a harness event `idle_control` accepts.
    fn queue_idle(&self, idle_control: impl Fn(&Timer) -> bool) -> bool {
        self.rt.queued().all(|(to, ev)| match (to, ev) {
            (Some(h), ev) => idle_chatter(&self.nodes[h.0 as usize], &ev),
            (None, Queued::Control(t)) => idle_control(t),
            (None, _) => false, // no host: only harness events have none
        })
    }
}

/// Whether `ev` reaching `node` is one of the idle kinds (given that
/// [`Stack::quiescent`]'s state tests hold).
fn idle_chatter(node: &Node, ev: &Queued<'_, Msg, Timer>) -> bool {
    use Queued::{Message, Timer as T};
    match node {
        Node::Worker(_) => matches!(ev, T(Timer::Watchdog | Timer::Heartbeat)),
        Node::Orchestrator(_) => matches!(
            ev,
            T(Timer::RecoveryScan | Timer::ReplicationTick)
                | Message {
                    msg: Msg::LeaseReq { .. } | Msg::Replicate { .. } | Msg::ReplicateAck { .. } | Msg::Ping { .. },
                    ..
                }
        ),
        Node::Controller(_) => {
            matches!(ev, T(Timer::HealthTick | Timer::HealthTimeout { .. }) | Message { msg: Msg::Pong { .. }, .. })
        }
        Node::Vector(_) => matches!(
            ev,
            T(Timer::SnapshotTick | Timer::IntegrityCheck | Timer::ShipSnapshot { .. })
                | Message { msg: Msg::ShipSnapshot { .. }, .. }
        ),
        // A probe tick left from a probing that ended does nothing.
        Node::Client(c) => {
            matches!(ev, T(Timer::ClientResubmit)) || matches!(ev, T(Timer::ProbeTick)) && !c.is_probing()
        }
        Node::Api(_) | Node::Search(_) | Node::Provider(_) | Node::Queue(_) => false,
    }
}
