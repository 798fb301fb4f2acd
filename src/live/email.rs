//! The email fake, Resend-shaped: `POST /emails` (JSON, `Authorization:
//! Bearer …`, `Idempotency-Key`), `GET /emails/{id}`, and `GET
//! /emails?tag=name:value` to list by tag (for reconciliation).
//! Idempotency is [`SideEffectApi`]'s, as for payments; errors use Resend's
//! names (`invalid_idempotent_request`, `concurrent_idempotent_requests`,
//! both 409 as Resend answers them).

use axum::Json;
use axum::Router;
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::Response;
use axum::routing::get;
use rustc_hash::FxHashMap;
use serde_json::{Value, json};

use super::LiveConfig;
use super::http::{Applied, Ctx, Note, Sender, fnv, header, idem_key, json_response, noted, sleep_until_us};
use super::payment::{record_call, record_lookup, slot};
use crate::components::ids::{IdemKey, JobId, US_PER_MS};
use crate::components::ledger::{ApiConfig, CallOutcome, SideEffectApi};

/// The email fake's state.
#[derive(Debug)]
pub struct EmailState {
    /// The API and its ledger (ground truth).
    pub api: SideEffectApi,
    objects: Vec<Value>,
    by_id: FxHashMap<String, usize>,
    keys: FxHashMap<IdemKey, String>,
}

impl EmailState {
    /// An empty fake.
    pub fn new(cfg: &LiveConfig) -> Self {
        let api =
            ApiConfig { dedupe: cfg.email_dedupe, processing_us: cfg.processing_ms * US_PER_MS, ..ApiConfig::email() };
        EmailState {
            api: SideEffectApi::new(api),
            objects: Vec::new(),
            by_id: FxHashMap::default(),
            keys: FxHashMap::default(),
        }
    }

    /// The ledger as JSON, for the control API.
    pub fn ledger_json(&self) -> Value {
        super::payment::ledger_json(self.api.ledger(), &self.objects, &self.keys)
    }

    /// Effects per (job, step).
    pub fn count(&self, job: u32, step: u16) -> usize {
        self.api.ledger().iter().filter(|e| e.origin.job == JobId(job) && e.origin.step == step).count()
    }
}

/// The email fake's routes.
pub fn router() -> Router<Ctx> {
    Router::new().route("/emails", get(list).post(send)).route("/emails/{id}", get(retrieve))
}

fn resend_error(status: u16, name: &str, message: &str) -> Response {
    json_response(status, &json!({ "statusCode": status, "name": name, "message": message }))
}

fn check_auth(h: &HeaderMap) -> Result<(), Response> {
    match header(h, "authorization").and_then(|a| a.strip_prefix("Bearer ")) {
        Some(k) if !k.is_empty() => Ok(()),
        _ => Err(resend_error(401, "missing_api_key", "Missing API key in the authorization header (Bearer re_…).")),
    }
}

/// JSON with object keys sorted, so equal bodies hash equally.
fn canonical(v: &Value) -> String {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            let inner: Vec<String> =
                keys.iter().map(|k| format!("{}:{}", Value::String((*k).clone()), canonical(&m[*k]))).collect();
            format!("{{{}}}", inner.join(","))
        }
        Value::Array(a) => format!("[{}]", a.iter().map(canonical).collect::<Vec<_>>().join(",")),
        other => other.to_string(),
    }
}

/// The value of tag `name`.
fn tag<'a>(body: &'a Value, name: &str) -> Option<&'a str> {
    body["tags"].as_array()?.iter().find(|t| t["name"] == name)?["value"].as_str()
}

