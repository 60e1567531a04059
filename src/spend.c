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
 * The protocol that loads a cached use without missing a record in flight
 * is here once (ai_load_use): the month's spend uses it, and so does every
 * calendar rule of tokens or cents (rulestate.c).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/xact.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/date.h"
#include "utils/datum.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "calendar.h"
#include "config.h"
#include "replica.h"
#include "reservations.h"
#include "resvid.h"
#include "shmem.h"
#include "spend.h"
#include "sweep.h"

/*
 * The query that sums a user's use of the local days [$2, $3): x over the
 * rows of ai_usage, x_totals over the per-day totals of ai_usage_days,
 * x_archive over ai_usage_archive; $1 is the user.  A day is read from its
 * totals when ai_compact_usage made them and no row of the day changed
 * since (ai_usage_days_stale); every other day from its rows, through the
 * index on (user_id, day, created_at), so the cost follows the days not
 * totalled, not the user's history.  A day totalled up to a time (1.7's
 * upto, an open day) adds its rows from that time on, found in the same
 * index.  Every totals row of a user's day has the same upto: one
 * ai_compact_usage wrote them.  With a model condition, $6 is the model or
 * prefix.
 * Timed (an hour or the minute): only the rows with created_at in
 * [$4, $5), and the archive's whole days for the hour.
 */
/*
 * The condition that a row of t is of model $6 or of one of its dated names
 * (ai_rule_matches_model): the name starts with $6 and the rest is
 * AI_MODEL_TAIL_RE.
 */
#define AI_MODEL_IS(t) \
	" AND pg_catalog.starts_with(" t ".model, $6)" \
	" AND pg_catalog.substr(" t ".model, pg_catalog.length($6) OPERATOR(pg_catalog.+) 1)" \
	" OPERATOR(pg_catalog.~) '" AI_MODEL_TAIL_RE "'"

