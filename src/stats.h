/*-------------------------------------------------------------------------
 *
 * stats.h
 *		Counts of allowed and refused requests per plan (stats.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef AI_STATS_H_
#define AI_STATS_H_

#include "base.h"
#include "money.h"
#include "settings.h"

typedef struct AiStats AiStats;

/* Outcomes counted per plan (stats.c). */
typedef enum AiOutcome
{
	AI_OUT_ALLOWED = 0,
	AI_OUT_BURST,
	AI_OUT_DAILY,
	AI_OUT_BUDGET,
	AI_OUT_TOKENS,
	AI_OUT_BLOCKED,
	AI_OUT_RULE,				/* a rule of ai_rules on the plan or the user */
	AI_OUT_ACCOUNT,				/* a rule on an account the check charges */
	AI_OUT_MEMBER,				/* a rule on the user as a member of an account */
	AI_OUT_COUNT
} AiOutcome;

struct AiStats
{
	Oid			dbid;
	char		plan[NAMEDATALEN * 2];	/* "" for the overflow slot */
	pg_atomic_uint64 count[AI_OUT_COUNT];
};

#define AI_MAX_STATS			512
#define AI_STATS_OVERFLOW		0	/* the slot of plans that did not fit */

extern AiStats *ai_stats;

/* stats.c */
extern Size ai_stats_size(void);
extern void ai_stats_init(bool found);
extern AiStats *ai_stats_for(const char *plan);
extern void ai_stats_reset(void);
extern const char *ai_outcome_name(AiOutcome o);

#endif							/* AI_STATS_H_ */
