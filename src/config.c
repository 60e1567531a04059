/*-------------------------------------------------------------------------
 *
 * config.c
 *		Backend-local caches of ai_plans and ai_model_prices, and the
 *		trigger that tells every backend the configuration changed.
 *
 * A check reads plans and prices from these caches, not from the tables
 * (it queries only for a user's configuration and spend it has not cached,
 * users.c and spend.c).  Each
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
#include "access/xlog.h"
#include "catalog/objectaccess.h"
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

#include "ai_config.h"
#include "ai_shmem.h"
#include "ai_stats.h"
#include "ai_users.h"

PG_FUNCTION_INFO_V1(ai_ratelimit_config_changed);

static MemoryContext config_cxt = NULL;
static HTAB *plan_cache = NULL;
static uint32 plan_cache_gen = 0;
static bool plans_have_alerts = false;
static HTAB *price_cache = NULL;
static uint32 price_cache_gen = 0;
static char *ext_schema = NULL;	/* quoted schema name */
static uint32 ext_gen_seen = 0;	/* ext_gen when they were read */
static bool drop_at_commit = false;	/* this transaction drops the extension */
static SubTransactionId drop_subxid = InvalidSubTransactionId;	/* ... in this one */
static object_access_hook_type prev_object_access_hook = NULL;
static Oid	ext_owner = InvalidOid;
static Oid	ext_nsp = InvalidOid;	/* the extension's schema */
static bool ext_has_1_2 = false;	/* ai_user_limits and the 1.2 plan columns */

typedef struct PriceEntry
{
	char		model[AI_MAX_MODEL_LEN + 1];
	AiMoney		input;
	AiMoney		output;
	AiMoney		cached_input;
	AiMoney		cache_write;
	AiMoney		cache_write_1h;
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
	ext_nsp = nsp;

	if (ext_schema)
		pfree(ext_schema);
	ext_schema = MemoryContextStrdup(config_cxt,
									 quote_identifier(get_namespace_name(nsp)));
	/* the library serves databases still on an older script version too */
	ext_has_1_2 = OidIsValid(get_relname_relid("ai_user_limits", nsp));
	if (ai_shared != NULL)
		ext_gen_seen = pg_atomic_read_u32(&ai_shared->ext_gen);
}

/* Was the extension dropped (and maybe made again) since it was looked up? */
static bool
ai_ext_info_stale(void)
{
	return ext_schema == NULL ||
		(ai_shared != NULL && ext_gen_seen != pg_atomic_read_u32(&ai_shared->ext_gen));
}

const char *
ai_ext_schema(void)
{
	if (ai_ext_info_stale())
		ai_load_extension_info();
	return ext_schema;
}

Oid
ai_ext_owner(void)
{
	if (!OidIsValid(ext_owner) || ai_ext_info_stale())
		ai_load_extension_info();
	return ext_owner;
}

/*
 * The relation of this name in the extension's schema now, or InvalidOid.
 * For the rare paths that depend on the script version of this database
 * (ai_alerts and the cache-write prices are 1.4); not cached.
 */
static Oid
ai_ext_relid(const char *name)
{
	if (ai_ext_info_stale())
		ai_load_extension_info();
	return get_relname_relid(name, ext_nsp);
}

bool
ai_ext_has_relation(const char *name)
{
	return OidIsValid(ai_ext_relid(name));
}

bool
ai_ext_has_column(const char *rel, const char *column)
{
	Oid			relid = ai_ext_relid(rel);

	return OidIsValid(relid) && get_attnum(relid, column) != InvalidAttrNumber;
}

