"""A small agent written with the official SDKs, run against `agentdrill serve`.

    eval "$(agentdrill serve | grep ^export)"   # in another terminal: paste the exports
    python agent.py --job 41 --workflow book_flight [--provider openai]

The model (Anthropic or OpenAI SDK) decides the next tool call; the agent
performs it with the Stripe SDK, the email API (plain HTTP) and qdrant-client,
sends the result back, and stops at the final answer. Every side effect carries
an idempotency key derived from (job, step), so a retried call is a replay, not
a second effect. Afterwards `GET $AGENTDRILL_CONTROL_URL/jobs/41` shows one
effect per step.
"""
import argparse
import json
import os
import urllib.request

import anthropic
import stripe

stripe.api_key = os.environ.get("STRIPE_API_KEY", "sk_test_agent")
stripe.api_base = os.environ["STRIPE_API_BASE"]
stripe.max_network_retries = 2
_qdrant = None


def qdrant():
    """qdrant-client, imported on first use (it is slow to import)."""
    global _qdrant
    if _qdrant is None:
        from qdrant_client import QdrantClient
        _qdrant = QdrantClient(url=os.environ["QDRANT_URL"])
    return _qdrant


def control(path):
    with urllib.request.urlopen(os.environ["AGENTDRILL_CONTROL_URL"] + path) as r:
        return json.loads(r.read())


def key(job, tool_input, name):
    """The idempotency key of a step: stable across retries and restarts."""
    return f"job-{job}-step-{tool_input['metadata']['step']}-{name}" if "metadata" in tool_input else f"job-{job}-{name}"


def send_email(job, args):
    step = next(t["value"] for t in args["tags"] if t["name"] == "step")
    req = urllib.request.Request(
        os.environ["EMAIL_API_URL"] + "/emails", method="POST",
        data=json.dumps({"from": "agent@example.com", **args}).encode(),
        headers={"authorization": "Bearer re_agent", "content-type": "application/json",
                 "idempotency-key": f"job-{job}-step-{step}-email"})
    with urllib.request.urlopen(req) as r:
        return json.loads(r.read())


def run_tool(job, name, args):
    """Performs one tool call; returns its result as text."""
    if name == "search":
        return f"3 results for {args['query']}"
    if name == "charge_card":
        pi = stripe.PaymentIntent.create(amount=args["amount"], currency=args["currency"], confirm=True,
                                         payment_method="pm_card_visa", description=args.get("description"),
                                         metadata=args["metadata"], idempotency_key=key(job, args, "charge"))
        return f"charged {pi.amount} {pi.currency}: {pi.id} {pi.status}"
    if name == "refund_payment":
        re = stripe.Refund.create(payment_intent=args["payment_intent"], amount=args["amount"],
                                  metadata=args["metadata"], idempotency_key=key(job, args, "refund"))
        return f"refunded {re.amount}: {re.id}"
    if name == "send_email":
        return f"email sent: {send_email(job, args)['id']}"
    if name == "memory_write":
        from qdrant_client import models
        if not qdrant().collection_exists(args["collection"]):
            qdrant().create_collection(args["collection"], vectors_config=models.VectorParams(size=4, distance=models.Distance.COSINE))
        qdrant().upsert(args["collection"], points=[models.PointStruct(id=args["id"], vector=args["vector"], payload=args["payload"])], wait=True)
        return "remembered"
    if name == "memory_read":
        if not qdrant().collection_exists(args["collection"]):
            return "no memories"
        hits = qdrant().query_points(args["collection"], query=args["vector"], limit=args["limit"]).points
        return json.dumps([h.payload for h in hits])
    raise ValueError(f"unknown tool {name}")


def run_anthropic(job, workflow):
    client = anthropic.Anthropic(api_key=os.environ.get("ANTHROPIC_API_KEY", "sk-ant-agent"))
    tools = control("/tools")["anthropic"]
    messages = [{"role": "user", "content": f"Run job-{job} ({workflow})"}]
    while True:
        msg = client.messages.create(model="claude-sonnet", max_tokens=1024, tools=tools, messages=messages)
        if msg.stop_reason != "tool_use":
            return "".join(b.text for b in msg.content if b.type == "text")
        messages.append({"role": "assistant", "content": msg.content})
        results = [{"type": "tool_result", "tool_use_id": b.id, "content": run_tool(job, b.name, b.input)}
                   for b in msg.content if b.type == "tool_use"]
        messages.append({"role": "user", "content": results})


