/*-------------------------------------------------------------------------
 *
 * rules.c
 *		The rules of ai_rules (limits as data), read once per change and
 *		kept in each backend.
 *
 * A rule limits what one plan's users, or one user, may use of some models
 * (all of them, one, or every name with a prefix), counted in requests,
 * tokens or cents, over a window (calendar.c).  This file knows which
 * rules exist and which apply to a call; rulestate.c counts them.
 *
 * The rules are read again after a change to ai_rules: in the changing
 * transaction from its next command, elsewhere from the first call after
 * its commit (AiTableCache, config.c).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "common/hashfn.h"
#include "executor/spi.h"
#include "utils/builtins.h"
#include "utils/memutils.h"

#include "config.h"
#include "extension.h"
#include "rules.h"
#include "shmem.h"

static MemoryContext rules_cxt = NULL;
static AiRule *rules = NULL;	/* ordered by scope, scope_id, rule_id */
static int	nrules = 0;
static int	maxrules = 0;
static AiTableCache rules_read = AI_TABLE_CACHE("ai_rules");
static uint64 rules_loads = 0;	/* times the rules were read */

/*
 * The rules of one plan, user or account: rules[start .. start + n), found
 * by "p:", "u:", "a:" (the account's rules) or "m:" (rules on members of
 * the account) and the name, so that a check looks at its own rules only.
 */
typedef struct AiRuleGroup
{
	char		key[AI_MAX_USER_ID_LEN + 3];
	int			start;
	int			n;
} AiRuleGroup;

static HTAB *rule_groups = NULL;
static int32 max_revision = 0;	/* the highest revision of the cached rules */
static bool have_user_rules = false;
static bool have_member_rules = false;
static const AiRule **plan_amounts = NULL;	/* the plans' rules of tokens or cents */
static int	nplan_amounts = 0;

/* Group key of a scope: "p:plan", "u:user", "a:account" or "m:account"; false when too long. */
static bool
ai_rule_group_key(char *key, AiScope scope, const char *id, int len)
{
	if (len > AI_MAX_USER_ID_LEN)
		return false;
	memset(key, 0, AI_MAX_USER_ID_LEN + 3);
	key[0] = "puam"[scope];
	key[1] = ':';
	memcpy(key + 2, id, len);
	return true;
}

static const char *const metric_names[] = {"requests", "tokens", "cents"};

const char *
ai_metric_name(AiMetric m)
{
	return metric_names[m];
}

static const char *const scope_names[] = {"plan", "user", "account", "member"};

const char *
ai_scope_name(AiScope s)
{
	return scope_names[s];
}

