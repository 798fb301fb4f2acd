//! Two workers on one step, from the fakes' ground truth: the record of
//! every side-effect request and lookup the payment and email fakes served
//! (arrival on the fakes' clock and on the boot clock, the sender slot,
//! the (job, step) it named, and the call of another sender it met while
//! that call was still being processed), and the two counts judged from it
//! after the drill with the simulator's definitions
//! ([`crate::drill::measure::Counts`]):
//!
//! - **concurrent runs** ([`concurrent_runs`]): a call for a (job, step)
//!   arriving while another sender's call for it is being processed (its
//!   effect's processing time, [`SideEffectApi`]'s), or a lookup whose
//!   answer holds such a call of a sender still running: not SIGKILLed or
//!   exited since it sent it, not frozen (SIGSTOP) now — a lookup after a
//!   stall no lease can outlast is the reconcile safeguard, as in
//!   `sim::stack`;
//! - **stale actions** ([`stale_actions`]): a call sent after a newer lease
//!   on the sender's task was granted to another, judged against the lease
//!   history of the reference stack's `agentdrill.event_log` (the sender's
//!   lease: the newest one granted to its worker id on the job's tasks by
//!   the request's arrival).
//!
//! [`SideEffectApi`]: crate::components::ledger::SideEffectApi

use serde::Serialize;

use crate::components::ids::{HostId, Micros};
use crate::components::ledger::LedgerEntry;

/// The sender of a request that came in on a shared port (no slot): it
/// is never compared with another sender.
pub const NO_SENDER: HostId = HostId(u32::MAX);

/// The host id a ledger entry carries for sender `slot` (the live fakes
/// attribute an effect to the sender slot whose own port it came in on).
pub fn sender_host(slot: Option<u16>) -> HostId {
    slot.map_or(NO_SENDER, |s| HostId(u32::from(s)))
}

/// What a request asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestKind {
    /// A side-effect call (a charge, a refund, an email).
    Call,
    /// A lookup (search, list by tag or by payment): reconciliation.
    Lookup,
}

/// Another sender's call still being processed when a request arrived.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Met {
    /// Its sender slot.
    pub slot: u16,
    /// When it arrived (the fakes' clock, µs).
    pub sent_us: Micros,
}

/// One side-effect request or lookup as a fake saw it.
#[derive(Clone, Debug, Serialize)]
pub struct EffectRequest {
    /// Arrival on the fakes' clock (µs since they started).
    pub at_us: Micros,
    /// Arrival on the boot clock (`CLOCK_BOOTTIME`, µs): the reference
    /// stack's clock, which its event log's times are on.
    pub boot_us: Micros,
    /// The sender slot (None: a shared port).
    pub slot: Option<u16>,
    /// Call or lookup.
    pub kind: RequestKind,
    /// The job and step a call named (None for a lookup).
    pub job: Option<u32>,
    /// See `job`.
    pub step: Option<u16>,
    /// Another sender's call it met (see [`meeting`]).
    pub met: Option<Met>,
}

/// The first effect among `candidates` (ledger indices) still being
/// processed at `now_us` (arrived, processing time not over) that another
/// known sender than `sender` asked for.
pub fn meeting(
    ledger: &[LedgerEntry],
    processing_us: Micros,
    now_us: Micros,
    sender: Option<u16>,
    candidates: impl IntoIterator<Item = usize>,
) -> Option<Met> {
    let me = sender?;
    candidates.into_iter().filter_map(|i| ledger.get(i)).find_map(|e| {
        let busy = e.at_us <= now_us && now_us < e.at_us.saturating_add(processing_us);
        let other = u16::try_from(e.origin.host.0).ok().filter(|&s| s != me && e.origin.host != NO_SENDER);
        other.filter(|_| busy).map(|slot| Met { slot, sent_us: e.at_us })
    })
}

