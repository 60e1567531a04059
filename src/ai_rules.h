/*-------------------------------------------------------------------------
 *
 * ai_rules.h
 *		The rules of ai_rules, cached per backend (rules.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef AI_RULES_H_
#define AI_RULES_H_

#include "ai_calendar.h"
#include "ai_shmem.h"

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

typedef struct AiRule
{
	int32		id;				/* ai_rules.rule_id */
	bool		user_scope;		/* scope 'user'; otherwise 'plan' */
	char	   *scope_id;
	char	   *model;			/* as written: '*', a name or a prefix with '*' */
	AiModelMatch match;
	int			prefix_len;		/* AI_MODELS_PREFIX: bytes before the '*' */
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
extern bool ai_rule_applies(const AiRule *r, const char *plan, const AiUser *u);
extern bool ai_rule_matches_model(const AiRule *r, const char *model);
extern const char *ai_metric_name(AiMetric m);

#endif							/* AI_RULES_H_ */
