"""The Python client helper (clients/python) against a server with ai_ratelimit.

Connects with libpq's environment; with AI_VIA_PGBOUNCER=1 through PgBouncer
in transaction mode (prepare_threshold=None).  Prints TAP and exits non-zero
when a test fails.
"""
import asyncio
import os
import re
import sys
import threading
from decimal import Decimal

import psycopg
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from ai_ratelimit_client import AsyncLimiter, Limiter, Refused, anthropic_usage

VIA_PGBOUNCER = os.environ.get("AI_VIA_PGBOUNCER") == "1"
P = "hpgb-" if VIA_PGBOUNCER else "hpy-"
results = []


def connect():
    # the helpers prepare nothing: no prepare_threshold=None needed, even
    # through PgBouncer in transaction mode
    return psycopg.connect(autocommit=True)


def check(ok, name):
    results.append(bool(ok))
    print(f"{'ok' if ok else 'not ok'} {len(results)} - {name}", flush=True)


def reply(in_tok=812, out_tok=1045, read=0, w5m=0, w1h=0):
    """An Anthropic Messages response, as the SDK's dict form."""
    return {"content": [{"type": "text", "text": "hi"}],
            "usage": {"input_tokens": in_tok, "output_tokens": out_tok,
                      "cache_read_input_tokens": read,
                      "cache_creation_input_tokens": w5m + w1h,
                      "cache_creation": {"ephemeral_5m_input_tokens": w5m,
                                         "ephemeral_1h_input_tokens": w1h}}}


admin = connect()
admin.execute("INSERT INTO ai_plans (plan, burst_limit, monthly_budget_cents) VALUES"
              " ('h-cap', NULL, 10), ('h-burst', 2, NULL) ON CONFLICT (plan) DO NOTHING")
conn = connect()
limiter = Limiter(conn)
M = "claude-sonnet-4-6"

# the estimate from tokens and the price: 900 in at $3, 1,024 out at $15
check(limiter.estimate(M, 900, 1024) == Decimal("1.806"), "estimate from tokens and the price table")

# a call: checked, run, recorded exactly (with its cache reads and writes)
result, cost, row = limiter.call(P + "1", lambda: reply(1000, 500, 2000, 10000, 4000), model=M,
                                 input_tokens=900, max_output_tokens=1024, usage=anthropic_usage,
                                 plan="h-cap")
check(result["content"][0]["text"] == "hi" and cost == Decimal("7.26"),
      "a call is recorded at its exact cost, cache writes included (7.26 cents)")
check(row["reservation_id"] is not None, "the estimate was reserved")

# a failed call gives its estimate back at once and raises the caller's error
held = "SELECT coalesce(sum(reserved_cents), 0) FROM ai_ratelimit_status WHERE user_id = %s"
try:
    limiter.call(P + "2", lambda: 1 / 0, model=M, estimate_cents=2.5, usage=anthropic_usage,
                 plan="h-cap")
    check(False, "the failure is raised")
except ZeroDivisionError:
    check(True, "the failure is raised")
check(admin.execute(held, (P + "2",)).fetchone()[0] == 0, "and nothing stays held")
check(admin.execute("SELECT count(*) FROM ai_usage WHERE user_id = %s", (P + "2",)).fetchone()[0] == 0,
      "and nothing is recorded")

# while the call runs, the check holds what it can cost at the model's price
# (the server prices it in the check's own statement), or the caller's larger estimate
seen = []
def look():
    seen.append(admin.execute(held, (P + "6",)).fetchone()[0])
    return reply(100, 100)
limiter.call(P + "6", look, model=M, input_tokens=900, max_output_tokens=1024,
             usage=anthropic_usage, plan="h-cap")
limiter.call(P + "6", look, model=M, input_tokens=900, max_output_tokens=1024,
             estimate_cents=3, usage=anthropic_usage, plan="h-cap")
check(seen == [Decimal("1.806"), Decimal("3")], f"held during the call: the price, then the larger estimate ({seen})")

# refusals become HTTP answers: 429 + Retry-After for a rate, 402 for a spent budget
statuses = []
for i in range(3):
    try:
        limiter.call(P + "3", reply, model=M, usage=anthropic_usage, plan="h-burst")
        statuses.append(200)
    except Refused as r:
        statuses.append(r.status)
        burst = r
check(statuses == [200, 200, 429], "the third call in a burst of 2 is 429")
check(burst.retryable and int(burst.headers["Retry-After"]) > 0 and burst.body["limited_by"] == "burst",
      "with Retry-After and the layer in the body")
admin.execute("SELECT ai_record_usage(%s, %s, 0, 1000000)", (P + "4", "gpt-4o"))  # 1,000 cents spent
try:
    limiter.call(P + "4", reply, model=M, usage=anthropic_usage, estimate_cents=1, plan="h-cap")
    check(False, "a spent budget is refused")
except Refused as r:
    check(r.status == 402 and not r.retryable and r.body["used"] == "1000" and r.body["limit"] == "10",
          "a spent budget is 402, not retryable, with its numbers")

# 16 threads, a connection each, against a 10-cent cap with 2-cent estimates
# of 1.8111-cent calls: the budget stops them exactly, never over
spent = []
lock = threading.Lock()


