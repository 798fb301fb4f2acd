//! The control API on the harness port, in Toxiproxy's resource shape:
//!
//! | route | what |
//! |---|---|
//! | `GET /proxies` | every fake with its listen address and toxics, and every TCP link of a live drill ([`super::net`]) |
//! | `GET /proxies/{name}` | one fake or link |
//! | `GET /proxies/{name}/toxics` | its toxics |
//! | `POST /proxies/{fake}/toxics` | add an HTTP toxic: `{"name","type","attributes","count"}` |
//! | `POST /proxies/{link}/toxics` | add a TCP toxic: `{"name","type","stream","toxicity","attributes"}` ([`super::net::toxic`]) |
//! | `DELETE /proxies/{name}/toxics/{toxic}` | remove it (held requests and stalled connections go on) |
//! | `GET /network/cuts` | the network cuts in force |
//! | `POST /network/cuts` | cut `{"between": ["region:a", "region:b"]}` (selectors: `*`, `region:R`, `NAME`, `NAME/REPLICA`) or `{"isolate": "a"}`; answers its `id` |
//! | `DELETE /network/cuts/{id}` | heal one cut |
//! | `POST /reset` | no toxics, no cuts, empty ledgers, stores and attempts |
//! | `GET /ledgers/payment`, `/ledgers/email` | the effects (ground truth) |
//! | `GET /ledgers/models` | each model fake's requests, errors, tokens, cost |
//! | `GET /attempts[?fake=NAME]` | every request any fake saw (SDK retries included) |
//! | `GET /jobs/{job}[?template=NAME]` | the script's steps for the job, each with the effects the ledgers hold |
//! | `GET /tools` | the tools to declare, in Anthropic and OpenAI form |

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use rustc_hash::FxHashMap;
use serde_json::{Value, json};

use super::http::json_response;
use super::net::{CutId, LinkInfo, Selector, TcpToxic, TcpToxicError};
use super::script::{self, Script};
use super::toxics::Toxic;
use super::{Fake, Shared, lock};

/// The control API's routes.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/", get(summary))
        .route("/proxies", get(proxies))
        .route("/proxies/{fake}", get(proxy))
        .route("/proxies/{fake}/toxics", get(list_toxics).post(add_toxic))
        .route("/proxies/{fake}/toxics/{name}", delete(remove_toxic))
        .route("/network/cuts", get(list_cuts).post(add_cut))
        .route("/network/cuts/{id}", delete(heal_cut))
        .route("/reset", post(reset))
        .route("/ledgers/payment", get(payment_ledger))
        .route("/ledgers/email", get(email_ledger))
        .route("/ledgers/models", get(model_ledger))
        .route("/attempts", get(attempts))
        .route("/jobs/{job}", get(job))
        .route("/tools", get(tools))
        .with_state(shared)
}

fn unknown_fake(name: &str) -> Response {
    let names: Vec<&str> = Fake::ALL.iter().map(|f| f.name()).collect();
    json_response(
        404,
        &json!({ "error": format!("no fake or link called `{name}`; the fakes are {} (GET /proxies lists the links)", names.join(", ")) }),
    )
}

/// A TCP link in Toxiproxy's proxy shape (plus endpoints and counters).
fn link_json(l: &LinkInfo) -> Value {
    json!(l)
}

fn proxy_json(s: &Shared, f: Fake) -> Value {
    json!({ "name": f.name(), "listen": s.addr(f).to_string(), "upstream": "agentdrill fake (in process)",
            "enabled": true, "toxics": lock(&s.toxics).list(f.name()),
            "held": s.held[f.index()].load(std::sync::atomic::Ordering::Relaxed) })
}

async fn summary(State(s): State<Arc<Shared>>) -> Response {
    let fakes: FxHashMap<&str, String> =
        Fake::ALL.iter().map(|&f| (f.name(), format!("http://{}", s.addr(f)))).collect();
    json_response(200, &json!({ "seed": s.cfg.seed, "fakes": fakes, "uptime_ms": s.now_us() / 1_000 }))
}

