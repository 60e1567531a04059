"""AI calls wrapped with the ai_ratelimit PostgreSQL extension, for psycopg 3.

One call: check (with an estimate), run the caller's function, record the
real usage on success, give the estimate back on failure::

    from ai_ratelimit_client import Limiter, Refused, anthropic_usage

    limiter = Limiter(pool)        # a psycopg ConnectionPool, or a Connection
    try:
        result, cost, check = limiter.call(
            user_id, lambda: client.messages.create(**req), model=req["model"],
            input_tokens=900, max_output_tokens=req["max_tokens"], usage=anthropic_usage)
    except Refused as r:
        return r.body, r.status, r.headers

Streaming and agents, in two phases: reserve() checks at once (raising
Refused), and the reservation holds the estimate until it is recorded; the
block it opens gives the estimate back when it is left without a record
(an exception, a client gone)::

    with limiter.reserve(user_id, model=m, input_tokens=900, max_output_tokens=1024) as r:
        for event in stream: ...
        r.record(input_tokens=812, output_tokens=1045)

AsyncLimiter does the same with psycopg's AsyncConnection and
AsyncConnectionPool (``await limiter.call(...)``, ``async with
limiter.reserve(...) as r``, ``await r.record(...)``); ``r = await
limiter.reserve(...)`` checks first and lets the block open later (a
streaming response's generator: ``async with r: ...``).

Refused carries the HTTP answer that fits: 429 with Retry-After for a rate,
402 for a spent budget at any level, 403 for a block, 503 with Retry-After
when the server has no room to count (SQLSTATE 53000, limited_by
"capacity") or the check's connection was lost while it ran (limited_by
"unavailable").  Every answer of a check carries the
IETF RateLimit and RateLimit-Policy fields from the check's own row
(``rate_limit_headers``).

Numbers go to the server as text and are cast in SQL: a float estimate never
selects a function that does not exist.  No statement is prepared (each is
sent with prepare=False), so PgBouncer in transaction mode works with any
connection.  A record whose connection is lost is sent again on another
connection (up to three times in all): records are idempotent by
reservation id, so a record that did commit is not counted twice; a check
is sent again only when it was not sent (its pooled connection was found closed: a restart,
pg_terminate_backend) or the server ended it before it committed (57P01 to
57P03).
"""
import asyncio
import inspect
import weakref
from contextlib import asynccontextmanager, contextmanager

import psycopg
from psycopg import errors

__all__ = ["Limiter", "AsyncLimiter", "Reservation", "AsyncReservation", "Refused",
           "http_answer", "rate_limit_headers", "anthropic_usage", "openai_usage"]

# one statement: the server prices the call from the model and its counts
# and holds the larger of that and the caller's estimate
_CHECK = ("SELECT * FROM ai_check_limit(%s::text, %s::text, %s::numeric, NULL::bigint,"
          " %s::text, %s::bigint, %s::bigint, account => %s::text)")
_ESTIMATE = "SELECT ai_estimate_cost(%s::text, %s::bigint, %s::bigint)"
_RECORD = ("SELECT ai_record_usage(%s::text, %s::text, %s::bigint, %s::bigint, %s::bigint,"
           " %s::bigint, %s::bigint, %s::bigint, account => %s::text)")
_RELEASE = "SELECT ai_release_reservation(%s::bigint, %s::text)"
_EXTEND = "SELECT ai_extend_reservation(%s::bigint, %s::text, %s::integer)"

_BUDGETS = ("monthly_budget", "rule", "account", "member")
_USAGE_KEYS = ("input", "output", "cached", "cache_write", "cache_write_1h")
# a capacity error or a lost check: how soon a retry is worth making
_UNAVAILABLE_RETRY_SECS = 5


def rate_limit_headers(row):
    """The IETF RateLimit and RateLimit-Policy header fields of a check's
    row (a dict), as the server wrote them: the limit the answer speaks of
    (the one left with the least room, or the refusing one)."""
    headers = {}
    if row.get("ratelimit"):
        headers["RateLimit"] = row["ratelimit"]
    if row.get("ratelimit_policy"):
        headers["RateLimit-Policy"] = row["ratelimit_policy"]
    return headers


