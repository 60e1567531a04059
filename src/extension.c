/*-------------------------------------------------------------------------
 *
 * extension.c
 *		The extension in the current database (its schema, owner and script
 *		version), and how ai_ratelimit runs its own queries: as the
 *		extension owner, with search_path pinned, from plans kept for the
 *		backend's life.
 *
 * What is looked up here is read again after DROP EXTENSION commits
 * anywhere (ext_gen in shared memory, triggers.c).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "catalog/indexing.h"
#include "catalog/pg_extension.h"
#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"

#include "extension.h"
#include "shmem.h"

static char *ext_schema = NULL;	/* quoted schema name */
static uint32 ext_gen_seen = 0;	/* ext_gen when they were read */
static Oid	ext_owner = InvalidOid;
static Oid	ext_nsp = InvalidOid;	/* the extension's schema */
static bool ext_has_1_2 = false;	/* ai_user_limits and the 1.2 plan columns */

/* Find the extension's schema and owner.  Errors if it is not created. */
void
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
	ext_schema = MemoryContextStrdup(TopMemoryContext,
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
 * (ai_alerts and the cache-write prices are 1.4), and for the tables a
 * cache watches (config.c); not cached.
 */
Oid
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

/* Column col of an SPI row into *d; false when it is NULL. */
bool
ai_spi_col(HeapTuple tup, TupleDesc td, int col, Datum *d)
{
	bool		isnull;

	*d = SPI_getbinval(tup, td, col, &isnull);
	return !isnull;
}

/*
 * Column col of an SPI row, an int4[] of alert percents: its elements that
 * are not NULL, at most max of them, into out; how many.  NULL: none.
 */
int
ai_spi_percents(HeapTuple tup, TupleDesc td, int col, int32 *out, int max)
{
	Datum		d;
	Datum	   *elems;
	bool	   *nulls;
	int			n;
	int			got = 0;

	if (!ai_spi_col(tup, td, col, &d))
		return 0;
	deconstruct_array(DatumGetArrayTypeP(d), INT4OID, sizeof(int32), true,
					  TYPALIGN_INT, &elems, &nulls, &n);
	for (int i = 0; i < n && got < max; i++)
		if (!nulls[i])
			out[got++] = DatumGetInt32(elems[i]);
	return got;
}

/*
 * Room for row n of an array of rows of size bytes that grows in cxt (*rows
 * NULL: none yet): the array, grown by doubling when n reaches *maxrows.
 */
void *
ai_rows_grow(void *rows, int n, int *maxrows, Size size, MemoryContext cxt)
{
	if (n < *maxrows)
		return rows;
	*maxrows = Max(16, *maxrows * 2);
	return rows ? repalloc(rows, size * *maxrows)
		: MemoryContextAlloc(cxt, size * *maxrows);
}

/* Run a query (ai_spi_read) and hand each row to fn. */
void
ai_spi_each_row(const char *sql, void (*fn) (HeapTuple tup, TupleDesc td))
{
	ai_spi_read(sql, 0, NULL, NULL);
	for (uint64 i = 0; i < SPI_processed; i++)
		fn(SPI_tuptable->vals[i], SPI_tuptable->tupdesc);
}

/*
 * A background worker of this library: its entry point (a function of
 * ai_ratelimit) and its name, as ps and pg_stat_activity show it.
 */
void
ai_worker_describe(BackgroundWorker *w, int flags, BgWorkerStartTime start, int restart,
				   const char *function, const char *name)
{
	memset(w, 0, sizeof(*w));
	w->bgw_flags = flags;
	w->bgw_start_time = start;
	w->bgw_restart_time = restart;
	snprintf(w->bgw_library_name, BGW_MAXLEN, "ai_ratelimit");
	snprintf(w->bgw_function_name, BGW_MAXLEN, "%s", function);
	snprintf(w->bgw_name, BGW_MAXLEN, "%s", name);
	snprintf(w->bgw_type, BGW_MAXLEN, "%s", name);
}
