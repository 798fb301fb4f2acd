//! Kill points: a live drill's "kill the sender exactly here", observed at
//! the fakes.
//!
//! A drill arms a [`Point`] (which fake, optionally which job and step, the
//! Nth matching call, and a [`KillPhase`]). When the matching request
//! arrives, the fake holds it and tells the harness ([`Fired`]); the harness
//! SIGKILLs the sender's process group (the sender is known from the
//! listener port the request came in on, [`super::http::Sender`]) and acks;
//! then the fake goes on as the phase says:
//!
//! | phase | the effect | the response |
//! |---|---|---|
//! | `before_commit` | never happens | never sent (connection dropped) |
//! | `after_commit` | happens | never sent (connection dropped) |
//! | `after_response` | happens | sent to the frozen sender, which is then killed |
//!
//! With `after_response` the harness freezes the sender (SIGSTOP) when told,
//! the answer leaves into its socket, and the harness SIGKILLs it
//! [`ANSWER_FLUSH_MS`] later: it never reads the answer, however fast it is.
//! (A kill a few milliseconds after the answer left was late for a Node
//! agent, which read and persisted its charge's answer first: the drill
//! exercised nothing.)
//!
//! A pause point (`pause_at_call`) freezes the sender (SIGSTOP) instead,
//! before anything leaves: with `after_response` the answer then waits in
//! the frozen sender's socket and is read when it thaws (a zombie that wakes
//! holding a result and a lease that moved on).
//!
//! The hook is one middleware layer around the handlers, so the payment,
//! email and model handlers do not change; it costs nothing while no point
//! is armed on the fake.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use super::http::{Ctx, Kill, Sender, drop_connection, json_response};
use super::{Fake, lock};
use crate::components::ids::Micros;

/// Most kill points armed at once.
pub const MAX_POINTS: usize = 64;
/// Largest request body a kill point reads to find the job, in bytes.
pub const MAX_BODY_BYTES: usize = 4 << 20;
/// How long a held request waits for the harness's ack, in ms.
pub const ACK_TIMEOUT_MS: u64 = 10_000;
/// After an `after_response` point fired (the sender frozen), how long the
/// harness waits for the answer to leave into the sender's socket before
/// the SIGKILL, in ms.
pub const ANSWER_FLUSH_MS: u64 = 50;

/// Where, relative to the effect and the response, the sender dies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum KillPhase {
    /// The request arrived; the effect never happens.
    BeforeCommit,
    /// The effect happened; the response never leaves (in flight).
    AfterCommit,
    /// The response left; the sender dies before it can persist it.
    AfterResponse,
}

impl KillPhase {
    /// Name as written in scenario files.
    pub fn name(self) -> &'static str {
        match self {
            KillPhase::BeforeCommit => "before_commit",
            KillPhase::AfterCommit => "after_commit",
            KillPhase::AfterResponse => "after_response",
        }
    }
}

/// Which request a point fires on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Point {
    /// The fake.
    pub fake: Fake,
    /// Only requests of this job (found in the body as `job-<N>`).
    pub job: Option<u32>,
    /// Only requests for this step (`metadata[step]`, or the `step` tag).
    pub step: Option<u16>,
    /// The Nth matching call, 1-based. Only `POST` requests count (the
    /// side-effecting and model calls); reads pass untouched.
    pub call: u32,
    /// What happens around the kill.
    pub phase: KillPhase,
    /// The harness pauses the sender (SIGSTOP) instead of killing it: it is
    /// told before anything leaves, whatever the phase, so an
    /// `after_response` answer waits in the frozen sender's socket.
    pub pause: bool,
}

/// A point fired: the harness kills `slot`'s process, then sends on `ack`.
#[derive(Debug)]
pub struct Fired {
    /// The point's index (the order it was armed in).
    pub point: usize,
    /// The sender slot the request came from (None: the shared port).
    pub slot: Option<u16>,
    /// The job the request named.
    pub job: Option<u32>,
    /// When the request arrived, µs since the fakes started.
    pub at_us: Micros,
    /// The phase.
    pub phase: KillPhase,
    /// Send when the sender is dead (dropping it also releases the request).
    pub ack: oneshot::Sender<()>,
}