/* One row of ai_rules into the cache. */
static void
ai_cache_rule_row(HeapTuple tup, TupleDesc td)
{
	AiRule	   *r;
	Datum		d;
	char	   *s;
	MemoryContext old;
	StringInfoData sig;

	rules = ai_rows_grow(rules, nrules, &maxrules, sizeof(AiRule), rules_cxt);
	r = &rules[nrules];
	memset(r, 0, sizeof(*r));
	old = MemoryContextSwitchTo(rules_cxt);
	(void) ai_spi_col(tup, td, 1, &d);
	r->id = DatumGetInt32(d);
	(void) ai_spi_col(tup, td, 2, &d);
	s = TextDatumGetCString(d);
	r->scope = strcmp(s, "user") == 0 ? AI_SCOPE_USER :
		strcmp(s, "account") == 0 ? AI_SCOPE_ACCOUNT :
		strcmp(s, "member") == 0 ? AI_SCOPE_MEMBER : AI_SCOPE_PLAN;
	(void) ai_spi_col(tup, td, 3, &d);
	r->scope_id = TextDatumGetCString(d);
	if (ai_spi_col(tup, td, 9, &d))
		r->member_id = TextDatumGetCString(d);
	if (r->scope == AI_SCOPE_MEMBER && r->member_id == NULL)
		r->scope = AI_SCOPE_ACCOUNT;	/* the CHECK constraint allows no such row */
	(void) ai_spi_col(tup, td, 4, &d);
	r->model = TextDatumGetCString(d);
	(void) ai_spi_col(tup, td, 5, &d);
	s = TextDatumGetCString(d);
	r->metric = strcmp(s, "requests") == 0 ? AI_METRIC_REQUESTS :
		strcmp(s, "tokens") == 0 ? AI_METRIC_TOKENS : AI_METRIC_CENTS;
	(void) ai_spi_col(tup, td, 6, &d);
	if (!ai_window_parse(TextDatumGetCString(d), &r->window))
		r->window = AI_WIN_MONTH;	/* the CHECK constraint allows no other */
	(void) ai_spi_col(tup, td, 7, &d);
	if (r->metric == AI_METRIC_CENTS)
		r->max = ai_money_from_numeric(d, false, "max_value");
	else
		r->max = DatumGetInt64(DirectFunctionCall1(numeric_int8, d));
	(void) ai_spi_col(tup, td, 8, &d);
	r->revision = DatumGetInt32(d);
	max_revision = Max(max_revision, r->revision);
	MemoryContextSwitchTo(old);

	if (strcmp(r->model, "*") == 0)
		r->match = AI_MODELS_ALL;
	else if (r->model[strlen(r->model) - 1] == '*')
	{
		r->match = AI_MODELS_PREFIX;
		r->prefix_len = strlen(r->model) - 1;
	}
	else
	{
		r->match = AI_MODELS_EXACT;
		r->prefix_len = strlen(r->model);
	}

	/* what the rule counts, not its maximum: a new maximum keeps the counts */
	initStringInfo(&sig);
	appendStringInfo(&sig, "%d|%d|%s|%s|%d|%d", r->id, (int) r->scope, r->scope_id,
					 r->model, (int) r->metric, (int) r->window);
	if (r->member_id != NULL)
		appendStringInfo(&sig, "|%s", r->member_id);
	r->sig = hash_bytes_extended((const unsigned char *) sig.data, sig.len, 0x72756c6573ULL);
	pfree(sig.data);
	nrules++;
}

/* Read ai_rules again (none in a database whose extension is older). */
static void
ai_reload_rules(void)
{
	ai_cache_renew(&rules_cxt, TopMemoryContext, "ai_ratelimit rules", ALLOCSET_SMALL_SIZES);
	rules = NULL;
	nrules = maxrules = 0;
	rule_groups = NULL;
	have_user_rules = false;
	have_member_rules = false;
	plan_amounts = NULL;
	nplan_amounts = 0;
	max_revision = 0;

	ai_load_extension_info();
	ai_table_cache_reading(&rules_read);
	if (ai_ext_has_relation("ai_rules"))
	{
		SPI_connect();
		/* 1.6 has no revisions: every rule reads as known */
		ai_spi_each_row(psprintf("SELECT rule_id, scope, scope_id, model, metric, \"window\","
								 " max_value, %s, %s FROM %s.ai_rules ORDER BY scope, scope_id, rule_id",
								 ai_ext_has_column("ai_rules", "revision") ? "revision" : "0",
								 ai_ext_has_column("ai_rules", "member_id") ? "member_id" : "NULL::text",
								 ai_ext_schema()),
						ai_cache_rule_row);
		SPI_finish();
	}
	if (nrules > 0)
	{
		plan_amounts = MemoryContextAlloc(rules_cxt, sizeof(AiRule *) * nrules);
		for (int i = 0; i < nrules; i++)
			if (rules[i].scope == AI_SCOPE_PLAN && rules[i].metric != AI_METRIC_REQUESTS)
				plan_amounts[nplan_amounts++] = &rules[i];
		rule_groups = ai_cache_hash("ai_ratelimit rule groups", AI_MAX_USER_ID_LEN + 3,
									sizeof(AiRuleGroup), nrules, rules_cxt);
		for (int i = 0; i < nrules; i++)
		{
			char		key[AI_MAX_USER_ID_LEN + 3];
			AiRuleGroup *g;
			bool		found;

			if (!ai_rule_group_key(key, rules[i].scope, rules[i].scope_id,
								   strlen(rules[i].scope_id)))
				continue;
			g = hash_search(rule_groups, key, HASH_ENTER, &found);
			if (!found)
			{
				g->start = i;
				g->n = 0;
			}
			g->n++;				/* the rows came grouped: the group is contiguous */
			if (rules[i].scope == AI_SCOPE_USER)
				have_user_rules = true;
			if (rules[i].scope == AI_SCOPE_MEMBER)
				have_member_rules = true;
		}
	}
	ai_table_cache_read(&rules_read);
	rules_loads++;
}

