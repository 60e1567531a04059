/*-------------------------------------------------------------------------
 *
 * config.c
 *		Backend-local caches of the configuration tables: ai_plans,
 *		ai_user_plans and ai_model_prices.
 *
 * A check must not run a query: it reads plans from a local cache.  Each
 * cache is stamped with a generation number kept in shared memory; the
 * trigger ai_ratelimit_config_changed() on the configuration tables bumps it
 * when a statement changes them, and again when that transaction ends, so a
 * backend that loaded between the change and its commit loads once more.
 * Loads read the tables with the latest snapshot (not the caller's
 * transaction snapshot), as the extension owner, with fully qualified names.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/pg_extension.h"
#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "commands/trigger.h"
#include "common/hashfn.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "ai_ratelimit.h"

PG_FUNCTION_INFO_V1(ai_ratelimit_config_changed);

static MemoryContext config_cxt = NULL;
static HTAB *plan_cache = NULL;
static uint32 plan_cache_gen = 0;
static bool plans_have_alerts = false;
static HTAB *user_cache = NULL;
static HTAB *limits_cache = NULL;
static HTAB *price_cache = NULL;
static uint32 price_cache_gen = 0;
static char *ext_schema = NULL;	/* quoted schema name */
static Oid	ext_owner = InvalidOid;

typedef struct UserPlanEntry
{
	char		user_id[AI_MAX_USER_ID_LEN + 1];
	char		plan[NAMEDATALEN * 2];	/* "" when the user has no row */
} UserPlanEntry;

/* A row of ai_user_limits: per-user overrides and blocks. */
typedef struct UserLimitEntry
{
	char		user_id[AI_MAX_USER_ID_LEN + 1];
	bool		has_burst_limit;
	bool		has_burst_window;
	bool		has_daily;
	bool		has_budget;
	bool		has_tpm;
	bool		has_block;
	int32		burst_limit;
	int32		burst_window_ms;
	int32		daily_limit;
	int64		tokens_per_minute;
	AiMoney		budget;
	TimestampTz blocked_until;
} UserLimitEntry;

typedef struct PriceEntry
{
	char		model[AI_MAX_MODEL_LEN + 1];
	AiMoney		input;
	AiMoney		output;
	AiMoney		cached_input;
} PriceEntry;

/* Find the extension's schema and owner.  Errors if it is not created. */
static void
ai_load_extension_info(void)
{
	Oid			extoid = get_extension_oid("ai_ratelimit", true);
	Oid			nsp;
	HeapTuple	tup;
	Relation	rel;
	ScanKeyData key;
	SysScanDesc scan;

	if (!OidIsValid(extoid))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("extension \"ai_ratelimit\" is not created in this database"),
				 errhint("Run CREATE EXTENSION ai_ratelimit.")));
	rel = table_open(ExtensionRelationId, AccessShareLock);
	ScanKeyInit(&key, Anum_pg_extension_oid, BTEqualStrategyNumber, F_OIDEQ,
				ObjectIdGetDatum(extoid));
	scan = systable_beginscan(rel, ExtensionOidIndexId, true, NULL, 1, &key);
	tup = systable_getnext(scan);
	if (!HeapTupleIsValid(tup))
		elog(ERROR, "could not find extension %u", extoid);
	ext_owner = ((Form_pg_extension) GETSTRUCT(tup))->extowner;
	nsp = ((Form_pg_extension) GETSTRUCT(tup))->extnamespace;
	systable_endscan(scan);
	table_close(rel, AccessShareLock);

	if (ext_schema)
		pfree(ext_schema);
	ext_schema = MemoryContextStrdup(config_cxt,
									 quote_identifier(get_namespace_name(nsp)));
}

const char *
ai_ext_schema(void)
{
	if (ext_schema == NULL)
		ai_load_extension_info();
	return ext_schema;
}

Oid
ai_ext_owner(void)
{
	if (!OidIsValid(ext_owner))
		ai_load_extension_info();
	return ext_owner;
}

