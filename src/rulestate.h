/*-------------------------------------------------------------------------
 *
 * rulestate.h
 *		What the rules of ai_rules count for each user (rulestate.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef AI_RULESTATE_H_
#define AI_RULESTATE_H_

#include "calendar.h"
#include "config.h"
#include "reservations.h"
#include "rules.h"
#include "shmem.h"

/* One rule as one call uses it. */
typedef struct AiRuleUse
{
	const AiRule *rule;
	AiKey		key;			/* the rule's counters of this user */
	uint32		hashcode;
	AiWindow	win;			/* at the call's time */
	bool		exact;			/* cached spend: exact when prepared */
	int64		base;			/* otherwise: used, never lower than the truth */
} AiRuleUse;

/* The rules that apply to one check. */
typedef struct AiRuleSet
{
	int			n;
	AiRuleUse  *use;
	const char *model;			/* NULL: the check named none */
	bool		money;			/* a cents rule applies: estimates are held */
	bool		tokens;			/* a tokens rule applies: token estimates are held */
} AiRuleSet;

/* A refusal by a rule, numbers only (the caller holds the partition lock). */
typedef struct AiRuleRefusal
{
	int			index;			/* in the set */
	bool		never;			/* no retry can pass: the maximum is too low */
	bool		held_only;		/* only estimates in flight stand in the way */
	TimestampTz retry_at;
	int64		limit;
	int64		used;
	int64		held;
	AiEntry    *entry;			/* the rule's counters, or NULL */
	TimestampTz window_start;
} AiRuleRefusal;

/*
 * The rule that passed with the least room left for its maximum, after the
 * request (rate-limit headers: ai_limit_result.ratelimit).  index -1: none.
 */
typedef struct AiRuleRoom
{
	int			index;			/* in the set */
	int64		limit;
	int64		left;			/* what the maximum leaves after the request */
} AiRuleRoom;

/* Does `left` of `limit` leave less room than `best_left` of `best_limit`? */
static inline bool
ai_room_is_less(int64 limit, int64 left, int64 best_limit, int64 best_left)
{
	/* a choice between limits: the precision of a double is plenty */
	return (double) left * (double) best_limit < (double) best_left * (double) limit;
}

/* rulestate.c: several holders in one call */
extern void ai_rules_reserve_touches(int n);

/* rulestate.c: a check (decide.c) */
extern void ai_rules_prepare(AiRuleSet *rs, const AiUser *u, const char *plan,
							 const char *model, TimestampTz now, bool consume, bool defer);
extern bool ai_rules_still_exact(const AiRuleSet *rs, const AiEntry *user);
extern bool ai_rules_refuse(const AiRuleSet *rs, AiEntry *user, AiMoney est, int64 est_tokens,
							TimestampTz now, AiRuleRefusal *out, AiRuleRoom *room);
extern bool ai_rules_make_room(const AiRuleSet *rs, const AiUser *u, TimestampTz now);
extern void ai_rules_charge(const AiRuleSet *rs, AiEntry *holder, TimestampTz now,
							 int32 *first, int16 *n);
extern void ai_rules_hold(const AiRuleSet *rs, AiReservation *r, int64 est_tokens);
extern void ai_rules_hold_more(const AiRuleSet *rs, AiReservation *r, int64 est_tokens);
extern char *ai_rule_words(const AiRule *r);

/* rulestate.c: a record (usage.c) */
/* A budget alert a record fired on a rule of an account (1.8). */
typedef struct AiRuleAlert
{
	const AiRule *rule;
	int32		pct;
	AiMoney		after;			/* the rule's use with the record */
	TimestampTz window_start;
} AiRuleAlert;

typedef struct AiRuleRecord
{
	const AiUser *user;
	const char *model;
	bool		any;			/* some rule exists */
	int			n;				/* candidate rules */
	const AiRule **cand;
	int32	   *codes;			/* the calendar window of each at the record's time */
	TimestampTz *starts;		/* ... and its start */
	/* an account's alert thresholds (set after prepare), and what fired */
	int			nalerts;
	int32		alert_pct[AI_MAX_ALERTS];
	int			nfired;
	AiRuleAlert *fired;			/* room for n * AI_MAX_ALERTS */
} AiRuleRecord;
extern void ai_rules_record_prepare(AiRuleRecord *rr, const AiUser *u, const char *model,
									TimestampTz now);
extern void ai_rules_record_begin(AiRuleRecord *rr, AiEntry *user, TimestampTz now,
								  AiMoney cost, int64 tokens, uint32 seq_before,
								  int32 *first, int16 *n);

/* rulestate.c: the end of what a transaction took (xact.c) */
extern void ai_rules_check_undo(int32 first, int16 n);
extern void ai_rules_record_end(int32 first, int16 n, bool commit, AiEntry *user,
								uint32 seq_before);
extern void ai_rules_touches_done(void);

/* rulestate.c: operators and views */
extern void ai_rules_reset_user(const AiUser *u);

/* One rule's state for a user, for ai_explain_limits. */
typedef struct AiRuleState
{
	int64		used;
	int64		held;
	TimestampTz reset_at;		/* 0: nothing counts */
	int32		window_secs;	/* the window's length */
} AiRuleState;
extern void ai_rule_state(const AiRule *r, const AiUser *u, TimestampTz now, AiRuleState *st);

#endif							/* AI_RULESTATE_H_ */
