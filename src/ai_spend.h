/*-------------------------------------------------------------------------
 *
 * ai_spend.h
 *		A user's spend of a month: from the tables, cached exact (spend.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef AI_SPEND_H_
#define AI_SPEND_H_

#include "ai_calendar.h"
#include "ai_shmem.h"

/* spend.c */
extern bool ai_ensure_spend(const AiUser *u, const AiCalendar *cal, TimestampTz now,
							bool create, AiMoney *fallback);
extern Datum ai_spend_in_month(const char *user_id, DateADT month);
extern void ai_resv_drop_settled(const AiUser *u);
extern void ai_spend_init(void);
extern void ai_spend_row_written(const AiKey *key);

#endif							/* AI_SPEND_H_ */