#[derive(Debug)]
struct Armed {
    point: Point,
    seen: u32,
    fired: bool,
    tx: mpsc::UnboundedSender<Fired>,
}

/// The armed points of a served instance.
#[derive(Debug, Default)]
pub struct Table {
    points: Mutex<Vec<Armed>>,
    /// Bit per fake ([`Fake::index`]): some unfired point watches it.
    watched: AtomicU8,
}

/// Errors arming a point.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ArmError {
    /// Too many points.
    #[error("at most {MAX_POINTS} kill points per drill; split the drill")]
    TooMany,
    /// Call number 0.
    #[error("kill point call numbers start at 1 (the first matching call); got 0")]
    CallZero,
}

impl Table {
    /// Arms `point`; fired points are sent on `tx`. Returns its index.
    pub fn arm(&self, point: Point, tx: mpsc::UnboundedSender<Fired>) -> Result<usize, ArmError> {
        if point.call == 0 {
            return Err(ArmError::CallZero);
        }
        let mut ps = lock(&self.points);
        if ps.len() >= MAX_POINTS {
            return Err(ArmError::TooMany);
        }
        self.watched.fetch_or(1 << point.fake.index(), Ordering::SeqCst);
        ps.push(Armed { point, seen: 0, fired: false, tx });
        Ok(ps.len() - 1)
    }

    /// Disarms every point.
    pub fn clear(&self) {
        lock(&self.points).clear();
        self.watched.store(0, Ordering::SeqCst);
    }

    fn watched(&self, fake: Fake) -> bool {
        self.watched.load(Ordering::Relaxed) & (1 << fake.index()) != 0
    }

    /// The first unfired point this request completes, marked fired.
    fn hit(
        &self,
        fake: Fake,
        job: Option<u32>,
        step: Option<u16>,
    ) -> Option<(usize, KillPhase, bool, mpsc::UnboundedSender<Fired>)> {
        let mut ps = lock(&self.points);
        let mut found = None;
        for (i, a) in ps.iter_mut().enumerate() {
            let p = &a.point;
            let matches =
                p.fake == fake && p.job.is_none_or(|j| job == Some(j)) && p.step.is_none_or(|s| step == Some(s));
            if a.fired || !matches {
                continue;
            }
            a.seen += 1;
            if a.seen == p.call && found.is_none() {
                a.fired = true;
                found = Some((i, p.phase, p.pause, a.tx.clone()));
            }
        }
        let still: u8 = ps.iter().filter(|a| !a.fired).fold(0, |m, a| m | (1 << a.point.fake.index()));
        self.watched.store(still, Ordering::SeqCst);
        found
    }
}

/// The step a request names: `metadata[step]=N` (form) or a `step` tag (JSON).
fn step_of(body: &[u8]) -> Option<u16> {
    if let Ok(pairs) = serde_urlencoded::from_bytes::<Vec<(String, String)>>(body)
        && let Some((_, v)) = pairs.iter().find(|(k, _)| k == "metadata[step]")
    {
        return v.parse().ok();
    }
    let v: Value = serde_json::from_slice(body).ok()?;
    let tags = v["tags"].as_array()?;
    tags.iter().find(|t| t["name"] == "step")?["value"].as_str()?.parse().ok()
}

/// The job a request names (`job-<N>`): in the body as sent, or in a form
/// body's decoded values (an encoder may escape `-` as `%2D`, as
/// `application/x-www-form-urlencoded` allows).
fn job_of(body: &[u8]) -> Option<u32> {
    super::script::find_job(&String::from_utf8_lossy(body)).or_else(|| {
        let pairs = serde_urlencoded::from_bytes::<Vec<(String, String)>>(body).ok()?;
        pairs.iter().find_map(|(_, v)| super::script::find_job(v))
    })
}

/// Tells the harness and waits for its ack (or the timeout).
async fn fire(
    hit: (usize, KillPhase, bool, mpsc::UnboundedSender<Fired>),
    slot: Option<u16>,
    job: Option<u32>,
    at_us: Micros,
) {
    let (point, phase, _, tx) = hit;
    let (ack, acked) = oneshot::channel();
    if tx.send(Fired { point, slot, job, at_us, phase, ack }).is_ok() {
        let _ = tokio::time::timeout(Duration::from_millis(ACK_TIMEOUT_MS), acked).await;
    }
}

