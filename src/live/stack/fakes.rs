//! The worker's side of the fakes: each request [`Msg`] the worker sends to
//! a tool, model or memory host becomes a real HTTP request in that API's
//! wire shape, and the answer becomes the reply [`Msg`].
//!
//! | host | request | wire |
//! |---|---|---|
//! | payment | `ToolReq` (charge / refund) | Stripe: `POST /v1/payment_intents` (`confirm=true`) or `/v1/refunds`, form body, `Idempotency-Key` |
//! | payment | `LookupReq` | `GET /v1/payment_intents/search?query=metadata['idempotency_key']:'…'`, or `GET /v1/refunds?payment_intent=…` |
//! | email | `ToolReq`, `LookupReq` | Resend: `POST /emails` with `Idempotency-Key`; `GET /emails?tag=idempotency_key:…` |
//! | models | `ModelReq` | Anthropic `POST /v1/messages`, OpenAI `POST /chat/completions` (the fallback too) |
//! | vector | `VecUpsert`, `VecQuery` | Qdrant: `PUT /collections/memory/points?wait=true`, `POST …/points/query` |
//! | search | `ToolReq` | none: a read-only tool with no effect, answered here |
//!
//! The tool inputs are [`script::tool_input`]'s, made from the decision the
//! worker's arguments come from, so the fakes' ledgers attribute every effect
//! to its (job, step). The key and the arguments also travel as metadata
//! (Stripe) or tags (Resend): reconciliation finds an effect by its key and
//! learns the arguments it was made with.
//!
//! An answer that says nothing definite (a connection error, a timeout, a
//! 5xx from a tool) yields no reply: the worker's watchdog treats the
//! outcome as unknown, exactly as a lost response in the simulator.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::components::ids::{IdemKey, JobId, Micros, Origin};
use crate::components::ledger::{CallOutcome, Lookup};
use crate::components::provider::{ErrorKind, ModelOutcome, ModelReply, ModelRequest, ProviderError};
use crate::components::wire::{Api, Msg};
use crate::components::workflow::{StepKind, Template, args_for};
use crate::live::script;

use super::env::{EMAIL, PAYMENT, PROVIDERS, SEARCH, VECTOR};

/// The collection the stack's vector memory lives in.
pub const COLLECTION: &str = "memory";
/// Longest answer body read from a fake.
const MAX_BODY_BYTES: usize = 4 << 20;

/// Where the fakes are and how long to wait for them.
#[derive(Clone, Debug)]
pub struct FakeUrls {
    /// `ANTHROPIC_BASE_URL` (without `/v1`).
    pub anthropic: String,
    /// `OPENAI_BASE_URL` (with `/v1`).
    pub openai: String,
    /// The self-hosted fallback (`AGENTDRILL_LOCAL_MODEL_URL`, with `/v1`).
    pub local: String,
    /// `STRIPE_API_BASE`.
    pub stripe: String,
    /// `EMAIL_API_URL`.
    pub email: String,
    /// `QDRANT_URL`.
    pub qdrant: String,
}

/// The HTTP side of one worker process.
#[derive(Clone, Debug)]
pub struct Fakes {
    urls: FakeUrls,
    client: reqwest::Client,
    tool_timeout: Duration,
    model_timeout: Duration,
}

/// What one answer from a fake was: status, headers we read, body.
struct Answer {
    status: u16,
    replayed: bool,
    retry_after_ms: Option<u64>,
    body: Value,
}

impl Fakes {
    /// A client for `urls`; tool and memory requests give up after
    /// `tool_timeout_ms`, model requests after `model_timeout_ms`.
    pub fn new(urls: FakeUrls, tool_timeout_ms: u64, model_timeout_ms: u64) -> Self {
        assert!(tool_timeout_ms > 0 && model_timeout_ms > 0, "timeouts must be positive");
        Fakes {
            urls,
            client: reqwest::Client::new(),
            tool_timeout: Duration::from_millis(tool_timeout_ms),
            model_timeout: Duration::from_millis(model_timeout_ms),
        }
    }

