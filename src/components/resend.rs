//! The client's resend rule, sans-IO: the one semantic of `submit_retry`
//! and `resubmit_after`, driven by the simulated client (`sim::stack`) and
//! by the live harness's submitter (`live::drill`).
//!
//! - A submission not acknowledged `retry_after_us` after it was sent is
//!   sent again (the stack may have lost it, or not been serving).
//! - An accepted job not seen done `resubmit_after_us` after its
//!   acceptance (or its last resubmission) is submitted again, with the
//!   same job id: it may have been acknowledged by a primary whose record
//!   did not survive (a lag window, a lost region). The orchestrator mints
//!   the task's uid, and so the idempotency keys, from the job id, so a
//!   re-created task re-issues its steps under the same keys.
//!
//! [`is_replay`] says whether a send goes out as a replay.
//!
//! Each rule is a timer: armed at the first entry while disarmed, and on
//! firing it releases every entry that is due (or settled) in age order,
//! then re-arms, while entries are left, for when the oldest of them is due
//! (not a whole period after the firing: a job accepted 36 s after the
//! first one was resubmitted 300 s late, at 600 s instead of 336 s, seed
//! 905 case 28220). The caller owns the clock and the timers; this type
//! only decides.

use std::collections::VecDeque;

use crate::components::ids::{JobId, Micros, US_PER_MS, US_PER_S};

/// The shortest `submit_retry` a client uses, µs.
pub const MIN_RETRY_US: Micros = US_PER_MS;
/// The shortest `resubmit_after` a client uses, µs.
pub const MIN_RESUBMIT_US: Micros = US_PER_S;

/// What a client has sent and not yet seen settled.
#[derive(Clone, Debug)]
pub struct Resends {
    retry_after_us: Micros,
    resubmit_after_us: Micros,
    /// Sends not known acknowledged, oldest first.
    pending: VecDeque<(Micros, JobId)>,
    /// Accepted jobs not seen done, oldest first.
    unfinished: VecDeque<(Micros, JobId)>,
    retry_armed: bool,
    resubmit_armed: bool,
}

impl Resends {
    /// A client resending after `retry_after_us` (at least
    /// [`MIN_RETRY_US`]) and resubmitting after `resubmit_after_us` (at
    /// least [`MIN_RESUBMIT_US`]).
    pub fn new(retry_after_us: Micros, resubmit_after_us: Micros) -> Self {
        Resends {
            retry_after_us: retry_after_us.max(MIN_RETRY_US),
            resubmit_after_us: resubmit_after_us.max(MIN_RESUBMIT_US),
            pending: VecDeque::new(),
            unfinished: VecDeque::new(),
            retry_armed: false,
            resubmit_armed: false,
        }
    }

    /// `job` was sent at `now_us`. `Some(delay)`: arm the retry timer.
    pub fn sent(&mut self, now_us: Micros, job: JobId) -> Option<Micros> {
        self.pending.push_back((now_us, job));
        self.arm_retry(now_us)
    }

    /// `job` was acknowledged for the first time at `now_us` (a workload
    /// job: probes are not resubmitted). `Some(delay)`: arm the resubmit
    /// timer.
    pub fn accepted(&mut self, now_us: Micros, job: JobId) -> Option<Micros> {
        self.unfinished.push_back((now_us, job));
        self.arm_resubmit(now_us)
    }

    /// The retry timer fired: the sends to repeat now, oldest first. Call
    /// [`Resends::sent`] for each, then [`Resends::arm_retry`]. `acked`
    /// tells whether a job's latest send was acknowledged: a resubmission
    /// is retried until acknowledged like a first submission (one lost to
    /// a region that was down is sent again once it is back, not a whole
    /// `resubmit_after` later).
    pub fn retry_fired(&mut self, now_us: Micros, acked: impl Fn(JobId) -> bool) -> Vec<JobId> {
        self.retry_armed = false;
        due(&mut self.pending, now_us, self.retry_after_us, acked)
    }

    /// The resubmit timer fired: the jobs to submit again now, oldest
    /// first (each waits `resubmit_after` again). Call [`Resends::sent`]
    /// for each, then [`Resends::arm_resubmit`].
    pub fn resubmit_fired(&mut self, now_us: Micros, done: impl Fn(JobId) -> bool) -> Vec<JobId> {
        self.resubmit_armed = false;
        let out = due(&mut self.unfinished, now_us, self.resubmit_after_us, done);
        self.unfinished.extend(out.iter().map(|&j| (now_us, j)));
        out
    }

    /// Arms the retry timer at `now_us` if a send is waiting and it is
    /// disarmed: `Some(delay)` until the oldest send is due.
    pub fn arm_retry(&mut self, now_us: Micros) -> Option<Micros> {
        arm(&mut self.retry_armed, &self.pending, now_us, self.retry_after_us)
    }

    /// Arms the resubmit timer at `now_us` if a job is unfinished and it is
    /// disarmed: `Some(delay)` until the oldest job is due.
    pub fn arm_resubmit(&mut self, now_us: Micros) -> Option<Micros> {
        arm(&mut self.resubmit_armed, &self.unfinished, now_us, self.resubmit_after_us)
    }
}

