//! The model fakes: Anthropic Messages (`POST /v1/messages`) and OpenAI Chat
//! Completions (`POST /v1/chat/completions`, also the self-hosted fallback).
//!
//! Each call plays one turn of the script ([`super::script`]) through the
//! fake's [`ProviderMock`]: the mock decides latency, usage (prompt-cache
//! reads and writes), cost and failures; an error toxic or a mid-stream error
//! toxic becomes an [`crate::components::provider::ErrorMode`] window on the
//! mock for that request, so status codes, error classes and bodies are the
//! simulator's. Answers are JSON or, with `"stream": true`, Server-Sent
//! Events (Anthropic's `message_start` … `message_stop` with an `error` event
//! mid-stream; OpenAI's chunks ending in `data: [DONE]`).

use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::Response;
use axum::routing::post;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde_json::{Value, json};

use super::http::{
    Applied, Ctx, Note, Reshape, break_frames, break_shape, header, json_response, json_text, noted, set_retry_after,
};
use super::script::{Action, Turn};
use super::{Fake, lock};
use crate::components::provider::{
    ModelOutcome, ModelReply, ProviderConfig, ProviderError, ProviderKind, ProviderMock,
};

/// The provider kinds of the model fakes, in [`super::Shared::models`] order.
pub const KINDS: [ProviderKind; 3] = [ProviderKind::Anthropic, ProviderKind::OpenAi, ProviderKind::Local];

/// What a schema-change toxic does to Anthropic's answers: the content
/// blocks and stop reason under other names (as the legacy Text Completions
/// API named them), token counts as strings.
pub const ANTHROPIC_RESHAPE: Reshape = Reshape {
    renames: &[
        ("content", "completion"),
        ("content_block", "block"),
        ("stop_reason", "stop"),
        ("partial_json", "json"),
    ],
    stringified: &["input_tokens", "output_tokens"],
};

/// What a schema-change toxic does to OpenAI's answers: no `choices`, the
/// finish reason renamed, token counts as strings.
pub const OPENAI_RESHAPE: Reshape = Reshape {
    renames: &[("choices", "outputs"), ("finish_reason", "stop_reason")],
    stringified: &["prompt_tokens", "completion_tokens", "total_tokens"],
};

/// Characters per streamed text or JSON delta.
const DELTA_CHARS: usize = 24;

/// A model fake's state: its provider mock.
#[derive(Debug)]
pub struct ModelState {
    /// The provider (latency, usage, cost, cache, outages).
    pub provider: ProviderMock,
}

impl ModelState {
    /// A fresh provider of `kind`.
    pub fn new(kind: ProviderKind) -> Self {
        let cfg = match kind {
            ProviderKind::Anthropic => ProviderConfig::anthropic(),
            ProviderKind::OpenAi => ProviderConfig::openai(),
            ProviderKind::Local => ProviderConfig::local(),
        };
        ModelState { provider: ProviderMock::new(cfg) }
    }
}

/// The Anthropic fake's routes.
pub fn anthropic_router() -> Router<Ctx> {
    Router::new().route("/v1/messages", post(messages))
}

/// The OpenAI (and self-hosted) fake's routes.
pub fn openai_router() -> Router<Ctx> {
    Router::new().route("/v1/chat/completions", post(chat_completions))
}

fn model_index(f: Fake) -> usize {
    match f {
        Fake::Anthropic => 0,
        Fake::Openai => 1,
        _ => 2,
    }
}

/// One turn played through the provider: the turn, the outcome, the error
/// body the provider gives for a failure.
struct Played {
    turn: Turn,
    outcome: ModelOutcome,
    error_body: Option<String>,
    request_id: String,
    /// A schema change applies: a 200 answer is reshaped.
    malformed: bool,
}

/// Plays the turn after `results` tool results of the job named in `first`.
async fn play(ctx: &Ctx, applied: &Applied, first: &str, results: usize) -> Result<Played, String> {
    let shared = &ctx.shared;
    let (job, t) = shared.script.parse_job(first).map_err(|e| e.to_string())?;
    let turn = shared.script.turn(job, t, results).map_err(|e| e.to_string())?;
    let (outcome, error_body, malformed) = {
        let mut st = lock(&shared.models[model_index(ctx.fake)]);
        let now = shared.now_us();
        if applied.schema_change() {
            st.provider.set_schema_break(now, now + 1);
        }
        let malformed = st.provider.malformed(now);
        let modes: Vec<_> = applied.0.iter().filter_map(|t| t.provider_mode()).collect();
        for &m in &modes {
            st.provider.set_outage(m, now, now + 1);
        }
        let mut rng = ChaCha8Rng::seed_from_u64(turn.rng_seed);
        let outcome = st.provider.handle(now, &turn.request, &mut rng);
        if !modes.is_empty() {
            st.provider.clear_outages();
        }
        let body = outcome.result.err().map(|e| st.provider.error_body_json(&e));
        if body.is_none() && matches!(turn.action, super::script::Action::Final { .. }) {
            shared.record_final(job);
        }
        (outcome, body, malformed)
    };
    let scaled_us = outcome.latency_us.saturating_mul(shared.cfg.model_latency_permille) / 1_000;
    if scaled_us > 0 {
        tokio::time::sleep(Duration::from_micros(scaled_us)).await;
    }
    let request_id = format!("req_{:012x}{:012x}", shared.cfg.seed & 0xffff_ffff_ffff, shared.next_id());
    Ok(Played { turn, outcome, error_body, request_id, malformed })
}

