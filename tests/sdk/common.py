"""Helpers shared by the SDK scripts: the control API and checks."""
import json
import os
import sys
import urllib.request

CONTROL = os.environ["AGENTDRILL_CONTROL_URL"]


def control(method, path, body=None):
    """Calls the control API; returns the decoded JSON (None for 204)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(CONTROL + path, data=data, method=method,
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req) as r:
        raw = r.read()
        return json.loads(raw) if raw else None


def toxic(fake, name, kind, attributes=None, count=None):
    body = {"name": name, "type": kind, "attributes": attributes or {}}
    if count is not None:
        body["count"] = count
    return control("POST", f"/proxies/{fake}/toxics", body)


def attempts(fake):
    return control("GET", f"/attempts?fake={fake}")["attempts"]


def check(cond, what):
    if not cond:
        print(f"FAILED: {what}", file=sys.stderr)
        sys.exit(1)
    print(f"ok: {what}")


def tools(form):
    return control("GET", "/tools")[form]