char *
ai_usage_sum_sql(const char *x, const char *x_totals, const char *x_archive,
				 AiModelCond model, bool timed, bool minute)
{
	/* first: it may read the extension's catalog entry again */
	bool		totals = !timed && ai_ext_has_relation("ai_usage_days");
	bool		partial = totals && ai_ext_has_column("ai_usage_days", "upto");
	const char *schema = ai_ext_schema();
	StringInfoData q;
	const char *cond[3][2] = {
		{"", ""},
		{AI_MODEL_IS("u"), AI_MODEL_IS("d")},
		{" AND pg_catalog.starts_with(u.model, $6)", " AND pg_catalog.starts_with(d.model, $6)"}
	};
	const char *fresh = "NOT EXISTS (SELECT 1 FROM %s.ai_usage_days_stale st"
		" WHERE st.user_id OPERATOR(pg_catalog.=) $1 AND st.day OPERATOR(pg_catalog.=) d.day)";

	initStringInfo(&q);
	appendStringInfoString(&q, "SELECT COALESCE(pg_catalog.sum(x), 0) FROM (");
	if (totals)
	{
		appendStringInfo(&q, " SELECT (%s)::pg_catalog.numeric AS x FROM %s.ai_usage_days d"
						 "  WHERE d.user_id OPERATOR(pg_catalog.=) $1"
						 "    AND d.day OPERATOR(pg_catalog.>=) $2 AND d.day OPERATOR(pg_catalog.<) $3%s AND ",
						 x_totals, schema, cond[model][1]);
		appendStringInfo(&q, fresh, schema);
		appendStringInfo(&q, " UNION ALL"
						 " SELECT (%s)::pg_catalog.numeric FROM %s.ai_usage u"
						 "  WHERE u.user_id OPERATOR(pg_catalog.=) $1%s"
						 "    AND u.day OPERATOR(pg_catalog.=) ANY (ARRAY("
						 "     SELECT g::pg_catalog.date FROM pg_catalog.generate_series($2::pg_catalog.timestamp,"
						 "       ($3 OPERATOR(pg_catalog.-) 1)::pg_catalog.timestamp, '1 day'::pg_catalog.interval) g"
						 "     EXCEPT SELECT d.day FROM %s.ai_usage_days d"
						 "      WHERE d.user_id OPERATOR(pg_catalog.=) $1"
						 "        AND d.day OPERATOR(pg_catalog.>=) $2 AND d.day OPERATOR(pg_catalog.<) $3 AND ",
						 x, schema, cond[model][0], schema);
		appendStringInfo(&q, fresh, schema);
		appendStringInfoString(&q, "))");
		if (partial)
		{
			appendStringInfo(&q, " UNION ALL"
							 " SELECT (%s)::pg_catalog.numeric FROM (SELECT DISTINCT d.day, d.upto"
							 "   FROM %s.ai_usage_days d WHERE d.user_id OPERATOR(pg_catalog.=) $1"
							 "    AND d.day OPERATOR(pg_catalog.>=) $2 AND d.day OPERATOR(pg_catalog.<) $3"
							 "    AND d.upto IS NOT NULL AND ",
							 x, schema);
			appendStringInfo(&q, fresh, schema);
			appendStringInfo(&q, ") p, %s.ai_usage u"
							 "  WHERE u.user_id OPERATOR(pg_catalog.=) $1%s"
							 "    AND u.day OPERATOR(pg_catalog.=) p.day"
							 "    AND u.created_at OPERATOR(pg_catalog.>=) p.upto",
							 schema, cond[model][0]);
		}
	}
	else
		appendStringInfo(&q, " SELECT (%s)::pg_catalog.numeric AS x FROM %s.ai_usage u"
						 "  WHERE u.user_id OPERATOR(pg_catalog.=) $1"
						 "    AND u.day OPERATOR(pg_catalog.>=) $2 AND u.day OPERATOR(pg_catalog.<) $3%s%s",
						 x, schema,
						 timed ? " AND u.created_at OPERATOR(pg_catalog.>=) $4"
						 " AND u.created_at OPERATOR(pg_catalog.<) $5" : "",
						 cond[model][0]);
	if (!minute)
		appendStringInfo(&q, " UNION ALL"
						 " SELECT (%s)::pg_catalog.numeric FROM %s.ai_usage_archive u"
						 "  WHERE u.user_id OPERATOR(pg_catalog.=) $1"
						 "    AND u.day OPERATOR(pg_catalog.>=) $2 AND u.day OPERATOR(pg_catalog.<) $3%s",
						 x_archive, schema, cond[model][0]);
	appendStringInfoString(&q, ") t");
	return q.data;
}

/*
 * The query that sums the use filed under the accounts $7 (an account and
 * every account below it) in the local days [$2, $3): x over the rows of
 * ai_usage, through the index on (account_id, day), and x_archive over
 * ai_usage_archive; with member, only user $1's.  Timed: rows with
 * created_at in [$4, $5), and the archive's whole days for the hour.  With
 * a model condition, $6 is the model or prefix.
 */
char *
ai_account_sum_sql(const char *x, const char *x_archive, AiModelCond model, bool timed,
				   bool minute, bool member)
{
	const char *schema = ai_ext_schema();
	const char *cond[3] = {"", AI_MODEL_IS("u"), " AND pg_catalog.starts_with(u.model, $6)"};
	const char *who = member ? " AND u.user_id OPERATOR(pg_catalog.=) $1" : "";
	StringInfoData q;

	initStringInfo(&q);
	appendStringInfo(&q, "SELECT COALESCE(pg_catalog.sum(x), 0) FROM ("
					 " SELECT (%s)::pg_catalog.numeric AS x FROM %s.ai_usage u"
					 "  WHERE u.account_id OPERATOR(pg_catalog.=) ANY ($7)%s"
					 "    AND u.day OPERATOR(pg_catalog.>=) $2 AND u.day OPERATOR(pg_catalog.<) $3%s%s",
					 x, schema, who,
					 timed ? " AND u.created_at OPERATOR(pg_catalog.>=) $4"
					 " AND u.created_at OPERATOR(pg_catalog.<) $5" : "",
					 cond[model]);
	if (!minute)
		appendStringInfo(&q, " UNION ALL"
						 " SELECT (%s)::pg_catalog.numeric FROM %s.ai_usage_archive u"
						 "  WHERE u.account_id OPERATOR(pg_catalog.=) ANY ($7)%s"
						 "    AND u.day OPERATOR(pg_catalog.>=) $2 AND u.day OPERATOR(pg_catalog.<) $3%s",
						 x_archive, schema, who, cond[model]);
	appendStringInfoString(&q, ") t");
	return q.data;
}