/// The text of a message's `content` (a string or text blocks).
fn content_text(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(blocks) => blocks.iter().filter_map(|b| b["text"].as_str()).collect::<Vec<_>>().join("\n"),
        _ => String::new(),
    }
}

fn first_user_text(messages: &[Value]) -> String {
    messages.iter().find(|m| m["role"] == "user").map(|m| content_text(&m["content"])).unwrap_or_default()
}

/// Splits `s` into pieces of at most `n` characters.
fn pieces(s: &str, n: usize) -> Vec<String> {
    let chars: Vec<char> = s.chars().collect();
    chars.chunks(n.max(1)).map(|c| c.iter().collect()).collect()
}

/// An SSE body from ready-made frames.
fn sse(frames: Vec<String>) -> Response {
    let stream =
        futures_util::stream::iter(frames.into_iter().map(|f| Ok::<_, std::convert::Infallible>(Bytes::from(f))));
    let mut r = Response::new(Body::from_stream(stream));
    let h = r.headers_mut();
    h.insert("content-type", HeaderValue::from_static("text/event-stream"));
    h.insert("cache-control", HeaderValue::from_static("no-cache"));
    r
}

fn event(name: &str, data: &Value) -> String {
    format!("event: {name}\ndata: {data}\n\n")
}

// ---------------------------------------------------------------- Anthropic

fn anthropic_error(status: u16, ty: &str, message: &str) -> Response {
    json_response(status, &json!({ "type": "error", "error": { "type": ty, "message": message } }))
}

/// Anthropic's usage block: input excludes cache reads and cache writes.
fn anthropic_usage(turn: &Turn, r: &ModelReply) -> Value {
    let creation = if r.cache_hit { 0 } else { turn.request.prefix_tokens };
    let input = r.input_tokens.saturating_sub(r.cached_tokens + creation);
    json!({ "input_tokens": input, "cache_creation_input_tokens": creation,
            "cache_read_input_tokens": r.cached_tokens, "output_tokens": r.output_tokens })
}

fn anthropic_content(action: &Action) -> (Vec<Value>, &'static str) {
    match action {
        Action::Tool { name, input, id, .. } => (
            vec![
                json!({ "type": "text", "text": format!("Next step: {name}.") }),
                json!({ "type": "tool_use", "id": format!("toolu_{id}"), "name": name, "input": input }),
            ],
            "tool_use",
        ),
        Action::Final { text } => (vec![json!({ "type": "text", "text": text })], "end_turn"),
    }
}

async fn messages(
    State(ctx): State<Ctx>,
    Extension(applied): Extension<Applied>,
    h: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let bearer = header(&h, "authorization").and_then(|a| a.strip_prefix("Bearer ")).is_some_and(|k| !k.is_empty());
    if header(&h, "x-api-key").is_none_or(str::is_empty) && !bearer {
        return anthropic_error(
            401,
            "authentication_error",
            "x-api-key header (or Authorization: Bearer) is required (any value works here).",
        );
    }
    if header(&h, "anthropic-version").is_none() {
        return anthropic_error(
            400,
            "invalid_request_error",
            "anthropic-version: header is required (e.g. 2023-06-01).",
        );
    }
    let Some(msgs) = body["messages"].as_array() else {
        return anthropic_error(400, "invalid_request_error", "messages: Field required");
    };
    let results = msgs
        .iter()
        .filter(|m| m["role"] == "user")
        .filter_map(|m| m["content"].as_array())
        .flatten()
        .filter(|b| b["type"] == "tool_result")
        .count();
    let played = match play(&ctx, &applied, &first_user_text(msgs), results).await {
        Ok(p) => p,
        Err(msg) => return anthropic_error(400, "invalid_request_error", &msg),
    };
    let model = body["model"].as_str().unwrap_or("claude-agentdrill").to_owned();
    let stream = body["stream"].as_bool().unwrap_or(false);
    let job = Some(played.turn.job);
    let mut resp = match (played.outcome.result, stream) {
        (Ok(r), false) => {
            let (content, stop) = anthropic_content(&played.turn.action);
            let mut msg = json!({ "id": format!("msg_{}", played.request_id), "type": "message", "role": "assistant",
                              "model": model, "content": content, "stop_reason": stop, "stop_sequence": null,
                              "usage": anthropic_usage(&played.turn, &r) });
            if played.malformed {
                break_shape(&mut msg, ANTHROPIC_RESHAPE);
            }
            json_response(200, &msg)
        }
        (Ok(r), true) => sse(reshaped(anthropic_stream(&played, &model, Some(&r), None), &played, ANTHROPIC_RESHAPE)),
        (Err(e), true) if e.status == 200 => {
            let error = Some((&e, played.error_body.as_deref().unwrap_or("{}")));
            sse(reshaped(anthropic_stream(&played, &model, None, error), &played, ANTHROPIC_RESHAPE))
        }
        (Err(e), _) => error_reply(&e, played.error_body.unwrap_or_default()),
    };
    resp.headers_mut().insert("request-id", HeaderValue::from_str(&played.request_id).expect("ascii"));
    noted(resp, Note { job, replayed: false })
}

