"""The article's AI route with psycopg 3, against a server with ai_ratelimit.

Checks with a cost estimate, a stub model call that returns real usage
numbers, and ai_record_usage settling the reservation, from 16 threads with
a connection each.  Connects with libpq's environment (PGHOST, PGPORT,
PGDATABASE, PGUSER); with AI_VIA_PGBOUNCER=1 the connections go through
PgBouncer in transaction mode, which needs prepare_threshold=None (PgBouncer
before 1.21 cannot keep protocol-level prepared statements).

Prints TAP ("ok N - ...", then "1..N") and exits non-zero when a test fails.
"""
import os
import sys
import threading
import time
from decimal import Decimal

import psycopg

VIA_PGBOUNCER = os.environ.get("AI_VIA_PGBOUNCER") == "1"
MODEL = "claude-sonnet-4-6"
USAGE = {"input_tokens": 812, "output_tokens": 1045, "cache_read_input_tokens": 0}
# the seeded price of the model: $3 in, $15 out per million tokens
CALL_CENTS = Decimal("812") * 3 / 10000 + Decimal("1045") * 15 / 10000
ESTIMATED_CENTS = 2
THREADS = 16
PREFIX = "pgb-" if VIA_PGBOUNCER else "py-"

results = []


def connect():
    # prepare_threshold=None: never prepare, so any pooler can multiplex
    return psycopg.connect(autocommit=True, prepare_threshold=None)


def check(ok, name):
    results.append(ok)
    print(f"{'ok' if ok else 'not ok'} {len(results)} - {name}", flush=True)


def model_call(prompt):
    """Stands in for the vendor SDK: same usage numbers every time."""
    return {"text": f"echo: {prompt}", "usage": dict(USAGE)}


def route(conn, user_id, prompt):
    """POST /api/generate: (status, body)."""
    allowed, error, retry_after, limited_by, reservation_id = conn.execute(
        "SELECT allowed, error, retry_after, limited_by, reservation_id"
        " FROM ai_check_limit(%s, NULL, %s)", (user_id, ESTIMATED_CENTS)).fetchone()
    if not allowed:
        return 429, {"error": error, "limited_by": limited_by, "retry_after": retry_after}
    message = model_call(prompt)
    u = message["usage"]
    (cost,) = conn.execute(
        "SELECT ai_record_usage(%s, %s, %s, %s, %s, %s)",
        (user_id, MODEL, u["input_tokens"], u["output_tokens"],
         u["cache_read_input_tokens"], reservation_id)).fetchone()
    return 200, {"result": message["text"], "cost_cents": cost}


def in_threads(fn):
    errors = []

    def run(i):
        try:
            fn(i)
        except Exception as e:  # reported, and fails the test
            errors.append(repr(e))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def main():
    admin = connect()
    admin.execute("INSERT INTO ai_plans (plan, burst_limit, daily_limit, monthly_budget_cents)"
                  " VALUES ('py-capped', NULL, NULL, 50), ('py-daily', NULL, 300, NULL),"
                  " ('py-three', NULL, 3, NULL) ON CONFLICT DO NOTHING")
    admin.execute("INSERT INTO ai_user_plans VALUES (%s, 'py-capped'), (%s, 'py-daily'),"
                  " (%s, 'py-three')", (PREFIX + "runaway", PREFIX + "busy", PREFIX + "rollback"))

    # 16 threads call the route for one user until the budget refuses for the
    # month; a refusal caused by requests still in flight says to retry soon
    statuses = []
    lock = threading.Lock()

    def runaway(i):
        conn = connect()
        while True:
            status, body = route(conn, PREFIX + "runaway", f"thread {i}")
            with lock:
                statuses.append((status, body))
            if status == 429 and body["retry_after"] is not None and body["retry_after"] > 5:
                break
            if status == 429:
                time.sleep(min(body["retry_after"] or 1, 5) / 50)
        conn.close()

    errors = in_threads(runaway)
    check(not errors, f"16 threads ran the route without errors {errors[:1]}")
    allowed = sum(1 for s, _ in statuses if s == 200)
    # 27 calls of 1.8111 cents = 48.8997; a 28th estimate (2 cents) no longer fits 50
    check(allowed == 27, f"exactly 27 calls were allowed under the 50-cent budget (got {allowed})")
    (spend,) = admin.execute("SELECT ai_monthly_spend(%s)", (PREFIX + "runaway",)).fetchone()
    check(spend == CALL_CENTS * 27, f"the month's spend is exactly 27 calls: {spend} = 27 x {CALL_CENTS}")
    check(all(b["cost_cents"] == CALL_CENTS for s, b in statuses if s == 200),
          "every call returned its exact cost")
    refused = [b for s, b in statuses if s == 429]
    final = [b for b in refused if b["retry_after"] is not None and b["retry_after"] > 5]
    in_flight = [b for b in refused if b not in final]
    check(len(final) == THREADS and all(b["limited_by"] == "monthly_budget" for b in final),
          f"each thread stopped at the budget ({len(final)} final refusals, "
          f"{len(in_flight)} refusals while requests were in flight said to retry within 5 s)")
    (open_resv,) = admin.execute(
        "SELECT coalesce(sum(open_reservations), 0) FROM ai_ratelimit_status WHERE user_id = %s",
        (PREFIX + "runaway",)).fetchone()
    check(open_resv == 0, "every reservation was settled")

    # exact counts under contention: 16 threads x 25 checks against 300 a day
    counts = []

    def busy(i):
        conn = connect()
        n = 0
        for _ in range(25):
            (ok,) = conn.execute("SELECT allowed FROM ai_check_limit(%s)", (PREFIX + "busy",)).fetchone()
            n += ok
        with lock:
            counts.append(n)
        conn.close()

    errors = in_threads(busy)
    check(not errors and sum(counts) == 300,
          f"400 checks from 16 threads against a daily limit of 300: {sum(counts)} allowed")

    # a rolled-back transaction gives its checks back
    conn = connect()
    for _ in range(5):
        with conn.transaction(force_rollback=True):
            conn.execute("SELECT allowed FROM ai_check_limit(%s)", (PREFIX + "rollback",))
    answers = [conn.execute("SELECT allowed FROM ai_check_limit(%s)", (PREFIX + "rollback",)).fetchone()[0]
               for _ in range(4)]
    check(answers == [True, True, True, False],
          f"5 rolled-back checks took nothing: then 3 allowed, the 4th refused ({answers})")
    conn.close()

    (problems,) = admin.execute("SELECT count(*) FROM ai_ratelimit_verify()").fetchone()
    check(problems == 0, "the shared state is consistent afterwards")
    admin.close()
    print(f"1..{len(results)}")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
