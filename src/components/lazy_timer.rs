//! A periodic timer armed only while a firing could find work: the
//! orchestrator's recovery scan and replication tick, and the drill
//! client's probe tick. The schedule is that of a timer re-armed on every
//! firing; the firings that would find nothing are never queued.

use crate::components::ids::Micros;

/// A periodic timer armed only while a firing could find work. Its firings
/// fall where a timer re-armed on every firing would fire (`phase_us` plus
/// whole periods), so a firing it skips is one that would have found
/// nothing, and the work it does happens at the same times.
#[derive(Clone, Copy, Debug, Default)]
pub struct LazyTimer {
    /// When the schedule started or last fired.
    phase_us: Micros,
    /// When the armed timer fires (`None`: none armed). Timers cannot be
    /// cancelled, so a firing before this (one armed before a demotion, or
    /// before an earlier re-arm) is stale and ignored.
    due_us: Option<Micros>,
}

impl LazyTimer {
    /// The schedule starts now, with no timer armed.
    pub fn restart(&mut self, now_us: Micros) {
        *self = LazyTimer { phase_us: now_us, due_us: None };
    }

    /// Whether a firing at `now_us` is the armed timer's. If so, none is
    /// armed any more and the schedule goes on from now (a firing a pause
    /// deferred shifts it, as it shifts a timer re-armed on firing).
    pub fn fired(&mut self, now_us: Micros) -> bool {
        match self.due_us {
            Some(due_us) if now_us >= due_us => {
                self.restart(now_us);
                true
            }
            _ => false,
        }
    }

    /// Arms the timer for the schedule's first firing after `now_us` and
    /// at or after `not_before_us`, unless the armed one fires no later.
    /// Returns the delay to set a timer for, if one is needed.
    pub fn arm(&mut self, period_us: Micros, now_us: Micros, not_before_us: Micros) -> Option<Micros> {
        let period_us = period_us.max(1);
        let target_us = not_before_us.max(now_us + 1);
        let due_us = self.phase_us + target_us.saturating_sub(self.phase_us).div_ceil(period_us) * period_us;
        if self.due_us.is_some_and(|d| d <= due_us) {
            return None;
        }
        self.due_us = Some(due_us);
        Some(due_us - now_us)
    }

    /// Whether a timer is armed (a firing is awaited).
    pub fn is_armed(&self) -> bool {
        self.due_us.is_some()
    }

    /// Forgets the armed timer: its firing, and any earlier one's, is stale
    /// (the host crashed, or was demoted, and re-arms from scratch).
    pub fn disarm(&mut self) {
        self.due_us = None;
    }
}

#[cfg(test)]
mod tests {
    use super::LazyTimer;

    #[test]
    fn a_lazy_timer_fires_on_its_schedule_and_ignores_stale_firings() {
        let mut t = LazyTimer::default();
        t.restart(0);
        // Work at 7 that is due at once: the next point of the 5 µs schedule.
        assert_eq!(t.arm(5, 7, 0), Some(3));
        // Work due later needs no earlier timer.
        assert_eq!(t.arm(5, 8, 23), None);
        // Work due at 10 exactly fires at 10, not 15.
        let mut u = LazyTimer::default();
        u.restart(0);
        assert_eq!(u.arm(5, 1, 10), Some(9));
        // An earlier need re-arms; the later timer's firing is then stale.
        let mut v = LazyTimer::default();
        v.restart(0);
        assert_eq!(v.arm(5, 1, 23), Some(24)); // due 25
        assert_eq!(v.arm(5, 2, 6), Some(8)); // due 10
        assert!(!v.fired(9), "before its due time a firing is stale");
        assert!(v.fired(10));
        assert!(!v.fired(10), "a second firing at the same instant is stale");
        assert!(!v.fired(25), "the timer replaced by an earlier one is stale");
        // A firing a pause deferred shifts the schedule, as a re-armed timer's would.
        assert_eq!(v.arm(5, 10, 0), Some(5)); // due 15
        assert!(v.fired(17));
        assert_eq!(v.arm(5, 17, 0), Some(5)); // due 22
    }
}
