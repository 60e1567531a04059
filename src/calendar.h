/*-------------------------------------------------------------------------
 *
 * calendar.h
 *		Calendar days and months in ai_ratelimit.timezone (calendar.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef AI_CALENDAR_H_
#define AI_CALENDAR_H_

#include "base.h"
#include "money.h"
#include "settings.h"

/* calendar.c */
typedef struct AiCalendar
{
	int32		day;			/* local day number (days since 2000-01-01) */
	TimestampTz day_end;		/* next local midnight */
	int32		month;			/* local month number (year * 12 + month - 1) */
	TimestampTz month_start;
	TimestampTz month_end;		/* first instant of next month */
	DateADT		month_start_date;
	DateADT		month_end_date;
	DateADT		day_date;
} AiCalendar;

extern void ai_calendar_at(TimestampTz now, AiCalendar *cal);
extern void ai_calendar_for_date(DateADT d, AiCalendar *cal);
extern int32 ai_seconds_until(TimestampTz from, TimestampTz to);

/*
 * The windows a rule counts over (ai_rules.window): a sliding minute, or a
 * calendar hour, day, ISO week (from Monday) or month, local to
 * ai_ratelimit.timezone.  Each is an entry of calendar.c's table, which is
 * all the rule engine knows of it.  The values are saved with a rule's
 * counters: a new window comes before AI_WIN_COUNT, none is renumbered.
 */
typedef enum AiWindowKind
{
	AI_WIN_MINUTE = 0,
	AI_WIN_HOUR,
	AI_WIN_DAY,
	AI_WIN_WEEK,
	AI_WIN_MONTH,
	AI_WIN_COUNT
} AiWindowKind;

/* One window at an instant. */
typedef struct AiWindow
{
	AiWindowKind kind;
	int32		code;			/* names the calendar window; 0 for the minute */
	TimestampTz start;			/* the minute: now less 60 seconds */
	TimestampTz end;			/* the minute: when what counts now has left */
	DateADT		first_day;		/* local days it touches: [first_day, end_day) */
	DateADT		end_day;
} AiWindow;

extern void ai_window_at(AiWindowKind kind, TimestampTz now, AiWindow *w);
extern int32 ai_window_secs(const AiWindow *w);
extern bool ai_window_is_sliding(AiWindowKind kind);
extern bool ai_window_is_timed(AiWindowKind kind);
extern bool ai_window_is_current(AiWindowKind kind, int32 code, const AiCalendar *cal);

/* The local day number of the Monday that starts the ISO week of a day. */
static inline int32
ai_week_of(int32 day)
{
	/* day 0, 2000-01-01, was a Saturday: 5 days after a Monday */
	return day - (int32) ((((int64) day % 7) + 7 + 5) % 7);
}
extern const char *ai_window_name(AiWindowKind kind);
extern bool ai_window_parse(const char *name, AiWindowKind *kind);

#endif							/* AI_CALENDAR_H_ */
