//! The payment fake, Stripe-shaped: form-encoded bodies, `Authorization:
//! Bearer sk_test_…`, PaymentIntents (create with `confirm`, retrieve, search
//! by metadata) and Refunds. Idempotency (replay with `Idempotent-Replayed:
//! true`, 400 `idempotency_error`, 409 while in flight, keys kept 24 h) is
//! [`SideEffectApi`]'s: the handler passes the real clock in and waits out
//! the processing time the API returns, so a second request with the same
//! key meanwhile gets 409.
//!
//! Refunds name an earlier PaymentIntent; ids `pi_hist_<anything>` stand for
//! the customer's history before the drill (a succeeded 100.00 USD payment)
//! and exist without being created.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::Response;
use axum::routing::{get, post};
use rustc_hash::FxHashMap;
use serde_json::{Map, Value, json};

use super::LiveConfig;
use super::http::{Applied, Ctx, Note, Sender, fnv, header, idem_key, json_response, json_text, noted, sleep_until_us};
use super::runs::{EffectRequest, RequestKind, in_progress_for, meeting, sender_host};
use crate::components::ids::{HostId, IdemKey, JobId, Origin, TaskId, US_PER_MS};
use crate::components::ledger::{ApiConfig, CallOutcome, LedgerEntry, SideEffectApi};

/// Amount of a `pi_hist_*` PaymentIntent, in cents.
pub const HISTORY_AMOUNT: u64 = 10_000;

/// The payment fake's state.
#[derive(Debug)]
pub struct PaymentState {
    /// The API and its ledger (ground truth).
    pub api: SideEffectApi,
    /// The object each effect created, by ledger index (the first response).
    objects: Vec<Value>,
    by_id: FxHashMap<String, usize>,
    keys: FxHashMap<IdemKey, String>,
}

impl PaymentState {
    /// An empty fake.
    pub fn new(cfg: &LiveConfig) -> Self {
        let api = ApiConfig {
            dedupe: cfg.payment_dedupe,
            processing_us: cfg.processing_ms * US_PER_MS,
            ..ApiConfig::payment()
        };
        PaymentState {
            api: SideEffectApi::new(api),
            objects: Vec::new(),
            by_id: FxHashMap::default(),
            keys: FxHashMap::default(),
        }
    }

    /// The ledger with each entry's object and key text, for the control API.
    pub fn ledger_json(&self) -> Value {
        ledger_json(self.api.ledger(), &self.objects, &self.keys)
    }

    /// Effects per (job, step).
    pub fn count(&self, job: u32, step: u16) -> usize {
        self.api.ledger().iter().filter(|e| e.origin.job == JobId(job) && e.origin.step == step).count()
    }
}

/// A ledger as JSON: one row per effect with its origin, key and object.
pub fn ledger_json(ledger: &[LedgerEntry], objects: &[Value], keys: &FxHashMap<IdemKey, String>) -> Value {
    let rows: Vec<Value> = ledger
        .iter()
        .zip(objects)
        .map(|(e, o)| {
            let key = e.key.map(|k| keys.get(&k).cloned().unwrap_or_else(|| k.to_string()));
            let job = (e.origin.job.0 != u32::MAX).then_some(e.origin.job.0);
            let step = (e.origin.step != u16::MAX).then_some(e.origin.step);
            json!({ "at_ms": e.at_us as f64 / 1_000.0, "job": job, "step": step, "idempotency_key": key,
                    "params_hash": format!("{:016x}", e.params), "object": o })
        })
        .collect();
    Value::Array(rows)
}

/// The payment fake's routes.
pub fn router() -> Router<Ctx> {
    Router::new()
        .route("/v1/payment_intents", post(create_intent))
        .route("/v1/payment_intents/search", get(search))
        .route("/v1/payment_intents/{id}", get(retrieve_intent))
        .route("/v1/refunds", get(list_refunds).post(create_refund))
        .route("/v1/refunds/{id}", get(retrieve_refund))
}

/// Stripe's error JSON.
fn stripe_error(status: u16, ty: &str, code: &str, param: Option<&str>, message: &str) -> Response {
    json_response(status, &json!({ "error": { "type": ty, "code": code, "param": param, "message": message } }))
}

