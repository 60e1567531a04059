/*-------------------------------------------------------------------------
 *
 * rulestate.c
 *		What the rules of ai_rules count for each user: refused, charged
 *		and given back with the user's own limits, in one step.
 *
 * A rule's counters for one user are an entry of the shared table (its
 * kind AI_ENTRY_RULE), keyed from the user's key and the rule, in the
 * user's partition: the partition lock a check holds covers the user and
 * every rule that applies, so all of them pass or none is charged.  The
 * rules of an account are counted the same way for the account (an AiUser
 * made by ai_account_init, its entry of kind AI_ENTRY_ACCOUNT: its
 * "holder"), in the account's partition, whose lock the check holds too
 * (accounts.c).  Being entries, they are saved, sent to standbys and swept
 * like a user's.  The fields such an entry uses depend on what the rule
 * counts:
 *
 *   requests, minute      burst ring (a 60-second window): checks allowed
 *   requests, calendar    day (the window's code) and daily_count
 *   tokens|cents, minute  tokens ring: recorded tokens, or cents rounded up;
 *                         estimates in flight are held by reservations
 *   tokens|cents,         the window's committed use, cached exact like the
 *   calendar              monthly spend, by one loader (spend.c's
 *                         ai_load_use): spend_state, spend_month
 *                         (the window's code), spend_gen, committed_spend;
 *                         inflight and inflight_cost for records in flight;
 *                         recorded_total holds the user's stamp (below),
 *                         use_holder and use_tree say whose (sweep.c's
 *                         ai_use_keep)
 *
 * A cached use is exact while the user's stamp is the one it was loaded or
 * last kept at.  The stamp is the user entry's change_seq, which every
 * record bumps at its start and end and every usage row written another way
 * bumps too (spend.c), with the partition's count of removed users above
 * it, so a user that was removed and made again never matches.  A record
 * keeps the cached use of every rule it knows of in step (it adds what it
 * records and stamps them anew); a rule it does not know of (added while it
 * ran) is left with an old stamp and loads again.  The base written at a
 * clean shutdown keeps every use still exact by its holder's stamp, and the
 * next start restores it exact at the stamp the holder starts with
 * (sweep.c's ai_use_saves_exact, ai_use_restored): the first check after a
 * clean restart reads no usage row for the rules either.  A restored use
 * names no holder (a rule's key cannot be traced back to it) until the
 * holder's next record or allowed check makes it the holder's again
 * (ai_rules_charge); one that met neither before the next clean shutdown
 * is not kept by it, and loads at its first check after that start.
 *
 * A reservation holds its estimate on the rules of the check that made it:
 * every rule for all models, the model rules it names (AI_RESV_RULES_NAMED
 * of them; more, or a check without a model, hold on every rule), and every
 * rule added or changed after its check (ai_rules.revision), which may take
 * in its model.
 *
 * What a check or record took is kept here as "touches", ended by xact.c
 * with the charge that names them.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "common/hashfn.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "accounts.h"
#include "alerts.h"
#include "calendar.h"
#include "extension.h"
#include "reservations.h"
#include "rings.h"
#include "rules.h"
#include "rulestate.h"
#include "shmem.h"
#include "spend.h"
#include "sweep.h"

/* A load that met records in flight tries again this often for tokens. */
#define AI_RULE_LOAD_TRIES		20

/* ---- keys and stamps ---- */

/*
 * The key of a rule's counters of a user: 96 bits from the user's key and
 * the rule, and a hash value in the user's partition.
 */
static void
ai_rule_key(const AiUser *u, const AiRule *r, AiKey *key, uint32 *hashcode)
{
	uint64		mix[2] = {u->key.h64, r->sig};
	uint64		h = hash_bytes_extended((const unsigned char *) mix, sizeof(mix), 0x61695f7275ULL);
	uint32		want = ((uint32) (h >> 32) & ~(uint32) (AI_NUM_PARTITIONS - 1)) |
		(u->hashcode % AI_NUM_PARTITIONS);

	memset(key, 0, sizeof(AiKey));
	key->dbid = u->key.dbid;
	key->h64 = h ^ UINT64CONST(0x9e3779b97f4a7c15);
	key->h32 = want ^ murmurhash32((uint32) key->dbid);	/* ai_key_hash() is want */
	*hashcode = want;
}

static inline int64
ai_rule_stamp(const AiRule *r, const AiEntry *holder)
{
	return ai_use_stamp(holder, AI_SCOPE_IN_TREE(r->scope));
}

static inline bool
ai_is_calendar_use(const AiRule *r)
{
	return r->metric != AI_METRIC_REQUESTS && !ai_window_is_sliding(r->window);
}

/* A rule's cached use is exact at this stamp (caller holds the lock). */
static inline bool
ai_rule_cache_at(const AiEntry *s, int64 stamp)
{
	return s->spend_state == AI_SPEND_VALID &&
		s->spend_gen == pg_atomic_read_u32(&ai_shared->usage_gen) &&
		s->recorded_total == stamp;
}

/*
 * Is the use cached in s (ru's counters, or NULL) exact now, for ru's
 * window, by the stamp of its holder (NULL: no entry, nothing is exact)?
 * Caller holds the lock.
 */
static inline bool
ai_rule_use_exact(const AiRuleUse *ru, const AiEntry *s, const AiEntry *holder)
{
	return s != NULL && holder != NULL && s->spend_month == ru->win.code &&
		ai_rule_cache_at(s, ai_rule_stamp(ru->rule, holder));
}

/* Whole cents, rounded up, of a cost: what a minute ring of cents counts. */
static int64
ai_whole_cents(AiMoney m)
{
	return m / AI_MONEY_UNITS_PER_CENT + (m % AI_MONEY_UNITS_PER_CENT != 0 ? 1 : 0);
}

