//! The in-flight task queue, with NATS JetStream's semantics: publishes are
//! deduplicated on their message id (the job id) within a window; a message
//! is delivered to the consumer (the orchestrator) and redelivered after
//! `ack_wait` until acknowledged, at most `max_deliver` times; WorkQueue
//! retention (an acknowledged message is gone).
//!
//! Replicated, every publish and acknowledgement is mirrored to a replica in
//! the other region before the publisher is answered, so losing the queue
//! node loses nothing; unreplicated, the messages on the node are lost with
//! it.

use std::collections::{BTreeMap, VecDeque};

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use crate::components::env::{Env, Note, Service, Timer};
use crate::components::ids::{HostId, JobId, Micros, US_PER_MS};
use crate::components::wire::Msg;

/// Queue settings (`[stack.queue]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    /// Publishes with a message id seen within this window are dropped as
    /// duplicates (JetStream's default is 2 minutes), in ms.
    pub dedupe_window_ms: u64,
    /// A delivered message not acknowledged within this is delivered again
    /// (JetStream's AckWait, default 30 s), in ms.
    pub ack_wait_ms: u64,
    /// At most this many deliveries, then the message is dropped
    /// (JetStream's MaxDeliver; absent = unlimited, its default).
    pub max_deliver: Option<u32>,
    /// Mirror every message to a replica in the other region.
    pub replicated: bool,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig { dedupe_window_ms: 120_000, ack_wait_ms: 30_000, max_deliver: None, replicated: true }
    }
}

/// A job waiting in the queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Message {
    /// Job (the message id).
    pub job: JobId,
    /// Template.
    pub template: u16,
    /// Steps.
    pub steps: u16,
    /// Harness probe.
    pub probe: bool,
    /// The job may have run before this delivery reaches a consumer: a
    /// resubmission, or a message held by a replica that took over (it
    /// cannot know which messages the lost node delivered).
    pub replay: bool,
    /// When the publish was acknowledged.
    pub published_us: Micros,
    /// Deliveries so far.
    pub deliveries: u32,
}

/// The queue component (one node; its replica is another instance).
#[derive(Clone)]
pub struct Queue {
    cfg: QueueConfig,
    /// Durable: messages not yet acknowledged, by sequence.
    messages: BTreeMap<u64, Message>,
    next_seq: u64,
    /// Durable: message ids seen within the dedupe window.
    seen: FxHashMap<JobId, Micros>,
    seen_order: VecDeque<(Micros, JobId)>,
    /// Mirror target (the replica), on the active node.
    replica: Option<HostId>,
    /// This node serves (the active one).
    pub active: bool,
    /// Publishes answered as duplicates.
    pub duplicates_dropped: u64,
    /// Messages dropped after `max_deliver` deliveries.
    pub dead_lettered: u64,
}

impl Queue {
    /// A queue node.
    pub fn new(cfg: QueueConfig, replica: Option<HostId>, active: bool) -> Self {
        Queue {
            cfg,
            messages: BTreeMap::new(),
            next_seq: 1,
            seen: FxHashMap::default(),
            seen_order: VecDeque::new(),
            replica,
            active,
            duplicates_dropped: 0,
            dead_lettered: 0,
        }
    }

    /// Messages held (published, not yet acknowledged by the consumer).
    pub fn messages(&self) -> impl Iterator<Item = &Message> {
        self.messages.values()
    }

    /// Whether publishes are mirrored to a replica.
    pub fn replicated(&self) -> bool {
        self.cfg.replicated
    }

    /// Whether this node mirrors to a replica now (a replica that took over
    /// has none: its peer was lost).
    pub fn mirrors(&self) -> bool {
        self.cfg.replicated && self.replica.is_some()
    }

    /// A copy of this (active) node's stream for a node rejoining as its
    /// replica: the replica catches up before mirroring resumes.
    pub fn replica_copy(&self) -> Queue {
        Queue { active: false, replica: None, duplicates_dropped: 0, dead_lettered: 0, ..self.clone() }
    }

    /// Mirrors to `replica` from now on (a node that rejoined).
    pub fn set_replica(&mut self, replica: HostId) {
        self.replica = Some(replica);
    }

    /// The node's storage is lost (an unreplicated queue lost with its node).
    pub fn wipe(&mut self) {
        self.messages.clear();
        self.seen.clear();
        self.seen_order.clear();
    }

    /// Becomes the active node (failover to the replica): redelivers every
    /// message it holds, each marked as a replay.
    pub fn activate(&mut self, env: &mut impl Env) {
        self.active = true;
        self.replica = None;
        // The lost node may have delivered any of them (and its consumer
        // run the job): each goes out as a replay.
        for m in self.messages.values_mut() {
            m.replay = true;
        }
        let seqs: Vec<u64> = self.messages.keys().copied().collect();
        for seq in seqs {
            self.deliver(env, seq);
        }
    }

