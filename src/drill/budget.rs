//! What one drill may spend while it runs: simulated events and heap.
//!
//! `validate` bounds every count and duration a scenario writes
//! ([`crate::drill::limits`]), and bounds the work of each periodic source
//! on its own (timers, the client's resends, idle workers' polls). Sources
//! can still multiply: sixteen thousand unacknowledged queue messages
//! redelivered every 30 s for a day, while the client resubmits the same
//! jobs every two minutes, is in range on every bound and needs hours and
//! gigabytes. The budget is the backstop that makes any in-range file safe:
//! the run stops at the first event past it with [`OverBudget`], which says
//! how far the drill got and what to change, and the command exits 2, as
//! for any other input the harness refuses.
//!
//! The event budget covers the whole drill (its fault-free baseline and the
//! drill itself). The heap budget is read from [`crate::heap`] on the
//! drill's own thread, so drills side by side do not count against each
//! other; where the counting allocator is not installed (test binaries, a
//! library user) only the event budget holds.

use std::fmt;

use crate::components::ids::Micros;
use crate::drill::limits;
use crate::drill::scenario::Dur;

/// How many events pass between two reads of the heap counter.
const HEAP_CHECK_EVERY_EVENTS: u64 = 1 << 16;

/// What one drill may spend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    /// Events the simulator may handle over the drill and its baseline:
    /// those it hands out and the messages and timers it drops
    /// ([`crate::sim::RuntimeStats::work`]).
    pub max_events: u64,
    /// Heap bytes one run of the simulation may hold above what its thread
    /// held when it started.
    pub max_heap_bytes: u64,
}

impl Budget {
    /// No limit: for built-in workloads (`bench`'s opt-in 10M-task drill)
    /// and tests that size their scenarios themselves.
    pub const UNLIMITED: Budget = Budget { max_events: u64::MAX, max_heap_bytes: u64::MAX };
}

impl Default for Budget {
    /// [`limits::MAX_DRILL_EVENTS`] and [`limits::MAX_DRILL_HEAP_BYTES`].
    fn default() -> Self {
        Budget { max_events: limits::MAX_DRILL_EVENTS, max_heap_bytes: limits::MAX_DRILL_HEAP_BYTES }
    }
}

/// What ran out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resource {
    /// Simulated events.
    Events,
    /// Heap bytes.
    Heap,
}

/// A drill stopped because it needed more than its [`Budget`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct OverBudget {
    /// What ran out.
    pub resource: Resource,
    /// The limit that was reached (events, or bytes).
    pub limit: u64,
    /// The simulated time reached, microseconds.
    pub at_us: Micros,
    /// The drill's horizon, microseconds.
    pub horizon_us: Micros,
    /// Whether it ran out in the fault-free baseline run.
    pub baseline: bool,
}

impl fmt::Display for OverBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = |us: Micros| Dur(us / 1_000);
        let pct = self.at_us as f64 / self.horizon_us.max(1) as f64 * 100.0;
        let run = if self.baseline { "fault-free baseline" } else { "drill" };
        let (spent, flag) = match self.resource {
            Resource::Events => (format!("{} simulated events", thousands(self.limit)), "--max-events"),
            Resource::Heap => (format!("{} MiB of memory", self.limit >> 20), "--max-memory-mib"),
        };
        write!(
            f,
            "the {run} needs more than {spent}, the budget of one drill: it stopped at simulated {} of its {} \
             horizon ({pct:.0} %). Make it smaller (fewer `workload.tasks` or `stack.workers`, a shorter \
             `horizon`, longer periods such as `stack.queue.ack_wait_ms`, `workload.resubmit_after` and \
             `workload.submit_retry`) or raise the budget with {flag}",
            ms(self.at_us),
            ms(self.horizon_us),
        )
    }
}

/// `1234567` as `1,234,567`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Tracks one run of the simulation against a [`Budget`].
pub(crate) struct Meter {
    budget: Budget,
    horizon_us: Micros,
    baseline: bool,
    /// The thread's heap bytes when the run started (None: not counted).
    heap_base: Option<isize>,
    /// The event count at which to look again.
    next_check: u64,
}

impl Meter {
    /// Starts tracking a run (`baseline`: the fault-free one).
    pub(crate) fn start(budget: &Budget, horizon_us: Micros, baseline: bool) -> Meter {
        let heap_base =
            (budget.max_heap_bytes != u64::MAX && crate::heap::installed()).then(crate::heap::thread_heap_bytes);
        let next_check = HEAP_CHECK_EVERY_EVENTS.min(budget.max_events);
        Meter { budget: *budget, horizon_us, baseline, heap_base, next_check }
    }

    /// Checks the budget after `events` events, at simulated `now_us`.
    /// Costs a comparison on all but one event in
    /// [`HEAP_CHECK_EVERY_EVENTS`].
    #[inline]
    pub(crate) fn check(&mut self, events: u64, now_us: Micros) -> Result<(), OverBudget> {
        if events < self.next_check {
            return Ok(());
        }
        self.check_now(events, now_us)
    }

    #[cold]
    fn check_now(&mut self, events: u64, now_us: Micros) -> Result<(), OverBudget> {
        let over = |resource, limit| OverBudget {
            resource,
            limit,
            at_us: now_us,
            horizon_us: self.horizon_us,
            baseline: self.baseline,
        };
        if events >= self.budget.max_events {
            return Err(over(Resource::Events, self.budget.max_events));
        }
        if let Some(base) = self.heap_base {
            let held = u64::try_from(crate::heap::thread_heap_bytes().saturating_sub(base)).unwrap_or(0);
            if held > self.budget.max_heap_bytes {
                return Err(over(Resource::Heap, self.budget.max_heap_bytes));
            }
        }
        self.next_check = events.saturating_add(HEAP_CHECK_EVERY_EVENTS).min(self.budget.max_events);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_event_budget_stops_at_its_limit_and_not_before() {
        let budget = Budget { max_events: 100_000, max_heap_bytes: u64::MAX };
        let mut m = Meter::start(&budget, 1_000, false);
        for e in 0..100_000 {
            assert!(m.check(e, e / 100).is_ok(), "stopped early at event {e}");
        }
        let err = m.check(100_000, 1_000).unwrap_err();
        assert_eq!(err.resource, Resource::Events);
        assert!(err.to_string().contains("100,000 simulated events"), "{err}");
        assert!(err.to_string().contains("--max-events"), "{err}");
    }

    #[test]
    fn thousands_groups_digits() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(150_000_000), "150,000,000");
    }
}
