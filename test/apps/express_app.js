// A new user's express app on ai_ratelimit: one plain route and one streaming
// route, through a pg.Pool (AI_APP_DSN, which may name PgBouncer in
// transaction mode), with the helper of clients/node installed from its npm
// pack tarball.  The app installs a common int8 parser (parseInt): ids must
// stay exact anyway.  The model is a stub shaped like the Anthropic SDK: it
// takes AI_APP_CALL_MS per call, streams AI_APP_CHUNKS chunks, and says what
// it used.
//
// Lines that exist for ai_ratelimit (beyond importing it) end with `// glue`;
// t/028 counts them and the README states the count.
//
//   AI_APP_DSN=postgres://... PORT=8080 node test/apps/express_app.js
import express from 'express'
import pg from 'pg'
import { createLimiter, Refused, anthropicUsage } from 'ai-ratelimit'

pg.types.setTypeParser(20, parseInt) // the app's own choice for its bigint columns

const MODEL = 'claude-sonnet-4-6'
const CALL_MS = Number(process.env.AI_APP_CALL_MS ?? 200)
const CHUNKS = Number(process.env.AI_APP_CHUNKS ?? 5)
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

// Stands in for new Anthropic().messages; counts the calls that ran to their
// end (a stream: once its last event was taken).
const model = {
  completed: 0,
  usage: (prompt, maxTokens) => ({ input_tokens: 100 + prompt.length, output_tokens: Math.min(maxTokens, 400), cache_read_input_tokens: 0 }),
  async create (m, maxTokens, messages) {
    await sleep(CALL_MS)
    this.completed++
    return { model: m, content: [{ type: 'text', text: 'ok' }], usage: this.usage(messages[0].content, maxTokens) }
  },
  async * stream (m, maxTokens, messages) {
    for (let i = 0; i < CHUNKS; i++) {
      await sleep(CALL_MS / CHUNKS)
      yield { type: 'content_block_delta', text: `chunk ${i}\n` }
    }
    yield { type: 'message_delta', usage: this.usage(messages[0].content, maxTokens) }
    this.completed++
  }
}

const pool = new pg.Pool({ connectionString: process.env.AI_APP_DSN, max: 8, application_name: 'ai-app' })
pool.on('error', () => {}) // an idle connection lost (a restart, a failover): the pool makes another
const limiter = createLimiter(pool, { model: MODEL, usage: anthropicUsage, maxOutputTokens: 1024 }) // glue
const app = express()
app.use(express.json())

app.post('/generate', async (req, res) => {
  const userId = req.get('x-user-id')
  const { prompt, account } = req.body
  const messages = [{ role: 'user', content: prompt }]
  const { result, headers } = await limiter.call(userId, () => model.create(MODEL, 1024, messages), // glue
    { account, inputTokens: 100 + prompt.length }) // glue
  res.set(headers).json({ text: result.content[0].text }) // glue
})

app.post('/stream', async (req, res) => {
  const userId = req.get('x-user-id')
  const { prompt, account } = req.body
  const messages = [{ role: 'user', content: prompt }]
  const r = await limiter.reserve(userId, { account, inputTokens: 100 + prompt.length }) // glue
  res.on('close', () => r.release().catch(() => {})) // glue: a client gone gives the estimate back
  res.set(r.headers).type('text/plain') // glue
  let last
  for await (const event of model.stream(MODEL, 1024, messages)) {
    if (res.destroyed) return // the client is gone: stop the call
    res.write(event.text ?? '')
    last = event
  }
  await r.record(anthropicUsage(last)) // glue
  res.end()
})

// for the load test: the calls the model completed (each must be recorded once)
app.get('/model-calls', (req, res) => res.json({ completed: model.completed }))

app.use((err, req, res, next) => err instanceof Refused ? res.status(err.status).set(err.headers).json(err.body) : next(err)) // glue

const server = app.listen(Number(process.env.PORT ?? 8080), '127.0.0.1', () => {
  console.log(`listening on ${server.address().port}`)
})
process.on('SIGTERM', () => server.close(() => pool.end()))