/* Sum of cost_cents of a user in a month, read with the active snapshot. */
static Datum
ai_sum_month(const char *user_id, const AiCalendar *cal, bool latest)
{
	Oid			types[3] = {TEXTOID, DATEOID, DATEOID};
	Datum		vals[3];
	AiInternalState st;
	int			rc;
	bool		isnull;
	Datum		result;
	MemoryContext outer = CurrentMemoryContext;

	vals[0] = CStringGetTextDatum(user_id);
	vals[1] = DateADTGetDatum(cal->month_start_date);
	vals[2] = DateADTGetDatum(cal->month_end_date);

	SPI_connect();
	ai_internal_begin(&st);
	if (latest)
		PushActiveSnapshot(GetLatestSnapshot());
	rc = SPI_execute_with_args(ai_usage_sum_sql("cost_cents", "cost_cents", "cost_cents",
												AI_MODEL_ANY, false, false),
							   3, types, vals, NULL, true, 1);
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
 * snapshot (ai_load_use needs a snapshot taken after its first look).
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
 * Load a cached use from the tables without missing a record in flight.
 *
 * The load is exact when no record of another backend was in flight at the
 * first look and the holder's stamp did not move until the second: every
 * record that ended before is in the sum, read with a snapshot taken after
 * the first look, and none started or ended meanwhile.  This backend's own
 * records in flight (l->own) are in the sum; store takes them off.
 * Otherwise a cost is bounded: the sum, plus whatever was in flight at the
 * first look and whatever was recorded since; a record may be counted
 * twice there, never missed.  Other uses are loaded again (AI_LOAD_MOVED).
 *
 * A holder with no entry (a peek, or no room) has no record in flight: the
 * tables are the truth, returned as the bound.  Caller holds no partition
 * lock.
 */
AiLoadResult
ai_load_use(AiLoad *l, int64 *bound)
{
	const AiUser *u = l->holder;
	AiEntry    *e;
	int64		stamp0;
	bool		quiet;
	AiMoney		inflight0;
	AiMoney		total0;
	int64		sum;

	l->gen = pg_atomic_read_u32(&ai_shared->usage_gen);
	LWLockAcquire(u->lock, LW_EXCLUSIVE);
	e = l->create ? ai_holder_get(u, l->now) :
		ai_entry_lookup(&u->key, u->hashcode, false, l->now, NULL, 0);
	if (e == NULL)
	{
		LWLockRelease(u->lock);
		*bound = l->sum(l);
		return AI_LOAD_BOUND;
	}
	if (l->cached(l, e))
	{
		LWLockRelease(u->lock);
		return AI_LOAD_EXACT;
	}
	stamp0 = l->stamp(l, e);
	quiet = (e->inflight == (uint32) l->own);
	inflight0 = ai_inflight_cost(e);
	total0 = e->recorded_total;
	LWLockRelease(u->lock);

	sum = l->sum(l);

	LWLockAcquire(u->lock, LW_EXCLUSIVE);
	if (l->make)
		l->make(l);
	e = ai_entry_lookup(&u->key, u->hashcode, false, l->now, NULL, 0);
	if (e != NULL && quiet && e->inflight == (uint32) l->own && l->stamp(l, e) == stamp0)
	{
		bool		kept = l->store(l, e, sum);

		LWLockRelease(u->lock);
		if (kept)
			return AI_LOAD_EXACT;
		*bound = sum;			/* exact now, for this call */
		return AI_LOAD_BOUND;
	}
	if (!l->cents)
	{
		LWLockRelease(u->lock);
		return AI_LOAD_MOVED;
	}
	*bound = ai_money_add(sum, inflight0);
	if (e != NULL)
		*bound = ai_money_add(*bound, (AiMoney) ((uint64) e->recorded_total - (uint64) total0));
	LWLockRelease(u->lock);
	return AI_LOAD_BOUND;
}

/* A user's spend of a month: its steps of ai_load_use. */
static bool
ai_spend_cached(AiLoad *l, AiEntry *e)
{
	const AiCalendar *cal = l->arg;

	if (e->spend_state == AI_SPEND_VALID && e->spend_month == cal->month &&
		e->spend_gen == l->gen)
		return true;
	if (e->spend_month != cal->month || e->spend_gen != l->gen)
	{
		if (e->spend_month != cal->month)
			e->alerts_sent = 0;
		e->spend_state = AI_SPEND_UNKNOWN;
		e->spend_month = cal->month;
		e->committed_spend = 0;
	}
	return false;
}

static int64
ai_spend_stamp(AiLoad *l, const AiEntry *e)
{
	return ai_user_stamp(e);
}

static int64
ai_spend_sum(AiLoad *l)
{
	return ai_load_spend(l->holder->id, l->arg);
}

static bool
ai_spend_store(AiLoad *l, AiEntry *e, int64 sum)
{
	const AiCalendar *cal = l->arg;

	/* another load may have kept it meanwhile, or begun the next month */
	if (e->spend_month != cal->month || e->spend_state != AI_SPEND_UNKNOWN)
		return false;
	e->committed_spend = sum;
	e->spend_gen = l->gen;
	e->spend_state = AI_SPEND_VALID;
	return true;
}

/*
 * Make sure the entry's spend for the current month is loaded (ai_load_use).
 * Returns true when the cache is exact; otherwise sets *fallback to a spend
 * that is never lower than the true one, for this check only (the next
 * check tries to load again).  Records in flight of this backend are not
 * taken off the month: while the user has any, the load is a bound.
 *
 * Without create (a peek), a user with no entry gets none: the sum is read
 * into *fallback.  Caller must hold no partition lock.
 */
bool
ai_ensure_spend(const AiUser *u, const AiCalendar *cal, TimestampTz now, bool create,
				AiMoney *fallback)
{
	AiLoad		l = {0};

	l.holder = u;
	l.now = now;
	l.create = create;
	l.cents = true;
	l.cached = ai_spend_cached;
	l.stamp = ai_spend_stamp;
	l.sum = ai_spend_sum;
	l.store = ai_spend_store;
	l.arg = (void *) cal;
	return ai_load_use(&l, fallback) == AI_LOAD_EXACT;
}

/*
 * Is every reservation of e one of the n ids that were looked up?  On a
 * standby, replay may restore another while ai_usage is read: its user
 * then stays marked.  Caller holds the partition lock.
 */
static bool
ai_resv_all_looked_up(AiEntry *e, const Datum *ids, int n)
{
	AiResvIter	it;
	AiReservation *r;

	ai_resv_iter_init(&it, e, AI_RESV_WALK_ALL, 0);
	while ((r = ai_resv_iter_next(&it, NULL)) != NULL)
	{
		bool		seen = false;

		for (int i = 0; i < n && !seen; i++)
			seen = (DatumGetInt64(ids[i]) == r->id);
		if (!seen)
			return false;
	}
	return true;
}

/*
 * A user's reservations were restored after a crash (resv_restored): drop
 * those that a committed ai_record_usage settled after the last save, found
 * by their id in ai_usage, so that no settled estimate is held twice.
 * Caller must hold no partition lock.
 */
void
ai_resv_drop_settled(const AiUser *u)
{
	LWLock	   *lock = u->lock;
	AiEntry    *e;
	Datum	   *looked;			/* the ids looked up in ai_usage */
	int			nlooked = 0;
	Datum	   *ids;			/* those found there: settled */
	int			n = 0;
	Oid			types[3] = {TEXTOID, INT8ARRAYOID, DATEOID};
	Datum		vals[3];
	int			len = 0;
	bool		restored;
	AiResvIter	it;
	AiReservation *r;

	/* most calls: no reservation restored after a crash, anywhere */
	if (pg_atomic_read_u32(&ai_shared->restored_entries) == 0)
		return;
	LWLockAcquire(lock, LW_SHARED);
	e = ai_entry_lookup(&u->key, u->hashcode, false, 0, NULL, 0);
	restored = (e != NULL && e->resv_restored);
	if (restored)
	{
		ai_resv_iter_init(&it, e, AI_RESV_WALK_ALL, 0);
		while (len < ai_max_reservations && ai_resv_iter_next(&it, NULL) != NULL)
			len++;
	}
	LWLockRelease(lock);
	if (!restored)
		return;

	looked = palloc(sizeof(Datum) * (len + 16));
	LWLockAcquire(lock, LW_SHARED);
	e = ai_entry_lookup(&u->key, u->hashcode, false, 0, NULL, 0);
	if (e != NULL)
	{
		ai_resv_iter_init(&it, e, AI_RESV_WALK_ALL, 0);
		while (nlooked < len + 16 && (r = ai_resv_iter_next(&it, NULL)) != NULL)
			looked[nlooked++] = Int64GetDatum(r->id);
	}
	LWLockRelease(lock);

	ids = palloc(sizeof(Datum) * (nlooked + 1));
	if (nlooked > 0)
	{
		TimestampTz oldest = DT_NOEND;

		/*
		 * A record that settled one was made after it was issued: only the
		 * days since are read (two days earlier, for the zone the day is
		 * local to and a clock that went back; a settled reservation missed
		 * would only be held until it expires).
		 */
		for (int i = 0; i < nlooked; i++)
			oldest = Min(oldest, ai_id_time(DatumGetInt64(looked[i])));
		vals[0] = PointerGetDatum(cstring_to_text_with_len(u->id, u->len));
		vals[1] = PointerGetDatum(construct_array(looked, nlooked, INT8OID, sizeof(int64), true, TYPALIGN_DOUBLE));
		vals[2] = DateADTGetDatum((DateADT) (oldest / USECS_PER_DAY) - 2);
		SPI_connect();
		ai_spi_read(psprintf("SELECT reservation_id FROM %s.ai_usage"
							 " WHERE user_id OPERATOR(pg_catalog.=) $1"
							 " AND day OPERATOR(pg_catalog.>=) $3"
							 " AND reservation_id OPERATOR(pg_catalog.=) ANY ($2)",
							 ai_ext_schema()),
					3, types, vals);
		for (uint64 i = 0; i < SPI_processed && n < nlooked; i++)
		{
			bool		isnull;
			Datum		d = SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull);

			if (!isnull)
				ids[n++] = d;
		}
		SPI_finish();
	}

	LWLockAcquire(lock, LW_EXCLUSIVE);
	e = ai_entry_lookup(&u->key, u->hashcode, false, 0, NULL, 0);
	if (e != NULL)
	{
		for (int i = 0; i < n; i++)
		{
			int32		s = ai_resv_find(e, DatumGetInt64(ids[i]));

			if (s >= 0 && ai_resv_slots[s].state == AI_RESV_OPEN)
				ai_resv_free(e, s);
		}
		if (ai_resv_all_looked_up(e, looked, nlooked))
			ai_entry_set_restored(e, false);
	}
	LWLockRelease(lock);
	for (int i = 0; i < n; i++)
	{
		/* and from the accounts its check held them on (1.8) */
		ai_resv_free_shadows(DatumGetInt64(ids[i]), GetCurrentTimestamp());

		/*
		 * In the WAL too, as a release is: a standby, or a base backup
		 * whose copy of the save files came before the saver wrote this,
		 * does not hold it again after a failover.
		 */
		ai_wal_log_resv_end(DatumGetInt64(ids[i]), &u->key);
	}
	pfree(ids);
	pfree(looked);
}

