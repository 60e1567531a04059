// The node client helper (clients/node) against a server with ai_ratelimit,
// directly or (AI_VIA_PGBOUNCER=1) through PgBouncer in transaction mode.
// Run by t/012_psycopg_pgbouncer.pl with PG* variables set.
import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import pg from 'pg'
import { createLimiter, Refused, anthropicUsage, openaiUsage } from '../../clients/node/index.js'

const P = process.env.AI_VIA_PGBOUNCER === '1' ? 'hjsb-' : 'hjs-'
const pool = new pg.Pool({ max: 8 })
const limiter = createLimiter(pool, { model: 'claude-sonnet-4-6', usage: anthropicUsage })
const reply = (inTok = 812, outTok = 1045, w5m = 0, w1h = 0) => ({
  content: [{ type: 'text', text: 'hi' }],
  usage: {
    input_tokens: inTok, output_tokens: outTok, cache_read_input_tokens: 0,
    cache_creation_input_tokens: w5m + w1h,
    cache_creation: { ephemeral_5m_input_tokens: w5m, ephemeral_1h_input_tokens: w1h }
  }
})

before(async () => {
  await pool.query(`INSERT INTO ai_plans (plan, burst_limit, monthly_budget_cents)
                    VALUES ('h-cap', NULL, 10), ('h-burst', 2, NULL) ON CONFLICT (plan) DO NOTHING`)
})
after(() => pool.end())

test('a call is checked with an estimate from its tokens, then recorded exactly', async () => {
  const { result, costCents, check } = await limiter.call(P + '1', async () => reply(1000, 500, 10000, 4000),
    { plan: 'h-cap', inputTokens: 900, maxOutputTokens: 1024 })
  assert.equal(result.content[0].text, 'hi')
  assert.equal(costCents, '7.2') // (1000x3 + 500x15 + 10000x3.75 + 4000x6) / 10^4
  assert.notEqual(check.reservation_id, null)
})

test('while the call runs, the check holds its price, or the larger estimate given', async () => {
  const seen = []
  const held = async () => {
    const { rows: [r] } = await pool.query(
      'SELECT coalesce(sum(reserved_cents), 0) AS held FROM ai_ratelimit_status WHERE user_id = $1', [P + '6'])
    seen.push(r.held)
    return reply(100, 100)
  }
  await limiter.call(P + '6', held, { plan: 'h-cap', inputTokens: 900, maxOutputTokens: 1024 })
  await limiter.call(P + '6', held, { plan: 'h-cap', inputTokens: 900, maxOutputTokens: 1024, estimateCents: 3 })
  assert.deepEqual(seen, ['1.806', '3'])
})

test('a failed call gives its estimate back and rethrows', async () => {
  await assert.rejects(limiter.call(P + '2', async () => { throw new Error('overloaded') },
    { plan: 'h-cap', estimateCents: 2.5 }), /overloaded/)
  const { rows: [r] } = await pool.query(
    'SELECT coalesce(sum(reserved_cents), 0) AS held FROM ai_ratelimit_status WHERE user_id = $1', [P + '2'])
  assert.equal(r.held, '0')
})

test('refusals are HTTP answers: 429 with Retry-After for a rate, 402 for a spent budget', async () => {
  const statuses = []
  let refusal
  for (let i = 0; i < 3; i++) {
    try {
      await limiter.call(P + '3', async () => reply(), { plan: 'h-burst' })
      statuses.push(200)
    } catch (err) {
      assert.ok(err instanceof Refused)
      statuses.push(err.status)
      refusal = err
    }
  }
  assert.deepEqual(statuses, [200, 200, 429])
  assert.ok(Number(refusal.headers['retry-after']) > 0)
  assert.equal(refusal.body.limited_by, 'burst')
  assert.equal(refusal.retryable, true)
  await pool.query("SELECT ai_record_usage($1, 'gpt-4o', 0, 1000000)", [P + '4'])
  await assert.rejects(limiter.call(P + '4', async () => reply(), { plan: 'h-cap', estimateCents: 1 }),
    err => err instanceof Refused && err.status === 402 && err.retryable === false &&
      err.body.used === '1000' && err.body.limit === '10')
})