def http_answer(row):
    """(status, headers, body) for a refused check's row (a dict): 429 with
    Retry-After when a retry can succeed; 402 for a spent budget at any
    level (not retryable until its window ends); 403 for a block or a limit
    that allows nothing."""
    status = 429
    if not row["retryable"]:
        spent = row["limited_by"] == "monthly_budget" or (
            row["limited_by"] in _BUDGETS and row["retry_after"] is not None)
        status = 402 if spent else 403
    headers = rate_limit_headers(row)
    if row["retry_after"] is not None:
        headers["Retry-After"] = str(row["retry_after"])
    body = {k: row[k] for k in ("error", "limited_by", "retry_after", "retryable")}
    body.update(limit=_num(row["limit_value"]), used=_num(row["used"]), held=_num(row["held"]),
                reset_at=row["reset_at"].isoformat() if row["reset_at"] else None)
    return status, headers, body


def _num(v):
    return None if v is None else str(v)


class Refused(Exception):
    """A request that may not go ahead, with the HTTP answer that fits it:
    status, headers and a JSON body.  row is the check's row; None when the
    server could not answer (503: no room to count, SQLSTATE 53000, or the
    check's connection was lost before it answered)."""

    def __init__(self, row, *, unavailable=None, limited_by=None):
        if unavailable is not None:
            super().__init__(getattr(unavailable.diag, "message_primary", None) or str(unavailable))
            self.row = None
            self.limited_by = limited_by
            self.retry_after = _UNAVAILABLE_RETRY_SECS
            self.retryable = True
            self.status = 503
            self.headers = {"Retry-After": str(_UNAVAILABLE_RETRY_SECS)}
            self.body = {"error": str(self), "limited_by": limited_by,
                         "retry_after": _UNAVAILABLE_RETRY_SECS, "retryable": True}
            return
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


def _count(n):
    return None if n is None else str(int(n))


def _usage(usage=None, input_tokens=None, output_tokens=None, cached_input_tokens=None,
           cache_write_tokens=None, cache_write_1h_tokens=None):
    """The five counts of a record, from a usage dict (anthropic_usage,
    openai_usage) and/or keyword counts (which win)."""
    u = dict.fromkeys(_USAGE_KEYS, 0)
    if usage:
        u.update({k: usage[k] for k in _USAGE_KEYS if usage.get(k) is not None})
    for k, v in zip(_USAGE_KEYS, (input_tokens, output_tokens, cached_input_tokens,
                                  cache_write_tokens, cache_write_1h_tokens)):
        if v is not None:
            u[k] = v
    return u


_OPTIONS = ("plan", "account", "model", "usage", "estimate_cents", "input_tokens",
            "max_output_tokens")


def _options(defaults, given):
    """The limiter's defaults, overridden by a call's own options."""
    unknown = set(given) - set(_OPTIONS)
    if unknown:
        raise TypeError(f"unknown option(s): {', '.join(sorted(unknown))}")
    o = dict.fromkeys(_OPTIONS)
    o.update({k: v for k, v in defaults.items() if v is not None})
    o.update({k: v for k, v in given.items() if v is not None})
    return o


def _check_params(user_id, o):
    return (user_id, o["plan"], str(o["estimate_cents"] if o["estimate_cents"] is not None else 0),
            o["model"], _count(o["input_tokens"]), _count(o["max_output_tokens"]), o["account"])


def _record_params(user_id, model, reservation_id, account, u):
    return (user_id, model, str(int(u["input"])), str(int(u["output"])), str(int(u["cached"])),
            reservation_id, str(int(u["cache_write"])), str(int(u["cache_write_1h"])), account)


# When a statement is sent again on another connection (at most _ATTEMPTS
# times in all: a pool's connections may all have been ended at once):
_ONCE_IF_LOST = "lost"        # idempotent (a record, a release): whenever its connection was lost
_ONCE_IF_NOT_RUN = "not run"  # a check: only when the server ended it before it committed
_ATTEMPTS = 3