void
ai_config_init(void)
{
	HASHCTL		ctl;

	if (config_cxt != NULL)
		return;
	config_cxt = AllocSetContextCreate(TopMemoryContext, "ai_ratelimit config",
									   ALLOCSET_DEFAULT_SIZES);

	memset(&ctl, 0, sizeof(ctl));
	ctl.keysize = NAMEDATALEN * 2;
	ctl.entrysize = sizeof(AiPlan);
	ctl.hcxt = config_cxt;
	plan_cache = hash_create("ai_ratelimit plans", 16, &ctl,
							 HASH_ELEM | HASH_STRINGS | HASH_CONTEXT);

	ctl.keysize = AI_MAX_USER_ID_LEN + 1;
	ctl.entrysize = sizeof(UserPlanEntry);
	user_cache = hash_create("ai_ratelimit user plans", 1024, &ctl,
							 HASH_ELEM | HASH_STRINGS | HASH_CONTEXT);

	ctl.keysize = AI_MAX_USER_ID_LEN + 1;
	ctl.entrysize = sizeof(UserLimitEntry);
	limits_cache = hash_create("ai_ratelimit user limits", 64, &ctl,
							   HASH_ELEM | HASH_STRINGS | HASH_CONTEXT);

	ctl.keysize = AI_MAX_MODEL_LEN + 1;
	ctl.entrysize = sizeof(PriceEntry);
	price_cache = hash_create("ai_ratelimit prices", 32, &ctl,
							  HASH_ELEM | HASH_STRINGS | HASH_CONTEXT);
}

static void
ai_clear_hash(HTAB *h)
{
	HASH_SEQ_STATUS st;
	void	   *e;

	hash_seq_init(&st, h);
	while ((e = hash_seq_search(&st)) != NULL)
		hash_search(h, e, HASH_REMOVE, NULL);
}

/*
 * Internal queries run as the extension owner, with search_path pinned to
 * pg_catalog: whatever the caller's search_path holds, none of its functions
 * or operators can run in our place (the queries are fully qualified too).
 * ai_internal_end() undoes both; an error undoes them as well.
 */
void
ai_internal_begin(AiInternalState *st)
{
	GetUserIdAndSecContext(&st->save_userid, &st->save_sec);
	st->nestlevel = NewGUCNestLevel();
	(void) set_config_option("search_path", "pg_catalog, pg_temp",
							 PGC_USERSET, PGC_S_SESSION, GUC_ACTION_SAVE,
							 true, 0, false);
	SetUserIdAndSecContext(ai_ext_owner(), st->save_sec | SECURITY_LOCAL_USERID_CHANGE);
}

void
ai_internal_end(AiInternalState *st)
{
	SetUserIdAndSecContext(st->save_userid, st->save_sec);
	AtEOXact_GUC(true, st->nestlevel);
}

/*
 * Run a read-only query with the latest snapshot, as the extension owner.
 * Caller must be connected to SPI.
 */
static void
ai_spi_read(const char *sql, int nargs, Oid *types, Datum *values)
{
	AiInternalState st;
	int			rc;

	ai_internal_begin(&st);
	PushActiveSnapshot(GetLatestSnapshot());
	rc = SPI_execute_with_args(sql, nargs, types, values, NULL, true, 0);
	PopActiveSnapshot();
	ai_internal_end(&st);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "ai_ratelimit: query failed: %s", SPI_result_code_string(rc));
}

/* 16 bits of a plan name's hash, never 0 (0 means "unknown"). */
uint16
ai_name_hash(const char *name)
{
	uint16		h = (uint16) hash_bytes((const unsigned char *) name, strlen(name));

	return h ? h : 1;
}

/* Column col of an SPI row into *d; false when it is NULL. */
static bool
ai_spi_col(HeapTuple tup, TupleDesc td, int col, Datum *d)
{
	bool		isnull;

	*d = SPI_getbinval(tup, td, col, &isnull);
	return !isnull;
}

/*
 * Load ai_plans and ai_user_limits.  Columns and tables added by later
 * versions of the SQL script are read through to_jsonb() and to_regclass(),
 * so a database still on an older version loads too.
 */
