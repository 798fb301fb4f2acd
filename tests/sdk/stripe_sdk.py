"""The official stripe SDK against `agentdrill serve`: PaymentIntents with
idempotency keys (replay, changed parameters, a retry after a dropped
connection), search by metadata, refunds, and a 429 toxic."""
import os

import stripe

from common import attempts, check, control, toxic

stripe.api_key = "sk_test_agentdrill"
stripe.api_base = os.environ["STRIPE_API_BASE"]
stripe.max_network_retries = 0

control("POST", "/reset")
params = dict(amount=4200, currency="usd", confirm=True, payment_method="pm_card_visa",
              metadata={"job_id": "job-31", "step": "3"})
pi = stripe.PaymentIntent.create(idempotency_key="job-31-step-3", **params)
check(pi.status == "succeeded" and pi.amount == 4200, "PaymentIntent created and confirmed")
again = stripe.PaymentIntent.create(idempotency_key="job-31-step-3", **params)
check(again.id == pi.id, "same key, same params: the first response is replayed")
check(again.last_response.headers.get("Idempotent-Replayed") == "true", "Idempotent-Replayed: true")

try:
    stripe.PaymentIntent.create(idempotency_key="job-31-step-3", **{**params, "amount": 4300})
    check(False, "changed params raise")
except stripe.IdempotencyError as e:
    check(e.http_status == 400, "same key, other params: stripe.IdempotencyError (400)")

# The connection drops after the charge committed; the SDK retries with the
# same key and gets the replay: one effect, two attempts.
stripe.max_network_retries = 2
toxic("payment", "lost-answer", "reset_peer", {"after_effect": True}, count=1)
before = len(attempts("payment"))
p2 = stripe.PaymentIntent.create(idempotency_key="job-32-step-3",
                                 **{**params, "metadata": {"job_id": "job-32", "step": "3"}})
seen = attempts("payment")[before:]
check([a["status"] for a in seen] == [0, 200] and seen[1]["replayed"], f"retry after a dropped answer is a replay {seen}")
ledger = control("GET", "/ledgers/payment")["effects"]
check(sum(1 for e in ledger if e["job"] == 32) == 1, "one effect for the retried request")

found = stripe.PaymentIntent.search(query="metadata['job_id']:'job-32'")
check([x.id for x in found.data] == [p2.id], "search by metadata finds it")
check(stripe.PaymentIntent.retrieve(p2.id).amount == 4200, "retrieve")

refund = stripe.Refund.create(payment_intent=p2.id, amount=1000, idempotency_key="job-32-refund",
                              metadata={"job_id": "job-32", "step": "4"})
check(refund.status == "succeeded" and refund.amount == 1000, "refund")
hist = stripe.Refund.create(payment_intent="pi_hist_job33", amount=500, metadata={"job_id": "job-33", "step": "2"})
check(hist.payment_intent == "pi_hist_job33", "refund of a payment from before the drill")
try:
    stripe.PaymentIntent.retrieve("pi_missing")
    check(False, "missing raises")
except stripe.InvalidRequestError as e:
    check(e.http_status == 404 and e.code == "resource_missing", "unknown id: InvalidRequestError resource_missing")

stripe.max_network_retries = 0
toxic("payment", "limited", "error", {"status": 429, "retry_after_ms": 1000}, count=1)
try:
    stripe.PaymentIntent.create(**params)
    check(False, "429 raises")
except stripe.RateLimitError as e:
    check(e.http_status == 429, "429 toxic: stripe.RateLimitError")
print("stripe SDK: all checks passed")