/* ---- touches: what a check or record took ---- */

typedef enum AiTouchKind
{
	AI_TOUCH_CHECK,				/* a request counted */
	AI_TOUCH_RECORD,			/* a record's use of a rule */
	AI_TOUCH_OWNER				/* a record of this backend, in flight */
} AiTouchKind;

typedef struct AiRuleTouch
{
	AiKey		key;			/* the rule's counters, or (owner) the user */
	uint8		kind;			/* AiTouchKind */
	uint8		window;			/* AiWindowKind */
	bool		matches;		/* record: the rule counts its model */
	bool		added;			/* record: counted in flight in the cached use */
	bool		tree;			/* record: its use is summed over an account's subtree */
	uint32		alert_bits;		/* record: alert thresholds it fired on the rule */
	bool		ended;
	int32		code;			/* calendar window at the time */
	int64		bucket;			/* minute ring bucket charged, or -1 */
	int64		amount;			/* tokens, money (cached use) or whole cents (ring) */
} AiRuleTouch;

static AiRuleTouch *touches = NULL;
static int	ntouches = 0;
static int	maxtouches = 0;

/* Room for n more touches, taken before a partition lock. */
static void
ai_touch_reserve(int n)
{
	if (ntouches + n <= maxtouches)
		return;
	maxtouches = Max(64, Max(maxtouches * 2, ntouches + n));
	touches = touches ? repalloc(touches, sizeof(AiRuleTouch) * maxtouches)
		: MemoryContextAlloc(TopMemoryContext, sizeof(AiRuleTouch) * maxtouches);
}

static AiRuleTouch *
ai_touch_add(AiTouchKind kind, const AiKey *key)
{
	AiRuleTouch *t = &touches[ntouches++];

	Assert(ntouches <= maxtouches);
	memset(t, 0, sizeof(*t));
	t->kind = kind;
	t->key = *key;
	t->bucket = -1;
	return t;
}

/*
 * Room for the touches of a call that charges several holders (a user and
 * its accounts): the sum of what each set may take, before any lock.
 */
void
ai_rules_reserve_touches(int n)
{
	ai_touch_reserve(n);
}

/* The transaction ended: every charge that named touches has ended. */
void
ai_rules_touches_done(void)
{
	ntouches = 0;
}

/* Records of this backend in flight for the user. */
static int
ai_own_records(const AiKey *ukey)
{
	int			n = 0;

	for (int i = 0; i < ntouches; i++)
		if (touches[i].kind == AI_TOUCH_OWNER && !touches[i].ended &&
			memcmp(&touches[i].key, ukey, sizeof(AiKey)) == 0)
			n++;
	return n;
}

/* What this backend's records in flight add to a rule's window. */
static int64
ai_own_use(const AiKey *skey, int32 code, bool mark, int32 *count)
{
	int64		sum = 0;

	*count = 0;
	for (int i = 0; i < ntouches; i++)
	{
		AiRuleTouch *t = &touches[i];

		if (t->kind == AI_TOUCH_RECORD && !t->ended && t->matches && t->code == code &&
			memcmp(&t->key, skey, sizeof(AiKey)) == 0)
		{
			sum += t->amount;
			(*count)++;
			if (mark)
				t->added = true;
		}
	}
	return sum;
}

/* ---- what the tables show ---- */

/*
 * A rule's use by a user in a window, from the usage tables (spend.c's
 * ai_usage_sum_sql: per-day totals where they are exact, rows elsewhere),
 * read with a new snapshot that sees this transaction's own rows: requests
 * (rows), tokens, or cents in money units.  The archive keeps whole days:
 * for an hour it counts the whole day (never less than the truth); for the
 * minute it is not read.
 */
static int64
ai_rule_sum(const AiRule *r, const AiUser *u, const AiWindow *w)
{
	const char *tok = "input_tokens OPERATOR(pg_catalog.+) output_tokens"
		" OPERATOR(pg_catalog.+) cached_input_tokens"
		" OPERATOR(pg_catalog.+) cache_write_tokens"
		" OPERATOR(pg_catalog.+) cache_write_1h_tokens";
	const char *x = r->metric == AI_METRIC_REQUESTS ? "1" :
		r->metric == AI_METRIC_TOKENS ? tok : "cost_cents";
	const char *x_totals = r->metric == AI_METRIC_REQUESTS ? "calls" : x;
	AiModelCond model = r->match == AI_MODELS_ALL ? AI_MODEL_ANY :
		r->match == AI_MODELS_EXACT ? AI_MODEL_EXACT : AI_MODEL_PREFIX;
	bool		timed = ai_window_is_timed(w->kind);
	char	   *q;
	Oid			types[7] = {TEXTOID, DATEOID, DATEOID, TIMESTAMPTZOID, TIMESTAMPTZOID, TEXTOID,
	TEXTARRAYOID};
	Datum		vals[7];
	Datum		d;
	int64		result;
	MemoryContext outer = CurrentMemoryContext;

	vals[0] = PointerGetDatum(cstring_to_text_with_len(u->id, u->len));
	vals[1] = DateADTGetDatum(w->first_day);
	vals[2] = DateADTGetDatum(w->end_day);
	vals[3] = TimestampTzGetDatum(w->start);
	vals[4] = TimestampTzGetDatum(w->end);
	vals[5] = CStringGetTextDatum(r->match == AI_MODELS_PREFIX ?
								  pnstrdup(r->model, r->prefix_len) : r->model);
	/* an account's rule: its subtree; a member rule: the member's use there */
	if (AI_SCOPE_IN_TREE(r->scope))
		vals[6] = ai_account_subtree(r->scope_id);

	/* this transaction's own records must be seen: their use is taken off */
	CommandCounterIncrement();
	SPI_connect();
	if (AI_SCOPE_IN_TREE(r->scope))
	{
		q = ai_account_sum_sql(x, x_totals, model, timed, ai_window_is_sliding(w->kind),
							   r->scope == AI_SCOPE_MEMBER);
		ai_spi_read(q, 7, types, vals);
	}
	else
	{
		q = ai_usage_sum_sql(x, x_totals, x_totals, model, timed, ai_window_is_sliding(w->kind));
		ai_spi_read(q, model == AI_MODEL_ANY ? 5 : 6, types, vals);
	}
	if (SPI_processed != 1 || !ai_spi_col(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &d))
		elog(ERROR, "ai_ratelimit: rule use query returned no row");
	MemoryContextSwitchTo(outer);
	if (r->metric == AI_METRIC_CENTS)
		result = ai_money_from_numeric(d, true, "rule use");
	else
		result = DatumGetInt64(DirectFunctionCall1(numeric_int8, d));
	SPI_finish();				/* frees q */
	return result;
}