/// The middleware: passes requests through until one completes a point.
pub async fn layer(State(ctx): State<Ctx>, req: Request, next: Next) -> Response {
    if !ctx.shared.killpoints.watched(ctx.fake) || req.method() != axum::http::Method::POST {
        return next.run(req).await;
    }
    let at_us = ctx.shared.now_us();
    let slot = req.extensions().get::<Sender>().and_then(|s| s.0);
    let kill = req.extensions().get::<Kill>().cloned();
    let (parts, body) = req.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, MAX_BODY_BYTES).await else {
        return json_response(413, &serde_json::json!({ "error": "agentdrill: request body too large or unreadable" }));
    };
    let job = job_of(&bytes);
    let hit = ctx.shared.killpoints.hit(ctx.fake, job, step_of(&bytes));
    let req = Request::from_parts(parts, Body::from(bytes));
    let Some(hit) = hit else { return next.run(req).await };
    tracing::info!(fake = ctx.fake.name(), ?job, ?slot, phase = hit.1.name(), "kill point fired");
    match hit.1 {
        KillPhase::BeforeCommit => {
            fire(hit, slot, job, at_us).await;
            drop_connection(kill).await
        }
        KillPhase::AfterCommit => {
            let _effect_done = next.run(req).await;
            fire(hit, slot, job, at_us).await;
            drop_connection(kill).await
        }
        KillPhase::AfterResponse if hit.2 => {
            // A pause: the sender is frozen before its answer leaves.
            fire(hit, slot, job, at_us).await;
            next.run(req).await
        }
        KillPhase::AfterResponse => {
            // The effect commits; the harness freezes the sender before
            // the answer leaves, and kills it once it has left.
            let resp = next.run(req).await;
            fire(hit, slot, job, at_us).await;
            resp
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_point_fires_once_on_the_nth_matching_call_and_stops_watching() {
        let t = Table::default();
        let (tx, _rx) = mpsc::unbounded_channel();
        let p = Point {
            fake: Fake::Payment,
            job: Some(3),
            step: None,
            call: 2,
            phase: KillPhase::AfterCommit,
            pause: false,
        };
        assert_eq!(t.arm(p.clone(), tx.clone()), Ok(0));
        assert_eq!(t.arm(Point { call: 0, ..p }, tx), Err(ArmError::CallZero));
        assert!(t.watched(Fake::Payment) && !t.watched(Fake::Email));
        assert!(t.hit(Fake::Email, Some(3), None).is_none(), "another API does not count");
        assert!(t.hit(Fake::Payment, Some(4), None).is_none(), "another job does not count");
        assert!(t.hit(Fake::Payment, Some(3), None).is_none(), "first matching call");
        let (i, phase, _, _) = t.hit(Fake::Payment, Some(3), Some(1)).expect("the second matching call fires");
        assert_eq!((i, phase), (0, KillPhase::AfterCommit));
        assert!(!t.watched(Fake::Payment), "a fired point no longer costs the fake anything");
        assert!(t.hit(Fake::Payment, Some(3), None).is_none(), "fires once");
    }

    #[test]
    fn the_step_is_read_from_a_form_body_or_email_tags() {
        assert_eq!(step_of(b"amount=5&metadata%5Bjob_id%5D=job-3&metadata%5Bstep%5D=2"), Some(2));
        assert_eq!(step_of(br#"{"tags":[{"name":"job_id","value":"job-3"},{"name":"step","value":"4"}]}"#), Some(4));
        assert_eq!(step_of(b"{}"), None);
    }

    #[test]
    fn the_job_is_read_from_a_form_body_whatever_its_encoder_escaped() {
        assert_eq!(job_of(b"amount=5&metadata%5Bjob_id%5D=job-3"), Some(3));
        assert_eq!(job_of(b"amount=5&metadata%5Bjob_id%5D=job%2D7&metadata%5Bstep%5D=2"), Some(7));
        assert_eq!(job_of(br#"{"messages":[{"role":"user","content":"Run job-12 (book_flight)"}]}"#), Some(12));
        assert_eq!(job_of(b"amount=5"), None);
    }
}
