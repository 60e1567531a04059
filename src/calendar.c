/*-------------------------------------------------------------------------
 *
 * calendar.c
 *		The calendar day and month in ai_ratelimit.timezone, and the windows
 *		a rule counts over.
 *
 * Days and months are local to ai_ratelimit.timezone; their boundaries are
 * computed with the server's time zone library (daylight saving
 * transitions included) and cached until the day ends.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "utils/builtins.h"
#include "utils/date.h"
#include "utils/datetime.h"
#include "utils/timestamp.h"

#include "calendar.h"

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

/* ---- the windows of rules ---- */

/* The sliding minute: what counts now leaves within 60 seconds. */
static void
ai_minute_at(TimestampTz now, const AiCalendar *cal, AiWindow *w)
{
	w->code = 0;
	w->start = now - 60 * USECS_PER_SEC;
	w->end = now + 60 * USECS_PER_SEC;	/* what counts now has left */
	w->first_day = cal->day - (now - 60 * USECS_PER_SEC < ai_local_midnight(cal->day) ? 1 : 0);
	w->end_day = cal->day + 1;
}

/*
 * A calendar hour is local: in a zone half an hour off UTC it starts at half
 * past.  The hour repeated when clocks go back is one window of two hours
 * (its counts are kept, never handed back).
 */
static void
ai_hour_at(TimestampTz now, const AiCalendar *cal, AiWindow *w)
{
	struct pg_tm tm;
	fsec_t		fsec;
	int			tz;

	if (timestamp2tm(now, &tz, &tm, &fsec, NULL, ai_timezone) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_DATETIME_VALUE_OUT_OF_RANGE),
				 errmsg("timestamp out of range")));
	w->code = cal->day * 24 + tm.tm_hour;
	tm.tm_min = 0;
	tm.tm_sec = 0;
	tz = DetermineTimeZoneOffset(&tm, ai_timezone);
	if (tm2timestamp(&tm, 0, &tz, &w->start) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_DATETIME_VALUE_OUT_OF_RANGE),
				 errmsg("timestamp out of range")));
	/* an hour that started before a change of offset: now is in it */
	if (w->start > now)
		w->start -= USECS_PER_HOUR;
	w->end = Min(w->start + USECS_PER_HOUR, cal->day_end);
	if (w->end <= now)
		w->end = now + 1;
	w->first_day = cal->day;
	w->end_day = cal->day + 1;
}

/* An hour's count is kept to the end of its day, which only keeps it longer. */
static bool
ai_hour_is_current(int32 code, const AiCalendar *cal)
{
	return code / 24 == cal->day;
}

static void
ai_day_at(TimestampTz now, const AiCalendar *cal, AiWindow *w)
{
	w->code = cal->day;
	w->start = ai_local_midnight(cal->day);
	w->end = cal->day_end;
	w->first_day = cal->day;
	w->end_day = cal->day + 1;
}

static bool
ai_day_is_current(int32 code, const AiCalendar *cal)
{
	return code == cal->day;
}

/* An ISO week, from Monday. */
static void
ai_week_at(TimestampTz now, const AiCalendar *cal, AiWindow *w)
{
	int32		monday = ai_week_of(cal->day);

	w->code = monday;
	w->start = ai_local_midnight(monday);
	w->end = ai_local_midnight(monday + 7);
	w->first_day = monday;
	w->end_day = monday + 7;
}

static bool
ai_week_is_current(int32 code, const AiCalendar *cal)
{
	return code == ai_week_of(cal->day);
}

static void
ai_month_at(TimestampTz now, const AiCalendar *cal, AiWindow *w)
{
	w->code = cal->month;
	w->start = cal->month_start;
	w->end = cal->month_end;
	w->first_day = cal->month_start_date;
	w->end_day = cal->month_end_date;
}

static bool
ai_month_is_current(int32 code, const AiCalendar *cal)
{
	return code == cal->month;
}

/*
 * Every window a rule may count over, by AiWindowKind.  The rule engine
 * knows a window only from here: a new calendar window is its value in
 * calendar.h, its entry and functions here, and its tests.
 */
typedef struct AiWindowDef
{
	const char *name;			/* ai_rules.window */
	bool		sliding;		/* counted in rings (rings.c), not by calendar code */
	bool		timed;			/* shorter than a day: its use is summed by time */
	/* the window at an instant (may raise an error) */
	void		(*at) (TimestampTz now, const AiCalendar *cal, AiWindow *w);
	/* may a count of window `code` still count on cal's day?  Arithmetic only */
	bool		(*is_current) (int32 code, const AiCalendar *cal);
} AiWindowDef;

static const AiWindowDef windows[AI_WIN_COUNT] = {
	[AI_WIN_MINUTE] = {"minute", true, true, ai_minute_at, NULL},
	[AI_WIN_HOUR] = {"hour", false, true, ai_hour_at, ai_hour_is_current},
	[AI_WIN_DAY] = {"day", false, false, ai_day_at, ai_day_is_current},
	[AI_WIN_WEEK] = {"week", false, false, ai_week_at, ai_week_is_current},
	[AI_WIN_MONTH] = {"month", false, false, ai_month_at, ai_month_is_current},
};

const char *
ai_window_name(AiWindowKind kind)
{
	return windows[kind].name;
}

bool
ai_window_parse(const char *name, AiWindowKind *kind)
{
	for (int k = 0; k < AI_WIN_COUNT; k++)
		if (strcmp(name, windows[k].name) == 0)
		{
			*kind = (AiWindowKind) k;
			return true;
		}
	return false;
}

bool
ai_window_is_sliding(AiWindowKind kind)
{
	return windows[kind].sliding;
}

bool
ai_window_is_timed(AiWindowKind kind)
{
	return windows[kind].timed;
}

bool
ai_window_is_current(AiWindowKind kind, int32 code, const AiCalendar *cal)
{
	return kind < AI_WIN_COUNT && windows[kind].is_current != NULL &&
		windows[kind].is_current(code, cal);
}

/* The window of the given kind that contains `now`. */
void
ai_window_at(AiWindowKind kind, TimestampTz now, AiWindow *w)
{
	AiCalendar	cal;

	ai_calendar_at(now, &cal);
	w->kind = kind;
	windows[kind].at(now, &cal, w);
}

/* The length of a window now, in seconds. */
int32
ai_window_secs(const AiWindow *w)
{
	return windows[w->kind].sliding ? 60 : ai_seconds_until(w->start, w->end);
}

/* ai_rules.window's CHECK constraint (1.9): is it a window of this table? */
PG_FUNCTION_INFO_V1(ai_window_known);

Datum
ai_window_known(PG_FUNCTION_ARGS)
{
	char	   *name = text_to_cstring(PG_GETARG_TEXT_PP(0));
	AiWindowKind kind;

	PG_RETURN_BOOL(ai_window_parse(name, &kind));
}
