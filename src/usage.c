/*-------------------------------------------------------------------------
 *
 * usage.c
 *		Recorded usage: ai_record_usage writes the usage log, and the
 *		month's spend is read back from the tables.
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

#include "catalog/pg_type.h"
#include "commands/async.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/date.h"
#include "utils/json.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

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
AiMoney
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
 * Send a budget alert: pg_notify('ai_ratelimit', json), delivered when the
 * recording transaction commits.
 */
static void
ai_notify_alert(const char *user_id, const AiPlan *plan, int pct,
				AiMoney spend, const AiCalendar *cal)
{
	StringInfoData buf;
	int			y = cal->month / 12;
	int			m = cal->month % 12 + 1;

	initStringInfo(&buf);
	appendStringInfoString(&buf, "{\"event\": \"budget_alert\", \"user_id\": ");
	escape_json(&buf, user_id);
	appendStringInfoString(&buf, ", \"plan\": ");
	escape_json(&buf, plan->name);
	appendStringInfo(&buf, ", \"threshold_percent\": %d, \"spend_cents\": %s, \"budget_cents\": %s, \"month\": \"%04d-%02d\"}",
					 pct,
					 DatumGetCString(DirectFunctionCall1(numeric_out, ai_money_to_numeric(spend))),
					 DatumGetCString(DirectFunctionCall1(numeric_out, ai_money_to_numeric(plan->budget))),
					 y, m);
	Async_Notify("ai_ratelimit", buf.data);
}

/*
 * Record one call.  Returns its cost in cents (numeric).  The row goes to
 * ai_usage; the cost counts toward the user's month in shared memory at
 * once and is settled against a reservation.
 */