/// The ledger entries a call for (`job`, `step`) could meet at `now_us`:
/// those arrived within the last `processing_us` (the ledger is in time
/// order, so only its tail is read).
pub fn in_progress_for(
    ledger: &[LedgerEntry],
    processing_us: Micros,
    now_us: Micros,
    job: u32,
    step: u16,
) -> Vec<usize> {
    let since = now_us.saturating_sub(processing_us);
    (0..ledger.len())
        .rev()
        .take_while(|&i| ledger[i].at_us >= since)
        .filter(|&i| ledger[i].origin.job.0 == job && ledger[i].origin.step == step)
        .collect()
}

/// What a process slot went through, on the fakes' clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StallKind {
    /// SIGKILLed by the harness, or exited by itself.
    Killed,
    /// SIGSTOPped.
    Stopped,
    /// SIGCONTed.
    Continued,
}

/// One stall record of a slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stall {
    /// The slot.
    pub slot: usize,
    /// What happened.
    pub kind: StallKind,
    /// When (the fakes' clock, µs).
    pub at_us: Micros,
}

/// Whether slot `slot`, which sent a request at `sent_us`, still runs at
/// `now_us`: not killed since, not frozen now (the simulator's
/// `still_running`).
pub fn still_running(stalls: &[Stall], slot: usize, sent_us: Micros, now_us: Micros) -> bool {
    let mine = || stalls.iter().filter(|s| s.slot == slot);
    let killed = mine().any(|s| s.kind == StallKind::Killed && sent_us < s.at_us && s.at_us <= now_us);
    let frozen = mine()
        .filter(|s| s.at_us <= now_us && s.kind != StallKind::Killed)
        .max_by_key(|s| s.at_us)
        .is_some_and(|s| s.kind == StallKind::Stopped);
    !killed && !frozen
}

/// Requests that met another sender's call for their step: every call
/// that did, and every lookup that did while that sender still ran.
pub fn concurrent_runs(requests: &[EffectRequest], stalls: &[Stall]) -> u64 {
    requests
        .iter()
        .filter(|r| match (r.kind, r.met) {
            (_, None) => false,
            (RequestKind::Call, Some(_)) => true,
            (RequestKind::Lookup, Some(m)) => still_running(stalls, usize::from(m.slot), m.sent_us, r.at_us),
        })
        .count() as u64
}

/// A lease grant of the reference stack, from its event log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grant {
    /// The job of the task.
    pub job: u32,
    /// The task.
    pub task: u64,
    /// The fencing token.
    pub token: u64,
    /// The worker it went to.
    pub holder: HostId,
    /// When, on the boot clock (µs).
    pub at_us: Micros,
}