/*
 * How many rules there are; reads them first when they changed, looking at
 * most once per call (config.c): a call sees one set of rules throughout.
 */
int
ai_rules_count(void)
{
	if (ai_table_cache_stale(&rules_read))
		ai_reload_rules();
	return nrules;
}

/*
 * Which rules this backend knows, as a reservation keeps it: the highest
 * revision of ai_rules in the cache, as -(revision + 1), so never 0 (a
 * reservation made by an older library has no mark).  Every insert into
 * ai_rules, and every update, takes a new revision from a sequence, so a
 * rule with a higher one was added or changed after the check.  Call after
 * ai_rules_count.
 */
int32
ai_rules_known_mark(void)
{
	return (int32) (-(int64) max_revision - 1);
}

/* Did the check that kept this mark know rule r as it is? */
bool
ai_rules_mark_knows(int32 mark, const AiRule *r)
{
	return mark < 0 && (int64) r->revision <= -(int64) mark - 1;
}

/* Is this the member a member rule names? */
static inline bool
ai_rule_is_member(const AiRule *r, const AiUser *u)
{
	return r->member_id != NULL && strlen(r->member_id) == (size_t) u->len &&
		memcmp(r->member_id, u->id, u->len) == 0;
}

/*
 * The rules that bind user u under plan (the plan's, unless plan is NULL,
 * the user's, then those on u as a member of each account its call
 * charges, u->chain), or, for an account (u->account), the account's own:
 * their count, and in *list an array of them (palloc'd; NULL when none).
 */
int
ai_rules_binding(const char *plan, const AiUser *u, const AiRule ***list)
{
	/* most sessions check the same plan over and over */
	static char last_plan[NAMEDATALEN * 2];
	static uint64 last_load = 0;
	static AiRuleGroup *last_group = NULL;
	char		key[AI_MAX_USER_ID_LEN + 3];
	AiRuleGroup *groups[2 + AI_MAX_ACCOUNT_DEPTH] = {NULL};
	int			ngroups = 2;
	int			n = 0;

	*list = NULL;
	if (ai_rules_count() == 0)
		return 0;
	if (u->account)
	{
		if (ai_rule_group_key(key, AI_SCOPE_ACCOUNT, u->id, u->len))
			groups[0] = hash_search(rule_groups, key, HASH_FIND, NULL);
	}
	else
	{
		if (plan == NULL)
			groups[0] = NULL;	/* no plan's rules */
		else if (last_load == rules_loads && strcmp(last_plan, plan) == 0)
			groups[0] = last_group;
		else if (ai_rule_group_key(key, AI_SCOPE_PLAN, plan, strlen(plan)))
		{
			groups[0] = hash_search(rule_groups, key, HASH_FIND, NULL);
			if (strlen(plan) < sizeof(last_plan))
			{
				strlcpy(last_plan, plan, sizeof(last_plan));
				last_group = groups[0];
				last_load = rules_loads;
			}
		}
		if (have_user_rules && ai_rule_group_key(key, AI_SCOPE_USER, u->id, u->len))
			groups[1] = hash_search(rule_groups, key, HASH_FIND, NULL);
		for (int k = 0; have_member_rules && k < u->nchain && k < AI_MAX_ACCOUNT_DEPTH; k++)
			if (ai_rule_group_key(key, AI_SCOPE_MEMBER, u->chain[k], strlen(u->chain[k])))
				groups[ngroups++] = hash_search(rule_groups, key, HASH_FIND, NULL);
	}
	for (int k = 0; k < ngroups; k++)
		if (groups[k] != NULL)
			n += groups[k]->n;
	if (n == 0)
		return 0;
	*list = palloc(sizeof(AiRule *) * n);
	n = 0;
	for (int k = 0; k < ngroups; k++)
		if (groups[k] != NULL)
			for (int i = 0; i < groups[k]->n; i++)
			{
				const AiRule *r = &rules[groups[k]->start + i];

				if (r->scope != AI_SCOPE_MEMBER || ai_rule_is_member(r, u))
					(*list)[n++] = r;
			}
	return n;
}

