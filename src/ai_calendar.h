/*-------------------------------------------------------------------------
 *
 * ai_calendar.h
 *		Calendar days and months in ai_ratelimit.timezone (calendar.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef AI_CALENDAR_H_
#define AI_CALENDAR_H_

#include "ai_ratelimit.h"

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

#endif							/* AI_CALENDAR_H_ */