/* ---- a check: before the lock ---- */

/*
 * The cached use of a calendar rule for tokens or cents, loaded from the
 * tables as spend.c loads the month (ai_load_use): its counters are an
 * entry of their own, made when the sum is read; this backend's own records
 * in flight are taken off the sum and counted in flight instead.  For
 * tokens, which the user entry does not count in flight, a load that met
 * records moving tries again, and after AI_RULE_LOAD_TRIES an error asks to
 * retry.  Without create (a peek) nothing is made: the use is computed into
 * ru->base.  Caller holds no partition lock.
 */
typedef struct AiRuleLoad
{
	AiRuleUse  *ru;
	AiEntry    *counters;		/* made after the sum, or NULL (a peek) */
} AiRuleLoad;

static bool
ai_rule_use_cached(AiLoad *l, AiEntry *holder)
{
	AiRuleUse  *ru = ((AiRuleLoad *) l->arg)->ru;
	AiEntry    *s = ai_entry_lookup(&ru->key, ru->hashcode, false, l->now, NULL, 0);

	return ai_rule_use_exact(ru, s, holder);
}

static int64
ai_rule_use_stamp(AiLoad *l, const AiEntry *holder)
{
	return ai_rule_stamp(((AiRuleLoad *) l->arg)->ru->rule, holder);
}

static int64
ai_rule_use_sum(AiLoad *l)
{
	AiRuleUse  *ru = ((AiRuleLoad *) l->arg)->ru;

	return ai_rule_sum(ru->rule, l->holder, &ru->win);
}

static void
ai_rule_use_make(AiLoad *l)
{
	AiRuleLoad *rl = l->arg;
	const AiUser *u = l->holder;

	rl->counters = NULL;
	if (!l->create)
		return;
	rl->counters = ai_entry_get(&rl->ru->key, rl->ru->hashcode, u->lock, l->now, u->id, u->len);
	if (rl->counters != NULL)
		rl->counters->kind = AI_ENTRY_RULE | rl->ru->rule->window;	/* never a user's, even unloaded */
}

static bool
ai_rule_use_store(AiLoad *l, AiEntry *holder, int64 sum)
{
	AiRuleLoad *rl = l->arg;
	AiEntry    *s = rl->counters;
	int32		own_count;
	int64		own = ai_own_use(&rl->ru->key, rl->ru->win.code, s != NULL, &own_count);

	if (s == NULL)
		return false;			/* a peek: own records are in the sum */
	if (s->spend_month != rl->ru->win.code)
		s->alerts_sent = 0;		/* a new window: its alerts are to come */
	s->spend_state = AI_SPEND_VALID;
	s->spend_month = rl->ru->win.code;
	s->spend_gen = l->gen;
	ai_use_keep(s, holder, AI_SCOPE_IN_TREE(rl->ru->rule->scope));
	s->committed_spend = Max(sum - own, 0);
	s->inflight = own_count;
	s->inflight_cost = int64_to_int128(own);
	return true;
}

static void
ai_rule_load_cached(AiRuleUse *ru, const AiUser *u, TimestampTz now, bool create)
{
	AiRuleLoad	rl = {ru, NULL};
	AiLoad		l = {0};

	l.holder = u;
	l.now = now;
	l.create = create;
	l.cents = (ru->rule->metric == AI_METRIC_CENTS);
	l.own = ai_own_records(&u->key);
	l.cached = ai_rule_use_cached;
	l.stamp = ai_rule_use_stamp;
	l.sum = ai_rule_use_sum;
	l.make = ai_rule_use_make;
	l.store = ai_rule_use_store;
	l.arg = &rl;
	for (int attempt = 1;; attempt++)
	{
		switch (ai_load_use(&l, &ru->base))
		{
			case AI_LOAD_EXACT:
				ru->exact = true;
				return;
			case AI_LOAD_BOUND:
				ru->exact = false;
				return;
			case AI_LOAD_MOVED:
				break;
		}
		if (attempt >= AI_RULE_LOAD_TRIES)
			ereport(ERROR,
					(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
					 errmsg("could not read the token use of user \"%s\" consistently", u->id),
					 errdetail("Records of this user stayed in flight in other transactions while the use of rule %d was read.",
							   ru->rule->id),
					 errhint("Retry the request.")));
		CHECK_FOR_INTERRUPTS();
		pg_usleep(1000L * attempt);
	}
}

