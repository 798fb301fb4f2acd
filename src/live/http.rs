//! The HTTP edge shared by every fake: the accept loop (which can drop a
//! connection on a toxic's order), the middleware that applies toxics,
//! records attempts and logs requests, and small response helpers.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tower::ServiceExt as _;

use super::toxics::{Toxic, ToxicKind};
use super::{Attempt, Fake, Shared, lock};

/// What a handler gets: the shared state and which fake it serves.
#[derive(Clone, Debug)]
pub struct Ctx {
    /// Shared state.
    pub shared: Arc<Shared>,
    /// The fake this router serves.
    pub fake: Fake,
}

/// Request extension: the toxics that apply to this request.
#[derive(Clone, Debug, Default)]
pub struct Applied(pub Vec<Toxic>);

impl Applied {
    /// Whether a schema-change toxic applies.
    pub fn schema_change(&self) -> bool {
        self.0.iter().any(|t| t.kind == ToxicKind::SchemaChange)
    }
}

/// Response extension a handler sets for the ledger of attempts.
#[derive(Clone, Copy, Debug, Default)]
pub struct Note {
    /// The job the request named.
    pub job: Option<u32>,
    /// The answer is an idempotent replay.
    pub replayed: bool,
}

/// Request extension: drops this request's connection when notified.
#[derive(Clone, Debug)]
pub(crate) struct Kill(Arc<Notify>);

/// Request extension: the sender slot whose own listener took the request
/// (None: the shared listener). Live drills give every process replica its
/// own port on every fake, so a request names its sender.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sender(pub Option<u16>);

/// Serves `app` on `listener` until `stop` turns true. A request whose
/// toxic says "drop" closes its connection with no answer. Requests are
/// tagged with `sender` ([`Sender`]).
pub async fn serve(listener: TcpListener, app: Router, mut stop: watch::Receiver<bool>, sender: Option<u16>) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.changed() => return,
        };
        let Ok((stream, _)) = accepted else { continue };
        let _ = stream.set_nodelay(true);
        let (app, mut stop) = (app.clone(), stop.clone());
        tokio::spawn(async move {
            let kill = Arc::new(Notify::new());
            let k = kill.clone();
            let svc = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(Kill(k.clone()));
                req.extensions_mut().insert(Sender(sender));
                app.clone().oneshot(req.map(Body::new))
            });
            let conn =
                hyper::server::conn::http1::Builder::new().keep_alive(true).serve_connection(TokioIo::new(stream), svc);
            tokio::select! {
                _ = conn => {}
                _ = kill.notified() => {}
                _ = stop.changed() => {}
            }
        });
    }
}

/// Adds the per-request middleware and the state to a fake's router.
pub fn with_middleware(app: Router<Ctx>, shared: Arc<Shared>, fake: Fake) -> Router {
    let ctx = Ctx { shared, fake };
    app.layer(middleware::from_fn_with_state(ctx.clone(), super::killpoint::layer))
        .layer(middleware::from_fn_with_state(ctx.clone(), per_request))
        .with_state(ctx)
}

/// What the middleware notes of a request before it is served (moved into
/// its [`Attempt`] once the status is known: no copies on the hot path).
struct Seen {
    at_ms: f64,
    fake: Fake,
    method: String,
    path: String,
    key: Option<String>,
    toxics: Vec<String>,
}

impl Seen {
    fn attempt(self, status: u16, note: Note) -> Attempt {
        Attempt {
            at_ms: self.at_ms,
            fake: self.fake.name(),
            method: self.method,
            path: self.path,
            status,
            idempotency_key: self.key,
            job: note.job,
            replayed: note.replayed,
            toxics: self.toxics,
        }
    }
}

/// Applies the fake's toxics, runs the handler, records the attempt.
async fn per_request(State(ctx): State<Ctx>, mut req: Request, next: Next) -> Response {
    let (fake, shared) = (ctx.fake, &ctx.shared);
    let applied = lock(&shared.toxics).take(fake.name());
    let seen = Seen {
        at_ms: shared.now_us() as f64 / 1_000.0,
        fake,
        method: req.method().as_str().to_owned(),
        path: req.uri().path().to_owned(),
        key: req.headers().get("idempotency-key").and_then(|v| v.to_str().ok()).map(str::to_owned),
        toxics: applied.iter().map(|t| t.name.clone()).collect(),
    };
    let kill = req.extensions().get::<Kill>().cloned();
    let mut drop_after = false;
    for t in &applied {
        match t.kind {
            ToxicKind::Latency { latency_ms } => tokio::time::sleep(Duration::from_millis(latency_ms)).await,
            ToxicKind::Hold { timeout_ms } => hold(shared, fake, &t.name, timeout_ms).await,
            ToxicKind::ResetPeer { after_effect: false } => {
                tracing::info!(fake = fake.name(), method = %seen.method, path = %seen.path, toxic = %t.name, "connection dropped");
                shared.record(seen.attempt(0, Note::default()));
                return drop_connection(kill).await;
            }
            ToxicKind::ResetPeer { after_effect: true } => drop_after = true,
            ToxicKind::Error { status, retry_after_ms } if !is_model(fake) => {
                shared.record(seen.attempt(status, Note::default()));
                return error_toxic(fake, status, retry_after_ms);
            }
            _ => {}
        }
    }
    req.extensions_mut().insert(Applied(applied));
    let resp = next.run(req).await;
    let note = resp.extensions().get::<Note>().copied().unwrap_or_default();
    let status = if drop_after { 0 } else { resp.status().as_u16() };
    tracing::info!(fake = fake.name(), method = %seen.method, path = %seen.path, status, job = ?note.job, replayed = note.replayed, "request");
    shared.record(seen.attempt(status, note));
    if drop_after {
        return drop_connection(kill).await;
    }
    resp
}