def run_openai(job, workflow):
    import openai
    client = openai.OpenAI(api_key=os.environ.get("OPENAI_API_KEY", "sk-agent"))
    tools = control("/tools")["openai"]
    messages = [{"role": "user", "content": f"Run job-{job} ({workflow})"}]
    while True:
        choice = client.chat.completions.create(model="gpt", messages=messages, tools=tools).choices[0]
        if choice.finish_reason != "tool_calls":
            return choice.message.content
        messages.append(choice.message.model_dump(exclude_none=True))
        for call in choice.message.tool_calls:
            out = run_tool(job, call.function.name, json.loads(call.function.arguments))
            messages.append({"role": "tool", "tool_call_id": call.id, "content": out})


# ---------------------------------------------------------------------------
# Worker mode (`--serve`): a long-running worker for live drills.
#
# `agentdrill run scenarios/live/...` starts it with the environment of the
# process contract (AGENTDRILL_LISTEN_ADDR, the fakes' URLs, and
# AGENTDRILL_STATE_DIR, a folder that survives a kill). It takes jobs on
# `POST /jobs` ({"job": N, "workflow": "NAME"}), persists them before
# answering 202, and runs them on worker threads with the safeguards:
#   - idempotency keys from (job, step), never made by the agent;
#   - a durable checkpoint before every tool call (conversation so far, the
#     call, its key), and the result persisted after it;
#   - on restart, every unfinished job resumes from its checkpoint, and a
#     call whose outcome is unknown is reconciled first (the payment API is
#     searched by metadata, the email API listed by tag) before it is re-issued
#     with the same key.
# Switches that turn a safeguard off (anti-patterns a drill must catch):
#   --key-from-clock  the key is made inside the agent from the wall clock;
#   --no-reconcile    a resumed call is re-issued without asking the API first.
# ---------------------------------------------------------------------------

import http.server
import queue
import threading
import time
import traceback

OPTS = argparse.Namespace(key_from_clock=False, no_reconcile=False, fallback=False, checkpoint_after_step=False)


def to_openai(messages):
    """The checkpointed (Anthropic-shaped) conversation in Chat Completions form."""
    out = []
    for m in messages:
        if isinstance(m["content"], str):
            out.append({"role": m["role"], "content": m["content"]})
            continue
        for b in m["content"]:
            if b["type"] == "text":
                out.append({"role": m["role"], "content": b["text"]})
            elif b["type"] == "tool_use":
                out.append({"role": "assistant", "content": None, "tool_calls": [
                    {"id": b["id"], "type": "function",
                     "function": {"name": b["name"], "arguments": json.dumps(b["input"])}}]})
            elif b["type"] == "tool_result":
                out.append({"role": "tool", "tool_call_id": b["tool_use_id"], "content": b["content"]})
    return out


def fallback_turn(messages):
    """One turn on the self-hosted fallback (OpenAI-compatible), over plain HTTP."""
    req = urllib.request.Request(
        os.environ["AGENTDRILL_LOCAL_MODEL_URL"] + "/chat/completions", method="POST",
        data=json.dumps({"model": "local", "messages": to_openai(messages),
                         "tools": control("/tools")["openai"]}).encode(),
        headers={"content-type": "application/json", "authorization": "Bearer local"})
    with urllib.request.urlopen(req, timeout=30) as r:
        choice = json.loads(r.read())["choices"][0]
    if choice["finish_reason"] != "tool_calls":
        return None, choice["message"]["content"] or ""
    c = choice["message"]["tool_calls"][0]
    return {"type": "tool_use", "id": c["id"], "name": c["function"]["name"],
            "input": json.loads(c["function"]["arguments"])}, None


def model_turn(client, tools, messages):
    """The next tool call (a tool_use block as a dict) or the final text.
    With --fallback, a provider error after the SDK's retries goes to the
    self-hosted fallback for this turn."""
    try:
        msg = client.messages.create(model="claude-sonnet", max_tokens=1024, tools=tools, messages=messages)
    except (anthropic.APIStatusError, anthropic.APIConnectionError):
        if not OPTS.fallback:
            raise
        return fallback_turn(messages)
    if msg.stop_reason != "tool_use":
        return None, "".join(b.text for b in msg.content if b.type == "text")
    uses = [block_dict(b) for b in msg.content if b.type == "tool_use"]
    assert len(uses) == 1, "the script calls one tool per turn"
    return uses[0], None


def step_key(job, step, name):
    if OPTS.key_from_clock:
        return f"job-{job}-{name}-{time.time_ns()}"
    return f"job-{job}-step-{step}-{name}"


def tool_step(name, args):
    if "metadata" in args:
        return args["metadata"]["step"]
    if name == "send_email":
        return next(t["value"] for t in args["tags"] if t["name"] == "step")
    return None


