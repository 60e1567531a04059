"""One client of the Patroni test (t/022_patroni.pl), loading as the README's
route does: check with a priced estimate (and log the answer) in one
transaction, call the model (a short sleep), record in another transaction
naming the reservation, through a multi-host connection string with
target_session_attrs=read-write, until a stop file appears or the time is
up.  A record whose connection is lost is retried under the same
reservation id once a read-write server answers (records are idempotent by
id).  Every outcome is one JSON line: a check commit the server
acknowledged, a record acknowledged ("recorded"), or the error seen
(SQLSTATE, or the kind of connection failure); a connection lost during a
check's COMMIT is "unknown": it may or may not have committed.

    python3 patroni_client.py CONNINFO CLIENT_ID USERS STOP_FILE OUT_FILE SECONDS
"""
import json
import os
import random
import sys
import time

import psycopg

conninfo, client, users, stop_file, out_file, seconds = sys.argv[1:7]
client, users, seconds = int(client), int(users), float(seconds)
deadline = time.time() + seconds
rng = random.Random(client)
out = open(out_file, "a", buffering=1)
conn = None
seq = 0


def emit(**kw):
    kw.update(c=client, t=time.time())
    out.write(json.dumps(kw) + "\n")


def record(user, out_tokens, rid, seq):
    """Record in a transaction of its own, retried under the same id until
    acknowledged (a failover takes seconds), or given up after a minute."""
    global conn
    until = time.time() + 60
    while time.time() < until:
        try:
            if conn is None or conn.closed:
                conn = psycopg.connect(conninfo, connect_timeout=2)
            conn.execute("SELECT ai_record_usage(%s, 'p-model', 1000, %s, 0, %s)",
                         (user, out_tokens, rid))
            conn.commit()
            emit(seq=seq, recorded=rid)
            return
        except psycopg.Error as e:
            try:
                if conn is not None and not conn.closed:
                    conn.rollback()
            except psycopg.Error:
                pass
            if conn is None or conn.closed or isinstance(e, psycopg.OperationalError):
                if conn is not None:
                    conn.close()
                conn = None
            time.sleep(0.1)
    emit(seq=seq, record_lost=rid)


while not os.path.exists(stop_file) and time.time() < deadline:
    seq += 1
    user = "p-%d" % rng.randint(1, users)
    out_tokens = rng.randint(0, 1000)
    phase = "connect"
    try:
        if conn is None or conn.closed:
            conn = psycopg.connect(conninfo, connect_timeout=2)
        phase = "work"
        cur = conn.execute(
            "SELECT allowed, reservation_id, limited_by FROM ai_check_limit(%s, 'p',"
            " model => 'p-model', input_tokens => 1000, max_output_tokens => 1000)", (user,))
        allowed, rid, limited_by = cur.fetchone()
        conn.execute(
            "INSERT INTO p_log (client, seq, user_id, allowed, reservation_id, limited_by)"
            " VALUES (%s, %s, %s, %s, %s, %s)", (client, seq, user, allowed, rid, limited_by))
        phase = "commit"
        conn.commit()
        emit(seq=seq, ok=True, user=user, allowed=allowed, rid=rid)
        if allowed:
            time.sleep(0.02)    # the model's call
            record(user, out_tokens, rid, seq)
        time.sleep(0.005)   # a steady load, not a flood: the servers share 2 cores
    except psycopg.Error as e:
        state = getattr(e, "sqlstate", None)
        lost = conn is None or conn.closed or isinstance(e, psycopg.OperationalError)
        if phase == "commit" and lost:
            emit(seq=seq, unknown=True, err=state or "connection")
        else:
            emit(seq=seq, err=state or ("connection" if lost else type(e).__name__), phase=phase)
        try:
            if conn is not None and not conn.closed:
                conn.rollback()
        except psycopg.Error:
            pass
        if lost and conn is not None:
            conn.close()
        time.sleep(0.1)
if conn is not None and not conn.closed:
    conn.close()
emit(seq=seq, done=True)