/*
 * What the user's records in flight may add to a minute of tokens or cents
 * that the tables cannot show yet (their rows are not committed), while a
 * rule's counters do not exist to count them: the cost in flight in whole
 * cents, or every token recorded in the user's last minute (never less than
 * those in flight; a record in flight longer ago is out of the minute).
 * Caller holds the user's partition lock.
 */
static int64
ai_minute_in_flight(const AiRule *r, AiEntry *user, TimestampTz now)
{
	if (user == NULL || user->inflight == 0 || r->metric == AI_METRIC_REQUESTS ||
		!ai_window_is_sliding(r->window))
		return 0;
	if (r->metric == AI_METRIC_CENTS)
		return ai_whole_cents(ai_inflight_cost(user));
	ai_tokens_advance(user, now);
	return (int64) ai_tokens_count(user, now);
}

/*
 * A rule's counters, just made: they start from what the tables show for
 * the window (ru->base) and, for the minute of tokens or cents, what the
 * user's records in flight may add.  Caller holds the lock exclusively;
 * user is the user's entry, or NULL.
 */
static void
ai_rule_counters_start(const AiRuleUse *ru, AiEntry *s, AiEntry *user, TimestampTz now)
{
	const AiRule *r = ru->rule;
	int64		base = ru->base + ai_minute_in_flight(r, user, now);
	uint32		start = (uint32) Min(base, PG_UINT32_MAX);

	s->kind = AI_ENTRY_RULE | r->window;
	if (r->metric == AI_METRIC_REQUESTS && ai_window_is_sliding(r->window))
	{
		ai_burst_advance(s, 60000, now);
		s->burst[ai_burst_bucket(s, now) % AI_BURST_RING] = start;
	}
	else if (r->metric == AI_METRIC_REQUESTS)
	{
		s->day = ru->win.code;
		s->daily_count = start;
	}
	else
	{
		ai_tokens_advance(s, now);
		s->tokens[s->tokens_head % AI_TOKEN_RING] = start;
	}
	ai_entry_changed(s);
}

/*
 * Counters a check reads and charges (requests, and the minute of tokens
 * or cents): when the user has none yet, what the tables show for the
 * window is their start, so a rule added mid-window starts from the use
 * already recorded, never from zero.
 */
static void
ai_rule_load_counted(AiRuleUse *ru, const AiUser *u, TimestampTz now, bool create)
{
	AiEntry    *s;

	LWLockAcquire(u->lock, LW_SHARED);
	s = ai_entry_lookup(&ru->key, ru->hashcode, false, now, NULL, 0);
	LWLockRelease(u->lock);
	ru->exact = (s != NULL);
	ru->base = 0;
	if (s != NULL)
		return;
	ru->base = ai_rule_sum(ru->rule, u, &ru->win);
	if (ru->rule->metric == AI_METRIC_CENTS)
		ru->base = ai_whole_cents(ru->base);
	if (create)
	{
		/* made now, so that the check needs no room under its lock */
		LWLockAcquire(u->lock, LW_EXCLUSIVE);
		s = ai_entry_get(&ru->key, ru->hashcode, u->lock, now, u->id, u->len);
		if (s != NULL && !AI_ENTRY_IS_RULE(s))
			ai_rule_counters_start(ru, s,
								   ai_entry_lookup(&u->key, u->hashcode, false, now, NULL, 0),
								   now);
		LWLockRelease(u->lock);
	}
}

/*
 * The rules that bind user u under plan for a call of model (NULL: any
 * model), with what they need from the tables read now.  With defer, the
 * cached use of a calendar rule is not looked at: it is taken as exact,
 * for the caller to check under the lock (ai_rules_still_exact) and to
 * prepare again without defer if it is not.  Caller holds no partition
 * lock.
 */
void
ai_rules_prepare(AiRuleSet *rs, const AiUser *u, const char *plan, const char *model,
				 TimestampTz now, bool consume, bool defer)
{
	const AiRule **binding;
	int			total;

	memset(rs, 0, sizeof(*rs));
	rs->model = model;
	total = ai_rules_binding(plan, u, &binding);
	if (total == 0)
		return;
	rs->use = palloc(sizeof(AiRuleUse) * total);
	for (int i = 0; i < total; i++)
	{
		const AiRule *r = binding[i];
		AiRuleUse  *ru;

		if (!ai_rule_matches_model(r, model))
			continue;
		ru = &rs->use[rs->n++];
		memset(ru, 0, sizeof(*ru));
		ru->rule = r;
		ai_rule_key(u, r, &ru->key, &ru->hashcode);
		ai_window_at(r->window, now, &ru->win);
		if (r->metric == AI_METRIC_CENTS)
			rs->money = true;
		else if (r->metric == AI_METRIC_TOKENS)
			rs->tokens = true;
	}
	ai_touch_reserve(rs->n);
	for (int i = 0; i < rs->n; i++)
	{
		AiRuleUse  *ru = &rs->use[i];

		if (ai_is_calendar_use(ru->rule) && defer)
			ru->exact = true;	/* the caller sees whether it is, under the lock */
		else if (ai_is_calendar_use(ru->rule))
			ai_rule_load_cached(ru, u, now, consume);
		else
			ai_rule_load_counted(ru, u, now, consume);
	}
}

/*
 * Under the lock: is every cached use found exact still exact?  If not (its
 * entry was swept, or a record started meanwhile), the caller prepares
 * again.
 */
bool
ai_rules_still_exact(const AiRuleSet *rs, const AiEntry *user)
{
	for (int i = 0; i < rs->n; i++)
	{
		const AiRuleUse *ru = &rs->use[i];
		AiEntry    *s;

		if (!ru->exact || !ai_is_calendar_use(ru->rule))
			continue;
		s = ai_entry_lookup(&ru->key, ru->hashcode, false, 0, NULL, 0);
		if (!ai_rule_use_exact(ru, s, user))
			return false;
	}
	return true;
}

