"""Load one of the apps (fastapi_app.py, express_app.js) as its users would,
and judge it from the database.  Prints TAP; exits non-zero when a test fails.

    load.py BASE_URL PREFIX SECONDS

PREFIX names this run's organisation (PREFIX-org, 20 cents a month), its two
teams (PREFIX-team-a and PREFIX-team-b, 20 and 8 cents) and their 12 members
(PREFIX-u0 to PREFIX-u11, 6 each; PREFIX-u0 is also a member of team-b,
which some of its requests name); the plan gives each user 4 cents a month
and 8 requests a minute.  A call costs about 0.63 cents and holds 1.57
while it runs.  8 clients send plain and streaming requests at
once; one in seven streams is abandoned after its first chunk (the client
goes away); every 1.5 seconds the app's idle connections are terminated
(pg_terminate_backend), as a restart or a failover would.  AI_LOAD_DSN is
an administrator's connection, used to set up, to terminate and to judge.

Judged from ai_usage: no user, team or organisation passed its cap by a
cent, the caps were reached, every call the model completed has its usage
row exactly once (the model's own count: an abandoned stream has one only
when the app ran it to its end), nothing stays held; and every answer was 200, 402 or 429 with honest headers (RateLimit,
RateLimit-Policy, Retry-After), or a rare 503 for a check whose connection
was lost while it ran.
"""
import http.client
import json
import os
import random
import re
import sys
import threading
import time
from decimal import Decimal
from urllib.parse import urlparse

import psycopg

BASE, PREFIX, SECONDS = sys.argv[1], sys.argv[2], float(sys.argv[3])
URL = urlparse(BASE)
USERS = [f"{PREFIX}-u{i}" for i in range(12)]
ORG, TEAM_A, TEAM_B = f"{PREFIX}-org", f"{PREFIX}-team-a", f"{PREFIX}-team-b"
CAPS = {ORG: Decimal(20), TEAM_A: Decimal(20), TEAM_B: Decimal(8)}
USER_CAP = Decimal(4)
RATELIMIT = re.compile(r'^"[a-z0-9_-]+";r=\d+;t=\d+$')
POLICY = re.compile(r'^"[a-z0-9_-]+";q=\d+;w=\d+(;qu="(tokens|cents)")?$')
results = []


def check(ok, name):
    results.append(bool(ok))
    print(f"{'ok' if ok else 'not ok'} {len(results)} - {name}", flush=True)


admin = psycopg.connect(os.environ["AI_LOAD_DSN"], autocommit=True)
plan = f"{PREFIX}-plan"
admin.execute("INSERT INTO ai_plans (plan, burst_limit, monthly_budget_cents) VALUES (%s, 8, %s)",
              (plan, USER_CAP))
admin.execute("INSERT INTO ai_accounts (account_id, parent_id) VALUES (%s, NULL), (%s, %s), (%s, %s)",
              (ORG, TEAM_A, ORG, TEAM_B, ORG))
for i, u in enumerate(USERS):
    admin.execute("INSERT INTO ai_user_plans (user_id, plan) VALUES (%s, %s)", (u, plan))
    admin.execute("INSERT INTO ai_account_members (account_id, user_id, is_default) VALUES (%s, %s, true)",
                  (TEAM_A if i < 6 else TEAM_B, u))
admin.execute("INSERT INTO ai_account_members (account_id, user_id, is_default) VALUES (%s, %s, false)",
              (TEAM_B, USERS[0]))
for acct, cap in CAPS.items():
    admin.execute("INSERT INTO ai_rules (scope, scope_id, metric, \"window\", max_value)"
                  " VALUES ('account', %s, 'cents', 'month', %s)", (acct, cap))

def model_calls():
    conn = http.client.HTTPConnection(URL.hostname, URL.port, timeout=30)
    conn.request("GET", "/model-calls")
    n = json.loads(conn.getresponse().read())["completed"]
    conn.close()
    return n


calls_before = model_calls()
lock = threading.Lock()
answers = []          # (route, status, headers, body)
completed = 0         # calls the app answered in full
abandoned = 0         # streams the client left after the first chunk
stop = time.monotonic() + SECONDS


def request(route, user, payload, abandon=False):
    conn = http.client.HTTPConnection(URL.hostname, URL.port, timeout=30)
    conn.request("POST", route, json.dumps(payload),
                 {"content-type": "application/json", "x-user-id": user})
    resp = conn.getresponse()
    headers = {k.lower(): v for k, v in resp.getheaders()}
    if abandon and resp.status == 200:
        resp.read1(1)                # the first chunk, then the client is gone
        conn.sock.close()
        conn.close()
        return resp.status, headers, None, True
    body = resp.read().decode()
    conn.close()
    return resp.status, headers, body, False


def client(n):
    global completed, abandoned
    rnd = random.Random(n)
    while time.monotonic() < stop:
        user = rnd.choice(USERS)
        payload = {"prompt": "x" * rnd.randint(1, 20)}
        if user == USERS[0] and rnd.random() < 0.5:
            payload["account"] = TEAM_B
        route = rnd.choice(["/generate", "/stream"])
        abandon = route == "/stream" and rnd.random() < 1 / 7
        try:
            status, headers, body, left = request(route, user, payload, abandon)
        except OSError as e:
            status, headers, body, left = -1, {}, str(e), False
        with lock:
            answers.append((route, status, headers, body))
            if status == 200 and left:
                abandoned += 1
            elif status == 200:
                completed += 1
        if status != 200:
            time.sleep(0.05)


