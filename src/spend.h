/*-------------------------------------------------------------------------
 *
 * spend.h
 *		A user's spend of a month: from the tables, cached exact (spend.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef AI_SPEND_H_
#define AI_SPEND_H_

#include "calendar.h"
#include "shmem.h"

/* spend.c */
extern bool ai_ensure_spend(const AiUser *u, const AiCalendar *cal, TimestampTz now,
							bool create, AiMoney *fallback);
extern Datum ai_spend_in_month(const char *user_id, DateADT month);
extern void ai_resv_drop_settled(const AiUser *u);
extern bool ai_usage_of_reservation(const AiUser *u, int64 id, Datum *cost);
extern void ai_spend_init(void);
extern void ai_spend_row_written(const AiKey *key);

/* Which models a sum of use counts (ai_usage_sum_sql). */
typedef enum AiModelCond
{
	AI_MODEL_ANY = 0,
	AI_MODEL_EXACT,				/* $6 is the model: it and its dated names */
	AI_MODEL_PREFIX				/* $6 is a prefix of the model */
} AiModelCond;
extern char *ai_usage_sum_sql(const char *x, const char *x_totals, const char *x_archive,
							  AiModelCond model, bool timed, bool minute);
extern char *ai_account_sum_sql(const char *x, const char *x_archive, AiModelCond model,
								bool timed, bool minute, bool member);

#endif							/* AI_SPEND_H_ */
