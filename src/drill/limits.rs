//! The explicit limits on what a scenario file may ask for, with units.
//!
//! Every count and every duration a scenario writes has an upper bound,
//! checked by [`crate::drill::scenario::validate`] before anything runs, so
//! that no file can make the harness allocate without bound, loop without
//! end, or overflow time arithmetic. The bounds are generous for real drills
//! (the largest built-in workload, `agentdrill bench`'s throughput run, uses
//! 1,000,000 tasks on 256 workers over 12 hours) and tight enough that the
//! worst in-range drill still finishes.
//!
//! Why each bound holds the line:
//! - durations: at most [`MAX_SPAN_MS`] (30 days), so a time in
//!   microseconds stays below 2.6 × 10¹² and sums and products of a few of
//!   them (a latency × a slow factor, a start + a duration) never come near
//!   `u64::MAX`;
//! - counts that size an allocation (workers build host names and
//!   components, tasks size the ground truth, a breaker threshold sizes its
//!   ring of failure times): [`MAX_WORKERS`], [`MAX_TASKS`],
//!   [`MAX_FAILURE_THRESHOLD`];
//! - periodic timers: each fires at most [`MAX_TIMER_FIRINGS`] times over
//!   the horizon, and vector snapshots are at least
//!   [`MIN_SNAPSHOT_INTERVAL_MS`] apart because the retention ladder keeps
//!   every snapshot of the last hour and prunes over all of them;
//! - the client's resends: at most [`MAX_CLIENT_RESENDS`] over the horizon
//!   (tasks × horizon / period), since each waiting job is sent again every
//!   period;
//! - idle workers' lease polls: at most [`MAX_WORKER_POLLS`] over the
//!   horizon (2 × workers × horizon / poll), since every idle worker asks
//!   for work again once a lease (1 to 30 s), busy or not, for the whole
//!   horizon;
//! - what the bounds above cannot see, sources of work multiplying each
//!   other (a queue redelivering thousands of unacknowledged messages while
//!   the client resubmits the same jobs): a budget of
//!   [`MAX_DRILL_EVENTS`] and [`MAX_DRILL_HEAP_BYTES`] that the running
//!   drill checks ([`crate::drill::Budget`]), stopping with a clean error.

/// A day, in milliseconds.
const DAY_MS: u64 = 86_400_000;

/// The longest horizon a drill may simulate: 30 days, in milliseconds.
pub const MAX_HORIZON_MS: u64 = 30 * DAY_MS;

/// The longest any other duration may be (a lease, a lag, a latency, a
/// timeout, a TTL, a fault's start or length, a clock offset): 30 days, in
/// milliseconds.
pub const MAX_SPAN_MS: u64 = 30 * DAY_MS;

/// The longest per-unit time (a provider's generation time per output
/// token, the vector restore time per point): 1 s, in microseconds.
pub const MAX_PER_UNIT_US: u64 = 1_000_000;

/// The slowest standing network link (one-way latency plus jitter, within
/// or between regions): 250 ms, in microseconds. Slower than the farthest
/// pair of cloud regions; a worse link is a `link_degradation` fault.
pub const MAX_LINK_US: u64 = 250_000;

/// The most workers per serving region.
pub const MAX_WORKERS: u32 = 1_024;

/// The most jobs in a workload (`agentdrill bench` runs 1,000,000 in about
/// 3 GB of memory).
pub const MAX_TASKS: u32 = 1_000_000;

/// The most faults in one scenario.
pub const MAX_FAULTS: usize = 1_000;

/// The most providers in `stack.providers`.
pub const MAX_PROVIDERS: usize = 16;

/// The most entries in `workload.templates`.
pub const MAX_TEMPLATES: usize = 64;

/// The most entries in `stack.anti_patterns`.
pub const MAX_ANTI_PATTERNS: usize = 64;

/// The highest failure threshold (of a circuit breaker or of the failover
/// controller's health checks), in consecutive or windowed failures.
pub const MAX_FAILURE_THRESHOLD: u32 = 1_000;