async fn send(
    State(ctx): State<Ctx>,
    Extension(applied): Extension<Applied>,
    sender: Option<Extension<Sender>>,
    h: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    if let Err(r) = check_auth(&h) {
        return r;
    }
    for field in ["to", "subject"] {
        if body.get(field).is_none_or(Value::is_null) {
            return resend_error(422, "missing_required_field", &format!("The `{field}` field is missing."));
        }
    }
    let hash = fnv(canonical(&body).as_bytes(), 0xcbf2_9ce4_8422_2325);
    let sender = slot(sender);
    let mut origin = super::payment::origin(tag(&body, "job_id"), tag(&body, "step"));
    origin.host = super::runs::sender_host(sender);
    let key_text = header(&h, "idempotency-key").map(str::to_owned);
    let key = key_text.as_deref().map(idem_key);
    let shared = &ctx.shared;
    let id = format!("{:08x}-agdr-{:04x}-{:012x}", shared.cfg.seed as u32, shared.next_id() >> 48, shared.next_id());
    let (outcome, done_at, reply, malformed) = {
        let mut st = super::lock(&shared.email);
        let now = shared.now_us();
        record_call(shared, &st.api, sender, origin, now);
        let (outcome, done_at) = st.api.call(now, key, hash, origin);
        if applied.schema_change() {
            st.api.set_schema_break(now, done_at + 1);
        }
        let reply = match outcome {
            CallOutcome::Ok { effect, replayed } => {
                if !replayed {
                    let to = if body["to"].is_string() { json!([body["to"]]) } else { body["to"].clone() };
                    let obj = json!({ "object": "email", "id": id, "from": body["from"], "to": to, "subject": body["subject"],
                                      "text": body["text"], "html": body["html"], "tags": body["tags"],
                                      "created_at": super::payment::unix_now(), "last_event": "delivered" });
                    st.objects.push(obj);
                    st.by_id.insert(id, effect as usize);
                    if let (Some(k), Some(t)) = (key, &key_text) {
                        st.keys.entry(k).or_insert_with(|| t.clone());
                    }
                }
                Ok(json!({ "id": st.objects[effect as usize]["id"] }))
            }
            CallOutcome::ParamsMismatch => {
                Err(("invalid_idempotent_request", "Same idempotency key used with a different request payload."))
            }
            CallOutcome::KeyInUse => Err((
                "concurrent_idempotent_requests",
                "Same idempotency key used while the original request is still in progress.",
            )),
        };
        (outcome, done_at, reply, st.api.malformed(done_at))
    };
    sleep_until_us(shared, done_at).await;
    let mut resp = match reply {
        Ok(v) if malformed => json_response(200, &json!({ "email_id": v["id"] })),
        Ok(v) => json_response(200, &v),
        Err((name, msg)) => resend_error(409, name, msg),
    };
    let replayed = matches!(outcome, CallOutcome::Ok { replayed: true, .. });
    if replayed {
        resp.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    noted(resp, Note { job: (origin.job.0 != u32::MAX).then_some(origin.job.0), replayed })
}

async fn retrieve(State(ctx): State<Ctx>, h: HeaderMap, Path(id): Path<String>) -> Response {
    if let Err(r) = check_auth(&h) {
        return r;
    }
    let st = super::lock(&ctx.shared.email);
    match st.by_id.get(&id) {
        Some(&i) => json_response(200, &st.objects[i]),
        None => resend_error(404, "not_found", &format!("Email `{id}` not found.")),
    }
}

async fn list(
    State(ctx): State<Ctx>,
    sender: Option<Extension<Sender>>,
    h: HeaderMap,
    Query(q): Query<FxHashMap<String, String>>,
) -> Response {
    if let Err(r) = check_auth(&h) {
        return r;
    }
    let filter = q.get("tag").map(|t| t.split_once(':').unwrap_or((t.as_str(), "")));
    let st = super::lock(&ctx.shared.email);
    let rows: Vec<usize> = (0..st.objects.len())
        .filter(|&i| filter.is_none_or(|(n, v)| tag(&st.objects[i], n).is_some_and(|x| v.is_empty() || x == v)))
        .collect();
    record_lookup(&ctx.shared, &st.api, slot(sender), rows.clone());
    let data: Vec<&Value> = rows.into_iter().map(|i| &st.objects[i]).collect();
    json_response(200, &json!({ "object": "list", "data": data }))
}
