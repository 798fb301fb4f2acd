//! The live fakes over real HTTP, with reqwest: every endpoint, every error
//! mode, idempotent replay and 409 under concurrent requests with one key,
//! SSE parsed event by event, a vector snapshot restored, the control API.

use std::time::Duration;

use agentdrill::live::{self, LiveConfig, Served};
use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use serde_json::{Value, json};

/// A form body (reqwest is built without its `form` feature).
trait Form {
    fn form_body(self, pairs: &[(&str, &str)]) -> Self;
}

impl Form for reqwest::RequestBuilder {
    fn form_body(self, pairs: &[(&str, &str)]) -> Self {
        self.header("content-type", "application/x-www-form-urlencoded")
            .body(serde_urlencoded::to_string(pairs).expect("encodes"))
    }
}

async fn count(c: &reqwest::Client, u: String) -> Value {
    let r: Value = c.post(u).json(&json!({})).send().await.unwrap().json().await.unwrap();
    r["result"]["count"].clone()
}

async fn start(processing_ms: u64, dedupe: bool) -> (Served, reqwest::Client) {
    let cfg = LiveConfig { seed: 3, processing_ms, payment_dedupe: dedupe, ..LiveConfig::default() };
    (live::start(cfg).await.expect("serve"), reqwest::Client::new())
}

fn url(s: &Served, key: &str) -> String {
    s.env().into_iter().find(|(k, _)| *k == key).expect("exported").1
}

async fn control(s: &Served, c: &reqwest::Client, method: &str, path: &str, body: Option<Value>) -> Value {
    let u = format!("{}{path}", url(s, "AGENTDRILL_CONTROL_URL"));
    let req = match method {
        "POST" => c.post(u).json(&body.unwrap_or(Value::Null)),
        "DELETE" => c.delete(u),
        _ => c.get(u),
    };
    let r = req.send().await.expect("control API answers");
    assert!(r.status().is_success(), "{method} {path}: {}", r.status());
    r.json().await.unwrap_or(Value::Null)
}

async fn toxic(s: &Served, c: &reqwest::Client, fake: &str, t: Value) {
    control(s, c, "POST", &format!("/proxies/{fake}/toxics"), Some(t)).await;
}

fn pay(s: &Served, c: &reqwest::Client, key: &str, amount: u32, job: u32) -> reqwest::RequestBuilder {
    c.post(format!("{}/v1/payment_intents", url(s, "STRIPE_API_BASE")))
        .bearer_auth("sk_test_x")
        .header("idempotency-key", key)
        .form_body(&[
            ("amount", &amount.to_string()),
            ("currency", "usd"),
            ("confirm", "true"),
            ("metadata[job_id]", &format!("job-{job}")),
            ("metadata[step]", "3"),
        ])
}