/// The most retries a provider SDK makes on a retryable error.
pub const MAX_RETRIES: u32 = 100;

/// The highest latency multiplier of a `slow` provider outage.
pub const MAX_SLOW_FACTOR: u32 = 1_000;

/// The most output tokens streamed before a `stream_error`.
pub const MAX_STREAM_TOKENS: u32 = 1_000_000;

/// The most times one periodic timer (a recovery scan, a replication tick,
/// a health check, an integrity check, a heartbeat, a probe, a client
/// retry, a queue redelivery) may fire over the horizon.
pub const MAX_TIMER_FIRINGS: u64 = 1_000_000;

/// The most submissions the client may send again over the horizon, as
/// `tasks × horizon / period` for its two resend timers: `submit_retry`
/// (a submission not acknowledged) and `resubmit_after` (an accepted job not
/// finished, at least 1 s). A job waiting in a long queue is resubmitted
/// every period, so the work grows with tasks × waiting time.
pub const MAX_CLIENT_RESENDS: u64 = 20_000_000;

/// The most lease requests idle workers may send over the horizon, as
/// `2 × workers × horizon / poll` (both regions at full size, the most a
/// failover or active-active can run; an idle worker asks again every
/// [`crate::components::worker::lease_poll_us`]: one lease, 1 to 30 s; the
/// figures below are for 30 s). Each poll is about
/// two simulated events (the request and its watchdog): 1,024 workers over
/// 30 days would be 177 million events a run, 12 CPU seconds for the drill
/// and its baseline even with no work to do. At this bound a drill spends at
/// most about 40 million events (3 s) on idle polling: 1,024 workers run for
/// up to 3 days 9 h, 256 workers (the bench) for up to 13 days 13 h.
pub const MAX_WORKER_POLLS: u64 = 20_000_000;

/// The most simulated events one drill may handle, over its fault-free
/// baseline and the drill itself. `agentdrill bench`'s largest drill (a
/// million tasks over 12 hours, no faults) handles 40 million, about 6
/// million a CPU second. An event's cost grows with what the drill holds
/// in memory (cache misses, not work): a drill holding twenty million
/// queued events in 2.9 GB handles about 3 million a second
/// (`fixtures/in-range/at-once-backlog-1ms-ack-wait.toml`; 2026-12-02, AMD
/// EPYC; half that on an earlier session's host). At 160 million that
/// drill ran to its end in 40 to 78 CPU seconds, too close to the 120 s
/// cap `tests/in_range_scenarios.rs` puts on any in-range file; at this
/// bound it stops in about 35.
pub const MAX_DRILL_EVENTS: u64 = 100_000_000;

/// The most heap one run of a drill may hold: 3 GiB, in bytes. The
/// million-task drill peaks at 1.9 GiB; a growing vector doubles, so the
/// process stays below twice this.
pub const MAX_DRILL_HEAP_BYTES: u64 = 3 << 30;

/// The shortest vector snapshot interval: 10 s, in milliseconds. The
/// retention ladder keeps every snapshot of the last hour (at most 360 at
/// this bound) and prunes over all of them at each snapshot.
pub const MIN_SNAPSHOT_INTERVAL_MS: u64 = 10_000;

/// The longest store commit (`[stack] commit_latency`): 1 min, in
/// milliseconds. A database that takes longer to commit is down, not slow:
/// a fault, not a latency.
pub const MAX_COMMIT_LATENCY_MS: u64 = 60_000;

/// The shortest queue redelivery wait (`ack_wait_ms`): 1 ms. At 0 a
/// message would be redelivered at the same instant for ever.
pub const MIN_ACK_WAIT_MS: u64 = 1;

/// The largest scenario file (and included file) read: 1 MiB, in bytes.
pub const MAX_FILE_BYTES: u64 = 1 << 20;

/// The most errors listed for one scenario; the list ends with "and N
/// more" past it.
pub const MAX_LISTED_ERRORS: usize = 100;
