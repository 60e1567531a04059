/*-------------------------------------------------------------------------
 *
 * usage.c
 *		Recorded usage: ai_record_usage prices a call, appends it to the
 *		usage log and counts it in the user's shared counters.
 *
 * ai_usage is insert-only: recording a call appends one row and updates no
 * shared row, so two sessions recording for the same user never wait for
 * each other.  The per-day rollup ai_usage_daily is a view that adds up the
 * log and the archive that ai_purge_usage keeps of purged rows.
 *
 * The cost of a call is exact: tokens times the per-token price in 1e-9
 * cent units (money.c), returned as numeric cents with no rounding.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/pg_type.h"
#include "commands/async.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "port/atomics.h"
#include "storage/lmgr.h"
#include "storage/proc.h"
#include "storage/shmem.h"
#include "utils/builtins.h"
#include "utils/date.h"
#include "utils/json.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "accounts.h"
#include "alerts.h"
#include "calendar.h"
#include "config.h"
#include "reservations.h"
#include "rings.h"
#include "rulestate.h"
#include "shmem.h"
#include "spend.h"
#include "sweep.h"
#include "usage.h"
#include "users.h"
#include "xact.h"

/* True while ai_record_usage inserts its row (the row trigger skips it). */
static bool recording = false;

bool
ai_recording_usage(void)
{
	return recording;
}

/*
 * Users and days this transaction marked in ai_usage_days_stale (the row
 * trigger below), so that a COPY of many rows marks each once.
 */
typedef struct AiMarkedDay
{
	AiKey		key;			/* the user's */
	DateADT		day;
} AiMarkedDay;

static HTAB *marked_days = NULL;

static void
ai_marked_days_forget(void)
{
	if (marked_days != NULL)
	{
		hash_destroy(marked_days);
		marked_days = NULL;
	}
}

/*
 * When each backend's open transaction first recorded a call (0 when it has
 * recorded none), indexed by backend: ai_compact_usage() totals only rows
 * older than every open record, so a row committed after its snapshot never
 * hides behind a total.  Kept here rather than read from pg_stat_activity,
 * whose transaction start is blank for a session with track_activities off.
 */
static pg_atomic_uint64 *open_records = NULL;
static bool open_record_published = false;

#if PG_VERSION_NUM >= 170000
#define AI_MY_BACKEND ((int) MyProcNumber)
#else
#define AI_MY_BACKEND ((int) MyBackendId - 1)
#endif

/* One slot for every process that may run SQL, and the auxiliary ones. */
static int
ai_open_record_slots(void)
{
	return MaxBackends + NUM_AUXILIARY_PROCS;
}

Size
ai_open_records_size(void)
{
	return mul_size(ai_open_record_slots(), sizeof(pg_atomic_uint64));
}

/* Called from the shared-memory startup hook, under AddinShmemInitLock. */
void
ai_open_records_init(void)
{
	bool		found;

	open_records = ShmemInitStruct("ai_ratelimit open records", ai_open_records_size(), &found);
	if (!found)
		for (int i = 0; i < ai_open_record_slots(); i++)
			pg_atomic_init_u64(&open_records[i], 0);
}

/*
 * This transaction is about to record: publish when, before the row's time
 * is read, so that a compaction that does not see the slot began before
 * the row's time (see ai_oldest_open_record).
 */
static void
ai_open_record_publish(void)
{
	int			me = AI_MY_BACKEND;

	if (open_record_published)
		return;
	if (me < 0 || me >= ai_open_record_slots())
		elog(ERROR, "ai_ratelimit: backend number %d out of range", me);
	pg_atomic_write_u64(&open_records[me], (uint64) GetCurrentTimestamp());
	pg_memory_barrier();
	open_record_published = true;
}

/*
 * The time before which no transaction still open has recorded or can
 * record a call: the first record of the oldest open one, or now.  A
 * transaction that published after the slots were read takes its rows'
 * time after this clock reading.  A transaction that cleared its slot
 * before they were read had committed (or rolled back) already, so a
 * snapshot taken after this call sees its rows.
 */
TimestampTz
ai_oldest_open_record(void)
{
	TimestampTz oldest = GetCurrentTimestamp();

	pg_memory_barrier();
	for (int i = 0; i < ai_open_record_slots(); i++)
	{
		uint64		at = pg_atomic_read_u64(&open_records[i]);

		if (at != 0 && (TimestampTz) at < oldest)
			oldest = (TimestampTz) at;
	}
	return oldest;
}

