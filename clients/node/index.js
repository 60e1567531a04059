// ai-ratelimit: one AI call wrapped with the ai_ratelimit PostgreSQL
// extension, for node-postgres.  check (with an estimate), run the caller's
// function, record the real usage on success, give the estimate back on
// failure, and turn a refusal into an HTTP answer.
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

// A refusal, as the check answered it, with the HTTP answer that fits it.
export class Refused extends Error {
  constructor (row) {
    super(row.error)
    this.name = 'Refused'
    this.limitedBy = row.limited_by
    this.retryAfter = row.retry_after
    this.retryable = row.retryable
    Object.assign(this, httpAnswer(row))
  }
}

const BUDGETS = ['monthly_budget', 'rule', 'account', 'member']

// The HTTP answer for a check's row: 429 with Retry-After when a retry can
// succeed; 402 for a spent budget at any level (not retryable until its
// window ends); 403 for a block or a limit that allows nothing.
export function httpAnswer (row) {
  let status = 429
  if (!row.retryable) {
    const spent = row.limited_by === 'monthly_budget' ||
      (BUDGETS.includes(row.limited_by) && row.retry_after !== null && row.retry_after !== undefined)
    status = spent ? 402 : 403
  }
  const headers = {}
  if (row.retry_after !== null && row.retry_after !== undefined) headers['retry-after'] = String(row.retry_after)
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

// Numbers go as text and are cast in SQL, so no driver type can pick the
// wrong function: an estimate of 2.5 is numeric, never double precision.
// One statement: the server prices the call from the model and its counts
// (1.5) and holds the larger of that and the caller's estimate.
const CHECK = 'SELECT * FROM ai_check_limit($1::text, $2::text, $3::numeric, NULL::bigint,' +
  ' $4::text, $5::bigint, $6::bigint)'
const RECORD = 'SELECT ai_record_usage($1::text, $2::text, $3::bigint, $4::bigint, $5::bigint,' +
  ' $6::bigint, $7::bigint, $8::bigint) AS cost_cents'
const RELEASE = 'SELECT ai_release_reservation($1::bigint, $2::text)'

export function createLimiter (db, defaults = {}) {
  return {
    // Runs fn() if the user may make the call; records its usage (usage(result)
    // gives the token counts) and returns { result, costCents, check };
    // releases the estimate and rethrows when fn() fails; throws Refused when
    // the check refuses.
    async call (userId, fn, opts = {}) {
      const o = { ...defaults, ...opts }
      if (!o.model) throw new TypeError('model is required')
      if (typeof o.usage !== 'function') throw new TypeError('usage(result) is required')
      const count = (n) => (n === undefined || n === null ? null : String(n))
      const { rows: [check] } = await db.query(CHECK, [userId, o.plan ?? null, String(o.estimateCents ?? 0),
        o.model, count(o.inputTokens), count(o.maxOutputTokens)])
      if (!check.allowed) throw new Refused(check)
      let result
      try {
        result = await fn()
      } catch (err) {
        if (check.reservation_id !== null) await db.query(RELEASE, [check.reservation_id, userId])
        throw err
      }
      const u = { input: 0, output: 0, cached: 0, cacheWrite: 0, cacheWrite1h: 0, ...o.usage(result) }
      const { rows: [rec] } = await db.query(RECORD, [userId, o.model, String(u.input), String(u.output),
        String(u.cached), check.reservation_id, String(u.cacheWrite), String(u.cacheWrite1h)])
      return { result, costCents: rec.cost_cents, check }
    }
  }
}