/* ---- a check: under the lock ---- */

/* What the user's reservations hold on a rule now (tokens or money). */
static int64
ai_rule_held(const AiRule *r, const AiEntry *user, TimestampTz now)
{
	AiResvIter	it;
	AiReservation *res;
	int64		sum = 0;

	if (user == NULL || r->metric == AI_METRIC_REQUESTS)
		return 0;
	ai_resv_iter_init(&it, user, AI_RESV_WALK_HOLDING, now);
	while ((res = ai_resv_iter_next(&it, NULL)) != NULL)
	{
		/*
		 * A rule added or changed after the check may take in the model the
		 * reservation was made for, which it could not name: it holds there
		 * too until it settles (at worst a request is refused meanwhile).
		 */
		bool		holds = (r->match == AI_MODELS_ALL || res->all_rules ||
							 !ai_rules_mark_knows(res->rules[AI_RESV_RULES_NAMED], r));

		for (int k = 0; !holds && k < AI_RESV_RULES_NAMED; k++)
			holds = (res->rules[k] == r->id);
		if (holds)
			sum = ai_money_add(sum, r->metric == AI_METRIC_CENTS ? res->amount : res->tokens);
	}
	return sum;
}

/* The use of a rule now (requests, tokens or money). */
static int64
ai_rule_used(const AiRuleUse *ru, AiEntry *s, AiEntry *user, TimestampTz now)
{
	const AiRule *r = ru->rule;

	if (ai_is_calendar_use(r))
	{
		if (ru->exact && s != NULL && user != NULL)
			return ai_money_add(s->committed_spend, ai_inflight_cost(s));
		return ru->base;
	}
	if (s == NULL)
	{
		/* no counters yet: the tables, and what records in flight may add */
		int64		base = ru->base + ai_minute_in_flight(r, user, now);

		return r->metric == AI_METRIC_CENTS ? ai_money_add(0, base * AI_MONEY_UNITS_PER_CENT) : base;
	}
	if (r->metric == AI_METRIC_REQUESTS && ai_window_is_sliding(r->window))
	{
		ai_burst_advance(s, 60000, now);
		return s->burst_window_ms == 60000 ? ai_burst_count(s, now) : 0;
	}
	if (r->metric == AI_METRIC_REQUESTS)
		return s->day == ru->win.code ? s->daily_count : 0;
	ai_tokens_advance(s, now);
	if (r->metric == AI_METRIC_CENTS)
		return ai_money_add(0, (int64) ai_tokens_count(s, now) * AI_MONEY_UNITS_PER_CENT);
	return (int64) ai_tokens_count(s, now);
}

/*
 * Test every rule of the set; on the first that refuses, fill *out and
 * return true.  A request counts 1; tokens and cents rules count what is
 * recorded, what reservations hold and the estimate, and with no estimate
 * refuse once the maximum is reached.  *room (when not NULL) says which
 * passing rule is left with the least room.  Caller holds the user's
 * partition lock exclusively; user is the user's entry, or NULL.
 */
bool
ai_rules_refuse(const AiRuleSet *rs, AiEntry *user, AiMoney est, int64 est_tokens,
				TimestampTz now, AiRuleRefusal *out, AiRuleRoom *room)
{
	if (room != NULL)
		room->index = -1;
	for (int i = 0; i < rs->n; i++)
	{
		const AiRuleUse *ru = &rs->use[i];
		const AiRule *r = ru->rule;
		AiEntry    *s = ai_entry_lookup(&ru->key, ru->hashcode, false, now, NULL, 0);
		int64		used = ai_rule_used(ru, s, user, now);
		int64		held = ai_rule_held(r, user, now);
		int64		need = r->metric == AI_METRIC_REQUESTS ? 1 :
			r->metric == AI_METRIC_CENTS ? est : est_tokens;
		int64		total = ai_money_add(ai_money_add(used, held), need);

		if (total <= r->max && !(need == 0 && ai_money_add(used, held) >= r->max))
		{
			if (room != NULL &&
				(room->index < 0 || ai_room_is_less(r->max, r->max - total, room->limit, room->left)))
			{
				room->index = i;
				room->limit = r->max;
				room->left = r->max - total;
			}
			continue;
		}
		memset(out, 0, sizeof(*out));
		out->index = i;
		out->limit = r->max;
		out->used = used;
		out->held = held;
		out->never = (r->max == 0 || need > r->max);
		out->entry = (s != NULL && s->spend_month == ru->win.code) ? s : NULL;
		out->window_start = ru->win.start;
		out->held_only = held > 0 && ai_money_add(used, need) <= r->max &&
			!(need == 0 && used >= r->max);
		if (out->held_only)
			out->retry_at = Min(now + 5 * USECS_PER_SEC, ru->win.end);
		else if (!ai_window_is_sliding(r->window))
			out->retry_at = ru->win.end;
		else if (s == NULL)
			out->retry_at = now + 60 * USECS_PER_SEC;
		else if (r->metric == AI_METRIC_REQUESTS)
			out->retry_at = ai_burst_retry_at(s, (uint32) Min(r->max, PG_UINT32_MAX), now);
		else
		{
			uint64		lim = r->metric == AI_METRIC_CENTS ? (uint64) (r->max / AI_MONEY_UNITS_PER_CENT) : (uint64) r->max;
			uint64		n = r->metric == AI_METRIC_CENTS ? (uint64) ai_whole_cents(need) : (uint64) need;

			out->retry_at = ai_tokens_retry_at(s, lim, Max(n, 1), now);
		}
		return true;
	}
	return false;
}

