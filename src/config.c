/*-------------------------------------------------------------------------
 *
 * config.c
 *		Backend-local caches of ai_plans and ai_model_prices, and the
 *		trigger that tells every backend the configuration changed.
 *
 * A check reads plans and prices from these caches, not from the tables
 * (it queries only for a user's configuration and spend it has not cached,
 * users.c and spend.c).  A cache of a whole table (AiTableCache, these two
 * and the rules of rules.c) is read again after a relcache invalidation of
 * its table, which the trigger ai_ratelimit_config_changed() sends when a
 * statement changes it (ai_table_changed).  Loads read the tables with the
 * latest snapshot (not the caller's transaction snapshot), as the extension
 * owner, with fully qualified names.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/objectaccess.h"
#include "catalog/pg_extension.h"
#include "commands/extension.h"
#include "commands/trigger.h"
#include "common/hashfn.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/guc.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "config.h"
#include "extension.h"
#include "shmem.h"
#include "stats.h"
#include "users.h"

static MemoryContext config_cxt = NULL;
static HTAB *plan_cache = NULL;
static MemoryContext plan_cxt = NULL;	/* plan_cache's, a child of config_cxt */
static MemoryContext price_cxt = NULL;	/* price_cache's */
static AiTableCache plans_read = AI_TABLE_CACHE("ai_plans");
static uint64 plan_cache_loads = 0; /* times ai_plans was read */
static bool plans_have_alerts = false;
static HTAB *price_cache = NULL;
static AiTableCache prices_read = AI_TABLE_CACHE("ai_model_prices");

/*
 * One snapshot of the caches per call.  Every SQL entry point opens a call
 * (ai_caches_new_call); each cache looks at its shared generation at most
 * once per call (ai_cache_look_due), so what a call reads of plans, prices,
 * rules, accounts and users stays as it was when the call first read it,
 * and no pointer a cache handed out is freed under the call.  A cache read
 * again gives its old memory to ai_cache_retire, which frees it when the
 * transaction ends: a call never outlives its transaction, even when our
 * functions are called inside one another.
 */
static uint64 call_seq = 1;
static MemoryContext retired_cxt = NULL;

typedef struct PriceEntry
{
	char		model[AI_MAX_MODEL_LEN + 1];
	AiMoney		input;
	AiMoney		output;
	AiMoney		cached_input;
	AiMoney		cache_write;
	AiMoney		cache_write_1h;
} PriceEntry;

/*
 * An empty hash of plans or prices, in a context of its own (a child of
 * config_cxt), so that reading the table again retires it whole.
 */
static HTAB *
ai_new_config_hash(const char *name, Size keysize, Size entrysize, MemoryContext *cxt)
{
	ai_cache_renew(cxt, config_cxt, "ai_ratelimit config table", ALLOCSET_SMALL_SIZES);
	return ai_cache_hash(name, keysize, entrysize, 16, *cxt);
}

static HTAB *
ai_new_plan_cache(void)
{
	return ai_new_config_hash("ai_ratelimit plans", NAMEDATALEN * 2, sizeof(AiPlan), &plan_cxt);
}

static HTAB *
ai_new_price_cache(void)
{
	return ai_new_config_hash("ai_ratelimit prices", AI_MAX_MODEL_LEN + 1, sizeof(PriceEntry),
							  &price_cxt);
}

void
ai_config_init(void)
{

	if (config_cxt != NULL)
		return;
	config_cxt = AllocSetContextCreate(TopMemoryContext, "ai_ratelimit config",
									   ALLOCSET_SMALL_SIZES);
	plan_cache = ai_new_plan_cache();
	price_cache = ai_new_price_cache();
}

/* A new call begins: every cache may look at its generation once more. */
void
ai_caches_new_call(void)
{
	call_seq++;
}

/* ---- caches of whole tables (AiTableCache) ---- */

#define AI_MAX_TABLE_CACHES		8
static AiTableCache *table_caches[AI_MAX_TABLE_CACHES];
static int	ntable_caches = 0;

/*
 * A relcache invalidation: of one relation, or of all (InvalidOid, when the
 * invalidation queue overflowed).  A cache whose table was absent at its
 * last read takes every one: it cannot know its table's new oid.
 */
static void
ai_table_caches_invalidate(Datum arg, Oid relid)
{
	for (int i = 0; i < ntable_caches; i++)
	{
		AiTableCache *c = table_caches[i];

		if (!OidIsValid(relid) || !OidIsValid(c->relid) || c->relid == relid)
			c->valid = false;
	}
}

/*
 * Must the cache be read (again)?  Never read, or its table changed and
 * this call has not looked yet: a call keeps what it first read.
 */
