/*-------------------------------------------------------------------------
 *
 * windows.c
 *		Where the windows are computed: the burst buckets of the sliding
 *		window, and the calendar day and month in ai_ratelimit.timezone.
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
 * Calendar.  Days and months are local to ai_ratelimit.timezone; their
 * boundaries are computed with the server's time zone library (daylight
 * saving transitions included) and cached until the day ends.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "utils/date.h"
#include "utils/datetime.h"
#include "utils/timestamp.h"

#include "ai_ratelimit.h"

/* ---- calendar ---- */

static AiCalendar cal_cache;
static TimestampTz cal_day_start = DT_NOEND;
static pg_tz *cal_tz = NULL;

/* The instant of local midnight starting the given local day number. */
static TimestampTz
ai_local_midnight(int32 day)
{
	struct pg_tm tm;
	int			tzoff;
	TimestampTz result;

	memset(&tm, 0, sizeof(tm));
	j2date(day + POSTGRES_EPOCH_JDATE, &tm.tm_year, &tm.tm_mon, &tm.tm_mday);
	tzoff = DetermineTimeZoneOffset(&tm, ai_timezone);
	if (tm2timestamp(&tm, 0, &tzoff, &result) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_DATETIME_VALUE_OUT_OF_RANGE),
				 errmsg("timestamp out of range")));
	return result;
}

/* Fill the month fields of cal for the month containing local day `day`. */
static void
ai_fill_month(int32 day, AiCalendar *cal)
{
	int			y,
				m,
				d;

	j2date(day + POSTGRES_EPOCH_JDATE, &y, &m, &d);
	cal->month = y * 12 + (m - 1);
	cal->month_start_date = date2j(y, m, 1) - POSTGRES_EPOCH_JDATE;
	if (m == 12)
		cal->month_end_date = date2j(y + 1, 1, 1) - POSTGRES_EPOCH_JDATE;
	else
		cal->month_end_date = date2j(y, m + 1, 1) - POSTGRES_EPOCH_JDATE;
}

/* The local day, month and their boundaries at `now`. */
void
ai_calendar_at(TimestampTz now, AiCalendar *cal)
{
	struct pg_tm tm;
	fsec_t		fsec;
	int			tz;
	int32		day;

	if (cal_tz == ai_timezone && now >= cal_day_start && now < cal_cache.day_end)
	{
		*cal = cal_cache;
		return;
	}

	if (timestamp2tm(now, &tz, &tm, &fsec, NULL, ai_timezone) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_DATETIME_VALUE_OUT_OF_RANGE),
				 errmsg("timestamp out of range")));
	day = date2j(tm.tm_year, tm.tm_mon, tm.tm_mday) - POSTGRES_EPOCH_JDATE;

	cal->day = day;
	cal->day_date = day;
	cal->day_end = ai_local_midnight(day + 1);
	ai_fill_month(day, cal);
	cal->month_start = ai_local_midnight(cal->month_start_date);
	cal->month_end = ai_local_midnight(cal->month_end_date);

	cal_cache = *cal;
	cal_day_start = ai_local_midnight(day);
	cal_tz = ai_timezone;
}

/* The month containing a local date (for ai_monthly_spend). */
void
ai_calendar_for_date(DateADT d, AiCalendar *cal)
{
	memset(cal, 0, sizeof(*cal));
	cal->day = d;
	cal->day_date = d;
	ai_fill_month(d, cal);
}

/* Seconds from `from` to `to`, rounded up, at least 1. */
int32
ai_seconds_until(TimestampTz from, TimestampTz to)
{
	int64		us = to - from;
	int64		s;

	if (us <= 0)
		return 1;
	s = (us + USECS_PER_SEC - 1) / USECS_PER_SEC;
	return (int32) Min(s, PG_INT32_MAX);
}

/* ---- burst buckets ---- */

StaticAssertDecl(AI_BURST_RING >= AI_BURST_SPAN + 2,
				 "the burst ring must hold every bucket a window can overlap");

/* Bucket width in microseconds for a window in milliseconds. */
int64
ai_burst_width(int32 window_ms)
{
	int64		w = (int64) window_ms * 1000;

	return Max((w + AI_BURST_SPAN - 1) / AI_BURST_SPAN, 1);
}

static inline int64
ai_floor_div(int64 a, int64 b)
{
	int64		q = a / b;

	if ((a % b != 0) && ((a < 0) != (b < 0)))
		q--;
	return q;
}

/* Lowest bucket index that still counts at `now`. */
static inline int64
ai_burst_lowest(AiEntry *e, TimestampTz now)
{
	int64		g = ai_burst_width(e->burst_window_ms);
	int64		lowest = ai_floor_div(now - (int64) e->burst_window_ms * 1000, g);

	return Max(lowest, e->burst_head - AI_BURST_RING + 1);
}