    /// Performs the request `msg` (sent to host `to`) for a job running
    /// `template`; returns the reply, or `None` when the outcome is unknown.
    pub async fn call(&self, to: crate::components::ids::HostId, template: &Template, msg: Msg) -> Option<Msg> {
        match msg {
            Msg::ModelReq { req, request, origin } => {
                let p = PROVIDERS.iter().position(|&h| h == to)?;
                let outcome = self.model(p, template, origin, &request).await;
                Some(Msg::ModelResp { req, outcome })
            }
            Msg::ToolReq { req, api: Api::Search, .. } if to == SEARCH => {
                Some(Msg::ToolResp { req, outcome: CallOutcome::Ok { effect: 0, replayed: false }, malformed: false })
            }
            Msg::ToolReq { req, api, key, params, origin, .. } if to == PAYMENT || to == EMAIL => {
                let (outcome, malformed) = self.tool(api, template, key, params, origin).await?;
                Some(Msg::ToolResp { req, outcome, malformed })
            }
            Msg::LookupReq { req, api, key, origin } => {
                let (found, malformed) = self.lookup(api, template, key, origin).await?;
                Some(Msg::LookupResp { req, found, malformed })
            }
            Msg::VecUpsert { req, point, value, .. } if to == VECTOR => {
                let (_, input) = script::tool_input(
                    point.job.0,
                    StepKind::MemWrite,
                    point.step,
                    decision_for_args(template, point.job, point.step, value),
                );
                let unavailable = self.upsert(&input).await?;
                Some(Msg::VecResp { req, unavailable })
            }
            Msg::VecQuery { req, point, .. } if to == VECTOR => {
                let (_, input) = script::tool_input(point.job.0, StepKind::MemRead, point.step, 0);
                let unavailable = self.query(&input).await?;
                Some(Msg::VecResp { req, unavailable })
            }
            other => {
                tracing::warn!(to = to.0, msg = ?other, "the live worker has no route for this message; dropped");
                None
            }
        }
    }