test('parallel calls stop exactly at the budget', async () => {
  const calls = Array.from({ length: 12 }, () =>
    limiter.call(P + '5', async () => reply(), { plan: 'h-cap', estimateCents: 2 })
      .then(r => r.costCents, err => { if (!(err instanceof Refused)) throw err; return null }))
  const costs = (await Promise.all(calls)).filter(c => c !== null)
  assert.equal(costs.length, 5)
  const { rows: [s] } = await pool.query('SELECT ai_monthly_spend($1) AS cents', [P + '5'])
  assert.equal(s.cents, '9.0555') // 5 x 1.8111
})

test('vendors\' usage shapes map to the token counts', () => {
  assert.deepEqual(openaiUsage({ usage: { prompt_tokens: 1000, completion_tokens: 50, prompt_tokens_details: { cached_tokens: 200 } } }),
    { input: 800, output: 50, cached: 200, cacheWrite: 0, cacheWrite1h: 0 })
  assert.deepEqual(anthropicUsage(reply(10, 20, 30, 40)),
    { input: 10, output: 20, cached: 0, cacheWrite: 30, cacheWrite1h: 40 })
})

test('two phases: a stream is recorded at its real cost when it ends, with RateLimit headers', async () => {
  const r = await limiter.reserve(P + '7', { plan: 'h-cap', inputTokens: 900, maxOutputTokens: 1024 })
  assert.match(r.headers.ratelimit, /^"[a-z_0-9-]+";r=\d+;t=\d+$/)
  assert.ok(r.headers['ratelimit-policy'])
  const cost = await r.record({ input: 812, output: 1045 })
  await r.release() // after the record: nothing
  assert.equal(cost, '1.8111')
  const { rows: [u] } = await pool.query('SELECT count(*)::int AS n FROM ai_usage WHERE user_id = $1', [P + '7'])
  assert.equal(u.n, 1)
})

test('a reservation released without a record gives its estimate back and records nothing', async () => {
  const r = await limiter.reserve(P + '8', { plan: 'h-cap', estimateCents: 3 })
  await r.release()
  const { rows: [s] } = await pool.query(
    `SELECT coalesce(sum(reserved_cents), 0) AS held,
            (SELECT count(*)::int FROM ai_usage WHERE user_id = $1) AS n
     FROM ai_ratelimit_status WHERE user_id = $1`, [P + '8'])
  assert.equal(s.held, '0')
  assert.equal(s.n, 0)
})

test('ids stay exact under an app\'s parseInt int8 parser', async () => {
  const types = { getTypeParser: (oid, format) => oid === 20 ? parseInt : pg.types.getTypeParser(oid, format) }
  const lossy = new pg.Pool({ max: 2, types })
  const exact = createLimiter(lossy, { model: 'claude-sonnet-4-6', usage: anthropicUsage })
  try {
    const r = await exact.reserve(P + '9', { plan: 'h-cap', estimateCents: 2 })
    assert.equal(typeof r.reservationId, 'string')
    const { rows: [c] } = await pool.query('SELECT $1::bigint::text AS id', [r.reservationId])
    assert.equal(c.id, r.reservationId)
    assert.ok(Number(r.reservationId) > Number.MAX_SAFE_INTEGER, 'ids are past 2^53: parseInt would round them')
    await r.record({ input: 812, output: 1045 })
    const { rows: [s] } = await pool.query(
      `SELECT coalesce(sum(reserved_cents), 0) AS held FROM ai_ratelimit_status WHERE user_id = $1`, [P + '9'])
    assert.equal(s.held, '0', 'the record settled the reservation its check made')
  } finally {
    await lossy.end()
  }
})

test('a record whose connection was terminated is sent again and counted once', async () => {
  const one = new pg.Pool({ max: 1 })
  one.on('error', () => {})
  const lim = createLimiter(one, { model: 'claude-sonnet-4-6', usage: anthropicUsage })
  try {
    const r = await lim.reserve(P + '10', { plan: 'h-cap', estimateCents: 2 })
    const { rows: [p] } = await one.query('SELECT pg_backend_pid() AS pid')
    // through PgBouncer the pid is a server connection, maybe the one this
    // statement runs on: that one is left alone
    await pool.query('SELECT pg_terminate_backend($1) WHERE $1 <> pg_backend_pid()', [p.pid])
    assert.equal(await r.record({ input: 812, output: 1045 }), '1.8111')
    assert.equal(await r.record({ input: 812, output: 1045 }), '1.8111', 'a repeat returns the first cost')
    const { rows: [u] } = await pool.query('SELECT count(*)::int AS n FROM ai_usage WHERE user_id = $1', [P + '10'])
    assert.equal(u.n, 1)
  } finally {
    await one.end()
  }
})