    /// Start-up: redeliver what is held.
    pub fn start(&mut self, env: &mut impl Env) {
        if self.active {
            let seqs: Vec<u64> = self.messages.keys().copied().collect();
            for seq in seqs {
                self.deliver(env, seq);
            }
        }
    }

    fn prune_seen(&mut self, now_us: Micros) {
        let window = self.cfg.dedupe_window_ms.saturating_mul(US_PER_MS);
        while let Some(&(at, job)) = self.seen_order.front() {
            if at + window > now_us {
                break;
            }
            self.seen_order.pop_front();
            if self.seen.get(&job) == Some(&at) {
                self.seen.remove(&job);
            }
        }
    }

    fn deliver(&mut self, env: &mut impl Env, seq: u64) {
        let Some(m) = self.messages.get_mut(&seq) else { return };
        if self.cfg.max_deliver.is_some_and(|max| m.deliveries >= max) {
            self.messages.remove(&seq);
            self.dead_lettered += 1;
            return;
        }
        m.deliveries += 1;
        let m = *m;
        let to = env.resolve(Service::Orchestrator);
        // A redelivery went out before without an acknowledgement: the job
        // may have been created and run by an orchestrator whose store the
        // consumer no longer has (a lost primary), so a task created from
        // it reconciles before it decides or acts (a replay).
        let replay = m.replay || m.deliveries > 1;
        env.send(to, Msg::Deliver { seq, job: m.job, template: m.template, steps: m.steps, probe: m.probe, replay });
        let delivery = m.deliveries;
        env.set_timer(self.cfg.ack_wait_ms.saturating_mul(US_PER_MS), Timer::Redeliver { seq, delivery });
    }

    /// Handles a message.
    pub fn on_msg(&mut self, env: &mut impl Env, from: HostId, msg: Msg) {
        let now = env.now_us();
        match msg {
            Msg::Publish { job, template, steps, probe, replay } if self.active => {
                self.prune_seen(now);
                if self.seen.contains_key(&job) {
                    self.duplicates_dropped += 1;
                    env.send(from, Msg::SubmitAck { job });
                    return;
                }
                self.seen.insert(job, now);
                self.seen_order.push_back((now, job));
                let seq = self.next_seq;
                self.next_seq += 1;
                let m = Message { job, template, steps, probe, replay, published_us: now, deliveries: 0 };
                self.messages.insert(seq, m);
                match self.replica {
                    // Answer the publisher once the replica holds it.
                    Some(r) => env.send(r, Msg::Mirror { seq, job, template, steps, probe, replay, publisher: from }),
                    None => env.send(from, Msg::SubmitAck { job }),
                }
                self.deliver(env, seq);
            }
            Msg::Mirror { seq, job, template, steps, probe, replay, publisher } => {
                self.seen.insert(job, now);
                self.seen_order.push_back((now, job));
                self.next_seq = self.next_seq.max(seq + 1);
                let m = Message { job, template, steps, probe, replay, published_us: now, deliveries: 0 };
                self.messages.insert(seq, m);
                env.send(from, Msg::MirrorAck { job, publisher });
            }
            Msg::MirrorAck { job, publisher } => env.send(publisher, Msg::SubmitAck { job }),
            // The consumer refused these while it could not serve and
            // serves now: deliver what is still held at once (each
            // delivery arms its own AckWait; the older timer is stale).
            Msg::QueuePull { seqs } if self.active => {
                for seq in seqs.iter().copied() {
                    self.deliver(env, seq);
                }
            }
            Msg::QueueAck { seq } => {
                self.messages.remove(&seq);
                if let Some(r) = self.replica {
                    env.send(r, Msg::QueueAck { seq });
                }
            }
            _ => {}
        }
    }

