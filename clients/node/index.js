// ai-ratelimit: AI calls wrapped with the ai_ratelimit PostgreSQL extension,
// for node-postgres.
//
// One call: check (with an estimate), run the caller's function, record the
// real usage on success, give the estimate back on failure:
//
//   import { createLimiter, Refused, anthropicUsage } from 'ai-ratelimit'
//   const limiter = createLimiter(pool)            // a pg.Pool (or Client)
//   try {
//     const { result } = await limiter.call(userId, () => anthropic.messages.create(req),
//       { model: req.model, inputTokens: 900, maxOutputTokens: req.max_tokens, usage: anthropicUsage })
//   } catch (err) {
//     if (err instanceof Refused) return res.status(err.status).set(err.headers).json(err.body)
//     throw err
//   }
//
// Streaming and agents, in two phases: the estimate is held until the record,
// and given back by release() when there is none (release after a record
// does nothing, so it belongs in a finally):
//
//   const r = await limiter.reserve(userId, { model, inputTokens: 900, maxOutputTokens: 1024 })
//   res.on('close', () => r.release().catch(() => {}))   // or release() in a finally
//   for await (const event of stream) { ... }
//   await r.record({ input: 812, output: 1045 })
//
// Refused carries the HTTP answer that fits: 429 with Retry-After for a
// rate, 402 for a spent budget at any level, 403 for a block, 503 with
// Retry-After when the server has no room to count (SQLSTATE 53000) or the
// check's connection was lost while it ran.  Every check's answer
// carries the IETF RateLimit and RateLimit-Policy fields from the check's own
// row (rateLimitHeaders).
//
// Ids and money travel as text: a reservation id stays exact whatever int8
// parser the application installed, and an estimate of 2.5 is numeric, never
// double precision.  No statement is prepared by name, so PgBouncer in
// transaction mode works.  A record whose connection is lost is sent again
// (on another connection of a pool, up to three times in all): records are
// idempotent by reservation id, so one that did commit is not counted
// twice.  A check is sent again only when the server ended its connection
// before it committed (57P01 to 57P03: a restart, pg_terminate_backend).

// A request that may not go ahead, with the HTTP answer that fits it.
// check is the check's row; null when the server could not answer (503: no
// room to count, SQLSTATE 53000, limitedBy 'capacity'; or the check's
// connection was lost while it ran, limitedBy 'unavailable').
export class Refused extends Error {
  constructor (row, unavailable, limitedBy) {
    if (unavailable) {
      super(unavailable.message)
      this.name = 'Refused'
      this.limitedBy = limitedBy
      this.retryAfter = UNAVAILABLE_RETRY_SECS
      this.retryable = true
      this.status = 503
      this.headers = { 'retry-after': String(UNAVAILABLE_RETRY_SECS) }
      this.body = { error: unavailable.message, limited_by: limitedBy, retry_after: UNAVAILABLE_RETRY_SECS, retryable: true }
      this.check = null
      return
    }
    super(row.error)
    this.name = 'Refused'
    this.limitedBy = row.limited_by
    this.retryAfter = row.retry_after
    this.retryable = row.retryable
    this.check = row
    Object.assign(this, httpAnswer(row))
  }
}

// a capacity error or a lost check: how soon a retry is worth making
const UNAVAILABLE_RETRY_SECS = 5
const BUDGETS = ['monthly_budget', 'rule', 'account', 'member']
const given = (v) => v !== null && v !== undefined

// The IETF RateLimit and RateLimit-Policy header fields of a check's row, as
// the server wrote them: the limit the answer speaks of (the one left with
// the least room, or the refusing one).
export function rateLimitHeaders (row) {
  const headers = {}
  if (row.ratelimit) headers.ratelimit = row.ratelimit
  if (row.ratelimit_policy) headers['ratelimit-policy'] = row.ratelimit_policy
  return headers
}

// The HTTP answer for a refused check's row: 429 with Retry-After when a
// retry can succeed; 402 for a spent budget at any level (not retryable
// until its window ends); 403 for a block or a limit that allows nothing.
export function httpAnswer (row) {
  let status = 429
  if (!row.retryable) {
    const spent = row.limited_by === 'monthly_budget' ||
      (BUDGETS.includes(row.limited_by) && given(row.retry_after))
    status = spent ? 402 : 403
  }
  const headers = rateLimitHeaders(row)
  if (given(row.retry_after)) headers['retry-after'] = String(row.retry_after)
  return {
    status,
    headers,
    body: {
      error: row.error,
      limited_by: row.limited_by,
      limit: row.limit_value,
      used: row.used,
      held: row.held,
      reset_at: row.reset_at,
      retry_after: row.retry_after,
      retryable: row.retryable
    }
  }
}