bool
ai_table_cache_stale(AiTableCache *c)
{
	if (!c->loaded)
		return true;
	if (c->valid)
		return false;
	return ai_cache_look_due(&c->call);
}

/*
 * The cache is about to read its table: valid from here on, so that an
 * invalidation that arrives while it reads (its queries take locks, which
 * take in invalidations) makes it read once more.  It counts as read only
 * when the read ends (ai_table_cache_read): one that failed is read again.
 */
void
ai_table_cache_reading(AiTableCache *c)
{
	bool		known = false;

	for (int i = 0; i < ntable_caches; i++)
		known |= (table_caches[i] == c);
	if (!known)
	{
		Assert(ntable_caches < AI_MAX_TABLE_CACHES);
		if (ntable_caches == 0)
			CacheRegisterRelcacheCallback(ai_table_caches_invalidate, (Datum) 0);
		table_caches[ntable_caches++] = c;
	}
	c->relid = ai_ext_relid(c->table);
	c->loaded = false;
	c->valid = true;
	c->call = call_seq;
}

/* The cache read its table whole. */
void
ai_table_cache_read(AiTableCache *c)
{
	c->loaded = true;
}

/*
 * A statement changed a configuration table (its trigger): every cache of
 * it reads it again, this backend's from its next command, the others'
 * once this transaction commits.
 */
void
ai_table_changed(Relation rel)
{
	CacheInvalidateRelcache(rel);
}

/*
 * Is a look at a cache's generation due in this call?  *seen is the call
 * the cache last looked in; it becomes this one.
 */
bool
ai_cache_look_due(uint64 *seen)
{
	if (*seen == call_seq)
		return false;
	*seen = call_seq;
	return true;
}

/*
 * The memory of a cache that was read again: freed when the transaction
 * ends (at once outside one), since a call may still point into it.
 */
void
ai_cache_retire(MemoryContext cxt)
{
	if (!IsTransactionState())
	{
		MemoryContextDelete(cxt);
		return;
	}
	if (retired_cxt == NULL)
		retired_cxt = AllocSetContextCreate(TopMemoryContext, "ai_ratelimit retired caches",
											ALLOCSET_SMALL_SIZES);
	MemoryContextSetParent(cxt, retired_cxt);
}

/*
 * An empty hash in cxt, sized for n entries, whose keys are strings of less
 * than keysize bytes (the first field of each entry).
 */
HTAB *
ai_cache_hash(const char *name, Size keysize, Size entrysize, long n, MemoryContext cxt)
{
	HASHCTL		ctl;

	memset(&ctl, 0, sizeof(ctl));
	ctl.keysize = keysize;
	ctl.entrysize = entrysize;
	ctl.hcxt = cxt;
	return hash_create(name, Max(n, 16), &ctl, HASH_ELEM | HASH_STRINGS | HASH_CONTEXT);
}

/* 16 bits of a plan name's hash, never 0 (0 means "unknown"). */
static uint16
ai_name_hash(const char *name)
{
	uint16		h = (uint16) hash_bytes((const unsigned char *) name, strlen(name));

	return h ? h : 1;
}

/* Decode the limit columns of an SPI row, starting at column `first`. */
void
ai_decode_limits(HeapTuple tup, TupleDesc td, int first, AiLimitCols *l)
{
	Datum		d;

	memset(l, 0, sizeof(*l));
	if ((l->has_burst_limit = ai_spi_col(tup, td, first, &d)))
		l->burst_limit = DatumGetInt32(d);
	if ((l->has_burst_window = ai_spi_col(tup, td, first + 1, &d)))
		l->burst_window_ms = DatumGetInt32(d);
	if ((l->has_daily = ai_spi_col(tup, td, first + 2, &d)))
		l->daily_limit = DatumGetInt32(d);
	if ((l->has_budget = ai_spi_col(tup, td, first + 3, &d)))
		l->budget = ai_money_from_numeric(d, false, "monthly_budget_cents");
	if ((l->has_tpm = ai_spi_col(tup, td, first + 4, &d)))
		l->tokens_per_minute = DatumGetInt64(d);
}

/* Apply limit columns over a plan: each one that is set replaces the plan's. */
void
ai_limits_apply(const AiLimitCols *l, AiPlan *plan)
{
	if (l->has_burst_limit)
	{
		plan->has_burst = true;
		plan->burst_limit = l->burst_limit;
	}
	if (l->has_burst_window)
		plan->burst_window_ms = l->burst_window_ms;
	if (l->has_daily)
	{
		plan->has_daily = true;
		plan->daily_limit = l->daily_limit;
	}
	if (l->has_budget)
	{
		plan->has_budget = true;
		plan->budget = l->budget;
	}
	if (l->has_tpm)
	{
		plan->has_tpm = true;
		plan->tokens_per_minute = l->tokens_per_minute;
	}
}