class _NotSent(psycopg.OperationalError):
    """The connection was found closed before the statement was sent."""


# per connection: has the server said it ends it (a FATAL taken as a notice)?
_ending = weakref.WeakKeyDictionary()


def _closed_before(conn):
    """Did the server end this connection while it was idle (a restart,
    pg_terminate_backend, a failover)?  Reads what is already there, with
    no round trip: then nothing is sent on it, and any statement may be
    sent again on another.  A server that ends a connection sends a FATAL
    (which libpq hands to the notice handlers while idle), then closes it."""
    ending = _ending.get(conn)
    if ending is None:
        ending = _ending[conn] = [False]
        conn.add_notice_handler(
            lambda d, e=ending: e.__setitem__(0, e[0] or (d.severity_nonlocalized or d.severity) == "FATAL"))
    try:
        conn.pgconn.consume_input()
        conn.pgconn.is_busy()  # parses what came
        conn.pgconn.consume_input()
    except psycopg.OperationalError:
        return True
    return ending[0] or conn.pgconn.status != psycopg.pq.ConnStatus.OK


def _worth_retrying(err, when):
    """A statement never sent (its connection was closed before), one the
    server ended before it committed (57P01 to 57P03), or for an idempotent
    statement any connection lost (a failover) and the same record still
    committing elsewhere (40001)."""
    if isinstance(err, errors.InsufficientResources) or when is None:
        return False
    if isinstance(err, (_NotSent, errors.AdminShutdown, errors.CrashShutdown,
                        errors.CannotConnectNow)):
        return True
    return when == _ONCE_IF_LOST and isinstance(
        err, (psycopg.OperationalError, errors.SerializationFailure))


class Reservation:
    """The hold of one checked request: record it once, or leave its block
    (``with r:``) to give its estimate back.  check is the check's row (a
    dict); headers its RateLimit fields."""

    def __init__(self, limiter, user_id, model, account, check):
        self._limiter = limiter
        self.user_id = user_id
        self.model = model
        self.account = account
        self.check = check
        self.reservation_id = check["reservation_id"]
        self.headers = rate_limit_headers(check)
        self.cost = None
        self.released = False

    def _record_params(self, usage, model, counts):
        return _record_params(self.user_id, model or self.model, self.reservation_id,
                              self.account, _usage(usage, *counts))

    def record(self, usage=None, *, model=None, input_tokens=None, output_tokens=None,
               cached_input_tokens=None, cache_write_tokens=None, cache_write_1h_tokens=None):
        """Record the call's real usage (a usage dict and/or counts); returns
        its cost in cents (Decimal).  A repeat returns the first cost."""
        params = self._record_params(usage, model, (input_tokens, output_tokens,
                                                    cached_input_tokens, cache_write_tokens,
                                                    cache_write_1h_tokens))
        self.cost = self._limiter._value(_RECORD, params, _ONCE_IF_LOST)
        return self.cost

    def extend(self, seconds):
        """Hold the estimate `seconds` from now (a long stream, an agent);
        the new expiry, or None when it is no longer open."""
        if self.reservation_id is None:
            return None
        return self._limiter._value(_EXTEND, (self.reservation_id, self.user_id, str(int(seconds))),
                                    _ONCE_IF_LOST)

    def release(self):
        """Give the estimate back now (also done when the block is left
        without a record); nothing after a record."""
        if self.cost is None and not self.released and self.reservation_id is not None:
            self._limiter._value(_RELEASE, (self.reservation_id, self.user_id), _ONCE_IF_LOST)
        self.released = True

    def __enter__(self):
        return self

    def __exit__(self, et, ev, tb):
        if self.cost is not None:
            return
        try:
            self.release()
        except psycopg.Error:
            if et is None:
                raise
            # held until it expires; the caller's error is the one to see