async fn proxies(State(s): State<Arc<Shared>>) -> Response {
    let mut all: serde_json::Map<String, Value> =
        Fake::ALL.iter().map(|&f| (f.name().to_owned(), proxy_json(&s, f))).collect();
    for l in s.net.links() {
        all.insert(l.name.clone(), link_json(&l));
    }
    json_response(200, &Value::Object(all))
}

async fn proxy(State(s): State<Arc<Shared>>, Path(fake): Path<String>) -> Response {
    if let Some(f) = Fake::from_name(&fake) {
        return json_response(200, &proxy_json(&s, f));
    }
    s.net.link(&fake).map_or_else(|| unknown_fake(&fake), |l| json_response(200, &link_json(&l)))
}

async fn list_toxics(State(s): State<Arc<Shared>>, Path(fake): Path<String>) -> Response {
    match Fake::from_name(&fake) {
        Some(f) => json_response(200, &json!(lock(&s.toxics).list(f.name()))),
        None => s.net.link(&fake).map_or_else(|| unknown_fake(&fake), |l| json_response(200, &json!(l.toxics))),
    }
}

/// `POST /proxies/{link}/toxics` on a TCP link.
fn add_link_toxic(s: &Shared, link: &str, body: &[u8]) -> Response {
    let parsed = serde_json::from_slice::<Value>(body)
        .map_err(|e| TcpToxicError::Shape(e.to_string()))
        .and_then(|v| TcpToxic::from_json(&v));
    let t = match parsed {
        Ok(t) => t,
        Err(e) => return json_response(400, &json!({ "error": e.to_string() })),
    };
    match s.net.add_toxic(link, t.clone()) {
        Ok(()) => json_response(200, &t.to_json()),
        Err(e) => json_response(400, &json!({ "error": e.to_string() })),
    }
}

async fn add_toxic(State(s): State<Arc<Shared>>, Path(fake): Path<String>, body: axum::body::Bytes) -> Response {
    let Some(f) = Fake::from_name(&fake) else {
        if s.net.link(&fake).is_some() {
            return add_link_toxic(&s, &fake, &body);
        }
        return unknown_fake(&fake);
    };
    let t: Result<Toxic, _> = serde_json::from_slice::<Value>(&body).and_then(|mut v| {
        // `attributes` may be left out when every attribute has a default.
        if v["type"] == "schema_change" {
            v.as_object_mut().map(|o| o.remove("attributes"));
        } else if v.get("attributes").is_none() {
            v["attributes"] = json!({});
        }
        serde_json::from_value(v)
    });
    let t: Toxic = match t {
        Ok(t) => t,
        Err(e) => {
            let hint = "expected {\"name\":\"…\",\"type\":\"error|latency|hold|reset_peer|stream_error|schema_change\",\"attributes\":{…},\"count\":N,\"toxicity\":0.0..1.0}";
            return json_response(400, &json!({ "error": format!("bad toxic: {e}; {hint}") }));
        }
    };
    match lock(&s.toxics).add(f.name(), t.clone()) {
        Ok(()) => {
            tracing::info!(fake = f.name(), toxic = %t.name, kind = ?t.kind, "toxic added");
            json_response(200, &json!(t))
        }
        Err(e) => json_response(400, &json!({ "error": e.to_string() })),
    }
}

async fn remove_toxic(State(s): State<Arc<Shared>>, Path((fake, name)): Path<(String, String)>) -> Response {
    let Some(f) = Fake::from_name(&fake) else {
        return match s.net.remove_toxic(&fake, &name) {
            Ok(true) => StatusCode::NO_CONTENT.into_response(),
            Ok(false) => json_response(404, &json!({ "error": format!("no toxic `{name}` on `{fake}`") })),
            Err(_) => unknown_fake(&fake),
        };
    };
    let removed = lock(&s.toxics).remove(f.name(), &name);
    s.toxics_changed.notify_waiters();
    if removed {
        StatusCode::NO_CONTENT.into_response()
    } else {
        json_response(404, &json!({ "error": format!("no toxic `{name}` on `{fake}`") }))
    }
}

async fn list_cuts(State(s): State<Arc<Shared>>) -> Response {
    let cuts: Vec<Value> = s.net.cuts().into_iter().map(|(id, rule)| json!({ "id": id.0, "rule": rule })).collect();
    json_response(200, &json!(cuts))
}

