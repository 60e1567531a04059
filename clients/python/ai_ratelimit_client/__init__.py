"""One AI call wrapped with the ai_ratelimit PostgreSQL extension, for psycopg 3.

check (with an estimate), run the caller's function, record the real usage
on success, give the estimate back on failure, and turn a refusal into an
HTTP answer::

    from ai_ratelimit_client import Limiter, Refused, anthropic_usage

    limiter = Limiter(conn)        # a psycopg connection (autocommit) or pool
    try:
        result, cost, check = limiter.call(
            user_id, lambda: client.messages.create(**req), model=req["model"],
            input_tokens=900, max_output_tokens=req["max_tokens"], usage=anthropic_usage)
    except Refused as r:
        return r.body, r.status, r.headers

Numbers go to the server as text and are cast in SQL: a float estimate from
Python never selects a double precision function that does not exist.  The
statements are never prepared by name, so PgBouncer in transaction mode
works with a connection made with prepare_threshold=None.
"""
from contextlib import contextmanager

__all__ = ["Limiter", "Refused", "http_answer", "anthropic_usage", "openai_usage"]

# one statement: the server prices the call from the model and its counts
# (1.5) and holds the larger of that and the caller's estimate
_CHECK = ("SELECT * FROM ai_check_limit(%s::text, %s::text, %s::numeric, NULL::bigint,"
          " %s::text, %s::bigint, %s::bigint)")
_ESTIMATE = "SELECT ai_estimate_cost(%s::text, %s::bigint, %s::bigint)"
_RECORD = ("SELECT ai_record_usage(%s::text, %s::text, %s::bigint, %s::bigint, %s::bigint,"
           " %s::bigint, %s::bigint, %s::bigint)")
_RELEASE = "SELECT ai_release_reservation(%s::bigint, %s::text)"


_BUDGETS = ("monthly_budget", "rule", "account", "member")


def http_answer(row):
    """(status, headers, body) for a check's row (a dict): 429 with
    Retry-After when a retry can succeed; 402 for a spent budget at any
    level (it is not retryable until its window ends); 403 for a block or
    a limit that allows nothing."""
    status = 429
    if not row["retryable"]:
        spent = row["limited_by"] == "monthly_budget" or (
            row["limited_by"] in _BUDGETS and row["retry_after"] is not None)
        status = 402 if spent else 403
    headers = {}
    if row["retry_after"] is not None:
        headers["Retry-After"] = str(row["retry_after"])
    body = {k: row[k] for k in ("error", "limited_by", "retry_after", "retryable")}
    body.update(limit=_num(row["limit_value"]), used=_num(row["used"]), held=_num(row["held"]),
                reset_at=row["reset_at"].isoformat() if row["reset_at"] else None)
    return status, headers, body


def _num(v):
    return None if v is None else str(v)


class Refused(Exception):
    """A refusal: the check's row, and the HTTP answer that fits it."""

    def __init__(self, row):
        super().__init__(row["error"])
        self.row = row
        self.limited_by = row["limited_by"]
        self.retry_after = row["retry_after"]
        self.retryable = row["retryable"]
        self.status, self.headers, self.body = http_answer(row)


def anthropic_usage(message):
    """Token counts of an Anthropic Messages response (object or dict)."""
    u = _get(message, "usage") or {}
    cc = _get(u, "cache_creation") or {}
    writes = _get(u, "cache_creation_input_tokens") or 0
    w1h = _get(cc, "ephemeral_1h_input_tokens") or 0
    w5m = _get(cc, "ephemeral_5m_input_tokens")
    return {"input": _get(u, "input_tokens") or 0, "output": _get(u, "output_tokens") or 0,
            "cached": _get(u, "cache_read_input_tokens") or 0,
            "cache_write": w5m if w5m is not None else max(writes - w1h, 0),
            "cache_write_1h": w1h}


def openai_usage(response):
    """Token counts of an OpenAI chat completion (object or dict)."""
    u = _get(response, "usage") or {}
    cached = _get(_get(u, "prompt_tokens_details") or {}, "cached_tokens") or 0
    return {"input": (_get(u, "prompt_tokens") or 0) - cached,
            "output": _get(u, "completion_tokens") or 0, "cached": cached,
            "cache_write": 0, "cache_write_1h": 0}


def _get(obj, name):
    if isinstance(obj, dict):
        return obj.get(name)
    return getattr(obj, name, None)


class Limiter:
    """Wraps AI calls for one database: `db` is a psycopg Connection (use
    autocommit=True: each statement its own transaction) or a pool with a
    connection() context manager (psycopg_pool)."""

    def __init__(self, db, plan=None):
        self._db = db
        self._plan = plan

    @contextmanager
    def _conn(self):
        if hasattr(self._db, "execute"):
            yield self._db
        else:
            with self._db.connection() as conn:
                yield conn

    def _one(self, sql, params):
        with self._conn() as conn:
            cur = conn.execute(sql, params)
            names = [d.name for d in cur.description]
            return dict(zip(names, cur.fetchone()))

    def estimate(self, model, input_tokens, max_output_tokens):
        """The most a call can cost, in cents (Decimal), from ai_model_prices."""
        row = self._one(_ESTIMATE, (model, str(input_tokens), str(max_output_tokens)))
        return next(iter(row.values()))

    def call(self, user_id, fn, *, model, usage, plan=None, estimate_cents=None,
             input_tokens=None, max_output_tokens=None):
        """Run fn() if the user may make the call.  Returns (result, cost in
        cents, the check's row); raises Refused when refused; when fn()
        raises, gives the estimate back and re-raises.  usage(result) gives
        the token counts (anthropic_usage, openai_usage, or a dict of input,
        output, cached, cache_write, cache_write_1h)."""
        check = self._one(_CHECK, (user_id, plan if plan is not None else self._plan,
                                   str(estimate_cents if estimate_cents is not None else 0), model,
                                   None if input_tokens is None else str(input_tokens),
                                   None if max_output_tokens is None else str(max_output_tokens)))
        if not check["allowed"]:
            raise Refused(check)
        try:
            result = fn()
        except BaseException:
            if check["reservation_id"] is not None:
                self._one(_RELEASE, (check["reservation_id"], user_id))
            raise
        u = {"input": 0, "output": 0, "cached": 0, "cache_write": 0, "cache_write_1h": 0}
        u.update(usage(result))
        row = self._one(_RECORD, (user_id, model, str(u["input"]), str(u["output"]),
                                  str(u["cached"]), check["reservation_id"],
                                  str(u["cache_write"]), str(u["cache_write_1h"])))
        return result, next(iter(row.values())), check
