// The article's AI route (app/api/generate/route.ts), rewritten against
// ai_ratelimit with node-postgres, served by node:http so it runs without a
// framework.  The model call is a stub that returns real usage numbers.
import http from 'node:http'
import pg from 'pg'

// Stands in for `new Anthropic().messages.create(...)`: same response shape.
// `failing` makes the next calls throw, like an outage of the vendor.
export const stubModel = {
  calls: 0,
  failing: 0,
  usage: { input_tokens: 812, output_tokens: 1045, cache_read_input_tokens: 0 },
  async create ({ model, messages }) {
    this.calls++
    if (this.failing > 0) {
      this.failing--
      throw new Error('overloaded_error: the model is overloaded')
    }
    return {
      model,
      content: [{ type: 'text', text: `echo: ${messages[0].content}` }],
      usage: { ...this.usage }
    }
  }
}

const MODEL = 'claude-sonnet-4-6'
const ESTIMATED_CENTS = 2 // generous: max_tokens (1024) at the output price, rounded up

export function createApp (pool, anthropic = stubModel) {
  return http.createServer(async (req, res) => {
    const send = (status, body, headers = {}) => {
      res.writeHead(status, { 'content-type': 'application/json', ...headers })
      res.end(JSON.stringify(body))
    }
    try {
      // getServerSession() stand-in: the user id comes from a header
      const userId = req.headers['x-user-id']
      if (!userId) return send(401, { error: 'Unauthorized' })

      if (req.method === 'GET' && req.url === '/api/spend') {
        const { rows: [r] } = await pool.query('SELECT ai_monthly_spend($1) AS cents', [userId])
        return send(200, { cents: r.cents })
      }
      if (req.method !== 'POST' || req.url !== '/api/generate') return send(404, { error: 'Not found' })

      // burst + daily + monthly budget in one call; the plan comes from ai_user_plans
      const { rows: [check] } = await pool.query(
        'SELECT * FROM ai_check_limit($1, NULL, $2)', [userId, ESTIMATED_CENTS])
      if (!check.allowed) {
        const headers = check.retry_after === null ? {} : { 'retry-after': String(check.retry_after) }
        return send(429, { error: check.error, limited_by: check.limited_by }, headers)
      }

      let body = ''
      for await (const chunk of req) body += chunk
      const { prompt } = JSON.parse(body || '{}')

      let message
      try {
        message = await anthropic.create({
          model: MODEL,
          max_tokens: 1024,
          messages: [{ role: 'user', content: prompt }]
        })
      } catch (err) {
        // the call failed: give its estimate back at once (NULL: nothing reserved)
        await pool.query('SELECT ai_release_reservation($1, $2)', [check.reservation_id, userId])
        return send(502, { error: err.message })
      }

      // the exact cost, settling the reservation the check made
      const { rows: [rec] } = await pool.query(
        'SELECT ai_record_usage($1, $2, $3, $4, $5, $6) AS cost_cents',
        [userId, MODEL, message.usage.input_tokens, message.usage.output_tokens,
          message.usage.cache_read_input_tokens ?? 0, check.reservation_id])

      return send(200, {
        result: message.content[0].type === 'text' ? message.content[0].text : '',
        remaining: check.remaining,
        cost_cents: rec.cost_cents
      })
    } catch (err) {
      return send(500, { error: err.message })
    }
  })
}
