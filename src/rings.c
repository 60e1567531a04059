/*-------------------------------------------------------------------------
 *
 * rings.c
 *		Sliding windows cut into buckets: the burst window and tokens per
 *		minute.
 *
 * Burst window.  A window of W microseconds is cut into AI_BURST_SPAN
 * buckets of width g = ceil(W / AI_BURST_SPAN).  An allowed request is
 * counted in the bucket floor(t / g) of its time t.  A check at time `now`
 * counts every bucket that could hold a request newer than now - W, that is
 * buckets floor((now - W) / g) .. floor(now / g).  Counting whole buckets
 * can only count more than the requests inside (now - W, now], never fewer,
 * so no span of W ever holds more than burst_limit allowed requests; a
 * request may be refused for at most one bucket width (W / 20) longer than
 * an exact log would refuse it.  The answer is deterministic, and
 * retry_after is the exact time at which the oldest counted buckets leave
 * the window far enough for one more request.
 *
 * Tokens per minute: the same, with AI_TOKEN_SPAN buckets of
 * AI_TOKEN_BUCKET_SECS.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "rings.h"
#include "shmem.h"

StaticAssertDecl(AI_BURST_RING >= AI_BURST_SPAN + 2,
				 "the burst ring must hold every bucket a window can overlap");
StaticAssertDecl(AI_TOKEN_RING >= AI_TOKEN_SPAN + 1 &&
				 AI_TOKEN_SPAN * AI_TOKEN_BUCKET_SECS == 60,
				 "the token ring must cover a minute");

/*
 * A ring of counting buckets: bucket j covers [j * width, (j + 1) * width)
 * and lives in slot j % len; head is the newest bucket.  A window of
 * `window` microseconds ending at `now` counts every bucket that could hold
 * an instant of (now - window, now].
 */
typedef struct AiRing
{
	uint32	   *slot;
	int			len;
	int64		head;
	int64		width;
	int64		window;
} AiRing;

static inline int64
ai_floor_div(int64 a, int64 b)
{
	int64		q = a / b;

	if ((a % b != 0) && ((a < 0) != (b < 0)))
		q--;
	return q;
}

/* Lowest bucket that still counts at `now`. */
static inline int64
ai_ring_lowest(const AiRing *r, TimestampTz now)
{
	return Max(ai_floor_div(now - r->window, r->width), r->head - r->len + 1);
}

static uint64
ai_ring_sum(const AiRing *r, TimestampTz now)
{
	uint64		sum = 0;

	for (int64 j = ai_ring_lowest(r, now); j <= r->head; j++)
		sum += r->slot[j % r->len];
	return sum;
}

/* Empty the buckets after head up to bucket b; returns the new head. */
static int64
ai_ring_clear_to(const AiRing *r, int64 b)
{
	if (b <= r->head)
		return r->head;			/* same bucket, or the clock went back */
	if (b - r->head >= r->len)
		memset(r->slot, 0, sizeof(uint32) * r->len);
	else
		for (int64 j = r->head + 1; j <= b; j++)
			r->slot[j % r->len] = 0;
	return b;
}

/*
 * When the oldest bucket that still counts leaves the window (bucket j
 * counts while now - window < (j + 1) * width); 0 when none counts.
 */
static TimestampTz
ai_ring_oldest_leaves(const AiRing *r, TimestampTz now)
{
	for (int64 j = ai_ring_lowest(r, now); j <= r->head; j++)
		if (r->slot[j % r->len] > 0)
			return (j + 1) * r->width + r->window;
	return 0;
}

/*
 * Earliest time at which `need` more fit under `limit`, if nothing else is
 * counted before: drop buckets from the oldest until they do.
 */
static TimestampTz
ai_ring_fit_at(const AiRing *r, uint64 limit, uint64 need, TimestampTz now)
{
	uint64		above = ai_ring_sum(r, now);

	for (int64 j = ai_ring_lowest(r, now); j <= r->head; j++)
	{
		if (above + need <= limit)
			return j * r->width + r->window;
		above -= r->slot[j % r->len];
	}
	return (r->head + 1) * r->width + r->window;
}

/* Bucket width in microseconds for a burst window in milliseconds. */
static int64
ai_burst_width(int32 window_ms)
{
	int64		w = (int64) window_ms * 1000;

	return Max((w + AI_BURST_SPAN - 1) / AI_BURST_SPAN, 1);
}

static inline AiRing
ai_burst_ring(AiEntry *e)
{
	AiRing		r = {e->burst, AI_BURST_RING, e->burst_head,
		ai_burst_width(e->burst_window_ms), (int64) e->burst_window_ms * 1000};

	return r;
}

static inline AiRing
ai_token_ring(AiEntry *e)
{
	AiRing		r = {e->tokens, AI_TOKEN_RING, e->tokens_head,
		AI_TOKEN_BUCKET_SECS * USECS_PER_SEC, 60 * USECS_PER_SEC};

	return r;
}

/*
 * Allowed requests counted against a check at `now`.
 * Caller must hold the entry's partition lock.
 */
uint32
ai_burst_count(AiEntry *e, TimestampTz now)
{
	AiRing		r;

	if (e->burst_window_ms <= 0)
		return 0;
	r = ai_burst_ring(e);
	return (uint32) Min(ai_ring_sum(&r, now), PG_UINT32_MAX);
}

/*
 * Move the ring to `now` and to the plan's window.  When the plan's window
 * changed, whatever still counts is kept, all in the newest bucket, so a
 * change of window never lets more requests through.
 * Caller must hold the entry's partition lock exclusively.
 */
