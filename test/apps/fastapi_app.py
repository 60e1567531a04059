"""A new user's FastAPI app on ai_ratelimit: one plain route and one
streaming route, through a psycopg AsyncConnectionPool (the URL in
AI_APP_DSN, which may name PgBouncer in transaction mode), with the
AsyncLimiter of clients/python.  The model is a stub shaped like the
Anthropic SDK's async client: it takes AI_APP_CALL_MS per call, streams
AI_APP_CHUNKS chunks, and says what it used.

Lines that exist for ai_ratelimit (beyond importing it) end with `# glue`;
t/028 counts them and the README states the count.

    uvicorn --app-dir test/apps fastapi_app:app
"""
import asyncio
import os

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from psycopg_pool import AsyncConnectionPool

from ai_ratelimit_client import AsyncLimiter, Refused, anthropic_usage, rate_limit_headers

MODEL = "claude-sonnet-4-6"
CALL_SECS = int(os.environ.get("AI_APP_CALL_MS", "200")) / 1000
CHUNKS = int(os.environ.get("AI_APP_CHUNKS", "5"))


class StubModel:
    """Stands in for anthropic.AsyncAnthropic().messages; counts the calls
    that ran to their end (a stream: once its last event was taken)."""

    completed = 0

    @staticmethod
    def usage(prompt, max_tokens):
        return {"input_tokens": 100 + len(prompt), "output_tokens": min(max_tokens, 400),
                "cache_read_input_tokens": 0}

    async def create(self, model, max_tokens, messages):
        await asyncio.sleep(CALL_SECS)
        self.completed += 1
        return {"model": model, "content": [{"type": "text", "text": "ok"}],
                "usage": self.usage(messages[0]["content"], max_tokens)}

    async def stream(self, model, max_tokens, messages):
        for i in range(CHUNKS):
            await asyncio.sleep(CALL_SECS / CHUNKS)
            yield {"type": "content_block_delta", "text": f"chunk {i}\n"}
        yield {"type": "message_delta", "usage": self.usage(messages[0]["content"], max_tokens)}
        self.completed += 1


model = StubModel()
pool = AsyncConnectionPool(os.environ["AI_APP_DSN"], min_size=2, max_size=8, open=False,
                           kwargs={"autocommit": True, "application_name": "ai-app"})
limiter = AsyncLimiter(pool, model=MODEL, usage=anthropic_usage, max_output_tokens=1024)  # glue
app = FastAPI()
app.add_exception_handler(Refused, lambda req, e: JSONResponse(e.body, e.status, e.headers))  # glue


@app.on_event("startup")
async def open_pool():
    await pool.open(wait=True)


@app.on_event("shutdown")
async def close_pool():
    await pool.close()


@app.post("/generate")
async def generate(request: Request):
    body = await request.json()
    user_id, prompt, account = request.headers["x-user-id"], body["prompt"], body.get("account")
    messages = [{"role": "user", "content": prompt}]
    message, cost, check = await limiter.call(user_id, lambda: model.create(MODEL, 1024, messages),  # glue
                                              account=account, input_tokens=100 + len(prompt))  # glue
    return JSONResponse({"text": message["content"][0]["text"]}, headers=rate_limit_headers(check))  # glue


@app.post("/stream")
async def stream(request: Request):
    body = await request.json()
    user_id, prompt, account = request.headers["x-user-id"], body["prompt"], body.get("account")
    messages = [{"role": "user", "content": prompt}]
    r = await limiter.reserve(user_id, account=account, input_tokens=100 + len(prompt))  # glue

    async def events():
        async with r:  # glue: leaving without a record (a client gone) gives the estimate back
            async for event in model.stream(MODEL, 1024, messages):
                yield event.get("text", "")
            await r.record(anthropic_usage(event))  # glue: the last event says what was used

    return StreamingResponse(events(), media_type="text/plain", headers=r.headers)  # glue


@app.get("/model-calls")
async def model_calls():
    """For the load test: the calls the model completed (each must be recorded once)."""
    return {"completed": model.completed}