/*
 * Make the counters an allowed check will charge.  False when the table
 * has no room (nothing is charged then).  Caller holds the lock
 * exclusively.
 */
bool
ai_rules_make_room(const AiRuleSet *rs, const AiUser *u, TimestampTz now)
{
	for (int i = 0; i < rs->n; i++)
	{
		const AiRuleUse *ru = &rs->use[i];
		const AiRule *r = ru->rule;
		AiEntry    *s = ai_entry_lookup(&ru->key, ru->hashcode, false, now, NULL, 0);

		if (s != NULL || ai_is_calendar_use(r))
			continue;			/* a cached use was made when it was loaded */
		s = ai_entry_lookup(&ru->key, ru->hashcode, true, now, u->id, u->len);
		if (s == NULL)
			return false;
		ai_rule_counters_start(ru, s,
							   ai_entry_lookup(&u->key, u->hashcode, false, now, NULL, 0),
							   now);
	}
	return true;
}

/*
 * Count an allowed request in every requests rule of the set; what it took
 * goes into touches [*first, *first + *n) for xact.c to give back if the
 * transaction rolls back.  A cached use restored at the start, whose
 * holder is not known yet (ai_use_restored), and still exact by the
 * holder's stamp becomes the holder's (holder: the set's user or account
 * entry), as a record's use does: the next clean shutdown keeps it again
 * (ai_use_saves_exact).  Caller holds the lock exclusively and made room.
 */
void
ai_rules_charge(const AiRuleSet *rs, AiEntry *holder, TimestampTz now, int32 *first, int16 *n)
{
	*first = ntouches;
	for (int i = 0; i < rs->n; i++)
	{
		const AiRuleUse *ru = &rs->use[i];
		const AiRule *r = ru->rule;
		AiEntry    *s;
		AiRuleTouch *t;

		if (ai_is_calendar_use(r))
		{
			s = ai_entry_lookup(&ru->key, ru->hashcode, false, now, NULL, 0);
			if (s != NULL && s->use_holder < 0 && ai_rule_use_exact(ru, s, holder))
				ai_use_keep(s, holder, AI_SCOPE_IN_TREE(r->scope));
			continue;
		}
		if (r->metric != AI_METRIC_REQUESTS)
			continue;
		s = ai_entry_lookup(&ru->key, ru->hashcode, false, now, NULL, 0);
		if (s == NULL)
			continue;			/* made by ai_rules_make_room */
		t = ai_touch_add(AI_TOUCH_CHECK, &ru->key);
		t->window = r->window;
		t->code = ru->win.code;
		if (ai_window_is_sliding(r->window))
		{
			ai_burst_advance(s, 60000, now);
			t->bucket = ai_burst_take(s);
		}
		else
			ai_count_take(s, ru->win.code);
		ai_entry_changed(s);
	}
	*n = (int16) (ntouches - *first);
}

/* What a reservation made by this check holds on the rules. */
void
ai_rules_hold(const AiRuleSet *rs, AiReservation *res, int64 est_tokens)
{
	int			k = 0;

	res->tokens = rs->tokens ? est_tokens : 0;
	res->all_rules = (rs->model == NULL);
	for (int i = 0; i < rs->n && !res->all_rules; i++)
	{
		const AiRule *r = rs->use[i].rule;

		if (r->metric == AI_METRIC_REQUESTS || r->match == AI_MODELS_ALL)
			continue;
		if (k == AI_RESV_RULES_NAMED)
			res->all_rules = true;	/* more than it can name: it holds on all */
		else
			res->rules[k++] = r->id;
	}
	res->rules[AI_RESV_RULES_NAMED] = ai_rules_known_mark();
}

/*
 * What the same reservation holds on the rules of an account the check
 * charges (its shadow there copies it): their model rules are named too,
 * and the token estimate is held.  After ai_rules_hold.
 */
void
ai_rules_hold_more(const AiRuleSet *rs, AiReservation *res, int64 est_tokens)
{
	int			k = 0;

	/* any account may get a token rule while the request is in flight */
	res->tokens = est_tokens;
	while (k < AI_RESV_RULES_NAMED && res->rules[k] != 0)
		k++;
	for (int i = 0; i < rs->n && !res->all_rules; i++)
	{
		const AiRule *r = rs->use[i].rule;

		if (r->metric == AI_METRIC_REQUESTS || r->match == AI_MODELS_ALL)
			continue;
		if (k == AI_RESV_RULES_NAMED)
			res->all_rules = true;
		else
			res->rules[k++] = r->id;
	}
}

/* A rule as a person reads it, for refusals: "500 cents/day for claude-opus-*". */
char *
ai_rule_words(const AiRule *r)
{
	char	   *max;

	if (r->metric == AI_METRIC_CENTS)
		max = DatumGetCString(DirectFunctionCall1(numeric_out, ai_money_to_numeric(r->max)));
	else
		max = psprintf(INT64_FORMAT, r->max);
	return psprintf("%s %s/%s%s%s", max, ai_metric_name(r->metric), ai_window_name(r->window),
					r->match == AI_MODELS_ALL ? "" : " for ",
					r->match == AI_MODELS_ALL ? "" : r->model);
}

/* ---- a record ---- */

static void ai_rule_alerts_crossed(AiRuleRecord *rr, int i, AiEntry *s, AiRuleTouch *t);

/*
 * The rules a record of user u for model may count in: every tokens and
 * cents rule of any plan, of the user, and of the user as a member of the
 * accounts it is filed under (the record does not know the user's plan;
 * rules of other plans have no counters of this user, or keep theirs exact
 * for when the plan comes back); for an account (u->account), the
 * account's own (ai_rules_for_record).  Caller holds no lock.
 */