/*
 * The transaction ends: an error may have left the flag set.  Its record
 * slot is cleared after the commit is visible (transaction callbacks run
 * after it), never before.
 */
static void
ai_usage_xact_callback(XactEvent event, void *arg)
{
	if (ai_xact_end_of(event) != AI_XACT_NONE)
	{
		recording = false;
		ai_marked_days_forget();
		if (open_record_published)
		{
			pg_atomic_write_u64(&open_records[AI_MY_BACKEND], 0);
			open_record_published = false;
		}
	}
}

/* A subtransaction rolled back: its marks are gone, so mark again. */
static void
ai_usage_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
						  SubTransactionId parentSubid, void *arg)
{
	if (event == SUBXACT_EVENT_ABORT_SUB)
		ai_marked_days_forget();
}

void
ai_usage_init(void)
{
	RegisterXactCallback(ai_usage_xact_callback, NULL);
	RegisterSubXactCallback(ai_usage_subxact_callback, NULL);
}

/*
 * A usage row of this user and day was written by something other than
 * ai_record_usage: the day's totals (ai_usage_days), if any are or will be
 * made, are not to be trusted; the day is read from the log until
 * ai_compact_usage totals it again.  Once per user and day in a
 * transaction.
 */
static void
ai_mark_day_stale(const char *user_id, int len, DateADT day)
{
	static const char *ins =
	"INSERT INTO %s.ai_usage_days_stale (user_id, day) VALUES ($1, $2)";
	static AiKeptPlan kept;
	static Oid	types[2] = {TEXTOID, DATEOID};
	AiMarkedDay m;
	bool		found;
	Datum		vals[2];
	AiInternalState st;
	int			rc;

	if (!ai_ext_has_relation("ai_usage_days_stale"))
		return;					/* the database's extension is older than 1.6 */
	memset(&m, 0, sizeof(m));
	ai_make_key(&m.key, user_id, len);
	m.day = day;
	if (marked_days == NULL)
	{
		HASHCTL		ctl;

		ctl.keysize = sizeof(AiMarkedDay);
		ctl.entrysize = sizeof(AiMarkedDay);
		ctl.hcxt = TopMemoryContext;
		marked_days = hash_create("ai_ratelimit marked days", 64, &ctl,
								  HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	}
	(void) hash_search(marked_days, &m, HASH_FIND, &found);
	if (found)
		return;
	SPI_connect();
	vals[0] = PointerGetDatum(cstring_to_text_with_len(user_id, len));
	vals[1] = DateADTGetDatum(day);
	ai_as_owner_begin(&st);
	rc = SPI_execute_plan(ai_kept_plan(&kept, psprintf(ins, ai_ext_schema()), 2, types),
						  vals, NULL, false, 0);
	ai_as_owner_end(&st);
	if (rc != SPI_OK_INSERT)
		elog(ERROR, "ai_ratelimit: stale day insert failed: %s", SPI_result_code_string(rc));
	SPI_finish();
	/* remembered once the mark is in */
	(void) hash_search(marked_days, &m, HASH_ENTER, NULL);
}

/* One ai_record_usage call. */
typedef struct AiRecordCall
{
	const AiUser *user;
	AiTokens	tok;
	int64		resv_id;		/* the reservation to settle, when has_resv */
	bool		has_resv;
	TimestampTz now;
	AiCalendar	cal;
	AiPrice		price;
	AiMoney		cost;
	const char *account;		/* the account charged (1.8), or NULL */
} AiRecordCall;

/*
 * The exact cost of a call: every product fits (tokens <= 1e9, per-token
 * price <= 1e9 units) and the sum saturates.  A model priced by the '*'
 * row is a WARNING, or an ERROR with ai_ratelimit.unknown_model = refuse
 * (ai_price_lookup).
 */
static AiMoney
ai_call_cost(AiRecordCall *r, const char *model)
{
	const AiTokens *t = &r->tok;
	AiMoney		cost;

	ai_price_lookup(model, &r->price, true);
	cost = ai_money_add(t->input * r->price.input, t->output * r->price.output);
	cost = ai_money_add(cost, t->cached * r->price.cached_input);
	cost = ai_money_add(cost, t->cache_write * r->price.cache_write);
	return ai_money_add(cost, t->cache_write_1h * r->price.cache_write_1h);
}

/*
 * The user's effective plan into *eff when it has budget alerts.  The plan
 * is only looked up when some plan of the database has alerts.
 */
static bool
ai_alert_plan(const AiRecordCall *r, AiPlan *eff)
{
	const AiPlan *plan;

	if (!ai_plans_have_alerts())
		return false;
	plan = ai_plan_lookup(ai_user_plan(r->user));
	if (plan == NULL)
		return false;
	*eff = *plan;
	ai_apply_user_limits(r->user, eff);
	return eff->has_budget && eff->nalerts > 0 && eff->budget > 0;
}

/* Does this database's ai_usage have account_id (1.8)? */
static AiTableCache usage_columns = AI_TABLE_CACHE("ai_usage");
static bool usage_has_account;

/*
 * Append the call's row to ai_usage, as the extension owner.  Cache writes
 * go to their 1.4 columns; a call without them inserts what every version
 * has (the columns default to 0).
 */
static void
ai_insert_usage(const AiRecordCall *r, const char *model, Datum cost_num)
{
	static const char *ins =
	"INSERT INTO %s.ai_usage (created_at, day, user_id, model, priced_as,"
	" input_tokens, output_tokens, cached_input_tokens, cost_cents, reservation_id,"
	" cache_write_tokens, cache_write_1h_tokens%s)"
	" VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12%s)";
	static const char *ins_old =
	"INSERT INTO %s.ai_usage (created_at, day, user_id, model, priced_as,"
	" input_tokens, output_tokens, cached_input_tokens, cost_cents, reservation_id%s)"
	" VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10%s)";
	static AiKeptPlan kept;
	static AiKeptPlan kept_writes;
	static Oid	types[13] = {TIMESTAMPTZOID, DATEOID, TEXTOID, TEXTOID, TEXTOID,
	INT8OID, INT8OID, INT8OID, NUMERICOID, INT8OID, INT8OID, INT8OID, TEXTOID};
	bool		writes = (r->tok.cache_write > 0 || r->tok.cache_write_1h > 0);
	SPIPlanPtr	plan;
	Datum		vals[13];
	char		nulls[13];
	AiInternalState st;
	int			rc;

	SPI_connect();
	if (ai_table_cache_stale(&usage_columns))
	{
		/* read again when ai_usage changes (ALTER EXTENSION UPDATE adds columns) */
		ai_table_cache_reading(&usage_columns);
		usage_has_account = ai_ext_has_column("ai_usage", "account_id");
		ai_table_cache_read(&usage_columns);
	}
	if (usage_has_account)
		plan = ai_kept_plan(&kept, psprintf(ins, ai_ext_schema(), ", account_id", ", $13"),
							13, types);		/* 1.8: every column */
	else if (writes)
		plan = ai_kept_plan(&kept_writes,
							psprintf(ins_old, ai_ext_schema(), ", cache_write_tokens, cache_write_1h_tokens",
									 ", $11, $12"), 12, types);
	else
		plan = ai_kept_plan(&kept, psprintf(ins_old, ai_ext_schema(), "", ""), 10, types);
	memset(nulls, ' ', sizeof(nulls));
	vals[12] = r->account ? CStringGetTextDatum(r->account) : (Datum) 0;
	if (r->account == NULL)
		nulls[12] = 'n';
	vals[0] = TimestampTzGetDatum(r->now);
	vals[1] = DateADTGetDatum(r->cal.day_date);
	vals[2] = PointerGetDatum(cstring_to_text_with_len(r->user->id, r->user->len));
	vals[3] = CStringGetTextDatum(model);
	vals[4] = CStringGetTextDatum(r->price.priced_as);
	vals[5] = Int64GetDatum(r->tok.input);
	vals[6] = Int64GetDatum(r->tok.output);
	vals[7] = Int64GetDatum(r->tok.cached);
	vals[10] = Int64GetDatum(r->tok.cache_write);
	vals[11] = Int64GetDatum(r->tok.cache_write_1h);
	vals[8] = cost_num;
	vals[9] = Int64GetDatum(r->resv_id);
	if (!r->has_resv)
		nulls[9] = 'n';
	ai_as_owner_begin(&st);
	/* the flag must not outlive the insert, even one that fails */
	recording = true;
	PG_TRY();
	{
		rc = SPI_execute_plan(plan, vals, nulls, false, 0);
	}
	PG_FINALLY();
	{
		recording = false;
	}
	PG_END_TRY();
	ai_as_owner_end(&st);
	if (rc != SPI_OK_INSERT)
		elog(ERROR, "ai_ratelimit: usage insert failed: %s", SPI_result_code_string(rc));
	SPI_finish();
}

/*
 * The reservation the call settles, marked as being settled: the one named,
 * or else the oldest open one that a check of this transaction made for
 * the user (never another request's: that one is still in flight, and its
 * estimate must stay held until its own record); 0 for none.  Sets
 * *missing when the named one is not open.  Caller holds the partition lock.
 */
static int64
ai_settle_begin(const AiRecordCall *r, AiEntry *e, int32 *slot, bool *missing, bool *busy)
{
	int32		s = -1;
	AiReservation *res;

	if (r->has_resv)
	{
		s = ai_resv_find(e, r->resv_id);
		if (s >= 0 && ai_resv_slots[s].state == AI_RESV_SETTLING)
		{
			/* another record of the same reservation, in flight */
			*busy = true;
			return 0;
		}
		if (s < 0 || ai_resv_slots[s].state != AI_RESV_OPEN)
		{
			*missing = true;
			return 0;
		}
	}
	else if (ai_xact_own_reservation(&e->key, r->now, &s) == 0)
		return 0;
	res = &ai_resv_slots[s];
	res->state = AI_RESV_SETTLING;
	res->settler = GetTopTransactionIdIfAny();	/* the usage row took one */
	ai_resv_unreserve(e, res->amount);
	*slot = s;
	return res->id;
}

/*
 * The budget alert thresholds this call's cost reaches, once per user and
 * month (ai_alerts_due): their percents into fired[], their bits into
 * *bits, and the spend after the call into *after.  Returns how many.
 * Caller holds the partition lock.
 */
static int
ai_alerts_crossed(const AiRecordCall *r, AiEntry *e, const AiPlan *eff,
				  uint32 *bits, int32 *fired, AiMoney *after)
{
	if (!ai_spend_is_cached(e, r->cal.month))
		return 0;
	*after = ai_money_add(ai_money_add(e->committed_spend, ai_inflight_cost(e)), r->cost);
	return ai_alerts_due(&e->alerts_sent, eff->alert_percent, eff->nalerts, eff->budget,
						 *after, fired, bits);
}

/*
 * Count the call in the entry: its tokens in the current minute's bucket,
 * its cost in flight until the transaction ends.  Caller holds the
 * partition lock.
 */
static int64
ai_call_tokens(const AiTokens *t)
{
	return t->input + t->output + t->cached + t->cache_write + t->cache_write_1h;
}

static void
ai_count_call(const AiRecordCall *r, AiEntry *e, AiCharge *charge)
{
	ai_tokens_advance(e, r->now);
	charge->tokens = ai_tokens_take(e, (uint64) ai_call_tokens(&r->tok), &charge->token_bucket);

	e->inflight++;
	int128_add_int64(&e->inflight_cost, r->cost);
	e->recorded_total = (AiMoney) ((uint64) e->recorded_total + (uint64) r->cost);
	e->change_seq++;
	ai_entry_changed(e);
}

/*
 * Count the call in one account it is filed under (the account, and each
 * above it): in flight until the transaction ends, like the user's own
 * count, so the cached use of the account's rules stays exact; and the
 * estimate its check held there (the shadow of reservation resv_id, if
 * any) is settled with it.  Each account under its own lock: what one
 * level shows moves from held to recorded in one step.
 */
static void
ai_record_account(const AiRecordCall *r, const AiUser *a, AiRuleRecord *rules,
				  int64 resv_id)
{
	AiCharge	charge;
	AiEntry    *e;
	uint32		seq_before;

	memset(&charge, 0, sizeof(charge));
	charge.kind = AI_CHARGE_RECORD;
	charge.key = a->key;
	charge.burst_bucket = -1;
	charge.day = -1;
	charge.month = r->cal.month;
	charge.cost = r->cost;
	LWLockAcquire(a->lock, LW_EXCLUSIVE);
	e = ai_entry_get(&a->key, a->hashcode, a->lock, r->now, a->id, a->len);
	if (e == NULL)
	{
		/* cannot track it: every account's cached use reloads at commit */
		LWLockRelease(a->lock);
		ai_config_bump_at_end(AI_GEN_ACCOUNTS);
		return;
	}
	e->kind = AI_ENTRY_ACCOUNT;
	if (resv_id > 0)
	{
		int32		s = ai_resv_find(e, -resv_id);

		if (s >= 0 && ai_resv_slots[s].state == AI_RESV_OPEN)
		{
			ai_resv_slots[s].state = AI_RESV_SETTLING;
			ai_resv_unreserve(e, ai_resv_slots[s].amount);
			charge.resv_id = -resv_id;
			charge.resv_slot = s;
		}
	}
	seq_before = e->change_seq;
	ai_count_call(r, e, &charge);
	ai_rules_record_begin(rules, e, r->now, r->cost, ai_call_tokens(&r->tok), seq_before,
						  &charge.rule_first, &charge.rule_n);
	LWLockRelease(a->lock);
	ai_charge_add(&charge);
	for (int k = 0; k < rules->nfired; k++)
	{
		const AiRuleAlert *f = &rules->fired[k];
		AiAlert		al;

		ai_alert_init(&al, AI_ALERT_ACCOUNT, r->user->id, r->user->len, a->id, f->pct,
					  f->after, f->rule->max);
		al.rule_id = f->rule->id;
		al.window_start = f->window_start;
		(void) ai_alert_write(&al, r->now);
	}
}

/* What became of the reservation a record names, before it writes anything. */
typedef enum AiNamedResv
{
	AI_NAMED_OPEN,				/* open: the record settles it */
	AI_NAMED_GONE,				/* expired, released or never issued: a late record */
	AI_NAMED_REPEAT				/* recorded before: the first cost, nothing more */
} AiNamedResv;

/*
 * Look at the reservation a record names.  One being settled by another
 * transaction (the same record sent twice, the first still committing) is
 * waited for; one no longer open is looked for in ai_usage, where a record
 * that settled it left its row: then this record is a repeat, and *first
 * is that record's cost.  Caller holds no lock.
 */
static AiNamedResv
ai_named_reservation(const AiUser *u, int64 id, Datum *first)
{
	for (int attempt = 0;; attempt++)
	{
		AiEntry    *e;
		int32		s;
		bool		open = false;
		TransactionId settler = InvalidTransactionId;

		LWLockAcquire(u->lock, LW_SHARED);
		e = ai_entry_lookup(&u->key, u->hashcode, false, 0, NULL, 0);
		s = e != NULL ? ai_resv_find(e, id) : -1;
		if (s >= 0)
		{
			AiReservation *res = &ai_resv_slots[s];

			open = (res->state == AI_RESV_OPEN);
			if (res->state == AI_RESV_SETTLING)
				settler = res->settler;
		}
		LWLockRelease(u->lock);
		if (open)
			return AI_NAMED_OPEN;
		if (!TransactionIdIsValid(settler) ||
			TransactionIdEquals(settler, GetTopTransactionIdIfAny()) || attempt >= 3)
			break;
		/* its transaction ends: committed, the slot is freed; aborted, open again */
		XactLockTableWait(settler, NULL, NULL, XLTW_None);
	}
	if (ai_usage_of_reservation(u, id, first))
		return AI_NAMED_REPEAT;
	return AI_NAMED_GONE;
}

/*
 * Record one call.  Returns its cost in cents (numeric).  The row goes to
 * ai_usage; the cost counts toward the user's month in shared memory at
 * once and is settled against a reservation.
 */
Datum
ai_record(const AiUser *u, const char *model,
		  const AiTokens *tokens, int64 resv_id, bool has_resv)
{
	AiRecordCall r = {u, *tokens, resv_id, has_resv};
	Datum		cost_num;
	AiPlan		eff;
	bool		want_alerts;
	int32		fired[AI_MAX_ALERTS];
	int			nfired = 0;
	AiMoney		spend_after = 0;
	AiEntry    *e;
	AiCharge	charge;
	bool		resv_missing = false;
	bool		resv_busy = false;
	AiRuleRecord rules;
	uint32		seq_before;
	int			nlevels = Min(u->nchain, AI_MAX_ACCOUNT_DEPTH);
	AiUser		acct[AI_MAX_ACCOUNT_DEPTH];
	AiRuleRecord acct_rules[AI_MAX_ACCOUNT_DEPTH];
	int32		pct[AI_MAX_ACCOUNT_DEPTH][AI_MAX_ALERTS];	/* each account's alert thresholds */
	int			npct[AI_MAX_ACCOUNT_DEPTH];
	int			touches;

	/* the account the call is filed under: named, or the user's default (sql_api.c) */
	r.account = nlevels > 0 ? u->chain[0] : NULL;
	ai_open_record_publish();
	r.now = GetCurrentTimestamp();
	ai_calendar_at(r.now, &r.cal);
	r.cost = ai_call_cost(&r, model);
	cost_num = ai_money_to_numeric(r.cost);
	want_alerts = ai_alert_plan(&r, &eff);
	if (want_alerts)
	{
		AiMoney		ignored;

		/*
		 * Alerts compare the exact spend before and after this call; load it
		 * before the row is inserted, so the load cannot count it.
		 */
		want_alerts = ai_ensure_spend(u, &r.cal, r.now, true, &ignored);
	}
	/*
	 * Alerts of an account compare the exact use of its rules before and
	 * after this call: load them before the row is inserted, as the user's
	 * spend is loaded above.
	 */
	for (int k = 0; k < nlevels; k++)
	{
		npct[k] = ai_account_alert_percents(u->chain[k], pct[k]);
		if (npct[k] > 0)
		{
			AiUser		a;
			AiRuleSet	rs;

			ai_account_init(&a, u->chain[k], strlen(u->chain[k]));
			ai_rules_prepare(&rs, &a, NULL, model, r.now, true, false);
		}
	}
	/* after a crash: drop reservations settled since the last save first */
	ai_resv_drop_settled(u);
	/*
	 * Records are idempotent by reservation id: a record of a reservation
	 * that a record settled before (a retry after a connection lost during
	 * COMMIT, a client that sends twice) returns the first cost and stores
	 * and charges nothing, also after a restart, a crash or a failover
	 * (ai_usage is the proof).
	 */
	if (has_resv)
	{
		Datum		first;

		if (ai_named_reservation(u, resv_id, &first) == AI_NAMED_REPEAT)
		{
			pg_atomic_fetch_add_u64(&ai_shared->repeated_records, 1);
			ereport(NOTICE,
					(errmsg("reservation " INT64_FORMAT " of user \"%s\" was recorded before", resv_id, u->id),
					 errdetail("Nothing was recorded or charged again; the cost returned is the first record's.")));
			return first;
		}
	}
	ai_insert_usage(&r, model, cost_num);
	ai_rules_record_prepare(&rules, u, model, r.now);
	touches = rules.n + 1;
	for (int k = 0; k < nlevels; k++)
	{
		ai_account_init(&acct[k], u->chain[k], strlen(u->chain[k]));
		ai_rules_record_prepare(&acct_rules[k], &acct[k], model, r.now);
		if (acct_rules[k].fired != NULL)
		{
			acct_rules[k].nalerts = npct[k];
			memcpy(acct_rules[k].alert_pct, pct[k], sizeof(int32) * npct[k]);
		}
		touches += acct_rules[k].n + 1;
	}
	ai_rules_reserve_touches(touches);

	memset(&charge, 0, sizeof(charge));
	charge.kind = AI_CHARGE_RECORD;
	charge.key = u->key;
	charge.burst_bucket = -1;
	charge.day = -1;
	charge.month = r.cal.month;
	charge.cost = r.cost;
	ai_charge_reserve_n(1 + nlevels);
	LWLockAcquire(u->lock, LW_EXCLUSIVE);
	e = ai_entry_get(&u->key, u->hashcode, u->lock, r.now, u->id, u->len);
	if (e == NULL)
	{
		/* cannot track it: make every cached spend reload at commit */
		LWLockRelease(u->lock);
		ai_config_bump_at_end(AI_GEN_USAGE);
		return cost_num;
	}
	charge.resv_id = ai_settle_begin(&r, e, &charge.resv_slot, &resv_missing, &resv_busy);
	if (resv_busy)
	{
		/* nothing was counted yet: the row goes with the error */
		LWLockRelease(u->lock);
		ereport(ERROR,
				(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
				 errmsg("reservation " INT64_FORMAT " of user \"%s\" is being recorded by another transaction", resv_id, u->id),
				 errdetail("The same call was recorded twice at once; only one record may settle a reservation."),
				 errhint("Retry: once the other record commits, a retry returns its cost and records nothing.")));
	}
	if (want_alerts)
		nfired = ai_alerts_crossed(&r, e, &eff, &charge.alert_bits, fired, &spend_after);
	seq_before = e->change_seq;
	ai_count_call(&r, e, &charge);
	ai_rules_record_begin(&rules, e, r.now, r.cost, ai_call_tokens(&r.tok), seq_before,
						  &charge.rule_first, &charge.rule_n);
	LWLockRelease(u->lock);
	ai_charge_add(&charge);
	for (int k = 0; k < nlevels; k++)
		ai_record_account(&r, &acct[k], &acct_rules[k], charge.resv_id);

	for (int k = 0; k < nfired; k++)
	{
		AiAlert		al;

		ai_alert_init(&al, AI_ALERT_PLAN, u->id, u->len, eff.name, fired[k], spend_after,
					  eff.budget);
		al.month = r.cal.month_start_date;
		(void) ai_alert_write(&al, r.now);
	}
	if (resv_missing)
	{
		pg_atomic_fetch_add_u64(&ai_shared->late_records, 1);
		ereport(WARNING,
				(errcode(ERRCODE_WARNING),
				 errmsg("reservation " INT64_FORMAT " of user \"%s\" is not open", resv_id, u->id),
				 errdetail("It expired, was released, or belongs to another user; the usage is recorded all the same (a late record, counted in ai_ratelimit_stats)."),
				 errhint("Extend the reservation of a call that may outlive ai_ratelimit.reservation_ttl with ai_extend_reservation.")));
	}
	return cost_num;
}

/* ---- usage rows that ai_record_usage did not write ---- */

PG_FUNCTION_INFO_V1(ai_ratelimit_usage_inserted);

/*
 * Row trigger on ai_usage (1.3): a row inserted by anything but
 * ai_record_usage (INSERT, COPY, a restore, replication apply) makes its
 * user's spend reload: now, for this transaction's own checks, and when the
 * transaction commits, for everyone's; and (1.6) marks its day's totals
 * stale.
 */
Datum
ai_ratelimit_usage_inserted(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	int			col;
	bool		isnull;
	Datum		d;
	text	   *t;
	AiKey		key;
	int			daycol;

	if (!CALLED_AS_TRIGGER(fcinfo) || !TRIGGER_FIRED_FOR_ROW(trigdata->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("ai_ratelimit_usage_inserted() must be called as a row trigger")));
	if (ai_recording_usage())
		return PointerGetDatum(NULL);
	col = SPI_fnumber(trigdata->tg_relation->rd_att, "user_id");
	if (col <= 0)
		return PointerGetDatum(NULL);
	d = heap_getattr(trigdata->tg_trigtuple, col, trigdata->tg_relation->rd_att, &isnull);
	if (isnull)
		return PointerGetDatum(NULL);
	t = DatumGetTextPP(d);
	daycol = SPI_fnumber(trigdata->tg_relation->rd_att, "day");
	if (daycol > 0)
	{
		Datum		dd = heap_getattr(trigdata->tg_trigtuple, daycol,
									  trigdata->tg_relation->rd_att, &isnull);

		if (!isnull)
			ai_mark_day_stale(VARDATA_ANY(t), VARSIZE_ANY_EXHDR(t), DatumGetDateADT(dd));
	}
	if (ai_shared == NULL)
		return PointerGetDatum(NULL);	/* not preloaded: nothing is cached */
	ai_make_key(&key, VARDATA_ANY(t), VARSIZE_ANY_EXHDR(t));
	ai_spend_row_written(&key);
	/* filed under an account (1.8): the use of every account's rules reloads */
	col = SPI_fnumber(trigdata->tg_relation->rd_att, "account_id");
	if (col > 0)
	{
		(void) heap_getattr(trigdata->tg_trigtuple, col, trigdata->tg_relation->rd_att, &isnull);
		if (!isnull)
			ai_config_changed(AI_GEN_ACCOUNTS);
	}
	return PointerGetDatum(NULL);
}
