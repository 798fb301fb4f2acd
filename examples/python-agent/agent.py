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
import openai
import stripe
from qdrant_client import QdrantClient, models

stripe.api_key = os.environ.get("STRIPE_API_KEY", "sk_test_agent")
stripe.api_base = os.environ["STRIPE_API_BASE"]
stripe.max_network_retries = 2
qdrant = QdrantClient(url=os.environ["QDRANT_URL"])


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
        if not qdrant.collection_exists(args["collection"]):
            qdrant.create_collection(args["collection"], vectors_config=models.VectorParams(size=4, distance=models.Distance.COSINE))
        qdrant.upsert(args["collection"], points=[models.PointStruct(id=args["id"], vector=args["vector"], payload=args["payload"])], wait=True)
        return "remembered"
    if name == "memory_read":
        if not qdrant.collection_exists(args["collection"]):
            return "no memories"
        hits = qdrant.query_points(args["collection"], query=args["vector"], limit=args["limit"]).points
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


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--job", type=int, default=41)
    p.add_argument("--workflow", default="book_flight", choices=["book_flight", "research_report", "approve_refund"])
    p.add_argument("--provider", default="anthropic", choices=["anthropic", "openai"])
    a = p.parse_args()
    answer = (run_anthropic if a.provider == "anthropic" else run_openai)(a.job, a.workflow)
    print(answer)
    report = control(f"/jobs/{a.job}?template={a.workflow}")
    for s in report["steps"]:
        print(f"step {s['step']:>2} {s['kind']:<13} effects: {s['effects']}")


if __name__ == "__main__":
    main()