class AsyncReservation(Reservation):
    """Reservation for AsyncLimiter: the same methods, awaited."""

    async def record(self, usage=None, *, model=None, input_tokens=None, output_tokens=None,
                     cached_input_tokens=None, cache_write_tokens=None, cache_write_1h_tokens=None):
        params = self._record_params(usage, model, (input_tokens, output_tokens,
                                                    cached_input_tokens, cache_write_tokens,
                                                    cache_write_1h_tokens))
        self.cost = await self._limiter._value(_RECORD, params, _ONCE_IF_LOST)
        return self.cost

    async def extend(self, seconds):
        if self.reservation_id is None:
            return None
        return await self._limiter._value(_EXTEND, (self.reservation_id, self.user_id,
                                                    str(int(seconds))), _ONCE_IF_LOST)

    async def release(self):
        if self.cost is None and not self.released and self.reservation_id is not None:
            await self._limiter._value(_RELEASE, (self.reservation_id, self.user_id), _ONCE_IF_LOST)
        self.released = True

    async def __aenter__(self):
        return self

    async def __aexit__(self, et, ev, tb):
        if self.cost is not None or self.released:
            return
        # in a task of its own: a cancelled request (a client gone) still
        # gives its estimate back, whatever cancels the awaits around it
        self._releasing = asyncio.ensure_future(self.release())
        try:
            await asyncio.shield(self._releasing)
        except asyncio.CancelledError:
            if et is None:
                raise
        except psycopg.Error:
            if et is None:
                raise


class _Reserving:
    """AsyncLimiter.reserve(): awaited, the reservation; as ``async with``,
    the reservation's block."""

    def __init__(self, coro):
        self._coro = coro
        self._r = None

    def __await__(self):
        return self._coro.__await__()

    async def __aenter__(self):
        self._r = await self._coro
        return self._r

    async def __aexit__(self, et, ev, tb):
        return await self._r.__aexit__(et, ev, tb)


class Limiter:
    """Wraps AI calls for one database.  db: a psycopg ConnectionPool
    (psycopg_pool), or a Connection (autocommit=True: each statement its
    own transaction; a lost connection is then not replaced).  defaults:
    any option of call() (plan, account, model, usage, estimate_cents,
    input_tokens, max_output_tokens), for every call."""

    def __init__(self, db, plan=None, account=None, **defaults):
        self._db = db
        self._defaults = _options({}, dict(defaults, plan=plan, account=account))

    @contextmanager
    def _conn(self):
        if hasattr(self._db, "execute"):
            yield self._db
        else:
            with self._db.connection() as conn:
                yield conn

    def _row_once(self, sql, params):
        try:
            with self._conn() as conn:
                if _closed_before(conn):
                    raise _NotSent("the connection was closed before the statement was sent")
                cur = conn.execute(sql, params, prepare=False)
                names = [d.name for d in cur.description]
                return dict(zip(names, cur.fetchone()))
        except errors.InsufficientResources as e:
            raise Refused(None, unavailable=e, limited_by="capacity") from e

    def _row(self, sql, params, retry=None):
        for attempt in range(1, _ATTEMPTS + 1):
            try:
                return self._row_once(sql, params)
            except psycopg.Error as e:
                if attempt == _ATTEMPTS or not _worth_retrying(e, retry):
                    raise
            if hasattr(self._db, "check"):
                self._db.check()  # a pool: its connections lost with this one go first

    def _value(self, sql, params, retry=None):
        return next(iter(self._row(sql, params, retry).values()))

    def estimate(self, model, input_tokens, max_output_tokens):
        """The most a call can cost, in cents (Decimal), from ai_model_prices."""
        return self._value(_ESTIMATE, (model, str(input_tokens), str(max_output_tokens)))

    def _check(self, user_id, o):
        try:
            row = self._row(_CHECK, _check_params(user_id, o), _ONCE_IF_NOT_RUN)
        except psycopg.OperationalError as e:
            # lost while it ran: whether it counted is unknown, so it is not
            # sent again (at worst its hold waits for reservation_ttl)
            raise Refused(None, unavailable=e, limited_by="unavailable") from e
        if not row["allowed"]:
            raise Refused(row)
        return row

    def check(self, user_id, **options):
        """The check alone: its row (a dict); raises Refused when refused."""
        return self._check(user_id, _options(self._defaults, options))

    def reserve(self, user_id, **options):
        """Check now (raises Refused when refused) and return the
        Reservation: record it with r.record(...); ``with r:`` gives the
        estimate back when left without a record.  model is required."""
        o = _options(self._defaults, options)
        if not o["model"]:
            raise TypeError("model is required")
        return Reservation(self, user_id, o["model"], o["account"], self._check(user_id, o))

    def call(self, user_id, fn, **options):
        """Run fn() if the user may make the call.  Returns (result, cost in
        cents, the check's row); raises Refused when refused; when fn()
        raises, gives the estimate back and re-raises.  usage(result) gives
        the token counts (anthropic_usage, openai_usage, or a dict of input,
        output, cached, cache_write, cache_write_1h)."""
        o = _options(self._defaults, options)
        if not callable(o["usage"]):
            raise TypeError("usage(result) is required")
        with self.reserve(user_id, **{k: o[k] for k in _OPTIONS if k != "usage"}) as r:
            result = fn()
            cost = r.record(o["usage"](result))
        return result, cost, r.check