// Token counts of vendors' responses, as ai_record_usage takes them.
export function anthropicUsage (message) {
  const u = message.usage ?? {}
  const c = u.cache_creation ?? {}
  const writes = u.cache_creation_input_tokens ?? 0
  const w1h = c.ephemeral_1h_input_tokens ?? 0
  return {
    input: u.input_tokens ?? 0,
    output: u.output_tokens ?? 0,
    cached: u.cache_read_input_tokens ?? 0,
    cacheWrite: c.ephemeral_5m_input_tokens ?? Math.max(writes - w1h, 0),
    cacheWrite1h: w1h
  }
}

export function openaiUsage (response) {
  const u = response.usage ?? {}
  const cached = u.prompt_tokens_details?.cached_tokens ?? 0
  return {
    input: (u.prompt_tokens ?? 0) - cached,
    output: u.completion_tokens ?? 0,
    cached,
    cacheWrite: 0,
    cacheWrite1h: 0
  }
}

// One statement: the server prices the call from the model and its counts
// and holds the larger of that and the caller's estimate.  Ids and numerics
// come back as text.
const CHECK = 'SELECT allowed, error, retry_after, remaining, limited_by, reset_at,' +
  ' reservation_id::text AS reservation_id, limit_value::text AS limit_value, used::text AS used,' +
  ' held::text AS held, retryable, ratelimit, ratelimit_policy' +
  ' FROM ai_check_limit($1::text, $2::text, $3::numeric, NULL::bigint,' +
  ' $4::text, $5::bigint, $6::bigint, account => $7::text)'
const RECORD = 'SELECT ai_record_usage($1::text, $2::text, $3::bigint, $4::bigint, $5::bigint,' +
  ' $6::bigint, $7::bigint, $8::bigint, account => $9::text)::text AS value'
const RELEASE = 'SELECT ai_release_reservation($1::bigint, $2::text) AS value'
const EXTEND = 'SELECT ai_extend_reservation($1::bigint, $2::text, $3::integer) AS value'
const ESTIMATE = 'SELECT ai_estimate_cost($1::text, $2::bigint, $3::bigint)::text AS value'

// When a statement is sent once more: a check only when the server ended its
// connection before it committed (57P01 to 57P03); an idempotent statement (a
// record, a release) whenever its connection was lost (a failover), or the
// same record was still committing elsewhere (40001).
// EPIPE: the query could not be written, the server had closed the socket.
const NOT_RUN = new Set(['57P01', '57P02', '57P03', 'EPIPE'])
// Class 08 (a connection exception: PgBouncer says 08P01 "server connection
// closed" when the server went away under it), 40001, and lost sockets.
const LOST = new Set(['40001', 'ECONNRESET', 'ETIMEDOUT'])
const lostCode = (code) => LOST.has(code) || (typeof code === 'string' && code.startsWith('08'))
const ONCE_IF_NOT_RUN = 'not run'
const ONCE_IF_LOST = 'lost'
const ATTEMPTS = 3
const pause = (ms) => new Promise((resolve) => setTimeout(resolve, ms))
const worthRetrying = (err, when) => {
  if (!when) return false
  // a client found ended before the query was sent, or ended by the server
  if (NOT_RUN.has(err.code) || /not queryable/.test(String(err.message))) return true
  return when === ONCE_IF_LOST && (lostCode(err.code) ||
    (!err.code && /Connection terminated|ECONNRESET|EPIPE|not queryable/.test(String(err.message))))
}

const count = (n) => (given(n) ? String(Math.trunc(Number(n))) : null)

// The five counts of a record, from a usage object (anthropicUsage,
// openaiUsage: input, output, cached, cacheWrite, cacheWrite1h).
function usageCounts (u = {}) {
  const v = { input: 0, output: 0, cached: 0, cacheWrite: 0, cacheWrite1h: 0 }
  for (const k of Object.keys(v)) if (given(u[k])) v[k] = u[k]
  return [v.input, v.output, v.cached, v.cacheWrite, v.cacheWrite1h].map(count)
}