async fn add_cut(State(s): State<Arc<Shared>>, body: axum::body::Bytes) -> Response {
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let between: Option<Vec<&str>> =
        v.get("between").and_then(Value::as_array).map(|a| a.iter().filter_map(Value::as_str).collect());
    let id = match (between.as_deref(), v.get("isolate").and_then(Value::as_str)) {
        (Some([a, b]), None) => s.net.cut(Selector::parse(a), Selector::parse(b)),
        (None, Some(r)) => s.net.isolate(r),
        _ => {
            let hint = "expected {\"between\": [\"region:a\", \"region:b\"]} (selectors: *, region:R, NAME, NAME/REPLICA) or {\"isolate\": \"a\"}";
            return json_response(400, &json!({ "error": format!("bad cut; {hint}") }));
        }
    };
    json_response(200, &json!({ "id": id.0 }))
}

async fn heal_cut(State(s): State<Arc<Shared>>, Path(id): Path<u64>) -> Response {
    if !s.net.cuts().iter().any(|(c, _)| c.0 == id) {
        return json_response(404, &json!({ "error": format!("no cut {id}; GET /network/cuts lists them") }));
    }
    s.net.heal(CutId(id));
    StatusCode::NO_CONTENT.into_response()
}

async fn reset(State(s): State<Arc<Shared>>) -> Response {
    s.reset();
    tracing::info!("reset: toxics removed, ledgers and stores emptied");
    StatusCode::NO_CONTENT.into_response()
}

async fn payment_ledger(State(s): State<Arc<Shared>>) -> Response {
    let st = lock(&s.payment);
    json_response(200, &json!({ "stats": st.api.stats(), "effects": st.ledger_json() }))
}

async fn email_ledger(State(s): State<Arc<Shared>>) -> Response {
    let st = lock(&s.email);
    json_response(200, &json!({ "stats": st.api.stats(), "effects": st.ledger_json() }))
}

async fn model_ledger(State(s): State<Arc<Shared>>) -> Response {
    let names = [Fake::Anthropic, Fake::Openai, Fake::Local];
    let all: serde_json::Map<String, Value> =
        names.iter().zip(&s.models).map(|(f, m)| (f.name().to_owned(), json!(lock(m).provider.stats()))).collect();
    json_response(200, &Value::Object(all))
}

async fn attempts(State(s): State<Arc<Shared>>, Query(q): Query<FxHashMap<String, String>>) -> Response {
    let a = lock(&s.attempts);
    let rows: Vec<&super::Attempt> = a.attempts.iter().filter(|x| q.get("fake").is_none_or(|f| f == x.fake)).collect();
    json_response(200, &json!({ "dropped": a.dropped, "attempts": rows }))
}

/// The script's plan for a job with the ledgers' count of effects per step.
pub fn job_report(s: &Shared, script: &Script, job: u32, template: Option<&str>) -> Result<Value, String> {
    let t = match template {
        Some(n) => script.template_named(n).ok_or_else(|| format!("no template `{n}`"))?,
        None => script.template_for(job),
    };
    let steps: Vec<Value> = script
        .expected(job, t)
        .into_iter()
        .map(|e| {
            let effects = match e.kind {
                "charge" | "refund" => Some(lock(&s.payment).count(job, e.step)),
                "email" => Some(lock(&s.email).count(job, e.step)),
                _ => None,
            };
            json!({ "step": e.step, "kind": e.kind, "tool": e.tool, "input": e.input,
                    "side_effect": e.side_effect, "effects": effects })
        })
        .collect();
    Ok(json!({ "job": job, "template": t.name, "steps": steps }))
}

async fn job(
    State(s): State<Arc<Shared>>,
    Path(job): Path<u32>,
    Query(q): Query<FxHashMap<String, String>>,
) -> Response {
    match job_report(&s, &s.script, job, q.get("template").map(String::as_str)) {
        Ok(v) => json_response(200, &v),
        Err(e) => json_response(404, &json!({ "error": e })),
    }
}

async fn tools() -> Response {
    json_response(200, &json!({ "anthropic": script::anthropic_tools(), "openai": script::openai_tools() }))
}