/* One row of ai_plans (plan, limit columns, alert_percents) into the cache. */
static void
ai_cache_plan_row(HeapTuple tup, TupleDesc td)
{
	bool		isnull;
	char	   *name = TextDatumGetCString(SPI_getbinval(tup, td, 1, &isnull));
	AiLimitCols l;
	AiPlan	   *p;

	if (strlen(name) >= NAMEDATALEN * 2)
		return;					/* cannot be named by a check either */
	p = hash_search(plan_cache, name, HASH_ENTER, NULL);
	memset(((char *) p) + sizeof(p->name), 0, sizeof(AiPlan) - sizeof(p->name));
	p->burst_window_ms = 60000; /* the column's default */
	ai_decode_limits(tup, td, 2, &l);
	ai_limits_apply(&l, p);
	p->nalerts = ai_spi_percents(tup, td, 2 + AI_NUM_LIMIT_COLS, p->alert_percent,
								 AI_MAX_ALERTS);
	p->name_hash = ai_name_hash(name);
	p->stats = ai_stats_for(name);
	if (p->nalerts > 0)
		plans_have_alerts = true;
}

/*
 * Load ai_plans.  A database still on the 1.0 or 1.1 script has no plan
 * columns tokens_per_minute and alert_percents: they read as NULL there.
 */
static void
ai_reload_plans(void)
{
	const char *schema;

	ai_load_extension_info();
	schema = ai_ext_schema();
	plan_cache = ai_new_plan_cache();	/* the old one is retired */
	plans_have_alerts = false;
	ai_table_cache_reading(&plans_read);

	SPI_connect();
	ai_spi_each_row(psprintf("SELECT p.plan, " AI_LIMIT_COLS_OF("p") ", %s FROM %s.ai_plans p",
							 ai_ext_has_user_limits() ? "p.tokens_per_minute" : "NULL::pg_catalog.int8",
							 ai_ext_has_user_limits() ? "p.alert_percents" : "NULL::pg_catalog.int4[]",
							 schema),
					ai_cache_plan_row);
	SPI_finish();
	ai_table_cache_read(&plans_read);
	plan_cache_loads++;
}

/* Read ai_plans again if it changed, looking at most once per call. */
static void
ai_plans_fresh(void)
{
	if (ai_table_cache_stale(&plans_read))
		ai_reload_plans();
}

/* The name of the plan in this database whose name hashes to h, if one. */
const char *
ai_plan_name_by_hash(uint16 h)
{
	HASH_SEQ_STATUS st;
	AiPlan	   *p;
	const char *found = NULL;
	int			n = 0;

	if (h == 0)
		return NULL;
	ai_plans_fresh();
	hash_seq_init(&st, plan_cache);
	while ((p = hash_seq_search(&st)) != NULL)
		if (p->name_hash == h)
		{
			found = p->name;
			n++;
		}
	return n == 1 ? found : NULL;
}

/* Does any plan of this database have budget alert thresholds? */
bool
ai_plans_have_alerts(void)
{
	ai_plans_fresh();
	return plans_have_alerts;
}

/* The plan named `plan`, or NULL when there is none. */
const AiPlan *
ai_plan_lookup(const char *plan)
{
	static char last_name[NAMEDATALEN * 2];
	static const AiPlan *last_plan = NULL;
	static uint64 last_load = 0;

	if (strlen(plan) >= NAMEDATALEN * 2)
		return NULL;
	ai_plans_fresh();
	/* most sessions check the same plan over and over */
	if (last_plan == NULL || last_load != plan_cache_loads || strcmp(last_name, plan) != 0)
	{
		last_plan = hash_search(plan_cache, plan, HASH_FIND, NULL);
		if (last_plan == NULL)
			return NULL;
		strlcpy(last_name, plan, sizeof(last_name));
		last_load = plan_cache_loads;
	}
	return last_plan;
}

/*
 * A price column in USD per million tokens, as 1e-9 cent per token: price *
 * 100 cents / 1e6 tokens * 1e9 units = price * 1e5.  The CHECK constraints
 * keep prices at 5 decimals, so this is exact.
 */
static AiMoney
ai_price_units(HeapTuple tup, TupleDesc td, int col)
{
	bool		isnull;
	Datum		usd = SPI_getbinval(tup, td, col, &isnull);
	Datum		scaled = DirectFunctionCall2(numeric_mul, usd,
											 DirectFunctionCall1(int4_numeric, Int32GetDatum(100000)));

	return ai_money_from_numeric(scaled, false, "price") / AI_MONEY_UNITS_PER_CENT;
}