    /// Handles a timer.
    pub fn on_timer(&mut self, env: &mut impl Env, timer: Timer) {
        if let Timer::Redeliver { seq, delivery } = timer
            && self.active
            && self.messages.get(&seq).is_some_and(|m| m.deliveries == delivery)
        {
            let job = self.messages[&seq].job;
            env.note(Note::Redelivered { job });
            self.deliver(env, seq);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::components::env::{Note, Phase};
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    /// A recording environment: the queue's sends and timers, no network.
    struct Rec {
        now: Micros,
        rng: ChaCha8Rng,
        sent: Vec<(HostId, Msg)>,
        timers: Vec<(Micros, Timer)>,
    }

    impl Env for Rec {
        fn now_us(&self) -> Micros {
            self.now
        }
        fn me(&self) -> HostId {
            HostId(0)
        }
        fn send(&mut self, to: HostId, msg: Msg) {
            self.sent.push((to, msg));
        }
        fn send_after(&mut self, _d: Micros, to: HostId, msg: Msg) {
            self.sent.push((to, msg));
        }
        fn set_timer(&mut self, after_us: Micros, timer: Timer) {
            self.timers.push((self.now + after_us, timer));
        }
        fn rng(&mut self) -> &mut ChaCha8Rng {
            &mut self.rng
        }
        fn resolve(&self, _svc: Service) -> HostId {
            HostId(9)
        }
        fn note(&mut self, _note: Note) {}
        fn reach(&mut self, _h: HostId, _j: JobId, _s: u16, _p: Phase) -> bool {
            false
        }
    }

    fn env() -> Rec {
        Rec { now: 0, rng: ChaCha8Rng::seed_from_u64(1), sent: Vec::new(), timers: Vec::new() }
    }

    fn publish(job: u32) -> Msg {
        Msg::Publish { job: JobId(job), template: 0, steps: 3, probe: false, replay: false }
    }

    fn deliveries(e: &Rec) -> usize {
        e.sent.iter().filter(|(_, m)| matches!(m, Msg::Deliver { .. })).count()
    }

    #[test]
    fn duplicates_inside_the_window_are_dropped_and_outside_it_are_not() {
        let cfg = QueueConfig { dedupe_window_ms: 1_000, replicated: false, ..QueueConfig::default() };
        let mut q = Queue::new(cfg, None, true);
        let mut e = env();
        q.on_msg(&mut e, HostId(1), publish(7));
        e.now = 999_000;
        q.on_msg(&mut e, HostId(1), publish(7));
        assert_eq!((q.duplicates_dropped, deliveries(&e)), (1, 1));
        e.now = 1_000_000;
        q.on_msg(&mut e, HostId(1), publish(7));
        assert_eq!(deliveries(&e), 2, "after the window the same id is a new message");
    }

    #[test]
    fn unacknowledged_messages_are_redelivered_up_to_max_deliver() {
        let cfg = QueueConfig { max_deliver: Some(2), replicated: false, ..QueueConfig::default() };
        let mut q = Queue::new(cfg, None, true);
        let mut e = env();
        q.on_msg(&mut e, HostId(1), publish(3));
        let Timer::Redeliver { seq, delivery } = e.timers[0].1 else { panic!("AckWait timer") };
        q.on_timer(&mut e, Timer::Redeliver { seq, delivery });
        q.on_timer(&mut e, Timer::Redeliver { seq, delivery: delivery + 1 });
        assert_eq!(deliveries(&e), 2);
        assert_eq!((q.dead_lettered, q.messages().count()), (1, 0));
    }

    #[test]
    fn a_pull_delivers_at_once_and_the_superseded_ack_wait_is_ignored() {
        let cfg = QueueConfig { replicated: false, ..QueueConfig::default() };
        let mut q = Queue::new(cfg, None, true);
        let mut e = env();
        q.on_msg(&mut e, HostId(1), publish(5));
        let Timer::Redeliver { seq, delivery } = e.timers[0].1 else { panic!("AckWait timer") };
        e.now = 1_000;
        q.on_msg(&mut e, HostId(9), Msg::QueuePull { seqs: Box::new([seq, 99]) });
        assert_eq!(deliveries(&e), 2, "the pull delivers the held message now; an unknown one is skipped");
        q.on_timer(&mut e, Timer::Redeliver { seq, delivery });
        assert_eq!(deliveries(&e), 2, "the first delivery's AckWait was superseded by the pull's");
        let Timer::Redeliver { delivery: pulled, .. } = e.timers[1].1 else { panic!("the pull's AckWait") };
        q.on_timer(&mut e, Timer::Redeliver { seq, delivery: pulled });
        assert_eq!(deliveries(&e), 3);
    }

    #[test]
    fn an_acknowledged_message_is_gone_and_a_replica_answers_the_publisher() {
        let mut q = Queue::new(QueueConfig::default(), Some(HostId(5)), true);
        let mut e = env();
        q.on_msg(&mut e, HostId(1), publish(4));
        assert!(
            !e.sent.iter().any(|(_, m)| matches!(m, Msg::SubmitAck { .. })),
            "a replicated publish is answered only once mirrored"
        );
        let mirror = e.sent.iter().find(|(to, _)| *to == HostId(5)).map(|(_, m)| m.clone()).expect("mirrored");
        let mut replica = Queue::new(QueueConfig::default(), None, false);
        let mut r = env();
        replica.on_msg(&mut r, HostId(0), mirror);
        assert_eq!(replica.messages().count(), 1);
        q.on_msg(&mut e, HostId(9), Msg::QueueAck { seq: 1 });
        assert_eq!(q.messages().count(), 0);
        replica.on_msg(&mut r, HostId(0), Msg::QueueAck { seq: 1 });
        assert_eq!(replica.messages().count(), 0, "acks are mirrored too");
    }
}