/// The frames of a streamed answer, reshaped when a schema change applies.
fn reshaped(frames: Vec<String>, p: &Played, r: Reshape) -> Vec<String> {
    if p.malformed { break_frames(frames, r) } else { frames }
}

/// A provider error as an HTTP answer (a mid-stream error on a non-streamed
/// call is answered as the provider's 500).
fn error_reply(e: &ProviderError, body: String) -> Response {
    let status = if e.status == 200 || e.status == 0 { 500 } else { e.status };
    let mut r = json_text(status, body);
    if let Some(ms) = e.retry_after_ms {
        set_retry_after(r.headers_mut(), ms);
    }
    r
}

/// The SSE frames of an Anthropic answer; with `error`, the stream stops
/// with an `error` event after the tokens the provider streamed.
fn anthropic_stream(
    p: &Played,
    model: &str,
    reply: Option<&ModelReply>,
    error: Option<(&ProviderError, &str)>,
) -> Vec<String> {
    let usage = reply.map_or_else(
        || json!({ "input_tokens": p.turn.request.input_tokens, "output_tokens": 1 }),
        |r| {
            let mut u = anthropic_usage(&p.turn, r);
            u["output_tokens"] = json!(1);
            u
        },
    );
    let start = json!({ "type": "message_start", "message": { "id": format!("msg_{}", p.request_id), "type": "message",
        "role": "assistant", "model": model, "content": [], "stop_reason": null, "stop_sequence": null, "usage": usage } });
    let mut frames = vec![event("message_start", &start), event("ping", &json!({ "type": "ping" }))];
    let (content, stop) = anthropic_content(&p.turn.action);
    for (i, block) in content.iter().enumerate() {
        let (empty, deltas) = if block["type"] == "tool_use" {
            let mut b = block.clone();
            b["input"] = json!({});
            let d = pieces(&block["input"].to_string(), DELTA_CHARS);
            (b, d.into_iter().map(|s| json!({ "type": "input_json_delta", "partial_json": s })).collect::<Vec<_>>())
        } else {
            let d = pieces(block["text"].as_str().unwrap_or(""), DELTA_CHARS);
            (
                json!({ "type": "text", "text": "" }),
                d.into_iter().map(|s| json!({ "type": "text_delta", "text": s })).collect(),
            )
        };
        frames.push(event(
            "content_block_start",
            &json!({ "type": "content_block_start", "index": i, "content_block": empty }),
        ));
        for (n, d) in deltas.into_iter().enumerate() {
            frames
                .push(event("content_block_delta", &json!({ "type": "content_block_delta", "index": i, "delta": d })));
            if let Some((_, body)) = error
                && n == 0
            {
                frames.push(format!("event: error\ndata: {body}\n\n"));
                return frames;
            }
        }
        frames.push(event("content_block_stop", &json!({ "type": "content_block_stop", "index": i })));
    }
    let out = reply.map_or(0, |r| r.output_tokens);
    frames.push(event(
        "message_delta",
        &json!({ "type": "message_delta", "delta": { "stop_reason": stop, "stop_sequence": null }, "usage": { "output_tokens": out } }),
    ));
    frames.push(event("message_stop", &json!({ "type": "message_stop" })));
    frames
}

// ------------------------------------------------------------------ OpenAI

fn openai_error(status: u16, message: &str) -> Response {
    json_response(
        status,
        &json!({ "error": { "message": message, "type": "invalid_request_error", "param": null, "code": null } }),
    )
}

fn openai_usage(r: &ModelReply) -> Value {
    json!({ "prompt_tokens": r.input_tokens, "completion_tokens": r.output_tokens,
            "total_tokens": r.input_tokens + r.output_tokens,
            "prompt_tokens_details": { "cached_tokens": r.cached_tokens } })
}