def qdrant_rest(method, path, body=None):
    """The vector store over plain HTTP (the worker skips qdrant-client's import time)."""
    req = urllib.request.Request(os.environ["QDRANT_URL"] + path, method=method,
                                 data=None if body is None else json.dumps(body).encode(),
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def perform(job, name, args, key):
    """One tool call with the key the checkpoint holds."""
    if name == "memory_write":
        c = args["collection"]
        if not qdrant_rest("GET", f"/collections/{c}/exists")["result"]["exists"]:
            qdrant_rest("PUT", f"/collections/{c}", {"vectors": {"size": 4, "distance": "Cosine"}})
        qdrant_rest("PUT", f"/collections/{c}/points?wait=true",
                    {"points": [{"id": args["id"], "vector": args["vector"], "payload": args["payload"]}]})
        return "remembered"
    if name == "memory_read":
        c = args["collection"]
        if not qdrant_rest("GET", f"/collections/{c}/exists")["result"]["exists"]:
            return "no memories"
        hits = qdrant_rest("POST", f"/collections/{c}/points/query", {"query": args["vector"], "limit": args["limit"], "with_payload": True})
        return json.dumps([h.get("payload") for h in hits["result"]["points"]])
    if name == "charge_card":
        pi = stripe.PaymentIntent.create(amount=args["amount"], currency=args["currency"], confirm=True,
                                         payment_method="pm_card_visa", description=args.get("description"),
                                         metadata=args["metadata"], idempotency_key=key)
        return f"charged {pi.amount} {pi.currency}: {pi.id} {pi.status}"
    if name == "refund_payment":
        re = stripe.Refund.create(payment_intent=args["payment_intent"], amount=args["amount"],
                                  metadata=args["metadata"], idempotency_key=key)
        return f"refunded {re.amount}: {re.id}"
    if name == "send_email":
        req = urllib.request.Request(
            os.environ["EMAIL_API_URL"] + "/emails", method="POST",
            data=json.dumps({"from": "agent@example.com", **args}).encode(),
            headers={"authorization": "Bearer re_agent", "content-type": "application/json",
                     "idempotency-key": key})
        with urllib.request.urlopen(req, timeout=10) as r:
            return f"email sent: {json.loads(r.read())['id']}"
    return run_tool(job, name, args)


def reconcile(job, name, args):
    """Asks the API whether a call whose outcome is unknown took effect."""
    step = tool_step(name, args)
    if name == "charge_card":
        found = stripe.PaymentIntent.search(query=f"metadata['job_id']:'job-{job}' AND metadata['step']:'{step}'")
        if found.data:
            pi = found.data[0]
            return f"charged {pi.amount} {pi.currency}: {pi.id} {pi.status}"
    if name == "send_email":
        url = os.environ["EMAIL_API_URL"] + f"/emails?tag=job_id:job-{job}"
        req = urllib.request.Request(url, headers={"authorization": "Bearer re_agent"})
        with urllib.request.urlopen(req, timeout=10) as r:
            for e in json.loads(r.read()).get("data", []):
                if any(t["name"] == "step" and t["value"] == str(step) for t in e.get("tags") or []):
                    return f"email sent: {e['id']}"
    return None


class Store:
    """Durable state in AGENTDRILL_STATE_DIR: jobs, checkpoints, done markers."""

    def __init__(self, root):
        self.root = root
        for d in ("jobs", "ckpt", "done"):
            os.makedirs(os.path.join(root, d), exist_ok=True)

    def path(self, kind, job):
        return os.path.join(self.root, kind, f"{job}.json")

    def write(self, kind, job, value):
        tmp = self.path(kind, job) + f".tmp{threading.get_ident()}"
        with open(tmp, "w") as f:
            json.dump(value, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path(kind, job))

    def read(self, kind, job):
        try:
            with open(self.path(kind, job)) as f:
                return json.load(f)
        except FileNotFoundError:
            return None

    def unfinished(self):
        jobs = sorted(int(n[:-5]) for n in os.listdir(os.path.join(self.root, "jobs")) if n.endswith(".json"))
        return [j for j in jobs if self.read("done", j) is None]


def block_dict(b):
    return b.model_dump(exclude_none=True, include={"type", "text", "id", "name", "input"})


def run_job(store, client, tools, job, workflow):
    """Runs (or resumes) one job from its checkpoint."""
    ck = store.read("ckpt", job) or {"messages": [{"role": "user", "content": f"Run job-{job} ({workflow})"}],
                                     "pending": None}
    while True:
        if ck["pending"] is not None:
            # Resumed with a call in flight: its outcome is unknown.
            p = ck["pending"]
            out = None if OPTS.no_reconcile else reconcile(job, p["name"], p["input"])
            if out is None:
                # A key made in the agent (the clock) is made again: a new key.
                key = step_key(job, tool_step(p["name"], p["input"]), p["name"]) if OPTS.key_from_clock else p["key"]
                out = perform(job, p["name"], p["input"], key)
            ck["messages"].append({"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": p["id"], "content": out}]})
            ck["pending"] = None
            store.write("ckpt", job, ck)
        use, answer = model_turn(client, tools, ck["messages"])
        if use is None:
            store.write("done", job, {"answer": answer})
            return
        ck["messages"].append({"role": "assistant", "content": [use]})
        key = step_key(job, tool_step(use["name"], use["input"]), use["name"])
        # Checkpoint before the call: what, with which key. (The
        # --checkpoint-after-step anti-pattern skips it: a call in flight at a
        # crash leaves no trace, and the resumed job asks the model again.)
        ck["pending"] = {"id": use["id"], "name": use["name"], "input": use["input"], "key": key}
        if not OPTS.checkpoint_after_step:
            store.write("ckpt", job, ck)
        out = perform(job, use["name"], use["input"], key)
        ck["messages"].append({"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": use["id"], "content": out}]})
        ck["pending"] = None
        store.write("ckpt", job, ck)