/*
 * Allowed requests counted against a check at `now`.
 * Caller must hold the entry's partition lock.
 */
uint32
ai_burst_count(AiEntry *e, TimestampTz now)
{
	uint64		sum = 0;

	if (e->burst_window_ms <= 0)
		return 0;
	for (int64 j = ai_burst_lowest(e, now); j <= e->burst_head; j++)
		sum += e->burst[j % AI_BURST_RING];
	return (uint32) Min(sum, PG_UINT32_MAX);
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
	int64		g = ai_burst_width(window_ms);
	int64		b = ai_floor_div(now, g);

	if (e->burst_window_ms != window_ms)
	{
		uint32		live = ai_burst_count(e, now);

		memset(e->burst, 0, sizeof(e->burst));
		e->burst_window_ms = window_ms;
		e->burst_head = b;
		e->burst[b % AI_BURST_RING] = live;
		return;
	}

	if (b <= e->burst_head)
		return;					/* same bucket, or the clock went back */
	if (b - e->burst_head >= AI_BURST_RING)
		memset(e->burst, 0, sizeof(e->burst));
	else
		for (int64 j = e->burst_head + 1; j <= b; j++)
			e->burst[j % AI_BURST_RING] = 0;
	e->burst_head = b;
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
	int64		g = ai_burst_width(e->burst_window_ms);
	int64		lowest = ai_burst_lowest(e, now);
	uint64		above = ai_burst_count(e, now);

	/* drop buckets from the oldest until fewer than limit remain */
	for (int64 j = lowest; j <= e->burst_head; j++)
	{
		if (above < limit)
			return j * g + (int64) e->burst_window_ms * 1000;
		above -= e->burst[j % AI_BURST_RING];
	}
	return (e->burst_head + 1) * g + (int64) e->burst_window_ms * 1000;
}

/*
 * When the oldest counted burst bucket leaves the window: the time at which
 * burst_used next goes down.  Caller must hold the entry's partition lock.
 */
TimestampTz
ai_burst_oldest_leaves(AiEntry *e, TimestampTz now)
{
	int64		g = ai_burst_width(e->burst_window_ms);

	for (int64 j = ai_burst_lowest(e, now); j <= e->burst_head; j++)
		if (e->burst[j % AI_BURST_RING] > 0)
			return j * g + (int64) e->burst_window_ms * 1000;
	return 0;
}

/* ---- tokens per minute ---- */

StaticAssertDecl(AI_TOKEN_RING >= AI_TOKEN_SPAN + 1 &&
				 AI_TOKEN_SPAN * AI_TOKEN_BUCKET_SECS == 60,
				 "the token ring must cover a minute");

static inline int32
ai_token_bucket_of(TimestampTz t)
{
	return (int32) (t / (AI_TOKEN_BUCKET_SECS * USECS_PER_SEC));
}

/* Move the token ring to now.  Caller must hold the partition lock exclusively. */
void
ai_tokens_advance(AiEntry *e, TimestampTz now)
{
	int32		b = ai_token_bucket_of(now);

	if (b <= e->tokens_head)
		return;
	if (b - e->tokens_head >= AI_TOKEN_RING)
		memset(e->tokens, 0, sizeof(e->tokens));
	else
		for (int32 j = e->tokens_head + 1; j <= b; j++)
			e->tokens[j % AI_TOKEN_RING] = 0;
	e->tokens_head = b;
}

/*
 * Tokens counted in the minute ending now: every bucket that could hold a
 * token of (now - 60 s, now].  Caller must hold the partition lock.
 */
uint64
ai_tokens_count(AiEntry *e, TimestampTz now)
{
	int32		lowest = ai_token_bucket_of(now - 60 * USECS_PER_SEC);
	uint64		sum = 0;

	lowest = Max(lowest, e->tokens_head - AI_TOKEN_RING + 1);
	for (int32 j = lowest; j <= e->tokens_head; j++)
		sum += e->tokens[j % AI_TOKEN_RING];
	return sum;
}

/* Earliest time at which `need` more tokens fit under `limit`. */
TimestampTz
ai_tokens_retry_at(AiEntry *e, uint64 limit, uint64 need, TimestampTz now)
{
	int32		lowest = ai_token_bucket_of(now - 60 * USECS_PER_SEC);
	uint64		above = ai_tokens_count(e, now);
	int64		width = AI_TOKEN_BUCKET_SECS * USECS_PER_SEC;

	lowest = Max(lowest, e->tokens_head - AI_TOKEN_RING + 1);
	for (int32 j = lowest; j <= e->tokens_head; j++)
	{
		if (above + need <= limit)
			return (int64) j * width + 60 * USECS_PER_SEC;
		above -= e->tokens[j % AI_TOKEN_RING];
	}
	return (int64) (e->tokens_head + 1) * width + 60 * USECS_PER_SEC;
}
