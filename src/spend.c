/*-------------------------------------------------------------------------
 *
 * spend.c
 *		A user's spend in a month: summed from the usage tables, and cached
 *		exact in shared memory for the budget check.
 *
 * The monthly budget needs the month's committed spend.  It is loaded once
 * per user and month from ai_usage and ai_usage_archive, and then kept
 * exact in the user's entry by ai_record_usage (usage.c): recorded costs
 * count at once, while their transaction is open, and leave again if it
 * aborts (xact.c).  Deleting usage rows bumps the usage generation, which
 * makes every cached spend load again.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "utils/builtins.h"
#include "utils/date.h"
#include "utils/snapmgr.h"

#include "ai_ratelimit.h"

/* Sum of cost_cents of a user in a month, read with the active snapshot. */
static Datum
ai_sum_month(const char *user_id, const AiCalendar *cal, bool latest)
{
	static const char *q =
	"SELECT COALESCE(pg_catalog.sum(cost_cents), 0) FROM ("
	" SELECT cost_cents FROM %s.ai_usage"
	"  WHERE user_id OPERATOR(pg_catalog.=) $1"
	"    AND day OPERATOR(pg_catalog.>=) $2 AND day OPERATOR(pg_catalog.<) $3"
	" UNION ALL"
	" SELECT cost_cents FROM %s.ai_usage_archive"
	"  WHERE user_id OPERATOR(pg_catalog.=) $1"
	"    AND day OPERATOR(pg_catalog.>=) $2 AND day OPERATOR(pg_catalog.<) $3) u";
	Oid			types[3] = {TEXTOID, DATEOID, DATEOID};
	Datum		vals[3];
	AiInternalState st;
	int			rc;
	bool		isnull;
	Datum		result;
	const char *schema = ai_ext_schema();
	MemoryContext outer = CurrentMemoryContext;

	vals[0] = CStringGetTextDatum(user_id);
	vals[1] = DateADTGetDatum(cal->month_start_date);
	vals[2] = DateADTGetDatum(cal->month_end_date);

	SPI_connect();
	ai_internal_begin(&st);
	if (latest)
		PushActiveSnapshot(GetLatestSnapshot());
	rc = SPI_execute_with_args(psprintf(q, schema, schema), 3, types, vals,
							   NULL, true, 1);
	if (latest)
		PopActiveSnapshot();
	ai_internal_end(&st);
	if (rc != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "ai_ratelimit: spend query failed: %s", SPI_result_code_string(rc));
	result = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	result = SPI_datumTransfer(result, false, -1);
	SPI_finish();
	MemoryContextSwitchTo(outer);
	return result;
}

/*
 * Month's committed spend of a user in money units, read with the latest
 * snapshot (the caller's loading protocol needs a snapshot taken now).
 */
static AiMoney
ai_load_spend(const char *user_id, const AiCalendar *cal)
{
	Datum		sum = ai_sum_month(user_id, cal, true);

	return ai_money_from_numeric(sum, false, "monthly spend");
}

/* ai_monthly_spend: from the tables, as the caller's snapshot sees them. */
Datum
ai_spend_in_month(const char *user_id, DateADT month)
{
	AiCalendar	cal;

	ai_calendar_for_date(month, &cal);
	return ai_sum_month(user_id, &cal, false);
}

/*
 * Make sure the entry's spend for the current month is loaded, without
 * missing a concurrent ai_record_usage.  Returns true when the cache is
 * exact; otherwise sets *fallback to a spend that is never lower than the
 * true one, for this check only (the next check tries to load again).
 *
 * The load is exact when no record was in flight and none started or ended
 * while the sum was read: then every recorded cost is committed and visible
 * to the latest snapshot, which is taken after the first look.  Otherwise
 * the fallback adds to the sum whatever was in flight at the first look and
 * whatever was recorded since; a record can be counted twice there, never
 * missed.
 *
 * Caller must hold no partition lock.
 */
bool
ai_ensure_spend(const AiKey *key, uint32 hashcode, const char *user_id, int idlen,
				const AiCalendar *cal, TimestampTz now, AiMoney *fallback)
{
	LWLock	   *lock = ai_partition_lock(hashcode);
	AiEntry    *e;
	uint32		seq;
	uint32		gen = pg_atomic_read_u32(&ai_shared->usage_gen);
	bool		quiet;
	AiMoney		inflight0;
	AiMoney		total0;
	AiMoney		sum;

	LWLockAcquire(lock, LW_EXCLUSIVE);
	e = ai_entry_get(key, hashcode, lock, now, user_id, idlen);
	if (e == NULL)
	{
		/* no counter: read the tables, never lower than the truth */
		LWLockRelease(lock);
		*fallback = ai_load_spend(user_id, cal);
		return false;
	}
	if (e->spend_state == AI_SPEND_VALID && e->spend_month == cal->month &&
		e->spend_gen == gen)
	{
		LWLockRelease(lock);
		return true;
	}
	if (e->spend_month != cal->month || e->spend_gen != gen)
	{
		if (e->spend_month != cal->month)
			e->alerts_sent = 0;
		e->spend_state = AI_SPEND_UNKNOWN;
		e->spend_month = cal->month;
		e->committed_spend = 0;
	}
	seq = e->change_seq;
	quiet = (e->inflight == 0);
	inflight0 = e->inflight_cost;
	total0 = e->recorded_total;
	LWLockRelease(lock);

	sum = ai_load_spend(user_id, cal);

	LWLockAcquire(lock, LW_EXCLUSIVE);
	e = ai_entry_lookup(key, hashcode, false, now, NULL, 0);
	if (e != NULL && quiet && e->inflight == 0 && e->change_seq == seq &&
		e->spend_month == cal->month && e->spend_state == AI_SPEND_UNKNOWN)
	{
		e->committed_spend = sum;
		e->spend_gen = gen;
		e->spend_state = AI_SPEND_VALID;
		LWLockRelease(lock);
		return true;
	}
	*fallback = ai_money_add(sum, inflight0);
	if (e != NULL)
		*fallback = ai_money_add(*fallback,
								 (AiMoney) ((uint64) e->recorded_total - (uint64) total0));
	LWLockRelease(lock);
	return false;
}