    async fn send(&self, rb: reqwest::RequestBuilder, timeout: Duration) -> Option<Answer> {
        let resp = match rb.timeout(timeout).send().await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, "request to a fake failed; outcome unknown");
                return None;
            }
        };
        let status = resp.status().as_u16();
        let h = resp.headers();
        let replayed = h.get("idempotent-replayed").is_some_and(|v| v == "true");
        let retry_after_ms = h.get("retry-after-ms").and_then(|v| v.to_str().ok()?.parse::<u64>().ok()).or_else(|| {
            h.get("retry-after").and_then(|v| v.to_str().ok()?.parse::<f64>().ok()).map(|s| (s * 1e3) as u64)
        });
        let bytes = resp.bytes().await.ok()?;
        if bytes.len() > MAX_BODY_BYTES {
            tracing::warn!(len = bytes.len(), "answer from a fake is over {MAX_BODY_BYTES} bytes; treated as lost");
            return None;
        }
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Some(Answer { status, replayed, retry_after_ms, body })
    }

    // ----------------------------------------------------------------- models

    async fn model(&self, p: usize, t: &Template, origin: Origin, request: &ModelRequest) -> ModelOutcome {
        let started = Instant::now();
        let (job, g) = (origin.job.0, origin.step);
        let answer = if p == 0 {
            let body = json!({ "model": "claude-agentdrill", "max_tokens": request.output_tokens.max(1),
                               "tools": script::anthropic_tools(), "messages": anthropic_conversation(job, t, g) });
            let rb = self
                .client
                .post(format!("{}/v1/messages", self.urls.anthropic))
                .header("x-api-key", "sk-ant-agentdrill-stack")
                .header("anthropic-version", "2023-06-01")
                .json(&body);
            self.send(rb, self.model_timeout).await
        } else {
            let base = if p == 1 { &self.urls.openai } else { &self.urls.local };
            let body = json!({ "model": "gpt-agentdrill", "tools": script::openai_tools(),
                               "messages": openai_conversation(job, t, g) });
            let rb = self
                .client
                .post(format!("{base}/chat/completions"))
                .header("authorization", "Bearer sk-agentdrill-stack")
                .json(&body);
            self.send(rb, self.model_timeout).await
        };
        let latency_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(Micros::MAX);
        let result = match answer {
            None => Err(provider_error(0, ErrorKind::Timeout, None)),
            Some(a) if a.status == 200 => Ok(model_reply(p, t, job, g, request, &a.body)),
            Some(a) => Err(model_error(&a)),
        };
        ModelOutcome { latency_us, result }
    }

    // ------------------------------------------------------------------ tools

    async fn tool(
        &self,
        api: Api,
        t: &Template,
        key: IdemKey,
        params: u64,
        origin: Origin,
    ) -> Option<(CallOutcome, bool)> {
        let (job, step) = (origin.job, origin.step);
        let kind = t.steps.get(step as usize)?.kind;
        let (_, input) = script::tool_input(job.0, kind, step, decision_for_args(t, job, step, params));
        let key_text = key.to_string();
        let args_hex = format!("{params:016x}");
        let answer = match api {
            Api::Payment => {
                let mut form = stripe_form(&input);
                if kind == StepKind::Charge {
                    form.push(("confirm".into(), "true".into()));
                    form.push(("payment_method".into(), "pm_card_visa".into()));
                }
                form.push(("metadata[idempotency_key]".into(), key_text.clone()));
                form.push(("metadata[args]".into(), args_hex));
                let path = if kind == StepKind::Refund { "refunds" } else { "payment_intents" };
                let body = serde_urlencoded::to_string(&form).expect("form pairs encode");
                let rb = self
                    .client
                    .post(format!("{}/v1/{path}", self.urls.stripe))
                    .header("authorization", "Bearer sk_test_agentdrill_stack")
                    .header("idempotency-key", &key_text)
                    .header("content-type", "application/x-www-form-urlencoded")
                    .body(body);
                self.send(rb, self.tool_timeout).await?
            }
            Api::Email => {
                let mut body = input;
                body["from"] = json!("agent@agentdrill.test");
                if let Some(tags) = body["tags"].as_array_mut() {
                    tags.push(json!({ "name": "idempotency_key", "value": key_text }));
                    tags.push(json!({ "name": "args", "value": args_hex }));
                }
                let rb = self
                    .client
                    .post(format!("{}/emails", self.urls.email))
                    .header("authorization", "Bearer re_agentdrill_stack")
                    .header("idempotency-key", &key_text)
                    .json(&body);
                self.send(rb, self.tool_timeout).await?
            }
            Api::Search => unreachable!("search is answered without a request"),
        };
        tool_outcome(api, &answer)
    }

    async fn lookup(&self, api: Api, t: &Template, key: IdemKey, origin: Origin) -> Option<(Lookup, bool)> {
        let kind = t.steps.get(origin.step as usize)?.kind;
        let key_text = key.to_string();
        let (url, query): (String, Vec<(&str, String)>) = match (api, kind) {
            (Api::Payment, StepKind::Refund) => (
                format!("{}/v1/refunds", self.urls.stripe),
                vec![("payment_intent", format!("pi_hist_job{}", origin.job.0))],
            ),
            (Api::Payment, _) => (
                format!("{}/v1/payment_intents/search", self.urls.stripe),
                vec![("query", format!("metadata['idempotency_key']:'{key_text}'"))],
            ),
            (Api::Email, _) => {
                (format!("{}/emails", self.urls.email), vec![("tag", format!("idempotency_key:{key_text}"))])
            }
            (Api::Search, _) => return Some((Lookup::NotFound, false)),
        };
        let auth = if api == Api::Payment { "Bearer sk_test_agentdrill_stack" } else { "Bearer re_agentdrill_stack" };
        let url = format!("{url}?{}", serde_urlencoded::to_string(&query).expect("query pairs encode"));
        let rb = self.client.get(url).header("authorization", auth);
        let a = self.send(rb, self.tool_timeout).await?;
        if a.status != 200 {
            tracing::debug!(status = a.status, "lookup answered an error; outcome unknown");
            return None;
        }
        let Some(rows) = a.body["data"].as_array() else { return Some((Lookup::NotFound, true)) };
        let hit = rows.iter().find(|r| row_key(api, r).as_deref() == Some(key_text.as_str()));
        Some(match hit {
            None => (Lookup::NotFound, false),
            Some(r) => match row_args(api, r) {
                Some(params) => (Lookup::Found { effect: 0, params }, false),
                None => (Lookup::NotFound, true),
            },
        })
    }

    // ----------------------------------------------------------------- memory

    async fn upsert(&self, input: &Value) -> Option<bool> {
        let point = json!({ "id": input["id"], "vector": input["vector"], "payload": input["payload"] });
        let url = format!("{}/collections/{COLLECTION}/points?wait=true", self.urls.qdrant);
        let body = json!({ "points": [point] });
        let a = self.send(self.client.put(&url).json(&body), self.tool_timeout).await?;
        if a.status == 404 {
            self.create_collection().await?;
            let a = self.send(self.client.put(&url).json(&body), self.tool_timeout).await?;
            return Some(a.status != 200);
        }
        Some(a.status != 200)
    }

    async fn query(&self, input: &Value) -> Option<bool> {
        let url = format!("{}/collections/{COLLECTION}/points/query", self.urls.qdrant);
        let body = json!({ "query": input["vector"], "limit": input["limit"] });
        let a = self.send(self.client.post(url).json(&body), self.tool_timeout).await?;
        // No collection yet: nothing remembered, which is an answer.
        Some(!matches!(a.status, 200 | 404))
    }

    async fn create_collection(&self) -> Option<()> {
        let url = format!("{}/collections/{COLLECTION}", self.urls.qdrant);
        let body = json!({ "vectors": { "size": 4, "distance": "Cosine" } });
        let a = self.send(self.client.put(url).json(&body), self.tool_timeout).await?;
        // 409: another worker created it first.
        matches!(a.status, 200 | 409).then_some(())
    }
}

