"""The official openai SDK against `agentdrill serve`: a tool-call loop, a
streamed turn ending in [DONE], the self-hosted fallback, 429 and 529 toxics."""
import json
import os

import openai

from common import attempts, check, control, tools, toxic

client = openai.OpenAI(api_key="sk-test")  # OPENAI_BASE_URL from the environment
TOOLS = tools("openai")

control("POST", "/reset")
messages = [{"role": "user", "content": "Run job-21 (research_report)"}]
called = []
for _ in range(20):
    r = client.chat.completions.create(model="gpt-test", messages=messages, tools=TOOLS)
    choice = r.choices[0]
    check(r.usage.prompt_tokens > 0 and r.usage.prompt_tokens_details is not None, "usage with cached tokens")
    if choice.finish_reason == "stop":
        break
    check(choice.finish_reason == "tool_calls", f"finish_reason tool_calls ({choice.finish_reason})")
    call = choice.message.tool_calls[0]
    json.loads(call.function.arguments)
    called.append(call.function.name)
    messages.append(choice.message.model_dump(exclude_none=True))
    messages.append({"role": "tool", "tool_call_id": call.id, "content": "done"})
check(called == ["search", "search", "memory_write", "send_email"], f"research_report tool loop {called}")

# Streaming with tool calls: deltas assemble into one call.
stream = client.chat.completions.create(model="gpt-test", stream=True, tools=TOOLS,
                                        stream_options={"include_usage": True},
                                        messages=[{"role": "user", "content": "Run job-22 (book_flight)"}])
args, name, finish, usage = "", None, None, None
for chunk in stream:
    if chunk.usage:
        usage = chunk.usage
    for c in chunk.choices:
        for tc in c.delta.tool_calls or []:
            name = name or (tc.function.name if tc.function else None)
            args += (tc.function.arguments or "") if tc.function else ""
        finish = c.finish_reason or finish
check(name == "search" and json.loads(args)["query"].startswith("job-22"), f"streamed tool call {name}")
check(finish == "tool_calls" and usage is not None, "stream finishes with tool_calls and a usage chunk")

# The self-hosted fallback speaks the same API.
local = openai.OpenAI(api_key="none", base_url=os.environ["AGENTDRILL_LOCAL_MODEL_URL"])
lr = local.chat.completions.create(model="local", messages=[{"role": "user", "content": "Run job-23"}], tools=TOOLS)
check(lr.choices[0].finish_reason in ("tool_calls", "stop"), "the local fallback answers")

# 429 (no retries): RateLimitError with retry-after.
toxic("openai", "limited", "error", {"status": 429, "retry_after_ms": 1000}, count=1)
try:
    client.with_options(max_retries=0).chat.completions.create(model="gpt-test", messages=messages[:1])
    check(False, "429 raises")
except openai.RateLimitError as e:
    check(e.response.headers["retry-after"] == "1", "429 is openai.RateLimitError with retry-after")

# 529 asked of an OpenAI-shaped API: overloaded is 503 there; after the
# SDK's two retries, InternalServerError; three attempts in the ledger.
before = len(attempts("openai"))
toxic("openai", "overloaded", "error", {"status": 529}, count=3)
try:
    client.chat.completions.create(model="gpt-test", messages=messages[:1])
    check(False, "overloaded raises")
except openai.InternalServerError as e:
    check(e.status_code == 503, "overloaded is openai.InternalServerError (503)")
check([a["status"] for a in attempts("openai")[before:]] == [503] * 3, "three attempts in the ledger")

# A mid-stream error: the SDK raises APIError.
toxic("openai", "midstream", "stream_error", {"after_tokens": 3}, count=1)
try:
    for _ in client.chat.completions.create(model="gpt-test", stream=True, messages=messages[:1]):
        pass
    check(False, "mid-stream error raises")
except openai.APIError as e:
    check("server" in str(e.message).lower() or "error" in str(e.message).lower(), f"mid-stream error ({type(e).__name__})")
print("openai SDK: all checks passed")