/* Does this database's version of the extension have ai_user_limits (1.2)? */
bool
ai_ext_has_user_limits(void)
{
	if (ai_ext_info_stale())
		ai_load_extension_info();
	return ext_has_1_2;
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
 * Run as the extension owner until ai_as_owner_end(); an error undoes it as
 * well.  Enough on its own for a plan prepared under ai_internal_begin(),
 * which keeps its pinned search_path.
 */
void
ai_as_owner_begin(AiInternalState *st)
{
	GetUserIdAndSecContext(&st->save_userid, &st->save_sec);
	st->nestlevel = 0;
	SetUserIdAndSecContext(ai_ext_owner(), st->save_sec | SECURITY_LOCAL_USERID_CHANGE);
}

void
ai_as_owner_end(AiInternalState *st)
{
	SetUserIdAndSecContext(st->save_userid, st->save_sec);
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
	int			nestlevel = NewGUCNestLevel();

	(void) set_config_option("search_path", "pg_catalog, pg_temp",
							 PGC_USERSET, PGC_S_SESSION, GUC_ACTION_SAVE,
							 true, 0, false);
	ai_as_owner_begin(st);
	st->nestlevel = nestlevel;
}

void
ai_internal_end(AiInternalState *st)
{
	ai_as_owner_end(st);
	AtEOXact_GUC(true, st->nestlevel);
}

/*
 * A plan kept for the backend's life: prepared with search_path pinned
 * (the plan cache keeps that path for any later replanning, so executing it
 * needs only ai_as_owner_begin), and prepared again when its text changes
 * (the extension's schema, or the script version).  Caller must be
 * connected to SPI.
 */
void *
ai_kept_plan(AiKeptPlan *kp, const char *sql, int nargs, Oid *types)
{
	AiInternalState st;
	SPIPlanPtr	p;

	if (kp->plan != NULL && strcmp(kp->sql, sql) == 0)
		return kp->plan;
	ai_internal_begin(&st);
	p = SPI_prepare(sql, nargs, types);
	if (p == NULL)
		elog(ERROR, "ai_ratelimit: could not prepare \"%s\": %s", sql,
			 SPI_result_code_string(SPI_result));
	SPI_keepplan(p);
	ai_internal_end(&st);
	if (kp->plan)
		SPI_freeplan(kp->plan);
	if (kp->sql)
		pfree(kp->sql);
	kp->plan = p;
	kp->sql = MemoryContextStrdup(TopMemoryContext, sql);
	return p;
}

/*
 * Run a read-only query with the latest snapshot, as the extension owner.
 * Caller must be connected to SPI.
 */
void
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
static uint16
ai_name_hash(const char *name)
{
	uint16		h = (uint16) hash_bytes((const unsigned char *) name, strlen(name));

	return h ? h : 1;
}

/* Column col of an SPI row into *d; false when it is NULL. */
bool
ai_spi_col(HeapTuple tup, TupleDesc td, int col, Datum *d)
{
	bool		isnull;

	*d = SPI_getbinval(tup, td, col, &isnull);
	return !isnull;
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
	Datum		d;

	if (strlen(name) >= NAMEDATALEN * 2)
		return;					/* cannot be named by a check either */
	p = hash_search(plan_cache, name, HASH_ENTER, NULL);
	memset(((char *) p) + sizeof(p->name), 0, sizeof(AiPlan) - sizeof(p->name));
	p->burst_window_ms = 60000; /* the column's default */
	ai_decode_limits(tup, td, 2, &l);
	ai_limits_apply(&l, p);
	if (ai_spi_col(tup, td, 2 + AI_NUM_LIMIT_COLS, &d))
	{
		Datum	   *elems;
		bool	   *nulls;
		int			n;

		deconstruct_array(DatumGetArrayTypeP(d), INT4OID, sizeof(int32), true,
						  TYPALIGN_INT, &elems, &nulls, &n);
		for (int k = 0; k < n && p->nalerts < AI_MAX_ALERTS; k++)
			if (!nulls[k])
				p->alert_percent[p->nalerts++] = DatumGetInt32(elems[k]);
	}
	p->name_hash = ai_name_hash(name);
	p->stats = ai_stats_for(name);
	if (p->nalerts > 0)
		plans_have_alerts = true;
}

/* Run a query (ai_spi_read) and hand each row to fn. */
static void
ai_spi_each_row(const char *sql, void (*fn) (HeapTuple tup, TupleDesc td))
{
	ai_spi_read(sql, 0, NULL, NULL);
	for (uint64 i = 0; i < SPI_processed; i++)
		fn(SPI_tuptable->vals[i], SPI_tuptable->tupdesc);
}

/*
 * Load ai_plans.  A database still on the 1.0 or 1.1 script has no plan
 * columns tokens_per_minute and alert_percents: they read as NULL there.
 */
static void
ai_reload_plans(void)
{
	uint32		gen = pg_atomic_read_u32(&ai_shared->plans_gen);
	const char *schema;

	ai_load_extension_info();
	schema = ai_ext_schema();
	ai_clear_hash(plan_cache);
	plan_cache_gen = 0;
	plans_have_alerts = false;

	SPI_connect();
	ai_spi_each_row(psprintf("SELECT p.plan, " AI_LIMIT_COLS_OF("p") ", %s FROM %s.ai_plans p",
							 ext_has_1_2 ? "p.tokens_per_minute" : "NULL::pg_catalog.int8",
							 ext_has_1_2 ? "p.alert_percents" : "NULL::pg_catalog.int4[]",
							 schema),
					ai_cache_plan_row);
	SPI_finish();
	plan_cache_gen = gen;
}

/*
 * On a standby, plan changes arrive by replay, which fires no trigger: a
 * reader that needs them current (a status call) forgets the cached plans
 * once, and the next lookup reads them again.
 */
void
ai_plans_refresh_in_recovery(void)
{
	if (RecoveryInProgress())
		plan_cache_gen = 0;
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
	uint32		gen = pg_atomic_read_u32(&ai_shared->prices_gen);

	if (ai_ext_info_stale())
		ai_load_extension_info();
	ai_clear_hash(price_cache);
	price_cache_gen = 0;

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
	price_cache_gen = gen;
}

/*
 * Prices of a model per token, in money units; the '*' row for models not
 * listed, under ai_ratelimit.unknown_model: a WARNING (warn) or an ERROR
 * (refuse), worded for a record or for an estimate.  Errors when neither
 * row exists.
 */
void
ai_price_lookup(const char *model, AiPrice *price, bool recording)
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
				 errdetail("ai_ratelimit.unknown_model is \"refuse\": nothing was recorded.") : 0,
				 errhint("Add a row for the model to ai_model_prices, or fix the model's name.")));
	ereport(WARNING,
			(errcode(ERRCODE_WARNING),
			 errmsg("model \"%s\" has no price in ai_model_prices, %s as \"*\"",
					model, recording ? "priced" : "estimated"),
			 recording ?
			 errhint("Add a row for the model to ai_model_prices, or set ai_ratelimit.unknown_model = 'refuse' to make this an error.") :
			 errhint("Add a row for the model to ai_model_prices.")));
}