/// The decision of the model step governing step `step` that gives the
/// worker's arguments `args` (0 for an ungoverned step or no match).
pub fn decision_for_args(t: &Template, job: JobId, step: u16, args: u64) -> u32 {
    let Some(g) = t.steps.get(step as usize).and_then(|s| s.governed_by) else { return 0 };
    let StepKind::Model { options, .. } = t.steps[g as usize].kind else { return 0 };
    (0..options).find(|&d| args_for(job.0, step, d) == args).unwrap_or(0)
}

/// A tool input as Stripe form pairs (`metadata[k]=v` for nested objects).
fn stripe_form(input: &Value) -> Vec<(String, String)> {
    let mut form = Vec::new();
    for (k, v) in input.as_object().into_iter().flatten() {
        match v {
            Value::Object(o) => {
                for (mk, mv) in o {
                    form.push((format!("{k}[{mk}]"), mv.as_str().map_or_else(|| mv.to_string(), str::to_owned)));
                }
            }
            Value::String(s) => form.push((k.clone(), s.clone())),
            other => form.push((k.clone(), other.to_string())),
        }
    }
    form
}

fn tool_outcome(api: Api, a: &Answer) -> Option<(CallOutcome, bool)> {
    let ok = |malformed| Some((CallOutcome::Ok { effect: 0, replayed: a.replayed }, malformed));
    match (api, a.status) {
        (Api::Payment, 200) => ok(a.body.get("status").is_none() || a.body.get("amount").is_none()),
        (Api::Email, 200) => ok(a.body.get("id").is_none()),
        (Api::Payment, 409) => Some((CallOutcome::KeyInUse, false)),
        (Api::Email, 409) if a.body["name"] == "concurrent_idempotent_requests" => Some((CallOutcome::KeyInUse, false)),
        // A refused request (400 idempotency_error, 409 changed payload, 422):
        // permanent, the task fails.
        (_, 400 | 409 | 422) => {
            tracing::warn!(status = a.status, body = %a.body, "tool request refused");
            Some((CallOutcome::ParamsMismatch, false))
        }
        (_, status) => {
            tracing::debug!(status, "tool answered without a definite outcome");
            None
        }
    }
}