Datum
ai_record(const char *user_id, const char *model,
		  int64 in_tok, int64 out_tok, int64 cached_tok,
		  int64 resv_id, bool has_resv)
{
	static const char *ins =
	"INSERT INTO %s.ai_usage (created_at, day, user_id, model, priced_as,"
	" input_tokens, output_tokens, cached_input_tokens, cost_cents, reservation_id)"
	" VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)";
	static SPIPlanPtr plan = NULL;
	static char *plan_schema = NULL;
	AiPrice		price;
	AiMoney		cost;
	const AiPlan *user_plan;
	AiPlan		eff;
	bool		want_alerts = false;
	int			fired[AI_MAX_ALERTS];
	int			nfired = 0;
	AiMoney		spend_after = 0;
	uint64		total_tokens = (uint64) in_tok + (uint64) out_tok + (uint64) cached_tok;
	Datum		cost_num;
	TimestampTz now = GetCurrentTimestamp();
	AiCalendar	cal;
	AiKey		key;
	uint32		hashcode;
	LWLock	   *lock;
	AiEntry    *e;
	AiCharge	charge;
	Datum		vals[10];
	char		nulls[10];
	AiInternalState st;
	Oid			save_userid;
	int			save_sec;
	int			rc;
	const char *schema;
	bool		resv_missing = false;
	int64		settle_id = 0;

	ai_price_lookup(model, &price);
	if (price.fallback)
		ereport(WARNING,
				(errcode(ERRCODE_WARNING),
				 errmsg("model \"%s\" has no price in ai_model_prices, priced as \"*\"", model),
				 errhint("Add a row for the model to ai_model_prices.")));

	/* exact: every product fits (tokens <= 1e9, per-token price <= 1e9) */
	cost = ai_money_add(ai_money_add(in_tok * price.input, out_tok * price.output),
						cached_tok * price.cached_input);
	cost_num = ai_money_to_numeric(cost);
	ai_calendar_at(now, &cal);

	/* the user's plan, for budget alerts (only looked up when a plan has any) */
	user_plan = ai_plans_have_alerts() ? ai_plan_lookup(ai_user_plan(user_id)) : NULL;
	if (user_plan != NULL)
	{
		eff = *user_plan;
		ai_apply_user_limits(user_id, &eff);
		want_alerts = eff.has_budget && eff.nalerts > 0 && eff.budget > 0;
	}

	ai_make_key(&key, user_id, strlen(user_id));
	hashcode = ai_key_hash(&key);
	if (want_alerts)
	{
		AiMoney		ignored;

		/*
		 * Alerts compare the exact spend before and after this call; load it
		 * before the row is inserted, so the load cannot count it.
		 */
		want_alerts = ai_ensure_spend(&key, hashcode, user_id, strlen(user_id),
									  &cal, now, &ignored);
	}

	/* the row */
	schema = ai_ext_schema();
	SPI_connect();
	if (plan == NULL || plan_schema == NULL || strcmp(plan_schema, schema) != 0)
	{
		/*
		 * Prepared with search_path pinned: the plan cache keeps that path
		 * for any later replanning, so executing it needs no pinning.
		 */
		Oid			types[10] = {TIMESTAMPTZOID, DATEOID, TEXTOID, TEXTOID, TEXTOID,
		INT8OID, INT8OID, INT8OID, NUMERICOID, INT8OID};
		SPIPlanPtr	p;

		ai_internal_begin(&st);
		p = SPI_prepare(psprintf(ins, schema), 10, types);

		if (p == NULL)
			elog(ERROR, "ai_ratelimit: could not prepare usage insert: %s",
				 SPI_result_code_string(SPI_result));
		SPI_keepplan(p);
		if (plan)
			SPI_freeplan(plan);
		plan = p;
		if (plan_schema)
			pfree(plan_schema);
		plan_schema = MemoryContextStrdup(TopMemoryContext, schema);
		ai_internal_end(&st);
	}
	GetUserIdAndSecContext(&save_userid, &save_sec);
	SetUserIdAndSecContext(ai_ext_owner(), save_sec | SECURITY_LOCAL_USERID_CHANGE);
	memset(nulls, ' ', sizeof(nulls));
	vals[0] = TimestampTzGetDatum(now);
	vals[1] = DateADTGetDatum(cal.day_date);
	vals[2] = CStringGetTextDatum(user_id);
	vals[3] = CStringGetTextDatum(model);
	vals[4] = CStringGetTextDatum(price.priced_as);
	vals[5] = Int64GetDatum(in_tok);
	vals[6] = Int64GetDatum(out_tok);
	vals[7] = Int64GetDatum(cached_tok);
	vals[8] = cost_num;
	vals[9] = Int64GetDatum(resv_id);
	if (!has_resv)
		nulls[9] = 'n';
	rc = SPI_execute_plan(plan, vals, nulls, false, 0);
	SetUserIdAndSecContext(save_userid, save_sec);
	if (rc != SPI_OK_INSERT)
		elog(ERROR, "ai_ratelimit: usage insert failed: %s", SPI_result_code_string(rc));
	SPI_finish();

	/* the shared counters */
	lock = ai_partition_lock(hashcode);
	ai_charge_reserve();
	LWLockAcquire(lock, LW_EXCLUSIVE);
	e = ai_entry_get(&key, hashcode, lock, now, user_id, strlen(user_id));
	if (e == NULL)
	{
		/* cannot track it: make every cached spend reload at commit */
		LWLockRelease(lock);
		ai_config_bump_at_end(4);
		return cost_num;
	}

	/* settle: the given reservation, or the user's oldest open one */
	if (has_resv)
	{
		AiReservation *r = ai_resv_slot(resv_id);

		if (r && r->id == resv_id && r->state == AI_RESV_OPEN &&
			memcmp(&r->key, &key, sizeof(AiKey)) == 0)
			settle_id = resv_id;
		else
			resv_missing = true;
	}
	else
	{
		for (int32 s = e->resv_head; s >= 0; s = ai_shared->resv[s].next)
			if (ai_shared->resv[s].state == AI_RESV_OPEN &&
				ai_shared->resv[s].expires_at > now)
			{
				settle_id = ai_shared->resv[s].id;
				break;
			}
	}
	if (settle_id > 0)
	{
		AiReservation *r = ai_resv_slot(settle_id);

		r->state = AI_RESV_SETTLING;
		e->reserved -= r->amount;
	}

	memset(&charge, 0, sizeof(charge));

	/* budget alerts: thresholds this call crosses, once per user and month */
	if (want_alerts && e->spend_state == AI_SPEND_VALID && e->spend_month == cal.month)
	{
		AiMoney		before = ai_money_add(e->committed_spend, e->inflight_cost);

		spend_after = ai_money_add(before, cost);
		for (int k = 0; k < eff.nalerts; k++)
		{
			int32		pct = eff.alert_percent[k];
			AiMoney		t = (eff.budget / 100) * pct + (eff.budget % 100) * pct / 100;

			if (pct > 0 && before < t && spend_after >= t &&
				(e->alerts_sent & (1U << k)) == 0)
			{
				e->alerts_sent |= (1U << k);
				charge.alert_bits |= (1U << k);
				fired[nfired++] = pct;
			}
		}
	}

	/* tokens per minute: the real tokens count in the current bucket */
	ai_tokens_advance(e, now);
	charge.token_bucket = e->tokens_head;
	charge.tokens = (uint32) Min(total_tokens, PG_UINT32_MAX - e->tokens[e->tokens_head % AI_TOKEN_RING]);
	e->tokens[e->tokens_head % AI_TOKEN_RING] += charge.tokens;

	e->inflight++;
	e->inflight_cost = ai_money_add(e->inflight_cost, cost);
	e->recorded_total = (AiMoney) ((uint64) e->recorded_total + (uint64) cost);
	e->change_seq++;
	LWLockRelease(lock);

	charge.kind = AI_CHARGE_RECORD;
	charge.key = key;
	charge.burst_bucket = -1;
	charge.day = -1;
	charge.resv_id = settle_id;
	charge.month = cal.month;
	charge.cost = cost;
	ai_charge_add(&charge);

	for (int k = 0; k < nfired; k++)
		ai_notify_alert(user_id, &eff, fired[k], spend_after, &cal);

	if (resv_missing)
		ereport(WARNING,
				(errcode(ERRCODE_WARNING),
				 errmsg("reservation " INT64_FORMAT " of user \"%s\" is not open", resv_id, user_id),
				 errdetail("It expired, was already settled, or belongs to another user; the usage is recorded all the same.")));
	return cost_num;
}