class AsyncLimiter(Limiter):
    """Limiter for asyncio: db is a psycopg AsyncConnectionPool or an
    AsyncConnection (autocommit=True).  The same methods, awaited:
    ``await limiter.call(user_id, fn, ...)`` (fn returns an awaitable or a
    value), ``async with limiter.reserve(...) as r: ... await r.record(...)``,
    or ``r = await limiter.reserve(...)`` then ``async with r:``."""

    @asynccontextmanager
    async def _conn(self):
        if hasattr(self._db, "execute"):
            yield self._db
        else:
            async with self._db.connection() as conn:
                yield conn

    async def _row_once(self, sql, params):
        try:
            async with self._conn() as conn:
                if _closed_before(conn):
                    raise _NotSent("the connection was closed before the statement was sent")
                cur = await conn.execute(sql, params, prepare=False)
                names = [d.name for d in cur.description]
                return dict(zip(names, await cur.fetchone()))
        except errors.InsufficientResources as e:
            raise Refused(None, unavailable=e, limited_by="capacity") from e

    async def _row(self, sql, params, retry=None):
        for attempt in range(1, _ATTEMPTS + 1):
            try:
                return await self._row_once(sql, params)
            except psycopg.Error as e:
                if attempt == _ATTEMPTS or not _worth_retrying(e, retry):
                    raise
            if hasattr(self._db, "check"):
                await self._db.check()  # a pool: its connections lost with this one go first

    async def _value(self, sql, params, retry=None):
        return next(iter((await self._row(sql, params, retry)).values()))

    async def estimate(self, model, input_tokens, max_output_tokens):
        return await self._value(_ESTIMATE, (model, str(input_tokens), str(max_output_tokens)))

    async def _check(self, user_id, o):
        try:
            row = await self._row(_CHECK, _check_params(user_id, o), _ONCE_IF_NOT_RUN)
        except psycopg.OperationalError as e:
            raise Refused(None, unavailable=e, limited_by="unavailable") from e
        if not row["allowed"]:
            raise Refused(row)
        return row

    async def check(self, user_id, **options):
        return await self._check(user_id, _options(self._defaults, options))

    def reserve(self, user_id, **options):
        o = _options(self._defaults, options)
        if not o["model"]:
            raise TypeError("model is required")

        async def reserving():
            return AsyncReservation(self, user_id, o["model"], o["account"],
                                    await self._check(user_id, o))
        return _Reserving(reserving())

    async def call(self, user_id, fn, **options):
        o = _options(self._defaults, options)
        if not callable(o["usage"]):
            raise TypeError("usage(result) is required")
        async with self.reserve(user_id, **{k: o[k] for k in _OPTIONS if k != "usage"}) as r:
            result = fn()
            if inspect.isawaitable(result):
                result = await result
            cost = await r.record(o["usage"](result))
        return result, cost, r.check