fn row_key(api: Api, row: &Value) -> Option<String> {
    match api {
        Api::Payment => row["metadata"]["idempotency_key"].as_str().map(str::to_owned),
        _ => tag(row, "idempotency_key"),
    }
}

fn row_args(api: Api, row: &Value) -> Option<u64> {
    let hex = match api {
        Api::Payment => row["metadata"]["args"].as_str().map(str::to_owned),
        _ => tag(row, "args"),
    }?;
    u64::from_str_radix(&hex, 16).ok()
}

fn tag(row: &Value, name: &str) -> Option<String> {
    row["tags"].as_array()?.iter().find(|t| t["name"] == name)?["value"].as_str().map(str::to_owned)
}

/// The tool steps before model step `g`: the conversation so far.
fn tools_before(t: &Template, g: u16) -> impl Iterator<Item = (u16, StepKind)> + '_ {
    t.steps
        .iter()
        .enumerate()
        .take(g as usize)
        .filter(|(_, s)| !matches!(s.kind, StepKind::Model { .. }))
        .map(|(i, s)| (i as u16, s.kind))
}

fn opening(job: u32, t: &Template) -> String {
    format!("Run job-{job} ({})", t.name)
}

fn anthropic_conversation(job: u32, t: &Template, g: u16) -> Value {
    let mut msgs = vec![json!({ "role": "user", "content": opening(job, t) })];
    for (i, kind) in tools_before(t, g) {
        let name = script::tool_input(job, kind, i, 0).0;
        let id = format!("toolu_step{i}");
        msgs.push(
            json!({ "role": "assistant", "content": [{ "type": "tool_use", "id": id, "name": name, "input": {} }] }),
        );
        msgs.push(
            json!({ "role": "user", "content": [{ "type": "tool_result", "tool_use_id": id, "content": "done" }] }),
        );
    }
    Value::Array(msgs)
}

fn openai_conversation(job: u32, t: &Template, g: u16) -> Value {
    let mut msgs = vec![json!({ "role": "user", "content": opening(job, t) })];
    for (i, kind) in tools_before(t, g) {
        let name = script::tool_input(job, kind, i, 0).0;
        let id = format!("call_step{i}");
        msgs.push(json!({ "role": "assistant", "content": null, "tool_calls": [{ "id": id, "type": "function",
                           "function": { "name": name, "arguments": "{}" } }] }));
        msgs.push(json!({ "role": "tool", "tool_call_id": id, "content": "done" }));
    }
    Value::Array(msgs)
}

/// The tool call a model answer asks for: (name, input).
fn answered_tool(p: usize, body: &Value) -> Option<Value> {
    if p == 0 {
        let block = body["content"].as_array()?.iter().find(|b| b["type"] == "tool_use")?;
        Some(block["input"].clone())
    } else {
        let call = body["choices"][0]["message"]["tool_calls"].get(0)?;
        serde_json::from_str(call["function"]["arguments"].as_str()?).ok()
    }
}