/*
 * The rules a record of user u (or, for an account, a record filed under
 * it) may count in: the plans' rules of tokens or cents (a record does not
 * know the user's plan), the user's own, and the user's as a member of each
 * account on u->chain; or the account's own.  Requests rules are counted
 * by checks only and left out.  Their count, and in *list an array of them
 * (palloc'd; NULL when none).
 */
int
ai_rules_for_record(const AiUser *u, const AiRule ***list)
{
	const AiRule **binding;
	int			n;
	int			k = 0;

	*list = NULL;
	if (ai_rules_count() == 0)
		return 0;
	/* the groups of the user (or account) and its memberships, by any plan */
	n = ai_rules_binding(NULL, u, &binding);
	*list = palloc(sizeof(AiRule *) * (n + (u->account ? 0 : nplan_amounts) + 1));
	if (!u->account)
		for (int i = 0; i < nplan_amounts; i++)
			(*list)[k++] = plan_amounts[i];
	for (int i = 0; i < n; i++)
		if (binding[i]->scope != AI_SCOPE_PLAN && binding[i]->metric != AI_METRIC_REQUESTS)
			(*list)[k++] = binding[i];
	return k;
}

/* Rule i, 0 <= i < ai_rules_count(). */
const AiRule *
ai_rule_at(int i)
{
	Assert(i >= 0 && i < nrules);
	return &rules[i];
}

/*
 * Does the rule bind this user under this plan (plan NULL: any plan), or
 * this account (u->account)?  A member rule binds its member in a call that
 * charges its account (u->chain).
 */
bool
ai_rule_applies(const AiRule *r, const char *plan, const AiUser *u)
{
	switch (r->scope)
	{
		case AI_SCOPE_ACCOUNT:
			return u->account && strlen(r->scope_id) == (size_t) u->len &&
				memcmp(r->scope_id, u->id, u->len) == 0;
		case AI_SCOPE_MEMBER:
			if (u->account || !ai_rule_is_member(r, u))
				return false;
			for (int k = 0; k < u->nchain; k++)
				if (strcmp(u->chain[k], r->scope_id) == 0)
					return true;
			return false;
		case AI_SCOPE_USER:
			return !u->account && strlen(r->scope_id) == (size_t) u->len &&
				memcmp(r->scope_id, u->id, u->len) == 0;
		default:
			return !u->account && (plan == NULL || strcmp(r->scope_id, plan) == 0);
	}
}

/*
 * Does the rule count calls of this model?  A call that names no model may
 * be any model: every rule counts it.  A rule that names a model counts its
 * dated names too (gpt-4o counts gpt-4o-2024-08-06: ai_model_is_date_tail),
 * as the sums of ai_rule_sum do (AI_MODEL_TAIL_RE).
 */
bool
ai_rule_matches_model(const AiRule *r, const char *model)
{
	if (model == NULL || r->match == AI_MODELS_ALL)
		return true;
	if (strncmp(r->model, model, r->prefix_len) != 0)
		return false;
	return r->match == AI_MODELS_PREFIX || model[r->prefix_len] == '\0' ||
		ai_model_is_date_tail(model + r->prefix_len);
}
