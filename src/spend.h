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
#include "sweep.h"

/*
 * One load of a cached use from the tables without missing a record in
 * flight (ai_load_use): a user's spend of a month here, a calendar rule's
 * use of a user or an account in rulestate.c.  The steps that differ are
 * the caller's; every one but sum runs under the holder's partition lock.
 */
typedef struct AiLoad AiLoad;
struct AiLoad
{
	const AiUser *holder;		/* whose records the use counts */
	TimestampTz now;
	bool		create;			/* make the holder's entry (a peek makes none) */
	bool		cents;			/* a cost: records in flight bound the use */
	int			own;			/* this backend's records in flight for the holder,
								 * which the sum sees */
	uint32		gen;			/* usage_gen when the load began */
	/* exact already (nothing to read), or made ready to be loaded */
	bool		(*cached) (AiLoad *l, AiEntry *holder);
	/* what moves when a record of the holder starts or ends */
	int64		(*stamp) (AiLoad *l, const AiEntry *holder);
	/* the use in the tables; no lock held */
	int64		(*sum) (AiLoad *l);
	/* optional, first after the sum: make what store needs (may release the lock a moment) */
	void		(*make) (AiLoad *l);
	/* keep the exact sum; false when there is nowhere to keep it */
	bool		(*store) (AiLoad *l, AiEntry *holder, int64 sum);
	void	   *arg;
};

typedef enum AiLoadResult
{
	AI_LOAD_EXACT,				/* the cached use is exact */
	AI_LOAD_BOUND,				/* *bound: never lower than the truth, for this call */
	AI_LOAD_MOVED				/* not a cost, and records moved: load again */
} AiLoadResult;

/* spend.c */
extern AiLoadResult ai_load_use(AiLoad *l, int64 *bound);
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