static void
ai_reload_plans(void)
{
	uint32		gen = pg_atomic_read_u32(&ai_shared->plans_gen);
	char	   *sql;
	bool		have_limits;

	ai_load_extension_info();
	ai_clear_hash(plan_cache);
	ai_clear_hash(user_cache);
	ai_clear_hash(limits_cache);
	plan_cache_gen = 0;
	plans_have_alerts = false;

	SPI_connect();
	sql = psprintf("SELECT plan, burst_limit, "
				   "pg_catalog.ceil(pg_catalog.date_part('epoch', burst_window) OPERATOR(pg_catalog.*) 1000)::pg_catalog.int4, "
				   "daily_limit, monthly_budget_cents, "
				   "(pg_catalog.to_jsonb(p) OPERATOR(pg_catalog.->>) 'tokens_per_minute')::pg_catalog.int8, "
				   "pg_catalog.translate(pg_catalog.to_jsonb(p) OPERATOR(pg_catalog.->>) 'alert_percents', '[]', '{}')::pg_catalog.int4[], "
				   "pg_catalog.to_regclass(%s) IS NOT NULL "
				   "FROM %s.ai_plans p",
				   quote_literal_cstr(psprintf("%s.ai_user_limits", ai_ext_schema())),
				   ai_ext_schema());
	ai_spi_read(sql, 0, NULL, NULL);
	have_limits = false;
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	td = SPI_tuptable->tupdesc;
		bool		isnull;
		char	   *name = TextDatumGetCString(SPI_getbinval(tup, td, 1, &isnull));
		AiPlan	   *p;
		Datum		d;

		have_limits = DatumGetBool(SPI_getbinval(tup, td, 8, &isnull));
		if (strlen(name) >= NAMEDATALEN * 2)
			continue;			/* cannot be named by a check either */
		p = hash_search(plan_cache, name, HASH_ENTER, NULL);
		memset(((char *) p) + sizeof(p->name), 0, sizeof(AiPlan) - sizeof(p->name));
		p->has_burst = ai_spi_col(tup, td, 2, &d);
		p->burst_limit = p->has_burst ? DatumGetInt32(d) : 0;
		p->burst_window_ms = ai_spi_col(tup, td, 3, &d) ? DatumGetInt32(d) : 60000;
		p->has_daily = ai_spi_col(tup, td, 4, &d);
		p->daily_limit = p->has_daily ? DatumGetInt32(d) : 0;
		p->has_budget = ai_spi_col(tup, td, 5, &d);
		p->budget = p->has_budget ? ai_money_from_numeric(d, false, "monthly_budget_cents") : 0;
		p->has_tpm = ai_spi_col(tup, td, 6, &d);
		p->tokens_per_minute = p->has_tpm ? DatumGetInt64(d) : 0;
		if (ai_spi_col(tup, td, 7, &d))
		{
			ArrayType  *arr = DatumGetArrayTypeP(d);
			Datum	   *elems;
			bool	   *nulls;
			int			n;

			deconstruct_array(arr, INT4OID, sizeof(int32), true, TYPALIGN_INT,
							  &elems, &nulls, &n);
			for (int k = 0; k < n && p->nalerts < AI_MAX_ALERTS; k++)
				if (!nulls[k])
					p->alert_percent[p->nalerts++] = DatumGetInt32(elems[k]);
		}
		p->name_hash = ai_name_hash(name);
		p->stats = ai_stats_for(name);
		if (p->nalerts > 0)
			plans_have_alerts = true;
	}

	if (have_limits)
	{
		sql = psprintf("SELECT user_id, burst_limit, "
					   "pg_catalog.ceil(pg_catalog.date_part('epoch', burst_window) OPERATOR(pg_catalog.*) 1000)::pg_catalog.int4, "
					   "daily_limit, monthly_budget_cents, tokens_per_minute, blocked_until "
					   "FROM %s.ai_user_limits", ai_ext_schema());
		ai_spi_read(sql, 0, NULL, NULL);
		for (uint64 i = 0; i < SPI_processed; i++)
		{
			HeapTuple	tup = SPI_tuptable->vals[i];
			TupleDesc	td = SPI_tuptable->tupdesc;
			bool		isnull;
			char	   *uid = TextDatumGetCString(SPI_getbinval(tup, td, 1, &isnull));
			UserLimitEntry *u;
			Datum		d;

			if (strlen(uid) > AI_MAX_USER_ID_LEN)
				continue;
			u = hash_search(limits_cache, uid, HASH_ENTER, NULL);
			u->has_burst_limit = ai_spi_col(tup, td, 2, &d);
			u->burst_limit = u->has_burst_limit ? DatumGetInt32(d) : 0;
			u->has_burst_window = ai_spi_col(tup, td, 3, &d);
			u->burst_window_ms = u->has_burst_window ? DatumGetInt32(d) : 0;
			u->has_daily = ai_spi_col(tup, td, 4, &d);
			u->daily_limit = u->has_daily ? DatumGetInt32(d) : 0;
			u->has_budget = ai_spi_col(tup, td, 5, &d);
			u->budget = u->has_budget ? ai_money_from_numeric(d, false, "monthly_budget_cents") : 0;
			u->has_tpm = ai_spi_col(tup, td, 6, &d);
			u->tokens_per_minute = u->has_tpm ? DatumGetInt64(d) : 0;
			u->has_block = ai_spi_col(tup, td, 7, &d);
			u->blocked_until = u->has_block ? DatumGetTimestampTz(d) : 0;
		}
	}
	SPI_finish();
	plan_cache_gen = gen;
}