/*
 * One row of ai_model_prices: model, input, output, cached input (NULL:
 * the input price), then the cache write prices of 1.4 (NULL: the input
 * price; the 1-hour one NULL: the 5-minute one), when the query has them.
 */
static void
ai_cache_price_row(HeapTuple tup, TupleDesc td)
{
	bool		isnull;
	char	   *model = TextDatumGetCString(SPI_getbinval(tup, td, 1, &isnull));
	PriceEntry *p;

	if (strlen(model) > AI_MAX_MODEL_LEN)
		return;
	p = hash_search(price_cache, model, HASH_ENTER, NULL);
	p->input = ai_price_units(tup, td, 2);
	p->output = ai_price_units(tup, td, 3);
	p->cached_input = ai_price_units(tup, td, 4);
	p->cache_write = td->natts >= 5 ? ai_price_units(tup, td, 5) : p->input;
	p->cache_write_1h = td->natts >= 6 ? ai_price_units(tup, td, 6) : p->cache_write;
}

static void
ai_reload_prices(void)
{
	ai_load_extension_info();
	price_cache = ai_new_price_cache();	/* the old one is retired */
	ai_table_cache_reading(&prices_read);

	SPI_connect();
	if (ai_ext_has_column("ai_model_prices", "cache_write_usd_per_mtok"))
		ai_spi_each_row(psprintf("SELECT model, input_usd_per_mtok, output_usd_per_mtok, "
								 "COALESCE(cached_input_usd_per_mtok, input_usd_per_mtok), "
								 "COALESCE(cache_write_usd_per_mtok, input_usd_per_mtok), "
								 "COALESCE(cache_write_1h_usd_per_mtok, cache_write_usd_per_mtok, input_usd_per_mtok) "
								 "FROM %s.ai_model_prices", ai_ext_schema()),
						ai_cache_price_row);
	else
		ai_spi_each_row(psprintf("SELECT model, input_usd_per_mtok, output_usd_per_mtok, "
								 "COALESCE(cached_input_usd_per_mtok, input_usd_per_mtok) "
								 "FROM %s.ai_model_prices", ai_ext_schema()),
						ai_cache_price_row);
	SPI_finish();
	ai_table_cache_read(&prices_read);
}

/* Are these two characters a number from lo to hi? */
static bool
ai_two_digits_in(const char *s, int lo, int hi)
{
	int			v;

	if (!isdigit((unsigned char) s[0]) || !isdigit((unsigned char) s[1]))
		return false;
	v = (s[0] - '0') * 10 + (s[1] - '0');
	return v >= lo && v <= hi;
}

/* A year of 20xx, then a month and a day: YYYY-MM-DD when dashed, else YYYYMMDD. */
static bool
ai_is_date(const char *s, bool dashed)
{
	int			step = dashed ? 1 : 0;

	return s[0] == '2' && s[1] == '0' && ai_two_digits_in(s + 2, 0, 99) &&
		(!dashed || s[4] == '-') && ai_two_digits_in(s + 4 + step, 1, 12) &&
		(!dashed || s[6 + step] == '-') && ai_two_digits_in(s + 6 + 2 * step, 1, 31);
}

/*
 * Is tail, the end of a model's name after its family's, exactly one date
 * suffix (-YYYY-MM-DD, -YYYYMMDD or @YYYYMMDD)?  AI_MODEL_TAIL_RE says the
 * same of a non-empty tail.
 */
bool
ai_model_is_date_tail(const char *tail)
{
	size_t		n = strlen(tail);

	if (n == 11 && tail[0] == '-')
		return ai_is_date(tail + 1, true);
	if (n == 9 && (tail[0] == '-' || tail[0] == '@'))
		return ai_is_date(tail + 1, false);
	return false;
}

/* How many bytes of model name its family: all of them for an undated name. */
int
ai_model_family_len(const char *model)
{
	int			n = (int) strlen(model);

	if (n > 11 && ai_model_is_date_tail(model + n - 11))
		return n - 11;
	if (n > 9 && ai_model_is_date_tail(model + n - 9))
		return n - 9;
	return n;
}

