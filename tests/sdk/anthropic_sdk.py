"""The official anthropic SDK against `agentdrill serve`: a tool-use loop, a
streamed turn, a mid-stream error, 529 and 429 toxics as the SDK's errors."""
import anthropic

from common import attempts, check, control, tools, toxic

client = anthropic.Anthropic(api_key="sk-ant-test")  # ANTHROPIC_BASE_URL from the environment
TOOLS = tools("anthropic")


def run_job(job, template):
    """Plays the job's workflow: tool calls until end_turn; returns the tool names."""
    messages = [{"role": "user", "content": f"Run job-{job} ({template})"}]
    called = []
    for _ in range(20):
        msg = client.messages.create(model="claude-test", max_tokens=1024, tools=TOOLS, messages=messages)
        check(msg.usage.input_tokens >= 0 and msg.usage.output_tokens > 0, "usage has tokens")
        check(msg.usage.cache_read_input_tokens is not None, "usage has cache read tokens")
        if msg.stop_reason == "end_turn":
            return called
        check(msg.stop_reason == "tool_use", f"stop_reason tool_use ({msg.stop_reason})")
        use = [b for b in msg.content if b.type == "tool_use"][0]
        called.append(use.name)
        messages.append({"role": "assistant", "content": msg.content})
        messages.append({"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": use.id, "content": f"{use.name} done"}]})
    raise SystemExit("no end_turn after 20 turns")


control("POST", "/reset")
called = run_job(11, "book_flight")
check(called == ["search", "charge_card", "memory_write", "send_email"], f"book_flight tool loop {called}")
second = client.messages.create(model="claude-test", max_tokens=64, tools=TOOLS,
                                messages=[{"role": "user", "content": "Run job-11 (book_flight)"}])
check(second.usage.cache_read_input_tokens > 0, "the prompt prefix is cached on the second call")

# Streaming: the SDK assembles the events into the same message.
with client.messages.stream(model="claude-test", max_tokens=1024, tools=TOOLS,
                            messages=[{"role": "user", "content": "Run job-12 (approve_refund)"}]) as s:
    kinds = [e.type for e in s]
    final = s.get_final_message()
check(kinds[0] == "message_start" and kinds[-1] == "message_stop", f"stream events {kinds[:2]}..{kinds[-2:]}")
use = [b for b in final.content if b.type == "tool_use"][0]
check(use.name == "memory_read" and use.input["collection"] == "memory", "streamed tool_use input parsed")

# A mid-stream error event.
toxic("anthropic", "midstream", "stream_error", {"after_tokens": 5}, count=1)
try:
    with client.messages.stream(model="claude-test", max_tokens=64, tools=TOOLS,
                                messages=[{"role": "user", "content": "Run job-13"}]) as s:
        for _ in s:
            pass
    check(False, "mid-stream error raises")
except anthropic.APIStatusError as e:
    check(e.body["error"]["type"] == "overloaded_error", f"mid-stream error event ({type(e).__name__})")

# 529 three times: the SDK retries twice, then raises OverloadedError; the
# ledger of attempts counts the three.
before = len(attempts("anthropic"))
toxic("anthropic", "overloaded", "error", {"status": 529}, count=3)
try:
    client.messages.create(model="claude-test", max_tokens=64, messages=[{"role": "user", "content": "job-14"}])
    check(False, "529 raises")
except anthropic.OverloadedError as e:
    check(e.status_code == 529 and e.request_id, "529 is anthropic.OverloadedError with a request id")
seen = attempts("anthropic")[before:]
check([a["status"] for a in seen] == [529, 529, 529], f"three attempts in the ledger {[a['status'] for a in seen]}")

# 429 with retry-after, no retries: RateLimitError carrying the header.
toxic("anthropic", "limited", "error", {"status": 429, "retry_after_ms": 2000}, count=1)
try:
    client.with_options(max_retries=0).messages.create(
        model="claude-test", max_tokens=64, messages=[{"role": "user", "content": "job-15"}])
    check(False, "429 raises")
except anthropic.RateLimitError as e:
    check(e.response.headers["retry-after"] == "2", "429 is anthropic.RateLimitError with retry-after")

# One 529, default retries: the SDK's retry succeeds.
toxic("anthropic", "blip", "error", {"status": 529}, count=1)
ok = client.messages.create(model="claude-test", max_tokens=64, messages=[{"role": "user", "content": "job-16"}])
check(ok.stop_reason in ("tool_use", "end_turn"), "the SDK's retry after one 529 succeeds")
print("anthropic SDK: all checks passed")