/// The decision of model step `g` read from the answer: the next tool call
/// is the first tool step after `g`, which `g` governs; its input is made
/// with exactly one of `g`'s options. An answer that matches none fails the
/// agent's validation (`invalid_output`): the worker asks again.
fn model_reply(p: usize, t: &Template, job: u32, g: u16, request: &ModelRequest, body: &Value) -> ModelReply {
    let next = (g as usize + 1..t.steps.len()).find(|&i| !matches!(t.steps[i].kind, StepKind::Model { .. }));
    let decision = match (next, answered_tool(p, body)) {
        (Some(s), Some(input)) => script::decision_of(job, t, s as u16, &input),
        // No tool left: the final answer decides nothing.
        (None, _) => Some(0),
        (Some(_), None) => None,
    };
    let usage = &body["usage"];
    let field = |k: &str| usage[k].as_u64().unwrap_or(0) as u32;
    let (input_tokens, cached_tokens, output_tokens) = if p == 0 {
        let cached = field("cache_read_input_tokens");
        (field("input_tokens") + cached + field("cache_creation_input_tokens"), cached, field("output_tokens"))
    } else {
        let cached = usage["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap_or(0) as u32;
        (field("prompt_tokens"), cached, field("completion_tokens"))
    };
    if decision.is_none() {
        tracing::warn!(job, step = g, answer = %body, "model answer matches no option of the step; rejected");
    }
    ModelReply {
        input_tokens: input_tokens.max(request.input_tokens.min(1)),
        cached_tokens,
        output_tokens,
        cost_micro_usd: 0,
        decision: decision.unwrap_or(0),
        cache_hit: cached_tokens > 0,
        degraded: p + 1 == PROVIDERS.len(),
        invalid_output: decision.is_none(),
    }
}

fn provider_error(status: u16, kind: ErrorKind, retry_after_ms: Option<u64>) -> ProviderError {
    let retryable = match kind {
        ErrorKind::InsufficientQuota => false,
        _ => status == 0 || status == 408 || status == 409 || status == 429 || status >= 500,
    };
    ProviderError { status, kind, retry_after_ms, retryable, cost_micro_usd: 0 }
}

/// A provider's error answer as the SDKs classify it.
fn model_error(a: &Answer) -> ProviderError {
    let ty = a.body["error"]["type"].as_str().or_else(|| a.body["error"]["code"].as_str()).unwrap_or("");
    let code = a.body["error"]["code"].as_str().unwrap_or("");
    let kind = match a.status {
        429 if ty == "insufficient_quota" || code == "insufficient_quota" => ErrorKind::InsufficientQuota,
        429 => ErrorKind::RateLimit,
        503 => ErrorKind::Unavailable,
        529 => ErrorKind::Overloaded,
        _ => ErrorKind::Api,
    };
    provider_error(a.status, kind, a.retry_after_ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::components::workflow::builtin;

    fn template(name: &str) -> Template {
        builtin().into_iter().find(|t| t.name == name).expect("built-in")
    }

    #[test]
    fn a_tool_input_gives_back_the_decision_it_was_made_with() {
        let t = template("book_flight");
        for d in 0..4 {
            let (_, input) = script::tool_input(7, StepKind::Charge, 3, d);
            let back: Value = serde_json::from_str(&input.to_string()).expect("round trip");
            assert_eq!(script::decision_of(7, &t, 3, &back), Some(d));
            assert_eq!(decision_for_args(&t, JobId(7), 3, args_for(7, 3, d)), d);
        }
    }

    #[test]
    fn the_conversation_carries_one_result_per_earlier_tool_step() {
        let t = template("book_flight");
        let c = anthropic_conversation(3, &t, 2);
        let results = c.as_array().unwrap().iter().filter(|m| m["content"][0]["type"] == "tool_result").count();
        assert_eq!(results, 1, "{c}");
        let o = openai_conversation(3, &t, 0);
        assert_eq!(o.as_array().unwrap().len(), 1);
    }

    #[test]
    fn stripe_forms_flatten_metadata() {
        let (_, input) = script::tool_input(5, StepKind::Charge, 3, 1);
        let form = stripe_form(&input);
        assert!(form.iter().any(|(k, v)| k == "metadata[job_id]" && v == "job-5"), "{form:?}");
        assert!(form.iter().any(|(k, _)| k == "amount"));
    }
}