def worker(n):
    lim = Limiter(connect())
    for _ in range(3):
        try:
            _, c, _ = lim.call(P + "5", reply, model=M, estimate_cents=2, usage=anthropic_usage,
                               plan="h-cap")
            with lock:
                spent.append(c)
        except Refused:
            pass


threads = [threading.Thread(target=worker, args=(n,)) for n in range(16)]
for t in threads:
    t.start()
for t in threads:
    t.join()
total = admin.execute("SELECT ai_monthly_spend(%s)", (P + "5",)).fetchone()[0]
check(total == sum(spent) and total <= 10, f"16 threads: spend {total} of a 10-cent cap, recorded exactly")
check(len(spent) == 5, f"exactly 5 calls of 2-cent estimates fit ({len(spent)})")

# two phases: a stream's usage is recorded when it ends, at its real cost
with limiter.reserve(P + "7", model=M, input_tokens=900, max_output_tokens=1024, plan="h-cap") as r:
    check(re.fullmatch(r'"[a-z_0-9-]+";r=\d+;t=\d+', r.headers.get("RateLimit", "")) and
          "RateLimit-Policy" in r.headers, f"the reservation carries RateLimit headers ({r.headers})")
    chunks = [c for c in ("a", "b", "c")]        # the stream is read here
    cost = r.record(input_tokens=812, output_tokens=1045)
check(cost == Decimal("1.8111") and
      admin.execute("SELECT cost_cents FROM ai_usage WHERE reservation_id = %s",
                    (r.reservation_id,)).fetchone()[0] == Decimal("1.8111"),
      "a two-phase record settles its reservation at the stream's real cost")
# leaving the block without a record (an exception, a client gone) gives the estimate back
try:
    with limiter.reserve(P + "8", model=M, estimate_cents=3, plan="h-cap") as r:
        raise ConnectionResetError("the client went away")
except ConnectionResetError:
    pass
check(admin.execute(held, (P + "8",)).fetchone()[0] == 0 and
      admin.execute("SELECT count(*) FROM ai_usage WHERE user_id = %s", (P + "8",)).fetchone()[0] == 0,
      "a block left without a record releases its estimate and records nothing")

# a record whose connection was lost is sent once more on a new one, and counted once
pool = ConnectionPool(kwargs={"autocommit": True}, min_size=1, max_size=1)
pooled = Limiter(pool, model=M, usage=anthropic_usage, plan="h-cap")
r = pooled.reserve(P + "9", estimate_cents=2)
with pool.connection() as c:
    pid = c.execute("SELECT pg_backend_pid()").fetchone()[0]
# (through PgBouncer the pid is a server connection, maybe the one this
# statement runs on: that one is left alone)
admin.execute("SELECT pg_terminate_backend(%s) WHERE %s <> pg_backend_pid()", (pid, pid))
cost = r.record(input_tokens=812, output_tokens=1045)
check(cost == Decimal("1.8111") and
      admin.execute("SELECT count(*) FROM ai_usage WHERE user_id = %s", (P + "9",)).fetchone()[0] == 1,
      "a record whose pooled connection was terminated is sent again and counted once")
check(r.record(input_tokens=812, output_tokens=1045) == Decimal("1.8111") and
      admin.execute("SELECT count(*) FROM ai_usage WHERE user_id = %s", (P + "9",)).fetchone()[0] == 1,
      "a repeated record returns the first cost and stores nothing")
pool.close()


async def async_tests():
    apool = AsyncConnectionPool(kwargs={"autocommit": True}, min_size=1, max_size=4, open=False)
    await apool.open(wait=True)
    alim = AsyncLimiter(apool, model=M, usage=anthropic_usage, plan="h-cap")

    async def call():
        await asyncio.sleep(0.01)
        return reply(1000, 500)
    result, cost, row = await alim.call(P + "10", call, input_tokens=900, max_output_tokens=1024)
    check(cost == Decimal("1.05") and row["reservation_id"] is not None,
          "AsyncLimiter over an AsyncConnectionPool: a call recorded exactly")
    async with alim.reserve(P + "10", estimate_cents=2) as r:
        await r.record(anthropic_usage(reply(812, 1045)))
    check(r.cost == Decimal("1.8111"), "async with limiter.reserve(...) records a stream")

    # a request cancelled while its stream runs (a client gone) gives its estimate back
    async def stream():
        async with alim.reserve(P + "11", estimate_cents=3):
            await asyncio.sleep(10)
    task = asyncio.ensure_future(stream())
    await asyncio.sleep(0.2)
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    for _ in range(50):
        if admin.execute(held, (P + "11",)).fetchone()[0] == 0:
            break
        await asyncio.sleep(0.05)
    check(admin.execute(held, (P + "11",)).fetchone()[0] == 0 and
          admin.execute("SELECT count(*) FROM ai_usage WHERE user_id = %s", (P + "11",)).fetchone()[0] == 0,
          "a cancelled async stream releases its estimate")
    try:
        await alim.call(P + "4", call, estimate_cents=1)
        check(False, "an async refusal raises Refused")
    except Refused as e:
        check(e.status == 402 and "RateLimit" in e.headers, "an async refusal: 402 with RateLimit headers")
    await apool.close()

asyncio.run(async_tests())

print(f"1..{len(results)}")
sys.exit(0 if all(results) else 1)