fn is_model(f: Fake) -> bool {
    matches!(f, Fake::Anthropic | Fake::Openai | Fake::Local)
}

/// Closes the request's connection without an answer.
pub(crate) async fn drop_connection(kill: Option<Kill>) -> Response {
    match kill {
        Some(Kill(n)) => {
            n.notify_one();
            std::future::pending::<Response>().await
        }
        None => StatusCode::BAD_GATEWAY.into_response(),
    }
}

/// Waits until the hold toxic `name` is removed, or `timeout_ms` passes.
async fn hold(shared: &Shared, fake: Fake, name: &str, timeout_ms: Option<u64>) {
    let limit = Duration::from_millis(timeout_ms.unwrap_or(super::toxics::MAX_DELAY_MS));
    let wait = async {
        loop {
            let changed = shared.toxics_changed.notified();
            if !lock(&shared.toxics).contains(fake.name(), name) {
                return;
            }
            changed.await;
        }
    };
    let held = &shared.held[fake.index()];
    held.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let _ = tokio::time::timeout(limit, wait).await;
    held.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
}

/// An error toxic's answer on a non-model fake, in that API's error shape.
fn error_toxic(fake: Fake, status: u16, retry_after_ms: Option<u64>) -> Response {
    let body = match fake {
        Fake::Payment => {
            let (ty, code) = if status == 429 { ("invalid_request_error", "rate_limit") } else { ("api_error", "") };
            json!({ "error": { "type": ty, "code": code, "message": format!("agentdrill toxic: HTTP {status}") } })
        }
        Fake::Email => {
            json!({ "statusCode": status, "name": if status == 429 { "rate_limit_exceeded" } else { "application_error" },
                               "message": format!("agentdrill toxic: HTTP {status}") })
        }
        _ => json!({ "status": { "error": format!("agentdrill toxic: HTTP {status}") }, "time": 0.0 }),
    };
    let mut resp = json_response(status, &body);
    if let Some(ms) = retry_after_ms {
        set_retry_after(resp.headers_mut(), ms);
    }
    resp
}

/// How a schema-change toxic reshapes an API's JSON answers: keys renamed
/// wherever they occur, and number fields turned into strings (a field
/// missing under its documented name, one of the wrong type).
#[derive(Clone, Copy, Debug)]
pub struct Reshape {
    /// `(documented name, name sent instead)`.
    pub renames: &'static [(&'static str, &'static str)],
    /// Keys whose numbers are sent as strings.
    pub stringified: &'static [&'static str],
}

/// Reshapes `v` in place (objects at any depth).
pub fn break_shape(v: &mut Value, r: Reshape) {
    match v {
        Value::Object(o) => {
            for (from, to) in r.renames {
                if let Some(x) = o.remove(*from) {
                    o.insert((*to).to_owned(), x);
                }
            }
            for k in r.stringified {
                if let Some(x) = o.get_mut(*k).filter(|x| x.is_number()) {
                    *x = Value::String(x.to_string());
                }
            }
            o.values_mut().for_each(|x| break_shape(x, r));
        }
        Value::Array(a) => a.iter_mut().for_each(|x| break_shape(x, r)),
        _ => {}
    }
}

/// Reshapes the JSON `data:` of every Server-Sent Event frame (other lines,
/// and data that is not JSON such as `[DONE]`, pass unchanged).
pub fn break_frames(frames: Vec<String>, r: Reshape) -> Vec<String> {
    let line = |l: &str| match l.strip_prefix("data: ").map(serde_json::from_str::<Value>) {
        Some(Ok(mut v)) => {
            break_shape(&mut v, r);
            format!("data: {v}")
        }
        _ => l.to_owned(),
    };
    frames.into_iter().map(|f| f.split('\n').map(line).collect::<Vec<_>>().join("\n")).collect()
}

/// Sets `retry-after` (whole seconds, rounded up) and `retry-after-ms`.
pub fn set_retry_after(h: &mut HeaderMap, ms: u64) {
    h.insert("retry-after", HeaderValue::from(ms.div_ceil(1_000)));
    h.insert("retry-after-ms", HeaderValue::from(ms));
}

/// A JSON response with `status` (serialised straight into bytes: `Value`'s
/// `Display` goes through `fmt` and costs about twice as much).
pub fn json_response(status: u16, body: &Value) -> Response {
    json_text(status, serde_json::to_vec(body).expect("a Value always serialises"))
}

/// A response with a JSON text body.
pub fn json_text(status: u16, body: impl Into<Body>) -> Response {
    let mut r = Response::new(body.into());
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert("content-type", HeaderValue::from_static("application/json"));
    r
}

/// Attaches a [`Note`] to a response.
pub fn noted(mut r: Response, note: Note) -> Response {
    r.extensions_mut().insert(note);
    r
}

/// A header as text.
pub fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// Sleeps until `until_us` on the shared clock (no-op when it has passed).
pub async fn sleep_until_us(shared: &Shared, until_us: u64) {
    let now = shared.now_us();
    if until_us > now {
        tokio::time::sleep(Duration::from_micros(until_us - now)).await;
    }
}

/// FNV-1a of bytes (parameter hashes, idempotency keys).
pub fn fnv(bytes: &[u8], basis: u64) -> u64 {
    let mut h = basis;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}

/// An `Idempotency-Key` header as the components' [`crate::components::ids::IdemKey`]
/// (two independent 64-bit hashes of the text).
pub fn idem_key(text: &str) -> crate::components::ids::IdemKey {
    crate::components::ids::IdemKey {
        hi: fnv(text.as_bytes(), 0xcbf2_9ce4_8422_2325),
        lo: fnv(text.as_bytes(), 0x6c62_272e_07bb_0142),
    }
}