fn missing(param: &str) -> Response {
    stripe_error(
        400,
        "invalid_request_error",
        "parameter_missing",
        Some(param),
        &format!("Missing required param: {param}."),
    )
}

/// 401 unless `Authorization: Bearer sk_test_…`.
fn check_auth(h: &HeaderMap) -> Result<(), Response> {
    match header(h, "authorization").and_then(|a| a.strip_prefix("Bearer ")) {
        Some(k) if k.starts_with("sk_test_") => Ok(()),
        _ => Err(stripe_error(
            401,
            "invalid_request_error",
            "api_key_invalid",
            None,
            "Invalid API Key provided: use `Authorization: Bearer sk_test_…` (any sk_test_ key works here).",
        )),
    }
}

/// A create request's prelude: the secret key checked, then the form body
/// parsed (its pairs and the parameter hash the idempotency check compares).
fn authed_form(h: &HeaderMap, body: &[u8]) -> Result<(Vec<(String, String)>, u64), Response> {
    check_auth(h)?;
    parse_form(body)
}

/// A form body as sorted pairs, and their hash (Stripe compares parameters).
fn parse_form(body: &[u8]) -> Result<(Vec<(String, String)>, u64), Response> {
    let mut pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(body).map_err(|e| {
        stripe_error(400, "invalid_request_error", "parameter_invalid", None, &format!("Invalid form body: {e}"))
    })?;
    pairs.sort();
    let mut h = 0xcbf2_9ce4_8422_2325;
    for (k, v) in &pairs {
        h = fnv(k.as_bytes(), h);
        h = fnv(b"=", h);
        h = fnv(v.as_bytes(), h);
        h = fnv(b"&", h);
    }
    Ok((pairs, h))
}

fn get_param<'a>(pairs: &'a [(String, String)], k: &str) -> Option<&'a str> {
    pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
}

/// `metadata[k]=v` pairs as an object.
fn metadata(pairs: &[(String, String)]) -> Map<String, Value> {
    pairs
        .iter()
        .filter_map(|(k, v)| {
            let name = k.strip_prefix("metadata[")?.strip_suffix(']')?;
            Some((name.to_owned(), Value::String(v.clone())))
        })
        .collect()
}

/// Ground-truth attribution from `metadata[job_id]` and `metadata[step]`.
pub fn origin(job: Option<&str>, step: Option<&str>) -> Origin {
    let job = job.and_then(|j| super::script::find_job(j).or_else(|| j.parse().ok())).unwrap_or(u32::MAX);
    let step = step.and_then(|s| s.parse().ok()).unwrap_or(u16::MAX);
    Origin { job: JobId(job), step, host: HostId(0), task: TaskId(0), token: 0 }
}

fn amount(pairs: &[(String, String)]) -> Result<u64, Response> {
    let a = get_param(pairs, "amount").ok_or_else(|| missing("amount"))?;
    a.parse::<u64>().ok().filter(|&n| n > 0).ok_or_else(|| {
        stripe_error(
            400,
            "invalid_request_error",
            "parameter_invalid_integer",
            Some("amount"),
            "Invalid positive integer",
        )
    })
}

/// Seconds since the Unix epoch (the `created` of objects).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// What a create request makes, once the API says it is a new effect.
type Make = Box<dyn FnOnce(String) -> Value + Send>;