/*
 * Apply a user's row of ai_user_limits to a copy of the plan: every column
 * that is not NULL replaces the plan's limit; blocked_until blocks.
 */
void
ai_apply_user_limits(const char *user_id, AiPlan *plan)
{
	UserLimitEntry *u;

	if (hash_get_num_entries(limits_cache) == 0 ||
		strlen(user_id) > AI_MAX_USER_ID_LEN)
		return;
	u = hash_search(limits_cache, user_id, HASH_FIND, NULL);
	if (u == NULL)
		return;
	if (u->has_burst_limit)
	{
		plan->has_burst = true;
		plan->burst_limit = u->burst_limit;
	}
	if (u->has_burst_window)
		plan->burst_window_ms = u->burst_window_ms;
	if (u->has_daily)
	{
		plan->has_daily = true;
		plan->daily_limit = u->daily_limit;
	}
	if (u->has_budget)
	{
		plan->has_budget = true;
		plan->budget = u->budget;
	}
	if (u->has_tpm)
	{
		plan->has_tpm = true;
		plan->tokens_per_minute = u->tokens_per_minute;
	}
	if (u->has_block)
	{
		plan->blocked = true;
		plan->blocked_until = u->blocked_until;
	}
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
	if (plan_cache_gen != pg_atomic_read_u32(&ai_shared->plans_gen))
		ai_reload_plans();
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
	if (plan_cache_gen != pg_atomic_read_u32(&ai_shared->plans_gen))
		ai_reload_plans();
	return plans_have_alerts;
}

/* The plan named `plan`, or NULL when there is none. */
const AiPlan *
ai_plan_lookup(const char *plan)
{
	static char last_name[NAMEDATALEN * 2];
	static const AiPlan *last_plan = NULL;
	static uint32 last_gen = 0;

	if (strlen(plan) >= NAMEDATALEN * 2)
		return NULL;
	if (plan_cache_gen != pg_atomic_read_u32(&ai_shared->plans_gen))
		ai_reload_plans();
	/* most sessions check the same plan over and over */
	if (last_plan == NULL || last_gen != plan_cache_gen || strcmp(last_name, plan) != 0)
	{
		last_plan = hash_search(plan_cache, plan, HASH_FIND, NULL);
		if (last_plan == NULL)
			return NULL;
		strlcpy(last_name, plan, sizeof(last_name));
		last_gen = plan_cache_gen;
	}
	return last_plan;
}

/* The plan of a user from ai_user_plans, 'free' when the user has none. */
const char *
ai_user_plan(const char *user_id)
{
	UserPlanEntry *u;
	bool		found;

	if (plan_cache_gen != pg_atomic_read_u32(&ai_shared->plans_gen))
		ai_reload_plans();

	u = hash_search(user_cache, user_id, HASH_FIND, &found);
	if (u == NULL)
	{
		char	   *sql;
		Oid			types[1] = {TEXTOID};
		Datum		vals[1];
		char	   *plan = NULL;

		/* keep the cache bounded: start over when it grows too big */
		if (hash_get_num_entries(user_cache) >= 100000)
			ai_clear_hash(user_cache);

		SPI_connect();
		sql = psprintf("SELECT plan FROM %s.ai_user_plans WHERE user_id OPERATOR(pg_catalog.=) $1",
					   ai_ext_schema());
		vals[0] = CStringGetTextDatum(user_id);
		ai_spi_read(sql, 1, types, vals);
		if (SPI_processed > 0)
		{
			bool		isnull;
			Datum		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);

			if (!isnull)
				plan = TextDatumGetCString(d);
		}
		u = hash_search(user_cache, user_id, HASH_ENTER, NULL);
		strlcpy(u->plan, (plan && strlen(plan) < sizeof(u->plan)) ? plan : "", sizeof(u->plan));
		SPI_finish();
	}
	return u->plan[0] ? u->plan : "free";
}