/// Calls sent under a lease that had already moved on: for each call of a
/// sender whose worker id `host_of(slot)` gives, its lease is the newest
/// grant to that worker on the job's tasks by the call's arrival; the call
/// is stale when the same task has a grant with a higher token by then.
/// A call with no lease of its sender to judge by (a shared port, or a
/// grant the serving log does not hold) is not counted.
pub fn stale_actions(requests: &[EffectRequest], grants: &[Grant], host_of: impl Fn(u16) -> Option<HostId>) -> u64 {
    requests
        .iter()
        .filter(|r| r.kind == RequestKind::Call)
        .filter(|r| {
            let (Some(job), Some(slot)) = (r.job, r.slot) else { return false };
            let Some(me) = host_of(slot) else { return false };
            let by_then = || grants.iter().filter(|g| g.job == job && g.at_us <= r.boot_us);
            let Some(mine) = by_then().filter(|g| g.holder == me).max_by_key(|g| (g.token, g.at_us)) else {
                return false;
            };
            by_then().any(|g| g.task == mine.task && g.token > mine.token)
        })
        .count() as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::components::ids::{JobId, Origin, TaskId};

    fn entry(at_us: Micros, slot: u16, job: u32, step: u16) -> LedgerEntry {
        let origin = Origin { job: JobId(job), step, host: HostId(u32::from(slot)), task: TaskId(0), token: 0 };
        LedgerEntry { at_us, origin, key: None, params: 0 }
    }

    fn call(at_us: Micros, slot: u16, met: Option<Met>) -> EffectRequest {
        EffectRequest {
            at_us,
            boot_us: at_us,
            slot: Some(slot),
            kind: RequestKind::Call,
            job: Some(3),
            step: Some(2),
            met,
        }
    }

    #[test]
    fn a_call_meets_another_senders_call_only_while_it_is_processed() {
        let ledger = [entry(1_000, 0, 3, 2), entry(1_500, 1, 3, 2)];
        let near = in_progress_for(&ledger, 2_000, 2_500, 3, 2);
        assert_eq!(near, vec![1, 0]);
        assert_eq!(meeting(&ledger, 2_000, 2_500, Some(1), near.clone()), Some(Met { slot: 0, sent_us: 1_000 }));
        // Its own call is no other sender; an unknown sender is never compared.
        assert_eq!(meeting(&ledger, 2_000, 2_500, Some(0), [0]), None);
        assert_eq!(meeting(&ledger, 2_000, 2_500, None, near), None);
        // Processing over: nothing met.
        assert_eq!(meeting(&ledger, 2_000, 3_000, Some(1), in_progress_for(&ledger, 2_000, 3_000, 3, 2)), None);
        assert!(in_progress_for(&ledger, 2_000, 2_500, 3, 1).is_empty(), "another step");
    }

    #[test]
    fn a_lookup_meeting_a_killed_or_frozen_senders_call_is_reconciliation() {
        let met = Some(Met { slot: 0, sent_us: 1_000 });
        let lookup = |at_us| EffectRequest { kind: RequestKind::Lookup, ..call(at_us, 1, met) };
        let reqs = [lookup(1_200), call(1_300, 1, met), call(1_400, 1, None)];
        assert_eq!(concurrent_runs(&reqs, &[]), 2, "a running sender: the lookup and the call count");
        let killed = [Stall { slot: 0, kind: StallKind::Killed, at_us: 1_100 }];
        assert_eq!(concurrent_runs(&reqs, &killed), 1, "killed since: only the call counts");
        let frozen = [Stall { slot: 0, kind: StallKind::Stopped, at_us: 500 }];
        assert_eq!(concurrent_runs(&reqs, &frozen), 1, "frozen now");
        let thawed = [
            Stall { slot: 0, kind: StallKind::Stopped, at_us: 500 },
            Stall { slot: 0, kind: StallKind::Continued, at_us: 900 },
        ];
        assert_eq!(concurrent_runs(&reqs, &thawed), 2, "running again");
        let killed_before = [Stall { slot: 0, kind: StallKind::Killed, at_us: 900 }];
        assert_eq!(concurrent_runs(&reqs, &killed_before), 2, "a kill before it sent is an earlier process");
    }

    #[test]
    fn a_call_after_a_newer_grant_to_another_is_stale() {
        let g = |task, token, holder, at_us| Grant { job: 3, task, token, holder: HostId(holder), at_us };
        let grants = [g(7, 1, 100, 100), g(7, 2, 101, 5_000), g(8, 9, 100, 9_000)];
        let host = |slot: u16| Some(HostId(100 + u32::from(slot)));
        // Slot 0 (worker 100) before and after the task moved to worker 101.
        assert_eq!(stale_actions(&[call(4_000, 0, None)], &grants, host), 0);
        assert_eq!(stale_actions(&[call(6_000, 0, None)], &grants, host), 1);
        // The new holder is not stale; nor is worker 100 on a later task of the job.
        assert_eq!(stale_actions(&[call(6_000, 1, None)], &grants, host), 0);
        assert_eq!(stale_actions(&[call(9_500, 0, None)], &grants, host), 0);
        // No grant to the sender by then: not judged.
        assert_eq!(stale_actions(&[call(50, 0, None)], &grants, host), 0);
        let lookup = EffectRequest { kind: RequestKind::Lookup, ..call(6_000, 0, None) };
        assert_eq!(stale_actions(&[lookup], &grants, host), 0, "lookups are not side effects");
    }
}