void
ai_rules_record_prepare(AiRuleRecord *rr, const AiUser *u, const char *model, TimestampTz now)
{
	const AiRule **list;
	int			total;

	memset(rr, 0, sizeof(*rr));
	rr->user = u;
	rr->model = model;
	if (ai_rules_count() == 0)
		return;
	total = ai_rules_for_record(u, &list);
	rr->cand = palloc(sizeof(AiRule *) * (total + 1));
	rr->codes = palloc(sizeof(int32) * (total + 1));
	rr->starts = palloc(sizeof(TimestampTz) * (total + 1));
	if (u->account)
		rr->fired = palloc(sizeof(AiRuleAlert) * (total * AI_MAX_ALERTS + 1));
	for (int i = 0; i < total; i++)
	{
		const AiRule *r = list[i];
		AiWindow	w;

		if (ai_window_is_sliding(r->window) && !ai_rule_matches_model(r, model))
			continue;
		/* the window is computed here: nothing may raise an error under the lock */
		ai_window_at(r->window, now, &w);
		rr->codes[rr->n] = w.code;
		rr->starts[rr->n] = w.start;
		rr->cand[rr->n++] = r;
	}
	rr->any = true;
	/* the owner touch, and one per rule */
	ai_touch_reserve(rr->n + 1);
}

/*
 * Count a record in the rules: its tokens or cost in the minute rings, in
 * flight in the cached uses of its window (kept exact: they get the stamp
 * the user has now), and a touch per rule for the record's end.
 * seq_before is the user's change_seq before the record bumped it.  Caller
 * holds the user's partition lock exclusively.
 */
void
ai_rules_record_begin(AiRuleRecord *rr, AiEntry *user, TimestampTz now,
					  AiMoney cost, int64 tokens, uint32 seq_before,
					  int32 *first, int16 *n)
{
	int64		stamp_before;
	int64		stamp_now = ai_user_stamp(user);

	*first = ntouches;
	*n = 0;
	if (!rr->any)
		return;					/* no rule at all */
	stamp_before = (stamp_now & ~(int64) PG_UINT32_MAX) | seq_before;
	(void) ai_touch_add(AI_TOUCH_OWNER, &user->key);
	for (int i = 0; i < rr->n; i++)
	{
		const AiRule *r = rr->cand[i];
		AiKey		key;
		uint32		hashcode;
		AiEntry    *s;
		AiRuleTouch *t;
		int64		amount = r->metric == AI_METRIC_TOKENS ? tokens : cost;

		ai_rule_key(rr->user, r, &key, &hashcode);
		s = ai_entry_lookup(&key, hashcode, false, now, NULL, 0);
		if (ai_window_is_sliding(r->window))
		{
			int64		unit = r->metric == AI_METRIC_CENTS ? ai_whole_cents(cost) : tokens;
			int32		bucket;

			if (s == NULL)
				continue;		/* a check starts it from the tables */
			t = ai_touch_add(AI_TOUCH_RECORD, &key);
			t->window = r->window;
			t->matches = true;
			ai_tokens_advance(s, now);
			t->amount = ai_tokens_take(s, (uint64) Max(unit, 0), &bucket);
			t->bucket = bucket;
			ai_entry_changed(s);
			continue;
		}
		t = ai_touch_add(AI_TOUCH_RECORD, &key);
		t->window = r->window;
		t->matches = ai_rule_matches_model(r, rr->model);
		t->amount = amount;
		t->code = rr->codes[i];
		t->tree = AI_SCOPE_IN_TREE(r->scope);
		if (s != NULL && ai_rule_cache_at(s, ai_stamp_add(stamp_before, ai_tree_offset(t->tree))))
		{
			if (t->matches && s->spend_month == t->code && rr->nalerts > 0 &&
				r->metric == AI_METRIC_CENTS)
				ai_rule_alerts_crossed(rr, i, s, t);
			if (t->matches && s->spend_month == t->code)
			{
				s->inflight++;
				int128_add_int64(&s->inflight_cost, amount);
				t->added = true;
			}
			ai_use_keep(s, user, t->tree);
		}
	}
	*n = (int16) (ntouches - *first);
}

/*
 * The alert thresholds of an account (rr->alert_pct) that the record's cost
 * reaches on its rule rr->cand[i], once per rule, window and threshold:
 * into rr->fired, their bits into the rule's counters and the touch (given
 * back if the record rolls back).  Caller holds the lock exclusively; the
 * use cached in s is exact.
 */
static void
ai_rule_alerts_crossed(AiRuleRecord *rr, int i, AiEntry *s, AiRuleTouch *t)
{
	const AiRule *r = rr->cand[i];
	AiMoney		after = ai_money_add(ai_money_add(s->committed_spend, ai_inflight_cost(s)),
									 t->amount);
	int32		due[AI_MAX_ALERTS];
	int			n = ai_alerts_due(&s->alerts_sent, rr->alert_pct, rr->nalerts, r->max, after,
								  due, &t->alert_bits);

	for (int k = 0; k < n; k++)
	{
		AiRuleAlert *a = &rr->fired[rr->nfired++];

		a->rule = r;
		a->pct = due[k];
		a->after = after;
		a->window_start = rr->starts[i];
	}
}

/* ---- the end of a transaction (xact.c), under the user's lock ---- */

/* A check rolled back: give back the requests it counted. */
void
ai_rules_check_undo(int32 first, int16 n)
{
	for (int i = first; i < first + n && i < ntouches; i++)
	{
		AiRuleTouch *t = &touches[i];
		AiEntry    *s;

		t->ended = true;
		s = ai_entry_lookup(&t->key, ai_key_hash(&t->key), false, 0, NULL, 0);
		if (s == NULL)
			continue;
		if (ai_window_is_sliding(t->window))
			ai_burst_give_back(s, t->bucket);
		else
			ai_count_give_back(s, t->code);
		ai_entry_changed(s);
	}
}