/*
 * Trigger on the configuration tables and on ai_usage: bump the generation
 * named by the trigger's argument now and when the transaction ends; for
 * ai_user_plans and ai_user_limits, tell users.c which users changed.
 */
static uint32 pending_bumps = 0;	/* AI_GEN_* bits */

static void
ai_bump(uint32 bits)
{
	if (ai_shared == NULL)
		return;					/* not preloaded: nothing is cached */
	if (bits & AI_GEN_PLANS)
		pg_atomic_fetch_add_u32(&ai_shared->plans_gen, 1);
	if (bits & AI_GEN_PRICES)
		pg_atomic_fetch_add_u32(&ai_shared->prices_gen, 1);
	if (bits & AI_GEN_USAGE)
		pg_atomic_fetch_add_u32(&ai_shared->usage_gen, 1);
}

/* Bump generations when the current transaction ends. */
void
ai_config_bump_at_end(uint32 bits)
{
	pending_bumps |= bits;
}

/* A transaction ends, committed or not. */
static void
ai_config_xact_callback(XactEvent event, void *arg)
{
	AiXactEnd	end = ai_xact_end_of(event);
	bool		commit = (end == AI_XACT_COMMIT);

	if (end == AI_XACT_NONE)
		return;
	if (drop_at_commit && commit && ai_shared != NULL)
	{
		/*
		 * DROP EXTENSION committed: forget this database's counters, so a
		 * later CREATE EXTENSION starts from zero, and make every session
		 * look the extension and its tables up again.
		 */
		ai_forget_database(MyDatabaseId);
		pg_atomic_fetch_add_u32(&ai_shared->ext_gen, 1);
		pending_bumps |= AI_GEN_PLANS | AI_GEN_PRICES | AI_GEN_USAGE;
		ai_users_all_changed(true);
	}
	drop_at_commit = false;
	if (pending_bumps)
	{
		ai_bump(pending_bumps);
		pending_bumps = 0;
	}
}

