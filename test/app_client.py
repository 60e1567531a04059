"""One client that loads ai_ratelimit the way an application does (t/024,
t/025): check with a priced estimate in one transaction, call the model
(sleep), record in another transaction naming the reservation, until a
stop file appears or the time is up.  A record whose connection is lost is
retried under the same reservation id once the server is back (records are
idempotent by id).  Every outcome is one JSON line:

    {"check": ..., "allowed": ..., "rid": ...}       a check answered
    {"record": rid, "cost": "1.5"}                    a record acknowledged
    {"record": rid, "lost": true}                     a record never acknowledged
    {"err": "...", "phase": "..."}                    anything else

    python3 app_client.py CONNINFO CLIENT USERS PLAN MODEL IN OUT CALL_MS \
        STOP_FILE OUT_FILE SECONDS [OPTIONS]

OPTIONS is a comma-separated list: "extend" (a call extends its
reservation by 60 s before it sleeps), "noid" (records name no
reservation), "account=NAME" (check and record name the account),
"record_account=NAME" and "record_model=NAME" (the record names another
account or model than the check).
"""
import json
import os
import random
import sys
import time

import psycopg

(conninfo, client, users, plan, model, in_tok, out_tok, call_ms, stop_file, out_file,
 seconds) = sys.argv[1:12]
options = sys.argv[12].split(",") if len(sys.argv) > 12 and sys.argv[12] else []
client, in_tok, out_tok, call_ms, seconds = (int(client), int(in_tok), int(out_tok),
                                             int(call_ms), float(seconds))
users = users.split(",")
def option(name):
    return next((o.split("=", 1)[1] for o in options if o.startswith(name + "=")), None)


account = option("account")
record_account = option("record_account") or account
record_model = option("record_model") or model
deadline = time.time() + seconds
rng = random.Random(client)
out = open(out_file, "a", buffering=1)
conn = None


def emit(**kw):
    kw.update(c=client, t=round(time.time(), 3))
    out.write(json.dumps(kw) + "\n")


def connection():
    global conn
    while conn is None or conn.closed:
        if time.time() > deadline + 30:
            raise TimeoutError("no server")
        try:
            conn = psycopg.connect(conninfo, connect_timeout=2, autocommit=True)
        except psycopg.Error:
            conn = None
            time.sleep(0.2)
    return conn


def record(user, rid):
    """Record until acknowledged (retried on a lost connection), or give up."""
    global conn
    for attempt in range(40):
        try:
            c = connection()
            with c.transaction():
                cost = c.execute(
                    "SELECT ai_record_usage(%s, %s, %s, %s, 0, %s, account => %s)",
                    (user, record_model, in_tok, out_tok, None if "noid" in options else rid,
                     record_account)).fetchone()[0]
            emit(record=rid, user=user, cost=str(cost), attempt=attempt)
            return
        except psycopg.OperationalError:
            conn = None
            time.sleep(0.2)
        except psycopg.Error as e:
            emit(err=e.sqlstate or str(e), phase="record", record=rid)
            if e.sqlstate == "40001":
                time.sleep(0.1)
                continue
            return
    emit(record=rid, user=user, lost=True)


while not os.path.exists(stop_file) and time.time() < deadline:
    user = rng.choice(users)
    try:
        c = connection()
        row = c.execute(
            "SELECT allowed, reservation_id, limited_by FROM ai_check_limit(%s, %s,"
            " model => %s, input_tokens => %s, max_output_tokens => %s, account => %s)",
            (user, plan, model, in_tok, out_tok, account)).fetchone()
    except psycopg.OperationalError:
        conn = None
        time.sleep(0.2)
        continue
    except psycopg.Error as e:
        emit(err=e.sqlstate or str(e), phase="check")
        time.sleep(0.05)
        continue
    allowed, rid, limited_by = row
    emit(check=user, allowed=allowed, rid=rid, limited_by=limited_by)
    if not allowed:
        time.sleep(0.02)
        continue
    if "extend" in options and rid is not None:
        try:
            connection().execute("SELECT ai_extend_reservation(%s, %s, 60)", (rid, user))
        except psycopg.OperationalError:
            conn = None
    time.sleep(call_ms / 1000.0)     # the model's call
    record(user, rid)