/*
 * A record ends: its use leaves the in-flight counts and, if it committed,
 * joins the cached use of its window; every cached use still exact gets
 * the user's new stamp.  A rolled back record leaves the minute rings.
 * seq_before is the user's change_seq before the end bumped it.
 */
void
ai_rules_record_end(int32 first, int16 n, bool commit, AiEntry *user, uint32 seq_before)
{
	int64		stamp_now = ai_user_stamp(user);
	int64		stamp_before = (stamp_now & ~(int64) PG_UINT32_MAX) | seq_before;

	for (int i = first; i < first + n && i < ntouches; i++)
	{
		AiRuleTouch *t = &touches[i];
		AiEntry    *s;

		t->ended = true;
		if (t->kind == AI_TOUCH_OWNER)
			continue;
		s = ai_entry_lookup(&t->key, ai_key_hash(&t->key), false, 0, NULL, 0);
		if (s == NULL)
			continue;
		if (ai_window_is_sliding(t->window))
		{
			if (!commit)
				ai_tokens_give_back(s, (int32) t->bucket, (uint32) t->amount);
			ai_entry_changed(s);
			continue;
		}
		if (t->added)
		{
			if (s->inflight > 0)
				s->inflight--;
			int128_add_int64(&s->inflight_cost, -t->amount);
			if (int128_compare(s->inflight_cost, int64_to_int128(0)) < 0 || s->inflight == 0)
				s->inflight_cost = int64_to_int128(0);
		}
		if (!commit && t->alert_bits != 0 && s->spend_month == t->code)
			s->alerts_sent &= ~t->alert_bits;	/* they fire again, with a record that stays */
		if (ai_rule_cache_at(s, ai_stamp_add(stamp_before, ai_tree_offset(t->tree))))
		{
			if (commit && t->added && s->spend_month == t->code)
				s->committed_spend = ai_money_add(s->committed_spend, t->amount);
			ai_use_keep(s, user, t->tree);
		}
	}
}

/* ---- operators and views ---- */

/*
 * Forget the requests and minute tokens counted under a user's rules
 * (ai_reset_user), as the user's own burst, daily and token counts are.
 * Money stays: the cents recorded in a minute, the cached use of calendar
 * windows, and estimates in flight, so a reset never hands out budget.
 */
void
ai_rules_reset_user(const AiUser *u)
{
	int			total = ai_rules_count();

	if (total == 0)
		return;
	LWLockAcquire(u->lock, LW_EXCLUSIVE);
	for (int i = 0; i < total; i++)
	{
		const AiRule *r = ai_rule_at(i);
		AiKey		key;
		uint32		hashcode;
		AiEntry    *s;

		if (!ai_rule_applies(r, NULL, u) || ai_is_calendar_use(r) ||
			r->metric == AI_METRIC_CENTS)
			continue;
		ai_rule_key(u, r, &key, &hashcode);
		s = ai_entry_lookup(&key, hashcode, false, 0, NULL, 0);
		if (s == NULL)
			continue;
		memset(s->burst, 0, sizeof(s->burst));
		s->daily_count = 0;
		memset(s->tokens, 0, sizeof(s->tokens));
		ai_entry_changed(s);
	}
	LWLockRelease(u->lock);
}

/*
 * One rule's use for a user now, changing nothing (a peek): used, held by
 * estimates in flight, and when the window resets.
 */
void
ai_rule_state(const AiRule *r, const AiUser *u, TimestampTz now, AiRuleState *st)
{
	AiRuleUse	ru;
	AiEntry    *ue;
	AiEntry    *s;

	memset(&ru, 0, sizeof(ru));
	ru.rule = r;
	ai_rule_key(u, r, &ru.key, &ru.hashcode);
	ai_window_at(r->window, now, &ru.win);
	if (ai_is_calendar_use(r))
		ai_rule_load_cached(&ru, u, now, false);
	else
		ai_rule_load_counted(&ru, u, now, false);

	LWLockAcquire(u->lock, LW_EXCLUSIVE);
	ue = ai_entry_lookup(&u->key, u->hashcode, false, now, NULL, 0);
	s = ai_entry_lookup(&ru.key, ru.hashcode, false, now, NULL, 0);
	if (ru.exact && ai_is_calendar_use(r) && !ai_rule_use_exact(&ru, s, ue))
	{
		/* changed since it was read: read the tables once more */
		LWLockRelease(u->lock);
		ru.exact = false;
		ru.base = ai_rule_sum(r, u, &ru.win);
		LWLockAcquire(u->lock, LW_EXCLUSIVE);
		ue = ai_entry_lookup(&u->key, u->hashcode, false, now, NULL, 0);
		s = ai_entry_lookup(&ru.key, ru.hashcode, false, now, NULL, 0);
	}
	st->used = ai_rule_used(&ru, s, ue, now);
	st->held = ai_rule_held(r, ue, now);
	st->window_secs = ai_window_secs(&ru.win);
	if (!ai_window_is_sliding(r->window))
		st->reset_at = ru.win.end;
	else if (st->used == 0)
		st->reset_at = 0;
	else if (s == NULL)
		st->reset_at = now + 60 * USECS_PER_SEC;
	else if (r->metric == AI_METRIC_REQUESTS)
		st->reset_at = ai_burst_oldest_leaves(s, now);
	else
		st->reset_at = ai_tokens_oldest_leave(s, now);
	LWLockRelease(u->lock);
}