/*
 * The cost of the usage row that settled reservation `id` of user u, if
 * one is there: committed by any transaction, or written by this one.
 * Read with a new snapshot (a retry after a lost COMMIT must see the
 * first record), from the days since the id was issued (two earlier, as
 * ai_resv_drop_settled reads them).  Caller holds no partition lock.
 */
bool
ai_usage_of_reservation(const AiUser *u, int64 id, Datum *cost)
{
	Oid			types[3] = {TEXTOID, INT8OID, DATEOID};
	Datum		vals[3];
	bool		found = false;
	MemoryContext outer = CurrentMemoryContext;

	vals[0] = PointerGetDatum(cstring_to_text_with_len(u->id, u->len));
	vals[1] = Int64GetDatum(id);
	vals[2] = DateADTGetDatum((DateADT) (ai_id_time(id) / USECS_PER_DAY) - 2);
	CommandCounterIncrement();
	SPI_connect();
	ai_spi_read(psprintf("SELECT cost_cents FROM %s.ai_usage"
						 " WHERE user_id OPERATOR(pg_catalog.=) $1"
						 " AND day OPERATOR(pg_catalog.>=) $3"
						 " AND reservation_id OPERATOR(pg_catalog.=) $2 LIMIT 1",
						 ai_ext_schema()),
				3, types, vals);
	if (SPI_processed > 0)
	{
		bool		isnull;
		Datum		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);

		if (!isnull)
		{
			MemoryContext spi = MemoryContextSwitchTo(outer);

			*cost = datumCopy(d, false, -1);
			MemoryContextSwitchTo(spi);
			found = true;
		}
	}
	SPI_finish();
	return found;
}

