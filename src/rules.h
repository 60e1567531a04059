/*-------------------------------------------------------------------------
 *
 * rules.h
 *		The rules of ai_rules, cached per backend (rules.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef AI_RULES_H_
#define AI_RULES_H_

#include "accounts.h"
#include "calendar.h"
#include "shmem.h"

/* What a rule counts (ai_rules.metric). */
typedef enum AiMetric
{
	AI_METRIC_REQUESTS = 0,		/* checks allowed, counted by the check */
	AI_METRIC_TOKENS,			/* tokens recorded, and estimates in flight */
	AI_METRIC_CENTS				/* cost recorded, and estimates in flight */
} AiMetric;

/* Which models a rule applies to (ai_rules.model). */
typedef enum AiModelMatch
{
	AI_MODELS_ALL = 0,			/* '*' */
	AI_MODELS_EXACT,			/* one name */
	AI_MODELS_PREFIX			/* 'claude-opus-*': every name that starts so */
} AiModelMatch;

/* Whom a rule binds (ai_rules.scope); the values name the rule's counters. */
typedef enum AiScope
{
	AI_SCOPE_PLAN = 0,			/* every user checked under the plan */
	AI_SCOPE_USER = 1,			/* one user */
	AI_SCOPE_ACCOUNT = 2,		/* the sum over an account and the accounts below it */
	AI_SCOPE_MEMBER = 3			/* one user (member_id) inside one account */
} AiScope;

/* Does the rule's use depend on the account tree (accounts.c)? */
#define AI_SCOPE_IN_TREE(s)		((s) >= AI_SCOPE_ACCOUNT)

typedef struct AiRule
{
	int32		id;				/* ai_rules.rule_id */
	AiScope		scope;
	char	   *scope_id;		/* the plan, user or account */
	char	   *member_id;		/* AI_SCOPE_MEMBER: the user; otherwise NULL */
	char	   *model;			/* as written: '*', a name or a prefix with '*' */
	AiModelMatch match;
	int			prefix_len;		/* bytes of the name (before the '*' of a prefix) */
	AiMetric	metric;
	AiWindowKind window;
	int64		max;			/* requests or tokens; cents in money units */
	uint64		sig;			/* names the rule's counters of a user (rulestate.c) */
	int32		revision;		/* ai_rules.revision: new at every insert and update */
} AiRule;

/* rules.c */
extern int	ai_rules_count(void);
extern int32 ai_rules_known_mark(void);
extern bool ai_rules_mark_knows(int32 mark, const AiRule *r);
extern int	ai_rules_binding(const char *plan, const AiUser *u, const AiRule ***list);
extern const AiRule *ai_rule_at(int i);
extern int	ai_rules_for_record(const AiUser *u, const AiRule ***list);
extern bool ai_rule_applies(const AiRule *r, const char *plan, const AiUser *u);
extern bool ai_rule_matches_model(const AiRule *r, const char *model);

/* A budget: cents over a calendar day, week or month (spent is spent until it ends). */
#define ai_rule_is_budget(r) \
	((r)->metric == AI_METRIC_CENTS && !ai_window_is_timed((r)->window))
extern const char *ai_metric_name(AiMetric m);
extern const char *ai_scope_name(AiScope s);

#endif							/* AI_RULES_H_ */
