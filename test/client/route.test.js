// node-postgres client test of ai_ratelimit: the article's route end to end,
// as an application role with only the grants the README names.
// Run by t/007_node_client.pl, which starts the server and sets PG* variables.
import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import pg from 'pg'
import { createApp, stubModel } from './route.js'

const admin = new pg.Client({ user: process.env.PGUSER })
const pool = new pg.Pool({ user: 'ai_app', max: 10 })
let server
let base

before(async () => {
  await admin.connect()
  await admin.query(`
    CREATE EXTENSION IF NOT EXISTS ai_ratelimit;
    CREATE ROLE ai_app LOGIN;
    GRANT EXECUTE ON FUNCTION
        ai_check_limit(text, text, numeric, bigint, text, bigint, bigint, text),
        ai_enforce_limit(text, text, numeric, bigint, text, bigint, bigint, text), ai_peek_limit(text, text),
        ai_record_usage(text, text, bigint, bigint, bigint, bigint, bigint, bigint, text),
        ai_release_reservation(bigint, text), ai_monthly_spend(text, date)
    TO ai_app;
    INSERT INTO ai_plans (plan, burst_limit, daily_limit, monthly_budget_cents, alert_percents)
    VALUES ('capped', NULL, NULL, 5, '{50}');
    INSERT INTO ai_user_plans VALUES ('script-1', 'capped'), ('watched', 'capped'),
                                     ('outage-1', 'capped');`)
  server = createApp(pool)
  await new Promise(resolve => server.listen(0, '127.0.0.1', resolve))
  base = `http://127.0.0.1:${server.address().port}`
})

after(async () => {
  await new Promise(resolve => server.close(resolve))
  await pool.end()
  await admin.end()
})

const generate = (userId, prompt = 'hello') => fetch(`${base}/api/generate`, {
  method: 'POST',
  headers: userId ? { 'x-user-id': userId, 'content-type': 'application/json' } : {},
  body: JSON.stringify({ prompt })
})

test('no session: 401', async () => {
  const res = await generate(null)
  assert.equal(res.status, 401)
})

test('free plan: the 6th request in a minute gets 429 with the message and Retry-After', async () => {
  const remaining = []
  for (let i = 0; i < 5; i++) {
    const res = await generate('user-42')
    assert.equal(res.status, 200)
    const body = await res.json()
    assert.equal(body.result, 'echo: hello')
    assert.equal(body.cost_cents, '1.8111') // 812 in + 1045 out on claude-sonnet-4-6, exact
    remaining.push(body.remaining)
  }
  assert.deepEqual(remaining, [19, 18, 17, 16, 15])
  const calls = stubModel.calls
  const res = await generate('user-42')
  assert.equal(res.status, 429)
  assert.deepEqual(await res.json(), {
    error: 'Rate limit: 5 requests/minute on free plan', limited_by: 'burst'
  })
  const retry = Number(res.headers.get('retry-after'))
  assert.ok(retry >= 57 && retry <= 63, `Retry-After ${retry} is when the window lets a request through`)
  assert.equal(stubModel.calls, calls, 'a refused request never reaches the model')
})

test('the month\'s spend is the exact sum of the recorded calls', async () => {
  const res = await fetch(`${base}/api/spend`, { headers: { 'x-user-id': 'user-42' } })
  assert.deepEqual(await res.json(), { cents: '9.0555' })
})

test('parallel requests: exactly the burst limit gets through', async () => {
  const results = await Promise.all(Array.from({ length: 20 }, () => generate('user-parallel')))
  const codes = results.map(r => r.status)
  assert.equal(codes.filter(c => c === 200).length, 5)
  assert.equal(codes.filter(c => c === 429).length, 15)
})

test('a runaway script is stopped at its monthly budget, before the money is spent', async () => {
  let ok = 0
  let res
  for (let i = 0; i < 20; i++) {
    res = await generate('script-1')
    if (res.status !== 200) break
    ok++
  }
  assert.equal(res.status, 429)
  assert.equal((await res.json()).error, 'Monthly AI budget exceeded')
  assert.ok(Number(res.headers.get('retry-after')) > 0)
  // 5-cent cap, 2-cent estimate reserved per call, 1.8111 cents spent per call
  assert.equal(ok, 2)
  const spend = await fetch(`${base}/api/spend`, { headers: { 'x-user-id': 'script-1' } })
  assert.deepEqual(await spend.json(), { cents: '3.6222' })
})

test('failed model calls give their estimates back at once: no budget is held', async () => {
  // a 5-cent cap and a 2-cent estimate: without the release, the third
  // failure would already be refused for requests in flight
  stubModel.failing = 5
  for (let i = 0; i < 5; i++) {
    const res = await generate('outage-1')
    assert.equal(res.status, 502)
  }
  const { rows: [held] } = await admin.query(
    "SELECT count(*)::int AS n FROM ai_ratelimit_status WHERE user_id = 'outage-1' AND reserved_cents > 0")
  assert.equal(held.n, 0)
  const res = await generate('outage-1')
  assert.equal(res.status, 200)
  const spend = await fetch(`${base}/api/spend`, { headers: { 'x-user-id': 'outage-1' } })
  assert.deepEqual(await spend.json(), { cents: '1.8111' })
})

test('a LISTENing client receives the budget alert once', async () => {
  const listener = new pg.Client({ user: process.env.PGUSER })
  await listener.connect()
  const received = []
  listener.on('notification', n => received.push(n))
  await listener.query('LISTEN ai_ratelimit')
  for (let i = 0; i < 2; i++) await generate('watched')
  await new Promise(resolve => setTimeout(resolve, 300))
  await listener.end()
  assert.equal(received.length, 1, 'crossing 50% of 5 cents once')
  assert.equal(received[0].channel, 'ai_ratelimit')
  const alert = JSON.parse(received[0].payload)
  assert.equal(alert.event, 'budget_alert')
  assert.equal(alert.user_id, 'watched')
  assert.equal(alert.plan, 'capped')
  assert.equal(alert.threshold_percent, 50)
  assert.equal(alert.budget_cents, 5)
  assert.equal(alert.spend_cents, 3.6222)
})

test('the application role cannot touch plans, usage or other users\' limits', async () => {
  await assert.rejects(pool.query("UPDATE ai_plans SET burst_limit = 1000 WHERE plan = 'free'"), { code: '42501' })
  await assert.rejects(pool.query('DELETE FROM ai_usage'), { code: '42501' })
  await assert.rejects(pool.query("SELECT ai_reset_limits('user-42')"), { code: '42501' })
})