def serve(threads):
    store = Store(os.environ["AGENTDRILL_STATE_DIR"])
    client = anthropic.Anthropic(api_key=os.environ.get("ANTHROPIC_API_KEY", "sk-ant-agent"),
                                 max_retries=1 if OPTS.fallback else 4)
    tools = control("/tools")["anthropic"]
    work = queue.Queue()
    running = set()
    lock = threading.Lock()

    def enqueue(job):
        with lock:
            if job in running:
                return
            running.add(job)
        work.put(job)

    def worker():
        while True:
            job = work.get()
            spec = store.read("jobs", job)
            try:
                run_job(store, client, tools, job, spec["workflow"])
                with lock:
                    running.discard(job)
            except Exception:
                traceback.print_exc()
                time.sleep(0.2)
                work.put(job)  # retried from its checkpoint

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            if self.path != "/jobs":
                self.send_error(404)
                return
            body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
            job = int(body["job"])
            if store.read("jobs", job) is None:
                store.write("jobs", job, {"job": job, "workflow": body["workflow"]})
            enqueue(job)
            self.send_response(202)
            self.send_header("content-type", "application/json")
            self.end_headers()
            self.wfile.write(json.dumps({"job": job, "accepted": True}).encode())

        def log_message(self, *args):
            pass

    for _ in range(threads):
        threading.Thread(target=worker, daemon=True).start()
    for job in store.unfinished():
        print(f"resuming job-{job} from its checkpoint", flush=True)
        enqueue(job)
    host, port = os.environ["AGENTDRILL_LISTEN_ADDR"].rsplit(":", 1)
    server = http.server.ThreadingHTTPServer((host, int(port)), Handler)
    print(f"worker {os.environ.get('AGENTDRILL_PROCESS')}/{os.environ.get('AGENTDRILL_REPLICA')} "
          f"listening on {host}:{port}", flush=True)
    server.serve_forever()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--job", type=int, default=41)
    p.add_argument("--workflow", default="book_flight", choices=["book_flight", "research_report", "approve_refund"])
    p.add_argument("--provider", default="anthropic", choices=["anthropic", "openai"])
    p.add_argument("--serve", action="store_true", help="run as a long-running worker for live drills")
    p.add_argument("--threads", type=int, default=4, help="worker threads in --serve mode")
    p.add_argument("--key-from-clock", action="store_true", help="anti-pattern: keys made from the wall clock")
    p.add_argument("--no-reconcile", action="store_true", help="anti-pattern: resume re-issues without asking")
    p.add_argument("--fallback", action="store_true", help="on a provider error, use the self-hosted fallback")
    p.add_argument("--checkpoint-after-step", action="store_true",
                   help="anti-pattern: no checkpoint before a tool call, only after it")
    a = p.parse_args()
    OPTS.key_from_clock, OPTS.no_reconcile, OPTS.fallback = a.key_from_clock, a.no_reconcile, a.fallback
    OPTS.checkpoint_after_step = a.checkpoint_after_step
    if a.serve:
        serve(a.threads)
        return
    answer = (run_anthropic if a.provider == "anthropic" else run_openai)(a.job, a.workflow)
    print(answer)
    report = control(f"/jobs/{a.job}?template={a.workflow}")
    for s in report["steps"]:
        print(f"step {s['step']:>2} {s['kind']:<13} effects: {s['effects']}")


if __name__ == "__main__":
    main()