/// Whether a send of a job is a replay: a send of it was acknowledged
/// before, or its first send went to another orchestrator than the one
/// the client's routing names now (`first_to`, `now_to`), acknowledged or
/// not. The stack there may have run the job with only its answer lost,
/// and the store serving now may not hold that run: a task created from a
/// replay reconciles before it decides or acts. The simulated client and
/// the live submitter both ask this.
pub fn is_replay<D: PartialEq>(acked_before: bool, first_to: &D, now_to: &D) -> bool {
    acked_before || first_to != now_to
}

/// Arms a disarmed timer over a non-empty `queue`: the delay from `now_us`
/// until its oldest entry is `after_us` old (at least 1 µs).
fn arm(armed: &mut bool, queue: &VecDeque<(Micros, JobId)>, now_us: Micros, after_us: Micros) -> Option<Micros> {
    if *armed {
        return None;
    }
    let &(at, _) = queue.front()?;
    *armed = true;
    Some((at + after_us).saturating_sub(now_us).max(1))
}

/// Pops the entries of `queue` that are due at `now_us` (older than
/// `after_us`) or already settled, oldest first; returns the unsettled ones.
/// Stops at the first entry that is neither.
fn due(
    queue: &mut VecDeque<(Micros, JobId)>,
    now_us: Micros,
    after_us: Micros,
    settled: impl Fn(JobId) -> bool,
) -> Vec<JobId> {
    // The prefix that goes, counted first; the answer allocates only for
    // an unsettled entry (a retry timer mostly finds every send answered).
    let ready = queue.iter().take_while(|&&(at, job)| settled(job) || at + after_us <= now_us).count();
    queue.drain(..ready).map(|(_, job)| job).filter(|&job| !settled(job)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unacknowledged_send_is_repeated_once_due_and_an_acknowledged_one_is_not() {
        let mut r = Resends::new(5 * US_PER_S, 300 * US_PER_S);
        assert_eq!(r.sent(0, JobId(1)), Some(5 * US_PER_S), "the first send arms the timer");
        assert_eq!(r.sent(US_PER_S, JobId(2)), None, "armed already");
        assert_eq!(r.sent(2 * US_PER_S, JobId(3)), None);
        let acked = |j: JobId| j == JobId(2);
        assert_eq!(r.retry_fired(5 * US_PER_S, acked), vec![JobId(1)], "job 3 is not due yet");
        assert_eq!(r.arm_retry(5 * US_PER_S), Some(2 * US_PER_S), "job 3 still waits, due at 7 s");
        assert_eq!(r.retry_fired(7 * US_PER_S, acked), vec![JobId(3)]);
        assert_eq!(r.arm_retry(7 * US_PER_S), None, "nothing left");
    }

    #[test]
    fn an_accepted_job_is_resubmitted_every_period_until_done() {
        let mut r = Resends::new(US_PER_S, 10 * US_PER_S);
        assert_eq!(r.accepted(0, JobId(7)), Some(10 * US_PER_S));
        assert_eq!(r.resubmit_fired(10 * US_PER_S, |_| false), vec![JobId(7)]);
        assert_eq!(r.arm_resubmit(10 * US_PER_S), Some(10 * US_PER_S), "it waits a period again");
        assert_eq!(r.resubmit_fired(15 * US_PER_S, |_| false), Vec::<JobId>::new(), "not due");
        assert_eq!(r.resubmit_fired(20 * US_PER_S, |_| true), Vec::<JobId>::new(), "done: dropped");
        assert_eq!(r.arm_resubmit(20 * US_PER_S), None);
    }

    /// A job accepted after the first is resubmitted when it is due, not a
    /// whole period after the timer last fired (seed 905 case 28220: job 6,
    /// accepted at 36 s, was resubmitted at 600 s, the horizon, instead of
    /// 336 s; the job its acknowledgement came from was failed away from).
    #[test]
    fn a_later_job_is_resubmitted_when_due_not_a_period_after_the_firing() {
        let s = US_PER_S;
        let mut r = Resends::new(5 * s, 300 * s);
        assert_eq!(r.accepted(0, JobId(0)), Some(300 * s));
        assert_eq!(r.accepted(36 * s, JobId(6)), None, "armed already");
        let done = |j: JobId| j == JobId(0);
        assert_eq!(r.resubmit_fired(300 * s, done), Vec::<JobId>::new(), "job 6 is not due yet");
        assert_eq!(r.arm_resubmit(300 * s), Some(36 * s), "job 6 is due at 336 s");
        assert_eq!(r.resubmit_fired(336 * s, done), vec![JobId(6)]);
        // The same for sends waiting for their acknowledgement.
        assert_eq!(r.sent(0, JobId(1)), Some(5 * s));
        assert_eq!(r.sent(3 * s, JobId(2)), None);
        assert_eq!(r.retry_fired(5 * s, |_| false), vec![JobId(1)]);
        assert_eq!(r.arm_retry(5 * s), Some(3 * s), "job 2 is due at 8 s");
    }

    #[test]
    fn periods_are_clamped_to_their_minimum() {
        let mut r = Resends::new(0, 0);
        assert_eq!(r.sent(0, JobId(1)), Some(MIN_RETRY_US));
        assert_eq!(r.accepted(0, JobId(1)), Some(MIN_RESUBMIT_US));
    }

    #[test]
    fn a_send_is_a_replay_once_acknowledged_or_once_traffic_moved() {
        assert!(!is_replay(false, &"a", &"a"), "a first send, or a retry to the same orchestrator");
        assert!(is_replay(true, &"a", &"a"), "acknowledged before");
        assert!(is_replay(false, &"a", &"b"), "traffic moved since the first send, acknowledged or not");
    }
}