static void
ai_reload_prices(void)
{
	uint32		gen = pg_atomic_read_u32(&ai_shared->prices_gen);
	char	   *sql;

	ai_clear_hash(price_cache);
	price_cache_gen = 0;

	SPI_connect();
	sql = psprintf("SELECT model, input_usd_per_mtok, output_usd_per_mtok, "
				   "COALESCE(cached_input_usd_per_mtok, input_usd_per_mtok) "
				   "FROM %s.ai_model_prices", ai_ext_schema());
	ai_spi_read(sql, 0, NULL, NULL);
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	td = SPI_tuptable->tupdesc;
		bool		isnull;
		char	   *model = TextDatumGetCString(SPI_getbinval(tup, td, 1, &isnull));
		PriceEntry *p;

		if (strlen(model) > AI_MAX_MODEL_LEN)
			continue;
		p = hash_search(price_cache, model, HASH_ENTER, NULL);

		/*
		 * USD per million tokens -> 1e-9 cent per token: price * 100 cents
		 * / 1e6 tokens * 1e9 units = price * 1e5.  The CHECK constraints
		 * keep prices at 5 decimals, so this is exact.
		 */
#define PRICE_UNITS(col) \
		ai_money_from_numeric(DirectFunctionCall2(numeric_mul, \
			SPI_getbinval(tup, td, col, &isnull), \
			DirectFunctionCall1(int4_numeric, Int32GetDatum(100000))), false, "price") \
			/ AI_MONEY_UNITS_PER_CENT
		p->input = PRICE_UNITS(2);
		p->output = PRICE_UNITS(3);
		p->cached_input = PRICE_UNITS(4);
#undef PRICE_UNITS
	}
	SPI_finish();
	price_cache_gen = gen;
}

/*
 * Prices of a model per token, in money units; the '*' row for models not
 * listed.  Errors when neither exists.
 */
void
ai_price_lookup(const char *model, AiPrice *price)
{
	PriceEntry *p;

	if (price_cache_gen != pg_atomic_read_u32(&ai_shared->prices_gen))
		ai_reload_prices();

	p = hash_search(price_cache, model, HASH_FIND, NULL);
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
	strlcpy(price->priced_as, p->model, sizeof(price->priced_as));
}

/*
 * Trigger on the configuration tables and on ai_usage: bump the generation
 * named by the trigger's argument now and when the transaction ends.
 */
static uint32 pending_bumps = 0;	/* bit 0 plans, 1 prices, 2 usage */

static void
ai_bump(uint32 bits)
{
	if (ai_shared == NULL)
		return;					/* not preloaded: nothing is cached */
	if (bits & 1)
		pg_atomic_fetch_add_u32(&ai_shared->plans_gen, 1);
	if (bits & 2)
		pg_atomic_fetch_add_u32(&ai_shared->prices_gen, 1);
	if (bits & 4)
		pg_atomic_fetch_add_u32(&ai_shared->usage_gen, 1);
}

/* Bump generations when the current transaction ends. */
void
ai_config_bump_at_end(uint32 bits)
{
	pending_bumps |= bits;
}

/* Called by xact.c when a transaction ends, committed or not. */
void
ai_config_xact_end(void)
{
	if (pending_bumps)
	{
		ai_bump(pending_bumps);
		pending_bumps = 0;
	}
}

Datum
ai_ratelimit_config_changed(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	uint32		bits = 0;

	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("ai_ratelimit_config_changed() must be called as a trigger")));

	for (int i = 0; i < trigdata->tg_trigger->tgnargs; i++)
	{
		const char *a = trigdata->tg_trigger->tgargs[i];

		if (strcmp(a, "plans") == 0)
			bits |= 1;
		else if (strcmp(a, "prices") == 0)
			bits |= 2;
		else if (strcmp(a, "usage") == 0)
			bits |= 4;
	}
	ai_bump(bits);
	pending_bumps |= bits;

	return PointerGetDatum(NULL);
}