export function createLimiter (db, defaults = {}) {
  const query = async (sql, params) => {
    try {
      const { rows: [row] } = await db.query(sql, params)
      return row
    } catch (err) {
      if (err.code === '53000') throw new Refused(null, err, 'capacity')
      throw err
    }
  }
  // A statement worth sending again is sent up to ATTEMPTS times in all,
  // each after a pause: the connections of a pool ended with the lost one
  // (pg_terminate_backend of every idle one, a restart) leave the pool as
  // their sockets' close events run.
  const row = async (sql, params, retry) => {
    for (let attempt = 1; ; attempt++) {
      try {
        return await query(sql, params)
      } catch (err) {
        if (attempt === ATTEMPTS || !worthRetrying(err, retry)) throw err
      }
      await pause(10 * attempt)
    }
  }
  const value = async (sql, params, retry) => (await row(sql, params, retry)).value

  // The hold of one checked request: record it once, or release it.
  class Reservation {
    constructor (userId, model, account, check) {
      this.userId = userId
      this.model = model
      this.account = account
      this.check = check
      this.reservationId = check.reservation_id // text: exact
      this.headers = rateLimitHeaders(check)
      this.costCents = null
      this.recording = false
      this.released = false
    }

    // Records the call's real usage; returns its cost in cents (text).  A
    // repeat returns the first cost.
    async record (usage = {}, { model } = {}) {
      const [input, output, cached, cacheWrite, cacheWrite1h] = usageCounts(usage)
      this.recording = true
      try {
        this.costCents = await value(RECORD, [this.userId, model ?? this.model, input, output, cached,
          this.reservationId, cacheWrite, cacheWrite1h, this.account ?? null], ONCE_IF_LOST)
      } finally {
        this.recording = false
      }
      return this.costCents
    }

    // Holds the estimate `seconds` from now (a long stream, an agent); the
    // new expiry, or null when it is no longer open.
    async extend (seconds) {
      if (!given(this.reservationId)) return null
      return value(EXTEND, [this.reservationId, this.userId, count(seconds)], ONCE_IF_LOST)
    }

    // Gives the estimate back, unless the call was recorded (or its record
    // is on its way).
    async release () {
      if (this.costCents === null && !this.recording && !this.released && given(this.reservationId)) {
        this.released = true
        await value(RELEASE, [this.reservationId, this.userId], ONCE_IF_LOST)
      }
      this.released = true
    }
  }

  const limiter = {
    // The most a call can cost, in cents (text), from ai_model_prices.
    async estimate (model, inputTokens, maxOutputTokens) {
      return value(ESTIMATE, [model, count(inputTokens), count(maxOutputTokens)])
    },

    // The check alone: its row; throws Refused when refused.
    async check (userId, opts = {}) {
      const o = { ...defaults, ...opts }
      let r
      try {
        r = await row(CHECK, [userId, o.plan ?? null, String(o.estimateCents ?? 0),
          o.model ?? null, count(o.inputTokens), count(o.maxOutputTokens), o.account ?? null], ONCE_IF_NOT_RUN)
      } catch (err) {
        // lost while it ran: whether it counted is unknown, so it is not sent
        // again (at worst its hold waits for reservation_ttl)
        if (worthRetrying(err, ONCE_IF_LOST)) throw new Refused(null, err, 'unavailable')
        throw err
      }
      if (!r.allowed) throw new Refused(r)
      return r
    },

    // Check and hold the estimate; record with r.record(usage), and call
    // r.release() in a finally (a no-op after the record).
    async reserve (userId, opts = {}) {
      const o = { ...defaults, ...opts }
      if (!o.model) throw new TypeError('model is required')
      const row = await limiter.check(userId, o)
      return new Reservation(userId, o.model, o.account, row)
    },

    // Runs fn() if the user may make the call; records its usage (usage(result)
    // gives the token counts) and returns { result, costCents, check, headers };
    // releases the estimate and rethrows when fn() fails; throws Refused when
    // the check refuses.
    async call (userId, fn, opts = {}) {
      const o = { ...defaults, ...opts }
      if (typeof o.usage !== 'function') throw new TypeError('usage(result) is required')
      const r = await limiter.reserve(userId, o)
      try {
        const result = await fn()
        const costCents = await r.record(o.usage(result))
        return { result, costCents, check: r.check, headers: r.headers }
      } finally {
        await r.release().catch(() => {}) // a failed release: held until it expires
      }
    }
  }
  return limiter
}
