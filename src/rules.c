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
 * The rules are read again when the table's trigger bumps rules_gen, in
 * the changing transaction itself and when it ends (config.c), so a rule
 * applies from the first check after its commit.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "common/hashfn.h"
#include "executor/spi.h"
#include "utils/builtins.h"
#include "utils/memutils.h"

#include "ai_config.h"
#include "ai_extension.h"
#include "ai_rules.h"
#include "ai_shmem.h"

static MemoryContext rules_cxt = NULL;
static AiRule *rules = NULL;	/* ordered by scope, scope_id, rule_id */
static int	nrules = 0;
static int	maxrules = 0;
static uint32 rules_gen = 0;	/* rules_gen they were read at; 0: never */

/*
 * The rules of one plan or one user: rules[start .. start + n), found by
 * "p:" or "u:" and the name, so that a check looks at its own rules only.
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

/* Group key of a scope: "p:plan" or "u:user"; false when too long to be one. */
static bool
ai_rule_group_key(char *key, bool user, const char *id, int len)
{
	if (len > AI_MAX_USER_ID_LEN)
		return false;
	memset(key, 0, AI_MAX_USER_ID_LEN + 3);
	key[0] = user ? 'u' : 'p';
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

/* One row of ai_rules into the cache. */
static void
ai_cache_rule_row(HeapTuple tup, TupleDesc td)
{
	AiRule	   *r;
	Datum		d;
	char	   *s;
	MemoryContext old;
	StringInfoData sig;

	if (nrules >= maxrules)
	{
		maxrules = Max(16, maxrules * 2);
		rules = rules ? repalloc(rules, sizeof(AiRule) * maxrules)
			: MemoryContextAlloc(rules_cxt, sizeof(AiRule) * maxrules);
	}
	r = &rules[nrules];
	memset(r, 0, sizeof(*r));
	old = MemoryContextSwitchTo(rules_cxt);
	(void) ai_spi_col(tup, td, 1, &d);
	r->id = DatumGetInt32(d);
	(void) ai_spi_col(tup, td, 2, &d);
	r->user_scope = strcmp(TextDatumGetCString(d), "user") == 0;
	(void) ai_spi_col(tup, td, 3, &d);
	r->scope_id = TextDatumGetCString(d);
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
		r->match = AI_MODELS_EXACT;

	/* what the rule counts, not its maximum: a new maximum keeps the counts */
	initStringInfo(&sig);
	appendStringInfo(&sig, "%d|%d|%s|%s|%d|%d", r->id, (int) r->user_scope, r->scope_id,
					 r->model, (int) r->metric, (int) r->window);
	r->sig = hash_bytes_extended((const unsigned char *) sig.data, sig.len, 0x72756c6573ULL);
	pfree(sig.data);
	nrules++;
}

/* Read ai_rules again (none in a database whose extension is older). */
static void
ai_reload_rules(void)
{
	uint32		gen = pg_atomic_read_u32(&ai_shared->rules_gen);

	if (rules_cxt == NULL)
		rules_cxt = AllocSetContextCreate(TopMemoryContext, "ai_ratelimit rules",
										  ALLOCSET_SMALL_SIZES);
	MemoryContextReset(rules_cxt);
	rules = NULL;
	nrules = maxrules = 0;
	rules_gen = 0;
	rule_groups = NULL;
	have_user_rules = false;
	max_revision = 0;

	ai_load_extension_info();
	if (ai_ext_has_relation("ai_rules"))
	{
		SPI_connect();
		/* 1.6 has no revisions: every rule reads as known */
		ai_spi_each_row(psprintf("SELECT rule_id, scope, scope_id, model, metric, \"window\","
								 " max_value, %s FROM %s.ai_rules ORDER BY scope, scope_id, rule_id",
								 ai_ext_has_column("ai_rules", "revision") ? "revision" : "0",
								 ai_ext_schema()),
						ai_cache_rule_row);
		SPI_finish();
	}
	if (nrules > 0)
	{
		HASHCTL		ctl;

		ctl.keysize = AI_MAX_USER_ID_LEN + 3;
		ctl.entrysize = sizeof(AiRuleGroup);
		ctl.hcxt = rules_cxt;
		rule_groups = hash_create("ai_ratelimit rule groups", Max(nrules, 16), &ctl,
								  HASH_ELEM | HASH_STRINGS | HASH_CONTEXT);
		for (int i = 0; i < nrules; i++)
		{
			char		key[AI_MAX_USER_ID_LEN + 3];
			AiRuleGroup *g;
			bool		found;

			if (!ai_rule_group_key(key, rules[i].user_scope, rules[i].scope_id,
								   strlen(rules[i].scope_id)))
				continue;
			g = hash_search(rule_groups, key, HASH_ENTER, &found);
			if (!found)
			{
				g->start = i;
				g->n = 0;
			}
			g->n++;				/* the rows came grouped: the group is contiguous */
			if (rules[i].user_scope)
				have_user_rules = true;
		}
	}
	rules_gen = gen;
}

/* How many rules there are; reads them first when they changed. */
int
ai_rules_count(void)
{
	if (rules_gen == 0 || rules_gen != pg_atomic_read_u32(&ai_shared->rules_gen))
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

/*
 * The rules that bind user u under plan (the plan's, then the user's):
 * their count, and in *list an array of them (palloc'd; NULL when none).
 */
int
ai_rules_binding(const char *plan, const AiUser *u, const AiRule ***list)
{
	/* most sessions check the same plan over and over */
	static char last_plan[NAMEDATALEN * 2];
	static uint32 last_gen = 0;
	static AiRuleGroup *last_group = NULL;
	char		key[AI_MAX_USER_ID_LEN + 3];
	AiRuleGroup *groups[2] = {NULL, NULL};
	int			n = 0;

	*list = NULL;
	if (ai_rules_count() == 0)
		return 0;
	if (last_gen == rules_gen && strcmp(last_plan, plan) == 0)
		groups[0] = last_group;
	else if (ai_rule_group_key(key, false, plan, strlen(plan)))
	{
		groups[0] = hash_search(rule_groups, key, HASH_FIND, NULL);
		if (strlen(plan) < sizeof(last_plan))
		{
			strlcpy(last_plan, plan, sizeof(last_plan));
			last_group = groups[0];
			last_gen = rules_gen;
		}
	}
	if (have_user_rules && ai_rule_group_key(key, true, u->id, u->len))
		groups[1] = hash_search(rule_groups, key, HASH_FIND, NULL);
	for (int k = 0; k < 2; k++)
		if (groups[k] != NULL)
			n += groups[k]->n;
	if (n == 0)
		return 0;
	*list = palloc(sizeof(AiRule *) * n);
	n = 0;
	for (int k = 0; k < 2; k++)
		if (groups[k] != NULL)
			for (int i = 0; i < groups[k]->n; i++)
				(*list)[n++] = &rules[groups[k]->start + i];
	return n;
}

/* Rule i, 0 <= i < ai_rules_count(). */
const AiRule *
ai_rule_at(int i)
{
	Assert(i >= 0 && i < nrules);
	return &rules[i];
}

/* Does the rule bind this user under this plan (plan NULL: any plan)? */
bool
ai_rule_applies(const AiRule *r, const char *plan, const AiUser *u)
{
	if (r->user_scope)
		return strlen(r->scope_id) == (size_t) u->len &&
			memcmp(r->scope_id, u->id, u->len) == 0;
	return plan == NULL || strcmp(r->scope_id, plan) == 0;
}

/*
 * Does the rule count calls of this model?  A call that names no model may
 * be any model: every rule counts it.
 */
bool
ai_rule_matches_model(const AiRule *r, const char *model)
{
	if (model == NULL || r->match == AI_MODELS_ALL)
		return true;
	if (r->match == AI_MODELS_EXACT)
		return strcmp(r->model, model) == 0;
	return strncmp(r->model, model, r->prefix_len) == 0;
}