/// Runs one side-effecting request through [`SideEffectApi::call`].
#[allow(clippy::too_many_arguments)]
async fn effect(
    ctx: &Ctx,
    h: &HeaderMap,
    applied: &Applied,
    sender: Option<u16>,
    hash: u64,
    mut origin: Origin,
    prefix: &str,
    make: Make,
) -> Response {
    origin.host = sender_host(sender);
    let key_text = header(h, "idempotency-key").map(str::to_owned);
    let key = key_text.as_deref().map(idem_key);
    let shared = &ctx.shared;
    let id = format!("{prefix}_{:016x}{:08x}", shared.cfg.seed, shared.next_id());
    // The answer is serialised once, under the lock, from the stored object
    // (no deep copy of it on the hot path).
    let (outcome, done_at, text, malformed) = {
        let mut st = super::lock(&shared.payment);
        let now = shared.now_us();
        record_call(shared, &st.api, sender, origin, now);
        let (outcome, done_at) = st.api.call(now, key, hash, origin);
        if applied.schema_change() {
            st.api.set_schema_break(now, done_at + 1);
        }
        let text = match outcome {
            CallOutcome::Ok { effect, replayed: false } => {
                let obj = make(id.clone());
                let text = serde_json::to_vec(&obj).expect("a Value always serialises");
                assert_eq!(effect as usize, st.objects.len(), "one object per ledger entry");
                st.objects.push(obj);
                st.by_id.insert(id, effect as usize);
                if let (Some(k), Some(t)) = (key, &key_text) {
                    st.keys.entry(k).or_insert_with(|| t.clone());
                }
                text
            }
            CallOutcome::Ok { effect, replayed: true } => {
                serde_json::to_vec(&st.objects[effect as usize]).expect("a Value always serialises")
            }
            other => other.error_body().expect("errors have a body").into_bytes(),
        };
        (outcome, done_at, text, st.api.malformed(done_at))
    };
    sleep_until_us(shared, done_at).await;
    let text = if malformed { break_schema(&text) } else { text };
    let mut resp = json_text(outcome.status(), text);
    let hs = resp.headers_mut();
    hs.insert("request-id", HeaderValue::from_str(&format!("req_{:014x}", shared.next_id())).expect("ascii"));
    if let Some(t) = key_text.as_deref().and_then(|t| HeaderValue::from_str(t).ok()) {
        hs.insert("idempotency-key", t);
    }
    let replayed = matches!(outcome, CallOutcome::Ok { replayed: true, .. });
    if replayed {
        hs.insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    let job = (origin.job.0 != u32::MAX).then_some(origin.job.0);
    noted(resp, Note { job, replayed })
}

/// Records a side-effect call for the concurrent-run and stale-action
/// counts ([`super::runs`]): who sent it, and another sender's call for the
/// same (job, step) it met while that one was being processed.
pub fn record_call(
    shared: &super::Shared,
    api: &crate::components::ledger::SideEffectApi,
    sender: Option<u16>,
    origin: Origin,
    now: u64,
) {
    let named = (origin.job.0 != u32::MAX && origin.step != u16::MAX).then_some((origin.job.0, origin.step));
    let processing_us = api.config().processing_us;
    let met = named.and_then(|(job, step)| {
        meeting(api.ledger(), processing_us, now, sender, in_progress_for(api.ledger(), processing_us, now, job, step))
    });
    shared.record_request(EffectRequest {
        at_us: now,
        boot_us: super::stack::env::monotonic_us(),
        slot: sender,
        kind: RequestKind::Call,
        job: named.map(|n| n.0),
        step: named.map(|n| n.1),
        met,
    });
}

/// Records a lookup whose answer holds the effects at ledger indices
/// `rows` (see [`record_call`]).
pub fn record_lookup(
    shared: &super::Shared,
    api: &crate::components::ledger::SideEffectApi,
    sender: Option<u16>,
    rows: Vec<usize>,
) {
    let now = shared.now_us();
    let met = meeting(api.ledger(), api.config().processing_us, now, sender, rows);
    shared.record_request(EffectRequest {
        at_us: now,
        boot_us: super::stack::env::monotonic_us(),
        slot: sender,
        kind: RequestKind::Lookup,
        job: None,
        step: None,
        met,
    });
}

/// The sender slot of a request ([`Sender`], absent outside a served listener).
pub fn slot(sender: Option<Extension<Sender>>) -> Option<u16> {
    sender.and_then(|Extension(Sender(s))| s)
}

/// A response that no longer matches the documented schema (a breaking change).
fn break_schema(text: &[u8]) -> Vec<u8> {
    let mut v: Value = serde_json::from_slice(text).expect("the fake's own JSON");
    if let Some(o) = v.as_object_mut() {
        for (from, to) in [("amount", "amount_cents"), ("status", "state"), ("object", "kind")] {
            if let Some(x) = o.remove(from) {
                o.insert(to.to_owned(), x);
            }
        }
    }
    serde_json::to_vec(&v).expect("a Value always serialises")
}

async fn create_intent(
    State(ctx): State<Ctx>,
    Extension(applied): Extension<Applied>,
    sender: Option<Extension<Sender>>,
    h: HeaderMap,
    body: Bytes,
) -> Response {
    let (pairs, hash) = match authed_form(&h, &body) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let amount = match amount(&pairs) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let Some(currency) = get_param(&pairs, "currency").map(str::to_lowercase) else { return missing("currency") };
    let meta = metadata(&pairs);
    let origin = origin(meta.get("job_id").and_then(Value::as_str), meta.get("step").and_then(Value::as_str));
    let confirm = get_param(&pairs, "confirm") == Some("true");
    let description = get_param(&pairs, "description").map(str::to_owned);
    let make: Make = Box::new(move |id: String| {
        let status = if confirm { "succeeded" } else { "requires_payment_method" };
        json!({ "id": id, "object": "payment_intent", "amount": amount, "amount_capturable": 0,
                "amount_received": if confirm { amount } else { 0 }, "currency": currency, "status": status,
                "capture_method": "automatic", "confirmation_method": "automatic", "payment_method_types": ["card"],
                "client_secret": format!("{id}_secret_agentdrill"), "created": unix_now(), "livemode": false,
                "description": description, "metadata": meta, "latest_charge": if confirm { Some(id.replace("pi_", "ch_")) } else { None } })
    });
    effect(&ctx, &h, &applied, slot(sender), hash, origin, "pi", make).await
}

async fn create_refund(
    State(ctx): State<Ctx>,
    Extension(applied): Extension<Applied>,
    sender: Option<Extension<Sender>>,
    h: HeaderMap,
    body: Bytes,
) -> Response {
    let (pairs, hash) = match authed_form(&h, &body) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let Some(pi) = get_param(&pairs, "payment_intent").map(str::to_owned) else { return missing("payment_intent") };
    let Some(intent) = find_intent(&ctx, &pi) else { return no_such("payment_intent", &pi) };
    let limit = intent["amount"].as_u64().unwrap_or(0);
    let amount = match get_param(&pairs, "amount") {
        None => limit,
        Some(_) => match amount(&pairs) {
            Ok(a) => a,
            Err(r) => return r,
        },
    };
    if amount > limit {
        let msg = format!("Refund amount ({amount}) is greater than the PaymentIntent's amount ({limit}).");
        return stripe_error(400, "invalid_request_error", "amount_too_large", Some("amount"), &msg);
    }
    let meta = metadata(&pairs);
    let origin = origin(meta.get("job_id").and_then(Value::as_str), meta.get("step").and_then(Value::as_str));
    let currency = intent["currency"].clone();
    let make: Make = Box::new(move |id: String| {
        json!({ "id": id, "object": "refund", "amount": amount, "currency": currency, "payment_intent": pi,
                "status": "succeeded", "created": unix_now(), "metadata": meta })
    });
    effect(&ctx, &h, &applied, slot(sender), hash, origin, "re", make).await
}

/// A PaymentIntent by id: one the fake created, or a `pi_hist_*` one.
fn find_intent(ctx: &Ctx, id: &str) -> Option<Value> {
    if id.starts_with("pi_hist_") {
        return Some(
            json!({ "id": id, "object": "payment_intent", "amount": HISTORY_AMOUNT, "amount_received": HISTORY_AMOUNT,
                            "currency": "usd", "status": "succeeded", "livemode": false, "metadata": {} }),
        );
    }
    let st = super::lock(&ctx.shared.payment);
    st.by_id.get(id).map(|&i| st.objects[i].clone()).filter(|o| o["object"] == "payment_intent")
}

fn no_such(what: &str, id: &str) -> Response {
    stripe_error(404, "invalid_request_error", "resource_missing", Some("id"), &format!("No such {what}: '{id}'"))
}

async fn retrieve_intent(State(ctx): State<Ctx>, h: HeaderMap, Path(id): Path<String>) -> Response {
    if let Err(r) = check_auth(&h) {
        return r;
    }
    match find_intent(&ctx, &id) {
        Some(o) => json_response(200, &o),
        None => no_such("payment_intent", &id),
    }
}

async fn retrieve_refund(State(ctx): State<Ctx>, h: HeaderMap, Path(id): Path<String>) -> Response {
    if let Err(r) = check_auth(&h) {
        return r;
    }
    let st = super::lock(&ctx.shared.payment);
    match st.by_id.get(&id).map(|&i| &st.objects[i]).filter(|o| o["object"] == "refund") {
        Some(o) => json_response(200, o),
        None => no_such("refund", &id),
    }
}

/// `GET /v1/refunds[?payment_intent=pi_…]`: Stripe's list of refunds, newest
/// first, optionally of one PaymentIntent (what reconciliation of a refund
/// reads: refunds are not searchable).
async fn list_refunds(
    State(ctx): State<Ctx>,
    sender: Option<Extension<Sender>>,
    h: HeaderMap,
    Query(q): Query<FxHashMap<String, String>>,
) -> Response {
    if let Err(r) = check_auth(&h) {
        return r;
    }
    let st = super::lock(&ctx.shared.payment);
    let pi = q.get("payment_intent");
    let rows: Vec<usize> = (0..st.objects.len())
        .rev()
        .filter(|&i| {
            let o = &st.objects[i];
            o["object"] == "refund" && pi.is_none_or(|p| o["payment_intent"] == p.as_str())
        })
        .collect();
    record_lookup(&ctx.shared, &st.api, slot(sender), rows.clone());
    let data: Vec<&Value> = rows.into_iter().map(|i| &st.objects[i]).collect();
    json_response(200, &json!({ "object": "list", "url": "/v1/refunds", "has_more": false, "data": data }))
}

/// One clause of a search query: `metadata['k']:'v'` or `status:'v'`.
fn clause(c: &str) -> Option<(Vec<String>, String)> {
    let (field, value) = c.split_once(':')?;
    let value = value.trim().trim_matches(|ch| ch == '\'' || ch == '"').to_owned();
    let field = field.trim();
    if let Some(k) = field.strip_prefix("metadata[").and_then(|r| r.strip_suffix(']')) {
        return Some((vec!["metadata".into(), k.trim_matches(|ch| ch == '\'' || ch == '"').to_owned()], value));
    }
    ["status", "currency", "amount"].contains(&field).then(|| (vec![field.to_owned()], value))
}

async fn search(
    State(ctx): State<Ctx>,
    sender: Option<Extension<Sender>>,
    h: HeaderMap,
    Query(q): Query<FxHashMap<String, String>>,
) -> Response {
    if let Err(r) = check_auth(&h) {
        return r;
    }
    let Some(query) = q.get("query") else { return missing("query") };
    let clauses: Option<Vec<_>> = query.split(" AND ").map(clause).collect();
    let Some(clauses) = clauses else {
        let msg = format!(
            "Unsupported search query `{query}`: use metadata['k']:'v', status:'v', currency:'v' or amount:N joined by AND."
        );
        return stripe_error(400, "invalid_request_error", "parameter_invalid", Some("query"), &msg);
    };
    let st = super::lock(&ctx.shared.payment);
    let matches = |o: &Value| {
        clauses.iter().all(|(path, v)| {
            let got = path.iter().fold(o, |o, k| &o[k.as_str()]);
            got.as_str().map_or_else(|| got.as_u64().is_some_and(|n| v.parse() == Ok(n)), |s| s == v)
        })
    };
    let rows: Vec<usize> = (0..st.objects.len())
        .filter(|&i| st.objects[i]["object"] == "payment_intent" && matches(&st.objects[i]))
        .collect();
    record_lookup(&ctx.shared, &st.api, slot(sender), rows.clone());
    let data: Vec<&Value> = rows.into_iter().map(|i| &st.objects[i]).collect();
    json_response(
        200,
        &json!({ "object": "search_result", "url": "/v1/payment_intents/search", "has_more": false,
                 "next_page": null, "data": data }),
    )
}