fn openai_message(action: &Action) -> (Value, &'static str) {
    match action {
        Action::Tool { name, input, id, .. } => (
            json!({ "role": "assistant", "content": null, "refusal": null, "tool_calls": [{ "id": format!("call_{id}"),
                    "type": "function", "function": { "name": name, "arguments": input.to_string() } }] }),
            "tool_calls",
        ),
        Action::Final { text } => (json!({ "role": "assistant", "content": text, "refusal": null }), "stop"),
    }
}

async fn chat_completions(
    State(ctx): State<Ctx>,
    Extension(applied): Extension<Applied>,
    h: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let authed = header(&h, "authorization").and_then(|a| a.strip_prefix("Bearer ")).is_some_and(|k| !k.is_empty());
    if ctx.fake == Fake::Openai && !authed {
        let mut r = openai_error(401, "You didn't provide an API key: send `Authorization: Bearer <any key>`.");
        r.headers_mut().insert("x-request-id", HeaderValue::from_static("req_unauthenticated"));
        return r;
    }
    let Some(msgs) = body["messages"].as_array() else { return openai_error(400, "'messages' is a required property") };
    let results = msgs.iter().filter(|m| m["role"] == "tool").count();
    let played = match play(&ctx, &applied, &first_user_text(msgs), results).await {
        Ok(p) => p,
        Err(msg) => return openai_error(400, &msg),
    };
    let model = body["model"].as_str().unwrap_or("gpt-agentdrill").to_owned();
    let stream = body["stream"].as_bool().unwrap_or(false);
    let usage_chunk = body["stream_options"]["include_usage"].as_bool().unwrap_or(false);
    let id = format!("chatcmpl-{}", played.request_id);
    let created = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let mut resp = match (&played.outcome.result, stream) {
        (Ok(r), false) => {
            let (message, finish) = openai_message(&played.turn.action);
            let mut c = json!({ "id": id, "object": "chat.completion", "created": created, "model": model,
                                "system_fingerprint": null, "usage": openai_usage(r),
                                "choices": [{ "index": 0, "message": message, "logprobs": null, "finish_reason": finish }] });
            if played.malformed {
                break_shape(&mut c, OPENAI_RESHAPE);
            }
            json_response(200, &c)
        }
        (Ok(r), true) => sse(reshaped(
            openai_stream(&played, &id, &model, created, usage_chunk.then_some(r)),
            &played,
            OPENAI_RESHAPE,
        )),
        (Err(e), true) if e.status == 200 => {
            let mut frames = openai_stream(&played, &id, &model, created, None);
            frames.truncate(2);
            frames.push(format!("data: {}\n\n", played.error_body.as_deref().unwrap_or("{}")));
            sse(reshaped(frames, &played, OPENAI_RESHAPE))
        }
        (Err(e), _) => error_reply(e, played.error_body.clone().unwrap_or_default()),
    };
    resp.headers_mut().insert("x-request-id", HeaderValue::from_str(&played.request_id).expect("ascii"));
    noted(resp, Note { job: Some(played.turn.job), replayed: false })
}

/// The SSE frames of an OpenAI answer, ending in `data: [DONE]`.
fn openai_stream(p: &Played, id: &str, model: &str, created: u64, usage: Option<&ModelReply>) -> Vec<String> {
    let chunk = |delta: Value, finish: Value| {
        let c = json!({ "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                        "system_fingerprint": null, "choices": [{ "index": 0, "delta": delta, "logprobs": null, "finish_reason": finish }] });
        format!("data: {c}\n\n")
    };
    let mut frames = vec![chunk(json!({ "role": "assistant", "content": "" }), Value::Null)];
    let (message, finish) = openai_message(&p.turn.action);
    if let Some(call) = message["tool_calls"].get(0) {
        let head = json!({ "index": 0, "id": call["id"], "type": "function",
                           "function": { "name": call["function"]["name"], "arguments": "" } });
        frames.push(chunk(json!({ "tool_calls": [head] }), Value::Null));
        for s in pieces(call["function"]["arguments"].as_str().unwrap_or(""), DELTA_CHARS) {
            frames.push(chunk(json!({ "tool_calls": [{ "index": 0, "function": { "arguments": s } }] }), Value::Null));
        }
    } else {
        for s in pieces(message["content"].as_str().unwrap_or(""), DELTA_CHARS) {
            frames.push(chunk(json!({ "content": s }), Value::Null));
        }
    }
    frames.push(chunk(json!({}), json!(finish)));
    if let Some(r) = usage {
        let c = json!({ "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                        "choices": [], "usage": openai_usage(r) });
        frames.push(format!("data: {c}\n\n"));
    }
    frames.push("data: [DONE]\n\n".to_owned());
    frames
}
