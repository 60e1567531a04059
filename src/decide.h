/*-------------------------------------------------------------------------
 *
 * decide.h
 *		The decision of a check, layer by layer (decide.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef AI_DECIDE_H_
#define AI_DECIDE_H_

#include "config.h"
#include "shmem.h"
#include "stats.h"

/* decide.c */

/*
 * The numbers of one layer, for a program to act on: its limit, what is
 * used and what requests in flight hold, in what the layer counts.
 */
typedef struct AiFacts
{
	bool		known;			/* false: no numbers (allowed, or a block) */
	bool		money;			/* money units (the budget), else requests or tokens */
	int64		limit;
	int64		used;
	int64		held;			/* the budget's open reservations; 0 elsewhere */
} AiFacts;

/*
 * The limit a check's answer speaks of in rate-limit headers
 * (ai_limit_result.ratelimit and ratelimit_policy): for an allowed check
 * the one left with the least room after it, for a refusal the refusing
 * one.  Named by its layer, or by its rule of ai_rules.
 */
typedef struct AiStanding
{
	bool		known;
	const char *layer;			/* burst, daily, tokens, monthly_budget; NULL: a rule */
	int32		rule_id;
	int			unit;			/* an AiMetric: requests, tokens or cents (money units) */
	int64		limit;
	int64		left;			/* what the limit leaves (after an allowed request) */
	TimestampTz reset_at;		/* when it is whole again, or a retry may pass */
	TimestampTz at;				/* the decision's time, which reset_at is counted from */
	int32		window_secs;
} AiStanding;

typedef struct AiDecision
{
	bool		allowed;
	const char *limited_by;		/* NULL, or the refusing layer's name */
	AiOutcome	outcome;
	char	   *error;
	int32		retry_after;	/* seconds, when denied; -1: a retry cannot succeed */
	bool		retryable;		/* denied: can a retry succeed, in this window or later */
	AiFacts		facts;			/* denied: the refusing layer's numbers */
	bool		has_remaining;
	int32		remaining;
	TimestampTz reset_at;
	bool		has_reset_at;
	int64		reservation_id;	/* 0: none */
	AiStanding	standing;
} AiDecision;

extern void ai_decide(const AiUser *u, const AiPlan *plan, const char *model,
					  AiMoney estimate, bool has_estimate, int64 est_tokens,
					  bool consume, AiDecision *d);
extern void ai_reset_user(const AiUser *u);

/* One layer of a user's limits now, for rate-limit headers (ai_limit_state). */
typedef struct AiLayerState
{
	const char *layer;			/* blocked, burst, daily, tokens, monthly_budget */
	AiFacts		facts;			/* none for a block */
	int64		remaining;
	TimestampTz reset_at;		/* 0: nothing counts, nothing to reset */
	int32		window_secs;
} AiLayerState;

#define AI_MAX_LAYERS			5
extern int	ai_layer_states(const AiUser *u, const AiPlan *plan, AiLayerState *out);

#endif							/* AI_DECIDE_H_ */