async fn ledger_len(s: &Served, c: &reqwest::Client, which: &str) -> usize {
    control(s, c, "GET", &format!("/ledgers/{which}"), None).await["effects"].as_array().map_or(0, Vec::len)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payment_replay_mismatch_and_409_while_in_flight() {
    let (s, c) = start(300, true).await;
    let first = pay(&s, &c, "k1", 500, 1).send().await.unwrap();
    assert_eq!(first.status(), 200);
    assert!(first.headers().get("request-id").is_some());
    let pi: Value = first.json().await.unwrap();
    assert_eq!((pi["object"].as_str(), pi["status"].as_str()), (Some("payment_intent"), Some("succeeded")));
    let again = pay(&s, &c, "k1", 500, 1).send().await.unwrap();
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.json::<Value>().await.unwrap()["id"], pi["id"]);
    let changed = pay(&s, &c, "k1", 501, 1).send().await.unwrap();
    assert_eq!(changed.status(), 400);
    assert_eq!(changed.json::<Value>().await.unwrap()["error"]["type"], "idempotency_error");
    // Concurrent requests with one key: the second arrives while the first
    // is being processed (its effect is in the ledger, its answer is not out).
    let slow = tokio::spawn(pay(&s, &c, "k2", 700, 2).send());
    while ledger_len(&s, &c, "payment").await < 2 {
        tokio::task::yield_now().await;
    }
    let busy = pay(&s, &c, "k2", 700, 2).send().await.unwrap();
    assert_eq!(busy.status(), 409);
    assert_eq!(busy.json::<Value>().await.unwrap()["error"]["code"], "idempotency_key_in_use");
    assert_eq!(slow.await.unwrap().unwrap().status(), 200);
    assert_eq!(ledger_len(&s, &c, "payment").await, 2, "one effect per key");
    let job = control(&s, &c, "GET", "/jobs/1?template=book_flight", None).await;
    assert_eq!(job["template"], "book_flight");
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payment_without_dedupe_auth_search_refund_and_404() {
    let (s, c) = start(0, false).await;
    for _ in 0..2 {
        assert_eq!(pay(&s, &c, "same", 900, 4).send().await.unwrap().status(), 200);
    }
    assert_eq!(ledger_len(&s, &c, "payment").await, 2, "dedupe = false performs every request");
    let base = url(&s, "STRIPE_API_BASE");
    let anon = c.post(format!("{base}/v1/payment_intents")).form_body(&[("amount", "1")]).send().await.unwrap();
    assert_eq!(anon.status(), 401);
    let missing =
        c.post(format!("{base}/v1/payment_intents")).bearer_auth("sk_test_x").form_body(&[("currency", "usd")]);
    let missing: Value = missing.send().await.unwrap().json().await.unwrap();
    assert_eq!(
        (missing["error"]["param"].as_str(), missing["error"]["code"].as_str()),
        (Some("amount"), Some("parameter_missing"))
    );
    let found: Value = c
        .get(format!(
            "{base}/v1/payment_intents/search?{}",
            serde_urlencoded::to_string([("query", "metadata['job_id']:'job-4' AND status:'succeeded'")]).unwrap()
        ))
        .bearer_auth("sk_test_x")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(found["object"], "search_result");
    let data = found["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    let id = data[0]["id"].as_str().unwrap();
    let got: Value = c
        .get(format!("{base}/v1/payment_intents/{id}"))
        .bearer_auth("sk_test_x")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(got["amount"], 900);
    let refund = c
        .post(format!("{base}/v1/refunds"))
        .bearer_auth("sk_test_x")
        .form_body(&[("payment_intent", id), ("amount", "400")])
        .send()
        .await
        .unwrap();
    let refund: Value = refund.json().await.unwrap();
    assert_eq!((refund["object"].as_str(), refund["amount"].as_u64()), (Some("refund"), Some(400)));
    let too_much = c
        .post(format!("{base}/v1/refunds"))
        .bearer_auth("sk_test_x")
        .form_body(&[("payment_intent", id), ("amount", "901")]);
    assert_eq!(too_much.send().await.unwrap().status(), 400);
    let r_id = refund["id"].as_str().unwrap();
    assert_eq!(c.get(format!("{base}/v1/refunds/{r_id}")).bearer_auth("sk_test_x").send().await.unwrap().status(), 200);
    let none = c.get(format!("{base}/v1/payment_intents/pi_nope")).bearer_auth("sk_test_x").send().await.unwrap();
    assert_eq!(none.status(), 404);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn email_send_replay_list_by_tag_and_conflict() {
    let (s, c) = start(0, true).await;
    let base = url(&s, "EMAIL_API_URL");
    let body = json!({ "from": "a@x.test", "to": "b@x.test", "subject": "hi", "text": "t",
                       "tags": [{ "name": "job_id", "value": "job-9" }, { "name": "step", "value": "5" }] });
    let send = |b: &Value, key: &str| {
        c.post(format!("{base}/emails")).bearer_auth("re_x").header("idempotency-key", key).json(b).send()
    };
    let first: Value = send(&body, "e1").await.unwrap().json().await.unwrap();
    let again = send(&body, "e1").await.unwrap();
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.json::<Value>().await.unwrap()["id"], first["id"]);
    let other = send(&json!({ "to": "c@x.test", "subject": "other" }), "e1").await.unwrap();
    assert_eq!(other.status(), 409);
    assert_eq!(other.json::<Value>().await.unwrap()["name"], "invalid_idempotent_request");
    let id = first["id"].as_str().unwrap();
    let got: Value =
        c.get(format!("{base}/emails/{id}")).bearer_auth("re_x").send().await.unwrap().json().await.unwrap();
    assert_eq!(got["subject"], "hi");
    let list: Value = c
        .get(format!("{base}/emails?tag=job_id:job-9"))
        .bearer_auth("re_x")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
    assert_eq!(c.post(format!("{base}/emails")).json(&body).send().await.unwrap().status(), 401);
    let missing =
        c.post(format!("{base}/emails")).bearer_auth("re_x").json(&json!({ "to": "x" })).send().await.unwrap();
    assert_eq!(missing.status(), 422);
    let job = control(&s, &c, "GET", "/jobs/9?template=book_flight", None).await;
    let email_step = job["steps"].as_array().unwrap().iter().find(|x| x["kind"] == "email").unwrap().clone();
    assert_eq!((email_step["step"].as_u64(), email_step["effects"].as_u64()), (Some(5), Some(1)));
    s.shutdown().await;
}

async fn anthropic(s: &Served, c: &reqwest::Client, body: Value) -> reqwest::Response {
    c.post(format!("{}/v1/messages", url(s, "ANTHROPIC_BASE_URL")))
        .header("x-api-key", "k")
        .header("anthropic-version", "2023-06-01")
        .json(&body)
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_tool_use_sse_and_error_modes() {
    let (s, c) = start(0, true).await;
    let user = json!([{ "role": "user", "content": "Run job-5 (approve_refund)" }]);
    let r = anthropic(&s, &c, json!({ "model": "m", "max_tokens": 10, "messages": user })).await;
    assert!(r.headers().get("request-id").is_some());
    let msg: Value = r.json().await.unwrap();
    assert_eq!((msg["type"].as_str(), msg["stop_reason"].as_str()), (Some("message"), Some("tool_use")));
    assert_eq!(msg["content"][1]["name"], "memory_read");
    assert!(msg["usage"]["cache_creation_input_tokens"].as_u64().unwrap() > 0);
    // SSE, event by event.
    let r = anthropic(&s, &c, json!({ "model": "m", "max_tokens": 10, "stream": true, "messages": user })).await;
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let events: Vec<_> = r.bytes_stream().eventsource().map(|e| e.unwrap()).collect().await;
    let names: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(names.first(), Some(&"message_start"));
    assert_eq!(names.last(), Some(&"message_stop"));
    assert!(names.contains(&"content_block_delta") && names.contains(&"message_delta"));
    let json_parts: String = events
        .iter()
        .filter_map(|e| serde_json::from_str::<Value>(&e.data).ok())
        .filter(|d| d["delta"]["type"] == "input_json_delta")
        .map(|d| d["delta"]["partial_json"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(serde_json::from_str::<Value>(&json_parts).unwrap(), msg["content"][1]["input"]);
    let stop: Value = serde_json::from_str(&events.iter().find(|e| e.event == "message_delta").unwrap().data).unwrap();
    assert_eq!(stop["delta"]["stop_reason"], "tool_use");
    // Error modes.
    for (status, ty) in [(429, "rate_limit_error"), (500, "api_error"), (529, "overloaded_error")] {
        let attrs = json!({ "status": status, "retry_after_ms": 1500 });
        toxic(
            &s,
            &c,
            "anthropic",
            json!({ "name": format!("e{status}"), "type": "error", "attributes": attrs, "count": 1 }),
        )
        .await;
        let r = anthropic(&s, &c, json!({ "model": "m", "max_tokens": 10, "messages": user })).await;
        assert_eq!(r.status().as_u16(), status);
        if status == 429 {
            assert_eq!(
                (&r.headers()["retry-after"], &r.headers()["retry-after-ms"]),
                (
                    &"2".parse::<reqwest::header::HeaderValue>().unwrap(),
                    &"1500".parse::<reqwest::header::HeaderValue>().unwrap()
                )
            );
        }
        let body: Value = r.json().await.unwrap();
        assert_eq!((body["type"].as_str(), body["error"]["type"].as_str()), (Some("error"), Some(ty)));
    }
    toxic(
        &s,
        &c,
        "anthropic",
        json!({ "name": "mid", "type": "stream_error", "attributes": { "after_tokens": 4 }, "count": 1 }),
    )
    .await;
    let r = anthropic(&s, &c, json!({ "model": "m", "max_tokens": 10, "stream": true, "messages": user })).await;
    assert_eq!(r.status(), 200);
    let events: Vec<_> = r.bytes_stream().eventsource().map(|e| e.unwrap()).collect().await;
    assert_eq!(events.first().unwrap().event, "message_start");
    let last = events.last().unwrap();
    assert_eq!(last.event, "error");
    assert_eq!(serde_json::from_str::<Value>(&last.data).unwrap()["error"]["type"], "overloaded_error");
    // Missing headers, no job.
    let base = url(&s, "ANTHROPIC_BASE_URL");
    let no_key = c
        .post(format!("{base}/v1/messages"))
        .header("anthropic-version", "2023-06-01")
        .json(&json!({ "messages": user }));
    assert_eq!(no_key.send().await.unwrap().status(), 401);
    let no_version = c.post(format!("{base}/v1/messages")).header("x-api-key", "k").json(&json!({ "messages": user }));
    assert_eq!(no_version.send().await.unwrap().status(), 400);
    let no_job = anthropic(&s, &c, json!({ "messages": [{ "role": "user", "content": "hello" }] })).await;
    assert!(no_job.text().await.unwrap().contains("job-<N>"));
    let stats = control(&s, &c, "GET", "/ledgers/models", None).await;
    assert_eq!(stats["anthropic"]["errors"], 4);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_stream_ends_with_done_and_errors_are_openai_json() {
    let (s, c) = start(0, true).await;
    let base = url(&s, "OPENAI_BASE_URL");
    let body =
        json!({ "model": "m", "stream": true, "messages": [{ "role": "user", "content": "Run job-6 (book_flight)" }] });
    let r = c.post(format!("{base}/chat/completions")).bearer_auth("k").json(&body).send().await.unwrap();
    let events: Vec<_> = r.bytes_stream().eventsource().map(|e| e.unwrap()).collect().await;
    assert_eq!(events.last().unwrap().data, "[DONE]");
    let finish: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str::<Value>(&e.data).unwrap()["choices"][0]["finish_reason"].clone())
        .filter(|f| !f.is_null())
        .collect();
    assert_eq!(finish, vec![json!("tool_calls")]);
    toxic(
        &s,
        &c,
        "openai",
        json!({ "name": "busy", "type": "error", "attributes": { "status": 429, "retry_after_ms": 1000 } }),
    )
    .await;
    let plain = json!({ "model": "m", "messages": [{ "role": "user", "content": "job-6" }] });
    let r = c.post(format!("{base}/chat/completions")).bearer_auth("k").json(&plain).send().await.unwrap();
    assert_eq!((r.status().as_u16(), r.headers()["retry-after"].to_str().unwrap()), (429, "1"));
    assert!(r.headers().get("x-request-id").is_some());
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], "rate_limit_exceeded");
    let local = url(&s, "AGENTDRILL_LOCAL_MODEL_URL");
    let r: Value = c.post(format!("{local}/chat/completions")).json(&plain).send().await.unwrap().json().await.unwrap();
    assert_eq!(r["object"], "chat.completion", "the fallback needs no key and is unaffected by openai's toxics");
    let anon = c.post(format!("{base}/chat/completions")).json(&plain).send().await.unwrap();
    assert_eq!(anon.status(), 401);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vector_snapshot_restored_in_place_and_across_regions() {
    let (s, c) = start(0, true).await;
    let (a, b) = (url(&s, "QDRANT_URL"), url(&s, "QDRANT_URL_REGION_B"));
    let ok = |v: Value| {
        assert_eq!(v["status"], "ok", "{v}");
        v["result"].clone()
    };
    let put = |u: String, v: Value| c.put(u).json(&v).send();
    ok(put(format!("{a}/collections/m"), json!({ "vectors": { "size": 2, "distance": "Dot" } }))
        .await
        .unwrap()
        .json()
        .await
        .unwrap());
    let pts = json!({ "points": [{ "id": 1, "vector": [1.0, 0.0], "payload": { "n": 1 } }, { "id": 2, "vector": [0.0, 1.0], "payload": { "n": 2 } }] });
    ok(put(format!("{a}/collections/m/points?wait=true"), pts).await.unwrap().json().await.unwrap());
    let q: Value = c
        .post(format!("{a}/collections/m/points/query"))
        .json(&json!({ "query": [0.1, 0.9], "limit": 1, "with_payload": true }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ok(q)["points"][0]["id"], 2);
    let snap = ok(c.post(format!("{a}/collections/m/snapshots")).send().await.unwrap().json().await.unwrap());
    let name = snap["name"].as_str().unwrap().to_owned();
    ok(put(format!("{a}/collections/m/points"), json!({ "points": [{ "id": 3, "vector": [1.0, 1.0] }] }))
        .await
        .unwrap()
        .json()
        .await
        .unwrap());
    let list = ok(c.get(format!("{a}/collections/m/snapshots")).send().await.unwrap().json().await.unwrap());
    assert_eq!(list[0]["name"], name.as_str());
    let file: Value = c.get(format!("{a}/collections/m/snapshots/{name}")).send().await.unwrap().json().await.unwrap();
    assert_eq!(file["points"].as_array().unwrap().len(), 2);
    let loc = json!({ "location": format!("{a}/collections/m/snapshots/{name}") });
    ok(put(format!("{b}/collections/m/snapshots/recover"), loc.clone()).await.unwrap().json().await.unwrap());
    assert_eq!(count(&c, format!("{b}/collections/m/points/count")).await, 2);
    assert_eq!(count(&c, format!("{a}/collections/m/points/count")).await, 3);
    ok(put(format!("{a}/collections/m/snapshots/recover"), loc).await.unwrap().json().await.unwrap());
    assert_eq!(count(&c, format!("{a}/collections/m/points/count")).await, 2);
    ok(c.delete(format!("{a}/collections/m/snapshots/{name}")).send().await.unwrap().json().await.unwrap());
    assert_eq!(c.delete(format!("{a}/collections/m/snapshots/{name}")).send().await.unwrap().status(), 404);
    let bad = put(
        format!("{b}/collections/m/snapshots/recover"),
        json!({ "location": "file:///nonexistent/agentdrill/snap" }),
    )
    .await
    .unwrap();
    assert_eq!(bad.status(), 400);
    assert!(bad.text().await.unwrap().contains("cannot read snapshot file"));
    s.shutdown().await;
}

/// A multipart body with one file part (reqwest is built without `multipart`).
fn multipart(field: &str, file_name: &str, bytes: &[u8]) -> (String, Vec<u8>) {
    let boundary = "agentdrill-test-boundary-7d1f";
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{file_name}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(bytes);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vector_snapshot_uploaded_and_recovered_from_a_file() {
    let (s, c) = start(0, true).await;
    let (a, b) = (url(&s, "QDRANT_URL"), url(&s, "QDRANT_URL_REGION_B"));
    let send = |r: reqwest::RequestBuilder| async move {
        let r = r.send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json::<Value>().await.unwrap())
    };
    let (st, _) =
        send(c.put(format!("{a}/collections/m")).json(&json!({ "vectors": { "size": 3, "distance": "Cosine" } })))
            .await;
    assert_eq!(st, 200);
    let pts = json!({ "points": [
        { "id": 1, "vector": [1.0, 0.0, 0.0], "payload": { "job_id": "job-1" } },
        { "id": "5c56c793-69f3-4fbf-87e6-c4bf54c28c26", "vector": [0.0, 1.0, 0.0], "payload": { "job_id": "job-2" } } ] });
    assert_eq!(send(c.put(format!("{a}/collections/m/points")).json(&pts)).await.0, 200);
    let (_, snap) = send(c.post(format!("{a}/collections/m/snapshots"))).await;
    let name = snap["result"]["name"].as_str().unwrap().to_owned();
    let file = c.get(format!("{a}/collections/m/snapshots/{name}")).send().await.unwrap().bytes().await.unwrap();
    let late = json!({ "points": [{ "id": 3, "vector": [0.0, 0.0, 1.0] }] });
    assert_eq!(send(c.put(format!("{a}/collections/m/points")).json(&late)).await.0, 200);

    // Upload to region B, into a collection that does not exist yet.
    let (ctype, body) = multipart("snapshot", &format!("{name}.snapshot"), &file);
    let up = c.post(format!("{b}/collections/up/snapshots/upload?wait=true&priority=snapshot"));
    let (st, v) = send(up.header("content-type", ctype).body(body)).await;
    assert_eq!((st, &v["result"]), (200, &json!(true)), "{v}");
    assert_eq!(count(&c, format!("{b}/collections/up/points/count")).await, 2, "the late write is not in it");
    let (_, info) = send(c.get(format!("{b}/collections/up"))).await;
    assert_eq!(info["result"]["config"]["params"]["vectors"], json!({ "size": 3, "distance": "Cosine" }));
    let (_, got) =
        send(c.post(format!("{b}/collections/up/points")).json(
            &json!({ "ids": ["5c56c793-69f3-4fbf-87e6-c4bf54c28c26"], "with_payload": true, "with_vector": true }),
        ))
        .await;
    assert_eq!(got["result"][0]["payload"], json!({ "job_id": "job-2" }), "{got}");
    assert_eq!(got["result"][0]["vector"], json!([0.0, 1.0, 0.0]));
    let (_, list) = send(c.get(format!("{b}/collections/up/snapshots"))).await;
    assert_eq!(list["result"][0]["name"], name.as_str(), "the recovered snapshot is listed");

    // Recover region A in place from the same file on disk.
    let path = std::env::temp_dir().join(format!("agentdrill-live-http-{}.snapshot", std::process::id()));
    std::fs::write(&path, &file).unwrap();
    assert_eq!(count(&c, format!("{a}/collections/m/points/count")).await, 3);
    let loc = json!({ "location": format!("file://{}", path.display()) });
    let (st, v) = send(c.put(format!("{a}/collections/m/snapshots/recover")).json(&loc)).await;
    assert_eq!((st, &v["result"]), (200, &json!(true)), "{v}");
    assert_eq!(count(&c, format!("{a}/collections/m/points/count")).await, 2, "back at the snapshot");
    std::fs::remove_file(&path).unwrap();

    // Bad uploads: no `snapshot` part, not a snapshot file.
    let (ctype, body) = multipart("other", "x", b"{}");
    let (st, v) =
        send(c.post(format!("{b}/collections/up/snapshots/upload")).header("content-type", ctype).body(body)).await;
    assert_eq!(st, 400);
    assert!(v["status"]["error"].as_str().unwrap().contains("no `snapshot` part"), "{v}");
    let (ctype, body) = multipart("snapshot", "x", b"{\"points\": []}");
    let (st, v) =
        send(c.post(format!("{b}/collections/up/snapshots/upload")).header("content-type", ctype).body(body)).await;
    assert_eq!(st, 400);
    assert!(v["status"]["error"].as_str().unwrap().contains("needs `snapshot`"), "{v}");
    assert_eq!(count(&c, format!("{b}/collections/up/points/count")).await, 2, "a bad upload changes nothing");
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn toxics_latency_hold_drop_schema_change_and_reset() {
    let (s, c) = start(0, true).await;
    let proxies = control(&s, &c, "GET", "/proxies", None).await;
    assert_eq!(proxies.as_object().unwrap().len(), 7);
    // Drop before the effect: no answer, no effect.
    toxic(&s, &c, "payment", json!({ "name": "cut", "type": "reset_peer", "count": 1 })).await;
    assert!(pay(&s, &c, "d1", 100, 1).send().await.is_err(), "the connection is dropped");
    assert_eq!(ledger_len(&s, &c, "payment").await, 0);
    // Drop after the effect: no answer, one effect; the retry is a replay.
    toxic(
        &s,
        &c,
        "payment",
        json!({ "name": "lost", "type": "reset_peer", "attributes": { "after_effect": true }, "count": 1 }),
    )
    .await;
    assert!(pay(&s, &c, "d2", 100, 1).send().await.is_err());
    assert_eq!(ledger_len(&s, &c, "payment").await, 1);
    let retry = pay(&s, &c, "d2", 100, 1).send().await.unwrap();
    assert_eq!(retry.headers()["idempotent-replayed"], "true");
    // Hold until the toxic is removed.
    toxic(&s, &c, "email", json!({ "name": "hold", "type": "hold" })).await;
    let send = c
        .post(format!("{}/emails", url(&s, "EMAIL_API_URL")))
        .bearer_auth("re")
        .json(&json!({ "to": "a", "subject": "s" }))
        .send();
    let held = tokio::spawn(send);
    while control(&s, &c, "GET", "/proxies/email", None).await["held"] != 1 {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert!(!held.is_finished(), "held while the toxic is there");
    assert_eq!(ledger_len(&s, &c, "email").await, 0);
    control(&s, &c, "DELETE", "/proxies/email/toxics/hold", None).await;
    assert_eq!(held.await.unwrap().unwrap().status(), 200);
    // Latency then a schema change on payments.
    toxic(
        &s,
        &c,
        "payment",
        json!({ "name": "slow", "type": "latency", "attributes": { "latency_ms": 1 }, "count": 1 }),
    )
    .await;
    toxic(&s, &c, "payment", json!({ "name": "schema", "type": "schema_change", "count": 1 })).await;
    let odd: Value = pay(&s, &c, "sc", 100, 1).send().await.unwrap().json().await.unwrap();
    assert!(odd.get("amount").is_none() && odd["amount_cents"] == 100, "{odd}");
    let attempts = control(&s, &c, "GET", "/attempts?fake=payment", None).await;
    let toxics: Vec<Value> = attempts["attempts"].as_array().unwrap().iter().map(|a| a["toxics"].clone()).collect();
    assert!(toxics.contains(&json!(["slow", "schema"])));
    let bad = c
        .post(format!("{}/proxies/payment/toxics", url(&s, "AGENTDRILL_CONTROL_URL")))
        .body("{\"name\":\"x\",\"type\":\"error\",\"attributes\":{\"status\":418}}");
    assert_eq!(bad.send().await.unwrap().status(), 400);
    let tools = control(&s, &c, "GET", "/tools", None).await;
    assert_eq!(tools["anthropic"].as_array().unwrap().len(), tools["openai"].as_array().unwrap().len());
    control(&s, &c, "POST", "/reset", None).await;
    assert_eq!(ledger_len(&s, &c, "payment").await, 0);
    assert!(control(&s, &c, "GET", "/attempts", None).await["attempts"].as_array().unwrap().is_empty());
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_schema_change_keeps_the_status_and_toxicity_is_seeded() {
    let (s, c) = start(0, true).await;
    let user = json!([{ "role": "user", "content": "Run job-5 (approve_refund)" }]);
    // Anthropic, not streamed: 200, but `content` and `stop_reason` gone and
    // token counts as strings; the next answer is whole again.
    toxic(&s, &c, "anthropic", json!({ "name": "shape", "type": "schema_change", "count": 1 })).await;
    let r = anthropic(&s, &c, json!({ "model": "m", "max_tokens": 10, "messages": user })).await;
    assert_eq!(r.status(), 200);
    let odd: Value = r.json().await.unwrap();
    assert!(odd.get("content").is_none() && odd["completion"][1]["name"] == "memory_read", "{odd}");
    assert!(odd.get("stop_reason").is_none() && odd["stop"] == "tool_use", "{odd}");
    assert!(odd["usage"]["output_tokens"].is_string(), "{odd}");
    let whole: Value =
        anthropic(&s, &c, json!({ "model": "m", "max_tokens": 10, "messages": user })).await.json().await.unwrap();
    assert!(whole["content"].is_array() && whole["usage"]["output_tokens"].is_u64(), "{whole}");
    // Anthropic streamed: every event reshaped, the stream still complete.
    toxic(&s, &c, "anthropic", json!({ "name": "shape2", "type": "schema_change", "count": 1 })).await;
    let r = anthropic(&s, &c, json!({ "model": "m", "max_tokens": 10, "stream": true, "messages": user })).await;
    let events: Vec<_> = r.bytes_stream().eventsource().map(|e| e.unwrap()).collect().await;
    assert_eq!(events.last().unwrap().event, "message_stop");
    let start: Value = serde_json::from_str(&events[0].data).unwrap();
    assert!(start["message"].get("content").is_none() && start["message"]["completion"] == json!([]), "{start}");
    let block = events.iter().find(|e| e.event == "content_block_start").unwrap();
    assert!(serde_json::from_str::<Value>(&block.data).unwrap().get("content_block").is_none());
    // OpenAI streamed: no `choices` in any chunk, `[DONE]` still last.
    let base = url(&s, "OPENAI_BASE_URL");
    let body =
        json!({ "model": "m", "stream": true, "messages": [{ "role": "user", "content": "Run job-6 (book_flight)" }] });
    toxic(&s, &c, "openai", json!({ "name": "shape", "type": "schema_change", "count": 1 })).await;
    let r = c.post(format!("{base}/chat/completions")).bearer_auth("k").json(&body).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let events: Vec<_> = r.bytes_stream().eventsource().map(|e| e.unwrap()).collect().await;
    assert_eq!(events.last().unwrap().data, "[DONE]");
    for e in &events[..events.len() - 1] {
        let chunk: Value = serde_json::from_str(&e.data).unwrap();
        assert!(chunk.get("choices").is_none() && chunk["outputs"].is_array(), "{chunk}");
    }
    // Toxicity: a schema change on about half of the requests, the same
    // requests again after a reset (the rng is seeded by the run's seed).
    let plain = json!({ "model": "m", "messages": [{ "role": "user", "content": "Run job-6 (book_flight)" }] });
    let mut runs = Vec::new();
    for _ in 0..2 {
        control(&s, &c, "POST", "/reset", None).await;
        let half = json!({ "name": "half", "type": "schema_change", "toxicity": 0.5 });
        toxic(&s, &c, "openai", half).await;
        let mut hits = Vec::new();
        for _ in 0..40 {
            let r = c.post(format!("{base}/chat/completions")).bearer_auth("k").json(&plain).send().await.unwrap();
            assert_eq!(r.status(), 200);
            hits.push(r.json::<Value>().await.unwrap().get("choices").is_none());
        }
        runs.push(hits);
    }
    assert_eq!(runs[0], runs[1], "same seed, same schedule");
    let n = runs[0].iter().filter(|&&h| h).count();
    assert!((8..=32).contains(&n), "about half of 40 reshaped, got {n}");
    let listed = control(&s, &c, "GET", "/proxies/openai/toxics", None).await;
    assert_eq!(listed[0]["toxicity"], 0.5);
    let bad = c
        .post(format!("{}/proxies/openai/toxics", url(&s, "AGENTDRILL_CONTROL_URL")))
        .body(r#"{"name":"x","type":"latency","attributes":{"latency_ms":1},"toxicity":2}"#);
    let bad = bad.send().await.unwrap();
    assert_eq!(bad.status(), 400);
    assert!(bad.text().await.unwrap().contains("[0, 1]"));
    s.shutdown().await;
}