/* The price row of model: its own, else its family's, else NULL. */
static PriceEntry *
ai_price_entry(const char *model)
{
	PriceEntry *p;
	int			family;
	char		name[AI_MAX_MODEL_LEN + 1];

	if (ai_table_cache_stale(&prices_read))
		ai_reload_prices();

	p = hash_search(price_cache, model, HASH_FIND, NULL);
	if (p != NULL)
		return p;
	family = ai_model_family_len(model);
	if (family == (int) strlen(model))
		return NULL;
	memset(name, 0, sizeof(name));
	memcpy(name, model, Min(family, AI_MAX_MODEL_LEN));
	return hash_search(price_cache, name, HASH_FIND, NULL);
}

/*
 * The row of ai_model_prices that prices model: its own, its family's, or
 * '*' (NULL when there is none); warns of nothing.
 */
const char *
ai_price_row_of(const char *model)
{
	PriceEntry *p = ai_price_entry(model);

	if (p == NULL)
		p = hash_search(price_cache, "*", HASH_FIND, NULL);
	return p ? pstrdup(p->model) : NULL;
}

/*
 * Prices of a model per token, in money units: its own row, else its
 * family's (a dated name), else the '*' row under
 * ai_ratelimit.unknown_model: a WARNING (warn) or an ERROR (refuse), worded
 * for a record or for an estimate.  Errors when no row prices it.
 */
void
ai_price_lookup(const char *model, AiPrice *price, bool recording)
{
	PriceEntry *p = ai_price_entry(model);

	price->fallback = (p == NULL);
	if (p == NULL)
		p = hash_search(price_cache, "*", HASH_FIND, NULL);
	if (p == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_NO_DATA_FOUND),
				 errmsg("no price for model \"%s\" and no fallback row \"*\" in ai_model_prices", model),
				 errhint("Insert a row for the model, or a row with model '*' to price unlisted models.")));
	price->input = p->input;
	price->output = p->output;
	price->cached_input = p->cached_input;
	price->cache_write = p->cache_write;
	price->cache_write_1h = p->cache_write_1h;
	strlcpy(price->priced_as, p->model, sizeof(price->priced_as));
	if (!price->fallback)
		return;
	if (ai_unknown_model == AI_UNKNOWN_MODEL_REFUSE)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("model \"%s\" has no price in ai_model_prices", model),
				 recording ?
				 errdetail("ai_ratelimit.unknown_model is \"refuse\": nothing was recorded.") :
				 ai_model_family_len(model) < (int) strlen(model) ?
				 errdetail("Neither has its family \"%.*s\".", ai_model_family_len(model), model) : 0,
				 errhint("Add a row for the model to ai_model_prices, or fix the model's name.")));
	ereport(WARNING,
			(errcode(ERRCODE_WARNING),
			 errmsg("model \"%s\" has no price in ai_model_prices, %s as \"*\"",
					model, recording ? "priced" : "estimated"),
			 ai_model_family_len(model) < (int) strlen(model) ?
			 errdetail("Neither has its family \"%.*s\".", ai_model_family_len(model), model) : 0,
			 recording ?
			 errhint("Add a row for the model to ai_model_prices, or set ai_ratelimit.unknown_model = 'refuse' to make this an error.") :
			 errhint("Add a row for the model to ai_model_prices.")));
}

static uint32 pending_bumps = 0;	/* AI_GEN_* bits */

static void
ai_bump(uint32 bits)
{
	if (ai_shared == NULL)
		return;					/* not preloaded: nothing is cached */
	if (bits & AI_GEN_USAGE)
		pg_atomic_fetch_add_u32(&ai_shared->usage_gen, 1);
	if (bits & AI_GEN_ACCOUNTS)
		pg_atomic_fetch_add_u32(&ai_shared->accounts_gen, 1);
}

/* Bump generations when the current transaction ends. */
void
ai_config_bump_at_end(uint32 bits)
{
	pending_bumps |= bits;
}

/*
 * A configuration table changed (triggers.c): bump its generations now, so
 * this transaction's own checks reload, and again when the transaction
 * ends, so a backend that loaded before the commit loads once more.
 */
void
ai_config_changed(uint32 bits)
{
	ai_bump(bits);
	pending_bumps |= bits;
	ai_caches_new_call();		/* this transaction's next read sees it */
}

/* A transaction ends, committed or not: bump what it changed. */
static void
ai_config_xact_callback(XactEvent event, void *arg)
{
	if (ai_xact_end_of(event) == AI_XACT_NONE)
		return;
	if (pending_bumps)
	{
		ai_bump(pending_bumps);
		pending_bumps = 0;
	}
	/* no call of the transaction points into a retired cache now */
	if (retired_cxt != NULL)
		MemoryContextDeleteChildren(retired_cxt);
	ai_caches_new_call();
}

void
ai_config_init_xact(void)
{
	RegisterXactCallback(ai_config_xact_callback, NULL);
}