def terminator():
    while time.monotonic() < stop:
        time.sleep(1.5)
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                      " WHERE application_name = 'ai-app' AND state = 'idle'")


threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
threads.append(threading.Thread(target=terminator))
for t in threads:
    t.start()
for t in threads:
    t.join()

statuses = {}
for route, status, headers, body in answers:
    statuses[status] = statuses.get(status, 0) + 1
print(f"# {len(answers)} requests: {dict(sorted(statuses.items()))}; {completed} completed, "
      f"{abandoned} abandoned", flush=True)
odd = [(r, s, b) for r, s, h, b in answers if s not in (200, 402, 429, 503)]
check(not odd, f"every answer is 200, 402, 429 or 503 {odd[:3]}")
lost = [json.loads(b) for r, s, h, b in answers if s == 503]
check(all(b["limited_by"] == "unavailable" and b["retryable"] for b in lost) and
      len(lost) <= len(answers) // 100,
      f"a 503 is a check whose connection was lost while it ran: retryable, and rare ({len(lost)})")
ok = [h for r, s, h, b in answers if s == 200]
check(ok and all(RATELIMIT.match(h.get("ratelimit", "")) and POLICY.match(h.get("ratelimit-policy", ""))
                 for h in ok),
      "every 200 carries RateLimit and RateLimit-Policy, in integers")
rates = [(h, json.loads(b)) for r, s, h, b in answers if s == 429]
check(rates and all(b["retryable"] and re.fullmatch(r"\d+", h.get("retry-after", "")) and
                    RATELIMIT.match(h.get("ratelimit", "")) for h, b in rates),
      f"every 429 is retryable, with Retry-After and RateLimit ({len(rates)})")
spent = [(h, json.loads(b)) for r, s, h, b in answers if s == 402]
check(spent and all(not b["retryable"] and b["limited_by"] in ("monthly_budget", "account", "member", "rule")
                    for h, b in spent),
      f"every 402 is a spent budget, not retryable ({len(spent)}: "
      f"{sorted({b['limited_by'] for h, b in spent})})")

# what the database says
user_spend = dict(admin.execute(
    "SELECT user_id, sum(cost_cents) FROM ai_usage WHERE user_id = ANY(%s) GROUP BY user_id",
    (USERS,)).fetchall())
team_spend = dict(admin.execute(
    "SELECT account_id, sum(cost_cents) FROM ai_usage WHERE user_id = ANY(%s) GROUP BY account_id",
    (USERS,)).fetchall())
org = sum(team_spend.values(), Decimal(0))
print(f"# spend: organisation {org}, teams {team_spend}, users max "
      f"{max(user_spend.values(), default=0)}", flush=True)
check(all(v <= USER_CAP for v in user_spend.values()), f"no user passed its {USER_CAP} cents")
check(set(team_spend) <= {TEAM_A, TEAM_B} and all(v <= CAPS[k] for k, v in team_spend.items()),
      "every call was filed under a team, and no team passed its cap")
check(org <= CAPS[ORG], f"the organisation did not pass its {CAPS[ORG]} cents ({org})")
# 12 users at about 2.5 cents each (their own cap stops them) ask for 30: team-b
# (8) stops first, then the organisation (20); team-a (20) never binds
check(org >= CAPS[ORG] - 2 and team_spend.get(TEAM_B, 0) >= CAPS[TEAM_B] - 2,
      "the caps of team-b and of the organisation were reached, within about one estimate")
calls = model_calls() - calls_before
rows, ids, doubled, no_id = admin.execute(
    "SELECT count(*), count(DISTINCT reservation_id),"
    " count(*) - count(DISTINCT reservation_id) - count(*) FILTER (WHERE reservation_id IS NULL),"
    " count(*) FILTER (WHERE reservation_id IS NULL) FROM ai_usage WHERE user_id = ANY(%s)",
    (USERS,)).fetchone()
# an abandoned stream that the app stopped has no row; one that it ran to its
# end (a server that sees the client gone only when it writes) has its row
check(rows == calls and completed <= rows <= completed + abandoned and doubled == 0 and no_id == 0,
      f"every call the model completed has its usage row once, settled against its reservation "
      f"({rows} rows, {calls} model calls, {completed} answered, {abandoned} abandoned, "
      f"{doubled} doubled)")
held = None
for _ in range(50):
    held = admin.execute("SELECT coalesce(sum(reserved_cents), 0) FROM ai_ratelimit_status"
                         " WHERE user_id = ANY(%s)", (USERS,)).fetchone()[0]
    if held == 0:
        break
    time.sleep(0.1)
check(held == 0, f"nothing stays held: abandoned streams gave their estimates back ({held})")
print(f"1..{len(results)}")
sys.exit(0 if all(results) else 1)