/* DROP EXTENSION ai_ratelimit: act when the transaction commits. */
static void
ai_object_access(ObjectAccessType access, Oid classId, Oid objectId,
				 int subId, void *arg)
{
	if (prev_object_access_hook)
		prev_object_access_hook(access, classId, objectId, subId, arg);
	if (access == OAT_DROP && classId == ExtensionRelationId &&
		objectId == get_extension_oid("ai_ratelimit", true))
	{
		drop_at_commit = true;
		drop_subxid = GetCurrentSubTransactionId();
	}
}

/*
 * A subtransaction ends: a DROP EXTENSION that it made is undone by its
 * abort (ROLLBACK TO SAVEPOINT), and passes to its parent by its commit.
 */
static void
ai_config_subxact(SubXactEvent event, SubTransactionId mySubid,
				  SubTransactionId parentSubid, void *arg)
{
	if (!drop_at_commit || drop_subxid != mySubid)
		return;
	if (event == SUBXACT_EVENT_ABORT_SUB)
	{
		drop_at_commit = false;
		drop_subxid = InvalidSubTransactionId;
	}
	else if (event == SUBXACT_EVENT_COMMIT_SUB)
		drop_subxid = parentSubid;
}

void
ai_config_init_hooks(void)
{
	prev_object_access_hook = object_access_hook;
	object_access_hook = ai_object_access;
	RegisterSubXactCallback(ai_config_subxact, NULL);
}

/* The end of a transaction: generations to bump, a dropped extension. */
void
ai_config_init_xact(void)
{
	RegisterXactCallback(ai_config_xact_callback, NULL);
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
		bool		limits = strcmp(a, "user_limits") == 0;

		if (limits || strcmp(a, "user_plans") == 0)
		{
			if (!TRIGGER_FIRED_FOR_ROW(trigdata->tg_event))
				ai_users_all_changed(limits);
			else
			{
				ai_users_row_changed(trigdata->tg_trigtuple,
									 trigdata->tg_relation->rd_att, limits);
				if (TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event))
					ai_users_row_changed(trigdata->tg_newtuple,
										 trigdata->tg_relation->rd_att, limits);
			}
		}
		else if (strcmp(a, "plans") == 0 &&
				 strcmp(RelationGetRelationName(trigdata->tg_relation), "ai_plans") != 0)
		{
			/* the statement trigger of ai_user_plans or ai_user_limits before 1.3 */
			ai_users_all_changed(strcmp(RelationGetRelationName(trigdata->tg_relation),
										"ai_user_limits") == 0);
		}
		else if (strcmp(a, "plans") == 0)
			bits |= AI_GEN_PLANS;
		else if (strcmp(a, "prices") == 0)
			bits |= AI_GEN_PRICES;
		else if (strcmp(a, "usage") == 0)
			bits |= AI_GEN_USAGE;
	}
	ai_bump(bits);
	pending_bumps |= bits;

	return PointerGetDatum(NULL);
}