/* ---- usage rows that ai_record_usage did not write ---- */

/* More users than this in one transaction: every cached spend reloads. */
#define AI_STALE_MAX			1024

static AiKey *stale = NULL;
static int	nstale = 0;
static bool stale_all = false;

/* Make a user's cached spend load again from the tables at its next check. */
static void
ai_spend_invalidate(const AiKey *key)
{
	uint32		hashcode = ai_key_hash(key);
	LWLock	   *lock = ai_partition_lock(hashcode);
	AiEntry    *e;

	LWLockAcquire(lock, LW_EXCLUSIVE);
	e = ai_entry_lookup(key, hashcode, false, 0, NULL, 0);
	if (e != NULL)
	{
		e->spend_state = AI_SPEND_UNKNOWN;
		e->change_seq++;		/* a load in progress must not be trusted */
	}
	else
	{
		/*
		 * No entry to bump: the uses its rules may still cache (restored
		 * at a start without it, ai_use_restored) follow the partition's
		 * count of removals, as for a user removed.
		 */
		ai_table->part_epoch[hashcode % AI_NUM_PARTITIONS]++;
	}
	LWLockRelease(lock);
}

/*
 * A usage row of this user was written by something other than
 * ai_record_usage (usage.c's row trigger): its spend reloads now, for this
 * transaction's own checks, and again when the transaction commits, for
 * everyone's.
 */
void
ai_spend_row_written(const AiKey *key)
{
	ai_spend_invalidate(key);
	if (nstale >= AI_STALE_MAX)
		stale_all = true;
	else
	{
		if (stale == NULL)
			stale = MemoryContextAlloc(TopMemoryContext, sizeof(AiKey) * AI_STALE_MAX);
		stale[nstale++] = *key;
	}
}

/* The transaction ends: on commit, the users it inserted rows for reload. */
static void
ai_spend_xact_callback(XactEvent event, void *arg)
{
	AiXactEnd	end = ai_xact_end_of(event);
	bool		commit = (end == AI_XACT_COMMIT);

	if (end == AI_XACT_NONE)
		return;
	if (ai_shared == NULL)
		return;					/* not preloaded: nothing is cached */
	if (commit && stale_all)
		pg_atomic_fetch_add_u32(&ai_shared->usage_gen, 1);
	else if (commit)
		for (int i = 0; i < nstale; i++)
			ai_spend_invalidate(&stale[i]);
	nstale = 0;
	stale_all = false;
}

void
ai_spend_init(void)
{
	RegisterXactCallback(ai_spend_xact_callback, NULL);
}