void
ai_burst_advance(AiEntry *e, int32 window_ms, TimestampTz now)
{
	int64		b = ai_floor_div(now, ai_burst_width(window_ms));
	AiRing		r;

	if (e->burst_window_ms != window_ms)
	{
		uint32		live = ai_burst_count(e, now);

		memset(e->burst, 0, sizeof(e->burst));
		e->burst_window_ms = window_ms;
		e->burst_head = b;
		e->burst[b % AI_BURST_RING] = live;
		return;
	}
	r = ai_burst_ring(e);
	e->burst_head = ai_ring_clear_to(&r, b);
}

/* The bucket a request allowed now is counted in (after advance). */
int64
ai_burst_bucket(AiEntry *e, TimestampTz now)
{
	return e->burst_head;
}

/*
 * Earliest time at which fewer than `limit` requests count, if nothing else
 * is allowed before.  Caller must hold the entry's partition lock and have
 * advanced the ring.
 */
TimestampTz
ai_burst_retry_at(AiEntry *e, uint32 limit, TimestampTz now)
{
	AiRing		r = ai_burst_ring(e);

	return ai_ring_fit_at(&r, limit, 1, now);
}

/*
 * When every place counted in the burst window has left it.  Bucket j
 * counts while now - window < (j + 1) * width.  Caller must hold the
 * entry's partition lock.
 */
TimestampTz
ai_burst_all_leave(AiEntry *e)
{
	AiRing		r = ai_burst_ring(e);

	return (r.head + 1) * r.width + r.window;
}

/*
 * When the oldest counted burst bucket leaves the window: the time at which
 * burst_used next goes down; 0 when nothing counts.  Caller must hold the
 * entry's partition lock.
 */
TimestampTz
ai_burst_oldest_leaves(AiEntry *e, TimestampTz now)
{
	AiRing		r = ai_burst_ring(e);

	return ai_ring_oldest_leaves(&r, now);
}

/*
 * When the oldest tokens counted in the last minute leave it; 0 when none
 * count.  Caller must hold the entry's partition lock.
 */
TimestampTz
ai_tokens_oldest_leave(AiEntry *e, TimestampTz now)
{
	AiRing		r = ai_token_ring(e);

	return ai_ring_oldest_leaves(&r, now);
}

/* Move the token ring to now.  Caller must hold the partition lock exclusively. */
void
ai_tokens_advance(AiEntry *e, TimestampTz now)
{
	AiRing		r = ai_token_ring(e);

	e->tokens_head = (int32) ai_ring_clear_to(&r, now / r.width);
}

/*
 * Tokens counted in the minute ending now (recorded tokens).  Caller must
 * hold the partition lock.
 */
uint64
ai_tokens_count(AiEntry *e, TimestampTz now)
{
	AiRing		r = ai_token_ring(e);

	return ai_ring_sum(&r, now);
}

/* Earliest time at which `need` more tokens fit under `limit`. */
TimestampTz
ai_tokens_retry_at(AiEntry *e, uint64 limit, uint64 need, TimestampTz now)
{
	AiRing		r = ai_token_ring(e);

	return ai_ring_fit_at(&r, limit, need, now);
}

/* ---- taking and giving back: every counter of a window is one of these ---- */

/*
 * Count a request allowed now in the burst ring, which the caller advanced;
 * returns its bucket, for ai_burst_give_back.  Caller holds the partition
 * lock exclusively.
 */
int64
ai_burst_take(AiEntry *e)
{
	e->burst[e->burst_head % AI_BURST_RING]++;
	return e->burst_head;
}

/* Give back a request counted in bucket b (-1: none), if it still counts. */
void
ai_burst_give_back(AiEntry *e, int64 b)
{
	if (b >= 0 && b <= e->burst_head && b > e->burst_head - AI_BURST_RING &&
		e->burst[b % AI_BURST_RING] > 0)
		e->burst[b % AI_BURST_RING]--;
}

/*
 * Count tokens recorded now in the token ring (after ai_tokens_advance), at
 * most what the bucket can still hold; returns what was counted, and its
 * bucket in *bucket.
 */
uint32
ai_tokens_take(AiEntry *e, uint64 tokens, int32 *bucket)
{
	uint32	   *b = &e->tokens[e->tokens_head % AI_TOKEN_RING];
	uint32		n = (uint32) Min(tokens, (uint64) (PG_UINT32_MAX - *b));

	*b += n;
	*bucket = e->tokens_head;
	return n;
}

/* Give back n tokens counted in bucket b (-1: none), if it is still in the ring. */
void
ai_tokens_give_back(AiEntry *e, int32 b, uint32 n)
{
	if (b >= 0 && b <= e->tokens_head && b > e->tokens_head - AI_TOKEN_RING)
		e->tokens[b % AI_TOKEN_RING] -= Min(n, e->tokens[b % AI_TOKEN_RING]);
}

/*
 * The count of a calendar window (a day, or a rule's hour, week or month):
 * the window's code and the requests counted in it (day, daily_count).
 * Count one request in window `code`; a new window starts from zero.
 */
void
ai_count_take(AiEntry *e, int32 code)
{
	if (e->day != code)
	{
		e->day = code;
		e->daily_count = 0;
	}
	e->daily_count++;
}

/* Give back a request counted in window `code` (-1: none), if it still counts. */
void
ai_count_give_back(AiEntry *e, int32 code)
{
	if (code >= 0 && e->day == code && e->daily_count > 0)
		e->daily_count--;
}
